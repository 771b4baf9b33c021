//! Failures and their exit statuses (documented in docs/OPERATIONS.md).

use plexd_proto::ctl_capnp as c;

/// The exit status of each kind of failure (0 is success). Shown by `--help` and
/// documented in docs/OPERATIONS.md ("Exit status").
pub(crate) const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  refused: invalid, in use, not found or exists (nothing changed)
  2  usage: the command line is wrong (nothing was asked)
  3  unreachable: the node or its master did not answer (cannot connect,
     timeout); a change whose answer was lost is 5
  4  no quorum, no master, or busy: nothing changed; retry later
  5  outcome unknown: the change may or may not have been applied
     (check with plexctl print)
  6  failed: a node could not carry the change out (nothing changed)
  7  internal error (a malformed answer, or a node without typed errors)
With --json, a failure prints one JSON line on stderr:
  {\"error\": {\"kind\", \"node\", \"object\", \"message\", \"exit\"}}";

/// Exit status of a usage error (bad option, bad size).
pub(crate) const EXIT_USAGE: u8 = 2;

/// The exit status of a failure of `kind` (see [`EXIT_CODES`]).
pub(crate) fn exit_code(kind: c::ErrorKind) -> u8 {
    use c::ErrorKind as K;
    match kind {
        K::Refused | K::InUse | K::NotFound | K::Exists => 1,
        K::Usage => EXIT_USAGE,
        K::Unreachable => 3,
        K::NoQuorum | K::NotMaster | K::Busy => 4,
        K::OutcomeUnknown => 5,
        K::Failed => 6,
        K::Internal => 7,
    }
}

/// The schema's name of `kind` (the JSON error's `kind`).
pub(crate) fn kind_name(kind: c::ErrorKind) -> &'static str {
    use c::ErrorKind as K;
    match kind {
        K::Internal => "internal",
        K::Refused => "refused",
        K::InUse => "inUse",
        K::NotFound => "notFound",
        K::Exists => "exists",
        K::Usage => "usage",
        K::Unreachable => "unreachable",
        K::NoQuorum => "noQuorum",
        K::NotMaster => "notMaster",
        K::Busy => "busy",
        K::OutcomeUnknown => "outcomeUnknown",
        K::Failed => "failed",
    }
}

/// A typed failure: the ctl API's `CtlError`, or plexctl's own.
#[derive(Debug)]
pub(crate) struct CtlFailure {
    pub(crate) kind: c::ErrorKind,
    /// The node that refused or failed (or the address plexctl could not reach).
    pub(crate) node: String,
    /// The object the command was about; empty if none.
    pub(crate) object: String,
    /// One line naming the node and the object.
    pub(crate) message: String,
}

impl CtlFailure {
    /// A failure plexctl found by itself.
    pub(crate) fn internal(message: impl Into<String>) -> CtlFailure {
        CtlFailure {
            kind: c::ErrorKind::Internal,
            node: String::new(),
            object: String::new(),
            message: message.into(),
        }
    }
}

/// Why plexctl failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The command line is wrong (exit 2).
    Usage(String),
    /// The node answered with an error.
    Node(CtlFailure),
    /// No node could be reached: the last address tried and why (exit 3).
    Unreachable(String, String),
    /// The connection failed or gave no answer after the request went out: a change
    /// may have been applied (exit 5), a read was not answered (exit 3).
    Lost(String),
}

impl From<String> for Failure {
    fn from(e: String) -> Failure {
        Failure::Lost(e)
    }
}

impl Failure {
    /// The typed failure; `change`: the command was a change; `addr`: the node asked.
    pub(crate) fn typed(self, change: bool, addr: &str) -> CtlFailure {
        let plain = |kind, message| CtlFailure {
            kind,
            node: addr.to_string(),
            object: String::new(),
            message,
        };
        match self {
            Failure::Usage(m) => plain(c::ErrorKind::Usage, m),
            Failure::Node(f) => f,
            Failure::Unreachable(a, m) => CtlFailure {
                node: a,
                ..plain(c::ErrorKind::Unreachable, m)
            },
            Failure::Lost(m) if change => plain(
                c::ErrorKind::OutcomeUnknown,
                format!(
                    "{m}; the change may or may not have been applied: check with plexctl print"
                ),
            ),
            Failure::Lost(m) => plain(c::ErrorKind::Unreachable, m),
        }
    }
}
