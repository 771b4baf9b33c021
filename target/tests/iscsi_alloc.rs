//! The iSCSI target's I/O path allocates nothing per command: 4 KiB writes
//! with their data as immediate data and 4 KiB reads, on a warmed-up session,
//! counted by this test binary's global allocator on the reactor threads only
//! (a thread-local flag each reactor sets). Only 127.0.0.1 is used; every socket
//! read has a timeout (the shared initiator's).

mod common;
mod counting;

use common::{iscsi_config, two_reactor_target};
use counting::allocs_after_warm_up;
use plexd_target::bdev::malloc::MallocBdev;
use plexd_target::frontend::iscsi::IscsiFrontend;
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
    let fe = IscsiFrontend::start(&t, &iscsi_config(IQN, "m0")).expect("the iSCSI frontend starts");
    let portal = format!("127.0.0.1:{}", fe.portal().port());
    let mut ini = Initiator::login(
        &portal,
        "iqn.2026-11.io.plexd:h1",
        [0x40, 0, 0, 0, 0, 1],
        IQN,
    )
    .expect("login");
    ini.clear_ua().expect("the power-on unit attention clears");

    let allocs = allocs_after_warm_up(&t, u64::from(IOS), |i| write_and_read(&mut ini, i as u32));
    assert!(
        allocs <= SLACK,
        "{allocs} allocations on the reactors for {IOS} immediate-data writes and {IOS} reads"
    );
    drop(ini);
    drop(fe);
}
