//! The invariants of a disk group, checked after every change and on every load.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::*;

/// A subdisk's or a log's extent on its disk: (disk, offset, length, what: the
/// subdisk's name or the log's volume, kind), for the overlap check.
type Extent<'a> = (&'a str, u64, u64, &'a str, ExtentKind);

/// What [`DiskGroupConfig::validate_volumes`] found: object names, log ids, extents
/// (sorted).
type Checked<'a> = (BTreeSet<&'a str>, BTreeSet<u64>, Vec<Extent<'a>>);

/// What holds an [`Extent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum ExtentKind {
    Subdisk,
    Log,
}

/// The extent of sorted, disjoint `extents` that overlaps `e` on its disk, if any.
fn overlapping<'e, 'a>(extents: &'e [Extent<'a>], e: &Extent<'_>) -> Option<&'e Extent<'a>> {
    let end = e.1.saturating_add(e.2);
    // The first extent starting at or after `e` on its disk, and the one before it
    // (the only one starting before `e` that can reach into it: they are disjoint).
    let i = extents.partition_point(|x| (x.0, x.1) < (e.0, e.1));
    let before = i.checked_sub(1).map(|j| &extents[j]);
    let at = extents.get(i);
    before
        .filter(|x| x.0 == e.0 && x.1.saturating_add(x.2) > e.1)
        .or(at.filter(|x| x.0 == e.0 && x.1 < end))
}

/// `subdisk NAME` or `the dirty region log of volume NAME`.
fn extent_name(e: &Extent<'_>) -> String {
    match e.4 {
        ExtentKind::Subdisk => format!("subdisk {}", e.3),
        ExtentKind::Log => format!("the dirty region log of volume {}", e.3),
    }
}

/// Whether `e` lies inside one of sorted, disjoint `extents` on its disk.
fn within(extents: &[Extent<'_>], e: &Extent<'_>) -> bool {
    let i = extents.partition_point(|x| (x.0, x.1) <= (e.0, e.1));
    i.checked_sub(1).is_some_and(|j| {
        let x = &extents[j];
        x.0 == e.0 && x.1.saturating_add(x.2) >= e.1.saturating_add(e.2)
    })
}

/// A volume's extents: its subdisks', its log copies'.
fn volume_extents(v: &Volume) -> impl Iterator<Item = Extent<'_>> {
    let subdisks = v.plexes.iter().flat_map(|p| &p.subdisks).map(|sd| {
        (
            sd.disk.as_str(),
            sd.disk_offset_bytes,
            sd.len_bytes,
            sd.name.as_str(),
            ExtentKind::Subdisk,
        )
    });
    let logs = v.log.iter().flat_map(move |log| {
        log.copies.iter().map(move |c| {
            (
                c.disk.as_str(),
                c.disk_offset_bytes,
                log.len_bytes,
                v.name.as_str(),
                ExtentKind::Log,
            )
        })
    });
    subdisks.chain(logs)
}

/// The volumes of `after` left alone since `before` (the same allocation, each
/// once), the others (changed or new), and the volumes of `before` replaced or
/// removed. Both lists are walked side by side comparing pointers, a change
/// replacing, adding or removing a volume in place; a volume met out of that order
/// is taken as changed (checked whole: never wrong, only slower).
pub(super) fn left_alone<'a, 'b>(
    before: &'b [Arc<Volume>],
    after: &'a [Arc<Volume>],
) -> (Vec<&'a Volume>, Vec<&'a Volume>, Vec<&'b Volume>) {
    let (mut kept, mut changed, mut gone) = (Vec::new(), Vec::new(), Vec::new());
    let mut next = 0;
    for v in after {
        let same = |i: usize| before.get(i).is_some_and(|b| Arc::ptr_eq(b, v));
        if same(next) {
            next += 1;
            kept.push(&**v);
        } else if same(next + 1) {
            gone.push(&*before[next]);
            next += 2;
            kept.push(&**v);
        } else {
            if before.get(next).is_some_and(|b| b.name == v.name) {
                gone.push(&*before[next]);
                next += 1;
            }
            changed.push(&**v);
        }
    }
    gone.extend(before.iter().skip(next).map(|b| &**b));
    (kept, changed, gone)
}

impl DiskGroupConfig {
    /// Checks every invariant: names valid and unique, subdisks inside their disk's
    /// public region and not overlapping, aligned, columns contiguous and long enough,
    /// plexes of a volume (and columns of a stripe) on distinct disks, at least one
    /// disk; dirty region logs inside a public region, overlapping nothing, large
    /// enough for their volume, with distinct log ids; a SYNCING plex's ranges
    /// ascending and inside its volume.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_name("disk group", &self.name)?;
        self.validate_disks()?;
        self.validate_volumes(self.volumes.iter().map(|v| &**v))
            .map(|_| ())
    }

    /// `volumes` each whole, and against each other (names, log ids, extents):
    /// returns their object names, log ids and extents (sorted).
    fn validate_volumes<'a>(
        &'a self,
        volumes: impl IntoIterator<Item = &'a Volume>,
    ) -> Result<Checked<'a>, ConfigError> {
        let mut extents: Vec<Extent<'a>> = Vec::new();
        let mut object_names = BTreeSet::new();
        let mut log_ids = BTreeSet::new();
        for v in volumes {
            self.validate_volume(v, &mut object_names, &mut extents)?;
            if let Some(log) = &v.log {
                self.validate_log(v, log, &mut extents)?;
                if !log_ids.insert(log.log_id) {
                    return self.log_id_twice(v, log);
                }
            }
        }
        extents.sort();
        self.check_disjoint(&extents)?;
        Ok((object_names, log_ids, extents))
    }

    /// Checks what a change that turned `before` (a group that passed [`Self::validate`]
    /// or this) into `self` can have broken, without going over what it left alone:
    /// the same verdict as [`Self::validate`] on `self` (the model's tests and every
    /// debug build's [`apply_dg`] compare them). The changed volumes are those that
    /// are not an allocation of `before` ([`DiskGroupConfig::volumes`] are shared
    /// until changed): each is checked whole, and against the volumes left alone for
    /// the group-wide rules they take part in (unique object names and log ids,
    /// extents that do not overlap). Only what the change added takes part: a name,
    /// log id or extent (or part of one) that a replaced or removed volume of
    /// `before` held cannot meet a volume left alone (`before` was valid), so a
    /// grow checks its new extents and no name. A change of the group's name or
    /// disks is checked whole. Costs the changed volumes plus one pass comparing
    /// pointers and, when the change added anything, one over the others' names
    /// and extents, with no allocation for them.
    pub fn validate_change(&self, before: &DiskGroupConfig) -> Result<(), ConfigError> {
        if self.name != before.name || self.disks != before.disks {
            return self.validate();
        }
        validate_name("disk group", &self.name)?;
        self.validate_disks()?;
        let (kept, changed, gone) = left_alone(&before.volumes, &self.volumes);
        if changed.is_empty() {
            return Ok(());
        }
        let (names, log_ids, extents) = self.added(changed, &gone)?;
        if names.is_empty() && log_ids.is_empty() && extents.is_empty() {
            return Ok(());
        }
        // What was added, looked up in `before`'s index when it has one, less what
        // the volumes the change replaced or removed held (those of `before` that
        // are not kept). A clash found (or a name's hash met), or no index: the
        // walk below, which also names what clashes.
        if let Some(index) = super::index::cached(before) {
            let mut except: Vec<usize> = gone.iter().map(|v| super::index::owner_of(v)).collect();
            except.sort_unstable();
            let clash = names.iter().any(|n| index.may_hold_name(n, &except))
                || log_ids.iter().any(|id| index.holds_log_id(*id, &except))
                || extents
                    .iter()
                    .any(|e| index.overlaps(e.0, e.1, e.2, &except));
            if !clash {
                return Ok(());
            }
        }
        for v in kept {
            self.check_kept(v, &names, &log_ids, &extents)?;
        }
        Ok(())
    }

    /// `changed` volumes each whole and against each other; returns the object
    /// names, log ids and extents (sorted) they hold that `gone` (the volumes of a
    /// valid group they replaced or removed) did not: what the volumes left alone
    /// are to be checked against ([`Self::validate_change`]).
    fn added<'a>(
        &'a self,
        changed: Vec<&'a Volume>,
        gone: &[&Volume],
    ) -> Result<Checked<'a>, ConfigError> {
        let (mut names, mut log_ids, mut extents) = self.validate_volumes(changed)?;
        let mut held: Vec<Extent<'_>> = Vec::new();
        for v in gone {
            for name in v.object_names() {
                names.remove(name);
            }
            if let Some(log) = &v.log {
                log_ids.remove(&log.log_id);
            }
            held.extend(volume_extents(v));
        }
        held.sort();
        extents.retain(|e| !within(&held, e));
        Ok((names, log_ids, extents))
    }

    /// [`Self::validate_change`] against `before` (a group that passed
    /// [`Self::validate`]); every debug build (the tests' plexd among them) checks
    /// its verdict against the whole group's, naming `context` when they disagree.
    pub fn validate_after(
        &self,
        before: &DiskGroupConfig,
        context: impl std::fmt::Debug,
    ) -> Result<(), ConfigError> {
        let verdict = self.validate_change(before);
        #[cfg(debug_assertions)]
        {
            let whole = self.validate();
            assert_eq!(
                verdict.is_ok(),
                whole.is_ok(),
                "validate_change ({verdict:?}) and validate ({whole:?}) disagree on {context:?}"
            );
        }
        #[cfg(not(debug_assertions))]
        let _ = context;
        verdict
    }

    /// A volume a change left alone against what the change added ([`Self::validate_change`]):
    /// none of its names among `names`, its log id not among `log_ids`, none of its
    /// extents overlapping one of `added` (sorted, disjoint).
    fn check_kept(
        &self,
        v: &Volume,
        names: &BTreeSet<&str>,
        log_ids: &BTreeSet<u64>,
        added: &[Extent<'_>],
    ) -> Result<(), ConfigError> {
        if !names.is_empty() {
            for name in v.object_names() {
                if names.contains(name) {
                    return self.invalid(format!("name {name} used twice"));
                }
            }
        }
        if !added.is_empty() {
            // A few extents added (a grow's): their offsets first, no disk name compared.
            let few = added.len() <= 8;
            let near = |e: &Extent<'_>| {
                let end = e.1.saturating_add(e.2);
                !few || added
                    .iter()
                    .any(|a| a.1 < end && e.1 < a.1.saturating_add(a.2))
            };
            for e in volume_extents(v).filter(near) {
                if let Some(other) = overlapping(added, &e) {
                    return self.invalid(format!(
                        "{} and {} overlap on disk {}",
                        extent_name(&e),
                        extent_name(other),
                        e.0
                    ));
                }
            }
        }
        match &v.log {
            Some(log) if log_ids.contains(&log.log_id) => self.log_id_twice(v, log),
            _ => Ok(()),
        }
    }

    /// Sorted `extents` do not overlap.
    fn check_disjoint(&self, extents: &[Extent<'_>]) -> Result<(), ConfigError> {
        for pair in extents.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if a.0 == b.0 && a.1.saturating_add(a.2) > b.1 {
                return self.invalid(format!(
                    "{} and {} overlap on disk {}",
                    extent_name(a),
                    extent_name(b),
                    a.0
                ));
            }
        }
        Ok(())
    }

    fn log_id_twice<T>(&self, v: &Volume, log: &VolumeLog) -> Result<T, ConfigError> {
        self.invalid(format!(
            "volume {}: dirty region log id {} used twice",
            v.name, log.log_id
        ))
    }

    /// A volume's dirty region log: 1..=[`MAX_LOG_COPIES`] copies on distinct disks
    /// of the group, each aligned and inside its public region, [`LOG_SECTIONS`]
    /// sections each tracking the volume's regions; records each copy's extent.
    fn validate_log<'a>(
        &self,
        v: &'a Volume,
        log: &'a VolumeLog,
        extents: &mut Vec<Extent<'a>>,
    ) -> Result<(), ConfigError> {
        let what = || {
            format!(
                "volume {}: dirty region log on disk {}",
                v.name,
                log.disks()
            )
        };
        if log.copies.is_empty() || log.copies.len() > MAX_LOG_COPIES {
            return self.invalid(format!(
                "{}: {} copies (1 to {MAX_LOG_COPIES})",
                what(),
                log.copies.len()
            ));
        }
        if log.section_bytes.checked_mul(LOG_SECTIONS) > Some(log.len_bytes) {
            return self.invalid(format!(
                "{}: {} bytes cannot hold {LOG_SECTIONS} sections of {}",
                what(),
                log.len_bytes,
                log.section_bytes
            ));
        }
        for (i, copy) in log.copies.iter().enumerate() {
            if self.disk_failed(&copy.disk) {
                return self.invalid(format!(
                    "{}: a copy on disk {}, recorded failed",
                    what(),
                    copy.disk
                ));
            }
            if log.copies[..i].iter().any(|c| c.disk == copy.disk) {
                return self.invalid(format!("{}: two copies on disk {}", what(), copy.disk));
            }
            let Some(d) = self.disk(&copy.disk) else {
                return self.invalid(format!("{}: disk {} not in the group", what(), copy.disk));
            };
            let aligned = copy.disk_offset_bytes.is_multiple_of(ALLOC_ALIGN_BYTES)
                && log.len_bytes.is_multiple_of(ALLOC_ALIGN_BYTES)
                && log.section_bytes.is_multiple_of(ALLOC_ALIGN_BYTES)
                && log.section_bytes > 0;
            let inside = copy.disk_offset_bytes >= d.public_offset_bytes
                && copy
                    .disk_offset_bytes
                    .checked_add(log.len_bytes)
                    .is_some_and(|end| end <= d.public_offset_bytes + d.public_len_bytes);
            if !aligned || !inside {
                return self.invalid(format!(
                    "{}: copy on disk {}: extent {}+{} (sections of {}) is unaligned or outside \
                     the disk's public region",
                    what(),
                    copy.disk,
                    copy.disk_offset_bytes,
                    log.len_bytes,
                    log.section_bytes
                ));
            }
            extents.push((
                copy.disk.as_str(),
                copy.disk_offset_bytes,
                log.len_bytes,
                v.name.as_str(),
                ExtentKind::Log,
            ));
        }
        let spec = plexd_target_api::drl::DirtyLogSpec {
            copies: log
                .copies
                .iter()
                .map(|c| plexd_target_api::drl::DrlCopy {
                    bdev: c.disk.clone(),
                    offset_bytes: c.disk_offset_bytes,
                })
                .collect(),
            section_bytes: log.section_bytes,
            node: 1,
            log_id: log.log_id,
            region_bytes: log.region_bytes,
        };
        if let Err(e) = spec.check(v.size_bytes) {
            return self.invalid(format!("volume {}: {e}", v.name));
        }
        Ok(())
    }

    /// A plex's ranges still to copy: only while SYNCING; each non-empty, starting
    /// inside the volume, ascending and disjoint.
    fn validate_resync_ranges(&self, v: &Volume, p: &Plex) -> Result<(), ConfigError> {
        if p.resync_ranges.is_empty() {
            return Ok(());
        }
        if p.state != PlexState::Syncing {
            return self.invalid(format!(
                "plex {}: {} has ranges to resynchronise",
                p.name,
                p.state.as_str()
            ));
        }
        let mut end = 0u64;
        for &(offset, len) in &p.resync_ranges {
            if len == 0 || offset < end || offset >= v.size_bytes {
                return self.invalid(format!(
                    "plex {}: resync range {offset}+{len} is empty, out of order or beyond volume {}'s {} bytes",
                    p.name, v.name, v.size_bytes
                ));
            }
            end = offset.saturating_add(len);
        }
        Ok(())
    }

    /// The error for a broken invariant of this group.
    fn invalid<T>(&self, msg: String) -> Result<T, ConfigError> {
        Err(ConfigError::Invalid(format!(
            "disk group {}: {msg}",
            self.name
        )))
    }

    /// A volume's, plex's or subdisk's name (`kind`): valid, and used by no other
    /// object of the group (`object_names`, to which it is added).
    fn check_object_name<'a>(
        &self,
        kind: &str,
        name: &'a str,
        object_names: &mut BTreeSet<&'a str>,
    ) -> Result<(), ConfigError> {
        validate_name(kind, name)?;
        if !object_names.insert(name) {
            return self.invalid(format!("name {name} used twice"));
        }
        Ok(())
    }

    /// At least one disk; names and ids unique; public regions inside their disks.
    fn validate_disks(&self) -> Result<(), ConfigError> {
        if self.disks.is_empty() {
            return self.invalid("has no disks".into());
        }
        let mut names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for d in &self.disks {
            validate_name("disk", &d.name)?;
            if !names.insert(d.name.as_str()) || !ids.insert(d.id.as_str()) {
                return self.invalid(format!("disk {} (id {}) appears twice", d.name, d.id));
            }
            let end = d.public_offset_bytes.checked_add(d.public_len_bytes);
            if !matches!(end, Some(end) if end <= d.size_bytes) {
                return self.invalid(format!(
                    "disk {}: public region beyond the end of the disk",
                    d.name
                ));
            }
            if !d.failed && !d.staled.is_empty() {
                return self.invalid(format!(
                    "disk {}: plexes its failure made STALE, but it is not recorded failed",
                    d.name
                ));
            }
        }
        Ok(())
    }

    /// A volume and its plexes; records their names in `object_names` and their
    /// subdisks' extents in `extents`.
    fn validate_volume<'a>(
        &'a self,
        v: &'a Volume,
        object_names: &mut BTreeSet<&'a str>,
        extents: &mut Vec<Extent<'a>>,
    ) -> Result<(), ConfigError> {
        self.check_object_name("volume", &v.name, object_names)?;
        if v.size_bytes == 0 || !v.size_bytes.is_multiple_of(SECTOR_BYTES) {
            return self.invalid(format!(
                "volume {}: size {} is not a positive multiple of 512",
                v.name, v.size_bytes
            ));
        }
        if v.plexes.is_empty() || v.plexes.len() > MAX_PLEXES {
            return self.invalid(format!(
                "volume {}: has {} plexes (1 to {MAX_PLEXES} allowed)",
                v.name,
                v.plexes.len()
            ));
        }
        let mut volume_disks = BTreeSet::new();
        for p in &v.plexes {
            self.check_object_name("plex", &p.name, object_names)?;
            p.layout.validate()?;
            let plex_disks = self.validate_columns(p)?;
            if !plex_disks.is_disjoint(&volume_disks) {
                return self.invalid(format!(
                    "volume {}: plex {} shares a disk with another plex",
                    v.name, p.name
                ));
            }
            if p.state.takes_writes() {
                if let Some(d) = plex_disks.iter().find(|d| self.disk_failed(d)) {
                    return self.invalid(format!(
                        "plex {}: {} with a subdisk on disk {d}, recorded failed",
                        p.name,
                        p.state.as_str()
                    ));
                }
            }
            volume_disks.extend(plex_disks);
            if p.capacity_bytes() < v.size_bytes {
                return self.invalid(format!(
                    "plex {}: holds {} bytes, volume {} needs {}",
                    p.name,
                    p.capacity_bytes(),
                    v.name,
                    v.size_bytes
                ));
            }
            for sd in &p.subdisks {
                self.validate_subdisk(sd, object_names, extents)?;
            }
            self.validate_resync_ranges(v, p)?;
            self.validate_replaces(v, p)?;
        }
        Ok(())
    }

    /// A plex that replaces another (`dg evacuate`): that one is another plex of the
    /// same volume, and this one is not ACTIVE yet (becoming ACTIVE ends the move).
    fn validate_replaces(&self, v: &Volume, p: &Plex) -> Result<(), ConfigError> {
        let Some(old) = &p.replaces else {
            return Ok(());
        };
        if *old == p.name || v.plex(old).is_none() {
            return self.invalid(format!(
                "plex {}: replaces {old}, which is not another plex of volume {}",
                p.name, v.name
            ));
        }
        if p.state == PlexState::Active {
            return self.invalid(format!("plex {}: ACTIVE and still replacing {old}", p.name));
        }
        Ok(())
    }

    /// A plex's columns: each contiguous from offset 0, not too many subdisks, on
    /// disks no other column uses; no subdisk beyond the last column. Returns the
    /// plex's disks.
    fn validate_columns<'a>(&self, p: &'a Plex) -> Result<BTreeSet<&'a str>, ConfigError> {
        let columns = p.layout.columns();
        let mut plex_disks = BTreeSet::new();
        for c in 0..columns {
            let mut expected_offset = 0;
            let mut column_disks = BTreeSet::new();
            let count = p.subdisks.iter().filter(|sd| sd.column == c).count();
            if count > MAX_SUBDISKS_PER_COLUMN {
                return self.invalid(format!(
                    "plex {}: column {c} has {count} subdisks, at most {MAX_SUBDISKS_PER_COLUMN}",
                    p.name
                ));
            }
            for sd in p.subdisks.iter().filter(|sd| sd.column == c) {
                if sd.plex_offset_bytes != expected_offset {
                    return self.invalid(format!(
                        "plex {}: subdisk {} is not contiguous in column {c}",
                        p.name, sd.name
                    ));
                }
                let Some(next) = expected_offset.checked_add(sd.len_bytes) else {
                    return self.invalid(format!("plex {}: column {c} overflows", p.name));
                };
                expected_offset = next;
                column_disks.insert(sd.disk.as_str());
            }
            if !column_disks.is_disjoint(&plex_disks) {
                return self.invalid(format!("plex {}: two columns share a disk", p.name));
            }
            plex_disks.extend(column_disks);
        }
        if let Some(sd) = p.subdisks.iter().find(|sd| sd.column >= columns) {
            return self.invalid(format!(
                "plex {}: subdisk {} in column {} of {columns}",
                p.name, sd.name, sd.column
            ));
        }
        Ok(plex_disks)
    }

    /// A subdisk: name unique, on a disk of the group, aligned and inside its public
    /// region; records its name and extent.
    fn validate_subdisk<'a>(
        &self,
        sd: &'a Subdisk,
        object_names: &mut BTreeSet<&'a str>,
        extents: &mut Vec<Extent<'a>>,
    ) -> Result<(), ConfigError> {
        self.check_object_name("subdisk", &sd.name, object_names)?;
        let Some(d) = self.disk(&sd.disk) else {
            return self.invalid(format!(
                "subdisk {}: disk {} is not in the group",
                sd.name, sd.disk
            ));
        };
        let aligned = sd.disk_offset_bytes.is_multiple_of(ALLOC_ALIGN_BYTES)
            && sd.len_bytes.is_multiple_of(ALLOC_ALIGN_BYTES)
            && sd.len_bytes > 0;
        let inside = sd.disk_offset_bytes >= d.public_offset_bytes
            && sd
                .disk_offset_bytes
                .checked_add(sd.len_bytes)
                .is_some_and(|end| end <= d.public_offset_bytes + d.public_len_bytes);
        if !aligned || !inside {
            return self.invalid(format!(
                "subdisk {}: extent {}+{} is unaligned or outside disk {}'s public region",
                sd.name, sd.disk_offset_bytes, sd.len_bytes, d.name
            ));
        }
        extents.push((
            sd.disk.as_str(),
            sd.disk_offset_bytes,
            sd.len_bytes,
            sd.name.as_str(),
            ExtentKind::Subdisk,
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_support::{cluster, with_mirror};

    /// Volume names of `vs`.
    fn names<'a>(vs: &[&'a Volume]) -> Vec<&'a str> {
        vs.iter().map(|v| v.name.as_str()).collect()
    }

    #[test]
    fn a_change_is_checked_by_what_it_replaced_added_and_removed() {
        let mut c = cluster(&[("d1", 1 << 30), ("d2", 1 << 30)]);
        for v in ["v1", "v2", "v3", "v4"] {
            c = with_mirror(&c, v, 1 << 20, LogPolicy::Off);
        }
        let before = &c.disk_groups[0];
        let grow = |c: &ClusterConfig, volume: &str| {
            c.apply(&Change::VolGrow {
                dg: "dg1".into(),
                volume: volume.into(),
                new_size_bytes: 2 << 20,
            })
            .unwrap()
        };
        // A grow replaces one volume in place: that one is checked, the rest not.
        let grown = grow(&c, "v2");
        let (kept, changed, gone) = left_alone(&before.volumes, &grown.disk_groups[0].volumes);
        assert_eq!(names(&kept), ["v1", "v3", "v4"]);
        assert_eq!(names(&changed), ["v2"]);
        assert_eq!(names(&gone), ["v2"]);
        // A new volume is added; a removed one is gone.
        let added = with_mirror(&c, "v5", 1 << 20, LogPolicy::Off);
        let (kept, changed, gone) = left_alone(&before.volumes, &added.disk_groups[0].volumes);
        assert_eq!(
            (kept.len(), names(&changed), gone.len()),
            (4, vec!["v5"], 0)
        );
        let removed = c
            .apply(&Change::VolRm {
                dg: "dg1".into(),
                volume: "v3".into(),
            })
            .unwrap();
        let (kept, changed, gone) = left_alone(&before.volumes, &removed.disk_groups[0].volumes);
        assert_eq!(
            (names(&kept), changed.len(), names(&gone)),
            (vec!["v1", "v2", "v4"], 0, vec!["v3"])
        );
        // The same volume twice: the second is checked (and meets the first).
        let mut twice = before.clone();
        twice.volumes.push(Arc::clone(&before.volumes[0]));
        let (kept, changed, _) = left_alone(&before.volumes, &twice.volumes);
        assert_eq!((kept.len(), names(&changed)), (4, vec!["v1"]));
        assert!(twice.validate_change(before).is_err());
        // What the volumes left alone are compared with after a grow: its new
        // subdisks (one per plex here: the next volume follows each), not the
        // volume's or its plexes' names nor the extents it had.
        let g = &grown.disk_groups[0];
        let (_, changed, gone) = left_alone(&before.volumes, &g.volumes);
        let (names, log_ids, extents) = g.added(changed, &gone).unwrap();
        let new_subdisks: BTreeSet<&str> = g.volumes[1]
            .plexes
            .iter()
            .map(|p| p.subdisks[1].name.as_str())
            .collect();
        assert_eq!(names, new_subdisks);
        assert!(log_ids.is_empty());
        assert_eq!(extents.len(), 2, "{extents:?}");
        assert!(
            extents.iter().all(|e| new_subdisks.contains(e.3)),
            "{extents:?}"
        );
    }
}
