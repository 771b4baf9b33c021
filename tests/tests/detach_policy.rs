//! Detach policies (`plexctl dg set DG detach-policy=global|local`) with a disk whose
//! writes fail from one node only (the data plane's error injection on that node's
//! bdev over the disk): global detaches the plex cluster-wide and the write
//! succeeds; local fails the write on that node alone, resynchronises the failed
//! range and detaches the plex only once every node failed it.

use std::time::Duration;

use plexd_target::api::Injection;
use plexd_target::bdev::error::FailOn;
use plexd_tests::{volume, wait_until, Cluster, ClusterOpts};

/// How long a plex state change or a resync of the test's small volume may take to
/// reach every node (generous: a loaded machine).
const SETTLE: Duration = Duration::from_secs(60);
/// The write the tests fail: 64 KiB at 2 MiB.
const OFF: u64 = 2 << 20;
const LEN: u64 = 64 << 10;

/// Node `i`'s error bdev over disk `disk`.
fn err_bdev(c: &Cluster, i: usize, disk: &str) -> String {
    let bdevs = c.kernel(i).list_bdevs().unwrap();
    bdevs
        .iter()
        .find(|b| b.kind == "error" && b.name.ends_with(disk))
        .unwrap_or_else(|| panic!("no error bdev over disk {disk} on node {i}: {bdevs:?}"))
        .name
        .clone()
}

/// Makes node `i`'s writes to `disk` fail with EIO (or work again).
fn fail_writes(c: &Cluster, i: usize, disk: &str, fail: bool) {
    let inj = if fail {
        Injection::Fail {
            on: FailOn::Writes,
            errno: libc::EIO,
            count: None,
        }
    } else {
        Injection::Clear
    };
    c.kernel(i)
        .inject_error(&err_bdev(c, i, disk), inj)
        .unwrap();
}

/// `len` bytes at volume offset `off` of the plex of dg1/vol1 on `disk`, read from
/// the disk itself through node `i` (the plex is one concat subdisk).
fn plex_bytes(c: &Cluster, i: usize, disk: &str, off: u64, len: u64) -> Vec<u8> {
    let p = c.print(i);
    let v = volume(&p, "dg1", "vol1").expect("vol1");
    let sd = v["plexes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|pl| pl["subdisks"].as_array().unwrap().iter())
        .find(|sd| sd["disk"] == disk)
        .unwrap_or_else(|| panic!("no subdisk on {disk}: {v}"))
        .clone();
    let at = sd["disk_offset"].as_u64().unwrap() + off - sd["plex_offset"].as_u64().unwrap();
    let r = c
        .kernel(i)
        .read(&err_bdev(c, i, disk), at, len as u32)
        .unwrap();
    assert_eq!(r.status, 0, "read of {disk} at {at} on node {i}");
    r.data
}

/// The policy dg1 shows on node `i`.
fn policy(c: &Cluster, i: usize) -> String {
    let p = c.print(i);
    let g = plexd_tests::group(&p, "dg1").expect("dg1");
    g["detach_policy"].as_str().unwrap_or("?").to_string()
}

/// Waits until the plex on `disk` is `want` on every node of `nodes`.
fn wait_state(c: &Cluster, nodes: &[usize], disk: &str, want: &[&str]) {
    for &i in nodes {
        wait_until(
            &format!("the plex on {disk} to be {want:?} on node {i}"),
            SETTLE,
            || match c.plex_on(i, "dg1", "vol1", disk).1 {
                s if want.contains(&s.as_str()) => Ok(()),
                s => Err(s),
            },
        );
    }
}

/// A 2-node cluster with the shared mirror dg1/vol1 (plexes on d0 and d1) and the
/// group's policy set to `policy`; returns (master, the other node).
fn cluster(policy_name: &str) -> (Cluster, usize, usize) {
    let mut c = Cluster::start(2, ClusterOpts::default());
    let m = c.master();
    c.shared_mirror(m, "dg1", "vol1", "16M");
    c.ctl_ok(m, &format!("dg set dg1 detach-policy={policy_name}"));
    for i in 0..2 {
        assert_eq!(policy(&c, i), policy_name, "node {i}");
    }
    (c, m, 1 - m)
}

#[test]
fn global_a_write_failing_on_one_node_detaches_the_plex_everywhere_and_succeeds() {
    let (mut c, m, a) = cluster("global");
    fail_writes(&c, a, "d1", true);
    // The host write through node a succeeds (held until the detach).
    c.write_pattern(a, "dg1", "vol1", OFF, LEN);
    wait_state(&c, &[a, m], "d1", &["STALE"]);
    fail_writes(&c, a, "d1", false);
    c.check_invariants();
}

#[test]
fn local_a_write_failing_on_one_node_fails_there_only_and_the_plex_is_repaired() {
    let (mut c, m, a) = cluster("local");
    let bdev = "dg1.vol1";
    // The write below goes to node a's data plane directly: wait until it serves
    // the volume (its lease comes about a heartbeat after it joined).
    c.wait_served(a, "dg1", "vol1");
    // Node a cannot write d1; the master can (so the repair copy works).
    fail_writes(&c, a, "d1", true);
    let seed = c.new_seed();
    let data = plexd_tests::data::pattern_bytes(seed, OFF, LEN as usize);
    let st = c.kernel(a).write(bdev, OFF, &data).unwrap();
    assert_eq!(
        st,
        libc::EIO,
        "the write fails on node a (its hosts use another path)"
    );
    // The write reached d0 only: the plexes differ over the range until the repair.
    // Not detached anywhere: SYNCING over the failed range, then ACTIVE again.
    for i in [a, m] {
        let s = c.plex_on(i, "dg1", "vol1", "d1").1;
        assert!(s == "ACTIVE" || s == "SYNCING", "node {i}: {s}");
    }
    wait_state(&c, &[a, m], "d1", &["ACTIVE"]);
    assert_eq!(
        plex_bytes(&c, m, "d0", OFF, LEN),
        plex_bytes(&c, m, "d1", OFF, LEN),
        "after the repair copy both plexes hold the same bytes over the failed range"
    );
    // A write through the master succeeds on both plexes.
    let p = c.write_pattern(m, "dg1", "vol1", OFF, LEN);
    let want = plexd_tests::data::pattern_bytes(p.seed, OFF, LEN as usize);
    assert_eq!(plex_bytes(&c, m, "d0", OFF, LEN), want);
    assert_eq!(plex_bytes(&c, m, "d1", OFF, LEN), want);
    // Now the master cannot write d1 either: once every node failed it (in one
    // episode: before the plex is ACTIVE again), it is detached.
    fail_writes(&c, m, "d1", true);
    let st = c.kernel(m).write(bdev, OFF, &data).unwrap();
    assert_eq!(st, libc::EIO, "the write fails on the master too");
    let st = c.kernel(a).write(bdev, OFF, &data).unwrap();
    assert_eq!(st, libc::EIO, "and on node a");
    wait_state(&c, &[a, m], "d1", &["STALE"]);
    // Writes now go to d0 alone and succeed everywhere.
    c.write_pattern(a, "dg1", "vol1", OFF, LEN);
    c.write_pattern(m, "dg1", "vol1", OFF + LEN, LEN);
    for i in [a, m] {
        fail_writes(&c, i, "d1", false);
    }
    c.check_invariants();
}
