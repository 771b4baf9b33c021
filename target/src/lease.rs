//! The data-plane lease (self-fencing): a shared volume is served only while the
//! coordinator keeps renewing the lease over the kernel interface
//! (`renewLeaseUntil`, an absolute deadline; or the older `renewLease`, a duration).
//!
//! - Clock: deadlines are on the host's `CLOCK_BOOTTIME` ([`boottime_ns`]), the clock
//!   the coordinator computes them on (same host, same boot, same time namespace),
//!   which goes on counting while the system is suspended (`CLOCK_MONOTONIC` stops, so
//!   a lease on it would outlast a suspend that the other nodes saw pass). A
//!   coordinator frozen between computing a deadline and sending it cannot extend
//!   the lease: a deadline is where it was computed, and one already past revokes.
//!   Reactors keep the deadline also converted to their cached `Instant`
//!   (`CLOCK_MONOTONIC`, read before the boot clock at receipt, so it is never later)
//!   and to `CLOCK_MONOTONIC_COARSE`. Their expiry poller compares the cached clock and
//!   `CLOCK_BOOTTIME` on every pass, so a host resumed from suspend fences within a
//!   loop iteration. The check before new disk I/O reads the coarse clock itself
//!   (`ReactorLease::fenced_now`): a reactor stalled in the middle of a loop
//!   iteration (a stopped process, a frozen cgroup) does not serve the I/O it takes in
//!   after the stall on a cached clock from before it. What remains is a stall that
//!   falls between that check and the `io_uring_enter` that hands the I/O to the
//!   kernel (at most one loop iteration of work; after a suspend, the iteration
//!   before the poller's pass); only a fence at the disk itself would close it.
//! - Control side ([`Lease`], held by the [`crate::Target`], whose `renew_lease`,
//!   `renew_lease_until` and `lease_status` call it): the deadline, a generation
//!   bumped by every renewal, the expiry count.
//!   [`crate::Target::renew_lease_until`] hands the new deadline to every reactor through its
//!   mailbox and waits until each one has it.
//! - Reactor side ([`ReactorLease`], one per scope in the reactor-local
//!   [`ReactorLeases`]): the deadlines and one `fenced` flag that the scope's
//!   volumes' channels check on submit, with the coarse clock read then (`Cell`s: no
//!   lock, no shared atomic on the I/O path). A poller flips the flag when the reactor's
//!   clock passes the deadline — also on an idle reactor, whose sleep is bounded by
//!   the poller's deadline — and fails what waits on this reactor's volumes of the scope
//!   (parked behind a closed gate, writes held for a plex detach). The reactor's
//!   clock is refreshed once `BUSY_CLOCK_WORK` units of work have run (checked after
//!   each loop iteration), so that failing lags the deadline by at most one iteration
//!   plus that much work (about a millisecond on a loaded reactor; more when the
//!   reactor thread itself is not scheduled); new I/O is refused from the deadline
//!   on by the check on submit.
//! - Expiry is reported once per lease generation (the first reactor to see it):
//!   one log line naming the fenced volumes, and [`Event::LeaseExpired`].
//! - Watchers ([`LeaseWatcher`], registered with [`crate::Target::watch_lease`]; the
//!   NVMe-oF frontend, whose ANA log reports a fenced node's group inaccessible)
//!   are told each time shared volumes become fenced (revocation or expiry, from
//!   the expiry report) or served again (a grant after none, a renewal after expiry,
//!   from the renewal), after every reactor has the new state, so a host told to
//!   re-read the ANA log sees the new state.
//!
//! Two leases, one per [`LeaseScope`], each with all of the above:
//! - [`LeaseScope::Shared`] serves shared volumes while the node is a member of a
//!   quorate view (the cluster's condition; docs/PROTOCOL.md). A never-granted
//!   lease fences them.
//! - [`LeaseScope::Private`] serves private volumes while the coordinator keeps
//!   finding its node the owner of their groups on the disks, so a node frozen or
//!   cut off while another imports its group with `--clear-owner` stops writing it
//!   (docs/OPERATIONS.md). Until its first grant it fences nothing: a data plane
//!   used without a coordinator (plexperf, tests) serves private volumes freely.
//!
//! A never-granted shared lease (state none) fences shared volumes too. Creating, preparing,
//! committing and aborting layouts is never refused: the data plane neither commits
//! nor aborts a staged layout on its own. In-flight child I/O already at the disk
//! completes normally.

pub use plexd_target_api::info::{LeaseState, LeaseStatus};
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak as RcWeak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};

use nix::time::ClockId;

use crate::error::TargetError;
use crate::event::Event;
use crate::reactor::{Poller, Reactor};
use crate::services::Services;

/// The errno a shared volume's I/O fails with while the lease is not valid
/// (`ESHUTDOWN`, "cannot send after transport endpoint shutdown": this node's path
/// to the volume is shut). Disks do not return it, so it is distinct from a medium
/// error; the iSCSI frontend turns it into NOT READY, 04h/0Ch (docs/ISCSI.md).
pub const FENCED_ERRNO: i32 = libc::ESHUTDOWN;

/// Longest lease a renewal may grant.
pub const MAX_LEASE: Duration = Duration::from_secs(3600);

/// Most lease watchers registered at once on one target (a frontend each).
pub const MAX_LEASE_WATCHERS: usize = 16;

/// Which volumes a lease serves (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseScope {
    /// Shared volumes (`VolumeSpec::shared`).
    Shared,
    /// Private volumes.
    Private,
}

impl LeaseScope {
    /// The lease's name in errors and logs.
    pub fn name(self) -> &'static str {
        match self {
            LeaseScope::Shared => "data-plane lease",
            LeaseScope::Private => "private-group lease",
        }
    }

    /// The volumes it serves, in logs.
    fn volumes(self) -> &'static str {
        match self {
            LeaseScope::Shared => "shared volumes",
            LeaseScope::Private => "private volumes",
        }
    }

    /// The scope of a volume.
    pub(crate) fn of_volume(shared: bool) -> LeaseScope {
        if shared {
            LeaseScope::Shared
        } else {
            LeaseScope::Private
        }
    }
}

/// The host's `CLOCK_BOOTTIME` in nanoseconds: the clock of `renewLeaseUntil`
/// deadlines. None if the clock cannot be read (not on Linux 2.6.39 or later).
pub fn boottime_ns() -> Option<u64> {
    clock_ns(ClockId::CLOCK_BOOTTIME)
}

/// `clock` in nanoseconds; None if it cannot be read.
#[inline]
fn clock_ns(clock: ClockId) -> Option<u64> {
    let t = nix::time::clock_gettime(clock).ok()?;
    let secs = u64::try_from(t.tv_sec()).ok()?;
    let nanos = u64::try_from(t.tv_nsec()).ok()?;
    Some(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// How much earlier than the deadline the check on submit fences, on
/// `CLOCK_MONOTONIC_COARSE` (the monotonic clock as of the kernel's last tick, read
/// without the time stamp counter: about 6 ns a read where `CLOCK_MONOTONIC` takes
/// 20-25): twice that clock's resolution (a tick), so the check is never late.
/// None if the coarse clock cannot be read (the check then reads `CLOCK_MONOTONIC`).
fn coarse_slack_ns() -> Option<u64> {
    static SLACK: OnceLock<Option<u64>> = OnceLock::new();
    *SLACK.get_or_init(|| {
        let res = nix::time::clock_getres(ClockId::CLOCK_MONOTONIC_COARSE).ok()?;
        clock_ns(ClockId::CLOCK_MONOTONIC_COARSE)?;
        let ns = u64::try_from(Duration::from(res).as_nanos()).ok()?;
        Some(ns.saturating_mul(2))
    })
}

/// Told when a target's shared volumes become fenced (`served` false) or served
/// again (`served` true). Called from a control thread (a renewal's caller, or the
/// thread reporting an expiry); must not block.
pub type LeaseWatcher = dyn Fn(bool) + Send + Sync;

#[derive(Default)]
struct LeaseCtl {
    deadline: Option<Instant>,
    /// The same deadline on `CLOCK_BOOTTIME` (ns); None if that clock is unreadable.
    until_boot_ns: Option<u64>,
    /// Bumped by every renewal; reactors ignore an older one arriving late.
    generation: u64,
}

/// What the lease needs of the volumes it fences. The lease sits below the volume
/// module: the [`crate::Target`] hands it the volume module's hooks when it starts.
pub(crate) struct VolumeHooks {
    /// Fails what waits on a reactor's volumes whose lease ran out there; runs on
    /// that reactor.
    pub(crate) fence_reactor: fn(&Reactor),
    /// The names of the volumes of the lease's scope, for the expiry report
    /// (control path).
    pub(crate) volumes: Box<dyn Fn() -> Vec<String> + Send + Sync>,
}

/// What reactors share with the control side (touched only at expiry, never on the
/// I/O path).
pub(crate) struct LeaseShared {
    scope: LeaseScope,
    /// The newest generation whose expiry was reported.
    reported: AtomicU64,
    expiries: AtomicU64,
    /// Told when shared volumes become fenced or served again.
    watchers: Mutex<Vec<Weak<LeaseWatcher>>>,
    /// The volume module's hooks.
    volumes: VolumeHooks,
}

/// The control side of a target's lease.
pub(crate) struct Lease {
    ctl: Mutex<LeaseCtl>,
    shared: Arc<LeaseShared>,
}

impl Lease {
    /// A lease of `scope` never granted, over the volume module's hooks.
    pub(crate) fn new(scope: LeaseScope, volumes: VolumeHooks) -> Lease {
        Lease {
            ctl: Mutex::default(),
            shared: Arc::new(LeaseShared {
                scope,
                reported: AtomicU64::new(0),
                expiries: AtomicU64::new(0),
                watchers: Mutex::default(),
                volumes,
            }),
        }
    }

    fn ctl(&self) -> MutexGuard<'_, LeaseCtl> {
        self.ctl.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `w` (kept while its owner holds the `Arc`); see [`LeaseWatcher`].
    pub(crate) fn watch(&self, w: Weak<LeaseWatcher>) -> Result<(), TargetError> {
        self.shared.watch(w)
    }
}

impl LeaseShared {
    fn watchers(&self) -> MutexGuard<'_, Vec<Weak<LeaseWatcher>>> {
        self.watchers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn watch(&self, w: Weak<LeaseWatcher>) -> Result<(), TargetError> {
        let mut ws = self.watchers();
        ws.retain(|x| x.strong_count() > 0);
        if ws.len() >= MAX_LEASE_WATCHERS {
            return Err(TargetError::invalid(
                self.scope.name(),
                format!("more than {MAX_LEASE_WATCHERS} lease watchers"),
            ));
        }
        ws.push(w);
        Ok(())
    }

    /// Tells every live watcher (outside the lock: a watcher may take its own).
    fn notify(&self, served: bool) {
        let live: Vec<Arc<LeaseWatcher>> =
            self.watchers().iter().filter_map(Weak::upgrade).collect();
        for w in live {
            w(served);
        }
    }
}

impl Lease {
    /// The lease's name in errors and logs.
    fn obj(&self) -> &'static str {
        self.shared.scope.name()
    }

    /// Serves `t`'s volumes of this scope until now + `lease_ms` (monotonic
    /// clock); 0 revokes at once. Returns whether the lease had run out (or been revoked)
    /// before this call. Returns once every reactor has the new deadline.
    pub(crate) fn renew(&self, t: &Arc<Services>, lease_ms: u32) -> Result<bool, TargetError> {
        if u128::from(lease_ms) > MAX_LEASE.as_millis() {
            return Err(TargetError::invalid(
                self.obj(),
                format!(
                    "a lease of {lease_ms} ms is longer than the limit of {} ms",
                    MAX_LEASE.as_millis()
                ),
            ));
        }
        let now = Instant::now();
        let left = Duration::from_millis(u64::from(lease_ms));
        let until_boot_ns =
            boottime_ns().map(|b| b.saturating_add(u64::try_from(left.as_nanos()).unwrap_or(0)));
        self.set(t, now, left, until_boot_ns)
    }

    /// Serves `t`'s volumes of this scope until `until_ns` of `CLOCK_BOOTTIME`
    /// ([`boottime_ns`]); a deadline already past (0 among them) revokes at once.
    /// Returns whether the lease had run out (or been revoked) before this call.
    /// Returns once every reactor has the new deadline.
    pub(crate) fn renew_until(
        &self,
        t: &Arc<Services>,
        until_ns: u64,
    ) -> Result<bool, TargetError> {
        // The monotonic clock first: the deadline converted to it is never later
        // than the one asked for.
        let now = Instant::now();
        let Some(boot_ns) = boottime_ns() else {
            let e = TargetError::invalid(
                self.obj(),
                "cannot read CLOCK_BOOTTIME: a deadline on it cannot be taken".to_string(),
            );
            log::error!("{e}");
            return Err(e);
        };
        let left = Duration::from_nanos(until_ns.saturating_sub(boot_ns));
        if left > MAX_LEASE {
            return Err(TargetError::invalid(
                self.obj(),
                format!(
                    "a deadline {} ms ahead is further than the limit of {} ms",
                    left.as_millis(),
                    MAX_LEASE.as_millis()
                ),
            ));
        }
        self.set(t, now, left, Some(until_ns.max(boot_ns)))
    }

    /// Sets the deadline to `now + left` (monotonic) and `until_boot_ns` (boot
    /// clock); `left` zero revokes.
    fn set(
        &self,
        t: &Arc<Services>,
        now: Instant,
        left: Duration,
        until_boot_ns: Option<u64>,
    ) -> Result<bool, TargetError> {
        let lease_ms = left.as_millis();
        let deadline = now + left;
        let (generation, was_expired, was_fenced) = {
            let mut c = self.ctl();
            let was_expired = c.deadline.is_some() && c.past(now);
            // Never granted fences too.
            let was_fenced = c.deadline.is_none() || c.past(now);
            c.generation += 1;
            c.deadline = Some(deadline);
            c.until_boot_ns = until_boot_ns;
            (c.generation, was_expired, was_fenced)
        };
        let obj = self.obj();
        let vols = self.shared.scope.volumes();
        let shared = Arc::clone(&self.shared);
        let target = Arc::downgrade(t);
        t.reactors()
            .broadcast_blocking(move |r| {
                apply(
                    r,
                    generation,
                    (deadline, until_boot_ns),
                    Arc::clone(&shared),
                    Weak::clone(&target),
                )
            })
            .map_err(|e| {
                let e = TargetError::Timeout {
                    object: obj.into(),
                    reason: format!(
                        "renewal ({lease_ms} ms) did not reach every reactor: {e}; a reactor \
                         without it fences {vols} at the previous deadline"
                    ),
                };
                log::error!("{e}");
                e
            })?;
        if lease_ms == 0 {
            if !was_expired {
                log::warn!("{obj}: revoked; {vols} are fenced");
            }
        } else if was_expired {
            log::warn!("{obj}: renewed after expiry; {vols} are served again for {lease_ms} ms");
        }
        // Every reactor has the new state: watchers see it as it is now. (A
        // revocation fences the reactors, which report it as an expiry: watchers
        // hear of it from there, once.)
        if lease_ms > 0 && was_fenced {
            self.shared.notify(true);
        }
        Ok(was_expired)
    }

    /// The lease's state, time left and expiry count.
    pub(crate) fn status(&self) -> LeaseStatus {
        let now = Instant::now();
        let c = self.ctl();
        let (state, remaining_ms) = match c.deadline {
            None => (LeaseState::None, 0),
            Some(_) if c.past(now) => (LeaseState::Expired, 0),
            Some(d) => {
                let mut left = d.duration_since(now);
                if let (Some(until), Some(boot)) = (c.until_boot_ns, boottime_ns()) {
                    left = left.min(Duration::from_nanos(until.saturating_sub(boot)));
                }
                (
                    LeaseState::Valid,
                    u64::try_from(left.as_millis()).unwrap_or(u64::MAX),
                )
            }
        };
        drop(c);
        LeaseStatus {
            state,
            remaining_ms,
            expiries: self.shared.expiries.load(Ordering::Relaxed),
        }
    }
}

impl LeaseCtl {
    /// The deadline has passed at `now` (monotonic) or on the boot clock; false
    /// when none was set.
    fn past(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now) || boot_past(self.until_boot_ns)
    }
}

/// `CLOCK_BOOTTIME` has reached `until_ns` (false for None or an unreadable clock).
fn boot_past(until_ns: Option<u64>) -> bool {
    match (until_ns, boottime_ns()) {
        (Some(until), Some(now)) => now >= until,
        _ => false,
    }
}

/// Both leases as one reactor sees them (reactor-local).
pub(crate) struct ReactorLeases {
    /// The lease of shared volumes.
    pub(crate) shared: Rc<ReactorLease>,
    /// The lease of private volumes.
    pub(crate) private: Rc<ReactorLease>,
}

impl Default for ReactorLeases {
    fn default() -> Self {
        ReactorLeases {
            shared: Rc::new(ReactorLease::new(LeaseScope::Shared)),
            private: Rc::new(ReactorLease::new(LeaseScope::Private)),
        }
    }
}

impl ReactorLeases {
    /// The lease of `scope`.
    pub(crate) fn of(&self, scope: LeaseScope) -> &Rc<ReactorLease> {
        match scope {
            LeaseScope::Shared => &self.shared,
            LeaseScope::Private => &self.private,
        }
    }
}

/// One lease as one reactor sees it.
pub(crate) struct ReactorLease {
    scope: LeaseScope,
    deadline: Cell<Option<Instant>>,
    /// The same deadline on `CLOCK_BOOTTIME` (ns), which the poller also compares.
    until_boot_ns: Cell<Option<u64>>,
    /// The same deadline on `CLOCK_MONOTONIC_COARSE` (ns), less [`coarse_slack_ns`]:
    /// what the check on submit compares. None until granted, or when that clock
    /// cannot be read.
    until_coarse_ns: Cell<Option<u64>>,
    generation: Cell<u64>,
    /// Checked by the scope's volumes' channels on every submit. Until a lease is
    /// granted: true for shared volumes, false for private ones.
    fenced: Cell<bool>,
    /// Set by the first renewal, which also adds the expiry poller.
    link: RefCell<Option<(Arc<LeaseShared>, Weak<Services>)>>,
}

impl ReactorLease {
    fn new(scope: LeaseScope) -> ReactorLease {
        ReactorLease {
            scope,
            deadline: Cell::new(None),
            until_boot_ns: Cell::new(None),
            until_coarse_ns: Cell::new(None),
            generation: Cell::new(0),
            fenced: Cell::new(scope == LeaseScope::Shared),
            link: RefCell::new(None),
        }
    }

    /// True while the scope's volumes must not be served on this reactor, judged on
    /// the clock read now rather than the reactor's cached one: the check before new
    /// disk I/O starts. A reactor whose thread stalled in the middle of a loop
    /// iteration (its process stopped or its cgroup frozen) runs on with a cached clock
    /// from before the stall until its loop reads the clock again, and the I/O it
    /// takes in meanwhile can come long after the deadline, after another node took
    /// over. Reads `CLOCK_MONOTONIC_COARSE` (one vDSO call of about 6 ns; it fences up
    /// to [`coarse_slack_ns`] early, a few ms of a lease of seconds), or
    /// `CLOCK_MONOTONIC` where that clock cannot be read; nothing while fenced or
    /// never granted. A suspend, which the monotonic clocks do not count, is the
    /// poller's (it compares the boot clock on every pass).
    #[inline]
    pub(crate) fn fenced_now(&self) -> bool {
        if self.fenced.get() {
            return true;
        }
        if let Some(until) = self.until_coarse_ns.get() {
            return clock_ns(ClockId::CLOCK_MONOTONIC_COARSE).is_none_or(|now| now >= until);
        }
        self.deadline.get().is_some_and(|d| Instant::now() >= d)
    }

    /// Sets the flag; on the step from served to fenced, fails what waits on this
    /// reactor's volumes of the scope and reports the expiry (once per generation).
    fn set_fenced(&self, r: &Rc<Reactor>, fenced: bool) {
        let was = self.fenced.replace(fenced);
        if fenced && !was {
            let fence = self
                .link
                .borrow()
                .as_ref()
                .map(|(s, _)| s.volumes.fence_reactor);
            if let Some(fence) = fence {
                fence(r);
            }
            self.report(r.id());
        }
    }

    fn report(&self, reactor: usize) {
        let Some((shared, target)) = self.link.borrow().clone() else {
            return;
        };
        let generation = self.generation.get();
        let prev = shared.reported.fetch_max(generation, Ordering::AcqRel);
        if prev >= generation {
            return; // another reactor reported this expiry
        }
        shared.expiries.fetch_add(1, Ordering::Relaxed);
        // Listing volumes takes control-path locks: not on the reactor.
        let spawned = std::thread::Builder::new()
            .name("lease-expired".into())
            .spawn(move || {
                let Some(t) = target.upgrade() else {
                    return;
                };
                let scope = shared.scope;
                let (obj, vols) = (scope.name(), scope.volumes());
                let volumes = (shared.volumes.volumes)();
                log::error!(
                    "{obj}: expired (seen first on reactor {reactor}); {vols} fenced \
                     until the coordinator renews it: {} (their I/O fails with errno {FENCED_ERRNO}, \
                     iSCSI NOT READY 04h/0Ch)",
                    if volumes.is_empty() {
                        "none".to_string()
                    } else {
                        volumes.join(", ")
                    }
                );
                if scope == LeaseScope::Shared {
                    t.publish(Event::LeaseExpired { volumes });
                }
                // Watchers are told once every reactor is fenced (the others pass
                // the same deadline within about a loop iteration).
                let fenced_all = t.reactors().broadcast_blocking(move |r| {
                    let l = Rc::clone(r.local::<ReactorLeases>().of(scope));
                    if l.deadline.get().is_some_and(|d| d <= Instant::now())
                        || boot_past(l.until_boot_ns.get())
                    {
                        l.set_fenced(r, true);
                    }
                });
                match fenced_all {
                    Ok(_) => shared.notify(false),
                    Err(e) => log::error!(
                        "{obj}: expired; cannot reach every reactor to tell the watchers: {e}"
                    ),
                }
            });
        if let Err(e) = spawned {
            log::error!(
                "{}: expired on reactor {reactor}; cannot report it: {e}",
                self.scope.name()
            );
        }
    }
}

/// Takes a renewal on reactor `r` (run from its mailbox).
/// `deadline` is on the monotonic clock and, when readable, on `CLOCK_BOOTTIME`.
fn apply(
    r: &Rc<Reactor>,
    generation: u64,
    deadline: (Instant, Option<u64>),
    shared: Arc<LeaseShared>,
    target: Weak<Services>,
) {
    let l = Rc::clone(r.local::<ReactorLeases>().of(shared.scope));
    if generation <= l.generation.get() {
        return; // a newer renewal got here first
    }
    let (deadline, until_boot_ns) = deadline;
    l.generation.set(generation);
    l.deadline.set(Some(deadline));
    l.until_boot_ns.set(until_boot_ns);
    l.until_coarse_ns.set(coarse_deadline(deadline));
    let first = l.link.borrow_mut().replace((shared, target)).is_none();
    if first {
        r.add_poller(Rc::new(LeasePoller {
            reactor: Rc::downgrade(r),
            lease: Rc::clone(&l),
        }));
    }
    l.set_fenced(r, deadline <= Instant::now() || boot_past(until_boot_ns));
}

/// `deadline` on `CLOCK_MONOTONIC_COARSE` in ns, less [`coarse_slack_ns`]; None when
/// that clock cannot be read.
fn coarse_deadline(deadline: Instant) -> Option<u64> {
    let slack = coarse_slack_ns()?;
    // Instant is CLOCK_MONOTONIC, the clock the coarse one is a tick-grained copy of.
    let left = deadline.saturating_duration_since(Instant::now());
    let now = clock_ns(ClockId::CLOCK_MONOTONIC)?;
    let left = u64::try_from(left.as_nanos()).unwrap_or(u64::MAX);
    Some(now.saturating_add(left).saturating_sub(slack))
}

/// Fences the scope's volumes when the reactor's clock passes the deadline, and bounds
/// the reactor's sleep by it.
struct LeasePoller {
    reactor: RcWeak<Reactor>,
    lease: Rc<ReactorLease>,
}

impl Poller for LeasePoller {
    fn poll(&self, now: Instant) -> usize {
        if self.lease.fenced.get() {
            return 0;
        }
        // A suspended host's monotonic clock stood still: the boot clock did not.
        let past = self.lease.deadline.get().is_some_and(|d| now >= d)
            || boot_past(self.lease.until_boot_ns.get());
        if !past {
            return 0;
        }
        if let Some(r) = self.reactor.upgrade() {
            self.lease.set_fenced(&r, true);
        }
        1
    }

    fn next_deadline(&self) -> Option<Instant> {
        if self.lease.fenced.get() {
            None
        } else {
            self.lease.deadline.get()
        }
    }
}
