//! Bdev events: what a user of a bdev hears about it while it has it open.
//!
//! The model is SPDK's `spdk_bdev_open_ext` with an event callback: a user (a
//! frontend's iSCSI LUN, an NVMe namespace) opens a [`BdevDesc`] on a bdev with a
//! callback, and the layer that owns the bdev announces [`BdevEvent`]s on it: the
//! volume layer a committed size change ([`BdevEvent::Resize`]), the registry a
//! removal ([`BdevEvent::Remove`]). Dropping the descriptor ends the subscription.
//!
//! Callbacks run on the control thread that made the change (a commit, a delete),
//! after the change is visible (`Bdev::size_bytes` already answers the new size),
//! never on a reactor and never with the registry's lock held; they must not block
//! (frontends set atomics and post reactor messages).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

/// Most descriptors open on the bdevs of one target at once (every LUN and
/// namespace holds one); opening one more is refused.
pub const MAX_BDEV_DESCS: usize = 16384;

/// What happened to an open bdev.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BdevEvent {
    /// The bdev's capacity changed (a committed volume layout with a new size);
    /// `size_bytes` is the new capacity.
    Resize {
        /// The new capacity in bytes.
        size_bytes: u64,
    },
    /// The bdev left the registry; its users should stop using it.
    Remove,
}

/// A descriptor's event callback: the bdev's name and the event.
pub type BdevEventFn = Box<dyn Fn(&str, BdevEvent) + Send + Sync>;

type Callback = Arc<dyn Fn(&str, BdevEvent) + Send + Sync>;

#[derive(Default)]
struct Inner {
    next_id: u64,
    /// Open descriptors by id: the bdev's name and the callback.
    descs: BTreeMap<u64, (String, Callback)>,
}

/// The open descriptors of one target's bdevs (the target holds one).
#[derive(Default)]
pub struct BdevEvents {
    inner: Mutex<Inner>,
}

/// An open bdev with an event callback; dropping it closes it (no more events).
pub struct BdevDesc {
    name: String,
    id: u64,
    events: Weak<BdevEvents>,
}

impl BdevDesc {
    /// The name of the bdev this descriptor is open on.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl std::fmt::Debug for BdevDesc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BdevDesc({} #{})", self.name, self.id)
    }
}

impl Drop for BdevDesc {
    fn drop(&mut self) {
        if let Some(ev) = self.events.upgrade() {
            ev.lock().descs.remove(&self.id);
        }
    }
}

impl BdevEvents {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens a descriptor on the bdev named `name` that hears its events through
    /// `cb`. Refused past [`MAX_BDEV_DESCS`] open descriptors.
    pub fn open(self: &Arc<Self>, name: &str, cb: BdevEventFn) -> Result<BdevDesc, String> {
        let mut g = self.lock();
        if g.descs.len() >= MAX_BDEV_DESCS {
            return Err(format!(
                "{MAX_BDEV_DESCS} bdev descriptors are open already (MAX_BDEV_DESCS)"
            ));
        }
        let id = g.next_id;
        g.next_id += 1;
        g.descs.insert(id, (name.to_string(), Arc::from(cb)));
        Ok(BdevDesc {
            name: name.to_string(),
            id,
            events: Arc::downgrade(self),
        })
    }

    /// Delivers `ev` to every descriptor open on the bdev named `name` (callbacks
    /// run without the lock held); returns how many heard it.
    pub fn announce(&self, name: &str, ev: BdevEvent) -> usize {
        let cbs: Vec<Callback> = self
            .lock()
            .descs
            .values()
            .filter(|(n, _)| n == name)
            .map(|(_, cb)| Arc::clone(cb))
            .collect();
        for cb in &cbs {
            cb(name, ev);
        }
        cbs.len()
    }

    /// How many descriptors are open (on every bdev).
    pub fn open_count(&self) -> usize {
        self.lock().descs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[test]
    fn events_reach_open_descriptors_of_their_bdev_only() {
        let ev = Arc::new(BdevEvents::default());
        let seen = Arc::new(AtomicU64::new(0));
        let s = Arc::clone(&seen);
        let d = ev
            .open(
                "vol0",
                Box::new(move |n, e| {
                    assert_eq!(n, "vol0");
                    if let BdevEvent::Resize { size_bytes } = e {
                        s.store(size_bytes, Ordering::SeqCst);
                    }
                }),
            )
            .unwrap();
        assert_eq!(d.name(), "vol0");
        assert_eq!(ev.announce("vol1", BdevEvent::Resize { size_bytes: 1 }), 0);
        assert_eq!(
            ev.announce("vol0", BdevEvent::Resize { size_bytes: 8192 }),
            1
        );
        assert_eq!(seen.load(Ordering::SeqCst), 8192);
        drop(d);
        assert_eq!(ev.open_count(), 0);
        assert_eq!(ev.announce("vol0", BdevEvent::Remove), 0);
    }
}
