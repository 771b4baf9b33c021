//! One NVMe/TCP queue pair (one TCP connection) on its reactor: socket I/O,
//! PDU dispatch, commands, data transfers, keep alive.
//!
//! Reading: a one-shot io_uring poll for POLLIN wakes the queue pair; it reads
//! with nonblocking `read` into a receive buffer sized for the largest PDU it
//! accepts; a PDU that arrived in part stays in the buffer and parsing resumes
//! when the rest arrives. Reading pauses only while too much output is queued,
//! so memory per connection is bounded: at most [`MAX_QUEUE_ENTRIES`] commands
//! (the host's SQ size, checked), each holding at most one pool buffer of at
//! most [`MAX_TRANSFER_BYTES`] and at most [`MAX_ADMIN_DATA_BYTES`] of memory.
//!
//! Data: write data (in-capsule, or H2CData after an R2T that covers the whole
//! transfer) lands in a pool buffer that the bdev I/O uses; read data goes out
//! in C2HData PDUs straight from the pool buffer the read filled (the output
//! queue holds the buffer until its bytes are sent). A command that needs a
//! pool buffer the pool cannot give now waits in arrival order (its in-capsule
//! data copied aside, at most [`super::IN_CAPSULE_DATA_BYTES`] per command)
//! while reading goes on, so H2CData of other commands keeps flowing and
//! buffers come back: no deadlock.
//!
//! Errors: a malformed PDU, a PDU out of sequence, a header digest error, a
//! data digest error on H2CData or data out of range end the connection with
//! a C2HTermReq and one log line; a data digest error on a command capsule
//! fails that command (transient transport error).
//!
//! Closing: `shutdown` wakes pending polls; their completions, and those of
//! in-flight bdev I/O, drop the last references and close the socket. The
//! commands of a closed queue are aborted: their I/O completes, nothing is sent.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::admin::{self, AdminDone, CcChange};
use super::io::{self, IoPlan};
use super::nvme::{admin_op, fctype, io_op, sgl, Cqe, Sqe, Status};
use super::pdu::{self, fes, flag, ty, Digests, Parsed, PduView};
use super::resv;
use super::subsys::{AnaState, Ctrl, Namespace, QueueAt, Subsystem, DISCOVERY_NQN};
use super::{
    Shared, IN_CAPSULE_DATA_BYTES, MAX_ADMIN_DATA_BYTES, MAX_C2H_DATA_BYTES, MAX_H2C_DATA_BYTES,
    MAX_IO_QUEUES, MAX_QUEUE_ENTRIES, MAX_R2T_DATA_BYTES, MAX_R2T_PER_CMD, MAX_TRANSFER_BYTES,
};
use crate::bdev::{BdevChannel, BdevIo, IoCallback, IoDone, IoKind, IoStatus, RETRY_ERRNO};
use crate::buf::{BufPool, BufWaiter, IoBuf, PoolBuf};
use crate::frontend::preempt::{abort_on, AbortFn, DoneFn, PaWait, PreemptAbort, Preemptible};
use crate::frontend::scsi::pr::Nexus;
use crate::frontend::scsi::pr_cluster::{
    PrDone, PrOutRequest, PrOutResult, PR_OUT_TIMEOUT, PR_OUT_TRIES,
};
use crate::frontend::transport::{
    self, IntMap, Link, OutQueue, Polls, PoolShare, RecvBuf, Sent, Wire, CLASSES, WBUF_HIGH_BYTES,
};
use crate::lease::FENCED_ERRNO;
use crate::reactor::Reactor;

/// Longest a connection may take to send ICReq and Connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A controller is dropped when no Keep Alive came for KATO times this.
const KATO_FACTOR: u64 = 2;
/// Longest a connection may stay blocked on send (the host reads nothing).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest PDU on the wire: a capsule or H2CData with its largest data.
const MAX_PDU_BYTES: usize = pdu::CMD_HLEN
    + 2 * pdu::DIGEST_LEN
    + 255
    + if MAX_H2C_DATA_BYTES > IN_CAPSULE_DATA_BYTES {
        MAX_H2C_DATA_BYTES
    } else {
        IN_CAPSULE_DATA_BYTES
    };
/// Bytes of the offending PDU header echoed in a C2HTermReq.
const TERM_ECHO_BYTES: usize = 128;

/// Bytes of headers the output queue has room for before it grows.
const OUT_QUEUE_BYTES: usize = 16 << 10;

/// The NVMe/TCP connections and listeners of one reactor.
pub(crate) type Registry = transport::Registry<Conn, Shared>;

/// Makes connection `id` for an accepted socket (runs on the chosen reactor;
/// the listener admitted it and registers it).
pub(crate) fn connect(
    r: &Rc<Reactor>,
    shared: &Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    id: u64,
) -> Rc<Conn> {
    Rc::new_cyclic(|me| Conn {
        link: Link::new(r, shared.core.id, stream, peer, id),
        shared: Arc::clone(shared),
        me: me.clone(),
        dirty: Cell::new(false),
        st: RefCell::new(St {
            phase: Phase::AwaitIcReq,
            ctrl: None,
            sub: None,
            sub_gen: 0,
            io_epoch: 0,
            dig: Digests::default(),
            hpda: 0,
            rx: RecvBuf::new(MAX_PDU_BYTES),
            out: OutQueue::with_capacity(OUT_QUEUE_BYTES),
            spare: Vec::new(),
            cmds: slab::Slab::with_capacity(32),
            cids: IntMap::default(),
            entries: MAX_QUEUE_ENTRIES as u32,
            sqhd: 0,
            sqfc_off: false,
            waiting: VecDeque::new(),
            share: PoolShare::default(),
            need_serve: false,
            aers: Vec::new(),
            next_ttag: 1,
            maxr2t: 1,
            nexus: None,
            next_pr_tag: 1,
            started: Instant::now(),
            polls: Polls::default(),
            close_after_flush: false,
            closed: false,
        }),
    })
}

fn find(r: &Rc<Reactor>, fid: u64, id: u64) -> Option<Rc<Conn>> {
    Registry::find(r, fid, id)
}

/// Closes one connection (management API).
pub(crate) fn close_conn(r: &Rc<Reactor>, fid: u64, id: u64, why: &str) {
    if let Some(c) = find(r, fid, id) {
        c.close(why);
    }
}

/// Completes the Reservation Acquire (preempt and abort) of connection `id`
/// whose aborted commands are all done.
pub(crate) fn preempt_done(r: &Rc<Reactor>, fid: u64, id: u64) {
    if let Some(c) = find(r, fid, id) {
        {
            let mut st = c.st.borrow_mut();
            c.poll_preempts(&mut st);
        }
        c.flush();
    }
}

/// This frontend's abort of a preempt and abort's commands on a reactor.
pub(crate) const ABORT_PREEMPTED: AbortFn = abort_on::<Conn, Shared>;

/// Completes held Asynchronous Event Requests of the admin queue `id` with
/// its controller's pending events.
pub(crate) fn deliver_aens(r: &Rc<Reactor>, fid: u64, id: u64) {
    if let Some(c) = find(r, fid, id) {
        {
            let mut st = c.st.borrow_mut();
            c.deliver(&mut st);
        }
        c.flush();
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitIcReq,
    AwaitConnect,
    Admin,
    Io { qid: u16 },
}

/// One command of the queue.
struct Cmd {
    sqe: Sqe,
    ns: Option<Arc<Namespace>>,
    plan: Option<IoPlan>,
    /// The pool buffer the bdev I/O uses (reads, writes, compares).
    buf: Option<PoolBuf>,
    /// Bytes of pool buffer needed (0: none).
    pool_len: usize,
    /// Host data kept in memory: admin data, DSM ranges, compare data, or
    /// in-capsule write data while the command waits for its pool buffer.
    vdata: Vec<u8>,
    /// Host data bytes expected and received.
    need: usize,
    got: usize,
    /// True when host data goes to the pool buffer.
    to_pool: bool,
    /// Host data asked for by R2Ts so far (the offset of the next R2T).
    r2t_off: usize,
    /// The R2Ts outstanding (the first `n_r2t`).
    r2ts: [R2t; MAX_R2T_PER_CMD],
    n_r2t: usize,
    waiting: bool,
    inflight: u32,
    status: Status,
    aborted: bool,
    /// A reservation change waiting for the cluster.
    pr: Option<PrWait>,
    /// Times the reservation change was sent to the cluster.
    pr_tries: u32,
    /// Aborted by a preempt and abort (its status says so): it ends as soon as
    /// nothing of it is at a bdev or expected from the host.
    preempted: bool,
    /// The preempt and abort waiting for this command's bdev I/O.
    held_by: Option<Arc<PreemptAbort>>,
    /// A Reservation Acquire (preempt and abort) waiting for the preempted
    /// hosts' commands to end.
    pa: Option<PaWait>,
}

/// One R2T outstanding: its transfer tag, the host data it asks for and how
/// much of it came.
#[derive(Clone, Copy, Debug, Default)]
struct R2t {
    ttag: u16,
    off: usize,
    len: usize,
    got: usize,
}

/// A reservation command forwarded to the cluster (see `pr_cluster`).
struct PrWait {
    /// The tag the answer comes back with.
    tag: u64,
    /// The broker's request id.
    id: u64,
    since: Instant,
}

impl Cmd {
    /// A new command for `sqe` expecting `need` bytes of host data.
    fn new(sqe: Sqe, need: usize) -> Cmd {
        Cmd {
            sqe,
            ns: None,
            plan: None,
            buf: None,
            pool_len: 0,
            vdata: Vec::new(),
            need,
            got: 0,
            to_pool: false,
            r2t_off: 0,
            r2ts: [R2t::default(); MAX_R2T_PER_CMD],
            n_r2t: 0,
            waiting: false,
            inflight: 0,
            status: Status::SUCCESS,
            aborted: false,
            pr: None,
            pr_tries: 0,
            preempted: false,
            held_by: None,
            pa: None,
        }
    }
}

struct St {
    phase: Phase,
    ctrl: Option<Arc<Ctrl>>,
    sub: Option<Arc<Subsystem>>,
    sub_gen: u64,
    io_epoch: u32,
    dig: Digests,
    hpda: u8,
    rx: RecvBuf,
    out: OutQueue,
    spare: Vec<PoolBuf>,
    cmds: slab::Slab<Cmd>,
    cids: IntMap<u16, usize>,
    /// Entries of the submission queue (SQSIZE + 1): commands outstanding at most.
    entries: u32,
    sqhd: u32,
    sqfc_off: bool,
    /// Commands waiting for a pool buffer, in arrival order.
    waiting: VecDeque<usize>,
    /// This connection's share of the buffer pool.
    share: PoolShare,
    need_serve: bool,
    /// Held Asynchronous Event Requests (command ids).
    aers: Vec<u16>,
    next_ttag: u16,
    /// R2Ts a command may have outstanding: the host's MAXR2T (ICReq), at most
    /// [`MAX_R2T_PER_CMD`].
    maxr2t: usize,
    /// The reservation nexus of this queue's host (set on first use).
    nexus: Option<Nexus>,
    /// Tag of the next reservation change sent to the cluster.
    next_pr_tag: u64,
    started: Instant,
    polls: Polls,
    close_after_flush: bool,
    closed: bool,
}

impl St {
    fn qid(&self) -> u16 {
        match self.phase {
            Phase::Io { qid } => qid,
            _ => 0,
        }
    }

    fn emit(&mut self, t: u8, flags: u8, specific: &[u8], data: &[u8]) {
        let (dig, hpda) = (self.dig, self.hpda);
        self.out
            .push(|v| pdu::encode(v, t, flags, specific, data, dig, hpda));
    }

    /// A CapsuleResp.
    fn respond(&mut self, cid: u16, status: Status, dw0: u32, dw1: u32) {
        let cqe = Cqe {
            dw0,
            dw1,
            sqhd: self.sqhd as u16,
            sqid: self.qid(),
            cid,
            status: status.0,
        };
        self.emit(ty::CAPSULE_RESP, 0, &cqe.bytes(), &[]);
    }

    /// C2HData PDUs carrying `data` (copied).
    fn c2h_copy(&mut self, cid: u16, data: &[u8]) {
        let mut off = 0;
        while off < data.len() {
            let n = (data.len() - off).min(MAX_C2H_DATA_BYTES);
            let last = off + n == data.len();
            let f = if last { flag::LAST_PDU } else { 0 };
            let h = pdu::data_hdr(cid, 0, off as u32, n as u32);
            self.emit(ty::C2H_DATA, f, &h, &data[off..off + n]);
            off += n;
        }
    }

    /// C2HData PDUs from the first `len` bytes of a pool buffer, without a
    /// copy; with `success`, the last one carries the SUCCESS flag.
    fn c2h_pool(&mut self, cid: u16, buf: PoolBuf, len: usize, success: bool) {
        let (dig, hpda) = (self.dig, self.hpda);
        let data = &buf.bytes()[..len.min(buf.len())];
        let mut off = 0;
        while off < data.len() {
            let n = (data.len() - off).min(MAX_C2H_DATA_BYTES);
            let last = off + n == data.len();
            let mut f = 0;
            if last {
                f |= flag::LAST_PDU;
                if success {
                    f |= flag::SUCCESS;
                }
            }
            let h = pdu::data_hdr(cid, 0, off as u32, n as u32);
            let chunk = &data[off..off + n];
            // SAFETY: the bytes lie in `buf`, which is handed to `hold` right
            // after this loop, before anything else touches the queue.
            unsafe {
                self.out.push_ref(
                    |v| pdu::encode_head(v, ty::C2H_DATA, f, &h, n, dig, hpda),
                    chunk,
                    |v| pdu::encode_tail(v, chunk, dig),
                )
            };
            off += n;
        }
        self.out.hold(buf);
    }

    fn pending_out(&self) -> usize {
        self.out.pending()
    }
}

/// One queue pair.
pub(crate) struct Conn {
    /// Its ids, socket, peer and reactor.
    link: Link,
    shared: Arc<Shared>,
    me: Weak<Conn>,
    dirty: Cell<bool>,
    st: RefCell<St>,
}

/// Why a Connect is refused: its status, dword 0 of the completion and the
/// reason logged.
type Refused = (Status, u32, String);

/// The outcome of handling a PDU.
enum Handled {
    Done,
    /// A fatal transport error: terminate with (FES, FEI) and this reason.
    Fatal(u16, u32, String),
    /// Close without a termination request.
    Close(String),
}

impl Conn {
    fn rc(&self) -> Option<Rc<Conn>> {
        self.me.upgrade()
    }

    fn fd(&self) -> i32 {
        self.link.fd()
    }

    /// Names the connection in log lines: peer, queue, controller.
    fn who(&self, st: &St) -> String {
        match (&st.ctrl, st.phase) {
            (Some(c), Phase::Io { qid }) => format!(
                "nvmf: queue {qid} of controller {} ({} -> {}) from {}",
                c.cntlid, c.hostnqn, c.subnqn, self.link.peer
            ),
            (Some(c), _) => format!(
                "nvmf: admin queue of controller {} ({} -> {}) from {}",
                c.cntlid, c.hostnqn, c.subnqn, self.link.peer
            ),
            _ => format!("nvmf: connection {} from {}", self.link.id, self.link.peer),
        }
    }

    /// Arms POLLOUT (`out`) or POLLIN unless armed or closed.
    fn arm(&self, st: &mut St, out: bool) {
        if st.closed {
            return;
        }
        if let Some(me) = self.rc() {
            st.polls.arm(&self.link.reactor, self.fd(), me, out);
        }
    }

    /// Closes the queue pair: no more reading or writing; commands without I/O
    /// in flight give their buffers back now, the others when it completes. An
    /// admin queue takes its controller (and so its I/O queues) with it.
    pub(crate) fn close(&self, why: &str) {
        let mut st = self.st.borrow_mut();
        if st.closed {
            return;
        }
        st.closed = true;
        log::info!("{} closed: {why}", self.who(&st));
        // Wakes pending polls.
        self.link.shutdown();
        st.waiting.clear();
        let keys: Vec<usize> = st.cmds.iter().map(|(k, _)| k).collect();
        for k in keys {
            if st.cmds[k].inflight == 0 {
                let c = st.cmds.remove(k);
                self.release(&mut st, c);
            } else {
                st.cmds[k].aborted = true;
            }
        }
        st.cids.clear();
        st.aers.clear();
        st.rx.release();
        let mut done = std::mem::take(&mut st.spare);
        st.out.discard(&mut done);
        for b in done {
            self.put_buf(&mut st, b);
        }
        for c in 0..CLASSES {
            self.sync_active(&mut st, c);
        }
        if let Some(ctrl) = st.ctrl.take() {
            match st.phase {
                Phase::Admin => self.shared.remove_ctrl(&ctrl),
                Phase::Io { qid } => ctrl.release_qid(qid),
                _ => {}
            }
        }
        drop(st);
        self.link
            .reactor
            .local::<Registry>()
            .conns
            .borrow_mut()
            .remove(&(self.link.fid, self.link.id));
    }

    fn release(&self, st: &mut St, mut c: Cmd) {
        if let Some(b) = c.buf.take() {
            self.put_buf(st, b);
        }
    }

    fn put_buf(&self, st: &mut St, b: PoolBuf) {
        let c = st.share.put(&self.link.reactor, b);
        st.need_serve = true;
        self.sync_active(st, c);
    }

    /// Tells the pool whether this connection uses class `c` (fair shares).
    fn sync_active(&self, st: &mut St, c: usize) {
        let waiting = !st.closed
            && st
                .waiting
                .iter()
                .any(|k| BufPool::class_for(st.cmds[*k].pool_len) == Some(c));
        st.share.sync(&self.link.reactor, c, waiting);
    }

    /// A pool buffer of `len` bytes within this connection's share, or None
    /// (then the connection is registered to be handed one when the pool
    /// has none, and the command waits).
    fn alloc_buf(&self, st: &mut St, len: usize) -> Option<PoolBuf> {
        if st.out.blocked_since().is_some() {
            return None;
        }
        let me: Rc<dyn BufWaiter> = self.rc()?;
        st.share.get(&self.link.reactor, len, Some(me))
    }

    /// Gives buffers to waiting commands, oldest first, while they can have them.
    fn serve_waiting(&self, st: &mut St) {
        st.need_serve = false;
        // Bounded: each round serves a command or stops.
        for _ in 0..st.waiting.len() {
            let Some(&key) = st.waiting.front() else {
                break;
            };
            let len = st.cmds[key].pool_len;
            match self.alloc_buf(st, len) {
                Some(b) => {
                    st.waiting.pop_front();
                    st.cmds[key].waiting = false;
                    self.got_buf(st, key, b);
                    self.advance(st, key);
                }
                None => break,
            }
        }
    }

    /// A command got its pool buffer: data received early moves into it.
    fn got_buf(&self, st: &mut St, key: usize, mut b: PoolBuf) {
        let c = &mut st.cmds[key];
        b.set_len(c.pool_len);
        if c.to_pool && !c.vdata.is_empty() {
            let n = c.vdata.len().min(b.len());
            b.bytes_mut()[..n].copy_from_slice(&c.vdata[..n]);
            c.vdata = Vec::new();
        }
        c.buf = Some(b);
    }

    fn after(&self, st: &mut St) {
        if st.need_serve && !st.closed {
            self.serve_waiting(st);
        }
    }

    fn tick(&self, now: Instant) {
        let why = {
            let mut st = self.st.borrow_mut();
            if st.closed {
                return;
            }
            // Commands still waiting for a buffer try again (also when the pool's
            // waiter queue was full and nobody will hand this connection a chunk).
            if !st.waiting.is_empty() {
                st.need_serve = true;
            }
            self.expire_pr(&mut st, now);
            self.poll_preempts(&mut st);
            self.expired(&st, now)
        };
        match why {
            Some(w) => self.close(&w),
            None => self.flush(),
        }
    }

    /// Why the connection must go now, if it must.
    fn expired(&self, st: &St, now: Instant) -> Option<String> {
        if let Some(since) = st.out.blocked_since() {
            if now.saturating_duration_since(since) > SEND_TIMEOUT {
                return Some(format!(
                    "the host read nothing for {} s (blocked on send)",
                    SEND_TIMEOUT.as_secs()
                ));
            }
        }
        let Some(ctrl) = &st.ctrl else {
            if now.saturating_duration_since(st.started) > CONNECT_TIMEOUT {
                return Some(format!(
                    "no ICReq and Connect within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ));
            }
            return None;
        };
        if ctrl.dead.load(Ordering::Acquire) {
            return Some("its controller is gone".into());
        }
        match st.phase {
            Phase::Admin => {
                let kato = u64::from(ctrl.kato_ms.load(Ordering::Acquire));
                let last = ctrl.last_ka_ms.load(Ordering::Acquire);
                let idle = self.shared.now_ms().saturating_sub(last);
                if kato > 0 && idle > kato * KATO_FACTOR {
                    return Some(format!(
                        "keep alive timeout: no Keep Alive for {idle} ms (KATO {kato} ms); controller dropped, its commands aborted"
                    ));
                }
            }
            Phase::Io { .. } if ctrl.io_epoch.load(Ordering::Acquire) != st.io_epoch => {
                return Some("its controller was disabled or shut down".into());
            }
            _ => {}
        }
        None
    }

    /// Reads a batch from the socket and handles the PDUs that arrived.
    fn on_readable(&self) {
        let res = {
            let mut st = self.st.borrow_mut();
            if st.closed {
                return;
            }
            let res = RecvBuf::read_batch(
                self.fd(),
                &mut *st,
                "the host closed the connection",
                |st| &mut st.rx,
                |st| st.pending_out() > WBUF_HIGH_BYTES || st.close_after_flush,
                |st| self.process(st),
            );
            if res.is_ok() {
                if !st.close_after_flush && st.pending_out() <= WBUF_HIGH_BYTES {
                    // Data may be left in the socket, or more comes: come back.
                    self.arm(&mut st, false);
                }
                self.after(&mut st);
            }
            res
        };
        match res {
            Ok(()) => self.flush(),
            Err(w) => self.close(&w),
        }
    }

    /// Parses and handles every complete PDU in the receive buffer.
    fn process(&self, st: &mut St) -> Result<(), String> {
        let rx = std::mem::take(&mut st.rx);
        let res = self.process_buf(st, rx.data());
        st.rx = rx;
        st.rx.consume(res?);
        Ok(())
    }

    fn process_buf(&self, st: &mut St, rbuf: &[u8]) -> Result<usize, String> {
        let mut pos = 0;
        while pos < rbuf.len() && !st.closed && !st.close_after_flush {
            let buf = &rbuf[pos..];
            let outcome = match pdu::parse(buf, st.dig, MAX_H2C_DATA_BYTES) {
                Ok(Parsed::Need(_)) => break,
                Ok(Parsed::Pdu(p)) => {
                    let n = p.wire_len;
                    let h = self.handle(st, &p);
                    pos += n;
                    h
                }
                Err(e) => {
                    let (f, i) = e.fes_fei();
                    Handled::Fatal(f, i, format!("bad PDU: {e}"))
                }
            };
            match outcome {
                Handled::Done => {}
                Handled::Close(w) => return Err(w),
                Handled::Fatal(f, i, w) => {
                    let echo = &buf[..buf.len().min(TERM_ECHO_BYTES)];
                    self.terminate(st, f, i, echo, &w);
                    break;
                }
            }
        }
        Ok(pos)
    }

    /// Sends a C2HTermReq and closes once it is out.
    fn terminate(&self, st: &mut St, fes: u16, fei: u32, echo: &[u8], why: &str) {
        log::warn!(
            "{}: {why}; terminating the connection (FES {fes:#x})",
            self.who(st)
        );
        let h = pdu::term_hdr(fes, fei);
        // A termination request carries no digests.
        let hpda = st.hpda;
        st.out
            .push(|v| pdu::encode(v, ty::C2H_TERM, 0, &h, echo, Digests::default(), hpda));
        st.close_after_flush = true;
    }

    fn handle(&self, st: &mut St, p: &PduView) -> Handled {
        match (p.ty, st.phase) {
            (ty::IC_REQ, Phase::AwaitIcReq) => self.handle_icreq(st, p),
            (ty::IC_REQ, _) | (_, Phase::AwaitIcReq) => Handled::Fatal(
                fes::SEQUENCE,
                0,
                format!("PDU type {:#04x} out of sequence", p.ty),
            ),
            (ty::H2C_TERM, _) => Handled::Close(format!(
                "the host terminated the connection (FES {:#x})",
                pdu::le16(p.hdr, 8)
            )),
            (ty::CAPSULE_CMD, _) => self.handle_capsule(st, p),
            (ty::H2C_DATA, _) => self.handle_h2c(st, p),
            _ => Handled::Fatal(fes::INVALID_HEADER_FIELD, 0, "unexpected PDU type".into()),
        }
    }

    fn handle_icreq(&self, st: &mut St, p: &PduView) -> Handled {
        let req = pdu::ic_req(p.hdr);
        if req.pfv != 0 {
            return Handled::Fatal(
                fes::UNSUPPORTED_PARAMETER,
                8,
                format!("ICReq PDU format version {}", req.pfv),
            );
        }
        if req.hpda > 31 {
            return Handled::Fatal(
                fes::UNSUPPORTED_PARAMETER,
                10,
                format!("ICReq HPDA {}", req.hpda),
            );
        }
        let resp = pdu::ic_resp(req.dig, MAX_H2C_DATA_BYTES as u32);
        st.out
            .push(|v| pdu::encode(v, ty::IC_RESP, 0, &resp, &[], Digests::default(), 0));
        st.dig = req.dig;
        st.hpda = req.hpda;
        st.maxr2t = (req.maxr2t as usize).saturating_add(1).min(MAX_R2T_PER_CMD);
        st.phase = Phase::AwaitConnect;
        Handled::Done
    }

    /// A command capsule: admitted to the queue, its data laid out (in the
    /// capsule or through R2T), then run as far as it can go.
    fn handle_capsule(&self, st: &mut St, p: &PduView) -> Handled {
        let sqe = Sqe::from_slice(&p.hdr[pdu::CH_LEN..]);
        let cid = sqe.cid();
        if let Err(fatal) = self.admit_capsule(st, cid) {
            return fatal;
        }
        if p.data_digest_bad {
            log::warn!(
                "{}: data digest error on command {cid}; failed with a transient transport error",
                self.who(st)
            );
            st.respond(cid, Status::TRANSIENT_TRANSPORT, 0, 0);
            return Handled::Done;
        }
        match self.prepare_cmd(st, sqe, p.data) {
            Ok(cmd) => {
                let to_pool = cmd.to_pool && !p.data.is_empty();
                let key = st.cmds.insert(cmd);
                st.cids.insert(cid, key);
                if to_pool {
                    self.place_capsule_data(st, key, p.data);
                }
                self.advance(st, key);
            }
            Err(s) => st.respond(cid, s, 0, 0),
        }
        Handled::Done
    }

    /// A new command `cid` is admitted: its id is free and the queue has room
    /// (else a fatal transport error); the SQ head moves.
    fn admit_capsule(&self, st: &mut St, cid: u16) -> Result<(), Handled> {
        if st.cids.contains_key(&cid) {
            return Err(Handled::Fatal(
                fes::INVALID_HEADER_FIELD,
                10,
                format!("command id {cid} is already in use"),
            ));
        }
        if st.cmds.len() as u32 >= st.entries {
            return Err(Handled::Fatal(
                fes::SEQUENCE,
                0,
                format!("more than {} commands outstanding (SQ size)", st.entries),
            ));
        }
        st.sqhd = (st.sqhd + 1) % st.entries.max(1);
        if let Some(c) = &st.ctrl {
            c.stats.commands.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The command for `sqe` with capsule data `data`: its data layout, its
    /// I/O plan on an I/O queue and room for its host data; or the status it
    /// fails with at once.
    fn prepare_cmd(&self, st: &mut St, sqe: Sqe, data: &[u8]) -> Result<Cmd, Status> {
        // The data of the command: in the capsule or through R2T, by direction.
        let (need, inline) = self.data_layout(&sqe, data, sqe.direction())?;
        let is_connect = sqe.opcode() == admin_op::FABRICS && sqe.fctype() == fctype::CONNECT;
        if st.phase == Phase::AwaitConnect && !is_connect {
            return Err(Status::SEQUENCE);
        }
        let mut cmd = Cmd::new(sqe, need);
        if let Phase::Io { .. } = st.phase {
            if !(is_connect || sqe.opcode() == admin_op::FABRICS) {
                if let Err(s) = self.plan_io(st, &mut cmd) {
                    self.fail_count(st);
                    return Err(s);
                }
            }
        }
        if !cmd.to_pool && need > MAX_ADMIN_DATA_BYTES {
            return Err(Status::SGL_LENGTH);
        }
        if inline {
            // Pool-bound data goes to the pool buffer (`place_capsule_data`).
            if !cmd.to_pool {
                cmd.vdata = data.to_vec();
            }
            cmd.got = need;
        } else if !cmd.to_pool {
            cmd.vdata = vec![0u8; need];
        }
        Ok(cmd)
    }

    /// Host data length and whether it is in the capsule, checked against the
    /// command's SGL.
    fn data_layout(&self, sqe: &Sqe, data: &[u8], dir: u8) -> Result<(usize, bool), Status> {
        let len = sqe.sgl_len() as usize;
        let t = sqe.sgl_type();
        if dir != 1 {
            if !data.is_empty() {
                return Err(Status::INVALID_FIELD);
            }
            if dir == 2 && len > 0 && t != sgl::TRANSPORT {
                return Err(Status::SGL_TYPE);
            }
            return Ok((0, false));
        }
        match t {
            sgl::IN_CAPSULE => {
                if sqe.sgl_addr() != 0 || data.len() != len || len > IN_CAPSULE_DATA_BYTES {
                    return Err(Status::SGL_LENGTH);
                }
                Ok((len, true))
            }
            sgl::TRANSPORT => {
                if !data.is_empty() {
                    return Err(Status::SGL_LENGTH);
                }
                Ok((len, false))
            }
            _ if len == 0 && data.is_empty() => Ok((0, false)),
            _ => Err(Status::SGL_TYPE),
        }
    }

    fn refresh_sub(&self, st: &mut St) {
        let gen = self.shared.generation();
        if st.sub_gen != gen {
            st.sub_gen = gen;
            st.sub = st
                .ctrl
                .as_ref()
                .and_then(|c| self.shared.subsystem(&c.subnqn));
        }
    }

    /// Decodes an I/O command: its namespace, its plan, where its data goes.
    fn plan_io(&self, st: &mut St, cmd: &mut Cmd) -> Result<(), Status> {
        self.refresh_sub(st);
        let ns = st
            .sub
            .as_ref()
            .and_then(|s| s.namespaces.get(&cmd.sqe.nsid()).cloned())
            .ok_or(Status::INVALID_NS)?;
        let plan = io::decode(&cmd.sqe, &ns)?;
        let host = plan.host_data_len() as usize;
        let to_host = plan.ctrl_data_len() as usize;
        if cmd.need != host {
            return Err(Status::SGL_LENGTH);
        }
        if to_host > 0 && (cmd.sqe.sgl_len() as usize) < to_host {
            return Err(Status::SGL_LENGTH);
        }
        match plan {
            IoPlan::Read { len, .. } | IoPlan::Compare { len, .. } => cmd.pool_len = len as usize,
            IoPlan::Write { len, .. } => {
                cmd.pool_len = len as usize;
                cmd.to_pool = true;
            }
            _ => {}
        }
        debug_assert!(cmd.pool_len <= MAX_TRANSFER_BYTES);
        cmd.ns = Some(ns);
        cmd.plan = Some(plan);
        Ok(())
    }

    /// In-capsule write data: copied once, into the command's pool buffer, or
    /// aside (into `vdata`, moved by `got_buf`) while the command waits for one.
    fn place_capsule_data(&self, st: &mut St, key: usize, data: &[u8]) {
        if self.take_buf(st, key) {
            if let Some(b) = st.cmds[key].buf.as_mut() {
                let n = data.len().min(b.len());
                b.bytes_mut()[..n].copy_from_slice(&data[..n]);
            }
        } else {
            st.cmds[key].vdata = data.to_vec();
        }
    }

    /// Gives command `key` its pool buffer if it needs one: true when it has
    /// what it needs, false when it waits (queued behind earlier waiters, in
    /// arrival order).
    fn take_buf(&self, st: &mut St, key: usize) -> bool {
        let c = &st.cmds[key];
        if c.waiting {
            return false;
        }
        if c.pool_len == 0 || c.buf.is_some() {
            return true;
        }
        let b = if st.waiting.is_empty() {
            self.alloc_buf(st, c.pool_len)
        } else {
            None
        };
        match b {
            Some(b) => {
                self.got_buf(st, key, b);
                true
            }
            None => {
                st.cmds[key].waiting = true;
                st.waiting.push_back(key);
                let class = BufPool::class_for(st.cmds[key].pool_len).unwrap_or(0);
                self.sync_active(st, class);
                false
            }
        }
    }

    /// Moves a command on: pool buffer, then host data (R2T), then execution.
    fn advance(&self, st: &mut St, key: usize) {
        if !self.take_buf(st, key) {
            return;
        }
        let c = &st.cmds[key];
        if c.got < c.need && !(c.preempted && c.n_r2t == 0) {
            // A preempted command asks for no more data: it ends once the data
            // of its R2Ts outstanding is in.
            if !c.preempted {
                self.send_r2ts(st, key);
            }
            return;
        }
        self.execute(st, key);
    }

    /// Sends R2Ts for the host data not yet asked for, each for at most
    /// [`MAX_R2T_DATA_BYTES`], while the command has fewer than the host's
    /// MAXR2T outstanding.
    fn send_r2ts(&self, st: &mut St, key: usize) {
        for _ in 0..MAX_R2T_PER_CMD {
            let c = &st.cmds[key];
            if c.n_r2t >= st.maxr2t || c.r2t_off >= c.need {
                return;
            }
            let ttag = st.next_ttag;
            st.next_ttag = st.next_ttag.wrapping_add(1).max(1);
            let c = &mut st.cmds[key];
            let (off, len) = (c.r2t_off, (c.need - c.r2t_off).min(MAX_R2T_DATA_BYTES));
            c.r2ts[c.n_r2t] = R2t {
                ttag,
                off,
                len,
                got: 0,
            };
            c.n_r2t += 1;
            c.r2t_off += len;
            let h = pdu::data_hdr(c.sqe.cid(), ttag, off as u32, len as u32);
            st.emit(ty::R2T, 0, &h, &[]);
        }
    }

    fn handle_h2c(&self, st: &mut St, p: &PduView) -> Handled {
        let cccid = pdu::le16(p.hdr, 8);
        let ttag = pdu::le16(p.hdr, 10);
        let datao = pdu::le32(p.hdr, 12) as usize;
        let datal = pdu::le32(p.hdr, 16) as usize;
        let Some(&key) = st.cids.get(&cccid) else {
            return Handled::Fatal(
                fes::INVALID_HEADER_FIELD,
                8,
                format!("H2CData for unknown command {cccid}"),
            );
        };
        if p.data_digest_bad {
            return Handled::Fatal(
                fes::INVALID_HEADER_FIELD,
                0,
                format!("data digest error in H2CData of command {cccid}"),
            );
        }
        let c = &mut st.cmds[key];
        let Some(i) = c.r2ts[..c.n_r2t].iter().position(|r| r.ttag == ttag) else {
            return Handled::Fatal(
                fes::INVALID_HEADER_FIELD,
                10,
                format!("H2CData of command {cccid} with transfer tag {ttag} that no R2T outstanding gave"),
            );
        };
        let r = c.r2ts[i];
        if datal != p.data.len() || datao != r.off + r.got || datao + datal > r.off + r.len {
            return Handled::Fatal(
                fes::DATA_OUT_OF_RANGE,
                12,
                format!(
                    "H2CData of command {cccid}: offset {datao} length {datal} (data {}), expected offset {} within the R2T (tag {ttag}) for {} at {}",
                    p.data.len(),
                    r.off + r.got,
                    r.len,
                    r.off
                ),
            );
        }
        if c.to_pool {
            match c.buf.as_mut() {
                Some(b) => b.bytes_mut()[datao..datao + datal].copy_from_slice(p.data),
                None => {
                    return Handled::Fatal(fes::SEQUENCE, 0, "H2CData before its buffer".into())
                }
            }
        } else {
            c.vdata[datao..datao + datal].copy_from_slice(p.data);
        }
        c.got += datal;
        c.r2ts[i].got += datal;
        if c.r2ts[i].got == r.len {
            // This R2T is answered: the next one may go (or the command runs).
            c.n_r2t -= 1;
            c.r2ts.swap(i, c.n_r2t);
            self.advance(st, key);
        }
        Handled::Done
    }

    fn fail_count(&self, st: &St) {
        if let Some(c) = &st.ctrl {
            c.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Finishes a command that moved no bdev I/O: removes it and responds.
    fn finish_now(&self, st: &mut St, key: usize, status: Status, dw0: u32, dw1: u32, data: &[u8]) {
        let c = st.cmds.remove(key);
        st.cids.remove(&c.sqe.cid());
        if !status.ok() {
            self.fail_count(st);
        }
        if status.ok() && !data.is_empty() {
            let n = data.len().min(c.sqe.sgl_len() as usize);
            st.c2h_copy(c.sqe.cid(), &data[..n]);
        }
        st.respond(c.sqe.cid(), status, dw0, dw1);
        self.release(st, c);
    }

    fn execute(&self, st: &mut St, key: usize) {
        if st.cmds[key].preempted {
            let s = st.cmds[key].status;
            return self.finish_now(st, key, s, 0, 0, &[]);
        }
        let sqe = st.cmds[key].sqe;
        if sqe.opcode() == admin_op::FABRICS && sqe.fctype() == fctype::CONNECT {
            return self.connect(st, key);
        }
        match st.phase {
            Phase::Admin => self.execute_admin(st, key),
            Phase::Io { .. } => {
                if sqe.opcode() == admin_op::FABRICS {
                    if sqe.fctype() == fctype::DISCONNECT {
                        self.finish_now(st, key, Status::SUCCESS, 0, 0, &[]);
                        st.close_after_flush = true;
                    } else {
                        self.finish_now(st, key, Status::INVALID_OPCODE, 0, 0, &[]);
                    }
                    return;
                }
                self.execute_io(st, key);
            }
            _ => self.finish_now(st, key, Status::SEQUENCE, 0, 0, &[]),
        }
    }

    /// A Connect command: the admin queue (a new controller) or an I/O queue
    /// of a controller this host owns.
    fn connect(&self, st: &mut St, key: usize) {
        let cmd = &st.cmds[key];
        let req = match admin::parse_connect(&cmd.sqe, &cmd.vdata) {
            Ok(r) => r,
            Err((s, dw0)) => {
                return self.connect_failed(st, key, (s, dw0, "malformed Connect".into()))
            }
        };
        if st.phase != Phase::AwaitConnect {
            return self.finish_now(st, key, Status::SEQUENCE, 0, 0, &[]);
        }
        match self.connect_queue(st, &req) {
            Ok(cntlid) => self.finish_now(st, key, Status::SUCCESS, u32::from(cntlid), 0, &[]),
            Err(refused) => self.connect_failed(st, key, refused),
        }
    }

    /// Checks the host and sizes the queue, then connects it; the controller id.
    fn connect_queue(&self, st: &mut St, req: &admin::ConnectReq) -> Result<u16, Refused> {
        self.connect_allowed(req)?;
        st.entries = u32::from(req.sqsize) + 1;
        st.sqhd %= st.entries;
        st.sqfc_off = req.cattr & 0x04 != 0;
        if req.qid == 0 {
            self.connect_admin(st, req)
        } else {
            self.connect_io(st, req)
        }
    }

    /// The subsystem exists (or is discovery) and lets the host in.
    fn connect_allowed(&self, req: &admin::ConnectReq) -> Result<(), Refused> {
        let sub = if req.subnqn == DISCOVERY_NQN {
            None
        } else {
            let Some(s) = self.shared.subsystem(&req.subnqn) else {
                let why = format!("Connect to unknown subsystem {}", req.subnqn);
                return Err((Status::CONNECT_INVALID, admin::invalid_data_field(256), why));
            };
            Some(s)
        };
        if req.hostnqn.is_empty() {
            let why = "Connect without a host NQN".to_string();
            return Err((Status::CONNECT_INVALID, admin::invalid_data_field(512), why));
        }
        if let Some(s) = &sub {
            if !s.allows(&req.hostnqn) {
                let why = format!("host {} is not allowed on {}", req.hostnqn, req.subnqn);
                return Err((Status::CONNECT_HOST, 0, why));
            }
        }
        Ok(())
    }

    /// An admin queue Connect: a new controller (dynamic model) owns this queue.
    fn connect_admin(&self, st: &mut St, req: &admin::ConnectReq) -> Result<u16, Refused> {
        if req.cntlid != 0xffff && req.cntlid != 0xfffe {
            let why = "admin Connect for a static controller id".to_string();
            return Err((Status::CONNECT_INVALID, admin::invalid_data_field(16), why));
        }
        let at = QueueAt {
            reactor: self.link.reactor.id(),
            conn: self.link.id,
        };
        let now = self.shared.now_ms();
        let (local, peer) = (self.link.local, self.link.peer.to_string());
        let made = self.shared.add_ctrl(
            |id| {
                Ctrl::new(
                    id,
                    &req.subnqn,
                    &req.hostnqn,
                    req.hostid,
                    req.kato_ms,
                    at,
                    local,
                    peer,
                    now,
                    MAX_IO_QUEUES,
                )
            },
            &req.subnqn,
        );
        let Some(ctrl) = made else {
            let why = "no controller id free in this node's range".to_string();
            return Err((Status::CONNECT_BUSY, 0, why));
        };
        let cntlid = ctrl.cntlid;
        st.ctrl = Some(ctrl);
        st.phase = Phase::Admin;
        log::info!(
            "{}: connected (KATO {} ms, SQ size {}, digests {:?})",
            self.who(st),
            req.kato_ms,
            st.entries,
            st.dig
        );
        Ok(cntlid)
    }

    /// An I/O queue Connect: a granted queue of an enabled controller the host owns.
    fn connect_io(&self, st: &mut St, req: &admin::ConnectReq) -> Result<u16, Refused> {
        let is_disc = req.subnqn == DISCOVERY_NQN;
        let ctrl = match self.shared.ctrl(&req.subnqn, req.cntlid) {
            Some(c) if !is_disc && c.hostnqn == req.hostnqn => c,
            _ => {
                let why = format!(
                    "I/O queue Connect for controller {} of {} that host {} does not own",
                    req.cntlid, req.subnqn, req.hostnqn
                );
                return Err((Status::CONNECT_INVALID, admin::invalid_data_field(16), why));
            }
        };
        if !ctrl.enabled() {
            let why = "I/O queue Connect before the controller was enabled".to_string();
            return Err((Status::SEQUENCE, 0, why));
        }
        if !ctrl.claim_qid(req.qid, self.link.reactor.id()) {
            let why = format!("I/O queue {} is connected already or not granted", req.qid);
            return Err((Status::CONNECT_INVALID, 42, why));
        }
        st.io_epoch = ctrl.io_epoch.load(Ordering::Acquire);
        let cntlid = ctrl.cntlid;
        st.ctrl = Some(ctrl);
        st.phase = Phase::Io { qid: req.qid };
        log::debug!(
            "{}: connected on reactor {}",
            self.who(st),
            self.link.reactor.id()
        );
        Ok(cntlid)
    }

    /// Answers a refused Connect with its status and logs why.
    fn connect_failed(&self, st: &mut St, key: usize, (s, dw0, why): Refused) {
        log::warn!("{}: Connect refused: {why}", self.who(st));
        self.finish_now(st, key, s, dw0, 0, &[]);
    }

    fn execute_admin(&self, st: &mut St, key: usize) {
        let Some(ctrl) = st.ctrl.clone() else {
            return self.finish_now(st, key, Status::SEQUENCE, 0, 0, &[]);
        };
        let sqe = st.cmds[key].sqe;
        if sqe.opcode() == admin_op::FABRICS && sqe.fctype() == fctype::PROPERTY_SET {
            let (done, change) = admin::property_set(&ctrl, &sqe);
            match change {
                CcChange::Enabled => log::debug!("{}: enabled", self.who(st)),
                CcChange::Disabled => log::info!("{}: disabled (reset)", self.who(st)),
                CcChange::Shutdown => log::info!("{}: shut down", self.who(st)),
                CcChange::None => {}
            }
            return self.reply(st, key, done);
        }
        let fenced = sqe.opcode() == admin_op::GET_LOG_PAGE
            && sqe.cdw(10) as u8 == admin::LID_ANA
            && self.fenced_here(&ctrl);
        let done = admin::execute(&self.shared, &ctrl, &sqe, st.aers.len(), fenced);
        self.reply(st, key, done);
        // Reading a log may have raised an event (reservation notices left).
        self.deliver(st);
    }

    /// Whether this reactor must not serve a namespace of `ctrl`'s subsystem now
    /// (a shared volume fenced by the data-plane lease), as I/O to it would fail
    /// with the ANA-inaccessible path error.
    fn fenced_here(&self, ctrl: &Ctrl) -> bool {
        let Some(sub) = self.shared.subsystem(&ctrl.subnqn) else {
            return false;
        };
        sub.namespaces.values().any(|ns| {
            self.link
                .reactor
                .channel(&ns.bdev)
                .is_ok_and(|ch| ch.unavailable())
        })
    }

    fn reply(&self, st: &mut St, key: usize, done: AdminDone) {
        match done {
            AdminDone::Reply {
                status,
                dw0,
                dw1,
                data,
            } => self.finish_now(st, key, status, dw0, dw1, &data),
            AdminDone::Disconnect => {
                self.finish_now(st, key, Status::SUCCESS, 0, 0, &[]);
                st.close_after_flush = true;
            }
            AdminDone::HoldAer => {
                let c = st.cmds.remove(key);
                st.cids.remove(&c.sqe.cid());
                st.aers.push(c.sqe.cid());
                self.deliver(st);
            }
        }
    }

    /// Completes held AERs with pending events.
    fn deliver(&self, st: &mut St) {
        let Some(ctrl) = st.ctrl.clone() else { return };
        if st.closed {
            return;
        }
        while !st.aers.is_empty() {
            let Some(ev) = ctrl.pop_aen() else { break };
            let cid = st.aers.remove(0);
            st.respond(cid, Status::SUCCESS, ev, 0);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        st: &mut St,
        ch: &Rc<dyn BdevChannel>,
        key: usize,
        kind: IoKind,
        off: u64,
        len: u64,
        buf: IoBuf,
    ) {
        let Some(me) = self.rc() else { return };
        let c = &mut st.cmds[key];
        c.inflight += 1;
        ch.submit(BdevIo {
            kind,
            offset_bytes: off,
            len_bytes: len,
            buf,
            cb: IoCallback::new(me, key as u64),
        });
    }

    fn execute_io(&self, st: &mut St, key: usize) {
        let (Some(plan), Some(ns)) = (st.cmds[key].plan, st.cmds[key].ns.clone()) else {
            return self.finish_now(st, key, Status::INTERNAL, 0, 0, &[]);
        };
        let ch = match self.link.reactor.channel(&ns.bdev) {
            Ok(ch) => ch,
            Err(e) => {
                log::error!(
                    "nvmf: namespace {} (bdev {}): no channel on reactor {}: {e}",
                    ns.conf.nsid,
                    ns.conf.bdev,
                    self.link.reactor.id()
                );
                return self.finish_now(st, key, Status::INTERNAL, 0, 0, &[]);
            }
        };
        // A path this node must not serve now: ANA inaccessible or the lease
        // fenced the volume on this reactor. Linux fails over on this status.
        if ch.unavailable() || self.shared.ana_state() == AnaState::Inaccessible {
            return self.finish_now(st, key, Status::ANA_INACCESSIBLE, 0, 0, &[]);
        }
        if let IoPlan::Resv { opcode, .. } = plan {
            return self.execute_resv(st, key, &ns, opcode);
        }
        if ns.resv.active() {
            let access = resv::access(st.cmds[key].sqe.opcode());
            if self
                .nexus(st)
                .is_some_and(|n| ns.resv.conflicts(&n, access))
            {
                return self.finish_now(st, key, Status::RESERVATION_CONFLICT, 0, 0, &[]);
            }
        }
        let buf = st.cmds[key].buf.as_ref().map(|b| b.io());
        match plan {
            IoPlan::Read { off, len } | IoPlan::Compare { off, len } => self.submit(
                st,
                &ch,
                key,
                IoKind::Read,
                off,
                len,
                buf.unwrap_or(IoBuf::empty()),
            ),
            IoPlan::Write { off, len } => self.submit(
                st,
                &ch,
                key,
                IoKind::Write,
                off,
                len,
                buf.unwrap_or(IoBuf::empty()),
            ),
            IoPlan::Flush => self.submit(st, &ch, key, IoKind::Flush, 0, 0, IoBuf::empty()),
            IoPlan::WriteZeroes { off, len } => {
                self.submit(st, &ch, key, IoKind::WriteZeroes, off, len, IoBuf::empty())
            }
            IoPlan::Resv { .. } => {}
            IoPlan::Dsm { deallocate, .. } => {
                if !deallocate {
                    return self.finish_now(st, key, Status::SUCCESS, 0, 0, &[]);
                }
                let ranges = match io::dsm_ranges(&st.cmds[key].vdata, &ns) {
                    Ok(r) => r,
                    Err(s) => return self.finish_now(st, key, s, 0, 0, &[]),
                };
                for (off, len) in ranges {
                    self.submit(st, &ch, key, IoKind::Unmap, off, len, IoBuf::empty());
                }
            }
        }
        if st.cmds[key].inflight == 0 {
            let s = st.cmds[key].status;
            self.finish_now(st, key, s, 0, 0, &[]);
        }
    }

    /// The reservation nexus of this queue's host.
    fn nexus(&self, st: &mut St) -> Option<Nexus> {
        if st.nexus.is_none() {
            st.nexus = st.ctrl.as_ref().map(|c| resv::nexus(&c.hostnqn, &c.hostid));
        }
        st.nexus.clone()
    }

    /// A reservation command: Report answers from the state; a change runs on the
    /// namespace's own state, or goes to the cluster for a shared volume.
    fn execute_resv(&self, st: &mut St, key: usize, ns: &Arc<Namespace>, opcode: u8) {
        let Some(nexus) = self.nexus(st) else {
            return self.finish_now(st, key, Status::SEQUENCE, 0, 0, &[]);
        };
        let sqe = st.cmds[key].sqe;
        let state = ns.resv.state();
        if opcode == io_op::RESV_REPORT {
            let (len, extended) = resv::report_params(&sqe);
            let mut d = resv::report(&state, extended);
            // Exactly what the host asked: cut, or padded with zeroes.
            d.resize(len as usize, 0);
            return self.finish_now(st, key, Status::SUCCESS, 0, 0, &d);
        }
        let who = nexus.to_string();
        let what = || {
            format!(
                "namespace {} (bdev {}): reservation command {opcode:#04x} by {who}",
                ns.conf.nsid, ns.conf.bdev
            )
        };
        let out = match resv::to_pr_out(&state, &nexus, &sqe, &st.cmds[key].vdata) {
            Ok(Some(o)) => o,
            Ok(None) => return self.finish_now(st, key, Status::SUCCESS, 0, 0, &[]),
            Err(s) => return self.finish_now(st, key, s, 0, 0, &[]),
        };
        let Some(broker) = ns.resv.broker().cloned() else {
            return match ns.resv.run_local(&nexus, &out, &what()) {
                Ok(changed) => self.resv_changed(st, key, ns, changed),
                Err(s) => self.finish_now(st, key, s, 0, 0, &[]),
            };
        };
        // A shared volume: run it on a copy of the committed state; a change
        // becomes a request the cluster commits (pr_cluster).
        let mut copy = state.clone();
        match resv::run(&mut copy, &nexus, &out) {
            Ok(true) => {}
            Ok(false) => return self.finish_now(st, key, Status::SUCCESS, 0, 0, &[]),
            Err(s) => return self.finish_now(st, key, s, 0, 0, &[]),
        }
        if st.cmds[key].pr_tries >= PR_OUT_TRIES {
            log::warn!(
                "nvmf: {}: the reservations changed under it {PR_OUT_TRIES} times; the host retries",
                what()
            );
            return self.finish_now(st, key, Status::NS_NOT_READY, 0, 0, &[]);
        }
        st.cmds[key].pr_tries += 1;
        let tag = st.next_pr_tag;
        st.next_pr_tag = st.next_pr_tag.wrapping_add(1).max(1);
        let req = PrOutRequest {
            volume: ns.conf.bdev.clone(),
            nexus,
            sa: out.sa,
            scope_type: out.scope_type,
            param: out.param,
        };
        let done: Weak<dyn PrDone> = self.me.clone();
        match broker.forward(&self.link.reactor, req, done, tag) {
            Ok(id) => {
                st.cmds[key].pr = Some(PrWait {
                    tag,
                    id,
                    since: Instant::now(),
                })
            }
            Err(e) => {
                log::warn!("nvmf: {}: cannot go to the cluster: {e}", what());
                self.finish_now(st, key, Status::NS_NOT_READY, 0, 0, &[]);
            }
        }
    }

    /// Fails the reservation changes the cluster did not answer within
    /// [`PR_OUT_TIMEOUT`] (retryable status).
    fn expire_pr(&self, st: &mut St, now: Instant) {
        let late: Vec<usize> = st
            .cmds
            .iter()
            .filter(|(_, c)| {
                c.pr.as_ref()
                    .is_some_and(|p| now.saturating_duration_since(p.since) > PR_OUT_TIMEOUT)
            })
            .map(|(k, _)| k)
            .collect();
        for key in late {
            let c = &mut st.cmds[key];
            if let (Some(p), Some(ns)) = (c.pr.take(), c.ns.clone()) {
                if let Some(b) = ns.resv.broker() {
                    b.cancel(&self.link.reactor, p.id);
                }
                log::warn!(
                    "nvmf: namespace {} (bdev {}): the cluster did not answer reservation command {:#04x} within {} s; the host retries",
                    ns.conf.nsid,
                    ns.conf.bdev,
                    c.sqe.opcode(),
                    PR_OUT_TIMEOUT.as_secs()
                );
            }
            self.finish_now(st, key, Status::NS_NOT_READY, 0, 0, &[]);
        }
    }

    /// A changing reservation command changed the state: the hosts it concerns
    /// get their notifications, the preempted hosts' commands are aborted (a
    /// preempt and abort), then it completes.
    fn resv_changed(&self, st: &mut St, key: usize, ns: &Arc<Namespace>, changed: resv::Changed) {
        self.resv_notify(ns, &changed.notices);
        let pa =
            st.cmds[key].sqe.opcode() == io_op::RESV_ACQUIRE && st.cmds[key].sqe.cdw(10) & 7 == 2;
        if pa {
            self.start_preempt_abort(st, key, ns, changed.removed)
        } else {
            self.finish_now(st, key, Status::SUCCESS, 0, 0, &[])
        }
    }

    /// Queues reservation notifications (log 80h) on this node's controllers
    /// of the hosts they are for, on every namespace sharing `ns`'s state (the
    /// namespace itself; for a cluster's volume every namespace mapping it), and
    /// raises "reservation log page available" where none is outstanding.
    fn resv_notify(&self, ns: &Arc<Namespace>, notices: &[(Nexus, u8)]) {
        let shares = |x: &Arc<Namespace>| {
            Arc::ptr_eq(x, ns) || (ns.resv.broker().is_some() && x.conf.bdev == ns.conf.bdev)
        };
        for c in super::queue_resv_notices(&self.shared, shares, notices) {
            self.kick_admin(&c);
        }
    }

    /// Asks controller `c`'s admin queue to deliver its pending events.
    fn kick_admin(&self, c: &Ctrl) {
        let (fid, at) = (self.link.fid, c.admin);
        let Some(h) = self.link.reactor.peers().get(at.reactor) else {
            return;
        };
        let msg: crate::reactor::Msg = Box::new(move |r| deliver_aens(r, fid, at.conn));
        if h.try_send(msg).is_err() {
            log::warn!(
                "nvmf: controller {} of {}: reservation notice not delivered now (reactor {} busy); it waits for the next AER",
                c.cntlid,
                c.subnqn,
                at.reactor
            );
        }
    }

    /// A changing reservation command is done; a preempt and abort that removed
    /// registrants (`gone`) first aborts their commands on every reactor and
    /// completes once none of them is at a bdev (`preempt`).
    fn start_preempt_abort(&self, st: &mut St, key: usize, ns: &Namespace, gone: Vec<Nexus>) {
        if gone.is_empty() {
            return self.finish_now(st, key, Status::SUCCESS, 0, 0, &[]);
        }
        log::info!(
            "{}: preempt and abort on namespace {} (bdev {}): aborting the commands of {} on this node",
            self.who(st),
            ns.conf.nsid,
            ns.conf.bdev,
            gone.iter().map(|n| n.initiator.as_str()).collect::<Vec<_>>().join(", ")
        );
        let fns = (ABORT_PREEMPTED, preempt_done as DoneFn);
        st.cmds[key].pa = Some(PaWait::start(&self.link, fns, &ns.conf.bdev, gone));
    }

    /// Resends aborts that did not fit in a reactor's ring and completes the
    /// preempt and abort Acquires whose aborted commands are all done.
    fn poll_preempts(&self, st: &mut St) {
        let keys: Vec<usize> = st
            .cmds
            .iter()
            .filter(|(_, c)| c.pa.is_some())
            .map(|(k, _)| k)
            .collect();
        for key in keys {
            let Some(w) = st.cmds[key].pa.as_mut() else {
                continue;
            };
            if w.poll(&self.link.reactor) {
                self.finish_now(st, key, Status::SUCCESS, 0, 0, &[]);
            }
        }
    }

    /// Every bdev I/O of the command is done: send data and the response.
    fn complete(&self, st: &mut St, key: usize) {
        let mut c = st.cmds.remove(key);
        let cid = c.sqe.cid();
        st.cids.remove(&cid);
        let mut status = c.status;
        let ctrl = st.ctrl.clone();
        match c.plan {
            Some(IoPlan::Read { len, .. }) if status.ok() => {
                if let Some(ct) = &ctrl {
                    ct.stats.read_bytes.fetch_add(len, Ordering::Relaxed);
                }
                if let Some(b) = c.buf.take() {
                    let success = st.sqfc_off;
                    st.c2h_pool(cid, b, len as usize, success);
                    if success {
                        return;
                    }
                }
            }
            Some(IoPlan::Compare { len, .. }) if status.ok() => {
                let same = c
                    .buf
                    .as_ref()
                    .is_some_and(|b| b.bytes()[..len as usize] == c.vdata[..len as usize]);
                if !same {
                    status = Status::COMPARE_FAILURE;
                }
            }
            Some(IoPlan::Write { len, .. }) if status.ok() => {
                if let Some(ct) = &ctrl {
                    ct.stats.write_bytes.fetch_add(len, Ordering::Relaxed);
                }
            }
            _ => {}
        }
        if !status.ok() {
            self.fail_count(st);
        }
        st.respond(cid, status, 0, 0);
        self.release(st, c);
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
            let (sent, unblocked) = st.out.send(self.fd(), &mut done);
            if unblocked.is_some() {
                // The socket drains again: waiting commands may get buffers.
                st.need_serve = true;
            }
            match sent {
                Sent::Done => {}
                Sent::Blocked => self.arm(&mut st, true),
                Sent::Failed(e) => close_now = Some(format!("write failed: {e}")),
            }
            if st.out.pending() == 0 && st.close_after_flush && close_now.is_none() {
                close_now = Some("connection ended (disconnect or termination)".into());
            }
            for b in done.drain(..) {
                self.put_buf(&mut st, b);
            }
            std::mem::swap(&mut done, &mut st.spare);
            if close_now.is_none() {
                self.after(&mut st);
                if st.out.pending() > 0 && st.out.blocked_since().is_none() {
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
        Registry::mark_dirty(&self.link.reactor, self, self.rc());
    }

    /// Reading stalled and may resume ([`Wire::resume`]): not closed or closing.
    fn may_resume(&self) -> bool {
        let st = self.st.borrow();
        !st.closed && !st.polls.read && !st.close_after_flush
    }
}

/// The status of a command whose bdev I/O failed with `errno`, when the errno
/// means more than a medium error: the data-plane lease ran out (logged once by
/// the target) is a path error the host fails over on; a full bounded queue of
/// the data plane ([`RETRY_ERRNO`]) is Command Interrupted, DNR clear, which the
/// host retries. None: a medium error (read error or write fault, logged).
fn io_errno_status(errno: i32) -> Option<Status> {
    match errno {
        FENCED_ERRNO => Some(Status::ANA_INACCESSIBLE),
        RETRY_ERRNO => Some(Status::COMMAND_INTERRUPTED),
        _ => None,
    }
}

transport::impl_wire!(Conn);

impl Preemptible for Conn {
    /// Marks the commands of this queue pair aborted when its host is one `pa`
    /// preempted: they end with "Command Aborted due to Preempt and Abort" (a
    /// command waiting for a buffer now, one waiting for host data when it is
    /// in, one at the bdev when its I/O completes, which `pa` waits for).
    fn abort_for(&self, pa: &Arc<PreemptAbort>) {
        {
            let mut st = self.st.borrow_mut();
            if st.closed || !matches!(st.phase, Phase::Io { .. }) {
                return;
            }
            if !self.nexus(&mut st).is_some_and(|n| pa.preempted(&n)) {
                return;
            }
            let keys: Vec<usize> = st
                .cmds
                .iter()
                .filter(|(_, c)| {
                    !c.preempted
                        && !matches!(c.plan, Some(IoPlan::Resv { .. }))
                        && c.ns.as_ref().is_some_and(|n| n.conf.bdev == pa.bdev)
                })
                .map(|(k, _)| k)
                .collect();
            for &key in &keys {
                let c = &mut st.cmds[key];
                c.preempted = true;
                c.status = Status::PREEMPT_ABORTED;
                if c.inflight > 0 {
                    pa.hold();
                    c.held_by = Some(Arc::clone(pa));
                } else if c.waiting {
                    let class = BufPool::class_for(c.pool_len).unwrap_or(0);
                    st.waiting.retain(|k| *k != key);
                    self.finish_now(&mut st, key, Status::PREEMPT_ABORTED, 0, 0, &[]);
                    self.sync_active(&mut st, class);
                }
            }
            if !keys.is_empty() {
                log::info!(
                    "{}: {} command(s) on bdev {} aborted by a preempt and abort",
                    self.who(&st),
                    keys.len(),
                    pa.bdev
                );
            }
            self.after(&mut st);
        }
        self.mark_dirty();
    }
}

impl IoDone for Conn {
    fn io_done(&self, tag: u64, status: IoStatus) {
        let key = tag as usize;
        {
            let mut st = self.st.borrow_mut();
            let Some(c) = st.cmds.get_mut(key) else {
                log::error!(
                    "nvmf: connection {}: completion for unknown command slot {key}",
                    self.link.id
                );
                return;
            };
            c.inflight = c.inflight.saturating_sub(1);
            if c.inflight == 0 {
                if let Some(pa) = c.held_by.take() {
                    pa.release(Some(&self.link.reactor));
                }
            }
            if let IoStatus::Failed(errno) = status {
                if c.status.ok() {
                    c.status = if let Some(s) = io_errno_status(errno) {
                        s
                    } else {
                        log::warn!(
                            "nvmf: namespace {}: command {:#04x} failed with errno {errno}",
                            c.sqe.nsid(),
                            c.sqe.opcode()
                        );
                        match c.plan {
                            Some(IoPlan::Read { .. }) | Some(IoPlan::Compare { .. }) => {
                                Status::READ_ERROR
                            }
                            _ => Status::WRITE_FAULT,
                        }
                    };
                }
            }
            if c.inflight > 0 {
                return;
            }
            if c.aborted || st.closed {
                let c = st.cmds.remove(key);
                self.release(&mut st, c);
                return;
            }
            self.complete(&mut st, key);
            self.after(&mut st);
        }
        self.mark_dirty();
        Wire::resume_if_stalled(self);
    }
}

impl PrDone for Conn {
    /// The cluster's answer to a reservation change this queue forwarded.
    fn pr_done(&self, tag: u64, result: PrOutResult) {
        {
            let mut st = self.st.borrow_mut();
            if st.closed {
                return;
            }
            let found = st
                .cmds
                .iter()
                .find(|(_, c)| c.pr.as_ref().is_some_and(|p| p.tag == tag))
                .map(|(k, _)| k);
            let Some(key) = found else { return };
            st.cmds[key].pr = None;
            let (ns, plan) = (st.cmds[key].ns.clone(), st.cmds[key].plan);
            match (result, ns, plan) {
                (PrOutResult::Committed, _, _) => {
                    // The committed state reached every node's data plane, this
                    // one's included, before this answer (`setReservations`):
                    // each posted the notices to its controllers and ended a
                    // preempt and abort's commands there (`NvmfFrontend::
                    // set_reservations`), so nothing is left to do here.
                    self.finish_now(&mut st, key, Status::SUCCESS, 0, 0, &[])
                }
                (PrOutResult::Stale, Some(ns), Some(IoPlan::Resv { opcode, .. })) => {
                    self.execute_resv(&mut st, key, &ns, opcode)
                }
                (r, ns, _) => {
                    log::info!(
                        "nvmf: namespace {} ({}): reservation command not run by the cluster ({r:?}); the host retries",
                        st.cmds[key].sqe.nsid(),
                        ns.map_or_else(String::new, |n| n.conf.bdev.clone())
                    );
                    self.finish_now(&mut st, key, Status::NS_NOT_READY, 0, 0, &[])
                }
            }
            self.after(&mut st);
        }
        self.mark_dirty();
    }
}

impl BufWaiter for Conn {
    /// The reactor's cache hands over a chunk of class `tag`: the oldest
    /// waiting command of the class takes it.
    fn buf_ready(&self, tag: u64, buf: PoolBuf) {
        {
            let mut st = self.st.borrow_mut();
            let c = buf.class();
            st.share.handed(tag);
            if st.closed {
                drop(st);
                self.link.reactor.bufs().put(buf);
                return;
            }
            st.share.adopt(&buf);
            let pos = st
                .waiting
                .iter()
                .position(|k| BufPool::class_for(st.cmds[*k].pool_len) == Some(c));
            match pos {
                Some(i) => {
                    if let Some(key) = st.waiting.remove(i) {
                        st.cmds[key].waiting = false;
                        self.got_buf(&mut st, key, buf);
                        self.advance(&mut st, key);
                    }
                }
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

    #[test]
    fn a_full_data_plane_queue_is_a_retryable_status_and_a_fence_a_path_error() {
        let busy = io_errno_status(RETRY_ERRNO).unwrap();
        assert_eq!(busy, Status::COMMAND_INTERRUPTED);
        assert_eq!(busy.0 & 0x4000, 0, "DNR clear: the host retries");
        assert_eq!(busy.0 & 0x700, 0, "generic status, not a path error");
        assert!(!busy.ok());
        let fenced = io_errno_status(FENCED_ERRNO).unwrap();
        assert_eq!(fenced.0 & 0x700, 0x300, "a path error");
        assert_eq!(io_errno_status(libc::EIO), None, "a medium error");
    }
}
