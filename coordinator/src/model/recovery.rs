//! Node-crash recovery of shared mirrors, without a dirty region log.
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
//! it to the others (docs/PROTOCOL.md, "Node-crash recovery").
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

/// [`Change::NodeRecover`]: in every shared group, each volume with two or more
/// ACTIVE plexes keeps its first ACTIVE plex and the others become SYNCING; `node`
/// leaves the open nodes.
pub(super) fn recover(next: &mut ClusterConfig, node: OpenNode) -> Result<(), ConfigError> {
    let Some(i) = next.open_nodes.iter().position(|o| *o == node) else {
        return Err(ConfigError::Invalid(format!(
            "node {} start {} is not open: nothing to recover",
            node.node, node.incarnation
        )));
    };
    next.open_nodes.remove(i);
    for g in next.disk_groups.iter_mut().filter(|g| g.shared) {
        let mut changed = false;
        for v in &mut g.volumes {
            let mut first = true;
            for p in v.plexes.iter_mut().filter(|p| p.state == PlexState::Active) {
                if !first {
                    p.state = PlexState::Syncing;
                    changed = true;
                }
                first = false;
            }
        }
        if changed {
            g.seq += 1;
        }
    }
    next.sync_open_nodes();
    Ok(())
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
        let r = apply(&c, &Change::NodeRecover { node: a }).unwrap();
        let states: Vec<PlexState> = r.disk_groups[0].volumes[0]
            .plexes
            .iter()
            .map(|p| p.state)
            .collect();
        assert_eq!(states, vec![PlexState::Active, PlexState::Syncing]);
        assert!(r.shared_open_nodes().is_empty());
        let change = Change::NodeRecover { node: a };
        let updates = change.disk_updates(&before, &r);
        assert_eq!(updates.len(), 1, "the group's record is written");
        // A clean close changes no plex.
        let closed = apply(&c, &Change::NodeClose { node: a }).unwrap();
        assert!(closed.disk_groups[0].volumes[0]
            .plexes
            .iter()
            .all(|p| p.state == PlexState::Active));
        assert!(apply(&closed, &Change::NodeRecover { node: a }).is_err());
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
}
