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

    /// A node that finds the disks of these ids (at made-up paths).
    #[cfg(test)]
    pub fn of_ids(ids: &[&str]) -> LocalDisks {
        let found = ids
            .iter()
            .map(|id| (id.to_string(), vec![PathBuf::from(format!("/dev/{id}"))]));
        LocalDisks(found.collect())
    }

    /// Whether a file of disk `d`'s id is on this node's disk paths.
    pub fn finds(&self, d: &Disk) -> bool {
        self.0.contains_key(&d.id)
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

    /// The paths on this node of `g`'s disks that take its configuration writes
    /// (not those recorded failed), in the order of `g.disks`.
    pub fn disk_paths(&self, g: &DiskGroupConfig) -> Vec<PathBuf> {
        g.disks
            .iter()
            .filter(|d| !d.failed)
            .map(|d| self.path_of(d))
            .collect()
    }
}

/// How long [`DiskFinder`] trusts the labels it read while nothing it can see
/// changed: a label rewritten in place (same path, same file or device) by another
/// host or tool is noticed at most this late.
pub const LABELS_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(10);

/// What identifies the file or device at a path without reading it: a path that
/// now names another file or device (a device renamed, a file replaced) has
/// another identity. The inode's birth time is part of it (a file or device node
/// made again may get the inode number just freed, and a disk put where another
/// was, the same device number), and a regular file's length (a device's node
/// says 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    dev: u64,
    ino: u64,
    rdev: u64,
    len: u64,
    born: Option<std::time::SystemTime>,
}

impl FileId {
    fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
            rdev: m.rdev(),
            len: m.len(),
            born: m.created().ok(),
        })
    }
}

/// [`LocalDisks`] kept between transactions by the one thread that finds disks for
/// the data plane and the disk writes (the driver). Reading every label on the
/// node's `disk_paths` is O(disks the host sees), and on a block device each read
/// goes to the device (its cached pages are dropped first): done per transaction on
/// every node, it would make a small change cost in proportion to the host's disks. The
/// labels are read again only when:
/// - a matched path may name another file or device now: a file was created,
///   removed or renamed in the directory of a matched path or of what it resolves
///   to (a symlink's target), as an inotify watch on those directories tells (one
///   `read` that finds nothing: no glob, no `stat`); where inotify is refused, when
///   the matched list is not the same or a path names another file or device
///   ([`FileId`], one `stat` each);
/// - a disk the caller looks for is not among the labels read (a disk added or
///   imported since, whose label this node has not read);
/// - the labels are [`LABELS_MAX_AGE`] old;
/// - [`DiskFinder::forget`] was called: a disk write failed on a disk (perhaps
///   because its path now holds another disk).
///
/// A disk write reads the label of the disk it writes and refuses another disk's, so
/// a path kept too long fails a write (and the labels are read again); it never
/// writes to the wrong disk.
#[derive(Debug)]
pub struct DiskFinder {
    seen: Option<Seen>,
    scans: u64,
    /// Watch the directories (false: compare identities only).
    watching: bool,
}

impl Default for DiskFinder {
    fn default() -> DiskFinder {
        DiskFinder {
            seen: None,
            scans: 0,
            watching: true,
        }
    }
}

#[derive(Debug)]
struct Seen {
    sentinel: Sentinel,
    local: LocalDisks,
    at: std::time::Instant,
}

/// How a finder tells that a matched path may name another file or device now.
#[derive(Debug)]
enum Sentinel {
    /// An inotify watch on the directories of the matched paths.
    Watch(DirWatch),
    /// The matched paths and their identities, compared with the paths matched
    /// now (no watch).
    Identities(Vec<(PathBuf, Option<FileId>)>),
}

impl Sentinel {
    /// Made before the labels of `files` are read: a change while they are read is
    /// seen next time.
    fn new(files: &[PathBuf], watching: bool) -> Sentinel {
        match watching.then(|| DirWatch::new(files)).flatten() {
            Some(w) => Sentinel::Watch(w),
            None => Sentinel::Identities(identities(files)),
        }
    }

    /// Nothing that names a disk changed (`files`: the paths matched now).
    fn unchanged(&self, files: impl Fn() -> Vec<PathBuf>) -> bool {
        match self {
            Sentinel::Watch(w) => w.quiet(),
            Sentinel::Identities(seen) => *seen == identities(&files()),
        }
    }
}

/// An inotify watch on the directories of a list of paths (and of what they
/// resolve to): any entry created, removed or renamed in them, or a directory
/// itself removed or moved, is a change.
#[derive(Debug)]
struct DirWatch(nix::sys::inotify::Inotify);

impl DirWatch {
    /// None when inotify refuses (no instance or watch left): the caller compares
    /// identities instead.
    fn new(files: &[PathBuf]) -> Option<DirWatch> {
        use nix::sys::inotify::{AddWatchFlags as F, InitFlags, Inotify};
        let mut dirs: Vec<PathBuf> = files
            .iter()
            .flat_map(|p| [Some(p.clone()), std::fs::canonicalize(p).ok()])
            .flatten()
            .filter_map(|p| p.parent().map(Path::to_path_buf))
            .collect();
        dirs.sort();
        dirs.dedup();
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
        let mask = F::IN_CREATE
            | F::IN_DELETE
            | F::IN_MOVED_FROM
            | F::IN_MOVED_TO
            | F::IN_DELETE_SELF
            | F::IN_MOVE_SELF;
        for dir in &dirs {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            if let Err(e) = inotify.add_watch(dir, mask) {
                log::debug!(
                    "cannot watch {} ({e}): disk paths are compared by stat",
                    dir.display()
                );
                return None;
            }
        }
        Some(DirWatch(inotify))
    }

    /// Nothing changed since the watch was made (an overflow or an error is a
    /// change).
    fn quiet(&self) -> bool {
        matches!(self.0.read_events(), Err(nix::errno::Errno::EAGAIN))
    }
}

fn identities(files: &[PathBuf]) -> Vec<(PathBuf, Option<FileId>)> {
    files.iter().map(|p| (p.clone(), FileId::of(p))).collect()
}

impl DiskFinder {
    /// A finder that compares identities only (no inotify watch).
    pub fn without_watch() -> DiskFinder {
        DiskFinder {
            watching: false,
            ..Default::default()
        }
    }

    /// Where this node finds the disks of `groups`, from `files` (lists the node's
    /// `disk_paths` as matched now; not called when a watch says nothing changed):
    /// the labels read before when they can still be trusted, else read again.
    pub fn locate<'a>(
        &mut self,
        files: impl Fn() -> Vec<PathBuf>,
        groups: impl IntoIterator<Item = &'a DiskGroupConfig>,
        now: std::time::Instant,
    ) -> &LocalDisks {
        let fresh = self.seen.as_ref().is_some_and(|s| {
            now.saturating_duration_since(s.at) < LABELS_MAX_AGE
                && groups
                    .into_iter()
                    .flat_map(|g| g.disks.iter())
                    .all(|d| s.local.0.contains_key(&d.id))
                && s.sentinel.unchanged(&files)
        });
        if !fresh {
            let files = files();
            let sentinel = Sentinel::new(&files, self.watching);
            self.scans += 1;
            log::debug!(
                "disk labels on {} paths read again ({} times)",
                files.len(),
                self.scans
            );
            self.seen = Some(Seen {
                sentinel,
                local: LocalDisks::scan(&files),
                at: now,
            });
        }
        &self.seen.as_ref().expect("set above").local
    }

    /// The next [`DiskFinder::locate`] reads the labels again.
    pub fn forget(&mut self) {
        self.seen = None;
    }

    /// After [`write_updates`] to where [`DiskFinder::locate`] said: a disk not
    /// written (perhaps its path holds another disk now) makes the next look read
    /// the labels again.
    pub fn written(&mut self, result: &Result<Wrote, String>) {
        if !matches!(result, Ok(w) if w.disks_failed == 0) {
            self.forget();
        }
    }

    /// How many times the labels were read.
    pub fn scans(&self) -> u64 {
        self.scans
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

/// `disk list`; disks of a `failed` group say so, and so do the disks whose ids
/// `recorded_failed` holds (`dg fail-disk`).
pub fn list(
    files: &[PathBuf],
    (failed, recorded_failed): (&[FailedGroup], &std::collections::BTreeSet<&str>),
    repairs: &Repairs,
) -> Vec<DiskOut> {
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
                        None if recorded_failed.contains(l.disk_id.as_str()) => {
                            "failed: recorded failed (plexctl dg fail-disk)".into()
                        }
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
                if let Some(warning) = read.missing_disks_warning() {
                    log::warn!("node {host_id}: {warning}");
                }
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

/// Why this node must not take a join offer: the disks it finds on `files` hold a
/// newer configuration of one of cluster `cluster_id`'s shared groups than the
/// offer (`offered`, committed by transaction `offered_txn`): a higher seq of a
/// group it holds, or a group it lacks written by a later transaction. The master
/// read the disks without the ones that took those writes (a disk path missing on
/// that node), and a join would carry its older copy on (docs/ONDISK.md, "What a
/// disk that misses a write can lose"). No configuration write runs during a join,
/// so the offer's copy of a group is on a disk the offer names (checked first), or
/// older copies are where its write reached no disk; either way the read drops a
/// stale lineage's copy against a newer epoch's and never takes it for a newer
/// one. Names this node (`node`); none when nothing is newer.
pub fn newer_than_offered(
    files: &[PathBuf],
    cluster_id: &str,
    node: &str,
    offered: &SharedConfig,
    offered_txn: TxnId,
) -> Option<String> {
    let offered_txn = disk_txn(offered_txn);
    for g in ondisk::discover(files).groups {
        let Ok(read) = g.config else {
            continue;
        };
        let c = &read.config;
        if !c.shared || c.owner_id != cluster_id {
            continue;
        }
        let than = match offered.groups.iter().find(|o| o.id == c.id) {
            Some(o) if read.seq > o.seq => format!("the offered seq {}", o.seq),
            None if read.txn_id > offered_txn => format!(
                "the offered configuration (transaction {}), which lacks the group",
                core_txn(offered_txn)
            ),
            _ => continue,
        };
        let holders = read.holders();
        return Some(format!(
            "disk group {}: disk(s) {} on node {node} hold configuration seq {} (transaction {}), newer than {than}: the master read the disks without them",
            c.name,
            holders.join(", "),
            read.seq,
            core_txn(read.txn_id),
        ));
    }
    None
}

/// What [`write_updates`] did, beyond the errors it returns.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Wrote {
    /// Disks a group was written to but not this one (each logged with its reason).
    pub disks_failed: usize,
}

/// Carries out a change's disk updates, written by transaction `txn` on node `node`,
/// finding the disks by id where `local` says. Every damaged copy a write replaces
/// is logged (node, disk, what) and counted in `repairs`; a group written before
/// (`written`) is validated only where it changed since.
pub fn write_updates(
    updates: &[DiskUpdate],
    txn: u64,
    node: &str,
    local: &LocalDisks,
    (repairs, written): (&mut Repairs, &mut Written),
    deadline: Option<std::time::Instant>,
) -> Result<Wrote, String> {
    let mut errors = Vec::new();
    let mut wrote = Wrote::default();
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
                        wrote.disks_failed += report.failed.len();
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
        Ok(wrote)
    } else {
        Err(errors.join("; "))
    }
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
    use crate::model::VolumeLayout;
    use std::time::{Duration, Instant};

    /// A directory of disk files, removed on drop.
    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            let dir =
                std::env::temp_dir().join(format!("plexd-disks-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        /// A new sparse disk file `name`, initialised (a new file: another inode
        /// than any file the path named before).
        fn disk(&self, name: &str) -> (PathBuf, Label) {
            let path = self.0.join(format!("{name}.img"));
            let _ = std::fs::remove_file(&path);
            std::fs::File::create(&path)
                .unwrap()
                .set_len(64 << 20)
                .unwrap();
            let label = ondisk::init_disk(&path, name, Default::default()).unwrap();
            (path, label)
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Shared group `dg1` over `disks`, with one mirrored volume.
    fn group(disks: &[(PathBuf, Label)]) -> DiskGroupConfig {
        let c = ClusterConfig::default()
            .apply(&Change::DgCreate {
                dg: "dg1".into(),
                dg_id: crate::model::new_id(),
                shared: true,
                owner_id: "cluster-1".into(),
                disks: disks.iter().map(|(p, l)| l.disk_record(p)).collect(),
            })
            .and_then(|c| {
                c.apply(&Change::VolCreate {
                    dg: "dg1".into(),
                    volume: "vol1".into(),
                    size_bytes: 1 << 20,
                    layout: VolumeLayout::Mirror { mirrors: 2 },
                    log: Default::default(),
                    disks: Vec::new(),
                })
            })
            .unwrap();
        c.disk_groups[0].clone()
    }

    #[test]
    fn the_finder_reads_the_labels_again_only_when_something_it_can_see_changed() {
        reads_again_only_on_a_change(DiskFinder::default(), "watch");
    }

    #[test]
    fn the_finder_without_a_watch_reads_the_labels_again_only_when_an_identity_changed() {
        reads_again_only_on_a_change(DiskFinder::without_watch(), "stat");
    }

    fn reads_again_only_on_a_change(mut f: DiskFinder, tag: &str) {
        let dir = Dir::new(tag);
        let a = dir.disk("a");
        let b = dir.disk("b");
        let files = vec![a.0.clone(), b.0.clone()];
        let g = group(&[a.clone(), b.clone()]);
        let t0 = Instant::now();
        assert_eq!(f.locate(|| files.clone(), [&g], t0).disk_paths(&g), files);
        assert_eq!(f.scans(), 1);
        // Nothing changed: the labels read before.
        f.locate(|| files.clone(), [&g], t0 + Duration::from_secs(1));
        assert_eq!(f.scans(), 1);
        // A disk file more matched by disk_paths.
        let c = dir.disk("c");
        let mut more = files.clone();
        more.push(c.0.clone());
        f.locate(|| more.clone(), [&g], t0);
        assert_eq!(f.scans(), 2);
        f.locate(|| more.clone(), [&g], t0);
        assert_eq!(f.scans(), 2);
        // Two paths that now name each other's file (devices renamed): the same
        // paths, the same disks, each somewhere else.
        let tmp = dir.0.join("swap");
        std::fs::rename(&a.0, &tmp).unwrap();
        std::fs::rename(&b.0, &a.0).unwrap();
        std::fs::rename(&tmp, &b.0).unwrap();
        let found = f.locate(|| more.clone(), [&g], t0).disk_paths(&g);
        assert_eq!(found, vec![b.0.clone(), a.0.clone()]);
        assert_eq!(f.scans(), 3);
        std::fs::rename(&a.0, &tmp).unwrap();
        std::fs::rename(&b.0, &a.0).unwrap();
        std::fs::rename(&tmp, &b.0).unwrap();
        f.locate(|| more.clone(), [&g], t0);
        assert_eq!(f.scans(), 4);
        // A path that now names another file: b's file replaced by a new disk d.
        let d = dir.disk("b");
        assert_ne!(d.1.disk_id, b.1.disk_id);
        let gd = group(&[a.clone(), d.clone()]);
        let found = f.locate(|| more.clone(), [&gd], t0).disk_paths(&gd);
        assert_eq!(found, vec![a.0.clone(), d.0.clone()]);
        assert_eq!(f.scans(), 5);
        // A disk no label names any more (b) is read for on every look, and given
        // its recorded path.
        let found = f.locate(|| more.clone(), [&g], t0).disk_paths(&g);
        assert_eq!(found, vec![a.0.clone(), b.0.clone()]);
        assert_eq!(f.scans(), 6);
        // A disk the caller looks for that was not among the labels read: c
        // initialised again in place (same file, new id) is read for.
        let c2 = ondisk::init_disk(
            &c.0,
            "c2",
            ondisk::InitOptions {
                force: true,
                ..Default::default()
            },
        )
        .unwrap();
        let gc = group(&[a.clone(), (c.0.clone(), c2.clone())]);
        let found = f.locate(|| more.clone(), [&gc], t0).disk_paths(&gc);
        assert_eq!(found, vec![a.0.clone(), c.0.clone()]);
        assert_eq!(f.scans(), 7);
        f.locate(|| more.clone(), [&gc], t0);
        assert_eq!(f.scans(), 7);
        // Old labels, or forgotten: read again.
        f.locate(|| more.clone(), [&gc], t0 + LABELS_MAX_AGE);
        assert_eq!(f.scans(), 8);
        f.forget();
        f.locate(|| more.clone(), [&gc], t0 + LABELS_MAX_AGE);
        assert_eq!(f.scans(), 9);
        // A matched symlink whose target, in another directory, is replaced (a
        // device node made again): the labels are read again, the new disk found
        // at the symlink.
        let targets = Dir::new(&format!("{tag}-targets"));
        let t = targets.disk("t");
        let link = dir.0.join("link.img");
        std::os::unix::fs::symlink(&t.0, &link).unwrap();
        let mut linked = more.clone();
        linked.push(link.clone());
        let gt = group(&[a.clone(), (link.clone(), t.1.clone())]);
        f.locate(|| linked.clone(), [&gt], t0 + LABELS_MAX_AGE);
        assert_eq!(f.scans(), 10);
        f.locate(|| linked.clone(), [&gt], t0 + LABELS_MAX_AGE);
        assert_eq!(f.scans(), 10);
        let t2 = targets.disk("t");
        let gt2 = group(&[a.clone(), (link.clone(), t2.1.clone())]);
        let found = f.locate(|| linked.clone(), [&gt], t0 + LABELS_MAX_AGE);
        assert_eq!(found.path_of(&gt2.disks[1]), link);
        assert_eq!(f.scans(), 11);
    }

    #[test]
    fn a_path_kept_after_its_disk_was_relabelled_fails_the_write_and_is_read_again() {
        let dir = Dir::new("stale");
        let a = dir.disk("a");
        let b = dir.disk("b");
        let files = vec![a.0.clone(), b.0.clone()];
        let g = Arc::new(group(&[a.clone(), b.clone()]));
        let t0 = Instant::now();
        let mut f = DiskFinder::default();
        let mut memory = (Repairs::default(), Written::default());
        let write =
            |f: &mut DiskFinder, memory: &mut (Repairs, Written), g: &Arc<DiskGroupConfig>| {
                let local = f.locate(|| files.clone(), [&**g], t0);
                let memory = (&mut memory.0, &mut memory.1);
                let updates = [DiskUpdate::WriteConfig(Arc::clone(g))];
                let result = write_updates(&updates, 7, "n1", local, memory, None);
                f.written(&result);
                result
            };
        assert_eq!(
            write(&mut f, &mut memory, &g),
            Ok(Wrote { disks_failed: 0 })
        );
        assert_eq!(f.scans(), 1);
        // b's file is given another disk's label in place (same file, as another
        // host's tool would): the finder cannot see that, and still says b is there.
        let x = dir.disk("x");
        let mut label = vec![0u8; 8192];
        std::os::unix::fs::FileExt::read_exact_at(
            &std::fs::File::open(&x.0).unwrap(),
            &mut label,
            0,
        )
        .unwrap();
        std::os::unix::fs::FileExt::write_all_at(
            &std::fs::OpenOptions::new().write(true).open(&b.0).unwrap(),
            &label,
            0,
        )
        .unwrap();
        let mut next = (*g).clone();
        next.seq += 1;
        let next = Arc::new(next);
        // The write reads the label and refuses the other disk: nothing of the group
        // lands on it, and the labels are read again next time.
        assert_eq!(
            write(&mut f, &mut memory, &next),
            Ok(Wrote { disks_failed: 1 })
        );
        assert_eq!(ondisk::read_label(&b.0).unwrap().disk_name, "x");
        let before = f.scans();
        f.locate(|| files.clone(), [&*next], t0);
        assert_eq!(f.scans(), before + 1);
    }

    #[test]
    fn a_join_offer_older_than_a_configuration_on_the_disks_is_refused() {
        let dir = Dir::new("newer");
        let a = dir.disk("a");
        let b = dir.disk("b");
        let files = vec![a.0.clone(), b.0.clone()];
        let t = |view, n| TxnId { view, n };
        let offer = |g: &DiskGroupConfig| SharedConfig {
            seq: 1,
            groups: vec![Arc::new(g.clone())],
            ..Default::default()
        };
        let next = |g: &DiskGroupConfig| DiskGroupConfig {
            seq: g.seq + 1,
            ..g.clone()
        };
        let newer = |offered: &SharedConfig, txn: TxnId| {
            newer_than_offered(&files, "cluster-1", "b", offered, txn)
        };
        let g1 = group(&[a.clone(), b.clone()]);
        ondisk::write_config(&files, &g1, disk_txn(t(3, 1)), None).unwrap();
        // The offer is what the disks hold.
        assert_eq!(newer(&offer(&g1), t(3, 1)), None);
        // The next seq reached disk a only; a master that read disk b alone offers
        // the older copy, whatever transaction its newest group was written by.
        let g2 = next(&g1);
        ondisk::write_config(&files[..1], &g2, disk_txn(t(3, 2)), None).unwrap();
        let want = format!(
            "disk group dg1: disk(s) a on node b hold configuration seq {} (transaction 3.2), newer than the offered seq {}: the master read the disks without them",
            g2.seq, g1.seq
        );
        assert_eq!(newer(&offer(&g1), t(3, 1)).as_deref(), Some(want.as_str()));
        assert_eq!(newer(&offer(&g1), t(3, 9)).as_deref(), Some(want.as_str()));
        assert_eq!(newer(&offer(&g2), t(3, 2)), None);
        // Another cluster's group is not this offer's business.
        assert_eq!(
            newer_than_offered(&files, "cluster-2", "b", &offer(&g1), t(3, 1)),
            None
        );
        // A group the offer lacks: newer when written after the offer's transaction
        // (a group the master did not find), not a leftover of one removed since.
        let none = SharedConfig::default();
        let lacks = newer(&none, t(3, 1)).unwrap();
        assert!(
            lacks.contains(
                "newer than the offered configuration (transaction 3.1), which lacks the group"
            ),
            "{lacks}"
        );
        assert_eq!(newer(&none, t(4, 1)), None);
        // A replaced master (epoch 3) went on to a higher seq on disk a; the new
        // master (epoch 5) wrote its own next seq to disk b only. Its offer is not
        // refused: the read drops the stale lineage.
        let g3 = next(&g2);
        ondisk::write_config(&files[..1], &g3, disk_txn(t(3, 3)), None).unwrap();
        let mut g2_new = g2.clone();
        g2_new.detach_policy = crate::model::DetachPolicy::Local;
        ondisk::write_config(&files[1..], &g2_new, disk_txn(t(5, 1)), None).unwrap();
        assert_eq!(newer(&offer(&g2_new), t(5, 1)), None);
    }

    #[test]
    fn missing_disk_is_reported_by_name() {
        let d = Disk {
            name: "d9".into(),
            id: "1".repeat(32),
            path: "/nonexistent/plexd/d9.img".into(),
            size_bytes: 0,
            public_offset_bytes: 0,
            public_len_bytes: 0,
            failed: false,
            staled: Vec::new(),
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
