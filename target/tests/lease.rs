//! The data-plane lease (self-fencing) in-process: a shared volume is served only
//! under a valid lease, its I/O fails with FENCED_ERRNO (never hangs) once the lease
//! runs out — parked I/O behind a prepare and writes held for a plex detach too —
//! and is served again after a renewal; a staged layout stays staged across an
//! expiry; private volumes never depend on it, only on the private-group lease
//! once that is granted. Every wait has a deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use plexd_target::bdev::error::{ErrorBdev, FailOn};
use plexd_target::bdev::malloc::MallocBdev;
use plexd_target::bdev::IoStatus;
use plexd_target::diag::{run_ios, start_ios, IoReq};
use plexd_target::lease::{LeaseState, FENCED_ERRNO};
use plexd_target::reactor::ReactorConfig;
use plexd_target::target::DetachPolicy;
use plexd_target::testutil::pattern;
use plexd_target::volume::{PlexKind, PlexSpec, PlexState, ReadPolicy, SubdiskSpec, VolumeSpec};
use plexd_target::{Event, Target, TargetConfig};

const MIB: u64 = 1 << 20;
/// Longest any single I/O may take to complete (succeed or fail): far above what
/// it needs; an I/O that hangs fails the test here instead of hanging it.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// A lease long enough to never run out during a test step.
const LONG_LEASE_MS: u32 = 60_000;
/// A lease the test waits out.
const SHORT_LEASE_MS: u32 = 300;
/// How long after its deadline an expiry must have been seen at the latest. Expiry
/// normally lags by well under a few ms (the reactors' clock and poller); this is
/// generous because 5 agents share 2 cores while tests run.
const EXPIRY_WAIT: Duration = Duration::from_secs(5);

fn start() -> Arc<Target> {
    let _ = env_logger::builder().is_test(true).try_init();
    Target::start(&TargetConfig {
        reactors: ReactorConfig {
            cores: vec![0, 1],
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap()
}

fn concat(name: &str, bdev: &str, len: u64) -> PlexSpec {
    PlexSpec {
        name: name.into(),
        kind: PlexKind::Concat,
        columns: vec![vec![SubdiskSpec {
            bdev: bdev.into(),
            offset_bytes: 0,
            len_bytes: len,
        }]],
        state: PlexState::Active,
    }
}

fn volume(name: &str, size: u64, plexes: Vec<PlexSpec>, shared: bool) -> VolumeSpec {
    VolumeSpec {
        log: None,
        name: name.into(),
        size_bytes: size,
        plexes,
        read_policy: ReadPolicy::Round,
        shared,
        local_detach: false,
    }
}

/// A target with shared volume `sv` of `len` bytes, one concat plex on malloc bdev
/// m0, no lease granted yet.
fn shared_volume(len: u64) -> Arc<Target> {
    let t = start();
    t.add_bdev(MallocBdev::new("m0", len, 512).unwrap())
        .unwrap();
    t.create_volume(&volume("sv", len, vec![concat("sv-01", "m0", len)], true))
        .unwrap();
    t
}

/// Runs one I/O on `reactor` and returns how it ended (it must end).
fn io(t: &Arc<Target>, reactor: usize, bdev: &str, req: IoReq) -> (IoStatus, Vec<u8>) {
    let b = t.bdev(bdev).unwrap();
    let mut out = run_ios(&t.reactors().handles()[reactor], &b, vec![req], IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("{bdev} on reactor {reactor}: {e}"));
    let o = out.pop().unwrap();
    (o.status, o.data)
}

fn write(t: &Arc<Target>, reactor: usize, bdev: &str, off: u64, data: &[u8]) -> IoStatus {
    io(t, reactor, bdev, IoReq::write(off, data.to_vec())).0
}

fn read(t: &Arc<Target>, reactor: usize, bdev: &str, off: u64, len: u64) -> (IoStatus, Vec<u8>) {
    io(t, reactor, bdev, IoReq::read(off, len))
}

const FENCED: IoStatus = IoStatus::Failed(FENCED_ERRNO);

/// Waits until `f` holds, at most `timeout`.
fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The next LeaseExpired event, waiting at most `timeout`.
fn lease_expired(rx: &smol::channel::Receiver<Event>, timeout: Duration) -> Option<Vec<String>> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = smol::block_on(smol::future::or(async { rx.recv().await.ok() }, async {
            smol::Timer::after(left).await;
            None
        }))?;
        if let Event::LeaseExpired { volumes } = ev {
            return Some(volumes);
        }
    }
}

/// A target with shared volume `sv` on malloc bdev m0 and private volume `pv`
/// (returned) on m1.
fn shared_and_private() -> (Arc<Target>, VolumeSpec) {
    let t = start();
    t.add_bdev(MallocBdev::new("m0", 8 * MIB, 512).unwrap())
        .unwrap();
    t.add_bdev(MallocBdev::new("m1", 8 * MIB, 512).unwrap())
        .unwrap();
    let sv = volume("sv", 8 * MIB, vec![concat("sv-01", "m0", 8 * MIB)], true);
    let pv = volume("pv", 8 * MIB, vec![concat("pv-01", "m1", 8 * MIB)], false);
    t.create_volume(&sv).unwrap();
    t.create_volume(&pv).unwrap();
    (t, pv)
}

#[test]
fn shared_volume_io_follows_the_lease_and_private_volumes_never_do() {
    // Creating a shared volume needs no lease.
    let (t, _) = shared_and_private();
    let events = t.subscribe();
    let a = pattern(1, 64 << 10);

    // Never granted: the shared volume is not served, the private one is.
    assert_eq!(t.lease_status().state, LeaseState::None);
    for r in 0..2 {
        assert_eq!(write(&t, r, "sv", 0, &a), FENCED, "reactor {r}, no lease");
        assert_eq!(
            read(&t, r, "sv", 0, 4096).0,
            FENCED,
            "reactor {r}, no lease"
        );
        assert_eq!(write(&t, r, "pv", 0, &a), IoStatus::Success);
    }

    // Granted: served on every reactor.
    assert!(!t.renew_lease(LONG_LEASE_MS).unwrap(), "was not expired");
    let st = t.lease_status();
    assert_eq!(st.state, LeaseState::Valid);
    assert!(st.remaining_ms > 0 && st.remaining_ms <= LONG_LEASE_MS as u64);
    for r in 0..2 {
        assert_eq!(write(&t, r, "sv", r as u64 * MIB, &a), IoStatus::Success);
        let (s, d) = read(&t, r, "sv", r as u64 * MIB, a.len() as u64);
        assert_eq!(s, IoStatus::Success);
        assert!(d == a, "reactor {r}: data read back");
    }

    // A short lease runs out with no I/O arriving: the reactors' pollers see it,
    // once, and report it once.
    let before = Instant::now();
    assert!(!t.renew_lease(SHORT_LEASE_MS).unwrap());
    let earliest = before + Duration::from_millis(SHORT_LEASE_MS as u64);
    let fenced = lease_expired(
        &events,
        Duration::from_millis(SHORT_LEASE_MS as u64) + EXPIRY_WAIT,
    )
    .expect("a LeaseExpired event");
    let seen = Instant::now();
    assert!(seen >= earliest, "the lease expired early");
    eprintln!(
        "expiry reported {:?} after the deadline (idle reactors)",
        seen - earliest
    );
    assert_eq!(fenced, vec!["sv".to_string()], "the fenced volumes");
    let st = t.lease_status();
    assert_eq!(
        (st.state, st.remaining_ms, st.expiries),
        (LeaseState::Expired, 0, 1)
    );
    for r in 0..2 {
        assert_eq!(write(&t, r, "sv", 0, &a), FENCED, "reactor {r}, expired");
        assert_eq!(read(&t, r, "sv", 0, 4096).0, FENCED, "reactor {r}, expired");
        assert_eq!(write(&t, r, "pv", 0, &a), IoStatus::Success, "private");
        assert_eq!(read(&t, r, "pv", 0, 4096).0, IoStatus::Success, "private");
    }
    assert_eq!(t.volume_info("sv").unwrap().state, "ENABLED");

    // Renewal after expiry: served again, data intact.
    assert!(t.renew_lease(LONG_LEASE_MS).unwrap(), "was expired");
    for r in 0..2 {
        let (s, d) = read(&t, r, "sv", r as u64 * MIB, a.len() as u64);
        assert_eq!(s, IoStatus::Success, "reactor {r}, renewed");
        assert!(d == a, "reactor {r}: data intact across the expiry");
    }

    // A revocation takes effect before renewLease returns.
    assert!(!t.renew_lease(0).unwrap());
    for r in 0..2 {
        assert_eq!(write(&t, r, "sv", 0, &a), FENCED, "reactor {r}, revoked");
    }
    assert_eq!(
        lease_expired(&events, EXPIRY_WAIT),
        Some(vec!["sv".to_string()])
    );
    assert_eq!(t.lease_status().expiries, 2);
    // Revoking an expired lease is no new expiry.
    assert!(t.renew_lease(0).unwrap());
    assert_eq!(t.lease_status().expiries, 2);
    // Too long a lease is refused, naming the lease.
    let e = t.renew_lease(u32::MAX).unwrap_err();
    assert!(e.to_string().contains("lease"), "{e}");
}

#[test]
fn parked_io_of_a_prepared_shared_volume_fails_at_expiry_and_the_layout_stays_staged() {
    let t = start();
    t.add_bdev(MallocBdev::new("m0", 16 * MIB, 512).unwrap())
        .unwrap();
    let v4 = volume("sv", 4 * MIB, vec![concat("sv-01", "m0", 4 * MIB)], true);
    let v8 = volume("sv", 8 * MIB, vec![concat("sv-01", "m0", 8 * MIB)], true);
    t.create_volume(&v4).unwrap();
    t.renew_lease(LONG_LEASE_MS).unwrap();
    let a = pattern(2, 4096);
    assert_eq!(write(&t, 0, "sv", 0, &a), IoStatus::Success);

    // Kernel phase: quiesce and stage a grown layout, then park I/O on both reactors.
    t.prepare("sv", &v8, Duration::from_secs(5)).unwrap();
    let b = t.bdev("sv").unwrap();
    let parked: Vec<_> = (0..2)
        .map(|r| {
            start_ios(
                &t.reactors().handles()[r],
                &b,
                vec![IoReq::read(0, 4096), IoReq::write(4096, a.clone())],
            )
            .unwrap()
        })
        .collect();
    wait_for("4 I/Os parked", IO_TIMEOUT, || {
        t.volume_info("sv").unwrap().parked == 4
    });

    // The lease runs out while they are parked: they fail, they do not hang.
    let before = Instant::now();
    t.renew_lease(SHORT_LEASE_MS).unwrap();
    for (r, p) in parked.into_iter().enumerate() {
        let out = p
            .wait(Duration::from_millis(SHORT_LEASE_MS as u64) + EXPIRY_WAIT)
            .unwrap_or_else(|e| panic!("parked I/O on reactor {r} hung past the lease: {e}"));
        for o in out {
            assert_eq!(o.status, FENCED, "reactor {r}");
        }
    }
    assert!(Instant::now() >= before + Duration::from_millis(SHORT_LEASE_MS as u64));
    // New I/O to the closed gate fails at once instead of parking.
    assert_eq!(read(&t, 1, "sv", 0, 4096).0, FENCED);
    // The data plane neither committed nor aborted on its own.
    let info = t.volume_info("sv").unwrap();
    assert_eq!(
        (info.state.as_str(), info.staged, info.parked),
        ("QUIESCED", true, 0)
    );
    assert_eq!(info.size_bytes, 4 * MIB, "the old layout is still current");

    // Commit after renewal works: the grown layout serves I/O beyond the old end.
    assert!(t.renew_lease(LONG_LEASE_MS).unwrap());
    t.commit("sv").unwrap();
    assert_eq!(t.volume_info("sv").unwrap().size_bytes, 8 * MIB);
    assert_eq!(write(&t, 1, "sv", 6 * MIB, &a), IoStatus::Success);
    let (s, d) = read(&t, 0, "sv", 0, 4096);
    assert_eq!(s, IoStatus::Success);
    assert!(d == a, "data written before the prepare is intact");

    // The other way out: a prepare, a revoked lease, an abort — also while fenced.
    t.prepare("sv", &v4, Duration::from_secs(5)).unwrap();
    t.renew_lease(0).unwrap();
    assert!(t.volume_info("sv").unwrap().staged);
    t.abort("sv").unwrap();
    let info = t.volume_info("sv").unwrap();
    assert_eq!((info.state.as_str(), info.staged), ("ENABLED", false));
    assert_eq!(read(&t, 0, "sv", 0, 4096).0, FENCED, "still fenced");
    t.renew_lease(LONG_LEASE_MS).unwrap();
    assert_eq!(read(&t, 0, "sv", 6 * MIB, 4096).0, IoStatus::Success);
}

#[test]
fn a_write_held_for_a_plex_detach_fails_at_expiry() {
    let t = start();
    t.set_detach_policy(DetachPolicy::External);
    t.add_bdev(MallocBdev::new("m0", 8 * MIB, 512).unwrap())
        .unwrap();
    let m1 = MallocBdev::new("m1", 8 * MIB, 512).unwrap();
    t.add_bdev(m1.clone()).unwrap();
    let e1 = ErrorBdev::new("e1", m1);
    t.add_bdev(e1.clone()).unwrap();
    t.create_volume(&volume(
        "sv",
        8 * MIB,
        vec![
            concat("sv-01", "m0", 8 * MIB),
            concat("sv-02", "e1", 8 * MIB),
        ],
        true,
    ))
    .unwrap();
    t.renew_lease(LONG_LEASE_MS).unwrap();
    e1.injection().fail(FailOn::Writes, libc::EIO, None);
    let b = t.bdev("sv").unwrap();
    let held = start_ios(
        &t.reactors().handles()[1],
        &b,
        vec![IoReq::write(0, pattern(3, 8192))],
    )
    .unwrap();
    // The write failed on sv-02: it is held until the controller detaches the plex.
    wait_for("the write is held", IO_TIMEOUT, || {
        t.volume_info("sv").unwrap().held == 1
    });
    t.renew_lease(SHORT_LEASE_MS).unwrap();
    let out = held
        .wait(Duration::from_millis(SHORT_LEASE_MS as u64) + EXPIRY_WAIT)
        .expect("the held write ends at expiry");
    assert_eq!(out[0].status, FENCED);
    let info = t.volume_info("sv").unwrap();
    assert_eq!(info.held, 0);
    // The data plane detached nothing on its own: that is the controller's call.
    assert!(info.plexes.iter().all(|p| p.state == PlexState::Active));
    // Renewed and the plex healed: writes reach both plexes again.
    t.renew_lease(LONG_LEASE_MS).unwrap();
    e1.injection().clear();
    assert_eq!(write(&t, 0, "sv", 0, &pattern(4, 4096)), IoStatus::Success);
}

/// Queue depth per reactor of the load test.
const QD: u32 = 16;

#[test]
fn a_lease_running_out_under_load_fails_io_and_nothing_hangs() {
    use plexd_target::perf::{start_job, JobConfig, Workload};
    let t = shared_volume(32 * MIB);
    let events = t.subscribe();
    t.renew_lease(LONG_LEASE_MS).unwrap();
    let job = start_job(
        &t,
        &JobConfig {
            bdev: "sv".into(),
            workload: Workload::RandRw(50),
            block_bytes: 4096,
            qd: QD,
            reactors: vec![],
            seed: 7,
        },
    )
    .unwrap();
    // Both reactors busy with I/O when the lease runs out.
    wait_for("I/O under way", IO_TIMEOUT, || {
        t.volume_info("sv").unwrap().stats.read_ops > 1000
    });
    let before = Instant::now();
    t.renew_lease(SHORT_LEASE_MS).unwrap();
    let earliest = before + Duration::from_millis(SHORT_LEASE_MS as u64);
    let fenced = lease_expired(
        &events,
        Duration::from_millis(SHORT_LEASE_MS as u64) + EXPIRY_WAIT,
    );
    let seen = Instant::now();
    assert_eq!(fenced, Some(vec!["sv".to_string()]));
    assert!(seen >= earliest, "the lease expired early");
    eprintln!(
        "expiry reported {:?} after the deadline (busy reactors)",
        seen - earliest
    );
    // Nothing new is served: beyond the I/Os already at the disk at the expiry (at
    // most QD per reactor, which complete normally; the check on submit reads the
    // clock, so a reactor whose cached clock lags takes nothing new), the count of
    // successful I/Os stops moving while failures pile up; and the job stops
    // (nothing hangs).
    let ok = || {
        let s = t.volume_info("sv").unwrap().stats;
        s.read_ops + s.write_ops - s.failed_ops
    };
    let ok_before = ok();
    wait_for("fenced I/O fails", IO_TIMEOUT, || {
        t.volume_info("sv").unwrap().stats.failed_ops > 1000
    });
    let served_after = ok() - ok_before;
    assert!(
        served_after <= QD as u64 * 2,
        "{served_after} I/Os served after the expiry was reported"
    );
    let res = job.stop().unwrap();
    assert!(res.failed_ios > 0);
    assert_eq!(res.verify_errors, 0);
}

/// A reactor that did not run for longer than the lease, its thread stalled in the
/// middle of a loop iteration (a process stopped by SIGSTOP, a frozen cgroup), fences the
/// I/O it takes in right after it runs again. Its cached clock is from before the
/// stall, and another node may have taken over in the meantime: the check on submit
/// must not trust that clock while a lease is granted.
#[test]
fn io_a_reactor_takes_in_right_after_a_stall_past_the_lease_is_fenced() {
    let t = shared_volume(8 * MIB);
    let a = pattern(5, 4096);
    t.renew_lease(LONG_LEASE_MS).unwrap();
    assert_eq!(write(&t, 0, "sv", 0, &a), IoStatus::Success);

    let b = t.bdev("sv").unwrap();
    let stall = Duration::from_millis(2 * u64::from(SHORT_LEASE_MS));
    for r in 0..2 {
        t.renew_lease(SHORT_LEASE_MS).unwrap();
        let h = &t.reactors().handles()[r];
        // The stall and the I/O behind it are handled in one pass over the mailbox,
        // before the reactor's pollers or its loop look at the clock again.
        h.try_send(Box::new(move |_| std::thread::sleep(stall)))
            .unwrap_or_else(|_| panic!("reactor {r}: mailbox full"));
        let ended = start_ios(h, &b, vec![IoReq::write(0, a.clone())])
            .unwrap()
            .wait(IO_TIMEOUT)
            .unwrap();
        assert_eq!(
            ended[0].status,
            FENCED,
            "reactor {r}: a write taken in {} ms after the lease ran out was served",
            stall.as_millis() - u64::from(SHORT_LEASE_MS) as u128
        );
        t.renew_lease(LONG_LEASE_MS).unwrap();
    }
}

#[test]
fn a_deadline_renewal_ends_at_its_deadline_however_late_it_arrives_and_a_past_one_revokes() {
    let t = shared_volume(8 * MIB);
    let events = t.subscribe();
    let a = pattern(4, 4096);
    let boot = || plexd_target::lease::boottime_ns().expect("CLOCK_BOOTTIME");
    const MS: u64 = 1_000_000;

    // A deadline a minute ahead: served on every reactor.
    assert!(!t.renew_lease_until(boot() + 60_000 * MS).unwrap());
    let st = t.lease_status();
    assert_eq!(st.state, LeaseState::Valid);
    assert!(st.remaining_ms > 0 && st.remaining_ms <= 60_000, "{st:?}");
    for r in 0..2 {
        assert_eq!(write(&t, r, "sv", 0, &a), IoStatus::Success, "reactor {r}");
    }

    // A renewal computed with SHORT_LEASE_MS + DELAY left, delivered DELAY later
    // (a coordinator frozen in between): the lease ends where it was computed to,
    // not SHORT_LEASE_MS + DELAY after its arrival.
    const DELAY_MS: u64 = 400;
    let computed = boot();
    let until = computed + (u64::from(SHORT_LEASE_MS) + DELAY_MS) * MS;
    wait_for("the delay", Duration::from_secs(5), || {
        boot() >= computed + DELAY_MS * MS
    });
    let arrived = boot();
    assert!(!t.renew_lease_until(until).unwrap());
    let st = t.lease_status();
    assert!(
        st.remaining_ms <= (until - arrived) / MS,
        "{st:?}: more than the {} ms left to the deadline",
        (until - arrived) / MS
    );
    let fenced = lease_expired(
        &events,
        Duration::from_millis(u64::from(SHORT_LEASE_MS) + DELAY_MS) + EXPIRY_WAIT,
    )
    .expect("a LeaseExpired event");
    let seen = boot();
    assert!(seen >= until, "the lease expired before its deadline");
    assert_eq!(fenced, vec!["sv".to_string()]);
    for r in 0..2 {
        assert_eq!(write(&t, r, "sv", 0, &a), FENCED, "reactor {r}, expired");
    }

    // Served again; then a deadline already past revokes before the call returns.
    assert!(
        t.renew_lease_until(boot() + 60_000 * MS).unwrap(),
        "was expired"
    );
    assert_eq!(write(&t, 1, "sv", 0, &a), IoStatus::Success);
    assert!(!t.renew_lease_until(boot() - MS).unwrap());
    assert_eq!(t.lease_status().state, LeaseState::Expired);
    for r in 0..2 {
        assert_eq!(
            write(&t, r, "sv", 0, &a),
            FENCED,
            "reactor {r}, past deadline"
        );
    }
    assert_eq!(
        lease_expired(&events, EXPIRY_WAIT),
        Some(vec!["sv".to_string()])
    );
    // 0 revokes too; it is no new expiry of an expired lease.
    assert!(t.renew_lease_until(0).unwrap());
    assert_eq!(t.lease_status().expiries, 2);
    // A deadline further than the longest lease is refused, naming the lease.
    let e = t
        .renew_lease_until(boot() + 2 * 3_600_000 * MS)
        .unwrap_err();
    assert!(e.to_string().contains("lease"), "{e}");
}

/// The private-group lease: private volumes are served without it until it is
/// first granted, then only while it is renewed; it and the shared lease fence
/// only their own volumes; parked I/O of a private volume fails at its expiry.
#[test]
fn private_volumes_follow_the_private_lease_once_granted_and_only_it() {
    let (t, pv) = shared_and_private();
    let events = t.subscribe();
    let a = pattern(7, 4096);
    let boot = || plexd_target::lease::boottime_ns().expect("CLOCK_BOOTTIME");
    const MS: u64 = 1_000_000;
    assert!(!t.renew_lease(LONG_LEASE_MS).unwrap());

    // Never granted: private volumes are served.
    assert_eq!(t.private_lease_status().state, LeaseState::None);
    for r in 0..2 {
        assert_eq!(write(&t, r, "pv", 0, &a), IoStatus::Success, "reactor {r}");
    }
    // Granted, then left to run out: private I/O fails (never hangs), shared goes on.
    assert!(!t
        .renew_private_lease_until(boot() + u64::from(SHORT_LEASE_MS) * MS)
        .unwrap());
    assert_eq!(t.private_lease_status().state, LeaseState::Valid);
    assert_eq!(write(&t, 0, "pv", 0, &a), IoStatus::Success);
    // A prepare holds one write parked when the lease runs out.
    t.prepare("pv", &pv, Duration::from_secs(5)).unwrap();
    let parked = start_ios(
        &t.reactors().handles()[1],
        &t.bdev("pv").unwrap(),
        vec![IoReq::write(MIB, a.clone())],
    )
    .unwrap();
    wait_for(
        "the private lease to run out",
        Duration::from_millis(u64::from(SHORT_LEASE_MS)) + EXPIRY_WAIT,
        || t.private_lease_status().state == LeaseState::Expired,
    );
    let out = parked.wait(IO_TIMEOUT).unwrap();
    assert_eq!(out[0].status, FENCED, "the parked private write");
    t.abort("pv").unwrap();
    for r in 0..2 {
        assert_eq!(write(&t, r, "pv", 0, &a), FENCED, "reactor {r}, expired");
        assert_eq!(read(&t, r, "pv", 0, 4096).0, FENCED, "reactor {r}, expired");
        assert_eq!(write(&t, r, "sv", 0, &a), IoStatus::Success, "shared");
    }
    assert_eq!(t.private_lease_status().expiries, 1);
    // The private lease's expiry is no LeaseExpired event (that is the shared one's).
    assert_eq!(lease_expired(&events, Duration::from_millis(100)), None);
    // Renewed: served again; revoking the shared lease leaves private volumes alone.
    assert!(t.renew_private_lease_until(boot() + 60_000 * MS).unwrap());
    assert!(!t.renew_lease(0).unwrap());
    for r in 0..2 {
        assert_eq!(write(&t, r, "pv", 0, &a), IoStatus::Success, "reactor {r}");
        assert_eq!(
            write(&t, r, "sv", 0, &a),
            FENCED,
            "reactor {r}, shared revoked"
        );
    }
    // A deadline already past revokes the private lease at once.
    assert!(!t.renew_private_lease_until(0).unwrap());
    assert_eq!(write(&t, 1, "pv", 0, &a), FENCED, "revoked");
}
