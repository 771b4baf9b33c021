//! The change log: a slot holds a **checkpoint** (the whole configuration, the slot
//! payload) followed by **records**, each one change: the configuration after it
//! as the one before plus what changed ([`codec::encode_delta`]). A small change
//! appends one record (usually one 4 KiB block) to the slot holding the disk's
//! newest configuration instead of writing the whole configuration into the other
//! slot. Byte layout and rules: docs/ONDISK.md, "Change log".
//!
//! Records are chained: each names the CRC of the link before it (the checkpoint's
//! header, or the previous record's header) and its number in the log, so bytes left
//! behind by an earlier use of the slot, or a torn append, end the log rather than
//! extend it. Nothing here does I/O: [`walk`] reads through the closure it is given.

use std::sync::Arc;

use super::codec::{self, VolumeRun};
use super::label::{check_label_str, get_str, get_u32, get_u64};
use super::layout::BLOCK_BYTES;
use crate::model::{DiskGroupConfig, Volume};

/// Magic at the start of a record.
pub const LOG_MAGIC: &[u8; 8] = b"PLEXDLOG";
/// The record format this code writes and the newest it reads.
pub const LOG_VERSION: u32 = 1;
/// Record payload encoding 1: one Cap'n Proto message, root `ConfigDelta` of
/// `schema/ondisk.capnp`, standard framing, unpacked.
pub const LOG_ENCODING_CAPNP: u32 = 1;
/// A record's header; its payload follows at once.
pub const RECORD_HEADER_BYTES: u64 = 256;
/// The header's own CRC32C covers bytes `0..RECORD_CRC_OFFSET`.
const RECORD_CRC_OFFSET: usize = 252;
/// Most records after one checkpoint: the next change writes a checkpoint.
pub const MAX_LOG_RECORDS: u32 = 64;
/// A log may grow to the checkpoint's own size, and to at least this much (a small
/// configuration's checkpoint is cheaper to rewrite than a long log is to read).
pub const MIN_LOG_BUDGET_BYTES: u64 = 64 << 10;
/// [`walk`] reads the log this much at a time.
const READ_CHUNK_BYTES: u64 = 64 << 10;

/// A decoded record header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    /// Configuration sequence number after this record (the previous link's + 1).
    pub seq: u64,
    /// Transaction that wrote it.
    pub txn_id: u64,
    /// Payload length.
    pub payload_len_bytes: u64,
    /// CRC32C of the payload.
    pub payload_crc: u32,
    /// Which slot (0 or 1) the record was written for.
    pub slot_index: u32,
    /// The stored header CRC of the link before it (checkpoint or record).
    pub link: u32,
    /// Its number in the log: 1 for the first record after the checkpoint.
    pub number: u32,
    /// Disk group.
    pub dg_id: String,
}

impl RecordHeader {
    /// The record as written: header, payload, zeros to the next block boundary.
    pub fn encode_with(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        check_label_str("disk group id", &self.dg_id)?;
        let mut b = vec![0u8; RECORD_HEADER_BYTES as usize];
        b[0..8].copy_from_slice(LOG_MAGIC);
        b[8..12].copy_from_slice(&LOG_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&LOG_ENCODING_CAPNP.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.txn_id.to_le_bytes());
        b[32..40].copy_from_slice(&self.payload_len_bytes.to_le_bytes());
        b[40..44].copy_from_slice(&self.payload_crc.to_le_bytes());
        b[44..48].copy_from_slice(&self.slot_index.to_le_bytes());
        b[48..52].copy_from_slice(&self.link.to_le_bytes());
        b[52..56].copy_from_slice(&self.number.to_le_bytes());
        let id = self.dg_id.as_bytes();
        b[64..64 + id.len()].copy_from_slice(id);
        let crc = crc32c::crc32c(&b[..RECORD_CRC_OFFSET]);
        b[RECORD_CRC_OFFSET..RECORD_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        b.extend_from_slice(payload);
        b.resize(record_len(payload.len() as u64) as usize, 0);
        Ok(b)
    }
}

/// Bytes a record with a payload of `payload_len` takes in the slot.
pub fn record_len(payload_len: u64) -> u64 {
    (RECORD_HEADER_BYTES + payload_len).div_ceil(BLOCK_BYTES) * BLOCK_BYTES
}

/// The stored header CRC of an encoded record: the next record's link.
pub fn record_link(record: &[u8]) -> u32 {
    get_u32(record, RECORD_CRC_OFFSET)
}

/// The end of a slot's newest configuration: the checkpoint's, or its last
/// record's. Offsets are from the slot's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tail {
    /// Sequence number of the newest configuration.
    pub seq: u64,
    /// Transaction that wrote it.
    pub txn_id: u64,
    /// The last link's stored header CRC (a next record's `link`).
    pub link: u32,
    /// Where a next record goes.
    pub end_bytes: u64,
    /// Records after the checkpoint.
    pub records: u32,
    /// Bytes those records take.
    pub log_bytes: u64,
}

/// A record [`walk`] found: its header and payload.
#[derive(Debug, Clone)]
pub struct Record {
    /// Its header.
    pub header: RecordHeader,
    /// Its payload (CRC checked).
    pub payload: Vec<u8>,
}

/// How a header block ends or continues the log.
enum Found {
    /// Not a record of this log (never written, torn, or left by an earlier use of
    /// the slot): the log ends before it.
    End,
    /// A record of this log (chained to `tail`) that no reader may skip and this
    /// plexd cannot read: the slot is invalid.
    Bad(String),
    Record(RecordHeader),
}

fn decode_header(b: &[u8], tail: &Tail, slot_index: u32, dg_id: &str, slot_len: u64) -> Found {
    if b.len() < RECORD_HEADER_BYTES as usize || &b[0..8] != LOG_MAGIC {
        return Found::End;
    }
    if get_u32(b, RECORD_CRC_OFFSET) != crc32c::crc32c(&b[..RECORD_CRC_OFFSET]) {
        return Found::End;
    }
    let Ok(id) = get_str(b, 64, "disk group id") else {
        return Found::End;
    };
    let header = RecordHeader {
        seq: get_u64(b, 16),
        txn_id: get_u64(b, 24),
        payload_len_bytes: get_u64(b, 32),
        payload_crc: get_u32(b, 40),
        slot_index: get_u32(b, 44),
        link: get_u32(b, 48),
        number: get_u32(b, 52),
        dg_id: id,
    };
    if header.link != tail.link
        || header.number != tail.records + 1
        || header.slot_index != slot_index
        || header.dg_id != dg_id
    {
        return Found::End;
    }
    let what = format!("change log record {}", header.number);
    let (version, encoding) = (get_u32(b, 8), get_u32(b, 12));
    if version == 0 || version > LOG_VERSION {
        return Found::Bad(format!(
            "{what}: format version {version}, this plexd reads 1 to {LOG_VERSION}"
        ));
    }
    if encoding != LOG_ENCODING_CAPNP {
        return Found::Bad(format!("{what}: unknown payload encoding {encoding}"));
    }
    if tail.seq.checked_add(1) != Some(header.seq) {
        return Found::Bad(format!(
            "{what}: seq {} follows seq {}",
            header.seq, tail.seq
        ));
    }
    let room = slot_len.saturating_sub(tail.end_bytes + RECORD_HEADER_BYTES);
    if header.payload_len_bytes == 0 || header.payload_len_bytes > room {
        return Found::Bad(format!(
            "{what}: payload length {} out of range (1 to {room})",
            header.payload_len_bytes
        ));
    }
    Found::Record(header)
}

/// Walks the log of a slot `slot_len` bytes long from its checkpoint's `tail`,
/// reading through `read(offset in the slot, length)`: the newest configuration's
/// tail, and the records (their payloads CRC checked). The log ends at the first
/// block that is not the next record, or whose payload fails its CRC (a torn
/// append). Err: the slot is invalid (a chained record this plexd cannot read, or a
/// read that failed).
pub fn walk(
    mut read: impl FnMut(u64, u64) -> Result<Vec<u8>, String>,
    mut tail: Tail,
    slot_len: u64,
    slot_index: u32,
    dg_id: &str,
) -> Result<(Tail, Vec<Record>), String> {
    let mut records = Vec::new();
    // Bytes of the slot read so far: buf holds [buf_at, buf_at + buf.len()).
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_at = 0u64;
    let mut bytes = |at: u64, len: u64| -> Result<Vec<u8>, String> {
        let held = buf_at <= at && at + len <= buf_at + buf.len() as u64;
        if !held {
            let want = len.max(READ_CHUNK_BYTES).min(slot_len.saturating_sub(at));
            buf = read(at, want)?;
            buf_at = at;
            if (buf.len() as u64) < len {
                return Err(format!("short read of the change log at {at}"));
            }
        }
        let from = (at - buf_at) as usize;
        Ok(buf[from..from + len as usize].to_vec())
    };
    while tail.records < MAX_LOG_RECORDS && tail.end_bytes + BLOCK_BYTES <= slot_len {
        let block = bytes(tail.end_bytes, RECORD_HEADER_BYTES)?;
        let header = match decode_header(&block, &tail, slot_index, dg_id, slot_len) {
            Found::End => break,
            Found::Bad(reason) => return Err(reason),
            Found::Record(h) => h,
        };
        let payload = bytes(
            tail.end_bytes + RECORD_HEADER_BYTES,
            header.payload_len_bytes,
        )?;
        if crc32c::crc32c(&payload) != header.payload_crc {
            break;
        }
        let len = record_len(header.payload_len_bytes);
        tail = Tail {
            seq: header.seq,
            txn_id: header.txn_id,
            link: get_u32(&block, RECORD_CRC_OFFSET),
            end_bytes: tail.end_bytes + len,
            records: tail.records + 1,
            log_bytes: tail.log_bytes + len,
        };
        records.push(Record { header, payload });
    }
    Ok((tail, records))
}

/// `after`'s volume list as runs over `before`'s: a volume `after` shares with
/// `before` (the same allocation: a change copies only the volumes it touches) is
/// kept by position, any other is written out.
pub fn volume_runs(before: &[Arc<Volume>], after: &[Arc<Volume>]) -> Vec<VolumeRun> {
    let mut runs: Vec<VolumeRun> = Vec::new();
    // Positions of `before`'s volumes, built only if a volume is not where the
    // previous kept one leads.
    let mut index: Option<std::collections::HashMap<*const Volume, usize>> = None;
    let mut next = 0usize;
    for v in after {
        let at = if before.get(next).is_some_and(|b| Arc::ptr_eq(b, v)) {
            Some(next)
        } else {
            index
                .get_or_insert_with(|| {
                    before
                        .iter()
                        .enumerate()
                        .map(|(i, b)| (Arc::as_ptr(b), i))
                        .collect()
                })
                .get(&Arc::as_ptr(v))
                .copied()
        };
        match (at, runs.last_mut()) {
            (Some(i), Some(VolumeRun::Kept { start, count })) if *start + *count == i => {
                *count += 1;
                next = i + 1;
            }
            (Some(i), _) => {
                runs.push(VolumeRun::Kept { start: i, count: 1 });
                next = i + 1;
            }
            (None, _) => runs.push(VolumeRun::Volume(v.clone())),
        }
    }
    runs
}

/// The configuration a record makes of `before`: `group`'s fields (it lists no
/// volumes) with the volume list `runs` builds from `before`'s.
pub fn apply(
    before: &DiskGroupConfig,
    mut group: DiskGroupConfig,
    runs: Vec<VolumeRun>,
) -> Result<DiskGroupConfig, String> {
    let mut volumes = Vec::new();
    for run in runs {
        match run {
            VolumeRun::Kept { start, count } => {
                let kept = start
                    .checked_add(count)
                    .and_then(|end| before.volumes.get(start..end))
                    .ok_or_else(|| {
                        format!(
                            "keeps volumes {start}..+{count} of a configuration of {}",
                            before.volumes.len()
                        )
                    })?;
                volumes.extend(kept.iter().cloned());
            }
            VolumeRun::Volume(v) => volumes.push(v),
        }
    }
    group.volumes = volumes;
    Ok(group)
}

/// Replays `records` (as [`walk`] found them) onto the checkpoint's configuration.
pub fn replay(checkpoint: DiskGroupConfig, records: &[Record]) -> Result<DiskGroupConfig, String> {
    let mut config = checkpoint;
    for r in records {
        let what = format!(
            "change log record {} (seq {})",
            r.header.number, r.header.seq
        );
        let (group, runs) = codec::decode_delta(&r.payload).map_err(|e| format!("{what}: {e}"))?;
        if group.id != config.id || group.seq != r.header.seq {
            return Err(format!(
                "{what}: names disk group {} seq {}",
                group.id, group.seq
            ));
        }
        config = apply(&config, group, runs).map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(config)
}
