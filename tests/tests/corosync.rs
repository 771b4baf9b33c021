//! corosync as the cluster monitor (`monitor = "corosync"`), with real corosync
//! processes: three nodes, each in its own network namespace with a corosync of its
//! own (`ClusterOpts::corosync`, `plexd_tests::corosync`). The failpoint scenario
//! under corosync (a master killed after the commit point) is in failover.rs, next
//! to its built-in run.
//!
//! Needs root, iproute2, nftables, corosync, and plexd built with the corosync
//! feature (`--features plexd-tests/corosync`, which ci/test passes): skipped with a
//! message otherwise.

use plexd_target::lease::FENCED_ERRNO;
use plexd_tests::corosync::{unavailable, COROSYNC_REPORTS};
use plexd_tests::{members, wait_until, Cluster, ClusterOpts};

/// Where the probes of a fenced data plane write (past the patterns of
/// `Cluster::shared_mirror`, inside its 32 MiB volume).
const PROBE_OFFSET: u64 = 24 << 20;

/// Whether node `i`'s data plane holds a valid lease.
fn serving(c: &Cluster, i: usize) -> bool {
    use plexd_target_api::info::LeaseState;
    c.kernel(i)
        .lease_status()
        .is_ok_and(|s| s.state == LeaseState::Valid)
}

/// Node `i`'s own line in its `cluster status`.
fn own_reason(c: &Cluster, i: usize) -> String {
    c.status(i)["nodes"][i]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Every member's own status line says it is a member of the current view with
/// `n` nodes, quorate for corosync (not a failure of before its join).
fn assert_member_lines(c: &Cluster, nodes: &[usize]) {
    for &i in nodes {
        let s = c.status(i);
        let want = format!(
            "member of view {} with {} nodes; corosync: quorate; plexd running on ",
            s["view"],
            nodes.len()
        );
        let r = own_reason(c, i);
        assert!(r.starts_with(&want), "node {}: {r}", c.nodes[i].name);
    }
}

/// Node `i`'s data plane refuses a write to `dg1.vol1` with the fence's errno.
fn assert_io_fenced(c: &Cluster, i: usize) {
    let errno = c
        .kernel(i)
        .write("dg1.vol1", PROBE_OFFSET, &[0x5a; 4096])
        .unwrap_or_else(|e| panic!("write through node {}: {e}", c.nodes[i].name));
    assert_eq!(
        errno, FENCED_ERRNO,
        "node {}'s data plane, out of the cluster, took a shared write",
        c.nodes[i].name
    );
}

/// Waits until node `i` says it has no quorum from corosync (since when) and its
/// data plane serves no more; then a write through it fails, fenced.
fn wait_fenced_by_corosync(c: &Cluster, i: usize) {
    let name = c.nodes[i].name.clone();
    wait_until(
        &format!("{name} to lose quorum and stop serving"),
        COROSYNC_REPORTS,
        || {
            let reason = own_reason(c, i);
            let says = reason.starts_with(&format!("node {name}: no quorum: corosync: "))
                && reason.contains(" (since ");
            if says && !serving(c, i) {
                Ok(())
            } else {
                Err(format!("serving {}, reason {reason:?}", serving(c, i)))
            }
        },
    );
    assert_io_fenced(c, i);
}

/// A 3-node corosync cluster, nothing started.
fn corosync_cluster() -> Cluster {
    Cluster::create(3, ClusterOpts::corosync()).unwrap_or_else(|e| panic!("cluster setup: {e}"))
}

#[test]
fn corosync_monitor_formation_node_kill_and_corosync_kill() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut c = corosync_cluster();
    // plexd first: it waits for its corosync, without quorum, saying why.
    c.start_target(0);
    c.start_coordinator(0);
    wait_until(
        "a to say corosync is not reachable",
        COROSYNC_REPORTS,
        || match own_reason(&c, 0) {
            r if r.starts_with("node a: no quorum: corosync: not running or not reachable") => {
                Ok(())
            }
            r => Err(r),
        },
    );
    assert!(c.status(0)["master"].as_str().unwrap_or("").is_empty());
    for i in 0..3 {
        c.start_corosync(i);
    }
    for i in 1..3 {
        c.start_target(i);
        c.start_coordinator(i);
    }
    let m = c.wait_joined(&[0, 1, 2]);
    c.init_disks();
    eprintln!("formed with corosync: master {}", c.nodes[m].name);
    c.shared_mirror(m, "dg1", "vol1", "32M");
    // a's line is what holds now, no longer that corosync was not reachable.
    assert_member_lines(&c, &[0, 1, 2]);

    // kill -9 of c's plexd: the others go on without it, and a change commits.
    c.kill_coordinator(2);
    c.wait_joined(&[0, 1]);
    c.ctl_retry_ok(
        0,
        "vol create dg1 vol2 16M --layout concat",
        COROSYNC_REPORTS,
    );
    c.write_pattern(1, "dg1", "vol2", 0, 1 << 20);
    c.restart_coordinator(2, None);
    c.wait_joined(&[0, 1, 2]);
    c.check_invariants();

    // kill -9 of c's corosync: c loses quorum, its data plane stops serving and
    // changes on it are refused; a and b go on.
    assert!(serving(&c, 2), "c serves before its corosync dies");
    c.kill_corosync(2);
    wait_fenced_by_corosync(&c, 2);
    c.wait_joined(&[0, 1]);
    let e = c.ctl_fails(2, "vol create dg1 vol3 16M --layout concat", &[4]);
    assert!(e.contains("node c: no quorum: corosync"), "{e}");
    c.ctl_retry_ok(
        0,
        "vol create dg1 vol4 16M --layout concat",
        COROSYNC_REPORTS,
    );
    c.write_pattern(0, "dg1", "vol4", 0, 1 << 20);
    c.write_pattern(1, "dg1", "vol1", 8 << 20, 1 << 20);
    let s = c.status(0);
    assert_eq!(
        members(&s),
        ["a", "b"].iter().map(|s| s.to_string()).collect()
    );
    assert_member_lines(&c, &[0, 1]);
    // corosync back on c: it joins again, sees what it missed, reads the data.
    c.start_corosync(2);
    c.wait_joined(&[0, 1, 2]);
    c.check_invariants();
    assert_member_lines(&c, &[0, 1, 2]);
}

/// {m} | {the other two}, m the master (whichever node formed: under corosync the
/// first node with a quorate view forms, not always a): m is not quorate for
/// corosync: it abdicates, its data plane stops serving, it refuses changes; one of
/// the others takes over, commits and writes; healed, one cluster again with one
/// configuration, and m reads what the majority wrote.
#[test]
fn corosync_partition_of_one_against_two() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    let mut c = Cluster::start(3, ClusterOpts::corosync());
    let m = c.wait_joined(&[0, 1, 2]);
    let rest: Vec<usize> = (0..3).filter(|&i| i != m).collect();
    c.shared_mirror(m, "dg1", "vol1", "32M");
    assert!(serving(&c, m), "the master serves before the partition");
    c.net().split(&[m]);
    wait_fenced_by_corosync(&c, m);
    let m2 = c.wait_joined(&rest);
    assert!(rest.contains(&m2), "one of the majority took over");
    let e = c.ctl_fails(m, "vol create dg1 vol2 16M --layout concat", &[4]);
    let name = &c.nodes[m].name;
    assert!(e.contains(&format!("node {name}: no quorum")), "{e}");
    c.ctl_retry_ok(
        m2,
        "vol create dg1 vol3 16M --layout concat",
        COROSYNC_REPORTS,
    );
    c.write_pattern(m2, "dg1", "vol3", 0, 1 << 20);
    c.write_pattern(rest[0], "dg1", "vol1", 12 << 20, 1 << 20);
    assert_io_fenced(&c, m);
    c.net().unsplit(&[m]);
    c.wait_joined(&[0, 1, 2]);
    c.check_invariants();
    assert_member_lines(&c, &[0, 1, 2]);
}
