//! Frontends: the protocols hosts use to reach bdevs and volumes.
//!
//! - [`iscsi`]: an iSCSI target (RFC 7143, SBC-3 disks over SPC-4), each
//!   connection pinned to one reactor, connections spread across reactors.
//! - [`scsi`]: the SCSI layer (CDB decode, sense, reservations, ALUA, the LUN
//!   object) that SCSI transports share; it knows nothing of iSCSI.
//! - [`nvmf`]: an NVMe over Fabrics target, TCP transport (NVMe/TCP): each queue
//!   pair pinned to one reactor, queue pairs spread across reactors.
//! - `pr_file`: where standalone LUNs and namespaces keep their reservations.
//! - `transport`: the TCP pieces both use (the listener, the frontend's id and
//!   addresses, the connection's socket, output queue, receive buffer, polls,
//!   the per-reactor registry and its flush-and-tick poller, stopping).
//!
//! A frontend never owns block devices: it maps its own names (LUNs) to bdevs
//! registered in the [`crate::Target`] and submits I/O through their reactor-local
//! channels, like any other bdev user.

pub mod iscsi;
pub mod nvmf;
pub(crate) mod pr_file;
pub mod scsi;
pub(crate) mod transport;
