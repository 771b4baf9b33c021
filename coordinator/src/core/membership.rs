//! Membership: heartbeats, failure detection, forming a cluster, the join protocol,
//! views and master takeover.

use super::*;
use txn::MasterState;

impl<M: ConfigModel> Node<M> {
    pub(super) fn on_tick(&mut self, now_ms: u64) {
        self.apply_monitor(now_ms);
        self.release_given_up(now_ms);
        self.maybe_heartbeat(now_ms);
        self.detect_silent_peers(now_ms);
        self.answer_takeover_queries(now_ms);
        self.check_lease(now_ms);
        self.expire_forwards(now_ms);
        match self.state {
            State::Discovering { since_ms } => self.maybe_form(now_ms, since_ms),
            State::Abandoned { until_ms } if now_ms >= until_ms => {
                self.state = State::Discovering { since_ms: now_ms };
            }
            State::TakingOver { .. } => self.on_tick_takeover(now_ms),
            // A join whose request or view was lost (a partition) starts again.
            State::Joining {
                step: JoinStep::Requested | JoinStep::Ready,
                ..
            } if now_ms >= self.joining_since_ms + 3 * self.cfg.heartbeat_timeout_ms => {
                log::info!(
                    "node {}: no answer to the join for {} ms; listening again",
                    self.cfg.me,
                    now_ms - self.joining_since_ms
                );
                self.state = State::Discovering { since_ms: now_ms };
            }
            State::Member if self.is_master() => {
                self.master_check_majority(now_ms);
                self.master_applied_timers(now_ms);
                self.master_txn_timers(now_ms);
                self.master_next(now_ms);
            }
            _ => {}
        }
    }

    fn maybe_heartbeat(&mut self, now_ms: u64) {
        if let Some(last) = self.last_heartbeat_ms {
            if now_ms < last + self.cfg.heartbeat_interval_ms {
                return;
            }
        }
        self.last_heartbeat_ms = Some(now_ms);
        let member = matches!(self.state, State::Member | State::TakingOver { .. });
        let master = match self.state {
            State::Member => self.view.as_ref().map(|v| v.master),
            _ => None,
        };
        let view_id = self.view.as_ref().map_or(0, |v| v.id);
        let incarnation = self.cfg.incarnation;
        let leased = self.is_master() && self.has_lease(now_ms);
        let disk_vote = self.disk_vote(now_ms) == 1;
        let peers: Vec<NodeId> = self.peers.keys().copied().collect();
        for p in peers {
            let (echo, lease_left_ms) = self.echo_for(p, now_ms);
            let heard = self.peers.get(&p).and_then(|peer| {
                Some(Echo {
                    incarnation: peer.incarnation?,
                    stamp_ms: peer.stamp_heard_ms?,
                })
            });
            self.send(
                p,
                Message::Heartbeat {
                    incarnation,
                    view_id,
                    master,
                    member,
                    stamp_ms: now_ms,
                    echo,
                    lease_left_ms,
                    max_view: self.max_view_seen,
                    member_ago_ms: match self.state {
                        State::Member | State::TakingOver { .. } => Some(0),
                        _ => self.was_member_ms.map(|t| now_ms.saturating_sub(t)),
                    },
                    txns: self.txn_state_for(p),
                    leased,
                    heard,
                    disk_vote,
                    applied: self.applied_for(p),
                },
            );
        }
    }

    /// Whether a peer's heartbeat that says it heard `heard` from this node left
    /// within a heartbeat timeout of now: sent after that stamp, on this node's
    /// clock (a heartbeat buffered through a partition echoes an old stamp).
    fn heard_lately(&self, now_ms: u64, heard: Option<Echo>) -> bool {
        heard.is_some_and(|e| {
            e.incarnation == self.cfg.incarnation
                && e.stamp_ms <= now_ms
                && now_ms - e.stamp_ms <= self.cfg.heartbeat_timeout_ms
        })
    }

    /// Called with every event, before it is handled: a node that handled no event
    /// for longer than a heartbeat interval did not run (SIGSTOP, a host or VM
    /// stall, a control thread held up), while its peers' heartbeats and answers
    /// waited unread in its sockets. That time, less the interval, is not counted
    /// as their silence: the peers' last-heard times move on by it, so the first
    /// tick after the stall does not find every peer gone before their queued
    /// heartbeats are read. (Counting the interval keeps a node that is merely
    /// slow, every event a little late, finding a dead peer: its silence still
    /// grows by an interval per gap.) Only this liveness judgement moves, and
    /// only later (a peer that really died is found at most one heartbeat
    /// timeout after the stall); a
    /// lost node's fence, which counts from when it was last heard, only grows.
    /// Leases, the reply timeout (longer than a default lease) and a takeover's
    /// deadlines stay on the real clock.
    pub(super) fn count_out_own_stall(&mut self, now_ms: u64) {
        let stalled_ms = now_ms.saturating_sub(self.clock_ms);
        let uncounted_ms = stalled_ms.saturating_sub(self.cfg.heartbeat_interval_ms);
        if uncounted_ms == 0 {
            return;
        }
        let line = format!(
            "node {}: did not run for {stalled_ms} ms (frozen or stalled); {uncounted_ms} ms of it is not counted as its peers' silence",
            self.name(self.cfg.me)
        );
        self.log(log::Level::Warn, line);
        self.last_stall = Some((now_ms, stalled_ms));
        for p in self.peers.values_mut() {
            if let Some(t) = p.last_heard_ms.as_mut() {
                *t = t.saturating_add(uncounted_ms).min(now_ms);
            }
        }
    }

    fn detect_silent_peers(&mut self, now_ms: u64) {
        let timeout_ms = self.cfg.heartbeat_timeout_ms;
        let silent: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(_, p)| !p.gone && p.last_heard_ms.is_some_and(|t| now_ms > t + timeout_ms))
            .map(|(&id, _)| id)
            .collect();
        for p in silent {
            self.on_peer_gone(now_ms, p, "no heartbeat within the timeout");
        }
    }

    /// Forms a new cluster when nobody else is a member, this node has listened for
    /// `form_wait_ms`, and no live unjoined peer has a lower id.
    fn maybe_form(&mut self, now_ms: u64, since_ms: u64) {
        // Set again below when the quorum disk's vote is the one missing.
        self.qdisk.form_wanted = false;
        if now_ms < since_ms + self.cfg.form_wait_ms || self.stopping {
            return;
        }
        // A cluster seen lately may have a master whose lease (and disk write in
        // flight) has not run out yet: a new cluster forms only after it has.
        if self
            .last_cluster_ms
            .is_some_and(|t| now_ms < t + self.cfg.lease_wait_ms())
        {
            return;
        }
        // The external monitor (if any) denies quorum: no cluster forms here.
        if let Some(reason) = self.monitor_reason() {
            if self.quorum_reason.as_deref() != Some(reason.as_str()) {
                log::warn!("{reason}; not forming a cluster");
                self.quorum_reason = Some(reason);
            }
            return;
        }
        let me = self.cfg.me;
        let timeout_ms = self.cfg.heartbeat_timeout_ms;
        let alive = |p: &Peer| !p.gone && p.last_heard_ms.is_some_and(|t| now_ms <= t + timeout_ms);
        let blocked = self
            .peers
            .iter()
            .any(|(&id, p)| alive(p) && (p.member || id < me));
        if blocked {
            return;
        }
        // Only where a majority of the votes is alive: a minority never forms a
        // cluster of its own (it would hand out what the majority hands out).
        // A majority with the quorum disk's vote: the disk is acquired first
        // (while it is, nobody else counts it: docs/PROTOCOL.md).
        let alive_ids = self
            .peers
            .iter()
            .filter(|(_, p)| alive(p))
            .map(|(&id, _)| id)
            .chain([me]);
        let votes = self.votes_of(alive_ids);
        let q = self.quorum();
        if !q.reached(votes) && self.cfg.quorum_disk && q.reached(votes + 1) {
            self.qdisk.form_wanted = true;
        }
        if !q.reached(votes + self.disk_vote(now_ms)) {
            let reason = self.no_quorum_reason(now_ms);
            if self.quorum_reason.as_deref() != Some(reason.as_str()) {
                log::warn!("{reason}; not forming a cluster");
                self.quorum_reason = Some(reason);
            }
            return;
        }
        log::info!("node {}: no cluster found; forming one", self.name(me));
        self.state = State::Forming;
        self.out.push(Action::ReadDisks);
    }

    fn finish_forming(&mut self, now_ms: u64, result: Result<Option<DiskRecord<M>>, String>) {
        let me = self.cfg.me;
        match result {
            Ok(Some(record)) => {
                self.committed = Committed {
                    txn: record.txn,
                    config: record.config,
                }
            }
            Ok(None) => {
                self.committed = Committed {
                    txn: TxnId::default(),
                    config: M::default(),
                }
            }
            Err(e) => {
                let line = format!("node {}: cannot read the configuration from the disks: {e}; not forming a cluster", self.name(me));
                self.log(log::Level::Error, line);
                self.state = State::Discovering { since_ms: now_ms };
                return;
            }
        }
        // View ids keep growing across the cluster's lives, so a transaction id
        // (view, n) of this life never equals the one on the disks.
        let view = self.make_view(
            self.next_view_id(self.max_view_seen.max(self.committed.txn.view)),
            vec![me],
        );
        self.state = State::Member;
        self.record_membership(now_ms);
        self.master = Some(MasterState::new());
        self.out.push(Action::KernelLoad {
            config: self.committed.config.clone(),
        });
        // Formed from the disks: what it loaded is on them.
        self.recovery_durable(self.committed.txn);
        self.install_view(now_ms, view);
        let line = format!(
            "node {}: formed the cluster as master (view {}, configuration seq {})",
            self.name(me),
            self.max_view_seen,
            self.committed.config.seq()
        );
        self.log(log::Level::Info, line);
        // Before any join offer: a held word leaves its disks out of them.
        self.release_given_up(now_ms);
    }

    pub(super) fn on_message(&mut self, now_ms: u64, from: NodeId, msg: Message) {
        if !self.peers.contains_key(&from) {
            log::warn!(
                "node {}: message {} from unknown node {from} ignored",
                self.cfg.me,
                msg.kind()
            );
            return;
        }
        // A peer the external monitor leaves out is behind a cut link for this node.
        if !self.monitor_admits(from) {
            log::debug!(
                "node {}: message {} from node {from} ignored: the cluster monitor counts it out",
                self.cfg.me,
                msg.kind()
            );
            return;
        }
        if let Message::Heartbeat { incarnation, .. } | Message::JoinRequest { incarnation } = msg {
            if !self.note_incarnation(now_ms, from, incarnation) {
                return;
            }
        }
        let Some(peer) = self.peers.get_mut(&from) else {
            return;
        };
        peer.last_heard_ms = Some(now_ms);
        peer.gone = false;
        match msg {
            msg @ Message::Heartbeat { .. } => self.on_heartbeat(now_ms, from, msg),
            Message::Forward { request, body } => {
                self.master_on_forward(now_ms, from, request, body)
            }
            Message::Outcome {
                request,
                result,
                kind,
                node,
            } => self.on_outcome(from, request, result, kind, node),
            Message::Check {
                txn,
                change,
                origin,
                base,
            } => self.slave_on_check(now_ms, from, txn, change, origin, base),
            Message::CheckReply { txn, result, kind } => {
                // An older slave's refusal (no kind) is a refusal.
                let result = result
                    .map_err(|e| RequestError::unplaced(kind.unwrap_or(ErrorKind::Refused), e));
                self.master_on_check_reply(now_ms, from, txn, result)
            }
            Message::Prepare { txn } => self.slave_on_prepare(from, txn),
            Message::PrepareReply { txn, result } => {
                self.master_on_prepare_reply(now_ms, from, txn, result)
            }
            Message::Commit { txn } => self.slave_on_commit(from, txn),
            Message::CommitAck { txn } => self.master_on_commit_ack(now_ms, from, txn),
            Message::Applied { txn } => self.master_on_applied(from, txn),
            Message::Abort { txn } => self.slave_on_abort(from, txn),
            Message::JoinRequest { .. } => self.master_on_join_request(now_ms, from),
            Message::JoinOffer {
                join,
                config,
                config_txn,
                disks,
            } => self.joiner_on_offer(now_ms, from, join, &config, config_txn, disks),
            Message::JoinReady { join } => self.master_on_join_ready(now_ms, from, join),
            Message::JoinAbandon { join, reason } => {
                self.master_on_join_abandon(now_ms, from, join, reason)
            }
            Message::TakeoverQuery {
                master,
                incarnation,
            } => self.on_takeover_query(now_ms, from, master, incarnation),
            Message::TakeoverInfo {
                view,
                granted,
                master_silent_ms,
                vote_kept,
            } => self.on_takeover_info(now_ms, from, view, granted, master_silent_ms, vote_kept),
            Message::View {
                view,
                config_seq,
                last_txn,
                reasons,
            } => self.on_view(now_ms, from, view, config_seq, last_txn, reasons),
            msg @ (Message::Fence { .. }
            | Message::FenceReply { .. }
            | Message::Release { .. }
            | Message::ReleaseReply { .. }) => self.on_resync_message(now_ms, from, msg),
        }
    }

    /// The resync fences' messages (`core::resync`).
    fn on_resync_message(&mut self, now_ms: u64, from: NodeId, msg: Message) {
        match msg {
            Message::Fence {
                token,
                dg,
                volume,
                plex,
            } => self.on_fence(now_ms, from, token, dg, volume, plex),
            Message::FenceReply { token, result } => {
                self.copier_on_fence_reply(now_ms, from, token, result)
            }
            Message::Release { token } => self.on_release(now_ms, from, token),
            Message::ReleaseReply { token, intact } => {
                self.copier_on_release_reply(now_ms, from, token, intact)
            }
            _ => {}
        }
    }

    /// Notes the incarnation a peer's heartbeat or join request carries: false when it
    /// comes from an older start (the message is ignored); a newer start resets the
    /// peer's clock and confirmations and counts as the old start's loss.
    fn note_incarnation(&mut self, now_ms: u64, from: NodeId, incarnation: u64) -> bool {
        let Some(peer) = self.peers.get_mut(&from) else {
            return false;
        };
        if peer.incarnation.is_some_and(|i| incarnation < i) {
            log::debug!(
                "node {}: message from an older incarnation of node {from} ignored",
                self.cfg.me
            );
            return false;
        }
        let restarted = peer.incarnation.is_some_and(|i| i < incarnation);
        if peer.incarnation != Some(incarnation) {
            // A new start: its clock and its confirmations start again.
            peer.stamp_heard_ms = None;
            peer.confirmed_ms = None;
        }
        peer.incarnation = Some(incarnation);
        peer.heard_incarnation = Some(incarnation);
        if restarted {
            self.on_peer_gone(now_ms, from, "it restarted");
        }
        true
    }

    /// A peer's heartbeat: what it says of itself and its view, its lease stamps, then
    /// succession, joining, healing, the master's transaction state and discovery.
    fn on_heartbeat(&mut self, now_ms: u64, from: NodeId, msg: Message) {
        let Message::Heartbeat {
            incarnation,
            view_id,
            master,
            member,
            stamp_ms,
            echo,
            lease_left_ms,
            max_view,
            member_ago_ms,
            txns,
            leased,
            heard,
            disk_vote,
            applied,
            ..
        } = msg
        else {
            return;
        };
        self.max_view_seen = self.max_view_seen.max(max_view);
        let me = self.cfg.me;
        if let Some(ago) = member_ago_ms {
            let t = now_ms.saturating_sub(ago);
            self.last_cluster_ms = Some(self.last_cluster_ms.map_or(t, |l| l.max(t)));
            if !(member && master == Some(me)) {
                if let Some(peer) = self.peers.get_mut(&from) {
                    peer.other_cluster_ms = Some(peer.other_cluster_ms.map_or(t, |l| l.max(t)));
                }
            }
        }
        if let Some(peer) = self.peers.get_mut(&from) {
            peer.view_id = view_id;
            peer.master = master;
            peer.member = member;
            peer.disk_vote = disk_vote;
        }
        self.on_heartbeat_lease(now_ms, from, stamp_ms, echo, lease_left_ms);
        let mine = self.view.as_ref().map(|v| (v.id, v.master));
        if let Some((_, my_master)) = mine {
            if self.heartbeat_succession(now_ms, from, my_master, master, member) {
                return;
            }
        }
        self.heartbeat_while_joining(now_ms, from, master, member);
        if self.is_master() && member && master == Some(me) {
            self.master_resend_view(now_ms, from, view_id);
            if let Some(txn) = applied {
                self.master_on_applied(from, txn);
            }
        }
        if let Some((my_view, my_master)) = mine {
            // Healing: another master leads a newer view (it took over while this
            // node was cut off or frozen) and holds its lease. Leave and join it. A
            // master without a lease (one cut off that numbered views nobody else
            // received) gives way itself.
            if matches!(self.state, State::Member)
                && member
                && master == Some(from)
                && from != my_master
                && view_id > my_view
                && leased
                && self.heard_lately(now_ms, heard)
            {
                self.give_way_to(now_ms, from, view_id, my_view);
                return;
            }
        }
        self.max_view_seen = self.max_view_seen.max(view_id);
        if let Some(state) = txns {
            let from_my_master = matches!(self.state, State::Member)
                && !self.is_master()
                && member
                && master == Some(from)
                && !self.suspected.contains(&from)
                && self.view.as_ref().is_some_and(|v| {
                    v.master == from && v.id == view_id && v.incarnation(from) == Some(incarnation)
                });
            if from_my_master {
                let _ = self.slave_sync(now_ms, from, state);
            }
        }
        if matches!(self.state, State::Discovering { .. })
            && member
            && master == Some(from)
            && !self.stopping
        {
            self.request_join(now_ms, from);
        }
    }

    /// Leaves this node's view for the newer one `from` leads (a master abdicates).
    fn give_way_to(&mut self, now_ms: u64, from: NodeId, view_id: u64, my_view: u64) {
        let reason = format!(
            "node {} leads newer view {view_id} (this node held view {my_view}); rejoining",
            self.name(from)
        );
        if self.is_master() {
            self.master_abdicate(now_ms, reason);
        } else {
            self.leave_cluster(now_ms, reason);
        }
    }

    /// A discovering node asks master `from` to let it join.
    fn request_join(&mut self, now_ms: u64, from: NodeId) {
        if !self.monitor_quorate() {
            return;
        }
        self.state = State::Joining {
            master: from,
            step: JoinStep::Requested,
        };
        self.joining_since_ms = now_ms;
        // The join loads the master's configuration whole: what this data plane
        // applied before says nothing of the transactions of the view it joins
        // (a view id may come again after its master restarted).
        self.applied_txn = None;
        let incarnation = self.cfg.incarnation;
        self.send(from, Message::JoinRequest { incarnation });
    }

    /// Succession, on a heartbeat while this slave has a view: a member out of the
    /// view cannot be the successor this node waits for; a master that abdicated is
    /// suspected. True when it acted (the heartbeat needs nothing more).
    fn heartbeat_succession(
        &mut self,
        now_ms: u64,
        from: NodeId,
        my_master: NodeId,
        master: Option<NodeId>,
        member: bool,
    ) -> bool {
        if !matches!(self.state, State::Member) || self.is_master() {
            return false;
        }
        // My master says it is no master any more (it abdicated): it is
        // gone as far as succession goes.
        let abdicated = !member || master != Some(from);
        let left_my_view = !member || master.is_some_and(|m| m != my_master);
        let in_my_view = self.view.as_ref().is_some_and(|v| v.contains(from));
        // While this node waits for a successor, a member that says it
        // is out of this view (or follows another master) cannot be it.
        if from != my_master
            && in_my_view
            && left_my_view
            && self.suspected.contains(&my_master)
            && !self.suspected.contains(&from)
        {
            self.suspected.insert(from);
            self.maybe_take_over(now_ms);
            return true;
        }
        if from == my_master && abdicated && !self.suspected.contains(&from) {
            let line = format!(
                "node {}: master node {} is no longer master",
                self.name(self.cfg.me),
                self.name(from)
            );
            self.log(log::Level::Warn, line);
            self.suspected.insert(from);
            self.maybe_take_over(now_ms);
            return true;
        }
        false
    }

    /// A joiner whose master says it is no master any more listens again.
    fn heartbeat_while_joining(
        &mut self,
        now_ms: u64,
        from: NodeId,
        master: Option<NodeId>,
        member: bool,
    ) {
        if let State::Joining {
            master: joining, ..
        } = self.state
        {
            if joining == from && (!member || master != Some(from)) {
                log::info!(
                    "node {}: node {} is no longer master; listening again",
                    self.cfg.me,
                    from
                );
                self.state = State::Discovering { since_ms: now_ms };
            }
        }
    }

    /// A peer is gone: its connection broke or it fell silent.
    pub(super) fn on_peer_gone(&mut self, now_ms: u64, peer: NodeId, why: &str) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if p.gone {
            return;
        }
        p.gone = true;
        p.member = false;
        let line = format!(
            "node {}: node {} is gone ({why})",
            self.name(self.cfg.me),
            self.name(peer)
        );
        self.log(log::Level::Info, line);
        let in_view = self.view.as_ref().is_some_and(|v| v.contains(peer));
        match self.state {
            State::Member if self.is_master() => {
                if in_view {
                    self.master_remove_member(now_ms, peer, why);
                } else {
                    self.master_forget_joiner(now_ms, peer);
                }
            }
            State::Member if in_view => {
                self.suspected.insert(peer);
                self.maybe_take_over(now_ms);
            }
            State::TakingOver { ref mut step } => {
                if let TakeoverStep::Collecting { awaiting, .. } = step {
                    awaiting.remove(&peer);
                }
                if in_view {
                    self.suspected.insert(peer);
                }
                self.maybe_finish_collecting(now_ms);
            }
            State::Joining { master, .. } if master == peer => {
                log::info!(
                    "node {}: master {peer} gone while joining; listening again",
                    self.cfg.me
                );
                self.state = State::Discovering { since_ms: now_ms };
            }
            _ => {}
        }
    }

    /// A slave whose master is gone takes over if it is the designated successor
    /// and a majority of the votes is alive.
    fn maybe_take_over(&mut self, now_ms: u64) {
        let Some(view) = self.view.clone() else {
            return;
        };
        if !self.suspected.contains(&view.master) {
            return;
        }
        if view.successor(&self.suspected) != Some(self.cfg.me) {
            return;
        }
        let me = self.cfg.me;
        let alive: Vec<NodeId> = self
            .reachable_peers(now_ms)
            .into_iter()
            .filter(|p| !self.suspected.contains(p))
            .chain([me])
            .collect();
        // With a quorum disk, a successor one vote short acquires it (below).
        let disk = u64::from(self.cfg.quorum_disk);
        if !self.quorum().reached(self.votes_of(alive) + disk) {
            let reason = format!(
                "{}; master node {} is gone and this node cannot take over",
                self.no_quorum_reason(now_ms),
                self.name(view.master)
            );
            self.quorum_reason = Some(truncate_reason(reason.clone()));
            self.leave_cluster(now_ms, reason);
            return;
        }
        self.granted = Some((view.master, me));
        self.deposed.insert(view.master);
        self.grants.clear();
        let line = format!(
            "node {}: master node {} is gone; taking over as its designated successor (view {}, gone: {:?})",
            self.name(self.cfg.me),
            self.name(view.master),
            view.id,
            self.suspected
        );
        self.log(log::Level::Warn, line);
        // A master that died in the middle of sending a view may have left some
        // nodes with a newer view than this one: ask every live node first.
        let heard_master_ms = self
            .peers
            .get(&view.master)
            .and_then(|p| p.last_heard_ms)
            .unwrap_or(0);
        self.takeover_round(now_ms, view, heard_master_ms, 0);
    }

    /// Takeover: asks every live node for its view and its vote (round 0), or for
    /// its vote again once the lost master's lease has run out (later rounds).
    fn takeover_round(&mut self, now_ms: u64, newest: View, heard_master_ms: u64, round: u32) {
        self.grants.clear();
        let awaiting: BTreeSet<NodeId> = self
            .peers
            .iter()
            .filter(|(id, p)| !p.gone && p.last_heard_ms.is_some() && !self.suspected.contains(id))
            .map(|(&id, _)| id)
            .collect();
        let master = newest.master;
        let incarnation = newest.incarnation(master).unwrap_or(0);
        for &p in &awaiting {
            self.send(
                p,
                Message::TakeoverQuery {
                    master,
                    incarnation,
                },
            );
        }
        self.state = State::TakingOver {
            step: TakeoverStep::Collecting {
                awaiting,
                newest,
                outsiders: BTreeSet::new(),
                heard_master_ms,
                started_ms: now_ms,
                round,
            },
        };
        self.maybe_finish_collecting(now_ms);
    }

    fn on_takeover_query(&mut self, now_ms: u64, from: NodeId, master: NodeId, incarnation: u64) {
        self.deferred_queries.retain(|q| q.0 != from);
        assert!(
            self.deferred_queries.len() < self.cfg.nodes.len(),
            "one query per asker"
        );
        self.deferred_queries.push((from, master, incarnation));
        self.answer_takeover_queries(now_ms);
    }

    /// Answers the takeover queries whose master this node has seen go (or never
    /// heard): no view from that master can still be on its way here.
    pub(super) fn answer_takeover_queries(&mut self, now_ms: u64) {
        if self.deferred_queries.is_empty() {
            return;
        }
        let view = match self.state {
            State::Member | State::TakingOver { .. } => self.view.clone(),
            _ => None,
        };
        let queries = std::mem::take(&mut self.deferred_queries);
        for (from, master, incarnation) in queries {
            let seen_gone = self.peers.get(&master).is_none_or(|p| {
                p.gone
                    || p.last_heard_ms.is_none()
                    || p.incarnation.is_some_and(|i| i > incarnation)
                    || !p.member
                    || p.master != Some(master)
            });
            if seen_gone {
                // One vote per lost master, to one successor at a time: another
                // asker gets it only once the one it went to is gone.
                // Two successors that each kept their own vote would both fail:
                // one taking over itself yields to an asker with a lower id.
                // A node that follows (or is) a newer start of that master is in
                // a newer cluster: the asker's view is stale, it gets no vote.
                let newer_start = matches!(self.state, State::Member)
                    && self.view.as_ref().is_some_and(|v| {
                        v.master == master && v.incarnation(master) != Some(incarnation)
                    });
                let vote_kept = self.granted == Some((master, from));
                let granted = match self.granted {
                    _ if newer_start => false,
                    Some((m, s)) if m == master && s == self.cfg.me => from < s,
                    Some((m, s)) if m == master && s != from => {
                        self.peers.get(&s).is_none_or(|p| p.gone)
                    }
                    _ => true,
                };
                if granted {
                    self.granted = Some((master, from));
                    self.deposed.insert(master);
                    self.hold_for_takeover(now_ms);
                }
                let master_silent_ms = self
                    .peers
                    .get(&master)
                    .and_then(|p| p.last_heard_ms)
                    .map(|t| now_ms.saturating_sub(t));
                self.send(
                    from,
                    Message::TakeoverInfo {
                        view: view.clone(),
                        granted,
                        master_silent_ms,
                        vote_kept: vote_kept && granted,
                    },
                );
            } else {
                self.deferred_queries.push((from, master, incarnation));
            }
        }
    }

    fn on_takeover_info(
        &mut self,
        now_ms: u64,
        from: NodeId,
        view: Option<View>,
        granted: bool,
        master_silent_ms: Option<u64>,
        vote_kept: bool,
    ) {
        let State::TakingOver {
            step:
                TakeoverStep::Collecting {
                    awaiting,
                    newest,
                    outsiders,
                    heard_master_ms,
                    round,
                    ..
                },
        } = &mut self.state
        else {
            return;
        };
        if !awaiting.remove(&from) {
            return;
        }
        if granted {
            self.grants.insert(from);
            // A vote kept since an earlier round: the wait already covers the last
            // time that voter could have confirmed the master (re-reading its
            // silence would only add clock drift and message delay each round).
            let known = *round > 0 && vote_kept;
            if let Some(silent) = master_silent_ms.filter(|_| !known) {
                // The answer left at or before now: the sender last heard the
                // master no later than now - silent, on this node's clock.
                *heard_master_ms = (*heard_master_ms).max(now_ms.saturating_sub(silent));
            }
        }
        match view {
            None => {
                outsiders.insert(from);
            }
            Some(v) if v.is_well_formed() && v.id > newest.id => *newest = v,
            Some(_) => {}
        }
        self.maybe_finish_collecting(now_ms);
    }

    /// Takeover, step 0: every live node answered. Base the takeover on the newest
    /// view; go on only if this node is its designated successor.
    fn maybe_finish_collecting(&mut self, now_ms: u64) {
        let State::TakingOver {
            step: TakeoverStep::Collecting { awaiting, .. },
        } = &self.state
        else {
            return;
        };
        if !awaiting.is_empty() {
            return;
        }
        let State::TakingOver {
            step:
                TakeoverStep::Collecting {
                    newest,
                    outsiders,
                    heard_master_ms,
                    round,
                    started_ms,
                    ..
                },
        } = std::mem::replace(&mut self.state, State::Member)
        else {
            unreachable!()
        };
        let me = self.cfg.me;
        let Some(mine) = self.view.clone() else {
            unreachable!("taking over without a view")
        };
        self.max_view_seen = self.max_view_seen.max(newest.id);
        if !self.takeover_base_holds(now_ms, &newest, &mine) {
            return;
        }
        self.suspected.insert(newest.master);
        self.suspected.extend(outsiders);
        self.suspected.retain(|&s| s != me);
        let gone: Vec<NodeId> = newest
            .members
            .iter()
            .copied()
            .filter(|m| self.peers.get(m).is_some_and(|p| p.gone))
            .collect();
        self.suspected.extend(gone);
        let successor = newest.successor(&self.suspected);
        if successor != Some(me) {
            log::info!(
                "node {me}: not the designated successor in view {}; waiting for it",
                newest.id
            );
            self.awaited_successor = successor.map(|s| (s, newest.incarnation(s)));
            return;
        }
        self.takeover_count_votes(now_ms, newest, heard_master_ms, round, started_ms);
    }

    /// Takeover: whether the newest view the answers hold is still this node's to take
    /// over from (false: it rejoined instead, or a newer live master leads).
    fn takeover_base_holds(&mut self, now_ms: u64, newest: &View, mine: &View) -> bool {
        let me = self.cfg.me;
        let master_alive = self
            .peers
            .get(&newest.master)
            .is_some_and(|p| !p.gone && !self.suspected.contains(&newest.master));
        if newest.id > mine.id && !newest.contains(me) {
            let reason = format!(
                "node {}: view {} of master node {} is newer than this node's view {} and leaves this node out; rejoining",
                self.name(me),
                newest.id,
                self.name(newest.master),
                mine.id
            );
            self.leave_cluster(now_ms, reason);
            return false;
        }
        if newest.id > mine.id && master_alive {
            log::info!(
                "node {me}: view {} of master {} is newer; not taking over",
                newest.id,
                newest.master
            );
            return false;
        }
        if self.max_view_seen > newest.id {
            // A live node has seen a view newer than every view the answers hold:
            // a newer master formed a cluster or took over since (this node was
            // frozen or cut off), wrote the disks, and may have committed over the
            // base view's pending transaction. That transaction and the base view
            // are no longer this node's to complete: it rejoins instead.
            let reason = format!(
                "node {}: view {} is newer than view {} this takeover from master node {} would build on; rejoining instead",
                self.name(me),
                self.max_view_seen,
                newest.id,
                self.name(newest.master)
            );
            self.leave_cluster(now_ms, reason);
            return false;
        }
        true
    }

    /// Takeover: with a majority's votes (or the quorum disk's), wait out the lost
    /// master's lease, then read the disks; else leave.
    fn takeover_count_votes(
        &mut self,
        now_ms: u64,
        newest: View,
        heard_master_ms: u64,
        round: u32,
        started_ms: u64,
    ) {
        let me = self.cfg.me;
        let mine = (self.granted.map(|g| g.1) == Some(me)).then_some(me);
        let voters = self.grants.iter().copied().chain(mine);
        let votes = self.votes_of(voters);
        let q = self.quorum();
        if !q.reached(votes + self.disk_vote(now_ms))
            && self.cfg.quorum_disk
            && q.reached(votes + 1)
        {
            // One vote short: acquire the quorum disk, then ask for the votes
            // again (the voters' votes hold for a lease; acquiring takes longer).
            let line = format!(
                "node {}: the takeover of master node {} is one vote short; acquiring the quorum disk",
                self.name(me),
                self.name(newest.master)
            );
            self.log(log::Level::Warn, line);
            self.view = Some(newest);
            self.state = State::TakingOver {
                step: TakeoverStep::AcquiringDisk {
                    heard_master_ms,
                    round,
                    since_ms: now_ms,
                },
            };
            return;
        }
        if !q.reached(votes + self.disk_vote(now_ms)) {
            let reason = format!(
                "{}; only {} of the live nodes gave this takeover their vote",
                self.no_quorum_reason(now_ms),
                self.grants.len()
            );
            self.quorum_reason = Some(truncate_reason(reason.clone()));
            self.leave_cluster(now_ms, reason);
            return;
        }
        // The lost master's lease was last confirmed no later than the newest time
        // a voter heard it; every lease it capped ends with it.
        let until_ms = heard_master_ms.min(now_ms) + self.cfg.lease_wait_ms();
        self.view = Some(newest);
        if now_ms >= until_ms {
            // A majority's votes, given now that the lease has run out: read the
            // disks at once. Votes given before a wait are confirmed again after
            // it: a voter may have restarted (forgetting its vote) or left meanwhile
            // and, with this node frozen or cut off, helped a new cluster form and
            // commit; its answer then shows the newer view.
            log::info!(
                "node {me}: takeover confirmed by a majority (round {round}); reading the disks"
            );
            self.state = State::TakingOver {
                step: TakeoverStep::ReadingDisks {
                    confirmed_ms: now_ms,
                    asked_ms: started_ms,
                },
            };
            self.out.push(Action::ReadDisks);
            return;
        }
        if round + 1 >= MAX_TAKEOVER_ROUNDS {
            let reason = format!(
                "node {}: the lease of master node {} was still confirmed after {round} rounds of takeover votes; giving up",
                self.name(me),
                self.name(self.view.as_ref().map_or(0, |v| v.master))
            );
            self.leave_cluster(now_ms, reason);
            return;
        }
        log::info!(
            "node {me}: takeover granted by a majority; waiting {} ms for the lost master's lease to run out",
            until_ms.saturating_sub(now_ms)
        );
        self.state = State::TakingOver {
            step: TakeoverStep::WaitingLease { until_ms, round },
        };
        self.on_tick_takeover(now_ms);
    }

    /// Takeover: once the lost master's lease has surely run out, read the disks;
    /// a takeover whose answers do not come (a partition) is given up.
    fn on_tick_takeover(&mut self, now_ms: u64) {
        if let State::TakingOver {
            step: TakeoverStep::Collecting { started_ms, .. },
        } = self.state
        {
            if now_ms >= started_ms + 2 * self.cfg.heartbeat_timeout_ms {
                let reason = format!(
                    "{}; the live nodes did not answer the takeover within {} ms",
                    self.no_quorum_reason(now_ms),
                    2 * self.cfg.heartbeat_timeout_ms
                );
                self.leave_cluster(now_ms, reason);
                return;
            }
        }
        if let State::TakingOver {
            step:
                TakeoverStep::AcquiringDisk {
                    heard_master_ms,
                    round,
                    since_ms,
                },
        } = self.state
        {
            if self.disk_vote_until(now_ms).is_some() {
                let Some(base) = self.view.clone() else {
                    unreachable!("taking over without a view")
                };
                self.takeover_round(now_ms, base, heard_master_ms, round + 1);
                return;
            }
            // Acquiring takes two waits and a settle when its holder is gone; a
            // holder that keeps renewing (the lost master on the other side of a
            // partition) keeps it.
            let bound = 3 * self.cfg.lease_wait_ms() + 2 * self.cfg.heartbeat_timeout_ms;
            if now_ms >= since_ms + bound || round + 1 >= MAX_TAKEOVER_ROUNDS {
                let reason = format!(
                    "{}; master node {} is gone and this node could not acquire the quorum disk within {bound} ms",
                    self.no_quorum_reason(now_ms),
                    self.name(self.view.as_ref().map_or(0, |v| v.master))
                );
                self.quorum_reason = Some(truncate_reason(reason.clone()));
                self.leave_cluster(now_ms, reason);
            }
            return;
        }
        if let State::TakingOver {
            step: TakeoverStep::WaitingLease { until_ms, round },
        } = self.state
        {
            if now_ms >= until_ms {
                let Some(base) = self.view.clone() else {
                    unreachable!("taking over without a view")
                };
                let heard_master_ms = until_ms - self.cfg.lease_wait_ms();
                self.takeover_round(now_ms, base, heard_master_ms, round + 1);
            }
        }
    }

    pub(super) fn on_disks_read(
        &mut self,
        now_ms: u64,
        result: Result<Option<DiskRecord<M>>, String>,
    ) {
        match self.state {
            State::Forming => self.finish_forming(now_ms, result),
            State::TakingOver {
                step:
                    TakeoverStep::ReadingDisks {
                        confirmed_ms,
                        asked_ms,
                    },
            } => self.takeover_decide(now_ms, confirmed_ms, asked_ms, result),
            State::Member if self.master.as_ref().is_some_and(|ms| ms.checking.is_some()) => {
                self.master_disks_verified(now_ms, result)
            }
            _ => log::debug!("node {}: stale DisksRead ignored", self.cfg.me),
        }
    }

    /// Takeover, step 1: decide the fate of the transaction in flight. It completes if
    /// this node received COMMIT (then it is already in `committed`) or if the disks
    /// already hold it (the old master wrote them after the commit point); otherwise
    /// it is aborted.
    fn takeover_decide(
        &mut self,
        now_ms: u64,
        confirmed_ms: u64,
        asked_ms: u64,
        result: Result<Option<DiskRecord<M>>, String>,
    ) {
        let me = self.cfg.me;
        if now_ms > confirmed_ms + self.cfg.heartbeat_timeout_ms {
            // Frozen or stalled since the votes came: a new cluster may have formed
            // meanwhile. Writing the disks now could overwrite what it committed.
            let reason = format!(
                "node {}: the disks were read {} ms after a majority confirmed the takeover (this node was frozen or stalled); giving it up",
                self.name(me),
                now_ms - confirmed_ms
            );
            self.leave_cluster(now_ms, reason);
            return;
        }
        let disk = match result {
            Ok(record) => record,
            Err(e) => {
                let line = format!(
                    "node {}: cannot read the disks during takeover: {e}",
                    self.name(me)
                );
                self.log(log::Level::Error, line);
                None
            }
        };
        self.takeover_settle_txn(disk.as_ref());
        if let Some(d) = disk {
            if d.config.seq() > self.committed.config.seq() {
                let line = format!(
                    "node {}: the disks hold configuration seq {} (transaction {}), newer than this node's seq {}; loading it",
                    self.name(me),
                    d.config.seq(),
                    d.txn,
                    self.committed.config.seq()
                );
                self.log(log::Level::Error, line);
                self.committed = Committed {
                    txn: d.txn,
                    config: d.config,
                };
                self.out.push(Action::KernelLoad {
                    config: self.committed.config.clone(),
                });
            }
        }
        // This node is about to write its configuration to the disks; until that
        // write lands (`finish_takeover`) an open it holds stays undurable.
        self.state = State::TakingOver {
            step: TakeoverStep::WritingDisks,
        };
        // The voters count as members of this takeover for a lease after they
        // answered (no cluster forms with them meanwhile), and they answered after
        // the queries left: the write must not reach a disk after that.
        self.out.push(Action::WriteDisks {
            record: DiskRecord {
                txn: self.committed.txn,
                config: self.committed.config.clone(),
            },
            // With the quorum disk's vote: while this node's hold of it lasts.
            deadline_ms: (asked_ms + self.cfg.lease_ms)
                .min(self.disk_vote_until(now_ms).unwrap_or(u64::MAX)),
            lease_extends: false,
        });
    }

    /// Takeover: the transaction this node holds completes if the disks hold it (the
    /// lost master wrote them after the commit point), else it is aborted.
    fn takeover_settle_txn(&mut self, disk: Option<&DiskRecord<M>>) {
        let me = self.cfg.me;
        let Some(st) = self.slave_txn.take() else {
            return;
        };
        if st.staged
            && st.phase == txn::SlavePhase::Prepared
            && disk.is_some_and(|d| d.txn == st.id && d.config.seq() == st.new_config.seq())
        {
            let line = format!(
                "node {}: transaction {} is on the disks; completing it",
                self.name(me),
                st.id
            );
            self.log(log::Level::Warn, line);
            self.commit_locally(st);
        } else {
            let line = format!(
                    "node {}: transaction {} did not reach the commit point before the master was lost; aborting it",
                    self.name(me),
                    st.id
                );
            self.log(log::Level::Warn, line);
            if st.staged {
                self.out.push(Action::KernelAbort { txn: st.id });
            }
        }
    }

    /// Takeover, step 2: the disks hold this node's configuration (rewritten,
    /// idempotently); install the new view, which tells the slaves the outcome.
    pub(super) fn finish_takeover(&mut self, now_ms: u64, result: Result<(), String>) {
        let me = self.cfg.me;
        if let Err(e) = result {
            if e.contains(WRITE_DEADLINE) || e.contains(NEWER_EPOCH) {
                // Frozen or stalled with the write queued, or replaced: the votes
                // no longer hold and another master may have formed.
                let reason = format!(
                    "node {}: rewriting the configuration during takeover: {e}; giving the takeover up",
                    self.name(me)
                );
                self.leave_cluster(now_ms, reason);
                return;
            }
            let line = format!(
                "node {}: rewriting the configuration during takeover failed: {e}",
                self.name(me)
            );
            self.log(log::Level::Error, line);
        }
        let Some(old) = self.view.clone() else {
            unreachable!("taking over without a view");
        };
        let members: Vec<NodeId> = old
            .members
            .iter()
            .copied()
            .filter(|&m| m == me || (m != old.master && !self.suspected.contains(&m)))
            .collect();
        let view = self.make_view(self.next_view_id(old.id.max(self.max_view_seen)), members);
        self.state = State::Member;
        self.record_membership(now_ms);
        let mut ms = MasterState::new();
        // The takeover read the disks with a majority's votes and wrote its
        // configuration on them.
        ms.majority_checked = true;
        self.master = Some(ms);
        self.suspected.clear();
        // The takeover's write put this node's configuration on the disks.
        self.recovery_durable(self.committed.txn);
        self.install_view(now_ms, view);
        self.broadcast_view(&old.members);
        self.resolve_forwards(old.master);
        let line = format!(
            "node {}: took over as master from node {} (view {})",
            self.name(me),
            self.name(old.master),
            self.max_view_seen
        );
        self.log(log::Level::Warn, line);
        self.master_next(now_ms);
    }

    /// The id of the next view this node makes: the smallest id above `above` in
    /// this node's residue class. With `N` configured nodes and this node the
    /// `i`-th of them by id (from 0), every view it makes has `id % N == i`, so two
    /// masters (one cut off and not yet aware of it, one that took over) can never
    /// number a view alike, and nor can their transactions (`TxnId` = view, n).
    pub(super) fn next_view_id(&self, above: u64) -> u64 {
        let n = self.cfg.nodes.len() as u64;
        let me = self.cfg.me;
        let i = self.cfg.nodes.iter().filter(|node| node.id < me).count() as u64;
        let first = above + 1;
        first + (i + n - first % n) % n
    }

    /// A view led by this node, with the incarnations this node knows.
    fn make_view(&self, id: u64, mut members: Vec<NodeId>) -> View {
        members.sort_unstable();
        members.dedup();
        let incarnations = members
            .iter()
            .map(|m| match self.peers.get(m) {
                Some(p) => p.incarnation.unwrap_or(0),
                None => self.cfg.incarnation,
            })
            .collect();
        View {
            id,
            master: self.cfg.me,
            members,
            incarnations,
        }
    }

    /// Installs `view` locally and tells the data plane. A member this node has
    /// heard with another incarnation than the view's has restarted: it is suspected.
    fn install_view(&mut self, now_ms: u64, view: View) {
        assert!(
            view.contains(self.cfg.me),
            "installing a view without this node"
        );
        assert!(
            self.view.as_ref().is_none_or(|v| v.id < view.id),
            "view ids only grow"
        );
        self.max_view_seen = self.max_view_seen.max(view.id);
        self.awaited_successor = None;
        let mut restarted = Vec::new();
        let mut alive = Vec::new();
        for (m, inc) in view.members.iter().zip(&view.incarnations) {
            if let Some(p) = self.peers.get_mut(m) {
                if p.last_heard_ms.is_none() {
                    p.last_heard_ms = Some(now_ms);
                }
                match p.incarnation {
                    // Restarted since the view was made, or gone.
                    Some(i) if i > *inc => restarted.push((*m, true)),
                    Some(i) if i == *inc && p.gone => restarted.push((*m, false)),
                    // Alive in the start the view has: a suspicion this node
                    // holds was about an older start.
                    Some(i) if i == *inc => alive.push(*m),
                    // The master knows a newer start than this node does.
                    _ => {
                        p.incarnation = Some(*inc);
                        p.gone = false;
                        p.last_heard_ms = Some(now_ms);
                        alive.push(*m);
                    }
                }
            }
        }
        self.suspected
            .retain(|s| view.contains(*s) && !alive.contains(s));
        if self.view.as_ref().map(|v| v.master) != Some(view.master) {
            self.slave_lease_until_ms = None;
        }
        self.deposed.clear();
        self.granted = None;
        self.grants.clear();
        self.quorum_reason = None;
        self.view_since_ms = now_ms;
        self.view = Some(view.clone());
        self.out.push(Action::ViewChanged { view });
        for (m, newer_start_alive) in restarted {
            if let Some(p) = self.peers.get_mut(&m) {
                p.gone = false;
            }
            self.on_peer_gone(now_ms, m, "gone or restarted since the view was made");
            if newer_start_alive {
                // The start in the view is gone; the newer one is not.
                if let Some(p) = self.peers.get_mut(&m) {
                    p.gone = false;
                }
            }
        }
    }

    /// Master: sends the current view to every other member, and to the members of
    /// the previous view left out of it (a live one learns it is out, and rejoins).
    pub(super) fn broadcast_view(&mut self, previous: &[NodeId]) {
        let Some(view) = self.view.clone() else {
            return;
        };
        let mut to: Vec<NodeId> = view.members.iter().chain(previous).copied().collect();
        to.sort_unstable();
        to.dedup();
        for m in to {
            if m != self.cfg.me {
                self.send_view(m, &view);
            }
        }
    }

    fn send_view(&mut self, to: NodeId, view: &View) {
        let reasons: Vec<(NodeId, String)> =
            self.reasons.iter().map(|(&k, v)| (k, v.clone())).collect();
        self.send(
            to,
            Message::View {
                view: view.clone(),
                config_seq: self.committed.config.seq(),
                last_txn: self.committed.txn,
                reasons,
            },
        );
    }

    /// Master: a member of its view heartbeats an older view of this master (the
    /// View message was lost while a link was cut, and nothing else would tell it):
    /// the view goes to it again. A heartbeat sent before the View arrived gets a
    /// duplicate, which the member ignores.
    fn master_resend_view(&mut self, now_ms: u64, from: NodeId, view_id: u64) {
        let Some(view) = self.view.clone() else {
            return;
        };
        if view_id < view.id
            && view.contains(from)
            && now_ms >= self.view_since_ms + self.cfg.heartbeat_interval_ms
        {
            log::info!(
                "node {}: node {from} still holds view {view_id}; sending view {} again",
                self.cfg.me,
                view.id
            );
            self.send_view(from, &view);
        }
    }

    /// Master: a new view with `members` and the next id.
    fn master_new_view(&mut self, now_ms: u64, members: Vec<NodeId>) {
        let old_members = self
            .view
            .as_ref()
            .map(|v| v.members.clone())
            .unwrap_or_default();
        let old_id = self.view.as_ref().map_or(0, |v| v.id);
        let view = self.make_view(self.next_view_id(old_id.max(self.max_view_seen)), members);
        self.install_view(now_ms, view);
        self.broadcast_view(&old_members);
    }

    /// Master: a member is gone. Cluster reconfiguration takes precedence over a
    /// transaction, except in its commit stage.
    pub(super) fn master_remove_member(&mut self, now_ms: u64, peer: NodeId, why: &str) {
        let Some(view) = self.view.clone() else {
            return;
        };
        let members: Vec<NodeId> = view
            .members
            .iter()
            .copied()
            .filter(|&m| m != peer)
            .collect();
        let line = format!("node {} left the cluster ({why})", self.name(peer));
        self.log(log::Level::Warn, line);
        let lease_expired = self.lease_until_ms().is_some_and(|until| now_ms >= until);
        if lease_expired
            || !self
                .quorum()
                .reached(self.votes_of(members.iter().copied()) + self.disk_vote(now_ms))
        {
            let what = if lease_expired {
                format!(
                    "node {}: its lease ran out {} ms ago (members holding a majority stopped confirming it)",
                    self.name(self.cfg.me),
                    now_ms.saturating_sub(self.lease_until_ms().unwrap_or(now_ms))
                )
            } else {
                self.no_quorum_reason(now_ms)
            };
            let reason = format!("{what}; node {} left ({why})", self.name(peer));
            self.master_abdicate(now_ms, reason);
            return;
        }
        self.fence_lost_node(now_ms, peer);
        self.recovery_member_lost(peer, view.incarnation(peer));
        self.master_new_view(now_ms, members);
        self.master_txn_member_lost(now_ms, peer);
        self.master_forget_joiner(now_ms, peer);
    }

    /// Master: `peer` is no longer joining (gone or restarted).
    fn master_forget_joiner(&mut self, now_ms: u64, peer: NodeId) {
        let Some(ms) = self.master.as_mut() else {
            return;
        };
        ms.joins.retain(|&j| j != peer);
        if ms.join.as_ref().is_some_and(|j| j.node == peer) {
            ms.join = None;
            ms.ready_join = None;
            if let Some(check) = ms.checking.as_mut() {
                check.join = None;
            }
            log::info!("node {}: join of node {peer} cancelled", self.cfg.me);
            self.master_advance(now_ms);
        }
        self.master_next(now_ms);
    }

    fn master_on_join_request(&mut self, now_ms: u64, from: NodeId) {
        if !self.is_master() {
            log::debug!(
                "node {}: JoinRequest from {from} ignored: not master",
                self.cfg.me
            );
            return;
        }
        if self.view.as_ref().is_some_and(|v| v.contains(from)) {
            // A member asking to join has restarted: it is gone first.
            self.master_remove_member(now_ms, from, "it restarted");
        }
        self.master_forget_joiner(now_ms, from);
        if let Some(ms) = self.master.as_mut() {
            assert!(
                ms.joins.len() < self.cfg.nodes.len(),
                "join queue holds each node at most once"
            );
            ms.joins.push_back(from);
        }
        self.master_next(now_ms);
    }

    /// Master: offers `node` the shared disk groups' configuration and their disks.
    pub(super) fn start_join(&mut self, node: NodeId) {
        let config = self.committed.config.encode();
        let mut disks = self.committed.config.shared_disks();
        let config_txn = self.committed.txn;
        let given_up = self.queued_given_up();
        let Some(ms) = self.master.as_mut() else {
            return;
        };
        if !given_up.is_empty() {
            log::warn!(
                "node {}: offering node {node} to join without disk(s) {}: a queued change records them failed",
                self.cfg.me,
                given_up.join(", ")
            );
            disks.retain(|d| !given_up.contains(d));
        }
        assert!(ms.join.is_none(), "one join at a time");
        ms.next_join += 1;
        let join = ms.next_join;
        ms.join = Some(txn::ActiveJoin { node, join });
        log::info!(
            "node {}: offering node {node} to join (join {join})",
            self.cfg.me
        );
        self.send(
            node,
            Message::JoinOffer {
                join,
                config,
                config_txn,
                disks,
            },
        );
    }

    fn master_on_join_ready(&mut self, now_ms: u64, from: NodeId, join: u64) {
        if !self.is_master() {
            return;
        }
        let Some(ms) = self.master.as_mut() else {
            return;
        };
        if ms.join != Some(txn::ActiveJoin { node: from, join }) || ms.ready_join == Some(join) {
            log::warn!(
                "node {}: stale JoinReady from node {from} ignored",
                self.cfg.me
            );
            return;
        }
        ms.ready_join = Some(join);
        self.master_check_majority(now_ms);
    }

    /// Adds the ready joiner `from` to the view.
    fn master_complete_join(&mut self, now_ms: u64, from: NodeId) {
        let Some(view) = self.view.clone() else {
            return;
        };
        let Some(ms) = self.master.as_mut() else {
            return;
        };
        ms.join = None;
        ms.ready_join = None;
        // Its data plane now holds the committed configuration: whatever it served
        // before it left can no longer conflict.
        ms.fences.remove(&from);
        let mut members = view.members.clone();
        members.push(from);
        members.sort_unstable();
        members.dedup();
        self.reasons.remove(&from);
        let line = format!("node {} joined the cluster", self.name(from));
        self.log(log::Level::Info, line);
        self.master_new_view(now_ms, members);
        self.master_include_joiner(now_ms, from);
        self.master_advance(now_ms);
        self.master_next(now_ms);
    }

    /// A view's first majority (docs/PROTOCOL.md): the configuration this master
    /// holds was read from the disks when it formed or came with its join offer's
    /// answer; another cluster may have committed since (this node was cut off
    /// from it, or frozen). Before a majority counts (a join completing it, or the
    /// quorum disk's vote starting to count), the disks are read and must still
    /// hold this master's configuration; until then it holds no lease. The read
    /// waits until every member (and the joiner) left any other cluster a lease
    /// ago: that cluster's master has lost its lease and its disk writes have
    /// landed. Called when a join is ready and at every tick; it also completes a
    /// ready join that needs no check.
    pub(super) fn master_check_majority(&mut self, now_ms: u64) {
        let Some(view) = self.view.clone() else {
            return;
        };
        let q = self.quorum();
        let votes = self.votes_of(view.members.iter().copied()) + self.disk_vote(now_ms);
        let Some(ms) = self.master.as_ref() else {
            return;
        };
        if ms.checking.is_some() {
            return;
        }
        let ready = ms
            .join
            .filter(|j| ms.ready_join == Some(j.join))
            .map(|j| (j.node, j.join));
        let gains = ready.is_some_and(|(node, _)| q.reached(votes + self.votes_of([node])));
        let Some(ms) = self.master.as_mut() else {
            return;
        };
        if !q.reached(votes) {
            ms.majority_checked = false;
        }
        if ms.majority_checked || !(q.reached(votes) || gains) {
            if let Some((node, _)) = ready {
                self.master_complete_join(now_ms, node);
            }
            return;
        }
        if !self.left_other_clusters(now_ms, ready.map(|(node, _)| node)) {
            return;
        }
        if let Some(ms) = self.master.as_mut() {
            ms.checking = Some(txn::MajorityCheck {
                join: ready.map(|(_, join)| join),
            });
        }
        let why = match ready {
            Some((node, _)) if !q.reached(votes) => {
                format!("node {} gives the view its first majority", self.name(node))
            }
            _ => "the view has a majority".to_string(),
        };
        log::info!(
            "node {}: {why}; checking the disks before it counts",
            self.name(self.cfg.me)
        );
        self.out.push(Action::ReadDisks);
    }

    /// Whether this master's view has a majority that does not count yet: the
    /// check of [`Self::master_check_majority`] has not passed.
    pub(super) fn majority_unchecked(&self) -> bool {
        self.view_quorate() && self.master.as_ref().is_some_and(|ms| !ms.majority_checked)
    }

    /// Whether every member of this master's view (this node aside) and `joiner`
    /// left any other cluster `lease_wait` ago: a master of another cluster (which
    /// this node never heard of) can hold a lease only while members of a majority
    /// confirm it, and every majority includes one of them or the quorum disk.
    fn left_other_clusters(&self, now_ms: u64, joiner: Option<NodeId>) -> bool {
        let me = self.cfg.me;
        let wait = self.cfg.lease_wait_ms();
        let Some(view) = self.view.as_ref() else {
            return false;
        };
        view.members
            .iter()
            .copied()
            .chain(joiner)
            .filter(|&m| m != me)
            .all(|m| {
                self.peers.get(&m).is_some_and(|p| {
                    !(p.member && p.master != Some(me))
                        && p.other_cluster_ms.is_none_or(|t| now_ms >= t + wait)
                })
            })
    }

    /// A master whose view lacks a majority may let in `joiner` now: unless that
    /// gives the view its first majority, always; otherwise only once the check
    /// of [`Self::master_check_majority`] could start.
    pub(super) fn may_gain_majority_with(&self, now_ms: u64, joiner: NodeId) -> bool {
        let Some(view) = self.view.as_ref() else {
            return false;
        };
        let q = self.quorum();
        let votes = self.votes_of(view.members.iter().copied()) + self.disk_vote(now_ms);
        if q.reached(votes) || !q.reached(votes + self.votes_of([joiner])) {
            return true;
        }
        self.left_other_clusters(now_ms, Some(joiner))
    }

    /// The disks read for [`Self::master_check_majority`]: the majority counts
    /// (and a join waiting on the check completes) if they hold this master's
    /// configuration; otherwise another cluster committed since this node read
    /// them, and it abdicates (it forms or joins again, which loads the current
    /// configuration).
    fn master_disks_verified(
        &mut self,
        now_ms: u64,
        result: Result<Option<DiskRecord<M>>, String>,
    ) {
        let me = self.cfg.me;
        let Some(ms) = self.master.as_mut() else {
            return;
        };
        let Some(check) = ms.checking.take() else {
            return;
        };
        let joiner = ms
            .join
            .filter(|j| check.join == Some(j.join) && ms.ready_join == Some(j.join))
            .map(|j| j.node);
        // Transaction and sequence number: what a driver reads back faithfully (the
        // daemon's configuration read from the disks lacks what only a commit
        // carries, so whole configurations would never compare equal).
        let current = match &result {
            Ok(Some(d)) => {
                d.txn == self.committed.txn && d.config.seq() == self.committed.config.seq()
            }
            Ok(None) => self.committed.config.seq() == 0,
            Err(_) => false,
        };
        if !current {
            let what = match result {
                Ok(Some(d)) => format!(
                    "the disks hold configuration seq {} (transaction {}), not this master's seq {} (transaction {})",
                    d.config.seq(),
                    d.txn,
                    self.committed.config.seq(),
                    self.committed.txn
                ),
                Ok(None) => "the disks hold no configuration".to_string(),
                Err(e) => format!("the disks cannot be read: {e}"),
            };
            let before = match joiner {
                Some(node) => format!(
                    "before node {} joined and gave the view a majority",
                    self.name(node)
                ),
                None => "before the view's majority counted".to_string(),
            };
            let reason = format!(
                "node {}: {before}, {what}; another cluster committed since this node read them",
                self.name(me)
            );
            self.master_abdicate(now_ms, reason);
            return;
        }
        ms.majority_checked = true;
        log::info!(
            "node {}: the disks hold this master's configuration (seq {}, transaction {}); its majority counts",
            self.name(me),
            self.committed.config.seq(),
            self.committed.txn
        );
        match joiner {
            // The check's wait covered the joiner: it completes even where the
            // view's majority needs it.
            Some(node) => self.master_complete_join(now_ms, node),
            None => self.master_check_majority(now_ms),
        }
        self.master_next(now_ms);
    }

    fn master_on_join_abandon(&mut self, now_ms: u64, from: NodeId, join: u64, reason: String) {
        if !self.is_master() {
            return;
        }
        let Some(ms) = self.master.as_mut() else {
            return;
        };
        if ms.join != Some(txn::ActiveJoin { node: from, join }) {
            return;
        }
        ms.join = None;
        ms.ready_join = None;
        if let Some(check) = ms.checking.as_mut() {
            check.join = None;
        }
        let reason = truncate_reason(reason);
        let line = format!("node {} abandoned its join: {reason}", self.name(from));
        self.log(log::Level::Warn, line);
        self.reasons.insert(from, reason);
        self.master_advance(now_ms);
        self.master_next(now_ms);
    }

    fn joiner_on_offer(
        &mut self,
        now_ms: u64,
        from: NodeId,
        join: u64,
        config: &[u8],
        config_txn: TxnId,
        disks: Vec<String>,
    ) {
        let State::Joining { master, .. } = self.state else {
            log::debug!(
                "node {}: JoinOffer from {from} ignored: not joining",
                self.cfg.me
            );
            return;
        };
        if master != from {
            return;
        }
        match M::decode(config) {
            Ok(config) => {
                self.state = State::Joining {
                    master,
                    step: JoinStep::CheckingDisks {
                        join,
                        config,
                        config_txn,
                    },
                };
                self.out.push(Action::CheckDiskAccess { disks });
            }
            Err(e) => {
                let reason = format!(
                    "node {}: cannot decode the configuration from node {}: {e}",
                    self.name(self.cfg.me),
                    self.name(from)
                );
                self.abandon_join(now_ms, master, join, reason);
            }
        }
    }

    pub(super) fn on_disk_access_checked(&mut self, now_ms: u64, refused: Option<String>) {
        let State::Joining {
            master,
            step: JoinStep::CheckingDisks { .. },
        } = self.state
        else {
            return;
        };
        let State::Joining {
            step:
                JoinStep::CheckingDisks {
                    join,
                    config,
                    config_txn,
                },
            ..
        } = std::mem::replace(&mut self.state, State::Stopped)
        else {
            unreachable!()
        };
        if let Some(reason) = refused {
            self.abandon_join(now_ms, master, join, reason);
            return;
        }
        self.failpoint("join.before_kernel");
        self.out.push(Action::KernelLoad {
            config: config.clone(),
        });
        // The master's committed configuration, which it committed after its disk
        // write: an older undurable open of this start is moot.
        self.recovery.open_undurable = None;
        self.state = State::Joining {
            master,
            step: JoinStep::Loading {
                join,
                config,
                config_txn,
            },
        };
    }

    pub(super) fn on_kernel_loaded(&mut self, now_ms: u64, result: Result<(), String>) {
        let State::Joining {
            master,
            step: JoinStep::Loading { .. },
        } = self.state
        else {
            if let Err(e) = result {
                let line = format!(
                    "node {}: the data plane refused the configuration: {e}",
                    self.name(self.cfg.me)
                );
                self.log(log::Level::Error, line);
            }
            return;
        };
        let State::Joining {
            step:
                JoinStep::Loading {
                    join,
                    config,
                    config_txn,
                },
            ..
        } = std::mem::replace(&mut self.state, State::Stopped)
        else {
            unreachable!()
        };
        if let Err(e) = result {
            let reason = format!(
                "node {}: the data plane refused the configuration: {e}",
                self.name(self.cfg.me)
            );
            self.abandon_join(now_ms, master, join, reason);
            return;
        }
        self.committed = Committed {
            txn: config_txn,
            config,
        };
        self.failpoint("join.after_kernel");
        self.send(master, Message::JoinReady { join });
        self.state = State::Joining {
            master,
            step: JoinStep::Ready,
        };
    }

    fn abandon_join(&mut self, now_ms: u64, master: NodeId, join: u64, reason: String) {
        let reason = truncate_reason(reason);
        let line = format!("node {}: join abandoned: {reason}", self.name(self.cfg.me));
        self.log(log::Level::Warn, line);
        self.note_failure(now_ms, reason.clone());
        self.send(
            master,
            Message::JoinAbandon {
                join,
                reason: reason.clone(),
            },
        );
        self.out.push(Action::LeaveCluster { reason });
        self.state = State::Abandoned {
            until_ms: now_ms + self.cfg.join_retry_ms,
        };
    }

    /// A View message: install it if it is newer and comes from its own master.
    fn on_view(
        &mut self,
        now_ms: u64,
        from: NodeId,
        view: View,
        config_seq: u64,
        last_txn: TxnId,
        reasons: Vec<(NodeId, String)>,
    ) {
        let me = self.cfg.me;
        if from != view.master || from == me || !view.is_well_formed() {
            log::warn!("node {me}: malformed View from node {from} ignored");
            return;
        }
        if self.view.as_ref().is_some_and(|v| view.id <= v.id) {
            log::debug!("node {me}: old view {} from node {from} ignored", view.id);
            return;
        }
        match self.state {
            State::Joining {
                master,
                step: JoinStep::Ready,
            } if master == from && view.contains(me) => {}
            State::Member | State::TakingOver { .. } => {}
            _ => {
                log::debug!("node {me}: View from node {from} ignored in this state");
                return;
            }
        }
        // A view of another master is taken only when this node's own master is
        // gone (a takeover): never by a master, never while this node's master is
        // heard. A View delayed in a partition, sent before its master lost its
        // majority, must not undo the takeover that followed (a newer master's
        // leased heartbeat is what makes a node give way, see the healing rule).
        if let Some(cur) = self.view.as_ref().filter(|v| v.master != from) {
            let master_alive = !self.suspected.contains(&cur.master)
                && self.peers.get(&cur.master).is_some_and(|p| !p.gone);
            if cur.master == me || master_alive {
                log::info!(
                    "node {me}: view {} of node {from} ignored: this node follows master {} (view {})",
                    view.id,
                    cur.master,
                    cur.id
                );
                return;
            }
        }
        self.max_view_seen = self.max_view_seen.max(view.id);
        if !view.contains(me) {
            self.leave_cluster(
                now_ms,
                format!(
                    "removed from the cluster by master node {} in view {}",
                    self.name(from),
                    view.id
                ),
            );
            return;
        }
        let old_master = self.view.as_ref().map(|v| v.master);
        let joined = matches!(self.state, State::Joining { .. });
        self.state = State::Member;
        self.record_membership(now_ms);
        self.master = None;
        if let Some(old) = old_master.filter(|&m| m != view.master) {
            self.resolve_txn_after_master_change(last_txn);
            self.install_view(now_ms, view);
            self.resolve_forwards(old);
        } else {
            self.install_view(now_ms, view);
        }
        self.reasons = reasons
            .into_iter()
            .map(|(k, v)| (k, truncate_reason(v)))
            .collect();
        if joined {
            let line = format!("node {}: joined the cluster", self.name(me));
            self.log(log::Level::Info, line);
        }
        if self.committed.config.seq() != config_seq && self.slave_txn.is_none() {
            let line = format!(
                "node {}: configuration seq {} differs from the master's {config_seq}",
                self.name(me),
                self.committed.config.seq()
            );
            self.log(log::Level::Error, line);
        }
    }

    /// This node is out of the cluster (removed by the master).
    pub(super) fn leave_cluster(&mut self, now_ms: u64, reason: String) {
        if let Some(st) = self.slave_txn.take() {
            if st.staged {
                self.out.push(Action::KernelAbort { txn: st.id });
            }
        }
        let old_master = self.view.as_ref().map(|v| v.master);
        self.view = None;
        self.master = None;
        self.suspected.clear();
        self.awaited_successor = None;
        self.slave_lease_until_ms = None;
        self.deposed.clear();
        self.grants.clear();
        self.last_cluster_ms = Some(now_ms);
        self.was_member_ms = Some(now_ms);
        if old_master.is_some() {
            self.forwards_outcome_unknown();
        }
        let line = format!(
            "node {}: left the cluster: {reason}",
            self.name(self.cfg.me)
        );
        self.log(log::Level::Warn, line);
        self.note_failure(now_ms, reason.clone());
        self.out.push(Action::LeaveCluster { reason });
        self.state = State::Discovering { since_ms: now_ms };
    }
}
