//! plexd-target: the data plane of plexd.
//!
//! - [`reactor`]: poll-mode reactor threads, their message rings and io_uring.
//! - [`buf`]: the I/O buffer pool (hugepages when present) and per-reactor caches.
//! - [`bdev`]: the block device framework and its backends.
//! - [`volume`]: subdisks, plexes and volumes; quiesce and layout changes.
//! - [`error`], [`event`]: the control operations' typed error; the event stream.
//! - [`services`]: what the layers share: reactors, bdev registry, events.
//! - [`target`]: a running target, the composition root: services + volumes +
//!   lease + reservations.
//! - [`lease`]: the data-plane lease that shared volumes are served under.
//! - [`diag`]: synchronous bdev I/O from a control thread (diagnostic I/O, plexperf, tests).
//! - [`testutil`]: data patterns and temporary files for tests.

pub mod bdev;
pub mod buf;
pub mod diag;
pub mod error;
pub mod event;
pub mod frontend;
pub mod lease;
pub mod perf;
pub mod perf_nvmf;
pub mod reactor;
pub mod services;
pub mod target;
pub mod testutil;
pub mod volume;

pub use target::{Event, Target, TargetConfig, TargetError};
pub mod api;
pub mod config;
