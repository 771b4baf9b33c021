//! corosync as the cluster monitor (`monitor = "corosync"`), with real corosync
//! processes: three nodes, each in its own network namespace, with a corosync in
//! that namespace and in a mount namespace of its own (`ip netns exec` makes one)
//! with a per-node directory bind-mounted over `/run` and `/var/lib/corosync`
//! (corosync locks the hard-coded `/run/corosync.pid`). plexd reaches its node's
//! corosync through libqb's abstract sockets, which are per network namespace.
//!
//! Needs root, iproute2, nftables, corosync, and plexd built with the corosync
//! feature (`--features plexd-tests/corosync`, which ci/test passes): skipped with a
//! message otherwise.

#[cfg(feature = "corosync")]
use std::path::{Path, PathBuf};
#[cfg(feature = "corosync")]
use std::time::Duration;

#[cfg(feature = "corosync")]
use plexd_tests::{
    members,
    netns::{self, Netns},
    proc::{Proc, Spec},
    wait_until, Cluster, ClusterOpts,
};

/// How long corosync may take to report a change (token 1000 ms, consensus 1200 ms,
/// the join: measured 1–3 s; generous).
#[cfg(feature = "corosync")]
const COROSYNC_REPORTS: Duration = Duration::from_secs(20);

/// Why this machine cannot run these tests, if it cannot.
fn unavailable() -> Option<String> {
    if !cfg!(feature = "corosync") {
        return Some(
            "plexd-tests built without its corosync feature (ci/test: --features plexd-tests/corosync)".into(),
        );
    }
    #[cfg(feature = "corosync")]
    {
        if let Some(e) = netns::unavailable() {
            return Some(e);
        }
        if netns::find_program("corosync").is_none() {
            return Some("`corosync` not found: install corosync (ci/setup installs it)".into());
        }
    }
    None
}

#[cfg(feature = "corosync")]
/// The corosync.conf of a cluster whose node `i` (id `i + 1`) has address `addrs[i]`.
fn corosync_conf(addrs: &[String], dir: &Path) -> String {
    let mut nodes = String::new();
    for (i, a) in addrs.iter().enumerate() {
        nodes.push_str(&format!(
            "    node {{\n        nodeid: {}\n        name: n{}\n        ring0_addr: {a}\n    }}\n",
            i + 1,
            i + 1
        ));
    }
    format!(
        "totem {{\n    version: 2\n    cluster_name: plexdtest\n    transport: knet\n    token: 1000\n    token_coefficient: 0\n    crypto_cipher: none\n    crypto_hash: none\n}}\n\
         nodelist {{\n{nodes}}}\n\
         quorum {{\n    provider: corosync_votequorum\n}}\n\
         logging {{\n    to_stderr: yes\n    to_syslog: no\n    to_logfile: no\n    timestamp: on\n}}\n\
         # {}\n",
        dir.display()
    )
}

/// The corosync instances of one test: killed (SIGKILL, by process group) and their
/// `/dev/shm/qb-*` files removed on drop, also when the test panics. Declared after
/// the [`Cluster`], so it is dropped first: the namespaces go after the processes.
#[cfg(feature = "corosync")]
struct Corosyncs {
    procs: Vec<Option<Proc>>,
    /// Process ids of every corosync started (their libqb files carry them).
    pids: Vec<u32>,
    specs: Vec<Spec>,
}

#[cfg(feature = "corosync")]
impl Corosyncs {
    fn new(c: &Cluster, ns: &Netns) -> Corosyncs {
        let n = c.nodes.len();
        let addrs: Vec<String> = (0..n).map(|i| ns.addr(i)).collect();
        let corosync = netns::find_program("corosync").expect("corosync");
        let mut specs = Vec::new();
        for (i, node) in c.nodes.iter().enumerate() {
            let dir = node.dir.join("corosync");
            for sub in ["run", "lib"] {
                std::fs::create_dir_all(dir.join(sub)).expect("corosync dirs");
            }
            let conf = dir.join("corosync.conf");
            std::fs::write(&conf, corosync_conf(&addrs, &dir)).expect("corosync.conf");
            let script = format!(
                "mount --bind {run} /run && mount --bind {lib} /var/lib/corosync && exec {exe} -f -c {conf}",
                run = dir.join("run").display(),
                lib = dir.join("lib").display(),
                exe = corosync.display(),
                conf = conf.display(),
            );
            specs.push(Spec {
                name: format!("corosync {}", node.name),
                exe: ns.ip_program().to_path_buf(),
                args: vec![
                    "netns".into(),
                    "exec".into(),
                    ns.ns(i).to_string(),
                    "sh".into(),
                    "-c".into(),
                    script,
                ],
                env: Vec::new(),
                cwd: dir.clone(),
                log: node.dir.join("corosync.log"),
                hide: Vec::new(),
                hide_with: PathBuf::new(),
            });
        }
        Corosyncs {
            procs: (0..n).map(|_| None).collect(),
            pids: Vec::new(),
            specs,
        }
    }

    fn start(&mut self, i: usize) {
        let p = Proc::spawn(&self.specs[i]).unwrap_or_else(|e| panic!("{e}"));
        if let Some(pid) = p.pid() {
            self.pids.push(pid);
        }
        self.procs[i] = Some(p);
    }

    /// `kill -9` of node `i`'s corosync.
    fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            p.kill();
        }
    }
}

#[cfg(feature = "corosync")]
impl Drop for Corosyncs {
    fn drop(&mut self) {
        for p in self.procs.iter_mut() {
            if let Some(mut p) = p.take() {
                p.kill();
            }
        }
        // libqb names its shared memory after the processes it connects
        // (`qb-<client pid>-<server pid>-...` per connection,
        // `qb-corosync-<pid>-blackbox-*`): remove those of the corosyncs this
        // test started.
        let Ok(dir) = std::fs::read_dir("/dev/shm") else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let ours = self.pids.iter().any(|pid| {
                name.starts_with(&format!("qb-{pid}-")) || name.contains(&format!("-{pid}-"))
            });
            if name.starts_with("qb-") && ours {
                // A connection's ring buffers are a directory; the blackbox, files.
                let _ =
                    std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
    }
}

/// Whether node `i`'s data plane holds a valid lease.
#[cfg(feature = "corosync")]
fn serving(c: &Cluster, i: usize) -> bool {
    use plexd_target_api::info::LeaseState;
    c.kernel(i)
        .lease_status()
        .is_ok_and(|s| s.state == LeaseState::Valid)
}

/// A 3-node cluster with `monitor = "corosync"` in network namespaces, its
/// corosyncs not started, nothing started.
#[cfg(feature = "corosync")]
fn corosync_cluster() -> (Cluster, Corosyncs) {
    let opts = ClusterOpts {
        netns: true,
        ..ClusterOpts::default()
    };
    let c = Cluster::create(3, opts).unwrap_or_else(|e| panic!("cluster setup: {e}"));
    let text = std::fs::read_to_string(&c.cluster_file).expect("cluster file");
    std::fs::write(
        &c.cluster_file,
        text.replace("monitor = \"builtin\"", "monitor = \"corosync\""),
    )
    .expect("cluster file");
    let cs = Corosyncs::new(&c, c.net());
    (c, cs)
}

/// Waits until node `i` says it has no quorum from corosync and its data plane
/// serves no more.
#[cfg(feature = "corosync")]
fn wait_fenced_by_corosync(c: &Cluster, i: usize) {
    let name = c.nodes[i].name.clone();
    wait_until(
        &format!("{name} to lose quorum and stop serving"),
        COROSYNC_REPORTS,
        || {
            let s = c.status(i);
            let reason = s["nodes"][i]["reason"].as_str().unwrap_or("").to_string();
            if reason.contains(&format!("node {name}: no quorum: corosync")) && !serving(c, i) {
                Ok(())
            } else {
                Err(format!("serving {}, status {s}", serving(c, i)))
            }
        },
    );
}

#[test]
fn corosync_monitor_formation_node_kill_and_corosync_kill() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
    } else {
        #[cfg(feature = "corosync")]
        run_corosync_scenario();
    }
}

#[cfg(feature = "corosync")]
fn run_corosync_scenario() {
    let (mut c, mut cs) = corosync_cluster();
    // plexd first: it waits for its corosync, without quorum, saying why.
    c.start_target(0);
    c.start_coordinator(0);
    wait_until(
        "a to say corosync is not reachable",
        COROSYNC_REPORTS,
        || {
            let s = c.status(0);
            let reason = s["nodes"][0]["reason"].as_str().unwrap_or("").to_string();
            if reason.contains("no quorum: corosync") {
                Ok(())
            } else {
                Err(format!("status: {s}"))
            }
        },
    );
    assert!(c.status(0)["master"].as_str().unwrap_or("").is_empty());
    for i in 0..3 {
        cs.start(i);
    }
    for i in 1..3 {
        c.start_target(i);
        c.start_coordinator(i);
    }
    let m = c.wait_joined(&[0, 1, 2]);
    c.init_disks();
    eprintln!("formed with corosync: master {}", c.nodes[m].name);
    c.shared_mirror(m, "dg1", "vol1", "32M");

    // kill -9 of c's plexd: the others go on without it, and a change commits.
    c.kill_coordinator(2);
    c.wait_joined(&[0, 1]);
    c.ctl_retry_ok(
        0,
        "vol create dg1 vol2 16M --layout concat",
        COROSYNC_REPORTS,
    );
    c.restart_coordinator(2, None);
    c.wait_joined(&[0, 1, 2]);

    // kill -9 of c's corosync: c loses quorum, its data plane stops serving and
    // changes on it are refused; a and b go on.
    assert!(serving(&c, 2), "c serves before its corosync dies");
    cs.kill(2);
    wait_fenced_by_corosync(&c, 2);
    c.wait_joined(&[0, 1]);
    let e = c.ctl_fails(2, "vol create dg1 vol3 16M --layout concat", &[4]);
    assert!(e.contains("node c: no quorum: corosync"), "{e}");
    c.ctl_retry_ok(
        0,
        "vol create dg1 vol4 16M --layout concat",
        COROSYNC_REPORTS,
    );
    let s = c.status(0);
    assert_eq!(
        members(&s),
        ["a", "b"].iter().map(|s| s.to_string()).collect()
    );
    // corosync back on c: it joins again.
    cs.start(2);
    c.wait_joined(&[0, 1, 2]);
    c.check_invariants();
    drop(cs);
}

#[test]
fn corosync_partition_of_one_against_two() {
    if let Some(why) = unavailable() {
        eprintln!("skipped: {why}");
    } else {
        #[cfg(feature = "corosync")]
        run_partition_scenario();
    }
}

/// {m} | {the other two}, m the master (whichever node formed: under corosync the
/// first node with a quorate view forms, not always a): m is not quorate for
/// corosync: it abdicates, its data plane stops serving, it refuses changes; one of
/// the others takes over and they commit; healed, one cluster again with one
/// configuration.
#[cfg(feature = "corosync")]
fn run_partition_scenario() {
    let (mut c, mut cs) = corosync_cluster();
    for i in 0..3 {
        cs.start(i);
        c.start_target(i);
        c.start_coordinator(i);
    }
    let m = c.wait_joined(&[0, 1, 2]);
    let rest: Vec<usize> = (0..3).filter(|&i| i != m).collect();
    c.init_disks();
    c.shared_mirror(m, "dg1", "vol1", "32M");
    assert!(serving(&c, m), "the master serves before the partition");
    c.net().split(&[m]);
    wait_fenced_by_corosync(&c, m);
    let m2 = c.wait_joined(&rest);
    assert!(rest.contains(&m2), "one of the majority took over");
    let e = c.ctl_fails(m, "vol create dg1 vol2 16M --layout concat", &[4]);
    let name = &c.nodes[m].name;
    assert!(e.contains(&format!("node {name}: no quorum")), "{e}");
    c.ctl_retry_ok(
        m2,
        "vol create dg1 vol3 16M --layout concat",
        COROSYNC_REPORTS,
    );
    c.net().unsplit(&[m]);
    c.wait_joined(&[0, 1, 2]);
    c.check_invariants();
    drop(cs);
}
