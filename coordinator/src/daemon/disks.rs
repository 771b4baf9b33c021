//! Disk work of the daemon, over `ondisk`: finding disks by media name, reading the
//! shared and private disk groups, writing a change's disk updates, and the local
//! checks of a transaction.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::core::{DiskRecord, ErrorKind, RequestError, TxnId};
use crate::model::{Change, ClusterConfig, Disk, DiskGroupConfig, DiskUpdate};
use crate::ondisk::{self, Label};

use super::ctl::DiskOut;
use super::model::{core_txn, disk_txn, SharedConfig};

/// Where this node finds each disk, by the disk id in its label: a disk group records
/// the path a disk had on the node that added it, but each node finds the disk by id
/// on its own `disk_paths` (as VxVM does), so `/dev/sdb` on one node may be
/// `/dev/sdc` on another.
#[derive(Debug, Clone, Default)]
pub struct LocalDisks(BTreeMap<String, Vec<PathBuf>>);

impl LocalDisks {
    /// Reads the labels of `files` (the node's `disk_paths`).
    pub fn scan(files: &[PathBuf]) -> LocalDisks {
        let mut map: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        for (path, label) in scan(files) {
            if let Ok(l) = label {
                map.entry(l.disk_id).or_default().push(path);
            }
        }
        LocalDisks(map)
    }

    /// The path of disk `d` on this node: the recorded path when a file of that id
    /// is there, else the first file whose label carries its id, else the recorded
    /// path (whose check then says what is wrong).
    pub fn path_of(&self, d: &Disk) -> PathBuf {
        let recorded = PathBuf::from(&d.path);
        match self.0.get(&d.id) {
            Some(paths) if paths.contains(&recorded) => recorded,
            Some(paths) => paths.first().cloned().unwrap_or(recorded),
            None => recorded,
        }
    }

    /// `g` with each disk's path as this node finds it (for this node's own use: the
    /// data plane and the disk writes; the configuration keeps the recorded paths).
    pub fn localize(&self, g: &DiskGroupConfig) -> DiskGroupConfig {
        let mut local = g.clone();
        for d in &mut local.disks {
            d.path = self.path_of(d).display().to_string();
        }
        local
    }

    /// The paths of `g`'s disks on this node, in the order of `g.disks` (what
    /// `self.localize(g).disk_paths()` gives, without copying the group).
    pub fn disk_paths(&self, g: &DiskGroupConfig) -> Vec<PathBuf> {
        g.disks.iter().map(|d| self.path_of(d)).collect()
    }
}

/// Most disks whose repairs are counted (one entry per disk id; more are not counted).
pub const MAX_REPAIR_ENTRIES: usize = 4096;

/// Label and configuration copies this node's plexd repaired, by disk id (`disk
/// list`). Owned by the daemon: several coordinators can live in one process.
#[derive(Debug, Default)]
pub struct Repairs(BTreeMap<String, u64>);

impl Repairs {
    /// How many label or slot copies were repaired on disk `disk_id`.
    pub fn of(&self, disk_id: &str) -> u64 {
        self.0.get(disk_id).copied().unwrap_or(0)
    }

    fn count(&mut self, disk_id: &str) {
        if let Some(n) = self.0.get_mut(disk_id) {
            *n += 1;
        } else if self.0.len() < MAX_REPAIR_ENTRIES {
            self.0.insert(disk_id.to_string(), 1);
        }
    }
}

/// Disk groups whose last written configuration is remembered, at most (more: the
/// memory starts again empty, and the next writes validate whole).
pub const MAX_WRITTEN_GROUPS: usize = 4096;

/// The configuration of each disk group this node last wrote, by disk group id: the
/// next write of the group validates only what changed since
/// ([`ondisk::write_config_after`]). The groups share their volumes with the
/// configurations they came from.
#[derive(Debug, Default)]
pub struct Written(BTreeMap<String, (Arc<DiskGroupConfig>, u64)>);

impl Written {
    /// `g` as transaction `txn` wrote it (a disk whose newest configuration that is
    /// takes the next change as a change log record).
    fn remember(&mut self, g: &Arc<DiskGroupConfig>, txn: u64) {
        if self.0.len() >= MAX_WRITTEN_GROUPS && !self.0.contains_key(&g.id) {
            self.0.clear();
        }
        self.0.insert(g.id.clone(), (Arc::clone(g), txn));
    }
}

/// Every disk file with its label (or the error reading it).
pub fn scan(files: &[PathBuf]) -> Vec<(PathBuf, Result<Label, ondisk::OnDiskError>)> {
    ondisk::scan(files)
}

/// A disk group of this cluster (or private to this node) whose configuration cannot
/// be read from any of its disks: every slot is damaged. It is shown as failed and
/// keeps its name and disks until an operator gives it up (`dg destroy --force`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedGroup {
    /// Name, from the labels.
    pub name: String,
    /// Disk group id, from the labels.
    pub id: String,
    /// Shared (cluster) or private (this node).
    pub shared: bool,
    /// Why no configuration could be read.
    pub reason: String,
    /// Its disks, by the labels: media name and path on this node.
    pub disks: Vec<(String, PathBuf)>,
}

impl FailedGroup {
    /// One line for `cluster status` and logs: `dg1: <reason>`.
    pub fn line(&self) -> String {
        format!("{}: {}", self.name, self.reason)
    }
}

/// The failed disk groups on `files` that belong to cluster `cluster_id` (shared) or
/// to host `host_id` (private), by the owner their disks' labels name.
pub fn failed_groups(files: &[PathBuf], cluster_id: &str, host_id: &str) -> Vec<FailedGroup> {
    let labels: Vec<(PathBuf, Label)> = scan(files)
        .into_iter()
        .filter_map(|(p, l)| l.ok().map(|l| (p, l)))
        .collect();
    let mut out = Vec::new();
    for g in ondisk::discover(files).groups {
        let Err(e) = g.config else { continue };
        let members: Vec<&(PathBuf, Label)> = labels
            .iter()
            .filter(|(_, l)| l.disk_group.as_ref().is_some_and(|lg| lg.id == g.dg_id))
            .collect();
        let Some(owner) = members.first().and_then(|(_, l)| l.disk_group.clone()) else {
            continue;
        };
        let ours = if owner.shared {
            owner.owner_id == cluster_id
        } else {
            owner.owner_id == host_id
        };
        if !ours {
            continue;
        }
        out.push(FailedGroup {
            name: g.dg_name,
            id: g.dg_id,
            shared: owner.shared,
            reason: format!(
                "failed: no readable configuration copy on its {} disks ({e}); to give the group up and free its disks: plexctl dg destroy {} --force",
                members.len(),
                owner.name
            ),
            disks: members
                .iter()
                .map(|(p, l)| (l.disk_name.clone(), p.clone()))
                .collect(),
        });
    }
    out
}

/// The operator's way out of a failed group (`dg destroy --force` of it): releases
/// every disk whose label names it (slots and disk group fields cleared). Errors
/// name the disk.
pub fn release_failed(g: &FailedGroup, node: &str) -> Result<(), String> {
    let mut errors = Vec::new();
    for (name, path) in &g.disks {
        let expect = ondisk::ReleaseExpect {
            disk_id: None,
            dg_id: Some(&g.id),
        };
        match ondisk::release_disk(path, &expect) {
            Ok(_) => log::warn!(
                "node {node}: failed disk group {}: disk {name} ({}) released by dg destroy --force",
                g.name,
                path.display()
            ),
            Err(e) => errors.push(format!("disk {name}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "node {node}: failed disk group {}: cannot release every disk: {}",
            g.name,
            errors.join("; ")
        ))
    }
}

/// `disk init` (forced or not) of the disk at `path`: refused when a disk group this
/// node knows (imported `groups`, `failed` ones) holds it, by path or by the disk id
/// its label carries, even when the label itself is damaged. The label's own claim
/// (a group imported on any host) is checked by `ondisk::init_disk`.
pub fn check_unclaimed<'a>(
    path: &Path,
    name: &str,
    groups: impl IntoIterator<Item = &'a DiskGroupConfig>,
    failed: &[FailedGroup],
) -> Result<(), String> {
    let label_id = ondisk::read_label(path).ok().map(|l| l.disk_id);
    let same = |p: &str| Path::new(p) == path || same_file(Path::new(p), path);
    for g in groups {
        if let Some(d) = g
            .disks
            .iter()
            .find(|d| same(&d.path) || label_id.as_deref() == Some(d.id.as_str()))
        {
            return Err(format!(
                "disk {name}: {} is disk {} of disk group {}; take it out of the group first (plexctl dg rm-disk {} {}), or destroy the group (plexctl dg destroy {})",
                path.display(),
                d.name,
                g.name,
                g.name,
                d.name,
                g.name
            ));
        }
    }
    if let Some(f) = failed
        .iter()
        .find(|f| f.disks.iter().any(|(_, p)| p == path || same_file(p, path)))
    {
        return Err(format!(
            "disk {name}: {} is a disk of disk group {}, which is {}",
            path.display(),
            f.name,
            f.reason
        ));
    }
    Ok(())
}

/// Whether two paths name the same file (device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// `disk list`; disks of a `failed` group say so.
pub fn list(files: &[PathBuf], failed: &[FailedGroup], repairs: &Repairs) -> Vec<DiskOut> {
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
                state: match &l.disk_group {
                    None => "free".into(),
                    Some(g) => match failed.iter().find(|f| f.id == g.id) {
                        Some(f) => f.reason.clone(),
                        None if g.owner_id.is_empty() => "deported".into(),
                        None => "online".into(),
                    },
                },
                id: l.disk_id.clone(),
                repairs: repairs.of(&l.disk_id),
            },
            Err(e) => DiskOut {
                name: "-".into(),
                path: path.display().to_string(),
                size: std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0),
                dg: String::new(),
                state: format!("error: {e}"),
                id: String::new(),
                repairs: 0,
            },
        })
        .collect()
}

/// The free (in no disk group) initialised disk called `name`.
pub fn find_free_disk(files: &[PathBuf], name: &str, node: &str) -> Result<Disk, String> {
    let labelled: Vec<(PathBuf, Label)> = scan(files)
        .into_iter()
        .filter_map(|(p, l)| l.ok().map(|l| (p, l)))
        .filter(|(_, l)| l.disk_name == name)
        .collect();
    let found: Vec<Disk> = labelled
        .iter()
        .filter(|(_, l)| l.disk_group.is_none())
        .map(|(p, l)| l.disk_record(p))
        .collect();
    match found.len() {
        1 => Ok(found.into_iter().next().unwrap_or_else(|| unreachable!())),
        0 => match labelled.iter().find_map(|(p, l)| l.disk_group.as_ref().map(|g| (p, g))) {
            // The disk exists but a group holds it: never suggest `disk init`.
            Some((path, g)) => Err(format!(
                "node {node}: disk {name} ({}) is in disk group {}{}: take it out of that group first (plexctl dg rm-disk {} {name})",
                path.display(),
                g.name,
                if g.owner_id.is_empty() { " (deported)" } else { "" },
                g.name
            )),
            None => Err(format!(
                "node {node}: disk {name}: no free initialised disk of that name on the disk paths (plexctl disk init PATH --name {name})"
            )),
        },
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
    let mut groups: Vec<Arc<DiskGroupConfig>> =
        shared.into_iter().map(|(g, _)| Arc::new(g)).collect();
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    let txn = core_txn(txn);
    for (t, k) in known.iter().rev() {
        if k.groups == groups {
            return Ok(Some(DiskRecord {
                txn: *t,
                config: SharedConfig {
                    updates: Arc::default(),
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
    // The cluster's open node starts: every group holds a copy; their union, so a
    // group whose last write missed a change of the set loses no start.
    let mut open_nodes: Vec<_> = groups
        .iter()
        .flat_map(|g| g.open_nodes.iter().copied())
        .collect();
    open_nodes.sort_unstable();
    open_nodes.dedup();
    Ok(Some(DiskRecord {
        txn,
        config: SharedConfig {
            seq,
            groups,
            open_nodes,
            updates: Arc::default(),
        },
    }))
}

/// Carries out a change's disk updates, written by transaction `txn` on node `node`,
/// finding the disks by id on `files` (the node's `disk_paths`). Every damaged copy a
/// write replaces is logged (node, disk, what) and counted in `repairs`; a group
/// written before (`written`) is validated only where it changed since.
pub fn write_updates(
    updates: &[DiskUpdate],
    txn: u64,
    node: &str,
    files: &[PathBuf],
    (repairs, written): (&mut Repairs, &mut Written),
    deadline: Option<std::time::Instant>,
) -> Result<(), String> {
    let mut errors = Vec::new();
    let local = LocalDisks::scan(files);
    for u in updates {
        match u {
            DiskUpdate::WriteConfig(dg) => {
                let paths = local.disk_paths(dg);
                let before = written.0.get(&dg.id).map(|(g, t)| (&**g, *t));
                match ondisk::write_config_after(&paths, dg, before, txn, deadline) {
                    Ok(report) => {
                        written.remember(dg, txn);
                        for (path, disk_id, what) in &report.repaired {
                            let name = dg
                                .disks
                                .iter()
                                .find(|d| d.id == *disk_id)
                                .map(|d| d.name.as_str())
                                .unwrap_or("?");
                            log::warn!(
                            "node {node}: disk group {}: disk {name} ({}): repaired a damaged {what}",
                            dg.name,
                            path.display()
                        );
                            repairs.count(disk_id);
                        }
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
                }
            }
            DiskUpdate::Release(disk) => {
                let expect = ondisk::ReleaseExpect {
                    disk_id: Some(&disk.id),
                    dg_id: None,
                };
                if let Err(e) = ondisk::release_disk(&local.path_of(disk), &expect) {
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

/// Writes the core's record ([`crate::core::Action::WriteDisks`]) on node `node`,
/// whose disks are `files`.
/// No disk is written after `deadline` ([`crate::core::WRITE_DEADLINE`]).
pub fn write_record(
    record: &DiskRecord<SharedConfig>,
    node: &str,
    files: &[PathBuf],
    memory: (&mut Repairs, &mut Written),
    deadline: std::time::Instant,
) -> Result<(), String> {
    write_updates(
        &record.config.updates,
        disk_txn(record.txn),
        node,
        files,
        memory,
        Some(deadline),
    )
}

/// A slave's (and the master's) local checks of a change: no private disk group of
/// the same name ([`check_private_names`]); every new disk is found here (by id on
/// `files`, read only when the change adds disks) and opens. The refusal does not
/// name the node (the caller places it).
pub fn local_check(
    change: &Change,
    private: &ClusterConfig,
    files: &[PathBuf],
) -> Result<(), RequestError> {
    check_private_names(change, private)?;
    let new = change.new_disks();
    if new.is_empty() {
        return Ok(());
    }
    let local = LocalDisks::scan(files);
    for d in new {
        check_disk(d, &local).map_err(|e| RequestError::unplaced(ErrorKind::Refused, e))?;
    }
    Ok(())
}

/// The part of [`local_check`] that reads nothing: a shared disk group a change
/// creates or imports is not also one of this node's `private` groups.
pub fn check_private_names(change: &Change, private: &ClusterConfig) -> Result<(), RequestError> {
    let exists = |dg: &str| {
        let e = format!("disk group {dg} exists as a private disk group");
        RequestError::unplaced(ErrorKind::Exists, e)
    };
    let name = match change {
        Change::DgCreate {
            dg, shared: true, ..
        } => dg.as_str(),
        Change::DgImport {
            config,
            shared: true,
            ..
        } => config.name.as_str(),
        _ => return Ok(()),
    };
    if private.disk_group(name).is_some() {
        return Err(exists(name));
    }
    Ok(())
}

/// Finds a disk on this node (by id, see [`LocalDisks`]), opens it and checks its
/// label is the one the configuration records.
pub fn check_disk(d: &Disk, local: &LocalDisks) -> Result<(), String> {
    let path = local.path_of(d);
    let label =
        ondisk::read_label(&path).map_err(|e| format!("cannot find disk {}: {e}", d.name))?;
    if label.disk_id != d.id {
        return Err(format!(
            "cannot find disk {}: {} holds disk {} (id {}), not id {}, and no disk of that id is on the disk paths",
            d.name,
            path.display(),
            label.disk_name,
            label.disk_id,
            d.id
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
        let e = check_disk(&d, &LocalDisks::default()).unwrap_err();
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
            open_nodes: Vec::new(),
            detach_policy: Default::default(),
        });
        let change = Change::DgCreate {
            dg: "dg1".into(),
            dg_id: "b".repeat(32),
            shared: true,
            owner_id: "c".into(),
            disks: Vec::new(),
        };
        let e = local_check(&change, &private, &[]).unwrap_err();
        assert_eq!(e.message, "disk group dg1 exists as a private disk group");
        assert_eq!(e.kind, ErrorKind::Exists);
    }
}
