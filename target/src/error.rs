//! The typed error of the data plane's control operations, below every module
//! that returns it (volume, lease, frontends) and re-exported as
//! [`crate::TargetError`].

/// A typed error of the data plane's control operations; every variant names the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// No such object.
    #[error("{kind} {name}: not found")]
    NotFound {
        /// `bdev`, `volume`, `plex`...
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The name is taken.
    #[error("{kind} {name}: already exists")]
    Exists {
        /// `bdev`, `volume`...
        kind: &'static str,
        /// Its name.
        name: String,
    },
    /// The object is used by another one.
    #[error("{kind} {name}: in use by {user}")]
    InUse {
        /// `bdev`...
        kind: &'static str,
        /// Its name.
        name: String,
        /// Who uses it.
        user: String,
    },
    /// A request that makes no sense for the object.
    #[error("{object}: {reason}")]
    Invalid {
        /// The object, e.g. `volume vol1`.
        object: String,
        /// Why.
        reason: String,
    },
    /// The data plane did not answer in time.
    #[error("{object}: {reason}")]
    Timeout {
        /// The object, e.g. `volume vol1`.
        object: String,
        /// What did not finish, naming the reactors.
        reason: String,
    },
    /// An operating-system error.
    #[error("{object}: {reason}")]
    Io {
        /// The object.
        object: String,
        /// The OS error text.
        reason: String,
    },
}

impl TargetError {
    /// Shorthand for [`TargetError::Invalid`].
    pub fn invalid(object: impl Into<String>, reason: impl Into<String>) -> Self {
        TargetError::Invalid {
            object: object.into(),
            reason: reason.into(),
        }
    }
}
