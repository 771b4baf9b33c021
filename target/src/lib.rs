//! plexd-target: the data plane of plexd.
//!
//! - [`reactor`]: poll-mode reactor threads, their message rings and io_uring.
//! - [`buf`]: the I/O buffer pool (hugepages when present) and per-reactor caches.
//! - [`bdev`]: the block device framework and its backends.

pub mod bdev;
pub mod buf;
pub mod reactor;
