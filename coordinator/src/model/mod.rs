//! The object model, in VxVM's terms, and the changes that move it.
//!
//! A node's [`ClusterConfig`] holds the disk groups it has imported: the cluster's
//! shared groups and its own private ones. A [`DiskGroupConfig`] is the unit stored in
//! the private regions of the group's disks (see `ondisk`): its disks (`dm`), its
//! volumes (`v`), their plexes (`pl`) and the plexes' subdisks (`sd`).
//!
//! Every configuration change is a [`Change`], applied by [`apply`] (or
//! [`ClusterConfig::apply`]), which validates it (what it changed, against the rest
//! of its group: [`DiskGroupConfig::validate_change`]) and returns the new
//! configuration or a [`ConfigError`] whose message names the object. Applying a change
//! to a disk group bumps its `seq` by one. Nothing here does I/O: the coordinator
//! decides where the result goes (the data plane through [`DiskGroupConfig::volume_specs`],
//! the disks through [`Change::disk_updates`] and `ondisk`).
//!
//! Units: every offset and length is in bytes and a multiple of [`ALLOC_ALIGN_BYTES`]
//! (4 KiB) for subdisks; volume sizes are multiples of [`SECTOR_BYTES`].
//!
//! | module | job |
//! |---|---|
//! | `types` | the objects and lookups/sizes derived from them |
//! | `export` | exports (iSCSI, NVMe-oF) and name grammar |
//! | `change` | [`Change`], the disk writes a change needs, [`describe`] |
//! | `error` | [`ConfigError`], [`validate_name`] |
//! | `validate` | [`DiskGroupConfig::validate`]: every invariant of a group; [`DiskGroupConfig::validate_change`]: those a change can have broken |
//! | `apply` | [`apply`], [`apply_dg`]: a change against the configuration |
//! | [`index`] | an index of a group's extents, names and log ids, for the groups held in an `Arc` |
//! | [`alloc`] | extent allocation for volumes, plexes and dirty region logs |
//! | `new_space` | [`new_data_space`]: the disk space a create or a grow gives a volume (zeroed before it commits) |
//! | `recovery` | the open nodes of shared groups and the node-crash recovery of mirrors |
//! | `project` | [`DiskGroupConfig::volume_specs`]: what the data plane builds, and its names of the group's objects |

pub mod alloc;
mod apply;
mod change;
mod error;
mod export;
pub mod index;
mod new_space;
mod project;
mod recovery;
mod types;
mod validate;

pub use apply::*;
pub use change::*;
pub use error::*;
pub use export::*;
pub use new_space::*;
pub use project::*;
pub use recovery::*;
pub use types::*;

pub use crate::size::SECTOR_BYTES;
use alloc::AllocError;
pub use plexd_target_api::scsi::pr::{Nexus, PrState};

/// Every subdisk's offset and length is a multiple of this, so O_DIRECT I/O on 4K-sector
/// devices stays aligned.
pub const ALLOC_ALIGN_BYTES: u64 = 4096;
/// The default stripe unit (VxVM's 128 sectors).
pub const DEFAULT_STRIPE_UNIT_BYTES: u64 = 64 << 10;
/// Most plexes (mirrors) a volume can have; the data plane's limit.
pub const MAX_PLEXES: usize = 32;
/// Most columns a stripe can have.
pub const MAX_COLUMNS: u32 = 64;
/// Fewest columns `vol create` accepts for a stripe (one column is a concat).
pub const MIN_STRIPE_COLUMNS: u32 = 2;
/// Longest object name, in bytes (VxVM's limit is 31 characters).
pub const MAX_NAME_BYTES: usize = 31;
/// Most subdisks in one column (one concat plex); the data plane's limit.
pub const MAX_SUBDISKS_PER_COLUMN: usize = 256;

#[cfg(test)]
pub(crate) mod test_support;
#[cfg(test)]
mod tests;
