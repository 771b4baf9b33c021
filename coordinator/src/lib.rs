//! plexd: the cluster coordinator.
pub mod core;
pub mod daemon;
pub mod model;
pub mod ondisk;
pub mod sim;
pub use plexd_proto::size;
