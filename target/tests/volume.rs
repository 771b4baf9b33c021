//! Volume data path: mapping through real bdevs, mirror fan-out, read retry,
//! plex states, and the prepare/commit/abort control operations.

use std::sync::Arc;
use std::time::Duration;

use plexd_target::bdev::malloc::MallocBdev;
use plexd_target::diag::{run_ios, IoReq};
use plexd_target::reactor::ReactorConfig;
use plexd_target::volume::{PlexKind, PlexSpec, PlexState, ReadPolicy, SubdiskSpec, VolumeSpec};
use plexd_target::{Target, TargetConfig};

const MIB: u64 = 1 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Position-dependent data: every 8-byte word encodes its absolute offset and the seed.
fn pattern(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    (0..len.div_ceil(8))
        .flat_map(|i| {
            ((offset + 8 * i as u64) ^ seed.rotate_left(17))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .to_le_bytes()
        })
        .take(len)
        .collect()
}

fn io(t: &Arc<Target>, reactor: usize, bdev: &str, req: IoReq) -> Result<Vec<u8>, i32> {
    let b = t.bdev(bdev).unwrap();
    let mut out = run_ios(&t.reactors().handles()[reactor], &b, vec![req], IO_TIMEOUT).unwrap();
    let o = out.remove(0);
    match o.status {
        plexd_target::bdev::IoStatus::Success => Ok(o.data),
        plexd_target::bdev::IoStatus::Failed(e) => Err(e),
    }
}

fn write(t: &Arc<Target>, reactor: usize, bdev: &str, off: u64, data: &[u8]) -> Result<(), i32> {
    io(t, reactor, bdev, IoReq::write(off, data.to_vec())).map(|_| ())
}

fn read(t: &Arc<Target>, reactor: usize, bdev: &str, off: u64, len: u64) -> Result<Vec<u8>, i32> {
    io(t, reactor, bdev, IoReq::read(off, len))
}

fn target(reactors: usize) -> Arc<Target> {
    let _ = env_logger::builder().is_test(true).try_init();
    Target::start(&TargetConfig {
        reactors: ReactorConfig {
            cores: (0..reactors).collect(),
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap()
}

fn malloc(t: &Target, name: &str, size: u64) {
    t.add_bdev(MallocBdev::new(name, size, 512).unwrap())
        .unwrap();
}

fn sd(bdev: &str, off: u64, len: u64) -> SubdiskSpec {
    SubdiskSpec {
        bdev: bdev.into(),
        offset_bytes: off,
        len_bytes: len,
    }
}

fn plex(name: &str, kind: PlexKind, columns: Vec<Vec<SubdiskSpec>>) -> PlexSpec {
    PlexSpec {
        name: name.into(),
        kind,
        columns,
        state: PlexState::Active,
    }
}

/// Reads what a volume offset maps to, straight from the subdisks' bdevs.
fn read_plex_directly(t: &Arc<Target>, p: &PlexSpec, off: u64, len: u64) -> Vec<u8> {
    let lens: Vec<Vec<u64>> = p
        .columns
        .iter()
        .map(|c| c.iter().map(|s| s.len_bytes).collect())
        .collect();
    let map = plexd_target::volume::spec::PlexMap {
        kind: p.kind,
        columns: lens,
    };
    let mut out = vec![0u8; len as usize];
    map.map(off, len, |col, sdi, in_sd, in_req, l| {
        let s = &p.columns[col][sdi];
        let d = read(t, 0, &s.bdev, s.offset_bytes + in_sd, l).unwrap();
        out[in_req as usize..(in_req + l) as usize].copy_from_slice(&d);
    });
    out
}

#[test]
fn writes_land_where_the_layout_says_on_every_mirror() {
    let t = target(2);
    for d in ["d0", "d1", "d2", "d3", "d4"] {
        malloc(&t, d, 8 * MIB);
    }
    let concat = plex(
        "v-01",
        PlexKind::Concat,
        vec![vec![sd("d0", MIB, 3 * MIB), sd("d1", 0, 5 * MIB)]],
    );
    let stripe = plex(
        "v-02",
        PlexKind::Stripe {
            stripe_unit_bytes: 64 << 10,
        },
        vec![
            vec![sd("d2", 0, 4 * MIB)],
            vec![sd("d3", 512 << 10, 2 * MIB), sd("d4", 0, 2 * MIB)],
        ],
    );
    let spec = VolumeSpec {
        log: None,
        name: "v".into(),
        size_bytes: 8 * MIB,
        plexes: vec![concat.clone(), stripe.clone()],
        read_policy: ReadPolicy::Round,
        shared: false,
        local_detach: false,
    };
    t.create_volume(&spec).unwrap();
    // Boundary-spanning writes: across the concat's subdisks (3 MiB) and stripe units.
    let cases = [
        (0u64, 4096u64),
        (3 * MIB - 4096, 8192),
        (64 * 1024 - 512, 1024),
        (5 * MIB + 512, 200 * 1024),
        (8 * MIB - 1024 * 1024, 1024 * 1024),
    ];
    for (i, &(off, len)) in cases.iter().enumerate() {
        let data = pattern(i as u64 + 1, off, len as usize);
        write(&t, i % 2, "v", off, &data).unwrap();
        assert_eq!(
            read(&t, (i + 1) % 2, "v", off, len).unwrap(),
            data,
            "read back at {off}+{len}"
        );
        assert_eq!(
            read_plex_directly(&t, &concat, off, len),
            data,
            "concat plex at {off}+{len}"
        );
        assert_eq!(
            read_plex_directly(&t, &stripe, off, len),
            data,
            "stripe plex at {off}+{len}"
        );
    }
}

#[test]
fn out_of_range_and_unaligned_io_fail_cleanly() {
    let t = target(1);
    malloc(&t, "d0", 4 * MIB);
    t.create_volume(&VolumeSpec {
        log: None,
        name: "v".into(),
        size_bytes: 2 * MIB,
        plexes: vec![plex(
            "v-01",
            PlexKind::Concat,
            vec![vec![sd("d0", 0, 2 * MIB)]],
        )],
        read_policy: ReadPolicy::LeastBusy,
        shared: false,
        local_detach: false,
    })
    .unwrap();
    assert_eq!(read(&t, 0, "v", 2 * MIB, 4096), Err(libc::EINVAL));
    assert_eq!(read(&t, 0, "v", 100, 512), Err(libc::EINVAL));
    assert!(read(&t, 0, "v", 2 * MIB - 4096, 4096).is_ok());
}

#[test]
fn bad_layouts_are_refused_with_the_object_named() {
    let t = target(1);
    malloc(&t, "d0", 4 * MIB);
    let mk = |plexes| VolumeSpec {
        log: None,
        name: "bad".into(),
        size_bytes: 2 * MIB,
        plexes,
        read_policy: ReadPolicy::LeastBusy,
        shared: false,
        local_detach: false,
    };
    let e = t
        .create_volume(&mk(vec![plex(
            "p",
            PlexKind::Concat,
            vec![vec![sd("nope", 0, 2 * MIB)]],
        )]))
        .unwrap_err();
    assert_eq!(e.to_string(), "bdev nope: not found");
    let e = t
        .create_volume(&mk(vec![plex(
            "p",
            PlexKind::Concat,
            vec![vec![sd("d0", 3 * MIB, 2 * MIB)]],
        )]))
        .unwrap_err();
    assert!(
        e.to_string().starts_with("volume bad: plex p: subdisk d0@"),
        "{e}"
    );
    let e = t
        .create_volume(&mk(vec![plex(
            "p",
            PlexKind::Concat,
            vec![vec![sd("d0", 0, MIB)]],
        )]))
        .unwrap_err();
    assert!(e.to_string().contains("less than the volume size"), "{e}");
    let e = t.create_volume(&mk(vec![])).unwrap_err();
    assert!(e.to_string().contains("needs 1..32 plexes"), "{e}");
    // A bdev in use cannot be deleted.
    t.create_volume(&mk(vec![plex(
        "p",
        PlexKind::Concat,
        vec![vec![sd("d0", 0, 2 * MIB)]],
    )]))
    .unwrap();
    let e = t.delete_bdev("d0").unwrap_err();
    assert_eq!(e.to_string(), "bdev d0: in use by volume bad");
}

#[test]
fn layout_changes_add_mirror_grow_remove_plex() {
    let t = target(2);
    for d in ["d0", "d1", "d2"] {
        malloc(&t, d, 16 * MIB);
    }
    let p1 = plex("v-01", PlexKind::Concat, vec![vec![sd("d0", 0, 4 * MIB)]]);
    let mut spec = VolumeSpec {
        log: None,
        name: "v".into(),
        size_bytes: 4 * MIB,
        plexes: vec![p1],
        read_policy: ReadPolicy::LeastBusy,
        shared: false,
        local_detach: false,
    };
    t.create_volume(&spec).unwrap();
    let data = pattern(7, 0, 4 * MIB as usize);
    for off in (0..4 * MIB).step_by(MIB as usize) {
        write(&t, 0, "v", off, &data[off as usize..(off + MIB) as usize]).unwrap();
    }
    // Grow: concat another subdisk and raise the size.
    spec.plexes[0].columns[0].push(sd("d1", 0, 4 * MIB));
    spec.size_bytes = 8 * MIB;
    t.prepare("v", &spec, Duration::from_secs(5)).unwrap();
    assert_eq!(t.volume_info("v").unwrap().state, "QUIESCED");
    t.commit("v").unwrap();
    assert_eq!(t.bdev("v").unwrap().size_bytes(), 8 * MIB);
    write(&t, 1, "v", 6 * MIB, &pattern(8, 6 * MIB, 4096)).unwrap();
    assert_eq!(
        read(&t, 0, "v", 6 * MIB, 4096).unwrap(),
        pattern(8, 6 * MIB, 4096)
    );
    // Abort leaves the layout as it was.
    let mut bigger = spec.clone();
    bigger.size_bytes = 16 * MIB;
    assert!(t
        .prepare("v", &bigger, Duration::from_secs(5))
        .unwrap_err()
        .to_string()
        .contains("less than the volume size"));
    assert_eq!(
        t.volume_info("v").unwrap().state,
        "ENABLED",
        "a refused prepare leaves the gate open"
    );
    t.quiesce("v", Duration::from_secs(5)).unwrap();
    t.abort("v").unwrap();
    assert_eq!(t.volume_spec("v").unwrap(), spec);
    // Remove a plex after adding it (plex add is a layout change; the new plex is not
    // resynchronised here, so it starts STALE and only receives new writes).
    let mut two = spec.clone();
    let mut p2 = plex("v-02", PlexKind::Concat, vec![vec![sd("d2", 0, 8 * MIB)]]);
    p2.state = PlexState::Stale;
    two.plexes.push(p2);
    t.prepare("v", &two, Duration::from_secs(5)).unwrap();
    t.commit("v").unwrap();
    assert_eq!(t.volume_info("v").unwrap().plexes.len(), 2);
    t.prepare("v", &spec, Duration::from_secs(5)).unwrap();
    t.commit("v").unwrap();
    assert_eq!(read(&t, 1, "v", 0, MIB).unwrap(), data[..MIB as usize]);
}

#[test]
fn least_busy_reads_of_a_share_stay_on_one_plex() {
    let t = target(1);
    malloc(&t, "d0", 8 * MIB);
    malloc(&t, "d1", 8 * MIB);
    // Different data on the two plexes shows which one served a read: two reads in
    // each half of the volume, at its ends.
    let offs: Vec<u64> = vec![0, 4 * MIB - 4096, 4 * MIB, 8 * MIB - 4096];
    for &off in &offs {
        write(&t, 0, "d0", off, &pattern(1, off, 4096)).unwrap();
        write(&t, 0, "d1", off, &pattern(2, off, 4096)).unwrap();
    }
    t.create_volume(&VolumeSpec {
        log: None,
        name: "v".into(),
        size_bytes: 8 * MIB,
        plexes: vec![
            plex("v-01", PlexKind::Concat, vec![vec![sd("d0", 0, 8 * MIB)]]),
            plex("v-02", PlexKind::Concat, vec![vec![sd("d1", 0, 8 * MIB)]]),
        ],
        read_policy: ReadPolicy::LeastBusy,
        shared: false,
        local_detach: false,
    })
    .unwrap();
    // Idle plexes: each owns one contiguous half of the volume, and a half's
    // reads keep going to the same plex.
    for _ in 0..3 {
        for (i, &off) in offs.iter().enumerate() {
            let plex = i / 2;
            assert!(
                read(&t, 0, "v", off, 4096).unwrap() == pattern(plex as u64 + 1, off, 4096),
                "offset {off} not read from plex {plex}"
            );
        }
    }
    // Without v-01 every offset is read from v-02.
    t.set_plex_state("v", "v-01", PlexState::Detached).unwrap();
    for &off in &offs {
        assert!(
            read(&t, 0, "v", off, 4096).unwrap() == pattern(2, off, 4096),
            "offset {off} not read from v-02"
        );
    }
}

#[test]
fn the_last_active_plex_is_never_detached() {
    let t = target(1);
    malloc(&t, "d0", 4 * MIB);
    malloc(&t, "d1", 4 * MIB);
    t.create_volume(&VolumeSpec {
        log: None,
        name: "v".into(),
        size_bytes: 4 * MIB,
        plexes: vec![
            plex("v-01", PlexKind::Concat, vec![vec![sd("d0", 0, 4 * MIB)]]),
            plex("v-02", PlexKind::Concat, vec![vec![sd("d1", 0, 4 * MIB)]]),
        ],
        read_policy: ReadPolicy::Prefer("v-02".into()),
        shared: false,
        local_detach: false,
    })
    .unwrap();
    t.set_plex_state("v", "v-01", PlexState::Detached).unwrap();
    let e = t.set_plex_state("v", "v-02", PlexState::Stale).unwrap_err();
    assert_eq!(
        e.to_string(),
        "plex v-02 (volume v): it is the last ACTIVE plex of the volume; it is never detached"
    );
    // Writes now go to v-02 only.
    write(&t, 0, "v", 0, &pattern(3, 0, 4096)).unwrap();
    assert_eq!(read(&t, 0, "d1", 0, 4096).unwrap(), pattern(3, 0, 4096));
    assert_ne!(read(&t, 0, "d0", 0, 4096).unwrap(), pattern(3, 0, 4096));
    let info = t.volume_info("v").unwrap();
    assert_eq!(info.plexes[0].state, PlexState::Detached);
    assert_eq!(info.stats.write_ops, 1);
}

#[test]
fn a_channel_created_during_a_quiesce_inherits_the_closed_gate() {
    let t = target(2);
    malloc(&t, "d0", 4 * MIB);
    t.create_volume(&VolumeSpec {
        log: None,
        name: "v".into(),
        size_bytes: 4 * MIB,
        plexes: vec![plex(
            "v-01",
            PlexKind::Concat,
            vec![vec![sd("d0", 0, 4 * MIB)]],
        )],
        read_policy: ReadPolicy::LeastBusy,
        shared: false,
        local_detach: false,
    })
    .unwrap();
    // Only reactor 0 has used the volume so far.
    write(&t, 0, "v", 0, &pattern(1, 0, 4096)).unwrap();
    t.quiesce("v", Duration::from_secs(5)).unwrap();
    // Reactor 1's first I/O creates its channel now, in the middle of the quiesce.
    let data = pattern(2, 8192, 4096);
    let pending = plexd_target::diag::start_ios(
        &t.reactors().handles()[1],
        &t.bdev("v").unwrap(),
        vec![IoReq::write(8192, data.clone())],
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while t.volume_info("v").unwrap().parked != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the new channel's write was not parked"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(
        read(&t, 0, "d0", 8192, 4096).unwrap(),
        vec![0u8; 4096],
        "parked, not written"
    );
    t.abort("v").unwrap();
    let out = pending.wait(IO_TIMEOUT).unwrap();
    assert!(out[0].status.is_ok());
    assert_eq!(read(&t, 1, "v", 8192, 4096).unwrap(), data);
}
