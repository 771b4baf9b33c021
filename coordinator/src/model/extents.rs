//! An index of a disk group's used extents (subdisks and dirty region log copies),
//! by disk and sorted by offset, in flat arrays: what a small change's validation
//! ([`DiskGroupConfig::validate_change`]) and a grow's allocation look up instead of
//! walking every volume of the group (issue 12: a change costs O(change)).
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
//! [`remember`] makes a configuration's index from its predecessor's when that one
//! is in the table: the predecessor's entries less those of the volumes the change
//! replaced or removed, plus those of the volumes it added (one pass over flat
//! arrays, no volume read but the changed ones); else from every volume.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use super::{DiskGroupConfig, Volume};

/// Configurations (with their indexes) the table holds, at most: a node's groups
/// before and after a change, a disk write's record and the one before it, for a
/// few groups and the several nodes a test process can hold.
pub const MAX_INDEXED: usize = 16;

/// One used extent of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Used {
    /// Offset on the disk, bytes.
    pub offset: u64,
    /// Length, bytes.
    pub len: u64,
    /// The volume holding it: the address of its allocation in the indexed
    /// configuration (compared, never dereferenced).
    owner: usize,
}

/// The used extents of one configuration, by disk name, each list sorted by offset.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ExtentIndex {
    disks: Vec<(String, Vec<Used>)>,
}

/// The address that names volume `v` in an index.
pub fn owner_of(v: &Volume) -> usize {
    v as *const Volume as usize
}

impl ExtentIndex {
    /// The index of every volume of `g`.
    pub fn build(g: &DiskGroupConfig) -> ExtentIndex {
        let mut index = ExtentIndex::default();
        for v in &g.volumes {
            index.add(v);
        }
        index.sort();
        index
    }

    /// The index of `after` from this one, the index of `before`: less the extents
    /// of `gone` (volumes of `before` that `after` does not hold), plus those of
    /// `added` (volumes of `after` that `before` does not hold).
    fn derive(&self, gone: &[&Volume], added: &[&Volume]) -> ExtentIndex {
        let mut gone: Vec<usize> = gone.iter().map(|v| owner_of(v)).collect();
        gone.sort_unstable();
        let mut index = ExtentIndex {
            disks: self
                .disks
                .iter()
                .map(|(disk, used)| {
                    let kept = used
                        .iter()
                        .filter(|u| gone.binary_search(&u.owner).is_err())
                        .copied()
                        .collect();
                    (disk.clone(), kept)
                })
                .collect(),
        };
        for v in added {
            index.add(v);
        }
        index.sort();
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
    }

    /// Each disk's list by offset (mostly sorted already: a derived list has a few
    /// entries appended), the disks by name, none empty: an index made either way
    /// is the same.
    fn sort(&mut self) {
        self.disks.retain(|(_, list)| !list.is_empty());
        self.disks.sort_by(|a, b| a.0.cmp(&b.0));
        for (_, list) in &mut self.disks {
            list.sort_by_key(|u| u.offset);
        }
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
}

/// Every configuration the table holds, with its index, oldest first.
static TABLE: Mutex<VecDeque<(Arc<DiskGroupConfig>, Arc<ExtentIndex>)>> =
    Mutex::new(VecDeque::new());

fn table() -> std::sync::MutexGuard<'static, VecDeque<(Arc<DiskGroupConfig>, Arc<ExtentIndex>)>> {
    // A panic while the table was held leaves it consistent (every push and pop is
    // whole): take it over.
    TABLE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The index of `g` when the table holds `g` itself (this very allocation).
pub fn cached(g: &DiskGroupConfig) -> Option<Arc<ExtentIndex>> {
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
    let index = Arc::new(derived.unwrap_or_else(|| ExtentIndex::build(g)));
    debug_assert_eq!(
        *index,
        ExtentIndex::build(g),
        "derived extent index of {}",
        g.name
    );
    let mut t = table();
    if t.len() >= MAX_INDEXED {
        t.pop_front();
    }
    t.push_back((Arc::clone(g), index));
}
