//! `plexctl export iscsi` / `unexport`: a volume served by the nodes' iSCSI targets,
//! checked with libiscsi's tools (package libiscsi-bin) against each node's portal.
//! `plexctl export nvmf`: the same volume behind every node's NVMe/TCP listener,
//! checked with the raw host of `plexd_tests::nvmf_host`.

use std::process::Command;
use std::time::Duration;

use plexd_target::frontend::nvmf::pdu::{self, Digests};
use plexd_target::frontend::nvmf::DISCOVERY_NQN;
use plexd_target::frontend::scsi::alua::AluaState;
use plexd_target::testutil::pattern;
use plexd_tests::cluster::port_of;
use plexd_tests::nvmf_host::{Host, HOST};
use plexd_tests::proc::run_bounded;
use plexd_tests::{wait_until, Cluster, ClusterOpts};

const IQN: &str = "iqn.2026-11.io.plexd:test.dg1.vol1";
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);
const SERVE_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs a libiscsi tool against LUN 0 of `iqn` on `portal`: (success, output).
fn tool(name: &str, args: &[&str], portal: &str, iqn: &str) -> (bool, String) {
    let url = format!("iscsi://{portal}/{iqn}/0");
    let out = run_bounded(Command::new(name).args(args).arg(&url), TOOL_TIMEOUT)
        .unwrap_or_else(|e| panic!("{name} {url}: {e} (install libiscsi-bin: ci/setup)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The device identification page of the LUN, once the portal serves it.
fn served_identity(portal: &str, iqn: &str) -> String {
    wait_until(
        &format!("{iqn} to be served on {portal}"),
        SERVE_TIMEOUT,
        || match tool("iscsi-inq", &["-e", "1", "-c", "131"], portal, iqn) {
            (true, out) => Ok(out),
            (false, out) => Err(out),
        },
    )
}

fn wait_not_served(portal: &str, iqn: &str) {
    wait_until(
        &format!("{iqn} to be gone from {portal}"),
        SERVE_TIMEOUT,
        || match tool("iscsi-inq", &[], portal, iqn) {
            (false, _) => Ok(()),
            (true, out) => Err(format!("still served: {out}")),
        },
    );
}

/// Node `i`'s id (ALUA group and relative port).
fn c_id(i: usize) -> u16 {
    i as u16 + 1
}

/// Waits until node `i`'s target holds the ALUA view `groups` (id, state) for LUN 0
/// of the export, with itself as the local group and port.
fn wait_alua(c: &Cluster, i: usize, groups: &[(u16, AluaState)]) {
    wait_until(
        &format!("node {}'s ALUA view {groups:?}", c.nodes[i].name),
        SERVE_TIMEOUT,
        || {
            let targets = c.kernel(i).iscsi_targets().map_err(|e| e.to_string())?;
            let t = targets.iter().find(|t| t.iqn == IQN).ok_or("no target")?;
            let a = t.luns[0].alua.clone().ok_or("no ALUA view yet")?;
            let got: Vec<(u16, AluaState)> = a.groups.iter().map(|g| (g.id, g.state)).collect();
            if a.local_group == c_id(i) && a.relative_port == c_id(i) && got == groups {
                Ok(())
            } else {
                Err(format!("{a:?}"))
            }
        },
    )
}

#[test]
fn a_shared_volume_exported_on_every_node_is_one_device_behind_every_portal() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let m = c.master();
    c.shared_mirror(m, "dg1", "vol1", "32M");
    c.ctl_ok(1, "export iscsi dg1 vol1 --all");

    let print = c.agreed_print();
    let vol = plexd_tests::volume(&print, "dg1", "vol1").expect("vol1");
    assert_eq!(vol["exports"][0]["protocol"], "iscsi", "{vol}");
    assert_eq!(vol["exports"][0]["iqn"], IQN, "{vol}");
    assert_eq!(vol["exports"][0]["nodes"].as_array().map(Vec::len), Some(0));

    // ALUA: one target port group per node (id = node id = relative port), the
    // master active/optimized, the others active/non-optimized, as every node says.
    let want = |master: usize, out: Option<usize>| -> Vec<(u16, AluaState)> {
        (0..3)
            .map(|i| {
                let state = if i == master {
                    AluaState::ActiveOptimized
                } else if Some(i) == out {
                    AluaState::Unavailable
                } else {
                    AluaState::ActiveNonOptimized
                };
                (c_id(i), state)
            })
            .collect()
    };
    for i in 0..3 {
        wait_alua(&c, i, &want(m, None));
    }
    let ids: Vec<String> = c
        .nodes
        .iter()
        .map(|n| served_identity(&n.iscsi_portal, IQN))
        .collect();
    assert!(
        ids[0].to_ascii_lowercase().contains("naa"),
        "no NAA designator: {}",
        ids[0]
    );
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "the nodes present different device identifiers (multipath needs one): {ids:#?}"
    );
    let (ok, cap) = tool("iscsi-readcapacity16", &[], &c.nodes[2].iscsi_portal, IQN);
    assert!(ok, "{cap}");
    assert!(
        cap.contains(&format!("{}", (32u64 << 20) / 512 - 1)),
        "capacity is not 32 MiB: {cap}"
    );

    // The master's plexd dies: the new master is optimized, the old one (its target
    // still up, fenced) unavailable as the survivors report it.
    c.kill_coordinator(m);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != m).collect();
    let nm = c.wait_joined(&survivors);
    for &i in &survivors {
        wait_alua(&c, i, &want(nm, Some(m)));
    }
    c.restart_coordinator(m, None);
    c.wait_joined(&[0, 1, 2]);
    for i in 0..3 {
        wait_alua(&c, i, &want(nm, None));
    }

    let e = c.ctl_err(0, "vol rm dg1 vol1");
    assert!(e.contains("exported") && e.contains(IQN), "{e}");
    let e = c.ctl_err(2, "export iscsi dg1 vol1 --all");
    assert!(e.contains("already exported"), "{e}");

    c.ctl_ok(2, "unexport iscsi dg1 vol1");
    for n in &c.nodes {
        wait_not_served(&n.iscsi_portal, IQN);
    }
    c.ctl_ok(0, "vol rm dg1 vol1");
    c.forget_volume("dg1", "vol1");
    c.check_invariants();
}

#[test]
fn an_export_on_one_node_survives_a_full_restart_and_refusals_name_node_and_reason() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let m = c.master();
    c.shared_mirror(m, "dg1", "vol1", "16M");

    // Refusals: one line naming the node and the reason.
    let e = c.ctl_err(1, "export iscsi dg1 vol1 --iqn Not-An-IQN");
    assert!(e.contains("Not-An-IQN") && e.contains("invalid"), "{e}");
    let e = c.ctl_err(1, "export iscsi dg1 nosuch");
    assert!(e.contains("nosuch"), "{e}");
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_addr = busy.local_addr().unwrap().to_string();
    let e = c.ctl_err(
        2,
        &format!("export iscsi dg1 vol1 --on c --portal {busy_addr}"),
    );
    assert!(
        e.contains("node c") && e.contains(&busy_addr) && e.contains("cannot listen"),
        "{e}"
    );
    drop(busy);

    // Node b only, on its own portal.
    c.ctl_ok(0, "export iscsi dg1 vol1 --on b");
    served_identity(&c.nodes[1].iscsi_portal, IQN);
    let (served_on_a, out) = tool("iscsi-inq", &[], &c.nodes[0].iscsi_portal, IQN);
    assert!(
        !served_on_a,
        "node a serves an export of node b only: {out}"
    );

    let before = c.agreed_print();
    c.kill_all();
    c.restart_all();
    // Every node died serving vol1: its mirror is recovered first.
    assert_eq!(
        c.recovered_print(),
        plexd_tests::cluster::without_seq(&before),
        "the export is kept on the disks"
    );
    served_identity(&c.nodes[1].iscsi_portal, IQN);
    c.check_invariants();
}

/// An admin queue to `nqn` on node `i`'s listener, enabled, without keep alive;
/// returns it and its controller id.
fn nvmf_admin(c: &Cluster, i: usize, nqn: &str) -> (Host, u16) {
    let mut a = Host::ic(port_of(&c.nodes[i].nvmf_portal), Digests::default());
    let done = a.connect(0, 0xffff, 0, nqn);
    assert_eq!(done.sc(), 0, "admin Connect on node {}", c.nodes[i].name);
    a.prop_set(0x14, 0x0046_0001);
    assert_eq!(a.prop_get(0x1c, false) & 1, 1, "CSTS.RDY");
    (a, done.dw0 as u16)
}

/// The ANA log's one group descriptor: (group id, state).
fn ana(h: &mut Host) -> (u32, u8) {
    let l = h.admin(0x02, 0, 0x0C | ((4096 / 4 - 1) << 16), 0, 4096);
    assert_eq!(l.sc(), 0, "ANA log");
    assert_eq!(pdu::le16(&l.data, 8), 1, "one group per node");
    (pdu::le32(&l.data, 16), l.data[32])
}

fn wait_ana(h: &mut Host, node: &str, want: u8) {
    wait_until(
        &format!("node {node}'s ANA state {want:#x}"),
        SERVE_TIMEOUT,
        || match ana(h) {
            (_, s) if s == want => Ok(()),
            got => Err(format!("{got:?}")),
        },
    );
}

const ANA_OPTIMIZED: u8 = 0x01;
const ANA_NON_OPTIMIZED: u8 = 0x02;
const ANA_INACCESSIBLE: u8 = 0x03;

#[test]
fn an_nvmf_export_is_one_namespace_behind_every_node_with_ana_from_membership() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let m = c.master();
    c.shared_mirror(m, "dg1", "vol1", "32M");
    let e = c.ctl_err(1, "export nvmf dg1 vol1 --nqn Not-An-NQN");
    assert!(e.contains("Not-An-NQN") && e.contains("invalid"), "{e}");
    let e = c.ctl_err(1, "export nvmf dg1 vol1 --on c --portal 127.0.0.1:1");
    assert!(e.contains("node b") && e.contains("nvmf_portal"), "{e}");
    c.ctl_ok(1, "export nvmf dg1 vol1");

    let print = c.agreed_print();
    let vol = plexd_tests::volume(&print, "dg1", "vol1").expect("vol1");
    let ex = &vol["exports"][0];
    assert_eq!(ex["protocol"], "nvmf", "{vol}");
    let nqn = ex["iqn"].as_str().expect("the NQN").to_string();
    assert!(
        nqn.starts_with("nqn.2026-11.io.plexd:test-") && nqn.ends_with(".dg1.vol1"),
        "default NQN from the cluster id, group and volume: {nqn}"
    );
    assert_eq!(ex["hosts"].as_array().map(Vec::len), Some(0), "any host");
    for i in 0..3 {
        c.wait_nvmf_subsystem(i, &nqn, SERVE_TIMEOUT);
    }

    // A host connects to the master's and a slave's listeners: one namespace
    // identity, controller ids from each node's own range.
    let s = (m + 1) % 3;
    let (mut am, cm) = nvmf_admin(&c, m, &nqn);
    let (mut as_, cs) = nvmf_admin(&c, s, &nqn);
    assert_ne!(cm, cs, "controller ids clash across nodes");
    let identity = |h: &mut Host| {
        let ns = h.admin(0x06, 1, 0, 0, 4096);
        assert_eq!(ns.sc(), 0);
        assert_eq!(pdu::le64(&ns.data, 0), (32 << 20) / 512, "NSZE: 32 MiB");
        let descs = h.admin(0x06, 1, 3, 0, 4096);
        (ns.data[104..128].to_vec(), descs.data[..64].to_vec())
    };
    let (idm, ids) = (identity(&mut am), identity(&mut as_));
    assert!(idm.0.iter().any(|b| *b != 0), "an NGUID / EUI-64");
    assert_eq!(idm, ids, "the nodes present different namespace identities");

    // Written through the slave, read back through the master (R2T path).
    let mut qs = Host::ic(port_of(&c.nodes[s].nvmf_portal), Digests::default());
    assert_eq!(
        qs.connect(1, cs, 0, &nqn).sc(),
        0,
        "I/O Connect on the slave"
    );
    let mut qm = Host::ic(port_of(&c.nodes[m].nvmf_portal), Digests::default());
    assert_eq!(
        qm.connect(1, cm, 0, &nqn).sc(),
        0,
        "I/O Connect on the master"
    );
    let data = pattern(11, 128 << 10);
    assert_eq!(
        qs.rw(0x01, 64, 256, &data, false).sc(),
        0,
        "write on the slave"
    );
    let r = qm.rw(0x02, 64, 256, &[], false);
    assert_eq!(r.sc(), 0, "read on the master");
    assert!(r.data == data, "the master reads what the slave wrote");

    // ANA: one group per node (its index + 1 = its id here); the master optimized,
    // the slave non-optimized.
    wait_ana(&mut am, &c.nodes[m].name, ANA_OPTIMIZED);
    wait_ana(&mut as_, &c.nodes[s].name, ANA_NON_OPTIMIZED);
    assert_eq!(ana(&mut am).0, c.nodes[m].id);
    assert_eq!(ana(&mut as_).0, c.nodes[s].id);

    // Discovery through the slave lists the subsystem at every node's listener.
    let mut d = Host::ic(port_of(&c.nodes[s].nvmf_portal), Digests::default());
    assert_eq!(d.connect(0, 0xffff, 0, DISCOVERY_NQN).sc(), 0);
    d.prop_set(0x14, 1);
    let len = 1024 * 8;
    let log = d.admin(0x02, 0, 0x70 | ((len / 4 - 1) << 16), 0, len as usize);
    let n = pdu::le64(&log.data, 8) as usize;
    let mut listed: Vec<String> = (1..=n.min(7))
        .map(|i| &log.data[1024 * i..1024 * (i + 1)])
        .filter(|e| e[256..256 + nqn.len()] == *nqn.as_bytes())
        .map(|e| {
            let t = |r: std::ops::Range<usize>| {
                String::from_utf8_lossy(&e[r])
                    .trim_matches(|c| c == ' ' || c == '\0')
                    .to_string()
            };
            format!("{}:{}", t(512..768), t(32..64))
        })
        .collect();
    listed.sort();
    let mut every: Vec<String> = c.nodes.iter().map(|n| n.nvmf_portal.clone()).collect();
    every.sort();
    assert_eq!(
        listed, every,
        "the discovery log lists every node's listener"
    );
    drop(d);

    // Host connected: the volume cannot be taken away, even with --force.
    let e = c.ctl_err(0, "vol rm dg1 vol1");
    assert!(e.contains("exported") && e.contains(&nqn), "{e}");
    let e = c.ctl_err(0, "dg destroy dg1 --force");
    assert!(
        e.contains("volume vol1 is in use")
            && e.contains(HOST)
            && e.contains(&nqn)
            && e.contains("nvme disconnect"),
        "{e}"
    );

    // The master's plexd dies: its lease runs out and its listener reports
    // inaccessible (its target is up, nobody tells it); the survivors elect a new
    // master, which turns optimized; I/O goes on through the slave.
    c.kill_coordinator(m);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != m).collect();
    let nm = c.wait_joined(&survivors);
    wait_ana(&mut am, &c.nodes[m].name, ANA_INACCESSIBLE);
    assert_eq!(
        qm.rw(0x02, 64, 256, &[], false).sc(),
        0x302,
        "the old master's path is fenced"
    );
    let want_s = if nm == s {
        ANA_OPTIMIZED
    } else {
        ANA_NON_OPTIMIZED
    };
    wait_ana(&mut as_, &c.nodes[s].name, want_s);
    let r = qs.rw(0x02, 64, 256, &[], false);
    assert!(
        r.sc() == 0 && r.data == data,
        "I/O through the slave goes on"
    );
    c.restart_coordinator(m, None);
    c.wait_joined(&[0, 1, 2]);
    wait_ana(&mut am, &c.nodes[m].name, ANA_NON_OPTIMIZED);

    // Unexport drops the subsystem (and its hosts) on every node; then vol rm works.
    c.ctl_ok(2, "unexport nvmf dg1 vol1");
    for i in 0..3 {
        wait_until(
            &format!("{nqn} gone from node {}", c.nodes[i].name),
            SERVE_TIMEOUT,
            || match c.kernel(i).nvmf_subsystems() {
                Ok((subs, _)) if subs.iter().all(|x| x.nqn != nqn) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
    assert!(
        qs.closed_by_target(),
        "the host's queue closed with its subsystem"
    );
    c.ctl_ok(0, "vol rm dg1 vol1");
    c.forget_volume("dg1", "vol1");
    c.check_invariants();
}
