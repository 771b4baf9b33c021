//! The disk space a change gives a volume's data that held none of it before: every
//! subdisk of a new volume, the extents a grow adds. That space was free, and may
//! still hold a removed (or shrunk) volume's data, different on each disk; plexd
//! zeroes it before the change can commit (`daemon::zero`), so no host reads another
//! volume's old data there and the plexes of a new mirror read the same.
//!
//! Only `vol create` and `vol grow` give data space this way. A new plex (`plex
//! add`: EMPTY, serving no reads) is copied from an ACTIVE plex when it is attached
//! (SYNCING); a log's space is initialised by the data plane when the log id
//! changes; `dg import` brings space that holds its own data, which must never be
//! touched.

use super::alloc::{carve, FreeExtent};
use super::{Change, DiskGroupConfig};

/// A range of one of a group's disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskExtent {
    /// The disk's media name.
    pub disk: String,
    /// Byte offset on the disk (from its start, as subdisks record it).
    pub offset_bytes: u64,
    /// Length in bytes.
    pub len_bytes: u64,
}

/// The data space a change gives a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSpace {
    /// The volume.
    pub volume: String,
    /// Its new extents, by disk name and offset.
    pub extents: Vec<DiskExtent>,
}

impl NewSpace {
    /// Bytes in all the extents.
    pub fn bytes(&self) -> u64 {
        self.extents.iter().map(|e| e.len_bytes).sum()
    }
}

/// The data space `change` gives its volume in group `after` (the group after the
/// change; `before`: the group before it, if it existed): the volume's subdisk
/// extents in `after` that none of its extents in `before` covers, by disk name and
/// offset. None for every other kind of change, or when it gives nothing.
pub fn new_data_space(
    change: &Change,
    before: Option<&DiskGroupConfig>,
    after: &DiskGroupConfig,
) -> Option<NewSpace> {
    let volume = match change {
        Change::VolCreate { volume, .. } | Change::VolGrow { volume, .. } => volume,
        _ => return None,
    };
    let v = after.volume(volume)?;
    let old: Vec<(&str, u64, u64)> = before
        .and_then(|b| b.volume(volume))
        .map(|o| o.subdisk_extents().collect())
        .unwrap_or_default();
    let mut out = Vec::new();
    for (disk, offset_bytes, len_bytes) in v.subdisk_extents() {
        let mut pieces = vec![FreeExtent {
            offset_bytes,
            len_bytes,
        }];
        for &(_, o, l) in old.iter().filter(|(d, _, _)| *d == disk) {
            carve(&mut pieces, o, l);
        }
        out.extend(pieces.into_iter().map(|p| DiskExtent {
            disk: disk.to_string(),
            offset_bytes: p.offset_bytes,
            len_bytes: p.len_bytes,
        }));
    }
    out.sort_by(|a, b| (&a.disk, a.offset_bytes).cmp(&(&b.disk, b.offset_bytes)));
    (!out.is_empty()).then(|| NewSpace {
        volume: volume.clone(),
        extents: out,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_support::cluster;
    use crate::model::{ClusterConfig, VolumeLayout};

    fn apply(c: &ClusterConfig, change: &Change) -> ClusterConfig {
        c.apply(change).unwrap()
    }

    fn space(c: &ClusterConfig, change: &Change) -> (ClusterConfig, Vec<DiskExtent>) {
        let after = apply(c, change);
        let before = c.disk_group("dg1");
        let new = new_data_space(change, before, after.disk_group("dg1").unwrap());
        if let Some(n) = &new {
            assert_eq!(n.volume, "vol1");
            assert_eq!(n.bytes(), total(&n.extents));
        }
        (after, new.map(|n| n.extents).unwrap_or_default())
    }

    fn total(e: &[DiskExtent]) -> u64 {
        e.iter().map(|e| e.len_bytes).sum()
    }

    #[test]
    fn a_new_volume_and_a_grow_give_new_space_and_other_changes_none() {
        let c = cluster(&[("d0", 64 << 20), ("d1", 64 << 20)]);
        let create = Change::VolCreate {
            dg: "dg1".into(),
            volume: "vol1".into(),
            size_bytes: 8 << 20,
            layout: VolumeLayout::Mirror { mirrors: 2 },
            log: Default::default(),
            disks: Vec::new(),
        };
        let (c, new) = space(&c, &create);
        // Both plexes, one per disk, each the whole volume.
        assert_eq!(total(&new), 16 << 20);
        assert_eq!(
            new.iter().map(|e| e.disk.as_str()).collect::<Vec<_>>(),
            ["d0", "d1"]
        );
        let v = c.disk_group("dg1").unwrap().volume("vol1").unwrap();
        for (e, p) in new.iter().zip(&v.plexes) {
            assert_eq!(e.offset_bytes, p.subdisks[0].disk_offset_bytes);
        }
        // A grow: only what it adds, per plex.
        let grow = Change::VolGrow {
            dg: "dg1".into(),
            volume: "vol1".into(),
            new_size_bytes: 12 << 20,
        };
        let (c, new) = space(&c, &grow);
        assert_eq!(total(&new), 8 << 20);
        let v = c.disk_group("dg1").unwrap().volume("vol1").unwrap();
        for e in &new {
            let plex_end = v
                .plexes
                .iter()
                .flat_map(|p| &p.subdisks)
                .filter(|sd| sd.disk == e.disk)
                .map(|sd| sd.disk_offset_bytes + sd.len_bytes)
                .max()
                .unwrap();
            assert!(e.offset_bytes + e.len_bytes <= plex_end, "{e:?}");
            assert!(e.offset_bytes + (4 << 20) >= plex_end, "{e:?}");
        }
        // A shrink gives nothing; the next grow gives the cut space again.
        let shrink = Change::VolShrink {
            dg: "dg1".into(),
            volume: "vol1".into(),
            new_size_bytes: 4 << 20,
            force: false,
        };
        let (c, new) = space(&c, &shrink);
        assert!(new.is_empty());
        let (_, new) = space(&c, &grow);
        assert_eq!(total(&new), 16 << 20);
        // A removal gives nothing.
        let rm = Change::VolRm {
            dg: "dg1".into(),
            volume: "vol1".into(),
        };
        let (_, new) = space(&c, &rm);
        assert!(new.is_empty());
    }
}
