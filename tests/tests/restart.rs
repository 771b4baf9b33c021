//! Restarts: a coordinator alone (I/O goes on), and every process at once (the disks
//! bring back the last committed configuration).

use std::time::Duration;

use plexd_tests::data::IoLoop;
use plexd_tests::{wait_until, Cluster, ClusterOpts, Pattern};

#[test]
fn restarting_a_coordinator_alone_never_interrupts_io() {
    // The default lease (5 s): the restart and rejoin fit inside it.
    let opts = ClusterOpts {
        lease_ms: 5000,
        ..ClusterOpts::default()
    };
    let mut c = Cluster::start(3, opts);
    c.shared_mirror(0, "dg1", "vol1", "32M");
    let region = Pattern {
        bdev: "dg1.vol1".into(),
        offset_bytes: 8 << 20,
        len_bytes: 256 << 10,
        seed: 1_000_000,
    };
    c.wait_served(1, "dg1", "vol1");
    let io = IoLoop::start(c.nodes[1].target_socket.clone(), region).unwrap();
    let wait = Duration::from_secs(20);
    io.wait_more_rounds(3, wait);
    c.kill_coordinator(1);
    io.wait_more_rounds(10, wait); // I/O goes on with b's plexd dead
    c.restart_coordinator(1, None); // b resynchronises and rejoins
    io.wait_more_rounds(3, wait);
    let seen = io.stop();
    assert_eq!(
        seen.error_count, 0,
        "I/O failed while the coordinator restarted: {:?}",
        seen.errors
    );
    c.record_pattern(seen.last.expect("the loop wrote"));
    c.ctl_ok(1, "vol create dg1 vol2 16M --layout concat");
    c.check_invariants();
}

#[test]
fn kill_9_of_every_process_then_restart_brings_back_exactly_the_last_committed_configuration() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.shared_mirror(0, "dg1", "vol1", "32M");
    c.ctl_ok(1, "vol create dg1 vol2 16M --layout concat");
    c.ctl_ok(2, "vol grow dg1 vol1 48M");
    c.write_pattern(2, "dg1", "vol1", 40 << 20, 1 << 20);
    c.ctl_ok(0, "dg create dg2 d2 d3 --shared");
    c.ctl_ok(0, "vol create dg2 vol3 16M --layout stripe --columns 2");
    c.write_pattern(1, "dg2", "vol3", 0, 2 << 20);
    c.check_invariants();
    let before = c.agreed_print();

    c.kill_all();
    c.restart_all();
    assert_eq!(c.master(), 0, "a, started first, forms the new cluster");
    // Every node died serving the shared volumes: the new master recovers their
    // starts (vol1's second plex resynchronised from its first, docs/PROTOCOL.md,
    // "Node-crash recovery"), which moves the groups' sequence numbers; once the
    // resync is done the configuration is the one committed before the kill.
    let after = wait_until(
        "the recovery's resync to end",
        Duration::from_secs(60),
        || {
            let p = c.agreed_print();
            if p.to_string().contains("\"SYNCING\"") {
                return Err(format!("a plex is still SYNCING: {p}"));
            }
            Ok(p)
        },
    );
    assert_eq!(without_seq(&after), without_seq(&before));
    let log = std::fs::read_to_string(c.nodes[0].dir.join("plexd.log")).unwrap_or_default();
    assert!(
        log.contains("recovering the mirrors of node"),
        "a recovers the dead starts"
    );
    c.check_invariants();
}

/// `print` without the groups' sequence numbers.
fn without_seq(print: &serde_json::Value) -> serde_json::Value {
    let mut p = print.clone();
    if let Some(groups) = p["disk_groups"].as_array_mut() {
        for g in groups {
            if let Some(o) = g.as_object_mut() {
                o.remove("seq");
            }
        }
    }
    p
}
