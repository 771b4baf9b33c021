//! A takeover's wait off the driver's path. `dg import --clear-owner` of a group whose
//! labels name another owner writes the labels naming this node, then must wait out
//! the old owner's private-group lease ([`owner_lease::takeover_wait_ms`], 5.45 s by
//! default) before this node's data plane serves the group: a frozen or cut-off
//! owner's data plane may write it until then. The driver does not sleep through
//! that wait: the import's job is answered at once with nothing for the core (the
//! change stays in progress there, so no other private change runs), the driver
//! goes on with the cluster's jobs (a shared transaction's kernel phase on this node
//! no longer waits seconds behind a takeover), and once the wait is over and no
//! shared layout is staged in the data plane it serves the group (staged with the
//! shared groups the data plane holds then, committed) and answers the core late
//! ([`LATE`]).
//!
//! Until it is served the group is neither in the driver's private groups (every
//! shared prepare, load or reconnection stages without it) nor checked by the
//! private-group lease thread. A kill during the wait leaves the group's labels
//! naming this node and its open record set: the next start holds it back for one
//! wait (`private::wait_before_serving`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::core::RequestId;
use crate::model::{Change, ClusterConfig, DiskGroupConfig};

/// The sequence number of a driver answer to no job: the late half of a job
/// answered before (the main loop passes it to the core without the pipeline).
pub const LATE: u64 = u64::MAX;

/// A takeover import with its labels written, waiting to be served.
pub struct Deferred {
    /// The core's request.
    pub request: RequestId,
    /// The import.
    pub change: Change,
    /// The private groups after it.
    pub after: ClusterConfig,
    /// When the old owner's lease is out for sure.
    pub until: Instant,
}

/// The driver's takeover waiting to be served, and the shared groups the data plane
/// holds (what the takeover is staged beside when it is served).
#[derive(Default)]
pub struct Takeover {
    pending: Option<Deferred>,
    /// The shared groups of the last load, committed prepare or private change.
    shared: Vec<Arc<DiskGroupConfig>>,
    /// The shared groups of a prepare staged and not yet committed or aborted.
    staged: Option<Vec<Arc<DiskGroupConfig>>>,
}

impl Takeover {
    /// A takeover starts its wait (the core runs one private change at a time).
    pub fn defer(&mut self, d: Deferred) {
        debug_assert!(self.pending.is_none(), "one private change at a time");
        self.pending = Some(d);
    }

    /// The takeover to serve now: its wait is over and no shared layout is staged
    /// (serving stages the whole layout, which would drop a staged one).
    pub fn due(&mut self, now: Instant) -> Option<Deferred> {
        let ready = self
            .pending
            .as_ref()
            .is_some_and(|d| now >= d.until && self.staged.is_none());
        ready.then(|| self.pending.take()).flatten()
    }

    /// How long the driver may wait for a job before a takeover is due (`max` when
    /// none is, or one is held by a staged layout: the commit or abort comes as a job).
    pub fn wait(&self, now: Instant, max: Duration) -> Duration {
        match &self.pending {
            Some(d) if self.staged.is_none() => d.until.saturating_duration_since(now).min(max),
            _ => max,
        }
    }

    /// The shared groups the data plane holds.
    pub fn shared(&self) -> Vec<Arc<DiskGroupConfig>> {
        self.shared.clone()
    }

    /// A shared transaction's layout `shared` was staged.
    pub fn prepared(&mut self, shared: &[Arc<DiskGroupConfig>]) {
        self.staged = Some(shared.to_vec());
    }

    /// The staged layout was committed.
    pub fn committed(&mut self) {
        if let Some(s) = self.staged.take() {
            self.shared = s;
        }
    }

    /// The staged layout was dropped.
    pub fn aborted(&mut self) {
        self.staged = None;
    }

    /// The data plane was given `shared` whole (a load, a private change, a
    /// leave), nothing staged.
    pub fn loaded(&mut self, shared: &[Arc<DiskGroupConfig>]) {
        self.shared = shared.to_vec();
        self.staged = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deferred(until: Instant) -> Deferred {
        Deferred {
            request: RequestId(7),
            change: Change::DgDeport {
                dg: "dgp".into(),
                force: false,
            },
            after: ClusterConfig::default(),
            until,
        }
    }

    #[test]
    fn a_takeover_is_due_after_its_wait_and_not_while_a_layout_is_staged() {
        let t0 = Instant::now();
        let wait = Duration::from_millis(5450);
        let mut t = Takeover::default();
        assert_eq!(t.wait(t0, Duration::from_secs(1)), Duration::from_secs(1));
        t.defer(deferred(t0 + wait));
        assert_eq!(t.wait(t0, Duration::from_secs(10)), wait);
        assert!(t.due(t0).is_none(), "due before its wait is over");
        t.prepared(&[]);
        assert!(
            t.due(t0 + wait).is_none(),
            "served while a shared layout is staged"
        );
        assert_eq!(
            t.wait(t0 + wait, Duration::from_secs(1)),
            Duration::from_secs(1),
            "a held takeover waits for the commit's job, not its deadline"
        );
        t.committed();
        let d = t.due(t0 + wait).expect("due once the layout is committed");
        assert_eq!(d.request, RequestId(7));
        assert!(t.due(t0 + wait).is_none(), "served once only");
    }

    #[test]
    fn the_shared_groups_held_follow_commits_not_aborted_prepares() {
        let g = |name: &str| {
            Arc::new(DiskGroupConfig {
                name: name.into(),
                id: name.into(),
                shared: true,
                owner_id: String::new(),
                seq: 1,
                disks: Vec::new(),
                volumes: Vec::new(),
                open_nodes: Vec::new(),
                detach_policy: Default::default(),
            })
        };
        let names =
            |t: &Takeover| -> Vec<String> { t.shared().iter().map(|g| g.name.clone()).collect() };
        let mut t = Takeover::default();
        t.loaded(&[g("a")]);
        t.prepared(&[g("a"), g("b")]);
        assert_eq!(names(&t), ["a"], "a staged layout is not held yet");
        t.aborted();
        t.committed();
        assert_eq!(names(&t), ["a"], "an aborted layout is never held");
        t.prepared(&[g("c")]);
        t.committed();
        assert_eq!(names(&t), ["c"]);
    }
}
