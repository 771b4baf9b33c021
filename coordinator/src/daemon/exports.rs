//! Volume exports (`plexctl export`): what this node's iSCSI target must serve, and
//! bringing the target in line with it.
//!
//! An export is part of the disk group configuration (`model::Export`), so it goes
//! through the transaction like any change and every node learns it. Each node serves
//! the exports that name it (or every node): one iSCSI target per export, the volume
//! bdev `DG.VOL` as LUN 0, on the export's portal or the node's own (`iscsi_portal` in
//! the cluster file). Every node derives the LUN's device identity from the disk
//! group id and the volume name, so a host sees one device over several paths.
//!
//! The targets plexd manages carry the alias [`ALIAS_PREFIX`]`DG.VOL`; targets from
//! the target's own config file are never touched.
//!
//! NVMe-oF exports (`plexctl export nvmf`) are the same idea on the target's NVMe/TCP
//! frontend: one NVM subsystem per export (model number [`NVMF_MODEL`], which marks
//! the subsystems plexd manages), the volume as namespace 1 with an identity derived
//! from the disk group id and the volume name (so every node presents one NGUID,
//! EUI-64 and UUID), on the node's own listener (`nvmf_portal` in the cluster file).
//! Each node is one ANA group and hands out its own controller id range
//! ([`NvmfNode`], from its index in the cluster file); the discovery log of each node
//! lists the listeners of every node serving the subsystem. The ANA state of the
//! node's group follows the view ([`ana_of`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use plexd_target_api::iscsi::{LunConfig, TargetNodeConfig};
use plexd_target_api::nvmf::{AnaState, NamespaceConfig, SubsystemConfig};
use plexd_target_api::scsi::alua::{Alua, AluaState, PortGroup};
use plexd_target_api::KernelClient;

use super::config::{ClusterFile, MAX_NODES};
use crate::core::{ErrorKind, RequestError};
use crate::model::volume_bdev;
use crate::model::{Change, DiskGroupConfig, Export, ExportProtocol, Volume};

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
/// `volumes` (each with its group: every volume with an export, at least), by IQN.
pub fn desired<'a>(
    volumes: impl IntoIterator<Item = (&'a DiskGroupConfig, &'a Volume)>,
    node: &str,
    node_portal: &str,
) -> BTreeMap<String, ExportSpec> {
    let mut out = BTreeMap::new();
    for (g, v) in volumes {
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

/// The default subsystem NQN of volume `volume` of `dg` in the cluster with id
/// `cluster_id`: `nqn.2026-11.io.plexd:<cluster id>.<dg>.<volume>`, lowercased, other
/// characters as '-'.
pub fn default_nqn(cluster_id: &str, dg: &str, volume: &str) -> String {
    default_iqn(cluster_id, dg, volume).replacen("iqn.", "nqn.", 1)
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

/// Model number of the NVM subsystems plexd manages (subsystems from the target's
/// own config file, with another model, are never touched).
pub const NVMF_MODEL: &str = "plexd cluster volume";

/// Controller ids each node hands out: node index i gets
/// `1 + i * CNTLID_SPAN ..= (i + 1) * CNTLID_SPAN`, all within 1..=0xFFEF.
pub const CNTLID_SPAN: u16 = (0xFFEF / MAX_NODES) as u16;

/// A node's NVMe-oF frontend settings, the same for all its subsystems.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NvmfNode {
    /// Its listener (`nvmf_portal`).
    pub listener: String,
    /// Controller ids it hands out (min, max): disjoint between nodes.
    pub cntlid_range: (u16, u16),
    /// Its ANA group: its index in the cluster file's id order, plus one.
    pub ana_group: u32,
}

impl NvmfNode {
    /// Node `name`'s settings from the cluster file (None for a node not in it).
    /// The index is the node's position in id order, which every node agrees on
    /// (the cluster handshake compares the node lists).
    pub fn of(file: &ClusterFile, name: &str) -> Option<NvmfNode> {
        let mut nodes: Vec<_> = file.nodes.iter().collect();
        nodes.sort_by_key(|n| n.id);
        let index = nodes.iter().position(|n| n.name == name)?;
        let i = u16::try_from(index)
            .ok()
            .filter(|&i| usize::from(i) < MAX_NODES)?;
        Some(NvmfNode {
            listener: nodes[index].nvmf_portal().to_string(),
            cntlid_range: (1 + i * CNTLID_SPAN, (i + 1) * CNTLID_SPAN),
            ana_group: u32::from(i) + 1,
        })
    }
}

/// One NVM subsystem this node serves (an `nvmf` export).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvmfSpec {
    /// The volume bdev (`DG.VOL`), namespace 1.
    pub bdev: String,
    /// The namespace identity (same on every node).
    pub identity: String,
    /// Host NQNs allowed; empty = any host.
    pub hosts: Vec<String>,
    /// The listeners of the other nodes serving it (for the discovery log).
    pub peers: Vec<String>,
}

/// The NVM subsystems node `node` serves for `volumes` (each with its group: every
/// volume with an export, at least), by NQN. `nodes`: every node of the cluster
/// file as (name, nvmf_portal).
pub fn desired_nvmf<'a>(
    volumes: impl IntoIterator<Item = (&'a DiskGroupConfig, &'a Volume)>,
    node: &str,
    nodes: &[(String, String)],
) -> BTreeMap<String, NvmfSpec> {
    let mut out = BTreeMap::new();
    for (g, v) in volumes {
        for e in v
            .exports
            .iter()
            .filter(|e| e.protocol == ExportProtocol::Nvmf && serves(e, node))
        {
            let peers = nodes
                .iter()
                .filter(|(name, _)| name != node && serves(e, name))
                .map(|(_, portal)| portal.clone())
                .collect();
            out.insert(
                e.iqn.clone(),
                NvmfSpec {
                    bdev: volume_bdev(&g.name, &v.name),
                    identity: format!("{}.{}", g.id, v.name),
                    hosts: e.hosts.clone(),
                    peers,
                },
            );
        }
    }
    out
}

/// The subsystem the data plane gets for `spec`.
pub fn subsystem_of(nqn: &str, spec: &NvmfSpec) -> SubsystemConfig {
    SubsystemConfig {
        nqn: nqn.to_string(),
        serial: None,
        model: Some(NVMF_MODEL.to_string()),
        hosts: spec.hosts.clone(),
        allow_any: spec.hosts.is_empty(),
        namespaces: vec![NamespaceConfig {
            nsid: 1,
            bdev: spec.bdev.clone(),
            identity: Some(spec.identity.clone()),
            read_only: false,
        }],
        peer_listeners: spec.peers.clone(),
    }
}

fn managed_nvmf(s: &SubsystemConfig) -> bool {
    s.model.as_deref() == Some(NVMF_MODEL)
}

/// Removes the managed subsystems that `desired` does not hold as they are (before
/// the volumes they map are deleted). Returns the errors, each naming the subsystem.
pub fn remove_stale_nvmf(k: &KernelClient, desired: &BTreeMap<String, NvmfSpec>) -> Vec<String> {
    let subs = match k.nvmf_subsystems() {
        Ok((s, _)) => s,
        Err(e) => return vec![format!("nvmf subsystems: {e}")],
    };
    let mut errors = Vec::new();
    for s in subs.iter().filter(|s| managed_nvmf(s)) {
        let keep = desired
            .get(&s.nqn)
            .is_some_and(|spec| subsystem_of(&s.nqn, spec) == *s);
        if !keep {
            match k.nvmf_remove_subsystem(&s.nqn) {
                Ok(()) => log::info!("data plane: nvmf subsystem {} removed", s.nqn),
                Err(e) => errors.push(format!("nvmf subsystem {}: remove: {e}", s.nqn)),
            }
        }
    }
    errors
}

/// Starts the NVMe-oF frontend with this node's settings, listens on its listener
/// and creates the subsystems of `desired` the target lacks. Returns the errors,
/// each naming the subsystem, listener or frontend.
pub fn add_missing_nvmf(
    k: &KernelClient,
    node: &NvmfNode,
    desired: &BTreeMap<String, NvmfSpec>,
) -> Vec<String> {
    if desired.is_empty() {
        return Vec::new();
    }
    if let Err(e) = k.nvmf_start(node.cntlid_range, node.ana_group) {
        return vec![format!("nvmf frontend: {e}")];
    }
    let (existing, listeners) = match k.nvmf_subsystems() {
        Ok(x) => x,
        Err(e) => return vec![format!("nvmf subsystems: {e}")],
    };
    match node.listener.parse::<SocketAddr>() {
        Ok(addr) if listeners.contains(&addr) => {}
        Ok(_) => match k.nvmf_add_listener(&node.listener) {
            Ok(bound) => log::info!("data plane: nvmf listener {bound} listening"),
            Err(e) => return vec![format!("nvmf listener {}: {e}", node.listener)],
        },
        Err(e) => return vec![format!("nvmf listener {:?}: {e}", node.listener)],
    }
    let mut errors = Vec::new();
    for (nqn, spec) in desired {
        if existing.iter().any(|s| s.nqn == *nqn) {
            continue;
        }
        match k.nvmf_add_subsystem(&subsystem_of(nqn, spec)) {
            Ok(()) => log::info!(
                "data plane: nvmf subsystem {nqn} exports {} on {}",
                spec.bdev,
                node.listener
            ),
            Err(e) => errors.push(format!("nvmf subsystem {nqn}: {e}")),
        }
    }
    errors
}

/// The ANA state of this node's group: optimized on the master, non-optimized on
/// the other members of the view, inaccessible outside any view (no quorum, or
/// left the cluster). One state for every subsystem of the node (one group per
/// node): when the master serves none of an export, all its paths are
/// non-optimized, which hosts use as well.
pub fn ana_of(me: u32, view: Option<(u32, &[u32])>) -> AnaState {
    match view {
        Some((master, _)) if master == me => AnaState::Optimized,
        Some((_, members)) if members.contains(&me) => AnaState::NonOptimized,
        _ => AnaState::Inaccessible,
    }
}

/// Sets this node's ANA state when it differs. Returns the errors.
pub fn sync_ana(k: &KernelClient, state: AnaState) -> Vec<String> {
    match k.nvmf_set_ana(state) {
        Ok(group) => {
            log::debug!("data plane: nvmf ANA group {group} {state:?}");
            Vec::new()
        }
        Err(e) => vec![format!("nvmf ANA state {state:?}: {e}")],
    }
}

/// The slave check of an NVMe-oF export: this node can listen on its `nvmf_portal`
/// (it listens there already, or can bind it).
pub fn check_nvmf(k: &KernelClient, listener: &str) -> Result<(), String> {
    let addr: SocketAddr = listener
        .parse()
        .map_err(|e| format!("nvmf_portal {listener:?}: {e} (want address:port)"))?;
    if k.nvmf_subsystems()
        .map(|(_, l)| l.contains(&addr))
        .unwrap_or(false)
    {
        return Ok(());
    }
    std::net::TcpListener::bind(addr)
        .map(drop)
        .map_err(|e| format!("nvmf_portal {listener}: cannot listen: {e}"))
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

/// How a change takes volumes from the hosts that use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Removed or given up (`vol rm`, `dg destroy`, `dg deport`).
    Removed,
    /// Cut short (`vol shrink` without `--force`).
    CutShort,
}

/// The volumes a change would take away from hosts on this node (`dg destroy`,
/// `dg deport`, `vol rm`, `dg fail-disk --force` of the disk holding a volume's
/// only ACTIVE plexes; a `vol shrink` without `--force` cuts one short): their
/// bdev names with the volume names, given the node's group configuration `g` (the
/// group the change is about), and how.
pub fn volumes_taken_away(change: &Change, g: &DiskGroupConfig) -> (Vec<(String, String)>, Taken) {
    let one = |volume: &String| vec![(volume_bdev(&g.name, volume), volume.clone())];
    match change {
        Change::DgDestroy { .. } | Change::DgDeport { .. } => (
            g.volumes
                .iter()
                .map(|v| (volume_bdev(&g.name, &v.name), v.name.clone()))
                .collect(),
            Taken::Removed,
        ),
        Change::VolRm { volume, .. } => (one(volume), Taken::Removed),
        Change::DgFailDisk { force: true, .. } => {
            // Those left without an ACTIVE plex are served nowhere after it.
            let after = crate::model::apply_dg(g, change);
            let lost = after.iter().flat_map(|a| &a.volumes).filter(|v| {
                v.active_plexes() == 0 && g.volume(&v.name).is_some_and(|b| b.active_plexes() > 0)
            });
            (
                lost.map(|v| (volume_bdev(&g.name, &v.name), v.name.clone()))
                    .collect(),
                Taken::Removed,
            )
        }
        Change::VolShrink {
            volume,
            force: false,
            ..
        } => (one(volume), Taken::CutShort),
        _ => (Vec::new(), Taken::Removed),
    }
}

/// The local check of a change that takes volumes away from hosts: refused while an
/// iSCSI session on this node's data plane is logged in to a target, or an NVMe/TCP
/// host is connected to a subsystem, that maps one of `volumes` (`(bdev, volume)`),
/// whatever `--force` says. The error names the disk group, the volume, the node,
/// the host and what to do.
pub fn check_no_sessions(
    k: &KernelClient,
    node: &str,
    dg: &str,
    (volumes, taken): (&[(String, String)], Taken),
) -> Result<(), RequestError> {
    if volumes.is_empty() {
        return Ok(());
    }
    check_no_iscsi_sessions(k, node, dg, volumes, taken)?;
    check_no_nvmf_hosts(k, node, dg, volumes, taken)
}

/// What to do about a host that uses a volume a change takes (`leave`: how the
/// host logs out or disconnects).
fn what_to_do(taken: Taken, leave: &str) -> String {
    match taken {
        Taken::Removed => format!("{leave} and retry"),
        Taken::CutShort => format!(
            "a shrink loses what the host keeps past the new end: shrink that first (its file system) and retry with --force, or {leave}"
        ),
    }
}

fn volume_of<'a>(volumes: &'a [(String, String)], bdev: &str) -> Option<&'a str> {
    volumes
        .iter()
        .find(|(b, _)| b == bdev)
        .map(|(_, v)| v.as_str())
}

/// The first of a node's host connections `conns` (iSCSI sessions, NVMe-oF
/// controllers) to an export in `mapping` (`(target name, volume)`; `target_of`
/// names a connection's), with that target and volume, and how many such
/// connections there are.
fn first_user<'a, C>(
    mapping: &[(&'a str, &'a str)],
    conns: &'a [C],
    target_of: impl Fn(&C) -> &str,
) -> Option<(&'a C, &'a str, &'a str, usize)> {
    let busy: Vec<_> = conns
        .iter()
        .filter_map(|c| {
            mapping
                .iter()
                .find(|(target, _)| *target == target_of(c))
                .map(|(target, vol)| (c, *target, *vol))
        })
        .collect();
    busy.first()
        .map(|&(c, target, vol)| (c, target, vol, busy.len()))
}

/// ` (N more sessions)` after the first of `count`; empty for one.
fn more_note(count: usize, what: &str) -> String {
    match count {
        0 | 1 => String::new(),
        n => format!(" ({} more {what})", n - 1),
    }
}

fn check_no_iscsi_sessions(
    k: &KernelClient,
    node: &str,
    dg: &str,
    volumes: &[(String, String)],
    taken: Taken,
) -> Result<(), RequestError> {
    let failed = |e: String| RequestError::new(ErrorKind::Failed, node, e);
    let targets = k
        .iscsi_targets()
        .map_err(|e| failed(format!("node {node}: disk group {dg}: cannot list iSCSI targets to check for host sessions: {e}")))?;
    let mapping: Vec<(&str, &str)> = targets
        .iter()
        .filter_map(|t| {
            let volume = t.luns.iter().find_map(|l| volume_of(volumes, &l.bdev))?;
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
    let Some((s, iqn, volume, count)) = first_user(&mapping, &sessions, |s| &s.target) else {
        return Ok(());
    };
    let more = more_note(count, "sessions");
    let todo = what_to_do(
        taken,
        &format!("log the host out (iscsiadm -m node -T {iqn} --logout)"),
    );
    Err(RequestError::new(ErrorKind::InUse, node, format!(
        "node {node}: disk group {dg}: volume {volume} is in use: host {} ({}) is logged in to {iqn} on this node{more}; {todo}",
        s.initiator, s.peer
    )))
}

fn check_no_nvmf_hosts(
    k: &KernelClient,
    node: &str,
    dg: &str,
    volumes: &[(String, String)],
    taken: Taken,
) -> Result<(), RequestError> {
    let failed = |e: String| RequestError::new(ErrorKind::Failed, node, e);
    let (subs, _) = k.nvmf_subsystems().map_err(|e| {
        failed(format!(
            "node {node}: disk group {dg}: cannot list NVMe-oF subsystems to check for connected hosts: {e}"
        ))
    })?;
    let mapping: Vec<(&str, &str)> = subs
        .iter()
        .filter_map(|s| {
            let volume = s
                .namespaces
                .iter()
                .find_map(|n| volume_of(volumes, &n.bdev))?;
            Some((s.nqn.as_str(), volume))
        })
        .collect();
    if mapping.is_empty() {
        return Ok(());
    }
    let ctrls = k.nvmf_controllers().map_err(|e| {
        failed(format!(
            "node {node}: disk group {dg}: cannot list NVMe-oF controllers: {e}"
        ))
    })?;
    let Some((c, nqn, volume, count)) = first_user(&mapping, &ctrls, |c| &c.subnqn) else {
        return Ok(());
    };
    let more = more_note(count, "controllers");
    let todo = what_to_do(
        taken,
        &format!("disconnect the host (nvme disconnect -n {nqn})"),
    );
    Err(RequestError::new(ErrorKind::InUse, node, format!(
        "node {node}: disk group {dg}: volume {volume} is in use: host {} ({}) is connected to {nqn} on this node (controller {}){more}; {todo}",
        c.hostnqn, c.peer, c.cntlid
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every volume of `groups`, with its group.
    fn every_volume(
        groups: &[DiskGroupConfig],
    ) -> impl Iterator<Item = (&DiskGroupConfig, &Volume)> {
        groups
            .iter()
            .flat_map(|g| g.volumes.iter().map(move |v| (g, &**v)))
    }
    use crate::model::test_support::cluster;
    use crate::model::VolumeLayout;

    fn exported(nodes: &[&str], portal: &str) -> Vec<DiskGroupConfig> {
        let c = cluster(&[("disk01", 1 << 30)])
            .apply(&Change::VolCreate {
                dg: "dg1".into(),
                volume: "vol1".into(),
                size_bytes: 16 << 20,
                layout: VolumeLayout::Concat,
                log: Default::default(),
                disks: Vec::new(),
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
                    hosts: Vec::new(),
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
            hosts: Vec::new(),
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
        let a = desired(every_volume(&all), "a", "127.0.0.1:3260");
        let b = desired(every_volume(&all), "b", "127.0.0.1:3261");
        let iqn = "iqn.2026-11.io.plexd:test-1.dg1.vol1";
        assert_eq!(a[iqn].bdev, "dg1.vol1");
        assert_eq!(a[iqn].portal, "127.0.0.1:3260");
        assert_eq!(b[iqn].portal, "127.0.0.1:3261");
        assert_eq!(a[iqn].device_id, b[iqn].device_id, "multipath identity");
        let only_b = exported(&["b"], "127.0.0.1:3999");
        assert!(desired(every_volume(&only_b), "a", "127.0.0.1:3260").is_empty());
        assert_eq!(
            desired(every_volume(&only_b), "b", "127.0.0.1:3261")[iqn].portal,
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

    #[test]
    fn nvmf_exports_share_one_identity_and_list_the_other_nodes_listeners() {
        let c = cluster(&[("disk01", 1 << 30)])
            .apply(&Change::VolCreate {
                dg: "dg1".into(),
                volume: "vol1".into(),
                size_bytes: 16 << 20,
                layout: VolumeLayout::Concat,
                log: Default::default(),
                disks: Vec::new(),
            })
            .unwrap();
        let nqn = default_nqn("Test-ID", "dg1", "vol1");
        assert_eq!(nqn, "nqn.2026-11.io.plexd:test-id.dg1.vol1");
        let export = |nodes: &[&str]| Change::VolExport {
            dg: "dg1".into(),
            volume: "vol1".into(),
            export: Export {
                protocol: ExportProtocol::Nvmf,
                iqn: nqn.clone(),
                nodes: nodes.iter().map(|n| n.to_string()).collect(),
                portal: String::new(),
                hosts: vec!["nqn.2014-08.org.nvmexpress:uuid:1".into()],
            },
        };
        let nodes: Vec<(String, String)> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(i, n)| (n.to_string(), format!("127.0.0.1:{}", 4420 + i)))
            .collect();
        let all = c.apply(&export(&[])).unwrap().disk_groups;
        let a = desired_nvmf(every_volume(&all), "a", &nodes);
        let b = desired_nvmf(every_volume(&all), "b", &nodes);
        assert_eq!(a[&nqn].bdev, "dg1.vol1");
        assert_eq!(a[&nqn].identity, b[&nqn].identity, "one namespace identity");
        assert_eq!(a[&nqn].peers, ["127.0.0.1:4421", "127.0.0.1:4422"]);
        assert_eq!(b[&nqn].peers, ["127.0.0.1:4420", "127.0.0.1:4422"]);
        assert!(
            desired(every_volume(&all), "a", "127.0.0.1:3260").is_empty(),
            "no iSCSI"
        );
        let sub = subsystem_of(&nqn, &a[&nqn]);
        assert!(managed_nvmf(&sub) && !sub.allow_any);
        assert_eq!(
            sub.namespaces[0].identity.as_deref(),
            Some(a[&nqn].identity.as_str())
        );
        let bc = c.apply(&export(&["b", "c"])).unwrap().disk_groups;
        assert!(desired_nvmf(every_volume(&bc), "a", &nodes).is_empty());
        assert_eq!(
            desired_nvmf(every_volume(&bc), "c", &nodes)[&nqn].peers,
            ["127.0.0.1:4421"]
        );
    }

    #[test]
    fn nvmf_nodes_get_disjoint_controller_ids_and_their_own_ana_group() {
        let mut text = String::from("[cluster]\nname='c'\nid='i'\ndisk_paths=['/d/*']\n");
        // Ids out of file order: the index follows the ids.
        for id in [7, 2, 64, 3] {
            text.push_str(&format!(
                "[[nodes]]\nid={id}\nname='n{id}'\naddress='127.0.0.1:{}'\ntarget_socket='/s{id}'\nnvmf_portal='127.0.0.1:{}'\n",
                7000 + id,
                5000 + id
            ));
        }
        let f = ClusterFile::parse(&text).unwrap();
        let all: Vec<NvmfNode> = ["n2", "n3", "n7", "n64"]
            .iter()
            .map(|n| NvmfNode::of(&f, n).unwrap())
            .collect();
        assert_eq!(
            all.iter().map(|n| n.ana_group).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(all[0].listener, "127.0.0.1:5002");
        for (i, n) in all.iter().enumerate() {
            let (lo, hi) = n.cntlid_range;
            assert!(lo >= 1 && lo <= hi && hi <= 0xFFEF, "{:?}", n.cntlid_range);
            for m in &all[i + 1..] {
                assert!(hi < m.cntlid_range.0, "ranges overlap: {all:?}");
            }
        }
        // The 64th node still fits below the reserved ids.
        assert!(usize::from(CNTLID_SPAN) * MAX_NODES <= 0xFFEF);
        assert!(NvmfNode::of(&f, "nosuch").is_none());
    }

    #[test]
    fn ana_follows_the_view() {
        let members: &[u32] = &[1, 2];
        assert_eq!(ana_of(1, Some((1, members))), AnaState::Optimized);
        assert_eq!(ana_of(2, Some((1, members))), AnaState::NonOptimized);
        assert_eq!(ana_of(3, Some((1, members))), AnaState::Inaccessible);
        assert_eq!(ana_of(2, None), AnaState::Inaccessible);
    }
}

#[cfg(test)]
mod taken_tests {
    use super::*;
    use crate::model::test_support::{cluster, with_mirror};
    use crate::model::{LogPolicy, PlexState};

    #[test]
    fn a_forced_fail_disk_takes_the_volumes_it_leaves_without_an_active_plex() {
        let c = with_mirror(
            &cluster(&[("d0", 1 << 30), ("d1", 1 << 30)]),
            "vol1",
            32 << 20,
            LogPolicy::default(),
        );
        let fail = |disk: &str, force: bool| Change::DgFailDisk {
            dg: "dg1".into(),
            disk: disk.into(),
            force,
        };
        let g = &c.disk_groups[0];
        // A mirror keeps its other plex: nothing is taken.
        assert!(volumes_taken_away(&fail("d0", true), g).0.is_empty());
        let on_d1 = g.volumes[0]
            .plexes
            .iter()
            .find(|p| p.subdisks[0].disk == "d1")
            .unwrap();
        let detached = c
            .apply(&Change::PlexDetach {
                dg: "dg1".into(),
                plex: on_d1.name.clone(),
            })
            .unwrap();
        let g = &detached.disk_groups[0];
        assert!(g.volumes[0]
            .plexes
            .iter()
            .any(|p| p.state == PlexState::Stale));
        let (taken, how) = volumes_taken_away(&fail("d0", true), g);
        assert_eq!(taken, [("dg1.vol1".to_string(), "vol1".to_string())]);
        assert_eq!(how, Taken::Removed);
        // Without --force the change is refused before any host is asked about.
        assert!(volumes_taken_away(&fail("d0", false), g).0.is_empty());
    }
}
