//! The configuration model the protocol core is generic over.

use std::fmt::Debug;

use super::RequestError;

/// A disk group configuration database, as far as the protocol needs to know it.
///
/// The core never looks inside a configuration: it validates changes through this
/// trait, carries configurations and changes between nodes as the bytes `encode`
/// produces, and hands them to the driver in actions (stage, commit, write to disk).
pub trait ConfigModel: Clone + Eq + Debug + Default {
    /// One configuration change (create a disk group, add a volume, detach a plex...).
    type Change: Clone + Debug + PartialEq;

    /// Sequence number; every committed change increments it by one.
    fn seq(&self) -> u64;

    /// Validates `change` against this configuration and returns the configuration
    /// after it, whose `seq()` is `self.seq() + 1`. The error says what is wrong, e.g.
    /// `disk group dg1 already exists`, and its kind (the core names the node).
    fn validate_and_apply(&self, change: &Self::Change) -> Result<Self, RequestError>;

    /// The disks of the shared disk groups: a joiner must reach every one.
    fn shared_disks(&self) -> Vec<String>;

    /// The change that detaches `plex` of `volume` after an I/O error (global detach
    /// policy). `Ok(None)`: nothing to do (already detached). An error refuses the
    /// detach, e.g. because it is the volume's last ACTIVE plex.
    fn detach_plex(&self, volume: &str, plex: &str) -> Result<Option<Self::Change>, RequestError>;

    /// Serialises the configuration.
    fn encode(&self) -> Vec<u8>;

    /// Parses a configuration; malformed input is an error.
    fn decode(bytes: &[u8]) -> Result<Self, String>;

    /// Serialises a change.
    fn encode_change(change: &Self::Change) -> Vec<u8>;

    /// Parses a change; malformed input is an error.
    fn decode_change(bytes: &[u8]) -> Result<Self::Change, String>;
}
