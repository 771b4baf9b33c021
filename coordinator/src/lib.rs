//! plexd: the cluster coordinator.
pub mod alloc;
pub mod core;
pub mod daemon;
pub mod objects;
pub mod ondisk;
pub mod sim;
pub use plexd_proto::size;
