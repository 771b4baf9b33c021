//! Membership: forming, electing, succession, and a join that cannot find a disk.

use std::collections::BTreeSet;
use std::time::Duration;

use plexd_tests::cluster::node_reason;
use plexd_tests::{members, wait_until, Cluster, ClusterOpts};

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn three_nodes_form_a_cluster_and_the_first_node_is_master() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    assert_eq!(c.master(), 0, "a started first, formed the cluster");
    for i in 0..3 {
        let s = c.status(i);
        assert_eq!(s["master"], "a", "node {i}: {s}");
        assert_eq!(members(&s), names(&["a", "b", "c"]), "node {i}: {s}");
        for n in s["nodes"].as_array().expect("nodes") {
            let want = if n["name"] == "a" { "master" } else { "slave" };
            assert_eq!(
                n["role"].as_str().map(str::to_ascii_lowercase).as_deref(),
                Some(want),
                "{s}"
            );
        }
    }
    c.check_invariants();
}

#[test]
fn master_loss_makes_the_lowest_surviving_slave_master_and_the_old_master_rejoins_as_slave() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.shared_mirror(0, "dg1", "vol1", "32M");
    c.kill_coordinator(0);
    assert_eq!(c.wait_joined(&[1, 2]), 1, "b is the designated successor");
    c.check_invariants();
    c.restart_coordinator(0, None);
    assert_eq!(c.master(), 1, "a rejoins as a slave");
    c.ctl_ok(0, "vol create dg1 vol2 16M --layout concat");
    c.check_invariants();
}

#[test]
fn join_failure_names_the_missing_disk() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.shared_mirror(0, "dg1", "vol1", "32M");
    c.kill_node(2);
    c.wait_joined(&[0, 1]);

    // c comes back without disk d1 (file 1): it must abandon its join, saying why.
    c.set_hidden_disks(2, &[1]);
    c.set_outside(2, true);
    c.start_target(2);
    c.start_coordinator(2);
    let want = "cannot find disk d1 on node c";
    wait_until(
        "c to abandon its join naming disk d1",
        Duration::from_secs(15),
        || {
            let s = c.status(2);
            let reason = node_reason(&s, "c").unwrap_or_default();
            match reason.contains(want) {
                true => Ok(()),
                false => Err(format!("status on c: {s}")),
            }
        },
    );
    assert_eq!(members(&c.status(0)), names(&["a", "b"]));
    // The members go on without it.
    c.ctl_ok(1, "vol create dg1 vol2 16M --layout concat");
    c.check_invariants();

    // With the disk back, c joins and loads the same configuration.
    c.kill_node(2);
    c.set_hidden_disks(2, &[]);
    c.set_outside(2, false);
    c.restart_node(2);
    c.check_invariants();
}

#[test]
fn a_node_started_after_the_cluster_formed_joins_it_within_a_short_form_wait() {
    // The contract's short form wait, whatever PLEXD_TEST_FORM_WAIT_MS says: a starting
    // node must hear of the running cluster within it (plexd's reconnect backoff).
    for _round in 0..3 {
        let opts = ClusterOpts {
            form_wait_ms: 300,
            init_disks: false,
            ..ClusterOpts::default()
        };
        let mut c = Cluster::start(3, opts);
        assert_eq!(c.master(), 0);
        c.kill_coordinator(1);
        c.wait_joined(&[0, 2]);
        c.restart_coordinator(1, None);
        assert_eq!(c.master(), 0);
    }
}

/// Node c's coordinator is down while a change commits; it comes back armed with a
/// join failpoint and dies in its join; the members go on; plain, it joins and its data
/// plane loads the change it missed.
fn a_joiner_that_dies_in_its_join_rejoins_with_the_missed_change(failpoint: &str) {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.shared_mirror(0, "dg1", "vol1", "32M");
    c.kill_coordinator(2); // c's data plane keeps serving vol1
    c.wait_joined(&[0, 1]);
    c.ctl_ok(1, "vol create dg1 vol2 16M --layout concat");
    c.write_pattern(0, "dg1", "vol2", 0, 1 << 20);

    c.set_failpoint(2, Some(failpoint));
    c.spawn_coordinator(2);
    c.wait_coordinator_exit(2);
    assert_eq!(members(&c.status(0)), names(&["a", "b"]));
    c.check_invariants();

    c.restart_coordinator(2, None);
    assert!(
        plexd_tests::volume(&c.print(2), "dg1", "vol2").is_some(),
        "c loaded the change it missed"
    );
    c.check_invariants();
}

#[test]
fn a_joiner_that_dies_before_its_data_plane_loads_the_configuration_rejoins_later() {
    a_joiner_that_dies_in_its_join_rejoins_with_the_missed_change("join.before_kernel");
}

#[test]
fn a_joiner_that_dies_after_its_data_plane_loaded_the_configuration_rejoins_later() {
    a_joiner_that_dies_in_its_join_rejoins_with_the_missed_change("join.after_kernel");
}
