//! The NVMe/TCP target's I/O path allocates nothing per command: 4 KiB writes
//! with their data in the capsule and 4 KiB reads, on a warmed-up queue pair,
//! counted by this test binary's global allocator on the reactor threads only
//! (a thread-local flag each reactor sets). Only 127.0.0.1 is used; every socket
//! read has a timeout (the shared test host's).

mod common;
mod counting;

use common::{nvmf_export, two_reactor_target};
use counting::allocs_after_warm_up;
use plexd_target::bdev::malloc::MallocBdev;
use plexd_target::frontend::nvmf::pdu::Digests;
use plexd_target::testutil::pattern;

#[allow(dead_code)]
#[path = "../../tests/src/nvmf_host.rs"]
mod nvmf_host;
use nvmf_host::Host;

const NQN: &str = "nqn.2026-11.io.plexd:alloc";
const BS: usize = nvmf_host::BS;
/// Writes (and as many reads) counted.
const IOS: u64 = 256;
/// Allocations tolerated on the reactors while they run (the once-a-second
/// tick may fall in the window); one per write would be `IOS`.
const SLACK: u64 = 16;

/// Writes 4 KiB in the capsule at block `i * 8` and reads it back; asserts both
/// succeed and the data round-trips.
fn write_and_read(q: &mut Host, i: u64) {
    let blocks = 4096 / BS;
    let lba = i * blocks as u64;
    let data = pattern(i + 11, 4096);
    let w = q.rw(0x01, lba, blocks as u16, &data, true);
    assert_eq!(w.sc(), 0, "in-capsule write {i}");
    let r = q.rw(0x02, lba, blocks as u16, &[], false);
    assert_eq!(r.sc(), 0, "read {i}");
    assert!(r.data == data, "read {i} returns what write {i} wrote");
}

/// Issue 9: no allocation per I/O command. Before the in-capsule data went
/// straight into the pool buffer, each such write copied its data into a new
/// `Vec` first (one allocation per write: `IOS` here).
#[test]
fn in_capsule_writes_and_reads_allocate_nothing_per_command_on_the_reactors() {
    let t = two_reactor_target();
    t.add_bdev(MallocBdev::new("m0", 8 << 20, BS as u32).unwrap())
        .unwrap();
    let (fe, port) = nvmf_export(&t, NQN, "m0");
    let dig = Digests::default();
    let mut a = Host::ic(port, dig);
    let c = a.connect(0, 0xffff, 0, NQN);
    assert_eq!(c.sc(), 0, "admin connect");
    let cntlid = c.dw0 as u16;
    a.prop_set(0x14, 0x0046_0001);
    assert_eq!(a.prop_get(0x1c, false) & 1, 1, "CSTS.RDY");
    let mut q = Host::ic(port, dig);
    assert_eq!(q.connect(1, cntlid, 0, NQN).sc(), 0, "I/O connect");

    let allocs = allocs_after_warm_up(&t, IOS, |i| write_and_read(&mut q, i));
    assert!(
        allocs <= SLACK,
        "{allocs} allocations on the reactors for {IOS} in-capsule writes and {IOS} reads"
    );
    drop(q);
    drop(a);
    drop(fe);
}
