//! The plexd daemon.
fn main() {
    eprintln!("plexd: not built yet");
    std::process::exit(2);
}
