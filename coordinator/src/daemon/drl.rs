//! Reads a recovered node start's sections of the dirty region logs
//! ([`Action::ReadDirtyLogs`](crate::core::Action::ReadDirtyLogs)) on a thread of its
//! own, so a slow disk holds up neither the main loop (heartbeats) nor the driver's
//! jobs, and hands the results back as [`Input::DirtyLogs`].
//!
//! Each section is read with `pread` from the disk's path on this node (found by
//! the disk id in its label, as every disk access of this node), after dropping the
//! cached pages of a block device (another host's data plane wrote it: as the
//! configuration database's reads, docs/ONDISK.md "Page cache"), and decoded with
//! [`plexd_target_api::drl::read_section`]. A log with two copies has the section
//! read on each: the answer is the union of the copies (a copy that missed marks,
//! its write having failed, only adds stale dirty regions; docs/PROTOCOL.md,
//! "Node-crash recovery"). A copy whose disk cannot be found, opened or read, or
//! whose section is cut short, makes the answer `Unreadable`: the volume is
//! resynchronised whole, since the copy left may be a stale, retired one.

use super::Inputs;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use plexd_target_api::drl::{self, DirtyLog};

use super::disks::LocalDisks;
use super::Input;
use crate::core::{DirtyLogRead, DirtyLogSection, NodeId, SectionCopy};
use crate::model::{bound_ranges, Disk, MAX_RECOVER_RANGES_PER_VOLUME};

/// Reads in flight at most (the core asks at most two at a time: the master's and
/// this node's own); past it a read is answered at once, every section unreadable.
pub const MAX_DRL_READS: usize = 4;
/// Largest section read (a header block and the largest bitmap).
pub const MAX_SECTION_BYTES: u64 = drl::DRL_BLOCK_BYTES + drl::MAX_DRL_REGIONS / 8;

/// One section to read, with the path of each copy's disk on this node (none:
/// not found).
#[derive(Debug, Clone)]
pub struct SectionAt {
    /// The section.
    pub section: DirtyLogSection,
    /// Each copy's disk path here (`section.copies` order).
    pub paths: Vec<Option<PathBuf>>,
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
        sections: Vec<(DirtyLogSection, Vec<Option<Disk>>)>,
        files: Vec<PathBuf>,
        inputs: Inputs,
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
                    .map(|(section, disks)| {
                        let paths = disks
                            .into_iter()
                            .map(|d| d.map(|d| local.path_of(&d)))
                            .collect();
                        read_one(&name, of, &SectionAt { section, paths })
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

fn send(me: &str, inputs: &Inputs, op: u64, results: Vec<DirtyLogRead>) {
    // A full queue waits (this is a thread of its own); a closed one means the
    // main loop is gone.
    if inputs
        .send_blocking(Input::DirtyLogs { op, results })
        .is_err()
    {
        log::info!("node {me}: dirty region log read {op} answered after the main loop stopped");
    }
}

/// Reads and decodes one section: the union of its copies, or `Unreadable` when
/// any copy cannot be read.
pub fn read_one(me: &str, of: NodeId, s: &SectionAt) -> DirtyLogRead {
    let sec = &s.section;
    let what = format!(
        "node {me}: dirty region log {:#x} of volume {} (disk group {}), node {of}'s section",
        sec.log_id, sec.volume, sec.dg
    );
    let mut dirty: Option<Vec<(u64, u64)>> = None;
    let mut readable = 0;
    let mut errors = Vec::new();
    for (i, copy) in sec.copies.iter().enumerate() {
        let path = s.paths.get(i).cloned().flatten();
        let at = format!("at offset {} of disk {}", copy.offset_bytes, copy.disk);
        match read_copy(sec, copy, path.as_ref(), of) {
            Ok(DirtyLog::Unused) => {
                log::info!("{what} {at}: unused (no write under this log)");
                readable += 1;
            }
            Ok(DirtyLog::Dirty(ranges)) => {
                let bytes: u64 = ranges.iter().map(|r| r.1).sum();
                log::info!(
                    "{what} {at}: {} dirty range(s), {bytes} bytes",
                    ranges.len()
                );
                readable += 1;
                dirty.get_or_insert_with(Vec::new).extend(ranges);
            }
            Err(e) => {
                log::warn!("{what} {at}: unreadable ({e})");
                errors.push(format!("disk {}: {e}", copy.disk));
            }
        }
    }
    // One copy unreadable is enough for a whole resync: the readable one may be a
    // copy the data plane retired after a failed write, without the marks made
    // since (docs/PROTOCOL.md, "Two log copies").
    if !errors.is_empty() || readable == 0 {
        let why = if errors.is_empty() {
            "the log has no copy".to_string()
        } else {
            errors.join("; ")
        };
        log::warn!("{what}: a copy is unreadable: the volume is resynchronised whole");
        return DirtyLogRead::Unreadable(why);
    }
    match dirty {
        None => DirtyLogRead::Unused,
        Some(all) => {
            DirtyLogRead::Dirty(bound_ranges(&all, u64::MAX, MAX_RECOVER_RANGES_PER_VOLUME))
        }
    }
}

/// Reads and decodes one copy of a section.
fn read_copy(
    sec: &DirtyLogSection,
    copy: &SectionCopy,
    path: Option<&PathBuf>,
    of: NodeId,
) -> Result<DirtyLog, String> {
    let path =
        path.ok_or_else(|| "the disk is not in the disk group or not found here".to_string())?;
    if sec.len_bytes > MAX_SECTION_BYTES || sec.len_bytes < drl::DRL_BLOCK_BYTES {
        return Err(format!(
            "section of {} bytes (a section is {}..={MAX_SECTION_BYTES})",
            sec.len_bytes,
            drl::DRL_BLOCK_BYTES
        ));
    }
    let f = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    drop_cache(&f, copy.offset_bytes, sec.len_bytes);
    let len = usize::try_from(sec.len_bytes).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, copy.offset_bytes)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    drl::read_section(&buf, of, sec.log_id)
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

    fn section(len: u64, copies: usize) -> DirtyLogSection {
        DirtyLogSection {
            dg: "dg1".into(),
            volume: "v1".into(),
            copies: (0..copies)
                .map(|i| SectionCopy {
                    disk: format!("d{}", i + 1),
                    offset_bytes: 8192,
                })
                .collect(),
            len_bytes: len,
            log_id: 0x77,
        }
    }

    const H: DrlHeader = DrlHeader {
        node: 2,
        log_id: 0x77,
        region_bytes: drl::DEFAULT_REGION_BYTES,
        regions: 64,
    };

    /// A disk file with node 2's section at 8192 with `bitmap` as its first
    /// bitmap byte (None: no header, never written).
    fn disk(dir: &std::path::Path, name: &str, bitmap: Option<u8>) -> PathBuf {
        let len = drl::section_bytes(H.regions);
        let mut bytes = vec![0u8; 8192 + len as usize];
        if let Some(b) = bitmap {
            bytes[8192..8192 + 4096].copy_from_slice(&H.encode());
            bytes[8192 + 4096] = b;
        }
        let path = dir.join(name);
        File::create(&path).unwrap().write_all(&bytes).unwrap();
        path
    }

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("plexd-drl-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn reads_dirty_unused_and_short_sections() {
        let dir = tempdir("one");
        let path = disk(&dir, "disk", Some(0b0000_0110)); // regions 1 and 2
        let len = drl::section_bytes(H.regions);
        let at = SectionAt {
            section: section(len, 1),
            paths: vec![Some(path.clone())],
        };
        let r = drl::DEFAULT_REGION_BYTES;
        assert_eq!(read_one("a", 2, &at), DirtyLogRead::Dirty(vec![(r, 2 * r)]));
        // Another node's section header: that node never wrote under this log.
        assert_eq!(read_one("a", 3, &at), DirtyLogRead::Unused);
        // A missing disk, or a section cut short: unreadable (whole resync).
        let missing = SectionAt {
            section: section(len, 1),
            paths: vec![None],
        };
        assert!(matches!(
            read_one("a", 2, &missing),
            DirtyLogRead::Unreadable(_)
        ));
        let short = SectionAt {
            section: section(4096, 1),
            paths: vec![Some(path)],
        };
        assert!(matches!(
            read_one("a", 2, &short),
            DirtyLogRead::Unreadable(_)
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn two_copies_read_as_their_union_and_one_unreadable_as_whole() {
        let dir = tempdir("two");
        let r = drl::DEFAULT_REGION_BYTES;
        // Copy 1 has regions 1, 2 and 5; copy 2 (stale: it missed the mark of 5,
        // and kept region 0 a clean did not reach) has 0, 1 and 2.
        let d1 = disk(&dir, "d1", Some(0b0010_0110));
        let d2 = disk(&dir, "d2", Some(0b0000_0111));
        let never = disk(&dir, "never", None);
        let len = drl::section_bytes(H.regions);
        let read = |paths: Vec<Option<PathBuf>>| {
            read_one(
                "a",
                2,
                &SectionAt {
                    section: section(len, 2),
                    paths,
                },
            )
        };
        assert_eq!(
            read(vec![Some(d1.clone()), Some(d2.clone())]),
            DirtyLogRead::Dirty(vec![(0, 3 * r), (5 * r, r)]),
            "the union"
        );
        // One copy unreadable: the whole volume (the other may be a retired copy
        // that missed the marks made after its failure).
        for paths in [vec![None, Some(d2.clone())], vec![Some(d1.clone()), None]] {
            let DirtyLogRead::Unreadable(why) = read(paths) else {
                panic!("one copy unreadable must be Unreadable");
            };
            assert!(why.contains("disk d"), "{why}");
        }
        // A copy never initialized (its init failed) adds nothing.
        assert_eq!(
            read(vec![Some(d1.clone()), Some(never.clone())]),
            DirtyLogRead::Dirty(vec![(r, 2 * r), (5 * r, r)])
        );
        assert_eq!(
            read(vec![Some(never.clone()), Some(never.clone())]),
            DirtyLogRead::Unused
        );
        assert!(matches!(
            read(vec![Some(never), None]),
            DirtyLogRead::Unreadable(_)
        ));
        // Both unreadable: the whole volume.
        let DirtyLogRead::Unreadable(why) = read(vec![None, None]) else {
            panic!("both copies unreadable must be Unreadable");
        };
        assert!(why.contains("disk d1") && why.contains("disk d2"), "{why}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
