//! iSCSI exports as the kernel interface (and `[iscsi]` in plexd-target's
//! configuration file) describes them, and sessions as listed.

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
    pub alua: Option<crate::scsi::alua::Alua>,
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

/// A session as listed by the management API.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionInfo {
    /// TSIH.
    pub tsih: u16,
    /// InitiatorName.
    pub initiator: String,
    /// ISID in hex.
    pub isid: String,
    /// TargetName (empty for discovery sessions).
    pub target: String,
    /// Reactor of the (single) connection.
    pub reactor: usize,
    /// Peer address of the connection.
    pub peer: String,
    /// SCSI commands received.
    pub commands: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Failed commands.
    pub errors: u64,
    /// Pool buffers the connection holds now.
    #[serde(default)]
    pub buffers_held: u64,
    /// Commands waiting for a pool buffer now.
    #[serde(default)]
    pub cmds_waiting_buf: u64,
    /// Milliseconds spent blocked on send (the initiator not reading), in total.
    #[serde(default)]
    pub send_blocked_ms: u64,
}
