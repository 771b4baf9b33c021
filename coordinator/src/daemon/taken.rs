//! Private groups another node took over (`dg import --clear-owner` elsewhere while
//! this node was frozen or cut off): dropped from this node so that its other private
//! groups are served again.
//!
//! The private-group lease thread ([`owner_lease`]) stops renewing the data plane's
//! private-group lease as soon as the labels of one of this node's private groups
//! name another owner, so every private volume here is fenced within one lease. On
//! each tick the main loop asks for each such group still in this node's private
//! configuration to be dropped: an internal `dg deport --force` of it, which the
//! core orders like any private change and the driver carries out without writing
//! the disks (they are the new owner's now) and without the taken-over refusal. The
//! data plane stops serving the group's volumes at that change's commit; only then
//! does the lease thread check the remaining groups alone and renew the lease again.
//! A drop that fails (the data plane refused the commit) leaves the group held and
//! every private volume fenced, and is asked again after [`RETRY_DROP`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::*;

/// How long after a failed drop of a taken-over group the next one is asked.
pub const RETRY_DROP: Duration = Duration::from_secs(5);

/// The groups dropped (or being dropped) because another node took them over.
#[derive(Default)]
pub(super) struct Taken {
    /// Group → its new owner: dropped by this start.
    dropped: BTreeMap<String, String>,
    /// Group → when a drop may be asked again (after a failure).
    retry_at: BTreeMap<String, Instant>,
    /// The internal requests in flight: request → (group, new owner).
    asked: BTreeMap<RequestId, (String, String)>,
}

impl Taken {
    /// Whether `request` is the drop of a taken-over group (the driver then writes
    /// nothing and skips the taken-over refusal).
    pub(super) fn is_drop(&self, request: RequestId) -> bool {
        self.asked.contains_key(&request)
    }

    /// Lines for `cluster status`'s failed disk groups: the groups dropped here.
    pub(super) fn lines(&self) -> impl Iterator<Item = String> + '_ {
        self.dropped.iter().map(|(g, owner)| {
            format!(
                "{g}: taken over by {owner} (its disks name it owner): dropped from this node, \
                 which serves its other private groups again"
            )
        })
    }
}

impl Daemon {
    /// Asks for each private group found taken over and still in this node's private
    /// configuration to be dropped (once at a time per group).
    pub(super) fn drop_taken_groups(&mut self) {
        if self.stopping {
            return;
        }
        let now = Instant::now();
        for (dg, owner) in self.owner.taken_all() {
            let asked = self.taken.asked.values().any(|(g, _)| *g == dg);
            let waiting = self.taken.retry_at.get(&dg).is_some_and(|t| now < *t);
            if asked || waiting || self.node.private().disk_group(&dg).is_none() {
                continue;
            }
            log::warn!(
                "node {}: private disk group {dg}: taken over by {owner}: dropping it from this \
                 node (nothing written to its disks) so that its other private groups are \
                 served again",
                self.name
            );
            let request = self.request_id();
            self.taken.asked.insert(request, (dg.clone(), owner));
            let change = Change::DgDeport { dg, force: true };
            self.feed(Event::ClientRequest { request, change });
        }
    }

    /// The core's answer to a drop this loop asked for; false if `request` is none.
    pub(super) fn on_drop_reply(
        &mut self,
        request: RequestId,
        result: &Result<(), RequestError>,
    ) -> bool {
        let Some((dg, owner)) = self.taken.asked.remove(&request) else {
            return false;
        };
        match result {
            Ok(()) => {
                log::warn!(
                    "node {}: private disk group {dg} (taken over by {owner}) dropped from this \
                     node: its other private groups are served again",
                    self.name
                );
                self.taken.retry_at.remove(&dg);
                self.taken.dropped.insert(dg, owner);
            }
            Err(e) => {
                log::error!(
                    "node {}: private disk group {dg} (taken over by {owner}) not dropped: {e}; \
                     this node's private volumes stay fenced; retrying in {} s",
                    self.name,
                    RETRY_DROP.as_secs()
                );
                self.taken.retry_at.insert(dg, Instant::now() + RETRY_DROP);
            }
        }
        true
    }
}
