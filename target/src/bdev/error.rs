//! The `error` bdev: wraps another bdev and injects failures or latency on
//! command, for fault tests (plex failure, retries, stalls).
//!
//! Injection is set from any thread through [`ErrorInjection`] (the control path).
//! The per-I/O check reads a few relaxed atomics of the error bdev. That is an
//! exception to the "no shared atomic on the submit path" rule, accepted because this
//! is a test device: the atomics are written only on control changes, so the cache
//! lines stay shared-clean, and the counted-failure decrement (`for the next N I/Os`)
//! only happens while a counted injection is active.
//!
//! Failures are decided at submission: a failing I/O never reaches the inner bdev
//! (like a medium error). Latency is added after the inner bdev completes: the
//! completion is held in a reactor-local queue, sorted by due time, and released by
//! the channel's [`Poller`], whose `next_deadline` is the earliest due time, so a
//! sleeping reactor wakes in time and nothing blocks. At most [`MAX_DELAYED_IOS`]
//! I/Os per channel get latency at once (at the inner bdev or waiting for their
//! due time); an I/O past it fails at once with [`RETRY_ERRNO`], counted in
//! [`ErrorInjection::delay_refused`].

pub use plexd_target_api::bdev::FailOn;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{
    check_range, Bdev, BdevChannel, BdevInfo, BdevIo, IoCallback, IoDone, IoKind, IoStatus,
    RETRY_ERRNO,
};
use crate::reactor::{Poller, PollerId, Reactor};

/// In-flight I/Os per channel preallocated for latency injection.
pub const DELAY_SLOTS: usize = 1024;
/// I/Os one channel delays at once (at the inner bdev with latency to add, or
/// completed and waiting for their due time); more fail with [`RETRY_ERRNO`]
/// without reaching the inner bdev.
pub const MAX_DELAYED_IOS: usize = 16 * DELAY_SLOTS;

/// The class bits an injection on `on` fails.
fn mask(on: FailOn) -> u64 {
    match on {
        FailOn::Reads => MASK_READS,
        FailOn::Writes => MASK_WRITES,
        FailOn::Both => MASK_READS | MASK_WRITES,
    }
}

const MASK_READS: u64 = 1;
const MASK_WRITES: u64 = 2;
const ERRNO_SHIFT: u32 = 8;
/// `remaining` value meaning "until cleared".
const UNLIMITED: u64 = u64::MAX;

/// The class bit of an I/O kind, or 0 for kinds never failed.
fn kind_mask(kind: IoKind) -> u64 {
    match kind {
        IoKind::Read => MASK_READS,
        IoKind::Write | IoKind::WriteZeroes | IoKind::Unmap | IoKind::Flush => MASK_WRITES,
        IoKind::Reset => 0,
    }
}

/// The fault settings of one error bdev, shared with its channels. Every method
/// may be called from any thread.
#[derive(Debug, Default)]
pub struct ErrorInjection {
    /// Failure class mask (bits 0-1) and errno (bits 8..40); 0 = no failures.
    fail_config: AtomicU64,
    /// Failures left to inject ([`UNLIMITED`] = until cleared).
    fail_remaining: AtomicU64,
    /// Added latency per I/O, in microseconds (0 = none).
    latency_us: AtomicU64,
    /// Failures injected so far.
    injected_failures: AtomicU64,
    /// I/Os refused because a channel already delayed [`MAX_DELAYED_IOS`].
    delay_refused: AtomicU64,
}

impl ErrorInjection {
    /// Fails I/Os of class `on` with `errno` (EIO when 0 or negative) for the next
    /// `count` of them, or until cleared when `count` is `None`. Replaces any
    /// previous failure setting.
    pub fn fail(&self, on: FailOn, errno: i32, count: Option<u64>) {
        let errno = if errno <= 0 { libc::EIO } else { errno };
        // Disarm, set the count, then arm: a reader that sees the new config sees
        // the new count (release/acquire on fail_config).
        self.fail_config.store(0, Ordering::Release);
        self.fail_remaining
            .store(count.unwrap_or(UNLIMITED), Ordering::Relaxed);
        self.fail_config.store(
            mask(on) | ((errno as u64) << ERRNO_SHIFT),
            Ordering::Release,
        );
    }

    /// Adds `latency_us` microseconds to every I/O submitted from now on (0 removes it).
    pub fn set_latency_us(&self, latency_us: u64) {
        self.latency_us.store(latency_us, Ordering::Relaxed);
    }

    /// Stops injecting failures.
    pub fn clear_failures(&self) {
        self.fail_config.store(0, Ordering::Release);
    }

    /// Stops injecting failures and latency.
    pub fn clear(&self) {
        self.clear_failures();
        self.set_latency_us(0);
    }

    /// Failures injected since the bdev was created.
    pub fn injected_failures(&self) -> u64 {
        self.injected_failures.load(Ordering::Relaxed)
    }

    /// I/Os failed with [`RETRY_ERRNO`] because their channel already delayed
    /// [`MAX_DELAYED_IOS`], since the bdev was created.
    pub fn delay_refused(&self) -> u64 {
        self.delay_refused.load(Ordering::Relaxed)
    }

    /// The added latency in microseconds.
    pub fn latency_us(&self) -> u64 {
        self.latency_us.load(Ordering::Relaxed)
    }

    /// A human description of the active injection.
    pub fn describe(&self) -> String {
        let cfg = self.fail_config.load(Ordering::Acquire);
        let remaining = self.fail_remaining.load(Ordering::Relaxed);
        let mut parts = Vec::new();
        let mask = cfg & (MASK_READS | MASK_WRITES);
        if mask != 0 && remaining != 0 {
            let on = match mask {
                MASK_READS => "reads",
                MASK_WRITES => "writes",
                _ => "reads and writes",
            };
            let errno = (cfg >> ERRNO_SHIFT) as i32;
            let left = if remaining == UNLIMITED {
                "until cleared".to_string()
            } else {
                format!("{remaining} more")
            };
            parts.push(format!("fail {on} with errno {errno}, {left}"));
        }
        let lat = self.latency_us();
        if lat > 0 {
            parts.push(format!("latency {lat} us"));
        }
        if parts.is_empty() {
            parts.push("no injection".into());
        }
        parts.push(format!("{} failures injected", self.injected_failures()));
        if self.delay_refused() > 0 {
            parts.push(format!(
                "{} I/Os refused past MAX_DELAYED_IOS",
                self.delay_refused()
            ));
        }
        parts.join("; ")
    }

    /// The errno to fail an I/O of `kind` with, consuming one counted failure.
    fn check(&self, kind: IoKind) -> Option<i32> {
        let cfg = self.fail_config.load(Ordering::Acquire);
        if cfg & kind_mask(kind) == 0 {
            return None;
        }
        if self.fail_remaining.load(Ordering::Relaxed) == UNLIMITED {
            // No write to the shared counter on the common "until cleared" case.
            self.injected_failures.fetch_add(1, Ordering::Relaxed);
            return Some((cfg >> ERRNO_SHIFT) as i32);
        }
        let hit = self
            .fail_remaining
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| match r {
                0 => None,
                UNLIMITED => Some(UNLIMITED),
                n => Some(n - 1),
            })
            .is_ok();
        if !hit {
            return None;
        }
        self.injected_failures.fetch_add(1, Ordering::Relaxed);
        Some((cfg >> ERRNO_SHIFT) as i32)
    }
}

/// A bdev that forwards to `inner` and injects faults on command.
pub struct ErrorBdev {
    name: String,
    inner: Arc<dyn Bdev>,
    injection: ErrorInjection,
}

impl ErrorBdev {
    /// Wraps `inner` under the name `name`, with no injection active.
    pub fn new(name: &str, inner: Arc<dyn Bdev>) -> Arc<ErrorBdev> {
        Arc::new(ErrorBdev {
            name: name.to_string(),
            inner,
            injection: ErrorInjection::default(),
        })
    }

    /// The injection controls (any thread).
    pub fn injection(&self) -> &ErrorInjection {
        &self.injection
    }

    /// The wrapped bdev.
    pub fn inner(&self) -> &Arc<dyn Bdev> {
        &self.inner
    }
}

impl Bdev for ErrorBdev {
    fn name(&self) -> &str {
        &self.name
    }
    fn block_size(&self) -> u32 {
        self.inner.block_size()
    }
    fn size_bytes(&self) -> u64 {
        self.inner.size_bytes()
    }
    fn info(&self) -> BdevInfo {
        BdevInfo {
            name: self.name.clone(),
            kind: "error".into(),
            block_size: self.block_size(),
            size_bytes: self.size_bytes(),
            detail: format!("over {}: {}", self.inner.name(), self.injection.describe()),
            refused: self.injection.delay_refused(),
        }
    }
    /// That of the wrapped bdev (flushes pass through to it).
    fn volatile_write_cache(&self) -> bool {
        self.inner.volatile_write_cache()
    }
    fn create_channel(
        self: Arc<Self>,
        reactor: &Rc<Reactor>,
    ) -> Result<Rc<dyn BdevChannel>, String> {
        let inner = reactor
            .channel(&self.inner)
            .map_err(|e| format!("error bdev {}: inner bdev: {e}", self.name))?;
        let state = Rc::new(ChannelState {
            bdev: self,
            inner,
            reactor: Rc::clone(reactor),
            delayed: RefCell::new(slab::Slab::with_capacity(DELAY_SLOTS)),
            held: RefCell::new(VecDeque::with_capacity(DELAY_SLOTS)),
            closed: Cell::new(false),
            refusal_logged: Cell::new(false),
        });
        let poller = reactor.add_poller(Rc::clone(&state) as Rc<dyn Poller>);
        Ok(Rc::new(ErrorChannel { state, poller }))
    }
}

/// A completion held back until `due`.
struct Held {
    due: Instant,
    cb: IoCallback,
    status: IoStatus,
}

struct ErrorChannel {
    state: Rc<ChannelState>,
    poller: PollerId,
}

struct ChannelState {
    bdev: Arc<ErrorBdev>,
    inner: Rc<dyn BdevChannel>,
    reactor: Rc<Reactor>,
    /// I/Os in the inner bdev whose completion gets latency: (callback, latency_us).
    delayed: RefCell<slab::Slab<(IoCallback, u64)>>,
    /// Completions waiting for their due time, earliest first.
    held: RefCell<VecDeque<Held>>,
    /// The channel was dropped (bdev deleted): its poller is gone, so completions
    /// still arriving from the inner bdev are delivered at once.
    closed: Cell<bool>,
    /// A refusal was logged since nothing was last delayed (one line per episode).
    refusal_logged: Cell<bool>,
}

impl ChannelState {
    /// I/Os this channel delays now: at the inner bdev, or waiting for their due time.
    fn delaying(&self) -> usize {
        self.delayed.borrow().len() + self.held.borrow().len()
    }

    fn hold(&self, cb: IoCallback, status: IoStatus, due: Instant) {
        if self.closed.get() {
            cb.defer(&self.reactor, status);
            return;
        }
        let mut held = self.held.borrow_mut();
        // Usually appends (constant latency keeps due times in order).
        let at = held.partition_point(|h| h.due <= due);
        held.insert(at, Held { due, cb, status });
        // Earliest first: the poller and next_deadline look at the front only.
        debug_assert!(at + 1 >= held.len() || held[at + 1].due >= due);
    }
}

impl BdevChannel for ErrorChannel {
    fn submit(&self, mut io: BdevIo) {
        let st = &self.state;
        if let Err(errno) = check_range(&io, st.bdev.block_size(), st.bdev.size_bytes()) {
            io.cb.defer(&st.reactor, IoStatus::Failed(errno));
            return;
        }
        let inj = &st.bdev.injection;
        let latency_us = inj.latency_us();
        if latency_us > 0 && st.delaying() >= MAX_DELAYED_IOS {
            inj.delay_refused.fetch_add(1, Ordering::Relaxed);
            if !st.refusal_logged.replace(true) {
                log::warn!(
                    "error bdev {} on reactor {}: MAX_DELAYED_IOS I/Os are delayed; failing I/O with EAGAIN",
                    st.bdev.name,
                    st.reactor.id()
                );
            }
            io.cb.defer(&st.reactor, IoStatus::Failed(RETRY_ERRNO));
            return;
        }
        if let Some(errno) = inj.check(io.kind) {
            if latency_us > 0 {
                let due = Instant::now() + Duration::from_micros(latency_us);
                st.hold(io.cb, IoStatus::Failed(errno), due);
            } else {
                io.cb.defer(&st.reactor, IoStatus::Failed(errno));
            }
            return;
        }
        if latency_us == 0 {
            st.inner.submit(io);
            return;
        }
        let key = st.delayed.borrow_mut().insert((io.cb, latency_us));
        io.cb = IoCallback::new(Rc::clone(st) as Rc<dyn IoDone>, key as u64);
        st.inner.submit(io);
    }
}

impl IoDone for ChannelState {
    fn io_done(&self, tag: u64, status: IoStatus) {
        let Some((cb, latency_us)) = self.delayed.borrow_mut().try_remove(tag as usize) else {
            log::error!(
                "error bdev {}: completion for unknown I/O {tag}",
                self.bdev.name
            );
            return;
        };
        self.hold(
            cb,
            status,
            Instant::now() + Duration::from_micros(latency_us),
        );
    }
}

impl Poller for ChannelState {
    fn poll(&self, now: Instant) -> usize {
        let mut n = 0;
        loop {
            let next = {
                let mut held = self.held.borrow_mut();
                match held.front() {
                    Some(h) if h.due <= now => held.pop_front(),
                    _ => None,
                }
            };
            match next {
                Some(h) => {
                    h.cb.defer(&self.reactor, h.status);
                    n += 1;
                }
                None => {
                    if n > 0 && self.held.borrow().is_empty() && self.delayed.borrow().is_empty() {
                        self.refusal_logged.set(false);
                    }
                    return n;
                }
            }
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.held.borrow().front().map(|h| h.due)
    }
}

impl Drop for ErrorChannel {
    fn drop(&mut self) {
        self.state.reactor.remove_poller(self.poller);
        self.state.closed.set(true);
        // Release held completions now rather than lose them.
        let held: Vec<Held> = self.state.held.borrow_mut().drain(..).collect();
        for h in held {
            h.cb.defer(&self.state.reactor, h.status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_failures_run_out() {
        let inj = ErrorInjection::default();
        inj.fail(FailOn::Reads, libc::EIO, Some(2));
        assert_eq!(inj.check(IoKind::Write), None, "writes untouched");
        assert_eq!(inj.check(IoKind::Read), Some(libc::EIO));
        assert_eq!(inj.check(IoKind::Read), Some(libc::EIO));
        assert_eq!(inj.check(IoKind::Read), None);
        assert_eq!(inj.injected_failures(), 2);
    }

    #[test]
    fn unlimited_failures_last_until_cleared_and_never_hit_reset() {
        let inj = ErrorInjection::default();
        inj.fail(FailOn::Both, libc::ENOSPC, None);
        for _ in 0..100 {
            assert_eq!(inj.check(IoKind::Flush), Some(libc::ENOSPC));
        }
        assert_eq!(inj.check(IoKind::Reset), None);
        assert!(
            inj.describe().contains("until cleared"),
            "{}",
            inj.describe()
        );
        inj.clear();
        assert_eq!(inj.check(IoKind::Read), None);
        assert!(
            inj.describe().starts_with("no injection"),
            "{}",
            inj.describe()
        );
    }

    #[test]
    fn non_positive_errno_means_eio() {
        let inj = ErrorInjection::default();
        inj.fail(FailOn::Writes, 0, Some(1));
        assert_eq!(inj.check(IoKind::Unmap), Some(libc::EIO));
    }
}
