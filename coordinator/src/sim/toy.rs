//! A small configuration model for the simulator: named disk groups, each with one
//! volume of a few plexes, and the list of client changes applied so far (so the
//! invariants can tell which changes a configuration holds).

use crate::core::{
    ConfigModel, DirtyLogRead, DirtyLogSection, ErrorKind, RequestError, SectionCopy, SyncingPlex,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Size of every toy volume: four resync chunks.
pub const TOY_VOLUME_BYTES: u64 = 4 * crate::core::RESYNC_CHUNK_BYTES;
/// A toy dirty region log's region: half a resync chunk (so two dirty ranges can
/// share one chunk's fence round). The simulator also tracks what resyncs copied
/// in these units.
pub const TOY_REGION_BYTES: u64 = crate::core::RESYNC_CHUNK_BYTES / 2;
/// A toy log section's size (node `n`'s at `n` times this on the group's disk).
pub const TOY_SECTION_BYTES: u64 = 8192;

/// A disk group of the toy model: its volume's plexes, `true` when ACTIVE.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToyGroup {
    /// Plex name → ACTIVE (false: STALE, detached, or SYNCING).
    pub plexes: BTreeMap<String, bool>,
    /// The plexes (not ACTIVE) being resynced: they take every write.
    #[serde(default)]
    pub syncing: BTreeSet<String>,
    /// The volume's dirty region log id, if it has one.
    #[serde(default)]
    pub log: Option<u64>,
    /// SYNCING plexes resynced only in these byte ranges (a crashed node's dirty
    /// regions); a SYNCING plex not here is resynced whole.
    #[serde(default)]
    pub ranges: BTreeMap<String, Vec<(u64, u64)>>,
    /// The group's disk is recorded failed ([`ToyChange::FailDisk`]): no joiner is
    /// asked for it.
    #[serde(default)]
    pub disk_failed: bool,
}

/// The toy configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToyConfig {
    /// Sequence number.
    pub seq: u64,
    /// Disk groups by name; each holds one volume of the same name.
    pub groups: BTreeMap<String, ToyGroup>,
    /// Tags of the client changes applied, in order.
    pub history: Vec<u64>,
    /// Open node starts: node → incarnation (`core::recovery`).
    #[serde(default)]
    pub open: BTreeMap<u32, u64>,
    /// Node starts recovered, in order (a clean stop must add none).
    #[serde(default)]
    pub recovered: Vec<(u32, u64)>,
}

/// What a recovered start's log said about one volume: (volume, log id, dirty
/// byte ranges).
pub type ToyLog = (String, u64, Vec<(u64, u64)>);

/// A toy change. Client changes carry a unique tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToyChange {
    /// Create a shared disk group with a volume of `plexes` plexes.
    Create {
        /// Unique tag.
        tag: u64,
        /// Group (and volume) name.
        name: String,
        /// Number of plexes, 1 or more.
        plexes: u8,
        /// The volume has a dirty region log (id: the tag).
        #[serde(default)]
        log: bool,
    },
    /// The group's disk is recorded failed (`dg fail-disk`): joiners are not asked
    /// for it, and while this waits at a master, its offers leave it out.
    FailDisk {
        /// Unique tag.
        tag: u64,
        /// Group name (its disk is `<name>-disk`).
        name: String,
    },
    /// The group's failed disk is back (`dg reattach-disk`): joiners are asked for
    /// it again, and every node that takes part must find it (the local check).
    ReattachDisk {
        /// Unique tag.
        tag: u64,
        /// Group name (its disk is `<name>-disk`).
        name: String,
    },
    /// The volume's dirty region log moves (`dg rm-disk` of its disk): a new log
    /// id (the tag), so every data plane starts a fresh section.
    MoveLog {
        /// Unique tag (the new log id).
        tag: u64,
        /// Group (and volume) name.
        name: String,
    },
    /// Create a private disk group (of the node the change is made on) with a
    /// volume of `plexes` plexes.
    CreatePrivate {
        /// Unique tag.
        tag: u64,
        /// Group (and volume) name.
        name: String,
        /// Number of plexes, 1 or more.
        plexes: u8,
    },
    /// Destroy a disk group.
    Destroy {
        /// Unique tag.
        tag: u64,
        /// Group name.
        name: String,
    },
    /// Attach a STALE plex again: it becomes SYNCING (`plex attach`).
    Attach {
        /// Unique tag.
        tag: u64,
        /// Volume name.
        volume: String,
        /// Plex name.
        plex: String,
    },
    /// A resync is done: the SYNCING plex becomes ACTIVE (made by the master).
    SetActive {
        /// Volume name.
        volume: String,
        /// Plex name.
        plex: String,
    },
    /// A node start may write the mirrors (made by the master).
    Open {
        /// Node.
        node: u32,
        /// Its start.
        inc: u64,
    },
    /// A node start stopped cleanly.
    Close {
        /// Node.
        node: u32,
        /// Its start.
        inc: u64,
    },
    /// A node start was lost: every volume with two or more ACTIVE plexes keeps the
    /// first, the others become SYNCING.
    Recover {
        /// Node.
        node: u32,
        /// Its start.
        inc: u64,
        /// What its dirty region logs said: (volume, log id, dirty ranges); a
        /// volume not listed is resynced whole, one with no range not at all.
        #[serde(default)]
        logs: Vec<ToyLog>,
    },
    /// Detach a plex (made by the master after a plex I/O error).
    Detach {
        /// Volume name.
        volume: String,
        /// Plex name.
        plex: String,
    },
}

impl ToyConfig {
    /// Whether a client change with this tag is applied.
    pub fn has(&self, tag: u64) -> bool {
        self.history.contains(&tag)
    }

    /// [`ConfigModel::validate_and_apply`] with the reason as text.
    fn apply(&self, change: &ToyChange) -> Result<ToyConfig, String> {
        let mut next = self.clone();
        next.seq += 1;
        match change {
            ToyChange::Create {
                tag, name, plexes, ..
            }
            | ToyChange::CreatePrivate { tag, name, plexes } => {
                if self.groups.contains_key(name) {
                    return Err(format!("disk group {name} already exists"));
                }
                if *plexes == 0 {
                    return Err(format!("volume {name} needs at least one plex"));
                }
                let plexes = (0..*plexes)
                    .map(|i| (format!("{name}-{:02}", i + 1), true))
                    .collect();
                let log = matches!(change, ToyChange::Create { log: true, .. }).then_some(*tag);
                next.groups.insert(
                    name.clone(),
                    ToyGroup {
                        plexes,
                        log,
                        ..ToyGroup::default()
                    },
                );
                next.history.push(*tag);
            }
            ToyChange::Destroy { tag, name } => {
                if next.groups.remove(name).is_none() {
                    return Err(format!("no disk group {name}"));
                }
                next.history.push(*tag);
            }
            ToyChange::FailDisk { tag, name } | ToyChange::ReattachDisk { tag, name } => {
                let fail = matches!(change, ToyChange::FailDisk { .. });
                let group = next
                    .groups
                    .get_mut(name)
                    .ok_or_else(|| format!("no disk group {name}"))?;
                match (fail, group.disk_failed) {
                    (true, true) => {
                        return Err(format!("disk {name}-disk is already recorded failed"))
                    }
                    (false, false) => {
                        return Err(format!("disk {name}-disk is not recorded failed"))
                    }
                    _ => group.disk_failed = fail,
                }
                next.history.push(*tag);
            }
            ToyChange::MoveLog { tag, name } => {
                let group = next
                    .groups
                    .get_mut(name)
                    .ok_or_else(|| format!("no disk group {name}"))?;
                if group.log.is_none() {
                    return Err(format!("volume {name} has no dirty region log"));
                }
                group.log = Some(*tag);
                next.history.push(*tag);
            }
            ToyChange::Attach { tag, volume, plex } => {
                let group = next
                    .groups
                    .get_mut(volume)
                    .ok_or_else(|| format!("no volume {volume}"))?;
                match group.plexes.get(plex) {
                    None => return Err(format!("no plex {plex} in volume {volume}")),
                    Some(true) => return Err(format!("plex {plex} of volume {volume} is ACTIVE")),
                    Some(false) if group.syncing.contains(plex) => {
                        return Err(format!("plex {plex} of volume {volume} is already SYNCING"))
                    }
                    Some(false) => {
                        group.syncing.insert(plex.clone());
                        group.ranges.remove(plex);
                    }
                }
                next.history.push(*tag);
            }
            ToyChange::SetActive { volume, plex } => {
                let group = next
                    .groups
                    .get_mut(volume)
                    .ok_or_else(|| format!("no volume {volume}"))?;
                if !group.syncing.remove(plex) {
                    return Err(format!("plex {plex} of volume {volume} is not SYNCING"));
                }
                group.ranges.remove(plex);
                group.plexes.insert(plex.clone(), true);
            }
            ToyChange::Open { node, inc } => match self.open.get(node) {
                Some(i) if i == inc => {
                    return Err(format!("node {node} start {inc} is already open"))
                }
                Some(i) => {
                    return Err(format!(
                        "node {node} start {inc}: its earlier start {i} is still open"
                    ))
                }
                None => {
                    next.open.insert(*node, *inc);
                }
            },
            ToyChange::Close { node, inc } => {
                if self.open.get(node) != Some(inc) {
                    return Err(format!("node {node} start {inc} is not open"));
                }
                next.open.remove(node);
            }
            ToyChange::Recover { node, inc, logs } => {
                if self.open.get(node) != Some(inc) {
                    return Err(format!("node {node} start {inc} is not open"));
                }
                next.open.remove(node);
                next.recovered.push((*node, *inc));
                for (name, g) in next.groups.iter_mut() {
                    // None: whole; Some(ranges): only those (none: nothing).
                    let dirty = logs
                        .iter()
                        .find(|(v, id, _)| v == name && g.log == Some(*id))
                        .map(|(_, _, r)| r.clone());
                    if dirty.as_ref().is_some_and(Vec::is_empty) {
                        continue;
                    }
                    let active: Vec<String> = g
                        .plexes
                        .iter()
                        .filter(|(_, &a)| a)
                        .map(|(p, _)| p.clone())
                        .collect();
                    for p in active.iter().skip(1) {
                        g.plexes.insert(p.clone(), false);
                        g.syncing.insert(p.clone());
                        match &dirty {
                            Some(d) => g.ranges.insert(p.clone(), d.clone()),
                            None => g.ranges.remove(p),
                        };
                    }
                    // A plex SYNCING in some ranges already: the union (whole
                    // stays whole).
                    let old: Vec<String> = g
                        .ranges
                        .keys()
                        .filter(|p| !active.contains(p))
                        .cloned()
                        .collect();
                    for p in old {
                        match &dirty {
                            None => {
                                g.ranges.remove(&p);
                            }
                            Some(d) => {
                                let r = g.ranges.entry(p).or_default();
                                r.extend_from_slice(d);
                                *r = crate::model::bound_ranges(
                                    r,
                                    TOY_VOLUME_BYTES,
                                    crate::model::MAX_RECOVER_RANGES_PER_VOLUME,
                                );
                            }
                        }
                    }
                }
            }
            ToyChange::Detach { volume, plex } => {
                let group = next
                    .groups
                    .get_mut(volume)
                    .ok_or_else(|| format!("no volume {volume}"))?;
                if group.syncing.remove(plex) {
                    group.ranges.remove(plex);
                    return Ok(next);
                }
                let active = group.plexes.values().filter(|&&a| a).count();
                match group.plexes.get_mut(plex) {
                    None => return Err(format!("no plex {plex} in volume {volume}")),
                    Some(false) => {
                        return Err(format!("plex {plex} of volume {volume} is already STALE"))
                    }
                    Some(_) if active <= 1 => {
                        return Err(format!(
                            "plex {plex} is the last ACTIVE plex of volume {volume}; not detached"
                        ))
                    }
                    Some(a) => *a = false,
                }
            }
        }
        Ok(next)
    }

    /// [`ConfigModel::detach_plex`] with the reason as text.
    fn detach_change(&self, volume: &str, plex: &str) -> Result<Option<ToyChange>, String> {
        let group = self
            .groups
            .get(volume)
            .ok_or_else(|| format!("no volume {volume}"))?;
        match group.plexes.get(plex) {
            None => Err(format!("no plex {plex} in volume {volume}")),
            Some(false) if group.syncing.contains(plex) => Ok(Some(ToyChange::Detach {
                volume: volume.to_string(),
                plex: plex.to_string(),
            })),
            Some(false) => Ok(None),
            Some(true) if group.plexes.values().filter(|&&a| a).count() <= 1 => Err(format!(
                "plex {plex} is the last ACTIVE plex of volume {volume}; not detached"
            )),
            Some(true) => Ok(Some(ToyChange::Detach {
                volume: volume.to_string(),
                plex: plex.to_string(),
            })),
        }
    }
}

impl ConfigModel for ToyConfig {
    type Change = ToyChange;

    /// A destroy's answer waits for every member's data plane (as a shared
    /// volume's reservation change does in plexd).
    fn answer_after_applied(change: &ToyChange) -> bool {
        matches!(change, ToyChange::Destroy { .. })
    }

    fn seq(&self) -> u64 {
        self.seq
    }

    type Private = ToyConfig;

    fn validate_and_apply(&self, change: &ToyChange) -> Result<ToyConfig, RequestError> {
        if let ToyChange::CreatePrivate { name, .. } = change {
            let e = format!("disk group {name}: a private disk group is not a cluster change");
            return Err(RequestError::unplaced(ErrorKind::Internal, e));
        }
        self.apply(change)
            .map_err(|e| RequestError::unplaced(ErrorKind::Refused, e))
    }

    fn is_private(private: &ToyConfig, change: &ToyChange) -> bool {
        match change {
            ToyChange::CreatePrivate { .. } => true,
            ToyChange::Create { .. }
            | ToyChange::Open { .. }
            | ToyChange::Close { .. }
            | ToyChange::Recover { .. } => false,
            ToyChange::Destroy { name, .. }
            | ToyChange::MoveLog { name, .. }
            | ToyChange::FailDisk { name, .. }
            | ToyChange::ReattachDisk { name, .. } => private.groups.contains_key(name),
            ToyChange::Attach { volume, .. }
            | ToyChange::SetActive { volume, .. }
            | ToyChange::Detach { volume, .. } => private.groups.contains_key(volume),
        }
    }

    fn apply_private(private: &ToyConfig, change: &ToyChange) -> Result<ToyConfig, RequestError> {
        if let ToyChange::Create { name, .. } = change {
            let e = format!("disk group {name}: a shared disk group is no private change");
            return Err(RequestError::unplaced(ErrorKind::Internal, e));
        }
        private
            .apply(change)
            .map_err(|e| RequestError::unplaced(ErrorKind::Refused, e))
    }

    /// A toy group's disk is named after it (see [`ConfigModel::shared_disks`]):
    /// the same name shared and private is the same disk in two groups.
    fn private_conflicts(&self, private: &ToyConfig) -> Vec<String> {
        self.groups
            .keys()
            .filter(|g| private.groups.contains_key(*g))
            .map(|g| format!("disk group {g} exists as a private disk group"))
            .collect()
    }

    fn shared_disks(&self) -> Vec<String> {
        self.groups
            .iter()
            .filter(|(_, g)| !g.disk_failed)
            .map(|(name, _)| format!("{name}-disk"))
            .collect()
    }

    fn disks_given_up(change: &ToyChange) -> Vec<String> {
        match change {
            ToyChange::FailDisk { name, .. } => vec![format!("{name}-disk")],
            _ => Vec::new(),
        }
    }

    fn detach_plex(&self, volume: &str, plex: &str) -> Result<Option<ToyChange>, RequestError> {
        self.detach_change(volume, plex)
            .map_err(|e| RequestError::unplaced(ErrorKind::Refused, e))
    }

    fn syncing_plexes(&self) -> Vec<SyncingPlex> {
        self.groups
            .iter()
            .flat_map(|(name, g)| {
                g.syncing.iter().map(move |p| SyncingPlex {
                    dg: name.clone(),
                    volume: name.clone(),
                    plex: p.clone(),
                    size_bytes: TOY_VOLUME_BYTES,
                    ranges: g.ranges.get(p).cloned().unwrap_or_default(),
                })
            })
            .collect()
    }

    fn resync_done(&self, p: &SyncingPlex) -> Result<Option<ToyChange>, RequestError> {
        let syncing = self
            .groups
            .get(&p.volume)
            .is_some_and(|g| g.syncing.contains(&p.plex));
        Ok(syncing.then(|| ToyChange::SetActive {
            volume: p.volume.clone(),
            plex: p.plex.clone(),
        }))
    }

    fn open_nodes(&self) -> Vec<(u32, u64)> {
        self.open.iter().map(|(&n, &i)| (n, i)).collect()
    }

    fn node_open(&self, node: u32, inc: u64) -> Option<ToyChange> {
        (!self.open.contains_key(&node)).then_some(ToyChange::Open { node, inc })
    }

    fn node_close(&self, node: u32, inc: u64) -> Option<ToyChange> {
        (self.open.get(&node) == Some(&inc)).then_some(ToyChange::Close { node, inc })
    }

    fn node_recover(
        &self,
        node: u32,
        inc: u64,
        logs: &[(DirtyLogSection, DirtyLogRead)],
    ) -> Option<ToyChange> {
        let logs = logs
            .iter()
            .filter_map(|(s, r)| {
                let ranges = match r {
                    DirtyLogRead::Unused => Vec::new(),
                    DirtyLogRead::Dirty(r) => r.clone(),
                    DirtyLogRead::Unreadable(_) => return None,
                };
                Some((s.volume.clone(), s.log_id, ranges))
            })
            .collect();
        (self.open.get(&node) == Some(&inc)).then_some(ToyChange::Recover { node, inc, logs })
    }

    fn dirty_logs(&self, node: u32) -> Vec<DirtyLogSection> {
        self.groups
            .iter()
            .filter(|(_, g)| g.plexes.len() >= 2)
            .filter_map(|(name, g)| {
                Some(DirtyLogSection {
                    dg: name.clone(),
                    volume: name.clone(),
                    copies: vec![SectionCopy {
                        disk: format!("{name}-disk"),
                        offset_bytes: u64::from(node) * TOY_SECTION_BYTES,
                    }],
                    len_bytes: TOY_SECTION_BYTES,
                    log_id: g.log?,
                })
            })
            .collect()
    }

    fn may_serve(&self, node: u32, inc: u64) -> bool {
        self.open.get(&node) == Some(&inc)
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Result<ToyConfig, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("malformed configuration: {e}"))
    }

    fn encode_change(change: &ToyChange) -> Vec<u8> {
        serde_json::to_vec(change).unwrap_or_default()
    }

    fn decode_change(bytes: &[u8]) -> Result<ToyChange, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("malformed change: {e}"))
    }
}
