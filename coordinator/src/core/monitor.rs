//! An external cluster monitor (corosync): membership and quorum as another input.
//!
//! With [`NodeConfig::external_monitor`] set, the driver reports what the monitor
//! says of this node's partition ([`Event::MonitorView`]): the configured nodes it
//! counts as members (for corosync: whose plexd is in the CPG process group on this
//! node's side) and whether that side is quorate (votequorum). The monitor only
//! ever takes capabilities away, so every safety argument of the built-in protocol
//! (leases, votes, waiting out) carries over unchanged:
//!
//! - A peer the monitor leaves out is gone at once (as on a connection loss) and
//!   its messages are dropped while it stays out: for this node it is behind a cut
//!   link, a fault the protocol already survives. Leases still ride on plexd's own
//!   heartbeats.
//! - While the monitor says "not quorate" (or before its first report, or while it
//!   is unreachable: the driver reports that as not quorate) this node has no
//!   quorum: a master abdicates, a slave leaves its view, a successor gives its
//!   takeover up (before it reads the disks), nobody forms or asks to join, and no
//!   lease is handed to the data plane.

use super::*;

/// What the external monitor last reported ([`Event::MonitorView`]).
#[derive(Clone, Debug)]
pub(super) struct MonitorState {
    /// Configured nodes in this node's partition (this node included or not).
    members: BTreeSet<NodeId>,
    /// The partition holds quorum.
    quorate: bool,
    /// What the monitor said, for the status line.
    detail: String,
    /// Whether the monitor has reported at all (before, no quorum is no failure).
    reported: bool,
}

impl MonitorState {
    /// Before the first report: no quorum.
    pub(super) fn initial() -> MonitorState {
        MonitorState {
            members: BTreeSet::new(),
            quorate: false,
            detail: "no report from the cluster monitor yet".into(),
            reported: false,
        }
    }

    /// What the monitor said last (`corosync: quorate; plexd running on a, b`).
    pub(super) fn detail(&self) -> &str {
        &self.detail
    }
}

impl<M: ConfigModel> Node<M> {
    /// Whether the external monitor (if any) lets this node hold quorum.
    pub(super) fn monitor_quorate(&self) -> bool {
        self.monitor.as_ref().is_none_or(|m| m.quorate)
    }

    /// Whether the external monitor (if any) counts `peer` in this node's partition.
    pub(super) fn monitor_admits(&self, peer: NodeId) -> bool {
        self.monitor
            .as_ref()
            .is_none_or(|m| m.members.contains(&peer))
    }

    /// `node a: no quorum: corosync: ...`, when the monitor denies quorum.
    pub(super) fn monitor_reason(&self) -> Option<String> {
        let m = self.monitor.as_ref().filter(|m| !m.quorate)?;
        Some(format!(
            "node {}: {NO_QUORUM}: {}",
            self.name(self.cfg.me),
            m.detail
        ))
    }

    /// [`Event::MonitorView`]: remember it and act on it at once.
    pub(super) fn on_monitor_view(
        &mut self,
        now_ms: u64,
        members: BTreeSet<NodeId>,
        quorate: bool,
        detail: String,
    ) {
        if self.monitor.is_none() {
            log::warn!(
                "node {}: a cluster monitor view arrived but no external monitor is configured; ignored",
                self.cfg.me
            );
            return;
        }
        let line = format!(
            "node {}: cluster monitor: members {:?}, {} ({detail})",
            self.name(self.cfg.me),
            members.iter().map(|&id| self.name(id)).collect::<Vec<_>>(),
            if quorate { "quorate" } else { "not quorate" }
        );
        self.log(log::Level::Info, line);
        self.monitor = Some(MonitorState {
            members,
            quorate,
            detail,
            reported: true,
        });
        self.apply_monitor(now_ms);
    }

    /// Every event that may act on it (a view, every tick): peers left out are
    /// gone; without the monitor's quorum this node leaves its view.
    pub(super) fn apply_monitor(&mut self, now_ms: u64) {
        if self.monitor.is_none() || matches!(self.state, State::Stopped) {
            return;
        }
        let out: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|(&id, p)| !p.gone && !self.monitor_admits(id))
            .map(|(&id, _)| id)
            .collect();
        for p in out {
            self.on_peer_gone(now_ms, p, "the cluster monitor reports it left");
        }
        let Some(reason) = self.monitor_reason() else {
            return;
        };
        // A verdict that holds on is one failure, dated from its first report.
        let kept = truncate_reason(reason.clone());
        let reported = self.monitor.as_ref().is_some_and(|m| m.reported);
        if reported && self.last_reason.as_ref() != Some(&kept) {
            self.note_failure(now_ms, kept);
        }
        match &self.state {
            State::Member if self.is_master() => {
                self.quorum_reason = Some(truncate_reason(reason.clone()));
                self.master_abdicate(now_ms, reason);
            }
            State::Member => {
                self.quorum_reason = Some(truncate_reason(reason.clone()));
                self.leave_cluster(now_ms, reason);
            }
            // A successor gives up before it touches the disks; once it reads or
            // writes them it finishes (a Member then) and leaves at the next tick.
            State::TakingOver {
                step:
                    TakeoverStep::Collecting { .. }
                    | TakeoverStep::AcquiringDisk { .. }
                    | TakeoverStep::WaitingLease { .. },
            } => {
                self.quorum_reason = Some(truncate_reason(reason.clone()));
                self.leave_cluster(now_ms, reason);
            }
            // A join that has not reached its kernel phase listens again.
            State::Joining {
                step: JoinStep::Requested,
                ..
            } => {
                self.state = State::Discovering { since_ms: now_ms };
            }
            _ => {}
        }
    }
}
