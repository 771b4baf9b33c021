//! The iSCSI target's I/O path allocates nothing per command: 4 KiB writes
//! with their data as immediate data and 4 KiB reads, on a warmed-up session,
//! counted by this test binary's global allocator on the reactor threads only
//! (a thread-local flag each reactor sets). Only 127.0.0.1 is used; every socket
//! read has a timeout (the shared initiator's).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use common::two_reactor_target;
use plexd_target::bdev::malloc::MallocBdev;
use plexd_target::frontend::iscsi::{IscsiConfig, IscsiFrontend, LunConfig, TargetNodeConfig};
use plexd_target::testutil::pattern;

#[allow(dead_code)]
#[path = "../../tests/src/iscsi.rs"]
mod iscsi;
use iscsi::Initiator;

const IQN: &str = "iqn.2026-11.io.plexd:alloc";
const BS: u32 = 512;
/// Writes (and as many reads) counted.
const IOS: u32 = 256;
/// Allocations tolerated on the reactors while they run (the once-a-second
/// tick may fall in the window); one per write would be `IOS`.
const SLACK: u64 = 16;

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

/// Writes 4 KiB as immediate data at block `i * 8` and reads it back; asserts
/// both succeed and the data round-trips.
fn write_and_read(ini: &mut Initiator, i: u32) {
    let blocks = 4096 / BS;
    let lba = i * blocks;
    let data = pattern(u64::from(i) + 7, 4096);
    let w = ini.write10(lba, &data).expect("write");
    assert_eq!(w.status, 0, "write {i}");
    let r = ini.read10(lba, blocks as u16).expect("read");
    assert_eq!(r.status, 0, "read {i}");
    assert!(r.data == data, "read {i} returns what write {i} wrote");
}

/// Issue 12: no allocation per SCSI command on the reactors.
#[test]
fn immediate_data_writes_and_reads_allocate_nothing_per_command_on_the_reactors() {
    let t = two_reactor_target();
    t.add_bdev(MallocBdev::new("m0", 8 << 20, BS).unwrap())
        .unwrap();
    let fe = IscsiFrontend::start(
        &t,
        &IscsiConfig {
            portal: Some("127.0.0.1:0".into()),
            targets: vec![TargetNodeConfig {
                iqn: IQN.into(),
                luns: vec![LunConfig {
                    lun: 0,
                    bdev: "m0".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    .expect("the iSCSI frontend starts");
    let portal = format!("127.0.0.1:{}", fe.portal().port());
    let mut ini = Initiator::login(&portal, "iqn.2026-11.io.plexd:h1", [0x40, 0, 0, 0, 0, 1], IQN)
        .expect("login");
    ini.clear_ua().expect("the power-on unit attention clears");

    for h in t.reactors().handles() {
        h.call_blocking(|_| COUNTED.with(|c| c.set(true)))
            .expect("the reactor answers");
    }
    // Warm up: the session's task table, output queue and buffer caches grow to
    // their working size.
    for i in 0..IOS {
        write_and_read(&mut ini, i);
    }
    let before = REACTOR_ALLOCS.load(Ordering::Relaxed);
    for i in 0..IOS {
        write_and_read(&mut ini, IOS + i);
    }
    let allocs = REACTOR_ALLOCS.load(Ordering::Relaxed) - before;
    assert!(
        allocs <= SLACK,
        "{allocs} allocations on the reactors for {IOS} immediate-data writes and {IOS} reads"
    );
    drop(ini);
    drop(fe);
}
