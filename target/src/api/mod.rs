//! The kernel interface: the Cap'n Proto API a coordinator (or an administrator's
//! tool) uses to drive a `plexd-target` over a Unix socket. The schema is
//! `schema/kernel.capnp` (crate `plexd_proto`, module `kernel_capnp`); the contract is
//! written down in `docs/KERNEL_INTERFACE.md`.
//!
//! - [`service`]: the operations in plain Rust ([`KernelService`]), shared by the RPC
//!   server and the standalone configuration loader. Everything blocking lives here.
//! - [`server`]: the RPC server: one control thread, a `smol::LocalExecutor`, one
//!   `RpcSystem` per connection; blocking target calls run on `smol::unblock`.
//! - [`client`]: [`KernelClient`], a blocking client (its own connection thread) for
//!   the coordinator, tools and tests.
//! - [`process`]: a `plexd-target` child process for tests (kill and reap on drop).
//! - `convert`: Rust types ⇄ Cap'n Proto builders and readers.
//! - `nvmf`: the NVMe-oF/TCP calls (service operations and conversions).
//!
//! Failures of the target travel as data (`error :Error` in the results), not as
//! Cap'n Proto exceptions: [`ApiError`] carries the [`ErrorCode`], the object and the
//! reason, and its `Display` is the target's own error text.

pub mod client;
mod convert;
mod nvmf;
pub mod process;
pub mod server;
pub mod service;

pub use client::{ClientError, KernelClient};
pub use server::{clear_stale_socket, ServerHandle, MAX_CONNECTIONS};
pub use service::{
    BdevKind, BdevRequest, DiagIo, Injection, IoResult, KernelService, TargetInfo, MAX_IO_BYTES,
};

use crate::target::TargetError;

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
/// `Display` gives `<object>: <reason>`, the same text as the target's [`TargetError`].
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

impl From<&TargetError> for ApiError {
    fn from(e: &TargetError) -> ApiError {
        let (code, object, reason) = match e {
            TargetError::NotFound { kind, name } => (
                ErrorCode::NotFound,
                format!("{kind} {name}"),
                "not found".into(),
            ),
            TargetError::Exists { kind, name } => (
                ErrorCode::Exists,
                format!("{kind} {name}"),
                "already exists".into(),
            ),
            TargetError::InUse { kind, name, user } => (
                ErrorCode::InUse,
                format!("{kind} {name}"),
                format!("in use by {user}"),
            ),
            TargetError::Invalid { object, reason } => {
                (ErrorCode::Invalid, object.clone(), reason.clone())
            }
            TargetError::Timeout { object, reason } => {
                (ErrorCode::Timeout, object.clone(), reason.clone())
            }
            TargetError::Io { object, reason } => (ErrorCode::Io, object.clone(), reason.clone()),
        };
        ApiError {
            code,
            object,
            reason,
        }
    }
}

impl From<TargetError> for ApiError {
    fn from(e: TargetError) -> ApiError {
        ApiError::from(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_text_is_the_target_error_text() {
        let cases = [
            TargetError::NotFound {
                kind: "bdev",
                name: "m9".into(),
            },
            TargetError::Exists {
                kind: "volume",
                name: "v0".into(),
            },
            TargetError::InUse {
                kind: "bdev",
                name: "m0".into(),
                user: "volume v0".into(),
            },
            TargetError::invalid("volume v0", "needs 1..32 plexes, got 0"),
            TargetError::Timeout {
                object: "volume v0".into(),
                reason: "did not drain".into(),
            },
            TargetError::Io {
                object: "bdev u0".into(),
                reason: "No such file".into(),
            },
        ];
        for e in &cases {
            assert_eq!(ApiError::from(e).to_string(), e.to_string());
        }
        assert_eq!(ApiError::from(&cases[0]).code, ErrorCode::NotFound);
        assert_eq!(ApiError::from(&cases[2]).code, ErrorCode::InUse);
    }
}
