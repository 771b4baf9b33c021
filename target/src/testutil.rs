//! Helpers for tests: data patterns and temporary files. (Synchronous bdev I/O is
//! [`crate::diag`], which production code uses too.)

/// `len` bytes pattern-filled from `seed` (a cheap, position-dependent pattern).
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A unique path in the temp directory, removed when dropped.
pub struct TempPath(pub std::path::PathBuf);

impl TempPath {
    /// A new path `plexd-<tag>-<pid>-<n>` (the file is not created).
    pub fn new(tag: &str) -> TempPath {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        TempPath(std::env::temp_dir().join(format!("plexd-{tag}-{}-{n}", std::process::id())))
    }

    /// A new file of `len_bytes` (sparse, zeroes).
    pub fn file(tag: &str, len_bytes: u64) -> std::io::Result<TempPath> {
        let p = TempPath::new(tag);
        std::fs::File::create(&p.0)?.set_len(len_bytes)?;
        Ok(p)
    }
}

impl Drop for TempPath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
