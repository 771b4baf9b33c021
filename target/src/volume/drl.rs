//! The dirty region log in the data plane: a mirrored write (write, write zeroes,
//! unmap) to a volume with a log (`VolumeSpec::log`) is issued to the plexes only
//! once every region it touches is marked dirty, durably, in this node's section
//! of the log (the format is `plexd_target_api::drl`, docs/ONDISK.md "Dirty region
//! log"). Reads never wait.
//!
//! # Copies
//!
//! A log spec names 1..=`MAX_LOG_COPIES` copies of the section (on distinct
//! bdevs). Every log write goes to every *live* copy, with the same bytes; it
//! succeeds when it succeeded (write and flush) on at least one of them. A copy
//! whose I/O failed while another copy's succeeded is *retired*: logged once
//! (volume, bdev, node), counted (`VolumeStats::log_copy_failures`) and never
//! written again under this spec (it missed a mark, so only a copy that took every
//! mark is trusted to be current; a reader takes the union of the copies, which
//! a stale copy can only enlarge). When the write failed on every live copy the
//! waiting writes fail with EIO as with one copy, and no copy is retired (the
//! next log write re-inits them all). A new spec (a commit) starts with every
//! copy live again.
//!
//! # Shape
//!
//! - [`DrlShared`], one per volume and log spec, shared by every reactor: a bitmap
//!   of *durable* regions (dirty on the disk and not being cleaned: a writer that
//!   finds all its regions there goes straight on), per-region in-flight counts
//!   (hashed into at most [`DRL_INFLIGHT_BUCKETS`] counters, so a large volume's
//!   counters stay small; a shared bucket only delays cleaning), a *touched* bitmap
//!   (a write completed in the region since the last idle sweep) and the number of
//!   writes waiting for a mark (at most [`MAX_DRL_WAITING`] per volume; past it the
//!   write fails with EAGAIN like the other queues). All atomics: the fast path is
//!   an increment, a load, and at completion a decrement (plus one `fetch_or` on
//!   the touched word the first time per sweep).
//! - The *owner*, a reactor-local `DrlOwner` on one reactor per volume (volume id
//!   modulo the reactor count), reached through the reactor mailbox: it alone
//!   writes the section, one log write in flight at a time; marks that arrive
//!   meanwhile go into the next one (batching). It keeps the section's image as
//!   last written, writes only the 4 KiB blocks that changed (the first write
//!   under a spec is the *init*: header + the whole bitmap), flushes after a mark
//!   when the log bdev has a volatile write cache, then sets the durable bits and
//!   answers the waiting writes' reactors (one message per reactor per log write;
//!   a full mailbox is retried by the owner's poller, never dropped).
//! - Cleaning: every [`DRL_CLEAN_IDLE`] the owner sweeps the durable regions; one
//!   with no write in flight and none completed since the previous sweep (so idle
//!   for at least `DRL_CLEAN_IDLE`) is cleared in the next log write.
//!
//! # Why cleaning never clears a region a write relies on
//!
//! A writer increments the region's in-flight count, then loads its durable bit
//! (both `SeqCst`). The owner clears the durable bit, then loads the in-flight
//! count (and the touched bit); if either is set it sets the durable bit again and
//! leaves the region dirty. With sequentially consistent operations at least one
//! side sees the other (Dekker): either the writer sees the bit cleared and asks
//! for a mark (which, with one log write at a time, is written after the clean),
//! or the owner sees the count and keeps the region. A durable bit is only ever
//! set while the region's bit is 1 in the last completed log write and no clean of
//! it is in flight (after a mark's write completed, on the restore above, or when
//! a mark takes a region back from the not-yet-written clean list), so a writer
//! that saw it set has its region dirty on the disk until its count drops to
//! zero. A failed log write leaves the disk's content unknown: the waiting writes
//! fail with EIO, nothing becomes durable, and the next log write rewrites the
//! whole section (header included), so a failed clean can never hide a region.
//!
//! Layout changes happen at a drained quiesce (waiting writes count as in flight).
//! A commit keeps the log state when the log spec and region count are unchanged;
//! otherwise the new state starts uninitialized and its first mark re-inits the
//! section. The owner is per volume, so a clean of the old spec still in flight
//! completes before the new spec's init is issued.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak as RcWeak};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use plexd_target_api::drl::{
    bitmap_bytes, regions_for, section_bytes, DirtyLogSpec, DrlHeader, DRL_BLOCK_BYTES,
};

use crate::bdev::{Bdev, BdevChannel, BdevIo, IoCallback, IoDone, IoKind, IoStatus};
use crate::buf::{IoBuf, BUF_ALIGN_BYTES};
use crate::error::TargetError;
use crate::reactor::{Msg, Poller, Reactor};
use crate::services::Services;

/// A dirty region with no write in flight and none completed for this long is
/// cleaned (md's bitmap daemon uses about 5 s).
pub const DRL_CLEAN_IDLE: Duration = Duration::from_secs(5);
/// Writes of one volume waiting for their regions to be marked, over all
/// reactors; more fail with EAGAIN (`VolumeStats::log_refused`).
pub const MAX_DRL_WAITING: usize = 4096;
/// Most in-flight counters per volume (regions share them beyond this).
pub const DRL_INFLIGHT_BUCKETS: u64 = 1 << 16;
/// Longest single I/O of a log write (a larger changed span is split).
pub const MAX_LOG_IO_BYTES: u64 = 1 << 20;

/// Counters that outlive a log spec (kept by the volume).
#[derive(Default)]
pub(crate) struct DrlCounters {
    /// Log writes completed (init, marks, cleans).
    pub(crate) log_writes: AtomicU64,
    /// Regions dirty in the section as last written.
    pub(crate) dirty_regions: AtomicU64,
    /// Log copies retired after a failed write (see "Copies" in the module doc).
    pub(crate) copy_failures: AtomicU64,
}

/// One volume's log state under one log spec, shared by every reactor.
pub(crate) struct DrlShared {
    pub(crate) spec: DirtyLogSpec,
    volume: String,
    /// The volume's id (the owner's key; replies find the channels by it).
    vol_id: u64,
    /// The bdev of each copy (`spec.copies`, same order).
    bdevs: Vec<Arc<dyn Bdev>>,
    region_shift: u32,
    regions: u64,
    /// The owner reactor.
    owner: usize,
    durable: Box<[AtomicU64]>,
    touched: Box<[AtomicU64]>,
    inflight: Box<[AtomicU32]>,
    /// Writes waiting for a mark (at most [`MAX_DRL_WAITING`]).
    pub(crate) waiting: AtomicUsize,
    pub(crate) counters: Arc<DrlCounters>,
}

fn words(n: u64) -> Box<[AtomicU64]> {
    (0..n.div_ceil(64)).map(|_| AtomicU64::new(0)).collect()
}

impl DrlShared {
    /// Checks `spec` against the volume and the target's bdevs (create/prepare).
    pub(crate) fn check(
        svc: &Services,
        volume: &str,
        size_bytes: u64,
        spec: &DirtyLogSpec,
    ) -> Result<Vec<Arc<dyn Bdev>>, TargetError> {
        let bad = |reason: String| TargetError::invalid(format!("volume {volume}"), reason);
        spec.check(size_bytes).map_err(bad)?;
        let need = section_bytes(regions_for(size_bytes, spec.region_bytes));
        let mut bdevs = Vec::with_capacity(spec.copies.len());
        for copy in &spec.copies {
            let bdev = svc.bdev(&copy.bdev)?;
            let bs = bdev.block_size() as u64;
            if !DRL_BLOCK_BYTES.is_multiple_of(bs) {
                return Err(bad(format!(
                    "dirty region log on {}: its block size {bs} does not divide {DRL_BLOCK_BYTES}",
                    copy.bdev
                )));
            }
            if copy
                .offset_bytes
                .checked_add(need)
                .is_none_or(|end| end > bdev.size_bytes())
            {
                return Err(bad(format!(
                    "dirty region log on {}: the section at {} ({need} bytes) does not fit the \
                     bdev ({} bytes)",
                    copy.bdev,
                    copy.offset_bytes,
                    bdev.size_bytes()
                )));
            }
            bdevs.push(bdev);
        }
        Ok(bdevs)
    }

    /// The log state of a volume (`vol_id`, `size_bytes`) under `spec`, not yet
    /// initialized on the disk (the first mark writes the init).
    pub(crate) fn new(
        svc: &Services,
        volume: &str,
        vol_id: u64,
        size_bytes: u64,
        spec: &DirtyLogSpec,
        counters: Arc<DrlCounters>,
    ) -> Result<Arc<DrlShared>, TargetError> {
        let bdevs = Self::check(svc, volume, size_bytes, spec)?;
        let nreactors = svc.reactors().len().max(1) as u64;
        Ok(Self::build(
            volume, vol_id, size_bytes, spec, counters, bdevs, nreactors,
        ))
    }

    fn build(
        volume: &str,
        vol_id: u64,
        size_bytes: u64,
        spec: &DirtyLogSpec,
        counters: Arc<DrlCounters>,
        bdevs: Vec<Arc<dyn Bdev>>,
        nreactors: u64,
    ) -> Arc<DrlShared> {
        let regions = regions_for(size_bytes, spec.region_bytes);
        Arc::new(DrlShared {
            spec: spec.clone(),
            volume: volume.to_string(),
            vol_id,
            bdevs,
            region_shift: spec.region_bytes.trailing_zeros(),
            regions,
            owner: (vol_id % nreactors) as usize,
            durable: words(regions),
            touched: words(regions),
            inflight: (0..regions.min(DRL_INFLIGHT_BUCKETS))
                .map(|_| AtomicU32::new(0))
                .collect(),
            waiting: AtomicUsize::new(0),
            counters,
        })
    }

    /// True when this state can serve a volume of `size_bytes` under `spec`
    /// unchanged (a commit then keeps it).
    pub(crate) fn same(&self, size_bytes: u64, spec: &DirtyLogSpec) -> bool {
        self.spec == *spec && self.regions == regions_for(size_bytes, spec.region_bytes)
    }

    /// The regions `[first, last]` of a request (non-empty, inside the volume).
    #[inline]
    pub(crate) fn regions_of(&self, offset: u64, len: u64) -> (u64, u64) {
        let first = offset >> self.region_shift;
        let last = (offset + len.max(1) - 1) >> self.region_shift;
        (first, last.min(self.regions.saturating_sub(1)))
    }

    #[inline]
    fn bucket(&self, region: u64) -> &AtomicU32 {
        &self.inflight[(region % self.inflight.len() as u64) as usize]
    }

    #[inline]
    fn bit(region: u64) -> (usize, u64) {
        ((region / 64) as usize, 1u64 << (region % 64))
    }

    /// A write to `[offset, offset + len)` starts: counts it in its regions; true
    /// when every region is already durably dirty (the write may be issued).
    #[inline]
    pub(crate) fn enter(&self, offset: u64, len: u64) -> bool {
        let (first, last) = self.regions_of(offset, len);
        for r in first..=last {
            self.bucket(r).fetch_add(1, Ordering::SeqCst);
        }
        self.durable_range(first, last)
    }

    fn durable_range(&self, first: u64, last: u64) -> bool {
        (first..=last).all(|r| {
            let (w, b) = Self::bit(r);
            self.durable[w].load(Ordering::SeqCst) & b != 0
        })
    }

    /// A write counted by [`DrlShared::enter`] is over.
    #[inline]
    pub(crate) fn exit(&self, offset: u64, len: u64) {
        let (first, last) = self.regions_of(offset, len);
        for r in first..=last {
            let (w, b) = Self::bit(r);
            if self.touched[w].load(Ordering::Relaxed) & b == 0 {
                self.touched[w].fetch_or(b, Ordering::SeqCst);
            }
            let was = self.bucket(r).fetch_sub(1, Ordering::SeqCst);
            debug_assert!(was > 0, "dirty region log in-flight count underflow");
        }
    }

    /// Asks the owner to mark the regions of `[offset, offset + len)`; the answer
    /// comes to `from`'s channel of the volume as `drl_done(token, result)`.
    /// Err when the owner's mailbox is full (the caller fails the write).
    pub(crate) fn request_mark(
        self: &Arc<Self>,
        from: &Reactor,
        offset: u64,
        len: u64,
        token: u64,
    ) -> Result<(), String> {
        let (first, last) = self.regions_of(offset, len);
        let w = Waiter {
            drl: Arc::clone(self),
            first,
            last,
            reactor: from.id(),
            token,
        };
        let Some(h) = from.peers().get(self.owner) else {
            return Err(format!("no reactor {}", self.owner));
        };
        h.try_send(Box::new(move |r| on_mark(r, w)))
            .map_err(|(full, _)| full.to_string())
    }
}

/// A write waiting for its regions' mark.
struct Waiter {
    drl: Arc<DrlShared>,
    first: u64,
    last: u64,
    reactor: usize,
    token: u64,
}

/// Answers to waiting writes: `(volume id, token, 0 or an errno)`.
pub(crate) type Answer = (u64, u64, i32);

/// An aligned heap buffer holding a section's image (the log writes' source).
struct SectionBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
    len: usize,
}

impl SectionBuf {
    fn new(len: usize) -> Result<SectionBuf, String> {
        let layout = std::alloc::Layout::from_size_align(len.max(1), BUF_ALIGN_BYTES)
            .map_err(|e| format!("bad section size {len}: {e}"))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(format!("cannot allocate {len} bytes"));
        }
        Ok(SectionBuf { ptr, layout, len })
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` holds `len` initialized (zeroed at allocation) bytes owned
        // by self; the owner changes them only while no log write is in flight
        // (`writing` is None), so no I/O reads them meanwhile.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }

    fn io(&self) -> IoBuf {
        // SAFETY: the allocation holds `len` bytes and is owned by the DrlOwner,
        // which each log write's callback keeps alive (an Rc) until it completes.
        unsafe { IoBuf::from_raw(self.ptr, self.len) }
    }
}

impl Drop for SectionBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout; the owner (and so this buffer) is
        // dropped only after its last log write completed (callbacks hold it).
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

/// The log write in flight.
struct Batch {
    drl: Arc<DrlShared>,
    waiters: Vec<Waiter>,
    /// The bitmap bytes that changed, `[lo, hi)` (the whole bitmap for an init).
    lo: usize,
    hi: usize,
    /// I/Os of this phase still outstanding (over all copies).
    left: u32,
    /// Per copy (`spec.copies` order): the first error of this write (0: none).
    errno: Vec<i32>,
    flushing: bool,
    flush_after: bool,
}

struct OwnerState {
    cur: Weak<DrlShared>,
    /// Per copy (`spec.copies` order): its channel while it is live, None once
    /// retired.
    chans: Vec<Option<Rc<dyn BdevChannel>>>,
    /// The bitmap as last written (the diff base).
    disk: Vec<u8>,
    /// Header block + bitmap: the next write's source.
    buf: Option<SectionBuf>,
    /// False until the init completed (and again after a failed log write).
    initialized: bool,
    writing: Option<Batch>,
    pending: Vec<Waiter>,
    to_clean: Vec<u64>,
    next_sweep: Instant,
    /// Answers not sent yet, per reactor.
    answers: Vec<(usize, Vec<Answer>)>,
    /// Answer messages a full mailbox refused (the poller retries them).
    retry: Vec<(usize, Msg)>,
}

/// The one writer of a volume's section, living on its owner reactor.
struct DrlOwner {
    me: RcWeak<DrlOwner>,
    reactor: Rc<Reactor>,
    st: RefCell<OwnerState>,
}

/// The owners on one reactor, by volume id, whether their poller runs, and when
/// it next has work (it costs one comparison per reactor iteration until then).
#[derive(Default)]
struct DrlOwners {
    map: RefCell<HashMap<u64, Rc<DrlOwner>>>,
    poller: Cell<bool>,
    due: Cell<Option<Instant>>,
}

impl DrlOwners {
    /// The poller has work at `at` (or earlier).
    fn due_by(&self, at: Instant) {
        if self.due.get().is_none_or(|d| at < d) {
            self.due.set(Some(at));
        }
    }
}

struct OwnersPoller {
    owners: Rc<DrlOwners>,
}

impl Poller for OwnersPoller {
    fn poll(&self, now: Instant) -> usize {
        if self.owners.due.get().is_none_or(|d| now < d) {
            return 0;
        }
        self.owners.due.set(None);
        let list: Vec<(u64, Rc<DrlOwner>)> = self
            .owners
            .map
            .borrow()
            .iter()
            .map(|(k, o)| (*k, Rc::clone(o)))
            .collect();
        let mut work = 0;
        for (k, o) in list {
            work += o.tick(now);
            if o.idle_and_gone() {
                self.owners.map.borrow_mut().remove(&k);
                continue;
            }
            let st = o.st.borrow();
            self.owners.due_by(if st.retry.is_empty() {
                st.next_sweep
            } else {
                now
            });
        }
        work
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.owners.due.get()
    }
}

/// On the owner reactor: a write waits for `w`'s regions.
fn on_mark(r: &Rc<Reactor>, w: Waiter) {
    let owners = r.local::<DrlOwners>();
    if !owners.poller.replace(true) {
        r.add_poller(Rc::new(OwnersPoller {
            owners: Rc::clone(&owners),
        }));
    }
    owners.due_by(r.now() + DRL_CLEAN_IDLE);
    let owner = Rc::clone(
        owners
            .map
            .borrow_mut()
            .entry(w.drl.vol_id)
            .or_insert_with(|| {
                Rc::new_cyclic(|me| DrlOwner {
                    me: me.clone(),
                    reactor: Rc::clone(r),
                    st: RefCell::new(OwnerState {
                        cur: Weak::new(),
                        chans: Vec::new(),
                        disk: Vec::new(),
                        buf: None,
                        initialized: false,
                        writing: None,
                        pending: Vec::new(),
                        to_clean: Vec::new(),
                        next_sweep: r.now() + DRL_CLEAN_IDLE,
                        answers: Vec::new(),
                        retry: Vec::new(),
                    }),
                })
            }),
    );
    owner.mark(w);
}

/// Sets the regions of `waiters` and clears `cleans` in the bitmap image `bm`;
/// returns the byte range `[lo, hi)` of `bm` that now differs from `disk`, the
/// bitmap as last written (empty when `lo >= hi`).
fn apply_bits(bm: &mut [u8], disk: &[u8], waiters: &[Waiter], cleans: &[u64]) -> (usize, usize) {
    let (mut lo, mut hi) = (usize::MAX, 0usize);
    let mut note = |bm: &[u8], i: usize| {
        if bm[i] != disk[i] {
            lo = lo.min(i);
            hi = hi.max(i + 1);
        }
    };
    for w in waiters {
        for r in w.first..=w.last {
            let i = (r / 8) as usize;
            bm[i] |= 1 << (r % 8);
            note(bm, i);
        }
    }
    for &r in cleans {
        let i = (r / 8) as usize;
        bm[i] &= !(1 << (r % 8));
        note(bm, i);
    }
    (lo, hi)
}

fn is_cur(st: &OwnerState, d: &Arc<DrlShared>) -> bool {
    std::ptr::eq(st.cur.as_ptr(), Arc::as_ptr(d))
}

/// Queues the answer `result` for each waiter.
fn answer(st: &mut OwnerState, waiters: &[Waiter], result: i32) {
    for w in waiters {
        let item = (w.drl.vol_id, w.token, result);
        match st.answers.iter_mut().find(|(r, _)| *r == w.reactor) {
            Some((_, v)) => v.push(item),
            None => st.answers.push((w.reactor, vec![item])),
        }
    }
}

fn set_durable(d: &DrlShared, first: u64, last: u64) {
    for r in first..=last {
        let (i, b) = DrlShared::bit(r);
        d.durable[i].fetch_or(b, Ordering::SeqCst);
    }
}

impl DrlOwner {
    /// Nothing left to do and nobody uses the log any more (the owner can go).
    fn idle_and_gone(&self) -> bool {
        let st = self.st.borrow();
        st.cur.strong_count() == 0
            && st.writing.is_none()
            && st.pending.is_empty()
            && st.answers.is_empty()
            && st.retry.is_empty()
    }

    /// Starts serving `d` (the first log spec or a new one); nothing in flight.
    fn switch(&self, st: &mut OwnerState, d: &Arc<DrlShared>) -> Result<(), String> {
        debug_assert!(st.writing.is_none());
        let mut chans = Vec::with_capacity(d.bdevs.len());
        let mut errors = Vec::new();
        for (i, bdev) in d.bdevs.iter().enumerate() {
            match self.reactor.channel(bdev) {
                Ok(c) => chans.push(Some(c)),
                Err(e) => {
                    errors.push((i, e));
                    chans.push(None);
                }
            }
        }
        if chans.iter().all(Option::is_none) {
            let why: Vec<String> = errors.into_iter().map(|(_, e)| e).collect();
            return Err(why.join("; "));
        }
        for (i, e) in errors {
            d.counters.copy_failures.fetch_add(1, Ordering::Relaxed);
            log::error!(
                "volume {}: cannot open dirty region log copy {} on bdev {} (node {}): {e}; \
                 it is not written under log {:#x}",
                d.volume,
                i + 1,
                d.spec.copies.get(i).map_or("?", |c| c.bdev.as_str()),
                d.spec.node,
                d.spec.log_id
            );
        }
        let bitmap = bitmap_bytes(d.regions) as usize;
        let mut buf = SectionBuf::new(DRL_BLOCK_BYTES as usize + bitmap)?;
        let header = DrlHeader {
            node: d.spec.node,
            log_id: d.spec.log_id,
            region_bytes: d.spec.region_bytes,
            regions: d.regions,
        };
        buf.bytes_mut()[..DRL_BLOCK_BYTES as usize].copy_from_slice(&header.encode());
        st.cur = Arc::downgrade(d);
        st.chans = chans;
        st.disk = vec![0u8; bitmap];
        st.buf = Some(buf);
        st.initialized = false;
        st.to_clean.clear();
        st.next_sweep = self.reactor.now() + DRL_CLEAN_IDLE;
        d.counters.dirty_regions.store(0, Ordering::Relaxed);
        Ok(())
    }

    fn mark(&self, w: Waiter) {
        {
            let mut st = self.st.borrow_mut();
            if is_cur(&st, &w.drl) && st.initialized {
                // A region still on the clean list (not yet written) is taken back:
                // its bit is 1 on the disk.
                let d = Arc::clone(&w.drl);
                let (first, last) = (w.first, w.last);
                st.to_clean.retain(|&r| {
                    let back = (first..=last).contains(&r);
                    if back {
                        set_durable(&d, r, r);
                    }
                    !back
                });
                if d.durable_range(first, last) {
                    answer(&mut st, std::slice::from_ref(&w), 0);
                    self.send_answers(&mut st);
                    return;
                }
            }
            st.pending.push(w);
        }
        self.kick();
    }

    /// When a waiter names another log spec than the current one (a commit changed
    /// it), switches to that spec; false when that failed (every waiting write was
    /// answered EIO and nothing more is to be done now).
    fn serve_newer_spec(&self, st: &mut OwnerState) -> bool {
        let newer = st
            .pending
            .iter()
            .rev()
            .find(|w| !is_cur(st, &w.drl))
            .map(|w| Arc::clone(&w.drl));
        let Some(d) = newer else {
            return true;
        };
        let Err(e) = self.switch(st, &d) else {
            return true;
        };
        log::error!(
            "volume {}: cannot open the dirty region log on bdev {} (node {}): {e}; \
             failing {} waiting write(s) with EIO",
            d.volume,
            d.spec.bdevs(),
            d.spec.node,
            st.pending.len()
        );
        let pending = std::mem::take(&mut st.pending);
        answer(st, &pending, libc::EIO);
        self.send_answers(st);
        false
    }

    /// Issues the next log write when none is in flight and there is work.
    fn kick(&self) {
        let Some(me) = self.me.upgrade() else {
            return;
        };
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        if st.writing.is_some() || (st.pending.is_empty() && st.to_clean.is_empty()) {
            return;
        }
        if !self.serve_newer_spec(st) {
            return;
        }
        let live: Vec<(usize, Rc<dyn BdevChannel>)> = st
            .chans
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.clone().map(|c| (i, c)))
            .collect();
        let (Some(d), false, true) = (st.cur.upgrade(), live.is_empty(), st.buf.is_some()) else {
            // The volume or its log is gone: nobody waits for it any more.
            let pending = std::mem::take(&mut st.pending);
            answer(st, &pending, libc::EIO);
            st.to_clean.clear();
            self.send_answers(st);
            return;
        };
        // Waiters of an older spec (commits drain first, so only after a fence).
        let (waiters, stale): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut st.pending)
            .into_iter()
            .partition(|w| is_cur(st, &w.drl));
        answer(st, &stale, libc::EAGAIN);
        let cleans = std::mem::take(&mut st.to_clean);
        let init = !st.initialized;
        let Some(buf) = st.buf.as_mut() else {
            return;
        };
        let bm = &mut buf.bytes_mut()[DRL_BLOCK_BYTES as usize..];
        let (mut lo, mut hi) = apply_bits(bm, &st.disk, &waiters, &cleans);
        if init {
            (lo, hi) = (0, bm.len());
        }
        if lo >= hi {
            // Nothing changes on the disk: the bits were set already.
            for w in &waiters {
                set_durable(&d, w.first, w.last);
            }
            answer(st, &waiters, 0);
            self.send_answers(st);
            return;
        }
        // Whole blocks, as section offsets (block 0 is the header).
        let blk = DRL_BLOCK_BYTES as usize;
        let (start, end) = if init {
            (0, blk + bm.len())
        } else {
            (blk + lo / blk * blk, blk + hi.div_ceil(blk) * blk)
        };
        let io = buf.io();
        let flush_after = !waiters.is_empty();
        let pieces = (end - start).div_ceil(MAX_LOG_IO_BYTES as usize);
        st.writing = Some(Batch {
            drl: Arc::clone(&d),
            waiters,
            lo,
            hi,
            left: (pieces * live.len()) as u32,
            errno: vec![0; d.spec.copies.len()],
            flushing: false,
            flush_after,
        });
        drop(guard);
        // The same bytes to every live copy; an I/O's tag is its copy's index.
        for (i, chan) in live {
            let Some(copy) = d.spec.copies.get(i) else {
                continue;
            };
            let mut off = start;
            while off < end {
                let len = (end - off).min(MAX_LOG_IO_BYTES as usize);
                chan.submit(BdevIo {
                    kind: IoKind::Write,
                    offset_bytes: copy.offset_bytes + off as u64,
                    len_bytes: len as u64,
                    buf: io.slice(off, len),
                    cb: IoCallback::new(Rc::clone(&me) as Rc<dyn IoDone>, i as u64),
                });
                off += len;
            }
        }
    }

    /// The log write completed (all its I/Os, then its flush if any).
    fn write_done(&self) {
        let mut guard = self.st.borrow_mut();
        let st = &mut *guard;
        let Some(b) = st.writing.take() else {
            return;
        };
        let d = &b.drl;
        let live = |st: &OwnerState, i: usize| st.chans.get(i).is_some_and(Option::is_some);
        let ok = (0..b.errno.len()).any(|i| live(st, i) && b.errno[i] == 0);
        if ok {
            // Retire the live copies this write failed on: they missed it.
            for (i, &e) in b.errno.iter().enumerate() {
                if e == 0 || !live(st, i) {
                    continue;
                }
                st.chans[i] = None;
                d.counters.copy_failures.fetch_add(1, Ordering::Relaxed);
                log::error!(
                    "volume {}: dirty region log copy {} on bdev {} (node {}) failed with \
                     errno {e}; it is no longer written under log {:#x} (the other copies \
                     took the write)",
                    d.volume,
                    i + 1,
                    d.spec.copies.get(i).map_or("?", |c| c.bdev.as_str()),
                    d.spec.node,
                    d.spec.log_id
                );
            }
        }
        if ok {
            let Some(buf) = st.buf.as_mut() else {
                return;
            };
            let bm = &buf.bytes_mut()[DRL_BLOCK_BYTES as usize..];
            let ones = |s: &[u8]| s.iter().map(|x| x.count_ones() as u64).sum::<u64>();
            let before = ones(&st.disk[b.lo..b.hi]);
            let after = ones(&bm[b.lo..b.hi]);
            st.disk[b.lo..b.hi].copy_from_slice(&bm[b.lo..b.hi]);
            st.initialized = true;
            let c = &d.counters;
            c.log_writes.fetch_add(1, Ordering::Relaxed);
            let dirty = c.dirty_regions.load(Ordering::Relaxed);
            c.dirty_regions
                .store((dirty + after).saturating_sub(before), Ordering::Relaxed);
            for w in &b.waiters {
                set_durable(d, w.first, w.last);
            }
            answer(st, &b.waiters, 0);
        } else {
            let failed: Vec<String> = (0..b.errno.len())
                .filter(|&i| live(st, i))
                .map(|i| {
                    let bdev = d.spec.copies.get(i).map_or("?", |c| c.bdev.as_str());
                    format!("bdev {bdev} errno {}", b.errno[i])
                })
                .collect();
            log::error!(
                "volume {}: dirty region log write (node {}) failed on every live copy ({}); \
                 failing {} waiting write(s) with EIO (later writes mark again)",
                d.volume,
                d.spec.node,
                failed.join(", "),
                b.waiters.len()
            );
            // What the disk holds now is unknown: the next write rewrites it all.
            st.initialized = false;
            if let Some(buf) = st.buf.as_mut() {
                let bm = &mut buf.bytes_mut()[DRL_BLOCK_BYTES as usize..];
                bm[b.lo..b.hi].copy_from_slice(&st.disk[b.lo..b.hi]);
            }
            answer(st, &b.waiters, libc::EIO);
        }
        self.send_answers(st);
        drop(guard);
        self.kick();
    }

    /// Sends the queued answers, one message per reactor; a message a full
    /// mailbox refuses is kept for the poller's next pass.
    fn send_answers(&self, st: &mut OwnerState) {
        for (reactor, items) in std::mem::take(&mut st.answers) {
            let msg: Msg = Box::new(move |r| super::drl_answers(r, items));
            self.send_to(st, reactor, msg);
        }
    }

    fn send_to(&self, st: &mut OwnerState, reactor: usize, msg: Msg) {
        let Some(h) = self.reactor.peers().get(reactor) else {
            return;
        };
        if let Err((_, msg)) = h.try_send(msg) {
            st.retry.push((reactor, msg));
            self.reactor.local::<DrlOwners>().due_by(self.reactor.now());
        }
    }

    /// The poller's pass: retries answers, sweeps idle regions when due.
    fn tick(&self, now: Instant) -> usize {
        let mut work = 0;
        {
            let mut st = self.st.borrow_mut();
            if !st.retry.is_empty() {
                let retry = std::mem::take(&mut st.retry);
                work += retry.len();
                for (reactor, msg) in retry {
                    self.send_to(&mut st, reactor, msg);
                }
            }
            if now < st.next_sweep {
                return work;
            }
            st.next_sweep = now + DRL_CLEAN_IDLE;
            let Some(d) = st.cur.upgrade() else {
                return work;
            };
            if !st.initialized {
                return work;
            }
            let before = st.to_clean.len();
            sweep(&d, &mut st.to_clean);
            work += st.to_clean.len() - before;
        }
        self.kick();
        work
    }
}

/// Moves the idle durable regions of `d` to `to_clean` (their durable bits
/// cleared): no write in flight and none completed since the previous sweep.
fn sweep(d: &DrlShared, to_clean: &mut Vec<u64>) {
    for (w, word) in d.durable.iter().enumerate() {
        let dur = word.load(Ordering::SeqCst);
        if dur == 0 {
            continue;
        }
        let touched = d.touched[w].swap(0, Ordering::SeqCst);
        let mut cand = dur & !touched;
        while cand != 0 {
            let bit = cand.trailing_zeros() as u64;
            cand &= cand - 1;
            let r = w as u64 * 64 + bit;
            let b = 1u64 << bit;
            word.fetch_and(!b, Ordering::SeqCst);
            // The other half of the writers' enter (see the module doc).
            if d.bucket(r).load(Ordering::SeqCst) != 0
                || d.touched[w].load(Ordering::SeqCst) & b != 0
            {
                word.fetch_or(b, Ordering::SeqCst);
                continue;
            }
            to_clean.push(r);
        }
    }
}

impl IoDone for DrlOwner {
    fn io_done(&self, tag: u64, status: IoStatus) {
        let flushes = {
            let mut guard = self.st.borrow_mut();
            let st = &mut *guard;
            let Some(b) = st.writing.as_mut() else {
                return;
            };
            if let (IoStatus::Failed(e), Some(slot)) = (status, b.errno.get_mut(tag as usize)) {
                if *slot == 0 {
                    *slot = e;
                }
            }
            b.left -= 1;
            if b.left > 0 {
                return;
            }
            if b.flushing || !b.flush_after {
                Vec::new()
            } else {
                // A mark: flush each copy whose write succeeded, if its bdev has a
                // volatile write cache.
                let d = &b.drl;
                let flushes: Vec<(usize, Rc<dyn BdevChannel>)> = st
                    .chans
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| b.errno.get(*i) == Some(&0))
                    .filter(|(i, _)| d.bdevs.get(*i).is_some_and(|x| x.volatile_write_cache()))
                    .filter_map(|(i, c)| c.clone().map(|c| (i, c)))
                    .collect();
                b.flushing = true;
                b.left = flushes.len() as u32;
                flushes
            }
        };
        let Some(me) = self.me.upgrade().filter(|_| !flushes.is_empty()) else {
            return self.write_done();
        };
        for (i, chan) in flushes {
            chan.submit(BdevIo {
                kind: IoKind::Flush,
                offset_bytes: 0,
                len_bytes: 0,
                buf: IoBuf::empty(),
                cb: IoCallback::new(Rc::clone(&me) as Rc<dyn IoDone>, i as u64),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexd_target_api::drl::MIN_REGION_BYTES;
    use std::sync::atomic::AtomicBool;

    fn shared(regions: u64) -> Arc<DrlShared> {
        let spec = DirtyLogSpec {
            copies: vec![plexd_target_api::drl::DrlCopy {
                bdev: "l".into(),
                offset_bytes: 0,
            }],
            section_bytes: section_bytes(regions),
            node: 1,
            log_id: 1,
            region_bytes: MIN_REGION_BYTES,
        };
        let bdev = crate::bdev::null::NullBdev::new("l", 1 << 20, 512);
        DrlShared::build(
            "v",
            0,
            regions * MIN_REGION_BYTES,
            &spec,
            Arc::default(),
            vec![bdev],
            1,
        )
    }

    #[test]
    fn a_region_is_cleaned_only_when_idle_for_a_whole_sweep() {
        let d = shared(128);
        let r3 = 3 * MIN_REGION_BYTES;
        assert!(!d.enter(r3, 4096), "nothing is durable before a mark");
        set_durable(&d, 3, 3);
        assert!(d.enter(r3 + 4096, 4096), "a durable region needs no mark");
        let mut clean = Vec::new();
        sweep(&d, &mut clean);
        assert!(clean.is_empty(), "writes in flight: kept");
        assert!(d.durable_range(3, 3));
        d.exit(r3, 4096);
        d.exit(r3 + 4096, 4096);
        sweep(&d, &mut clean);
        assert!(
            clean.is_empty(),
            "a write completed since the last sweep: kept"
        );
        sweep(&d, &mut clean);
        assert_eq!(clean, vec![3], "idle for a whole sweep period: cleaned");
        assert!(!d.enter(r3, 4096), "a cleaned region needs a new mark");
        d.exit(r3, 4096);
        // A write spanning two regions counts in both.
        assert_eq!(d.regions_of(5 * MIN_REGION_BYTES - 512, 1024), (4, 5));
        assert_eq!(
            d.regions_of(127 * MIN_REGION_BYTES, MIN_REGION_BYTES),
            (127, 127)
        );
    }

    /// Writers that found their region durable and the sweeper race; a region a
    /// writer is relying on is never handed to the clean list (the Dekker
    /// argument of the module doc).
    #[test]
    fn the_sweeper_never_cleans_a_region_a_writer_relies_on() {
        const REGIONS: u64 = 8;
        const ROUNDS: usize = 20_000;
        const HOLD_SPINS: usize = 2_000;
        const MIN_RELIED: u64 = 1_000;
        const DEADLINE: std::time::Duration = std::time::Duration::from_secs(30);
        let d = shared(REGIONS);
        let cleaned: Vec<AtomicBool> = (0..REGIONS).map(|_| AtomicBool::new(false)).collect();
        let stop = AtomicBool::new(false);
        let relied = AtomicU64::new(0);
        std::thread::scope(|sc| {
            for t in 0..2u64 {
                let (d, cleaned, stop, relied) = (&d, &cleaned, &stop, &relied);
                sc.spawn(move || {
                    let mut x = t + 1;
                    while !stop.load(Ordering::Relaxed) {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                        let r = (x >> 33) % REGIONS;
                        let off = r * MIN_REGION_BYTES;
                        if d.enter(off, 4096) {
                            relied.fetch_add(1, Ordering::Relaxed);
                            // Hold the region a while, as a write at the disk does.
                            for _ in 0..HOLD_SPINS {
                                std::hint::spin_loop();
                            }
                            assert!(
                                !cleaned[r as usize].load(Ordering::SeqCst),
                                "region {r} was cleaned while a write relied on it"
                            );
                        }
                        d.exit(off, 4096);
                    }
                });
            }
            // At least ROUNDS sweeps, and on until the writers relied on a region
            // MIN_RELIED times (a loaded machine may not run them at first), for
            // at most DEADLINE.
            let started = std::time::Instant::now();
            for round in 0.. {
                let enough = round >= ROUNDS && relied.load(Ordering::Relaxed) >= MIN_RELIED;
                if enough || started.elapsed() > DEADLINE {
                    break;
                }
                // The owner: marks every region durable again (as a mark would
                // after its log write), then sweeps.
                for r in 0..REGIONS {
                    cleaned[r as usize].store(false, Ordering::SeqCst);
                }
                set_durable(&d, 0, REGIONS - 1);
                let mut clean = Vec::new();
                // Two sweeps: the first clears the touched bits.
                sweep(&d, &mut clean);
                sweep(&d, &mut clean);
                for r in &clean {
                    cleaned[*r as usize].store(true, Ordering::SeqCst);
                }
                // A cleaned region stays non-durable until marked again: a writer
                // that enters now waits, so it cannot rely on it.
                for r in &clean {
                    assert!(!d.durable_range(*r, *r), "round {round}");
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
        let relied = relied.load(Ordering::Relaxed);
        assert!(
            relied >= MIN_RELIED,
            "the writers relied on a region {relied} times in {DEADLINE:?}"
        );
    }
}
