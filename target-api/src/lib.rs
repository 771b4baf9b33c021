//! plexd-target-api: what a controller needs to drive a plexd-target over its kernel
//! interface (`schema/kernel.capnp`, `docs/KERNEL_INTERFACE.md`), without the data
//! plane itself (no reactors, no io_uring): the coordinator's only dependency on it
//! (plexctl talks to plexd alone, through `ctl.capnp`).
//!
//! - [`client`]: [`KernelClient`], the blocking client (feature `client`, default).
//! - [`convert`]: Rust types ⇄ Cap'n Proto builders and readers, shared with the
//!   server in plexd-target so the two sides cannot drift apart (feature `client`).
//! - [`drl`]: the dirty region log's on-disk section (written by the data plane, read
//!   by the master after a node's crash).
//! - [`error`]: the typed failures ([`ErrorCode`], [`ApiError`]).
//! - The wire types: [`volume`] (layouts, volume and plex info), [`bdev`] (bdev
//!   requests and info, I/O kinds, fault injection), [`info`] (target info, events,
//!   detach policy, lease state), [`iscsi`] and [`nvmf`] (exports), [`scsi`]
//!   (reservations, ALUA: pure logic the coordinator runs too).
//!
//! Without the `client` feature the crate is plain data and logic (serde, thiserror,
//! log): the fuzz targets use it that way, without Cap'n Proto.

pub mod bdev;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "client")]
pub mod convert;
pub mod drl;
pub mod error;
pub mod info;
#[cfg(feature = "client")]
mod inline;
pub mod iscsi;
pub mod nvmf;
pub mod scsi;
pub mod volume;

pub use bdev::{
    BdevInfo, BdevKind, BdevRequest, FailOn, Injection, IoKind, IoResult, MAX_IO_BYTES,
};
#[cfg(feature = "client")]
pub use client::{ClientError, KernelClient, Subscription};
pub use drl::{DirtyLogSpec, DrlCopy};
pub use error::{ApiError, ErrorCode};
pub use info::{
    DetachPolicy, Event, LeaseState, LeaseStatus, PollMode, TargetInfo, EVENT_QUEUE_DEPTH,
};
pub use volume::{
    PlexInfo, PlexKind, PlexSpec, PlexState, ReadPolicy, SubdiskSpec, VolumeInfo, VolumeSpec,
    VolumeStats,
};
