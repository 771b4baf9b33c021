//! Configuration of the NVMe-oF frontend, as it appears under `[nvmf]` in the
//! target's TOML config file (see `docs/NVMF.md`).

/// Default NVMe/TCP port.
pub const DEFAULT_PORT: u16 = 4420;
/// Default listener when none is configured.
pub const DEFAULT_LISTENER: &str = "127.0.0.1:4420";
/// Default controller id range of a node (every id but the reserved ones).
pub const DEFAULT_CNTLID_RANGE: (u16, u16) = (1, 0xFFEF);
/// Default ANA group of this node.
pub const DEFAULT_ANA_GROUP: u32 = 1;

/// The whole `[nvmf]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NvmfConfig {
    /// `address:port` listeners (port 0 picks a free one); default `127.0.0.1:4420`.
    #[serde(default)]
    pub listeners: Vec<String>,
    /// Subsystems.
    #[serde(default)]
    pub subsystems: Vec<SubsystemConfig>,
    /// The controller ids this node hands out, `[min, max]` within 1..=0xFFEF; give
    /// every node exporting one subsystem its own range, so that ids never clash
    /// (default the whole range).
    #[serde(default)]
    pub cntlid_range: Option<(u16, u16)>,
    /// This node's ANA group id (1..=[`super::MAX_ANA_GROUP`], default 1): give
    /// every node exporting a shared volume its own.
    #[serde(default)]
    pub ana_group: Option<u32>,
}

impl NvmfConfig {
    /// The listeners, defaulted.
    pub fn listeners(&self) -> Vec<String> {
        if self.listeners.is_empty() {
            vec![DEFAULT_LISTENER.to_string()]
        } else {
            self.listeners.clone()
        }
    }
}

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
    /// (at most [`super::MAX_PEER_LISTENERS`]): the discovery log lists the
    /// subsystem at each of them after this node's own listeners, so a host that
    /// discovers through one node finds every path.
    #[serde(default)]
    pub peer_listeners: Vec<String>,
}

/// One namespace of a subsystem.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceConfig {
    /// Namespace id (1..=[`super::MAX_NAMESPACES`]).
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
