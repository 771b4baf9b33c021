//! The dirty region log's on-disk section: the one format the data plane writes
//! (marks before a mirrored write is issued, lazy cleaning) and the master reads
//! (after a node's crash, to resynchronise only the regions it may have left
//! divergent). docs/ONDISK.md, "Dirty region log", describes the same bytes.
//!
//! A mirrored volume with a log has one *section* per node on its log subdisk, so
//! nodes never write the same blocks. The log may have up to [`MAX_LOG_COPIES`]
//! copies (log subdisks on different disks, laid out alike): the data plane writes
//! every mark to every copy that has not failed, and a reader takes the union of
//! the copies, or the whole volume when one cannot be read (docs/PROTOCOL.md,
//! "Node-crash recovery"). A section is
//! made of [`DRL_BLOCK_BYTES`] blocks:
//!
//! - block 0, the header: magic [`DRL_MAGIC`], version, the node, the log id, the
//!   region size and the region count, and a CRC32C of those bytes
//!   ([`DrlHeader`]);
//! - blocks 1.., the bitmap: bit `i % 8` (least significant first) of byte `i / 8`
//!   is region `i` (bytes `[i × region, (i + 1) × region)` of the volume); 1 =
//!   dirty: a write to the region may have been issued to some plexes and not
//!   completed on all.
//!
//! A data plane writes a fresh header and an all-clean bitmap (the *init*) before
//! its first write under a log spec (a new process, or a spec whose log id or
//! geometry changed), and marks a region dirty on the disk before any write to it
//! is issued. So a section whose header does not name the log id and node the
//! reader expects was never written under this log, and no write of that node
//! under this log was issued: nothing to recover ([`DirtyLog::Unused`]). Torn
//! writes only err towards dirty: a torn mark never let its write be issued; a
//! torn clean leaves bits set.

use serde::{Deserialize, Serialize};

/// Block size of a section (the unit the data plane writes).
pub const DRL_BLOCK_BYTES: u64 = 4096;
/// The header's first eight bytes.
pub const DRL_MAGIC: [u8; 8] = *b"PLXDRL\0\x01";
/// Format version in the header.
pub const DRL_VERSION: u32 = 1;
/// Default region size.
pub const DEFAULT_REGION_BYTES: u64 = 512 << 10;
/// Smallest region size (a power of two, at least this).
pub const MIN_REGION_BYTES: u64 = 64 << 10;
/// Largest region size.
pub const MAX_REGION_BYTES: u64 = 1 << 30;
/// Most regions one section tracks (a 2 MiB bitmap).
pub const MAX_DRL_REGIONS: u64 = 1 << 24;
/// Most copies of a dirty region log (a VxVM DRL log plex mirrored once).
pub const MAX_LOG_COPIES: usize = 2;

/// Bytes of the header that the CRC covers (the CRC follows them).
const HEADER_CRC_OFFSET: usize = 40;

/// Where one copy of a node's section lives: a bdev and an offset on it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrlCopy {
    /// The bdev holding this copy's log subdisk.
    pub bdev: String,
    /// Start of this node's section on the bdev (a multiple of [`DRL_BLOCK_BYTES`]).
    pub offset_bytes: u64,
}

/// Where one node's section of a volume's dirty region log lives, as the data
/// plane is given it with the volume's layout (`VolumeSpec::log`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirtyLogSpec {
    /// The section's copies, 1..=[`MAX_LOG_COPIES`] on distinct bdevs: a mark is
    /// written to each (a write goes on once it is durable on one).
    pub copies: Vec<DrlCopy>,
    /// Room for the section (at least [`section_bytes`] of the volume's regions).
    pub section_bytes: u64,
    /// The node whose section this is (in the header).
    pub node: u32,
    /// Identifies this log and geometry: a new id whenever the log moves or its
    /// region size changes (the data plane then starts the section afresh).
    pub log_id: u64,
    /// Region size: a power of two in [`MIN_REGION_BYTES`]..=[`MAX_REGION_BYTES`].
    pub region_bytes: u64,
}

impl DirtyLogSpec {
    /// Checks the spec against a volume of `volume_bytes`: region size, alignment
    /// and room for the bitmap.
    pub fn check(&self, volume_bytes: u64) -> Result<(), String> {
        let r = self.region_bytes;
        let on = self.bdevs();
        if self.copies.is_empty() || self.copies.len() > MAX_LOG_COPIES {
            return Err(format!(
                "dirty region log on {on}: {} copies (1..={MAX_LOG_COPIES})",
                self.copies.len()
            ));
        }
        for (i, c) in self.copies.iter().enumerate() {
            if self.copies[..i].iter().any(|o| o.bdev == c.bdev) {
                return Err(format!(
                    "dirty region log on {on}: two copies on bdev {}",
                    c.bdev
                ));
            }
            if !c.offset_bytes.is_multiple_of(DRL_BLOCK_BYTES) {
                return Err(format!(
                    "dirty region log on {}: section offset {} is not a multiple of {DRL_BLOCK_BYTES}",
                    c.bdev, c.offset_bytes
                ));
            }
        }
        if !r.is_power_of_two() || !(MIN_REGION_BYTES..=MAX_REGION_BYTES).contains(&r) {
            return Err(format!(
                "dirty region log on {on}: region size {r} is not a power of two in \
                 {MIN_REGION_BYTES}..={MAX_REGION_BYTES}"
            ));
        }
        let regions = regions_for(volume_bytes, r);
        if regions > MAX_DRL_REGIONS {
            return Err(format!(
                "dirty region log on {on}: {regions} regions of {r} bytes (at most {MAX_DRL_REGIONS})"
            ));
        }
        let need = section_bytes(regions);
        if need > self.section_bytes {
            return Err(format!(
                "dirty region log on {on}: a volume of {volume_bytes} bytes needs a {need}-byte \
                 section, the log has {}",
                self.section_bytes
            ));
        }
        Ok(())
    }

    /// The copies' bdevs, `+`-separated (for messages).
    pub fn bdevs(&self) -> String {
        let names: Vec<&str> = self.copies.iter().map(|c| c.bdev.as_str()).collect();
        names.join("+")
    }
}

/// The regions of `region_bytes` covering a volume of `volume_bytes`.
pub fn regions_for(volume_bytes: u64, region_bytes: u64) -> u64 {
    volume_bytes.div_ceil(region_bytes.max(1))
}

/// Bytes of a section's bitmap for `regions` (whole blocks).
pub fn bitmap_bytes(regions: u64) -> u64 {
    regions.div_ceil(8).div_ceil(DRL_BLOCK_BYTES) * DRL_BLOCK_BYTES
}

/// Bytes of a section for `regions`: the header block and the bitmap.
pub fn section_bytes(regions: u64) -> u64 {
    DRL_BLOCK_BYTES + bitmap_bytes(regions)
}

/// A section's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrlHeader {
    /// The node writing the section.
    pub node: u32,
    /// The log it belongs to ([`DirtyLogSpec::log_id`]).
    pub log_id: u64,
    /// Region size.
    pub region_bytes: u64,
    /// Regions the bitmap tracks.
    pub regions: u64,
}

impl DrlHeader {
    /// The header block's bytes.
    pub fn encode(&self) -> [u8; DRL_BLOCK_BYTES as usize] {
        let mut b = [0u8; DRL_BLOCK_BYTES as usize];
        b[0..8].copy_from_slice(&DRL_MAGIC);
        b[8..12].copy_from_slice(&DRL_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&self.node.to_le_bytes());
        b[16..24].copy_from_slice(&self.log_id.to_le_bytes());
        b[24..32].copy_from_slice(&self.region_bytes.to_le_bytes());
        b[32..40].copy_from_slice(&self.regions.to_le_bytes());
        let crc = crc32c::crc32c(&b[..HEADER_CRC_OFFSET]);
        b[HEADER_CRC_OFFSET..HEADER_CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads a header block; None when it is not one (magic, version, CRC or a
    /// geometry out of bounds): such a section was never written under any log.
    pub fn decode(b: &[u8]) -> Option<DrlHeader> {
        if b.len() < HEADER_CRC_OFFSET + 4 || b[0..8] != DRL_MAGIC {
            return None;
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        if u32_at(HEADER_CRC_OFFSET) != crc32c::crc32c(&b[..HEADER_CRC_OFFSET])
            || u32_at(8) != DRL_VERSION
        {
            return None;
        }
        let h = DrlHeader {
            node: u32_at(12),
            log_id: u64_at(16),
            region_bytes: u64_at(24),
            regions: u64_at(32),
        };
        let region_ok = h.region_bytes.is_power_of_two()
            && (MIN_REGION_BYTES..=MAX_REGION_BYTES).contains(&h.region_bytes);
        (region_ok && h.regions <= MAX_DRL_REGIONS).then_some(h)
    }
}

/// What a section says about its node's writes under one log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirtyLog {
    /// The header does not name this log and node: the node issued no write under
    /// this log.
    Unused,
    /// The dirty regions, as byte ranges `(offset, len)` of the volume, ascending,
    /// adjacent regions merged (the last may reach past the volume's end).
    Dirty(Vec<(u64, u64)>),
}

/// Reads a section (`section`: its bytes from the start, at least the header block
/// and as much of the bitmap as the header's region count needs) for the log
/// `log_id` of `node`. Err when the header names this log but the bitmap is cut
/// short (the caller must then resynchronise everything).
pub fn read_section(section: &[u8], node: u32, log_id: u64) -> Result<DirtyLog, String> {
    let Some(h) = DrlHeader::decode(section) else {
        return Ok(DirtyLog::Unused);
    };
    if h.node != node || h.log_id != log_id {
        return Ok(DirtyLog::Unused);
    }
    let start = DRL_BLOCK_BYTES as usize;
    let need = h.regions.div_ceil(8) as usize;
    let Some(bitmap) = section.get(start..start + need) else {
        return Err(format!(
            "dirty region log {log_id:#x} of node {node}: the section holds {} bitmap bytes, \
             its header needs {need}",
            section.len().saturating_sub(start)
        ));
    };
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for (i, byte) in bitmap.iter().enumerate() {
        if *byte == 0 {
            continue;
        }
        for bit in 0..8u64 {
            let region = i as u64 * 8 + bit;
            if byte & (1 << bit) == 0 || region >= h.regions {
                continue;
            }
            let off = region * h.region_bytes;
            match ranges.last_mut() {
                Some((o, l)) if *o + *l == off => *l += h.region_bytes,
                _ => ranges.push((off, h.region_bytes)),
            }
        }
    }
    Ok(DirtyLog::Dirty(ranges))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(h: &DrlHeader, dirty: &[u64]) -> Vec<u8> {
        let mut s = vec![0u8; section_bytes(h.regions) as usize];
        s[..DRL_BLOCK_BYTES as usize].copy_from_slice(&h.encode());
        for r in dirty {
            s[DRL_BLOCK_BYTES as usize + (*r / 8) as usize] |= 1 << (r % 8);
        }
        s
    }

    const H: DrlHeader = DrlHeader {
        node: 3,
        log_id: 0x77,
        region_bytes: DEFAULT_REGION_BYTES,
        regions: 2048,
    };

    #[test]
    fn dirty_regions_come_back_as_merged_byte_ranges() {
        let s = section(&H, &[0, 1, 2, 9, 2047]);
        let r = DEFAULT_REGION_BYTES;
        assert_eq!(
            read_section(&s, 3, 0x77).unwrap(),
            DirtyLog::Dirty(vec![(0, 3 * r), (9 * r, r), (2047 * r, r)])
        );
        assert_eq!(
            read_section(&section(&H, &[]), 3, 0x77).unwrap(),
            DirtyLog::Dirty(vec![])
        );
    }

    #[test]
    fn another_log_node_or_a_damaged_header_is_unused() {
        let s = section(&H, &[5]);
        assert_eq!(read_section(&s, 4, 0x77).unwrap(), DirtyLog::Unused);
        assert_eq!(read_section(&s, 3, 0x78).unwrap(), DirtyLog::Unused);
        let mut bad = s.clone();
        bad[20] ^= 1;
        assert_eq!(read_section(&bad, 3, 0x77).unwrap(), DirtyLog::Unused);
        assert_eq!(
            read_section(&[0u8; 4096], 3, 0x77).unwrap(),
            DirtyLog::Unused
        );
        assert_eq!(read_section(&[], 3, 0x77).unwrap(), DirtyLog::Unused);
    }

    #[test]
    fn a_short_bitmap_is_an_error_not_a_clean_log() {
        let s = section(&H, &[5]);
        assert!(read_section(&s[..4096 + 100], 3, 0x77).is_err());
    }

    #[test]
    fn geometry_and_checks() {
        assert_eq!(regions_for(1 << 30, DEFAULT_REGION_BYTES), 2048);
        assert_eq!(section_bytes(2048), 8192);
        assert_eq!(section_bytes(32769), 4096 + 8192);
        let spec = DirtyLogSpec {
            copies: vec![DrlCopy {
                bdev: "d1".into(),
                offset_bytes: 8192,
            }],
            section_bytes: 8192,
            node: 1,
            log_id: 1,
            region_bytes: DEFAULT_REGION_BYTES,
        };
        assert!(spec.check(1 << 30).is_ok());
        assert!(spec
            .check(17 << 30)
            .unwrap_err()
            .contains("needs a 12288-byte section"));
        let odd = DirtyLogSpec {
            region_bytes: 3 << 16,
            ..spec.clone()
        };
        assert!(odd.check(1 << 20).is_err());
        let misaligned = DirtyLogSpec {
            copies: vec![DrlCopy {
                bdev: "d1".into(),
                offset_bytes: 512,
            }],
            ..spec.clone()
        };
        assert!(misaligned.check(1 << 20).is_err());
        let copy = |b: &str| DrlCopy {
            bdev: b.into(),
            offset_bytes: 8192,
        };
        let two = DirtyLogSpec {
            copies: vec![copy("d1"), copy("d2")],
            ..spec.clone()
        };
        assert!(two.check(1 << 30).is_ok());
        let same_bdev = DirtyLogSpec {
            copies: vec![copy("d1"), copy("d1")],
            ..spec.clone()
        };
        assert!(same_bdev.check(1 << 30).is_err());
        let three = DirtyLogSpec {
            copies: vec![copy("d1"), copy("d2"), copy("d3")],
            ..spec.clone()
        };
        assert!(three.check(1 << 30).is_err());
        let none = DirtyLogSpec {
            copies: vec![],
            ..spec
        };
        assert!(none.check(1 << 30).is_err());
    }
}
