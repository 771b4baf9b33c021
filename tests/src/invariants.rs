//! The checks behind [`crate::Cluster::check_invariants`] that look below plexctl: the
//! configuration on the disks and the volumes in a node's data plane.

use std::path::PathBuf;

use plexd_coordinator::model::DiskGroupConfig;
use plexd_coordinator::ondisk;
use plexd_target::api::KernelClient;
use serde_json::{json, Value};

use crate::cluster::shared_groups;

/// A name from a JSON list entry that is either a string or an object with "name".
fn name_of(v: &Value) -> Value {
    match v {
        Value::String(_) => v.clone(),
        _ => v["name"].clone(),
    }
}

fn names(list: &Value) -> Value {
    Value::Array(
        list.as_array()
            .map(|a| a.iter().map(name_of).collect())
            .unwrap_or_default(),
    )
}

/// What both sides must agree on, from a `--json print` disk group.
pub fn summary_of_print(dg: &Value) -> Value {
    let volumes: Vec<Value> = dg["volumes"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .map(|v| {
                    let plexes: Vec<Value> = v["plexes"]
                        .as_array()
                        .map(|ps| {
                            ps.iter()
                                .map(|p| {
                                    json!({"name": p["name"], "state": p["state"],
                                           "subdisks": names(&p["subdisks"])})
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    json!({"name": v["name"], "size": v["size"], "state": v["state"],
                           "plexes": plexes})
                })
                .collect()
        })
        .unwrap_or_default();
    json!({"name": dg["name"], "shared": dg["shared"], "seq": dg["seq"],
           "disks": names(&dg["disks"]), "volumes": volumes})
}

/// The same summary of a configuration read from the disks.
pub fn summary_of_disk(c: &DiskGroupConfig) -> Value {
    let volumes: Vec<Value> = c
        .volumes
        .iter()
        .map(|v| {
            let plexes: Vec<Value> = v
                .plexes
                .iter()
                .map(|p| {
                    let sds: Vec<&str> = p.subdisks.iter().map(|s| s.name.as_str()).collect();
                    json!({"name": p.name, "state": p.state.as_str(), "subdisks": sds})
                })
                .collect();
            json!({"name": v.name, "size": v.size_bytes, "state": v.state.as_str(),
                   "plexes": plexes})
        })
        .collect();
    let disks: Vec<&str> = c.disks.iter().map(|d| d.name.as_str()).collect();
    json!({"name": c.name, "shared": c.shared, "seq": c.seq, "disks": disks,
           "volumes": volumes})
}

/// The shared disk groups on `disks` are exactly those of `print`, with the same
/// sequence number, disks, volumes, plexes (and states) and subdisks.
pub fn disks_hold(print: &Value, disks: &[PathBuf]) -> Result<(), String> {
    let found = ondisk::discover(disks);
    let mut on_disk = Vec::new();
    for g in &found.groups {
        match &g.config {
            Ok(read) if read.config.shared => {
                no_shared_extents(&read.config)?;
                on_disk.push(summary_of_disk(&read.config));
            }
            Ok(_) => {}
            Err(e) => {
                return Err(format!(
                    "disk group {} ({}): cannot read its configuration: {e}",
                    g.dg_name, g.dg_id
                ))
            }
        }
    }
    on_disk.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let shown: Vec<Value> = shared_groups(print).iter().map(summary_of_print).collect();
    if shown != on_disk {
        return Err(format!(
            "nodes show {}\ndisks hold {}",
            Value::Array(shown),
            Value::Array(on_disk)
        ));
    }
    Ok(())
}

/// No two subdisks or dirty region logs of disk group `c` (of one volume or of two)
/// overlap on a disk.
pub fn no_shared_extents(c: &DiskGroupConfig) -> Result<(), String> {
    let mut extents: Vec<(&str, u64, u64, String)> = Vec::new();
    for v in &c.volumes {
        for p in &v.plexes {
            for sd in &p.subdisks {
                extents.push((
                    sd.disk.as_str(),
                    sd.disk_offset_bytes,
                    sd.disk_offset_bytes + sd.len_bytes,
                    format!("{}/{}/{}", v.name, p.name, sd.name),
                ));
            }
        }
        if let Some(l) = &v.log {
            for copy in &l.copies {
                extents.push((
                    copy.disk.as_str(),
                    copy.disk_offset_bytes,
                    copy.disk_offset_bytes + l.len_bytes,
                    format!("{}/log copy on {}", v.name, copy.disk),
                ));
            }
        }
    }
    extents.sort();
    for w in extents.windows(2) {
        let ((d1, _, end1, n1), (d2, start2, _, n2)) = (&w[0], &w[1]);
        if d1 == d2 && start2 < end1 {
            return Err(format!(
                "disk group {}: subdisks {n1} and {n2} overlap on disk {d1} (seq {})",
                c.name, c.seq
            ));
        }
    }
    Ok(())
}

/// Node's data plane serves every shared volume of `print` as `DG.VOL`, of the right
/// size, with no staged layout left and no gate closed; a plex ACTIVE in the
/// configuration is active in the data plane and one that is not takes no reads.
pub fn kernel_has_volumes(print: &Value, k: &KernelClient) -> Result<(), String> {
    let vols = k.list_volumes().map_err(|e| e.to_string())?;
    for dg in shared_groups(print) {
        let dg_name = dg["name"].as_str().unwrap_or("?");
        for v in dg["volumes"].as_array().cloned().unwrap_or_default() {
            let bdev = format!("{dg_name}.{}", v["name"].as_str().unwrap_or("?"));
            let Some(kv) = vols.iter().find(|kv| kv.name == bdev) else {
                return Err(format!(
                    "volume {bdev} is not in the data plane (it has {:?})",
                    vols.iter().map(|v| &v.name).collect::<Vec<_>>()
                ));
            };
            if Some(kv.size_bytes) != v["size"].as_u64() {
                return Err(format!(
                    "volume {bdev}: {} bytes in the data plane, configuration says {}",
                    kv.size_bytes, v["size"]
                ));
            }
            if kv.staged || kv.state != "ENABLED" {
                return Err(format!(
                    "volume {bdev}: state {} staged {} in the data plane after the change",
                    kv.state, kv.staged
                ));
            }
            for p in v["plexes"].as_array().cloned().unwrap_or_default() {
                let name = p["name"].as_str().unwrap_or("?");
                let active_in_config = p["state"].as_str() == Some("ACTIVE");
                let kp = kv.plexes.iter().find(|kp| kp.name == name);
                let active_in_kernel = kp.is_some_and(|kp| kp.state.as_str() == "ACTIVE");
                if active_in_config != active_in_kernel {
                    return Err(format!(
                        "volume {bdev} plex {name}: {} in the configuration, {} in the data plane",
                        p["state"],
                        kp.map(|kp| kp.state.as_str()).unwrap_or("absent")
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexd_coordinator::model::{
        Plex, PlexLayout, PlexState, ReadPolicy, Subdisk, Volume, VolumeState,
    };

    fn volume(name: &str, disk: &str, offset: u64, len: u64) -> Volume {
        Volume {
            log: None,
            name: name.into(),
            size_bytes: len,
            state: VolumeState::Enabled,
            read_policy: ReadPolicy::Round,
            plexes: vec![Plex {
                resync_ranges: Vec::new(),
                replaces: None,
                name: format!("{name}-01"),
                state: PlexState::Active,
                layout: PlexLayout::Concat,
                subdisks: vec![Subdisk {
                    name: format!("{disk}-{name}"),
                    disk: disk.into(),
                    disk_offset_bytes: offset,
                    len_bytes: len,
                    column: 0,
                    plex_offset_bytes: 0,
                }],
            }],
            exports: Vec::new(),
            reservations: Default::default(),
        }
    }

    fn group(volumes: Vec<Volume>) -> DiskGroupConfig {
        DiskGroupConfig {
            name: "dg1".into(),
            id: "id".into(),
            shared: true,
            owner_id: "test".into(),
            seq: 7,
            disks: Vec::new(),
            volumes: volumes.into_iter().map(std::sync::Arc::new).collect(),
            open_nodes: Vec::new(),
            detach_policy: Default::default(),
        }
    }

    #[test]
    fn subdisks_sharing_an_extent_are_refused_and_neighbours_are_not() {
        let mb = 1 << 20;
        let ok = group(vec![
            volume("v1", "d0", 0, 4 * mb),
            volume("v2", "d0", 4 * mb, 4 * mb),
            volume("v3", "d1", 0, 4 * mb),
        ]);
        assert_eq!(no_shared_extents(&ok), Ok(()));
        let bad = group(vec![
            volume("v1", "d0", 0, 4 * mb),
            volume("v2", "d0", 4 * mb - 512, 4 * mb),
        ]);
        let e = no_shared_extents(&bad).unwrap_err();
        assert!(
            e.contains("v1/v1-01") && e.contains("v2/v2-01") && e.contains("d0"),
            "{e}"
        );
    }
}
