//! The configuration database on the disks: each disk's private region.
//!
//! ```text
//!  0        4K       8K            64K                 64K+S               64K+2S   P
//!  | label  | label  | reserved    | slot 0            | slot 1            | pad    | public region →
//!  |primary | backup | (zeros)     | hdr 4K | payload  | hdr 4K | payload  |        | (subdisks)
//! ```
//! (P = private region size, 8 MiB by default; S = slot length, 4,064 KiB by default.)
//!
//! - The label says what the disk is (id, media name, geometry) and which disk group
//!   holds it. Two copies; the valid one with the higher generation wins.
//! - Each slot holds a checkpoint (the disk group's whole configuration) and a change
//!   log after it ([`log`]). A small change appends a record to the log of the slot
//!   holding this disk's newest configuration, when that is the configuration the
//!   change was made from; otherwise the whole configuration goes to the slot that
//!   does not hold it (the slots alternate), then `fdatasync`. A torn write can only
//!   damage the record or the slot being written.
//! - Reading: the newest valid slot (highest sequence number, its log replayed) across
//!   all given disks is the configuration. A slot is valid when its header magic,
//!   version, CRC, slot index and length are right, the payload CRC matches, the
//!   payload decodes, its log replays and the configuration passes
//!   [`DiskGroupConfig::validate`].
//!
//! Nothing here panics on disk content: every problem is a typed [`OnDiskError`] or a
//! per-slot [`SlotStatus::Invalid`] with the reason. Byte layouts: docs/ONDISK.md.

pub mod codec;
pub mod label;
pub mod layout;
pub mod log;
pub mod slot;

#[cfg(test)]
mod tests;

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use thiserror::Error;

pub use codec::{decode_config, encode_config, CONFIG_FORMAT_VERSION};
pub use label::{Label, LabelDiskGroup, LABEL_VERSION};
pub use layout::{Geometry, BLOCK_BYTES, DEFAULT_PRIVATE_REGION_BYTES};
pub use slot::{SlotHeader, SlotProblem, SLOT_VERSION};

use crate::model::{new_id, validate_name, Disk, DiskGroupConfig};

/// An on-disk operation that failed. Every variant names the disk (path) or the disk
/// group and says why.
#[derive(Debug, Error)]
pub enum OnDiskError {
    /// The device could not be opened, read, written or synced.
    #[error("{}: {op}: {source}", .path.display())]
    Io {
        /// Device path.
        path: PathBuf,
        /// What was being done (`open`, `read label`, `write slot 1`, ...).
        op: String,
        /// The OS error.
        source: io::Error,
    },
    /// Neither label copy is valid.
    #[error("{}: unreadable label: {reason}", .path.display())]
    Label {
        /// Device path.
        path: PathBuf,
        /// Why (blank, bad magic, checksum mismatch, bad geometry, device too small).
        reason: String,
    },
    /// The operation is refused on this disk (not in the group, stale write, conflicting
    /// transaction, already initialised, too small...).
    #[error("{}: {reason}", .path.display())]
    Refused {
        /// Device path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The configuration to write is itself invalid or does not fit a slot.
    #[error("disk group {dg}: {reason}")]
    BadConfig {
        /// Disk group name.
        dg: String,
        /// Why.
        reason: String,
    },
    /// No disk holds a valid configuration.
    #[error("no valid configuration on any disk: {details}")]
    NoValidConfig {
        /// One `path: reason` entry per disk, separated by `; `.
        details: String,
    },
    /// Two disks hold the same sequence number written by different transactions.
    #[error(
        "disk group {dg}: configuration seq {seq} written by different transactions: {details}"
    )]
    Conflict {
        /// Disk group name.
        dg: String,
        /// The sequence number.
        seq: u64,
        /// Which disk holds which transaction.
        details: String,
    },
    /// A disk holds this shared group's configuration from a master of a newer
    /// epoch (the message contains [`crate::core::NEWER_EPOCH`]), or the write's
    /// deadline passed before a disk was written ([`crate::core::WRITE_DEADLINE`]):
    /// the writer has been, or may have been, replaced, and the core gives up.
    #[error("disk group {dg}: configuration seq {seq} of epoch {epoch} refused: {details}")]
    NewerEpoch {
        /// Disk group name.
        dg: String,
        /// The sequence number being written.
        seq: u64,
        /// The writer's epoch.
        epoch: u64,
        /// Which disk holds what.
        details: String,
    },
    /// No disks were given.
    #[error("no disks given")]
    NoDisks,
    /// A configuration write reached no disk.
    #[error("disk group {dg}: configuration seq {seq} written to no disk: {details}")]
    WriteFailed {
        /// Disk group name.
        dg: String,
        /// The sequence number.
        seq: u64,
        /// The error of each disk.
        details: String,
    },
}

/// The epoch of a transaction id: the view id of the master that wrote it (the
/// upper 32 bits; the lower 32 count the transactions of that view).
pub fn txn_epoch(txn_id: u64) -> u64 {
    txn_id >> 32
}

/// A shared group's configuration `newer` (epoch, seq) supersedes `older`: it was
/// written by a master of a newer epoch at the same or a lower seq, so `older` was
/// written later by a master that had been replaced (a stale lineage).
fn supersedes(newer: (u64, u64), older: (u64, u64)) -> bool {
    txn_epoch(newer.0) > txn_epoch(older.0) && newer.1 <= older.1
}

/// Two configurations of one disk group are of one lineage of cluster masters: both
/// shared, with the same non-empty owner (a group imported from a host or another
/// cluster starts a new lineage, whose transaction ids are not comparable).
fn same_lineage(a: &DiskGroupConfig, b: &DiskGroupConfig) -> bool {
    Lineage::of(a).same(&Lineage::of(b))
}

/// What a writer needs of a valid slot's configuration besides its header: the
/// fields that place it in a lineage ([`same_lineage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lineage {
    id: String,
    shared: bool,
    owner_id: String,
}

impl Lineage {
    fn of(c: &DiskGroupConfig) -> Lineage {
        Lineage {
            id: c.id.clone(),
            shared: c.shared,
            owner_id: c.owner_id.clone(),
        }
    }

    /// See [`same_lineage`].
    fn same(&self, b: &Lineage) -> bool {
        self.id == b.id
            && self.shared
            && b.shared
            && !self.owner_id.is_empty()
            && self.owner_id == b.owner_id
    }
}

/// Most slot payloads [`Validated`] remembers (two slots of each of a few disks of
/// a few groups; an older entry is forgotten first).
pub const MAX_VALIDATED_SLOTS: usize = 64;

/// A slot payload by its header's fields and its CRC32C.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotKey {
    dg_id: String,
    seq: u64,
    txn_id: u64,
    len: u64,
    crc: u32,
}

impl SlotKey {
    fn of(h: &SlotHeader) -> SlotKey {
        SlotKey {
            dg_id: h.dg_id.clone(),
            seq: h.seq,
            txn_id: h.txn_id,
            len: h.payload_len_bytes,
            crc: h.payload_crc,
        }
    }
}

/// Slot payloads this process knows to be valid configurations: it decoded and
/// validated them in full ([`Device::read_slot`]), or encoded them itself from a
/// configuration that passed `DiskGroupConfig::validate` ([`write_config`]). A
/// writer reads both slots of a disk before each write (which slot to take, and
/// whether a newer master wrote it); a slot whose header and payload CRC match an
/// entry is taken as valid without decoding it again, so a write costs its own
/// encoding and I/O rather than two decodes and validations of the previous
/// records. The payload is still read and its CRC checked against the header, so a
/// torn or corrupt slot is never taken for the payload it replaced.
static VALIDATED: std::sync::Mutex<std::collections::VecDeque<(SlotKey, Lineage)>> =
    std::sync::Mutex::new(std::collections::VecDeque::new());

fn validated(key: &SlotKey) -> Option<Lineage> {
    let memo = VALIDATED.lock().unwrap_or_else(|p| p.into_inner());
    memo.iter().find(|(k, _)| k == key).map(|(_, l)| l.clone())
}

fn remember_validated(key: SlotKey, lineage: Lineage) {
    let mut memo = VALIDATED.lock().unwrap_or_else(|p| p.into_inner());
    if memo.iter().any(|(k, _)| *k == key) {
        return;
    }
    if memo.len() >= MAX_VALIDATED_SLOTS {
        memo.pop_front();
    }
    memo.push_back((key, lineage));
}

/// Most disks [`write_config`] writes at the same time.
pub const MAX_PARALLEL_WRITES: usize = 16;

/// Options of [`init_disk`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InitOptions {
    /// Private region size (default [`DEFAULT_PRIVATE_REGION_BYTES`], 8 MiB).
    pub private_region_bytes: u64,
    /// Re-initialise a disk that has a label (even one in a disk group).
    pub force: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            private_region_bytes: DEFAULT_PRIVATE_REGION_BYTES,
            force: false,
        }
    }
}

/// What one slot of one disk holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotStatus {
    /// Never written or cleared.
    Empty,
    /// A valid configuration.
    Valid {
        /// Its sequence number.
        seq: u64,
        /// The transaction that wrote it.
        txn_id: u64,
        /// Its disk group id.
        dg_id: String,
    },
    /// Damaged or unreadable.
    Invalid {
        /// Why.
        reason: String,
    },
}

/// What [`read_config`] found on one disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskReport {
    /// Device path.
    pub path: PathBuf,
    /// The label, when readable.
    pub label: Option<Label>,
    /// The device or label error, when not.
    pub error: Option<String>,
    /// Slots 0 and 1 (empty when the label could not be read).
    pub slots: Vec<SlotStatus>,
    /// This disk holds the returned configuration (a valid slot with its seq and
    /// txn). False for a disk that missed the last write or lost it to a torn write:
    /// the next [`write_config`] brings it up to date.
    pub current: bool,
}

/// The configuration [`read_config`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigRead {
    /// The newest valid configuration.
    pub config: DiskGroupConfig,
    /// Its sequence number.
    pub seq: u64,
    /// The transaction that wrote it.
    pub txn_id: u64,
    /// One entry per disk given, in order.
    pub disks: Vec<DiskReport>,
}

impl ConfigRead {
    /// Paths of the disks given whose label says they are disks of the configuration
    /// (by disk id): where the next [`write_config`] goes.
    pub fn member_paths(&self) -> Vec<PathBuf> {
        self.disks
            .iter()
            .filter(|r| {
                r.label
                    .as_ref()
                    .is_some_and(|l| self.config.disks.iter().any(|d| d.id == l.disk_id))
            })
            .map(|r| r.path.clone())
            .collect()
    }

    /// What to warn of when the configuration was read without some of its disks
    /// (none when all were found): a later configuration that only those disks
    /// took is not seen (docs/ONDISK.md, "What a disk that misses a write can
    /// lose").
    pub fn missing_disks_warning(&self) -> Option<String> {
        let missing = self.missing_disks();
        (!missing.is_empty()).then(|| {
            format!(
                "disk group {}: configuration seq {} read without its disk(s) {}, not found on the disk paths; a later configuration that only they took is not seen, and is lost if the group goes on from this one (docs/ONDISK.md, \"What a disk that misses a write can lose\")",
                self.config.name,
                self.seq,
                missing.join(", ")
            )
        })
    }

    /// Media names (as their labels say) of the disks given that hold the returned
    /// configuration.
    pub fn holders(&self) -> Vec<String> {
        self.disks
            .iter()
            .filter(|r| r.current)
            .filter_map(|r| r.label.as_ref().map(|l| l.disk_name.clone()))
            .collect()
    }

    /// Media names of the configuration's disks not found among the disks given
    /// (a disk recorded failed is not missing: nothing needs it).
    pub fn missing_disks(&self) -> Vec<String> {
        self.config
            .disks
            .iter()
            .filter(|d| !d.failed)
            .filter(|d| {
                !self
                    .disks
                    .iter()
                    .any(|r| r.label.as_ref().is_some_and(|l| l.disk_id == d.id))
            })
            .map(|d| d.name.clone())
            .collect()
    }
}

/// A disk group found by [`discover`].
#[derive(Debug)]
pub struct FoundGroup {
    /// Disk group id.
    pub dg_id: String,
    /// Disk group name as the labels say.
    pub dg_name: String,
    /// Its configuration, read from all the disks given (slots of this group only).
    pub config: Result<ConfigRead, OnDiskError>,
}

/// What [`discover`] found on a set of disks.
#[derive(Debug, Default)]
pub struct Discovery {
    /// Disk groups, by the labels' disk group ids, sorted by name.
    pub groups: Vec<FoundGroup>,
    /// Initialised disks in no disk group.
    pub free_disks: Vec<(PathBuf, Label)>,
    /// Disks whose label could not be read.
    pub unreadable: Vec<(PathBuf, OnDiskError)>,
}

/// Finds the disk groups on `paths` (for `dg import` and for a restart): groups the
/// disks by their labels, then reads each group's configuration from all the readable
/// disks (so a disk whose label lags behind its slots still counts).
pub fn discover(paths: &[PathBuf]) -> Discovery {
    let mut found = Discovery::default();
    let mut groups: Vec<(String, String)> = Vec::new();
    let mut readable = Vec::new();
    for (path, label) in scan(paths) {
        match label {
            Err(e) => found.unreadable.push((path, e)),
            Ok(label) => {
                match &label.disk_group {
                    Some(g) => {
                        if !groups.iter().any(|(id, _)| *id == g.id) {
                            groups.push((g.id.clone(), g.name.clone()));
                        }
                    }
                    None => found.free_disks.push((path.clone(), label)),
                }
                readable.push(path);
            }
        }
    }
    groups.sort_by(|a, b| (&a.1, &a.0).cmp(&(&b.1, &b.0)));
    for (dg_id, dg_name) in groups {
        let config = read_config_of(&readable, Some(&dg_id));
        found.groups.push(FoundGroup {
            dg_id,
            dg_name,
            config,
        });
    }
    found
}

/// What [`write_config`] did on each disk.
#[derive(Debug)]
pub struct WriteReport {
    /// Disks written, with the slot used.
    pub written: Vec<(PathBuf, usize)>,
    /// Those of them that took the change as a change log record (the others a
    /// checkpoint: the whole configuration).
    pub logged: Vec<PathBuf>,
    /// Disks not written, with the reason.
    pub failed: Vec<(PathBuf, OnDiskError)>,
    /// Damaged copies the write replaced: (disk path, disk id, what: `label copy`,
    /// `slot 1 (<why it was invalid>)`).
    pub repaired: Vec<(PathBuf, String, String)>,
}

impl WriteReport {
    /// Every disk was written.
    pub fn all_ok(&self) -> bool {
        self.failed.is_empty()
    }
}

/// An open disk or disk file, used by one thread: its reads move the descriptor's
/// file position ([`Device::read_at`]), so it is not `Sync`.
struct Device {
    file: File,
    path: PathBuf,
    size_bytes: u64,
    /// Keeps `&Device` from crossing threads.
    _one_thread: std::marker::PhantomData<std::cell::Cell<()>>,
}

impl Device {
    fn open(path: &Path, write: bool) -> Result<Device, OnDiskError> {
        let io_err = |op: &str, source| OnDiskError::Io {
            path: path.to_path_buf(),
            op: op.to_string(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(write)
            .open(path)
            .map_err(|e| io_err(if write { "open for writing" } else { "open" }, e))?;
        let size_bytes = file.seek(SeekFrom::End(0)).map_err(|e| io_err("size", e))?;
        let is_block = file
            .metadata()
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false);
        if is_block {
            // Another host may have written the private region: drop cached pages so
            // reads go to the device. Advisory; failure only means a cached read.
            let len = i64::try_from(layout::MAX_PRIVATE_REGION_BYTES).unwrap_or(i64::MAX);
            let _ = nix::fcntl::posix_fadvise(
                file.as_raw_fd(),
                0,
                len,
                nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
            );
        }
        Ok(Device {
            file,
            path: path.to_path_buf(),
            size_bytes,
            _one_thread: std::marker::PhantomData,
        })
    }

    fn io_error(&self, op: String, source: io::Error) -> OnDiskError {
        OnDiskError::Io {
            path: self.path.clone(),
            op,
            source,
        }
    }

    fn read_at(
        &self,
        offset_bytes: u64,
        len_bytes: u64,
        what: &str,
    ) -> Result<Vec<u8>, OnDiskError> {
        let end = offset_bytes.saturating_add(len_bytes);
        if end > self.size_bytes {
            return Err(self.io_error(
                format!("read {what}"),
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("device is {} bytes, {what} ends at {end}", self.size_bytes),
                ),
            ));
        }
        let len = usize::try_from(len_bytes).map_err(|_| {
            self.io_error(format!("read {what}"), io::ErrorKind::InvalidInput.into())
        })?;
        // Read into fresh capacity (no zeroing of a buffer the read overwrites: a
        // checkpoint is megabytes at thousands of volumes). The file is this
        // device's own descriptor, and a device is not `Sync`: the seek and the read
        // cannot be split by another thread's.
        let mut buf = Vec::with_capacity(len);
        let mut file = &self.file;
        file.seek(SeekFrom::Start(offset_bytes))
            .and_then(|_| io::Read::read_to_end(&mut io::Read::take(file, len_bytes), &mut buf))
            .map_err(|e| self.io_error(format!("read {what}"), e))?;
        if buf.len() != len {
            return Err(self.io_error(
                format!("read {what}"),
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} of {len} bytes read at {offset_bytes}", buf.len()),
                ),
            ));
        }
        Ok(buf)
    }

    fn write_at(&self, offset_bytes: u64, data: &[u8], what: &str) -> Result<(), OnDiskError> {
        debug_assert_eq!(offset_bytes % BLOCK_BYTES, 0);
        debug_assert_eq!(data.len() as u64 % BLOCK_BYTES, 0);
        self.file
            .write_all_at(data, offset_bytes)
            .map_err(|e| self.io_error(format!("write {what}"), e))
    }

    fn sync(&self, what: &str) -> Result<(), OnDiskError> {
        self.file
            .sync_data()
            .map_err(|e| self.io_error(format!("sync {what}"), e))
    }

    fn label_error(&self, reason: String) -> OnDiskError {
        OnDiskError::Label {
            path: self.path.clone(),
            reason,
        }
    }

    fn refused(&self, reason: String) -> OnDiskError {
        OnDiskError::Refused {
            path: self.path.clone(),
            reason,
        }
    }

    /// Reads both label copies and returns the valid one with the higher generation.
    fn read_label(&self) -> Result<Label, OnDiskError> {
        self.read_label_copies().map(|(label, _)| label)
    }

    /// Like [`read_label`](Self::read_label), also saying whether both copies are
    /// valid and identical (false: the next label write repairs them).
    fn read_label_copies(&self) -> Result<(Label, bool), OnDiskError> {
        let both = self
            .read_at(0, 2 * BLOCK_BYTES, "label")
            .map_err(|e| match e {
                OnDiskError::Io { source, .. } if source.kind() == io::ErrorKind::UnexpectedEof => {
                    self.label_error(format!(
                        "device is only {} bytes, too small to hold a label",
                        self.size_bytes
                    ))
                }
                other => other,
            })?;
        let block = BLOCK_BYTES as usize;
        let primary = Label::decode(&both[..block]);
        let backup = Label::decode(&both[block..]);
        let (label, intact) = match (primary, backup) {
            (Ok(p), Ok(b)) => {
                let same = p == b;
                (if b.generation > p.generation { b } else { p }, same)
            }
            (Ok(p), Err(_)) => (p, false),
            (Err(_), Ok(b)) => (b, false),
            (Err(p), Err(b)) if p == b => return Err(self.label_error(p)),
            (Err(p), Err(b)) => return Err(self.label_error(format!("primary: {p}; backup: {b}"))),
        };
        let public_end = label.public_offset_bytes + label.public_len_bytes;
        if public_end > self.size_bytes {
            return Err(self.label_error(format!(
                "device is {} bytes but its label says the public region ends at {public_end} (truncated, or a different device)",
                self.size_bytes
            )));
        }
        Ok((label, intact))
    }

    /// Writes the label: primary, sync, backup, sync (a torn write damages one copy).
    fn write_label(&self, label: &Label) -> Result<(), OnDiskError> {
        let block = label.encode();
        for (copy, offset) in layout::LABEL_OFFSETS_BYTES.iter().enumerate() {
            let what = if copy == 0 { "label" } else { "backup label" };
            self.write_at(*offset, &block, what)?;
            self.sync(what)?;
        }
        Ok(())
    }

    /// Reads slot `index`: its checkpoint (header and payload, the payload's CRC
    /// checked) and its change log up to the newest configuration's tail, or the
    /// slot's status when it is empty or invalid.
    fn read_slot_bytes(&self, label: &Label, index: usize) -> Result<SlotBytes, SlotStatus> {
        self.read_slot_parts(label, index, true)
    }

    /// [`Self::read_slot_bytes`]; without `payload`, the checkpoint's payload is
    /// neither read nor checked (left empty): its header and the change log after it
    /// are (the log starts where the header says the payload ends, linked to the
    /// header).
    fn read_slot_parts(
        &self,
        label: &Label,
        index: usize,
        payload: bool,
    ) -> Result<SlotBytes, SlotStatus> {
        let invalid = |reason: String| SlotStatus::Invalid { reason };
        let offset = label.slot_offset_bytes(index);
        let what = format!("slot {index}");
        let block = self
            .read_at(offset, BLOCK_BYTES, &what)
            .map_err(|e| invalid(e.to_string()))?;
        let header = match SlotHeader::decode(&block, index as u32, label.max_payload_bytes()) {
            Ok(h) => h,
            Err(SlotProblem::Empty) => return Err(SlotStatus::Empty),
            Err(SlotProblem::Invalid(reason)) => return Err(invalid(reason)),
        };
        let payload = if payload {
            let payload = self
                .read_at(offset + BLOCK_BYTES, header.payload_len_bytes, &what)
                .map_err(|e| invalid(e.to_string()))?;
            let crc = crc32c::crc32c(&payload);
            if crc != header.payload_crc {
                return Err(invalid(format!(
                    "payload checksum mismatch (seq {}, stored {:#010x}, computed {crc:#010x}): torn or corrupt write",
                    header.seq, header.payload_crc
                )));
            }
            payload
        } else {
            Vec::new()
        };
        let checkpoint = log::Tail {
            seq: header.seq,
            txn_id: header.txn_id,
            link: slot::header_link(&block),
            end_bytes: BLOCK_BYTES + header.payload_len_bytes.div_ceil(BLOCK_BYTES) * BLOCK_BYTES,
            records: 0,
            log_bytes: 0,
        };
        let (tail, records) = if header.version < 2 {
            (checkpoint, Vec::new())
        } else {
            log::walk(
                |at, len| {
                    self.read_at(offset + at, len, &what)
                        .map_err(|e| e.to_string())
                },
                checkpoint,
                label.slot_len_bytes,
                index as u32,
                &header.dg_id,
            )
            .map_err(|reason| invalid(format!("checkpoint seq {}: {reason}", header.seq)))?
        };
        Ok(SlotBytes {
            header,
            payload,
            tail,
            records,
        })
    }

    /// Reads slot `index` for a writer: its status and, when valid, its checkpoint's
    /// header, lineage and the newest configuration's tail. A checkpoint
    /// [`VALIDATED`] knows is not decoded again, and log records are not decoded (a
    /// record never changes the lineage: a change of it writes a checkpoint).
    fn read_slot_lineage(&self, label: &Label, index: usize) -> SlotRead {
        let found = match self.read_slot_bytes(label, index) {
            Ok(found) => found,
            Err(status) => return (status, None),
        };
        let status = found.status();
        let key = SlotKey::of(&found.header);
        if let Some(lineage) = validated(&key) {
            return (status, Some((found.header, lineage, found.tail)));
        }
        match self.check_slot(&found.header, &found.payload) {
            Ok(config) => (
                status,
                Some((found.header, Lineage::of(&config), found.tail)),
            ),
            Err(status) => (status, None),
        }
    }

    /// [`Self::read_slot_lineage`] without reading the checkpoint's payload, when
    /// [`VALIDATED`] knows the checkpoint (else the whole read): for the slot a
    /// change is not appended to (see [`read_slots`]). Its status says valid
    /// without the payload's CRC checked.
    fn read_slot_head(&self, label: &Label, index: usize) -> SlotRead {
        let found = match self.read_slot_parts(label, index, false) {
            Ok(found) => found,
            Err(status) => return (status, None),
        };
        match validated(&SlotKey::of(&found.header)) {
            Some(lineage) => (found.status(), Some((found.header, lineage, found.tail))),
            None => self.read_slot_lineage(label, index),
        }
    }

    /// Reads slot `index`: its status and, when valid, its newest configuration's
    /// tail and the configuration (the checkpoint with its log replayed).
    fn read_slot(
        &self,
        label: &Label,
        index: usize,
    ) -> (SlotStatus, Option<(log::Tail, DiskGroupConfig)>) {
        let found = match self.read_slot_bytes(label, index) {
            Ok(found) => found,
            Err(status) => return (status, None),
        };
        let checkpoint = match self.check_slot(&found.header, &found.payload) {
            Ok(config) => config,
            Err(status) => return (status, None),
        };
        let invalid = |reason: String| (SlotStatus::Invalid { reason }, None);
        let config = if found.records.is_empty() {
            checkpoint
        } else {
            let replayed = match log::replay(checkpoint, &found.records) {
                Ok(c) => c,
                Err(reason) => {
                    return invalid(format!("checkpoint seq {}: {reason}", found.header.seq))
                }
            };
            if let Err(e) = replayed.validate() {
                return invalid(format!(
                    "seq {}: configuration fails validation: {e}",
                    found.tail.seq
                ));
            }
            replayed
        };
        (found.status(), Some((found.tail, config)))
    }

    /// Decodes and validates a checkpoint's payload (its CRC checked): its
    /// configuration, which [`VALIDATED`] then remembers, or the slot's status.
    fn check_slot(
        &self,
        header: &SlotHeader,
        payload: &[u8],
    ) -> Result<DiskGroupConfig, SlotStatus> {
        let invalid = |reason: String| Err(SlotStatus::Invalid { reason });
        let config = match decode_config(payload) {
            Ok(c) => c,
            Err(reason) => return invalid(format!("seq {}: {reason}", header.seq)),
        };
        if config.id != header.dg_id || config.seq != header.seq {
            return invalid(format!(
                "header (disk group {}, seq {}) does not match its payload (disk group {}, seq {})",
                header.dg_id, header.seq, config.id, config.seq
            ));
        }
        if let Err(e) = config.validate() {
            return invalid(format!(
                "seq {}: configuration fails validation: {e}",
                header.seq
            ));
        }
        remember_validated(SlotKey::of(header), Lineage::of(&config));
        Ok(config)
    }
}

/// A slot as [`Device::read_slot_bytes`] reads it.
struct SlotBytes {
    /// The checkpoint's header.
    header: SlotHeader,
    /// The checkpoint's payload (CRC checked).
    payload: Vec<u8>,
    /// The newest configuration's tail: the checkpoint's, or its last record's.
    tail: log::Tail,
    /// The log records after the checkpoint.
    records: Vec<log::Record>,
}

impl SlotBytes {
    /// A valid slot's status: its newest configuration's seq and transaction.
    fn status(&self) -> SlotStatus {
        SlotStatus::Valid {
            seq: self.tail.seq,
            txn_id: self.tail.txn_id,
            dg_id: self.header.dg_id.clone(),
        }
    }
}

/// Reads and validates a disk's label (the valid copy with the higher generation).
pub fn read_label(path: &Path) -> Result<Label, OnDiskError> {
    Device::open(path, false)?.read_label()
}

/// Reads the labels of many disks (for `disk list` and discovery); one result per path.
pub fn scan(paths: &[PathBuf]) -> Vec<(PathBuf, Result<Label, OnDiskError>)> {
    paths.iter().map(|p| (p.clone(), read_label(p))).collect()
}

impl Label {
    /// The disk record a disk group configuration keeps for this disk found at `path`.
    pub fn disk_record(&self, path: &Path) -> Disk {
        Disk {
            name: self.disk_name.clone(),
            id: self.disk_id.clone(),
            path: path.display().to_string(),
            size_bytes: self.disk_size_bytes,
            public_offset_bytes: self.public_offset_bytes,
            public_len_bytes: self.public_len_bytes,
            failed: false,
            staled: Vec::new(),
        }
    }
}

/// `disk init`: writes a fresh label (new disk id, no disk group) and clears the
/// private region. Initialising again with the same name a disk that is in no disk
/// group returns its existing label; anything else over an existing label needs
/// `force`. A disk whose label names an imported disk group (a non-empty owner) is
/// refused even with `force`: take it out of its group first.
pub fn init_disk(path: &Path, name: &str, options: InitOptions) -> Result<Label, OnDiskError> {
    let device = Device::open(path, true)?;
    validate_name("disk", name).map_err(|e| device.refused(e.to_string()))?;
    let geometry = Geometry::new(options.private_region_bytes, device.size_bytes)
        .map_err(|reason| device.refused(reason))?;
    if let Ok(existing) = device.read_label() {
        // A disk of an imported group (shared or private, on any host) is never
        // re-initialised, forced or not: its label and slots are the group's.
        if let Some(g) = existing
            .disk_group
            .as_ref()
            .filter(|g| !g.owner_id.is_empty())
        {
            return Err(device.refused(format!(
                "disk {} is in disk group {} ({}, owner {}){}: take it out of the group first (plexctl dg rm-disk {} {}), or destroy the group (plexctl dg destroy {})",
                existing.disk_name,
                g.name,
                if g.shared { "shared" } else { "private" },
                g.owner_id,
                if options.force {
                    "; --force re-initialises only free disks and disks of deported groups"
                } else {
                    ""
                },
                g.name,
                existing.disk_name,
                g.name
            )));
        }
        if !options.force {
            if let Some(g) = &existing.disk_group {
                return Err(device.refused(format!(
                    "disk {} is in deported disk group {}: import the group (plexctl dg import {}), or re-initialise the disk with --force (the group loses it)",
                    existing.disk_name, g.name, g.name
                )));
            }
            if existing.disk_name == name {
                return Ok(existing);
            }
            return Err(device.refused(format!(
                "already initialised as disk {} (id {}): use force to re-initialise",
                existing.disk_name, existing.disk_id
            )));
        }
    }
    const ZERO_CHUNK_BYTES: u64 = 1 << 20;
    let zeros = vec![0u8; ZERO_CHUNK_BYTES.min(geometry.private_region_bytes) as usize];
    let mut offset = 0;
    while offset < geometry.private_region_bytes {
        let len = (geometry.private_region_bytes - offset).min(zeros.len() as u64);
        device.write_at(offset, &zeros[..len as usize], "private region")?;
        offset += len;
    }
    device.sync("private region")?;
    let label = Label {
        version: LABEL_VERSION,
        generation: 1,
        disk_id: new_id(),
        disk_name: name.to_string(),
        disk_size_bytes: device.size_bytes,
        private_region_bytes: geometry.private_region_bytes,
        public_offset_bytes: geometry.public_offset_bytes,
        public_len_bytes: geometry.public_len_bytes,
        slot_offsets_bytes: geometry.slot_offsets_bytes,
        slot_len_bytes: geometry.slot_len_bytes,
        disk_group: None,
    };
    device.write_label(&label)?;
    Ok(label)
}

/// Takes a disk out of its disk group (`dg rm-disk`, `dg destroy`): clears both slots,
/// then the label's disk group fields. Returns the new label.
pub fn release_disk(path: &Path, expect: &ReleaseExpect) -> Result<Label, OnDiskError> {
    let device = Device::open(path, true)?;
    let mut label = device.read_label()?;
    // The label is read again right before the write: the path may by now hold
    // another disk, or the disk another group (released elsewhere and reused).
    if let Some(id) = expect.disk_id {
        if label.disk_id != id {
            return Err(OnDiskError::Refused {
                path: path.to_path_buf(),
                reason: format!("holds disk id {}, not {id}: not released", label.disk_id),
            });
        }
    }
    if let Some(dg_id) = expect.dg_id {
        let holder = label.disk_group.as_ref().map(|g| g.id.as_str());
        if holder != Some(dg_id) {
            return Err(OnDiskError::Refused {
                path: path.to_path_buf(),
                reason: format!(
                    "belongs to disk group {}, not to {dg_id}: not released",
                    label
                        .disk_group
                        .as_ref()
                        .map_or("(none)", |g| g.name.as_str())
                ),
            });
        }
    }
    let zeros = vec![0u8; BLOCK_BYTES as usize];
    for index in 0..2 {
        device.write_at(
            label.slot_offset_bytes(index),
            &zeros,
            &format!("slot {index}"),
        )?;
    }
    device.sync("slots")?;
    label.disk_group = None;
    label.generation += 1;
    device.write_label(&label)?;
    Ok(label)
}

/// What a disk to release must still be when [`release_disk`] reads its label.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReleaseExpect<'a> {
    /// The disk id it must carry.
    pub disk_id: Option<&'a str>,
    /// The disk group id its label must name.
    pub dg_id: Option<&'a str>,
}

/// Writes `config` (its `seq`, by transaction `txn_id`) to every disk in `paths`; each
/// must be a disk of the configuration (checked by label disk id) whose label names
/// this disk group or none. On each disk the
/// write goes to the slot not holding that disk's newest configuration, then the
/// label's disk group fields are updated if they changed. Rewriting the same seq and
/// txn is allowed (a new master finishing a commit); an older seq, or the same seq
/// from another transaction, is refused on that disk. A shared group's disk holding
/// a configuration of a newer epoch ([`txn_epoch`]) under the same owner refuses the
/// write, and the whole write fails with [`OnDiskError::NewerEpoch`] even when other
/// disks took it: the writer is a replaced master.
///
/// Disks are written in parallel. Returns which disks were written and which failed;
/// an error when none was. The whole configuration is validated first.
pub fn write_config(
    paths: &[PathBuf],
    config: &DiskGroupConfig,
    txn_id: u64,
    deadline: Option<std::time::Instant>,
) -> Result<WriteReport, OnDiskError> {
    write_config_after(paths, config, None, txn_id, deadline)
}

/// [`write_config`] of `config` that is `before` changed (`before`: a configuration
/// of the group that passed validation, the last this node wrote): only what the
/// change touched is validated again ([`DiskGroupConfig::validate_after`]); none:
/// the whole configuration.
pub fn write_config_after(
    paths: &[PathBuf],
    config: &DiskGroupConfig,
    before: Option<(&DiskGroupConfig, u64)>,
    txn_id: u64,
    deadline: Option<std::time::Instant>,
) -> Result<WriteReport, OnDiskError> {
    if paths.is_empty() {
        return Err(OnDiskError::NoDisks);
    }
    let bad_config = |reason: String| OnDiskError::BadConfig {
        dg: config.name.clone(),
        reason,
    };
    let valid = match before {
        Some((b, _)) => config.validate_after(b, "a disk write"),
        None => config.validate(),
    };
    valid.map_err(|e| bad_config(e.to_string()))?;
    label::check_label_str("disk group id", &config.id).map_err(bad_config)?;
    label::check_label_str("owner id", &config.owner_id).map_err(bad_config)?;
    // The change as a log record's payload, for the disks whose newest
    // configuration is `before` as this transaction wrote it; the whole
    // configuration only when a disk needs a checkpoint.
    let change = before
        .filter(|(b, _)| config.seq == b.seq + 1 && Lineage::of(b) == Lineage::of(config))
        .map(|(b, b_txn)| Change {
            seq: b.seq,
            txn_id: b_txn,
            payload: codec::encode_delta(config, &log::volume_runs(&b.volumes, &config.volumes)),
        });
    let full = std::sync::OnceLock::new();
    let payload = Payload {
        config,
        change: change.as_ref(),
        full: &full,
    };
    let mut report = WriteReport {
        written: Vec::new(),
        logged: Vec::new(),
        failed: Vec::new(),
        repaired: Vec::new(),
    };
    // Disks are written in parallel (at most MAX_PARALLEL_WRITES at a time: the
    // first of each batch on this thread, every other on a thread of its own): the
    // commit waits for the slowest fdatasync, not their sum.
    for chunk in paths.chunks(MAX_PARALLEL_WRITES) {
        let results: Vec<Result<Written, OnDiskError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = chunk
                .iter()
                .skip(1)
                .map(|path| scope.spawn(|| write_one(path, &payload, txn_id, deadline)))
                .collect();
            let first = write_one(&chunk[0], &payload, txn_id, deadline);
            std::iter::once(first)
                .chain(handles.into_iter().zip(&chunk[1..]).map(|(h, path)| {
                    h.join().unwrap_or_else(|_| {
                        Err(OnDiskError::Refused {
                            path: path.clone(),
                            reason: "writer thread panicked".into(),
                        })
                    })
                }))
                .collect()
        });
        for (path, result) in chunk.iter().zip(results) {
            match result {
                Ok(w) => {
                    report.written.push((path.clone(), w.slot));
                    if w.logged {
                        report.logged.push(path.clone());
                    }
                    for what in w.repaired {
                        report
                            .repaired
                            .push((path.clone(), w.disk_id.clone(), what));
                    }
                }
                Err(e) => report.failed.push((path.clone(), e)),
            }
        }
    }
    let newer: Vec<String> = report
        .failed
        .iter()
        .filter(|(_, e)| {
            let e = e.to_string();
            e.contains(crate::core::NEWER_EPOCH) || e.contains(crate::core::WRITE_DEADLINE)
        })
        .map(|(_, e)| e.to_string())
        .collect();
    if !newer.is_empty() {
        return Err(OnDiskError::NewerEpoch {
            dg: config.name.clone(),
            seq: config.seq,
            epoch: txn_epoch(txn_id),
            details: newer.join("; "),
        });
    }
    if report.written.is_empty() {
        let details = report
            .failed
            .iter()
            .map(|(_, e)| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(OnDiskError::WriteFailed {
            dg: config.name.clone(),
            seq: config.seq,
            details,
        });
    }
    Ok(report)
}

/// What [`write_one`] did on one disk.
struct Written {
    slot: usize,
    /// The change went into the slot's log (not a checkpoint).
    logged: bool,
    disk_id: String,
    /// Damaged copies replaced.
    repaired: Vec<String>,
}

/// A change as a log record's payload, and the configuration it changes: `seq` as
/// transaction `txn_id` wrote it.
struct Change {
    seq: u64,
    txn_id: u64,
    payload: Vec<u8>,
}

/// What [`write_one`] writes: the configuration, the change when it can be logged,
/// and the whole configuration's encoding, made once by the first disk that needs
/// a checkpoint.
struct Payload<'a> {
    config: &'a DiskGroupConfig,
    change: Option<&'a Change>,
    full: &'a std::sync::OnceLock<Vec<u8>>,
}

impl Payload<'_> {
    fn full(&self) -> &[u8] {
        self.full.get_or_init(|| encode_config(self.config))
    }
}

/// One slot as [`Device::read_slot_lineage`] finds it: its status and, when valid,
/// its checkpoint's header, its lineage and its newest configuration's tail.
type SlotRead = (SlotStatus, Option<(SlotHeader, Lineage, log::Tail)>);

/// Writes `payload` to the disk at `path`: as a record appended to the log of the
/// slot holding the disk's newest configuration when that is the configuration the
/// change was made from and the log has room (docs/ONDISK.md, "Change log"), else
/// as a checkpoint into the slot that does not hold it; then the label's disk
/// group fields when they differ or a label copy is damaged.
fn write_one(
    path: &Path,
    payload: &Payload<'_>,
    txn_id: u64,
    deadline: Option<std::time::Instant>,
) -> Result<Written, OnDiskError> {
    let config = payload.config;
    let device = Device::open(path, true)?;
    let (mut label, label_intact) = device.read_label_copies()?;
    check_label_takes(&device, &label, config)?;
    let slots = read_slots(&device, &label, payload.change, config, txn_id);
    check_no_newer_epoch(&device, &slots, config, txn_id)?;
    let logged = payload
        .change
        .and_then(|change| Some((change, log_into(&slots, change, &label, config, txn_id)?)));
    // The checkpoint's header, when this write is one.
    let mut written_checkpoint = None;
    let (target, buf, what) = match &logged {
        Some((change, (slot, tail))) => {
            let slot = *slot;
            let record = log::RecordHeader {
                seq: config.seq,
                txn_id,
                payload_len_bytes: change.payload.len() as u64,
                payload_crc: crc32c::crc32c(&change.payload),
                slot_index: slot as u32,
                link: tail.link,
                number: tail.records + 1,
                dg_id: config.id.clone(),
            };
            let buf = record
                .encode_with(&change.payload)
                .map_err(|reason| device.refused(reason))?;
            let at = label.slot_offset_bytes(slot) + tail.end_bytes;
            (
                slot,
                (at, buf),
                format!("slot {slot} change log record {}", record.number),
            )
        }
        None => {
            let full = payload.full();
            check_slot_takes(&device, &label, config, full)?;
            let target = choose_slot(&device, &slots, config, txn_id)?;
            let (header, buf) = checkpoint_bytes(&device, config, full, txn_id, target)?;
            written_checkpoint = Some(header);
            let at = label.slot_offset_bytes(target);
            (target, (at, buf), format!("slot {target}"))
        }
    };
    // The last moment to give up: a writer stalled (frozen) past its deadline may
    // no longer hold the authority it started the write under.
    if deadline.is_some_and(|d| std::time::Instant::now() > d) {
        return Err(device.refused(format!(
            "configuration seq {} of disk group {} not written: {}",
            config.seq,
            config.name,
            crate::core::WRITE_DEADLINE
        )));
    }
    device.write_at(buf.0, &buf.1, &what)?;
    device.sync(&what)?;
    let mut repaired = Vec::new();
    if let Some(header) = &written_checkpoint {
        // Encoded from a configuration `write_config` validated.
        remember_validated(SlotKey::of(header), Lineage::of(config));
        if let (SlotStatus::Invalid { reason }, _) = &slots[target] {
            repaired.push(format!("slot {target} ({reason})"));
        }
        // A plexd before the change log reads a version 1 slot and not this one:
        // the other slot gets this checkpoint too, so such a plexd finds nothing it
        // reads rather than an older configuration.
        let other = 1 - target;
        if holds_version_1(&slots[other], config) {
            let what = format!("slot {other}");
            let (_, buf) = checkpoint_bytes(&device, config, payload.full(), txn_id, other)?;
            device.write_at(label.slot_offset_bytes(other), &buf, &what)?;
            device.sync(&what)?;
        }
    }
    let wanted = Some(LabelDiskGroup {
        id: config.id.clone(),
        name: config.name.clone(),
        shared: config.shared,
        owner_id: config.owner_id.clone(),
    });
    if label.disk_group != wanted || !label_intact {
        // Also repairs a damaged label copy.
        label.disk_group = wanted;
        label.generation += 1;
        device.write_label(&label)?;
        if !label_intact {
            repaired.push("label copy".to_string());
        }
    }
    Ok(Written {
        slot: target,
        logged: logged.is_some(),
        disk_id: label.disk_id.clone(),
        repaired,
    })
}

/// The slot whose log takes `change` and that log's tail: the slot holding the
/// disk's newest configuration, when that is the configuration the change was made
/// from (its seq and transaction), it is a version 2 checkpoint's, and its log has
/// room for the record (at most [`log::MAX_LOG_RECORDS`] records, in the slot, and
/// no more bytes than the checkpoint or [`log::MIN_LOG_BUDGET_BYTES`]).
fn log_into(
    slots: &[SlotRead],
    change: &Change,
    label: &Label,
    config: &DiskGroupConfig,
    txn_id: u64,
) -> Option<(usize, log::Tail)> {
    let (index, _, _) = newest_of_group(slots, config, txn_id)?;
    let (header, lineage, tail) = slots[index].1.as_ref()?;
    let len = log::record_len(change.payload.len() as u64);
    let checkpoint_bytes = tail.end_bytes - tail.log_bytes;
    // No record either while the other slot holds a version 1 configuration of the
    // group (a checkpoint's second copy that a crash kept from being written): the
    // checkpoint this disk gets instead replaces it.
    let fits = header.version >= 2
        && !holds_version_1(&slots[1 - index], config)
        && *lineage == Lineage::of(config)
        && tail.seq == change.seq
        && tail.txn_id == change.txn_id
        && tail.records < log::MAX_LOG_RECORDS
        && tail.end_bytes + len <= label.slot_len_bytes
        && tail.log_bytes + len <= checkpoint_bytes.max(log::MIN_LOG_BUDGET_BYTES);
    fits.then(|| (index, tail.clone()))
}

/// Both slots of a disk for a write of `config` (transaction `txn_id`). A change
/// that goes to a slot's change log needs only that slot whole (its checkpoint's
/// payload read and its CRC checked: a damaged checkpoint gets no record after it);
/// of the other slot, its header and change log tell its newest configuration (for
/// the newest slot's choice, the newer-epoch refusal and the version check), and
/// its payload is neither read nor checked: a record does not touch it, and the
/// next checkpoint, which a damaged slot would need, is written into it after a
/// whole read of both slots. Anything else (no change to log, no slot that takes
/// it, a slot that fails its whole read): both slots whole.
fn read_slots(
    device: &Device,
    label: &Label,
    change: Option<&Change>,
    config: &DiskGroupConfig,
    txn_id: u64,
) -> Vec<SlotRead> {
    if let Some(change) = change {
        let mut slots: Vec<SlotRead> = (0..2).map(|i| device.read_slot_head(label, i)).collect();
        if let Some((slot, _)) = log_into(&slots, change, label, config, txn_id) {
            slots[slot] = device.read_slot_lineage(label, slot);
            if log_into(&slots, change, label, config, txn_id).is_some() {
                return slots;
            }
        }
    }
    (0..2).map(|i| device.read_slot_lineage(label, i)).collect()
}

/// `slot` holds a version 1 configuration of `config`'s group (one a plexd before
/// the change log reads: docs/ONDISK.md, "Older plexd").
fn holds_version_1(slot: &SlotRead, config: &DiskGroupConfig) -> bool {
    matches!(slot, (_, Some((h, l, _))) if h.version < 2 && l.id == config.id)
}

/// A checkpoint of `config` (`full`, its encoding) for slot `slot`: its header, and
/// the bytes to write (header, payload, zeros to the next block).
fn checkpoint_bytes(
    device: &Device,
    config: &DiskGroupConfig,
    full: &[u8],
    txn_id: u64,
    slot: usize,
) -> Result<(SlotHeader, Vec<u8>), OnDiskError> {
    let header = SlotHeader {
        version: SLOT_VERSION,
        seq: config.seq,
        txn_id,
        payload_len_bytes: full.len() as u64,
        payload_crc: crc32c::crc32c(full),
        slot_index: slot as u32,
        dg_id: config.id.clone(),
    };
    let mut buf = header.encode().map_err(|reason| device.refused(reason))?;
    buf.extend_from_slice(full);
    let padded = (buf.len() as u64).div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
    buf.resize(padded as usize, 0);
    Ok((header, buf))
}

/// Refuses to write `config` to a disk that is not one of its group's or belongs
/// to another group.
fn check_label_takes(
    device: &Device,
    label: &Label,
    config: &DiskGroupConfig,
) -> Result<(), OnDiskError> {
    if !config.disks.iter().any(|d| d.id == label.disk_id) {
        return Err(device.refused(format!(
            "disk {} (id {}) is not a disk of disk group {}",
            label.disk_name, label.disk_id, config.name
        )));
    }
    if let Some(g) = label.disk_group.as_ref().filter(|g| g.id != config.id) {
        return Err(device.refused(format!(
            "disk {} belongs to disk group {} (id {}), not {}: remove it from that group first",
            label.disk_name, g.name, g.id, config.name
        )));
    }
    Ok(())
}

/// Refuses a checkpoint of `config` (`payload` bytes) the disk's slots cannot hold.
fn check_slot_takes(
    device: &Device,
    label: &Label,
    config: &DiskGroupConfig,
    payload: &[u8],
) -> Result<(), OnDiskError> {
    if payload.len() as u64 > label.max_payload_bytes() {
        return Err(device.refused(format!(
            "configuration of disk group {} is {} bytes, a slot holds {}",
            config.name,
            payload.len(),
            label.max_payload_bytes()
        )));
    }
    Ok(())
}

/// Refuses a write of transaction `txn_id` when a slot holds a configuration of the
/// same lineage written in a newer epoch (by a newer master).
fn check_no_newer_epoch(
    device: &Device,
    slots: &[SlotRead],
    config: &DiskGroupConfig,
    txn_id: u64,
) -> Result<(), OnDiskError> {
    let lineage = Lineage::of(config);
    if let Some((_, _, header)) = slots
        .iter()
        .filter_map(|(_, found)| found.as_ref())
        .filter(|(_, l, t)| l.same(&lineage) && txn_epoch(t.txn_id) > txn_epoch(txn_id))
        .max_by_key(|(_, _, t)| (txn_epoch(t.txn_id), t.seq))
    {
        return Err(device.refused(format!(
            "holds configuration seq {} of disk group {} written in epoch {} by a master of a {} than this write's epoch {}",
            header.seq,
            config.name,
            txn_epoch(header.txn_id),
            crate::core::NEWER_EPOCH,
            txn_epoch(txn_id)
        )));
    }
    Ok(())
}

/// The slot holding the group's newest configuration on this disk (index, seq,
/// transaction), not counting a slot a write of `config` by transaction `txn_id`
/// supersedes (a replaced master's stale lineage, see [`supersedes`]): that is no
/// configuration to keep or to be refused by. Slot 0 on a tie.
fn newest_of_group(
    slots: &[SlotRead],
    config: &DiskGroupConfig,
    txn_id: u64,
) -> Option<(usize, u64, u64)> {
    let lineage = Lineage::of(config);
    slots
        .iter()
        .enumerate()
        .filter_map(|(i, (_, found))| {
            let (h, l, t) = found.as_ref()?;
            let superseded =
                l.same(&lineage) && supersedes((txn_id, config.seq), (t.txn_id, t.seq));
            (h.dg_id == config.id && !superseded).then_some((i, t.seq, t.txn_id))
        })
        .max_by_key(|(i, seq, _)| (*seq, std::cmp::Reverse(*i)))
}

/// The slot to write a checkpoint of `config` of transaction `txn_id` into: the
/// one not holding the group's newest configuration. Refused when that is newer
/// than `config`, or of its seq from another transaction.
fn choose_slot(
    device: &Device,
    slots: &[SlotRead],
    config: &DiskGroupConfig,
    txn_id: u64,
) -> Result<usize, OnDiskError> {
    match newest_of_group(slots, config, txn_id) {
        None => Ok(0),
        Some((_, seq, _)) if seq > config.seq => Err(device.refused(format!(
            "holds configuration seq {seq} of disk group {}, newer than seq {} being written",
            config.name, config.seq
        ))),
        Some((_, seq, txn)) if seq == config.seq && txn != txn_id => Err(device.refused(format!(
            "holds configuration seq {seq} of disk group {} from transaction {txn}, not {txn_id}",
            config.name
        ))),
        Some((i, _, _)) => Ok(1 - i),
    }
}

/// Reads the disk group configuration from its disks: the newest valid slot across all
/// of them. See [`read_config_of`] to pick one disk group among disks of several.
pub fn read_config(paths: &[PathBuf]) -> Result<ConfigRead, OnDiskError> {
    read_config_of(paths, None)
}

/// Like [`read_config`], considering only slots of disk group `dg_id` when given.
pub fn read_config_of(paths: &[PathBuf], dg_id: Option<&str>) -> Result<ConfigRead, OnDiskError> {
    if paths.is_empty() {
        return Err(OnDiskError::NoDisks);
    }
    let mut reports = Vec::new();
    // (seq, txn, config, report index)
    let mut candidates: Vec<(u64, u64, DiskGroupConfig, usize)> = Vec::new();
    for path in paths {
        let mut report = DiskReport {
            path: path.clone(),
            label: None,
            error: None,
            slots: Vec::new(),
            current: false,
        };
        let opened = Device::open(path, false).and_then(|d| d.read_label().map(|l| (d, l)));
        match opened {
            Err(e) => report.error = Some(e.to_string()),
            Ok((device, label)) => {
                for index in 0..2 {
                    let (status, found) = device.read_slot(&label, index);
                    if let Some((tail, config)) = found {
                        if dg_id.is_none_or_eq(&config.id) {
                            candidates.push((tail.seq, tail.txn_id, config, reports.len()));
                        }
                    }
                    report.slots.push(status);
                }
                report.label = Some(label);
            }
        }
        reports.push(report);
    }
    // A configuration a replaced master wrote after a newer master's is not the
    // group's: drop it (see [`supersedes`]).
    let stale: Vec<bool> = candidates
        .iter()
        .map(|(seq, txn, c, _)| {
            candidates
                .iter()
                .any(|(s2, t2, c2, _)| same_lineage(c, c2) && supersedes((*t2, *s2), (*txn, *seq)))
        })
        .collect();
    let mut stale = stale.into_iter();
    candidates.retain(|_| !stale.next().unwrap_or(false));
    let Some(best) = candidates
        .iter()
        .max_by_key(|(seq, _, _, index)| (*seq, std::cmp::Reverse(*index)))
        .cloned()
    else {
        let details = reports
            .iter()
            .map(describe_disk)
            .collect::<Vec<_>>()
            .join("; ");
        return Err(OnDiskError::NoValidConfig { details });
    };
    let (seq, txn_id, config, _) = best;
    let same_seq: Vec<&(u64, u64, DiskGroupConfig, usize)> = candidates
        .iter()
        .filter(|(s, _, c, _)| *s == seq && c.id == config.id)
        .collect();
    if same_seq.iter().any(|(_, t, _, _)| *t != txn_id) {
        let details = same_seq
            .iter()
            .map(|(_, t, _, i)| format!("{} has txn {t}", reports[*i].path.display()))
            .collect::<Vec<_>>()
            .join(", ");
        return Err(OnDiskError::Conflict {
            dg: config.name.clone(),
            seq,
            details,
        });
    }
    for (_, _, _, index) in same_seq {
        reports[*index].current = true;
    }
    Ok(ConfigRead {
        config,
        seq,
        txn_id,
        disks: reports,
    })
}

trait OptionStrExt {
    fn is_none_or_eq(&self, value: &str) -> bool;
}

impl OptionStrExt for Option<&str> {
    fn is_none_or_eq(&self, value: &str) -> bool {
        match self {
            None => true,
            Some(wanted) => *wanted == value,
        }
    }
}

fn describe_disk(report: &DiskReport) -> String {
    if let Some(error) = &report.error {
        return error.clone();
    }
    let slots = report
        .slots
        .iter()
        .enumerate()
        .map(|(i, s)| match s {
            SlotStatus::Empty => format!("slot {i} empty"),
            SlotStatus::Valid { seq, dg_id, .. } => {
                format!("slot {i} holds seq {seq} of another disk group ({dg_id})")
            }
            SlotStatus::Invalid { reason } => format!("slot {i} invalid ({reason})"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    format!("{}: {slots}", report.path.display())
}

/// For unit tests elsewhere in the crate: a sparse 64 MiB disk file at `path`
/// labelled `name` (initialised if new), in the group of id `dg.0` owned by `dg.1`
/// (its name: the id), or in none.
#[cfg(test)]
pub(crate) fn test_disk(path: &Path, name: &str, dg: Option<(&str, &str)>) {
    if !path.exists() {
        std::fs::File::create(path)
            .and_then(|f| f.set_len(64 << 20))
            .expect("a test disk file");
        init_disk(path, name, InitOptions::default()).expect("disk init");
    }
    let mut label = read_label(path).expect("its label");
    label.generation += 1;
    label.disk_group = dg.map(|(id, owner)| label::LabelDiskGroup {
        id: id.into(),
        name: id.into(),
        shared: false,
        owner_id: owner.into(),
    });
    Device::open(path, true)
        .and_then(|d| d.write_label(&label))
        .expect("label written");
}
