//! Preempt and abort across a frontend's reactors, for both frontends: SCSI
//! PERSISTENT RESERVE OUT service action PREEMPT AND ABORT (iSCSI) and NVMe
//! Reservation Acquire action 010b. The commands of the preempted I_T nexuses
//! (hosts) on this node end without writing anything more, and the command
//! that preempted completes (or the control thread applying a cluster's
//! committed preempt answers) only once none of them is still at a bdev, so no
//! command of a preempted host writes after the preempting host sees GOOD.
//!
//! Whoever changed the state (so new commands of the preempted hosts meet a
//! conflict) makes a [`PreemptAbort`] and sends every reactor of the frontend
//! its abort message ([`PreemptAbort::msg`]): on each reactor the frontend's
//! [`AbortFn`] ends the matching commands of its connections (what "ends" means
//! is the frontend's: NVMe's status 1Bh, SCSI's abort with no status) and holds
//! the count once per command still at a bdev ([`PreemptAbort::hold`], released
//! when its I/O completes). The count starts at one per reactor plus one for the
//! sender; when it reaches zero the issuing connection is told through its
//! reactor's ring ([`DoneFn`]; its tick checks too, should that message not fit
//! in the ring), or the waiting control thread wakes ([`PreemptAbort::wait`]).
//!
//! Two ways in:
//! - a reactor (a standalone LUN or namespace: the issuing command waits,
//!   [`PaWait`]);
//! - a control thread applying a cluster's committed state (`setReservations`:
//!   every node, the issuing one included, aborts its own hosts' commands;
//!   [`abort_committed`], then [`ResvApplied::wait`]), after
//!   which the issuing command completes on the cluster's answer.

use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::error::TargetError;
use crate::frontend::scsi::pr::Nexus;
use crate::frontend::transport::{Link, Protocol, Registry, Wire};
use crate::reactor::{Msg, Reactor, ReactorSet, CONTROL_SEND_TIMEOUT};

/// Longest applying a cluster's committed preempt and abort waits for the
/// preempted hosts' commands at a bdev (`setReservations`; as long as a
/// reservation command waits for the cluster).
pub const PREEMPT_ABORT_WAIT: Duration = crate::frontend::scsi::pr_cluster::PR_OUT_TIMEOUT;

/// A frontend's abort on one reactor: ends the commands of the hosts `pa`
/// preempted on its connections there, [`PreemptAbort::hold`]ing once per
/// command still at a bdev. The reactor's own count is released by the caller.
/// Each frontend's is [`abort_on`] over its connection type.
pub(crate) type AbortFn = fn(&Rc<Reactor>, &Arc<PreemptAbort>);

/// A connection whose commands a preempt and abort can end.
pub(crate) trait Preemptible {
    /// Ends this connection's commands of the hosts `pa` preempted to its bdev
    /// (none when this connection's host is not one of them).
    fn abort_for(&self, pa: &Arc<PreemptAbort>);
}

/// The [`AbortFn`] of a frontend whose connections are `C` (registry
/// `Registry<C, P>`): every connection of `pa`'s frontend on reactor `r`.
pub(crate) fn abort_on<C: Wire + Preemptible, P: Protocol>(
    r: &Rc<Reactor>,
    pa: &Arc<PreemptAbort>,
) {
    for c in Registry::<C, P>::conns_of(r, pa.fid) {
        c.abort_for(pa);
    }
}

/// Tells connection `conn` of frontend `fid` on this reactor that a preempt and
/// abort it waits for is done.
pub(crate) type DoneFn = fn(&Rc<Reactor>, u64, u64);

/// The connection running the preempting command: its reactor, its id and what
/// to call there once nothing is left.
#[derive(Clone, Copy)]
struct Issuer {
    reactor: usize,
    conn: u64,
    done: DoneFn,
}

/// One preempt and abort in progress: what it aborts and what it waits for.
pub(crate) struct PreemptAbort {
    /// The frontend's id.
    pub(crate) fid: u64,
    /// The bdev of the LUN or namespace whose reservation was preempted.
    pub(crate) bdev: String,
    /// The I_T nexuses (hosts) whose registrations the preempt removed.
    pub(crate) hosts: Vec<Nexus>,
    /// The connection running the preempting command; None when a control
    /// thread applying a cluster's state waits ([`Self::wait`]).
    at: Option<Issuer>,
    /// The frontend's abort on one reactor.
    abort: AbortFn,
    /// Reactors not yet done plus commands of preempted hosts still at a bdev.
    left: AtomicUsize,
    /// Taken around the last release's wake-up and [`Self::wait`]'s check.
    lock: Mutex<()>,
    zero: Condvar,
}

impl PreemptAbort {
    /// A preempt and abort of `hosts` on `bdev` in frontend `fid`, run by `at`
    /// (None: by a control thread), aborting with `abort` on each of
    /// `reactors` reactors and counting its sender.
    fn new(
        fid: u64,
        bdev: &str,
        hosts: Vec<Nexus>,
        at: Option<Issuer>,
        abort: AbortFn,
        reactors: usize,
    ) -> PreemptAbort {
        PreemptAbort {
            fid,
            bdev: bdev.to_string(),
            hosts,
            at,
            abort,
            left: AtomicUsize::new(reactors + 1),
            lock: Mutex::new(()),
            zero: Condvar::new(),
        }
    }

    /// Waits (a control thread) until nothing is left or `limit` passed; true
    /// when nothing is left.
    pub(crate) fn wait(&self, limit: Duration) -> bool {
        let end = Instant::now() + limit;
        let mut g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        while !self.done() {
            let now = Instant::now();
            if now >= end {
                return false;
            }
            g = match self.zero.wait_timeout(g, end - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        true
    }

    /// Whether `nexus` is one of the preempted hosts.
    pub(crate) fn preempted(&self, nexus: &Nexus) -> bool {
        self.hosts.contains(nexus)
    }

    /// One more command to wait for.
    pub(crate) fn hold(&self) {
        self.left.fetch_add(1, Ordering::AcqRel);
    }

    /// True once nothing is left to wait for.
    pub(crate) fn done(&self) -> bool {
        self.left.load(Ordering::Acquire) == 0
    }

    /// A reactor is done, or a command it waited for left the bdev; the last one
    /// wakes a waiting control thread or tells the issuing connection (through
    /// `r`'s peers; `r` None: the control thread itself).
    pub(crate) fn release(&self, r: Option<&Reactor>) {
        if self.left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        {
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.zero.notify_all();
        }
        let (Some(at), Some(r)) = (self.at, r) else {
            return;
        };
        let Some(h) = r.peers().get(at.reactor) else {
            return;
        };
        let (fid, conn, done) = (self.fid, at.conn, at.done);
        let msg: Msg = Box::new(move |r| done(r, fid, conn));
        if h.try_send(msg).is_err() {
            // The issuing connection sees `done` at its next tick.
            log::debug!(
                "preempt and abort on bdev {}: reactor {} busy; the preempting command completes at its next tick",
                self.bdev,
                at.reactor
            );
        }
    }

    /// The message that runs the frontend's abort on the reactor receiving it,
    /// then counts that reactor done.
    pub(crate) fn msg(self: &Arc<Self>) -> Msg {
        let pa = Arc::clone(self);
        Box::new(move |r| {
            (pa.abort)(r, &pa);
            pa.release(Some(r));
        })
    }

    /// Sends reactor `to` the abort (from reactor `r`); false when its ring is
    /// full (the sender tries again at its tick).
    fn send(self: &Arc<Self>, r: &Reactor, to: usize) -> bool {
        let Some(h) = r.peers().get(to) else {
            return true;
        };
        h.try_send(self.msg()).is_ok()
    }
}

/// A cluster's committed preempt and abort of `hosts` (by `by`) applied by a
/// control thread to volume `volume` of frontend `fid` (`obj` names both in
/// the log): sends every reactor of `reactors` the frontend's `abort` (a
/// reactor not reached within [`CONTROL_SEND_TIMEOUT`] keeps its commands and is
/// counted done, logged), then counts the sender done. The caller waits with
/// [`ResvApplied::wait`] without holding its frontend.
pub(crate) fn abort_committed(
    reactors: &ReactorSet,
    (fid, abort): (u64, AbortFn),
    (volume, obj): (&str, &str),
    by: &Nexus,
    hosts: Vec<Nexus>,
) -> ResvApplied {
    log::info!(
        "{obj}: preempt and abort by {by} committed: aborting the commands of {} on this node",
        hosts
            .iter()
            .map(|n| n.initiator.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let handles = reactors.handles();
    let pa = Arc::new(PreemptAbort::new(
        fid,
        volume,
        hosts,
        None,
        abort,
        handles.len(),
    ));
    for (i, h) in handles.iter().enumerate() {
        if let Err(e) = h.send_timeout(pa.msg(), CONTROL_SEND_TIMEOUT) {
            log::error!(
                "{obj}: preempt and abort: reactor {i} not reached ({e}); its connections keep their commands"
            );
            pa.release(None);
        }
    }
    pa.release(None);
    ResvApplied::aborting(volume, pa)
}

/// A preempt and abort the preempting command on a reactor waits for.
pub(crate) struct PaWait {
    pa: Arc<PreemptAbort>,
    /// Reactors whose ring was full: the abort goes to them at the next tick.
    unsent: Vec<usize>,
}

impl PaWait {
    /// The preempting command of connection `link` removed `hosts` on `bdev`:
    /// sends the frontend's `abort` to every reactor (its own included, through
    /// its ring) and counts the sender done; `done` tells the connection when
    /// nothing is left (it polls too, [`PaWait::poll`]).
    pub(crate) fn start(
        link: &Link,
        (abort, done): (AbortFn, DoneFn),
        bdev: &str,
        hosts: Vec<Nexus>,
    ) -> PaWait {
        let r = &link.reactor;
        let at = Issuer {
            reactor: r.id(),
            conn: link.id,
            done,
        };
        let n = r.peers().len();
        let pa = Arc::new(PreemptAbort::new(link.fid, bdev, hosts, Some(at), abort, n));
        let unsent = (0..n).filter(|&i| !pa.send(r, i)).collect();
        pa.release(Some(r));
        PaWait { pa, unsent }
    }

    /// Resends the aborts that did not fit in a reactor's ring; true once
    /// nothing is left to wait for (the command completes).
    pub(crate) fn poll(&mut self, r: &Reactor) -> bool {
        let pa = Arc::clone(&self.pa);
        self.unsent.retain(|&i| !pa.send(r, i));
        pa.done()
    }
}

/// A committed reservation state given to a frontend's LUNs or namespaces of a
/// volume (`set_reservations`): what is left to wait for.
#[must_use = "wait for the aborted commands to leave the bdevs"]
pub struct ResvApplied {
    volume: String,
    /// A preempt and abort's aborts under way on this node.
    pa: Option<Arc<PreemptAbort>>,
}

impl ResvApplied {
    /// Nothing to wait for (no preempt and abort of this frontend's hosts).
    pub(crate) fn nothing(volume: &str) -> ResvApplied {
        ResvApplied {
            volume: volume.to_string(),
            pa: None,
        }
    }

    /// The aborts of `pa`, started from a control thread, to wait for.
    fn aborting(volume: &str, pa: Arc<PreemptAbort>) -> ResvApplied {
        ResvApplied {
            volume: volume.to_string(),
            pa: Some(pa),
        }
    }

    /// Waits until no command a preempt and abort ended on this node is still
    /// at a bdev: at most [`PREEMPT_ABORT_WAIT`], then an error naming the
    /// volume.
    pub fn wait(self) -> Result<(), TargetError> {
        let Some(pa) = self.pa else {
            return Ok(());
        };
        if pa.wait(PREEMPT_ABORT_WAIT) {
            return Ok(());
        }
        Err(TargetError::Timeout {
            object: format!("volume {}", self.volume),
            reason: format!(
                "commands of the hosts a preempt and abort removed are still at a bdev of this node after {} s",
                PREEMPT_ABORT_WAIT.as_secs()
            ),
        })
    }
}
