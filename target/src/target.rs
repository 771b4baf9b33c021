//! A running target: its reactors, buffer pool, bdev registry and event stream.
//! Several targets can live in one process (no globals); everything here is
//! control-path code, the I/O path never touches the registry's lock.

pub use plexd_target_api::info::{DetachPolicy, Event, EVENT_QUEUE_DEPTH};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::bdev::{Bdev, BdevDesc, BdevEvent, BdevEventFn, BdevInfo};
use crate::buf::{BufPool, PoolConfig};
use crate::frontend::scsi::pr_cluster::{PrBroker, PrOutResult};
use crate::lease::LeaseStatus;
use crate::reactor::{ReactorConfig, ReactorSet};
use crate::volume::{PlexState, VolumeInfo, VolumeSpec};

/// A typed error of the data plane's control operations; every variant names the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// No such object.
    #[error("{kind} {name}: not found")]
    NotFound {
        /// `bdev`, `volume`, `plex`...
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The name is taken.
    #[error("{kind} {name}: already exists")]
    Exists {
        /// `bdev`, `volume`...
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The object is used by another one.
    #[error("{kind} {name}: in use by {user}")]
    InUse {
        /// `bdev`...
        kind: &'static str,
        /// Its name.
        name: String,
        /// Who uses it.
        user: String,
    },
    /// A request that makes no sense for the object.
    #[error("{object}: {reason}")]
    Invalid {
        /// The object, e.g. `volume vol1`.
        object: String,
        /// Why.
        reason: String,
    },
    /// The data plane did not answer in time.
    #[error("{object}: {reason}")]
    Timeout {
        /// The object, e.g. `volume vol1`.
        object: String,
        /// What did not finish, naming the reactors.
        reason: String,
    },
    /// An operating-system error.
    #[error("{object}: {reason}")]
    Io {
        /// The object.
        object: String,
        /// The OS error text.
        reason: String,
    },
}

impl TargetError {
    /// Shorthand for [`TargetError::Invalid`].
    pub fn invalid(object: impl Into<String>, reason: impl Into<String>) -> Self {
        TargetError::Invalid {
            object: object.into(),
            reason: reason.into(),
        }
    }
}

/// How the target starts.
#[derive(Clone, Debug, Default)]
pub struct TargetConfig {
    /// Reactor threads.
    pub reactors: ReactorConfig,
    /// I/O buffer pool.
    pub pool: PoolConfig,
}

struct Subscribers {
    senders: Vec<smol::channel::Sender<Event>>,
    dropped: u64,
}

/// One running data plane.
pub struct Target {
    reactors: ReactorSet,
    bdevs: Mutex<BTreeMap<String, Arc<dyn Bdev>>>,
    subscribers: Mutex<Subscribers>,
    detach_policy: Mutex<DetachPolicy>,
    /// Per-target state of the volume module (volumes, quiesce bookkeeping, the
    /// detach worker); the volume methods below call it.
    pub(crate) volumes: crate::volume::Volumes,
    /// The data-plane lease shared volumes are served under.
    pub(crate) lease: crate::lease::Lease,
    /// Reservations of shared volumes, kept by the cluster.
    pr: Arc<PrBroker>,
    /// Open bdev descriptors and their event callbacks (resize, remove).
    bdev_events: Arc<crate::bdev::events::BdevEvents>,
}

impl Target {
    /// Starts the reactors and an empty registry.
    pub fn start(cfg: &TargetConfig) -> Result<Arc<Target>, TargetError> {
        let io = |e: std::io::Error| TargetError::Io {
            object: "target".into(),
            reason: e.to_string(),
        };
        let pool = BufPool::new(&cfg.pool).map_err(io)?;
        let reactors = ReactorSet::start(&cfg.reactors, pool).map_err(io)?;
        Ok(Arc::new_cyclic(|me| Target {
            pr: Arc::new(PrBroker::new(me.clone())),
            reactors,
            bdevs: Mutex::new(BTreeMap::new()),
            subscribers: Mutex::new(Subscribers {
                senders: Vec::new(),
                dropped: 0,
            }),
            detach_policy: Mutex::new(DetachPolicy::Local),
            volumes: Default::default(),
            lease: Default::default(),
            bdev_events: Default::default(),
        }))
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

    /// Removes a bdev that no volume uses; drops its channels on every reactor.
    pub fn delete_bdev(&self, name: &str) -> Result<(), TargetError> {
        if let Some(user) = self.volumes.user_of(name) {
            return Err(TargetError::InUse {
                kind: "bdev",
                name: name.into(),
                user: format!("volume {user}"),
            });
        }
        let removed = self.bdevs().remove(name);
        if removed.is_none() {
            return Err(TargetError::NotFound {
                kind: "bdev",
                name: name.into(),
            });
        }
        let n = name.to_string();
        self.reactors
            .broadcast_blocking(move |r| r.drop_channel(&n))
            .map_err(|e| TargetError::Timeout {
                object: format!("bdev {name}"),
                reason: e.to_string(),
            })?;
        log::info!("bdev {name}: deleted");
        self.announce_bdev_event(name, BdevEvent::Remove);
        Ok(())
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
        self.bdevs().remove(name);
        self.announce_bdev_event(name, BdevEvent::Remove);
    }

    /// A new subscription to events. Each subscriber has its own bounded queue.
    pub fn subscribe(&self) -> smol::channel::Receiver<Event> {
        let (tx, rx) = smol::channel::bounded(EVENT_QUEUE_DEPTH);
        self.subscribers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .senders
            .push(tx);
        rx
    }

    /// Publishes an event to every subscriber without blocking (safe on reactors).
    /// Returns how many subscribers got it.
    pub fn publish(&self, ev: Event) -> usize {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.senders.retain(|s| !s.is_closed());
        let mut dropped = 0usize;
        for s in &subs.senders {
            if s.try_send(ev.clone()).is_err() {
                dropped += 1;
            }
        }
        if dropped > 0 {
            subs.dropped += dropped as u64;
            log::warn!("event {ev:?}: {dropped} subscriber queue(s) full, event dropped");
        }
        subs.senders.len() - dropped
    }

    /// The reservations of shared volumes kept by the cluster, and the PR OUT
    /// requests waiting for the coordinator.
    pub fn pr_broker(&self) -> &Arc<PrBroker> {
        &self.pr
    }

    /// The coordinator's answer to the PR OUT request `request` (an
    /// [`Event::PrOut`]).
    pub fn complete_pr_out(&self, request: u64, result: PrOutResult) -> Result<(), TargetError> {
        self.pr.complete(request, result)
    }

    /// The current plex error policy.
    pub fn detach_policy(&self) -> DetachPolicy {
        *self.detach_policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the plex error policy (a coordinator sets `External`).
    pub fn set_detach_policy(&self, p: DetachPolicy) {
        *self.detach_policy.lock().unwrap_or_else(|p| p.into_inner()) = p;
    }

    // Volumes: the state and the work are the volume module's ([`crate::volume`]).

    /// Creates a volume from `spec` and registers it as a bdev of the same name.
    pub fn create_volume(self: &Arc<Self>, spec: &VolumeSpec) -> Result<VolumeInfo, TargetError> {
        self.volumes.create(self, spec)
    }

    /// Deletes a volume with no I/O in flight.
    pub fn delete_volume(&self, name: &str) -> Result<(), TargetError> {
        self.volumes.delete(self, name)
    }

    /// Quiesces the volume and stages `new` (kernel phase of a transaction):
    /// new I/O is parked, in-flight I/O drains on every reactor, the layout is
    /// validated and kept for [`Target::commit`]. On a drain timeout nothing
    /// changes (the gate reopens) and the error names the reactors still busy.
    pub fn prepare(
        &self,
        name: &str,
        new: &VolumeSpec,
        drain_timeout: Duration,
    ) -> Result<Duration, TargetError> {
        self.volumes.prepare(self, name, new, drain_timeout)
    }

    /// Applies the staged layout on every reactor and resumes I/O.
    pub fn commit(&self, name: &str) -> Result<(), TargetError> {
        self.volumes.commit(self, name)
    }

    /// Drops the staged layout (if any) and resumes I/O.
    pub fn abort(&self, name: &str) -> Result<(), TargetError> {
        self.volumes.abort(self, name)
    }

    /// Copies a range of `volume` from plex `source` (ACTIVE) to plex `target`
    /// (SYNCING) inside the data plane: one chunk of a resync, under the caller's
    /// fence (the volume must be quiesced here). See [`crate::volume::copy`].
    pub fn copy_range(
        &self,
        volume: &str,
        source: &str,
        target: &str,
        offset_bytes: u64,
        len_bytes: u64,
    ) -> Result<(), TargetError> {
        crate::volume::copy::copy_range(self, volume, source, target, offset_bytes, len_bytes)
    }

    /// Quiesces without a layout change (prepare with the current layout).
    pub fn quiesce(&self, name: &str, drain_timeout: Duration) -> Result<Duration, TargetError> {
        self.volumes.quiesce(self, name, drain_timeout)
    }

    /// Changes a plex's state without draining I/O (detach after an error,
    /// administrative detach/attach). The last ACTIVE plex cannot leave ACTIVE.
    pub fn set_plex_state(
        &self,
        name: &str,
        plex: &str,
        state: PlexState,
    ) -> Result<(), TargetError> {
        self.volumes.set_plex_state(self, name, plex, state)
    }

    /// Fails the writes held for a failed plex (the controller will not detach it).
    pub fn fail_held_writes(&self, name: &str) -> Result<(), TargetError> {
        self.volumes.fail_held_writes(self, name)
    }

    /// The committed layout of a volume.
    pub fn volume_spec(&self, name: &str) -> Result<VolumeSpec, TargetError> {
        self.volumes.spec(name)
    }

    /// A volume with its stats summed over reactors.
    pub fn volume_info(&self, name: &str) -> Result<VolumeInfo, TargetError> {
        self.volumes.info(self, name)
    }

    /// The committed layout of every volume.
    pub fn list_volume_specs(&self) -> Vec<VolumeSpec> {
        self.volumes.list_specs()
    }

    /// Every volume.
    pub fn list_volumes(&self) -> Vec<VolumeInfo> {
        self.volumes.list(self)
    }

    // The data-plane lease: the state and the work are [`crate::lease`]'s.

    /// Serves shared volumes until now + `lease_ms` (monotonic clock); 0 revokes at
    /// once. Returns whether the lease had run out (or been revoked) before this
    /// call. Returns once every reactor has the new deadline.
    pub fn renew_lease(self: &Arc<Self>, lease_ms: u32) -> Result<bool, TargetError> {
        self.lease.renew(self, lease_ms)
    }

    /// Serves shared volumes until `until_ns` of the host's `CLOCK_BOOTTIME`
    /// ([`crate::lease::boottime_ns`]); a deadline already past revokes at once.
    /// Returns whether the lease had run out (or been revoked) before this call.
    /// Returns once every reactor has the new deadline.
    pub fn renew_lease_until(self: &Arc<Self>, until_ns: u64) -> Result<bool, TargetError> {
        self.lease.renew_until(self, until_ns)
    }

    /// Registers a lease watcher, told when shared volumes become fenced or served
    /// again ([`crate::lease::LeaseWatcher`]); it is dropped when its owner drops the
    /// `Arc`. Refused past [`crate::lease::MAX_LEASE_WATCHERS`].
    pub fn watch_lease(
        &self,
        w: std::sync::Weak<crate::lease::LeaseWatcher>,
    ) -> Result<(), TargetError> {
        self.lease.watch(w)
    }

    /// The lease's state, time left and expiry count.
    pub fn lease_status(&self) -> LeaseStatus {
        self.lease.status()
    }
}
