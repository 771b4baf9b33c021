//! Answers to read requests of the ctl API (`cluster status`, `print`) and `disk init`.

use super::*;

impl Daemon {
    pub(super) fn status(&self) -> StatusOut {
        let st = self.node.status();
        let view = st.view.clone();
        let mut out = StatusOut {
            node: self.name.clone(),
            master: view
                .as_ref()
                .map(|v| self.node.name(v.master))
                .unwrap_or_default(),
            view: view.as_ref().map(|v| v.id).unwrap_or(0),
            nodes: Vec::new(),
            failed_groups: self
                .failed
                .iter()
                .map(|g| g.line())
                .chain(self.owner.taken_all().into_iter().map(|(g, owner)| {
                    format!(
                        "{g}: taken over by {owner} (its disks name it owner): this node's \
                         private volumes are fenced until it is dropped here"
                    )
                }))
                .chain(self.taken.lines())
                .collect(),
            quorum_disk: self.node.quorum_disk_line().unwrap_or_default(),
        };
        for n in &self.file.nodes {
            let member = view.as_ref().is_some_and(|v| v.contains(n.id));
            let role = if n.id == self.me {
                st.role.as_str().to_string()
            } else if view.as_ref().is_some_and(|v| v.master == n.id) {
                "master".into()
            } else if member {
                "slave".into()
            } else {
                "out".into()
            };
            let mut reason = st.reasons.get(&n.id).cloned().unwrap_or_default();
            if n.id == self.me {
                reason = self.node.status_line(now_ms(self.start));
            } else if let Some(r) = self.transport.refused(n.id) {
                reason = r;
            }
            out.nodes.push(NodeStatusOut {
                name: n.name.clone(),
                id: n.id,
                role,
                state: if member { "up".into() } else { "down".into() },
                reason,
                address: n.address.clone(),
            });
        }
        out
    }

    pub(super) fn print(&self, dg: &str) -> CtlReply {
        let mut groups: Vec<&crate::model::DiskGroupConfig> = self
            .node
            .config()
            .groups
            .iter()
            .map(|g| &**g)
            .chain(self.node.private().disk_groups.iter())
            .filter(|g| dg.is_empty() || g.name == dg)
            .collect();
        groups.sort_by(|a, b| a.name.cmp(&b.name));
        let failed: Vec<&disks::FailedGroup> = self
            .failed
            .iter()
            .filter(|g| dg.is_empty() || g.name == dg)
            .collect();
        if !dg.is_empty() && groups.is_empty() && failed.is_empty() {
            let e = format!("disk group {dg} does not exist");
            return CtlReply::Error(self.refuse_as(ErrorKind::NotFound, e));
        }
        CtlReply::Print {
            groups: groups.into_iter().cloned().collect(),
            failed: failed.into_iter().cloned().collect(),
        }
    }

    pub(super) fn disk_init(&self, path: &str, name: &str, force: bool) -> CtlReply {
        let p = std::path::Path::new(path);
        let name = if name.is_empty() {
            p.file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or("disk")
                .to_string()
        } else {
            name.to_string()
        };
        let groups = self
            .node
            .config()
            .groups
            .iter()
            .map(|g| &**g)
            .chain(self.node.private().disk_groups.iter());
        if let Err(e) = disks::check_unclaimed(p, &name, groups, &self.failed) {
            let e = self.refuse_as(ErrorKind::InUse, e);
            log::warn!("{e}");
            return CtlReply::Error(e);
        }
        let opts = crate::ondisk::InitOptions {
            force,
            ..Default::default()
        };
        match crate::ondisk::init_disk(p, &name, opts) {
            Ok(l) => {
                log::info!("node {}: disk {name} initialised on {path}", self.name);
                CtlReply::Disk(ctl::DiskOut {
                    name: l.disk_name,
                    path: path.to_string(),
                    size: l.disk_size_bytes,
                    dg: String::new(),
                    state: "free".into(),
                    id: l.disk_id,
                    repairs: 0,
                })
            }
            Err(e) => {
                let e = self.refuse(format!("disk {name}: {e}"));
                log::warn!("{e}");
                CtlReply::Error(e)
            }
        }
    }
}
