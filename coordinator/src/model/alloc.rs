//! Space allocation: which extents of a disk group's disks a new or growing plex uses.
//!
//! Rules:
//! - every subdisk offset and length is a multiple of [`ALLOC_ALIGN_BYTES`];
//! - the plexes of a volume never share a disk (a mirror survives the loss of a disk);
//! - the columns of a stripe plex never share a disk;
//! - a concat plex (or a stripe column being grown) may span several disks;
//! - a layout that cannot be placed is refused as a whole, with the reason and the free
//!   space per disk; nothing is half-allocated.
//!
//! The placement is greedy and deterministic (same configuration, same result on every
//! node): a concat plex goes on the single disk that fits it most tightly, else over the
//! disks with the most free space; stripe columns go on the disks that fit a column most
//! tightly. Within a disk, the extent that fits most tightly is used, else the largest.
//!
//! A mirrored volume's dirty region log ([`allocate_log`]) has up to
//! [`MAX_LOG_COPIES`] copies, each one extent of [`LOG_SECTIONS`] sections on a disk
//! of its own: each preferably on a disk none of the volume's plexes use, else on
//! any other disk with room (one copy when only one disk has room); each copy is
//! used space like a subdisk. A command that names disks (`vol create --disks`,
//! `plex add --disks`) places the log on those (and, for a plex add, the disks the
//! volume already uses) only.

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use plexd_target_api::drl;

use crate::model::{
    DiskGroupConfig, LogCopy, Plex, PlexLayout, PlexState, Subdisk, VolumeLayout, VolumeLog,
    ALLOC_ALIGN_BYTES, LOG_SECTIONS, MAX_LOG_COPIES, MAX_SUBDISKS_PER_COLUMN,
};
use crate::size::format_size;

/// A layout that cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("volume {volume}: {reason}")]
pub struct AllocError {
    /// The volume being created or grown.
    pub volume: String,
    /// Why, with the free space per disk.
    pub reason: String,
}

/// A free range of a disk's public region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreeExtent {
    /// Offset on the device.
    pub offset_bytes: u64,
    /// Length.
    pub len_bytes: u64,
}

/// The free extents of every disk of the group, in the group's disk order.
pub fn free_extents(dg: &DiskGroupConfig) -> Vec<(String, Vec<FreeExtent>)> {
    // The group's index, when it has one ([`super::index`]): each disk's used
    // extents, sorted already.
    if let Some(index) = super::index::cached(dg) {
        let free = free_between(dg, |disk| {
            index.on(disk).iter().map(|u| (u.offset, u.len)).collect()
        });
        debug_assert_eq!(free, free_extents_walked(dg), "free extents of {}", dg.name);
        return free;
    }
    free_extents_walked(dg)
}

/// [`free_extents`] from a walk over every volume.
fn free_extents_walked(dg: &DiskGroupConfig) -> Vec<(String, Vec<FreeExtent>)> {
    let mut used: BTreeMap<&str, Vec<(u64, u64)>> = BTreeMap::new();
    for (disk, offset, len) in dg.volumes.iter().flat_map(|v| v.used_extents()) {
        used.entry(disk).or_default().push((offset, len));
    }
    free_between(dg, |disk| used.remove(disk).unwrap_or_default())
}

/// The free extents of each disk of `dg` around the extents `used` gives for it
/// (offset, length; in any order).
fn free_between(
    dg: &DiskGroupConfig,
    mut used: impl FnMut(&str) -> Vec<(u64, u64)>,
) -> Vec<(String, Vec<FreeExtent>)> {
    dg.disks
        .iter()
        .map(|d| {
            if d.failed {
                // Recorded failed: nothing is allocated on it.
                return (d.name.clone(), Vec::new());
            }
            let start = align_up(d.public_offset_bytes);
            let end = align_down(d.public_offset_bytes.saturating_add(d.public_len_bytes));
            let mut extents = Vec::new();
            let mut cursor = start;
            let mut taken = used(d.name.as_str());
            taken.sort_unstable();
            for (offset, len) in taken {
                if offset > cursor && cursor < end {
                    extents.push(FreeExtent {
                        offset_bytes: cursor,
                        len_bytes: offset.min(end) - cursor,
                    });
                }
                cursor = cursor.max(offset.saturating_add(len));
            }
            if cursor < end {
                extents.push(FreeExtent {
                    offset_bytes: cursor,
                    len_bytes: end - cursor,
                });
            }
            (d.name.clone(), extents)
        })
        .collect()
}

/// `name` as a numbered name `{prefix}-{n:02}` (n ≥ 1, at least two digits, no
/// other leading zero: exactly what `format!("{prefix}-{n:02}")` makes), as subdisks
/// (prefix: the disk) and plexes (prefix: the volume) are named: the prefix and n.
pub(super) fn subdisk_number(name: &str) -> Option<(&str, u64)> {
    let (disk, digits) = name.rsplit_once('-')?;
    let canonical = digits.len() == 2 || (digits.len() > 2 && !digits.starts_with('0'));
    if !canonical || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    (n >= 1).then_some((disk, n))
}

/// The length of the free extent of `disk` starting exactly at `offset_bytes` (0:
/// none), as [`free_extents`] would list it with `taken` used too: two lookups in
/// the group's index, or one pass over the used extents; nothing sorted or
/// allocated.
fn free_run_at(dg: &DiskGroupConfig, disk: &str, offset_bytes: u64, taken: &[Piece]) -> u64 {
    // A disk recorded failed has no free space (as in [`free_between`]).
    let Some(d) = dg.disk(disk).filter(|d| !d.failed) else {
        return 0;
    };
    let start = align_up(d.public_offset_bytes);
    let end = align_down(d.public_offset_bytes.saturating_add(d.public_len_bytes));
    if offset_bytes < start || offset_bytes >= end {
        return 0;
    }
    let mine = taken
        .iter()
        .map(|(d, offset, len)| (d.as_str(), *offset, *len));
    // The group's index, when it has one ([`super::index`]): the extent before
    // `offset_bytes` (the only one that can cover it: they are disjoint) and the
    // first after it are all that matter.
    if let Some(index) = super::index::cached(dg) {
        let list = index.on(disk);
        let i = list.partition_point(|u| u.offset <= offset_bytes);
        let near = i
            .checked_sub(1)
            .map(|j| &list[j])
            .into_iter()
            .chain(list.get(i));
        let used = near.map(|u| (disk, u.offset, u.len));
        return run_from(disk, offset_bytes, end, used.chain(mine));
    }
    // Every used extent; the disk name is compared only for an extent whose offsets
    // matter (it covers `offset_bytes`, or starts after it and before the run's end
    // so far), which after the first few is rare.
    let used = dg.volumes.iter().flat_map(|v| v.used_extents());
    run_from(disk, offset_bytes, end, used.chain(mine))
}

/// The free run of `disk` from `offset_bytes` up to `end` at most, given (among
/// others) every used extent of the disk that covers `offset_bytes` or starts
/// after it: 0 when one covers it, else up to the first that starts after it.
fn run_from<'a>(
    disk: &str,
    offset_bytes: u64,
    end: u64,
    used: impl Iterator<Item = (&'a str, u64, u64)>,
) -> u64 {
    // Where the free run ends: the first used extent after `offset_bytes`; none
    // may cover `offset_bytes` itself (a run starts only where used space ends,
    // and the extent `offset_bytes` is the end of is not after it).
    let mut run_end = end;
    for (on, offset, len) in used {
        let covers = offset <= offset_bytes && offset_bytes < offset.saturating_add(len);
        let bounds = offset > offset_bytes && offset < run_end;
        if (covers || bounds) && on == disk {
            if covers {
                return 0;
            }
            run_end = offset;
        }
    }
    run_end - offset_bytes
}

/// [`free_extents`] of the group less the pieces `taken` from it.
fn free_extents_less(dg: &DiskGroupConfig, taken: &[Piece]) -> Vec<(String, Vec<FreeExtent>)> {
    let mut free = free_extents(dg);
    for (disk, offset, len) in taken {
        if let Some((_, extents)) = free.iter_mut().find(|(name, _)| name == disk) {
            carve(extents, *offset, *len);
        }
    }
    free
}

/// Removes `[offset, offset + len)` from `extents` (sorted, disjoint), splitting
/// the extent that holds it.
pub(super) fn carve(extents: &mut Vec<FreeExtent>, offset: u64, len: u64) {
    let cut_end = offset.saturating_add(len);
    let mut out = Vec::with_capacity(extents.len() + 1);
    for e in extents.drain(..) {
        let e_end = e.offset_bytes.saturating_add(e.len_bytes);
        if e_end <= offset || cut_end <= e.offset_bytes {
            out.push(e);
            continue;
        }
        if e.offset_bytes < offset {
            out.push(FreeExtent {
                offset_bytes: e.offset_bytes,
                len_bytes: offset - e.offset_bytes,
            });
        }
        if cut_end < e_end {
            out.push(FreeExtent {
                offset_bytes: cut_end,
                len_bytes: e_end - cut_end,
            });
        }
    }
    *extents = out;
}

fn align_up(value: u64) -> u64 {
    value
        .div_ceil(ALLOC_ALIGN_BYTES)
        .saturating_mul(ALLOC_ALIGN_BYTES)
}

fn align_down(value: u64) -> u64 {
    value / ALLOC_ALIGN_BYTES * ALLOC_ALIGN_BYTES
}

/// Free space and subdisk names for one allocation; dropped on failure.
struct Allocator<'a> {
    /// The group allocated in.
    dg: &'a DiskGroupConfig,
    /// Disk name → free extents sorted by offset, in the group's disk order: made
    /// when a step first needs more than the free run right after a subdisk (a grow
    /// in place needs none), less what was taken before it.
    free: Option<Vec<(String, Vec<FreeExtent>)>>,
    /// Pieces taken in place ([`Self::take_at`]) before `free` was made.
    taken: Vec<Piece>,
    /// The numbers `n` of the object names `{prefix}-{n:02}` in use, by prefix (a
    /// disk's name for its subdisks, a volume's for its plexes), sorted (object
    /// names are unique in the group): the group's, gathered at a prefix's first new
    /// name (a grow that lengthens the last subdisk needs none), and those this
    /// allocation gave.
    numbers: BTreeMap<String, Vec<u64>>,
}

/// A piece of a disk: (disk name, offset, length).
type Piece = (String, u64, u64);

impl<'a> Allocator<'a> {
    fn new(dg: &'a DiskGroupConfig) -> Allocator<'a> {
        Allocator {
            dg,
            free: None,
            taken: Vec::new(),
            numbers: BTreeMap::new(),
        }
    }

    /// The numbers in use of the names `{prefix}-{nn}` ([`Self::numbers`]): from the
    /// group's index, or one pass over the group's object names, no name formatted.
    fn numbers_in_use(dg: &DiskGroupConfig, prefix: &str) -> Vec<u64> {
        // The group's index, when it has one ([`super::index`]).
        if let Some(index) = super::index::cached(dg) {
            let numbers = index.numbers(prefix);
            debug_assert_eq!(
                numbers,
                Self::numbers_walked(dg, prefix),
                "{prefix} in {}",
                dg.name
            );
            return numbers;
        }
        Self::numbers_walked(dg, prefix)
    }

    /// [`Self::numbers_in_use`] from a walk over every object name.
    fn numbers_walked(dg: &DiskGroupConfig, prefix: &str) -> Vec<u64> {
        let mut numbers: Vec<u64> = dg
            .volumes
            .iter()
            .flat_map(|v| v.object_names())
            .filter_map(subdisk_number)
            .filter(|(p, _)| *p == prefix)
            .map(|(_, n)| n)
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        numbers
    }

    /// The free extents of every disk ([`Self::free`]), made on first use.
    fn free_map(&mut self) -> &mut Vec<(String, Vec<FreeExtent>)> {
        let (dg, taken) = (self.dg, &self.taken);
        self.free
            .get_or_insert_with(|| free_extents_less(dg, taken))
    }

    /// Every disk with its free bytes, in the group's disk order.
    fn free_per_disk(&mut self) -> Vec<(String, u64)> {
        self.free_map()
            .iter()
            .map(|(name, e)| (name.clone(), e.iter().map(|x| x.len_bytes).sum()))
            .collect()
    }

    fn disk_free(&mut self, disk: &str) -> u64 {
        self.free_per_disk()
            .into_iter()
            .find(|(name, _)| name == disk)
            .map_or(0, |(_, free)| free)
    }

    fn extents_mut(&mut self, disk: &str) -> Option<&mut Vec<FreeExtent>> {
        self.free_map()
            .iter_mut()
            .find(|(name, _)| name == disk)
            .map(|(_, e)| e)
    }

    /// Takes up to `max_bytes` from the free extent starting exactly at `offset_bytes`.
    /// Before the free map is made, that extent is found by one pass over the
    /// disk's used extents ([`free_run_at`]), so a grow in place costs no map.
    fn take_at(&mut self, disk: &str, offset_bytes: u64, max_bytes: u64) -> u64 {
        if self.free.is_none() {
            let run = free_run_at(self.dg, disk, offset_bytes, &self.taken);
            // Debug builds check the pass against the whole map.
            debug_assert_eq!(
                run,
                free_extents_less(self.dg, &self.taken)
                    .iter()
                    .filter(|(name, _)| name == disk)
                    .flat_map(|(_, e)| e)
                    .find(|e| e.offset_bytes == offset_bytes)
                    .map_or(0, |e| e.len_bytes),
                "free run at {offset_bytes} on {disk}"
            );
            let taken = run.min(max_bytes);
            if taken > 0 {
                self.taken.push((disk.to_string(), offset_bytes, taken));
            }
            return taken;
        }
        let Some(extents) = self.extents_mut(disk) else {
            return 0;
        };
        let Some(i) = extents.iter().position(|e| e.offset_bytes == offset_bytes) else {
            return 0;
        };
        let taken = extents[i].len_bytes.min(max_bytes);
        extents[i].offset_bytes += taken;
        extents[i].len_bytes -= taken;
        if extents[i].len_bytes == 0 {
            extents.remove(i);
        }
        taken
    }

    /// Takes exactly `need_bytes` from one disk (the caller checked it has them).
    fn take(&mut self, disk: &str, need_bytes: u64) -> Option<Vec<Piece>> {
        let extents = self.extents_mut(disk)?;
        let mut pieces = Vec::new();
        let mut remaining = need_bytes;
        while remaining > 0 {
            let best_fit = extents
                .iter()
                .enumerate()
                .filter(|(_, e)| e.len_bytes >= remaining)
                .min_by_key(|(_, e)| e.len_bytes)
                .map(|(i, _)| i);
            let largest = || {
                extents
                    .iter()
                    .enumerate()
                    .max_by_key(|(i, e)| (e.len_bytes, std::cmp::Reverse(*i)))
                    .map(|(i, _)| i)
            };
            let i = best_fit.or_else(largest)?;
            let taken = extents[i].len_bytes.min(remaining);
            pieces.push((disk.to_string(), extents[i].offset_bytes, taken));
            extents[i].offset_bytes += taken;
            extents[i].len_bytes -= taken;
            if extents[i].len_bytes == 0 {
                extents.remove(i);
            }
            remaining -= taken;
        }
        Some(pieces)
    }

    /// Disks not in `excluded`, with their free bytes, in the group's disk order.
    fn candidates(&mut self, excluded: &BTreeSet<String>) -> Vec<(String, u64)> {
        self.free_per_disk()
            .into_iter()
            .filter(|(name, free)| !excluded.contains(name) && *free > 0)
            .collect()
    }

    /// `need_bytes` over disks not in `excluded`: the tightest single disk, else the
    /// disks with the most free space first.
    fn place_concat(&mut self, need_bytes: u64, excluded: &BTreeSet<String>) -> Option<Vec<Piece>> {
        let mut candidates = self.candidates(excluded);
        let single = candidates
            .iter()
            .filter(|(_, free)| *free >= need_bytes)
            .min_by_key(|(_, free)| *free)
            .map(|(name, _)| name.clone());
        if let Some(disk) = single {
            return self.take(&disk, need_bytes);
        }
        let total: u64 = candidates.iter().map(|(_, free)| *free).sum();
        if total < need_bytes {
            return None;
        }
        candidates.sort_by_key(|(_, free)| std::cmp::Reverse(*free));
        let mut pieces = Vec::new();
        let mut remaining = need_bytes;
        for (disk, free) in candidates {
            if remaining == 0 {
                break;
            }
            let part = free.min(remaining);
            pieces.extend(self.take(&disk, part)?);
            remaining -= part;
        }
        Some(pieces)
    }

    /// One disk per column, each with `column_bytes` free, none in `excluded`.
    fn place_stripe(
        &mut self,
        columns: u32,
        column_bytes: u64,
        excluded: &BTreeSet<String>,
    ) -> Option<Vec<Vec<Piece>>> {
        let mut fitting: Vec<(usize, String, u64)> = self
            .candidates(excluded)
            .into_iter()
            .enumerate()
            .filter(|(_, (_, free))| *free >= column_bytes)
            .map(|(order, (name, free))| (order, name, free))
            .collect();
        if fitting.len() < columns as usize {
            return None;
        }
        fitting.sort_by_key(|(order, _, free)| (*free, *order));
        fitting.truncate(columns as usize);
        fitting.sort_by_key(|(order, _, _)| *order);
        fitting
            .into_iter()
            .map(|(_, disk, _)| self.take(&disk, column_bytes))
            .collect()
    }

    /// [`Self::numbers`] of `prefix`, gathered on first use.
    fn numbers_of(&mut self, prefix: &str) -> &mut Vec<u64> {
        let dg = self.dg;
        self.numbers
            .entry(prefix.to_string())
            .or_insert_with(|| Self::numbers_in_use(dg, prefix))
    }

    /// Holds `name` (an object the change makes besides subdisks: a volume, a plex)
    /// from being given to a subdisk.
    fn reserve(&mut self, name: &str) {
        if let Some((disk, n)) = subdisk_number(name) {
            let list = self.numbers_of(disk);
            if let Err(at) = list.binary_search(&n) {
                list.insert(at, n);
            }
        }
    }

    /// The next name `{prefix}-{n:02}` with the lowest `n` ≥ 1 no object of the
    /// group (or name given already) holds: a subdisk's on disk `prefix`, a new
    /// plex's of volume `prefix`.
    fn next_numbered_name(&mut self, prefix: &str) -> String {
        let list = self.numbers_of(prefix);
        // The first gap in the sorted numbers 1, 2, ...
        let n = list
            .iter()
            .zip(1u64..)
            .find(|(used, want)| **used != *want)
            .map_or(list.len() as u64 + 1, |(_, want)| want);
        let at = list.partition_point(|x| *x < n);
        list.insert(at, n);
        format!("{prefix}-{n:02}")
    }

    /// Appends `pieces` to column `column` of `plex`, merging a piece into the
    /// column's last subdisk when it continues it on the same disk.
    fn append(&mut self, plex: &mut Plex, column: u32, pieces: Vec<Piece>) {
        for (disk, offset_bytes, len_bytes) in pieces {
            let column_len = plex.column_len_bytes(column);
            let last = plex.subdisks.iter_mut().rfind(|sd| sd.column == column);
            match last {
                Some(sd)
                    if sd.disk == disk
                        && sd.disk_offset_bytes.saturating_add(sd.len_bytes) == offset_bytes =>
                {
                    sd.len_bytes = sd.len_bytes.saturating_add(len_bytes);
                }
                _ => {
                    let name = self.next_numbered_name(&disk);
                    plex.subdisks.push(Subdisk {
                        name,
                        disk,
                        disk_offset_bytes: offset_bytes,
                        len_bytes,
                        column,
                        plex_offset_bytes: column_len,
                    });
                }
            }
        }
        plex.subdisks
            .sort_by_key(|sd| (sd.column, sd.plex_offset_bytes));
    }

    fn free_summary(&mut self) -> String {
        let mut disks = self.free_per_disk();
        disks.sort_by_key(|(_, free)| std::cmp::Reverse(*free));
        let listed: Vec<String> = disks
            .iter()
            .map(|(name, free)| format!("{name} {}", format_size(*free)))
            .collect();
        format!("free space: {}", listed.join(", "))
    }

    /// A new plex for a volume of `volume_bytes`, on disks not in `excluded`.
    fn new_plex(
        &mut self,
        name: String,
        state: PlexState,
        layout: PlexLayout,
        volume_bytes: u64,
        excluded: &BTreeSet<String>,
    ) -> Option<Plex> {
        let column_bytes = layout.column_len_bytes(volume_bytes);
        let mut plex = Plex {
            resync_ranges: Vec::new(),
            replaces: None,
            name,
            state,
            layout,
            subdisks: Vec::new(),
        };
        match layout {
            PlexLayout::Concat => {
                let pieces = self.place_concat(column_bytes, excluded)?;
                self.append(&mut plex, 0, pieces);
            }
            PlexLayout::Stripe { columns, .. } => {
                let placed = self.place_stripe(columns, column_bytes, excluded)?;
                for (column, pieces) in (0..).zip(placed) {
                    self.append(&mut plex, column, pieces);
                }
            }
        }
        Some(plex)
    }

    /// Extends column `column` of `plex` by `need_bytes`: right after its last
    /// subdisk if free, then on the column's own disks, then on disks not in
    /// `excluded`.
    fn extend_column(
        &mut self,
        plex: &mut Plex,
        column: u32,
        need_bytes: u64,
        excluded: &BTreeSet<String>,
    ) -> Option<()> {
        let mut remaining = need_bytes;
        let column_disks: Vec<String> = plex
            .subdisks
            .iter()
            .filter(|sd| sd.column == column)
            .map(|sd| sd.disk.clone())
            .collect();
        if let Some(last) = plex.subdisks.iter().rfind(|sd| sd.column == column) {
            let (disk, end) = (
                last.disk.clone(),
                last.disk_offset_bytes.saturating_add(last.len_bytes),
            );
            let taken = self.take_at(&disk, end, remaining);
            if taken > 0 {
                self.append(plex, column, vec![(disk, end, taken)]);
                remaining -= taken;
            }
        }
        let mut own: Vec<String> = column_disks.clone();
        own.dedup();
        for disk in own.iter().rev() {
            if remaining == 0 {
                break;
            }
            let part = self.disk_free(disk).min(remaining);
            if part > 0 {
                let pieces = self.take(disk, part)?;
                self.append(plex, column, pieces);
                remaining -= part;
            }
        }
        if remaining > 0 {
            let mut excluded = excluded.clone();
            excluded.extend(own);
            let pieces = self.place_concat(remaining, &excluded)?;
            self.append(plex, column, pieces);
        }
        Some(())
    }
}

/// Refuses a plex whose columns would be split into more subdisks than the data
/// plane takes (a badly fragmented group).
fn check_fragmentation(volume: &str, plex: &Plex) -> Result<(), AllocError> {
    for column in 0..plex.layout.columns() {
        let count = plex
            .subdisks
            .iter()
            .filter(|sd| sd.column == column)
            .count();
        if count > MAX_SUBDISKS_PER_COLUMN {
            return Err(AllocError {
                volume: volume.to_string(),
                reason: format!(
                    "free space too fragmented: plex {} column {column} would need {count} subdisks (at most {MAX_SUBDISKS_PER_COLUMN})",
                    plex.name
                ),
            });
        }
    }
    Ok(())
}

fn volume_disks_except(plexes: &[Plex], except: usize) -> BTreeSet<String> {
    plexes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != except)
        .flat_map(|(_, p)| p.subdisks.iter().map(|sd| sd.disk.clone()))
        .collect()
}

/// The name of a new volume's plex `index` (0-based): `{volume}-01`, `{volume}-02`, ...
pub fn plex_name(volume: &str, index: u32) -> String {
    format!("{volume}-{:02}", index + 1)
}

/// Places the plexes of a new volume of `size_bytes` (already a multiple of 512). All
/// plexes are ACTIVE.
pub fn allocate_volume(
    dg: &DiskGroupConfig,
    volume: &str,
    size_bytes: u64,
    layout: VolumeLayout,
    only: &[String],
) -> Result<Vec<Plex>, AllocError> {
    let (mirrors, plex_layout) = layout.plexes();
    let columns = plex_layout.columns();
    let disks_needed = u64::from(mirrors) * u64::from(columns);
    let error = |reason: String| AllocError {
        volume: volume.to_string(),
        reason,
    };
    let need = if mirrors * columns == 1 { "s" } else { "" };
    if disks_needed > dg.disks.len() as u64 {
        return Err(error(format!(
            "{} need{need} {disks_needed} distinct disks, disk group {} has {}",
            describe(mirrors, plex_layout, size_bytes),
            dg.name,
            dg.disks.len()
        )));
    }
    if !only.is_empty() && disks_needed > only.len() as u64 {
        return Err(error(format!(
            "{} need{need} {disks_needed} distinct disks, {} named ({})",
            describe(mirrors, plex_layout, size_bytes),
            only.len(),
            only.join(", ")
        )));
    }
    let mut allocator = Allocator::new(dg);
    allocator.reserve(volume);
    for index in 0..mirrors {
        allocator.reserve(&plex_name(volume, index));
    }
    let mut plexes: Vec<Plex> = Vec::new();
    // Disks not named are as good as used.
    let mut used: BTreeSet<String> = not_named(dg, only).collect();
    let among = among_named(only);
    for index in 0..mirrors {
        let placed = allocator.new_plex(
            plex_name(volume, index),
            PlexState::Active,
            plex_layout,
            size_bytes,
            &used,
        );
        let Some(plex) = placed else {
            let distinct = if disks_needed > 1 {
                " on distinct disks"
            } else {
                ""
            };
            return Err(error(format!(
                "not enough free space for {}{distinct}{among} ({})",
                describe(mirrors, plex_layout, size_bytes),
                allocator.free_summary()
            )));
        };
        check_fragmentation(volume, &plex)?;
        used.extend(plex.subdisks.iter().map(|sd| sd.disk.clone()));
        plexes.push(plex);
    }
    Ok(plexes)
}

/// The group's disks a command that names `only` leaves out (none when it names
/// none: any disk will do).
fn not_named<'a>(dg: &'a DiskGroupConfig, only: &'a [String]) -> impl Iterator<Item = String> + 'a {
    dg.disks
        .iter()
        .filter(move |d| !only.is_empty() && !only.contains(&d.name))
        .map(|d| d.name.clone())
}

/// ` among the disks named (d3, d4)` for a no-room message, when a command names any.
fn among_named(only: &[String]) -> String {
    match only {
        [] => String::new(),
        named => format!(" among the disks named ({})", named.join(", ")),
    }
}

fn describe(mirrors: u32, layout: PlexLayout, size_bytes: u64) -> String {
    let column_bytes = layout.column_len_bytes(size_bytes);
    let one = match layout {
        PlexLayout::Concat => format_size(column_bytes),
        PlexLayout::Stripe { columns, .. } => {
            format!("{columns} stripe columns of {}", format_size(column_bytes))
        }
    };
    if mirrors == 1 {
        one
    } else {
        format!("{mirrors} mirrors of {one}")
    }
}

/// Places a new EMPTY plex for `volume` (for `plex add`) on disks none of its plexes
/// use, and only on the disks of `only` when it names any (`--disks`, `--to`).
pub fn allocate_plex(
    dg: &DiskGroupConfig,
    volume: &str,
    layout: PlexLayout,
    only: &[String],
) -> Result<Plex, AllocError> {
    let Some(v) = dg.volume(volume) else {
        return Err(AllocError {
            volume: volume.to_string(),
            reason: format!("does not exist in disk group {}", dg.name),
        });
    };
    let used: BTreeSet<String> = v
        .plexes
        .iter()
        .flat_map(|p| p.subdisks.iter().map(|sd| sd.disk.clone()))
        .collect();
    let excluded: BTreeSet<String> = used.iter().cloned().chain(not_named(dg, only)).collect();
    let among = among_named(only);
    let mut allocator = Allocator::new(dg);
    // The volume's next plex name no object of the group holds (a volume named like
    // a disk has plexes named like that disk's subdisks): numbered as subdisks are.
    let name = allocator.next_numbered_name(&v.name);
    let plex = allocator
        .new_plex(name, PlexState::Empty, layout, v.size_bytes, &excluded)
        .ok_or_else(|| AllocError {
            volume: volume.to_string(),
            reason: format!(
                "not enough free space for another plex of {} on distinct disks{among} (disks in use by the volume: {}; {})",
                describe(1, layout, v.size_bytes),
                used.iter().cloned().collect::<Vec<_>>().join(", "),
                allocator.free_summary()
            ),
        })?;
    check_fragmentation(volume, &plex)?;
    Ok(plex)
}

/// Grows every plex of `volume` to hold `new_size_bytes`; returns the new plexes.
/// Concat plexes get more subdisks (or longer last subdisks); stripe plexes get the
/// same extra length in every column.
pub fn grow_volume(
    dg: &DiskGroupConfig,
    volume: &str,
    new_size_bytes: u64,
) -> Result<Vec<Plex>, AllocError> {
    let Some(v) = dg.volume(volume) else {
        return Err(AllocError {
            volume: volume.to_string(),
            reason: format!("does not exist in disk group {}", dg.name),
        });
    };
    let mut allocator = Allocator::new(dg);
    let mut plexes = v.plexes.clone();
    for index in 0..plexes.len() {
        let other_plexes = volume_disks_except(&plexes, index);
        let mut plex = plexes[index].clone();
        let target = plex.layout.column_len_bytes(new_size_bytes);
        for column in 0..plex.layout.columns() {
            let need = target.saturating_sub(plex.column_len_bytes(column));
            if need == 0 {
                continue;
            }
            let mut excluded = other_plexes.clone();
            excluded.extend(
                plex.subdisks
                    .iter()
                    .filter(|sd| sd.column != column)
                    .map(|sd| sd.disk.clone()),
            );
            if allocator
                .extend_column(&mut plex, column, need, &excluded)
                .is_none()
            {
                let which = match plex.layout {
                    PlexLayout::Concat => format!("plex {}", plex.name),
                    PlexLayout::Stripe { .. } => format!("column {column} of plex {}", plex.name),
                };
                // A plex on a disk recorded failed can only grow elsewhere.
                let hint = plex
                    .subdisks
                    .iter()
                    .find(|sd| dg.disk_failed(&sd.disk))
                    .map(|sd| {
                        format!(
                            "; its disk {} is recorded failed: `plex rm` the plex, or `dg reattach-disk` the disk, first",
                            sd.disk
                        )
                    })
                    .unwrap_or_default();
                return Err(AllocError {
                    volume: volume.to_string(),
                    reason: format!(
                        "not enough free space to grow {which} by {} on disks its other plexes and columns do not use ({}){hint}",
                        format_size(need),
                        allocator.free_summary()
                    ),
                });
            }
        }
        check_fragmentation(volume, &plex)?;
        plexes[index] = plex;
    }
    Ok(plexes)
}

/// The plexes of a volume shrunk to `new_size_bytes`: each column keeps its first
/// `column_len_bytes(new_size_bytes)` bytes; subdisks beyond are dropped, the one
/// straddling the cut is shortened. Frees space; never fails.
pub fn shrink_plexes(plexes: &[Plex], new_size_bytes: u64) -> Vec<Plex> {
    plexes
        .iter()
        .map(|plex| {
            let keep = plex.layout.column_len_bytes(new_size_bytes);
            let mut plex = plex.clone();
            plex.subdisks.retain_mut(|sd| {
                if sd.plex_offset_bytes >= keep {
                    return false;
                }
                sd.len_bytes = sd.len_bytes.min(keep - sd.plex_offset_bytes);
                true
            });
            plex
        })
        .collect()
}

/// A new log id for a log placed by the change that takes `dg` (as it is before
/// the change) to its next seq: the group id's CRC32C in the high half, XOR the new
/// seq. One change places at most one log, and the seq only grows, so ids are
/// unique within a group; the group id part makes a log of a group created again
/// on the same disks differ from the old one's.
pub fn new_log_id(dg: &DiskGroupConfig) -> u64 {
    new_log_id_nth(dg, 0)
}

/// The id of the `nth` log (from 0) a change that places several (a `dg rm-disk`
/// moving logs) gives: [`new_log_id`] with `nth` XORed into bits 48.. of the group
/// id part, so the change's ids differ from each other and from every id a
/// single-log change of the group gives (whose high half is the plain CRC).
pub fn new_log_id_nth(dg: &DiskGroupConfig, nth: u16) -> u64 {
    new_log_id_raw(dg) ^ (u64::from(nth) << 48)
}

fn new_log_id_raw(dg: &DiskGroupConfig) -> u64 {
    (u64::from(crc32c::crc32c(dg.id.as_bytes())) << 32) ^ dg.seq.wrapping_add(1)
}

/// The geometry of a log for a volume of `volume_bytes` with regions of
/// `region_bytes`: (section bytes, log bytes). Errors when the region size is not
/// a power of two in range or the volume needs more regions than a section tracks.
pub fn log_geometry(
    volume: &str,
    volume_bytes: u64,
    region_bytes: u64,
) -> Result<(u64, u64), AllocError> {
    let error = |reason: String| AllocError {
        volume: volume.to_string(),
        reason,
    };
    if !region_bytes.is_power_of_two()
        || !(drl::MIN_REGION_BYTES..=drl::MAX_REGION_BYTES).contains(&region_bytes)
    {
        return Err(error(format!(
            "dirty region log region size {region_bytes} bytes is not a power of two from {} to {}",
            format_size(drl::MIN_REGION_BYTES),
            format_size(drl::MAX_REGION_BYTES)
        )));
    }
    let regions = drl::regions_for(volume_bytes, region_bytes);
    if regions > drl::MAX_DRL_REGIONS {
        return Err(error(format!(
            "a dirty region log with {} regions would track {regions} regions (at most {}): use a larger --region-size",
            format_size(region_bytes),
            drl::MAX_DRL_REGIONS
        )));
    }
    let section = drl::section_bytes(regions);
    Ok((section, section.saturating_mul(LOG_SECTIONS)))
}

/// Places one copy of a dirty region log of `len_bytes` for `volume` (whose
/// plexes `dg` already holds as they will be) on a disk not in `exclude`, and in
/// `only` unless that is empty: one aligned extent, the tightest fitting one on a
/// disk none of the volume's plexes use, else the tightest on any disk. Returns
/// (disk, offset).
pub fn place_log_copy(
    dg: &DiskGroupConfig,
    volume: &str,
    len_bytes: u64,
    exclude: &BTreeSet<&str>,
    only: &[String],
) -> Result<(String, u64), AllocError> {
    let need = align_up(len_bytes);
    let volume_disks: BTreeSet<&str> = dg
        .volume(volume)
        .into_iter()
        .flat_map(|v| &v.plexes)
        .flat_map(|p| p.subdisks.iter().map(|sd| sd.disk.as_str()))
        .collect();
    let free = free_extents(dg);
    let best = |own: bool| {
        free.iter()
            .enumerate()
            .filter(|(_, (disk, _))| !exclude.contains(disk.as_str()))
            .filter(|(_, (disk, _))| only.is_empty() || only.contains(disk))
            .filter(|(_, (disk, _))| volume_disks.contains(disk.as_str()) == own)
            .flat_map(|(order, (disk, extents))| {
                extents
                    .iter()
                    .filter(|e| e.len_bytes >= need)
                    .map(move |e| (e.len_bytes, order, e.offset_bytes, disk))
            })
            .min()
            .map(|(_, _, offset, disk)| (disk.clone(), offset))
    };
    best(false)
        .or_else(|| best(true))
        .ok_or_else(|| AllocError {
            volume: volume.to_string(),
            reason: format!(
                "no free extent of {} for its dirty region log ({} sections of {}) on a disk \
                 other than {}{}; {}",
                format_size(need),
                LOG_SECTIONS,
                format_size(need / LOG_SECTIONS),
                if exclude.is_empty() {
                    "none".to_string()
                } else {
                    exclude.iter().copied().collect::<Vec<_>>().join(", ")
                },
                among_named(only),
                Allocator::new(dg).free_summary()
            ),
        })
}

/// Places the copies of a dirty region log of `len_bytes` for `volume`, on the
/// disks of `only` unless that is empty: the first as [`place_log_copy`] (an error
/// when no disk has room), then up to [`MAX_LOG_COPIES`] in all, each on a disk no
/// earlier copy uses, as long as one has room.
pub fn place_log(
    dg: &DiskGroupConfig,
    volume: &str,
    len_bytes: u64,
    only: &[String],
) -> Result<Vec<LogCopy>, AllocError> {
    let mut copies: Vec<LogCopy> = Vec::with_capacity(MAX_LOG_COPIES);
    while copies.len() < MAX_LOG_COPIES {
        let exclude: BTreeSet<&str> = copies.iter().map(|c| c.disk.as_str()).collect();
        match place_log_copy(dg, volume, len_bytes, &exclude, only) {
            Ok((disk, disk_offset_bytes)) => copies.push(LogCopy {
                disk,
                disk_offset_bytes,
            }),
            Err(e) if copies.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(copies)
}

/// A new dirty region log with regions of `region_bytes` for `volume` of `dg`
/// (the group with the volume's plexes placed, before the change's seq bump), on
/// the disks of `only` unless that is empty (a command that names disks).
pub fn allocate_log(
    dg: &DiskGroupConfig,
    volume: &str,
    volume_bytes: u64,
    region_bytes: u64,
    only: &[String],
) -> Result<VolumeLog, AllocError> {
    let (section_bytes, len_bytes) = log_geometry(volume, volume_bytes, region_bytes)?;
    let copies = place_log(dg, volume, len_bytes, only)?;
    Ok(VolumeLog {
        copies,
        len_bytes,
        section_bytes,
        region_bytes,
        log_id: new_log_id(dg),
    })
}

/// The log of `volume` (in `dg`, with its plexes grown to `new_size_bytes`) after a
/// grow: kept when it tracks the new size; else a new log of the same region size
/// elsewhere (the old one is freed), else the old extent with the region size
/// doubled until it fits. A new log gets a new id: the commit's quiesce drains the
/// writes, so every data plane starts the new log clean.
pub fn grow_log(
    dg: &DiskGroupConfig,
    volume: &str,
    new_size_bytes: u64,
) -> Result<Option<VolumeLog>, AllocError> {
    let Some(old) = dg.volume(volume).and_then(|v| v.log.clone()) else {
        return Ok(None);
    };
    if old.holds(new_size_bytes) {
        return Ok(Some(old));
    }
    let mut without = dg.clone();
    if let Some(v) = without.volumes.iter_mut().find(|v| v.name == volume) {
        std::sync::Arc::make_mut(v).log = None;
    }
    let moved = allocate_log(&without, volume, new_size_bytes, old.region_bytes, &[]);
    if moved.is_ok() {
        return moved.map(Some);
    }
    let mut region_bytes = old.region_bytes;
    while region_bytes < drl::MAX_REGION_BYTES {
        region_bytes = region_bytes.saturating_mul(2);
        let log = VolumeLog {
            region_bytes,
            log_id: new_log_id(dg),
            ..old.clone()
        };
        if log.holds(new_size_bytes) {
            return Ok(Some(log));
        }
    }
    moved.map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_support::cluster;
    use crate::model::{Change, ClusterConfig, ConfigError};

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    fn create(
        c: &ClusterConfig,
        volume: &str,
        size: u64,
        layout: VolumeLayout,
    ) -> Result<ClusterConfig, ConfigError> {
        c.apply(&Change::VolCreate {
            dg: "dg1".into(),
            volume: volume.into(),
            size_bytes: size,
            layout,
            log: Default::default(),
            disks: Vec::new(),
        })
    }

    fn grow(c: &ClusterConfig, volume: &str, size: u64) -> Result<ClusterConfig, ConfigError> {
        c.apply(&Change::VolGrow {
            dg: "dg1".into(),
            volume: volume.into(),
            new_size_bytes: size,
        })
    }

    fn stripe(columns: u32) -> VolumeLayout {
        VolumeLayout::Stripe {
            columns,
            stripe_unit_bytes: 64 << 10,
        }
    }

    fn plexes(c: &ClusterConfig, volume: &str) -> Vec<Plex> {
        c.disk_groups[0].volume(volume).unwrap().plexes.clone()
    }

    #[test]
    fn concat_fits_on_the_tightest_single_disk() {
        let c = cluster(&[("disk01", GIB), ("disk02", 200 * MIB)]);
        let c = create(&c, "vol1", 100 * MIB, VolumeLayout::Concat).unwrap();
        let p = &plexes(&c, "vol1")[0];
        assert_eq!(p.subdisks.len(), 1);
        assert_eq!(p.subdisks[0].disk, "disk02");
        assert_eq!(p.subdisks[0].len_bytes, 100 * MIB);
        assert_eq!(p.subdisks[0].disk_offset_bytes, MIB);
    }

    #[test]
    fn concat_spans_disks_when_no_single_disk_fits() {
        let c = cluster(&[("disk01", 60 * MIB), ("disk02", 50 * MIB)]);
        let c = create(&c, "vol1", 100 * MIB, VolumeLayout::Concat).unwrap();
        let p = &plexes(&c, "vol1")[0];
        assert_eq!(p.subdisks.len(), 2);
        assert_eq!(p.subdisks[0].disk, "disk01");
        assert_eq!(p.subdisks[0].len_bytes, 60 * MIB);
        assert_eq!(p.subdisks[1].plex_offset_bytes, 60 * MIB);
        assert_eq!(p.capacity_bytes(), 100 * MIB);
    }

    #[test]
    fn concat_rounds_up_to_the_alignment() {
        let c = cluster(&[("disk01", GIB)]);
        let c = create(&c, "vol1", 1000, VolumeLayout::Concat).unwrap();
        let v = c.disk_groups[0].volume("vol1").unwrap();
        assert_eq!(v.size_bytes, 1024);
        assert_eq!(v.plexes[0].subdisks[0].len_bytes, 4096);
    }

    #[test]
    fn stripe_puts_each_column_on_its_own_disk() {
        let c = cluster(&[("disk01", GIB), ("disk02", GIB), ("disk03", GIB)]);
        let c = create(&c, "vol1", 3 * MIB, stripe(3)).unwrap();
        let p = &plexes(&c, "vol1")[0];
        assert_eq!(p.subdisks.len(), 3);
        let disks: BTreeSet<_> = p.subdisks.iter().map(|sd| sd.disk.as_str()).collect();
        assert_eq!(disks.len(), 3);
        for (column, sd) in (0..).zip(&p.subdisks) {
            assert_eq!(sd.column, column);
            assert_eq!(sd.len_bytes, MIB);
        }
    }

    #[test]
    fn stripe_rounds_columns_to_whole_stripe_units() {
        let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
        // 100 KiB over 2 columns of 64 KiB units: one row of 128 KiB → 64 KiB per column.
        let c = create(&c, "vol1", 100 << 10, stripe(2)).unwrap();
        let p = &plexes(&c, "vol1")[0];
        assert!(p.subdisks.iter().all(|sd| sd.len_bytes == 64 << 10));
        assert_eq!(p.capacity_bytes(), 128 << 10);
    }

    #[test]
    fn mirror_plexes_never_share_a_disk() {
        let c = cluster(&[
            ("disk01", 600 * MIB),
            ("disk02", 600 * MIB),
            ("disk03", 600 * MIB),
            ("disk04", 600 * MIB),
        ]);
        // Each plex needs two disks.
        let c = create(&c, "vol1", GIB, VolumeLayout::Mirror { mirrors: 2 }).unwrap();
        let p = plexes(&c, "vol1");
        assert!(p[0].disks().is_disjoint(&p[1].disks()));
        assert!(p.iter().all(|p| p.capacity_bytes() == GIB));
    }

    #[test]
    fn mirror_stripe_uses_mirrors_times_columns_disks() {
        let disks: Vec<(String, u64)> = (1..=4).map(|i| (format!("disk{i:02}"), GIB)).collect();
        let disks: Vec<(&str, u64)> = disks.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        let c = cluster(&disks);
        let layout = VolumeLayout::MirrorStripe {
            mirrors: 2,
            columns: 2,
            stripe_unit_bytes: 64 << 10,
        };
        let c = create(&c, "vol1", 256 * MIB, layout).unwrap();
        let p = plexes(&c, "vol1");
        assert_eq!(p.len(), 2);
        let all: BTreeSet<_> = p.iter().flat_map(|p| p.disks()).collect();
        assert_eq!(all.len(), 4);
        let err = create(
            &c,
            "vol2",
            MIB,
            VolumeLayout::MirrorStripe {
                mirrors: 3,
                columns: 2,
                stripe_unit_bytes: 64 << 10,
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "volume vol2: 3 mirrors of 2 stripe columns of 512.0 KiB need 6 distinct disks, disk group dg1 has 4"
        );
    }

    #[test]
    fn refuses_mirrors_that_do_not_fit_on_distinct_disks() {
        let c = cluster(&[("disk01", 4 * GIB), ("disk02", 3 * GIB)]);
        let err = create(&c, "vol1", 10 * GIB, VolumeLayout::Mirror { mirrors: 2 }).unwrap_err();
        assert_eq!(
            err.to_string(),
            "volume vol1: not enough free space for 2 mirrors of 10.0 GiB on distinct disks (free space: disk01 4.0 GiB, disk02 3.0 GiB)"
        );
        // Two mirrors of 3.5 GiB: the space is there (7 GiB) but not on distinct disks.
        let err = create(&c, "vol1", 3584 * MIB, VolumeLayout::Mirror { mirrors: 2 }).unwrap_err();
        assert!(err.to_string().contains("on distinct disks"), "{err}");
        assert!(matches!(err, ConfigError::NoSpace(_)));
        // Nothing was allocated by the failed attempts.
        assert_eq!(c.disk_groups[0].volumes.len(), 0);
    }

    #[test]
    fn refuses_a_concat_larger_than_the_free_space() {
        let c = cluster(&[("disk01", GIB)]);
        let c = create(&c, "vol1", 900 * MIB, VolumeLayout::Concat).unwrap();
        let err = create(&c, "vol2", 200 * MIB, VolumeLayout::Concat).unwrap_err();
        assert_eq!(
            err.to_string(),
            "volume vol2: not enough free space for 200.0 MiB (free space: disk01 124.0 MiB)"
        );
    }

    #[test]
    fn refuses_a_stripe_with_more_columns_than_fitting_disks() {
        let c = cluster(&[("disk01", GIB), ("disk02", GIB), ("disk03", 10 * MIB)]);
        let err = create(&c, "vol1", 300 * MIB, stripe(3)).unwrap_err();
        assert!(err.to_string().starts_with("volume vol1: not enough free space for 3 stripe columns of 100.0 MiB on distinct disks"), "{err}");
        let err = create(&c, "vol1", 3 * MIB, stripe(4)).unwrap_err();
        assert!(err.to_string().contains("need 4 distinct disks"), "{err}");
        let bad_unit = VolumeLayout::Stripe {
            columns: 2,
            stripe_unit_bytes: 1000,
        };
        assert!(create(&c, "vol1", 3 * MIB, bad_unit).is_err());
        assert!(create(&c, "vol1", 3 * MIB, stripe(0)).is_err());
    }

    #[test]
    fn uses_free_holes_left_by_removed_volumes() {
        let c = cluster(&[("disk01", 30 * MIB)]);
        let c = create(&c, "a", 10 * MIB, VolumeLayout::Concat).unwrap();
        let c = create(&c, "b", 10 * MIB, VolumeLayout::Concat).unwrap();
        let c = create(&c, "c", 10 * MIB, VolumeLayout::Concat).unwrap();
        let c = c
            .apply(&Change::VolRm {
                dg: "dg1".into(),
                volume: "b".into(),
            })
            .unwrap();
        let c = create(&c, "d", 8 * MIB, VolumeLayout::Concat).unwrap();
        let sd = &plexes(&c, "d")[0].subdisks[0];
        assert_eq!(sd.disk_offset_bytes, 11 * MIB);
        assert_eq!(sd.name, "disk01-02");
        let free = free_extents(&c.disk_groups[0]);
        assert_eq!(
            free[0].1,
            vec![FreeExtent {
                offset_bytes: 19 * MIB,
                len_bytes: 2 * MIB
            }]
        );
    }

    #[test]
    fn grow_concat_extends_the_last_subdisk_in_place() {
        let c = cluster(&[("disk01", GIB)]);
        let c = create(&c, "vol1", 10 * MIB, VolumeLayout::Concat).unwrap();
        let c = grow(&c, "vol1", 30 * MIB).unwrap();
        let p = &plexes(&c, "vol1")[0];
        assert_eq!(p.subdisks.len(), 1);
        assert_eq!(p.subdisks[0].len_bytes, 30 * MIB);
        assert_eq!(
            c.disk_groups[0].volume("vol1").unwrap().size_bytes,
            30 * MIB
        );
    }

    #[test]
    fn grow_concat_adds_a_subdisk_when_blocked() {
        let c = cluster(&[("disk01", 100 * MIB), ("disk02", 100 * MIB)]);
        let c = create(&c, "vol1", 10 * MIB, VolumeLayout::Concat).unwrap();
        let c = create(&c, "vol2", 10 * MIB, VolumeLayout::Concat).unwrap();
        let c = grow(&c, "vol1", 150 * MIB).unwrap();
        let p = &plexes(&c, "vol1")[0];
        assert_eq!(p.capacity_bytes(), 150 * MIB);
        assert!(p.subdisks.len() >= 2);
        c.disk_groups[0].validate().unwrap();
    }

    #[test]
    fn grow_mirror_keeps_plexes_on_distinct_disks() {
        let c = cluster(&[
            ("disk01", 100 * MIB),
            ("disk02", 100 * MIB),
            ("disk03", 100 * MIB),
        ]);
        let c = create(&c, "vol1", 50 * MIB, VolumeLayout::Mirror { mirrors: 2 }).unwrap();
        let c = grow(&c, "vol1", 150 * MIB).unwrap_err();
        // 2 × 150 MiB needs 300 MiB but the third disk can serve only one plex… which fits:
        // plex 1: disk01 100 + disk03 50; plex 2: disk02 100 + needs 50 more on a disk
        // not used by plex 1 → none.
        assert!(
            c.to_string()
                .contains("not enough free space to grow plex vol1-02"),
            "{c}"
        );
        let c = cluster(&[
            ("disk01", 100 * MIB),
            ("disk02", 100 * MIB),
            ("disk03", 100 * MIB),
            ("disk04", 100 * MIB),
        ]);
        let c = create(&c, "vol1", 50 * MIB, VolumeLayout::Mirror { mirrors: 2 }).unwrap();
        let c = grow(&c, "vol1", 150 * MIB).unwrap();
        let p = plexes(&c, "vol1");
        assert!(p[0].disks().is_disjoint(&p[1].disks()));
        assert!(p.iter().all(|p| p.capacity_bytes() == 150 * MIB));
    }

    #[test]
    fn grow_stripe_extends_every_column() {
        let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
        let c = create(&c, "vol1", 2 * MIB, stripe(2)).unwrap();
        let c = create(&c, "vol2", 2 * MIB, VolumeLayout::Concat).unwrap();
        let c = grow(&c, "vol1", 10 * MIB).unwrap();
        let p = &plexes(&c, "vol1")[0];
        assert_eq!(p.column_len_bytes(0), 5 * MIB);
        assert_eq!(p.column_len_bytes(1), 5 * MIB);
        let disks0: BTreeSet<_> = p
            .subdisks
            .iter()
            .filter(|s| s.column == 0)
            .map(|s| &s.disk)
            .collect();
        let disks1: BTreeSet<_> = p
            .subdisks
            .iter()
            .filter(|s| s.column == 1)
            .map(|s| &s.disk)
            .collect();
        assert!(disks0.is_disjoint(&disks1));
        c.disk_groups[0].validate().unwrap();
    }

    #[test]
    fn grow_refuses_when_a_column_cannot_grow_and_changes_nothing() {
        let c = cluster(&[("disk01", 20 * MIB), ("disk02", 100 * MIB)]);
        let c = create(&c, "vol1", 20 * MIB, stripe(2)).unwrap();
        let err = grow(&c, "vol1", 100 * MIB).unwrap_err().to_string();
        assert!(err.contains("column"), "{err}");
        assert!(
            grow(&c, "vol1", 10 * MIB).is_err(),
            "shrinking through grow"
        );
        assert!(grow(&c, "nope", 10 * MIB)
            .unwrap_err()
            .to_string()
            .contains("volume nope does not exist"));
    }

    #[test]
    fn shrink_stripe_cuts_every_column_to_whole_stripe_units() {
        let c = cluster(&[("disk01", 10 * MIB), ("disk02", GIB)]);
        let c = create(&c, "vol1", 8 * MIB, stripe(2)).unwrap();
        // Column 0 is on disk01 (the tightest fit), grown in place to 8 MiB.
        let c = grow(&c, "vol1", 16 * MIB).unwrap();
        let c = c
            .apply(&Change::VolShrink {
                dg: "dg1".into(),
                volume: "vol1".into(),
                new_size_bytes: 3 * MIB + 1000,
                force: false,
            })
            .unwrap();
        let p = &plexes(&c, "vol1")[0];
        // 3 MiB + 1024 over 2 × 64 KiB rows → 25 rows → 1600 KiB per column.
        assert_eq!(p.column_len_bytes(0), 1600 << 10);
        assert_eq!(p.column_len_bytes(1), 1600 << 10);
        let free = free_extents(&c.disk_groups[0]);
        assert_eq!(free[0].1[0].len_bytes, 10 * MIB - (1600 << 10));
    }

    /// The subdisk name the allocator gives on `disk` the plain way: every candidate
    /// `{disk}-01`, `{disk}-02`, ... against every object name of the group.
    fn lowest_unused_name(g: &DiskGroupConfig, disk: &str, given: &[String]) -> String {
        let names: BTreeSet<&str> = g
            .volumes
            .iter()
            .flat_map(|v| v.object_names())
            .chain(given.iter().map(String::as_str))
            .collect();
        (1..)
            .map(|n| format!("{disk}-{n:02}"))
            .find(|c| !names.contains(c.as_str()))
            .unwrap()
    }

    #[test]
    fn random_change_sequences_keep_the_configuration_valid() {
        use rand::{Rng, SeedableRng};
        for seed in 0..20u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let sizes: Vec<(String, u64)> = (1..=6)
                .map(|i| (format!("disk{i:02}"), rng.gen_range(8..200) * MIB))
                .collect();
            let disks: Vec<(&str, u64)> = sizes.iter().map(|(n, s)| (n.as_str(), *s)).collect();
            let mut c = cluster(&disks);
            let mut applied = 0;
            for step in 0..150 {
                let names: Vec<String> = c.disk_groups[0]
                    .volumes
                    .iter()
                    .map(|v| v.name.clone())
                    .collect();
                let pick =
                    |rng: &mut rand::rngs::StdRng| names[rng.gen_range(0..names.len())].clone();
                let change = match rng.gen_range(0..10) {
                    0..=3 => {
                        let layout = match rng.gen_range(0..4) {
                            0 => VolumeLayout::Concat,
                            1 => stripe(rng.gen_range(1..4)),
                            2 => VolumeLayout::Mirror {
                                mirrors: rng.gen_range(1..4),
                            },
                            _ => VolumeLayout::MirrorStripe {
                                mirrors: rng.gen_range(1..3),
                                columns: rng.gen_range(1..3),
                                stripe_unit_bytes: 4096 << rng.gen_range(0..5),
                            },
                        };
                        // Some volumes are named like subdisks (and like names
                        // that only look so), which subdisk names must skip.
                        let volume = match rng.gen_range(0..8) {
                            0 => format!("disk0{}-{:02}", rng.gen_range(1..=6), step % 7 + 1),
                            1 => format!("disk01-{:03}", step % 5),
                            2 => format!("disk02-{}", step % 5),
                            _ => format!("v{step}"),
                        };
                        Change::VolCreate {
                            dg: "dg1".into(),
                            volume,
                            size_bytes: rng.gen_range(1..40 * MIB),
                            layout,
                            log: Default::default(),
                            disks: Vec::new(),
                        }
                    }
                    _ if names.is_empty() => continue,
                    4 | 5 => {
                        let volume = pick(&mut rng);
                        let size = c.disk_groups[0].volume(&volume).unwrap().size_bytes;
                        Change::VolGrow {
                            dg: "dg1".into(),
                            volume,
                            new_size_bytes: size + rng.gen_range(1..20 * MIB),
                        }
                    }
                    6 => {
                        let volume = pick(&mut rng);
                        let size = c.disk_groups[0].volume(&volume).unwrap().size_bytes;
                        Change::VolShrink {
                            dg: "dg1".into(),
                            volume,
                            new_size_bytes: rng.gen_range(1..=size),
                            force: false,
                        }
                    }
                    7 => Change::PlexAdd {
                        dg: "dg1".into(),
                        volume: pick(&mut rng),
                        layout: if rng.gen_bool(0.5) {
                            PlexLayout::Concat
                        } else {
                            PlexLayout::Stripe {
                                columns: 2,
                                stripe_unit_bytes: 64 << 10,
                            }
                        },
                        disks: Vec::new(),
                    },
                    8 => {
                        let volume = pick(&mut rng);
                        let v = c.disk_groups[0].volume(&volume).unwrap();
                        let plex = v.plexes[rng.gen_range(0..v.plexes.len())].name.clone();
                        Change::PlexRm {
                            dg: "dg1".into(),
                            plex,
                            force: rng.gen_bool(0.5),
                        }
                    }
                    _ => Change::VolRm {
                        dg: "dg1".into(),
                        volume: pick(&mut rng),
                    },
                };
                match c.apply(&change) {
                    Ok(next) => {
                        next.disk_groups[0].validate().unwrap();
                        c = next;
                        applied += 1;
                    }
                    Err(ConfigError::Invalid(msg)) if msg.contains("internal error") => {
                        panic!("seed {seed} step {step}: {change:?}: {msg}")
                    }
                    Err(_) => {}
                }
                // The names the allocator would give next on each disk: the lowest
                // numbers no object holds, as a plain search finds them.
                let g = &c.disk_groups[0];
                for (disk, _) in &disks {
                    let mut a = Allocator::new(g);
                    let mut given = Vec::new();
                    for _ in 0..3 {
                        let name = a.next_numbered_name(disk);
                        assert_eq!(
                            name,
                            lowest_unused_name(g, disk, &given),
                            "seed {seed} step {step}"
                        );
                        given.push(name);
                    }
                }
            }
            assert!(applied >= 40, "seed {seed}: only {applied} changes applied");
        }
    }

    #[test]
    fn refuses_a_plex_split_into_too_many_subdisks() {
        let c = cluster(&[("disk01", 600 * 4096)]);
        let mut c = c;
        for i in 0..600 {
            c = create(&c, &format!("v{i}"), 4096, VolumeLayout::Concat).unwrap();
        }
        for i in (0..600).step_by(2) {
            c = c
                .apply(&Change::VolRm {
                    dg: "dg1".into(),
                    volume: format!("v{i}"),
                })
                .unwrap();
        }
        let err = create(&c, "big", 300 * 4096, VolumeLayout::Concat).unwrap_err();
        assert!(err.to_string().contains("too fragmented"), "{err}");
        create(&c, "fits", 256 * 4096, VolumeLayout::Concat).unwrap();
    }

    #[test]
    fn allocation_is_deterministic() {
        let build = || {
            let c = cluster(&[("disk01", GIB), ("disk02", GIB), ("disk03", GIB)]);
            let c = create(&c, "a", 300 * MIB, VolumeLayout::Mirror { mirrors: 2 }).unwrap();
            let c = create(&c, "b", 100 * MIB, stripe(3)).unwrap();
            grow(&c, "a", 500 * MIB).unwrap()
        };
        assert_eq!(build(), build());
    }

    // ---- dirty region logs ----

    const MIRROR: VolumeLayout = VolumeLayout::Mirror { mirrors: 2 };

    fn create_with(
        c: &ClusterConfig,
        volume: &str,
        size: u64,
        layout: VolumeLayout,
        log: crate::model::LogPolicy,
    ) -> Result<ClusterConfig, ConfigError> {
        c.apply(&Change::VolCreate {
            dg: "dg1".into(),
            volume: volume.into(),
            size_bytes: size,
            layout,
            log,
            disks: Vec::new(),
        })
    }

    fn log_of(c: &ClusterConfig, volume: &str) -> Option<VolumeLog> {
        c.disk_groups[0].volume(volume).unwrap().log.clone()
    }

    fn free_bytes(c: &ClusterConfig) -> u64 {
        free_extents(&c.disk_groups[0])
            .iter()
            .flat_map(|(_, e)| e)
            .map(|e| e.len_bytes)
            .sum()
    }

    fn region(region_bytes: u64) -> crate::model::LogPolicy {
        crate::model::LogPolicy::On { region_bytes }
    }

    #[test]
    fn a_mirror_gets_a_log_on_a_disk_its_plexes_do_not_use_counted_as_used() {
        let c = cluster(&[("disk01", GIB), ("disk02", GIB), ("disk03", GIB)]);
        let before = free_bytes(&c);
        let c = create(&c, "vol1", 100 * MIB, MIRROR).unwrap();
        let log = log_of(&c, "vol1").unwrap();
        // Copy 1 off the plexes' disks; copy 2 on another disk (a plex's: the
        // only ones left).
        assert_eq!(log.disks(), "disk03+disk01");
        assert_eq!(log.region_bytes, drl::DEFAULT_REGION_BYTES);
        // 200 regions: one bitmap block and the header.
        assert_eq!(log.section_bytes, 2 * 4096);
        assert_eq!(log.len_bytes, LOG_SECTIONS * 2 * 4096);
        for copy in &log.copies {
            assert!(copy.disk_offset_bytes.is_multiple_of(ALLOC_ALIGN_BYTES));
        }
        // Placed by the change to seq 2 of group dgid1.
        assert_eq!(log.log_id, (u64::from(crc32c::crc32c(b"dgid1")) << 32) ^ 2);
        // Used space: the plexes and both copies of the log.
        assert_eq!(free_bytes(&c), before - 200 * MIB - 2 * log.len_bytes);
        // Nothing placed later overlaps it: fill disk03 completely.
        let rest = GIB - log.len_bytes;
        let c = create(&c, "fill", rest, VolumeLayout::Concat).unwrap();
        let sd = &plexes(&c, "fill")[0].subdisks;
        assert!(sd.iter().all(|sd| sd.disk == "disk03"), "{sd:?}");
        assert_eq!(free_extents(&c.disk_groups[0])[2].1, Vec::new());
        c.disk_groups[0].validate().unwrap();
    }

    #[test]
    fn a_log_goes_on_a_plex_disk_when_no_other_has_room() {
        let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
        let c = create(&c, "vol1", 100 * MIB, MIRROR).unwrap();
        let log = log_of(&c, "vol1").unwrap();
        assert_eq!(log.copies.len(), 2, "{log:?}");
        for p in plexes(&c, "vol1") {
            let sd = &p.subdisks[0];
            let plex_end = sd.disk_offset_bytes + sd.len_bytes;
            // Right after a plex, not inside it.
            for copy in &log.copies {
                assert!(
                    copy.disk_offset_bytes >= plex_end || copy.disk != sd.disk,
                    "{log:?} {sd:?}"
                );
            }
        }
        c.disk_groups[0].validate().unwrap();
    }

    #[test]
    fn no_log_without_mirrors_or_with_drl_off() {
        let c = cluster(&[("disk01", GIB), ("disk02", GIB), ("disk03", GIB)]);
        let c = create(&c, "concat", MIB, VolumeLayout::Concat).unwrap();
        let c = create(&c, "stripe", MIB, stripe(2)).unwrap();
        let c = create_with(&c, "off", MIB, MIRROR, crate::model::LogPolicy::Off).unwrap();
        let c = create_with(&c, "on", MIB, MIRROR, region(1 << 20)).unwrap();
        for v in ["concat", "stripe", "off"] {
            assert_eq!(log_of(&c, v), None, "{v}");
        }
        assert_eq!(log_of(&c, "on").unwrap().region_bytes, 1 << 20);
    }

    #[test]
    fn bad_region_sizes_are_refused_naming_the_volume() {
        let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
        for bad in [0, 3 << 16, 32 << 10, 2 << 30] {
            for layout in [MIRROR, VolumeLayout::Concat] {
                let err = create_with(&c, "vol1", MIB, layout, region(bad)).unwrap_err();
                let msg = err.to_string();
                assert!(
                    msg.contains("volume vol1") && msg.contains("region size"),
                    "{bad}: {msg}"
                );
            }
        }
        // Too many regions for a section: 2^24 regions of 64 KiB are 1 TiB.
        let big = cluster(&[("disk01", 1 << 41), ("disk02", 1 << 41)]);
        let err = create_with(&big, "vol1", (1 << 40) + 4096, MIRROR, region(64 << 10));
        assert!(err
            .unwrap_err()
            .to_string()
            .contains("larger --region-size"));
        create_with(&big, "vol1", 1 << 40, MIRROR, region(64 << 10)).unwrap();
    }

    #[test]
    fn a_mirror_without_room_for_its_log_is_refused_whole() {
        // Exactly room for the two plexes.
        let c = cluster(&[("disk01", 4 * MIB), ("disk02", 4 * MIB)]);
        let err = create(&c, "vol1", 4 * MIB, MIRROR).unwrap_err().to_string();
        assert!(
            err.contains("volume vol1") && err.contains("dirty region log"),
            "{err}"
        );
        assert!(err.contains("--drl off"), "{err}");
        assert!(c.disk_groups[0].volumes.is_empty());
        create_with(&c, "vol1", 4 * MIB, MIRROR, crate::model::LogPolicy::Off).unwrap();
    }

    #[test]
    fn grow_keeps_a_log_with_room_else_moves_it_else_doubles_its_regions() {
        let c = cluster(&[
            ("disk01", 40 * GIB),
            ("disk02", 40 * GIB),
            ("disk03", 40 * GIB),
        ]);
        let c = create(&c, "vol1", GIB, MIRROR).unwrap();
        let first = log_of(&c, "vol1").unwrap();
        // One bitmap block holds 32768 regions of 512 KiB: 16 GiB.
        let c = grow(&c, "vol1", 16 * GIB).unwrap();
        assert_eq!(log_of(&c, "vol1").unwrap(), first);
        let shrunk = c
            .apply(&Change::VolShrink {
                dg: "dg1".into(),
                volume: "vol1".into(),
                new_size_bytes: GIB,
                force: false,
            })
            .unwrap();
        assert_eq!(log_of(&shrunk, "vol1").unwrap(), first);
        let before = free_bytes(&c);
        let c = grow(&c, "vol1", 17 * GIB).unwrap();
        let moved = log_of(&c, "vol1").unwrap();
        assert_eq!(moved.region_bytes, first.region_bytes);
        assert_eq!(moved.section_bytes, 3 * 4096);
        assert_ne!(moved.log_id, first.log_id);
        assert!(moved.holds(17 * GIB));
        // The old log is free again: only the plexes' growth and the new log's
        // extra length are used.
        assert_eq!(moved.copies.len(), 2);
        assert_eq!(
            free_bytes(&c),
            before - 2 * GIB - 2 * (moved.len_bytes - first.len_bytes)
        );
        c.disk_groups[0].validate().unwrap();

        // No room anywhere for a larger log: the region size doubles in place.
        // disk03 holds exactly copy 1, disk01 copy 2 at its end; the grow takes the
        // rest of disk01 and disk02 (which keeps `small` free).
        let small = LOG_SECTIONS * 2 * 4096;
        let c = cluster(&[
            ("disk01", 16 * GIB + 64 * MIB + small),
            ("disk02", 16 * GIB + 64 * MIB + small),
            ("disk03", small),
        ]);
        let c = create(&c, "vol1", 16 * GIB, MIRROR).unwrap();
        let first = log_of(&c, "vol1").unwrap();
        assert_eq!(
            (first.disks(), first.len_bytes),
            ("disk03+disk01".into(), small)
        );
        let c = grow(&c, "vol1", 16 * GIB + 64 * MIB).unwrap();
        assert_eq!(free_bytes(&c), small);
        let doubled = log_of(&c, "vol1").unwrap();
        assert_eq!(doubled.region_bytes, 2 * first.region_bytes);
        assert_eq!(
            (&doubled.copies, doubled.len_bytes),
            (&first.copies, first.len_bytes)
        );
        assert_ne!(doubled.log_id, first.log_id);
        c.disk_groups[0].validate().unwrap();
    }

    #[test]
    fn vol_rm_frees_the_log_and_log_ids_stay_unique() {
        let c = cluster(&[("disk01", GIB), ("disk02", GIB), ("disk03", GIB)]);
        let empty = free_bytes(&c);
        let c = create(&c, "vol1", 10 * MIB, MIRROR).unwrap();
        let c = create(&c, "vol2", 10 * MIB, MIRROR).unwrap();
        assert_ne!(
            log_of(&c, "vol1").unwrap().log_id,
            log_of(&c, "vol2").unwrap().log_id
        );
        let rm = |c: &ClusterConfig, v: &str| {
            c.apply(&Change::VolRm {
                dg: "dg1".into(),
                volume: v.into(),
            })
            .unwrap()
        };
        let c = rm(&rm(&c, "vol1"), "vol2");
        assert_eq!(free_bytes(&c), empty);
    }

    fn rm_disk(c: &ClusterConfig, disk: &str) -> Result<ClusterConfig, ConfigError> {
        c.apply(&Change::DgRmDisk {
            dg: "dg1".into(),
            disk: disk.into(),
        })
    }

    #[test]
    fn two_log_copies_go_on_disks_the_plexes_do_not_use_first() {
        let c = cluster(&[
            ("disk01", GIB),
            ("disk02", GIB),
            ("disk03", GIB),
            ("disk04", GIB),
        ]);
        let c = create(&c, "vol1", 10 * MIB, MIRROR).unwrap();
        assert_eq!(log_of(&c, "vol1").unwrap().disks(), "disk03+disk04");
        // Only one disk with room: one copy, as before copies.
        let one = cluster(&[("disk01", GIB), ("disk02", 10 * MIB)]);
        let one = create(&one, "vol1", 10 * MIB, MIRROR).unwrap();
        assert_eq!(log_of(&one, "vol1").unwrap().disks(), "disk01");
        one.disk_groups[0].validate().unwrap();
    }

    #[test]
    fn rm_disk_moves_a_log_copy_to_another_disk_with_a_new_id() {
        let c = cluster(&[
            ("disk01", GIB),
            ("disk02", GIB),
            ("disk03", GIB),
            ("disk04", GIB),
            ("disk05", GIB),
        ]);
        let c = create(&c, "vol1", 10 * MIB, MIRROR).unwrap();
        let c = create(&c, "vol2", 10 * MIB, MIRROR).unwrap();
        let (l1, l2) = (log_of(&c, "vol1").unwrap(), log_of(&c, "vol2").unwrap());
        // vol1 on disk01+02 with its log on disk03+04; vol2 on disk05+03 (the
        // emptiest), its log on disk04+01 (off its plexes first, tightest fit).
        assert_eq!(l1.disks(), "disk03+disk04");
        assert!(l2.on_disk("disk04"), "{l2:?}");
        let c = rm_disk(&c, "disk04").unwrap();
        let g = &c.disk_groups[0];
        g.validate().unwrap();
        assert!(g.disk("disk04").is_none());
        for (v, old) in [("vol1", &l1), ("vol2", &l2)] {
            let new = log_of(&c, v).unwrap();
            assert_eq!(new.copies.len(), 2, "{v}: {new:?}");
            assert!(!new.on_disk("disk04"), "{v}: {new:?}");
            // The copy that was not on disk04 stays where it was.
            for copy in old.copies.iter().filter(|c| c.disk != "disk04") {
                assert!(new.copies.contains(copy), "{v}: {new:?}");
            }
            assert_ne!(new.copies[0].disk, new.copies[1].disk);
            assert_eq!(
                (new.len_bytes, new.section_bytes, new.region_bytes),
                (old.len_bytes, old.section_bytes, old.region_bytes)
            );
            // Moved: a new id, so every data plane re-inits its sections.
            assert_ne!(new.log_id, old.log_id, "{v}");
        }
        assert_ne!(
            log_of(&c, "vol1").unwrap().log_id,
            log_of(&c, "vol2").unwrap().log_id
        );
    }

    #[test]
    fn rm_disk_of_a_log_copy_without_room_elsewhere_is_refused_naming_it() {
        // disk03 holds vol1's log copy 1; its copy 2 is on disk01; disk02 is full.
        let c = cluster(&[("disk01", GIB), ("disk02", 10 * MIB), ("disk03", GIB)]);
        let c = create(&c, "vol1", 10 * MIB, MIRROR).unwrap();
        let log = log_of(&c, "vol1").unwrap();
        assert_eq!(log.disks(), "disk03+disk01");
        let err = rm_disk(&c, "disk03").unwrap_err();
        assert!(matches!(err, ConfigError::InUse(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("disk disk03")
                && msg.contains("dirty region log of volume vol1")
                && msg.contains("cannot move"),
            "{msg}"
        );
    }

    #[test]
    fn plex_add_gives_a_log_and_plex_rm_to_one_plex_frees_it() {
        let c = cluster(&[("disk01", GIB), ("disk02", GIB), ("disk03", GIB)]);
        let empty = free_bytes(&c);
        let c = create(&c, "vol1", 10 * MIB, VolumeLayout::Concat).unwrap();
        let c = c
            .apply(&Change::PlexAdd {
                dg: "dg1".into(),
                volume: "vol1".into(),
                layout: PlexLayout::Concat,
                disks: Vec::new(),
            })
            .unwrap();
        let log = log_of(&c, "vol1").unwrap();
        assert_eq!(log.region_bytes, drl::DEFAULT_REGION_BYTES);
        let c = c
            .apply(&Change::PlexRm {
                dg: "dg1".into(),
                plex: "vol1-02".into(),
                force: false,
            })
            .unwrap();
        assert_eq!(log_of(&c, "vol1"), None);
        assert_eq!(free_bytes(&c), empty - 10 * MIB);
        // A mirror made with --drl off keeps no log when a third plex comes.
        let c = create_with(&c, "off", MIB, MIRROR, crate::model::LogPolicy::Off).unwrap();
        let c = c
            .apply(&Change::PlexAdd {
                dg: "dg1".into(),
                volume: "off".into(),
                layout: PlexLayout::Concat,
                disks: Vec::new(),
            })
            .unwrap();
        assert_eq!(log_of(&c, "off"), None);
    }
}
