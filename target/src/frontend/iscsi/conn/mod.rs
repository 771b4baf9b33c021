//! One iSCSI connection on its reactor: socket I/O, PDU dispatch, tasks.
//!
//! Code map (one job each):
//! - this file: the connection's state, its life (spawn, close, the once-a-second
//!   tick: login timeout, keep-alive, send timeout), PDU dispatch and the CmdSN
//!   window;
//! - `recv`: transport input (POLLIN, reads, parsing PDUs in place);
//! - `output`: transport output (PDUs into the output queue, flushing it,
//!   POLLOUT); the queue, the receive buffer, the polls and the reactor's
//!   `FlushAndTick` poller are [`crate::frontend::transport`]'s, shared with
//!   the NVMe/TCP queue pair;
//! - `session`: login, session reinstatement, NOP-Out, text, logout;
//! - `command`: the SCSI-task glue (a SCSI Command PDU becomes a
//!   [`crate::frontend::scsi::ScsiTask`]; Data-Out and R2T; bdev I/O);
//! - `response`: Data-In and SCSI Response PDUs;
//! - `tmf`: task management, and the aborts of a PREEMPT AND ABORT (its
//!   wait, the preempted nexuses' tasks aborted: `crate::frontend::preempt`);
//! - `buffers`: pool buffers, fair shares, parked commands.
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

mod buffers;
mod command;
mod output;
mod recv;
mod response;
mod session;
mod tmf;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::rc::{Rc, Weak};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::login::{self, Login, LoginReq, SessionType};
use super::pdu::{self, field, op, Bhs, Digests, Parsed, BHS_LEN, RESERVED_TAG};
use super::text::{self, Params};
use super::{Session, Shared, TargetRt};
use crate::bdev::{BdevIo, IoCallback, IoDone, IoStatus};
use crate::buf::{BufPool, BufWaiter, PoolBuf};
use crate::frontend::preempt::{abort_on, AbortFn, DoneFn, PaWait, PreemptAbort, Preemptible};
use crate::frontend::scsi::cdb::{self, NexusState, Op, Response};
use crate::frontend::scsi::pr::Nexus;
use crate::frontend::scsi::pr_cluster::{
    PrBroker, PrDone, PrOutRequest, PrOutResult, PR_OUT_TIMEOUT,
};
use crate::frontend::scsi::sense::{self, Sense};
use crate::frontend::scsi::task::{self, BlockIo, ScsiTask, Step};
use crate::frontend::scsi::LunRt;
use crate::frontend::transport::{
    self, IntMap, Link, OutQueue, Polls, PoolShare, RecvBuf, Sent, Wire, CLASSES, WBUF_HIGH_BYTES,
};
use crate::reactor::Reactor;

/// Longest a login may take before the connection is closed.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of headers the output queue has room for before it grows.
const OUT_QUEUE_BYTES: usize = 64 << 10;
/// Most bytes of immediate and unsolicited data a connection keeps for commands
/// parked while waiting for a pool buffer; a command that would exceed it is
/// answered TASK SET FULL.
pub(crate) const PARKED_DATA_MAX_BYTES: usize = 4 << 20;

/// The iSCSI connections and listeners of one reactor.
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
    let limits = shared.limits();
    let rcap = pdu::max_wire_len(limits.target_mrdsl as usize);
    Rc::new_cyclic(|me| Conn {
        link: Link::new(r, shared.core.id, stream, peer, id),
        shared: Arc::clone(shared),
        me: me.clone(),
        dirty: Cell::new(false),
        st: RefCell::new(St {
            phase: Phase::Login(Box::new(Login::new(limits.clone()))),
            rx: RecvBuf::new(rcap),
            out: OutQueue::with_capacity(OUT_QUEUE_BYTES),
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
            pr_waits: Vec::new(),
            target: None,
            target_gen: 0,
            nexus_state: IntMap::default(),
            polls: Polls::default(),
            parked: VecDeque::new(),
            parked_n: [0; CLASSES],
            parked_bytes: 0,
            share: PoolShare::default(),
            need_serve: false,
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
    })
}

/// This frontend's abort of a preempt and abort's tasks on a reactor
/// (`tmf`'s [`Preemptible`]).
pub(crate) const ABORT_PREEMPTED: AbortFn = abort_on::<Conn, Shared>;

/// Closes one connection (management API: target removed, initiator denied; a
/// session reinstated from another reactor); `why` goes into the log line.
pub(crate) fn close_conn(r: &Rc<Reactor>, fid: u64, id: u64, why: &str) {
    if let Some(c) = Registry::find(r, fid, id) {
        c.close(why);
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
    /// The preempt and abort waiting for this task's bdev I/O (the task was
    /// aborted by it and is still at the bdev).
    held_by: Option<Arc<PreemptAbort>>,
    /// A PERSISTENT RESERVE OUT PREEMPT AND ABORT waiting for the preempted
    /// nexuses' commands to leave the bdevs.
    pa: Option<PaWait>,
}

/// A task whose PERSISTENT RESERVE OUT the cluster is running.
struct PrWait {
    /// The task.
    key: usize,
    /// The broker's request id.
    id: u64,
    /// When the task fails if no answer came.
    deadline: Instant,
    broker: Arc<PrBroker>,
}

struct St {
    phase: Phase,
    rx: RecvBuf,
    out: OutQueue,
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
    /// Tasks waiting for the cluster's answer to their PR OUT (at most one per task).
    pr_waits: Vec<PrWait>,
    target: Option<Arc<TargetRt>>,
    target_gen: u64,
    /// Per-LUN state of this I_T nexus, for LUNs that exist.
    nexus_state: IntMap<u64, NexusState>,
    polls: Polls,
    /// Tasks waiting for a pool buffer, in arrival order.
    parked: VecDeque<usize>,
    /// Parked tasks per size class.
    parked_n: [u32; CLASSES],
    /// Bytes reserved for the data of parked tasks.
    parked_bytes: usize,
    /// This connection's share of the buffer pool (chunks held by tasks and
    /// queued Data-In, waiter registrations).
    share: PoolShare,
    /// A buffer was given back: parked tasks may proceed.
    need_serve: bool,
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
    /// Its ids, socket, peer and reactor.
    link: Link,
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
        if self.out.blocked_since().is_some() {
            if max != self.max_adv {
                self.window_stale = true;
            }
            return self.max_adv;
        }
        self.max_adv = max;
        max
    }

    fn blocked_on_send(&self) -> bool {
        self.out.blocked_since().is_some()
    }

    /// Total time blocked on send; reads the clock only while blocked now.
    fn send_blocked_ms(&self) -> u64 {
        let cur = self
            .out
            .blocked_since()
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
        output::emit(&mut self.out, bhs, data, self.dig);
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
        self.link.fd()
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
            self.link.id,
            self.link.peer
        );
        // Wakes pending polls.
        self.link.shutdown();
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
        // PR OUT requests still with the cluster: their answers are not awaited.
        for w in std::mem::take(&mut st.pr_waits) {
            w.broker.cancel(&self.link.reactor, w.id);
        }
        // A closed connection may stay queued as a buffer waiter until a chunk of
        // that class frees up: it keeps no receive buffer meanwhile.
        st.rx.release();
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
        self.link
            .reactor
            .local::<Registry>()
            .conns
            .borrow_mut()
            .remove(&(self.link.fid, self.link.id));
    }

    fn release(&self, st: &mut St, mut t: Task) {
        if let Some(b) = t.buf.take() {
            self.put_buf(st, b);
        }
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
                        .out
                        .blocked_since()
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
                            st.share.held_total()
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
            None => {
                self.expire_pr_waits(now);
                self.poll_preempts();
                self.flush()
            }
        }
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
                    self.link.id
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
            self.link.id,
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

transport::impl_wire!(Conn);
