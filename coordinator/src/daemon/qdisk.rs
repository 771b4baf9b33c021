//! The quorum disk's I/O: a thread of its own reads and writes the lease record
//! the core asks for ([`Action::ReadQuorumDisk`], [`Action::WriteQuorumDisk`]) and
//! hands the results back to the main loop as [`Input::QuorumDisk`], so a slow or
//! hung quorum disk holds up neither the main loop (heartbeats) nor the driver's
//! jobs, and no drain delays a renewal.
//!
//! The record is one 4 KiB block at offset 0 of the configured file or device
//! (docs/ONDISK.md, "The quorum disk"): written with `pwrite` and made durable with
//! `fdatasync` (like the configuration database's slots), read with `pread` (on a
//! block device after dropping the cached block: another host writes it). A blank
//! block (all zeros, or a file shorter than a block that holds only zeros) is
//! nobody's and gets initialized by the first write; a block with plexd's magic and
//! a bad checksum is a torn write: nobody's too. A block of another cluster, or one
//! that is neither blank nor plexd's, is refused (never overwritten).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Instant;

use super::{Input, Inputs};
use crate::core::{QuorumDiskRecord, WRITE_DEADLINE};

/// Size of the record's block.
pub const QDISK_BLOCK_BYTES: usize = 4096;
/// The record's magic.
pub const QDISK_MAGIC: [u8; 8] = *b"PLEXDQD1";
/// The record format's version (2: the record names a view; version 1's records,
/// without it, are read as naming view 0).
pub const QDISK_VERSION: u32 = 2;
/// Longest cluster id the record holds, in bytes.
pub const QDISK_MAX_CLUSTER_ID_BYTES: usize = 64;
/// Requests queued for the thread at most (the core has one in flight at a time).
pub const QDISK_QUEUE_DEPTH: usize = 8;

const OWNER_OFFSET: usize = 12;
const INCARNATION_OFFSET: usize = 16;
const COUNTER_OFFSET: usize = 24;
const CLUSTER_ID_OFFSET: usize = 32;
const VIEW_OFFSET: usize = CLUSTER_ID_OFFSET + QDISK_MAX_CLUSTER_ID_BYTES;
const CRC_OFFSET: usize = VIEW_OFFSET + 8;
/// Where version 1 kept its checksum (it had no view).
const V1_CRC_OFFSET: usize = VIEW_OFFSET;

/// The record of `cluster_id` as its block.
pub fn encode(cluster_id: &str, r: &QuorumDiskRecord) -> Result<Vec<u8>, String> {
    let id = cluster_id.as_bytes();
    if id.len() > QDISK_MAX_CLUSTER_ID_BYTES {
        return Err(format!(
            "cluster id {cluster_id:?} is longer than {QDISK_MAX_CLUSTER_ID_BYTES} bytes"
        ));
    }
    let mut b = vec![0u8; QDISK_BLOCK_BYTES];
    b[..8].copy_from_slice(&QDISK_MAGIC);
    b[8..12].copy_from_slice(&QDISK_VERSION.to_le_bytes());
    b[OWNER_OFFSET..OWNER_OFFSET + 4].copy_from_slice(&r.owner.to_le_bytes());
    b[INCARNATION_OFFSET..INCARNATION_OFFSET + 8].copy_from_slice(&r.incarnation.to_le_bytes());
    b[COUNTER_OFFSET..COUNTER_OFFSET + 8].copy_from_slice(&r.counter.to_le_bytes());
    b[CLUSTER_ID_OFFSET..CLUSTER_ID_OFFSET + id.len()].copy_from_slice(id);
    b[VIEW_OFFSET..VIEW_OFFSET + 8].copy_from_slice(&r.view.to_le_bytes());
    let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
    b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
    Ok(b)
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The record in `block` (at least [`QDISK_BLOCK_BYTES`] long; a shorter one is
/// padded with zeros by the reader): none when blank or torn; an error when it is
/// another cluster's or not a quorum disk at all.
pub fn decode(cluster_id: &str, block: &[u8]) -> Result<Option<QuorumDiskRecord>, String> {
    if block.len() < QDISK_BLOCK_BYTES {
        return Err(format!("short block ({} bytes)", block.len()));
    }
    if block.iter().all(|&x| x == 0) {
        return Ok(None);
    }
    if block[..8] != QDISK_MAGIC {
        return Err("it is not blank and holds no plexd quorum disk record; refusing to use it (zero its first 4 KiB to make it one)".into());
    }
    // The version lies in the first sector with every other field, so a torn
    // write leaves it whole.
    let version = le_u32(block, 8);
    let crc_offset = match version {
        1 => V1_CRC_OFFSET,
        QDISK_VERSION => CRC_OFFSET,
        _ => {
            return Err(format!(
                "record version {version}, this plexd reads 1 and {QDISK_VERSION}"
            ))
        }
    };
    let crc = le_u32(block, crc_offset);
    if crc != crc32c::crc32c(&block[..crc_offset]) {
        log::debug!("quorum disk record checksum mismatch: a torn write, nobody's");
        return Ok(None);
    }
    let id_field = &block[CLUSTER_ID_OFFSET..VIEW_OFFSET];
    let id_len = id_field
        .iter()
        .position(|&x| x == 0)
        .unwrap_or(id_field.len());
    let id = String::from_utf8_lossy(&id_field[..id_len]);
    if id != cluster_id {
        return Err(format!(
            "it belongs to cluster {id:?}, not {cluster_id:?}; refusing to use it"
        ));
    }
    Ok(Some(QuorumDiskRecord {
        owner: le_u32(block, OWNER_OFFSET),
        incarnation: le_u64(block, INCARNATION_OFFSET),
        counter: le_u64(block, COUNTER_OFFSET),
        view: if version == 1 {
            0
        } else {
            le_u64(block, VIEW_OFFSET)
        },
    }))
}

/// A request to the thread.
enum Request {
    Read {
        op: u64,
    },
    Write {
        op: u64,
        record: QuorumDiskRecord,
        deadline: Instant,
    },
}

/// What the thread answers (as [`Input::QuorumDisk`]).
#[derive(Debug)]
pub enum Done {
    /// A read: the record (none: nobody's) or the error.
    Read {
        /// The core's operation number.
        op: u64,
        /// The result.
        result: Result<Option<QuorumDiskRecord>, String>,
    },
    /// A write.
    Written {
        /// The core's operation number.
        op: u64,
        /// The result.
        result: Result<(), String>,
    },
}

/// The main loop's handle on the quorum disk thread.
pub struct QuorumDisk {
    tx: SyncSender<Request>,
}

impl QuorumDisk {
    /// Starts the thread of node `node` for the quorum disk at `path` of cluster
    /// `cluster_id`; results go to `inputs`.
    pub fn start(
        node: &str,
        path: PathBuf,
        cluster_id: String,
        inputs: Inputs,
    ) -> Result<QuorumDisk, String> {
        let (tx, rx) = mpsc::sync_channel(QDISK_QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("qdisk".into())
            .spawn(move || run(&path, &cluster_id, &rx, &inputs))
            .map_err(|e| format!("node {node}: cannot start the quorum disk thread: {e}"))?;
        Ok(QuorumDisk { tx })
    }

    /// Reads the record (answered with [`Done::Read`]).
    pub fn read(&self, op: u64) -> Result<(), String> {
        self.send(Request::Read { op })
    }

    /// Writes `record` unless `deadline` has passed when the write would start.
    pub fn write(
        &self,
        op: u64,
        record: QuorumDiskRecord,
        deadline: Instant,
    ) -> Result<(), String> {
        self.send(Request::Write {
            op,
            record,
            deadline,
        })
    }

    fn send(&self, r: Request) -> Result<(), String> {
        match self.tx.try_send(r) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(format!(
                "{QDISK_QUEUE_DEPTH} quorum disk requests already queued"
            )),
            Err(TrySendError::Disconnected(_)) => Err("the quorum disk thread is gone".into()),
        }
    }
}

fn open(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open it: {e}"))
}

fn read_block(f: &File) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::FileTypeExt;
    if f.metadata().is_ok_and(|m| m.file_type().is_block_device()) {
        // Another host writes the record: drop the cached block so the read goes
        // to the device (as the configuration database does; docs/ONDISK.md,
        // "Page cache"). Advisory; failure only means a cached read.
        let _ = nix::fcntl::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(f),
            0,
            QDISK_BLOCK_BYTES as i64,
            nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
    }
    let mut b = vec![0u8; QDISK_BLOCK_BYTES];
    let mut done = 0;
    // Bounded: each pass reads at least one byte or stops (a file shorter than a
    // block reads as padded with zeros: a new, blank file).
    while done < QDISK_BLOCK_BYTES {
        match f.read_at(&mut b[done..], done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok(b)
}

fn run(path: &Path, cluster_id: &str, rx: &Receiver<Request>, inputs: &Inputs) {
    let mut file: Option<File> = None;
    let what = |e: String| format!("quorum disk {}: {e}", path.display());
    while let Ok(req) = rx.recv() {
        let f = match file.take() {
            Some(f) => Ok(f),
            None => open(path),
        };
        let done = match req {
            Request::Read { op } => Done::Read {
                op,
                result: f
                    .as_ref()
                    .map_err(Clone::clone)
                    .and_then(|f| read_block(f).and_then(|b| decode(cluster_id, &b)))
                    .map_err(what),
            },
            Request::Write {
                op,
                record,
                deadline,
            } => {
                let result = if Instant::now() > deadline {
                    Err(WRITE_DEADLINE.to_string())
                } else {
                    f.as_ref().map_err(Clone::clone).and_then(|f| {
                        encode(cluster_id, &record).and_then(|b| {
                            f.write_all_at(&b, 0)
                                .and_then(|()| f.sync_data())
                                .map_err(|e| format!("write: {e}"))
                        })
                    })
                };
                Done::Written {
                    op,
                    result: result.map_err(what),
                }
            }
        };
        file = f.ok();
        // An I/O error may mean a stale handle (a device that went away): open
        // the disk again next time.
        if matches!(
            &done,
            Done::Read { result: Err(_), .. } | Done::Written { result: Err(_), .. }
        ) {
            file = None;
        }
        if inputs.send_blocking(Input::QuorumDisk(done)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> QuorumDiskRecord {
        QuorumDiskRecord {
            owner: 2,
            incarnation: 77,
            counter: 9,
            view: 41,
        }
    }

    #[test]
    fn a_record_reads_back_and_a_blank_block_is_nobodys() {
        let b = encode("demo-0001", &rec()).unwrap();
        assert_eq!(decode("demo-0001", &b), Ok(Some(rec())));
        assert_eq!(decode("demo-0001", &[0u8; QDISK_BLOCK_BYTES]), Ok(None));
    }

    #[test]
    fn a_torn_record_is_nobodys_and_another_clusters_is_refused() {
        let mut b = encode("demo-0001", &rec()).unwrap();
        let e = decode("other", &b).unwrap_err();
        assert!(e.contains("belongs to cluster \"demo-0001\""), "{e}");
        b[COUNTER_OFFSET] ^= 1;
        assert_eq!(decode("demo-0001", &b), Ok(None));
        let mut junk = vec![0u8; QDISK_BLOCK_BYTES];
        junk[100] = 1;
        assert!(decode("demo-0001", &junk)
            .unwrap_err()
            .contains("not blank"));
        assert!(encode(&"x".repeat(65), &rec()).is_err());
    }

    /// A version 1 record (before records named a view) reads as naming view 0;
    /// an unknown version is refused.
    #[test]
    fn a_version_1_record_names_view_0_and_an_unknown_version_is_refused() {
        let mut b = encode("demo-0001", &rec()).unwrap();
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        b[VIEW_OFFSET..VIEW_OFFSET + 12].fill(0);
        let crc = crc32c::crc32c(&b[..V1_CRC_OFFSET]);
        b[V1_CRC_OFFSET..V1_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        let old = QuorumDiskRecord { view: 0, ..rec() };
        assert_eq!(decode("demo-0001", &b), Ok(Some(old)));
        b[8..12].copy_from_slice(&3u32.to_le_bytes());
        let e = decode("demo-0001", &b).unwrap_err();
        assert!(e.contains("record version 3"), "{e}");
    }
}
