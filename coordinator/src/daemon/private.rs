//! Private disk-group changes, as the driver carries them out. What runs when is the
//! core's (`core::private`: one at a time, validated against the groups the one
//! before left, none while a shared transaction is in progress or staged here, no
//! disk or group name shared with the cluster's groups); the daemon hands its
//! `PrivateChange` action to the driver as one job (checked, staged in the data
//! plane, written to the group's disks, committed, all on this node) and feeds the
//! answer back as `Event::PrivateDone`.
//!
//! Node-crash recovery of private mirrors: a private group's record on its disks
//! names the start of this node that serves it (`open_nodes`, one entry: its *open
//! record*, docs/ONDISK.md) from before its data plane is given the group at a start
//! ([`open_private_groups`]) and with every private change this start writes
//! ([`Daemon::private_job`] stamps it), until a clean stop clears it
//! ([`close_private_groups`]). A group still open at a start was served by a start
//! that did not stop cleanly: before it is served again its mirrors are recovered
//! ([`recover_group`]: this node's section of each mirrored volume's dirty region
//! log read, the plexes after the first ACTIVE one made SYNCING over the dirty
//! ranges, or whole without a log or with an unreadable section), written to the
//! disks, and the private resync threads (`resync::Job`) copy those ranges.

use std::path::PathBuf;

use super::drl::{read_one, SectionAt};
use super::*;
use crate::core::{DirtyLogRead, DirtyLogSection};
use crate::model::{DiskGroupConfig, DiskUpdate, OpenNode, RecoverLog};

impl Daemon {
    /// The driver job of the core's `PrivateChange` action. Every private group the
    /// change writes carries this start's open record.
    pub(super) fn private_job(
        &self,
        request: RequestId,
        change: Change,
        before: ClusterConfig,
        mut after: ClusterConfig,
        shared: SharedConfig,
    ) -> Job {
        for g in &mut after.disk_groups {
            g.open_nodes = vec![self.start_open];
        }
        Job::Private {
            group: before.disk_group(change.dg_name()).cloned().map(Box::new),
            drop_taken: self.taken.is_drop(request),
            request,
            change,
            before,
            after,
            shared: shared.groups,
            txn: incarnation(),
        }
    }
}

/// The sections of `g`'s mirrored volumes (two or more plexes that could be
/// ACTIVE) that node `node` writes, with the path of each log's disk here (none:
/// not found); volumes without a log are left out (resynchronised whole).
fn sections(g: &DiskGroupConfig, node: NodeId, files: &[PathBuf]) -> Vec<SectionAt> {
    let local = disks::LocalDisks::scan(files);
    g.volumes
        .iter()
        .filter_map(|v| super::model::log_section(g, v, node))
        .map(|section| {
            let paths = section
                .copies
                .iter()
                .map(|c| g.disk(&c.disk).map(|d| local.path_of(d)))
                .collect();
            SectionAt { section, paths }
        })
        .collect()
}

/// What a log read says for a recovery: `Some` entry (dirty ranges, none when
/// unused), `None` when unreadable (the volume is resynchronised whole).
pub(super) fn recover_entry(section: &DirtyLogSection, read: DirtyLogRead) -> Option<RecoverLog> {
    let ranges = match read {
        DirtyLogRead::Unused => Vec::new(),
        DirtyLogRead::Dirty(r) => r,
        DirtyLogRead::Unreadable(_) => return None,
    };
    Some(RecoverLog {
        dg: section.dg.clone(),
        volume: section.volume.clone(),
        log_id: section.log_id,
        ranges,
    })
}

/// Recovers group `g`, left open (`g.open_nodes` non-empty) by a start that did
/// not stop cleanly (this node's, `name`, at a start; its crashed owner's at a
/// `dg import --clear-owner`): reads the section of
/// each mirrored volume's log of every node id the open record names, and applies
/// [`DiskGroupConfig::recover_private`] with their union (a volume whose section
/// of any of them is unreadable is resynchronised whole). The bytes the resync
/// will copy are logged.
pub(super) fn recover_group(name: &str, g: &mut DiskGroupConfig, files: &[PathBuf]) {
    let left = g.open_nodes.clone();
    let mut nodes: Vec<NodeId> = left.iter().map(|o| o.node).collect();
    nodes.dedup();
    let reads: Vec<Vec<(DirtyLogSection, Option<RecoverLog>)>> = nodes
        .iter()
        .map(|&node| {
            sections(g, node, files)
                .iter()
                .map(|s| {
                    (
                        s.section.clone(),
                        recover_entry(&s.section, read_one(name, node, s)),
                    )
                })
                .collect()
        })
        .collect();
    let logs = union_entries(&reads);
    g.recover_private(&logs);
    let mut copies = Vec::new();
    for v in &g.volumes {
        for p in v
            .plexes
            .iter()
            .filter(|p| p.state == crate::model::PlexState::Syncing)
        {
            let bytes: u64 = if p.resync_ranges.is_empty() {
                v.size_bytes
            } else {
                p.resync_ranges.iter().map(|r| r.1).sum()
            };
            copies.push(format!(
                "plex {} of volume {}: {bytes} bytes",
                p.name, v.name
            ));
        }
    }
    log::warn!(
        "node {name}: {} disk group {} was left open by start(s) {left:?} (no clean stop): recovered before it is served; to copy: {}",
        if g.shared { "shared" } else { "private" },
        g.name,
        if copies.is_empty() {
            "nothing".to_string()
        } else {
            copies.join(", ")
        }
    );
}

/// The entries of a recovery from the log reads of several nodes' sections: per
/// volume the union of their ranges, left out (whole) when any read is.
fn union_entries(reads: &[Vec<(DirtyLogSection, Option<RecoverLog>)>]) -> Vec<RecoverLog> {
    let Some(first) = reads.first() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    'volume: for (section, _) in first {
        let mut merged: Option<RecoverLog> = None;
        for node in reads {
            let entry = node
                .iter()
                .find(|(s, _)| s.dg == section.dg && s.volume == section.volume)
                .and_then(|(_, e)| e.as_ref());
            let Some(e) = entry else {
                continue 'volume;
            };
            match &mut merged {
                None => merged = Some(e.clone()),
                Some(m) => m.ranges.extend_from_slice(&e.ranges),
            }
        }
        out.extend(merged);
    }
    out
}

/// At a start, the private groups that must wait out a former owner's lease before
/// this node's data plane serves them (names): each was left open by a start that
/// did not stop cleanly, and the running data plane does not serve all of its
/// volumes (`served`: the names it lists). That start may have been killed while a
/// `dg import --clear-owner` waited out the old owner's private-group lease
/// (`daemon::takeover`): its labels already name this node, but the old
/// owner's data plane, frozen or cut off, may still write the group for up to one
/// lease. A start whose data plane serves the whole group had finished that wait
/// (the data plane is given a taken group only after it), and a group without
/// volumes has nothing to serve; neither waits. A data plane that restarted too (a
/// node reboot) serves nothing, so its left-open groups wait: the cost is one
/// lease at that start, paid only where the previous start crashed.
pub(super) fn wait_before_serving(
    groups: &[DiskGroupConfig],
    served: &std::collections::BTreeSet<String>,
) -> Vec<String> {
    groups
        .iter()
        .filter(|g| !g.open_nodes.is_empty())
        .filter(|g| {
            g.volumes
                .iter()
                .any(|v| !served.contains(&crate::model::volume_bdev(&g.name, &v.name)))
        })
        .map(|g| g.name.clone())
        .collect()
}

/// At a start, before the data plane is given the private groups: each group left
/// open is recovered ([`recover_group`]), then every group is written with this
/// start's open record (`start`). A group whose record cannot be written is
/// still served (as before this record existed); the error names it.
pub(super) fn open_private_groups(
    name: &str,
    start: OpenNode,
    groups: &mut [DiskGroupConfig],
    files: &[PathBuf],
) {
    for g in groups.iter_mut() {
        if !g.open_nodes.is_empty() {
            recover_group(name, g, files);
        }
        g.open_nodes = vec![start];
        g.seq += 1;
        write_groups(name, std::slice::from_ref(g), files, "open");
    }
}

/// A clean stop: every private group is written without an open record (no
/// recovery at the next start).
pub(super) fn close_private_groups(name: &str, groups: &[DiskGroupConfig], files: &[PathBuf]) {
    let closed: Vec<DiskGroupConfig> = groups
        .iter()
        .map(|g| {
            let mut g = g.clone();
            g.open_nodes.clear();
            g.seq += 1;
            g
        })
        .collect();
    write_groups(name, &closed, files, "close");
}

fn write_groups(name: &str, groups: &[DiskGroupConfig], files: &[PathBuf], what: &str) {
    if groups.is_empty() {
        return;
    }
    let updates: Vec<DiskUpdate> = groups
        .iter()
        .map(|g| DiskUpdate::WriteConfig(std::sync::Arc::new(g.clone())))
        .collect();
    let names: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
    let mut repairs = disks::Repairs::default();
    let memory = (&mut repairs, &mut disks::Written::default());
    let local = disks::LocalDisks::scan(files);
    match disks::write_updates(&updates, incarnation(), name, &local, memory, None) {
        Ok(_) => log::info!("node {name}: private disk group(s) {names:?}: {what} record written"),
        Err(e) => log::error!(
            "node {name}: private disk group(s) {names:?}: cannot write the {what} record: {e}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(
        volume: &str,
        ranges: Option<Vec<(u64, u64)>>,
    ) -> (DirtyLogSection, Option<RecoverLog>) {
        let section = DirtyLogSection {
            dg: "dg1".into(),
            volume: volume.into(),
            copies: vec![crate::core::SectionCopy {
                disk: "d1".into(),
                offset_bytes: 8192,
            }],
            len_bytes: 8192,
            log_id: 7,
        };
        let entry = ranges.map(|ranges| RecoverLog {
            dg: "dg1".into(),
            volume: volume.into(),
            log_id: 7,
            ranges,
        });
        (section, entry)
    }

    #[test]
    fn the_sections_of_several_starts_are_united_and_an_unreadable_one_means_whole() {
        let a = vec![read("v1", Some(vec![(0, 10)])), read("v2", Some(vec![]))];
        let b = vec![read("v1", Some(vec![(100, 10)])), read("v2", None)];
        let logs = union_entries(&[a.clone(), b]);
        // v1: both nodes' ranges; v2: unreadable in b's section, left out (whole).
        assert_eq!(logs.len(), 1);
        assert_eq!(
            (logs[0].volume.as_str(), logs[0].ranges.clone()),
            ("v1", vec![(0, 10), (100, 10)])
        );
        // One start: its own entries.
        let one = union_entries(&[a]);
        assert_eq!(one.len(), 2);
        assert!(union_entries(&[]).is_empty());
    }
}
