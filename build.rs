//! Compiles every `schema/*.capnp` file with capnpc. Needs the `capnp` compiler,
//! which Debian ships in the `capnproto` package (`ci/setup` installs it).

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=schema");
    if Command::new("capnp").arg("--version").output().is_err() {
        eprintln!(
            "error: the Cap'n Proto compiler `capnp` was not found on PATH.\n\
             Install it with `apt-get install capnproto` (or run ci/setup), then build again."
        );
        std::process::exit(1);
    }
    let mut schemas: Vec<_> = std::fs::read_dir("schema")
        .expect("schema/ folder next to build.rs")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "capnp"))
        .collect();
    schemas.sort();
    let mut cmd = capnpc::CompilerCommand::new();
    cmd.src_prefix("schema");
    for s in &schemas {
        cmd.file(Path::new(s));
    }
    if let Err(e) = cmd.run() {
        eprintln!("error: capnp failed to compile the schemas: {e}");
        std::process::exit(1);
    }
}
