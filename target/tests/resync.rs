//! Detach and re-attach a mirror plex under verified load, the way the coordinator
//! resyncs it: the plex becomes SYNCING, then every chunk is copied with
//! [`Target::copy_range`] under a short quiesce (the fence), then the plex becomes
//! ACTIVE. It ends byte-identical to the plex that stayed ACTIVE; no host I/O fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use plexd_target::bdev::malloc::MallocBdev;
use plexd_target::diag::{run_ios, IoReq};
use plexd_target::perf::{start_job, JobConfig, Workload};
use plexd_target::reactor::ReactorConfig;
use plexd_target::volume::{
    PlexKind, PlexSpec, PlexState, ReadPolicy, SubdiskSpec, VolumeSpec, MAX_COPY_BYTES,
};
use plexd_target::{Target, TargetConfig};

const MIB: u64 = 1 << 20;

fn wait_until(what: &str, secs: u64, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn read_all(t: &Arc<Target>, bdev: &str, len: u64) -> Vec<u8> {
    let b = t.bdev(bdev).unwrap();
    let mut out = Vec::new();
    for off in (0..len).step_by(MIB as usize) {
        let mut o = run_ios(
            &t.reactors().handles()[0],
            &b,
            vec![IoReq::read(off, MIB)],
            Duration::from_secs(30),
        )
        .unwrap();
        assert!(o[0].status.is_ok());
        out.extend(o.remove(0).data);
    }
    out
}

#[test]
fn detach_then_attach_under_load_resyncs_the_plex_without_failing_io() {
    let _ = env_logger::builder().is_test(true).try_init();
    let t: Arc<Target> = Target::start(&TargetConfig {
        reactors: ReactorConfig {
            cores: vec![0, 1],
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    for d in ["d0", "d1"] {
        t.add_bdev(MallocBdev::new(d, 16 * MIB, 512).unwrap())
            .unwrap();
    }
    let plex = |name: &str, bdev: &str| PlexSpec {
        name: name.into(),
        kind: PlexKind::Concat,
        columns: vec![vec![SubdiskSpec {
            bdev: bdev.into(),
            offset_bytes: 0,
            len_bytes: 16 * MIB,
        }]],
        state: PlexState::Active,
    };
    t.create_volume(&VolumeSpec {
        log: None,
        name: "v".into(),
        size_bytes: 16 * MIB,
        plexes: vec![plex("v-01", "d0"), plex("v-02", "d1")],
        read_policy: ReadPolicy::Round,
        shared: false,
        local_detach: false,
    })
    .unwrap();
    let job = start_job(
        &t,
        &JobConfig {
            bdev: "v".into(),
            workload: Workload::Verify,
            block_bytes: 4096,
            qd: 8,
            reactors: vec![],
            seed: 5,
        },
    )
    .unwrap();
    let writes = || t.volume_info("v").unwrap().stats.write_ops;
    wait_until("load", 20, || writes() > 500);
    t.set_plex_state("v", "v-02", PlexState::Detached).unwrap();
    let w = writes();
    wait_until("writes while detached", 20, || writes() > w + 2000);
    t.set_plex_state("v", "v-02", PlexState::Syncing).unwrap();
    let mut off = 0;
    while off < 16 * MIB {
        let len = MAX_COPY_BYTES.min(16 * MIB - off);
        t.quiesce("v", Duration::from_secs(10)).unwrap();
        let copied = t.copy_range("v", "v-01", "v-02", off, len);
        t.abort("v").unwrap();
        copied.unwrap();
        off += len;
    }
    t.set_plex_state("v", "v-02", PlexState::Active).unwrap();
    let w = writes();
    wait_until("writes after the resync", 20, || writes() > w + 1000);
    let res = job.stop().unwrap();
    assert_eq!(res.failed_ios, 0);
    assert_eq!(res.verify_errors, 0, "{:?}", res.first_mismatch);
    let info = t.volume_info("v").unwrap();
    assert!(info.plexes.iter().all(|p| p.state == PlexState::Active));
    assert!(
        read_all(&t, "d0", 16 * MIB) == read_all(&t, "d1", 16 * MIB),
        "the plexes differ after the resync"
    );
    // The copy refuses to run outside a quiesce.
    assert!(t
        .copy_range("v", "v-01", "v-02", 0, MIB)
        .unwrap_err()
        .to_string()
        .contains("not quiesced"));
}
