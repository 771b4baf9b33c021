//! The configuration model the daemon runs the protocol core with: the cluster's
//! shared disk groups (`crate::model`), a cluster-wide sequence number, and the disk
//! writes the last change needs.
//!
//! Encoding: Cap'n Proto, `cluster.capnp`'s `SharedConfig` and `ConfigChange`
//! ([`super::model_codec`], reusing the on-disk encoding of disk groups). The core
//! carries these bytes in its messages' `Data` fields.
//!
//! Private disk groups are not part of it: they belong to one node and never travel
//! (the daemon changes them locally, see `daemon::private`).

use std::sync::Arc;

use super::model_codec;
use crate::core::{
    ConfigModel, DirtyLogRead, DirtyLogSection, ErrorKind, NodeId, RequestError, SectionCopy,
    SyncingPlex,
};
use crate::model::{
    bound_ranges, Change, ClusterConfig, ConfigError, DiskGroupConfig, DiskUpdate, OpenNode,
    PlexState, RecoverLog, MAX_RECOVER_RANGES_PER_CHANGE, MAX_RECOVER_RANGES_PER_VOLUME,
};

/// Most groups [`group_syncing_plexes`] remembers on a thread.
const SYNCING_MEMO: usize = 16;

/// A group and its SYNCING plexes ([`group_syncing_plexes`]).
type GroupSyncing = (Arc<DiskGroupConfig>, Arc<Vec<SyncingPlex>>);

thread_local! {
    /// The SYNCING plexes of the groups last asked about, each with the group (held:
    /// a group shared by an `Arc` is not changed in place while another holds it, so
    /// its address names its content).
    static SYNCING: std::cell::RefCell<Vec<GroupSyncing>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The SYNCING plexes of `g`'s volumes that have an ACTIVE plex to copy from: the
/// first time a group is asked about, from its index ([`crate::model::index`]) or
/// one pass over its volumes; a pointer comparison each time after (the core asks
/// on every event it handles).
fn group_syncing_plexes(g: &Arc<DiskGroupConfig>) -> Arc<Vec<SyncingPlex>> {
    let known = SYNCING.with_borrow(|memo| {
        memo.iter()
            .find(|(k, _)| Arc::ptr_eq(k, g))
            .map(|(_, s)| Arc::clone(s))
    });
    if let Some(s) = known {
        return s;
    }
    // The group's index, when it has one, names the volumes to look at (usually
    // none): no other volume is read.
    let out = match crate::model::index::cached(g) {
        Some(index) => {
            let owners = index.resyncing();
            let found = if owners.is_empty() {
                Vec::new()
            } else {
                let listed = |v: &&Arc<crate::model::Volume>| {
                    owners
                        .binary_search(&crate::model::index::owner_of(v))
                        .is_ok()
                };
                syncing_of(g, g.volumes.iter().filter(listed).map(|v| &**v))
            };
            debug_assert_eq!(found, syncing_of(g, g.volumes.iter().map(|v| &**v)));
            found
        }
        None => syncing_of(g, g.volumes.iter().map(|v| &**v)),
    };
    let out = Arc::new(out);
    SYNCING.with_borrow_mut(|memo| {
        if memo.len() >= SYNCING_MEMO {
            memo.remove(0);
        }
        memo.push((Arc::clone(g), Arc::clone(&out)));
    });
    out
}

/// The SYNCING plexes of `volumes` (of group `g`) that have an ACTIVE plex to copy
/// from.
fn syncing_of<'a>(
    g: &DiskGroupConfig,
    volumes: impl Iterator<Item = &'a crate::model::Volume>,
) -> Vec<SyncingPlex> {
    let mut out = Vec::new();
    for v in volumes.filter(|v| crate::model::index::resyncs(v)) {
        for p in v.plexes.iter().filter(|p| p.state == PlexState::Syncing) {
            out.push(SyncingPlex {
                dg: g.name.clone(),
                volume: v.name.clone(),
                plex: p.name.clone(),
                size_bytes: v.size_bytes,
                ranges: p.resync_ranges.clone(),
            });
        }
    }
    out
}

/// The kind of a refused change: what `plexctl` exits with.
pub fn error_kind(e: &ConfigError) -> ErrorKind {
    match e {
        ConfigError::NotFound { .. } => ErrorKind::NotFound,
        ConfigError::Exists(_) | ConfigError::DgExistsOtherKind { .. } => ErrorKind::Exists,
        ConfigError::InUse(_) => ErrorKind::InUse,
        ConfigError::LastActivePlex { .. } | ConfigError::NoSpace(_) | ConfigError::Invalid(_) => {
            ErrorKind::Refused
        }
    }
}

/// A refused change as the core carries it (the core names the node).
pub fn refusal(e: &ConfigError) -> RequestError {
    RequestError::unplaced(error_kind(e), e.to_string())
}

/// The cluster-wide configuration: every shared disk group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedConfig {
    /// Increments by one on every committed change (cluster-wide counter; each disk
    /// group also has its own `seq`, stored on its disks).
    pub seq: u64,
    /// Shared disk groups, sorted by name. Shared (`Arc`) between the copies of a
    /// configuration (committed, staged, history, driver jobs): a change copies
    /// only the group it changes, and comparing copies of an unchanged group is a
    /// pointer comparison.
    pub groups: Vec<Arc<DiskGroupConfig>>,
    /// The cluster's open node starts, sorted (`model::recovery`; every shared group
    /// records a copy).
    pub open_nodes: Vec<OpenNode>,
    /// What the commit of the change that produced this configuration writes to the
    /// disks (empty for a configuration read from the disks); shared like `groups`.
    pub updates: Arc<Vec<DiskUpdate>>,
}

impl SharedConfig {
    /// The groups as a `model` cluster configuration.
    pub fn cluster(&self) -> ClusterConfig {
        ClusterConfig {
            disk_groups: self.groups.iter().map(|g| (**g).clone()).collect(),
            open_nodes: self.open_nodes.clone(),
        }
    }

    /// A shared disk group by name.
    pub fn group(&self, name: &str) -> Option<&DiskGroupConfig> {
        self.groups.iter().find(|g| g.name == name).map(|g| &**g)
    }

    /// [`ConfigModel::validate_and_apply`] through `model::apply` on the whole
    /// configuration: any change.
    fn apply_whole(&self, change: &Change) -> Result<SharedConfig, RequestError> {
        let before = self.cluster();
        let after = crate::model::apply(&before, change).map_err(|e| refusal(&e))?;
        let updates = change.disk_updates(&before, &after);
        // A group the change left alone keeps its seq (`model::apply` bumps the seq
        // of every group it changes): the copy already shared is kept.
        let groups = after
            .disk_groups
            .into_iter()
            .map(
                |g| match self.groups.iter().find(|o| o.id == g.id && o.seq == g.seq) {
                    Some(old) => {
                        debug_assert!(**old == g, "disk group {} changed without its seq", g.name);
                        Arc::clone(old)
                    }
                    None => Arc::new(g),
                },
            )
            .collect();
        Ok(SharedConfig {
            seq: self.seq + 1,
            groups,
            open_nodes: after.open_nodes,
            updates: Arc::new(updates),
        })
    }

    /// [`ConfigModel::validate_and_apply`] of a change that stays inside one group
    /// and needs nothing of the others (a volume's or a plex's change, not a disk's
    /// or an export's): `model::apply_dg` on that group alone, what `model::apply`
    /// does in that case, without copying the other groups, which stay shared.
    /// `None`: a change this does not take (the caller runs [`Self::apply_whole`]).
    fn apply_in_group(&self, change: &Change) -> Option<Result<SharedConfig, RequestError>> {
        match change {
            Change::VolCreate { .. }
            | Change::VolGrow { .. }
            | Change::VolShrink { .. }
            | Change::VolSetReadPolicy { .. }
            | Change::VolRm { .. }
            | Change::DgSetDetachPolicy { .. }
            | Change::VolPrOut { .. }
            | Change::VolUnexport { .. }
            | Change::PlexAdd { .. }
            | Change::PlexDetach { .. }
            | Change::PlexAttach { .. }
            | Change::PlexRm { .. }
            | Change::SetPlexState { .. }
            | Change::PlexDiverged { .. }
            | Change::DgEvacuate { .. } => {}
            _ => return None,
        }
        let index = self
            .groups
            .iter()
            .position(|g| g.name == change.dg_name())?;
        let updated = match crate::model::apply_dg(&self.groups[index], change) {
            Ok(g) => g,
            Err(e) => return Some(Err(refusal(&e))),
        };
        let updated = Arc::new(updated);
        // The next change of this group validates against it and allocates in it,
        // and its disk write validates it against this one: all through its index
        // (model::index), made from this group's.
        crate::model::index::remember(&updated, Some(&self.groups[index]));
        let updates = vec![DiskUpdate::WriteConfig(Arc::clone(&updated))];
        let mut groups = self.groups.clone();
        groups[index] = updated;
        Some(Ok(SharedConfig {
            seq: self.seq + 1,
            groups,
            open_nodes: self.open_nodes.clone(),
            updates: Arc::new(updates),
        }))
    }
}

impl ConfigModel for SharedConfig {
    type Change = Change;
    type Private = ClusterConfig;

    /// A host's PERSISTENT RESERVE OUT: its answer (the host's command
    /// completing) follows every node's data plane applying it, which for a
    /// preempt and abort ends the preempted hosts' commands on that node.
    fn answer_after_applied(change: &Change) -> bool {
        matches!(change, Change::VolPrOut { .. })
    }

    fn is_private(private: &ClusterConfig, change: &Change) -> bool {
        match change {
            Change::DgCreate { shared, .. } | Change::DgImport { shared, .. } => !shared,
            other => private.disk_group(other.dg_name()).is_some(),
        }
    }

    fn apply_private(
        private: &ClusterConfig,
        change: &Change,
    ) -> Result<ClusterConfig, RequestError> {
        crate::model::apply(private, change).map_err(|e| refusal(&e))
    }

    fn private_conflicts(&self, private: &ClusterConfig) -> Vec<String> {
        let mut out = Vec::new();
        for g in &self.groups {
            if private.disk_group(&g.name).is_some() {
                out.push(format!(
                    "disk group {} exists as a private disk group",
                    g.name
                ));
            }
            for d in &g.disks {
                let other = private
                    .disk_groups
                    .iter()
                    .find_map(|p| p.disks.iter().find(|x| x.id == d.id).map(|x| (p, x)));
                if let Some((p, x)) = other {
                    out.push(format!(
                        "disk {} (id {}) of shared disk group {} is disk {} of private disk group {}",
                        d.name, d.id, g.name, x.name, p.name
                    ));
                }
            }
        }
        out
    }

    fn seq(&self) -> u64 {
        self.seq
    }

    fn validate_and_apply(&self, change: &Change) -> Result<Self, RequestError> {
        match change {
            Change::DgCreate {
                shared: false, dg, ..
            }
            | Change::DgImport {
                shared: false,
                config: DiskGroupConfig { name: dg, .. },
                ..
            } => {
                return Err(RequestError::unplaced(
                    ErrorKind::Internal,
                    format!("disk group {dg}: a private disk group is not a cluster change"),
                ));
            }
            _ => {}
        }
        match self.apply_in_group(change) {
            Some(next) => next,
            None => self.apply_whole(change),
        }
    }

    fn shared_disks(&self) -> Vec<String> {
        self.groups
            .iter()
            .flat_map(|g| g.disks.iter().filter(|d| !d.failed).map(|d| d.name.clone()))
            .collect()
    }

    fn disks_given_up(change: &Change) -> Vec<String> {
        match change {
            Change::DgFailDisk { disk, .. } => vec![disk.clone()],
            _ => Vec::new(),
        }
    }

    fn detach_plex(&self, volume: &str, plex: &str) -> Result<Option<Change>, RequestError> {
        self.cluster()
            .detach_change(volume, plex)
            .map_err(|e| refusal(&e))
    }

    fn local_detach(&self, volume: &str) -> bool {
        self.cluster().detach_policy_of(volume) == crate::model::DetachPolicy::Local
    }

    fn plex_active(&self, volume: &str, plex: &str) -> bool {
        self.groups.iter().any(|g| {
            g.volume(volume)
                .and_then(|v| v.plex(plex))
                .is_some_and(|p| p.state == crate::model::PlexState::Active)
        })
    }

    fn diverged_plex(
        &self,
        volume: &str,
        plex: &str,
        ranges: &[(u64, u64)],
    ) -> Result<Option<Change>, RequestError> {
        self.cluster()
            .diverged_change(volume, plex, ranges)
            .map_err(|e| refusal(&e))
    }

    /// Every SYNCING plex of a volume that has an ACTIVE plex to copy from (asked
    /// on every event the core handles: each group's are remembered, see
    /// [`group_syncing_plexes`]).
    fn syncing_plexes(&self) -> Vec<SyncingPlex> {
        let mut out = Vec::new();
        for g in &self.groups {
            out.extend(group_syncing_plexes(g).iter().cloned());
        }
        out
    }

    fn plex_fate(&self, p: &SyncingPlex) -> Option<String> {
        use crate::model::PlexState;
        let Some(g) = self.groups.iter().find(|g| g.name == p.dg) else {
            return Some(format!("was removed with its disk group {}", p.dg));
        };
        let Some(v) = g.volume(&p.volume) else {
            return Some(format!("was removed with its volume {}", p.volume));
        };
        Some(match v.plex(&p.plex).map(|x| x.state) {
            None => "was removed".into(),
            Some(PlexState::Stale) => "was detached (STALE)".into(),
            Some(PlexState::Syncing) => return None,
            Some(state) => format!("is {} now", state.as_str()),
        })
    }

    fn resync_done(&self, p: &SyncingPlex) -> Result<Option<Change>, RequestError> {
        let syncing = self.groups.iter().any(|g| {
            g.name == p.dg
                && g.volumes.iter().any(|v| {
                    v.name == p.volume
                        && v.plexes.iter().any(|x| {
                            x.name == p.plex && x.state == crate::model::PlexState::Syncing
                        })
                })
        });
        Ok(syncing.then(|| Change::SetPlexState {
            dg: p.dg.clone(),
            plex: p.plex.clone(),
            state: crate::model::PlexState::Active,
        }))
    }

    fn open_nodes(&self) -> Vec<(NodeId, u64)> {
        self.open_nodes
            .iter()
            .map(|o| (o.node, o.incarnation))
            .collect()
    }

    fn node_open(&self, node: NodeId, incarnation: u64) -> Option<Change> {
        // None while any start of the node is open (this one, or an earlier one
        // still to be recovered).
        (!self.open_nodes.iter().any(|o| o.node == node)).then_some(Change::NodeOpen {
            node: OpenNode { node, incarnation },
        })
    }

    fn node_close(&self, node: NodeId, incarnation: u64) -> Option<Change> {
        let start = OpenNode { node, incarnation };
        self.open_nodes
            .contains(&start)
            .then_some(Change::NodeClose { node: start })
    }

    fn node_recover(
        &self,
        node: NodeId,
        incarnation: u64,
        logs: &[(DirtyLogSection, DirtyLogRead)],
    ) -> Option<Change> {
        let start = OpenNode { node, incarnation };
        if !self.open_nodes.contains(&start) {
            return None;
        }
        let mut out = Vec::new();
        let mut total = 0;
        for (section, read) in logs {
            let ranges = match read {
                DirtyLogRead::Unused => Vec::new(),
                DirtyLogRead::Dirty(r) => {
                    let size = self
                        .groups
                        .iter()
                        .find(|g| g.name == section.dg)
                        .and_then(|g| g.volumes.iter().find(|v| v.name == section.volume))
                        .map_or(u64::MAX, |v| v.size_bytes);
                    bound_ranges(r, size, MAX_RECOVER_RANGES_PER_VOLUME)
                }
                // Left out: resynchronised whole.
                DirtyLogRead::Unreadable(why) => {
                    log::warn!(
                        "volume {} of disk group {}: the dirty region log of node {node} (start {incarnation}) is unreadable on every copy ({why}): the volume is resynchronised whole",
                        section.volume,
                        section.dg
                    );
                    continue;
                }
            };
            if total + ranges.len() > MAX_RECOVER_RANGES_PER_CHANGE {
                continue;
            }
            total += ranges.len();
            out.push(RecoverLog {
                dg: section.dg.clone(),
                volume: section.volume.clone(),
                log_id: section.log_id,
                ranges,
            });
        }
        Some(Change::NodeRecover {
            node: start,
            logs: out,
        })
    }

    /// Every shared volume with a log and two or more plexes a recovery could
    /// leave or make SYNCING.
    fn dirty_logs(&self, node: NodeId) -> Vec<DirtyLogSection> {
        self.groups
            .iter()
            .filter(|g| g.shared)
            .flat_map(|g| {
                g.volumes
                    .iter()
                    .filter_map(move |v| log_section(g, v, node))
            })
            .collect()
    }

    fn may_serve(&self, node: NodeId, incarnation: u64) -> bool {
        self.open_nodes.contains(&OpenNode { node, incarnation })
    }

    fn encode(&self) -> Vec<u8> {
        model_codec::encode_config(self)
    }

    fn decode(bytes: &[u8]) -> Result<Self, String> {
        model_codec::decode_config(bytes)
    }

    fn encode_change(change: &Change) -> Vec<u8> {
        model_codec::encode_change(change)
    }

    fn decode_change(bytes: &[u8]) -> Result<Change, String> {
        model_codec::decode_change(bytes)
    }
}

/// The on-disk transaction id of a core transaction id: view in the high 32 bits,
/// counter in the low 32.
pub fn disk_txn(txn: crate::core::TxnId) -> u64 {
    (txn.view << 32) | (txn.n & 0xffff_ffff)
}

/// The inverse of [`disk_txn`].
pub fn core_txn(disk_txn: u64) -> crate::core::TxnId {
    crate::core::TxnId {
        view: crate::ondisk::txn_epoch(disk_txn),
        n: disk_txn & 0xffff_ffff,
    }
}

/// Node `node`'s section of `v`'s dirty region log, on every copy: None when `v`
/// has no log, fewer than two plexes that could be ACTIVE (nothing to recover), or
/// no section for `node`. The one place a section is located, for the shared
/// groups' recovery and a private group's.
pub(crate) fn log_section(
    g: &DiskGroupConfig,
    v: &crate::model::Volume,
    node: NodeId,
) -> Option<DirtyLogSection> {
    let log = v.log.as_ref()?;
    let readable = v
        .plexes
        .iter()
        .filter(|p| matches!(p.state, PlexState::Active | PlexState::Syncing))
        .count();
    if readable < 2 {
        return None;
    }
    let copies = log
        .copies
        .iter()
        .map(|c| {
            Some(SectionCopy {
                disk: c.disk.clone(),
                offset_bytes: log.section_offset(c, node)?,
            })
        })
        .collect::<Option<Vec<SectionCopy>>>()?;
    let regions = plexd_target_api::drl::regions_for(v.size_bytes, log.region_bytes);
    let need = plexd_target_api::drl::section_bytes(regions);
    Some(DirtyLogSection {
        dg: g.name.clone(),
        volume: v.name.clone(),
        copies,
        len_bytes: need.min(log.section_bytes),
        log_id: log.log_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Disk, VolumeLayout};

    fn disk(name: &str) -> Disk {
        Disk {
            name: name.into(),
            id: format!(
                "{:0>32}",
                name.len() as u64 * 7 + name.as_bytes()[name.len() - 1] as u64
            ),
            path: format!("/tmp/{name}.img"),
            size_bytes: 65 << 20,
            public_offset_bytes: 1 << 20,
            public_len_bytes: 64 << 20,
            failed: false,
            staled: Vec::new(),
        }
    }

    fn create() -> Change {
        Change::DgCreate {
            dg: "dg1".into(),
            dg_id: "0123456789abcdef0123456789abcdef".into(),
            shared: true,
            owner_id: "demo".into(),
            disks: vec![disk("d1"), disk("d2")],
        }
    }

    /// An 8 MiB two-way mirror v1 in dg1.
    fn mirror_v1() -> Change {
        Change::VolCreate {
            dg: "dg1".into(),
            volume: "v1".into(),
            size_bytes: 8 << 20,
            layout: VolumeLayout::Mirror { mirrors: 2 },
            log: Default::default(),
            disks: Vec::new(),
        }
    }

    /// Why a resync ends without a failure of its own: what became of its plex.
    #[test]
    fn a_plex_no_longer_syncing_says_what_became_of_it() {
        let c = SharedConfig::default()
            .validate_and_apply(&create())
            .unwrap();
        let c = c.validate_and_apply(&mirror_v1()).unwrap();
        let p = |plex: &str, volume: &str| SyncingPlex {
            dg: "dg1".into(),
            volume: volume.into(),
            plex: plex.into(),
            size_bytes: 8 << 20,
            ranges: Vec::new(),
        };
        let apply = |c: &SharedConfig, ch: Change| c.validate_and_apply(&ch).unwrap();
        let detached = apply(
            &c,
            Change::PlexDetach {
                dg: "dg1".into(),
                plex: "v1-02".into(),
            },
        );
        let syncing = apply(
            &detached,
            Change::PlexAttach {
                dg: "dg1".into(),
                plex: "v1-02".into(),
            },
        );
        let removed = apply(
            &detached,
            Change::PlexRm {
                dg: "dg1".into(),
                plex: "v1-02".into(),
                force: false,
            },
        );
        for (config, plex, volume, fate) in [
            (&detached, "v1-02", "v1", Some("was detached (STALE)")),
            (&syncing, "v1-02", "v1", None),
            (&c, "v1-02", "v1", Some("is ACTIVE now")),
            (&removed, "v1-02", "v1", Some("was removed")),
            (&c, "v9-01", "v9", Some("was removed with its volume v9")),
        ] {
            assert_eq!(
                config.plex_fate(&p(plex, volume)).as_deref(),
                fate,
                "{plex}"
            );
        }
    }

    #[test]
    fn changes_bump_seq_and_round_trip() {
        let c0 = SharedConfig::default();
        let c1 = c0.validate_and_apply(&create()).unwrap();
        assert_eq!(c1.seq, 1);
        assert_eq!(c1.updates.len(), 1);
        let vol = mirror_v1();
        let c2 = c1.validate_and_apply(&vol).unwrap();
        assert_eq!(c2.seq, 2);
        assert_eq!(SharedConfig::decode(&c2.encode()).unwrap(), c2);
        let bytes = SharedConfig::encode_change(&vol);
        assert_eq!(SharedConfig::decode_change(&bytes).unwrap(), vol);
        let e = c2.validate_and_apply(&create()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::Exists, "{e}");
        assert_eq!(c2.shared_disks(), vec!["d1".to_string(), "d2".to_string()]);
        assert!(SharedConfig::decode(b"{").is_err());
    }

    /// A change inside one group takes the short way (`apply_in_group`): the same
    /// configuration and disk writes as `model::apply` on the whole, refusals
    /// included, and the group it does not change stays shared (one copy).
    #[test]
    fn a_change_inside_a_group_equals_the_whole_apply_and_shares_the_other_groups() {
        let mut other = create();
        if let Change::DgCreate {
            dg, dg_id, disks, ..
        } = &mut other
        {
            *dg = "dg0".into();
            *dg_id = "f".repeat(32);
            *disks = vec![disk("d3")];
        }
        let mut c = SharedConfig::default()
            .validate_and_apply(&create())
            .unwrap()
            .validate_and_apply(&other)
            .unwrap();
        let vol = |name: &str| Change::VolCreate {
            dg: "dg1".into(),
            volume: name.into(),
            size_bytes: 8 << 20,
            layout: VolumeLayout::Mirror { mirrors: 2 },
            log: Default::default(),
            disks: Vec::new(),
        };
        let grow = |name: &str, size: u64| Change::VolGrow {
            dg: "dg1".into(),
            volume: name.into(),
            new_size_bytes: size,
        };
        let changes = [
            vol("v1"),
            vol("v2"),
            grow("v1", 16 << 20),
            grow("v1", 4 << 20),    // refused: not larger
            grow("nope", 16 << 20), // refused: no such volume
            Change::PlexDetach {
                dg: "dg1".into(),
                plex: "v1-02".into(),
            },
            Change::VolRm {
                dg: "dg1".into(),
                volume: "v2".into(),
            },
            Change::VolRm {
                dg: "nogroup".into(),
                volume: "v2".into(),
            },
        ];
        let mut applied = 0;
        for change in &changes {
            let whole = c.apply_whole(change);
            let short = c
                .apply_in_group(change)
                .unwrap_or_else(|| c.apply_whole(change));
            match (&whole, &short) {
                (Ok(w), Ok(s)) => assert_eq!(w, s, "{change:?}"),
                (Err(w), Err(s)) => {
                    assert_eq!((w.kind, &w.message), (s.kind, &s.message), "{change:?}")
                }
                _ => panic!("{change:?}: {whole:?} against {short:?}"),
            }
            if let Ok(next) = short {
                let dg0 = |c: &SharedConfig| c.groups.iter().find(|g| g.name == "dg0").cloned();
                let (before, after) = (dg0(&c).unwrap(), dg0(&next).unwrap());
                assert!(Arc::ptr_eq(&before, &after), "{change:?}: dg0 was copied");
                c = next;
                applied += 1;
            }
        }
        assert_eq!(applied, 5);
        assert_eq!(c.group("dg1").unwrap().volumes.len(), 1);
    }

    #[test]
    fn private_changes_are_refused() {
        let mut c = create();
        if let Change::DgCreate { shared, .. } = &mut c {
            *shared = false;
        }
        assert!(SharedConfig::default().validate_and_apply(&c).is_err());
    }

    #[test]
    fn a_disk_in_a_private_and_a_shared_group_is_a_conflict_the_change_makes() {
        let shared = SharedConfig::default()
            .validate_and_apply(&create())
            .unwrap();
        let mut private_create = create();
        if let Change::DgCreate {
            dg, shared, disks, ..
        } = &mut private_create
        {
            *dg = "local1".into();
            *shared = false;
            disks.truncate(1);
        }
        let empty = ClusterConfig::default();
        assert!(SharedConfig::is_private(&empty, &private_create));
        assert!(!SharedConfig::is_private(&empty, &create()));
        let private = SharedConfig::apply_private(&empty, &private_create).unwrap();
        let conflicts = shared.private_conflicts(&private);
        assert_eq!(conflicts.len(), 1, "{conflicts:?}");
        assert!(
            conflicts[0].contains("disk d1") && conflicts[0].contains("private disk group local1"),
            "{conflicts:?}"
        );
        // The private change makes the conflict; a later change of either does not.
        let none = SharedConfig::default();
        assert!(shared
            .new_private_conflict(&private, &shared, &empty)
            .is_some());
        assert!(shared
            .new_private_conflict(&private, &none, &private)
            .is_some());
        assert_eq!(
            shared.new_private_conflict(&private, &shared, &private),
            None
        );
    }

    #[test]
    fn disk_txn_round_trips() {
        let t = crate::core::TxnId { view: 9, n: 4 };
        assert_eq!(core_txn(disk_txn(t)), t);
    }
}
