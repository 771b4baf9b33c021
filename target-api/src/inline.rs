//! The connection of an inline [`crate::KernelClient`]
//! ([`crate::KernelClient::connect_inline`]): its Cap'n Proto RPC system runs on
//! the calling thread while a call is in flight, with no connection thread to hand
//! the call to and no global I/O reactor to wake it. The socket is read and written
//! without a reactor ([`PolledSocket`]); when nothing can run, the caller waits in
//! `poll(2)` on the socket itself, so the answer wakes the caller directly.

use std::cell::RefCell;
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use smol::LocalExecutor;

/// The tasks waiting for the socket to be readable or writable.
#[derive(Default)]
pub(crate) struct SocketWakers {
    read: RefCell<Option<Waker>>,
    write: RefCell<Option<Waker>>,
}

/// A non-blocking Unix socket read and written without an I/O reactor: a read or
/// write that would block leaves its task's waker in [`SocketWakers`], and
/// [`Inline::run`] wakes it once `poll(2)` says the socket is ready.
pub(crate) struct PolledSocket {
    sock: UnixStream,
    wakers: Rc<SocketWakers>,
}

impl PolledSocket {
    /// `sock` made non-blocking, and the wakers [`Inline::run`] serves.
    pub(crate) fn new(sock: UnixStream) -> std::io::Result<(PolledSocket, Rc<SocketWakers>)> {
        sock.set_nonblocking(true)?;
        let wakers = Rc::new(SocketWakers::default());
        let s = PolledSocket {
            sock,
            wakers: Rc::clone(&wakers),
        };
        Ok((s, wakers))
    }
}

/// Runs `op` until it does not fail with `Interrupted`; `WouldBlock` leaves `cx`'s
/// waker in `slot` and is `Pending`.
fn ready<T>(
    slot: &RefCell<Option<Waker>>,
    cx: &Context<'_>,
    mut op: impl FnMut() -> std::io::Result<T>,
) -> Poll<std::io::Result<T>> {
    loop {
        match op() {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                *slot.borrow_mut() = Some(cx.waker().clone());
                return Poll::Pending;
            }
            r => return Poll::Ready(r),
        }
    }
}

impl futures::AsyncRead for PolledSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        ready(&this.wakers.read, cx, || (&this.sock).read(buf))
    }
}

impl futures::AsyncWrite for PolledSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        ready(&this.wakers.write, cx, || (&this.sock).write(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.sock.shutdown(std::net::Shutdown::Write))
    }
}

/// Set when the call's waker is woken.
struct Flag(AtomicBool);

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Release);
    }
}

/// What [`Inline::run`] ended with, besides the call's own answer.
pub(crate) enum Stop {
    /// The deadline passed first.
    Deadline,
    /// `poll(2)` failed.
    Poll(std::io::Error),
    /// The socket hung up and no task of the connection waits on it any more, yet
    /// the call has not completed (it would only spin until its deadline).
    HungUp,
}

/// An inline connection: the executor holding its RPC system, and the socket's
/// wakers and a second descriptor of the socket to wait on.
pub(crate) struct Inline {
    ex: LocalExecutor<'static>,
    pub(crate) kernel: plexd_proto::kernel_capnp::kernel::Client,
    wakers: Rc<SocketWakers>,
    wait_fd: OwnedFd,
}

// SAFETY: `Inline` is !Send only through what it owns: the Cap'n Proto objects
// (`Rc` inside the bootstrap client, and inside the RPC system, a task of `ex`),
// the tasks of `ex`, and the `Rc<SocketWakers>` shared with the socket inside that
// RPC system. Every one of them is reached only through this struct: the RPC
// system is a task of `ex`, `kernel` and its clones are used only by futures that
// `KernelClient::call_inline` runs to completion (or drops) while it holds the
// mutex around this struct, and nothing of it is handed out. So the non-atomic
// reference counts are only touched by the thread that holds that mutex, whose
// acquire and release order those accesses; moving the whole struct to another
// thread moves every `Rc` pointing into it at once. The executor's own state is
// thread-safe (its `!Send` marker is for its tasks), and no waker of it is given
// to another thread (no I/O reactor holds one: the socket is polled here).
unsafe impl Send for Inline {}

impl Inline {
    /// An inline connection over `sock`: `rpc` is the RPC system built over the
    /// [`PolledSocket`] made from it (spawned here), `wakers` that socket's.
    pub(crate) fn new(
        rpc: impl Future<Output = ()> + 'static,
        kernel: plexd_proto::kernel_capnp::kernel::Client,
        wakers: Rc<SocketWakers>,
        wait_fd: OwnedFd,
    ) -> Inline {
        let ex = LocalExecutor::new();
        ex.spawn(rpc).detach();
        Inline {
            ex,
            kernel,
            wakers,
            wait_fd,
        }
    }

    /// Runs `call` (and the connection) on this thread until it completes or
    /// `deadline` passes. Between turns with nothing to run, it waits in `poll(2)`
    /// for the socket (readable, or writable when a write waits), so the target's
    /// answer wakes this thread and no other.
    pub(crate) fn run<T>(
        &self,
        call: impl Future<Output = T>,
        deadline: Instant,
    ) -> Result<T, Stop> {
        let flag = Arc::new(Flag(AtomicBool::new(true)));
        let waker = Waker::from(Arc::clone(&flag));
        let mut cx = Context::from_waker(&waker);
        let mut call = pin!(call);
        loop {
            while self.ex.try_tick() {}
            if flag.0.swap(false, Ordering::AcqRel) {
                if let Poll::Ready(r) = call.as_mut().poll(&mut cx) {
                    return Ok(r);
                }
                continue; // the poll may have woken a task of the connection
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Stop::Deadline);
            }
            let wait = deadline - now;
            let ms = wait.as_millis().saturating_add(1).min(i32::MAX as u128) as i32;
            let mut events = libc::POLLIN;
            if self.wakers.write.borrow().is_some() {
                events |= libc::POLLOUT;
            }
            let mut pfd = libc::pollfd {
                fd: self.wait_fd.as_raw_fd(),
                events,
                revents: 0,
            };
            // SAFETY: `pfd` is one valid, initialized pollfd that lives across the
            // call, and nfds is 1.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Stop::Poll(e));
            }
            let failed = pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0;
            let mut woke = false;
            if pfd.revents & libc::POLLIN != 0 || failed {
                if let Some(w) = self.wakers.read.borrow_mut().take() {
                    w.wake();
                    woke = true;
                }
            }
            if pfd.revents & libc::POLLOUT != 0 || failed {
                if let Some(w) = self.wakers.write.borrow_mut().take() {
                    w.wake();
                    woke = true;
                }
            }
            if failed && !woke {
                return Err(Stop::HungUp);
            }
        }
    }
}
