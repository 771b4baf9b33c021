//! The label block: what a disk is and which disk group holds it. Byte layout in
//! docs/ONDISK.md; every field little-endian.

use super::layout::*;
use crate::model::validate_name;

/// Magic at the start of a label block.
pub const LABEL_MAGIC: &[u8; 8] = b"PLEXDLBL";
/// The label format version this code writes and the newest it reads.
pub const LABEL_VERSION: u32 = 1;
/// Bytes of a string field (UTF-8, NUL padded; at most 63 bytes used).
pub const LABEL_STRING_BYTES: usize = 64;

const FLAG_SHARED: u32 = 1;
const CRC_OFFSET: usize = BLOCK_BYTES as usize - 4;

/// The disk group a labelled disk belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelDiskGroup {
    /// Disk group id.
    pub id: String,
    /// Disk group name.
    pub name: String,
    /// Shared group.
    pub shared: bool,
    /// Cluster id (shared) or host id (private); empty while deported.
    pub owner_id: String,
}

/// A decoded, validated label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// Label format version found.
    pub version: u32,
    /// Incremented at every label rewrite; picks the newer of the two copies.
    pub generation: u64,
    /// Disk id (32 hex digits), fixed at `disk init`.
    pub disk_id: String,
    /// Disk media name given at `disk init`.
    pub disk_name: String,
    /// Device size when the disk was initialised.
    pub disk_size_bytes: u64,
    /// Size of the private region (labels and slots) at the front of the device.
    pub private_region_bytes: u64,
    /// Where the public region starts.
    pub public_offset_bytes: u64,
    /// Length of the public region.
    pub public_len_bytes: u64,
    /// Offsets of configuration slots 0 and 1.
    pub slot_offsets_bytes: [u64; 2],
    /// Length of each slot (header block + payload area).
    pub slot_len_bytes: u64,
    /// The disk group holding the disk, if any.
    pub disk_group: Option<LabelDiskGroup>,
}

impl Label {
    /// Encodes the label into one block, CRC included.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_BYTES as usize];
        b[0..8].copy_from_slice(LABEL_MAGIC);
        put_u32(&mut b, 8, self.version);
        let flags = match &self.disk_group {
            Some(g) if g.shared => FLAG_SHARED,
            _ => 0,
        };
        put_u32(&mut b, 12, flags);
        put_u64(&mut b, 16, self.disk_size_bytes);
        put_u64(&mut b, 24, self.private_region_bytes);
        put_u64(&mut b, 32, self.public_offset_bytes);
        put_u64(&mut b, 40, self.public_len_bytes);
        put_u64(&mut b, 48, self.slot_offsets_bytes[0]);
        put_u64(&mut b, 56, self.slot_offsets_bytes[1]);
        put_u64(&mut b, 64, self.slot_len_bytes);
        put_u64(&mut b, 72, self.generation);
        put_str(&mut b, 128, &self.disk_id);
        put_str(&mut b, 192, &self.disk_name);
        if let Some(g) = &self.disk_group {
            put_str(&mut b, 256, &g.id);
            put_str(&mut b, 320, &g.name);
            put_str(&mut b, 384, &g.owner_id);
        }
        let crc = crc32c::crc32c(&b[..CRC_OFFSET]);
        put_u32(&mut b, CRC_OFFSET, crc);
        b
    }

    /// Decodes and validates one label block. The error is the reason, for people.
    pub fn decode(block: &[u8]) -> Result<Label, String> {
        if block.len() < BLOCK_BYTES as usize {
            return Err(format!(
                "short label block ({} of {BLOCK_BYTES} bytes)",
                block.len()
            ));
        }
        if &block[0..8] != LABEL_MAGIC {
            if block[..BLOCK_BYTES as usize].iter().all(|&x| x == 0) {
                return Err("no label (blank: not initialised with `plexctl disk init`)".into());
            }
            return Err("no plexd label (bad magic: not initialised, or overwritten)".into());
        }
        let stored_crc = get_u32(block, CRC_OFFSET);
        let crc = crc32c::crc32c(&block[..CRC_OFFSET]);
        if stored_crc != crc {
            return Err(format!(
                "label checksum mismatch (stored {stored_crc:#010x}, computed {crc:#010x}): torn or corrupt label"
            ));
        }
        let version = get_u32(block, 8);
        if version == 0 || version > LABEL_VERSION {
            return Err(format!(
                "label format version {version}, this plexd reads 1 to {LABEL_VERSION}"
            ));
        }
        let flags = get_u32(block, 12);
        if flags & !FLAG_SHARED != 0 {
            return Err(format!("unknown label flags {flags:#x}"));
        }
        let dg_id = get_str(block, 256, "disk group id")?;
        let disk_group = if dg_id.is_empty() {
            None
        } else {
            let name = get_str(block, 320, "disk group name")?;
            validate_name("disk group", &name).map_err(|e| e.to_string())?;
            Some(LabelDiskGroup {
                id: dg_id,
                name,
                shared: flags & FLAG_SHARED != 0,
                owner_id: get_str(block, 384, "owner id")?,
            })
        };
        let label = Label {
            version,
            generation: get_u64(block, 72),
            disk_id: get_str(block, 128, "disk id")?,
            disk_name: get_str(block, 192, "disk name")?,
            disk_size_bytes: get_u64(block, 16),
            private_region_bytes: get_u64(block, 24),
            public_offset_bytes: get_u64(block, 32),
            public_len_bytes: get_u64(block, 40),
            slot_offsets_bytes: [get_u64(block, 48), get_u64(block, 56)],
            slot_len_bytes: get_u64(block, 64),
            disk_group,
        };
        label.check_geometry()?;
        Ok(label)
    }

    /// Checks that the regions are aligned, ordered and inside the device.
    fn check_geometry(&self) -> Result<(), String> {
        if self.disk_id.is_empty() {
            return Err("label has an empty disk id".into());
        }
        validate_name("disk", &self.disk_name).map_err(|e| e.to_string())?;
        let private = self.private_region_bytes;
        if !(MIN_PRIVATE_REGION_BYTES..=MAX_PRIVATE_REGION_BYTES).contains(&private)
            || !private.is_multiple_of(BLOCK_BYTES)
        {
            return Err(format!("private region size {private} out of range"));
        }
        let slot_len = self.slot_len_bytes;
        if slot_len < 2 * BLOCK_BYTES || !slot_len.is_multiple_of(BLOCK_BYTES) {
            return Err(format!("slot length {slot_len} out of range"));
        }
        let [s0, s1] = self.slot_offsets_bytes;
        let in_private = |offset: u64| {
            offset >= SLOT_AREA_OFFSET_BYTES
                && offset.is_multiple_of(BLOCK_BYTES)
                && offset
                    .checked_add(slot_len)
                    .is_some_and(|end| end <= private)
        };
        if !in_private(s0) || !in_private(s1) || s0.abs_diff(s1) < slot_len {
            return Err(format!(
                "slot offsets {s0} and {s1} (length {slot_len}) overlap or leave the private region"
            ));
        }
        let public_end = self.public_offset_bytes.checked_add(self.public_len_bytes);
        if self.public_offset_bytes < private
            || !self.public_offset_bytes.is_multiple_of(BLOCK_BYTES)
            || !matches!(public_end, Some(end) if end <= self.disk_size_bytes)
        {
            return Err(format!(
                "public region {}+{} is not after the private region and inside the {}-byte disk",
                self.public_offset_bytes, self.public_len_bytes, self.disk_size_bytes
            ));
        }
        Ok(())
    }

    /// The byte offset where slot `index` (0 or 1) starts.
    pub fn slot_offset_bytes(&self, index: usize) -> u64 {
        self.slot_offsets_bytes[index % 2]
    }

    /// Largest payload a slot holds.
    pub fn max_payload_bytes(&self) -> u64 {
        self.slot_len_bytes - BLOCK_BYTES
    }
}

fn put_u32(b: &mut [u8], offset: usize, value: u32) {
    b[offset..offset + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(b: &mut [u8], offset: usize, value: u64) {
    b[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

fn put_str(b: &mut [u8], offset: usize, value: &str) {
    let bytes = value.as_bytes();
    let len = bytes.len().min(LABEL_STRING_BYTES - 1);
    b[offset..offset + len].copy_from_slice(&bytes[..len]);
}

pub(super) fn get_u32(b: &[u8], offset: usize) -> u32 {
    let mut raw = [0u8; 4];
    raw.copy_from_slice(&b[offset..offset + 4]);
    u32::from_le_bytes(raw)
}

pub(super) fn get_u64(b: &[u8], offset: usize) -> u64 {
    let mut raw = [0u8; 8];
    raw.copy_from_slice(&b[offset..offset + 8]);
    u64::from_le_bytes(raw)
}

/// Reads a NUL-padded UTF-8 string field; anything after the first NUL must be NUL.
pub(super) fn get_str(b: &[u8], offset: usize, what: &str) -> Result<String, String> {
    let field = &b[offset..offset + LABEL_STRING_BYTES];
    let len = field.iter().position(|&x| x == 0).unwrap_or(field.len());
    if len == field.len() || field[len..].iter().any(|&x| x != 0) {
        return Err(format!("{what} field is not NUL-terminated and padded"));
    }
    String::from_utf8(field[..len].to_vec()).map_err(|_| format!("{what} field is not UTF-8"))
}

/// Checks that a string fits a label field.
pub(super) fn check_label_str(what: &str, value: &str) -> Result<(), String> {
    if value.len() >= LABEL_STRING_BYTES || value.contains('\0') {
        return Err(format!(
            "{what} {value:?} does not fit a label field ({} bytes at most, no NUL)",
            LABEL_STRING_BYTES - 1
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    pub(crate) fn sample() -> Label {
        let geometry = Geometry::new(DEFAULT_PRIVATE_REGION_BYTES, 100 << 20).unwrap();
        Label {
            version: LABEL_VERSION,
            generation: 3,
            disk_id: "0123456789abcdef0123456789abcdef".into(),
            disk_name: "disk01".into(),
            disk_size_bytes: 100 << 20,
            private_region_bytes: geometry.private_region_bytes,
            public_offset_bytes: geometry.public_offset_bytes,
            public_len_bytes: geometry.public_len_bytes,
            slot_offsets_bytes: geometry.slot_offsets_bytes,
            slot_len_bytes: geometry.slot_len_bytes,
            disk_group: Some(LabelDiskGroup {
                id: "feedfeedfeedfeedfeedfeedfeedfeed".into(),
                name: "dg1".into(),
                shared: true,
                owner_id: "cluster-7".into(),
            }),
        }
    }

    #[test]
    fn label_round_trips() {
        let label = sample();
        assert_eq!(Label::decode(&label.encode()).unwrap(), label);
        let free = Label {
            disk_group: None,
            ..sample()
        };
        assert_eq!(Label::decode(&free.encode()).unwrap(), free);
    }

    #[test]
    fn label_damage_is_reported_with_a_reason() {
        let good = sample().encode();
        assert!(Label::decode(&vec![0; 4096]).unwrap_err().contains("blank"));
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        assert!(Label::decode(&bad_magic).unwrap_err().contains("magic"));
        let mut flipped = good.clone();
        flipped[200] ^= 4;
        assert!(Label::decode(&flipped).unwrap_err().contains("checksum"));
        assert!(Label::decode(&good[..100]).unwrap_err().contains("short"));
        let mut future = sample();
        future.version = 9;
        assert!(Label::decode(&future.encode())
            .unwrap_err()
            .contains("version 9"));
        let mut overlapping = sample();
        overlapping.slot_offsets_bytes[1] = overlapping.slot_offsets_bytes[0] + 4096;
        assert!(Label::decode(&overlapping.encode())
            .unwrap_err()
            .contains("overlap"));
        let mut outside = sample();
        outside.public_len_bytes = u64::MAX - 10;
        assert!(Label::decode(&outside.encode())
            .unwrap_err()
            .contains("public region"));
    }

    #[test]
    fn random_label_blocks_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let good = sample().encode();
        for round in 0..5000 {
            let mut block = if round % 2 == 0 {
                good.clone()
            } else {
                (0..4096).map(|_| rng.gen()).collect()
            };
            for _ in 0..rng.gen_range(0..4) {
                let i = rng.gen_range(0..block.len());
                block[i] = rng.gen();
            }
            // Re-seal the CRC half of the time so field validation is exercised too.
            if rng.gen_bool(0.5) {
                let crc = crc32c::crc32c(&block[..CRC_OFFSET]);
                put_u32(&mut block, CRC_OFFSET, crc);
            }
            let _ = Label::decode(&block);
        }
    }
}
