//! I/O buffers: one aligned memory region per target (2 MiB hugepages when the
//! machine has them, anonymous memory otherwise), cut into size classes, handed out
//! through per-reactor caches. Nothing is allocated per I/O in steady state.
//!
//! A [`PoolBuf`] owns one chunk; [`IoBuf`] is the borrowed (pointer, length) view the
//! bdev layers pass down the stack. The owner of a `PoolBuf` keeps it alive until
//! every I/O using its `IoBuf` has completed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

/// Alignment of every buffer: enough for O_DIRECT on 4 KiB-sector devices.
pub const BUF_ALIGN_BYTES: usize = 4096;

/// The chunk sizes of the pool, smallest first. A request is served from the
/// smallest class that holds it.
pub const SIZE_CLASSES_BYTES: [usize; 4] = [4 << 10, 64 << 10, 256 << 10, 1 << 20];

/// Most chunks a reactor keeps in its local cache per class before returning
/// chunks to the shared free list.
pub const CACHE_MAX_CHUNKS: usize = 64;

/// Chunks moved between the shared list and a reactor cache in one refill.
const CACHE_BATCH_CHUNKS: usize = 16;

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

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            // 4 MiB + 64 MiB + 64 MiB + 64 MiB = 196 MiB of I/O buffers.
            chunks_per_class: [1024, 1024, 256, 64],
            hugepages: true,
        }
    }
}

struct Class {
    chunk_bytes: usize,
    offset_bytes: usize,
    chunks: usize,
    free: ArrayQueue<u32>,
}

/// The target-wide buffer pool. Shared by every reactor of one target.
pub struct BufPool {
    region: Region,
    classes: Vec<Class>,
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
            classes.push(Class {
                chunk_bytes,
                offset_bytes: total,
                chunks: n,
                free,
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
    /// Called, in the order of the requests, once a buffer is available.
    fn buf_ready(&self, tag: u64, buf: PoolBuf);
}

struct Waiting {
    len_bytes: usize,
    waiter: Rc<dyn BufWaiter>,
    tag: u64,
}

/// A reactor's cache in front of the shared pool, with its queue of waiters.
pub struct BufCache {
    pool: Arc<BufPool>,
    local: RefCell<Vec<Vec<u32>>>,
    waiting: RefCell<VecDeque<Waiting>>,
}

impl BufCache {
    /// A cache over `pool`, for one reactor.
    pub fn new(pool: Arc<BufPool>) -> Self {
        let n = pool.classes.len();
        BufCache {
            pool,
            local: RefCell::new(
                (0..n)
                    .map(|_| Vec::with_capacity(CACHE_MAX_CHUNKS + CACHE_BATCH_CHUNKS))
                    .collect(),
            ),
            waiting: RefCell::new(VecDeque::with_capacity(256)),
        }
    }

    /// The pool behind the cache.
    pub fn pool(&self) -> &Arc<BufPool> {
        &self.pool
    }

    /// A buffer of `len_bytes`, or None when the pool is exhausted (or the size is
    /// larger than the largest class). Does not queue.
    pub fn try_get(&self, len_bytes: usize) -> Option<PoolBuf> {
        if !self.waiting.borrow().is_empty() {
            // Keep order: earlier waiters are served first.
            return None;
        }
        self.take(len_bytes)
    }

    fn take(&self, len_bytes: usize) -> Option<PoolBuf> {
        let class = BufPool::class_for(len_bytes)?;
        let mut local = self.local.borrow_mut();
        let list = &mut local[class];
        if list.is_empty() {
            let free = &self.pool.classes[class].free;
            for _ in 0..CACHE_BATCH_CHUNKS {
                match free.pop() {
                    Some(i) => list.push(i),
                    None => break,
                }
            }
        }
        let idx = list.pop()?;
        let ptr = self.pool.chunk_ptr(class, idx);
        Some(PoolBuf {
            class: class as u8,
            idx,
            // SAFETY: the chunk is at least len_bytes long and now owned by this PoolBuf.
            buf: unsafe { IoBuf::from_raw(ptr, len_bytes) },
        })
    }

    /// A buffer now, or later: when the pool is exhausted the request is queued and
    /// `waiter.buf_ready(tag, buf)` runs once one is free, in request order. Sizes
    /// larger than the largest class are a caller error (returns Err).
    pub fn get_or_wait(
        &self,
        len_bytes: usize,
        waiter: &Rc<dyn BufWaiter>,
        tag: u64,
    ) -> Result<Option<PoolBuf>, BufTooLarge> {
        if BufPool::class_for(len_bytes).is_none() {
            return Err(BufTooLarge { len_bytes });
        }
        if let Some(b) = self.try_get(len_bytes) {
            return Ok(Some(b));
        }
        self.waiting.borrow_mut().push_back(Waiting {
            len_bytes,
            waiter: Rc::clone(waiter),
            tag,
        });
        Ok(None)
    }

    /// Returns a buffer to the cache (or the shared list when the cache is full).
    pub fn put(&self, buf: PoolBuf) {
        let class = buf.class as usize;
        let mut local = self.local.borrow_mut();
        let list = &mut local[class];
        list.push(buf.idx);
        if list.len() > CACHE_MAX_CHUNKS {
            let free = &self.pool.classes[class].free;
            for _ in 0..CACHE_BATCH_CHUNKS {
                if let Some(i) = list.pop() {
                    // Cannot fail: the shared list has room for every chunk of its class.
                    let _ = free.push(i);
                }
            }
        }
    }

    /// Number of queued waiters.
    pub fn waiters(&self) -> usize {
        self.waiting.borrow().len()
    }

    /// Serves queued waiters in order while buffers are available. Called by the
    /// reactor loop; returns how many were served.
    pub fn serve_waiters(&self) -> usize {
        let mut served = 0;
        loop {
            let (len, waiter, tag) = {
                let w = self.waiting.borrow();
                match w.front() {
                    Some(f) => (f.len_bytes, Rc::clone(&f.waiter), f.tag),
                    None => break,
                }
            };
            let Some(buf) = self.take(len) else { break };
            self.waiting.borrow_mut().pop_front();
            waiter.buf_ready(tag, buf);
            served += 1;
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
            assert!(cache.get_or_wait(4096, &w, tag).unwrap().is_none());
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
