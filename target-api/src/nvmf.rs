//! NVMe-oF subsystems as the kernel interface (and `[nvmf]` in plexd-target's
//! configuration file) describes them, ANA states and controllers as listed.

/// Largest namespace id (NN, MNAN).
pub const MAX_NAMESPACES: u32 = 1024;

/// Most peer listeners (other nodes' addresses) one subsystem lists in the
/// discovery log.
pub const MAX_PEER_LISTENERS: usize = 64;

/// One NVM subsystem.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubsystemConfig {
    /// NVMe qualified name (`nqn.YYYY-MM.reverse.domain:...`).
    pub nqn: String,
    /// Serial number (up to 20 ASCII characters; default derived from the NQN).
    #[serde(default)]
    pub serial: Option<String>,
    /// Model number (up to 40 ASCII characters; default `plexd`).
    #[serde(default)]
    pub model: Option<String>,
    /// Host NQNs allowed to connect (ignored with `allow_any`).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Every host may connect.
    #[serde(default)]
    pub allow_any: bool,
    /// Namespaces.
    #[serde(default)]
    pub namespaces: Vec<NamespaceConfig>,
    /// Listeners (`address:port`) of other nodes that export this subsystem too
    /// (at most [`MAX_PEER_LISTENERS`]): the discovery log lists the
    /// subsystem at each of them after this node's own listeners, so a host that
    /// discovers through one node finds every path.
    #[serde(default)]
    pub peer_listeners: Vec<String>,
}

/// One namespace of a subsystem.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Namespace id (1..=[`MAX_NAMESPACES`]).
    pub nsid: u32,
    /// The bdev or volume it maps to.
    pub bdev: String,
    /// The identity NGUID, EUI-64 and UUID are derived from: give every node
    /// exporting one shared volume the same value (the coordinator uses the disk
    /// group id and the volume name). Default: the bdev name.
    #[serde(default)]
    pub identity: Option<String>,
    /// Writes fail with "namespace is write protected".
    #[serde(default)]
    pub read_only: bool,
}

/// ANA state of this node's group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnaState {
    /// Optimized.
    Optimized,
    /// Non-optimized.
    NonOptimized,
    /// Inaccessible.
    Inaccessible,
}

impl AnaState {
    /// The value of the ANA log page.
    pub fn code(self) -> u8 {
        match self {
            AnaState::Optimized => 0x01,
            AnaState::NonOptimized => 0x02,
            AnaState::Inaccessible => 0x03,
        }
    }
    /// From [`AnaState::code`].
    pub fn from_code(c: u8) -> AnaState {
        match c {
            0x01 => AnaState::Optimized,
            0x02 => AnaState::NonOptimized,
            _ => AnaState::Inaccessible,
        }
    }
}

/// A controller as listed by the management API.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ControllerInfo {
    /// Controller id.
    pub cntlid: u16,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Host NQN.
    pub hostnqn: String,
    /// Peer address of the admin queue.
    pub peer: String,
    /// Reactor of the admin queue.
    pub reactor: usize,
    /// I/O queues connected: (queue id, reactor).
    pub io_queues: Vec<(u16, usize)>,
    /// Keep alive timeout, ms.
    pub kato_ms: u32,
    /// Commands received (every queue).
    pub commands: u64,
    /// Bytes read by the host.
    pub read_bytes: u64,
    /// Bytes written by the host.
    pub write_bytes: u64,
    /// Failed commands.
    pub errors: u64,
}
