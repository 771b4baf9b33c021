//! The operator's word that a shared disk is gone for good, kept across the
//! abdications of the node that forms the cluster (docs/OPERATIONS.md, "A disk that
//! is gone for good"; docs/PROTOCOL.md, "Joining").
//!
//! A joiner must find every disk of the master's shared groups (but those recorded
//! failed). After a full stop
//! with a disk that no node finds any more, the node that forms reads the groups
//! without it, but no other node joins, so the forming node's first lease runs out
//! and it abdicates, forms again, and so on. A change that records the disk failed
//! ([`ConfigModel::disks_given_up`]) given to that node is the operator's word to
//! go on without it: while the change waits in the master's queue, join offers do
//! not ask for the disk. Its wait must outlive the abdications, so instead of
//! failing with the queue it is held here (at most one, for at most
//! [`GIVEN_UP_WAIT_MS`]) and handed in again when the node is next a member: queued
//! when it forms, forwarded to the master when it joined another's view.

use super::*;

/// How long a change that gives a disk up waits for a majority at most before it
/// is answered with why there is none.
pub const GIVEN_UP_WAIT_MS: u64 = 60_000;

/// A change that gives disks up, held while this node has no majority.
#[derive(Debug)]
pub(super) struct HeldWord<M: ConfigModel> {
    request: RequestId,
    change: M::Change,
    until_ms: u64,
}

impl<M: ConfigModel> Node<M> {
    /// Holds `change` (asked of this node as `request`) when it gives disks up and
    /// no other is held: a master that abdicates keeps it instead of failing it.
    /// False when it is not held (the caller answers it).
    pub(super) fn hold_given_up(&mut self, request: RequestId, change: M::Change) -> bool {
        if self.held_word.is_some() || M::disks_given_up(&change).is_empty() {
            return false;
        }
        let line = format!(
            "node {}: holding the change that gives disk(s) {} up until this node is a member again (at most {} s)",
            self.name(self.cfg.me),
            M::disks_given_up(&change).join(", "),
            GIVEN_UP_WAIT_MS / 1000
        );
        self.log(log::Level::Warn, line);
        self.held_word = Some(HeldWord {
            request,
            change,
            until_ms: self.clock_ms + GIVEN_UP_WAIT_MS,
        });
        true
    }

    /// The disks the changes waiting in this master's queue give up (its join
    /// offers leave them out).
    pub(super) fn queued_given_up(&self) -> Vec<String> {
        self.master
            .iter()
            .flat_map(|ms| &ms.queue)
            .filter_map(|(_, req)| match req {
                Request::Change(c) => Some(M::disks_given_up(c)),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// What `cluster status` says of the operator's word on this node: the disks
    /// its join offers leave out while a change giving them up waits in its queue,
    /// or the change it holds until it is a member again.
    pub(super) fn given_up_status(&self, now_ms: u64) -> Option<String> {
        if let Some(word) = &self.held_word {
            return Some(format!(
                "holding the change that gives disk(s) {} up until this node is a member ({} s left)",
                M::disks_given_up(&word.change).join(", "),
                word.until_ms.saturating_sub(now_ms).div_ceil(1000)
            ));
        }
        let queued = self.queued_given_up();
        (!queued.is_empty()).then(|| {
            format!(
                "join offers leave disk(s) {} out: a queued change records them failed",
                queued.join(", ")
            )
        })
    }

    /// Hands the held change in again once this node is a member (queued when it
    /// is the master, forwarded otherwise); answers it with why there is no
    /// majority when its wait is over.
    pub(super) fn release_given_up(&mut self, now_ms: u64) {
        let Some(word) = self.held_word.as_ref() else {
            return;
        };
        if matches!(self.state, State::Member) {
            let Some(word) = self.held_word.take() else {
                return;
            };
            self.on_client_request(now_ms, word.request, Request::Change(word.change));
        } else if now_ms >= word.until_ms {
            let Some(word) = self.held_word.take() else {
                return;
            };
            let me = self.me_name();
            let e = format!(
                "{}; the change waited {} s for one and was not applied",
                self.no_quorum_reason(now_ms),
                GIVEN_UP_WAIT_MS / 1000
            );
            self.reply(
                word.request,
                Err(RequestError::new(ErrorKind::NoQuorum, me, e)),
            );
        }
    }
}
