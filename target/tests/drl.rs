//! The dirty region log in the data plane: a mirrored write is issued only after
//! its regions are marked in this node's section (read back from the log's file
//! with `read_section`), marks are batched, idle regions are cleaned, a new log id
//! re-inits the section, a failed log write fails the writes waiting on it
//! without touching the plexes, and a quiesce drains writes waiting for a mark.
//! With two log copies, a copy whose write fails is retired and writes go on
//! while the other copy takes the marks; both failing fails the writes.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::two_reactor_target;
use plexd_target::bdev::error::{ErrorBdev, FailOn};
use plexd_target::bdev::malloc::MallocBdev;
use plexd_target::bdev::uring::UringBdev;
use plexd_target::bdev::IoStatus;
use plexd_target::diag::{run_ios, IoReq};
use plexd_target::lease::FENCED_ERRNO;
use plexd_target::testutil::{pattern, TempPath};
use plexd_target::volume::drl::DRL_CLEAN_IDLE;
use plexd_target::volume::{PlexKind, PlexSpec, PlexState, ReadPolicy, SubdiskSpec, VolumeSpec};
use plexd_target::Target;
use plexd_target_api::drl::{
    read_section, regions_for, section_bytes, DirtyLog, DirtyLogSpec, DrlCopy, MIN_REGION_BYTES,
};

const MIB: u64 = 1 << 20;
const VOL_BYTES: u64 = 64 * MIB;
const REGION: u64 = MIN_REGION_BYTES;
const NODE: u32 = 2;
/// Where this node's section starts on the log bdev (not at 0, like a real log).
const SECTION_AT: u64 = 8192;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

struct Setup {
    t: Arc<Target>,
    /// The log bdev (an error bdev over a uring file).
    elog: Arc<ErrorBdev>,
    log_file: TempPath,
    /// The second copy's log bdev `elog2` and its file (a 2-copy setup only).
    elog2: Option<(Arc<ErrorBdev>, TempPath)>,
}

fn log_spec(log_id: u64) -> DirtyLogSpec {
    DirtyLogSpec {
        copies: vec![DrlCopy {
            bdev: "elog".into(),
            offset_bytes: SECTION_AT,
        }],
        section_bytes: section_bytes(regions_for(VOL_BYTES, REGION)),
        node: NODE,
        log_id,
        region_bytes: REGION,
    }
}

fn spec(log_id: u64) -> VolumeSpec {
    let plex = |i: usize| PlexSpec {
        name: format!("v-0{}", i + 1),
        kind: PlexKind::Concat,
        columns: vec![vec![SubdiskSpec {
            bdev: format!("m{i}"),
            offset_bytes: 0,
            len_bytes: VOL_BYTES,
        }]],
        state: PlexState::Active,
    };
    VolumeSpec {
        name: "v".into(),
        size_bytes: VOL_BYTES,
        plexes: vec![plex(0), plex(1)],
        read_policy: ReadPolicy::Round,
        shared: false,
        local_detach: false,
        log: Some(log_spec(log_id)),
    }
}

/// A 2-reactor target with a two-way mirror (malloc plexes m0, m1) whose log is
/// node 2's section of an error bdev `elog` over a uring file.
fn setup() -> Setup {
    setup_with(false)
}

/// [`setup`], the volume shared (served under the lease) when `shared`.
fn setup_with(shared: bool) -> Setup {
    setup_copies(shared, 1)
}

/// The log's second copy: node 2's section at [`SECTION_AT2`] of `elog2`.
const SECTION_AT2: u64 = 16384;

/// [`spec`] with a second log copy on `elog2`.
fn spec2(log_id: u64) -> VolumeSpec {
    let mut s = spec(log_id);
    if let Some(l) = s.log.as_mut() {
        l.copies.push(DrlCopy {
            bdev: "elog2".into(),
            offset_bytes: SECTION_AT2,
        });
    }
    s
}

/// [`setup_with`] with `copies` (1 or 2) log copies: the second on an error bdev
/// `elog2` over a file of its own.
fn setup_copies(shared: bool, copies: usize) -> Setup {
    let t = two_reactor_target();
    for i in 0..2 {
        t.add_bdev(MallocBdev::new(&format!("m{i}"), VOL_BYTES, 512).unwrap())
            .unwrap();
    }
    let log_file = TempPath::file("drl-log", MIB).unwrap();
    let u = UringBdev::open("ulog", &log_file.0, &Default::default()).unwrap();
    t.add_bdev(u.clone()).unwrap();
    let elog = ErrorBdev::new("elog", u);
    t.add_bdev(elog.clone()).unwrap();
    let mut elog2 = None;
    let mut v = spec(1);
    if copies == 2 {
        let file = TempPath::file("drl-log2", MIB).unwrap();
        let u = UringBdev::open("ulog2", &file.0, &Default::default()).unwrap();
        t.add_bdev(u.clone()).unwrap();
        let e = ErrorBdev::new("elog2", u);
        t.add_bdev(e.clone()).unwrap();
        elog2 = Some((e, file));
        v = spec2(1);
    }
    t.create_volume(&VolumeSpec { shared, ..v }).unwrap();
    Setup {
        t,
        elog,
        log_file,
        elog2,
    }
}

impl Setup {
    /// Runs `reqs` on `bdev` from reactor `r`, all at once.
    fn ios(&self, r: usize, bdev: &str, reqs: Vec<IoReq>) -> Vec<(IoStatus, Vec<u8>)> {
        let b = self.t.bdev(bdev).unwrap();
        run_ios(&self.t.reactors().handles()[r], &b, reqs, IO_TIMEOUT)
            .unwrap()
            .into_iter()
            .map(|o| (o.status, o.data))
            .collect()
    }

    fn write(&self, off: u64, len: u64, seed: u64) -> IoStatus {
        let data = pattern(seed, len as usize);
        self.ios(0, "v", vec![IoReq::write(off, data)])[0].0
    }

    /// This node's section as the file holds it, decoded for `log_id`.
    fn section(&self, log_id: u64) -> DirtyLog {
        let bytes = std::fs::read(&self.log_file.0).unwrap();
        let s = &bytes[SECTION_AT as usize..];
        read_section(s, NODE, log_id).unwrap()
    }

    /// The second copy's section, decoded for `log_id` (a 2-copy setup).
    fn section2(&self, log_id: u64) -> DirtyLog {
        let (_, file) = self.elog2.as_ref().expect("a 2-copy setup");
        let bytes = std::fs::read(&file.0).unwrap();
        read_section(&bytes[SECTION_AT2 as usize..], NODE, log_id).unwrap()
    }

    fn elog2(&self) -> &ErrorBdev {
        &self.elog2.as_ref().expect("a 2-copy setup").0
    }

    /// What plex bdev `m` holds at `off` (4 KiB).
    fn plex_at(&self, m: &str, off: u64) -> Vec<u8> {
        let (st, data) = self.ios(0, m, vec![IoReq::read(off, 4096)]).remove(0);
        assert_eq!(st, IoStatus::Success);
        data
    }

    fn stats(&self) -> plexd_target::volume::VolumeStats {
        self.t.volume_info("v").unwrap().stats
    }
}

/// Byte ranges of the regions `rs` (ascending, adjacent ones merged).
fn ranges(rs: &[u64]) -> DirtyLog {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &r in rs {
        match out.last_mut() {
            Some((o, l)) if *o + *l == r * REGION => *l += REGION,
            _ => out.push((r * REGION, REGION)),
        }
    }
    DirtyLog::Dirty(out)
}

/// Waits (bounded) until `f` holds.
fn wait_for(what: &str, deadline: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn written_regions_are_dirty_in_the_section_before_any_clean() {
    let s = setup();
    // Regions 0, 5, and a write straddling 700/701; a write-zeroes on 900.
    assert_eq!(s.write(0, 4096, 1), IoStatus::Success);
    assert_eq!(s.write(5 * REGION + 8192, 4096, 2), IoStatus::Success);
    assert_eq!(s.write(701 * REGION - 4096, 8192, 3), IoStatus::Success);
    let z = s.ios(
        1,
        "v",
        vec![IoReq::other(
            plexd_target::bdev::IoKind::WriteZeroes,
            900 * REGION,
            4096,
        )],
    );
    assert_eq!(z[0].0, IoStatus::Success);
    // Reads never mark.
    s.ios(0, "v", vec![IoReq::read(300 * REGION, 4096)]);
    assert_eq!(s.section(1), ranges(&[0, 5, 700, 701, 900]));
    let st = s.stats();
    assert_eq!(st.log_dirty_regions, 5, "{st:?}");
    assert!(st.log_waits >= 4 && st.log_writes >= 1, "{st:?}");
    // Writes to regions already durable go straight on (no new log write).
    let before = s.stats();
    assert_eq!(s.write(5 * REGION, 4096, 4), IoStatus::Success);
    let after = s.stats();
    assert_eq!(after.log_writes, before.log_writes, "{after:?}");
    assert_eq!(after.log_waits, before.log_waits, "{after:?}");
}

#[test]
fn a_write_is_not_issued_before_its_mark() {
    let s = setup();
    s.elog.injection().fail(FailOn::Writes, libc::EIO, None);
    let off = 17 * REGION;
    assert_eq!(
        s.write(off, 4096, 7),
        IoStatus::Failed(libc::EIO),
        "a write whose mark failed must fail"
    );
    // Neither plex was written.
    for m in ["m0", "m1"] {
        let (st, data) = s.ios(0, m, vec![IoReq::read(off, 4096)]).remove(0);
        assert_eq!(st, IoStatus::Success);
        assert!(data.iter().all(|&b| b == 0), "plex {m} was written");
    }
    assert_eq!(s.stats().log_writes, 0);
    // Later writes mark again once the log works.
    s.elog.injection().clear_failures();
    assert_eq!(s.write(off, 4096, 7), IoStatus::Success);
    assert_eq!(s.section(1), ranges(&[17]));
    let (_, data) = s.ios(0, "m1", vec![IoReq::read(off, 4096)]).remove(0);
    assert_eq!(data, pattern(7, 4096));
}

#[test]
fn idle_regions_are_cleaned_on_disk() {
    let s = setup();
    assert_eq!(s.write(3 * REGION, 4096, 1), IoStatus::Success);
    assert_eq!(s.write(40 * REGION, 4096, 2), IoStatus::Success);
    assert_eq!(s.section(1), ranges(&[3, 40]));
    // Idle for DRL_CLEAN_IDLE, cleaned by the next sweep (at most another period).
    wait_for("the idle regions to be cleaned", DRL_CLEAN_IDLE * 4, || {
        s.section(1) == DirtyLog::Dirty(vec![])
    });
    assert_eq!(s.stats().log_dirty_regions, 0);
    // A new write marks again.
    assert_eq!(s.write(3 * REGION, 4096, 3), IoStatus::Success);
    assert_eq!(s.section(1), ranges(&[3]));
}

#[test]
fn a_new_log_id_reinits_the_section() {
    let s = setup();
    assert_eq!(s.write(3 * REGION, 4096, 1), IoStatus::Success);
    assert_eq!(s.section(1), ranges(&[3]));
    s.t.prepare("v", &spec(2), Duration::from_secs(10)).unwrap();
    s.t.commit("v").unwrap();
    assert_eq!(s.write(9 * REGION, 4096, 2), IoStatus::Success);
    // The section now belongs to log 2 and holds only what was written under it.
    assert_eq!(s.section(2), ranges(&[9]));
    assert_eq!(s.section(1), DirtyLog::Unused);
    // A commit that keeps the log keeps its state (no re-init: region 9 stays).
    let same = spec(2);
    s.t.prepare("v", &same, Duration::from_secs(10)).unwrap();
    s.t.commit("v").unwrap();
    assert_eq!(s.write(11 * REGION, 4096, 3), IoStatus::Success);
    assert_eq!(s.section(2), ranges(&[9, 11]));
}

#[test]
fn concurrent_writes_share_log_writes() {
    let s = setup();
    // A slow log: marks arriving during a log write go into the next one.
    s.elog.injection().set_latency_us(20_000);
    const PER_REACTOR: u64 = 256;
    std::thread::scope(|sc| {
        for r in 0..2u64 {
            let s = &s;
            sc.spawn(move || {
                let reqs = (0..PER_REACTOR)
                    .map(|i| {
                        let region = r * PER_REACTOR + i;
                        IoReq::write(region * REGION, pattern(region, 4096))
                    })
                    .collect();
                for (st, _) in s.ios(r as usize, "v", reqs) {
                    assert_eq!(st, IoStatus::Success);
                }
            });
        }
    });
    let st = s.stats();
    let writes = 2 * PER_REACTOR;
    assert_eq!(st.log_waits, writes, "{st:?}");
    assert!(st.log_writes >= 1, "{st:?}");
    // Each write waited for a mark, yet log writes are far fewer than writes:
    // with 20 ms per log write every batch takes whatever arrived meanwhile.
    assert!(st.log_writes * 8 <= writes, "{st:?}");
    let all: Vec<u64> = (0..writes).collect();
    assert_eq!(s.section(1), ranges(&all));
    assert_eq!(st.log_dirty_regions, writes);
}

#[test]
fn a_quiesce_drains_a_write_waiting_for_its_mark() {
    let s = setup();
    // The mark takes 300 ms: the quiesce starts while the write waits for it.
    s.elog.injection().set_latency_us(300_000);
    let off = 21 * REGION;
    std::thread::scope(|sc| {
        let w = sc.spawn(|| s.write(off, 4096, 5));
        wait_for("the write to wait for its mark", IO_TIMEOUT, || {
            s.stats().log_waits >= 1
        });
        s.t.quiesce("v", Duration::from_secs(20)).unwrap();
        // Drained: the write passed its mark and reached both plexes.
        let info = s.t.volume_info("v").unwrap();
        assert_eq!(info.inflight, 0);
        assert!(info.stats.log_writes >= 1, "{:?}", info.stats);
        for m in ["m0", "m1"] {
            let (_, data) = s.ios(0, m, vec![IoReq::read(off, 4096)]).remove(0);
            assert_eq!(data, pattern(5, 4096), "plex {m} at the quiesce");
        }
        s.t.abort("v").unwrap();
        assert_eq!(w.join().unwrap(), IoStatus::Success);
    });
    assert_eq!(s.section(1), ranges(&[21]));
}

#[test]
fn a_log_that_does_not_fit_is_refused() {
    let s = setup();
    let mut bad = spec(1);
    bad.name = "w".into();
    if let Some(l) = bad.log.as_mut() {
        l.copies[0].offset_bytes = MIB - 4096; // the section runs past the 1 MiB log bdev
    }
    let e = s.t.create_volume(&bad).unwrap_err().to_string();
    assert!(e.contains("does not fit"), "{e}");
    let mut odd = spec(1);
    odd.name = "w".into();
    if let Some(l) = odd.log.as_mut() {
        l.region_bytes = 3 * REGION;
    }
    let e = s.t.create_volume(&odd).unwrap_err().to_string();
    assert!(e.contains("power of two"), "{e}");
}

#[test]
fn the_lease_fence_fails_a_write_waiting_for_its_mark() {
    let s = setup_with(true);
    // The mark's log write takes 4 s; the lease runs out long before (its expiry
    // is seen within milliseconds normally, within seconds on a loaded machine).
    s.elog.injection().set_latency_us(4_000_000);
    s.t.renew_lease(400).unwrap();
    let off = 30 * REGION;
    let st = s.write(off, 4096, 9);
    assert_eq!(st, IoStatus::Failed(FENCED_ERRNO));
    // Failed at the expiry, not when its log write answered.
    assert_eq!(s.stats().log_waits, 1);
    assert_eq!(
        s.stats().log_writes,
        0,
        "the write waited for the log write"
    );
    // The late answer is ignored: the write never reaches the plexes.
    wait_for("the log write to complete", IO_TIMEOUT, || {
        s.stats().log_writes >= 1
    });
    for m in ["m0", "m1"] {
        let (_, data) = s.ios(0, m, vec![IoReq::read(off, 4096)]).remove(0);
        assert!(data.iter().all(|&b| b == 0), "plex {m} was written");
    }
    assert_eq!(s.t.volume_info("v").unwrap().inflight, 0);
}

#[test]
fn a_failed_log_copy_is_retired_and_writes_go_on() {
    let s = setup_copies(false, 2);
    assert_eq!(s.write(3 * REGION, 4096, 1), IoStatus::Success);
    assert_eq!(s.section(1), ranges(&[3]), "copy 1 has the mark");
    assert_eq!(s.section2(1), ranges(&[3]), "copy 2 has the mark");
    // Copy 2's disk fails writes: the write goes on, its mark durable on copy 1.
    s.elog2().injection().fail(FailOn::Writes, libc::EIO, None);
    let off = 17 * REGION;
    assert_eq!(s.write(off, 4096, 2), IoStatus::Success);
    assert_eq!(s.section(1), ranges(&[3, 17]));
    assert_eq!(s.section2(1), ranges(&[3]), "copy 2 missed the mark");
    for m in ["m0", "m1"] {
        assert_eq!(s.plex_at(m, off), pattern(2, 4096), "plex {m}");
    }
    let st = s.stats();
    assert_eq!(st.log_copy_failures, 1, "{st:?}");
    assert_eq!(st.failed_ops, 0, "{st:?}");
    // Retired: not written again under this spec, even once its disk works.
    s.elog2().injection().clear_failures();
    let failed_before = s.elog2().injection().injected_failures();
    assert_eq!(s.write(20 * REGION, 4096, 3), IoStatus::Success);
    assert_eq!(s.section(1), ranges(&[3, 17, 20]));
    assert_eq!(s.section2(1), ranges(&[3]));
    assert_eq!(s.elog2().injection().injected_failures(), failed_before);
    assert_eq!(s.stats().log_copy_failures, 1);
    // The last live copy failing fails the write (EIO), neither plex written.
    s.elog.injection().fail(FailOn::Writes, libc::EIO, None);
    let off = 30 * REGION;
    assert_eq!(s.write(off, 4096, 4), IoStatus::Failed(libc::EIO));
    for m in ["m0", "m1"] {
        assert!(s.plex_at(m, off).iter().all(|&b| b == 0), "plex {m}");
    }
    // A new spec (a commit) writes both copies again: the init goes to each.
    s.elog.injection().clear_failures();
    s.t.prepare("v", &spec2(2), Duration::from_secs(10))
        .unwrap();
    s.t.commit("v").unwrap();
    assert_eq!(s.write(9 * REGION, 4096, 5), IoStatus::Success);
    assert_eq!(s.section(2), ranges(&[9]));
    assert_eq!(s.section2(2), ranges(&[9]));
}

#[test]
fn both_log_copies_failing_fails_the_write() {
    let s = setup_copies(false, 2);
    s.elog.injection().fail(FailOn::Writes, libc::EIO, None);
    s.elog2().injection().fail(FailOn::Writes, libc::EIO, None);
    let off = 11 * REGION;
    assert_eq!(s.write(off, 4096, 6), IoStatus::Failed(libc::EIO));
    for m in ["m0", "m1"] {
        assert!(s.plex_at(m, off).iter().all(|&b| b == 0), "plex {m}");
    }
    // Neither copy is retired (none took the write): both are written again.
    assert_eq!(s.stats().log_copy_failures, 0);
    s.elog.injection().clear_failures();
    s.elog2().injection().clear_failures();
    assert_eq!(s.write(off, 4096, 6), IoStatus::Success);
    assert_eq!(s.section(1), ranges(&[11]));
    assert_eq!(s.section2(1), ranges(&[11]));
}
