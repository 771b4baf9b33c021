//! Configuration of the iSCSI frontend, as it appears under `[iscsi]` in the
//! target's TOML config file (see `docs/ISCSI.md`).

pub use plexd_target_api::iscsi::{ChapConfig, LunConfig, TargetNodeConfig};
use std::path::PathBuf;

/// Default portal when none is configured.
pub const DEFAULT_PORTAL: &str = "127.0.0.1:3260";
/// Default commands outstanding per session (the CmdSN window).
pub const DEFAULT_QUEUE_DEPTH: u32 = 64;
/// Largest queue depth accepted.
pub const MAX_QUEUE_DEPTH: u32 = 256;
/// Default seconds a connection may stay blocked on send (its socket accepting
/// nothing) before it is dropped and its buffers freed.
pub const DEFAULT_SEND_TIMEOUT_S: u64 = 30;

/// The whole `[iscsi]` table.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IscsiConfig {
    /// `address:port` to listen on; default `127.0.0.1:3260`. Port 0 picks a free port
    /// ([`crate::frontend::iscsi::IscsiFrontend::portal`] tells which).
    #[serde(default)]
    pub portal: Option<String>,
    /// Target nodes.
    #[serde(default)]
    pub targets: Vec<TargetNodeConfig>,
    /// Folder for persistent reservation state (one small file per LUN). None keeps
    /// reservations in memory only.
    #[serde(default)]
    pub pr_dir: Option<PathBuf>,
    /// Commands outstanding per session (1..=256, default 64).
    #[serde(default)]
    pub queue_depth: Option<u32>,
    /// Seconds of silence before the target pings a connection with NOP-In (0: never;
    /// default 30).
    #[serde(default)]
    pub nop_in_interval_s: Option<u64>,
    /// Seconds the target waits for the NOP-Out answer before closing (default 30).
    #[serde(default)]
    pub nop_in_timeout_s: Option<u64>,
    /// CHAP required on discovery sessions (default: none).
    #[serde(default)]
    pub discovery_chap: Option<ChapConfig>,
    /// Seconds a connection may stay blocked on send (the initiator reads nothing)
    /// before it is dropped and its buffers freed (default 30, at least 1).
    #[serde(default)]
    pub send_timeout_s: Option<u64>,
}

impl IscsiConfig {
    /// The portal address, defaulted.
    pub fn portal(&self) -> &str {
        self.portal.as_deref().unwrap_or(DEFAULT_PORTAL)
    }
    /// The queue depth, defaulted and clamped.
    pub fn queue_depth(&self) -> u32 {
        self.queue_depth
            .unwrap_or(DEFAULT_QUEUE_DEPTH)
            .clamp(1, MAX_QUEUE_DEPTH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip() {
        let t = r#"
            portal = "127.0.0.1:3260"
            pr_dir = "/tmp/pr"
            [[targets]]
            iqn = "iqn.2026-11.io.plexd:demo"
            alias = "demo"
            luns = [{ lun = 0, bdev = "vol0" }]
            allow = ["iqn.1994-05.com.redhat:host1"]
            chap = { user = "u", secret = "0123456789ab" }
        "#;
        let c: IscsiConfig = toml::from_str(t).unwrap();
        assert_eq!(c.targets[0].luns[0].bdev, "vol0");
        assert_eq!(c.portal(), "127.0.0.1:3260");
        assert_eq!(c.queue_depth(), DEFAULT_QUEUE_DEPTH);
        let back: IscsiConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        assert!(toml::from_str::<IscsiConfig>("bogus = 1").is_err());
    }
}
