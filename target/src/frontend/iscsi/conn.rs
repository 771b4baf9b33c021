//! One iSCSI connection on its reactor: socket I/O, PDU dispatch, tasks.
//!
//! Reading: a one-shot io_uring poll for POLLIN wakes the connection; it reads
//! with nonblocking `read` into a fixed receive buffer sized for the largest PDU
//! it accepts, parses whole PDUs in place and handles them. Reading pauses (no poll
//! armed) only while too much output is queued, so memory per connection is
//! bounded.
//!
//! Buffers: a command that needs a pool buffer it cannot have yet (pool class
//! exhausted, the connection at its share of the class, or its socket not
//! draining) is *parked*: it is accepted (it counts in the CmdSN window), its
//! immediate and unsolicited data are kept aside (at most [`PARKED_DATA_MAX_BYTES`]
//! per connection; beyond that the command gets TASK SET FULL), and reading goes
//! on, so Data-Out, NOP-Out, task management and commands that need no or other
//! buffers keep flowing. Parked commands get buffers in arrival order. A
//! connection holds at most its fair share of each class (`BufPool::user_cap`).
//!
//! Send backpressure: while the socket accepts nothing (EAGAIN) the connection
//! gets no new buffers and MaxCmdSN stops advancing; a connection blocked on
//! send for longer than the frontend's send timeout (30 s by default) is dropped
//! and its buffers freed.
//!
//! Writing: PDU headers (and small data segments) are serialized into an output
//! buffer; read data goes out straight from the task's pool buffer, which the
//! output queue holds until its bytes are sent. Both are written with nonblocking
//! vectored `sendmsg` (one call for a batch of PDUs); on EAGAIN a POLLOUT poll
//! resumes the writing.
//!
//! Closing: `shutdown` wakes pending polls; their completions, and those of
//! in-flight bdev I/O, drop the last references and close the socket.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use io_uring::{opcode, types};

use super::login::{self, Login, LoginReq, SessionType};
use super::pdu::{self, field, op, Bhs, Digests, Parsed, BHS_LEN, RESERVED_TAG};
use super::portal::Listener;
use super::text::{self, Params};
use super::{Session, Shared, TargetRt};
use crate::bdev::{BdevIo, IoCallback, IoDone, IoStatus};
use crate::buf::{BufPool, BufWait, BufWaiter, PoolBuf, SIZE_CLASSES_BYTES};
use crate::frontend::scsi::cdb::{self, NexusState, Op, Response};
use crate::frontend::scsi::sense::{self, Sense};
use crate::frontend::scsi::task::{self, BlockIo, ScsiTask, Step};
use crate::frontend::scsi::LunRt;
use crate::reactor::{Poller, Reactor, UringDone};

/// Output queued beyond which the connection stops reading new requests.
const WBUF_HIGH_BYTES: usize = 4 << 20;
/// Most read() calls per readiness event.
const READS_PER_EVENT: usize = 16;
/// How often the keep-alive poller looks at connections.
const KEEPALIVE_TICK: Duration = Duration::from_secs(1);
/// Most connections (logged in or not) one reactor serves; more are closed at once.
pub(crate) const MAX_CONNS_PER_REACTOR: usize = 1024;
/// Longest a login may take before the connection is closed.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);

const TAG_POLLIN: u64 = 1;
const TAG_POLLOUT: u64 = 2;
/// Most iovecs per `sendmsg` (two per Data-In PDU sent from a pool buffer).
const MAX_IOV: usize = 128;
/// Most bytes of immediate and unsolicited data a connection keeps for commands
/// parked while waiting for a pool buffer; a command that would exceed it is
/// answered TASK SET FULL.
pub(crate) const PARKED_DATA_MAX_BYTES: usize = 4 << 20;
/// Number of pool size classes.
const CLASSES: usize = SIZE_CLASSES_BYTES.len();

/// Hasher for the small integer keys of per-connection maps (task tags, LUN
/// numbers): one multiply instead of SipHash on every command. The peer picks
/// these keys, but the maps are bounded (tasks by the queue depth, LUN state by
/// the target's LUNs), so colliding keys cost at most a short scan.
#[derive(Default, Clone, Copy)]
struct IntHasher(u64);

impl std::hash::Hasher for IntHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }
    fn write_u64(&mut self, v: u64) {
        // Fibonacci hashing; hashbrown takes its control bits from the top.
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type IntMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IntHasher>>;

/// A run of queued output bytes.
enum Seg {
    /// The next `len` unsent bytes of [`Out::bytes`].
    Inline(usize),
    /// `len` bytes at `ptr`, inside a pool buffer in [`Out::held`].
    Pool { ptr: *const u8, len: usize },
}

/// The output queue of a connection.
#[derive(Default)]
struct Out {
    /// Serialized headers and small data segments.
    bytes: Vec<u8>,
    /// Bytes of `bytes` already sent.
    pos: usize,
    /// What to send, in order (only the unsent remainder of the front one).
    segs: VecDeque<Seg>,
    /// Pool buffers with queued bytes, each with the stream position just past
    /// its last queued byte; given back once that position is sent.
    held: VecDeque<(u64, PoolBuf)>,
    /// Bytes ever queued and sent.
    queued: u64,
    sent: u64,
}

impl Out {
    fn pending(&self) -> usize {
        (self.queued - self.sent) as usize
    }

    /// Accounts for the bytes appended to `bytes` since it was `start` long.
    fn push_inline(&mut self, start: usize) {
        let n = self.bytes.len() - start;
        if n == 0 {
            return;
        }
        self.queued += n as u64;
        if let Some(Seg::Inline(len)) = self.segs.back_mut() {
            *len += n;
        } else {
            self.segs.push_back(Seg::Inline(n));
        }
    }

    /// Queues a whole PDU, copying its data.
    fn emit(&mut self, bhs: &Bhs, data: &[u8], dig: Digests) {
        let start = self.bytes.len();
        pdu::encode(&mut self.bytes, bhs, data, dig);
        self.push_inline(start);
    }

    /// Queues a PDU whose data segment is sent from where it lies, without a copy.
    ///
    /// # Safety
    /// `data` must lie in a pool buffer that the caller passes to [`Out::hold`]
    /// before anything else touches this queue (so it stays allocated, and is not
    /// written, until its bytes are sent or the queue is discarded).
    unsafe fn emit_ref(&mut self, bhs: &Bhs, data: &[u8], dig: Digests) {
        let start = self.bytes.len();
        pdu::encode_head(&mut self.bytes, bhs, data.len(), dig);
        self.push_inline(start);
        if !data.is_empty() {
            self.queued += data.len() as u64;
            self.segs.push_back(Seg::Pool {
                ptr: data.as_ptr(),
                len: data.len(),
            });
        }
        let start = self.bytes.len();
        pdu::encode_tail(&mut self.bytes, data, dig);
        self.push_inline(start);
    }

    /// Keeps `buf` until the bytes queued so far are sent.
    fn hold(&mut self, buf: PoolBuf) {
        self.held.push_back((self.queued, buf));
    }

    /// Fills `iov` with the front of the queue; returns how many entries it used.
    fn iovecs(&self, iov: &mut [libc::iovec; MAX_IOV]) -> usize {
        let mut n = 0;
        let mut pos = self.pos;
        for seg in &self.segs {
            if n == MAX_IOV {
                break;
            }
            let (base, len) = match *seg {
                Seg::Inline(len) => {
                    let p = self.bytes[pos..pos + len].as_ptr();
                    pos += len;
                    (p, len)
                }
                Seg::Pool { ptr, len } => (ptr, len),
            };
            iov[n] = libc::iovec {
                iov_base: base as *mut libc::c_void,
                iov_len: len,
            };
            n += 1;
        }
        n
    }

    /// Marks `n` bytes from the front as sent; returns the pool buffers that are
    /// no longer needed.
    fn advance(&mut self, mut n: usize, done: &mut Vec<PoolBuf>) {
        self.sent += n as u64;
        while n > 0 {
            let Some(front) = self.segs.front_mut() else {
                break;
            };
            let left = match front {
                Seg::Inline(len) => {
                    let k = n.min(*len);
                    *len -= k;
                    self.pos += k;
                    n -= k;
                    *len
                }
                Seg::Pool { ptr, len } => {
                    let k = n.min(*len);
                    *len -= k;
                    // Stays inside (or one past the end of) the same buffer.
                    *ptr = ptr.wrapping_add(k);
                    n -= k;
                    *len
                }
            };
            if left == 0 {
                self.segs.pop_front();
            }
        }
        while self.held.front().is_some_and(|(end, _)| *end <= self.sent) {
            if let Some((_, b)) = self.held.pop_front() {
                done.push(b);
            }
        }
        if self.segs.is_empty() {
            self.bytes.clear();
            self.pos = 0;
            if self.bytes.capacity() > 2 * WBUF_HIGH_BYTES {
                self.bytes.shrink_to(64 << 10);
            }
        } else if self.pos > (1 << 20) {
            self.bytes.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Drops everything queued; returns the held pool buffers.
    fn discard(&mut self, done: &mut Vec<PoolBuf>) {
        self.segs.clear();
        self.bytes.clear();
        self.pos = 0;
        self.sent = self.queued;
        done.extend(self.held.drain(..).map(|(_, b)| b));
    }
}

/// The iSCSI connections and listeners of one reactor.
#[derive(Default)]
pub(crate) struct Registry {
    conns: RefCell<HashMap<(u64, u64), Rc<Conn>>>,
    pub(crate) listeners: RefCell<Vec<Rc<Listener>>>,
    next_id: Cell<u64>,
    poller: Cell<bool>,
    /// Connections with output produced by bdev completions, written once per
    /// reactor iteration (one send for a batch of completions).
    dirty: RefCell<Vec<Rc<Conn>>>,
}

/// Runs every reactor iteration: flushes the connections with new output, and
/// once a second looks at every connection (login timeout, NOP-In keep-alive).
struct KeepAlive {
    reactor: Weak<Reactor>,
    /// This reactor's registry (held directly: this runs every loop iteration).
    reg: Rc<Registry>,
    next: Cell<Instant>,
    /// The dirty list being flushed, swapped with the registry's so neither
    /// list is reallocated per iteration.
    batch: RefCell<Vec<Rc<Conn>>>,
}

impl Poller for KeepAlive {
    fn poll(&self, now: Instant) -> usize {
        let mut flushed = 0;
        if !self.reg.dirty.borrow().is_empty() {
            let mut batch = self.batch.take();
            std::mem::swap(&mut batch, &mut *self.reg.dirty.borrow_mut());
            flushed = batch.len();
            for c in batch.drain(..) {
                c.dirty.set(false);
                c.flush();
            }
            *self.batch.borrow_mut() = batch;
        }
        if now < self.next.get() {
            return flushed;
        }
        let Some(r) = self.reactor.upgrade() else {
            return flushed;
        };
        self.next.set(now + KEEPALIVE_TICK);
        let conns: Vec<Rc<Conn>> = r
            .local::<Registry>()
            .conns
            .borrow()
            .values()
            .cloned()
            .collect();
        for c in conns {
            c.tick(now);
        }
        flushed
    }
    fn next_deadline(&self) -> Option<Instant> {
        Some(self.next.get())
    }
}

/// Creates a connection for an accepted socket (runs on the chosen reactor).
pub(crate) fn spawn(r: &Rc<Reactor>, shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    if shared.stopping.load(Ordering::Acquire) {
        return;
    }
    let reg = r.local::<Registry>();
    if reg.conns.borrow().len() >= MAX_CONNS_PER_REACTOR {
        log::warn!(
            "iscsi: reactor {} already serves {MAX_CONNS_PER_REACTOR} connections; closing the one from {peer}",
            r.id()
        );
        return;
    }
    if !reg.poller.replace(true) {
        r.add_poller(Rc::new(KeepAlive {
            reactor: Rc::downgrade(r),
            reg: Rc::clone(&reg),
            next: Cell::new(Instant::now() + KEEPALIVE_TICK),
            batch: RefCell::new(Vec::new()),
        }));
    }
    let id = reg.next_id.get() + 1;
    reg.next_id.set(id);
    let limits = shared.limits();
    let rcap = pdu::max_wire_len(limits.target_mrdsl as usize);
    let local = stream.local_addr().ok();
    let c = Rc::new_cyclic(|me| Conn {
        id,
        fid: shared.id,
        stream,
        peer,
        local,
        reactor: Rc::clone(r),
        shared: Arc::clone(&shared),
        me: me.clone(),
        dirty: Cell::new(false),
        st: RefCell::new(St {
            phase: Phase::Login(Box::new(Login::new(limits.clone()))),
            rbuf: vec![0u8; rcap],
            rlen: 0,
            out: Out {
                bytes: Vec::with_capacity(64 << 10),
                ..Out::default()
            },
            spare: Vec::new(),
            dig: Digests::default(),
            params: Params::defaults(&limits),
            statsn: 0,
            exp_cmdsn: 0,
            isid: [0; 6],
            tsih: 0,
            tasks: slab::Slab::with_capacity(shared.queue_depth as usize),
            itts: IntMap::default(),
            session: None,
            nexus: String::new(),
            target: None,
            target_gen: 0,
            nexus_state: IntMap::default(),
            poll_in: false,
            poll_out: false,
            parked: VecDeque::new(),
            parked_n: [0; CLASSES],
            parked_bytes: 0,
            buf_wait: [false; CLASSES],
            held: [0; CLASSES],
            active: [false; CLASSES],
            need_serve: false,
            send_blocked_since: None,
            send_blocked_total: Duration::ZERO,
            max_adv: 0,
            window_stale: false,
            last_rx: Instant::now(),
            started: Instant::now(),
            nop_sent: None,
            next_ttt: 1,
            close_after_flush: false,
            closed: false,
        }),
    });
    log::debug!("iscsi: connection {id} from {peer} on reactor {}", r.id());
    reg.conns
        .borrow_mut()
        .insert((shared.id, id), Rc::clone(&c));
    c.on_readable();
}

/// Closes one connection (management API: target removed, initiator denied; a
/// session reinstated from another reactor); `why` goes into the log line.
pub(crate) fn close_conn(r: &Rc<Reactor>, fid: u64, id: u64, why: &str) {
    let c = r
        .local::<Registry>()
        .conns
        .borrow()
        .get(&(fid, id))
        .cloned();
    if let Some(c) = c {
        c.close(why);
    }
}

/// Closes the listener and every connection of frontend `fid` on this reactor.
pub(crate) fn close_frontend(r: &Rc<Reactor>, fid: u64) {
    let reg = r.local::<Registry>();
    let ls: Vec<Rc<Listener>> = reg
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
    let cs: Vec<Rc<Conn>> = reg
        .conns
        .borrow()
        .iter()
        .filter(|((f, _), _)| *f == fid)
        .map(|(_, c)| Rc::clone(c))
        .collect();
    for c in cs {
        c.close("frontend stopped");
    }
}

enum Phase {
    Login(Box<Login>),
    Full(SessionType),
}

struct R2t {
    ttt: u32,
    offset: u32,
    len: u32,
    got: u32,
    datasn: u32,
}

/// An iSCSI task: a SCSI task plus its transfer state on this connection.
struct Task {
    itt: u32,
    /// The SCSI command it carries (op, LUN, block work, outcome).
    scsi: ScsiTask,
    lun_field: u64,
    edtl: u32,
    /// Data-out as it arrives, then data-in for reads.
    buf: Option<PoolBuf>,
    out_len: u32,
    /// Data-out length the CDB asked for (for the residual).
    spdtl: u32,
    /// Highest data-out offset the initiator may send (its EDTL for writes).
    recv_limit: u32,
    received: u32,
    unsol_end: u32,
    unsol_datasn: u32,
    next_r2t: u32,
    r2t: Option<R2t>,
    r2tsn: u32,
    aborted: bool,
    /// Task was removed from `itts` (answered or aborted) while I/O is in flight.
    orphan: bool,
    /// Waiting for a pool buffer (in `St::parked`); `early` holds its data so far.
    parked: bool,
    /// Pool buffer bytes the task needs.
    need_buf: u32,
    /// Data received while parked (immediate and unsolicited), from offset 0.
    early: Vec<u8>,
    /// Bytes of `St::parked_bytes` reserved for `early`.
    early_reserved: u32,
}

struct St {
    phase: Phase,
    rbuf: Vec<u8>,
    rlen: usize,
    out: Out,
    /// Scratch list for pool buffers the output queue is done with.
    spare: Vec<PoolBuf>,
    dig: Digests,
    params: Params,
    statsn: u32,
    exp_cmdsn: u32,
    isid: [u8; 6],
    tsih: u16,
    tasks: slab::Slab<Task>,
    itts: IntMap<u32, usize>,
    session: Option<Arc<Session>>,
    nexus: String,
    target: Option<Arc<TargetRt>>,
    target_gen: u64,
    /// Per-LUN state of this I_T nexus, for LUNs that exist.
    nexus_state: IntMap<u64, NexusState>,
    poll_in: bool,
    poll_out: bool,
    /// Tasks waiting for a pool buffer, in arrival order.
    parked: VecDeque<usize>,
    /// Parked tasks per size class.
    parked_n: [u32; CLASSES],
    /// Bytes reserved for the data of parked tasks.
    parked_bytes: usize,
    /// Registered as a waiter with the reactor's buffer cache, per class.
    buf_wait: [bool; CLASSES],
    /// Pool chunks held (tasks and queued Data-In), per class.
    held: [u32; CLASSES],
    /// Counted as a user of the class by the pool (`BufPool::set_user_active`).
    active: [bool; CLASSES],
    /// A buffer was given back: parked tasks may proceed.
    need_serve: bool,
    /// Since when the socket accepts no output (EAGAIN, nothing sent since).
    send_blocked_since: Option<Instant>,
    /// Earlier stretches blocked on send.
    send_blocked_total: Duration,
    /// MaxCmdSN last advertised (frozen while blocked on send).
    max_adv: u32,
    /// A PDU went out with a frozen MaxCmdSN: announce the window once unblocked.
    window_stale: bool,
    last_rx: Instant,
    started: Instant,
    nop_sent: Option<(u32, Instant)>,
    next_ttt: u32,
    close_after_flush: bool,
    closed: bool,
}

pub(crate) struct Conn {
    id: u64,
    fid: u64,
    stream: TcpStream,
    peer: SocketAddr,
    local: Option<SocketAddr>,
    reactor: Rc<Reactor>,
    shared: Arc<Shared>,
    me: Weak<Conn>,
    /// Queued in the registry's dirty list.
    dirty: Cell<bool>,
    st: RefCell<St>,
}

/// What handling a PDU did with it.
enum Handled {
    /// Consumed.
    Done,
    /// The connection must close.
    Close(String),
}

impl St {
    fn pending_out(&self) -> usize {
        self.out.pending()
    }

    /// MaxCmdSN to advertise: ExpCmdSN + free slots - 1, except that it does not
    /// advance while the connection is blocked on send (a connection whose socket
    /// does not drain gets no more commands).
    fn max_cmdsn(&mut self, qd: u32) -> u32 {
        let active = self.itts.len() as u32;
        let room = qd.saturating_sub(active);
        let max = self.exp_cmdsn.wrapping_add(room).wrapping_sub(1);
        if self.send_blocked_since.is_some() {
            if max != self.max_adv {
                self.window_stale = true;
            }
            return self.max_adv;
        }
        self.max_adv = max;
        max
    }

    fn blocked_on_send(&self) -> bool {
        self.send_blocked_since.is_some()
    }

    /// Total time blocked on send; reads the clock only while blocked now.
    fn send_blocked_ms(&self) -> u64 {
        let cur = self
            .send_blocked_since
            .map_or(Duration::ZERO, |t| t.elapsed());
        (self.send_blocked_total + cur).as_millis() as u64
    }

    /// A NOP-In carrying the current StatSN and window: a keep-alive (`ttt` wants an
    /// answer) or, with the reserved tag, an announcement that wants none.
    fn emit_nop_in(&mut self, ttt: u32, queue_depth: u32) {
        let mut b = Bhs::new(op::NOP_IN, 0x80);
        let (sn, exp) = (self.statsn, self.exp_cmdsn);
        let max = self.max_cmdsn(queue_depth);
        b.u32_at(16, RESERVED_TAG)
            .u32_at(20, ttt)
            .u32_at(24, sn)
            .u32_at(28, exp)
            .u32_at(32, max);
        self.emit(&b, &[]);
    }

    fn take_statsn(&mut self) -> u32 {
        let s = self.statsn;
        self.statsn = self.statsn.wrapping_add(1);
        s
    }

    fn emit(&mut self, bhs: &Bhs, data: &[u8]) {
        self.out.emit(bhs, data, self.dig);
    }

    fn alloc_ttt(&mut self) -> u32 {
        let t = self.next_ttt;
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        t
    }
}

impl Conn {
    fn rc(&self) -> Option<Rc<Conn>> {
        self.me.upgrade()
    }

    fn fd(&self) -> i32 {
        self.stream.as_raw_fd()
    }

    fn arm(&self, st: &mut St, out: bool) {
        if st.closed {
            return;
        }
        let armed = if out {
            &mut st.poll_out
        } else {
            &mut st.poll_in
        };
        if *armed {
            return;
        }
        let Some(me) = self.rc() else { return };
        *armed = true;
        let mask = if out {
            libc::POLLOUT
        } else {
            libc::POLLIN | libc::POLLRDHUP
        };
        let e = opcode::PollAdd::new(types::Fd(self.fd()), mask as u32).build();
        // SAFETY: a poll references no memory; the registration holds an Rc to
        // this connection, which owns the socket, so the fd outlives the poll.
        unsafe {
            self.reactor
                .uring_push(e, me, if out { TAG_POLLOUT } else { TAG_POLLIN })
        };
    }

    /// Closes the connection: no more reading or writing; tasks without I/O in
    /// flight give their buffers back now, the others when their I/O completes.
    pub(crate) fn close(&self, why: &str) {
        let mut st = self.st.borrow_mut();
        if st.closed {
            return;
        }
        st.closed = true;
        log::info!(
            "iscsi: connection {} from {} closed: {why}",
            self.id,
            self.peer
        );
        // SAFETY: shutdown on a socket we own; it wakes pending polls.
        unsafe { libc::shutdown(self.fd(), libc::SHUT_RDWR) };
        st.parked.clear();
        st.parked_n = [0; CLASSES];
        st.parked_bytes = 0;
        let keys: Vec<usize> = st.tasks.iter().map(|(k, _)| k).collect();
        for k in keys {
            if st.tasks[k].scsi.inflight() == 0 {
                let t = st.tasks.remove(k);
                self.release(&mut st, t);
            } else {
                st.tasks[k].aborted = true;
            }
        }
        st.itts.clear();
        // A closed connection may stay queued as a buffer waiter until a chunk of
        // that class frees up: it keeps no receive buffer meanwhile.
        st.rbuf = Vec::new();
        let mut done = std::mem::take(&mut st.spare);
        st.out.discard(&mut done);
        for b in done {
            self.put_buf(&mut st, b);
        }
        for c in 0..CLASSES {
            self.sync_active(&mut st, c);
        }
        self.publish(&st);
        if let Some(s) = st.session.take() {
            self.shared.sessions().remove(&s.tsih);
            if let Some(t) = &st.target {
                for l in t.luns.values() {
                    l.nexus_lost(&st.nexus);
                }
            }
        }
        drop(st);
        self.reactor
            .local::<Registry>()
            .conns
            .borrow_mut()
            .remove(&(self.fid, self.id));
    }

    fn release(&self, st: &mut St, mut t: Task) {
        if let Some(b) = t.buf.take() {
            self.put_buf(st, b);
        }
    }

    /// The pool behind the reactor's cache.
    fn pool(&self) -> &Arc<BufPool> {
        self.reactor.bufs().pool()
    }

    /// Gives a pool buffer back and accounts for it.
    fn put_buf(&self, st: &mut St, b: PoolBuf) {
        let c = b.class();
        st.held[c] = st.held[c].saturating_sub(1);
        self.reactor.bufs().put(b);
        st.need_serve = true;
        self.sync_active(st, c);
    }

    /// Tells the pool whether this connection uses class `c` (fair shares).
    fn sync_active(&self, st: &mut St, c: usize) {
        // A closed connection still uses a class while it holds its buffers.
        let now = st.held[c] > 0 || (!st.closed && st.parked_n[c] > 0);
        if now != st.active[c] {
            st.active[c] = now;
            self.pool().set_user_active(c, now);
        }
    }

    /// Publishes the buffer counters of the session.
    fn publish(&self, st: &St) {
        if let Some(s) = &st.session {
            let held: u32 = st.held.iter().sum();
            s.stats
                .buffers_held
                .store(u64::from(held), Ordering::Relaxed);
            s.stats
                .cmds_waiting_buf
                .store(st.parked.len() as u64, Ordering::Relaxed);
            s.stats
                .send_blocked_ms
                .store(st.send_blocked_ms(), Ordering::Relaxed);
        }
    }

    /// A buffer of `len` bytes for a task, within this connection's share and
    /// only while its socket drains; None when the task must wait. With
    /// `queue`, the connection registers with the reactor's cache to be handed a
    /// chunk when the pool is exhausted.
    fn alloc_buf(&self, st: &mut St, len: usize, queue: bool) -> Option<PoolBuf> {
        let c = BufPool::class_for(len)?;
        if st.held[c] as usize >= self.pool().user_cap(c) || st.blocked_on_send() {
            // Resumes when the connection gives a buffer back or its socket drains.
            return None;
        }
        if st.buf_wait[c] {
            return None;
        }
        let b = if queue {
            let me = self.rc()?;
            let w: Rc<dyn BufWaiter> = me;
            match self
                .reactor
                .bufs()
                .get_or_wait(SIZE_CLASSES_BYTES[c], &w, c as u64)
            {
                Ok(BufWait::Ready(b)) => b,
                Ok(BufWait::Queued) => {
                    st.buf_wait[c] = true;
                    return None;
                }
                Ok(BufWait::Full) | Err(_) => return None,
            }
        } else {
            self.reactor.bufs().try_get(SIZE_CLASSES_BYTES[c])?
        };
        st.held[c] += 1;
        self.sync_active(st, c);
        let mut b = b;
        b.set_len(len);
        Some(b)
    }

    /// Gives buffers to parked tasks, oldest first per class, while they can have
    /// them; registers as a waiter where the pool is exhausted.
    fn serve_parked(&self, st: &mut St) {
        st.need_serve = false;
        if st.closed || st.parked.is_empty() {
            return;
        }
        for c in 0..CLASSES {
            // Bounded: each round unparks a task or stops.
            while st.parked_n[c] > 0 {
                let Some(key) = st
                    .parked
                    .iter()
                    .copied()
                    .find(|k| BufPool::class_for(st.tasks[*k].need_buf as usize) == Some(c))
                else {
                    break;
                };
                let need = st.tasks[key].need_buf as usize;
                match self.alloc_buf(st, need, true) {
                    Some(b) => self.unpark(st, key, b),
                    None => break,
                }
            }
        }
    }

    /// A parked task got its buffer: take its early data and go on.
    fn unpark(&self, st: &mut St, key: usize, mut b: PoolBuf) {
        self.forget_parked(st, key);
        let t = &mut st.tasks[key];
        b.set_len(t.need_buf as usize);
        let n = t.early.len().min(b.len());
        b.bytes_mut()[..n].copy_from_slice(&t.early[..n]);
        t.early = Vec::new();
        t.buf = Some(b);
        self.start_task(st, key);
    }

    /// Removes a parked task from the parked bookkeeping (not from `tasks`).
    fn forget_parked(&self, st: &mut St, key: usize) {
        let Some(t) = st.tasks.get_mut(key) else {
            return;
        };
        if !t.parked {
            return;
        }
        t.parked = false;
        st.parked_bytes = st.parked_bytes.saturating_sub(t.early_reserved as usize);
        t.early_reserved = 0;
        if let Some(c) = BufPool::class_for(t.need_buf as usize) {
            st.parked_n[c] = st.parked_n[c].saturating_sub(1);
            st.parked.retain(|k| *k != key);
            self.sync_active(st, c);
        }
    }

    /// Runs at the end of every entry point: parked tasks whose buffers came
    /// back proceed, counters are published.
    fn after(&self, st: &mut St) {
        if st.need_serve {
            self.serve_parked(st);
        }
        self.publish(st);
    }

    fn tick(&self, now: Instant) {
        let mut why = None;
        {
            let mut st = self.st.borrow_mut();
            if st.closed {
                return;
            }
            match st.phase {
                Phase::Login(_) => {
                    if now.duration_since(st.started) > LOGIN_TIMEOUT {
                        why = Some("login timed out".to_string());
                    }
                }
                Phase::Full(_) => {
                    let blocked = st
                        .send_blocked_since
                        .map(|t| now.saturating_duration_since(t));
                    if blocked.is_some_and(|b| b > self.shared.send_timeout) {
                        let (ini, tgt) = st
                            .session
                            .as_ref()
                            .map(|s| (s.initiator.clone(), s.target.clone()))
                            .unwrap_or_default();
                        why = Some(format!(
                            "initiator {ini} of target {tgt} read nothing for {} s (blocked on send); dropped, {} buffers freed",
                            self.shared.send_timeout.as_secs(),
                            st.held.iter().sum::<u32>()
                        ));
                    } else if let Some((_, sent)) = st.nop_sent {
                        if now.duration_since(sent) > self.shared.nop_timeout {
                            why = Some("no answer to NOP-In keep-alive".to_string());
                        }
                    } else if let Some(iv) = self.shared.nop_interval {
                        if now.duration_since(st.last_rx) > iv {
                            let ttt = st.alloc_ttt();
                            st.nop_sent = Some((ttt, now));
                            st.emit_nop_in(ttt, self.shared.queue_depth);
                        }
                    }
                }
            }
        }
        match why {
            Some(w) => self.close(&w),
            // flush() ends with after() (parked tasks, counters).
            None => self.flush(),
        }
    }

    fn on_readable(&self) {
        let mut why: Option<String> = None;
        {
            let mut st = self.st.borrow_mut();
            if st.closed {
                return;
            }
            for _ in 0..READS_PER_EVENT {
                if st.pending_out() > WBUF_HIGH_BYTES || st.close_after_flush {
                    break;
                }
                let cap = st.rbuf.len();
                let rlen = st.rlen;
                if rlen == cap {
                    // A full buffer always holds a complete PDU (it is sized for the
                    // largest one accepted), so this only happens when parsing stalled.
                    break;
                }
                // SAFETY: reads into the unused tail of a buffer we own exclusively.
                let n = unsafe {
                    libc::read(
                        self.fd(),
                        st.rbuf.as_mut_ptr().add(rlen) as *mut libc::c_void,
                        cap - rlen,
                    )
                };
                if n > 0 {
                    st.rlen += n as usize;
                    st.last_rx = Instant::now();
                    st.nop_sent = None;
                    if let Err(w) = self.process(&mut st) {
                        why = Some(w);
                        break;
                    }
                    if (n as usize) < cap - rlen {
                        // A short read drained the socket: wait for more with the
                        // poll armed below instead of a read that would say EAGAIN.
                        break;
                    }
                    continue;
                }
                if n == 0 {
                    why = Some("peer closed the connection".into());
                    break;
                }
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => {
                        self.arm(&mut st, false);
                        break;
                    }
                    Some(libc::EINTR) => continue,
                    _ => {
                        why = Some(format!("read failed: {e}"));
                        break;
                    }
                }
            }
            if why.is_none() && !st.poll_in && st.pending_out() <= WBUF_HIGH_BYTES {
                // The batch ended with data possibly left in the socket: come back.
                self.arm(&mut st, false);
            }
            if why.is_none() {
                self.after(&mut st);
            }
        }
        match why {
            Some(w) => self.close(&w),
            None => self.flush(),
        }
    }

    /// Parses and handles every complete PDU in the receive buffer.
    fn process(&self, st: &mut St) -> Result<(), String> {
        let rbuf = std::mem::take(&mut st.rbuf);
        let res = self.process_buf(st, &rbuf);
        st.rbuf = rbuf;
        let consumed = res?;
        if consumed > 0 {
            st.rbuf.copy_within(consumed..st.rlen, 0);
            st.rlen -= consumed;
        }
        Ok(())
    }

    fn process_buf(&self, st: &mut St, rbuf: &[u8]) -> Result<usize, String> {
        let mut pos = 0;
        let max_data = match st.phase {
            Phase::Login(_) => 8192usize.max(st.params.target_mrdsl as usize),
            Phase::Full(_) => st.params.target_mrdsl as usize,
        };
        while pos < st.rlen && !st.closed && !st.close_after_flush {
            let dig = st.dig;
            let buf = &rbuf[pos..st.rlen];
            match pdu::parse(buf, dig, max_data) {
                Ok(Parsed::Need(_)) => break,
                Ok(Parsed::Pdu(p)) => match self.handle(st, &p) {
                    Handled::Done => pos += p.wire_len,
                    Handled::Close(w) => return Err(w),
                },
                Err(pdu::PduError::DataDigest { got, want }) => {
                    let bhs: &[u8; BHS_LEN] = buf[..BHS_LEN].try_into().expect("48 bytes");
                    let len = pdu::wire_len(bhs, dig, max_data).map_err(|e| e.to_string())?;
                    log::warn!(
                        "iscsi: connection {}: data digest error (got {got:#x}, want {want:#x}) on opcode {:#x}; rejected",
                        self.id,
                        pdu::opcode(bhs)
                    );
                    if pdu::opcode(bhs) == op::DATA_OUT {
                        return Err("data digest error on Data-Out".into());
                    }
                    self.reject(st, bhs, pdu::reject::DATA_DIGEST);
                    if pdu::opcode(bhs) == op::SCSI_CMD
                        && !pdu::immediate(bhs)
                        && self.cmdsn_in_window(st, bhs)
                    {
                        // The command is dropped; its CmdSN is consumed so the window moves.
                        Self::consume_cmdsn(st, bhs);
                    }
                    pos += len;
                }
                Err(e) => return Err(format!("bad PDU: {e}")),
            }
        }
        Ok(pos)
    }

    fn reject(&self, st: &mut St, bhs: &[u8; BHS_LEN], reason: u8) {
        let mut b = Bhs::new(op::REJECT, 0x80);
        let sn = st.take_statsn();
        let max = st.max_cmdsn(self.shared.queue_depth);
        b.byte(2, reason)
            .u32_at(16, RESERVED_TAG)
            .u32_at(24, sn)
            .u32_at(28, st.exp_cmdsn)
            .u32_at(32, max);
        st.emit(&b, bhs);
    }

    fn handle(&self, st: &mut St, p: &pdu::PduView) -> Handled {
        let opc = pdu::opcode(p.bhs);
        if let Phase::Login(_) = st.phase {
            if opc != op::LOGIN_REQ {
                return Handled::Close(format!("opcode {opc:#x} before login completed"));
            }
            return self.handle_login(st, p);
        }
        let discovery = matches!(st.phase, Phase::Full(SessionType::Discovery));
        match opc {
            op::NOP_OUT => self.handle_nop(st, p),
            op::SCSI_CMD if !discovery => self.handle_cmd(st, p),
            op::DATA_OUT if !discovery => self.handle_data_out(st, p),
            op::TMF_REQ if !discovery => self.handle_tmf(st, p),
            op::TEXT_REQ => self.handle_text(st, p),
            op::LOGOUT_REQ => self.handle_logout(st, p),
            op::LOGIN_REQ => Handled::Close("login request in full feature phase".into()),
            _ => {
                log::warn!(
                    "iscsi: connection {}: opcode {opc:#x} not supported; rejected",
                    self.id
                );
                self.reject(st, p.bhs, pdu::reject::NOT_SUPPORTED);
                Handled::Done
            }
        }
    }

    /// The CmdSN window, checked here only (RFC 7143 §3.2.2.1): an immediate
    /// request always passes; any other must carry CmdSN = ExpCmdSN (this target
    /// runs one connection per session, so requests arrive in order), else it is
    /// ignored with a log line.
    fn cmdsn_in_window(&self, st: &St, bhs: &[u8; BHS_LEN]) -> bool {
        let cmdsn = field::cmdsn(bhs);
        if pdu::immediate(bhs) || cmdsn == st.exp_cmdsn {
            return true;
        }
        log::warn!(
            "iscsi: connection {}: opcode {:#x} with CmdSN {cmdsn} outside the window (expected {}); ignored",
            self.id,
            pdu::opcode(bhs),
            st.exp_cmdsn
        );
        false
    }

    /// Moves the window past a request that [`Conn::cmdsn_in_window`] let in.
    fn consume_cmdsn(st: &mut St, bhs: &[u8; BHS_LEN]) {
        if !pdu::immediate(bhs) {
            st.exp_cmdsn = st.exp_cmdsn.wrapping_add(1);
        }
    }

    /// Checks the CmdSN of a request and advances the window; false when the
    /// request must be ignored.
    fn take_cmdsn(&self, st: &mut St, bhs: &[u8; BHS_LEN]) -> bool {
        if !self.cmdsn_in_window(st, bhs) {
            return false;
        }
        Self::consume_cmdsn(st, bhs);
        true
    }

    fn handle_login(&self, st: &mut St, p: &pdu::PduView) -> Handled {
        let b = p.bhs;
        let req = LoginReq {
            flags: b[1],
            version_max: b[2],
            version_min: b[3],
            tsih: pdu::be16(b, 14),
            data: p.data,
        };
        st.isid.copy_from_slice(&b[8..14]);
        let cmdsn = field::cmdsn(b);
        if st.tsih == 0 && st.statsn == 0 {
            st.statsn = field::exp_statsn(b);
        }
        st.exp_cmdsn = cmdsn;
        let Phase::Login(lg) = &mut st.phase else {
            return Handled::Close("login state lost".into());
        };
        let mut rng = |buf: &mut [u8]| rand::Rng::fill(&mut rand::thread_rng(), buf);
        let reply = lg.step(&req, &*self.shared, &mut rng);
        let mut status = reply.status;
        let mut tsih = 0u16;
        let mut session_type = lg.session_type;
        let mut params = lg.params.clone();
        let initiator = lg.initiator.clone();
        let target_name = lg.target.clone();
        if reply.full_feature && status == 0 {
            session_type = lg.session_type;
            params = lg.params.clone();
            if self.shared.sessions().len() >= super::MAX_SESSIONS {
                status = login::status::TOO_MANY_CONNECTIONS;
            } else {
                tsih = self.shared.alloc_tsih();
            }
        }
        let mut bhs = Bhs::new(
            op::LOGIN_RESP,
            if status == 0 {
                reply.flags
            } else {
                reply.flags & 0x0c
            },
        );
        bhs.0[8..14].copy_from_slice(&b[8..14]);
        pdu::put16(&mut bhs.0, 14, tsih);
        let sn = st.take_statsn();
        let max_cmdsn = cmdsn.wrapping_add(self.shared.queue_depth - 1);
        bhs.u32_at(16, field::itt(b))
            .u32_at(24, sn)
            .u32_at(28, cmdsn)
            .u32_at(32, max_cmdsn)
            .byte(36, (status >> 8) as u8)
            .byte(37, status as u8);
        let data = if reply.data.len() > 8192 {
            &reply.data[..8192]
        } else {
            &reply.data[..]
        };
        st.emit(&bhs, data);
        st.max_adv = max_cmdsn;
        if status != 0 {
            log::warn!(
                "iscsi: connection {} from {}: login of {initiator:?} to {target_name:?} failed with status {status:#06x}",
                self.id,
                self.peer
            );
            st.close_after_flush = true;
            return Handled::Done;
        }
        if !reply.full_feature {
            return Handled::Done;
        }
        // Full feature phase: digests apply from the next PDU.
        st.dig = Digests {
            header: params.header_digest,
            data: params.data_digest,
        };
        st.params = params;
        st.tsih = tsih;
        st.phase = Phase::Full(session_type);
        let isid_hex: String = st.isid.iter().map(|x| format!("{x:02x}")).collect();
        st.nexus = format!("{initiator},i,0x{isid_hex}");
        if session_type == SessionType::Normal {
            st.target = self.shared.target(&target_name);
            st.target_gen = self.shared.generation.load(Ordering::Acquire);
            self.reinstate(&initiator, &isid_hex, &target_name);
        }
        let s = Arc::new(Session {
            tsih,
            initiator: initiator.clone(),
            isid: isid_hex,
            target: target_name.clone(),
            reactor: self.reactor.id(),
            peer: self.peer.to_string(),
            conn_id: self.id,
            stats: Default::default(),
        });
        self.shared.sessions().insert(tsih, Arc::clone(&s));
        st.session = Some(s);
        log::info!(
            "iscsi: {initiator} logged in to {} (tsih {tsih}, reactor {}, {:?}, digests {:?})",
            if target_name.is_empty() {
                "discovery"
            } else {
                &target_name
            },
            self.reactor.id(),
            self.peer,
            st.dig
        );
        Handled::Done
    }

    /// Session reinstatement: an older session of the same initiator port and
    /// target is closed (RFC 7143 §6.3.5).
    fn reinstate(&self, initiator: &str, isid: &str, target: &str) {
        let old: Vec<(usize, u64)> = self
            .shared
            .sessions()
            .values()
            .filter(|s| s.initiator == initiator && s.isid == isid && s.target == target)
            .map(|s| (s.reactor, s.conn_id))
            .collect();
        let fid = self.fid;
        let why = format!(
            "session of {initiator} (ISID 0x{isid}) to {target} reinstated by a new login on connection {}",
            self.id
        );
        for (reactor, conn_id) in old {
            if reactor == self.reactor.id() {
                let c = self
                    .reactor
                    .local::<Registry>()
                    .conns
                    .borrow()
                    .get(&(fid, conn_id))
                    .cloned();
                if let Some(c) = c {
                    if c.id != self.id {
                        c.close(&why);
                    }
                }
            } else if let Some(h) = self.reactor.peers().get(reactor) {
                let why = why.clone();
                let msg: crate::reactor::Msg = Box::new(move |r| close_conn(r, fid, conn_id, &why));
                if h.try_send(msg).is_err() {
                    log::warn!(
                        "iscsi: could not reach reactor {reactor} to close the older session of {initiator} (ISID 0x{isid}) to {target} on reinstatement"
                    );
                }
            }
        }
    }

    fn handle_nop(&self, st: &mut St, p: &pdu::PduView) -> Handled {
        let b = p.bhs;
        if !self.take_cmdsn(st, b) {
            return Handled::Done;
        }
        let itt = field::itt(b);
        if itt == RESERVED_TAG {
            // An answer to our NOP-In, or a ping that wants no answer.
            if field::w20(b) != RESERVED_TAG {
                st.nop_sent = None;
            }
            return Handled::Done;
        }
        let n = p.data.len().min(st.params.initiator_mrdsl as usize);
        let mut r = Bhs::new(op::NOP_IN, 0x80);
        let sn = st.take_statsn();
        let max = st.max_cmdsn(self.shared.queue_depth);
        r.u64_at(8, field::lun(b))
            .u32_at(16, itt)
            .u32_at(20, RESERVED_TAG)
            .u32_at(24, sn)
            .u32_at(28, st.exp_cmdsn)
            .u32_at(32, max);
        st.emit(&r, &p.data[..n]);
        Handled::Done
    }

    fn handle_text(&self, st: &mut St, p: &pdu::PduView) -> Handled {
        let b = p.bhs;
        if !self.take_cmdsn(st, b) {
            return Handled::Done;
        }
        let pairs = match text::parse(p.data) {
            Ok(v) => v,
            Err(e) => {
                log::warn!(
                    "iscsi: connection {}: bad text request: {e}; rejected",
                    self.id
                );
                self.reject(st, b, pdu::reject::PROTOCOL);
                return Handled::Done;
            }
        };
        let initiator = st
            .session
            .as_ref()
            .map(|s| s.initiator.clone())
            .unwrap_or_default();
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in &pairs {
            if k == "SendTargets" {
                let addr = self.local.map(|a| a.to_string()).unwrap_or_default();
                let ts = self.shared.targets();
                for (iqn, t) in ts.iter() {
                    let allowed = (t.cfg.allow.is_empty() || t.cfg.allow.contains(&initiator))
                        && !t.cfg.deny.contains(&initiator);
                    let wanted = v == "All" || v == iqn || v.is_empty();
                    if allowed && wanted {
                        out.push(("TargetName".into(), iqn.clone()));
                        out.push(("TargetAddress".into(), format!("{addr},1")));
                    }
                }
            } else {
                out.push((k.clone(), "NotUnderstood".into()));
            }
        }
        let mut data = text::serialize(&out);
        data.truncate(st.params.initiator_mrdsl as usize);
        let mut r = Bhs::new(op::TEXT_RESP, 0x80);
        let sn = st.take_statsn();
        let max = st.max_cmdsn(self.shared.queue_depth);
        r.u32_at(16, field::itt(b))
            .u32_at(20, RESERVED_TAG)
            .u32_at(24, sn)
            .u32_at(28, st.exp_cmdsn)
            .u32_at(32, max);
        st.emit(&r, &data);
        Handled::Done
    }

    fn handle_logout(&self, st: &mut St, p: &pdu::PduView) -> Handled {
        let b = p.bhs;
        let _ = self.take_cmdsn(st, b);
        let reason = b[1] & 0x7f;
        let mut r = Bhs::new(op::LOGOUT_RESP, 0x80);
        let sn = st.take_statsn();
        let max = st.max_cmdsn(self.shared.queue_depth);
        r.byte(2, if reason <= 1 { 0 } else { 2 })
            .u32_at(16, field::itt(b))
            .u32_at(24, sn)
            .u32_at(28, st.exp_cmdsn)
            .u32_at(32, max);
        st.emit(&r, &[]);
        st.close_after_flush = true;
        Handled::Done
    }

    fn refresh_target(&self, st: &mut St) {
        let gen = self.shared.generation.load(Ordering::Acquire);
        if gen != st.target_gen {
            st.target_gen = gen;
            if let Some(t) = &st.target {
                let name = t.cfg.iqn.clone();
                st.target = self.shared.target(&name);
            }
        }
    }

    fn handle_cmd(&self, st: &mut St, p: &pdu::PduView) -> Handled {
        let b = p.bhs;
        let itt = field::itt(b);
        if !self.cmdsn_in_window(st, b) {
            return Handled::Done;
        }
        if st.itts.contains_key(&itt) {
            log::warn!(
                "iscsi: connection {}: ITT {itt:#x} already in use; rejected",
                self.id
            );
            self.reject(st, b, pdu::reject::INVALID_FIELD);
            return Handled::Done;
        }
        if st.itts.len() > self.shared.queue_depth as usize {
            // Only immediate commands can exceed the window.
            Self::consume_cmdsn(st, b);
            self.respond(st, itt, sense::TASK_SET_FULL, None, (0, 0));
            return Handled::Done;
        }
        self.refresh_target(st);
        let flags = b[1];
        let wr = flags & 0x20 != 0;
        let edtl = field::w20(b);
        let lun_field = field::lun(b);
        let lun_no = cdb::decode_lun_field(lun_field);
        let mut cdb = [0u8; 16];
        cdb.copy_from_slice(&b[32..48]);
        let Some(target) = st.target.clone() else {
            return Handled::Close("normal session without a target".into());
        };
        let lun = target.luns.get(&lun_no).cloned();
        // The LUN list is only needed (and only allocated) for REPORT LUNS.
        let luns: Vec<u64> = if cdb[0] == 0xa0 {
            target.luns.keys().copied().collect()
        } else {
            Vec::new()
        };
        // State is kept only for LUNs that exist, so commands to made-up LUN
        // numbers cannot grow the map.
        let mut scratch = NexusState::default();
        let ns = if lun.is_some() {
            st.nexus_state.entry(lun_no).or_default()
        } else {
            &mut scratch
        };
        let reactor = &self.reactor;
        let fenced = |l: &LunRt| reactor.channel(&l.bdev).is_ok_and(|ch| ch.unavailable());
        let mut opv = task::decode_command(&cdb, lun.as_deref(), &luns, ns, &fenced);
        let bs = lun.as_ref().map_or(512, |l| l.info.block_size);
        let spdtl_out = opv.data_out_len(bs);
        // A write whose EDTL differs from its CDB moves min(EDTL, CDB) bytes,
        // rounded down to whole blocks, and reports the residual (FCP-4 rules).
        let mut is_write = false;
        if let Op::Write { lba, blocks, fua } = opv {
            is_write = true;
            let want = if wr { edtl.min(blocks * bs) / bs } else { 0 };
            if want == 0 {
                opv = Op::Done(Response::good(Vec::new()));
            } else if want != blocks {
                opv = Op::Write {
                    lba,
                    blocks: want,
                    fua,
                };
            }
        }
        if cdb[0] == 0x89 && cdb[13] == 0 && edtl > 0 {
            // Data offered for a zero-length compare: the CDB is inconsistent.
            opv = Op::Done(Response::check(sense::INVALID_FIELD_IN_CDB));
        }
        let out_len = opv.data_out_len(bs);
        let recv_limit = if is_write && wr {
            edtl.max(out_len)
        } else {
            out_len
        };
        let in_len = match opv {
            Op::Read { blocks, .. } => blocks * bs,
            _ => 0,
        };
        let mismatch = out_len > 0 && !is_write && (edtl != out_len || !wr);
        let need_buf = if mismatch { 0 } else { out_len.max(in_len) };
        if need_buf > 0 && BufPool::class_for(need_buf as usize).is_none() {
            log::error!(
                "iscsi: connection {} from {}: ITT {itt:#x} needs a {need_buf}-byte buffer, larger than the largest pool class",
                self.id,
                self.peer
            );
            return Handled::Close("buffer request too large".into());
        }
        Self::consume_cmdsn(st, b);
        if let Some(s) = &st.session {
            s.stats.commands.fetch_add(1, Ordering::Relaxed);
        }
        if is_write && out_len == 0 && matches!(&opv, Op::Done(r) if r.status == sense::GOOD) {
            // A write truncated to nothing by its EDTL.
            self.respond(st, itt, sense::GOOD, None, residual(spdtl_out, edtl));
            return Handled::Done;
        }
        let Some(lun) = lun else {
            // No such LUN: decode already answered.
            if let Op::Done(r) = opv {
                self.finish_simple(st, itt, lun_field, edtl, r);
            }
            return Handled::Done;
        };
        if task::reservation_conflict(&lun, &st.nexus, &cdb) {
            self.finish_simple(st, itt, lun_field, edtl, Response::conflict());
            return Handled::Done;
        }
        if mismatch {
            let resid = residual(out_len, edtl);
            if let Some(s) = &st.session {
                s.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            self.respond(
                st,
                itt,
                sense::CHECK_CONDITION,
                Some(sense::INVALID_FIELD_IN_IU),
                resid,
            );
            return Handled::Done;
        }
        let opv = task::reservation_op(opv, &lun, &st.nexus);
        if let Op::Done(r) = opv {
            self.finish_simple(st, itt, lun_field, edtl, r);
            return Handled::Done;
        }
        // A task with block I/O and/or data-out.
        let mut t = Task {
            itt,
            scsi: ScsiTask::new(lun, opv),
            lun_field,
            edtl,
            buf: None,
            out_len,
            spdtl: spdtl_out,
            recv_limit,
            received: 0,
            unsol_end: 0,
            unsol_datasn: 0,
            next_r2t: 0,
            r2t: None,
            r2tsn: 0,
            aborted: false,
            orphan: false,
            parked: false,
            need_buf,
            early: Vec::new(),
            early_reserved: 0,
        };
        let mut imm = 0;
        if out_len > 0 {
            imm = p.data.len().min(out_len as usize);
            if imm > 0 && !st.params.immediate_data {
                return Handled::Close("immediate data not negotiated".into());
            }
            t.received = imm as u32;
            let sent = (p.data.len() as u32).min(recv_limit);
            let fb = st.params.first_burst.min(recv_limit);
            t.unsol_end = if flags & 0x80 != 0 || st.params.initial_r2t {
                sent
            } else {
                fb.max(sent)
            };
            t.next_r2t = t.unsol_end.min(out_len);
        }
        if need_buf > 0 {
            let class = BufPool::class_for(need_buf as usize).unwrap_or(0);
            // Keep arrival order: behind parked tasks of the class, wait too.
            let buf = if st.parked_n[class] == 0 {
                self.alloc_buf(st, need_buf as usize, false)
            } else {
                None
            };
            match buf {
                Some(mut x) => {
                    x.bytes_mut()[..imm].copy_from_slice(&p.data[..imm]);
                    t.buf = Some(x);
                }
                None => {
                    // Park: the data that may arrive before the buffer is kept aside.
                    let early = if out_len > 0 {
                        t.unsol_end.max(imm as u32).min(out_len) as usize
                    } else {
                        0
                    };
                    if st.parked_bytes + early > PARKED_DATA_MAX_BYTES {
                        log::warn!(
                            "iscsi: connection {} from {}: ITT {itt:#x} waits for a buffer with {early} bytes of data, {} already kept for waiting commands; TASK SET FULL",
                            self.id,
                            self.peer,
                            st.parked_bytes
                        );
                        self.respond(st, itt, sense::TASK_SET_FULL, None, (0, 0));
                        return Handled::Done;
                    }
                    t.parked = true;
                    t.early_reserved = early as u32;
                    t.early = p.data[..imm].to_vec();
                    st.parked_bytes += early;
                    let key = st.tasks.insert(t);
                    st.itts.insert(itt, key);
                    st.parked.push_back(key);
                    st.parked_n[class] += 1;
                    self.sync_active(st, class);
                    // Registers with the cache when the pool is what is short.
                    st.need_serve = true;
                    return Handled::Done;
                }
            }
        }
        let key = st.tasks.insert(t);
        st.itts.insert(itt, key);
        self.start_task(st, key);
        Handled::Done
    }

    /// A task with its buffer: ask for the rest of its data, or run it.
    fn start_task(&self, st: &mut St, key: usize) {
        let t = &st.tasks[key];
        if t.out_len > 0 && t.received < t.out_len {
            self.maybe_r2t(st, key);
            return;
        }
        self.execute(st, key);
    }

    /// Sends the next R2T of a task when none is outstanding and the unsolicited
    /// part has arrived.
    fn maybe_r2t(&self, st: &mut St, key: usize) {
        let max_burst = st.params.max_burst;
        let ttt = st.alloc_ttt();
        let statsn = st.statsn;
        let exp = st.exp_cmdsn;
        let max = st.max_cmdsn(self.shared.queue_depth);
        let t = &mut st.tasks[key];
        if t.parked || t.r2t.is_some() || t.next_r2t >= t.out_len {
            return;
        }
        let len = (t.out_len - t.next_r2t).min(max_burst);
        let off = t.next_r2t;
        t.next_r2t += len;
        t.r2t = Some(R2t {
            ttt,
            offset: off,
            len,
            got: 0,
            datasn: 0,
        });
        let mut b = Bhs::new(op::R2T, 0x80);
        b.u64_at(8, t.lun_field)
            .u32_at(16, t.itt)
            .u32_at(20, ttt)
            .u32_at(24, statsn)
            .u32_at(28, exp)
            .u32_at(32, max)
            .u32_at(36, t.r2tsn)
            .u32_at(40, off)
            .u32_at(44, len);
        t.r2tsn += 1;
        st.emit(&b, &[]);
    }

    fn handle_data_out(&self, st: &mut St, p: &pdu::PduView) -> Handled {
        let b = p.bhs;
        let itt = field::itt(b);
        let ttt = field::w20(b);
        let datasn = pdu::be32(b, 36);
        let off = pdu::be32(b, 40);
        let len = p.data.len() as u32;
        let Some(&key) = st.itts.get(&itt) else {
            // Data for a command already answered (e.g. rejected before its
            // unsolicited data arrived): drop it.
            log::debug!(
                "iscsi: connection {}: Data-Out for unknown ITT {itt:#x} dropped",
                self.id
            );
            return Handled::Done;
        };
        let t = &mut st.tasks[key];
        if t.out_len == 0 || (t.buf.is_none() && !t.parked) {
            return Handled::Done;
        }
        let bad = |why: String| -> Option<String> { Some(why) };
        let mut problem = None;
        let end = off.checked_add(len).filter(|e| *e <= t.recv_limit);
        match end {
            None => {
                problem = bad(format!(
                    "Data-Out beyond the expected length (offset {off}, {len} bytes)"
                ))
            }
            Some(end) if ttt == RESERVED_TAG => {
                if end > t.unsol_end || datasn != t.unsol_datasn {
                    problem = bad(format!(
                        "bad unsolicited Data-Out (offset {off}, DataSN {datasn}, expected {})",
                        t.unsol_datasn
                    ));
                } else {
                    t.unsol_datasn += 1;
                }
            }
            Some(end) => match t.r2t.as_mut() {
                None => problem = bad(format!("Data-Out with TTT {ttt:#x} but no R2T outstanding")),
                Some(r) => {
                    if r.ttt != ttt
                        || off < r.offset
                        || end > r.offset + r.len
                        || datasn != r.datasn
                    {
                        problem = bad(format!(
                            "Data-Out does not match its R2T (TTT {ttt:#x}, offset {off}, DataSN {datasn})"
                        ));
                    } else {
                        r.datasn += 1;
                        r.got += len;
                    }
                }
            },
        }
        if let Some(why) = problem {
            // ErrorRecoveryLevel 0: the task ends with CHECK CONDITION; later
            // Data-Out PDUs of it are dropped as belonging to no task.
            log::warn!(
                "iscsi: connection {}: ITT {itt:#x}: {why}; task failed",
                self.id
            );
            st.itts.remove(&itt);
            self.forget_parked(st, key);
            if st.tasks[key].scsi.inflight() == 0 {
                let t = st.tasks.remove(key);
                self.release(st, t);
            } else {
                st.tasks[key].aborted = true;
            }
            if let Some(s) = &st.session {
                s.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            self.respond(
                st,
                itt,
                sense::CHECK_CONDITION,
                Some(sense::DATA_PHASE_ERROR),
                (0, 0),
            );
            return Handled::Done;
        }
        let end = end.unwrap_or(off);
        let t = &mut st.tasks[key];
        // Only the part inside what the command moves is kept.
        let keep_end = end.min(t.out_len);
        if off < keep_end {
            let src = &p.data[..(keep_end - off) as usize];
            if let Some(x) = t.buf.as_mut() {
                x.bytes_mut()[off as usize..keep_end as usize].copy_from_slice(src);
            } else if t.parked {
                // Unsolicited data only (no R2T while parked): within the reserve.
                let end = (keep_end as usize).min(t.early_reserved as usize);
                if t.early.len() < end {
                    t.early.resize(end, 0);
                }
                let n = end.saturating_sub(off as usize);
                t.early[off as usize..off as usize + n].copy_from_slice(&src[..n]);
            }
            t.received += keep_end - off;
        }
        if t.parked {
            // Runs (or asks for the rest) once its buffer comes.
            return Handled::Done;
        }
        let burst_done = t.r2t.as_ref().is_some_and(|r| r.got >= r.len);
        if burst_done {
            t.r2t = None;
        }
        if t.received >= t.out_len {
            t.r2t = None;
            self.execute(st, key);
        } else if t.r2t.is_none() {
            self.maybe_r2t(st, key);
        }
        Handled::Done
    }

    fn handle_tmf(&self, st: &mut St, p: &pdu::PduView) -> Handled {
        let b = p.bhs;
        let _ = self.take_cmdsn(st, b);
        let func = b[1] & 0x7f;
        let ref_itt = field::w20(b);
        let lun_no = cdb::decode_lun_field(field::lun(b));
        self.refresh_target(st);
        let lun_exists = st
            .target
            .as_ref()
            .is_some_and(|t| t.luns.contains_key(&lun_no));
        let resp: u8 = match func {
            // ABORT TASK
            1 => match st.itts.get(&ref_itt).copied() {
                Some(key) => {
                    self.abort_task(st, key);
                    0
                }
                None => 1,
            },
            // ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET
            2 | 3 | 5 => {
                if !lun_exists {
                    2
                } else {
                    let keys: Vec<usize> = st
                        .itts
                        .values()
                        .copied()
                        .filter(|k| st.tasks[*k].scsi.lun.info.lun == lun_no)
                        .collect();
                    for k in keys {
                        self.abort_task(st, k);
                    }
                    if func == 5 {
                        if let Some(t) = &st.target {
                            if let Some(l) = t.luns.get(&lun_no) {
                                l.reset();
                            }
                        }
                        if let Some(ns) = st.nexus_state.get_mut(&lun_no) {
                            ns.prevent = false;
                        }
                    }
                    0
                }
            }
            // TARGET WARM RESET, TARGET COLD RESET
            6 | 7 => {
                let keys: Vec<usize> = st.itts.values().copied().collect();
                for k in keys {
                    self.abort_task(st, k);
                }
                if let Some(t) = &st.target {
                    for l in t.luns.values() {
                        l.reset();
                    }
                }
                for ns in st.nexus_state.values_mut() {
                    ns.prevent = false;
                }
                if func == 7 {
                    st.close_after_flush = true;
                }
                0
            }
            // CLEAR ACA, TASK REASSIGN: not supported at ErrorRecoveryLevel 0.
            4 => 5,
            8 => 4,
            _ => 5,
        };
        let mut r = Bhs::new(op::TMF_RESP, 0x80);
        let sn = st.take_statsn();
        let max = st.max_cmdsn(self.shared.queue_depth);
        r.byte(2, resp)
            .u32_at(16, field::itt(b))
            .u32_at(24, sn)
            .u32_at(28, st.exp_cmdsn)
            .u32_at(32, max);
        st.emit(&r, &[]);
        Handled::Done
    }

    fn abort_task(&self, st: &mut St, key: usize) {
        let itt = st.tasks[key].itt;
        st.itts.remove(&itt);
        self.forget_parked(st, key);
        if st.tasks[key].scsi.inflight() == 0 {
            let t = st.tasks.remove(key);
            self.release(st, t);
        } else {
            st.tasks[key].aborted = true;
            st.tasks[key].orphan = true;
        }
    }

    /// A command answered without block I/O.
    fn finish_simple(&self, st: &mut St, itt: u32, lun_field: u64, edtl: u32, r: Response) {
        // A unit attention is news for the host, not a failed command.
        let ua = r.sense.is_some_and(|s| s.key == sense::key::UNIT_ATTENTION);
        if r.status != sense::GOOD && !ua {
            if let Some(s) = &st.session {
                s.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if r.status == sense::GOOD && !r.data.is_empty() && edtl > 0 {
            let n = (r.data.len() as u32).min(edtl);
            let resid = residual(r.data.len() as u32, edtl);
            self.send_data_in(st, itt, lun_field, &r.data[..n as usize], Some(resid));
            return;
        }
        let resid = if r.status == sense::GOOD {
            residual(r.data.len() as u32, edtl)
        } else {
            residual(0, edtl)
        };
        self.respond(st, itt, r.status, r.sense, resid);
    }

    /// Data-In PDUs for `data`; with `status_resid`, the last one carries GOOD
    /// status and the residual.
    fn send_data_in(
        &self,
        st: &mut St,
        itt: u32,
        lun_field: u64,
        data: &[u8],
        status_resid: Option<(u8, u32)>,
    ) {
        self.data_in_pdus(st, itt, lun_field, data, status_resid, false);
    }

    /// Data-In PDUs for the first `len` bytes of a pool buffer, sent from the
    /// buffer itself (no copy); the output queue keeps the buffer until then.
    fn send_data_in_buf(
        &self,
        st: &mut St,
        itt: u32,
        lun_field: u64,
        buf: PoolBuf,
        len: usize,
        status_resid: Option<(u8, u32)>,
    ) {
        let data = &buf.bytes()[..len];
        self.data_in_pdus(st, itt, lun_field, data, status_resid, true);
        st.out.hold(buf);
    }

    /// Queues the Data-In PDUs of `data`; with `by_ref`, `data` lies in a pool
    /// buffer that the caller hands to `Out::hold` right after.
    fn data_in_pdus(
        &self,
        st: &mut St,
        itt: u32,
        lun_field: u64,
        data: &[u8],
        status_resid: Option<(u8, u32)>,
        by_ref: bool,
    ) {
        let mrdsl = st.params.initiator_mrdsl.max(512) as usize;
        let burst = st.params.max_burst.max(512) as usize;
        let mut off = 0usize;
        let mut datasn = 0u32;
        while off < data.len() || (off == 0 && data.is_empty()) {
            let burst_left = burst - (off % burst);
            let n = (data.len() - off).min(mrdsl).min(burst_left);
            let last = off + n >= data.len();
            let mut flags = 0u8;
            if last || (off + n).is_multiple_of(burst) {
                flags |= 0x80;
            }
            let mut b = Bhs::new(op::DATA_IN, 0);
            let exp = st.exp_cmdsn;
            if last {
                if let Some((rf, rc)) = status_resid {
                    flags |= 0x01 | rf;
                    let sn = st.take_statsn();
                    b.u32_at(24, sn).u32_at(44, rc);
                } else {
                    b.u32_at(24, 0);
                }
            }
            let max = st.max_cmdsn(self.shared.queue_depth);
            b.0[1] = flags;
            b.u64_at(8, lun_field)
                .u32_at(16, itt)
                .u32_at(20, RESERVED_TAG)
                .u32_at(28, exp)
                .u32_at(32, max)
                .u32_at(36, datasn)
                .u32_at(40, off as u32);
            let chunk = &data[off..off + n];
            if by_ref {
                // SAFETY: `by_ref` callers pass bytes of a pool buffer and hold it in
                // the queue right after this loop (send_data_in_buf).
                unsafe { st.out.emit_ref(&b, chunk, st.dig) };
            } else {
                st.emit(&b, chunk);
            }
            datasn += 1;
            off += n;
            if data.is_empty() {
                break;
            }
        }
    }

    /// A SCSI Response PDU. `resid` is (flags, count) with flags 0x02 underflow or
    /// 0x04 overflow.
    fn respond(&self, st: &mut St, itt: u32, status: u8, s: Option<Sense>, resid: (u8, u32)) {
        let mut b = Bhs::new(op::SCSI_RESP, 0x80 | resid.0);
        let sn = st.take_statsn();
        let max = st.max_cmdsn(self.shared.queue_depth);
        b.byte(3, status)
            .u32_at(16, itt)
            .u32_at(24, sn)
            .u32_at(28, st.exp_cmdsn)
            .u32_at(32, max)
            .u32_at(44, resid.1);
        match s {
            Some(s) => {
                let f = s.to_fixed();
                let mut d = Vec::with_capacity(2 + f.len());
                d.extend_from_slice(&(f.len() as u16).to_be_bytes());
                d.extend_from_slice(&f);
                st.emit(&b, &d);
            }
            None => st.emit(&b, &[]),
        }
    }

    /// Hands a block I/O of task `key` to the LUN's bdev channel on this reactor.
    fn submit(&self, key: usize, lun: &LunRt, io: BlockIo) -> Result<(), Sense> {
        let ch = self.reactor.channel(&lun.bdev).map_err(|e| {
            log::error!(
                "iscsi: lun {} ({}): no channel on reactor {}: {e}",
                lun.info.lun,
                lun.bdev.name(),
                self.reactor.id()
            );
            sense::INTERNAL_FAILURE
        })?;
        let me = self.rc().ok_or(sense::INTERNAL_FAILURE)?;
        ch.submit(BdevIo {
            kind: io.kind,
            offset_bytes: io.offset_bytes,
            len_bytes: io.len_bytes,
            buf: io.buf,
            cb: IoCallback::new(me, key as u64),
        });
        Ok(())
    }

    /// Starts (or continues, after I/O) the block work of a task.
    fn execute(&self, st: &mut St, key: usize) {
        let St { tasks, nexus, .. } = st;
        let t = &mut tasks[key];
        let step = t.scsi.step(t.buf.as_ref(), nexus, &mut |lun, io| {
            self.submit(key, lun, io)
        });
        match step {
            Step::Wait => {}
            Step::Done => self.complete(st, key),
            Step::Conflict => {
                let t = st.tasks.remove(key);
                st.itts.remove(&t.itt);
                let (itt, lf, edtl) = (t.itt, t.lun_field, t.edtl);
                self.release(st, t);
                self.finish_simple(st, itt, lf, edtl, Response::conflict());
            }
        }
    }

    /// Sends the outcome of a task and frees it.
    fn complete(&self, st: &mut St, key: usize) {
        if st.tasks[key].scsi.inflight() > 0 {
            return;
        }
        let t = st.tasks.remove(key);
        st.itts.remove(&t.itt);
        let bs = t.scsi.lun.info.block_size;
        if let Some(e) = t.scsi.err {
            if let Some(s) = &st.session {
                s.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            let resid = residual(0, t.edtl);
            self.respond(st, t.itt, sense::CHECK_CONDITION, Some(e), resid);
            return self.release(st, t);
        }
        match t.scsi.op {
            Op::Read { blocks, .. } => {
                let n = blocks * bs;
                if let Some(s) = &st.session {
                    s.stats.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                let resid = residual(n, t.edtl);
                let send = n.min(t.edtl) as usize;
                let mut t = t;
                if send == 0 {
                    self.respond(st, t.itt, sense::GOOD, None, resid);
                } else if let Some(b) = t.buf.take() {
                    self.send_data_in_buf(st, t.itt, t.lun_field, b, send, Some(resid));
                }
                return self.release(st, t);
            }
            _ => {
                if let Some(s) = &st.session {
                    s.stats
                        .write_bytes
                        .fetch_add(t.out_len as u64, Ordering::Relaxed);
                }
                self.respond(st, t.itt, sense::GOOD, None, residual(t.spdtl, t.edtl));
            }
        }
        self.release(st, t);
    }

    /// Writes queued output; arms POLLOUT when the socket is full.
    fn flush(&self) {
        let mut close_now = None;
        let mut done = Vec::new();
        {
            let mut st = self.st.borrow_mut();
            if st.closed {
                return;
            }
            std::mem::swap(&mut done, &mut st.spare);
            // SAFETY: iovec is plain data; every entry used is filled by `iovecs`.
            let mut iov: [libc::iovec; MAX_IOV] = unsafe { std::mem::zeroed() };
            // Two rounds at most: the queued output, then the window announcement
            // that may follow a blocked stretch.
            for _ in 0..2 {
                while st.out.pending() > 0 {
                    let n_iov = st.out.iovecs(&mut iov);
                    // SAFETY: a zeroed msghdr is valid (no address, no control data).
                    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                    msg.msg_iov = iov.as_mut_ptr();
                    msg.msg_iovlen = n_iov as _;
                    // SAFETY: every iovec points at queued bytes: either inside
                    // `out.bytes` (not modified while `st` is borrowed here) or inside a
                    // pool buffer that `out.held` keeps until those bytes are sent
                    // (`Out::emit_ref`'s contract). The call is synchronous, so nothing
                    // refers to the iovecs after it returns. MSG_NOSIGNAL avoids SIGPIPE.
                    let n = unsafe {
                        libc::sendmsg(self.fd(), &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
                    };
                    if n > 0 {
                        st.out.advance(n as usize, &mut done);
                        if let Some(since) = st.send_blocked_since.take() {
                            // The socket drains again: buffers and the window open.
                            st.send_blocked_total += since.elapsed();
                            st.need_serve = true;
                        }
                        continue;
                    }
                    let e = std::io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EAGAIN) => {
                            if st.send_blocked_since.is_none() {
                                st.send_blocked_since = Some(Instant::now());
                            }
                            self.arm(&mut st, true);
                            break;
                        }
                        Some(libc::EINTR) => continue,
                        _ => {
                            close_now = Some(format!("write failed: {e}"));
                            break;
                        }
                    }
                }
                if st.out.pending() > 0 || close_now.is_some() || !st.window_stale {
                    break;
                }
                // PDUs queued while blocked carried a frozen MaxCmdSN: announce the
                // open window with a NOP-In that wants no answer (RFC 7143 §11.19).
                st.window_stale = false;
                if matches!(st.phase, Phase::Full(_)) {
                    st.emit_nop_in(RESERVED_TAG, self.shared.queue_depth);
                }
            }
            if st.out.pending() == 0 && st.close_after_flush && close_now.is_none() {
                close_now = Some("logged out".into());
            }
            for b in done.drain(..) {
                self.put_buf(&mut st, b);
            }
            std::mem::swap(&mut done, &mut st.spare);
            if close_now.is_none() {
                self.after(&mut st);
                // Tasks unparked by the buffers this flush freed may have queued
                // R2Ts or Data-In: send them on the next pass, not at the next tick
                // (a blocked socket's POLLOUT resumes it by itself).
                if st.out.pending() > 0 && st.send_blocked_since.is_none() {
                    self.mark_dirty();
                }
            }
        }
        if let Some(w) = close_now {
            self.close(&w);
        }
    }

    /// Asks for a flush at the end of this reactor iteration.
    fn mark_dirty(&self) {
        if self.dirty.replace(true) {
            return;
        }
        match self.rc() {
            Some(me) => self.reactor.local::<Registry>().dirty.borrow_mut().push(me),
            None => self.dirty.set(false),
        }
    }

    /// Resumes reading after a stall (buffer arrived or output drained).
    fn resume(&self) {
        let was_paused = {
            let st = self.st.borrow();
            !st.closed && !st.poll_in
        };
        if was_paused {
            {
                let mut st = self.st.borrow_mut();
                if let Err(w) = self.process(&mut st) {
                    drop(st);
                    self.close(&w);
                    return;
                }
            }
            self.on_readable();
        } else {
            self.flush();
        }
    }
}

fn residual(spdtl: u32, edtl: u32) -> (u8, u32) {
    if spdtl > edtl {
        (0x04, spdtl - edtl)
    } else if spdtl < edtl {
        (0x02, edtl - spdtl)
    } else {
        (0, 0)
    }
}

impl UringDone for Conn {
    fn uring_done(&self, tag: u64, res: i32, _flags: u32) {
        {
            let mut st = self.st.borrow_mut();
            if tag == TAG_POLLIN {
                st.poll_in = false;
            } else {
                st.poll_out = false;
            }
            if st.closed {
                return;
            }
        }
        if res < 0 {
            self.close(&format!(
                "poll failed: {}",
                std::io::Error::from_raw_os_error(-res)
            ));
            return;
        }
        if tag == TAG_POLLIN {
            self.on_readable();
        } else {
            self.flush();
            let resume = {
                let st = self.st.borrow();
                !st.closed && !st.poll_in && st.pending_out() <= WBUF_HIGH_BYTES
            };
            if resume {
                self.resume();
            }
        }
    }
}

impl IoDone for Conn {
    fn io_done(&self, tag: u64, status: IoStatus) {
        let key = tag as usize;
        {
            let mut st = self.st.borrow_mut();
            let Some(t) = st.tasks.get_mut(key) else {
                log::error!(
                    "iscsi: connection {}: completion for unknown task {key}",
                    self.id
                );
                return;
            };
            if !t.scsi.io_done(status) {
                return;
            }
            if t.aborted || st.closed {
                let t = st.tasks.remove(key);
                self.release(&mut st, t);
                if !st.closed {
                    self.after(&mut st);
                }
                return;
            }
            self.execute(&mut st, key);
            self.after(&mut st);
        }
        self.mark_dirty();
        let paused = {
            let st = self.st.borrow();
            !st.closed && !st.poll_in && st.pending_out() <= WBUF_HIGH_BYTES
        };
        if paused {
            self.resume();
        }
    }
}

impl BufWaiter for Conn {
    /// The reactor's cache hands over a chunk of class `tag` (the connection
    /// registered when the pool was exhausted): the oldest parked task of the
    /// class takes it.
    fn buf_ready(&self, tag: u64, buf: PoolBuf) {
        {
            let mut st = self.st.borrow_mut();
            let c = buf.class();
            if let Some(w) = st.buf_wait.get_mut(tag as usize) {
                *w = false;
            }
            if st.closed {
                drop(st);
                self.reactor.bufs().put(buf);
                return;
            }
            st.held[c] += 1;
            let key = st
                .parked
                .iter()
                .copied()
                .find(|k| BufPool::class_for(st.tasks[*k].need_buf as usize) == Some(c));
            match key {
                Some(k) => self.unpark(&mut st, k, buf),
                // Not needed any more (the task was aborted): give it back.
                None => self.put_buf(&mut st, buf),
            }
            st.need_serve = true;
            self.after(&mut st);
        }
        self.mark_dirty();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes `iovecs` would send next, up to `max`.
    fn next_bytes(out: &Out, max: usize) -> Vec<u8> {
        // SAFETY: plain data; `iovecs` fills the entries it reports.
        let mut iov: [libc::iovec; MAX_IOV] = unsafe { std::mem::zeroed() };
        let n = out.iovecs(&mut iov);
        let mut v = Vec::new();
        for e in &iov[..n] {
            // SAFETY: the entries point at live queued bytes (the test's data
            // vectors outlive the queue).
            let s = unsafe { std::slice::from_raw_parts(e.iov_base as *const u8, e.iov_len) };
            v.extend_from_slice(s);
        }
        v.truncate(max);
        v
    }

    #[test]
    fn vectored_output_matches_copied_output_across_partial_sends() {
        let dig = Digests {
            header: true,
            data: true,
        };
        let payloads: Vec<Vec<u8>> = (0..40usize)
            .map(|i| (0..(i * 37 % 600)).map(|j| (i + j) as u8).collect())
            .collect();
        let mut want = Vec::new();
        let mut out = Out::default();
        for (i, p) in payloads.iter().enumerate() {
            let mut b = Bhs::new(op::DATA_IN, 0x81);
            b.u32_at(16, i as u32);
            pdu::encode(&mut want, &b, p, dig);
            if i % 3 == 0 {
                out.emit(&b, p, dig);
            } else {
                // SAFETY: `payloads` outlives `out`; nothing writes to it.
                unsafe { out.emit_ref(&b, p, dig) };
            }
        }
        assert_eq!(out.pending(), want.len());
        let mut got = Vec::new();
        let mut done = Vec::new();
        let mut step = 1;
        while out.pending() > 0 {
            let chunk = next_bytes(&out, step);
            got.extend_from_slice(&chunk);
            out.advance(chunk.len(), &mut done);
            step = step * 3 % 1999 + 1;
        }
        assert_eq!(got, want);
        assert!(out.segs.is_empty() && out.bytes.is_empty());
    }
}
