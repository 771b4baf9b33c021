//! Partitions, frozen processes and fencing with real processes (issue 8).
//!
//! The `netns` clusters run every node in a network namespace of its own
//! (`plexd_tests::netns`), so a test can cut a node off, block one direction or flap a
//! link; the others need no namespaces. Each test ends with one master, one
//! configuration on every node and on the disks (`check_invariants`, which also checks
//! that no two subdisks share an extent), and every acknowledged write readable
//! through every node.
//!
//! Needs root and iproute2 + nftables (ci/setup installs them; CI runs as root): a
//! test fails with the reason when it cannot create namespaces.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexd_target::api::{ClientError, ErrorCode, KernelClient};
use plexd_target::lease::FENCED_ERRNO;
use plexd_tests::cluster::{LEASE_MS, RETRY_SHORTLY};
use plexd_tests::netns::{self, Netns};
use plexd_tests::{volume, wait_until, Cluster, ClusterOpts, Pattern, NODE_NAMES};

/// The test clusters' data-plane lease.
const LEASE: Duration = Duration::from_millis(LEASE_MS);
/// The issue's bound: a node's data plane fences shared I/O at most this long after
/// it lost its cluster (its lease, plus 2 s for the heartbeat timeout, scheduling on
/// 2 busy cores and the poll).
const FENCE_BOUND: Duration = Duration::from_millis(LEASE_MS + 2000);
/// How long the survivors get to answer a change, take over or rejoin after a
/// partition (they wait out the lost node's lease first).
const SETTLE: Duration = Duration::from_secs(20);
/// Probe writes: small, each to a slot of its own in a region of dg1.vol1 (32 MiB)
/// that no other pattern uses, so a write that failed (and may have reached a disk in
/// part) never overwrites an acknowledged one until the slots wrap.
const PROBE_REGION: u64 = 16 << 20;
const PROBE_LEN: u64 = 64 << 10;
const PROBE_SLOTS: u64 = (16 << 20) / PROBE_LEN;
/// Flapping: link down and up every `FLAP_PERIOD`, this many times (a minute).
const FLAP_PERIOD: Duration = Duration::from_secs(1);
const FLAP_TOGGLES: u32 = 60;

const VOL2: &str = "vol create dg1 vol2 16M --layout mirror --mirrors 2";

fn require_netns() {
    if let Some(why) = plexd_tests::netns::unavailable() {
        panic!("partition tests cannot run: {why}");
    }
}

/// a (master), b, c, each in its own network namespace when `netns`, with
/// dg1/vol1 mirrored and two patterns on it.
fn cluster(netns: bool) -> Cluster {
    if netns {
        require_netns();
    }
    let opts = ClusterOpts {
        netns,
        ..ClusterOpts::default()
    };
    let mut c = Cluster::start(3, opts);
    c.shared_mirror(0, "dg1", "vol1", "32M");
    assert_eq!(c.master(), 0, "a, started first, is master");
    c
}

/// Every node that says it is a member (master or slave) agrees with c on master and
/// view, and they are a majority: one cluster, no second one. Returns its members.
fn try_one_cluster(c: &Cluster) -> Result<Vec<String>, String> {
    let view_of_c = c.try_ctl_json(2, "cluster status")?;
    let (master, view) = (view_of_c["master"].clone(), view_of_c["view"].clone());
    let members = plexd_tests::members(&view_of_c);
    if members.len() < 2 {
        return Err(format!(
            "c, which reaches both, is in no majority: {view_of_c}"
        ));
    }
    for i in 0..3 {
        let s = c.try_ctl_json(i, "cluster status")?;
        let me = &c.nodes[i].name;
        if plexd_tests::members(&s).contains(me) && (s["master"] != master || s["view"] != view) {
            return Err(format!(
                "node {me} is a member of master {} view {}, c of master {master} view {view}",
                s["master"], s["view"]
            ));
        }
    }
    Ok(members.into_iter().collect())
}

/// Waits (bounded) until [`try_one_cluster`] holds.
fn one_cluster(c: &Cluster) -> Vec<String> {
    wait_until("one cluster", SETTLE, || try_one_cluster(c))
}

fn has_volume(c: &Cluster, i: usize, vol: &str) -> bool {
    volume(&c.print(i), "dg1", vol).is_some()
}

/// What [`probe`] returns when the volume is not in the node's data plane (a node
/// that left the cluster removes the shared volumes from it).
const GONE: i32 = -1;

/// The next probe pattern of `bdev` (its own slot of the probe region).
fn next_probe(bdev: &str) -> Pattern {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Pattern {
        bdev: bdev.to_string(),
        offset_bytes: PROBE_REGION + (n % PROBE_SLOTS) * PROBE_LEN,
        len_bytes: PROBE_LEN,
        seed: 7_000_000 + n,
    }
}

/// Records probe `p`'s outcome: written, every node must read it later; failed, its
/// slot holds nothing known.
fn record_probe(c: &mut Cluster, p: Pattern, errno: i32) {
    if errno == 0 {
        c.record_pattern(p);
    } else {
        c.forget_pattern(&p.bdev, p.offset_bytes);
    }
}

/// One probe write through node `i`'s target to `bdev`; returns the errno ([`GONE`]
/// if the volume is not there) and how long it took. Panics if the write did not return within `bound`.
fn probe(c: &mut Cluster, i: usize, bdev: &str, bound: Duration) -> (i32, Duration) {
    let mut k = KernelClient::connect(&c.nodes[i].target_socket)
        .unwrap_or_else(|e| panic!("node {}: {e}", c.nodes[i].name));
    k.set_call_timeout(bound);
    let p = next_probe(bdev);
    let data = plexd_tests::data::pattern_bytes(p.seed, p.offset_bytes, p.len_bytes as usize);
    let started = Instant::now();
    let r = k.write(bdev, p.offset_bytes, &data);
    let took = started.elapsed();
    let errno = match r {
        Ok(errno) => errno,
        Err(ClientError::Api(e)) if e.code == ErrorCode::NotFound => GONE,
        Err(e) => panic!(
            "write to {bdev} through node {}'s target: failed after {} ms: {e}",
            c.nodes[i].name,
            took.as_millis()
        ),
    };
    assert!(
        took <= bound,
        "write to {bdev} through node {}'s target blocked {} ms (bound {} ms), errno {errno}",
        c.nodes[i].name,
        took.as_millis(),
        bound.as_millis()
    );
    record_probe(c, p, errno);
    (errno, took)
}

/// Probes node `i`'s target until a write fails with the fence's errno (or, when
/// `may_leave`, finds the volume gone: the node left the cluster); panics if that takes
/// longer than [`FENCE_BOUND`] after `since`, or a write fails otherwise. Returns how
/// long after `since` it was fenced, and the errno.
fn wait_fenced(c: &mut Cluster, i: usize, since: Instant, may_leave: bool) -> (Duration, i32) {
    loop {
        let (errno, _) = probe(c, i, "dg1.vol1", FENCE_BOUND);
        let at = since.elapsed();
        match errno {
            FENCED_ERRNO => return (at, errno),
            GONE if may_leave => return (at, errno),
            0 => {}
            e => panic!(
                "write through node {}'s target failed with errno {e}, want {FENCED_ERRNO} or success",
                c.nodes[i].name
            ),
        }
        assert!(
            at <= FENCE_BOUND,
            "node {}'s target still serves shared I/O {} ms after it lost the cluster \
             (lease {} ms, bound {} ms)",
            c.nodes[i].name,
            at.as_millis(),
            LEASE_MS,
            FENCE_BOUND.as_millis()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asks `cmd` on node `i` (cut off from `unreachable`) until it fails naming the lost
/// quorum; a success is a split brain. Failures of another kind are allowed while the
/// node still notices the partition. Returns the error.
fn wait_no_quorum(c: &Cluster, i: usize, cmd: &str, unreachable: &str) -> String {
    let name = &c.nodes[i].name;
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < SETTLE {
        let out = c.ctl(i, cmd);
        assert!(
            !out.status.success(),
            "`{cmd}` succeeded on node {name}, which is cut off from {unreachable}: split brain"
        );
        last = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if last.contains("no quorum") {
            assert_eq!(
                out.status.code(),
                Some(plexd_tests::cluster::EXIT_NO_QUORUM),
                "exit status of `{cmd}`: {last}"
            );
            assert!(
                last.contains(&format!("node {name}")) && last.contains(unreachable),
                "the error names node {name} and the unreachable nodes ({unreachable}): {last}"
            );
            return last;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "node {name}, cut off, never refused `{cmd}` for want of quorum within {} s; last: {last}",
        SETTLE.as_secs()
    );
}

/// Node `minority` is cut off from the other two: it refuses changes and fences its
/// data plane, the majority goes on (a new master if needed) and changes; after the
/// heal it rejoins by itself (the same process) and sees the majority's change.
fn cut_off(minority: usize, want_master: usize, unreachable: &str) {
    let mut c = cluster(true);
    let pid = c.plexd_pid(minority);
    let majority: Vec<usize> = (0..3).filter(|&i| i != minority).collect();
    // Host I/O through a node of the majority all along: it may pause (fenced while
    // the majority waits out the lost node's lease), never fail otherwise or hang.
    let io = HostIo::start(c.nodes[majority[1]].target_socket.clone());
    io.wait_writes(3);

    c.net().cut(minority);
    let cut = Instant::now();
    // It leaves the cluster and keeps its shared volumes, fenced: hosts get NOT
    // READY on a session that stays up.
    let (fenced_after, how) = wait_fenced(&mut c, minority, cut, false);
    eprintln!(
        "partition: node {} fenced {} ms after the cut ({})",
        c.nodes[minority].name,
        fenced_after.as_millis(),
        if how == GONE {
            "volume removed from its data plane"
        } else {
            "errno 108"
        }
    );
    let e = wait_no_quorum(
        &c,
        minority,
        "vol create dg1 lost 16M --layout concat",
        unreachable,
    );
    eprintln!("partition: the minority refuses: {e}");

    assert_eq!(
        c.wait_joined(&majority),
        want_master,
        "the majority's master"
    );
    let (at, to) = (majority[0], majority[1]);
    c.ctl_retry_ok(at, VOL2, SETTLE);
    c.write_pattern(to, "dg1", "vol2", 0, 1 << 20);
    c.write_pattern(at, "dg1", "vol1", 12 << 20, 1 << 20);
    let (errno, _) = probe(&mut c, minority, "dg1.vol1", FENCE_BOUND);
    assert!(
        errno == FENCED_ERRNO,
        "the minority's data plane stays fenced: errno {errno}"
    );
    io.wait_writes(3); // the majority's data plane serves again
    let seen = io.stop(&mut c);
    eprintln!(
        "partition: host I/O through node {}: {} written, {} fenced, slowest {} ms",
        c.nodes[majority[1]].name,
        seen.written,
        seen.fenced,
        seen.slowest.as_millis()
    );

    c.net().heal(minority);
    let healed = Instant::now();
    // One cluster again, led by the majority's master: heartbeats the cut-off
    // master sent while it still held its lease, delivered after the heal, show
    // their age (`heard`) and make nobody give way.
    let master = c.wait_joined(&[0, 1, 2]);
    assert_eq!(
        master, want_master,
        "after the heal node {} leads, not the majority's master {}",
        c.nodes[master].name, c.nodes[want_master].name
    );
    eprintln!(
        "partition: node {} rejoined {} ms after the heal",
        c.nodes[minority].name,
        healed.elapsed().as_millis()
    );
    assert_eq!(
        c.plexd_pid(minority),
        pid,
        "the minority rejoined on its own, without a restart"
    );
    assert!(has_volume(&c, minority, "vol2"), "the minority sees vol2");
    for i in 0..3 {
        assert!(
            !has_volume(&c, i, "lost"),
            "node {i} has the minority's change"
        );
    }
    c.check_invariants();
}

#[test]
fn a_master_cut_off_refuses_changes_fences_its_data_plane_and_rejoins_after_the_heal() {
    cut_off(0, 1, "(b, c unreachable)");
}

#[test]
fn a_slave_cut_off_refuses_changes_fences_its_data_plane_and_rejoins_after_the_heal() {
    cut_off(2, 0, "(a, b unreachable)");
}

#[test]
fn a_frozen_master_is_replaced_and_rejoins_as_a_slave_when_it_wakes() {
    let mut c = cluster(false);
    let io = HostIo::start(c.nodes[2].target_socket.clone());
    io.wait_writes(3);
    c.freeze(0);
    let frozen = Instant::now();
    let (fenced_after, _) = wait_fenced(&mut c, 0, frozen, false);
    eprintln!(
        "freeze: a's data plane fenced {} ms after the freeze",
        fenced_after.as_millis()
    );
    // The new master waits out a's lease, then commits (b and c may answer `retry
    // shortly` while b takes over).
    c.ctl_retry_ok(2, VOL2, SETTLE);
    eprintln!(
        "freeze: the change on c committed {} ms after the freeze",
        frozen.elapsed().as_millis()
    );
    let (errno, _) = probe(&mut c, 0, "dg1.vol1", FENCE_BOUND);
    assert_eq!(
        errno, FENCED_ERRNO,
        "the change committed while a's data plane still served shared I/O"
    );
    assert_eq!(c.wait_joined(&[1, 2]), 1, "b took over");
    c.write_pattern(2, "dg1", "vol2", 0, 1 << 20);
    io.wait_writes(3); // c serves again under b
    let seen = io.stop(&mut c);
    eprintln!(
        "freeze: host I/O through c: {} written, {} fenced, slowest {} ms",
        seen.written,
        seen.fenced,
        seen.slowest.as_millis()
    );
    // The freeze lasts 3 leases (longer if the change took longer: it must happen
    // while a is frozen): a deliberate duration, not a wait for a condition.
    std::thread::sleep((3 * LEASE).saturating_sub(frozen.elapsed()));
    c.thaw(0);

    // At once, before a noticed anything: a believes it is master.
    let out = c.ctl(0, "vol create dg1 vol3 16M --layout mirror --mirrors 2");
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(
        out.status.success() || stderr.lines().count() == 1,
        "a change on a after it woke either goes through or fails with one line: {:?} {stderr:?}",
        out.status
    );
    assert_eq!(c.wait_joined(&[0, 1, 2]), 1, "a rejoined as a slave of b");
    let print = c.agreed_print();
    let applied = volume(&print, "dg1", "vol3").is_some();
    if out.status.success() {
        assert!(applied, "plexctl reported success but vol3 is not there");
    } else if !stderr.contains("outcome unknown") {
        assert!(
            !applied,
            "plexctl reported a failure ({stderr}) but vol3 is there"
        );
    }
    eprintln!(
        "freeze: the change asked on a after it woke: {}",
        if out.status.success() {
            "applied"
        } else {
            &stderr
        }
    );
    assert!(
        has_volume(&c, 0, "vol2"),
        "a sees the change made without it"
    );
    c.check_invariants();
}

/// A slave frozen (SIGSTOP) past the heartbeat timeout: the master removes it, its
/// data plane fences once its lease is out, and a change goes on without it. What
/// the others send it meanwhile waits in its socket buffer (a peer stream delivers
/// late, in order, where calls timed out and dropped it). When it wakes it reads
/// that backlog, stale views and all, rejoins and holds the change.
#[test]
fn a_frozen_slave_is_removed_and_rejoins_with_the_change_made_meanwhile() {
    let mut c = cluster(false);
    c.freeze(2);
    let frozen = Instant::now();
    let (fenced_after, _) = wait_fenced(&mut c, 2, frozen, true);
    eprintln!(
        "frozen slave: c's data plane fenced {} ms after the freeze",
        fenced_after.as_millis()
    );
    c.ctl_retry_ok(0, VOL2, SETTLE);
    c.write_pattern(1, "dg1", "vol2", 0, 1 << 20);
    assert_eq!(c.wait_joined(&[0, 1]), 0, "a stays master without c");
    // Frozen for 3 leases (longer if the change took longer): a deliberate duration,
    // not a wait for a condition.
    std::thread::sleep((3 * LEASE).saturating_sub(frozen.elapsed()));
    c.thaw(2);
    assert_eq!(c.wait_joined(&[0, 1, 2]), 0, "c rejoined a's cluster");
    assert!(
        has_volume(&c, 2, "vol2"),
        "c holds the change made while it was frozen"
    );
    c.write_pattern(2, "dg1", "vol2", 4 << 20, 1 << 20);
    c.check_invariants();
}

/// Most changes [`one_way_block`] asks before one must have gone through.
const ONE_WAY_ATTEMPTS: usize = 20;

/// Blocks packets `from` -> `to` only; the cluster goes on (a change on c, which
/// reaches both, succeeds) and after the block is lifted it is one cluster.
fn one_way_block(from: usize, to: usize) {
    let mut c = cluster(true);
    c.net().block(from, to);
    let started = Instant::now();
    let mut attempts = Vec::new();
    let mut done = false;
    for k in 0..ONE_WAY_ATTEMPTS {
        if started.elapsed() > SETTLE {
            break;
        }
        let cmd = format!("vol create dg1 ow{k} 8M --layout concat");
        let out = c.ctl(2, &cmd);
        attempts.push(format!(
            "{} ms: {cmd}: {:?} {}",
            started.elapsed().as_millis(),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
        if out.status.success() {
            done = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        done,
        "no change succeeded on c while {} could not send to {}: {attempts:#?}",
        c.nodes[from].name, c.nodes[to].name
    );
    let members = one_cluster(&c);
    eprintln!("one-way: {attempts:#?}\none-way: members during the block: {members:?}");
    c.net().unblock(from, to);
    c.wait_joined(&[0, 1, 2]);
    c.ctl_retry_ok(0, VOL2, SETTLE);
    c.write_pattern(1, "dg1", "vol2", 0, 1 << 20);
    c.check_invariants();
}

#[test]
fn a_master_that_can_send_but_not_receive_ends_in_one_cluster() {
    one_way_block(1, 0); // b's packets to a are dropped
}

#[test]
fn a_master_that_can_receive_but_not_send_ends_in_one_cluster() {
    one_way_block(0, 1); // a's packets to b are dropped
}

#[test]
fn a_flapping_link_ends_in_one_cluster_where_changes_work() {
    let mut c = cluster(true);
    let started = Instant::now();
    for k in 0..FLAP_TOGGLES {
        if k % 2 == 0 {
            c.net().cut(0);
        } else {
            c.net().heal(0);
        }
        // The flapping rhythm is the scenario, not a wait for a condition.
        std::thread::sleep(FLAP_PERIOD);
    }
    c.net().heal(0);
    eprintln!("flapping: {} ms", started.elapsed().as_millis());
    c.wait_joined(&[0, 1, 2]);
    c.ctl_retry_ok(0, VOL2, SETTLE);
    c.write_pattern(0, "dg1", "vol2", 0, 1 << 20);
    c.ctl_retry_ok(2, "vol grow dg1 vol1 40M", SETTLE);
    c.check_invariants();
}

#[test]
fn a_target_whose_plexd_died_fences_once_the_lease_ran_out_and_serves_after_the_restart() {
    let mut c = cluster(false);
    c.kill_coordinator(0);
    let killed = Instant::now();
    let (fenced_after, _) = wait_fenced(&mut c, 0, killed, false);
    eprintln!(
        "kill: a's data plane fenced {} ms after its plexd died",
        fenced_after.as_millis()
    );
    assert_eq!(c.wait_joined(&[1, 2]), 1, "b took over");
    c.restart_coordinator(0, None);
    // Serves again: write_pattern waits out the fence for at most CONVERGE_TIMEOUT.
    c.write_pattern(0, "dg1", "vol1", 12 << 20, 1 << 20);
    assert_eq!(probe(&mut c, 0, "dg1.vol1", FENCE_BOUND).0, 0);
    c.check_invariants();
}

/// Issue 8, scenario 5: a's plexd dies while its target still holds a lease; b
/// removes a volume and creates another in its place. The removal commits only once
/// a's lease ran out, so a's target can no longer write the old volume over the new
/// one.
#[test]
fn a_volume_removed_while_a_node_is_lost_cannot_be_written_by_its_stale_data_plane() {
    let mut c = cluster(false);
    c.ctl_ok(0, "vol create dg1 victim 16M --layout mirror --mirrors 2");
    c.write_pattern(0, "dg1", "victim", 0, 1 << 20);
    let victim_sds = volume(&c.print(1), "dg1", "victim").expect("victim")["plexes"].clone();
    c.kill_coordinator(0);
    c.ctl_retry_ok(1, "vol rm dg1 victim", SETTLE);
    let (errno, _) = probe(&mut c, 0, "dg1.victim", FENCE_BOUND);
    assert_eq!(
        errno, FENCED_ERRNO,
        "the moment `vol rm` returned, a's target must refuse writes to the removed volume"
    );
    c.forget_volume("dg1", "victim");
    c.ctl_retry_ok(
        1,
        "vol create dg1 intruder 16M --layout mirror --mirrors 2",
        SETTLE,
    );
    let intruder_sds = volume(&c.print(1), "dg1", "intruder").expect("intruder")["plexes"].clone();
    eprintln!("victim's plexes: {victim_sds}\nintruder's plexes: {intruder_sds}");
    c.write_pattern(1, "dg1", "intruder", 0, 1 << 20);
    let (errno, _) = probe(&mut c, 0, "dg1.victim", FENCE_BOUND);
    assert_eq!(
        errno, FENCED_ERRNO,
        "a's target still refuses the old volume"
    );
    c.forget_volume("dg1", "victim");
    c.restart_coordinator(0, None);
    assert!(!has_volume(&c, 0, "victim"));
    c.check_invariants(); // intruder's pattern reads back on every node
}

/// Issue 8, scenario 4: c's plexd dies right after it prepared a grow of vol1 (its
/// data plane holds the volume quiesced with a staged layout). Host I/O through c's
/// target must not hang: every write returns within the lease + 2 s, and once c's
/// lease ran out they fail with the fence's errno.
#[test]
fn io_through_a_node_whose_plexd_died_after_prepare_never_hangs() {
    let mut c = cluster(false);
    c.restart_coordinator(2, Some("txn.after_prepare"));
    assert_eq!(c.master(), 0);
    let sock = c.nodes[2].target_socket.clone();
    let mut k = KernelClient::connect(&sock).expect("c's target");
    k.set_call_timeout(FENCE_BOUND);
    let (out, seen) = std::thread::scope(|s| {
        let grow = s.spawn(|| c.ctl(0, "vol grow dg1 vol1 48M"));
        let seen = io_until_fenced(&k, &sock, || grow.is_finished());
        (grow.join().expect("plexctl thread"), seen)
    });
    for (p, errno) in seen.writes.iter().cloned() {
        record_probe(&mut c, p, errno);
    }
    eprintln!(
        "prepare: plexctl vol grow: {:?} {}; I/O through c: {} written, {} fenced, \
         slowest {} ms",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).trim(),
        seen.written,
        seen.fenced,
        seen.slowest.as_millis()
    );
    c.wait_coordinator_exit(2);
    c.wait_joined(&[0, 1]);
    c.restart_coordinator(2, None);
    c.check_invariants();
}

/// Host I/O through one node's target on a thread of its own: probe writes (bounded
/// by [`FENCE_BOUND`] each, [`IO_PROBES`] in all, 50 ms apart) until stopped.
struct HostIo {
    stop: Arc<AtomicBool>,
    written: Arc<AtomicU64>,
    handle: Option<std::thread::JoinHandle<Result<IoSeen, String>>>,
}

impl HostIo {
    fn start(sock: PathBuf) -> HostIo {
        let stop = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let (stop2, written2) = (stop.clone(), written.clone());
        let handle = std::thread::spawn(move || {
            let mut k = KernelClient::connect(&sock).map_err(|e| e.to_string())?;
            k.set_call_timeout(FENCE_BOUND);
            let mut seen = IoSeen {
                written: 0,
                fenced: 0,
                slowest: Duration::ZERO,
                writes: Vec::new(),
            };
            for round in 0..IO_PROBES {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let p = next_probe("dg1.vol1");
                let data =
                    plexd_tests::data::pattern_bytes(p.seed, p.offset_bytes, PROBE_LEN as usize);
                let t = Instant::now();
                let r = k.write(&p.bdev, p.offset_bytes, &data);
                let took = t.elapsed();
                seen.slowest = seen.slowest.max(took);
                match r {
                    Ok(0) if took <= FENCE_BOUND => {
                        seen.written += 1;
                        written2.fetch_add(1, Ordering::Relaxed);
                        seen.writes.push((p, 0));
                    }
                    Ok(FENCED_ERRNO) if took <= FENCE_BOUND => {
                        seen.fenced += 1;
                        seen.writes.push((p, FENCED_ERRNO));
                    }
                    other => {
                        return Err(format!(
                            "host write {round} through {} {other:?} after {} ms (bound {} ms)",
                            sock.display(),
                            took.as_millis(),
                            FENCE_BOUND.as_millis()
                        ))
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Ok(seen)
        });
        HostIo {
            stop,
            written,
            handle: Some(handle),
        }
    }

    /// Waits (bounded) until `more` further writes succeeded.
    fn wait_writes(&self, more: u64) {
        let want = self.written.load(Ordering::Relaxed) + more;
        wait_until("host writes to succeed", SETTLE, || {
            match self.written.load(Ordering::Relaxed) {
                n if n >= want => Ok(()),
                n => Err(format!("{n} written, want {want}")),
            }
        });
    }

    /// Stops the writes, records their outcome in `c` and returns them; panics if one
    /// failed otherwise than fenced or took longer than its bound.
    fn stop(mut self, c: &mut Cluster) -> IoSeen {
        self.stop.store(true, Ordering::Relaxed);
        let seen = self
            .handle
            .take()
            .expect("running")
            .join()
            .expect("host I/O thread")
            .unwrap_or_else(|e| panic!("{e}"));
        for (p, errno) in seen.writes.iter().cloned() {
            record_probe(c, p, errno);
        }
        seen
    }
}

impl Drop for HostIo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// What [`io_until_fenced`] saw.
struct IoSeen {
    written: u32,
    fenced: u32,
    slowest: Duration,
    /// Every write and its errno, in order.
    writes: Vec<(Pattern, i32)>,
}

/// Most probe writes [`io_until_fenced`] issues.
const IO_PROBES: u32 = 10_000;

/// Writes through `k` round after round until `finished()` and a write was fenced,
/// every write bounded by [`FENCE_BOUND`]; panics on a write that blocks past it or
/// fails otherwise, or when it is not fenced within 30 s.
fn io_until_fenced(k: &KernelClient, sock: &Path, finished: impl Fn() -> bool) -> IoSeen {
    let started = Instant::now();
    let mut seen = IoSeen {
        written: 0,
        fenced: 0,
        slowest: Duration::ZERO,
        writes: Vec::new(),
    };
    for round in 0..IO_PROBES {
        if seen.fenced > 0 && finished() {
            return seen;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "I/O through {} never fenced in 30 s ({} written)",
            sock.display(),
            seen.written
        );
        let p = next_probe("dg1.vol1");
        let data = plexd_tests::data::pattern_bytes(p.seed, p.offset_bytes, PROBE_LEN as usize);
        let t = Instant::now();
        let r = k.write(&p.bdev, p.offset_bytes, &data);
        let took = t.elapsed();
        seen.slowest = seen.slowest.max(took);
        match r {
            Ok(0) if took <= FENCE_BOUND => {
                seen.written += 1;
                seen.writes.push((p, 0));
            }
            Ok(FENCED_ERRNO) if took <= FENCE_BOUND => {
                seen.fenced += 1;
                seen.writes.push((p, FENCED_ERRNO));
            }
            other => panic!(
                "write {round} through {} {:?} after {} ms (bound {} ms): it must return \
                 within the lease + 2 s, written or errno {FENCED_ERRNO}",
                sock.display(),
                other,
                took.as_millis(),
                FENCE_BOUND.as_millis()
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    seen
}

/// Runs `f` on a thread that entered network namespace `ns` (a thread's own: the
/// test process stays where it is; sockets made there stay in `ns`).
fn in_ns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = Path::new("/run/netns").join(ns);
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(&path)
                .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
            // SAFETY: setns(2) with a namespace fd we own and keep open for the call;
            // CLONE_NEWNET moves only this (scoped, short-lived) thread.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(
                r,
                0,
                "setns {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
            f()
        })
        .join()
        .expect("namespace thread")
    })
}

/// How long a connect that should not get through is given.
const NO_CONNECT: Duration = Duration::from_millis(800);

/// Connects from node `from`'s namespace to `to:port`; Ok with the time it took.
fn connect(net: &Netns, from: usize, to: &SocketAddr) -> Result<Duration, String> {
    in_ns(net.ns(from), || {
        let t = Instant::now();
        TcpStream::connect_timeout(to, NO_CONNECT)
            .map(|_| t.elapsed())
            .map_err(|e| e.to_string())
    })
}

#[test]
fn the_netns_fixture_cuts_heals_blocks_and_delays_and_cleans_up() {
    require_netns();
    // A namespace left by a test process that died is removed by the next fixture.
    let mut dead = std::process::Command::new("true").spawn().expect("true");
    let dead_pid = dead.id();
    dead.wait().expect("reap true");
    let stale = format!("{}{dead_pid}-0-br", netns::NETNS_PREFIX);
    let ip = netns::find_program("ip").expect("ip");
    let st = std::process::Command::new(&ip)
        .args(["netns", "add", &stale])
        .status()
        .expect("ip netns add");
    assert!(st.success(), "ip netns add {stale}");

    let net = Netns::create(2);
    assert!(
        !Path::new("/run/netns").join(&stale).exists(),
        "the stale namespace {stale} was not removed"
    );
    let a: SocketAddr = format!("{}:7000", net.addr(0)).parse().expect("address");
    let listener = in_ns(net.ns(0), || TcpListener::bind(a)).expect("listen in a's namespace");
    let connects = |what: &str| {
        wait_until(
            &format!("b to reach a {what}"),
            Duration::from_secs(5),
            || connect(&net, 1, &a),
        )
    };
    connects("at first");

    net.cut(0);
    assert!(connect(&net, 1, &a).is_err(), "a is cut off");
    net.heal(0);
    connects("after the heal");

    net.block(1, 0);
    assert!(
        connect(&net, 1, &a).is_err(),
        "b's packets to a are dropped"
    );
    net.unblock(1, 0);
    connects("after b -> a was unblocked");
    net.block(0, 1);
    assert!(
        connect(&net, 1, &a).is_err(),
        "a's answers to b are dropped"
    );
    net.unblock(0, 1);
    connects("after a -> b was unblocked");

    net.loss(1, 100);
    assert!(connect(&net, 1, &a).is_err(), "b loses every packet");
    net.clear_loss(1);
    connects("after the loss was cleared");

    if net.netem_available() {
        net.netem(1, 300, 0);
        let took = connects("through a 300 ms delay");
        assert!(
            took >= Duration::from_millis(300),
            "netem delays b's packets: the connect took {} ms",
            took.as_millis()
        );
        net.clear_netem(1);
    } else {
        eprintln!("netns: this kernel has no netem (CONFIG_NET_SCH_NETEM); delay not checked");
    }
    drop(listener);

    let names = [net.ns(0).to_string(), net.ns(1).to_string()];
    drop(net);
    for n in names {
        assert!(
            !Path::new("/run/netns").join(&n).exists(),
            "namespace {n} outlived the fixture"
        );
    }
}

/// Cuts node `minority` off `delay` after `cmd` was asked on node `asker`, heals, and
/// checks that plexctl's answer, every node and the disks agree on the outcome.
/// Returns plexctl's answer.
fn cut_during_change(
    c: &mut Cluster,
    minority: usize,
    asker: usize,
    delay: Duration,
    vol: &str,
) -> String {
    let cmd = format!("vol create dg1 {vol} 8M --layout mirror --mirrors 2");
    let out = std::thread::scope(|s| {
        let change = s.spawn(|| c.ctl(asker, &cmd));
        // Where the cut lands in the change is the scenario: a deliberate delay.
        std::thread::sleep(delay);
        c.net().cut(minority);
        change.join().expect("plexctl thread")
    });
    let majority: Vec<usize> = (0..3).filter(|&i| i != minority).collect();
    c.wait_joined(&majority);
    c.net().heal(minority);
    c.wait_joined(&[0, 1, 2]);
    let print = c.agreed_print();
    let applied = volume(&print, "dg1", vol).is_some();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let answer = if out.status.success() {
        "ok".to_string()
    } else {
        stderr.clone()
    };
    if out.status.success() {
        assert!(applied, "`{cmd}` on {asker} succeeded, {vol} is not there");
    } else {
        let unknown = out.status.code() == Some(plexd_tests::cluster::EXIT_OUTCOME_UNKNOWN);
        assert_eq!(
            unknown,
            stderr.contains("outcome unknown"),
            "`{cmd}`: exit {:?} and the text disagree: {stderr}",
            out.status.code()
        );
        if !unknown {
            assert!(
                !applied,
                "`{cmd}` failed ({stderr}) but {vol} is there after the heal"
            );
        }
    }
    if applied {
        c.write_pattern(asker, "dg1", vol, 0, 1 << 20);
    }
    c.check_invariants();
    format!("{answer} (applied: {applied})")
}

#[test]
fn a_partition_in_the_middle_of_a_change_leaves_one_outcome_on_every_node_and_disk() {
    let mut c = cluster(true);
    // (cut off, asked on): the master and a slave, each asking or asked through.
    // The cut 0 or 5 ms after plexctl started: before, in or after the transaction.
    let rounds = [(0, 0), (0, 1), (2, 2), (2, 0)];
    let mut k = 0;
    for delay_ms in [0, 5] {
        for (minority, asker) in rounds {
            let vol = format!("mid{k}");
            k += 1;
            let delay = Duration::from_millis(delay_ms);
            let answer = cut_during_change(&mut c, minority, asker, delay, &vol);
            eprintln!(
                "mid-change: cut {} {delay_ms} ms after {} asked: {answer}",
                c.nodes[minority].name, c.nodes[asker].name
            );
        }
    }
}

/// Changes asked during [`a_lossy_link_on_the_master_leaves_one_outcome_per_change`],
/// one every `LOSSY_PACE`.
const LOSSY_CHANGES: usize = 8;
const LOSSY_PACE: Duration = Duration::from_millis(700);
/// Longest the lossy phase lasts.
const LOSSY_FOR: Duration = Duration::from_secs(15);
/// Packets a's link loses meanwhile (TCP retransmits; heartbeats arrive late).
const LOSSY_PERCENT: u32 = 10;

/// 10 % of what the master sends is lost while 8 changes are asked on it
/// and through it: whether each one goes through depends on the timing (the test
/// clusters' 600 ms heartbeat timeout is short for TCP retransmits), but after the
/// loss stops every answer plexctl gave agrees with what every node and the disks
/// hold, and the cluster is one again.

#[test]
fn a_lossy_link_on_the_master_leaves_one_outcome_per_change() {
    let mut c = cluster(true);
    c.net().loss(0, LOSSY_PERCENT);
    let started = Instant::now();
    let mut asked = Vec::new();
    for k in 0..LOSSY_CHANGES {
        if started.elapsed() > LOSSY_FOR {
            break;
        }
        let vol = format!("lossy{k}");
        let asker = [2, 0][k % 2]; // through the master's lossy link, or on the master
        let out = c.ctl(asker, &format!("vol create dg1 {vol} 8M --layout concat"));
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        asked.push((vol, asker, out.status.code(), stderr));
        // The pace of the changes is the scenario, not a wait for a condition.
        std::thread::sleep(LOSSY_PACE);
    }
    c.net().clear_loss(0);
    let lossy = started.elapsed();
    c.wait_joined(&[0, 1, 2]);
    let print = c.agreed_print();
    for (vol, asker, code, stderr) in &asked {
        let applied = volume(&print, "dg1", vol).is_some();
        eprintln!(
            "lossy: {vol} on {}: {code:?} {stderr} (applied: {applied})",
            c.nodes[*asker].name
        );
        match code {
            Some(0) => assert!(applied, "{vol}: plexctl said ok, not applied"),
            Some(plexd_tests::cluster::EXIT_OUTCOME_UNKNOWN) => {}
            Some(
                plexd_tests::cluster::EXIT_REFUSED
                | plexd_tests::cluster::EXIT_NO_QUORUM
                | plexd_tests::cluster::EXIT_FAILED
                | plexd_tests::cluster::EXIT_UNREACHABLE,
            ) => assert!(!applied, "{vol}: plexctl said {stderr}, applied"),
            other => panic!("{vol}: plexctl exit {other:?}: {stderr}"),
        }
    }
    let ok = asked.iter().filter(|a| a.2 == Some(0)).count();
    eprintln!(
        "lossy: {ok} of {} changes went through in {} ms",
        asked.len(),
        lossy.as_millis()
    );
    // Changes work once the link is clean. A change that met the end of the
    // loss's reconfiguration may fail cleanly or have an unknown outcome: then,
    // as an admin would, look and ask again (a bounded number of times).
    let mut last = String::new();
    for _ in 0..LOSSY_FINAL_ATTEMPTS {
        c.wait_joined(&[0, 1, 2]);
        if volume(&c.agreed_print(), "dg1", "vol2").is_some() {
            break;
        }
        let out = c.ctl(1, VOL2);
        last = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if out.status.success() {
            break;
        }
        assert!(
            last.contains(RETRY_SHORTLY)
                || last.contains("outcome unknown")
                || last.contains("not applied"),
            "after the loss: {last}"
        );
    }
    assert!(
        volume(&c.agreed_print(), "dg1", "vol2").is_some(),
        "no change went through after the loss: {last}"
    );
    c.write_pattern(0, "dg1", "vol2", 0, 1 << 20);
    c.check_invariants();
}

/// Times the lossy test asks for its last change once the link is clean.
const LOSSY_FINAL_ATTEMPTS: usize = 5;

/// Five nodes split 2 | 3 with the master in the pair: the pair, which still hears
/// itself, forms no cluster and changes nothing; the three elect c and go on; after
/// the heal, one cluster of five with the three's change. Returns the master after
/// the heal.
fn split_two_three() -> (Cluster, usize) {
    require_netns();
    let opts = ClusterOpts {
        netns: true,
        ..ClusterOpts::default()
    };
    let mut c = Cluster::start(5, opts);
    c.shared_mirror(0, "dg1", "vol1", "32M");
    assert_eq!(c.master(), 0);
    let pair = [0, 1];
    let three = [2, 3, 4];
    c.net().split(&pair);
    let split = Instant::now();
    for i in pair {
        let (after, _) = wait_fenced(&mut c, i, split, false);
        eprintln!(
            "split: node {} fenced {} ms after the split",
            c.nodes[i].name,
            after.as_millis()
        );
        let e = wait_no_quorum(
            &c,
            i,
            "vol create dg1 pair 8M --layout concat",
            "(c, d, e unreachable)",
        );
        eprintln!("split: {e}");
    }
    assert_eq!(
        c.wait_joined(&three),
        2,
        "c, lowest id of the three, is master"
    );
    c.ctl_retry_ok(3, VOL2, SETTLE);
    c.write_pattern(4, "dg1", "vol2", 0, 1 << 20);
    for i in pair {
        let s = c.status(i);
        assert!(
            !plexd_tests::members(&s).contains(&c.nodes[i].name),
            "node {} of the pair is a member of a cluster: {s}",
            c.nodes[i].name
        );
    }
    c.net().unsplit(&pair);
    let master = c.wait_joined(&[0, 1, 2, 3, 4]);
    for i in 0..5 {
        assert!(!has_volume(&c, i, "pair"), "node {i} has the pair's change");
        assert!(
            has_volume(&c, i, "vol2"),
            "node {i} lost the three's change"
        );
    }
    c.check_invariants();
    (c, master)
}

#[test]
fn a_split_of_five_into_two_and_three_leaves_the_three_in_charge() {
    let (_c, master) = split_two_three();
    eprintln!("split: master after the heal: node {}", NODE_NAMES[master]);
}

/// The majority's master stays master when the partition heals: a cut-off master's
/// late heartbeats (buffered through the partition) make nobody give way.
#[test]
fn healing_a_split_of_five_keeps_the_majoritys_master() {
    let (_c, master) = split_two_three();
    assert_eq!(
        master, 2,
        "the majority's master c should still be master after the heal"
    );
}

/// Four nodes split 2 | 2 (without a quorum disk): neither side has a majority of
/// the votes, so neither commits a change or serves shared volumes; after the heal
/// the four form one cluster again, on their own, and changes work.
#[test]
fn a_split_of_four_into_two_and_two_leaves_nobody_in_charge_until_the_heal() {
    require_netns();
    let opts = ClusterOpts {
        netns: true,
        ..ClusterOpts::default()
    };
    let mut c = Cluster::start(4, opts);
    c.shared_mirror(0, "dg1", "vol1", "32M");
    assert_eq!(c.master(), 0);
    let pair = [0, 1];
    c.net().split(&pair);
    let split = Instant::now();
    for (i, unreachable) in [
        (0, "(c, d unreachable)"),
        (1, "(c, d unreachable)"),
        (2, "(a, b unreachable)"),
        (3, "(a, b unreachable)"),
    ] {
        let (after, _) = wait_fenced(&mut c, i, split, false);
        let e = wait_no_quorum(&c, i, "vol create dg1 half 8M --layout concat", unreachable);
        eprintln!(
            "split 2|2: node {} fenced {} ms after the split; {e}",
            c.nodes[i].name,
            after.as_millis()
        );
    }
    for i in 0..4 {
        let s = c.status(i);
        assert!(
            !plexd_tests::members(&s).contains(&c.nodes[i].name),
            "node {} is a member of a cluster during a 2 | 2 split: {s}",
            c.nodes[i].name
        );
    }
    c.net().unsplit(&pair);
    c.wait_joined(&[0, 1, 2, 3]);
    c.ctl_retry_ok(2, VOL2, SETTLE);
    for i in 0..4 {
        assert!(
            !has_volume(&c, i, "half"),
            "node {i} has a change made during the split"
        );
        assert!(
            has_volume(&c, i, "vol2"),
            "node {i} lacks the change made after the heal"
        );
    }
    c.write_pattern(3, "dg1", "vol2", 0, 1 << 20);
    c.check_invariants();
}
