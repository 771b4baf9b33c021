//! `plexctl export iscsi` / `unexport`: a volume served by the nodes' iSCSI targets,
//! checked with libiscsi's tools (package libiscsi-bin) against each node's portal.

use std::process::Command;
use std::time::Duration;

use plexd_target::frontend::scsi::alua::AluaState;
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
    let e = c.ctl_err(1, "export nvmf dg1 vol1");
    assert!(e.contains("node b") && e.contains("nvmf"), "{e}");
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
    assert_eq!(c.agreed_print(), before, "the export is kept on the disks");
    served_identity(&c.nodes[1].iscsi_portal, IQN);
    c.check_invariants();
}
