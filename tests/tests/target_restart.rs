//! A node's plexd-target dies (kill -9) and is started again under a running plexd:
//! the coordinator notices, says so in `cluster status`, keeps answering ctl reads,
//! reconnects, loads the whole configuration into the new target, subscribes to its
//! events again, and the cluster goes on (data, transactions, plex error handling).

use std::time::{Duration, Instant};

use plexd_target::api::Injection;
use plexd_target::bdev::error::FailOn;
use plexd_tests::cluster::{node_reason, EXIT_FAILED};
use plexd_tests::{members, volume, wait_until, Cluster, ClusterOpts};

/// How long a plexd gets to notice that its target died.
const NOTICE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a plexd gets to reload a restarted target (its backoff is at most 1 s).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the other nodes get to see a detached plex.
const DETACH_TIMEOUT: Duration = Duration::from_secs(5);

/// Node `i`'s own `reason` in its `cluster status`.
fn own_reason(c: &Cluster, i: usize) -> Result<String, String> {
    let s = c.try_ctl_json(i, "cluster status")?;
    let me = &c.nodes[i].name;
    node_reason(&s, me).ok_or_else(|| format!("node {me} is not in its own status: {s}"))
}

/// Kills node `victim`'s plexd-target only, checks the cluster while it is down,
/// starts it again and checks that the node's plexd brought it back.
fn target_restart(victim: usize, is_master: bool) {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.shared_mirror(0, "dg1", "vol1", "32M");
    let master = c.master();
    assert_eq!(
        master == victim,
        is_master,
        "master {master}, victim {victim}"
    );
    let name = c.nodes[victim].name.clone();
    let other = (0..c.nodes.len()).find(|&i| i != victim).unwrap();

    c.kill_target(victim);
    assert!(c.coordinator_running(victim));
    let reason = wait_until(
        &format!("node {name} to report its data plane lost"),
        NOTICE_TIMEOUT,
        || match own_reason(&c, victim)? {
            r if r.contains("data plane lost") => Ok(r),
            r => Err(format!("reason {r:?}")),
        },
    );
    eprintln!("node {name} while its target is down: {reason}");

    // ctl reads keep working on the node; it is still a member (a lost data plane
    // alone does not make a node leave).
    let p = c.print(victim);
    assert!(volume(&p, "dg1", "vol1").is_some(), "print on {name}: {p}");
    let s = c.status(victim);
    assert!(
        members(&s).contains(&name),
        "node {name} should still be a member: {s}"
    );
    c.ctl_ok(victim, "task list");
    // A transaction's kernel phase fails on the node: the change fails everywhere,
    // naming it.
    let e = c.ctl_fails(
        other,
        "vol create dg1 volx 16M --layout concat",
        &[EXIT_FAILED],
    );
    assert!(
        e.contains(&format!("node {name}")),
        "the failed change should name node {name}: {e}"
    );
    assert_eq!(c.master(), master, "the master did not change");

    c.start_target(victim);
    let started = Instant::now();
    wait_until(
        &format!("node {name}'s new target to serve dg1.vol1 again"),
        RELOAD_TIMEOUT,
        || {
            let v = c.target_volumes(victim)?;
            if v.iter().any(|v| v == "dg1.vol1") {
                Ok(())
            } else {
                Err(format!("volumes {v:?}"))
            }
        },
    );
    eprintln!(
        "node {name}: dg1.vol1 back {} ms after its target answered",
        started.elapsed().as_millis()
    );
    wait_until(
        &format!("node {name} to stop reporting its data plane lost"),
        RELOAD_TIMEOUT,
        || match own_reason(&c, victim)? {
            r if r.contains("data plane lost") => Err(format!("reason {r:?}")),
            _ => Ok(()),
        },
    );
    assert!(volume(&c.print(victim), "dg1", "volx").is_none());

    // The data written before the restart reads back through the new target.
    if let Err(e) = c.verify_patterns_on(&[victim]) {
        panic!("node {name} after its target restarted: {e}");
    }
    // Transactions run again, from the node itself.
    c.ctl_ok(victim, "vol create dg1 vol2 16M --layout concat");
    c.write_pattern(victim, "dg1", "vol2", 0, 1 << 20);
    c.write_pattern(victim, "dg1", "vol1", 8 << 20, 256 << 10);
    c.check_invariants();

    // The node is subscribed to the new target's events: a write error on a plex
    // there is handled by the cluster (the plex detached everywhere, the write done).
    let k = c.kernel(victim);
    k.inject_error(
        "dg1.d1",
        Injection::Fail {
            on: FailOn::Writes,
            errno: libc::EIO,
            count: None,
        },
    )
    .unwrap_or_else(|e| panic!("node {name}: inject on dg1.d1: {e}"));
    c.write_pattern(victim, "dg1", "vol1", 2 << 20, 64 << 10);
    for i in 0..c.nodes.len() {
        wait_until(
            &format!("vol1's plex on d1 to be STALE on node {i}"),
            DETACH_TIMEOUT,
            || match c.plex_on(i, "dg1", "vol1", "d1").1.as_str() {
                "STALE" => Ok(()),
                s => Err(s.to_string()),
            },
        );
    }
    k.inject_error("dg1.d1", Injection::Clear)
        .unwrap_or_else(|e| panic!("node {name}: clear dg1.d1: {e}"));
    c.check_invariants();
}

#[test]
fn a_slaves_target_restarts_and_its_coordinator_reloads_it() {
    target_restart(1, false);
}

#[test]
fn the_masters_target_restarts_and_its_coordinator_reloads_it() {
    target_restart(0, true);
}
