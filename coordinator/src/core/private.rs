//! Private disk-group changes: a node's own groups, changed on that node alone, in an
//! order this core decides so that neither they nor the cluster's shared transactions
//! undo the other in the node's one data plane.
//!
//! Every kernel phase stages the node's whole layout (shared and private groups), so:
//! - one private change runs at a time (at most [`MAX_QUEUED_PRIVATE`] wait), each
//!   validated against the private groups the one before left;
//! - none starts while a shared transaction is in progress on this node (from its
//!   local check to its commit or abort) or its layout is staged here (a
//!   `KernelPrepare` with no `KernelCommit`, `KernelAbort` or `LeaveCluster` since):
//!   a private change's own prepare would drop the staged shared layout, and the
//!   cluster's commit would then commit nothing here;
//! - a shared change's local check on this node is refused when its groups and the
//!   private groups (as the last private change left them, and as the one in
//!   progress would leave them) would share a disk group name or a disk, and a
//!   private change is refused when it would share one with the shared groups of
//!   this node's data plane, as its last load or shared commit left them
//!   ([`ConfigModel::new_private_conflict`]): with the rule above, a
//!   shared change between its local check and its prepare and a private change
//!   can no longer both take one disk;
//! - the driver carries out [`Action::PrivateChange`] as one job (checks, stage of
//!   the shared groups given and the private groups after, write of the private
//!   groups' disks, commit) and answers [`Event::PrivateDone`]; it keeps the private
//!   groups it last committed and stages those with every later shared prepare,
//!   load, leave and reconnection, so a shared job queued behind a private change
//!   stages what that change left.
//!
//! Private changes come in as [`Event::ClientRequest`]s the model calls private
//! ([`ConfigModel::is_private`]) and are answered with [`Action::Reply`].

use std::collections::VecDeque;

use super::*;

/// Private changes waiting for the one in progress, at most; more are refused as
/// busy.
pub const MAX_QUEUED_PRIVATE: usize = 64;

/// The private groups of this node and the changes to them.
#[derive(Debug)]
pub(super) struct Private<M: ConfigModel> {
    /// The groups as the last committed private change left them (what this node's
    /// data plane serves of them).
    config: M::Private,
    /// Changes waiting, in arrival order.
    queue: VecDeque<(RequestId, M::Change)>,
    /// The change with the driver, and the groups after it.
    running: Option<(RequestId, M::Private)>,
    /// A shared transaction whose layout is staged in the data plane, and its
    /// configuration.
    staged: Option<(TxnId, M)>,
    /// The shared groups as the kernel actions this core asked for leave them in
    /// the data plane (the last load, or the last staged layout committed): what a
    /// private change stages again. Not the committed configuration, which a join
    /// or a takeover sets only once its load is done: a private change queued
    /// behind the load would stage the shared groups from before it.
    shared: M,
}

impl<M: ConfigModel> Default for Private<M> {
    fn default() -> Self {
        Private {
            config: M::Private::default(),
            queue: VecDeque::new(),
            running: None,
            staged: None,
            shared: M::default(),
        }
    }
}

impl<M: ConfigModel> Node<M> {
    /// The private groups as the last committed private change left them.
    pub fn private(&self) -> &M::Private {
        &self.private.config
    }

    /// Sets the private groups this node's disks hold at its start (the driver
    /// reads them before feeding any event). Ignored once a private change ran.
    pub fn load_private(&mut self, config: M::Private) {
        if self.private.running.is_none() && self.private.queue.is_empty() {
            self.private.config = config;
        }
    }

    /// Private changes waiting or in progress.
    pub fn private_pending(&self) -> usize {
        self.private.queue.len() + usize::from(self.private.running.is_some())
    }

    /// Whether a private change is with the driver.
    pub(super) fn private_running(&self) -> bool {
        self.private.running.is_some()
    }

    /// A client asks for a change of this node's private groups.
    pub(super) fn on_private_request(&mut self, request: RequestId, change: M::Change) {
        let me = self.me_name();
        let refused = if self.stopping {
            Some(format!("node {me}: shutting down"))
        } else if self.private.queue.len() >= MAX_QUEUED_PRIVATE {
            Some(format!(
                "node {me}: {MAX_QUEUED_PRIVATE} private changes are waiting already; retry"
            ))
        } else {
            None
        };
        if let Some(e) = refused {
            log::warn!("{e}");
            let result = Err(RequestError::new(ErrorKind::Busy, me, e));
            self.out.push(Action::Reply { request, result });
            return;
        }
        self.private.queue.push_back((request, change));
    }

    /// The driver ran the private change `request`.
    pub(super) fn on_private_done(&mut self, request: RequestId, result: Result<(), RequestError>) {
        let Some((running, after)) = self.private.running.take() else {
            return;
        };
        if running != request {
            self.private.running = Some((running, after));
            return;
        }
        if result.is_ok() {
            self.private.config = after;
        }
        self.out.push(Action::Reply { request, result });
    }

    /// The shared groups as the kernel actions this core asked for leave them in the
    /// data plane (the last load or shared commit; none after leaving): what a
    /// reconnected data plane is loaded with.
    pub fn data_plane_shared(&self) -> &M {
        &self.private.shared
    }

    /// After each event: notes whether this step staged a shared layout or ended
    /// one, then starts the next private change if none runs and no shared
    /// transaction is in progress or staged here. Its action comes after the
    /// step's kernel actions, so the driver runs it after them.
    pub(super) fn private_poll(&mut self) {
        for a in &self.out {
            match a {
                Action::KernelPrepare { txn, config } => {
                    self.private.staged = Some((*txn, config.clone()))
                }
                Action::KernelCommit { txn } => {
                    if let Some((t, config)) = self.private.staged.take() {
                        if t == *txn {
                            self.private.shared = config;
                        }
                    }
                }
                Action::KernelLoad { config } => self.private.shared = config.clone(),
                Action::KernelAbort { .. } => self.private.staged = None,
                Action::LeaveCluster { .. } => {
                    // The driver's leave keeps only the private groups.
                    self.private.staged = None;
                    self.private.shared = M::default();
                }
                _ => {}
            }
        }
        while self.private.running.is_none()
            && self.private.staged.is_none()
            && !self.txn_in_progress()
        {
            let Some((request, change)) = self.private.queue.pop_front() else {
                return;
            };
            let me = self.me_name();
            let after = M::apply_private(&self.private.config, &change)
                .map_err(|e| e.on(&me))
                .and_then(|after| {
                    let shared = &self.private.shared;
                    match shared.new_private_conflict(&after, shared, &self.private.config) {
                        Some(e) => Err(RequestError::new(
                            ErrorKind::Exists,
                            me.clone(),
                            format!("node {me}: {e} in the cluster's configuration"),
                        )),
                        None => Ok(after),
                    }
                });
            match after {
                Err(e) => {
                    log::warn!("{e}");
                    self.out.push(Action::Reply {
                        request,
                        result: Err(e),
                    });
                }
                Ok(after) => {
                    self.out.push(Action::PrivateChange {
                        request,
                        change,
                        before: self.private.config.clone(),
                        after: after.clone(),
                        shared: self.private.shared.clone(),
                    });
                    self.private.running = Some((request, after));
                }
            }
        }
    }

    /// A shared transaction's local check passed on this node: it is refused all the
    /// same when its groups would share a disk group name or a disk with the private
    /// groups, as the last private change left them or as the one in progress would.
    pub(super) fn private_check(&self, txn: TxnId) -> Result<(), RequestError> {
        let slave = self
            .slave_txn
            .as_ref()
            .filter(|s| s.id == txn)
            .map(|s| &s.new_config);
        let master = self
            .master
            .as_ref()
            .and_then(|m| m.txn.as_ref())
            .filter(|t| t.id == txn)
            .map(|t| &t.new_config);
        let Some(config) = slave.or(master) else {
            return Ok(());
        };
        let committed = &self.private.shared;
        let running = self.private.running.as_ref().map(|(_, after)| after);
        for private in std::iter::once(&self.private.config).chain(running) {
            if let Some(e) = config.new_private_conflict(private, committed, private) {
                return Err(RequestError::unplaced(ErrorKind::Exists, e));
            }
        }
        Ok(())
    }

    /// Refuses the private changes still waiting (a clean stop).
    pub(super) fn refuse_queued_private(&mut self) {
        let me = self.me_name();
        for (request, _) in std::mem::take(&mut self.private.queue) {
            let e = format!("node {me}: shutting down");
            let result = Err(RequestError::new(ErrorKind::Busy, me.clone(), e));
            self.out.push(Action::Reply { request, result });
        }
    }
}
