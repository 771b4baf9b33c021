//! Administration that cannot destroy data by accident and tells the truth (issue 14):
//! group commands against exported volumes and logged-in hosts, `disk init --force`
//! on a disk a group holds, `dg create` of an existing group, failed disk groups,
//! sizes, exit codes and what change commands print; typed errors (an exit status
//! per kind, `--json` errors).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use plexd_coordinator::ondisk;
use plexd_tests::cluster::{
    status_node, CTL_TIMEOUT, EXIT_NO_QUORUM, EXIT_REFUSED, EXIT_UNREACHABLE, EXIT_USAGE,
};
use plexd_tests::plex_disk::plexd_log;
use plexd_tests::proc::{run_bounded, run_bounded_to};
use plexd_tests::{group, volume, wait_until, Cluster, ClusterOpts};

const IQN: &str = "iqn.2026-11.io.plexd:test.dg1.vol1";
const SESSION_TIMEOUT: Duration = Duration::from_secs(20);
const TOOL_TIMEOUT: Duration = Duration::from_secs(20);

/// A host logged in to a target with I/O running (libiscsi's `iscsi-perf`), killed
/// with its process group when dropped (even when the test fails).
struct Host(Child);

impl Host {
    fn start(portal: &str, iqn: &str, log: &std::path::Path) -> Host {
        let out = std::fs::File::create(log).expect("iscsi-perf log");
        let err = out.try_clone().expect("iscsi-perf log");
        let child = Command::new("iscsi-perf")
            .arg(format!("iscsi://{portal}/{iqn}/0"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .expect("iscsi-perf (install libiscsi-bin: ci/setup)");
        Host(child)
    }

    fn running(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }

    fn stop(&mut self) {
        // SAFETY: kill(2) on the process group this test created (pgid = the child's
        // pid); it touches no memory.
        unsafe { libc::kill(-(self.0.id() as i32), libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The iSCSI sessions (not discovery ones) logged in to `iqn` on node `i`.
fn sessions(c: &Cluster, i: usize, iqn: &str) -> usize {
    c.kernel(i)
        .iscsi_sessions()
        .map(|s| s.iter().filter(|s| s.target == iqn).count())
        .unwrap_or(0)
}

/// Whether `iqn` is served on `portal` (iscsi-inq answers).
fn served(portal: &str, iqn: &str) -> bool {
    let url = format!("iscsi://{portal}/{iqn}/0");
    run_bounded(Command::new("iscsi-inq").arg(&url), TOOL_TIMEOUT)
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn group_commands_refuse_an_exported_volume_and_never_cut_a_logged_in_host() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let m = c.master();
    c.shared_mirror(m, "dg1", "vol1", "32M");
    // `--node b` (how the harness reaches node b) does not change what export does:
    // every node serves it.
    let done = c.ctl_ok(1, "export iscsi dg1 vol1");
    assert!(
        done.contains("exported over iscsi") && done.contains("every node"),
        "{done}"
    );
    let print = c.agreed_print();
    let vol = volume(&print, "dg1", "vol1").expect("vol1");
    assert_eq!(
        vol["exports"][0]["nodes"].as_array().map(Vec::len),
        Some(0),
        "{vol}"
    );

    let mut host = Host::start(&c.nodes[1].iscsi_portal, IQN, &c.dir.join("iscsi-perf.log"));
    wait_until(
        "the host to log in on node b",
        SESSION_TIMEOUT,
        || match sessions(&c, 1, IQN) {
            0 if !host.running() => panic!("iscsi-perf exited before logging in"),
            0 => Err("no session yet".to_string()),
            n => Ok(n),
        },
    );

    // Exported: refused, naming the group, the volume and what to do.
    for cmd in ["dg deport dg1", "dg destroy dg1"] {
        let e = c.ctl_err(0, cmd);
        assert!(
            e.contains("disk group dg1")
                && e.contains("volume vol1 is exported")
                && e.contains("plexctl unexport iscsi dg1 vol1")
                && e.contains("--force"),
            "{cmd}: {e}"
        );
    }
    // --force ends exports, but never while a host is logged in: node b refuses.
    for cmd in ["dg deport dg1 --force", "dg destroy dg1 --force"] {
        let e = c.ctl_err(2, cmd);
        assert!(
            e.contains("node b")
                && e.contains("disk group dg1")
                && e.contains("volume vol1 is in use")
                && e.contains("logout"),
            "{cmd}: {e}"
        );
    }
    // A shrink would cut the host's data short: node b refuses it without --force,
    // naming the host and what to do.
    let e = c.ctl_err(0, "vol shrink dg1 vol1 16M");
    assert!(
        e.contains("node b")
            && e.contains("volume vol1 is in use")
            && e.contains("a shrink loses what the host keeps past the new end")
            && e.contains("--force"),
        "vol shrink: {e}"
    );
    assert!(host.running(), "the host's I/O was cut");
    assert_eq!(
        c.agreed_print(),
        print,
        "a refused command changed the configuration"
    );
    assert!(sessions(&c, 1, IQN) > 0, "the host session ended");
    // Recording failed the disk of vol1's only ACTIVE plex would leave vol1 served
    // nowhere: node b refuses it under the host, --force or not.
    let (on_d1, _) = c.plex_on(0, "dg1", "vol1", "d1");
    c.ctl_ok(0, &format!("plex detach dg1 {on_d1}"));
    let e = c.ctl_err(0, "dg fail-disk dg1 d0 --force");
    assert!(
        e.contains("node b") && e.contains("volume vol1 is in use") && e.contains("logout"),
        "dg fail-disk: {e}"
    );
    assert!(host.running(), "the host's I/O was cut");
    // With --force it shrinks under the host.
    let done = c.ctl_ok(0, "vol shrink dg1 vol1 24M --force");
    assert!(done.contains("vol1"), "{done}");
    let print = c.agreed_print();
    assert_eq!(
        volume(&print, "dg1", "vol1").and_then(|v| v["size"].as_u64()),
        Some(24 << 20),
        "{print}"
    );

    // Once the host has logged out, --force ends the exports and destroys the group.
    host.stop();
    wait_until(
        "the session on node b to end",
        SESSION_TIMEOUT,
        || match sessions(&c, 1, IQN) {
            0 => Ok(()),
            n => Err(format!("{n} sessions")),
        },
    );
    let done = c.ctl_ok(0, "dg destroy dg1 --force");
    assert!(done.contains("disk group dg1 destroyed"), "{done}");
    c.forget_volume("dg1", "vol1");
    let print = c.agreed_print();
    assert!(group(&print, "dg1").is_none(), "{print}");
    for n in &c.nodes {
        wait_until("the export to be gone", SESSION_TIMEOUT, || {
            if served(&n.iscsi_portal, IQN) {
                Err(format!("still served on {}", n.iscsi_portal))
            } else {
                Ok(())
            }
        });
    }
    c.check_invariants();
}

#[test]
fn disk_init_force_never_wipes_a_disk_a_group_holds() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let m = c.master();
    c.shared_mirror(m, "dg1", "vol1", "16M");
    let d0 = c.disks[0].display().to_string();

    let e = c.ctl_err(2, &format!("disk init {d0} --name d0"));
    assert!(
        e.contains("disk group dg1") && e.contains("plexctl dg rm-disk dg1 d0"),
        "{e}"
    );
    assert!(
        !e.contains("--force") && !e.contains("or force"),
        "the hint must not lead to --force: {e}"
    );
    for name in ["d0", "other"] {
        let e = c.ctl_err(2, &format!("disk init {d0} --name {name} --force"));
        assert!(
            e.contains("node c")
                && e.contains("dg1")
                && e.contains("plexctl dg rm-disk dg1 d0")
                && e.contains("plexctl dg destroy dg1"),
            "{e}"
        );
    }
    let label = ondisk::read_label(&c.disks[0]).expect("label of d0");
    assert_eq!(label.disk_group.map(|g| g.name).as_deref(), Some("dg1"));

    // The disk is still the group's: a restarted node finds it and rejoins.
    c.kill_node(2);
    c.restart_node(2);
    c.check_invariants();
}

#[test]
fn dg_create_of_an_existing_group_says_so() {
    let c = Cluster::start(2, ClusterOpts::default());
    c.ctl_ok(0, "dg create dg1 d0 d1 --shared");
    for i in [0, 1] {
        for cmd in ["dg create dg1 d0 d1 --shared", "dg create dg1 d2"] {
            let e = c.ctl_err(i, cmd);
            assert!(e.contains("disk group dg1 already exists"), "{cmd}: {e}");
            assert!(!e.contains("disk init"), "{cmd}: a destructive hint: {e}");
        }
    }
    // A disk of the group given to another group: the group is named, not disk init.
    let e = c.ctl_err(1, "dg create dg2 d2 d0 --shared");
    assert!(
        e.contains("disk d0") && e.contains("is in disk group dg1"),
        "{e}"
    );
    assert!(!e.contains("disk init"), "{e}");
}

/// Overwrites the header block of both configuration slots of `disk`.
fn damage_slots(disk: &std::path::Path) {
    use std::os::unix::fs::FileExt;
    let label = ondisk::read_label(disk).expect("label");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .expect("open disk");
    for i in 0..2 {
        f.write_all_at(&[0xa5; 4096], label.slot_offset_bytes(i))
            .expect("damage slot");
    }
    f.sync_all().expect("sync");
}

#[test]
fn a_group_with_every_configuration_copy_damaged_is_failed_and_keeps_its_name_and_disks() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.ctl_ok(0, "dg create dg1 d0 d1 --shared");
    c.ctl_ok(0, "vol create dg1 vol1 16M --layout mirror");
    c.kill_all();
    damage_slots(&c.disks[0]);
    damage_slots(&c.disks[1]);
    c.restart_all();

    for i in 0..3 {
        let print = c.print(i);
        assert!(group(&print, "dg1").is_none(), "{print}");
        let failed = &print["failed_disk_groups"][0];
        assert_eq!(failed["name"], "dg1", "node {i}: {print}");
        assert_eq!(failed["state"], "failed", "{print}");
        assert!(
            failed["reason"]
                .as_str()
                .unwrap_or("")
                .contains("dg destroy dg1 --force"),
            "{print}"
        );
        let text = c.ctl_ok(i, "dg list");
        assert!(text.contains("dg1") && text.contains("FAILED"), "{text}");
        let text = c.ctl_ok(i, "print");
        assert!(text.contains("FAILED"), "{text}");
        let status = c.status(i);
        assert!(
            status["failed_disk_groups"][0]
                .as_str()
                .unwrap_or("")
                .starts_with("dg1: failed"),
            "{status}"
        );
    }
    let disks = c.ctl_json(1, "disk list");
    let d0 = disks["disks"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["name"] == "d0"))
        .expect("d0 listed")
        .clone();
    assert!(
        d0["state"].as_str().unwrap_or("").starts_with("failed"),
        "{d0}"
    );

    // Name and disks are kept until the operator gives the group up.
    let e = c.ctl_err(1, "dg create dg1 d2 --shared");
    assert!(e.contains("disk group dg1 exists and is failed"), "{e}");
    let e = c.ctl_err(1, "dg create dg2 d0 --shared");
    assert!(e.contains("disk d0") && e.contains("dg1"), "{e}");
    let d1 = c.disks[1].display().to_string();
    let e = c.ctl_err(2, &format!("disk init {d1} --name d1 --force"));
    assert!(e.contains("dg1"), "{e}");
    let e = c.ctl_err(2, "dg destroy dg1");
    assert!(e.contains("dg destroy dg1 --force"), "{e}");

    let done = c.ctl_ok(2, "dg destroy dg1 --force");
    assert!(done.contains("failed disk group dg1 destroyed"), "{done}");
    for i in 0..3 {
        let print = c.print(i);
        assert!(
            print.get("failed_disk_groups").is_none(),
            "node {i}: {print}"
        );
    }
    c.ctl_ok(0, "dg create dg1 d0 d1 --shared");
    c.check_invariants();
}

/// `vol set DG VOL read-policy=...` (vxvol rdpol): the policy reaches every node's
/// data plane and `print`; a plex the volume lacks, an unknown policy and an unknown
/// key are refused naming them; removing the preferred plex makes the volume round
/// robin again, everywhere.
#[test]
fn vol_set_read_policy_reaches_every_data_plane() {
    use plexd_target_api::volume::ReadPolicy as K;
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.wait_all_joined();
    c.ctl_ok(1, "dg create dg1 d0 d1 d2 --shared");
    c.ctl_ok(1, "vol create dg1 vol1 8M --layout mirror --mirrors 3");
    let on_every_node = |want: K| {
        for i in 0..3 {
            let (info, _) = c.kernel(i).get_volume("dg1.vol1").unwrap();
            assert_eq!(info.read_policy, want, "node {i}'s data plane");
        }
    };
    on_every_node(K::Round);
    let done = c.ctl_ok(2, "vol set dg1 vol1 read-policy=prefer:vol1-02");
    assert!(
        done.contains("volume vol1 of disk group dg1: read policy prefer:vol1-02"),
        "{done}"
    );
    on_every_node(K::Prefer("vol1-02".into()));
    assert_eq!(
        volume(&c.print(0), "dg1", "vol1").unwrap()["read_policy"],
        "prefer:vol1-02"
    );
    for (cmd, exit, want) in [
        (
            "vol set dg1 vol1 read-policy=prefer:vol1-09",
            EXIT_REFUSED,
            "plex vol1-09 does not exist in volume vol1",
        ),
        (
            "vol set dg1 vol1 read-policy=fastest",
            EXIT_REFUSED,
            "unknown read policy \"fastest\"",
        ),
        (
            "vol set dg1 vol9 read-policy=round",
            EXIT_REFUSED,
            "volume vol9 does not exist in disk group dg1",
        ),
        (
            "vol set dg1 vol1 policy=round",
            EXIT_USAGE,
            "vol set takes read-policy=",
        ),
    ] {
        let out = c.ctl(0, cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(exit), "{cmd}: {err}");
        assert!(err.contains(want), "{cmd}: {err}");
    }
    on_every_node(K::Prefer("vol1-02".into()));
    c.ctl_ok(0, "vol set dg1 vol1 read-policy=least-busy");
    on_every_node(K::LeastBusy);
    c.ctl_ok(0, "vol set dg1 vol1 read-policy=prefer:vol1-03");
    c.ctl_ok(0, "plex rm dg1 vol1-03 --force");
    on_every_node(K::Round);
    c.check_invariants();
}

/// `plexctl print | head` where the reader has gone before plexctl writes: the
/// command's answer is lost, which is no failure of plexctl's. It ends with its
/// usual status and no panic (`println!` panicked on the broken pipe).
#[test]
fn plexctl_writing_into_a_closed_pipe_ends_quietly() {
    let c = Cluster::start(1, ClusterOpts::default());
    c.ctl_ok(0, "dg create dg1 d0 d1 --shared");
    let plexctl = plexd_tests::bins::Bins::locate().unwrap().plexctl;
    for args in [
        &["print"][..],
        &["--json", "print"],
        &["vol", "create", "dg1", "v1", "1M"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader); // gone before plexctl writes
        let mut cmd = Command::new(&plexctl);
        cmd.args(["--node", &c.nodes[0].addr]).args(args);
        let out = run_bounded_to(&mut cmd, writer.into(), Duration::from_secs(30)).unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !err.contains("panicked"),
            "plexctl {args:?} into a closed pipe: {:?} {err}",
            out.status
        );
    }
    assert!(
        volume(&c.print(0), "dg1", "v1").is_some(),
        "the change stands"
    );
}

#[test]
fn sizes_exit_codes_and_what_changes_print() {
    let c = Cluster::start(1, ClusterOpts::default());
    c.ctl_ok(0, "dg create dg1 d0 d1 d2 --shared");
    // Usage errors exit 2 (bad size, zero counts, one-column stripes).
    for cmd in [
        "vol create dg1 v1 12Q",
        "vol create dg1 v1 0.3K",
        "vol create dg1 v1 1M --layout mirror --mirrors 0",
        "vol create dg1 v1 1M --layout stripe --stripe-unit 0",
        "vol create dg1 v1 1M --layout stripe --columns 1",
        // `--` so the size reaches plexctl's sign check (clap alone refuses `-1M`).
        "vol grow dg1 v1 -- -1M",
        "vol shrink dg1 v1 +1M",
    ] {
        let out = c.ctl(0, cmd);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // What was done, with the adjustment.
    let done = c.ctl_ok(0, "vol create dg1 v1 513 --layout mirror");
    assert!(
        done.contains("volume v1 created in disk group dg1: 1.0 KiB")
            && done.contains("513 bytes asked, rounded up")
            && done.contains("v1-01 ACTIVE concat on d")
            && done.contains("v1-02 ACTIVE concat on d"),
        "{done}"
    );
    let size = |c: &Cluster| volume(&c.print(0), "dg1", "v1").expect("v1")["size"].clone();
    let done = c.ctl_ok(0, "vol grow dg1 v1 +1M");
    assert!(done.contains("grown to"), "{done}");
    assert_eq!(size(&c), 1024 + (1 << 20));
    let done = c.ctl_ok(0, "vol shrink dg1 v1 -1M");
    assert!(done.contains("shrunk to 1.0 KiB"), "{done}");
    assert_eq!(size(&c), 1024);
    // The data plane logs a resize, not a creation, for a layout change.
    let log = std::fs::read_to_string(c.nodes[0].dir.join("plexd-target.log")).unwrap_or_default();
    let created = log.matches("bdev dg1.v1: created").count();
    assert_eq!(
        created, 1,
        "`created` logged {created} times for one volume"
    );
    // An ACTIVE mirror is removed only with --force.
    let e = c.ctl_err(0, "plex rm dg1 v1-02");
    assert!(e.contains("ACTIVE") && e.contains("--force"), "{e}");
    let done = c.ctl_ok(0, "plex rm dg1 v1-02 --force");
    assert!(done.contains("plex v1-02 removed"), "{done}");

    // A client timeout with a clear message: plexd stopped (SIGSTOP) answers nothing.
    let pid = c.plexd_pid(0).expect("plexd a runs") as i32;
    // SAFETY: kill(2) with SIGSTOP/SIGCONT on a process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let out = c.ctl(0, "--timeout 2 cluster status");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_UNREACHABLE), "{stderr}");
    assert!(
        stderr.contains("accepted the connection but has not answered for 2 s"),
        "{stderr}"
    );
}

/// How long a 2-node cluster that lost a node gets to refuse changes for want of
/// quorum: the master's lease (1.2 s in the test clusters) plus a takeover's wait,
/// generously.
const NO_QUORUM_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks a `--json` error's fields: its kind, exit status and node, and that the
/// message names the node.
fn assert_typed(err: &serde_json::Value, code: i32, kind: &str, node: &str) {
    assert_eq!(err["kind"], kind, "{err}");
    assert_eq!(err["exit"], code, "{err}");
    assert_eq!(err["node"], node, "{err}");
    let message = err["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("node {node}")),
        "the message names node {node}: {err}"
    );
}

#[test]
fn each_kind_of_failure_has_its_exit_status_and_json_error() {
    let mut c = Cluster::start(2, ClusterOpts::default());
    c.wait_all_joined();
    c.ctl_ok(0, "dg create dg1 d0 d1 --shared");
    c.ctl_ok(1, "vol create dg1 vol1 8M --layout mirror");

    // Refused, in use: both disks hold a plex of vol1. Exit 1 (as before), and the
    // JSON error says why as a kind; the master refused it.
    let master = c.status(0)["master"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let (code, e) = c.ctl_json_err(1, "dg rm-disk dg1 d0");
    assert_eq!(code, EXIT_REFUSED, "{e}");
    assert_typed(&e, EXIT_REFUSED, "inUse", &master);
    assert_eq!(e["object"], "disk d0 in disk group dg1", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("holds subdisks"),
        "{e}"
    );
    // The same refusal without --json: one line, exit 1.
    let line = c.ctl_err(0, "dg rm-disk dg1 d0");
    assert!(line.contains("holds subdisks"), "{line}");
    // Other refusals: not found, exists (still exit 1).
    let (code, e) = c.ctl_json_err(0, "vol rm dg1 nosuch");
    assert_eq!(
        (code, e["kind"].as_str()),
        (EXIT_REFUSED, Some("notFound")),
        "{e}"
    );
    assert_eq!(e["object"], "volume nosuch in disk group dg1", "{e}");
    let (code, e) = c.ctl_json_err(1, "dg create dg1 d2 --shared");
    assert_eq!(
        (code, e["kind"].as_str()),
        (EXIT_REFUSED, Some("exists")),
        "{e}"
    );
    assert_typed(&e, EXIT_REFUSED, "exists", "b");

    // Usage: exit 2, whether plexctl or its argument parser finds it.
    let (code, e) = c.ctl_json_err(0, "vol create dg1 v2 12Q");
    assert_eq!(
        (code, e["kind"].as_str()),
        (EXIT_USAGE, Some("usage")),
        "{e}"
    );
    let (code, e) = c.ctl_json_err(0, "vol create dg1 v2 1M --layout nosuch");
    assert_eq!(
        (code, e["kind"].as_str()),
        (EXIT_USAGE, Some("usage")),
        "{e}"
    );

    // Unreachable: a port nobody listens on (bound, then closed). Exit 3.
    let nobody = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = nobody.local_addr().expect("its address").to_string();
    drop(nobody);
    for args in [
        vec!["cluster", "status"],
        vec!["--json", "dg", "destroy", "dg1"],
    ] {
        let mut cmd = Command::new(&c.bins().plexctl);
        cmd.arg("--node")
            .arg(&addr)
            .args(&args)
            .env_remove("PLEXD_NODE");
        cmd.env_remove("PLEXD_CLUSTER");
        let out = run_bounded(&mut cmd, CTL_TIMEOUT).expect("plexctl runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(EXIT_UNREACHABLE),
            "{args:?}: {stderr}"
        );
        assert!(stderr.contains(&addr), "{args:?}: {stderr}");
        if args[0] == "--json" {
            let v: serde_json::Value = serde_json::from_str(stderr.trim()).expect("JSON");
            assert_eq!(v["error"]["kind"], "unreachable", "{v}");
            assert_eq!(v["error"]["node"], addr.as_str(), "{v}");
        }
    }
    assert!(
        group(&c.print(0), "dg1").is_some(),
        "dg1 is still there after the refused and unreachable commands"
    );

    // No quorum: a 2-node cluster that lost a node has no majority. Node a refuses
    // changes with exit 4 (first perhaps as a master that waits and gives up, or a
    // slave whose master is gone: no master, also 4; then for want of quorum).
    c.kill_node(1);
    let e = wait_until(
        "node a to refuse a change for want of quorum",
        NO_QUORUM_TIMEOUT,
        || {
            let (code, e) = c.ctl_json_err(0, "vol create dg1 v3 1M");
            if code != EXIT_NO_QUORUM {
                panic!("exit {code} while the cluster lost its majority: {e}");
            }
            match e["kind"].as_str() {
                Some("noQuorum") => Ok(e),
                Some("notMaster") | Some("busy") => Err(format!("not yet: {e}")),
                _ => panic!("exit 4 with kind {e}"),
            }
        },
    );
    assert_typed(&e, EXIT_NO_QUORUM, "noQuorum", "a");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no quorum"),
        "{e}"
    );
    let line = c.ctl_fails(0, "vol create dg1 v3 1M", &[EXIT_NO_QUORUM]);
    assert!(line.contains("no quorum"), "{line}");
}

/// Node `i`'s status line for node `name` in `plexctl --json cluster status`.
fn node_status(c: &Cluster, i: usize, name: &str) -> serde_json::Value {
    let s = c.status(i);
    status_node(&s, name)
        .cloned()
        .unwrap_or_else(|| panic!("no node {name} in {s}"))
}

#[test]
fn a_node_with_another_cluster_file_is_refused_and_bad_files_do_not_start() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let text = std::fs::read_to_string(&c.cluster_file).expect("cluster file");
    let cluster_id = format!("id = \"test-{}\"", std::process::id());
    assert!(text.contains(&cluster_id), "{text}");
    let variants = [
        (
            "other-id.toml",
            text.replace(&cluster_id, "id = \"another-cluster\""),
            "cluster id",
        ),
        (
            "other-nodes.toml",
            text.replace("name = \"b\"", "name = \"bb\""),
            "node lists differ",
        ),
    ];
    for (file, content, why) in variants {
        let path = c.dir.join(file);
        std::fs::write(&path, content).expect("write cluster file");
        c.kill_coordinator(2);
        c.set_cluster_file(2, Some(path));
        c.set_outside(2, true);
        c.start_coordinator(2);
        for (i, other) in [(0, "c"), (2, "a")] {
            wait_until(
                &format!("node {} to refuse node {other}", c.nodes[i].name),
                Duration::from_secs(20),
                || {
                    let n = node_status(&c, i, other);
                    let reason = n["reason"].as_str().unwrap_or("");
                    if n["state"] == "down" && reason.contains("refused") && reason.contains(why) {
                        Ok(())
                    } else {
                        Err(format!("{n}"))
                    }
                },
            );
        }
        c.wait_joined(&[0, 1]);
        let log = plexd_log(&c, 0);
        assert!(
            log.lines()
                .any(|l| l.contains("node a (id 1)") && l.contains("node 3") && l.contains(why)),
            "node a's log names neither both nodes nor the difference"
        );
    }
    // With the cluster's file again, node c joins.
    c.kill_coordinator(2);
    c.set_cluster_file(2, None);
    c.set_outside(2, false);
    c.start_coordinator(2);
    c.wait_all_joined();
    let n = node_status(&c, 0, "c");
    assert_eq!(n["reason"], "", "{n}");

    // Files that cannot work are refused at start, naming what is wrong.
    let bad = [
        (
            "dup-socket.toml",
            text.replace(
                &format!("{:?}", c.nodes[1].target_socket.display().to_string()),
                &format!("{:?}", c.nodes[0].target_socket.display().to_string()),
            ),
            "target_socket",
        ),
        (
            "no-disks.toml",
            text.lines()
                .filter(|l| !l.starts_with("disk_paths"))
                .collect::<Vec<_>>()
                .join("\n"),
            "disk_paths",
        ),
    ];
    for (file, content, what) in bad {
        let path = c.dir.join(file);
        std::fs::write(&path, content).expect("write cluster file");
        let out = run_bounded(
            Command::new(&c.bins().plexd)
                .arg("--cluster")
                .arg(&path)
                .arg("--node")
                .arg("a")
                .stdin(Stdio::null()),
            Duration::from_secs(20),
        )
        .expect("plexd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "plexd started with {file}");
        assert!(stderr.contains(what), "{file}: {stderr}");
    }
    c.check_invariants();
}

#[test]
fn a_repaired_copy_is_logged_and_counted() {
    let mut c = Cluster::start(2, ClusterOpts::default());
    let m = c.master();
    c.ctl_ok(m, "dg create dg1 d0 d1 --shared");
    let before = c.ctl_json(m, "disk list");
    assert!(
        before["disks"]
            .as_array()
            .expect("disks")
            .iter()
            .all(|d| d["repairs"] == 0),
        "{before}"
    );
    // Damage the backup label copy of d0: the next configuration write repairs it.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&c.disks[0])
            .expect("open d0");
        f.write_all_at(&[0x5a; 16], 4096 + 8)
            .expect("damage the backup label");
        f.sync_all().expect("sync");
    }
    c.ctl_ok(0, "vol create dg1 vol1 8M");
    let after = c.ctl_json(m, "disk list");
    let d0 = after["disks"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["name"] == "d0"))
        .expect("d0")
        .clone();
    assert_eq!(d0["repairs"], 1, "{after}");
    let log = plexd_log(&c, m);
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("node {}", c.nodes[m].name))
                && l.contains("disk d0")
                && l.contains("repaired a damaged label copy")),
        "no repair line in the master's log"
    );
    let text = c.ctl_ok(m, "disk list");
    assert!(text.contains("REPAIRS"), "{text}");
    c.check_invariants();
}

#[test]
fn each_node_finds_a_disk_by_its_id_under_its_own_path() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    // On node c, d0 and d1 are not where node a sees them (their paths there are
    // hidden: empty files) but under other names (hard links, as /dev/sdc may be
    // /dev/sdb elsewhere).
    let alt = c.dir.join("alt");
    std::fs::create_dir_all(&alt).expect("alt dir");
    for (disk, name) in [(0, "sdq.img"), (1, "sdr.img")] {
        std::fs::hard_link(&c.disks[disk], alt.join(name)).expect("hard link");
    }
    let text = std::fs::read_to_string(&c.cluster_file).expect("cluster file");
    let disks_line = text
        .lines()
        .find(|l| l.starts_with("disk_paths"))
        .expect("disk_paths line")
        .to_string();
    let own = text.replace(
        &disks_line,
        &format!(
            "disk_paths = [{:?}, {:?}]",
            alt.join("*.img").display().to_string(),
            c.dir.join("disks").join("*.img").display().to_string()
        ),
    );
    let own_file = c.dir.join("cluster-c.toml");
    std::fs::write(&own_file, own).expect("cluster file of c");
    c.kill_node(2);
    c.set_hidden_disks(2, &[0, 1]);
    c.set_cluster_file(2, Some(own_file));
    c.restart_node(2);

    // Node a records its paths; node c must find the disks by id.
    c.ctl_ok(0, "dg create dg1 d0 d1 --shared");
    c.ctl_ok(2, "vol create dg1 vol1 16M --layout mirror");
    c.write_pattern(0, "dg1", "vol1", 0, 1 << 20);
    c.write_pattern(2, "dg1", "vol1", 4 << 20, 1 << 20);
    let disks = c.ctl_json(2, "disk list");
    let listed: Vec<String> = disks["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .filter(|d| d["dg"] == "dg1")
        .filter_map(|d| d["path"].as_str().map(str::to_string))
        .collect();
    assert!(
        listed.iter().any(|p| p.ends_with("alt/sdq.img")),
        "node c lists dg1's disks at {listed:?}"
    );
    // Every member's data plane serves the volume and reads both patterns back.
    c.check_invariants();
}

/// Where `disk list` on node `i` says disk `name` is.
fn listed_path(c: &Cluster, i: usize, name: &str) -> String {
    let disks = c.ctl_json(i, "disk list");
    disks["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .find(|d| d["name"] == name)
        .and_then(|d| d["path"].as_str())
        .unwrap_or_else(|| panic!("node {i}: {name} is not listed: {disks}"))
        .to_string()
}

/// No node logged a copy of a group's configuration not written to a disk (a
/// disk write to a path that no longer holds the disk fails that copy: the
/// transaction still commits on the others, so only the log shows it).
fn every_copy_written(c: &Cluster) {
    for (i, node) in c.nodes.iter().enumerate() {
        let log = plexd_log(c, i);
        if let Some(line) = log.lines().find(|l| l.contains(" not written to ")) {
            panic!("node {}: {line}", node.name);
        }
    }
}

#[test]
fn disks_renamed_and_swapped_under_a_running_cluster_are_found_by_their_labels() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let m = c.master();
    let s = (m + 1) % 3;
    c.shared_mirror(m, "dg1", "vol1", "16M");
    let dir = c.dir.join("disks");
    let (d0, d1) = (c.disks[0].clone(), c.disks[1].clone());
    let rename = |from: &std::path::Path, to: &std::path::Path| {
        std::fs::rename(from, to)
            .unwrap_or_else(|e| panic!("rename {} {}: {e}", from.display(), to.display()))
    };
    // A device renamed under the running cluster (a hot-plug, a rescan): d0 goes
    // on under another name that disk_paths still matches. Every node writes or
    // serves through its own finder; changes through the master and a slave write
    // both disks.
    let sdx = dir.join("sdx.img");
    rename(&d0, &sdx);
    c.ctl_ok(m, "vol grow dg1 vol1 +4M");
    c.ctl_ok(s, "vol grow dg1 vol1 +4M");
    every_copy_written(&c);
    for i in 0..3 {
        assert!(listed_path(&c, i, "d0").ends_with("sdx.img"));
    }
    // The two names swapped: each path now holds the other disk. A new volume's
    // plexes must land on the disks by their labels, not on the paths' old owners.
    let tmp = dir.join("swap.tmp"); // not matched by disk_paths while it is a .tmp
    rename(&sdx, &tmp);
    rename(&d1, &sdx);
    rename(&tmp, &d1);
    c.ctl_ok(s, "vol create dg1 vol2 16M --layout mirror --mirrors 2");
    c.write_pattern(m, "dg1", "vol2", 0, 1 << 20);
    c.write_pattern(s, "dg1", "vol2", 4 << 20, 1 << 20);
    c.ctl_ok(m, "vol grow dg1 vol1 +4M");
    every_copy_written(&c);
    for i in 0..3 {
        assert!(listed_path(&c, i, "d0").ends_with("d1.img"));
        assert!(listed_path(&c, i, "d1").ends_with("sdx.img"));
    }
    // Back under their first names (the invariants read the disks there), then a
    // change, and every member serves both volumes with their data.
    rename(&d1, &tmp);
    rename(&sdx, &d1);
    rename(&tmp, &d0);
    c.ctl_ok(s, "vol grow dg1 vol2 +4M");
    every_copy_written(&c);
    c.check_invariants();
}

/// The disk extents of every plex of `dg.vol`, from a `--json print`.
fn extents(print: &serde_json::Value, dg: &str, vol: &str) -> Vec<(String, u64, u64)> {
    let v = volume(print, dg, vol).unwrap_or_else(|| panic!("no volume {dg}/{vol}: {print}"));
    let mut out = Vec::new();
    for p in v["plexes"].as_array().expect("plexes") {
        for sd in p["subdisks"].as_array().expect("subdisks") {
            out.push((
                sd["disk"].as_str().expect("disk").to_string(),
                sd["disk_offset"].as_u64().expect("disk_offset"),
                sd["len"].as_u64().expect("len"),
            ));
        }
    }
    out
}

/// `dg.vol` reads as zeroes at `offset..offset + len` through the data plane of
/// each node of `nodes`.
fn reads_zeroes(c: &Cluster, nodes: &[usize], dg: &str, vol: &str, offset: u64, len: u64) {
    for &i in nodes {
        c.wait_served(i, dg, vol);
        let bdev = format!("{dg}.{vol}");
        plexd_tests::data::verify_zeroes(&c.kernel(i), &bdev, offset, len, SESSION_TIMEOUT)
            .unwrap_or_else(|e| panic!("node {i}: {e}"));
    }
}

/// A volume's new space reads as zeroes, through every node and on every plex: a
/// volume created over a removed one's extents, and a grow over what a shrink cut
/// (docs/OPERATIONS.md, "New space reads as zeroes"). So no host reads another
/// volume's old data, and the plexes of a mirror agree from the start. A shared
/// group (the master zeroes) and a private one (its owner does).
#[test]
fn new_space_reads_as_zeroes_through_every_node_and_on_every_plex() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.ctl_ok(0, "dg create dg1 d0 d1 --shared");
    c.ctl_ok(1, "dg create dg2 d2 d3");
    // Per group: the nodes that read it, the node that creates the new volume and
    // the one that shrinks and grows it (a private group's changes go to its owner).
    for (dg, readers, create, resize) in
        [("dg1", &[0usize, 1, 2][..], 2, 0), ("dg2", &[1][..], 1, 1)]
    {
        c.ctl_ok(1, &format!("vol create {dg} old 8M --layout mirror"));
        c.write_pattern(1, dg, "old", 0, 8 << 20);
        let old = extents(&c.print(1), dg, "old");
        c.ctl_ok(1, &format!("vol rm {dg} old"));
        c.forget_volume(dg, "old");
        c.ctl_ok(create, &format!("vol create {dg} new 8M --layout mirror"));
        let print = c.print(1);
        let new = extents(&print, dg, "new");
        assert!(
            new.iter().all(|(d, o, l)| old
                .iter()
                .any(|(od, oo, ol)| od == d && oo < &(o + l) && o < &(oo + ol))),
            "the new volume lies over the old one's extents: old {old:?}, new {new:?}"
        );
        reads_zeroes(&c, readers, dg, "new", 0, 8 << 20);
        for plex in ["new-01", "new-02"] {
            let image = plexd_tests::plex_disk::plex_image(&print, dg, "new", plex).unwrap();
            assert!(
                image.iter().all(|&b| b == 0),
                "{dg}: plex {plex} is not zeroes"
            );
        }
        // A grow over the space a shrink cut.
        c.write_pattern(1, dg, "new", 0, 8 << 20);
        c.ctl_ok(resize, &format!("vol shrink {dg} new 4M"));
        c.forget_volume(dg, "new");
        c.ctl_ok(resize, &format!("vol grow {dg} new 8M"));
        reads_zeroes(&c, readers, dg, "new", 4 << 20, 4 << 20);
        let print = c.print(1);
        let images: Vec<Vec<u8>> = ["new-01", "new-02"]
            .iter()
            .map(|p| plexd_tests::plex_disk::plex_image(&print, dg, "new", p).unwrap())
            .collect();
        assert!(
            images[0] == images[1],
            "{dg}: the plexes differ after the grow"
        );
        assert!(
            images[0][4 << 20..].iter().all(|&b| b == 0),
            "{dg}: the grown space is not zeroes"
        );
        // The master zeroes a shared group's space, the owner (b) a private one's.
        let zeroing = if dg == "dg1" { c.master() } else { 1 };
        let log = plexd_log(&c, zeroing);
        assert!(
            log.contains(&format!(
                "disk group {dg}: zeroed 8.0 MiB of new space of volume new"
            )),
            "the zeroing node logs it:\n{log}"
        );
    }
    c.check_invariants();
}

/// The size of `dg/vol` in node `i`'s `print --json`.
fn volume_size(c: &Cluster, i: usize, dg: &str, vol: &str) -> u64 {
    let print = c.ctl_json(i, "print");
    volume(&print, dg, vol)
        .and_then(|v| v["size"].as_u64())
        .unwrap_or_else(|| panic!("node {i}: no size for {dg}/{vol}: {print}"))
}

/// A node address where something accepts a connection and closes it at once (a
/// plexd that dies as it starts, a proxy with nothing behind it): plexctl through the
/// cluster file says so, naming the address, and asks the next node; a change is
/// made once. With only that node (`--node`) it fails with the reason, exit 3.
#[test]
fn plexctl_moves_on_from_a_node_that_closes_the_connection_at_once() {
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.wait_all_joined();
    c.ctl_ok(1, "dg create dg1 d0 d1 --shared");
    c.ctl_ok(1, "vol create dg1 vol1 8M --layout mirror");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let closer = listener.local_addr().unwrap().to_string();
    let (stop, accepted) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicUsize::new(0)),
    );
    let door = {
        let (stop, accepted) = (Arc::clone(&stop), Arc::clone(&accepted));
        std::thread::spawn(move || {
            // Bounded: ends when told, or after a minute.
            let end = std::time::Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && std::time::Instant::now() < end {
                match listener.accept() {
                    Ok((conn, _)) => {
                        accepted.fetch_add(1, Ordering::Relaxed);
                        drop(conn);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        })
    };
    // The cluster file with node a's address taken by the closer: a comes first.
    let text = std::fs::read_to_string(&c.cluster_file).unwrap();
    let a = format!("address = {:?}", c.nodes[0].addr);
    assert!(text.contains(&a), "{text}");
    let file = c.dir.join("closer.toml");
    std::fs::write(&file, text.replace(&a, &format!("address = {closer:?}"))).unwrap();
    let b = &c.nodes[1].addr;

    let out = c.ctl_cluster_file(&file, &["cluster", "status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status through the file: {err}");
    assert!(
        err.contains(&closer) && err.contains(&format!("trying {b}")),
        "no notice naming {closer} and moving on to {b}: {err}"
    );
    let out = c.ctl_cluster_file(&file, &["vol", "grow", "dg1", "vol1", "+4M"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "grow through the file: {err}");
    assert!(err.contains(&closer), "{err}");
    for i in 0..3 {
        assert_eq!(
            volume_size(&c, i, "dg1", "vol1"),
            12 << 20,
            "node {i}: grown once"
        );
    }
    // Nothing to move on to: a read fails at once with the reason.
    let out = c.ctl_cluster_file(&file, &["--node", "a", "cluster", "status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains(&closer), "the error names the address: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    stop.store(true, Ordering::Relaxed);
    door.join().unwrap();
    assert!(
        accepted.load(Ordering::Relaxed) >= 3,
        "plexctl did not try the closer each time"
    );
}

/// A node frozen (SIGSTOP) still accepts TCP connections (its kernel does), so
/// plexctl must not wait on it for its whole `--timeout`. Through the cluster file it
/// moves on to the next node after 3 s without an answer to its bootstrap, having
/// asked the frozen one nothing: a change is made once, even after the frozen node
/// runs again. With `--node` it says the node does not answer, then gives up at
/// `--timeout` (exit 3 for a read).
#[test]
fn plexctl_moves_on_from_a_frozen_node_and_a_change_is_made_once() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.wait_all_joined();
    c.ctl_ok(1, "dg create dg1 d0 d1 --shared");
    c.ctl_ok(1, "vol create dg1 vol1 8M --layout mirror");
    // Node a is the first of the cluster file.
    let (a, b) = (c.nodes[0].addr.clone(), c.nodes[1].addr.clone());
    c.freeze(0);
    wait_until(
        "b and c to go on without a",
        Duration::from_secs(30),
        || {
            let st = c.try_ctl_json(1, "cluster status")?;
            let master = st["master"].as_str().unwrap_or_default();
            if master.is_empty() || master == c.nodes[0].name {
                return Err(format!("master {master:?}"));
            }
            Ok(())
        },
    );
    let silent = format!("{a} accepted the connection but has not answered for 3 s");
    let moved = format!("{silent} (frozen or hung? see its log); trying {b}");
    let out = c.ctl_any(&["cluster", "status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "status through the cluster file: {err}"
    );
    assert!(err.contains(&moved), "no notice of moving on from a: {err}");
    let out = c.ctl_any(&["vol", "grow", "dg1", "vol1", "+4M"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "grow through the cluster file: {err}");
    assert!(err.contains(&moved), "no notice of moving on from a: {err}");
    // --json keeps stderr for its one error line: no notice there.
    let out = c.ctl_any(&["--json", "cluster", "status"]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // With --node a, nothing to move on to: it says so, waits, and gives up.
    let out = c.ctl_args(0, &["--timeout", "4", "cluster", "status"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains(&format!(
            "{silent} (frozen or hung? see its log); waiting for it up to 4 s"
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{a} accepted the connection but has not answered for 4 s"
        )),
        "{err}"
    );
    c.thaw(0);
    c.wait_all_joined();
    // a was asked nothing while frozen: vol1 grew once, on every node.
    for i in 0..3 {
        assert_eq!(volume_size(&c, i, "dg1", "vol1"), 12 << 20, "node {i}");
    }
}
