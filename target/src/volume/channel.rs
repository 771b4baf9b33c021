//! A volume's reactor-local channel: the gate, the in-flight count, parked I/O,
//! mirror fan-out, read retry and held writes. Everything here runs on one
//! reactor and uses `Cell`/`RefCell` only: no lock, no shared atomic.
//!
//! A channel also checks its scope's reactor-local lease flag (shared volumes the
//! data-plane lease, private ones the private-group lease: `crate::lease`)
//! before anything else: while fenced, new I/O fails
//! with [`FENCED_ERRNO`] (parked I/O and held writes were failed at expiry by
//! [`VolumeChannel::fence`]); children already at the disk complete normally.
//!
//! A volume with a dirty region log (`super::drl`) marks a write's regions before
//! issuing it: a write whose regions are durably dirty goes straight on (two
//! atomics); another waits, counted as in flight, for the owner's answer
//! (`drl_done`), at most [`super::drl::MAX_DRL_WAITING`] per volume. The lease
//! fence fails waiting writes like parked I/O.
//!
//! Bounds: at most [`MAX_VOLUME_IOS`] I/Os are tracked (at the plexes or held), at
//! most [`MAX_PARKED_IOS`] I/Os wait behind a closed gate and at most
//! [`MAX_HELD_WRITES`] writes are held for a plex detach, per channel; past them
//! (and when no detach can be queued) the I/O fails with [`RETRY_ERRNO`], counted
//! in [`VolumeStats`] (`inflight_refused`, `parked_refused`, `held_refused`).

use plexd_target_api::volume::VolumeStats;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::drl::MAX_DRL_WAITING;
use super::quiesce::{Countdown, Step};
use super::spec::{Layout, PlexKind, PlexState, ReadPolicy};
use super::VolumeShared;
use crate::bdev::{
    check_range, BdevChannel, BdevIo, IoCallback, IoDone, IoKind, IoStatus, RETRY_ERRNO,
};
use crate::event::Event;
use crate::lease::{LeaseScope, ReactorLeases, FENCED_ERRNO};
use crate::reactor::{Poller, PollerId, Reactor};

/// A subdisk as a reactor sees it.
#[derive(Clone)]
struct ChSubdisk {
    ch: Rc<dyn BdevChannel>,
    offset_bytes: u64,
}

struct ChPlex {
    state: Cell<PlexState>,
    columns: Vec<Vec<ChSubdisk>>,
    /// Reads outstanding on this reactor (for least-busy).
    outstanding: Cell<u32>,
    /// The plex's only subdisk when it has one: an I/O maps to one child at the
    /// same offset on it, without walking the map.
    single: Option<ChSubdisk>,
}

/// The layout bound to this reactor's bdev channels.
struct ChLayout {
    layout: Arc<Layout>,
    plexes: Vec<ChPlex>,
    prefer: Option<usize>,
    /// Copied from `layout` for the I/O path (which then stays off the shared,
    /// larger `Layout`).
    block_size: u32,
    size_bytes: u64,
    round: bool,
    /// The plexes that serve reads (ACTIVE) and that take writes, as masks of
    /// `plexes` (kept by [`ChLayout::set_state`]; the I/O path reads no state).
    readable: Cell<u32>,
    writable: Cell<u32>,
    /// [`read_share`] of the `readable` plexes (a division once per change, not
    /// per read).
    share: Cell<u64>,
}

impl ChLayout {
    fn build(reactor: &Rc<Reactor>, layout: Arc<Layout>) -> Result<ChLayout, String> {
        let mut plexes = Vec::with_capacity(layout.plexes.len());
        for p in &layout.plexes {
            let mut columns = Vec::with_capacity(p.columns.len());
            for c in &p.columns {
                let mut sds = Vec::with_capacity(c.len());
                for sd in c {
                    sds.push(ChSubdisk {
                        ch: reactor.channel(&sd.bdev)?,
                        offset_bytes: sd.offset_bytes,
                    });
                }
                columns.push(sds);
            }
            let single = match columns.as_slice() {
                [c] if p.map.kind == PlexKind::Concat && c.len() == 1 => Some(c[0].clone()),
                _ => None,
            };
            plexes.push(ChPlex {
                state: Cell::new(p.state),
                columns,
                outstanding: Cell::new(0),
                single,
            });
        }
        let prefer = match &layout.spec.read_policy {
            ReadPolicy::Prefer(name) => layout.plexes.iter().position(|p| &*p.name == name),
            _ => None,
        };
        let l = ChLayout {
            block_size: layout.block_size,
            size_bytes: layout.spec.size_bytes,
            round: layout.spec.read_policy == ReadPolicy::Round,
            layout,
            plexes,
            prefer,
            readable: Cell::new(0),
            writable: Cell::new(0),
            share: Cell::new(0),
        };
        l.refresh_masks();
        Ok(l)
    }

    /// Sets plex `i`'s state.
    fn set_state(&self, i: usize, state: PlexState) {
        self.plexes[i].state.set(state);
        self.refresh_masks();
    }

    fn refresh_masks(&self) {
        self.readable.set(self.mask(|s| s == PlexState::Active));
        self.writable.set(self.mask(PlexState::takes_writes));
        self.share
            .set(read_share(self.size_bytes, self.readable.get()));
    }

    /// The plexes whose state satisfies `pred`.
    fn mask(&self, pred: impl Fn(PlexState) -> bool) -> u32 {
        let mut m = 0u32;
        for (i, p) in self.plexes.iter().enumerate() {
            if pred(p.state.get()) {
                m |= 1 << i;
            }
        }
        m
    }
}

/// I/Os one volume channel parks behind its closed gate (a quiesce); more fail
/// with [`RETRY_ERRNO`] until the gate opens.
pub const MAX_PARKED_IOS: usize = 4096;
/// Writes one volume channel holds until a failed plex is detached; more fail with
/// [`RETRY_ERRNO`] (the data reached the other plexes; the host writes again).
pub const MAX_HELD_WRITES: usize = 4096;
/// I/Os one volume channel tracks at once (its slab: in flight at the plexes, or
/// held); more fail with [`RETRY_ERRNO`] before reaching any plex. Above what the
/// frontends' command windows put on one reactor in normal use (4 iSCSI
/// connections at the largest queue depth, or plexperf's `MAX_QD`, four times over).
pub const MAX_VOLUME_IOS: usize = 16 * 1024;
const _: () = assert!(MAX_VOLUME_IOS > MAX_HELD_WRITES);

/// Where a reactor reports that its in-flight count drained (the prepare's
/// countdown: the last reactor wakes the caller).
pub(crate) type DrainTx = Arc<Countdown>;

/// A closed gate's poller: applies the end of the quiesce as soon as commit or
/// abort publishes it (one atomic load per pass). Registered while the gate is
/// closed.
struct GatePoller {
    ch: std::rc::Weak<VolumeChannel>,
}

impl Poller for GatePoller {
    fn poll(&self, _now: Instant) -> usize {
        match self.ch.upgrade() {
            Some(c) => usize::from(c.apply_release()),
            None => 0,
        }
    }
}

/// The data-describing part of an I/O (no callback), copied cheaply.
#[derive(Clone, Copy)]
struct IoShape {
    kind: IoKind,
    offset_bytes: u64,
    len_bytes: u64,
    buf: crate::buf::IoBuf,
}

/// One volume I/O in flight on this reactor.
struct VolIo {
    io: BdevIo,
    /// Child I/Os still outstanding.
    pending: u32,
    /// Plexes written to (write-like) or the plex being read.
    targets: u32,
    /// Plexes with at least one failed child.
    failed: u32,
    /// Plexes already tried (reads).
    tried: u32,
    errno: i32,
    /// Set on sampled I/Os only (one in [`LATENCY_SAMPLE_EVERY`]).
    start: Option<Instant>,
    /// Completed on every plex but held until failed plexes are detached.
    held: bool,
    /// The layout whose dirty region log counts this write in its regions
    /// (set once the write entered the log).
    drl: Option<Rc<ChLayout>>,
    /// Nonzero while the write waits for its regions' mark: the token the owner
    /// answers with (slot in the low 32 bits, a generation above).
    drl_token: u64,
}

/// A volume's channel on one reactor.
///
/// `repr(C)` keeps the fields every I/O touches together at the front (the slab,
/// the layout, the gate and counters: two cache lines): a read's own work is small
/// next to the page-cache walk and copy of the bdev below, which push this state
/// out of the first-level cache between one I/O's submission and its completion.
#[repr(C)]
pub(crate) struct VolumeChannel {
    ios: RefCell<slab::Slab<VolIo>>,
    layout: RefCell<Rc<ChLayout>>,
    gate_closed: Cell<bool>,
    /// True while `submit` runs: completions must then be queued, not delivered.
    in_submit: Cell<bool>,
    /// The bound layout is of a shared volume (served only under the lease).
    is_shared: Cell<bool>,
    inflight: Cell<u32>,
    /// I/Os accepted so far (drives latency sampling).
    submitted: Cell<u64>,
    /// Completed reads and their bytes (kept out of `stats`, which they join in
    /// [`VolumeChannel::stats`]: counted on every read).
    read_ops: Cell<u64>,
    read_bytes: Cell<u64>,
    reactor: Rc<Reactor>,
    me: std::rc::Weak<VolumeChannel>,
    /// This reactor's view of the leases (shared and private volumes').
    leases: Rc<ReactorLeases>,
    rr: Cell<usize>,
    stats: RefCell<VolumeStats>,
    shared: Arc<VolumeShared>,
    /// When the gate last closed (the quiesce timeline's stall).
    closed_at: Cell<Option<Instant>>,
    parked: RefCell<VecDeque<BdevIo>>,
    /// The countdown to report to once drained (a prepare is waiting).
    drain_waiter: RefCell<Option<DrainTx>>,
    /// The quiesce (prepare epoch) the gate is closed for while closed; the
    /// last one it was closed for (or that was over when the channel was
    /// created) while open.
    gate_epoch: Cell<u64>,
    /// The gate poller, while the gate is closed.
    gate_poller: Cell<Option<PollerId>>,
    held: RefCell<Vec<usize>>,
    reported: Cell<u32>,
    /// A refusal was logged since the gate last opened or the in-flight count
    /// last reached zero (one line per episode).
    refusal_logged: Cell<bool>,
    /// Generation of the dirty region log tokens (never 0).
    drl_gen: Cell<u32>,
}

/// One I/O in this many has its latency measured (reading the clock costs).
pub const LATENCY_SAMPLE_EVERY: u64 = 16;

/// How many more reads than the least busy candidate the plex owning a read's
/// share of the volume may have outstanding (on this reactor) and still get it.
pub const READ_LOCALITY_SLACK: u32 = 8;

/// The bytes of a volume of `size` bytes that each plex of `cand` owns for the
/// least-busy policy ([`least_busy`]): the last share may be shorter.
fn read_share(size: u64, cand: u32) -> u64 {
    size.div_ceil(u64::from(cand.count_ones().max(1))).max(1)
}

/// The least-busy policy's choice among the plexes in `cand` (not empty) for a
/// read at `offset`: the volume is cut into as many contiguous shares of `share`
/// bytes ([`read_share`]) as there are candidates, the k-th candidate owning the
/// k-th, and the read goes to its share's plex unless that plex has more than
/// [`READ_LOCALITY_SLACK`] reads outstanding beyond the least busy candidate,
/// which then gets it.
///
/// Each plex's cache (a memory file's page cache, a disk's own) then holds one
/// contiguous part of the volume, not all of it; and each plex's reads stay within
/// that part of its subdisks: a disk's head seeks over its share only, and a
/// memory file's pages read, their page-cache index and the physical memory
/// behind them span that share only (fewer translation misses in the kernel's
/// copy). Two 2 GiB tmpfs files as a mirror read at 0.86-0.89x the raw bdev per
/// CPU-second with 2 MiB regions dealt round the plexes (each file read over its
/// whole extent), at 0.93-0.96x with halves (docs/TESTING.md, ci/bench).
fn least_busy(plexes: &[ChPlex], cand: u32, offset: u64, share: u64) -> usize {
    debug_assert!(cand != 0, "least_busy without a candidate");
    let mut left = cand;
    let mut least = left.trailing_zeros() as usize;
    while left != 0 {
        let i = left.trailing_zeros() as usize;
        left &= left - 1;
        if plexes[i].outstanding.get() < plexes[least].outstanding.get() {
            least = i;
        }
    }
    // The k-th candidate (k < 32) owns the k-th share; found without a division
    // (a mirror has few plexes).
    let n = cand.count_ones();
    let (mut k, mut end) = (0, share);
    while offset >= end && k + 1 < n {
        k += 1;
        end = end.saturating_add(share);
    }
    let mut own = cand;
    for _ in 0..k {
        own &= own - 1;
    }
    let own = own.trailing_zeros() as usize;
    if plexes[own].outstanding.get() <= plexes[least].outstanding.get() + READ_LOCALITY_SLACK {
        own
    } else {
        least
    }
}

/// Tag layout of child I/Os: low 32 bits = slot, next 8 bits = plex index.
fn child_tag(slot: usize, plex: usize) -> u64 {
    slot as u64 | ((plex as u64) << 32)
}

impl VolumeChannel {
    pub(crate) fn new(
        reactor: &Rc<Reactor>,
        shared: Arc<VolumeShared>,
        layout: Arc<Layout>,
        epoch: u64,
        gate_closed: bool,
    ) -> Result<Rc<VolumeChannel>, String> {
        let is_shared = layout.spec.shared;
        let chl = ChLayout::build(reactor, layout)?;
        let ch = Rc::new_cyclic(|me| VolumeChannel {
            ios: RefCell::new(slab::Slab::with_capacity(1024)),
            layout: RefCell::new(Rc::new(chl)),
            gate_closed: Cell::new(gate_closed),
            in_submit: Cell::new(false),
            is_shared: Cell::new(is_shared),
            inflight: Cell::new(0),
            submitted: Cell::new(0),
            read_ops: Cell::new(0),
            read_bytes: Cell::new(0),
            reactor: Rc::clone(reactor),
            me: me.clone(),
            leases: reactor.local::<ReactorLeases>(),
            rr: Cell::new(0),
            stats: RefCell::new(VolumeStats::default()),
            shared,
            closed_at: Cell::new(gate_closed.then(Instant::now)),
            parked: RefCell::new(VecDeque::with_capacity(256)),
            drain_waiter: RefCell::new(None),
            gate_epoch: Cell::new(epoch),
            gate_poller: Cell::new(None),
            held: RefCell::new(Vec::new()),
            reported: Cell::new(0),
            refusal_logged: Cell::new(false),
            drl_gen: Cell::new(0),
        });
        if gate_closed {
            ch.add_gate_poller();
        }
        Ok(ch)
    }

    fn me(&self) -> Rc<VolumeChannel> {
        self.me
            .upgrade()
            .expect("a volume channel alive while used")
    }

    pub(crate) fn stats(&self) -> VolumeStats {
        let mut s = *self.stats.borrow();
        s.read_ops += self.read_ops.get();
        s.read_bytes += self.read_bytes.get();
        s
    }

    pub(crate) fn inflight(&self) -> u32 {
        self.inflight.get()
    }

    pub(crate) fn parked(&self) -> usize {
        self.parked.borrow().len()
    }

    pub(crate) fn held(&self) -> usize {
        self.held.borrow().len()
    }

    /// Closes the gate for quiesce `epoch`; reports to `drain` once nothing is in
    /// flight.
    pub(crate) fn close_gate(&self, epoch: u64, drain: DrainTx) {
        // One prepare at a time per volume (the control side refuses a second one)
        // and messages from the control thread reach a reactor in order; but a
        // channel created after a prepare staged starts at that prepare's epoch,
        // closed, while the prepare's message (and an aborted earlier one's) may
        // still be on its way.
        let at = self.gate_epoch.get();
        if epoch < at || (epoch == at && !self.gate_closed.get()) {
            // An earlier quiesce's, or this one's after its release was applied:
            // that prepare is over, its countdown only needs the report.
            drain.report(self.reactor.id());
            return;
        }
        // Born closed for this quiesce, or closed now.
        if epoch > at {
            self.gate_closed.set(true);
            self.gate_epoch.set(epoch);
            if self.gate_poller.get().is_none() {
                self.add_gate_poller();
            }
            let now = Instant::now();
            self.closed_at.set(Some(now));
            self.shared.trace.mark_at(Step::GatesClosed, now);
        }
        if self.inflight.get() == 0 {
            drain.report(self.reactor.id());
        } else {
            *self.drain_waiter.borrow_mut() = Some(drain);
        }
    }

    fn add_gate_poller(&self) {
        let p = Rc::new(GatePoller {
            ch: self.me.clone(),
        });
        self.gate_poller.set(Some(self.reactor.add_poller(p)));
    }

    /// Applies the published end of the quiesce the gate is closed for, if any
    /// (commit: swap the layout; abort: keep it), and reopens the gate; true
    /// when it did.
    pub(crate) fn apply_release(&self) -> bool {
        if !self.gate_closed.get() {
            return false;
        }
        match self.shared.release_of(self.gate_epoch.get()) {
            Some(rel) => {
                self.open_gate(rel.layout);
                true
            }
            None => false,
        }
    }

    /// Swaps in `layout` (when given), opens the gate and resubmits parked I/O.
    pub(crate) fn open_gate(&self, layout: Option<Arc<Layout>>) {
        if let Some(l) = layout {
            if !Arc::ptr_eq(&self.layout.borrow().layout, &l) {
                let is_shared = l.spec.shared;
                match ChLayout::build(&self.reactor, l) {
                    Ok(chl) => {
                        *self.layout.borrow_mut() = Rc::new(chl);
                        self.is_shared.set(is_shared);
                        self.reported.set(0);
                    }
                    Err(e) => log::error!(
                        "volume {} on reactor {}: cannot bind new layout: {e}; keeping the old one",
                        self.shared.name,
                        self.reactor.id()
                    ),
                }
            }
        }
        self.drain_waiter.borrow_mut().take();
        self.gate_closed.set(false);
        if let Some(id) = self.gate_poller.take() {
            self.reactor.remove_poller(id);
        }
        self.refusal_logged.set(false);
        let parked: Vec<BdevIo> = self.parked.borrow_mut().drain(..).collect();
        for io in parked {
            self.submit(io);
        }
        // An open gate parks nothing (the resubmissions above went through).
        assert!(
            self.parked.borrow().is_empty(),
            "volume {}: I/O parked behind an open gate",
            self.shared.name
        );
        if let Some(closed) = self.closed_at.take() {
            let now = Instant::now();
            self.shared.trace.mark_at(Step::Resumed, now);
            self.shared
                .trace
                .stalled(now.saturating_duration_since(closed));
        }
        self.recheck_held();
    }

    /// True while the volume's lease is not valid on this reactor, on the clock as it
    /// is now (see `ReactorLease::fenced_now`: a stalled reactor's cached clock is
    /// not trusted).
    #[inline]
    fn fenced(&self) -> bool {
        let scope = LeaseScope::of_volume(self.is_shared.get());
        self.leases.of(scope).fenced_now()
    }

    /// The volume's lease ran out on this reactor: fails the I/O parked behind a
    /// closed gate and the writes held for a plex detach. The gate and a
    /// staged layout stay as they are; in-flight children complete normally.
    pub(crate) fn fence(&self) {
        if !self.fenced() {
            return;
        }
        let parked: Vec<BdevIo> = self.parked.borrow_mut().drain(..).collect();
        let held: Vec<usize> = self.held.borrow_mut().drain(..).collect();
        let waiting: Vec<usize> = self
            .ios
            .borrow()
            .iter()
            .filter(|(_, v)| v.drl_token != 0)
            .map(|(s, _)| s)
            .collect();
        if parked.is_empty() && held.is_empty() && waiting.is_empty() {
            return;
        }
        log::debug!(
            "volume {} on reactor {}: lease expired; failing {} parked I/O(s), {} held write(s) \
             and {} write(s) waiting for the dirty region log",
            self.shared.name,
            self.reactor.id(),
            parked.len(),
            held.len(),
            waiting.len()
        );
        for io in parked {
            self.fail_fenced(io);
        }
        for slot in held {
            self.complete(slot, IoStatus::Failed(FENCED_ERRNO));
        }
        for slot in waiting {
            self.stop_waiting(slot);
            self.finish(slot, IoStatus::Failed(FENCED_ERRNO));
        }
    }

    /// Applies a plex state change without a drain (detach after an error, attach).
    pub(crate) fn set_plex_state(&self, plex: &str, state: PlexState) {
        let l = self.layout.borrow().clone();
        if let Some(i) = l.layout.plexes.iter().position(|p| &*p.name == plex) {
            l.set_state(i, state);
            if state == PlexState::Active {
                self.reported.set(self.reported.get() & !(1 << i));
            }
        }
        self.recheck_held();
    }

    fn pick_read_plex(&self, l: &ChLayout, tried: u32, offset: u64) -> Option<usize> {
        if l.plexes.len() == 1 {
            let ok = tried == 0 && l.readable.get() == 1;
            return ok.then_some(0);
        }
        let cand = l.readable.get() & !tried;
        if cand == 0 {
            return None;
        }
        if let Some(p) = l.prefer {
            if cand & (1 << p) != 0 {
                return Some(p);
            }
        }
        if !l.round {
            let share = if cand == l.readable.get() {
                l.share.get()
            } else {
                read_share(l.size_bytes, cand)
            };
            return Some(least_busy(&l.plexes, cand, offset, share));
        }
        let n = l.plexes.len();
        let start = self.rr.get();
        self.rr.set((start + 1) % n);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|&i| cand & (1 << i) != 0)
    }

    /// Sends the children of `slot` for plex `p`; returns how many were sent.
    fn submit_to_plex(
        &self,
        l: &ChLayout,
        me: &Rc<VolumeChannel>,
        slot: usize,
        p: usize,
        io: &IoShape,
    ) -> u32 {
        let plex = &l.plexes[p];
        let mut n = 0u32;
        match (io.kind, &plex.single) {
            (IoKind::Flush | IoKind::Reset, _) => {
                for sd in plex.columns.iter().flatten() {
                    sd.ch.submit(BdevIo {
                        kind: io.kind,
                        offset_bytes: 0,
                        len_bytes: 0,
                        buf: io.buf,
                        cb: IoCallback::new(Rc::<VolumeChannel>::clone(me), child_tag(slot, p)),
                    });
                    n += 1;
                }
            }
            (_, Some(sd)) => {
                // The volume's range was checked and the subdisk covers it.
                sd.ch.submit(BdevIo {
                    kind: io.kind,
                    offset_bytes: sd.offset_bytes + io.offset_bytes,
                    len_bytes: io.len_bytes,
                    buf: if io.kind.has_data() {
                        io.buf.slice(0, io.len_bytes as usize)
                    } else {
                        io.buf
                    },
                    cb: IoCallback::new(Rc::<VolumeChannel>::clone(me), child_tag(slot, p)),
                });
                n = 1;
            }
            (_, None) => {
                // Children are counted before any completes: completions are queued
                // by the reactor, never delivered inside submit.
                l.layout.plexes[p].map.map(
                    io.offset_bytes,
                    io.len_bytes,
                    |col, sdi, in_sd, in_req, len| {
                        let sd = &plex.columns[col][sdi];
                        let buf = if io.kind.has_data() {
                            io.buf.slice(in_req as usize, len as usize)
                        } else {
                            io.buf
                        };
                        sd.ch.submit(BdevIo {
                            kind: io.kind,
                            offset_bytes: sd.offset_bytes + in_sd,
                            len_bytes: len,
                            buf,
                            cb: IoCallback::new(Rc::<VolumeChannel>::clone(me), child_tag(slot, p)),
                        });
                        n += 1;
                    },
                );
            }
        }
        if io.kind == IoKind::Read {
            plex.outstanding.set(plex.outstanding.get() + 1);
        }
        n
    }

    /// (Re)starts the I/O in `slot` from what it holds: a read retried on another
    /// plex, a write whose regions are now marked.
    fn start(&self, slot: usize) {
        let l = self.layout.borrow().clone();
        let (io, tried) = {
            let ios = self.ios.borrow();
            let v = &ios[slot];
            (
                IoShape {
                    kind: v.io.kind,
                    offset_bytes: v.io.offset_bytes,
                    len_bytes: v.io.len_bytes,
                    buf: v.io.buf,
                },
                v.tried,
            )
        };
        self.start_with(&l, slot, &io, tried);
    }

    /// Picks the plexes of the I/O in `slot` (shaped `io`, having tried the plexes
    /// in `tried`) and sends its children.
    fn start_with(&self, l: &Rc<ChLayout>, slot: usize, io: &IoShape, tried: u32) {
        let targets = if io.kind == IoKind::Read {
            match self.pick_read_plex(l, tried, io.offset_bytes) {
                Some(p) => 1u32 << p,
                None => 0,
            }
        } else {
            l.writable.get()
        };
        if targets == 0 {
            let errno = self.ios.borrow()[slot].errno;
            self.finish(
                slot,
                IoStatus::Failed(if errno != 0 { errno } else { libc::EIO }),
            );
            return;
        }
        if matches!(io.kind, IoKind::Write | IoKind::WriteZeroes | IoKind::Unmap)
            && !self.drl_ready(l, slot, io)
        {
            return;
        }
        // A read of a single-subdisk plex has exactly one child.
        let one_child =
            io.kind == IoKind::Read && l.plexes[targets.trailing_zeros() as usize].single.is_some();
        {
            let mut ios = self.ios.borrow_mut();
            let v = &mut ios[slot];
            v.targets = targets;
            v.failed = 0;
            v.tried |= if io.kind == IoKind::Read { targets } else { 0 };
            // Else a guard: no completion can finish it while we submit (none is
            // delivered inside submit anyway).
            v.pending = if one_child { 1 } else { u32::MAX };
        }
        let me = self.me();
        let mut sent = 0;
        let mut left = targets;
        while left != 0 {
            let p = left.trailing_zeros() as usize;
            left &= left - 1;
            sent += self.submit_to_plex(l, &me, slot, p, io);
        }
        if one_child {
            debug_assert_eq!(sent, 1, "a single-subdisk plex read sent one child");
            return;
        }
        self.ios.borrow_mut()[slot].pending = sent;
        if sent == 0 {
            self.finish(slot, IoStatus::Success);
        }
    }

    /// The dirty region log's step of a write: true when it may be issued now
    /// (no log, already entered, or its regions are durably dirty); false when it
    /// waits for a mark or was failed.
    #[inline]
    fn drl_ready(&self, l: &Rc<ChLayout>, slot: usize, io: &IoShape) -> bool {
        let Some(drl) = &l.layout.drl else {
            return true;
        };
        {
            let mut ios = self.ios.borrow_mut();
            let v = &mut ios[slot];
            if v.drl.is_some() {
                return true;
            }
            v.drl = Some(Rc::clone(l));
        }
        if drl.enter(io.offset_bytes, io.len_bytes) {
            return true;
        }
        let refuse = |why: &str| {
            self.stats.borrow_mut().log_refused += 1;
            self.log_refusal(why);
            self.finish(slot, IoStatus::Failed(RETRY_ERRNO));
            false
        };
        if drl.waiting.fetch_add(1, Ordering::Relaxed) >= MAX_DRL_WAITING {
            drl.waiting.fetch_sub(1, Ordering::Relaxed);
            return refuse("MAX_DRL_WAITING writes wait for the dirty region log");
        }
        let mut gen = self.drl_gen.get().wrapping_add(1);
        if gen == 0 {
            gen = 1;
        }
        self.drl_gen.set(gen);
        let token = (u64::from(gen) << 32) | slot as u64;
        self.ios.borrow_mut()[slot].drl_token = token;
        self.stats.borrow_mut().log_waits += 1;
        if let Err(e) = drl.request_mark(&self.reactor, io.offset_bytes, io.len_bytes, token) {
            self.stop_waiting(slot);
            return refuse(&format!("the dirty region log owner is unreachable ({e})"));
        }
        false
    }

    /// The write in `slot` no longer waits for a mark (answered or failed).
    fn stop_waiting(&self, slot: usize) {
        let l = {
            let mut ios = self.ios.borrow_mut();
            let v = &mut ios[slot];
            v.drl_token = 0;
            v.drl.clone()
        };
        if let Some(d) = l.as_ref().and_then(|l| l.layout.drl.as_ref()) {
            d.waiting.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// The log owner's answer for the write waiting with `token`: 0 = its regions
    /// are durably dirty (issue it), else the errno to fail it with. An answer for
    /// a write no longer waiting (failed by the fence) is ignored.
    pub(crate) fn drl_done(&self, token: u64, result: i32) {
        let slot = (token & 0xffff_ffff) as usize;
        if self
            .ios
            .borrow()
            .get(slot)
            .is_none_or(|v| v.drl_token != token)
        {
            return;
        }
        self.stop_waiting(slot);
        if self.fenced() {
            self.finish(slot, IoStatus::Failed(FENCED_ERRNO));
        } else if result != 0 {
            self.finish(slot, IoStatus::Failed(result));
        } else {
            self.start(slot);
        }
    }

    fn child_done(&self, slot: usize, plex: usize, status: IoStatus) {
        let done = {
            let mut ios = self.ios.borrow_mut();
            let Some(v) = ios.get_mut(slot) else {
                log::error!(
                    "volume {}: completion for unknown I/O slot {slot}",
                    self.shared.name
                );
                return;
            };
            // Completions are never delivered inside submit (the guard value), only
            // for a plex the I/O went to, and never more than were sent.
            debug_assert!(v.pending != u32::MAX, "child completed inside submit");
            debug_assert!(v.pending > 0, "more child completions than children");
            debug_assert!(
                v.targets & (1 << plex) != 0,
                "completion from a plex not targeted"
            );
            debug_assert!(!v.held, "child completion for a held write");
            if let IoStatus::Failed(e) = status {
                v.failed |= 1 << plex;
                v.errno = e;
            }
            v.pending -= 1;
            v.pending == 0
        };
        if done {
            self.all_children_done(slot);
        }
    }

    fn all_children_done(&self, slot: usize) {
        let l = self.layout.borrow().clone();
        let (kind, targets, failed, errno) = {
            let ios = self.ios.borrow();
            let v = &ios[slot];
            (v.io.kind, v.targets, v.failed, v.errno)
        };
        if kind == IoKind::Read {
            let p = targets.trailing_zeros() as usize;
            if let Some(pl) = l.plexes.get(p) {
                pl.outstanding.set(pl.outstanding.get().saturating_sub(1));
            }
            if failed == 0 {
                self.finish(slot, IoStatus::Success);
            } else if self.fenced() {
                // No new disk I/O for a fenced shared volume: no retry.
                self.finish(slot, IoStatus::Failed(FENCED_ERRNO));
            } else {
                log::warn!(
                    "volume {}: read failed on plex {} (errno {errno}); retrying on another plex",
                    self.shared.name,
                    l.layout.plexes.get(p).map(|x| &*x.name).unwrap_or("?")
                );
                self.stats.borrow_mut().read_retries += 1;
                self.start(slot);
            }
            return;
        }
        if failed == 0 {
            self.finish(slot, IoStatus::Success);
            return;
        }
        let ok = targets & !failed;
        if ok == 0 {
            // No plex took the write: fail it; never detach the last copy.
            self.finish(
                slot,
                IoStatus::Failed(if errno != 0 { errno } else { libc::EIO }),
            );
            return;
        }
        if l.layout.spec.local_detach {
            // The group's local detach policy: fail the write on this node (its hosts
            // use another path) and report each failed plex with the range, which may
            // now differ between plexes; the cluster decides on a resync or a detach.
            self.fail_local(&l, slot, failed, errno);
            return;
        }
        // Some plexes failed, others hold the data: report and hold the write until the
        // failed plexes stop being ACTIVE.
        let mut undetached = false;
        for p in 0..l.plexes.len() {
            if failed & (1 << p) != 0
                && l.plexes[p].state.get().takes_writes()
                && self.reported.get() & (1 << p) == 0
            {
                let plex = l.layout.plexes[p].name.to_string();
                log::warn!(
                    "volume {}: write failed on plex {plex} (errno {errno}) on reactor {}; holding writes until it is detached",
                    self.shared.name,
                    self.reactor.id()
                );
                if self.shared.plex_error(&plex, errno) {
                    self.reported.set(self.reported.get() | (1 << p));
                } else {
                    // Nobody will detach it now: the next failed write asks again.
                    undetached = true;
                }
            }
        }
        if self.fenced() {
            // The lease ran out meanwhile: fail the write instead of holding it.
            self.finish(slot, IoStatus::Failed(FENCED_ERRNO));
            return;
        }
        if undetached || self.held.borrow().len() >= MAX_HELD_WRITES {
            self.stats.borrow_mut().held_refused += 1;
            self.log_refusal(if undetached {
                "no plex detach could be queued"
            } else {
                "MAX_HELD_WRITES writes are held"
            });
            self.finish(slot, IoStatus::Failed(RETRY_ERRNO));
            return;
        }
        self.ios.borrow_mut()[slot].held = true;
        self.held.borrow_mut().push(slot);
        debug_assert!(self.held.borrow().len() <= MAX_HELD_WRITES);
        self.dec_inflight();
        self.recheck_held();
    }

    /// Local detach policy: fails the write in `slot`, done on some plexes and
    /// failed on the `failed` ones, with EIO and reports each failed plex that still
    /// takes writes with the write's range (one warning per plex until it is
    /// reported no more, see `reported`).
    fn fail_local(&self, l: &ChLayout, slot: usize, failed: u32, errno: i32) {
        let (offset, len) = {
            let ios = self.ios.borrow();
            (ios[slot].io.offset_bytes, ios[slot].io.len_bytes)
        };
        for p in 0..l.plexes.len() {
            if failed & (1 << p) == 0 || !l.plexes[p].state.get().takes_writes() {
                continue;
            }
            let plex = &l.layout.plexes[p].name;
            if self.reported.get() & (1 << p) == 0 {
                log::warn!(
                    "volume {}: write failed on plex {plex} (errno {errno}) on reactor {}; failing it here (local detach policy)",
                    self.shared.name,
                    self.reactor.id()
                );
                self.reported.set(self.reported.get() | (1 << p));
            }
            // A full event queue drops the report: the range stays failed for this
            // node's hosts, which write it again (through another path).
            let _ = (self.shared.notify)(Event::PlexIoError {
                volume: self.shared.name.clone(),
                plex: plex.to_string(),
                errno,
                failed: Some((offset, len)),
            });
        }
        self.finish(slot, IoStatus::Failed(libc::EIO));
    }

    /// Logs the first refusal of an episode (until the gate next opens).
    /// Fails `io` with [`RETRY_ERRNO`] because a bound (`why`) is reached; the
    /// caller counted the refusal.
    fn refuse(&self, io: BdevIo, why: &str) {
        self.log_refusal(why);
        let status = IoStatus::Failed(RETRY_ERRNO);
        self.count(io.kind, io.len_bytes, status);
        io.cb.defer(&self.reactor, status);
    }

    fn log_refusal(&self, why: &str) {
        if !self.refusal_logged.replace(true) {
            log::warn!(
                "volume {} on reactor {}: {why}; failing I/O with EAGAIN (retry later)",
                self.shared.name,
                self.reactor.id()
            );
        }
    }

    /// Completes held writes whose failed plexes no longer take writes.
    fn recheck_held(&self) {
        if self.held.borrow().is_empty() {
            return;
        }
        let l = self.layout.borrow().clone();
        let writable = l.writable.get();
        let ready: Vec<usize> = {
            let ios = self.ios.borrow();
            self.held
                .borrow()
                .iter()
                .copied()
                .filter(|&s| {
                    debug_assert!(ios[s].held, "slot {s} in the held list but not held");
                    ios[s].failed & writable == 0
                })
                .collect()
        };
        if ready.is_empty() {
            return;
        }
        self.held.borrow_mut().retain(|s| !ready.contains(s));
        for slot in ready {
            let ok = {
                let ios = self.ios.borrow();
                ios[slot].targets & !ios[slot].failed & l.readable.get() != 0
            };
            self.complete(
                slot,
                if ok {
                    IoStatus::Success
                } else {
                    IoStatus::Failed(libc::EIO)
                },
            );
        }
    }

    /// Fails every held write with EIO (the controller refused to detach).
    pub(crate) fn fail_held(&self) {
        let held: Vec<usize> = self.held.borrow_mut().drain(..).collect();
        for slot in held {
            self.complete(slot, IoStatus::Failed(libc::EIO));
        }
    }

    fn dec_inflight(&self) {
        debug_assert!(self.inflight.get() > 0, "in-flight count underflow");
        let n = self.inflight.get() - 1;
        self.inflight.set(n);
        if n == 0 {
            self.refusal_logged.set(false);
        }
        if n == 0 && self.gate_closed.get() {
            let drain = self.drain_waiter.borrow_mut().take();
            if let Some(d) = drain {
                d.report(self.reactor.id());
            }
        }
    }

    fn finish(&self, slot: usize, status: IoStatus) {
        self.dec_inflight();
        self.complete(slot, status);
    }

    /// Counts a finished I/O of `kind` and `len` bytes in the stats.
    #[inline]
    fn count(&self, kind: IoKind, len: u64, status: IoStatus) {
        if kind == IoKind::Read && status.is_ok() {
            self.read_ops.set(self.read_ops.get() + 1);
            self.read_bytes.set(self.read_bytes.get() + len);
            return;
        }
        let mut s = self.stats.borrow_mut();
        match kind {
            IoKind::Read => {
                s.read_ops += 1;
                s.read_bytes += len;
            }
            IoKind::Write | IoKind::WriteZeroes | IoKind::Unmap => {
                s.write_ops += 1;
                s.write_bytes += len;
            }
            IoKind::Flush | IoKind::Reset => s.other_ops += 1,
        }
        if !status.is_ok() {
            s.failed_ops += 1;
        }
    }

    /// Adds a sampled I/O's latency (it started at `start`) to the stats.
    fn sample_latency(&self, start: Instant) {
        let lat = start.elapsed().as_nanos() as u64;
        let mut s = self.stats.borrow_mut();
        // Each sample stands for LATENCY_SAMPLE_EVERY I/Os, so total/ops is the mean.
        s.latency_ns_total += lat * LATENCY_SAMPLE_EVERY;
        s.latency_ns_max = s.latency_ns_max.max(lat);
    }

    /// Fails an I/O that never started (no slot) because the volume is fenced.
    fn fail_fenced(&self, io: BdevIo) {
        let status = IoStatus::Failed(FENCED_ERRNO);
        self.count(io.kind, io.len_bytes, status);
        io.cb.defer(&self.reactor, status);
    }

    fn complete(&self, slot: usize, status: IoStatus) {
        let v = self.ios.borrow_mut().remove(slot);
        debug_assert!(
            v.drl_token == 0,
            "a write completed while waiting for its mark"
        );
        if let Some(d) = v.drl.as_ref().and_then(|l| l.layout.drl.as_ref()) {
            d.exit(v.io.offset_bytes, v.io.len_bytes);
        }
        self.count(v.io.kind, v.io.len_bytes, status);
        if let Some(start) = v.start {
            self.sample_latency(start);
        }
        if self.in_submit.get() {
            // Never complete inside submit: the submitter may not expect re-entry.
            v.io.cb.defer(&self.reactor, status);
        } else {
            v.io.cb.target.io_done(v.io.cb.tag, status);
        }
    }

    /// A read's only child succeeded (the common case of a read): completes it
    /// without the bookkeeping of a fan-out, taking from its slab entry only what
    /// the completion needs. `Some(slot)` hands any other completion back.
    #[inline]
    fn read_done_fast(&self, slot: usize, plex: usize, status: IoStatus) -> Option<usize> {
        let (cb, len, start) = {
            let mut ios = self.ios.borrow_mut();
            match ios.get(slot) {
                Some(v) if v.io.kind == IoKind::Read && v.pending == 1 && status.is_ok() => {
                    debug_assert!(v.targets == 1 << plex, "completion from a plex not read");
                }
                _ => return Some(slot),
            }
            let v = ios.remove(slot);
            (v.io.cb, v.io.len_bytes, v.start)
        };
        if let Some(pl) = self.layout.borrow().plexes.get(plex) {
            pl.outstanding.set(pl.outstanding.get().saturating_sub(1));
        }
        self.dec_inflight();
        self.count(IoKind::Read, len, IoStatus::Success);
        if let Some(start) = start {
            self.sample_latency(start);
        }
        // Child completions are never delivered inside submit.
        debug_assert!(!self.in_submit.get(), "child completed inside submit");
        cb.target.io_done(cb.tag, IoStatus::Success);
        None
    }
}

impl BdevChannel for VolumeChannel {
    fn submit(&self, io: BdevIo) {
        if self.fenced() {
            self.fail_fenced(io);
            return;
        }
        if self.gate_closed.get() {
            let mut parked = self.parked.borrow_mut();
            if parked.len() < MAX_PARKED_IOS {
                parked.push_back(io);
                return;
            }
            drop(parked);
            self.stats.borrow_mut().parked_refused += 1;
            self.refuse(io, "MAX_PARKED_IOS I/Os are parked behind the closed gate");
            return;
        }
        let l = self.layout.borrow().clone();
        if let Err(e) = check_range(&io, l.block_size, l.size_bytes) {
            io.cb.defer(&self.reactor, IoStatus::Failed(e));
            return;
        }
        if self.ios.borrow().len() >= MAX_VOLUME_IOS {
            self.stats.borrow_mut().inflight_refused += 1;
            self.refuse(io, "MAX_VOLUME_IOS I/Os are in flight or held");
            return;
        }
        debug_assert!(!self.in_submit.get(), "volume channel submit re-entered");
        self.inflight.set(self.inflight.get() + 1);
        self.submitted.set(self.submitted.get().wrapping_add(1));
        let shape = IoShape {
            kind: io.kind,
            offset_bytes: io.offset_bytes,
            len_bytes: io.len_bytes,
            buf: io.buf,
        };
        let slot = self.ios.borrow_mut().insert(VolIo {
            io,
            pending: 0,
            targets: 0,
            failed: 0,
            tried: 0,
            errno: 0,
            start: (self.submitted.get().is_multiple_of(LATENCY_SAMPLE_EVERY)).then(Instant::now),
            held: false,
            drl: None,
            drl_token: 0,
        });
        self.in_submit.set(true);
        self.start_with(&l, slot, &shape, 0);
        self.in_submit.set(false);
    }

    fn unavailable(&self) -> bool {
        self.fenced()
    }
}

impl IoDone for VolumeChannel {
    fn io_done(&self, tag: u64, status: IoStatus) {
        let (slot, plex) = ((tag & 0xffff_ffff) as usize, (tag >> 32) as usize);
        if let Some(slot) = self.read_done_fast(slot, plex, status) {
            self.child_done(slot, plex, status);
        }
    }
}

impl VolumeShared {
    /// Reports a plex write error; false when nobody will detach the plex.
    fn plex_error(&self, plex: &str, errno: i32) -> bool {
        (self.notify)(Event::PlexIoError {
            volume: self.name.clone(),
            plex: plex.to_string(),
            errno,
            failed: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plexes(outstanding: &[u32]) -> Vec<ChPlex> {
        outstanding
            .iter()
            .map(|&n| ChPlex {
                state: Cell::new(PlexState::Active),
                columns: Vec::new(),
                outstanding: Cell::new(n),
                single: None,
            })
            .collect()
    }

    #[test]
    fn least_busy_gives_each_candidate_a_contiguous_share() {
        let p = plexes(&[0, 0, 0]);
        let third = 1u64 << 30;
        let size = 3 * third;
        let at = |cand: u32, offsets: &[u64]| -> Vec<usize> {
            offsets
                .iter()
                .map(|&o| least_busy(&p, cand, o, read_share(size, cand)))
                .collect()
        };
        let ends = [
            0,
            third - 4096,
            third,
            2 * third - 4096,
            2 * third,
            size - 4096,
        ];
        assert_eq!(at(0b111, &ends), [0, 0, 1, 1, 2, 2]);
        // Without plex 1, plexes 0 and 2 own a half each.
        let half = size / 2;
        assert_eq!(
            at(0b101, &[0, half - 4096, half, size - 4096]),
            [0, 0, 2, 2]
        );
        // A size the count does not divide: the last share is the shorter one.
        let odd = 3 * 4096 - 512;
        assert_eq!(read_share(odd, 0b111), 4096 - 170);
        let got: Vec<usize> = [0, 4096 - 512, 4096, 3 * 4096 - 1024]
            .iter()
            .map(|&o| least_busy(&p, 0b111, o, read_share(odd, 0b111)))
            .collect();
        assert_eq!(got, [0, 0, 1, 2]);
    }

    #[test]
    fn least_busy_leaves_the_share_plex_only_past_the_slack() {
        let size = 2u64 << 30;
        let second = 1u64 << 30;
        let least_busy = |p: &[ChPlex], cand: u32, offset: u64, size: u64| {
            least_busy(p, cand, offset, read_share(size, cand))
        };
        // The second half belongs to plex 1.
        let p = plexes(&[3, 3 + READ_LOCALITY_SLACK]);
        assert_eq!(least_busy(&p, 0b11, second, size), 1);
        let p = plexes(&[3, 4 + READ_LOCALITY_SLACK]);
        assert_eq!(least_busy(&p, 0b11, second, size), 0);
        // The least busy of several when the share's plex is too busy.
        let p = plexes(&[20, 7, 0, 5]);
        assert_eq!(least_busy(&p, 0b1111, 0, size), 2);
        assert_eq!(least_busy(&p, 0b1011, 0, size), 3);
    }
}
