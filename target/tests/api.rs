//! The kernel interface end to end: a real `plexd-target` process, driven through
//! `KernelClient` over its Unix socket.

use std::path::Path;
use std::time::{Duration, Instant};

use plexd_target::api::process::TargetProcess;
use plexd_target::api::{BdevRequest, ErrorCode, Injection, KernelClient};
use plexd_target::bdev::error::FailOn;
use plexd_target::volume::{PlexKind, PlexSpec, PlexState, ReadPolicy, SubdiskSpec, VolumeSpec};
use plexd_target::Event;

const MIB: u64 = 1 << 20;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_plexd-target"))
}

fn start(tag: &str) -> TargetProcess {
    TargetProcess::start(exe(), tag, &["--cores", "0,1"]).expect("plexd-target starts")
}

fn sd(bdev: &str, offset_bytes: u64, len_bytes: u64) -> SubdiskSpec {
    SubdiskSpec {
        bdev: bdev.into(),
        offset_bytes,
        len_bytes,
    }
}

fn concat(name: &str, sds: Vec<SubdiskSpec>) -> PlexSpec {
    PlexSpec {
        name: name.into(),
        kind: PlexKind::Concat,
        columns: vec![sds],
        state: PlexState::Active,
    }
}

/// m0, m1 (malloc, 8 MiB), e1 (error over m1), and v0: a 4 MiB mirror of m0 and e1.
fn mirrored(k: &KernelClient) -> VolumeSpec {
    k.create_bdev(&BdevRequest::malloc("m0", 8 * MIB)).unwrap();
    k.create_bdev(&BdevRequest::malloc("m1", 8 * MIB)).unwrap();
    k.create_bdev(&BdevRequest::error("e1", "m1")).unwrap();
    let spec = VolumeSpec {
        log: None,
        name: "v0".into(),
        size_bytes: 4 * MIB,
        plexes: vec![
            concat("v0-01", vec![sd("m0", 0, 4 * MIB)]),
            concat("v0-02", vec![sd("e1", 0, 4 * MIB)]),
        ],
        read_policy: ReadPolicy::LeastBusy,
        shared: false,
        local_detach: false,
    };
    k.create_volume(&spec).unwrap();
    spec
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn creates_bdevs_and_a_mirrored_volume_and_lists_them() {
    let t = start("api-list");
    let k = t.client().unwrap();
    let info = k.info().unwrap();
    assert_eq!(info.reactors, 2);
    assert_eq!(info.cores, vec![Some(0), Some(1)]);
    assert_eq!(info.socket, t.socket().display().to_string());
    mirrored(&k);

    let names: Vec<String> = k
        .list_bdevs()
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, ["e1", "m0", "m1", "v0"]);
    let vols = k.list_volumes().unwrap();
    assert_eq!(vols.len(), 1);
    let v = &vols[0];
    assert_eq!(
        (v.name.as_str(), v.size_bytes, v.state.as_str()),
        ("v0", 4 * MIB, "ENABLED")
    );
    let states: Vec<PlexState> = v.plexes.iter().map(|p| p.state).collect();
    assert_eq!(states, [PlexState::Active, PlexState::Active]);

    // Data written through the volume lands on both plexes.
    let data = pattern(7, 64 << 10);
    assert_eq!(k.write("v0", MIB, &data).unwrap(), 0);
    assert_eq!(k.read("v0", MIB, data.len() as u32).unwrap().data, data);
    assert_eq!(k.read("m0", MIB, data.len() as u32).unwrap().data, data);
    assert_eq!(k.read("m1", MIB, data.len() as u32).unwrap().data, data);
    let (v, _) = k.get_volume("v0").unwrap();
    assert!(
        v.stats.write_ops >= 1 && v.stats.read_ops >= 1,
        "{:?}",
        v.stats
    );
    assert_eq!(v.stats.write_bytes, data.len() as u64);

    k.delete_volume("v0").unwrap();
    k.delete_bdev("e1").unwrap();
    let names: Vec<String> = k
        .list_bdevs()
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, ["m0", "m1"]);
}

#[test]
fn prepare_commit_grows_a_volume_and_abort_keeps_the_old_layout() {
    let t = start("api-grow");
    let k = t.client().unwrap();
    let mut spec = mirrored(&k);
    let data = pattern(3, 4096);
    assert_eq!(k.write("v0", 4 * MIB - 4096, &data).unwrap(), 0);

    // Grow both plexes by concatenating a second subdisk.
    spec.size_bytes = 6 * MIB;
    spec.plexes[0].columns[0].push(sd("m0", 4 * MIB, 2 * MIB));
    spec.plexes[1].columns[0].push(sd("e1", 4 * MIB, 2 * MIB));
    let quiesce = k.prepare("v0", &spec, Duration::from_secs(5)).unwrap();
    assert!(quiesce < Duration::from_secs(5));
    let (v, _) = k.get_volume("v0").unwrap();
    assert_eq!((v.state.as_str(), v.staged), ("QUIESCED", true));
    // A second prepare meanwhile is refused as `inUse` (the coordinator retries on
    // that code), and so is a delete.
    let e = k.prepare("v0", &spec, Duration::from_secs(5)).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InUse), "{e}");
    let e = k.delete_volume("v0").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InUse), "{e}");
    k.commit("v0").unwrap();
    let (v, committed) = k.get_volume("v0").unwrap();
    assert_eq!(
        (v.state.as_str(), v.staged, v.size_bytes),
        ("ENABLED", false, 6 * MIB)
    );
    assert_eq!(committed, spec);
    assert_eq!(k.read("v0", 4 * MIB - 4096, 4096).unwrap().data, data);
    assert_eq!(k.write("v0", 5 * MIB, &data).unwrap(), 0);

    // A staged shrink that is aborted changes nothing.
    let mut smaller = spec.clone();
    smaller.size_bytes = 2 * MIB;
    k.prepare("v0", &smaller, Duration::from_secs(5)).unwrap();
    k.abort("v0").unwrap();
    let (v, after) = k.get_volume("v0").unwrap();
    assert_eq!(
        (v.state.as_str(), v.staged, v.size_bytes),
        ("ENABLED", false, 6 * MIB)
    );
    assert_eq!(after, spec);

    // Quiesce and resume without a layout.
    k.quiesce("v0", Duration::from_secs(5)).unwrap();
    assert_eq!(k.get_volume("v0").unwrap().0.state, "QUIESCED");
    k.resume("v0").unwrap();
    assert_eq!(k.get_volume("v0").unwrap().0.state, "ENABLED");
}

#[test]
fn bad_requests_get_typed_errors_naming_the_object() {
    let t = start("api-errors");
    let k = t.client().unwrap();
    mirrored(&k);

    let e = k.delete_bdev("nope").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert_eq!(e.to_string(), "bdev nope: not found");

    let e = k.get_volume("vol9").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(e.to_string().contains("volume vol9"), "{e}");

    let e = k.create_bdev(&BdevRequest::malloc("m0", MIB)).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Exists), "{e}");
    assert!(e.to_string().contains("bdev m0"), "{e}");

    let e = k.delete_bdev("m0").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InUse), "{e}");
    assert!(e.to_string().contains("volume v0"), "{e}");
    let e = k.delete_bdev("m1").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::InUse), "{e}");
    assert!(e.to_string().contains("error bdev e1"), "{e}");

    let e = k.commit("v0").unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Invalid), "{e}");
    assert!(e.to_string().starts_with("volume v0: "), "{e}");

    let e = k
        .set_plex_state("v0", "v0-09", PlexState::Detached)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(e.to_string().contains("plex v0-09"), "{e}");

    let e = k
        .inject_error(
            "m0",
            Injection::Fail {
                on: FailOn::Reads,
                errno: 0,
                count: None,
            },
        )
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Invalid), "{e}");
    assert!(e.to_string().contains("bdev m0"), "{e}");

    let e = k
        .create_bdev(&BdevRequest::uring("u0", "/nonexistent/disk.img"))
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Io), "{e}");
    assert!(e.to_string().contains("bdev u0"), "{e}");

    let mut bad = k.get_volume("v0").unwrap().1;
    bad.plexes[0].columns[0][0].bdev = "ghost".into();
    let e = k.prepare("v0", &bad, Duration::from_secs(1)).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::NotFound), "{e}");
    assert!(e.to_string().contains("bdev ghost"), "{e}");

    // Malformed requests are refused as data, never a crash.
    let mut empty = k.get_volume("v0").unwrap().1;
    empty.name = "v1".into();
    empty.plexes.clear();
    let e = k.create_volume(&empty).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Invalid), "{e}");
    assert!(e.to_string().starts_with("volume v1: "), "{e}");
    let e = k.create_bdev(&BdevRequest::null("n0", 0)).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Invalid), "{e}");
    let mut odd = BdevRequest::malloc("m9", MIB);
    odd.block_size = Some(1000);
    let e = k.create_bdev(&odd).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Invalid), "{e}");
    assert!(e.to_string().contains("bdev m9"), "{e}");
    let e = k.read("v0", 0, 2 << 20).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Invalid), "{e}");
    let e = k
        .io("v0", plexd_target::bdev::IoKind::Read, 0, 512, &[], 9)
        .unwrap_err();
    assert!(e.to_string().contains("no reactor 9"), "{e}");
    // A misaligned I/O is an I/O result (EINVAL), not an API error.
    assert_eq!(k.read("v0", 100, 512).unwrap().status, libc::EINVAL);

    // The target is still serving and unchanged.
    assert_eq!(k.list_volumes().unwrap()[0].state, "ENABLED");
}

#[test]
fn a_failed_plex_write_raises_events_and_detaches_the_plex() {
    let t = start("api-events");
    let k = t.client().unwrap();
    mirrored(&k);
    let events = k.subscribe().unwrap();

    k.inject_error(
        "e1",
        Injection::Fail {
            on: FailOn::Writes,
            errno: 0,
            count: None,
        },
    )
    .unwrap();
    let data = pattern(9, 4096);
    // Standalone policy: the failing plex is detached, the write succeeds on the other.
    assert_eq!(k.write("v0", 0, &data).unwrap(), 0);

    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 2 && Instant::now() < deadline {
        if let Some(ev) = events.recv_timeout(Duration::from_millis(200)) {
            seen.push(ev);
        }
    }
    assert_eq!(
        seen,
        [
            Event::PlexIoError {
                volume: "v0".into(),
                plex: "v0-02".into(),
                errno: libc::EIO,
                failed: None,
            },
            Event::PlexState {
                volume: "v0".into(),
                plex: "v0-02".into(),
                state: "STALE".into(),
            },
        ]
    );
    let (v, _) = k.get_volume("v0").unwrap();
    assert_eq!(v.plexes[1].state, PlexState::Stale);
    assert_eq!(v.held, 0);
    assert_eq!(k.read("v0", 0, 4096).unwrap().data, data);

    // The last ACTIVE plex is never detached.
    let e = k
        .set_plex_state("v0", "v0-01", PlexState::Detached)
        .unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Invalid), "{e}");

    // An operator re-attaches the plex: another event.
    k.inject_error("e1", Injection::Clear).unwrap();
    k.set_plex_state("v0", "v0-02", PlexState::Active).unwrap();
    let ev = events.recv_timeout(Duration::from_secs(10));
    assert_eq!(
        ev,
        Some(Event::PlexState {
            volume: "v0".into(),
            plex: "v0-02".into(),
            state: "ACTIVE".into(),
        })
    );
}

#[test]
fn a_draining_prepare_does_not_stall_other_connections() {
    let t = start("api-drain");
    let k = t.client().unwrap();
    mirrored(&k);
    k.inject_error("e1", Injection::LatencyUs(2_000_000))
        .unwrap();

    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let w = t.client().unwrap();
            w.write("v0", 0, &pattern(1, 4096)).unwrap()
        });
        // Wait (bounded) until the slow write is in flight.
        let deadline = Instant::now() + Duration::from_secs(10);
        while k.get_volume("v0").unwrap().0.inflight == 0 {
            assert!(Instant::now() < deadline, "the write never went in flight");
            std::thread::sleep(Duration::from_millis(5));
        }
        // A drain that cannot finish in time fails with a typed timeout and resumes.
        let e = k.quiesce("v0", Duration::from_millis(50)).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::Timeout), "{e}");
        assert!(e.to_string().contains("reactor"), "{e}");

        let quiescer = s.spawn(|| {
            let q = t.client().unwrap();
            q.quiesce("v0", Duration::from_secs(10))
        });
        // While that drain waits for the slow write, other calls are answered.
        let other = t.client().unwrap();
        let started = Instant::now();
        let mut answered_while_draining = 0;
        while !quiescer.is_finished() && started.elapsed() < Duration::from_millis(800) {
            let t0 = Instant::now();
            other.list_bdevs().unwrap();
            assert!(
                t0.elapsed() < Duration::from_millis(1000),
                "listBdevs stalled"
            );
            if !quiescer.is_finished() {
                answered_while_draining += 1;
            }
        }
        assert!(
            answered_while_draining > 0,
            "the quiesce did not wait for the write"
        );
        assert_eq!(writer.join().unwrap(), 0);
        quiescer.join().unwrap().unwrap();
    });
    k.resume("v0").unwrap();
    k.inject_error("e1", Injection::Clear).unwrap();
    assert_eq!(k.write("v0", 0, &pattern(2, 4096)).unwrap(), 0);
}

#[test]
fn socket_is_exclusive_stale_files_are_replaced_and_sigterm_stops_cleanly() {
    let mut t = start("api-socket");
    let sock = t.socket().to_path_buf();
    let sock_s = sock.display().to_string();

    // A second target on the same live socket is refused, naming the socket.
    let mut second = TargetProcess::spawn(
        exe(),
        "api-socket2",
        &[
            "--socket".into(),
            sock_s.clone(),
            "--cores".into(),
            "0".into(),
        ],
        sock.clone(),
    )
    .unwrap();
    let st = second.wait_exit(Duration::from_secs(30)).unwrap();
    assert_eq!(st.code(), Some(1), "{}", second.stderr());
    let err = second.stderr();
    assert!(
        err.contains(&format!("socket {sock_s}")) && err.contains("live target"),
        "{err}"
    );
    drop(second);

    // SIGTERM: exit 0, socket removed.
    let st = t
        .signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30))
        .unwrap();
    assert_eq!(st.code(), Some(0), "{}", t.stderr());
    assert!(!sock.exists());
    assert!(t.stdout().contains("serving on"), "{}", t.stdout());

    // Nobody serves now: a bounded connect gives up with a connect error.
    let e = KernelClient::connect_timeout(&sock, Duration::from_millis(100))
        .err()
        .unwrap();
    assert!(
        matches!(e, plexd_target::api::ClientError::Connect { .. }),
        "{e}"
    );

    // A stale socket file (nobody listening) is replaced.
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists());
    let mut third = TargetProcess::spawn(
        exe(),
        "api-socket3",
        &["--socket".into(), sock_s, "--cores".into(), "0".into()],
        sock.clone(),
    )
    .unwrap();
    let k = KernelClient::connect_timeout(&sock, Duration::from_secs(30)).unwrap();
    assert_eq!(k.info().unwrap().reactors, 1);
    drop(k);
    let st = third
        .signal_and_wait(nix::sys::signal::Signal::SIGINT, Duration::from_secs(30))
        .unwrap();
    assert_eq!(st.code(), Some(0), "{}", third.stderr());
}

#[test]
fn bad_flags_exit_2_and_start_errors_exit_1() {
    let out = std::process::Command::new(exe())
        .arg("--bogus")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = std::process::Command::new(exe())
        .args(["--socket", "/tmp/plexd-never.sock", "--cores", "9999"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("core 9999"), "{err}");
    assert_eq!(
        err.lines()
            .filter(|l| l.starts_with("plexd-target:"))
            .count(),
        1,
        "{err}"
    );
}

#[test]
fn renew_lease_and_lease_status_over_the_kernel_interface() {
    use plexd_target::lease::{LeaseState, FENCED_ERRNO};
    let t = start("api-lease");
    let k = t.client().unwrap();
    k.create_bdev(&BdevRequest::malloc("m0", 8 * MIB)).unwrap();
    k.create_bdev(&BdevRequest::malloc("m1", 8 * MIB)).unwrap();
    let shared = VolumeSpec {
        log: None,
        name: "sv".into(),
        size_bytes: 4 * MIB,
        plexes: vec![concat("sv-01", vec![sd("m0", 0, 4 * MIB)])],
        read_policy: ReadPolicy::LeastBusy,
        shared: true,
        local_detach: false,
    };
    k.create_volume(&shared).unwrap();
    k.create_volume(&VolumeSpec {
        name: "pv".into(),
        plexes: vec![concat("pv-01", vec![sd("m1", 0, 4 * MIB)])],
        shared: false,
        local_detach: false,
        ..shared.clone()
    })
    .unwrap();
    assert!(
        k.get_volume("sv").unwrap().1.shared,
        "the flag crosses the socket"
    );
    let events = k.subscribe().unwrap();
    let data = pattern(3, 4096);

    // Never granted.
    let st = k.lease_status().unwrap();
    assert_eq!(
        (st.state, st.remaining_ms, st.expiries),
        (LeaseState::None, 0, 0)
    );
    assert_eq!(k.write("sv", 0, &data).unwrap(), FENCED_ERRNO);
    assert_eq!(
        k.write("pv", 0, &data).unwrap(),
        0,
        "private volumes need no lease"
    );

    // Granted.
    assert!(!k.renew_lease(60_000).unwrap());
    let st = k.lease_status().unwrap();
    assert_eq!(st.state, LeaseState::Valid);
    assert!(st.remaining_ms > 0 && st.remaining_ms <= 60_000, "{st:?}");
    assert_eq!(k.write("sv", 0, &data).unwrap(), 0);

    // A short lease runs out: one event naming the shared volume, I/O fails.
    let before = Instant::now();
    assert!(!k.renew_lease(200).unwrap());
    let mut expired = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while expired.is_none() && Instant::now() < deadline {
        if let Some(Event::LeaseExpired { volumes }) =
            events.recv_timeout(Duration::from_millis(200))
        {
            expired = Some(volumes);
        }
    }
    assert_eq!(expired, Some(vec!["sv".to_string()]));
    assert!(before.elapsed() >= Duration::from_millis(200), "not early");
    let st = k.lease_status().unwrap();
    assert_eq!(
        (st.state, st.remaining_ms, st.expiries),
        (LeaseState::Expired, 0, 1)
    );
    assert_eq!(k.read("sv", 0, 4096).unwrap().status, FENCED_ERRNO);
    assert_eq!(k.read("pv", 0, 4096).unwrap().data, data);

    // Renewed after expiry: wasExpired, served again.
    assert!(k.renew_lease(60_000).unwrap());
    assert_eq!(k.read("sv", 0, 4096).unwrap().data, data);
    // Too long a lease is a typed error.
    let e = k.renew_lease(u32::MAX).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Invalid), "{e}");
    assert_eq!(k.lease_status().unwrap().state, LeaseState::Valid);

    // The deadline form (CLOCK_BOOTTIME, ns): a deadline ahead grants, one past revokes.
    let boot = plexd_target::lease::boottime_ns().expect("CLOCK_BOOTTIME");
    assert!(!k.renew_lease_until(boot + 60_000_000_000).unwrap());
    let st = k.lease_status().unwrap();
    assert!(st.remaining_ms > 0 && st.remaining_ms <= 60_000, "{st:?}");
    assert!(!k.renew_lease_until(boot).unwrap());
    assert_eq!(k.lease_status().unwrap().state, LeaseState::Expired);
    assert_eq!(k.write("sv", 0, &data).unwrap(), FENCED_ERRNO);
    let e = k.renew_lease_until(u64::MAX).unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::Invalid), "{e}");
}

/// A client without a connection thread (`KernelClient::connect_inline`, the
/// coordinator driver's): a whole transaction, 1 MiB writes and reads (larger
/// than the socket buffer, so the client waits for the socket to be writable),
/// calls from two threads at once (taken in turn), no subscription, and a call
/// after the target died fails at once naming the lost connection, not at its
/// timeout.
#[test]
fn an_inline_client_drives_a_transaction_and_fails_fast_when_the_target_dies() {
    let mut t = start("api-inline");
    let mut k = KernelClient::connect_inline(t.socket()).unwrap();
    let mut spec = mirrored(&k);
    let big = pattern(9, plexd_target::api::MAX_IO_BYTES as usize);
    assert_eq!(k.write("v0", 0, &big).unwrap(), 0);
    assert_eq!(
        k.read("v0", 0, big.len() as u32).unwrap().data,
        big,
        "a 1 MiB read back through the inline client"
    );
    spec.size_bytes = 6 * MIB;
    spec.plexes[0].columns[0].push(sd("m0", 4 * MIB, 2 * MIB));
    spec.plexes[1].columns[0].push(sd("e1", 4 * MIB, 2 * MIB));
    k.prepare("v0", &spec, Duration::from_secs(5)).unwrap();
    k.commit("v0").unwrap();
    assert_eq!(k.get_volume("v0").unwrap().0.size_bytes, 6 * MIB);

    std::thread::scope(|s| {
        let calls: Vec<_> = (0..2)
            .map(|_| s.spawn(|| (0..50).try_for_each(|_| k.info().map(|_| ()))))
            .collect();
        for c in calls {
            c.join().unwrap().expect("calls from two threads");
        }
    });
    let e = k.subscribe().err().expect("an inline client subscribed");
    assert!(e.to_string().contains("inline client"), "{e}");

    t.signal_and_wait(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(10))
        .unwrap();
    // A timeout would be `ClientError::Timeout`: the lost connection is seen first.
    k.set_call_timeout(Duration::from_secs(20));
    let e = k.info().unwrap_err();
    assert!(
        matches!(e, plexd_target::api::ClientError::Rpc { .. }),
        "a call to a dead target: {e:?}"
    );
}
