//! The harness for multi-process tests: start real `plexd-target` and `plexd`
//! processes, reap them in a drop guard, wait on conditions with bounded deadlines,
//! write and verify data patterns, and check the cluster's invariants.
//!
//! docs/TESTING.md describes the suite; docs/OPERATIONS.md the interface it tests.

pub mod bins;
pub mod cluster;
pub mod corosync;
pub mod data;
pub mod invariants;
pub mod iscsi;
pub mod netns;
pub mod nvmf_host;
pub mod plex_disk;
pub mod proc;
pub mod wait;

pub use cluster::{disk_name, group, members, volume, Cluster, ClusterOpts, NODE_NAMES};
pub use data::Pattern;
pub use wait::{try_wait_until, wait_until};
