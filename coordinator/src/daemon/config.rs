//! The cluster file (TOML): cluster name and id, monitor settings, the disk paths every
//! node scans, and the nodes (id, name, coordinator address, target socket).
//! docs/OPERATIONS.md shows an example.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::core::{NodeConfig, NodeInfo};

/// Most nodes a cluster file may list.
pub const MAX_NODES: usize = 64;
/// Highest node id (ids are 1..=this): the node ids dirty region logs have a
/// section for.
pub const MAX_NODE_ID: u32 = crate::model::MAX_LOG_NODE_ID;
/// Most disk files one `disk_paths` pattern may expand to.
pub const MAX_DISKS_PER_PATTERN: usize = 4096;

/// The `[cluster]` table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSection {
    /// Cluster name.
    pub name: String,
    /// Cluster id: the owner id of shared disk groups.
    pub id: String,
    /// Membership monitor: `builtin` (heartbeats alone) or `corosync` (also
    /// membership and quorum from the local corosync: a plexd built with the
    /// `corosync` feature; docs/OPERATIONS.md).
    #[serde(default = "default_monitor")]
    pub monitor: String,
    /// Heartbeat period.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// Silence after which a peer is declared gone.
    #[serde(default = "default_heartbeat_timeout_ms")]
    pub heartbeat_timeout_ms: u64,
    /// How long a starting node listens for a cluster before forming one.
    #[serde(default = "default_form_wait_ms")]
    pub form_wait_ms: u64,
    /// How long a node that abandoned a join waits before trying again.
    #[serde(default = "default_join_retry_ms")]
    pub join_retry_ms: u64,
    /// Glob patterns (`*` and `?` in the last component) of the disks every node scans.
    #[serde(default)]
    pub disk_paths: Vec<String>,
    /// The data-plane lease: a node's plexd-target serves shared volumes only this
    /// long after its coordinator last renewed it (as a member of a quorate view).
    /// Longer than a plexd restart, so a restart never stops I/O.
    #[serde(default = "default_lease_ms")]
    pub lease_ms: u64,
    /// Added when waiting out a lost node's lease (plus 4 % of `lease_ms` for
    /// clock rate drift, `core::drift_allowance_ms`): how late a data plane may
    /// fence after its lease's deadline.
    #[serde(default = "default_lease_margin_ms")]
    pub lease_margin_ms: u64,
    /// Wrap every disk in an `error` bdev so faults can be injected through the
    /// kernel interface (`injectError`; tests do). Off by default: the wrapper costs
    /// shared counters on every I/O.
    #[serde(default)]
    pub fault_injection: bool,
    /// Zero the disk space a `vol create` or `vol grow` gives a volume before the
    /// change commits (`daemon::zero`): on by default. Off: new space holds what the
    /// disks held (another volume's old data; a new mirror's plexes may differ
    /// there until written), for storage that cannot zero fast.
    #[serde(default = "default_zero_new_space")]
    pub zero_new_space: bool,
    /// The quorum disk: a small file or block device every node reaches (not one of
    /// `disk_paths`' disks), whose lease gives one more vote to the node holding
    /// it (the master). plexd writes its first 4 KiB; a blank one is initialized,
    /// one of another cluster refused. None: no quorum disk.
    #[serde(default)]
    pub quorum_disk: Option<PathBuf>,
}

/// `monitor = "builtin"`: the heartbeats alone.
pub const MONITOR_BUILTIN: &str = "builtin";
/// `monitor = "corosync"`: membership and quorum also from corosync.
pub const MONITOR_COROSYNC: &str = "corosync";

fn default_monitor() -> String {
    MONITOR_BUILTIN.into()
}
fn default_heartbeat_interval_ms() -> u64 {
    500
}
fn default_heartbeat_timeout_ms() -> u64 {
    2000
}
fn default_form_wait_ms() -> u64 {
    2000
}
fn default_join_retry_ms() -> u64 {
    5000
}
fn default_lease_ms() -> u64 {
    5000
}
fn default_zero_new_space() -> bool {
    true
}
fn default_lease_margin_ms() -> u64 {
    crate::core::DEFAULT_LEASE_MARGIN_MS
}
fn default_votes() -> u32 {
    1
}
/// Most votes one node may hold.
pub const MAX_VOTES: u32 = 255;

/// One `[[nodes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// Node id (unique, > 0).
    pub id: u32,
    /// Host name.
    pub name: String,
    /// `host:port` of the coordinator (cluster protocol and ctl API).
    pub address: String,
    /// The node's plexd-target management socket.
    pub target_socket: PathBuf,
    /// Node-local files (optional).
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// `address:port` where this node's target serves iSCSI exports
    /// ([`DEFAULT_ISCSI_PORTAL`] when absent).
    #[serde(default)]
    pub iscsi_portal: Option<String>,
    /// `address:port` where this node's target listens for NVMe/TCP hosts (NVMe-oF
    /// exports; [`DEFAULT_NVMF_PORTAL`] when absent).
    #[serde(default)]
    pub nvmf_portal: Option<String>,
    /// Votes toward quorum (default 1; 0 for a node that never decides quorum).
    #[serde(default = "default_votes")]
    pub votes: u32,
}

/// The iSCSI portal of a node whose entry names none.
pub const DEFAULT_ISCSI_PORTAL: &str = "127.0.0.1:3260";

/// The NVMe/TCP listener of a node whose entry names none.
pub const DEFAULT_NVMF_PORTAL: &str = "127.0.0.1:4420";

impl NodeEntry {
    /// Where this node serves iSCSI exports.
    pub fn iscsi_portal(&self) -> &str {
        self.iscsi_portal.as_deref().unwrap_or(DEFAULT_ISCSI_PORTAL)
    }

    /// Where this node serves NVMe-oF exports.
    pub fn nvmf_portal(&self) -> &str {
        self.nvmf_portal.as_deref().unwrap_or(DEFAULT_NVMF_PORTAL)
    }
}

impl ClusterSection {
    /// Names, monitor, heartbeat and lease timing, quorum disk (`disk_paths`:
    /// [`ClusterFile`]'s check, after the nodes).
    fn check(&self) -> Result<(), String> {
        let c = self;
        if c.name.is_empty() || c.id.is_empty() {
            return Err("cluster: name and id must not be empty".into());
        }
        match c.monitor.as_str() {
            MONITOR_BUILTIN => {}
            MONITOR_COROSYNC if cfg!(feature = "corosync") => {}
            MONITOR_COROSYNC => {
                return Err(
                    "cluster: monitor \"corosync\" needs a plexd built with the corosync feature (cargo build --features plexd-coordinator/corosync); this one has only the built-in monitor".into(),
                )
            }
            other => {
                return Err(format!(
                    "cluster: monitor {other:?} is not supported (\"builtin\" or \"corosync\")"
                ))
            }
        }
        if c.heartbeat_interval_ms == 0 || c.heartbeat_timeout_ms <= c.heartbeat_interval_ms {
            return Err(
                "cluster: heartbeat_timeout_ms must be larger than heartbeat_interval_ms > 0"
                    .into(),
            );
        }
        if c.lease_ms < 2 * c.heartbeat_interval_ms {
            return Err(format!(
                "cluster: lease_ms {} must be at least twice heartbeat_interval_ms {} (the lease is renewed by heartbeats)",
                c.lease_ms, c.heartbeat_interval_ms
            ));
        }
        if let Some(q) = &c.quorum_disk {
            if !q.is_absolute() {
                return Err(format!(
                    "cluster: quorum_disk {} must be an absolute path",
                    q.display()
                ));
            }
            if c.id.len() > super::qdisk::QDISK_MAX_CLUSTER_ID_BYTES {
                return Err(format!(
                    "cluster: id {:?} is longer than {} bytes, the most a quorum disk record holds",
                    c.id,
                    super::qdisk::QDISK_MAX_CLUSTER_ID_BYTES
                ));
            }
        }
        Ok(())
    }
}

impl NodeEntry {
    /// This entry (`nodes[i]`) alone: portals parse and differ, id, name and address
    /// given.
    fn check(&self, i: usize) -> Result<(), String> {
        let n = self;
        if let Err(e) = n.iscsi_portal().parse::<std::net::SocketAddr>() {
            return Err(format!(
                "nodes[{i}]: iscsi_portal {:?}: {e} (want address:port)",
                n.iscsi_portal()
            ));
        }
        if let Err(e) = n.nvmf_portal().parse::<std::net::SocketAddr>() {
            return Err(format!(
                "nodes[{i}]: nvmf_portal {:?}: {e} (want address:port)",
                n.nvmf_portal()
            ));
        }
        if same_address(n.nvmf_portal(), n.iscsi_portal()) {
            return Err(format!(
                "nodes[{i}] ({}): nvmf_portal and iscsi_portal are both {}; use another port",
                n.name,
                n.nvmf_portal()
            ));
        }
        if n.id == 0 || n.name.is_empty() || n.address.is_empty() {
            return Err(format!(
                "nodes[{i}]: id must be > 0, name and address not empty"
            ));
        }
        if n.id > MAX_NODE_ID {
            // Each node id has its own section in every dirty region log.
            return Err(format!(
                "nodes[{i}] ({}): id {} is more than {MAX_NODE_ID} (dirty region logs have a section per node id 1..={MAX_NODE_ID})",
                n.name, n.id
            ));
        }
        Ok(())
    }

    /// What this node and node `o` both use that must be each node's own, if any:
    /// on the same host a target socket or state directory; anywhere a portal
    /// address either gives.
    fn clash_with(&self, o: &NodeEntry) -> Option<String> {
        let n = self;
        let same_host = host_of(&o.address) == host_of(&n.address);
        if same_host && o.target_socket == n.target_socket {
            Some(format!("target_socket {}", n.target_socket.display()))
        } else if same_host && o.state_dir.is_some() && o.state_dir == n.state_dir {
            Some(format!(
                "state_dir {}",
                n.state_dir.as_deref().unwrap_or(Path::new("")).display()
            ))
        } else if n.iscsi_portal.is_some()
            && o.iscsi_portal.is_some()
            && same_address(n.iscsi_portal(), o.iscsi_portal())
        {
            Some(format!("iscsi_portal {}", n.iscsi_portal()))
        } else if n.nvmf_portal.is_some()
            && o.nvmf_portal.is_some()
            && same_address(n.nvmf_portal(), o.nvmf_portal())
        {
            Some(format!("nvmf_portal {}", n.nvmf_portal()))
        } else if n.nvmf_portal.is_some()
            && o.iscsi_portal.is_some()
            && same_address(n.nvmf_portal(), o.iscsi_portal())
            || n.iscsi_portal.is_some()
                && o.nvmf_portal.is_some()
                && same_address(n.iscsi_portal(), o.nvmf_portal())
        {
            Some(format!(
                "one address as iscsi_portal and nvmf_portal ({} / {})",
                n.iscsi_portal(),
                n.nvmf_portal()
            ))
        } else {
            None
        }
    }
}

/// A parsed and checked cluster file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    /// The `[cluster]` table.
    pub cluster: ClusterSection,
    /// The nodes.
    pub nodes: Vec<NodeEntry>,
}

impl ClusterFile {
    /// Reads and checks `path`; errors name the file.
    pub fn load(path: &Path) -> Result<ClusterFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cluster file {}: {e}", path.display()))?;
        ClusterFile::parse(&text).map_err(|e| format!("cluster file {}: {e}", path.display()))
    }

    /// Parses and checks the text of a cluster file.
    pub fn parse(text: &str) -> Result<ClusterFile, String> {
        let file: ClusterFile = toml::from_str(text).map_err(|e| e.message().to_string())?;
        file.check()?;
        Ok(file)
    }

    fn check(&self) -> Result<(), String> {
        self.cluster.check()?;
        if let Some(n) = self.nodes.iter().find(|n| n.votes > MAX_VOTES) {
            return Err(format!(
                "nodes ({}): votes {} is more than {MAX_VOTES}",
                n.name, n.votes
            ));
        }
        if !self.nodes.is_empty() && self.nodes.iter().all(|n| n.votes == 0) {
            return Err("nodes: at least one node must have votes > 0".into());
        }
        if self.nodes.is_empty() || self.nodes.len() > MAX_NODES {
            return Err(format!("nodes: between 1 and {MAX_NODES} nodes required"));
        }
        for (i, n) in self.nodes.iter().enumerate() {
            n.check(i)?;
            self.check_unique(i, n)?;
            self.check_portals_not_node_addresses(i, n)?;
        }
        let c = &self.cluster;
        if c.disk_paths.is_empty() || c.disk_paths.iter().any(|p| p.trim().is_empty()) {
            return Err(
                "cluster: disk_paths must list at least one non-empty pattern of the shared disks (e.g. [\"/dev/disk/by-id/wwn-*\"])"
                    .into(),
            );
        }
        Ok(())
    }

    /// Node `i` shares no id, name or address with an earlier node, nor (on the same
    /// host) a target socket, state directory or portal.
    fn check_unique(&self, i: usize, n: &NodeEntry) -> Result<(), String> {
        if self.nodes[..i]
            .iter()
            .any(|o| o.id == n.id || o.name == n.name || o.address == n.address)
        {
            return Err(format!(
                "nodes[{i}] ({}): id, name and address must be unique",
                n.name
            ));
        }
        for o in &self.nodes[..i] {
            if let Some(what) = n.clash_with(o) {
                return Err(format!(
                    "nodes {} and {} (same host {}) both use {what}; give each node its own",
                    o.name,
                    n.name,
                    host_of(&n.address)
                ));
            }
        }
        Ok(())
    }

    /// Node `i`'s portals, when given, are no node's coordinator address.
    fn check_portals_not_node_addresses(&self, i: usize, n: &NodeEntry) -> Result<(), String> {
        let portals = [
            ("iscsi_portal", n.iscsi_portal.is_some(), n.iscsi_portal()),
            ("nvmf_portal", n.nvmf_portal.is_some(), n.nvmf_portal()),
        ];
        for (what, given, portal) in portals {
            if let Some(o) = self
                .nodes
                .iter()
                .find(|o| given && same_address(portal, &o.address))
            {
                return Err(format!(
                    "nodes[{i}] ({}): {what} {portal} is the address of node {}; use another port",
                    n.name, o.name
                ));
            }
        }
        Ok(())
    }

    /// The node list as every node must see it, one `id=name@address` per node in id
    /// order: the cluster handshake compares it (with the cluster id) between nodes.
    pub fn node_list(&self) -> String {
        let mut nodes: Vec<&NodeEntry> = self.nodes.iter().collect();
        nodes.sort_by_key(|n| n.id);
        nodes
            .iter()
            .map(|n| format!("{}={}@{}", n.id, n.name, n.address))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node called `name`.
    pub fn node(&self, name: &str) -> Option<&NodeEntry> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The node with id `id`.
    pub fn node_by_id(&self, id: u32) -> Option<&NodeEntry> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// The core's settings for node `me`.
    pub fn node_config(&self, me: u32, incarnation: u64) -> NodeConfig {
        let nodes = self
            .nodes
            .iter()
            .map(|n| NodeInfo {
                id: n.id,
                name: n.name.clone(),
                votes: n.votes,
            })
            .collect();
        let mut cfg = NodeConfig::new(me, nodes);
        cfg.incarnation = incarnation;
        cfg.heartbeat_interval_ms = self.cluster.heartbeat_interval_ms;
        cfg.heartbeat_timeout_ms = self.cluster.heartbeat_timeout_ms;
        cfg.form_wait_ms = self.cluster.form_wait_ms;
        cfg.join_retry_ms = self.cluster.join_retry_ms;
        cfg.lease_ms = self.cluster.lease_ms;
        cfg.lease_margin_ms = self.cluster.lease_margin_ms;
        cfg.quorum_disk = self.cluster.quorum_disk.is_some();
        cfg.external_monitor = self.cluster.monitor == MONITOR_COROSYNC;
        // PLEXD_FAILPOINT aims at the transactions a test asks for.
        cfg.bookkeeping_failpoints = false;
        cfg
    }

    /// Every disk file the `disk_paths` patterns match now, sorted, without duplicates.
    pub fn disk_files(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for pattern in &self.cluster.disk_paths {
            out.extend(expand(pattern));
        }
        out.sort();
        out.dedup();
        out
    }
}

/// The host part of `host:port` (the whole text when it has no port).
fn host_of(address: &str) -> &str {
    address
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .unwrap_or(address)
}

/// Two `address:port` texts name the same socket address.
fn same_address(a: &str, b: &str) -> bool {
    match (
        a.parse::<std::net::SocketAddr>(),
        b.parse::<std::net::SocketAddr>(),
    ) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The first difference between two node lists ([`ClusterFile::node_list`]): `mine`
/// here, `theirs` on the other node, for a log line that names it.
pub fn node_list_difference(mine: &str, theirs: &str) -> String {
    let split = |s: &str| -> Vec<String> {
        s.split(',')
            .filter(|e| !e.is_empty())
            .map(str::to_string)
            .collect()
    };
    let (a, b) = (split(mine), split(theirs));
    for i in 0..a.len().max(b.len()) {
        match (a.get(i), b.get(i)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(x), Some(y)) => return format!("{x} here, {y} there"),
            (Some(x), None) => return format!("{x} here, no such node there"),
            (None, Some(y)) => return format!("no such node here, {y} there"),
            (None, None) => {}
        }
    }
    "the same".into()
}

/// Expands a pattern whose last component may hold `*` and `?`.
pub fn expand(pattern: &str) -> Vec<PathBuf> {
    let path = Path::new(pattern);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Vec::new();
    };
    if !name.contains(['*', '?']) {
        return if path.exists() {
            vec![path.to_path_buf()]
        } else {
            Vec::new()
        };
    }
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| wildcard_match(name.as_bytes(), n.as_bytes()))
        })
        .map(|e| dir.join(e.file_name()))
        .take(MAX_DISKS_PER_PATTERN)
        .collect();
    out.sort();
    out
}

/// `*` matches any run of bytes, `?` one byte.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[cluster]
name = "demo"
id = "demo-0001"
monitor = "builtin"
heartbeat_interval_ms = 100
heartbeat_timeout_ms = 600
form_wait_ms = 300
disk_paths = ["/tmp/x/disks/*.img"]

[[nodes]]
id = 1
name = "a"
address = "127.0.0.1:7701"
target_socket = "/tmp/x/a/target.sock"
state_dir = "/tmp/x/a"

[[nodes]]
id = 2
name = "b"
address = "127.0.0.1:7702"
target_socket = "/tmp/x/b/target.sock"
"#;

    #[test]
    fn contract_example_parses() {
        let f = ClusterFile::parse(EXAMPLE).unwrap();
        assert_eq!(f.cluster.id, "demo-0001");
        assert_eq!(f.nodes.len(), 2);
        assert_eq!(f.node("b").unwrap().id, 2);
        let cfg = f.node_config(2, 7);
        assert_eq!(cfg.heartbeat_timeout_ms, 600);
        assert_eq!(cfg.nodes.len(), 2);
        assert!(!cfg.quorum_disk);
    }

    #[test]
    fn a_quorum_disk_adds_a_vote_and_must_be_an_absolute_path() {
        let text = EXAMPLE.replace(
            "disk_paths = [",
            "quorum_disk = \"/tmp/x/qdisk\"\ndisk_paths = [",
        );
        let f = ClusterFile::parse(&text).unwrap();
        assert_eq!(
            f.cluster.quorum_disk.as_deref(),
            Some(Path::new("/tmp/x/qdisk"))
        );
        let cfg = f.node_config(1, 1);
        assert!(cfg.quorum_disk);
        let q = crate::core::Quorum::of(&cfg.nodes, cfg.quorum_disk);
        assert_eq!((q.total, q.needed), (3, 2));
        let rel = text.replace("/tmp/x/qdisk", "qdisk");
        assert!(ClusterFile::parse(&rel).unwrap_err().contains("absolute"));
    }

    #[test]
    fn node_ids_past_the_log_sections_are_refused_naming_the_node() {
        let ok = EXAMPLE.replace("id = 2\n", &format!("id = {MAX_NODE_ID}\n"));
        assert_eq!(ClusterFile::parse(&ok).unwrap().node("b").unwrap().id, 64);
        let bad = EXAMPLE.replace("id = 2\n", &format!("id = {}\n", MAX_NODE_ID + 1));
        let e = ClusterFile::parse(&bad).unwrap_err();
        assert!(e.contains("(b): id 65 is more than 64"), "{e}");
    }

    #[test]
    fn defaults_apply() {
        let text = "[cluster]\nname='c'\nid='i'\ndisk_paths=['/d/*']\n[[nodes]]\nid=1\nname='a'\naddress='127.0.0.1:1'\ntarget_socket='/s'\n";
        let f = ClusterFile::parse(text).unwrap();
        assert_eq!(f.cluster.heartbeat_timeout_ms, 2000);
        assert_eq!(f.cluster.monitor, "builtin");
    }

    #[test]
    fn duplicate_nodes_and_bad_monitor_are_refused() {
        let dup = EXAMPLE.replace("name = \"b\"", "name = \"a\"");
        assert!(ClusterFile::parse(&dup).unwrap_err().contains("unique"));
        let bad = EXAMPLE.replace("monitor = \"builtin\"", "monitor = \"heartbeat\"");
        let e = ClusterFile::parse(&bad).unwrap_err();
        assert!(e.contains("\"heartbeat\" is not supported"), "{e}");
        assert!(ClusterFile::parse("[cluster]\nname='x'").is_err());
    }

    #[test]
    fn corosync_monitor_needs_the_feature() {
        let text = EXAMPLE.replace("monitor = \"builtin\"", "monitor = \"corosync\"");
        let parsed = ClusterFile::parse(&text);
        if cfg!(feature = "corosync") {
            let f = parsed.expect("corosync is a monitor of this build");
            assert!(f.node_config(1, 1).external_monitor);
        } else {
            let Err(e) = parsed else {
                panic!("monitor \"corosync\" accepted without the corosync feature");
            };
            assert!(
                e.contains("needs a plexd built with the corosync feature"),
                "{e}"
            );
        }
        let f = ClusterFile::parse(EXAMPLE).unwrap();
        assert!(!f.node_config(1, 1).external_monitor);
    }

    #[test]
    fn clashing_nodes_and_missing_disk_paths_are_refused() {
        let sock = EXAMPLE.replace("/tmp/x/b/target.sock", "/tmp/x/a/target.sock");
        let e = ClusterFile::parse(&sock).unwrap_err();
        assert!(
            e.contains("nodes a and b") && e.contains("target_socket"),
            "{e}"
        );
        // On other hosts the same socket path is normal.
        let other_host = sock.replace("127.0.0.1:7702", "127.0.0.2:7702");
        assert!(ClusterFile::parse(&other_host).is_ok());
        let portals = EXAMPLE.replace(
            "state_dir = \"/tmp/x/a\"",
            "state_dir = \"/tmp/x/a\"\niscsi_portal = \"127.0.0.1:7702\"",
        );
        let e = ClusterFile::parse(&portals).unwrap_err();
        assert!(
            e.contains("iscsi_portal 127.0.0.1:7702 is the address of node b"),
            "{e}"
        );
        let nvmf = EXAMPLE.replace(
            "state_dir = \"/tmp/x/a\"",
            "state_dir = \"/tmp/x/a\"\nnvmf_portal = \"127.0.0.1:7702\"",
        );
        let e = ClusterFile::parse(&nvmf).unwrap_err();
        assert!(
            e.contains("nvmf_portal 127.0.0.1:7702 is the address of node b"),
            "{e}"
        );
        let both = EXAMPLE
            .replace(
                "state_dir = \"/tmp/x/a\"",
                "state_dir = \"/tmp/x/a\"\nnvmf_portal = \"127.0.0.1:4421\"",
            )
            .replace(
                "target_socket = \"/tmp/x/b/target.sock\"",
                "target_socket = \"/tmp/x/b/target.sock\"\nnvmf_portal = \"127.0.0.1:4421\"",
            );
        let e = ClusterFile::parse(&both).unwrap_err();
        assert!(
            e.contains("nodes a and b") && e.contains("nvmf_portal"),
            "{e}"
        );
        let mixed = EXAMPLE.replace(
            "state_dir = \"/tmp/x/a\"",
            "state_dir = \"/tmp/x/a\"\niscsi_portal = \"127.0.0.1:4420\"",
        );
        let e = ClusterFile::parse(&mixed).unwrap_err();
        assert!(e.contains("nvmf_portal and iscsi_portal"), "{e}");
        let no_disks = EXAMPLE.replace("disk_paths = [\"/tmp/x/disks/*.img\"]", "");
        assert!(ClusterFile::parse(&no_disks)
            .unwrap_err()
            .contains("disk_paths"));
        let empty = EXAMPLE.replace("[\"/tmp/x/disks/*.img\"]", "[]");
        assert!(ClusterFile::parse(&empty)
            .unwrap_err()
            .contains("disk_paths"));
    }

    #[test]
    fn node_lists_name_their_first_difference() {
        let f = ClusterFile::parse(EXAMPLE).unwrap();
        let mine = f.node_list();
        assert_eq!(mine, "1=a@127.0.0.1:7701,2=b@127.0.0.1:7702");
        let theirs = mine.replace("2=b", "2=c");
        assert_eq!(
            node_list_difference(&mine, &theirs),
            "2=b@127.0.0.1:7702 here, 2=c@127.0.0.1:7702 there"
        );
        assert_eq!(node_list_difference(&mine, &mine), "the same");
    }

    #[test]
    fn wildcards_match() {
        assert!(wildcard_match(b"*.img", b"d1.img"));
        assert!(wildcard_match(b"d?.img", b"d1.img"));
        assert!(!wildcard_match(b"*.img", b"d1.raw"));
        assert!(wildcard_match(b"*", b""));
        assert!(wildcard_match(b"a*b*c", b"axxbyyc"));
    }
}
