//! plexd: the cluster coordinator.
