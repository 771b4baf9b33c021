//! The pure SCSI pieces the kernel interface's types carry, shared by the data
//! plane's SCSI layer (plexd-target's `frontend::scsi` re-exports them) and the
//! coordinator (which runs a shared volume's PERSISTENT RESERVE OUT on the cluster's
//! copy of its reservations):
//!
//! - [`pr`]: persistent reservations (state, PR IN / PR OUT logic);
//! - [`alua`]: ALUA target port groups and REPORT TARGET PORT GROUPS;
//! - [`sense`]: sense data; [`bytes`]: big-endian helpers.

pub mod alua;
pub mod bytes;
pub mod pr;
pub mod sense;

/// The coordinator's answer to a forwarded PERSISTENT RESERVE OUT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrOutResult {
    /// Committed cluster-wide; this node's state has it.
    Committed,
    /// Refused against a newer state: decide again on the state held now.
    Stale,
    /// The cluster cannot run it now (no quorum, not a member, timeout).
    Unavailable,
}
