//! The kernel interface's server side: the Cap'n Proto API a coordinator (or an
//! administrator's tool) uses to drive a `plexd-target` over a Unix socket. The schema
//! is `schema/kernel.capnp` (crate `plexd_proto`, module `kernel_capnp`); the contract
//! is written down in `docs/KERNEL_INTERFACE.md`. The client, the wire types, their
//! Cap'n Proto conversions and the typed errors are the crate `plexd-target-api`
//! (re-exported here, so `plexd_target::api::KernelClient` still works).
//!
//! - [`service`]: the operations in plain Rust ([`KernelService`]), shared by the RPC
//!   server and the standalone configuration loader. Everything blocking lives here.
//! - [`server`]: the RPC server: one control thread, a `smol::LocalExecutor`, one
//!   `RpcSystem` per connection; blocking target calls run on `smol::unblock`.
//! - [`process`]: a `plexd-target` child process for tests (kill and reap on drop).
//! - `nvmf`: the NVMe-oF/TCP service operations.
//!
//! Failures of the target travel as data (`error :Error` in the results), not as
//! Cap'n Proto exceptions: [`ApiError`] carries the [`ErrorCode`], the object and the
//! reason, and its `Display` is the target's own error text ([`TargetError`]'s).

mod nvmf;
pub mod process;
pub mod server;
pub mod service;

pub use plexd_target_api::client::{self, ClientError, KernelClient, Subscription};
pub use plexd_target_api::{
    ApiError, BdevKind, BdevRequest, ErrorCode, Injection, IoResult, TargetInfo, MAX_IO_BYTES,
};
pub use server::{clear_stale_socket, ServerHandle, MAX_CONNECTIONS};
pub use service::{DiagIo, KernelService};

use crate::target::TargetError;

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
