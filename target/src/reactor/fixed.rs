//! A reactor's registered-buffer table: the buffer pool's one region, registered
//! with the ring in pieces of at most [`MAX_FIXED_BUF_BYTES`] (io_uring refuses a
//! larger buffer, so a pool past 1 GiB registered whole would get no fixed
//! buffers at all), and the index of the piece an I/O buffer lies in.

/// Largest buffer io_uring registers (the kernel's limit per registered buffer).
pub const MAX_FIXED_BUF_BYTES: usize = 1 << 30;

/// The registered pieces of one region: `[base, base + len)` cut every
/// [`MAX_FIXED_BUF_BYTES`], piece `i` registered at index `i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct FixedBufs {
    base: usize,
    len: usize,
}

impl FixedBufs {
    /// The pieces of the region at `base` of `len` bytes.
    pub(super) fn new(base: usize, len: usize) -> FixedBufs {
        FixedBufs { base, len }
    }

    /// The iovecs to register, in index order.
    pub(super) fn iovecs(&self) -> Vec<libc::iovec> {
        (0..self.len.div_ceil(MAX_FIXED_BUF_BYTES))
            .map(|i| {
                let off = i * MAX_FIXED_BUF_BYTES;
                libc::iovec {
                    iov_base: (self.base + off) as *mut libc::c_void,
                    iov_len: (self.len - off).min(MAX_FIXED_BUF_BYTES),
                }
            })
            .collect()
    }

    /// The index of the registered piece holding all of `[ptr, ptr + len)`, or
    /// None when the range is outside the region or crosses two pieces (the I/O
    /// then goes unregistered).
    pub(super) fn index(&self, ptr: usize, len: usize) -> Option<u16> {
        let off = ptr.checked_sub(self.base)?;
        let end = off.checked_add(len)?;
        if end > self.len {
            return None;
        }
        let first = off / MAX_FIXED_BUF_BYTES;
        let last = (end.max(off + 1) - 1) / MAX_FIXED_BUF_BYTES;
        if first != last {
            return None;
        }
        u16::try_from(first).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: usize = MAX_FIXED_BUF_BYTES;

    #[test]
    fn a_region_past_the_limit_is_registered_in_pieces() {
        let base = 0x7f00_0000_0000;
        let f = FixedBufs::new(base, 2 * G + (G / 2));
        let v = f.iovecs();
        let got: Vec<(usize, usize)> = v
            .iter()
            .map(|i| (i.iov_base as usize - base, i.iov_len))
            .collect();
        assert_eq!(got, vec![(0, G), (G, G), (2 * G, G / 2)]);
        let small = FixedBufs::new(base, 196 << 20).iovecs();
        assert_eq!(small.len(), 1);
        assert_eq!(small[0].iov_len, 196 << 20);
    }

    #[test]
    fn a_buffer_maps_to_the_piece_it_lies_in() {
        let base = 0x7f00_0000_0000;
        let f = FixedBufs::new(base, 2 * G + (G / 2));
        assert_eq!(f.index(base, 4096), Some(0));
        assert_eq!(f.index(base + G - 4096, 4096), Some(0));
        assert_eq!(f.index(base + G, 4096), Some(1));
        assert_eq!(f.index(base + 2 * G + 8192, 1 << 20), Some(2));
        assert_eq!(f.index(base + 2 * G + G / 2 - 4096, 4096), Some(2));
        // Across two pieces, before or past the region: unregistered.
        assert_eq!(f.index(base + G - 4096, 8192), None);
        assert_eq!(f.index(base - 4096, 4096), None);
        assert_eq!(f.index(base + 2 * G + G / 2 - 4096, 8192), None);
        assert_eq!(f.index(usize::MAX - 10, 4096), None);
    }
}
