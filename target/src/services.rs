//! What every layer above the reactors shares in one target: the reactors (and
//! their buffer pool), the bdev registry with its descriptors' event callbacks,
//! and the event stream. [`crate::Target`] (the composition root) creates one
//! [`Services`] and hands an `Arc` of it down to the volume module, the lease and
//! the frontends, so none of them depends on the [`crate::Target`] above them.
//! Everything here is control-path code: the I/O path never touches the
//! registry's lock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::bdev::events::BdevEvents;
use crate::bdev::{Bdev, BdevDesc, BdevEvent, BdevEventFn, BdevInfo};
use crate::buf::BufPool;
use crate::error::TargetError;
use crate::event::{Event, EventBus};
use crate::reactor::ReactorSet;

/// The reactors, bdev registry and event stream of one target.
pub struct Services {
    reactors: ReactorSet,
    bdevs: Mutex<BTreeMap<String, Arc<dyn Bdev>>>,
    events: EventBus,
    /// Open bdev descriptors and their event callbacks (resize, remove).
    bdev_events: Arc<BdevEvents>,
}

impl Services {
    /// Services over started reactors, with an empty registry.
    pub(crate) fn new(reactors: ReactorSet) -> Services {
        Services {
            reactors,
            bdevs: Mutex::new(BTreeMap::new()),
            events: EventBus::default(),
            bdev_events: Arc::default(),
        }
    }

    /// The reactors.
    pub fn reactors(&self) -> &ReactorSet {
        &self.reactors
    }

    /// The buffer pool.
    pub fn pool(&self) -> &Arc<BufPool> {
        self.reactors.pool()
    }

    fn bdevs(&self) -> MutexGuard<'_, BTreeMap<String, Arc<dyn Bdev>>> {
        self.bdevs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a bdev under its name.
    pub fn add_bdev(&self, bdev: Arc<dyn Bdev>) -> Result<(), TargetError> {
        let mut map = self.bdevs();
        let name = bdev.name().to_string();
        if name.is_empty() || name.len() > 128 || name.contains(['/', ' ', '\0']) {
            return Err(TargetError::invalid(
                format!("bdev {name:?}"),
                "names are 1..128 characters without '/', spaces or NUL",
            ));
        }
        if map.contains_key(&name) {
            return Err(TargetError::Exists { kind: "bdev", name });
        }
        log::info!("bdev {name}: created ({})", bdev.info().kind);
        map.insert(name, bdev);
        Ok(())
    }

    /// The bdev named `name`.
    pub fn bdev(&self, name: &str) -> Result<Arc<dyn Bdev>, TargetError> {
        self.bdevs()
            .get(name)
            .cloned()
            .ok_or_else(|| TargetError::NotFound {
                kind: "bdev",
                name: name.to_string(),
            })
    }

    /// Every bdev, by name.
    pub fn list_bdevs(&self) -> Vec<BdevInfo> {
        self.bdevs().values().map(|b| b.info()).collect()
    }

    /// Takes the bdev named `name` out of the registry (no event announced: the
    /// caller announces the removal once its users' channels are gone).
    pub(crate) fn unregister_bdev(&self, name: &str) -> Option<Arc<dyn Bdev>> {
        self.bdevs().remove(name)
    }

    /// Opens the bdev named `name` with an event callback (SPDK's bdev open with
    /// an event callback): `cb` hears its resizes and its removal until the
    /// descriptor is dropped. Frontends hold one per LUN and namespace.
    pub fn open_bdev(&self, name: &str, cb: BdevEventFn) -> Result<BdevDesc, TargetError> {
        self.bdev(name)?;
        self.bdev_events
            .open(name, cb)
            .map_err(|e| TargetError::invalid(format!("bdev {name}"), e))
    }

    /// Tells every descriptor open on `name` that `ev` happened (the volume layer
    /// after a committed size change, the registry after a removal).
    pub(crate) fn announce_bdev_event(&self, name: &str, ev: BdevEvent) {
        let n = self.bdev_events.announce(name, ev);
        log::debug!("bdev {name}: {ev:?} announced to {n} user(s)");
    }

    /// Removes a bdev from the registry without the in-use check (the volume
    /// module uses it for the volume bdevs it owns).
    pub(crate) fn remove_bdev_entry(&self, name: &str) {
        self.unregister_bdev(name);
        self.announce_bdev_event(name, BdevEvent::Remove);
    }

    /// A new subscription to events. Each subscriber has its own bounded queue.
    pub fn subscribe(&self) -> smol::channel::Receiver<Event> {
        self.events.subscribe()
    }

    /// Publishes an event to every subscriber without blocking (safe on reactors).
    /// Returns how many subscribers got it.
    pub fn publish(&self, ev: Event) -> usize {
        self.events.publish(ev)
    }
}
