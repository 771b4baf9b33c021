//! The `plexd` daemon: a thin driver around the protocol core ([`crate::core`]).
//!
//! One main loop owns the core's [`Node`] and is the only place that feeds it events.
//! Everything else talks to the main loop through one bounded queue of [`Input`]s:
//!
//! - `ctl` — the server on the node's address: the public ctl API (Cap'n Proto RPC)
//!   and the peers' streams ([`peer_stream`]; peer messages become [`Input::Peer`]);
//! - `transport` — one sender task per peer (bounded queue, reconnect with backoff,
//!   `ConnectionLost` when an established connection breaks);
//! - a kernel event thread (plex I/O errors from the data plane; it also notices
//!   when the connection to the data plane breaks: [`Input::KernelLost`]), a signal
//!   thread (SIGTERM/SIGINT → clean stop) and resync threads;
//! - the [`driver`] thread, which answers the jobs the main loop gave it
//!   ([`Input::DriverDone`] wakes the loop up).
//!
//! The main loop never waits for the data plane or a disk. It sends messages and
//! answers requests itself; every slow action of the core (kernel phases, disk reads
//! and writes, local checks, disk access checks, leaving the cluster) is a job of the
//! [`driver`] thread, which owns the data-plane adapter ([`kernel::Kernel`]) and runs
//! its jobs one at a time in the order given; the answer comes back as the core's
//! completion event. What the core asked *after* a slow action in the same step, and
//! replies and failpoints of later steps, wait in the loop's ordered pipeline until
//! the driver finished the jobs before them (see [`pipeline`]), so the
//! effects happen in the order of the old synchronous loop; heartbeats never wait.
//! The data-plane lease is renewed by its own thread ([`lease`]).
//!
//! When the data plane is lost (plexd-target died or restarted), the main loop
//! reconnects from its ticks with a bounded backoff (starting the target again with
//! `--spawn-target`); the driver reconnects and loads the whole desired configuration.
//!
//! Shared disk groups are the core's configuration ([`model::SharedConfig`]); private
//! disk groups belong to this node only and are changed here without a cluster
//! transaction (the same validation, kernel phase and disk write, locally).

mod answers;
pub mod clock;
pub mod config;
#[cfg(feature = "corosync")]
pub mod corosync;
pub mod ctl;
pub mod disks;
pub mod driver;
pub mod drl;
pub mod exports;
mod failed;
pub mod failpoint;
pub mod fence;
pub mod kernel;
pub mod lease;
mod link;
pub mod membership;
pub mod model;
pub mod model_codec;
pub mod net;
pub mod owner_lease;
pub mod peer_stream;
pub mod pipeline;
pub mod print;
mod private;
pub mod qdisk;
mod resolve;
pub mod resync;
mod startup;
mod taken;
pub mod takeover;
pub mod transport;
pub mod zero;

pub use startup::run;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::core::{
    Action, ConfigModel, ErrorKind, Event, Message, Node, NodeId, RequestError, RequestId, Role,
    TxnId,
};
use crate::model::{Change, ClusterConfig, PlexLayout, PlexState, VolumeLayout};
use plexd_target_api::scsi::PrOutResult;

use config::ClusterFile;
use ctl::{CtlCall, CtlChange, CtlReply, LayoutKind, NodeStatusOut, PlexOp, StatusOut};
use driver::{Done, Driver, DriverHandle, Job};
pub use failpoint::{failpoint_from_env, Failpoint, FAILPOINT_EXIT_STATUS};
use kernel::Kernel;
use link::{spawn_target_if_dead, KernelLost};
use model::SharedConfig;
use pipeline::{Item, Op, Pipeline, PIPELINE_MAX};
use startup::start_kernel_events;

/// Inputs queued for the main loop before senders wait.
pub const INPUT_QUEUE_DEPTH: usize = 4096;
/// The main loop's input queue ([`INPUT_QUEUE_DEPTH`]): other threads send with
/// `send_blocking` or `try_send`, tasks of the control thread ([`net`]) with `send`
/// (awaited, so the main loop runs meanwhile) or `try_send`.
pub type Inputs = smol::channel::Sender<Input>;
/// How long `plexd` waits for its target's socket at start.
pub const TARGET_WAIT: Duration = Duration::from_secs(10);
/// Configurations remembered to recognise the disks' content.
pub const HISTORY_LEN: usize = 64;
/// First pause between two attempts to reconnect to a lost data plane.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest pause between two attempts to reconnect (the pause doubles up to it).
pub const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often the kernel event thread checks an idle connection to the data plane.
pub const KERNEL_PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Events the loop answers itself fed after one input, at most ([`Daemon::feed`]).
const MAX_READY_EVENTS: usize = 64;

/// What the main loop receives.
pub enum Input {
    /// A protocol message from a peer.
    Peer {
        /// Sender.
        from: NodeId,
        /// The message.
        msg: Message,
    },
    /// An established connection to a peer broke.
    ConnectionLost {
        /// The peer.
        peer: NodeId,
    },
    /// A ctl call and where to answer it.
    Ctl {
        /// The call.
        call: CtlCall,
        /// The answer.
        reply: smol::channel::Sender<CtlReply>,
    },
    /// The data plane reports a write error on a plex.
    PlexIoError {
        /// Volume bdev name (`DG.VOL`).
        volume: String,
        /// Plex.
        plex: String,
        /// The failed write's byte range when the data plane failed it (the local
        /// detach policy) rather than holding it.
        ranges: Vec<(u64, u64)>,
    },
    /// A host's PERSISTENT RESERVE OUT on a shared volume, from the data plane: run
    /// it as a cluster change and answer the data plane.
    PrOut {
        /// The data plane's request id.
        request: u64,
        /// Volume bdev name (`DG.VOL`).
        volume: String,
        /// The I_T nexus.
        nexus: crate::model::Nexus,
        /// Service action.
        service_action: u8,
        /// Scope and type byte.
        scope_type: u8,
        /// Parameter list.
        parameters: Vec<u8>,
    },
    /// The connection to the data plane broke (plexd-target died or restarted).
    KernelLost {
        /// Which connection (connections are numbered; a late report about an older
        /// one is ignored).
        epoch: u64,
        /// What happened.
        reason: String,
    },
    /// A resync task progressed or ended.
    Resync(resync::Progress),
    /// A private group's resync fence call (see [`fence`]), from this node's own
    /// resync thread.
    Fence {
        /// Volume bdev name (`DG.VOL`).
        volume: String,
        /// Hold (true) or release (false).
        hold: bool,
        /// The copy's token.
        token: u64,
        /// The answer: taken / held intact until the release.
        reply: smol::channel::Sender<Result<bool, String>>,
    },
    /// SIGTERM / SIGINT.
    Shutdown,
    /// The driver answered a job (the answer is on its completion channel).
    DriverDone,
    /// The quorum disk thread answered a read or a write ([`qdisk`]).
    QuorumDisk(qdisk::Done),
    /// The cluster monitor (corosync) reports this node's partition
    /// (`monitor = "corosync"`; the core's `Event::MonitorView`).
    Monitor {
        /// Configured nodes whose plexd is in the partition.
        members: std::collections::BTreeSet<NodeId>,
        /// The partition is quorate.
        quorate: bool,
        /// What corosync says, for the status line.
        detail: String,
    },
    /// A dirty region log read ([`drl`]) answered.
    DirtyLogs {
        /// The read's number.
        op: u64,
        /// One result per section asked for.
        results: Vec<crate::core::DirtyLogRead>,
    },
}

/// Command-line options of `plexd`.
#[derive(Debug, Clone)]
pub struct Options {
    /// The cluster file.
    pub cluster: PathBuf,
    /// This node's name.
    pub node: String,
    /// Start `plexd-target` if its socket does not answer.
    pub spawn_target: bool,
}

fn now_ms(start: clock::CoreClock) -> u64 {
    start.now_ms()
}

fn incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

/// Whom to answer when the core replies to a request.
enum Pending {
    /// A ctl client, and the change it asked for (to say what was done).
    Client(smol::channel::Sender<CtlReply>, Box<Change>),
    /// A plex I/O error event.
    PlexError { volume: String, plex: String },
    /// A host's PERSISTENT RESERVE OUT: the data plane's request id.
    PrOut { request: u64, volume: String },
    /// The end of a private group's resync (the plex becomes ACTIVE).
    ResyncDone { plex: String },
}

struct Daemon {
    file: ClusterFile,
    me: NodeId,
    /// This start, as the open record of the private groups names it
    /// ([`private`]).
    start_open: crate::model::OpenNode,
    name: String,
    failpoint: Option<Failpoint>,
    node: Node<SharedConfig>,
    /// The driver thread: every slow action, in order.
    driver: DriverHandle,
    /// What was handed to the driver and what waits behind it, in order (see
    /// [`pipeline`]); about [`PIPELINE_MAX`] entries at most.
    pipeline: Pipeline,
    /// The data-plane lease renewer thread.
    lease: lease::Renewer,
    /// The private-group lease's renewer (shared with the driver).
    owner: Arc<owner_lease::OwnerLease>,
    /// Private groups another node took over, dropped from this node ([`taken`]).
    taken: taken::Taken,
    /// The data plane's socket.
    socket: String,
    transport: transport::Transport,
    /// The core's clock (`CLOCK_BOOTTIME` since the start, see [`clock`]).
    start: clock::CoreClock,
    /// Where this node records that it may be a cluster member ([`membership`]).
    membership_path: std::path::PathBuf,
    next_request: u64,
    pending: BTreeMap<RequestId, Pending>,
    staged: Option<(TxnId, SharedConfig)>,
    committed_txn: TxnId,
    offered: Option<(TxnId, SharedConfig)>,
    /// Configurations this node has held, newest last (at most [`HISTORY_LEN`]): a
    /// configuration read from the disks is recognised by them.
    history: std::collections::VecDeque<(TxnId, SharedConfig)>,
    tasks: resync::Tasks,
    tx: Inputs,
    stopping: bool,
    /// `--spawn-target`: start plexd-target again when it is lost.
    spawn_target: bool,
    /// The plexd-target this plexd started, if any (reaped once it exits).
    target_child: Option<std::process::Child>,
    /// Number of the current kernel connection (see [`Input::KernelLost`]).
    kernel_epoch: u64,
    /// Set while the data plane is lost.
    kernel_lost: Option<KernelLost>,
    /// A reconnection attempt is with the driver.
    reconnecting: bool,
    /// A loss of the connection the driver is making, reported before its answer.
    early_lost: Option<(u64, String)>,
    /// Phase timings of the transaction this node runs as master (see [`TxnTimer`]).
    timer: Option<TxnTimer>,
    /// Completion events of actions the loop answered itself (a local check that
    /// reads nothing, [`driver::local_check_reads`]), fed after the step that asked.
    ready: std::collections::VecDeque<Event<SharedConfig>>,
    /// Disk groups of this cluster or node whose configuration no disk holds
    /// readable (read at start and whenever this node reads the disks).
    failed: Vec<disks::FailedGroup>,
    /// Label and slot copies this node repaired (`disk list`; the driver counts).
    repairs: Arc<Mutex<disks::Repairs>>,
    /// The ALUA views last handed to the driver for this node's shared exports, by
    /// IQN (cleared when the data plane is reconnected, so they are sent again).
    alua_sent: BTreeMap<String, plexd_target_api::scsi::alua::Alua>,
    /// The NVMe-oF ANA state last handed to the driver (None: none sent, or this
    /// node serves no NVMe-oF export); cleared with `alua_sent`.
    ana_sent: Option<plexd_target_api::nvmf::AnaState>,
    /// (view id, master, configuration transaction) the ALUA views were last
    /// computed for: they depend on nothing else, so other events skip the work.
    alua_basis: Option<(u64, NodeId, TxnId)>,
    /// The quorum disk's I/O thread, when one is configured.
    qdisk: Option<qdisk::QuorumDisk>,
    /// The dirty region log reads in flight ([`drl`]).
    drl_reads: drl::Reads,
    /// The corosync monitor thread (`monitor = "corosync"`).
    #[cfg(feature = "corosync")]
    _corosync: Option<corosync::Monitor>,
}

/// Where a transaction this node runs as master spends its time, from the
/// failpoints the core emits at each phase boundary (the core has no clock). Logged
/// once per committed transaction (`ci/bench.d/cluster` reads that line).
struct TxnTimer {
    start: Instant,
    /// Failpoint name → when the core emitted it.
    marks: Vec<(&'static str, Instant)>,
    /// This node's own kernel prepare.
    local_prepare: Duration,
}

impl TxnTimer {
    fn at(&self, name: &str) -> Option<Instant> {
        self.marks.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    }

    /// The log line of a transaction that committed (`end`: the master applied it).
    fn line(&self, node: &str, txn: TxnId, end: Instant) -> Option<String> {
        let ms = |a: Instant, b: Instant| b.saturating_duration_since(a).as_secs_f64() * 1000.0;
        let check = self.at("txn.after_check")?;
        let prepared = self.at("txn.after_prepare")?;
        let acked = self.at("txn.after_successor_ack")?;
        let written = self.at("txn.after_disk_write")?;
        Some(format!(
            "node {node}: transaction {txn} took {:.3} ms: check {:.3} ms, kernel prepare {:.3} ms (this node {:.3} ms), successor ack {:.3} ms, disk write {:.3} ms, commit {:.3} ms",
            ms(self.start, end),
            ms(self.start, check),
            ms(check, prepared),
            self.local_prepare.as_secs_f64() * 1000.0,
            ms(prepared, acked),
            ms(acked, written),
            ms(written, end),
        ))
    }
}

impl Daemon {
    /// Runs until a clean stop or the loss of the driver or the inputs, as a task of
    /// the control thread ([`net::run`]): it waits for inputs without blocking the
    /// thread, so the node's server and peer connections run meanwhile.
    async fn main_loop(&mut self, rx: smol::channel::Receiver<Input>) {
        let tick =
            Duration::from_millis((self.file.cluster.heartbeat_interval_ms / 4).clamp(5, 100));
        let mut next_tick = Instant::now();
        // One timer, moved only when the deadline moves (once a tick): arming a
        // timer wakes smol's reactor, so one per input would cost a wake-up each.
        let mut timer = smol::Timer::never();
        let mut armed: Option<Instant> = None;
        loop {
            let until = match &self.kernel_lost {
                Some(l) => next_tick.min(l.next_try),
                None => next_tick,
            };
            let wait = until.saturating_duration_since(Instant::now());
            if self.pipeline.len() >= PIPELINE_MAX {
                // Overloaded: take no more inputs until the driver caught up.
                match self.driver.done_within(wait).await {
                    Ok(Some((seq, done))) => self.on_driver_done(seq, done),
                    Ok(None) => {}
                    Err(e) => {
                        log::error!("node {}: {e}; stopping", self.name);
                        return;
                    }
                }
            } else {
                if armed != Some(until) {
                    timer.set_at(until);
                    armed = Some(until);
                }
                let input = async { Some(rx.recv().await) };
                let timeout = async {
                    (&mut timer).await;
                    None
                };
                match smol::future::or(input, timeout).await {
                    Some(Ok(input)) => self.on_input(input),
                    // A timer fires once: the next wait arms it again.
                    None => armed = None,
                    Some(Err(_)) => return,
                }
            }
            while let Some((seq, done)) = self.driver.try_done() {
                self.on_driver_done(seq, done);
            }
            if self.stopped() {
                return;
            }
            if !self.reconnecting
                && self
                    .kernel_lost
                    .as_ref()
                    .is_some_and(|l| Instant::now() >= l.next_try)
            {
                self.try_reconnect();
            }
            if Instant::now() >= next_tick {
                self.feed(Event::Tick);
                self.renew_lease();
                self.drop_taken_groups();
                next_tick = Instant::now() + tick;
            }
            if self.stopped() {
                return;
            }
        }
    }

    /// A clean stop is complete: the core stopped and the driver did all it was given.
    fn stopped(&self) -> bool {
        self.stopping && matches!(self.node.role(), Role::Stopped) && self.pipeline.is_empty()
    }

    /// Hands the lease thread the end of this node's lease (none left revokes it):
    /// the data plane serves shared volumes only under it.
    fn renew_lease(&mut self) {
        if self.kernel_lost.is_some() {
            return;
        }
        // The boot clock before the core's lease: the deadline published is never
        // later than the lease's end.
        let boot_ns = clock::boottime_ns();
        let left_ms = self
            .node
            .data_plane_lease_ms(now_ms(self.start))
            .min(self.file.cluster.lease_ms);
        self.lease.publish(boot_ns, left_ms);
    }

    /// `PLEXD_FAILPOINT=peer.commit:sleep=<ms>`: the control thread stops before
    /// the core reads the COMMIT of `txn` (a test's change, not the bookkeeping's),
    /// as in a process frozen with it unread; the core then reads it at the time it
    /// wakes. Once per process: it disarms itself.
    fn commit_failpoint(&mut self, txn: TxnId) {
        let Some(d) = self
            .failpoint
            .as_ref()
            .and_then(|f| f.sleep_at("peer.commit"))
        else {
            return;
        };
        if self.node.is_bookkeeping_txn(txn) {
            return;
        }
        self.failpoint = None;
        log::warn!(
            "node {}: failpoint peer.commit: the COMMIT of transaction {txn} waits {} ms unread",
            self.name,
            d.as_millis()
        );
        std::thread::sleep(d);
    }

    fn request_id(&mut self) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        id
    }

    fn on_input(&mut self, input: Input) {
        match input {
            Input::Peer { from, msg } => {
                if let Message::Commit { txn } = &msg {
                    self.commit_failpoint(*txn);
                }
                self.transport.kick(from);
                if let Message::JoinOffer {
                    config, config_txn, ..
                } = &msg
                {
                    self.offered = SharedConfig::decode(config).ok().map(|c| (*config_txn, c));
                }
                self.feed(Event::Message { from, msg });
            }
            Input::ConnectionLost { peer } => self.feed(Event::ConnectionLost { peer }),
            Input::Ctl {
                call: CtlCall::ClusterStatus,
                reply,
            } if self.kernel_lost.is_some() => {
                let _ = reply.try_send(CtlReply::Status(self.status_while_lost()));
            }
            Input::Ctl { call, reply } => self.on_ctl(call, reply),
            Input::KernelLost { epoch, reason } => self.on_kernel_lost(epoch, reason),
            Input::PlexIoError {
                volume,
                plex,
                ranges,
            } => self.on_plex_error(volume, plex, ranges),
            Input::PrOut {
                request,
                volume,
                nexus,
                service_action,
                scope_type,
                parameters,
            } => {
                let Some((dg, vol)) = volume.split_once('.') else {
                    log::warn!(
                        "node {}: data plane: persistent reserve out on unknown volume {volume}",
                        self.name
                    );
                    self.submit(Job::PrOutDone {
                        request,
                        result: PrOutResult::Unavailable,
                    });
                    return;
                };
                let change = Change::VolPrOut {
                    dg: dg.to_string(),
                    volume: vol.to_string(),
                    nexus,
                    service_action,
                    scope_type,
                    parameters,
                };
                let id = self.request_id();
                self.pending.insert(id, Pending::PrOut { request, volume });
                self.feed(Event::ClientRequest {
                    request: id,
                    change,
                });
            }
            Input::Resync(p) => self.on_resync(p),
            Input::Fence {
                volume,
                hold,
                token,
                reply,
            } => {
                if hold && self.stopping {
                    let e = format!("node {}: plexd is stopping", self.name);
                    log::warn!("node {}: fence on volume {volume}: {e}", self.name);
                    let _ = reply.try_send(Err(e));
                } else {
                    self.submit(Job::Fence {
                        volume,
                        hold,
                        token,
                        reply,
                    });
                }
            }
            Input::Shutdown if self.stopping => {}
            Input::Shutdown => {
                self.stopping = true;
                self.submit(Job::BreakFences {
                    why: "plexd is stopping".into(),
                });
                // The data plane stops writing shared volumes (lease revoked for
                // good, I/O in flight drained) before the core is told to stop and
                // asks the master to close this start: no recovery follows a clean
                // stop (core::recovery).
                if self.kernel_lost.is_some() {
                    self.stop_core(Err(format!("node {}: the data plane is lost", self.name)));
                } else {
                    let volumes = self
                        .node
                        .config()
                        .groups
                        .iter()
                        .flat_map(|g| {
                            g.volumes
                                .iter()
                                .map(|v| crate::model::volume_bdev(&g.name, &v.name))
                        })
                        .collect();
                    self.submit(Job::StopSharedIo { volumes });
                }
            }
            Input::DriverDone => {} // the main loop reads the answers after every input
            Input::QuorumDisk(done) => self.feed(match done {
                qdisk::Done::Read { op, result } => Event::QuorumDiskRead { op, result },
                qdisk::Done::Written { op, result } => Event::QuorumDiskWritten { op, result },
            }),
            Input::DirtyLogs { op, results } => self.feed(Event::DirtyLogsRead { op, results }),
            Input::Monitor {
                members,
                quorate,
                detail,
            } => self.feed(Event::MonitorView {
                members,
                quorate,
                detail,
            }),
        }
    }

    /// The clean stop goes on in the core once this node's shared I/O stopped
    /// (`result`): Ok, the core asks the master to close this start; otherwise a
    /// write may still follow, and the start stays open (the master recovers it).
    fn stop_core(&mut self, result: Result<(), String>) {
        if let Err(e) = result {
            log::error!(
                "{e}; a write of this node may still reach the shared volumes: its start stays open and the master will resynchronise its mirrors"
            );
            self.node.keep_open_at_stop();
        }
        self.feed(Event::Shutdown);
    }

    fn on_plex_error(&mut self, volume: String, plex: String, ranges: Vec<(u64, u64)>) {
        let Some((dg, vol)) = volume.split_once('.') else {
            log::warn!("data plane: plex error on unknown volume {volume}");
            return;
        };
        if self.node.private().disk_group(dg).is_some() {
            let change = Change::PlexDetach {
                dg: dg.to_string(),
                plex: plex.clone(),
            };
            let request = self.request_id();
            self.pending
                .insert(request, Pending::PlexError { volume, plex });
            self.feed(Event::ClientRequest { request, change });
            return;
        }
        let request = self.request_id();
        self.pending.insert(
            request,
            Pending::PlexError {
                volume: volume.clone(),
                plex: plex.clone(),
            },
        );
        self.feed(Event::PlexIoError {
            request,
            volume: vol.to_string(),
            plex,
            ranges,
        });
    }

    fn on_resync(&mut self, p: resync::Progress) {
        let finished = self.tasks.update(&p);
        if let Some(t) = finished {
            if t.state == "done" {
                let change = Change::SetPlexState {
                    dg: t.dg.clone(),
                    plex: t.plex.clone(),
                    state: PlexState::Active,
                };
                if self.node.private().disk_group(&t.dg).is_some() {
                    let request = self.request_id();
                    let plex = t.plex.clone();
                    self.pending.insert(request, Pending::ResyncDone { plex });
                    self.feed(Event::ClientRequest { request, change });
                } else {
                    log::warn!(
                        "node {}: resync task {} of plex {}: disk group {} is no longer private here; its plex stays SYNCING",
                        self.name,
                        t.id,
                        t.plex,
                        t.dg
                    );
                }
            }
        }
    }

    /// Feeds one event to the core and carries out its actions ([`Daemon::run_step`]).
    /// Then the events the step answered itself ([`Daemon::ready`]), the same way.
    fn feed(&mut self, event: Event<SharedConfig>) {
        let mut next = Some(event);
        // Each answered event comes from an action of the step before it, which the
        // core asks once per transaction phase: a handful at most.
        for _ in 0..=MAX_READY_EVENTS {
            let Some(event) = next.take().or_else(|| self.ready.pop_front()) else {
                break;
            };
            let actions = self.node.handle(now_ms(self.start), event);
            self.run_step(actions);
        }
        if !self.ready.is_empty() {
            log::error!(
                "node {}: more than {MAX_READY_EVENTS} events answered in a row (a bug); {} wait for the next input",
                self.name,
                self.ready.len()
            );
        }
        self.remember_config();
        self.sync_alua();
    }

    /// Hands the driver the ALUA views of this node's shared exports when the view
    /// or the exports changed ([`exports::alua_of`]: the master optimized, other
    /// members non-optimized, nodes outside the view unavailable), and the ANA state
    /// of its NVMe-oF group when it serves an NVMe-oF export ([`exports::ana_of`]).
    /// The job runs after the ones that created the targets and subsystems.
    fn sync_alua(&mut self) {
        if self.kernel_lost.is_some() || self.reconnecting {
            return;
        }
        let basis = self
            .node
            .view()
            .map_or((0, 0, self.node.config_txn()), |v| {
                (v.id, v.master, self.node.config_txn())
            });
        if self.alua_basis == Some(basis) {
            return;
        }
        self.alua_basis = Some(basis);
        let nodes: Vec<(u32, String)> = self
            .file
            .nodes
            .iter()
            .map(|n| (n.id, n.name.clone()))
            .collect();
        let view = self.node.view().map(|v| (v.master, v.members.as_slice()));
        let av = exports::AluaView {
            nodes: &nodes,
            me: self.me,
            view,
        };
        let mut want = BTreeMap::new();
        let mut nvmf = false;
        for g in &self.node.config().groups {
            for v in &g.volumes {
                for e in &v.exports {
                    match e.protocol {
                        crate::model::ExportProtocol::Iscsi => {
                            if let Some(a) = exports::alua_of(e, &av) {
                                want.insert(e.iqn.clone(), a);
                            }
                        }
                        crate::model::ExportProtocol::Nvmf => {
                            nvmf |= exports::serves(e, &self.name)
                        }
                    }
                }
            }
        }
        let ana = nvmf.then(|| exports::ana_of(self.me, view));
        if want != self.alua_sent || ana != self.ana_sent {
            self.alua_sent = want.clone();
            self.ana_sent = ana;
            self.submit(Job::SyncAlua { alua: want, ana });
        }
    }

    /// Carries out one step of the core (the actions of one event) in the order
    /// [`pipeline::plan`] gives: slow actions become driver jobs
    /// ([`Daemon::submit_action`], their completion events come back through
    /// [`Daemon::on_driver_done`]); the rest is carried out at once or waits in the
    /// pipeline for the jobs before it.
    fn run_step(&mut self, actions: Vec<Action<SharedConfig>>) {
        for op in pipeline::plan(actions) {
            match op {
                Op::Job(a) => self.submit_action(a),
                Op::Later(item) => {
                    let armed = matches!(item, Item::Failpoint(name)
                        if self.failpoint.as_ref().is_some_and(|f| f.exits_at(name)));
                    if let Some(now) = self.pipeline.later(item, armed) {
                        self.run_item(now);
                    }
                }
                Op::Send(msgs, after_job) => {
                    for (to, msg) in msgs {
                        if let Some((to, msg)) = self.pipeline.message(to, msg, after_job) {
                            self.transport.send(to, &msg);
                        }
                    }
                }
                Op::Now(Action::RecordMembership { until_ms }) => {
                    let ahead = until_ms.saturating_sub(now_ms(self.start));
                    if let Err(e) = membership::write(&self.membership_path, ahead) {
                        // The messages after it in this step may confirm a master's
                        // lease, and a restart would not know of them: this process
                        // stops before sending any (as if killed; its data plane's
                        // lease runs out on its own). Its next start refuses to run
                        // while the record cannot be written.
                        log::error!(
                            "node {}: cannot write the membership record {}: {e}; plexd exits: a restart must know whether this node may have confirmed a master's lease",
                            self.name,
                            self.membership_path.display()
                        );
                        std::process::exit(1);
                    }
                }
                Op::Now(Action::ReadQuorumDisk { op }) => {
                    let sent = match &self.qdisk {
                        Some(q) => q.read(op),
                        None => Err("no quorum disk is configured".into()),
                    };
                    if let Err(e) = sent {
                        self.qdisk_failed(qdisk::Done::Read { op, result: Err(e) });
                    }
                }
                Op::Now(Action::WriteQuorumDisk {
                    op,
                    record,
                    deadline_ms,
                }) => {
                    // The core's clock counts from `start` (see `now_ms`).
                    let deadline = self
                        .start
                        .instant_at(deadline_ms)
                        .unwrap_or_else(Instant::now);
                    let sent = match &self.qdisk {
                        Some(q) => q.write(op, record, deadline),
                        None => Err("no quorum disk is configured".into()),
                    };
                    if let Err(e) = sent {
                        self.qdisk_failed(qdisk::Done::Written { op, result: Err(e) });
                    }
                }
                Op::Now(Action::ReadDirtyLogs {
                    op, node, sections, ..
                }) => self.read_dirty_logs(op, node, sections),
                Op::Now(Action::ViewChanged { view }) => log::info!(
                    "node {}: view {} installed: master {}, members {:?}",
                    self.name,
                    view.id,
                    self.node.name(view.master),
                    view.members
                ),
                Op::Now(Action::ResyncProgress {
                    plex,
                    done_bytes,
                    total_bytes,
                    finished,
                }) => self
                    .tasks
                    .progress(&plex, (done_bytes, total_bytes), finished, &self.name),
                Op::Now(_) => {} // Log: the core has logged it already
            }
        }
    }

    /// Starts a read of node `of`'s dirty region log sections on a thread of its
    /// own ([`drl`]; it finds each disk by its id on this node's disk files).
    fn read_dirty_logs(
        &mut self,
        op: u64,
        of: NodeId,
        sections: Vec<crate::core::DirtyLogSection>,
    ) {
        let at = sections
            .into_iter()
            .map(|section| {
                let group = self.node.config().group(&section.dg);
                let disks = section
                    .copies
                    .iter()
                    .map(|c| {
                        group
                            .and_then(|g| g.disks.iter().find(|d| d.name == c.disk))
                            .cloned()
                    })
                    .collect();
                (section, disks)
            })
            .collect();
        let files = self.file.disk_files();
        let hold = self.failpoint.as_ref().and_then(|f| f.sleep_at("drl.read"));
        self.drl_reads
            .start(&self.name, op, of, at, files, self.tx.clone(), hold);
    }

    /// A quorum disk request that could not be handed to its thread: the core
    /// gets the failure as the request's answer (through the input queue, after
    /// the step that asked).
    fn qdisk_failed(&mut self, done: qdisk::Done) {
        log::error!("node {}: quorum disk: {done:?}", self.name);
        if self.tx.try_send(Input::QuorumDisk(done)).is_err() {
            log::error!(
                "node {}: the input queue is full; the quorum disk request is lost and this node stops using the disk",
                self.name
            );
        }
    }

    fn run_item(&mut self, item: Item) {
        match item {
            Item::Send(to, msg) => self.transport.send(to, &msg),
            Item::Reply(request, result) => self.on_reply(request, result),
            Item::Failpoint(name) => {
                self.mark(name);
                if self.failpoint.as_ref().is_some_and(|f| f.exits_at(name)) {
                    log::error!("node {}: failpoint {name}: exiting now", self.name);
                    eprintln!("plexd: node {}: failpoint {name}: exit", self.name);
                    // SAFETY: _exit ends the process at once without running atexit
                    // handlers or destructors, which is the point (a kill -9); it
                    // touches no Rust state.
                    unsafe { libc::_exit(FAILPOINT_EXIT_STATUS) };
                }
            }
            Item::ShutdownReady => {
                log::info!("node {}: clean stop", self.name);
                self.tasks.cancel_all();
            }
        }
    }

    /// Hands `job` to the driver and notes it in the pipeline. A driver thread that
    /// is gone (a bug) stops this plexd: nothing could be carried out any more.
    fn submit(&mut self, job: Job) {
        match self.driver.submit(job) {
            Ok(seq) => self.pipeline.job(seq),
            Err(e) => {
                log::error!("node {}: {e}; plexd exits", self.name);
                std::process::exit(1);
            }
        }
    }

    /// A slow action of the core as a driver job, with what the loop notes when the
    /// core asks for it (the staged transaction, cancelled resyncs).
    fn submit_action(&mut self, action: Action<SharedConfig>) {
        let job = match action {
            Action::LocalCheck { txn, change } => match self.local_check_job(txn, change) {
                Some(job) => job,
                None => return,
            },
            Action::KernelPrepare { txn, config } => {
                let shared = config.groups.clone();
                self.staged = Some((txn, config));
                Job::KernelPrepare { txn, shared }
            }
            Action::KernelCommit { txn } => {
                self.staged = None;
                Job::KernelCommit { txn }
            }
            Action::KernelAbort { txn } => {
                self.timer = None;
                self.staged = None;
                Job::KernelAbort { txn }
            }
            Action::KernelLoad { config } => Job::KernelLoad {
                shared: config.groups.clone(),
            },
            Action::WriteDisks {
                record,
                deadline_ms,
                lease_extends,
            } => self.write_disks_job(record, deadline_ms, lease_extends),
            Action::ReadDisks => self.read_disks_job(),
            Action::CheckDiskAccess { disks } => Job::CheckDiskAccess {
                disks,
                offered: self.offered.clone(),
            },
            Action::LeaveCluster { reason } => self.leave_job(&reason),
            Action::Quiesce { dg, volume, token } => Job::Quiesce { dg, volume, token },
            Action::Resume { dg, volume } => Job::Resume {
                volume: crate::model::volume_bdev(&dg, &volume),
            },
            Action::PrivateChange {
                request,
                change,
                before,
                after,
                shared,
            } => self.private_job(request, change, before, after, shared),
            Action::CopyChunk {
                token,
                dg,
                volume,
                plex,
                pieces,
                deadline_ms,
            } => {
                // The driver checks the copy's write against the newest published
                // lease (as a master's disk write): publish it now.
                self.renew_lease();
                Job::CopyChunk {
                    token,
                    group: self.node.config().group(&dg).cloned(),
                    volume,
                    plex,
                    pieces,
                    deadline: self.core_instant(deadline_ms),
                }
            }
            other @ (Action::Send { .. }
            | Action::ResyncProgress { .. }
            | Action::ReadQuorumDisk { .. }
            | Action::WriteQuorumDisk { .. }
            | Action::ReadDirtyLogs { .. }
            | Action::RecordMembership { .. }
            | Action::Reply { .. }
            | Action::Failpoint(_)
            | Action::ViewChanged { .. }
            | Action::Log { .. }
            | Action::ShutdownReady) => {
                log::error!("node {}: {other:?} is no driver job (a bug)", self.name);
                return;
            }
        };
        self.submit(job);
    }

    /// The driver job of a transaction's local check; None when it reads nothing
    /// ([`driver::local_check_reads`]): then the loop checks it and its answer is
    /// fed after this step ([`Daemon::ready`]), without a trip through the driver.
    fn local_check_job(&mut self, txn: TxnId, change: Change) -> Option<Job> {
        let group = self
            .node
            .private()
            .disk_group(change.dg_name())
            .map(|g| Arc::new(g.clone()))
            .or_else(|| {
                let shared = &self.node.config().groups;
                shared.iter().find(|g| g.name == change.dg_name()).cloned()
            });
        // The master zeroes the space the change gives a volume (`zero`).
        let zero = self.node.master_txn_config(txn).and_then(|after| {
            let after = after.groups.iter().find(|g| g.name == change.dg_name())?;
            let space = zero::space_to_zero(&self.file.cluster, &change, group.as_deref(), after)?;
            Some((Arc::clone(after), space))
        });
        if zero.is_some() || driver::local_check_reads(&change, group.as_deref(), &self.name) {
            return Some(Job::LocalCheck {
                txn,
                group,
                private: self.node.private().clone(),
                change,
                zero,
            });
        }
        let result = disks::check_private_names(&change, self.node.private());
        if let Err(e) = &result {
            log::warn!(
                "node {}: transaction {txn}: local check refused: {e}",
                self.name
            );
        }
        self.ready.push_back(Event::LocalCheckDone { txn, result });
        None
    }

    /// A disk write of the configuration record, with its deadline as an instant.
    fn write_disks_job(
        &mut self,
        record: crate::core::DiskRecord<SharedConfig>,
        deadline_ms: u64,
        lease_extends: bool,
    ) -> Job {
        if lease_extends {
            // The driver checks a master's write against the newest published lease:
            // publish it now, not at the next tick (a lease won by a message just
            // before, e.g. the first one of a view a join gave its majority, is not
            // published yet).
            self.renew_lease();
        }
        Job::WriteDisks {
            record,
            deadline: self.core_instant(deadline_ms),
            lease_extends,
        }
    }

    /// The instant `ms` on the core's clock, which counts from `start` (see `now_ms`);
    /// u64::MAX (e.g. a master alone holding a majority) is a year away.
    fn core_instant(&self, ms: u64) -> Instant {
        self.start
            .instant_at(ms)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 86_400))
    }

    /// A read of the shared groups' records, with every configuration this node knows
    /// (history, current, staged) to recognise them.
    fn read_disks_job(&self) -> Job {
        let mut known: Vec<(TxnId, SharedConfig)> = self.history.iter().cloned().collect();
        known.push((self.node.config_txn(), self.node.config().clone()));
        if let Some(s) = &self.staged {
            known.push(s.clone());
        }
        Job::ReadDisks { known }
    }

    /// This node left the cluster: resyncs stop, the staged layout goes, the data plane
    /// keeps only the private groups.
    fn leave_job(&mut self, reason: &str) -> Job {
        log::error!(
            "node {}: left the cluster: {reason}; its shared volumes stay fenced (no lease) until it rejoins",
            self.name
        );
        self.tasks.cancel_all();
        // The driver drops a staged layout when it leaves.
        self.staged = None;
        Job::Leave
    }

    /// The driver answered job `seq` (the oldest, or [`takeover::LATE`]): its answer
    /// is noted, what waited behind it is carried out, then the core gets the
    /// completion event.
    fn on_driver_done(&mut self, seq: u64, done: Done) {
        // A late answer (a takeover served after its wait) ends no job.
        let due = match seq {
            takeover::LATE => Vec::new(),
            _ => self.pipeline.done(seq).unwrap_or_else(|e| {
                log::error!("node {}: {e} (a bug)", self.name);
                Vec::new()
            }),
        };
        let private_committed = matches!(done, Done::Private { result: Ok(()), .. });
        let event = self.complete(done);
        for item in due {
            self.run_item(item);
        }
        if let Some(ev) = event {
            self.feed(ev);
        }
        if private_committed {
            // The core took the private groups the change left: start their resyncs.
            self.after_config_change();
        }
    }

    /// What the loop does with a job's answer; the core's completion event, if any.
    fn complete(&mut self, done: Done) -> Option<Event<SharedConfig>> {
        match done {
            Done::LocalChecked { txn, result } => Some(Event::LocalCheckDone { txn, result }),
            Done::KernelPrepared { txn, result, took } => {
                if let Some(t) = self.timer.as_mut() {
                    t.local_prepare = took;
                }
                Some(Event::KernelPrepared { txn, result })
            }
            Done::KernelCommitted { txn } => {
                self.committed_txn = txn;
                self.after_config_change();
                if let Some(t) = self
                    .timer
                    .take_if(|t| t.at("txn.after_commit_sent").is_some())
                {
                    if let Some(line) = t.line(&self.name, txn, Instant::now()) {
                        log::info!("{line}");
                    }
                }
                Some(Event::KernelCommitted { txn })
            }
            Done::KernelLoaded { result } => {
                self.after_config_change();
                Some(Event::KernelLoaded { result })
            }
            Done::DiskWritten { txn, result } => Some(Event::DiskWritten { txn, result }),
            Done::DisksRead { result, failed } => {
                self.set_failed(failed);
                Some(Event::DisksRead { result })
            }
            Done::DiskAccessChecked { refused } => Some(Event::DiskAccessChecked { refused }),
            Done::Private { request, result } => Some(Event::PrivateDone { request, result }),
            Done::Reconnected { epoch, result } => {
                self.on_reconnected(epoch, result);
                None
            }
            Done::Quiesced {
                dg,
                volume,
                token,
                result,
            } => Some(Event::Quiesced {
                dg,
                volume,
                token,
                result,
            }),
            Done::ChunkCopied { token, result } => Some(Event::ChunkCopied { token, result }),
            Done::SharedIoStopped { result } => {
                self.stop_core(result);
                None
            }
            Done::Nothing => None,
        }
    }

    fn remember_config(&mut self) {
        let txn = self.node.config_txn();
        let config = self.node.config();
        if self
            .history
            .back()
            .is_some_and(|(t, c)| *t == txn && c == config)
        {
            return;
        }
        if self.history.len() >= HISTORY_LEN {
            self.history.pop_front();
        }
        self.history.push_back((txn, config.clone()));
    }

    /// Phase boundaries of a transaction this node runs as master (see [`TxnTimer`]).
    fn mark(&mut self, name: &'static str) {
        let now = Instant::now();
        if name == "txn.after_validate" {
            self.timer = Some(TxnTimer {
                start: now,
                marks: Vec::new(),
                local_prepare: Duration::ZERO,
            });
        } else if !matches!(self.node.role(), Role::Master) {
            self.timer = None;
        } else if let Some(t) = self.timer.as_mut() {
            t.marks.push((name, now));
        }
    }

    fn on_reply(&mut self, request: RequestId, result: Result<(), RequestError>) {
        if self.on_drop_reply(request, &result) {
            return;
        }
        match self.pending.remove(&request) {
            Some(Pending::Client(tx, change)) => {
                let answer = match result {
                    Ok(()) => CtlReply::Changed(self.describe(&change)),
                    Err(e) => CtlReply::Done(Err(e)),
                };
                let _ = tx.try_send(answer);
            }
            Some(Pending::PlexError { volume, plex }) => match result {
                Ok(()) => log::warn!(
                    "node {}: plex {plex} of volume {volume}: write error handled (detached, or resynchronised over the failed range under the local detach policy)",
                    self.name
                ),
                Err(e) => {
                    log::error!("node {}: plex {plex} of volume {volume} not detached: {e}; failing its held writes", self.name);
                    self.submit(Job::FailHeldWrites { volume });
                }
            },
            Some(Pending::ResyncDone { plex }) => {
                if let Err(e) = result {
                    log::error!("node {}: resync of plex {plex}: {e}", self.name);
                }
            }
            Some(Pending::PrOut {
                request: pr,
                volume,
            }) => {
                // Refused by the master: the reservations moved on (or the command
                // is wrong for them now); the data plane decides again on the state
                // it holds, which has every change committed before this answer.
                let answer = match &result {
                    Ok(()) => {
                        log::info!(
                            "node {}: volume {volume}: persistent reservations changed (a host's PERSISTENT RESERVE OUT through this node)",
                            self.name
                        );
                        PrOutResult::Committed
                    }
                    Err(e) if e.kind == ErrorKind::Refused => PrOutResult::Stale,
                    Err(e) => {
                        log::warn!(
                            "node {}: volume {volume}: persistent reserve out not run by the cluster: {e}; the host retries",
                            self.name
                        );
                        PrOutResult::Unavailable
                    }
                };
                if let Err(e) = &result {
                    log::debug!(
                        "node {}: volume {volume}: persistent reserve out: {e}",
                        self.name
                    );
                }
                self.submit(Job::PrOutDone {
                    request: pr,
                    result: answer,
                });
            }
            None => log::debug!("node {}: reply to unknown request {request:?}", self.name),
        }
    }

    /// After the configuration changed here: start resyncs of the private groups'
    /// SYNCING plexes (the shared groups' are the core's: `core::resync`).
    fn after_config_change(&mut self) {
        let private = self.node.private().disk_groups.clone();
        for g in &private {
            self.start_resyncs(g);
        }
    }

    /// Starts a resync of every SYNCING plex of private group `g` without one,
    /// fenced on this node.
    fn start_resyncs(&mut self, g: &crate::model::DiskGroupConfig) {
        for v in &g.volumes {
            for p in v.plexes.iter().filter(|p| p.state == PlexState::Syncing) {
                if self.tasks.running(&g.name, &p.name) {
                    continue;
                }
                let Some(job) = resync::Job::new(g, v, p) else {
                    log::error!(
                        "node {}: plex {}: no ACTIVE plex to resync from",
                        self.name,
                        p.name
                    );
                    continue;
                };
                let (id, cancel) =
                    self.tasks
                        .add(&g.name, &v.name, &p.name, job.total_bytes(), &self.name);
                log::info!(
                    "node {}: resync task {id}: plex {} of volume {}",
                    self.name,
                    p.name,
                    v.name
                );
                let fencer = fence::Fencer::new(self.me, self.tx.clone());
                job.start(id, self.socket.clone(), fencer, cancel, self.tx.clone());
            }
        }
    }

    fn on_ctl(&mut self, call: CtlCall, reply: smol::channel::Sender<CtlReply>) {
        let answer = match call {
            CtlCall::Change(c) => {
                let change = match self.resolve(c) {
                    Ok(ch) => ch,
                    Err(e) => {
                        log::warn!("node {}: request refused: {e}", self.name);
                        let _ = reply.try_send(CtlReply::Done(Err(e)));
                        return;
                    }
                };
                if let Some(answer) = self.destroy_failed(&change) {
                    answer
                } else {
                    let request = self.request_id();
                    self.pending
                        .insert(request, Pending::Client(reply, Box::new(change.clone())));
                    self.feed(Event::ClientRequest { request, change });
                    return;
                }
            }
            CtlCall::ClusterStatus => {
                self.prune_failed();
                CtlReply::Status(self.status())
            }
            CtlCall::Print(dg) => {
                self.prune_failed();
                self.print(&dg)
            }
            CtlCall::DiskInit { path, name, force } => self.disk_init(&path, &name, force),
            CtlCall::DiskList => {
                self.refresh_failed();
                let repairs = self.repairs.lock().unwrap_or_else(|p| p.into_inner());
                let shared = self.node.config().groups.iter().map(|g| &**g);
                let recorded_failed = shared
                    .chain(&self.node.private().disk_groups)
                    .flat_map(|g| &g.disks)
                    .filter(|d| d.failed)
                    .map(|d| d.id.as_str())
                    .collect();
                let failed = (&self.failed[..], &recorded_failed);
                CtlReply::Disks(disks::list(&self.file.disk_files(), failed, &repairs))
            }
            CtlCall::TaskList => {
                let master = self
                    .node
                    .view()
                    .map(|v| v.master)
                    .filter(|&m| m != self.me)
                    .and_then(|m| self.file.node_by_id(m))
                    .map(|n| n.address.clone());
                CtlReply::Tasks {
                    tasks: self.tasks.list(),
                    master,
                }
            }
            CtlCall::VolStats { dg, volume } => self.vol_stats_target(&dg, &volume),
        };
        let _ = reply.try_send(answer);
    }

    fn err(&self, e: impl std::fmt::Display) -> String {
        format!("node {}: {e}", self.name)
    }

    /// A refusal of kind `kind` by this node: `e` without the node name.
    fn refuse_as(&self, kind: ErrorKind, e: impl std::fmt::Display) -> RequestError {
        RequestError::new(kind, self.name.clone(), self.err(e))
    }

    /// A refusal by this node ([`ErrorKind::Refused`]): `e` without the node name.
    fn refuse(&self, e: impl std::fmt::Display) -> RequestError {
        self.refuse_as(ErrorKind::Refused, e)
    }

    /// A refusal by this node ([`ErrorKind::Refused`]) whose text names the node.
    fn refused(&self, e: String) -> RequestError {
        RequestError::new(ErrorKind::Refused, self.name.clone(), e)
    }

    /// The protocol of `plexctl export PROTOCOL`.
    fn export_protocol(&self, name: &str) -> Result<crate::model::ExportProtocol, String> {
        crate::model::ExportProtocol::parse(name)
            .ok_or_else(|| self.err(format!("export protocol {name:?} is unknown (iscsi, nvmf)")))
    }

    /// What a committed change did, for plexctl.
    fn describe(&self, change: &Change) -> String {
        crate::model::describe(change, self.group(change.dg_name()))
    }

    /// `vol stats`: where this node's data plane serves `volume` of `dg`.
    fn vol_stats_target(&self, dg: &str, volume: &str) -> CtlReply {
        let Some(g) = self.group(dg) else {
            let e = format!("disk group {dg} is not imported on this node");
            return CtlReply::Error(self.refuse_as(ErrorKind::NotFound, e));
        };
        if !g.volumes.iter().any(|v| v.name == volume) {
            let e = format!("volume {volume} is not in disk group {dg}");
            return CtlReply::Error(self.refuse_as(ErrorKind::NotFound, e));
        }
        CtlReply::DataPlaneVolume {
            socket: self.socket.clone(),
            bdev: crate::model::volume_bdev(dg, volume),
        }
    }

    fn group(&self, name: &str) -> Option<&crate::model::DiskGroupConfig> {
        self.node
            .private()
            .disk_group(name)
            .or_else(|| self.node.config().group(name))
    }
}
