//! The projection of a disk group onto what the data plane builds: extents on devices
//! per plex column, per volume.

use serde::{Deserialize, Serialize};

use super::*;

impl DiskGroupConfig {
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
