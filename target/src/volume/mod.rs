//! Volumes: subdisk → plex (concat | stripe) → volume (mirrors), with lock-free quiesce.

/// Per-target state of the volume module.
#[derive(Default)]
pub struct Registry {}

impl Registry {
    /// The volume using bdev `name`, if any.
    pub fn user_of(&self, _name: &str) -> Option<String> {
        None
    }
}
