//! Preempt and abort (Reservation Acquire, action 010b): the commands of the
//! preempted hosts on this node end with "Command Aborted due to Preempt and
//! Abort", and the Acquire completes only once none of them is still at a bdev,
//! so no command of a preempted host writes after the host sees the Acquire
//! complete.
//!
//! The queue pair running the Acquire changes the state (so new commands of the
//! preempted hosts meet a reservation conflict), then sends every reactor of the
//! frontend a message: each queue pair of a preempted host there marks its
//! commands to that namespace's bdev aborted (a command waiting for a buffer ends
//! at once, one waiting for host data when its data is in, one at the bdev when
//! its I/O completes) and holds a [`PreemptAbort`] count per command still at the
//! bdev. The count starts at one per reactor plus one for the sender; when it
//! reaches zero the Acquire's queue pair is asked to complete it (and its tick
//! checks too, should that message not fit in the ring).
//!
//! For a shared volume the cluster commits the preempt and every node applies
//! the committed state (`setReservations`, [`super::NvmfFrontend::set_reservations`]):
//! each node, the issuing one included, aborts the preempted hosts' commands
//! on its reactors the same way, and the control thread applying the state
//! waits ([`PreemptAbort::wait`]) until none of them is at a bdev before it
//! answers; the Acquire's queue pair then completes on the cluster's answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::frontend::scsi::pr::Nexus;
use crate::reactor::{Msg, Reactor};

/// One preempt and abort in progress: what it aborts and what it waits for.
pub(crate) struct PreemptAbort {
    /// The frontend's id.
    pub(crate) fid: u64,
    /// The bdev of the namespace whose reservation was preempted.
    pub(crate) bdev: String,
    /// The hosts whose registrations the preempt removed.
    pub(crate) hosts: Vec<Nexus>,
    /// The reactor and connection of the queue pair running the Acquire; None
    /// when a control thread applying a cluster's state waits ([`Self::wait`]).
    pub(crate) at: Option<(usize, u64)>,
    /// Reactors not yet done plus commands of preempted hosts still at a bdev.
    left: AtomicUsize,
    /// Taken around the last release's wake-up and [`Self::wait`]'s check.
    lock: Mutex<()>,
    zero: Condvar,
}

impl PreemptAbort {
    /// A preempt and abort of `hosts` on `bdev` run by connection `at` of
    /// frontend `fid` (None: by a control thread), waiting for `reactors`
    /// reactors and its sender.
    pub(crate) fn new(
        fid: u64,
        bdev: &str,
        hosts: Vec<Nexus>,
        at: Option<(usize, u64)>,
        reactors: usize,
    ) -> PreemptAbort {
        PreemptAbort {
            fid,
            bdev: bdev.to_string(),
            hosts,
            at,
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
    /// wakes a waiting control thread or asks the Acquire's queue pair (through
    /// `r`'s peers; `r` None: the control thread itself) to complete it.
    pub(crate) fn release(&self, r: Option<&Reactor>) {
        if self.left.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        {
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            self.zero.notify_all();
        }
        let (Some((reactor, conn)), Some(r)) = (self.at, r) else {
            return;
        };
        let Some(h) = r.peers().get(reactor) else {
            return;
        };
        let fid = self.fid;
        let msg: Msg = Box::new(move |r| super::qpair::preempt_done(r, fid, conn));
        if h.try_send(msg).is_err() {
            // The Acquire's queue pair sees `done` at its next tick.
            log::debug!(
                "nvmf: preempt and abort on bdev {}: reactor {reactor} busy; the Acquire completes at its next tick",
                self.bdev
            );
        }
    }
}
