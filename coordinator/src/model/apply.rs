//! Applying a change: validation against the whole configuration, allocation, and
//! the new configuration with the changed group's `seq` bumped.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::*;

impl ClusterConfig {
    /// A disk group by name.
    pub fn disk_group(&self, name: &str) -> Option<&DiskGroupConfig> {
        self.disk_groups.iter().find(|g| g.name == name)
    }

    /// Applies a change; see [`apply`].
    pub fn apply(&self, change: &Change) -> Result<ClusterConfig, ConfigError> {
        apply(self, change)
    }

    /// The (disk group, volume) exported under `iqn`, if any.
    pub fn exported_as(&self, iqn: &str) -> Option<(&str, &str)> {
        self.disk_groups.iter().find_map(|g| {
            g.volumes
                .iter()
                .find(|v| v.exports.iter().any(|e| e.iqn == iqn))
                .map(|v| (g.name.as_str(), v.name.as_str()))
        })
    }

    /// Paths of the disks of the shared disk groups: a joining node must open every
    /// one.
    pub fn shared_disk_paths(&self) -> Vec<String> {
        self.disk_groups
            .iter()
            .filter(|g| g.shared)
            .flat_map(|g| g.disks.iter().map(|d| d.path.clone()))
            .collect()
    }

    /// The detach policy of the shared group holding `volume` (global when unknown).
    pub fn detach_policy_of(&self, volume: &str) -> DetachPolicy {
        self.disk_groups
            .iter()
            .find(|g| g.shared && g.volume(volume).is_some())
            .map_or(DetachPolicy::Global, |g| g.detach_policy)
    }

    /// The change that marks `ranges` of `plex` of `volume` for resync after a write
    /// failed on it on one node (local detach policy): `Ok(None)` when the plex takes
    /// no writes (nothing diverged) or already copies all of itself.
    pub fn diverged_change(
        &self,
        volume: &str,
        plex: &str,
        ranges: &[(u64, u64)],
    ) -> Result<Option<Change>, ConfigError> {
        let found = self.disk_groups.iter().find_map(|g| {
            g.volume(volume)
                .and_then(|v| v.plex(plex).map(|p| (g, v, p)))
        });
        let Some((g, v, p)) = found else {
            return Err(not_found("plex", plex, format!(" in volume {volume}")));
        };
        let copies_all = p.state == PlexState::Syncing && p.resync_ranges.is_empty();
        if !matches!(p.state, PlexState::Active | PlexState::Syncing) || copies_all {
            return Ok(None);
        }
        let ranges = coalesce_ranges(ranges, v.size_bytes, MAX_DIVERGED_RANGES);
        if ranges.is_empty() {
            return Ok(None);
        }
        if p.state == PlexState::Syncing
            && coalesce_ranges(
                &[p.resync_ranges.as_slice(), ranges.as_slice()].concat(),
                v.size_bytes,
                MAX_DIVERGED_RANGES,
            ) == p.resync_ranges
        {
            return Ok(None);
        }
        Ok(Some(Change::PlexDiverged {
            dg: g.name.clone(),
            plex: plex.to_string(),
            ranges,
        }))
    }

    /// The change that detaches `plex` of `volume` after an I/O error (global detach
    /// policy): `Ok(None)` when the plex already gets no I/O (STALE or EMPTY), an error
    /// when it is the volume's last ACTIVE plex or does not exist.
    pub fn detach_change(&self, volume: &str, plex: &str) -> Result<Option<Change>, ConfigError> {
        let found = self.disk_groups.iter().find_map(|g| {
            g.volume(volume).and_then(|v| {
                v.plexes
                    .iter()
                    .position(|p| p.name == plex)
                    .map(|i| (g, v, i))
            })
        });
        let Some((g, v, index)) = found else {
            return Err(not_found("plex", plex, format!(" in volume {volume}")));
        };
        if matches!(v.plexes[index].state, PlexState::Stale | PlexState::Empty) {
            return Ok(None);
        }
        check_not_last_active(v, index, "detach")?;
        Ok(Some(Change::PlexDetach {
            dg: g.name.clone(),
            plex: plex.to_string(),
        }))
    }

    fn check_new_disks(
        &self,
        disks: &[Disk],
        in_dg: Option<&DiskGroupConfig>,
    ) -> Result<(), ConfigError> {
        let mut seen = BTreeSet::new();
        for d in disks {
            validate_name("disk", &d.name)?;
            if !seen.insert(d.id.as_str()) {
                return Err(ConfigError::Exists(format!(
                    "disk {} is listed twice",
                    d.name
                )));
            }
            if d.public_len_bytes < ALLOC_ALIGN_BYTES {
                return Err(ConfigError::Invalid(format!(
                    "disk {}: public region is empty",
                    d.name
                )));
            }
            for g in &self.disk_groups {
                if let Some(other) = g.disks.iter().find(|o| o.id == d.id) {
                    return Err(ConfigError::InUse(format!(
                        "disk {} (id {}) is already in disk group {} as {}",
                        d.name, d.id, g.name, other.name
                    )));
                }
            }
            if let Some(g) = in_dg {
                if g.disk(&d.name).is_some() {
                    return Err(ConfigError::Exists(format!(
                        "disk {} already exists in disk group {}",
                        d.name, g.name
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_dg_absent(&self, name: &str, id: &str, shared: bool) -> Result<(), ConfigError> {
        if let Some(g) = self.disk_group(name) {
            if g.shared != shared {
                return Err(ConfigError::DgExistsOtherKind {
                    name: name.to_string(),
                    existing: if g.shared { "shared" } else { "private" },
                });
            }
            return Err(ConfigError::Exists(format!(
                "disk group {name} already exists"
            )));
        }
        if let Some(g) = self.disk_groups.iter().find(|g| g.id == id) {
            return Err(ConfigError::Exists(format!(
                "disk group id {id} is already imported as {}",
                g.name
            )));
        }
        Ok(())
    }
}

/// Applies a change to a node's configuration, validating it completely. The result
/// keeps the disk groups sorted by name; the changed group's `seq` is bumped by one.
pub fn apply(config: &ClusterConfig, change: &Change) -> Result<ClusterConfig, ConfigError> {
    let mut next = config.clone();
    match change {
        Change::DgCreate {
            dg,
            dg_id,
            shared,
            owner_id,
            disks,
        } => {
            let created = dg_create(config, dg, dg_id, *shared, owner_id, disks)?;
            next.disk_groups.push(created);
        }
        Change::DgImport {
            config: found,
            shared,
            owner_id,
        } => {
            config.check_dg_absent(&found.name, &found.id, *shared)?;
            config.check_new_disks(&found.disks, None)?;
            found.validate()?;
            let mut imported = found.clone();
            imported.shared = *shared;
            imported.owner_id = owner_id.clone();
            imported.seq += 1;
            // The cluster's open nodes, not those of the cluster it came from.
            imported.open_nodes = if *shared {
                config.open_nodes.clone()
            } else {
                Vec::new()
            };
            next.disk_groups.push(imported);
        }
        Change::DgDestroy { dg, force } | Change::DgDeport { dg, force } => {
            let index = dg_index(config, dg)?;
            if !force {
                let what = if matches!(change, Change::DgDestroy { .. }) {
                    "destroy"
                } else {
                    "deport"
                };
                check_not_exported(&config.disk_groups[index], what)?;
            }
            next.disk_groups.remove(index);
        }
        Change::NodeOpen { node } => super::recovery::open(&mut next, *node)?,
        Change::NodeClose { node } => super::recovery::close(&mut next, *node)?,
        Change::NodeRecover { node, logs } => super::recovery::recover(&mut next, *node, logs)?,
        _ => {
            let index = dg_index(config, change.dg_name())?;
            if let Change::DgAddDisk { disk, .. } = change {
                config.check_new_disks(
                    std::slice::from_ref(disk),
                    Some(&config.disk_groups[index]),
                )?;
            }
            if let Change::VolExport {
                dg, volume, export, ..
            } = change
            {
                check_export_name_free(config, dg, volume, export)?;
            }
            let updated = apply_dg(&config.disk_groups[index], change)?;
            next.disk_groups[index] = updated;
        }
    }
    next.disk_groups.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(next)
}

/// The new group of [`Change::DgCreate`], checked against `config`.
fn dg_create(
    config: &ClusterConfig,
    dg: &str,
    dg_id: &str,
    shared: bool,
    owner_id: &str,
    disks: &[Disk],
) -> Result<DiskGroupConfig, ConfigError> {
    validate_name("disk group", dg)?;
    if dg_id.is_empty() {
        return Err(ConfigError::Invalid(format!("disk group {dg}: empty id")));
    }
    config.check_dg_absent(dg, dg_id, shared)?;
    if disks.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "disk group {dg}: needs at least one disk"
        )));
    }
    config.check_new_disks(disks, None)?;
    let mut names = BTreeSet::new();
    if let Some(d) = disks.iter().find(|d| !names.insert(d.name.as_str())) {
        return Err(ConfigError::Exists(format!(
            "disk name {} is used twice in disk group {dg}",
            d.name
        )));
    }
    let created = DiskGroupConfig {
        name: dg.to_string(),
        id: dg_id.to_string(),
        shared,
        owner_id: owner_id.to_string(),
        seq: 1,
        disks: disks.to_vec(),
        volumes: Vec::new(),
        open_nodes: if shared {
            config.open_nodes.clone()
        } else {
            Vec::new()
        },
        detach_policy: DetachPolicy::Global,
    };
    created.validate()?;
    Ok(created)
}

/// Refuses [`Change::VolExport`] of `volume` under a target name (IQN or NQN) that
/// another volume is exported as.
fn check_export_name_free(
    config: &ClusterConfig,
    dg: &str,
    volume: &str,
    export: &Export,
) -> Result<(), ConfigError> {
    let other = config
        .exported_as(&export.iqn)
        .filter(|&(g, v)| (g, v) != (dg, volume));
    if let Some((g, v)) = other {
        let kind = match export.protocol {
            ExportProtocol::Iscsi => "iSCSI name",
            ExportProtocol::Nvmf => "NQN",
        };
        return Err(ConfigError::Exists(format!(
            "{kind} {} is already the export of volume {v} of disk group {g}",
            export.iqn
        )));
    }
    Ok(())
}

/// Refuses a group-level change (`what`: destroy, deport) while a volume of `g` is
/// exported (VxVM: "volumes are open").
fn check_not_exported(g: &DiskGroupConfig, what: &str) -> Result<(), ConfigError> {
    let exported: Vec<(&Volume, &Export)> = g
        .volumes
        .iter()
        .flat_map(|v| v.exports.iter().map(move |e| (&**v, e)))
        .collect();
    let Some((v, e)) = exported.first() else {
        return Ok(());
    };
    let more = match exported.len() {
        1 => String::new(),
        n => format!(" (and {} more exports)", n - 1),
    };
    Err(ConfigError::InUse(format!(
        "cannot {what} disk group {}: volume {} is exported over {} as {}{more}; unexport it first (plexctl unexport {} {} {}), or {what} with --force to end every export of the group (refused while a host session is logged in)",
        g.name,
        v.name,
        e.protocol.as_str(),
        e.iqn,
        e.protocol.as_str(),
        g.name,
        v.name
    )))
}

fn dg_index(config: &ClusterConfig, name: &str) -> Result<usize, ConfigError> {
    config
        .disk_groups
        .iter()
        .position(|g| g.name == name)
        .ok_or_else(|| not_found("disk group", name, String::new()))
}

/// Applies a change that stays inside one disk group (disks, volumes, plexes). Group
/// level changes (create, destroy, deport, import) need [`apply`]. Does not check that
/// an added disk is free in other groups: [`apply`] does.
pub fn apply_dg(dg: &DiskGroupConfig, change: &Change) -> Result<DiskGroupConfig, ConfigError> {
    if change.dg_name() != dg.name {
        return Err(ConfigError::Invalid(format!(
            "change for disk group {} applied to disk group {}",
            change.dg_name(),
            dg.name
        )));
    }
    let mut next = dg.clone();
    match change {
        Change::DgAddDisk { disk, .. } => dg_add_disk(dg, &mut next, disk)?,
        Change::DgRmDisk { disk, .. } => dg_rm_disk(dg, &mut next, disk)?,
        Change::DgFailDisk { disk, force, .. } => dg_fail_disk(dg, &mut next, disk, *force)?,
        Change::DgReattachDisk { disk, .. } => dg_reattach_disk(dg, &mut next, disk)?,
        Change::DgEvacuate { disk, to, .. } => dg_evacuate(dg, &mut next, disk, to)?,
        Change::VolCreate {
            volume,
            size_bytes,
            layout,
            log,
            disks,
            ..
        } => vol_create(dg, &mut next, volume, *size_bytes, *layout, *log, disks)?,
        Change::VolGrow {
            volume,
            new_size_bytes,
            ..
        } => vol_resize(dg, &mut next, volume, *new_size_bytes, true)?,
        Change::VolShrink {
            volume,
            new_size_bytes,
            ..
        } => vol_resize(dg, &mut next, volume, *new_size_bytes, false)?,
        Change::VolSetReadPolicy { volume, policy, .. } => {
            vol_set_read_policy(dg, &mut next, volume, policy)?
        }
        Change::VolRm { volume, .. } => vol_rm(dg, &mut next, volume)?,
        Change::DgSetDetachPolicy { policy, .. } => {
            if !dg.shared && *policy == DetachPolicy::Local {
                return Err(ConfigError::Invalid(format!(
                    "disk group {}: detach-policy=local needs a shared disk group (a private group has one node, which detaches the plex)",
                    dg.name
                )));
            }
            next.detach_policy = *policy;
        }
        Change::VolExport { volume, export, .. } => vol_export(dg, &mut next, volume, export)?,
        Change::VolPrOut {
            volume,
            nexus,
            service_action,
            scope_type,
            parameters,
            ..
        } => vol_pr_out(
            dg,
            &mut next,
            volume,
            nexus,
            *service_action,
            *scope_type,
            parameters,
        )?,
        Change::VolUnexport {
            volume, protocol, ..
        } => vol_unexport(dg, &mut next, volume, *protocol)?,
        Change::PlexAdd {
            volume,
            layout,
            disks,
            ..
        } => plex_add(dg, &mut next, volume, *layout, disks)?,
        Change::PlexDetach { plex, .. } => plex_detach(dg, &mut next, plex)?,
        Change::PlexAttach { plex, .. } => plex_attach(dg, &mut next, plex)?,
        Change::PlexRm { plex, force, .. } => plex_rm(dg, &mut next, plex, *force)?,
        Change::SetPlexState { plex, state, .. } => set_plex_state(dg, &mut next, plex, *state)?,
        Change::PlexDiverged { plex, ranges, .. } => plex_diverged(dg, &mut next, plex, ranges)?,
        Change::DgCreate { .. }
        | Change::DgDestroy { .. }
        | Change::DgDeport { .. }
        | Change::DgImport { .. }
        | Change::NodeOpen { .. }
        | Change::NodeClose { .. }
        | Change::NodeRecover { .. } => {
            return Err(ConfigError::Invalid(format!(
                "disk group {}: group-level change needs the node's configuration (model::apply)",
                dg.name
            )));
        }
    }
    next.seq += 1;
    let verdict = next.validate_after(dg, change);
    if let Err(e) = verdict {
        return Err(ConfigError::Invalid(format!(
            "internal error, change refused: {e}"
        )));
    }
    Ok(next)
}

fn checked_volume_size(volume: &str, size_bytes: u64) -> Result<u64, ConfigError> {
    match round_volume_size(size_bytes) {
        Some(size) if size > 0 => Ok(size),
        _ => Err(ConfigError::Invalid(format!(
            "volume {volume}: size must be larger than 0 (got {size_bytes} bytes)"
        ))),
    }
}

fn check_not_last_active(v: &Volume, plex_index: usize, action: &str) -> Result<(), ConfigError> {
    let plex = &v.plexes[plex_index];
    if plex.state == PlexState::Active && v.active_plexes() == 1 {
        return Err(ConfigError::LastActivePlex {
            volume: v.name.clone(),
            plex: plex.name.clone(),
            action: action.to_string(),
        });
    }
    Ok(())
}

/// Applies [`Change::DgAddDisk`] to `next` (a copy of `dg`).
fn dg_add_disk(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    disk: &Disk,
) -> Result<(), ConfigError> {
    validate_name("disk", &disk.name)?;
    if let Some(d) = dg
        .disks
        .iter()
        .find(|d| d.name == disk.name || d.id == disk.id)
    {
        return Err(ConfigError::Exists(format!(
            "disk {} already exists in disk group {} (id {})",
            d.name, dg.name, d.id
        )));
    }
    next.disks.push(disk.clone());
    Ok(())
}

/// The index of disk `disk` in `dg.disks`, or the error naming it.
fn disk_index(dg: &DiskGroupConfig, disk: &str) -> Result<usize, ConfigError> {
    dg.disks
        .iter()
        .position(|d| d.name == disk)
        .ok_or_else(|| not_found("disk", disk, format!(" in disk group {}", dg.name)))
}

/// Checks the disks a command names for new plexes (`vol create --disks`, `plex add
/// --disks`, `dg evacuate --to`): each is a disk of the group, not recorded failed,
/// named once.
fn check_named_disks(dg: &DiskGroupConfig, named: &[String]) -> Result<(), ConfigError> {
    for (i, name) in named.iter().enumerate() {
        let d = &dg.disks[disk_index(dg, name)?];
        if d.failed {
            return Err(ConfigError::Invalid(format!(
                "disk {name} of disk group {} is recorded failed: no new plex goes on it (dg reattach-disk brings it back)",
                dg.name
            )));
        }
        if named[..i].contains(name) {
            return Err(ConfigError::Invalid(format!(
                "disk {name} of disk group {} is named twice",
                dg.name
            )));
        }
    }
    Ok(())
}

/// Applies [`Change::DgEvacuate`] to `next` (a copy of `dg`): each plex on `disk`
/// that no plex replaces yet gets a SYNCING replacement of its layout, allocated in
/// `next` (so a second replacement never takes the first one's space or disks), on
/// the disks of `to` when it names any.
fn dg_evacuate(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    disk: &str,
    to: &[String],
) -> Result<(), ConfigError> {
    disk_index(dg, disk)?;
    check_named_disks(dg, to)?;
    if to.iter().any(|d| d == disk) {
        return Err(ConfigError::Invalid(format!(
            "disk {disk} of disk group {}: --to names the disk being evacuated",
            dg.name
        )));
    }
    let mut on_disk = 0;
    let mut moving = 0;
    for (vi, v) in dg.volumes.iter().enumerate() {
        for p in v.plexes.iter().filter(|p| p.disks().contains(disk)) {
            on_disk += 1;
            if v.plexes
                .iter()
                .any(|q| q.replaces.as_ref() == Some(&p.name))
            {
                continue;
            }
            if v.active_plexes() == 0 {
                return Err(ConfigError::Invalid(format!(
                    "volume {} of disk group {} has no ACTIVE plex to copy plex {} from: it cannot be moved off disk {disk} (dg reattach-disk brings its disk back; vol rm removes it)",
                    v.name, dg.name, p.name
                )));
            }
            if next.volumes[vi].plexes.len() >= MAX_PLEXES {
                return Err(ConfigError::InUse(format!(
                    "volume {} already has {MAX_PLEXES} plexes: plex {} cannot get a replacement off disk {disk} (plex rm one first)",
                    v.name, p.name
                )));
            }
            let mut plex = alloc::allocate_plex(next, &v.name, p.layout, to).map_err(|e| {
                ConfigError::NoSpace(AllocError {
                    reason: format!(
                        "plex {} cannot move off disk {disk} of disk group {}: {} (dg add-disk a disk, then dg evacuate again)",
                        p.name, dg.name, e.reason
                    ),
                    ..e
                })
            })?;
            plex.state = PlexState::Syncing;
            plex.replaces = Some(p.name.clone());
            next.volume_mut(vi).plexes.push(plex);
            moving += 1;
        }
    }
    if moving == 0 {
        return Err(ConfigError::Invalid(match on_disk {
            0 => format!(
                "disk {disk} of disk group {} holds no plex: nothing to evacuate",
                dg.name
            ),
            n => format!(
                "disk {disk} of disk group {}: its {n} plex(es) are being moved already (plexctl task wait {} waits for them)",
                dg.name, dg.name
            ),
        }));
    }
    Ok(())
}

/// Applies [`Change::DgRmDisk`] to `next` (a copy of `dg`).
fn dg_rm_disk(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    disk: &str,
) -> Result<(), ConfigError> {
    let index = disk_index(dg, disk)?;
    let users: Vec<String> = dg
        .volumes
        .iter()
        .flat_map(|v| v.plexes.iter().map(move |p| (v, p)))
        .filter(|(_, p)| p.subdisks.iter().any(|sd| sd.disk == *disk))
        .map(|(v, p)| format!("{}/{}", v.name, p.name))
        .collect();
    if !users.is_empty() {
        return Err(ConfigError::InUse(format!(
            "disk {disk} in disk group {} holds subdisks of {}: remove those plexes or volumes first",
            dg.name,
            users.join(", ")
        )));
    }
    if dg.disks.len() == 1 {
        return Err(ConfigError::InUse(format!(
            "disk {disk} is the last disk of disk group {}: use dg destroy",
            dg.name
        )));
    }
    next.disks.remove(index);
    move_logs_off(dg, next, disk, NoRoom::Refuse)
}

/// Applies [`Change::DgFailDisk`] to `next` (a copy of `dg`).
fn dg_fail_disk(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    disk: &str,
    force: bool,
) -> Result<(), ConfigError> {
    let index = disk_index(dg, disk)?;
    if dg.disks[index].failed {
        return Err(ConfigError::Exists(format!(
            "disk {disk} of disk group {} is already recorded failed",
            dg.name
        )));
    }
    if !dg.disks.iter().any(|d| d.name != *disk && !d.failed) {
        return Err(ConfigError::InUse(format!(
            "disk {disk} is the last working disk of disk group {}: its configuration would be on no disk; bring a disk back or use dg destroy",
            dg.name
        )));
    }
    let on_disk = |p: &Plex| p.subdisks.iter().any(|sd| sd.disk == *disk);
    // What a plex off the disk can serve once those on it are STALE: an ACTIVE
    // one, or a SYNCING one that copies only some ranges (a crashed node's dirty
    // regions, or writes that failed on it): outside them it holds what the
    // others do, and inside them what a crash or a failed write may leave. A
    // whole-plex copy (an attach) holds nothing yet.
    let serves = |p: &Plex| {
        !on_disk(p)
            && (p.state == PlexState::Active
                || (p.state == PlexState::Syncing && !p.resync_ranges.is_empty()))
    };
    if !force {
        let lost: Vec<&str> = dg
            .volumes
            .iter()
            .filter(|v| v.active_plexes() > 0)
            .filter(|v| !v.plexes.iter().any(serves))
            .map(|v| v.name.as_str())
            .collect();
        if !lost.is_empty() {
            return Err(ConfigError::InUse(format!(
                "disk {disk} of disk group {} holds the only ACTIVE plex of volume(s) {}: their data is on that disk only, and recorded failed they are served on no node; bring the disk back, or fail it with --force to go on without them",
                dg.name,
                lost.join(", ")
            )));
        }
    }
    let mut staled = Vec::new();
    for vi in 0..next.volumes.len() {
        if !next.volumes[vi].plexes.iter().any(on_disk) {
            continue;
        }
        let v = next.volume_mut(vi);
        // A plex off the disk keeps (or, below, takes) the volume's writes from
        // now on: none of its plexes here is then its last ACTIVE one.
        let kept = v.plexes.iter().any(serves);
        for p in v.plexes.iter_mut().filter(|p| on_disk(p)) {
            if p.state.takes_writes() {
                staled.push(StaledPlex {
                    plex: p.name.clone(),
                    last_active: p.state == PlexState::Active && !kept,
                });
                p.state = PlexState::Stale;
                p.resync_ranges.clear();
            }
        }
        if v.active_plexes() == 0 {
            // Its copy source was on the disk: a plex that copies only some
            // ranges takes its place (what the copy would have mended is what a
            // crash may leave).
            if let Some(p) = v.plexes.iter_mut().find(|p| serves(p)) {
                p.state = PlexState::Active;
                p.resync_ranges.clear();
            }
        }
    }
    next.disks[index].failed = true;
    next.disks[index].staled = staled;
    move_logs_off(dg, next, disk, NoRoom::Drop)
}

/// Applies [`Change::DgReattachDisk`] to `next` (a copy of `dg`): the disk is no
/// longer failed, and each plex its failure made STALE ([`Disk::staled`]) whose
/// subdisks are all on working disks comes back: ACTIVE when it was its volume's
/// last ACTIVE plex and the volume still has none (the volume was served nowhere
/// since, so the plex holds its data), else SYNCING from the volume's ACTIVE plex
/// (a whole copy). A plex without a source stays STALE, as do the plexes that were
/// STALE before the failure (the operator's `plex attach` decides about those). A
/// plex with a subdisk on another disk still recorded failed stays STALE, and its
/// entry moves to that disk's record: it comes back with that disk.
fn dg_reattach_disk(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    disk: &Disk,
) -> Result<(), ConfigError> {
    let index = disk_index(dg, &disk.name)?;
    let recorded = &dg.disks[index];
    if !recorded.failed {
        return Err(ConfigError::Invalid(format!(
            "disk {} of disk group {} is not recorded failed: nothing to reattach",
            disk.name, dg.name
        )));
    }
    if recorded.id != disk.id {
        return Err(ConfigError::Invalid(format!(
            "disk {} of disk group {} has id {}, not {}",
            disk.name, dg.name, recorded.id, disk.id
        )));
    }
    next.disks[index].failed = false;
    let staled = std::mem::take(&mut next.disks[index].staled);
    for vi in 0..next.volumes.len() {
        // The volume's plexes this disk's failure made STALE and that are still so
        // here: (index, last ACTIVE).
        let v = &next.volumes[vi];
        let mine: Vec<(usize, bool)> = v
            .plexes
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.state == PlexState::Stale && p.subdisks.iter().any(|sd| sd.disk == disk.name)
            })
            .filter_map(|(pi, p)| {
                Some((pi, staled.iter().find(|sp| sp.plex == p.name)?.last_active))
            })
            .collect();
        if mine.is_empty() {
            continue;
        }
        // One still on another failed disk waits on that disk's record.
        let (back, waiting): (Vec<_>, Vec<_>) = mine.into_iter().partition(|&(pi, _)| {
            v.plexes[pi]
                .subdisks
                .iter()
                .all(|sd| !next.disk_failed(&sd.disk))
        });
        let moved: Vec<(String, StaledPlex)> = waiting
            .into_iter()
            .filter_map(|(pi, last_active)| {
                let p = &v.plexes[pi];
                let other = p.subdisks.iter().find(|sd| next.disk_failed(&sd.disk))?;
                Some((
                    other.disk.clone(),
                    StaledPlex {
                        plex: p.name.clone(),
                        last_active,
                    },
                ))
            })
            .collect();
        for (other, sp) in moved {
            if let Some(i) = next.disks.iter().position(|d| d.name == other) {
                next.disks[i].staled.push(sp);
            }
        }
        let v = next.volume_mut(vi);
        if v.active_plexes() == 0 {
            for &(pi, last_active) in &back {
                if last_active {
                    v.plexes[pi].state = PlexState::Active;
                }
            }
        }
        if v.active_plexes() > 0 {
            for &(pi, _) in &back {
                let p = &mut v.plexes[pi];
                if p.state == PlexState::Stale {
                    p.state = PlexState::Syncing;
                    p.resync_ranges.clear();
                }
            }
        }
    }
    Ok(())
}

/// What [`move_logs_off`] does with a log copy that no other disk has room for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NoRoom {
    /// Refuse the change.
    Refuse,
    /// Drop the copy (the log, when it was its only one; the volume then goes
    /// without a dirty region log).
    Drop,
}

/// Moves every dirty region log copy on `disk` (already removed from `next`, a copy
/// of `dg`) to another disk of the group with room ([`alloc::place_log_copy`]:
/// not a disk another copy of the same log uses, preferably none of the volume's
/// plexes use). A moved log gets a new id: the commit's drained quiesce has every
/// data plane re-init its sections on every copy under the new id, so the new
/// copy starting without marks loses none (docs/PROTOCOL.md, "Node-crash
/// recovery"). Refused, naming the volume, when no disk has room.
fn move_logs_off(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    disk: &str,
    no_room: NoRoom,
) -> Result<(), ConfigError> {
    let mut nth: u16 = 0;
    for vi in 0..next.volumes.len() {
        let Some(log) = next.volume_mut(vi).log.clone() else {
            continue;
        };
        let Some(ci) = log.copies.iter().position(|c| c.disk == disk) else {
            continue;
        };
        let volume = next.volumes[vi].name.clone();
        let mut without = next.clone();
        if let Some(l) = without.volume_mut(vi).log.as_mut() {
            l.copies.remove(ci);
        }
        let exclude: BTreeSet<&str> = log
            .copies
            .iter()
            .filter(|c| c.disk != disk)
            .map(|c| c.disk.as_str())
            .collect();
        let placed = alloc::place_log_copy(&without, &volume, log.len_bytes, &exclude, &[]);
        let (to, offset) = match (placed, no_room) {
            (Ok(place), _) => place,
            (Err(e), NoRoom::Refuse) => {
                return Err(ConfigError::InUse(format!(
                    "disk {disk} in disk group {} holds a copy of the dirty region log of volume \
                     {volume}, and the copy cannot move to another disk: {}",
                    dg.name, e.reason
                )))
            }
            (Err(_), NoRoom::Drop) => {
                let mut kept = log;
                kept.copies.remove(ci);
                kept.log_id = alloc::new_log_id_nth(dg, nth);
                nth = nth.saturating_add(1);
                next.volume_mut(vi).log = (!kept.copies.is_empty()).then_some(kept);
                continue;
            }
        };
        let mut moved = log;
        moved.copies[ci] = LogCopy {
            disk: to,
            disk_offset_bytes: offset,
        };
        moved.log_id = alloc::new_log_id_nth(dg, nth);
        nth = nth.saturating_add(1);
        next.volume_mut(vi).log = Some(moved);
    }
    Ok(())
}

/// Applies [`Change::VolCreate`] to `next` (a copy of `dg`).
fn vol_create(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    volume: &str,
    size_bytes: u64,
    layout: VolumeLayout,
    log: LogPolicy,
    disks: &[String],
) -> Result<(), ConfigError> {
    validate_name("volume", volume)?;
    if dg.volume(volume).is_some() || dg.find_plex(volume).is_some() {
        return Err(ConfigError::Exists(format!(
            "volume {volume} already exists in disk group {}",
            dg.name
        )));
    }
    let size = checked_volume_size(volume, size_bytes)?;
    let (mirrors, plex_layout) = layout.plexes();
    if mirrors == 0 || mirrors as usize > MAX_PLEXES {
        return Err(ConfigError::Invalid(format!(
            "volume {volume}: {mirrors} mirrors requested, 1 to {MAX_PLEXES} allowed"
        )));
    }
    if let PlexLayout::Stripe { columns, .. } = plex_layout {
        if columns < MIN_STRIPE_COLUMNS {
            return Err(ConfigError::Invalid(format!(
                "volume {volume}: a stripe needs at least {MIN_STRIPE_COLUMNS} columns, got {columns}; use the concat (or mirror) layout for one column"
            )));
        }
    }
    plex_layout.validate()?;
    // Names are unique across the group's volumes, plexes and subdisks: the volume's
    // and its plexes' must not be a subdisk's (or another volume's plex's).
    let names = std::iter::once(volume.to_string())
        .chain((0..mirrors).map(|index| alloc::plex_name(volume, index)));
    for name in names {
        if let Some(what) = dg.object_named(&name) {
            return Err(ConfigError::Exists(format!(
                "volume {volume}: the name {name} is in use in disk group {} ({what}); choose another volume name",
                dg.name
            )));
        }
    }
    if let LogPolicy::On { region_bytes } = log {
        // Checked for any layout, so that a bad --region-size is never ignored.
        alloc::log_geometry(volume, size, region_bytes)?;
    }
    check_named_disks(dg, disks)?;
    let plexes = alloc::allocate_volume(dg, volume, size, layout, disks)?;
    next.volumes.push(Arc::new(Volume {
        log: None,
        name: volume.to_string(),
        size_bytes: size,
        state: VolumeState::Enabled,
        read_policy: ReadPolicy::Round,
        plexes,
        exports: Vec::new(),
        reservations: PrState::default(),
    }));
    if let (LogPolicy::On { region_bytes }, 2..) = (log, mirrors) {
        let placed =
            alloc::allocate_log(next, volume, size, region_bytes, disks).map_err(|mut e| {
                e.reason
                    .push_str("; vol create --drl off makes the volume without a log");
                e
            })?;
        if let Some(v) = next.volumes.last_mut() {
            Arc::make_mut(v).log = Some(placed);
        }
    }
    Ok(())
}

/// Applies [`Change::VolGrow`] (`grow`) or [`Change::VolShrink`] to `next` (a copy
/// of `dg`): the new size must be larger (smaller) than the current one.
fn vol_resize(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    volume: &str,
    new_size_bytes: u64,
    grow: bool,
) -> Result<(), ConfigError> {
    let vi = dg.volume_index(volume)?;
    if dg.volumes[vi].active_plexes() == 0 {
        // Only a forced `dg fail-disk` leaves a volume so; a reattach may bring its
        // plex back ACTIVE as it was (never zeroed or copied since).
        return Err(ConfigError::Invalid(format!(
            "volume {volume} of disk group {} has no ACTIVE plex: it is served on no node and its size does not change until it has one (dg reattach-disk brings its disk back; vol rm removes it)",
            dg.name
        )));
    }
    let size = checked_volume_size(volume, new_size_bytes)?;
    let current = dg.volumes[vi].size_bytes;
    if (grow && size <= current) || (!grow && size >= current) {
        return Err(ConfigError::Invalid(format!(
            "volume {volume}: new size {} is not {} than the current {}",
            crate::size::format_size(size),
            if grow { "larger" } else { "smaller" },
            crate::size::format_size(current)
        )));
    }
    next.volume_mut(vi).plexes = if grow {
        alloc::grow_volume(dg, volume, size)?
    } else {
        alloc::shrink_plexes(&dg.volumes[vi].plexes, size)
    };
    if grow {
        // A shrunk volume keeps its log (it tracks fewer regions of it).
        next.volume_mut(vi).log = alloc::grow_log(next, volume, size)?;
    }
    next.volume_mut(vi).size_bytes = size;
    Ok(())
}

/// Applies [`Change::VolSetReadPolicy`] to `next` (a copy of `dg`).
fn vol_set_read_policy(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    volume: &str,
    policy: &ReadPolicy,
) -> Result<(), ConfigError> {
    let vi = dg.volume_index(volume)?;
    if let ReadPolicy::Prefer { plex } = policy {
        if dg.volumes[vi].plex(plex).is_none() {
            return Err(not_found("plex", plex, format!(" in volume {volume}")));
        }
    }
    next.volume_mut(vi).read_policy = policy.clone();
    Ok(())
}

/// Applies [`Change::VolRm`] to `next` (a copy of `dg`).
fn vol_rm(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    volume: &str,
) -> Result<(), ConfigError> {
    let vi = dg.volume_index(volume)?;
    if let Some(e) = dg.volumes[vi].exports.first() {
        return Err(ConfigError::InUse(format!(
            "volume {volume} is exported over {} as {}; unexport it first",
            e.protocol.as_str(),
            e.iqn
        )));
    }
    next.volumes.remove(vi);
    Ok(())
}

/// Applies [`Change::VolExport`] to `next` (a copy of `dg`).
fn vol_export(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    volume: &str,
    export: &Export,
) -> Result<(), ConfigError> {
    let vi = dg.volume_index(volume)?;
    export.validate()?;
    for n in &export.nodes {
        validate_name("node", n)?;
    }
    if let Some(e) = dg.volumes[vi]
        .exports
        .iter()
        .find(|e| e.protocol == export.protocol)
    {
        return Err(ConfigError::Exists(format!(
            "volume {volume} is already exported over {} as {}; unexport it first",
            e.protocol.as_str(),
            e.iqn
        )));
    }
    next.volume_mut(vi).exports.push(export.clone());
    next.volume_mut(vi).exports.sort_by_key(|e| e.protocol);
    Ok(())
}

/// Applies [`Change::VolPrOut`] to `next` (a copy of `dg`).
fn vol_pr_out(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    volume: &str,
    nexus: &Nexus,
    service_action: u8,
    scope_type: u8,
    parameters: &[u8],
) -> Result<(), ConfigError> {
    let vi = dg.volume_index(volume)?;
    let what = || {
        format!(
            "volume {volume} of disk group {}: PERSISTENT RESERVE OUT (service action {service_action}) from {nexus}",
            dg.name
        )
    };
    if !dg.shared {
        return Err(ConfigError::Invalid(format!(
            "{}: a private volume's reservations are kept by its node",
            what()
        )));
    }
    if nexus.initiator.is_empty() || nexus.initiator.len() > MAX_NEXUS_NAME_BYTES {
        return Err(ConfigError::Invalid(format!(
            "{}: the initiator port name must be 1..{MAX_NEXUS_NAME_BYTES} bytes",
            what()
        )));
    }
    let r = next
        .volume_mut(vi)
        .reservations
        .out(nexus, service_action, scope_type, parameters);
    match r {
        Ok(true) => {}
        Ok(false) => {
            return Err(ConfigError::Invalid(format!(
                "{}: changes nothing in the reservations now",
                what()
            )))
        }
        Err(e) => {
            return Err(ConfigError::Invalid(format!(
                "{}: refused by the reservations now ({e:?})",
                what()
            )))
        }
    }
    Ok(())
}

/// Applies [`Change::VolUnexport`] to `next` (a copy of `dg`).
fn vol_unexport(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    volume: &str,
    protocol: ExportProtocol,
) -> Result<(), ConfigError> {
    let vi = dg.volume_index(volume)?;
    let before = next.volume_mut(vi).exports.len();
    next.volume_mut(vi)
        .exports
        .retain(|e| e.protocol != protocol);
    if next.volume_mut(vi).exports.len() == before {
        return Err(not_found(
            "export",
            protocol.as_str(),
            format!(" of volume {volume}"),
        ));
    }
    Ok(())
}

/// Applies [`Change::PlexAdd`] to `next` (a copy of `dg`).
fn plex_add(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    volume: &str,
    layout: PlexLayout,
    disks: &[String],
) -> Result<(), ConfigError> {
    let vi = dg.volume_index(volume)?;
    let v = &dg.volumes[vi];
    if v.plexes.len() >= MAX_PLEXES {
        return Err(ConfigError::InUse(format!(
            "volume {volume} already has {MAX_PLEXES} plexes"
        )));
    }
    layout.validate()?;
    check_named_disks(dg, disks)?;
    let plex = alloc::allocate_plex(dg, volume, layout, disks)?;
    next.volume_mut(vi).plexes.push(plex);
    if v.log.is_none() && v.plexes.len() == 1 {
        // The volume becomes mirrored: it gets the default log (a volume created
        // mirrored with --drl off has two plexes or more and stays without). With
        // disks named, on those or the ones the volume already uses.
        let mut only: BTreeSet<&str> = disks.iter().map(String::as_str).collect();
        if !only.is_empty() {
            only.extend(v.plexes.iter().flat_map(Plex::disks));
        }
        let only: Vec<String> = only.into_iter().map(str::to_string).collect();
        let log = alloc::allocate_log(
            next,
            volume,
            v.size_bytes,
            plexd_target_api::drl::DEFAULT_REGION_BYTES,
            &only,
        )?;
        next.volume_mut(vi).log = Some(log);
    }
    Ok(())
}

/// Applies [`Change::PlexDetach`] to `next` (a copy of `dg`).
fn plex_detach(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    plex: &str,
) -> Result<(), ConfigError> {
    let (vi, pi) = dg.plex_index(plex)?;
    let state = dg.volumes[vi].plexes[pi].state;
    if !matches!(state, PlexState::Active | PlexState::Syncing) {
        return Err(ConfigError::Invalid(format!(
            "plex {plex} is {}, not ACTIVE or SYNCING: nothing to detach",
            state.as_str()
        )));
    }
    check_not_last_active(&dg.volumes[vi], pi, "detach")?;
    next.volume_mut(vi).plexes[pi].state = PlexState::Stale;
    // Ranges belong to one recovery's resync: any other state change (its end,
    // a detach, a new attach: whole) drops them.
    next.volume_mut(vi).plexes[pi].resync_ranges.clear();
    Ok(())
}

/// Ranges a plex made SYNCING by [`Change::PlexDiverged`] keeps; more are merged
/// (the closest neighbours first), so a copy may cover a little more than failed.
pub const MAX_DIVERGED_RANGES: usize = 64;

/// `ranges` (offset, length) sorted, clipped to `size` bytes, empty ones dropped,
/// overlapping and adjacent ones merged, then the closest neighbours merged until at
/// most `max` (at least 1) are left.
pub fn coalesce_ranges(ranges: &[(u64, u64)], size: u64, max: usize) -> Vec<(u64, u64)> {
    let mut r: Vec<(u64, u64)> = ranges
        .iter()
        .filter(|&&(o, l)| l > 0 && o < size)
        .map(|&(o, l)| (o, o.saturating_add(l).min(size)))
        .collect();
    r.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(r.len());
    for (s, e) in r {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    // Bounded: each pass removes one range.
    while out.len() > max.max(1) {
        let i = (1..out.len())
            .min_by_key(|&i| out[i].0 - out[i - 1].1)
            .unwrap_or(1);
        out[i - 1].1 = out[i].1;
        out.remove(i);
    }
    out.into_iter().map(|(s, e)| (s, e - s)).collect()
}

/// Applies [`Change::PlexDiverged`] to `next` (a copy of `dg`).
fn plex_diverged(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    plex: &str,
    ranges: &[(u64, u64)],
) -> Result<(), ConfigError> {
    let (vi, pi) = dg.plex_index(plex)?;
    let v = &dg.volumes[vi];
    let p = &v.plexes[pi];
    let new = coalesce_ranges(ranges, v.size_bytes, MAX_DIVERGED_RANGES);
    if new.is_empty() {
        return Err(ConfigError::Invalid(format!(
            "plex {plex}: no failed range inside volume {}",
            v.name
        )));
    }
    let merged = match p.state {
        PlexState::Active => new,
        // Already copying all of it: nothing to add.
        PlexState::Syncing if p.resync_ranges.is_empty() => Vec::new(),
        PlexState::Syncing => {
            let mut all = p.resync_ranges.clone();
            all.extend(new);
            coalesce_ranges(&all, v.size_bytes, MAX_DIVERGED_RANGES)
        }
        s => {
            return Err(ConfigError::Invalid(format!(
                "plex {plex} is {}, not ACTIVE or SYNCING: it takes no writes",
                s.as_str()
            )))
        }
    };
    if p.state == PlexState::Active {
        check_not_last_active(v, pi, "resynchronise")?;
    }
    next.volume_mut(vi).plexes[pi].state = PlexState::Syncing;
    next.volume_mut(vi).plexes[pi].resync_ranges = merged;
    Ok(())
}

/// Applies [`Change::PlexAttach`] to `next` (a copy of `dg`).
fn plex_attach(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    plex: &str,
) -> Result<(), ConfigError> {
    let (vi, pi) = dg.plex_index(plex)?;
    let v = &dg.volumes[vi];
    let state = v.plexes[pi].state;
    if !matches!(state, PlexState::Stale | PlexState::Empty) {
        return Err(ConfigError::Invalid(format!(
            "plex {plex} is {}, only a STALE or EMPTY plex can be attached",
            state.as_str()
        )));
    }
    if v.active_plexes() == 0 {
        return Err(ConfigError::Invalid(format!(
            "plex {plex}: volume {} has no ACTIVE plex to resynchronise from",
            v.name
        )));
    }
    let failed: BTreeSet<&str> = v.plexes[pi]
        .subdisks
        .iter()
        .filter(|sd| dg.disk_failed(&sd.disk))
        .map(|sd| sd.disk.as_str())
        .collect();
    if !failed.is_empty() {
        return Err(ConfigError::InUse(format!(
            "plex {plex} of volume {} has subdisks on disk(s) {} of disk group {}, recorded failed: remove the plex (plexctl plex rm {} {plex}) and add one on a working disk",
            v.name,
            failed.into_iter().collect::<Vec<_>>().join(", "),
            dg.name,
            dg.name
        )));
    }
    next.volume_mut(vi).plexes[pi].state = PlexState::Syncing;
    // A STALE or EMPTY plex missed writes anywhere: the whole plex is copied.
    next.volume_mut(vi).plexes[pi].resync_ranges.clear();
    Ok(())
}

/// Applies [`Change::PlexRm`] to `next` (a copy of `dg`).
fn plex_rm(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    plex: &str,
    force: bool,
) -> Result<(), ConfigError> {
    let (vi, pi) = dg.plex_index(plex)?;
    let v = &dg.volumes[vi];
    if v.plexes.len() == 1 {
        return Err(ConfigError::InUse(format!(
            "plex {plex} is the only plex of volume {}: use vol rm",
            v.name
        )));
    }
    check_not_last_active(v, pi, "remove")?;
    if v.plexes[pi].state == PlexState::Active && !force {
        return Err(ConfigError::InUse(format!(
            "plex {plex} is an ACTIVE mirror of volume {} in disk group {} ({} ACTIVE plexes): removing it loses a copy of the data; detach it first (plexctl plex detach {} {plex}) or use plex rm --force",
            v.name,
            dg.name,
            v.active_plexes(),
            dg.name
        )));
    }
    remove_plex(next, vi, plex);
    Ok(())
}

/// Removes plex `plex` of volume `vi` of `next`: a volume left with one plex loses
/// its log (a plex added later brings a new one), a read policy that preferred the
/// plex goes back to round robin, and a move to replace it ([`Plex::replaces`]) is
/// over.
fn remove_plex(next: &mut DiskGroupConfig, vi: usize, plex: &str) {
    let v = next.volume_mut(vi);
    v.plexes.retain(|p| p.name != plex);
    if v.plexes.len() == 1 {
        v.log = None;
    }
    if matches!(&v.read_policy, ReadPolicy::Prefer { plex: preferred } if preferred == plex) {
        v.read_policy = ReadPolicy::Round;
    }
    for p in &mut v.plexes {
        if p.replaces.as_deref() == Some(plex) {
            p.replaces = None;
        }
    }
}

/// Applies [`Change::SetPlexState`] to `next` (a copy of `dg`).
fn set_plex_state(
    dg: &DiskGroupConfig,
    next: &mut DiskGroupConfig,
    plex: &str,
    state: PlexState,
) -> Result<(), ConfigError> {
    let (vi, pi) = dg.plex_index(plex)?;
    if state != PlexState::Active {
        check_not_last_active(&dg.volumes[vi], pi, &format!("set {}", state.as_str()))?;
    }
    next.volume_mut(vi).plexes[pi].state = state;
    // Ranges belong to one recovery's resync: any other state change (its end,
    // a detach, a new attach: whole) drops them.
    next.volume_mut(vi).plexes[pi].resync_ranges.clear();
    if state == PlexState::Active {
        // The end of a move (`dg evacuate`): the plex it replaces goes, and a read
        // policy that preferred it prefers the replacement in its place.
        if let Some(old) = next.volume_mut(vi).plexes[pi].replaces.take() {
            let preferred = matches!(&next.volumes[vi].read_policy,
                ReadPolicy::Prefer { plex: p } if *p == old);
            remove_plex(next, vi, &old);
            if preferred {
                next.volume_mut(vi).read_policy = ReadPolicy::Prefer {
                    plex: plex.to_string(),
                };
            }
        }
    }
    Ok(())
}
