//! The pieces of a quiesce the reactors finish among themselves: the
//! [`Countdown`] of reactors still draining (the last one wakes the prepare's
//! caller), the [`Release`] commit and abort publish for the reactors to apply;
//! and where a quiesce's time goes: the timeline of a volume's last prepare and
//! commit, stamped where each step happens (the control thread or the reactors).
//!
//! A diagnostic (plexperf's `--quiesce-every` prints it; nothing decides on it):
//! one [`QuiesceTrace`] per volume, written with relaxed atomics (one clock read
//! per step and reactor), reset by each prepare. Read it with
//! [`crate::Target::quiesce_timeline`] after the commit or abort returned.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;
use std::thread::Thread;
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;

/// The steps of one quiesce, each as the time since the prepare call, `None`
/// when the step did not happen (yet). Reactor steps are the last reactor's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuiesceTimeline {
    /// The last reactor closed its gate (new I/O parks from here on).
    pub gates_closed: Option<Duration>,
    /// The last reactor's in-flight count reached zero: the volume is drained.
    pub drained: Option<Duration>,
    /// The prepare returned to its caller.
    pub prepare_returned: Option<Duration>,
    /// The commit (or abort) was called.
    pub commit_called: Option<Duration>,
    /// The last reactor reopened its gate and resubmitted its parked I/O.
    pub resumed: Option<Duration>,
    /// The commit (or abort) returned to its caller.
    pub commit_returned: Option<Duration>,
    /// The longest time one reactor's gate stayed closed (closed → reopened,
    /// measured on that reactor): how long its parked I/O waited at most.
    pub stall: Option<Duration>,
}

/// The steps a [`QuiesceTrace`] records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    GatesClosed = 0,
    Drained,
    PrepareReturned,
    CommitCalled,
    Resumed,
    CommitReturned,
}

const STEPS: usize = 6;

/// One volume's quiesce timeline (see the module docs).
pub(crate) struct QuiesceTrace {
    /// What every stamp counts from (the volume's creation).
    origin: Instant,
    /// The prepare call, in ns since `origin` (+1, so 0 means never).
    call: AtomicU64,
    /// Each [`Step`]: the latest stamp, in ns since `origin` (+1; 0 = not yet).
    steps: [AtomicU64; STEPS],
    /// The longest gate-closed time of one reactor, in ns.
    stall_ns: AtomicU64,
}

impl Default for QuiesceTrace {
    fn default() -> Self {
        QuiesceTrace {
            origin: Instant::now(),
            call: AtomicU64::new(0),
            steps: Default::default(),
            stall_ns: AtomicU64::new(0),
        }
    }
}

impl QuiesceTrace {
    fn stamp_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.origin).as_nanos() as u64 + 1
    }

    /// A prepare starts at `at`: forgets the last quiesce.
    pub(crate) fn start(&self, at: Instant) {
        for s in &self.steps {
            s.store(0, Ordering::Relaxed);
        }
        self.stall_ns.store(0, Ordering::Relaxed);
        self.call.store(self.stamp_of(at), Ordering::Relaxed);
    }

    /// `step` happened now (on a reactor: the latest reactor's stamp is kept).
    pub(crate) fn mark(&self, step: Step) {
        self.mark_at(step, Instant::now());
    }

    /// `step` happened at `at`.
    pub(crate) fn mark_at(&self, step: Step, at: Instant) {
        self.steps[step as usize].fetch_max(self.stamp_of(at), Ordering::Relaxed);
    }

    /// A reactor's gate stayed closed for `d`.
    pub(crate) fn stalled(&self, d: Duration) {
        self.stall_ns
            .fetch_max(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// The timeline of the last quiesce.
    pub(crate) fn timeline(&self) -> QuiesceTimeline {
        let call = self.call.load(Ordering::Relaxed);
        let at = |s: Step| {
            let v = self.steps[s as usize].load(Ordering::Relaxed);
            (call != 0 && v != 0).then(|| Duration::from_nanos(v.saturating_sub(call)))
        };
        let stall = self.stall_ns.load(Ordering::Relaxed);
        QuiesceTimeline {
            gates_closed: at(Step::GatesClosed),
            drained: at(Step::Drained),
            prepare_returned: at(Step::PrepareReturned),
            commit_called: at(Step::CommitCalled),
            resumed: at(Step::Resumed),
            commit_returned: at(Step::CommitReturned),
            stall: (stall != 0).then(|| Duration::from_nanos(stall)),
        }
    }
}

/// How long a control thread waiting for the reactors ([`Countdown::wait`])
/// spins before it sleeps: a drain or a commit under load usually completes
/// within it, and a spinning caller learns of it without a wake-up.
pub(crate) const CALLER_SPIN: Duration = Duration::from_micros(100);
/// The end of a quiesce as commit or abort publishes it: the reactors' gate
/// pollers and the release messages apply it (whichever comes first).
#[derive(Clone)]
pub(crate) struct Release {
    /// The quiesce (prepare epoch) it ends.
    pub(crate) epoch: u64,
    /// The committed layout; None for an abort.
    pub(crate) layout: Option<Arc<super::spec::Layout>>,
}

/// Reactors that still have to report one step of a quiesce (their drain, or
/// that they applied a commit or abort). The last reactor to report records the
/// instant and wakes the waiter itself: no message, no hop. The waiter is the
/// thread that made it ([`Countdown::wait`]) or a task ([`Countdown::done`]: the
/// kernel interface's control thread awaits a prepare's drain without a thread
/// of the blocking pool in between).
pub(crate) struct Countdown {
    /// Per reactor: it has not reported yet.
    pending: Box<[AtomicBool]>,
    left: AtomicUsize,
    /// When the last reactor reported (set once).
    done_at: OnceLock<Instant>,
    /// The thread waiting in [`Countdown::wait`].
    waiter: Thread,
    /// The task awaiting [`Countdown::done`].
    task: AtomicWaker,
}

impl Countdown {
    /// A countdown of `reactors` reactors, waited on by the calling thread (or
    /// by a task on it).
    pub(crate) fn new(reactors: usize) -> Arc<Countdown> {
        Arc::new(Countdown {
            pending: (0..reactors).map(|_| AtomicBool::new(true)).collect(),
            left: AtomicUsize::new(reactors),
            done_at: OnceLock::new(),
            waiter: std::thread::current(),
            task: AtomicWaker::new(),
        })
    }

    /// Reactor `r` reports (a second report of `r` is ignored); the last one
    /// stamps the time and wakes the waiter.
    pub(crate) fn report(&self, r: usize) {
        let Some(p) = self.pending.get(r) else {
            return;
        };
        if p.swap(false, Ordering::AcqRel) && self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            let _ = self.done_at.set(Instant::now());
            self.waiter.unpark();
            self.task.wake();
        }
    }

    /// Waits until every reactor reported (the instant the last one did) or
    /// until `deadline` (the reactors that did not). Spins for [`CALLER_SPIN`]
    /// first, then sleeps until the last reporter wakes it.
    pub(crate) fn wait(&self, deadline: Instant) -> Result<Instant, Vec<usize>> {
        let spin_until = Instant::now() + CALLER_SPIN;
        loop {
            if self.done_at.get().is_some() {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if now < spin_until {
                std::hint::spin_loop();
            } else {
                // Spurious returns are fine: the loop looks again.
                std::thread::park_timeout(deadline - now);
            }
        }
        self.outcome()
    }

    /// Completes once every reactor reported; never if one does not (the caller
    /// bounds it with its deadline, then reads [`Countdown::outcome`]).
    pub(crate) async fn done(&self) {
        std::future::poll_fn(|cx| {
            if self.done_at.get().is_some() {
                return Poll::Ready(());
            }
            self.task.register(cx.waker());
            // A report between the first look and the registration woke nobody.
            match self.done_at.get() {
                Some(_) => Poll::Ready(()),
                None => Poll::Pending,
            }
        })
        .await
    }

    /// When the last reactor reported, or the reactors that have not (yet).
    pub(crate) fn outcome(&self) -> Result<Instant, Vec<usize>> {
        if let Some(at) = self.done_at.get() {
            return Ok(*at);
        }
        let busy: Vec<usize> = (0..self.pending.len())
            .filter(|&r| self.pending[r].load(Ordering::Acquire))
            .collect();
        if busy.is_empty() {
            // The last report is being stamped as the deadline passed.
            return Ok(self.done_at.get().copied().unwrap_or_else(Instant::now));
        }
        Err(busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_report_completes_the_wait_and_repeats_do_not_count() {
        let c = Countdown::new(3);
        c.report(0);
        c.report(0); // a second report of one reactor is not a third reactor
        c.report(7); // no such reactor: ignored
        let busy = c
            .wait(Instant::now() + Duration::from_millis(20))
            .unwrap_err();
        assert_eq!(busy, vec![1, 2]);
        let c2 = Arc::clone(&c);
        let late = std::thread::spawn(move || {
            c2.report(2);
            c2.report(1);
        });
        // Bounded: the reporter wakes the waiter long before 10 s.
        assert!(c.wait(Instant::now() + Duration::from_secs(10)).is_ok());
        late.join().unwrap();
    }

    #[test]
    fn a_report_after_the_caller_gave_up_changes_nothing() {
        // The prepare timed out (and aborted) while reactor 1 was busy; its drain
        // comes in later and must neither block nor count for another prepare.
        let c = Countdown::new(2);
        c.report(0);
        assert_eq!(c.wait(Instant::now()).unwrap_err(), vec![1]);
        c.report(1);
        assert!(c.wait(Instant::now()).is_ok(), "it did drain, late");
        let next = Countdown::new(2);
        assert_eq!(next.wait(Instant::now()).unwrap_err(), vec![0, 1]);
    }

    #[test]
    fn a_task_awaiting_the_drain_is_woken_by_the_last_report_from_another_thread() {
        let c = Countdown::new(2);
        c.report(0);
        let c2 = Arc::clone(&c);
        let reporter = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            c2.report(1);
        });
        let woken = smol::block_on(smol::future::or(
            async {
                c.done().await;
                true
            },
            async {
                smol::Timer::after(Duration::from_secs(10)).await;
                false
            },
        ));
        reporter.join().unwrap();
        assert!(woken, "the last report did not wake the task");
        assert!(c.outcome().is_ok());
        // Done already: completes at once.
        smol::block_on(c.done());
    }
}
