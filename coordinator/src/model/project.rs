//! The projection of a disk group onto what the data plane builds: one
//! [`VolumeSpec`] per volume (subdisk extents per plex column on the group's disk
//! bdevs, stripe geometry, plex states, read policy, this node's section of the
//! dirty region log), and the data plane's names of the group's objects. The one
//! place a configuration becomes a data-plane layout.
//!
//! A SYNCING plex is SYNCING to the data plane whether the whole plex or only its
//! `resync_ranges` are left to copy: the copier knows the ranges, the data plane
//! only writes to it and never reads from it.

use plexd_target_api::drl::{DirtyLogSpec, DrlCopy};
use plexd_target_api::volume::{
    PlexKind, PlexSpec, PlexState as KPlexState, SubdiskSpec, VolumeSpec,
};

use super::*;

/// The data plane's name of disk `disk` of disk group `dg` (its bdev).
pub fn disk_bdev(dg: &str, disk: &str) -> String {
    format!("{dg}.{disk}")
}

/// The data plane's name of volume `volume` of disk group `dg`.
pub fn volume_bdev(dg: &str, volume: &str) -> String {
    format!("{dg}.{volume}")
}

/// A plex state in the data plane's terms: an EMPTY plex (never written) takes no
/// I/O, as a DETACHED one.
pub fn kernel_plex_state(state: PlexState) -> KPlexState {
    match state {
        PlexState::Active => KPlexState::Active,
        PlexState::Stale => KPlexState::Stale,
        PlexState::Syncing => KPlexState::Syncing,
        PlexState::Empty => KPlexState::Detached,
    }
}

impl DiskGroupConfig {
    /// Every volume of the group as the data plane of node `node` (its id in the
    /// cluster file) builds it.
    pub fn volume_specs(&self, node: u32) -> Vec<VolumeSpec> {
        self.volumes
            .iter()
            .map(|v| self.volume_spec(v, node))
            .collect()
    }

    /// Node `node`'s section of `volume`'s dirty region log, as its data plane is
    /// given it: None without a log (or for a node id without a section).
    pub fn log_spec(&self, volume: &Volume, node: u32) -> Option<DirtyLogSpec> {
        let log = volume.log.as_ref()?;
        let mut copies = Vec::with_capacity(log.copies.len());
        for c in &log.copies {
            copies.push(DrlCopy {
                bdev: disk_bdev(&self.name, &c.disk),
                offset_bytes: log.section_offset(c, node)?,
            });
        }
        Some(DirtyLogSpec {
            copies,
            section_bytes: log.section_bytes,
            node,
            log_id: log.log_id,
            region_bytes: log.region_bytes,
        })
    }

    /// One volume as the data plane of node `node` builds it: per plex, per column,
    /// the subdisks' extents on the group's disk bdevs; the node's own section of
    /// the volume's dirty region log.
    pub fn volume_spec(&self, volume: &Volume, node: u32) -> VolumeSpec {
        let plexes = volume
            .plexes
            .iter()
            .map(|p| PlexSpec {
                name: p.name.clone(),
                kind: match p.layout {
                    PlexLayout::Concat => PlexKind::Concat,
                    PlexLayout::Stripe {
                        stripe_unit_bytes, ..
                    } => PlexKind::Stripe { stripe_unit_bytes },
                },
                columns: (0..p.layout.columns())
                    .map(|c| {
                        p.subdisks
                            .iter()
                            .filter(|sd| sd.column == c)
                            .map(|sd| SubdiskSpec {
                                bdev: disk_bdev(&self.name, &sd.disk),
                                offset_bytes: sd.disk_offset_bytes,
                                len_bytes: sd.len_bytes,
                            })
                            .collect()
                    })
                    .collect(),
                state: kernel_plex_state(p.state),
            })
            .collect();
        VolumeSpec {
            log: self.log_spec(volume, node),
            name: volume_bdev(&self.name, &volume.name),
            size_bytes: volume.size_bytes,
            plexes,
            read_policy: (&volume.read_policy).into(),
            shared: self.shared,
            local_detach: self.shared && self.detach_policy == DetachPolicy::Local,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_support::{cluster, with_mirror};

    #[test]
    fn each_node_gets_its_own_section_of_the_log() {
        let c = cluster(&[
            ("disk01", 1 << 30),
            ("disk02", 1 << 30),
            ("disk03", 1 << 30),
        ]);
        let c = with_mirror(&c, "vol1", 64 << 20, LogPolicy::default());
        let g = &c.disk_groups[0];
        let log = g.volumes[0].log.clone().unwrap();
        let mut offsets = std::collections::BTreeSet::new();
        for node in 1..=MAX_LOG_NODE_ID {
            let spec = g.volume_specs(node).remove(0);
            let l = spec.log.unwrap();
            // Copy 1 off the plexes' disks, copy 2 on another disk.
            let bdevs: Vec<&str> = l.copies.iter().map(|c| c.bdev.as_str()).collect();
            assert_eq!(bdevs, ["dg1.disk03", "dg1.disk01"]);
            assert_eq!(l.node, node);
            assert_eq!(l.log_id, log.log_id);
            assert_eq!(l.region_bytes, log.region_bytes);
            assert_eq!(l.section_bytes, log.section_bytes);
            for (c, lc) in l.copies.iter().zip(&log.copies) {
                assert_eq!(
                    c.offset_bytes,
                    lc.disk_offset_bytes + u64::from(node) * log.section_bytes
                );
                // Inside the log.
                assert!(c.offset_bytes + l.section_bytes <= lc.disk_offset_bytes + log.len_bytes);
            }
            // A spec the data plane takes.
            l.check(spec.size_bytes).unwrap();
            assert!(offsets.insert(l.copies[0].offset_bytes));
        }
        // No section for ids the cluster file refuses.
        assert_eq!(g.volume_specs(0)[0].log, None);
        assert_eq!(g.volume_specs(MAX_LOG_NODE_ID + 1)[0].log, None);
    }

    #[test]
    fn a_syncing_plex_with_ranges_is_syncing_to_the_data_plane() {
        let c = cluster(&[("disk01", 1 << 30), ("disk02", 1 << 30)]);
        let c = with_mirror(&c, "vol1", 64 << 20, LogPolicy::default());
        let mut g = c.disk_groups[0].clone();
        g.volume_mut(0).plexes[1].state = PlexState::Syncing;
        g.volume_mut(0).plexes[1].resync_ranges = vec![(1 << 20, 1 << 20)];
        g.validate().unwrap();
        let spec = g.volume_specs(2).remove(0);
        assert_eq!(spec.plexes[1].state, KPlexState::Syncing);
        assert_eq!(spec.plexes[0].state, KPlexState::Active);
    }
}
