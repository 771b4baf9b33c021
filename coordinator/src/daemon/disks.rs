//! Disk work of the daemon, over `ondisk`: finding disks by media name, reading the
//! shared and private disk groups, writing a change's disk updates, and the local
//! checks of a transaction.

use std::path::{Path, PathBuf};

use crate::core::{DiskRecord, TxnId};
use crate::objects::{Change, ClusterConfig, Disk, DiskGroupConfig, DiskUpdate};
use crate::ondisk::{self, Label};

use super::ctl::DiskOut;
use super::model::{core_txn, disk_txn, SharedConfig};

/// Every disk file with its label (or the error reading it).
pub fn scan(files: &[PathBuf]) -> Vec<(PathBuf, Result<Label, ondisk::OnDiskError>)> {
    ondisk::scan(files)
}

/// `disk list`.
pub fn list(files: &[PathBuf]) -> Vec<DiskOut> {
    scan(files)
        .into_iter()
        .map(|(path, label)| match label {
            Ok(l) => DiskOut {
                name: l.disk_name.clone(),
                path: path.display().to_string(),
                size: l.disk_size_bytes,
                dg: l
                    .disk_group
                    .as_ref()
                    .map(|g| g.name.clone())
                    .unwrap_or_default(),
                state: if l.disk_group.is_some() {
                    "online".into()
                } else {
                    "free".into()
                },
                id: l.disk_id.clone(),
            },
            Err(e) => DiskOut {
                name: "-".into(),
                path: path.display().to_string(),
                size: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                dg: String::new(),
                state: format!("error: {e}"),
                id: String::new(),
            },
        })
        .collect()
}

/// The free (in no disk group) initialised disk called `name`.
pub fn find_free_disk(files: &[PathBuf], name: &str, node: &str) -> Result<Disk, String> {
    let found: Vec<Disk> = scan(files)
        .into_iter()
        .filter_map(|(p, l)| l.ok().map(|l| (p, l)))
        .filter(|(_, l)| l.disk_name == name && l.disk_group.is_none())
        .map(|(p, l)| l.disk_record(&p))
        .collect();
    match found.len() {
        1 => Ok(found.into_iter().next().unwrap_or_else(|| unreachable!())),
        0 => Err(format!(
            "node {node}: disk {name}: no free initialised disk of that name on the disk paths (plexctl disk init PATH --name {name})"
        )),
        n => Err(format!(
            "node {node}: disk {name}: {n} free disks carry that name; re-initialise one with another name"
        )),
    }
}

/// The disk groups on the disks: `(shared groups of this cluster, private groups
/// of this host, every group found by name)`; groups whose configuration cannot be
/// read are logged and skipped.
pub fn discover(
    files: &[PathBuf],
    cluster_id: &str,
    host_id: &str,
) -> (
    Vec<(DiskGroupConfig, u64)>,
    Vec<DiskGroupConfig>,
    Vec<DiskGroupConfig>,
) {
    let found = ondisk::discover(files);
    for (path, e) in &found.unreadable {
        log::debug!("disk {}: {e}", path.display());
    }
    let (mut shared, mut private, mut all) = (Vec::new(), Vec::new(), Vec::new());
    for g in found.groups {
        match g.config {
            Ok(read) => {
                let c = read.config;
                if c.shared && c.owner_id == cluster_id {
                    shared.push((c.clone(), read.txn_id));
                } else if !c.shared && c.owner_id == host_id {
                    private.push(c.clone());
                }
                all.push(c);
            }
            Err(e) => log::warn!(
                "disk group {}: cannot read its configuration: {e}",
                g.dg_name
            ),
        }
    }
    (shared, private, all)
}

/// Reads the shared configuration for the core ([`crate::core::Action::ReadDisks`]).
/// `known` are configurations this node already knows (committed, staged): when the
/// disks hold exactly one of them, that one (with its cluster-wide seq) is returned.
pub fn read_shared(
    files: &[PathBuf],
    cluster_id: &str,
    host_id: &str,
    known: &[(TxnId, SharedConfig)],
) -> Result<Option<DiskRecord<SharedConfig>>, String> {
    let (shared, _, _) = discover(files, cluster_id, host_id);
    if shared.is_empty() {
        return Ok(None);
    }
    let txn = shared.iter().map(|(_, t)| *t).max().unwrap_or(0);
    let mut groups: Vec<DiskGroupConfig> = shared.into_iter().map(|(g, _)| g).collect();
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    let txn = core_txn(txn);
    for (t, k) in known.iter().rev() {
        if k.groups == groups {
            return Ok(Some(DiskRecord {
                txn: *t,
                config: SharedConfig {
                    updates: Vec::new(),
                    ..k.clone()
                },
            }));
        }
    }
    // Not a configuration this node has held. Newer (a commit this node missed, or a
    // full restart) when written by a later transaction than any it knows: its
    // cluster-wide seq (not stored on the disks) is then above every seq known here.
    // Older otherwise: seq 0, so the core keeps (and rewrites) its own.
    let newest_known = known.iter().map(|(t, _)| *t).max().unwrap_or_default();
    let floor = known.iter().map(|(_, k)| k.seq).max().unwrap_or(0);
    let seq = if txn > newest_known || floor == 0 {
        groups.iter().map(|g| g.seq).sum::<u64>().max(floor + 1)
    } else {
        log::warn!(
            "the disks hold an older configuration (transaction {txn}) than this node's (transaction {newest_known})"
        );
        0
    };
    Ok(Some(DiskRecord {
        txn,
        config: SharedConfig {
            seq,
            groups,
            updates: Vec::new(),
        },
    }))
}

/// Carries out a change's disk updates, written by transaction `txn`.
pub fn write_updates(updates: &[DiskUpdate], txn: u64) -> Result<(), String> {
    let mut errors = Vec::new();
    for u in updates {
        match u {
            DiskUpdate::WriteConfig(dg) => match ondisk::write_config(&dg.disk_paths(), dg, txn) {
                Ok(report) => {
                    for (path, e) in &report.failed {
                        log::error!(
                            "disk group {}: seq {} not written to {}: {e}",
                            dg.name,
                            dg.seq,
                            path.display()
                        );
                    }
                }
                Err(e) => errors.push(e.to_string()),
            },
            DiskUpdate::Release(disk) => {
                if let Err(e) = ondisk::release_disk(Path::new(&disk.path)) {
                    log::error!("disk {}: cannot release it: {e}", disk.name);
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Writes the core's record ([`crate::core::Action::WriteDisks`]).
pub fn write_record(record: &DiskRecord<SharedConfig>) -> Result<(), String> {
    write_updates(&record.config.updates, disk_txn(record.txn))
}

/// A slave's (and the master's) local checks of a change: no private disk group of
/// the same name; every new disk opens here and carries the expected label.
pub fn local_check(change: &Change, private: &ClusterConfig) -> Result<(), String> {
    if let Change::DgCreate {
        dg, shared: true, ..
    } = change
    {
        if private.disk_group(dg).is_some() {
            return Err(format!("disk group {dg} exists as a private disk group"));
        }
    }
    if let Change::DgImport {
        config,
        shared: true,
        ..
    } = change
    {
        if private.disk_group(&config.name).is_some() {
            return Err(format!(
                "disk group {} exists as a private disk group",
                config.name
            ));
        }
    }
    for d in change.new_disks() {
        check_disk(d)?;
    }
    Ok(())
}

/// Opens a disk and checks its label is the one the configuration records.
pub fn check_disk(d: &Disk) -> Result<(), String> {
    let label = ondisk::read_label(Path::new(&d.path))
        .map_err(|e| format!("cannot find disk {}: {e}", d.name))?;
    if label.disk_id != d.id {
        return Err(format!(
            "cannot find disk {}: {} holds disk {} (id {}), not id {}",
            d.name, d.path, label.disk_name, label.disk_id, d.id
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_disk_is_reported_by_name() {
        let d = Disk {
            name: "d9".into(),
            id: "1".repeat(32),
            path: "/nonexistent/plexd/d9.img".into(),
            size_bytes: 0,
            public_offset_bytes: 0,
            public_len_bytes: 0,
        };
        let e = check_disk(&d).unwrap_err();
        assert!(e.starts_with("cannot find disk d9"), "{e}");
    }

    #[test]
    fn shared_create_over_private_group_is_refused() {
        let mut private = ClusterConfig::default();
        private.disk_groups.push(DiskGroupConfig {
            name: "dg1".into(),
            id: "a".repeat(32),
            shared: false,
            owner_id: "b".into(),
            seq: 1,
            disks: Vec::new(),
            volumes: Vec::new(),
        });
        let change = Change::DgCreate {
            dg: "dg1".into(),
            dg_id: "b".repeat(32),
            shared: true,
            owner_id: "c".into(),
            disks: Vec::new(),
        };
        assert_eq!(
            local_check(&change, &private).unwrap_err(),
            "disk group dg1 exists as a private disk group"
        );
    }
}
