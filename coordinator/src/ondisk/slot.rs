//! The configuration slot header: one block in front of the payload. Byte layout in
//! docs/ONDISK.md; every field little-endian.

use super::label::{check_label_str, get_str, get_u32, get_u64};
use super::layout::BLOCK_BYTES;

/// Magic at the start of a slot header.
pub const SLOT_MAGIC: &[u8; 8] = b"PLEXDCFG";
/// The slot header version this code writes and the newest it reads. Version 2: a
/// change log may follow the payload (docs/ONDISK.md, "Change log"); version 1
/// (plexd before the log) has none.
pub const SLOT_VERSION: u32 = 2;
/// Payload encoding 1: one Cap'n Proto message, root `DiskGroupConfig` of
/// `schema/ondisk.capnp`, standard framing, unpacked.
pub const ENCODING_CAPNP: u32 = 1;
/// The header's own CRC32C covers bytes `0..HEADER_CRC_OFFSET`.
const HEADER_CRC_OFFSET: usize = 508;

/// The stored CRC of an encoded header block: the first change log record's link.
pub fn header_link(block: &[u8]) -> u32 {
    get_u32(block, HEADER_CRC_OFFSET)
}

/// A decoded slot header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotHeader {
    /// Slot format version (1: no change log follows the payload).
    pub version: u32,
    /// Configuration sequence number (equals the payload's `seq`).
    pub seq: u64,
    /// Transaction that wrote it.
    pub txn_id: u64,
    /// Payload length.
    pub payload_len_bytes: u64,
    /// CRC32C of the payload.
    pub payload_crc: u32,
    /// Which slot (0 or 1) the header was written for.
    pub slot_index: u32,
    /// Disk group the payload belongs to.
    pub dg_id: String,
}

/// Why a slot holds no configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotProblem {
    /// Never written, or cleared (header block all zeros).
    Empty,
    /// Written but unusable: torn, corrupt, or from a newer plexd.
    Invalid(String),
}

impl SlotHeader {
    /// Encodes the header into one block.
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        check_label_str("disk group id", &self.dg_id)?;
        if self.version == 0 || self.version > SLOT_VERSION {
            return Err(format!("slot format version {}", self.version));
        }
        let mut b = vec![0u8; BLOCK_BYTES as usize];
        b[0..8].copy_from_slice(SLOT_MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&ENCODING_CAPNP.to_le_bytes());
        b[16..24].copy_from_slice(&self.seq.to_le_bytes());
        b[24..32].copy_from_slice(&self.txn_id.to_le_bytes());
        b[32..40].copy_from_slice(&self.payload_len_bytes.to_le_bytes());
        b[40..44].copy_from_slice(&self.payload_crc.to_le_bytes());
        b[44..48].copy_from_slice(&self.slot_index.to_le_bytes());
        let id = self.dg_id.as_bytes();
        b[64..64 + id.len()].copy_from_slice(id);
        let crc = crc32c::crc32c(&b[..HEADER_CRC_OFFSET]);
        b[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        Ok(b)
    }

    /// Decodes and checks a header block written for slot `slot_index` whose payload
    /// area holds at most `max_payload_bytes`.
    pub fn decode(
        block: &[u8],
        slot_index: u32,
        max_payload_bytes: u64,
    ) -> Result<SlotHeader, SlotProblem> {
        let invalid = |reason: String| Err(SlotProblem::Invalid(reason));
        if block.len() < BLOCK_BYTES as usize {
            return invalid(format!("short header ({} bytes)", block.len()));
        }
        if &block[0..8] != SLOT_MAGIC {
            if block[..BLOCK_BYTES as usize].iter().all(|&x| x == 0) {
                return Err(SlotProblem::Empty);
            }
            return invalid("bad magic (torn or overwritten header)".into());
        }
        let stored_crc = get_u32(block, HEADER_CRC_OFFSET);
        let crc = crc32c::crc32c(&block[..HEADER_CRC_OFFSET]);
        if stored_crc != crc {
            return invalid(format!(
                "header checksum mismatch (stored {stored_crc:#010x}, computed {crc:#010x})"
            ));
        }
        let version = get_u32(block, 8);
        if version == 0 || version > SLOT_VERSION {
            return invalid(format!(
                "slot format version {version}, this plexd reads 1 to {SLOT_VERSION}"
            ));
        }
        let encoding = get_u32(block, 12);
        if encoding != ENCODING_CAPNP {
            return invalid(format!("unknown payload encoding {encoding}"));
        }
        let header = SlotHeader {
            version,
            seq: get_u64(block, 16),
            txn_id: get_u64(block, 24),
            payload_len_bytes: get_u64(block, 32),
            payload_crc: get_u32(block, 40),
            slot_index: get_u32(block, 44),
            dg_id: get_str(block, 64, "disk group id").map_err(SlotProblem::Invalid)?,
        };
        if header.slot_index != slot_index {
            return invalid(format!(
                "header written for slot {} found in slot {slot_index} (misdirected write)",
                header.slot_index
            ));
        }
        if header.payload_len_bytes == 0 || header.payload_len_bytes > max_payload_bytes {
            return invalid(format!(
                "payload length {} out of range (1 to {max_payload_bytes})",
                header.payload_len_bytes
            ));
        }
        if header.seq == 0 || header.dg_id.is_empty() {
            return invalid("zero sequence number or empty disk group id".into());
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn sample() -> SlotHeader {
        SlotHeader {
            version: SLOT_VERSION,
            seq: 42,
            txn_id: 7,
            payload_len_bytes: 1000,
            payload_crc: 0xdead_beef,
            slot_index: 1,
            dg_id: "feedfeedfeedfeedfeedfeedfeedfeed".into(),
        }
    }

    #[test]
    fn header_round_trips_and_checks_its_slot() {
        let block = sample().encode().unwrap();
        assert_eq!(SlotHeader::decode(&block, 1, 4096).unwrap(), sample());
        assert!(matches!(
            SlotHeader::decode(&block, 0, 4096),
            Err(SlotProblem::Invalid(r)) if r.contains("misdirected")
        ));
        assert!(matches!(
            SlotHeader::decode(&block, 1, 999),
            Err(SlotProblem::Invalid(r)) if r.contains("out of range")
        ));
        assert_eq!(
            SlotHeader::decode(&[0; 4096], 0, 4096),
            Err(SlotProblem::Empty)
        );
        let mut torn = block.clone();
        torn[20] ^= 1;
        assert!(matches!(
            SlotHeader::decode(&torn, 1, 4096),
            Err(SlotProblem::Invalid(r)) if r.contains("checksum")
        ));
    }

    #[test]
    fn random_headers_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let good = sample().encode().unwrap();
        for _ in 0..5000 {
            let mut block = good.clone();
            for _ in 0..rng.gen_range(1..6) {
                let i = rng.gen_range(0..600);
                block[i] = rng.gen();
            }
            if rng.gen_bool(0.5) {
                let crc = crc32c::crc32c(&block[..HEADER_CRC_OFFSET]);
                block[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
            }
            let _ = SlotHeader::decode(&block, rng.gen_range(0..2), rng.gen());
        }
    }
}
