//! SCSI persistent reservations of a shared volume are cluster-wide: registered and
//! reserved through one node's portal, they hold through every other node's portal,
//! a PREEMPT through one node fences the preempted host on every node, and the state
//! is on the disks (it survives a restart of every plexd and plexd-target). A PR OUT
//! the cluster cannot run (no quorum) gets NOT READY 04h/0Ah, which hosts retry.
//! Driven by the raw initiator of `plexd_tests::iscsi` against each node's portal.
//! NVMe reservations of a shared volume are the same cluster state: an NVMe host's
//! acquire through one node's controller holds on the other node and after a
//! restart (the raw host of `plexd_tests::nvmf_host`), and a preempt and abort
//! through one node ends the preempted host's commands on the other node and
//! notifies it there. An iSCSI PREEMPT AND ABORT through one node aborts the
//! preempted nexus's tasks on the other and raises its unit attentions there.

use std::time::Duration;

use plexd_target::frontend::nvmf::pdu::{self, flag, ty, Digests};
use plexd_tests::cluster::port_of;
use plexd_tests::iscsi::{Initiator, ScsiResult};
use plexd_tests::nvmf_host::{Host, Pdu};
use plexd_tests::{wait_until, Cluster, ClusterOpts};

const IQN: &str = "iqn.2026-11.io.plexd:test.dg1.vol1";
const HOST1: &str = "iqn.2026-11.io.plexd:host1";
const HOST2: &str = "iqn.2026-11.io.plexd:host2";
const ISID1: [u8; 6] = [0x80, 0, 0, 0, 0, 1];
const ISID2: [u8; 6] = [0x80, 0, 0, 0, 0, 2];
/// Reservation type Write Exclusive.
const WE: u8 = 1;
/// How long a node may take to apply a committed change or to serve the export.
const CONVERGE: Duration = Duration::from_secs(30);
/// Longest wait for a refused PR OUT without quorum: one attempt may wait for the
/// coordinator's refusal (a takeover attempt without quorum) or the target's own
/// 30 s bound on an unanswered request.
const NO_QUORUM_WAIT: Duration = Duration::from_secs(90);
/// RESERVATION CONFLICT status.
const CONFLICT: u8 = 0x18;

/// Waits until node `i` serves the export's LUN with its own relative target port
/// (the node id, set with its ALUA view) and cluster-kept reservations.
fn wait_lun(c: &Cluster, i: usize) {
    let id = c.nodes[i].id as u16;
    wait_until(
        &format!("node {}'s LUN with target port {id}", c.nodes[i].name),
        CONVERGE,
        || {
            let targets = c.kernel(i).iscsi_targets().map_err(|e| e.to_string())?;
            let t = targets.iter().find(|t| t.iqn == IQN).ok_or("no target")?;
            let l = t.luns.first().ok_or("no LUN")?;
            match &l.alua {
                Some(a) if a.relative_port == id && l.cluster_reservations => Ok(()),
                _ => Err(format!("{l:?}")),
            }
        },
    );
    c.wait_served(i, "dg1", "vol1");
}

/// A session of `host` (ISID `isid`) through node `i`'s portal, unit attention read.
fn session(c: &Cluster, i: usize, host: &str, isid: [u8; 6]) -> Initiator {
    let portal = c.nodes[i].iscsi_portal.clone();
    wait_until(&format!("{host} logged in on {portal}"), CONVERGE, || {
        let mut ini = Initiator::login(&portal, host, isid, IQN)?;
        ini.clear_ua()?;
        Ok(ini)
    })
}

fn ok(r: Result<ScsiResult, String>, what: &str) -> ScsiResult {
    let r = r.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(r.status, 0, "{what}: {r:?}");
    r
}

fn status(r: Result<ScsiResult, String>, what: &str) -> u8 {
    r.unwrap_or_else(|e| panic!("{what}: {e}")).status
}

/// Waits until READ KEYS through `ini` lists exactly `keys`.
fn wait_keys(ini: &mut Initiator, keys: &[u64], what: &str) {
    wait_until(what, CONVERGE, || match ini.read_keys() {
        Ok((_, k)) if k == keys => Ok(()),
        Ok((g, k)) => Err(format!("generation {g}, keys {k:x?}")),
        Err(e) => Err(e),
    });
}

/// Two nodes, a shared 2-way mirror `dg1.vol1` made through the master, exported
/// with `export EXPORT`; returns the cluster and the master's index.
fn two_nodes_exporting(export: &str) -> (Cluster, usize) {
    nodes_exporting(2, export)
}

/// [`two_nodes_exporting`] with `n` nodes.
fn nodes_exporting(n: usize, export: &str) -> (Cluster, usize) {
    let mut c = Cluster::start(n, ClusterOpts::default());
    let m = c.master();
    c.shared_mirror(m, "dg1", "vol1", "32M");
    c.ctl_ok(0, &format!("export {export}"));
    (c, m)
}

/// The NQN of `dg1.vol1`'s NVMe-oF export, once both nodes' data planes serve
/// its subsystem and the volume.
fn nvmf_subsystem_everywhere(c: &mut Cluster) -> String {
    let nqn = c.export_name("dg1", "vol1", "nvmf");
    for i in 0..2 {
        c.wait_nvmf_subsystem(i, &nqn, CONVERGE);
        c.wait_served(i, "dg1", "vol1");
    }
    nqn
}

#[test]
fn reservations_of_a_shared_volume_hold_through_every_node_and_survive_a_restart() {
    let (mut c, _) = two_nodes_exporting("iscsi dg1 vol1 --all");
    wait_lun(&c, 0);
    wait_lun(&c, 1);
    let block = vec![0x5au8; 512];

    // Host 1 registers and reserves (write exclusive) through node a.
    let mut h1a = session(&c, 0, HOST1, ISID1);
    ok(h1a.pr_out(0, 0, 0, 0xa1), "REGISTER 0xa1 through a");
    ok(h1a.pr_out(1, WE, 0xa1, 0), "RESERVE through a");
    assert_eq!(h1a.read_reservation().unwrap(), Some((0xa1, WE)));
    ok(h1a.write10(0, &block), "the holder writes through a");

    // Through node b: the key and the reservation are there. Host 2 (not
    // registered) may read but not write; host 1 through b is another I_T nexus
    // (another target port), not the holder either.
    let mut h2b = session(&c, 1, HOST2, ISID2);
    wait_keys(&mut h2b, &[0xa1], "node b to list a's key");
    assert_eq!(h2b.read_reservation().unwrap(), Some((0xa1, WE)));
    assert_eq!(
        status(h2b.write10(0, &block), "host 2 write through b"),
        CONFLICT
    );
    ok(h2b.read10(0, 1), "host 2 reads through b");
    let mut h1b = session(&c, 1, HOST1, ISID1);
    assert_eq!(
        status(h1b.write10(0, &block), "host 1 write through b"),
        CONFLICT,
        "the reservation belongs to host 1's nexus through node a only"
    );
    // A conflicting RESERVE through b is answered by b from the cluster's state.
    ok(h2b.pr_out(0, 0, 0, 0xb2), "REGISTER 0xb2 through b");
    assert_eq!(
        status(h2b.pr_out(1, WE, 0xb2, 0), "RESERVE by host 2 through b"),
        CONFLICT
    );

    // Host 2 preempts host 1 through b: host 1's key is gone on every node and its
    // next write through a conflicts.
    ok(h2b.pr_out(4, WE, 0xb2, 0xa1), "PREEMPT 0xa1 through b");
    assert_eq!(h2b.read_reservation().unwrap(), Some((0xb2, WE)));
    ok(h2b.write10(0, &block), "the new holder writes through b");
    wait_keys(&mut h1a, &[0xb2], "node a to see the preemption");
    assert_eq!(h1a.read_reservation().unwrap(), Some((0xb2, WE)));
    assert_eq!(
        status(h1a.write10(0, &block), "host 1 write through a"),
        CONFLICT
    );
    let (generation, _) = h1a.read_keys().unwrap();
    drop((h1a, h1b, h2b));

    // The reservations are on the disks: every plexd and plexd-target restarts.
    c.kill_all();
    c.restart_all();
    wait_lun(&c, 0);
    wait_lun(&c, 1);
    for i in 0..2 {
        let mut h = session(&c, i, HOST1, ISID1);
        let (g, keys) = h.read_keys().unwrap();
        assert_eq!(
            (g, keys),
            (generation, vec![0xb2]),
            "node {i} after the restart"
        );
        assert_eq!(h.read_reservation().unwrap(), Some((0xb2, WE)));
        assert_eq!(status(h.write10(0, &block), "host 1 write"), CONFLICT);
    }
    let mut h2b = session(&c, 1, HOST2, ISID2);
    ok(h2b.write10(0, &block), "the holder still writes through b");

    // Without quorum (node a's plexd is gone; 1 of 2 votes) a PR OUT through b is
    // refused with a sense hosts retry, and changes nothing.
    c.kill_coordinator(0);
    let mut h1b = session(&c, 1, HOST1, ISID1);
    wait_until(
        "a PR OUT through b to get NOT READY 04h/0Ah",
        NO_QUORUM_WAIT,
        || match h1b.pr_out(0, 0, 0, 0xc3) {
            Ok(r) if r.status == 2 && r.sense_key == Some(2) && r.asc == Some((0x04, 0x0a)) => {
                Ok(())
            }
            Ok(r) if r.status == 0 => panic!("a PR OUT committed without quorum: {r:?}"),
            Ok(r) => Err(format!("{r:?}")),
            Err(e) => Err(e),
        },
    );
    assert_eq!(h1b.read_keys().unwrap().1, vec![0xb2]);
}

/// Issue 9, iSCSI: host 1 preempts and aborts host 2 through the slave while
/// host 2 has a write waiting for its data through the master: the write is
/// aborted there (no status, TAS=0), its data sent after host 1's GOOD writes
/// nothing, and host 2's next commands through the master report REGISTRATIONS
/// PREEMPTED, then COMMANDS CLEARED BY ANOTHER INITIATOR. Before: the master only
/// installed the committed state (the write wrote its data and answered GOOD).
#[test]
fn an_iscsi_preempt_and_abort_through_the_slave_aborts_the_preempted_tasks_on_the_master() {
    iscsi_preempt_and_abort_across_nodes(false);
}

/// The same with host 1 on the master and host 2 on the slave: the master
/// answers host 1 only once the slave's data plane applied the commit, which
/// aborted host 2's write there.
#[test]
fn an_iscsi_preempt_and_abort_through_the_master_aborts_the_preempted_tasks_on_the_slave() {
    iscsi_preempt_and_abort_across_nodes(true);
}

fn iscsi_preempt_and_abort_across_nodes(a_on_master: bool) {
    let (c, m) = two_nodes_exporting("iscsi dg1 vol1 --all");
    wait_lun(&c, 0);
    wait_lun(&c, 1);
    let (a, b) = if a_on_master { (m, 1 - m) } else { (1 - m, m) };
    let old = vec![0x11u8; 64 << 10];
    let mut h1 = session(&c, a, HOST1, ISID1);
    ok(h1.write10(0, &old), "host 1's first write");
    ok(h1.pr_out(0, 0, 0, 0xa1), "REGISTER 0xa1 through a");
    let mut h2 = session(&c, b, HOST2, ISID2);
    ok(h2.pr_out(0, 0, 0, 0xb2), "REGISTER 0xb2 through b");
    ok(h2.pr_out(1, WE, 0xb2, 0), "RESERVE by host 2 through b");
    // Host 2's write through b waits for its data.
    let new = vec![0x22u8; 64 << 10];
    let (itt, ttt, off, len) = h2.start_write10(0, 128).expect("host 2's R2T");
    assert_eq!((off, len), (0, 64 << 10), "the R2T of host 2's write");

    // Host 1 preempts host 2 and aborts its tasks, through a.
    ok(h1.pr_out(5, WE, 0xa1, 0xb2), "PREEMPT AND ABORT through a");
    assert_eq!(h1.read_reservation().unwrap(), Some((0xa1, WE)));
    // Only now host 2's data: never answered (`scsi` fails on a response with
    // another task's ITT), nothing written.
    h2.send_data_out(itt, ttt, 0, &new).expect("host 2's data");
    let ua = |r: Result<ScsiResult, String>, what: &str| {
        let r = r.unwrap_or_else(|e| panic!("{what}: {e}"));
        (r.status, r.sense_key, r.asc)
    };
    assert_eq!(
        ua(h2.scsi(&[0u8; 6], None, 0), "host 2's TEST UNIT READY"),
        (2, Some(6), Some((0x2a, 0x05))),
        "REGISTRATIONS PREEMPTED through b"
    );
    assert_eq!(
        ua(h2.scsi(&[0u8; 6], None, 0), "host 2's TEST UNIT READY"),
        (2, Some(6), Some((0x2f, 0x00))),
        "COMMANDS CLEARED BY ANOTHER INITIATOR through b"
    );
    assert_eq!(
        h2.read_keys().unwrap().1,
        vec![0xa1],
        "host 2's key is gone"
    );
    assert_eq!(
        status(h2.write10(0, &new[..512]), "host 2's new write through b"),
        CONFLICT
    );
    let back = ok(h1.read10(0, 128), "host 1 reads back");
    assert!(
        back.data == old,
        "nothing of host 2's aborted write on the disk"
    );
}

/// Reservation type Write Exclusive - Registrants Only.
const WE_RO: u8 = 5;
/// A command's (status, sense key, (ASC, ASCQ)).
type Outcome = (u8, Option<u8>, Option<(u8, u8)>);
/// UNIT ATTENTION / RESERVATIONS RELEASED.
const RELEASED: Outcome = (2, Some(6), Some((0x2a, 0x04)));
/// UNIT ATTENTION / RESERVATIONS PREEMPTED.
const RES_PREEMPTED: Outcome = (2, Some(6), Some((0x2a, 0x03)));

/// Waits until TEST UNIT READY through `ini` reports a unit attention (the
/// committed change reached its node; GOOD before that) and checks it is `want`.
fn wait_ua(ini: &mut Initiator, want: Outcome, what: &str) {
    let got = wait_until(what, CONVERGE, || {
        let r = ini.scsi(&[0u8; 6], None, 0)?;
        match r.sense_key {
            Some(6) => Ok((r.status, r.sense_key, r.asc)),
            _ => Err(format!("no unit attention yet: {r:?}")),
        }
    });
    assert_eq!(got, want, "{what}");
}

/// TEST UNIT READY through `ini` is GOOD: no unit attention pending.
fn no_ua(ini: &mut Initiator, what: &str) {
    ok(ini.scsi(&[0u8; 6], None, 0), what);
}

/// Issue 9, iSCSI: host 1's RELEASE of its registrants-only reservation and
/// then its CLEAR, both through node a, reach host 2's nexus through node b
/// as RESERVATIONS RELEASED (2Ah/04h), then RESERVATIONS PREEMPTED (2Ah/03h);
/// host 1 (the sender) gets neither. Before: node b installed the committed
/// state without a unit attention.
#[test]
fn a_release_and_a_clear_through_one_node_raise_unit_attentions_on_the_other() {
    let (c, _) = two_nodes_exporting("iscsi dg1 vol1 --all");
    wait_lun(&c, 0);
    wait_lun(&c, 1);
    let mut h1 = session(&c, 0, HOST1, ISID1);
    let mut h2 = session(&c, 1, HOST2, ISID2);
    ok(h1.pr_out(0, 0, 0, 0xa1), "REGISTER 0xa1 through a");
    ok(h2.pr_out(0, 0, 0, 0xb2), "REGISTER 0xb2 through b");
    ok(h1.pr_out(1, WE_RO, 0xa1, 0), "RESERVE WE_RO through a");
    wait_keys(&mut h2, &[0xa1, 0xb2], "node b to list both keys");
    assert_eq!(h2.read_reservation().unwrap(), Some((0xa1, WE_RO)));

    ok(h1.pr_out(2, WE_RO, 0xa1, 0), "RELEASE through a");
    wait_ua(&mut h2, RELEASED, "host 2 through b after the RELEASE");
    no_ua(&mut h2, "host 2 through b: reported once");
    assert_eq!(h2.read_reservation().unwrap(), None);
    no_ua(&mut h1, "host 1 released: nothing for it");

    ok(h1.pr_out(3, 0, 0xa1, 0), "CLEAR through a");
    wait_ua(&mut h2, RES_PREEMPTED, "host 2 through b after the CLEAR");
    no_ua(&mut h2, "host 2 through b: reported once");
    assert_eq!(h2.read_keys().unwrap().1, Vec::<u64>::new());
    no_ua(&mut h1, "host 1 cleared: nothing for it");
}

/// Issue 9, iSCSI: a node that missed a committed RELEASE (its plexd was down,
/// its data plane kept the old state) raises the unit attention when it catches
/// up: host 2 registered through node s; host 1 releases its registrants-only
/// reservation through the master while s's plexd is dead; once s's plexd is
/// back and has given its data plane the newest state, host 2's next session
/// through s reports the power on, then RESERVATIONS RELEASED.
#[test]
fn a_node_that_missed_a_release_raises_its_unit_attention_when_it_catches_up() {
    let (mut c, m) = nodes_exporting(3, "iscsi dg1 vol1 --all");
    let s = (m + 1) % 3;
    for i in 0..3 {
        wait_lun(&c, i);
    }
    let mut h1 = session(&c, m, HOST1, ISID1);
    let mut h2 = session(&c, s, HOST2, ISID2);
    ok(h1.pr_out(0, 0, 0, 0xa1), "REGISTER 0xa1 through the master");
    ok(h2.pr_out(0, 0, 0, 0xb2), "REGISTER 0xb2 through s");
    ok(
        h1.pr_out(1, WE_RO, 0xa1, 0),
        "RESERVE WE_RO through the master",
    );
    wait_keys(&mut h2, &[0xa1, 0xb2], "node s to list both keys");
    assert_eq!(h2.read_reservation().unwrap(), Some((0xa1, WE_RO)));
    drop(h2);

    c.kill_coordinator(s);
    // Two of three votes: the RELEASE commits without s (retried while the
    // cluster notices s is gone).
    wait_until(
        "the RELEASE through the master",
        NO_QUORUM_WAIT,
        || match h1.pr_out(2, WE_RO, 0xa1, 0)? {
            r if r.status == 0 => Ok(()),
            r => Err(format!("{r:?}")),
        },
    );
    assert_eq!(h1.read_reservation().unwrap(), None);
    no_ua(&mut h1, "host 1 released: nothing for it");
    c.restart_coordinator(s, None);
    wait_lun(&c, s);
    let portal = c.nodes[s].iscsi_portal.clone();
    let mut h2 = wait_until("host 2 logged in on s again", CONVERGE, || {
        Initiator::login(&portal, HOST2, ISID2, IQN)
    });
    let power_on = (2, Some(6), Some((0x29, 0x00)));
    wait_ua(&mut h2, power_on, "host 2's new session through s");
    wait_ua(&mut h2, RELEASED, "host 2 through s once s caught up");
    no_ua(&mut h2, "host 2 through s: reported once");
    assert_eq!(h2.read_reservation().unwrap(), None);
}

/// An NVMe host (`hostnqn`, `hostid`) on node `i`: its admin queue (enabled, no
/// keep alive) and one I/O queue.
fn nvme_host(c: &Cluster, i: usize, nqn: &str, hostnqn: &str, hostid: [u8; 16]) -> (Host, Host) {
    let port = port_of(&c.nodes[i].nvmf_portal);
    let mut a = Host::ic(port, Digests::default());
    a.hostnqn = hostnqn.into();
    a.hostid = hostid;
    let done = a.connect(0, 0xffff, 0, nqn);
    assert_eq!(
        done.sc(),
        0,
        "admin Connect of {hostnqn} on {}",
        c.nodes[i].name
    );
    a.prop_set(0x14, 0x0046_0001);
    let mut q = Host::ic(port, Digests::default());
    q.hostnqn = hostnqn.into();
    q.hostid = hostid;
    assert_eq!(q.connect(1, done.dw0 as u16, 0, nqn).sc(), 0, "I/O Connect");
    (a, q)
}

fn keys(a: u64, b: u64) -> Vec<u8> {
    let mut d = a.to_le_bytes().to_vec();
    d.extend_from_slice(&b.to_le_bytes());
    d
}

const NVME_REGISTER: u8 = 0x0d;
const NVME_REPORT: u8 = 0x0e;
const NVME_ACQUIRE: u8 = 0x11;
const NVME_RELEASE: u8 = 0x15;
const NVME_CONFLICT: u16 = 0x83;
/// The ANA-inaccessible path error (a node not serving yet after a restart).
const NVME_ANA_INACCESSIBLE: u16 = 0x302;
/// NVMe reservation type Write Exclusive.
const NVME_WE: u32 = 1;

/// (reservation type, [(holds, key, host id)]) of an extended Reservation Report.
fn nvme_report(q: &mut Host) -> (u8, Vec<(u8, u64, Vec<u8>)>) {
    let r = q.resv(NVME_REPORT, 1, 4096 / 4 - 1, 1, &[], 4096);
    assert_eq!(r.sc(), 0, "Reservation Report");
    let n = pdu::le16(&r.data, 5) as usize;
    let regs = (0..n)
        .map(|i| {
            let e = &r.data[64 + 64 * i..128 + 64 * i];
            (e[2], pdu::le64(e, 8), e[16..32].to_vec())
        })
        .collect();
    (r.data[4], regs)
}

#[test]
fn an_nvme_reservation_through_one_node_holds_on_the_other_and_survives_a_restart() {
    let (mut c, _) = two_nodes_exporting("nvmf dg1 vol1");
    let nqn = nvmf_subsystem_everywhere(&mut c);
    let (ha, hb) = (
        "nqn.2014-08.org.nvmexpress:uuid:host-a",
        "nqn.2014-08.org.nvmexpress:uuid:host-b",
    );
    let (id_a, id_b) = ([0xa1u8; 16], [0xb2u8; 16]);
    let block = vec![0x5au8; 512];

    // Host A registers and acquires write exclusive through node a; host B
    // registers through node b.
    let (_aa, mut qa) = nvme_host(&c, 0, &nqn, ha, id_a);
    let (_ab, mut qb) = nvme_host(&c, 1, &nqn, hb, id_b);
    assert_eq!(qa.resv(NVME_REGISTER, 1, 0, 0, &keys(0, 0xa1), 0).sc(), 0);
    assert_eq!(qb.resv(NVME_REGISTER, 1, 0, 0, &keys(0, 0xb2), 0).sc(), 0);
    assert_eq!(
        qa.resv(NVME_ACQUIRE, 1, NVME_WE << 8, 0, &keys(0xa1, 0), 0)
            .sc(),
        0
    );
    assert_eq!(
        qa.rw(0x01, 0, 1, &block, true).sc(),
        0,
        "the holder writes through a"
    );

    // Node b has the committed state: B's write conflicts, its read does not, its
    // acquire conflicts; host A through node b is the same registrant (NVMe
    // registers hosts, not paths) and writes.
    let (t, regs) = nvme_report(&mut qb);
    assert_eq!(t, NVME_WE as u8);
    assert!(regs.contains(&(1, 0xa1, id_a.to_vec())), "{regs:x?}");
    assert!(regs.contains(&(0, 0xb2, id_b.to_vec())), "{regs:x?}");
    assert_eq!(
        qb.rw(0x01, 0, 1, &block, true).sc(),
        NVME_CONFLICT,
        "B writes through b"
    );
    assert_eq!(qb.rw(0x02, 0, 1, &[], true).sc(), 0, "B reads through b");
    assert_eq!(
        qb.resv(NVME_ACQUIRE, 1, NVME_WE << 8, 0, &keys(0xb2, 0), 0)
            .sc(),
        NVME_CONFLICT
    );
    let (_aab, mut qab) = nvme_host(&c, 1, &nqn, ha, id_a);
    assert_eq!(
        qab.rw(0x01, 0, 1, &block, true).sc(),
        0,
        "A writes through b"
    );
    drop((qa, qb, qab, _aa, _ab, _aab));

    // The reservation is on the disks: every plexd and plexd-target restarts.
    c.kill_all();
    c.restart_all();
    for i in 0..2 {
        c.wait_nvmf_subsystem(i, &nqn, CONVERGE);
        c.wait_served(i, "dg1", "vol1");
    }
    let (_ab, mut qb) = nvme_host(&c, 1, &nqn, hb, id_b);
    wait_until(
        "B's write through b to conflict after the restart",
        CONVERGE,
        || match qb.rw(0x01, 0, 1, &block, true).sc() {
            NVME_CONFLICT => Ok(()),
            NVME_ANA_INACCESSIBLE => Err("not served yet".to_string()),
            sc => panic!("B's write through b after the restart: status {sc:#x}"),
        },
    );
    let (t, regs) = nvme_report(&mut qb);
    assert_eq!((t, regs.len()), (NVME_WE as u8, 2), "{regs:x?}");

    // A releases through node a; B writes through node b.
    let (_aa, mut qa) = nvme_host(&c, 0, &nqn, ha, id_a);
    assert_eq!(
        qa.resv(NVME_RELEASE, 1, NVME_WE << 8, 0, &0xa1u64.to_le_bytes(), 0)
            .sc(),
        0
    );
    // The release is in force on b when it completes; b's path may still be
    // inaccessible for a moment after the restart (its lease, the recovery's
    // bookkeeping), which a host retries: only that is waited out.
    wait_until(
        "B's write through b after the release",
        CONVERGE,
        || match qb.rw(0x01, 0, 1, &block, true).sc() {
            0 => Ok(()),
            NVME_ANA_INACCESSIBLE => Err("b's path is inaccessible".to_string()),
            sc => panic!("B writes through b after the release: status {sc:#x}"),
        },
    );
}

/// Command Aborted due to Preempt and Abort.
const NVME_PREEMPT_ABORTED: u16 = 0x1b;

/// Sends a Write of `data` at `lba` of namespace 1 announcing a transport SGL
/// (its data goes after an R2T); returns its command id.
fn send_r2t_write(q: &mut Host, lba: u64, data: &[u8]) -> u16 {
    let cid = q.next_cid();
    let mut sqe = [0u8; 64];
    sqe[0] = 0x01;
    sqe[2..4].copy_from_slice(&cid.to_le_bytes());
    sqe[4..8].copy_from_slice(&1u32.to_le_bytes());
    sqe[32..36].copy_from_slice(&(data.len() as u32).to_le_bytes());
    sqe[39] = 0x5A;
    sqe[40..48].copy_from_slice(&lba.to_le_bytes());
    sqe[48..50].copy_from_slice(&((data.len() / 512 - 1) as u16).to_le_bytes());
    q.send(ty::CAPSULE_CMD, 0, &sqe, &[]);
    cid
}

/// Reads one PDU of `q` (its read timeout bounds the wait) and checks its type.
fn recv_pdu(q: &mut Host, t: u8, what: &str) -> Pdu {
    let p = q.recv().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(p.ty, t, "{what}");
    p
}

/// Sends an Asynchronous Event Request on admin queue `adm`; returns its id.
fn send_aer(adm: &mut Host) -> u16 {
    let aer = adm.next_cid();
    let mut sqe = [0u8; 64];
    sqe[0] = 0x0C;
    sqe[2..4].copy_from_slice(&aer.to_le_bytes());
    adm.send(ty::CAPSULE_CMD, 0, &sqe, &[]);
    aer
}

/// The AER `aer` of admin queue `adm` completes with "reservation log page
/// available", and the log page (80h) then read is notice type `notice` on
/// namespace 1.
fn expect_resv_notice(adm: &mut Host, aer: u16, notice: u8, what: &str) {
    let ev = recv_pdu(adm, ty::CAPSULE_RESP, what);
    assert_eq!(
        pdu::le16(&ev.hdr[8..], 12),
        aer,
        "{what}: the AER completes"
    );
    assert_eq!(
        pdu::le32(&ev.hdr[8..], 0),
        0x0080_0006,
        "{what}: reservation log page available"
    );
    let log = adm.admin(0x02, 0, 0x80 | (15 << 16), 0, 64);
    assert_eq!(log.sc(), 0, "{what}: Get Log Page 80h");
    assert_eq!(
        (log.data[8], pdu::le32(&log.data, 12)),
        (notice, 1),
        "{what}: notice type and namespace"
    );
}

/// Issue 9: host A preempts and aborts host B through one node while B has a
/// write waiting for its data on the other: B's write ends with "Command
/// Aborted due to Preempt and Abort" and writes nothing when its data comes
/// after A's Acquire completed, and B's controller on its node gets the
/// "registration preempted" notice (an AEN, then log 80h). Before: B's node
/// only installed the committed state (B's write failed with a reservation
/// conflict, no notice).
#[test]
fn an_nvme_preempt_and_abort_through_the_slave_aborts_and_notifies_on_the_master() {
    preempt_and_abort_across_nodes(false);
}

/// The same with A on the master and B on the slave: the master answers the
/// Acquire only once the slave's data plane applied the commit (`Applied`);
/// before that wait, the answer raced the slave's apply.
#[test]
fn an_nvme_preempt_and_abort_through_the_master_aborts_and_notifies_on_the_slave() {
    preempt_and_abort_across_nodes(true);
}

fn preempt_and_abort_across_nodes(a_on_master: bool) {
    let (mut c, m) = two_nodes_exporting("nvmf dg1 vol1");
    let nqn = nvmf_subsystem_everywhere(&mut c);
    let (a_node, b_node) = if a_on_master { (m, 1 - m) } else { (1 - m, m) };
    let (ha, hb) = (
        "nqn.2014-08.org.nvmexpress:uuid:host-a",
        "nqn.2014-08.org.nvmexpress:uuid:host-b",
    );
    let (id_a, id_b) = ([0xa1u8; 16], [0xb2u8; 16]);
    let (_adm_a, mut qa) = nvme_host(&c, a_node, &nqn, ha, id_a);
    let (mut adm_b, mut qb) = nvme_host(&c, b_node, &nqn, hb, id_b);
    let old = vec![0x11u8; 4096];
    assert_eq!(qa.rw(0x01, 0, 8, &old, false).sc(), 0, "A's first write");
    assert_eq!(qa.resv(NVME_REGISTER, 1, 0, 0, &keys(0, 0xa1), 0).sc(), 0);
    assert_eq!(qb.resv(NVME_REGISTER, 1, 0, 0, &keys(0, 0xb2), 0).sc(), 0);
    assert_eq!(
        qb.resv(NVME_ACQUIRE, 1, NVME_WE << 8, 0, &keys(0xb2, 0), 0)
            .sc(),
        0,
        "B acquires write exclusive through b"
    );
    // B's admin queue on b waits for an event; B's write there waits for its data.
    let aer = send_aer(&mut adm_b);
    let new = vec![0x22u8; 4096];
    let held = send_r2t_write(&mut qb, 0, &new);
    let r2t = recv_pdu(&mut qb, ty::R2T, "the R2T of B's write");
    assert_eq!(pdu::le16(&r2t.hdr, 8), held);
    let ttag = pdu::le16(&r2t.hdr, 10);

    // A preempts B and aborts (action 010b) through a.
    let pa = qa.resv(NVME_ACQUIRE, 1, 2 | (NVME_WE << 8), 0, &keys(0xa1, 0xb2), 0);
    assert_eq!(pa.sc(), 0, "A's preempt and abort through a");
    // Only now B's data: the write ends aborted and writes nothing.
    let h = pdu::data_hdr(held, ttag, 0, new.len() as u32);
    qb.send(ty::H2C_DATA, flag::LAST_PDU, &h, &new);
    let resp = recv_pdu(&mut qb, ty::CAPSULE_RESP, "the response to B's write");
    let cqe = &resp.hdr[8..24];
    assert_eq!(
        (pdu::le16(cqe, 12), (pdu::le16(cqe, 14) >> 1) & 0x7ff),
        (held, NVME_PREEMPT_ABORTED),
        "B's write through b"
    );
    let r = qa.rw(0x02, 0, 8, &[], false);
    assert_eq!(r.sc(), 0);
    assert!(r.data == old, "B's aborted write is not on the disk");
    // B's controller on b: registration preempted (type 1).
    expect_resv_notice(&mut adm_b, aer, 1, "B's registration preempted notice on b");
    assert_eq!(
        qb.rw(0x01, 0, 1, &new[..512], true).sc(),
        NVME_CONFLICT,
        "B is no longer registered"
    );
}

/// Issue 9: one reservation state, both protocols told. An NVMe host's release
/// of its registrants-only reservation through node a raises RESERVATIONS
/// RELEASED (2Ah/04h) on an iSCSI nexus registered through node b, and that
/// nexus's CLEAR through b gives the NVMe host's controller on a the
/// "reservation preempted" notice (an AEN, then log 80h type 3). Before: the
/// iSCSI nexus heard nothing of the NVMe host's release.
#[test]
fn an_nvme_release_and_an_iscsi_clear_reach_the_other_protocol_on_the_other_node() {
    let (mut c, _) = two_nodes_exporting("iscsi dg1 vol1 --all");
    c.ctl_ok(0, "export nvmf dg1 vol1");
    let nqn = nvmf_subsystem_everywhere(&mut c);
    wait_lun(&c, 0);
    wait_lun(&c, 1);
    let ha = "nqn.2014-08.org.nvmexpress:uuid:host-a";
    let (mut adm, mut q) = nvme_host(&c, 0, &nqn, ha, [0xa1; 16]);
    let mut h2 = session(&c, 1, HOST2, ISID2);
    assert_eq!(q.resv(NVME_REGISTER, 1, 0, 0, &keys(0, 0xa1), 0).sc(), 0);
    ok(h2.pr_out(0, 0, 0, 0xb2), "REGISTER 0xb2 through b");
    // NVMe type 3 is write exclusive - registrants only.
    let acquire = q.resv(NVME_ACQUIRE, 1, 3 << 8, 0, &keys(0xa1, 0), 0);
    assert_eq!(acquire.sc(), 0, "A acquires through a");
    wait_until("node b to see A's reservation", CONVERGE, || {
        match h2.read_reservation()? {
            Some((0xa1, WE_RO)) => Ok(()),
            other => Err(format!("{other:x?}")),
        }
    });

    let release = q.resv(NVME_RELEASE, 1, 3 << 8, 0, &0xa1u64.to_le_bytes(), 0);
    assert_eq!(release.sc(), 0, "A releases through a");
    wait_ua(&mut h2, RELEASED, "host 2 through b after A's release");
    no_ua(&mut h2, "host 2 through b: reported once");

    // A's admin queue on a waits for an event; host 2 clears through b.
    let aer = send_aer(&mut adm);
    ok(h2.pr_out(3, 0, 0xb2, 0), "CLEAR through b");
    // Reservation preempted (type 3).
    expect_resv_notice(&mut adm, aer, 3, "A's reservation preempted notice on a");
    no_ua(&mut h2, "host 2 cleared: nothing for it");
}

/// A reservation change is in force on every node when the command completes: a
/// third node, slow to apply commits (its data plane takes each one 2 s late), is
/// neither the node the RESERVE came through nor the master's successor (which
/// applies a commit before the disk write), and still refuses the other host's
/// write right after the GOOD: the master answers a PR OUT only once every
/// member's data plane applied it (`ConfigModel::answer_after_applied`). Likewise
/// the release lets the write through at once.
#[test]
fn a_reservation_is_in_force_on_a_node_slow_to_commit_when_the_command_completes() {
    let (mut c, m) = nodes_exporting(3, "iscsi dg1 vol1 --all");
    // The node that is neither the master nor its successor (the lowest other id).
    let successor = (0..3).filter(|&i| i != m).min().unwrap();
    let slow = (0..3).find(|&i| i != m && i != successor).unwrap();
    c.restart_coordinator(slow, Some("driver.kernel_commit:sleep=2000"));
    for i in 0..3 {
        wait_lun(&c, i);
    }
    let block = vec![0x3cu8; 512];
    let mut h2 = session(&c, slow, HOST2, ISID2);
    ok(
        h2.write10(0, &block),
        "host 2 writes through the slow node first",
    );

    let mut h1 = session(&c, m, HOST1, ISID1);
    ok(h1.pr_out(0, 0, 0, 0xa1), "REGISTER 0xa1 through the master");
    ok(h1.pr_out(1, WE, 0xa1, 0), "RESERVE through the master");
    assert_eq!(
        status(
            h2.write10(0, &block),
            "host 2's write right after the RESERVE"
        ),
        CONFLICT,
        "the slow node let a non-registrant write after the reservation was granted"
    );
    ok(h1.pr_out(2, WE, 0xa1, 0), "RELEASE through the master");
    ok(
        h2.write10(0, &block),
        "host 2's write through the slow node right after the RELEASE",
    );
}
