//! Private disk-group changes: one at a time on this node (validated against the
//! groups the one before left, checked, staged, written to the group's disks,
//! committed, all as one driver job), never while a shared transaction is staged here.

use super::*;

/// A private disk-group change and whom to answer.
pub(super) struct PrivateRequest {
    pub(super) change: Change,
    pub(super) origin: PrivateOrigin,
}

/// Who asked for a private change.
pub(super) enum PrivateOrigin {
    /// A ctl client.
    Client(smol::channel::Sender<CtlReply>),
    /// A plex I/O error (detach the plex, else fail its held writes).
    PlexError { volume: String, plex: String },
    /// The end of a resync (the plex becomes ACTIVE).
    ResyncDone { plex: String },
}

impl Daemon {
    /// Queues a change of a private disk group. They run one at a time, each as one
    /// driver job (validated against the groups the one before left, checked, staged
    /// in the data plane, written to the group's disks, committed — all on this node),
    /// never while a shared transaction is staged here ([`Daemon::next_private`]).
    pub(super) fn private_request(&mut self, change: Change, origin: PrivateOrigin) {
        let req = PrivateRequest { change, origin };
        if self.private_queue.len() >= MAX_QUEUED_PRIVATE {
            let e = self.err(format!(
                "disk group {}: {MAX_QUEUED_PRIVATE} private changes are waiting already; retry",
                req.change.dg_name()
            ));
            log::warn!("{e}");
            let e = RequestError::new(ErrorKind::Busy, self.name.clone(), e);
            self.private_answer(req, Err(e));
            return;
        }
        self.private_queue.push_back(req);
        self.next_private();
    }

    /// Starts the next private change unless one runs or a shared transaction is
    /// staged on this node: a private change's prepare stages this node's whole
    /// layout, which would drop the staged shared one (the cluster's commit would
    /// then commit nothing here, and this data plane would serve the layout the
    /// cluster replaced). It starts once the shared transaction's commit or abort
    /// is queued (the driver runs jobs in order).
    pub(super) fn next_private(&mut self) {
        while self.private_running.is_none() && self.staged.is_none() {
            let Some(req) = self.private_queue.pop_front() else {
                return;
            };
            let before = self.private.clone();
            let after = match crate::model::apply(&before, &req.change) {
                Ok(after) => after,
                Err(e) => {
                    let e = model::refusal(&e).on(&self.name);
                    self.private_answer(req, Err(e));
                    continue;
                }
            };
            let job = Job::Private {
                change: req.change.clone(),
                before,
                after: after.clone(),
                shared: self.node.config().groups.clone(),
                group: self.group(req.change.dg_name()).cloned(),
                txn: incarnation(),
            };
            self.submit(job);
            self.private_running = Some((req, after));
        }
    }

    /// The driver finished the private change in progress.
    pub(super) fn private_done(&mut self, result: Result<(), RequestError>) {
        let Some((req, after)) = self.private_running.take() else {
            return;
        };
        if result.is_ok() {
            self.private = after;
            self.after_config_change();
        }
        self.private_answer(req, result);
        self.next_private();
    }

    /// Tells whoever asked how a private change ended.
    pub(super) fn private_answer(&mut self, req: PrivateRequest, result: Result<(), RequestError>) {
        match req.origin {
            PrivateOrigin::Client(reply) => {
                let answer = match result {
                    Ok(()) => CtlReply::Changed(self.describe(&req.change)),
                    Err(e) => CtlReply::Done(Err(e)),
                };
                let _ = reply.try_send(answer);
            }
            PrivateOrigin::PlexError { volume, plex } => {
                if let Err(e) = result {
                    log::error!("node {}: cannot detach plex {plex} of volume {volume}: {e}; failing its held writes", self.name);
                    self.submit(Job::FailHeldWrites { volume });
                }
            }
            PrivateOrigin::ResyncDone { plex } => {
                if let Err(e) = result {
                    log::error!("node {}: resync of plex {plex}: {e}", self.name);
                }
            }
        }
    }
}
