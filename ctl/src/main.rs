//! plexctl: the command-line client of a plexd cluster. It speaks only the ctl API
//! (`schema/ctl.capnp`) to one node. See docs/OPERATIONS.md for every command.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::Duration;

use capnp_rpc::{rpc_twoparty_capnp, twoparty, RpcSystem};
use clap::{Parser, Subcommand, ValueEnum};
use futures::AsyncReadExt;
use plexd_proto::ctl_capnp::{self as c, ctl};
use serde_json::{json, Value};
use smol::{Async, LocalExecutor};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long plexctl waits for an answer by default (`--timeout`): longer than a node
/// waits for its own main loop (`CALL_TIMEOUT`, 120 s), so the node's own timeout
/// message wins when it has one.
const CALL_TIMEOUT: Duration = Duration::from_secs(150);
/// The exit status of each kind of failure (0 is success). Shown by `--help` and
/// documented in docs/OPERATIONS.md ("Exit status").
const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  refused: invalid, in use, not found or exists (nothing changed)
  2  usage: the command line is wrong (nothing was asked)
  3  unreachable: the node or its master did not answer (cannot connect,
     timeout); a change whose answer was lost is 5
  4  no quorum, no master, or busy: nothing changed; retry later
  5  outcome unknown: the change may or may not have been applied
     (check with plexctl print)
  6  failed: a node could not carry the change out (nothing changed)
  7  internal error (a malformed answer, or a node without typed errors)
With --json, a failure prints one JSON line on stderr:
  {\"error\": {\"kind\", \"node\", \"object\", \"message\", \"exit\"}}";

/// Exit status of a usage error (bad option, bad size).
const EXIT_USAGE: u8 = 2;

/// The exit status of a failure of `kind` (see [`EXIT_CODES`]).
fn exit_code(kind: c::ErrorKind) -> u8 {
    use c::ErrorKind as K;
    match kind {
        K::Refused | K::InUse | K::NotFound | K::Exists => 1,
        K::Usage => EXIT_USAGE,
        K::Unreachable => 3,
        K::NoQuorum | K::NotMaster | K::Busy => 4,
        K::OutcomeUnknown => 5,
        K::Failed => 6,
        K::Internal => 7,
    }
}

/// The schema's name of `kind` (the JSON error's `kind`).
fn kind_name(kind: c::ErrorKind) -> &'static str {
    use c::ErrorKind as K;
    match kind {
        K::Internal => "internal",
        K::Refused => "refused",
        K::InUse => "inUse",
        K::NotFound => "notFound",
        K::Exists => "exists",
        K::Usage => "usage",
        K::Unreachable => "unreachable",
        K::NoQuorum => "noQuorum",
        K::NotMaster => "notMaster",
        K::Busy => "busy",
        K::OutcomeUnknown => "outcomeUnknown",
        K::Failed => "failed",
    }
}

/// A typed failure: the ctl API's `CtlError`, or plexctl's own.
#[derive(Debug)]
struct CtlFailure {
    kind: c::ErrorKind,
    /// The node that refused or failed (or the address plexctl could not reach).
    node: String,
    /// The object the command was about; empty if none.
    object: String,
    /// One line naming the node and the object.
    message: String,
}

impl CtlFailure {
    /// A failure plexctl found by itself.
    fn internal(message: impl Into<String>) -> CtlFailure {
        CtlFailure {
            kind: c::ErrorKind::Internal,
            node: String::new(),
            object: String::new(),
            message: message.into(),
        }
    }
}

/// Why plexctl failed.
#[derive(Debug)]
enum Failure {
    /// The command line is wrong (exit 2).
    Usage(String),
    /// The node answered with an error.
    Node(CtlFailure),
    /// No node could be reached: the last address tried and why (exit 3).
    Unreachable(String, String),
    /// The connection failed or gave no answer after the request went out: a change
    /// may have been applied (exit 5), a read was not answered (exit 3).
    Lost(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Failure {
        Failure::Lost(e)
    }
}

impl Failure {
    /// The typed failure; `change`: the command was a change; `addr`: the node asked.
    fn typed(self, change: bool, addr: &str) -> CtlFailure {
        let plain = |kind, message| CtlFailure {
            kind,
            node: addr.to_string(),
            object: String::new(),
            message,
        };
        match self {
            Failure::Usage(m) => plain(c::ErrorKind::Usage, m),
            Failure::Node(f) => f,
            Failure::Unreachable(a, m) => CtlFailure {
                node: a,
                ..plain(c::ErrorKind::Unreachable, m)
            },
            Failure::Lost(m) if change => plain(c::ErrorKind::OutcomeUnknown, m),
            Failure::Lost(m) => plain(c::ErrorKind::Unreachable, m),
        }
    }
}

/// plexctl: manage a plexd cluster (disks, disk groups, volumes, plexes).
///
/// Examples:
///   plexctl --node 127.0.0.1:7701 disk init /tmp/x/disks/d1.img --name d1
///   plexctl --node a --cluster /tmp/x/cluster.toml dg create dg1 d1 d2 --shared
///   plexctl vol create dg1 vol1 1G --layout mirror --mirrors 2
///   plexctl --json cluster status
#[derive(Parser, Debug)]
#[command(version, verbatim_doc_comment, after_help = EXIT_CODES)]
struct Cli {
    /// Node to talk to: ADDR (host:port) or a node NAME of the cluster file.
    #[arg(long, env = "PLEXD_NODE", global = true)]
    node: Option<String>,
    /// The cluster file (to find a node by name, or any node).
    #[arg(long, env = "PLEXD_CLUSTER", global = true)]
    cluster: Option<PathBuf>,
    /// Machine-readable output (read commands).
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for the node's answer (default 150: longer than a change
    /// may take).
    #[arg(long, global = true, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    timeout: Option<u64>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Disks: `disk init PATH [--name NAME]`, `disk list`.
    #[command(subcommand)]
    Disk(DiskCmd),
    /// Disk groups.
    #[command(subcommand)]
    Dg(DgCmd),
    /// Volumes.
    #[command(subcommand)]
    Vol(VolCmd),
    /// Plexes (mirrors).
    #[command(subcommand)]
    Plex(PlexCmd),
    /// The configuration as a tree (dg / dm / v / pl / sd), like vxprint -ht.
    Print {
        /// Only this disk group.
        dg: Option<String>,
    },
    /// Cluster membership.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Background tasks (plex resyncs).
    #[command(subcommand)]
    Task(TaskCmd),
    /// Exports a volume to hosts on every node (the default), or only on the node
    /// named with `--on`. Examples: export iscsi dg1 vol1 --on b;
    /// export nvmf dg1 vol1 --host nqn.2014-08.org.nvmexpress:uuid:...
    Export {
        /// Protocol: iscsi or nvmf (NVMe/TCP).
        protocol: String,
        /// Disk group.
        dg: String,
        /// Volume.
        vol: String,
        /// On every node (the default).
        #[arg(long, conflicts_with = "on")]
        all: bool,
        /// Only on node NAME (a node of the cluster file).
        #[arg(long, value_name = "NAME")]
        on: Option<String>,
        /// iscsi: target name (default iqn.2026-11.io.plexd:CLUSTER.DG.VOL).
        #[arg(long, conflicts_with = "nqn")]
        iqn: Option<String>,
        /// nvmf: subsystem NQN (default nqn.2026-11.io.plexd:CLUSTER-ID.DG.VOL).
        #[arg(long)]
        nqn: Option<String>,
        /// iscsi: ADDR:PORT to serve it on (with `--on` only; default: the node's
        /// iscsi_portal from the cluster file). nvmf exports use each node's
        /// nvmf_portal.
        #[arg(long, requires = "on")]
        portal: Option<String>,
        /// nvmf: a host NQN allowed to connect (repeatable; default: any host).
        #[arg(long = "host", value_name = "NQN")]
        hosts: Vec<String>,
    },
    /// Ends a volume's export on every node. Example: unexport iscsi dg1 vol1
    Unexport {
        /// Protocol: iscsi or nvmf.
        protocol: String,
        /// Disk group.
        dg: String,
        /// Volume.
        vol: String,
    },
}

#[derive(Subcommand, Debug)]
enum DiskCmd {
    /// Writes a label on a disk (file or block device). Example: disk init /dev/sdb --name d1
    Init {
        /// Disk path.
        path: String,
        /// Disk media name (default: the file name without extension).
        #[arg(long)]
        name: Option<String>,
        /// Re-initialise a disk that already has a label (a free disk or a disk of a
        /// deported group; never a disk an imported group holds).
        #[arg(long)]
        force: bool,
    },
    /// Lists the disks on the cluster's disk paths.
    List,
}

#[derive(Subcommand, Debug)]
enum DgCmd {
    /// Creates a disk group from initialised disks. Example: dg create dg1 d1 d2 --shared
    Create {
        /// Disk group name.
        dg: String,
        /// Disk media names.
        #[arg(required = true)]
        disks: Vec<String>,
        /// A shared (cluster) disk group; default private to the node.
        #[arg(long)]
        shared: bool,
    },
    /// Adds an initialised disk.
    AddDisk {
        /// Disk group.
        dg: String,
        /// Disk media name.
        disk: String,
    },
    /// Removes a disk holding no subdisk.
    RmDisk {
        /// Disk group.
        dg: String,
        /// Disk media name.
        disk: String,
    },
    /// Destroys the group and its volumes. Refused while a volume is exported
    /// (unexport first) or a host is logged in to one.
    Destroy {
        /// Disk group.
        dg: String,
        /// End the group's exports too (never while a host session is logged in);
        /// for a failed group: release its disks.
        #[arg(long)]
        force: bool,
    },
    /// Gives the group up (its configuration stays on its disks). Refused while a
    /// volume is exported (unexport first) or a host is logged in to one.
    Deport {
        /// Disk group.
        dg: String,
        /// End the group's exports too (never while a host session is logged in).
        #[arg(long)]
        force: bool,
    },
    /// Imports a deported group found on the disks.
    Import {
        /// Disk group.
        dg: String,
        /// Import as a shared group.
        #[arg(long)]
        shared: bool,
    },
    /// Lists the disk groups.
    List,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Layout {
    Concat,
    Stripe,
    Mirror,
    MirrorStripe,
}

#[derive(Subcommand, Debug)]
enum VolCmd {
    /// Creates a volume. Example: vol create dg1 vol1 1G --layout mirror --mirrors 2
    Create {
        /// Disk group.
        dg: String,
        /// Volume name.
        vol: String,
        /// Size (K/M/G/T suffixes; rounded up to whole 512-byte sectors).
        size: String,
        /// Layout.
        #[arg(long, value_enum, default_value = "concat")]
        layout: Layout,
        /// Plexes of a mirror layout (default 2).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=32))]
        mirrors: Option<u32>,
        /// Columns of a stripe layout (default 2).
        #[arg(long, value_parser = clap::value_parser!(u32).range(2..=64))]
        columns: Option<u32>,
        /// Stripe unit (default 64K; a non-zero multiple of 4K).
        #[arg(long)]
        stripe_unit: Option<String>,
    },
    /// Grows a volume to SIZE, or by SIZE with `+SIZE`. Example: vol grow dg1 vol1 +1G
    Grow {
        /// Disk group.
        dg: String,
        /// Volume.
        vol: String,
        /// New size, or `+SIZE`.
        size: String,
    },
    /// Shrinks a volume to SIZE, or by SIZE with `-SIZE` (data beyond the new end is
    /// lost). Example: vol shrink dg1 vol1 -- -512M
    Shrink {
        /// Disk group.
        dg: String,
        /// Volume.
        vol: String,
        /// New size, or `-SIZE`.
        #[arg(allow_hyphen_values = true)]
        size: String,
    },
    /// Removes a volume.
    Rm {
        /// Disk group.
        dg: String,
        /// Volume.
        vol: String,
    },
    /// Lists volumes.
    List {
        /// Only this disk group.
        dg: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
enum PlexCmd {
    /// Adds an EMPTY plex to a volume (then `plex attach` it).
    Add {
        /// Disk group.
        dg: String,
        /// Volume.
        vol: String,
    },
    /// Detaches a plex (STALE).
    Detach {
        /// Disk group.
        dg: String,
        /// Plex.
        plex: String,
    },
    /// Attaches a STALE or EMPTY plex: resync (see `task list`), then ACTIVE.
    Attach {
        /// Disk group.
        dg: String,
        /// Plex.
        plex: String,
    },
    /// Removes a plex (an ACTIVE one only with `--force`; never the last ACTIVE one).
    Rm {
        /// Disk group.
        dg: String,
        /// Plex.
        plex: String,
        /// Remove an ACTIVE plex (the volume loses a copy of its data).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Nodes, roles, states, view, master, last failure reasons.
    Status,
    /// The configured nodes.
    Nodes,
}

#[derive(Subcommand, Debug)]
enum TaskCmd {
    /// Lists tasks with progress.
    List,
}

/// A size on the command line (the coordinator's parser: K/M/G/T/P, `s` sectors, a
/// fraction when it makes whole bytes); a bad one is a usage error.
fn parse_size(s: &str) -> Result<u64, Failure> {
    plexd_proto::size::parse_size(s).map_err(|e| Failure::Usage(e.to_string()))
}

/// `vol grow` / `vol shrink` SIZE: `(bytes, relative)`; `+SIZE` grows by, `-SIZE`
/// shrinks by (the other sign is a usage error).
fn parse_resize(s: &str, grow: bool) -> Result<(u64, bool), Failure> {
    let (sign, rest) = match s.trim().chars().next() {
        Some(c @ ('+' | '-')) => (Some(c), &s.trim()[1..]),
        _ => (None, s),
    };
    match (sign, grow) {
        (None, _) => Ok((parse_size(s)?, false)),
        (Some('+'), true) | (Some('-'), false) => {
            let by = parse_size(rest)?;
            if by == 0 {
                return Err(Failure::Usage(format!("size {s:?}: a change of 0 bytes")));
            }
            Ok((by, true))
        }
        (Some(_), _) => Err(Failure::Usage(format!(
            "size {s:?}: vol {} takes SIZE or {}SIZE",
            if grow { "grow" } else { "shrink" },
            if grow { '+' } else { '-' }
        ))),
    }
}

fn format_size(b: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("T", 1 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ];
    for (u, m) in UNITS {
        if b >= m {
            return if b.is_multiple_of(m) {
                format!("{}{u}", b / m)
            } else {
                format!("{:.1}{u}", b as f64 / m as f64)
            };
        }
    }
    format!("{b}")
}

/// Candidate addresses to try, in order.
fn addresses(cli: &Cli) -> Result<Vec<String>, String> {
    let file = match &cli.cluster {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cluster file {}: {e}", p.display()))?;
            let v: toml::Value = toml::from_str(&text)
                .map_err(|e| format!("cluster file {}: {}", p.display(), e.message()))?;
            Some(v)
        }
        None => None,
    };
    let nodes: Vec<(String, String)> = file
        .as_ref()
        .and_then(|v| v.get("nodes"))
        .and_then(|n| n.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|n| {
                    Some((
                        n.get("name")?.as_str()?.to_string(),
                        n.get("address")?.as_str()?.to_string(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    match &cli.node {
        Some(n) => {
            if let Some((_, a)) = nodes.iter().find(|(name, _)| name == n) {
                Ok(vec![a.clone()])
            } else if n.contains(':') {
                Ok(vec![n.clone()])
            } else if file.is_some() {
                Err(format!("node {n} is not in the cluster file"))
            } else {
                Err(format!(
                    "node {n}: give an address (host:port) or --cluster FILE to find it by name"
                ))
            }
        }
        None if !nodes.is_empty() => Ok(nodes.into_iter().map(|(_, a)| a).collect()),
        None => Err(
            "no node given: use --node ADDR, or --cluster FILE (or PLEXD_NODE / PLEXD_CLUSTER)"
                .into(),
        ),
    }
}

fn connect(addrs: &[String]) -> Result<(TcpStream, String), Failure> {
    let mut last = String::new();
    let mut last_addr = String::new();
    for a in addrs {
        let sock = match a.to_socket_addrs().ok().and_then(|mut s| s.next()) {
            Some(s) => s,
            None => {
                last = format!("{a}: cannot resolve");
                last_addr = a.clone();
                continue;
            }
        };
        match TcpStream::connect_timeout(&sock, CONNECT_TIMEOUT) {
            Ok(s) => return Ok((s, a.clone())),
            Err(e) => {
                last = format!("cannot reach plexd at {a}: {e}");
                last_addr = a.clone();
            }
        }
    }
    Err(Failure::Unreachable(last_addr, last))
}

/// Runs `f` with a ctl client on a local executor; returns the address asked too.
fn with_ctl<T: 'static>(
    addrs: &[String],
    call_timeout: Duration,
    f: impl AsyncFnOnce(ctl::Client) -> Result<T, Failure>,
) -> (String, Result<T, Failure>) {
    let (stream, addr) = match connect(addrs) {
        Ok(c) => c,
        Err(e) => return (addrs.last().cloned().unwrap_or_default(), Err(e)),
    };
    let _ = stream.set_nodelay(true);
    let stream = match Async::new(stream) {
        Ok(s) => s,
        Err(e) => return (addr.clone(), Err(Failure::Lost(format!("{addr}: {e}")))),
    };
    let (reader, writer) = stream.split();
    let network = twoparty::VatNetwork::new(
        futures::io::BufReader::new(reader),
        futures::io::BufWriter::new(writer),
        rpc_twoparty_capnp::Side::Client,
        Default::default(),
    );
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let client: ctl::Client = rpc.bootstrap(rpc_twoparty_capnp::Side::Server);
    let ex = Rc::new(LocalExecutor::new());
    let addr2 = addr.clone();
    let conn = async move {
        let addr = addr2;
        let r = rpc.await;
        Err(Failure::Lost(format!(
            "{addr}: connection closed{}",
            r.err().map(|e| format!(": {e}")).unwrap_or_default()
        )))
    };
    let addr3 = addr.clone();
    let timeout = async move {
        smol::Timer::after(call_timeout).await;
        Err(Failure::Lost(format!(
            "{addr3}: no answer within {} s; the node may be hung or overloaded (see its log); a change may still complete: check with plexctl print",
            call_timeout.as_secs()
        )))
    };
    let result =
        smol::block_on(ex.run(smol::future::or(smol::future::or(f(client), conn), timeout)));
    (addr, result)
}

fn rpc(e: capnp::Error) -> String {
    format!("rpc: {e}")
}

fn text(r: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, String> {
    r.map_err(rpc)?
        .to_string()
        .map_err(|e| format!("rpc: bad text: {e}"))
}

/// The call's failure, if any: the typed `failure` when the node sets it, else the
/// `error` text of a node without typed errors (kind internal).
fn check(
    error: capnp::Result<capnp::text::Reader<'_>>,
    failure: Option<capnp::Result<c::ctl_error::Reader<'_>>>,
) -> Result<(), Failure> {
    let error = text(error)?;
    if let Some(f) = failure {
        let f = f.map_err(rpc)?;
        return Err(Failure::Node(CtlFailure {
            // A kind this plexctl does not know (a newer node) is internal.
            kind: f.get_kind().unwrap_or(c::ErrorKind::Internal),
            node: text(f.get_node())?,
            object: text(f.get_object())?,
            message: text(f.get_message())?,
        }));
    }
    if error.is_empty() {
        Ok(())
    } else {
        Err(Failure::Node(CtlFailure::internal(error)))
    }
}

/// Fills the `Change` of a change request.
type ChangeBuilder = Box<dyn Fn(c::change::Builder<'_>)>;

fn build_change(cmd: &Cmd) -> Result<Option<ChangeBuilder>, Failure> {
    Ok(Some(match cmd {
        Cmd::Dg(DgCmd::Create { dg, disks, shared }) => {
            let (dg, disks, shared) = (dg.clone(), disks.clone(), *shared);
            Box::new(move |b| {
                let mut x = b.init_dg_create();
                x.set_dg(dg.as_str());
                x.set_shared(shared);
                let mut l = x.init_disks(disks.len() as u32);
                for (i, d) in disks.iter().enumerate() {
                    l.set(i as u32, d.as_str());
                }
            })
        }
        Cmd::Dg(DgCmd::AddDisk { dg, disk }) | Cmd::Dg(DgCmd::RmDisk { dg, disk }) => {
            let add = matches!(cmd, Cmd::Dg(DgCmd::AddDisk { .. }));
            let (dg, disk) = (dg.clone(), disk.clone());
            Box::new(move |b| {
                let mut x = if add {
                    b.init_dg_add_disk()
                } else {
                    b.init_dg_rm_disk()
                };
                x.set_dg(dg.as_str());
                x.set_disk(disk.as_str());
            })
        }
        Cmd::Dg(DgCmd::Destroy { dg, force }) => {
            let (dg, force) = (dg.clone(), *force);
            Box::new(move |mut b| {
                b.set_force(force);
                b.set_dg_destroy(dg.as_str())
            })
        }
        Cmd::Dg(DgCmd::Deport { dg, force }) => {
            let (dg, force) = (dg.clone(), *force);
            Box::new(move |mut b| {
                b.set_force(force);
                b.set_dg_deport(dg.as_str())
            })
        }
        Cmd::Dg(DgCmd::Import { dg, shared }) => {
            let (dg, shared) = (dg.clone(), *shared);
            Box::new(move |b| {
                let mut x = b.init_dg_import();
                x.set_dg(dg.as_str());
                x.set_shared(shared);
            })
        }
        Cmd::Vol(VolCmd::Create {
            dg,
            vol,
            size,
            layout,
            mirrors,
            columns,
            stripe_unit,
        }) => {
            let size = parse_size(size)?;
            if size == 0 {
                return Err(Failure::Usage(format!("volume {vol}: size 0")));
            }
            let su = match stripe_unit {
                Some(s) => match parse_size(s)? {
                    0 => {
                        return Err(Failure::Usage(format!(
                            "--stripe-unit {s}: must be a non-zero multiple of 4K"
                        )))
                    }
                    n => n,
                },
                None => 0,
            };
            let (dg, vol, layout, mirrors, columns) = (
                dg.clone(),
                vol.clone(),
                *layout,
                mirrors.unwrap_or(0),
                columns.unwrap_or(0),
            );
            Box::new(move |b| {
                let mut x = b.init_vol_create();
                x.set_dg(dg.as_str());
                x.set_volume(vol.as_str());
                x.set_size_bytes(size);
                x.set_layout(match layout {
                    Layout::Concat => c::Layout::Concat,
                    Layout::Stripe => c::Layout::Stripe,
                    Layout::Mirror => c::Layout::Mirror,
                    Layout::MirrorStripe => c::Layout::MirrorStripe,
                });
                x.set_mirrors(mirrors);
                x.set_columns(columns);
                x.set_stripe_unit_bytes(su);
            })
        }
        Cmd::Vol(VolCmd::Grow { dg, vol, size }) | Cmd::Vol(VolCmd::Shrink { dg, vol, size }) => {
            let grow = matches!(cmd, Cmd::Vol(VolCmd::Grow { .. }));
            let (size, relative) = parse_resize(size, grow)?;
            let (dg, vol) = (dg.clone(), vol.clone());
            Box::new(move |b| {
                let mut x = if grow {
                    b.init_vol_grow()
                } else {
                    b.init_vol_shrink()
                };
                x.set_dg(dg.as_str());
                x.set_volume(vol.as_str());
                x.set_new_size_bytes(size);
                x.set_relative(relative);
            })
        }
        Cmd::Vol(VolCmd::Rm { dg, vol }) => {
            let (dg, vol) = (dg.clone(), vol.clone());
            Box::new(move |b| {
                let mut x = b.init_vol_rm();
                x.set_dg(dg.as_str());
                x.set_volume(vol.as_str());
            })
        }
        Cmd::Plex(PlexCmd::Add { dg, vol }) => {
            let (dg, vol) = (dg.clone(), vol.clone());
            Box::new(move |b| {
                let mut x = b.init_plex_add();
                x.set_dg(dg.as_str());
                x.set_volume(vol.as_str());
            })
        }
        Cmd::Plex(PlexCmd::Detach { dg, plex })
        | Cmd::Plex(PlexCmd::Attach { dg, plex })
        | Cmd::Plex(PlexCmd::Rm { dg, plex, .. }) => {
            let (op, force) = match cmd {
                Cmd::Plex(PlexCmd::Detach { .. }) => (0, false),
                Cmd::Plex(PlexCmd::Attach { .. }) => (1, false),
                Cmd::Plex(PlexCmd::Rm { force, .. }) => (2, *force),
                _ => (2, false),
            };
            let (dg, plex) = (dg.clone(), plex.clone());
            Box::new(move |mut b| {
                b.set_force(force);
                let mut x = match op {
                    0 => b.init_plex_detach(),
                    1 => b.init_plex_attach(),
                    _ => b.init_plex_rm(),
                };
                x.set_dg(dg.as_str());
                x.set_plex(plex.as_str());
            })
        }
        Cmd::Export {
            protocol,
            dg,
            vol,
            all: _,
            on,
            iqn,
            nqn,
            portal,
            hosts,
        } => {
            let on = on.clone();
            let (protocol, dg, vol) = (protocol.clone(), dg.clone(), vol.clone());
            // One name field carries either (the node checks it for the protocol).
            let name = iqn.clone().or_else(|| nqn.clone()).unwrap_or_default();
            let (portal, hosts) = (portal.clone(), hosts.clone());
            Box::new(move |b| {
                let mut x = b.init_vol_export();
                x.set_protocol(protocol.as_str());
                x.set_dg(dg.as_str());
                x.set_volume(vol.as_str());
                x.set_iqn(name.as_str());
                x.set_portal(portal.as_deref().unwrap_or(""));
                {
                    let mut h = x.reborrow().init_hosts(hosts.len() as u32);
                    for (i, n) in hosts.iter().enumerate() {
                        h.set(i as u32, n.as_str());
                    }
                }
                let mut nodes = x.init_nodes(u32::from(on.is_some()));
                if let Some(n) = &on {
                    nodes.set(0, n.as_str());
                }
            })
        }
        Cmd::Unexport { protocol, dg, vol } => {
            let (protocol, dg, vol) = (protocol.clone(), dg.clone(), vol.clone());
            Box::new(move |b| {
                let mut x = b.init_vol_unexport();
                x.set_protocol(protocol.as_str());
                x.set_dg(dg.as_str());
                x.set_volume(vol.as_str());
            })
        }
        _ => return Ok(None),
    }))
}

async fn print_json(client: &ctl::Client, dg: &str) -> Result<(Value, String), Failure> {
    let mut req = client.print_request();
    req.get().set_dg(dg);
    let resp = req.send().promise.await.map_err(rpc)?;
    let r = resp.get().map_err(rpc)?;
    check(r.get_error(), r.has_failure().then(|| r.get_failure()))?;
    if !r.has_config() {
        return Err(Failure::Node(CtlFailure::internal(
            "the node's print answer has no configuration structs (`config`): the node is \
             older than this plexctl; use the plexctl of its release",
        )));
    }
    let config = r.get_config().map_err(rpc)?;
    let malformed = |e: capnp::Error| format!("malformed print answer: {e}");
    let json = plexd_proto::print::json(config).map_err(malformed)?;
    Ok((
        json,
        plexd_proto::print::text_tree(config).map_err(malformed)?,
    ))
}

async fn status(client: &ctl::Client) -> Result<Value, Failure> {
    let resp = client
        .cluster_status_request()
        .send()
        .promise
        .await
        .map_err(rpc)?;
    let r = resp.get().map_err(rpc)?;
    check(r.get_error(), r.has_failure().then(|| r.get_failure()))?;
    let s = r.get_status().map_err(rpc)?;
    let mut nodes = Vec::new();
    for n in s.get_nodes().map_err(rpc)? {
        nodes.push(json!({
            "name": text(n.get_name())?,
            "id": n.get_id(),
            "role": text(n.get_role())?,
            "state": text(n.get_state())?,
            "reason": text(n.get_reason())?,
            "address": text(n.get_address())?,
        }));
    }
    let mut failed = Vec::new();
    for f in s.get_failed_groups().map_err(rpc)? {
        failed.push(Value::String(
            f.map_err(rpc)?
                .to_string()
                .map_err(|e| format!("rpc: bad text: {e}"))?,
        ));
    }
    Ok(json!({
        "node": text(s.get_node())?,
        "master": text(s.get_master())?,
        "view": s.get_view(),
        "nodes": nodes,
        "failed_disk_groups": failed,
        "quorum_disk": text(s.get_quorum_disk())?,
    }))
}

fn disk_json(d: c::disk_info::Reader<'_>) -> Result<Value, String> {
    Ok(json!({
        "name": text(d.get_name())?,
        "path": text(d.get_path())?,
        "size": d.get_size_bytes(),
        "dg": text(d.get_dg())?,
        "state": text(d.get_state())?,
        "id": text(d.get_id())?,
        "repairs": d.get_repairs(),
    }))
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Runs `cmd` on a node: `change` is its change request, built (and checked for
/// usage errors) before any node was asked; none for read commands.
async fn run(
    cmd: Cmd,
    change: Option<ChangeBuilder>,
    json_out: bool,
    client: ctl::Client,
) -> Result<String, Failure> {
    if let Some(build) = change {
        let mut req = client.change_request();
        build(req.get().init_change());
        let resp = req.send().promise.await.map_err(rpc)?;
        let r = resp.get().map_err(rpc)?;
        check(r.get_error(), r.has_failure().then(|| r.get_failure()))?;
        let done = text(r.get_done())?;
        return Ok(if json_out {
            serde_json::to_string_pretty(&json!({ "done": done })).unwrap_or_default()
        } else {
            done
        });
    }
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default();
    match cmd {
        Cmd::Disk(DiskCmd::Init { path, name, force }) => {
            let abs = std::path::absolute(&path)
                .map(|p| p.display().to_string())
                .unwrap_or(path);
            let mut req = client.disk_init_request();
            req.get().set_path(abs.as_str());
            req.get().set_name(name.as_deref().unwrap_or(""));
            req.get().set_force(force);
            let resp = req.send().promise.await.map_err(rpc)?;
            let r = resp.get().map_err(rpc)?;
            check(r.get_error(), r.has_failure().then(|| r.get_failure()))?;
            let d = disk_json(r.get_disk().map_err(rpc)?)?;
            if json_out {
                return Ok(pretty(&d));
            }
            Ok(format!(
                "disk {} initialised on {} ({})",
                s(&d["name"]),
                s(&d["path"]),
                format_size(d["size"].as_u64().unwrap_or(0))
            ))
        }
        Cmd::Disk(DiskCmd::List) => {
            let resp = client
                .disk_list_request()
                .send()
                .promise
                .await
                .map_err(rpc)?;
            let r = resp.get().map_err(rpc)?;
            check(r.get_error(), r.has_failure().then(|| r.get_failure()))?;
            let mut disks = Vec::new();
            for d in r.get_disks().map_err(rpc)? {
                disks.push(disk_json(d)?);
            }
            if json_out {
                return Ok(pretty(&json!({ "disks": disks })));
            }
            let mut out = format!(
                "{:<12} {:<40} {:>8}  {:<12} {:>7}  {}",
                "DISK", "PATH", "SIZE", "GROUP", "REPAIRS", "STATE"
            );
            for d in &disks {
                let dg = s(&d["dg"]);
                out.push_str(&format!(
                    "\n{:<12} {:<40} {:>8}  {:<12} {:>7}  {}",
                    s(&d["name"]),
                    s(&d["path"]),
                    format_size(d["size"].as_u64().unwrap_or(0)),
                    if dg.is_empty() { "-".into() } else { dg },
                    s(&d["repairs"]),
                    s(&d["state"])
                ));
            }
            Ok(out)
        }
        Cmd::Dg(DgCmd::List) => {
            let (v, _) = print_json(&client, "").await?;
            let groups: Vec<Value> = v["disk_groups"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|g| {
                    json!({
                        "name": g["name"], "shared": g["shared"], "seq": g["seq"],
                        "disks": g["disks"].as_array().map(|a| a.len()).unwrap_or(0),
                        "volumes": g["volumes"].as_array().map(|a| a.len()).unwrap_or(0),
                        "state": "ok", "reason": "",
                    })
                })
                .chain(
                    v["failed_disk_groups"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|g| {
                            json!({
                                "name": g["name"], "shared": g["shared"], "seq": Value::Null,
                                "disks": g["disks"].as_array().map(|a| a.len()).unwrap_or(0),
                                "volumes": Value::Null,
                                "state": "failed", "reason": g["reason"],
                            })
                        }),
                )
                .collect();
            if json_out {
                return Ok(pretty(&json!({ "disk_groups": groups })));
            }
            let mut out = format!(
                "{:<12} {:<8} {:>6} {:>6} {:>8}  {}",
                "GROUP", "KIND", "SEQ", "DISKS", "VOLUMES", "STATE"
            );
            for g in &groups {
                let dash = |v: &Value| if v.is_null() { "-".into() } else { s(v) };
                out.push_str(&format!(
                    "\n{:<12} {:<8} {:>6} {:>6} {:>8}  {}",
                    s(&g["name"]),
                    if g["shared"] == true {
                        "shared"
                    } else {
                        "private"
                    },
                    dash(&g["seq"]),
                    s(&g["disks"]),
                    dash(&g["volumes"]),
                    if g["state"] == "failed" {
                        format!("FAILED {}", s(&g["reason"]))
                    } else {
                        "ok".into()
                    }
                ));
            }
            Ok(out)
        }
        Cmd::Vol(VolCmd::List { dg }) => {
            let (v, _) = print_json(&client, dg.as_deref().unwrap_or("")).await?;
            let mut vols = Vec::new();
            for g in v["disk_groups"].as_array().cloned().unwrap_or_default() {
                for vol in g["volumes"].as_array().cloned().unwrap_or_default() {
                    vols.push(json!({
                        "dg": g["name"], "name": vol["name"], "size": vol["size"],
                        "state": vol["state"],
                        "plexes": vol["plexes"].as_array().map(|a| a.len()).unwrap_or(0),
                    }));
                }
            }
            if json_out {
                return Ok(pretty(&json!({ "volumes": vols })));
            }
            let mut out = format!(
                "{:<12} {:<12} {:>8} {:<9} {:>6}",
                "GROUP", "VOLUME", "SIZE", "STATE", "PLEXES"
            );
            for v in &vols {
                out.push_str(&format!(
                    "\n{:<12} {:<12} {:>8} {:<9} {:>6}",
                    s(&v["dg"]),
                    s(&v["name"]),
                    format_size(v["size"].as_u64().unwrap_or(0)),
                    s(&v["state"]),
                    s(&v["plexes"])
                ));
            }
            Ok(out)
        }
        Cmd::Print { dg } => {
            let (v, t) = print_json(&client, dg.as_deref().unwrap_or("")).await?;
            Ok(if json_out {
                pretty(&v)
            } else {
                t.trim_end().to_string()
            })
        }
        Cmd::Cluster(which) => {
            let v = status(&client).await?;
            if json_out {
                return Ok(pretty(&v));
            }
            let mut out = String::new();
            if let ClusterCmd::Status = which {
                out.push_str(&format!(
                    "node {} sees: master {}, view {}\n",
                    s(&v["node"]),
                    if s(&v["master"]).is_empty() {
                        "-".into()
                    } else {
                        s(&v["master"])
                    },
                    s(&v["view"])
                ));
                if !s(&v["quorum_disk"]).is_empty() {
                    out.push_str(&format!("{}\n", s(&v["quorum_disk"])));
                }
            }
            out.push_str(&format!(
                "{:<4} {:<10} {:<22} {:<12} {:<6} {}",
                "ID", "NODE", "ADDRESS", "ROLE", "STATE", "REASON"
            ));
            for n in v["nodes"].as_array().cloned().unwrap_or_default() {
                out.push_str(&format!(
                    "\n{:<4} {:<10} {:<22} {:<12} {:<6} {}",
                    s(&n["id"]),
                    s(&n["name"]),
                    s(&n["address"]),
                    s(&n["role"]),
                    s(&n["state"]),
                    s(&n["reason"])
                ));
            }
            for f in v["failed_disk_groups"]
                .as_array()
                .cloned()
                .unwrap_or_default()
            {
                out.push_str(&format!("\ndisk group {}", s(&f)));
            }
            Ok(out)
        }
        Cmd::Task(TaskCmd::List) => {
            let resp = client
                .task_list_request()
                .send()
                .promise
                .await
                .map_err(rpc)?;
            let r = resp.get().map_err(rpc)?;
            check(r.get_error(), r.has_failure().then(|| r.get_failure()))?;
            let mut tasks = Vec::new();
            for t in r.get_tasks().map_err(rpc)? {
                tasks.push(json!({
                    "id": t.get_id(), "kind": text(t.get_kind())?, "dg": text(t.get_dg())?,
                    "volume": text(t.get_volume())?, "plex": text(t.get_plex())?,
                    "done": t.get_done_bytes(), "total": t.get_total_bytes(),
                    "state": text(t.get_state())?, "node": text(t.get_node())?,
                }));
            }
            if json_out {
                return Ok(pretty(&json!({ "tasks": tasks })));
            }
            let mut out = format!(
                "{:<4} {:<7} {:<10} {:<12} {:<12} {:>6} {:<8} {}",
                "ID", "KIND", "GROUP", "VOLUME", "PLEX", "DONE", "NODE", "STATE"
            );
            for t in &tasks {
                let total = t["total"].as_u64().unwrap_or(0).max(1);
                let pct = t["done"].as_u64().unwrap_or(0) * 100 / total;
                out.push_str(&format!(
                    "\n{:<4} {:<7} {:<10} {:<12} {:<12} {:>5}% {:<8} {}",
                    s(&t["id"]),
                    s(&t["kind"]),
                    s(&t["dg"]),
                    s(&t["volume"]),
                    s(&t["plex"]),
                    pct,
                    s(&t["node"]),
                    s(&t["state"])
                ));
            }
            Ok(out)
        }
        _ => Err(Failure::Node(CtlFailure::internal(
            "internal error: unhandled command",
        ))),
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // With --json a command-line error is the JSON error too (help and version
        // print as usual).
        Err(e) if e.use_stderr() && std::env::args().skip(1).any(|a| a == "--json") => {
            let message = e.to_string();
            let line = message
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            let v = json!({ "error": {
                "kind": kind_name(c::ErrorKind::Usage),
                "node": "",
                "object": "",
                "message": line,
                "exit": EXIT_USAGE,
            }});
            eprintln!("{v}");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => e.exit(),
    };
    let json_out = cli.json;
    let is_change = matches!(build_change(&cli.cmd), Ok(Some(_)));
    // Usage errors (a bad size...) are found before any node is asked.
    let (addr, result) = match build_change(&cli.cmd) {
        Err(e) => (String::new(), Err(e)),
        Ok(change) => match addresses(&cli) {
            Err(e) => (String::new(), Err(Failure::Usage(e))),
            Ok(addrs) => {
                let call_timeout = cli.timeout.map(Duration::from_secs).unwrap_or(CALL_TIMEOUT);
                with_ctl(&addrs, call_timeout, async move |client| {
                    run(cli.cmd, change, json_out, client).await
                })
            }
        },
    };
    match result {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let f = e.typed(is_change, &addr);
            let code = exit_code(f.kind);
            let line = f.message.lines().next().unwrap_or("");
            if json_out {
                let v = json!({ "error": {
                    "kind": kind_name(f.kind),
                    "node": f.node,
                    "object": f.object,
                    "message": line,
                    "exit": code,
                }});
                eprintln!("{v}");
            } else {
                eprintln!("plexctl: {line}");
            }
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_accept_suffixes_and_signs() {
        assert_eq!(parse_size("64K").unwrap(), 64 << 10);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("1.5M").unwrap(), 3 << 19);
        for bad in ["1X", "", "12Q", "0.3K"] {
            assert!(matches!(parse_size(bad), Err(Failure::Usage(_))), "{bad}");
        }
        assert_eq!(format_size(3 << 20), "3M");
        assert_eq!(parse_resize("+1G", true).unwrap(), (1 << 30, true));
        assert_eq!(parse_resize("2G", true).unwrap(), (2 << 30, false));
        assert_eq!(parse_resize("-512M", false).unwrap(), (512 << 20, true));
        assert!(matches!(parse_resize("-1G", true), Err(Failure::Usage(_))));
        assert!(matches!(parse_resize("+1G", false), Err(Failure::Usage(_))));
        assert!(matches!(parse_resize("+0", true), Err(Failure::Usage(_))));
    }

    #[test]
    fn cli_parses_the_contract_commands() {
        let c = Cli::try_parse_from([
            "plexctl",
            "--node",
            "127.0.0.1:1",
            "vol",
            "create",
            "dg1",
            "v1",
            "1G",
            "--layout",
            "mirror-stripe",
            "--mirrors",
            "2",
            "--columns",
            "2",
            "--stripe-unit",
            "64K",
        ])
        .unwrap();
        assert!(build_change(&c.cmd).unwrap().is_some());
        let c = Cli::try_parse_from(["plexctl", "--json", "cluster", "status"]).unwrap();
        assert!(c.json);
        assert!(build_change(&c.cmd).unwrap().is_none());
        assert!(Cli::try_parse_from(["plexctl", "dg", "create", "dg1"]).is_err());
    }
}
