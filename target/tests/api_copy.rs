//! `copyRange` over the kernel interface, against a real `plexd-target` process: the
//! data plane copies a range from an ACTIVE plex to a SYNCING one through the
//! volume's own mapping (here a concat plex on a malloc bdev to a two-column stripe on
//! io_uring files), and refuses what the caller's contract rules out.

use std::path::Path;
use std::time::{Duration, Instant};

use plexd_target::api::process::TargetProcess;
use plexd_target::api::{BdevRequest, ClientError, ErrorCode, KernelClient};
use plexd_target::testutil::{pattern, TempPath};
use plexd_target::volume::{
    PlexKind, PlexSpec, PlexState, ReadPolicy, SubdiskSpec, VolumeSpec, MAX_COPY_BYTES,
};

const MIB: u64 = 1 << 20;
/// The volume of the copy tests.
const VOL_BYTES: u64 = 4 * MIB;
/// The stripe unit of plex B.
const SU: u64 = 64 << 10;
/// Where plex B's column 0 starts on its bdev (column 1 starts at 0).
const COL0_BASE: u64 = MIB;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_plexd-target"))
}

fn sd(bdev: &str, offset_bytes: u64, len_bytes: u64) -> SubdiskSpec {
    SubdiskSpec {
        bdev: bdev.into(),
        offset_bytes,
        len_bytes,
    }
}

/// Volume v: plex v-a (concat on malloc m0) and plex v-b (stripe of two columns on
/// uring files u1 at COL0_BASE and u2 at 0), v-b SYNCING.
fn setup(k: &KernelClient, u1: &TempPath, u2: &TempPath, vol_bytes: u64) {
    k.create_bdev(&BdevRequest::malloc("m0", vol_bytes))
        .unwrap();
    k.create_bdev(&BdevRequest::uring("u1", &u1.0)).unwrap();
    k.create_bdev(&BdevRequest::uring("u2", &u2.0)).unwrap();
    k.create_volume(&VolumeSpec {
        log: None,
        name: "v".into(),
        size_bytes: vol_bytes,
        plexes: vec![
            PlexSpec {
                name: "v-a".into(),
                kind: PlexKind::Concat,
                columns: vec![vec![sd("m0", 0, vol_bytes)]],
                state: PlexState::Active,
            },
            PlexSpec {
                name: "v-b".into(),
                kind: PlexKind::Stripe {
                    stripe_unit_bytes: SU,
                },
                columns: vec![
                    vec![sd("u1", COL0_BASE, vol_bytes / 2)],
                    vec![sd("u2", 0, vol_bytes / 2)],
                ],
                state: PlexState::Active,
            },
        ],
        read_policy: ReadPolicy::LeastBusy,
        shared: false,
        local_detach: false,
    })
    .unwrap();
    k.set_plex_state("v", "v-b", PlexState::Syncing).unwrap();
}

/// Reads `len` bytes of `bdev` at `off` (diagnostic I/O, 1 MiB at a time).
fn read(k: &KernelClient, bdev: &str, off: u64, len: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len as usize);
    let mut at = off;
    while at < off + len {
        let n = MIB.min(off + len - at);
        let r = k.read(bdev, at, n as u32).unwrap();
        assert_eq!(r.status, 0, "read {bdev}@{at}");
        out.extend(r.data);
        at += n;
    }
    out
}

/// Plex v-b's view of the volume, assembled from its subdisks with the stripe
/// mapping written out here (independently of the target's).
fn plex_b(k: &KernelClient, vol_bytes: u64) -> Vec<u8> {
    let cols = [
        read(k, "u1", COL0_BASE, vol_bytes / 2),
        read(k, "u2", 0, vol_bytes / 2),
    ];
    let mut out = vec![0u8; vol_bytes as usize];
    for unit in 0..vol_bytes / SU {
        let col = &cols[(unit % 2) as usize];
        let row = (unit / 2) * SU;
        out[(unit * SU) as usize..((unit + 1) * SU) as usize]
            .copy_from_slice(&col[row as usize..(row + SU) as usize]);
    }
    out
}

fn code(e: &ClientError) -> Option<ErrorCode> {
    e.code()
}

#[test]
fn copy_range_copies_plex_a_onto_the_syncing_stripe_and_nothing_else() {
    let _ = env_logger::builder().is_test(true).try_init();
    let t = TargetProcess::start(exe(), "copy-data", &["--cores", "0,1"]).unwrap();
    let k = t.client().unwrap();
    let u1 = TempPath::file("copy-u1", COL0_BASE + VOL_BYTES / 2).unwrap();
    let u2 = TempPath::file("copy-u2", VOL_BYTES / 2).unwrap();
    setup(&k, &u1, &u2, VOL_BYTES);

    // The data is on plex A only (written to its bdev directly).
    let data = pattern(11, VOL_BYTES as usize);
    for off in (0..VOL_BYTES).step_by(MIB as usize) {
        let chunk = &data[off as usize..(off + MIB) as usize];
        assert_eq!(k.write("m0", off, chunk).unwrap(), 0);
    }
    assert!(plex_b(&k, VOL_BYTES).iter().all(|&b| b == 0));

    k.quiesce("v", Duration::from_secs(10)).unwrap();
    // One chunk first: exactly that range of plex B changes.
    k.copy_range("v", "v-a", "v-b", MIB, MIB as u32).unwrap();
    let b = plex_b(&k, VOL_BYTES);
    assert!(
        b[MIB as usize..2 * MIB as usize] == data[MIB as usize..2 * MIB as usize],
        "the copied range differs"
    );
    assert!(
        b[..MIB as usize].iter().all(|&x| x == 0),
        "copied before the range"
    );
    assert!(
        b[2 * MIB as usize..].iter().all(|&x| x == 0),
        "copied past the range"
    );
    // A range that is not a whole stripe row, then the rest.
    k.copy_range("v", "v-a", "v-b", 2 * MIB, (SU + 4096) as u32)
        .unwrap();
    k.copy_range("v", "v-a", "v-b", 0, MIB as u32).unwrap();
    let mut at = 2 * MIB + SU + 4096;
    while at < VOL_BYTES {
        let n = MAX_COPY_BYTES.min(VOL_BYTES - at);
        k.copy_range("v", "v-a", "v-b", at, n as u32).unwrap();
        at += n;
    }
    k.resume("v").unwrap();
    assert!(plex_b(&k, VOL_BYTES) == data, "plex B differs from plex A");

    // Plex B, made ACTIVE, serves the volume's reads alone and has the data.
    k.set_plex_state("v", "v-b", PlexState::Active).unwrap();
    k.set_plex_state("v", "v-a", PlexState::Detached).unwrap();
    assert!(read(&k, "v", 0, VOL_BYTES) == data);
}

#[test]
fn copy_range_refuses_without_quiesce_wrong_states_and_bad_ranges() {
    let _ = env_logger::builder().is_test(true).try_init();
    let t = TargetProcess::start(exe(), "copy-refuse", &["--cores", "0,1"]).unwrap();
    let k = t.client().unwrap();
    let u1 = TempPath::file("copy-u1", COL0_BASE + VOL_BYTES / 2).unwrap();
    let u2 = TempPath::file("copy-u2", VOL_BYTES / 2).unwrap();
    setup(&k, &u1, &u2, VOL_BYTES);
    let refused = |r: Result<(), ClientError>, want: ErrorCode, words: &[&str]| {
        let e = r.unwrap_err();
        assert_eq!(code(&e), Some(want), "{e}");
        let text = e.to_string();
        for w in words {
            assert!(text.contains(w), "{text:?} does not name {w:?}");
        }
    };

    // Not quiesced on this data plane.
    refused(
        k.copy_range("v", "v-a", "v-b", 0, MIB as u32),
        ErrorCode::Invalid,
        &["volume v", "v-a", "v-b", "not quiesced"],
    );
    k.quiesce("v", Duration::from_secs(10)).unwrap();
    // The target plex must be SYNCING, the source ACTIVE.
    refused(
        k.copy_range("v", "v-b", "v-a", 0, MIB as u32),
        ErrorCode::Invalid,
        &["plex v-b (volume v)", "SYNCING", "must be ACTIVE"],
    );
    refused(
        k.copy_range("v", "v-a", "v-a", 0, MIB as u32),
        ErrorCode::Invalid,
        &["plex v-a (volume v)", "is ACTIVE", "must be SYNCING"],
    );
    refused(
        k.copy_range("v", "v-a", "v-z", 0, MIB as u32),
        ErrorCode::NotFound,
        &["plex v-z (volume v)"],
    );
    refused(
        k.copy_range("w", "v-a", "v-b", 0, MIB as u32),
        ErrorCode::NotFound,
        &["volume w"],
    );
    // Out of range, too long, empty, misaligned.
    refused(
        k.copy_range("v", "v-a", "v-b", VOL_BYTES - MIB / 2, MIB as u32),
        ErrorCode::Invalid,
        &["volume v", "beyond the volume"],
    );
    refused(
        k.copy_range("v", "v-a", "v-b", u64::MAX - 511, 512),
        ErrorCode::Invalid,
        &["volume v", "beyond the volume"],
    );
    refused(
        k.copy_range("v", "v-a", "v-b", 0, (MAX_COPY_BYTES + 512) as u32),
        ErrorCode::Invalid,
        &["volume v", "length"],
    );
    refused(
        k.copy_range("v", "v-a", "v-b", 0, 0),
        ErrorCode::Invalid,
        &["length"],
    );
    refused(
        k.copy_range("v", "v-a", "v-b", 100, 512),
        ErrorCode::Invalid,
        &["aligned"],
    );
    // After the resume it is refused again; a plex that left SYNCING is refused.
    k.resume("v").unwrap();
    refused(
        k.copy_range("v", "v-a", "v-b", 0, MIB as u32),
        ErrorCode::Invalid,
        &["not quiesced"],
    );
    k.set_plex_state("v", "v-b", PlexState::Stale).unwrap();
    k.quiesce("v", Duration::from_secs(10)).unwrap();
    refused(
        k.copy_range("v", "v-a", "v-b", 0, MIB as u32),
        ErrorCode::Invalid,
        &["plex v-b (volume v)", "STALE"],
    );
    k.resume("v").unwrap();
    // Nothing reached plex B.
    assert!(plex_b(&k, VOL_BYTES).iter().all(|&b| b == 0));
}

/// Resync throughput of a 256 MiB mirror (uring files), the old way (each 1 MiB
/// chunk read into the client and written back over the socket, the coordinator's
/// former `copy_chunk`) against `copyRange`, each chunk under quiesce/resume as
/// the fence does. Prints MiB/s; asserts nothing about speed.
/// `cargo test -p plexd-target --test api_copy -- --ignored --nocapture`
#[test]
#[ignore]
fn bench_resync_copy_socket_vs_copy_range() {
    const BENCH_BYTES: u64 = 256 * MIB;
    let t = TargetProcess::start(exe(), "copy-bench", &["--cores", "0,1"]).unwrap();
    let k = t.client().unwrap();
    let a = TempPath::file("copy-bench-a", BENCH_BYTES).unwrap();
    let b = TempPath::file("copy-bench-b", BENCH_BYTES).unwrap();
    k.create_bdev(&BdevRequest::uring("ua", &a.0)).unwrap();
    k.create_bdev(&BdevRequest::uring("ub", &b.0)).unwrap();
    let plex = |name: &str, bdev: &str| PlexSpec {
        name: name.into(),
        kind: PlexKind::Concat,
        columns: vec![vec![sd(bdev, 0, BENCH_BYTES)]],
        state: PlexState::Active,
    };
    k.create_volume(&VolumeSpec {
        log: None,
        name: "v".into(),
        size_bytes: BENCH_BYTES,
        plexes: vec![plex("v-a", "ua"), plex("v-b", "ub")],
        read_policy: ReadPolicy::LeastBusy,
        shared: false,
        local_detach: false,
    })
    .unwrap();
    let chunk = pattern(3, MIB as usize);
    for off in (0..BENCH_BYTES).step_by(MIB as usize) {
        assert_eq!(k.write("ua", off, &chunk).unwrap(), 0);
    }
    k.set_plex_state("v", "v-b", PlexState::Syncing).unwrap();
    let fence = Duration::from_secs(10);
    let run = |what: &str, copy: &dyn Fn(u64)| {
        let started = Instant::now();
        for off in (0..BENCH_BYTES).step_by(MIB as usize) {
            k.quiesce("v", fence).unwrap();
            copy(off);
            k.resume("v").unwrap();
        }
        let s = started.elapsed().as_secs_f64();
        println!(
            "{what}: {} MiB in {s:.2} s = {:.0} MiB/s",
            BENCH_BYTES / MIB,
            (BENCH_BYTES / MIB) as f64 / s
        );
    };
    run("socket read+write (before)", &|off| {
        let r = k.read("ua", off, MIB as u32).unwrap();
        assert_eq!(r.status, 0);
        assert_eq!(k.write("ub", off, &r.data).unwrap(), 0);
    });
    run("copyRange (after)", &|off| {
        k.copy_range("v", "v-a", "v-b", off, MIB as u32).unwrap();
    });
}
