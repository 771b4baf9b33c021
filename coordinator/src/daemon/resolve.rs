//! Turning a plexctl command into a [`Change`]: disks by media name, defaults, names
//! checked against this node's view (the master validates the change again).

use super::*;

impl Daemon {
    /// The owner id of a new or imported group: the cluster's id when shared, this
    /// node's name when private.
    fn owner_id(&self, shared: bool) -> String {
        if shared {
            self.file.cluster.id.clone()
        } else {
            self.name.clone()
        }
    }

    /// Turns a plexctl command into a change: disks by media name, defaults.
    pub(super) fn resolve(&mut self, c: CtlChange) -> Result<Change, RequestError> {
        Ok(match c {
            CtlChange::DgCreate {
                dg,
                disks: names,
                shared,
            } => self.resolve_dg_create(dg, names, shared)?,
            CtlChange::DgAddDisk { dg, disk } => Change::DgAddDisk {
                disk: disks::find_free_disk(&self.file.disk_files(), &disk, &self.name)
                    .map_err(|e| self.refused(e))?,
                dg,
            },
            CtlChange::DgRmDisk { dg, disk } => Change::DgRmDisk { dg, disk },
            CtlChange::DgEvacuate { dg, disk, to } => Change::DgEvacuate { dg, disk, to },
            CtlChange::DgFailDisk { dg, disk, force } => {
                self.checked_at_once(Change::DgFailDisk { dg, disk, force })?
            }
            CtlChange::DgReattachDisk { dg, disk } => self.resolve_dg_reattach_disk(dg, disk)?,
            CtlChange::DgDestroy { dg, force } => Change::DgDestroy { dg, force },
            CtlChange::DgDeport { dg, force } => Change::DgDeport { dg, force },
            CtlChange::DgImport {
                dg,
                shared,
                clear_owner,
            } => self.resolve_dg_import(dg, shared, clear_owner)?,
            CtlChange::DgSet { dg, detach_policy } => Change::DgSetDetachPolicy {
                policy: crate::model::DetachPolicy::parse(&detach_policy).ok_or_else(|| {
                    self.refuse(format!(
                        "disk group {dg}: detach-policy={detach_policy:?}: takes global or local"
                    ))
                })?,
                dg,
            },
            CtlChange::VolSet {
                dg,
                volume,
                read_policy,
            } => Change::VolSetReadPolicy {
                policy: crate::model::ReadPolicy::parse(&read_policy).map_err(|e| {
                    self.refuse(format!(
                        "volume {volume} in disk group {dg}: read-policy={read_policy:?}: {e}"
                    ))
                })?,
                dg,
                volume,
            },
            CtlChange::VolCreate {
                dg,
                volume,
                size_bytes,
                layout,
                mirrors,
                columns,
                stripe_unit_bytes,
                drl_off,
                region_bytes,
                disks,
            } => Self::resolve_vol_create(
                dg,
                volume,
                size_bytes,
                layout,
                (mirrors, columns, stripe_unit_bytes),
                match (drl_off, region_bytes) {
                    (true, _) => crate::model::LogPolicy::Off,
                    (false, 0) => crate::model::LogPolicy::default(),
                    (false, region_bytes) => crate::model::LogPolicy::On { region_bytes },
                },
                disks,
            ),
            CtlChange::VolResize {
                dg,
                volume,
                new_size_bytes,
                grow,
                relative,
                force,
            } => {
                let new_size_bytes =
                    self.resolve_new_size(&dg, &volume, new_size_bytes, grow, relative)?;
                match grow {
                    true => Change::VolGrow {
                        dg,
                        volume,
                        new_size_bytes,
                    },
                    false => Change::VolShrink {
                        dg,
                        volume,
                        new_size_bytes,
                        force,
                    },
                }
            }
            CtlChange::VolRm { dg, volume } => Change::VolRm { dg, volume },
            CtlChange::VolExport {
                dg,
                volume,
                protocol,
                iqn,
                nodes,
                portal,
                hosts,
            } => self.resolve_vol_export(dg, volume, protocol, iqn, nodes, portal, hosts)?,
            CtlChange::VolUnexport {
                dg,
                volume,
                protocol,
            } => Change::VolUnexport {
                dg,
                volume,
                protocol: self
                    .export_protocol(&protocol)
                    .map_err(|e| self.refused(e))?,
            },
            CtlChange::PlexAdd { dg, volume, disks } => {
                let layout = self
                    .group(&dg)
                    .and_then(|g| g.volume(&volume))
                    .and_then(|v| v.plexes.first())
                    .map(|p| p.layout)
                    .unwrap_or(PlexLayout::Concat);
                Change::PlexAdd {
                    dg,
                    volume,
                    layout,
                    disks,
                }
            }
            CtlChange::Plex {
                dg,
                plex,
                op,
                force,
            } => match op {
                PlexOp::Detach => Change::PlexDetach { dg, plex },
                PlexOp::Attach => Change::PlexAttach { dg, plex },
                PlexOp::Rm => Change::PlexRm { dg, plex, force },
            },
        })
    }

    /// `dg create` / `dg import` of `dg`: the name is taken by an imported group or
    /// by a failed one (read again from the disks now).
    fn check_name_free(&mut self, dg: &str) -> Result<(), RequestError> {
        if let Some(g) = self.group(dg) {
            return Err(self.refuse_as(
                ErrorKind::Exists,
                format!(
                    "disk group {dg} already exists ({} disk group, {} disks, {} volumes)",
                    if g.shared { "a shared" } else { "a private" },
                    g.disks.len(),
                    g.volumes.len()
                ),
            ));
        }
        self.refresh_failed();
        if let Some(f) = self.failed.iter().find(|f| f.name == dg) {
            let e = format!("disk group {dg} exists and is {}", f.reason);
            return Err(self.refuse_as(ErrorKind::Exists, e));
        }
        Ok(())
    }

    /// `dg create`: the disks by media name, free on this node's disk paths.
    fn resolve_dg_create(
        &mut self,
        dg: String,
        names: Vec<String>,
        shared: bool,
    ) -> Result<Change, RequestError> {
        let files = self.file.disk_files();
        if names.is_empty() {
            return Err(self.refuse(format!("disk group {dg}: needs at least one disk")));
        }
        self.check_name_free(&dg)?;
        let mut list = Vec::new();
        for n in &names {
            list.push(disks::find_free_disk(&files, n, &self.name).map_err(|e| self.refused(e))?);
        }
        if !shared && self.node.config().group(&dg).is_some() {
            return Err(self.refuse_as(
                ErrorKind::Exists,
                format!("disk group {dg} exists as a shared disk group"),
            ));
        }
        Ok(Change::DgCreate {
            dg,
            dg_id: crate::model::new_id(),
            shared,
            owner_id: self.owner_id(shared),
            disks: list,
        })
    }

    /// A change checked against this node's copy of its group at once (the master
    /// validates it again when it runs). `dg fail-disk` may wait at a master
    /// without a majority until the other nodes join (which is its point:
    /// docs/OPERATIONS.md, "A disk that is gone for good"), and a change that will
    /// be refused should not wait with it.
    fn checked_at_once(&self, change: Change) -> Result<Change, RequestError> {
        if let Some(g) = self.group(change.dg_name()) {
            crate::model::apply_dg(g, &change)
                .map_err(|e| self.refuse_as(super::model::error_kind(&e), e))?;
        }
        Ok(change)
    }

    /// `dg reattach-disk`: the change carries the group's record of the disk (as
    /// this node's copy has it), so that every node's local check looks for the
    /// disk by its id. The master validates it again when it runs.
    fn resolve_dg_reattach_disk(&self, dg: String, disk: String) -> Result<Change, RequestError> {
        let Some(g) = self.group(&dg) else {
            return Err(self.refuse_as(
                ErrorKind::NotFound,
                format!("disk group {dg} does not exist"),
            ));
        };
        let Some(record) = g.disk(&disk) else {
            return Err(self.refuse_as(
                ErrorKind::NotFound,
                format!("disk {disk} does not exist in disk group {dg}"),
            ));
        };
        self.checked_at_once(Change::DgReattachDisk {
            disk: record.clone(),
            dg,
        })
    }

    /// `dg import`: the group as found on this node's disk paths. A group whose
    /// record names another owner (a node, or another cluster) is refused unless
    /// `clear_owner`, and even then while that owner is a member of this view. A
    /// group found left open by starts that did not stop cleanly (its owner crashed)
    /// has its mirrors recovered from their dirty region logs
    /// ([`private::recover_group`]) before the change is proposed, so the import
    /// serves it with the divergent plexes SYNCING.
    fn resolve_dg_import(
        &mut self,
        dg: String,
        shared: bool,
        clear_owner: bool,
    ) -> Result<Change, RequestError> {
        let files = self.file.disk_files();
        if self.node.private().disk_group(&dg).is_some() || self.node.config().group(&dg).is_some()
        {
            return Err(self.refuse_as(
                ErrorKind::Exists,
                format!("disk group {dg} is already imported"),
            ));
        }
        self.check_name_free(&dg)?;
        let (_, _, all) = disks::discover(&files, &self.file.cluster.id, &self.name);
        let found: Vec<_> = all.into_iter().filter(|g| g.name == dg).collect();
        let mut config = match found.len() {
            0 => {
                return Err(self.refuse_as(
                    ErrorKind::NotFound,
                    format!("disk group {dg}: not found on the disk paths"),
                ))
            }
            1 => found.into_iter().next().unwrap_or_else(|| unreachable!()),
            n => {
                return Err(self.refuse(format!(
                    "disk group {dg}: {n} groups of that name on the disks"
                )))
            }
        };
        let owner = config.owner_id.clone();
        if !owner.is_empty() && owner != self.file.cluster.id && owner != self.name {
            self.check_owner_gone(&dg, &owner, clear_owner)?;
            if shared && self.file.node(&owner).is_some() {
                // Only a private import waits out the old owner's private-group
                // lease before serving the group (`daemon::takeover`).
                return Err(self.refuse(format!(
                    "disk group {dg} is node {owner}'s private group: take it over with \
                     `dg import {dg} --clear-owner` (private, on this node), then `dg deport \
                     {dg}` and `dg import {dg} --shared`"
                )));
            }
            log::warn!(
                "node {}: disk group {dg}: taking it over from owner {owner} (--clear-owner)",
                self.name
            );
        }
        if !config.open_nodes.is_empty() {
            private::recover_group(&self.name, &mut config, &files);
        }
        Ok(Change::DgImport {
            config,
            shared,
            owner_id: self.owner_id(shared),
        })
    }

    /// Refuses to import a group `owner` still owns, unless `clear_owner` says the
    /// owner is down for good; a member of this view is never down for good.
    fn check_owner_gone(
        &self,
        dg: &str,
        owner: &str,
        clear_owner: bool,
    ) -> Result<(), RequestError> {
        if !clear_owner {
            return Err(self.refuse(format!(
                "disk group {dg} is imported by {owner}; deport it there first, or, if {owner} is down for good, import with --clear-owner"
            )));
        }
        let member = self
            .file
            .node(owner)
            .is_some_and(|n| self.node.view().is_some_and(|v| v.members.contains(&n.id)));
        if member {
            return Err(self.refuse(format!(
                "disk group {dg} is imported by node {owner}, a member of the cluster: deport it there (--clear-owner is for an owner that is down for good)"
            )));
        }
        Ok(())
    }

    /// `vol create`: the layout with its defaults (2 mirrors, 2 columns, the default
    /// stripe unit).
    fn resolve_vol_create(
        dg: String,
        volume: String,
        size_bytes: u64,
        layout: LayoutKind,
        (mirrors, columns, stripe_unit_bytes): (u32, u32, u64),
        log: crate::model::LogPolicy,
        disks: Vec<String>,
    ) -> Change {
        let mirrors = if mirrors == 0 { 2 } else { mirrors };
        let columns = if columns == 0 { 2 } else { columns };
        let su = if stripe_unit_bytes == 0 {
            crate::model::DEFAULT_STRIPE_UNIT_BYTES
        } else {
            stripe_unit_bytes
        };
        let layout = match layout {
            LayoutKind::Concat => VolumeLayout::Concat,
            LayoutKind::Stripe => VolumeLayout::Stripe {
                columns,
                stripe_unit_bytes: su,
            },
            LayoutKind::Mirror => VolumeLayout::Mirror { mirrors },
            LayoutKind::MirrorStripe => VolumeLayout::MirrorStripe {
                mirrors,
                columns,
                stripe_unit_bytes: su,
            },
        };
        Change::VolCreate {
            dg,
            volume,
            size_bytes,
            layout,
            log,
            disks,
        }
    }

    /// The new size of `vol grow` / `vol shrink`: `+SIZE` / `-SIZE` (`relative`)
    /// against the committed one.
    fn resolve_new_size(
        &self,
        dg: &str,
        volume: &str,
        new_size_bytes: u64,
        grow: bool,
        relative: bool,
    ) -> Result<u64, RequestError> {
        if !relative {
            return Ok(new_size_bytes);
        }
        let current = self
            .group(dg)
            .and_then(|g| g.volume(volume))
            .map(|v| v.size_bytes)
            .ok_or_else(|| {
                self.refuse_as(
                    ErrorKind::NotFound,
                    format!("volume {volume} does not exist in disk group {dg}"),
                )
            })?;
        let new = if grow {
            current.checked_add(new_size_bytes)
        } else {
            current.checked_sub(new_size_bytes).filter(|&n| n > 0)
        };
        new.ok_or_else(|| {
            self.refuse(format!(
                "volume {volume} of disk group {dg}: cannot {} {} by {}",
                if grow { "grow" } else { "shrink" },
                crate::size::format_size(current),
                crate::size::format_size(new_size_bytes)
            ))
        })
    }

    /// `export`: protocol, nodes (`.` is this node), portal and the default name.
    #[allow(clippy::too_many_arguments)]
    fn resolve_vol_export(
        &self,
        dg: String,
        volume: String,
        protocol: String,
        iqn: String,
        nodes: Vec<String>,
        portal: String,
        hosts: Vec<String>,
    ) -> Result<Change, RequestError> {
        let protocol = self
            .export_protocol(&protocol)
            .map_err(|e| self.refused(e))?;
        let nvmf = protocol == crate::model::ExportProtocol::Nvmf;
        if nvmf && !portal.is_empty() {
            return Err(self.refuse(format!(
                "export of volume {volume}: --portal is for iscsi; an NVMe-oF export is served on each node's nvmf_portal (cluster file)"
            )));
        }
        if !nvmf && !hosts.is_empty() {
            return Err(self.refuse(format!(
                "export of volume {volume}: --host is for nvmf (iSCSI exports take no host NQNs)"
            )));
        }
        let private = self.node.private().disk_group(&dg).is_some();
        // "." is the node plexctl talks to: this one.
        let nodes: Vec<String> = nodes
            .into_iter()
            .map(|n| if n == "." { self.name.clone() } else { n })
            .collect();
        for n in &nodes {
            if self.file.node(n).is_none() {
                return Err(self.refuse(format!(
                    "export of volume {volume}: node {n} is not in the cluster file"
                )));
            }
            if private && n != &self.name {
                return Err(self.refuse(format!(
                    "export of volume {volume}: disk group {dg} is private to node {}; node {n} cannot export it",
                    self.name
                )));
            }
        }
        let nodes = if private && nodes.is_empty() {
            vec![self.name.clone()]
        } else {
            nodes
        };
        if !portal.is_empty() {
            if nodes.len() != 1 {
                return Err(self.refuse(format!(
                    "export of volume {volume}: --portal {portal} needs exactly one --node (each node listens on its own address; without --portal each uses its iscsi_portal)"
                )));
            }
            if let Err(e) = portal.parse::<std::net::SocketAddr>() {
                return Err(self.refuse(format!(
                    "export of volume {volume}: portal {portal:?}: {e} (want address:port)"
                )));
            }
        }
        let iqn = match (iqn.is_empty(), nvmf) {
            (false, _) => iqn,
            (true, false) => exports::default_iqn(&self.file.cluster.name, &dg, &volume),
            (true, true) => exports::default_nqn(&self.file.cluster.id, &dg, &volume),
        };
        Ok(Change::VolExport {
            dg,
            volume,
            export: crate::model::Export {
                protocol,
                iqn,
                nodes,
                portal,
                hosts,
            },
        })
    }
}
