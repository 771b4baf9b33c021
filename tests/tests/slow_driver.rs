//! A slow kernel phase or disk write does not stop a node's heartbeats or its
//! data-plane lease: the driver carries those actions out off the main loop
//! (docs/ARCHITECTURE.md, "The daemon's main loop and its driver").
//!
//! The slow action is a failpoint (`driver.kernel_prepare:sleep=<ms>`: the volumes stay
//! staged that long, as in a slow drain; `driver.write_disks:sleep=<ms>`: a slow
//! disk) lasting several heartbeat timeouts and two leases. Meanwhile no node may be
//! declared gone (every node keeps answering `cluster status` with the same view and
//! all members up), I/O through the slow node's target must never be fenced
//! (errno 108), and the change must complete.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use plexd_tests::data::IoLoop;
use plexd_tests::{members, Cluster, ClusterOpts, Pattern};

/// How long the slow action takes: four heartbeat timeouts and two leases of the
/// test clusters (600 ms, 1.2 s), so the old loop that blocked on it lost both.
const SLOW_MS: u64 = 2500;
/// Bound of the whole change (the slow action plus a generous margin for a loaded
/// machine); the ctl call itself is bounded by the harness too.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two rounds of `cluster status` while the change runs.
const POLL_PAUSE: Duration = Duration::from_millis(50);
/// Rounds of `cluster status` at most (bounds the polling loop in count).
const MAX_POLLS: usize = 2000;

/// Runs `cmd` on node `on` while node `slow`'s failpoint slows it down, with an I/O
/// loop through node `slow`'s target; checks the view and the I/O throughout.
fn change_while_slow(c: &mut Cluster, on: usize, slow: usize, cmd: &str, point: &str) {
    let everyone: BTreeSet<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    let before = c.status(0);
    let view = before["view"].clone();
    assert_eq!(members(&before), everyone, "all members before: {before}");
    let region = Pattern {
        bdev: "dg1.vol1".into(),
        offset_bytes: 8 << 20,
        len_bytes: 256 << 10,
        seed: 1_000_000,
    };
    let io = IoLoop::start(c.nodes[slow].target_socket.clone(), region).unwrap();
    io.wait_more_rounds(2, Duration::from_secs(20));
    let rounds_before = io.rounds();
    let began = Instant::now();
    let c_ref: &Cluster = c;
    let (out, polls) = std::thread::scope(|s| {
        let change = s.spawn(|| c_ref.ctl(on, cmd));
        let mut polls = 0;
        while !change.is_finished() && polls < MAX_POLLS && began.elapsed() < CHANGE_TIMEOUT {
            for i in 0..c_ref.nodes.len() {
                let st = c_ref
                    .try_ctl_json(i, "cluster status")
                    .unwrap_or_else(|e| panic!("while node {slow} is slow: {e}"));
                assert_eq!(
                    (members(&st), &st["view"]),
                    (everyone.clone(), &view),
                    "node {} changed its view while node {} was slow ({} ms into `{cmd}`): {st}",
                    c_ref.nodes[i].name,
                    c_ref.nodes[slow].name,
                    began.elapsed().as_millis()
                );
            }
            polls += 1;
            std::thread::sleep(POLL_PAUSE);
        }
        (change.join().expect("the ctl thread"), polls)
    });
    let took = began.elapsed();
    let rounds_during = io.rounds() - rounds_before;
    let seen = io.stop();
    assert!(
        out.status.success(),
        "`{cmd}` on node {} failed while node {} was slow: {}",
        c.nodes[on].name,
        c.nodes[slow].name,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let log = std::fs::read_to_string(c.nodes[slow].dir.join("plexd.log")).unwrap_or_default();
    assert!(
        log.contains(&format!("failpoint {point}: sleeping")),
        "node {}'s failpoint {point} was never reached",
        c.nodes[slow].name
    );
    assert!(
        took >= Duration::from_millis(SLOW_MS),
        "`{cmd}` took {} ms: it did not wait for the slow action",
        took.as_millis()
    );
    assert!(polls > 0, "no `cluster status` round ran during the change");
    assert_eq!(
        seen.error_count, 0,
        "I/O through node {} failed while it was slow: {:?}",
        c.nodes[slow].name, seen.errors
    );
    assert!(
        rounds_during > 0,
        "no I/O round completed through node {} during the change",
        c.nodes[slow].name
    );
    c.record_pattern(seen.last.expect("the loop wrote"));
    eprintln!(
        "`{cmd}` took {} ms with node {} slow; {polls} status rounds, {rounds_during} I/O rounds meanwhile",
        took.as_millis(),
        c.nodes[slow].name
    );
}

#[test]
fn a_slow_kernel_prepare_on_a_slave_keeps_it_a_member_and_serving() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.shared_mirror(0, "dg1", "vol1", "32M");
    let fp = format!("driver.kernel_prepare:sleep={SLOW_MS}");
    c.restart_coordinator(1, Some(&fp));
    change_while_slow(
        &mut c,
        0,
        1,
        "vol create dg1 vol2 16M --layout concat",
        "driver.kernel_prepare",
    );
    let vol2 = plexd_tests::volume(&c.print(1), "dg1", "vol2").cloned();
    assert!(vol2.is_some(), "vol2 is on node b after the change");
    c.check_invariants();
}

#[test]
fn a_slow_disk_write_on_the_master_keeps_it_master_and_serving() {
    let fp = format!("driver.write_disks:sleep={SLOW_MS}");
    let mut c = Cluster::start(3, ClusterOpts::default().failpoint(0, &fp));
    c.shared_mirror(0, "dg1", "vol1", "32M");
    assert_eq!(c.master(), 0, "a formed the cluster");
    change_while_slow(
        &mut c,
        1,
        0,
        "vol create dg1 vol2 16M --layout concat",
        "driver.write_disks",
    );
    let vol2 = plexd_tests::volume(&c.print(2), "dg1", "vol2").cloned();
    assert!(vol2.is_some(), "vol2 is on node c after the change");
    c.check_invariants();
}
