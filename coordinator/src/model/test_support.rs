//! Small configurations for unit tests.

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
        failed: false,
        staled: Vec::new(),
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

/// `c` with a 2-way mirrored volume `volume` of `size_bytes` in `dg1`, made with
/// log policy `log`.
pub fn with_mirror(
    c: &ClusterConfig,
    volume: &str,
    size_bytes: u64,
    log: LogPolicy,
) -> ClusterConfig {
    c.apply(&Change::VolCreate {
        dg: "dg1".into(),
        volume: volume.into(),
        size_bytes,
        layout: VolumeLayout::Mirror { mirrors: 2 },
        log,
        disks: Vec::new(),
    })
    .unwrap()
}
