//! The coordinator's protocol core: membership and the volume reconfiguration
//! transaction as a pure state machine.
//!
//! No sockets, clocks, threads or `async` in here (the quinn-proto / FoundationDB
//! style): the driver feeds [`Event`]s to [`Node::handle`] together with the current
//! time, and carries out the [`Action`]s it returns, in order. The daemon drives it
//! over Cap'n Proto; [`crate::sim`] drives many nodes in one process under a seeded
//! schedule. docs/PROTOCOL.md describes the protocol and its failure rules.

mod codec;
pub mod detach;
mod error;
mod given_up;
mod membership;
mod messages;
mod model;
mod monitor;
mod private;
mod qdisk;
mod quorum;
mod recovery;
mod resync;
mod status;
mod txn;

pub use codec::PROTOCOL_VERSION;
pub use error::{ErrorKind, RequestError};
pub use messages::{
    Echo, FenceToken, Message, NodeId, Origin, RequestId, TxnId, TxnState, View, WireRequest,
    MAX_MESSAGE_BYTES,
};
pub use model::{ConfigModel, DirtyLogRead, DirtyLogSection, SectionCopy, SyncingPlex};
pub use private::MAX_QUEUED_PRIVATE;
pub use qdisk::{QuorumDiskRecord, QuorumDiskStatus};
pub use quorum::Quorum;
pub use recovery::{
    MAX_LOG_SECTIONS_PER_READ, MAX_LOST_STARTS, RECOVERY_REQUEST_BASE, RECOVERY_RETRY_MS,
};
pub use resync::{
    MAX_CHUNK_PIECES, MAX_FENCES, MAX_RESYNCS, RESYNC_CHUNK_BYTES, RESYNC_PROGRESS_EVERY_CHUNKS,
    RESYNC_REQUEST_BASE, RESYNC_RETRY_MS,
};
pub use txn::{APPLIED_WAIT_MS, MAX_APPLIED_WAITS};

use std::collections::{BTreeMap, BTreeSet};

/// Most client requests the master queues while a transaction or join runs.
pub const MAX_QUEUED_REQUESTS: usize = 64;
/// Most requests a slave has forwarded to the master and not yet answered.
pub const MAX_PENDING_FORWARDS: usize = 64;
/// Most rounds of votes a takeover collects (the first, then one more after each
/// wait for the lost master's lease) before it gives up.
pub const MAX_TAKEOVER_ROUNDS: u32 = 4;
/// Longest failure reason kept per node, in bytes.
pub const MAX_REASON_BYTES: usize = 512;

/// Text in an error whose change may or may not have been applied (the node that
/// forwarded it left the cluster before the answer came).
pub const OUTCOME_UNKNOWN: &str = "outcome unknown";

/// Text in a [`Event::DiskWritten`] error when a disk holds a configuration record
/// written by a master of a newer epoch: this master has been replaced and abdicates.
pub const NEWER_EPOCH: &str = "newer epoch";

/// Text in a [`Event::DiskWritten`] error when the write's deadline passed before it
/// reached a disk (this node was frozen or stalled with the write queued): the
/// authority it was issued under may have passed to another master.
pub const WRITE_DEADLINE: &str = "write deadline passed";

/// Text in every refusal for want of quorum.
pub const NO_QUORUM: &str = "no quorum";

/// Every failpoint the core emits, in protocol order.
pub const FAILPOINTS: [&str; 9] = [
    "txn.after_validate",
    "txn.after_check",
    "txn.after_prepare",
    "txn.before_successor_commit",
    "txn.after_successor_ack",
    "txn.after_disk_write",
    "txn.after_commit_sent",
    "join.before_kernel",
    "join.after_kernel",
];

/// A configured node: id and name from the cluster file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node id.
    pub id: NodeId,
    /// Host name, used in every message a person reads.
    pub name: String,
    /// Votes this node contributes to quorum (the cluster file's `votes`, default 1).
    pub votes: u32,
}

/// Static settings of one node's core.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// This node.
    pub me: NodeId,
    /// This start of the node: must be greater than the previous start's (a boot
    /// counter, or the wall-clock start time in milliseconds). Peers see a restart
    /// by it and ignore messages of an older start.
    pub incarnation: u64,
    /// Every configured node, this one included.
    pub nodes: Vec<NodeInfo>,
    /// How often heartbeats go out.
    pub heartbeat_interval_ms: u64,
    /// Silence after which a peer is declared gone.
    pub heartbeat_timeout_ms: u64,
    /// How long a starting node listens for an existing cluster before forming one.
    pub form_wait_ms: u64,
    /// How long a node that abandoned a join waits before trying again.
    pub join_retry_ms: u64,
    /// The data-plane lease: how long a node's data plane may go on serving shared
    /// volumes after the last confirmation that it belongs to a quorate view.
    pub lease_ms: u64,
    /// Added to `lease_ms` and the clock drift allowance ([`drift_allowance_ms`])
    /// when waiting out a lost node's lease: how late a data plane may fence after
    /// its deadline (its reactors' loop; docs/PROTOCOL.md, "Waiting out").
    pub lease_margin_ms: u64,
    /// How long the master waits for a member's answer to CHECK or PREPARE before
    /// the transaction fails (a message lost in a partition, a member that stopped
    /// taking part); longer than the data plane's drain bound.
    pub reply_timeout_ms: u64,
    /// How long before this start the node's previous start may last have been a
    /// member of a view, from the record it kept ([`Action::RecordMembership`]);
    /// None: no record (never a member since the machine booted, or the record is
    /// gone). A restarted node may have confirmed a master's lease just before it
    /// died; until that lease has surely run out it counts as a member of another
    /// cluster (no cluster forms with it, no join gives a view its first majority).
    pub member_ago_at_start_ms: Option<u64>,
    /// A quorum disk is configured (the cluster file's `quorum_disk`): it gives one
    /// more vote, to the node holding its lease (`core::qdisk`).
    pub quorum_disk: bool,
    /// Longest a node keeps a resync fence (its volume quiesced) before it breaks it
    /// on its own (`core::resync`).
    pub fence_lease_ms: u64,
    /// The master's own transactions (the node-crash recovery bookkeeping of
    /// `core::recovery`: opens, recoveries, closes; the end of a resync) reach the
    /// `txn.*` failpoints too (the simulator crashes there); plexd turns it off, so
    /// a process armed with `PLEXD_FAILPOINT` dies in a transaction a test asked for.
    pub bookkeeping_failpoints: bool,
    /// Membership and quorum also come from an external cluster monitor (corosync):
    /// the driver reports its views ([`Event::MonitorView`]); until the first one,
    /// and whenever it says so, this node has no quorum (`core::monitor`).
    pub external_monitor: bool,
}

impl NodeConfig {
    /// Settings with incarnation 0 (set it) and the defaults: heartbeats every 500 ms, a peer is gone after
    /// 2000 ms of silence, form after 2000 ms, retry an abandoned join after 30 s,
    /// a 5 s data-plane lease waited out with a 250 ms margin, 15 s for a member's
    /// answer to CHECK or PREPARE, resync fences kept 5 s at most.
    pub fn new(me: NodeId, nodes: Vec<NodeInfo>) -> NodeConfig {
        NodeConfig {
            me,
            incarnation: 0,
            nodes,
            heartbeat_interval_ms: 500,
            heartbeat_timeout_ms: 2000,
            form_wait_ms: 2000,
            join_retry_ms: 30_000,
            lease_ms: 5000,
            lease_margin_ms: DEFAULT_LEASE_MARGIN_MS,
            reply_timeout_ms: 15_000,
            member_ago_at_start_ms: None,
            quorum_disk: false,
            fence_lease_ms: 5000,
            bookkeeping_failpoints: true,
            external_monitor: false,
        }
    }

    /// The time a quorate side waits after it last could have confirmed a lost node
    /// before acting on its loss: the lease, the clock drift allowance
    /// ([`drift_allowance_ms`]), the margin.
    pub fn lease_wait_ms(&self) -> u64 {
        self.lease_ms + drift_allowance_ms(self.lease_ms) + self.lease_margin_ms
    }
}

/// The clock rate error the protocol tolerates per node, in parts per million
/// (±1 %): twenty times the most NTP slews a clock (500 ppm), and far more than a
/// free-running quartz's error (about 100 ppm). The simulator runs its nodes' clocks
/// at up to this error (`sim::MAX_DRIFT_PPM`). Time is never compared across
/// nodes, only durations measured on different clocks.
pub const MAX_CLOCK_DRIFT_PPM: u64 = 10_000;

/// The default `lease_margin_ms`.
pub const DEFAULT_LEASE_MARGIN_MS: u64 = 250;

/// What waiting out a lease of `lease_ms` adds for clock rate error: four times
/// [`MAX_CLOCK_DRIFT_PPM`] of it (4 % of the lease). A duration measured on one
/// clock and waited out on another, each off by up to ±ρ, lasts up to
/// (1+ρ)/(1−ρ) ≈ 1+2ρ times longer; a slave's lease crosses two clocks before a
/// successor waits it out on a third (the master's lease left, counted on from the
/// slave's stamp): 4ρ (docs/PROTOCOL.md, "Waiting out").
pub fn drift_allowance_ms(lease_ms: u64) -> u64 {
    lease_ms.saturating_mul(4 * MAX_CLOCK_DRIFT_PPM) / 1_000_000
}

/// A stored configuration record: what `WriteDisks` writes and `ReadDisks` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskRecord<M> {
    /// The transaction that produced the configuration.
    pub txn: TxnId,
    /// The configuration (its `seq()` is the record's sequence number).
    pub config: M,
}

/// A request a client makes of the cluster.
#[derive(Clone, Debug, PartialEq)]
pub enum Request<M: ConfigModel> {
    /// A configuration change.
    Change(M::Change),
    /// Detach a plex after an I/O error (global detach policy), or count the
    /// reporting node as failing it and resync `ranges` (local, `core::detach`).
    DetachPlex {
        /// Volume name.
        volume: String,
        /// Plex name.
        plex: String,
        /// The failed writes' byte ranges (offset, length); empty under the global
        /// policy. At most [`detach::MAX_REPORTED_RANGES`].
        ranges: Vec<(u64, u64)>,
    },
    /// The master's own: make `plex` ACTIVE, its resync `gen` copied every chunk.
    ResyncDone {
        /// The plex.
        plex: SyncingPlex,
        /// The resync (a restarted one does not count).
        gen: u64,
    },
}

/// What the driver tells the core.
#[derive(Clone, Debug)]
pub enum Event<M: ConfigModel> {
    /// Time passed; call at least every heartbeat interval / 4.
    Tick,
    /// A message from a peer (decoded with [`Message::decode`]).
    Message {
        /// The sender.
        from: NodeId,
        /// The message.
        msg: Message,
    },
    /// The connection to a peer broke (its process died or closed it).
    ConnectionLost {
        /// The peer.
        peer: NodeId,
    },
    /// A client (`plexctl`) asks for a change; answered by [`Action::Reply`].
    ClientRequest {
        /// Id chosen by the driver, unique on this node.
        request: RequestId,
        /// The change.
        change: M::Change,
    },
    /// This node's data plane reports a write error on a plex; answered by
    /// [`Action::Reply`] once the plex is detached everywhere (Ok) or cannot be (Err).
    PlexIoError {
        /// Id chosen by the driver, unique on this node.
        request: RequestId,
        /// Volume name.
        volume: String,
        /// Plex name.
        plex: String,
        /// The failed writes' byte ranges (offset, length), when the data plane
        /// failed them (local detach policy); empty when it holds them.
        ranges: Vec<(u64, u64)>,
    },
    /// Result of [`Action::LocalCheck`].
    LocalCheckDone {
        /// The transaction.
        txn: TxnId,
        /// Ok, or why this node refuses the change (its node is placed by the master).
        result: Result<(), RequestError>,
    },
    /// Result of [`Action::KernelPrepare`].
    KernelPrepared {
        /// The transaction.
        txn: TxnId,
        /// Ok, or why the data plane refused.
        result: Result<(), String>,
    },
    /// [`Action::KernelCommit`] is done: the data plane applied the layout.
    KernelCommitted {
        /// The transaction.
        txn: TxnId,
    },
    /// Result of [`Action::WriteDisks`].
    DiskWritten {
        /// The transaction written.
        txn: TxnId,
        /// Ok, or the write error.
        result: Result<(), String>,
    },
    /// Result of [`Action::ReadDisks`]: the newest valid record, if any.
    DisksRead {
        /// The record, none on blank disks, or the read error.
        result: Result<Option<DiskRecord<M>>, String>,
    },
    /// Result of [`Action::CheckDiskAccess`].
    DiskAccessChecked {
        /// Why this node cannot take the offered configuration, naming this node
        /// (`cannot find disk d1 on node c`, or a newer configuration its disks
        /// hold), if it cannot.
        refused: Option<String>,
    },
    /// Result of [`Action::KernelLoad`].
    KernelLoaded {
        /// Ok, or why the data plane refused.
        result: Result<(), String>,
    },
    /// Result of [`Action::ReadQuorumDisk`].
    QuorumDiskRead {
        /// The operation's number, from the action.
        op: u64,
        /// The lease record; none when the disk is blank or its record torn (nobody
        /// holds it); an error when it cannot be read.
        result: Result<Option<QuorumDiskRecord>, String>,
    },
    /// Result of [`Action::WriteQuorumDisk`].
    QuorumDiskWritten {
        /// The operation's number, from the action.
        op: u64,
        /// Ok once the record is durable; the error otherwise (the deadline passed:
        /// [`WRITE_DEADLINE`]).
        result: Result<(), String>,
    },
    /// Result of [`Action::Quiesce`].
    Quiesced {
        /// Disk group.
        dg: String,
        /// Volume.
        volume: String,
        /// The fence, from the action.
        token: FenceToken,
        /// Ok once the volume's I/O is drained and parked (or this data plane does
        /// not serve the volume); the error otherwise.
        result: Result<(), String>,
    },
    /// Result of [`Action::CopyChunk`].
    ChunkCopied {
        /// The fence, from the action.
        token: FenceToken,
        /// Ok once the chunk is written; the error otherwise (the deadline passed:
        /// [`WRITE_DEADLINE`]).
        result: Result<(), String>,
    },
    /// Result of [`Action::PrivateChange`].
    PrivateDone {
        /// The request, from the action.
        request: RequestId,
        /// Ok once the change is committed in the data plane and on the group's
        /// disks; the error (naming the node) otherwise, and nothing changed.
        result: Result<(), RequestError>,
    },
    /// Result of [`Action::ReadDirtyLogs`].
    DirtyLogsRead {
        /// The read's number, from the action.
        op: u64,
        /// One result per section of the action, in its order (a missing one
        /// counts as unreadable).
        results: Vec<DirtyLogRead>,
    },
    /// The connection to the data plane broke: its quiesces are gone (every fence
    /// this node holds is broken).
    DataPlaneLost,
    /// The external cluster monitor's view of this node's partition (only with
    /// [`NodeConfig::external_monitor`]): a peer left out is gone at once and its
    /// messages are ignored while it stays out; not quorate, this node has no
    /// quorum (it leaves its view, forms and joins nothing, holds no lease). A
    /// monitor that is unreachable is reported as not quorate.
    MonitorView {
        /// Configured nodes the monitor counts in this node's partition.
        members: BTreeSet<NodeId>,
        /// The partition holds the monitor's quorum.
        quorate: bool,
        /// What the monitor says, for the status line (`corosync: not running`).
        detail: String,
    },
    /// Stop cleanly: refuse new requests, wait for an in-progress reconfiguration
    /// (join, takeover, transaction, answers to forwarded requests), then
    /// [`Action::ShutdownReady`].
    Shutdown,
}

/// What the core asks the driver to do, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action<M: ConfigModel> {
    /// Record, where the next start of this node's process finds it (a file that
    /// survives a process restart; see `NodeConfig::member_ago_at_start_ms`), that
    /// this node may be a member of a view until `until_ms` (this node's clock).
    /// Carry it out before any later action: the messages that follow may confirm
    /// a master's lease.
    RecordMembership {
        /// Until when (this node's clock).
        until_ms: u64,
    },
    /// Send a message to a peer (encode with [`Message::encode`]).
    Send {
        /// The peer.
        to: NodeId,
        /// The message.
        msg: Message,
    },
    /// Answer a client request or plex error event.
    Reply {
        /// The request.
        request: RequestId,
        /// Its result; errors name the node and say what kind of failure it is.
        result: Result<(), RequestError>,
    },
    /// Run this node's local checks on a change (private disk group of the same name,
    /// new disks accessible); answer with [`Event::LocalCheckDone`].
    LocalCheck {
        /// The transaction.
        txn: TxnId,
        /// The change.
        change: M::Change,
    },
    /// Kernel phase: quiesce the affected volumes and stage `config`'s layout;
    /// answer with [`Event::KernelPrepared`].
    KernelPrepare {
        /// The transaction.
        txn: TxnId,
        /// The configuration after the change.
        config: M,
    },
    /// Apply the staged layout and resume I/O; answered with
    /// [`Event::KernelCommitted`] (a driver that does not loses only the
    /// wait of [`ConfigModel::answer_after_applied`] changes, bounded).
    KernelCommit {
        /// The transaction.
        txn: TxnId,
    },
    /// Drop the staged layout, if any, and resume I/O (no answer).
    KernelAbort {
        /// The transaction.
        txn: TxnId,
    },
    /// Load a whole configuration into the data plane (join, forming, resync);
    /// answer with [`Event::KernelLoaded`].
    KernelLoad {
        /// The configuration.
        config: M,
    },
    /// Write the configuration to the shared disks; answer with [`Event::DiskWritten`].
    WriteDisks {
        /// The record to write.
        record: DiskRecord<M>,
        /// This node's clock: no disk is written from then on (the driver checks it
        /// just before each disk's write and answers [`WRITE_DEADLINE`]): a
        /// takeover's votes hold until then; a master's lease end when it asked.
        deadline_ms: u64,
        /// The deadline moves on with this node's lease as the driver last heard
        /// of it (a master's lease renewed while the write waited). A write that
        /// waited through this node's abdication never rides on a lease of a later
        /// view: every master lease won after an abdication follows a driver job
        /// given after this write (the disk check of a first majority, a takeover's
        /// write), and the driver runs its jobs in order.
        lease_extends: bool,
    },
    /// Read the newest configuration record from the disks; answer with [`Event::DisksRead`].
    ReadDisks,
    /// Read the quorum disk's lease record; answer with [`Event::QuorumDiskRead`].
    /// One quorum disk operation is in flight at a time.
    ReadQuorumDisk {
        /// The operation's number (echoed in the event).
        op: u64,
    },
    /// Write the quorum disk's lease record durably (O_DIRECT or fdatasync); answer
    /// with [`Event::QuorumDiskWritten`].
    WriteQuorumDisk {
        /// The operation's number (echoed in the event).
        op: u64,
        /// The record.
        record: QuorumDiskRecord,
        /// This node's clock: the write does not start from then on (the driver
        /// answers [`WRITE_DEADLINE`]): a write issued long after the read it
        /// follows could overwrite a newer holder's record.
        deadline_ms: u64,
    },
    /// Check that every disk can be opened from this node and that none holds a
    /// newer configuration than the one offered; answer with
    /// [`Event::DiskAccessChecked`].
    CheckDiskAccess {
        /// Disk names.
        disks: Vec<String>,
    },
    /// A new view is installed here: hand the membership to the data plane.
    ViewChanged {
        /// The view.
        view: View,
    },
    /// This node is out of the cluster: fail I/O in progress to shared disks and
    /// stop accessing them.
    LeaveCluster {
        /// Why.
        reason: String,
    },
    /// A failpoint is reached: a driver configured to exit here exits at once.
    Failpoint(&'static str),
    /// A line for the operator's log (the master logs every failed transaction).
    Log {
        /// Severity.
        level: log::Level,
        /// The line.
        message: String,
    },
    /// The clean shutdown may proceed (no reconfiguration in progress).
    ShutdownReady,
    /// Resync fence: quiesce `volume` (its host I/O parked, in-flight I/O drained)
    /// on this node's data plane; answer with [`Event::Quiesced`]. A volume the data
    /// plane does not serve is Ok.
    Quiesce {
        /// Disk group.
        dg: String,
        /// Volume.
        volume: String,
        /// The fence (echoed in the event).
        token: FenceToken,
    },
    /// Resume `volume`'s I/O after a fence (no answer; a volume not quiesced or
    /// not served is no error).
    Resume {
        /// Disk group.
        dg: String,
        /// Volume.
        volume: String,
    },
    /// Master: copy `pieces` of `volume` from an ACTIVE plex to SYNCING `plex`
    /// (every member holds a fence); answer with [`Event::ChunkCopied`].
    CopyChunk {
        /// The fence the copy runs under (echoed in the event).
        token: FenceToken,
        /// Disk group.
        dg: String,
        /// Volume.
        volume: String,
        /// The SYNCING plex.
        plex: String,
        /// (volume offset, bytes) of each range copied under this one fence, in
        /// ascending order, disjoint: one chunk of at most [`RESYNC_CHUNK_BYTES`]
        /// in all, and at most [`MAX_CHUNK_PIECES`] pieces (small dirty ranges
        /// share a fence round).
        pieces: Vec<(u64, u64)>,
        /// This node's clock: the copy's write does not start from then on (the
        /// driver answers [`WRITE_DEADLINE`]): the master's lease when it asked,
        /// moving on with its lease as the driver last heard of it (as
        /// [`Action::WriteDisks`] with `lease_extends`).
        deadline_ms: u64,
    },
    /// Read node start `node`/`incarnation`'s sections of the dirty region logs
    /// from the disks (off the main loop; bounded), before its recovery; answer
    /// with [`Event::DirtyLogsRead`]. Asked only once that start's data plane
    /// surely stopped writing (`core::recovery`).
    ReadDirtyLogs {
        /// The read's number (echoed in the event).
        op: u64,
        /// The node whose sections these are.
        node: NodeId,
        /// Its start being recovered.
        incarnation: u64,
        /// The sections.
        sections: Vec<DirtyLogSection>,
    },
    /// Change this node's private groups (`core::private`), as one job: check the
    /// change on this node, stage `shared`'s groups and the private groups `after`
    /// in the data plane, write the private group's disks, commit; answer with
    /// [`Event::PrivateDone`]. Never asked while a shared layout is staged here.
    PrivateChange {
        /// The request (echoed in the event).
        request: RequestId,
        /// The change.
        change: M::Change,
        /// The private groups before it: the ones the driver last committed.
        before: M::Private,
        /// The private groups after it.
        after: M::Private,
        /// The shared groups as this node's earlier kernel actions leave them in
        /// the data plane (kept as they are).
        shared: M,
    },
    /// Master: a resync started, progressed or ended (for the task list).
    ResyncProgress {
        /// The plex.
        plex: SyncingPlex,
        /// Bytes copied under fences so far (of `total_bytes`).
        done_bytes: u64,
        /// Bytes the copy covers: the plex's ranges still to copy when it has
        /// some, else the volume's size.
        total_bytes: u64,
        /// Some once it ended here.
        finished: Option<ResyncEnd>,
    },
}

/// How a resync ended (`Action::ResyncProgress`, the task list's state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResyncEnd {
    /// Every chunk was copied and the plex is no longer SYNCING (`done`).
    Done,
    /// The copy stopped for no error of its own, and why (`stopped: ...`): the
    /// plex was detached or removed, or its volume; a new master copies it; a
    /// node's recovery starts it again.
    Stopped(String),
    /// The copy failed, and why (`failed: ...`).
    Failed(String),
}

impl ResyncEnd {
    /// The task list's state for it: `done`, `stopped: WHY` or `failed: WHY`.
    pub fn state(&self) -> String {
        match self {
            ResyncEnd::Done => "done".into(),
            ResyncEnd::Stopped(why) => format!("stopped: {why}"),
            ResyncEnd::Failed(why) => format!("failed: {why}"),
        }
    }
}

/// A node's role, for `cluster status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Listening for an existing cluster.
    Discovering,
    /// Reading the disks to form a new cluster.
    Forming,
    /// Joining a cluster.
    Joining,
    /// Gave up a join; retries later.
    Abandoned,
    /// Member, not master.
    Slave,
    /// Member and master.
    Master,
    /// Designated successor taking over from a lost master.
    TakingOver,
    /// Shut down.
    Stopped,
}

/// Everything `plexctl cluster status` shows about one node's view of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node's role.
    pub role: Role,
    /// The installed view, if a member.
    pub view: Option<View>,
    /// Why this node last failed to join, if it did.
    pub last_reason: Option<String>,
    /// Last failure reasons of every node known to this node.
    pub reasons: BTreeMap<NodeId, String>,
    /// The quorum disk as this node sees it (none when none is configured).
    pub quorum_disk: Option<QuorumDiskStatus>,
}

#[derive(Clone, Debug, Default)]
struct Peer {
    /// The newest start known (heard from the peer, or from a view).
    incarnation: Option<u64>,
    /// The newest start heard from the peer itself.
    heard_incarnation: Option<u64>,
    last_heard_ms: Option<u64>,
    gone: bool,
    view_id: u64,
    master: Option<NodeId>,
    member: bool,
    /// The newest heartbeat stamp heard from this start of the peer (echoed back).
    stamp_heard_ms: Option<u64>,
    /// The newest stamp of this node's that the peer echoed: the peer confirmed
    /// this node (as its master, or as a member of its view) after that time.
    confirmed_ms: Option<u64>,
    /// The newest time (this node's clock) the peer was a member of a view this
    /// node does not lead, as its heartbeats tell.
    other_cluster_ms: Option<u64>,
    /// The peer's last heartbeat said it counts the quorum disk's vote.
    disk_vote: bool,
}

#[derive(Clone, Debug)]
enum JoinStep<M> {
    Requested,
    CheckingDisks {
        join: u64,
        config: M,
        config_txn: TxnId,
    },
    Loading {
        join: u64,
        config: M,
        config_txn: TxnId,
    },
    Ready,
}

#[derive(Clone, Debug)]
enum TakeoverStep {
    /// Asking every live node for its view: the newest one is the base.
    Collecting {
        awaiting: BTreeSet<NodeId>,
        newest: View,
        outsiders: BTreeSet<NodeId>,
        /// The newest time (this node's clock) a voter last heard the lost master.
        heard_master_ms: u64,
        /// When the queries went out (answers lost in a partition are given up on).
        started_ms: u64,
        /// 0: the first round; from 1 on: the votes confirmed again after waiting
        /// out the lost master's lease (at most `MAX_TAKEOVER_ROUNDS`).
        round: u32,
    },
    /// The votes are one short: the quorum disk is being acquired; then the
    /// votes are asked for again (round + 1).
    AcquiringDisk {
        heard_master_ms: u64,
        round: u32,
        since_ms: u64,
    },
    /// A majority granted the takeover; the lost master's lease (and so every
    /// lease it capped) runs out, then the votes are confirmed again.
    WaitingLease {
        until_ms: u64,
        round: u32,
    },
    /// Reading the disks; a majority confirmed its votes at `confirmed_ms`, in
    /// answer to queries sent at `asked_ms`.
    ReadingDisks {
        confirmed_ms: u64,
        asked_ms: u64,
    },
    WritingDisks,
}

#[derive(Clone, Debug)]
enum State<M> {
    Discovering { since_ms: u64 },
    Forming,
    Joining { master: NodeId, step: JoinStep<M> },
    Abandoned { until_ms: u64 },
    Member,
    TakingOver { step: TakeoverStep },
    Stopped,
}

/// The committed configuration and the transaction that produced it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Committed<M> {
    txn: TxnId,
    config: M,
}

/// The protocol state machine of one node.
#[derive(Debug)]
pub struct Node<M: ConfigModel> {
    cfg: NodeConfig,
    state: State<M>,
    view: Option<View>,
    committed: Committed<M>,
    peers: BTreeMap<NodeId, Peer>,
    /// Members of the current view this slave has seen go (for succession).
    suspected: BTreeSet<NodeId>,
    /// The designated successor (and its start) this slave waits for, after a
    /// takeover's answers showed a newer view whose successor is another node.
    awaited_successor: Option<(NodeId, Option<u64>)>,
    last_heartbeat_ms: Option<u64>,
    max_view_seen: u64,
    master: Option<txn::MasterState<M>>,
    slave_txn: Option<txn::SlaveTxn<M>>,
    /// The newest transaction this node's data plane applied as a member since it
    /// last asked to join; a slave's heartbeats tell its master (a lost
    /// [`Message::Applied`] is told again).
    applied_txn: Option<TxnId>,
    forwards: BTreeMap<RequestId, txn::Forward>,
    /// The master's record of which members failed which plex (local detach policy).
    failing: detach::FailingPlexes,
    /// The operator's word that disks are gone for good, held while this node has
    /// no majority (`core::given_up`).
    held_word: Option<given_up::HeldWord<M>>,
    /// This node's last failure (to join, or to stay a member) and when it happened
    /// (set with `note_failure`).
    last_reason: Option<String>,
    last_reason_ms: u64,
    reasons: BTreeMap<NodeId, String>,
    /// Takeover queries waiting until this node has seen the master go:
    /// (asker, master, master's incarnation); at most one per asker.
    deferred_queries: Vec<(NodeId, NodeId, u64)>,
    /// Lost masters whose leases this node stopped confirming (it answered a
    /// takeover query about them); cleared when a view is installed.
    deposed: BTreeSet<NodeId>,
    /// The takeover this node gave its vote to: (lost master, successor).
    granted: Option<(NodeId, NodeId)>,
    /// Takeover answers that granted this node their vote.
    grants: BTreeSet<NodeId>,
    /// A slave's lease: until when its master's confirmation holds (this node's clock).
    slave_lease_until_ms: Option<u64>,
    /// When this node installed its current view (the grace for a first lease).
    view_since_ms: u64,
    /// Why this node last left the cluster for want of quorum.
    quorum_reason: Option<String>,
    /// When this node asked to join (a join that hears nothing starts again).
    joining_since_ms: u64,
    /// The newest time this node, or a live peer, was last a member of a cluster.
    last_cluster_ms: Option<u64>,
    /// When this node last left a cluster.
    was_member_ms: Option<u64>,
    /// Until when the driver has recorded that this node may be a member.
    membership_recorded_until_ms: u64,
    /// The quorum disk's lease (idle when none is configured).
    qdisk: qdisk::QDisk,
    /// The master's resyncs (empty on other nodes).
    copier: resync::Copier,
    /// The resync fences this node holds.
    fences: resync::Fences,
    /// This node's private groups and the changes to them.
    private: private::Private<M>,
    /// The node-crash recovery bookkeeping (open starts, clean-stop close).
    recovery: recovery::Recovery,
    /// The external monitor's last view (none: the built-in monitor alone).
    monitor: Option<monitor::MonitorState>,
    /// The time of the event being handled (or the last one): this node's clock.
    clock_ms: u64,
    /// This node's last stall (`count_out_own_stall`): when it ran again, and how
    /// long it had not run (`cluster status` shows it for [`status::STALL_SHOWN_MS`]).
    last_stall: Option<(u64, u64)>,
    stopping: bool,
    out: Vec<Action<M>>,
}

impl<M: ConfigModel> Node<M> {
    /// A node that has just started, at `now_ms`. It listens for a cluster, joins it
    /// or, if none answers within `form_wait_ms`, forms one (reading its config from
    /// the disks).
    pub fn new(cfg: NodeConfig, now_ms: u64) -> Node<M> {
        assert!(
            cfg.nodes.iter().any(|n| n.id == cfg.me),
            "node {} is not in the node list",
            cfg.me
        );
        assert!(
            cfg.heartbeat_interval_ms > 0 && cfg.heartbeat_timeout_ms > cfg.heartbeat_interval_ms
        );
        let peers = cfg
            .nodes
            .iter()
            .filter(|n| n.id != cfg.me)
            .map(|n| (n.id, Peer::default()))
            .collect();
        // A member until `ago` before this start: its lease promises may hold
        // until a lease after that (see `NodeConfig::member_ago_at_start_ms`).
        let was_member_ms = cfg
            .member_ago_at_start_ms
            .map(|ago| now_ms.saturating_sub(ago));
        let monitor = cfg.external_monitor.then(monitor::MonitorState::initial);
        Node {
            cfg,
            state: State::Discovering { since_ms: now_ms },
            view: None,
            committed: Committed {
                txn: TxnId::default(),
                config: M::default(),
            },
            peers,
            suspected: BTreeSet::new(),
            awaited_successor: None,
            last_heartbeat_ms: None,
            max_view_seen: 0,
            master: None,
            slave_txn: None,
            applied_txn: None,
            forwards: BTreeMap::new(),
            failing: detach::FailingPlexes::default(),
            held_word: None,
            last_reason: None,
            last_reason_ms: now_ms,
            reasons: BTreeMap::new(),
            deferred_queries: Vec::new(),
            deposed: BTreeSet::new(),
            granted: None,
            grants: BTreeSet::new(),
            slave_lease_until_ms: None,
            view_since_ms: now_ms,
            quorum_reason: None,
            joining_since_ms: 0,
            last_cluster_ms: was_member_ms,
            was_member_ms,
            membership_recorded_until_ms: 0,
            qdisk: qdisk::QDisk::new(),
            copier: resync::Copier::default(),
            fences: resync::Fences::default(),
            private: private::Private::default(),
            recovery: recovery::Recovery::default(),
            monitor,
            clock_ms: now_ms,
            last_stall: None,
            stopping: false,
            out: Vec::new(),
        }
    }

    /// Feeds one event; returns the actions to carry out, in order.
    pub fn handle(&mut self, now_ms: u64, event: Event<M>) -> Vec<Action<M>> {
        assert!(self.out.is_empty());
        if matches!(self.state, State::Stopped) {
            if let Event::ClientRequest { request, .. } | Event::PlexIoError { request, .. } = event
            {
                let me = self.name(self.cfg.me);
                let err = format!("node {me}: shutting down");
                self.out.push(Action::Reply {
                    request,
                    result: Err(RequestError::new(ErrorKind::Busy, me, err)),
                });
            }
            return std::mem::take(&mut self.out);
        }
        self.count_out_own_stall(now_ms);
        self.clock_ms = self.clock_ms.max(now_ms);
        self.record_membership(now_ms);
        match event {
            Event::Tick => self.on_tick(now_ms),
            Event::Message { from, msg } => self.on_message(now_ms, from, msg),
            Event::ConnectionLost { peer } => {
                // A view can teach this node of a peer's newer start before the
                // loss of the older start's connection arrives: that loss is stale.
                let stale = self.peers.get(&peer).is_some_and(|p| {
                    p.heard_incarnation
                        .is_some_and(|h| p.incarnation.is_some_and(|i| h < i))
                });
                if !stale {
                    self.on_peer_gone(now_ms, peer, "connection lost");
                }
            }
            Event::ClientRequest { request, change } if M::is_private(self.private(), &change) => {
                self.on_private_request(request, change)
            }
            Event::ClientRequest { request, change } => {
                self.on_client_request(now_ms, request, Request::Change(change))
            }
            Event::PrivateDone { request, result } => self.on_private_done(request, result),
            Event::PlexIoError {
                request,
                volume,
                plex,
                ranges,
            } => self.on_client_request(
                now_ms,
                request,
                Request::DetachPlex {
                    volume,
                    plex,
                    ranges,
                },
            ),
            Event::LocalCheckDone { txn, result } => {
                let result = result.and_then(|()| self.private_check(txn));
                self.on_local_check_done(now_ms, txn, result)
            }
            Event::KernelPrepared { txn, result } => self.on_kernel_prepared(now_ms, txn, result),
            Event::KernelCommitted { txn } => self.slave_on_kernel_committed(txn),
            Event::DiskWritten { txn, result } => self.on_disk_written(now_ms, txn, result),
            Event::DisksRead { result } => self.on_disks_read(now_ms, result),
            Event::DiskAccessChecked { refused } => self.on_disk_access_checked(now_ms, refused),
            Event::KernelLoaded { result } => self.on_kernel_loaded(now_ms, result),
            Event::QuorumDiskRead { op, result } => self.on_qdisk_read(now_ms, op, result),
            Event::QuorumDiskWritten { op, result } => self.on_qdisk_written(now_ms, op, result),
            Event::Quiesced {
                dg,
                volume,
                token,
                result,
            } => self.on_quiesced(now_ms, dg, volume, token, result),
            Event::ChunkCopied { token, result } => self.on_chunk_copied(now_ms, token, result),
            Event::DirtyLogsRead { op, results } => self.on_dirty_logs_read(op, results),
            Event::DataPlaneLost => {
                self.fences_lost();
                self.recovery_data_plane_lost(now_ms);
            }
            Event::MonitorView {
                members,
                quorate,
                detail,
            } => self.on_monitor_view(now_ms, members, quorate, detail),
            Event::Shutdown => self.stopping = true,
        }
        self.answer_takeover_queries(now_ms);
        self.maybe_finish_shutdown();
        self.qdisk_poll(now_ms);
        self.recovery_poll(now_ms);
        self.resync_poll(now_ms);
        self.fences_check(now_ms);
        self.private_poll();
        std::mem::take(&mut self.out)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.cfg.me
    }

    /// The committed configuration.
    pub fn config(&self) -> &M {
        &self.committed.config
    }

    /// The configuration transaction `txn` makes, while this node is its master
    /// and it is under way.
    pub fn master_txn_config(&self, txn: TxnId) -> Option<&M> {
        let t = self.master.as_ref()?.txn.as_ref()?;
        (t.id == txn).then_some(&t.new_config)
    }

    /// The transaction that produced the committed configuration.
    pub fn config_txn(&self) -> TxnId {
        self.committed.txn
    }

    /// The installed view, if this node is a member.
    pub fn view(&self) -> Option<&View> {
        self.view.as_ref()
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        match &self.state {
            State::Discovering { .. } => Role::Discovering,
            State::Forming => Role::Forming,
            State::Joining { .. } => Role::Joining,
            State::Abandoned { .. } => Role::Abandoned,
            State::Member if self.is_master() => Role::Master,
            State::Member => Role::Slave,
            State::TakingOver { .. } => Role::TakingOver,
            State::Stopped => Role::Stopped,
        }
    }

    /// What `cluster status` shows.
    pub fn status(&self) -> Status {
        Status {
            role: self.role(),
            view: self.view.clone(),
            last_reason: self.last_reason.clone(),
            reasons: self.reasons.clone(),
            quorum_disk: self.quorum_disk_status(),
        }
    }

    /// Whether no transaction, join or takeover is in progress on this node.
    pub fn is_idle(&self) -> bool {
        let master_idle = self.master.as_ref().is_none_or(|m| m.is_idle());
        master_idle
            && self.slave_txn.is_none()
            && matches!(
                self.state,
                State::Member
                    | State::Discovering { .. }
                    | State::Abandoned { .. }
                    | State::Stopped
            )
    }

    /// Whether a transaction is in progress here (as master or slave).
    pub fn txn_in_progress(&self) -> bool {
        self.slave_txn.is_some() || self.master.as_ref().is_some_and(|m| m.txn.is_some())
    }

    /// The name of a node, for messages people read.
    pub fn name(&self, id: NodeId) -> String {
        self.cfg
            .nodes
            .iter()
            .find(|n| n.id == id)
            .map(|n| n.name.clone())
            .unwrap_or_else(|| format!("#{id}"))
    }

    fn is_master(&self) -> bool {
        matches!(self.state, State::Member)
            && self.view.as_ref().is_some_and(|v| v.master == self.cfg.me)
    }

    fn send(&mut self, to: NodeId, msg: Message) {
        debug_assert_ne!(to, self.cfg.me);
        self.out.push(Action::Send { to, msg });
    }

    fn failpoint(&mut self, name: &'static str) {
        debug_assert!(FAILPOINTS.contains(&name));
        self.out.push(Action::Failpoint(name));
    }

    fn log(&mut self, level: log::Level, message: String) {
        log::log!(level, "{message}");
        self.out.push(Action::Log { level, message });
    }

    fn maybe_finish_shutdown(&mut self) {
        if self.stopping && !matches!(self.state, State::Stopped) {
            let busy = matches!(self.state, State::Forming | State::TakingOver { .. })
                || matches!(
                    self.state,
                    State::Joining {
                        step: JoinStep::CheckingDisks { .. }
                            | JoinStep::Loading { .. }
                            | JoinStep::Ready,
                        ..
                    }
                )
                || self.txn_in_progress()
                || self.private_running()
                || !self.forwards.is_empty()
                || self.master.as_ref().is_some_and(|m| m.join.is_some());
            let now_ms = self.clock_ms;
            if !busy && !self.recovery_close_busy(now_ms) {
                self.refuse_queued_requests();
                self.refuse_queued_private();
                self.state = State::Stopped;
                self.out.push(Action::ShutdownReady);
            }
        }
    }
}

fn truncate_reason(mut reason: String) -> String {
    if reason.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        reason.truncate(end);
    }
    reason
}
