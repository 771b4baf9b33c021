//! The configuration model the protocol core is generic over.

use std::fmt::Debug;

use super::{NodeId, RequestError};

/// A plex being brought back into its volume (SYNCING: it takes every new write, on
/// every node, and the master copies the rest to it chunk by chunk under fences).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SyncingPlex {
    /// Disk group.
    pub dg: String,
    /// Volume.
    pub volume: String,
    /// The SYNCING plex.
    pub plex: String,
    /// The volume's size.
    pub size_bytes: u64,
    /// The byte ranges `(offset, len)` still to copy, ascending and disjoint (a
    /// crashed node's dirty regions, `docs/PROTOCOL.md` "Node-crash recovery");
    /// empty: the whole plex.
    pub ranges: Vec<(u64, u64)>,
}

impl SyncingPlex {
    /// The ranges the resync copies, clipped to the volume, ascending, with
    /// overlapping and adjacent ones merged (one piece each): `ranges`, or the whole
    /// volume when there are none.
    pub fn copy_ranges(&self) -> Vec<(u64, u64)> {
        if self.ranges.is_empty() {
            return if self.size_bytes > 0 {
                vec![(0, self.size_bytes)]
            } else {
                Vec::new()
            };
        }
        let mut clipped: Vec<(u64, u64)> = self
            .ranges
            .iter()
            .filter(|(o, _)| *o < self.size_bytes)
            .map(|&(o, l)| (o, l.min(self.size_bytes - o)))
            .filter(|&(_, l)| l > 0)
            .collect();
        clipped.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(clipped.len());
        for (o, l) in clipped {
            match out.last_mut() {
                Some((po, pl)) if o <= *po + *pl => *pl = (*pl).max(o + l - *po),
                _ => out.push((o, l)),
            }
        }
        out
    }

    /// Bytes the resync copies ([`SyncingPlex::copy_ranges`]).
    pub fn bytes_to_copy(&self) -> u64 {
        self.copy_ranges().iter().map(|r| r.1).sum()
    }
}

/// One node's section of a shared volume's dirty region log, which the master reads
/// before it recovers that node's start ([`Action::ReadDirtyLogs`]).
///
/// [`Action::ReadDirtyLogs`]: super::Action::ReadDirtyLogs
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirtyLogSection {
    /// Disk group.
    pub dg: String,
    /// Volume.
    pub volume: String,
    /// The log's copies of the node's section, 1..=`MAX_LOG_COPIES`: the reader
    /// takes the union of their dirty regions (docs/PROTOCOL.md, "Node-crash
    /// recovery"); any copy unreadable is [`DirtyLogRead::Unreadable`].
    pub copies: Vec<SectionCopy>,
    /// The section's length (header and bitmap).
    pub len_bytes: u64,
    /// The log's id (a section whose header names another id is unused).
    pub log_id: u64,
}

/// One copy of a node's dirty region log section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SectionCopy {
    /// The disk (media name) holding this copy of the log.
    pub disk: String,
    /// Where the node's section starts on that disk's device.
    pub offset_bytes: u64,
}

/// What one section said ([`Event::DirtyLogsRead`]).
///
/// [`Event::DirtyLogsRead`]: super::Event::DirtyLogsRead
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirtyLogRead {
    /// The node issued no write under this log: nothing to resync.
    Unused,
    /// Its dirty regions (byte ranges of the volume, ascending; empty: none).
    Dirty(Vec<(u64, u64)>),
    /// The section could not be read or is cut short: resync the whole volume.
    Unreadable(String),
}

/// A disk group configuration database, as far as the protocol needs to know it.
///
/// The core never looks inside a configuration: it validates changes through this
/// trait, carries configurations and changes between nodes as the bytes `encode`
/// produces, and hands them to the driver in actions (stage, commit, write to disk).
pub trait ConfigModel: Clone + Eq + Debug + Default {
    /// One configuration change (create a disk group, add a volume, detach a plex...).
    type Change: Clone + Debug + PartialEq;

    /// A node's private disk groups: changed on that node alone, one change at a
    /// time, in the order the core decides (`core::private`); they never travel
    /// between nodes.
    type Private: Clone + Eq + Debug + Default;

    /// Sequence number; every committed change increments it by one.
    fn seq(&self) -> u64;

    /// Validates `change` against this configuration and returns the configuration
    /// after it, whose `seq()` is `self.seq() + 1`. The error says what is wrong, e.g.
    /// `disk group dg1 already exists`, and its kind (the core names the node).
    fn validate_and_apply(&self, change: &Self::Change) -> Result<Self, RequestError>;

    /// The disks of the shared disk groups: a joiner must reach every one.
    fn shared_disks(&self) -> Vec<String>;

    /// The disks `change` records as failed (which no node needs to find once it
    /// commits). While such a change waits at the master, its join offers do not
    /// ask joiners for them: the operator's word that a disk is gone for good lets
    /// a cluster form that its absence kept from a majority. None by default.
    fn disks_given_up(change: &Self::Change) -> Vec<String> {
        let _ = change;
        Vec::new()
    }

    /// The change that detaches `plex` of `volume` after an I/O error (global detach
    /// policy). `Ok(None)`: nothing to do (already detached). An error refuses the
    /// detach, e.g. because it is the volume's last ACTIVE plex.
    fn detach_plex(&self, volume: &str, plex: &str) -> Result<Option<Self::Change>, RequestError>;

    /// Whether the answer to `change` waits until every member's data plane
    /// applied its COMMIT ([`crate::core::Message::Applied`], at most
    /// `APPLIED_WAIT_MS`), not only the master's and the origin's. False by
    /// default.
    fn answer_after_applied(change: &Self::Change) -> bool {
        let _ = change;
        false
    }

    /// Whether a write error on a plex of `volume` follows the local detach policy
    /// (`core::detach`). False by default (the global policy).
    fn local_detach(&self, volume: &str) -> bool {
        let _ = volume;
        false
    }

    /// Whether `plex` of `volume` is ACTIVE (a plex error report on an ACTIVE plex
    /// starts a new episode of the local detach rule). False by default.
    fn plex_active(&self, volume: &str, plex: &str) -> bool {
        let _ = (volume, plex);
        false
    }

    /// The change that resynchronises `ranges` (byte offset, length) of `plex` of
    /// `volume` after a write failed on it on one node and reached the volume's other
    /// plexes (local detach policy). `Ok(None)`: nothing to do (the plex takes no
    /// writes, or already copies those ranges).
    fn diverged_plex(
        &self,
        volume: &str,
        plex: &str,
        ranges: &[(u64, u64)],
    ) -> Result<Option<Self::Change>, RequestError> {
        let _ = (volume, plex, ranges);
        Ok(None)
    }

    /// The SYNCING plexes of the shared disk groups, which the master resyncs
    /// (`core::resync`). None by default.
    fn syncing_plexes(&self) -> Vec<SyncingPlex> {
        Vec::new()
    }

    /// What became of `plex`, no longer SYNCING, for the end of its resync:
    /// `was detached (STALE)`, `was removed`, `was removed with its volume vol1`.
    /// None by default (the core then says it is no longer SYNCING).
    fn plex_fate(&self, plex: &SyncingPlex) -> Option<String> {
        let _ = plex;
        None
    }

    /// The change that makes `plex` ACTIVE once every chunk of it was copied under a
    /// fence. `Ok(None)`: nothing to do (it is no longer SYNCING).
    fn resync_done(&self, plex: &SyncingPlex) -> Result<Option<Self::Change>, RequestError> {
        let _ = plex;
        Ok(None)
    }

    /// Whether `change` changes a node's private groups `private` (it creates a
    /// private group, or names one of them) rather than the shared ones.
    fn is_private(private: &Self::Private, change: &Self::Change) -> bool;

    /// Validates a private change against `private` and returns the private groups
    /// after it. The error says what is wrong and its kind (the core names the node).
    fn apply_private(
        private: &Self::Private,
        change: &Self::Change,
    ) -> Result<Self::Private, RequestError>;

    /// Why the shared groups of this configuration and the private groups `private`
    /// cannot both be held by one node: one line per disk group name or disk both
    /// use, e.g. `disk group dg1 exists as a private disk group`; empty when they can.
    fn private_conflicts(&self, private: &Self::Private) -> Vec<String>;

    /// The conflicts ([`ConfigModel::private_conflicts`]) that shared groups `self`
    /// and private groups `private` have and `before_shared` and `before_private`
    /// did not: what a change of either makes. Older ones (a node that made a
    /// private group while out of the cluster, then joined one with a shared group
    /// on the same disk) are no reason to refuse every later change.
    fn new_private_conflict(
        &self,
        private: &Self::Private,
        before_shared: &Self,
        before_private: &Self::Private,
    ) -> Option<String> {
        let old = before_shared.private_conflicts(before_private);
        self.private_conflicts(private)
            .into_iter()
            .find(|c| !old.contains(c))
    }

    /// The open node starts `(node, incarnation)`: those that may have left shared
    /// mirrors divergent (`core::recovery`). None by default.
    fn open_nodes(&self) -> Vec<(NodeId, u64)> {
        Vec::new()
    }

    /// The change that records start `incarnation` of `node` open; None when there
    /// is nothing to record (already open, or nothing shared to write).
    fn node_open(&self, node: NodeId, incarnation: u64) -> Option<Self::Change> {
        let _ = (node, incarnation);
        None
    }

    /// The change that closes an open start after a clean stop; None when it is not open.
    fn node_close(&self, node: NodeId, incarnation: u64) -> Option<Self::Change> {
        let _ = (node, incarnation);
        None
    }

    /// The change that recovers the mirrors an open start may have left divergent
    /// (one readable plex per mirror, the others resynchronised) and closes it;
    /// None when it is not open. `logs`: what the start's dirty region log sections
    /// said ([`ConfigModel::dirty_logs`]); a volume with a log and no entry, or an
    /// unreadable one, is resynchronised whole, one whose section is unused or clean
    /// not at all, the others only in the dirty ranges.
    fn node_recover(
        &self,
        node: NodeId,
        incarnation: u64,
        logs: &[(DirtyLogSection, DirtyLogRead)],
    ) -> Option<Self::Change> {
        let _ = (node, incarnation, logs);
        None
    }

    /// The sections of `node` in the dirty region logs of the shared volumes that
    /// a recovery of that node would resynchronise (`core::recovery` reads them
    /// first). None by default.
    fn dirty_logs(&self, node: NodeId) -> Vec<DirtyLogSection> {
        let _ = node;
        Vec::new()
    }

    /// Whether the data plane of start `incarnation` of `node` may serve shared
    /// volumes under this configuration (it is open, or there is nothing to write).
    fn may_serve(&self, node: NodeId, incarnation: u64) -> bool {
        let _ = (node, incarnation);
        true
    }

    /// Serialises the configuration.
    fn encode(&self) -> Vec<u8>;

    /// Parses a configuration; malformed input is an error.
    fn decode(bytes: &[u8]) -> Result<Self, String>;

    /// Serialises a change.
    fn encode_change(change: &Self::Change) -> Vec<u8>;

    /// Parses a change; malformed input is an error.
    fn decode_change(bytes: &[u8]) -> Result<Self::Change, String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_ranges_clips_sorts_and_merges_adjacent_ranges() {
        let p = SyncingPlex {
            dg: "dg".into(),
            volume: "v".into(),
            plex: "v-02".into(),
            size_bytes: 100,
            ranges: vec![(40, 10), (10, 10), (20, 5), (22, 1), (90, 20), (120, 5)],
        };
        assert_eq!(p.copy_ranges(), vec![(10, 15), (40, 10), (90, 10)]);
        assert_eq!(p.bytes_to_copy(), 35);
    }
}
