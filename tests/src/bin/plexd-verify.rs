//! `plexd-verify`: writes a data pattern to a bdev of a running plexd-target, or reads
//! it back and compares (ci/demo and manual checks).
//!
//! ```text
//! plexd-verify --socket /tmp/plexd-demo/a/target.sock --bdev dg1.vol1 write --len 8M --seed 7
//! plexd-verify --socket /tmp/plexd-demo/b/target.sock --bdev dg1.vol1 verify --len 8M --seed 7
//! ```

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use plexd_proto::size::parse_size;
use plexd_target::api::KernelClient;
use plexd_tests::Pattern;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Mode {
    /// Write the pattern.
    Write,
    /// Read it back and compare.
    Verify,
}

/// Writes or verifies a data pattern through a plexd-target bdev (e.g. a volume DG.VOL).
#[derive(Parser, Debug)]
#[command(name = "plexd-verify")]
struct Args {
    /// The node's plexd-target socket.
    #[arg(long)]
    socket: PathBuf,
    /// The bdev, e.g. `dg1.vol1`.
    #[arg(long)]
    bdev: String,
    /// write or verify.
    mode: Mode,
    /// Offset in bytes (a multiple of 512).
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// Length (K/M/G suffixes, a multiple of 512).
    #[arg(long, default_value = "4M")]
    len: String,
    /// Which pattern.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Wait up to this many seconds while the node's data plane is fenced (errno
    /// 108: no data-plane lease yet, e.g. just after the node joined), as a
    /// multipath host retries a path that answers NOT READY. 0: fail at once.
    #[arg(long, default_value_t = 0)]
    wait_served: u64,
}

fn run(args: &Args) -> Result<String, String> {
    let len = parse_size(&args.len).map_err(|e| format!("--len: {e}"))?;
    if len == 0 || len & 511 != 0 || args.offset & 511 != 0 {
        return Err("--offset and --len must be multiples of 512 (and --len > 0)".into());
    }
    let k = KernelClient::connect(&args.socket).map_err(|e| e.to_string())?;
    let p = Pattern {
        bdev: args.bdev.clone(),
        offset_bytes: args.offset,
        len_bytes: len,
        seed: args.seed,
    };
    let fenced_for = Duration::from_secs(args.wait_served);
    match args.mode {
        Mode::Write => p.write_served(&k, fenced_for).map(|_| "written"),
        Mode::Verify => p.verify_served(&k, fenced_for).map(|_| "verified"),
    }
    .map(|what| {
        format!(
            "{what}: pattern {} on {} at {}+{len} bytes via {}",
            args.seed,
            args.bdev,
            args.offset,
            args.socket.display()
        )
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(msg) => {
            println!("plexd-verify: {msg}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("plexd-verify: {e}");
            ExitCode::FAILURE
        }
    }
}
