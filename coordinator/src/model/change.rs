//! Configuration changes: what moves the model, which disk writes each needs, and
//! the one-line description `plexctl` prints after a commit.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::*;

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
    /// `dg fail-disk`: the disk is recorded failed ([`Disk::failed`]): every plex
    /// with a subdisk on it becomes STALE, its dirty region log copies move to other
    /// disks (a log that cannot move loses that copy, or the log when it was its
    /// only one), nothing is allocated or written on it any more, and no node needs
    /// to find it. Refused when a volume's only ACTIVE plexes are on it unless
    /// `force` (that volume is then served nowhere). While it waits in the master's
    /// queue, the master's join offers do not ask for the disk: this is how the
    /// operator lets a cluster whose disk is gone for good form (docs/OPERATIONS.md).
    DgFailDisk {
        /// Group.
        dg: String,
        /// Disk media name.
        disk: String,
        /// `--force`: also when a volume's only ACTIVE plexes are on the disk.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    /// `dg reattach-disk`: a disk recorded failed ([`Change::DgFailDisk`]) is back.
    /// Every node that takes part must find it (by the id the group records), the
    /// configuration is written to it again, and the plexes its failure made STALE
    /// ([`Disk::staled`]) come back: one that was its volume's last ACTIVE plex is
    /// ACTIVE again while the volume has no other (nothing wrote the volume since),
    /// the others SYNCING from an ACTIVE plex (a whole copy). Refused when the disk
    /// is not recorded failed.
    DgReattachDisk {
        /// Group.
        dg: String,
        /// The group's record of the disk (its id: the one every node must find).
        disk: Disk,
    },
    /// `dg evacuate`: every plex with a subdisk on the disk that no plex replaces yet
    /// gets a replacement: a new plex of its layout on disks its volume does not
    /// use, SYNCING (a whole copy from an ACTIVE plex), that replaces it
    /// ([`crate::model::Plex::replaces`]): the change that makes the new plex ACTIVE
    /// (the copy's end) removes the old one. A plex already being replaced is left
    /// as it is, so the command may be given again after an interruption. Refused
    /// when no plex on the disk is left to move. Dirty region log copies stay on the
    /// disk (`dg rm-disk` moves them).
    DgEvacuate {
        /// Group.
        dg: String,
        /// Disk media name.
        disk: String,
        /// `--to`: the disks the replacements may use (empty: any disk of the group).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        to: Vec<String>,
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
        /// The dirty region log of a mirrored layout (ignored for one plex).
        #[serde(default, skip_serializing_if = "LogPolicy::is_default")]
        log: LogPolicy,
        /// `--disks`: the disks the plexes may use (empty: any disk of the group).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        disks: Vec<String>,
    },
    /// `vol grow`: every plex is extended; a log too small for the new size gets a
    /// new place or larger regions (a new log id).
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
        /// `--force`: also while hosts use the volume (each node's local check
        /// refuses it otherwise).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        force: bool,
    },
    /// `dg set DG detach-policy=...`: the group's detach policy (a shared group's;
    /// a private group is refused `local`).
    DgSetDetachPolicy {
        /// Group.
        dg: String,
        /// New policy.
        policy: DetachPolicy,
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
        /// `--disks`: the disks the new plex may use (empty: any disk of the group).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        disks: Vec<String>,
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
    /// Local detach policy: a write failed on `plex` on some node and reached the
    /// volume's other plexes, so `ranges` (byte offset, length) may differ between
    /// plexes. An ACTIVE plex becomes SYNCING with `ranges` to copy; a SYNCING one
    /// adds them to its own (coalesced, at most [`MAX_DIVERGED_RANGES`]).
    PlexDiverged {
        /// Group.
        dg: String,
        /// Plex name.
        plex: String,
        /// The failed writes' ranges.
        ranges: Vec<(u64, u64)>,
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
    /// Node start `node` may write the shared mirrored volumes from now on: it is
    /// added to every shared group's open nodes (made by the master, `model::recovery`).
    NodeOpen {
        /// The node start.
        node: OpenNode,
    },
    /// Node start `node` stopped cleanly (its data plane no longer writes shared
    /// volumes): it leaves every shared group's open nodes (no recovery follows).
    NodeClose {
        /// The node start.
        node: OpenNode,
    },
    /// Node start `node` was lost without a clean stop: every shared mirrored volume
    /// with two or more ACTIVE plexes keeps its first ACTIVE plex and the others
    /// become SYNCING (resynchronised from it: whole, or only the dirty ranges its
    /// log names, `logs`); `node` leaves the open nodes.
    NodeRecover {
        /// The node start.
        node: OpenNode,
        /// What the start's dirty region log said, per volume read (a volume not
        /// listed is resynchronised whole; an older node sends none).
        logs: Vec<RecoverLog>,
    },
}

/// What a recovered node start's section of one volume's dirty region log said
/// ([`Change::NodeRecover`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoverLog {
    /// Disk group.
    pub dg: String,
    /// Volume.
    pub volume: String,
    /// The log read (a volume whose log has another id now is resynchronised whole).
    pub log_id: u64,
    /// The dirty byte ranges `(offset, len)`, ascending and disjoint (at most
    /// [`MAX_RECOVER_RANGES_PER_VOLUME`]); empty: the start wrote nothing
    /// unfinished, no resync.
    pub ranges: Vec<(u64, u64)>,
}

impl Change {
    /// The disk group the change is about.
    pub fn dg_name(&self) -> &str {
        match self {
            Change::DgImport { config, .. } => &config.name,
            Change::DgCreate { dg, .. }
            | Change::DgAddDisk { dg, .. }
            | Change::DgRmDisk { dg, .. }
            | Change::DgFailDisk { dg, .. }
            | Change::DgReattachDisk { dg, .. }
            | Change::DgEvacuate { dg, .. }
            | Change::DgDestroy { dg, .. }
            | Change::DgDeport { dg, .. }
            | Change::VolCreate { dg, .. }
            | Change::VolGrow { dg, .. }
            | Change::VolShrink { dg, .. }
            | Change::VolSetReadPolicy { dg, .. }
            | Change::DgSetDetachPolicy { dg, .. }
            | Change::VolRm { dg, .. }
            | Change::PlexAdd { dg, .. }
            | Change::PlexDetach { dg, .. }
            | Change::PlexAttach { dg, .. }
            | Change::PlexRm { dg, .. }
            | Change::SetPlexState { dg, .. }
            | Change::PlexDiverged { dg, .. }
            | Change::VolExport { dg, .. }
            | Change::VolUnexport { dg, .. }
            | Change::VolPrOut { dg, .. } => dg,
            // Node bookkeeping changes touch every shared group.
            Change::NodeOpen { .. } | Change::NodeClose { .. } | Change::NodeRecover { .. } => "",
        }
    }

    /// Disks that every node must be able to open before the change is accepted
    /// (the slaves' check in step 2 of the transaction).
    pub fn new_disks(&self) -> Vec<&Disk> {
        match self {
            Change::DgCreate { disks, .. } => disks.iter().collect(),
            Change::DgAddDisk { disk, .. } | Change::DgReattachDisk { disk, .. } => vec![disk],
            Change::DgImport { config, .. } => config.disks.iter().filter(|d| !d.failed).collect(),
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
            Change::NodeOpen { .. } | Change::NodeClose { .. } | Change::NodeRecover { .. } => {
                // Every shared group the change touched (its seq moved).
                for g in after.disk_groups.iter().filter(|g| g.shared) {
                    if before.disk_group(&g.name).is_none_or(|b| b.seq != g.seq) {
                        updates.push(DiskUpdate::WriteConfig(Arc::new(g.clone())));
                    }
                }
            }
            Change::DgDestroy { .. } => {
                if let Some(old) = old {
                    updates.extend(old.disks.iter().cloned().map(DiskUpdate::Release));
                }
            }
            Change::DgDeport { .. } => {
                if let Some(old) = old {
                    updates.push(DiskUpdate::WriteConfig(Arc::new(old.deported())));
                }
            }
            _ => {
                if let Some(new) = after.disk_group(name) {
                    updates.push(DiskUpdate::WriteConfig(Arc::new(new.clone())));
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
    /// updating labels whose disk group fields differ. Shared with the model's
    /// group where it is one (no copy of the volume list per change).
    WriteConfig(Arc<DiskGroupConfig>),
    /// Clear the disk's disk group fields and slots (`ondisk::release_disk`).
    Release(Disk),
}

/// What a committed change did, in one line for `plexctl` (object, size, placement,
/// and any adjustment of what was asked). `after` is the change's disk group as it
/// is now, when it still exists.
pub fn describe(change: &Change, after: Option<&DiskGroupConfig>) -> String {
    use crate::size::format_size;
    let volume = |name: &str| after.and_then(|g| g.volume(name));
    let dg = change.dg_name();
    match change {
        Change::DgCreate { shared, disks, .. } => describe_dg_create(dg, *shared, disks),
        Change::DgImport { shared, .. } => {
            format!("disk group {dg} imported ({})", sharing(*shared))
        }
        Change::DgAddDisk { disk, .. } => format!(
            "disk {} added to disk group {dg} ({} free)",
            disk.name,
            format_size(disk.public_len_bytes)
        ),
        Change::DgRmDisk { disk, .. } => format!("disk {disk} removed from disk group {dg}"),
        Change::DgFailDisk { disk, .. } => describe_fail_disk(dg, disk, after),
        Change::DgReattachDisk { disk, .. } => describe_reattach_disk(dg, &disk.name, after),
        Change::DgEvacuate { disk, .. } => describe_evacuate(dg, disk, after),
        Change::DgDestroy { force, .. } => format!(
            "disk group {dg} destroyed, its disks released{}",
            exports_ended(*force)
        ),
        Change::DgDeport { force, .. } => {
            format!("disk group {dg} deported{}", exports_ended(*force))
        }
        Change::VolCreate {
            volume: name,
            size_bytes,
            ..
        } => describe_sized(
            format!("volume {name} created in disk group {dg}"),
            ": ",
            *size_bytes,
            volume(name),
        ),
        Change::VolGrow {
            volume: name,
            new_size_bytes,
            ..
        } => describe_sized(
            format!("volume {name} of disk group {dg} grown"),
            " to ",
            *new_size_bytes,
            volume(name),
        ),
        Change::VolShrink {
            volume: name,
            new_size_bytes,
            ..
        } => describe_sized(
            format!("volume {name} of disk group {dg} shrunk"),
            " to ",
            *new_size_bytes,
            volume(name),
        ),
        Change::VolSetReadPolicy { volume, policy, .. } => {
            format!("volume {volume} of disk group {dg}: read policy {}", policy.name())
        }
        Change::DgSetDetachPolicy { policy, .. } => {
            format!("disk group {dg}: detach policy {}", policy.as_str())
        }
        Change::VolRm { volume, .. } => format!("volume {volume} removed from disk group {dg}"),
        Change::PlexAdd { volume: name, .. } => describe_plex_add(dg, name, volume(name)),
        Change::PlexDetach { plex, .. } => format!("plex {plex} of disk group {dg} detached (STALE)"),
        Change::PlexAttach { plex, .. } => format!(
            "plex {plex} of disk group {dg} attached: SYNCING, ACTIVE once resynchronised (plexctl task list)"
        ),
        Change::PlexRm { plex, .. } => format!("plex {plex} removed from disk group {dg}"),
        Change::PlexDiverged { plex, ranges, .. } => format!(
            "plex {plex} of disk group {dg}: {} range(s) failed on a node; SYNCING over them",
            ranges.len()
        ),
        Change::SetPlexState { plex, state, .. } => {
            format!("plex {plex} of disk group {dg} set {}", state.as_str())
        }
        Change::VolExport {
            volume, export, ..
        } => describe_vol_export(dg, volume, export),
        Change::VolPrOut {
            volume,
            nexus,
            service_action,
            ..
        } => format!(
            "volume {volume} of disk group {dg}: persistent reservations changed (service action {service_action} from {nexus})"
        ),
        Change::NodeOpen { node } => format!(
            "node {} (start {}) may write the shared mirrored volumes",
            node.node, node.incarnation
        ),
        Change::NodeClose { node } => format!(
            "node {} (start {}) stopped cleanly: no recovery needed",
            node.node, node.incarnation
        ),
        Change::NodeRecover { node, logs } if logs.is_empty() => format!(
            "node {} (start {}) was lost without a clean stop: its mirrors are resynchronised (NEEDSYNC: one ACTIVE plex each, the others SYNCING; plexctl task list)",
            node.node, node.incarnation
        ),
        Change::NodeRecover { node, logs } => format!(
            "node {} (start {}) was lost without a clean stop: its mirrors are resynchronised (NEEDSYNC: one ACTIVE plex each, the others SYNCING; plexctl task list); dirty region logs read: {} volume(s) with {} dirty bytes, {} clean",
            node.node,
            node.incarnation,
            logs.iter().filter(|l| !l.ranges.is_empty()).count(),
            logs.iter().flat_map(|l| &l.ranges).map(|r| r.1).sum::<u64>(),
            logs.iter().filter(|l| l.ranges.is_empty()).count()
        ),
        Change::VolUnexport {
            volume, protocol, ..
        } => format!(
            "volume {volume} of disk group {dg}: {} export ended on every node",
            protocol.as_str()
        ),
    }
}

/// [`describe`] of [`Change::DgCreate`].
fn describe_dg_create(dg: &str, shared: bool, disks: &[Disk]) -> String {
    let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
    format!(
        "disk group {dg} created ({}) on disks {}",
        sharing(shared),
        names.join(", ")
    )
}

/// `shared` or `private`, for a group's description.
fn sharing(shared: bool) -> &'static str {
    if shared {
        "shared"
    } else {
        "private"
    }
}

/// The note on a forced destroy or deport.
fn exports_ended(force: bool) -> &'static str {
    if force {
        " (its exports ended)"
    } else {
        ""
    }
}

/// The note when a size was rounded up to whole sectors (empty when it was not).
fn rounded_note(asked: u64, got: u64) -> String {
    if asked == got {
        String::new()
    } else {
        format!(" ({asked} bytes asked, rounded up to whole {SECTOR_BYTES}-byte sectors)")
    }
}

/// Where a volume's plexes are: `v1-01 ACTIVE stripe 2 columns x 64K on d1+d2, ...`,
/// and its dirty region log: `; dirty region log on d3+d1 (512.0 KiB regions)`.
fn describe_placement(v: &Volume) -> String {
    use crate::size::format_size;
    let log = match &v.log {
        Some(l) => format!(
            "; dirty region log on {} ({} regions)",
            l.disks(),
            format_size(l.region_bytes)
        ),
        None => String::new(),
    };
    let plexes = v
        .plexes
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
        .join(", ");
    format!("{plexes}{log}")
}

/// `disk d1 of disk group dg1 recorded failed: plex(es) vol1-02 STALE`.
fn describe_fail_disk(dg: &str, disk: &str, after: Option<&DiskGroupConfig>) -> String {
    let stale: Vec<&str> = after
        .into_iter()
        .flat_map(|g| &g.volumes)
        .flat_map(|v| &v.plexes)
        .filter(|p| p.subdisks.iter().any(|sd| sd.disk == disk))
        .map(|p| p.name.as_str())
        .collect();
    let unserved: Vec<&str> = after
        .into_iter()
        .flat_map(|g| &g.volumes)
        .filter(|v| v.active_plexes() == 0)
        .map(|v| v.name.as_str())
        .collect();
    let mut line = format!("disk {disk} of disk group {dg} recorded failed");
    if !stale.is_empty() {
        line += &format!("; plex(es) {} STALE", stale.join(", "));
    }
    if !unserved.is_empty() {
        line += &format!("; volume(s) {} have no ACTIVE plex", unserved.join(", "));
    }
    line
}

/// `disk d1 of disk group dg1 reattached; plex(es) cat-01 ACTIVE; plex(es) mir-01
/// SYNCING (see plexctl task list); plex(es) old-02 STALE`: the state of each plex
/// on the disk after the change.
fn describe_reattach_disk(dg: &str, disk: &str, after: Option<&DiskGroupConfig>) -> String {
    let mut line = format!("disk {disk} of disk group {dg} reattached");
    for (state, note) in [
        (PlexState::Active, ""),
        (PlexState::Syncing, " (see plexctl task list)"),
        (PlexState::Stale, " (plexctl plex attach to copy them)"),
        (PlexState::Empty, ""),
    ] {
        let plexes: Vec<&str> = after
            .into_iter()
            .flat_map(|g| &g.volumes)
            .flat_map(|v| &v.plexes)
            .filter(|p| p.state == state && p.subdisks.iter().any(|sd| sd.disk == disk))
            .map(|p| p.name.as_str())
            .collect();
        if !plexes.is_empty() {
            line += &format!("; plex(es) {} {}{note}", plexes.join(", "), state.as_str());
        }
    }
    line
}

/// [`describe`] of [`Change::DgEvacuate`]: each plex on the disk and the plex that
/// replaces it.
fn describe_evacuate(dg: &str, disk: &str, after: Option<&DiskGroupConfig>) -> String {
    let moves: Vec<String> = after
        .into_iter()
        .flat_map(|g| &g.volumes)
        .flat_map(|v| v.plexes.iter().map(move |p| (v, p)))
        .filter_map(|(v, p)| {
            let old = p.replaces.as_deref()?;
            let on_disk = v.plex(old).is_some_and(|o| o.disks().contains(disk));
            let to: Vec<&str> = p.disks().into_iter().collect();
            on_disk.then(|| format!("{old} -> {} (on {})", p.name, to.join("+")))
        })
        .collect();
    format!(
        "disk {disk} of disk group {dg}: moving plex(es) {}: SYNCING, each replaces its plex on {disk} once ACTIVE (see plexctl task list)",
        moves.join(", ")
    )
}

/// [`describe`] of a change that sized a volume: `headline`, then (when the volume
/// still exists) after `sep` its size, any rounding of the `asked` size, and its
/// placement.
fn describe_sized(headline: String, sep: &str, asked: u64, sized: Option<&Volume>) -> String {
    match sized {
        Some(v) => format!(
            "{headline}{sep}{}{}: {}",
            crate::size::format_size(v.size_bytes),
            rounded_note(asked, v.size_bytes),
            describe_placement(v)
        ),
        None => headline,
    }
}

/// [`describe`] of [`Change::PlexAdd`]: the new plex is the volume's last.
fn describe_plex_add(dg: &str, name: &str, volume: Option<&Volume>) -> String {
    match volume.and_then(|v| v.plexes.last()) {
        Some(p) => format!(
            "plex {} added to volume {name} of disk group {dg}: EMPTY on {} (plexctl plex attach {dg} {} to use it)",
            p.name,
            p.disks().into_iter().collect::<Vec<_>>().join("+"),
            p.name
        ),
        None => format!("plex added to volume {name} of disk group {dg}"),
    }
}

/// [`describe`] of [`Change::VolExport`].
fn describe_vol_export(dg: &str, volume: &str, export: &Export) -> String {
    format!(
        "volume {volume} of disk group {dg} exported over {} as {} on {}",
        export.protocol.as_str(),
        export.iqn,
        if export.nodes.is_empty() {
            "every node".to_string()
        } else {
            format!("node {}", export.nodes.join(", "))
        }
    )
}
