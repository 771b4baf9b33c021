//! A slow kernel phase or disk write does not stop a node's heartbeats or its
//! data-plane lease: the driver carries those actions out off the main loop
//! (docs/ARCHITECTURE.md, "The daemon's main loop and its driver").
//!
//! A plexd-target that hangs (SIGSTOP) holds up its plexd's driver and lease threads
//! only: the node stays a member. SIGTERM during a slow kernel prepare lets the
//! change complete before plexd stops (exit 0).
//!
//! The slow action is a failpoint (`driver.kernel_prepare:sleep=<ms>`: the volumes stay
//! staged that long, as in a slow drain; `driver.write_disks:sleep=<ms>`: a slow
//! disk) lasting several heartbeat timeouts and two leases. Meanwhile no node may be
//! declared gone (every node keeps answering `cluster status` with the same view and
//! all members up), I/O through the slow node's target must never be fenced
//! (errno 108), and the change must complete.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use plexd_tests::{members, wait_until, Cluster, ClusterOpts};
use serde_json::Value;

/// How long a plexd-target stays stopped (SIGSTOP) in the hung-target test: as
/// long as the slow actions.
const HUNG_MS: u64 = SLOW_MS;
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

/// Asks every node for `cluster status` until `finished()` (bounded in time and
/// count), checking each answer shows `view` with every node a member; returns the
/// number of rounds.
fn watch_view(c: &Cluster, view: &Value, what: &str, finished: impl Fn() -> bool) -> usize {
    let everyone: BTreeSet<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    let began = Instant::now();
    let mut polls = 0;
    while !finished() && polls < MAX_POLLS && began.elapsed() < CHANGE_TIMEOUT {
        for i in 0..c.nodes.len() {
            let st = c
                .try_ctl_json(i, "cluster status")
                .unwrap_or_else(|e| panic!("while {what}: {e}"));
            assert_eq!(
                (members(&st), &st["view"]),
                (everyone.clone(), view),
                "node {} changed its view while {what} ({} ms in): {st}",
                c.nodes[i].name,
                began.elapsed().as_millis()
            );
        }
        polls += 1;
        std::thread::sleep(POLL_PAUSE);
    }
    polls
}

/// The view every node must keep, checked once before the slow part.
fn current_view(c: &Cluster) -> Value {
    let everyone: BTreeSet<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
    let before = c.status(0);
    assert_eq!(members(&before), everyone, "all members before: {before}");
    before["view"].clone()
}

/// Runs `cmd` on node `on` while node `slow`'s failpoint slows it down, with an I/O
/// loop through node `slow`'s target; checks the view and the I/O throughout.
fn change_while_slow(c: &mut Cluster, on: usize, slow: usize, cmd: &str, point: &str) {
    let view = current_view(c);
    let io = c.start_io_loop(slow, "dg1", "vol1", 1_000_000);
    io.wait_more_rounds(2, Duration::from_secs(20));
    let rounds_before = io.rounds();
    let began = Instant::now();
    let c_ref: &Cluster = c;
    let what = format!("node {} is slow in `{cmd}`", c.nodes[slow].name);
    let (out, polls) = std::thread::scope(|s| {
        let change = s.spawn(|| c_ref.ctl(on, cmd));
        let polls = watch_view(c_ref, &view, &what, || change.is_finished());
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

/// Sends SIGCONT to a stopped process when dropped (also when the test fails).
struct Stopped(Pid);

impl Stopped {
    fn new(pid: u32) -> Stopped {
        let pid = Pid::from_raw(i32::try_from(pid).expect("a PID fits in i32"));
        kill(pid, Signal::SIGSTOP).expect("SIGSTOP the target");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

#[test]
fn a_hung_target_holds_up_neither_heartbeats_nor_the_view() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.shared_mirror(0, "dg1", "vol1", "32M");
    let view = current_view(&c);
    let pid = c.target_pid(1).expect("b's target runs");
    let polls = {
        let _stopped = Stopped::new(pid);
        let until = Instant::now() + Duration::from_millis(HUNG_MS);
        watch_view(&c, &view, "node b's target is stopped", || {
            Instant::now() >= until
        })
    };
    assert!(
        polls > 0,
        "no `cluster status` round ran while the target hung"
    );
    // Running again: b serves again (its lease is renewed) and a change completes.
    c.write_pattern(1, "dg1", "vol1", 8 << 20, 1 << 20);
    c.ctl_ok(0, "vol create dg1 vol2 16M --layout concat");
    c.check_invariants();
    eprintln!("target of b stopped for {HUNG_MS} ms; {polls} status rounds, view kept");
}

#[test]
fn sigterm_during_a_slow_kernel_prepare_lets_the_change_complete_then_stops_cleanly() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.shared_mirror(0, "dg1", "vol1", "32M");
    let fp = format!("driver.kernel_prepare:sleep={SLOW_MS}");
    c.restart_coordinator(1, Some(&fp));
    let log = c.nodes[1].dir.join("plexd.log");
    // The transactions after b's restart (its old start's recovery, the new one's
    // open) slept there already: wait for the change's own sleep.
    let sleeps = |log: &std::path::Path| {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches("failpoint driver.kernel_prepare: sleeping")
            .count()
    };
    let slept = sleeps(&log);
    let pid = Pid::from_raw(i32::try_from(c.plexd_pid(1).expect("b's plexd runs")).unwrap());
    let c_ref: &Cluster = &c;
    let out = std::thread::scope(|s| {
        let change = s.spawn(|| c_ref.ctl(0, "vol create dg1 vol2 16M --layout concat"));
        wait_until(
            "node b to sleep in its kernel prepare",
            CHANGE_TIMEOUT,
            || match sleeps(&log) > slept {
                true => Ok(()),
                false => Err("not yet".to_string()),
            },
        );
        kill(pid, Signal::SIGTERM).expect("SIGTERM b's plexd");
        change.join().expect("the ctl thread")
    });
    assert!(
        out.status.success(),
        "the change failed when node b was asked to stop in its kernel prepare: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let status = c.wait_coordinator_exit(1);
    assert_eq!(
        status.code(),
        Some(0),
        "b's plexd stopped cleanly: {status:?}"
    );
    c.wait_joined(&[0, 2]);
    for i in [0, 2] {
        let vol2 = plexd_tests::volume(&c.print(i), "dg1", "vol2").cloned();
        assert!(vol2.is_some(), "vol2 is on node {}", c.nodes[i].name);
    }
}
