//! Reads a recovered node start's sections of the dirty region logs
//! ([`Action::ReadDirtyLogs`](crate::core::Action::ReadDirtyLogs)) on a thread of its
//! own, so a slow disk holds up neither the main loop (heartbeats) nor the driver's
//! jobs, and hands the results back as [`Input::DirtyLogs`].
//!
//! Each section is read with `pread` from the disk's path on this node (found by
//! the disk id in its label, as every disk access of this node), after dropping the
//! cached pages of a block device (another host's data plane wrote it: as the
//! configuration database's reads, docs/ONDISK.md "Page cache"), and decoded with
//! [`plexd_target_api::drl::read_section`]. A disk that cannot be found, opened or
//! read, or a section cut short, is `Unreadable`: the volume is resynchronised
//! whole.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use plexd_target_api::drl::{self, DirtyLog};

use super::disks::LocalDisks;
use super::Input;
use crate::core::{DirtyLogRead, DirtyLogSection, NodeId};
use crate::model::{bound_ranges, Disk, MAX_RECOVER_RANGES_PER_VOLUME};

/// Reads in flight at most (the core asks at most two at a time: the master's and
/// this node's own); past it a read is answered at once, every section unreadable.
pub const MAX_DRL_READS: usize = 4;
/// Largest section read (a header block and the largest bitmap).
pub const MAX_SECTION_BYTES: u64 = drl::DRL_BLOCK_BYTES + drl::MAX_DRL_REGIONS / 8;

/// One section to read, with the path of its disk on this node (none: not found).
#[derive(Debug, Clone)]
pub struct SectionAt {
    /// The section.
    pub section: DirtyLogSection,
    /// The disk's path here.
    pub path: Option<PathBuf>,
}

/// The reads in flight (shared with their threads).
#[derive(Debug, Default, Clone)]
pub struct Reads(Arc<AtomicUsize>);

impl Reads {
    /// Starts read `op` of node `of`'s sections; its answer comes as
    /// [`Input::DirtyLogs`] on `inputs`. `hold`: the `drl.read` failpoint's sleep,
    /// slept by the read's thread before it reads.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        &self,
        me: &str,
        op: u64,
        of: NodeId,
        sections: Vec<(DirtyLogSection, Option<Disk>)>,
        files: Vec<PathBuf>,
        inputs: SyncSender<Input>,
        hold: Option<std::time::Duration>,
    ) {
        let refuse = |why: String| -> Vec<DirtyLogRead> {
            sections
                .iter()
                .map(|_| DirtyLogRead::Unreadable(why.clone()))
                .collect()
        };
        if self.0.fetch_add(1, Ordering::SeqCst) >= MAX_DRL_READS {
            self.0.fetch_sub(1, Ordering::SeqCst);
            let why = format!("node {me}: {MAX_DRL_READS} dirty region log reads in flight");
            log::warn!("{why}");
            send(me, &inputs, op, refuse(why));
            return;
        }
        let count = Arc::clone(&self.0);
        let name = me.to_string();
        let spawned = std::thread::Builder::new().name("drl-read".into()).spawn({
            let inputs = inputs.clone();
            let sections = sections.clone();
            move || {
                if let Some(d) = hold {
                    log::warn!(
                        "node {name}: failpoint drl.read: sleeping {} ms",
                        d.as_millis()
                    );
                    std::thread::sleep(d);
                }
                let local = LocalDisks::scan(&files);
                let results = sections
                    .into_iter()
                    .map(|(section, disk)| {
                        let path = disk.map(|d| local.path_of(&d));
                        read_one(&name, of, &SectionAt { section, path })
                    })
                    .collect();
                count.fetch_sub(1, Ordering::SeqCst);
                send(&name, &inputs, op, results);
            }
        });
        if let Err(e) = spawned {
            self.0.fetch_sub(1, Ordering::SeqCst);
            let why =
                format!("node {me}: cannot start a thread to read the dirty region logs: {e}");
            log::error!("{why}");
            send(me, &inputs, op, refuse(why));
        }
    }
}

fn send(me: &str, inputs: &SyncSender<Input>, op: u64, results: Vec<DirtyLogRead>) {
    // A full queue waits (this is a thread of its own); a closed one means the
    // main loop is gone.
    if inputs.send(Input::DirtyLogs { op, results }).is_err() {
        log::info!("node {me}: dirty region log read {op} answered after the main loop stopped");
    }
}

/// Reads and decodes one section.
pub fn read_one(me: &str, of: NodeId, s: &SectionAt) -> DirtyLogRead {
    let sec = &s.section;
    let what = format!(
        "node {me}: dirty region log {:#x} of volume {} (disk group {}), node {of}'s section at offset {} of disk {}",
        sec.log_id, sec.volume, sec.dg, sec.offset_bytes, sec.disk
    );
    let result = (|| {
        let path = s
            .path
            .as_ref()
            .ok_or_else(|| "the disk is not in the disk group or not found here".to_string())?;
        if sec.len_bytes > MAX_SECTION_BYTES || sec.len_bytes < drl::DRL_BLOCK_BYTES {
            return Err(format!(
                "section of {} bytes (a section is {}..={MAX_SECTION_BYTES})",
                sec.len_bytes,
                drl::DRL_BLOCK_BYTES
            ));
        }
        let f = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        drop_cache(&f, sec.offset_bytes, sec.len_bytes);
        let len = usize::try_from(sec.len_bytes).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, sec.offset_bytes)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        drl::read_section(&buf, of, sec.log_id)
    })();
    match result {
        Ok(DirtyLog::Unused) => {
            log::info!("{what}: unused (no write under this log)");
            DirtyLogRead::Unused
        }
        Ok(DirtyLog::Dirty(ranges)) => {
            let bytes: u64 = ranges.iter().map(|r| r.1).sum();
            log::info!("{what}: {} dirty range(s), {bytes} bytes", ranges.len());
            DirtyLogRead::Dirty(bound_ranges(
                &ranges,
                u64::MAX,
                MAX_RECOVER_RANGES_PER_VOLUME,
            ))
        }
        Err(e) => {
            log::warn!("{what}: unreadable ({e}): the volume is resynchronised whole");
            DirtyLogRead::Unreadable(e)
        }
    }
}

/// Drops a block device's cached pages of the section (another host wrote it).
/// Advisory; failure only means a cached read.
fn drop_cache(f: &File, offset: u64, len: u64) {
    use std::os::unix::fs::FileTypeExt;
    if f.metadata().is_ok_and(|m| m.file_type().is_block_device()) {
        let _ = nix::fcntl::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(f),
            i64::try_from(offset).unwrap_or(i64::MAX),
            i64::try_from(len).unwrap_or(i64::MAX),
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexd_target_api::drl::DrlHeader;
    use std::io::Write;

    fn section(len: u64) -> DirtyLogSection {
        DirtyLogSection {
            dg: "dg1".into(),
            volume: "v1".into(),
            disk: "d1".into(),
            offset_bytes: 8192,
            len_bytes: len,
            log_id: 0x77,
        }
    }

    #[test]
    fn reads_dirty_unused_and_short_sections() {
        let dir = std::env::temp_dir().join(format!("plexd-drl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk");
        let h = DrlHeader {
            node: 2,
            log_id: 0x77,
            region_bytes: drl::DEFAULT_REGION_BYTES,
            regions: 64,
        };
        let len = drl::section_bytes(h.regions);
        let mut bytes = vec![0u8; 8192 + len as usize];
        bytes[8192..8192 + 4096].copy_from_slice(&h.encode());
        bytes[8192 + 4096] = 0b0000_0110; // regions 1 and 2
        File::create(&path).unwrap().write_all(&bytes).unwrap();
        let at = SectionAt {
            section: section(len),
            path: Some(path.clone()),
        };
        let r = drl::DEFAULT_REGION_BYTES;
        assert_eq!(read_one("a", 2, &at), DirtyLogRead::Dirty(vec![(r, 2 * r)]));
        // Another node's section header: that node never wrote under this log.
        assert_eq!(read_one("a", 3, &at), DirtyLogRead::Unused);
        // A missing disk, or a section cut short: unreadable (whole resync).
        let missing = SectionAt {
            section: section(len),
            path: None,
        };
        assert!(matches!(
            read_one("a", 2, &missing),
            DirtyLogRead::Unreadable(_)
        ));
        let short = SectionAt {
            section: section(4096),
            path: Some(path),
        };
        assert!(matches!(
            read_one("a", 2, &short),
            DirtyLogRead::Unreadable(_)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
