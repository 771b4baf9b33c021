//! Asymmetric logical unit access (ALUA, SPC-4 5.16) as pure logic: which target
//! port groups a device has, which one this target's port is in, their access
//! states, and the bytes that report them (INQUIRY TPGS, the VPD 83h relative target
//! port and target port group designators, REPORT TARGET PORT GROUPS).
//!
//! In a plexd cluster every node exporting a shared volume is its own target port
//! group (id = node id) with one port (relative target port = node id), so a host
//! sees one device over one path per node and learns from any path which node is
//! preferred (active/optimized), which others serve too (active/non-optimized) and
//! which do not (unavailable: out of the cluster, or fenced by the data-plane lease).
//! The coordinator sets the groups and states; the frontend reports this port's
//! own group as unavailable while the LUN is fenced here, whatever it was told.

use serde::{Deserialize, Serialize};

use super::bytes::{be16, be32, put16, put32};
use super::sense::{self, Sense};

/// Most target port groups one LUN may list (one per node of a cluster).
pub const MAX_PORT_GROUPS: usize = 64;
/// Most ports one target port group may list.
pub const MAX_PORTS_PER_GROUP: usize = 16;
/// Implicit transition time reported in the extended RTPG header, seconds: how long a
/// host should allow for a group to leave the transitioning state (a takeover waits
/// out the lost master's lease, about 6 s by default).
pub const IMPLICIT_TRANSITION_SECS: u8 = 10;

/// Access state of a target port group (SPC-4 table 'asymmetric access state').
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AluaState {
    /// Active/optimized: the preferred path.
    ActiveOptimized,
    /// Active/non-optimized: serves, but another path is preferred.
    ActiveNonOptimized,
    /// Standby: not reported by plexd (no command set is limited that way).
    Standby,
    /// Unavailable: the port serves no media access commands.
    Unavailable,
    /// Transitioning between two states.
    Transitioning,
}

impl AluaState {
    /// The 4-bit code of the state.
    pub fn code(self) -> u8 {
        match self {
            AluaState::ActiveOptimized => 0x0,
            AluaState::ActiveNonOptimized => 0x1,
            AluaState::Standby => 0x2,
            AluaState::Unavailable => 0x3,
            AluaState::Transitioning => 0xf,
        }
    }
}

/// One target port group: its id, state and the relative target port ids in it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortGroup {
    /// Target port group id (1..=65535).
    pub id: u16,
    /// Its access state.
    pub state: AluaState,
    /// Relative target port ids of its ports (1..=65535).
    pub ports: Vec<u16>,
}

/// The ALUA view of one LUN as this target reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alua {
    /// The group this target's port belongs to.
    pub local_group: u16,
    /// This target's port (its relative target port id).
    pub relative_port: u16,
    /// Every group of the device, this one included.
    pub groups: Vec<PortGroup>,
}

impl Default for Alua {
    /// A target on its own: one group (1) with one port (1), active/optimized.
    fn default() -> Alua {
        Alua {
            local_group: 1,
            relative_port: 1,
            groups: vec![PortGroup {
                id: 1,
                state: AluaState::ActiveOptimized,
                ports: vec![1],
            }],
        }
    }
}

impl Alua {
    /// Checks the view is well formed: ids non-zero and unique, the local port in
    /// the local group, bounded sizes. The error says what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.groups.is_empty() || self.groups.len() > MAX_PORT_GROUPS {
            return Err(format!(
                "alua: {} port groups (1 to {MAX_PORT_GROUPS} allowed)",
                self.groups.len()
            ));
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut ports = std::collections::BTreeSet::new();
        for g in &self.groups {
            if g.id == 0 || !ids.insert(g.id) {
                return Err(format!("alua: port group id {} is 0 or given twice", g.id));
            }
            if g.ports.is_empty() || g.ports.len() > MAX_PORTS_PER_GROUP {
                return Err(format!(
                    "alua: port group {} has {} ports (1 to {MAX_PORTS_PER_GROUP} allowed)",
                    g.id,
                    g.ports.len()
                ));
            }
            for &p in &g.ports {
                if p == 0 || !ports.insert(p) {
                    return Err(format!(
                        "alua: relative port {p} (group {}) is 0 or in two groups",
                        g.id
                    ));
                }
            }
        }
        let local = self
            .groups
            .iter()
            .find(|g| g.id == self.local_group)
            .ok_or_else(|| format!("alua: local group {} is not listed", self.local_group))?;
        if !local.ports.contains(&self.relative_port) {
            return Err(format!(
                "alua: relative port {} is not in local group {}",
                self.relative_port, self.local_group
            ));
        }
        Ok(())
    }

    /// This view with the local group's state replaced (the LUN is fenced here:
    /// unavailable, whatever the coordinator said).
    pub fn with_local_state(mut self, state: AluaState) -> Alua {
        if let Some(g) = self.groups.iter_mut().find(|g| g.id == self.local_group) {
            g.state = state;
        }
        self
    }

    /// The state of this target's own group.
    pub fn local_state(&self) -> AluaState {
        self.groups
            .iter()
            .find(|g| g.id == self.local_group)
            .map_or(AluaState::Unavailable, |g| g.state)
    }
}

/// INQUIRY byte 5's TPGS field: implicit ALUA only (the target changes states; SET
/// TARGET PORT GROUPS is not supported).
pub const TPGS_IMPLICIT: u8 = 0x10;

/// The VPD 83h designators of the port: relative target port and target port group
/// (both associated with the target port, iSCSI protocol, binary).
pub fn port_designators(alua: &Alua) -> Vec<u8> {
    let mut b = Vec::with_capacity(16);
    for (kind, value) in [(0x14u8, alua.relative_port), (0x15, alua.local_group)] {
        b.extend_from_slice(&[0x51, kind, 0x00, 4, 0, 0]);
        b.extend_from_slice(&value.to_be_bytes());
    }
    b
}

/// Supported-state bits of every descriptor: T_SUP, U_SUP, AN_SUP, AO_SUP.
const SUPPORTED: u8 = 0x80 | 0x08 | 0x02 | 0x01;

/// REPORT TARGET PORT GROUPS (MAINTENANCE IN, service action 0Ah): the parameter
/// data for `cdb`, in the length-only or the extended header format.
pub fn report_target_port_groups(cdb: &[u8; 16], alua: &Alua) -> Result<Vec<u8>, Sense> {
    let format = cdb[1] >> 5;
    if format > 1 {
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    let alloc = be32(cdb, 6) as usize;
    let header = if format == 1 { 8 } else { 4 };
    let mut b = vec![0u8; header];
    if format == 1 {
        b[4] = 0x10; // FORMAT TYPE 1: extended header
        b[5] = IMPLICIT_TRANSITION_SECS;
    }
    for g in &alua.groups {
        let pref = if g.state == AluaState::ActiveOptimized {
            0x80
        } else {
            0
        };
        let start = b.len();
        b.resize(start + 8, 0);
        b[start] = pref | g.state.code();
        b[start + 1] = SUPPORTED;
        put16(&mut b, start + 2, g.id);
        b[start + 7] = g.ports.len() as u8;
        for &p in &g.ports {
            b.extend_from_slice(&[0, 0]);
            b.extend_from_slice(&p.to_be_bytes());
        }
    }
    let len = (b.len() - 4) as u32;
    put32(&mut b, 0, len);
    b.truncate(alloc);
    Ok(b)
}

/// The target port group of a REPORT TARGET PORT GROUPS descriptor at `at` and its
/// state code (for tests and tools that read the answer).
pub fn descriptor_at(b: &[u8], at: usize) -> Option<(u16, u8, Vec<u16>)> {
    let d = b.get(at..at + 8)?;
    let n = d[7] as usize;
    let ports = (0..n)
        .map(|i| b.get(at + 8 + i * 4..at + 12 + i * 4).map(|p| be16(p, 2)))
        .collect::<Option<Vec<u16>>>()?;
    Some((be16(d, 2), d[0] & 0x0f, ports))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_nodes() -> Alua {
        Alua {
            local_group: 2,
            relative_port: 2,
            groups: vec![
                PortGroup {
                    id: 1,
                    state: AluaState::ActiveOptimized,
                    ports: vec![1],
                },
                PortGroup {
                    id: 2,
                    state: AluaState::ActiveNonOptimized,
                    ports: vec![2],
                },
            ],
        }
    }

    fn rtpg(format: u8, alloc: u32) -> [u8; 16] {
        let mut c = [0u8; 16];
        c[0] = 0xa3;
        c[1] = (format << 5) | 0x0a;
        c[6..10].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    #[test]
    fn report_lists_every_group_with_its_state_and_ports() {
        let b = report_target_port_groups(&rtpg(0, 4096), &two_nodes()).unwrap();
        assert_eq!(be32(&b, 0) as usize, b.len() - 4);
        assert_eq!(b.len(), 4 + 2 * 12);
        assert_eq!(descriptor_at(&b, 4), Some((1, 0x0, vec![1])));
        assert_eq!(b[4] & 0x80, 0x80, "the optimized group is preferred");
        assert_eq!(descriptor_at(&b, 16), Some((2, 0x1, vec![2])));
        assert_eq!(b[16] & 0x80, 0);
        assert_eq!(b[5], SUPPORTED);
    }

    #[test]
    fn extended_header_and_allocation_length() {
        let b = report_target_port_groups(&rtpg(1, 4096), &two_nodes()).unwrap();
        assert_eq!(b[4], 0x10);
        assert_eq!(b[5], IMPLICIT_TRANSITION_SECS);
        assert_eq!(be32(&b, 0) as usize, b.len() - 4);
        assert_eq!(descriptor_at(&b, 8), Some((1, 0x0, vec![1])));
        let short = report_target_port_groups(&rtpg(0, 6), &two_nodes()).unwrap();
        assert_eq!(short.len(), 6);
        assert_eq!(be32(&short, 0), 24, "the length field is the full length");
        assert!(report_target_port_groups(&rtpg(2, 4096), &two_nodes()).is_err());
    }

    #[test]
    fn a_fenced_port_reports_its_group_unavailable() {
        let a = two_nodes().with_local_state(AluaState::Unavailable);
        assert_eq!(a.local_state(), AluaState::Unavailable);
        let b = report_target_port_groups(&rtpg(0, 4096), &a).unwrap();
        assert_eq!(descriptor_at(&b, 16), Some((2, 0x3, vec![2])));
        assert_eq!(descriptor_at(&b, 4), Some((1, 0x0, vec![1])));
    }

    #[test]
    fn designators_name_the_port_and_its_group() {
        let d = port_designators(&two_nodes());
        assert_eq!(
            d,
            [0x51, 0x14, 0, 4, 0, 0, 0, 2, 0x51, 0x15, 0, 4, 0, 0, 0, 2]
        );
    }

    #[test]
    fn validation_names_what_is_wrong() {
        assert!(Alua::default().validate().is_ok());
        assert!(two_nodes().validate().is_ok());
        let mut a = two_nodes();
        a.local_group = 3;
        assert!(a.validate().unwrap_err().contains("local group 3"));
        let mut a = two_nodes();
        a.groups[1].ports = vec![1];
        assert!(a.validate().unwrap_err().contains("two groups"));
        let mut a = two_nodes();
        a.relative_port = 1;
        assert!(a.validate().unwrap_err().contains("not in local group"));
        let mut a = two_nodes();
        a.groups[0].id = 2;
        assert!(a.validate().unwrap_err().contains("given twice"));
        let mut a = two_nodes();
        a.groups.clear();
        assert!(a.validate().is_err());
    }
}
