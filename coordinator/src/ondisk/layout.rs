//! Where things are in the private region. See docs/ONDISK.md for the picture.

/// I/O unit of the private region: every structure starts on a block boundary and
/// every write is whole blocks.
pub const BLOCK_BYTES: u64 = 4096;
/// Offsets of the primary and backup label blocks.
pub const LABEL_OFFSETS_BYTES: [u64; 2] = [0, BLOCK_BYTES];
/// The configuration slots start here (the blocks between the labels and it are
/// reserved, written as zeros).
pub const SLOT_AREA_OFFSET_BYTES: u64 = 64 << 10;
/// Default private region size: 8 MiB, two slots of 4,064 KiB (a payload of up to
/// 4,060 KiB: about 10,000 2-way mirrored volumes, at about 410 bytes each).
pub const DEFAULT_PRIVATE_REGION_BYTES: u64 = 8 << 20;
/// Smallest private region accepted.
pub const MIN_PRIVATE_REGION_BYTES: u64 = 128 << 10;
/// Largest private region accepted.
pub const MAX_PRIVATE_REGION_BYTES: u64 = 256 << 20;
/// Smallest public region `disk init` accepts.
pub const MIN_PUBLIC_REGION_BYTES: u64 = 1 << 20;

/// The regions of one disk, computed at `disk init` and stored in its label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Private region size.
    pub private_region_bytes: u64,
    /// Offsets of slots 0 and 1.
    pub slot_offsets_bytes: [u64; 2],
    /// Length of each slot.
    pub slot_len_bytes: u64,
    /// Public region start (= private region size).
    pub public_offset_bytes: u64,
    /// Public region length, rounded down to whole blocks.
    pub public_len_bytes: u64,
}

impl Geometry {
    /// The geometry of a `disk_size_bytes` device with a private region of
    /// `private_region_bytes`, or why it does not fit.
    pub fn new(private_region_bytes: u64, disk_size_bytes: u64) -> Result<Geometry, String> {
        if !(MIN_PRIVATE_REGION_BYTES..=MAX_PRIVATE_REGION_BYTES).contains(&private_region_bytes)
            || !private_region_bytes.is_multiple_of(BLOCK_BYTES)
        {
            return Err(format!(
                "private region of {private_region_bytes} bytes: must be a multiple of {BLOCK_BYTES} between {MIN_PRIVATE_REGION_BYTES} and {MAX_PRIVATE_REGION_BYTES}"
            ));
        }
        let slot_len_bytes =
            (private_region_bytes - SLOT_AREA_OFFSET_BYTES) / 2 / BLOCK_BYTES * BLOCK_BYTES;
        let needed = private_region_bytes + MIN_PUBLIC_REGION_BYTES;
        if disk_size_bytes < needed {
            return Err(format!(
                "disk of {disk_size_bytes} bytes is too small: needs at least {needed} ({private_region_bytes} private + {MIN_PUBLIC_REGION_BYTES} public)"
            ));
        }
        Ok(Geometry {
            private_region_bytes,
            slot_offsets_bytes: [
                SLOT_AREA_OFFSET_BYTES,
                SLOT_AREA_OFFSET_BYTES + slot_len_bytes,
            ],
            slot_len_bytes,
            public_offset_bytes: private_region_bytes,
            public_len_bytes: (disk_size_bytes - private_region_bytes) / BLOCK_BYTES * BLOCK_BYTES,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_geometry_has_two_4064k_slots_and_an_8m_public_offset() {
        let g = Geometry::new(DEFAULT_PRIVATE_REGION_BYTES, (1 << 30) + 1000).unwrap();
        assert_eq!(g.slot_offsets_bytes, [64 << 10, 4128 << 10]);
        assert_eq!(g.slot_len_bytes, 4064 << 10);
        assert_eq!(g.public_offset_bytes, 8 << 20);
        assert_eq!(g.public_len_bytes, (1 << 30) - (8 << 20));
        assert!(Geometry::new(DEFAULT_PRIVATE_REGION_BYTES, 8 << 20).is_err());
        assert!(Geometry::new(1000, 1 << 30).is_err());
    }

    #[test]
    fn a_1m_private_region_has_two_480k_slots_and_a_1m_public_offset() {
        let g = Geometry::new(1 << 20, (1 << 30) + 1000).unwrap();
        assert_eq!(g.slot_offsets_bytes, [64 << 10, 544 << 10]);
        assert_eq!(g.slot_len_bytes, 480 << 10);
        assert_eq!(g.public_offset_bytes, 1 << 20);
        assert_eq!(g.public_len_bytes, (1 << 30) - (1 << 20));
        assert!(Geometry::new(1 << 20, 1 << 20).is_err());
    }
}
