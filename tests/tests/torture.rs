//! A bounded randomised torture test: random changes on random nodes, coordinators
//! killed at random failpoints or by `kill -9`, whole nodes killed, coordinators
//! (alone or with their data plane) frozen (SIGSTOP) through a change for up to
//! two leases, the whole cluster paused as long just before a change, restarts, and
//! the
//! invariants after every step. Prints its seed; `PLEXD_TORTURE_SEED=<seed>`
//! reproduces a run, `PLEXD_TORTURE_STEPS` / `PLEXD_TORTURE_SECS` change its bounds.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use plexd_tests::cluster::LEASE_MS;
use plexd_tests::{group, volume, Cluster, ClusterOpts};

/// Default bounds: whichever comes first.
const DEFAULT_STEPS: u64 = 200;
const DEFAULT_SECS: u64 = 60;
/// Most volumes kept at once (disk space is 6 x 256 MiB).
const MAX_VOLUMES: usize = 6;

/// Failpoints of the transaction, each fires on whichever coordinator reaches it.
const TXN_FAILPOINTS: [&str; 7] = [
    "txn.after_validate",
    "txn.after_check",
    "txn.after_prepare",
    "txn.before_successor_commit",
    "txn.after_successor_ack",
    "txn.after_disk_write",
    "txn.after_commit_sent",
];

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

/// A change and how to see in a `--json print` that it was applied.
#[derive(Debug, Clone)]
enum Change {
    VolCreate {
        dg: String,
        vol: String,
        size_mib: u64,
        layout: &'static str,
    },
    VolRm {
        dg: String,
        vol: String,
    },
    VolGrow {
        dg: String,
        vol: String,
        size_mib: u64,
    },
    DgCreate {
        dg: String,
        disks: Vec<String>,
    },
    DgDestroy {
        dg: String,
    },
    DgEvacuate {
        dg: String,
        disk: String,
    },
}

impl Change {
    fn command(&self) -> String {
        match self {
            Change::VolCreate {
                dg,
                vol,
                size_mib,
                layout,
            } => format!("vol create {dg} {vol} {size_mib}M {layout}"),
            Change::VolRm { dg, vol } => format!("vol rm {dg} {vol}"),
            Change::VolGrow { dg, vol, size_mib } => format!("vol grow {dg} {vol} {size_mib}M"),
            Change::DgCreate { dg, disks } => {
                format!("dg create {dg} {} --shared", disks.join(" "))
            }
            Change::DgDestroy { dg } => format!("dg destroy {dg}"),
            Change::DgEvacuate { dg, disk } => format!("dg evacuate {dg} {disk}"),
        }
    }

    /// Whether the change is in `print`, the configuration after it (`before`: the
    /// one before it).
    fn applied(&self, before: &Value, print: &Value) -> bool {
        match self {
            Change::VolCreate { dg, vol, .. } => volume(print, dg, vol).is_some(),
            Change::VolRm { dg, vol } => volume(print, dg, vol).is_none(),
            Change::VolGrow { dg, vol, size_mib } => {
                volume(print, dg, vol).is_some_and(|v| v["size"].as_u64() == Some(size_mib << 20))
            }
            Change::DgCreate { dg, .. } => group(print, dg).is_some(),
            Change::DgDestroy { dg } => group(print, dg).is_none(),
            // A new replacement (still copying), or a plex that was on the disk gone
            // (its replacement's copy already over): nothing else moves plexes.
            Change::DgEvacuate { dg, disk } => {
                let replacements = |p| plex_names(p, dg, |pl| pl.get("replaces").is_some());
                let on_disk = |p| plex_names(p, dg, |pl| plex_disks(pl).contains(disk));
                let (was, now) = (replacements(before), replacements(print));
                let still = on_disk(print);
                now.iter().any(|r| !was.contains(r))
                    || on_disk(before).iter().any(|p| !still.contains(p))
            }
        }
    }
}

/// Every plex of group `dg` in `print`.
fn group_plexes(print: &Value, dg: &str) -> Vec<Value> {
    group(print, dg)
        .and_then(|g| g["volumes"].as_array())
        .into_iter()
        .flatten()
        .flat_map(|v| v["plexes"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// The names of group `dg`'s plexes in `print` that `keep` keeps.
fn plex_names(print: &Value, dg: &str, keep: impl Fn(&Value) -> bool) -> Vec<String> {
    group_plexes(print, dg)
        .iter()
        .filter(|pl| keep(pl))
        .filter_map(|pl| pl["name"].as_str().map(str::to_string))
        .collect()
}

/// The disks of a plex of `print --json`.
fn plex_disks(pl: &Value) -> Vec<String> {
    pl["subdisks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|sd| sd["disk"].as_str().map(str::to_string))
        .collect()
}

/// Volumes of the shared groups: (dg, vol, size in bytes).
fn volumes(print: &Value) -> Vec<(String, String, u64)> {
    let mut out = Vec::new();
    for g in plexd_tests::cluster::shared_groups(print) {
        let dg = g["name"].as_str().unwrap_or("?").to_string();
        for v in g["volumes"].as_array().cloned().unwrap_or_default() {
            out.push((
                dg.clone(),
                v["name"].as_str().unwrap_or("?").to_string(),
                v["size"].as_u64().unwrap_or(0),
            ));
        }
    }
    out
}

/// The space this step's change gave a volume, when it was applied (a new volume
/// whole, a grow's new end): `(dg, vol, from, to)`. It reads as zeroes
/// (docs/OPERATIONS.md, "New space reads as zeroes"), also when the change went
/// through a kill or a freeze.
fn new_space(change: &Change, before: &Value, after: &Value) -> Option<(String, String, u64, u64)> {
    let size = |p: &Value, dg: &str, vol: &str| {
        volumes(p)
            .into_iter()
            .find(|(d, v, _)| d == dg && v == vol)
            .map(|(_, _, s)| s)
    };
    match change {
        Change::VolCreate { dg, vol, .. } => {
            Some((dg.clone(), vol.clone(), 0, size(after, dg, vol)?))
        }
        Change::VolGrow { dg, vol, .. } => Some((
            dg.clone(),
            vol.clone(),
            size(before, dg, vol)?,
            size(after, dg, vol)?,
        )),
        _ => None,
    }
}

/// Disks (by media name) that no shared group of `print` uses.
fn free_disks(print: &Value, n_disks: usize) -> Vec<String> {
    let used = print.to_string();
    (0..n_disks)
        .map(plexd_tests::disk_name)
        .filter(|d| !used.contains(&format!("\"{d}\"")))
        .collect()
}

fn random_change(rng: &mut StdRng, print: &Value, n_disks: usize, serial: u64) -> Change {
    let vols = volumes(print);
    let groups: Vec<String> = plexd_tests::cluster::shared_groups(print)
        .iter()
        .filter_map(|g| g["name"].as_str().map(str::to_string))
        .collect();
    let removable: Vec<&(String, String, u64)> =
        vols.iter().filter(|(_, v, _)| v != "vol1").collect();
    loop {
        match rng.gen_range(0..11) {
            0..=3 if vols.len() < MAX_VOLUMES => {
                let layout = [
                    "--layout mirror --mirrors 2",
                    "--layout concat",
                    "--layout stripe --columns 2",
                ][rng.gen_range(0..3)];
                return Change::VolCreate {
                    dg: groups[rng.gen_range(0..groups.len())].clone(),
                    vol: format!("v{serial}"),
                    size_mib: 8 * rng.gen_range(1..=3),
                    layout,
                };
            }
            4..=5 if !removable.is_empty() => {
                let (dg, vol, _) = removable[rng.gen_range(0..removable.len())];
                return Change::VolRm {
                    dg: dg.clone(),
                    vol: vol.clone(),
                };
            }
            6..=7 if !vols.is_empty() => {
                let (dg, vol, size) = &vols[rng.gen_range(0..vols.len())];
                return Change::VolGrow {
                    dg: dg.clone(),
                    vol: vol.clone(),
                    size_mib: (size >> 20) + 8,
                };
            }
            8 => {
                let free = free_disks(print, n_disks);
                if free.len() >= 2 {
                    // Three disks when there are, half the time: room to evacuate
                    // one of a mirror's disks.
                    let n = if free.len() >= 3 && rng.gen_bool(0.5) {
                        3
                    } else {
                        2
                    };
                    return Change::DgCreate {
                        dg: format!("g{serial}"),
                        disks: free[..n].to_vec(),
                    };
                }
            }
            9 => {
                let empty: Vec<&String> = groups
                    .iter()
                    .filter(|g| *g != "dg1" && !vols.iter().any(|(d, _, _)| d == *g))
                    .collect();
                if !empty.is_empty() {
                    return Change::DgDestroy {
                        dg: empty[rng.gen_range(0..empty.len())].clone(),
                    };
                }
            }
            10 => {
                // A disk that holds a plex (refused when its volume has no room elsewhere).
                let held: Vec<(String, String)> = groups
                    .iter()
                    .flat_map(|g| group_plexes(print, g).into_iter().map(move |pl| (g, pl)))
                    .flat_map(|(g, pl)| plex_disks(&pl).into_iter().map(move |d| (g.clone(), d)))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                // dg1's mirror vol1 spans both its disks: an evacuation there is
                // refused, so the other groups' disks come first.
                let others: Vec<&(String, String)> =
                    held.iter().filter(|(g, _)| g != "dg1").collect();
                let pick = if others.is_empty() {
                    held.iter().collect()
                } else {
                    others
                };
                if !pick.is_empty() {
                    let (dg, disk) = pick[rng.gen_range(0..pick.len())].clone();
                    return Change::DgEvacuate { dg, disk };
                }
            }
            _ => {}
        }
    }
}

/// Restarts every coordinator that died and every target that was killed. A node
/// still armed with a failpoint is killed and restarted disarmed too: it may be about
/// to reach its failpoint after plexctl got its answer, so a kill -9 now keeps each
/// failpoint's window to one change (and is one more crash to survive).
fn restart_dead(c: &mut Cluster) -> bool {
    let mut any = false;
    for i in 0..c.nodes.len() {
        if !c.target_running(i) || !c.coordinator_running(i) || c.failpoint(i).is_some() {
            any = true;
            c.kill_coordinator(i);
            c.set_failpoint(i, None);
            c.restart_node(i);
        }
    }
    any
}

/// Forgets the patterns of volumes `print` no longer has.
fn forget_removed(c: &mut Cluster, print: &Value) {
    let vols = volumes(print);
    let known: Vec<String> = c.patterns().iter().map(|p| p.bdev.clone()).collect();
    for bdev in &known {
        if !vols.iter().any(|(dg, v, _)| format!("{dg}.{v}") == *bdev) {
            let (dg, v) = bdev.split_once('.').expect("dg.vol");
            c.forget_volume(dg, v);
        }
    }
}

/// Gives every volume without a pattern one (in its last MiB).
fn write_patterns(c: &mut Cluster, rng: &mut StdRng, print: &Value) {
    let vols = volumes(print);
    let known: Vec<String> = c.patterns().iter().map(|p| p.bdev.clone()).collect();
    for (dg, v, size) in vols {
        if !known.contains(&format!("{dg}.{v}")) && size >= 1 << 20 {
            let node = rng.gen_range(0..c.nodes.len());
            c.write_pattern(node, &dg, &v, size - (1 << 20), 1 << 20);
        }
    }
}

/// Runs the steps; returns how many completed.
fn run(
    c: &mut Cluster,
    rng: &mut StdRng,
    step_out: &mut u64,
    max_steps: u64,
    budget: Duration,
) -> u64 {
    let started = Instant::now();
    let n_disks = c.disks.len();
    for step in 0..max_steps {
        *step_out = step;
        if started.elapsed() > budget {
            return step;
        }
        let before = c.agreed_print();
        let change = random_change(rng, &before, n_disks, step);
        let node = rng.gen_range(0..c.nodes.len());
        let what = rng.gen_range(0..10);
        let mut note = String::new();
        let mut frozen: Option<(usize, bool, Instant)> = None;
        let mut paused = false;
        match what {
            0..=1 => {
                let victim = rng.gen_range(0..c.nodes.len());
                let fp = TXN_FAILPOINTS[rng.gen_range(0..TXN_FAILPOINTS.len())];
                note = format!("node {victim} armed with {fp}; ");
                c.restart_coordinator(victim, Some(fp));
            }
            2 => {
                let victim = rng.gen_range(0..c.nodes.len());
                note = format!("kill -9 of plexd {victim}; ");
                c.kill_coordinator(victim);
            }
            3 => {
                let victim = rng.gen_range(0..c.nodes.len());
                note = format!("kill -9 of node {victim}; ");
                c.kill_node(victim);
            }
            4 => {
                // A paused process (SIGSTOP): the master, a successor or a slave,
                // through the change and past its lease or not.
                // Half the time with its data plane (a paused VM).
                let victim = rng.gen_range(0..c.nodes.len());
                let ms = rng.gen_range(200..=2 * LEASE_MS);
                let whole = rng.gen_bool(0.5);
                note = format!(
                    "{} {victim} frozen for {ms} ms; ",
                    if whole { "node" } else { "plexd" }
                );
                c.freeze(victim);
                if whole {
                    c.freeze_target(victim);
                }
                frozen = Some((victim, whole, Instant::now() + Duration::from_millis(ms)));
            }
            5 => {
                // The whole cluster paused at once (every process: a host or VM
                // stall), for less or more than the heartbeat timeout and the
                // lease; the change goes to it as it runs again.
                let ms = rng.gen_range(200..=2 * LEASE_MS);
                note = format!("whole cluster paused for {ms} ms; ");
                let all = c.live();
                for &i in &all {
                    c.freeze_target(i);
                    c.freeze(i);
                }
                // The pause is the fault (a fixed length, not a wait for a condition).
                std::thread::sleep(Duration::from_millis(ms));
                for &i in &all {
                    c.thaw(i);
                    c.thaw_target(i);
                }
                paused = true;
            }
            _ => {}
        }
        // A change on a live node (the issuing node is never the one just killed
        // or frozen).
        let live: Vec<usize> = c
            .live()
            .into_iter()
            .filter(|&i| frozen.is_none_or(|(f, _, _)| f != i))
            .collect();
        let issuer = live[node % live.len()];
        let out = c.ctl(issuer, &change.command());
        let code = out.status.code();
        eprintln!(
            "torture step {step}: {note}plexctl on {} {} -> {:?} {}",
            c.nodes[issuer].name,
            change.command(),
            code,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        // Success, or a typed failure (refused, unreachable, no quorum or busy,
        // outcome unknown, failed on a node); never a usage or internal error.
        use plexd_tests::cluster::{
            EXIT_FAILED, EXIT_NO_QUORUM, EXIT_OUTCOME_UNKNOWN, EXIT_REFUSED, EXIT_UNREACHABLE,
        };
        assert!(
            matches!(
                code,
                Some(
                    0 | EXIT_REFUSED
                        | EXIT_UNREACHABLE
                        | EXIT_NO_QUORUM
                        | EXIT_OUTCOME_UNKNOWN
                        | EXIT_FAILED
                )
            ),
            "step {step}: plexctl {} exited with {code:?}",
            change.command()
        );
        // A frozen process wakes when its time is up (a bounded fault, not a wait
        // for a condition) and rejoins.
        if let Some((victim, whole, until)) = frozen {
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
            if whole {
                c.thaw_target(victim);
            }
            c.thaw(victim);
        }
        // Whoever died (killed above, or at an armed failpoint) comes back disarmed.
        let someone_died = restart_dead(c);
        let disturbed = frozen.is_some() || paused;
        if disturbed {
            c.wait_all_joined();
        }
        let after = c.agreed_print();
        forget_removed(c, &after);
        c.check_invariants();
        let applied = change.applied(&before, &after);
        // Through a freeze, an answer may not come (unreachable) or say the
        // outcome is unknown: either outcome is then right.
        let undecided = disturbed && matches!(code, Some(EXIT_OUTCOME_UNKNOWN | EXIT_UNREACHABLE));
        if !someone_died && !undecided {
            assert_eq!(
                applied,
                code == Some(0),
                "step {step}: plexctl said {code:?} but the change is {}applied: {after}",
                if applied { "" } else { "not " }
            );
        }
        if !applied {
            // A node killed while serving has its mirrors recovered (all but one
            // plex SYNCING, then resynchronised; docs/PROTOCOL.md, "Node-crash
            // recovery"): that moves sequence numbers and plex states on its own,
            // and so may a node frozen out of the view.
            let groups = |p: &serde_json::Value| {
                let g = plexd_tests::cluster::shared_groups(p);
                if someone_died || disturbed {
                    g.iter().map(without_recovery).collect()
                } else {
                    g
                }
            };
            assert_eq!(
                groups(&after),
                groups(&before),
                "step {step}: a change that was not applied changed the configuration"
            );
        }
        // Its first and last MiB, through a random node, before any pattern.
        if let Some((dg, vol, from, to)) = applied
            .then(|| new_space(&change, &before, &after))
            .flatten()
        {
            let node = rng.gen_range(0..c.nodes.len());
            c.wait_served(node, &dg, &vol);
            let k = c.kernel(node);
            let bdev = format!("{dg}.{vol}");
            let first = (to - from).min(1 << 20);
            for at in [from, to - first] {
                plexd_tests::data::verify_zeroes(&k, &bdev, at, first, Duration::from_secs(20))
                    .unwrap_or_else(|e| panic!("step {step}: the new space of {bdev}: {e}"));
            }
        }
        if applied && matches!(change, Change::DgEvacuate { .. }) {
            // The moves end by themselves (each copy's end removes its old plex):
            // the next step starts from a configuration at rest.
            c.wait_no_syncing(
                0,
                &format!("step {step}: the evacuation's copies to end"),
                Duration::from_secs(60),
            );
            let moved = c.agreed_print();
            let waiting: Vec<String> = plexd_tests::cluster::shared_groups(&moved)
                .iter()
                .filter_map(|g| g["name"].as_str())
                .flat_map(|g| plex_names(&moved, g, |pl| pl.get("replaces").is_some()))
                .collect();
            if !waiting.is_empty() {
                // A replacement detached by an I/O error keeps its move (plex attach
                // resumes it); the old plex stays meanwhile.
                eprintln!("step {step}: a move waits on a detached replacement: {waiting:?}");
            }
            c.check_invariants();
        }
        write_patterns(c, rng, &after);
    }
    max_steps
}

#[test]
fn torture_random_changes_with_kills_at_random_failpoints_keep_the_invariants() {
    let seed = env_u64("PLEXD_TORTURE_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let max_steps = env_u64("PLEXD_TORTURE_STEPS").unwrap_or(DEFAULT_STEPS);
    let budget = Duration::from_secs(env_u64("PLEXD_TORTURE_SECS").unwrap_or(DEFAULT_SECS));
    eprintln!(
        "torture: seed {seed} (PLEXD_TORTURE_SEED={seed} reproduces), at most {max_steps} steps / {} s",
        budget.as_secs()
    );
    let mut rng = StdRng::seed_from_u64(seed);
    // Eight disks: room for groups of three, whose mirrors can be evacuated.
    let opts = ClusterOpts {
        disks: 8,
        ..ClusterOpts::default()
    };
    let mut c = Cluster::start(3, opts);
    c.shared_mirror(0, "dg1", "vol1", "32M");
    let mut step = 0;
    let r = catch_unwind(AssertUnwindSafe(|| {
        run(&mut c, &mut rng, &mut step, max_steps, budget)
    }));
    let completed = match r {
        Ok(n) => n,
        Err(e) => {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            panic!(
                "torture failed at step {step}; reproduce with PLEXD_TORTURE_SEED={seed}: {msg}"
            );
        }
    };
    eprintln!("torture: seed {seed}: {completed} steps passed");
}

/// A shared group as node-crash recovery leaves it comparable: without its sequence
/// number, SYNCING plexes shown ACTIVE and without the ranges left to copy (recovery
/// only turns ACTIVE plexes SYNCING, over a dirty region log's ranges or whole, and its
/// resync turns them back).
fn without_recovery(group: &serde_json::Value) -> serde_json::Value {
    let mut g = group.clone();
    if let Some(o) = g.as_object_mut() {
        o.remove("seq");
    }
    if let Some(vols) = g["volumes"].as_array_mut() {
        for v in vols {
            if let Some(plexes) = v["plexes"].as_array_mut() {
                for p in plexes {
                    if p["state"] == "SYNCING" {
                        p["state"] = "ACTIVE".into();
                        // A recovery from a dirty region log: the ranges left to copy.
                        if let Some(o) = p.as_object_mut() {
                            o.remove("resync");
                        }
                    }
                }
            }
        }
    }
    g
}
