//! The `error` bdev through a running target: counted failures, reads-only and
//! writes-only injection, latency, clearing, and counts shared across reactors.

use std::sync::Arc;
use std::time::Duration;

use plexd_target::bdev::error::{ErrorBdev, FailOn};
use plexd_target::bdev::malloc::MallocBdev;
use plexd_target::bdev::uring::{UringBdev, UringOpts};
use plexd_target::bdev::{Bdev, IoKind, IoStatus};
use plexd_target::buf::PoolConfig;
use plexd_target::diag::{run_ios, start_ios, IoOutcome, IoReq};
use plexd_target::reactor::ReactorConfig;
use plexd_target::testutil::{pattern, TempPath};
use plexd_target::{Target, TargetConfig};

const WAIT: Duration = Duration::from_secs(20);
const EIO: IoStatus = IoStatus::Failed(libc::EIO);
const OK: IoStatus = IoStatus::Success;

fn target(reactors: usize) -> Arc<Target> {
    Target::start(&TargetConfig {
        reactors: ReactorConfig {
            cores: if reactors == 1 {
                Vec::new()
            } else {
                (0..reactors).collect()
            },
            ..Default::default()
        },
        pool: PoolConfig {
            chunks_per_class: [512, 16, 2, 2],
            hugepages: false,
        },
    })
    .expect("target starts")
}

/// A target with `e0` (error) over `m0` (4 MiB malloc).
fn setup(reactors: usize) -> (Arc<Target>, Arc<ErrorBdev>, Arc<dyn Bdev>) {
    let t = target(reactors);
    let m = MallocBdev::new("m0", 4 << 20, 512).unwrap();
    t.add_bdev(m.clone()).unwrap();
    let e = ErrorBdev::new("e0", m);
    t.add_bdev(e.clone()).unwrap();
    let b = t.bdev("e0").unwrap();
    (t, e, b)
}

fn statuses(out: &[IoOutcome]) -> Vec<IoStatus> {
    out.iter().map(|o| o.status).collect()
}

#[test]
fn n_failures_then_success() {
    let (t, e, b) = setup(1);
    let h = &t.reactors().handles()[0];
    e.injection().fail(FailOn::Both, libc::EIO, Some(3));
    let reqs: Vec<IoReq> = (0..5)
        .map(|i| IoReq::write(i * 4096, pattern(i, 4096)))
        .collect();
    let out = run_ios(h, &b, reqs, WAIT).unwrap();
    assert_eq!(statuses(&out), vec![EIO, EIO, EIO, OK, OK]);
    assert_eq!(e.injection().injected_failures(), 3);
    // The failed writes never reached the device; the others did.
    let out = run_ios(
        h,
        &b,
        vec![IoReq::read(0, 4096), IoReq::read(3 * 4096, 4096)],
        WAIT,
    )
    .unwrap();
    assert_eq!(statuses(&out), vec![OK, OK]);
    assert!(out[0].data.iter().all(|&x| x == 0));
    assert!(out[1].data == pattern(3, 4096));
}

#[test]
fn read_only_injection_spares_writes_until_cleared() {
    let (t, e, b) = setup(1);
    let h = &t.reactors().handles()[0];
    e.injection().fail(FailOn::Reads, libc::EIO, None);
    assert!(
        b.info().detail.contains("fail reads"),
        "{}",
        b.info().detail
    );
    let data = pattern(7, 8192);
    let out = run_ios(
        h,
        &b,
        vec![
            IoReq::write(0, data.clone()),
            IoReq::read(0, 8192),
            IoReq::other(IoKind::Flush, 0, 0),
            IoReq::read(8192, 512),
        ],
        WAIT,
    )
    .unwrap();
    assert_eq!(statuses(&out), vec![OK, EIO, OK, EIO]);
    e.injection().clear();
    assert!(
        b.info().detail.contains("no injection"),
        "{}",
        b.info().detail
    );
    let out = run_ios(h, &b, vec![IoReq::read(0, 8192)], WAIT).unwrap();
    assert_eq!(out[0].status, OK);
    assert!(out[0].data == data);
}

#[test]
fn write_only_injection_with_a_given_errno_spares_reads() {
    let (t, e, b) = setup(1);
    let h = &t.reactors().handles()[0];
    e.injection().fail(FailOn::Writes, libc::ENOSPC, None);
    let enospc = IoStatus::Failed(libc::ENOSPC);
    let out = run_ios(
        h,
        &b,
        vec![
            IoReq::write(0, pattern(1, 4096)),
            IoReq::other(IoKind::WriteZeroes, 0, 4096),
            IoReq::other(IoKind::Unmap, 0, 4096),
            IoReq::other(IoKind::Flush, 0, 0),
            IoReq::read(0, 4096),
            IoReq::other(IoKind::Reset, 0, 0),
        ],
        WAIT,
    )
    .unwrap();
    assert_eq!(statuses(&out), vec![enospc, enospc, enospc, enospc, OK, OK]);
}

#[test]
fn invalid_ranges_fail_einval_before_injection() {
    let (t, e, b) = setup(1);
    let h = &t.reactors().handles()[0];
    e.injection().fail(FailOn::Both, libc::EIO, Some(1));
    let out = run_ios(
        h,
        &b,
        vec![IoReq::read(100, 512), IoReq::read(0, 512)],
        WAIT,
    )
    .unwrap();
    assert_eq!(statuses(&out), vec![IoStatus::Failed(libc::EINVAL), EIO]);
}

#[test]
fn latency_injection_delays_completion_by_at_least_the_amount() {
    let (t, e, b) = setup(1);
    let h = &t.reactors().handles()[0];
    let latency = Duration::from_millis(30);
    e.injection().set_latency_us(latency.as_micros() as u64);
    assert!(
        b.info().detail.contains("latency 30000 us"),
        "{}",
        b.info().detail
    );
    let data = pattern(9, 4096);
    let out = run_ios(
        h,
        &b,
        vec![IoReq::write(0, data.clone()), IoReq::read(8192, 4096)],
        WAIT,
    )
    .unwrap();
    assert_eq!(statuses(&out), vec![OK, OK]);
    for o in &out {
        assert!(o.latency >= latency, "completed after {:?}", o.latency);
    }
    // Injected failures get the latency too.
    e.injection().fail(FailOn::Reads, libc::EIO, Some(1));
    let out = run_ios(h, &b, vec![IoReq::read(0, 4096)], WAIT).unwrap();
    assert_eq!(out[0].status, EIO);
    assert!(
        out[0].latency >= latency,
        "failed after {:?}",
        out[0].latency
    );
    // Cleared: data flows, no added latency (no upper bound asserted).
    e.injection().clear();
    assert_eq!(e.injection().latency_us(), 0);
    let out = run_ios(h, &b, vec![IoReq::read(0, 4096)], WAIT).unwrap();
    assert_eq!(out[0].status, OK);
    assert!(out[0].data == data);
}

#[test]
fn counted_failures_are_shared_by_all_reactors() {
    let (t, e, b) = setup(2);
    let hs = t.reactors().handles();
    e.injection().fail(FailOn::Writes, libc::EIO, Some(5));
    let mut failed = 0;
    for round in 0..4u64 {
        let h = &hs[(round % 2) as usize];
        let reqs: Vec<IoReq> = (0..4)
            .map(|i| IoReq::write((round * 4 + i) * 4096, pattern(i, 4096)))
            .collect();
        let out = run_ios(h, &b, reqs, WAIT).unwrap();
        failed += out.iter().filter(|o| !o.status.is_ok()).count();
    }
    assert_eq!(failed, 5);
    assert_eq!(e.injection().injected_failures(), 5);
}

#[test]
fn error_bdev_over_a_uring_file_passes_data_through() {
    let path = TempPath::file("error-uring", 1 << 20).unwrap();
    let t = target(1);
    let u = UringBdev::open("u0", &path.0, &UringOpts::default()).unwrap();
    t.add_bdev(u.clone()).unwrap();
    let e = ErrorBdev::new("e0", u);
    t.add_bdev(e.clone()).unwrap();
    let b = t.bdev("e0").unwrap();
    let h = &t.reactors().handles()[0];
    e.injection().set_latency_us(1000);
    let data = pattern(42, 64 << 10);
    let out = run_ios(h, &b, vec![IoReq::write(4096, data.clone())], WAIT).unwrap();
    assert_eq!(out[0].status, OK);
    e.injection().fail(FailOn::Writes, libc::EIO, None);
    let out = run_ios(
        h,
        &b,
        vec![
            IoReq::read(4096, 64 << 10),
            IoReq::write(0, pattern(1, 4096)),
        ],
        WAIT,
    )
    .unwrap();
    assert_eq!(statuses(&out), vec![OK, EIO]);
    assert!(out[0].data == data);
    assert!(out[0].latency >= Duration::from_millis(1));
}

#[test]
fn deleting_the_error_bdev_releases_held_completions() {
    let (t, e, b) = setup(1);
    let h = &t.reactors().handles()[0];
    // An hour of latency: only the deletion can release these.
    e.injection().set_latency_us(3_600_000_000);
    e.injection().fail(FailOn::Writes, libc::EIO, Some(1));
    let pending = start_ios(
        h,
        &b,
        vec![IoReq::read(0, 4096), IoReq::write(0, pattern(1, 4096))],
    )
    .unwrap();
    drop(b);
    t.delete_bdev("e0").unwrap();
    let out = pending.wait(WAIT).expect("released by the deletion");
    assert_eq!(statuses(&out), vec![OK, EIO]);
}
