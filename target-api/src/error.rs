//! Typed failures of the data plane as the kernel interface carries them.

/// The kind of a failure, as clients match on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No such bdev, volume or plex.
    NotFound,
    /// The name is taken.
    Exists,
    /// The object is used by another one.
    InUse,
    /// The request makes no sense for the object.
    Invalid,
    /// The data plane did not answer in time.
    Timeout,
    /// An operating-system error.
    Io,
}

impl ErrorCode {
    /// The schema's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "notFound",
            ErrorCode::Exists => "exists",
            ErrorCode::InUse => "inUse",
            ErrorCode::Invalid => "invalid",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Io => "io",
        }
    }
}

/// A failure reported by the target: what kind, on which object, and why.
/// `Display` gives `<object>: <reason>`, the same text as the target's `TargetError`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{object}: {reason}")]
pub struct ApiError {
    /// The kind of failure.
    pub code: ErrorCode,
    /// The object, e.g. `volume vol0`.
    pub object: String,
    /// Why, e.g. `not found`.
    pub reason: String,
}
