//! Typed failures of client requests: what kind of failure, on which node, and one
//! line naming the node and the object. The ctl API carries them to `plexctl`
//! (`schema/ctl.capnp`, `CtlError`), which turns the kind into its exit status.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The kind of a request's failure: what a client can do about it. Every kind but
/// [`ErrorKind::OutcomeUnknown`] means the change was applied nowhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    /// Invalid, or conflicting with the configuration (a state transition, the last
    /// ACTIVE plex, no space...): nothing changed.
    Refused,
    /// An object the change needs or removes is in use (exported, a host logged in,
    /// a disk holding subdisks): nothing changed.
    InUse,
    /// A named object does not exist: nothing changed.
    NotFound,
    /// The name or the disk is taken: nothing changed.
    Exists,
    /// This side of the cluster has no majority of the votes: nothing changed.
    NoQuorum,
    /// No master can take the change now (lost, taking over, this node is not a
    /// member): nothing changed; retry shortly.
    NotMaster,
    /// Too many requests waiting, or the node is stopping: nothing changed.
    Busy,
    /// A node did not answer in time: nothing changed.
    Unreachable,
    /// The cluster may or may not have applied the change: check the configuration.
    OutcomeUnknown,
    /// A node could not carry the change out (its data plane, its disks, it left
    /// the cluster): nothing changed.
    Failed,
    /// A malformed message or answer (a bug): nothing changed.
    Internal,
}

/// Why a client request failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestError {
    /// The kind.
    pub kind: ErrorKind,
    /// The node that refused or failed, empty when not known yet (a slave's check
    /// answer: the master names it).
    pub node: String,
    /// One line naming the node and the object (`node b: disk group dg1: ...`).
    pub message: String,
}

impl RequestError {
    /// A failure of `kind` on `node`; `message` names the node already.
    pub fn new(kind: ErrorKind, node: impl Into<String>, message: impl Into<String>) -> Self {
        RequestError {
            kind,
            node: node.into(),
            message: message.into(),
        }
    }

    /// A failure of `kind` whose node is not known yet (see [`RequestError::on`]).
    pub fn unplaced(kind: ErrorKind, message: impl Into<String>) -> Self {
        RequestError::new(kind, "", message)
    }

    /// The same failure, placed on `node`: the message gets the `node NAME: ` prefix
    /// unless it starts with it.
    pub fn on(self, node: &str) -> Self {
        let prefix = format!("node {node}:");
        let message = if self.message.starts_with(&prefix) {
            self.message
        } else {
            format!("node {node}: {}", self.message)
        };
        RequestError {
            kind: self.kind,
            node: node.to_string(),
            message,
        }
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RequestError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placing_an_error_names_the_node_once() {
        let e = RequestError::unplaced(ErrorKind::InUse, "volume v1 is in use").on("b");
        assert_eq!(e.message, "node b: volume v1 is in use");
        assert_eq!(e.node, "b");
        let again = e.clone().on("b");
        assert_eq!(again, e);
        assert_eq!(again.kind, ErrorKind::InUse);
    }
}
