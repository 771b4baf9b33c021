//! `plexd`: a node's cluster coordinator. See docs/OPERATIONS.md.

use std::path::PathBuf;

use clap::Parser;

/// plexd: the cluster coordinator of one node (membership, configuration
/// transactions, the configuration database on the disks, the ctl API).
///
/// Example: plexd --cluster /etc/plexd/cluster.toml --node a
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The cluster file (TOML).
    #[arg(long, env = "PLEXD_CLUSTER")]
    cluster: PathBuf,
    /// This node's name in the cluster file.
    #[arg(long)]
    node: String,
    /// Start plexd-target (next to this binary) if the node's target socket is dead.
    #[arg(long)]
    spawn_target: bool,
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    let args = Args::parse();
    let opts = plexd_coordinator::daemon::Options {
        cluster: args.cluster,
        node: args.node,
        spawn_target: args.spawn_target,
    };
    if let Err(e) = plexd_coordinator::daemon::run(opts) {
        eprintln!("plexd: {e}");
        std::process::exit(1);
    }
}
