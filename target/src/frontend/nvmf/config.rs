//! Configuration of the NVMe-oF frontend, as it appears under `[nvmf]` in the
//! target's TOML config file (see `docs/NVMF.md`).

pub use plexd_target_api::nvmf::{NamespaceConfig, SubsystemConfig};
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
    /// Directory of the reservation files of namespaces whose reservations are
    /// not the cluster's (one `nvmf-<nqn>-ns<nsid>.pr.json` each), so they
    /// survive restarts; none: kept in memory. plexd-target defaults it to
    /// `<socket>.nvmf-pr`.
    #[serde(default)]
    pub pr_dir: Option<std::path::PathBuf>,
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
