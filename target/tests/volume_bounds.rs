//! The volume channel's bounded queues, the `error` bdev's delay queue and the
//! standalone detach worker's bounded queue (issue 10): each is filled past its bound and the I/O beyond it fails with
//! `RETRY_ERRNO` (EAGAIN), counted in the volume's stats, with no hang and no panic;
//! everything within the bound completes normally once the cause goes away.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use plexd_target::bdev::error::{ErrorBdev, FailOn, MAX_DELAYED_IOS};
use plexd_target::bdev::malloc::MallocBdev;
use plexd_target::bdev::{Bdev, IoStatus, RETRY_ERRNO};
use plexd_target::diag::{run_ios, start_ios, IoOutcome, IoReq};
use plexd_target::reactor::{ReactorConfig, ReactorHandle};
use plexd_target::volume::{
    PlexKind, PlexSpec, PlexState, ReadPolicy, SubdiskSpec, VolumeSpec, DETACH_QUEUE_DEPTH,
    MAX_HELD_WRITES, MAX_PARKED_IOS, MAX_VOLUME_IOS,
};
use plexd_target::{Target, TargetConfig};

const MIB: u64 = 1 << 20;
const IO_TIMEOUT: Duration = Duration::from_secs(60);

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

fn plex(name: &str, bdev: &str, off: u64, len: u64) -> PlexSpec {
    PlexSpec {
        name: name.into(),
        kind: PlexKind::Concat,
        columns: vec![vec![SubdiskSpec {
            bdev: bdev.into(),
            offset_bytes: off,
            len_bytes: len,
        }]],
        state: PlexState::Active,
    }
}

fn volume(name: &str, size: u64, plexes: Vec<PlexSpec>) -> VolumeSpec {
    VolumeSpec {
        log: None,
        name: name.into(),
        size_bytes: size,
        plexes,
        read_policy: ReadPolicy::Round,
        shared: false,
        local_detach: false,
    }
}

/// Small writes with heap buffers (thousands of them do not need the I/O pool).
fn writes(n: usize) -> Vec<IoReq> {
    (0..n)
        .map(|i| IoReq::write((i as u64 % 64) * 512, vec![i as u8; 512]).heap())
        .collect()
}

/// Blocks reactor `h` until the returned sender is dropped or sent to (also when
/// the test fails: the sender's drop releases it).
fn block(h: &ReactorHandle) -> mpsc::Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    let (in_tx, in_rx) = mpsc::channel::<()>();
    h.try_send(Box::new(move |_| {
        let _ = in_tx.send(());
        let _ = rx.recv_timeout(IO_TIMEOUT);
    }))
    .map_err(|(e, _)| e)
    .unwrap();
    in_rx
        .recv_timeout(IO_TIMEOUT)
        .expect("the reactor took the blocking message");
    tx
}

/// The indexes of the outcomes that failed with `errno`, and how many succeeded.
fn split(out: &[IoOutcome], errno: i32) -> (Vec<usize>, usize) {
    let failed = out
        .iter()
        .enumerate()
        .filter(|(_, o)| o.status == IoStatus::Failed(errno))
        .map(|(i, _)| i)
        .collect();
    let ok = out.iter().filter(|o| o.status.is_ok()).count();
    (failed, ok)
}

#[test]
fn io_past_the_parked_bound_fails_with_eagain_and_the_rest_completes() {
    let t = target(1);
    t.add_bdev(MallocBdev::new("d0", 4 * MIB, 512).unwrap())
        .unwrap();
    t.create_volume(&volume("v", 4 * MIB, vec![plex("v-01", "d0", 0, 4 * MIB)]))
        .unwrap();
    // The channel exists before the quiesce (its gate then closes).
    run_ios(
        &t.reactors().handles()[0],
        &t.bdev("v").unwrap(),
        writes(1),
        IO_TIMEOUT,
    )
    .unwrap();
    t.quiesce("v", Duration::from_secs(10)).unwrap();
    const OVER: usize = 8;
    let pending = start_ios(
        &t.reactors().handles()[0],
        &t.bdev("v").unwrap(),
        writes(MAX_PARKED_IOS + OVER),
    )
    .unwrap();
    let info = t.volume_info("v").unwrap();
    assert_eq!(info.parked, MAX_PARKED_IOS as u64, "parked up to the bound");
    assert_eq!(info.stats.parked_refused, OVER as u64);
    t.abort("v").unwrap();
    let out = pending.wait(IO_TIMEOUT).unwrap();
    let (refused, ok) = split(&out, RETRY_ERRNO);
    assert_eq!(
        refused,
        (MAX_PARKED_IOS..MAX_PARKED_IOS + OVER).collect::<Vec<_>>(),
        "the I/Os that came after the bound failed with EAGAIN"
    );
    assert_eq!(
        ok, MAX_PARKED_IOS,
        "the parked ones completed once the gate opened"
    );
    let info = t.volume_info("v").unwrap();
    assert_eq!((info.parked, info.inflight), (0, 0));
    assert_eq!(info.stats.failed_ops, OVER as u64);
}

/// A two-way mirror on two reactors whose first plex fails every write.
fn failing_mirror() -> (Arc<Target>, Arc<ErrorBdev>) {
    let t = target(2);
    for i in 0..2 {
        t.add_bdev(MallocBdev::new(&format!("m{i}"), 4 * MIB, 512).unwrap())
            .unwrap();
    }
    let e = ErrorBdev::new("e0", t.bdev("m0").unwrap());
    t.add_bdev(e.clone()).unwrap();
    t.create_volume(&volume(
        "v",
        4 * MIB,
        vec![
            plex("v-01", "e0", 0, 4 * MIB),
            plex("v-02", "m1", 0, 4 * MIB),
        ],
    ))
    .unwrap();
    e.injection().fail(FailOn::Writes, libc::EIO, None);
    (t, e)
}

#[test]
fn writes_past_the_held_bound_fail_with_eagain_while_a_detach_is_stuck() {
    let (t, e) = failing_mirror();
    let (h0, h1) = (
        t.reactors().handles()[0].clone(),
        t.reactors().handles()[1].clone(),
    );
    // The detach of v-01 talks to every reactor: with reactor 1 blocked it waits,
    // and reactor 0 holds the writes that failed on v-01 meanwhile.
    let release = block(&h1);
    const OVER: usize = 4;
    let n = MAX_HELD_WRITES + OVER;
    let pending = start_ios(&h0, &t.bdev("v").unwrap(), writes(n)).unwrap();
    // Every child went to e0 in the submitting call; one more round trip and
    // reactor 0 has delivered their completions (held or refused each write).
    assert_eq!(e.injection().injected_failures(), n as u64);
    h0.call_blocking(|_| ()).unwrap();
    drop(release);
    let out = pending.wait(IO_TIMEOUT).unwrap();
    let (refused, ok) = split(&out, RETRY_ERRNO);
    assert_eq!(
        refused,
        (MAX_HELD_WRITES..n).collect::<Vec<_>>(),
        "writes past MAX_HELD_WRITES were not held"
    );
    assert_eq!(
        ok, MAX_HELD_WRITES,
        "the held writes completed after the detach"
    );
    let info = t.volume_info("v").unwrap();
    assert_eq!(info.stats.held_refused, OVER as u64);
    assert_eq!((info.held, info.inflight), (0, 0));
    assert_eq!(info.plexes[0].state, PlexState::Stale);
}

#[test]
fn plex_errors_past_the_detach_queue_fail_their_write_instead_of_waiting() {
    // Three volumes of 32 plexes: plex 0 on a healthy disk, plexes 1..31 on an error
    // bdev failing every write. One write to each volume reports 31 plex errors, 93
    // in all, more than the detach worker (stuck on blocked reactor 1) can queue.
    const PLEXES: usize = 32;
    const VOLUMES: usize = 3;
    const SD: u64 = MIB;
    const { assert!(VOLUMES * (PLEXES - 1) > DETACH_QUEUE_DEPTH + 1) };
    const { assert!(2 * (PLEXES - 1) <= DETACH_QUEUE_DEPTH) };
    let t = target(2);
    t.add_bdev(MallocBdev::new("good", VOLUMES as u64 * SD, 512).unwrap())
        .unwrap();
    let bad = MallocBdev::new("bad-m", (VOLUMES * PLEXES) as u64 * SD, 512).unwrap();
    let e = ErrorBdev::new("bad", bad);
    t.add_bdev(e.clone()).unwrap();
    for v in 0..VOLUMES {
        let mut plexes = vec![plex(&format!("v{v}-00"), "good", v as u64 * SD, SD)];
        for p in 1..PLEXES {
            let off = (v * PLEXES + p) as u64 * SD;
            plexes.push(plex(&format!("v{v}-{p:02}"), "bad", off, SD));
        }
        t.create_volume(&volume(&format!("v{v}"), SD, plexes))
            .unwrap();
    }
    e.injection().fail(FailOn::Writes, libc::EIO, None);
    let h0 = t.reactors().handles()[0].clone();
    let release = block(&t.reactors().handles()[1]);
    // One after the other: v0 and v1 queue 62 detaches, v2 finds the queue full.
    let mut pending = Vec::new();
    for v in 0..VOLUMES {
        let b = t.bdev(&format!("v{v}")).unwrap();
        pending.push(start_ios(&h0, &b, writes(1)).unwrap());
        h0.call_blocking(|_| ()).unwrap();
    }
    let last = pending.pop().unwrap();
    let out = last
        .wait(Duration::from_secs(10))
        .expect("the write whose plexes could not all be queued for a detach is not held");
    assert_eq!(out[0].status, IoStatus::Failed(RETRY_ERRNO));
    drop(release);
    for (v, p) in pending.into_iter().enumerate() {
        let out = p.wait(IO_TIMEOUT).unwrap();
        assert!(
            out[0].status.is_ok(),
            "v{v}'s write was held until its detaches"
        );
    }
    for v in 0..2 {
        let info = t.volume_info(&format!("v{v}")).unwrap();
        let stale = info
            .plexes
            .iter()
            .filter(|p| p.state == PlexState::Stale)
            .count();
        assert_eq!(stale, PLEXES - 1, "v{v}: every failing plex detached");
    }
    let info = t.volume_info("v2").unwrap();
    assert_eq!(info.stats.held_refused, 1);
    assert_eq!((info.held, info.inflight), (0, 0));
}

#[test]
fn io_past_the_volume_channels_bound_fails_with_eagain_before_reaching_a_plex() {
    let t = target(1);
    t.add_bdev(MallocBdev::new("d0", 4 * MIB, 512).unwrap())
        .unwrap();
    t.create_volume(&volume("v", 4 * MIB, vec![plex("v-01", "d0", 0, 4 * MIB)]))
        .unwrap();
    const OVER: usize = 8;
    // One reactor call submits them all: the malloc bdev completes each child
    // only after that call (never inside submit), so the first MAX_VOLUME_IOS are
    // all in flight when the rest arrive.
    let out = run_ios(
        &t.reactors().handles()[0],
        &t.bdev("v").unwrap(),
        writes(MAX_VOLUME_IOS + OVER),
        IO_TIMEOUT,
    )
    .unwrap();
    let (refused, ok) = split(&out, RETRY_ERRNO);
    assert_eq!(
        refused,
        (MAX_VOLUME_IOS..MAX_VOLUME_IOS + OVER).collect::<Vec<_>>(),
        "the I/Os past MAX_VOLUME_IOS failed with EAGAIN"
    );
    assert_eq!(ok, MAX_VOLUME_IOS, "the ones within the bound completed");
    let info = t.volume_info("v").unwrap();
    assert_eq!(info.stats.inflight_refused, OVER as u64);
    assert_eq!(info.stats.failed_ops, OVER as u64);
    assert_eq!((info.inflight, info.held), (0, 0));
    // The channel serves again once the burst is over.
    let out = run_ios(
        &t.reactors().handles()[0],
        &t.bdev("v").unwrap(),
        writes(OVER),
        IO_TIMEOUT,
    )
    .unwrap();
    assert!(out.iter().all(|o| o.status.is_ok()));
}

#[test]
fn io_past_the_error_bdevs_delay_bound_fails_with_eagain_and_the_rest_completes() {
    let t = target(1);
    t.add_bdev(MallocBdev::new("m0", 4 * MIB, 512).unwrap())
        .unwrap();
    let e = ErrorBdev::new("e0", t.bdev("m0").unwrap());
    t.add_bdev(e.clone()).unwrap();
    e.injection().set_latency_us(1000);
    const OVER: usize = 8;
    // All submitted in one reactor call: every one within the bound is delayed
    // (at the inner bdev) when the rest arrive.
    let out = run_ios(
        &t.reactors().handles()[0],
        &t.bdev("e0").unwrap(),
        writes(MAX_DELAYED_IOS + OVER),
        IO_TIMEOUT,
    )
    .unwrap();
    let (refused, ok) = split(&out, RETRY_ERRNO);
    assert_eq!(
        refused,
        (MAX_DELAYED_IOS..MAX_DELAYED_IOS + OVER).collect::<Vec<_>>(),
        "the I/Os past MAX_DELAYED_IOS failed with EAGAIN"
    );
    assert_eq!(
        ok, MAX_DELAYED_IOS,
        "the delayed ones completed after their latency"
    );
    assert_eq!(e.injection().delay_refused(), OVER as u64);
    assert!(e.info().detail.contains("refused past MAX_DELAYED_IOS"));
}
