//! Quiesce under concurrent load on every reactor: thousands of prepare/commit
//! cycles with layout changes, zero failed or lost I/Os, every read verified.

use std::sync::Arc;
use std::time::{Duration, Instant};

use plexd_target::bdev::malloc::MallocBdev;
use plexd_target::perf::{start_job, JobConfig, Workload};
use plexd_target::reactor::ReactorConfig;
use plexd_target::volume::{PlexKind, PlexSpec, PlexState, ReadPolicy, SubdiskSpec, VolumeSpec};
use plexd_target::{Target, TargetConfig};

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

#[test]
fn thousands_of_layout_changes_under_verified_load_lose_nothing() {
    let _ = env_logger::builder().is_test(true).try_init();
    let t: Arc<Target> = Target::start(&TargetConfig {
        reactors: ReactorConfig {
            cores: vec![0, 1],
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
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
    let _ = env_logger::builder().is_test(true).try_init();
    let t: Arc<Target> = Target::start(&TargetConfig {
        reactors: ReactorConfig {
            cores: vec![0, 1],
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    t.add_bdev(MallocBdev::new("d0", 8 * MIB, 512).unwrap())
        .unwrap();
    let spec = VolumeSpec {
        log: None,
        name: "v".into(),
        size_bytes: 8 * MIB,
        plexes: vec![concat(
            "v-01",
            vec![sd("d0", 0, 8 * MIB)],
            PlexState::Active,
        )],
        read_policy: ReadPolicy::LeastBusy,
        shared: false,
        local_detach: false,
    };
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
