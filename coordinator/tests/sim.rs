//! The protocol core under the deterministic simulator: focused scenarios, one per
//! rule of docs/PROTOCOL.md and one per partition or freeze bug found, and many
//! random seeds with crashes, restarts, joins, partitions and frozen processes.
//!
//! `PLEXD_SIM_SEED=N` runs that one seed (with its trace on failure);
//! `PLEXD_SIM_NO_PARTITIONS=1` leaves partitions and freezes out of the schedules,
//! `PLEXD_SIM_NO_STALLS=1` the driver stalls (results held back for a while),
//! `PLEXD_SIM_STALLS=N` starts one in N of 1,000 steps instead of 4;
//! `PLEXD_SIM_SEEDS=N` changes how many seeds the random test runs,
//! `PLEXD_SIM_FIRST=N` the first of them (default 0), `PLEXD_SIM_ALL=1` runs every
//! seed and names all failing ones at the end instead of stopping at the first,
//! `PLEXD_SIM_STEPS=N` how many 10 ms steps each runs.

use plexd_coordinator::core::Role;
use plexd_coordinator::sim::{run_seed, Coverage, Sim};
use std::time::Instant;

/// Seeds the random test runs by default.
const DEFAULT_SEEDS: u64 = 2000;
/// Steps of 10 ms of simulated time per seed.
const STEPS_PER_SEED: u64 = 400;

#[test]
fn random_schedules_keep_the_invariants() {
    let started = Instant::now();
    let seeds: Vec<u64> = match std::env::var("PLEXD_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("PLEXD_SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("PLEXD_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(DEFAULT_SEEDS);
            let first: u64 = std::env::var("PLEXD_SIM_FIRST")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (first..first + n).collect()
        }
    };
    let keep_going = std::env::var("PLEXD_SIM_ALL").is_ok_and(|v| v == "1");
    let mut failing: Vec<(u64, String)> = Vec::new();
    let steps: u64 = std::env::var("PLEXD_SIM_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(STEPS_PER_SEED);
    let (mut events, mut acked, mut failed) = (0, 0, 0);
    let mut cov = Coverage::default();
    let mut disk_seeds = 0;
    let mut resync_seeds = 0;
    let mut monitor_seeds = 0;
    let mut stalls = 0;
    for &seed in &seeds {
        match run_seed(seed, steps) {
            Ok(s) => {
                events += s.events;
                acked += s.acked;
                failed += s.failed;
                let c = s.coverage;
                cov.failpoint_crashes += c.failpoint_crashes;
                cov.takeovers += c.takeovers;
                cov.completed_by_new_master += c.completed_by_new_master;
                cov.aborted_by_new_master += c.aborted_by_new_master;
                cov.joins += c.joins;
                cov.abandoned_joins += c.abandoned_joins;
                cov.failed_txns += c.failed_txns;
                cov.commits += c.commits;
                cov.quorum_disk_acquired += c.quorum_disk_acquired;
                cov.quorum_disk_lost += c.quorum_disk_lost;
                cov.quorum_disk_takeovers += c.quorum_disk_takeovers;
                cov.chunks_copied += c.chunks_copied;
                cov.multi_piece_chunks += c.multi_piece_chunks;
                cov.chunks_raced += c.chunks_raced;
                cov.copies_refused += c.copies_refused;
                cov.resyncs_done += c.resyncs_done;
                cov.copy_faults += c.copy_faults;
                cov.private_commits += c.private_commits;
                cov.private_waits += c.private_waits;
                cov.divergences += c.divergences;
                cov.log_divergences += c.log_divergences;
                cov.log_sections_read += c.log_sections_read;
                cov.range_resyncs_done += c.range_resyncs_done;
                cov.monitor_views += c.monitor_views;
                cov.monitor_not_quorate += c.monitor_not_quorate;
                disk_seeds += usize::from(s.quorum_disk);
                monitor_seeds += usize::from(s.monitor);
                resync_seeds += usize::from(s.resync);
                stalls += s.stalls;
            }
            Err(e) if keep_going => {
                eprintln!("seed {seed} FAILED: {}", e.lines().next().unwrap_or(""));
                failing.push((seed, e));
            }
            Err(e) => panic!("{e}"),
        }
    }
    if let Some((_, first)) = failing.first() {
        let seeds: Vec<u64> = failing.iter().map(|(s, _)| *s).collect();
        panic!(
            "{} seeds failed: {seeds:?}; the first:\n{first}",
            seeds.len()
        );
    }
    eprintln!(
        "simulator coverage: {cov:?}; {disk_seeds} seeds with a quorum disk, {resync_seeds} with resyncs, {monitor_seeds} with corosync; {stalls} driver stalls"
    );
    eprintln!(
        "simulator: {} seeds × {steps} steps, {events} events, {acked} changes acknowledged, {failed} refused, in {:.1} s",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
}

/// Seeds beyond the default range that found bugs (runs over seeds 5,000,000 to
/// 5,250,000 and 6,000,000 to 6,150,000):
/// - a designated successor frozen past its lease after the master sent it
///   COMMIT, waking after the master aborted the transaction for want of its
///   acknowledgement, applied that COMMIT (5179753, 5210940, 5243060, 5248738);
///   the invariant counted a member frozen since before such an abort as holding
///   the failed change (5096592);
/// - the simulator reordered the events of a node frozen again before it thawed:
///   a stale corosync report read last kept it out for good (6023630);
/// - (run over 11,000,000 to 11,150,000) a master that formed alone with a
///   configuration the other side then changed gained its first majority from
///   the quorum disk's vote, not a join, so the disks were never checked, and it
///   overwrote that change (11070931; the scenario
///   `a_stale_master_whose_first_majority_is_the_quorum_disks_vote_checks_the_disks`).
///
/// Since the freeze fix and the buffered partitions changed the schedules,
/// 5179753 and 5210940 still fail without the lease check; the others run
/// another schedule now and stay as ordinary seeds. Scenario tests pin the
/// freeze fix (`a_node_frozen_twice_reads_its_events_in_the_order_they_came`)
/// and what the same runs found besides: a lost `Applied`
/// (`a_lost_applied_is_told_again_by_the_slaves_heartbeat`) and a dead start's
/// view read late (`a_dead_starts_view_read_after_a_thaw_is_left_for_the_new_start`).
const SEEDS_THAT_FOUND_BUGS: [u64; 7] = [
    5096592, 5179753, 5210940, 5243060, 5248738, 6023630, 11070931,
];

#[test]
fn seeds_that_found_bugs_keep_the_invariants() {
    for seed in SEEDS_THAT_FOUND_BUGS {
        if let Err(e) = run_seed(seed, STEPS_PER_SEED) {
            panic!("seed {seed}: {e}");
        }
    }
}

/// A master's restarted start numbers its views afresh, so its new view may take
/// the id of a view its dead start made and sent to a node that froze before
/// reading it. That node installs the dead start's view when it thaws; its
/// master is gone, and the new start's first heartbeat (a newer incarnation)
/// tells it so: it leaves and joins the new start's cluster. The invariant
/// checker does not count such a view as a second view with its id (seed
/// 5107003 before the other fixes changed its schedule).
#[test]
fn a_dead_starts_view_read_after_a_thaw_is_left_for_the_new_start() {
    // A heartbeat timeout longer than the freeze: the first thing c reads when
    // it thaws is the dead start's `View`, not its own timer finding a silent.
    let mut sim = Sim::new(SimConfig {
        trace: true,
        connection_lost_percent: 0,
        heartbeat_timeout_ms: 10_000,
        ..SimConfig::new(3, 7)
    });
    sim.start(A);
    sim.start(C);
    let with_c = sim.run_until(5_000, |s| {
        s.core(A)
            .and_then(|c| c.view())
            .is_some_and(|v| v.members == [A, C])
    });
    assert!(with_c, "a never made a view with c:\n{}", sim.trace_text());
    let stale = sim.core(A).and_then(|c| c.view()).cloned().unwrap();
    // c freezes with a's `View` on the way; a dies; its new start and b make
    // a cluster, and number its views as a's dead start did.
    sim.freeze(C, 60_000);
    sim.crash(A);
    sim.start(A);
    sim.start(B);
    let reused = sim.run_until(10_000, |s| {
        s.all_members(&[A, B]) && s.core(A).and_then(|c| c.view()).map(|v| v.id) == Some(stale.id)
    });
    assert!(
        reused,
        "the new start did not reuse view id {}:\n{}",
        stale.id,
        sim.trace_text()
    );
    sim.thaw(C);
    // Under the dead start's view c holds no lease (its stamps that master
    // confirmed are older than the freeze): its data plane never serves under it.
    let mut served_stale = false;
    let whole = sim.run_until(5_000, |s| {
        let in_stale = s.core(C).and_then(|c| c.view()) == Some(&stale);
        served_stale |= in_stale && s.serving(C);
        s.all_members(&[A, B, C])
    });
    assert!(whole, "c did not join the new start:\n{}", sim.trace_text());
    assert!(
        !served_stale,
        "c served under the dead start's view:\n{}",
        sim.trace_text()
    );
    assert!(
        sim.trace_text()
            .contains(&format!("c installs view {stale:?}")),
        "c never read the dead start's view:\n{}",
        sim.trace_text()
    );
    assert_eq!(sim.violation(), None);
}

#[test]
fn cluster_forms_with_one_master() {
    let sim = Sim::cluster(3, 1);
    let m = sim.master().unwrap();
    assert_eq!(sim.core(m).unwrap().role(), Role::Master);
}

// ---------------------------------------------------------------------------
// Scenarios. `Sim::cluster(3, seed)` starts nodes a, b, c at once; a (lowest id)
// forms the cluster and is master, b is the designated successor.
// ---------------------------------------------------------------------------

use plexd_coordinator::core::RequestId;
use plexd_coordinator::sim::{Hold, ToyChange};

const A: u32 = 1;
const B: u32 = 2;
const C: u32 = 3;

/// Runs until node `id` answers `request`; returns the answer.
fn answer(sim: &mut Sim, id: u32, request: Option<RequestId>) -> Result<(), String> {
    let request = request.expect("the node is up");
    let answered = sim.run_until(10_000, |s| s.reply(id, request).is_some());
    assert!(answered, "no answer from node {id}:\n{}", sim.trace_text());
    assert_eq!(sim.violation(), None);
    sim.reply(id, request).cloned().expect("answered")
}

/// Runs until `ids` form one idle view with every start open on the disk (the
/// master's node-crash bookkeeping after their joins committed), then checks the
/// invariants: scenarios count their own transactions from there.
fn settle_open(sim: &mut Sim, ids: &[u32]) {
    let whole = sim.run_until(10_000, |s| s.all_members(ids) && s.opened(ids));
    assert!(
        whole,
        "nodes {ids:?} did not settle open:\n{}",
        sim.trace_text()
    );
    sim.check().expect("invariants hold");
}

/// The configuration sequence number on the disk.
fn disk_seq(sim: &Sim) -> u64 {
    sim.disk().map_or(0, |d| d.config.seq)
}

/// Runs until `ids` form one idle view, then checks the invariants.
fn settle(sim: &mut Sim, ids: &[u32]) {
    let whole = sim.run_until(10_000, |s| s.all_members(ids));
    assert!(whole, "nodes {ids:?} did not settle:\n{}", sim.trace_text());
    sim.check().expect("invariants hold");
}

/// Whether every live node in `ids`, its data plane and the disk hold group `dg`.
fn everywhere_has(sim: &Sim, ids: &[u32], dg: &str) -> bool {
    ids.iter().all(|&id| {
        sim.core(id)
            .is_some_and(|c| c.config().groups.contains_key(dg))
            && sim.node(id).kernel.active.groups.contains_key(dg)
    }) && sim.disk().is_some_and(|d| d.config.groups.contains_key(dg))
}

/// Whether no node (live core or data plane) nor the disk holds group `dg`.
fn nowhere_has(sim: &Sim, dg: &str) -> bool {
    sim.ids().into_iter().all(|id| {
        !sim.core(id)
            .is_some_and(|c| c.config().groups.contains_key(dg))
            && !sim.node(id).kernel.active.groups.contains_key(dg)
            && sim.node(id).kernel.staged.is_none()
    }) && !sim.disk().is_some_and(|d| d.config.groups.contains_key(dg))
}

/// A cluster of `nodes` (a, b, …) that formed and opened every start.
fn traced_cluster(nodes: u32) -> Sim {
    let mut sim = Sim::cluster(nodes, 7);
    assert_eq!(sim.master(), Some(A));
    let ids: Vec<u32> = (1..=nodes).collect();
    settle_open(&mut sim, &ids);
    sim
}

#[test]
fn change_on_master_commits_on_every_node_and_the_disk() {
    let mut sim = traced_cluster(3);
    let base = disk_seq(&sim);
    let r = sim.create(A, "dg1", 2);
    assert_eq!(answer(&mut sim, A, r), Ok(()));
    settle(&mut sim, &[A, B, C]);
    assert!(everywhere_has(&sim, &[A, B, C], "dg1"));
    assert_eq!(sim.disk().unwrap().config.seq, base + 1);
}

#[test]
fn slave_forwards_change_to_master() {
    let mut sim = traced_cluster(3);
    let r = sim.create(C, "dg1", 1);
    assert_eq!(answer(&mut sim, C, r), Ok(()));
    settle(&mut sim, &[A, B, C]);
    assert!(everywhere_has(&sim, &[A, B, C], "dg1"));
}

#[test]
fn master_validation_refusal_names_the_master() {
    let mut sim = traced_cluster(3);
    let base = disk_seq(&sim);
    let r = sim.create(B, "dg1", 1);
    assert_eq!(answer(&mut sim, B, r), Ok(()));
    let r = sim.create(B, "dg1", 1);
    assert_eq!(
        answer(&mut sim, B, r),
        Err("node a: disk group dg1 already exists".into())
    );
    settle(&mut sim, &[A, B, C]);
    assert_eq!(sim.disk().unwrap().config.seq, base + 1);
}

#[test]
fn slave_check_refusal_names_the_node() {
    let mut sim = traced_cluster(3);
    sim.add_private_dg(B, "dg1");
    let r = sim.create(C, "dg1", 1);
    let expected = "node b: disk group dg1 exists as a private disk group";
    assert_eq!(answer(&mut sim, C, r), Err(expected.into()));
    assert!(
        sim.logs()
            .iter()
            .any(|l| l.starts_with("a: ") && l.contains(expected)),
        "the master logs the failure with the node's name: {:?}",
        sim.logs()
    );
    settle(&mut sim, &[A, B, C]);
    assert!(nowhere_has(&sim, "dg1"));
}

#[test]
fn requests_queue_behind_the_transaction_in_progress() {
    let mut sim = traced_cluster(3);
    let base = disk_seq(&sim);
    let rs: Vec<_> = ["dg1", "dg2", "dg3"]
        .iter()
        .map(|dg| sim.create(B, dg, 1))
        .collect();
    for r in rs {
        assert_eq!(answer(&mut sim, B, r), Ok(()));
    }
    settle(&mut sim, &[A, B, C]);
    assert_eq!(sim.disk().unwrap().config.seq, base + 3);
}

#[test]
fn master_loss_after_commit_point_completes_on_survivors() {
    for fp in [
        "txn.after_successor_ack",
        "txn.after_disk_write",
        "txn.after_commit_sent",
    ] {
        let mut sim = traced_cluster(3);
        sim.arm_failpoint(A, fp);
        let r = sim.create(C, "dg1", 2);
        assert_eq!(answer(&mut sim, C, r), Ok(()), "master killed at {fp}");
        assert!(!sim.is_up(A));
        settle(&mut sim, &[B, C]);
        assert_eq!(sim.master(), Some(B), "the designated successor is master");
        assert!(everywhere_has(&sim, &[B, C], "dg1"), "killed at {fp}");
        // The old master comes back and gets the committed configuration.
        sim.start(A);
        settle(&mut sim, &[A, B, C]);
        assert!(everywhere_has(&sim, &[A, B, C], "dg1"), "killed at {fp}");
    }
}

/// The master dies right after writing the disks, and the designated successor,
/// which acknowledged COMMIT and applied it, dies with it: no survivor received
/// COMMIT. The next in the succession order takes over holding the change only
/// prepared, finds it on the disks and completes it (DESIGN.md: the change is past
/// its commit point), so the client hears it applied and every node ends up with
/// it. Without the disks' word it would abort a change the disks already hold.
#[test]
fn a_successor_finding_the_change_on_the_disks_completes_it_after_the_designated_one_died() {
    let mut sim = traced_cluster(5);
    sim.arm_failpoint(A, "txn.after_disk_write");
    let r = sim.create(E, "dg1", 2);
    assert!(sim.run_until(2_000, |s| !s.is_up(A)));
    assert!(
        sim.disk()
            .is_some_and(|d| d.config.groups.contains_key("dg1")),
        "a died after its write landed"
    );
    assert!(
        sim.core(B)
            .is_some_and(|c| c.config().groups.contains_key("dg1")),
        "b applied the COMMIT it acknowledged"
    );
    for id in [C, D, E] {
        assert!(
            !sim.core(id)
                .is_some_and(|c| c.config().groups.contains_key("dg1")),
            "node {id} received no COMMIT"
        );
    }
    sim.crash(B);
    assert_eq!(
        answer(&mut sim, E, r),
        Ok(()),
        "the change is reported applied"
    );
    settle(&mut sim, &[C, D, E]);
    assert_eq!(
        sim.master(),
        Some(C),
        "c, next in the succession order, took over"
    );
    assert!(
        sim.logs()
            .iter()
            .any(|l| l.starts_with("c: ") && l.contains("is on the disks; completing it")),
        "c completed the change it held prepared: {:?}",
        sim.logs()
    );
    assert!(everywhere_has(&sim, &[C, D, E], "dg1"));
    sim.start(A);
    sim.start(B);
    settle(&mut sim, &[A, B, C, D, E]);
    assert!(everywhere_has(&sim, &[A, B, C, D, E], "dg1"));
}

#[test]
fn master_loss_before_commit_point_aborts() {
    for fp in [
        "txn.after_validate",
        "txn.after_check",
        "txn.after_prepare",
        "txn.before_successor_commit",
    ] {
        let mut sim = traced_cluster(3);
        sim.arm_failpoint(A, fp);
        let r = sim.create(C, "dg1", 2);
        let err = answer(&mut sim, C, r).expect_err(fp);
        assert_eq!(
            err, "node c: master node a was lost before the change committed; it was not applied",
            "killed at {fp}"
        );
        settle(&mut sim, &[B, C]);
        assert_eq!(sim.master(), Some(B));
        assert!(nowhere_has(&sim, "dg1"), "killed at {fp}");
    }
}

#[test]
fn coordinator_death_in_check_phase_fails_on_all_nodes() {
    let mut sim = traced_cluster(3);
    sim.hold(C, Hold::LocalCheck);
    let r = sim.create(B, "dg1", 1);
    assert!(sim.run_until(1_000, |s| s.held(C) == 1));
    sim.crash(C);
    let err = answer(&mut sim, B, r).unwrap_err();
    assert_eq!(
        err,
        "node c: left the cluster during the transaction; the change was not applied"
    );
    settle(&mut sim, &[A, B]);
    assert!(nowhere_has(&sim, "dg1"));
}

#[test]
fn coordinator_death_in_kernel_phase_aborts_staged_layouts() {
    let mut sim = traced_cluster(3);
    sim.hold(C, Hold::KernelPrepare);
    let r = sim.create(A, "dg1", 1);
    assert!(sim.run_until(1_000, |s| s.held(C) == 1
        && s.node(B).kernel.staged.is_some()));
    sim.crash(C);
    let err = answer(&mut sim, A, r).unwrap_err();
    assert!(err.starts_with("node c: left the cluster"), "{err}");
    settle(&mut sim, &[A, B]);
    assert!(nowhere_has(&sim, "dg1"), "b's staged layout is dropped");
}

#[test]
fn successor_loss_before_its_ack_aborts() {
    let mut sim = traced_cluster(3);
    sim.arm_failpoint(B, "txn.after_prepare");
    // b crashes after its prepare reply: the master's COMMIT to b finds it gone.
    let r = sim.create(A, "dg1", 1);
    let err = answer(&mut sim, A, r).unwrap_err();
    assert!(err.starts_with("node b: "), "{err}");
    settle(&mut sim, &[A, C]);
    assert!(nowhere_has(&sim, "dg1"));
}

#[test]
fn slave_loss_after_commit_point_completes_on_survivors() {
    let mut sim = traced_cluster(3);
    sim.hold(A, Hold::DiskWrite);
    let r = sim.create(A, "dg1", 1);
    assert!(
        sim.run_until(1_000, |s| s.held(A) == 1),
        "past the commit point"
    );
    sim.crash(C);
    sim.run_for(100);
    sim.release(A);
    assert_eq!(answer(&mut sim, A, r), Ok(()));
    settle(&mut sim, &[A, B]);
    assert!(everywhere_has(&sim, &[A, B], "dg1"));
}

/// Starts a and b only and lets them form a cluster; c stays down.
fn two_of_three() -> Sim {
    let mut cfg = plexd_coordinator::sim::SimConfig::new(3, 11);
    cfg.trace = true;
    let mut sim = Sim::new(cfg);
    sim.start(A);
    sim.start(B);
    settle(&mut sim, &[A, B]);
    sim
}

#[test]
fn join_before_kernel_phase_suspends_txn() {
    let mut sim = two_of_three();
    sim.hold(B, Hold::LocalCheck);
    let r = sim.create(A, "dg1", 1);
    assert!(
        sim.run_until(1_000, |s| s.held(B) == 1),
        "transaction in its check phase"
    );
    sim.hold(C, Hold::DiskAccess);
    sim.start(C);
    assert!(sim.run_until(2_000, |s| s.held(C) == 1), "c is joining");
    // b's check completes while c joins: the transaction must wait for the join.
    sim.release(B);
    sim.run_for(200);
    assert!(
        sim.ids()
            .iter()
            .all(|&id| sim.node(id).kernel.staged.is_none()),
        "no kernel phase yet"
    );
    assert!(sim.core(A).unwrap().txn_in_progress());
    sim.release(C);
    assert_eq!(answer(&mut sim, A, r), Ok(()));
    settle(&mut sim, &[A, B, C]);
    assert!(
        everywhere_has(&sim, &[A, B, C], "dg1"),
        "the joiner took part"
    );
}

#[test]
fn join_during_kernel_phase_waits() {
    let mut sim = two_of_three();
    sim.hold(B, Hold::KernelPrepare);
    let r = sim.create(B, "dg1", 1);
    assert!(
        sim.run_until(1_000, |s| s.held(B) == 1),
        "transaction in its kernel phase"
    );
    sim.start(C);
    sim.run_for(1_500);
    assert_eq!(sim.core(C).unwrap().role(), Role::Joining, "c waits");
    assert!(!sim.core(A).unwrap().view().unwrap().contains(C));
    sim.release(B);
    assert_eq!(answer(&mut sim, B, r), Ok(()));
    settle(&mut sim, &[A, B, C]);
    assert!(everywhere_has(&sim, &[A, B, C], "dg1"));
}

/// a and b with group dg1; c, which cannot reach the disk, started: it abandons
/// its join.
fn c_abandons_without_the_disk() -> Sim {
    let mut sim = two_of_three();
    let r = sim.create(A, "dg1", 1);
    assert_eq!(answer(&mut sim, A, r), Ok(()));
    sim.set_disk_access_broken(C, true);
    sim.start(C);
    assert!(sim.run_until(3_000, |s| s.core(C).unwrap().role() == Role::Abandoned));
    sim
}

#[test]
fn joiner_that_cannot_find_a_disk_abandons_with_the_reason() {
    let mut sim = c_abandons_without_the_disk();
    let reason = "cannot find disk dg1-disk on node c";
    assert_eq!(
        sim.core(C).unwrap().status().last_reason.as_deref(),
        Some(reason)
    );
    sim.run_for(100);
    assert_eq!(
        sim.core(A)
            .unwrap()
            .status()
            .reasons
            .get(&C)
            .map(String::as_str),
        Some(reason)
    );
    // Once the disk is reachable the retry succeeds.
    sim.set_disk_access_broken(C, false);
    settle(&mut sim, &[A, B, C]);
    assert!(everywhere_has(&sim, &[A, B, C], "dg1"));
}

#[test]
fn last_active_plex_is_never_detached() {
    let mut sim = traced_cluster(3);
    let base = disk_seq(&sim);
    let r = sim.create(A, "v1", 2);
    assert_eq!(answer(&mut sim, A, r), Ok(()));
    settle(&mut sim, &[A, B, C]);
    let r = sim.plex_io_error(B, "v1", "v1-01");
    assert_eq!(
        answer(&mut sim, B, r),
        Ok(()),
        "the first plex is detached cluster-wide"
    );
    settle(&mut sim, &[A, B, C]);
    for id in [A, B, C] {
        assert!(
            !sim.core(id).unwrap().config().groups["v1"].plexes["v1-01"],
            "v1-01 is STALE"
        );
    }
    let r = sim.plex_io_error(C, "v1", "v1-02");
    let err = answer(&mut sim, C, r).unwrap_err();
    assert_eq!(
        err,
        "node a: plex v1-02 is the last ACTIVE plex of volume v1; not detached"
    );
    settle(&mut sim, &[A, B, C]);
    for id in [A, B, C] {
        assert!(
            sim.core(id).unwrap().config().groups["v1"].plexes["v1-02"],
            "v1-02 stays ACTIVE"
        );
    }
    // A second error report for a plex already detached succeeds without a change.
    let r = sim.plex_io_error(A, "v1", "v1-01");
    assert_eq!(answer(&mut sim, A, r), Ok(()));
    assert_eq!(sim.disk().unwrap().config.seq, base + 2);
}

#[test]
fn request_on_a_node_without_master_names_the_situation() {
    let mut sim = Sim::new(plexd_coordinator::sim::SimConfig::new(3, 3));
    sim.start(C);
    sim.run_for(50);
    let r = sim.create(C, "dg1", 1);
    let err = answer(&mut sim, C, r).unwrap_err();
    assert!(
        err.starts_with("node c: no quorum: 1 of 3 votes, 2 needed (a, b unreachable)"),
        "{err}"
    );
}

#[test]
fn whole_cluster_restart_brings_back_the_last_committed_configuration() {
    let mut sim = traced_cluster(3);
    let base = disk_seq(&sim);
    let dead: Vec<(u32, u64)> = [A, B, C].iter().map(|&id| (id, sim.node(id).inc)).collect();
    for dg in ["dg1", "dg2"] {
        let r = sim.create(B, dg, 1);
        assert_eq!(answer(&mut sim, B, r), Ok(()));
    }
    for id in [A, B, C] {
        sim.crash(id);
    }
    sim.run_for(1_000);
    for id in [C, B, A] {
        sim.start(id);
    }
    settle_open(&mut sim, &[A, B, C]);
    assert!(everywhere_has(&sim, &[A, B, C], "dg1") && everywhere_has(&sim, &[A, B, C], "dg2"));
    let config = sim.core(A).unwrap().config();
    // The two creates, then the recovery of each dead start and the opening of
    // each new one.
    assert_eq!(config.seq, base + 2 + 3 + 3);
    let mut recovered = config.recovered.clone();
    recovered.sort_unstable();
    assert_eq!(recovered, dead, "every crashed start was recovered");
}

#[test]
fn clean_shutdown_waits_for_the_transaction_in_progress() {
    let mut sim = traced_cluster(3);
    sim.hold(B, Hold::KernelPrepare);
    let r = sim.create(A, "dg1", 1);
    assert!(sim.run_until(1_000, |s| s.held(B) == 1));
    sim.shutdown(A);
    sim.run_for(100);
    assert_ne!(sim.core(A).unwrap().role(), Role::Stopped);
    sim.release(B);
    assert_eq!(answer(&mut sim, A, r), Ok(()));
    // Then a closes its start (its own last transaction) and stops.
    let stopped = sim.run_until(5_000, |s| {
        s.core(A).is_some_and(|c| c.role() == Role::Stopped)
    });
    assert!(stopped, "a stops:\n{}", sim.trace_text());
    let disk = &sim.disk().unwrap().config;
    assert!(!disk.open.contains_key(&A), "a's start was closed");
    assert!(disk.recovered.is_empty(), "a clean stop is no crash");
}

#[test]
fn restarted_slave_rejoins_with_the_current_configuration() {
    let mut sim = traced_cluster(3);
    sim.crash(C);
    assert!(sim.run_until(2_000, |s| !s.core(A).unwrap().view().unwrap().contains(C)));
    let r = sim.create(A, "dg1", 1);
    assert_eq!(answer(&mut sim, A, r), Ok(()));
    sim.start(C);
    settle(&mut sim, &[A, B, C]);
    assert!(everywhere_has(&sim, &[A, B, C], "dg1"));
}

// ---------------------------------------------------------------------------
// Partitions and frozen processes (issue 8): one scenario per root cause fixed.
// ---------------------------------------------------------------------------

const D: u32 = 4;
const E: u32 = 5;

/// Whether node `id` is master of a view holding a majority of `nodes`.
fn quorate_master(sim: &Sim, id: u32, nodes: usize) -> bool {
    sim.core(id).is_some_and(|c| {
        c.role() == Role::Master && c.view().is_some_and(|v| 2 * v.members.len() > nodes)
    })
}

/// Master a is cut off so that nothing it sends arrives and it no longer hears c
/// and d: it removes them and numbers new majority views ([a, b, d, e], [a, b, e])
/// that no other node ever receives, while b takes over from the last view they
/// all hold. Before views were numbered in per-node classes, b numbered its view
/// like a's first one (seed 734: "two views with id 6"), and so did their
/// transactions.
#[test]
fn a_cut_off_master_and_its_successor_never_number_a_view_alike() {
    let mut sim = Sim::cluster(5, 7);
    assert_eq!(sim.master(), Some(A));
    sim.run_for(100);
    for to in [B, C, D, E] {
        sim.block(A, to);
    }
    sim.block(C, A);
    sim.block(D, A);
    let took_over = sim.run_until(10_000, |s| {
        quorate_master(s, B, 5) || s.violation().is_some()
    });
    assert_eq!(sim.violation(), None);
    assert!(took_over, "b did not take over:\n{}", sim.trace_text());
    assert!(
        sim.logs()
            .iter()
            .any(|l| l == "a: node c left the cluster (no heartbeat within the timeout)"),
        "a made a view without c that nobody received"
    );
    // The simulator checks every majority view installed against the others
    // with its id (one membership and one master per view id).
    sim.run_for(3_000);
    assert_eq!(sim.violation(), None);
}

/// The master dies past the commit point (its successor b applied COMMIT) while
/// slave c is cut off from everyone: c cannot reach a majority, leaves the cluster
/// and drops its staged layout; b takes over with d's and e's votes and completes
/// the transaction on d and e. c's drop on leaving decides nothing: the simulator
/// used to count it as the cluster aborting the transaction (seeds 553, 667).
#[test]
fn a_slave_leaving_with_a_staged_layout_does_not_abort_the_transaction() {
    let mut sim = Sim::cluster(5, 7);
    assert_eq!(sim.master(), Some(A));
    sim.run_for(100);
    sim.hold(A, Hold::DiskWrite);
    let r = sim.create(D, "dg1", 1);
    assert!(
        sim.run_until(1_000, |s| s.held(A) == 1),
        "past the commit point"
    );
    assert!(sim.node(C).kernel.staged.is_some(), "c staged the layout");
    sim.crash(A);
    sim.partition(&[C]);
    assert_eq!(answer(&mut sim, D, r), Ok(()));
    assert!(
        sim.logs()
            .iter()
            .any(|l| l.starts_with("c: node c: left the cluster")),
        "c left the cluster"
    );
    sim.heal();
    sim.start(A);
    settle(&mut sim, &[A, B, C, D, E]);
    assert!(everywhere_has(&sim, &[A, B, C, D, E], "dg1"));
}

/// Cuts the link from a to c while a completes the transaction whose disk write
/// it holds: c's COMMIT is lost, c keeps its staged layout. Heals at once (c never
/// misses enough heartbeats to suspect a).
fn lose_commit_to_c(sim: &mut Sim, dg: &str) {
    sim.hold(A, Hold::DiskWrite);
    let r = sim.create(A, dg, 1);
    assert!(
        sim.run_until(1_000, |s| s.held(A) == 1),
        "past the commit point"
    );
    assert!(sim.node(C).kernel.staged.is_some(), "c staged the layout");
    sim.block(A, C);
    sim.release(A);
    assert_eq!(answer(sim, A, r), Ok(()));
    sim.run_for(50);
    sim.heal();
    assert!(sim.node(C).kernel.staged.is_some(), "c's COMMIT was lost");
}

/// Seed 788: c's COMMIT of 1 was lost on a link cut for a moment, then the CHECK
/// of the next transaction arrived. c dropped its staged layout as if aborted and
/// checked the next change against its old configuration: c held seq 1 while the
/// master held seq 2 (and could have committed a layout no one else has). Every
/// CHECK now carries the master's committed transaction: c applies the one whose
/// COMMIT it missed first.
#[test]
fn a_slave_that_missed_a_commit_applies_it_before_the_next_check() {
    let mut sim = traced_cluster(3);
    lose_commit_to_c(&mut sim, "dg1");
    let r = sim.create(A, "dg2", 1);
    assert_eq!(answer(&mut sim, A, r), Ok(()));
    settle(&mut sim, &[A, B, C]);
    assert!(everywhere_has(&sim, &[A, B, C], "dg1"));
    assert!(everywhere_has(&sim, &[A, B, C], "dg2"));
}

/// A lost COMMIT with no transaction after it, and a lost ABORT: the master's
/// heartbeats say where its transactions stand, so c applies the committed one
/// and drops the aborted one instead of holding them (and staying busy) forever.
#[test]
fn a_slave_that_missed_a_commit_or_an_abort_catches_up_from_heartbeats() {
    let mut sim = traced_cluster(3);
    lose_commit_to_c(&mut sim, "dg1");
    settle(&mut sim, &[A, B, C]);
    assert!(everywhere_has(&sim, &[A, B, C], "dg1"));

    // b refuses the next change (a private disk group of that name) after c has
    // checked it; the ABORT to c is lost.
    sim.add_private_dg(B, "dg2");
    sim.hold(B, Hold::LocalCheck);
    let r = sim.create(A, "dg2", 1);
    assert!(sim.run_until(1_000, |s| s.held(B) == 1));
    sim.run_for(100);
    sim.block(A, C);
    sim.release(B);
    let err = answer(&mut sim, A, r).unwrap_err();
    assert!(err.starts_with("node b: "), "{err}");
    sim.run_for(50);
    sim.heal();
    settle(&mut sim, &[A, B, C]);
    assert!(nowhere_has(&sim, "dg2"));
}

/// c is frozen while a and b crash and start again: they form a new cluster (c is
/// not heard, so it cannot stop them) and a numbers its views from scratch, above
/// what the disks and the live nodes remember, reusing the ids of its dead start's
/// views that only c still holds (seed 1011). The dead start can act no more, so
/// that is no conflict; c, thawed, must see that its master restarted and join the
/// new cluster.
#[test]
fn a_frozen_slave_rejoins_a_cluster_its_restarted_master_formed_anew() {
    let mut sim = traced_cluster(3);
    sim.freeze(C, 4_000);
    sim.crash(A);
    sim.crash(B);
    sim.start(A);
    sim.start(B);
    let formed = sim.run_until(3_000, |s| s.all_members(&[A, B]));
    assert_eq!(sim.violation(), None);
    assert!(
        formed,
        "a and b formed a new cluster:\n{}",
        sim.trace_text()
    );
    settle(&mut sim, &[A, B, C]);
}

/// Seed 1086: master a dies right after its successor b applied COMMIT of dg1 (not
/// on the disks yet); b collects a majority's votes for the takeover and, while it
/// waits out a's lease, is frozen. c crashes too; a and c start again and, not
/// hearing b, form a new cluster from the disks and commit dg2 with the same
/// sequence number. Thawed, b used to read the disks and write its dg1
/// configuration over dg2. Votes given before the wait are now confirmed again
/// after it (and a takeover that stalls after that gives up): c and a, in a newer
/// cluster, refuse, and b rejoins.
#[test]
fn a_takeover_frozen_while_a_new_cluster_forms_gives_up() {
    let mut sim = traced_cluster(3);
    sim.arm_failpoint(A, "txn.after_successor_ack");
    sim.create(A, "dg1", 1);
    assert!(sim.run_until(2_000, |s| !s.is_up(A)));
    assert!(sim.run_until(2_000, |s| s
        .core(B)
        .is_some_and(|c| c.role() == Role::TakingOver)));
    // c votes once it has seen a go too (at the latest a heartbeat timeout later);
    // b then waits out a's lease (1.2 s after a was last heard).
    sim.run_for(700);
    assert_eq!(sim.core(B).map(|c| c.role()), Some(Role::TakingOver));
    sim.freeze(B, 4_000);
    sim.crash(C);
    sim.start(A);
    sim.start(C);
    let formed = sim.run_until(3_000, |s| s.all_members(&[A, C]));
    assert_eq!(sim.violation(), None);
    assert!(
        formed,
        "a and c formed a new cluster:\n{}",
        sim.trace_text()
    );
    let r = sim.create(A, "dg2", 1);
    assert_eq!(answer(&mut sim, A, r), Ok(()));
    settle(&mut sim, &[A, B, C]);
    assert!(everywhere_has(&sim, &[A, B, C], "dg2"));
    assert!(sim
        .logs()
        .iter()
        .any(|l| l.starts_with("b: node b: left the cluster")));
}

/// Seeds 434, 1680, 1708, 1776: a View was lost on a link cut for a moment (not
/// long enough for anyone to suspect anyone), and nothing would ever send it again:
/// the member stayed in an older view of the same master for good. The master now
/// sends its view again to a member whose heartbeats name an older one.
#[test]
fn a_member_that_missed_a_view_gets_it_again() {
    let mut cfg = plexd_coordinator::sim::SimConfig::new(4, 11);
    cfg.trace = true;
    let mut sim = Sim::new(cfg);
    for id in [A, B, C] {
        sim.start(id);
    }
    settle(&mut sim, &[A, B, C]);
    sim.block(A, C);
    sim.start(D);
    assert!(sim.run_until(2_000, |s| s
        .core(A)
        .and_then(|c| c.view())
        .is_some_and(|v| v.contains(D))));
    sim.run_for(30);
    sim.heal();
    settle(&mut sim, &[A, B, C, D]);
}

/// Seeds 705 and 1514: the random runs thaw every node for their quiet period by
/// clearing its freeze, but the messages that had waited for it stayed queued
/// until the old thaw time, so newer messages on the same connection overtook
/// them. Here b, the successor, applies COMMIT of a change it forwarded, its ack
/// is lost and it is frozen; a removes b (the View waits for b) and, once b's
/// lease has run out, aborts the change. b thawed before the abort used to get the
/// Outcome 'not applied' before that View and answer its client so while holding
/// the change. `Sim::thaw` delivers the waiting events first.
#[test]
fn a_thawed_node_gets_its_waiting_messages_first() {
    let mut sim = traced_cluster(3);
    sim.hold(C, Hold::KernelPrepare);
    let r = sim.create(B, "dg1", 1);
    assert!(sim.run_until(1_000, |s| s.held(C) == 1));
    sim.run_for(50);
    assert!(sim.node(B).kernel.staged.is_some(), "b prepared");
    sim.block(B, A);
    sim.release(C);
    assert!(sim.run_until(1_000, |s| s.node(B).kernel.staged.is_none()));
    assert!(sim.node(B).kernel.active.groups.contains_key("dg1"));
    sim.freeze(B, 10_000);
    assert!(sim.run_until(3_000, |s| s
        .core(A)
        .and_then(|c| c.view())
        .is_some_and(|v| !v.contains(B))));
    // The View removing b reaches b (and waits for it) within the network delay.
    sim.run_for(100);
    sim.thaw(B);
    assert!(sim
        .run_until(3_000, |s| s.logs().iter().any(|l| l
            .starts_with("a: transaction ")
            && l.contains(" failed: "))));
    let answer = answer(&mut sim, B, r);
    assert!(
        answer
            .as_ref()
            .is_err_and(|e| e.contains("outcome unknown")),
        "{answer:?}"
    );
    sim.heal();
    settle(&mut sim, &[A, B, C]);
    assert!(nowhere_has(&sim, "dg1"));
}

/// Seed 1996: a, cut off from b and c just before the cluster forms, still counts
/// them alive and forms alone (reading configuration seq 0), waiting for joins;
/// b and c, no longer hearing a, form their own cluster and commit dg1 (seq 1).
/// b dies and the network heals: c, out of its cluster, joins a, whose view so
/// gained a majority holding seq 0 while the disks held seq 1. A join that gives
/// a view its first majority now waits until the members left other clusters a
/// lease ago and checks the disks: a abdicates, and the cluster forms again from
/// the disks.
#[test]
fn a_master_that_formed_alone_checks_the_disks_before_a_majority_joins() {
    let mut cfg = plexd_coordinator::sim::SimConfig::new(3, 11);
    cfg.trace = true;
    let mut sim = Sim::new(cfg);
    for id in [A, B, C] {
        sim.start(id);
    }
    sim.run_for(350);
    sim.partition(&[A]);
    assert!(sim.run_until(1_000, |s| s
        .core(A)
        .is_some_and(|c| c.role() == Role::Master)));
    assert!(sim.run_until(2_000, |s| s.all_members(&[B, C])));
    let r = sim.create(B, "dg1", 1);
    assert_eq!(answer(&mut sim, B, r), Ok(()));
    assert_eq!(
        sim.core(A).map(|c| c.role()),
        Some(Role::Master),
        "a still waits for joins:\n{}",
        sim.trace_text()
    );
    sim.crash(B);
    sim.heal();
    let formed = sim.run_until(5_000, |s| s.all_members(&[A, C]));
    assert_eq!(sim.violation(), None);
    assert!(formed, "a and c form a cluster:\n{}", sim.trace_text());
    sim.start(B);
    settle(&mut sim, &[A, B, C]);
    assert!(everywhere_has(&sim, &[A, B, C], "dg1"));
}

/// Seed 1940: master a is frozen past its lease; b takes over with c and commits
/// dg1, then b dies and c leaves for want of quorum. Every live node is idle and
/// a, still frozen, is the only node in the Master role: the simulator compared
/// its stale configuration with the disks ('the disk holds seq 1 but master a
/// holds seq 0'). A master without a lease acts no more (it abdicates on its next
/// tick); the idle-cluster check now looks only at a master that holds one.
#[test]
fn a_master_frozen_past_its_lease_is_no_measure_of_the_cluster() {
    let mut sim = traced_cluster(3);
    sim.freeze(A, 6_000);
    assert!(sim.run_until(5_000, |s| quorate_master(s, B, 3)
        && s.core(C).and_then(|c| c.view()) == s.core(B).and_then(|c| c.view())
        && s.core(B).is_some_and(|c| c.is_idle())));
    let r = sim.create(B, "dg1", 1);
    assert_eq!(answer(&mut sim, B, r), Ok(()));
    sim.crash(B);
    sim.run_for(1_000);
    assert_eq!(sim.core(A).map(|c| c.role()), Some(Role::Master));
    assert_eq!(sim.violation(), None);
    sim.start(B);
    settle(&mut sim, &[A, B, C]);
    assert!(everywhere_has(&sim, &[A, B, C], "dg1"));
}

/// Seeds 0 and 379: the COMMIT to the designated successor was lost on a link cut
/// for a moment; the master waited for its ack for good (only CHECK and PREPARE
/// had a timeout), its transaction and every queued request and join stuck
/// behind it. The master now sends the COMMIT again when no ack came within a
/// heartbeat timeout.
#[test]
fn a_commit_lost_on_the_way_to_the_successor_is_sent_again() {
    let mut sim = traced_cluster(3);
    sim.hold(C, Hold::KernelPrepare);
    let r = sim.create(A, "dg1", 1);
    assert!(sim.run_until(1_000, |s| s.held(C) == 1));
    sim.run_for(50);
    assert!(sim.node(B).kernel.staged.is_some(), "b prepared");
    sim.block(A, B);
    sim.release(C);
    sim.run_for(50);
    sim.heal();
    assert!(sim.node(B).kernel.staged.is_some(), "b's COMMIT was lost");
    assert_eq!(answer(&mut sim, A, r), Ok(()));
    settle(&mut sim, &[A, B, C]);
    assert!(everywhere_has(&sim, &[A, B, C], "dg1"));
}

/// Seed 9202: the transaction ids of a restarted master's reused views recur too.
/// A view id comes back when a dead start made views above the newest transaction
/// on the disks. Here a and c form the cluster (view 6, where they open their
/// starts); b joins (view 9) and is frozen with the open of its start prepared, so
/// a removes it (view 12, aborting that open: b's start was never open, nothing to
/// recover) and 12.1 fails there (c refuses it). a and c restart and form anew from
/// the disks (view 6 on them), reaching view 12 again (b, frozen, does not tell
/// them of it), and the new 12.1 commits. The simulator took that for committing
/// an aborted transaction; it now forgets the aborts of a dead start's view when a
/// new start reuses its id.
#[test]
fn a_restarted_master_may_reuse_the_ids_of_its_dead_starts_transactions() {
    let mut sim = two_of_three_ac();
    sim.hold(B, Hold::KernelPrepare);
    sim.start(B);
    assert!(
        sim.run_until(2_000, |s| s.held(B) == 1),
        "b prepares the open of its start:\n{}",
        sim.trace_text()
    );
    sim.freeze(B, 8_000);
    let removed = sim.run_until(5_000, |s| {
        s.core(A)
            .and_then(|c| c.view())
            .is_some_and(|v| !v.contains(B))
            && s.all_members(&[A, C])
    });
    assert!(removed, "a removes b:\n{}", sim.trace_text());
    let first = sim.core(A).and_then(|c| c.view()).map(|v| v.id);
    sim.add_private_dg(C, "dg1");
    let r = sim.create(A, "dg1", 1);
    assert!(answer(&mut sim, A, r).is_err(), "c refuses dg1");
    let aborted = sim
        .logs()
        .iter()
        .rev()
        .find_map(|l| {
            let rest = l.strip_prefix("a: transaction ")?;
            rest.contains("exists as a private disk group")
                .then(|| rest.split(' ').next().map(str::to_string))?
        })
        .expect("a logs the failed transaction");
    sim.crash(A);
    sim.crash(C);
    sim.start(A);
    sim.start(C);
    let reused = sim.run_until(3_000, |s| {
        s.all_members(&[A, C]) && s.core(A).and_then(|c| c.view()).map(|v| v.id) == first
    });
    assert!(
        reused,
        "the new start reached view {first:?}:\n{}",
        sim.trace_text()
    );
    // The new start's transactions in that view, up to the id of the aborted one.
    let mut n = 2;
    while sim.disk().map(|d| d.txn.to_string()) != Some(aborted.clone()) {
        assert!(n < 8, "no transaction {aborted} in the new start's view");
        let r = sim.create(A, &format!("dg{n}"), 1);
        assert_eq!(answer(&mut sim, A, r), Ok(()));
        n += 1;
    }
    sim.thaw(B);
    sim.release(B);
    settle_open(&mut sim, &[A, B, C]);
    assert!(everywhere_has(&sim, &[A, B, C], &format!("dg{}", n - 1)));
}

/// Starts a and c only and lets them form a cluster; b stays down.
fn two_of_three_ac() -> Sim {
    let mut cfg = plexd_coordinator::sim::SimConfig::new(3, 11);
    cfg.trace = true;
    let mut sim = Sim::new(cfg);
    sim.start(A);
    sim.start(C);
    settle_open(&mut sim, &[A, C]);
    sim
}

/// Seed 15188: successor b applies COMMIT of a change, its ack is lost and b is
/// cut off; b leaves the cluster for want of quorum, and a aborts the change once
/// b's lease has run out. b, out of the cluster and fenced, still holds the change
/// until it joins again: the simulator reported 'change failed but node b applied
/// it'. Only members and serving data planes must never hold a failed change.
#[test]
fn a_cut_off_successor_may_hold_an_aborted_change_until_it_rejoins() {
    let mut sim = traced_cluster(3);
    sim.hold(C, Hold::KernelPrepare);
    let r = sim.create(A, "dg1", 1);
    assert!(sim.run_until(1_000, |s| s.held(C) == 1));
    sim.run_for(50);
    sim.block(B, A);
    sim.block(B, C);
    sim.release(C);
    assert!(sim.run_until(1_000, |s| s.node(B).kernel.staged.is_none()));
    assert!(sim.node(B).kernel.active.groups.contains_key("dg1"));
    sim.block(A, B);
    sim.block(C, B);
    let err = answer(&mut sim, A, r).unwrap_err();
    assert!(err.starts_with("node b: "), "{err}");
    sim.heal();
    settle(&mut sim, &[A, B, C]);
    assert!(nowhere_has(&sim, "dg1"));
}

/// The 2 | 3 heal test of tests/tests/partition.rs (once in three runs): heartbeats a
/// cut-off master sent while it still held its lease sat in TCP buffers and arrived
/// after the heal, after it had abdicated; their `leased` made the majority's master
/// give way to a view nobody led. A heartbeat now says which of the recipient's
/// stamps it heard last (`heard`), and only one that left within a heartbeat timeout
/// of that stamp can make a master give way.
#[test]
fn a_cut_off_masters_buffered_heartbeats_make_nobody_give_way_after_the_heal() {
    let mut sim = traced_cluster(3);
    sim.partition_buffered(&[A]);
    // Healed once c follows b (a's buffered View removing c, if a made one before
    // it abdicated, then finds c with another master and is ignored).
    assert!(
        sim.run_until(10_000, |s| quorate_master(s, B, 3)
            && s.core(C).and_then(|c| c.view())
                == s.core(B).and_then(|c| c.view())
            && s.core(A).is_some_and(|c| c.role() != Role::Master)),
        "b takes over, a abdicates:\n{}",
        sim.trace_text()
    );
    let b_view = sim.core(B).and_then(|c| c.view()).map(|v| v.id);
    sim.heal();
    settle(&mut sim, &[A, B, C]);
    assert_eq!(sim.violation(), None);
    assert_eq!(
        sim.master(),
        Some(B),
        "b, the majority's master, still leads (it held view {b_view:?}):\n{}",
        sim.trace_text()
    );
}

/// The whole cluster frozen at once for three heartbeat timeouts, less than a
/// lease (a host or VM stall). Each node thaws with its own tick first, every peer
/// unheard for longer than the timeout and their heartbeats still queued. The
/// time a node did not run is not its peers' silence: nobody is declared gone,
/// the view and its master stay, every data plane serves throughout, and a change
/// commits right after. Without `count_out_own_stall` every node found the others
/// gone at its first tick and the cluster broke up and formed again.
#[test]
fn a_cluster_frozen_whole_for_less_than_a_lease_keeps_its_view_and_serves_throughout() {
    let mut sim = Sim::new(SimConfig {
        trace: true,
        lease_ms: 3_000,
        ..SimConfig::new(3, 7)
    });
    for id in [A, B, C] {
        sim.start(id);
    }
    settle_open(&mut sim, &[A, B, C]);
    // A lease confirmed after the settle, so every one is a whole lease ahead.
    sim.run_for(300);
    let view = sim.core(A).and_then(|c| c.view()).cloned().expect("a view");
    let logs = sim.logs().len();
    for id in [A, B, C] {
        sim.freeze(id, 1_500);
    }
    let mut unserved = Vec::new();
    sim.run_until(3_500, |s| {
        for id in [A, B, C] {
            if !s.serving(id) && !unserved.contains(&id) {
                unserved.push(id);
            }
        }
        false
    });
    assert_eq!(sim.violation(), None, "{}", sim.trace_text());
    assert!(
        unserved.is_empty(),
        "nodes {unserved:?} stopped serving across the freeze:\n{}",
        sim.trace_text()
    );
    for id in [A, B, C] {
        assert_eq!(
            sim.core(id).and_then(|c| c.view()),
            Some(&view),
            "node {id} after the freeze:\n{}",
            sim.trace_text()
        );
    }
    let after = &sim.logs()[logs..];
    assert!(
        !after
            .iter()
            .any(|l| l.contains("is gone") || l.contains("left the cluster")),
        "a node was found gone or left after the freeze:\n{}",
        after.join("\n")
    );
    assert_eq!(
        after
            .iter()
            .filter(|l| l.contains("did not run for"))
            .count(),
        3,
        "each node notices its own stall once:\n{}",
        after.join("\n")
    );
    // `cluster status` says each node stalled.
    for id in [A, B, C] {
        let line = sim
            .core(id)
            .map(|c| c.status_line(sim.now_ms()))
            .unwrap_or_default();
        assert!(
            line.contains("; last stall: did not run for 1.5 s ("),
            "node {id}: {line}"
        );
    }
    let r = sim.create(B, "dg1", 1);
    assert_eq!(answer(&mut sim, B, r), Ok(()));
    settle(&mut sim, &[A, B, C]);
    assert!(everywhere_has(&sim, &[A, B, C], "dg1"));
}

/// Master a frozen past the heartbeat timeout but inside its lease: b and c find
/// it gone and b starts a takeover, waiting out a's lease. Thawed, a no longer
/// finds b and c gone at its first tick (`count_out_own_stall`): it stays master
/// for what is left of its lease, though they no longer confirm it. A change asked
/// of a at the thaw must then have one outcome everywhere: acknowledged and on
/// every node and the disk, or refused and nowhere. Then a joins b's cluster.
#[test]
fn a_master_thawed_inside_its_lease_during_a_takeover_gives_one_outcome() {
    for freeze_ms in [550, 700, 850] {
        let mut sim = traced_cluster(3);
        sim.freeze(A, freeze_ms);
        sim.run_for(freeze_ms + 1);
        let r = sim.create(A, "dg1", 1);
        let outcome = answer(&mut sim, A, r);
        settle(&mut sim, &[A, B, C]);
        assert_eq!(sim.violation(), None, "{}", sim.trace_text());
        match &outcome {
            Ok(()) => assert!(
                everywhere_has(&sim, &[A, B, C], "dg1"),
                "frozen {freeze_ms} ms: acknowledged but not everywhere:\n{}",
                sim.trace_text()
            ),
            Err(e) if e.contains("outcome unknown") => {}
            Err(_) => assert!(
                nowhere_has(&sim, "dg1"),
                "frozen {freeze_ms} ms: refused ({outcome:?}) but applied somewhere:\n{}",
                sim.trace_text()
            ),
        }
        eprintln!(
            "master frozen {freeze_ms} ms, change at the thaw: {outcome:?}; master now {:?}",
            sim.master()
        );
    }
}

/// A node frozen past its lease and cut off from the others while frozen wakes
/// into the partition: the stall rule and a partition at once. Thawed, it leaves the
/// frozen time out of its peers' silence (`count_out_own_stall`), so at first it
/// still counts them as heard, while its lease, on the real clock, ran out during
/// the freeze and the others have gone on without it. It must refuse a change asked
/// of it at the thaw, serve nothing from the thaw to the heal, find itself alone
/// within a few heartbeat timeouts, and rejoin after the heal with the others'
/// change. Master and slave, with the partition dropping what it cuts and with it
/// keeping that in buffers delivered at the heal (connections that outlive it).
#[test]
fn a_node_frozen_and_cut_off_meanwhile_wakes_into_the_partition_serving_and_changing_nothing() {
    const LEASE_MS: u64 = 1_000; // SimConfig's default
    for (frozen, buffered) in [(A, false), (A, true), (C, false), (C, true)] {
        let what = format!(
            "node {frozen} frozen and cut off ({})",
            if buffered { "buffered" } else { "dropped" }
        );
        let mut sim = traced_cluster(3);
        let others: Vec<u32> = [A, B, C].into_iter().filter(|&i| i != frozen).collect();
        sim.freeze(frozen, 3 * LEASE_MS);
        sim.run_for(100);
        if buffered {
            sim.partition_buffered(&[frozen]);
        } else {
            sim.partition(&[frozen]);
        }
        // The others go on without it (taking over first when it was master,
        // waiting out its lease) and change.
        // (`Sim::master` sees two quorate masters while the frozen one still thinks
        // it leads.)
        let master = |s: &Sim| others.iter().copied().find(|&i| quorate_master(s, i, 3));
        let formed = sim.run_until(2_800, |s| {
            master(s).is_some_and(|m| {
                let view = s.core(m).and_then(|c| c.view());
                view.is_some_and(|v| !v.contains(frozen))
                    && others
                        .iter()
                        .all(|&i| s.core(i).is_some_and(|c| c.view() == view && c.is_idle()))
            })
        });
        assert!(
            formed,
            "{what}: the others did not go on:\n{}",
            sim.trace_text()
        );
        let m = master(&sim).expect("a master");
        let r = sim.create(m, "dg1", 1);
        assert_eq!(answer(&mut sim, m, r), Ok(()), "{what}");
        // The thaw, inside the partition: a change asked of it at once is refused.
        let logs = sim.logs().len();
        let thaw_at = sim.run_until(3 * LEASE_MS, |s| {
            s.node(frozen).frozen_until_ms <= s.now_ms()
        });
        assert!(thaw_at, "{what}: still frozen");
        let r = sim.create(frozen, "dg2", 1);
        let refused = answer(&mut sim, frozen, r);
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| !e.contains("outcome unknown")),
            "{what}: a change asked at the thaw: {refused:?}\n{}",
            sim.trace_text()
        );
        // Alone and not serving, from the thaw until the heal.
        let mut served = false;
        sim.run_until(2_000, |s| {
            served |= s.serving(frozen);
            false
        });
        assert!(
            !served,
            "{what}: it served after the thaw:\n{}",
            sim.trace_text()
        );
        let alone = sim
            .core(frozen)
            .and_then(|c| c.view())
            .is_none_or(|v| v.members.len() <= 1);
        assert!(
            alone && !quorate_master(&sim, frozen, 3),
            "{what}: 2 s after the thaw it still holds a view with others:\n{}",
            sim.trace_text()
        );
        assert!(
            sim.logs()[logs..]
                .iter()
                .any(|l| l.contains("did not run for")),
            "{what}: it did not notice its stall:\n{}",
            sim.trace_text()
        );
        assert_eq!(sim.violation(), None, "{what}:\n{}", sim.trace_text());
        sim.heal();
        settle(&mut sim, &[A, B, C]);
        assert_eq!(sim.master(), Some(m), "{what}: the others' master leads");
        assert!(everywhere_has(&sim, &[A, B, C], "dg1"), "{what}");
        assert!(nowhere_has(&sim, "dg2"), "{what}");
    }
}

/// The other side of `count_out_own_stall`: a node that is slow rather than
/// stopped (each of its events 150-170 ms after the last, past the 100 ms
/// heartbeat interval) still finds a dead peer gone. Only the time beyond an
/// interval per gap is left out of the peer's silence, so it keeps growing (here
/// by about 120 of every 170 ms). Leaving the whole gap out, b found c gone only
/// after more than 4 s.
#[test]
fn a_node_slow_at_every_step_still_finds_a_dead_peer_gone() {
    let mut sim = Sim::new(SimConfig {
        trace: true,
        connection_lost_percent: 0,
        lease_ms: 3_000,
        ..SimConfig::new(3, 7)
    });
    for id in [A, B, C] {
        sim.start(id);
    }
    settle_open(&mut sim, &[A, B, C]);
    sim.crash(C);
    let gone = "b: node b: node c is gone (no heartbeat within the timeout)";
    let mut found_ms = None;
    for round in 0..40 {
        sim.freeze(B, 150);
        sim.run_for(170);
        if sim.logs().iter().any(|l| l.starts_with(gone)) {
            found_ms = Some(170 * (round + 1));
            break;
        }
    }
    assert_eq!(sim.violation(), None, "{}", sim.trace_text());
    let found_ms = found_ms.unwrap_or_else(|| {
        panic!(
            "slow b never found dead c gone in 40 slow steps:\n{}",
            sim.trace_text()
        )
    });
    assert!(
        sim.logs()
            .iter()
            .any(|l| l.contains("b: node b: did not run for")),
        "b did not notice its stalls:\n{}",
        sim.trace_text()
    );
    // A peer's silence grows by about 120 of every 170 ms (an interval per gap
    // and the 20 ms b runs): the 500 ms timeout is reached in about 850 ms.
    // Leaving the whole gap out it grows by 20 and takes over 4 s.
    assert!(
        found_ms <= 2_000,
        "slow b found dead c gone only {found_ms} ms after the crash (timeout 500 ms):\n{}",
        sim.trace_text()
    );
}

/// Seed 12664 (and 11 more of 100,000): b confirmed master a's lease, then crashed
/// and restarted while a was frozen; with c (also restarted) it formed a new
/// cluster inside a's lease, and both masters held leases at once. A member keeps
/// a record, a lease ahead, that it may be a member (`Action::RecordMembership`, a
/// file in the daemon); a restarted node counts as a member of another cluster
/// until a lease after that record, so no cluster forms with it before a's lease
/// has surely run out.
#[test]
fn nodes_restarted_inside_a_frozen_masters_lease_form_no_cluster_before_it_ran_out() {
    let mut sim = traced_cluster(3);
    sim.freeze(A, 3_000);
    sim.crash(B);
    sim.crash(C);
    sim.start(B);
    sim.start(C);
    let formed = sim.run_until(4_000, |s| {
        s.violation().is_some() || quorate_master(s, B, 3) || quorate_master(s, C, 3)
    });
    sim.run_for(500); // the new master's first lease
    assert_eq!(sim.violation(), None, "{}", sim.trace_text());
    assert!(formed, "b and c form a cluster once a's lease ran out");
    settle(&mut sim, &[A, B, C]);
    assert_eq!(sim.violation(), None);
}

/// Seed 90212 (the last of 100,000 to fail): successor d, granted the takeover by
/// a majority, issued its disk write completing the lost master's committed
/// transaction and was frozen with the write queued; the voters, no longer hearing
/// d, helped a new cluster form from disks that did not hold the transaction yet;
/// d's write landed 2.9 s later and d answered success for a change the new
/// cluster never had. A write now carries a deadline (a takeover's: a lease after
/// its votes were asked for; a master's: its lease end) checked just before each
/// disk's write, and a voter counts as a member of the takeover's cluster for a
/// lease after it voted.
#[test]
fn a_takeover_write_held_up_by_a_freeze_never_lands_after_its_deadline() {
    let mut sim = traced_cluster(3);
    sim.arm_failpoint(A, "txn.after_successor_ack");
    sim.hold(B, Hold::DiskWrite);
    let _ = sim.create(C, "dg1", 1);
    assert!(
        sim.run_until(5_000, |s| s.held(B) == 1),
        "a dies after b acknowledged COMMIT; b takes over and issues its disk write:\n{}",
        sim.trace_text()
    );
    // b is frozen with the write queued; a restarts and forms a cluster with c.
    sim.freeze(B, 6_000);
    sim.release(B);
    sim.start(A);
    assert!(
        sim.run_until(5_500, |s| s.violation().is_some()
            || quorate_master(s, A, 3)
            || quorate_master(s, C, 3)),
        "a and c form a cluster while b is frozen:\n{}",
        sim.trace_text()
    );
    let m = if quorate_master(&sim, A, 3) { A } else { C };
    let r = sim.create(m, "dg2", 1);
    assert_eq!(answer(&mut sim, m, r), Ok(()), "{}", sim.trace_text());
    // b wakes: its write's deadline has passed, no disk takes it (it would write
    // a seq 1 without dg2 over the new cluster's), and b gives the takeover up
    // and rejoins.
    sim.thaw(B);
    settle(&mut sim, &[A, B, C]);
    assert_eq!(sim.violation(), None, "{}", sim.trace_text());
    assert!(
        sim.trace_text().contains("past its deadline: refused"),
        "the write waited past its deadline:\n{}",
        sim.trace_text()
    );
}

// ---------------------------------------------------------------------------
// The quorum disk (docs/PROTOCOL.md, "The quorum disk"): one more vote, for the
// node that holds its lease. Without it (`SimConfig::quorum_disk` false, the code
// before it) a 2-node cluster loses quorum with either node and a 2|2 split of 4
// leaves no side in charge: each scenario below asserts what only the disk's vote
// gives, and `*_without_a_quorum_disk_*` shows the same schedule failing without it.
// ---------------------------------------------------------------------------

/// A cluster of `nodes` with a quorum disk, run until master a counts its vote.
fn disk_cluster(nodes: u32) -> Sim {
    let mut sim = Sim::cluster_with_quorum_disk(nodes, 11);
    assert_eq!(sim.master(), Some(A));
    assert!(
        sim.run_until(10_000, |s| s.counts_disk_vote(A)),
        "master a acquires the quorum disk:\n{}",
        sim.trace_text()
    );
    assert_eq!(sim.quorum_disk().map(|r| r.owner), Some(A));
    sim
}

#[test]
fn two_nodes_with_a_quorum_disk_keep_a_master_when_the_slave_dies() {
    let mut sim = disk_cluster(2);
    sim.crash(B);
    // Three leases: a stays a leased master all along (its own vote and the disk's).
    let lost = sim.run_until(3_000, |s| !s.leased_master(A));
    assert!(!lost, "a lost its lease:\n{}", sim.trace_text());
    assert_eq!(sim.violation(), None, "{}", sim.trace_text());
    let r = sim.create(A, "dg1", 1);
    assert_eq!(answer(&mut sim, A, r), Ok(()), "{}", sim.trace_text());
    assert!(sim
        .disk()
        .is_some_and(|d| d.config.groups.contains_key("dg1")));
    // b comes back and joins.
    sim.start(B);
    settle(&mut sim, &[A, B]);
    assert!(everywhere_has(&sim, &[A, B], "dg1"));
}

#[test]
fn two_nodes_without_a_quorum_disk_lose_the_master_with_the_slave() {
    let mut sim = traced_cluster(2);
    sim.crash(B);
    let lost = sim.run_until(3_000, |s| !s.leased_master(A));
    assert!(lost, "without the disk's vote a alone is no majority");
}

#[test]
fn two_nodes_with_a_quorum_disk_take_over_when_the_master_dies() {
    let mut sim = disk_cluster(2);
    let r = sim.create(B, "dg1", 1);
    assert_eq!(answer(&mut sim, B, r), Ok(()));
    let died_ms = sim.now_ms();
    sim.crash(A);
    let took_over = sim.run_until(10_000, |s| s.master() == Some(B) && s.leased_master(B));
    assert!(
        took_over,
        "b takes over with the disk:\n{}",
        sim.trace_text()
    );
    assert_eq!(sim.violation(), None, "{}", sim.trace_text());
    // b waited for a's hold to run out (the record unchanged for lease_wait), then
    // for its own write's lease_wait before the vote counted.
    let cfg = sim.config();
    let lease_wait = cfg.lease_ms
        + plexd_coordinator::core::drift_allowance_ms(cfg.lease_ms)
        + cfg.lease_margin_ms;
    assert!(
        sim.now_ms() >= died_ms + 2 * lease_wait,
        "b took over after {} ms, before two lease waits",
        sim.now_ms() - died_ms
    );
    assert!(sim.counts_disk_vote(B));
    let r = sim.create(B, "dg2", 1);
    assert_eq!(answer(&mut sim, B, r), Ok(()), "{}", sim.trace_text());
    assert!(everywhere_has(&sim, &[B], "dg1") && everywhere_has(&sim, &[B], "dg2"));
    sim.start(A);
    settle(&mut sim, &[A, B]);
    assert!(everywhere_has(&sim, &[A, B], "dg2"));
}

/// 4 nodes and the disk: 5 votes, 3 needed. Split 2|2 with the designated
/// successor b on the other side: a's side (a, c and the disk it holds) stays in
/// charge; b and d cannot acquire the disk a keeps renewing, and refuse changes.
#[test]
fn four_nodes_split_two_two_leave_the_disk_holders_side_in_charge() {
    let mut sim = disk_cluster(4);
    sim.partition(&[A, C]);
    sim.run_for(6_000);
    assert_eq!(sim.violation(), None, "{}", sim.trace_text());
    assert!(sim.leased_master(A), "a is still a leased master");
    assert!(!sim.leased_master(B) && !sim.leased_master(D));
    assert!(!sim.counts_disk_vote(B) && !sim.counts_disk_vote(D));
    let r = sim.create(C, "dg1", 1);
    assert_eq!(answer(&mut sim, C, r), Ok(()), "{}", sim.trace_text());
    let r = sim.create(D, "dg2", 1);
    let err = answer(&mut sim, D, r).unwrap_err();
    assert!(err.contains("no quorum"), "{err}");
    assert!(
        err.contains("quorum disk"),
        "the reason names the disk: {err}"
    );
    heal_then_every_node_has(&mut sim, "dg1", "dg2");
}

/// Heals the network and settles every node in one idle view: each then holds
/// `has`, and none `lacks`.
fn heal_then_every_node_has(sim: &mut Sim, has: &str, lacks: &str) {
    sim.heal();
    let ids = sim.ids();
    settle(sim, &ids);
    assert!(everywhere_has(sim, &ids, has), "{}", sim.trace_text());
    assert!(nowhere_has(sim, lacks), "{}", sim.trace_text());
}

#[test]
fn four_nodes_split_two_two_without_a_quorum_disk_leave_nobody_in_charge() {
    let mut sim = traced_cluster(4);
    sim.partition(&[A, C]);
    sim.run_for(6_000);
    assert!(!sim.ids().into_iter().any(|id| sim.leased_master(id)));
}

/// a holds the disk and freezes for four leases: b takes the disk over and becomes
/// master. a thaws believing nothing happened: its hold ran out on its own clock,
/// so it never counts the disk's vote again; it rejoins as b's slave.
#[test]
fn a_frozen_disk_holder_thawing_after_another_acquired_it_does_not_use_the_vote() {
    let mut sim = disk_cluster(2);
    sim.freeze(A, 4_000);
    let took_over = sim.run_until(4_000, |s| s.master() == Some(B) && s.counts_disk_vote(B));
    assert!(
        took_over,
        "b takes over with the disk:\n{}",
        sim.trace_text()
    );
    sim.run_until(4_000, |s| {
        s.node(A).frozen_until_ms == 0 || s.now_ms() >= 4_000
    });
    sim.thaw(A);
    // The simulator checks after every event that at most one node counts the
    // disk's vote; a in particular never does again.
    let used = sim.run_until(3_000, |s| s.counts_disk_vote(A) || s.leased_master(A));
    assert!(
        !used,
        "a used the disk's vote after thawing:\n{}",
        sim.trace_text()
    );
    assert_eq!(sim.violation(), None, "{}", sim.trace_text());
    settle(&mut sim, &[A, B]);
    assert_eq!(sim.master(), Some(B));
}

/// a is frozen with a renewal write of the disk queued (issued, not yet carried
/// out); b takes the disk over meanwhile. When a thaws, the write's deadline has
/// passed: it never lands over b's record.
#[test]
fn a_renewal_queued_through_a_freeze_never_overwrites_the_new_holder() {
    let mut sim = disk_cluster(2);
    assert!(sim.run_until(1_000, |s| s.qdisk_writes_in_flight(A) == 1));
    sim.freeze(A, 4_000);
    let took_over = sim.run_until(4_000, |s| s.master() == Some(B) && s.counts_disk_vote(B));
    assert!(
        took_over,
        "b takes over with the disk:\n{}",
        sim.trace_text()
    );
    sim.thaw(A);
    sim.run_for(1_000);
    assert_eq!(sim.violation(), None, "{}", sim.trace_text());
    assert!(
        sim.trace_text().contains("quorum disk write")
            && sim.trace_text().contains("past its deadline: refused"),
        "a's queued write was refused:\n{}",
        sim.trace_text()
    );
    assert_eq!(sim.quorum_disk().map(|r| r.owner), Some(B));
    assert!(sim.counts_disk_vote(B));
    settle(&mut sim, &[A, B]);
}

/// Seed 11070931, made a scenario. 4 nodes and the disk: 5 votes, 3 needed.
/// a starts forming while all are alive, and its read of the disks stalls; cut
/// off, it acquires the quorum disk meanwhile (b, c and d never get to: their
/// disk I/O stalls). b, c and d form a cluster and commit dg1. a's read completes:
/// it forms alone with the configuration holding dg1, and b's cluster commits
/// dg2. Returns the simulator at that point: a is a master holding an older
/// configuration than the disks, and the quorum disk's vote starts counting for it a lease
/// wait after its write.
fn stale_master_acquiring_the_disk() -> Sim {
    use plexd_coordinator::sim::{Hold, SimConfig};
    let mut cfg = SimConfig::new(4, 11);
    cfg.quorum_disk = true;
    cfg.trace = true;
    cfg.connection_lost_percent = 100;
    let mut sim = Sim::new(cfg);
    sim.hold(A, Hold::DisksRead);
    sim.hold(A, Hold::QuorumDisk);
    for id in [B, C, D] {
        sim.hold(id, Hold::QuorumDisk);
    }
    for id in [A, B, C, D] {
        sim.start(id);
    }
    assert!(
        sim.run_until(3_000, |s| s.held_of(A, Hold::DisksRead) == 1),
        "a starts forming:\n{}",
        sim.trace_text()
    );
    sim.partition(&[A]);
    assert!(
        sim.run_until(5_000, |s| s.master() == Some(B)
            && s.all_members(&[B, C, D])),
        "b, c and d form a cluster:\n{}",
        sim.trace_text()
    );
    let r = sim.create(B, "dg1", 1);
    assert_eq!(answer(&mut sim, B, r), Ok(()));
    sim.release_kind(A, Hold::QuorumDisk);
    assert!(
        sim.run_until(5_000, |s| s.quorum_disk().is_some_and(|r| r.owner == A)),
        "a writes its quorum disk record:\n{}",
        sim.trace_text()
    );
    sim.release_kind(A, Hold::DisksRead);
    assert!(sim.run_until(500, |s| s.core(A).is_some_and(|c| c.role() == Role::Master)));
    let r = sim.create(B, "dg2", 1);
    assert_eq!(answer(&mut sim, B, r), Ok(()));
    let stale = sim.core(A).map_or(0, |c| c.config().seq);
    assert!(disk_seq(&sim) > stale, "a's seq {stale} is stale");
    assert!(
        !sim.counts_disk_vote(A),
        "a's vote counts only a lease wait after its write:\n{}",
        sim.trace_text()
    );
    sim
}

/// Runs until d is a member of a's view.
fn until_d_joins_a(sim: &mut Sim) {
    assert!(
        sim.run_until(1_000, |s| s
            .core(A)
            .and_then(|c| c.view())
            .is_some_and(|v| v.contains(D))),
        "d joins a:\n{}",
        sim.trace_text()
    );
}

/// Runs until the stale master a gives its view up, which it must do without ever
/// holding a lease, logging a line with `why`; request `r` (made to a) fails with
/// an error containing `error`.
fn a_gives_up_without_a_stale_lease(sim: &mut Sim, r: Option<RequestId>, why: &str, error: &str) {
    let done = sim.run_until(3_000, |s| {
        stale_and_leased(s, A) || s.core(A).is_some_and(|c| c.role() != Role::Master)
    });
    assert!(done, "a stays master:\n{}", sim.trace_text());
    assert!(
        !stale_and_leased(sim, A),
        "a holds a lease with an older configuration than the disks':\n{}",
        sim.trace_text()
    );
    assert_eq!(sim.violation(), None, "{}", sim.trace_text());
    assert!(
        sim.logs().iter().any(|l| l.contains(why)),
        "a logs why it gives its view up ({why}):\n{}",
        sim.trace_text()
    );
    let err = answer(sim, A, r).unwrap_err();
    assert!(err.contains(error), "{err}");
}

/// Whether node `id` holds a lease as master with a configuration older than the
/// disks'.
fn stale_and_leased(sim: &Sim, id: u32) -> bool {
    sim.leased_master(id) && sim.core(id).is_some_and(|c| c.config().seq < disk_seq(sim))
}

/// The stale master's view gains a member without a majority, then its first
/// majority from the quorum disk's vote (no join completes it, so the join's
/// check never ran: the seed's bug, a change of b's cluster overwritten). b and
/// c die, d leaves their cluster at once and joins a. The disks are read before
/// the disk's vote counts: they hold dg2, so a abdicates, and the cluster forms
/// again from the disks.
#[test]
fn a_stale_master_whose_first_majority_is_the_quorum_disks_vote_checks_the_disks() {
    let mut sim = stale_master_acquiring_the_disk();
    sim.crash(B);
    sim.crash(C);
    assert!(
        sim.run_until(1_000, |s| s
            .core(D)
            .is_some_and(|c| c.role() != Role::Slave)),
        "d leaves b's cluster:\n{}",
        sim.trace_text()
    );
    // d joins a a while after it left: a's view, then without a lease, lasts a
    // lease from the join, and the disks may be read a lease wait after d left.
    sim.run_for(300);
    sim.heal();
    until_d_joins_a(&mut sim);
    let r = sim.create(A, "dg3", 1);
    a_gives_up_without_a_stale_lease(
        &mut sim,
        r,
        "before the view's majority counted, the disks hold configuration seq",
        "another cluster committed since",
    );
    sim.start(B);
    sim.start(C);
    heal_then_every_node_has(&mut sim, "dg2", "dg3");
}

/// The seed's own order: d dies and restarts, and joins the stale master a; its
/// restart remembers it may have been a member of b's cluster a lease ago, so
/// the disks cannot be checked before a's view runs out of time without a lease:
/// a abdicates without ever holding one.
#[test]
fn a_stale_master_gaining_the_disks_vote_after_a_restarted_node_joined_never_holds_a_lease() {
    let mut sim = stale_master_acquiring_the_disk();
    sim.crash(D);
    sim.heal();
    sim.partition(&[A, D]);
    sim.start(D);
    until_d_joins_a(&mut sim);
    let r = sim.create(A, "dg3", 1);
    assert!(
        sim.run_until(2_000, |s| s.counts_disk_vote(A)),
        "a's quorum disk vote counts:\n{}",
        sim.trace_text()
    );
    let line = sim.core(A).map(|c| c.status_line(0)).unwrap_or_default();
    assert!(
        line.contains("checking the disks before the view's majority counts"),
        "{line}"
    );
    a_gives_up_without_a_stale_lease(
        &mut sim,
        r,
        "its view has a majority, but the disks could not be checked",
        "disks could not be checked",
    );
    heal_then_every_node_has(&mut sim, "dg2", "dg3");
}

/// Seed 13013279, made a scenario. 4 nodes and the disk, a master holding it.
/// Successor b applies the COMMIT of dg1 and its ack is lost; the network splits
/// a, d | b, c. a (with d and the disk: 3 of 5) aborts dg1 once b's lease has run
/// out and tells the client it was not applied. b, taking over with c, is one vote
/// short and acquires the disk, which a keeps renewing, until a dies. Then b's
/// takeover has its majority (b, c and the disk), a majority that meets a's only
/// in the disk: b must not complete dg1.
#[test]
fn a_successor_taking_over_through_the_quorum_disk_never_completes_what_the_master_aborted() {
    let (mut sim, r) = successor_cut_off_holding_its_commit();
    let err = answer(&mut sim, A, r).unwrap_err();
    assert!(err.contains("not applied"), "{err}");
    assert!(sim
        .core(B)
        .is_some_and(|c| c.config().groups.contains_key("dg1")));
    a_dies_then_b_leads_then_a_rejoins(&mut sim, |s| nowhere_has(s, "dg1"));
}

/// The same, with a's renewals of the disk stalled from the view that left b out
/// on: the disk still names the view b knows, so a does not abort (b could not
/// learn of it); its hold and lease run out, and the client hears that the
/// outcome is unknown. b's takeover then completes dg1.
#[test]
fn a_master_whose_disk_does_not_name_its_view_leaves_the_outcome_to_the_successor() {
    let (mut sim, r) = successor_cut_off_holding_its_commit();
    assert!(sim.run_until(2_000, |s| s
        .core(A)
        .and_then(|c| c.view())
        .is_some_and(|v| !v.contains(B))));
    sim.hold(A, Hold::QuorumDisk);
    let err = answer(&mut sim, A, r).unwrap_err();
    assert!(
        err.contains("outcome unknown"),
        "{err}\n{}",
        sim.trace_text()
    );
    a_dies_then_b_leads_then_a_rejoins(&mut sim, |s| {
        s.disk()
            .is_some_and(|d| d.config.groups.contains_key("dg1"))
    });
    assert!(everywhere_has(&sim, &[A, B, C, D], "dg1"));
}

/// a dies; b comes to lead a cluster with a lease (the invariants hold all along,
/// and `outcome` holds then); the network heals, a starts again, and every node
/// settles in b's cluster, where `outcome` holds too.
fn a_dies_then_b_leads_then_a_rejoins(sim: &mut Sim, outcome: impl Fn(&Sim) -> bool) {
    sim.crash(A);
    let settled = sim.run_until(15_000, |s| {
        s.violation().is_some() || (s.master() == Some(B) && s.leased_master(B))
    });
    assert_eq!(sim.violation(), None, "{}", sim.trace_text());
    assert!(settled, "b leads a cluster:\n{}", sim.trace_text());
    assert!(outcome(sim), "{}", sim.trace_text());
    sim.heal();
    sim.start(A);
    settle(sim, &[A, B, C, D]);
    assert!(outcome(sim), "{}", sim.trace_text());
}
/// 4 nodes and the disk, a master holding it: successor b applies the COMMIT of
/// dg1 (request returned), its ack is lost, and the network splits a, d | b, c.
fn successor_cut_off_holding_its_commit() -> (Sim, Option<RequestId>) {
    let mut sim = disk_cluster(4);
    settle_open(&mut sim, &[A, B, C, D]);
    sim.hold(C, Hold::KernelPrepare);
    let r = sim.create(A, "dg1", 1);
    assert!(sim.run_until(1_000, |s| s.held(C) == 1));
    sim.run_for(50);
    for to in [A, C, D] {
        sim.block(B, to);
    }
    sim.release(C);
    assert!(
        sim.run_until(1_000, |s| s
            .node(B)
            .kernel
            .active
            .groups
            .contains_key("dg1")),
        "b applies the COMMIT:\n{}",
        sim.trace_text()
    );
    sim.heal();
    sim.partition(&[A, D]);
    (sim, r)
}

// ---------------------------------------------------------------------------
// Resync under fences (core::resync). Volume v1 has four chunks (eight regions);
// v1-02 is detached, then attached again (SYNCING) and resynced by the master.
// ---------------------------------------------------------------------------

use plexd_coordinator::sim::{TOY_REGION_BYTES, TOY_VOLUME_BYTES};

const CHUNKS: u64 = TOY_VOLUME_BYTES / plexd_coordinator::core::RESYNC_CHUNK_BYTES;
/// The simulator tracks what a resync copied in regions.
const REGIONS: u64 = TOY_VOLUME_BYTES / TOY_REGION_BYTES;

/// A cluster of `ids` with volume v1 of two plexes, v1-02 STALE.
fn with_stale_plex(sim: &mut Sim, ids: &[u32]) {
    let r = sim.create(A, "v1", 2);
    assert_eq!(answer(sim, A, r), Ok(()));
    let r = sim.plex_io_error(A, "v1", "v1-02");
    assert_eq!(answer(sim, A, r), Ok(()));
    settle(sim, ids);
}

/// Whether v1-02 is ACTIVE on the disk.
fn resynced(sim: &Sim) -> bool {
    sim.disk()
        .is_some_and(|d| d.config.groups["v1"].plexes["v1-02"])
}

/// Runs until v1-02 is ACTIVE on the disk; checks that every chunk holds the
/// volume's data, and that no fence or quiesce is left behind.
fn until_resynced(sim: &mut Sim, ids: &[u32]) {
    let done = sim.run_until(20_000, resynced);
    assert_eq!(sim.violation(), None, "{}", sim.trace_text());
    assert!(done, "v1-02 never became ACTIVE:\n{}", sim.trace_text());
    assert_eq!(sim.synced("v1", "v1-02"), (0..REGIONS).collect());
    settle(sim, ids);
    sim.run_for(200);
    for &id in ids {
        assert!(
            sim.node(id).kernel.quiesced.is_empty(),
            "node {id} quiesced"
        );
        assert!(
            sim.core(id).unwrap().fences_held().is_empty(),
            "node {id} fenced"
        );
    }
}

#[test]
fn an_attached_plex_is_copied_chunk_by_chunk_under_fences_then_active() {
    let mut sim = traced_cluster(3);
    with_stale_plex(&mut sim, &[A, B, C]);
    let r = sim.attach(B, "v1", "v1-02");
    assert_eq!(answer(&mut sim, B, r), Ok(()));
    until_resynced(&mut sim, &[A, B, C]);
    assert_eq!(sim.coverage.chunks_copied as u64, CHUNKS);
    assert_eq!(sim.coverage.chunks_raced, 0);
    assert_eq!(sim.coverage.resyncs_done, 1);
}

#[test]
fn a_member_joining_during_a_chunk_copy_gets_the_chunk_copied_again() {
    let mut sim = traced_cluster(3);
    sim.crash(C);
    let gone = sim.run_until(5_000, |s| {
        s.core(A)
            .and_then(|c| c.view())
            .is_some_and(|v| !v.contains(C))
    });
    assert!(gone, "C stayed in the view:\n{}", sim.trace_text());
    settle(&mut sim, &[A, B]);
    with_stale_plex(&mut sim, &[A, B]);
    // The master's first copy stays between its read and its write.
    sim.hold(A, Hold::Copy);
    let r = sim.attach(A, "v1", "v1-02");
    assert_eq!(answer(&mut sim, A, r), Ok(()));
    assert!(sim.run_until(5_000, |s| s.held(A) == 1));
    // C joins meanwhile: it was not fenced, and its data plane serves v1.
    sim.start(C);
    let serving = sim.run_until(5_000, |s| s.writers("v1").contains(&C));
    assert!(serving, "C never served v1:\n{}", sim.trace_text());
    sim.release(A);
    until_resynced(&mut sim, &[A, B, C]);
    assert_eq!(
        sim.coverage.chunks_raced, 1,
        "the raced chunk is copied again"
    );
    assert_eq!(sim.coverage.chunks_copied as u64, CHUNKS + 1);
}

#[test]
fn a_transaction_during_a_chunk_copy_breaks_the_fences_and_the_chunk_is_copied_again() {
    let mut sim = traced_cluster(3);
    with_stale_plex(&mut sim, &[A, B, C]);
    sim.hold(A, Hold::Copy);
    let r = sim.attach(A, "v1", "v1-02");
    assert_eq!(answer(&mut sim, A, r), Ok(()));
    assert!(sim.run_until(5_000, |s| s.held(A) == 1));
    // A change's kernel phase needs the data plane on every node: fences break.
    let r = sim.create(C, "dg2", 1);
    assert_eq!(answer(&mut sim, C, r), Ok(()));
    assert!(!sim.writers("v1").is_empty());
    sim.release(A);
    until_resynced(&mut sim, &[A, B, C]);
    assert!(sim.coverage.chunks_raced >= 1);
}

#[test]
fn a_fence_whose_lease_runs_out_gets_the_chunk_copied_again() {
    let mut sim = traced_cluster(3);
    with_stale_plex(&mut sim, &[A, B, C]);
    sim.hold(A, Hold::Copy);
    let r = sim.attach(A, "v1", "v1-02");
    assert_eq!(answer(&mut sim, A, r), Ok(()));
    assert!(sim.run_until(5_000, |s| s.held(A) == 1));
    // A copy slower than the fence lease: B and C resume I/O on their own.
    let resumed = sim.run_until(10_000, |s| s.writers("v1").contains(&B));
    assert!(resumed, "B kept its fence:\n{}", sim.trace_text());
    sim.release(A);
    until_resynced(&mut sim, &[A, B, C]);
    assert!(sim.coverage.chunks_raced >= 1);
}

#[test]
fn a_master_frozen_mid_copy_never_lands_its_copy_after_the_new_master_resynced() {
    let mut sim = traced_cluster(3);
    with_stale_plex(&mut sim, &[A, B, C]);
    let r = sim.attach(B, "v1", "v1-02");
    assert_eq!(answer(&mut sim, B, r), Ok(()));
    // Freeze A between a copy's read and its write, for three leases.
    assert!(sim.run_until(5_000, |s| s.copies_in_flight().iter().any(|c| c.node == A)));
    sim.freeze(A, 3 * sim.config().lease_ms);
    // B takes over, starts the resync again and makes v1-02 ACTIVE.
    let done = sim.run_until(20_000, |s| s.master() == Some(B) && resynced(s));
    assert_eq!(sim.violation(), None, "{}", sim.trace_text());
    assert!(done, "B did not finish the resync:\n{}", sim.trace_text());
    // A thaws: its copy's write is refused (past its lease), it rejoins.
    settle(&mut sim, &[A, B, C]);
    assert_eq!(sim.violation(), None, "{}", sim.trace_text());
    assert_eq!(sim.coverage.copies_refused, 1);
    assert!(sim.copies_in_flight().is_empty());
    assert_eq!(sim.synced("v1", "v1-02"), (0..REGIONS).collect());
}

// ---------------------------------------------------------------------------
// Node-crash recovery (issue 11, without a dirty region log): core/recovery.rs.
// The simulator marks the plexes a serving data plane may have left different
// when it dies (`Sim::crash`) and checks, at every disk write, that once the dead
// start is no longer open at most one of them is readable until a resync made the
// others copies of it.
// ---------------------------------------------------------------------------

/// Whether the disk says `volume`'s plexes are all ACTIVE (none SYNCING).
fn all_active_on_disk(sim: &Sim, volume: &str) -> bool {
    sim.disk().is_some_and(|d| {
        d.config
            .groups
            .get(volume)
            .is_some_and(|g| g.syncing.is_empty() && g.plexes.values().all(|&a| a))
    })
}

/// A 3-node cluster with the 2-plex mirror v1, served everywhere.
fn mirrored_cluster() -> Sim {
    let mut sim = traced_cluster(3);
    let r = sim.create(B, "v1", 2);
    assert_eq!(answer(&mut sim, B, r), Ok(()));
    settle(&mut sim, &[A, B, C]);
    assert!([A, B, C].iter().all(|&id| sim.serving(id)));
    sim
}

/// Runs until the disk records the recovery of start `start`; then until the
/// resync made v1 whole again and every node in `ids` is open.
fn recovered_and_resynced(sim: &mut Sim, start: (u32, u64), ids: &[u32]) {
    let recovered = sim.run_until(15_000, |s| {
        s.disk()
            .is_some_and(|d| d.config.recovered.contains(&start))
    });
    assert!(
        recovered,
        "start {start:?} is recovered:\n{}",
        sim.trace_text()
    );
    assert_eq!(sim.violation(), None);
    let whole = sim.run_until(15_000, |s| {
        all_active_on_disk(s, "v1") && s.all_members(ids) && s.opened(ids)
    });
    assert!(whole, "v1 resynchronised:\n{}", sim.trace_text());
    sim.check().expect("invariants hold");
}

/// A slave dies serving a mirror: once its lease ran out the master commits the
/// recovery (v1 keeps one readable plex, the other SYNCING), the resync copies it,
/// and the node's new start is opened when it comes back. Without the recovery
/// (the master never recovers a lost start) the simulator reports both plexes
/// readable after the start left the open set... or the test times out waiting.
#[test]
fn a_crashed_node_makes_the_master_recover_its_mirrors() {
    let mut sim = mirrored_cluster();
    let dead = (C, sim.node(C).inc);
    sim.crash(C);
    assert_eq!(sim.coverage.divergences, 1, "c died serving v1");
    let recovered = sim.run_until(15_000, |s| {
        s.disk().is_some_and(|d| d.config.recovered.contains(&dead))
    });
    assert!(recovered, "c's start is recovered:\n{}", sim.trace_text());
    let readable = sim.disk().unwrap().config.groups["v1"]
        .plexes
        .values()
        .filter(|&&a| a)
        .count();
    // Either the recovery's own record (one readable plex) or, already, the resync.
    assert!(
        readable == 1 || all_active_on_disk(&sim, "v1"),
        "{:?}",
        sim.disk().unwrap().config.groups["v1"]
    );
    sim.start(C);
    recovered_and_resynced(&mut sim, dead, &[A, B, C]);
}

/// A clean stop closes the node's start: no recovery, every plex stays ACTIVE.
/// Without the close (the stop never asks the master), the master recovers c's
/// start and makes a plex SYNCING: the test fails on `recovered`.
#[test]
fn a_clean_stop_leads_to_no_recovery() {
    let mut sim = mirrored_cluster();
    let seq = disk_seq(&sim);
    sim.shutdown(C);
    let stopped = sim.run_until(5_000, |s| {
        s.core(C).is_some_and(|c| c.role() == Role::Stopped)
    });
    assert!(stopped, "c stops:\n{}", sim.trace_text());
    assert!(!sim.serving(C), "c's data plane no longer serves");
    settle(&mut sim, &[A, B]);
    sim.run_for(8_000); // well past c's lease: any recovery would have committed
    let disk = &sim.disk().unwrap().config;
    assert!(!disk.open.contains_key(&C), "c's start was closed");
    assert_eq!(disk.recovered, Vec::new(), "no recovery after a clean stop");
    assert_eq!(disk.seq, seq + 1, "one change: the close");
    assert!(all_active_on_disk(&sim, "v1"));
    assert_eq!(sim.violation(), None);
}

/// The master dies serving the mirror: its successor, taking over, recovers the
/// old master's start (it is open on the disks and not in the new view). Without
/// the recovery of open starts missing from the view, the new master never
/// recovers a and the wait fails.
#[test]
fn no_recovery_is_lost_across_a_master_change() {
    let mut sim = mirrored_cluster();
    let dead = (A, sim.node(A).inc);
    sim.crash(A);
    sim.start(A);
    recovered_and_resynced(&mut sim, dead, &[A, B, C]);
    assert_eq!(sim.master(), Some(B));
}

/// Every node dies serving the mirror: the first master formed from the disks
/// recovers every start recorded open there before opening the new ones.
#[test]
fn a_whole_cluster_crash_recovers_every_open_start() {
    let mut sim = mirrored_cluster();
    let dead: Vec<(u32, u64)> = [A, B, C].iter().map(|&id| (id, sim.node(id).inc)).collect();
    for id in [A, B, C] {
        sim.crash(id);
    }
    assert_eq!(sim.coverage.divergences, 3);
    sim.run_for(1_000);
    for id in [B, C, A] {
        sim.start(id);
    }
    for &start in &dead {
        recovered_and_resynced(&mut sim, start, &[A, B, C]);
    }
}

/// c is cut off, removed from the view and rejoins with the same start: it may
/// have been cut off in the middle of a write, so its start is recovered all the
/// same (then opened again). Here the recovery (first in the master's queue)
/// commits before c's join is offered; the master's memory of starts it removed
/// while open (`lost`) covers a join that would slip in first (no schedule found
/// yet: removing that memory fails neither this test nor 6,000 random seeds).
#[test]
fn a_node_cut_off_and_back_with_the_same_start_is_still_recovered() {
    let mut sim = mirrored_cluster();
    let start = (C, sim.node(C).inc);
    sim.partition(&[C]);
    assert!(sim.run_until(5_000, |s| s
        .core(A)
        .and_then(|c| c.view())
        .is_some_and(|v| !v.contains(C))));
    sim.heal();
    recovered_and_resynced(&mut sim, start, &[A, B, C]);
    assert_eq!(sim.node(C).inc, start.1, "the same start");
}

/// c crashes and restarts at once, rejoining before the master acted on the loss
/// of its old start: the old start is recovered all the same, and the new start is
/// opened only after that (an open is refused while another start of the node is
/// open). Without the rule that an open start missing from the view is recovered,
/// the old start stays open for good and the new one never serves.
#[test]
fn a_crashed_node_that_rejoins_at_once_is_still_recovered() {
    let mut sim = mirrored_cluster();
    let dead = (C, sim.node(C).inc);
    sim.crash(C);
    sim.start(C);
    assert_ne!(sim.node(C).inc, dead.1);
    recovered_and_resynced(&mut sim, dead, &[A, B, C]);
}

/// c's data plane dies serving the mirror (its coordinator lives on and reloads a
/// new one): c's start is open, so c gives the new data plane no lease and asks the
/// master to recover the start; the master opens it again afterwards. Without it
/// (a data-plane loss changes nothing) c's start stays open, the new data plane is
/// served with both plexes readable, and the test fails waiting for the recovery.
#[test]
fn a_lost_data_plane_makes_its_start_recovered() {
    let mut sim = mirrored_cluster();
    let start = (C, sim.node(C).inc);
    sim.crash_data_plane(C);
    assert_eq!(
        sim.coverage.divergences, 1,
        "c's data plane died serving v1"
    );
    sim.run_for(20);
    assert!(!sim.serving(C), "no lease before the recovery");
    recovered_and_resynced(&mut sim, start, &[A, B, C]);
    assert_eq!(sim.node(C).inc, start.1, "the same coordinator start");
    assert!(sim.serving(C), "served again once opened");
}

/// The designated successor commits a transaction before the master writes it to
/// the disks: when that transaction opens the successor's own start, its data plane
/// gets no lease until the master is seen to have committed it (after the write).
/// Were it to serve at once and master and successor die before the write, the
/// disks would not hold the start open although its data plane had written.
#[test]
fn a_successor_serves_on_its_own_open_only_once_the_disks_hold_it() {
    let mut sim = traced_cluster(3);
    sim.crash(B);
    assert!(
        sim.run_until(10_000, |s| !s.all_members(&[A, B, C])
            && s.all_members(&[A, C])),
        "b's loss acted on:\n{}",
        sim.trace_text()
    );
    // The dead start's recovery is written while b is down; then the master's
    // disk writes are held, and b comes back.
    let recovered = sim.run_until(10_000, |s| {
        s.disk().is_some_and(|d| !d.config.open.contains_key(&B))
    });
    assert!(recovered, "b's dead start recovered:\n{}", sim.trace_text());
    sim.hold(A, Hold::DiskWrite);
    sim.start(B);
    let inc = sim.node(B).inc;
    let committed_open = sim.run_until(10_000, |s| {
        s.core(B)
            .is_some_and(|c| c.config().open.get(&B) == Some(&inc))
    });
    assert!(
        committed_open,
        "b committed its open:\n{}",
        sim.trace_text()
    );
    assert_eq!(
        sim.disk().and_then(|d| d.config.open.get(&B).copied()),
        None,
        "the master's write is held"
    );
    sim.run_for(200);
    assert!(
        !sim.serving(B),
        "b served on an open the disks do not hold:\n{}",
        sim.trace_text()
    );
    sim.release(A);
    let served = sim.run_until(10_000, |s| s.serving(B));
    assert!(
        served,
        "b serves once the open is written:\n{}",
        sim.trace_text()
    );
    assert_eq!(sim.violation(), None);
}

// ---------------------------------------------------------------------------
// Recovery from the dirty region log (issue 11): the simulated data plane marks
// a region in its node's section before each write to a logged volume; at a
// crash the plexes may differ only in the regions of its writes in flight; the
// master reads the section once the start's data plane surely stopped writing and
// resyncs only the dirty ranges. Writes here are made by hand (`start_write`).
// ---------------------------------------------------------------------------

/// A 3-node cluster with the 2-plex mirror v1 carrying a dirty region log, no
/// writes of the data planes' own.
fn logged_cluster() -> Sim {
    let mut sim = traced_cluster(3);
    sim.auto_writes = false;
    let r = sim.create_with_log(B, "v1", 2);
    assert_eq!(answer(&mut sim, B, r), Ok(()));
    settle(&mut sim, &[A, B, C]);
    assert!([A, B, C].iter().all(|&id| sim.serving(id)));
    sim
}

/// c dies with a write to region 2 of v1 in flight: the master reads c's section
/// (region 2 dirty) and the resync copies chunk 2 only. Without the read (every
/// recovery whole) the copy covers all four chunks and the last assertion fails;
/// without the ranges' copy (the copier skips them) v1-02 never becomes ACTIVE.
#[test]
fn a_crash_with_a_log_resyncs_only_the_dirty_regions() {
    let mut sim = logged_cluster();
    sim.start_write(C, "v1", 2);
    assert_eq!(
        sim.dirty_log(C, "v1"),
        [2].into(),
        "marked before the write"
    );
    let dead = (C, sim.node(C).inc);
    sim.crash(C);
    assert_eq!(sim.coverage.log_divergences, 1);
    sim.start(C);
    recovered_and_resynced(&mut sim, dead, &[A, B, C]);
    assert!(sim.coverage.log_sections_read >= 1);
    assert_eq!(sim.coverage.range_resyncs_done, 1);
    assert_eq!(
        sim.synced("v1", "v1-02"),
        [2].into(),
        "only region 2 copied"
    );
}

/// c dies with writes to regions 1 and 3 of v1 in flight (half a chunk each, with
/// a clean region between): the recovery copies both dirty ranges under ONE fence
/// round (a chunk of two pieces), not one round per range. Before chunks were
/// lists of pieces the copier fenced each range on its own: two rounds, and the
/// first assertion fails.
#[test]
fn small_dirty_ranges_share_one_fence_round() {
    let mut sim = logged_cluster();
    sim.start_write(C, "v1", 1);
    sim.start_write(C, "v1", 3);
    assert_eq!(sim.dirty_log(C, "v1"), [1, 3].into());
    let dead = (C, sim.node(C).inc);
    sim.crash(C);
    sim.start(C);
    recovered_and_resynced(&mut sim, dead, &[A, B, C]);
    assert_eq!(
        sim.coverage.chunks_copied, 1,
        "one fence round for both ranges"
    );
    assert_eq!(sim.coverage.multi_piece_chunks, 1);
    assert_eq!(
        sim.synced("v1", "v1-02"),
        [1, 3].into(),
        "regions 1 and 3 only"
    );
}

/// c dies with a write to region 2 of v1 in flight; while its start waits for its
/// recovery (the master out of c's view, c's lease not yet run out), a change
/// moving v1's log (a new log id, as `dg rm-disk` of the log's disk makes) is
/// refused naming c: committed, the recovery would read c's section of the new
/// log, which c never wrote, and copy nothing. Once c is recovered (region 2
/// copied) the move commits. Without the guard (`Node::recovery_keeps_logs`
/// returning Ok at once) the first move commits and the `expect_err` fails.
#[test]
fn a_log_does_not_move_while_a_crashed_start_waits_for_its_recovery() {
    let mut sim = logged_cluster();
    // a's read of c's log is held, so the move is proposed while the recovery
    // waits for it (without the hold, the read may answer first and the recovery
    // go ahead of the move in a's queue, which is as correct and tests nothing).
    sim.hold(A, Hold::LogRead);
    sim.start_write(C, "v1", 2);
    let dead = (C, sim.node(C).inc);
    sim.crash(C);
    let asked = sim.run_until(5_000, |s| s.coverage.log_sections_read > 0);
    assert!(asked, "a reads c's log:\n{}", sim.trace_text());
    assert!(
        sim.disk()
            .is_some_and(|d| !d.config.recovered.contains(&dead)),
        "c's start is not recovered yet"
    );
    let tag = sim.tag();
    let moving = plexd_coordinator::sim::ToyChange::MoveLog {
        tag,
        name: "v1".into(),
    };
    let r = sim.submit(A, moving);
    let refused = answer(&mut sim, A, r).expect_err("the move waits for c's recovery");
    assert!(
        refused.contains("cannot move") && refused.contains("v1"),
        "{refused}"
    );
    sim.release(A);
    sim.start(C);
    recovered_and_resynced(&mut sim, dead, &[A, B, C]);
    assert_eq!(
        sim.synced("v1", "v1-02"),
        [2].into(),
        "c's dirty region copied"
    );
    let again = plexd_coordinator::sim::ToyChange::MoveLog {
        tag: sim.tag(),
        name: "v1".into(),
    };
    let r = sim.submit(A, again);
    assert_eq!(answer(&mut sim, A, r), Ok(()), "moved once c is recovered");
    assert_eq!(sim.violation(), None);
}

/// c dies having written nothing to v1 (its section unused), and b dies with its
/// only write completed and its region cleaned (a clean section): neither
/// recovery resyncs anything. Without the log (whole recoveries) v1-02 becomes
/// SYNCING and chunks are copied.
#[test]
fn a_volume_the_crashed_node_never_wrote_needs_no_resync() {
    let mut sim = logged_cluster();
    let dead = (C, sim.node(C).inc);
    sim.crash(C);
    let recovered = sim.run_until(15_000, |s| {
        s.disk().is_some_and(|d| d.config.recovered.contains(&dead))
    });
    assert!(recovered, "c's start is recovered:\n{}", sim.trace_text());
    assert!(all_active_on_disk(&sim, "v1"), "no plex SYNCING");
    sim.start(C);
    settle(&mut sim, &[A, B, C]);
    assert_eq!(sim.coverage.chunks_copied, 0, "nothing copied");
    assert_eq!(sim.violation(), None);
}

/// c is cut off while serving v1; the master drops it from its view at once but
/// its data plane serves on until its lease runs out, and writes region 3 (marking
/// it) after the master dropped it, then dies in the middle of that write. The
/// master reads c's section only once c's lease surely ran out, so region 3 is in
/// the recovery. With the read taken at once (the `may_commit` wait in
/// `recovery_master_read` removed), region 3 is missed, v1 needs "no resync" and
/// the simulator reports both plexes readable though they may differ there.
#[test]
fn the_log_is_read_only_after_the_lost_nodes_lease_ran_out() {
    let mut sim = logged_cluster();
    let dead = (C, sim.node(C).inc);
    sim.partition(&[C]);
    let dropped = sim.run_until(5_000, |s| {
        s.core(A)
            .and_then(|c| c.view())
            .is_some_and(|v| !v.contains(C))
    });
    assert!(dropped, "c leaves a's view:\n{}", sim.trace_text());
    // Let a read taken at once land first.
    sim.run_for(30);
    assert!(
        sim.writers("v1").contains(&C),
        "c's data plane still serves v1 on its lease:\n{}",
        sim.trace_text()
    );
    sim.start_write(C, "v1", 3);
    sim.crash(C);
    sim.heal();
    sim.start(C);
    recovered_and_resynced(&mut sim, dead, &[A, B, C]);
    assert_eq!(sim.synced("v1", "v1-02"), [3].into());
}

/// A data plane that issues a write without marking its region first (a broken
/// one) leaves a divergence the log does not name: the simulator's invariant
/// reports it once the recovery left both plexes readable. The check the other
/// tests rely on does catch dropped ranges.
#[test]
fn a_write_its_log_does_not_name_is_caught_by_the_invariant() {
    let mut sim = logged_cluster();
    sim.drl_marks = false;
    sim.start_write(C, "v1", 1);
    sim.crash(C);
    sim.run_until(15_000, |s| s.violation().is_some());
    let v = sim.violation().unwrap_or_default();
    assert!(v.contains("may differ"), "{v}\n{}", sim.trace_text());
}

/// c's data plane dies in the middle of a write to region 1 while its
/// coordinator lives on: c reads its own section once the lease it gave the lost
/// data plane ran out (a data plane cut off from its coordinator, alive, writes
/// until then), asks for the recovery with the dirty range, and the resync copies
/// chunk 1 only. Without that wait (the request sent at once, as before) the
/// recovery commits before the lost data plane's lease ends and the first
/// assertion fails.
#[test]
fn a_lost_data_plane_is_recovered_from_its_log() {
    let mut sim = logged_cluster();
    let start = (C, sim.node(C).inc);
    sim.start_write(C, "v1", 1);
    let lease_end = sim.node(C).kernel.lease_until_ms;
    sim.crash_data_plane(C);
    let recovered = sim.run_until(15_000, |s| {
        s.disk()
            .is_some_and(|d| d.config.recovered.contains(&start))
    });
    assert!(recovered, "c's start is recovered:\n{}", sim.trace_text());
    assert!(
        sim.now_ms() >= lease_end,
        "recovered at {} ms, before the lost data plane's lease ended at {lease_end} ms",
        sim.now_ms()
    );
    recovered_and_resynced(&mut sim, start, &[A, B, C]);
    assert_eq!(sim.synced("v1", "v1-02"), [1].into());
    assert!(sim.serving(C), "served again once opened");
}

/// v1-02 is being resynced whole (attached again) when c dies serving v1: c may
/// have written a chunk already copied to v1-02 and not to v1-01, so the copies
/// start again once c's start is recovered. Without the restart (the copier keeps
/// its progress across a recovery, which leaves a whole SYNCING plex as it is)
/// v1-02 becomes ACTIVE with a chunk copied before the crash and the simulator
/// reports it.
#[test]
fn a_recovery_restarts_the_resyncs_in_progress() {
    let mut sim = traced_cluster(3);
    with_stale_plex(&mut sim, &[A, B, C]);
    let r = sim.attach(B, "v1", "v1-02");
    assert_eq!(answer(&mut sim, B, r), Ok(()));
    // The first chunk's round is over (the copier moved past it); the next copy
    // stalls (master a's copies held) until the recovery committed.
    let copied = sim.run_until(5_000, |s| {
        s.core(A)
            .is_some_and(|c| c.resyncs().iter().any(|(_, done)| *done > 0))
    });
    assert!(copied, "a first chunk copied:\n{}", sim.trace_text());
    sim.hold(A, Hold::Copy);
    assert!(sim.synced("v1", "v1-02").len() < REGIONS as usize);
    let dead = (C, sim.node(C).inc);
    sim.crash(C);
    let recovered = sim.run_until(15_000, |s| {
        s.disk().is_some_and(|d| d.config.recovered.contains(&dead))
    });
    assert!(recovered, "c's start is recovered:\n{}", sim.trace_text());
    assert!(!resynced(&sim), "v1-02 still SYNCING at the recovery");
    sim.release(A);
    sim.start(C);
    recovered_and_resynced(&mut sim, dead, &[A, B, C]);
    assert_eq!(sim.synced("v1", "v1-02"), (0..REGIONS).collect());
}

/// The master's read of c's log never answers (a hung disk): after
/// `reply_timeout_ms` it counts as unreadable and v1 is resynced whole. Without
/// that bound c's start would never be recovered and the wait fails.
#[test]
fn an_unanswered_log_read_falls_back_to_a_whole_resync() {
    let mut sim = logged_cluster();
    sim.hold(A, Hold::LogRead);
    sim.start_write(C, "v1", 2);
    let dead = (C, sim.node(C).inc);
    sim.crash(C);
    sim.start(C);
    recovered_and_resynced(&mut sim, dead, &[A, B, C]);
    assert_eq!(sim.coverage.range_resyncs_done, 0, "a whole resync");
    assert_eq!(sim.synced("v1", "v1-02"), (0..REGIONS).collect());
}

/// The master dies while its read of c's log is in flight: the next master (b
/// taking over, or a's next start forming the cluster again) reads c's section
/// again and recovers c with the dirty range only.
#[test]
fn a_new_master_reads_the_log_again() {
    let mut sim = logged_cluster();
    sim.hold(A, Hold::LogRead);
    sim.start_write(C, "v1", 2);
    let dead = (C, sim.node(C).inc);
    sim.crash(C);
    let asked = sim.run_until(5_000, |s| s.coverage.log_sections_read > 0);
    assert!(asked, "a reads c's log:\n{}", sim.trace_text());
    let dead_a = (A, sim.node(A).inc);
    sim.crash(A);
    sim.release(A); // the next master's reads answer
    sim.start(A);
    sim.start(C);
    recovered_and_resynced(&mut sim, dead, &[A, B, C]);
    recovered_and_resynced(&mut sim, dead_a, &[A, B, C]);
    assert!(sim.coverage.log_sections_read >= 2, "read again");
    assert_eq!(sim.synced("v1", "v1-02"), [2].into());
}

/// Destroys group `name` through node `id`.
fn destroy(sim: &mut Sim, id: u32, name: &str) -> Option<RequestId> {
    let tag = sim.tag();
    sim.submit(
        id,
        ToyChange::Destroy {
            tag,
            name: name.into(),
        },
    )
}

/// A traced cluster of three whose dg1 is destroyed through node `via` while c's
/// data plane holds that COMMIT (`Hold::KernelCommit`): the request, and the
/// time it was sent.
fn destroy_while_c_holds_its_commit(via: u32) -> (Sim, RequestId, u64) {
    let mut sim = traced_cluster(3);
    let r = sim.create(A, "dg1", 1);
    assert_eq!(answer(&mut sim, A, r), Ok(()));
    settle(&mut sim, &[A, B, C]);
    sim.hold(C, Hold::KernelCommit);
    let sent = sim.now_ms();
    let r = destroy(&mut sim, via, "dg1").expect("the node is up");
    assert!(sim.run_until(1_000, |s| s.held(C) == 1));
    (sim, r, sent)
}

/// A change whose answer follows every member's apply (`answer_after_applied`;
/// in plexd a shared volume's reservation change, whose preempt and abort ends
/// the preempted hosts' commands on each node): the master holds the answer
/// while a slave's data plane has not reported `Applied`, and gives it once it
/// did. Before, the origin was answered once the master and the origin applied
/// it, whatever the other slaves' data planes had done.
#[test]
fn an_answer_after_applied_waits_for_every_members_data_plane() {
    // Through slave b: its own apply and the master's are not enough.
    let (mut sim, r, _) = destroy_while_c_holds_its_commit(B);
    assert!(
        !sim.run_until(2_000, |s| s.reply(B, r).is_some()),
        "answered while c's data plane had not applied the commit"
    );
    sim.release(C);
    assert_eq!(answer(&mut sim, B, Some(r)), Ok(()));
    settle(&mut sim, &[A, B, C]);
    assert!(nowhere_has(&sim, "dg1"));
}

/// A member that never reports (an older node, a stuck data plane) holds the
/// answer at most `APPLIED_WAIT_MS`: then it goes out (the change is committed).
#[test]
fn an_answer_after_applied_goes_out_at_its_bound_without_a_report() {
    use plexd_coordinator::core::APPLIED_WAIT_MS;
    let (mut sim, r, start) = destroy_while_c_holds_its_commit(A);
    let answered = sim.run_until(APPLIED_WAIT_MS + 5_000, |s| s.reply(A, r).is_some());
    assert!(answered, "no answer:\n{}", sim.trace_text());
    assert_eq!(sim.reply(A, r), Some(&Ok(())));
    assert!(
        sim.now_ms() - start >= APPLIED_WAIT_MS,
        "answered before the bound"
    );
}

/// A slave's `Applied` lost on the way (dropped with a connection that died)
/// holds the answer only until the slave's next heartbeat, which names the
/// newest transaction its data plane applied. Before, the master waited
/// `APPLIED_WAIT_MS` (20 s) for a report that nothing sent again (seeds 5068295,
/// 6051043).
#[test]
fn a_lost_applied_is_told_again_by_the_slaves_heartbeat() {
    let (mut sim, r, _) = destroy_while_c_holds_its_commit(A);
    // c's data plane applies the commit while everything c sends a is lost; the
    // link is back before a's heartbeat timeout, so c stays a member.
    sim.block(C, A);
    sim.release(C);
    sim.run_for(150);
    assert_eq!(sim.reply(A, r), None, "answered without c's report");
    sim.heal();
    let answered = sim.run_until(1_000, |s| s.reply(A, r).is_some());
    assert!(
        answered,
        "no answer within 1 s of the heal:\n{}",
        sim.trace_text()
    );
    assert_eq!(sim.reply(A, r), Some(&Ok(())));
    assert!(sim.all_members(&[A, B, C]), "{}", sim.trace_text());
}

// ---------------------------------------------------------------------------
// An external cluster monitor (corosync, `core::monitor`): the simulator reports
// each node's partition as corosync would, 1..=MAX_MONITOR_DELAY_MS after a change.
// ---------------------------------------------------------------------------

use plexd_coordinator::sim::{SimConfig, MAX_MONITOR_DELAY_MS};

/// A traced cluster of three whose nodes also take membership and quorum from a
/// simulated corosync; `connection_lost_percent` 0: a crash is found by the
/// monitor or the heartbeat timeout, never by a connection loss.
fn monitored_cluster() -> Sim {
    let mut sim = Sim::cluster_of(SimConfig {
        trace: true,
        monitor: true,
        connection_lost_percent: 0,
        ..SimConfig::new(3, 7)
    });
    settle_open(&mut sim, &[A, B, C]);
    sim
}

/// How long a monitor's report takes to act at most: its delay and a tick.
const MONITOR_ACTS_MS: u64 = MAX_MONITOR_DELAY_MS + 2 * 20;

/// Whether node `id`'s status names `what` as its reason.
fn reason_has(sim: &Sim, id: u32, what: &str) -> bool {
    sim.core(id)
        .and_then(|c| c.status().last_reason)
        .is_some_and(|r| r.contains(what))
}

/// Events for a node frozen again before it thawed keep the order they came in
/// (the simulator models a process's queue: SIGSTOP reorders nothing). Before,
/// events deferred by the first freeze were deferred again behind those the
/// second one deferred: c read corosync's stale "not quorate" after the newer
/// "quorate", and with nothing new to report it stayed out of the cluster for
/// good (seeds 5003484, 6023630 and nine more).
#[test]
fn a_node_frozen_twice_reads_its_events_in_the_order_they_came() {
    let mut sim = monitored_cluster();
    let all: std::collections::BTreeSet<u32> = [A, B, C].into();
    sim.freeze(C, 1_000);
    sim.send_monitor_view(C, [C].into(), false, "stale".into());
    sim.run_for(MONITOR_ACTS_MS);
    sim.freeze(C, 1_000);
    sim.send_monitor_view(C, all.clone(), true, "newer".into());
    assert_eq!(sim.monitor_truth(C), (all, true));
    // Past the thaw: c has read both reports (and a has given c up).
    sim.run_for(1_000 + MONITOR_ACTS_MS);
    let whole = sim.run_until(5_000, |s| s.all_members(&[A, B, C]));
    assert!(whole, "c did not come back:\n{}", sim.trace_text());
    assert_eq!(sim.violation(), None);
}

#[test]
fn with_a_monitor_no_cluster_forms_before_it_reports_quorum() {
    let mut sim = Sim::new(SimConfig {
        trace: true,
        monitor: true,
        ..SimConfig::new(3, 7)
    });
    for id in [A, B, C] {
        sim.kill_monitor(id, 3_000);
        sim.start(id);
    }
    sim.run_for(2_500);
    assert_eq!(sim.violation(), None);
    for id in [A, B, C] {
        let c = sim.core(id).unwrap();
        assert_eq!(
            c.view(),
            None,
            "node {id} formed or joined without corosync"
        );
        assert!(!sim.serving(id));
        assert!(
            reason_has(&sim, id, "no quorum: corosync: not running"),
            "{:?}",
            c.status().last_reason
        );
    }
    let r = sim.create(A, "dg1", 1);
    let err = answer(&mut sim, A, r).unwrap_err();
    assert!(err.contains("no quorum"), "{err}");
    // corosync back on every node: the cluster forms.
    settle(&mut sim, &[A, B, C]);
}

#[test]
fn a_node_whose_corosync_dies_loses_quorum_at_once_and_comes_back_with_it() {
    let mut sim = monitored_cluster();
    assert_eq!(sim.master(), Some(A));
    assert!(sim.run_until(1_000, |s| s.serving(C)), "c does not serve");
    // Only corosync dies on c: every plexd link stays up, so the built-in
    // monitor alone would never remove c.
    sim.kill_monitor(C, 4_000);
    let t0 = sim.now_ms();
    let out = sim.run_until(MONITOR_ACTS_MS, |s| {
        !s.serving(C)
            && s.core(C).is_some_and(|c| c.view().is_none())
            && reason_has(s, C, "node c: no quorum: corosync: not running")
            && s.core(A)
                .and_then(|c| c.view())
                .is_some_and(|v| v.members == vec![A, B])
    });
    assert!(
        out,
        "c was not out of the cluster within {MONITOR_ACTS_MS} ms:\n{}",
        sim.trace_text()
    );
    assert!(sim.now_ms() - t0 <= MONITOR_ACTS_MS);
    // c refuses changes; the majority goes on (once c's lease surely ran out).
    let r = sim.create(C, "dg1", 1);
    let err = answer(&mut sim, C, r).unwrap_err();
    assert!(err.contains("node c: no quorum"), "{err}");
    let r = sim.create(A, "dg2", 1);
    assert_eq!(answer(&mut sim, A, r), Ok(()));
    assert!(sim.core(C).unwrap().view().is_none());
    assert!(!sim.serving(C));
    // corosync back on c: it joins again and gets the change it missed.
    settle(&mut sim, &[A, B, C]);
    assert!(everywhere_has(&sim, &[A, B, C], "dg2"));
}

#[test]
fn a_master_lost_to_corosync_is_succeeded_without_the_heartbeat_timeout() {
    let mut sim = monitored_cluster();
    assert_eq!(sim.master(), Some(A));
    let t0 = sim.now_ms();
    sim.crash(A);
    let suspected = sim.run_until(2_000, |s| {
        s.core(B).is_some_and(|c| c.role() == Role::TakingOver)
    });
    assert!(suspected, "b never took over:\n{}", sim.trace_text());
    let took = sim.now_ms() - t0;
    // The heartbeat timeout is 500 ms (no connection loss is seen): corosync's
    // report started the takeover.
    assert!(
        took <= MONITOR_ACTS_MS,
        "b started taking over {took} ms after a's crash"
    );
    let master = sim.run_until(5_000, |s| quorate_master(s, B, 3));
    assert!(master, "b did not become master:\n{}", sim.trace_text());
    let r = sim.create(B, "dg1", 1);
    assert_eq!(answer(&mut sim, B, r), Ok(()));
}

#[test]
fn a_minority_master_stops_serving_as_soon_as_corosync_says_so() {
    let mut sim = monitored_cluster();
    assert_eq!(sim.master(), Some(A));
    sim.partition(&[A]);
    let fenced = sim.run_until(MONITOR_ACTS_MS, |s| !s.serving(A));
    // The built-in monitor alone keeps a's lease until a lease (1000 ms) after the
    // last confirmation; corosync's "not quorate" revokes it at once.
    assert!(
        fenced,
        "a still served {MONITOR_ACTS_MS} ms into the partition:\n{}",
        sim.trace_text()
    );
    assert!(reason_has(
        &sim,
        A,
        "node a: no quorum: corosync: 1 of 3 nodes"
    ));
    let took_over = sim.run_until(5_000, |s| quorate_master(s, B, 3));
    assert!(took_over, "b did not take over:\n{}", sim.trace_text());
    let r = sim.create(B, "dg1", 1);
    assert_eq!(answer(&mut sim, B, r), Ok(()));
    let r = sim.create(A, "dg2", 1);
    assert!(answer(&mut sim, A, r).unwrap_err().contains("no quorum"));
    sim.heal();
    settle(&mut sim, &[A, B, C]);
    assert!(everywhere_has(&sim, &[A, B, C], "dg1"));
    assert!(nowhere_has(&sim, "dg2"));
}

// ---------------------------------------------------------------------------
// The node's own line in `cluster status` (`core::status`): what holds now, under
// either monitor, and the last failure with its age.
// ---------------------------------------------------------------------------

/// Node `id`'s own line in `cluster status`, now.
fn status_line(sim: &Sim, id: u32) -> String {
    sim.core(id)
        .map(|c| c.status_line(sim.now_ms()))
        .unwrap_or_default()
}

#[test]
fn under_corosync_the_status_line_says_what_holds_now() {
    let mut sim = Sim::new(SimConfig {
        trace: true,
        monitor: true,
        ..SimConfig::new(3, 7)
    });
    for id in [A, B, C] {
        sim.start(id);
    }
    // Before the first report nobody has quorum, and the line says why (no failure
    // yet: nothing has gone wrong).
    assert_eq!(
        status_line(&sim, A),
        "node a: no quorum: no report from the cluster monitor yet"
    );
    settle_open(&mut sim, &[A, B, C]);
    for id in [A, B, C] {
        let l = status_line(&sim, id);
        let v = sim.core(id).and_then(|c| c.view()).expect("a member").id;
        assert_eq!(
            l,
            format!("member of view {v} with 3 nodes; corosync: 3 of 3 nodes"),
            "node {id}"
        );
    }
    // c's corosync dies: c says so, with the time since.
    sim.kill_monitor(C, 4_000);
    assert!(sim.run_until(MONITOR_ACTS_MS, |s| s
        .core(C)
        .is_some_and(|c| c.view().is_none())));
    sim.run_for(1_500);
    let l = status_line(&sim, C);
    assert!(
        l.starts_with("node c: no quorum: corosync: not running (since 1."),
        "{l}"
    );
    // Asked to give a disk up meanwhile, c holds the word and says so after the
    // reason, which it gives once.
    let tag = sim.tag();
    sim.submit(
        C,
        ToyChange::FailDisk {
            tag,
            name: "dg1".into(),
        },
    )
    .expect("c is up");
    let l = status_line(&sim, C);
    assert!(
        l.starts_with("node c: no quorum: corosync: not running (since 1.")
            && l.contains(" s); holding the change that gives disk(s) dg1-disk up")
            && l.matches("not running").count() == 1,
        "{l}"
    );
    let l = status_line(&sim, A);
    assert!(l.ends_with("with 2 nodes; corosync: 2 of 3 nodes"), "{l}");
    // Back, c is a member again and its line no longer names the failure.
    settle(&mut sim, &[A, B, C]);
    let l = status_line(&sim, C);
    assert!(l.starts_with("member of view "), "{l}");
    assert!(!l.contains("not running"), "{l}");
}

#[test]
fn under_heartbeats_the_status_line_says_what_holds_now() {
    // c cannot find the disk: it abandons its join and says so, with the failure's age.
    let mut sim = c_abandons_without_the_disk();
    let l = status_line(&sim, C);
    assert!(
        l.starts_with(
            "not a member (abandoned); heartbeats: 3 of 3 votes reachable, 2 needed; last failure "
        ) && l.ends_with(" ago: cannot find disk dg1-disk on node c"),
        "{l}"
    );
    let v = sim.core(A).and_then(|c| c.view()).expect("a member").id;
    assert_eq!(
        status_line(&sim, A),
        format!("member of view {v} with 2 nodes; heartbeats: 3 of 3 votes reachable, 2 needed")
    );
    sim.set_disk_access_broken(C, false);
    settle(&mut sim, &[A, B, C]);
    assert!(status_line(&sim, C).starts_with("member of view "));
    // Cut off, a knows it has no quorum now, and since when it left.
    sim.partition(&[A]);
    assert!(sim.run_until(5_000, |s| s.core(A).is_some_and(|c| c.view().is_none())));
    let l = status_line(&sim, A);
    assert!(
        l.starts_with(
            "node a: no quorum: 1 of 3 votes, 2 needed (b, c unreachable); last failure "
        ),
        "{l}"
    );
    sim.heal();
    settle(&mut sim, &[A, B, C]);
    assert!(status_line(&sim, A).starts_with("member of view "));
}

/// c, the designated successor of its view [a, c], takes over when a dies, and
/// learns from b's answer of the newer view [a, b, c] (whose `View` never reached
/// c) where b is the successor: c waits for b. b then dies too. c gives up waiting
/// as soon as it sees b go, instead of waiting out the longest any successor may
/// take (seed 25029430 with `PLEXD_SIM_STEPS=2000`: a quorum-disk cluster stayed
/// without a master for 7 s that way, past the check's 10 s of quiet).
#[test]
fn a_slave_waiting_for_a_successor_that_died_gives_up_at_once() {
    let mut sim = traced_cluster(3);
    sim.crash(B);
    assert!(sim.run_until(3_000, |s| [A, C].iter().all(|&id| s
        .core(id)
        .and_then(|c| c.view())
        .is_some_and(|v| v.members == vec![A, C]))));
    sim.block(A, C);
    sim.start(B);
    assert!(
        sim.run_until(3_000, |s| s
            .core(B)
            .and_then(|c| c.view())
            .is_some_and(|v| v.members == vec![A, B, C])),
        "b joins a:\n{}",
        sim.trace_text()
    );
    assert!(
        sim.core(C)
            .and_then(|c| c.view())
            .is_some_and(|v| v.members == vec![A, C]),
        "c never got the view with b:\n{}",
        sim.trace_text()
    );
    sim.crash(A);
    sim.heal();
    let role = |s: &Sim| s.core(C).map(|c| c.role());
    assert!(sim.run_until(2_000, |s| role(s) == Some(Role::TakingOver)));
    // b's answer names view [a, b, c], whose successor is b: c waits for it.
    assert!(
        sim.run_until(2_000, |s| role(s) == Some(Role::Slave)),
        "c waits for b:\n{}",
        sim.trace_text()
    );
    let since = sim.now_ms();
    sim.crash(B);
    let left = sim.run_until(3_000, |s| {
        s.logs().iter().any(|l| {
            l.starts_with("c: ")
                && l.contains("so is node b, the designated successor this node waited for")
        })
    });
    assert!(left, "c gives up waiting for b:\n{}", sim.trace_text());
    let waited = sim.now_ms() - since;
    // At its first tick past its lease, not after the lease, a lease_wait and two
    // heartbeat timeouts more that a successor may take.
    let lease_end_bound = sim.config().lease_ms + sim.config().heartbeat_timeout_ms;
    assert!(
        waited <= lease_end_bound,
        "c waited {waited} ms for a dead successor:\n{}",
        sim.trace_text()
    );
    sim.start(A);
    sim.start(B);
    settle(&mut sim, &[A, B, C]);
}

/// After every node stopped, the group's disk is found by the node that forms (a)
/// but by no other (the simulator has one disk; b and c cannot reach it): b and c
/// refuse a's offers, so a's views get no majority and a abdicates again and
/// again. The operator's `dg fail-disk`, asked of a between two of its views,
/// waits there across its abdications (`core::given_up`; `cluster status` says
/// so); once a queued it again, a's offers leave the disk out, b and c join, and
/// the change commits: the disk is recorded failed, and later joins are not asked
/// for it.
#[test]
fn a_disk_given_up_at_the_forming_node_outlives_its_abdications_and_lets_the_others_join() {
    let mut sim = traced_cluster(3);
    let r = sim.create(A, "dg1", 2);
    assert_eq!(answer(&mut sim, A, r), Ok(()));
    settle(&mut sim, &[A, B, C]);
    for id in [A, B, C] {
        sim.crash(id);
    }
    sim.set_disk_access_broken(B, true);
    sim.set_disk_access_broken(C, true);
    for id in [A, B, C] {
        sim.start(id);
    }
    let refused = sim.run_until(10_000, |s| {
        [B, C].iter().all(|&id| {
            s.core(id).unwrap().status().last_reason.as_deref()
                == Some(format!("cannot find disk dg1-disk on node {}", Sim::name(id)).as_str())
        })
    });
    assert!(refused, "b and c refuse a's offers:\n{}", sim.trace_text());
    // Asked while a is between two of its views (it abdicated and forms again).
    let between = sim.run_until(20_000, |s| {
        matches!(s.core(A).unwrap().role(), Role::Discovering | Role::Forming)
    });
    assert!(between, "a abdicates:\n{}", sim.trace_text());
    let tag = sim.tag();
    let r = sim
        .submit(
            A,
            ToyChange::FailDisk {
                tag,
                name: "dg1".into(),
            },
        )
        .expect("a is up");
    let line = sim.core(A).unwrap().status_line(sim.now_ms());
    assert!(
        line.contains("holding the change that gives disk(s) dg1-disk up"),
        "{line}"
    );
    // Each part once: the reason, the held word, the last failure (when another).
    let parts: Vec<&str> = line.split("; ").collect();
    let unique: std::collections::BTreeSet<&str> = parts.iter().copied().collect();
    assert_eq!(unique.len(), parts.len(), "a part said twice: {line}");
    assert!(sim.run_until(20_000, |s| s.core(A).unwrap().role() == Role::Master));
    let line = sim.core(A).unwrap().status_line(sim.now_ms());
    assert!(
        line.contains("join offers leave disk(s) dg1-disk out") || sim.reply(A, r).is_some(),
        "{line}"
    );
    let answered = sim.run_until(60_000, |s| s.reply(A, r).is_some());
    assert!(answered, "no answer from a:\n{}", sim.trace_text());
    assert_eq!(
        sim.reply(A, r).cloned(),
        Some(Ok(())),
        "{}",
        sim.trace_text()
    );
    assert_eq!(sim.violation(), None);
    settle(&mut sim, &[A, B, C]);
    for id in [A, B, C] {
        assert!(sim.core(id).unwrap().config().groups["dg1"].disk_failed);
    }
    // A later join is not asked for the disk.
    sim.crash(C);
    sim.start(C);
    settle(&mut sim, &[A, B, C]);
    // The disk back (`dg reattach-disk`): refused while a member (c) cannot reach
    // it, naming c; once every member can, it commits, and a joiner that cannot
    // reach the disk is refused again.
    sim.set_disk_access_broken(B, false);
    let reattach = |sim: &mut Sim| {
        let tag = sim.tag();
        let r = sim.submit(
            B,
            ToyChange::ReattachDisk {
                tag,
                name: "dg1".into(),
            },
        );
        answer(sim, B, r)
    };
    let e = reattach(&mut sim).expect_err("c cannot reach the disk");
    assert!(e.contains("cannot find disk dg1-disk on node c"), "{e}");
    sim.set_disk_access_broken(C, false);
    assert_eq!(reattach(&mut sim), Ok(()));
    settle(&mut sim, &[A, B, C]);
    for id in [A, B, C] {
        assert!(!sim.core(id).unwrap().config().groups["dg1"].disk_failed);
    }
    sim.set_disk_access_broken(C, true);
    sim.crash(C);
    sim.start(C);
    let refused = sim.run_until(10_000, |s| {
        s.core(C).unwrap().status().last_reason.as_deref()
            == Some("cannot find disk dg1-disk on node c")
    });
    assert!(
        refused,
        "c is asked for the disk again:\n{}",
        sim.trace_text()
    );
    assert_eq!(sim.violation(), None);
}
