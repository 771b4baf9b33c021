//! What `cluster status` says of this node (its REASON column): what holds now.
//!
//! - A member: `member of view 7 with 3 nodes; ` and what its monitor says now:
//!   `heartbeats: 3 of 3 votes reachable, 2 needed` (built-in) or the external
//!   monitor's own words, `corosync: quorate; plexd running on a, b, c`; a master
//!   whose view's first majority waits for the disk check (docs/PROTOCOL.md,
//!   "First majority") adds `checking the disks before the view's majority counts`;
//!   one whose queue holds a change giving disks up adds `join offers leave disk(s)
//!   d1 out: ...` (`core::given_up`).
//! - Not a member: why it has no quorum now, if it has none (`node c: no quorum:
//!   corosync: not running ...`), else `not a member (joining); ` and what its
//!   monitor says; `holding the change that gives disk(s) d1 up ...` while it holds
//!   one (`core::given_up`); then its last failure with its age, `last failure 4.2 s ago:
//!   cannot find disk d1 on node c`, if there was one (once: when it is the reason
//!   already given, only its age, `(since 4.2 s)`, right after that reason).
//!
//! A failure once reported stays in the line of a node that is out, with its age, so
//! an operator sees both the state and the last thing that went wrong; a member's
//! line shows only what holds (its log keeps the history).
//!
//! Either line ends with this node's last stall, for [`STALL_SHOWN_MS`] after it:
//! `last stall: did not run for 1.5 s (40 s ago)` (a process stopped, a host that ran
//! nothing: what makes a cluster break up and form again when it outlasts a lease).

use super::*;

/// How long `cluster status` shows a node's last stall.
pub(super) const STALL_SHOWN_MS: u64 = 10 * 60 * 1000;

impl Role {
    /// The role's name in `cluster status`: `master`, `slave`, `discovering`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Discovering => "discovering",
            Role::Forming => "forming",
            Role::Joining => "joining",
            Role::Abandoned => "abandoned",
            Role::Slave => "slave",
            Role::Master => "master",
            Role::TakingOver => "taking-over",
            Role::Stopped => "stopped",
        }
    }
}

impl<M: ConfigModel> Node<M> {
    /// Remembers `reason` as this node's last failure, at `now_ms`.
    pub(super) fn note_failure(&mut self, now_ms: u64, reason: String) {
        self.last_reason = Some(truncate_reason(reason));
        self.last_reason_ms = now_ms;
    }

    /// This node's line in `cluster status` at `now_ms` (see the module doc).
    pub fn status_line(&self, now_ms: u64) -> String {
        let now_ms = now_ms.max(self.clock_ms);
        if let (State::Member, Some(v)) = (&self.state, &self.view) {
            let mut line = format!(
                "member of view {} with {} nodes; {}",
                v.id,
                v.members.len(),
                self.quorum_line(now_ms)
            );
            if self.majority_unchecked() {
                line.push_str("; checking the disks before the view's majority counts");
            }
            if let Some(word) = self.given_up_status(now_ms) {
                line.push_str(&format!("; {word}"));
            }
            self.push_stall(now_ms, &mut line);
            return truncate_reason(line);
        }
        let mut line = match self.quorum_denied(now_ms) {
            Some(reason) => reason,
            None => format!(
                "not a member ({}); {}",
                self.role().as_str(),
                self.quorum_line(now_ms)
            ),
        };
        // A last failure that is the reason given is said once, with its age,
        // before the held word (compared with the reason alone).
        let last = self.last_reason.as_ref().map(|r| {
            let ago = format_age(now_ms.saturating_sub(self.last_reason_ms));
            (r, ago, line == *r)
        });
        if let Some((_, ago, true)) = &last {
            line.push_str(&format!(" (since {ago})"));
        }
        if let Some(word) = self.given_up_status(now_ms) {
            line.push_str(&format!("; {word}"));
        }
        if let Some((r, ago, false)) = &last {
            line.push_str(&format!("; last failure {ago} ago: {r}"));
        }
        self.push_stall(now_ms, &mut line);
        truncate_reason(line)
    }

    /// Adds this node's last stall to `line`, for [`STALL_SHOWN_MS`] after it.
    fn push_stall(&self, now_ms: u64, line: &mut String) {
        if let Some((at, stalled)) = self.last_stall {
            let ago = now_ms.saturating_sub(at);
            if ago <= STALL_SHOWN_MS {
                line.push_str(&format!(
                    "; last stall: did not run for {} ({} ago)",
                    format_age(stalled),
                    format_age(ago)
                ));
            }
        }
    }

    /// Why this node has no quorum now (the external monitor's verdict, or too few
    /// votes reachable), if it has none.
    fn quorum_denied(&self, now_ms: u64) -> Option<String> {
        if let Some(r) = self.monitor_reason() {
            return Some(r);
        }
        if self.monitor.is_some() {
            return None;
        }
        let votes = self.reachable_votes(now_ms);
        (!self.quorum().reached(votes)).then(|| self.no_quorum_reason(now_ms))
    }

    /// What the monitor says of this node's quorum now, when it has it.
    fn quorum_line(&self, now_ms: u64) -> String {
        if let Some(m) = &self.monitor {
            return m.detail().to_string();
        }
        let q = self.quorum();
        format!(
            "heartbeats: {} of {} votes reachable, {} needed",
            self.reachable_votes(now_ms),
            q.total,
            q.needed
        )
    }

    /// This node's vote, its reachable peers' and the quorum disk's if it holds it.
    fn reachable_votes(&self, now_ms: u64) -> u64 {
        let me = self.cfg.me;
        self.votes_of(self.reachable_peers(now_ms).into_iter().chain([me])) + self.disk_vote(now_ms)
    }
}

/// `850 ms`, `4.2 s`, `73 s`, `12 min`, `5 h`.
fn format_age(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..10_000 => format!("{:.1} s", ms as f64 / 1000.0),
        10_000..120_000 => format!("{} s", ms / 1000),
        120_000..7_200_000 => format!("{} min", ms / 60_000),
        _ => format!("{} h", ms / 3_600_000),
    }
}
