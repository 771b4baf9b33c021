//! plexctl: the command-line client of a plexd cluster.
fn main() {
    eprintln!("plexctl: not built yet");
    std::process::exit(2);
}
