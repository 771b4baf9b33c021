//! plexd: the cluster coordinator.
pub mod alloc;
pub mod objects;
pub mod ondisk;
pub mod size;
