//! A coordinator dies at each phase of a transaction (PLEXD_FAILPOINT=<name>:exit):
//! before the commit point the change fails everywhere, after it the survivors
//! complete it. The master's loss after the commit point also runs under corosync
//! (`monitor = "corosync"`, real corosyncs in namespaces: skipped where they cannot
//! run, see tests/tests/corosync.rs).

use std::time::Duration;

use plexd_tests::cluster::{EXIT_FAILED, EXIT_UNREACHABLE};
use plexd_tests::plex_disk::plexd_log;
use plexd_tests::{volume, wait_until, Cluster, ClusterOpts, NODE_NAMES};

const CHANGE: &str = "vol create dg1 vol2 16M --layout mirror --mirrors 2";

fn has_vol2(c: &Cluster, i: usize) -> bool {
    volume(&c.print(i), "dg1", "vol2").is_some()
}

/// A cluster a, b, c with dg1/vol1 and data on it (a is the master under the
/// built-in monitor; under corosync, whichever node formed).
fn cluster_with(opts: ClusterOpts) -> Cluster {
    let mut c = Cluster::start(3, opts);
    c.shared_mirror(0, "dg1", "vol1", "32M");
    c
}

/// [`cluster_with`] the built-in monitor.
fn cluster() -> Cluster {
    cluster_with(ClusterOpts::default())
}

#[test]
fn master_loss_before_commit_point_aborts() {
    let mut c = cluster();
    c.arm_master(0, "txn.before_successor_commit");
    let out = c.ctl(2, CHANGE);
    c.wait_coordinator_exit(0);
    assert!(
        !out.status.success(),
        "the change did not reach its commit point, yet plexctl reported success"
    );
    assert_eq!(c.wait_joined(&[1, 2]), 1, "b took over");
    for i in [1, 2] {
        assert!(!has_vol2(&c, i), "node {i} applied an aborted change");
    }
    c.check_invariants();
    c.restart_coordinator(0, None);
    assert!(!has_vol2(&c, 0));
    c.check_invariants();
}

/// Master a dies at `failpoint`, after the commit point, under the monitor `opts`
/// names: b takes over and the survivors complete the change; a, restarted, has it.
fn master_loss_after_commit_point(opts: ClusterOpts, failpoint: &str) {
    let mut c = cluster_with(opts);
    c.arm_master(0, failpoint);
    let _ = c.ctl(2, CHANGE); // the outcome may reach plexctl either way
    c.wait_coordinator_exit(0);
    assert_eq!(c.wait_joined(&[1, 2]), 1, "b took over");
    wait_until(
        "the survivors to complete the change",
        Duration::from_secs(10),
        || match has_vol2(&c, 1) && has_vol2(&c, 2) {
            true => Ok(()),
            false => Err("vol2 missing".to_string()),
        },
    );
    c.write_pattern(2, "dg1", "vol2", 0, 1 << 20);
    c.check_invariants();
    c.restart_coordinator(0, None);
    assert!(
        has_vol2(&c, 0),
        "a loads the completed change when it rejoins"
    );
    c.check_invariants();
}

#[test]
fn master_loss_after_commit_point_completes_on_survivors() {
    master_loss_after_commit_point(ClusterOpts::default(), "txn.after_successor_ack");
}

/// The same under corosync: a's exit leaves its CPG group, so the survivors see it
/// gone at once (not after the heartbeat timeout), and b's takeover completes the
/// change.
#[test]
fn under_corosync_master_loss_after_commit_point_completes_on_survivors() {
    if let Some(why) = plexd_tests::corosync::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    master_loss_after_commit_point(ClusterOpts::corosync(), "txn.after_successor_ack");
}

#[test]
fn master_loss_after_the_disk_write_completes_on_survivors() {
    master_loss_after_commit_point(ClusterOpts::default(), "txn.after_disk_write");
}

#[test]
fn master_loss_after_commit_sent_completes_on_survivors() {
    master_loss_after_commit_point(ClusterOpts::default(), "txn.after_commit_sent");
}

/// The designated successor b reads the master's COMMIT only once it is past its
/// lease (`peer.commit:sleep`: b's control thread stops with the COMMIT unread, as
/// in a process frozen by SIGSTOP). The master gives b up, waits out b's lease and
/// aborts: the change fails, naming b. b, awake, neither acknowledges nor applies
/// the COMMIT (docs/PROTOCOL.md, "Lost messages"), and joins again without it.
#[test]
fn a_successor_frozen_with_the_commit_unread_does_not_apply_the_aborted_change() {
    let mut c = cluster();
    c.restart_coordinator(1, Some("peer.commit:sleep=5000"));
    assert_eq!(c.master(), 0);
    let e = c.ctl_fails(2, CHANGE, &[EXIT_FAILED]);
    assert!(
        e.contains("node b") && e.contains("before acknowledging COMMIT"),
        "the error names the successor and why: {e}"
    );
    let mut ignored = String::new();
    wait_until(
        "b to wake and read the COMMIT",
        Duration::from_secs(15),
        || {
            let log = plexd_log(&c, 1);
            let line = log
                .lines()
                .find(|l| l.contains("ignored: this node's lease has run out"));
            match line.and_then(|l| l.split("COMMIT of transaction ").nth(1)) {
                Some(rest) => {
                    ignored = rest.split(' ').next().unwrap_or_default().to_string();
                    Ok(())
                }
                None => Err("no COMMIT ignored yet".to_string()),
            }
        },
    );
    c.wait_joined(&[0, 1, 2]);
    for i in [0, 1, 2] {
        assert!(
            !has_vol2(&c, i),
            "node {} has the aborted change",
            NODE_NAMES[i]
        );
    }
    let applied = format!("transaction {ignored} committed");
    for i in [0, 1, 2] {
        assert!(
            !plexd_log(&c, i).contains(&applied),
            "node {} committed {ignored}, which the master aborted",
            NODE_NAMES[i]
        );
    }
    c.check_invariants();
}

fn slave_death_in_check_phase_fails_the_operation() {
    let mut c = cluster();
    c.restart_coordinator(2, Some("txn.after_check"));
    assert_eq!(c.master(), 0);
    // The slave's death fails the change (it left the cluster, or did not answer
    // CHECK in time): nothing was applied.
    let e = c.ctl_fails(1, CHANGE, &[EXIT_FAILED, EXIT_UNREACHABLE]);
    assert!(e.contains("node c"), "the error names the node: {e}");
    c.wait_coordinator_exit(2);
    c.wait_joined(&[0, 1]);
    for i in [0, 1] {
        assert!(!has_vol2(&c, i), "node {i} applied a failed change");
    }
    c.check_invariants();
    c.restart_coordinator(2, None);
    assert!(!has_vol2(&c, 2));
    c.check_invariants();
}

#[test]
fn coordinator_death_in_the_check_phase_fails_the_operation_on_all_nodes() {
    slave_death_in_check_phase_fails_the_operation();
}

/// Slave c dies at txn.after_prepare: the point comes right after it sent its
/// PrepareReply, so the master may or may not have it. If it does not, c died in the
/// kernel phase and the change fails everywhere, naming c; if it does, the master can
/// reach the commit point and c merely left after it, so the survivors complete the
/// change. Either way plexctl's answer, every node and the disks agree.
fn slave_death_after_its_kernel_phase(change: &str, applied: impl Fn(&Cluster, usize) -> bool) {
    let mut c = cluster();
    c.restart_coordinator(2, Some("txn.after_prepare"));
    assert_eq!(c.master(), 0);
    let out = c.ctl(1, change);
    let ok = out.status.success();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        ok || stderr.contains("node c"),
        "the error names the node: {stderr}"
    );
    c.wait_coordinator_exit(2);
    c.wait_joined(&[0, 1]);
    for i in [0, 1] {
        assert_eq!(applied(&c, i), ok, "node {i} vs plexctl ({stderr})");
    }
    c.check_invariants(); // a and b resumed I/O
    c.restart_coordinator(2, None);
    assert_eq!(applied(&c, 2), ok, "c after its restart");
    c.check_invariants(); // so did c's data plane
}

#[test]
fn coordinator_death_in_the_kernel_phase_fails_the_operation_on_all_nodes_or_completes_it_after_the_commit_point(
) {
    slave_death_after_its_kernel_phase(CHANGE, has_vol2);
}

#[test]
fn coordinator_death_in_the_kernel_phase_of_a_grow_leaves_no_volume_quiesced_after_restart() {
    slave_death_after_its_kernel_phase("vol grow dg1 vol1 48M", |c, i| {
        let p = c.print(i);
        volume(&p, "dg1", "vol1").map(|v| v["size"].clone()) == Some((48u64 << 20).into())
    });
}
