//! Quiesce under concurrent load on every reactor: thousands of prepare/commit
//! cycles with layout changes, zero failed or lost I/Os, every read verified.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::two_reactor_target;
use plexd_target::bdev::malloc::MallocBdev;
use plexd_target::diag::{run_ios, IoReq};
use plexd_target::perf::{start_job, JobConfig, Workload};
use plexd_target::volume::{PlexKind, PlexSpec, PlexState, ReadPolicy, SubdiskSpec, VolumeSpec};
use plexd_target::Target;

const MIB: u64 = 1 << 20;

fn sd(bdev: &str, off: u64, len: u64) -> SubdiskSpec {
    SubdiskSpec {
        bdev: bdev.into(),
        offset_bytes: off,
        len_bytes: len,
    }
}

fn concat(name: &str, sds: Vec<SubdiskSpec>, state: PlexState) -> PlexSpec {
    PlexSpec {
        name: name.into(),
        kind: PlexKind::Concat,
        columns: vec![sds],
        state,
    }
}

/// Volume `name` of `len` bytes: one ACTIVE concat plex, the first `len` bytes of
/// `bdev`.
fn one_subdisk(name: &str, bdev: &str, len: u64) -> VolumeSpec {
    VolumeSpec {
        name: name.into(),
        size_bytes: len,
        plexes: vec![concat(
            &format!("{name}-01"),
            vec![sd(bdev, 0, len)],
            PlexState::Active,
        )],
        read_policy: ReadPolicy::LeastBusy,
        shared: false,
        log: None,
        local_detach: false,
    }
}

#[test]
fn thousands_of_layout_changes_under_verified_load_lose_nothing() {
    let t = two_reactor_target();
    for d in ["d0", "d1", "d2", "d3"] {
        t.add_bdev(MallocBdev::new(d, 32 * MIB, 512).unwrap())
            .unwrap();
    }
    let base = VolumeSpec {
        log: None,
        name: "v".into(),
        size_bytes: 16 * MIB,
        plexes: vec![
            concat(
                "v-01",
                vec![sd("d0", 0, 8 * MIB), sd("d1", 0, 8 * MIB)],
                PlexState::Active,
            ),
            PlexSpec {
                name: "v-02".into(),
                kind: PlexKind::Stripe {
                    stripe_unit_bytes: 64 << 10,
                },
                columns: vec![vec![sd("d2", 0, 8 * MIB)], vec![sd("d3", 0, 8 * MIB)]],
                state: PlexState::Active,
            },
        ],
        read_policy: ReadPolicy::LeastBusy,
        shared: false,
        local_detach: false,
    };
    t.create_volume(&base).unwrap();

    // The layouts cycled through: read policy changes, a third (stale) plex added and
    // removed, the volume grown by concatenating more space on every plex.
    let mut round = base.clone();
    round.read_policy = ReadPolicy::Round;
    let mut three = base.clone();
    three.plexes.push(concat(
        "v-03",
        vec![sd("d0", 16 * MIB, 16 * MIB)],
        PlexState::Stale,
    ));
    let mut prefer = base.clone();
    prefer.read_policy = ReadPolicy::Prefer("v-02".into());
    let layouts = [round, three, prefer, base.clone()];

    let job = start_job(
        &t,
        &JobConfig {
            bdev: "v".into(),
            workload: Workload::Verify,
            block_bytes: 4096,
            qd: 16,
            reactors: vec![],
            seed: 42,
        },
    )
    .unwrap();
    const CYCLES: usize = 2000;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut quiesce = Vec::with_capacity(CYCLES);
    for i in 0..CYCLES {
        assert!(Instant::now() < deadline, "cycle {i}: the run is stuck");
        let l = &layouts[i % layouts.len()];
        quiesce.push(t.prepare("v", l, Duration::from_secs(5)).unwrap());
        t.commit("v").unwrap();
        if i % 500 == 250 {
            // An abort in between: the staged layout is dropped, I/O resumes.
            t.prepare("v", &layouts[0], Duration::from_secs(5)).unwrap();
            t.abort("v").unwrap();
        }
    }
    // Grow once at the end, under load, then check the new space is usable.
    let mut grown = base.clone();
    grown.size_bytes = 24 * MIB;
    grown.plexes[0].columns[0].push(sd("d1", 8 * MIB, 8 * MIB));
    grown.plexes[1].columns[0].push(sd("d2", 8 * MIB, 4 * MIB));
    grown.plexes[1].columns[1].push(sd("d3", 8 * MIB, 4 * MIB));
    t.prepare("v", &grown, Duration::from_secs(5)).unwrap();
    t.commit("v").unwrap();
    let res = job.stop().unwrap();
    quiesce.sort();
    eprintln!(
        "{CYCLES} cycles: {} I/Os, quiesce p50 {:?} p99 {:?} max {:?}, max I/O latency {} us",
        res.ios,
        quiesce[CYCLES / 2],
        quiesce[CYCLES * 99 / 100],
        quiesce[CYCLES - 1],
        res.latency_ns.max() / 1000
    );
    assert_eq!(res.failed_ios, 0, "failed I/Os under quiesce");
    assert_eq!(res.verify_errors, 0, "{:?}", res.first_mismatch);
    assert!(
        res.ios > CYCLES as u64,
        "I/O kept flowing between quiesces ({} I/Os)",
        res.ios
    );
    let info = t.volume_info("v").unwrap();
    assert_eq!(info.size_bytes, 24 * MIB);
    assert_eq!((info.inflight, info.parked, info.held), (0, 0, 0));
    assert_eq!(info.stats.failed_ops, 0);
    // Every I/O the job counted went through the volume.
    assert_eq!(info.stats.read_ops + info.stats.write_ops, res.ios);
}

#[test]
fn a_prepare_that_cannot_drain_names_the_busy_reactor_and_changes_nothing() {
    let t = two_reactor_target();
    t.add_bdev(MallocBdev::new("d0", 8 * MIB, 512).unwrap())
        .unwrap();
    let spec = one_subdisk("v", "d0", 8 * MIB);
    t.create_volume(&spec).unwrap();
    let job = start_job(
        &t,
        &JobConfig {
            bdev: "v".into(),
            workload: Workload::RandRead,
            block_bytes: 4096,
            qd: 8,
            reactors: vec![1],
            seed: 1,
        },
    )
    .unwrap();
    // Reactor 1 is kept busy inside a message, so its in-flight reads cannot complete.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (in_tx, in_rx) = std::sync::mpsc::channel::<()>();
    t.reactors().handles()[1]
        .try_send(Box::new(move |_| {
            let _ = in_tx.send(());
            let _ = go_rx.recv_timeout(Duration::from_secs(20));
        }))
        .map_err(|(e, _)| e)
        .unwrap();
    in_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let err = t
        .prepare("v", &spec, Duration::from_millis(100))
        .unwrap_err();
    go_tx.send(()).unwrap();
    let msg = err.to_string();
    assert!(
        msg.starts_with("volume v: in-flight I/O did not drain within 100 ms on reactor 1"),
        "{msg}"
    );
    assert_eq!(t.volume_info("v").unwrap().state, "ENABLED");
    let res = job.stop().unwrap();
    assert_eq!(res.failed_ios, 0);
}

/// Holds a reactor inside a message until dropped (also when an assert fails).
struct StuckReactor(Option<std::sync::mpsc::Sender<()>>);

impl StuckReactor {
    fn new(t: &Target, reactor: usize) -> StuckReactor {
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (in_tx, in_rx) = std::sync::mpsc::channel::<()>();
        t.reactors().handles()[reactor]
            .try_send(Box::new(move |_| {
                let _ = in_tx.send(());
                let _ = go_rx.recv_timeout(Duration::from_secs(30));
            }))
            .map_err(|(e, _)| e)
            .unwrap();
        in_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        StuckReactor(Some(go_tx))
    }
}

impl Drop for StuckReactor {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

#[test]
fn a_commit_does_not_wait_for_a_slow_reactor_and_it_resumes_with_the_new_layout() {
    let t = two_reactor_target();
    t.add_bdev(MallocBdev::new("d0", 16 * MIB, 512).unwrap())
        .unwrap();
    let spec = one_subdisk("v", "d0", 4 * MIB);
    t.create_volume(&spec).unwrap();
    let mut grown = spec.clone();
    grown.size_bytes = 8 * MIB;
    grown.plexes[0].columns[0].push(sd("d0", 4 * MIB, 4 * MIB));
    let vol = t.bdev("v").unwrap();
    let h = t.reactors().handles();
    t.prepare("v", &grown, Duration::from_secs(5)).unwrap();
    // One write per reactor past the old end: parked now, valid only in the new layout.
    let data: Vec<Vec<u8>> = (0..2).map(|r| vec![0x5a ^ r as u8; 4096]).collect();
    let offset = |r: usize| 5 * MIB + r as u64 * MIB;
    let pending: Vec<_> = (0..2)
        .map(|r| {
            plexd_target::diag::start_ios(
                &h[r],
                &vol,
                vec![IoReq::write(offset(r), data[r].clone())],
            )
            .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.volume_info("v").unwrap().parked != 2 {
        assert!(Instant::now() < deadline, "the writes were not parked");
        std::thread::sleep(Duration::from_millis(2));
    }
    // Reactor 1 is busy inside a message (for up to 30 s) when the commit comes.
    let stuck = StuckReactor::new(&t, 1);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let t2 = Arc::clone(&t);
    let committer = std::thread::spawn(move || {
        let _ = done_tx.send(t2.commit("v"));
    });
    // The commit publishes the layout and returns without a round trip to each
    // reactor (5 s: far above its cost, far below the 30 s reactor 1 is held).
    let res = done_rx.recv_timeout(Duration::from_secs(5));
    assert!(
        matches!(res, Ok(Ok(()))),
        "the commit waited for the busy reactor: {res:?}"
    );
    // Reactor 0 swapped and resumed on its own, while reactor 1 is still held.
    let mut pending = pending.into_iter();
    let out0 = pending
        .next()
        .unwrap()
        .wait(Duration::from_secs(10))
        .unwrap();
    assert!(out0[0].status.is_ok(), "{:?}", out0[0].status);
    drop(stuck);
    // Reactor 1's parked write ran with the new layout once it got to it.
    let out1 = pending
        .next()
        .unwrap()
        .wait(Duration::from_secs(10))
        .unwrap();
    assert!(out1[0].status.is_ok(), "{:?}", out1[0].status);
    committer.join().unwrap();
    for (r, written) in data.iter().enumerate() {
        let back = run_ios(
            &h[0],
            &vol,
            vec![IoReq::read(offset(r), 4096)],
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(&back[0].data, written, "reactor {r}'s write");
    }
    let info = t.volume_info("v").unwrap();
    assert_eq!((info.state.as_str(), info.size_bytes), ("ENABLED", 8 * MIB));
    assert_eq!(
        (info.inflight, info.parked, info.stats.failed_ops),
        (0, 0, 0)
    );
}

/// A prepare tells only the reactors that have a channel of the volume: one
/// that has none (held busy inside a message here) is not waited for, and the
/// channel it opens during the quiesce starts closed for it, then resumes with
/// the committed layout.
#[test]
fn a_prepare_does_not_wait_for_a_reactor_without_a_channel_and_one_opened_meanwhile_resumes() {
    quiesce_beside_a_held_reactor(false);
}

/// The close message of an earlier prepare (aborted: the reactor was too busy to
/// drain in time) still queued behind a newer prepare's must not close the new
/// gate; the newer prepare drains, commits and resumes.
#[test]
fn a_stale_close_message_of_an_aborted_prepare_leaves_a_newer_gate_alone() {
    quiesce_beside_a_held_reactor(true);
}

/// Reactor 1 is held inside a message while a prepare stages. With `stale_first`
/// it has a channel of the volume already, and an earlier prepare timed out on it
/// (its close message stays queued ahead of the new one's); without, it opens its
/// first channel once released, during the quiesce. The last prepare must
/// complete, commit and resume on both reactors with its layout.
fn quiesce_beside_a_held_reactor(stale_first: bool) {
    let t = two_reactor_target();
    t.add_bdev(MallocBdev::new("d0", 16 * MIB, 512).unwrap())
        .unwrap();
    let spec = one_subdisk("v", "d0", 4 * MIB);
    t.create_volume(&spec).unwrap();
    let vol = t.bdev("v").unwrap();
    let h = t.reactors().handles();
    // One quiesce first, so the timeline has a commit to clear when the next starts.
    t.prepare("v", &spec, Duration::from_secs(5)).unwrap();
    t.commit("v").unwrap();
    if stale_first {
        let r = run_ios(
            &h[1],
            &vol,
            vec![IoReq::read(0, 4096)],
            Duration::from_secs(10),
        );
        assert!(r.unwrap()[0].status.is_ok(), "reactor 1's first read");
    }

    // Reactor 1 waits inside a message, then opens its channel of the volume.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (opened_tx, opened_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let vol1 = Arc::clone(&vol);
    h[1].try_send(Box::new(move |r| {
        let _ = go_rx.recv_timeout(Duration::from_secs(30));
        let _ = opened_tx.send(r.channel(&vol1).map(|_| ()));
    }))
    .map_err(|(e, _)| e)
    .unwrap();
    if stale_first {
        let err = t
            .prepare("v", &spec, Duration::from_millis(200))
            .unwrap_err();
        assert!(err.to_string().contains("reactor 1"), "{err}");
        // Marks the timeline's commit again (nothing is left to abort).
        t.abort("v").unwrap();
    }
    assert!(t.quiesce_timeline("v").unwrap().commit_returned.is_some());
    let mut grown = spec.clone();
    grown.size_bytes = 8 * MIB;
    grown.plexes[0].columns[0].push(sd("d0", 4 * MIB, 4 * MIB));
    let t2 = Arc::clone(&t);
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let preparer = std::thread::spawn(move || {
        let r = t2.prepare("v", &grown, Duration::from_secs(10));
        let _ = done_tx.send(());
        r
    });
    if stale_first {
        // The prepare staged (its trace restarted); its message comes after ours.
        let deadline = Instant::now() + Duration::from_secs(10);
        while t.quiesce_timeline("v").unwrap().commit_returned.is_some() {
            assert!(Instant::now() < deadline, "the prepare did not start");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            done_rx.try_recv().is_err(),
            "the prepare did not wait for reactor 1, which has a channel"
        );
    } else {
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the prepare waited for reactor 1, which has no channel of the volume");
    }
    go_tx.send(()).unwrap();
    opened_rx
        .recv_timeout(Duration::from_secs(10))
        .unwrap()
        .expect("reactor 1 opens its channel");
    let prepared = preparer.join().unwrap();
    assert!(prepared.is_ok(), "the prepare: {prepared:?}");
    t.commit("v").unwrap();
    // Both reactors serve I/O with the new layout (past the old end).
    for (r, h) in h.iter().enumerate() {
        let data = vec![0x3c ^ r as u8; 4096];
        let off = 5 * MIB + r as u64 * MIB;
        let w = run_ios(
            h,
            &vol,
            vec![IoReq::write(off, data.clone())],
            Duration::from_secs(10),
        );
        assert!(w.unwrap()[0].status.is_ok(), "reactor {r}'s write");
        let back = run_ios(
            h,
            &vol,
            vec![IoReq::read(off, 4096)],
            Duration::from_secs(10),
        );
        assert_eq!(back.unwrap()[0].data, data, "reactor {r}");
    }
    let info = t.volume_info("v").unwrap();
    assert_eq!((info.state.as_str(), info.size_bytes), ("ENABLED", 8 * MIB));
    assert_eq!((info.parked, info.stats.failed_ops), (0, 0));
}
