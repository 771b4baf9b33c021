//! Restarts: a coordinator alone (I/O goes on), and every process at once (the disks
//! bring back the last committed configuration).

use std::time::Duration;

use plexd_coordinator::ondisk;
use plexd_tests::cluster::without_seq;
use plexd_tests::cluster::{node_reason, status_node, EXIT_NO_QUORUM};
use plexd_tests::plex_disk::plexd_log;
use plexd_tests::{wait_until, Cluster, ClusterOpts};

#[test]
fn restarting_a_coordinator_alone_never_interrupts_io() {
    // The default lease (5 s): the restart and rejoin fit inside it.
    let opts = ClusterOpts {
        lease_ms: 5000,
        ..ClusterOpts::default()
    };
    let mut c = Cluster::start(3, opts);
    c.shared_mirror(0, "dg1", "vol1", "32M");
    let io = c.start_io_loop(1, "dg1", "vol1", 1_000_000);
    let wait = Duration::from_secs(20);
    io.wait_more_rounds(3, wait);
    c.kill_coordinator(1);
    io.wait_more_rounds(10, wait); // I/O goes on with b's plexd dead
    c.restart_coordinator(1, None); // b resynchronises and rejoins
    io.wait_more_rounds(3, wait);
    let seen = io.stop();
    assert_eq!(
        seen.error_count, 0,
        "I/O failed while the coordinator restarted: {:?}",
        seen.errors
    );
    c.record_pattern(seen.last.expect("the loop wrote"));
    c.ctl_ok(1, "vol create dg1 vol2 16M --layout concat");
    c.check_invariants();
}

#[test]
fn kill_9_of_every_process_then_restart_brings_back_exactly_the_last_committed_configuration() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.shared_mirror(0, "dg1", "vol1", "32M");
    c.ctl_ok(1, "vol create dg1 vol2 16M --layout concat");
    c.ctl_ok(2, "vol grow dg1 vol1 48M");
    c.write_pattern(2, "dg1", "vol1", 40 << 20, 1 << 20);
    c.ctl_ok(0, "dg create dg2 d2 d3 --shared");
    c.ctl_ok(0, "vol create dg2 vol3 16M --layout stripe --columns 2");
    c.write_pattern(1, "dg2", "vol3", 0, 2 << 20);
    c.check_invariants();
    let before = c.agreed_print();

    c.kill_all();
    c.restart_all();
    assert_eq!(c.master(), 0, "a, started first, forms the new cluster");
    // Every node died serving the shared volumes: the new master recovers their
    // starts (vol1's second plex resynchronised from its first, docs/PROTOCOL.md,
    // "Node-crash recovery"), which moves the groups' sequence numbers; once the
    // resync is done the configuration is the one committed before the kill.
    assert_eq!(c.recovered_print(), without_seq(&before));
    let log = std::fs::read_to_string(c.nodes[0].dir.join("plexd.log")).unwrap_or_default();
    assert!(
        log.contains("recovering the mirrors of node"),
        "a recovers the dead starts"
    );
    c.check_invariants();
}

/// A node whose membership record cannot be written (a full or read-only state
/// directory; here a directory where the record's temporary file goes) must not
/// stay a member: a restart of its plexd would not know it may have confirmed the
/// master's lease. Its plexd exits before sending anything the record was to cover
/// (as if killed), the other nodes go on, a start is refused while the record still
/// cannot be written, and once it can, the node rejoins.
#[test]
fn a_node_that_cannot_record_its_membership_exits_and_starts_again_only_once_it_can() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let b = 1;
    let record = c.nodes[b]
        .dir
        .join(format!("plexd-node-{}.membership", c.nodes[b].id));
    assert!(record.exists(), "b, a member, keeps {}", record.display());
    let blocker = record.with_extension("membership.tmp");
    std::fs::create_dir(&blocker).unwrap();
    let status = c.wait_coordinator_exit(b);
    assert_eq!(status.code(), Some(1), "b's plexd exits with an error");
    let log = plexd_log(&c, b);
    assert!(
        log.contains("node b: cannot write the membership record")
            && log.contains("plexd exits: a restart must know"),
        "b's log says why it exits:\n{log}"
    );
    c.wait_joined(&[0, 2]);
    c.ctl_ok(2, "dg create dg1 d0 d1 --shared");
    // Started while the record still cannot be written: refused at once.
    c.spawn_coordinator(b);
    let status = c.wait_coordinator_exit(b);
    assert!(!status.success(), "a start without a record is refused");
    let log = plexd_log(&c, b);
    assert!(
        log.contains("plexd does not start without it"),
        "b's log says why it does not start:\n{log}"
    );
    std::fs::remove_dir(&blocker).unwrap();
    c.restart_coordinator(b, None);
    c.ctl_ok(b, "vol create dg1 vol1 16M --layout concat");
    c.check_invariants();
}

/// Every process stops, and the cluster starts again without disk d1 (no node finds
/// it). The node that forms reads dg1 from d0 alone and names the missing disk (a
/// configuration write only d1 took would not be seen: docs/ONDISK.md, "What a disk
/// that misses a write can lose"); the others refuse to join a configuration whose
/// disk they cannot reach, so no majority forms and nothing changes on the older
/// copy. With d1 back, the cluster forms whole.
#[test]
fn a_restart_without_one_of_a_groups_disks_forms_no_majority_until_it_is_back() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.ctl_ok(0, "dg create dg1 d0 d1 --shared");
    c.ctl_ok(0, "vol create dg1 vol1 16M --layout concat");
    c.kill_all();
    start_without_disks(&mut c, &[0, 1, 2], &[1]);
    wait_b_and_c_refuse(&c, "to join without d1", |node| {
        format!("cannot find disk d1 on node {node}")
    });
    let log = plexd_log(&c, 0);
    assert!(
        log.lines()
            .any(|l| l.contains("node a: disk group dg1: configuration seq")
                && l.contains("read without its disk(s) d1,")),
        "a names the disk it read dg1 without:\n{log}"
    );
    let e = c.ctl_fails(
        0,
        "vol create dg1 vol2 8M --layout concat",
        &[EXIT_NO_QUORUM],
    );
    assert!(e.contains("no quorum"), "{e}");
    c.kill_all();
    for i in 0..3 {
        c.set_hidden_disks(i, &[]);
    }
    c.restart_all();
    let print = c.print(1);
    assert!(
        plexd_tests::volume(&print, "dg1", "vol1").is_some()
            && plexd_tests::volume(&print, "dg1", "vol2").is_none(),
        "dg1 is back as it was: {print}"
    );
    c.check_invariants();
}

/// Starts `nodes` (stopped) with `disks` hidden from each (no path finds them).
fn start_without_disks(c: &mut Cluster, nodes: &[usize], disks: &[usize]) {
    for &i in nodes {
        c.set_hidden_disks(i, disks);
        c.start_target(i);
        c.start_coordinator(i);
    }
}

/// Restarts node c without disk d1 and waits until it is refused for it (a's
/// `cluster status` gives c's reason).
fn restart_c_without_d1(c: &mut Cluster) {
    c.kill_node(2);
    start_without_disks(c, &[2], &[1]);
    wait_until(
        "c to refuse to join without d1",
        Duration::from_secs(20),
        || {
            let status = c.try_ctl_json(0, "cluster status")?;
            match node_reason(&status, "c") {
                Some(r) if r.contains("cannot find disk d1 on node c") => Ok(()),
                r => Err(format!("{r:?}")),
            }
        },
    );
}

/// Waits until volume `vol`'s plex on `disk` is ACTIVE, as node `i` shows it (a
/// resync done).
fn wait_plex_active(c: &Cluster, i: usize, dg: &str, vol: &str, disk: &str) {
    wait_until(
        &format!("{vol}'s plex on {disk} to be ACTIVE"),
        Duration::from_secs(60),
        || match c.plex_on(i, dg, vol, disk).1.as_str() {
            "ACTIVE" => Ok(()),
            s => Err(s.to_string()),
        },
    );
}

/// Waits until nodes b and c both report a reason (their last join failure, as
/// node a's `cluster status` shows it) that contains `reason(node)`.
fn wait_b_and_c_refuse(c: &Cluster, what: &str, reason: impl Fn(&str) -> String) {
    let refused = |status: &serde_json::Value, node: &str| {
        node_reason(status, node).is_some_and(|r| r.contains(&reason(node)))
    };
    wait_until(
        &format!("b and c to refuse {what}"),
        Duration::from_secs(20),
        || {
            let status = c.try_ctl_json(0, "cluster status")?;
            match refused(&status, "b") && refused(&status, "c") {
                true => Ok(()),
                false => Err(status.to_string()),
            }
        },
    );
}

/// A full restart whose forming node (a, the lowest id) does not find the one disk
/// that took the newest configuration write (d0 missed it; d1 is missing on a
/// only): a forms from d0's older copy, but b and c find d1's newer one and refuse
/// to join, so no majority goes on from the older copy (docs/ONDISK.md, "What a
/// disk that misses a write can lose"). With d1 back on a, the newer configuration
/// is the cluster's.
#[test]
fn a_forming_node_without_the_disk_that_took_the_newest_write_gets_no_majority() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.ctl_ok(0, "dg create dg1 d0 d1 --shared");
    c.ctl_ok(0, "vol create dg1 vol1 16M --layout concat");
    // d0 misses the next write: its private region goes back to what it held
    // before, as when its write failed.
    let d0 = c.disks[0].clone();
    let private_region = ondisk::read_label(&d0)
        .expect("label of d0")
        .private_region_bytes as usize;
    let read_region = || {
        let mut region = vec![0u8; private_region];
        std::fs::File::open(&d0)
            .and_then(|f| std::os::unix::fs::FileExt::read_exact_at(&f, &mut region, 0))
            .expect("read d0's private region");
        region
    };
    let before = read_region();
    c.ctl_ok(0, "vol create dg1 vol2 8M --layout concat");
    c.kill_all();
    assert_ne!(read_region(), before, "vol2 was written to d0");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&d0)
        .and_then(|f| std::os::unix::fs::FileExt::write_all_at(&f, &before, 0))
        .expect("put back d0's older private region");
    c.set_hidden_disks(0, &[1]);
    for i in 0..3 {
        c.start_target(i);
        c.start_coordinator(i);
    }
    wait_b_and_c_refuse(&c, "a's older configuration", |node| {
        format!("disk group dg1: disk(s) d1 on node {node} hold configuration seq")
    });
    let status = c.status(0);
    assert!(
        node_reason(&status, "b")
            .is_some_and(|r| r.contains("the master read the disks without them")),
        "{status}"
    );
    let e = c.ctl_fails(
        0,
        "vol create dg1 vol3 8M --layout concat",
        &[EXIT_NO_QUORUM],
    );
    assert!(e.contains("no quorum"), "{e}");
    // Stopping a is a way out: b forms from the newer copy, with c.
    c.kill_node(0);
    wait_until(
        "b to form the cluster with c",
        Duration::from_secs(30),
        || {
            let status = c.try_ctl_json(1, "cluster status")?;
            let c_up = status_node(&status, "c").is_some_and(|n| n["state"] == "up");
            match status["master"] == "b" && c_up {
                true => Ok(()),
                false => Err(status.to_string()),
            }
        },
    );
    c.ctl_ok(1, "vol create dg1 vol3 8M --layout concat");
    let print = c.print(2);
    assert!(
        ["vol1", "vol2", "vol3"]
            .iter()
            .all(|v| plexd_tests::volume(&print, "dg1", v).is_some()),
        "dg1 went on from the configuration with vol2: {print}"
    );
    // With d1 found again, a joins.
    c.set_hidden_disks(0, &[]);
    c.restart_node(0);
    c.check_invariants();
}

/// A private group's disk that its node no longer finds (gone for good, or a path
/// lost) keeps out only the group's volumes that use it: the node's data plane loads
/// the rest, so the node still joins the cluster and serves the shared volumes and
/// the group's other volumes. With the disk back, the volume is served again.
#[test]
fn a_private_groups_missing_disk_keeps_out_its_volumes_not_the_node() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.shared_mirror(0, "dg1", "vol1", "16M");
    c.ctl_ok(1, "dg create dg2 d2 d3");
    c.ctl_ok(1, "vol create dg2 mirrored 8M --layout mirror");
    c.ctl_ok(1, "vol create dg2 single 8M --layout concat");
    // b's own volume: its pattern is b's to check (the invariants check every node).
    let pattern = c.write_pattern(1, "dg2", "single", 0, 1 << 20);
    c.forget_volume("dg2", "single");
    // The disk of dg2 that `single` does not use goes missing on b.
    let print = c.print(1);
    let single = plexd_tests::volume(&print, "dg2", "single").expect("single");
    let on_d2 = single["plexes"][0]["subdisks"][0]["disk"] == "d2";
    let (lost, lost_name) = if on_d2 { (3, "d3") } else { (2, "d2") };
    c.kill_node(1);
    start_without_disks(&mut c, &[1], &[lost]);
    c.wait_all_joined();
    c.wait_served(1, "dg1", "vol1");
    c.wait_served(1, "dg2", "single");
    pattern.verify(&c.kernel(1)).expect("single's data on b");
    let volumes = c.target_volumes(1).expect("volumes");
    assert!(
        !volumes.contains(&"dg2.mirrored".to_string()),
        "b serves a volume without its disk: {volumes:?}"
    );
    let log = plexd_log(&c, 1);
    assert!(
        log.contains(&format!(
            "node b: disk group dg2: disk(s) {lost_name} not found on the disk paths: volume(s) mirrored not served on this node"
        )),
        "b names the disk and the volume it leaves out:\n{log}"
    );
    // A shared change goes through b (its data plane takes it) meanwhile.
    c.ctl_ok(0, "vol create dg1 vol2 8M --layout concat");
    // With the disk back, b serves it again.
    c.kill_node(1);
    c.set_hidden_disks(1, &[]);
    c.restart_node(1);
    c.wait_served(1, "dg2", "mirrored");
    c.check_invariants();
}

/// A shared group's disk gone for good while every node was down (d1 found on no
/// node at the restart): b and c refuse to join without it, so no majority forms
/// (a restart must not go on from a configuration that may be older than the one
/// d1 took). `dg fail-disk` on the node that formed is the operator's word: while
/// it waits there, the join offers leave d1 out, b and c join, and the change
/// records d1 failed (its plexes STALE). The mirror is served from its other plex
/// with its data on every node, the other group all along, the concat volume that
/// lived on d1 nowhere; new space comes from d0; later restarts need no word; and
/// d1 is taken out with `plex rm`, `vol rm` and `dg rm-disk`.
#[test]
fn a_shared_disk_gone_for_good_is_recorded_failed_and_the_cluster_goes_on_without_it() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    // `cat` lives on d1 alone; `mir` mirrors over d0 and d1.
    c.ctl_ok(0, "dg create dg1 d1 --shared");
    c.ctl_ok(0, "vol create dg1 cat 8M --layout concat");
    c.ctl_ok(0, "dg add-disk dg1 d0");
    c.ctl_ok(0, "vol create dg1 mir 16M --layout mirror");
    c.write_pattern(0, "dg1", "mir", 0, 1 << 20);
    c.write_pattern(0, "dg1", "mir", 12 << 20, 1 << 20);
    c.ctl_ok(0, "dg create dg2 d2 d3 --shared");
    c.ctl_ok(0, "vol create dg2 other 8M --layout mirror");
    c.write_pattern(0, "dg2", "other", 0, 1 << 20);
    let (mir_on_d1, _) = c.plex_on(0, "dg1", "mir", "d1");
    c.kill_all();
    start_without_disks(&mut c, &[0, 1, 2], &[1]);
    wait_b_and_c_refuse(&c, "to join without d1", |node| {
        format!("cannot find disk d1 on node {node}")
    });
    // Refused at once (not after a wait for the majority): cat's data is on d1 only.
    let e = c.ctl_err(0, "dg fail-disk dg1 d1");
    assert!(
        e.contains("node a:") && e.contains("holds the only ACTIVE plex of volume(s) cat"),
        "{e}"
    );
    let out = c.ctl_ok(0, "dg fail-disk dg1 d1 --force");
    assert!(
        out.contains("disk d1 of disk group dg1 recorded failed")
            && out.contains(&mir_on_d1)
            && out.contains("volume(s) cat have no ACTIVE plex"),
        "{out}"
    );
    c.wait_all_joined();
    let print = c.print(1);
    let d1 = plexd_tests::group(&print, "dg1").expect("dg1")["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .find(|d| d["name"] == "d1")
        .cloned()
        .expect("d1 stays in dg1 until removed");
    assert_eq!(d1["failed"], true, "{print}");
    assert_eq!(c.plex_on(1, "dg1", "mir", "d1").1, "STALE");
    assert_eq!(c.plex_on(1, "dg1", "cat", "d1").1, "STALE");
    for i in 0..3 {
        c.wait_served(i, "dg1", "mir");
        c.wait_served(i, "dg2", "other");
        let volumes = c.target_volumes(i).expect("volumes");
        assert!(
            !volumes.contains(&"dg1.cat".to_string()),
            "node {i} serves a volume whose only plex is on a failed disk: {volumes:?}"
        );
    }
    c.verify_patterns_on(&[0, 1, 2])
        .expect("mir and other keep their data");
    // New space never comes from the failed disk.
    c.ctl_ok(2, "vol create dg1 fresh 8M --layout concat");
    c.plex_on(0, "dg1", "fresh", "d0");
    // The degraded mirror cannot grow in a group of two disks (its plex on d1 could
    // only grow on d1), and the answer says how to go on; the volume that has no
    // ACTIVE plex never changes size.
    let e = c.ctl_err(1, "vol grow dg1 mir 24M");
    assert!(
        e.contains("its disk d1 is recorded failed: `plex rm` the plex"),
        "{e}"
    );
    let e = c.ctl_err(0, "vol grow dg1 cat 16M");
    assert!(
        e.contains("volume cat") && e.contains("no ACTIVE plex"),
        "{e}"
    );
    // A full restart with d1 still gone needs no word: nobody is asked for it.
    c.kill_all();
    c.restart_all();
    c.wait_served(2, "dg1", "mir");
    c.verify_patterns_on(&[0, 1, 2]).expect("after the restart");
    // Taking d1 out for good.
    let e = c.ctl_err(0, "dg rm-disk dg1 d1");
    assert!(e.contains("holds subdisks of"), "{e}");
    c.ctl_ok(0, &format!("plex rm dg1 {mir_on_d1}"));
    c.ctl_ok(1, "vol grow dg1 mir 24M");
    c.ctl_ok(0, "vol rm dg1 cat");
    c.ctl_ok(1, "dg rm-disk dg1 d1");
    let print = c.print(0);
    assert!(
        !print.to_string().contains("\"d1\""),
        "d1 is gone from dg1: {print}"
    );
    c.check_invariants();
}

/// While the cluster runs, a shared disk recorded failed (`dg fail-disk` with a
/// majority, the disk dead on every node) lets a node that restarts without it
/// rejoin: no joiner is asked for a failed disk. Before, the node's join was
/// refused for the disk.
#[test]
fn a_disk_recorded_failed_while_the_cluster_runs_lets_a_node_without_it_rejoin() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.shared_mirror(0, "dg1", "vol1", "16M");
    restart_c_without_d1(&mut c);
    let out = c.ctl_ok(1, "dg fail-disk dg1 d1");
    assert!(out.contains("recorded failed"), "{out}");
    // A node that still finds the disk lists it as failed.
    let list = c.ctl_json(0, "disk list");
    let d1 = list["disks"]
        .as_array()
        .and_then(|l| l.iter().find(|d| d["name"] == "d1"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        d1["state"], "failed: recorded failed (plexctl dg fail-disk)",
        "{list}"
    );
    c.wait_all_joined();
    c.wait_served(2, "dg1", "vol1");
    c.verify_patterns_on(&[0, 1, 2])
        .expect("vol1's data through every node, c's from d0 alone");
    c.check_invariants();
}

/// A disk recorded failed comes back (`dg reattach-disk`). d1 holds `cat` alone and
/// one plex of `mir`; c restarts without d1 and the operator records it failed
/// (forced: cat goes with it) so that c can join; mir takes writes its plex on d1
/// misses. The reattach is refused while c does not find d1, naming c; with d1
/// back on c it brings cat back ACTIVE with its data (nothing wrote cat since) and
/// copies mir's plex on d1 from the other: read from that plex alone, mir has the
/// writes it missed.
#[test]
fn a_failed_disk_that_comes_back_is_reattached_with_its_lost_volume_and_its_mirror_copied() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.ctl_ok(0, "dg create dg1 d1 --shared");
    c.ctl_ok(0, "vol create dg1 cat 8M --layout concat");
    c.ctl_ok(0, "dg add-disk dg1 d0");
    c.ctl_ok(0, "vol create dg1 mir 16M --layout mirror");
    c.write_pattern(0, "dg1", "cat", 0, 1 << 20);
    c.write_pattern(0, "dg1", "mir", 0, 1 << 20);
    let (cat_on_d1, _) = c.plex_on(0, "dg1", "cat", "d1");
    let (mir_on_d1, _) = c.plex_on(0, "dg1", "mir", "d1");
    let (mir_on_d0, _) = c.plex_on(0, "dg1", "mir", "d0");
    restart_c_without_d1(&mut c);
    c.ctl_ok(1, "dg fail-disk dg1 d1 --force");
    c.wait_all_joined();
    let print = c.print(2);
    let d1 = plexd_tests::group(&print, "dg1").expect("dg1")["disks"]
        .as_array()
        .and_then(|l| l.iter().find(|d| d["name"] == "d1"))
        .cloned()
        .expect("d1");
    assert_eq!(
        d1["staled"],
        serde_json::json!([
            {"plex": cat_on_d1, "last_active": true},
            {"plex": mir_on_d1, "last_active": false},
        ]),
        "what a reattach brings back: {d1}"
    );
    // Writes the plex on d1 misses (the first overwrites the pattern at 0).
    c.write_pattern(1, "dg1", "mir", 0, 1 << 20);
    c.write_pattern(2, "dg1", "mir", 8 << 20, 1 << 20);
    let e = c.ctl_err(0, "dg reattach-disk dg1 d1");
    assert!(
        e.contains("node c") && e.contains("cannot find disk d1"),
        "{e}"
    );
    assert_eq!(
        c.plex_on(0, "dg1", "cat", "d1").1,
        "STALE",
        "refused: nothing changed"
    );
    c.kill_node(2);
    c.set_hidden_disks(2, &[]);
    c.restart_node(2);
    c.wait_all_joined();
    let out = c.ctl_ok(0, "dg reattach-disk dg1 d1");
    assert!(
        out.contains("disk d1 of disk group dg1 reattached")
            && out.contains(&format!("plex(es) {cat_on_d1} ACTIVE"))
            && out.contains(&format!("plex(es) {mir_on_d1} SYNCING")),
        "{out}"
    );
    wait_plex_active(&c, 0, "dg1", "mir", "d1");
    for i in 0..3 {
        c.wait_served(i, "dg1", "cat");
    }
    c.verify_patterns_on(&[0, 1, 2])
        .expect("cat's data from before the failure, mir's newest");
    // The copy reached d1: mir read from that plex alone has what it missed.
    c.ctl_ok(0, &format!("plex detach dg1 {mir_on_d0}"));
    c.verify_patterns_on(&[0, 1, 2])
        .expect("mir from its plex on d1 alone");
    c.check_invariants();
}

/// A private group's disk gone for good (its node restarts without it): the mirror
/// that uses it is not served until the owner records the disk failed; then it is,
/// from its other plex, with its data.
#[test]
fn a_private_groups_dead_disk_recorded_failed_serves_its_mirror_from_the_other_plex() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.ctl_ok(1, "dg create dg2 d2 d3");
    c.ctl_ok(1, "vol create dg2 mirrored 8M --layout mirror");
    let pattern = c.write_pattern(1, "dg2", "mirrored", 0, 1 << 20);
    c.forget_volume("dg2", "mirrored");
    c.kill_node(1);
    start_without_disks(&mut c, &[1], &[3]);
    c.wait_all_joined();
    let volumes = c.target_volumes(1).expect("volumes");
    assert!(
        !volumes.contains(&"dg2.mirrored".to_string()),
        "b serves a mirror without its disk before the word: {volumes:?}"
    );
    let out = c.ctl_ok(1, "dg fail-disk dg2 d3");
    assert!(
        out.contains("disk d3 of disk group dg2 recorded failed"),
        "{out}"
    );
    c.wait_served(1, "dg2", "mirrored");
    pattern.verify(&c.kernel(1)).expect("mirrored's data on b");
    assert_eq!(c.plex_on(1, "dg2", "mirrored", "d3").1, "STALE");
    // It comes back after all: refused until b finds it, then copied.
    let e = c.ctl_err(1, "dg reattach-disk dg2 d3");
    assert!(
        e.contains("node b") && e.contains("cannot find disk d3"),
        "{e}"
    );
    let newer = c.write_pattern(1, "dg2", "mirrored", 0, 1 << 20);
    c.kill_node(1);
    c.set_hidden_disks(1, &[]);
    c.restart_node(1);
    c.wait_all_joined();
    // --wait: the answer comes once the copy (node b's own, a private group's) ended.
    let out = c.ctl_ok(1, "dg reattach-disk dg2 d3 --wait");
    let (plex, state) = c.plex_on(1, "dg2", "mirrored", "d3");
    assert_eq!(state, "ACTIVE", "{out}");
    assert!(
        out.contains("SYNCING")
            && out.contains(&format!(
                "plex {plex} of volume mirrored (disk group dg2): ACTIVE"
            )),
        "{out}"
    );
    let (other, _) = c.plex_on(1, "dg2", "mirrored", "d2");
    c.ctl_ok(1, &format!("plex detach dg2 {other}"));
    newer
        .verify(&c.kernel(1))
        .expect("mirrored from its plex on d3 alone");
}
