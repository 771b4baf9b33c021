//! Why a change or a configuration was refused, and the object-name grammar.

use thiserror::Error;

use super::*;

/// Why a change or a configuration was refused. Messages name the object.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    /// A named object does not exist.
    #[error("{kind} {name} does not exist{context}")]
    NotFound {
        /// `disk group`, `volume`, `plex`, `disk`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// Where it was looked for, e.g. ` in disk group dg1` (may be empty).
        context: String,
    },
    /// An object of that name or id exists already.
    #[error("{0}")]
    Exists(String),
    /// A shared group was requested where a private one of that name exists (or the
    /// reverse); the slaves' check.
    #[error("disk group {name} exists as a {existing} disk group")]
    DgExistsOtherKind {
        /// Group name.
        name: String,
        /// `private` or `shared`.
        existing: &'static str,
    },
    /// The change would detach or remove the last ACTIVE plex of a volume.
    #[error("plex {plex}: cannot {action} the last ACTIVE plex of volume {volume}")]
    LastActivePlex {
        /// Volume.
        volume: String,
        /// Plex.
        plex: String,
        /// `detach`, `remove`, `set STALE`...
        action: String,
    },
    /// An object is in use.
    #[error("{0}")]
    InUse(String),
    /// The layout cannot be placed on the group's free space.
    #[error(transparent)]
    NoSpace(#[from] AllocError),
    /// Anything else that is malformed (bad name, zero size, bad state transition,
    /// inconsistent configuration).
    #[error("{0}")]
    Invalid(String),
}

pub(super) fn not_found(kind: &'static str, name: &str, context: String) -> ConfigError {
    ConfigError::NotFound {
        kind,
        name: name.to_string(),
        context,
    }
}

/// Checks an object name: 1..=31 bytes of `[A-Za-z0-9._-]`, starting with a letter or
/// digit.
pub fn validate_name(kind: &str, name: &str) -> Result<(), ConfigError> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let ok_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > MAX_NAME_BYTES || !ok_chars || !ok_start {
        return Err(ConfigError::Invalid(format!(
            "{kind} name {name:?} is invalid: use 1 to {MAX_NAME_BYTES} letters, digits, '.', '_' or '-', starting with a letter or digit"
        )));
    }
    Ok(())
}
