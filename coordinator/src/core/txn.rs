//! The volume reconfiguration transaction: request, check, kernel phase, commit,
//! reply; the master's and the slaves' halves, and request forwarding.

use super::*;
use std::collections::VecDeque;

/// Longest the master holds the answer to a change that waits for every
/// member's data plane ([`ConfigModel::answer_after_applied`]); after it the
/// answer goes out with a warning naming the nodes not heard from. Below the
/// data plane's 30 s bound on a reservation command waiting for the cluster.
pub const APPLIED_WAIT_MS: u64 = 20_000;
/// Answers held for [`Message::Applied`] at most; beyond it an answer goes out
/// at once (one transaction at a time makes more than one or two rare).
pub const MAX_APPLIED_WAITS: usize = 16;

/// A committed change's answer held until every member applied it.
#[derive(Debug)]
pub(super) struct AppliedWait {
    txn: TxnId,
    origin: Origin,
    /// Members (the master included) whose data plane has not applied it.
    waiting: BTreeSet<NodeId>,
    until_ms: u64,
}

/// A join the master is running.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ActiveJoin {
    pub(super) node: NodeId,
    pub(super) join: u64,
}

/// A read of the disks checking that a master's configuration is current before
/// its view's first majority counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MajorityCheck {
    /// The ready join (by number) whose node the check's wait covered: the join
    /// completes when the check passes.
    pub(super) join: Option<u64>,
}

/// What only the master keeps.
#[derive(Debug)]
pub(super) struct MasterState<M: ConfigModel> {
    pub(super) txn: Option<MasterTxn<M>>,
    /// Requests waiting for the transaction in progress (at most `MAX_QUEUED_REQUESTS`).
    pub(super) queue: VecDeque<(Origin, Request<M>)>,
    /// Nodes waiting to join (each at most once).
    pub(super) joins: VecDeque<NodeId>,
    pub(super) join: Option<ActiveJoin>,
    pub(super) next_txn: u64,
    pub(super) next_join: u64,
    /// Nodes that left the view → until when their leases may still hold.
    pub(super) fences: BTreeMap<NodeId, u64>,
    /// This master's configuration was found current on the disks since its view
    /// last lacked a majority (or it took over, which wrote them): until then it
    /// holds no lease (docs/PROTOCOL.md, "First majority").
    pub(super) majority_checked: bool,
    /// The active join's `JoinReady` came; it waits for that check.
    pub(super) ready_join: Option<u64>,
    /// The disks are being read for that check.
    pub(super) checking: Option<MajorityCheck>,
    /// Committed changes whose answer waits for the members' [`Message::Applied`]
    /// (at most [`MAX_APPLIED_WAITS`]).
    pub(super) applied: Vec<AppliedWait>,
}

impl<M: ConfigModel> MasterState<M> {
    pub(super) fn new() -> MasterState<M> {
        MasterState {
            txn: None,
            queue: VecDeque::new(),
            joins: VecDeque::new(),
            join: None,
            next_txn: 0,
            next_join: 0,
            fences: BTreeMap::new(),
            majority_checked: false,
            ready_join: None,
            checking: None,
            applied: Vec::new(),
        }
    }

    pub(super) fn is_idle(&self) -> bool {
        self.txn.is_none() && self.join.is_none()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Step 2: waiting for these nodes' local checks (the master's included).
    Checking { awaiting: BTreeSet<NodeId> },
    /// Step 3: waiting for these nodes' kernel phase (the master's included).
    Preparing { awaiting: BTreeSet<NodeId> },
    /// Step 4: COMMIT sent to the designated successor; waiting for its ack.
    SuccessorCommit { successor: NodeId },
    /// Step 4: the designated successor left before its ack came (at `since_ms`).
    /// It may have applied COMMIT and, on the other side of a partition, may complete
    /// the transaction as the next master; the master aborts it only once a majority
    /// has confirmed its lease since then (so no majority is granting the successor
    /// a takeover) and the successor's lease has surely run out. A master that loses
    /// its lease first answers 'outcome unknown' and leaves the layout staged.
    SuccessorLost { successor: NodeId, since_ms: u64 },
    /// Step 4: past the commit point, writing the disks.
    DiskWrite,
}

/// The master's record of the transaction in progress.
#[derive(Debug)]
pub(super) struct MasterTxn<M: ConfigModel> {
    pub(super) id: TxnId,
    origin: Origin,
    change: M::Change,
    pub(super) new_config: M,
    /// Slaves taking part (every member but the master, plus joiners let in).
    participants: BTreeSet<NodeId>,
    pub(super) phase: Phase,
    /// KernelPrepare was issued on the master.
    staged: bool,
    /// The slave COMMIT went to first (fixed when it is sent).
    successor: Option<NodeId>,
    /// Participants whose [`Message::Applied`] came before the disk write ended
    /// (the successor applies COMMIT first).
    applied: BTreeSet<NodeId>,
    /// When the current phase started (or a joiner was let in), for the reply
    /// timeout of the check and prepare phases.
    phase_since_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SlavePhase {
    Checking,
    Checked,
    Preparing,
    Prepared,
}

/// A slave's record of the transaction in progress.
#[derive(Debug)]
pub(super) struct SlaveTxn<M> {
    pub(super) id: TxnId,
    origin: Origin,
    pub(super) new_config: M,
    pub(super) phase: SlavePhase,
    /// KernelPrepare was issued: an abort must drop the staged layout.
    pub(super) staged: bool,
}

/// A request this node forwarded to the master.
#[derive(Clone, Copy, Debug)]
pub(super) struct Forward {
    /// This node applied the request's COMMIT.
    pub(super) committed: bool,
    /// When it was forwarded (an answer lost in a partition is given up on).
    pub(super) sent_ms: u64,
}

impl<M: ConfigModel> Node<M> {
    pub(super) fn me_name(&self) -> String {
        self.name(self.cfg.me)
    }

    pub(super) fn reply(&mut self, request: RequestId, result: Result<(), RequestError>) {
        if recovery::is_own(request) {
            return self.recovery_answer(request, result);
        }
        self.out.push(Action::Reply { request, result });
    }

    /// Step 1: a client request arrives at this node.
    pub(super) fn on_client_request(&mut self, now_ms: u64, request: RequestId, req: Request<M>) {
        let me = self.cfg.me;
        let me_name = self.me_name();
        if self.stopping {
            let err = format!("node {me_name}: shutting down");
            return self.reply(
                request,
                Err(RequestError::new(ErrorKind::Busy, me_name, err)),
            );
        }
        if self.is_master() {
            return self.master_enqueue(now_ms, Origin { node: me, request }, req);
        }
        // Between two of its views, a node that forms the cluster again and again
        // (no other node joins it) holds the operator's word too (`core::given_up`).
        if let (State::Discovering { .. } | State::Forming, Request::Change(c)) =
            (&self.state, &req)
        {
            if self.hold_given_up(request, c.clone()) {
                return;
            }
        }
        let (kind, err) = match (&self.state, &self.view) {
            (State::Member, Some(view)) => {
                let master = view.master;
                if self.suspected.contains(&master) {
                    (ErrorKind::NotMaster, format!(
                        "node {}: master node {} is gone and its successor has not taken over yet; retry shortly",
                        self.me_name(),
                        self.name(master)
                    ))
                } else if self.forwards.len() >= MAX_PENDING_FORWARDS || self.forwards.contains_key(&request) {
                    (ErrorKind::Busy, format!(
                        "node {}: {} requests already forwarded to master node {} (limit {MAX_PENDING_FORWARDS}); retry later",
                        self.me_name(),
                        self.forwards.len(),
                        self.name(master)
                    ))
                } else {
                    let body = match req {
                        Request::Change(c) => WireRequest::Change(M::encode_change(&c)),
                        Request::DetachPlex { volume, plex, ranges } => WireRequest::DetachPlex { volume, plex, ranges },
                        Request::ResyncDone { .. } => {
                            let err = format!("node {}: a resync's ACTIVE change is only made by the master", self.me_name());
                            return self.reply(request, Err(RequestError::new(ErrorKind::Internal, self.me_name(), err)));
                        }
                    };
                    self.forwards.insert(
                        request,
                        Forward {
                            committed: false,
                            sent_ms: now_ms,
                        },
                    );
                    self.send(master, Message::Forward { request, body });
                    return;
                }
            }
            (State::TakingOver { .. }, _) => (
                ErrorKind::NotMaster,
                format!("node {}: taking over as master; retry shortly", self.me_name()),
            ),
            _ if !self.quorum().reached(self.votes_of(
                self.reachable_peers(now_ms).into_iter().chain([me]),
            )) =>
            {
                (ErrorKind::NoQuorum, format!(
                    "{}; this node is not a cluster member and refuses changes until it can reach a majority",
                    self.no_quorum_reason(now_ms)
                ))
            }
            _ => (ErrorKind::NotMaster, format!(
                "node {} is not a cluster member ({:?}); no master is known to forward the request to",
                self.me_name(),
                self.role()
            )),
        };
        self.reply(request, Err(RequestError::new(kind, me_name, err)));
    }

    pub(super) fn master_on_forward(
        &mut self,
        now_ms: u64,
        from: NodeId,
        request: RequestId,
        body: WireRequest,
    ) {
        let me_name = self.me_name();
        if !self.is_master() {
            let err = format!("node {me_name} is not the master; retry");
            let err = RequestError::new(ErrorKind::NotMaster, me_name, err);
            return self.send(from, Self::outcome(request, Err(err)));
        }
        if !self.view.as_ref().is_some_and(|v| v.contains(from)) {
            let err = format!(
                "node {me_name} (master): node {} is not a cluster member",
                self.name(from)
            );
            let err = RequestError::new(ErrorKind::NotMaster, me_name, err);
            return self.send(from, Self::outcome(request, Err(err)));
        }
        let req = match body {
            WireRequest::Change(bytes) => match M::decode_change(&bytes) {
                Ok(c) => {
                    self.recovery_note_close(from, &c);
                    Request::Change(c)
                }
                Err(e) => {
                    let err = format!("node {me_name} (master): cannot decode the change: {e}");
                    let err = RequestError::new(ErrorKind::Internal, me_name, err);
                    return self.send(from, Self::outcome(request, Err(err)));
                }
            },
            WireRequest::DetachPlex {
                volume,
                plex,
                ranges,
            } => Request::DetachPlex {
                volume,
                plex,
                ranges,
            },
        };
        self.master_enqueue(
            now_ms,
            Origin {
                node: from,
                request,
            },
            req,
        );
    }

    pub(super) fn master_enqueue(&mut self, now_ms: u64, origin: Origin, req: Request<M>) {
        let Some(ms) = self.master.as_mut() else {
            return;
        };
        if ms.queue.len() >= MAX_QUEUED_REQUESTS {
            let err = format!(
                "node {} (master): {MAX_QUEUED_REQUESTS} requests already queued; retry later",
                self.me_name()
            );
            let err = RequestError::new(ErrorKind::Busy, self.me_name(), err);
            return self.finish_request(origin, Err(err));
        }
        ms.queue.push_back((origin, req));
        self.master_next(now_ms);
    }

    /// Sends a request's final result to its origin.
    fn finish_request(&mut self, origin: Origin, result: Result<(), RequestError>) {
        if origin.node == self.cfg.me && origin.request.0 >= resync::RESYNC_REQUEST_BASE {
            self.resync_done_outcome(origin.request, result);
        } else if origin.node == self.cfg.me {
            self.reply(origin.request, result);
        } else {
            self.send(origin.node, Self::outcome(origin.request, result));
        }
    }

    /// The Outcome message carrying `result`.
    fn outcome(request: RequestId, result: Result<(), RequestError>) -> Message {
        let (kind, node) = match &result {
            Ok(()) => (None, None),
            Err(e) => (Some(e.kind), Some(e.node.clone())),
        };
        Message::Outcome {
            request,
            result: result.map_err(|e| e.message),
            kind,
            node,
        }
    }

    /// The master's answer to a request this node forwarded; an older master's
    /// failure (no kind) counts as [`ErrorKind::Failed`] on the master.
    pub(super) fn on_outcome(
        &mut self,
        from: NodeId,
        request: RequestId,
        result: Result<(), String>,
        kind: Option<ErrorKind>,
        node: Option<String>,
    ) {
        let result = result.map_err(|message| RequestError {
            kind: kind.unwrap_or(ErrorKind::Failed),
            node: node.unwrap_or_else(|| self.name(from)),
            message,
        });
        if self.view.as_ref().map(|v| v.master) != Some(from) {
            log::warn!(
                "node {}: Outcome from non-master node {from} ignored",
                self.cfg.me
            );
            return;
        }
        if self.forwards.remove(&request).is_some() {
            self.reply(request, result);
        }
    }

    /// The master changed (or this node left): answers every forwarded request.
    /// Those whose COMMIT this node applied succeeded (the disks hold them); the
    /// others were not applied anywhere.
    pub(super) fn resolve_forwards(&mut self, old_master: NodeId) {
        let forwards = std::mem::take(&mut self.forwards);
        for (request, f) in forwards {
            let result = if f.committed {
                Ok(())
            } else {
                Err(RequestError::new(ErrorKind::NotMaster, self.me_name(), format!(
                    "node {}: master node {} was lost before the change committed; it was not applied",
                    self.me_name(),
                    self.name(old_master)
                )))
            };
            self.reply(request, result);
        }
    }

    /// Forwarded requests whose answer has not come within a bound (a message lost
    /// in a partition) are answered 'outcome unknown'. The bound covers a full
    /// queue's wait, the lease a master waits out and a takeover.
    pub(super) fn expire_forwards(&mut self, now_ms: u64) {
        let bound_ms = 2 * self.cfg.lease_wait_ms() + 6 * self.cfg.heartbeat_timeout_ms;
        let late: Vec<RequestId> = self
            .forwards
            .iter()
            .filter(|(_, f)| now_ms >= f.sent_ms + bound_ms)
            .map(|(&r, _)| r)
            .collect();
        for request in late {
            self.forwards.remove(&request);
            let err = format!(
                "node {}: no answer from the master within {bound_ms} ms; {OUTCOME_UNKNOWN} (check the configuration)",
                self.me_name()
            );
            let err = RequestError::new(ErrorKind::OutcomeUnknown, self.me_name(), err);
            self.reply(request, Err(err));
        }
    }

    /// This node left the cluster: the master may still commit what it forwarded
    /// (or, if this node applied its COMMIT, the change may never reach the disks
    /// when no quorate master completes it), so the answer says the outcome is
    /// unknown (it contains [`OUTCOME_UNKNOWN`]).
    pub(super) fn forwards_outcome_unknown(&mut self) {
        let forwards = std::mem::take(&mut self.forwards);
        for (request, _) in forwards {
            let result = Err(RequestError::new(ErrorKind::OutcomeUnknown, self.me_name(), format!(
                "node {}: left the cluster while the change was in progress; {OUTCOME_UNKNOWN} (check the configuration)",
                self.me_name()
            )));
            self.reply(request, result);
        }
    }

    /// Master shutting down: every queued request (not started, so not applied)
    /// gets an error.
    pub(super) fn refuse_queued_requests(&mut self) {
        let err = format!(
            "node {}: shutting down; the change was not applied",
            self.me_name()
        );
        let err = RequestError::new(ErrorKind::Busy, self.me_name(), err);
        let queued = self
            .master
            .as_mut()
            .map(|ms| std::mem::take(&mut ms.queue))
            .unwrap_or_default();
        for (origin, _) in queued {
            self.finish_request(origin, Err(err.clone()));
        }
    }

    /// Master: starts the next queued join or transaction, if nothing blocks it.
    /// Joins go first (cluster reconfiguration takes precedence); a join may run
    /// while a transaction is in its check phase (the transaction is suspended).
    pub(super) fn master_next(&mut self, now_ms: u64) {
        loop {
            if !self.is_master() {
                return;
            }
            let may_commit = self.may_commit(now_ms);
            // A stopping master still runs its own clean-stop close.
            let stop_blocks = self.stopping && !self.recovery_close_queued();
            let Some(ms) = self.master.as_mut() else {
                return;
            };
            if ms.join.is_none() && !self.stopping {
                let join_allowed = match &ms.txn {
                    None => true,
                    Some(t) => matches!(t.phase, Phase::Checking { .. }),
                };
                if join_allowed {
                    if let Some(&j) = ms.joins.front() {
                        if !self.may_gain_majority_with(now_ms, j) {
                            return;
                        }
                        if let Some(ms) = self.master.as_mut() {
                            ms.joins.pop_front();
                        }
                        self.start_join(j);
                        return;
                    }
                }
            }
            if ms.txn.is_some() || ms.join.is_some() || stop_blocks || !may_commit {
                return;
            }
            let Some((origin, req)) = ms.queue.pop_front() else {
                return;
            };
            self.start_txn(now_ms, origin, req);
        }
    }

    /// The change a plex write error reported by `node` leads to (`core::detach`):
    /// under the global policy (or a report without ranges: a held write) the plex's
    /// detach; under the local policy its detach once every member of the view
    /// reported it, else a resync of `ranges`.
    fn plex_error_change(
        &mut self,
        node: NodeId,
        volume: &str,
        plex: &str,
        ranges: &[(u64, u64)],
    ) -> Result<Option<M::Change>, RequestError> {
        let me = self.me_name();
        let config = &self.committed.config;
        // No ranges: the reporting data plane holds the write (the global policy, or a
        // layout staged before the policy changed); only a detach releases it.
        if !config.local_detach(volume) || ranges.is_empty() {
            return config.detach_plex(volume, plex).map_err(|e| e.on(&me));
        }
        let (view, members) = self
            .view
            .as_ref()
            .map(|v| (v.id, v.members.clone()))
            .unwrap_or_default();
        if config.plex_active(volume, plex) {
            // ACTIVE again (or never failed): a new episode; earlier failures were
            // repaired and may have been transient.
            self.failing.forget(volume, plex);
        }
        let decision = self.failing.report(view, &members, volume, plex, node);
        let failing = self.failing.failing(volume, plex);
        let config = &self.committed.config;
        match decision {
            detach::LocalDecision::Detach => {
                log::warn!(
                    "node {me}: plex {plex} of volume {volume}: every member ({failing:?}) failed a write on it; detaching it"
                );
                self.failing.forget(volume, plex);
                config.detach_plex(volume, plex).map_err(|e| e.on(&me))
            }
            detach::LocalDecision::Resync => {
                log::warn!(
                    "node {me}: plex {plex} of volume {volume}: a write failed on node {} (failing on {failing:?} of {members:?}); resynchronising {} range(s)",
                    self.name(node),
                    ranges.len()
                );
                config
                    .diverged_plex(volume, plex, ranges)
                    .map_err(|e| e.on(&me))
            }
            detach::LocalDecision::Full => {
                let err = format!(
                    "node {me}: plex {plex} of volume {volume}: {} plexes with failed writes are tracked already (limit {}); report again later",
                    self.failing.len(),
                    detach::MAX_FAILING_PLEXES
                );
                Err(RequestError::new(ErrorKind::Busy, me, err))
            }
        }
    }

    /// Steps 1 and 2: validate against the master's configuration, then send CHECK.
    fn start_txn(&mut self, now_ms: u64, origin: Origin, req: Request<M>) {
        let me = self.cfg.me;
        let change = match req {
            Request::Change(c) => c,
            Request::DetachPlex {
                volume,
                plex,
                ranges,
            } => match self.plex_error_change(origin.node, &volume, &plex, &ranges) {
                Ok(Some(c)) => c,
                Ok(None) => return self.finish_request(origin, Ok(())),
                Err(e) => return self.fail_request(origin, None, e),
            },
            Request::ResyncDone { plex, gen } => {
                if !self.resync_done_valid(&plex, gen) {
                    let err = format!(
                        "node {}: the resync of plex {} of volume {} started again before it became ACTIVE",
                        self.me_name(),
                        plex.plex,
                        plex.volume
                    );
                    let err = RequestError::new(ErrorKind::Refused, self.me_name(), err);
                    return self.finish_request(origin, Err(err));
                }
                match self.committed.config.resync_done(&plex) {
                    Ok(Some(c)) => c,
                    Ok(None) => return self.finish_request(origin, Ok(())),
                    Err(e) => return self.fail_request(origin, None, e.on(&self.me_name())),
                }
            }
        };
        let new_config = match self.committed.config.validate_and_apply(&change) {
            Ok(c) if c.seq() == self.committed.config.seq() + 1 => c,
            Ok(c) => {
                let err = format!(
                    "node {}: configuration model error: seq {} after seq {}",
                    self.me_name(),
                    c.seq(),
                    self.committed.config.seq()
                );
                let err = RequestError::new(ErrorKind::Internal, self.me_name(), err);
                return self.fail_request(origin, None, err);
            }
            Err(e) => return self.fail_request(origin, None, e.on(&self.me_name())),
        };
        if let Err(why) = self.recovery_keeps_logs(&new_config) {
            let err = RequestError::new(ErrorKind::InUse, self.me_name(), why);
            return self.fail_request(origin, None, err);
        }
        let Some(view) = self.view.clone() else {
            return;
        };
        let Some(ms) = self.master.as_mut() else {
            return;
        };
        assert!(
            ms.txn.is_none() && ms.join.is_none(),
            "one transaction at a time, never during a join"
        );
        ms.next_txn += 1;
        let id = TxnId {
            view: view.id,
            n: ms.next_txn,
        };
        let participants: BTreeSet<NodeId> =
            view.members.iter().copied().filter(|&m| m != me).collect();
        let mut awaiting = participants.clone();
        awaiting.insert(me);
        let encoded = M::encode_change(&change);
        ms.txn = Some(MasterTxn {
            id,
            origin,
            change: change.clone(),
            new_config,
            participants: participants.clone(),
            phase: Phase::Checking { awaiting },
            staged: false,
            successor: None,
            applied: BTreeSet::new(),
            phase_since_ms: now_ms,
        });
        log::info!("node {me}: transaction {id} validated");
        let base = Some(self.txn_state());
        self.recovery_note_txn(id, origin);
        self.txn_failpoint("txn.after_validate", id);
        for p in participants {
            self.send(
                p,
                Message::Check {
                    txn: id,
                    change: encoded.clone(),
                    origin,
                    base,
                },
            );
        }
        self.out.push(Action::LocalCheck { txn: id, change });
    }

    /// A request failed before it became a transaction, or a transaction failed:
    /// log it on the master's console and answer the origin.
    fn fail_request(&mut self, origin: Origin, txn: Option<TxnId>, error: RequestError) {
        let line = match txn {
            Some(id) => format!("transaction {id} failed: {error}"),
            None => format!("request failed: {error}"),
        };
        self.log(log::Level::Warn, line);
        self.finish_request(origin, Err(error));
    }

    /// A joiner let in while the transaction was suspended in its check phase takes
    /// part in it from now on.
    pub(super) fn master_include_joiner(&mut self, now_ms: u64, node: NodeId) {
        let base = Some(self.txn_state());
        let Some(t) = self.master.as_mut().and_then(|ms| ms.txn.as_mut()) else {
            return;
        };
        t.phase_since_ms = now_ms;
        let Phase::Checking { awaiting } = &mut t.phase else {
            unreachable!("a join never runs past the check phase");
        };
        awaiting.insert(node);
        t.participants.insert(node);
        let msg = Message::Check {
            txn: t.id,
            change: M::encode_change(&t.change),
            origin: t.origin,
            base,
        };
        self.send(node, msg);
    }

    /// Master: moves the transaction to its next phase once nobody is awaited.
    pub(super) fn master_advance(&mut self, now_ms: u64) {
        let me = self.cfg.me;
        let join_active = self.master.as_ref().is_some_and(|ms| ms.join.is_some());
        let Some(t) = self.master.as_mut().and_then(|ms| ms.txn.as_mut()) else {
            return;
        };
        match &t.phase {
            Phase::Checking { awaiting } if awaiting.is_empty() && !join_active => {
                let mut awaiting = t.participants.clone();
                awaiting.insert(me);
                t.phase = Phase::Preparing { awaiting };
                t.phase_since_ms = now_ms;
                t.staged = true;
                let (id, participants, config) =
                    (t.id, t.participants.clone(), t.new_config.clone());
                self.txn_failpoint("txn.after_check", id);
                for p in participants {
                    self.send(p, Message::Prepare { txn: id });
                }
                self.out.push(Action::KernelPrepare { txn: id, config });
            }
            Phase::Preparing { awaiting } if awaiting.is_empty() => {
                let id = t.id;
                let successor = t.participants.iter().next().copied();
                t.successor = successor;
                match successor {
                    Some(s) => t.phase = Phase::SuccessorCommit { successor: s },
                    None => t.phase = Phase::DiskWrite,
                }
                t.phase_since_ms = now_ms;
                self.txn_failpoint("txn.after_prepare", id);
                self.txn_failpoint("txn.before_successor_commit", id);
                match successor {
                    Some(s) => self.send(s, Message::Commit { txn: id }),
                    None => {
                        self.txn_failpoint("txn.after_successor_ack", id);
                        if self.has_lease(now_ms) {
                            self.start_disk_write();
                        } else {
                            let reason = self.no_quorum_reason(now_ms);
                            self.master_abdicate(now_ms, reason);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    fn start_disk_write(&mut self) {
        let Some(t) = self.master.as_mut().and_then(|ms| ms.txn.as_mut()) else {
            return;
        };
        t.phase = Phase::DiskWrite;
        let record = DiskRecord {
            txn: t.id,
            config: t.new_config.clone(),
        };
        // Written under the lease only: a write that waited past it (a frozen
        // process) may land after another master took over.
        let deadline_ms = self.lease_until_ms().unwrap_or(0);
        self.out.push(Action::WriteDisks {
            record,
            deadline_ms,
            lease_extends: true,
        });
    }

    fn master_txn(&mut self, txn: TxnId) -> Option<&mut MasterTxn<M>> {
        if !self.is_master() {
            return None;
        }
        self.master
            .as_mut()
            .and_then(|ms| ms.txn.as_mut())
            .filter(|t| t.id == txn)
    }

    pub(super) fn master_on_check_reply(
        &mut self,
        now_ms: u64,
        from: NodeId,
        txn: TxnId,
        result: Result<(), RequestError>,
    ) {
        let Some(t) = self.master_txn(txn) else {
            return;
        };
        let Phase::Checking { awaiting } = &mut t.phase else {
            return;
        };
        if !awaiting.remove(&from) {
            return;
        }
        match result {
            Ok(()) => self.master_advance(now_ms),
            Err(e) => {
                let err = e.on(&self.name(from));
                self.master_abort(now_ms, err);
            }
        }
    }

    pub(super) fn master_on_prepare_reply(
        &mut self,
        now_ms: u64,
        from: NodeId,
        txn: TxnId,
        result: Result<(), String>,
    ) {
        let Some(t) = self.master_txn(txn) else {
            return;
        };
        let Phase::Preparing { awaiting } = &mut t.phase else {
            return;
        };
        if !awaiting.remove(&from) {
            return;
        }
        match result {
            Ok(()) => self.master_advance(now_ms),
            Err(e) => {
                let node = self.name(from);
                let err = format!("node {node}: {e}");
                self.master_abort(now_ms, RequestError::new(ErrorKind::Failed, node, err));
            }
        }
    }

    /// The designated successor acknowledged COMMIT: the commit point. The master
    /// writes the disks only while it holds its lease: without it a successor may
    /// already be taking over, and the disks are its to decide.
    pub(super) fn master_on_commit_ack(&mut self, now_ms: u64, from: NodeId, txn: TxnId) {
        let Some(t) = self.master_txn(txn) else {
            return;
        };
        if t.phase != (Phase::SuccessorCommit { successor: from }) {
            return;
        }
        self.txn_failpoint("txn.after_successor_ack", txn);
        if !self.has_lease(now_ms) {
            let reason = format!(
                "{}; transaction {txn} is past the commit point and is left to the next master",
                self.no_quorum_reason(now_ms)
            );
            return self.master_abdicate(now_ms, reason);
        }
        self.start_disk_write();
    }

    /// Master: the disks hold the new configuration; COMMIT goes to the other slaves,
    /// the master applies it and the client gets its answer.
    fn master_on_disk_written(&mut self, now_ms: u64, txn: TxnId, result: Result<(), String>) {
        let me = self.cfg.me;
        let Some(t) = self.master_txn(txn) else {
            return;
        };
        if t.phase != Phase::DiskWrite {
            return;
        }
        if let Some(e) = result
            .as_ref()
            .err()
            .filter(|e| e.contains(NEWER_EPOCH) || e.contains(WRITE_DEADLINE))
        {
            let reason = format!(
                "node {}: transaction {txn}: {e}: another master has replaced this one",
                self.me_name()
            );
            return self.master_abdicate(now_ms, reason);
        }
        let t = self
            .master
            .as_mut()
            .and_then(|ms| ms.txn.take())
            .expect("checked above");
        let mut answer = Ok(());
        if let Err(e) = result {
            let line = format!(
                "node {}: writing transaction {} to the disks failed: {e}; it is past the commit point and completes on the nodes",
                self.me_name(),
                t.id
            );
            self.log(log::Level::Error, line);
            answer = Err(RequestError::new(ErrorKind::OutcomeUnknown, self.me_name(), format!(
                "node {}: transaction {} committed on the nodes but was written to no disk ({e}); {OUTCOME_UNKNOWN} after a restart of the whole cluster: check the disks",
                self.me_name(),
                t.id
            )));
        }
        self.txn_failpoint("txn.after_disk_write", t.id);
        for &p in &t.participants {
            if Some(p) != t.successor {
                self.send(p, Message::Commit { txn: t.id });
            }
        }
        self.txn_failpoint("txn.after_commit_sent", t.id);
        self.out.push(Action::KernelCommit { txn: t.id });
        self.committed = Committed {
            txn: t.id,
            config: t.new_config,
        };
        self.log_committed();
        let mut waiting: BTreeSet<NodeId> =
            t.participants.difference(&t.applied).copied().collect();
        waiting.insert(me);
        let room = self
            .master
            .as_ref()
            .is_some_and(|ms| ms.applied.len() < MAX_APPLIED_WAITS);
        if answer.is_ok() && M::answer_after_applied(&t.change) && room {
            // Answered once every member's data plane applied it (the master's
            // own KernelCommit too: a later step's Outcome would not wait for it).
            if let Some(ms) = self.master.as_mut() {
                ms.applied.push(AppliedWait {
                    txn: t.id,
                    origin: t.origin,
                    waiting,
                    until_ms: now_ms + APPLIED_WAIT_MS,
                });
            }
        } else {
            self.finish_request(t.origin, answer);
        }
        self.master_next(now_ms);
    }

    /// Master: member `from`'s data plane applied the COMMIT of `txn` (its
    /// [`Message::Applied`], or its heartbeat's newest applied transaction). A data
    /// plane applies commits in order, so every earlier held answer counts it too;
    /// a held answer goes out once every member applied its transaction.
    pub(super) fn master_on_applied(&mut self, from: NodeId, txn: TxnId) {
        let Some(ms) = self.master.as_mut() else {
            return;
        };
        if let Some(t) = ms.txn.as_mut().filter(|t| t.id == txn) {
            t.applied.insert(from);
        }
        let mut done = Vec::new();
        ms.applied.retain_mut(|w| {
            if w.txn <= txn {
                w.waiting.remove(&from);
            }
            let all = w.waiting.is_empty();
            if all {
                done.push(w.origin);
            }
            !all
        });
        for origin in done {
            self.finish_request(origin, Ok(()));
        }
    }

    /// What this node's heartbeat to `peer` says its data plane applied: a
    /// slave tells its master only.
    pub(super) fn applied_for(&self, peer: NodeId) -> Option<TxnId> {
        let to_my_master = matches!(self.state, State::Member)
            && !self.is_master()
            && self.view.as_ref().is_some_and(|v| v.master == peer);
        self.applied_txn.filter(|_| to_my_master)
    }

    /// Master: held answers whose members left the view or did not report
    /// within [`APPLIED_WAIT_MS`] go out (the change is committed either way).
    pub(super) fn master_applied_timers(&mut self, now_ms: u64) {
        let members: BTreeSet<NodeId> = self
            .view
            .as_ref()
            .map(|v| v.members.iter().copied().collect())
            .unwrap_or_default();
        let Some(ms) = self.master.as_mut() else {
            return;
        };
        let mut due = Vec::new();
        ms.applied.retain_mut(|w| {
            w.waiting.retain(|n| members.contains(n));
            let late = now_ms >= w.until_ms;
            if w.waiting.is_empty() || late {
                due.push((w.txn, w.origin, late.then(|| w.waiting.clone())));
                false
            } else {
                true
            }
        });
        for (txn, origin, late) in due {
            if let Some(nodes) = late.filter(|n| !n.is_empty()) {
                let names: Vec<String> = nodes.iter().map(|n| self.name(*n)).collect();
                let line = format!(
                    "node {}: transaction {txn}: {} did not report applying it within {APPLIED_WAIT_MS} ms; answering its origin",
                    self.me_name(),
                    names.join(", ")
                );
                self.log(log::Level::Warn, line);
            }
            self.finish_request(origin, Ok(()));
        }
    }

    /// This node's data plane applied the COMMIT of `txn`: a slave tells its
    /// master ([`Message::Applied`]); the master counts itself.
    pub(super) fn slave_on_kernel_committed(&mut self, txn: TxnId) {
        if !matches!(self.state, State::Member) {
            return;
        }
        self.applied_txn = self.applied_txn.max(Some(txn));
        if self.is_master() {
            let me = self.cfg.me;
            return self.master_on_applied(me, txn);
        }
        if let Some(master) = self.view.as_ref().map(|v| v.master) {
            self.send(master, Message::Applied { txn });
        }
    }

    /// The master gives up: the transaction in progress and every queued request
    /// are answered. A transaction whose COMMIT went out may still complete under
    /// the next master, so its answer says the outcome is unknown.
    pub(super) fn master_fail_all(&mut self, reason: &str) {
        let Some(ms) = self.master.as_mut() else {
            return;
        };
        let txn = ms.txn.take();
        let queued = std::mem::take(&mut ms.queue);
        // Committed (and written): their answers go out now.
        let held = std::mem::take(&mut ms.applied);
        if let Some(t) = txn {
            let past_commit = matches!(
                t.phase,
                Phase::SuccessorCommit { .. } | Phase::SuccessorLost { .. } | Phase::DiskWrite
            );
            let error = if past_commit {
                let e = format!("{reason}; {OUTCOME_UNKNOWN} (the next master completes or aborts transaction {})", t.id);
                RequestError::new(ErrorKind::OutcomeUnknown, self.me_name(), e)
            } else {
                for &p in &t.participants {
                    self.send(p, Message::Abort { txn: t.id });
                }
                if t.staged {
                    self.out.push(Action::KernelAbort { txn: t.id });
                }
                let e = format!("{reason}; the change was not applied");
                RequestError::new(ErrorKind::NotMaster, self.me_name(), e)
            };
            self.fail_request(t.origin, Some(t.id), error);
        }
        for w in held {
            self.finish_request(w.origin, Ok(()));
        }
        for (origin, req) in queued {
            // The operator's word that a disk is gone waits on (`core::given_up`).
            if let Request::Change(c) = req {
                if origin.node == self.cfg.me && self.hold_given_up(origin.request, c) {
                    continue;
                }
            }
            let e = format!("{reason}; the change was not applied");
            let e = RequestError::new(ErrorKind::NotMaster, self.me_name(), e);
            self.finish_request(origin, Err(e));
        }
    }

    /// Master: the transaction fails everywhere (abort, drop staged layouts, answer).
    fn master_abort(&mut self, now_ms: u64, error: RequestError) {
        let Some(t) = self.master.as_mut().and_then(|ms| ms.txn.take()) else {
            return;
        };
        assert!(
            !matches!(t.phase, Phase::DiskWrite),
            "a transaction past the commit point never aborts"
        );
        for &p in &t.participants {
            if self.view.as_ref().is_some_and(|v| v.contains(p)) {
                self.send(p, Message::Abort { txn: t.id });
            }
        }
        if t.staged {
            self.out.push(Action::KernelAbort { txn: t.id });
        }
        self.fail_request(t.origin, Some(t.id), error);
        self.master_next(now_ms);
    }

    /// Master: a participant left. Before the commit stage the transaction fails;
    /// once COMMIT went to the successor it continues on the survivors, unless the
    /// lost node is the successor and had not acknowledged.
    pub(super) fn master_txn_member_lost(&mut self, now_ms: u64, peer: NodeId) {
        let name = self.name(peer);
        let Some(t) = self.master.as_mut().and_then(|ms| ms.txn.as_mut()) else {
            return;
        };
        if !t.participants.contains(&peer) {
            return;
        }
        let err = match &t.phase {
            Phase::Checking { .. } | Phase::Preparing { .. } => RequestError::new(
                ErrorKind::Failed,
                name.clone(),
                format!("node {name}: left the cluster during the transaction; the change was not applied"),
            ),
            Phase::SuccessorCommit { successor } if *successor == peer => {
                t.phase = Phase::SuccessorLost {
                    successor: peer,
                    since_ms: now_ms,
                };
                t.participants.remove(&peer);
                let id = t.id;
                let line = format!(
                    "node {}: transaction {id}: the designated successor node {name} left before acknowledging COMMIT; it may have applied it, so the transaction is aborted only once a majority confirms this master and node {name}'s lease has run out",
                    self.me_name()
                );
                self.log(log::Level::Warn, line);
                return;
            }
            Phase::SuccessorCommit { .. } | Phase::SuccessorLost { .. } | Phase::DiskWrite => {
                t.participants.remove(&peer);
                return;
            }
        };
        t.participants.remove(&peer);
        self.master_abort(now_ms, err);
    }

    /// Master, on every tick: a transaction whose successor was lost before its ack
    /// is aborted once that is safe (see [`Phase::SuccessorLost`]); one whose check
    /// or prepare answers have not all come within `reply_timeout_ms` fails.
    pub(super) fn master_txn_timers(&mut self, now_ms: u64) {
        let join_active = self.master.as_ref().is_some_and(|ms| ms.join.is_some());
        let Some((phase, since)) = self
            .master
            .as_ref()
            .and_then(|ms| ms.txn.as_ref())
            .map(|t| (t.phase.clone(), t.phase_since_ms))
        else {
            return;
        };
        let late = |awaiting: &BTreeSet<NodeId>| -> Option<Vec<NodeId>> {
            (now_ms >= since + self.cfg.reply_timeout_ms)
                .then(|| awaiting.iter().copied().collect())
        };
        let (step, silent) = match &phase {
            Phase::SuccessorLost {
                successor,
                since_ms,
            } => {
                if self.may_commit(now_ms) && self.lease_confirmed_since(*since_ms) {
                    let node = self.name(*successor);
                    let err = format!(
                        "node {node}: the designated successor left the cluster before acknowledging COMMIT; the change was not applied"
                    );
                    self.master_abort(now_ms, RequestError::new(ErrorKind::Failed, node, err));
                }
                return;
            }
            Phase::SuccessorCommit { successor } => {
                // The COMMIT or its ack was lost on a link cut for a moment (the
                // successor is still a member): the same decision goes again; a
                // successor that applied it already acknowledges it again.
                if now_ms >= since + self.cfg.heartbeat_timeout_ms {
                    let (successor, id) = (
                        *successor,
                        self.master
                            .as_ref()
                            .and_then(|ms| ms.txn.as_ref())
                            .map(|t| t.id),
                    );
                    if let Some(t) = self.master.as_mut().and_then(|ms| ms.txn.as_mut()) {
                        t.phase_since_ms = now_ms;
                    }
                    if let Some(id) = id {
                        log::info!(
                            "node {}: no ack of COMMIT {id} from node {successor} yet; sending it again",
                            self.cfg.me
                        );
                        self.send(successor, Message::Commit { txn: id });
                    }
                }
                return;
            }
            Phase::Checking { awaiting } if !join_active => ("CHECK", late(awaiting)),
            Phase::Preparing { awaiting } => ("PREPARE", late(awaiting)),
            _ => return,
        };
        let Some(silent) = silent.filter(|s| !s.is_empty()) else {
            return;
        };
        let names: Vec<String> = silent.iter().map(|&n| self.name(n)).collect();
        let err = format!(
            "node {}: no answer to {step} within {} ms from {}; the change was not applied",
            self.me_name(),
            self.cfg.reply_timeout_ms,
            names.join(", ")
        );
        let node = names.first().cloned().unwrap_or_default();
        self.master_abort(now_ms, RequestError::new(ErrorKind::Unreachable, node, err));
    }

    pub(super) fn on_local_check_done(
        &mut self,
        now_ms: u64,
        txn: TxnId,
        result: Result<(), RequestError>,
    ) {
        let me = self.cfg.me;
        if self.is_master() {
            return self.master_on_check_reply(now_ms, me, txn, result);
        }
        let Some(st) = self.slave_txn.as_mut().filter(|s| s.id == txn) else {
            return;
        };
        if st.phase != SlavePhase::Checking {
            return;
        }
        st.phase = SlavePhase::Checked;
        let Some(master) = self.view.as_ref().map(|v| v.master) else {
            return;
        };
        self.send(master, Self::check_reply(txn, result));
        self.txn_failpoint("txn.after_check", txn);
    }

    pub(super) fn on_kernel_prepared(
        &mut self,
        now_ms: u64,
        txn: TxnId,
        result: Result<(), String>,
    ) {
        let me = self.cfg.me;
        if self.is_master() {
            return self.master_on_prepare_reply(now_ms, me, txn, result);
        }
        let Some(st) = self.slave_txn.as_mut().filter(|s| s.id == txn) else {
            return;
        };
        if st.phase != SlavePhase::Preparing {
            return;
        }
        // A refused prepare never commits: the phase stays short of Prepared.
        st.phase = if result.is_ok() {
            SlavePhase::Prepared
        } else {
            SlavePhase::Checked
        };
        let Some(master) = self.view.as_ref().map(|v| v.master) else {
            return;
        };
        self.send(master, Message::PrepareReply { txn, result });
        self.txn_failpoint("txn.after_prepare", txn);
    }

    pub(super) fn on_disk_written(&mut self, now_ms: u64, txn: TxnId, result: Result<(), String>) {
        match self.state {
            State::TakingOver {
                step: TakeoverStep::WritingDisks,
            } => self.finish_takeover(now_ms, result),
            State::Member if self.is_master() => self.master_on_disk_written(now_ms, txn, result),
            _ => log::debug!("node {}: stale DiskWritten ignored", self.cfg.me),
        }
    }

    fn sent_by_my_master(&self, from: NodeId) -> bool {
        matches!(self.state, State::Member)
            && !self.is_master()
            && self.view.as_ref().is_some_and(|v| v.master == from)
    }

    pub(super) fn slave_on_check(
        &mut self,
        now_ms: u64,
        from: NodeId,
        txn: TxnId,
        change: Vec<u8>,
        origin: Origin,
        base: Option<TxnState>,
    ) {
        if !self.sent_by_my_master(from) {
            log::debug!(
                "node {}: Check from node {from} ignored: not my master",
                self.cfg.me
            );
            return;
        }
        if let Some(state) = base {
            if let Err(reason) = self.slave_sync(now_ms, from, state) {
                let err = RequestError::unplaced(ErrorKind::Failed, reason);
                return self.send(from, Self::check_reply(txn, Err(err)));
            }
        }
        if let Some(old) = self.slave_txn.take() {
            log::warn!(
                "node {}: transaction {} replaced by {txn}",
                self.cfg.me,
                old.id
            );
            if old.staged {
                self.out.push(Action::KernelAbort { txn: old.id });
            }
        }
        let change = match M::decode_change(&change) {
            Ok(c) => c,
            Err(e) => {
                let err = format!("cannot decode the change: {e}");
                let result = Err(RequestError::unplaced(ErrorKind::Internal, err));
                return self.send(from, Self::check_reply(txn, result));
            }
        };
        let new_config = match self.committed.config.validate_and_apply(&change) {
            Ok(c) => c,
            Err(e) => return self.send(from, Self::check_reply(txn, Err(e))),
        };
        if let Err(why) = self.recovery_keeps_logs(&new_config) {
            let err = RequestError::new(ErrorKind::InUse, self.me_name(), why);
            return self.send(from, Self::check_reply(txn, Err(err)));
        }
        self.recovery_note_txn(txn, origin);
        self.slave_txn = Some(SlaveTxn {
            id: txn,
            origin,
            new_config,
            phase: SlavePhase::Checking,
            staged: false,
        });
        self.out.push(Action::LocalCheck { txn, change });
    }

    /// The CheckReply message carrying `result`.
    fn check_reply(txn: TxnId, result: Result<(), RequestError>) -> Message {
        let kind = result.as_ref().err().map(|e| e.kind);
        Message::CheckReply {
            txn,
            result: result.map_err(|e| e.message),
            kind,
        }
    }

    pub(super) fn slave_on_prepare(&mut self, from: NodeId, txn: TxnId) {
        if !self.sent_by_my_master(from) {
            return;
        }
        let Some(st) = self.slave_txn.as_mut().filter(|s| s.id == txn) else {
            return;
        };
        if st.phase != SlavePhase::Checked {
            return;
        }
        st.phase = SlavePhase::Preparing;
        st.staged = true;
        let config = st.new_config.clone();
        self.out.push(Action::KernelPrepare { txn, config });
    }

    pub(super) fn slave_on_commit(&mut self, from: NodeId, txn: TxnId) {
        if !self.sent_by_my_master(from) {
            return;
        }
        if self.lease_ran_out(self.clock_ms) {
            // The master aborts a transaction whose successor left before
            // acknowledging COMMIT once that node's lease has run out. A node past
            // its lease (a process frozen that long, reading what was sent before)
            // may hold such a COMMIT: it neither acknowledges nor applies it. Its
            // next tick acts on the lease gone (it leaves the view, or, suspecting
            // its master, waits for a takeover that a newer view refuses).
            log::warn!(
                "node {}: COMMIT of transaction {txn} ignored: this node's lease has run out",
                self.cfg.me
            );
            return;
        }
        let prepared = self
            .slave_txn
            .as_ref()
            .is_some_and(|s| s.id == txn && s.phase == SlavePhase::Prepared);
        if !prepared && self.committed.txn != txn {
            log::warn!(
                "node {}: COMMIT of unknown transaction {txn} ignored",
                self.cfg.me
            );
            return;
        }
        // The acknowledgement leaves before the data plane applies the layout: a
        // node that dies between the two leaves a staged layout (which its lease
        // fences), never an applied one the master may abort for want of the ack.
        self.send(from, Message::CommitAck { txn });
        let successor = self
            .view
            .as_ref()
            .and_then(|v| v.successor(&BTreeSet::new()));
        if successor == Some(self.cfg.me) {
            self.txn_failpoint("txn.after_successor_ack", txn);
        }
        if prepared {
            let st = self.slave_txn.take().expect("checked above");
            self.commit_locally(st);
        }
    }

    /// Logs the transaction this node (master or slave) just committed.
    fn log_committed(&self) {
        log::info!(
            "node {}: transaction {} committed (seq {})",
            self.cfg.me,
            self.committed.txn,
            self.committed.config.seq()
        );
    }

    /// Applies a prepared transaction on this node.
    pub(super) fn commit_locally(&mut self, st: SlaveTxn<M>) {
        assert!(
            st.staged && st.phase == SlavePhase::Prepared,
            "only a prepared transaction commits"
        );
        assert_eq!(
            st.new_config.seq(),
            self.committed.config.seq() + 1,
            "commits apply in order"
        );
        self.out.push(Action::KernelCommit { txn: st.id });
        if st.origin.node == self.cfg.me {
            if let Some(f) = self.forwards.get_mut(&st.origin.request) {
                f.committed = true;
            }
        }
        let before = std::mem::replace(
            &mut self.committed,
            Committed {
                txn: st.id,
                config: st.new_config,
            },
        );
        self.log_committed();
        let after = self.committed.config.clone();
        self.recovery_slave_commit(st.id, &before.config, &after);
    }

    pub(super) fn slave_on_abort(&mut self, from: NodeId, txn: TxnId) {
        if !self.sent_by_my_master(from) {
            return;
        }
        if self.slave_txn.as_ref().is_some_and(|s| s.id == txn) {
            let st = self.slave_txn.take().expect("checked above");
            if st.staged {
                self.out.push(Action::KernelAbort { txn: st.id });
            }
        }
    }

    /// Where this master's transactions stand (see [`TxnState`]).
    pub(super) fn txn_state(&self) -> TxnState {
        TxnState {
            committed: self.committed.txn,
            seq: self.committed.config.seq(),
            running: self
                .master
                .as_ref()
                .and_then(|ms| ms.txn.as_ref())
                .map(|t| t.id),
        }
    }

    /// What a heartbeat to `peer` says of the transactions: from a master to a
    /// member of its view, where they stand; nothing otherwise.
    pub(super) fn txn_state_for(&self, peer: NodeId) -> Option<TxnState> {
        (self.is_master() && self.view.as_ref().is_some_and(|v| v.contains(peer)))
            .then(|| self.txn_state())
    }

    /// A slave learns from its master (a heartbeat, a CHECK) where the master's
    /// transactions stand, and catches up with what a lost message did not tell it:
    /// a prepared transaction the master has committed is applied (its COMMIT was
    /// lost), one the master is no longer running and did not commit is dropped
    /// (its ABORT was lost, or it failed before this node prepared). A committed
    /// configuration that still differs from the master's (and is not the one the
    /// master is completing, whose COMMIT this node applied as its successor) is
    /// out of step: this node leaves the cluster and rejoins, which loads the
    /// master's configuration. The error names why.
    pub(super) fn slave_sync(
        &mut self,
        now_ms: u64,
        master: NodeId,
        state: TxnState,
    ) -> Result<(), String> {
        self.recovery_durable(state.committed);
        if let Some(st) = self.slave_txn.take() {
            if Some(st.id) == state.running {
                self.slave_txn = Some(st);
            } else if st.id == state.committed
                && st.staged
                && st.phase == SlavePhase::Prepared
                && st.new_config.seq() == state.seq
                && st.new_config.seq() == self.committed.config.seq() + 1
            {
                let line = format!(
                    "node {}: master node {} committed transaction {} but its COMMIT did not arrive; applying it",
                    self.me_name(),
                    self.name(master),
                    st.id
                );
                self.log(log::Level::Warn, line);
                self.commit_locally(st);
            } else {
                log::info!(
                    "node {}: master node {} no longer runs transaction {} and did not commit it; dropping it",
                    self.cfg.me,
                    master,
                    st.id
                );
                if st.staged {
                    self.out.push(Action::KernelAbort { txn: st.id });
                }
            }
        }
        let mine = (self.committed.txn, self.committed.config.seq());
        if mine == (state.committed, state.seq) || state.running == Some(mine.0) {
            return Ok(());
        }
        let reason = format!(
            "node {}: holds configuration seq {} (transaction {}) but master node {} holds seq {} (transaction {}); rejoining to load it",
            self.me_name(),
            mine.1,
            mine.0,
            self.name(master),
            state.seq,
            state.committed
        );
        self.leave_cluster(now_ms, reason.clone());
        Err(reason)
    }

    /// A new master's view tells this slave how its pending transaction ended: it
    /// committed if the new master's configuration came from it, else it is aborted.
    pub(super) fn resolve_txn_after_master_change(&mut self, last_txn: TxnId) {
        let Some(st) = self.slave_txn.take() else {
            return;
        };
        if st.id == last_txn && st.phase == SlavePhase::Prepared {
            self.commit_locally(st);
        } else if st.staged {
            self.out.push(Action::KernelAbort { txn: st.id });
        }
    }
}
