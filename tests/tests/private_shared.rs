//! A node's private disk-group changes and the cluster's shared transactions share
//! one data plane: each kernel phase stages the whole layout of the node (shared and
//! private groups). Neither may undo the other: a private change must not run while
//! a shared transaction is staged on the node (its prepare would abort the staged
//! layout, and the cluster's commit would then commit nothing there), and a shared
//! prepare must stage the private groups as the private change in progress leaves
//! them (else its commit removes a private volume the node just created).
//!
//! The windows are widened with driver failpoints (`driver.write_disks:sleep` on the
//! master holds a shared transaction between its prepare and its commit;
//! `driver.kernel_prepare:sleep` holds a node's own change staged).

use std::time::Duration;

use plexd_tests::{volume, wait_until, Cluster, ClusterOpts};

/// How long the failpoint holds the first change: long enough for the second
/// command to reach the node meanwhile.
const HOLD_MS: u64 = 2500;
/// Bound on waiting for the failpoint to be reached and for the changes to settle.
const WAIT: Duration = Duration::from_secs(30);
/// The node with the private group.
const P: usize = 2;

/// Whether node `i`'s log shows its failpoint `point` was reached.
fn reached(c: &Cluster, i: usize, point: &str) -> bool {
    std::fs::read_to_string(c.nodes[i].dir.join("plexd.log"))
        .unwrap_or_default()
        .contains(&format!("failpoint {point}: sleeping"))
}

/// Whether node `i`'s data plane serves `bdev`, and at what size.
fn served_size(c: &Cluster, i: usize, bdev: &str) -> Option<u64> {
    let vols = c.kernel(i).list_volumes().ok()?;
    vols.iter().find(|v| v.name == bdev).map(|v| v.size_bytes)
}

/// Both changes are in c's configuration and its data plane: the private volume
/// pv1 (8M) and the grown vol1 (48M); then the cluster's invariants.
fn both_changes_served(c: &mut Cluster) {
    let p = c.print(P);
    assert!(
        volume(&p, "dg2", "pv1").is_some(),
        "c's configuration has pv1: {p}"
    );
    assert_eq!(
        served_size(c, P, "dg2.pv1"),
        Some(8 << 20),
        "c's data plane serves the private volume it created"
    );
    assert_eq!(
        served_size(c, P, "dg1.vol1"),
        Some(48 << 20),
        "c's data plane serves vol1 at the size the cluster committed"
    );
    c.check_invariants();
}

/// Node c ([`P`]) has a private group dg2 on d2; the shared dg1 holds vol1 (32M).
/// c, not b: b is the master's successor, which commits before the master writes the
/// disks; c keeps a shared change staged until the master's commit.
fn cluster(opts: ClusterOpts) -> Cluster {
    let mut c = Cluster::start(3, opts);
    c.shared_mirror(0, "dg1", "vol1", "32M");
    c.ctl_ok(P, "dg create dg2 d2");
    c
}

#[test]
fn a_private_change_while_a_shared_change_is_staged_does_not_undo_it() {
    let fp = format!("driver.write_disks:sleep={HOLD_MS}");
    let mut c = cluster(ClusterOpts::default().failpoint(0, &fp));
    assert_eq!(c.master(), 0, "a formed the cluster");
    let c_ref: &Cluster = &c;
    std::thread::scope(|s| {
        let grow = s.spawn(|| c_ref.ctl(0, "vol grow dg1 vol1 48M"));
        // The master sleeps before its disk write: every node has the grow staged.
        wait_until("c to have the grow staged", WAIT, || {
            let vols = c_ref.kernel(P).list_volumes().map_err(|e| e.to_string())?;
            match vols.iter().find(|v| v.name == "dg1.vol1") {
                Some(v) if v.staged => Ok(()),
                _ => Err("not staged yet".to_string()),
            }
        });
        assert!(
            reached(c_ref, 0, "driver.write_disks"),
            "the master holds the grow before its disk write"
        );
        let private = c_ref.ctl(P, "vol create dg2 pv1 8M --layout concat");
        assert!(
            private.status.success(),
            "the private change on c failed: {}",
            String::from_utf8_lossy(&private.stderr).trim()
        );
        let grow = grow.join().expect("the grow thread");
        assert!(
            grow.status.success(),
            "the shared grow failed: {}",
            String::from_utf8_lossy(&grow.stderr).trim()
        );
    });
    both_changes_served(&mut c);
}

#[test]
fn a_shared_change_during_a_private_change_keeps_the_private_volume() {
    let mut c = cluster(ClusterOpts::default());
    let fp = format!("driver.kernel_prepare:sleep={HOLD_MS}");
    c.restart_coordinator(P, Some(&fp));
    let c_ref: &Cluster = &c;
    std::thread::scope(|s| {
        let private = s.spawn(|| c_ref.ctl(P, "vol create dg2 pv1 8M --layout concat"));
        wait_until("c to hold its private change staged", WAIT, || {
            if reached(c_ref, P, "driver.kernel_prepare") {
                Ok(())
            } else {
                Err("not yet".to_string())
            }
        });
        let grow = c_ref.ctl(0, "vol grow dg1 vol1 48M");
        assert!(
            grow.status.success(),
            "the shared grow failed: {}",
            String::from_utf8_lossy(&grow.stderr).trim()
        );
        let private = private.join().expect("the private thread");
        assert!(
            private.status.success(),
            "the private change on c failed: {}",
            String::from_utf8_lossy(&private.stderr).trim()
        );
    });
    both_changes_served(&mut c);
}
