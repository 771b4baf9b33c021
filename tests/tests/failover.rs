//! A coordinator dies at each phase of a transaction (PLEXD_FAILPOINT=<name>:exit):
//! before the commit point the change fails everywhere, after it the survivors
//! complete it.

use std::time::Duration;

use plexd_tests::{volume, wait_until, Cluster, ClusterOpts};

const CHANGE: &str = "vol create dg1 vol2 16M --layout mirror --mirrors 2";

fn has_vol2(c: &Cluster, i: usize) -> bool {
    volume(&c.print(i), "dg1", "vol2").is_some()
}

/// A cluster a (master), b, c with dg1/vol1 and data on it.
fn cluster() -> Cluster {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.shared_mirror(0, "dg1", "vol1", "32M");
    c
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

fn master_loss_after_commit_point(failpoint: &str) {
    let mut c = cluster();
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
#[ignore = "waiting for plexd: with txn.after_successor_ack on the master, the successor \
            acked COMMIT yet after its takeover the change is not applied (plexctl: \
            'master node a was lost before the change committed')"]
fn master_loss_after_commit_point_completes_on_survivors() {
    master_loss_after_commit_point("txn.after_successor_ack");
}

#[test]
fn master_loss_after_the_disk_write_completes_on_survivors() {
    master_loss_after_commit_point("txn.after_disk_write");
}

#[test]
fn master_loss_after_commit_sent_completes_on_survivors() {
    master_loss_after_commit_point("txn.after_commit_sent");
}

fn slave_death_fails_the_operation(failpoint: &str) {
    let mut c = cluster();
    c.restart_coordinator(2, Some(failpoint));
    assert_eq!(c.master(), 0);
    let e = c.ctl_err(1, CHANGE);
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
    slave_death_fails_the_operation("txn.after_check");
}

#[test]
fn coordinator_death_in_the_kernel_phase_fails_the_operation_on_all_nodes() {
    slave_death_fails_the_operation("txn.after_prepare");
}

#[test]
#[ignore = "waiting for plexd: a coordinator restarted after dying in the kernel phase leaves \
            its data plane's staged layout in place (volume QUIESCED, staged, I/O parked)"]
fn coordinator_death_in_the_kernel_phase_of_a_grow_leaves_no_volume_quiesced_after_restart() {
    let mut c = cluster();
    c.restart_coordinator(2, Some("txn.after_prepare"));
    let e = c.ctl_err(1, "vol grow dg1 vol1 48M");
    assert!(e.contains("node c"), "the error names the node: {e}");
    c.wait_coordinator_exit(2);
    c.wait_joined(&[0, 1]);
    for i in [0, 1] {
        let p = c.print(i);
        let size = volume(&p, "dg1", "vol1").map(|v| v["size"].clone());
        assert_eq!(size, Some((32u64 << 20).into()), "node {i}: not grown");
    }
    c.check_invariants(); // a and b resumed I/O on vol1
    c.restart_coordinator(2, None);
    c.check_invariants(); // so did c's data plane, which its coordinator left quiesced
}
