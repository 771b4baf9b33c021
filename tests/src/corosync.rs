//! Real corosync processes as the cluster monitor of a test cluster
//! (`ClusterOpts::corosync`, `monitor = "corosync"`): one per node, in the node's
//! network namespace and in a mount namespace of its own (`ip netns exec` makes one)
//! with a per-node directory bind-mounted over `/run` and `/var/lib/corosync`
//! (corosync locks the hard-coded `/run/corosync.pid`). plexd reaches its node's
//! corosync through libqb's abstract sockets, which are per network namespace.
//!
//! The [`crate::Cluster`] owns them: it kills them (SIGKILL, by process group) after
//! its nodes' processes and before its namespaces, and removes the `/dev/shm/qb-*`
//! files of the corosyncs it started, also when the test panics.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::netns::{self, Netns};
use crate::proc::{Proc, Spec};

/// How long corosync may take to report a change (token 1000 ms, consensus
/// 1200 ms, the join: measured 1–3 s; generous).
pub const COROSYNC_REPORTS: Duration = Duration::from_secs(20);

/// Why this machine cannot run corosync tests, if it cannot: plexd-tests built
/// without its `corosync` feature (then plexd lacks the monitor), no namespaces, or
/// no `corosync`.
pub fn unavailable() -> Option<String> {
    if !cfg!(feature = "corosync") {
        return Some(
            "plexd-tests built without its corosync feature (ci/test: --features plexd-tests/corosync)".into(),
        );
    }
    if let Some(e) = netns::unavailable() {
        return Some(e);
    }
    if netns::find_program("corosync").is_none() {
        return Some("`corosync` not found: install corosync (ci/setup installs it)".into());
    }
    None
}

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

/// The corosync instances of one cluster (see the module doc).
pub struct Corosyncs {
    procs: Vec<Option<Proc>>,
    /// Process ids of every corosync started (their libqb files carry them).
    pids: Vec<u32>,
    specs: Vec<Spec>,
}

impl Corosyncs {
    /// Writes the configuration of node `i`'s corosync into `dirs[i]/corosync` for
    /// every node (addresses from `ns`); starts none.
    pub fn new(ns: &Netns, dirs: &[PathBuf]) -> Result<Corosyncs, String> {
        let addrs: Vec<String> = (0..dirs.len()).map(|i| ns.addr(i)).collect();
        let corosync = netns::find_program("corosync").ok_or("`corosync` not found")?;
        let mut specs = Vec::new();
        for (i, node_dir) in dirs.iter().enumerate() {
            let dir = node_dir.join("corosync");
            for sub in ["run", "lib"] {
                std::fs::create_dir_all(dir.join(sub))
                    .map_err(|e| format!("cannot create {}: {e}", dir.join(sub).display()))?;
            }
            let conf = dir.join("corosync.conf");
            std::fs::write(&conf, corosync_conf(&addrs, &dir))
                .map_err(|e| format!("cannot write {}: {e}", conf.display()))?;
            let script = format!(
                "mount --bind {run} /run && mount --bind {lib} /var/lib/corosync && exec {exe} -f -c {conf}",
                run = dir.join("run").display(),
                lib = dir.join("lib").display(),
                exe = corosync.display(),
                conf = conf.display(),
            );
            specs.push(Spec {
                name: format!("corosync {}", crate::cluster::NODE_NAMES[i]),
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
                log: node_dir.join("corosync.log"),
                hide: Vec::new(),
                hide_with: PathBuf::new(),
            });
        }
        Ok(Corosyncs {
            procs: (0..dirs.len()).map(|_| None).collect(),
            pids: Vec::new(),
            specs,
        })
    }

    /// Starts node `i`'s corosync (it must not run).
    pub fn start(&mut self, i: usize) {
        assert!(
            self.procs[i].is_none(),
            "{} runs already",
            self.specs[i].name
        );
        let p = Proc::spawn(&self.specs[i]).unwrap_or_else(|e| panic!("{e}"));
        if let Some(pid) = p.pid() {
            self.pids.push(pid);
        }
        self.procs[i] = Some(p);
    }

    /// `kill -9` of node `i`'s corosync.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.procs[i].take() {
            p.kill();
        }
    }
}

impl Drop for Corosyncs {
    fn drop(&mut self) {
        for p in self.procs.iter_mut() {
            if let Some(mut p) = p.take() {
                p.kill();
            }
        }
        // libqb names its shared memory after the processes it connects
        // (`qb-<client pid>-<server pid>-...` per connection,
        // `qb-corosync-<pid>-blackbox-*`): remove those of the corosyncs started here.
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
