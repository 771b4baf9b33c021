//! Failed disk groups: groups whose disks this node sees but cannot load (shown by
//! `dg list`, refused names, `dg destroy --force` of what is left on the disks).

use super::*;

impl Daemon {
    /// Reads the failed disk groups from the disks again.
    pub(super) fn refresh_failed(&mut self) {
        let files = self.file.disk_files();
        let now = disks::failed_groups(&files, &self.file.cluster.id, &self.name);
        self.set_failed(now);
    }

    /// The failed disk groups as the disks show them now (new ones are logged).
    pub(super) fn set_failed(&mut self, now: Vec<disks::FailedGroup>) {
        for g in now.iter().filter(|g| !self.failed.contains(g)) {
            log::error!("node {}: disk group {} {}", self.name, g.name, g.reason);
        }
        self.failed = now;
    }

    /// Drops the failed groups that are no longer failed (released, repaired): a
    /// read for `print` and `cluster status` that never adds one (a group being
    /// destroyed at that moment is not reported failed).
    pub(super) fn prune_failed(&mut self) {
        if self.failed.is_empty() {
            return;
        }
        let files = self.file.disk_files();
        let now = disks::failed_groups(&files, &self.file.cluster.id, &self.name);
        self.failed.retain(|g| now.iter().any(|n| n.id == g.id));
    }

    /// `dg destroy DG --force` of a failed group (not imported, configuration
    /// unreadable): releases its disks on this node. `None` for any other change.
    pub(super) fn destroy_failed(&mut self, change: &Change) -> Option<CtlReply> {
        let Change::DgDestroy { dg, force } = change else {
            return None;
        };
        if self.group(dg).is_some() {
            return None;
        }
        self.refresh_failed();
        let g = self.failed.iter().find(|g| g.name == *dg)?.clone();
        if !force {
            return Some(CtlReply::Done(Err(
                self.refuse(format!("disk group {dg} is {}", g.reason))
            )));
        }
        let result = disks::release_failed(&g, &self.name);
        self.refresh_failed();
        Some(match result {
            Ok(()) => CtlReply::Changed(format!(
                "failed disk group {dg} destroyed: disks {} released",
                g.disks
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Err(e) => {
                log::error!("{e}");
                CtlReply::Done(Err(RequestError::new(
                    ErrorKind::Failed,
                    self.name.clone(),
                    e,
                )))
            }
        })
    }
}
