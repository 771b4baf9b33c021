//! A deterministic simulator for the protocol core (the FoundationDB / TigerBeetle
//! VOPR approach): many [`Node`]s in one process, a network with random delays that
//! keeps per-connection order (like TCP), crashes at random times and at failpoints,
//! restarts, joins, client changes and plex I/O errors, all drawn from one seeded
//! generator, with the invariants checked after every event.
//!
//! The simulated driver does what the daemon does: it carries out each [`Action`]
//! (messages, local checks, kernel phase, disk writes) and answers with [`Event`]s
//! after a random delay. The "shared disk" keeps the newest configuration record and
//! survives crashes; a disk write in flight when its node crashes lands or not (a
//! torn write loses only the record being written).
//!
//! Faults beyond crashes: network partitions (symmetric and one-way, healed and
//! flapping), frozen nodes (SIGSTOP: every event for them waits until they thaw),
//! coordinator-only deaths whose data plane goes on serving with its last lease,
//! and a bounded clock rate drift per node. Each data plane holds the lease its
//! driver renews on every tick; the invariants check that a data plane serves only
//! layouts the cluster committed and never one older than the newest commit allows.

mod random;
mod toy;

pub use random::{run_seed, RunStats};
pub use toy::{
    ToyChange, ToyConfig, ToyGroup, ToyLog, TOY_REGION_BYTES, TOY_SECTION_BYTES, TOY_VOLUME_BYTES,
};

use crate::core::{
    Action, ConfigModel, DirtyLogRead, DiskRecord, ErrorKind, Event, FenceToken, Message, Node,
    NodeConfig, NodeId, NodeInfo, QuorumDiskRecord, RequestError, RequestId, Role, TxnId, View,
    OUTCOME_UNKNOWN, WRITE_DEADLINE,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Lines of trace kept for a failure report (`PLEXD_SIM_TRACE_LINES` overrides).
pub const TRACE_LINES: usize = 80;
/// Log lines kept (the nodes' `Action::Log`).
pub const MAX_LOG_LINES: usize = 10_000;
/// Events processed by one `run_for` call at most (a runaway guard).
pub const MAX_EVENTS_PER_RUN: u64 = 10_000_000;

/// Simulator settings.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of nodes, ids 1..=nodes, names a, b, c...
    pub nodes: u32,
    /// Seed of every random choice.
    pub seed: u64,
    /// Network delay bound (each message takes 1..=this, order kept per connection).
    pub max_delay_ms: u64,
    /// Driver work (checks, kernel, disks) takes 1..=this.
    pub max_driver_delay_ms: u64,
    /// Tick period of every node.
    pub tick_ms: u64,
    /// Heartbeat interval given to the cores.
    pub heartbeat_interval_ms: u64,
    /// Heartbeat timeout given to the cores.
    pub heartbeat_timeout_ms: u64,
    /// Form wait given to the cores.
    pub form_wait_ms: u64,
    /// Join retry given to the cores.
    pub join_retry_ms: u64,
    /// Data-plane lease given to the cores.
    pub lease_ms: u64,
    /// Lease margin given to the cores.
    pub lease_margin_ms: u64,
    /// Probability (percent) that peers see a connection loss when a node crashes
    /// (otherwise only the heartbeat timeout finds out).
    pub connection_lost_percent: u32,
    /// Probability (percent) that a data plane refuses a kernel prepare.
    pub kernel_refuse_percent: u32,
    /// Record a trace of every event (slower; used to report failures).
    pub trace: bool,
    /// The cluster has a quorum disk (one more vote; `core::qdisk`).
    pub quorum_disk: bool,
    /// Membership and quorum also come from a simulated external monitor
    /// (corosync: `core::monitor`), whose views reach each node 1..=
    /// [`MAX_MONITOR_DELAY_MS`] after the network or a process changes.
    pub monitor: bool,
}

/// Longest a simulated cluster monitor takes to report a change to a node.
pub const MAX_MONITOR_DELAY_MS: u64 = 150;

impl SimConfig {
    /// Defaults: delays up to 20 ms, ticks every 20 ms, heartbeats every 100 ms,
    /// timeout 500 ms, form after 500 ms, retry abandoned joins after 1 s.
    pub fn new(nodes: u32, seed: u64) -> SimConfig {
        SimConfig {
            nodes,
            seed,
            max_delay_ms: 20,
            max_driver_delay_ms: 5,
            tick_ms: 20,
            heartbeat_interval_ms: 100,
            heartbeat_timeout_ms: 500,
            form_wait_ms: 500,
            join_retry_ms: 1000,
            lease_ms: 1000,
            lease_margin_ms: 50,
            connection_lost_percent: 80,
            kernel_refuse_percent: 0,
            trace: false,
            quorum_disk: false,
            monitor: false,
        }
    }
}

/// A driver result the test can hold back on a node, to stop a transaction in a phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Hold {
    /// `LocalCheckDone`.
    LocalCheck,
    /// `KernelPrepared`.
    KernelPrepare,
    /// `KernelCommitted` (a data plane slow to apply a COMMIT).
    KernelCommit,
    /// `DiskWritten`.
    DiskWrite,
    /// `DiskAccessChecked` (a joiner checking the shared disks).
    DiskAccess,
    /// `KernelLoaded`.
    KernelLoad,
    /// `QuorumDiskRead` and `QuorumDiskWritten` (a quorum disk that stalls).
    QuorumDisk,
    /// `Quiesced` (a resync fence's quiesce that drains slowly).
    Quiesce,
    /// `ChunkCopied` (a resync copy between its read and its write).
    Copy,
    /// `PrivateDone` (a private change the driver is still running).
    Private,
    /// `DirtyLogsRead` (a slow or hung read of a dirty region log).
    LogRead,
    /// `DisksRead` (a read of the configuration that stalls; the content is read
    /// when it is delivered).
    DisksRead,
}

impl Hold {
    /// Whether the daemon runs this kind's job on its driver thread (one job at a
    /// time, in order); the quorum disk's I/O and the dirty region log reads have
    /// threads of their own.
    pub fn on_driver_thread(self) -> bool {
        !matches!(self, Hold::QuorumDisk | Hold::LogRead)
    }
}

/// Counts of interesting things a run went through (to see what it covered).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    /// Nodes crashed at an armed failpoint.
    pub failpoint_crashes: usize,
    /// Successors that took over as master.
    pub takeovers: usize,
    /// Transactions a new master completed (found on the disks or COMMIT received).
    pub completed_by_new_master: usize,
    /// Transactions a new master aborted.
    pub aborted_by_new_master: usize,
    /// Joins completed.
    pub joins: usize,
    /// Joins abandoned.
    pub abandoned_joins: usize,
    /// Transactions that failed after they started (logged by the master).
    pub failed_txns: usize,
    /// Transactions committed.
    pub commits: usize,
    /// Quorum disk acquisitions (a node read its record back after writing it).
    pub quorum_disk_acquired: usize,
    /// Takeovers one vote short that went for the quorum disk.
    pub quorum_disk_takeovers: usize,
    /// Quorum disk holds lost (another node's record, a failed renewal, a hold
    /// that ran out).
    pub quorum_disk_lost: usize,
    /// Resync chunks written to a SYNCING plex.
    pub chunks_copied: usize,
    /// Of those, chunks of several pieces (small dirty ranges sharing a fence).
    pub multi_piece_chunks: usize,
    /// Of those, copies a host write may have raced (a node could write the volume
    /// unfenced between the copy's read and its write): the chunk must be copied
    /// again before the plex is ACTIVE.
    pub chunks_raced: usize,
    /// Resync copies refused past their deadline (a master frozen mid-copy).
    pub copies_refused: usize,
    /// Plexes a resync made ACTIVE.
    pub resyncs_done: usize,
    /// Faults aimed at a copying master between a copy's read and its write.
    pub copy_faults: usize,
    /// Private changes committed.
    pub private_commits: usize,
    /// Private changes that found a shared transaction in progress or staged on
    /// their node and waited for it.
    pub private_waits: usize,
    /// Cluster monitor views delivered (monitor seeds).
    pub monitor_views: usize,
    /// Of those, views that said the node's partition is not quorate.
    pub monitor_not_quorate: usize,
    /// Volumes whose plexes may differ after a node died serving them.
    pub divergences: usize,
    /// Of those, volumes with a dirty region log (only some regions may differ).
    pub log_divergences: usize,
    /// Dirty region log sections read for a recovery.
    pub log_sections_read: usize,
    /// Plexes made ACTIVE after a resync of some ranges only.
    pub range_resyncs_done: usize,
}

#[derive(Debug)]
enum SimEvent {
    Start {
        node: NodeId,
    },
    Tick {
        node: NodeId,
        inc: u64,
    },
    Deliver {
        from: NodeId,
        to: NodeId,
        inc: u64,
        bytes: Vec<u8>,
    },
    ConnLost {
        from: NodeId,
        from_inc: u64,
        to: NodeId,
        inc: u64,
    },
    Driver {
        node: NodeId,
        inc: u64,
        event: Event<ToyConfig>,
    },
}

impl SimEvent {
    /// The node the event happens on, if any.
    fn target(&self) -> Option<NodeId> {
        match self {
            SimEvent::Start { .. } => None,
            SimEvent::Tick { node, .. } | SimEvent::Driver { node, .. } => Some(*node),
            SimEvent::Deliver { to, .. } | SimEvent::ConnLost { to, .. } => Some(*to),
        }
    }
}

/// The simulated data plane of a node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Kernel {
    /// The layout in use.
    pub active: ToyConfig,
    /// A staged layout (kernel phase).
    pub staged: Option<(TxnId, ToyConfig)>,
    /// Shared disks given up (node left the cluster).
    pub left: bool,
    /// Simulated time until which the data plane serves shared volumes (its lease).
    pub lease_until_ms: u64,
    /// The coordinator start that granted that lease (a restarted coordinator's data
    /// plane serves under its predecessor's until the new start renews it).
    pub lease_inc: u64,
    /// Volumes quiesced for a resync fence (host I/O parked). Every kernel phase
    /// clears them (pessimistic: a commit resumes I/O).
    pub quiesced: BTreeSet<String>,
    /// The private groups' layout in use.
    pub private: ToyConfig,
    /// Writes in flight, by volume: the regions (their log marked first).
    pub writes: BTreeMap<String, BTreeSet<u64>>,
    /// The private groups staged with a shared layout: the ones the driver last
    /// committed when it staged (the daemon's driver stages its own private groups
    /// with every shared prepare).
    pub staged_private: Option<ToyConfig>,
    /// The node's incarnation that staged `staged`.
    pub staged_inc: u64,
}

/// A resync copy between its read and its write.
#[derive(Clone, Debug)]
pub struct CopyInFlight {
    /// The copying node.
    pub node: NodeId,
    /// Its fence.
    pub token: FenceToken,
    /// Volume.
    pub volume: String,
    /// The SYNCING plex.
    pub plex: String,
    /// The regions ([`TOY_REGION_BYTES`]) its pieces cover whole.
    pub regions: Vec<u64>,
    /// A node could write the volume unfenced since the read.
    pub dirty: bool,
    /// The write's deadline (the node's clock) and whether it moves with the lease.
    deadline: (u64, bool),
}

/// Plexes of a volume that may hold different data: a node start's data plane
/// died while it served the volume with all of them readable (ACTIVE).
#[derive(Clone, Debug)]
pub struct Divergence {
    /// The node start (node, incarnation) that died.
    pub start: (NodeId, u64),
    /// Volume.
    pub volume: String,
    /// Plexes that may differ from each other (the readable ones, and the SYNCING
    /// ones that took the writes); a plex leaves the set when a resync that covered
    /// `regions` made it ACTIVE again (a copy of the one readable plex).
    pub plexes: BTreeSet<String>,
    /// The regions that may differ (the writes in flight, each marked in the
    /// start's dirty region log first); None: any (the volume has no log).
    pub regions: Option<BTreeSet<u64>>,
}

/// Largest clock rate drift of a node, in parts per million: the bound the protocol
/// tolerates ([`crate::core::MAX_CLOCK_DRIFT_PPM`], ±1 %), never less.
pub const MAX_DRIFT_PPM: i64 = crate::core::MAX_CLOCK_DRIFT_PPM as i64;
/// The cores' `reply_timeout_ms` under the simulator (its driver answers within
/// `max_driver_delay_ms`).
pub const SIM_REPLY_TIMEOUT_MS: u64 = 2000;

/// One simulated node: its core (when up) and its driver's state.
#[derive(Debug)]
pub struct SimNode {
    /// Node id.
    pub id: NodeId,
    /// Incarnation, bumped at every start and crash.
    pub inc: u64,
    /// The core, when the node is up.
    pub core: Option<Node<ToyConfig>>,
    /// The data plane.
    pub kernel: Kernel,
    /// Crash when the core reaches this failpoint.
    pub armed: Option<&'static str>,
    /// Crash after this many more messages sent (in the middle of an action list,
    /// as a kill -9 between two socket writes).
    pub crash_after_sends: Option<u32>,
    /// Private disk groups on this node (its local checks refuse shared ones of the same name).
    pub private_dgs: BTreeSet<String>,
    /// The node cannot open the shared disks (its joins fail).
    pub disk_access_broken: bool,
    /// Events for this node wait until this time (a frozen process).
    pub frozen_until_ms: u64,
    /// Clock rate error of this node, parts per million.
    pub drift_ppm: i64,
    /// The membership record the core asked for (its clock): it survives crashes,
    /// as the daemon's file survives a process restart.
    pub membership_record: Option<u64>,
    /// The private groups as the node's disks hold them (the last private change
    /// the driver committed); read at every start.
    pub private_disk: ToyConfig,
    /// The next client request id.
    next_request: u64,
    holds: BTreeSet<Hold>,
    held: Vec<(Hold, Event<ToyConfig>)>,
    /// While the driver thread is stalled ([`Sim::stall_driver`]): the results of
    /// its jobs held back, in order.
    stalled: Option<Vec<Event<ToyConfig>>>,
    /// Disk writes in flight, with their deadlines (the node's clock).
    pending_writes: Vec<(DiskRecord<ToyConfig>, (u64, bool))>,
    /// Quorum disk writes in flight: operation, record, deadline (the node's clock).
    pending_qdisk_writes: Vec<(u64, QuorumDiskRecord, u64)>,
    /// The node's cluster monitor (corosync) is down until then (simulated time).
    pub monitor_down_until_ms: u64,
    /// The last monitor view sent to this start (members, quorate).
    monitor_sent: Option<(BTreeSet<NodeId>, bool)>,
    /// When the last monitor view sent reaches the node (views keep their order).
    monitor_last_ms: u64,
}

/// A client request the simulator made, and what came of it.
#[derive(Clone, Debug)]
struct Pending {
    inc: u64,
    tag: Option<u64>,
    /// A change of the node's private groups.
    private: bool,
}

/// The simulator.
pub struct Sim {
    cfg: SimConfig,
    /// Random source of the whole run.
    pub rng: StdRng,
    now_ms: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), SimEvent>,
    chan_last_ms: BTreeMap<(NodeId, NodeId), u64>,
    nodes: Vec<SimNode>,
    disk: Option<DiskRecord<ToyConfig>>,
    /// The quorum disk's record (none: blank); survives crashes.
    qdisk: Option<QuorumDiskRecord>,
    pending: BTreeMap<(NodeId, RequestId), Pending>,
    replies: BTreeMap<(NodeId, RequestId), Result<(), String>>,
    acked: BTreeSet<u64>,
    failed: BTreeSet<u64>,
    /// Private changes acknowledged OK, by node.
    private_acked: BTreeMap<NodeId, BTreeSet<u64>>,
    /// Private changes that failed, by node.
    private_failed: BTreeMap<NodeId, BTreeSet<u64>>,
    /// Every view installed, and the nodes that installed it.
    views: BTreeMap<u64, (View, BTreeSet<NodeId>)>,
    /// Transactions the cluster decided to abort (a master's or a takeover's abort,
    /// and members following it); a leaving node's own discard is not one.
    aborted: BTreeSet<TxnId>,
    next_tag: u64,
    trace: VecDeque<String>,
    logs: Vec<String>,
    violation: Option<String>,
    /// Directed links that drop every message (partitions).
    blocked: BTreeSet<(NodeId, NodeId)>,
    /// Cut links whose messages wait in the sender's buffers (a TCP connection that
    /// outlives the cut) instead of being lost, delivered in order at the heal.
    buffering: BTreeSet<(NodeId, NodeId)>,
    /// The messages waiting on buffering links.
    buffered: Vec<SimEvent>,
    /// Queue keys of events that wait for a frozen node to thaw.
    deferred: BTreeSet<(u64, u64)>,
    /// Every configuration that reached the disk, by sequence number.
    committed: BTreeMap<u64, ToyConfig>,
    /// Resync copies between their read and their write.
    copies: Vec<CopyInFlight>,
    /// Share (percent) of copies whose node is frozen, crashed or cut off as soon
    /// as the copy starts.
    copy_fault_percent: u32,
    /// (volume, plex) → regions whose content equals the ACTIVE plexes' (copied
    /// with no unfenced writer meanwhile, and no write missed the plex since).
    synced: BTreeMap<(String, String), BTreeSet<u64>>,
    /// Plexes that may differ after a node's data plane died serving them.
    diverged: Vec<Divergence>,
    /// The dirty region logs' sections on the disks, by (node, volume): the log id
    /// the section was initialised for and its dirty regions; survives crashes.
    drl: BTreeMap<(NodeId, String), (u64, BTreeSet<u64>)>,
    /// The data planes' writes are next moved on at this time.
    next_writes_ms: u64,
    /// The data planes mark their logs before a write (false: a broken data plane,
    /// for tests that show the invariant catches it).
    pub drl_marks: bool,
    /// The data planes write on their own, at random (false: only
    /// [`Sim::start_write`]).
    pub auto_writes: bool,
    events: u64,
    /// What the run covered so far.
    pub coverage: Coverage,
}

impl Sim {
    /// A simulator with every node down.
    pub fn new(cfg: SimConfig) -> Sim {
        assert!((1..=26).contains(&cfg.nodes), "1 to 26 nodes");
        let nodes = (1..=cfg.nodes)
            .map(|id| SimNode {
                id,
                inc: 0,
                core: None,
                kernel: Kernel::default(),
                armed: None,
                crash_after_sends: None,
                private_dgs: BTreeSet::new(),
                disk_access_broken: false,
                frozen_until_ms: 0,
                drift_ppm: 0,
                membership_record: None,
                private_disk: ToyConfig::default(),
                next_request: 0,
                holds: BTreeSet::new(),
                held: Vec::new(),
                stalled: None,
                pending_writes: Vec::new(),
                pending_qdisk_writes: Vec::new(),
                monitor_down_until_ms: 0,
                monitor_sent: None,
                monitor_last_ms: 0,
            })
            .collect();
        Sim {
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            now_ms: 0,
            seq: 0,
            queue: BTreeMap::new(),
            chan_last_ms: BTreeMap::new(),
            nodes,
            disk: None,
            qdisk: None,
            pending: BTreeMap::new(),
            replies: BTreeMap::new(),
            acked: BTreeSet::new(),
            failed: BTreeSet::new(),
            private_acked: BTreeMap::new(),
            private_failed: BTreeMap::new(),
            views: BTreeMap::new(),
            aborted: BTreeSet::new(),
            next_tag: 0,
            trace: VecDeque::new(),
            logs: Vec::new(),
            violation: None,
            blocked: BTreeSet::new(),
            buffering: BTreeSet::new(),
            buffered: Vec::new(),
            deferred: BTreeSet::new(),
            committed: BTreeMap::new(),
            copies: Vec::new(),
            copy_fault_percent: 0,
            synced: BTreeMap::new(),
            diverged: Vec::new(),
            drl: BTreeMap::new(),
            next_writes_ms: 0,
            drl_marks: true,
            auto_writes: true,
            events: 0,
            coverage: Coverage::default(),
        }
    }

    /// A cluster of `nodes` nodes all started at time 0 (tracing on), run until one
    /// master leads a view with all of them.
    pub fn cluster(nodes: u32, seed: u64) -> Sim {
        Sim::cluster_of(SimConfig {
            trace: true,
            ..SimConfig::new(nodes, seed)
        })
    }

    /// [`Sim::cluster`] with a quorum disk.
    pub fn cluster_with_quorum_disk(nodes: u32, seed: u64) -> Sim {
        Sim::cluster_of(SimConfig {
            trace: true,
            quorum_disk: true,
            ..SimConfig::new(nodes, seed)
        })
    }

    /// A cluster of `cfg.nodes` nodes all started at time 0, run until one master
    /// leads a view with all of them.
    pub fn cluster_of(cfg: SimConfig) -> Sim {
        let nodes = cfg.nodes;
        let mut sim = Sim::new(cfg);
        for id in 1..=nodes {
            sim.start(id);
        }
        let formed = sim.run_until(5_000, |s| s.all_members(&(1..=nodes).collect::<Vec<_>>()));
        assert!(
            formed,
            "cluster of {nodes} did not form:\n{}",
            sim.trace_text()
        );
        sim
    }

    /// The name of node `id` (a, b, c...).
    pub fn name(id: NodeId) -> String {
        char::from(b'a' + (id as u8 - 1)).to_string()
    }

    /// The node list every core gets.
    pub fn node_infos(&self) -> Vec<NodeInfo> {
        (1..=self.cfg.nodes)
            .map(|id| NodeInfo {
                id,
                name: Sim::name(id),
                votes: 1,
            })
            .collect()
    }

    /// Simulated time.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Events processed so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// The settings.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    fn push(&mut self, at_ms: u64, ev: SimEvent) {
        self.seq += 1;
        self.queue.insert((at_ms, self.seq), ev);
    }

    fn node_mut(&mut self, id: NodeId) -> &mut SimNode {
        &mut self.nodes[(id - 1) as usize]
    }

    /// A node's simulator record.
    pub fn node(&self, id: NodeId) -> &SimNode {
        &self.nodes[(id - 1) as usize]
    }

    /// A node's core, if it is up.
    pub fn core(&self, id: NodeId) -> Option<&Node<ToyConfig>> {
        self.node(id).core.as_ref()
    }

    /// Whether node `id` is up.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.node(id).core.is_some()
    }

    /// Ids of all nodes.
    pub fn ids(&self) -> Vec<NodeId> {
        (1..=self.cfg.nodes).collect()
    }

    /// The shared disk's record.
    pub fn disk(&self) -> Option<&DiskRecord<ToyConfig>> {
        self.disk.as_ref()
    }

    /// The quorum disk's record (none: blank).
    pub fn quorum_disk(&self) -> Option<QuorumDiskRecord> {
        self.qdisk
    }

    /// Quorum disk writes node `id` has issued that have not landed yet.
    pub fn qdisk_writes_in_flight(&self, id: NodeId) -> usize {
        self.node(id).pending_qdisk_writes.len()
    }

    /// Whether node `id` counts the quorum disk's vote now (its clock).
    pub fn counts_disk_vote(&self, id: NodeId) -> bool {
        let n = self.node(id);
        let clock = Sim::clock(n.drift_ppm, self.now_ms);
        n.core
            .as_ref()
            .is_some_and(|c| c.disk_vote_until(clock).is_some())
    }

    /// Whether node `id` is a master holding its lease now (its clock).
    pub fn leased_master(&self, id: NodeId) -> bool {
        let n = self.node(id);
        let clock = Sim::clock(n.drift_ppm, self.now_ms);
        n.core
            .as_ref()
            .is_some_and(|c| c.role() == Role::Master && c.lease_remaining_ms(clock) > 0)
    }

    /// Every `Action::Log` line so far, prefixed with the node's name.
    pub fn logs(&self) -> &[String] {
        &self.logs
    }

    /// The node that is master, if exactly one live node is.
    pub fn master(&self) -> Option<NodeId> {
        let masters: Vec<NodeId> = self
            .ids()
            .into_iter()
            .filter(|&id| self.core(id).is_some_and(|c| c.role() == Role::Master))
            .collect();
        if masters.len() > 1 {
            // Masters of views without a majority (formed alone, waiting for joins)
            // can commit nothing: the one with a majority view is the master.
            let quorate: Vec<NodeId> = masters
                .iter()
                .copied()
                .filter(|&id| self.core(id).is_some_and(|c| c.view_quorate()))
                .collect();
            return (quorate.len() == 1).then(|| quorate[0]);
        }
        (masters.len() == 1).then(|| masters[0])
    }

    /// Whether all of `ids` are up and members of one view led by one master, idle.
    pub fn all_members(&self, ids: &[NodeId]) -> bool {
        let Some(m) = self.master() else { return false };
        let Some(view) = self.core(m).and_then(|c| c.view()).cloned() else {
            return false;
        };
        ids.iter().all(|&id| {
            view.contains(id)
                && self
                    .core(id)
                    .is_some_and(|c| c.view() == Some(&view) && c.is_idle())
        })
    }

    /// Whether the current start of every node in `ids` is open on the disk (the
    /// master committed its node-crash bookkeeping after their joins) and every
    /// earlier start it recorded open was closed or recovered.
    pub fn opened(&self, ids: &[NodeId]) -> bool {
        let Some(disk) = self.disk.as_ref() else {
            return false;
        };
        ids.iter()
            .all(|&id| self.is_up(id) && disk.config.open.get(&id) == Some(&self.node(id).inc))
    }

    /// Starts (or restarts) node `id` now.
    pub fn start(&mut self, id: NodeId) {
        assert!(!self.is_up(id), "node {id} is already up");
        let cfg = NodeConfig {
            heartbeat_interval_ms: self.cfg.heartbeat_interval_ms,
            heartbeat_timeout_ms: self.cfg.heartbeat_timeout_ms,
            form_wait_ms: self.cfg.form_wait_ms,
            join_retry_ms: self.cfg.join_retry_ms,
            lease_ms: self.cfg.lease_ms,
            lease_margin_ms: self.cfg.lease_margin_ms,
            reply_timeout_ms: SIM_REPLY_TIMEOUT_MS,
            quorum_disk: self.cfg.quorum_disk,
            external_monitor: self.cfg.monitor,
            ..NodeConfig::new(id, self.node_infos())
        };
        let now = self.now_ms;
        let n = self.node_mut(id);
        n.inc += 1;
        let cfg = NodeConfig {
            incarnation: n.inc,
            ..cfg
        };
        let clock = Sim::clock(n.drift_ppm, now);
        let cfg = NodeConfig {
            member_ago_at_start_ms: n.membership_record.map(|until| clock.saturating_sub(until)),
            ..cfg
        };
        let mut core = Node::new(cfg, clock);
        // The daemon reads its private groups from their disks at start and loads
        // them into the data plane at once.
        core.load_private(n.private_disk.clone());
        n.kernel.private = n.private_disk.clone();
        n.core = Some(core);
        n.held.clear();
        if let Some(stalled) = n.stalled.as_mut() {
            stalled.clear();
        }
        n.monitor_sent = None;
        let inc = n.inc;
        self.note(format!("start {}", Sim::name(id)));
        self.push(now, SimEvent::Tick { node: id, inc });
    }

    /// A node's clock at simulated time `now_ms`, running `drift_ppm` fast or slow.
    fn clock(drift_ppm: i64, now_ms: u64) -> u64 {
        let rate = 1_000_000 + drift_ppm;
        (i128::from(now_ms) * i128::from(rate) / 1_000_000) as u64
    }

    /// Sets node `id`'s clock rate error (bounded by [`MAX_DRIFT_PPM`]).
    pub fn set_drift(&mut self, id: NodeId, drift_ppm: i64) {
        assert!(drift_ppm.abs() <= MAX_DRIFT_PPM);
        self.node_mut(id).drift_ppm = drift_ppm;
    }

    /// Blocks messages from `from` to `to` (one direction).
    pub fn block(&mut self, from: NodeId, to: NodeId) {
        self.note(format!("link {} → {} cut", Sim::name(from), Sim::name(to)));
        self.blocked.insert((from, to));
    }

    /// Cuts every link between the nodes of `side` and the others, both ways.
    pub fn partition(&mut self, side: &[NodeId]) {
        for a in self.ids() {
            for b in self.ids() {
                if side.contains(&a) != side.contains(&b) {
                    self.block(a, b);
                }
            }
        }
    }

    /// Cuts every link between the nodes of `side` and the others, both ways, with
    /// the messages sent meanwhile kept in buffers and delivered at the heal, in
    /// order (a partition that TCP connections outlive).
    pub fn partition_buffered(&mut self, side: &[NodeId]) {
        self.partition(side);
        self.buffering.extend(self.blocked.iter().copied());
    }

    /// Restores every link; messages buffered on them arrive now, in order.
    pub fn heal(&mut self) {
        if !self.blocked.is_empty() {
            self.note("network healed".into());
        }
        self.blocked.clear();
        self.buffering.clear();
        let now = self.now_ms;
        for ev in std::mem::take(&mut self.buffered) {
            self.push(now, ev);
        }
    }

    /// Thaws node `id` now (SIGCONT): the events that waited for it come first, in
    /// the order they came, before anything that arrives from now on.
    pub fn thaw(&mut self, id: NodeId) {
        let now = self.now_ms;
        self.node_mut(id).frozen_until_ms = 0;
        let waiting: Vec<(u64, u64)> = self
            .deferred
            .iter()
            .copied()
            .filter(|k| self.queue.get(k).and_then(SimEvent::target) == Some(id))
            .collect();
        for (at, seq) in waiting {
            self.deferred.remove(&(at, seq));
            if let Some(ev) = self.queue.remove(&(at, seq)) {
                // Keys order by time, then by sequence: the old sequence numbers
                // keep these ahead of every event pushed for `now` later.
                self.queue.insert((now, seq), ev);
            }
        }
    }

    /// Whether the start of its master that made `view` is over (that node has
    /// started again since): the view's master can no longer act.
    fn of_dead_start(&self, view: &View) -> bool {
        view.incarnation(view.master) != Some(self.node(view.master).inc)
    }

    /// Freezes node `id` (SIGSTOP) for `ms`: its events wait until it thaws.
    pub fn freeze(&mut self, id: NodeId, ms: u64) {
        self.note(format!("freeze {} for {ms} ms", Sim::name(id)));
        let until = self.now_ms + ms;
        let n = self.node_mut(id);
        n.frozen_until_ms = n.frozen_until_ms.max(until);
    }

    /// What node `id`'s cluster monitor says now: its members (up nodes whose
    /// monitor runs, linked both ways with it) and whether they are a majority;
    /// none members and not quorate while its own monitor is down.
    pub fn monitor_truth(&self, id: NodeId) -> (BTreeSet<NodeId>, bool) {
        let now = self.now_ms;
        if self.node(id).monitor_down_until_ms > now {
            return (BTreeSet::new(), false);
        }
        let members: BTreeSet<NodeId> = self
            .ids()
            .into_iter()
            .filter(|&j| {
                j == id
                    || (self.is_up(j)
                        && self.node(j).monitor_down_until_ms <= now
                        && !self.blocked.contains(&(id, j))
                        && !self.blocked.contains(&(j, id)))
            })
            .collect();
        let quorate = members.len() as u64 > u64::from(self.cfg.nodes) / 2;
        (members, quorate)
    }

    /// Monitor seeds, at each tick of node `id`: a view that differs from the last
    /// one sent to this start is sent, 1..=[`MAX_MONITOR_DELAY_MS`] later, in order.
    fn monitor_poll(&mut self, id: NodeId) {
        if !self.cfg.monitor {
            return;
        }
        let truth = self.monitor_truth(id);
        if self.node(id).monitor_sent.as_ref() == Some(&truth) {
            return;
        }
        let (members, quorate) = truth;
        let detail = if self.node(id).monitor_down_until_ms > self.now_ms {
            "corosync: not running".to_string()
        } else {
            format!("corosync: {} of {} nodes", members.len(), self.cfg.nodes)
        };
        self.send_monitor_view(id, members, quorate, detail);
    }

    /// Sends node `id` a monitor view (true or not: a test may lie to it).
    pub fn send_monitor_view(
        &mut self,
        id: NodeId,
        members: BTreeSet<NodeId>,
        quorate: bool,
        detail: String,
    ) {
        let delay = self.rng.gen_range(1..=MAX_MONITOR_DELAY_MS);
        let now = self.now_ms;
        let n = self.node_mut(id);
        let at = (now + delay).max(n.monitor_last_ms);
        n.monitor_last_ms = at;
        n.monitor_sent = Some((members.clone(), quorate));
        let inc = n.inc;
        self.coverage.monitor_views += 1;
        if !quorate {
            self.coverage.monitor_not_quorate += 1;
        }
        self.note(format!(
            "monitor → {} at {at} ms: {:?} {}",
            Sim::name(id),
            members.iter().map(|&m| Sim::name(m)).collect::<Vec<_>>(),
            if quorate { "quorate" } else { "not quorate" }
        ));
        self.push(
            at,
            SimEvent::Driver {
                node: id,
                inc,
                event: Event::MonitorView {
                    members,
                    quorate,
                    detail,
                },
            },
        );
    }

    /// Stops node `id`'s cluster monitor (kill of its corosync) for `ms`.
    pub fn kill_monitor(&mut self, id: NodeId, ms: u64) {
        self.note(format!("corosync of {} down for {ms} ms", Sim::name(id)));
        self.node_mut(id).monitor_down_until_ms = self.now_ms + ms;
    }

    /// Whether node `id`'s data plane serves shared volumes now (its lease holds).
    pub fn serving(&self, id: NodeId) -> bool {
        self.now_ms < self.node(id).kernel.lease_until_ms
    }

    /// Starts node `id` at a later time.
    pub fn start_at(&mut self, id: NodeId, at_ms: u64) {
        self.push(at_ms, SimEvent::Start { node: id });
    }

    /// Crashes node `id` now (as kill -9 of its coordinator and data plane).
    pub fn crash(&mut self, id: NodeId) {
        self.mark_divergence(id);
        self.crash_coordinator(id);
        self.node_mut(id).kernel = Kernel::default();
    }

    /// Node `id`'s data plane dies: if it served, it may have written a mirrored
    /// volume's block to some of its plexes (readable or SYNCING) and not the
    /// others: anywhere (no log), or in the regions of its writes in flight (a log).
    /// The chunks of those regions copied to a SYNCING plex no longer count.
    fn mark_divergence(&mut self, id: NodeId) {
        let n = self.node(id);
        if self.now_ms >= n.kernel.lease_until_ms || n.kernel.left {
            return;
        }
        let start = (id, n.kernel.lease_inc);
        let mut marks = Vec::new();
        for (volume, g) in &n.kernel.active.groups {
            let plexes: BTreeSet<String> = g
                .plexes
                .iter()
                .filter(|(p, &a)| a || g.syncing.contains(*p))
                .map(|(p, _)| p.clone())
                .collect();
            if plexes.len() < 2 {
                continue;
            }
            let regions = match g.log {
                None => None,
                Some(_) => {
                    let w = n.kernel.writes.get(volume).cloned().unwrap_or_default();
                    if w.is_empty() {
                        continue;
                    }
                    Some(w)
                }
            };
            marks.push((volume.clone(), plexes, regions, g.syncing.clone()));
        }
        for (volume, plexes, regions, syncing) in marks {
            self.note(format!(
                "{} crashes serving {volume}: plexes {plexes:?} may differ (regions {regions:?})",
                Sim::name(id)
            ));
            self.coverage.divergences += 1;
            if regions.is_some() {
                self.coverage.log_divergences += 1;
            }
            for p in syncing {
                if let Some(set) = self.synced.get_mut(&(volume.clone(), p)) {
                    match &regions {
                        None => set.clear(),
                        Some(r) => set.retain(|c| !r.contains(c)),
                    }
                }
            }
            self.diverged.push(Divergence {
                start,
                volume,
                plexes,
                regions,
            });
        }
    }

    /// Node `id` died with resync copies between their read and their write: each
    /// lands or not (half the time, and only before its deadline).
    fn settle_copies_of_dead(&mut self, id: NodeId) {
        let copies: Vec<CopyInFlight> = self
            .copies
            .iter()
            .filter(|c| c.node == id)
            .cloned()
            .collect();
        self.copies.retain(|c| c.node != id);
        for c in copies {
            if self.rng.gen_bool(0.5) && self.write_in_time(id, c.deadline) {
                self.land_copy(c);
            }
        }
    }

    /// Kills only node `id`'s data plane (as kill -9 of plexd-target): a copy it was
    /// making lands or not, and its coordinator reconnects at once to a new one and
    /// loads it (as the daemon does): the shared groups the core's kernel actions
    /// left in the data plane ([`Node::data_plane_shared`]) and the private groups,
    /// its prepared transaction staged again, no lease until the core renews it.
    pub fn crash_data_plane(&mut self, id: NodeId) {
        if !self.is_up(id) {
            return;
        }
        self.note(format!("crash {}'s data plane", Sim::name(id)));
        self.mark_divergence(id);
        self.settle_copies_of_dead(id);
        // The daemon reloads what the core's kernel actions left in the data plane.
        let active = self
            .core(id)
            .map(|c| c.data_plane_shared().clone())
            .unwrap_or_default();
        let n = self.node_mut(id);
        let staged = n.kernel.staged.take();
        let staged_private = n.kernel.staged_private.take();
        let staged_inc = n.kernel.staged_inc;
        // The driver loads its private groups too (the daemon's Reconnect job).
        let private = n.private_disk.clone();
        n.kernel = Kernel {
            active,
            staged,
            staged_private,
            staged_inc,
            private,
            ..Kernel::default()
        };
        self.feed(id, Event::DataPlaneLost);
    }

    /// Kills only node `id`'s coordinator: its data plane goes on with its layout,
    /// its staged layout and its lease, as plexd-target does when plexd dies.
    pub fn crash_coordinator(&mut self, id: NodeId) {
        if !self.is_up(id) {
            return;
        }
        self.note(format!("crash {}", Sim::name(id)));
        let now = self.now_ms;
        let writes = std::mem::take(&mut self.node_mut(id).pending_writes);
        for (w, deadline_ms) in writes {
            if self.rng.gen_bool(0.5) && self.write_in_time(id, deadline_ms) {
                self.land_write(id, w);
            }
        }
        self.settle_copies_of_dead(id);
        let qwrites = std::mem::take(&mut self.node_mut(id).pending_qdisk_writes);
        for (_, record, deadline_ms) in qwrites {
            if self.rng.gen_bool(0.5) && self.write_in_time(id, (deadline_ms, false)) {
                self.land_qdisk_write(id, record);
            }
        }
        // A view only this node installed (a master that died before sending it)
        // never existed for the cluster.
        self.views
            .retain(|_, (_, installers)| installers.iter().any(|&n| n != id));
        let n = self.node_mut(id);
        n.core = None;
        let from_inc = n.inc;
        n.inc += 1;
        n.frozen_until_ms = 0;
        n.armed = None;
        n.crash_after_sends = None;
        n.held.clear();
        if let Some(stalled) = n.stalled.as_mut() {
            stalled.clear();
        }
        let dead: Vec<(NodeId, RequestId)> = self
            .pending
            .keys()
            .filter(|(n, _)| *n == id)
            .copied()
            .collect();
        for k in dead {
            self.pending.remove(&k);
        }
        for p in self.ids() {
            if p != id
                && self.is_up(p)
                && self.rng.gen_range(0..100) < self.cfg.connection_lost_percent
            {
                let inc = self.node(p).inc;
                let at = self.channel_time(id, p, now);
                self.push(
                    at,
                    SimEvent::ConnLost {
                        from: id,
                        from_inc,
                        to: p,
                        inc,
                    },
                );
            }
        }
    }

    /// Crashes node `id` when its core reaches failpoint `name`.
    pub fn arm_failpoint(&mut self, id: NodeId, name: &'static str) {
        self.node_mut(id).armed = Some(name);
    }

    /// Crashes node `id` after it has sent `sends` more messages.
    pub fn arm_crash_after_sends(&mut self, id: NodeId, sends: u32) {
        self.node_mut(id).crash_after_sends = Some(sends);
    }

    /// Gives node `id` a private disk group called `name`.
    pub fn add_private_dg(&mut self, id: NodeId, name: &str) {
        self.node_mut(id).private_dgs.insert(name.to_string());
    }

    /// Makes node `id` unable (or able again) to open the shared disks.
    pub fn set_disk_access_broken(&mut self, id: NodeId, broken: bool) {
        self.node_mut(id).disk_access_broken = broken;
    }

    /// Holds back the driver results of `kind` on node `id` until [`Sim::release`].
    pub fn hold(&mut self, id: NodeId, kind: Hold) {
        self.node_mut(id).holds.insert(kind);
    }

    /// Delivers every held result of node `id` and stops holding.
    pub fn release(&mut self, id: NodeId) {
        let kinds: Vec<Hold> = self.node(id).holds.iter().copied().collect();
        for kind in kinds {
            self.release_kind(id, kind);
        }
    }

    /// Delivers the held results of `kind` of node `id` and stops holding them.
    pub fn release_kind(&mut self, id: NodeId, kind: Hold) {
        let n = self.node_mut(id);
        n.holds.remove(&kind);
        let (released, kept) = std::mem::take(&mut n.held)
            .into_iter()
            .partition(|(k, _)| *k == kind);
        n.held = kept;
        self.deliver_now(id, released.into_iter().map(|(_, event)| event));
    }

    /// Delivers driver results of node `id`'s current start at the next
    /// millisecond, in the order given.
    fn deliver_now(&mut self, id: NodeId, events: impl IntoIterator<Item = Event<ToyConfig>>) {
        let inc = self.node(id).inc;
        let now = self.now_ms;
        for event in events {
            self.push(
                now + 1,
                SimEvent::Driver {
                    node: id,
                    inc,
                    event,
                },
            );
        }
    }

    /// Stalls node `id`'s driver thread (a hung disk or data plane under the job it
    /// runs) until [`Sim::unstall_driver`]: the results of its jobs are held back
    /// and then delivered in the order the jobs were given, as the daemon's one
    /// driver thread completes them. Unlike [`Sim::hold`] of one kind, no later job
    /// completes before an earlier one.
    pub fn stall_driver(&mut self, id: NodeId) {
        self.node_mut(id).stalled.get_or_insert_with(Vec::new);
    }

    /// Ends a stall of node `id`'s driver thread: what it held comes, in order.
    pub fn unstall_driver(&mut self, id: NodeId) {
        let stalled = self.node_mut(id).stalled.take().unwrap_or_default();
        self.deliver_now(id, stalled);
    }

    /// How many driver results node `id` holds back.
    pub fn held(&self, id: NodeId) -> usize {
        self.node(id).held.len()
    }

    /// How many driver results of `kind` node `id` holds back.
    pub fn held_of(&self, id: NodeId, kind: Hold) -> usize {
        self.node(id)
            .held
            .iter()
            .filter(|(k, _)| *k == kind)
            .count()
    }

    /// A new unique change tag.
    pub fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    /// A client submits `change` to node `id`; None if the node is down.
    pub fn submit(&mut self, id: NodeId, change: ToyChange) -> Option<RequestId> {
        let tag = match &change {
            ToyChange::Create { tag, .. }
            | ToyChange::CreatePrivate { tag, .. }
            | ToyChange::Destroy { tag, .. }
            | ToyChange::MoveLog { tag, .. }
            | ToyChange::FailDisk { tag, .. }
            | ToyChange::ReattachDisk { tag, .. }
            | ToyChange::Attach { tag, .. } => Some(*tag),
            ToyChange::Detach { .. }
            | ToyChange::SetActive { .. }
            | ToyChange::Open { .. }
            | ToyChange::Close { .. }
            | ToyChange::Recover { .. } => None,
        };
        // The core routes it by the same rule when it is fed, at once.
        let private = self
            .core(id)
            .is_some_and(|c| ToyConfig::is_private(c.private(), &change));
        if private
            && (self.core(id).is_some_and(|c| c.txn_in_progress())
                || self.node(id).kernel.staged.is_some())
        {
            self.coverage.private_waits += 1;
        }
        self.note(format!(
            "client → {}: {change:?}{}",
            Sim::name(id),
            if private { " (private)" } else { "" }
        ));
        self.request(id, tag, private, |request| Event::ClientRequest {
            request,
            change,
        })
    }

    /// A client asks node `id` to create private disk group `name` with `plexes`
    /// plexes.
    pub fn create_private(&mut self, id: NodeId, name: &str, plexes: u8) -> Option<RequestId> {
        let tag = self.tag();
        let name = name.to_string();
        self.submit(id, ToyChange::CreatePrivate { tag, name, plexes })
    }

    /// Node `id`'s private groups as its disks hold them.
    pub fn private_disk(&self, id: NodeId) -> &ToyConfig {
        &self.node(id).private_disk
    }

    /// A client asks node `id` to create disk group `name` with `plexes` plexes.
    pub fn create(&mut self, id: NodeId, name: &str, plexes: u8) -> Option<RequestId> {
        let tag = self.tag();
        let name = name.to_string();
        self.submit(
            id,
            ToyChange::Create {
                tag,
                name,
                plexes,
                log: false,
            },
        )
    }

    /// [`Sim::create`] of a volume with a dirty region log.
    pub fn create_with_log(&mut self, id: NodeId, name: &str, plexes: u8) -> Option<RequestId> {
        let tag = self.tag();
        let name = name.to_string();
        self.submit(
            id,
            ToyChange::Create {
                tag,
                name,
                plexes,
                log: true,
            },
        )
    }

    /// Node `id`'s section of `volume`'s dirty region log on the disks: its dirty
    /// regions (none when never initialised).
    pub fn dirty_log(&self, id: NodeId, volume: &str) -> BTreeSet<u64> {
        self.drl
            .get(&(id, volume.to_string()))
            .map(|(_, r)| r.clone())
            .unwrap_or_default()
    }

    /// Node `id`'s data plane's writes in flight to `volume` (regions).
    pub fn writes_in_flight(&self, id: NodeId, volume: &str) -> BTreeSet<u64> {
        self.node(id)
            .kernel
            .writes
            .get(volume)
            .cloned()
            .unwrap_or_default()
    }

    /// Node `id`'s data plane starts a write to `region` of `volume` now (marking
    /// its log first, unless [`Sim::drl_marks`] is off), if it serves the volume.
    pub fn start_write(&mut self, id: NodeId, volume: &str, region: u64) {
        if !self.writers(volume).contains(&id) {
            return;
        }
        let Some(log) = self
            .node(id)
            .kernel
            .active
            .groups
            .get(volume)
            .and_then(|g| g.log)
        else {
            return;
        };
        if self.drl_marks {
            let e = self
                .drl
                .entry((id, volume.to_string()))
                .or_insert((log, BTreeSet::new()));
            if e.0 != log {
                // A new log (id): the section is initialised first.
                *e = (log, BTreeSet::new());
            }
            e.1.insert(region);
        }
        self.note(format!(
            "{} writes region {region} of {volume}",
            Sim::name(id)
        ));
        self.node_mut(id)
            .kernel
            .writes
            .entry(volume.to_string())
            .or_default()
            .insert(region);
    }

    /// Every data plane's writes move on (volumes with a log only: the others'
    /// divergence is the whole volume anyway): writes start (their region marked
    /// first), complete, and idle regions are cleaned.
    fn move_writes(&mut self) {
        if !self.auto_writes {
            return;
        }
        for id in self.ids() {
            let serving = {
                let n = self.node(id);
                self.now_ms < n.kernel.lease_until_ms && !n.kernel.left
            };
            if !serving {
                // No write is issued without a lease; those issued have ended.
                self.node_mut(id).kernel.writes.clear();
                continue;
            }
            let volumes: Vec<String> = self
                .node(id)
                .kernel
                .active
                .groups
                .iter()
                .filter(|(_, g)| g.log.is_some() && g.plexes.len() >= 2)
                .map(|(v, _)| v.clone())
                .collect();
            let n = self.node_mut(id);
            n.kernel.writes.retain(|v, _| volumes.contains(v));
            for v in volumes {
                let regions = TOY_VOLUME_BYTES / TOY_REGION_BYTES;
                if self.rng.gen_bool(0.2) {
                    let r = self.rng.gen_range(0..regions);
                    self.start_write(id, &v, r);
                }
                if self.rng.gen_bool(0.3) {
                    let r = self.rng.gen_range(0..regions);
                    if let Some(w) = self.node_mut(id).kernel.writes.get_mut(&v) {
                        w.remove(&r);
                    }
                }
                if self.rng.gen_bool(0.1) {
                    let r = self.rng.gen_range(0..regions);
                    let busy = self.writes_in_flight(id, &v).contains(&r);
                    if let Some(e) = self.drl.get_mut(&(id, v.clone())) {
                        if !busy {
                            e.1.remove(&r);
                        }
                    }
                }
            }
        }
    }

    /// Node `id`'s data plane reports a write error on `plex` of `volume`.
    pub fn plex_io_error(&mut self, id: NodeId, volume: &str, plex: &str) -> Option<RequestId> {
        self.note(format!(
            "plex I/O error on {}: {volume}/{plex}",
            Sim::name(id)
        ));
        let (volume, plex) = (volume.to_string(), plex.to_string());
        self.request(id, None, false, |request| Event::PlexIoError {
            request,
            volume,
            plex,
            ranges: Vec::new(),
        })
    }

    fn request(
        &mut self,
        id: NodeId,
        tag: Option<u64>,
        private: bool,
        make: impl FnOnce(RequestId) -> Event<ToyConfig>,
    ) -> Option<RequestId> {
        if !self.is_up(id) {
            return None;
        }
        let n = self.node_mut(id);
        n.next_request += 1;
        let request = RequestId(n.next_request);
        let inc = n.inc;
        self.pending
            .insert((id, request), Pending { inc, tag, private });
        self.feed(id, make(request));
        Some(request)
    }

    /// The reply node `id` gave to `request`, if any yet.
    pub fn reply(&self, id: NodeId, request: RequestId) -> Option<&Result<(), String>> {
        self.replies.get(&(id, request))
    }

    /// Requests still unanswered on live nodes.
    pub fn unanswered(&self) -> Vec<(NodeId, RequestId)> {
        self.pending.keys().copied().collect()
    }

    /// Tells the node's core to shut down cleanly.
    pub fn shutdown(&mut self, id: NodeId) {
        self.feed(id, Event::Shutdown);
    }

    /// Runs for `ms` of simulated time.
    pub fn run_for(&mut self, ms: u64) {
        let end = self.now_ms + ms;
        self.run_until(ms, |s| s.now_ms >= end);
        self.now_ms = self.now_ms.max(end);
    }

    /// Runs until `done` holds (checked after every event) or `max_ms` pass; true if
    /// `done` held. Stops early at an invariant violation (see [`Sim::check`]).
    pub fn run_until(&mut self, max_ms: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now_ms + max_ms;
        for _ in 0..MAX_EVENTS_PER_RUN {
            if done(self) {
                return true;
            }
            if self.violation.is_some() {
                return false;
            }
            let Some((&(at, _), _)) = self.queue.first_key_value() else {
                return false;
            };
            if at > end {
                self.now_ms = end;
                return done(self);
            }
            self.step();
        }
        false
    }

    /// Processes the next event, then checks the invariants.
    pub fn step(&mut self) {
        let Some(((at, seq), ev)) = self.queue.pop_first() else {
            return;
        };
        self.deferred.remove(&(at, seq));
        self.now_ms = self.now_ms.max(at);
        self.events += 1;
        if let Some(t) = ev.target() {
            let until = self.node(t).frozen_until_ms;
            if until > self.now_ms {
                // The event keeps its sequence number: events that wait for the
                // same thaw keep the order they came in, even those deferred twice
                // (a node frozen again before it thawed).
                self.queue.insert((until, seq), ev);
                self.deferred.insert((until, seq));
                return;
            }
        }
        if self.now_ms >= self.next_writes_ms {
            self.next_writes_ms = self.now_ms + self.cfg.tick_ms;
            self.move_writes();
        }
        if let SimEvent::Deliver { from, to, .. } = &ev {
            if self.buffering.contains(&(*from, *to)) {
                self.buffered.push(ev);
                return;
            }
            if self.blocked.contains(&(*from, *to)) {
                return;
            }
        }
        match ev {
            SimEvent::Start { node } => {
                if !self.is_up(node) {
                    self.start(node);
                }
            }
            SimEvent::Tick { node, inc } => {
                if self.node(node).inc == inc && self.is_up(node) {
                    let next = self.now_ms + self.cfg.tick_ms;
                    self.push(next, SimEvent::Tick { node, inc });
                    self.monitor_poll(node);
                    self.feed(node, Event::Tick);
                }
            }
            SimEvent::Deliver {
                from,
                to,
                inc,
                bytes,
            } => {
                if self.node(to).inc == inc && self.is_up(to) {
                    match Message::decode(&bytes) {
                        Ok(msg) => {
                            if self.cfg.trace && !matches!(msg, Message::Heartbeat { .. }) {
                                self.note(format!(
                                    "{} → {}: {}",
                                    Sim::name(from),
                                    Sim::name(to),
                                    msg.brief()
                                ));
                            }
                            self.feed(to, Event::Message { from, msg });
                        }
                        Err(e) => self.violate(format!("a message did not decode: {e}")),
                    }
                }
            }
            SimEvent::ConnLost {
                from,
                from_inc,
                to,
                inc,
            } => {
                if self.node(to).inc == inc && self.is_up(to) {
                    self.note(format!(
                        "{} sees connection to {} lost",
                        Sim::name(to),
                        Sim::name(from)
                    ));
                    let _ = from_inc;
                    self.feed(to, Event::ConnectionLost { peer: from });
                }
            }
            SimEvent::Driver { node, inc, event } => {
                if self.node(node).inc == inc && self.is_up(node) {
                    let mut event = event;
                    if let Event::DiskWritten { txn, .. } = &event {
                        let txn = *txn;
                        let n = self.node_mut(node);
                        if let Some(i) = n.pending_writes.iter().position(|w| w.0.txn == txn) {
                            let (w, deadline_ms) = n.pending_writes.remove(i);
                            if self.write_in_time(node, deadline_ms) {
                                self.land_write(node, w);
                            } else {
                                self.note(format!(
                                    "{} write of txn {txn} past its deadline: refused",
                                    Sim::name(node)
                                ));
                                event = Event::DiskWritten {
                                    txn,
                                    result: Err(WRITE_DEADLINE.to_string()),
                                };
                            }
                        }
                    }
                    if let Event::QuorumDiskWritten { op, .. } = &event {
                        let op = *op;
                        let n = self.node_mut(node);
                        if let Some(i) = n.pending_qdisk_writes.iter().position(|w| w.0 == op) {
                            let (_, record, deadline_ms) = n.pending_qdisk_writes.remove(i);
                            if self.write_in_time(node, (deadline_ms, false)) {
                                self.land_qdisk_write(node, record);
                            } else {
                                self.note(format!(
                                    "{} quorum disk write {record:?} past its deadline: refused",
                                    Sim::name(node)
                                ));
                                event = Event::QuorumDiskWritten {
                                    op,
                                    result: Err(WRITE_DEADLINE.to_string()),
                                };
                            }
                        }
                    }
                    if let Event::ChunkCopied { token, .. } = &event {
                        let token = *token;
                        if let Some(i) = self
                            .copies
                            .iter()
                            .position(|c| c.node == node && c.token == token)
                        {
                            let c = self.copies.remove(i);
                            if self.write_in_time(node, c.deadline) {
                                self.land_copy(c);
                            } else {
                                self.coverage.copies_refused += 1;
                                self.note(format!(
                                    "{} copy {token} past its deadline: refused",
                                    Sim::name(node)
                                ));
                                event = Event::ChunkCopied {
                                    token,
                                    result: Err(WRITE_DEADLINE.to_string()),
                                };
                            }
                        }
                    }
                    let event = match event {
                        Event::DisksRead { .. } => Event::DisksRead {
                            result: Ok(self.disk.clone()),
                        },
                        Event::QuorumDiskRead { op, .. } => Event::QuorumDiskRead {
                            op,
                            result: Ok(self.qdisk),
                        },
                        e => e,
                    };
                    self.feed(node, event);
                }
            }
        }
        self.track_resync();
        if self.violation.is_none() {
            if let Err(e) = self.check() {
                self.violation = Some(e);
            }
        }
    }

    /// The first invariant violation seen, if any.
    pub fn violation(&self) -> Option<&str> {
        self.violation.as_deref()
    }

    fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.note(format!("VIOLATION: {what}"));
            self.violation = Some(what);
        }
    }

    fn note(&mut self, line: String) {
        if self.cfg.trace {
            let limit = std::env::var("PLEXD_SIM_TRACE_LINES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(TRACE_LINES);
            while self.trace.len() >= limit.max(1) {
                self.trace.pop_front();
            }
            self.trace
                .push_back(format!("{:>7} ms  {line}", self.now_ms));
        }
    }

    /// The last trace lines (empty unless `trace` is set).
    pub fn trace_text(&self) -> String {
        self.trace.iter().map(|l| format!("  {l}\n")).collect()
    }

    fn channel_time(&mut self, from: NodeId, to: NodeId, now_ms: u64) -> u64 {
        let delay = self.rng.gen_range(1..=self.cfg.max_delay_ms);
        let last = self.chan_last_ms.entry((from, to)).or_insert(0);
        let at = (now_ms + delay).max(*last);
        *last = at;
        at
    }

    fn driver_later(&mut self, id: NodeId, hold: Option<Hold>, event: Event<ToyConfig>) {
        let n = self.node(id);
        if let Some(h) = hold.filter(|h| n.holds.contains(h)) {
            self.node_mut(id).held.push((h, event));
            return;
        }
        let inc = n.inc;
        if hold.is_none_or(Hold::on_driver_thread) {
            if let Some(stalled) = self.node_mut(id).stalled.as_mut() {
                stalled.push(event);
                return;
            }
        }
        let at = self.now_ms + self.rng.gen_range(1..=self.cfg.max_driver_delay_ms);
        self.push(
            at,
            SimEvent::Driver {
                node: id,
                inc,
                event,
            },
        );
    }

    /// Whether node `id`'s clock has not passed a write's deadline (or the node's
    /// lease, when it extends it): the daemon's driver checks it just before each
    /// disk's write.
    fn write_in_time(&self, id: NodeId, (deadline_ms, lease_extends): (u64, bool)) -> bool {
        let n = self.node(id);
        let clock = Sim::clock(n.drift_ppm, self.now_ms);
        clock <= deadline_ms
            || (lease_extends
                && n.core
                    .as_ref()
                    .and_then(|c| c.lease_until_ms())
                    .is_some_and(|until| clock < until))
    }

    fn land_qdisk_write(&mut self, id: NodeId, record: QuorumDiskRecord) {
        self.note(format!(
            "quorum disk ← {} (start {}, counter {})",
            Sim::name(id),
            record.incarnation,
            record.counter
        ));
        self.qdisk = Some(record);
    }

    fn land_write(&mut self, id: NodeId, w: DiskRecord<ToyConfig>) {
        self.note(format!(
            "disk ← {} seq {} txn {}",
            Sim::name(id),
            w.config.seq,
            w.txn
        ));
        if let Some(d) = &self.disk {
            if w.config.seq < d.config.seq {
                return self.violate(format!(
                    "node {} wrote seq {} over newer seq {}",
                    Sim::name(id),
                    w.config.seq,
                    d.config.seq
                ));
            }
            if w.config.seq == d.config.seq && w.config != d.config {
                return self.violate(format!(
                    "node {} wrote a different configuration with the same seq {}",
                    Sim::name(id),
                    w.config.seq
                ));
            }
        }
        if let Err(e) = self.check_resync_done(&w.config) {
            return self.violate(e);
        }
        if let Err(e) = self.check_divergence(&w.config) {
            return self.violate(e);
        }
        self.committed.insert(w.config.seq, w.config.clone());
        self.disk = Some(w);
    }

    fn feed(&mut self, id: NodeId, event: Event<ToyConfig>) {
        let now = self.now_ms;
        let drift = self.node(id).drift_ppm;
        let clock = Sim::clock(drift, now);
        let tick = matches!(event, Event::Tick);
        let Some(core) = self.node_mut(id).core.as_mut() else {
            return;
        };
        let actions = core.handle(clock, event);
        let revoked = core.data_plane_lease_ms(clock) == 0;
        self.perform(id, actions);
        // A revocation (not open, stopping) reaches the data plane at once, as the
        // daemon publishes it before the clean-stop close leaves.
        if tick || revoked {
            self.renew_lease(id);
        }
    }

    /// The driver renews its data plane's lease with what the core says is left
    /// (0 revokes it), counted on the node's own clock.
    fn renew_lease(&mut self, id: NodeId) {
        let now = self.now_ms;
        let n = self.node(id);
        let Some(core) = n.core.as_ref() else {
            return;
        };
        let left_ms = core.data_plane_lease_ms(Sim::clock(n.drift_ppm, now));
        let rate = 1_000_000 + n.drift_ppm;
        let left_real = (i128::from(left_ms) * 1_000_000 / i128::from(rate)) as u64;
        let until = now.saturating_add(left_real);
        let n = self.node_mut(id);
        n.kernel.lease_until_ms = until;
        if left_ms > 0 {
            n.kernel.lease_inc = n.inc;
        }
    }

    /// Carries out node `id`'s actions, as the daemon would.
    fn perform(&mut self, id: NodeId, actions: Vec<Action<ToyConfig>>) {
        let name = Sim::name(id);
        for action in actions {
            if !self.is_up(id) {
                return;
            }
            if matches!(
                action,
                Action::KernelPrepare { .. }
                    | Action::KernelCommit { .. }
                    | Action::KernelAbort { .. }
                    | Action::KernelLoad { .. }
                    | Action::LeaveCluster { .. }
            ) {
                // Pessimistic: any kernel phase resumes a fenced volume.
                self.node_mut(id).kernel.quiesced.clear();
            }
            match action {
                Action::Quiesce { dg, volume, token } => {
                    self.note(format!("{name} quiesces {volume} for fence {token}"));
                    self.node_mut(id).kernel.quiesced.insert(volume.clone());
                    self.driver_later(
                        id,
                        Some(Hold::Quiesce),
                        Event::Quiesced {
                            dg,
                            volume,
                            token,
                            result: Ok(()),
                        },
                    );
                }
                Action::Resume { volume, .. } => {
                    self.note(format!("{name} resumes {volume}"));
                    self.node_mut(id).kernel.quiesced.remove(&volume);
                }
                Action::CopyChunk {
                    token,
                    volume,
                    plex,
                    pieces,
                    deadline_ms,
                    ..
                } => {
                    if pieces.len() > 1 {
                        self.coverage.multi_piece_chunks += 1;
                    }
                    let regions: Vec<u64> = pieces
                        .iter()
                        .flat_map(|&(o, l)| {
                            o.div_ceil(TOY_REGION_BYTES)..(o + l) / TOY_REGION_BYTES
                        })
                        .collect();
                    let dirty = !self.writers(&volume).is_empty();
                    self.note(format!(
                        "{name} copies regions {regions:?} of {volume} to {plex} (fence {token}){}",
                        if dirty {
                            ": RACED by an unfenced writer"
                        } else {
                            ""
                        }
                    ));
                    self.copies.push(CopyInFlight {
                        node: id,
                        token,
                        volume,
                        plex,
                        regions,
                        dirty,
                        deadline: (deadline_ms, true),
                    });
                    self.driver_later(
                        id,
                        Some(Hold::Copy),
                        Event::ChunkCopied {
                            token,
                            result: Ok(()),
                        },
                    );
                    if self.copy_fault_percent > 0
                        && self.rng.gen_range(0..100) < self.copy_fault_percent
                    {
                        self.coverage.copy_faults += 1;
                        match self.rng.gen_range(0..4) {
                            0 => {
                                let ms = self.rng.gen_range(100..=3 * self.cfg.lease_ms);
                                self.freeze(id, ms);
                            }
                            1 => {
                                self.crash(id);
                                return;
                            }
                            2 => {
                                self.crash_coordinator(id);
                                return;
                            }
                            _ => self.partition(&[id]),
                        }
                    }
                }
                Action::ReadDirtyLogs {
                    op,
                    node,
                    incarnation,
                    sections,
                } => {
                    // The disks answer from the sections as they are now.
                    let results: Vec<DirtyLogRead> = sections
                        .iter()
                        .map(|sec| match self.drl.get(&(node, sec.volume.clone())) {
                            Some((id, regions)) if *id == sec.log_id => {
                                let mut ranges: Vec<(u64, u64)> = Vec::new();
                                for r in regions {
                                    let off = r * TOY_REGION_BYTES;
                                    match ranges.last_mut() {
                                        Some((o, l)) if *o + *l == off => *l += TOY_REGION_BYTES,
                                        _ => ranges.push((off, TOY_REGION_BYTES)),
                                    }
                                }
                                DirtyLogRead::Dirty(ranges)
                            }
                            _ => DirtyLogRead::Unused,
                        })
                        .collect();
                    self.coverage.log_sections_read += sections.len();
                    self.note(format!(
                        "{name} reads the dirty region logs of {} (start {incarnation}): {results:?}",
                        Sim::name(node)
                    ));
                    self.driver_later(
                        id,
                        Some(Hold::LogRead),
                        Event::DirtyLogsRead { op, results },
                    );
                }
                Action::ResyncProgress {
                    plex,
                    done_bytes,
                    finished,
                    ..
                } => {
                    self.note(format!(
                        "{name} resync of {}/{}: {done_bytes} bytes, {finished:?}",
                        plex.volume, plex.plex
                    ));
                    if finished == Some(crate::core::ResyncEnd::Done) {
                        self.coverage.resyncs_done += 1;
                    }
                }
                Action::RecordMembership { until_ms } => {
                    self.node_mut(id).membership_record = Some(until_ms);
                }
                Action::Send { to, msg } => {
                    if let Message::Abort { txn } = &msg {
                        // A master's decision, whether or not the message arrives.
                        self.aborted.insert(*txn);
                    }
                    if let Message::Heartbeat { echo: Some(_), .. } = &msg {
                        // A confirmation (of a master's lease, or of a member by
                        // its master): the sender's record must already say it may
                        // be a member now, or a restart would not wait it out.
                        let n = self.node(id);
                        let clock = Sim::clock(n.drift_ppm, self.now_ms);
                        if n.membership_record.is_none_or(|until| until < clock) {
                            self.violate(format!(
                                "{name} confirmed {} at {clock} ms on its clock, but its membership record ends at {:?}: a restart would not know",
                                Sim::name(to),
                                n.membership_record
                            ));
                        }
                    }
                    if let Some(k) = self.node(id).crash_after_sends {
                        if k == 0 {
                            self.coverage.failpoint_crashes += 1;
                            self.note(format!("{name} crashes between two sends"));
                            self.crash(id);
                            return;
                        }
                        self.node_mut(id).crash_after_sends = Some(k - 1);
                    }
                    let link = (id, to);
                    if self.is_up(to)
                        && (!self.blocked.contains(&link) || self.buffering.contains(&link))
                    {
                        let inc = self.node(to).inc;
                        let at = self.channel_time(id, to, self.now_ms);
                        let bytes = msg.encode();
                        self.push(
                            at,
                            SimEvent::Deliver {
                                from: id,
                                to,
                                inc,
                                bytes,
                            },
                        );
                    }
                }
                Action::Reply { request, result } => {
                    self.note(format!(
                        "{name} replies to request {}: {result:?}",
                        request.0
                    ));
                    match self.pending.remove(&(id, request)) {
                        None => self.violate(format!(
                            "node {name} answered request {} twice or unasked",
                            request.0
                        )),
                        Some(p) => {
                            // Only an outcome-unknown failure may have been applied:
                            // the kind decides, and the text must agree with it.
                            if let Err(e) = &result {
                                let unknown = e.kind == ErrorKind::OutcomeUnknown;
                                if unknown != e.message.contains(OUTCOME_UNKNOWN) {
                                    self.violate(format!(
                                        "node {name}: request {}: kind {:?} for {:?}",
                                        request.0, e.kind, e.message
                                    ));
                                }
                            }
                            if let Some(tag) = p.tag {
                                let (acked, failed) = if p.private {
                                    (
                                        self.private_acked.entry(id).or_default(),
                                        self.private_failed.entry(id).or_default(),
                                    )
                                } else {
                                    (&mut self.acked, &mut self.failed)
                                };
                                match &result {
                                    Ok(()) => {
                                        acked.insert(tag);
                                    }
                                    Err(e) if e.kind == ErrorKind::OutcomeUnknown => {}
                                    Err(_) => {
                                        failed.insert(tag);
                                    }
                                }
                            }
                            let _ = p.inc;
                            self.replies
                                .insert((id, request), result.map_err(|e| e.message));
                        }
                    }
                }
                Action::LocalCheck { txn, change } => {
                    // The daemon's local check, against the private groups as the
                    // core had them when it asked (not a private change in progress).
                    let private = self
                        .core(id)
                        .map(|c| c.private().clone())
                        .unwrap_or_default();
                    let refuse = match &change {
                        ToyChange::Create { name: dg, .. }
                            if self.node(id).private_dgs.contains(dg)
                                || private.groups.contains_key(dg) =>
                        {
                            Some(format!("disk group {dg} exists as a private disk group"))
                        }
                        // Every node that takes part must find the disk it brings back.
                        ToyChange::ReattachDisk { name: dg, .. }
                            if self.node(id).disk_access_broken =>
                        {
                            Some(format!(
                                "cannot find disk {dg}-disk on node {}",
                                Sim::name(id)
                            ))
                        }
                        _ => None,
                    };
                    let result = refuse.map_or(Ok(()), |e| {
                        Err(RequestError::unplaced(ErrorKind::Refused, e))
                    });
                    self.driver_later(
                        id,
                        Some(Hold::LocalCheck),
                        Event::LocalCheckDone { txn, result },
                    );
                }
                Action::KernelPrepare { txn, config } => {
                    let result = if self.rng.gen_range(0..100) < self.cfg.kernel_refuse_percent {
                        Err(format!("volume {} is busy", config.seq))
                    } else {
                        let inc = self.node(id).inc;
                        let k = &mut self.node_mut(id).kernel;
                        k.staged = Some((txn, config));
                        k.staged_private = Some(k.private.clone());
                        k.staged_inc = inc;
                        Ok(())
                    };
                    self.driver_later(
                        id,
                        Some(Hold::KernelPrepare),
                        Event::KernelPrepared { txn, result },
                    );
                }
                Action::KernelCommit { txn } => {
                    self.note(format!("{name} kernel commit {txn}"));
                    // The layout is applied below at once; its completion
                    // reaches the core like a driver's.
                    self.driver_later(id, Some(Hold::KernelCommit), Event::KernelCommitted { txn });
                    if self.core(id).is_some_and(|c| c.role() == Role::Master) {
                        self.coverage.commits += 1;
                    }
                    if self.aborted.contains(&txn) {
                        self.violate(format!(
                            "node {name} committed transaction {txn} after it was aborted"
                        ));
                    }
                    let k = &mut self.node_mut(id).kernel;
                    match k.staged.take() {
                        Some((t, config)) if t == txn => {
                            let (old_shared, old_private) = (k.active.clone(), k.private.clone());
                            k.active = config;
                            if let Some(p) = k.staged_private.take() {
                                k.private = p;
                            }
                            if let Some(e) =
                                k.active
                                    .new_private_conflict(&k.private, &old_shared, &old_private)
                            {
                                let what = format!(
                                    "node {name} committed transaction {txn} beside its private groups: {e}"
                                );
                                self.violate(what);
                            }
                        }
                        other => {
                            let what = format!("node {name} committed {txn} with {other:?} staged");
                            self.violate(what);
                        }
                    }
                }
                Action::KernelAbort { txn } => {
                    self.note(format!("{name} kernel abort {txn}"));
                    // An abort is a decision when a member makes or follows it (a
                    // master's or a takeover's abort, a slave told by ABORT, a new
                    // master's view or the next CHECK). A node that leaves the
                    // cluster drops its staged layout on its own: that decides
                    // nothing, and the transaction may still commit without it.
                    let member = self.core(id).is_some_and(|c| {
                        matches!(c.role(), Role::Master | Role::Slave | Role::TakingOver)
                    });
                    if member {
                        self.aborted.insert(txn);
                    }
                    let k = &mut self.node_mut(id).kernel;
                    if k.staged.as_ref().is_some_and(|(t, _)| *t == txn) {
                        k.staged = None;
                        k.staged_private = None;
                    }
                }
                Action::KernelLoad { config } => {
                    let k = &mut self.node_mut(id).kernel;
                    k.active = config;
                    k.staged = None;
                    k.staged_private = None;
                    k.left = false;
                    self.driver_later(
                        id,
                        Some(Hold::KernelLoad),
                        Event::KernelLoaded { result: Ok(()) },
                    );
                }
                Action::WriteDisks {
                    record,
                    deadline_ms,
                    lease_extends,
                } => {
                    let txn = record.txn;
                    self.node_mut(id)
                        .pending_writes
                        .push((record, (deadline_ms, lease_extends)));
                    self.driver_later(
                        id,
                        Some(Hold::DiskWrite),
                        Event::DiskWritten {
                            txn,
                            result: Ok(()),
                        },
                    );
                }
                Action::ReadQuorumDisk { op } => {
                    // The record is read when the result is delivered.
                    self.driver_later(
                        id,
                        Some(Hold::QuorumDisk),
                        Event::QuorumDiskRead {
                            op,
                            result: Ok(None),
                        },
                    );
                }
                Action::WriteQuorumDisk {
                    op,
                    record,
                    deadline_ms,
                } => {
                    self.node_mut(id)
                        .pending_qdisk_writes
                        .push((op, record, deadline_ms));
                    self.driver_later(
                        id,
                        Some(Hold::QuorumDisk),
                        Event::QuorumDiskWritten { op, result: Ok(()) },
                    );
                }
                Action::ReadDisks => {
                    // The content is read when the result is delivered.
                    self.driver_later(
                        id,
                        Some(Hold::DisksRead),
                        Event::DisksRead { result: Ok(None) },
                    );
                }
                Action::CheckDiskAccess { disks } => {
                    let refused = match disks.first() {
                        Some(d) if self.node(id).disk_access_broken => {
                            Some(format!("cannot find disk {d} on node {name}"))
                        }
                        _ => None,
                    };
                    self.driver_later(
                        id,
                        Some(Hold::DiskAccess),
                        Event::DiskAccessChecked { refused },
                    );
                }
                Action::ViewChanged { view } => {
                    self.note(format!("{name} installs view {view:?}"));
                    // A view without a majority of votes (a node that formed a
                    // cluster alone, waiting for joins) can commit nothing; only
                    // majority views must be unique per id.
                    // With a quorum disk, a view may have a majority with its vote.
                    let could_be_quorate = self.core(id).is_none_or(|c| {
                        c.quorum()
                            .reached(view.members.len() as u64 + u64::from(c.has_quorum_disk()))
                    });
                    if !could_be_quorate {
                        continue;
                    }
                    // A restarted node numbers its views above what the disks and
                    // the live nodes remember, so it may reuse the id of a view of
                    // its own dead start that only a frozen or cut-off node still
                    // holds: that view's master can no longer act.
                    let dead_start = self.views.get(&view.id).is_some_and(|(v, _)| {
                        v.master == view.master
                            && v.incarnation(v.master) != view.incarnation(view.master)
                            && self.of_dead_start(v)
                    });
                    if dead_start {
                        // The dead start's transactions (numbered by its view) are
                        // gone with it; the new start's reuse their ids.
                        self.views.remove(&view.id);
                        self.aborted.retain(|t| t.view != view.id);
                    }
                    // The other order: a node frozen with the dead start's `View` in
                    // its queue installs it after the new start reused the id. Its
                    // master is gone and the node learns so from the new start's
                    // first heartbeat (a newer incarnation); the view is not one of
                    // the cluster's, so it is neither registered nor compared.
                    if self.of_dead_start(&view) {
                        self.note(format!(
                            "{name}'s view {} is of a dead start of its master",
                            view.id
                        ));
                        continue;
                    }
                    match self.views.get_mut(&view.id) {
                        Some((v, _)) if *v != view => {
                            let what = format!("two views with id {}: {v:?} and {view:?}", view.id);
                            self.violate(what);
                        }
                        Some((_, installers)) => {
                            installers.insert(id);
                        }
                        None => {
                            self.views.insert(view.id, (view, BTreeSet::from([id])));
                        }
                    }
                }
                Action::LeaveCluster { .. } => {
                    let k = &mut self.node_mut(id).kernel;
                    k.left = true;
                    k.staged = None;
                    k.staged_private = None;
                }
                Action::PrivateChange {
                    request,
                    change,
                    before,
                    after,
                    shared,
                } => self.private_change(id, request, change, before, after, shared),
                Action::Failpoint(fp) => {
                    if self.node(id).armed == Some(fp) {
                        self.coverage.failpoint_crashes += 1;
                        self.note(format!("{name} reaches failpoint {fp}: crash"));
                        self.crash(id);
                        return;
                    }
                }
                Action::Log { message, .. } => {
                    self.note(format!("{name} log: {message}"));
                    let c = &mut self.coverage;
                    if message.contains("took over as master") {
                        c.takeovers += 1;
                    } else if message.contains("is on the disks; completing it") {
                        c.completed_by_new_master += 1;
                    } else if message.contains("did not reach the commit point") {
                        c.aborted_by_new_master += 1;
                    } else if message.ends_with(" joined the cluster")
                        && !message.contains(": joined")
                    {
                        c.joins += 1;
                    } else if message.contains("one vote short; acquiring the quorum disk") {
                        c.quorum_disk_takeovers += 1;
                    } else if message.contains("acquired the quorum disk") {
                        c.quorum_disk_acquired += 1;
                    } else if message.contains("lost the quorum disk") {
                        c.quorum_disk_lost += 1;
                    } else if message.contains("abandoned its join") {
                        c.abandoned_joins += 1;
                    } else if message.starts_with("transaction ") && message.contains(" failed: ") {
                        c.failed_txns += 1;
                    }
                    if self.logs.len() < MAX_LOG_LINES {
                        self.logs.push(format!("{name}: {message}"));
                    }
                }
                Action::ShutdownReady => {
                    self.note(format!("{name} shut down cleanly"));
                }
            }
        }
    }

    /// The driver's private change job, all of it at once (stage the shared groups
    /// given and the private groups after, write the private disks, commit), as the
    /// daemon's driver runs it: a data plane's prepare replaces whatever is staged.
    fn private_change(
        &mut self,
        id: NodeId,
        request: RequestId,
        change: ToyChange,
        before: ToyConfig,
        after: ToyConfig,
        shared: ToyConfig,
    ) {
        let name = Sim::name(id);
        let inc = self.node(id).inc;
        let k = &self.node(id).kernel;
        if let Some((txn, _)) = &k.staged {
            if k.staged_inc == inc {
                let what = format!(
                    "node {name}'s private change {change:?} dropped the layout of transaction {txn} staged in its data plane"
                );
                return self.violate(what);
            }
        }
        if before != self.node(id).private_disk {
            let what = format!(
                "node {name}'s private change {change:?} was validated against private groups seq {}, not the ones its last change left (seq {})",
                before.seq,
                self.node(id).private_disk.seq
            );
            return self.violate(what);
        }
        let result = if self.rng.gen_range(0..100) < self.cfg.kernel_refuse_percent {
            let e = format!("node {name}: data plane: volume {} is busy", after.seq);
            Err(RequestError::new(ErrorKind::Failed, name.clone(), e))
        } else {
            self.note(format!(
                "{name} private change {change:?}: private seq {} → {}",
                before.seq, after.seq
            ));
            self.coverage.private_commits += 1;
            let n = self.node_mut(id);
            let (old_shared, old_private) = (n.kernel.active.clone(), n.kernel.private.clone());
            n.kernel.staged = None;
            n.kernel.staged_private = None;
            n.kernel.active = shared;
            n.kernel.private = after.clone();
            n.private_disk = after;
            let k = &self.node(id).kernel;
            if let Some(e) = k
                .active
                .new_private_conflict(&k.private, &old_shared, &old_private)
            {
                let what = format!("node {name}'s private change {change:?} left its data plane with {e} and shared");
                return self.violate(what);
            }
            Ok(())
        };
        self.driver_later(
            id,
            Some(Hold::Private),
            Event::PrivateDone { request, result },
        );
    }

    /// After every event, on every node whose coordinator is up: its data plane
    /// serves the private groups its last committed private change left, which hold
    /// every private change acknowledged on it and none that failed.
    fn check_private(&self) -> Result<(), String> {
        for n in &self.nodes {
            if n.core.is_none() {
                continue;
            }
            let name = Sim::name(n.id);
            if n.kernel.private != n.private_disk {
                return Err(format!(
                    "node {name}'s data plane serves private groups seq {} {:?}, but its last private change left seq {} {:?}",
                    n.kernel.private.seq,
                    n.kernel.private.groups.keys().collect::<Vec<_>>(),
                    n.private_disk.seq,
                    n.private_disk.groups.keys().collect::<Vec<_>>()
                ));
            }
            let history = &n.private_disk.history;
            if let Some(tag) = self
                .private_acked
                .get(&n.id)
                .and_then(|a| a.iter().find(|t| !history.contains(t)))
            {
                return Err(format!(
                    "private change {tag} was acknowledged on node {name} but its private groups do not hold it"
                ));
            }
            if let Some(tag) = self
                .private_failed
                .get(&n.id)
                .and_then(|f| f.iter().find(|t| history.contains(t)))
            {
                return Err(format!(
                    "private change {tag} failed on node {name} but its private groups hold it"
                ));
            }
        }
        Ok(())
    }

    /// Node-crash recovery: a configuration reaching the disk. A plex that became
    /// ACTIVE again through a resync is a copy of the one readable plex (it leaves
    /// its divergence); once the dead start is no longer open (its loss was acted
    /// on), at most one plex of a divergence may be readable.
    fn check_divergence(&mut self, config: &ToyConfig) -> Result<(), String> {
        let before = self.disk.as_ref().map(|d| d.config.clone());
        for d in &mut self.diverged {
            let Some(g) = config.groups.get(&d.volume) else {
                d.plexes.clear();
                continue;
            };
            let bg = before.as_ref().and_then(|b| b.groups.get(&d.volume));
            // A resync covered the divergence: the whole plex, or ranges holding
            // every region that may differ.
            let covered = |p: &String| {
                bg.is_some_and(|bg| {
                    bg.syncing.contains(p)
                        && match (bg.ranges.get(p), &d.regions) {
                            (None, _) => true,
                            (Some(_), None) => false,
                            (Some(ranges), Some(regions)) => regions.iter().all(|r| {
                                let off = r * TOY_REGION_BYTES;
                                ranges
                                    .iter()
                                    .any(|&(o, l)| o <= off && off + TOY_REGION_BYTES <= o + l)
                            }),
                        }
                })
            };
            d.plexes
                .retain(|p| !(g.plexes.get(p) == Some(&true) && covered(p)));
        }
        self.diverged.retain(|d| d.plexes.len() >= 2);
        for d in &self.diverged {
            let (node, inc) = d.start;
            if config.open.get(&node) == Some(&inc) {
                continue;
            }
            let Some(g) = config.groups.get(&d.volume) else {
                continue;
            };
            let readable: Vec<&String> = d
                .plexes
                .iter()
                .filter(|p| g.plexes.get(*p) == Some(&true))
                .collect();
            if readable.len() >= 2 {
                return Err(format!(
                    "volume {}: plexes {readable:?} may differ ({} died serving them{}) yet both are readable on the disk (seq {}) with that start no longer open",
                    d.volume,
                    Sim::name(node),
                    d.regions
                        .as_ref()
                        .map(|r| format!(", in regions {r:?}"))
                        .unwrap_or_default(),
                    config.seq
                ));
            }
        }
        Ok(())
    }

    /// Nodes whose data plane could write `volume` now: it serves (its lease
    /// holds), has the volume and has not quiesced it for a fence.
    pub fn writers(&self, volume: &str) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| {
                self.now_ms < n.kernel.lease_until_ms
                    && !n.kernel.left
                    && n.kernel.active.groups.contains_key(volume)
                    && !n.kernel.quiesced.contains(volume)
            })
            .map(|n| n.id)
            .collect()
    }

    /// Resync copies between their read and their write.
    pub fn copies_in_flight(&self) -> &[CopyInFlight] {
        &self.copies
    }

    /// The regions ([`TOY_REGION_BYTES`]) of `plex` of `volume` that hold the
    /// volume's data.
    pub fn synced(&self, volume: &str, plex: &str) -> BTreeSet<u64> {
        self.synced
            .get(&(volume.to_string(), plex.to_string()))
            .cloned()
            .unwrap_or_default()
    }

    /// Freezes, crashes or cuts off a node as soon as it starts a resync copy, for
    /// `percent` of the copies (the random schedules' resync seeds).
    pub fn set_copy_fault_percent(&mut self, percent: u32) {
        self.copy_fault_percent = percent.min(100);
    }

    /// A client asks node `id` to attach STALE `plex` of `volume` again (SYNCING).
    pub fn attach(&mut self, id: NodeId, volume: &str, plex: &str) -> Option<RequestId> {
        let tag = self.tag();
        self.submit(
            id,
            ToyChange::Attach {
                tag,
                volume: volume.to_string(),
                plex: plex.to_string(),
            },
        )
    }

    /// After every event: a copy in flight while a node could write its volume
    /// unfenced is raced; a node that could write a volume with a layout that
    /// does not send writes to a plex (not SYNCING, not ACTIVE) makes the chunks
    /// copied to it stale.
    fn track_resync(&mut self) {
        let mut raced = Vec::new();
        for (i, c) in self.copies.iter().enumerate() {
            if !c.dirty && !self.writers(&c.volume).is_empty() {
                raced.push(i);
            }
        }
        for i in raced {
            let who = self.writers(&self.copies[i].volume);
            let c = &mut self.copies[i];
            c.dirty = true;
            let line = format!(
                "copy {} of regions {:?} of {} RACED: nodes {who:?} could write it unfenced",
                c.token, c.regions, c.volume
            );
            self.note(line);
        }
        let mut stale = Vec::new();
        for (volume, plex) in self.synced.keys() {
            let missed = self.writers(volume).into_iter().any(|w| {
                let g = self.node(w).kernel.active.groups.get(volume);
                !g.is_some_and(|g| g.syncing.contains(plex) || g.plexes.get(plex) == Some(&true))
            });
            if missed {
                stale.push((volume.clone(), plex.clone()));
            }
        }
        for k in stale {
            self.synced.remove(&k);
        }
    }

    fn land_copy(&mut self, c: CopyInFlight) {
        self.coverage.chunks_copied += 1;
        let key = (c.volume.clone(), c.plex.clone());
        if c.dirty {
            self.coverage.chunks_raced += 1;
            if let Some(set) = self.synced.get_mut(&key) {
                set.retain(|r| !c.regions.contains(r));
            }
            let active = self.disk.as_ref().is_some_and(|d| {
                d.config
                    .groups
                    .get(&c.volume)
                    .is_some_and(|g| g.plexes.get(&c.plex) == Some(&true))
            });
            if active {
                self.violate(format!(
                    "node {}'s copy {} of regions {:?} of {}, raced by a host write, landed on plex {} after it became ACTIVE",
                    Sim::name(c.node),
                    c.token,
                    c.regions,
                    c.volume,
                    c.plex
                ));
            }
        } else {
            self.synced.entry(key).or_default().extend(c.regions);
        }
    }

    /// A plex becomes ACTIVE on the disk only once every region of it holds the
    /// volume's data (copied under fences, no write missed it since).
    fn check_resync_done(&mut self, new: &ToyConfig) -> Result<(), String> {
        let old = self
            .disk
            .as_ref()
            .map(|d| d.config.clone())
            .unwrap_or_default();
        // A group created afresh starts with nothing copied.
        self.synced
            .retain(|(v, _), _| old.groups.contains_key(v) && new.groups.contains_key(v));
        let regions = TOY_VOLUME_BYTES / TOY_REGION_BYTES;
        for (volume, g) in &new.groups {
            let Some(og) = old.groups.get(volume) else {
                continue;
            };
            for (plex, _) in g.plexes.iter().filter(|(_, &a)| a) {
                if !og.syncing.contains(plex) {
                    continue;
                }
                // The regions the resync had to copy: its ranges', or all.
                let wanted: Vec<u64> = match og.ranges.get(plex) {
                    None => (0..regions).collect(),
                    Some(ranges) => {
                        self.coverage.range_resyncs_done += 1;
                        (0..regions)
                            .filter(|r| {
                                let off = r * TOY_REGION_BYTES;
                                ranges
                                    .iter()
                                    .any(|&(o, l)| o < off + TOY_REGION_BYTES && off < o + l)
                            })
                            .collect()
                    }
                };
                let have = self.synced(volume, plex);
                let missing: Vec<u64> = wanted.into_iter().filter(|c| !have.contains(c)).collect();
                // A chunk lost to a data plane's death while its start is still
                // open: the recovery to come resyncs the plex again.
                let recovery_due = self.diverged.iter().any(|d| {
                    d.volume == *volume
                        && d.plexes.contains(plex)
                        && new.open.get(&d.start.0) == Some(&d.start.1)
                });
                if !missing.is_empty() && !recovery_due {
                    return Err(format!(
                        "plex {plex} of volume {volume} became ACTIVE (seq {}) with regions {missing:?} not copied under a fence",
                        new.seq
                    ));
                }
            }
        }
        Ok(())
    }

    /// The fencing invariants, at every event:
    /// - a data plane that serves (its lease holds) holds a layout the cluster
    ///   committed, no older than the one before the newest on the disk;
    /// - a master that holds a lease holds the newest configuration on the disk
    ///   (the one before it only while its own transaction is in progress);
    /// - at most one master holds a lease at any time.
    fn check_fencing(&self) -> Result<(), String> {
        let newest = self.disk.as_ref().map_or(0, |d| d.config.seq);
        let mut leased_masters = Vec::new();
        for n in &self.nodes {
            let serving = self.now_ms < n.kernel.lease_until_ms && !n.kernel.left;
            // A shared layout without groups (a restarted coordinator's private
            // change, before it joined, stages none) serves nothing shared.
            if serving && !n.kernel.active.groups.is_empty() {
                let seq = n.kernel.active.seq;
                if seq + 1 < newest {
                    return Err(format!(
                        "node {}'s data plane serves seq {seq} while the disk holds seq {newest}",
                        Sim::name(n.id)
                    ));
                }
                if let Some(c) = self.committed.get(&seq) {
                    if *c != n.kernel.active {
                        return Err(format!(
                            "node {}'s data plane serves a seq {seq} layout the cluster did not commit",
                            Sim::name(n.id)
                        ));
                    }
                }
            }
            if let Some(core) = &n.core {
                let clock = Sim::clock(n.drift_ppm, self.now_ms);
                if core.role() == Role::Master && core.lease_remaining_ms(clock) > 0 {
                    leased_masters.push(Sim::name(n.id));
                    // A master acts on the newest configuration: only its own
                    // transaction's write may have landed before it applied it.
                    let seq = core.config().seq;
                    let behind = seq < newest && !(seq + 1 == newest && core.txn_in_progress());
                    if behind {
                        return Err(format!(
                            "master {} holds a lease with seq {seq} while the disk holds seq {newest}",
                            Sim::name(n.id)
                        ));
                    }
                }
            }
        }
        if leased_masters.len() > 1 {
            return Err(format!(
                "masters {} hold leases at the same time",
                leased_masters.join(", ")
            ));
        }
        let disk_voters: Vec<String> = self
            .ids()
            .into_iter()
            .filter(|&id| self.counts_disk_vote(id))
            .map(Sim::name)
            .collect();
        if disk_voters.len() > 1 {
            return Err(format!(
                "nodes {} count the quorum disk's vote at the same time",
                disk_voters.join(", ")
            ));
        }
        Ok(())
    }

    /// Checks the invariants now:
    /// - every change acknowledged OK is on the disk (and in every idle member's
    ///   configuration); a change that failed is nowhere;
    /// - at most one master and one membership per view id (checked as views are
    ///   installed), no commit of an aborted transaction, disk sequence never goes back;
    /// - once no node is busy: members of one view hold the same configuration, their
    ///   data planes hold it too, and the disk holds the master's.
    pub fn check(&mut self) -> Result<(), String> {
        if let Some(v) = &self.violation {
            return Err(v.clone());
        }
        if let Some(d) = self.disk.as_ref().map(|d| d.config.clone()) {
            self.check_divergence(&d)?;
        }
        self.check_fencing()?;
        self.check_private()?;
        let disk_history: &[u64] = self.disk.as_ref().map_or(&[], |d| &d.config.history);
        if let Some(tag) = self.acked.iter().find(|t| !disk_history.contains(t)) {
            return Err(format!(
                "change {tag} was acknowledged but is not on the disk"
            ));
        }
        if let Some(tag) = self.failed.iter().find(|t| disk_history.contains(t)) {
            return Err(format!("change {tag} failed but is on the disk"));
        }
        let mut any_member = false;
        for n in &self.nodes {
            let Some(core) = &n.core else { continue };
            let member = matches!(core.role(), Role::Master | Role::Slave | Role::TakingOver);
            any_member |= member;
            // A node out of the cluster may still hold a change the cluster then
            // aborted (a successor that applied COMMIT, lost its ack and was cut
            // off): its data plane serves nothing and it loads the committed
            // configuration when it joins again. So may a member whose lease ran
            // out: one frozen since before the abort still believes it is a member
            // (the master aborts only once that node's lease has run out); it
            // applies no COMMIT past its lease (`lease_ran_out`, the core's own
            // test) and loads the committed configuration when it joins again.
            // A successor taking over holds no lease either: it may hold a change
            // its master aborted (it applied the COMMIT, its ack was lost, and it
            // was cut off), and its takeover must not write that change to the
            // disk (checked above: a failed change on the disk).
            // Other members and serving data planes never hold a failed change.
            let clock = Sim::clock(n.drift_ppm, self.now_ms);
            let leased_member =
                matches!(core.role(), Role::Master | Role::Slave) && !core.lease_ran_out(clock);
            let serving = self.now_ms < n.kernel.lease_until_ms && !n.kernel.left;
            for tag in &self.failed {
                if (leased_member && core.config().has(*tag))
                    || (serving && n.kernel.active.has(*tag))
                {
                    return Err(format!(
                        "change {tag} failed but node {} applied it",
                        Sim::name(n.id)
                    ));
                }
            }
        }
        if !any_member {
            // The whole cluster is down: the next one numbers its views afresh.
            self.views.clear();
            self.aborted.clear();
        }
        let all_idle = self
            .nodes
            .iter()
            .all(|n| n.core.as_ref().is_none_or(|c| c.is_idle()));
        if !all_idle {
            return Ok(());
        }
        let Some(m) = self.master() else {
            return Ok(());
        };
        let mcore = self.core(m).expect("master is up");
        let Some(view) = mcore.view().cloned() else {
            return Ok(());
        };
        let clock = Sim::clock(self.node(m).drift_ppm, self.now_ms);
        if mcore.lease_remaining_ms(clock) == 0 {
            // A master without a lease (frozen past it, or cut off) acts no more:
            // it commits nothing and abdicates at its next tick. Its state is no
            // measure of the cluster's.
            return Ok(());
        }
        if !mcore.view_quorate() {
            // Formed alone and waiting for joins: it commits nothing yet.
            return Ok(());
        }
        let mconfig = mcore.config().clone();
        let disk_config = self
            .disk
            .as_ref()
            .map(|d| d.config.clone())
            .unwrap_or_default();
        if disk_config != mconfig {
            return Err(format!(
                "the disk holds seq {} but master {} holds seq {}",
                disk_config.seq,
                Sim::name(m),
                mconfig.seq
            ));
        }
        for n in &self.nodes {
            let Some(core) = &n.core else { continue };
            if core.view() != Some(&view) {
                continue;
            }
            if *core.config() != mconfig {
                return Err(format!(
                    "node {} holds seq {} but master {} holds seq {} in view {}",
                    Sim::name(n.id),
                    core.config().seq,
                    Sim::name(m),
                    mconfig.seq,
                    view.id
                ));
            }
            if n.kernel.active != mconfig || n.kernel.staged.is_some() {
                return Err(format!(
                    "node {}'s data plane holds seq {} (staged: {}) but the cluster holds seq {}",
                    Sim::name(n.id),
                    n.kernel.active.seq,
                    n.kernel.staged.is_some(),
                    mconfig.seq
                ));
            }
        }
        if let Some(tag) = self.acked.iter().find(|t| !mconfig.has(**t)) {
            return Err(format!(
                "change {tag} was acknowledged but the master does not hold it"
            ));
        }
        Ok(())
    }
}
