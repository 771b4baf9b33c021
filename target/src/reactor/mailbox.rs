//! A reactor's mailbox: a bounded lock-free MPSC ring of messages plus the eventfd
//! that wakes the reactor when it sleeps. A full ring is an error the sender
//! handles (backpressure), never an abort and never an unbounded queue.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_queue::ArrayQueue;

use super::Reactor;
use crate::buf::{CacheMsg, CachePeer};

/// A message: a closure that runs on the receiving reactor's thread.
pub type Msg = Box<dyn FnOnce(&Rc<Reactor>) + Send>;

/// Default number of message slots per reactor.
pub const MAILBOX_SLOTS: usize = 4096;

/// The receiving reactor's ring was full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("reactor {reactor}: message ring full ({slots} slots)")]
pub struct RingFull {
    /// The reactor whose ring was full.
    pub reactor: usize,
    /// Its capacity.
    pub slots: usize,
}

pub(crate) struct Mailbox {
    queue: ArrayQueue<Msg>,
    /// Set by the reactor just before it blocks; senders then write the eventfd.
    pub(crate) sleeping: AtomicBool,
    pub(crate) wake_fd: OwnedFd,
}

impl Mailbox {
    pub(crate) fn new(slots: usize) -> std::io::Result<Mailbox> {
        // SAFETY: eventfd(2) with valid flags; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mailbox {
            queue: ArrayQueue::new(slots),
            sleeping: AtomicBool::new(false),
            // SAFETY: fd is a fresh descriptor that nothing else owns.
            wake_fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub(crate) fn pop(&self) -> Option<Msg> {
        self.queue.pop()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(crate) fn wake(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. A failure
        // (EAGAIN when the counter is saturated) still leaves the reactor woken.
        unsafe {
            libc::write(
                self.wake_fd.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            );
        }
    }
}

/// The buffer pool's caches reach each other through the reactors' rings.
impl CachePeer for ReactorHandle {
    fn id(&self) -> usize {
        self.id
    }

    fn send_cache_msg(&self, msg: CacheMsg) -> Result<(), String> {
        self.try_send(Box::new(move |r| r.bufs().deliver(msg)))
            .map_err(|(full, _)| full.to_string())
    }
}

/// A cheap, clonable, thread-safe address of one reactor.
#[derive(Clone)]
pub struct ReactorHandle {
    pub(crate) id: usize,
    pub(crate) mailbox: Arc<Mailbox>,
}

impl ReactorHandle {
    /// The reactor's index within its set.
    pub fn id(&self) -> usize {
        self.id
    }

    /// Queues `msg` for the reactor. When the ring is full the message comes back.
    pub fn try_send(&self, msg: Msg) -> Result<(), (RingFull, Msg)> {
        if let Err(msg) = self.mailbox.queue.push(msg) {
            return Err((
                RingFull {
                    reactor: self.id,
                    slots: self.mailbox.queue.capacity(),
                },
                msg,
            ));
        }
        // Pairs with the fence in the reactor's sleep path: either the reactor sees
        // the message before it blocks, or we see `sleeping` and wake it.
        fence(Ordering::SeqCst);
        if self.mailbox.sleeping.load(Ordering::SeqCst) {
            self.mailbox.wake();
        }
        Ok(())
    }

    /// Control-path send: retries a full ring until `timeout` has passed. Never
    /// call this from a reactor thread (it would wait on itself); reactors use
    /// [`ReactorHandle::try_send`] and handle the error.
    pub fn send_timeout(&self, msg: Msg, timeout: Duration) -> Result<(), RingFull> {
        let deadline = Instant::now() + timeout;
        let mut msg = msg;
        loop {
            match self.try_send(msg) {
                Ok(()) => return Ok(()),
                Err((full, m)) => {
                    if Instant::now() >= deadline {
                        log::warn!("{full}: gave up after {timeout:?}");
                        return Err(full);
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
    }

    /// Runs `f` on the reactor and returns a receiver for its result.
    pub fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Rc<Reactor>) -> R + Send + 'static,
    ) -> Result<futures::channel::oneshot::Receiver<R>, RingFull> {
        let (tx, rx) = futures::channel::oneshot::channel();
        let msg: Msg = Box::new(move |r| {
            let _ = tx.send(f(r));
        });
        self.send_timeout(msg, CONTROL_SEND_TIMEOUT)?;
        Ok(rx)
    }

    /// Runs `f` on the reactor and blocks the calling (control) thread for the result.
    pub fn call_blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Rc<Reactor>) -> R + Send + 'static,
    ) -> Result<R, CallError> {
        let rx = self.call(f).map_err(CallError::Full)?;
        futures::executor::block_on(rx).map_err(|_| CallError::Stopped { reactor: self.id })
    }
}

/// How long a control-path send waits on a full ring before reporting it.
pub const CONTROL_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// A control-path call to a reactor that did not return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The ring stayed full.
    #[error(transparent)]
    Full(RingFull),
    /// The reactor stopped before answering.
    #[error("reactor {reactor} stopped before answering")]
    Stopped {
        /// Which reactor.
        reactor: usize,
    },
}
