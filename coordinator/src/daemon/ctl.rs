//! The node's server: the public ctl API (`schema/ctl.capnp`, Cap'n Proto RPC) and
//! the peers' streams ([`super::peer_stream`]) on one TCP address; a connection's
//! first 8 bytes tell which.
//!
//! The server runs on the network thread's `smol::LocalExecutor` (RPC objects are
//! `!Send`; [`super::net`]), beside the peer connections. It decodes each call into
//! a [`CtlCall`] and hands it to the daemon's main loop (the only owner of the
//! protocol core) with a one-shot reply channel; peer messages become
//! [`Input::Peer`]. Nothing received here can panic the daemon:
//! malformed input is an error answer or a logged, dropped message.

use super::Inputs;
use std::cell::Cell;
use std::net::TcpListener;
use std::rc::Rc;
use std::time::Duration;

use capnp_rpc::{rpc_twoparty_capnp, twoparty, RpcSystem};
use futures::AsyncReadExt;
use plexd_proto::cluster_capnp::peer;
use plexd_proto::ctl_capnp::{self as c, ctl};
use serde::Serialize;
use smol::{Async, LocalExecutor};

use super::peer_stream;
use super::transport::{Identity, Refusals};
use super::Input;
use crate::core::{ErrorKind, RequestError, PROTOCOL_VERSION};
use crate::ondisk::codec::{text, texts};

/// Most connections (peers and clients) served at once.
pub const MAX_CONNECTIONS: usize = 256;
/// How long a ctl call waits for the main loop's answer (a change waits for its
/// transaction).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A plexctl command, as the daemon sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CtlChange {
    /// `dg create DG DISK... [--shared]`.
    DgCreate {
        /// Group.
        dg: String,
        /// Disk media names.
        disks: Vec<String>,
        /// Shared.
        shared: bool,
    },
    /// `dg add-disk DG DISK`.
    DgAddDisk {
        /// Group.
        dg: String,
        /// Disk media name.
        disk: String,
    },
    /// `dg rm-disk DG DISK`.
    DgRmDisk {
        /// Group.
        dg: String,
        /// Disk media name.
        disk: String,
    },
    /// `dg fail-disk DG DISK [--force]`.
    DgFailDisk {
        /// Group.
        dg: String,
        /// Disk media name.
        disk: String,
        /// Also when a volume's only ACTIVE plexes are on the disk.
        force: bool,
    },
    /// `dg reattach-disk DG DISK`.
    DgReattachDisk {
        /// Group.
        dg: String,
        /// Disk media name.
        disk: String,
    },
    /// `dg evacuate DG DISK [--to DISK,...]`.
    DgEvacuate {
        /// Group.
        dg: String,
        /// Disk media name.
        disk: String,
        /// The disks the replacements may use (empty: any).
        to: Vec<String>,
    },
    /// `dg destroy DG [--force]`.
    DgDestroy {
        /// Group.
        dg: String,
        /// End the group's exports too; for a failed group: release its disks.
        force: bool,
    },
    /// `dg deport DG [--force]`.
    DgDeport {
        /// Group.
        dg: String,
        /// End the group's exports too.
        force: bool,
    },
    /// `dg set DG detach-policy=global|local`.
    DgSet {
        /// Group.
        dg: String,
        /// `global` or `local` as typed (checked by the resolver).
        detach_policy: String,
    },
    /// `vol set DG VOL read-policy=round|least-busy|prefer:PLEX`.
    VolSet {
        /// Group.
        dg: String,
        /// Volume.
        volume: String,
        /// The policy as typed (checked by the resolver).
        read_policy: String,
    },
    /// `dg import DG [--shared] [--clear-owner]`.
    DgImport {
        /// Group.
        dg: String,
        /// Shared.
        shared: bool,
        /// Take it over from an owner that is down for good.
        clear_owner: bool,
    },
    /// `vol create`.
    VolCreate {
        /// Group.
        dg: String,
        /// Volume.
        volume: String,
        /// Size.
        size_bytes: u64,
        /// concat | stripe | mirror | mirror-stripe.
        layout: LayoutKind,
        /// Mirrors (0 = default).
        mirrors: u32,
        /// Columns (0 = default).
        columns: u32,
        /// Stripe unit (0 = default).
        stripe_unit_bytes: u64,
        /// `--drl off`.
        drl_off: bool,
        /// `--region-size` (0 = default).
        region_bytes: u64,
        /// `--disks`: the disks the plexes may use (empty: any).
        disks: Vec<String>,
    },
    /// `vol grow` / `vol shrink`.
    VolResize {
        /// Group.
        dg: String,
        /// Volume.
        volume: String,
        /// New size, or the change when `relative`.
        new_size_bytes: u64,
        /// Grow (true) or shrink.
        grow: bool,
        /// `+SIZE` / `-SIZE`: grow or shrink by `new_size_bytes`.
        relative: bool,
        /// `vol shrink --force`: also while hosts use the volume.
        force: bool,
    },
    /// `vol rm`.
    VolRm {
        /// Group.
        dg: String,
        /// Volume.
        volume: String,
    },
    /// `plex add DG VOL`.
    PlexAdd {
        /// Group.
        dg: String,
        /// Volume.
        volume: String,
        /// The disks the new plex may use (empty: any).
        disks: Vec<String>,
    },
    /// `plex detach|attach|rm DG PLEX`.
    Plex {
        /// Group.
        dg: String,
        /// Plex.
        plex: String,
        /// What to do.
        op: PlexOp,
        /// `plex rm --force`: remove an ACTIVE plex.
        force: bool,
    },
    /// `export PROTOCOL DG VOL [--node N]... [--iqn IQN | --nqn NQN] [--portal ADDR:PORT]
    /// [--host NQN]...`.
    VolExport {
        /// Group.
        dg: String,
        /// Volume.
        volume: String,
        /// Protocol name as given.
        protocol: String,
        /// Target name (IQN or NQN); empty = the default.
        iqn: String,
        /// Node names; empty = every node.
        nodes: Vec<String>,
        /// Portal; empty = each node's.
        portal: String,
        /// nvmf: host NQNs allowed; empty = any host.
        hosts: Vec<String>,
    },
    /// `unexport PROTOCOL DG VOL`.
    VolUnexport {
        /// Group.
        dg: String,
        /// Volume.
        volume: String,
        /// Protocol name as given.
        protocol: String,
    },
}

impl CtlChange {
    /// The object the change is about, for the typed error (`volume vol1 in disk
    /// group dg1`).
    pub fn object(&self) -> String {
        match self {
            CtlChange::DgCreate { dg, .. }
            | CtlChange::DgDestroy { dg, .. }
            | CtlChange::DgDeport { dg, .. }
            | CtlChange::DgImport { dg, .. }
            | CtlChange::DgSet { dg, .. } => format!("disk group {dg}"),
            CtlChange::DgAddDisk { dg, disk }
            | CtlChange::DgRmDisk { dg, disk }
            | CtlChange::DgFailDisk { dg, disk, .. }
            | CtlChange::DgReattachDisk { dg, disk }
            | CtlChange::DgEvacuate { dg, disk, .. } => {
                format!("disk {disk} in disk group {dg}")
            }
            CtlChange::VolCreate { dg, volume, .. }
            | CtlChange::VolResize { dg, volume, .. }
            | CtlChange::VolRm { dg, volume }
            | CtlChange::VolSet { dg, volume, .. }
            | CtlChange::PlexAdd { dg, volume, .. }
            | CtlChange::VolExport { dg, volume, .. }
            | CtlChange::VolUnexport { dg, volume, .. } => {
                format!("volume {volume} in disk group {dg}")
            }
            CtlChange::Plex { dg, plex, .. } => format!("plex {plex} in disk group {dg}"),
        }
    }
}

/// `vol create --layout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutKind {
    /// One concat plex.
    Concat,
    /// One stripe plex.
    Stripe,
    /// Concat mirrors.
    Mirror,
    /// Stripe mirrors.
    MirrorStripe,
}

/// A plex operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlexOp {
    /// STALE.
    Detach,
    /// Resync back to ACTIVE.
    Attach,
    /// Remove.
    Rm,
}

/// A call of the ctl API.
#[derive(Debug, Clone)]
pub enum CtlCall {
    /// A configuration change.
    Change(CtlChange),
    /// `cluster status`.
    ClusterStatus,
    /// `print [DG]`.
    Print(String),
    /// `disk init`.
    DiskInit {
        /// Path.
        path: String,
        /// Media name.
        name: String,
        /// Re-initialise.
        force: bool,
    },
    /// `disk list`.
    DiskList,
    /// `task list`.
    TaskList,
    /// `vol stats`: where to ask for a volume's data-plane counters.
    VolStats {
        /// Disk group.
        dg: String,
        /// Volume.
        volume: String,
    },
}

/// One node in `cluster status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NodeStatusOut {
    /// Name.
    pub name: String,
    /// Id.
    pub id: u32,
    /// Role.
    pub role: String,
    /// up | down.
    pub state: String,
    /// Last failure reason, empty if none.
    pub reason: String,
    /// Coordinator address.
    pub address: String,
}

/// `cluster status`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatusOut {
    /// The answering node.
    pub node: String,
    /// Master name, empty if none.
    pub master: String,
    /// View id.
    pub view: u64,
    /// Nodes.
    pub nodes: Vec<NodeStatusOut>,
    /// Failed disk groups, `"dg1: <reason>"`.
    pub failed_groups: Vec<String>,
    /// `quorum disk: held by a`; empty when no quorum disk is configured.
    pub quorum_disk: String,
}

/// One disk in `disk list`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DiskOut {
    /// Media name.
    pub name: String,
    /// Path.
    pub path: String,
    /// Size.
    pub size: u64,
    /// Disk group, empty if none.
    pub dg: String,
    /// online | free | failed: reason | error: reason.
    pub state: String,
    /// Disk id.
    pub id: String,
    /// Label or configuration copies this node repaired on the disk since it started.
    pub repairs: u64,
}

/// One task in `task list`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskOut {
    /// Id.
    pub id: u64,
    /// Kind.
    pub kind: String,
    /// Group.
    pub dg: String,
    /// Volume.
    pub volume: String,
    /// Plex.
    pub plex: String,
    /// Copied.
    pub done_bytes: u64,
    /// To copy.
    pub total_bytes: u64,
    /// running | done | failed: reason.
    pub state: String,
    /// Node running it.
    pub node: String,
    /// Bytes copied per second since the node running it saw it start (0: none
    /// copied yet).
    pub bytes_per_second: u64,
    /// Seconds left at that rate (0: done, or no rate yet).
    pub eta_seconds: u64,
}

/// The main loop's answer to a [`CtlCall`].
#[derive(Debug, Clone)]
pub enum CtlReply {
    /// A change's result.
    Done(Result<(), RequestError>),
    /// A change succeeded: what was done (object, size, placement, adjustments).
    Changed(String),
    /// Cluster status.
    Status(StatusOut),
    /// The configuration (`print`).
    Print {
        /// The disk groups asked for, sorted by name.
        groups: Vec<crate::model::DiskGroupConfig>,
        /// The disk groups asked for whose configuration cannot be read.
        failed: Vec<super::disks::FailedGroup>,
    },
    /// A disk.
    Disk(DiskOut),
    /// Disks.
    Disks(Vec<DiskOut>),
    /// Tasks of this node, and the master's address when this node is a slave (the
    /// master runs the resyncs of shared groups: its tasks are listed too).
    Tasks {
        /// This node's tasks.
        tasks: Vec<TaskOut>,
        /// The master's ctl address, if another node.
        master: Option<String>,
    },
    /// `vol stats`: the data plane's socket and the volume's bdev name there.
    DataPlaneVolume {
        /// The kernel interface socket of this node's plexd-target.
        socket: String,
        /// The volume's bdev name.
        bdev: String,
    },
    /// The call failed.
    Error(RequestError),
}

/// The node's server: its listening socket (bound at start, so a taken address is an
/// error then) and what its connections need. A peer stream must pass the handshake
/// with `identity` before its messages are read; refusals go to `refusals`.
pub struct Server {
    listener: Async<TcpListener>,
    inputs: Inputs,
    identity: Identity,
    refusals: Refusals,
}

impl Server {
    /// Binds `address`.
    pub fn bind(
        address: &str,
        inputs: Inputs,
        identity: Identity,
        refusals: Refusals,
    ) -> Result<Server, String> {
        let listener =
            TcpListener::bind(address).map_err(|e| format!("cannot listen on {address}: {e}"))?;
        let listener =
            Async::new(listener).map_err(|e| format!("cannot listen on {address}: {e}"))?;
        Ok(Server {
            listener,
            inputs,
            identity,
            refusals,
        })
    }

    /// The address it listens on (the port the system chose for port 0).
    pub fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.get_ref().local_addr()
    }

    /// Accepts and serves connections on `ex` (the network thread's executor) until
    /// the process ends.
    pub async fn serve(self, ex: Rc<LocalExecutor<'static>>) {
        let Server {
            listener,
            inputs,
            identity,
            refusals,
        } = self;
        serve(ex, listener, inputs, Rc::new(identity), refusals).await
    }
}

async fn serve(
    ex2: Rc<LocalExecutor<'static>>,
    listener: Async<TcpListener>,
    inputs: Inputs,
    identity: Rc<Identity>,
    refusals: Refusals,
) {
    let active = Rc::new(Cell::new(0usize));
    let streams = Rc::new(peer_stream::Streams::default());
    {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    log::warn!("ctl server: accept failed: {e}");
                    smol::Timer::after(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if active.get() >= MAX_CONNECTIONS {
                log::warn!("ctl server: {MAX_CONNECTIONS} connections open; refusing another");
                continue;
            }
            let _ = stream.get_ref().set_nodelay(true);
            active.set(active.get() + 1);
            let active = Rc::clone(&active);
            let inputs = inputs.clone();
            let identity = Rc::clone(&identity);
            let refusals = refusals.clone();
            let streams = Rc::clone(&streams);
            ex2.spawn(async move {
                let (reader, writer) = stream.split();
                let mut reader = futures::io::BufReader::new(reader);
                // A peer stream or an RPC client (plexctl, a node of an older release):
                // the first 8 bytes tell (peer_stream::is_peer_stream).
                let mut prefix = [0u8; 8];
                if reader.read_exact(&mut prefix).await.is_ok() {
                    if peer_stream::is_peer_stream(&prefix) {
                        peer_stream::serve(reader, writer, inputs, &identity, &refusals, &streams)
                            .await;
                    } else {
                        serve_rpc(prefix, reader, writer, inputs, identity, refusals).await;
                    }
                }
                active.set(active.get().saturating_sub(1));
            })
            .detach();
        }
    }
}

/// Serves one Cap'n Proto RPC connection whose first 8 bytes were `prefix`.
async fn serve_rpc<R, W>(
    prefix: [u8; 8],
    reader: R,
    writer: W,
    inputs: Inputs,
    identity: Rc<Identity>,
    refusals: Refusals,
) where
    R: futures::AsyncRead + Unpin + 'static,
    W: futures::AsyncWrite + Unpin + 'static,
{
    let network = twoparty::VatNetwork::new(
        futures::io::Cursor::new(prefix).chain(reader),
        futures::io::BufWriter::new(writer),
        rpc_twoparty_capnp::Side::Server,
        Default::default(),
    );
    let node: peer::Client = capnp_rpc::new_client(NodeServer {
        inputs,
        identity,
        refusals,
    });
    let rpc = RpcSystem::new(Box::new(network), Some(node.client));
    if let Err(e) = rpc.await {
        log::debug!("ctl server: connection ended: {e}");
    }
}

struct NodeServer {
    inputs: Inputs,
    identity: Rc<Identity>,
    refusals: Refusals,
}

impl NodeServer {
    /// Hands `call` to the main loop and waits for its answer. A change that gets
    /// no answer may still complete: its error is [`ErrorKind::OutcomeUnknown`].
    async fn ask(&self, call: CtlCall) -> CtlReply {
        let change = matches!(call, CtlCall::Change(_));
        let name = &self.identity.name;
        let (tx, rx) = smol::channel::bounded(1);
        if self
            .inputs
            .try_send(Input::Ctl { call, reply: tx })
            .is_err()
        {
            let e = format!("node {name}: the daemon is busy or stopping; try again");
            return CtlReply::Error(RequestError::new(ErrorKind::Busy, name.as_str(), e));
        }
        let (kind, may_apply) = if change {
            (
                ErrorKind::OutcomeUnknown,
                "; the change may still complete: check with plexctl print",
            )
        } else {
            (ErrorKind::Unreachable, "")
        };
        let timeout = async {
            smol::Timer::after(CALL_TIMEOUT).await;
            let e = format!(
                "node {name}: no answer within {} s{may_apply}",
                CALL_TIMEOUT.as_secs()
            );
            log::warn!("ctl server: {e}");
            CtlReply::Error(RequestError::new(kind, name.as_str(), e))
        };
        let answer = async {
            rx.recv().await.unwrap_or_else(|_| {
                let e = format!("node {name}: the daemon is stopping{may_apply}");
                let kind = if change { kind } else { ErrorKind::Busy };
                CtlReply::Error(RequestError::new(kind, name.as_str(), e))
            })
        };
        smol::future::or(answer, timeout).await
    }

    /// The typed error of a failed call: `reply` if it is one, else an internal
    /// error (the main loop answered with something else).
    fn failure(&self, reply: CtlReply) -> RequestError {
        match reply {
            CtlReply::Error(e) | CtlReply::Done(Err(e)) => e,
            other => {
                let name = &self.identity.name;
                let e = format!("node {name}: internal error: unexpected answer {other:?}");
                log::error!("ctl server: {e}");
                RequestError::new(ErrorKind::Internal, name.as_str(), e)
            }
        }
    }
}

/// The ctl API's kind of a core error kind.
fn kind_of(k: ErrorKind) -> c::ErrorKind {
    match k {
        ErrorKind::Refused => c::ErrorKind::Refused,
        ErrorKind::InUse => c::ErrorKind::InUse,
        ErrorKind::NotFound => c::ErrorKind::NotFound,
        ErrorKind::Exists => c::ErrorKind::Exists,
        ErrorKind::NoQuorum => c::ErrorKind::NoQuorum,
        ErrorKind::NotMaster => c::ErrorKind::NotMaster,
        ErrorKind::Busy => c::ErrorKind::Busy,
        ErrorKind::Unreachable => c::ErrorKind::Unreachable,
        ErrorKind::OutcomeUnknown => c::ErrorKind::OutcomeUnknown,
        ErrorKind::Failed => c::ErrorKind::Failed,
        ErrorKind::Internal => c::ErrorKind::Internal,
    }
}

/// Answers a call with the error `reply` (not the call's answer) stands for: the
/// `error` text (for an older plexctl) and the typed `failure` about `object`. A macro
/// because each call's results are a type of their own.
macro_rules! answer_failure {
    ($server:expr, $results:expr, $reply:expr, $object:expr) => {{
        let e = $server.failure($reply);
        let mut r = $results.get();
        r.set_error(e.message.as_str());
        set_failure(r.init_failure(), &e, &$server.identity.name, $object);
    }};
}

/// Fills a call's typed error (`failure`); `node` names the answering node, used
/// when the error names none; `object` is what the call was about.
fn set_failure(mut b: c::ctl_error::Builder<'_>, e: &RequestError, node: &str, object: &str) {
    b.set_kind(kind_of(e.kind));
    b.set_node(if e.node.is_empty() {
        node
    } else {
        e.node.as_str()
    });
    b.set_object(object);
    b.set_message(e.message.as_str());
}

fn read_change(r: c::change::Reader<'_>) -> capnp::Result<CtlChange> {
    use c::change::Which;
    Ok(match r.which()? {
        Which::DgCreate(x) => {
            let x = x?;
            CtlChange::DgCreate {
                dg: text(x.get_dg())?,
                disks: texts(x.get_disks())?,
                shared: x.get_shared(),
            }
        }
        Which::DgAddDisk(x) => {
            let (dg, disk) = read_dg_disk(x?)?;
            CtlChange::DgAddDisk { dg, disk }
        }
        Which::DgRmDisk(x) => {
            let (dg, disk) = read_dg_disk(x?)?;
            CtlChange::DgRmDisk { dg, disk }
        }
        Which::DgFailDisk(x) => {
            let (dg, disk) = read_dg_disk(x?)?;
            CtlChange::DgFailDisk {
                dg,
                disk,
                force: r.get_force(),
            }
        }
        Which::DgReattachDisk(x) => {
            let (dg, disk) = read_dg_disk(x?)?;
            CtlChange::DgReattachDisk { dg, disk }
        }
        Which::DgEvacuate(x) => {
            let (dg, disk) = read_dg_disk(x?)?;
            let to = texts(r.get_disks())?;
            CtlChange::DgEvacuate { dg, disk, to }
        }
        Which::DgDestroy(x) => CtlChange::DgDestroy {
            dg: text(x)?,
            force: r.get_force(),
        },
        Which::DgDeport(x) => CtlChange::DgDeport {
            dg: text(x)?,
            force: r.get_force(),
        },
        Which::DgSet(x) => {
            let x = x?;
            CtlChange::DgSet {
                dg: text(x.get_dg())?,
                detach_policy: text(x.get_detach_policy())?,
            }
        }
        Which::DgImport(x) => {
            let x = x?;
            CtlChange::DgImport {
                dg: text(x.get_dg())?,
                shared: x.get_shared(),
                clear_owner: x.get_clear_owner(),
            }
        }
        Which::VolCreate(x) => read_vol_create(x?, texts(r.get_disks())?)?,
        Which::VolGrow(x) => read_vol_resize(x?, true, false)?,
        Which::VolShrink(x) => read_vol_resize(x?, false, r.get_force())?,
        Which::VolRm(x) => {
            let (dg, volume) = read_dg_vol(x?)?;
            CtlChange::VolRm { dg, volume }
        }
        Which::PlexAdd(x) => {
            let (dg, volume) = read_dg_vol(x?)?;
            let disks = texts(r.get_disks())?;
            CtlChange::PlexAdd { dg, volume, disks }
        }
        Which::PlexDetach(x) => read_plex_op(x?, PlexOp::Detach, r.get_force())?,
        Which::PlexAttach(x) => read_plex_op(x?, PlexOp::Attach, r.get_force())?,
        Which::PlexRm(x) => read_plex_op(x?, PlexOp::Rm, r.get_force())?,
        Which::VolExport(x) => read_vol_export(x?)?,
        Which::VolSet(x) => {
            let x = x?;
            CtlChange::VolSet {
                dg: text(x.get_dg())?,
                volume: text(x.get_volume())?,
                read_policy: text(x.get_read_policy())?,
            }
        }
        Which::VolUnexport(x) => {
            let x = x?;
            CtlChange::VolUnexport {
                dg: text(x.get_dg())?,
                volume: text(x.get_volume())?,
                protocol: text(x.get_protocol())?,
            }
        }
    })
}

/// The group and disk of `dg add-disk` and `dg rm-disk`.
fn read_dg_disk(x: c::dg_disk::Reader<'_>) -> capnp::Result<(String, String)> {
    Ok((text(x.get_dg())?, text(x.get_disk())?))
}

/// The group and volume of `vol rm` and `plex add`.
fn read_dg_vol(x: c::dg_vol::Reader<'_>) -> capnp::Result<(String, String)> {
    Ok((text(x.get_dg())?, text(x.get_volume())?))
}

fn read_vol_create(x: c::vol_create::Reader<'_>, disks: Vec<String>) -> capnp::Result<CtlChange> {
    Ok(CtlChange::VolCreate {
        dg: text(x.get_dg())?,
        volume: text(x.get_volume())?,
        size_bytes: x.get_size_bytes(),
        layout: match x.get_layout()? {
            c::Layout::Concat => LayoutKind::Concat,
            c::Layout::Stripe => LayoutKind::Stripe,
            c::Layout::Mirror => LayoutKind::Mirror,
            c::Layout::MirrorStripe => LayoutKind::MirrorStripe,
        },
        mirrors: x.get_mirrors(),
        columns: x.get_columns(),
        stripe_unit_bytes: x.get_stripe_unit_bytes(),
        drl_off: x.get_drl_off(),
        region_bytes: x.get_region_bytes(),
        disks,
    })
}

/// `vol grow` (`grow`) or `vol shrink` (with its `--force`).
fn read_vol_resize(
    x: c::vol_resize::Reader<'_>,
    grow: bool,
    force: bool,
) -> capnp::Result<CtlChange> {
    Ok(CtlChange::VolResize {
        dg: text(x.get_dg())?,
        volume: text(x.get_volume())?,
        new_size_bytes: x.get_new_size_bytes(),
        grow,
        relative: x.get_relative(),
        force,
    })
}

/// `plex detach|attach|rm`; `force` is the change's.
fn read_plex_op(x: c::dg_plex::Reader<'_>, op: PlexOp, force: bool) -> capnp::Result<CtlChange> {
    Ok(CtlChange::Plex {
        dg: text(x.get_dg())?,
        plex: text(x.get_plex())?,
        op,
        force,
    })
}

fn read_vol_export(x: c::vol_export::Reader<'_>) -> capnp::Result<CtlChange> {
    Ok(CtlChange::VolExport {
        dg: text(x.get_dg())?,
        volume: text(x.get_volume())?,
        protocol: text(x.get_protocol())?,
        iqn: text(x.get_iqn())?,
        nodes: texts(x.get_nodes())?,
        portal: text(x.get_portal())?,
        hosts: texts(x.get_hosts())?,
    })
}

fn set_disk(mut b: c::disk_info::Builder<'_>, d: &DiskOut) {
    b.set_name(d.name.as_str());
    b.set_path(d.path.as_str());
    b.set_size_bytes(d.size);
    b.set_dg(d.dg.as_str());
    b.set_state(d.state.as_str());
    b.set_id(d.id.as_str());
    b.set_repairs(d.repairs);
}

impl ctl::Server for NodeServer {
    async fn change(
        self: Rc<Self>,
        params: ctl::ChangeParams,
        mut results: ctl::ChangeResults,
    ) -> Result<(), capnp::Error> {
        let change = read_change(params.get()?.get_change()?)?;
        let object = change.object();
        match self.ask(CtlCall::Change(change)).await {
            CtlReply::Done(Ok(())) => {}
            CtlReply::Changed(done) => results.get().set_done(done.as_str()),
            other => answer_failure!(self, results, other, &object),
        }
        Ok(())
    }

    async fn cluster_status(
        self: Rc<Self>,
        _: ctl::ClusterStatusParams,
        mut results: ctl::ClusterStatusResults,
    ) -> Result<(), capnp::Error> {
        match self.ask(CtlCall::ClusterStatus).await {
            CtlReply::Status(s) => {
                let mut b = results.get().init_status();
                b.set_node(s.node.as_str());
                b.set_master(s.master.as_str());
                b.set_view(s.view);
                let mut list = b.reborrow().init_nodes(s.nodes.len() as u32);
                for (i, n) in s.nodes.iter().enumerate() {
                    let mut nb = list.reborrow().get(i as u32);
                    nb.set_id(n.id);
                    nb.set_name(n.name.as_str());
                    nb.set_role(n.role.as_str());
                    nb.set_state(n.state.as_str());
                    nb.set_reason(n.reason.as_str());
                    nb.set_address(n.address.as_str());
                }
                b.set_quorum_disk(s.quorum_disk.as_str());
                let mut failed = b.init_failed_groups(s.failed_groups.len() as u32);
                for (i, f) in s.failed_groups.iter().enumerate() {
                    failed.set(i as u32, f.as_str());
                }
            }
            other => answer_failure!(self, results, other, ""),
        }
        Ok(())
    }

    async fn print(
        self: Rc<Self>,
        params: ctl::PrintParams,
        mut results: ctl::PrintResults,
    ) -> Result<(), capnp::Error> {
        let dg = text(params.get()?.get_dg())?;
        let config_only = params.get()?.get_config_only();
        let object = if dg.is_empty() {
            String::new()
        } else {
            format!("disk group {dg}")
        };
        match self.ask(CtlCall::Print(dg)).await {
            CtlReply::Print { groups, failed } => {
                let mut r = results.get();
                let mut config = r.reborrow().init_config();
                super::print::write(&groups, &failed, config.reborrow());
                if !config_only {
                    // The renderings for a plexctl older than `config`.
                    let (json, text) = super::print::render(config.into_reader())?;
                    r.set_json(json.as_str());
                    r.set_text(text.as_str());
                }
            }
            other => answer_failure!(self, results, other, &object),
        }
        Ok(())
    }

    async fn disk_init(
        self: Rc<Self>,
        params: ctl::DiskInitParams,
        mut results: ctl::DiskInitResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let call = CtlCall::DiskInit {
            path: text(p.get_path())?,
            name: text(p.get_name())?,
            force: p.get_force(),
        };
        let object = match &call {
            CtlCall::DiskInit { path, name, .. } if name.is_empty() => format!("disk {path}"),
            CtlCall::DiskInit { path, name, .. } => format!("disk {name} ({path})"),
            _ => String::new(),
        };
        match self.ask(call).await {
            CtlReply::Disk(d) => set_disk(results.get().init_disk(), &d),
            other => answer_failure!(self, results, other, &object),
        }
        Ok(())
    }

    async fn disk_list(
        self: Rc<Self>,
        _: ctl::DiskListParams,
        mut results: ctl::DiskListResults,
    ) -> Result<(), capnp::Error> {
        match self.ask(CtlCall::DiskList).await {
            CtlReply::Disks(disks) => {
                let mut list = results.get().init_disks(disks.len() as u32);
                for (i, d) in disks.iter().enumerate() {
                    set_disk(list.reborrow().get(i as u32), d);
                }
            }
            other => answer_failure!(self, results, other, ""),
        }
        Ok(())
    }

    async fn task_list(
        self: Rc<Self>,
        _: ctl::TaskListParams,
        mut results: ctl::TaskListResults,
    ) -> Result<(), capnp::Error> {
        match self.ask(CtlCall::TaskList).await {
            CtlReply::Tasks { mut tasks, master } => {
                if let Some(addr) = master {
                    match master_tasks(&addr).await {
                        Ok(more) => tasks.extend(more),
                        Err(e) => log::warn!("task list: cannot ask the master at {addr}: {e}"),
                    }
                }
                let mut list = results.get().init_tasks(tasks.len() as u32);
                for (i, t) in tasks.iter().enumerate() {
                    let mut b = list.reborrow().get(i as u32);
                    b.set_id(t.id);
                    b.set_kind(t.kind.as_str());
                    b.set_dg(t.dg.as_str());
                    b.set_volume(t.volume.as_str());
                    b.set_plex(t.plex.as_str());
                    b.set_done_bytes(t.done_bytes);
                    b.set_total_bytes(t.total_bytes);
                    b.set_state(t.state.as_str());
                    b.set_node(t.node.as_str());
                    b.set_bytes_per_second(t.bytes_per_second);
                    b.set_eta_seconds(t.eta_seconds);
                }
            }
            other => answer_failure!(self, results, other, ""),
        }
        Ok(())
    }

    async fn vol_stats(
        self: Rc<Self>,
        params: ctl::VolStatsParams,
        mut results: ctl::VolStatsResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let (dg, volume) = (text(p.get_dg())?, text(p.get_volume())?);
        let object = format!("volume {volume} in disk group {dg}");
        let call = CtlCall::VolStats {
            dg: dg.clone(),
            volume: volume.clone(),
        };
        match self.ask(call).await {
            CtlReply::DataPlaneVolume { socket, bdev } => {
                let node = self.identity.name.clone();
                match data_plane_volume(socket, bdev, node.clone()).await {
                    Ok(json) => results.get().set_json(json.as_str()),
                    Err(e) => {
                        log::warn!("vol stats: {e}");
                        let err = RequestError::new(ErrorKind::Failed, node, e);
                        answer_failure!(self, results, CtlReply::Error(err), &object)
                    }
                }
            }
            other => answer_failure!(self, results, other, &object),
        }
        Ok(())
    }
}

/// How long `vol stats` waits for the data plane.
const VOL_STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// The data plane's `VolumeInfo` of `bdev` as JSON, asked over the kernel
/// interface at `socket` on a blocking thread (never on the control thread).
async fn data_plane_volume(socket: String, bdev: String, node: String) -> Result<String, String> {
    smol::unblock(move || {
        let client = plexd_target_api::KernelClient::connect_timeout(&socket, VOL_STATS_TIMEOUT)
            .map_err(|e| format!("node {node}: cannot reach its data plane at {socket}: {e}"))?;
        let (info, _) = client
            .get_volume(&bdev)
            .map_err(|e| format!("node {node}: its data plane cannot list volume {bdev}: {e}"))?;
        let v = serde_json::json!({ "node": node, "volume": info });
        serde_json::to_string_pretty(&v).map_err(|e| format!("node {node}: {e}"))
    })
    .await
}

/// How long a slave waits for the master's task list.
const MASTER_TASKS_TIMEOUT: Duration = Duration::from_secs(2);

/// The task list of the master at `addr` (its own tasks only: it is the master).
async fn master_tasks(addr: &str) -> Result<Vec<TaskOut>, String> {
    let sock = std::net::ToSocketAddrs::to_socket_addrs(addr)
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "cannot resolve".to_string())?;
    let work = async {
        let stream = Async::<std::net::TcpStream>::connect(sock)
            .await
            .map_err(|e| e.to_string())?;
        let (rpc, client) = plexd_proto::connection::client::<ctl::Client>(stream);
        let call = async {
            let resp = client
                .task_list_request()
                .send()
                .promise
                .await
                .map_err(|e| e.to_string())?;
            let r = resp.get().map_err(|e| e.to_string())?;
            let mut out = Vec::new();
            for t in r.get_tasks().map_err(|e| e.to_string())? {
                let txt =
                    |x: capnp::Result<capnp::text::Reader<'_>>| text(x).map_err(|e| e.to_string());
                out.push(TaskOut {
                    id: t.get_id(),
                    kind: txt(t.get_kind())?,
                    dg: txt(t.get_dg())?,
                    volume: txt(t.get_volume())?,
                    plex: txt(t.get_plex())?,
                    done_bytes: t.get_done_bytes(),
                    total_bytes: t.get_total_bytes(),
                    state: txt(t.get_state())?,
                    node: txt(t.get_node())?,
                    bytes_per_second: t.get_bytes_per_second(),
                    eta_seconds: t.get_eta_seconds(),
                });
            }
            Ok(out)
        };
        let conn = async {
            let r = rpc.await;
            Err(format!("connection closed: {r:?}"))
        };
        smol::future::or(call, conn).await
    };
    let timeout = async {
        smol::Timer::after(MASTER_TASKS_TIMEOUT).await;
        Err("no answer in time".to_string())
    };
    smol::future::or(work, timeout).await
}

impl peer::Server for NodeServer {
    async fn deliver(
        self: Rc<Self>,
        _params: peer::DeliverParams,
        _: peer::DeliverResults,
    ) -> Result<(), capnp::Error> {
        // Retired in protocol version 3: messages travel on a peer stream
        // (`peer_stream`); a node that calls this has not passed `hello`.
        Err(capnp::Error::failed(format!(
            "node {}: Peer.deliver is retired: protocol messages travel on the peer stream (cluster protocol version {PROTOCOL_VERSION})",
            self.identity.name
        )))
    }

    async fn hello(
        self: Rc<Self>,
        params: peer::HelloParams,
        mut results: peer::HelloResults,
    ) -> Result<(), capnp::Error> {
        // Only a node of an older release (protocol version 2 or before) calls this:
        // it is answered, and refused, with the reason, as on a peer stream.
        let p = params.get()?;
        let hello = peer_stream::Hello {
            from: p.get_from(),
            cluster_id: text(p.get_cluster_id())?,
            node_list: text(p.get_node_list())?,
            protocol_version: p.get_protocol_version(),
            error: String::new(),
        };
        if let Err(e) = peer_stream::check_hello_size(&hello) {
            return Err(capnp::Error::failed(format!(
                "hello from node {}: {e}",
                hello.from
            )));
        }
        let id = &self.identity;
        let mut r = results.get();
        r.set_cluster_id(id.cluster_id.as_str());
        r.set_node_list(id.node_list.as_str());
        r.set_protocol_version(PROTOCOL_VERSION);
        if let Some(error) = peer_stream::judge(id, &self.refusals, &hello) {
            r.set_error(error.as_str());
        }
        Ok(())
    }

    async fn fence(
        self: Rc<Self>,
        _params: peer::FenceParams,
        mut results: peer::FenceResults,
    ) -> Result<(), capnp::Error> {
        // Retired: resync fences travel as cluster messages (`core::resync`).
        results
            .get()
            .set_error("Peer.fence is retired: resync fences travel as cluster messages");
        Ok(())
    }
}
