//! The quorum disk with real processes (issue 8, item 1): a 2-node cluster keeps a
//! master that commits when the slave's plexd is killed, the slave takes over when
//! the master's plexd is killed, and a 2|2 split of 4 nodes
//! leaves the side whose master holds the disk in charge while the other refuses
//! changes for want of quorum.
//!
//! Without the disk (the code before it) both fail: a lone node of two holds 1 of 2
//! votes and two nodes of four 2 of 4, never a strict majority, so the master gives
//! up its view and every change is refused. The split test needs root and
//! iproute2 + nftables (`plexd_tests::netns`), like tests/tests/partition.rs.

use std::time::{Duration, Instant};

use plexd_tests::{volume, wait_until, Cluster, ClusterOpts};

/// How long the master gets to acquire the disk: the record unchanged for a lease
/// wait, the settle, a lease wait before its vote counts (about 3.2 s with the test
/// clusters' 1.2 s lease), with room for 2 busy cores.
const ACQUIRE: Duration = Duration::from_secs(20);
/// How long survivors get to commit, or a cut-off side to refuse, after a loss.
const SETTLE: Duration = Duration::from_secs(30);

const VOL2: &str = "vol create dg1 vol2 16M --layout mirror --mirrors 2";

/// Waits until node `i`'s `cluster status` shows the quorum disk held by `holder`.
fn wait_disk_held(c: &Cluster, i: usize, holder: &str) {
    let want = format!("quorum disk: held by {holder}");
    wait_until(&format!("node {i} to show {want:?}"), ACQUIRE, || {
        let s = c.try_ctl_json(i, "cluster status")?;
        match s["quorum_disk"].as_str() {
            Some(line) if line == want => Ok(()),
            other => Err(format!("quorum_disk is {other:?}")),
        }
    });
}

fn opts(netns: bool) -> ClusterOpts {
    ClusterOpts {
        netns,
        quorum_disk: true,
        ..ClusterOpts::default()
    }
}

#[test]
fn two_nodes_with_a_quorum_disk_commit_after_the_slaves_plexd_is_killed() {
    let mut c = Cluster::start(2, opts(false));
    c.shared_mirror(0, "dg1", "vol1", "32M");
    assert_eq!(c.master(), 0, "a, started first, is master");
    wait_disk_held(&c, 0, "a");
    wait_disk_held(&c, 1, "a");
    let record = std::fs::read(c.quorum_disk_path()).expect("the quorum disk file");
    assert_eq!(
        &record[..8],
        b"PLEXDQD1",
        "plexd initialized the blank disk"
    );

    c.kill_coordinator(1);
    let killed = Instant::now();
    // a removes b, waits out b's lease, and commits with its vote and the disk's.
    c.ctl_retry_ok(0, VOL2, SETTLE);
    eprintln!(
        "quorum disk: a committed {} ms after b's plexd was killed",
        killed.elapsed().as_millis()
    );
    assert!(volume(&c.print(0), "dg1", "vol2").is_some());
    let s = c.status(0);
    assert_eq!(s["master"], "a", "{s}");
    assert_eq!(s["quorum_disk"], "quorum disk: held by a", "{s}");
    c.write_pattern(0, "dg1", "vol2", 0, 1 << 20);

    c.restart_coordinator(1, None);
    c.wait_joined(&[0, 1]);
    assert!(volume(&c.print(1), "dg1", "vol2").is_some(), "b sees vol2");
    c.check_invariants();
}

/// The master of two dies (kill -9 of its plexd, its data plane fenced once its lease
/// runs out): the slave, one vote short, acquires the quorum disk once the dead
/// master's renewals have stopped for a lease wait, takes over and commits; the old
/// master comes back as a slave.
#[test]
fn two_nodes_with_a_quorum_disk_take_over_when_the_masters_plexd_is_killed() {
    let mut c = Cluster::start(2, opts(false));
    c.shared_mirror(0, "dg1", "vol1", "32M");
    assert_eq!(c.master(), 0, "a, started first, is master");
    wait_disk_held(&c, 1, "a");

    c.kill_coordinator(0);
    let killed = Instant::now();
    wait_disk_held(&c, 1, "b");
    c.ctl_retry_ok(1, VOL2, SETTLE);
    eprintln!(
        "quorum disk: b took over and committed {} ms after a's plexd was killed",
        killed.elapsed().as_millis()
    );
    let s = c.status(1);
    assert_eq!(s["master"], "b", "{s}");
    c.write_pattern(1, "dg1", "vol2", 0, 1 << 20);
    c.write_pattern(1, "dg1", "vol1", 0, 1 << 20);

    c.restart_coordinator(0, None);
    c.wait_joined(&[0, 1]);
    let s = c.status(0);
    assert_eq!(s["master"], "b", "a rejoined as a slave: {s}");
    assert!(volume(&c.print(0), "dg1", "vol2").is_some(), "a sees vol2");
    c.check_invariants();
}

/// Asks `cmd` on node `i` until it fails for want of quorum naming the quorum disk;
/// a success is a split brain. Returns the error.
fn wait_no_quorum(c: &Cluster, i: usize, cmd: &str) -> String {
    let name = &c.nodes[i].name;
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < SETTLE {
        let out = c.ctl(i, cmd);
        assert!(
            !out.status.success(),
            "`{cmd}` succeeded on node {name}, on the side without the disk: split brain"
        );
        last = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if last.contains("no quorum") && last.contains("quorum disk") {
            return last;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "node {name} never refused `{cmd}` for want of quorum within {} s; last: {last}",
        SETTLE.as_secs()
    );
}

/// 4 nodes and the disk: 5 votes, 3 needed. a (master, holding the disk) and c on
/// one side, b (the designated successor) and d on the other.
#[test]
fn a_two_two_split_with_a_quorum_disk_leaves_the_disk_holders_side_in_charge() {
    if let Some(why) = plexd_tests::netns::unavailable() {
        panic!("the split test cannot run: {why}");
    }
    let mut c = Cluster::start(4, opts(true));
    c.shared_mirror(0, "dg1", "vol1", "32M");
    assert_eq!(c.master(), 0, "a, started first, is master");
    wait_disk_held(&c, 0, "a");

    c.net().split(&[0, 2]);
    let split = Instant::now();
    // a removes b and d (a change racing with that fails naming them), then
    // commits with c's vote and the disk's.
    assert_eq!(c.wait_joined(&[0, 2]), 0, "a leads a and c");
    c.ctl_retry_ok(2, VOL2, SETTLE);
    eprintln!(
        "quorum disk: a's side committed {} ms after the split",
        split.elapsed().as_millis()
    );
    let e = wait_no_quorum(&c, 3, "vol create dg1 lost 16M --layout concat");
    eprintln!("quorum disk: d refuses: {e}");
    let s = c.status(0);
    assert_eq!(s["master"], "a", "{s}");
    assert_eq!(s["quorum_disk"], "quorum disk: held by a", "{s}");

    c.net().unsplit(&[0, 2]);
    assert_eq!(
        c.wait_joined(&[0, 1, 2, 3]),
        0,
        "a still leads after the heal"
    );
    for i in 0..4 {
        let p = c.print(i);
        assert!(volume(&p, "dg1", "vol2").is_some(), "node {i} sees vol2");
        assert!(
            volume(&p, "dg1", "lost").is_none(),
            "node {i} has d's change"
        );
    }
    c.check_invariants();
}
