//! Membership: forming, electing, succession, and a join that cannot find a disk.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use plexd_tests::cluster::node_reason;
use plexd_tests::plex_disk::plexd_log;
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

/// How long the whole cluster stays paused: more than two leases and four heartbeat
/// timeouts of the test clusters (1.2 s, 600 ms), so every lease and every peer's
/// heartbeat has run out when the processes run again.
const WHOLE_PAUSE: Duration = Duration::from_millis(3000);

/// The whole cluster paused at once (every plexd and plexd-target SIGSTOPped: a host
/// stall, or one paused VM running every node) for longer than a lease, then
/// resumed together. Every node wakes with every lease and heartbeat run out. The
/// cluster must come back whole under one master that takes changes, host I/O
/// through a slave must go on (failing only fenced, errno 108, while its node had
/// no lease), and every node must read what was written.
#[test]
fn a_cluster_paused_whole_for_longer_than_a_lease_comes_back_with_one_master_and_its_data() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let m = c.master();
    c.shared_mirror(m, "dg1", "vol1", "32M");
    let s = (m + 1) % 3;
    let io = c.start_io_loop(s, "dg1", "vol1", 5_000_000);
    io.wait_more_rounds(2, Duration::from_secs(20));
    for i in 0..3 {
        c.freeze_target(i);
        c.freeze(i);
    }
    let paused = Instant::now();
    // The pause is the scenario (a fixed length, not a wait for a condition).
    std::thread::sleep(WHOLE_PAUSE);
    for i in 0..3 {
        c.thaw(i);
        c.thaw_target(i);
    }
    let master = c.wait_all_joined();
    for i in 0..3 {
        let st = c.status(i);
        assert_eq!(
            st["master"].as_str(),
            Some(c.nodes[master].name.as_str()),
            "node {i} after the pause: {st}"
        );
    }
    c.ctl_retry_ok(
        s,
        "vol create dg1 vol2 8M --layout concat",
        Duration::from_secs(30),
    );
    io.wait_more_rounds(3, Duration::from_secs(30));
    let seen = io.stop();
    let unfenced = seen.unfenced_errors();
    assert!(
        unfenced.is_empty(),
        "host I/O through node {} failed other than fenced after the pause: {unfenced:?}",
        c.nodes[s].name
    );
    eprintln!(
        "whole-cluster pause of {} ms: back under master {} after {} ms; {} I/O round(s) failed fenced",
        WHOLE_PAUSE.as_millis(),
        c.nodes[master].name,
        paused.elapsed().as_millis(),
        seen.error_count
    );
    c.record_pattern(seen.last.expect("the loop wrote"));
    c.check_invariants();
}

/// The lease of the short-pause test: longer than [`SHORT_PAUSE`] with room for
/// the thaw, so every lease confirmed before the pause still holds after it.
const SHORT_PAUSE_LEASE_MS: u64 = 4000;

/// How long the whole cluster stays paused in the short-pause test: more than two
/// heartbeat timeouts of the test clusters (600 ms), less than its lease.
const SHORT_PAUSE: Duration = Duration::from_millis(1500);

/// The whole cluster paused at once for longer than the heartbeat timeout but not
/// as long as a lease (a host or VM stall of a second or two). Each node's first
/// event after the pause is its own timer, with every peer unheard for longer than
/// the timeout while their heartbeats wait unread in its sockets. That time is not
/// the peers' silence, and no lease ran out: nothing has to change. The view and
/// its master stay, no node leaves or is declared gone, host I/O through a slave
/// never fails, and the master takes a change.
#[test]
fn a_cluster_paused_whole_for_less_than_a_lease_keeps_its_view_its_master_and_its_io() {
    let mut c = Cluster::start(
        3,
        ClusterOpts {
            lease_ms: SHORT_PAUSE_LEASE_MS,
            ..ClusterOpts::default()
        },
    );
    let m = c.master();
    c.shared_mirror(m, "dg1", "vol1", "32M");
    let before = c.status(m);
    let s = (m + 1) % 3;
    let io = c.start_io_loop(s, "dg1", "vol1", 6_000_000);
    io.wait_more_rounds(2, Duration::from_secs(20));
    let log_start: Vec<usize> = (0..3).map(|i| plexd_log(&c, i).len()).collect();
    for i in 0..3 {
        c.freeze_target(i);
        c.freeze(i);
    }
    // The pause is the scenario (a fixed length, not a wait for a condition).
    std::thread::sleep(SHORT_PAUSE);
    for i in 0..3 {
        c.thaw(i);
        c.thaw_target(i);
    }
    io.wait_more_rounds(3, Duration::from_secs(30));
    for i in 0..3 {
        let st = c.status(i);
        assert_eq!(
            (&st["master"], &st["view"]),
            (&before["master"], &before["view"]),
            "node {} after a pause shorter than the lease: {st}\nbefore: {before}",
            c.nodes[i].name
        );
        let log = plexd_log(&c, i);
        let after = &log[log_start[i]..];
        for churn in ["is gone", "left the cluster", "abdicating"] {
            assert!(
                !after.contains(churn),
                "node {} logged \"{churn}\" after a pause shorter than the lease:\n{after}",
                c.nodes[i].name
            );
        }
        assert!(
            after.contains("did not run for"),
            "node {} did not notice its own pause:\n{after}",
            c.nodes[i].name
        );
        // Its own line in `cluster status` says so too.
        let reason = node_reason(&st, &c.nodes[i].name).unwrap_or_default();
        assert!(
            reason.contains("; last stall: did not run for 1.5 s ("),
            "node {}: {reason}",
            c.nodes[i].name
        );
    }
    c.ctl_ok(s, "vol create dg1 vol2 8M --layout concat");
    let seen = io.stop();
    assert_eq!(
        seen.error_count, 0,
        "host I/O through node {} failed across a pause shorter than the lease",
        c.nodes[s].name
    );
    c.record_pattern(seen.last.expect("the loop wrote"));
    c.check_invariants();
}
