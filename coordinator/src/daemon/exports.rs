//! Volume exports (`plexctl export`): what this node's iSCSI target must serve, and
//! bringing the target in line with it.
//!
//! An export is part of the disk group configuration (`objects::Export`), so it goes
//! through the transaction like any change and every node learns it. Each node serves
//! the exports that name it (or every node): one iSCSI target per export, the volume
//! bdev `DG.VOL` as LUN 0, on the export's portal or the node's own (`iscsi_portal` in
//! the cluster file). Every node derives the LUN's device identity from the disk
//! group id and the volume name, so a host sees one device over several paths.
//!
//! The targets plexd manages carry the alias [`ALIAS_PREFIX`]`DG.VOL`; targets from
//! the target's own config file are never touched.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use plexd_target::api::KernelClient;
use plexd_target::frontend::iscsi::{LunConfig, TargetNodeConfig};
use plexd_target::frontend::scsi::alua::{Alua, AluaState, PortGroup};

use super::kernel::volume_bdev;
use crate::core::{ErrorKind, RequestError};
use crate::objects::{Change, DiskGroupConfig, Export, ExportProtocol};

/// Alias prefix of the iSCSI targets plexd creates.
pub const ALIAS_PREFIX: &str = "plexd:";

/// One iSCSI target this node serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSpec {
    /// The volume bdev (`DG.VOL`).
    pub bdev: String,
    /// The LUN's device identity (same on every node).
    pub device_id: String,
    /// Where to listen.
    pub portal: String,
    /// The volume is shared: the cluster keeps its persistent reservations.
    pub cluster_reservations: bool,
}

/// Whether `export` is served by node `node`.
pub fn serves(export: &Export, node: &str) -> bool {
    export.nodes.is_empty() || export.nodes.iter().any(|n| n == node)
}

/// The portal `node` serves `export` on.
pub fn portal_of<'a>(export: &'a Export, node_portal: &'a str) -> &'a str {
    if export.portal.is_empty() {
        node_portal
    } else {
        &export.portal
    }
}

/// The iSCSI targets node `node` (whose own portal is `node_portal`) serves for
/// `groups`, by IQN.
pub fn desired<'a>(
    groups: impl IntoIterator<Item = &'a DiskGroupConfig>,
    node: &str,
    node_portal: &str,
) -> BTreeMap<String, ExportSpec> {
    let mut out = BTreeMap::new();
    for g in groups {
        for v in &g.volumes {
            for e in v
                .exports
                .iter()
                .filter(|e| e.protocol == ExportProtocol::Iscsi && serves(e, node))
            {
                out.insert(
                    e.iqn.clone(),
                    ExportSpec {
                        bdev: volume_bdev(&g.name, &v.name),
                        device_id: format!("{}.{}", g.id, v.name),
                        portal: portal_of(e, node_portal).to_string(),
                        cluster_reservations: g.shared,
                    },
                );
            }
        }
    }
    out
}

/// The default target name of volume `volume` of `dg` in cluster `cluster`:
/// `iqn.2026-11.io.plexd:<cluster>.<dg>.<volume>`, lowercased, other characters as '-'.
pub fn default_iqn(cluster: &str, dg: &str, volume: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| match c.to_ascii_lowercase() {
                c @ ('a'..='z' | '0'..='9' | '.' | '-') => c,
                _ => '-',
            })
            .collect()
    };
    format!(
        "iqn.2026-11.io.plexd:{}.{}.{}",
        clean(cluster),
        clean(dg),
        clean(volume)
    )
}

fn target_of(iqn: &str, spec: &ExportSpec) -> TargetNodeConfig {
    TargetNodeConfig {
        iqn: iqn.to_string(),
        alias: Some(format!("{ALIAS_PREFIX}{}", spec.bdev)),
        luns: vec![LunConfig {
            lun: 0,
            bdev: spec.bdev.clone(),
            device_id: Some(spec.device_id.clone()),
            read_only: false,
            // Set apart (sync_alua): it follows the view, not the configuration.
            alua: None,
            cluster_reservations: spec.cluster_reservations,
        }],
        ..TargetNodeConfig::default()
    }
}

/// The nodes of a cluster as ALUA sees them: (node id, name) of every configured
/// node, and the view (master, members) this node holds, if any.
pub struct AluaView<'a> {
    /// Every configured node: (id, name).
    pub nodes: &'a [(u32, String)],
    /// This node's id.
    pub me: u32,
    /// The master and the members of this node's view; None outside a view.
    pub view: Option<(u32, &'a [u32])>,
}

/// The ALUA view of `export` as node `view.me` reports it: one target port group per
/// serving node (group id = relative port id = node id); the master is
/// active/optimized (or, when it does not serve the export, the serving member with
/// the lowest id), the other members active/non-optimized, nodes outside the view
/// unavailable. A node outside any view reports every group but its own unavailable
/// and its own by the lease (its target makes it unavailable once fenced).
pub fn alua_of(export: &Export, v: &AluaView<'_>) -> Option<Alua> {
    let serving: Vec<u32> = v
        .nodes
        .iter()
        .filter(|(_, name)| serves(export, name))
        .map(|(id, _)| *id)
        .collect();
    let me = u16::try_from(v.me).ok()?;
    if !serving.contains(&v.me) || serving.iter().any(|&id| u16::try_from(id).is_err()) {
        return None;
    }
    let optimized = v.view.and_then(|(master, members)| {
        if serving.contains(&master) {
            Some(master)
        } else {
            serving
                .iter()
                .copied()
                .filter(|id| members.contains(id))
                .min()
        }
    });
    let groups = serving
        .iter()
        .map(|&id| {
            let state = match v.view {
                _ if Some(id) == optimized => AluaState::ActiveOptimized,
                Some((_, members)) if members.contains(&id) => AluaState::ActiveNonOptimized,
                None if id == v.me => AluaState::ActiveNonOptimized,
                _ => AluaState::Unavailable,
            };
            PortGroup {
                id: id as u16,
                state,
                ports: vec![id as u16],
            }
        })
        .collect();
    Some(Alua {
        local_group: me,
        relative_port: me,
        groups,
    })
}

/// Gives each served export's LUN the ALUA view `alua_by_iqn` holds for it. Returns
/// the errors, each naming the target.
pub fn sync_alua(k: &KernelClient, alua_by_iqn: &BTreeMap<String, Alua>) -> Vec<String> {
    let targets = match k.iscsi_targets() {
        Ok(t) => t,
        Err(e) => return vec![format!("iscsi targets: {e}")],
    };
    let mut errors = Vec::new();
    for t in targets.iter().filter(|t| managed(t)) {
        let Some(want) = alua_by_iqn.get(&t.iqn) else {
            continue;
        };
        for l in t.luns.iter().filter(|l| l.alua.as_ref() != Some(want)) {
            if let Err(e) = k.iscsi_set_alua(&t.iqn, l.lun, want) {
                errors.push(format!(
                    "iscsi target {} lun {}: set ALUA: {e}",
                    t.iqn, l.lun
                ));
            }
        }
    }
    errors
}

fn managed(t: &TargetNodeConfig) -> bool {
    t.alias
        .as_deref()
        .is_some_and(|a| a.starts_with(ALIAS_PREFIX))
}

/// Removes the managed targets that `desired` does not hold as they are (before the
/// volumes they map are deleted). Returns the errors, each naming the target.
pub fn remove_stale(k: &KernelClient, desired: &BTreeMap<String, ExportSpec>) -> Vec<String> {
    let targets = match k.iscsi_targets() {
        Ok(t) => t,
        Err(e) => return vec![format!("iscsi targets: {e}")],
    };
    let mut errors = Vec::new();
    for t in targets.iter().filter(|t| managed(t)) {
        let keep = desired.get(&t.iqn).is_some_and(|spec| {
            let want = target_of(&t.iqn, spec);
            let mut have = t.luns.clone();
            for l in &mut have {
                l.alua = None;
            }
            want.luns == have && want.alias == t.alias
        });
        if !keep {
            match k.iscsi_remove_target(&t.iqn) {
                Ok(()) => log::info!("data plane: iscsi target {} removed", t.iqn),
                Err(e) => errors.push(format!("iscsi target {}: remove: {e}", t.iqn)),
            }
        }
    }
    errors
}

/// Creates the targets of `desired` the target lacks, listening on their portals
/// first. Returns the errors, each naming the target or portal.
pub fn add_missing(k: &KernelClient, desired: &BTreeMap<String, ExportSpec>) -> Vec<String> {
    if desired.is_empty() {
        return Vec::new();
    }
    let mut errors = Vec::new();
    let mut portals: Vec<SocketAddr> = k.iscsi_portals().unwrap_or_default();
    let existing: Vec<String> = match k.iscsi_targets() {
        Ok(t) => t.into_iter().map(|t| t.iqn).collect(),
        Err(e) => return vec![format!("iscsi targets: {e}")],
    };
    for (iqn, spec) in desired {
        match spec.portal.parse::<SocketAddr>() {
            Ok(addr) if !portals.contains(&addr) => match k.iscsi_add_portal(&spec.portal) {
                Ok(bound) => {
                    log::info!("data plane: iscsi portal {bound} listening");
                    portals.push(addr);
                }
                Err(e) => {
                    errors.push(format!("iscsi portal {} (for {iqn}): {e}", spec.portal));
                    continue;
                }
            },
            Ok(_) => {}
            Err(e) => {
                errors.push(format!("iscsi portal {:?} (for {iqn}): {e}", spec.portal));
                continue;
            }
        }
        if existing.contains(iqn) {
            continue;
        }
        match k.iscsi_add_target(&target_of(iqn, spec)) {
            Ok(()) => log::info!(
                "data plane: iscsi target {iqn} exports {} on {}",
                spec.bdev,
                spec.portal
            ),
            Err(e) => errors.push(format!("iscsi target {iqn}: {e}")),
        }
    }
    errors
}

/// The slave check of an export: this node can serve it (its portal is one its
/// target listens on already, or one it can bind).
pub fn check(k: &KernelClient, portal: &str) -> Result<(), String> {
    let addr: SocketAddr = portal
        .parse()
        .map_err(|e| format!("iscsi portal {portal:?}: {e} (want address:port)"))?;
    if k.iscsi_portals().unwrap_or_default().contains(&addr) {
        return Ok(());
    }
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| format!("iscsi portal {portal}: cannot listen: {e}"))
}

/// The volumes a change would take away from hosts on this node (`dg destroy`,
/// `dg deport`, `vol rm`): their bdev names with the volume names, given the
/// node's group configuration `g` (the group the change is about).
pub fn volumes_taken_away(change: &Change, g: &DiskGroupConfig) -> Vec<(String, String)> {
    match change {
        Change::DgDestroy { .. } | Change::DgDeport { .. } => g
            .volumes
            .iter()
            .map(|v| (volume_bdev(&g.name, &v.name), v.name.clone()))
            .collect(),
        Change::VolRm { volume, .. } => vec![(volume_bdev(&g.name, volume), volume.clone())],
        _ => Vec::new(),
    }
}

/// The local check of a change that takes volumes away from hosts: refused while an
/// iSCSI session on this node's data plane is logged in to a target that maps one of
/// `volumes` (`(bdev, volume)`), whatever `--force` says. The error names the disk
/// group, the volume, the node, the initiator and what to do.
pub fn check_no_sessions(
    k: &KernelClient,
    node: &str,
    dg: &str,
    volumes: &[(String, String)],
) -> Result<(), RequestError> {
    if volumes.is_empty() {
        return Ok(());
    }
    let failed = |e: String| RequestError::new(ErrorKind::Failed, node, e);
    let targets = k
        .iscsi_targets()
        .map_err(|e| failed(format!("node {node}: disk group {dg}: cannot list iSCSI targets to check for host sessions: {e}")))?;
    let mapping: Vec<(&str, &str)> = targets
        .iter()
        .filter_map(|t| {
            let volume = t.luns.iter().find_map(|l| {
                volumes
                    .iter()
                    .find(|(bdev, _)| *bdev == l.bdev)
                    .map(|(_, v)| v.as_str())
            })?;
            Some((t.iqn.as_str(), volume))
        })
        .collect();
    if mapping.is_empty() {
        return Ok(());
    }
    let sessions = k.iscsi_sessions().map_err(|e| {
        failed(format!(
            "node {node}: disk group {dg}: cannot list iSCSI sessions: {e}"
        ))
    })?;
    let busy: Vec<_> = sessions
        .iter()
        .filter_map(|s| {
            mapping
                .iter()
                .find(|(iqn, _)| *iqn == s.target)
                .map(|(iqn, vol)| (s, *iqn, *vol))
        })
        .collect();
    let Some((s, iqn, volume)) = busy.first() else {
        return Ok(());
    };
    let more = match busy.len() {
        1 => String::new(),
        n => format!(" ({} more sessions)", n - 1),
    };
    Err(RequestError::new(ErrorKind::InUse, node, format!(
        "node {node}: disk group {dg}: volume {volume} is in use: host {} ({}) is logged in to {iqn} on this node{more}; log the host out (iscsiadm -m node -T {iqn} --logout) and retry",
        s.initiator, s.peer
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::test_support::cluster;
    use crate::objects::VolumeLayout;

    fn exported(nodes: &[&str], portal: &str) -> Vec<DiskGroupConfig> {
        let c = cluster(&[("disk01", 1 << 30)])
            .apply(&Change::VolCreate {
                dg: "dg1".into(),
                volume: "vol1".into(),
                size_bytes: 16 << 20,
                layout: VolumeLayout::Concat,
            })
            .unwrap()
            .apply(&Change::VolExport {
                dg: "dg1".into(),
                volume: "vol1".into(),
                export: Export {
                    protocol: ExportProtocol::Iscsi,
                    iqn: default_iqn("Test_1", "dg1", "vol1"),
                    nodes: nodes.iter().map(|n| n.to_string()).collect(),
                    portal: portal.into(),
                },
            })
            .unwrap();
        c.disk_groups
    }

    fn export(nodes: &[&str]) -> Export {
        Export {
            protocol: ExportProtocol::Iscsi,
            iqn: default_iqn("c", "dg1", "vol1"),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
            portal: String::new(),
        }
    }

    fn states(a: &Alua) -> Vec<(u16, AluaState)> {
        a.groups.iter().map(|g| (g.id, g.state)).collect()
    }

    #[test]
    fn alua_prefers_the_master_and_marks_nodes_outside_the_view_unavailable() {
        use AluaState::*;
        let nodes: Vec<(u32, String)> = vec![(1, "a".into()), (2, "b".into()), (3, "c".into())];
        let view = |me, master, members: &'static [u32]| AluaView {
            nodes: &nodes,
            me,
            view: Some((master, members)),
        };
        let a = alua_of(&export(&[]), &view(2, 1, &[1, 2])).unwrap();
        assert_eq!((a.local_group, a.relative_port), (2, 2));
        assert!(a.validate().is_ok());
        assert_eq!(
            states(&a),
            [
                (1, ActiveOptimized),
                (2, ActiveNonOptimized),
                (3, Unavailable)
            ]
        );
        // The master does not serve it: the lowest serving member is preferred.
        let a = alua_of(&export(&["b", "c"]), &view(3, 1, &[1, 2, 3])).unwrap();
        assert_eq!(states(&a), [(2, ActiveOptimized), (3, ActiveNonOptimized)]);
        // A node that does not serve the export reports nothing.
        assert!(alua_of(&export(&["b"]), &view(3, 1, &[1, 2, 3])).is_none());
        // Outside any view: the others unavailable, its own left to the lease.
        let out = AluaView {
            nodes: &nodes,
            me: 3,
            view: None,
        };
        let a = alua_of(&export(&[]), &out).unwrap();
        assert_eq!(
            states(&a),
            [(1, Unavailable), (2, Unavailable), (3, ActiveNonOptimized)]
        );
    }

    #[test]
    fn every_node_or_the_named_ones_serve_an_export_with_one_identity() {
        let all = exported(&[], "");
        let a = desired(&all, "a", "127.0.0.1:3260");
        let b = desired(&all, "b", "127.0.0.1:3261");
        let iqn = "iqn.2026-11.io.plexd:test-1.dg1.vol1";
        assert_eq!(a[iqn].bdev, "dg1.vol1");
        assert_eq!(a[iqn].portal, "127.0.0.1:3260");
        assert_eq!(b[iqn].portal, "127.0.0.1:3261");
        assert_eq!(a[iqn].device_id, b[iqn].device_id, "multipath identity");
        let only_b = exported(&["b"], "127.0.0.1:3999");
        assert!(desired(&only_b, "a", "127.0.0.1:3260").is_empty());
        assert_eq!(
            desired(&only_b, "b", "127.0.0.1:3261")[iqn].portal,
            "127.0.0.1:3999"
        );
    }

    #[test]
    fn managed_targets_are_recognised_by_their_alias() {
        let spec = ExportSpec {
            bdev: "dg1.vol1".into(),
            device_id: "x.vol1".into(),
            portal: "127.0.0.1:3260".into(),
            cluster_reservations: true,
        };
        let t = target_of("iqn.2026-11.io.plexd:t", &spec);
        assert!(managed(&t));
        assert_eq!(t.luns[0].device_id.as_deref(), Some("x.vol1"));
        assert!(t.luns[0].cluster_reservations, "a shared volume's LUN");
        assert!(!managed(&TargetNodeConfig {
            iqn: "iqn.2026-11.io.plexd:static".into(),
            ..TargetNodeConfig::default()
        }));
    }
}
