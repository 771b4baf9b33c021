//! A cluster of real `plexd-target` + `plexd` processes on loopback (or each node in a
//! network namespace of its own, `ClusterOpts::netns`, to partition them), sharing
//! sparse disk files, as docs/OPERATIONS.md describes; reaped on drop even when the test
//! panics.
//!
//! ```no_run
//! use plexd_tests::{Cluster, ClusterOpts};
//! let mut c = Cluster::start(3, ClusterOpts::default());
//! c.ctl_ok(1, "dg create dg1 d0 d1 --shared");
//! c.ctl_ok(1, "vol create dg1 vol1 32M --layout mirror");
//! c.write_pattern(0, "dg1", "vol1", 0, 1 << 20);
//! c.check_invariants();
//! ```

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use plexd_target::api::KernelClient;
use serde_json::Value;

use crate::bins::Bins;
use crate::corosync::Corosyncs;
use crate::data::{IoLoop, Pattern};
use crate::netns::Netns;
use crate::proc::{tail, touch, Proc, Spec};
use crate::wait::{try_wait_until, wait_until};

/// Node names, in node id order (id = index + 1).
pub const NODE_NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];
/// How long a process gets to answer after it starts.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long the nodes get to agree on a membership.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one plexctl command may take.
pub const CTL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the members get to show the same configuration after a change.
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a restarted plexd may take to be given a lease: its old start's lease
/// to run out, then two transactions (the old start's recovery, the new one's
/// open), each possibly slowed by a 2.5 s failpoint.
pub const RESTART_LEASE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a process armed with a failpoint gets to reach it.
pub const FAILPOINT_TIMEOUT: Duration = Duration::from_secs(20);
/// What plexd's answer says when a change may go through if asked again soon.
pub const RETRY_SHORTLY: &str = "retry shortly";
/// plexctl's exit status for a refused command (docs/OPERATIONS.md, "Exit status").
pub const EXIT_REFUSED: i32 = 1;
/// plexctl's exit status for a command-line error.
pub const EXIT_USAGE: i32 = 2;
/// plexctl's exit status when the node (or its master) did not answer.
pub const EXIT_UNREACHABLE: i32 = 3;
/// plexctl's exit status for no quorum, no master, or a busy node.
pub const EXIT_NO_QUORUM: i32 = 4;
/// plexctl's exit status when a change may or may not have been applied.
pub const EXIT_OUTCOME_UNKNOWN: i32 = 5;
/// plexctl's exit status when a node could not carry a change out.
pub const EXIT_FAILED: i32 = 6;
/// plexd's port on a node with a network namespace of its own.
pub const NETNS_PORT: u16 = 7700;
/// The iSCSI portal's port on a node with a network namespace of its own.
pub const NETNS_ISCSI_PORT: u16 = 3260;
/// The NVMe/TCP listener's port on a node with a network namespace of its own.
pub const NETNS_NVMF_PORT: u16 = 4420;
/// Log lines printed per process when a test fails.
const TAIL_LINES: usize = 60;
/// Longest part of a test name used in the temp dir (Unix socket paths are short).
const DIR_NAME_CHARS: usize = 24;

/// form_wait_ms of the test clusters (docs/OPERATIONS.md's test value);
/// `PLEXD_TEST_FORM_WAIT_MS` overrides it.
pub const FORM_WAIT_MS: u64 = 300;

/// lease_ms of the test clusters: long enough for several heartbeats, short
/// enough that a failover waits little for the lost node's lease.
pub const LEASE_MS: u64 = 1200;

fn env_ms(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// How to build a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOpts {
    /// Disk files `d0.img`.. (disk media names `d0`..).
    pub disks: usize,
    /// Size of each (sparse).
    pub disk_size_bytes: u64,
    /// Heartbeat period.
    pub heartbeat_interval_ms: u64,
    /// Silence after which a node is gone.
    pub heartbeat_timeout_ms: u64,
    /// How long a starting node listens before forming.
    pub form_wait_ms: u64,
    /// Data-plane lease (short, so failover tests wait little for a lost
    /// node's lease to run out).
    pub lease_ms: u64,
    /// Added to a lost node's lease wait.
    pub lease_margin_ms: u64,
    /// RUST_LOG of every process.
    pub rust_log: String,
    /// `(node, failpoint)`: PLEXD_FAILPOINT of that node's first plexd.
    pub failpoints: Vec<(usize, String)>,
    /// `(node, disk)`: disk files that node's processes cannot see.
    pub hidden: Vec<(usize, usize)>,
    /// Run `plexctl disk init` on every disk once the cluster is up.
    pub init_disks: bool,
    /// Run each node in a network namespace of its own ([`crate::netns`]), so the
    /// test can partition them ([`Cluster::net`]). Needs root.
    pub netns: bool,
    /// Give the cluster a quorum disk: a blank 4 KiB file `qdisk.img` beside the
    /// disks' directory ([`Cluster::quorum_disk_path`]), named in the cluster file.
    pub quorum_disk: bool,
    /// `monitor = "corosync"`, with a real corosync per node ([`crate::corosync`]),
    /// started before the node's processes by [`Cluster::start`]. Needs `netns`,
    /// root and corosync ([`crate::corosync::unavailable`]).
    pub corosync: bool,
}

impl Default for ClusterOpts {
    fn default() -> ClusterOpts {
        ClusterOpts {
            disks: 6,
            disk_size_bytes: 256 << 20,
            heartbeat_interval_ms: 100,
            heartbeat_timeout_ms: 600,
            form_wait_ms: env_ms("PLEXD_TEST_FORM_WAIT_MS").unwrap_or(FORM_WAIT_MS),
            lease_ms: LEASE_MS,
            lease_margin_ms: 100,
            rust_log: std::env::var("PLEXD_TEST_LOG").unwrap_or_else(|_| "info".into()),
            failpoints: Vec::new(),
            hidden: Vec::new(),
            init_disks: true,
            netns: false,
            quorum_disk: false,
            corosync: false,
        }
    }
}

impl ClusterOpts {
    /// Arms `failpoint` (e.g. `txn.after_check`, or with its action:
    /// `driver.write_disks:sleep=2500`) on `node`'s first plexd.
    pub fn failpoint(mut self, node: usize, failpoint: &str) -> ClusterOpts {
        self.failpoints.push((node, failpoint.to_string()));
        self
    }

    /// The options of a cluster monitored by corosync (`monitor = "corosync"`, a
    /// corosync per node, each node in a network namespace).
    pub fn corosync() -> ClusterOpts {
        ClusterOpts {
            netns: true,
            corosync: true,
            ..ClusterOpts::default()
        }
    }

    /// Hides disk file `disk` from `node`'s processes.
    pub fn hide_disk(mut self, node: usize, disk: usize) -> ClusterOpts {
        self.hidden.push((node, disk));
        self
    }
}

/// One node: its processes and addresses.
pub struct Node {
    /// Name (`a`, `b`, ...).
    pub name: String,
    /// Node id (1, 2, ...).
    pub id: u32,
    /// plexd's address (cluster protocol and ctl API).
    pub addr: String,
    /// plexd-target's socket.
    pub target_socket: PathBuf,
    /// Where the node's target serves iSCSI exports (`iscsi_portal`).
    pub iscsi_portal: String,
    /// Where the node's target serves NVMe-oF exports (`nvmf_portal`).
    pub nvmf_portal: String,
    /// Node-local directory (logs, state).
    pub dir: PathBuf,
    target: Option<Proc>,
    plexd: Option<Proc>,
    failpoint: Option<String>,
    hidden: Vec<usize>,
    outside: bool,
    /// A cluster file of this node's own instead of the cluster's.
    cluster_file: Option<PathBuf>,
    /// Its plexd is stopped by SIGSTOP ([`Cluster::freeze`]).
    frozen: bool,
}

/// A running cluster. See the module documentation.
pub struct Cluster {
    /// The test's temp dir (removed on success).
    pub dir: PathBuf,
    /// The cluster file.
    pub cluster_file: PathBuf,
    /// The shared disk files, `d0.img`...
    pub disks: Vec<PathBuf>,
    /// The nodes, by index (node id = index + 1).
    pub nodes: Vec<Node>,
    bins: Bins,
    opts: ClusterOpts,
    patterns: Vec<Pattern>,
    next_seed: u64,
    ctl_log: PathBuf,
    empty_file: PathBuf,
    /// The nodes' network namespaces (`ClusterOpts::netns`); removed after the
    /// processes are dead (see `Drop`).
    netns: Option<Netns>,
    /// The nodes' corosyncs (`ClusterOpts::corosync`); killed after the nodes'
    /// processes, before the namespaces.
    corosyncs: Option<Corosyncs>,
}

/// First port [`free_ports`] hands out, and how many it cycles through: below the
/// kernel's ephemeral range (`ip_local_port_range`, 32768 up by default), so the
/// local port of an outgoing connection (a peer's, a plexctl's, another test's) never
/// takes one between its pick and the bind of the process it is for. Port 0 (an
/// ephemeral one) did: "Address already in use" at a plexd's start.
const PORT_BASE: u32 = 20_000;
const PORT_SPAN: u32 = 12_000;

/// `n` distinct ports free on 127.0.0.1 now, outside the ephemeral range; each
/// test process starts at a place of its own (from its pid).
fn free_ports(n: usize) -> Vec<u16> {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(97) % PORT_SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    // Hold every listener until all ports are known, so they differ.
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(n);
    for _ in 0..PORT_SPAN {
        if listeners.len() == n {
            break;
        }
        let port = PORT_BASE + NEXT.fetch_add(1, Ordering::Relaxed) % PORT_SPAN;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
            listeners.push(l);
        }
    }
    assert_eq!(
        listeners.len(),
        n,
        "no {n} free ports on 127.0.0.1 from {PORT_BASE} to {}",
        PORT_BASE + PORT_SPAN
    );
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local_addr").port())
        .collect()
}

fn test_dir() -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let thread = std::thread::current();
    let name: String = thread
        .name()
        .unwrap_or("test")
        .rsplit("::")
        .next()
        .unwrap_or("test")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(DIR_NAME_CHARS)
        .collect();
    let base = std::env::var_os("PLEXD_TEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    base.join(format!("plexd-{name}-{}-{n}", std::process::id()))
}

/// Disk media name of disk file `i`.
pub fn disk_name(i: usize) -> String {
    format!("d{i}")
}

/// The shared disk groups of a `plexctl --json print`, by name.
pub fn shared_groups(print: &Value) -> Vec<Value> {
    let mut groups: Vec<Value> = print["disk_groups"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|g| g["shared"].as_bool() == Some(true))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    groups.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    groups
}

/// The disk group `dg` of a `--json print`.
pub fn group<'a>(print: &'a Value, dg: &str) -> Option<&'a Value> {
    print["disk_groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"].as_str() == Some(dg))
}

/// Volume `vol` of disk group `dg` of a `--json print`.
pub fn volume<'a>(print: &'a Value, dg: &str, vol: &str) -> Option<&'a Value> {
    group(print, dg)?["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"].as_str() == Some(vol))
}

/// Node `name`'s entry in a `--json cluster status`, if it is listed.
pub fn status_node<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["nodes"]
        .as_array()
        .and_then(|ns| ns.iter().find(|n| n["name"] == name))
}

/// Node `name`'s `reason` in a `--json cluster status` (empty when it has none).
pub fn node_reason(status: &Value, name: &str) -> Option<String> {
    status_node(status, name).map(|n| n["reason"].as_str().unwrap_or("").to_string())
}

/// Names of the members in a `--json cluster status` (role master or slave).
pub fn members(status: &Value) -> BTreeSet<String> {
    status["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|n| {
                    let role = n["role"].as_str().unwrap_or("").to_ascii_lowercase();
                    role == "master" || role == "slave"
                })
                .filter_map(|n| n["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

impl Cluster {
    /// Starts `n` nodes, the first one first (the lowest id forms the cluster once a
    /// majority is alive, so it is master), waits until all are members, and
    /// initialises the disks.
    pub fn start(n: usize, opts: ClusterOpts) -> Cluster {
        let mut c = Cluster::create(n, opts).unwrap_or_else(|e| panic!("cluster setup: {e}"));
        for i in 0..n {
            if c.corosyncs.is_some() {
                c.start_corosync(i);
            }
            c.start_target(i);
            c.start_coordinator(i);
        }
        let up: Vec<usize> = (0..n).collect();
        c.wait_joined(&up);
        if c.opts.init_disks {
            c.init_disks();
        }
        c
    }

    /// Writes the files of an `n`-node cluster; starts nothing.
    pub fn create(n: usize, opts: ClusterOpts) -> Result<Cluster, String> {
        assert!(
            n >= 1 && n <= NODE_NAMES.len(),
            "1..={} nodes",
            NODE_NAMES.len()
        );
        let bins = Bins::locate()?;
        let dir = test_dir();
        let _ = std::fs::remove_dir_all(&dir);
        let mkdir = |p: &Path| {
            std::fs::create_dir_all(p).map_err(|e| format!("cannot create {}: {e}", p.display()))
        };
        mkdir(&dir.join("disks"))?;
        let mut disks = Vec::new();
        for i in 0..opts.disks {
            let p = dir.join("disks").join(format!("d{i}.img"));
            let f = File::create(&p).map_err(|e| format!("cannot create {}: {e}", p.display()))?;
            f.set_len(opts.disk_size_bytes)
                .map_err(|e| format!("cannot size {}: {e}", p.display()))?;
            disks.push(p);
        }
        let empty_file = dir.join("empty");
        touch(&empty_file)?;
        let quorum_disk = dir.join("qdisk.img");
        if opts.quorum_disk {
            std::fs::write(&quorum_disk, vec![0u8; 4096])
                .map_err(|e| format!("cannot create {}: {e}", quorum_disk.display()))?;
        }
        // In namespaces every node has an address of its own, so fixed ports do.
        let netns = opts.netns.then(|| Netns::create(n));
        let (ports, iscsi_ports, nvmf_ports) = match &netns {
            Some(_) => (
                vec![NETNS_PORT; n],
                vec![NETNS_ISCSI_PORT; n],
                vec![NETNS_NVMF_PORT; n],
            ),
            None => {
                let all = free_ports(3 * n);
                (
                    all[..n].to_vec(),
                    all[n..2 * n].to_vec(),
                    all[2 * n..].to_vec(),
                )
            }
        };
        let host = |i: usize| match &netns {
            Some(ns) => ns.addr(i),
            None => "127.0.0.1".to_string(),
        };
        let mut nodes = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let ndir = dir.join(NODE_NAMES[i]);
            mkdir(&ndir)?;
            nodes.push(Node {
                name: NODE_NAMES[i].to_string(),
                id: i as u32 + 1,
                addr: format!("{}:{port}", host(i)),
                target_socket: ndir.join("target.sock"),
                iscsi_portal: format!("{}:{}", host(i), iscsi_ports[i]),
                nvmf_portal: format!("{}:{}", host(i), nvmf_ports[i]),
                dir: ndir,
                target: None,
                plexd: None,
                failpoint: opts
                    .failpoints
                    .iter()
                    .find(|(node, _)| *node == i)
                    .map(|(_, f)| f.clone()),
                hidden: opts
                    .hidden
                    .iter()
                    .filter(|(node, _)| *node == i)
                    .map(|(_, d)| *d)
                    .collect(),
                outside: false,
                cluster_file: None,
                frozen: false,
            });
        }
        let cluster_file = dir.join("cluster.toml");
        let mut toml = format!(
            "[cluster]\nname = \"test\"\nid = \"test-{}\"\nmonitor = {:?}\n\
             heartbeat_interval_ms = {}\nheartbeat_timeout_ms = {}\nform_wait_ms = {}\n\
             lease_ms = {}\nlease_margin_ms = {}\nfault_injection = true\ndisk_paths = [{:?}]\n",
            std::process::id(),
            if opts.corosync { "corosync" } else { "builtin" },
            opts.heartbeat_interval_ms,
            opts.heartbeat_timeout_ms,
            opts.form_wait_ms,
            opts.lease_ms,
            opts.lease_margin_ms,
            dir.join("disks").join("*.img").display().to_string(),
        );
        if opts.quorum_disk {
            toml.push_str(&format!(
                "quorum_disk = {:?}\n",
                quorum_disk.display().to_string()
            ));
        }
        for node in &nodes {
            toml.push_str(&format!(
                "\n[[nodes]]\nid = {}\nname = {:?}\naddress = {:?}\ntarget_socket = {:?}\nstate_dir = {:?}\niscsi_portal = {:?}\nnvmf_portal = {:?}\n",
                node.id,
                node.name,
                node.addr,
                node.target_socket.display().to_string(),
                node.dir.display().to_string(),
                node.iscsi_portal,
                node.nvmf_portal
            ));
        }
        std::fs::write(&cluster_file, toml)
            .map_err(|e| format!("cannot write {}: {e}", cluster_file.display()))?;
        let corosyncs = match (&netns, opts.corosync) {
            (_, false) => None,
            (Some(ns), true) => {
                let dirs: Vec<PathBuf> = nodes.iter().map(|n| n.dir.clone()).collect();
                Some(Corosyncs::new(ns, &dirs)?)
            }
            (None, true) => return Err("ClusterOpts::corosync needs ClusterOpts::netns".into()),
        };
        Ok(Cluster {
            ctl_log: dir.join("ctl.log"),
            dir,
            cluster_file,
            disks,
            nodes,
            bins,
            opts,
            patterns: Vec::new(),
            next_seed: 1,
            empty_file,
            netns,
            corosyncs,
        })
    }

    /// The quorum disk's file (it exists only with [`ClusterOpts::quorum_disk`]).
    pub fn quorum_disk_path(&self) -> PathBuf {
        self.dir.join("qdisk.img")
    }

    /// Node index by name.
    pub fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node named {name:?}"))
    }

    fn spec(&self, i: usize, what: &str, exe: &Path, args: Vec<String>) -> Spec {
        let node = &self.nodes[i];
        let mut env = vec![("RUST_LOG".to_string(), self.opts.rust_log.clone())];
        if what == "plexd" {
            if let Some(fp) = &node.failpoint {
                // A failpoint given with its action (`name:sleep=ms`) is used as is.
                let v = if fp.contains(':') {
                    fp.clone()
                } else {
                    format!("{fp}:exit")
                };
                env.push(("PLEXD_FAILPOINT".into(), v));
            }
        }
        let (exe, args) = self.in_netns(i, exe, args);
        Spec {
            name: format!("{what} {}", node.name),
            exe,
            args,
            env,
            cwd: node.dir.clone(),
            log: node.dir.join(format!("{what}.log")),
            hide: node.hidden.iter().map(|d| self.disks[*d].clone()).collect(),
            hide_with: self.empty_file.clone(),
        }
    }

    /// `exe args` as run for node `i`: as is, or through `ip netns exec NS` (which
    /// execs, so the process id is the program's own) when the nodes have namespaces.
    fn in_netns(&self, i: usize, exe: &Path, args: Vec<String>) -> (PathBuf, Vec<String>) {
        match &self.netns {
            None => (exe.to_path_buf(), args),
            Some(ns) => {
                let mut all = vec![
                    "netns".to_string(),
                    "exec".to_string(),
                    ns.ns(i).to_string(),
                    exe.display().to_string(),
                ];
                all.extend(args);
                (ns.ip_program().to_path_buf(), all)
            }
        }
    }

    /// The nodes' network namespaces, to partition them; panics unless the cluster
    /// was started with `ClusterOpts::netns`.
    pub fn net(&self) -> &Netns {
        self.netns
            .as_ref()
            .expect("the cluster runs without network namespaces (ClusterOpts::netns)")
    }

    fn corosyncs(&mut self) -> &mut Corosyncs {
        self.corosyncs
            .as_mut()
            .expect("the cluster runs without corosync (ClusterOpts::corosync)")
    }

    /// Starts node `i`'s corosync (`ClusterOpts::corosync`); plexd finds it by itself.
    pub fn start_corosync(&mut self, i: usize) {
        self.corosyncs().start(i);
    }

    /// `kill -9` of node `i`'s corosync.
    pub fn kill_corosync(&mut self, i: usize) {
        self.corosyncs().kill(i);
    }

    /// SIGSTOP to node `i`'s plexd: it stays alive but does nothing (not even renew its
    /// data plane's lease) until [`Cluster::thaw`]; dropping the cluster thaws it
    /// before killing it.
    pub fn freeze(&mut self, i: usize) {
        self.signal(i, Process::Coordinator, libc::SIGSTOP, true);
        self.nodes[i].frozen = true;
    }

    /// SIGCONT to node `i`'s plexd (after [`Cluster::freeze`]).
    pub fn thaw(&mut self, i: usize) {
        self.signal(i, Process::Coordinator, libc::SIGCONT, false);
        self.nodes[i].frozen = false;
    }

    /// SIGSTOP to node `i`'s plexd-target (with [`Cluster::freeze`]: the whole node
    /// frozen, as a paused VM). SIGKILL at drop ends it stopped.
    pub fn freeze_target(&mut self, i: usize) {
        self.signal(i, Process::Target, libc::SIGSTOP, true);
    }

    /// SIGCONT to node `i`'s plexd-target (after [`Cluster::freeze_target`]).
    pub fn thaw_target(&mut self, i: usize) {
        self.signal(i, Process::Target, libc::SIGCONT, false);
    }

    /// Sends `sig` to node `i`'s `process`. Panics naming the node, the process and
    /// the signal if that fails, or if the process is not running and `must_run`.
    fn signal(&self, i: usize, process: Process, sig: libc::c_int, must_run: bool) {
        let (name, pid) = match process {
            Process::Coordinator => ("plexd", self.plexd_pid(i)),
            Process::Target => ("plexd-target", self.target_pid(i)),
        };
        let node = &self.nodes[i].name;
        let Some(pid) = pid else {
            if must_run {
                panic!("{name} {node} is not running");
            }
            return;
        };
        if let Err(e) = signal_pid(pid, sig) {
            let signal = match sig {
                libc::SIGSTOP => "SIGSTOP".to_string(),
                libc::SIGCONT => "SIGCONT".to_string(),
                libc::SIGKILL => "SIGKILL".to_string(),
                other => format!("signal {other}"),
            };
            panic!("{signal} to {name} {node} (pid {pid}): {e}");
        }
    }

    /// Starts node `i`'s plexd-target and waits until its socket answers.
    pub fn start_target(&mut self, i: usize) {
        let node = &self.nodes[i];
        let _ = std::fs::remove_file(&node.target_socket);
        let args = vec![
            "--socket".to_string(),
            node.target_socket.display().to_string(),
            "--cores".into(),
            "0".into(),
        ];
        let spec = self.spec(i, "plexd-target", &self.bins.target.clone(), args);
        let p = Proc::spawn(&spec).unwrap_or_else(|e| panic!("{e}"));
        self.nodes[i].target = Some(p);
        let sock = self.nodes[i].target_socket.clone();
        let desc = format!(
            "plexd-target {} to answer on {}",
            self.nodes[i].name,
            sock.display()
        );
        wait_until(&desc, START_TIMEOUT, || {
            if let Some(p) = self.nodes[i].target.as_mut() {
                if let Some(s) = p.try_status() {
                    return self.fail_now(format!(
                        "plexd-target {} {} before answering",
                        self.nodes[i].name,
                        Proc::describe(Some(s))
                    ));
                }
            }
            KernelClient::connect(&sock)
                .and_then(|k| k.info())
                .map(|_| ())
                .map_err(|e| e.to_string())
        });
    }

    fn fail_now<T>(&self, msg: String) -> Result<T, String> {
        panic!("{msg}");
    }

    /// Starts node `i`'s plexd (with its armed failpoint, if any) and waits until it
    /// answers `cluster status` (not until it has joined: see [`Cluster::wait_joined`]).
    pub fn start_coordinator(&mut self, i: usize) {
        self.spawn_coordinator(i);
        let desc = format!("plexd {} to answer `cluster status`", self.nodes[i].name);
        wait_until(&desc, START_TIMEOUT, || {
            if let Some(p) = self.nodes[i].plexd.as_mut() {
                if let Some(s) = p.try_status() {
                    return self.fail_now(format!(
                        "plexd {} {} before answering (failpoint {:?})",
                        self.nodes[i].name,
                        Proc::describe(Some(s)),
                        self.nodes[i].failpoint
                    ));
                }
            }
            self.try_ctl_json(i, "cluster status").map(|_| ())
        });
    }

    /// Starts node `i`'s plexd (with its armed failpoint, if any) without waiting for
    /// anything (for a process expected to exit at its failpoint during its join).
    pub fn spawn_coordinator(&mut self, i: usize) {
        let file = self.nodes[i]
            .cluster_file
            .as_ref()
            .unwrap_or(&self.cluster_file);
        let args = vec![
            "--cluster".to_string(),
            file.display().to_string(),
            "--node".into(),
            self.nodes[i].name.clone(),
        ];
        let spec = self.spec(i, "plexd", &self.bins.plexd.clone(), args);
        let p = Proc::spawn(&spec).unwrap_or_else(|e| panic!("{e}"));
        self.nodes[i].plexd = Some(p);
    }

    /// Arms (or with `None` disarms) `failpoint` for node `i`'s next plexd start.
    pub fn set_failpoint(&mut self, i: usize, failpoint: Option<&str>) {
        self.nodes[i].failpoint = failpoint.map(str::to_string);
    }

    /// The failpoint node `i`'s plexd was (or will be) started with.
    pub fn failpoint(&self, i: usize) -> Option<&str> {
        self.nodes[i].failpoint.as_deref()
    }

    /// Hides disk files from node `i`'s next process starts (empty: none hidden).
    pub fn set_hidden_disks(&mut self, i: usize, disks: &[usize]) {
        self.nodes[i].hidden = disks.to_vec();
    }

    /// Starts node `i`'s next plexd with cluster file `file` (`None`: the cluster's).
    pub fn set_cluster_file(&mut self, i: usize, file: Option<PathBuf>) {
        self.nodes[i].cluster_file = file;
    }

    /// The binaries under test.
    pub fn bins(&self) -> &Bins {
        &self.bins
    }

    /// The process id of node `i`'s plexd, while it runs.
    pub fn plexd_pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].plexd.as_ref().and_then(|p| p.pid())
    }

    /// The PID of node `i`'s plexd-target, if it was started.
    pub fn target_pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].target.as_ref().and_then(|p| p.pid())
    }

    /// plexd of node `i` is running.
    pub fn coordinator_running(&mut self, i: usize) -> bool {
        self.nodes[i].plexd.as_mut().is_some_and(|p| p.is_running())
    }

    /// plexd-target of node `i` is running.
    pub fn target_running(&mut self, i: usize) -> bool {
        self.nodes[i]
            .target
            .as_mut()
            .is_some_and(|p| p.is_running())
    }

    /// Nodes whose plexd is running and that are expected to be members.
    pub fn live(&mut self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|i| self.coordinator_running(*i) && !self.nodes[*i].outside)
            .collect()
    }

    /// `kill -9` of node `i`'s plexd (its plexd-target keeps serving I/O).
    pub fn kill_coordinator(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].plexd.as_mut() {
            p.kill(); // SIGKILL ends a stopped (frozen) process too
        }
        self.nodes[i].frozen = false;
    }

    /// SIGKILL to node `i`'s plexd through a shared reference, for a test that kills
    /// it while another thread runs a command through the cluster; the process is
    /// reaped by the next [`Cluster::kill_coordinator`] or restart, or at drop.
    pub fn sigkill_coordinator(&self, i: usize) {
        self.signal(i, Process::Coordinator, libc::SIGKILL, true);
    }

    /// [`Cluster::sigkill_coordinator`] for node `i`'s plexd-target; reaped by the
    /// next [`Cluster::kill_target`] or restart, or at drop.
    pub fn sigkill_target(&self, i: usize) {
        self.signal(i, Process::Target, libc::SIGKILL, true);
    }

    /// `kill -9` of node `i`'s plexd-target only (its plexd keeps running).
    pub fn kill_target(&mut self, i: usize) {
        if let Some(p) = self.nodes[i].target.as_mut() {
            p.kill();
        }
    }

    /// `kill -9` of both processes of node `i`.
    pub fn kill_node(&mut self, i: usize) {
        self.kill_coordinator(i);
        self.kill_target(i);
    }

    /// `kill -9` of every process of the cluster.
    pub fn kill_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill_coordinator(i);
        }
        for i in 0..self.nodes.len() {
            self.kill_node(i);
        }
    }

    /// SIGTERM to node `i`'s plexd; returns its exit status (SIGKILL after a grace).
    pub fn stop_coordinator(&mut self, i: usize) -> Option<ExitStatus> {
        let p = self.nodes[i].plexd.as_mut()?;
        let (status, clean) = p.terminate();
        assert!(
            clean,
            "plexd {} did not stop on SIGTERM",
            self.nodes[i].name
        );
        status
    }

    /// Waits for node `i`'s plexd to exit by itself (at its failpoint).
    pub fn wait_coordinator_exit(&mut self, i: usize) -> ExitStatus {
        let name = self.nodes[i].name.clone();
        let fp = self.nodes[i].failpoint.clone();
        let p = self.nodes[i]
            .plexd
            .as_mut()
            .unwrap_or_else(|| panic!("plexd {name} was never started"));
        p.wait_exit(FAILPOINT_TIMEOUT).unwrap_or_else(|| {
            panic!(
                "plexd {name} did not exit within {} s (failpoint {fp:?})",
                FAILPOINT_TIMEOUT.as_secs()
            )
        })
    }

    /// Kills node `i`'s plexd if it runs, starts it again with `failpoint` armed (or
    /// none), and waits until every node with a running plexd is a member.
    ///
    /// Then it waits until the new plexd granted its data plane a lease: the master
    /// recovered the old start (once that start's lease ran out) and opened the new
    /// one (docs/PROTOCOL.md, "Node-crash recovery"), and until the resync that
    /// recovery started ended, so a test's next change is not queued behind that
    /// bookkeeping and the node serves its own start's lease.
    pub fn restart_coordinator(&mut self, i: usize, failpoint: Option<&str>) {
        let grants = self.lease_grants(i);
        self.kill_coordinator(i);
        self.set_failpoint(i, failpoint);
        if !self.target_running(i) {
            self.start_target(i);
        }
        self.start_coordinator(i);
        self.wait_all_joined();
        let desc = format!(
            "plexd {} to be given its data-plane lease after its restart",
            self.nodes[i].name
        );
        wait_until(&desc, RESTART_LEASE_TIMEOUT, || {
            match self.lease_grants(i) > grants {
                true => Ok(()),
                false => Err("no lease granted yet".to_string()),
            }
        });
        // And until the resync that recovery started is over (its end is one more
        // transaction of the master's own).
        let desc = format!(
            "the resync after plexd {}'s restart to end",
            self.nodes[i].name
        );
        self.wait_no_syncing(i, &desc, RESTART_LEASE_TIMEOUT);
    }

    /// Waits (bounded by `timeout`) until node `i` shows no plex of a shared group
    /// SYNCING: every resync under way ended (`what` names the wait).
    pub fn wait_no_syncing(&self, i: usize, what: &str, timeout: Duration) {
        wait_until(what, timeout, || {
            let p = self.try_ctl_json(i, "print")?;
            match shared_groups(&p)
                .iter()
                .any(|g| g.to_string().contains("\"SYNCING\""))
            {
                true => Err("a plex is SYNCING".to_string()),
                false => Ok(()),
            }
        });
    }

    /// How many times node `i`'s plexd processes logged granting their data plane a
    /// lease (the log is appended across restarts).
    fn lease_grants(&self, i: usize) -> usize {
        std::fs::read_to_string(self.nodes[i].dir.join("plexd.log"))
            .unwrap_or_default()
            .matches("data-plane lease granted")
            .count()
    }

    /// Starts whatever of node `i` is not running (target, then plexd), waits joined.
    pub fn restart_node(&mut self, i: usize) {
        if !self.target_running(i) {
            self.start_target(i);
        }
        if !self.coordinator_running(i) {
            self.start_coordinator(i);
        }
        self.wait_all_joined();
    }

    /// Starts every node not running, in node order, and waits until all are members.
    pub fn restart_all(&mut self) {
        for i in 0..self.nodes.len() {
            if !self.target_running(i) {
                self.start_target(i);
            }
        }
        for i in 0..self.nodes.len() {
            if !self.coordinator_running(i) {
                self.start_coordinator(i);
            }
        }
        self.wait_all_joined();
    }

    // ---- plexctl ----

    /// Runs `plexctl --node <node i> ARGS` (`cmd` split on spaces), bounded by
    /// [`CTL_TIMEOUT`].
    pub fn ctl(&self, i: usize, cmd: &str) -> Output {
        self.ctl_args(i, &cmd.split_whitespace().collect::<Vec<_>>())
    }

    /// Runs `plexctl --node <node i> ARGS`.
    pub fn ctl_args(&self, i: usize, args: &[&str]) -> Output {
        let node = &self.nodes[i];
        let mut ctl_args = vec!["--node".to_string(), node.addr.clone()];
        ctl_args.extend(args.iter().map(|a| a.to_string()));
        let (exe, ctl_args) = self.in_netns(i, &self.bins.plexctl, ctl_args);
        self.run_ctl(&node.name, &node.addr, exe, ctl_args, args)
    }

    /// Runs `plexctl --cluster <the cluster file> ARGS`: plexctl asks the first node
    /// of the file that answers (each call afresh). Loopback clusters only.
    pub fn ctl_any(&self, args: &[&str]) -> Output {
        self.ctl_cluster_file(&self.cluster_file, args)
    }

    /// Runs `plexctl --cluster FILE ARGS`, FILE a cluster file of the test's own
    /// (the cluster's, edited). Loopback clusters only.
    pub fn ctl_cluster_file(&self, file: &Path, args: &[&str]) -> Output {
        assert!(self.netns.is_none(), "ctl_any: the nodes have namespaces");
        let mut ctl_args = vec!["--cluster".to_string(), file.display().to_string()];
        ctl_args.extend(args.iter().map(|a| a.to_string()));
        let exe = self.bins.plexctl.clone();
        self.run_ctl("any", "(cluster file)", exe, ctl_args, args)
    }

    /// Runs plexctl (`exe ctl_args`) bounded by [`CTL_TIMEOUT`], logging it in the
    /// cluster's ctl log under `name` / `addr`.
    fn run_ctl(
        &self,
        name: &str,
        addr: &str,
        exe: PathBuf,
        ctl_args: Vec<String>,
        args: &[&str],
    ) -> Output {
        let mut cmd = Command::new(exe);
        cmd.args(ctl_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "warn")
            .process_group(0);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("PLEXD_") {
                cmd.env_remove(k);
            }
        }
        let started = Instant::now();
        let out = crate::proc::run_bounded(&mut cmd, CTL_TIMEOUT)
            .unwrap_or_else(|e| panic!("plexctl {} on node {name}: {e}", args.join(" ")));
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.ctl_log)
        {
            let _ = writeln!(
                f,
                "[{name}] {} ms: plexctl {addr} {} -> {}\n{}{}",
                started.elapsed().as_millis(),
                args.join(" "),
                Proc::describe(Some(out.status)),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        out
    }

    /// The stdout of a plexctl run that must have succeeded (panics naming the node,
    /// the exit status and stderr otherwise).
    fn stdout_of_success(&self, i: usize, cmd: &str, out: Output) -> String {
        if !out.status.success() {
            panic!(
                "plexctl {cmd} on node {} failed ({}): {}",
                self.nodes[i].name,
                Proc::describe(Some(out.status)),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ctl_ok(&self, i: usize, cmd: &str) -> String {
        let out = self.ctl(i, cmd);
        self.stdout_of_success(i, cmd, out)
    }

    /// Runs a command that must succeed, asking again while plexd answers that it
    /// cannot take changes for a moment (`retry shortly`: a takeover in progress), as
    /// an admin would, for at most `timeout`; returns its stdout.
    pub fn ctl_retry_ok(&self, i: usize, cmd: &str, timeout: Duration) -> String {
        let out = wait_until(
            &format!("plexctl {cmd} on node {} to be taken", self.nodes[i].name),
            timeout,
            || {
                let out = self.ctl(i, cmd);
                let stderr = String::from_utf8_lossy(&out.stderr);
                if !out.status.success() && stderr.contains(RETRY_SHORTLY) {
                    return Err(stderr.trim().to_string());
                }
                Ok(out)
            },
        );
        self.stdout_of_success(i, cmd, out)
    }

    /// Runs a command that must be refused (exit [`EXIT_REFUSED`]) with one line on
    /// stderr; returns it.
    pub fn ctl_err(&self, i: usize, cmd: &str) -> String {
        self.ctl_fails(i, cmd, &[EXIT_REFUSED])
    }

    /// Runs a command that must fail with one of the exit statuses `codes` (see
    /// docs/OPERATIONS.md, "Exit status") and one line on stderr; returns it.
    pub fn ctl_fails(&self, i: usize, cmd: &str, codes: &[i32]) -> String {
        let out = self.ctl(i, cmd);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        assert!(
            out.status.code().is_some_and(|c| codes.contains(&c)),
            "plexctl {cmd} on node {} should fail with exit status {codes:?}; got {}: stdout {:?} stderr {stderr:?}",
            self.nodes[i].name,
            Proc::describe(Some(out.status)),
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(
            stderr.starts_with("plexctl: ") && stderr.lines().count() == 1,
            "plexctl {cmd}: the error should be one line `plexctl: <reason>`, got {stderr:?}"
        );
        stderr
    }

    /// `plexctl --json CMD` on node `i`, which must fail: its exit status and the
    /// typed error it printed as one JSON line on stderr (`{"error": {...}}`).
    pub fn ctl_json_err(&self, i: usize, cmd: &str) -> (i32, Value) {
        let mut args = vec!["--json"];
        args.extend(cmd.split_whitespace());
        let out = self.ctl_args(i, &args);
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        let code = out.status.code().unwrap_or(-1);
        assert!(
            code > 0 && out.stdout.is_empty(),
            "plexctl --json {cmd} on node {} should fail with nothing on stdout; got {}: stdout {:?} stderr {stderr:?}",
            self.nodes[i].name,
            Proc::describe(Some(out.status)),
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            stderr.lines().count(),
            1,
            "plexctl --json {cmd}: {stderr:?}"
        );
        let v: Value = serde_json::from_str(&stderr).unwrap_or_else(|e| {
            panic!("plexctl --json {cmd}: stderr is not JSON ({e}): {stderr:?}")
        });
        (code, v["error"].clone())
    }

    /// `plexctl --json CMD` on node `i`, parsed.
    pub fn try_ctl_json(&self, i: usize, cmd: &str) -> Result<Value, String> {
        let mut args = vec!["--json"];
        args.extend(cmd.split_whitespace());
        let out = self.ctl_args(i, &args);
        if !out.status.success() {
            return Err(format!(
                "plexctl --json {cmd} on node {}: {}: {}",
                self.nodes[i].name,
                Proc::describe(Some(out.status)),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "plexctl --json {cmd} on node {}: not JSON ({e}): {:?}",
                self.nodes[i].name,
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `plexctl --json CMD` on node `i`, which must succeed.
    pub fn ctl_json(&self, i: usize, cmd: &str) -> Value {
        self.try_ctl_json(i, cmd).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `plexctl --json print` on node `i`.
    pub fn print(&self, i: usize) -> Value {
        self.ctl_json(i, "print")
    }

    /// `plexctl --json cluster status` on node `i`.
    pub fn status(&self, i: usize) -> Value {
        self.ctl_json(i, "cluster status")
    }

    /// The master's index, as every node in `nodes` agrees (with the same view) and
    /// with every one of `nodes` a member; Err says what differs.
    fn agreed_master(&self, nodes: &[usize]) -> Result<usize, String> {
        let want: BTreeSet<String> = nodes.iter().map(|i| self.nodes[*i].name.clone()).collect();
        let mut agreed: Option<(String, Value)> = None;
        for &i in nodes {
            let s = self.try_ctl_json(i, "cluster status")?;
            let master = s["master"]
                .as_str()
                .ok_or_else(|| format!("node {} knows no master: {s}", self.nodes[i].name))?
                .to_string();
            let m = members(&s);
            if m != want {
                return Err(format!(
                    "node {} sees members {m:?}, want {want:?}: {s}",
                    self.nodes[i].name
                ));
            }
            match &agreed {
                None => agreed = Some((master, s["view"].clone())),
                Some((am, av)) if *am == master && *av == s["view"] => {}
                Some((am, av)) => {
                    return Err(format!(
                        "node {} sees master {master} view {}, another node master {am} view {av}",
                        self.nodes[i].name, s["view"]
                    ))
                }
            }
        }
        let (master, _) = agreed.ok_or("no nodes")?;
        self.nodes
            .iter()
            .position(|n| n.name == master)
            .ok_or_else(|| format!("master {master:?} is no configured node"))
    }

    /// Waits until exactly `nodes` are the members, all agreeing on master and view;
    /// returns the master.
    pub fn wait_joined(&self, nodes: &[usize]) -> usize {
        let names: Vec<&str> = nodes.iter().map(|i| self.nodes[*i].name.as_str()).collect();
        wait_until(
            &format!("nodes {names:?} to be the members and agree on the master"),
            JOIN_TIMEOUT,
            || self.agreed_master(nodes),
        )
    }

    /// Waits until every node with a running plexd is a member; returns the master.
    pub fn wait_all_joined(&mut self) -> usize {
        let live = self.live();
        self.wait_joined(&live)
    }

    /// The current master (every live node must agree).
    pub fn master(&mut self) -> usize {
        self.wait_all_joined()
    }

    /// `plexctl disk init` of every disk file, from node 0 (names `d0`, `d1`, ...).
    pub fn init_disks(&self) {
        for (i, p) in self.disks.iter().enumerate() {
            self.ctl_ok(
                0,
                &format!("disk init {} --name {}", p.display(), disk_name(i)),
            );
        }
    }

    /// Makes node `i` master with `failpoint` armed: restarts its plexd armed (it
    /// rejoins as a slave), then restarts the master until `i` takes over (node `i`
    /// must have the lowest id among the others for the succession to reach it).
    pub fn arm_master(&mut self, i: usize, failpoint: &str) {
        self.restart_coordinator(i, Some(failpoint));
        for _ in 0..self.nodes.len() {
            let m = self.master();
            if m == i {
                return;
            }
            self.kill_coordinator(m);
            let survivors = self.live();
            self.wait_joined(&survivors);
            self.restart_coordinator(m, None);
        }
        let m = self.master();
        assert_eq!(m, i, "node {} did not become master", self.nodes[i].name);
    }

    // ---- data ----

    /// Waits (at most `timeout`) until node `i`'s target exports NVMe-oF subsystem
    /// `nqn` and listens on the node's NVMe-oF portal.
    pub fn wait_nvmf_subsystem(&self, i: usize, nqn: &str, timeout: Duration) {
        let listener: std::net::SocketAddr = self.nodes[i]
            .nvmf_portal
            .parse()
            .unwrap_or_else(|e| panic!("nvmf portal {}: {e}", self.nodes[i].nvmf_portal));
        wait_until(
            &format!("{nqn} on node {}'s listener", self.nodes[i].name),
            timeout,
            || {
                let (subs, ls) = self
                    .kernel(i)
                    .nvmf_subsystems()
                    .map_err(|e| e.to_string())?;
                if subs.iter().any(|s| s.nqn == nqn) && ls.contains(&listener) {
                    Ok(())
                } else {
                    Err(format!("{subs:?} on {ls:?}"))
                }
            },
        );
    }

    /// The volumes node `i`'s plexd-target serves, by bdev name (`DG.VOL`).
    pub fn target_volumes(&self, i: usize) -> Result<Vec<String>, String> {
        let k = KernelClient::connect(&self.nodes[i].target_socket).map_err(|e| e.to_string())?;
        let v = k.list_volumes().map_err(|e| e.to_string())?;
        Ok(v.into_iter().map(|v| v.name).collect())
    }

    /// A kernel interface client of node `i`'s plexd-target.
    pub fn kernel(&self, i: usize) -> KernelClient {
        KernelClient::connect(&self.nodes[i].target_socket)
            .unwrap_or_else(|e| panic!("node {}: {e}", self.nodes[i].name))
    }

    /// Writes a new pattern to `dg.vol` at `offset_bytes` through node `i`'s target and
    /// records it for [`Cluster::verify_patterns`].
    pub fn write_pattern(
        &mut self,
        i: usize,
        dg: &str,
        vol: &str,
        offset_bytes: u64,
        len_bytes: u64,
    ) -> Pattern {
        let p = Pattern {
            bdev: format!("{dg}.{vol}"),
            offset_bytes,
            len_bytes,
            seed: self.next_seed,
        };
        self.next_seed += 1;
        let k = self.kernel(i);
        p.write_served(&k, CONVERGE_TIMEOUT)
            .unwrap_or_else(|e| panic!("node {}: {e}", self.nodes[i].name));
        self.patterns
            .retain(|q| !(q.bdev == p.bdev && q.offset_bytes == p.offset_bytes));
        self.patterns.push(p.clone());
        p
    }

    /// Host I/O through node `i`'s data plane once it serves `dg.vol`: an [`IoLoop`]
    /// over 256 KiB at 8 MiB into the volume, its seeds counting up from `seed`.
    pub fn start_io_loop(&self, i: usize, dg: &str, vol: &str, seed: u64) -> IoLoop {
        self.wait_served(i, dg, vol);
        let region = Pattern {
            bdev: format!("{dg}.{vol}"),
            offset_bytes: 8 << 20,
            len_bytes: 256 << 10,
            seed,
        };
        IoLoop::start(self.nodes[i].target_socket.clone(), region)
            .unwrap_or_else(|e| panic!("node {}: I/O loop: {e}", self.nodes[i].name))
    }

    /// Waits until node `i`'s data plane serves `dg.vol` (a node serves shared
    /// volumes once its coordinator holds a data-plane lease: about a heartbeat after
    /// it joined or after a failover): one probe read of the first block.
    pub fn wait_served(&self, i: usize, dg: &str, vol: &str) {
        let bdev = format!("{dg}.{vol}");
        let k = self.kernel(i);
        wait_until(
            &format!("node {} to serve {bdev}", self.nodes[i].name),
            CONVERGE_TIMEOUT,
            || match k.read(&bdev, 0, 512) {
                Ok(r) if r.status == 0 => Ok(()),
                Ok(r) => Err(format!("errno {}", r.status)),
                Err(e) => Err(e.to_string()),
            },
        );
    }

    /// Records a pattern written elsewhere (e.g. the last one of an [`crate::data::IoLoop`]).
    pub fn record_pattern(&mut self, p: Pattern) {
        self.patterns
            .retain(|q| !(q.bdev == p.bdev && q.offset_bytes == p.offset_bytes));
        self.next_seed = self.next_seed.max(p.seed + 1);
        self.patterns.push(p);
    }

    /// Forgets the pattern recorded at `offset_bytes` of `bdev`, if any (a write there
    /// failed: the region may hold part of it).
    pub fn forget_pattern(&mut self, bdev: &str, offset_bytes: u64) {
        self.patterns
            .retain(|q| !(q.bdev == bdev && q.offset_bytes == offset_bytes));
    }

    /// A fresh pattern seed.
    pub fn new_seed(&mut self) -> u64 {
        self.next_seed += 1;
        self.next_seed - 1
    }

    /// The scenario most tests start from: shared disk group `dg` on disks d0 and d1,
    /// a 2-way mirrored volume `vol` of `size`, created on node `i`, and two 1 MiB
    /// patterns written through it (at 0 and at 4 MiB).
    pub fn shared_mirror(&mut self, i: usize, dg: &str, vol: &str, size: &str) {
        self.ctl_ok(i, &format!("dg create {dg} d0 d1 --shared"));
        self.ctl_ok(
            i,
            &format!("vol create {dg} {vol} {size} --layout mirror --mirrors 2"),
        );
        self.write_pattern(i, dg, vol, 0, 1 << 20);
        self.write_pattern(i, dg, vol, 4 << 20, 1 << 20);
    }

    /// Marks node `i` as expected outside the membership while its plexd runs (a
    /// joiner that abandoned its join), or back inside.
    pub fn set_outside(&mut self, i: usize, outside: bool) {
        self.nodes[i].outside = outside;
    }

    /// Forgets the patterns of a removed volume.
    pub fn forget_volume(&mut self, dg: &str, vol: &str) {
        let bdev = format!("{dg}.{vol}");
        self.patterns.retain(|p| p.bdev != bdev);
    }

    /// The (name, state) of volume `vol`'s plex on disk `disk` of `dg`, as node `i`
    /// shows it.
    pub fn plex_on(&self, i: usize, dg: &str, vol: &str, disk: &str) -> (String, String) {
        let p = self.print(i);
        let v = volume(&p, dg, vol)
            .unwrap_or_else(|| panic!("no volume {dg}/{vol}"))
            .clone();
        v["plexes"]
            .as_array()
            .expect("plexes")
            .iter()
            .find(|pl| pl["subdisks"].to_string().contains(&format!("\"{disk}\"")))
            .map(|pl| {
                (
                    pl["name"].as_str().unwrap_or("?").to_string(),
                    pl["state"].as_str().unwrap_or("?").to_string(),
                )
            })
            .unwrap_or_else(|| panic!("no plex of {vol} on {disk}: {v}"))
    }

    /// The recorded patterns.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Reads every recorded pattern back through each of `nodes`' targets.
    pub fn verify_patterns_on(&self, nodes: &[usize]) -> Result<(), String> {
        for &i in nodes {
            let k = KernelClient::connect(&self.nodes[i].target_socket)
                .map_err(|e| format!("node {}: {e}", self.nodes[i].name))?;
            for p in &self.patterns {
                p.verify_served(&k, CONVERGE_TIMEOUT)
                    .map_err(|e| format!("node {}: {e}", self.nodes[i].name))?;
            }
        }
        Ok(())
    }

    // ---- invariants ----

    /// The invariants after every step: the members agree on master and view and show
    /// the same shared configuration; the disks hold it; each member's data plane has
    /// every shared volume; every recorded pattern reads back on every member.
    pub fn check_invariants(&mut self) {
        let members = {
            let live = self.live();
            let m = self.wait_joined(&live);
            let s = self.status(m);
            let names = members(&s);
            live.into_iter()
                .filter(|i| names.contains(&self.nodes[*i].name))
                .collect::<Vec<_>>()
        };
        // The configuration and the data planes together: a change the master makes
        // of its own (a node-crash recovery, the opening of a joiner, a resync's
        // fence or its end) may still be under way; they settle.
        wait_until(
            "every member to show the same shared configuration, its data plane holding it",
            CONVERGE_TIMEOUT,
            || {
                let print = self.same_print(&members)?;
                for &i in &members {
                    crate::invariants::kernel_has_volumes(&print, &self.kernel(i))
                        .map_err(|e| format!("node {}: {e}", self.nodes[i].name))?;
                }
                crate::invariants::disks_hold(&print, &self.disks).map_err(|e| {
                    format!("the disks do not hold the configuration the nodes show: {e}")
                })
            },
        );
        if let Err(e) = self.verify_patterns_on(&members) {
            panic!("data lost: {e}");
        }
    }

    /// The shared part of `--json print` (`{"disk_groups": [shared groups]}`) if
    /// identical on all `nodes`.
    fn same_print(&self, nodes: &[usize]) -> Result<Value, String> {
        let mut first: Option<(usize, Value)> = None;
        for &i in nodes {
            let p = self.try_ctl_json(i, "print")?;
            let shared = serde_json::json!({ "disk_groups": shared_groups(&p) });
            match &first {
                None => first = Some((i, shared)),
                Some((j, f)) if *f != shared => {
                    return Err(format!(
                        "node {} shows {shared}\nnode {} shows {f}",
                        self.nodes[i].name, self.nodes[*j].name
                    ))
                }
                Some(_) => {}
            }
        }
        first.map(|(_, v)| v).ok_or_else(|| "no members".into())
    }

    /// After every node died serving the shared volumes (a whole-cluster kill): the
    /// configuration every member agrees on once the recovery of the dead starts is
    /// over (no plex SYNCING; docs/PROTOCOL.md, "Node-crash recovery"), without the
    /// groups' sequence numbers, which the recovery moves ([`without_seq`]).
    pub fn recovered_print(&mut self) -> Value {
        let p = wait_until(
            "the recovery's resync to end",
            Duration::from_secs(60),
            || {
                let p = self.agreed_print();
                if p.to_string().contains("\"SYNCING\"") {
                    return Err(format!("a plex is still SYNCING: {p}"));
                }
                Ok(p)
            },
        );
        without_seq(&p)
    }

    /// A shared configuration every member agrees on (waits for it).
    pub fn agreed_print(&mut self) -> Value {
        let live = self.live();
        let m = self.wait_joined(&live);
        let s = self.status(m);
        let names = members(&s);
        let members: Vec<usize> = live
            .into_iter()
            .filter(|i| names.contains(&self.nodes[*i].name))
            .collect();
        wait_until(
            "every member to show the same shared configuration",
            CONVERGE_TIMEOUT,
            || self.same_print(&members),
        )
    }

    /// The name (NQN or IQN) of the `protocol` ("iscsi", "nvmf") export of
    /// volume `dg.vol` in the configuration every member agrees on.
    pub fn export_name(&mut self, dg: &str, vol: &str, protocol: &str) -> String {
        let print = self.agreed_print();
        let v = crate::volume(&print, dg, vol)
            .unwrap_or_else(|| panic!("no volume {dg}.{vol} in {print}"));
        v["exports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["protocol"] == protocol)
            .and_then(|e| e["iqn"].as_str())
            .unwrap_or_else(|| panic!("{dg}.{vol} has no {protocol} export: {v}"))
            .to_string()
    }

    fn report(&self) {
        eprintln!(
            "==== cluster test failed; its files are in {}",
            self.dir.display()
        );
        for node in &self.nodes {
            for what in ["plexd-target", "plexd"] {
                let log = node.dir.join(format!("{what}.log"));
                if log.exists() {
                    eprintln!(
                        "---- {what} {} (last {TAIL_LINES} lines of {}):\n{}",
                        node.name,
                        log.display(),
                        tail(&log, TAIL_LINES)
                    );
                }
            }
        }
        if self.ctl_log.exists() {
            eprintln!(
                "---- plexctl commands (last {TAIL_LINES} lines of {}):\n{}",
                self.ctl_log.display(),
                tail(&self.ctl_log, TAIL_LINES)
            );
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(p) = node.plexd.as_mut() {
                if node.frozen {
                    if let Some(pid) = p.pid() {
                        if let Err(e) = signal_pid(pid, libc::SIGCONT) {
                            eprintln!("harness: SIGCONT to plexd {}: {e}", node.name);
                        }
                    }
                }
                p.kill();
            }
        }
        for node in &mut self.nodes {
            if let Some(p) = node.target.as_mut() {
                p.kill();
            }
        }
        // Every process is dead: the corosyncs can go, then the namespaces.
        self.corosyncs = None;
        self.netns = None;
        if std::thread::panicking() {
            self.report();
        } else if std::env::var_os("PLEXD_KEEP_TEST_DIR").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Sends `sig` to process `pid` (a node's plexd, not yet reaped).
fn signal_pid(pid: u32, sig: i32) -> std::io::Result<()> {
    // SAFETY: kill(2) on our own child, not reaped yet (the caller holds its Proc), so
    // the id cannot have been reused.
    if unsafe { libc::kill(pid as i32, sig) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Which of a node's two processes [`Cluster`] signals.
#[derive(Clone, Copy)]
enum Process {
    Coordinator,
    Target,
}

/// Runs `f` until it returns Ok, bounded; for tests that poll the cluster.
pub fn eventually<T>(
    desc: &str,
    timeout: Duration,
    f: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    try_wait_until(desc, timeout, f)
}

/// `print` without the groups' sequence numbers.
pub fn without_seq(print: &Value) -> Value {
    let mut p = print.clone();
    if let Some(groups) = p["disk_groups"].as_array_mut() {
        for g in groups {
            if let Some(o) = g.as_object_mut() {
                o.remove("seq");
            }
        }
    }
    p
}

/// The port of `address:port`.
pub fn port_of(portal: &str) -> u16 {
    portal
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {portal}"))
}
