//! plexd's public protocol: the Cap'n Proto schemas in `schema/`, compiled by the
//! workspace's `build.rs`. Every other crate speaks through these modules.
//!
//! - [`kernel_capnp`]: coordinator → data plane (and the standalone target's management API).
//! - [`cluster_capnp`]: coordinator ↔ coordinator (membership, transactions).
//! - [`ctl_capnp`]: `plexctl` and RPC clients → any node.
//! - [`ondisk_capnp`]: the disk group configuration stored in the private region.
//! - [`size`]: sizes as people type and read them (one parser and formatter for
//!   `plexctl` and `plexd`).
//! - [`print`]: `plexctl print`'s JSON document and text tree, rendered from the ctl
//!   API's `PrintedConfig`.
//! - [`connection`]: the client side of a Cap'n Proto connection (plexctl's, the
//!   coordinator's, the kernel interface's client), and a runner for one on the
//!   calling thread without an I/O reactor.

#![allow(missing_docs, unused_qualifications)]

macro_rules! schema_mod {
    ($name:ident, $file:literal) => {
        #[allow(clippy::all, dead_code)]
        pub mod $name {
            include!(concat!(env!("OUT_DIR"), "/", $file));
        }
    };
}

schema_mod!(kernel_capnp, "kernel_capnp.rs");
schema_mod!(cluster_capnp, "cluster_capnp.rs");
schema_mod!(ctl_capnp, "ctl_capnp.rs");
schema_mod!(ondisk_capnp, "ondisk_capnp.rs");

pub mod connection;
pub mod print;
pub mod size;
