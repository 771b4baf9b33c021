//! Node-crash recovery of shared mirrors, with or without a dirty region log.
//!
//! A node that dies in the middle of a mirrored write may leave the block written
//! on one plex and not on another. Every shared group records, on its disks, the
//! node starts that may have done so: its *open nodes* ([`OpenNode`]: node id and the
//! core's incarnation of that start). The master adds a member's start
//! ([`Change::NodeOpen`]) before that node's data plane is given a lease (the core
//! withholds it until then), removes it when the node stops cleanly
//! ([`Change::NodeClose`], after its data plane stopped writing shared volumes), and
//! when the start is gone without a clean stop it commits [`Change::NodeRecover`]:
//! every mirrored volume with two or more ACTIVE plexes keeps its first ACTIVE plex
//! and the others become SYNCING. From that commit on every node reads that one
//! plex (SYNCING plexes take writes, serve no reads) and the core's resync copies
//! it to the others (docs/PROTOCOL.md, "Node-crash recovery"). With a dirty region
//! log the change carries what the start's section of each volume said
//! ([`RecoverLog`]): a volume it never wrote (or left clean) is not resynced, the
//! others only in their dirty ranges (`Plex::resync_ranges`).
//!
//! The set is cluster-wide ([`ClusterConfig::open_nodes`], carried between nodes with
//! the shared configuration), so a node is open before any shared group exists;
//! every shared group records a copy on its disks (a group created or imported takes
//! the cluster's, every change of the set rewrites them all), and a cluster formed
//! from the disks takes the union of its groups' copies.

use super::*;

/// Most open node starts a configuration records (one per configured node in
/// practice); a record with more is refused as malformed.
pub const MAX_OPEN_NODES: usize = 256;

impl ClusterConfig {
    /// The open node starts, sorted.
    pub fn shared_open_nodes(&self) -> Vec<OpenNode> {
        self.open_nodes.clone()
    }

    /// Whether start `node` is open (its data plane may serve shared volumes).
    pub fn node_is_open(&self, node: OpenNode) -> bool {
        self.open_nodes.contains(&node)
    }

    /// Copies the open set into every shared group whose copy differs (its seq moves,
    /// so the change rewrites its record).
    fn sync_open_nodes(&mut self) {
        let open = self.open_nodes.clone();
        for g in self.disk_groups.iter_mut().filter(|g| g.shared) {
            if g.open_nodes != open {
                g.open_nodes = open.clone();
                g.seq += 1;
            }
        }
    }
}

/// [`Change::NodeOpen`]: `node` joins the open nodes. Refused while another start of
/// the same node is open (it is recovered first) and when it is open already.
pub(super) fn open(next: &mut ClusterConfig, node: OpenNode) -> Result<(), ConfigError> {
    if let Some(other) = next.open_nodes.iter().find(|o| o.node == node.node) {
        return Err(ConfigError::Invalid(
            if other.incarnation == node.incarnation {
                format!(
                    "node {} start {} is already open",
                    node.node, node.incarnation
                )
            } else {
                format!(
                    "node {} start {}: its earlier start {} is still open (not recovered yet)",
                    node.node, node.incarnation, other.incarnation
                )
            },
        ));
    }
    if next.open_nodes.len() >= MAX_OPEN_NODES {
        return Err(ConfigError::Invalid(format!(
            "node {} start {}: {MAX_OPEN_NODES} node starts are open already",
            node.node, node.incarnation
        )));
    }
    next.open_nodes.push(node);
    next.open_nodes.sort_unstable();
    next.sync_open_nodes();
    Ok(())
}

/// [`Change::NodeClose`]: `node` leaves the open nodes (a clean stop: no recovery).
pub(super) fn close(next: &mut ClusterConfig, node: OpenNode) -> Result<(), ConfigError> {
    let Some(i) = next.open_nodes.iter().position(|o| *o == node) else {
        return Err(ConfigError::Invalid(format!(
            "node {} start {} is not open",
            node.node, node.incarnation
        )));
    };
    next.open_nodes.remove(i);
    next.sync_open_nodes();
    Ok(())
}

/// Most dirty ranges a volume's entry of [`Change::NodeRecover`] and a SYNCING
/// plex's `resync_ranges` hold: past it the closest ranges are merged (copying a
/// little more).
pub const MAX_RECOVER_RANGES_PER_VOLUME: usize = 1024;
/// Most dirty ranges one [`Change::NodeRecover`] carries in all (far under the
/// message size limit: about 20 bytes each); volumes past it are resynchronised
/// whole.
pub const MAX_RECOVER_RANGES_PER_CHANGE: usize = 16 * 1024;

/// `ranges` made ascending and disjoint (overlapping and adjacent ones merged),
/// clipped to a volume of `size_bytes`, empty ones dropped, then at most `max`
/// (the ranges separated by the smallest gaps merged first).
pub fn bound_ranges(ranges: &[(u64, u64)], size_bytes: u64, max: usize) -> Vec<(u64, u64)> {
    let mut r: Vec<(u64, u64)> = ranges
        .iter()
        .filter(|(o, _)| *o < size_bytes)
        .map(|&(o, l)| (o, o.saturating_add(l).min(size_bytes)))
        .filter(|(o, e)| e > o)
        .collect();
    r.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (o, e) in r {
        match merged.last_mut() {
            Some(last) if o <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((o, e)),
        }
    }
    let max = max.max(1);
    if merged.len() > max {
        // Keep the `max - 1` widest gaps; merge across every other one.
        let mut gaps: Vec<(u64, usize)> = merged
            .windows(2)
            .enumerate()
            .map(|(i, w)| (w[1].0 - w[0].1, i))
            .collect();
        gaps.sort_unstable_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut split: Vec<usize> = gaps.iter().take(max - 1).map(|g| g.1).collect();
        split.sort_unstable();
        let mut out = Vec::with_capacity(max);
        let mut start = 0;
        for i in split.into_iter().chain([merged.len() - 1]) {
            out.push((merged[start].0, merged[i].1));
            start = i + 1;
        }
        merged = out;
    }
    merged.into_iter().map(|(o, e)| (o, e - o)).collect()
}

/// [`Change::NodeRecover`]: `node` leaves the open nodes and, in every shared
/// group, each volume it may have left divergent is resynchronised: a volume
/// whose entry in `logs` (same log id) has no dirty range needs nothing; one with
/// ranges keeps its first ACTIVE plex and makes the others SYNCING in those
/// ranges; any other (no log, no entry: unreadable) keeps its first ACTIVE plex
/// and makes the others SYNCING whole (when it has two or more ACTIVE plexes).
/// A plex SYNCING already in some ranges gets the union (a whole one stays
/// whole): the dead start may have written it and not the ACTIVE one.
pub(super) fn recover(
    next: &mut ClusterConfig,
    node: OpenNode,
    logs: &[RecoverLog],
) -> Result<(), ConfigError> {
    let Some(i) = next.open_nodes.iter().position(|o| *o == node) else {
        return Err(ConfigError::Invalid(format!(
            "node {} start {} is not open: nothing to recover",
            node.node, node.incarnation
        )));
    };
    next.open_nodes.remove(i);
    for g in next.disk_groups.iter_mut().filter(|g| g.shared) {
        if g.recover_volumes(logs) {
            g.seq += 1;
        }
    }
    next.sync_open_nodes();
    Ok(())
}

impl DiskGroupConfig {
    /// The resync a start of a node that may have died in the middle of writes to
    /// this group's mirrors calls for ([`Change::NodeRecover`] for a shared group,
    /// [`DiskGroupConfig::recover_private`] for a private one): a volume whose
    /// entry in `logs` (same log id) has no dirty range needs nothing; one with
    /// ranges keeps its first ACTIVE plex and makes the others SYNCING in those
    /// ranges; any other (no log, no entry: unreadable) keeps its first ACTIVE plex
    /// and makes the others SYNCING in one range over the whole volume. A plex
    /// SYNCING already in some ranges gets the union; one SYNCING with none (an
    /// attach's whole copy) stays so. The whole range is written out, not left
    /// empty: such a plex held the volume's data up to the writes in flight, which
    /// an attached one never did (what [`Change::DgFailDisk`] may make ACTIVE when
    /// the copy's source is lost). Whether a plex changed (the seq is the
    /// caller's).
    fn recover_volumes(&mut self, logs: &[RecoverLog]) -> bool {
        let mut changed = false;
        for v in &mut self.volumes {
            let entry = logs.iter().find(|l| {
                l.dg == self.name
                    && l.volume == v.name
                    && v.log.as_ref().is_some_and(|log| log.log_id == l.log_id)
            });
            // None: the whole volume; Some(ranges): only those (none: clean).
            let dirty =
                entry.map(|l| bound_ranges(&l.ranges, v.size_bytes, MAX_RECOVER_RANGES_PER_VOLUME));
            if dirty.as_ref().is_some_and(Vec::is_empty) {
                continue;
            }
            let v = std::sync::Arc::make_mut(v);
            let whole = vec![(0, v.size_bytes)];
            let mut first = true;
            for p in &mut v.plexes {
                match p.state {
                    PlexState::Active if first => first = false,
                    PlexState::Active => {
                        p.state = PlexState::Syncing;
                        p.resync_ranges = dirty.clone().unwrap_or_else(|| whole.clone());
                        changed = true;
                    }
                    PlexState::Syncing if !p.resync_ranges.is_empty() => {
                        let ranges = match &dirty {
                            None => whole.clone(),
                            Some(d) => {
                                let mut all = p.resync_ranges.clone();
                                all.extend_from_slice(d);
                                bound_ranges(&all, v.size_bytes, MAX_RECOVER_RANGES_PER_VOLUME)
                            }
                        };
                        if ranges != p.resync_ranges {
                            p.resync_ranges = ranges;
                            changed = true;
                        }
                    }
                    _ => {}
                }
            }
        }
        changed
    }

    /// Recovery of a private group left open (`open_nodes` names the start that
    /// served it and did not stop cleanly, docs/ONDISK.md): as a shared group's
    /// [`Change::NodeRecover`], with `logs` what that start's section of each
    /// mirrored volume's log said; the open record is dropped and the seq moves.
    /// Whether a plex changed.
    pub fn recover_private(&mut self, logs: &[RecoverLog]) -> bool {
        let changed = self.recover_volumes(logs);
        self.open_nodes.clear();
        self.seq += 1;
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::cluster;
    use super::*;

    #[test]
    fn recover_keeps_one_active_plex_per_mirror_and_closes_the_start() {
        let c = cluster(&[("d1", 1 << 30), ("d2", 1 << 30)]);
        let c = apply(
            &c,
            &Change::VolCreate {
                dg: "dg1".into(),
                volume: "v1".into(),
                size_bytes: 8 << 20,
                layout: VolumeLayout::Mirror { mirrors: 2 },
                log: Default::default(),
                disks: Vec::new(),
            },
        )
        .unwrap();
        let a = OpenNode {
            node: 1,
            incarnation: 10,
        };
        let c = apply(&c, &Change::NodeOpen { node: a }).unwrap();
        assert!(c.node_is_open(a));
        // Another start of the same node is refused until this one is recovered.
        let a2 = OpenNode {
            node: 1,
            incarnation: 11,
        };
        assert!(apply(&c, &Change::NodeOpen { node: a2 }).is_err());
        let before = c.clone();
        let r = apply(
            &c,
            &Change::NodeRecover {
                node: a,
                logs: vec![],
            },
        )
        .unwrap();
        let states: Vec<PlexState> = r.disk_groups[0].volumes[0]
            .plexes
            .iter()
            .map(|p| p.state)
            .collect();
        assert_eq!(states, vec![PlexState::Active, PlexState::Syncing]);
        assert!(r.shared_open_nodes().is_empty());
        let change = Change::NodeRecover {
            node: a,
            logs: vec![],
        };
        let updates = change.disk_updates(&before, &r);
        assert_eq!(updates.len(), 1, "the group's record is written");
        // A clean close changes no plex.
        let closed = apply(&c, &Change::NodeClose { node: a }).unwrap();
        assert!(closed.disk_groups[0].volumes[0]
            .plexes
            .iter()
            .all(|p| p.state == PlexState::Active));
        assert!(apply(
            &closed,
            &Change::NodeRecover {
                node: a,
                logs: vec![]
            }
        )
        .is_err());
    }

    #[test]
    fn a_start_is_open_before_any_shared_group_and_groups_take_the_set() {
        let a = OpenNode {
            node: 1,
            incarnation: 10,
        };
        let c = apply(&ClusterConfig::default(), &Change::NodeOpen { node: a }).unwrap();
        assert!(c.node_is_open(a), "open with no disk group at all");
        assert!(apply(&c, &Change::NodeOpen { node: a }).is_err(), "twice");
        let created = apply(
            &c,
            &Change::DgCreate {
                dg: "dg1".into(),
                dg_id: "dgid1".into(),
                shared: true,
                owner_id: "cluster1".into(),
                disks: vec![super::super::test_support::disk("d1", 1 << 30)],
            },
        )
        .unwrap();
        assert_eq!(created.disk_groups[0].open_nodes, vec![a]);
        let closed = apply(&created, &Change::NodeClose { node: a }).unwrap();
        assert!(closed.open_nodes.is_empty());
        assert!(closed.disk_groups[0].open_nodes.is_empty());
        assert_eq!(
            Change::NodeClose { node: a }
                .disk_updates(&created, &closed)
                .len(),
            1,
            "the group's copy is rewritten"
        );
    }

    /// A config with mirrored volume v1 (8 MiB, 3 plexes) carrying a log, and
    /// start `a` open.
    fn logged() -> (ClusterConfig, OpenNode) {
        let c = cluster(&[("d1", 1 << 30), ("d2", 1 << 30), ("d3", 1 << 30)]);
        let mut c = apply(
            &c,
            &Change::VolCreate {
                dg: "dg1".into(),
                volume: "v1".into(),
                size_bytes: 8 << 20,
                layout: VolumeLayout::Mirror { mirrors: 3 },
                log: LogPolicy::Off,
                disks: Vec::new(),
            },
        )
        .unwrap();
        // A log set by hand (not the one `vol create` would allocate), at the end of
        // d3's public region (its subdisks start at the beginning), id 0x77.
        let v = c.disk_groups[0].volume_mut(0);
        let log = v.log.get_or_insert(VolumeLog {
            copies: vec![LogCopy {
                disk: "d3".into(),
                disk_offset_bytes: 1 << 30,
            }],
            len_bytes: 1 << 20,
            section_bytes: 8192,
            region_bytes: 512 << 10,
            log_id: 0x77,
        });
        log.log_id = 0x77;
        let a = OpenNode {
            node: 1,
            incarnation: 10,
        };
        (apply(&c, &Change::NodeOpen { node: a }).unwrap(), a)
    }

    fn plexes(c: &ClusterConfig) -> Vec<(PlexState, Vec<(u64, u64)>)> {
        c.disk_groups[0].volumes[0]
            .plexes
            .iter()
            .map(|p| (p.state, p.resync_ranges.clone()))
            .collect()
    }

    fn entry(log_id: u64, ranges: Vec<(u64, u64)>) -> Vec<RecoverLog> {
        vec![RecoverLog {
            dg: "dg1".into(),
            volume: "v1".into(),
            log_id,
            ranges,
        }]
    }

    #[test]
    fn recover_with_a_log_resyncs_only_the_dirty_ranges() {
        let (c, a) = logged();
        let r = 512 << 10;
        // Dirty ranges: the plexes after the first ACTIVE one resync only them
        // (clipped to the volume, overlapping ones merged).
        let logs = entry(0x77, vec![(r, r), (r + 4096, r), (14 * r, 4 * r)]);
        let after = apply(&c, &Change::NodeRecover { node: a, logs }).unwrap();
        let want = vec![(r, r + 4096), (14 * r, 2 * r)];
        assert_eq!(
            plexes(&after),
            vec![
                (PlexState::Active, vec![]),
                (PlexState::Syncing, want.clone()),
                (PlexState::Syncing, want.clone()),
            ]
        );
        assert!(after.shared_open_nodes().is_empty());
        // A start that never wrote under the log (unused) or left nothing dirty:
        // no resync at all.
        let clean = apply(
            &c,
            &Change::NodeRecover {
                node: a,
                logs: entry(0x77, vec![]),
            },
        )
        .unwrap();
        assert!(plexes(&clean).iter().all(|p| p.0 == PlexState::Active));
        // An entry for another log (the log changed since the read), or none at
        // all (unreadable, or an older node's change): the whole plex.
        for logs in [entry(0x78, vec![(0, r)]), vec![]] {
            let whole = apply(&c, &Change::NodeRecover { node: a, logs }).unwrap();
            let all = vec![(0, 8 << 20)];
            assert_eq!(
                plexes(&whole),
                vec![
                    (PlexState::Active, vec![]),
                    (PlexState::Syncing, all.clone()),
                    (PlexState::Syncing, all),
                ]
            );
        }
    }

    #[test]
    fn a_second_recovery_adds_its_ranges_and_whole_stays_whole() {
        let (c, a) = logged();
        let r = 512 << 10;
        let once = apply(
            &c,
            &Change::NodeRecover {
                node: a,
                logs: entry(0x77, vec![(0, r)]),
            },
        )
        .unwrap();
        let b = OpenNode {
            node: 2,
            incarnation: 20,
        };
        let open = apply(&once, &Change::NodeOpen { node: b }).unwrap();
        let twice = apply(
            &open,
            &Change::NodeRecover {
                node: b,
                logs: entry(0x77, vec![(4 * r, r)]),
            },
        )
        .unwrap();
        assert_eq!(
            plexes(&twice)[1..],
            [
                (PlexState::Syncing, vec![(0, r), (4 * r, r)]),
                (PlexState::Syncing, vec![(0, r), (4 * r, r)]),
            ]
        );
        // A recovery without a usable log makes ranged plexes whole.
        let whole = apply(
            &open,
            &Change::NodeRecover {
                node: b,
                logs: vec![],
            },
        )
        .unwrap();
        let all = vec![(0, 8 << 20)];
        assert_eq!(
            plexes(&whole)[1..],
            [(PlexState::Syncing, all.clone()), (PlexState::Syncing, all)]
        );
        // The resync's end (ACTIVE) drops the ranges; so does a detach.
        let done = apply(
            &twice,
            &Change::SetPlexState {
                dg: "dg1".into(),
                plex: twice.disk_groups[0].volumes[0].plexes[1].name.clone(),
                state: PlexState::Active,
            },
        )
        .unwrap();
        assert_eq!(plexes(&done)[1], (PlexState::Active, vec![]));
    }

    #[test]
    fn bound_ranges_merges_clips_and_coalesces_the_closest() {
        assert_eq!(
            bound_ranges(&[(10, 5), (0, 4), (12, 10), (4, 1), (100, 50)], 120, 8),
            vec![(0, 5), (10, 12), (100, 20)]
        );
        assert_eq!(bound_ranges(&[(200, 5), (5, 0)], 120, 8), vec![]);
        // Gaps 5, 100, 2: three ranges at most merge across the gap of 2 first.
        assert_eq!(
            bound_ranges(&[(0, 5), (10, 5), (115, 5), (122, 3)], 1000, 3),
            vec![(0, 5), (10, 5), (115, 10)]
        );
        assert_eq!(
            bound_ranges(&[(0, 5), (10, 5), (115, 5), (122, 3)], 1000, 1),
            vec![(0, 125)]
        );
        assert_eq!(
            bound_ranges(&[(u64::MAX - 1, 10)], u64::MAX, 4),
            vec![(u64::MAX - 1, 1)]
        );
    }

    #[test]
    fn a_private_group_left_open_resyncs_its_dirty_ranges_and_is_closed() {
        let (c, a) = logged();
        let mut g = c.disk_groups[0].clone();
        g.shared = false;
        g.open_nodes = vec![a];
        let seq = g.seq;
        let r = 512 << 10;
        // The start's section said regions 1 and 14..16 were dirty.
        let mut dirty = g.clone();
        assert!(dirty.recover_private(&entry(0x77, vec![(r, r), (14 * r, 4 * r)])));
        assert!(dirty.open_nodes.is_empty(), "the open record is dropped");
        assert!(dirty.seq > seq, "the record is rewritten");
        let want = vec![(r, r), (14 * r, 2 * r)];
        let states: Vec<_> = dirty.volumes[0]
            .plexes
            .iter()
            .map(|p| (p.state, p.resync_ranges.clone()))
            .collect();
        assert_eq!(
            states,
            vec![
                (PlexState::Active, vec![]),
                (PlexState::Syncing, want.clone()),
                (PlexState::Syncing, want)
            ]
        );
        // A section never written (or left clean): nothing to copy.
        let mut clean = g.clone();
        assert!(!clean.recover_private(&entry(0x77, vec![])));
        assert!(clean.volumes[0]
            .plexes
            .iter()
            .all(|p| p.state == PlexState::Active));
        // An unreadable section (no entry) or another log id: the whole volume.
        for logs in [vec![], entry(0x78, vec![(r, r)])] {
            let mut whole = g.clone();
            assert!(whole.recover_private(&logs));
            let size = whole.volumes[0].size_bytes;
            assert!(whole.volumes[0].plexes[1..]
                .iter()
                .all(|p| p.state == PlexState::Syncing && p.resync_ranges == [(0, size)]));
        }
    }
}
