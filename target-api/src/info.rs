//! The target as a whole: its description, its events, the plex write-error policy
//! and the data-plane lease's state.

/// What the target is, as `info` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetInfo {
    /// plexd-target's version.
    pub version: String,
    /// Reactor threads.
    pub reactors: u32,
    /// Core of each reactor (`None`: not pinned).
    pub cores: Vec<Option<usize>>,
    /// Sleep policy of the reactors.
    pub poll_mode: PollMode,
    /// The buffer pool is on hugepages.
    pub hugepages: bool,
    /// The socket the API is served on (empty when not serving).
    pub socket: String,
    /// Process id.
    pub pid: u32,
    /// Plex write-error policy.
    pub detach_policy: DetachPolicy,
}

/// Whether a reactor may sleep when idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollMode {
    /// Spin for `idle_spin`, then sleep until work arrives (the default).
    Adaptive,
    /// Never sleep: pure polling, lowest latency, one full core per reactor.
    Always,
}

/// Most events buffered per subscriber before new ones are dropped (and counted).
pub const EVENT_QUEUE_DEPTH: usize = 1024;

/// Something the data plane tells its controller.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A write to a plex failed; writes held for it wait for a decision
    /// (detach the plex or fail them).
    PlexIoError {
        /// The volume.
        volume: String,
        /// The failing plex.
        plex: String,
        /// errno of the failure.
        errno: i32,
        /// `Some((offset, len))`: the write was failed with EIO, not held (the
        /// volume's `local_detach`), and its byte range may now differ between
        /// plexes. `None`: the write is held until the plex is detached.
        failed: Option<(u64, u64)>,
    },
    /// A plex changed state.
    PlexState {
        /// The volume.
        volume: String,
        /// The plex.
        plex: String,
        /// Its new state.
        state: String,
    },
    /// A backing device went away.
    DiskGone {
        /// The bdev.
        bdev: String,
        /// Why.
        reason: String,
    },
    /// The data-plane lease ran out or was revoked: I/O to these shared volumes
    /// fails until the lease is renewed.
    LeaseExpired {
        /// The shared volumes fenced.
        volumes: Vec<String>,
    },
    /// A PERSISTENT RESERVE OUT on a LUN of a shared volume, for the cluster to run
    /// (plexd-target's `frontend::scsi::pr_cluster`); answered with `prOutDone`.
    PrOut {
        /// The request id to answer.
        request: u64,
        /// The volume (the LUN's bdev).
        volume: String,
        /// Initiator port name of the I_T nexus.
        initiator: String,
        /// Relative target port of the I_T nexus.
        relative_port: u16,
        /// Service action.
        service_action: u8,
        /// Scope and type byte.
        scope_type: u8,
        /// The parameter list.
        parameters: Vec<u8>,
    },
}

/// What the target does on a plex write error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetachPolicy {
    /// Standalone: detach the failing plex locally (state STALE), then complete
    /// the held writes.
    Local,
    /// Clustered: wait for the controller (the coordinator) to change the layout.
    External,
}

/// The lease as `leaseStatus` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Never granted: shared volumes are not served.
    None,
    /// Shared volumes are served until the deadline.
    Valid,
    /// Ran out or was revoked: shared volumes are fenced.
    Expired,
}

/// The answer of `leaseStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseStatus {
    /// None, valid or expired.
    pub state: LeaseState,
    /// Time left while valid, in milliseconds; 0 otherwise.
    pub remaining_ms: u64,
    /// How often the lease ran out or was revoked since the target started.
    pub expiries: u64,
}
