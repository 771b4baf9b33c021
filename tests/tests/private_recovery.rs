//! Node-crash recovery of a private mirror (issue 11; docs/OPERATIONS.md
//! "Node-crash recovery"): a node's plexd and plexd-target are killed -9 while a
//! writer writes to a 2-way mirror of its private disk group (with a dirty region
//! log); the write in flight is made to differ on one plex's disk file, as a node
//! dying between its two plex writes leaves it. At the restart the group, left
//! open by the dead start, is recovered before it is served: its plexes end up
//! identical block for block (read from the disk files), every acknowledged write
//! reads back, and only the dirty regions (at most the writer's window) were
//! copied; a mirror without a log in the group is copied whole. A clean stop and
//! restart then resyncs nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use plexd_target::api::{ClientError, ErrorCode, KernelClient};
use plexd_tests::plex_disk::{diverge_plex, plex_image, plexd_log};
use plexd_tests::{volume, wait_until, Cluster, ClusterOpts, Pattern};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How long the restart, the recovery and the resync (16 MiB at most) may take on
/// a loaded 2-core machine.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
const VOL_SIZE: &str = "16M";
/// The window the writer writes in: 4 regions of the default 512 KiB.
const WINDOW_AT: u64 = 8 << 20;
const WINDOW_LEN: u64 = 2 << 20;
/// Each write: one slot of the window.
const SLOT_BYTES: u64 = 64 << 10;
/// Most writes the writer issues, and longest it runs.
const WRITER_MAX_WRITES: u64 = 100_000;
const WRITER_MAX_TIME: Duration = Duration::from_secs(60);
/// Writes completed before the kill (so the kill lands mid-stream).
const WRITES_BEFORE_KILL: u64 = 30;
const SEED_BASE: u64 = 1 << 41;
const VOL_BYTES: u64 = 16 << 20;
const DG: &str = "dgp";
/// The mirror with a log the writer writes to.
const VOL: &str = "pv";
/// A mirror without a log (`--drl off`), not written: resynchronised whole.
const VOL2: &str = "pv2";

/// What the writer wrote: the last acknowledged pattern of each slot, and the
/// write that failed (the node's death), left out of `acked`.
struct Written {
    acked: BTreeMap<u64, Pattern>,
    failed: Option<Pattern>,
}

/// Writes random patterns to random slots of the window through `k` until its
/// first failure, `stop`, or its limits.
fn writer(k: KernelClient, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> JoinHandle<Written> {
    std::thread::spawn(move || {
        let mut rng = StdRng::seed_from_u64(SEED_BASE);
        let mut w = Written {
            acked: BTreeMap::new(),
            failed: None,
        };
        let started = Instant::now();
        for n in 0..WRITER_MAX_WRITES {
            if stop.load(Ordering::Relaxed) || started.elapsed() > WRITER_MAX_TIME {
                break;
            }
            let slot = rng.gen_range(0..WINDOW_LEN / SLOT_BYTES);
            let p = Pattern {
                bdev: format!("{DG}.{VOL}"),
                offset_bytes: WINDOW_AT + slot * SLOT_BYTES,
                len_bytes: SLOT_BYTES,
                seed: SEED_BASE + n,
            };
            match p.write(&k) {
                Ok(()) => {
                    w.acked.insert(p.offset_bytes, p);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => {
                    w.acked.remove(&p.offset_bytes);
                    w.failed = Some(p);
                    break;
                }
            }
        }
        w
    })
}

/// Other bytes over the slot at volume offset `at` of plex `plex`, on its disk
/// file (`print` taken before the kill).
fn diverge(print: &serde_json::Value, plex: &str, at: u64) {
    diverge_plex(print, DG, VOL, plex, at, SLOT_BYTES as usize, 0xd1f)
        .unwrap_or_else(|e| panic!("{VOL}'s plex {plex} at {at}: {e}"));
}

/// Ok once both plexes of each volume are ACTIVE on node `i` and identical on the
/// disks.
fn settled(c: &Cluster, i: usize) -> Result<(), String> {
    let p = c.try_ctl_json(i, "print")?;
    for vol in [VOL, VOL2] {
        settled_volume(&p, vol)?;
    }
    Ok(())
}

fn settled_volume(p: &serde_json::Value, vol: &str) -> Result<(), String> {
    let v = volume(p, DG, vol).ok_or(format!("no volume {vol}"))?;
    let ps: Vec<(String, String)> = v["plexes"]
        .as_array()
        .ok_or("no plexes")?
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or("?").to_string();
            (s("name"), s("state"))
        })
        .collect();
    if ps.len() != 2 || ps.iter().any(|(_, s)| s != "ACTIVE") {
        return Err(format!("{vol}'s plexes {ps:?}"));
    }
    if plex_image(p, DG, vol, &ps[0].0)? != plex_image(p, DG, vol, &ps[1].0)? {
        return Err(format!("{vol}'s plexes differ on the disks"));
    }
    Ok(())
}

/// The bytes the private resyncs of `vol` in `log` copied ("resync task N: plex P
/// of volume V: B bytes copied in K range(s)"), in order.
fn copied(log: &str, vol: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|l| l.split(&format!("of volume {vol}: ")).nth(1))
        .filter(|rest| rest.contains(" bytes copied in "))
        .filter_map(|rest| rest.split(' ').next()?.parse().ok())
        .collect()
}

/// Node 0's private group [`DG`]: [`VOL`] (a 2-way mirror with a log) and
/// [`VOL2`] (one without), served on node 0.
fn create_private_group(c: &Cluster) {
    create_private_group_on(c, 0);
}

/// [`create_private_group`] on node `i`.
fn create_private_group_on(c: &Cluster, i: usize) {
    c.ctl_ok(i, &format!("dg create {DG} d1 d2"));
    c.ctl_ok(
        i,
        &format!("vol create {DG} {VOL} {VOL_SIZE} --layout mirror --mirrors 2"),
    );
    c.ctl_ok(
        i,
        &format!("vol create {DG} {VOL2} {VOL_SIZE} --layout mirror --mirrors 2 --drl off"),
    );
    let print = c.print(i);
    assert!(
        volume(&print, DG, VOL).unwrap()["log"].is_object(),
        "the private mirror has a log: {print}"
    );
    assert!(
        volume(&print, DG, VOL2).unwrap().get("log").is_none(),
        "{VOL2} has none: {print}"
    );
    c.wait_served(i, DG, VOL);
}

/// The second private group of node `i`'s tests, `dgq` (volume `q1` on its own
/// disk d3): not taken over, so its owner must serve it again once it dropped
/// [`DG`].
fn create_second_group_on(c: &Cluster, i: usize) {
    c.ctl_ok(i, "dg create dgq d3");
    c.ctl_ok(i, "vol create dgq q1 4M");
    c.wait_served(i, "dgq", "q1");
}

/// The volumes the data plane behind `k` holds.
fn data_plane_volumes(k: &KernelClient) -> Result<Vec<String>, String> {
    Ok(k.list_volumes()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|v| v.name)
        .collect())
}

/// Whether any of `names` is a volume of [`DG`].
fn holds_group(names: &[String]) -> bool {
    names.iter().any(|n| n.starts_with(&format!("{DG}.")))
}

/// Waits until node `who`'s data plane behind `k` holds no volume of [`DG`].
fn wait_group_dropped(k: &KernelClient, who: &str) {
    wait_until(
        &format!("{who} to drop the taken group"),
        RECOVERY_TIMEOUT,
        || {
            let names = data_plane_volumes(k)?;
            match holds_group(&names) {
                true => Err(format!("{who}'s data plane serves {names:?}")),
                false => Ok(()),
            }
        },
    );
}

/// Waits until node `who`'s data plane behind `k` writes `block` to `dgq.q1`
/// again ([`create_second_group_on`]).
fn wait_second_group_served(k: &KernelClient, block: &[u8], who: &str) {
    wait_until(
        &format!("{who} to serve its other private group again"),
        RECOVERY_TIMEOUT,
        || match k.write("dgq.q1", 0, block) {
            Ok(0) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
}

/// Node `i` refuses a change of [`DG`], which another node took over: to it the
/// group does not exist.
fn assert_refuses_taken_group(c: &Cluster, i: usize) {
    let refused = c.ctl_err(i, &format!("vol create {DG} x 1M"));
    assert!(
        refused.contains("does not exist"),
        "{} changes a group b took over: {refused}",
        c.nodes[i].name
    );
}

/// Waits until the data plane behind `k` holds a valid private-group lease.
fn wait_private_lease(k: &KernelClient) {
    wait_until("the private-group lease", RECOVERY_TIMEOUT, || {
        match k.private_lease_status() {
            Ok(s) if s.state == plexd_target::lease::LeaseState::Valid => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
}

/// The data plane of node `i`, owner of [`DG`], once it serves [`VOL`] under a
/// valid private-group lease (a first write of `fill` succeeds): its client, the
/// volume's bdev name and that block.
fn serving_owner(c: &Cluster, i: usize, fill: u8) -> (KernelClient, String, Vec<u8>) {
    let bdev = format!("{DG}.{VOL}");
    let k = c.kernel(i);
    wait_private_lease(&k);
    let block = vec![fill; 4096];
    assert_eq!(
        k.write(&bdev, 0, &block).unwrap(),
        0,
        "node {i} serves {bdev}"
    );
    (k, bdev, block)
}

/// Node `i` takes [`DG`] over (`dg import --clear-owner`), retried while its owner
/// is still a member of the view (a frozen owner leaves it after a heartbeat
/// timeout, or after its lease if it was the master).
fn take_over(c: &Cluster, i: usize) {
    wait_until(
        "the takeover of the private group",
        RECOVERY_TIMEOUT,
        || {
            let out = c.ctl(i, &format!("dg import {DG} --clear-owner"));
            match out.status.success() {
                true => Ok(()),
                false => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
            }
        },
    );
}

/// The two slaves of a 3-node cluster: `o`, owner of [`DG`], frozen (SIGSTOP) once
/// it serves [`VOL`] under its private-group lease, and `n`, which no longer sees
/// it; `k_o` is o's data plane, `block` the first block o wrote to `bdev`. A frozen
/// master would leave the view only after its lease (its private one out too), a
/// frozen slave at once.
struct FrozenOwner {
    o: usize,
    n: usize,
    o_name: String,
    n_name: String,
    k_o: KernelClient,
    bdev: String,
    block: Vec<u8>,
    /// How many times n had logged [`TAKEOVER_WAITING`] (see [`wait_takeover_waiting`]).
    waits_before: usize,
}

/// The 3-node cluster of the takeover tests: a 5 s lease, long enough that what
/// the importer does within the old owner's last lease (a kill and restart take a
/// few hundred ms on a loaded machine) comes well within it.
fn takeover_cluster() -> Cluster {
    Cluster::start(
        3,
        ClusterOpts {
            lease_ms: 5000,
            ..ClusterOpts::default()
        },
    )
}

/// See [`FrozenOwner`]; o's first block is written with `fill`.
fn freeze_serving_owner(c: &mut Cluster, fill: u8) -> FrozenOwner {
    let master = c.status(0)["master"].as_str().unwrap_or("?").to_string();
    let slaves: Vec<usize> = (0..3).filter(|&i| c.nodes[i].name != master).collect();
    let (o, n) = (slaves[0], slaves[1]);
    let (o_name, n_name) = (c.nodes[o].name.clone(), c.nodes[n].name.clone());
    create_private_group_on(c, o);
    let (k_o, bdev, block) = serving_owner(c, o, fill);
    c.freeze(o);
    wait_until("o to leave n's view", RECOVERY_TIMEOUT, || {
        let m = plexd_tests::members(&c.status(n));
        match m.contains(&o_name) {
            true => Err(format!("members {m:?}")),
            false => Ok(()),
        }
    });
    let waits_before = plexd_log(c, n).matches(TAKEOVER_WAITING).count();
    FrozenOwner {
        o,
        n,
        o_name,
        n_name,
        k_o,
        bdev,
        block,
        waits_before,
    }
}

/// What node `n` logs once a takeover import has written the labels and waits out
/// the old owner's lease.
const TAKEOVER_WAITING: &str = "before serving it";

/// Waits until node `n` has logged [`TAKEOVER_WAITING`] more than `before` times.
fn wait_takeover_waiting(c: &Cluster, n: usize, before: usize) {
    wait_until("n to wait out o's lease", RECOVERY_TIMEOUT, || {
        match plexd_log(c, n).matches(TAKEOVER_WAITING).count() > before {
            true => Ok(()),
            false => Err(format!(
                "{} has not written the labels yet",
                c.nodes[n].name
            )),
        }
    });
}

/// Runs node `n`'s `dg import --clear-owner` of [`DG`] in a thread and, once `n`
/// waits out the old owner's lease (it logged [`TAKEOVER_WAITING`] more than
/// `waits_before` times), `during` with a probe of whether the import returned;
/// then the import's output and what `during` returned.
fn import_during<T>(
    c: &Cluster,
    (n, waits_before): (usize, usize),
    during: impl FnOnce(&dyn Fn() -> bool) -> T,
) -> (std::process::Output, T) {
    std::thread::scope(|s| {
        let import = s.spawn(|| c.ctl(n, &format!("dg import {DG} --clear-owner")));
        wait_takeover_waiting(c, n, waits_before);
        let got = during(&|| import.is_finished());
        (import.join().expect("the import's thread"), got)
    })
}

/// Writes to [`VOL`] through node 0 until node 0's processes are killed -9 under
/// the writer; the write in flight at the kill is then made to differ on
/// `VOL-02`'s disk file, as a node dying between its two plex writes leaves it.
fn write_until_killed(c: &mut Cluster) -> Written {
    let print = c.print(0);
    let (stop, done) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let w = writer(c.kernel(0), stop.clone(), done.clone());
    wait_until("the writer's writes", RECOVERY_TIMEOUT, || {
        match done.load(Ordering::Relaxed) {
            d if d >= WRITES_BEFORE_KILL => Ok(()),
            d => Err(format!("{d} writes done")),
        }
    });
    c.kill_node(0);
    // The writer ends at its first failed write; stopping it at once could end
    // it between two writes, without a failure.
    wait_until(
        "the writer to see the node die",
        RECOVERY_TIMEOUT,
        || match w.is_finished() {
            true => Ok(()),
            false => Err(format!("{} writes done", done.load(Ordering::Relaxed))),
        },
    );
    stop.store(true, Ordering::Relaxed);
    let w = w.join().expect("the writer thread panicked");
    let in_flight = w.failed.clone().expect("the writer saw the node die");
    diverge(&print, &format!("{VOL}-02"), in_flight.offset_bytes);
    w
}

/// Checks node `i`'s log since `base` for the recovery of [`DG`] (left open by a
/// dead start): [`VOL`] copied only its dirty regions, exactly as planned from its
/// log; [`VOL2`] (no log) whole; then every acknowledged write reads back through
/// node `i`.
fn check_recovered(c: &Cluster, i: usize, base: usize, w: &Written) {
    let log = plexd_log(c, i);
    let new = &log[base..];
    let open_line = new
        .lines()
        .find(|l| l.contains(&format!("private disk group {DG} was left open")))
        .unwrap_or_else(|| panic!("the group was found left open:\n{new}"));
    let bytes = copied(new, VOL);
    let bytes2 = copied(new, VOL2);
    eprintln!(
        "{} slots acknowledged; the recovery copied {bytes:?} bytes of {VOL} (log), {bytes2:?} of {VOL2} (no log)",
        w.acked.len()
    );
    assert_eq!(bytes.len(), 1, "one resync of {VOL}-02:\n{new}");
    assert!(
        (1..=WINDOW_LEN).contains(&bytes[0]),
        "{} bytes copied: the dirty regions (the 2 MiB window), not 16 MiB",
        bytes[0]
    );
    // What was copied is what the log's dirty ranges add up to.
    let planned = format!("plex {VOL}-02 of volume {VOL}: {} bytes", bytes[0]);
    assert!(
        open_line.contains(&planned),
        "the recovery planned from the log the bytes copied ({planned}): {open_line}"
    );
    assert_eq!(bytes2, vec![VOL_BYTES], "{VOL2} has no log: resynced whole");
    let k = c.kernel(i);
    for p in w.acked.values() {
        p.verify(&k)
            .unwrap_or_else(|e| panic!("an acknowledged write is lost: {e}"));
    }
}

#[test]
fn a_private_mirror_is_recovered_after_kill_9_and_not_after_a_clean_stop() {
    let mut c = Cluster::start(1, ClusterOpts::default());
    create_private_group(&c);
    let w = write_until_killed(&mut c);
    let base = plexd_log(&c, 0).len();

    c.restart_node(0);
    wait_until(
        "the private mirror to be recovered (plexes ACTIVE and identical)",
        RECOVERY_TIMEOUT,
        || settled(&c, 0),
    );
    check_recovered(&c, 0, base, &w);

    // A clean stop: the group is closed, the next start copies nothing.
    c.stop_coordinator(0);
    let base = plexd_log(&c, 0).len();
    c.restart_node(0);
    c.wait_served(0, DG, VOL);
    settled(&c, 0).expect("the plexes after a clean stop");
    let log = plexd_log(&c, 0);
    let new = &log[base..];
    assert!(
        !new.contains("was left open")
            && copied(new, VOL).is_empty()
            && copied(new, VOL2).is_empty(),
        "no recovery after a clean stop:\n{new}"
    );
}

/// `dg import --clear-owner` (docs/OPERATIONS.md "A private group whose node is
/// gone"): node a's private group is refused to b while a is a member (with or
/// without the flag); after a is killed -9 under writes, b takes it over with the
/// flag only, recovers the mirror a left open from a's section of its log (only the
/// dirty regions), and serves every acknowledged write; a's restart leaves the
/// group to b.
#[test]
fn a_dead_nodes_private_group_is_taken_over_with_clear_owner_and_recovered() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    create_private_group(&c);
    let not_yours = c.ctl_err(1, &format!("dg import {DG}"));
    assert!(
        not_yours.contains("imported by a") && not_yours.contains("--clear-owner"),
        "a plain import of a's group is refused, naming a and the override: {not_yours}"
    );
    let member = c.ctl_err(1, &format!("dg import {DG} --clear-owner"));
    assert!(
        member.contains("a member of the cluster"),
        "--clear-owner is refused while a is a member: {member}"
    );
    let w = write_until_killed(&mut c);
    let base = plexd_log(&c, 1).len();
    let refused = c.ctl_err(1, &format!("dg import {DG}"));
    assert!(
        refused.contains("--clear-owner"),
        "a dead owner still needs the override: {refused}"
    );
    // b's view drops a within a heartbeat timeout; until then the flag is refused.
    take_over(&c, 1);
    wait_until(
        "the taken-over mirror to be recovered on b (plexes ACTIVE and identical)",
        RECOVERY_TIMEOUT,
        || settled(&c, 1),
    );
    check_recovered(&c, 1, base, &w);

    c.restart_node(0);
    let print = c.print(0);
    assert!(
        volume(&print, DG, VOL).is_none(),
        "a's restart does not serve the group b took over: {print}"
    );
    let still = c.ctl_err(0, &format!("dg import {DG}"));
    assert!(
        still.contains("imported by b"),
        "the group is b's now: {still}"
    );
}

/// A private group's owner whose plexd is frozen (SIGSTOP; its data plane runs on)
/// is no member of the view, so another node may take the group over with
/// `--clear-owner`: the import waits out the owner's private-group lease, and by
/// the time it returns the frozen owner's data plane refuses the group's I/O. Thawed,
/// the owner finds its disks naming the importer: it drops the group from its data
/// plane without writing its disks, says so in `cluster status`, and serves its other
/// private group again; the importer's writes stand and it still owns the group.
#[test]
fn a_frozen_owner_stops_writing_a_group_taken_over_with_clear_owner() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    create_private_group(&c);
    // A second private group of a's, on a disk of its own: not taken over.
    create_second_group_on(&c, 0);
    let (k0, bdev, block) = serving_owner(&c, 0, 0xa5);

    c.freeze(0);
    take_over(&c, 1);
    // The import returned after a's lease ran out: a's data plane, still running
    // under its frozen coordinator, no longer writes the group.
    let errno = k0.write(&bdev, 0, &block).unwrap();
    assert_eq!(
        errno,
        plexd_target::lease::FENCED_ERRNO,
        "a frozen owner's data plane still wrote {bdev} after b took it over"
    );
    wait_until(
        "the taken-over group to settle on b",
        RECOVERY_TIMEOUT,
        || settled(&c, 1),
    );
    let on_b = c.write_pattern(1, DG, VOL, 0, 64 << 10);

    c.thaw(0);
    wait_until("a to report the takeover", RECOVERY_TIMEOUT, || {
        let s = c.status(0);
        match s["failed_disk_groups"]
            .to_string()
            .contains("taken over by b")
        {
            true => Ok(()),
            false => Err(s.to_string()),
        }
    });
    // a drops the taken group from its data plane (writing nothing to its disks),
    // then serves its other private group again under a renewed lease.
    wait_group_dropped(&k0, "a");
    assert!(
        !matches!(k0.write(&bdev, 0, &block), Ok(0)),
        "a's data plane writes {bdev} again after its coordinator thawed"
    );
    wait_second_group_served(&k0, &block, "a");
    assert_refuses_taken_group(&c, 0);
    assert!(
        c.status(0)["failed_disk_groups"]
            .to_string()
            .contains("dropped from this node"),
        "a's status does not say the group was dropped"
    );
    // Nothing of a's was written to the group's disks: b still owns it and serves it.
    on_b.verify(&c.kernel(1))
        .expect("b's write reads back through b");
    c.ctl_ok(1, &format!("vol create {DG} x 1M"));
}

/// A kill between two steps of a takeover: node n's plexd writes the labels of node
/// o's private group (`dg import --clear-owner`, o frozen) and is killed -9 while it
/// waits out o's private-group lease. Restarted at once, n must not serve the group
/// while o's data plane, under its frozen coordinator, may still write it: when n's
/// data plane first shows the volume, o's data plane fails writes to it. o and n
/// are the two slaves: a frozen master leaves the view only after its lease (then
/// its private one is out too), a frozen slave at once.
#[test]
fn an_importer_killed_while_waiting_out_the_old_owner_waits_again_at_its_restart() {
    let mut c = takeover_cluster();
    let FrozenOwner {
        o,
        n,
        o_name,
        n_name,
        k_o: k0,
        bdev,
        block,
        waits_before,
    } = freeze_serving_owner(&mut c, 0x5a);
    let (out, ()) = import_during(&c, (n, waits_before), |_| c.sigkill_coordinator(n));
    assert!(
        !out.status.success(),
        "the import of a killed plexd succeeded"
    );
    c.kill_coordinator(n);
    // Not start_coordinator: that waits for plexd to answer, by when the hold is
    // over; the data plane is watched from the restart on.
    c.spawn_coordinator(n);

    let k1 = c.kernel(n);
    wait_until(
        "n to serve the group it took over",
        RECOVERY_TIMEOUT,
        || {
            let names = data_plane_volumes(&k1)?;
            match names.contains(&bdev) {
                true => Ok(()),
                false => Err(format!("{n_name}'s data plane serves {names:?}")),
            }
        },
    );
    assert_eq!(
        k0.write(&bdev, 0, &block).unwrap(),
        plexd_target::lease::FENCED_ERRNO,
        "{n_name}'s restarted plexd served {bdev} while {o_name}'s frozen owner's data plane still wrote it"
    );
    assert!(
        plexd_log(&c, n).contains("left open by a start that did not stop cleanly"),
        "{n_name}'s restart did not say why it held the group"
    );
    c.thaw(o);
    wait_until(
        "the taken-over group to settle on b",
        RECOVERY_TIMEOUT,
        || settled(&c, n),
    );
    let on_b = c.write_pattern(n, DG, VOL, 0, 64 << 10);
    on_b.verify(&c.kernel(n))
        .expect("the new owner's write reads back through it");
}

/// The whole owner node frozen (its plexd and its plexd-target, as a paused VM)
/// while another node takes its private group over: when its data plane runs again
/// (its plexd still frozen, so nothing renews or revokes anything) the group's I/O
/// fails at once, because the data plane compares its private-group lease's
/// deadline with the boot clock, which ran on while it was stopped.
#[test]
fn a_whole_frozen_owner_node_fails_the_groups_io_when_its_data_plane_runs_again() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    create_private_group(&c);
    let (k0, bdev, block) = serving_owner(&c, 0, 0x3c);

    c.freeze_target(0);
    c.freeze(0);
    take_over(&c, 1);
    let on_b = c.write_pattern(1, DG, VOL, 0, 64 << 10);
    c.thaw_target(0);
    assert_eq!(
        k0.write(&bdev, 0, &block).unwrap(),
        plexd_target::lease::FENCED_ERRNO,
        "a's data plane, run again under its frozen plexd, wrote {bdev} after b took it over"
    );
    on_b.verify(&c.kernel(1))
        .expect("b's write reads back through b, not overwritten by a");
}

/// A private group's owner cut off by a network partition (its plexd and data plane
/// run on, unlike a frozen one) while another node takes the group over: the
/// import returns once the owner's data plane fails the group's I/O, because the
/// owner, reading its labels, finds them naming the importer and renews no more.
/// Still cut off, not a member of any view, the owner drops the taken group from its
/// data plane and serves its other private group again (a node's private groups
/// need no cluster). After the heal it rejoins, says the group was dropped, and the
/// importer's writes and ownership stand.
#[test]
fn a_partitioned_owner_drops_a_group_taken_over_and_serves_its_others() {
    if let Some(why) = plexd_tests::netns::unavailable() {
        panic!("this test cannot run: {why}");
    }
    let opts = ClusterOpts {
        netns: true,
        ..ClusterOpts::default()
    };
    let mut c = Cluster::start(3, opts);
    // The owner is c, a slave: it leaves the view one heartbeat timeout after the cut.
    create_private_group_on(&c, 2);
    create_second_group_on(&c, 2);
    let (k2, bdev, block) = serving_owner(&c, 2, 0x5a);

    c.net().cut(2);
    take_over(&c, 1);
    // Fenced (its lease ran out), or already dropped: c reads its labels on.
    match k2.write(&bdev, 0, &block) {
        Ok(errno) if errno == plexd_target::lease::FENCED_ERRNO => {}
        Err(ClientError::Api(e)) if e.code == ErrorCode::NotFound => {}
        other => panic!("the cut-off owner's data plane after b took {bdev} over: {other:?}"),
    }
    wait_until(
        "the taken-over group to settle on b",
        RECOVERY_TIMEOUT,
        || settled(&c, 1),
    );
    let on_b = c.write_pattern(1, DG, VOL, 0, 64 << 10);

    // Still cut off: c drops the taken group and serves dgq again.
    wait_group_dropped(&k2, "c");
    wait_second_group_served(&k2, &block, "c (cut off)");

    c.net().heal(2);
    c.wait_joined(&[0, 1, 2]);
    assert!(
        c.status(2)["failed_disk_groups"]
            .to_string()
            .contains("dropped from this node"),
        "c's status does not say the group was dropped: {}",
        c.status(2)
    );
    assert_refuses_taken_group(&c, 2);
    assert!(
        !matches!(k2.write(&bdev, 0, &block), Ok(0)),
        "c's data plane writes {bdev} again after the heal"
    );
    on_b.verify(&c.kernel(1))
        .expect("b's write reads back through b");
    c.ctl_ok(1, &format!("vol create {DG} x 1M"));
    match k2.write("dgq.q1", 0, &block) {
        Ok(0) => {}
        other => panic!("c no longer serves dgq.q1 after the heal: {other:?}"),
    }
}

/// The old owner killed -9 before it could drop a group taken over from it (frozen
/// through the takeover, killed frozen, restarted at once, its data plane running on
/// with the group's volumes fenced): the restarted plexd finds the group's labels
/// naming the importer, so it neither imports nor serves it, removes its volumes
/// from the data plane, and serves its other private group again, without waiting
/// out a takeover (that group's data plane served it whole). The importer's writes
/// and ownership stand.
#[test]
fn an_owner_killed_before_dropping_a_group_taken_over_restarts_without_it() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    create_private_group_on(&c, 2);
    create_second_group_on(&c, 2);
    let (k2, bdev, block) = serving_owner(&c, 2, 0x69);

    c.freeze(2);
    take_over(&c, 1);
    wait_until(
        "the taken-over group to settle on b",
        RECOVERY_TIMEOUT,
        || settled(&c, 1),
    );
    let on_b = c.write_pattern(1, DG, VOL, 0, 64 << 10);
    assert!(
        k2.list_volumes().unwrap().iter().any(|v| v.name == bdev),
        "c's data plane still holds {bdev} (fenced) before c's plexd is killed"
    );

    c.restart_coordinator(2, None);
    let names = data_plane_volumes(&k2).unwrap();
    assert!(
        !holds_group(&names),
        "c's restarted plexd left {DG}'s volumes in its data plane: {names:?}"
    );
    assert!(
        !matches!(k2.write(&bdev, 0, &block), Ok(0)),
        "c's data plane writes {bdev} after its restart"
    );
    wait_second_group_served(&k2, &block, "c");
    assert_refuses_taken_group(&c, 2);
    let log = plexd_log(&c, 2);
    assert!(
        !log.contains("left open by a start that did not stop cleanly"),
        "c's restart held a group back as if it had been taking it over: {log}"
    );
    on_b.verify(&c.kernel(1))
        .expect("b's write reads back through b");
    c.ctl_ok(1, &format!("vol create {DG} x 1M"));
}

/// A takeover's wait (the old owner's private-group lease, about 5.5 s here) does
/// not hold the cluster up: a shared-group change made through the importing node
/// while it waits completes before the import returns (its driver goes on with the
/// cluster's jobs and serves the group once the wait is over). The import then
/// returns with the group served by the importer, and the frozen owner's data plane
/// fails the group's I/O.
#[test]
fn a_shared_change_through_the_importer_completes_while_it_waits_out_the_old_owner() {
    let mut c = takeover_cluster();
    c.ctl_ok(0, "dg create dgs d0 d3 --shared");
    c.ctl_ok(0, "vol create dgs vs 4M --layout concat");
    let FrozenOwner {
        o,
        n,
        o_name,
        n_name,
        k_o,
        bdev,
        block,
        waits_before,
    } = freeze_serving_owner(&mut c, 0x77);
    let (out, (grown, import_returned)) = import_during(&c, (n, waits_before), |returned| {
        (c.ctl(n, "vol grow dgs vs 8M"), returned())
    });
    assert!(
        grown.status.success(),
        "vol grow through {n_name} during its takeover wait: {}",
        String::from_utf8_lossy(&grown.stderr)
    );
    assert!(
        !import_returned,
        "the shared change through {n_name} waited for its takeover wait to end"
    );
    assert!(
        out.status.success(),
        "the import: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        volume(&c.print(n), "dgs", "vs").unwrap()["size"],
        8 << 20,
        "the grow made during the wait"
    );
    assert_eq!(
        k_o.write(&bdev, 0, &block).unwrap(),
        plexd_target::lease::FENCED_ERRNO,
        "{o_name}'s frozen data plane still writes {bdev} after {n_name}'s import returned"
    );
    let on_n = c.write_pattern(n, DG, VOL, 0, 64 << 10);
    on_n.verify(&c.kernel(n))
        .expect("the new owner's write reads back through it");
    c.thaw(o);
}

/// A data plane lost during a takeover's wait: the importer's plexd-target is
/// killed -9 while its plexd waits out the frozen old owner's lease, and is still
/// down when the wait ends. The import completes (the labels name the importer; the
/// group is its own like its other groups), and the restarted data plane, loaded
/// at the reconnection, serves the group: a write through it reads back, and the
/// old owner's data plane fails the group's I/O.
#[test]
fn a_takeover_whose_data_plane_is_lost_during_the_wait_serves_the_group_once_it_is_back() {
    let mut c = takeover_cluster();
    let FrozenOwner {
        o,
        n,
        o_name,
        n_name,
        k_o,
        bdev,
        block,
        waits_before,
    } = freeze_serving_owner(&mut c, 0x3c);
    let lost = "it is served when the data plane is back";
    let (out, ()) = import_during(&c, (n, waits_before), |_| c.sigkill_target(n));
    assert!(
        out.status.success(),
        "the import whose data plane was lost during the wait: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        plexd_log(&c, n).contains(lost),
        "{n_name} did not say the group waits for its data plane"
    );
    assert_eq!(
        k_o.write(&bdev, 0, &block).unwrap(),
        plexd_target::lease::FENCED_ERRNO,
        "{o_name}'s frozen data plane still writes {bdev} after {n_name}'s import returned"
    );
    c.kill_target(n);
    c.start_target(n);
    c.wait_served(n, DG, VOL);
    let on_n = c.write_pattern(n, DG, VOL, 0, 64 << 10);
    on_n.verify(&c.kernel(n))
        .expect("the new owner's write reads back through its restarted data plane");
    let failed = c.status(n)["failed_disk_groups"].to_string();
    assert!(
        !failed.contains(DG),
        "{n_name} lists {DG} as failed: {failed}"
    );
    c.thaw(o);
}
