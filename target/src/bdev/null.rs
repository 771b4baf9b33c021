//! The `null` bdev: completes every I/O at once with success; reads return
//! whatever the buffer held. For measuring the stack above the device.

use std::rc::Rc;
use std::sync::Arc;

use super::{check_range, Bdev, BdevChannel, BdevInfo, BdevIo, IoStatus};
use crate::reactor::Reactor;

/// A bdev that stores nothing.
pub struct NullBdev {
    name: String,
    block_size: u32,
    size_bytes: u64,
}

impl NullBdev {
    /// A null bdev of `size_bytes` with `block_size`-byte blocks.
    pub fn new(name: &str, size_bytes: u64, block_size: u32) -> Arc<NullBdev> {
        Arc::new(NullBdev {
            name: name.to_string(),
            block_size,
            size_bytes,
        })
    }
}

impl Bdev for NullBdev {
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
            kind: "null".into(),
            block_size: self.block_size,
            size_bytes: self.size_bytes,
            detail: String::new(),
            refused: 0,
        }
    }
    /// Nothing is stored, so nothing is cached either.
    fn volatile_write_cache(&self) -> bool {
        false
    }
    fn create_channel(
        self: Arc<Self>,
        reactor: &Rc<Reactor>,
    ) -> Result<Rc<dyn BdevChannel>, String> {
        Ok(Rc::new(NullChannel {
            bdev: self,
            reactor: Rc::clone(reactor),
        }))
    }
}

struct NullChannel {
    bdev: Arc<NullBdev>,
    reactor: Rc<Reactor>,
}

impl BdevChannel for NullChannel {
    fn submit(&self, io: BdevIo) {
        let status = match check_range(&io, self.bdev.block_size, self.bdev.size_bytes) {
            Ok(()) => IoStatus::Success,
            Err(e) => IoStatus::Failed(e),
        };
        io.cb.defer(&self.reactor, status);
    }
}
