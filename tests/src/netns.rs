//! Network namespaces for partition tests: one namespace per node, joined through
//! veth pairs to a bridge in a namespace of its own, so a test can cut a node off,
//! block one direction between two nodes, or delay and drop its packets, without
//! touching the root namespace's network.
//!
//! ```text
//!   ns pxt-<pid>-<n>-a          ns pxt-<pid>-<n>-br             ns pxt-<pid>-<n>-b
//!   lo, eth0 10.213.X.1/24 ==== va ─┐                ┌─ vb ==== eth0 10.213.X.2/24, lo
//!                                   └──── br0 ───────┘ ...
//! ```
//!
//! Names carry the test process's id and a counter, so parallel tests and runs never
//! share a namespace; namespaces left by a test process that died without its drop
//! guards are removed by the next [`Netns::create`]. Interface names are local to their
//! namespace (`br0`, `va`.., `eth0`), well under the 15-character limit. Everything is
//! removed on drop, also when the test panics (the processes inside must be dead
//! first: [`crate::Cluster`] kills them before its namespaces go).
//!
//! Needs root, `ip` (iproute2), `nft` (nftables) and `tc`; `ci/setup` installs them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::proc::run_bounded;

/// Prefix of every namespace this fixture creates.
pub const NETNS_PREFIX: &str = "pxt-";
/// The private /16 the node addresses come from (`10.213.X.N`, only inside the
/// test's namespaces).
const SUBNET_PREFIX: &str = "10.213";
/// How long one `ip`/`nft`/`tc` command may take.
const CMD_TIMEOUT: Duration = Duration::from_secs(10);
/// Most nodes in one fixture (node addresses are `.1` up to this).
pub const MAX_NETNS_NODES: usize = 16;
/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";

/// Finds a program in the usual system directories or on `PATH`.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(PathBuf::from)
        .collect();
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Why this machine cannot run the namespace tests, if it cannot: not root, or `ip`,
/// `nft` or `tc` missing.
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespace tests need root (CI runs as root)".into());
    }
    for (prog, pkg) in [("ip", "iproute2"), ("tc", "iproute2"), ("nft", "nftables")] {
        if find_program(prog).is_none() {
            return Some(format!(
                "`{prog}` not found: install {pkg} (ci/setup installs it)"
            ));
        }
    }
    None
}

/// Runs `prog args` bounded by [`CMD_TIMEOUT`]; Err names the command, its status and
/// its stderr.
fn run(prog: &Path, args: &[&str]) -> Result<(), String> {
    let line = format!("{} {}", prog.display(), args.join(" "));
    let out = run_bounded(Command::new(prog).args(args), CMD_TIMEOUT)
        .map_err(|e| format!("`{line}`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{line}` failed ({}): {}",
            crate::proc::Proc::describe(Some(out.status)),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether process `pid` exists.
fn alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Removes the namespaces of test processes that no longer run (a test killed
/// before its drop guards ran). Errors are reported, not fatal.
pub fn remove_stale(ip: &Path) {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NETNS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !alive(pid) {
            if let Err(e) = run(ip, &["netns", "del", &name]) {
                eprintln!("netns: cannot remove stale namespace {name}: {e}");
            }
        }
    }
}

/// The namespaces of one test: a bridge and one namespace per node. See the module
/// documentation.
pub struct Netns {
    ip: PathBuf,
    nft: PathBuf,
    tc: PathBuf,
    bridge: String,
    nodes: Vec<String>,
    subnet: u8,
    /// Every namespace created so far (removed on drop, in reverse order).
    created: Vec<String>,
}

impl Netns {
    /// Creates the bridge namespace and `n` node namespaces with their links up;
    /// panics (after removing what it created) naming the command that failed.
    pub fn create(n: usize) -> Netns {
        if let Some(why) = unavailable() {
            panic!("{why}");
        }
        assert!(
            (1..=MAX_NETNS_NODES).contains(&n),
            "1..={MAX_NETNS_NODES} nodes"
        );
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let ip = find_program("ip").expect("checked above");
        remove_stale(&ip);
        let base = format!("{NETNS_PREFIX}{}-{k}", std::process::id());
        let mut ns = Netns {
            nft: find_program("nft").expect("checked above"),
            tc: find_program("tc").expect("checked above"),
            ip,
            bridge: format!("{base}-br"),
            nodes: (0..n)
                .map(|i| format!("{base}-{}", node_letter(i)))
                .collect(),
            subnet: (k % 256) as u8,
            created: Vec::new(),
        };
        if let Err(e) = ns.setup() {
            panic!("network namespaces: {e}");
        }
        ns
    }

    fn setup(&mut self) -> Result<(), String> {
        let br = self.bridge.clone();
        self.add_ns(&br)?;
        self.ip(&["-n", &br, "link", "set", "lo", "up"])?;
        self.ip(&["-n", &br, "link", "add", "br0", "type", "bridge"])?;
        self.ip(&["-n", &br, "link", "set", "br0", "up"])?;
        for i in 0..self.nodes.len() {
            let ns = self.nodes[i].clone();
            let port = bridge_port(i);
            let addr = format!("{}/24", self.addr(i));
            self.add_ns(&ns)?;
            self.ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            self.ip(&[
                "-n", &br, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &ns,
            ])?;
            self.ip(&["-n", &br, "link", "set", &port, "master", "br0"])?;
            self.ip(&["-n", &br, "link", "set", &port, "up"])?;
            self.ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            self.ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    fn add_ns(&mut self, name: &str) -> Result<(), String> {
        self.ip(&["netns", "add", name])?;
        self.created.push(name.to_string());
        Ok(())
    }

    fn ip(&self, args: &[&str]) -> Result<(), String> {
        run(&self.ip, args)
    }

    fn must(&self, what: &str, r: Result<(), String>) {
        if let Err(e) = r {
            panic!("netns: {what}: {e}");
        }
    }

    /// The `ip` program (to run a command inside a namespace: `ip netns exec NS ...`).
    pub fn ip_program(&self) -> &Path {
        &self.ip
    }

    /// Node `i`'s namespace name.
    pub fn ns(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// Node `i`'s address (IPv4, no port).
    pub fn addr(&self, i: usize) -> String {
        format!("{SUBNET_PREFIX}.{}.{}", self.subnet, i + 1)
    }

    /// The namespace holding the bridge `br0` (a VM's tap device lives there:
    /// [`Netns::attach_tap`]).
    pub fn bridge_ns(&self) -> &str {
        &self.bridge
    }

    /// An address of the nodes' subnet for a host that is not a node (a VM on
    /// [`Netns::attach_tap`]'s tap): `.100 + k`, above every node's.
    pub fn guest_addr(&self, k: u8) -> String {
        assert!(k < 100, "guest {k}: at most 100 guests");
        format!("{SUBNET_PREFIX}.{}.{}", self.subnet, 100 + u16::from(k))
    }

    /// The prefix length of the nodes' subnet (for a guest's `ADDR/LEN`).
    pub const PREFIX_LEN: u8 = 24;

    /// Creates tap device `tap` in the bridge's namespace as a port of `br0`, so a
    /// VM started there on it (`ip netns exec <bridge_ns> qemu ... tap,ifname=TAP`)
    /// reaches every node at its address; removed with the bridge's namespace.
    pub fn attach_tap(&self, tap: &str) {
        let br = self.bridge.as_str();
        let r = self
            .ip(&["-n", br, "tuntap", "add", "dev", tap, "mode", "tap"])
            .and_then(|_| self.ip(&["-n", br, "link", "set", tap, "master", "br0"]))
            .and_then(|_| self.ip(&["-n", br, "link", "set", tap, "up"]));
        self.must(&format!("tap {tap} on the bridge"), r);
    }

    /// Cuts node `i` off: its bridge port goes down, so its `eth0` loses carrier and
    /// every packet to or from the other nodes is dropped (its own address keeps
    /// working inside its namespace).
    pub fn cut(&self, i: usize) {
        let r = self.ip(&["-n", &self.bridge, "link", "set", &bridge_port(i), "down"]);
        self.must(&format!("cut node {i} off"), r);
    }

    /// Undoes [`Netns::cut`].
    pub fn heal(&self, i: usize) {
        let r = self.ip(&["-n", &self.bridge, "link", "set", &bridge_port(i), "up"]);
        self.must(&format!("reconnect node {i}"), r);
    }

    /// Loads nftables table `table` with one output rule `rule` in node `i`'s
    /// namespace.
    fn nft_output_rule(&self, i: usize, table: &str, rule: &str) -> Result<(), String> {
        let ns = &self.nodes[i];
        let script = format!(
            "add table inet {table}\n\
             add chain inet {table} out {{ type filter hook output priority 0 ; policy accept ; }}\n\
             add rule inet {table} out {rule}\n"
        );
        let file = std::env::temp_dir().join(format!("{ns}-{table}.nft"));
        let r = std::fs::write(&file, script)
            .map_err(|e| format!("cannot write {}: {e}", file.display()))
            .and_then(|_| {
                let nft = self.nft.display().to_string();
                let f = file.display().to_string();
                self.ip(&["netns", "exec", ns, &nft, "-f", &f])
            });
        let _ = std::fs::remove_file(&file);
        r
    }

    /// Deletes nftables table `table` of node `i`'s namespace.
    fn nft_delete(&self, i: usize, table: &str) -> Result<(), String> {
        let nft = self.nft.display().to_string();
        self.ip(&[
            "netns",
            "exec",
            &self.nodes[i],
            &nft,
            "delete",
            "table",
            "inet",
            table,
        ])
    }

    /// Drops every packet node `from` sends to node `to` (nftables in `from`'s
    /// namespace); packets from `to` to `from` still pass.
    pub fn block(&self, from: usize, to: usize) {
        let rule = format!("ip daddr {} drop", self.addr(to));
        let r = self.nft_output_rule(from, &block_table(to), &rule);
        self.must(&format!("block node {from} -> node {to}"), r);
    }

    /// Undoes [`Netns::block`].
    pub fn unblock(&self, from: usize, to: usize) {
        let r = self.nft_delete(from, &block_table(to));
        self.must(&format!("unblock node {from} -> node {to}"), r);
    }

    /// Splits the nodes in two: every packet between a node of `side` and a node not
    /// in it is dropped (both directions, [`Netns::block`]); the nodes on each side
    /// still reach each other.
    pub fn split(&self, side: &[usize]) {
        for (from, to) in self.across(side) {
            self.block(from, to);
        }
    }

    /// Undoes [`Netns::split`] of the same `side`.
    pub fn unsplit(&self, side: &[usize]) {
        for (from, to) in self.across(side) {
            self.unblock(from, to);
        }
    }

    /// Every (from, to) pair with one node in `side` and the other not.
    fn across(&self, side: &[usize]) -> Vec<(usize, usize)> {
        let n = self.nodes.len();
        let mut pairs = Vec::new();
        for &i in side {
            for j in (0..n).filter(|j| !side.contains(j)) {
                pairs.push((i, j));
                pairs.push((j, i));
            }
        }
        pairs
    }

    /// Drops `percent` % of the packets node `i` sends to the other nodes, at random
    /// (nftables `numgen random`: works on kernels without netem).
    pub fn loss(&self, i: usize, percent: u32) {
        assert!(
            (1..=100).contains(&percent),
            "loss: 1..=100 %, not {percent}"
        );
        let rule = match percent {
            100 => "oifname \"eth0\" drop".to_string(),
            p => format!("oifname \"eth0\" numgen random mod 100 < {p} drop"),
        };
        let r = self.nft_output_rule(i, LOSS_TABLE, &rule);
        self.must(&format!("loss on node {i}"), r);
    }

    /// Undoes [`Netns::loss`].
    pub fn clear_loss(&self, i: usize) {
        let r = self.nft_delete(i, LOSS_TABLE);
        self.must(&format!("clear loss on node {i}"), r);
    }

    /// Whether the kernel has `tc netem` (`CONFIG_NET_SCH_NETEM`; some test machines'
    /// kernels do not, and [`Netns::netem`] then panics with tc's error).
    pub fn netem_available(&self) -> bool {
        let tc = |args: &[&str]| run(&self.tc, args);
        let br = self.bridge.as_str();
        let r = tc(&[
            "-n", br, "qdisc", "add", "dev", "br0", "root", "netem", "delay", "1ms",
        ]);
        if r.is_ok() {
            let _ = tc(&["-n", br, "qdisc", "del", "dev", "br0", "root"]);
        }
        r.is_ok()
    }

    /// Delays every packet node `i` sends by `delay_ms` and drops `loss_percent` % of
    /// them (`tc netem` on its `eth0`); replaces an earlier setting. Needs a kernel
    /// with netem ([`Netns::netem_available`]).
    pub fn netem(&self, i: usize, delay_ms: u32, loss_percent: u32) {
        let delay = format!("{delay_ms}ms");
        let loss = format!("{loss_percent}%");
        let r = run(
            &self.tc,
            &[
                "-n",
                &self.nodes[i],
                "qdisc",
                "replace",
                "dev",
                "eth0",
                "root",
                "netem",
                "delay",
                &delay,
                "loss",
                &loss,
            ],
        );
        self.must(&format!("netem on node {i}"), r);
    }

    /// Removes node `i`'s netem setting.
    pub fn clear_netem(&self, i: usize) {
        let r = run(
            &self.tc,
            &["-n", &self.nodes[i], "qdisc", "del", "dev", "eth0", "root"],
        );
        self.must(&format!("clear netem on node {i}"), r);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace destroys its interfaces (and the veth peers with them).
        for name in self.created.iter().rev() {
            if let Err(e) = run(&self.ip, &["netns", "del", name]) {
                eprintln!("netns: cannot remove namespace {name}: {e}");
            }
        }
    }
}

fn node_letter(i: usize) -> char {
    (b'a' + i as u8) as char
}

/// Node `i`'s veth end on the bridge (`va`, `vb`, ...).
fn bridge_port(i: usize) -> String {
    format!("v{}", node_letter(i))
}

/// The nftables table of [`Netns::loss`].
const LOSS_TABLE: &str = "pxt_loss";

/// The nftables table blocking traffic to node `to`.
fn block_table(to: usize) -> String {
    format!("pxt_block_{}", node_letter(to))
}
