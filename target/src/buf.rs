//! I/O buffers: one aligned memory region per target (2 MiB hugepages when the
//! machine has them, anonymous memory otherwise), cut into size classes, handed out
//! through per-reactor caches. Nothing is allocated per I/O in steady state.
//!
//! A [`PoolBuf`] owns one chunk; [`IoBuf`] is the borrowed (pointer, length) view the
//! bdev layers pass down the stack. The owner of a `PoolBuf` keeps it alive until
//! every I/O using its `IoBuf` has completed.
//!
//! The pool never deadlocks across reactors:
//! - a reactor's cache keeps at most `1/CACHE_SHARE_DIVISOR` of a class (and at most
//!   [`CACHE_MAX_CHUNKS`]); chunks past that watermark go back to the shared list, so
//!   idle chunks of a class can never all sit in one reactor's cache;
//! - a reactor that finds a class exhausted (a waiter's request or a plain
//!   `try_get`) joins the class's
//!   *hungry* queue (one entry per reactor, FIFO) and asks every other reactor to
//!   release its cached chunks of that class; from then on every chunk of that class
//!   given back anywhere is handed to the reactor at the head of the queue (through
//!   its message ring, which wakes it), round robin between hungry reactors;
//! - waiters queue per class, so a 4 KiB request never waits behind a 1 MiB one.
//!
//! Users of the pool (iSCSI connections) are also limited to a share of each class:
//! [`BufPool::user_cap`] (see `docs/ISCSI.md`, "Buffers and fairness").

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_queue::ArrayQueue;

/// Alignment of every buffer: enough for O_DIRECT on 4 KiB-sector devices.
pub const BUF_ALIGN_BYTES: usize = 4096;

/// The chunk sizes of the pool, smallest first. A request is served from the
/// smallest class that holds it.
pub const SIZE_CLASSES_BYTES: [usize; 4] = [4 << 10, 64 << 10, 256 << 10, 1 << 20];

/// Most chunks a reactor keeps in its local cache per class before returning
/// chunks to the shared free list (an absolute ceiling; see [`CACHE_SHARE_DIVISOR`]).
pub const CACHE_MAX_CHUNKS: usize = 64;

/// A reactor's cache keeps at most `chunks / CACHE_SHARE_DIVISOR` chunks of a class
/// (at least one): the 64 chunks of 1 MiB allow 8 per reactor cache.
pub const CACHE_SHARE_DIVISOR: usize = 8;

/// One pool user (an iSCSI connection) holds at most `chunks / USER_SHARE_DIVISOR`
/// chunks of a class, so a few users that never give buffers back cannot take a
/// whole class (16 of the 64 chunks of 1 MiB).
pub const USER_SHARE_DIVISOR: usize = 4;

/// Most chunks moved between the shared list and a reactor cache in one refill
/// (half the class's cache watermark when that is smaller).
const CACHE_BATCH_CHUNKS: usize = 16;

/// Most buffer waiters one reactor queues per class; a request beyond that is
/// refused ([`BufWait::Full`]): the iSCSI frontend then leaves the task parked until
/// the connection frees a buffer of that class or its next buffer request is served.
pub const MAX_WAITERS_PER_CLASS: usize = 4096;

/// A borrowed view of I/O memory: where the data lives and how long it is.
///
/// It is a plain pointer: whoever created it (from a [`PoolBuf`] or another owner of
/// memory) keeps the memory alive and unaliased by writers until the I/O completes.
#[derive(Clone, Copy, Debug)]
pub struct IoBuf {
    ptr: *mut u8,
    len: usize,
}

impl IoBuf {
    /// An empty buffer, for I/O kinds that move no data (flush, unmap, reset...).
    pub const fn empty() -> Self {
        IoBuf {
            ptr: std::ptr::null_mut(),
            len: 0,
        }
    }

    /// A view of `len` bytes at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr+len` must be valid for reads and writes for as long as any I/O that
    /// carries this view (or a slice of it) is in flight.
    pub unsafe fn from_raw(ptr: *mut u8, len: usize) -> Self {
        IoBuf { ptr, len }
    }

    /// Start of the memory.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the view holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sub-view `[offset, offset + len)`. Panics (a caller bug) if out of range.
    pub fn slice(&self, offset: usize, len: usize) -> IoBuf {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "IoBuf::slice out of range: {offset}+{len} > {}",
            self.len
        );
        if len == 0 {
            return IoBuf::empty();
        }
        // SAFETY: offset + len <= self.len, so the result stays inside the same
        // allocation this view was created from.
        IoBuf {
            ptr: unsafe { self.ptr.add(offset) },
            len,
        }
    }

    /// The bytes, for reading.
    ///
    /// # Safety
    /// No I/O may be writing into this memory while the slice is alive, and the
    /// memory must outlive the chosen lifetime `'a`.
    pub unsafe fn as_slice<'a>(&self) -> &'a [u8] {
        if self.len == 0 {
            return &[];
        }
        std::slice::from_raw_parts(self.ptr, self.len)
    }

    /// The bytes, for writing.
    ///
    /// # Safety
    /// No I/O may be reading or writing this memory while the slice is alive, no
    /// other slice of it may exist, and the memory must outlive the lifetime `'a`.
    pub unsafe fn as_mut_slice<'a>(&self) -> &'a mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        std::slice::from_raw_parts_mut(self.ptr, self.len)
    }
}

/// One mapped memory region: hugepage-backed when possible.
struct Region {
    base: *mut u8,
    len_bytes: usize,
    hugepages: bool,
}

// SAFETY: the region is plain memory owned by the pool; chunks are handed to one
// owner at a time through the free lists, so sharing the base pointer between
// threads does not create aliasing by itself.
unsafe impl Send for Region {}
// SAFETY: as above; the Region itself is never mutated after creation.
unsafe impl Sync for Region {}

impl Region {
    fn map(len_bytes: usize, try_hugepages: bool) -> std::io::Result<Region> {
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        if try_hugepages {
            // SAFETY: anonymous mapping with no address hint; the result is checked.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len_bytes,
                    prot,
                    flags | libc::MAP_HUGETLB,
                    -1,
                    0,
                )
            };
            if p != libc::MAP_FAILED {
                return Ok(Region {
                    base: p as *mut u8,
                    len_bytes,
                    hugepages: true,
                });
            }
        }
        // SAFETY: as above.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len_bytes, prot, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Region {
            base: p as *mut u8,
            len_bytes,
            hugepages: false,
        })
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: base/len came from a successful mmap and nothing uses the region
        // once the pool (its only owner) is dropped.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.len_bytes);
        }
    }
}

/// True when `/proc/sys/vm/nr_hugepages` is above zero.
pub fn hugepages_configured() -> bool {
    std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .is_some_and(|n| n > 0)
}

/// How many chunks of each class a pool holds.
#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Chunks per class, in the order of [`SIZE_CLASSES_BYTES`].
    pub chunks_per_class: [usize; 4],
    /// Use hugepages when `/proc/sys/vm/nr_hugepages` > 0.
    pub hugepages: bool,
}

/// Chunks per class of the default pool: 4 MiB + 64 MiB + 64 MiB + 64 MiB = 196 MiB
/// of I/O buffers.
const DEFAULT_CHUNKS_PER_CLASS: [usize; 4] = [1024, 1024, 256, 64];
/// Smallest pool [`PoolConfig::with_total_bytes`] makes.
pub const MIN_POOL_BYTES: u64 = 16 << 20;
/// Largest pool [`PoolConfig::with_total_bytes`] makes.
pub const MAX_POOL_BYTES: u64 = 64 << 30;
/// Fewest chunks a class of a sized pool gets (a 1 MiB command needs one chunk of
/// the largest class, and connections each get a share).
pub const MIN_CHUNKS_PER_CLASS: usize = 8;

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            chunks_per_class: DEFAULT_CHUNKS_PER_CLASS,
            hugepages: true,
        }
    }
}

impl PoolConfig {
    /// Bytes of I/O buffers the pool holds (before rounding up to 2 MiB).
    pub fn total_bytes(&self) -> u64 {
        self.chunks_per_class
            .iter()
            .zip(SIZE_CLASSES_BYTES)
            .map(|(&n, b)| (n * b) as u64)
            .sum()
    }

    /// A pool of about `bytes`: every class keeps its share of the default pool
    /// (at least [`MIN_CHUNKS_PER_CLASS`] chunks). Refused outside
    /// [`MIN_POOL_BYTES`]..=[`MAX_POOL_BYTES`].
    pub fn with_total_bytes(bytes: u64) -> Result<PoolConfig, String> {
        if !(MIN_POOL_BYTES..=MAX_POOL_BYTES).contains(&bytes) {
            return Err(format!(
                "buffer pool of {bytes} bytes is outside {} MiB..={} GiB",
                MIN_POOL_BYTES >> 20,
                MAX_POOL_BYTES >> 30
            ));
        }
        let default = PoolConfig::default().total_bytes();
        let mut chunks_per_class = DEFAULT_CHUNKS_PER_CLASS;
        for n in &mut chunks_per_class {
            let scaled = (*n as u128 * bytes as u128 / default as u128) as usize;
            *n = scaled.max(MIN_CHUNKS_PER_CLASS);
        }
        Ok(PoolConfig {
            chunks_per_class,
            hugepages: true,
        })
    }
}

struct Class {
    chunk_bytes: usize,
    offset_bytes: usize,
    chunks: usize,
    free: ArrayQueue<u32>,
    /// Cache watermark of a reactor for this class.
    cache_cap: usize,
    /// Chunks moved per refill.
    batch: usize,
    /// Reactors waiting for a chunk of this class, in order, each at most once
    /// (so at most one entry per reactor). Touched only on the slow path.
    hungry: Mutex<VecDeque<usize>>,
    /// `hungry.len()`, read without the lock on every `put`.
    hungry_n: AtomicUsize,
    /// Pool users currently holding or waiting for chunks of this class. Written
    /// when a connection starts or stops using the class (as often as every command
    /// at low queue depth): on a cache line of its own, away from `hungry_n`, which
    /// every `put` of every reactor reads.
    users: OwnLine<AtomicUsize>,
}

/// A value alone on its cache line (no false sharing with its neighbours).
#[repr(align(64))]
struct OwnLine<T>(T);

impl Class {
    fn hungry(&self) -> std::sync::MutexGuard<'_, VecDeque<usize>> {
        self.hungry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins the hungry queue; true when `reactor` was not in it yet.
    fn join_hungry(&self, reactor: usize) -> bool {
        let mut h = self.hungry();
        if h.contains(&reactor) {
            return false;
        }
        h.push_back(reactor);
        self.hungry_n.store(h.len(), Ordering::Release);
        true
    }

    /// The reactor to hand the next free chunk to, if any is hungry.
    fn pop_hungry(&self) -> Option<usize> {
        if self.hungry_n.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut h = self.hungry();
        let r = h.pop_front();
        self.hungry_n.store(h.len(), Ordering::Release);
        r
    }
}

/// The target-wide buffer pool. Shared by every reactor of one target.
pub struct BufPool {
    region: Region,
    classes: Vec<Class>,
}

/// A chunk on its way from one reactor's cache to another's (a hand-off to a
/// hungry reactor). If the message carrying it is dropped undelivered (a stopping
/// reactor), the chunk goes back to the shared free list.
struct Handoff {
    pool: Arc<BufPool>,
    class: usize,
    idx: Option<u32>,
}

impl Drop for Handoff {
    fn drop(&mut self) {
        if let Some(i) = self.idx.take() {
            // Cannot fail: the shared list has room for every chunk of its class.
            let _ = self.pool.classes[self.class].free.push(i);
        }
    }
}

impl BufPool {
    /// Maps the region and fills the free lists.
    pub fn new(cfg: &PoolConfig) -> std::io::Result<Arc<BufPool>> {
        let mut total = 0usize;
        let mut classes = Vec::new();
        for (i, &n) in cfg.chunks_per_class.iter().enumerate() {
            let chunk_bytes = SIZE_CLASSES_BYTES[i];
            let free = ArrayQueue::new(n.max(1));
            for c in 0..n {
                free.push(c as u32)
                    .expect("free list sized for every chunk");
            }
            let cache_cap = (n / CACHE_SHARE_DIVISOR).clamp(1, CACHE_MAX_CHUNKS);
            classes.push(Class {
                chunk_bytes,
                offset_bytes: total,
                chunks: n,
                free,
                cache_cap,
                batch: (cache_cap / 2).clamp(1, CACHE_BATCH_CHUNKS),
                hungry: Mutex::new(VecDeque::new()),
                hungry_n: AtomicUsize::new(0),
                users: OwnLine(AtomicUsize::new(0)),
            });
            total += chunk_bytes * n;
        }
        const HUGE_BYTES: usize = 2 << 20;
        let total = total.div_ceil(HUGE_BYTES).max(1) * HUGE_BYTES;
        let want_huge = cfg.hugepages && hugepages_configured();
        let region = Region::map(total, want_huge)?;
        if !region.hugepages {
            if want_huge {
                log::warn!("buffer pool: hugepages configured but MAP_HUGETLB failed for {total} bytes; using normal memory");
            } else {
                log::warn!("buffer pool: no hugepages (/proc/sys/vm/nr_hugepages is 0); using normal memory for {total} bytes");
            }
        }
        Ok(Arc::new(BufPool { region, classes }))
    }

    /// Bytes of the region (every class's chunks, rounded up to 2 MiB).
    pub fn region_bytes(&self) -> usize {
        self.region.len_bytes
    }

    /// True when the region is hugepage-backed.
    pub fn hugepages(&self) -> bool {
        self.region.hugepages
    }

    /// The whole region as one iovec (for io_uring buffer registration).
    pub fn region_iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.region.base as *mut libc::c_void,
            iov_len: self.region.len_bytes,
        }
    }

    /// True when `buf` lies inside this pool's region.
    pub fn contains(&self, buf: &IoBuf) -> bool {
        let base = self.region.base as usize;
        let p = buf.as_ptr() as usize;
        p >= base && p + buf.len() <= base + self.region.len_bytes
    }

    /// The class that serves `len_bytes`, if any.
    pub fn class_for(len_bytes: usize) -> Option<usize> {
        SIZE_CLASSES_BYTES.iter().position(|&c| c >= len_bytes)
    }

    /// Free chunks in the shared lists (not counting reactor caches), per class.
    pub fn free_chunks(&self) -> Vec<usize> {
        self.classes.iter().map(|c| c.free.len()).collect()
    }

    /// Chunks of `class` (0 when the class does not exist).
    pub fn chunks(&self, class: usize) -> usize {
        self.classes.get(class).map_or(0, |c| c.chunks)
    }

    /// Most chunks of `class` one pool user may hold right now: its fair share,
    /// `chunks / users` for the users currently holding or waiting for the class,
    /// and never more than `chunks / USER_SHARE_DIVISOR` (at least one).
    pub fn user_cap(&self, class: usize) -> usize {
        let Some(c) = self.classes.get(class) else {
            return 0;
        };
        let users = c.users.0.load(Ordering::Relaxed).max(1);
        (c.chunks / users).min(c.chunks / USER_SHARE_DIVISOR).max(1)
    }

    /// A pool user starts (`true`) or stops (`false`) holding or waiting for chunks
    /// of `class`; [`BufPool::user_cap`] divides the class between the active users.
    pub fn set_user_active(&self, class: usize, active: bool) {
        if let Some(c) = self.classes.get(class) {
            if active {
                c.users.0.fetch_add(1, Ordering::Relaxed);
            } else {
                let _ = c
                    .users
                    .0
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| u.checked_sub(1));
            }
        }
    }

    fn chunk_ptr(&self, class: usize, idx: u32) -> *mut u8 {
        let c = &self.classes[class];
        debug_assert!((idx as usize) < c.chunks);
        // SAFETY: offset + idx * chunk_bytes + chunk_bytes <= region length by construction.
        unsafe {
            self.region
                .base
                .add(c.offset_bytes + idx as usize * c.chunk_bytes)
        }
    }
}

/// One chunk of the pool, owned. Return it with [`BufCache::put`].
#[derive(Debug)]
pub struct PoolBuf {
    class: u8,
    idx: u32,
    buf: IoBuf,
}

impl PoolBuf {
    /// The view to hand to I/O, `len_bytes` long as asked for.
    pub fn io(&self) -> IoBuf {
        self.buf
    }

    /// Bytes of the chunk in use.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// The size class of the chunk (an index into [`SIZE_CLASSES_BYTES`]).
    pub fn class(&self) -> usize {
        self.class as usize
    }

    /// Uses the first `len_bytes` of the chunk (at most the chunk's size).
    pub fn set_len(&mut self, len_bytes: usize) {
        let len = len_bytes.min(SIZE_CLASSES_BYTES[self.class as usize]);
        // SAFETY: the chunk is SIZE_CLASSES_BYTES[class] long and owned by this PoolBuf.
        self.buf = unsafe { IoBuf::from_raw(self.buf.as_ptr(), len) };
    }

    /// True when zero bytes were asked for.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The bytes, for reading. The caller must not have I/O in flight on this buffer.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: PoolBuf is the unique owner of its chunk; the caller contract (no I/O
        // in flight) is documented and upheld by every user in this crate.
        unsafe { self.buf.as_slice() }
    }

    /// The bytes, for writing. The caller must not have I/O in flight on this buffer.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as for `bytes`, and `&mut self` excludes other slices through this owner.
        unsafe { self.buf.as_mut_slice() }
    }
}

/// Someone waiting for a buffer when the pool is exhausted.
pub trait BufWaiter {
    /// Called, in the order of the requests of each class, once a buffer is
    /// available. Runs from the reactor loop, never inside a pool call.
    fn buf_ready(&self, tag: u64, buf: PoolBuf);
}

struct Waiting {
    len_bytes: usize,
    waiter: Rc<dyn BufWaiter>,
    tag: u64,
}

/// The answer of [`BufCache::get_or_wait`].
pub enum BufWait {
    /// A buffer, now.
    Ready(PoolBuf),
    /// Queued: `buf_ready` follows.
    Queued,
    /// The class's waiter queue is full ([`MAX_WAITERS_PER_CLASS`]); not queued.
    Full,
}

/// A message from one reactor's cache to another's: give back the cached chunks
/// of a class, or take a chunk handed over. Opaque outside this module; the
/// reactor layer carries it and hands it to [`BufCache::deliver`] on the peer.
pub struct CacheMsg(CacheMsgKind);

enum CacheMsgKind {
    /// Another reactor is hungry for this class.
    Release(usize),
    /// A chunk handed to a hungry reactor.
    Accept(Handoff),
}

/// How a cache reaches the cache of another reactor of its set. The reactor
/// layer implements it for its handles (through its message ring, which wakes the
/// reactor), so the pool sits below the reactor and knows nothing of it.
pub trait CachePeer {
    /// The peer's index within the reactor set.
    fn id(&self) -> usize;
    /// Queues `msg` for the peer's cache without blocking; the peer runs
    /// [`BufCache::deliver`] with it. A full ring drops `msg` (a dropped hand-off
    /// puts its chunk back on the shared list) and says why.
    fn send_cache_msg(&self, msg: CacheMsg) -> Result<(), String>;
}

/// Where a cache sends chunks to other reactors: its own id and every reactor's
/// handle (empty for a cache that is not a reactor's, e.g. in unit tests).
struct Peers {
    me: usize,
    handles: Vec<Box<dyn CachePeer>>,
}

/// A reactor's cache in front of the shared pool, with its queues of waiters.
pub struct BufCache {
    pool: Arc<BufPool>,
    peers: Peers,
    local: RefCell<Vec<Vec<u32>>>,
    /// Waiters, one FIFO per class.
    waiting: RefCell<Vec<VecDeque<Waiting>>>,
}

impl BufCache {
    /// A cache over `pool` that belongs to no reactor set: nothing is handed to
    /// other reactors (chunks past the watermark go to the shared list).
    pub fn new(pool: Arc<BufPool>) -> Self {
        Self::for_reactor(pool, usize::MAX, Vec::new())
    }

    /// The cache of reactor `me`; `peers` are the handles of every reactor of the
    /// set (indexed by reactor id), used to hand chunks to hungry reactors.
    pub fn for_reactor(pool: Arc<BufPool>, me: usize, peers: Vec<Box<dyn CachePeer>>) -> Self {
        let n = pool.classes.len();
        BufCache {
            local: RefCell::new(
                (0..n)
                    .map(|c| Vec::with_capacity(pool.classes[c].cache_cap + CACHE_BATCH_CHUNKS))
                    .collect(),
            ),
            waiting: RefCell::new((0..n).map(|_| VecDeque::new()).collect()),
            peers: Peers { me, handles: peers },
            pool,
        }
    }

    /// The pool behind the cache.
    pub fn pool(&self) -> &Arc<BufPool> {
        &self.pool
    }

    /// A buffer of `len_bytes`, or None when the pool is exhausted (or the size is
    /// larger than the largest class). Does not queue.
    pub fn try_get(&self, len_bytes: usize) -> Option<PoolBuf> {
        let class = BufPool::class_for(len_bytes)?;
        if !self.waiting.borrow()[class].is_empty() {
            // Keep order: earlier waiters of the class are served first.
            return None;
        }
        self.take(class, len_bytes)
    }

    fn take(&self, class: usize, len_bytes: usize) -> Option<PoolBuf> {
        let idx = {
            let mut local = self.local.borrow_mut();
            let list = &mut local[class];
            if list.is_empty() {
                let c = &self.pool.classes[class];
                for _ in 0..c.batch {
                    match c.free.pop() {
                        Some(i) => list.push(i),
                        None => break,
                    }
                }
            }
            list.pop()
        };
        let Some(idx) = idx else {
            self.hungry(class);
            return None;
        };
        let ptr = self.pool.chunk_ptr(class, idx);
        Some(PoolBuf {
            class: class as u8,
            idx,
            // SAFETY: the chunk is at least len_bytes long and now owned by this PoolBuf.
            buf: unsafe { IoBuf::from_raw(ptr, len_bytes) },
        })
    }

    /// The class is exhausted here: join its hungry queue and, the first time,
    /// ask every other reactor to give back the chunks its cache holds.
    fn hungry(&self, class: usize) {
        if self.peers.handles.len() < 2 {
            return;
        }
        let me = self.peers.me;
        if !self.pool.classes[class].join_hungry(me) {
            return;
        }
        for h in &self.peers.handles {
            if h.id() == me {
                continue;
            }
            let msg = CacheMsg(CacheMsgKind::Release(class));
            if let Err(full) = h.send_cache_msg(msg) {
                // The other reactor still hands us chunks as it frees them.
                log::warn!(
                    "buffer pool: reactor {me} could not ask reactor {} to release cached {} KiB chunks: {full}",
                    h.id(),
                    SIZE_CLASSES_BYTES[class] >> 10
                );
            }
        }
    }

    /// A buffer now, or later: when the pool is exhausted the request is queued and
    /// `waiter.buf_ready(tag, buf)` runs once one is free, in request order within
    /// the class. Sizes larger than the largest class are a caller error (Err).
    pub fn get_or_wait(
        &self,
        len_bytes: usize,
        waiter: &Rc<dyn BufWaiter>,
        tag: u64,
    ) -> Result<BufWait, BufTooLarge> {
        let Some(class) = BufPool::class_for(len_bytes) else {
            return Err(BufTooLarge { len_bytes });
        };
        if let Some(b) = self.try_get(len_bytes) {
            return Ok(BufWait::Ready(b));
        }
        let mut w = self.waiting.borrow_mut();
        if w[class].len() >= MAX_WAITERS_PER_CLASS {
            return Ok(BufWait::Full);
        }
        w[class].push_back(Waiting {
            len_bytes,
            waiter: Rc::clone(waiter),
            tag,
        });
        drop(w);
        // Make sure somebody will give this reactor a chunk (joins the hungry queue).
        self.hungry(class);
        Ok(BufWait::Queued)
    }

    /// Returns a buffer: to the hungry reactor whose turn it is, else to this
    /// cache, spilling to the shared list past the cache's watermark.
    pub fn put(&self, buf: PoolBuf) {
        // Ownership: a PoolBuf names its own chunk of this pool, and nothing else.
        debug_assert!(
            self.pool.contains(&buf.buf),
            "a buffer of another pool given back"
        );
        debug_assert_eq!(
            buf.buf.as_ptr(),
            self.pool.chunk_ptr(buf.class as usize, buf.idx),
            "a PoolBuf that does not point at its chunk"
        );
        self.give_back(buf.class as usize, buf.idx);
    }

    fn give_back(&self, class: usize, idx: u32) {
        let c = &self.pool.classes[class];
        debug_assert!((idx as usize) < c.chunks, "chunk {idx} of class {class}");
        if let Some(to) = c.pop_hungry() {
            if to != self.peers.me {
                if let Some(h) = self.peers.handles.get(to) {
                    let ho = Handoff {
                        pool: Arc::clone(&self.pool),
                        class,
                        idx: Some(idx),
                    };
                    let msg = CacheMsg(CacheMsgKind::Accept(ho));
                    // A full ring drops the message, and the Handoff puts the
                    // chunk on the shared list; the hungry reactor, already taken
                    // off the queue, finds it on its next try (at the latest when
                    // its sleep ends, MAX_SLEEP).
                    let _ = h.send_cache_msg(msg);
                    return;
                }
            }
        }
        let mut local = self.local.borrow_mut();
        let list = &mut local[class];
        list.push(idx);
        if list.len() > c.cache_cap {
            while list.len() > c.cache_cap.saturating_sub(c.batch / 2) {
                if let Some(i) = list.pop() {
                    // Cannot fail: the shared list has room for every chunk of its class.
                    let pushed = c.free.push(i);
                    debug_assert!(pushed.is_ok(), "class {class}: more chunks than it has");
                }
            }
        }
    }

    /// Runs a message another reactor's cache sent to this one (the reactor
    /// layer calls it from its message ring).
    pub fn deliver(&self, msg: CacheMsg) {
        match msg.0 {
            CacheMsgKind::Release(class) => self.release_cached(class),
            CacheMsgKind::Accept(h) => self.accept(h),
        }
    }

    /// A chunk handed over by another reactor.
    fn accept(&self, mut h: Handoff) {
        if let Some(i) = h.idx.take() {
            let class = h.class;
            let mut local = self.local.borrow_mut();
            local[class].push(i);
            let c = &self.pool.classes[class];
            if local[class].len() > c.cache_cap && self.waiting.borrow()[class].is_empty() {
                if let Some(i) = local[class].pop() {
                    drop(local);
                    self.give_back(class, i);
                }
            }
        }
    }

    /// Another reactor is hungry for `class`: give back every cached chunk of it.
    fn release_cached(&self, class: usize) {
        if !self.waiting.borrow()[class].is_empty() {
            // This reactor waits for the class too: its cache is empty or in use.
            return;
        }
        let chunks: Vec<u32> = std::mem::take(&mut self.local.borrow_mut()[class]);
        for i in chunks {
            self.give_back(class, i);
        }
    }

    /// Number of queued waiters (all classes).
    pub fn waiters(&self) -> usize {
        self.waiting.borrow().iter().map(|q| q.len()).sum()
    }

    /// Serves queued waiters in order while buffers are available. Called by the
    /// reactor loop; returns how many were served.
    pub fn serve_waiters(&self) -> usize {
        let mut served = 0;
        for class in 0..self.pool.classes.len() {
            loop {
                let (len, waiter, tag) = {
                    let w = self.waiting.borrow();
                    match w[class].front() {
                        Some(f) => (f.len_bytes, Rc::clone(&f.waiter), f.tag),
                        None => break,
                    }
                };
                let Some(buf) = self.take(class, len) else {
                    break;
                };
                self.waiting.borrow_mut()[class].pop_front();
                waiter.buf_ready(tag, buf);
                served += 1;
            }
        }
        served
    }
}

impl Drop for BufCache {
    fn drop(&mut self) {
        let local = self.local.borrow();
        for (class, list) in local.iter().enumerate() {
            for &i in list {
                let _ = self.pool.classes[class].free.push(i);
            }
        }
    }
}

/// A request larger than the largest buffer class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("I/O buffer of {len_bytes} bytes is larger than the largest pool class (1 MiB)")]
pub struct BufTooLarge {
    /// The size asked for.
    pub len_bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn small_pool(n: usize) -> Arc<BufPool> {
        BufPool::new(&PoolConfig {
            chunks_per_class: [n, n, 1, 1],
            hugepages: false,
        })
        .unwrap()
    }

    struct Recorder(RefCell<Vec<(u64, PoolBuf)>>);
    impl BufWaiter for Recorder {
        fn buf_ready(&self, tag: u64, buf: PoolBuf) {
            self.0.borrow_mut().push((tag, buf));
        }
    }

    #[test]
    fn a_sized_pool_keeps_the_class_shares_and_its_bounds() {
        assert_eq!(PoolConfig::default().total_bytes(), 196 << 20);
        let half = PoolConfig::with_total_bytes(98 << 20).unwrap();
        assert_eq!(half.chunks_per_class, [512, 512, 128, 32]);
        assert_eq!(half.total_bytes(), 98 << 20);
        let small = PoolConfig::with_total_bytes(MIN_POOL_BYTES).unwrap();
        assert_eq!(small.chunks_per_class, [83, 83, 20, MIN_CHUNKS_PER_CLASS]);
        let e = PoolConfig::with_total_bytes(MIN_POOL_BYTES - 1).unwrap_err();
        assert!(e.contains("outside 16 MiB"), "{e}");
        assert!(PoolConfig::with_total_bytes(MAX_POOL_BYTES + 1).is_err());
    }

    #[test]
    fn buffers_are_aligned_and_sized() {
        let cache = BufCache::new(small_pool(4));
        let b = cache.try_get(512).unwrap();
        assert_eq!(b.len(), 512);
        assert_eq!(b.io().as_ptr() as usize % BUF_ALIGN_BYTES, 0);
        let big = cache.try_get(100 << 10).unwrap();
        assert_eq!(big.len(), 100 << 10);
        assert!(cache.pool().contains(&big.io()));
        cache.put(b);
        cache.put(big);
    }

    #[test]
    fn exhaustion_queues_waiters_and_serves_them_in_order() {
        let cache = BufCache::new(small_pool(2));
        let a = cache.try_get(4096).unwrap();
        let b = cache.try_get(4096).unwrap();
        assert!(cache.try_get(4096).is_none(), "pool of 2 is exhausted");
        let rec = Rc::new(Recorder(RefCell::new(Vec::new())));
        let w: Rc<dyn BufWaiter> = rec.clone();
        for tag in 1..=3 {
            assert!(matches!(
                cache.get_or_wait(4096, &w, tag).unwrap(),
                BufWait::Queued
            ));
        }
        assert_eq!(cache.waiters(), 3);
        // A newcomer may not jump the queue even though a buffer becomes free.
        cache.put(a);
        assert!(cache.try_get(4096).is_none());
        assert_eq!(cache.serve_waiters(), 1);
        cache.put(b);
        assert_eq!(cache.serve_waiters(), 1);
        let got: Vec<u64> = rec.0.borrow().iter().map(|(t, _)| *t).collect();
        assert_eq!(got, vec![1, 2]);
        let (_, first) = rec.0.borrow_mut().remove(0);
        cache.put(first);
        assert_eq!(cache.serve_waiters(), 1);
        let got: Vec<u64> = rec.0.borrow().iter().map(|(t, _)| *t).collect();
        assert_eq!(got, vec![2, 3]);
        assert_eq!(cache.waiters(), 0);
    }

    #[test]
    fn a_reactor_cache_never_keeps_a_whole_class() {
        // 64 chunks of 1 MiB, as in the default pool: one cache takes them all and
        // gives them back; another cache must still find chunks in the shared list.
        let pool = BufPool::new(&PoolConfig {
            chunks_per_class: [1, 1, 1, 64],
            hugepages: false,
        })
        .unwrap();
        let a = BufCache::new(Arc::clone(&pool));
        let b = BufCache::new(Arc::clone(&pool));
        let held: Vec<PoolBuf> = (0..64).map(|_| a.try_get(1 << 20).unwrap()).collect();
        assert!(b.try_get(1 << 20).is_none(), "all 64 are in use");
        for x in held {
            a.put(x);
        }
        assert!(
            pool.free_chunks()[3] >= 64 - 64 / CACHE_SHARE_DIVISOR,
            "chunks past the watermark went back: {:?}",
            pool.free_chunks()
        );
        let got: Vec<PoolBuf> = (0..56).map(|_| b.try_get(1 << 20).unwrap()).collect();
        for x in got {
            b.put(x);
        }
    }

    #[test]
    fn a_small_request_does_not_wait_behind_a_large_one() {
        let cache = BufCache::new(small_pool(1));
        let big = cache.try_get(1 << 20).unwrap();
        let rec = Rc::new(Recorder(RefCell::new(Vec::new())));
        let w: Rc<dyn BufWaiter> = rec.clone();
        assert!(matches!(
            cache.get_or_wait(1 << 20, &w, 1).unwrap(),
            BufWait::Queued
        ));
        // The 1 MiB class is exhausted with a waiter queued; 4 KiB is served at once.
        let small = cache
            .try_get(4096)
            .expect("4 KiB not blocked by a 1 MiB waiter");
        cache.put(small);
        cache.put(big);
        assert_eq!(cache.serve_waiters(), 1);
        let (_, b) = rec.0.borrow_mut().remove(0);
        cache.put(b);
    }

    #[test]
    fn user_share_shrinks_with_users() {
        let pool = BufPool::new(&PoolConfig {
            chunks_per_class: [1, 1, 1, 64],
            hugepages: false,
        })
        .unwrap();
        assert_eq!(pool.user_cap(3), 64 / USER_SHARE_DIVISOR);
        for _ in 0..10 {
            pool.set_user_active(3, true);
        }
        assert_eq!(pool.user_cap(3), 6);
        for _ in 0..10 {
            pool.set_user_active(3, false);
        }
        pool.set_user_active(3, false);
        assert_eq!(pool.user_cap(3), 16, "never below zero users");
        assert_eq!(pool.user_cap(9), 0);
    }

    #[test]
    fn oversize_request_is_an_error_not_a_wait() {
        let cache = BufCache::new(small_pool(1));
        let rec: Rc<dyn BufWaiter> = Rc::new(Recorder(RefCell::new(Vec::new())));
        assert!(cache.get_or_wait(2 << 20, &rec, 0).is_err());
    }

    #[test]
    fn slices_stay_in_range() {
        let cache = BufCache::new(small_pool(1));
        let b = cache.try_get(8192).unwrap();
        let s = b.io().slice(4096, 4096);
        assert_eq!(s.as_ptr() as usize - b.io().as_ptr() as usize, 4096);
        assert!(std::panic::catch_unwind(|| b.io().slice(4096, 4097)).is_err());
        cache.put(b);
    }
}
