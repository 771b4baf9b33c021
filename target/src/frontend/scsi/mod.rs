//! The SCSI layer (SPC-4, SBC-3 for a direct-access block device) that SCSI
//! transports share; iSCSI ([`super::iscsi`]) is the one transport today.
//!
//! It knows nothing of PDUs, sessions or sockets: a transport hands it a CDB (and
//! the data-out once received) for a LUN and an I_T nexus, and gets back status,
//! sense and data-in, or block work to run on the LUN's bdev.
//!
//! Code map:
//! - [`cdb`]: CDB decode: a command is answered from the CDB or becomes an [`Op`].
//! - [`task`]: a command for a LUN and an I_T nexus, from its CDB to its outcome:
//!   unit attentions, reservations, and the block work as a state machine
//!   ([`ScsiTask`], its [`task::Stage`]s named).
//! - [`lun`]: the LUN object ([`LunRt`]: bdev, identity, reservations, ALUA view).
//! - [`sense`]: status codes and sense data.
//! - [`pr`]: persistent reservations and RESERVE(6), with their state file.
//! - [`pr_cluster`]: the reservations of a shared volume, kept by the cluster (PR
//!   OUT forwarded to the coordinator, its committed state per volume).
//! - [`alua`]: target port groups and their reports.
//! - [`bytes`]: big-endian field helpers.
//!
//! Why under `frontend/`: SCSI is part of the protocol hosts speak, used by
//! frontends only; the bdev and volume layers below know nothing of it, and a
//! frontend for another command set (NVMe-oF) sits beside it without it.

pub mod cdb;
pub mod lun;
pub mod pr_cluster;
pub mod task;

// The pure SCSI modules the kernel interface's types need (reservations, ALUA, sense
// data) live in plexd-target-api; they keep their paths here.
pub use plexd_target_api::scsi::{alua, bytes, pr, sense};

pub use cdb::{NexusState, Op, Response};
pub use lun::{Identity, LunInfo, LunRt};
pub use task::{Failure, ScsiTask, Step};
