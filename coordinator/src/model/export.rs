//! Exports of a volume (iSCSI targets, NVMe-oF subsystems) and their names' grammar.

use serde::{Deserialize, Serialize};

use super::*;

/// The protocol of an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportProtocol {
    /// iSCSI: one target per export, the volume as its LUN 0.
    Iscsi,
    /// NVMe-oF/TCP: one NVM subsystem per export, the volume as its namespace 1.
    Nvmf,
}

impl ExportProtocol {
    /// The name `plexctl` and the on-disk format use.
    pub fn as_str(self) -> &'static str {
        match self {
            ExportProtocol::Iscsi => "iscsi",
            ExportProtocol::Nvmf => "nvmf",
        }
    }

    /// Parses [`ExportProtocol::as_str`].
    pub fn parse(s: &str) -> Option<ExportProtocol> {
        match s {
            "iscsi" => Some(ExportProtocol::Iscsi),
            "nvmf" => Some(ExportProtocol::Nvmf),
            _ => None,
        }
    }
}

/// A volume exported to hosts by some or all nodes. Every node exporting it presents
/// the same target name and device identifiers (multipath).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    /// Protocol.
    pub protocol: ExportProtocol,
    /// The target name: an iSCSI qualified name (`iscsi`) or the NVM subsystem's
    /// NQN (`nvmf`); unique in the cluster.
    pub iqn: String,
    /// The nodes serving it, by name; empty = every node.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// `address:port` to serve it on; empty = each node's portal from the cluster
    /// file (`nvmf`: always empty, each node's `nvmf_portal`).
    #[serde(default)]
    pub portal: String,
    /// `nvmf`: the host NQNs allowed to connect; empty = any host.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
}

/// The NQN of the discovery subsystem, which no export may take.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// Checks an NVMe qualified name (a subsystem's or a host's):
/// `nqn.YYYY-MM.reversed.domain:anything`, at most 223 bytes of printable ASCII
/// without spaces; `what` names it in the error.
pub fn validate_nqn(what: &str, nqn: &str) -> Result<(), ConfigError> {
    let form_ok = nqn.strip_prefix("nqn.").is_some_and(|rest| {
        let b = rest.as_bytes();
        b.len() > 8
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[5..7].iter().all(u8::is_ascii_digit)
            && b[7] == b'.'
    });
    let chars_ok = nqn.bytes().all(|c| c.is_ascii_graphic());
    if nqn.len() > MAX_IQN_BYTES || !form_ok || !chars_ok || nqn == DISCOVERY_NQN {
        return Err(ConfigError::Invalid(format!(
            "{what} {nqn:?} is invalid: use nqn.YYYY-MM.reversed.domain:name (printable ASCII without spaces, at most {MAX_IQN_BYTES} bytes, not the discovery NQN)"
        )));
    }
    Ok(())
}

/// Most host NQNs one NVMe-oF export may allow.
pub const MAX_EXPORT_HOSTS: usize = 64;

impl Export {
    /// Checks the export's names as its protocol wants them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.protocol {
            ExportProtocol::Iscsi => {
                validate_iqn(&self.iqn)?;
                if !self.hosts.is_empty() {
                    return Err(ConfigError::Invalid(
                        "an iSCSI export takes no host NQNs (--host is for nvmf)".into(),
                    ));
                }
            }
            ExportProtocol::Nvmf => {
                validate_nqn("subsystem NQN", &self.iqn)?;
                if !self.portal.is_empty() {
                    return Err(ConfigError::Invalid(format!(
                        "an NVMe-oF export is served on each node's nvmf_portal, not on {}",
                        self.portal
                    )));
                }
                if self.hosts.len() > MAX_EXPORT_HOSTS {
                    return Err(ConfigError::Invalid(format!(
                        "{} host NQNs: at most {MAX_EXPORT_HOSTS}",
                        self.hosts.len()
                    )));
                }
                for h in &self.hosts {
                    validate_nqn("host NQN", h)?;
                }
            }
        }
        Ok(())
    }
}

/// Longest iSCSI name (RFC 7143: 223 bytes).
pub const MAX_IQN_BYTES: usize = 223;
/// Longest initiator port name a reservation records (`<iqn>,i,0x<ISID>`).
pub const MAX_NEXUS_NAME_BYTES: usize = MAX_IQN_BYTES + 32;

/// Checks an iSCSI name: `iqn.YYYY-MM.reversed.domain[:anything]`, `eui.` or `naa.`
/// followed by hex digits; lowercase letters, digits, '.', '-', ':'.
pub fn validate_iqn(iqn: &str) -> Result<(), ConfigError> {
    let chars_ok = iqn
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | ':'));
    let form_ok = if let Some(rest) = iqn.strip_prefix("iqn.") {
        let date = rest.get(..7).unwrap_or("");
        let b = date.as_bytes();
        date.len() == 7
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[5..].iter().all(u8::is_ascii_digit)
            && rest.len() > 8
            && rest.as_bytes()[7] == b'.'
    } else if let Some(hex) = iqn.strip_prefix("eui.") {
        hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit())
    } else if let Some(hex) = iqn.strip_prefix("naa.") {
        matches!(hex.len(), 16 | 32) && hex.chars().all(|c| c.is_ascii_hexdigit())
    } else {
        false
    };
    if iqn.len() > MAX_IQN_BYTES || !chars_ok || !form_ok {
        return Err(ConfigError::Invalid(format!(
            "iSCSI name {iqn:?} is invalid: use iqn.YYYY-MM.reversed.domain[:name] (lowercase letters, digits, '.', '-', ':'; at most {MAX_IQN_BYTES} bytes)"
        )));
    }
    Ok(())
}
