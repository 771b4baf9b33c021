//! Mirror resilience with the `error` bdev: failed reads are retried on another
//! plex, a write failing on one plex detaches that plex (STALE) before the write
//! completes, and the last ACTIVE plex is never detached.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::two_reactor_target;
use plexd_target::bdev::error::{ErrorBdev, FailOn};
use plexd_target::bdev::malloc::MallocBdev;
use plexd_target::bdev::IoStatus;
use plexd_target::diag::{run_ios, IoReq};
use plexd_target::perf::{start_job, JobConfig, Workload};
use plexd_target::volume::{PlexKind, PlexSpec, PlexState, ReadPolicy, SubdiskSpec, VolumeSpec};
use plexd_target::{Event, Target};

const MIB: u64 = 1 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A 2-reactor target with a two-way mirror whose plexes sit on error bdevs e0, e1.
fn mirror() -> (Arc<Target>, Arc<ErrorBdev>, Arc<ErrorBdev>) {
    mirror_with(false)
}

/// [`mirror`], the volume's `local_detach` set to `local_detach`.
fn mirror_with(local_detach: bool) -> (Arc<Target>, Arc<ErrorBdev>, Arc<ErrorBdev>) {
    let t = two_reactor_target();
    let mut errs = Vec::new();
    for i in 0..2 {
        let m = MallocBdev::new(&format!("m{i}"), 16 * MIB, 512).unwrap();
        t.add_bdev(m.clone()).unwrap();
        let e = ErrorBdev::new(&format!("e{i}"), m);
        t.add_bdev(e.clone()).unwrap();
        errs.push(e);
    }
    let plex = |i: usize| PlexSpec {
        name: format!("v-0{}", i + 1),
        kind: PlexKind::Concat,
        columns: vec![vec![SubdiskSpec {
            bdev: format!("e{i}"),
            offset_bytes: 0,
            len_bytes: 16 * MIB,
        }]],
        state: PlexState::Active,
    };
    t.create_volume(&VolumeSpec {
        log: None,
        name: "v".into(),
        size_bytes: 16 * MIB,
        plexes: vec![plex(0), plex(1)],
        read_policy: ReadPolicy::Round,
        shared: false,
        local_detach,
    })
    .unwrap();
    let e1 = errs.pop().unwrap();
    let e0 = errs.pop().unwrap();
    (t, e0, e1)
}

fn io(t: &Arc<Target>, bdev: &str, req: IoReq) -> (IoStatus, Vec<u8>) {
    let b = t.bdev(bdev).unwrap();
    let mut out = run_ios(&t.reactors().handles()[0], &b, vec![req], IO_TIMEOUT).unwrap();
    let o = out.remove(0);
    (o.status, o.data)
}

fn plex_state(t: &Target, plex: &str) -> PlexState {
    t.volume_info("v")
        .unwrap()
        .plexes
        .iter()
        .find(|p| p.name == plex)
        .unwrap()
        .state
}

#[test]
fn reads_keep_succeeding_while_one_plex_fails_them() {
    let (t, e0, _e1) = mirror();
    let data = vec![0x5Au8; 64 * 1024];
    assert!(io(&t, "v", IoReq::write(0, data.clone())).0.is_ok());
    e0.injection().fail(FailOn::Reads, libc::EIO, None);
    for _ in 0..20 {
        let (st, got) = io(&t, "v", IoReq::read(0, 64 * 1024));
        assert!(st.is_ok());
        assert_eq!(got, data);
    }
    let info = t.volume_info("v").unwrap();
    assert!(
        info.stats.read_retries >= 5,
        "round-robin reads hit the failing plex and were retried ({})",
        info.stats.read_retries
    );
    assert_eq!(info.stats.failed_ops, 0);
    // Read errors do not detach anything.
    assert_eq!(plex_state(&t, "v-01"), PlexState::Active);
}

#[test]
fn a_write_failing_on_one_plex_detaches_it_before_completing() {
    let (t, e0, _e1) = mirror();
    let events = t.subscribe();
    e0.injection().fail(FailOn::Writes, libc::EIO, None);
    let data = vec![0xA5u8; 8192];
    let (st, _) = io(&t, "v", IoReq::write(4096, data.clone()));
    assert!(st.is_ok(), "the write succeeded on the healthy plex");
    // The completion was held until the plex left ACTIVE.
    assert_eq!(plex_state(&t, "v-01"), PlexState::Stale);
    let ev = events.recv_blocking().unwrap();
    assert_eq!(
        ev,
        Event::PlexIoError {
            volume: "v".into(),
            plex: "v-01".into(),
            errno: libc::EIO,
            failed: None,
        }
    );
    // Reads now come from v-02 only and return the new data.
    e0.injection().clear();
    for _ in 0..4 {
        assert_eq!(io(&t, "v", IoReq::read(4096, 8192)).1, data);
    }
    // The data is on the healthy plex's disk.
    assert_eq!(io(&t, "m1", IoReq::read(4096, 8192)).1, data);
}

#[test]
fn the_last_active_plex_is_never_detached_and_its_write_fails() {
    let (t, e0, e1) = mirror();
    e0.injection().fail(FailOn::Writes, libc::EIO, None);
    assert!(io(&t, "v", IoReq::write(0, vec![1u8; 4096])).0.is_ok());
    assert_eq!(plex_state(&t, "v-01"), PlexState::Stale);
    // Now the only ACTIVE plex fails too: the write fails, the plex stays ACTIVE.
    e1.injection().fail(FailOn::Writes, libc::EIO, None);
    let (st, _) = io(&t, "v", IoReq::write(0, vec![2u8; 4096]));
    assert_eq!(st, IoStatus::Failed(libc::EIO));
    assert_eq!(plex_state(&t, "v-02"), PlexState::Active);
    e1.injection().clear();
    assert!(io(&t, "v", IoReq::write(0, vec![3u8; 4096])).0.is_ok());
}

#[test]
fn verified_load_survives_a_plex_failing_mid_run() {
    let (t, e0, _e1) = mirror();
    let job = start_job(
        &t,
        &JobConfig {
            bdev: "v".into(),
            workload: Workload::Verify,
            block_bytes: 4096,
            qd: 16,
            reactors: vec![],
            seed: 9,
        },
    )
    .unwrap();
    let until = |cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "condition not reached in time");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    until(&|| t.volume_info("v").unwrap().stats.write_ops > 1000);
    e0.injection().fail(FailOn::Both, libc::EIO, None);
    until(&|| plex_state(&t, "v-01") == PlexState::Stale);
    let after = t.volume_info("v").unwrap().stats.write_ops;
    until(&|| t.volume_info("v").unwrap().stats.write_ops > after + 1000);
    let res = job.stop().unwrap();
    assert_eq!(res.failed_ios, 0, "no host I/O failed while a plex died");
    assert_eq!(res.verify_errors, 0, "{:?}", res.first_mismatch);
    assert_eq!(t.volume_info("v").unwrap().held, 0);
}

#[test]
fn under_local_detach_a_write_failing_on_one_plex_fails_and_is_reported_with_its_range() {
    let (t, e0, _e1) = mirror_with(true);
    // A coordinator decides (no standalone detach worker).
    t.set_detach_policy(plexd_target::target::DetachPolicy::External);
    let events = t.subscribe();
    let old = vec![0x11u8; 8192];
    assert!(io(&t, "v", IoReq::write(4096, old)).0.is_ok());
    e0.injection().fail(FailOn::Writes, libc::EIO, None);
    let data = vec![0xA5u8; 8192];
    let (st, _) = io(&t, "v", IoReq::write(4096, data.clone()));
    // Not held for a detach: failed at once, with EIO, the plex still ACTIVE.
    assert_eq!(st, IoStatus::Failed(libc::EIO));
    assert_eq!(plex_state(&t, "v-01"), PlexState::Active);
    assert_eq!(t.volume_info("v").unwrap().held, 0);
    // Published before the write completed: already queued.
    let ev = std::iter::from_fn(|| events.try_recv().ok())
        .find(|e| matches!(e, Event::PlexIoError { .. }))
        .expect("a PlexIoError event");
    assert_eq!(
        ev,
        Event::PlexIoError {
            volume: "v".into(),
            plex: "v-01".into(),
            errno: libc::EIO,
            failed: Some((4096, 8192)),
        }
    );
    // The write reached the healthy plex: the range now differs between plexes
    // (what the cluster's resync of the reported range repairs).
    assert_eq!(io(&t, "m1", IoReq::read(4096, 8192)).1, data);
    assert_eq!(io(&t, "m0", IoReq::read(4096, 8192)).1, vec![0x11u8; 8192]);
    // Once the plex works again, writes succeed on both.
    e0.injection().clear();
    assert!(io(&t, "v", IoReq::write(4096, data.clone())).0.is_ok());
    assert_eq!(io(&t, "m0", IoReq::read(4096, 8192)).1, data);
}
