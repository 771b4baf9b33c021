//! The client side of a Cap'n Proto connection, shared by every client of plexd's
//! two interfaces (the kernel interface's `KernelClient` in plexd-target-api, the coordinator's
//! calls to a node, plexctl): [`client`] builds the RPC system over any byte stream,
//! and [`Polled`] runs a connection on the calling thread without an I/O reactor.
//!
//! Why without a reactor: smol's reactor is one per process, and a thread blocked
//! in `smol::block_on` gets it only when no other thread holds it. Its helper
//! thread (`async-io`) takes it whenever the caller was away from it for a while,
//! and from then on every answer reaches the caller through that thread (a wake-up
//! of each, per answer). A caller with one connection and nothing else to do (the
//! coordinator's driver calling its data plane, plexctl calling a node) waits in
//! `poll(2)` on its own socket instead ([`Polled::run`]), so the answer wakes it and
//! no other thread: plexctl then starts no helper thread at all.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use capnp_rpc::{rpc_twoparty_capnp, twoparty, RpcSystem};
use futures::AsyncReadExt;
use smol::LocalExecutor;

/// The client side of a connection over `io`: the RPC system (poll it, or race it
/// against the calls) and the server's bootstrap capability.
pub fn client<C: capnp::capability::FromClientHook>(
    io: impl futures::AsyncRead + futures::AsyncWrite + 'static,
) -> (RpcSystem<rpc_twoparty_capnp::Side>, C) {
    let (reader, writer) = io.split();
    let network = twoparty::VatNetwork::new(
        futures::io::BufReader::new(reader),
        futures::io::BufWriter::new(writer),
        rpc_twoparty_capnp::Side::Client,
        Default::default(),
    );
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let bootstrap: C = rpc.bootstrap(rpc_twoparty_capnp::Side::Server);
    (rpc, bootstrap)
}

/// A connected stream socket [`Polled`] can run a connection over.
pub trait Socket: AsFd {
    /// Reads what is there (`WouldBlock` once non-blocking and empty).
    fn read_some(&self, buf: &mut [u8]) -> std::io::Result<usize>;
    /// Writes what fits (`WouldBlock` once non-blocking and full).
    fn write_some(&self, buf: &[u8]) -> std::io::Result<usize>;
    /// Makes reads and writes return `WouldBlock` instead of waiting.
    fn set_nonblocking(&self) -> std::io::Result<()>;
    /// Ends the writing side.
    fn shutdown_write(&self) -> std::io::Result<()>;
}

macro_rules! socket {
    ($t:ty) => {
        impl Socket for $t {
            fn read_some(&self, buf: &mut [u8]) -> std::io::Result<usize> {
                (&*self).read(buf)
            }
            fn write_some(&self, buf: &[u8]) -> std::io::Result<usize> {
                (&*self).write(buf)
            }
            fn set_nonblocking(&self) -> std::io::Result<()> {
                <$t>::set_nonblocking(self, true)
            }
            fn shutdown_write(&self) -> std::io::Result<()> {
                self.shutdown(std::net::Shutdown::Write)
            }
        }
    };
}
socket!(UnixStream);
socket!(std::net::TcpStream);

/// The tasks waiting for the socket to be readable or writable.
#[derive(Default)]
struct SocketWakers {
    read: RefCell<Option<Waker>>,
    write: RefCell<Option<Waker>>,
    /// Some data came from the peer ([`Polled::heard`]).
    heard: Cell<bool>,
}

/// A non-blocking socket read and written without an I/O reactor: a read or write
/// that would block leaves its task's waker with the [`Polled`] it was made with,
/// which wakes it once `poll(2)` says the socket is ready. Build the connection's
/// RPC system over it ([`client`]).
pub struct PolledSocket<S> {
    sock: S,
    wakers: Rc<SocketWakers>,
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

impl<S: Socket + Unpin> futures::AsyncRead for PolledSocket<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let r = ready(&this.wakers.read, cx, || this.sock.read_some(buf));
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.wakers.heard.set(true);
        }
        r
    }
}

impl<S: Socket + Unpin> futures::AsyncWrite for PolledSocket<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        ready(&this.wakers.write, cx, || this.sock.write_some(buf))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(self.sock.shutdown_write())
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

/// What [`Polled::run`] ended with, besides the call's own answer.
#[derive(Debug)]
pub enum Stop {
    /// The deadline passed first.
    Deadline,
    /// `poll(2)` failed.
    Poll(std::io::Error),
    /// The socket hung up and no task of the connection waits on it any more, yet
    /// the call has not completed (it would only spin until its deadline).
    HungUp,
}

/// A connection run on the calling thread: an executor for its tasks (the RPC
/// system, when it is spawned rather than raced against the call), the socket's
/// wakers and a second descriptor of the socket to wait on. `!Send`: it lives on
/// the thread that made it (see plexd-target-api's inline `KernelClient` for one
/// that moves, under a mutex).
pub struct Polled {
    ex: LocalExecutor<'static>,
    wakers: Rc<SocketWakers>,
    wait_fd: OwnedFd,
}

impl Polled {
    /// `sock` made non-blocking, for the connection's RPC system ([`client`]), and
    /// the runner that waits on it.
    pub fn new<S: Socket>(sock: S) -> std::io::Result<(Polled, PolledSocket<S>)> {
        sock.set_nonblocking()?;
        let wait_fd = sock.as_fd().try_clone_to_owned()?;
        let wakers = Rc::new(SocketWakers::default());
        let socket = PolledSocket {
            sock,
            wakers: Rc::clone(&wakers),
        };
        let polled = Polled {
            ex: LocalExecutor::new(),
            wakers,
            wait_fd,
        };
        Ok((polled, socket))
    }

    /// Whether the peer has sent anything yet (an RPC peer answers the bootstrap at
    /// once, so a peer that accepted the connection and sent nothing is frozen or
    /// hung). Data is read by the connection's tasks, so a future that waits for
    /// this must be polled after them (e.g. second in `smol::future::or`).
    pub fn heard(&self) -> bool {
        self.wakers.heard.get()
    }

    /// Runs `task` (e.g. the RPC system) whenever [`Polled::run`] runs.
    pub fn spawn(&self, task: impl Future<Output = ()> + 'static) {
        self.ex.spawn(task).detach();
    }

    /// Runs `call` (and the spawned tasks) on this thread until it completes or
    /// `deadline` passes. Between turns with nothing to run, it waits in `poll(2)`
    /// for the socket (readable, or writable when a write waits), so the answer
    /// wakes this thread and no other. Only the socket ends that wait: what runs
    /// here must wait on nothing else (a smol timer, or a wake from another
    /// thread, is seen only at the socket's next event or the deadline).
    pub fn run<T>(&self, call: impl Future<Output = T>, deadline: Instant) -> Result<T, Stop> {
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

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    use futures::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A peer on 127.0.0.1 that answers each line after `delay` with the line, and
    /// the client's socket to it.
    fn echo_after(delay: Duration) -> (TcpStream, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut buf = [0u8; 64];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    return;
                }
                std::thread::sleep(delay);
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        });
        (TcpStream::connect(addr).unwrap(), server)
    }

    #[test]
    fn a_call_runs_on_this_thread_until_its_answer_or_its_deadline() {
        let (client, server) = echo_after(Duration::from_millis(20));
        let (polled, socket) = Polled::new(client).unwrap();
        let (mut reader, mut writer) = socket.split();
        // The answer comes after the peer's delay: the runner waited for it.
        let call = async {
            writer.write_all(b"ping").await.unwrap();
            let mut got = [0u8; 4];
            reader.read_exact(&mut got).await.unwrap();
            got
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        assert_eq!(&polled.run(call, deadline).unwrap(), b"ping");
        // A spawned task runs while a call waits.
        let ran = Rc::new(std::cell::Cell::new(false));
        let r2 = Rc::clone(&ran);
        polled.spawn(async move { r2.set(true) });
        // No answer before the deadline: Deadline, not a hang.
        let silent = async {
            let mut got = [0u8; 1];
            reader.read_exact(&mut got).await
        };
        let began = Instant::now();
        let r = polled.run(silent, began + Duration::from_millis(50));
        assert!(matches!(r, Err(Stop::Deadline)), "{r:?}");
        assert!(began.elapsed() >= Duration::from_millis(50));
        assert!(ran.get());
        // The peer sees the end once both descriptors are closed.
        drop((reader, writer, polled));
        server.join().unwrap();
    }
}
