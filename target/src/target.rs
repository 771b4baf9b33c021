//! A running target: the composition root of the data plane. It creates the
//! [`Services`] (reactors, buffer pool, bdev registry, event stream), the volume
//! registry, the lease and the cluster's reservations, wires them together and
//! offers one public API over them. Several targets can live in one process (no
//! globals); everything here is control-path code.

pub use crate::error::TargetError;
pub use crate::event::{DetachPolicy, Event, EVENT_QUEUE_DEPTH};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::bdev::{Bdev, BdevDesc, BdevEvent, BdevEventFn, BdevInfo};
use crate::buf::{BufPool, PoolConfig};
use crate::frontend::scsi::pr_cluster::{PrBroker, PrOutResult};
use crate::frontend::FrontendEnv;
use crate::lease::{Lease, LeaseScope, LeaseStatus, VolumeHooks};
use crate::reactor::{ReactorConfig, ReactorSet};
use crate::services::Services;
use crate::volume::{PlexState, VolumeInfo, VolumeSpec, Volumes};

/// How the target starts.
#[derive(Clone, Debug, Default)]
pub struct TargetConfig {
    /// Reactor threads.
    pub reactors: ReactorConfig,
    /// I/O buffer pool.
    pub pool: PoolConfig,
}

/// One running data plane: the composition root. It owns the [`Services`]
/// (reactors, bdev registry, events) and the modules built on them (volumes,
/// lease, the cluster's reservations), and hands each module the narrow handles it
/// needs; no module below depends on `Target`.
pub struct Target {
    svc: Arc<Services>,
    /// The volume module's registry (volumes, quiesce bookkeeping, the detach
    /// worker); the volume methods below call it.
    volumes: Arc<Volumes>,
    /// The data-plane lease shared volumes are served under.
    lease: Arc<Lease>,
    /// Reservations of shared volumes, kept by the cluster.
    pr: Arc<PrBroker>,
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
        let svc = Arc::new(Services::new(reactors));
        // The lease sits below the volumes it fences: the volume module's hooks
        // are handed to it here.
        let volumes = Arc::new_cyclic(|me: &Weak<Volumes>| {
            let lease = |scope: LeaseScope| {
                let me = me.clone();
                Arc::new(Lease::new(
                    scope,
                    VolumeHooks {
                        fence_reactor: crate::volume::fence_reactor,
                        volumes: Box::new(move || {
                            me.upgrade()
                                .map(|v| v.volume_names(scope == LeaseScope::Shared))
                                .unwrap_or_default()
                        }),
                    },
                ))
            };
            Volumes::new(
                Arc::clone(&svc),
                lease(LeaseScope::Shared),
                lease(LeaseScope::Private),
            )
        });
        Ok(Arc::new(Target {
            pr: Arc::new(PrBroker::new(Arc::downgrade(&svc))),
            lease: Arc::clone(volumes.lease()),
            volumes,
            svc,
        }))
    }

    /// What a frontend uses of this target.
    pub fn frontend_env(&self) -> FrontendEnv {
        FrontendEnv {
            svc: Arc::clone(&self.svc),
            volumes: Arc::clone(&self.volumes),
            lease: Arc::clone(&self.lease),
            pr: Arc::clone(&self.pr),
        }
    }

    /// The reactors.
    pub fn reactors(&self) -> &ReactorSet {
        self.svc.reactors()
    }

    /// The buffer pool.
    pub fn pool(&self) -> &Arc<BufPool> {
        self.svc.pool()
    }

    /// Registers a bdev under its name.
    pub fn add_bdev(&self, bdev: Arc<dyn Bdev>) -> Result<(), TargetError> {
        self.svc.add_bdev(bdev)
    }

    /// The bdev named `name`.
    pub fn bdev(&self, name: &str) -> Result<Arc<dyn Bdev>, TargetError> {
        self.svc.bdev(name)
    }

    /// Every bdev, by name.
    pub fn list_bdevs(&self) -> Vec<BdevInfo> {
        self.svc.list_bdevs()
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
        let removed = self.svc.unregister_bdev(name);
        if removed.is_none() {
            return Err(TargetError::NotFound {
                kind: "bdev",
                name: name.into(),
            });
        }
        let n = name.to_string();
        self.reactors()
            .broadcast_blocking(move |r| r.drop_channel(&n))
            .map_err(|e| TargetError::Timeout {
                object: format!("bdev {name}"),
                reason: e.to_string(),
            })?;
        log::info!("bdev {name}: deleted");
        self.svc.announce_bdev_event(name, BdevEvent::Remove);
        Ok(())
    }

    /// Opens the bdev named `name` with an event callback (SPDK's bdev open with
    /// an event callback): `cb` hears its resizes and its removal until the
    /// descriptor is dropped. Frontends hold one per LUN and namespace.
    pub fn open_bdev(&self, name: &str, cb: BdevEventFn) -> Result<BdevDesc, TargetError> {
        self.svc.open_bdev(name, cb)
    }

    /// A new subscription to events. Each subscriber has its own bounded queue.
    pub fn subscribe(&self) -> smol::channel::Receiver<Event> {
        self.svc.subscribe()
    }

    /// Publishes an event to every subscriber without blocking (safe on reactors).
    /// Returns how many subscribers got it.
    pub fn publish(&self, ev: Event) -> usize {
        self.svc.publish(ev)
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
        self.volumes.detach_policy()
    }

    /// Sets the plex error policy (a coordinator sets `External`).
    pub fn set_detach_policy(&self, p: DetachPolicy) {
        self.volumes.set_detach_policy(p);
    }

    // Volumes: the state and the work are the volume module's ([`crate::volume`]).

    /// Creates a volume from `spec` and registers it as a bdev of the same name.
    pub fn create_volume(&self, spec: &VolumeSpec) -> Result<VolumeInfo, TargetError> {
        self.volumes.create(spec)
    }

    /// Deletes a volume with no I/O in flight.
    pub fn delete_volume(&self, name: &str) -> Result<(), TargetError> {
        self.volumes.delete(name)
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
        self.volumes.prepare(name, new, drain_timeout)
    }

    /// [`Target::prepare`] without the wait, for a caller that awaits the drain
    /// ([`crate::volume::Draining::drained`], bounded by its deadline) and then
    /// calls [`Target::prepare_finish`].
    pub fn prepare_start(
        &self,
        name: &str,
        new: &VolumeSpec,
        drain_timeout: Duration,
    ) -> Result<crate::volume::Draining, TargetError> {
        self.volumes.prepare_start(name, new, drain_timeout)
    }

    /// [`Target::quiesce`] without the wait (see [`Target::prepare_start`]).
    pub fn quiesce_start(
        &self,
        name: &str,
        drain_timeout: Duration,
    ) -> Result<crate::volume::Draining, TargetError> {
        self.volumes.quiesce_start(name, drain_timeout)
    }

    /// The end of a [`Target::prepare_start`] once its volume drained or its
    /// deadline passed: what [`Target::prepare`] returns.
    pub fn prepare_finish(&self, d: crate::volume::Draining) -> Result<Duration, TargetError> {
        self.volumes.prepare_finish(d)
    }

    /// Applies the staged layout on every reactor and resumes I/O.
    pub fn commit(&self, name: &str) -> Result<(), TargetError> {
        self.volumes.commit(name)
    }

    /// Drops the staged layout (if any) and resumes I/O.
    pub fn abort(&self, name: &str) -> Result<(), TargetError> {
        self.volumes.abort(name)
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
        self.volumes
            .copy_range(volume, source, target, offset_bytes, len_bytes)
    }

    /// The timeline of the volume's last quiesce (prepare to commit or abort):
    /// a diagnostic, see [`crate::volume::quiesce`].
    pub fn quiesce_timeline(
        &self,
        name: &str,
    ) -> Result<crate::volume::QuiesceTimeline, TargetError> {
        self.volumes.quiesce_timeline(name)
    }

    /// Quiesces without a layout change (prepare with the current layout).
    pub fn quiesce(&self, name: &str, drain_timeout: Duration) -> Result<Duration, TargetError> {
        self.volumes.quiesce(name, drain_timeout)
    }

    /// Changes a plex's state without draining I/O (detach after an error,
    /// administrative detach/attach). The last ACTIVE plex cannot leave ACTIVE.
    pub fn set_plex_state(
        &self,
        name: &str,
        plex: &str,
        state: PlexState,
    ) -> Result<(), TargetError> {
        self.volumes.set_plex_state(name, plex, state)
    }

    /// Fails the writes held for a failed plex (the controller will not detach it).
    pub fn fail_held_writes(&self, name: &str) -> Result<(), TargetError> {
        self.volumes.fail_held_writes(name)
    }

    /// The committed layout of a volume.
    pub fn volume_spec(&self, name: &str) -> Result<VolumeSpec, TargetError> {
        self.volumes.spec(name)
    }

    /// A volume with its stats summed over reactors.
    pub fn volume_info(&self, name: &str) -> Result<VolumeInfo, TargetError> {
        self.volumes.info(name)
    }

    /// The committed layout of every volume.
    pub fn list_volume_specs(&self) -> Vec<VolumeSpec> {
        self.volumes.list_specs()
    }

    /// Every volume.
    pub fn list_volumes(&self) -> Vec<VolumeInfo> {
        self.volumes.list()
    }

    // The data-plane lease: the state and the work are [`crate::lease`]'s.

    /// Serves shared volumes until now + `lease_ms` (monotonic clock); 0 revokes at
    /// once. Returns whether the lease had run out (or been revoked) before this
    /// call. Returns once every reactor has the new deadline.
    pub fn renew_lease(&self, lease_ms: u32) -> Result<bool, TargetError> {
        self.lease.renew(&self.svc, lease_ms)
    }

    /// Serves shared volumes until `until_ns` of the host's `CLOCK_BOOTTIME`
    /// ([`crate::lease::boottime_ns`]); a deadline already past revokes at once.
    /// Returns whether the lease had run out (or been revoked) before this call.
    /// Returns once every reactor has the new deadline.
    pub fn renew_lease_until(&self, until_ns: u64) -> Result<bool, TargetError> {
        self.lease.renew_until(&self.svc, until_ns)
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

    /// Serves private volumes until `until_ns` of the host's `CLOCK_BOOTTIME`, as
    /// [`Target::renew_lease_until`] does shared ones ([`LeaseScope::Private`]:
    /// before the first call private volumes are served without a lease).
    pub fn renew_private_lease_until(&self, until_ns: u64) -> Result<bool, TargetError> {
        self.volumes
            .private_lease()
            .renew_until(&self.svc, until_ns)
    }

    /// The private-group lease's state (none: never granted, private volumes
    /// served), time left and expiry count.
    pub fn private_lease_status(&self) -> LeaseStatus {
        self.volumes.private_lease().status()
    }
}

/// A frontend is started on a target: `IscsiFrontend::start(&target, ..)`.
impl From<&Arc<Target>> for FrontendEnv {
    fn from(t: &Arc<Target>) -> FrontendEnv {
        t.frontend_env()
    }
}
