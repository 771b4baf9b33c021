//! `plexd-target`: the data plane process. Starts the reactors, creates the bdevs
//! and volumes of its configuration file, starts its frontends (iSCSI), and serves
//! the kernel interface on a Unix socket until SIGTERM or SIGINT; then it stops the
//! frontends, the API server (removing the socket) and the reactors, and exits 0.
//!
//! The iSCSI frontend belongs to the kernel interface's service, which manages it at
//! run time. Without an `[iscsi]` section the first `iscsiAddPortal` (or
//! `iscsiAddTarget`) starts it with the defaults of `[iscsi]` and persistent
//! reservations in `<socket path without extension>.iscsi-pr/`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use nix::sys::signal::{SigSet, Signal};

use plexd_target::api::{clear_stale_socket, KernelService, ServerHandle};
use plexd_target::config::{Config, DEFAULT_SOCKET};
use plexd_target::frontend::iscsi::IscsiConfig;
use plexd_target::reactor::{parse_cores, PollMode, ReactorConfig};
use plexd_target::{Target, TargetConfig};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum PollModeArg {
    /// Spin briefly when idle, then sleep until work arrives (the default).
    Adaptive,
    /// Never sleep: one full core per reactor, lowest latency.
    Always,
}

/// The plexd data plane: poll-mode reactors, bdevs, volumes, and the kernel
/// interface (Cap'n Proto over a Unix socket).
#[derive(Parser, Debug)]
#[command(
    name = "plexd-target",
    version,
    after_help = "Examples:\n  \
        plexd-target --socket /tmp/t0.sock --cores 0\n  \
        plexd-target --config /etc/plexd/target.toml\n  \
        plexd-target --config target.toml --set target.cores=0 --set iscsi.portal=127.0.0.1:3261\n\n\
        Command-line flags win over the file; --set KEY=VALUE edits the file's TOML tree\n\
        before it is read (numbers index arrays: --set bdevs.0.size=2G).\n\
        Logging: RUST_LOG (default info)."
)]
struct Args {
    /// TOML configuration: reactors, socket, bdevs and volumes to create at start.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Unix socket of the kernel interface [default: [target] socket, else /run/plexd/target0.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Cores to run reactors on, one each: "0,1", "2-5".
    #[arg(long, value_name = "LIST", conflicts_with = "cpumask")]
    cores: Option<String>,
    /// The same as a hex mask: "0x3".
    #[arg(long, value_name = "MASK")]
    cpumask: Option<String>,
    /// Whether idle reactors may sleep.
    #[arg(long, value_enum, value_name = "MODE")]
    poll_mode: Option<PollModeArg>,
    /// Overrides a key of the configuration, e.g. target.cores=0 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = Args::parse();
    // Block the stop signals before any thread starts, so every thread inherits the
    // mask and the main thread alone takes them with sigwait.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        eprintln!("plexd-target: cannot block SIGTERM/SIGINT: {e}");
        return ExitCode::from(1);
    }
    match run(&args, &signals) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            eprintln!("plexd-target: {e}");
            ExitCode::from(1)
        }
    }
}

/// Runs the data plane until a stop signal: configuration, reactors, frontends,
/// the kernel interface's server; then stops them in order.
fn run(args: &Args, signals: &SigSet) -> Result<(), String> {
    let cfg = match &args.config {
        Some(path) => Config::load(path, &args.set).map_err(|e| e.to_string())?,
        None => Config::parse("--set", "", &args.set).map_err(|e| e.to_string())?,
    };
    let reactors = reactor_config(args, &cfg)?;
    let socket = args
        .socket
        .clone()
        .or_else(|| cfg.target.socket.clone())
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
    // Fail on a live socket before creating anything.
    clear_stale_socket(&socket).map_err(|e| e.to_string())?;

    let poll_mode = reactors.poll_mode;
    let target = Target::start(&TargetConfig {
        reactors,
        pool: cfg.pool_config(),
    })
    .map_err(|e| e.to_string())?;
    let svc = KernelService::new(Arc::clone(&target), poll_mode);
    cfg.apply(&svc).map_err(|e| e.to_string())?;
    let frontends = start_frontends(&cfg, &target, &svc, &socket)?;
    let server = match ServerHandle::start(Arc::clone(&svc), &socket) {
        Ok(s) => s,
        Err(e) => {
            svc.stop_iscsi();
            svc.stop_nvmf();
            return Err(e.to_string());
        }
    };
    announce(&target, &socket, &frontends);

    match signals.wait() {
        Ok(sig) => log::info!("{sig}: stopping"),
        Err(e) => log::error!("waiting for a stop signal failed ({e}); stopping"),
    }
    svc.stop_iscsi();
    svc.stop_nvmf();
    server.stop();
    drop(svc);
    match Arc::try_unwrap(target) {
        // The last reference: dropping it stops and joins the reactors.
        Ok(t) => drop(t),
        Err(t) => log::warn!(
            "target still referenced {} time(s) by unfinished calls; exiting without joining reactors",
            Arc::strong_count(&t) - 1
        ),
    }
    log::info!("stopped");
    Ok(())
}

/// The file's reactor configuration with the command line's `--cores`,
/// `--cpumask` and `--poll-mode` over it.
fn reactor_config(args: &Args, cfg: &Config) -> Result<ReactorConfig, String> {
    let mut reactors = cfg.reactor_config();
    if let Some(c) = &args.cores {
        reactors.cores = parse_cores(c).map_err(|e| format!("--cores: {e}"))?;
    }
    if let Some(m) = &args.cpumask {
        if !m.trim().to_ascii_lowercase().starts_with("0x") {
            return Err(format!("--cpumask: {m:?} is not a hex mask such as 0x3"));
        }
        reactors.cores = parse_cores(m).map_err(|e| format!("--cpumask: {e}"))?;
    }
    if let Some(p) = args.poll_mode {
        reactors.poll_mode = match p {
            PollModeArg::Adaptive => PollMode::Adaptive,
            PollModeArg::Always => PollMode::Always,
        };
    }
    Ok(reactors)
}

/// Starts the configuration's iSCSI and NVMe-oF frontends, hands them to the
/// kernel interface's service with its defaults for frontends started later
/// (reservation folders beside `socket`); returns their addresses for the
/// start line.
fn start_frontends(
    cfg: &Config,
    target: &Arc<Target>,
    svc: &KernelService,
    socket: &Path,
) -> Result<String, String> {
    let iscsi = cfg.start_iscsi(target).map_err(|e| e.to_string())?;
    let nvmf = cfg.start_nvmf(target).map_err(|e| e.to_string())?;
    let mut frontends = iscsi
        .as_ref()
        .map(|f| format!("; iscsi portal {}", f.portal()))
        .unwrap_or_default();
    if let Some(n) = &nvmf {
        let l: Vec<String> = n.listeners().iter().map(|a| a.to_string()).collect();
        frontends.push_str(&format!("; nvmf listeners {}", l.join(",")));
    }
    svc.set_iscsi_defaults(IscsiConfig {
        pr_dir: Some(default_pr_dir(socket)),
        ..Default::default()
    });
    svc.set_iscsi(iscsi);
    // Namespaces the kernel interface maps keep reservations that are not the
    // cluster's here (a private volume's), as iSCSI LUNs do in theirs.
    svc.set_nvmf_pr_dir(Some(socket.with_extension("nvmf-pr")));
    svc.set_nvmf(nvmf);
    Ok(frontends)
}

/// Prints the one start line on stdout (what tests and scripts wait for).
fn announce(target: &Target, socket: &Path, frontends: &str) {
    let cores: Vec<String> = target
        .reactors()
        .cores()
        .iter()
        .map(|c| c.map_or_else(|| "unpinned".to_string(), |c| c.to_string()))
        .collect();
    // Not println!: a closed stdout must not panic the data plane.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "plexd-target: serving on {} with {} reactor(s) on cores {}, {} MiB of I/O buffers{}{frontends}",
        socket.display(),
        cores.len(),
        cores.join(","),
        target.pool().region_bytes() >> 20,
        if target.pool().hugepages() { " (hugepages)" } else { "" }
    );
    let _ = out.flush();
}

/// Where a frontend started through the kernel interface keeps persistent
/// reservations: next to the socket, `/run/plexd/target0.sock` ->
/// `/run/plexd/target0.iscsi-pr`.
fn default_pr_dir(socket: &Path) -> PathBuf {
    socket.with_extension("iscsi-pr")
}
