//! Zeroes the disk space a change gives a volume ([`crate::model::new_data_space`]:
//! a new volume's subdisks, a grow's new extents) before the change can commit:
//! the space was free and may hold a removed or shrunk volume's data, different on
//! each disk, which no host may read and which would make a new mirror's plexes
//! read differently.
//!
//! Who zeroes: for a shared group the master, in its local check of the
//! transaction (before any node stages the change, so no volume is quiesced while
//! it runs; a change aborted afterwards leaves only free space zeroed); for a
//! private group its owner, before it stages the change.
//!
//! How, per disk, the first method it supports, in steps of at most
//! [`ZERO_STEP_BYTES`]: for a file, only the parts that hold data (`SEEK_DATA`: a
//! hole reads as zeroes and stays a hole, so a sparse disk file stays as thin as
//! it was), with `fallocate(ZERO_RANGE)` (file systems with unwritten extents:
//! allocated parts stay allocated), then `fallocate(PUNCH_HOLE)` (tmpfs); for a
//! block device, `fallocate(PUNCH_HOLE)` (the device zeroes: WRITE ZEROES, or an
//! UNMAP that reads back zeroes; never a fallback that writes), then
//! `fallocate(ZERO_RANGE)` (the kernel writes zeroes); else plexd writes zeroes,
//! then `fdatasync`. Zeroing is
//! bounded by [`ZERO_BUDGET`], below the master's wait for CHECK answers: storage
//! that zeroes more slowly fails the change with its rate and an estimate, and
//! the cluster file's `zero_new_space = false` turns zeroing off (new space then
//! holds whatever the disks held).
//!
//! Durability: the configuration write that makes the change durable follows on
//! every disk of the group and ends with `fdatasync` of that disk (the same file,
//! or a cache flush of the same device), so after a crash the space reads as
//! zeroes wherever the change is on the disks.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{fallocate, FallocateFlags};
use nix::unistd::{lseek, Whence};

use super::config::ClusterSection;
use super::disks::LocalDisks;
use crate::model::{Change, DiskGroupConfig, NewSpace};
use crate::ondisk;

/// Largest write of the zero-writing fallback.
const ZERO_CHUNK_BYTES: u64 = 1 << 20;

/// Largest piece zeroed by one call, so the budget is checked between pieces.
pub const ZERO_STEP_BYTES: u64 = 256 << 20;

/// Longest a change's zeroing may take: below the master's wait for the answers to
/// CHECK (`reply_timeout_ms`, 15 s), of which its own local check is one.
pub const ZERO_BUDGET: Duration = Duration::from_secs(10);

/// How an extent was zeroed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zeroed {
    /// `fallocate(FALLOC_FL_ZERO_RANGE)`.
    ZeroRange,
    /// `fallocate(FALLOC_FL_PUNCH_HOLE)`.
    PunchHole,
    /// Zeroes written.
    Written,
    /// Nothing to do: a hole in a file, which reads as zeroes.
    Hole,
}

/// The space `change` gives a volume of `after` (its group after the change;
/// `before`: before it) that a node is to zero: none when the cluster file's
/// `zero_new_space` is off, or the change gives none
/// ([`crate::model::new_data_space`]).
pub fn space_to_zero(
    cluster: &ClusterSection,
    change: &Change,
    before: Option<&DiskGroupConfig>,
    after: &DiskGroupConfig,
) -> Option<NewSpace> {
    if !cluster.zero_new_space {
        return None;
    }
    crate::model::new_data_space(change, before, after)
}

/// Zeroes `space` (extents of `group`'s disks, found on this node by id through
/// `local`) within [`ZERO_BUDGET`]. The error names the volume, the disk, its path
/// and this node.
pub fn zero_new_space(
    node: &str,
    group: &DiskGroupConfig,
    space: &NewSpace,
    local: &LocalDisks,
) -> Result<(), String> {
    let volume = &space.volume;
    let began = Instant::now();
    let deadline = began + ZERO_BUDGET;
    let mut how = Vec::new();
    let mut done = 0u64;
    for e in &space.extents {
        let fail = |what: String| {
            format!(
                "node {node}: disk group {}: cannot zero the new space of volume {volume} on disk {}: {what}",
                group.name, e.disk
            )
        };
        let d = group
            .disk(&e.disk)
            .ok_or_else(|| fail("the group has no such disk".into()))?;
        let path = local.path_of(d);
        let late = |done: u64, how: &[Zeroed]| {
            let rate = done as f64 / began.elapsed().as_secs_f64().max(1e-3);
            let left = (space.bytes() - done) as f64 / rate.max(1.0);
            fail(format!(
                "{} of {} zeroed within {} s ({how:?}, {}/s: about {left:.0} s for all; {} next); the change was not made. Storage that cannot zero fast: set zero_new_space = false in the cluster file (new space then holds what the disks held)",
                crate::size::format_size(done),
                crate::size::format_size(space.bytes()),
                ZERO_BUDGET.as_secs(),
                crate::size::format_size(rate as u64),
                path.display(),
            ))
        };
        if done > 0 && Instant::now() >= deadline {
            return Err(late(done, &how));
        }
        let file = open_disk(&path, &d.id).map_err(|e| fail(format!("{}: {e}", path.display())))?;
        match zero_extent(&file, e.offset_bytes, e.len_bytes, deadline) {
            Ok(z) => {
                done += e.len_bytes;
                if !how.contains(&z) {
                    how.push(z);
                }
            }
            Err(ZeroError::Failed(what)) => {
                return Err(fail(format!(
                    "{} at {}+{}: {what}",
                    path.display(),
                    e.offset_bytes,
                    e.len_bytes
                )))
            }
            Err(ZeroError::OutOfTime { zeroed, how: z }) => {
                if !how.contains(&z) {
                    how.push(z);
                }
                return Err(late(done + zeroed, &how));
            }
        }
    }
    log::info!(
        "node {node}: disk group {}: zeroed {} of new space of volume {volume} in {} extent(s) ({how:?}) in {:.1} ms",
        group.name,
        crate::size::format_size(space.bytes()),
        space.extents.len(),
        began.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}

/// Opens the disk at `path` for writing, once its label says it is disk `id` (read
/// before and checked to be the same file after, so a path renamed meanwhile is
/// never written).
fn open_disk(path: &Path, id: &str) -> Result<File, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| e.to_string())?;
    let label = ondisk::read_label(path).map_err(|e| e.to_string())?;
    if label.disk_id != id {
        return Err(format!(
            "holds disk {} (id {}), not id {id}",
            label.disk_name, label.disk_id
        ));
    }
    let (opened, now) = (
        file.metadata().map_err(|e| e.to_string())?,
        std::fs::metadata(path).map_err(|e| e.to_string())?,
    );
    if (opened.dev(), opened.ino(), opened.rdev()) != (now.dev(), now.ino(), now.rdev()) {
        return Err("the path was replaced while it was opened".into());
    }
    Ok(file)
}

/// Why an extent is not zeroed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZeroError {
    /// An I/O error.
    Failed(String),
    /// The deadline passed with the extent's first `zeroed` bytes done, by method
    /// `how`.
    OutOfTime {
        /// Bytes from the extent's start that read as zeroes now.
        zeroed: u64,
        /// The method in use.
        how: Zeroed,
    },
}

/// Zeroes `len` bytes of `file` at `offset` (the module's doc says how), in steps
/// of at most [`ZERO_STEP_BYTES`], the first one always; stops between steps once
/// `deadline` has passed.
pub fn zero_extent(
    file: &File,
    offset: u64,
    len: u64,
    deadline: Instant,
) -> Result<Zeroed, ZeroError> {
    let block = file
        .metadata()
        .map_err(|e| ZeroError::Failed(e.to_string()))?
        .file_type()
        .is_block_device();
    let zero_range = FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    let punch = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    let (order, segments) = match block {
        true => (
            [(punch, Zeroed::PunchHole), (zero_range, Zeroed::ZeroRange)],
            vec![(offset, len)],
        ),
        false => (
            [(zero_range, Zeroed::ZeroRange), (punch, Zeroed::PunchHole)],
            data_segments(file, offset, len),
        ),
    };
    let mut how = None;
    for (start, n) in segments {
        let mut at = 0u64;
        while at < n {
            if let Some(how) = how.filter(|_| Instant::now() >= deadline) {
                let zeroed = start + at - offset;
                return Err(ZeroError::OutOfTime { zeroed, how });
            }
            let step = (n - at).min(ZERO_STEP_BYTES);
            how = Some(zero_step(file, start + at, step, &order, how)?);
            at += step;
        }
    }
    if how == Some(Zeroed::Written) {
        file.sync_data()
            .map_err(|e| ZeroError::Failed(format!("fdatasync: {e}")))?;
    }
    Ok(how.unwrap_or(Zeroed::Hole))
}

/// The parts of `offset..offset + len` of file `file` that hold data (`SEEK_DATA`,
/// `SEEK_HOLE`), as (offset, length): a hole already reads as zeroes and stays a
/// hole (a sparse disk file stays as thin as it was). The whole range when the
/// file system cannot say.
fn data_segments(file: &File, offset: u64, len: u64) -> Vec<(u64, u64)> {
    let fd = file.as_raw_fd();
    let end = offset.saturating_add(len);
    let mut out = Vec::new();
    let mut pos = offset;
    while pos < end {
        let Ok(at) = i64::try_from(pos) else {
            return vec![(offset, len)];
        };
        let data = match lseek(fd, at, Whence::SeekData) {
            Ok(d) => d as u64,
            Err(Errno::ENXIO) => break,
            Err(_) => return vec![(offset, len)],
        };
        if data >= end {
            break;
        }
        let hole = lseek(fd, data as i64, Whence::SeekHole).map_or(end, |h| h as u64);
        let stop = hole.clamp(data + 1, end);
        out.push((data, stop - data));
        pos = stop;
    }
    out
}

/// Zeroes one step: with `how` once it is known (none: the first step, which tries
/// `order`, then writes).
fn zero_step(
    file: &File,
    offset: u64,
    len: u64,
    order: &[(FallocateFlags, Zeroed); 2],
    how: Option<Zeroed>,
) -> Result<Zeroed, ZeroError> {
    let range = match (i64::try_from(offset), i64::try_from(len)) {
        (Ok(o), Ok(n)) => (o, n),
        _ => return Err(ZeroError::Failed("offset or length out of range".into())),
    };
    let first = how.is_none();
    let tries: Vec<(FallocateFlags, Zeroed)> = match how {
        None => order.to_vec(),
        Some(how) => order.iter().copied().filter(|(_, z)| *z == how).collect(),
    };
    for (mode, z) in tries {
        match fallocate(file.as_raw_fd(), mode, range.0, range.1) {
            Ok(()) => return Ok(z),
            Err(Errno::EOPNOTSUPP | Errno::EINVAL | Errno::ENODEV) if first => continue,
            Err(e) => return Err(ZeroError::Failed(format!("fallocate: {e}"))),
        }
    }
    let zeroes = vec![0u8; ZERO_CHUNK_BYTES.min(len) as usize];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(ZERO_CHUNK_BYTES) as usize;
        file.write_all_at(&zeroes[..n], offset + at)
            .map_err(|e| ZeroError::Failed(format!("write: {e}")))?;
        at += n as u64;
    }
    Ok(Zeroed::Written)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new empty file `plexd-<tag>-<pid>.img` in `dir`, open for reading and
    /// writing.
    fn scratch(dir: &Path, tag: &str) -> (std::path::PathBuf, File) {
        let path = dir.join(format!("plexd-{tag}-{}.img", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        (path, file)
    }

    #[test]
    fn an_extent_reads_as_zeroes_and_nothing_around_it_changes() {
        for dir in [std::env::temp_dir(), "/dev/shm".into()] {
            if !dir.is_dir() {
                continue;
            }
            let (path, file) = scratch(&dir, "zero");
            file.write_all_at(&vec![0xa5u8; 4 << 20], 0).unwrap();
            let how = zero_extent(&file, 1 << 20, 2 << 20, Instant::now() + ZERO_BUDGET).unwrap();
            let mut back = vec![0u8; 4 << 20];
            file.read_exact_at(&mut back, 0).unwrap();
            let _ = std::fs::remove_file(&path);
            assert!(
                back[..1 << 20].iter().all(|&b| b == 0xa5),
                "{dir:?} {how:?}"
            );
            assert!(
                back[1 << 20..3 << 20].iter().all(|&b| b == 0),
                "{dir:?} {how:?}"
            );
            assert!(
                back[3 << 20..].iter().all(|&b| b == 0xa5),
                "{dir:?} {how:?}"
            );
        }
    }

    #[test]
    fn zeroing_stops_between_steps_once_its_deadline_passed() {
        let dir: std::path::PathBuf = match std::path::Path::new("/dev/shm").is_dir() {
            true => "/dev/shm".into(),
            false => std::env::temp_dir(),
        };
        let (path, file) = scratch(&dir, "zero-late");
        file.set_len(2 * ZERO_STEP_BYTES).unwrap();
        // Data at the start and past the first step (the holes between need nothing).
        let second = ZERO_STEP_BYTES + 4096;
        for at in [0, second] {
            file.write_all_at(&[0xa5u8; 4096], at).unwrap();
        }
        let late = zero_extent(&file, 0, 2 * ZERO_STEP_BYTES, Instant::now());
        let mut back = [0u8; 4096];
        file.read_exact_at(&mut back, second).unwrap();
        let _ = std::fs::remove_file(&path);
        // The first step is always taken; the next not, and says where it stopped.
        match late {
            Err(ZeroError::OutOfTime { zeroed, .. }) => assert_eq!(zeroed, second),
            other => panic!("{other:?}"),
        }
        assert!(back.iter().all(|&b| b == 0xa5));
    }

    #[test]
    fn holes_of_a_sparse_disk_file_stay_holes() {
        for dir in [std::env::temp_dir(), "/dev/shm".into()] {
            if !dir.is_dir() {
                continue;
            }
            let (path, file) = scratch(&dir, "zero-sparse");
            file.set_len(8 << 20).unwrap();
            file.write_all_at(&vec![0xa5u8; 1 << 20], 2 << 20).unwrap();
            file.sync_all().unwrap();
            let blocks = || file.metadata().unwrap().blocks();
            let before = blocks();
            // A hole: nothing to do.
            let hole = zero_extent(&file, 4 << 20, 4 << 20, Instant::now() + ZERO_BUDGET);
            // Data inside holes: only the data is zeroed.
            let mixed = zero_extent(&file, 0, 8 << 20, Instant::now() + ZERO_BUDGET);
            let mut back = vec![0u8; 8 << 20];
            file.read_exact_at(&mut back, 0).unwrap();
            let after = blocks();
            let _ = std::fs::remove_file(&path);
            assert_eq!(hole, Ok(Zeroed::Hole), "{dir:?}");
            assert!(
                matches!(mixed, Ok(Zeroed::ZeroRange | Zeroed::PunchHole)),
                "{dir:?} {mixed:?}"
            );
            assert!(back.iter().all(|&b| b == 0), "{dir:?}");
            assert!(
                after <= before,
                "{dir:?}: {before} blocks before, {after} after"
            );
        }
    }

    /// A loop device over a file, detached on drop.
    struct Loop(String);

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }

    /// The block-device path (PUNCH_HOLE: the device zeroes; or ZERO_RANGE), on a
    /// loop device; needs root and `losetup` (ci/test runs as root), else says it
    /// was skipped.
    #[test]
    fn a_block_device_extent_reads_as_zeroes() {
        let (path, file) = scratch(&std::env::temp_dir(), "zero-loop");
        file.write_all_at(&vec![0xa5u8; 8 << 20], 0).unwrap();
        file.sync_all().unwrap();
        let out = std::process::Command::new("losetup")
            .args(["--find", "--show"])
            .arg(&path)
            .output();
        let dev = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            other => {
                let _ = std::fs::remove_file(&path);
                eprintln!("no loop device ({other:?}): skipped");
                return;
            }
        };
        let guard = Loop(dev.clone());
        let device = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
            .unwrap();
        let how = zero_extent(&device, 1 << 20, 4 << 20, Instant::now() + ZERO_BUDGET);
        let mut back = vec![0u8; 8 << 20];
        device.read_exact_at(&mut back, 0).unwrap();
        drop(device);
        drop(guard);
        let _ = std::fs::remove_file(&path);
        assert!(
            matches!(how, Ok(Zeroed::PunchHole | Zeroed::ZeroRange)),
            "{how:?}"
        );
        assert!(back[..1 << 20].iter().all(|&b| b == 0xa5));
        assert!(back[1 << 20..5 << 20].iter().all(|&b| b == 0));
        assert!(back[5 << 20..].iter().all(|&b| b == 0xa5));
    }
}
