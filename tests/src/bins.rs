//! Where the binaries under test are: `$PLEXD_BIN_DIR`, else the workspace's
//! `build/debug/` (ci/test runs `cargo build --workspace --bins` before the tests).

use std::path::{Path, PathBuf};

/// The programs a cluster test runs.
#[derive(Clone, Debug)]
pub struct Bins {
    /// The data plane.
    pub target: PathBuf,
    /// The coordinator.
    pub plexd: PathBuf,
    /// The command-line client.
    pub plexctl: PathBuf,
}

/// The directory holding the binaries.
pub fn bin_dir() -> PathBuf {
    match std::env::var_os("PLEXD_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/debug"),
    }
}

impl Bins {
    /// Finds every binary or says which is missing and what to do.
    pub fn locate() -> Result<Bins, String> {
        let dir = bin_dir();
        let find = |name: &str| {
            let p = dir.join(name);
            if p.is_file() {
                Ok(p)
            } else {
                Err(format!(
                    "{} not found: run `cargo build --workspace --bins` first \
                     (or set PLEXD_BIN_DIR to the directory holding plexd-target, plexd and plexctl)",
                    p.display()
                ))
            }
        };
        Ok(Bins {
            target: find("plexd-target")?,
            plexd: find("plexd")?,
            plexctl: find("plexctl")?,
        })
    }
}
