//! The quorum disk: one more vote, for the node that holds its lease (a delta
//! lease in the manner of sanlock, on a small shared file or device; cf. corosync's
//! qdevice and VxVM's coordinator disks).
//!
//! The disk holds one record, [`QuorumDiskRecord`] `{owner, incarnation, counter,
//! view}` (the driver adds the cluster id and a checksum; a torn or blank record
//! reads as none: nobody). The rules (docs/PROTOCOL.md, "The quorum disk"):
//!
//! - **Who holds it.** A master, a node forming a cluster or taking over; a node
//!   that listens for a cluster only when the disk's vote is the one it lacks to
//!   form one. Anyone else lets it go (stops renewing).
//! - **Acquiring.** Read the record; it must stay the same (same owner, start and
//!   counter) for `lease_wait_ms` of this node's clock: its owner stopped renewing
//!   and its hold has run out. The last of those reads is the one right before the
//!   write; the write of ours must start within [`write_window_ms`] of that read
//!   (its deadline). After the write, wait [`settle_ms`] and read: still ours →
//!   held. Counters only grow within a start, so a record never comes back.
//! - **Holding.** Every [`renew_interval_ms`]: read, check it is still ours (same
//!   counter), write counter + 1 (the same deadline rule). A renewal that finds
//!   another record, or fails, loses the disk at once. The hold lasts until the
//!   start of the last successful renewal + `lease_ms` (this node's clock).
//! - **The vote** counts from `lease_wait_ms` after our acquiring write completed
//!   until the hold runs out: a previous holder's hold ended by then (its last
//!   successful renewal read the disk before our write landed), and any write of
//!   another node issued before ours landed has landed before our settle read
//!   (writes start within the window of the read they follow, and the settle wait
//!   is longer). So at most one node counts the disk's vote at any time, and no
//!   lease a holder gave out (a master's lease, its slaves' leases capped by it)
//!   outlasts its hold.
//! - **The view.** Every record names the newest view its writer had seen, and a
//!   reader raises its own newest view to it. Two majorities may meet only in the
//!   disk: a master that aborts what its lost successor may have applied does so
//!   only once a renewal that started after the successor left (so names the view
//!   without it) has landed ([`Node::lease_confirmed_since`]), so a successor that
//!   acquires the disk later learns of that view and gives its takeover up
//!   (docs/PROTOCOL.md, "Lost messages").
//!
//! All I/O is actions (one in flight at a time), results are events: the core stays
//! pure and the simulator models the disk.

use super::*;

/// The quorum disk's lease record as the core sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuorumDiskRecord {
    /// The node that wrote it.
    pub owner: NodeId,
    /// That node's start ([`NodeConfig::incarnation`]).
    pub incarnation: u64,
    /// Grows with every write of that start.
    pub counter: u64,
    /// The newest view id its writer had seen when it wrote it.
    pub view: u64,
}

impl QuorumDiskRecord {
    /// Whether this is the record written by start `incarnation` of `owner` with
    /// `counter` (whatever view it names).
    pub fn is(&self, owner: NodeId, incarnation: u64, counter: u64) -> bool {
        self.owner == owner && self.incarnation == incarnation && self.counter == counter
    }
}

/// The quorum disk as a node sees it, for `cluster status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumDiskStatus {
    /// The node counting the disk's vote, as far as this node knows: itself, or a
    /// live master whose heartbeats say it holds the disk.
    pub holder: Option<NodeId>,
    /// This node is acquiring the disk (it needs the vote).
    pub acquiring: bool,
}

/// How often a holder renews, and a watcher reads.
pub fn renew_interval_ms(cfg: &NodeConfig) -> u64 {
    (cfg.lease_ms / 5).max(1)
}

/// How long after the read it follows a write may still start.
pub fn write_window_ms(cfg: &NodeConfig) -> u64 {
    (cfg.lease_ms / 10).max(1)
}

/// How long an acquirer waits after its write before it reads it back: longer than
/// the write window (with clock drift), so every write issued before ours landed.
pub fn settle_ms(cfg: &NodeConfig) -> u64 {
    (cfg.lease_ms / 5).max(2)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum IoKind {
    /// Acquiring: watching the record; the read started at `issued_ms`.
    WatchRead {
        issued_ms: u64,
    },
    /// Acquiring: our record, after the read at `read_ms`.
    AcquireWrite {
        read_ms: u64,
    },
    /// Acquiring: reading our record back.
    SettleRead,
    /// Holding: the renewal that started at `start_ms`.
    RenewRead {
        start_ms: u64,
    },
    RenewWrite {
        start_ms: u64,
    },
}

#[derive(Clone, Copy, Debug)]
struct Io {
    op: u64,
    kind: IoKind,
    /// The phase changed since it was issued: its result means nothing.
    stale: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Neither held nor wanted.
    Off,
    /// Acquiring: the record seen first (`None` inside: nobody) and when; the next
    /// read is due at `next_read_ms`.
    Watching {
        seen: Option<(Option<QuorumDiskRecord>, u64)>,
        next_read_ms: u64,
    },
    /// Acquiring: our record is being written.
    Writing,
    /// Acquiring: our record written at `wrote_ms`; read back at `read_at_ms`.
    Settling {
        wrote_ms: u64,
        read_at_ms: u64,
        hold_until_ms: u64,
    },
    /// Held: the vote counts in `[counts_from_ms, hold_until_ms)`.
    Held {
        counts_from_ms: u64,
        hold_until_ms: u64,
        last_renewal_ms: u64,
    },
}

/// The quorum disk's lease state of one node.
#[derive(Clone, Debug)]
pub(super) struct QDisk {
    phase: Phase,
    io: Option<Io>,
    next_op: u64,
    /// The last counter this start wrote (counters only grow within a start).
    counter: u64,
    /// A node listening for a cluster wants the disk: its vote is the one missing.
    pub(super) form_wanted: bool,
    /// The last record read (for the status line and the no-quorum reason).
    last_seen: Option<QuorumDiskRecord>,
    /// The last read error logged (a disk that stays unreadable is logged once).
    last_error: Option<String>,
}

impl QDisk {
    pub(super) fn new() -> QDisk {
        QDisk {
            phase: Phase::Off,
            io: None,
            next_op: 0,
            counter: 0,
            form_wanted: false,
            last_seen: None,
            last_error: None,
        }
    }
}

impl<M: ConfigModel> Node<M> {
    /// Whether a quorum disk is configured.
    pub fn has_quorum_disk(&self) -> bool {
        self.cfg.quorum_disk
    }

    /// Until when this node counts the quorum disk's vote, if it does at `now_ms`.
    pub fn disk_vote_until(&self, now_ms: u64) -> Option<u64> {
        match self.qdisk.phase {
            Phase::Held {
                counts_from_ms,
                hold_until_ms,
                ..
            } if counts_from_ms <= now_ms && now_ms < hold_until_ms => Some(hold_until_ms),
            _ => None,
        }
    }

    /// The quorum disk's vote at `now_ms`: 1 while this node counts it, else 0.
    pub(super) fn disk_vote(&self, now_ms: u64) -> u64 {
        u64::from(self.disk_vote_until(now_ms).is_some())
    }

    /// Whether this node's view holds a majority of the votes now (its members'
    /// and the quorum disk's, if this node counts it).
    pub fn view_quorate(&self) -> bool {
        let Some(view) = self.view.as_ref() else {
            return false;
        };
        let votes = self.votes_of(view.members.iter().copied()) + self.disk_vote(self.clock_ms);
        self.quorum().reached(votes)
    }

    /// Whether this node wants the quorum disk now.
    fn qdisk_wanted(&self) -> bool {
        if !self.cfg.quorum_disk || self.stopping {
            return false;
        }
        match self.state {
            State::Member => self.is_master(),
            State::Forming | State::TakingOver { .. } => true,
            State::Discovering { .. } => self.qdisk.form_wanted,
            _ => false,
        }
    }

    /// `cluster status`'s view of the quorum disk (none when none is configured).
    pub(super) fn quorum_disk_status(&self) -> Option<QuorumDiskStatus> {
        if !self.cfg.quorum_disk {
            return None;
        }
        let me = self.cfg.me;
        let now = self.clock_ms;
        let holder = if self.disk_vote_until(now).is_some() {
            Some(me)
        } else {
            let timeout = self.cfg.heartbeat_timeout_ms;
            self.peers
                .iter()
                .find(|(_, p)| {
                    p.disk_vote && !p.gone && p.last_heard_ms.is_some_and(|t| now <= t + timeout)
                })
                .map(|(&id, _)| id)
        };
        let acquiring = matches!(
            self.qdisk.phase,
            Phase::Watching { .. } | Phase::Writing | Phase::Settling { .. }
        ) || matches!(self.qdisk.phase, Phase::Held { counts_from_ms, .. } if now < counts_from_ms);
        Some(QuorumDiskStatus { holder, acquiring })
    }

    /// `quorum disk: held by a` / `quorum disk: not held (last written by b)`.
    pub fn quorum_disk_line(&self) -> Option<String> {
        let st = self.quorum_disk_status()?;
        Some(match (st.holder, st.acquiring) {
            (Some(h), _) => format!("quorum disk: held by {}", self.name(h)),
            (None, acquiring) => {
                let mut line = "quorum disk: not held".to_string();
                if let Some(r) = self.qdisk.last_seen {
                    line.push_str(&format!(" (last written by {})", self.name(r.owner)));
                }
                if acquiring {
                    line.push_str(", this node is acquiring it");
                }
                line
            }
        })
    }

    fn qdisk_issue(&mut self, kind: IoKind, write: Option<(QuorumDiskRecord, u64)>) {
        self.qdisk.next_op += 1;
        let op = self.qdisk.next_op;
        self.qdisk.io = Some(Io {
            op,
            kind,
            stale: false,
        });
        match write {
            Some((record, deadline_ms)) => self.out.push(Action::WriteQuorumDisk {
                op,
                record,
                deadline_ms,
            }),
            None => self.out.push(Action::ReadQuorumDisk { op }),
        }
    }

    fn qdisk_set_phase(&mut self, phase: Phase) {
        self.qdisk.phase = phase;
        if let Some(io) = self.qdisk.io.as_mut() {
            io.stale = true;
        }
    }

    /// Gives up the hold (or the acquisition) and watches again if still wanted.
    fn qdisk_lose(&mut self, now_ms: u64, why: &str) {
        if matches!(self.qdisk.phase, Phase::Held { .. }) {
            let line = format!(
                "node {}: lost the quorum disk: {why}",
                self.name(self.cfg.me)
            );
            self.log(log::Level::Warn, line);
        } else {
            log::info!(
                "node {}: acquiring the quorum disk: {why}; watching it again",
                self.cfg.me
            );
        }
        self.qdisk_set_phase(Phase::Watching {
            seen: None,
            next_read_ms: now_ms,
        });
    }

    /// After every event: let the disk go when not wanted, start acquiring when
    /// wanted, drop a hold that ran out, and issue the read that is due.
    pub(super) fn qdisk_poll(&mut self, now_ms: u64) {
        if !self.cfg.quorum_disk {
            return;
        }
        let wanted = self.qdisk_wanted();
        if !wanted {
            if self.qdisk.phase != Phase::Off {
                if matches!(self.qdisk.phase, Phase::Held { .. }) {
                    log::info!(
                        "node {}: letting the quorum disk go (no longer needed)",
                        self.cfg.me
                    );
                }
                self.qdisk_set_phase(Phase::Off);
            }
            return;
        }
        match self.qdisk.phase {
            Phase::Off => self.qdisk_set_phase(Phase::Watching {
                seen: None,
                next_read_ms: now_ms,
            }),
            Phase::Held { hold_until_ms, .. } if now_ms >= hold_until_ms => {
                self.qdisk_lose(now_ms, "its hold ran out (no renewal in time)");
            }
            _ => {}
        }
        if self.qdisk.io.is_some() {
            return;
        }
        let renew = renew_interval_ms(&self.cfg);
        match self.qdisk.phase {
            Phase::Watching { next_read_ms, .. } if now_ms >= next_read_ms => {
                self.qdisk_issue(IoKind::WatchRead { issued_ms: now_ms }, None)
            }
            Phase::Settling { read_at_ms, .. } if now_ms >= read_at_ms => {
                self.qdisk_issue(IoKind::SettleRead, None)
            }
            Phase::Held {
                last_renewal_ms, ..
            } if now_ms >= last_renewal_ms + renew => {
                self.qdisk_issue(IoKind::RenewRead { start_ms: now_ms }, None)
            }
            _ => {}
        }
    }

    fn qdisk_take_io(&mut self, op: u64) -> Option<IoKind> {
        let io = self.qdisk.io.filter(|io| io.op == op)?;
        self.qdisk.io = None;
        (!io.stale).then_some(io.kind)
    }

    /// Our record with `counter`, naming the newest view this node has seen.
    fn qdisk_ours(&self, counter: u64) -> QuorumDiskRecord {
        QuorumDiskRecord {
            owner: self.cfg.me,
            incarnation: self.cfg.incarnation,
            counter,
            view: self.max_view_seen,
        }
    }

    /// Whether `r` is our record with the counter of our last write.
    fn qdisk_is_ours(&self, r: &QuorumDiskRecord) -> bool {
        r.is(self.cfg.me, self.cfg.incarnation, self.qdisk.counter)
    }

    pub(super) fn on_qdisk_read(
        &mut self,
        now_ms: u64,
        op: u64,
        result: Result<Option<QuorumDiskRecord>, String>,
    ) {
        let Some(kind) = self.qdisk_take_io(op) else {
            return;
        };
        if let Ok(r) = &result {
            self.qdisk.last_seen = *r;
            self.qdisk.last_error = None;
            if let Some(r) = r {
                self.max_view_seen = self.max_view_seen.max(r.view);
            }
        }
        match (kind, self.qdisk.phase) {
            (IoKind::WatchRead { issued_ms }, Phase::Watching { seen, .. }) => {
                self.on_qdisk_watch_read(now_ms, issued_ms, seen, result)
            }
            (
                IoKind::SettleRead,
                Phase::Settling {
                    wrote_ms,
                    hold_until_ms,
                    ..
                },
            ) => self.on_qdisk_settle_read(now_ms, wrote_ms, hold_until_ms, result),
            (IoKind::RenewRead { start_ms }, Phase::Held { .. }) => {
                self.on_qdisk_renew_read(now_ms, start_ms, result)
            }
            _ => {}
        }
    }

    /// A watching read (issued at `issued_ms`; `seen`: the record seen unchanged
    /// since when) completed: write ours once the record stayed the same for the
    /// lease wait, else read again.
    fn on_qdisk_watch_read(
        &mut self,
        now_ms: u64,
        issued_ms: u64,
        seen: Option<(Option<QuorumDiskRecord>, u64)>,
        result: Result<Option<QuorumDiskRecord>, String>,
    ) {
        let wait = self.cfg.lease_wait_ms();
        let renew = renew_interval_ms(&self.cfg);
        let record = match result {
            Ok(r) => r,
            Err(e) => {
                if self.qdisk.last_error.as_deref() != Some(e.as_str()) {
                    let line = format!(
                        "node {}: cannot read the quorum disk: {e}",
                        self.name(self.cfg.me)
                    );
                    self.log(log::Level::Warn, line);
                    self.qdisk.last_error = Some(e);
                }
                self.qdisk.phase = Phase::Watching {
                    seen: None,
                    next_read_ms: now_ms + renew,
                };
                return;
            }
        };
        match seen {
            // Unchanged for the wait (this read started at or after its end;
            // `since` is when the first read completed): its owner's hold
            // has run out. This read is the one right before the write,
            // which must start within the window of when the read started.
            Some((r, since)) if r == record && issued_ms >= since + wait => {
                self.qdisk.counter += 1;
                let ours = self.qdisk_ours(self.qdisk.counter);
                log::info!(
                    "node {}: the quorum disk's record {record:?} stayed the same for {} ms; writing ours",
                    self.cfg.me,
                    issued_ms - since
                );
                self.qdisk.phase = Phase::Writing;
                let window = write_window_ms(&self.cfg);
                self.qdisk_issue(
                    IoKind::AcquireWrite { read_ms: issued_ms },
                    Some((ours, issued_ms + window)),
                );
            }
            Some((r, since)) if r == record => {
                self.qdisk.phase = Phase::Watching {
                    seen,
                    next_read_ms: (now_ms + renew).min(since + wait),
                };
            }
            _ => {
                self.qdisk.phase = Phase::Watching {
                    seen: Some((record, now_ms)),
                    next_read_ms: now_ms + renew,
                };
            }
        }
    }

    /// The read back after our acquiring write (at `wrote_ms`) completed: the disk
    /// is held when it still holds our record.
    fn on_qdisk_settle_read(
        &mut self,
        now_ms: u64,
        wrote_ms: u64,
        hold_until_ms: u64,
        result: Result<Option<QuorumDiskRecord>, String>,
    ) {
        match result {
            Ok(Some(r)) if self.qdisk_is_ours(&r) => {
                let counts_from_ms = wrote_ms + self.cfg.lease_wait_ms();
                let line = format!(
                    "node {}: acquired the quorum disk; its vote counts in {} ms",
                    self.name(self.cfg.me),
                    counts_from_ms.saturating_sub(now_ms)
                );
                self.log(log::Level::Info, line);
                self.qdisk.phase = Phase::Held {
                    counts_from_ms,
                    hold_until_ms,
                    // Renew at once: the hold so far counts from the read
                    // before our write.
                    last_renewal_ms: now_ms.saturating_sub(renew_interval_ms(&self.cfg)),
                };
            }
            Ok(other) => {
                let why = match other {
                    Some(r) => format!("node {} wrote it after us", self.name(r.owner)),
                    None => "its record is torn".to_string(),
                };
                self.qdisk_lose(now_ms, &why);
            }
            Err(e) => self.qdisk_lose(now_ms, &format!("cannot read it back: {e}")),
        }
    }

    /// The read before a renewal (started at `start_ms`) completed: write our next
    /// record while the disk still holds ours, else the disk is lost.
    fn on_qdisk_renew_read(
        &mut self,
        now_ms: u64,
        start_ms: u64,
        result: Result<Option<QuorumDiskRecord>, String>,
    ) {
        match result {
            Ok(Some(r)) if self.qdisk_is_ours(&r) => {
                self.qdisk.counter += 1;
                let ours = self.qdisk_ours(self.qdisk.counter);
                let window = write_window_ms(&self.cfg);
                self.qdisk_issue(
                    IoKind::RenewWrite { start_ms },
                    Some((ours, start_ms + window)),
                );
            }
            Ok(Some(r)) => {
                let why = format!(
                    "node {} holds it now (start {}, counter {})",
                    self.name(r.owner),
                    r.incarnation,
                    r.counter
                );
                self.qdisk_lose(now_ms, &why);
            }
            Ok(None) => self.qdisk_lose(now_ms, "its record is torn"),
            Err(e) => self.qdisk_lose(now_ms, &format!("cannot read it: {e}")),
        }
    }

    pub(super) fn on_qdisk_written(&mut self, now_ms: u64, op: u64, result: Result<(), String>) {
        let Some(kind) = self.qdisk_take_io(op) else {
            return;
        };
        let lease = self.cfg.lease_ms;
        match (kind, self.qdisk.phase, result) {
            (IoKind::AcquireWrite { read_ms }, Phase::Writing, Ok(())) => {
                self.qdisk.phase = Phase::Settling {
                    wrote_ms: now_ms,
                    read_at_ms: now_ms + settle_ms(&self.cfg),
                    hold_until_ms: read_ms + lease,
                };
            }
            (IoKind::AcquireWrite { .. }, Phase::Writing, Err(e)) => {
                self.qdisk_lose(now_ms, &format!("writing it failed: {e}"));
            }
            (
                IoKind::RenewWrite { start_ms },
                Phase::Held {
                    counts_from_ms,
                    hold_until_ms,
                    ..
                },
                Ok(()),
            ) => {
                self.qdisk.phase = Phase::Held {
                    counts_from_ms,
                    hold_until_ms: hold_until_ms.max(start_ms + lease),
                    last_renewal_ms: start_ms,
                };
            }
            (IoKind::RenewWrite { .. }, Phase::Held { .. }, Err(e)) => {
                self.qdisk_lose(now_ms, &format!("renewing it failed: {e}"));
            }
            _ => {}
        }
    }
}
