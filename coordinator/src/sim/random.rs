//! Randomised runs: one seed, a schedule of faults, the invariants after every event,
//! and at the end a quiet period after which the cluster must be whole again.

use super::*;
use crate::core::{ConfigModel, FAILPOINTS};

/// What a random run did.
#[derive(Clone, Debug, Default)]
pub struct RunStats {
    /// Events processed.
    pub events: u64,
    /// Client requests answered OK.
    pub acked: usize,
    /// Client requests answered with an error.
    pub failed: usize,
    /// Crashes (random and at failpoints armed).
    pub crashes: usize,
    /// Partitions (both ways or one way) started.
    pub partitions: usize,
    /// Nodes frozen.
    pub freezes: usize,
    /// Stalls of a node's driver thread (or of its quorum disk or log thread).
    pub stalls: usize,
    /// Configuration sequence number at the end.
    pub final_seq: u64,
    /// What the run went through.
    pub coverage: Coverage,
    /// The cluster had a quorum disk.
    pub quorum_disk: bool,
    /// The schedule detached and attached plexes again (resyncs).
    pub resync: bool,
    /// Membership and quorum also came from a simulated corosync.
    pub monitor: bool,
}

/// In resync seeds, the share (percent) of copies whose master is frozen, crashed or
/// cut off between the copy's read and its write.
pub const COPY_FAULT_PERCENT: u32 = 25;

/// Share of the seeds (percent) whose schedule detaches and attaches plexes
/// (resyncs under fences, with every fault of the other seeds).
pub const RESYNC_PERCENT: u32 = 50;

/// Share of the seeds (percent) whose cluster has a quorum disk.
pub const QUORUM_DISK_PERCENT: u32 = 25;

/// Share of the seeds (percent), among those without a quorum disk, whose nodes
/// also take membership and quorum from a simulated external monitor (corosync).
pub const MONITOR_PERCENT: u32 = 25;

/// Chance (per 1,000) per 10 ms step that a node's driver stalls
/// (`PLEXD_SIM_STALLS` sets another).
pub const STALLS_PER_MILLE: u32 = 4;

/// Chance (percent) per 10 ms step that a private change is asked of a random node.
pub const PRIVATE_CHANGE_PERCENT: u32 = 3;

/// Names the random changes use (few, so they collide).
const NAMES: [&str; 6] = ["dg0", "dg1", "dg2", "dg3", "dg4", "dg5"];

/// Runs one seed for `steps` steps of 10 ms of simulated time with random faults,
/// then a quiet period. An error names the seed, the step and what broke, with the
/// last trace lines (the seed is run again with tracing on to get them).
pub fn run_seed(seed: u64, steps: u64) -> Result<RunStats, String> {
    match run(seed, steps, false) {
        Ok(s) => Ok(s),
        Err(_) => {
            let e = run(seed, steps, true)
                .err()
                .unwrap_or_else(|| "failure did not reproduce".into());
            Err(format!(
                "seed {seed}: {e}\n(reproduce: PLEXD_SIM_SEED={seed} cargo test -p plexd-coordinator --test sim)"
            ))
        }
    }
}

fn run(seed: u64, steps: u64, trace: bool) -> Result<RunStats, String> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let mut nodes = rng.gen_range(3..=5);
    let mid_batch_crashes = std::env::var("PLEXD_SIM_NO_MID_BATCH").is_err();
    let partitions = std::env::var("PLEXD_SIM_NO_PARTITIONS").is_err();
    // Partitions that TCP connections outlive (the messages sent across them
    // arrive at the heal), from a generator of their own;
    // PLEXD_SIM_NO_BUFFERED=1 leaves them out.
    let buffered = partitions && std::env::var("PLEXD_SIM_NO_BUFFERED").is_err();
    let mut buffered_rng = StdRng::seed_from_u64(seed ^ 0xb0ff);
    // A quarter of the seeds configure a quorum disk, mostly on 2 or 4 nodes (the
    // clusters it is for: 2 nodes, 2|2 splits). Drawn from a generator of its own,
    // so the other seeds keep the schedules they had before the disk existed.
    let mut disk_rng = StdRng::seed_from_u64(seed ^ 0x0d15c);
    let quorum_disk = disk_rng.gen_bool(QUORUM_DISK_PERCENT as f64 / 100.0);
    if quorum_disk {
        nodes = [2, 2, 3, 4, 4, 5][disk_rng.gen_range(0..6)];
    }
    // Half the seeds detach and attach plexes again (resyncs), from a generator of
    // their own so the other draws stay as they were.
    let mut resync_rng = StdRng::seed_from_u64(seed ^ 0x5e5c);
    let resync = resync_rng.gen_bool(RESYNC_PERCENT as f64 / 100.0);
    // Private changes on random nodes, from a generator of their own.
    let mut private_rng = StdRng::seed_from_u64(seed ^ 0x9a1e);
    // A quarter of the other seeds run a simulated corosync next to the nodes,
    // with its faults drawn from a generator of its own.
    let mut monitor_rng = StdRng::seed_from_u64(seed ^ 0xc0c0);
    let monitor = !quorum_disk && monitor_rng.gen_bool(MONITOR_PERCENT as f64 / 100.0);
    // Driver results held back for a while (a slow disk, a stalled data plane, a
    // quorum disk that hangs) while the node's control thread goes on, from a
    // generator of their own; PLEXD_SIM_NO_STALLS=1 leaves them out.
    // PLEXD_SIM_STALLS=N: N in 1,000 steps start one (default STALLS_PER_MILLE).
    let stalls = std::env::var("PLEXD_SIM_NO_STALLS").is_err();
    let stall_rate = std::env::var("PLEXD_SIM_STALLS")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(STALLS_PER_MILLE)
        .min(1000);
    let mut stall_rng = StdRng::seed_from_u64(seed ^ 0x57a1);
    // Now and then a node is told a group's disk is gone for good (`dg fail-disk`:
    // held across its abdications, its offers leave the disk out) or back (`dg
    // reattach-disk`), from a generator of its own.
    let mut given_up_rng = StdRng::seed_from_u64(seed ^ 0x9b0d);
    let mut stalled: Vec<(u64, NodeId, Stall)> = Vec::new();
    let mut cfg = SimConfig::new(nodes, seed);
    cfg.trace = trace;
    cfg.quorum_disk = quorum_disk;
    cfg.monitor = monitor;
    cfg.kernel_refuse_percent = 2;
    let mut sim = Sim::new(cfg);
    if resync {
        sim.set_copy_fault_percent(COPY_FAULT_PERCENT);
    }
    let mut stats = RunStats::default();
    for id in 1..=nodes {
        if rng.gen_bool(0.3) {
            let dg = NAMES[rng.gen_range(0..NAMES.len())];
            sim.add_private_dg(id, dg);
        }
        let at = rng.gen_range(0..300);
        sim.start_at(id, at);
        if rng.gen_bool(0.5) {
            sim.set_drift(id, rng.gen_range(-MAX_DRIFT_PPM..=MAX_DRIFT_PPM));
        }
    }
    let disk_note = if quorum_disk {
        " and a quorum disk"
    } else {
        ""
    };
    let fail = |sim: &Sim, step: u64, what: &str| -> String {
        format!(
            "step {step} (t = {} ms, {nodes} nodes{disk_note}): {what}\nlast events:\n{}",
            sim.now_ms(),
            sim.trace_text()
        )
    };
    for step in 0..steps {
        inject(
            &mut sim,
            &mut rng,
            &mut stats,
            mid_batch_crashes,
            partitions,
        );
        if resync {
            inject_resync(&mut sim, &mut resync_rng);
        }
        inject_private(&mut sim, &mut private_rng);
        inject_given_up(&mut sim, &mut given_up_rng);
        if buffered {
            inject_buffered_partition(&mut sim, &mut buffered_rng, &mut stats);
        }
        if monitor {
            inject_monitor(&mut sim, &mut monitor_rng);
        }
        if stalls {
            inject_stall(
                &mut sim,
                &mut stall_rng,
                stall_rate,
                &mut stalled,
                &mut stats,
            );
        }
        sim.run_for(10);
        if let Some(v) = sim.violation() {
            return Err(fail(&sim, step, v));
        }
    }
    // Quiet period: no new faults, the network whole, every node thawed, back up
    // and with working disks.
    sim.heal();
    sim.set_copy_fault_percent(0);
    for id in 1..=nodes {
        sim.thaw(id);
        sim.unstall_driver(id);
        sim.release(id);
        sim.node_mut(id).armed = None;
        sim.node_mut(id).crash_after_sends = None;
        sim.set_disk_access_broken(id, false);
        sim.node_mut(id).monitor_down_until_ms = 0;
        if !sim.is_up(id) {
            sim.start(id);
        }
    }
    let all: Vec<NodeId> = (1..=nodes).collect();
    // Every resync ends too: no plex is left SYNCING.
    let whole = sim.run_until(10_000, |s| {
        s.all_members(&all)
            && s.unanswered().is_empty()
            && s.master()
                .and_then(|m| s.core(m))
                .is_some_and(|c| c.config().syncing_plexes().is_empty())
    });
    if let Some(v) = sim.violation() {
        return Err(fail(&sim, steps, v));
    }
    if !whole {
        let roles: Vec<String> = all
            .iter()
            .map(|&id| {
                let c = sim.core(id);
                format!(
                    "{}: {:?} view {:?} idle {:?}",
                    Sim::name(id),
                    c.map(|c| c.role()),
                    c.and_then(|c| c.view())
                        .map(|v| (v.id, v.master, v.members.clone())),
                    c.map(|c| c.is_idle())
                )
            })
            .collect();
        let what =
            format!(
            "the cluster did not become whole within 10 s of quiet: {}; unanswered requests {:?}{}",
            roles.join("; "),
            sim.unanswered(),
            if quorum_disk { " (with a quorum disk)" } else { "" }
        );
        return Err(fail(&sim, steps, &what));
    }
    stats.events = sim.events();
    stats.acked = sim.acked.len();
    stats.failed = sim.failed.len();
    stats.final_seq = sim.disk().map_or(0, |d| d.config.seq);
    stats.coverage = sim.coverage.clone();
    stats.quorum_disk = quorum_disk;
    stats.resync = resync;
    stats.monitor = monitor;
    Ok(stats)
}

/// Resync seeds: a plex detached (an I/O error) where a volume has two ACTIVE
/// ones, a STALE plex attached again (SYNCING, resynced by the master); faults
/// aimed at the copying master mid-copy come from [`Sim::set_copy_fault_percent`].
fn inject_resync(sim: &mut Sim, rng: &mut StdRng) {
    let up: Vec<NodeId> = sim.ids().into_iter().filter(|&id| sim.is_up(id)).collect();
    if up.is_empty() || !rng.gen_bool(0.2) {
        return;
    }
    let id = up[rng.gen_range(0..up.len())];
    let config = sim.core(id).map(|c| c.config().clone()).unwrap_or_default();
    let stale: Vec<(String, String)> = config
        .groups
        .iter()
        .flat_map(|(v, g)| {
            g.plexes
                .iter()
                .filter(|(p, &a)| !a && !g.syncing.contains(*p))
                .map(move |(p, _)| (v.clone(), p.clone()))
        })
        .collect();
    if !stale.is_empty() && rng.gen_bool(0.7) {
        let (v, p) = &stale[rng.gen_range(0..stale.len())];
        sim.attach(id, v, p);
        return;
    }
    let detachable: Vec<(String, String)> = config
        .groups
        .iter()
        .filter(|(_, g)| g.plexes.values().filter(|&&a| a).count() >= 2)
        .flat_map(|(v, g)| g.plexes.keys().map(move |p| (v.clone(), p.clone())))
        .collect();
    if !detachable.is_empty() {
        let (v, p) = &detachable[rng.gen_range(0..detachable.len())];
        sim.plex_io_error(id, v, p);
    }
}

/// Monitor seeds: a node's corosync killed for up to three leases (its node loses
/// quorum, the others see it leave), or a view that lies (random members, random
/// quorum; the true one follows at the node's next tick): the monitor only ever
/// takes capabilities away, so no view may break an invariant.
fn inject_monitor(sim: &mut Sim, rng: &mut StdRng) {
    let ids = sim.ids();
    if rng.gen_bool(0.003) {
        let id = ids[rng.gen_range(0..ids.len())];
        let ms = rng.gen_range(100..=3 * sim.config().lease_ms);
        sim.kill_monitor(id, ms);
    }
    let up: Vec<NodeId> = ids.iter().copied().filter(|&id| sim.is_up(id)).collect();
    if !up.is_empty() && rng.gen_bool(0.003) {
        let id = up[rng.gen_range(0..up.len())];
        let members: BTreeSet<NodeId> = ids.iter().copied().filter(|_| rng.gen_bool(0.6)).collect();
        let quorate = rng.gen_bool(0.5);
        sim.send_monitor_view(id, members, quorate, "corosync: a lie".into());
    }
}

/// Every seed: a private disk group created or destroyed on a random node, with
/// the names shared groups use (so a shared change and a private one on the same
/// node often want one disk).
fn inject_private(sim: &mut Sim, rng: &mut StdRng) {
    let up: Vec<NodeId> = sim.ids().into_iter().filter(|&id| sim.is_up(id)).collect();
    if up.is_empty() || !rng.gen_bool(PRIVATE_CHANGE_PERCENT as f64 / 100.0) {
        return;
    }
    let id = up[rng.gen_range(0..up.len())];
    let mine: Vec<String> = sim
        .core(id)
        .map(|c| c.private().groups.keys().cloned().collect())
        .unwrap_or_default();
    if !mine.is_empty() && rng.gen_bool(0.4) {
        let name = mine[rng.gen_range(0..mine.len())].clone();
        let tag = sim.tag();
        sim.submit(id, ToyChange::Destroy { tag, name });
    } else {
        let name = NAMES[rng.gen_range(0..NAMES.len())];
        sim.create_private(id, name, rng.gen_range(1..=2));
    }
}

/// In [`GIVE_UP_PER_MILLE`] of 1,000 steps: a random up node is asked to record a
/// random group's disk failed (`ToyChange::FailDisk`), whatever its role: a member
/// queues or forwards it, a forming master holds it across abdications, others
/// refuse it; or, half the time, to bring it back (`ToyChange::ReattachDisk`: every
/// member's local check must reach the disk).
fn inject_given_up(sim: &mut Sim, rng: &mut StdRng) {
    if !rng.gen_bool(f64::from(GIVE_UP_PER_MILLE) / 1000.0) {
        return;
    }
    let up: Vec<NodeId> = sim.ids().into_iter().filter(|&id| sim.is_up(id)).collect();
    if up.is_empty() {
        return;
    }
    let id = up[rng.gen_range(0..up.len())];
    let name = NAMES[rng.gen_range(0..NAMES.len())].to_string();
    let tag = sim.tag();
    if rng.gen_bool(0.5) {
        sim.submit(id, ToyChange::FailDisk { tag, name });
    } else {
        sim.submit(id, ToyChange::ReattachDisk { tag, name });
    }
}

/// Steps in 1,000 that ask a node to record a disk failed ([`inject_given_up`]).
const GIVE_UP_PER_MILLE: u32 = 2;

/// What a stall holds up.
#[derive(Clone, Copy, Debug)]
enum Stall {
    /// The node's driver thread: its jobs' results come late and in order.
    Driver,
    /// A thread of its own (the quorum disk's, the dirty region log reads').
    Thread(Hold),
}

/// Stalls: now and then a random node's driver thread (a configuration disk read
/// or write, a data plane's prepare, commit or load, a local check, a resync's
/// quiesce or copy, a private change: whatever job it runs and every one behind
/// it), or its quorum disk or dirty region log thread, is held up for 50 ms to
/// three leases while its control thread goes on, then delivers what it held, in
/// order; `stalled` holds the ends due.
fn inject_stall(
    sim: &mut Sim,
    rng: &mut StdRng,
    per_mille: u32,
    stalled: &mut Vec<(u64, NodeId, Stall)>,
    stats: &mut RunStats,
) {
    let now = sim.now_ms();
    stalled.retain(|&(at, id, stall)| {
        let due = at <= now;
        if due {
            match stall {
                Stall::Driver => sim.unstall_driver(id),
                Stall::Thread(kind) => sim.release_kind(id, kind),
            }
        }
        !due
    });
    if !rng.gen_bool(f64::from(per_mille) / 1000.0) {
        return;
    }
    let ids = sim.ids();
    let id = ids[rng.gen_range(0..ids.len())];
    let stall = match rng.gen_range(0..10) {
        0 => Stall::Thread(Hold::QuorumDisk),
        1 => Stall::Thread(Hold::LogRead),
        _ => Stall::Driver,
    };
    let ms = rng.gen_range(50..=3 * sim.config().lease_ms);
    match stall {
        Stall::Driver => sim.stall_driver(id),
        Stall::Thread(kind) => sim.hold(id, kind),
    }
    stalled.push((now + ms, id, stall));
    stats.stalls += 1;
}

/// A random side cut off both ways with the messages across it kept and delivered
/// at the heal (`Sim::partition_buffered`); the ordinary heal ends it.
fn inject_buffered_partition(sim: &mut Sim, rng: &mut StdRng, stats: &mut RunStats) {
    if !rng.gen_bool(0.004) {
        return;
    }
    let ids = sim.ids();
    let side: Vec<NodeId> = ids.iter().copied().filter(|_| rng.gen_bool(0.4)).collect();
    if !side.is_empty() && side.len() < ids.len() {
        sim.partition_buffered(&side);
        stats.partitions += 1;
    }
}

fn inject(
    sim: &mut Sim,
    rng: &mut StdRng,
    stats: &mut RunStats,
    mid_batch_crashes: bool,
    partitions: bool,
) {
    let ids = sim.ids();
    let up: Vec<NodeId> = ids.iter().copied().filter(|&id| sim.is_up(id)).collect();
    let down: Vec<NodeId> = ids.iter().copied().filter(|&id| !sim.is_up(id)).collect();
    if !up.is_empty() && rng.gen_bool(0.12) {
        let id = up[rng.gen_range(0..up.len())];
        let name = NAMES[rng.gen_range(0..NAMES.len())].to_string();
        let tag = sim.tag();
        let change = if rng.gen_bool(0.7) {
            ToyChange::Create {
                tag,
                name,
                plexes: rng.gen_range(1..=3),
                log: rng.gen_bool(0.5),
            }
        } else {
            ToyChange::Destroy { tag, name }
        };
        sim.submit(id, change);
    }
    if !up.is_empty() && rng.gen_bool(0.03) {
        let id = up[rng.gen_range(0..up.len())];
        let config = sim.core(id).map(|c| c.config().clone()).unwrap_or_default();
        if let Some((vol, g)) = config
            .groups
            .iter()
            .nth(rng.gen_range(0..config.groups.len().max(1)))
        {
            let plexes: Vec<&String> = g.plexes.keys().collect();
            let plex = plexes[rng.gen_range(0..plexes.len())].clone();
            let vol = vol.clone();
            sim.plex_io_error(id, &vol, &plex);
        }
    }
    if !up.is_empty() && rng.gen_bool(0.008) {
        let id = up[rng.gen_range(0..up.len())];
        if rng.gen_bool(0.5) {
            sim.crash(id);
        } else if stats.crashes % 3 == 2 {
            // One in three of the others kills the data plane alone (no draw of
            // its own: the other seeds keep their schedules).
            sim.crash_data_plane(id);
        } else {
            sim.crash_coordinator(id);
        }
        stats.crashes += 1;
    }
    // Partitions: a random side cut off both ways, or one direction of one link;
    // healed at random, so some links flap. Frozen processes. Both on by default;
    // PLEXD_SIM_NO_PARTITIONS=1 leaves them out (the schedule before issue 8).
    if !partitions {
        return;
    }
    if rng.gen_bool(0.006) {
        let side: Vec<NodeId> = ids.iter().copied().filter(|_| rng.gen_bool(0.4)).collect();
        if !side.is_empty() && side.len() < ids.len() {
            sim.partition(&side);
            stats.partitions += 1;
        }
    }
    if rng.gen_bool(0.004) && ids.len() > 1 {
        let a = ids[rng.gen_range(0..ids.len())];
        let b = ids[rng.gen_range(0..ids.len())];
        if a != b {
            sim.block(a, b);
            stats.partitions += 1;
        }
    }
    if rng.gen_bool(0.01) {
        sim.heal();
    }
    // A frozen process (SIGSTOP, a paused VM) for up to 3 leases.
    if !up.is_empty() && rng.gen_bool(0.004) {
        let id = up[rng.gen_range(0..up.len())];
        let ms = rng.gen_range(100..=3 * sim.config().lease_ms);
        sim.freeze(id, ms);
        stats.freezes += 1;
    }
    if !up.is_empty() && rng.gen_bool(0.02) {
        let id = up[rng.gen_range(0..up.len())];
        let fp = FAILPOINTS[rng.gen_range(0..FAILPOINTS.len())];
        sim.arm_failpoint(id, fp);
    }
    if mid_batch_crashes && !up.is_empty() && rng.gen_bool(0.01) {
        let id = up[rng.gen_range(0..up.len())];
        sim.arm_crash_after_sends(id, rng.gen_range(0..6));
    }
    if !down.is_empty() && rng.gen_bool(0.04) {
        let id = down[rng.gen_range(0..down.len())];
        let broken = rng.gen_bool(0.1);
        sim.set_disk_access_broken(id, broken);
        sim.start(id);
    }
}
