//! Poll-mode reactors: one pinned thread per core of the cpumask.
//!
//! Each loop iteration: drain a bounded batch of messages, reap io_uring
//! completions, run deferred calls (bdev completions among them), serve buffer
//! waiters, run pollers, then submit the batch of new io_uring work once (one
//! `io_uring_enter`, which also collects completions the kernel holds as deferred
//! task work; none when there is neither). With no work for
//! `idle_spin` (at most [`IO_WAIT_SPIN`] while io_uring operations are at the
//! kernel) the reactor (in [`PollMode::Adaptive`]) blocks in `io_uring_enter`
//! with an eventfd read armed, so a message, a completion or a poller's deadline
//! wakes it; an idle target costs ~0% CPU.
//!
//! Everything on a [`Reactor`] is reactor-local (`Rc`, `Cell`, `RefCell`); other
//! threads reach it only through its [`ReactorHandle`]'s message ring.
//!
//! The reactor knows nothing of bdevs: a layer that must not call back inside the
//! call it serves queues a [`Deferred`] call ([`Reactor::defer`]); io_uring users
//! implement [`UringDone`]. Both tables are bounded ([`DEFERRED_SLOTS`],
//! [`MAX_URING_OPS`]) and their exhaustion is counted in [`ReactorStats`].

pub use plexd_target_api::info::PollMode;
mod fixed;
mod mailbox;

pub use mailbox::{CallError, Msg, ReactorHandle, RingFull, CONTROL_SEND_TIMEOUT, MAILBOX_SLOTS};

use std::any::{Any, TypeId};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::buf::{BufCache, BufPool, CachePeer, IoBuf};
use fixed::FixedBufs;
pub use fixed::MAX_FIXED_BUF_BYTES;
use mailbox::Mailbox;

/// Most messages handled per loop iteration, so I/O is never starved by control traffic.
pub const MSG_BATCH: usize = 64;
/// Submission queue entries per reactor ring.
pub const URING_ENTRIES: u32 = 1024;
/// Slots of each reactor's registered-file table (one per uring bdev channel).
pub const REGISTERED_FILE_SLOTS: u32 = 256;
/// Longest a sleeping reactor stays blocked without a deadline (it then re-checks).
pub const MAX_SLEEP: Duration = Duration::from_millis(500);
/// How often a reactor publishes its CPU time.
const CPU_SAMPLE_PERIOD: Duration = Duration::from_millis(100);
/// Busy loop iterations between two looks at the clock.
const BUSY_CLOCK_EVERY: u64 = 256;
/// Units of work (messages, completions, poller work) after which a busy loop looks
/// at the clock again, checked after each iteration: the cached clock pollers get
/// (the data-plane lease's expiry among them) lags by at most one iteration plus
/// this much work.
const BUSY_CLOCK_WORK: usize = 64;
/// Longest an idle adaptive reactor spins while it has io_uring operations at the
/// kernel before it waits for them in `io_uring_enter` (see
/// [`ReactorConfig::idle_spin`] for a reactor with none).
pub const IO_WAIT_SPIN: Duration = Duration::from_micros(10);
/// user_data of the eventfd read that wakes a sleeping reactor.
const WAKE_USER_DATA: u64 = u64::MAX;
/// Deferred calls a reactor queues before it pushes back (see [`Reactor::defer`]).
/// Each is a completion of an I/O somebody submitted on this reactor, so the queue
/// stays far below this while submitters keep their own windows.
pub const DEFERRED_SLOTS: usize = 1 << 16;
/// Deferred-call slots allocated when a reactor starts (the queue grows, up to
/// [`DEFERRED_SLOTS`] before it counts an overrun, only under bursts).
const DEFERRED_PREALLOC: usize = 4096;
/// Messages taken per iteration while the deferred queue is past [`DEFERRED_SLOTS`]
/// (instead of [`MSG_BATCH`]): control messages still progress, new work slows.
const MSG_BATCH_BACKPRESSURE: usize = 1;
/// io_uring operations a reactor tracks at once (queued or at the kernel). A push
/// beyond it is refused: the operation completes with `-EAGAIN` (see
/// [`Reactor::uring_push`]).
pub const MAX_URING_OPS: usize = 16 * URING_ENTRIES as usize;

/// How to start a set of reactors.
#[derive(Clone, Debug)]
pub struct ReactorConfig {
    /// CPU cores, one reactor each. Empty means one reactor, unpinned.
    pub cores: Vec<usize>,
    /// Sleep policy.
    pub poll_mode: PollMode,
    /// Idle time before an adaptive reactor sleeps.
    pub idle_spin: Duration,
    /// Message ring slots per reactor.
    pub mailbox_slots: usize,
    /// The reactor threads' nice value (-20..=19; negative needs CAP_SYS_NICE);
    /// None leaves the inherited one. A reactor sharing its core with other busy
    /// processes is off the core for their slices; a low nice value makes those
    /// rare (docs/OPERATIONS.md, "Reactor priority").
    pub nice: Option<i32>,
}

impl Default for ReactorConfig {
    fn default() -> Self {
        ReactorConfig {
            cores: Vec::new(),
            poll_mode: PollMode::Adaptive,
            idle_spin: Duration::from_micros(200),
            mailbox_slots: MAILBOX_SLOTS,
            nice: None,
        }
    }
}

/// Parses `0,1,4-6` or a hex mask `0x3` into core ids.
pub fn parse_cores(s: &str) -> Result<Vec<usize>, String> {
    let s = s.trim();
    let mut cores = Vec::new();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        let mask = u128::from_str_radix(hex, 16).map_err(|e| format!("bad cpumask {s:?}: {e}"))?;
        for bit in 0..128 {
            if mask & (1u128 << bit) != 0 {
                cores.push(bit);
            }
        }
    } else {
        for part in s.split(',').filter(|p| !p.is_empty()) {
            if let Some((a, b)) = part.split_once('-') {
                let a: usize = a
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad core range {part:?}"))?;
                let b: usize = b
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad core range {part:?}"))?;
                if a > b {
                    return Err(format!("bad core range {part:?}: start after end"));
                }
                cores.extend(a..=b);
            } else {
                cores.push(
                    part.trim()
                        .parse()
                        .map_err(|_| format!("bad core id {part:?}"))?,
                );
            }
        }
    }
    if cores.is_empty() {
        return Err(format!("no cores in {s:?}"));
    }
    cores.sort_unstable();
    cores.dedup();
    Ok(cores)
}

/// Counters a reactor publishes for others to read (written only by its own thread).
#[derive(Default, Debug)]
pub struct ReactorStats {
    /// Thread CPU time in nanoseconds, sampled every ~100 ms and before sleeping.
    pub cpu_ns: AtomicU64,
    /// Loop iterations that found work (published every few hundred iterations).
    pub busy_loops: AtomicU64,
    /// Times the reactor went to sleep.
    pub sleeps: AtomicU64,
    /// Deferred calls queued while [`DEFERRED_SLOTS`] were already queued (kept, not
    /// dropped: dropping one would hang its submitter; the reactor takes fewer
    /// messages until the queue is back under the bound).
    pub deferred_overruns: AtomicU64,
    /// io_uring operations refused because [`MAX_URING_OPS`] were in flight (each
    /// completed with `-EAGAIN`).
    pub uring_refused: AtomicU64,
}

/// Periodic or event-driven work run by a reactor every iteration.
pub trait Poller {
    /// Does some work; returns how much (0 = idle).
    fn poll(&self, now: Instant) -> usize;
    /// The next instant the poller needs to run even if nothing else happens.
    fn next_deadline(&self) -> Option<Instant> {
        None
    }
}

/// A call a reactor runs later from its loop, never inside the call that queued it
/// ([`Reactor::defer`]): a layer completes work this way so that whoever gave it the
/// work may give it more from the completion without re-entrancy.
pub trait Deferred {
    /// Runs the call queued with `tag` (the receiver's own identifier) and `result`
    /// (syscall style: 0 or a positive count on success, a negative errno on failure).
    fn run_deferred(&self, tag: u64, result: i32);
}

/// Receives io_uring completions for operations it queued with [`Reactor::uring_push`].
pub trait UringDone {
    /// The operation tagged `tag` finished with `res` (bytes or -errno) and CQE `flags`.
    fn uring_done(&self, tag: u64, res: i32, flags: u32);
}

/// Who runs a deferred call.
enum DeferredTo {
    /// A [`Deferred`] receiver.
    Call(Rc<dyn Deferred>),
    /// An io_uring user whose operation was refused ([`MAX_URING_OPS`]).
    Uring(Rc<dyn UringDone>),
}

/// Identifies a registered poller.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PollerId(u64);

/// One reactor's state, living on its thread.
pub struct Reactor {
    id: usize,
    mailbox: Arc<Mailbox>,
    peers: Vec<ReactorHandle>,
    poll_mode: PollMode,
    idle_spin: Duration,
    ring: RefCell<IoUring>,
    uring_users: RefCell<slab::Slab<(Rc<dyn UringDone>, u64)>>,
    uring_queued: Cell<usize>,
    /// The pool region's registered pieces (None: buffers are not registered).
    fixed_buf: Option<FixedBufs>,
    free_file_slots: RefCell<Vec<u32>>,
    wake_armed: Cell<bool>,
    wake_buf: Box<u64>,
    /// Deferred calls in queue order (bounded by [`DEFERRED_SLOTS`], see `defer`).
    deferred: RefCell<VecDeque<(DeferredTo, u64, i32)>>,
    /// True from a deferred-queue overrun until the queue is back under the bound
    /// (one log line per episode; fewer messages taken meanwhile).
    deferred_over: Cell<bool>,
    pollers: RefCell<Vec<(PollerId, Rc<dyn Poller>)>>,
    /// The pollers of the running pass (reused, so a pass allocates nothing).
    poller_pass: Cell<Vec<Rc<dyn Poller>>>,
    /// The time pollers are given: read by the run loop when it reads the clock anyway
    /// (every idle iteration, every `BUSY_CLOCK_EVERY` busy ones or `BUSY_CLOCK_WORK`
    /// units of work, whichever comes first), so a poller pass costs no clock read.
    clock: Cell<Instant>,
    next_poller: Cell<u64>,
    locals: RefCell<HashMap<TypeId, Rc<dyn Any>>>,
    bufs: BufCache,
    stats: Arc<ReactorStats>,
    stop: Cell<bool>,
}

impl Reactor {
    fn new(
        id: usize,
        mailbox: Arc<Mailbox>,
        peers: Vec<ReactorHandle>,
        cfg: &ReactorConfig,
        pool: Arc<BufPool>,
        stats: Arc<ReactorStats>,
    ) -> std::io::Result<Reactor> {
        let ring = new_ring(id)?;
        let iov = pool.region_iovec();
        let pieces = FixedBufs::new(iov.iov_base as usize, iov.iov_len);
        // SAFETY: the iovecs cover the pool's mapped region, which the reactor keeps
        // alive (through `bufs`) for as long as the ring exists; the ring is dropped
        // first because `ring` is declared before `bufs`.
        let fixed_buf = match unsafe { ring.submitter().register_buffers(&pieces.iovecs()) } {
            Ok(()) => Some(pieces),
            Err(e) => {
                log::warn!("reactor {id}: cannot register I/O buffers with io_uring ({e}); using unregistered buffers");
                None
            }
        };
        let free_file_slots = match ring
            .submitter()
            .register_files_sparse(REGISTERED_FILE_SLOTS)
        {
            Ok(()) => (0..REGISTERED_FILE_SLOTS).rev().collect(),
            Err(e) => {
                log::warn!("reactor {id}: no registered-file table ({e}); files are used by fd");
                Vec::new()
            }
        };
        let cache_peers = peers
            .iter()
            .map(|h| Box::new(h.clone()) as Box<dyn CachePeer>)
            .collect();
        let bufs = BufCache::for_reactor(pool, id, cache_peers);
        Ok(Reactor {
            id,
            mailbox,
            peers,
            poll_mode: cfg.poll_mode,
            idle_spin: cfg.idle_spin,
            ring: RefCell::new(ring),
            uring_users: RefCell::new(slab::Slab::with_capacity(URING_ENTRIES as usize * 2)),
            uring_queued: Cell::new(0),
            fixed_buf,
            free_file_slots: RefCell::new(free_file_slots),
            wake_armed: Cell::new(false),
            wake_buf: Box::new(0),
            deferred: RefCell::new(VecDeque::with_capacity(DEFERRED_PREALLOC)),
            deferred_over: Cell::new(false),
            pollers: RefCell::new(Vec::new()),
            poller_pass: Cell::new(Vec::new()),
            clock: Cell::new(Instant::now()),
            next_poller: Cell::new(1),
            locals: RefCell::new(HashMap::new()),
            bufs,
            stats,
            stop: Cell::new(false),
        })
    }

    /// The reactor's cached clock (what pollers are given): read when the loop reads
    /// the clock anyway, so it costs nothing; a little behind the real time while the
    /// reactor is busy (at most `BUSY_CLOCK_WORK` units of work).
    #[inline]
    pub fn now(&self) -> Instant {
        self.clock.get()
    }

    /// This reactor's index within its set.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Handles of every reactor of the set (including this one), by index.
    pub fn peers(&self) -> &[ReactorHandle] {
        &self.peers
    }

    /// This reactor's buffer cache.
    pub fn bufs(&self) -> &BufCache {
        &self.bufs
    }

    /// Queues a call to `to.run_deferred(tag, result)`, run from the reactor loop
    /// (after the current callback returns, in queue order). Past [`DEFERRED_SLOTS`]
    /// queued calls the call is still queued (it completes somebody's I/O: dropping
    /// it would hang them), the overrun is counted in
    /// [`ReactorStats::deferred_overruns`] and logged once, and the reactor takes
    /// one message per iteration instead of [`MSG_BATCH`] until the queue is back
    /// under the bound.
    #[inline]
    pub fn defer(&self, to: Rc<dyn Deferred>, tag: u64, result: i32) {
        let mut q = self.deferred.borrow_mut();
        if q.len() >= DEFERRED_SLOTS {
            self.deferred_overrun(q.len());
        }
        q.push_back((DeferredTo::Call(to), tag, result));
    }

    #[cold]
    fn deferred_overrun(&self, queued: usize) {
        self.stats.deferred_overruns.fetch_add(1, Ordering::Relaxed);
        if !self.deferred_over.replace(true) {
            log::warn!(
                "reactor {}: {queued} deferred completions queued (bound {DEFERRED_SLOTS}); \
                 taking fewer messages until they are delivered",
                self.id
            );
        }
    }

    /// Deferred calls queued and not run yet.
    pub fn deferred_len(&self) -> usize {
        self.deferred.borrow().len()
    }

    /// io_uring operations tracked (queued or at the kernel).
    pub fn uring_ops(&self) -> usize {
        self.uring_users.borrow().len()
    }

    /// Reactor-local state of type `T`, created with `Default` on first use. Modules
    /// keep their per-reactor registries here (no process-global state).
    pub fn local<T: Any + Default>(&self) -> Rc<T> {
        let key = TypeId::of::<T>();
        if let Some(v) = self.locals.borrow().get(&key) {
            return Rc::clone(v)
                .downcast::<T>()
                .expect("local keyed by its TypeId");
        }
        let v: Rc<T> = Rc::new(T::default());
        self.locals
            .borrow_mut()
            .insert(key, v.clone() as Rc<dyn Any>);
        v
    }

    /// Registers a poller run every iteration.
    pub fn add_poller(&self, p: Rc<dyn Poller>) -> PollerId {
        let id = PollerId(self.next_poller.get());
        self.next_poller.set(id.0 + 1);
        self.pollers.borrow_mut().push((id, p));
        id
    }

    /// Unregisters a poller.
    pub fn remove_poller(&self, id: PollerId) {
        self.pollers.borrow_mut().retain(|(i, _)| *i != id);
    }

    /// The registered-buffer index for `buf`, when it lies in one registered piece
    /// of the pool region (the region is registered in pieces of at most
    /// [`MAX_FIXED_BUF_BYTES`]).
    #[inline]
    pub fn fixed_buf_index(&self, buf: &IoBuf) -> Option<u16> {
        self.fixed_buf?.index(buf.as_ptr() as usize, buf.len())
    }

    /// Queues an io_uring operation; its completion goes to `user.uring_done(tag, ..)`.
    /// The batch is submitted at the end of the loop iteration.
    ///
    /// With [`MAX_URING_OPS`] operations already tracked the operation is refused: it
    /// never reaches the kernel and `user.uring_done(tag, -EAGAIN, 0)` runs from the
    /// loop (never inside this call), counted in [`ReactorStats::uring_refused`].
    ///
    /// # Safety
    /// Every pointer inside `entry` (buffers, iovecs, paths) must stay valid until
    /// the completion is delivered, and fixed-file or fixed-buffer indexes must
    /// refer to resources registered with this reactor's ring.
    pub unsafe fn uring_push(&self, entry: squeue::Entry, user: Rc<dyn UringDone>, tag: u64) {
        let key = {
            let mut users = self.uring_users.borrow_mut();
            if users.len() >= MAX_URING_OPS {
                drop(users);
                self.uring_refuse(user, tag);
                return;
            }
            users.insert((user, tag))
        };
        // The wake-up read's user_data is never a slab key (keys stay below the bound).
        debug_assert!((key as u64) < WAKE_USER_DATA && key < MAX_URING_OPS);
        let entry = entry.user_data(key as u64);
        let mut ring = self.ring.borrow_mut();
        // SAFETY: the caller guarantees the entry's memory outlives the operation.
        while unsafe { ring.submission().push(&entry) }.is_err() {
            // The submission queue is full: hand the batch to the kernel and retry.
            if let Err(e) = ring.submit() {
                log::error!("reactor {}: io_uring submit failed: {e}", self.id);
            }
            self.uring_queued.set(0);
        }
        self.uring_queued.set(self.uring_queued.get() + 1);
    }

    #[cold]
    fn uring_refuse(&self, user: Rc<dyn UringDone>, tag: u64) {
        let n = self.stats.uring_refused.fetch_add(1, Ordering::Relaxed);
        if n == 0 || n.is_power_of_two() {
            log::warn!(
                "reactor {}: {MAX_URING_OPS} io_uring operations in flight; refusing more \
                 with EAGAIN ({} refused so far)",
                self.id,
                n + 1
            );
        }
        self.deferred
            .borrow_mut()
            .push_back((DeferredTo::Uring(user), tag, -libc::EAGAIN));
    }

    /// Puts `fd` in a free slot of this reactor's registered-file table and returns
    /// the slot, or None when the table is full or unavailable (use the fd then).
    pub fn register_file(&self, fd: i32) -> Option<u32> {
        let slot = self.free_file_slots.borrow_mut().pop()?;
        match self
            .ring
            .borrow()
            .submitter()
            .register_files_update(slot, &[fd])
        {
            Ok(_) => Some(slot),
            Err(e) => {
                log::warn!(
                    "reactor {}: cannot register fd {fd}: {e}; using it unregistered",
                    self.id
                );
                self.free_file_slots.borrow_mut().push(slot);
                None
            }
        }
    }

    /// Frees a slot taken by [`Reactor::register_file`] (no op may still use it).
    pub fn unregister_file(&self, slot: u32) {
        if let Err(e) = self
            .ring
            .borrow()
            .submitter()
            .register_files_update(slot, &[-1])
        {
            log::warn!(
                "reactor {}: cannot clear registered file slot {slot}: {e}",
                self.id
            );
            return;
        }
        self.free_file_slots.borrow_mut().push(slot);
    }

    /// The reactor's thread-safe handle.
    pub fn handle(&self) -> ReactorHandle {
        self.peers[self.id].clone()
    }

    /// Stops the loop after the current iteration.
    pub fn stop(&self) {
        self.stop.set(true);
    }

    fn drain_mailbox(self: &Rc<Self>) -> usize {
        let max = if self.deferred_over.get() {
            MSG_BATCH_BACKPRESSURE
        } else {
            MSG_BATCH
        };
        let mut n = 0;
        while n < max {
            match self.mailbox.pop() {
                Some(msg) => {
                    msg(self);
                    n += 1;
                }
                None => break,
            }
        }
        n
    }

    fn reap_uring(&self) -> usize {
        let mut n = 0;
        loop {
            let cqe = {
                let mut ring = self.ring.borrow_mut();
                let mut cq = ring.completion();
                match cq.next() {
                    Some(c) => c,
                    None => break,
                }
            };
            n += 1;
            let key = cqe.user_data();
            if key == WAKE_USER_DATA {
                self.wake_armed.set(false);
                continue;
            }
            // Every other user_data is a key of the op table (see uring_push).
            debug_assert!((key as usize) < MAX_URING_OPS, "io_uring user_data {key}");
            let more = cqueue::more(cqe.flags());
            let user = {
                let mut users = self.uring_users.borrow_mut();
                let key = key as usize;
                if more {
                    users.get(key).map(|(u, t)| (Rc::clone(u), *t))
                } else {
                    users.try_remove(key)
                }
            };
            match user {
                Some((u, tag)) => u.uring_done(tag, cqe.result(), cqe.flags()),
                None => log::error!(
                    "reactor {}: io_uring completion for unknown op {key}",
                    self.id
                ),
            }
        }
        n
    }

    /// Runs the deferred calls queued so far. Calls queued by the handlers (a
    /// resubmitted I/O on a synchronous bdev) wait for the next iteration, so a busy
    /// submitter cannot starve messages and io_uring.
    fn drain_deferred(&self) -> usize {
        let batch = self.deferred.borrow().len();
        for _ in 0..batch {
            let next = self.deferred.borrow_mut().pop_front();
            let Some((to, tag, result)) = next else { break };
            match to {
                DeferredTo::Call(c) => c.run_deferred(tag, result),
                DeferredTo::Uring(u) => u.uring_done(tag, result, 0),
            }
        }
        if self.deferred_over.get() && self.deferred.borrow().len() < DEFERRED_SLOTS {
            self.deferred_over.set(false);
            log::info!(
                "reactor {}: deferred completions back under {DEFERRED_SLOTS}",
                self.id
            );
        }
        batch
    }

    fn run_pollers(&self) -> usize {
        if self.pollers.borrow().is_empty() {
            return 0;
        }
        let now = self.clock.get();
        // Run a copy of the list so pollers may add or remove pollers while running;
        // the copy's storage is kept for the next pass.
        let mut pass = self.poller_pass.take();
        pass.extend(self.pollers.borrow().iter().map(|(_, p)| Rc::clone(p)));
        let work = pass.iter().map(|p| p.poll(now)).sum();
        pass.clear();
        self.poller_pass.set(pass);
        work
    }

    /// Hands the queued SQEs to the kernel in one `io_uring_enter`, which also runs
    /// the ring's pending task work (deferred completions) when the kernel flags
    /// some; with neither, no system call.
    fn submit(&self) {
        let mut ring = self.ring.borrow_mut();
        if self.uring_queued.get() == 0 && !kernel_has_work(&mut ring) {
            return;
        }
        if let Err(e) = ring.submit() {
            log::error!("reactor {}: io_uring submit failed: {e}", self.id);
        }
        self.uring_queued.set(0);
    }

    fn publish_cpu(&self) {
        self.stats.cpu_ns.store(thread_cpu_ns(), Ordering::Relaxed);
    }

    fn sleep(&self) {
        // Only this thread sets and clears the flag: it is clear while awake.
        debug_assert!(!self.mailbox.sleeping.load(Ordering::Relaxed));
        self.mailbox.sleeping.store(true, Ordering::SeqCst);
        // Pairs with the fence in ReactorHandle::try_send.
        fence(Ordering::SeqCst);
        if !self.mailbox.is_empty() || !self.deferred.borrow().is_empty() {
            self.mailbox.sleeping.store(false, Ordering::SeqCst);
            return;
        }
        let now = Instant::now();
        let deadline = self
            .pollers
            .borrow()
            .iter()
            .filter_map(|(_, p)| p.next_deadline())
            .min()
            .unwrap_or(now + MAX_SLEEP)
            .min(now + MAX_SLEEP);
        let wait = deadline.saturating_duration_since(now);
        if !wait.is_zero() {
            if !self.wake_armed.get() {
                let read = opcode::Read::new(
                    types::Fd(self.mailbox.wake_fd.as_raw_fd()),
                    &*self.wake_buf as *const u64 as *mut u8,
                    8,
                )
                .build()
                .user_data(WAKE_USER_DATA);
                let mut ring = self.ring.borrow_mut();
                // SAFETY: wake_buf is a heap u64 owned by the reactor, alive until the
                // ring is dropped (the read completes or is cancelled by then).
                if unsafe { ring.submission().push(&read) }.is_ok() {
                    self.wake_armed.set(true);
                }
            }
            self.publish_cpu();
            self.stats.sleeps.fetch_add(1, Ordering::Relaxed);
            let ts = types::Timespec::from(wait);
            let args = types::SubmitArgs::new().timespec(&ts);
            match self.ring.borrow().submitter().submit_with_args(1, &args) {
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY)
                    ) => {}
                Err(e) => log::error!("reactor {}: io_uring wait failed: {e}", self.id),
            }
            self.uring_queued.set(0);
        }
        self.mailbox.sleeping.store(false, Ordering::SeqCst);
        self.clock.set(Instant::now());
    }

    /// How long an idle adaptive reactor spins before it blocks: `idle_spin`, or at
    /// most [`IO_WAIT_SPIN`] while io_uring operations are at the kernel (their
    /// completions wake it; spinning longer would take the core from the kernel
    /// threads finishing them, a loop device's workers for one).
    fn spin_before_sleep(&self) -> Duration {
        if self.uring_users.borrow().is_empty() {
            self.idle_spin
        } else {
            self.idle_spin.min(IO_WAIT_SPIN)
        }
    }

    /// Runs one loop iteration; returns the amount of work done.
    pub fn run_once(self: &Rc<Self>) -> usize {
        let mut work = self.drain_mailbox();
        work += self.reap_uring();
        work += self.drain_deferred();
        if self.bufs.waiters() > 0 {
            work += self.bufs.serve_waiters();
        }
        work += self.run_pollers();
        work += self.drain_deferred();
        self.submit();
        work
    }

    fn run(self: &Rc<Self>) {
        assert!(!self.stop.get(), "reactor {} started after a stop", self.id);
        let mut idle_since: Option<Instant> = None;
        let mut last_cpu = Instant::now();
        let mut busy_loops = 0u64;
        let mut work_since_clock = 0usize;
        while !self.stop.get() {
            let work = self.run_once();
            if work > 0 {
                // Reading the clock costs tens of ns on some machines: busy loops
                // look at it only every BUSY_CLOCK_EVERY iterations or
                // BUSY_CLOCK_WORK units of work.
                idle_since = None;
                busy_loops += 1;
                work_since_clock += work;
                if busy_loops.is_multiple_of(BUSY_CLOCK_EVERY)
                    || work_since_clock >= BUSY_CLOCK_WORK
                {
                    work_since_clock = 0;
                    self.stats.busy_loops.store(busy_loops, Ordering::Relaxed);
                    let now = Instant::now();
                    self.clock.set(now);
                    if now.duration_since(last_cpu) >= CPU_SAMPLE_PERIOD {
                        self.publish_cpu();
                        last_cpu = now;
                    }
                }
                continue;
            }
            work_since_clock = 0;
            let now = Instant::now();
            self.clock.set(now);
            if now.duration_since(last_cpu) >= CPU_SAMPLE_PERIOD {
                self.publish_cpu();
                last_cpu = now;
            }
            if self.poll_mode == PollMode::Always {
                continue;
            }
            let since = *idle_since.get_or_insert(now);
            if now.duration_since(since) >= self.spin_before_sleep() {
                self.sleep();
                idle_since = None;
            } else {
                std::hint::spin_loop();
            }
        }
        // Drop locals (bdev channels among them) on this thread, before the ring
        // goes away; taken out first, so a drop may look at the reactor's locals.
        let locals = std::mem::take(&mut *self.locals.borrow_mut());
        drop(locals);
        // Taken out first too: a poller's drop may drop a bdev channel, which
        // removes that channel's own poller.
        let pollers = std::mem::take(&mut *self.pollers.borrow_mut());
        drop(pollers);
        self.publish_cpu();
    }
}

/// A reactor's ring, created on its thread: single issuer with deferred task work
/// (completions are posted when the reactor enters the kernel, never by
/// interrupting it; `IORING_SQ_TASKRUN` says when some wait, see
/// [`kernel_has_work`]), else cooperative task work, else a plain ring on kernels
/// without those (before 6.1 and 5.19).
fn new_ring(id: usize) -> std::io::Result<IoUring> {
    let deferred = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .setup_taskrun_flag()
        .build(URING_ENTRIES);
    let e = match deferred {
        Ok(r) => return Ok(r),
        Err(e) => e,
    };
    let coop = IoUring::builder()
        .setup_coop_taskrun()
        .setup_taskrun_flag()
        .build(URING_ENTRIES);
    log::info!("reactor {id}: no deferred io_uring task work ({e}); using cooperative task work");
    coop.or_else(|e| {
        log::info!("reactor {id}: no cooperative io_uring task work ({e}); using a plain ring");
        IoUring::new(URING_ENTRIES)
    })
}

/// True when the kernel holds completions only an `io_uring_enter` delivers: task
/// work flagged by `IORING_SETUP_TASKRUN_FLAG`, or overflowed CQEs.
fn kernel_has_work(ring: &mut IoUring) -> bool {
    let sq = ring.submission();
    sq.taskrun() || sq.cq_overflow()
}

/// CPU time of the calling thread in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A running set of reactors. Dropping it stops and joins them.
pub struct ReactorSet {
    handles: Vec<ReactorHandle>,
    stats: Vec<Arc<ReactorStats>>,
    cores: Vec<Option<usize>>,
    threads: Vec<JoinHandle<()>>,
    pool: Arc<BufPool>,
}

/// Ends the process when a reactor thread unwinds. A dead reactor never answers
/// its mailbox again: its volumes' I/O and every quiesce would hang for good, while
/// an ended process is seen at once (hosts move to other paths, the coordinator
/// sees its data plane gone).
struct AbortOnPanic(usize);

impl Drop for AbortOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            log::error!(
                "reactor {}: panicked (message above); ending the process instead of \
                 leaving its I/O hung",
                self.0
            );
            std::process::abort();
        }
    }
}

impl ReactorSet {
    /// Starts one reactor per configured core (pinned), or one unpinned reactor.
    pub fn start(cfg: &ReactorConfig, pool: Arc<BufPool>) -> std::io::Result<ReactorSet> {
        let cores: Vec<Option<usize>> = if cfg.cores.is_empty() {
            vec![None]
        } else {
            cfg.cores.iter().map(|&c| Some(c)).collect()
        };
        let online = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        for c in cores.iter().flatten() {
            if *c >= online.max(1) && !core_allowed(*c) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("core {c} is not available on this machine ({online} cores online)"),
                ));
            }
        }
        let mut handles = Vec::new();
        for id in 0..cores.len() {
            handles.push(ReactorHandle {
                id,
                mailbox: Arc::new(Mailbox::new(cfg.mailbox_slots)?),
            });
        }
        let stats: Vec<Arc<ReactorStats>> = cores
            .iter()
            .map(|_| Arc::new(ReactorStats::default()))
            .collect();
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        for (id, core) in cores.iter().enumerate() {
            let mailbox = Arc::clone(&handles[id].mailbox);
            let peers = handles.clone();
            let cfg = cfg.clone();
            let pool = Arc::clone(&pool);
            let st = Arc::clone(&stats[id]);
            let core = *core;
            let ready = ready_tx.clone();
            let t = std::thread::Builder::new()
                .name(format!("reactor-{id}"))
                .spawn(move || {
                    if let Some(c) = core {
                        if let Err(e) = pin_to_core(c) {
                            let _ = ready
                                .send(Err(format!("reactor {id}: cannot pin to core {c}: {e}")));
                            return;
                        }
                    }
                    if let Some(n) = cfg.nice {
                        if let Err(e) = set_thread_nice(n) {
                            let hint = if e.kind() == std::io::ErrorKind::PermissionDenied {
                                " (a negative one needs root or CAP_SYS_NICE)"
                            } else {
                                ""
                            };
                            let _ = ready.send(Err(format!(
                                "reactor {id}: cannot set its nice value to {n}: {e}{hint}"
                            )));
                            return;
                        }
                    }
                    let r = match Reactor::new(id, mailbox, peers, &cfg, pool, st) {
                        Ok(r) => Rc::new(r),
                        Err(e) => {
                            let _ = ready
                                .send(Err(format!("reactor {id}: io_uring setup failed: {e}")));
                            return;
                        }
                    };
                    let _ = ready.send(Ok(()));
                    drop(ready);
                    log::debug!("reactor {id} running on core {core:?}");
                    let _abort = AbortOnPanic(id);
                    r.run();
                })?;
            threads.push(t);
        }
        drop(ready_tx);
        let mut set = ReactorSet {
            handles,
            stats,
            cores,
            threads,
            pool,
        };
        for _ in 0..set.threads.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    set.stop();
                    return Err(std::io::Error::other(e));
                }
                Err(_) => {
                    set.stop();
                    return Err(std::io::Error::other(
                        "a reactor thread died during start-up",
                    ));
                }
            }
        }
        Ok(set)
    }

    /// Handles of every reactor, by index.
    pub fn handles(&self) -> &[ReactorHandle] {
        &self.handles
    }

    /// Number of reactors.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// True when there are no reactors (never, once started).
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }

    /// The core each reactor is pinned to.
    pub fn cores(&self) -> &[Option<usize>] {
        &self.cores
    }

    /// Published counters of each reactor.
    pub fn stats(&self) -> &[Arc<ReactorStats>] {
        &self.stats
    }

    /// The buffer pool shared by the reactors.
    pub fn pool(&self) -> &Arc<BufPool> {
        &self.pool
    }

    /// Runs `f` on every reactor and waits for all of them (control path).
    pub fn broadcast_blocking<R: Send + 'static>(
        &self,
        f: impl Fn(&Rc<Reactor>) -> R + Send + Sync + 'static,
    ) -> Result<Vec<R>, CallError> {
        let f = Arc::new(f);
        let mut rxs = Vec::new();
        for h in &self.handles {
            let f = Arc::clone(&f);
            rxs.push((h.id(), h.call(move |r| f(r)).map_err(CallError::Full)?));
        }
        rxs.into_iter()
            .map(|(id, rx)| {
                futures::executor::block_on(rx).map_err(|_| CallError::Stopped { reactor: id })
            })
            .collect()
    }

    /// Stops every reactor and joins its thread.
    pub fn stop(&mut self) {
        for h in &self.handles {
            let msg: Msg = Box::new(|r| r.stop());
            // A reactor whose ring stays full for the whole timeout is wedged; joining
            // it would hang, so it is left behind with a log line.
            if h.send_timeout(msg, CONTROL_SEND_TIMEOUT).is_err() {
                log::error!("reactor {}: could not deliver stop", h.id());
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ReactorSet {
    fn drop(&mut self) {
        self.stop();
    }
}

fn core_allowed(core: usize) -> bool {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| set.is_set(core).unwrap_or(false))
        .unwrap_or(false)
}

/// Sets the calling thread's nice value (Linux keeps one per thread).
fn set_thread_nice(nice: i32) -> std::io::Result<()> {
    if !(-20..=19).contains(&nice) {
        return Err(std::io::Error::other(format!("{nice} is outside -20..=19")));
    }
    let tid = nix::unistd::gettid().as_raw();
    let who = libc::id_t::try_from(tid).map_err(std::io::Error::other)?;
    // SAFETY: setpriority takes three integers and touches no memory of ours;
    // PRIO_PROCESS with a thread id changes that one thread's nice value.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, who, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn pin_to_core(core: usize) -> nix::Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(core)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buf::PoolConfig;
    use std::sync::atomic::AtomicUsize;

    fn pool() -> Arc<BufPool> {
        BufPool::new(&PoolConfig {
            chunks_per_class: [16, 4, 1, 1],
            hugepages: false,
        })
        .unwrap()
    }

    #[test]
    fn parses_core_lists_and_masks() {
        assert_eq!(parse_cores("0,1").unwrap(), vec![0, 1]);
        assert_eq!(parse_cores("0x5").unwrap(), vec![0, 2]);
        assert_eq!(parse_cores("2-4,1").unwrap(), vec![1, 2, 3, 4]);
        assert!(parse_cores("").is_err());
        assert!(parse_cores("4-2").is_err());
        assert!(parse_cores("x").is_err());
    }

    #[test]
    fn reactor_threads_take_the_configured_nice_value() {
        // The thread's own nice value, read on the reactor (getpriority of its tid).
        let nice_of = |set: &ReactorSet| {
            set.broadcast_blocking(|_| {
                let tid = nix::unistd::gettid().as_raw() as libc::id_t;
                // SAFETY: getpriority takes integers only; errno is cleared first
                // because -1 is also a valid answer.
                unsafe {
                    *libc::__errno_location() = 0;
                    libc::getpriority(libc::PRIO_PROCESS, tid)
                }
            })
            .unwrap()
        };
        let inherited = ReactorSet::start(&ReactorConfig::default(), pool()).unwrap();
        let base = nice_of(&inherited)[0];
        let wanted = (base + 3).min(19);
        let set = ReactorSet::start(
            &ReactorConfig {
                cores: vec![0, 1],
                nice: Some(wanted),
                ..Default::default()
            },
            pool(),
        )
        .unwrap();
        assert_eq!(nice_of(&set), vec![wanted, wanted]);
        let e = ReactorSet::start(
            &ReactorConfig {
                nice: Some(25),
                ..Default::default()
            },
            pool(),
        )
        .err()
        .expect("a nice value of 25 is refused");
        assert!(e.to_string().contains("nice value to 25"), "{e}");
    }

    #[test]
    fn messages_run_on_each_reactor_and_sleepers_wake() {
        let set = ReactorSet::start(
            &ReactorConfig {
                cores: vec![0, 1],
                ..Default::default()
            },
            pool(),
        )
        .unwrap();
        // Let them fall asleep, then wake them with messages.
        std::thread::sleep(Duration::from_millis(20));
        for round in 0..100 {
            let ids = set.broadcast_blocking(|r| r.id()).unwrap();
            assert_eq!(ids, vec![0, 1], "round {round}");
        }
        assert!(
            set.stats()[0].sleeps.load(Ordering::Relaxed) > 0,
            "adaptive reactor slept"
        );
    }

    #[test]
    fn a_full_ring_is_reported_not_fatal() {
        let set = ReactorSet::start(
            &ReactorConfig {
                mailbox_slots: 4,
                ..Default::default()
            },
            pool(),
        )
        .unwrap();
        let h = set.handles()[0].clone();
        // Block the reactor so its ring fills up.
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        h.try_send(Box::new(move |_| {
            let _ = go_rx.recv_timeout(Duration::from_secs(10));
        }))
        .map_err(|(e, _)| e)
        .unwrap();
        let ran = Arc::new(AtomicUsize::new(0));
        let mut full = 0;
        for _ in 0..10 {
            let ran = Arc::clone(&ran);
            match h.try_send(Box::new(move |_| {
                ran.fetch_add(1, Ordering::SeqCst);
            })) {
                Ok(()) => {}
                Err((e, _)) => {
                    assert_eq!(e.reactor, 0);
                    full += 1;
                }
            }
        }
        assert!(
            full >= 5,
            "ring of 4 slots refused the overflow ({full} refused)"
        );
        go_tx.send(()).unwrap();
        assert_eq!(h.call_blocking(|_| 7).unwrap(), 7);
        assert_eq!(ran.load(Ordering::SeqCst), 10 - full);
    }

    #[test]
    fn a_freed_chunk_reaches_a_waiter_on_another_reactor() {
        use crate::buf::{BufWait, BufWaiter, PoolBuf};
        // Two chunks of 1 MiB. Reactor 0 takes both and gives them back one at a
        // time into its own cache; reactor 1, waiting for one, must be served.
        let pool = BufPool::new(&PoolConfig {
            chunks_per_class: [4, 4, 1, 2],
            hugepages: false,
        })
        .unwrap();
        let set = ReactorSet::start(
            &ReactorConfig {
                cores: vec![0, 1],
                ..Default::default()
            },
            pool,
        )
        .unwrap();
        let (h0, h1) = (set.handles()[0].clone(), set.handles()[1].clone());
        #[derive(Default)]
        struct Held(RefCell<Vec<PoolBuf>>);
        h0.call_blocking(|r| {
            let held = r.local::<Held>();
            for _ in 0..2 {
                let b = r.bufs().try_get(1 << 20).expect("two free chunks");
                held.0.borrow_mut().push(b);
            }
            // Reactor 0 cycles its chunks: its cache may keep one.
            let b = held.0.borrow_mut().pop().unwrap();
            r.bufs().put(b);
            let b = r.bufs().try_get(1 << 20).unwrap();
            held.0.borrow_mut().push(b);
        })
        .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<usize>();
        struct Tell(
            std::sync::Mutex<std::sync::mpsc::Sender<usize>>,
            RefCell<Vec<PoolBuf>>,
        );
        impl BufWaiter for Tell {
            fn buf_ready(&self, _tag: u64, buf: PoolBuf) {
                let _ = self.0.lock().unwrap().send(buf.len());
                self.1.borrow_mut().push(buf);
            }
        }
        #[derive(Default)]
        struct Waiter(RefCell<Option<Rc<Tell>>>);
        h1.call_blocking(move |r| {
            let tell = Rc::new(Tell(std::sync::Mutex::new(tx), RefCell::new(Vec::new())));
            let w: Rc<dyn BufWaiter> = tell.clone();
            let queued = matches!(r.bufs().get_or_wait(1 << 20, &w, 7), Ok(BufWait::Queued));
            *r.local::<Waiter>().0.borrow_mut() = Some(tell);
            queued
        })
        .map(|q| assert!(q, "reactor 1 waits: both chunks are on reactor 0"))
        .unwrap();
        // Reactor 0 gives one chunk back (into its own cache before the fix).
        h0.call_blocking(|r| {
            let b = r.local::<Held>().0.borrow_mut().pop().unwrap();
            r.bufs().put(b);
        })
        .unwrap();
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)),
            Ok(1 << 20),
            "reactor 1's waiter got the chunk reactor 0 freed"
        );
        // Give everything back before the set stops.
        h1.call_blocking(|r| {
            if let Some(t) = r.local::<Waiter>().0.borrow_mut().take() {
                for b in t.1.borrow_mut().drain(..) {
                    r.bufs().put(b);
                }
            }
        })
        .unwrap();
        h0.call_blocking(|r| {
            for b in r.local::<Held>().0.borrow_mut().drain(..) {
                r.bufs().put(b);
            }
        })
        .unwrap();
    }

    /// Waits (bounded) until `f` holds, asking the reactor each time.
    fn wait_on<R: Send + 'static>(
        h: &ReactorHandle,
        what: &str,
        f: impl Fn(&Rc<Reactor>) -> Option<R> + Send + Sync + Clone + 'static,
    ) -> R {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let f = f.clone();
            if let Some(r) = h.call_blocking(move |r| f(r)).unwrap() {
                return r;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn deferred_calls_past_the_bound_are_counted_and_all_delivered() {
        #[derive(Default)]
        struct Count {
            runs: Cell<usize>,
            order_ok: Cell<bool>,
        }
        impl Deferred for Count {
            fn run_deferred(&self, tag: u64, result: i32) {
                // Delivered in queue order, with the result given.
                let ok = tag == self.runs.get() as u64 && result == -(tag as i32 % 7);
                self.order_ok
                    .set(self.runs.get() == 0 || self.order_ok.get());
                if !ok {
                    self.order_ok.set(false);
                }
                self.runs.set(self.runs.get() + 1);
            }
        }
        let set = ReactorSet::start(&ReactorConfig::default(), pool()).unwrap();
        let h = set.handles()[0].clone();
        const OVER: usize = 10;
        let total = DEFERRED_SLOTS + OVER;
        h.call_blocking(move |r| {
            let c = r.local::<Count>();
            for i in 0..total {
                r.defer(c.clone(), i as u64, -(i as i32 % 7));
            }
            // Nothing runs inside the call that queued.
            assert_eq!(c.runs.get(), 0);
        })
        .unwrap();
        let (runs, ok) = wait_on(&h, "every deferred call", move |r| {
            let c = r.local::<Count>();
            (c.runs.get() >= total).then(|| (c.runs.get(), c.order_ok.get()))
        });
        assert_eq!(runs, total, "every call ran once, none dropped");
        assert!(ok, "in queue order with their results");
        assert_eq!(
            set.stats()[0].deferred_overruns.load(Ordering::Relaxed),
            OVER as u64,
            "each call queued past DEFERRED_SLOTS is counted"
        );
        assert_eq!(h.call_blocking(|r| r.deferred_len()).unwrap(), 0);
    }

    #[test]
    fn uring_ops_past_the_bound_are_refused_with_eagain() {
        #[derive(Default)]
        struct Nops {
            ok: Cell<usize>,
            refused: Cell<usize>,
            other: Cell<usize>,
        }
        impl UringDone for Nops {
            fn uring_done(&self, _tag: u64, res: i32, _flags: u32) {
                match res {
                    0 => self.ok.set(self.ok.get() + 1),
                    r if r == -libc::EAGAIN => self.refused.set(self.refused.get() + 1),
                    _ => self.other.set(self.other.get() + 1),
                }
            }
        }
        let set = ReactorSet::start(&ReactorConfig::default(), pool()).unwrap();
        let h = set.handles()[0].clone();
        const OVER: usize = 5;
        let total = MAX_URING_OPS + OVER;
        let during = h
            .call_blocking(move |r| {
                let n = r.local::<Nops>();
                for i in 0..total {
                    // SAFETY: a NOP references no memory.
                    unsafe { r.uring_push(opcode::Nop::new().build(), n.clone(), i as u64) };
                }
                // None completes inside the call; the table holds exactly the bound.
                (n.refused.get() + n.ok.get(), r.uring_ops())
            })
            .unwrap();
        assert_eq!(during, (0, MAX_URING_OPS));
        let (ok, refused, other) = wait_on(&h, "every NOP and refusal", move |r| {
            let n = r.local::<Nops>();
            (n.ok.get() + n.refused.get() + n.other.get() >= total)
                .then(|| (n.ok.get(), n.refused.get(), n.other.get()))
        });
        assert_eq!((ok, refused, other), (MAX_URING_OPS, OVER, 0));
        assert_eq!(
            set.stats()[0].uring_refused.load(Ordering::Relaxed),
            OVER as u64
        );
        assert_eq!(h.call_blocking(|r| r.uring_ops()).unwrap(), 0);
    }

    #[test]
    fn a_completion_posted_as_task_work_reaches_a_busy_polling_reactor() {
        // A read of an empty pipe completes from the writer's wake-up, as task work
        // for the reactor's ring. A reactor that polls (never sleeps) and has nothing
        // to submit must still enter the kernel to collect it.
        #[derive(Default)]
        struct PipeRead {
            fds: Cell<[i32; 2]>,
            buf: RefCell<[u8; 8]>,
            res: Cell<Option<i32>>,
        }
        impl UringDone for PipeRead {
            fn uring_done(&self, _tag: u64, res: i32, _flags: u32) {
                self.res.set(Some(res));
            }
        }
        let set = ReactorSet::start(
            &ReactorConfig {
                poll_mode: PollMode::Always,
                ..Default::default()
            },
            pool(),
        )
        .unwrap();
        let h = set.handles()[0].clone();
        let write_fd = h
            .call_blocking(|r| {
                let pr = r.local::<PipeRead>();
                let mut fds = [0i32; 2];
                // SAFETY: pipe2 writes two fds into the array we own.
                assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
                pr.fds.set(fds);
                let read =
                    opcode::Read::new(types::Fd(fds[0]), pr.buf.borrow_mut().as_mut_ptr(), 8)
                        .build();
                // SAFETY: the buffer lives in a reactor-local that outlives the read
                // (the test waits for its completion before the set stops).
                unsafe { r.uring_push(read, pr.clone(), 0) };
                fds[1]
            })
            .unwrap();
        // The read has reached the kernel (its iteration submitted) and waits there.
        wait_on(&h, "the read submitted", |r| {
            (r.uring_ops() == 1 && r.uring_queued.get() == 0).then_some(())
        });
        // With an operation at the kernel an idle reactor spins only briefly.
        let spin = h.call_blocking(|r| r.spin_before_sleep()).unwrap();
        assert_eq!(spin, IO_WAIT_SPIN.min(ReactorConfig::default().idle_spin));
        // SAFETY: writes 8 bytes from a live array to the pipe's write end.
        assert_eq!(
            unsafe { libc::write(write_fd, [7u8; 8].as_ptr().cast(), 8) },
            8
        );
        let res = wait_on(&h, "the pipe read's completion", |r| {
            r.local::<PipeRead>().res.get()
        });
        assert_eq!(res, 8);
        let spin = h.call_blocking(|r| r.spin_before_sleep()).unwrap();
        assert_eq!(
            spin,
            ReactorConfig::default().idle_spin,
            "nothing at the kernel"
        );
        h.call_blocking(|r| {
            for fd in r.local::<PipeRead>().fds.get() {
                // SAFETY: closes the pipe's fds, which nothing uses any more.
                unsafe { libc::close(fd) };
            }
        })
        .unwrap();
    }

    #[test]
    fn idle_reactor_uses_almost_no_cpu() {
        let set = ReactorSet::start(&ReactorConfig::default(), pool()).unwrap();
        let before = set.handles()[0].call_blocking(|_| thread_cpu_ns()).unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let after = set.handles()[0].call_blocking(|_| thread_cpu_ns()).unwrap();
        let pct = (after - before) as f64 / 500e6 * 100.0;
        assert!(pct < 2.0, "idle reactor used {pct:.2}% of a core");
    }
}
