//! The object model, in VxVM's terms, and the changes that move it.
//!
//! A node's [`ClusterConfig`] holds the disk groups it has imported: the cluster's
//! shared groups and its own private ones. A [`DiskGroupConfig`] is the unit stored in
//! the private regions of the group's disks (see `ondisk`): its disks (`dm`), its
//! volumes (`v`), their plexes (`pl`) and the plexes' subdisks (`sd`).
//!
//! Every configuration change is a [`Change`], applied by [`apply`] (or
//! [`ClusterConfig::apply`]), which validates it completely and returns the new
//! configuration or a [`ConfigError`] whose message names the object. Applying a change
//! to a disk group bumps its `seq` by one. Nothing here does I/O: the coordinator
//! decides where the result goes (the data plane through [`DiskGroupConfig::kernel_layout`],
//! the disks through [`Change::disk_updates`] and `ondisk`).
//!
//! Units: every offset and length is in bytes and a multiple of [`ALLOC_ALIGN_BYTES`]
//! (4 KiB) for subdisks; volume sizes are multiples of [`SECTOR_BYTES`].

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::alloc::{self, AllocError};
pub use crate::size::SECTOR_BYTES;
pub use plexd_target_api::scsi::pr::{Nexus, PrState};

/// Every subdisk's offset and length is a multiple of this, so O_DIRECT I/O on 4K-sector
/// devices stays aligned.
pub const ALLOC_ALIGN_BYTES: u64 = 4096;
/// The default stripe unit (VxVM's 128 sectors).
pub const DEFAULT_STRIPE_UNIT_BYTES: u64 = 64 << 10;
/// Most plexes (mirrors) a volume can have; the data plane's limit.
pub const MAX_PLEXES: usize = 32;
/// Most columns a stripe can have.
pub const MAX_COLUMNS: u32 = 64;
/// Fewest columns `vol create` accepts for a stripe (one column is a concat).
pub const MIN_STRIPE_COLUMNS: u32 = 2;
/// Longest object name, in bytes (VxVM's limit is 31 characters).
pub const MAX_NAME_BYTES: usize = 31;
/// Most subdisks in one column (one concat plex); the data plane's limit.
pub const MAX_SUBDISKS_PER_COLUMN: usize = 256;

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
    /// The group's volumes, in creation order.
    pub volumes: Vec<Volume>,
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
    /// One preferred plex while it is ACTIVE, else round robin.
    Prefer {
        /// Name of the preferred plex.
        plex: String,
    },
    /// The ACTIVE plex with the fewest reads outstanding.
    LeastOutstanding,
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
}

/// The protocol of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportProtocol {
    /// iSCSI: one target per export, the volume as its LUN 0.
    Iscsi,
    /// NVMe-oF/TCP: one NVM subsystem per export, the volume as its namespace 1.
    Nvmf,
}

impl ExportProtocol {
    /// The name `plexctl` and the on-disk format use.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportProtocol::Iscsi => "iscsi",
            ExportProtocol::Nvmf => "nvmf",
        }
    }

    /// Parses [`ExportProtocol::as_str`].
    pub fn parse(s: &str) -> Option<ExportProtocol> {
        match s {
            "iscsi" => Some(ExportProtocol::Iscsi),
            "nvmf" => Some(ExportProtocol::Nvmf),
            _ => None,
        }
    }
}

/// A volume exported to hosts by some or all nodes. Every node exporting it presents
/// the same target name and device identifiers (multipath).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    /// Protocol.
    pub protocol: ExportProtocol,
    /// The target name: an iSCSI qualified name (`iscsi`) or the NVM subsystem's
    /// NQN (`nvmf`); unique in the cluster.
    pub iqn: String,
    /// The nodes serving it, by name; empty = every node.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// `address:port` to serve it on; empty = each node's portal from the cluster
    /// file (`nvmf`: always empty, each node's `nvmf_portal`).
    #[serde(default)]
    pub portal: String,
    /// `nvmf`: the host NQNs allowed to connect; empty = any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// The NQN of the discovery subsystem, which no export may take.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Checks an NVMe qualified name (a subsystem's or a host's):
/// `nqn.YYYY-MM.reversed.domain:anything`, at most 223 bytes of printable ASCII
/// without spaces; `what` names it in the error.
pub fn validate_nqn(what: &str, nqn: &str) -> Result<(), ConfigError> {
    let form_ok = nqn.strip_prefix("nqn.").is_some_and(|rest| {
        let b = rest.as_bytes();
        b.len() > 8
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[5..7].iter().all(u8::is_ascii_digit)
            && b[7] == b'.'
    });
    let chars_ok = nqn.bytes().all(|c| c.is_ascii_graphic());
    if nqn.len() > MAX_IQN_BYTES || !form_ok || !chars_ok || nqn == DISCOVERY_NQN {
        return Err(ConfigError::Invalid(format!(
            "{what} {nqn:?} is invalid: use nqn.YYYY-MM.reversed.domain:name (printable ASCII without spaces, at most {MAX_IQN_BYTES} bytes, not the discovery NQN)"
        )));
    }
    Ok(())
}

/// Most host NQNs one NVMe-oF export may allow.
pub const MAX_EXPORT_HOSTS: usize = 64;

impl Export {
    /// Checks the export's names as its protocol wants them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.protocol {
            ExportProtocol::Iscsi => {
                validate_iqn(&self.iqn)?;
                if !self.hosts.is_empty() {
                    return Err(ConfigError::Invalid(
                        "an iSCSI export takes no host NQNs (--host is for nvmf)".into(),
                    ));
                }
            }
            ExportProtocol::Nvmf => {
                validate_nqn("subsystem NQN", &self.iqn)?;
                if !self.portal.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "an NVMe-oF export is served on each node's nvmf_portal, not on {}",
                        self.portal
                    )));
                }
                if self.hosts.len() > MAX_EXPORT_HOSTS {
                    return Err(ConfigError::Invalid(format!(
                        "{} host NQNs: at most {MAX_EXPORT_HOSTS}",
                        self.hosts.len()
                    )));
                }
                for h in &self.hosts {
                    validate_nqn("host NQN", h)?;
                }
            }
        }
        Ok(())
    }
}

/// Longest iSCSI name (RFC 7143: 223 bytes).
pub const MAX_IQN_BYTES: usize = 223;
/// Longest initiator port name a reservation records (`<iqn>,i,0x<ISID>`).
pub const MAX_NEXUS_NAME_BYTES: usize = MAX_IQN_BYTES + 32;

/// Checks an iSCSI name: `iqn.YYYY-MM.reversed.domain[:anything]`, `eui.` or `naa.`
/// followed by hex digits; lowercase letters, digits, '.', '-', ':'.
pub fn validate_iqn(iqn: &str) -> Result<(), ConfigError> {
    let chars_ok = iqn
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | ':'));
    let form_ok = if let Some(rest) = iqn.strip_prefix("iqn.") {
        let date = rest.get(..7).unwrap_or("");
        let b = date.as_bytes();
        date.len() == 7
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[5..].iter().all(u8::is_ascii_digit)
            && rest.len() > 8
            && rest.as_bytes()[7] == b'.'
    } else if let Some(hex) = iqn.strip_prefix("eui.") {
        hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit())
    } else if let Some(hex) = iqn.strip_prefix("naa.") {
        matches!(hex.len(), 16 | 32) && hex.chars().all(|c| c.is_ascii_hexdigit())
    } else {
        false
    };
    if iqn.len() > MAX_IQN_BYTES || !chars_ok || !form_ok {
        return Err(ConfigError::Invalid(format!(
            "iSCSI name {iqn:?} is invalid: use iqn.YYYY-MM.reversed.domain[:name] (lowercase letters, digits, '.', '-', ':'; at most {MAX_IQN_BYTES} bytes)"
        )));
    }
    Ok(())
}

/// The state of a plex.
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

/// A configuration change. `InitDisk` is not one: `disk init` only writes a label
/// (`ondisk::init_disk`) and belongs to no disk group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Change {
    /// `dg create [--shared]`: a new group with at least one initialised disk.
    DgCreate {
        /// New group name.
        dg: String,
        /// New group id (see [`new_id`]).
        dg_id: String,
        /// Shared or private.
        shared: bool,
        /// Cluster id (shared) or host id (private).
        owner_id: String,
        /// The disks, as read from their labels.
        disks: Vec<Disk>,
    },
    /// `dg add-disk`.
    DgAddDisk {
        /// Group.
        dg: String,
        /// The disk, as read from its label.
        disk: Disk,
    },
    /// `dg rm-disk`: the disk must hold no subdisk and not be the last one.
    DgRmDisk {
        /// Group.
        dg: String,
        /// Disk media name.
        disk: String,
    },
    /// `dg destroy`: the group and its volumes are gone; the disks are released.
    /// Refused while a volume is exported unless `force` (which ends the exports);
    /// every node also refuses it while a host session uses a volume (local check).
    DgDestroy {
        /// Group.
        dg: String,
        /// `--force`: end the volumes' exports too.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    /// `dg deport`: the node (or cluster) gives the group up; its disks keep the
    /// configuration with an empty owner (see [`DiskGroupConfig::deported`]). Refused
    /// while exported unless `force`, like [`Change::DgDestroy`].
    DgDeport {
        /// Group.
        dg: String,
        /// `--force`: end the volumes' exports too.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    /// `dg import`: takes a group read from its disks (`ondisk::read_config`).
    DgImport {
        /// The configuration found on the disks.
        config: DiskGroupConfig,
        /// Import as shared or private.
        shared: bool,
        /// Cluster id (shared) or host id (private).
        owner_id: String,
    },
    /// `vol create`.
    VolCreate {
        /// Group.
        dg: String,
        /// New volume name.
        volume: String,
        /// Requested size; rounded up to a multiple of 512.
        size_bytes: u64,
        /// Requested layout.
        layout: VolumeLayout,
    },
    /// `vol grow`: every plex is extended.
    VolGrow {
        /// Group.
        dg: String,
        /// Volume.
        volume: String,
        /// New size, larger than the current one; rounded up to a multiple of 512.
        new_size_bytes: u64,
    },
    /// `vol shrink`: every plex is cut from the end (the data beyond the new size is
    /// lost).
    VolShrink {
        /// Group.
        dg: String,
        /// Volume.
        volume: String,
        /// New size, smaller than the current one and larger than 0; rounded up to a
        /// multiple of 512.
        new_size_bytes: u64,
    },
    /// Sets a volume's read policy.
    VolSetReadPolicy {
        /// Group.
        dg: String,
        /// Volume.
        volume: String,
        /// New policy; `Prefer` must name one of the volume's plexes.
        policy: ReadPolicy,
    },
    /// `vol rm`.
    VolRm {
        /// Group.
        dg: String,
        /// Volume.
        volume: String,
    },
    /// `plex add`: a new EMPTY plex on disks the volume does not use yet.
    PlexAdd {
        /// Group.
        dg: String,
        /// Volume.
        volume: String,
        /// Layout of the new plex.
        layout: PlexLayout,
    },
    /// `plex detach`: ACTIVE or SYNCING → STALE; never the last ACTIVE plex.
    PlexDetach {
        /// Group.
        dg: String,
        /// Plex name.
        plex: String,
    },
    /// `plex attach`: STALE or EMPTY → SYNCING (the resync then sets it ACTIVE).
    PlexAttach {
        /// Group.
        dg: String,
        /// Plex name.
        plex: String,
    },
    /// `plex rm`: never the last ACTIVE plex; an ACTIVE plex (a working mirror) only
    /// with `force`.
    PlexRm {
        /// Group.
        dg: String,
        /// Plex name.
        plex: String,
        /// `--force`: remove an ACTIVE plex (the volume loses a mirror).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    /// Sets a plex's state (resync done, I/O-error detach); never leaves a volume
    /// without an ACTIVE plex it had.
    SetPlexState {
        /// Group.
        dg: String,
        /// Plex name.
        plex: String,
        /// New state.
        state: PlexState,
    },
    /// `export`: hosts reach the volume over `export.protocol`.
    VolExport {
        /// Group.
        dg: String,
        /// Volume.
        volume: String,
        /// The export (its IQN unique in the cluster).
        export: Export,
    },
    /// `unexport`: the volume's export over `protocol` ends on every node.
    VolUnexport {
        /// Group.
        dg: String,
        /// Volume.
        volume: String,
        /// Which export.
        protocol: ExportProtocol,
    },
    /// A host's PERSISTENT RESERVE OUT on a shared volume, sent by the data plane of
    /// the node it reached: [`PrState::out`] on the volume's reservations. Refused
    /// (kind Refused) unless it changes them: the requesting node then decides the
    /// command's outcome again on the newest state (docs/ISCSI.md).
    VolPrOut {
        /// Group (shared).
        dg: String,
        /// Volume.
        volume: String,
        /// The I_T nexus: initiator port and relative target port.
        nexus: Nexus,
        /// Service action.
        service_action: u8,
        /// The CDB's scope and type byte.
        scope_type: u8,
        /// The parameter list.
        parameters: Vec<u8>,
    },
}

impl Change {
    /// The disk group the change is about.
    pub fn dg_name(&self) -> &str {
        match self {
            Change::DgImport { config, .. } => &config.name,
            Change::DgCreate { dg, .. }
            | Change::DgAddDisk { dg, .. }
            | Change::DgRmDisk { dg, .. }
            | Change::DgDestroy { dg, .. }
            | Change::DgDeport { dg, .. }
            | Change::VolCreate { dg, .. }
            | Change::VolGrow { dg, .. }
            | Change::VolShrink { dg, .. }
            | Change::VolSetReadPolicy { dg, .. }
            | Change::VolRm { dg, .. }
            | Change::PlexAdd { dg, .. }
            | Change::PlexDetach { dg, .. }
            | Change::PlexAttach { dg, .. }
            | Change::PlexRm { dg, .. }
            | Change::SetPlexState { dg, .. }
            | Change::VolExport { dg, .. }
            | Change::VolUnexport { dg, .. }
            | Change::VolPrOut { dg, .. } => dg,
        }
    }

    /// Disks that every node must be able to open before the change is accepted
    /// (the slaves' check in step 2 of the transaction).
    pub fn new_disks(&self) -> Vec<&Disk> {
        match self {
            Change::DgCreate { disks, .. } => disks.iter().collect(),
            Change::DgAddDisk { disk, .. } => vec![disk],
            Change::DgImport { config, .. } => config.disks.iter().collect(),
            _ => Vec::new(),
        }
    }

    /// What the commit must write to disks, given the configurations before and after
    /// [`apply`]: the new group configuration (on all its disks), or disks to release.
    pub fn disk_updates(&self, before: &ClusterConfig, after: &ClusterConfig) -> Vec<DiskUpdate> {
        let name = self.dg_name();
        let old = before.disk_group(name);
        let mut updates = Vec::new();
        match self {
            Change::DgDestroy { .. } => {
                if let Some(old) = old {
                    updates.extend(old.disks.iter().cloned().map(DiskUpdate::Release));
                }
            }
            Change::DgDeport { .. } => {
                if let Some(old) = old {
                    updates.push(DiskUpdate::WriteConfig(old.deported()));
                }
            }
            _ => {
                if let Some(new) = after.disk_group(name) {
                    updates.push(DiskUpdate::WriteConfig(new.clone()));
                }
                if let (Change::DgRmDisk { disk, .. }, Some(old)) = (self, old) {
                    if let Some(d) = old.disk(disk) {
                        updates.push(DiskUpdate::Release(d.clone()));
                    }
                }
            }
        }
        updates
    }
}

/// A write the commit of a change makes to disks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskUpdate {
    /// Write this configuration (seq = `config.seq`) to every disk of the group,
    /// updating labels whose disk group fields differ.
    WriteConfig(DiskGroupConfig),
    /// Clear the disk's disk group fields and slots (`ondisk::release_disk`).
    Release(Disk),
}

/// Why a change or a configuration was refused. Messages name the object.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// A named object does not exist.
    #[error("{kind} {name} does not exist{context}")]
    NotFound {
        /// `disk group`, `volume`, `plex`, `disk`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Where it was looked for, e.g. ` in disk group dg1` (may be empty).
        context: String,
    },
    /// An object of that name or id exists already.
    #[error("{0}")]
    Exists(String),
    /// A shared group was requested where a private one of that name exists (or the
    /// reverse); the slaves' check.
    #[error("disk group {name} exists as a {existing} disk group")]
    DgExistsOtherKind {
        /// Group name.
        name: String,
        /// `private` or `shared`.
        existing: &'static str,
    },
    /// The change would detach or remove the last ACTIVE plex of a volume.
    #[error("plex {plex}: cannot {action} the last ACTIVE plex of volume {volume}")]
    LastActivePlex {
        /// Volume.
        volume: String,
        /// Plex.
        plex: String,
        /// `detach`, `remove`, `set STALE`...
        action: String,
    },
    /// An object is in use.
    #[error("{0}")]
    InUse(String),
    /// The layout cannot be placed on the group's free space.
    #[error(transparent)]
    NoSpace(#[from] AllocError),
    /// Anything else that is malformed (bad name, zero size, bad state transition,
    /// inconsistent configuration).
    #[error("{0}")]
    Invalid(String),
}

fn not_found(kind: &'static str, name: &str, context: String) -> ConfigError {
    ConfigError::NotFound {
        kind,
        name: name.to_string(),
        context,
    }
}

/// Checks an object name: 1..=31 bytes of `[A-Za-z0-9._-]`, starting with a letter or
/// digit.
pub fn validate_name(kind: &str, name: &str) -> Result<(), ConfigError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let ok_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > MAX_NAME_BYTES || !ok_chars || !ok_start {
        return Err(ConfigError::Invalid(format!(
            "{kind} name {name:?} is invalid: use 1 to {MAX_NAME_BYTES} letters, digits, '.', '_' or '-', starting with a letter or digit"
        )));
    }
    Ok(())
}

/// A new random 128-bit id as 32 lowercase hex digits (disk and disk group ids).
pub fn new_id() -> String {
    let value: u128 = rand::random();
    format!("{value:032x}")
}

fn round_up(value: u64, align: u64) -> Option<u64> {
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

    /// The next free plex name, `<volume>-NN`.
    pub fn next_plex_name(&self) -> String {
        (1..)
            .map(|n| format!("{}-{n:02}", self.name))
            .find(|candidate| self.plex(candidate).is_none())
            .unwrap_or_default()
    }
}

impl DiskGroupConfig {
    /// A disk by media name.
    pub fn disk(&self, name: &str) -> Option<&Disk> {
        self.disks.iter().find(|d| d.name == name)
    }

    /// The recorded paths of the group's disks (what `ondisk::write_config` takes).
    pub fn disk_paths(&self) -> Vec<std::path::PathBuf> {
        self.disks.iter().map(|d| d.path.clone().into()).collect()
    }

    /// A volume by name.
    pub fn volume(&self, name: &str) -> Option<&Volume> {
        self.volumes.iter().find(|v| v.name == name)
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

    fn volume_index(&self, name: &str) -> Result<usize, ConfigError> {
        self.volumes
            .iter()
            .position(|v| v.name == name)
            .ok_or_else(|| not_found("volume", name, format!(" in disk group {}", self.name)))
    }

    fn plex_index(&self, plex: &str) -> Result<(usize, usize), ConfigError> {
        self.find_plex(plex)
            .ok_or_else(|| not_found("plex", plex, format!(" in disk group {}", self.name)))
    }

    /// The configuration written to the disks when the group is deported: same
    /// objects without exports (a deport of an exported group needs `--force`, which
    /// ends them), empty owner, seq + 1.
    pub fn deported(&self) -> DiskGroupConfig {
        let mut cfg = self.clone();
        cfg.owner_id.clear();
        for v in &mut cfg.volumes {
            v.exports.clear();
        }
        cfg.seq += 1;
        cfg
    }

    /// Checks every invariant: names valid and unique, subdisks inside their disk's
    /// public region and not overlapping, aligned, columns contiguous and long enough,
    /// plexes of a volume (and columns of a stripe) on distinct disks, at least one
    /// disk.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| {
            Err(ConfigError::Invalid(format!(
                "disk group {}: {msg}",
                self.name
            )))
        };
        validate_name("disk group", &self.name)?;
        if self.disks.is_empty() {
            return invalid("has no disks".into());
        }
        let mut names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for d in &self.disks {
            validate_name("disk", &d.name)?;
            if !names.insert(d.name.as_str()) || !ids.insert(d.id.as_str()) {
                return invalid(format!("disk {} (id {}) appears twice", d.name, d.id));
            }
            let end = d.public_offset_bytes.checked_add(d.public_len_bytes);
            if !matches!(end, Some(end) if end <= d.size_bytes) {
                return invalid(format!(
                    "disk {}: public region beyond the end of the disk",
                    d.name
                ));
            }
        }
        let mut extents: Vec<(&str, u64, u64, &str)> = Vec::new();
        let mut object_names = BTreeSet::new();
        for v in &self.volumes {
            validate_name("volume", &v.name)?;
            if !object_names.insert(v.name.as_str()) {
                return invalid(format!("name {} used twice", v.name));
            }
            if v.size_bytes == 0 || !v.size_bytes.is_multiple_of(SECTOR_BYTES) {
                return invalid(format!(
                    "volume {}: size {} is not a positive multiple of 512",
                    v.name, v.size_bytes
                ));
            }
            if v.plexes.is_empty() || v.plexes.len() > MAX_PLEXES {
                return invalid(format!(
                    "volume {}: has {} plexes (1 to {MAX_PLEXES} allowed)",
                    v.name,
                    v.plexes.len()
                ));
            }
            let mut volume_disks = BTreeSet::new();
            for p in &v.plexes {
                validate_name("plex", &p.name)?;
                if !object_names.insert(p.name.as_str()) {
                    return invalid(format!("name {} used twice", p.name));
                }
                p.layout.validate()?;
                let columns = p.layout.columns();
                let mut plex_disks = BTreeSet::new();
                for c in 0..columns {
                    let mut expected_offset = 0;
                    let mut column_disks = BTreeSet::new();
                    let count = p.subdisks.iter().filter(|sd| sd.column == c).count();
                    if count > MAX_SUBDISKS_PER_COLUMN {
                        return invalid(format!(
                            "plex {}: column {c} has {count} subdisks, at most {MAX_SUBDISKS_PER_COLUMN}",
                            p.name
                        ));
                    }
                    for sd in p.subdisks.iter().filter(|sd| sd.column == c) {
                        if sd.plex_offset_bytes != expected_offset {
                            return invalid(format!(
                                "plex {}: subdisk {} is not contiguous in column {c}",
                                p.name, sd.name
                            ));
                        }
                        let Some(next) = expected_offset.checked_add(sd.len_bytes) else {
                            return invalid(format!("plex {}: column {c} overflows", p.name));
                        };
                        expected_offset = next;
                        column_disks.insert(sd.disk.as_str());
                    }
                    if !column_disks.is_disjoint(&plex_disks) {
                        return invalid(format!("plex {}: two columns share a disk", p.name));
                    }
                    plex_disks.extend(column_disks);
                }
                if let Some(sd) = p.subdisks.iter().find(|sd| sd.column >= columns) {
                    return invalid(format!(
                        "plex {}: subdisk {} in column {} of {columns}",
                        p.name, sd.name, sd.column
                    ));
                }
                if !plex_disks.is_disjoint(&volume_disks) {
                    return invalid(format!(
                        "volume {}: plex {} shares a disk with another plex",
                        v.name, p.name
                    ));
                }
                volume_disks.extend(plex_disks);
                if p.capacity_bytes() < v.size_bytes {
                    return invalid(format!(
                        "plex {}: holds {} bytes, volume {} needs {}",
                        p.name,
                        p.capacity_bytes(),
                        v.name,
                        v.size_bytes
                    ));
                }
                for sd in &p.subdisks {
                    validate_name("subdisk", &sd.name)?;
                    if !object_names.insert(sd.name.as_str()) {
                        return invalid(format!("name {} used twice", sd.name));
                    }
                    let Some(d) = self.disk(&sd.disk) else {
                        return invalid(format!(
                            "subdisk {}: disk {} is not in the group",
                            sd.name, sd.disk
                        ));
                    };
                    let aligned = sd.disk_offset_bytes.is_multiple_of(ALLOC_ALIGN_BYTES)
                        && sd.len_bytes.is_multiple_of(ALLOC_ALIGN_BYTES)
                        && sd.len_bytes > 0;
                    let inside = sd.disk_offset_bytes >= d.public_offset_bytes
                        && sd
                            .disk_offset_bytes
                            .checked_add(sd.len_bytes)
                            .is_some_and(|end| end <= d.public_offset_bytes + d.public_len_bytes);
                    if !aligned || !inside {
                        return invalid(format!("subdisk {}: extent {}+{} is unaligned or outside disk {}'s public region", sd.name, sd.disk_offset_bytes, sd.len_bytes, d.name));
                    }
                    extents.push((
                        sd.disk.as_str(),
                        sd.disk_offset_bytes,
                        sd.len_bytes,
                        sd.name.as_str(),
                    ));
                }
            }
        }
        extents.sort();
        for pair in extents.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.0 == b.0 && a.1 + a.2 > b.1 {
                return invalid(format!(
                    "subdisks {} and {} overlap on disk {}",
                    a.3, b.3, a.0
                ));
            }
        }
        Ok(())
    }

    /// The view the data plane needs: per volume, per plex, the extents on devices and
    /// the stripe geometry.
    pub fn kernel_layout(&self) -> Vec<KernelVolume> {
        self.volumes.iter().map(|v| self.kernel_volume(v)).collect()
    }

    /// [`kernel_layout`](Self::kernel_layout) for one volume.
    pub fn kernel_volume(&self, volume: &Volume) -> KernelVolume {
        let plexes = volume
            .plexes
            .iter()
            .map(|p| {
                let columns = (0..p.layout.columns())
                    .map(|c| {
                        p.subdisks
                            .iter()
                            .filter(|sd| sd.column == c)
                            .map(|sd| {
                                let disk = self.disk(&sd.disk);
                                KernelExtent {
                                    subdisk: sd.name.clone(),
                                    disk_id: disk.map(|d| d.id.clone()).unwrap_or_default(),
                                    disk_path: disk.map(|d| d.path.clone()).unwrap_or_default(),
                                    offset_bytes: sd.disk_offset_bytes,
                                    len_bytes: sd.len_bytes,
                                }
                            })
                            .collect()
                    })
                    .collect();
                KernelPlex {
                    name: p.name.clone(),
                    state: p.state,
                    stripe_unit_bytes: match p.layout {
                        PlexLayout::Concat => None,
                        PlexLayout::Stripe {
                            stripe_unit_bytes, ..
                        } => Some(stripe_unit_bytes),
                    },
                    columns,
                }
            })
            .collect();
        KernelVolume {
            dg: self.name.clone(),
            name: volume.name.clone(),
            size_bytes: volume.size_bytes,
            state: volume.state,
            read_policy: volume.read_policy.clone(),
            plexes,
        }
    }
}

/// A volume as the data plane builds it: subdisk(bdev, offset, length) → plex(concat |
/// stripe) → volume(plexes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelVolume {
    /// Disk group name.
    pub dg: String,
    /// Volume name.
    pub name: String,
    /// Size.
    pub size_bytes: u64,
    /// Volume state.
    pub state: VolumeState,
    /// Read policy.
    pub read_policy: ReadPolicy,
    /// Plexes (all states; the data plane writes to ACTIVE and SYNCING ones and reads
    /// from ACTIVE ones; STALE and EMPTY get no I/O — the target's STALE/DETACHED).
    pub plexes: Vec<KernelPlex>,
}

/// A plex as the data plane builds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelPlex {
    /// Plex name.
    pub name: String,
    /// Plex state.
    pub state: PlexState,
    /// `None` for concat, the stripe unit for stripe.
    pub stripe_unit_bytes: Option<u64>,
    /// Columns (one for concat), each a concatenation of extents in order.
    pub columns: Vec<Vec<KernelExtent>>,
}

/// A subdisk as the data plane builds it: a range of a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelExtent {
    /// Subdisk name.
    pub subdisk: String,
    /// Disk id (from the label).
    pub disk_id: String,
    /// Device path recorded in the configuration.
    pub disk_path: String,
    /// Offset on the device.
    pub offset_bytes: u64,
    /// Length.
    pub len_bytes: u64,
}

impl ClusterConfig {
    /// A disk group by name.
    pub fn disk_group(&self, name: &str) -> Option<&DiskGroupConfig> {
        self.disk_groups.iter().find(|g| g.name == name)
    }

    /// Applies a change; see [`apply`].
    pub fn apply(&self, change: &Change) -> Result<ClusterConfig, ConfigError> {
        apply(self, change)
    }

    /// The (disk group, volume) exported under `iqn`, if any.
    pub fn exported_as(&self, iqn: &str) -> Option<(&str, &str)> {
        self.disk_groups.iter().find_map(|g| {
            g.volumes
                .iter()
                .find(|v| v.exports.iter().any(|e| e.iqn == iqn))
                .map(|v| (g.name.as_str(), v.name.as_str()))
        })
    }

    /// Paths of the disks of the shared disk groups: a joining node must open every
    /// one.
    pub fn shared_disk_paths(&self) -> Vec<String> {
        self.disk_groups
            .iter()
            .filter(|g| g.shared)
            .flat_map(|g| g.disks.iter().map(|d| d.path.clone()))
            .collect()
    }

    /// The change that detaches `plex` of `volume` after an I/O error (global detach
    /// policy): `Ok(None)` when the plex already gets no I/O (STALE or EMPTY), an error
    /// when it is the volume's last ACTIVE plex or does not exist.
    pub fn detach_change(&self, volume: &str, plex: &str) -> Result<Option<Change>, ConfigError> {
        let found = self.disk_groups.iter().find_map(|g| {
            g.volume(volume).and_then(|v| {
                v.plexes
                    .iter()
                    .position(|p| p.name == plex)
                    .map(|i| (g, v, i))
            })
        });
        let Some((g, v, index)) = found else {
            return Err(not_found("plex", plex, format!(" in volume {volume}")));
        };
        if matches!(v.plexes[index].state, PlexState::Stale | PlexState::Empty) {
            return Ok(None);
        }
        check_not_last_active(v, index, "detach")?;
        Ok(Some(Change::PlexDetach {
            dg: g.name.clone(),
            plex: plex.to_string(),
        }))
    }

    fn check_new_disks(
        &self,
        disks: &[Disk],
        in_dg: Option<&DiskGroupConfig>,
    ) -> Result<(), ConfigError> {
        let mut seen = BTreeSet::new();
        for d in disks {
            validate_name("disk", &d.name)?;
            if !seen.insert(d.id.as_str()) {
                return Err(ConfigError::Exists(format!(
                    "disk {} is listed twice",
                    d.name
                )));
            }
            if d.public_len_bytes < ALLOC_ALIGN_BYTES {
                return Err(ConfigError::Invalid(format!(
                    "disk {}: public region is empty",
                    d.name
                )));
            }
            for g in &self.disk_groups {
                if let Some(other) = g.disks.iter().find(|o| o.id == d.id) {
                    return Err(ConfigError::InUse(format!(
                        "disk {} (id {}) is already in disk group {} as {}",
                        d.name, d.id, g.name, other.name
                    )));
                }
            }
            if let Some(g) = in_dg {
                if g.disk(&d.name).is_some() {
                    return Err(ConfigError::Exists(format!(
                        "disk {} already exists in disk group {}",
                        d.name, g.name
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_dg_absent(&self, name: &str, id: &str, shared: bool) -> Result<(), ConfigError> {
        if let Some(g) = self.disk_group(name) {
            if g.shared != shared {
                return Err(ConfigError::DgExistsOtherKind {
                    name: name.to_string(),
                    existing: if g.shared { "shared" } else { "private" },
                });
            }
            return Err(ConfigError::Exists(format!(
                "disk group {name} already exists"
            )));
        }
        if let Some(g) = self.disk_groups.iter().find(|g| g.id == id) {
            return Err(ConfigError::Exists(format!(
                "disk group id {id} is already imported as {}",
                g.name
            )));
        }
        Ok(())
    }
}

/// Applies a change to a node's configuration, validating it completely. The result
/// keeps the disk groups sorted by name; the changed group's `seq` is bumped by one.
pub fn apply(config: &ClusterConfig, change: &Change) -> Result<ClusterConfig, ConfigError> {
    let mut next = config.clone();
    match change {
        Change::DgCreate {
            dg,
            dg_id,
            shared,
            owner_id,
            disks,
        } => {
            validate_name("disk group", dg)?;
            if dg_id.is_empty() {
                return Err(ConfigError::Invalid(format!("disk group {dg}: empty id")));
            }
            config.check_dg_absent(dg, dg_id, *shared)?;
            if disks.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "disk group {dg}: needs at least one disk"
                )));
            }
            config.check_new_disks(disks, None)?;
            let mut names = BTreeSet::new();
            if let Some(d) = disks.iter().find(|d| !names.insert(d.name.as_str())) {
                return Err(ConfigError::Exists(format!(
                    "disk name {} is used twice in disk group {dg}",
                    d.name
                )));
            }
            let created = DiskGroupConfig {
                name: dg.clone(),
                id: dg_id.clone(),
                shared: *shared,
                owner_id: owner_id.clone(),
                seq: 1,
                disks: disks.clone(),
                volumes: Vec::new(),
            };
            created.validate()?;
            next.disk_groups.push(created);
        }
        Change::DgImport {
            config: found,
            shared,
            owner_id,
        } => {
            config.check_dg_absent(&found.name, &found.id, *shared)?;
            config.check_new_disks(&found.disks, None)?;
            found.validate()?;
            let mut imported = found.clone();
            imported.shared = *shared;
            imported.owner_id = owner_id.clone();
            imported.seq += 1;
            next.disk_groups.push(imported);
        }
        Change::DgDestroy { dg, force } | Change::DgDeport { dg, force } => {
            let index = dg_index(config, dg)?;
            if !force {
                let what = if matches!(change, Change::DgDestroy { .. }) {
                    "destroy"
                } else {
                    "deport"
                };
                check_not_exported(&config.disk_groups[index], what)?;
            }
            next.disk_groups.remove(index);
        }
        _ => {
            let index = dg_index(config, change.dg_name())?;
            if let Change::DgAddDisk { disk, .. } = change {
                config.check_new_disks(
                    std::slice::from_ref(disk),
                    Some(&config.disk_groups[index]),
                )?;
            }
            if let Change::VolExport {
                dg, volume, export, ..
            } = change
            {
                let other = config
                    .exported_as(&export.iqn)
                    .filter(|&(g, v)| (g, v) != (dg.as_str(), volume.as_str()));
                if let Some((g, v)) = other {
                    let kind = match export.protocol {
                        ExportProtocol::Iscsi => "iSCSI name",
                        ExportProtocol::Nvmf => "NQN",
                    };
                    return Err(ConfigError::Exists(format!(
                        "{kind} {} is already the export of volume {v} of disk group {g}",
                        export.iqn
                    )));
                }
            }
            let updated = apply_dg(&config.disk_groups[index], change)?;
            next.disk_groups[index] = updated;
        }
    }
    next.disk_groups.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(next)
}

/// What a committed change did, in one line for `plexctl` (object, size, placement,
/// and any adjustment of what was asked). `after` is the change's disk group as it
/// is now, when it still exists.
pub fn describe(change: &Change, after: Option<&DiskGroupConfig>) -> String {
    use crate::size::format_size;
    let placement = |v: &Volume| -> String {
        v.plexes
            .iter()
            .map(|p| {
                let disks: Vec<&str> = p.disks().into_iter().collect();
                let layout = match p.layout {
                    PlexLayout::Concat => "concat".to_string(),
                    PlexLayout::Stripe {
                        columns,
                        stripe_unit_bytes,
                    } => format!(
                        "stripe {columns} columns x {}",
                        format_size(stripe_unit_bytes)
                    ),
                };
                format!(
                    "{} {} {layout} on {}",
                    p.name,
                    p.state.as_str(),
                    disks.join("+")
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let volume = |name: &str| after.and_then(|g| g.volume(name));
    let rounded = |asked: u64, got: u64| {
        if asked == got {
            String::new()
        } else {
            format!(" ({asked} bytes asked, rounded up to whole {SECTOR_BYTES}-byte sectors)")
        }
    };
    let dg = change.dg_name();
    match change {
        Change::DgCreate { shared, disks, .. } => format!(
            "disk group {dg} created ({}) on disks {}",
            if *shared { "shared" } else { "private" },
            disks
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Change::DgImport { shared, .. } => format!(
            "disk group {dg} imported ({})",
            if *shared { "shared" } else { "private" }
        ),
        Change::DgAddDisk { disk, .. } => format!(
            "disk {} added to disk group {dg} ({} free)",
            disk.name,
            format_size(disk.public_len_bytes)
        ),
        Change::DgRmDisk { disk, .. } => format!("disk {disk} removed from disk group {dg}"),
        Change::DgDestroy { force, .. } => format!(
            "disk group {dg} destroyed, its disks released{}",
            if *force { " (its exports ended)" } else { "" }
        ),
        Change::DgDeport { force, .. } => format!(
            "disk group {dg} deported{}",
            if *force { " (its exports ended)" } else { "" }
        ),
        Change::VolCreate {
            volume: name,
            size_bytes,
            ..
        } => match volume(name) {
            Some(v) => format!(
                "volume {name} created in disk group {dg}: {}{}: {}",
                format_size(v.size_bytes),
                rounded(*size_bytes, v.size_bytes),
                placement(v)
            ),
            None => format!("volume {name} created in disk group {dg}"),
        },
        Change::VolGrow {
            volume: name,
            new_size_bytes,
            ..
        }
        | Change::VolShrink {
            volume: name,
            new_size_bytes,
            ..
        } => {
            let verb = if matches!(change, Change::VolGrow { .. }) {
                "grown"
            } else {
                "shrunk"
            };
            match volume(name) {
                Some(v) => format!(
                    "volume {name} of disk group {dg} {verb} to {}{}: {}",
                    format_size(v.size_bytes),
                    rounded(*new_size_bytes, v.size_bytes),
                    placement(v)
                ),
                None => format!("volume {name} of disk group {dg} {verb}"),
            }
        }
        Change::VolSetReadPolicy { volume, .. } => {
            format!("volume {volume} of disk group {dg}: read policy set")
        }
        Change::VolRm { volume, .. } => format!("volume {volume} removed from disk group {dg}"),
        Change::PlexAdd { volume: name, .. } => match volume(name).and_then(|v| v.plexes.last()) {
            Some(p) => format!(
                "plex {} added to volume {name} of disk group {dg}: EMPTY on {} (plexctl plex attach {dg} {} to use it)",
                p.name,
                p.disks().into_iter().collect::<Vec<_>>().join("+"),
                p.name
            ),
            None => format!("plex added to volume {name} of disk group {dg}"),
        },
        Change::PlexDetach { plex, .. } => format!("plex {plex} of disk group {dg} detached (STALE)"),
        Change::PlexAttach { plex, .. } => format!(
            "plex {plex} of disk group {dg} attached: SYNCING, ACTIVE once resynchronised (plexctl task list)"
        ),
        Change::PlexRm { plex, .. } => format!("plex {plex} removed from disk group {dg}"),
        Change::SetPlexState { plex, state, .. } => {
            format!("plex {plex} of disk group {dg} set {}", state.as_str())
        }
        Change::VolExport {
            volume, export, ..
        } => format!(
            "volume {volume} of disk group {dg} exported over {} as {} on {}",
            export.protocol.as_str(),
            export.iqn,
            if export.nodes.is_empty() {
                "every node".to_string()
            } else {
                format!("node {}", export.nodes.join(", "))
            }
        ),
        Change::VolPrOut {
            volume,
            nexus,
            service_action,
            ..
        } => format!(
            "volume {volume} of disk group {dg}: persistent reservations changed (service action {service_action} from {nexus})"
        ),
        Change::VolUnexport {
            volume, protocol, ..
        } => format!(
            "volume {volume} of disk group {dg}: {} export ended on every node",
            protocol.as_str()
        ),
    }
}

/// Refuses a group-level change (`what`: destroy, deport) while a volume of `g` is
/// exported (VxVM: "volumes are open").
fn check_not_exported(g: &DiskGroupConfig, what: &str) -> Result<(), ConfigError> {
    let exported: Vec<(&Volume, &Export)> = g
        .volumes
        .iter()
        .flat_map(|v| v.exports.iter().map(move |e| (v, e)))
        .collect();
    let Some((v, e)) = exported.first() else {
        return Ok(());
    };
    let more = match exported.len() {
        1 => String::new(),
        n => format!(" (and {} more exports)", n - 1),
    };
    Err(ConfigError::InUse(format!(
        "cannot {what} disk group {}: volume {} is exported over {} as {}{more}; unexport it first (plexctl unexport {} {} {}), or {what} with --force to end every export of the group (refused while a host session is logged in)",
        g.name,
        v.name,
        e.protocol.as_str(),
        e.iqn,
        e.protocol.as_str(),
        g.name,
        v.name
    )))
}

fn dg_index(config: &ClusterConfig, name: &str) -> Result<usize, ConfigError> {
    config
        .disk_groups
        .iter()
        .position(|g| g.name == name)
        .ok_or_else(|| not_found("disk group", name, String::new()))
}

/// Applies a change that stays inside one disk group (disks, volumes, plexes). Group
/// level changes (create, destroy, deport, import) need [`apply`]. Does not check that
/// an added disk is free in other groups: [`apply`] does.
pub fn apply_dg(dg: &DiskGroupConfig, change: &Change) -> Result<DiskGroupConfig, ConfigError> {
    if change.dg_name() != dg.name {
        return Err(ConfigError::Invalid(format!(
            "change for disk group {} applied to disk group {}",
            change.dg_name(),
            dg.name
        )));
    }
    let mut next = dg.clone();
    match change {
        Change::DgAddDisk { disk, .. } => {
            validate_name("disk", &disk.name)?;
            if let Some(d) = dg
                .disks
                .iter()
                .find(|d| d.name == disk.name || d.id == disk.id)
            {
                return Err(ConfigError::Exists(format!(
                    "disk {} already exists in disk group {} (id {})",
                    d.name, dg.name, d.id
                )));
            }
            next.disks.push(disk.clone());
        }
        Change::DgRmDisk { disk, .. } => {
            let index = dg
                .disks
                .iter()
                .position(|d| d.name == *disk)
                .ok_or_else(|| not_found("disk", disk, format!(" in disk group {}", dg.name)))?;
            let users: Vec<String> = dg
                .volumes
                .iter()
                .flat_map(|v| v.plexes.iter().map(move |p| (v, p)))
                .filter(|(_, p)| p.subdisks.iter().any(|sd| sd.disk == *disk))
                .map(|(v, p)| format!("{}/{}", v.name, p.name))
                .collect();
            if !users.is_empty() {
                return Err(ConfigError::InUse(format!(
                    "disk {disk} in disk group {} holds subdisks of {}: remove those plexes or volumes first",
                    dg.name,
                    users.join(", ")
                )));
            }
            if dg.disks.len() == 1 {
                return Err(ConfigError::InUse(format!(
                    "disk {disk} is the last disk of disk group {}: use dg destroy",
                    dg.name
                )));
            }
            next.disks.remove(index);
        }
        Change::VolCreate {
            volume,
            size_bytes,
            layout,
            ..
        } => {
            validate_name("volume", volume)?;
            if dg.volume(volume).is_some() || dg.find_plex(volume).is_some() {
                return Err(ConfigError::Exists(format!(
                    "volume {volume} already exists in disk group {}",
                    dg.name
                )));
            }
            let size = checked_volume_size(volume, *size_bytes)?;
            let (mirrors, plex_layout) = layout.plexes();
            if mirrors == 0 || mirrors as usize > MAX_PLEXES {
                return Err(ConfigError::Invalid(format!(
                    "volume {volume}: {mirrors} mirrors requested, 1 to {MAX_PLEXES} allowed"
                )));
            }
            if let PlexLayout::Stripe { columns, .. } = plex_layout {
                if columns < MIN_STRIPE_COLUMNS {
                    return Err(ConfigError::Invalid(format!(
                        "volume {volume}: a stripe needs at least {MIN_STRIPE_COLUMNS} columns, got {columns}; use the concat (or mirror) layout for one column"
                    )));
                }
            }
            plex_layout.validate()?;
            let plexes = alloc::allocate_volume(dg, volume, size, *layout)?;
            next.volumes.push(Volume {
                name: volume.clone(),
                size_bytes: size,
                state: VolumeState::Enabled,
                read_policy: ReadPolicy::Round,
                plexes,
                exports: Vec::new(),
                reservations: PrState::default(),
            });
        }
        Change::VolGrow {
            volume,
            new_size_bytes,
            ..
        } => {
            let vi = dg.volume_index(volume)?;
            let size = checked_volume_size(volume, *new_size_bytes)?;
            let current = dg.volumes[vi].size_bytes;
            if size <= current {
                return Err(ConfigError::Invalid(format!(
                    "volume {volume}: new size {} is not larger than the current {}",
                    crate::size::format_size(size),
                    crate::size::format_size(current)
                )));
            }
            next.volumes[vi].plexes = alloc::grow_volume(dg, volume, size)?;
            next.volumes[vi].size_bytes = size;
        }
        Change::VolShrink {
            volume,
            new_size_bytes,
            ..
        } => {
            let vi = dg.volume_index(volume)?;
            let size = checked_volume_size(volume, *new_size_bytes)?;
            let current = dg.volumes[vi].size_bytes;
            if size >= current {
                return Err(ConfigError::Invalid(format!(
                    "volume {volume}: new size {} is not smaller than the current {}",
                    crate::size::format_size(size),
                    crate::size::format_size(current)
                )));
            }
            next.volumes[vi].plexes = alloc::shrink_plexes(&dg.volumes[vi].plexes, size);
            next.volumes[vi].size_bytes = size;
        }
        Change::VolSetReadPolicy { volume, policy, .. } => {
            let vi = dg.volume_index(volume)?;
            if let ReadPolicy::Prefer { plex } = policy {
                if dg.volumes[vi].plex(plex).is_none() {
                    return Err(not_found("plex", plex, format!(" in volume {volume}")));
                }
            }
            next.volumes[vi].read_policy = policy.clone();
        }
        Change::VolRm { volume, .. } => {
            let vi = dg.volume_index(volume)?;
            if let Some(e) = dg.volumes[vi].exports.first() {
                return Err(ConfigError::InUse(format!(
                    "volume {volume} is exported over {} as {}; unexport it first",
                    e.protocol.as_str(),
                    e.iqn
                )));
            }
            next.volumes.remove(vi);
        }
        Change::VolExport { volume, export, .. } => {
            let vi = dg.volume_index(volume)?;
            export.validate()?;
            for n in &export.nodes {
                validate_name("node", n)?;
            }
            if let Some(e) = dg.volumes[vi]
                .exports
                .iter()
                .find(|e| e.protocol == export.protocol)
            {
                return Err(ConfigError::Exists(format!(
                    "volume {volume} is already exported over {} as {}; unexport it first",
                    e.protocol.as_str(),
                    e.iqn
                )));
            }
            next.volumes[vi].exports.push(export.clone());
            next.volumes[vi].exports.sort_by_key(|e| e.protocol);
        }
        Change::VolPrOut {
            volume,
            nexus,
            service_action,
            scope_type,
            parameters,
            ..
        } => {
            let vi = dg.volume_index(volume)?;
            let what = || {
                format!(
                    "volume {volume} of disk group {}: PERSISTENT RESERVE OUT (service action {service_action}) from {nexus}",
                    dg.name
                )
            };
            if !dg.shared {
                return Err(ConfigError::Invalid(format!(
                    "{}: a private volume's reservations are kept by its node",
                    what()
                )));
            }
            if nexus.initiator.is_empty() || nexus.initiator.len() > MAX_NEXUS_NAME_BYTES {
                return Err(ConfigError::Invalid(format!(
                    "{}: the initiator port name must be 1..{MAX_NEXUS_NAME_BYTES} bytes",
                    what()
                )));
            }
            let r =
                next.volumes[vi]
                    .reservations
                    .out(nexus, *service_action, *scope_type, parameters);
            match r {
                Ok(true) => {}
                Ok(false) => {
                    return Err(ConfigError::Invalid(format!(
                        "{}: changes nothing in the reservations now",
                        what()
                    )))
                }
                Err(e) => {
                    return Err(ConfigError::Invalid(format!(
                        "{}: refused by the reservations now ({e:?})",
                        what()
                    )))
                }
            }
        }
        Change::VolUnexport {
            volume, protocol, ..
        } => {
            let vi = dg.volume_index(volume)?;
            let before = next.volumes[vi].exports.len();
            next.volumes[vi].exports.retain(|e| e.protocol != *protocol);
            if next.volumes[vi].exports.len() == before {
                return Err(not_found(
                    "export",
                    protocol.as_str(),
                    format!(" of volume {volume}"),
                ));
            }
        }
        Change::PlexAdd { volume, layout, .. } => {
            let vi = dg.volume_index(volume)?;
            let v = &dg.volumes[vi];
            if v.plexes.len() >= MAX_PLEXES {
                return Err(ConfigError::InUse(format!(
                    "volume {volume} already has {MAX_PLEXES} plexes"
                )));
            }
            layout.validate()?;
            let plex = alloc::allocate_plex(dg, volume, *layout)?;
            next.volumes[vi].plexes.push(plex);
        }
        Change::PlexDetach { plex, .. } => {
            let (vi, pi) = dg.plex_index(plex)?;
            let state = dg.volumes[vi].plexes[pi].state;
            if !matches!(state, PlexState::Active | PlexState::Syncing) {
                return Err(ConfigError::Invalid(format!(
                    "plex {plex} is {}, not ACTIVE or SYNCING: nothing to detach",
                    state.as_str()
                )));
            }
            check_not_last_active(&dg.volumes[vi], pi, "detach")?;
            next.volumes[vi].plexes[pi].state = PlexState::Stale;
        }
        Change::PlexAttach { plex, .. } => {
            let (vi, pi) = dg.plex_index(plex)?;
            let v = &dg.volumes[vi];
            let state = v.plexes[pi].state;
            if !matches!(state, PlexState::Stale | PlexState::Empty) {
                return Err(ConfigError::Invalid(format!(
                    "plex {plex} is {}, only a STALE or EMPTY plex can be attached",
                    state.as_str()
                )));
            }
            if v.active_plexes() == 0 {
                return Err(ConfigError::Invalid(format!(
                    "plex {plex}: volume {} has no ACTIVE plex to resynchronise from",
                    v.name
                )));
            }
            next.volumes[vi].plexes[pi].state = PlexState::Syncing;
        }
        Change::PlexRm { plex, force, .. } => {
            let (vi, pi) = dg.plex_index(plex)?;
            let v = &dg.volumes[vi];
            if v.plexes.len() == 1 {
                return Err(ConfigError::InUse(format!(
                    "plex {plex} is the only plex of volume {}: use vol rm",
                    v.name
                )));
            }
            check_not_last_active(v, pi, "remove")?;
            if v.plexes[pi].state == PlexState::Active && !force {
                return Err(ConfigError::InUse(format!(
                    "plex {plex} is an ACTIVE mirror of volume {} in disk group {} ({} ACTIVE plexes): removing it loses a copy of the data; detach it first (plexctl plex detach {} {plex}) or use plex rm --force",
                    v.name,
                    dg.name,
                    v.active_plexes(),
                    dg.name
                )));
            }
            next.volumes[vi].plexes.remove(pi);
            if let ReadPolicy::Prefer { plex: preferred } = &v.read_policy {
                if preferred == plex {
                    next.volumes[vi].read_policy = ReadPolicy::Round;
                }
            }
        }
        Change::SetPlexState { plex, state, .. } => {
            let (vi, pi) = dg.plex_index(plex)?;
            if *state != PlexState::Active {
                check_not_last_active(&dg.volumes[vi], pi, &format!("set {}", state.as_str()))?;
            }
            next.volumes[vi].plexes[pi].state = *state;
        }
        Change::DgCreate { .. }
        | Change::DgDestroy { .. }
        | Change::DgDeport { .. }
        | Change::DgImport { .. } => {
            return Err(ConfigError::Invalid(format!(
                "disk group {}: group-level change needs the node's configuration (objects::apply)",
                dg.name
            )));
        }
    }
    next.seq += 1;
    if let Err(e) = next.validate() {
        return Err(ConfigError::Invalid(format!(
            "internal error, change refused: {e}"
        )));
    }
    Ok(next)
}

fn checked_volume_size(volume: &str, size_bytes: u64) -> Result<u64, ConfigError> {
    match round_volume_size(size_bytes) {
        Some(size) if size > 0 => Ok(size),
        _ => Err(ConfigError::Invalid(format!(
            "volume {volume}: size must be larger than 0 (got {size_bytes} bytes)"
        ))),
    }
}

fn check_not_last_active(v: &Volume, plex_index: usize, action: &str) -> Result<(), ConfigError> {
    let plex = &v.plexes[plex_index];
    if plex.state == PlexState::Active && v.active_plexes() == 1 {
        return Err(ConfigError::LastActivePlex {
            volume: v.name.clone(),
            plex: plex.name.clone(),
            action: action.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A disk with a 1 MiB private region and `size_bytes` of public region.
    pub fn disk(name: &str, public_bytes: u64) -> Disk {
        Disk {
            name: name.to_string(),
            id: format!("id-{name}"),
            path: format!("/dev/{name}"),
            size_bytes: (1 << 20) + public_bytes,
            public_offset_bytes: 1 << 20,
            public_len_bytes: public_bytes,
        }
    }

    /// A config with one group `dg1` of the given disks.
    pub fn cluster(disks: &[(&str, u64)]) -> ClusterConfig {
        let disks = disks.iter().map(|(n, s)| disk(n, *s)).collect();
        apply(
            &ClusterConfig::default(),
            &Change::DgCreate {
                dg: "dg1".into(),
                dg_id: "dgid1".into(),
                shared: true,
                owner_id: "cluster1".into(),
                disks,
            },
        )
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    const GIB: u64 = 1 << 30;

    fn create_vol(
        c: &ClusterConfig,
        name: &str,
        size: u64,
        layout: VolumeLayout,
    ) -> Result<ClusterConfig, ConfigError> {
        c.apply(&Change::VolCreate {
            dg: "dg1".into(),
            volume: name.into(),
            size_bytes: size,
            layout,
        })
    }

    fn pr_out(nexus: &Nexus, sa: u8, ty: u8, rkey: u64, sakey: u64) -> Change {
        Change::VolPrOut {
            dg: "dg1".into(),
            volume: "v1".into(),
            nexus: nexus.clone(),
            service_action: sa,
            scope_type: ty,
            parameters: plexd_target_api::scsi::pr::param(rkey, sakey, false),
        }
    }

    #[test]
    fn persistent_reservations_are_changed_by_the_cluster_and_refused_when_stale() {
        use plexd_target_api::scsi::pr::{ty, Access};
        let c = create_vol(
            &cluster(&[("d1", GIB)]),
            "v1",
            8 << 20,
            VolumeLayout::Concat,
        )
        .unwrap();
        let a = Nexus::new("iqn.a,i,0x1", 1);
        let b = Nexus::new("iqn.b,i,0x2", 2);
        let c = c.apply(&pr_out(&a, 0, 0, 0, 0xa)).unwrap();
        let c = c.apply(&pr_out(&a, 1, ty::WE, 0xa, 0)).unwrap();
        assert_eq!(c.disk_groups[0].seq, 4, "each change bumps seq");
        let r = &c.disk_groups[0].volumes[0].reservations;
        assert!(r.conflicts(&b, Access::Write));
        assert!(!r.conflicts(&a, Access::Write));
        // What changes nothing (a second identical RESERVE) or conflicts is refused:
        // the requesting node answers it from the state it then holds.
        for stale in [pr_out(&a, 1, ty::WE, 0xa, 0), pr_out(&b, 1, ty::WE, 0xb, 0)] {
            let e = c.apply(&stale).unwrap_err();
            assert!(matches!(e, ConfigError::Invalid(_)), "{e}");
            assert!(e.to_string().contains("volume v1 of disk group dg1"), "{e}");
        }
        // PREEMPT by another nexus removes a's key and takes the reservation.
        let c = c.apply(&pr_out(&b, 0, 0, 0, 0xb)).unwrap();
        let c = c.apply(&pr_out(&b, 4, ty::WE, 0xb, 0xa)).unwrap();
        let r = &c.disk_groups[0].volumes[0].reservations;
        assert_eq!(r.regs.len(), 1);
        assert!(r.conflicts(&a, Access::Write));
        // A private group's volume keeps its reservations on its node.
        let private = apply(
            &ClusterConfig::default(),
            &Change::DgCreate {
                dg: "dg1".into(),
                dg_id: "dgid1".into(),
                shared: false,
                owner_id: "host1".into(),
                disks: vec![disk("d1", GIB)],
            },
        )
        .unwrap();
        let private = create_vol(&private, "v1", 8 << 20, VolumeLayout::Concat).unwrap();
        assert!(private.apply(&pr_out(&a, 0, 0, 0, 0xa)).is_err());
        // The change travels as JSON like every other.
        let ch = pr_out(&a, 0, 0, 0, 0xa);
        let back: Change = serde_json::from_str(&serde_json::to_string(&ch).unwrap()).unwrap();
        assert_eq!(back, ch);
    }

    #[test]
    fn dg_create_refuses_duplicates_and_reused_disks() {
        let c = cluster(&[("disk01", GIB)]);
        assert_eq!(c.disk_groups[0].seq, 1);
        let again = Change::DgCreate {
            dg: "dg1".into(),
            dg_id: "other".into(),
            shared: true,
            owner_id: "c".into(),
            disks: vec![disk("disk02", GIB)],
        };
        assert_eq!(
            c.apply(&again).unwrap_err().to_string(),
            "disk group dg1 already exists"
        );
        let private = Change::DgCreate {
            dg: "dg1".into(),
            dg_id: "other".into(),
            shared: false,
            owner_id: "hostA".into(),
            disks: vec![disk("disk02", GIB)],
        };
        assert_eq!(
            c.apply(&private).unwrap_err().to_string(),
            "disk group dg1 exists as a shared disk group"
        );
        let reuse = Change::DgCreate {
            dg: "dg2".into(),
            dg_id: "dgid2".into(),
            shared: true,
            owner_id: "c".into(),
            disks: vec![disk("disk01", GIB)],
        };
        let err = c.apply(&reuse).unwrap_err().to_string();
        assert!(err.contains("already in disk group dg1"), "{err}");
        let empty = Change::DgCreate {
            dg: "dg2".into(),
            dg_id: "dgid2".into(),
            shared: true,
            owner_id: "c".into(),
            disks: vec![],
        };
        assert!(c.apply(&empty).is_err());
        let bad_name = Change::DgCreate {
            dg: "-x".into(),
            dg_id: "dgid3".into(),
            shared: true,
            owner_id: "c".into(),
            disks: vec![disk("disk03", GIB)],
        };
        assert!(c
            .apply(&bad_name)
            .unwrap_err()
            .to_string()
            .contains("invalid"));
    }

    #[test]
    fn add_and_remove_disks() {
        let c = cluster(&[("disk01", GIB)]);
        let c = c
            .apply(&Change::DgAddDisk {
                dg: "dg1".into(),
                disk: disk("disk02", GIB),
            })
            .unwrap();
        assert_eq!(c.disk_groups[0].disks.len(), 2);
        assert_eq!(c.disk_groups[0].seq, 2);
        let dup = Change::DgAddDisk {
            dg: "dg1".into(),
            disk: disk("disk02", GIB),
        };
        assert!(c.apply(&dup).unwrap_err().to_string().contains("disk02"));
        let c = create_vol(&c, "vol1", GIB / 2, VolumeLayout::Concat).unwrap();
        let used = c.disk_groups[0].volumes[0].plexes[0].subdisks[0]
            .disk
            .clone();
        let err = c
            .apply(&Change::DgRmDisk {
                dg: "dg1".into(),
                disk: used.clone(),
            })
            .unwrap_err();
        assert!(err.to_string().contains("vol1/vol1-01"), "{err}");
        let other = if used == "disk01" { "disk02" } else { "disk01" };
        let c2 = c
            .apply(&Change::DgRmDisk {
                dg: "dg1".into(),
                disk: other.into(),
            })
            .unwrap();
        let err = c2
            .apply(&Change::DgRmDisk {
                dg: "dg1".into(),
                disk: "nope".into(),
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "disk nope does not exist in disk group dg1"
        );
        let updates = Change::DgRmDisk {
            dg: "dg1".into(),
            disk: other.into(),
        }
        .disk_updates(&c, &c2);
        assert_eq!(updates.len(), 2);
        assert!(matches!(&updates[1], DiskUpdate::Release(d) if d.name == other));
    }

    #[test]
    fn vol_create_names_plexes_and_subdisks_vxvm_style() {
        let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
        let c = create_vol(&c, "vol01", 100 << 20, VolumeLayout::Mirror { mirrors: 2 }).unwrap();
        let v = &c.disk_groups[0].volumes[0];
        assert_eq!(v.plexes[0].name, "vol01-01");
        assert_eq!(v.plexes[1].name, "vol01-02");
        assert_eq!(v.plexes[0].subdisks[0].name, "disk01-01");
        assert_eq!(v.plexes[1].subdisks[0].name, "disk02-01");
        assert!(v.plexes.iter().all(|p| p.state == PlexState::Active));
        let err = create_vol(&c, "vol01", GIB, VolumeLayout::Concat).unwrap_err();
        assert_eq!(
            err.to_string(),
            "volume vol01 already exists in disk group dg1"
        );
        let c = create_vol(&c, "vol02", 100 << 20, VolumeLayout::Concat).unwrap();
        assert_eq!(
            c.disk_groups[0].volumes[1].plexes[0].subdisks[0].name,
            "disk01-02"
        );
        assert_eq!(c.disk_groups[0].seq, 3);
        assert!(create_vol(&c, "vol03", 0, VolumeLayout::Concat).is_err());
    }

    #[test]
    fn last_active_plex_can_never_be_detached() {
        let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
        let c = create_vol(&c, "vol1", 10 << 20, VolumeLayout::Mirror { mirrors: 2 }).unwrap();
        let detach = |c: &ClusterConfig, plex: &str| {
            c.apply(&Change::PlexDetach {
                dg: "dg1".into(),
                plex: plex.into(),
            })
        };
        let c = detach(&c, "vol1-01").unwrap();
        assert_eq!(
            c.disk_groups[0].volumes[0].plexes[0].state,
            PlexState::Stale
        );
        let err = detach(&c, "vol1-02").unwrap_err();
        assert_eq!(
            err.to_string(),
            "plex vol1-02: cannot detach the last ACTIVE plex of volume vol1"
        );
        let err = c
            .apply(&Change::SetPlexState {
                dg: "dg1".into(),
                plex: "vol1-02".into(),
                state: PlexState::Stale,
            })
            .unwrap_err();
        assert!(matches!(err, ConfigError::LastActivePlex { .. }));
        let err = c
            .apply(&Change::PlexRm {
                dg: "dg1".into(),
                plex: "vol1-02".into(),
                force: true,
            })
            .unwrap_err();
        assert!(matches!(err, ConfigError::LastActivePlex { .. }));
        // Attach: STALE → SYNCING → ACTIVE.
        let c = c
            .apply(&Change::PlexAttach {
                dg: "dg1".into(),
                plex: "vol1-01".into(),
            })
            .unwrap();
        assert_eq!(
            c.disk_groups[0].volumes[0].plexes[0].state,
            PlexState::Syncing
        );
        let c = c
            .apply(&Change::SetPlexState {
                dg: "dg1".into(),
                plex: "vol1-01".into(),
                state: PlexState::Active,
            })
            .unwrap();
        let c = detach(&c, "vol1-02").unwrap();
        let c = c
            .apply(&Change::PlexRm {
                dg: "dg1".into(),
                plex: "vol1-02".into(),
                force: true,
            })
            .unwrap();
        assert_eq!(c.disk_groups[0].volumes[0].plexes.len(), 1);
        let err = c
            .apply(&Change::PlexRm {
                dg: "dg1".into(),
                plex: "vol1-01".into(),
                force: true,
            })
            .unwrap_err();
        assert!(err.to_string().contains("only plex"), "{err}");
    }

    #[test]
    fn plex_add_uses_other_disks_and_starts_empty() {
        let c = cluster(&[("disk01", GIB), ("disk02", GIB), ("disk03", GIB)]);
        let c = create_vol(&c, "vol1", 10 << 20, VolumeLayout::Concat).unwrap();
        let add = Change::PlexAdd {
            dg: "dg1".into(),
            volume: "vol1".into(),
            layout: PlexLayout::Concat,
        };
        let c = c.apply(&add).unwrap();
        let c = c.apply(&add).unwrap();
        let v = &c.disk_groups[0].volumes[0];
        assert_eq!(v.plexes[1].name, "vol1-02");
        assert_eq!(v.plexes[1].state, PlexState::Empty);
        let disks: BTreeSet<_> = v.plexes.iter().flat_map(|p| p.disks()).collect();
        assert_eq!(disks.len(), 3);
        let err = c.apply(&add).unwrap_err().to_string();
        assert!(err.contains("distinct disks"), "{err}");
    }

    #[test]
    fn deport_import_and_destroy() {
        let c = cluster(&[("disk01", GIB)]);
        let c = create_vol(&c, "vol1", 10 << 20, VolumeLayout::Concat).unwrap();
        let deport = Change::DgDeport {
            dg: "dg1".into(),
            force: false,
        };
        let after = c.apply(&deport).unwrap();
        assert!(after.disk_groups.is_empty());
        let updates = deport.disk_updates(&c, &after);
        let DiskUpdate::WriteConfig(on_disk) = &updates[0] else {
            panic!("{updates:?}")
        };
        assert_eq!(on_disk.owner_id, "");
        assert_eq!(on_disk.seq, 3);
        let import = Change::DgImport {
            config: on_disk.clone(),
            shared: false,
            owner_id: "hostA".into(),
        };
        let back = after.apply(&import).unwrap();
        let g = &back.disk_groups[0];
        assert!(!g.shared);
        assert_eq!(g.owner_id, "hostA");
        assert_eq!(g.seq, 4);
        assert_eq!(g.volumes, c.disk_groups[0].volumes);
        assert!(back.apply(&import).is_err());
        let destroy = Change::DgDestroy {
            dg: "dg1".into(),
            force: false,
        };
        let gone = back.apply(&destroy).unwrap();
        assert!(gone.disk_groups.is_empty());
        assert!(matches!(
            destroy.disk_updates(&back, &gone)[..],
            [DiskUpdate::Release(_)]
        ));
        assert_eq!(
            gone.apply(&destroy).unwrap_err().to_string(),
            "disk group dg1 does not exist"
        );
    }

    #[test]
    fn kernel_layout_lists_extents_per_column() {
        let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
        let c = create_vol(
            &c,
            "vol1",
            1 << 20,
            VolumeLayout::Stripe {
                columns: 2,
                stripe_unit_bytes: 64 << 10,
            },
        )
        .unwrap();
        let k = c.disk_groups[0].kernel_layout();
        assert_eq!(k.len(), 1);
        let p = &k[0].plexes[0];
        assert_eq!(p.stripe_unit_bytes, Some(64 << 10));
        assert_eq!(p.columns.len(), 2);
        assert_eq!(p.columns[0][0].disk_id, "id-disk01");
        assert_eq!(p.columns[0][0].offset_bytes, 1 << 20);
        assert_eq!(p.columns[0][0].len_bytes, 512 << 10);
        assert_eq!(p.columns[1][0].disk_path, "/dev/disk02");
    }

    #[test]
    fn json_uses_the_documented_field_names() {
        let c = cluster(&[("disk01", GIB)]);
        let c = create_vol(&c, "vol1", 10 << 20, VolumeLayout::Concat).unwrap();
        let json = serde_json::to_value(&c).unwrap();
        let g = &json["disk_groups"][0];
        assert_eq!(g["name"], "dg1");
        assert_eq!(g["shared"], true);
        assert_eq!(g["seq"], 2);
        assert_eq!(g["disks"][0]["name"], "disk01");
        let v = &g["volumes"][0];
        assert_eq!(v["size"], 10 << 20);
        assert_eq!(v["state"], "ENABLED");
        assert_eq!(v["plexes"][0]["state"], "ACTIVE");
        assert_eq!(v["plexes"][0]["layout"]["type"], "concat");
        assert_eq!(v["plexes"][0]["subdisks"][0]["disk"], "disk01");
        let back: ClusterConfig = serde_json::from_value(json).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn shrink_cuts_every_plex_and_read_policy_names_a_plex() {
        let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
        let c = create_vol(&c, "vol1", 100 << 20, VolumeLayout::Mirror { mirrors: 2 }).unwrap();
        let shrink = |c: &ClusterConfig, size: u64| {
            c.apply(&Change::VolShrink {
                dg: "dg1".into(),
                volume: "vol1".into(),
                new_size_bytes: size,
            })
        };
        let small = shrink(&c, 30 << 20).unwrap();
        let v = &small.disk_groups[0].volumes[0];
        assert_eq!(v.size_bytes, 30 << 20);
        assert!(v.plexes.iter().all(|p| p.capacity_bytes() == 30 << 20));
        assert!(shrink(&c, 200 << 20).is_err());
        assert!(shrink(&c, 0).is_err());
        let set = |plex: &str| Change::VolSetReadPolicy {
            dg: "dg1".into(),
            volume: "vol1".into(),
            policy: ReadPolicy::Prefer { plex: plex.into() },
        };
        let preferred = small.apply(&set("vol1-02")).unwrap();
        assert_eq!(
            preferred.disk_groups[0].volumes[0].read_policy,
            ReadPolicy::Prefer {
                plex: "vol1-02".into()
            }
        );
        assert_eq!(
            small.apply(&set("vol9-01")).unwrap_err().to_string(),
            "plex vol9-01 does not exist in volume vol1"
        );
    }

    #[test]
    fn io_error_detach_change_respects_the_last_active_plex() {
        let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
        let c = create_vol(&c, "vol1", 10 << 20, VolumeLayout::Mirror { mirrors: 2 }).unwrap();
        assert_eq!(c.shared_disk_paths(), ["/dev/disk01", "/dev/disk02"]);
        let change = c.detach_change("vol1", "vol1-02").unwrap().unwrap();
        let c = c.apply(&change).unwrap();
        assert_eq!(c.detach_change("vol1", "vol1-02").unwrap(), None);
        assert!(matches!(
            c.detach_change("vol1", "vol1-01"),
            Err(ConfigError::LastActivePlex { .. })
        ));
        assert!(c.detach_change("vol1", "vol1-09").is_err());
    }

    #[test]
    fn validate_refuses_extreme_values_without_panicking() {
        let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
        let c = create_vol(&c, "vol1", 1 << 20, VolumeLayout::Concat).unwrap();
        let base = c.disk_groups[0].clone();
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
        let extremes = [0, 1, 4096, u64::MAX, u64::MAX - 4095, u64::MAX / 2 + 1];
        for _ in 0..2000 {
            let mut g = base.clone();
            let pick = |rng: &mut rand::rngs::StdRng| {
                extremes[rand::Rng::gen_range(rng, 0..extremes.len())]
            };
            let mut sd = g.volumes[0].plexes[0].subdisks[0].clone();
            sd.name = "disk01-09".into();
            sd.len_bytes = pick(&mut rng);
            sd.disk_offset_bytes = pick(&mut rng);
            sd.plex_offset_bytes = pick(&mut rng);
            g.volumes[0].plexes[0].subdisks.push(sd);
            g.volumes[0].size_bytes = pick(&mut rng);
            g.disks[1].public_offset_bytes = pick(&mut rng);
            g.disks[1].public_len_bytes = pick(&mut rng);
            g.disks[1].size_bytes = pick(&mut rng);
            if rand::Rng::gen_bool(&mut rng, 0.5) {
                g.volumes[0].plexes[0].layout = PlexLayout::Stripe {
                    columns: rand::Rng::gen_range(&mut rng, 0..3),
                    stripe_unit_bytes: pick(&mut rng),
                };
            }
            let _ = g.validate();
            let _ = g.kernel_layout();
            let _ = g.volumes[0].plexes[0].capacity_bytes();
            let _ = crate::alloc::free_extents(&g);
        }
    }

    #[test]
    fn every_change_round_trips_through_json() {
        let c = cluster(&[("disk01", GIB)]);
        let g = c.disk_groups[0].clone();
        let dg = || "dg1".to_string();
        let changes = vec![
            Change::DgCreate {
                dg: dg(),
                dg_id: "id".into(),
                shared: true,
                owner_id: "c".into(),
                disks: g.disks.clone(),
            },
            Change::DgAddDisk {
                dg: dg(),
                disk: disk("disk02", u64::MAX / 2),
            },
            Change::DgRmDisk {
                dg: dg(),
                disk: "disk01".into(),
            },
            Change::DgDestroy {
                dg: dg(),
                force: true,
            },
            Change::DgDeport {
                dg: dg(),
                force: false,
            },
            Change::DgImport {
                config: g.clone(),
                shared: false,
                owner_id: "h".into(),
            },
            Change::VolCreate {
                dg: dg(),
                volume: "v".into(),
                size_bytes: u64::MAX,
                layout: VolumeLayout::MirrorStripe {
                    mirrors: 2,
                    columns: 3,
                    stripe_unit_bytes: DEFAULT_STRIPE_UNIT_BYTES,
                },
            },
            Change::VolGrow {
                dg: dg(),
                volume: "v".into(),
                new_size_bytes: 1,
            },
            Change::VolShrink {
                dg: dg(),
                volume: "v".into(),
                new_size_bytes: 1,
            },
            Change::VolSetReadPolicy {
                dg: dg(),
                volume: "v".into(),
                policy: ReadPolicy::Prefer {
                    plex: "v-01".into(),
                },
            },
            Change::VolRm {
                dg: dg(),
                volume: "v".into(),
            },
            Change::PlexAdd {
                dg: dg(),
                volume: "v".into(),
                layout: PlexLayout::Stripe {
                    columns: 2,
                    stripe_unit_bytes: 4096,
                },
            },
            Change::PlexDetach {
                dg: dg(),
                plex: "v-01".into(),
            },
            Change::PlexAttach {
                dg: dg(),
                plex: "v-01".into(),
            },
            Change::PlexRm {
                dg: dg(),
                plex: "v-01".into(),
                force: true,
            },
            Change::SetPlexState {
                dg: dg(),
                plex: "v-01".into(),
                state: PlexState::Syncing,
            },
        ];
        for change in changes {
            let json = serde_json::to_string(&change).unwrap();
            let back: Change = serde_json::from_str(&json).unwrap();
            assert_eq!(back, change, "{json}");
            assert_eq!(change.dg_name(), "dg1");
        }
    }

    #[test]
    fn validate_catches_overlapping_subdisks() {
        let c = cluster(&[("disk01", GIB)]);
        let c = create_vol(&c, "vol1", 10 << 20, VolumeLayout::Concat).unwrap();
        let c = create_vol(&c, "vol2", 10 << 20, VolumeLayout::Concat).unwrap();
        let mut g = c.disk_groups[0].clone();
        g.validate().unwrap();
        g.volumes[1].plexes[0].subdisks[0].disk_offset_bytes = 1 << 20;
        let err = g.validate().unwrap_err().to_string();
        assert!(err.contains("overlap"), "{err}");
    }

    fn export(iqn: &str) -> Export {
        Export {
            hosts: Vec::new(),
            protocol: ExportProtocol::Iscsi,
            iqn: iqn.into(),
            nodes: Vec::new(),
            portal: String::new(),
        }
    }

    #[test]
    fn iscsi_names_are_checked() {
        for ok in [
            "iqn.2026-11.io.plexd:demo",
            "iqn.1994-05.com.redhat:ab12",
            "eui.02004567a425678d",
            "naa.52004567ba64678d",
        ] {
            assert!(validate_iqn(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "iqn.2026-11",
            "iqn.26-11.io.plexd:x",
            "IQN.2026-11.io.plexd:x",
            "iqn.2026-11.io.plexd:Upper",
            "iqn.2026-11.io.plexd:sp ace",
            "eui.123",
            "vol1",
        ] {
            assert!(validate_iqn(bad).is_err(), "{bad:?}");
        }
        assert!(validate_iqn(&format!("iqn.2026-11.io.plexd:{}", "a".repeat(300))).is_err());
    }

    #[test]
    fn nvmf_exports_check_their_nqns_and_hosts_and_sit_beside_iscsi() {
        for ok in [
            "nqn.2026-11.io.plexd:test.dg1.vol1",
            "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001",
        ] {
            assert!(validate_nqn("NQN", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "nqn.2026-11",
            "iqn.2026-11.io.plexd:x",
            "nqn.26-11.io.plexd:x",
            "nqn.2026-11.io.plexd:sp ace",
            DISCOVERY_NQN,
        ] {
            assert!(validate_nqn("NQN", bad).is_err(), "{bad:?}");
        }
        let c = test_support::cluster(&[("disk01", 1 << 30)])
            .apply(&Change::VolCreate {
                dg: "dg1".into(),
                volume: "v1".into(),
                size_bytes: 1 << 20,
                layout: VolumeLayout::Concat,
            })
            .unwrap()
            .apply(&Change::VolExport {
                dg: "dg1".into(),
                volume: "v1".into(),
                export: export("iqn.2026-11.io.plexd:one"),
            })
            .unwrap();
        let nvmf = |nqn: &str, hosts: &[&str], portal: &str| Change::VolExport {
            dg: "dg1".into(),
            volume: "v1".into(),
            export: Export {
                protocol: ExportProtocol::Nvmf,
                iqn: nqn.into(),
                nodes: Vec::new(),
                portal: portal.into(),
                hosts: hosts.iter().map(|h| h.to_string()).collect(),
            },
        };
        let e = c
            .apply(&nvmf("nqn.2026-11.io.plexd:one", &["bad host"], ""))
            .unwrap_err();
        assert!(e.to_string().contains("host NQN \"bad host\""), "{e}");
        let e = c
            .apply(&nvmf("nqn.2026-11.io.plexd:one", &[], "127.0.0.1:4420"))
            .unwrap_err();
        assert!(e.to_string().contains("nvmf_portal"), "{e}");
        let host = "nqn.2014-08.org.nvmexpress:uuid:1";
        let c = c
            .apply(&nvmf("nqn.2026-11.io.plexd:one", &[host], ""))
            .unwrap();
        let v = &c.disk_groups[0].volumes[0];
        assert_eq!(
            v.exports.iter().map(|e| e.protocol).collect::<Vec<_>>(),
            [ExportProtocol::Iscsi, ExportProtocol::Nvmf]
        );
        assert_eq!(v.exports[1].hosts, [host]);
        let e = c
            .apply(&nvmf("nqn.2026-11.io.plexd:two", &[], ""))
            .unwrap_err();
        assert!(e.to_string().contains("already exported over nvmf"), "{e}");
        let c = c
            .apply(&Change::VolUnexport {
                dg: "dg1".into(),
                volume: "v1".into(),
                protocol: ExportProtocol::Nvmf,
            })
            .unwrap();
        assert_eq!(c.disk_groups[0].volumes[0].exports.len(), 1, "iSCSI stays");
    }

    #[test]
    fn an_export_is_unique_keeps_its_volume_and_ends_with_unexport() {
        let c = test_support::cluster(&[("disk01", 1 << 30)]);
        let vol = |c: &ClusterConfig, v: &str| {
            c.apply(&Change::VolCreate {
                dg: "dg1".into(),
                volume: v.into(),
                size_bytes: 1 << 20,
                layout: VolumeLayout::Concat,
            })
            .unwrap()
        };
        let exp = |v: &str, iqn: &str| Change::VolExport {
            dg: "dg1".into(),
            volume: v.into(),
            export: export(iqn),
        };
        let c = vol(&vol(&c, "v1"), "v2");
        let c = c.apply(&exp("v1", "iqn.2026-11.io.plexd:one")).unwrap();
        assert_eq!(c.disk_groups[0].volumes[0].exports.len(), 1);
        let e = c.apply(&exp("v1", "iqn.2026-11.io.plexd:two")).unwrap_err();
        assert!(e.to_string().contains("already exported"), "{e}");
        let e = c.apply(&exp("v2", "iqn.2026-11.io.plexd:one")).unwrap_err();
        assert!(e.to_string().contains("volume v1"), "{e}");
        let rm = Change::VolRm {
            dg: "dg1".into(),
            volume: "v1".into(),
        };
        let e = c.apply(&rm).unwrap_err();
        assert!(e.to_string().contains("unexport it first"), "{e}");
        let unexport = Change::VolUnexport {
            dg: "dg1".into(),
            volume: "v1".into(),
            protocol: ExportProtocol::Iscsi,
        };
        let c = c.apply(&unexport).unwrap();
        assert!(c.apply(&unexport).is_err(), "nothing left to unexport");
        assert!(c.apply(&rm).is_ok());
    }

    #[test]
    fn an_exported_group_is_deported_or_destroyed_only_with_force() {
        let c = test_support::cluster(&[("disk01", 1 << 30)]);
        let c = create_vol(&c, "v1", 1 << 20, VolumeLayout::Concat).unwrap();
        let c = c
            .apply(&Change::VolExport {
                dg: "dg1".into(),
                volume: "v1".into(),
                export: export("iqn.2026-11.io.plexd:one"),
            })
            .unwrap();
        for force in [false, true] {
            let deport = Change::DgDeport {
                dg: "dg1".into(),
                force,
            };
            let destroy = Change::DgDestroy {
                dg: "dg1".into(),
                force,
            };
            if force {
                let after = c.apply(&deport).unwrap();
                let updates = deport.disk_updates(&c, &after);
                let DiskUpdate::WriteConfig(on_disk) = &updates[0] else {
                    panic!("{updates:?}")
                };
                assert!(on_disk.volumes[0].exports.is_empty(), "exports end");
                assert!(c.apply(&destroy).is_ok());
            } else {
                for change in [deport, destroy] {
                    let e = c.apply(&change).unwrap_err().to_string();
                    assert!(
                        e.contains("volume v1 is exported")
                            && e.contains("plexctl unexport iscsi dg1 v1")
                            && e.contains("--force"),
                        "{e}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_active_mirror_is_removed_only_with_force_and_one_column_stripes_are_refused() {
        let c = test_support::cluster(&[("disk01", 1 << 30), ("disk02", 1 << 30)]);
        let c = create_vol(&c, "v1", 1 << 20, VolumeLayout::Mirror { mirrors: 2 }).unwrap();
        let rm = |force| Change::PlexRm {
            dg: "dg1".into(),
            plex: "v1-02".into(),
            force,
        };
        let e = c.apply(&rm(false)).unwrap_err().to_string();
        assert!(e.contains("ACTIVE") && e.contains("--force"), "{e}");
        assert_eq!(
            c.apply(&rm(true)).unwrap().disk_groups[0].volumes[0]
                .plexes
                .len(),
            1
        );
        let one_column = VolumeLayout::Stripe {
            columns: 1,
            stripe_unit_bytes: DEFAULT_STRIPE_UNIT_BYTES,
        };
        let e = create_vol(&c, "v2", 1 << 20, one_column)
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least 2 columns"), "{e}");
    }

    #[test]
    fn describe_states_size_placement_and_rounding() {
        let c = test_support::cluster(&[("disk01", 1 << 30), ("disk02", 1 << 30)]);
        let change = Change::VolCreate {
            dg: "dg1".into(),
            volume: "v1".into(),
            size_bytes: 513,
            layout: VolumeLayout::Mirror { mirrors: 2 },
        };
        let after = c.apply(&change).unwrap();
        let text = describe(&change, after.disk_group("dg1"));
        assert!(
            text.contains("volume v1 created in disk group dg1: 1.0 KiB"),
            "{text}"
        );
        assert!(text.contains("513 bytes asked, rounded up"), "{text}");
        assert!(text.contains("v1-01 ACTIVE concat on disk01"), "{text}");
        assert!(text.contains("v1-02 ACTIVE concat on disk02"), "{text}");
    }
}
