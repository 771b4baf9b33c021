//! Volume layouts as a controller describes them (names and numbers, validated and
//! resolved by the data plane), and volumes as listed.

use serde::{Deserialize, Serialize};

/// Longest range one `copyRange` moves (one chunk of a plex resync; the data plane's
/// largest pool buffer).
pub const MAX_COPY_BYTES: u64 = 1 << 20;

/// Most plexes (mirrors) a volume may have.
pub const MAX_PLEXES: usize = 32;

/// Most stripe columns a plex may have.
pub const MAX_COLUMNS: usize = 64;

/// Most subdisks per column.
pub const MAX_SUBDISKS_PER_COLUMN: usize = 256;

/// A contiguous range of a bdev.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubdiskSpec {
    /// The bdev holding it.
    pub bdev: String,
    /// Start on the bdev, in bytes.
    pub offset_bytes: u64,
    /// Length in bytes.
    pub len_bytes: u64,
}

/// How a plex lays its columns out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PlexKind {
    /// One column; subdisks one after another.
    Concat,
    /// Data striped over the columns in units of `stripe_unit_bytes`.
    Stripe {
        /// Bytes per column before moving to the next column.
        stripe_unit_bytes: u64,
    },
}

/// State of a plex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PlexState {
    /// Up to date: takes reads and writes.
    Active,
    /// Out of date after an I/O error: takes neither.
    Stale,
    /// Detached by the administrator: takes neither.
    Detached,
    /// Being resynchronised: takes writes, not reads.
    Syncing,
}

impl PlexState {
    /// The name shown to users.
    pub fn as_str(self) -> &'static str {
        match self {
            PlexState::Active => "ACTIVE",
            PlexState::Stale => "STALE",
            PlexState::Detached => "DETACHED",
            PlexState::Syncing => "SYNCING",
        }
    }

    /// Parses a user-facing name (any case).
    pub fn parse(s: &str) -> Option<PlexState> {
        match s.to_ascii_uppercase().as_str() {
            "ACTIVE" => Some(PlexState::Active),
            "STALE" => Some(PlexState::Stale),
            "DETACHED" => Some(PlexState::Detached),
            "SYNCING" => Some(PlexState::Syncing),
            _ => None,
        }
    }

    /// True when the plex receives writes.
    pub fn takes_writes(self) -> bool {
        matches!(self, PlexState::Active | PlexState::Syncing)
    }
}

/// One plex: a full copy of the volume's data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlexSpec {
    /// Unique within the volume.
    pub name: String,
    /// Concat or stripe.
    pub kind: PlexKind,
    /// Columns, each a concatenation of subdisks. Concat plexes have one column.
    pub columns: Vec<Vec<SubdiskSpec>>,
    /// Current state.
    pub state: PlexState,
}

/// How reads choose among ACTIVE plexes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "policy", content = "plex", rename_all = "kebab-case")]
pub enum ReadPolicy {
    /// Rotate over ACTIVE plexes.
    Round,
    /// Always this plex while it is ACTIVE, else the least busy.
    Prefer(String),
    /// The plex with the fewest reads outstanding on this reactor; while the
    /// plexes are about equally busy, the volume is cut into one contiguous share
    /// per ACTIVE plex and a read goes to its share's plex, so each plex's cache
    /// holds its share of the volume and its reads stay within it.
    #[default]
    LeastBusy,
}

impl ReadPolicy {
    /// Parses `round`, `least-busy` or `prefer:<plex>` / `prefer <plex>`.
    pub fn parse(s: &str) -> Result<ReadPolicy, String> {
        let s = s.trim();
        match s {
            "round" => Ok(ReadPolicy::Round),
            "least-busy" | "least_busy" => Ok(ReadPolicy::LeastBusy),
            _ => match s
                .strip_prefix("prefer")
                .map(|r| r.trim_start_matches([':', ' ', '=']))
            {
                Some(p) if !p.is_empty() => Ok(ReadPolicy::Prefer(p.to_string())),
                _ => Err(format!(
                    "unknown read policy {s:?} (round, least-busy, prefer:<plex>)"
                )),
            },
        }
    }
}

/// A whole volume layout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeSpec {
    /// The volume's name (also its bdev name).
    pub name: String,
    /// Size in bytes exposed to hosts.
    pub size_bytes: u64,
    /// Mirrors.
    pub plexes: Vec<PlexSpec>,
    /// Read policy.
    #[serde(default)]
    pub read_policy: ReadPolicy,
    /// A shared volume (of a cluster's shared disk group) is served only while the
    /// data-plane lease is valid (`renewLease`); a private one
    /// (the default) never depends on the lease.
    #[serde(default)]
    pub shared: bool,
    /// This node's section of the volume's dirty region log (a mirrored volume
    /// with a log): a region is marked dirty there before any write to it is
    /// issued to the plexes ([`crate::drl`]). None: no log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<crate::drl::DirtyLogSpec>,
    /// The disk group's local detach policy: a write that fails on a plex and was
    /// done on another fails with EIO and is reported (`PlexIoError` with its
    /// range) instead of being held until the plex is detached. False (the
    /// default): held.
    #[serde(default)]
    pub local_detach: bool,
}

/// A plex as listed.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PlexInfo {
    /// Name.
    pub name: String,
    /// State on the target.
    pub state: PlexState,
    /// `concat` or `stripe`.
    pub layout: String,
    /// Usable bytes.
    pub len_bytes: u64,
    /// Subdisks per column.
    pub columns: Vec<Vec<SubdiskSpec>>,
}

/// A volume as listed.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Block size.
    pub block_size: u32,
    /// `ENABLED`, or `QUIESCED` while a prepare holds it.
    pub state: String,
    /// True when a staged layout waits for commit or abort.
    pub staged: bool,
    /// Read policy.
    pub read_policy: ReadPolicy,
    /// Plexes.
    pub plexes: Vec<PlexInfo>,
    /// Counters summed over reactors.
    pub stats: VolumeStats,
    /// I/Os in flight, parked and held, summed over reactors.
    pub inflight: u64,
    /// I/Os parked behind a closed gate.
    pub parked: u64,
    /// Writes held until a failed plex is detached.
    pub held: u64,
}

/// Per-reactor counters of one volume.
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct VolumeStats {
    /// Completed reads.
    pub read_ops: u64,
    /// Completed writes (incl. write zeroes and unmap).
    pub write_ops: u64,
    /// Other completed I/O (flush, reset).
    pub other_ops: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// I/Os completed with an error.
    pub failed_ops: u64,
    /// Reads that succeeded on another plex after a failure.
    pub read_retries: u64,
    /// Sum of latencies in ns, estimated from one I/O in plexd-target's `LATENCY_SAMPLE_EVERY`
    /// (`latency_ns_total / ops` is the mean).
    pub latency_ns_total: u64,
    /// Largest sampled latency, ns.
    pub latency_ns_max: u64,
    /// I/Os failed with `EAGAIN` (plexd-target's `RETRY_ERRNO`) because
    /// `MAX_PARKED_IOS` were parked behind the closed gate (also in `failed_ops`).
    #[serde(default)]
    pub parked_refused: u64,
    /// Writes failed with `EAGAIN` instead of being held for a plex detach:
    /// `MAX_HELD_WRITES` were held, or no detach could be queued (also in
    /// `failed_ops`).
    #[serde(default)]
    pub held_refused: u64,
    /// I/Os failed with `EAGAIN` before reaching a plex because the channel
    /// already tracked `MAX_VOLUME_IOS` (in flight or held; also in `failed_ops`).
    #[serde(default)]
    pub inflight_refused: u64,
    /// Dirty region log writes completed (init, marks, cleans) for the volume on
    /// this node (not per reactor: the volume's total).
    #[serde(default)]
    pub log_writes: u64,
    /// Writes that waited for a dirty region log write before being issued.
    #[serde(default)]
    pub log_waits: u64,
    /// Regions dirty in this node's log section as last written (a gauge).
    #[serde(default)]
    pub log_dirty_regions: u64,
    /// Writes failed with `EAGAIN` because plexd-target's `MAX_DRL_WAITING` writes
    /// already waited for the log, or its owner reactor's mailbox was full (also
    /// in `failed_ops`).
    #[serde(default)]
    pub log_refused: u64,
    /// Copies of the volume's dirty region log whose write failed while another
    /// copy took it: the data plane stopped writing them under this log spec
    /// (the volume's total, counted since the volume was created here).
    #[serde(default)]
    pub log_copy_failures: u64,
}

impl VolumeStats {
    /// Adds another reactor's counters.
    pub fn add(&mut self, o: &VolumeStats) {
        self.read_ops += o.read_ops;
        self.write_ops += o.write_ops;
        self.other_ops += o.other_ops;
        self.read_bytes += o.read_bytes;
        self.write_bytes += o.write_bytes;
        self.failed_ops += o.failed_ops;
        self.read_retries += o.read_retries;
        self.latency_ns_total += o.latency_ns_total;
        self.latency_ns_max = self.latency_ns_max.max(o.latency_ns_max);
        self.parked_refused += o.parked_refused;
        self.held_refused += o.held_refused;
        self.inflight_refused += o.inflight_refused;
        self.log_writes += o.log_writes;
        self.log_waits += o.log_waits;
        self.log_dirty_regions += o.log_dirty_regions;
        self.log_refused += o.log_refused;
        self.log_copy_failures += o.log_copy_failures;
    }
}
