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
//! Every shared group holds the same set (a group created or imported takes the
//! cluster's); the set of a configuration is the union over its shared groups.

use super::*;

/// Most open node starts a group records (one per configured node in practice);
/// a record with more is refused as malformed.
pub const MAX_OPEN_NODES: usize = 256;

impl ClusterConfig {
    /// The open node starts of the shared groups (their union), sorted.
    pub fn shared_open_nodes(&self) -> Vec<OpenNode> {
        let mut all: Vec<OpenNode> = self
            .disk_groups
            .iter()
            .filter(|g| g.shared)
            .flat_map(|g| g.open_nodes.iter().copied())
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// Whether `node` is open in every shared group (true when there is none: no
    /// shared volume to write).
    pub fn node_is_open(&self, node: OpenNode) -> bool {
        self.disk_groups
            .iter()
            .filter(|g| g.shared)
            .all(|g| g.open_nodes.contains(&node))
    }
}

/// [`Change::NodeOpen`]: `node` joins every shared group's open nodes. Refused while
/// another start of the same node is open (it is recovered first) and when every
/// shared group already holds it.
pub(super) fn open(next: &mut ClusterConfig, node: OpenNode) -> Result<(), ConfigError> {
    if let Some(other) = next
        .shared_open_nodes()
        .into_iter()
        .find(|o| o.node == node.node && o.incarnation != node.incarnation)
    {
        return Err(ConfigError::Invalid(format!(
            "node {} start {}: its earlier start {} is still open (not recovered yet)",
            node.node, node.incarnation, other.incarnation
        )));
    }
    let mut changed = false;
    for g in next.disk_groups.iter_mut().filter(|g| g.shared) {
        if g.open_nodes.contains(&node) {
            continue;
        }
        if g.open_nodes.len() >= MAX_OPEN_NODES {
            return Err(ConfigError::Invalid(format!(
                "disk group {}: {MAX_OPEN_NODES} open nodes already",
                g.name
            )));
        }
        g.open_nodes.push(node);
        g.open_nodes.sort_unstable();
        g.seq += 1;
        changed = true;
    }
    if !changed {
        return Err(ConfigError::Invalid(format!(
            "node {} start {} is already open in every shared disk group",
            node.node, node.incarnation
        )));
    }
    Ok(())
}

/// [`Change::NodeClose`]: `node` leaves every shared group's open nodes.
pub(super) fn close(next: &mut ClusterConfig, node: OpenNode) -> Result<(), ConfigError> {
    let mut changed = false;
    for g in next.disk_groups.iter_mut().filter(|g| g.shared) {
        if let Some(i) = g.open_nodes.iter().position(|o| *o == node) {
            g.open_nodes.remove(i);
            g.seq += 1;
            changed = true;
        }
    }
    if !changed {
        return Err(ConfigError::Invalid(format!(
            "node {} start {} is not open in any shared disk group",
            node.node, node.incarnation
        )));
    }
    Ok(())
}

/// [`Change::NodeRecover`]: in every shared group that holds `node` open, each
/// volume with two or more ACTIVE plexes keeps its first ACTIVE plex and the others
/// become SYNCING; `node` leaves the open nodes.
pub(super) fn recover(next: &mut ClusterConfig, node: OpenNode) -> Result<(), ConfigError> {
    let mut changed = false;
    for g in next.disk_groups.iter_mut().filter(|g| g.shared) {
        let Some(i) = g.open_nodes.iter().position(|o| *o == node) else {
            continue;
        };
        g.open_nodes.remove(i);
        for v in &mut g.volumes {
            let mut first = true;
            for p in v.plexes.iter_mut().filter(|p| p.state == PlexState::Active) {
                if !first {
                    p.state = PlexState::Syncing;
                }
                first = false;
            }
        }
        g.seq += 1;
        changed = true;
    }
    if !changed {
        return Err(ConfigError::Invalid(format!(
            "node {} start {} is not open in any shared disk group: nothing to recover",
            node.node, node.incarnation
        )));
    }
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
}
