//! Volumes: subdisk (bdev, offset, length) → plex (concat | stripe) → volume
//! (1..32 mirrored plexes), with the lock-free quiesce a reconfiguration needs.
//!
//! - [`spec`]: layouts as names and numbers; resolution against the bdev registry;
//!   the offset mapping.
//! - `channel`: the reactor-local I/O path (gate, mirror fan-out, read retry,
//!   held writes).
//! - [`drl`]: the dirty region log (marks before mirrored writes, batched log
//!   writes on one owner reactor, lazy cleaning of idle regions).
//! - [`copy`]: the copy of a range from an ACTIVE plex to a SYNCING one (one
//!   chunk of a resync, run under the caller's fence).
//! - this module: [`Volumes`], the per-target registry that owns every volume's
//!   state, and its control operations (create, delete, prepare/commit/abort, plex
//!   state, stats). The [`crate::Target`] holds one and its public methods call it; no
//!   `impl Target` lives here.
//! - the standalone detach policy's worker: one thread per target, started on the
//!   first plex write error, fed through a queue of [`DETACH_QUEUE_DEPTH`] plexes.
//!
//! Quiesce ([`quiesce`]): `prepare` marks the volume quiesced (so channels created
//! meanwhile start with a closed gate), then asks every reactor to close its
//! channel's gate; each reactor counts itself off the prepare's countdown once its
//! own in-flight count for the volume reaches zero (it is told, it does not poll),
//! and the last one stamps the drain and wakes the caller. New I/O is parked, not
//! failed. `commit` publishes the staged layout and returns; every reactor swaps
//! it in and resubmits its parked I/O from its own loop as soon as it sees it (the
//! gate's poller or the release message); a reactor that has not yet keeps its
//! gate closed. `abort` publishes the end of the quiesce without a layout.
//!
//! Volumes are also fenced by their lease ([`crate::lease`]): shared ones
//! (`VolumeSpec::shared`) by the data-plane lease, private ones by the
//! private-group lease once it was first granted. While it is not valid, their
//! channels fail new I/O, parked I/O and held writes with
//! [`crate::lease::FENCED_ERRNO`]; a staged layout stays staged.

pub use plexd_target_api::volume::{PlexInfo, VolumeInfo};
mod channel;
pub mod copy;
pub mod drl;
pub mod quiesce;
pub mod spec;

pub use channel::{MAX_HELD_WRITES, MAX_PARKED_IOS, MAX_VOLUME_IOS, READ_LOCALITY_SLACK};
pub use copy::MAX_COPY_BYTES;
pub use plexd_target_api::volume::VolumeStats;
pub use quiesce::QuiesceTimeline;
pub use spec::{PlexKind, PlexSpec, PlexState, ReadPolicy, SubdiskSpec, VolumeSpec};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use channel::VolumeChannel;
use spec::Layout;

use crate::bdev::{Bdev, BdevChannel, BdevInfo};
use crate::error::TargetError;
use crate::event::{DetachPolicy, Event};
use crate::lease::Lease;
use crate::reactor::Reactor;
use crate::services::Services;

/// How long a prepare waits for in-flight I/O to drain by default.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Plexes waiting for the standalone detach worker (one entry per failed plex,
/// however many of its writes failed). A plex error that finds the queue full is
/// not held for a detach: its write fails with [`crate::bdev::RETRY_ERRNO`].
pub const DETACH_QUEUE_DEPTH: usize = 64;

struct CtlState {
    current: Arc<Layout>,
    staged: Option<Arc<Layout>>,
    quiesced: bool,
    /// Incremented by every prepare: the quiesce a gate is closed for, and the
    /// one a release ends.
    epoch: u64,
    /// By reactor id: the reactors that opened a channel of the volume (set when
    /// one is created, under this lock, never cleared). Only they are told of a
    /// quiesce and of its end: a reactor without a channel has nothing to drain,
    /// and a channel it opens later reads this state under the lock, so it starts
    /// closed for a quiesce in progress, or with the layout a commit published.
    channels: Vec<bool>,
}

impl CtlState {
    /// The reactors to tell of a quiesce or its end, as of now ([`CtlState::channels`]).
    fn reactors_with_channels(&self) -> Vec<bool> {
        self.channels.clone()
    }
}

/// Whether reactor `r` is in a [`CtlState::reactors_with_channels`] list.
fn has_channel(list: &[bool], r: usize) -> bool {
    list.get(r).copied().unwrap_or(false)
}

/// What every reactor shares about one volume (control path only).
pub(crate) struct VolumeShared {
    pub(crate) name: String,
    id: u64,
    state: Mutex<CtlState>,
    /// The committed layout's size: what the volume bdev answers (every holder
    /// of the bdev sees a committed resize at once; users hear of it through
    /// [`crate::bdev::BdevEvent::Resize`]).
    size_bytes: AtomicU64,
    /// Reports a plex write error (called on a reactor, never blocks); false when
    /// nobody will detach the plex (the detach queue is full), so the write that
    /// failed must not be held.
    notify: Box<dyn Fn(Event) -> bool + Send + Sync>,
    /// The dirty region log's counters (kept across log specs).
    drl_counters: Arc<drl::DrlCounters>,
    /// The last quiesce's timeline (a diagnostic).
    pub(crate) trace: quiesce::QuiesceTrace,
    /// The end of the last quiesce, as commit or abort published it.
    release: Mutex<Option<quiesce::Release>>,
    /// The epoch of `release` (0 = none yet): what a closed gate's poller looks
    /// at every reactor iteration (one atomic load), before taking `release`.
    released_epoch: AtomicU64,
}

impl VolumeShared {
    fn ctl(&self) -> MutexGuard<'_, CtlState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The published end of quiesce `epoch`, if it has been published.
    pub(crate) fn release_of(&self, epoch: u64) -> Option<quiesce::Release> {
        if self.released_epoch.load(Ordering::Acquire) != epoch {
            return None;
        }
        let r = self.release.lock().unwrap_or_else(|p| p.into_inner());
        r.as_ref().filter(|r| r.epoch == epoch).cloned()
    }

    /// Publishes the end of a quiesce for the gate pollers.
    fn publish_release(&self, rel: quiesce::Release) {
        let epoch = rel.epoch;
        *self.release.lock().unwrap_or_else(|p| p.into_inner()) = Some(rel);
        self.released_epoch.store(epoch, Ordering::Release);
    }
}

/// The volume as a bdev: what frontends and plexperf submit to.
struct VolumeBdev {
    shared: Arc<VolumeShared>,
    block_size: u32,
}

/// Reactor-local index of volume channels, for broadcasts.
#[derive(Default)]
struct LocalVolumes {
    chans: std::cell::RefCell<HashMap<u64, Rc<VolumeChannel>>>,
}

impl Bdev for VolumeBdev {
    fn name(&self) -> &str {
        &self.shared.name
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn size_bytes(&self) -> u64 {
        self.shared.size_bytes.load(Ordering::Acquire)
    }
    fn info(&self) -> BdevInfo {
        BdevInfo {
            name: self.shared.name.clone(),
            kind: "volume".into(),
            block_size: self.block_size,
            size_bytes: self.size_bytes(),
            detail: format!("{} plex(es)", self.shared.ctl().current.plexes.len()),
            // A volume's refusals are in its VolumeStats (per cause).
            refused: 0,
        }
    }
    /// True when any subdisk of any plex of the current layout has a volatile
    /// write cache: a flush of the volume reaches every subdisk of every plex that
    /// takes writes, so one volatile subdisk makes the volume's completed writes
    /// volatile until then. Read under the control lock (never on the I/O path).
    fn volatile_write_cache(&self) -> bool {
        let layout = Arc::clone(&self.shared.ctl().current);
        let volatile = layout.plexes.iter().any(|p| {
            p.columns
                .iter()
                .flatten()
                .any(|sd| sd.bdev.volatile_write_cache())
        });
        volatile
    }
    fn create_channel(
        self: Arc<Self>,
        reactor: &Rc<Reactor>,
    ) -> Result<Rc<dyn BdevChannel>, String> {
        // Read under the lock so a channel created during a quiesce starts with a
        // closed gate and the current layout (it is never on the I/O path).
        let (layout, epoch, closed) = {
            let mut c = self.shared.ctl();
            let r = reactor.id();
            if c.channels.len() <= r {
                c.channels.resize(r + 1, false);
            }
            c.channels[r] = true;
            (Arc::clone(&c.current), c.epoch, c.quiesced)
        };
        let ch = VolumeChannel::new(reactor, Arc::clone(&self.shared), layout, epoch, closed)?;
        reactor
            .local::<LocalVolumes>()
            .chans
            .borrow_mut()
            .insert(self.shared.id, Rc::clone(&ch));
        Ok(ch)
    }
}

/// The volumes of one target and everything the volume module keeps about them:
/// the [`crate::Target`] holds one and calls it. It holds what it uses of the
/// target: the [`Services`] (reactors, bdev registry, events) and the lease.
/// A prepare whose gates are closing ([`crate::Target::prepare_start`]): await
/// [`Draining::drained`] until [`Draining::deadline`], then hand it to
/// [`crate::Target::prepare_finish`]. Dropped without that, the volume stays
/// quiesced until an abort.
pub struct Draining {
    shared: Arc<VolumeShared>,
    drain: Arc<quiesce::Countdown>,
    started: Instant,
    deadline: Instant,
    drain_timeout: Duration,
}

impl Draining {
    /// Completes once every reactor drained the volume (the last one wakes the
    /// task: no thread in between); never while one has not.
    pub async fn drained(&self) {
        self.drain.done().await
    }

    /// When the prepare gives up on the reactors still draining.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether every reactor drained already (none had to be asked, or all
    /// answered): then there is nothing to await.
    pub fn is_drained(&self) -> bool {
        self.drain.outcome().is_ok()
    }
}

pub struct Volumes {
    svc: Arc<Services>,
    lease: Arc<Lease>,
    private_lease: Arc<Lease>,
    /// The plex error policy (a coordinator sets `External`).
    detach_policy: Mutex<DetachPolicy>,
    vols: Mutex<BTreeMap<String, Arc<VolumeShared>>>,
    next_id: std::sync::atomic::AtomicU64,
    /// The standalone detach policy's worker.
    detach: Detacher,
}

/// The standalone detach policy's worker: one thread, started on first use, takes
/// failed plexes from a queue of [`DETACH_QUEUE_DEPTH`] and detaches them one at a
/// time (detaching talks to every reactor, so never on the reactor that saw the
/// error). A plex already queued or being detached is not queued again.
#[derive(Default)]
struct Detacher {
    /// The queue's sending side; None until the worker starts.
    tx: Mutex<Option<SyncSender<(String, String)>>>,
    /// Plexes (volume, plex) queued or being detached (at most
    /// [`DETACH_QUEUE_DEPTH`] + 1).
    pending: Mutex<BTreeSet<(String, String)>>,
}

impl Detacher {
    fn pending(&self) -> MutexGuard<'_, BTreeSet<(String, String)>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks for `plex` of `volume` to be detached; true when it is queued or already
    /// under way, false when the queue is full or the worker cannot start (the
    /// caller then fails the write instead of holding it).
    fn request(&self, vols: &Arc<Volumes>, volume: &str, plex: &str) -> bool {
        let key = (volume.to_string(), plex.to_string());
        let mut pending = self.pending();
        if pending.contains(&key) {
            return true; // its detach releases this write too
        }
        let mut tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if tx.is_none() {
            match spawn_detach_worker(Arc::downgrade(vols)) {
                Ok(t) => *tx = Some(t),
                Err(e) => {
                    log::error!(
                        "volume {volume}: cannot start the plex detach worker: {e}; \
                         failing the write instead of holding it for plex {plex}"
                    );
                    return false;
                }
            }
        }
        let Some(sender) = tx.as_ref() else {
            return false;
        };
        match sender.try_send(key.clone()) {
            Ok(()) => {
                pending.insert(key);
                debug_assert!(pending.len() <= DETACH_QUEUE_DEPTH + 1);
                true
            }
            Err(TrySendError::Full(_)) => {
                log::error!(
                    "volume {volume}: {DETACH_QUEUE_DEPTH} plex detaches already queued; \
                     plex {plex} is not detached now and its failed write fails with EAGAIN"
                );
                false
            }
            Err(TrySendError::Disconnected(_)) => {
                log::error!(
                    "volume {volume}: the plex detach worker is gone; plex {plex} is not \
                     detached and its failed write fails with EAGAIN"
                );
                *tx = None;
                false
            }
        }
    }

    fn done(&self, volume: String, plex: String) {
        let was = self.pending().remove(&(volume, plex));
        debug_assert!(was, "a detach finished that was not pending");
    }
}

/// Starts the detach worker: it runs until the volume registry (which holds the
/// sender) is dropped.
fn spawn_detach_worker(vols: Weak<Volumes>) -> std::io::Result<SyncSender<(String, String)>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<(String, String)>(DETACH_QUEUE_DEPTH);
    std::thread::Builder::new()
        .name("plex-detach".into())
        .spawn(move || {
            while let Ok((volume, plex)) = rx.recv() {
                let Some(v) = vols.upgrade() else { return };
                match v.set_plex_state(&volume, &plex, PlexState::Stale) {
                    Ok(()) => log::warn!(
                        "volume {volume}: plex {plex} detached (STALE) after a write error"
                    ),
                    Err(e) => {
                        log::error!(
                            "volume {volume}: cannot detach plex {plex}: {e}; failing its held writes"
                        );
                        let _ = v.fail_held_writes(&volume);
                    }
                }
                v.detach.done(volume, plex);
            }
        })?;
    Ok(tx)
}

impl Volumes {
    /// An empty registry over `svc`, serving shared volumes under `lease` and
    /// private ones under `private_lease`.
    pub(crate) fn new(svc: Arc<Services>, lease: Arc<Lease>, private_lease: Arc<Lease>) -> Volumes {
        Volumes {
            svc,
            lease,
            private_lease,
            detach_policy: Mutex::new(DetachPolicy::Local),
            vols: Mutex::default(),
            next_id: AtomicU64::new(0),
            detach: Detacher::default(),
        }
    }

    /// The lease shared volumes are served under.
    pub(crate) fn lease(&self) -> &Arc<Lease> {
        &self.lease
    }

    /// The lease private volumes are served under.
    pub(crate) fn private_lease(&self) -> &Arc<Lease> {
        &self.private_lease
    }

    /// The current plex error policy.
    pub(crate) fn detach_policy(&self) -> DetachPolicy {
        *self.detach_policy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the plex error policy.
    pub(crate) fn set_detach_policy(&self, p: DetachPolicy) {
        *self.detach_policy.lock().unwrap_or_else(|p| p.into_inner()) = p;
    }

    /// The names of the shared (`shared`) or private volumes (a lease's expiry
    /// report).
    pub(crate) fn volume_names(&self, shared: bool) -> Vec<String> {
        self.map()
            .values()
            .filter(|v| v.ctl().current.spec.shared == shared)
            .map(|v| v.name.clone())
            .collect()
    }

    fn map(&self) -> MutexGuard<'_, BTreeMap<String, Arc<VolumeShared>>> {
        self.vols.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The volume using bdev `name`, if any.
    pub fn user_of(&self, name: &str) -> Option<String> {
        self.map()
            .values()
            .find(|v| {
                let c = v.ctl();
                c.current.bdev_names().any(|b| b == name)
                    || c.staged
                        .as_ref()
                        .is_some_and(|s| s.bdev_names().any(|b| b == name))
            })
            .map(|v| v.name.clone())
    }
}

fn vol_obj(name: &str) -> String {
    format!("volume {name}")
}

fn call_err(name: &str) -> impl Fn(crate::reactor::CallError) -> TargetError + '_ {
    move |e| TargetError::Timeout {
        object: vol_obj(name),
        reason: e.to_string(),
    }
}

/// Delivers the dirty region log owner's answers to this reactor's channels
/// (`(volume id, token, result)`; see [`drl`]).
pub(crate) fn drl_answers(r: &Reactor, answers: Vec<drl::Answer>) {
    let loc = r.local::<LocalVolumes>();
    for (vol, token, result) in answers {
        let ch = loc.chans.borrow().get(&vol).cloned();
        if let Some(c) = ch {
            c.drl_done(token, result);
        }
    }
}

/// Fails what waits on this reactor's shared volumes (the lease ran out here).
pub(crate) fn fence_reactor(r: &Reactor) {
    let chans: Vec<Rc<VolumeChannel>> = r
        .local::<LocalVolumes>()
        .chans
        .borrow()
        .values()
        .cloned()
        .collect();
    for c in chans {
        c.fence();
    }
}

impl Volumes {
    /// A volume's shared state, by name.
    pub(crate) fn volume_shared(&self, name: &str) -> Result<Arc<VolumeShared>, TargetError> {
        self.map()
            .get(name)
            .cloned()
            .ok_or_else(|| TargetError::NotFound {
                kind: "volume",
                name: name.to_string(),
            })
    }

    /// Creates a volume from `spec` and registers it as a bdev of the same name.
    pub(crate) fn create(self: &Arc<Self>, spec: &VolumeSpec) -> Result<VolumeInfo, TargetError> {
        let t = &self.svc;
        let mut layout = Layout::resolve(t, spec)?;
        let mut vols = self.map();
        if vols.contains_key(&spec.name) || t.bdev(&spec.name).is_ok() {
            return Err(TargetError::Exists {
                kind: "volume",
                name: spec.name.clone(),
            });
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let drl_counters = Arc::new(drl::DrlCounters::default());
        layout.drl = Self::drl_for(t, spec, id, None, &drl_counters)?;
        let layout = Arc::new(layout);
        let weak = Arc::downgrade(self);
        let shared = Arc::new(VolumeShared {
            name: spec.name.clone(),
            id,
            drl_counters,
            trace: quiesce::QuiesceTrace::default(),
            release: Mutex::new(None),
            released_epoch: AtomicU64::new(0),
            state: Mutex::new(CtlState {
                current: Arc::clone(&layout),
                staged: None,
                quiesced: false,
                epoch: 0,
                channels: Vec::new(),
            }),
            size_bytes: AtomicU64::new(spec.size_bytes),
            notify: Box::new(move |ev| match weak.upgrade() {
                Some(v) => v.on_event(ev),
                None => false,
            }),
        });
        let bdev = Arc::new(VolumeBdev {
            shared: Arc::clone(&shared),
            block_size: layout.block_size,
        });
        t.add_bdev(bdev)?;
        vols.insert(spec.name.clone(), shared);
        drop(vols);
        log::info!(
            "volume {}: created, {} bytes, {} plex(es)",
            spec.name,
            spec.size_bytes,
            spec.plexes.len()
        );
        self.info(&spec.name)
    }

    /// Deletes a volume with no I/O in flight.
    pub(crate) fn delete(&self, name: &str) -> Result<(), TargetError> {
        let t = &self.svc;
        let shared = self.volume_shared(name)?;
        if shared.ctl().quiesced {
            return Err(TargetError::InUse {
                kind: "volume",
                name: name.into(),
                user: "a prepare in progress (commit or abort it first)".into(),
            });
        }
        let id = shared.id;
        let vname = name.to_string();
        let busy: Vec<(usize, u32)> = t
            .reactors()
            .broadcast_blocking(move |r| {
                let loc = r.local::<LocalVolumes>();
                let busy = loc
                    .chans
                    .borrow()
                    .get(&id)
                    .map(|c| c.inflight() + c.held() as u32)
                    .unwrap_or(0);
                if busy == 0 {
                    loc.chans.borrow_mut().remove(&id);
                    r.drop_channel(&vname);
                }
                (r.id(), busy)
            })
            .map_err(call_err(name))?;
        let busy: Vec<String> = busy
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(r, n)| format!("reactor {r}: {n}"))
            .collect();
        if !busy.is_empty() {
            return Err(TargetError::InUse {
                kind: "volume",
                name: name.into(),
                user: format!("I/O in flight ({})", busy.join(", ")),
            });
        }
        self.map().remove(name);
        t.remove_bdev_entry(name);
        log::info!("volume {name}: deleted");
        Ok(())
    }

    /// Runs `f` on each reactor's channel of the volume (reactors without one skip).
    fn on_channels<R: Send + 'static>(
        &self,
        shared: &VolumeShared,
        f: impl Fn(&VolumeChannel) -> R + Send + Sync + 'static,
    ) -> Result<Vec<R>, TargetError> {
        let id = shared.id;
        let out = self
            .svc
            .reactors()
            .broadcast_blocking(move |r| {
                let ch = r.local::<LocalVolumes>().chans.borrow().get(&id).cloned();
                ch.map(|c| f(&c))
            })
            .map_err(call_err(&shared.name))?;
        Ok(out.into_iter().flatten().collect())
    }

    /// Quiesces the volume and stages `new` (kernel phase of a transaction):
    /// new I/O is parked, in-flight I/O drains on every reactor, the layout is
    /// validated and kept for [`crate::Target::commit`]. On a drain timeout nothing
    /// changes (the gate reopens) and the error names the reactors still busy.
    pub(crate) fn prepare(
        &self,
        name: &str,
        new: &VolumeSpec,
        drain_timeout: Duration,
    ) -> Result<Duration, TargetError> {
        let d = self.prepare_start(name, new, drain_timeout)?;
        self.wait_and_finish(d)
    }

    /// Blocks until `d` drained or its deadline, then [`Volumes::prepare_finish`].
    fn wait_and_finish(&self, d: Draining) -> Result<Duration, TargetError> {
        // The outcome is read again by prepare_finish: a late report still counts.
        let _ = d.drain.wait(d.deadline);
        self.prepare_finish(d)
    }

    /// The first half of [`Volumes::prepare`]: the layout staged, every
    /// reactor asked to close its gate. Nothing here waits for a reactor (a
    /// reactor whose message ring stays full delays it up to
    /// `CONTROL_SEND_TIMEOUT`, then it fails); wait for [`Draining::drained`] or
    /// its deadline, then call [`Volumes::prepare_finish`].
    pub(crate) fn prepare_start(
        &self,
        name: &str,
        new: &VolumeSpec,
        drain_timeout: Duration,
    ) -> Result<Draining, TargetError> {
        let started = Instant::now();
        let t = &self.svc;
        let shared = self.volume_shared(name)?;
        if new.name != name {
            return Err(TargetError::invalid(
                vol_obj(name),
                format!("a staged layout cannot rename it to {}", new.name),
            ));
        }
        let mut staged = Layout::resolve(t, new)?;
        let current = shared.ctl().current.drl.clone();
        staged.drl = Self::drl_for(t, new, shared.id, current, &shared.drl_counters)?;
        let (epoch, told) = Self::stage(&shared, Arc::new(staged))?;
        shared.trace.start(started);
        let drain = quiesce::Countdown::new(t.reactors().len());
        if let Err(e) = Self::close_gates(t, &shared, (epoch, &told), &drain) {
            self.abort_nowait(&shared);
            return Err(e);
        }
        Ok(Draining {
            shared,
            drain,
            started,
            deadline: started + drain_timeout,
            drain_timeout,
        })
    }

    /// The second half of [`Volumes::prepare`], once every reactor drained
    /// or the deadline passed: the time to the drain, or (reactors still busy)
    /// the gates reopened without waiting and a timeout naming them.
    pub(crate) fn prepare_finish(&self, d: Draining) -> Result<Duration, TargetError> {
        let Draining {
            shared,
            drain,
            started,
            drain_timeout,
            ..
        } = d;
        let name = &*shared.name;
        let busy = match drain.outcome() {
            Ok(drained) => {
                shared.trace.mark_at(quiesce::Step::Drained, drained);
                shared.trace.mark(quiesce::Step::PrepareReturned);
                // quiesceUs is call to drained: stamped by the last reactor to drain,
                // not when this thread got to run again.
                return Ok(drained.saturating_duration_since(started));
            }
            Err(busy) => busy,
        };
        let busy: Vec<String> = busy.iter().map(|r| format!("reactor {r}")).collect();
        // A busy reactor cannot answer now: reopen the gates without waiting.
        self.abort_nowait(&shared);
        let reason = format!(
            "in-flight I/O did not drain within {} ms on {}; prepare aborted",
            drain_timeout.as_millis(),
            busy.join(", ")
        );
        log::warn!("volume {name}: {reason}");
        Err(TargetError::Timeout {
            object: vol_obj(name),
            reason,
        })
    }

    /// The dirty region log state for `spec`: none without a log, `current` when
    /// the log spec and geometry are unchanged, else a new one (its first mark
    /// re-inits the section).
    fn drl_for(
        t: &Services,
        spec: &VolumeSpec,
        id: u64,
        current: Option<Arc<drl::DrlShared>>,
        counters: &Arc<drl::DrlCounters>,
    ) -> Result<Option<Arc<drl::DrlShared>>, TargetError> {
        let Some(log) = &spec.log else {
            return Ok(None);
        };
        if let Some(c) = current.filter(|c| c.same(spec.size_bytes, log)) {
            return Ok(Some(c));
        }
        drl::DrlShared::new(
            t,
            &spec.name,
            id,
            spec.size_bytes,
            log,
            Arc::clone(counters),
        )
        .map(Some)
    }

    /// Marks the volume quiesced (channels created from now on start closed) and
    /// keeps `staged`; returns the new quiesce epoch and the reactors that have a
    /// channel to close. Refuses a second prepare and a layout of another block size.
    fn stage(shared: &VolumeShared, staged: Arc<Layout>) -> Result<(u64, Vec<bool>), TargetError> {
        let name = &*shared.name;
        let mut c = shared.ctl();
        if c.quiesced {
            return Err(TargetError::InUse {
                kind: "volume",
                name: name.into(),
                user: "a prepare already in progress".into(),
            });
        }
        if staged.block_size != c.current.block_size {
            return Err(TargetError::invalid(
                vol_obj(name),
                format!(
                    "the new layout's block size {} differs from the volume's {}",
                    staged.block_size, c.current.block_size
                ),
            ));
        }
        c.quiesced = true;
        c.epoch += 1;
        c.staged = Some(staged);
        Ok((c.epoch, c.reactors_with_channels()))
    }

    /// Asks every reactor in `told` (those with a channel of the volume when it
    /// staged) to close its gate for quiesce `epoch`; each reports to `drain` once
    /// its in-flight count is zero, and the last one wakes the caller. The others
    /// are reported here: no message wakes a reactor that has nothing to drain. The
    /// caller aborts on an error.
    fn close_gates(
        t: &Services,
        shared: &VolumeShared,
        (epoch, told): (u64, &[bool]),
        drain: &Arc<quiesce::Countdown>,
    ) -> Result<(), TargetError> {
        let id = shared.id;
        if !told.contains(&true) {
            // No reactor to close a gate: they are all "closed" now.
            shared.trace.mark(quiesce::Step::GatesClosed);
        }
        for h in t.reactors().handles() {
            if !has_channel(told, h.id()) {
                drain.report(h.id());
                continue;
            }
            let drain = Arc::clone(drain);
            let msg: crate::reactor::Msg = Box::new(move |r| {
                let ch = r.local::<LocalVolumes>().chans.borrow().get(&id).cloned();
                match ch {
                    Some(c) => c.close_gate(epoch, drain),
                    None => drain.report(r.id()),
                }
            });
            h.send_timeout(msg, crate::reactor::CONTROL_SEND_TIMEOUT)
                .map_err(|e| TargetError::Timeout {
                    object: vol_obj(&shared.name),
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// Applies the staged layout on every reactor and resumes I/O. Publishes the
    /// layout and returns: each reactor swaps it in and resubmits its parked I/O
    /// from its own loop as soon as it sees it (its gate poller or the release
    /// message, whichever runs first). A reactor that has not swapped yet keeps
    /// its gate closed, so no I/O runs with the old layout once this returned.
    pub(crate) fn commit(&self, name: &str) -> Result<(), TargetError> {
        let shared = self.volume_shared(name)?;
        shared.trace.mark(quiesce::Step::CommitCalled);
        let layout = {
            let mut c = shared.ctl();
            let Some(staged) = c.staged.take() else {
                return Err(TargetError::invalid(
                    vol_obj(name),
                    "nothing staged to commit",
                ));
            };
            // Only a prepare stages a layout, and it quiesces the volume first.
            assert!(
                c.quiesced,
                "volume {name}: a staged layout without a quiesce"
            );
            c.current = Arc::clone(&staged);
            c.quiesced = false;
            shared.publish_release(quiesce::Release {
                epoch: c.epoch,
                layout: Some(Arc::clone(&staged)),
            });
            (staged, c.reactors_with_channels())
        };
        let (layout, told) = layout;
        self.post_release(&shared, &told);
        // The volume bdev's size follows the committed layout; its users (LUNs,
        // namespaces) hear of a change through their descriptors.
        let new_size = layout.spec.size_bytes;
        let old_size = shared.size_bytes.swap(new_size, Ordering::AcqRel);
        log::info!("volume {name}: layout committed");
        if old_size != new_size {
            log::info!("volume {name}: resized from {old_size} to {new_size} bytes");
            self.svc.announce_bdev_event(
                name,
                crate::bdev::BdevEvent::Resize {
                    size_bytes: new_size,
                },
            );
        }
        shared.trace.mark(quiesce::Step::CommitReturned);
        Ok(())
    }

    /// Tells every reactor in `told` (those with a channel of the volume when the
    /// release was published) to apply the published release of `shared` (its
    /// gate pollers may already have): the message wakes a sleeping reactor and
    /// comes before any later control message. A reactor whose ring stays full
    /// still applies it from its gate poller.
    fn post_release(&self, shared: &VolumeShared, told: &[bool]) {
        let id = shared.id;
        for h in self.svc.reactors().handles() {
            if !has_channel(told, h.id()) {
                continue;
            }
            let msg: crate::reactor::Msg = Box::new(move |r| {
                let ch = r.local::<LocalVolumes>().chans.borrow().get(&id).cloned();
                if let Some(c) = ch {
                    c.apply_release();
                }
            });
            if let Err(e) = h.send_timeout(msg, crate::reactor::CONTROL_SEND_TIMEOUT) {
                log::error!(
                    "volume {}: cannot tell reactor {} that the quiesce ended: {e}; \
                     its gate poller reopens the gate",
                    shared.name,
                    h.id()
                );
            }
        }
    }

    /// Drops the staged layout (if any) and resumes I/O.
    pub(crate) fn abort(&self, name: &str) -> Result<(), TargetError> {
        let shared = self.volume_shared(name)?;
        shared.trace.mark(quiesce::Step::CommitCalled);
        self.abort_nowait(&shared);
        shared.trace.mark(quiesce::Step::CommitReturned);
        Ok(())
    }

    /// Drops the staged layout and publishes the end of the last quiesce without
    /// a layout: every reactor reopens its gate with the old one as soon as it
    /// sees it (nobody waits for a reactor: one may be too busy to answer).
    fn abort_nowait(&self, shared: &VolumeShared) {
        let told = {
            let mut c = shared.ctl();
            if !c.quiesced {
                // Nothing to end (the last quiesce's release stands: a commit a
                // reactor has not applied yet must stay a commit).
                return;
            }
            c.staged = None;
            c.quiesced = false;
            shared.publish_release(quiesce::Release {
                epoch: c.epoch,
                layout: None,
            });
            c.reactors_with_channels()
        };
        self.post_release(shared, &told);
    }

    /// Quiesces without a layout change (prepare with the current layout).
    pub(crate) fn quiesce(
        &self,
        name: &str,
        drain_timeout: Duration,
    ) -> Result<Duration, TargetError> {
        let d = self.quiesce_start(name, drain_timeout)?;
        self.wait_and_finish(d)
    }

    /// [`Volumes::quiesce`]'s first half ([`Volumes::prepare_start`]).
    pub(crate) fn quiesce_start(
        &self,
        name: &str,
        drain_timeout: Duration,
    ) -> Result<Draining, TargetError> {
        let spec = self.volume_shared(name)?.ctl().current.spec.clone();
        self.prepare_start(name, &spec, drain_timeout)
    }

    /// Changes a plex's state without draining I/O (detach after an error,
    /// administrative detach/attach). The last ACTIVE plex cannot leave ACTIVE.
    pub(crate) fn set_plex_state(
        &self,
        name: &str,
        plex: &str,
        state: PlexState,
    ) -> Result<(), TargetError> {
        let shared = self.volume_shared(name)?;
        {
            let mut c = shared.ctl();
            let mut spec = c.current.spec.clone();
            let Some(p) = spec.plexes.iter_mut().find(|p| p.name == plex) else {
                return Err(TargetError::NotFound {
                    kind: "plex",
                    name: format!("{plex} (volume {name})"),
                });
            };
            p.state = state;
            if !spec.plexes.iter().any(|p| p.state == PlexState::Active) {
                return Err(TargetError::invalid(
                    format!("plex {plex} (volume {name})"),
                    "it is the last ACTIVE plex of the volume; it is never detached",
                ));
            }
            let mut l = (*c.current).clone();
            if let Some(lp) = l.plexes.iter_mut().find(|p| &*p.name == plex) {
                lp.state = state;
            }
            l.spec = spec;
            c.current = Arc::new(l);
            if let Some(s) = c.staged.as_mut() {
                let mut st = (**s).clone();
                if let Some(sp) = st.spec.plexes.iter_mut().find(|p| p.name == plex) {
                    sp.state = state;
                }
                if let Some(lp) = st.plexes.iter_mut().find(|p| &*p.name == plex) {
                    lp.state = state;
                }
                *s = Arc::new(st);
            }
        }
        let p = plex.to_string();
        self.on_channels(&shared, move |c| c.set_plex_state(&p, state))?;
        log::info!("volume {name}: plex {plex} is now {}", state.as_str());
        self.svc.publish(Event::PlexState {
            volume: name.into(),
            plex: plex.into(),
            state: state.as_str().into(),
        });
        Ok(())
    }

    /// Fails the writes held for a failed plex (the controller will not detach it).
    pub(crate) fn fail_held_writes(&self, name: &str) -> Result<(), TargetError> {
        let shared = self.volume_shared(name)?;
        self.on_channels(&shared, |c| c.fail_held())?;
        Ok(())
    }

    /// Copies a range of `volume` from plex `source` to plex `target` (one chunk
    /// of a resync, under the caller's fence); see [`copy`].
    pub(crate) fn copy_range(
        &self,
        volume: &str,
        source: &str,
        target: &str,
        offset_bytes: u64,
        len_bytes: u64,
    ) -> Result<(), TargetError> {
        copy::copy_range(self, volume, source, target, offset_bytes, len_bytes)
    }

    /// The timeline of the volume's last quiesce (a diagnostic, see [`quiesce`]).
    pub(crate) fn quiesce_timeline(&self, name: &str) -> Result<QuiesceTimeline, TargetError> {
        Ok(self.volume_shared(name)?.trace.timeline())
    }

    /// The committed layout of a volume.
    pub(crate) fn spec(&self, name: &str) -> Result<VolumeSpec, TargetError> {
        Ok(self.volume_shared(name)?.ctl().current.spec.clone())
    }

    /// A volume with its stats summed over reactors.
    pub(crate) fn info(&self, name: &str) -> Result<VolumeInfo, TargetError> {
        let shared = self.volume_shared(name)?;
        let per = self.on_channels(&shared, |c| {
            (
                c.stats(),
                c.inflight() as u64,
                c.parked() as u64,
                c.held() as u64,
            )
        })?;
        let mut stats = VolumeStats::default();
        let (mut inflight, mut parked, mut held) = (0, 0, 0);
        for (s, i, p, h) in per {
            stats.add(&s);
            inflight += i;
            parked += p;
            held += h;
        }
        stats.log_writes = shared.drl_counters.log_writes.load(Ordering::Relaxed);
        stats.log_dirty_regions = shared.drl_counters.dirty_regions.load(Ordering::Relaxed);
        stats.log_copy_failures = shared.drl_counters.copy_failures.load(Ordering::Relaxed);
        let c = shared.ctl();
        let l = &c.current;
        Ok(VolumeInfo {
            name: name.into(),
            size_bytes: l.spec.size_bytes,
            block_size: l.block_size,
            state: if c.quiesced {
                "QUIESCED".into()
            } else {
                "ENABLED".into()
            },
            staged: c.staged.is_some(),
            read_policy: l.spec.read_policy.clone(),
            plexes: l
                .plexes
                .iter()
                .zip(&l.spec.plexes)
                .map(|(p, s)| PlexInfo {
                    name: s.name.clone(),
                    state: p.state,
                    layout: if matches!(p.map.kind, PlexKind::Stripe { .. }) {
                        "stripe".into()
                    } else {
                        "concat".into()
                    },
                    len_bytes: p.map.len_bytes(),
                    columns: s.columns.clone(),
                })
                .collect(),
            stats,
            inflight,
            parked,
            held,
        })
    }

    /// The committed layout of every volume.
    pub(crate) fn list_specs(&self) -> Vec<VolumeSpec> {
        self.map()
            .values()
            .map(|v| v.ctl().current.spec.clone())
            .collect()
    }

    /// Every volume.
    pub(crate) fn list(&self) -> Vec<VolumeInfo> {
        let names: Vec<String> = self.map().keys().cloned().collect();
        names.iter().filter_map(|n| self.info(n).ok()).collect()
    }

    /// A volume channel's event (on a reactor: never blocks). Published; under the
    /// standalone policy a plex write error also queues the plex's detach. False
    /// when the plex will not be detached (the writes that failed must not be held).
    fn on_event(self: &Arc<Self>, ev: Event) -> bool {
        self.svc.publish(ev.clone());
        match ev {
            Event::PlexIoError { volume, plex, .. }
                if self.detach_policy() == DetachPolicy::Local =>
            {
                self.detach.request(self, &volume, &plex)
            }
            _ => true,
        }
    }
}
