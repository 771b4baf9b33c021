//! Plex resync of a shared volume while other nodes write to it: the master copies
//! chunk by chunk under a cluster-wide fence, so no write made through another node
//! during the copy of its chunk is overwritten with the older data the copy read.

use std::time::Duration;

use plexd_target::api::Injection;
use plexd_tests::{wait_until, Cluster, ClusterOpts, Pattern};

/// Latency added to the master's I/O on both disks: every chunk's copy then takes
/// at least twice this, so writes from other nodes land while a copy is under way.
const COPY_LATENCY_US: u64 = 100_000;

fn plex_state(c: &Cluster, i: usize, plex: &str) -> Result<String, String> {
    let p = c.try_ctl_json(i, "print")?;
    let v = plexd_tests::volume(&p, "dg1", "vol1").ok_or("no volume vol1")?;
    v["plexes"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == plex))
        .and_then(|p| p["state"].as_str())
        .map(|s| s.to_ascii_uppercase())
        .ok_or_else(|| format!("no plex {plex}"))
}

#[test]
fn resync_of_a_shared_mirror_keeps_the_writes_other_nodes_make_during_the_copy() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let m = c.master();
    c.shared_mirror(m, "dg1", "vol1", "8M");
    c.ctl_ok(m, "plex detach dg1 vol1-02");
    // The patterns below overwrite parts of the scenario's; keep only ours.
    c.forget_volume("dg1", "vol1");

    let k = c.kernel(m);
    for disk in ["dg1.d0", "dg1.d1"] {
        k.inject_error(disk, Injection::LatencyUs(COPY_LATENCY_US))
            .unwrap();
    }
    c.ctl_ok(m, "plex attach dg1 vol1-02");
    // Each other node writes every chunk once, at once: whichever chunk is being
    // copied meanwhile gets a write the copy must not undo.
    let others: Vec<usize> = (0..3).filter(|&i| i != m).collect();
    for (n, &i) in others.iter().enumerate() {
        let kb = c.kernel(i);
        for chunk in 0..8u64 {
            let p = Pattern {
                bdev: "dg1.vol1".into(),
                offset_bytes: (chunk << 20) + ((n as u64 + 1) << 18),
                len_bytes: 64 << 10,
                seed: 9_000 + chunk * 10 + n as u64,
            };
            p.write(&kb).unwrap();
            c.record_pattern(p);
        }
    }
    wait_until(
        "plex vol1-02 to be ACTIVE after its resync",
        Duration::from_secs(60),
        || match plex_state(&c, m, "vol1-02")?.as_str() {
            "ACTIVE" => Ok(()),
            s => Err(format!("vol1-02 is {s}")),
        },
    );
    for disk in ["dg1.d0", "dg1.d1"] {
        k.inject_error(disk, Injection::Clear).unwrap();
    }
    // Leave only the resynced plex: every read now comes from it.
    c.ctl_ok(m, "plex detach dg1 vol1-01");
    c.check_invariants();
}

/// `plex attach --wait` and `task wait`: they return once the plex is ACTIVE (never
/// while it is SYNCING), give up at `--max-wait` with exit status 4 (the copy goes
/// on), and fail with exit status 6 naming the plex when it ends STALE (detached
/// during the wait). Nothing to wait for, or a volume that does not exist, is said
/// at once.
#[test]
fn a_wait_for_a_resync_returns_when_the_plex_is_active_and_says_why_when_it_is_not() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let m = c.master();
    let (s1, s2) = ((m + 1) % 3, (m + 2) % 3);
    c.shared_mirror(m, "dg1", "vol1", "8M");
    let idle = c.ctl_ok(s1, "task wait");
    assert!(idle.contains("nothing to wait for"), "{idle}");
    let missing = c.ctl_err(s1, "task wait dg1 nosuch");
    assert!(
        missing.contains("volume nosuch of disk group dg1 does not exist"),
        "{missing}"
    );

    c.ctl_ok(m, "plex detach dg1 vol1-02");
    let k = c.kernel(m);
    for disk in ["dg1.d0", "dg1.d1"] {
        k.inject_error(disk, Injection::LatencyUs(COPY_LATENCY_US))
            .unwrap();
    }
    // The copy takes at least 8 chunks × 2 × 100 ms: longer than the wait allows.
    let out = c.ctl(s1, "plex attach dg1 vol1-02 --wait --max-wait 1");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stdout} {stderr}");
    assert!(stdout.contains("attached: SYNCING"), "{stdout}");
    assert!(
        stderr.contains("still SYNCING after 1 s")
            && stderr.contains("plex vol1-02 of volume vol1 (disk group dg1)"),
        "{stderr}"
    );
    // A wait on another node ends with the copy: the plex is ACTIVE when it returns.
    let done = c.ctl_ok(s2, "task wait dg1 vol1");
    assert!(
        done.contains("plex vol1-02 of volume vol1 (disk group dg1): ACTIVE"),
        "{done}"
    );
    assert_eq!(plex_state(&c, s2, "vol1-02").unwrap(), "ACTIVE");

    // Detached while a wait for it runs: the wait fails naming the plex.
    c.ctl_ok(m, "plex detach dg1 vol1-02");
    c.ctl_ok(s1, "plex attach dg1 vol1-02");
    assert_eq!(plex_state(&c, s1, "vol1-02").unwrap(), "SYNCING");
    let c_ref = &c;
    let (code, error) = std::thread::scope(|s| {
        let waiter = s.spawn(|| c_ref.ctl_json_err(s2, "task wait dg1 --plex vol1-02"));
        c_ref.ctl_ok(s1, "plex detach dg1 vol1-02");
        waiter.join().expect("the waiting plexctl")
    });
    assert_eq!(
        (code, error["kind"].as_str(), error["object"].as_str()),
        (6, Some("failed"), Some("vol1-02")),
        "{error}"
    );
    let message = error["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("plex vol1-02 of volume vol1 (disk group dg1) is STALE, not ACTIVE"),
        "{message}"
    );
    // The task list says why that copy ended: stopped, no failure of its own.
    let tasks = c.ctl_json(s2, "task list");
    let states: Vec<&str> = tasks["tasks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["plex"] == "vol1-02")
        .filter_map(|t| t["state"].as_str())
        .collect();
    assert!(
        states.contains(&"stopped: plex vol1-02 was detached (STALE)"),
        "{states:?}"
    );
    for disk in ["dg1.d0", "dg1.d1"] {
        k.inject_error(disk, Injection::Clear).unwrap();
    }
    let back = c.ctl_ok(s2, "plex attach dg1 vol1-02 --wait");
    assert!(
        back.contains("vol1-02 of volume vol1 (disk group dg1): ACTIVE"),
        "{back}"
    );
    c.check_invariants();
}

/// `task wait` through the cluster file goes on when the master it asks dies in the
/// middle of the copy: its next rounds ask the next node of the file, whose new
/// master copies the plex again, and it ends when the plex is ACTIVE.
#[test]
fn a_wait_through_the_cluster_file_outlives_the_master_it_was_asking() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let m = c.master();
    assert_eq!(
        m, 0,
        "node a, the first of the file (asked first), formed the cluster"
    );
    c.shared_mirror(m, "dg1", "vol1", "8M");
    c.ctl_ok(m, "plex detach dg1 vol1-02");
    let k = c.kernel(m);
    for disk in ["dg1.d0", "dg1.d1"] {
        k.inject_error(disk, Injection::LatencyUs(COPY_LATENCY_US))
            .unwrap();
    }
    c.ctl_ok(1, "plex attach dg1 vol1-02");
    let c_ref = &c;
    let out = std::thread::scope(|s| {
        let waiter = s.spawn(|| c_ref.ctl_any(&["task", "wait", "dg1", "vol1"]));
        wait_until(
            "node a's copy of vol1-02 to be under way",
            Duration::from_secs(20),
            || {
                let tasks = c_ref.try_ctl_json(1, "task list")?;
                let copied = tasks["tasks"].as_array().into_iter().flatten().any(|t| {
                    t["plex"] == "vol1-02" && t["node"] == "a" && t["done"].as_u64() > Some(0)
                });
                copied.then_some(()).ok_or(format!("{tasks}"))
            },
        );
        c_ref.sigkill_coordinator(m);
        c_ref.sigkill_target(m);
        waiter.join().expect("the waiting plexctl")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("plex vol1-02 of volume vol1 (disk group dg1): ACTIVE"),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(plex_state(&c, 1, "vol1-02").unwrap(), "ACTIVE");
    c.kill_node(m);
    c.restart_node(m);
    c.wait_all_joined();
    c.check_invariants();
}

/// The disks a volume's plexes use, by plex name, as node `i` prints them.
fn plex_disks(c: &Cluster, i: usize, vol: &str) -> Vec<(String, Vec<String>)> {
    let p = c.print(i);
    let v = plexd_tests::volume(&p, "dg1", vol)
        .cloned()
        .unwrap_or_default();
    v["plexes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|pl| {
            let disks = pl["subdisks"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|sd| sd["disk"].as_str().map(str::to_string))
                .collect();
            (pl["name"].as_str().unwrap_or("?").to_string(), disks)
        })
        .collect()
}

/// `dg evacuate` of a disk under host I/O, the master killed in the middle of the
/// copies: the new master copies again, each replacement removes its plex on the
/// disk once ACTIVE, the disk then leaves the group (`dg rm-disk`), and every node
/// reads what was written, the I/O of the move included.
#[test]
fn a_disk_evacuated_under_host_io_moves_its_plexes_even_when_the_master_dies_mid_copy() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let m = c.master();
    assert_eq!(m, 0, "node a formed the cluster");
    c.shared_mirror(m, "dg1", "vol1", "16M");
    c.ctl_ok(1, "dg add-disk dg1 d2");
    c.ctl_ok(1, "vol create dg1 cat 8M --layout concat");
    let from = plex_disks(&c, 1, "cat")[0].1[0].clone();
    let vol1_from: Vec<String> = plex_disks(&c, 1, "vol1")
        .into_iter()
        .filter(|(_, disks)| disks.contains(&from))
        .map(|(name, _)| name)
        .collect();
    assert_eq!(vol1_from.len(), 1, "vol1 has a plex on {from}");
    c.write_pattern(1, "dg1", "cat", 0, 4 << 20);
    c.write_pattern(2, "dg1", "vol1", 0, 4 << 20);
    // Slow copies on the master, host I/O through c all along.
    let k = c.kernel(m);
    for disk in ["dg1.d0", "dg1.d1", "dg1.d2"] {
        k.inject_error(disk, Injection::LatencyUs(COPY_LATENCY_US))
            .unwrap();
    }
    let io = c.start_io_loop(2, "dg1", "vol1", 7_000_000);
    // --to reaches the master: naming the disk itself is refused, nothing moves.
    let e = c.ctl_err(1, &format!("dg evacuate dg1 {from} --to {from}"));
    assert!(e.contains("--to names the disk being evacuated"), "{e}");
    let out = c.ctl_ok(1, &format!("dg evacuate dg1 {from}"));
    assert!(
        out.contains(&format!("disk {from} of disk group dg1: moving plex(es)"))
            && out.contains("cat-01 -> ")
            && out.contains(&format!("{} -> ", vol1_from[0])),
        "{out}"
    );
    let tree = c.ctl_ok(2, "print dg1");
    assert!(tree.contains("replaces cat-01"), "{tree}");
    let again = c.ctl_err(2, &format!("dg evacuate dg1 {from}"));
    assert!(again.contains("are being moved already"), "{again}");
    wait_until(
        "node a's copies to be under way",
        Duration::from_secs(20),
        || {
            let tasks = c.try_ctl_json(1, "task list")?;
            // (progress is reported every 16 chunks: "running" is what shows)
            let copying = tasks["tasks"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|t| t["node"] == "a" && t["state"] == "running");
            copying.then_some(()).ok_or(format!("{tasks}"))
        },
    );
    c.sigkill_coordinator(m);
    c.sigkill_target(m);
    let done = c.ctl_ok(1, "task wait dg1");
    assert!(
        done.contains("ACTIVE") && !done.contains("SYNCING"),
        "{done}"
    );
    // The new master (b) copied both again, from the start.
    let tasks = c.ctl_json(1, "task list");
    for vol in ["cat", "vol1"] {
        let by_b = tasks["tasks"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["volume"] == vol && t["node"] == "b" && t["state"] == "done");
        assert!(by_b, "{vol}'s copy ended on node b: {tasks}");
    }
    for vol in ["cat", "vol1"] {
        let plexes = plex_disks(&c, 1, vol);
        assert!(
            plexes.iter().all(|(_, disks)| !disks.contains(&from)),
            "{vol} still has a plex on {from}: {plexes:?}"
        );
        assert_eq!(
            plexes.len(),
            if vol == "cat" { 1 } else { 2 },
            "{vol}: {plexes:?}"
        );
    }
    let p = c.print(1);
    assert!(!p.to_string().contains("\"replaces\""), "{p}");
    c.ctl_ok(2, &format!("dg rm-disk dg1 {from}"));
    io.wait_more_rounds(2, Duration::from_secs(30));
    let seen = io.stop();
    // Fenced (errno 108) only while c's lease waited for the new master.
    let unfenced = seen.unfenced_errors();
    assert!(
        unfenced.is_empty(),
        "host I/O through c failed: {unfenced:?}"
    );
    c.record_pattern(seen.last.expect("the loop wrote"));
    c.kill_node(m);
    c.restart_node(m);
    c.wait_all_joined();
    c.check_invariants();
}
