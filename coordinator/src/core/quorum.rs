//! Quorum and leases: who may act for the cluster, and for how long a data plane may
//! go on serving shared volumes without hearing from it.
//!
//! - Quorum: a strict majority of the configured votes (with a quorum disk, its one
//!   vote too, counted for the node holding its lease: [`super::qdisk`]). A cluster
//!   forms only where a majority is alive; a master never makes a view without a
//!   majority of votes and gives up its view (abdicates) when it loses quorum.
//! - Confirmations: every heartbeat carries the sender's stamp (its clock) and echoes
//!   the newest stamp it heard from the recipient when it confirms the recipient: a
//!   slave confirms its master, a master the members of its view. A node stops
//!   confirming a master it has told a successor about (it is deposed).
//! - Master lease: the newest time `t` such that members of its view holding a
//!   majority of votes all confirmed a stamp of `t` or later, plus `lease_ms`.
//! - Slave lease: the stamp its master echoed plus what was left of the master's own
//!   lease then, so it never outlasts the master's.
//! - Waiting out: a master commits nothing until the leases of the nodes that left
//!   its view have surely run out (`lease_wait_ms` after it last heard them); a
//!   successor reads the disks only once the lost master's lease has surely run out.
//!
//! The driver hands [`Node::lease_remaining_ms`] to its data plane on every tick; the
//! data plane serves shared volumes only while the lease it was given holds.

use super::*;

/// Quorum arithmetic over the configured votes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quorum {
    /// Votes of every configured node.
    pub total: u64,
    /// Votes needed: a strict majority of `total`.
    pub needed: u64,
}

impl Quorum {
    /// The quorum of a node list, and of the quorum disk's one vote if there is
    /// one.
    pub fn of(nodes: &[NodeInfo], quorum_disk: bool) -> Quorum {
        let total: u64 =
            nodes.iter().map(|n| u64::from(n.votes)).sum::<u64>() + u64::from(quorum_disk);
        Quorum {
            total,
            needed: total / 2 + 1,
        }
    }

    /// Whether `votes` are a strict majority.
    pub fn reached(&self, votes: u64) -> bool {
        votes >= self.needed
    }
}

impl<M: ConfigModel> Node<M> {
    /// The cluster's quorum (the quorum disk's vote included in the total).
    pub fn quorum(&self) -> Quorum {
        Quorum::of(&self.cfg.nodes, self.cfg.quorum_disk)
    }

    /// Votes of the nodes in `ids`.
    pub(super) fn votes_of(&self, ids: impl IntoIterator<Item = NodeId>) -> u64 {
        ids.into_iter()
            .filter_map(|id| self.cfg.nodes.iter().find(|n| n.id == id))
            .map(|n| u64::from(n.votes))
            .sum()
    }

    /// Peers heard within the heartbeat timeout and not seen gone.
    pub(super) fn reachable_peers(&self, now_ms: u64) -> Vec<NodeId> {
        let timeout_ms = self.cfg.heartbeat_timeout_ms;
        self.peers
            .iter()
            .filter(|(&id, p)| {
                !p.gone
                    && self.monitor_admits(id)
                    && p.last_heard_ms.is_some_and(|t| now_ms <= t + timeout_ms)
            })
            .map(|(&id, _)| id)
            .collect()
    }

    /// `node a: no quorum: 1 of 3 votes (b, c unreachable)`; with a quorum disk
    /// `node a: no quorum: 1 of 3 votes, 2 needed (b unreachable; quorum disk: not
    /// held)`.
    pub(super) fn no_quorum_reason(&self, now_ms: u64) -> String {
        if let Some(reason) = self.monitor_reason() {
            return reason;
        }
        let me = self.cfg.me;
        let reachable = self.reachable_peers(now_ms);
        let votes = self.votes_of(reachable.iter().copied().chain([me])) + self.disk_vote(now_ms);
        let disk = self.quorum_disk_line();
        let unreachable: Vec<String> = self
            .peers
            .keys()
            .filter(|id| !reachable.contains(id))
            .map(|&id| self.name(id))
            .collect();
        let q = self.quorum();
        if q.reached(votes) {
            // Every vote is reachable, yet no majority confirmed this node in time
            // (messages lost or late: a lossy link, a stalled process).
            let mut line = format!(
                "node {}: {NO_QUORUM}: {votes} of {} votes reachable now, but no majority confirmed this node in time",
                self.name(me),
                q.total
            );
            if let Some(d) = disk {
                line.push_str(&format!(" ({d})"));
            }
            return line;
        }
        let mut line = format!(
            "node {}: {NO_QUORUM}: {votes} of {} votes, {} needed",
            self.name(me),
            q.total,
            q.needed
        );
        let mut notes = Vec::new();
        if !unreachable.is_empty() {
            notes.push(format!("{} unreachable", unreachable.join(", ")));
        }
        notes.extend(disk);
        if !notes.is_empty() {
            line.push_str(&format!(" ({})", notes.join("; ")));
        }
        line
    }

    /// A master's lease: until when members holding a majority of votes have
    /// confirmed it (see the module doc), the quorum disk's vote counting until
    /// this node's hold of it runs out. None when they never have.
    fn master_lease_until(&self) -> Option<u64> {
        // Not before its view's first majority was checked against the disks.
        if !self.master.as_ref().is_some_and(|ms| ms.majority_checked) {
            return None;
        }
        let without = self.master_lease_with(0);
        let with_disk = self
            .disk_vote_until(self.clock_ms)
            .and_then(|hold| self.master_lease_with(1).map(|until| until.min(hold)));
        without.max(with_disk)
    }

    /// [`Self::master_lease_until`] with `extra` votes on top of the members'.
    fn master_lease_with(&self, extra: u64) -> Option<u64> {
        let me = self.cfg.me;
        let view = self.view.as_ref()?;
        let mut confirmations: Vec<(u64, u64)> = view
            .members
            .iter()
            .filter(|&&m| m != me)
            .filter_map(|m| {
                let p = self.peers.get(m)?;
                let t = p.confirmed_ms?;
                (!p.gone && p.master == Some(me)).then_some((t, self.votes_of([*m])))
            })
            .collect();
        confirmations.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        let q = self.quorum();
        let mut votes = self.votes_of([me]) + extra;
        if q.reached(votes) {
            return Some(u64::MAX);
        }
        for (t, v) in confirmations {
            votes += v;
            if q.reached(votes) {
                return Some(t.saturating_add(self.cfg.lease_ms));
            }
        }
        None
    }

    /// Until when this node's lease holds (its clock), if it has one: only members
    /// of a view have leases, and only while the external monitor (if any) says
    /// this node's partition is quorate. `u64::MAX` when this node alone holds a
    /// majority.
    pub fn lease_until_ms(&self) -> Option<u64> {
        if !self.monitor_quorate() {
            return None;
        }
        match self.state {
            State::Member if self.is_master() => self.master_lease_until(),
            State::Member => self.slave_lease_until_ms,
            _ => None,
        }
    }

    /// How long this node's data plane may serve shared volumes from `now_ms` on:
    /// what the driver renews its data plane's lease with (0: none).
    pub fn lease_remaining_ms(&self, now_ms: u64) -> u64 {
        self.lease_until_ms()
            .map_or(0, |until| until.saturating_sub(now_ms))
    }

    /// Master: a majority of the view (this node included) has confirmed a
    /// heartbeat this node sent at or after `since_ms`. Where that majority needs
    /// the quorum disk's vote, a renewal of the disk that started at or after
    /// `since_ms` has landed too (the hold counts from a renewal's start). The
    /// master aborts what a lost successor may have applied only then
    /// (`Phase::SuccessorLost`, whose `since_ms` is when the view without the
    /// successor was made): that renewal's record names that view, so a successor
    /// whose majority meets this one only in the disk learns of it when it
    /// acquires the disk, and gives its takeover up.
    pub(super) fn lease_confirmed_since(&self, since_ms: u64) -> bool {
        self.master_lease_until()
            .is_some_and(|until| until == u64::MAX || until - self.cfg.lease_ms >= since_ms)
    }

    /// Whether this node holds a lease at `now_ms`.
    pub(super) fn has_lease(&self, now_ms: u64) -> bool {
        self.lease_until_ms().is_some_and(|until| now_ms < until)
    }

    /// What a heartbeat to `peer` confirms: the echo of its stamp, and from a master
    /// the lease it has left.
    pub(super) fn echo_for(&self, peer: NodeId, now_ms: u64) -> (Option<Echo>, u64) {
        let Some(view) = self.view.as_ref() else {
            return (None, 0);
        };
        if !matches!(self.state, State::Member) || !view.contains(peer) {
            return (None, 0);
        }
        let confirms = if self.is_master() {
            true
        } else {
            view.master == peer && !self.suspected.contains(&peer) && !self.deposed.contains(&peer)
        };
        let Some(p) = self.peers.get(&peer) else {
            return (None, 0);
        };
        let (Some(incarnation), Some(stamp_ms)) = (p.incarnation, p.stamp_heard_ms) else {
            return (None, 0);
        };
        if !confirms || p.gone {
            return (None, 0);
        }
        let lease_left_ms = if self.is_master() {
            self.lease_remaining_ms(now_ms).min(self.cfg.lease_ms)
        } else {
            0
        };
        (
            Some(Echo {
                incarnation,
                stamp_ms,
            }),
            lease_left_ms,
        )
    }

    /// A heartbeat's lease fields: remember the stamp to echo, take the echo of ours.
    pub(super) fn on_heartbeat_lease(
        &mut self,
        now_ms: u64,
        from: NodeId,
        stamp_ms: u64,
        echo: Option<Echo>,
        lease_left_ms: u64,
    ) {
        let incarnation = self.cfg.incarnation;
        let from_my_master = matches!(self.state, State::Member)
            && !self.is_master()
            && self.view.as_ref().is_some_and(|v| v.master == from);
        let Some(p) = self.peers.get_mut(&from) else {
            return;
        };
        p.stamp_heard_ms = Some(stamp_ms);
        let Some(e) = echo.filter(|e| e.incarnation == incarnation && e.stamp_ms <= now_ms) else {
            return;
        };
        p.confirmed_ms = Some(p.confirmed_ms.map_or(e.stamp_ms, |c| c.max(e.stamp_ms)));
        if from_my_master && lease_left_ms > 0 {
            let until = e
                .stamp_ms
                .saturating_add(lease_left_ms.min(self.cfg.lease_ms));
            self.slave_lease_until_ms =
                Some(self.slave_lease_until_ms.map_or(until, |u| u.max(until)));
        }
    }

    /// Every tick: a master whose lease ran out abdicates; so does a slave whose
    /// master is alive but no longer confirms it. A new view gets `lease_ms` to win
    /// its first lease.
    pub(super) fn check_lease(&mut self, now_ms: u64) {
        if !self.lease_ran_out(now_ms) {
            return;
        }
        if self.is_master() {
            let reason = if self.majority_unchecked() {
                format!(
                    "node {}: its view has a majority, but the disks could not be checked before it counts (a member was in another cluster within a lease, or the read did not complete), so it holds no lease and gives up its view",
                    self.name(self.cfg.me)
                )
            } else {
                format!(
                    "{}; its lease ran out, so it gives up its view",
                    self.no_quorum_reason(now_ms)
                )
            };
            self.master_abdicate(now_ms, reason);
            return;
        }
        let master_suspected = self
            .view
            .as_ref()
            .is_some_and(|v| self.suspected.contains(&v.master));
        if master_suspected {
            // Waiting for a successor: it has had the lost master's lease and a
            // heartbeat timeout on top to take over (and with a quorum disk, the
            // time to acquire it). Past that, none is coming.
            let lease_end = self
                .slave_lease_until_ms
                .unwrap_or(self.view_since_ms + self.cfg.lease_ms);
            let mut give_up =
                lease_end + self.cfg.lease_wait_ms() + 2 * self.cfg.heartbeat_timeout_ms;
            if self.cfg.quorum_disk {
                // A successor one vote short acquires the quorum disk first.
                give_up += 3 * self.cfg.lease_wait_ms() + 2 * self.cfg.heartbeat_timeout_ms;
            }
            if now_ms >= give_up {
                let reason = format!(
                    "{}; the master is gone and no successor took over",
                    self.no_quorum_reason(now_ms)
                );
                self.leave_cluster(now_ms, reason);
            } else if let Some(s) = self.awaited_successor_lost() {
                // The successor it waits for died or started again (a new start
                // takes nothing over): none is coming, and leaving is always safe.
                let reason = format!(
                    "{}; the master is gone and so is node {}, the designated successor this node waited for",
                    self.no_quorum_reason(now_ms),
                    self.name(s)
                );
                self.leave_cluster(now_ms, reason);
            }
        } else {
            let master = self.view.as_ref().map_or(0, |v| v.master);
            let reason = format!(
                "{NO_QUORUM}: master node {} no longer confirms this node; its lease ran out",
                self.name(master)
            );
            self.leave_cluster(now_ms, reason);
        }
    }

    /// The designated successor this slave waits for ([`Node::awaited_successor`]),
    /// when it is gone or has started again since the view that named it.
    fn awaited_successor_lost(&self) -> Option<NodeId> {
        let (s, inc) = self.awaited_successor?;
        let peer = self.peers.get(&s)?;
        (peer.gone || (inc.is_some() && peer.incarnation != inc)).then_some(s)
    }

    /// The master leaves its view for want of quorum (or because a newer master
    /// replaced it): every request it holds is answered, then it rejoins like any
    /// node that is out of the cluster.
    pub(super) fn master_abdicate(&mut self, now_ms: u64, reason: String) {
        let line = format!(
            "node {}: abdicating as master: {reason}",
            self.name(self.cfg.me)
        );
        self.log(log::Level::Error, line);
        self.quorum_reason = Some(truncate_reason(reason.clone()));
        self.master_fail_all(&reason);
        self.leave_cluster(now_ms, reason);
    }

    /// Whether this member's lease has run out at `now_ms` (a new view's first
    /// lease counts from the view's start): what `check_lease` acts on at a tick,
    /// and why a slave ignores a `Commit`. False for a node that is not a member.
    pub fn lease_ran_out(&self, now_ms: u64) -> bool {
        matches!(self.state, State::Member)
            && match self.lease_until_ms() {
                Some(until) => now_ms >= until,
                None => now_ms >= self.view_since_ms + self.cfg.lease_ms,
            }
    }

    /// The master may commit at `now_ms`: it holds a lease and every lost node's
    /// lease has surely run out.
    pub(super) fn may_commit(&self, now_ms: u64) -> bool {
        self.has_lease(now_ms)
            && self
                .master
                .as_ref()
                .is_none_or(|ms| ms.fences.values().all(|&until| now_ms >= until))
    }

    /// A member keeps a record, a lease ahead, that it may be a member: a restart
    /// of its process then knows it may have confirmed a master's lease just before.
    /// Called at every event and wherever this node becomes a member, before the
    /// messages of the step.
    pub(super) fn record_membership(&mut self, now_ms: u64) {
        if !matches!(self.state, State::Member) {
            return;
        }
        if self.membership_recorded_until_ms >= now_ms + self.cfg.lease_ms / 2 {
            return;
        }
        let until_ms = now_ms + self.cfg.lease_ms;
        self.membership_recorded_until_ms = until_ms;
        self.out.push(Action::RecordMembership { until_ms });
    }

    /// A node that gives a successor its takeover vote counts as a member of that
    /// cluster for a lease from now (its heartbeats say so, it forms no cluster,
    /// a restart remembers it): the successor writes the disks within a lease of
    /// asking ([`Action::WriteDisks`]'s deadline), so no cluster formed meanwhile
    /// reads disks that write is still to reach.
    pub(super) fn hold_for_takeover(&mut self, now_ms: u64) {
        if !matches!(self.state, State::Member | State::TakingOver { .. }) {
            self.was_member_ms = Some(self.was_member_ms.map_or(now_ms, |t| t.max(now_ms)));
            self.last_cluster_ms = Some(self.last_cluster_ms.map_or(now_ms, |t| t.max(now_ms)));
        }
        let until_ms = now_ms + self.cfg.lease_ms;
        if self.membership_recorded_until_ms < until_ms {
            self.membership_recorded_until_ms = until_ms;
            self.out.push(Action::RecordMembership { until_ms });
        }
    }

    /// Master: `node` left the view; nothing conflicting commits until its lease
    /// has surely run out (it was last heard at `last_heard_ms`, or now).
    pub(super) fn fence_lost_node(&mut self, now_ms: u64, node: NodeId) {
        let heard = self
            .peers
            .get(&node)
            .and_then(|p| p.last_heard_ms)
            .unwrap_or(now_ms)
            .min(now_ms);
        let until = heard + self.cfg.lease_wait_ms();
        if let Some(ms) = self.master.as_mut() {
            let e = ms.fences.entry(node).or_insert(0);
            *e = (*e).max(until);
        }
        log::info!(
            "node {}: node {} left the view; no change commits before its lease has surely run out ({} ms from now)",
            self.cfg.me,
            node,
            until.saturating_sub(now_ms)
        );
    }
}
