//! The data-plane lease renewer: a small thread of its own that hands the data plane
//! the end of this node's lease (`renewLeaseUntil`), so a renewal never waits behind
//! a drain, a disk write or any other work of the driver, and a data plane that hangs
//! holds up this thread only, never the main loop.
//!
//! The main loop publishes, at every tick, the lease's end as an absolute deadline
//! on `CLOCK_BOOTTIME` ([`Renewer::publish`]: the clock read *before* the core's
//! lease, so the deadline is never later than the lease's end); the data plane serves
//! until that deadline of the same host clock. A renewal that waited — this thread
//! or the whole process frozen between the publication and the data plane's receipt
//! (SIGSTOP, a long page fault) — carries the same deadline, never more lease than
//! the coordinator held; one that arrives past it revokes.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use plexd_target_api::KernelClient;

/// Longest the thread sleeps without news from the main loop before it checks
/// whether it must stop.
const IDLE_WAKE: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    /// The connection to renew on; none while the data plane is lost.
    client: Option<Arc<KernelClient>>,
    /// The newest value: lease left (ms) at that instant, and its end on
    /// `CLOCK_BOOTTIME` (ns; None when that clock cannot be read).
    value: Option<(u64, Instant, Option<u64>)>,
    /// Bumped at every publish (the thread renews once per new value).
    generation: u64,
    stop: bool,
    /// A clean stop revoked the lease ([`LeaseView::revoke_for_stop`]): no renewal
    /// grants it again.
    sealed: bool,
}

/// What a renewer thread shares with its handle (this one's and
/// [`super::owner_lease`]'s): its state, the wake-up, and the lock around calls.
pub(super) struct RenewerShared<S> {
    pub(super) state: Mutex<S>,
    pub(super) wake: Condvar,
    /// Held around every renewal call, so a revocation for a clean stop follows
    /// any renewal already on its way (never the other way round).
    pub(super) calls: Mutex<()>,
}

impl<S> RenewerShared<S> {
    /// Shared state starting at `state`.
    pub(super) fn new(state: S) -> Arc<RenewerShared<S>> {
        Arc::new(RenewerShared {
            state: Mutex::new(state),
            wake: Condvar::new(),
            calls: Mutex::new(()),
        })
    }

    /// The state (a poisoned lock is taken over: the state stays consistent).
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, S> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The lock around renewal calls.
    pub(super) fn calls(&self) -> std::sync::MutexGuard<'_, ()> {
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A clean stop's revocation of the `what` lease, after any renewal in flight:
    /// `seal` marks the state so that no renewal follows and gives the connection,
    /// on which `revoke` is called.
    pub(super) fn revoke_sealed(
        &self,
        what: &str,
        seal: impl FnOnce(&mut S) -> Option<Arc<KernelClient>>,
        revoke: impl FnOnce(&KernelClient) -> Result<bool, plexd_target_api::ClientError>,
    ) -> Result<(), String> {
        let _calls = self.calls();
        let client = seal(&mut self.lock()).ok_or("the data plane is lost")?;
        revoke(&client)
            .map(|_| ())
            .map_err(|e| format!("cannot revoke the {what}: {e}"))
    }
}

type Shared = RenewerShared<State>;

/// The main loop's handle on the renewer thread.
pub struct Renewer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Renewer {
    /// Starts the thread for node `node`, renewing on `client`; `stall` (the
    /// `lease.renew` failpoint) is slept between taking a lease and sending it.
    pub fn start(node: &str, client: Arc<KernelClient>, stall: Option<Duration>) -> Renewer {
        let shared = Shared::new(State {
            client: Some(client),
            ..State::default()
        });
        let s = Arc::clone(&shared);
        let name = node.to_string();
        let thread = std::thread::Builder::new()
            .name("lease".into())
            .spawn(move || run(&name, &s, stall))
            .map_err(|e| log::error!("node {node}: cannot start the lease thread: {e}; the data plane will not be given a lease"))
            .ok();
        Renewer { shared, thread }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared.lock()
    }

    /// `left_ms` of lease were left when `CLOCK_BOOTTIME` read `boot_ns` (read
    /// before the lease was computed; [`super::clock::boottime_ns`]): renew the data
    /// plane until then.
    pub fn publish(&self, boot_ns: Option<u64>, left_ms: u64) {
        let until_ns = boot_ns.map(|b| b.saturating_add(left_ms.saturating_mul(1_000_000)));
        let mut st = self.lock();
        st.value = Some((left_ms, Instant::now(), until_ns));
        st.generation += 1;
        drop(st);
        self.shared.wake.notify_one();
    }

    /// The connection to renew on (none while the data plane is lost).
    pub fn set_client(&self, client: Option<Arc<KernelClient>>) {
        self.lock().client = client;
    }

    /// A read-only view of the newest published lease, for other threads.
    pub fn view(&self) -> LeaseView {
        LeaseView {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// Until when this node's lease holds, as the main loop last published it: what the
/// driver checks a master's disk write against (a process frozen past its lease
/// publishes nothing new, so the end it finds has passed).
#[derive(Clone)]
pub struct LeaseView {
    shared: Arc<Shared>,
}

impl LeaseView {
    /// A clean stop: revokes the data plane's lease (`renewLease(0)`) after any
    /// renewal in flight, and seals it: no later renewal grants it again. When this
    /// returns Ok, the data plane fails every new I/O to shared volumes (the renewal
    /// is in force on every reactor when it answers).
    pub fn revoke_for_stop(&self) -> Result<(), String> {
        self.shared.revoke_sealed(
            "data-plane lease",
            |st| {
                st.sealed = true;
                st.client.clone()
            },
            |c| c.renew_lease(0),
        )
    }

    /// The end of the newest published lease; None when none was published or the
    /// last one was none (0 ms). A lease too long to represent ends in a year.
    pub fn end(&self) -> Option<Instant> {
        let st = self.shared.lock();
        let (left_ms, at, _) = st.value?;
        if left_ms == 0 {
            return None;
        }
        let year = Duration::from_secs(365 * 86_400);
        Some(
            at.checked_add(Duration::from_millis(left_ms).min(year))
                .unwrap_or(at + year),
        )
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        self.lock().stop = true;
        self.shared.wake.notify_one();
        // A renewal in flight ends within the client's call timeout; do not wait
        // for it at exit.
        drop(self.thread.take());
    }
}

fn run(node: &str, shared: &Shared, stall: Option<Duration>) {
    let mut seen = 0u64;
    // The data plane was last given a non-zero lease by this process.
    let mut held = false;
    // The connection whose data plane predates `renewLeaseUntil` (it is renewed
    // with durations), if the current one is.
    let mut old_target: Option<Arc<KernelClient>> = None;
    loop {
        let (client, left_ms, at, until_ns) = {
            let mut st = shared.lock();
            while !st.stop && st.generation == seen {
                st = shared
                    .wake
                    .wait_timeout(st, IDLE_WAKE)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            if st.stop {
                return;
            }
            seen = st.generation;
            let Some((left_ms, at, until_ns)) = st.value else {
                continue;
            };
            let Some(client) = st.client.clone() else {
                continue;
            };
            (client, left_ms, at, until_ns)
        };
        let _calls = shared.calls();
        if shared
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sealed
        {
            // Revoked for a clean stop: nothing to renew any more.
            continue;
        }
        // What is left now (for the log, and for the duration form).
        let left = match until_ns.zip(super::clock::boottime_ns()) {
            Some((until, now)) => until.saturating_sub(now) / 1_000_000,
            None => {
                let aged = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
                left_ms.saturating_sub(aged)
            }
        };
        let left = u32::try_from(left).unwrap_or(u32::MAX);
        if left == 0 && !held {
            // Nothing this process granted to revoke. A lease an earlier plexd
            // granted runs on (the cluster waits it out): a restart inside the
            // lease never stops I/O.
            continue;
        }
        if let Some(d) = stall {
            std::thread::sleep(d);
        }
        let old = old_target.as_ref().is_some_and(|c| Arc::ptr_eq(c, &client));
        let renewed = match until_ns.filter(|_| !old) {
            // The deadline, wherever the renewal got delayed; 0 revokes.
            Some(until) => match client.renew_lease_until(if left_ms == 0 { 0 } else { until }) {
                Err(e) if super::kernel::unimplemented(&e) => {
                    log::warn!(
                        "node {node}: plexd-target at {} predates renewLeaseUntil: its lease is renewed \
                         with durations until it is upgraded (a renewal delayed on its way then extends \
                         the lease by the delay)",
                        client.path()
                    );
                    old_target = Some(Arc::clone(&client));
                    client.renew_lease(left)
                }
                r => r,
            },
            // No boot clock, or an older data plane: the duration, measured from its
            // arrival.
            None => client.renew_lease(left),
        };
        match renewed {
            Ok(was_expired) => {
                if left > 0 && (was_expired || !held) {
                    let again = if was_expired {
                        ", after it had run out"
                    } else {
                        ""
                    };
                    log::info!(
                        "node {node}: data-plane lease granted ({left} ms{again}): shared volumes served"
                    );
                }
                if left == 0 && held {
                    log::warn!(
                        "node {node}: no lease (not a member of a quorate view): the data plane stops serving shared volumes"
                    );
                }
                held = left > 0;
            }
            Err(e) => log::warn!("node {node}: cannot renew the data-plane lease: {e}"),
        }
    }
}
