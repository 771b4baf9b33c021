//! The `malloc` bdev: a RAM disk. Backed by 2 MiB hugepages when the machine has
//! them (`/proc/sys/vm/nr_hugepages` > 0), else by anonymous memory with one warning.

use std::rc::Rc;
use std::sync::Arc;

use super::{check_range, Bdev, BdevChannel, BdevInfo, BdevIo, IoKind, IoStatus};
use crate::buf::hugepages_configured;
use crate::reactor::Reactor;

/// A RAM disk.
pub struct MallocBdev {
    name: String,
    block_size: u32,
    size_bytes: u64,
    base: *mut u8,
    map_len: usize,
    hugepages: bool,
}

// SAFETY: the mapping is owned by the bdev and lives as long as it. Concurrent I/O
// to overlapping ranges from different reactors races exactly as it would on a real
// disk (the result is one of the writes, or a mix per byte); hosts do not rely on
// more, and no Rust reference to the memory is ever held across I/Os.
unsafe impl Send for MallocBdev {}
// SAFETY: as above.
unsafe impl Sync for MallocBdev {}

impl MallocBdev {
    /// A zero-filled RAM disk of `size_bytes`.
    pub fn new(name: &str, size_bytes: u64, block_size: u32) -> Result<Arc<MallocBdev>, String> {
        if size_bytes == 0 || !size_bytes.is_multiple_of(block_size as u64) {
            return Err(format!(
                "malloc bdev {name}: size {size_bytes} is not a positive multiple of the block size {block_size}"
            ));
        }
        const HUGE: u64 = 2 << 20;
        let map_len = size_bytes.div_ceil(HUGE) * HUGE;
        let map_len =
            usize::try_from(map_len).map_err(|_| format!("malloc bdev {name}: size too large"))?;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        let mut hugepages = false;
        let mut p = libc::MAP_FAILED;
        if hugepages_configured() {
            // SAFETY: anonymous mapping without address hint; checked below.
            p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    map_len,
                    prot,
                    flags | libc::MAP_HUGETLB,
                    -1,
                    0,
                )
            };
            hugepages = p != libc::MAP_FAILED;
        }
        if p == libc::MAP_FAILED {
            log::warn!("malloc bdev {name}: no hugepages available, using normal memory for {size_bytes} bytes");
            // SAFETY: as above.
            p = unsafe { libc::mmap(std::ptr::null_mut(), map_len, prot, flags, -1, 0) };
        }
        if p == libc::MAP_FAILED {
            return Err(format!(
                "malloc bdev {name}: cannot map {size_bytes} bytes: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Arc::new(MallocBdev {
            name: name.to_string(),
            block_size,
            size_bytes,
            base: p as *mut u8,
            map_len,
            hugepages,
        }))
    }

    fn execute(&self, io: &BdevIo) -> IoStatus {
        if let Err(e) = check_range(io, self.block_size, self.size_bytes) {
            return IoStatus::Failed(e);
        }
        let off = io.offset_bytes as usize;
        let len = io.len_bytes as usize;
        // SAFETY (all arms): check_range proved off + len <= size_bytes <= map_len,
        // and for reads/writes that the buffer holds len bytes; the submitter keeps
        // the buffer alive until completion.
        unsafe {
            match io.kind {
                IoKind::Read => {
                    std::ptr::copy_nonoverlapping(self.base.add(off), io.buf.as_ptr(), len)
                }
                IoKind::Write => {
                    std::ptr::copy_nonoverlapping(io.buf.as_ptr(), self.base.add(off), len)
                }
                IoKind::WriteZeroes | IoKind::Unmap => {
                    std::ptr::write_bytes(self.base.add(off), 0, len)
                }
                IoKind::Flush | IoKind::Reset => {}
            }
        }
        IoStatus::Success
    }
}

impl Drop for MallocBdev {
    fn drop(&mut self) {
        // SAFETY: base/map_len come from a successful mmap; no channel outlives the bdev.
        unsafe { libc::munmap(self.base as *mut libc::c_void, self.map_len) };
    }
}

impl Bdev for MallocBdev {
    fn name(&self) -> &str {
        &self.name
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
    fn info(&self) -> BdevInfo {
        BdevInfo {
            name: self.name.clone(),
            kind: "malloc".into(),
            block_size: self.block_size,
            size_bytes: self.size_bytes,
            detail: if self.hugepages {
                "hugepages".into()
            } else {
                "anonymous memory".into()
            },
            refused: 0,
        }
    }
    /// Memory is the medium: a completed write is as durable as it will ever be.
    fn volatile_write_cache(&self) -> bool {
        false
    }
    fn create_channel(
        self: Arc<Self>,
        reactor: &Rc<Reactor>,
    ) -> Result<Rc<dyn BdevChannel>, String> {
        Ok(Rc::new(MallocChannel {
            bdev: self,
            reactor: Rc::clone(reactor),
        }))
    }
}

struct MallocChannel {
    bdev: Arc<MallocBdev>,
    reactor: Rc<Reactor>,
}

impl BdevChannel for MallocChannel {
    fn submit(&self, io: BdevIo) {
        let status = self.bdev.execute(&io);
        io.cb.defer(&self.reactor, status);
    }
}
