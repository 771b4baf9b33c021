//! An index of what a disk group's volumes hold that other volumes must not: their
//! extents (subdisks and dirty region log copies) by disk and sorted by offset,
//! their object names, the numbers of the numbered names among them (`{prefix}-{nn}`,
//! as subdisks and plexes are named), their log ids; in flat sorted arrays. What a
//! small change's validation ([`DiskGroupConfig::validate_change`]), allocation (a
//! grow's free run, the free-space map, a new subdisk's or plex's name) and name
//! check ([`DiskGroupConfig::object_named`]) look up instead of walking every
//! volume of the group (issue 12: a change costs O(change)).
//!
//! An index belongs to one configuration held in an `Arc` (the model's groups and
//! the disk writes' records): [`remember`] keeps the pair in a small process-wide
//! table, and [`cached`] finds it again by the configuration's address. The table
//! holds the `Arc`, so while an entry lives its configuration can neither change
//! (an `Arc` shared is never mutated) nor be freed (no other configuration can
//! take its address): an index is never applied to a configuration it was not
//! made from. A configuration not in the table gets no index; its callers walk the
//! volumes as before.
//!
//! Names and prefixes are kept as 64-bit hashes: a lookup that finds one may have
//! met another name with the same hash, so validation then walks the volumes (which
//! also names what clashes), and a subdisk number taken for used is at worst
//! skipped. A name absent from the index is absent from the group.
//!
//! [`remember`] makes a configuration's index from its predecessor's when that one
//! is in the table: the predecessor's entries less those of the volumes the change
//! replaced or removed, plus those of the volumes it added (one pass over flat
//! arrays, no volume read but the changed ones); else from every volume.

use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use super::{DiskGroupConfig, PlexState, Volume};

/// Configurations (with their indexes) the table holds, at most: a node's groups
/// before and after a change, a disk write's record and the one before it, for a
/// few groups and the several nodes a test process can hold. An index costs about
/// 260 bytes per 2-way mirrored volume (about 1.3 MB at 5,000 volumes).
pub const MAX_INDEXED: usize = 16;

/// Configurations of one disk group (by id) the table holds, at most: the one a
/// change is made from and the one it makes, and the one the disk write remembers.
pub const MAX_INDEXED_PER_GROUP: usize = 3;

/// One used extent of a disk (ordered by offset first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Used {
    /// Offset on the disk, bytes.
    pub offset: u64,
    /// Length, bytes.
    pub len: u64,
    /// The volume holding it: the address of its allocation in the indexed
    /// configuration (compared, never dereferenced).
    owner: usize,
}

/// A key a volume holds: a name's hash, a (prefix hash, number) pair, a log id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Held {
    key: u64,
    n: u64,
    owner: usize,
}

/// What one configuration's volumes hold, in sorted flat arrays.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct GroupIndex {
    /// Used extents by disk name, each list sorted by offset.
    disks: Vec<(String, Vec<Used>)>,
    /// Every object name (volume, plex, subdisk), hashed (`n` 0).
    names: Vec<Held>,
    /// Every object name of the form the allocator numbers subdisks and plexes
    /// with (`{prefix}-{n}`): the prefix hashed, and `n`.
    numbers: Vec<Held>,
    /// Every dirty region log id (`key`; `n` 0).
    log_ids: Vec<Held>,
    /// The volumes with a SYNCING plex and an ACTIVE one to copy from (owners,
    /// sorted): usually none.
    syncing: Vec<usize>,
}

/// The address that names volume `v` in an index.
pub fn owner_of(v: &Volume) -> usize {
    v as *const Volume as usize
}

/// Whether volume `v` has a SYNCING plex and an ACTIVE one to copy it from.
pub fn resyncs(v: &Volume) -> bool {
    v.plexes.iter().any(|p| p.state == PlexState::Active)
        && v.plexes.iter().any(|p| p.state == PlexState::Syncing)
}

/// The hash a name is kept under.
fn hash_of(name: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    name.hash(&mut h);
    h.finish()
}

impl GroupIndex {
    /// The index of every volume of `g`.
    pub fn build(g: &DiskGroupConfig) -> GroupIndex {
        let mut index = GroupIndex::default();
        for v in &g.volumes {
            index.add(v);
        }
        index.sort();
        index
    }

    /// The index of `after` from this one, the index of `before`: less the entries
    /// of `gone` (volumes of `before` that `after` does not hold), plus those of
    /// `added` (volumes of `after` that `before` does not hold). Each list is one
    /// pass: what is kept (sorted already) merged with the few entries added.
    fn derive(&self, gone: &[&Volume], added: &[&Volume]) -> GroupIndex {
        let mut gone: Vec<usize> = gone.iter().map(|v| owner_of(v)).collect();
        gone.sort_unstable();
        let kept = |owner: usize| gone.binary_search(&owner).is_err();
        let mut fresh = GroupIndex::default();
        for v in added {
            fresh.add(v);
        }
        let mut disks: Vec<(String, Vec<Used>)> = self
            .disks
            .iter()
            .map(|(disk, used)| {
                let extra = fresh
                    .disks
                    .iter()
                    .position(|(d, _)| d == disk)
                    .map(|i| fresh.disks.swap_remove(i).1)
                    .unwrap_or_default();
                let used = merge(used, |u| kept(u.owner), extra);
                (disk.clone(), used)
            })
            .collect();
        disks.append(&mut fresh.disks);
        let mut index = GroupIndex {
            disks,
            names: merge(&self.names, |h| kept(h.owner), fresh.names),
            numbers: merge(&self.numbers, |h| kept(h.owner), fresh.numbers),
            log_ids: merge(&self.log_ids, |h| kept(h.owner), fresh.log_ids),
            syncing: merge(&self.syncing, |o| kept(*o), fresh.syncing),
        };
        index.sort_disks();
        index
    }

    fn add(&mut self, v: &Volume) {
        let owner = owner_of(v);
        for (disk, offset, len) in v.used_extents() {
            let used = Used { offset, len, owner };
            match self.disks.iter_mut().find(|(d, _)| d == disk) {
                Some((_, list)) => list.push(used),
                None => self.disks.push((disk.to_string(), vec![used])),
            }
        }
        for name in v.object_names() {
            let key = hash_of(name);
            self.names.push(Held { key, n: 0, owner });
            if let Some((prefix, n)) = super::alloc::subdisk_number(name) {
                let key = hash_of(prefix);
                self.numbers.push(Held { key, n, owner });
            }
        }
        if let Some(log) = &v.log {
            self.log_ids.push(Held {
                key: log.log_id,
                n: 0,
                owner,
            });
        }
        if resyncs(v) {
            self.syncing.push(owner);
        }
    }

    /// Every list sorted: an index made from every volume.
    fn sort(&mut self) {
        for (_, list) in &mut self.disks {
            list.sort_unstable();
        }
        self.names.sort_unstable();
        self.numbers.sort_unstable();
        self.log_ids.sort_unstable();
        self.syncing.sort_unstable();
        self.sort_disks();
    }

    /// The disks by name, none without extents: an index made either way is the
    /// same.
    fn sort_disks(&mut self) {
        self.disks.retain(|(_, list)| !list.is_empty());
        self.disks.sort_by(|a, b| a.0.cmp(&b.0));
    }

    /// The used extents of `disk`, sorted by offset (empty: none).
    pub fn on(&self, disk: &str) -> &[Used] {
        self.disks
            .iter()
            .find(|(d, _)| d == disk)
            .map_or(&[], |(_, list)| list.as_slice())
    }

    /// Whether an extent of `disk` held by a volume not among `except` (owners,
    /// sorted) overlaps `[offset, offset + len)`. The indexed configuration is a
    /// valid one (only those are remembered), so its extents are disjoint: of those
    /// starting before `offset`, only the last can reach into the range.
    pub fn overlaps(&self, disk: &str, offset: u64, len: u64, except: &[usize]) -> bool {
        let end = offset.saturating_add(len);
        let list = self.on(disk);
        let first = list.partition_point(|u| u.offset < offset);
        let reaching = first
            .checked_sub(1)
            .map(|i| &list[i])
            .filter(|u| u.offset.saturating_add(u.len) > offset);
        let inside = list[first..].iter().take_while(|u| u.offset < end);
        reaching
            .into_iter()
            .chain(inside)
            .any(|u| except.binary_search(&u.owner).is_err())
    }

    /// Whether a volume not among `except` (owners, sorted) may hold object name
    /// `name`: false means none does; true, that one does or that another name
    /// has its hash.
    pub fn may_hold_name(&self, name: &str, except: &[usize]) -> bool {
        held_by_others(&self.names, hash_of(name), except)
    }

    /// Whether a volume not among `except` (owners, sorted) holds log id `id`.
    pub fn holds_log_id(&self, id: u64, except: &[usize]) -> bool {
        held_by_others(&self.log_ids, id, except)
    }

    /// The volumes with a SYNCING plex and an ACTIVE one to copy from, as owners
    /// (sorted; compare with [`owner_of`]).
    pub fn resyncing(&self) -> &[usize] {
        &self.syncing
    }

    /// The numbers `n` of the object names `{prefix}-{n}` (as the allocator numbers
    /// subdisks and plexes) in use, sorted, each once; a number another prefix with
    /// the same hash uses may be among them.
    pub fn numbers(&self, prefix: &str) -> Vec<u64> {
        let key = hash_of(prefix);
        let from = self.numbers.partition_point(|h| h.key < key);
        let mut out: Vec<u64> = self.numbers[from..]
            .iter()
            .take_while(|h| h.key == key)
            .map(|h| h.n)
            .collect();
        out.dedup();
        out
    }
}

/// The entries of `list` (sorted) that `keep` keeps, with `added` (any order)
/// merged in: sorted, one pass.
fn merge<T: Copy + Ord>(list: &[T], keep: impl Fn(&T) -> bool, mut added: Vec<T>) -> Vec<T> {
    added.sort_unstable();
    let mut out = Vec::with_capacity(list.len() + added.len());
    let mut added = added.into_iter().peekable();
    for k in list.iter().filter(|k| keep(k)) {
        while let Some(a) = added.next_if(|a| a < k) {
            out.push(a);
        }
        out.push(*k);
    }
    out.extend(added);
    out
}

/// Whether `list` (sorted) holds `key` for an owner not among `except` (sorted).
fn held_by_others(list: &[Held], key: u64, except: &[usize]) -> bool {
    let from = list.partition_point(|h| h.key < key);
    list[from..]
        .iter()
        .take_while(|h| h.key == key)
        .any(|h| except.binary_search(&h.owner).is_err())
}

/// Every configuration the table holds, with its index, oldest first.
type Table = VecDeque<(Arc<DiskGroupConfig>, Arc<GroupIndex>)>;

static TABLE: Mutex<Table> = Mutex::new(VecDeque::new());

fn table() -> std::sync::MutexGuard<'static, Table> {
    // A panic while the table was held leaves it consistent (every push and pop is
    // whole): take it over.
    TABLE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The index of `g` when the table holds `g` itself (this very allocation).
pub fn cached(g: &DiskGroupConfig) -> Option<Arc<GroupIndex>> {
    let at = g as *const DiskGroupConfig;
    table()
        .iter()
        .rev()
        .find(|(c, _)| Arc::as_ptr(c) == at)
        .map(|(_, i)| Arc::clone(i))
}

/// Puts `g` in the table with its index: made from `before`'s (the configuration
/// `g` was changed from) when the table holds `before`, else from every volume.
/// Only for a configuration that passed validation (its extents are disjoint).
pub fn remember(g: &Arc<DiskGroupConfig>, before: Option<&DiskGroupConfig>) {
    if cached(g).is_some() {
        return;
    }
    let derived = before
        .filter(|b| b.disks == g.disks)
        .and_then(|b| cached(b).map(|i| (b, i)))
        .map(|(b, i)| {
            let (_, changed, gone) = super::validate::left_alone(&b.volumes, &g.volumes);
            i.derive(&gone, &changed)
        });
    let index = Arc::new(derived.unwrap_or_else(|| GroupIndex::build(g)));
    debug_assert_eq!(*index, GroupIndex::build(g), "derived index of {}", g.name);
    let mut t = table();
    let same_group = t.iter().filter(|(c, _)| c.id == g.id).count();
    if same_group >= MAX_INDEXED_PER_GROUP {
        if let Some(oldest) = t.iter().position(|(c, _)| c.id == g.id) {
            t.remove(oldest);
        }
    } else if t.len() >= MAX_INDEXED {
        t.pop_front();
    }
    t.push_back((Arc::clone(g), index));
}
