//! The TCP transport pieces the iSCSI connection and the NVMe/TCP queue pair
//! share: a connection is pinned to one reactor, reads into a receive buffer
//! after a one-shot io_uring POLLIN poll, writes its output queue with vectored
//! nonblocking `sendmsg` (a POLLOUT poll resumes a full socket), and is flushed
//! and ticked by one poller per reactor.
//!
//! - [`output`]: the output queue ([`OutQueue`]) and its sends;
//! - [`recv`]: the receive buffer ([`RecvBuf`]) and its read batches;
//! - [`share`]: the connection's share of the buffer pool ([`PoolShare`]);
//! - [`listener`]: the TCP listener, accepting and admitting connections, and
//!   stopping a frontend ([`Protocol`], what a frontend gives the transport);
//! - this file: what every frontend's shared state holds ([`FrontendCore`]) and
//!   every connection is ([`Link`]), the per-reactor [`Registry`] of a
//!   frontend's connections and listeners, the [`FlushAndTick`] poller and the
//!   POLLIN/POLLOUT [`Polls`].
//!
//! What a PDU means stays with the frontend ([`Wire`] is all this module needs
//! from a connection).

pub(crate) mod listener;
pub(crate) mod output;
pub(crate) mod recv;
pub(crate) mod share;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use io_uring::{opcode, types};

use crate::reactor::{Poller, Reactor, UringDone};
pub(crate) use listener::{Listener, Protocol};

pub(crate) use output::{OutQueue, Sent};
pub(crate) use recv::RecvBuf;
pub(crate) use share::{PoolShare, CLASSES};

/// Output queued beyond which a connection stops reading new PDUs.
pub(crate) const WBUF_HIGH_BYTES: usize = 4 << 20;
/// Most connections one reactor serves per frontend kind; more are closed at once.
pub(crate) const MAX_CONNS_PER_REACTOR: usize = 1024;
/// How often [`FlushAndTick`] ticks every connection.
pub(crate) const TICK: Duration = Duration::from_secs(1);
/// The io_uring tag of a connection's POLLIN poll.
pub(crate) const TAG_POLLIN: u64 = 1;
/// The io_uring tag of a connection's POLLOUT poll.
pub(crate) const TAG_POLLOUT: u64 = 2;

/// Ids of frontends, unique in the process (a registry key with the connection id).
static NEXT_FRONTEND_ID: AtomicU64 = AtomicU64::new(1);

/// What the transport keeps of every frontend's shared state: its id, whether it
/// is stopping, the addresses it listens on.
pub(crate) struct FrontendCore {
    /// The frontend's id: connections are registered as (this, connection id).
    pub(crate) id: u64,
    /// Set once by [`listener::stop_frontend`]: accept and admit nothing more.
    pub(crate) stopping: AtomicBool,
    /// Every listening address, in the order they were added.
    addrs: Mutex<Vec<SocketAddr>>,
}

impl FrontendCore {
    /// A new frontend's core: a fresh id, not stopping, no addresses.
    pub(crate) fn new() -> FrontendCore {
        FrontendCore {
            id: NEXT_FRONTEND_ID.fetch_add(1, Ordering::Relaxed),
            stopping: AtomicBool::new(false),
            addrs: Mutex::new(Vec::new()),
        }
    }

    /// The frontend is stopping.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// The listening addresses.
    pub(crate) fn addrs(&self) -> MutexGuard<'_, Vec<SocketAddr>> {
        self.addrs.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What every frontend connection (iSCSI connection, NVMe/TCP queue pair) is:
/// its place in the registry, its socket and peer, the reactor it is pinned to.
pub(crate) struct Link {
    /// The connection's id on its reactor.
    pub(crate) id: u64,
    /// Its frontend's id ([`FrontendCore::id`]).
    pub(crate) fid: u64,
    /// The socket.
    pub(crate) stream: TcpStream,
    /// The host's address.
    pub(crate) peer: SocketAddr,
    /// The address the host connected to, when known.
    pub(crate) local: Option<SocketAddr>,
    /// The reactor the connection runs on.
    pub(crate) reactor: Rc<Reactor>,
}

impl Link {
    /// Connection `id` of frontend `fid` on reactor `r` over `stream`.
    pub(crate) fn new(
        r: &Rc<Reactor>,
        fid: u64,
        stream: TcpStream,
        peer: SocketAddr,
        id: u64,
    ) -> Link {
        let local = stream.local_addr().ok();
        Link {
            id,
            fid,
            stream,
            peer,
            local,
            reactor: Rc::clone(r),
        }
    }

    /// The socket's descriptor.
    pub(crate) fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Shuts the socket down both ways: pending polls wake, the peer sees the
    /// close; the descriptor closes when the connection's last reference goes.
    pub(crate) fn shutdown(&self) {
        // SAFETY: shutdown on a socket this link owns; it touches no memory.
        unsafe { libc::shutdown(self.fd(), libc::SHUT_RDWR) };
    }
}

/// Hasher for the small integer keys of per-connection maps (task tags, LUN
/// numbers, command ids): one multiply instead of SipHash on every command.
/// The peer picks these keys, but the maps are bounded (by the queue depth, the
/// LUNs), so colliding keys cost at most a short scan.
#[derive(Default, Clone, Copy)]
pub(crate) struct IntHasher(u64);

impl std::hash::Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u16(&mut self, v: u16) {
        self.write_u64(u64::from(v));
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        // Fibonacci hashing; hashbrown takes its control bits from the top.
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A map keyed by small integers, hashed with [`IntHasher`].
pub(crate) type IntMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IntHasher>>;

/// What the shared transport needs from a frontend's connection.
pub(crate) trait Wire: 'static {
    /// Writes queued output.
    fn flush(&self);
    /// The once-a-second look (timeouts, keep-alive).
    fn tick(&self, now: Instant);
    /// Closes the connection; `why` goes into its log line.
    fn close(&self, why: &str);
    /// True while queued in the registry's dirty list.
    fn dirty(&self) -> &Cell<bool>;
    /// The socket is readable (POLLIN fired, or reading starts).
    fn on_readable(&self);
    /// Reading stalled (no POLLIN armed) and may go on: not closed (and, for
    /// some frontends, not closing).
    fn may_resume(&self) -> bool;
    /// Handles the complete PDUs already in the receive buffer.
    fn process_buffered(&self) -> Result<(), String>;
    /// Resumes reading after a stall (output drained, a buffer came): the PDUs
    /// already received first, then the socket; else just flushes.
    fn resume(&self) {
        if !self.may_resume() {
            self.flush();
            return;
        }
        if let Err(w) = self.process_buffered() {
            self.close(&w);
            return;
        }
        self.on_readable();
    }
    /// After an I/O completion: resumes reading if it stalled and may go on now
    /// (not closing, the output below [`WBUF_HIGH_BYTES`]).
    fn resume_if_stalled(&self) {
        if self.may_resume() && self.reading_paused() {
            self.resume();
        }
    }
    /// A poll with `tag` completed: marks it disarmed; false once closed.
    fn disarm(&self, tag: u64) -> bool;
    /// Reading stalled (no POLLIN armed) and may go on now.
    fn reading_paused(&self) -> bool;
}

/// Implements [`Wire`] and [`UringDone`] for a frontend's connection type
/// whose inherent `flush`, `tick`, `close`, `on_readable`, `may_resume` and
/// `process` do the
/// work; it has fields `dirty: Cell<bool>` and `st: RefCell<St>`, where `St`
/// has `polls: Polls`, `closed: bool` and `pending_out()`.
macro_rules! impl_wire {
    ($conn:ty) => {
        impl $crate::reactor::UringDone for $conn {
            fn uring_done(&self, tag: u64, res: i32, _flags: u32) {
                $crate::frontend::transport::poll_done(self, tag, res);
            }
        }

        impl $crate::frontend::transport::Wire for $conn {
            fn flush(&self) {
                <$conn>::flush(self);
            }
            fn tick(&self, now: std::time::Instant) {
                <$conn>::tick(self, now);
            }
            fn close(&self, why: &str) {
                <$conn>::close(self, why);
            }
            fn dirty(&self) -> &std::cell::Cell<bool> {
                &self.dirty
            }
            fn on_readable(&self) {
                <$conn>::on_readable(self);
            }
            fn may_resume(&self) -> bool {
                <$conn>::may_resume(self)
            }
            fn process_buffered(&self) -> Result<(), String> {
                let mut st = self.st.borrow_mut();
                self.process(&mut st)
            }
            fn disarm(&self, tag: u64) -> bool {
                let mut st = self.st.borrow_mut();
                st.polls.done(tag);
                !st.closed
            }
            fn reading_paused(&self) -> bool {
                let st = self.st.borrow();
                !st.closed
                    && !st.polls.read
                    && st.pending_out() <= $crate::frontend::transport::WBUF_HIGH_BYTES
            }
        }
    };
}
pub(crate) use impl_wire;

/// A connection's poll completed (`res` as io_uring reports it): POLLIN reads,
/// POLLOUT flushes and resumes reading once the output drained; a failed poll
/// closes the connection.
pub(crate) fn poll_done<C: Wire>(c: &C, tag: u64, res: i32) {
    if !c.disarm(tag) {
        return;
    }
    if res < 0 {
        c.close(&format!(
            "poll failed: {}",
            std::io::Error::from_raw_os_error(-res)
        ));
        return;
    }
    if tag == TAG_POLLIN {
        c.on_readable();
    } else {
        c.flush();
        if c.reading_paused() {
            c.resume();
        }
    }
}

/// A frontend's connections and listeners on one reactor (`Reactor::local`).
pub(crate) struct Registry<C, P: Protocol> {
    /// Connections by (frontend id, connection id).
    pub(crate) conns: RefCell<HashMap<(u64, u64), Rc<C>>>,
    /// The listeners this reactor runs (reactor 0 only).
    pub(crate) listeners: RefCell<Vec<Rc<Listener<P>>>>,
    next_id: Cell<u64>,
    poller: Cell<bool>,
    /// Connections with new output, written once per reactor iteration (one
    /// send for a batch of completions).
    dirty: RefCell<Vec<Rc<C>>>,
}

impl<C, P: Protocol> Default for Registry<C, P> {
    fn default() -> Self {
        Registry {
            conns: RefCell::new(HashMap::new()),
            listeners: RefCell::new(Vec::new()),
            next_id: Cell::new(0),
            poller: Cell::new(false),
            dirty: RefCell::new(Vec::new()),
        }
    }
}

impl<C: Wire, P: Protocol> Registry<C, P> {
    /// Admits a connection from `peer` on reactor `r`: its id, or None when the
    /// reactor already serves [`MAX_CONNS_PER_REACTOR`] (logged). Starts this
    /// reactor's [`FlushAndTick`] with the first connection.
    pub(crate) fn admit(r: &Rc<Reactor>, peer: SocketAddr) -> Option<u64> {
        let reg = r.local::<Self>();
        if reg.conns.borrow().len() >= MAX_CONNS_PER_REACTOR {
            log::warn!(
                "{}: reactor {} already serves {MAX_CONNS_PER_REACTOR} connections; closing the one from {peer}",
                P::WHAT,
                r.id()
            );
            return None;
        }
        if !reg.poller.replace(true) {
            r.add_poller(Rc::new(FlushAndTick::<C, P> {
                reactor: Rc::downgrade(r),
                reg: Rc::clone(&reg),
                next: Cell::new(Instant::now() + TICK),
                batch: RefCell::new(Vec::new()),
            }));
        }
        let id = reg.next_id.get() + 1;
        reg.next_id.set(id);
        Some(id)
    }

    /// Connection `id` of frontend `fid` on this reactor.
    pub(crate) fn find(r: &Rc<Reactor>, fid: u64, id: u64) -> Option<Rc<C>> {
        r.local::<Self>().conns.borrow().get(&(fid, id)).cloned()
    }

    /// Closes the listeners and every connection of frontend `fid` on this reactor.
    pub(crate) fn close_frontend(r: &Rc<Reactor>, fid: u64) {
        let reg = r.local::<Self>();
        let ls: Vec<Rc<Listener<P>>> = reg
            .listeners
            .borrow()
            .iter()
            .filter(|l| l.fid == fid)
            .cloned()
            .collect();
        reg.listeners.borrow_mut().retain(|l| l.fid != fid);
        for l in ls {
            l.close();
        }
        for c in Self::conns_of(r, fid) {
            c.close("frontend stopped");
        }
    }

    /// The connections of frontend `fid` on this reactor (a copy: the caller
    /// may close or change them).
    pub(crate) fn conns_of(r: &Rc<Reactor>, fid: u64) -> Vec<Rc<C>> {
        r.local::<Self>()
            .conns
            .borrow()
            .iter()
            .filter(|((f, _), _)| *f == fid)
            .map(|(_, c)| Rc::clone(c))
            .collect()
    }

    /// Asks for a flush of `c` at the end of this reactor iteration.
    pub(crate) fn mark_dirty(r: &Reactor, c: &C, me: Option<Rc<C>>) {
        if c.dirty().replace(true) {
            return;
        }
        match me {
            Some(me) => r.local::<Self>().dirty.borrow_mut().push(me),
            None => c.dirty().set(false),
        }
    }
}

/// Runs every reactor iteration: flushes the connections with new output, and
/// once a [`TICK`] ticks every connection of the registry.
struct FlushAndTick<C, P: Protocol> {
    reactor: Weak<Reactor>,
    /// This reactor's registry (held directly: this runs every loop iteration).
    reg: Rc<Registry<C, P>>,
    next: Cell<Instant>,
    /// The dirty list being flushed, swapped with the registry's so neither
    /// list is reallocated per iteration.
    batch: RefCell<Vec<Rc<C>>>,
}

impl<C: Wire, P: Protocol> Poller for FlushAndTick<C, P> {
    fn poll(&self, now: Instant) -> usize {
        let mut flushed = 0;
        if !self.reg.dirty.borrow().is_empty() {
            let mut batch = self.batch.take();
            std::mem::swap(&mut batch, &mut *self.reg.dirty.borrow_mut());
            flushed = batch.len();
            for c in batch.drain(..) {
                c.dirty().set(false);
                c.flush();
            }
            *self.batch.borrow_mut() = batch;
        }
        if now < self.next.get() || self.reactor.strong_count() == 0 {
            return flushed;
        }
        self.next.set(now + TICK);
        let conns: Vec<Rc<C>> = self.reg.conns.borrow().values().cloned().collect();
        for c in conns {
            c.tick(now);
        }
        flushed
    }
    fn next_deadline(&self) -> Option<Instant> {
        Some(self.next.get())
    }
}

/// A connection's one-shot POLLIN and POLLOUT polls: armed or not.
#[derive(Default)]
pub(crate) struct Polls {
    /// POLLIN is armed.
    pub(crate) read: bool,
    /// POLLOUT is armed.
    pub(crate) write: bool,
}

impl Polls {
    /// Arms POLLOUT (`out`) or POLLIN on `fd` unless it is armed already; the
    /// completion goes to `me` with [`TAG_POLLOUT`] or [`TAG_POLLIN`].
    pub(crate) fn arm(&mut self, r: &Reactor, fd: RawFd, me: Rc<dyn UringDone>, out: bool) {
        let armed = if out { &mut self.write } else { &mut self.read };
        if *armed {
            return;
        }
        *armed = true;
        let mask = if out {
            libc::POLLOUT
        } else {
            libc::POLLIN | libc::POLLRDHUP
        };
        let e = opcode::PollAdd::new(types::Fd(fd), mask as u32).build();
        let tag = if out { TAG_POLLOUT } else { TAG_POLLIN };
        // SAFETY: a poll references no memory; the registration holds `me`, the
        // connection that owns the socket, so the fd outlives the poll.
        unsafe { r.uring_push(e, me, tag) };
    }

    /// A poll completed: marks it disarmed.
    pub(crate) fn done(&mut self, tag: u64) {
        if tag == TAG_POLLIN {
            self.read = false;
        } else {
            self.write = false;
        }
    }
}
