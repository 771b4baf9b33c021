//! Persistent reservations of a shared volume, kept by the cluster.
//!
//! A LUN of a shared volume (`IscsiLun.clusterReservations`) does not own its
//! reservation state: the coordinator does, as part of the disk group's
//! configuration, and sets each node's copy with `setReservations` when a change
//! commits ([`PrBroker::set_state`]). PERSISTENT RESERVE IN reads that copy here.
//! A PERSISTENT RESERVE OUT is first run (the same [`super::pr::PrState::out`]) on a
//! copy of the committed state: a conflict, a bad parameter or a no-op is answered at
//! once; a change becomes a request to the coordinator ([`PrBroker::forward`], the
//! kernel interface's `prOut` event), which runs it as a cluster transaction (the
//! master runs the same logic against the newest state when it validates it) and
//! answers with `prOutDone` ([`PrBroker::complete`]):
//!
//! - [`PrOutResult::Committed`]: every node's data plane has the new state (the
//!   commit's `setReservations` came first); the command ends GOOD.
//! - [`PrOutResult::Stale`]: the master refused it against a newer state; the task
//!   runs the logic again on the state it holds now (at most [`PR_OUT_TRIES`] times).
//! - [`PrOutResult::Unavailable`]: the cluster cannot run it (no quorum, the node is
//!   not a member, no coordinator): NOT READY, ASYMMETRIC ACCESS STATE TRANSITION
//!   ([`super::sense::STATE_TRANSITION`]), which hosts retry.
//!
//! Threads: `forward` runs on the connection's reactor and keeps the waiting task in
//! a reactor-local table; `complete` runs on a control thread (the kernel interface)
//! and hands the result to that reactor through its mailbox. The requests waiting
//! are bounded by [`MAX_PENDING_PR_OUT`]; a request the coordinator never answers is
//! dropped after [`PR_OUT_TIMEOUT`] (its connection fails it then).

pub use plexd_target_api::scsi::PrOutResult;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::pr::{Nexus, PrState};
use crate::error::TargetError;
use crate::event::Event;
use crate::reactor::{Msg, Reactor, ReactorHandle, CONTROL_SEND_TIMEOUT};
use crate::services::Services;

/// Most PERSISTENT RESERVE OUT requests waiting for the coordinator per target;
/// beyond it a PR OUT gets [`super::sense::STATE_TRANSITION`] at once.
pub const MAX_PENDING_PR_OUT: usize = 64;
/// How long a PR OUT waits for the coordinator's answer before it fails with
/// [`super::sense::STATE_TRANSITION`] (a transaction takes well under a second; a
/// master takeover a few seconds).
pub const PR_OUT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often one PR OUT is sent to the cluster when the master keeps finding the
/// state changed under it ([`PrOutResult::Stale`]).
pub const PR_OUT_TRIES: u32 = 4;

/// A PERSISTENT RESERVE OUT for the cluster to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrOutRequest {
    /// The volume (the LUN's bdev, `DG.VOL`).
    pub volume: String,
    /// The I_T nexus it came from.
    pub nexus: Nexus,
    /// Service action.
    pub sa: u8,
    /// Scope and type byte of the CDB.
    pub scope_type: u8,
    /// The parameter list (24 bytes).
    pub param: Vec<u8>,
}

/// Receives the result of a forwarded PR OUT (implemented by a connection).
pub trait PrDone {
    /// The request forwarded with `tag` ended with `result`.
    fn pr_done(&self, tag: u64, result: PrOutResult);
}

/// A forwarded request: the reactor its task waits on.
struct Pending {
    reactor: ReactorHandle,
    since: Instant,
}

/// A waiting task: its receiver (gone when its connection closed) and its tag.
type Waiter = (Weak<dyn PrDone>, u64);

/// The waiting tasks of one reactor, by request id.
#[derive(Default)]
struct Waiters(RefCell<HashMap<u64, Waiter>>);

/// The cluster reservation state of a target's shared volumes and the PR OUT
/// requests waiting for the coordinator.
pub struct PrBroker {
    target: std::sync::Weak<Services>,
    pending: Mutex<HashMap<u64, Pending>>,
    next: AtomicU64,
    /// The committed state of each shared volume, as last set.
    states: Mutex<HashMap<String, PrState>>,
}

impl PrBroker {
    /// A broker publishing its requests as events of `target`.
    pub(crate) fn new(target: std::sync::Weak<Services>) -> PrBroker {
        PrBroker {
            target,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            states: Mutex::new(HashMap::new()),
        }
    }

    fn pending(&self) -> MutexGuard<'_, HashMap<u64, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn states(&self) -> MutexGuard<'_, HashMap<String, PrState>> {
        self.states.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The committed state of `volume` (empty when never set).
    pub fn state(&self, volume: &str) -> PrState {
        self.states().get(volume).cloned().unwrap_or_default()
    }

    /// Records the committed state of `volume`; the caller gives it to the LUNs.
    pub fn set_state(&self, volume: &str, state: &PrState) {
        let mut m = self.states();
        if state.is_empty() {
            m.remove(volume);
        } else {
            m.insert(volume.to_string(), state.clone());
        }
    }

    /// Number of requests waiting for the coordinator.
    pub fn waiting(&self) -> usize {
        self.pending().len()
    }

    /// Sends `req` to the coordinator; `done` hears the result with `tag` on this
    /// reactor `r`. Returns the request id, or why it cannot be sent (the caller
    /// fails the command with a sense the host retries).
    pub fn forward(
        &self,
        r: &Rc<Reactor>,
        req: PrOutRequest,
        done: Weak<dyn PrDone>,
        tag: u64,
    ) -> Result<u64, String> {
        let now = Instant::now();
        let id = {
            let mut p = self.pending();
            // Requests the coordinator never answered: their tasks timed out.
            p.retain(|_, w| now.saturating_duration_since(w.since) < PR_OUT_TIMEOUT);
            if p.len() >= MAX_PENDING_PR_OUT {
                return Err(format!(
                    "{MAX_PENDING_PR_OUT} persistent reserve out requests wait for the coordinator already"
                ));
            }
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            p.insert(
                id,
                Pending {
                    reactor: r.handle(),
                    since: now,
                },
            );
            id
        };
        r.local::<Waiters>().0.borrow_mut().insert(id, (done, tag));
        let ev = Event::PrOut {
            request: id,
            volume: req.volume,
            initiator: req.nexus.initiator,
            relative_port: req.nexus.port,
            service_action: req.sa,
            scope_type: req.scope_type,
            parameters: req.param,
        };
        let delivered = self.target.upgrade().map_or(0, |t| t.publish(ev));
        if delivered == 0 {
            self.cancel(r, id);
            return Err("no coordinator is subscribed to this target's events".into());
        }
        Ok(id)
    }

    /// Forgets request `id` (its task timed out or went away) on its reactor `r`.
    pub fn cancel(&self, r: &Rc<Reactor>, id: u64) {
        self.pending().remove(&id);
        r.local::<Waiters>().0.borrow_mut().remove(&id);
    }

    /// The coordinator's answer to request `id`: handed to the waiting task on its
    /// reactor. `NotFound` when no such request waits (answered already, timed out).
    pub fn complete(&self, id: u64, result: PrOutResult) -> Result<(), TargetError> {
        let not_found = || TargetError::NotFound {
            kind: "persistent reserve out request",
            name: id.to_string(),
        };
        let w = self.pending().remove(&id).ok_or_else(not_found)?;
        let msg: Msg = Box::new(move |r: &Rc<Reactor>| {
            let waiter = r.local::<Waiters>().0.borrow_mut().remove(&id);
            if let Some(done) = waiter.and_then(|(d, tag)| d.upgrade().map(|d| (d, tag))) {
                done.0.pr_done(done.1, result);
            }
        });
        w.reactor
            .send_timeout(msg, CONTROL_SEND_TIMEOUT)
            .map_err(|e| TargetError::Timeout {
                object: format!("persistent reserve out request {id}"),
                reason: e.to_string(),
            })
    }
}
