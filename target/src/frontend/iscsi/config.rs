//! Configuration of the iSCSI frontend, as it appears under `[iscsi]` in the
//! target's TOML config file (see `docs/ISCSI.md`).

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

/// One target node: `[[iscsi.targets]]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetNodeConfig {
    /// The target's IQN, e.g. `iqn.2026-11.io.plexd:demo`.
    pub iqn: String,
    /// Human-readable TargetAlias.
    #[serde(default)]
    pub alias: Option<String>,
    /// LUN mappings.
    #[serde(default)]
    pub luns: Vec<LunConfig>,
    /// Initiator IQNs allowed to log in; empty allows every initiator.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Initiator IQNs refused even when `allow` lists them (deny wins). With an
    /// empty `allow`, every initiator but these may log in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
    /// CHAP secrets; when set, initiators must authenticate.
    #[serde(default)]
    pub chap: Option<ChapConfig>,
}

/// One LUN: `{ lun = 0, bdev = "vol0" }`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunConfig {
    /// LUN number (0..=255 in the flat addressing used here).
    pub lun: u64,
    /// Name of the bdev or volume registered in the target.
    pub bdev: String,
    /// The identity used for VPD page 83h/80h; defaults to the bdev name. Give every
    /// node exporting one shared volume the same value (the volume's uuid) so hosts
    /// see one device over several paths.
    #[serde(default)]
    pub device_id: Option<String>,
    /// Reject writes with DATA PROTECT / WRITE PROTECTED.
    #[serde(default)]
    pub read_only: bool,
    /// ALUA target port groups of the device and this port's group (docs/ISCSI.md,
    /// "ALUA"); absent: one group 1 with this port (relative port 1), active/optimized.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alua: Option<super::super::scsi::alua::Alua>,
    /// Persistent reservations kept by a cluster (a shared volume's LUN): the state
    /// comes from `setReservations`, a PR OUT goes to the coordinator as a `prOut`
    /// event. Set by plexd for its exports; not for a standalone target.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster_reservations: bool,
}

/// CHAP secrets of a target (or of discovery).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChapConfig {
    /// CHAP_N the initiator must present.
    pub user: String,
    /// Secret shared with the initiator (12..=255 bytes recommended).
    pub secret: String,
    /// Name the target answers with in mutual CHAP.
    #[serde(default)]
    pub mutual_user: Option<String>,
    /// Secret the target proves to the initiator; set to require mutual CHAP support.
    #[serde(default)]
    pub mutual_secret: Option<String>,
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
