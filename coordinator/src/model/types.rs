//! The objects of a disk group, in VxVM's terms: disks (`dm`), volumes (`v`), plexes
//! (`pl`), subdisks (`sd`), and the lookups and sizes derived from them.

use std::collections::BTreeSet;
use std::sync::Arc;

use plexd_target_api::drl;
use serde::{Deserialize, Serialize};

use super::*;

/// A disk of a disk group: VxVM's disk media record (`dm`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Disk media name, e.g. `disk01`, written in the disk's label at `disk init`.
    pub name: String,
    /// Unique disk id from the label.
    pub id: String,
    /// Device or file path on the node that added the disk.
    pub path: String,
    /// Size of the whole device.
    #[serde(rename = "size")]
    pub size_bytes: u64,
    /// Where the public region (subdisk space) starts on the device.
    pub public_offset_bytes: u64,
    /// Length of the public region.
    pub public_len_bytes: u64,
    /// Recorded failed ([`crate::model::Change::DgFailDisk`]): no node needs to find
    /// it (a joiner is not asked for it), nothing is allocated on it (a grow
    /// neither), no configuration is written to it, and its plexes are STALE.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failed: bool,
    /// While [`Disk::failed`]: the plexes on the disk that the failure made STALE,
    /// which [`crate::model::Change::DgReattachDisk`] brings back (empty otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub staled: Vec<StaledPlex>,
}

/// A plex that [`crate::model::Change::DgFailDisk`] made STALE (it took writes:
/// ACTIVE or SYNCING), kept on its failed disk's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaledPlex {
    /// Plex name.
    pub plex: String,
    /// It was ACTIVE and the failure left its volume without an ACTIVE plex: the
    /// volume was served on no node since (nothing could write it), so the plex
    /// still holds the volume's data and a reattach makes it ACTIVE again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub last_active: bool,
}

/// A disk group's whole configuration: what the private region's slots store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskGroupConfig {
    /// Disk group name, e.g. `dg1`.
    pub name: String,
    /// Unique disk group id, fixed at creation.
    pub id: String,
    /// Shared (cluster-wide) or private (one host).
    pub shared: bool,
    /// Cluster id when shared, host id when private; empty while deported.
    pub owner_id: String,
    /// Configuration sequence number: 1 at creation, +1 per applied change.
    pub seq: u64,
    /// The group's disks, in the order they were added.
    pub disks: Vec<Disk>,
    /// The group's volumes, in creation order. Each is shared (`Arc`) between the
    /// copies of the group: a change copies the group's list of pointers and only the
    /// volumes it changes (`Arc::make_mut`), so a volume it left alone is the same
    /// allocation before and after ([`DiskGroupConfig::validate_change`] and the
    /// kernel phase's desired state rely on that to look at changed volumes only).
    pub volumes: Vec<Arc<Volume>>,
    /// Shared groups: the node starts that may have left mirrors divergent (they
    /// joined and have not stopped cleanly since), sorted by node; empty for a
    /// private group. See `model::recovery`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open_nodes: Vec<OpenNode>,
    /// What a node does with a write that fails on one plex of a mirror
    /// (`plexctl dg set DG detach-policy=...`); a private group is always global.
    #[serde(default)]
    pub detach_policy: DetachPolicy,
}

/// A disk group's detach policy: what a write that fails on one plex and reaches
/// another does (docs/OPERATIONS.md, "Plex I/O errors").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DetachPolicy {
    /// The writing node holds the write and asks for a cluster-wide detach of the
    /// plex (STALE everywhere); the write then succeeds.
    #[default]
    Global,
    /// The write fails (EIO) on the node that could not write the plex, whose hosts
    /// use another path; the plex is detached only once every member of the view
    /// failed it, and is resynchronised over the failed ranges meanwhile.
    Local,
}

impl DetachPolicy {
    /// The name `plexctl` takes and prints: `global` or `local`.
    pub fn as_str(self) -> &'static str {
        match self {
            DetachPolicy::Global => "global",
            DetachPolicy::Local => "local",
        }
    }

    /// Parses [`DetachPolicy::as_str`]'s names.
    pub fn parse(s: &str) -> Option<DetachPolicy> {
        match s {
            "global" => Some(DetachPolicy::Global),
            "local" => Some(DetachPolicy::Local),
            _ => None,
        }
    }
}

/// A node start that may write a shared group's mirrored volumes and has not
/// stopped cleanly: lost without a clean stop, its mirrors are recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpenNode {
    /// Node id from the cluster file.
    pub node: u32,
    /// The node's start (its core's incarnation).
    pub incarnation: u64,
}

/// Whether a volume accepts I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VolumeState {
    /// Started: the data plane serves it.
    Enabled,
    /// Stopped: no I/O.
    Disabled,
}

/// How reads pick a plex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "policy", rename_all = "kebab-case")]
pub enum ReadPolicy {
    /// Round robin over ACTIVE plexes.
    Round,
    /// One preferred plex while it is ACTIVE, else the least busy.
    Prefer {
        /// Name of the preferred plex.
        plex: String,
    },
    /// The ACTIVE plex with the fewest reads outstanding (`least-busy`, the data
    /// plane's name too).
    #[serde(alias = "least-outstanding")]
    LeastBusy,
}

impl ReadPolicy {
    /// Parses `round`, `least-busy` or `prefer:PLEX`, as the data plane does
    /// (`plexd_target_api::volume::ReadPolicy::parse`: one spelling for both).
    pub fn parse(s: &str) -> Result<ReadPolicy, String> {
        plexd_target_api::volume::ReadPolicy::parse(s).map(ReadPolicy::from)
    }

    /// The policy as [`ReadPolicy::parse`] takes it and `plexctl print` shows it.
    pub fn name(&self) -> String {
        match self {
            ReadPolicy::Round => "round".into(),
            ReadPolicy::LeastBusy => "least-busy".into(),
            ReadPolicy::Prefer { plex } => format!("prefer:{plex}"),
        }
    }
}

/// The data plane's policy of the same name.
impl From<plexd_target_api::volume::ReadPolicy> for ReadPolicy {
    fn from(p: plexd_target_api::volume::ReadPolicy) -> ReadPolicy {
        use plexd_target_api::volume::ReadPolicy as K;
        match p {
            K::Round => ReadPolicy::Round,
            K::LeastBusy => ReadPolicy::LeastBusy,
            K::Prefer(plex) => ReadPolicy::Prefer { plex },
        }
    }
}

/// The policy as the data plane takes it (`project`).
impl From<&ReadPolicy> for plexd_target_api::volume::ReadPolicy {
    fn from(p: &ReadPolicy) -> plexd_target_api::volume::ReadPolicy {
        use plexd_target_api::volume::ReadPolicy as K;
        match p {
            ReadPolicy::Round => K::Round,
            ReadPolicy::LeastBusy => K::LeastBusy,
            ReadPolicy::Prefer { plex } => K::Prefer(plex.clone()),
        }
    }
}

/// A volume (`v`): a block device made of 1..=32 mirrored plexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// Volume name, e.g. `vol01`.
    pub name: String,
    /// Size the users see, a multiple of 512.
    #[serde(rename = "size")]
    pub size_bytes: u64,
    /// Volume state.
    pub state: VolumeState,
    /// Read policy.
    pub read_policy: ReadPolicy,
    /// The mirrors.
    pub plexes: Vec<Plex>,
    /// How hosts reach it (`plexctl export`); at most one per protocol.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exports: Vec<Export>,
    /// SCSI persistent reservations of a shared volume (registrations and the
    /// reservation held), changed by [`Change::VolPrOut`]; empty for a private
    /// volume (its node keeps them).
    #[serde(default, skip_serializing_if = "PrState::is_empty")]
    pub reservations: PrState,
    /// The dirty region log of a mirrored volume (None: no log; a node crash then
    /// costs a full resync of the volume).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<VolumeLog>,
}

/// A mirrored volume's dirty region log: one or two log subdisks (*copies*, on
/// distinct disks, laid out alike), each holding one section per node (node `n`'s
/// at `disk_offset_bytes + n × section_bytes` of the copy, see
/// [`VolumeLog::section_offset`]), in the format of `plexd_target_api::drl`
/// (docs/ONDISK.md, "Dirty region log"). The data plane marks every copy; a
/// recovery reads the union of the copies it can read.
///
/// Node ids are 1..=[`MAX_LOG_NODE_ID`] (the cluster file refuses others), so a log
/// has [`LOG_SECTIONS`] sections; section 0 is never written (no node has id 0).
/// Each copy is counted as used space of its disk like a subdisk: no subdisk or
/// other log overlaps it (`DiskGroupConfig::validate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeLog {
    /// The copies: 1..=[`MAX_LOG_COPIES`], each on its own disk.
    pub copies: Vec<LogCopy>,
    /// Length of each copy's log subdisk.
    pub len_bytes: u64,
    /// One node's section (a multiple of 4096).
    pub section_bytes: u64,
    /// Region size (a power of two).
    pub region_bytes: u64,
    /// A new id whenever the log moves or its geometry changes.
    pub log_id: u64,
}

/// Where one copy of a dirty region log lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogCopy {
    /// Disk media name of the disk holding this copy's log subdisk.
    pub disk: String,
    /// Offset of the log subdisk on the device.
    pub disk_offset_bytes: u64,
}

/// Most copies of a volume's dirty region log (`plexd_target_api::drl`).
pub const MAX_LOG_COPIES: usize = drl::MAX_LOG_COPIES;

/// Highest node id a dirty region log has a section for: the cluster file's bound
/// on node ids (`daemon::config`), so every node of a cluster has its section.
pub const MAX_LOG_NODE_ID: u32 = 64;
/// Sections in a dirty region log: one per node id 0..=[`MAX_LOG_NODE_ID`] (node
/// `n`'s is section `n`; section 0 is never written).
pub const LOG_SECTIONS: u64 = MAX_LOG_NODE_ID as u64 + 1;

impl VolumeLog {
    /// Offset on `copy`'s disk of node `node`'s section; None for a node id
    /// outside 1..=[`MAX_LOG_NODE_ID`].
    pub fn section_offset(&self, copy: &LogCopy, node: u32) -> Option<u64> {
        if !(1..=MAX_LOG_NODE_ID).contains(&node) {
            return None;
        }
        self.section_bytes
            .checked_mul(u64::from(node))
            .and_then(|o| o.checked_add(copy.disk_offset_bytes))
    }

    /// Whether a copy of the log is on disk `disk`.
    pub fn on_disk(&self, disk: &str) -> bool {
        self.copies.iter().any(|c| c.disk == disk)
    }

    /// The copies' disks, `+`-separated (`disk03+disk04`), as printed.
    pub fn disks(&self) -> String {
        let names: Vec<&str> = self.copies.iter().map(|c| c.disk.as_str()).collect();
        names.join("+")
    }

    /// Whether the log's sections track a volume of `volume_bytes`.
    pub fn holds(&self, volume_bytes: u64) -> bool {
        let regions = drl::regions_for(volume_bytes, self.region_bytes);
        regions <= drl::MAX_DRL_REGIONS && drl::section_bytes(regions) <= self.section_bytes
    }
}

/// The dirty region log `vol create` gives a mirrored volume (`--drl`,
/// `--region-size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "drl", rename_all = "kebab-case")]
pub enum LogPolicy {
    /// A log with regions of `region_bytes` (a power of two in
    /// `drl::MIN_REGION_BYTES..=drl::MAX_REGION_BYTES`) when the volume is mirrored.
    On {
        /// Region size.
        region_bytes: u64,
    },
    /// No log (`--drl off`): a node crash costs a full resync of the volume.
    Off,
}

impl Default for LogPolicy {
    fn default() -> Self {
        LogPolicy::On {
            region_bytes: drl::DEFAULT_REGION_BYTES,
        }
    }
}

impl LogPolicy {
    /// Whether this is the default policy (left out of the JSON encoding).
    pub fn is_default(&self) -> bool {
        *self == LogPolicy::default()
    }
}

///
/// A detached plex (by `plex detach` or after an I/O error) is `STALE`: VxVM's kernel
/// state DETACHED is not a separate configuration state here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PlexState {
    /// Up to date: reads and writes.
    Active,
    /// Out of date (detached): no I/O until attached and resynchronised.
    Stale,
    /// Being resynchronised from an ACTIVE plex: receives writes, serves no reads.
    Syncing,
    /// Newly added, never synchronised: no I/O until attached.
    Empty,
}

impl PlexState {
    /// True when the data plane writes to the plex (ACTIVE, SYNCING).
    pub fn takes_writes(self) -> bool {
        matches!(self, PlexState::Active | PlexState::Syncing)
    }

    /// True when the data plane may read from the plex (ACTIVE only).
    pub fn takes_reads(self) -> bool {
        self == PlexState::Active
    }

    /// The upper-case name printed by `plexctl` (`ACTIVE`, `STALE`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            PlexState::Active => "ACTIVE",
            PlexState::Stale => "STALE",
            PlexState::Syncing => "SYNCING",
            PlexState::Empty => "EMPTY",
        }
    }
}

impl VolumeState {
    /// The upper-case name printed by `plexctl`.
    pub fn as_str(self) -> &'static str {
        match self {
            VolumeState::Enabled => "ENABLED",
            VolumeState::Disabled => "DISABLED",
        }
    }
}

/// How a plex lays the volume's address space over its subdisks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum PlexLayout {
    /// Subdisks one after the other.
    Concat,
    /// `columns` columns (each a concatenation of subdisks) interleaved every
    /// `stripe_unit_bytes`.
    Stripe {
        /// Number of columns, each on its own disks.
        columns: u32,
        /// Bytes written to one column before moving to the next.
        stripe_unit_bytes: u64,
    },
}

/// A plex (`pl`): one complete copy of a volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plex {
    /// Plex name, e.g. `vol01-01`.
    pub name: String,
    /// Plex state.
    pub state: PlexState,
    /// Layout.
    pub layout: PlexLayout,
    /// Subdisks, ordered by (column, `plex_offset_bytes`).
    pub subdisks: Vec<Subdisk>,
    /// A SYNCING plex: the byte ranges `(offset, len)` of the volume still to copy
    /// (a crashed node's dirty regions), ascending and disjoint; empty: the whole
    /// plex. Empty for other states.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resync_ranges: Vec<(u64, u64)>,
    /// `dg evacuate`: the plex of the same volume this one replaces, removed by the
    /// change that makes this one ACTIVE ([`crate::model::Change::DgEvacuate`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaces: Option<String>,
}

/// A subdisk (`sd`): a contiguous extent of one disk's public region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subdisk {
    /// Subdisk name, e.g. `disk01-01`.
    pub name: String,
    /// Disk media name of the disk holding it.
    pub disk: String,
    /// Offset on the device (not relative to the public region).
    pub disk_offset_bytes: u64,
    /// Length.
    pub len_bytes: u64,
    /// Stripe column (0 for concat plexes).
    pub column: u32,
    /// Offset within the plex (concat) or within its column (stripe).
    pub plex_offset_bytes: u64,
}

/// The disk groups a node has imported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConfig {
    /// Shared and private disk groups, sorted by name.
    pub disk_groups: Vec<DiskGroupConfig>,
    /// The cluster's open node starts, sorted: those whose data plane may write shared
    /// mirrored volumes and that have not stopped cleanly (`model::recovery`). Every
    /// shared group records a copy on its disks; kept here too so that a node is open
    /// before any shared group exists. Empty for a node's private configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub open_nodes: Vec<OpenNode>,
}

/// The layout a user asks for at `vol create`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum VolumeLayout {
    /// One concat plex.
    Concat,
    /// One stripe plex.
    Stripe {
        /// Columns.
        columns: u32,
        /// Stripe unit.
        stripe_unit_bytes: u64,
    },
    /// `mirrors` concat plexes on distinct disks.
    Mirror {
        /// Number of plexes.
        mirrors: u32,
    },
    /// `mirrors` stripe plexes, no disk shared between any two columns or plexes.
    MirrorStripe {
        /// Number of plexes.
        mirrors: u32,
        /// Columns of each plex.
        columns: u32,
        /// Stripe unit.
        stripe_unit_bytes: u64,
    },
}

impl VolumeLayout {
    /// The number of plexes and the layout of each.
    pub fn plexes(self) -> (u32, PlexLayout) {
        match self {
            VolumeLayout::Concat => (1, PlexLayout::Concat),
            VolumeLayout::Stripe {
                columns,
                stripe_unit_bytes,
            } => (
                1,
                PlexLayout::Stripe {
                    columns,
                    stripe_unit_bytes,
                },
            ),
            VolumeLayout::Mirror { mirrors } => (mirrors, PlexLayout::Concat),
            VolumeLayout::MirrorStripe {
                mirrors,
                columns,
                stripe_unit_bytes,
            } => (
                mirrors,
                PlexLayout::Stripe {
                    columns,
                    stripe_unit_bytes,
                },
            ),
        }
    }
}

/// A new random 128-bit id as 32 lowercase hex digits (disk and disk group ids).
pub fn new_id() -> String {
    let value: u128 = rand::random();
    format!("{value:032x}")
}

pub(super) fn round_up(value: u64, align: u64) -> Option<u64> {
    value.checked_add(align - 1).map(|v| v / align * align)
}

/// Rounds a requested volume size up to a whole sector.
pub fn round_volume_size(size_bytes: u64) -> Option<u64> {
    round_up(size_bytes, SECTOR_BYTES)
}

impl PlexLayout {
    /// Length of one column (the whole plex for concat) needed for a volume of
    /// `volume_bytes`: rounded up to the alignment (concat) or to whole stripe rows.
    pub fn column_len_bytes(self, volume_bytes: u64) -> u64 {
        match self {
            PlexLayout::Concat => round_up(volume_bytes, ALLOC_ALIGN_BYTES).unwrap_or(u64::MAX),
            PlexLayout::Stripe {
                columns,
                stripe_unit_bytes,
            } => {
                let row = u64::from(columns).saturating_mul(stripe_unit_bytes).max(1);
                volume_bytes.div_ceil(row).saturating_mul(stripe_unit_bytes)
            }
        }
    }

    /// Number of columns (1 for concat).
    pub fn columns(self) -> u32 {
        match self {
            PlexLayout::Concat => 1,
            PlexLayout::Stripe { columns, .. } => columns,
        }
    }

    /// Checks the geometry: 1..=64 columns, stripe unit a non-zero multiple of 4 KiB.
    pub fn validate(self) -> Result<(), ConfigError> {
        if let PlexLayout::Stripe {
            columns,
            stripe_unit_bytes,
        } = self
        {
            if !(1..=MAX_COLUMNS).contains(&columns) {
                return Err(ConfigError::Invalid(format!(
                    "stripe needs 1 to {MAX_COLUMNS} columns, got {columns}"
                )));
            }
            if stripe_unit_bytes == 0 || !stripe_unit_bytes.is_multiple_of(ALLOC_ALIGN_BYTES) {
                return Err(ConfigError::Invalid(format!(
                    "stripe unit {stripe_unit_bytes} bytes must be a non-zero multiple of {ALLOC_ALIGN_BYTES}"
                )));
            }
        }
        Ok(())
    }
}

impl Plex {
    /// Length of column `column`: the sum of its subdisks (saturating: a corrupt
    /// configuration must not overflow).
    pub fn column_len_bytes(&self, column: u32) -> u64 {
        self.subdisks
            .iter()
            .filter(|sd| sd.column == column)
            .fold(0u64, |sum, sd| sum.saturating_add(sd.len_bytes))
    }

    /// Bytes of volume address space the plex covers.
    pub fn capacity_bytes(&self) -> u64 {
        match self.layout {
            PlexLayout::Concat => self.column_len_bytes(0),
            PlexLayout::Stripe { columns, .. } => (0..columns)
                .map(|c| self.column_len_bytes(c))
                .min()
                .unwrap_or(0)
                .saturating_mul(u64::from(columns)),
        }
    }

    /// Names of the disks this plex uses.
    pub fn disks(&self) -> BTreeSet<&str> {
        self.subdisks.iter().map(|sd| sd.disk.as_str()).collect()
    }
}

impl Volume {
    /// Whether a subdisk of one of its plexes, or a copy of its log, is on disk
    /// `disk` (media name).
    pub fn uses_disk(&self, disk: &str) -> bool {
        self.used_extents().any(|(d, _, _)| d == disk)
    }

    /// Its object names: its own, its plexes', its subdisks'.
    pub fn object_names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str())
            .chain(self.plexes.iter().map(|p| p.name.as_str()))
            .chain(
                self.plexes
                    .iter()
                    .flat_map(|p| &p.subdisks)
                    .map(|sd| sd.name.as_str()),
            )
    }

    /// The disk space its data uses: (disk, offset, length) of each subdisk of its
    /// plexes.
    pub fn subdisk_extents(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        self.plexes
            .iter()
            .flat_map(|p| &p.subdisks)
            .map(|sd| (sd.disk.as_str(), sd.disk_offset_bytes, sd.len_bytes))
    }

    /// The disk space it uses: (disk, offset, length) of each subdisk and of each
    /// copy of its dirty region log.
    pub fn used_extents(&self) -> impl Iterator<Item = (&str, u64, u64)> {
        let logs = self.log.iter().flat_map(|log| {
            log.copies
                .iter()
                .map(move |c| (c.disk.as_str(), c.disk_offset_bytes, log.len_bytes))
        });
        self.subdisk_extents().chain(logs)
    }

    /// A plex of this volume by name.
    pub fn plex(&self, name: &str) -> Option<&Plex> {
        self.plexes.iter().find(|p| p.name == name)
    }

    /// Number of ACTIVE plexes.
    pub fn active_plexes(&self) -> usize {
        self.plexes
            .iter()
            .filter(|p| p.state == PlexState::Active)
            .count()
    }
}

impl DiskGroupConfig {
    /// The object of the group named `name` (names are unique across volumes,
    /// plexes and subdisks), described: `subdisk d2-01 of volume v1`. A group with
    /// an index ([`super::index`]) that holds no such name is not walked.
    pub fn object_named(&self, name: &str) -> Option<String> {
        if super::index::cached(self).is_some_and(|i| !i.may_hold_name(name, &[])) {
            debug_assert_eq!(self.object_named_walked(name), None, "{name}");
            return None;
        }
        self.object_named_walked(name)
    }

    /// [`Self::object_named`] from a walk over every volume.
    fn object_named_walked(&self, name: &str) -> Option<String> {
        self.volumes.iter().find_map(|v| {
            if v.name == name {
                return Some(format!("volume {name}"));
            }
            v.plexes.iter().find_map(|p| {
                if p.name == name {
                    Some(format!("plex {name} of volume {}", v.name))
                } else {
                    p.subdisks
                        .iter()
                        .any(|sd| sd.name == name)
                        .then(|| format!("subdisk {name} of volume {}", v.name))
                }
            })
        })
    }

    /// A disk by media name.
    pub fn disk(&self, name: &str) -> Option<&Disk> {
        self.disks.iter().find(|d| d.name == name)
    }

    /// Whether disk `name` of the group is recorded failed ([`Disk::failed`]).
    pub fn disk_failed(&self, name: &str) -> bool {
        self.disk(name).is_some_and(|d| d.failed)
    }

    /// The recorded paths of the group's disks (what `ondisk::write_config` takes).
    pub fn disk_paths(&self) -> Vec<std::path::PathBuf> {
        self.disks.iter().map(|d| d.path.clone().into()).collect()
    }

    /// A volume by name.
    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.name == name).map(|v| &**v)
    }

    /// The volume at `index` for a change: a copy of its own when another copy of
    /// the group shares it ([`DiskGroupConfig::volumes`]). Panics on an index out of
    /// range, as indexing does.
    pub fn volume_mut(&mut self, index: usize) -> &mut Volume {
        Arc::make_mut(&mut self.volumes[index])
    }

    /// The volume holding plex `plex`, and the plex's index in it.
    pub fn find_plex(&self, plex: &str) -> Option<(usize, usize)> {
        self.volumes.iter().enumerate().find_map(|(vi, v)| {
            v.plexes
                .iter()
                .position(|p| p.name == plex)
                .map(|pi| (vi, pi))
        })
    }

    pub(super) fn volume_index(&self, name: &str) -> Result<usize, ConfigError> {
        self.volumes
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| not_found("volume", name, format!(" in disk group {}", self.name)))
    }

    pub(super) fn plex_index(&self, plex: &str) -> Result<(usize, usize), ConfigError> {
        self.find_plex(plex)
            .ok_or_else(|| not_found("plex", plex, format!(" in disk group {}", self.name)))
    }

    /// The configuration written to the disks when the group is deported: same
    /// objects without exports (a deport of an exported group needs `--force`, which
    /// ends them), empty owner, seq + 1.
    pub fn deported(&self) -> DiskGroupConfig {
        let mut cfg = self.clone();
        cfg.owner_id.clear();
        for v in cfg.volumes.iter_mut().filter(|v| !v.exports.is_empty()) {
            Arc::make_mut(v).exports.clear();
        }
        cfg.seq += 1;
        cfg
    }
}
