//! A global allocator that counts the allocations made on the threads that opt
//! in (the reactors), for the tests that check an I/O path allocates nothing per
//! command (test code only: each test binary that needs it says `mod counting;`,
//! which also installs the allocator for that binary).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use plexd_target::Target;

/// Counts allocations made on threads that set [`COUNTED`].
struct Counting;

static REACTOR_ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Set on the reactor threads: their allocations are counted.
    static COUNTED: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTED.try_with(|c| c.get()).unwrap_or(false) {
        REACTOR_ALLOCS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on to the system allocator unchanged; counting
// touches a const-initialised thread local (no allocation, no destructor) and
// an atomic.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// From now on, counts the allocations on every reactor thread of `t`.
pub fn count_on_reactors(t: &Target) {
    for h in t.reactors().handles() {
        h.call_blocking(|_| COUNTED.with(|c| c.set(true)))
            .expect("the reactor answers");
    }
}

/// Allocations counted so far.
pub fn reactor_allocs() -> u64 {
    REACTOR_ALLOCS.load(Ordering::Relaxed)
}

/// Counts on `t`'s reactors, runs `io(i)` for `i` in `0..n` to warm up (tables,
/// queues and buffer caches grow to their working size), then for `n..2n`, and
/// returns the allocations the reactors made during the second pass.
pub fn allocs_after_warm_up(t: &Target, n: u64, mut io: impl FnMut(u64)) -> u64 {
    count_on_reactors(t);
    for i in 0..n {
        io(i);
    }
    let before = reactor_allocs();
    for i in n..2 * n {
        io(i);
    }
    reactor_allocs() - before
}
