//! The local detach policy's rule, on the master (docs/PROTOCOL.md, "Detach
//! policies"): pure bookkeeping, no I/O.
//!
//! Under the global policy a node's report of a failed plex write detaches the plex
//! cluster-wide at once. Under the local policy the reporting node already failed
//! the write (EIO to its hosts, which use another path), so the master detaches the
//! plex (STALE on every node) only once *every* member of the view has reported
//! failing it. Until then each report makes the plex SYNCING over the failed ranges
//! (the write reached the other plexes, so those blocks may differ): reads avoid the
//! plex until the copy is done.
//!
//! The master keeps, per plex, the set of members that reported it in the current
//! view. The sets are cleared on a view change (a member that left no longer counts,
//! a new member has not failed yet), and a plex's set when the plex is detached or a
//! report finds it ACTIVE (the earlier failures were repaired: a new episode). At
//! most [`MAX_FAILING_PLEXES`] plexes are tracked; a report past that is refused
//! (the node's next failed write reports again).

use std::collections::{BTreeMap, BTreeSet};

use super::NodeId;

/// Plexes the master tracks failing nodes for at once (local detach policy).
pub const MAX_FAILING_PLEXES: usize = 1024;

/// Failed byte ranges one report carries at most (a node coalesces more).
pub const MAX_REPORTED_RANGES: usize = 64;

/// What the master does with one local-policy report of a failed plex write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalDecision {
    /// Every member of the view failed the plex: detach it cluster-wide (STALE).
    Detach,
    /// Some member still writes the plex: resynchronise the failed ranges.
    Resync,
    /// [`MAX_FAILING_PLEXES`] plexes are tracked already: refuse the report.
    Full,
}

/// The members of the current view that failed each plex (local detach policy).
#[derive(Clone, Debug, Default)]
pub struct FailingPlexes {
    /// The view the sets belong to.
    view: u64,
    /// (volume, plex) → members that reported a failed write on it.
    failing: BTreeMap<(String, String), BTreeSet<NodeId>>,
}

impl FailingPlexes {
    /// Records that `node` failed a write on `plex` of `volume` in view `view` (with
    /// `members`, sorted) and decides. A new view forgets the older view's reports.
    pub fn report(
        &mut self,
        view: u64,
        members: &[NodeId],
        volume: &str,
        plex: &str,
        node: NodeId,
    ) -> LocalDecision {
        self.set_view(view);
        let key = (volume.to_string(), plex.to_string());
        if !self.failing.contains_key(&key) && self.failing.len() >= MAX_FAILING_PLEXES {
            return LocalDecision::Full;
        }
        let set = self.failing.entry(key).or_default();
        if members.contains(&node) {
            set.insert(node);
        }
        if !members.is_empty() && members.iter().all(|m| set.contains(m)) {
            LocalDecision::Detach
        } else {
            LocalDecision::Resync
        }
    }

    /// Forgets every report when the view is not `view` any more.
    pub fn set_view(&mut self, view: u64) {
        if self.view != view {
            self.view = view;
            self.failing.clear();
        }
    }

    /// Forgets the reports of one plex (it was detached or removed).
    pub fn forget(&mut self, volume: &str, plex: &str) {
        self.failing.remove(&(volume.to_string(), plex.to_string()));
    }

    /// The members that reported `plex` of `volume` in the current view.
    pub fn failing(&self, volume: &str, plex: &str) -> Vec<NodeId> {
        self.failing
            .get(&(volume.to_string(), plex.to_string()))
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Plexes tracked.
    pub fn len(&self) -> usize {
        self.failing.len()
    }

    /// No plex tracked.
    pub fn is_empty(&self) -> bool {
        self.failing.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: NodeId = 1;
    const B: NodeId = 2;
    const C: NodeId = 3;

    #[test]
    fn detaches_only_once_every_member_failed() {
        let mut f = FailingPlexes::default();
        let m = [A, B, C];
        assert_eq!(f.report(5, &m, "v", "p", A), LocalDecision::Resync);
        // The same node again does not count twice.
        assert_eq!(f.report(5, &m, "v", "p", A), LocalDecision::Resync);
        assert_eq!(f.report(5, &m, "v", "p", B), LocalDecision::Resync);
        // Another plex is counted apart.
        assert_eq!(f.report(5, &m, "v", "q", C), LocalDecision::Resync);
        assert_eq!(f.report(5, &m, "v", "p", C), LocalDecision::Detach);
        assert_eq!(f.failing("v", "p"), vec![A, B, C]);
        f.forget("v", "p");
        assert_eq!(f.failing("v", "p"), Vec::<NodeId>::new());
        assert_eq!(f.len(), 1);
    }

    #[test]
    fn a_view_change_forgets_the_reports() {
        let mut f = FailingPlexes::default();
        assert_eq!(f.report(5, &[A, B], "v", "p", A), LocalDecision::Resync);
        // B's report in a later view: A's failure of view 5 no longer counts.
        assert_eq!(f.report(6, &[A, B], "v", "p", B), LocalDecision::Resync);
        assert_eq!(f.failing("v", "p"), vec![B]);
        // A member that left: the remaining members decide.
        assert_eq!(f.report(7, &[B], "v", "p", B), LocalDecision::Detach);
    }

    #[test]
    fn a_non_member_report_never_detaches() {
        let mut f = FailingPlexes::default();
        assert_eq!(f.report(5, &[A, B], "v", "p", C), LocalDecision::Resync);
        assert!(f.failing("v", "p").is_empty());
        assert_eq!(f.report(5, &[], "v", "p", A), LocalDecision::Resync);
    }

    #[test]
    fn the_tracked_plexes_are_bounded() {
        let mut f = FailingPlexes::default();
        for i in 0..MAX_FAILING_PLEXES {
            let p = format!("p{i}");
            assert_eq!(f.report(1, &[A, B], "v", &p, A), LocalDecision::Resync);
        }
        assert_eq!(f.report(1, &[A, B], "v", "extra", A), LocalDecision::Full);
        // A plex already tracked still counts.
        assert_eq!(f.report(1, &[A, B], "v", "p0", B), LocalDecision::Detach);
        assert_eq!(f.len(), MAX_FAILING_PLEXES);
    }
}
