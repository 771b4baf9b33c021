//! Node-crash recovery of shared mirrors (with or without a dirty region log), decided here
//! so the simulator covers it (docs/PROTOCOL.md, "Node-crash recovery").
//!
//! The configuration records the *open* node starts: those whose data plane may
//! write shared mirrored volumes and that did not stop cleanly
//! ([`ConfigModel::open_nodes`]). The rules:
//!
//! - **Open before serving.** A node's data plane is given a lease
//!   ([`Node::data_plane_lease_ms`]) only while the committed configuration holds
//!   this start open ([`ConfigModel::may_serve`]). The master proposes the open
//!   change of every member start that is not open, after every recovery due.
//! - **Recovery.** An open start that is not a member of the master's view with
//!   that incarnation, or that the master removed from its view since (it may have
//!   been cut off in the middle of a write and joined again with the same start), is
//!   recovered ([`ConfigModel::node_recover`]: one ACTIVE plex per mirror, the others
//!   SYNCING; the core's resync copies them). The transaction waits for the lost
//!   node's lease like any other, so it commits only once that data plane surely
//!   stopped writing.
//! - **Dirty region logs.** When shared volumes have a log
//!   ([`ConfigModel::dirty_logs`]), the master first reads the start's sections
//!   ([`Action::ReadDirtyLogs`], answered by [`Event::DirtyLogsRead`]), and only
//!   once that start's data plane surely stopped writing (the bound its
//!   transaction waits for, [`Node::may_commit`]): a mark made after the read would
//!   be missed. The change then carries what the sections said: volumes the start
//!   never wrote need no resync, the others are resynced in their dirty ranges
//!   only. A read in flight is dropped when this node stops being master or its
//!   view changes (a new master reads again); one not answered within
//!   `reply_timeout_ms` counts as unreadable (whole resync). A start that is a
//!   member of the view again (cut off, then back with the same start) may be
//!   serving: its mirrors are resynced whole, its log is not read.
//! - **A lost data plane** (`Event::DataPlaneLost`): the node reads its own
//!   sections, once the last lease it gave that data plane ran out (the data
//!   plane may be alive and cut off from the coordinator only, writing until
//!   then), and asks the master for the recovery with them. A new master (takeover or a whole-cluster restart) finds the
//!   open starts on the disks, so no recovery is lost; a start that joined again
//!   is opened again only after its old start's recovery (the open change is
//!   refused while another start of the node is open).
//! - **Clean stop.** A stopping member that is open (and idle otherwise) stops its
//!   data plane's lease, then asks the master to close its start
//!   ([`ConfigModel::node_close`]); it finishes stopping once answered (or when the
//!   answer cannot come). The master never opens a start it closed again.
//!
//! - **Logs stay put while a recovery needs them.** A change that would give a
//!   volume's dirty region log another id or other copies (a `dg rm-disk` moving a
//!   copy, a grow moving the log) is refused while an open start that is not a
//!   member of the master's view (its recovery reads its sections) has a section
//!   in that log ([`Node::recovery_keeps_logs`]): the recovery would read the new
//!   log, which that start never wrote, and skip its dirty regions.
//!
//! The master proposes these as its own requests (ids from
//! [`RECOVERY_REQUEST_BASE`]), at the front of its queue, one at a time.

use super::*;

/// Request ids from here up to [`RESYNC_REQUEST_BASE`] are the recovery
/// bookkeeping's own (never a driver's: drivers count from 1).
pub const RECOVERY_REQUEST_BASE: u64 = 1 << 61;
/// Pause before a refused or failed bookkeeping change is proposed again.
pub const RECOVERY_RETRY_MS: u64 = 200;
/// Most node starts the master remembers as removed from its view while open (one
/// per configured node in practice; the oldest are dropped past it, their entries
/// are still on the disks).
pub const MAX_LOST_STARTS: usize = 64;

/// Most sections one dirty-log read covers (one per shared volume with a log);
/// past it, the others are resynced whole.
pub const MAX_LOG_SECTIONS_PER_READ: usize = 4096;

/// A read of one start's dirty region log sections.
#[derive(Debug)]
struct LogRead {
    op: u64,
    start: (NodeId, u64),
    /// The view it was asked in (master reads: dropped when it changes).
    view: u64,
    sections: Vec<DirtyLogSection>,
    since_ms: u64,
    /// The answer, once it came.
    results: Option<Vec<DirtyLogRead>>,
}

/// The recovery bookkeeping of one node.
#[derive(Debug, Default)]
pub(super) struct Recovery {
    /// Number of the last dirty-log read asked for.
    read_op: u64,
    /// Master: the read of a lost start's log sections, in flight or answered.
    master_read: Option<LogRead>,
    /// The read of this start's own sections after its data plane was lost.
    self_read: Option<LogRead>,
    /// The latest end (this node's clock) of a lease this start handed its data
    /// plane ([`Node::data_plane_lease_ms`]).
    lease_given_until_ms: std::cell::Cell<u64>,
    /// After a data-plane loss: until then (this node's clock) the lost data plane
    /// may still write (its lease), so its sections are not read before.
    lost_lease_until_ms: u64,
    /// Next request number (added to [`RECOVERY_REQUEST_BASE`]).
    next: u64,
    /// The master's bookkeeping request in flight.
    pending: Option<RequestId>,
    /// No bookkeeping proposal before this time (after a failure).
    retry_at_ms: u64,
    /// Master: open starts it removed from its view (recovered even if the node
    /// joins again with the same start).
    lost: BTreeSet<(NodeId, u64)>,
    /// Master: starts it closed (a clean stop): never opened again.
    closed: BTreeSet<(NodeId, u64)>,
    /// This node's clean-stop close: its request while in flight.
    closing: Option<RequestId>,
    /// The close was asked for (answered or not): the stop may finish.
    close_done: bool,
    /// This start's data plane was lost while the start was open (it may have died
    /// in the middle of a mirrored write): no lease until the start is recovered.
    data_plane_lost: bool,
    /// This node's request for the recovery of its own start, while in flight.
    self_recovering: Option<RequestId>,
    /// A slave committed transaction `.0`, which opened this start, before knowing
    /// that its master wrote it to the disks (the designated successor commits
    /// before the disk write): no lease on its strength until the master is seen to
    /// have committed it (after its disk write) or this node wrote it itself. Were
    /// master and successor to die first, the disks would not hold the start open
    /// although its data plane served.
    pub(super) open_undurable: Option<TxnId>,
    /// The last transaction of the master's own requests (this bookkeeping's, a
    /// resync's end) this node took part in (see
    /// [`NodeConfig::bookkeeping_failpoints`]).
    bookkeeping_txn: Option<TxnId>,
}

/// Whether `request` is one of the recovery bookkeeping's own.
pub(super) fn is_own(request: RequestId) -> bool {
    (RECOVERY_REQUEST_BASE..RESYNC_REQUEST_BASE).contains(&request.0)
}

impl<M: ConfigModel> Node<M> {
    /// What the driver renews its data plane's lease with: the node's lease
    /// ([`Node::lease_remaining_ms`]) while the committed configuration holds this
    /// start open and the node is not stopping; 0 otherwise.
    pub fn data_plane_lease_ms(&self, now_ms: u64) -> u64 {
        let left = self.data_plane_lease_left_ms(now_ms);
        if left > 0 {
            let given = &self.recovery.lease_given_until_ms;
            given.set(given.get().max(now_ms.saturating_add(left)));
        }
        left
    }

    fn data_plane_lease_left_ms(&self, now_ms: u64) -> u64 {
        if self.stopping
            || self.recovery.data_plane_lost
            || self.recovery.open_undurable.is_some()
            || !self
                .committed
                .config
                .may_serve(self.cfg.me, self.cfg.incarnation)
        {
            return 0;
        }
        self.lease_remaining_ms(now_ms)
    }

    /// A slave commits `txn` (config `after`): notes whether it opened this start
    /// before the disks are known to hold it ([`Recovery::open_undurable`]).
    pub(super) fn recovery_slave_commit(&mut self, txn: TxnId, before: &M, after: &M) {
        let me = (self.cfg.me, self.cfg.incarnation);
        if !before.open_nodes().contains(&me) && after.open_nodes().contains(&me) {
            self.recovery.open_undurable = Some(txn);
        }
    }

    /// The disks are known to hold transaction `txn` (the master committed it, which
    /// it does after its disk write, or this node wrote it in a takeover, or loaded a
    /// configuration from them): an open it made is durable.
    pub(super) fn recovery_durable(&mut self, txn: TxnId) {
        if self.recovery.open_undurable.is_some_and(|t| t <= txn) {
            self.recovery.open_undurable = None;
        }
    }

    fn recovery_request(&mut self) -> RequestId {
        self.recovery.next += 1;
        RequestId(RECOVERY_REQUEST_BASE + self.recovery.next)
    }

    /// Master: `peer` (start `incarnation`) left the view; if it is open it is
    /// recovered even should it join again with the same start.
    pub(super) fn recovery_member_lost(&mut self, peer: NodeId, incarnation: Option<u64>) {
        let Some(inc) = incarnation else {
            return;
        };
        if self.committed.config.open_nodes().contains(&(peer, inc)) {
            if self.recovery.lost.len() >= MAX_LOST_STARTS {
                self.recovery.lost.pop_first();
            }
            self.recovery.lost.insert((peer, inc));
        }
    }

    /// The next bookkeeping change the master proposes: a recovery first, then an
    /// open. None while a recovery waits for its dirty-log read.
    fn recovery_next_change(&mut self, now_ms: u64) -> Option<(String, M::Change)> {
        let view = self.view.clone()?;
        let open = self.committed.config.open_nodes();
        self.recovery.lost.retain(|s| open.contains(s));
        for &(node, inc) in &open {
            let member_again = view.incarnation(node) == Some(inc);
            let stale = !member_again || self.recovery.lost.contains(&(node, inc));
            if !stale || self.committed.config.node_recover(node, inc, &[]).is_none() {
                continue;
            }
            // A start back in the view may be serving again: no read of its log
            // can be sure to see its last mark; whole resync.
            let sections = if member_again {
                Vec::new()
            } else {
                self.committed.config.dirty_logs(node)
            };
            let logs = if sections.is_empty() {
                Vec::new()
            } else {
                self.recovery_master_read(now_ms, (node, inc), view.id, sections)?
            };
            let c = self.committed.config.node_recover(node, inc, &logs)?;
            let what = format!(
                "recovering the mirrors of node {} (start {inc}): it was lost without a clean stop{}",
                self.name(node),
                log_summary(&logs)
            );
            return Some((what, c));
        }
        let config = &self.committed.config;
        for (&node, &inc) in view.members.iter().zip(&view.incarnations) {
            if self.recovery.closed.contains(&(node, inc)) {
                continue;
            }
            if let Some(c) = config.node_open(node, inc) {
                return Some((format!("opening node {} (start {inc})", self.name(node)), c));
            }
        }
        None
    }

    /// Err (naming the volume and the start) when `after`, the configuration a
    /// change would make, moves or replaces the dirty region log of a volume in
    /// which an open start whose recovery will read its section has one (a start
    /// not a member of the view, or this very start after its data plane was
    /// lost): that section would be lost. Such a change waits until the start is
    /// recovered. The master checks it before it proposes a change, every
    /// participant when it checks one (only it knows its data plane was lost).
    pub(super) fn recovery_keeps_logs(&self, after: &M) -> Result<(), String> {
        let Some(view) = self.view.as_ref() else {
            return Ok(());
        };
        let me = (self.cfg.me, self.cfg.incarnation);
        for (node, inc) in self.committed.config.open_nodes() {
            // This start after its data plane was lost reads its own sections for
            // its recovery; any other member's data plane re-inits its sections at
            // the commit (a member start that is recovered is resynchronised whole).
            let own_read = (node, inc) == me && self.recovery.data_plane_lost;
            if view.incarnation(node) == Some(inc) && !own_read {
                continue;
            }
            let after_sections = after.dirty_logs(node);
            for before in self.committed.config.dirty_logs(node) {
                let moved = after_sections.iter().any(|a| {
                    a.dg == before.dg
                        && a.volume == before.volume
                        && (a.log_id != before.log_id || a.copies != before.copies)
                });
                if moved {
                    return Err(format!(
                        "volume {} of disk group {}: its dirty region log cannot move while \
                         node {} (start {inc}) waits for its recovery, which reads that node's \
                         section of the log; retry once the node is recovered",
                        before.volume,
                        before.dg,
                        self.name(node)
                    ));
                }
            }
        }
        Ok(())
    }

    /// Master: the dirty-log sections of lost start `start`, once read: asks for
    /// the read (once that start's data plane surely stopped writing) and returns
    /// None until its answer came.
    fn recovery_master_read(
        &mut self,
        now_ms: u64,
        start: (NodeId, u64),
        view: u64,
        sections: Vec<DirtyLogSection>,
    ) -> Option<Vec<(DirtyLogSection, DirtyLogRead)>> {
        let current = self
            .recovery
            .master_read
            .as_ref()
            .is_some_and(|r| r.start == start && r.view == view && r.sections == sections);
        if current {
            return self.recovery_read_result(now_ms, false);
        }
        // The read must come after the start's last mark: its data plane's lease
        // ran out (every lost node's, as its transaction waits for).
        if !self.may_commit(now_ms) {
            return None;
        }
        self.recovery.master_read = Some(self.recovery_read_ask(now_ms, start, view, sections));
        None
    }

    /// Asks the driver for a read of `sections` (at most
    /// [`MAX_LOG_SECTIONS_PER_READ`]; the others count as unreadable).
    fn recovery_read_ask(
        &mut self,
        now_ms: u64,
        start: (NodeId, u64),
        view: u64,
        sections: Vec<DirtyLogSection>,
    ) -> LogRead {
        self.recovery.read_op += 1;
        let op = self.recovery.read_op;
        let asked: Vec<DirtyLogSection> = sections
            .iter()
            .take(MAX_LOG_SECTIONS_PER_READ)
            .cloned()
            .collect();
        let line = format!(
            "node {}: reading the dirty region logs of node {} (start {}): {} volume(s)",
            self.name(self.cfg.me),
            self.name(start.0),
            start.1,
            asked.len()
        );
        self.log(log::Level::Info, line);
        self.out.push(Action::ReadDirtyLogs {
            op,
            node: start.0,
            incarnation: start.1,
            sections: asked,
        });
        LogRead {
            op,
            start,
            view,
            sections,
            since_ms: now_ms,
            results: None,
        }
    }

    /// The answered read (master's, or this node's own with `own`), taken: each
    /// section with its result. None while it is in flight (for at most
    /// `reply_timeout_ms`: then every section counts as unreadable).
    fn recovery_read_result(
        &mut self,
        now_ms: u64,
        own: bool,
    ) -> Option<Vec<(DirtyLogSection, DirtyLogRead)>> {
        let timeout = self.cfg.reply_timeout_ms;
        let slot = if own {
            &mut self.recovery.self_read
        } else {
            &mut self.recovery.master_read
        };
        let r = slot.as_mut()?;
        if r.results.is_none() && now_ms >= r.since_ms.saturating_add(timeout) {
            log::warn!(
                "node {}: the dirty region logs of node {} (start {}) were not read within {timeout} ms: its mirrors are resynced whole",
                self.cfg.me,
                r.start.0,
                r.start.1
            );
            r.results = Some(Vec::new());
        }
        r.results.as_ref()?;
        let r = slot.take()?;
        let mut results = r.results.unwrap_or_default().into_iter();
        Some(
            r.sections
                .into_iter()
                .map(|s| {
                    let read = results.next().unwrap_or_else(|| {
                        DirtyLogRead::Unreadable("not read (no answer for it)".into())
                    });
                    (s, read)
                })
                .collect(),
        )
    }

    /// [`Event::DirtyLogsRead`]: keeps the answer of the read still wanted.
    pub(super) fn on_dirty_logs_read(&mut self, op: u64, results: Vec<DirtyLogRead>) {
        for r in [
            self.recovery.master_read.as_mut(),
            self.recovery.self_read.as_mut(),
        ]
        .into_iter()
        .flatten()
        {
            if r.op == op && r.results.is_none() {
                r.results = Some(results);
                return;
            }
        }
    }

    /// `Event::DataPlaneLost`: the data plane (a process of its own) may have died in
    /// the middle of a mirrored write. While this start is open, the node gives its
    /// data plane no lease (the reconnected one, or a new one) until the start was
    /// recovered; it asks the master for that recovery itself
    /// ([`Node::recovery_self_poll`]), and the master opens the start again after it.
    pub(super) fn recovery_data_plane_lost(&mut self, now_ms: u64) {
        let me = (self.cfg.me, self.cfg.incarnation);
        if self.recovery.data_plane_lost || !self.committed.config.open_nodes().contains(&me) {
            return;
        }
        self.recovery.data_plane_lost = true;
        // The lost data plane (maybe alive, only its connection broken) may write
        // until the last lease it was handed runs out.
        self.recovery.lost_lease_until_ms = self.recovery.lease_given_until_ms.get().max(now_ms);
        self.recovery.self_read = None;
        let line = format!(
            "node {}: its data plane was lost while it may write the shared mirrors: no lease until its start {} is recovered",
            self.name(me.0),
            me.1
        );
        self.log(log::Level::Warn, line);
    }

    /// After a data-plane loss: asks the master to recover this start (once at a
    /// time, again after a failure) until the committed configuration no longer
    /// holds it open.
    fn recovery_self_poll(&mut self, now_ms: u64) {
        if !self.recovery.data_plane_lost {
            return;
        }
        let (me, inc) = (self.cfg.me, self.cfg.incarnation);
        if self.committed.config.node_recover(me, inc, &[]).is_none() {
            self.recovery.data_plane_lost = false;
            self.recovery.self_recovering = None;
            self.recovery.self_read = None;
            return;
        }
        let member = matches!(self.state, State::Member)
            && self
                .view
                .as_ref()
                .is_some_and(|v| v.incarnation(me) == Some(inc));
        if self.recovery.self_recovering.is_some()
            || !member
            || self.stopping
            || now_ms < self.recovery.retry_at_ms
            // The lost data plane may still write (and mark its log) until then.
            || now_ms < self.recovery.lost_lease_until_ms
        {
            return;
        }
        let sections = self.committed.config.dirty_logs(me);
        let logs = if sections.is_empty() {
            Vec::new()
        } else if self
            .recovery
            .self_read
            .as_ref()
            .is_some_and(|r| r.sections == sections)
        {
            match self.recovery_read_result(now_ms, true) {
                Some(logs) => logs,
                None => return,
            }
        } else {
            let view = self.view.as_ref().map_or(0, |v| v.id);
            self.recovery.self_read =
                Some(self.recovery_read_ask(now_ms, (me, inc), view, sections));
            return;
        };
        let Some(change) = self.committed.config.node_recover(me, inc, &logs) else {
            return;
        };
        let line = format!(
            "node {}: asking for the recovery of its start {inc} (its data plane was lost){}",
            self.name(me),
            log_summary(&logs)
        );
        self.log(log::Level::Info, line);
        self.recovery.self_recovering = self.recovery_send_own(now_ms, change);
    }

    /// Sends one of this node's own bookkeeping changes to the master (queued at the
    /// front when this node is master); its answer comes to `recovery_answer`.
    /// None when there is no master to ask.
    fn recovery_send_own(&mut self, now_ms: u64, change: M::Change) -> Option<RequestId> {
        let me = self.cfg.me;
        let request = self.recovery_request();
        if self.is_master() {
            let origin = Origin { node: me, request };
            self.master
                .as_mut()?
                .queue
                .push_front((origin, Request::Change(change)));
            self.master_next(now_ms);
        } else {
            let master = self.view.as_ref()?.master;
            self.forwards.insert(
                request,
                txn::Forward {
                    committed: false,
                    sent_ms: now_ms,
                },
            );
            let body = WireRequest::Change(M::encode_change(&change));
            self.send(master, Message::Forward { request, body });
        }
        Some(request)
    }

    /// Proposes the master's next bookkeeping change (called after every event).
    pub(super) fn recovery_poll(&mut self, now_ms: u64) {
        self.recovery_self_poll(now_ms);
        if !self.is_master() {
            self.recovery.master_read = None;
            self.recovery.pending = None;
            self.recovery.lost.clear();
            self.recovery.closed.clear();
            return;
        }
        if self.stopping || self.recovery.pending.is_some() || now_ms < self.recovery.retry_at_ms {
            return;
        }
        let Some((what, change)) = self.recovery_next_change(now_ms) else {
            return;
        };
        let request = self.recovery_request();
        self.recovery.pending = Some(request);
        let line = format!("node {}: {what}", self.name(self.cfg.me));
        self.log(log::Level::Info, line);
        let origin = Origin {
            node: self.cfg.me,
            request,
        };
        let Some(ms) = self.master.as_mut() else {
            return;
        };
        // Ahead of client requests: a recovery makes reads agree, an open lets a
        // member's data plane serve.
        ms.queue.push_front((origin, Request::Change(change)));
        self.master_next(now_ms);
    }

    /// Master: whether it closed `start` after a clean stop (it was not recovered).
    pub(super) fn recovery_closed(&self, start: (NodeId, u64)) -> bool {
        self.recovery.closed.contains(&start)
    }

    /// A stopping node that is otherwise idle: returns true while its close is
    /// still to be asked for or answered (the stop waits).
    pub(super) fn recovery_close_busy(&mut self, now_ms: u64) -> bool {
        if self.recovery.close_done {
            return false;
        }
        if self.recovery.closing.is_some() {
            return true;
        }
        let me = self.cfg.me;
        let inc = self.cfg.incarnation;
        let member = matches!(self.state, State::Member)
            && self
                .view
                .as_ref()
                .is_some_and(|v| v.incarnation(me) == Some(inc));
        // A start whose data plane was lost is recovered, never closed.
        let change = if member && !self.recovery.data_plane_lost {
            self.committed.config.node_close(me, inc)
        } else {
            None
        };
        let Some(change) = change else {
            self.recovery.close_done = true;
            return false;
        };
        // The data plane's lease is already 0 (`data_plane_lease_ms` while
        // stopping); the close is asked for now.
        let line = format!(
            "node {}: stopping cleanly: its shared volumes are no longer served; closing its start {inc} (no recovery follows)",
            self.name(me)
        );
        self.log(log::Level::Info, line);
        if self.is_master() {
            self.recovery.closed.insert((me, inc));
        }
        self.recovery.closing = self.recovery_send_own(now_ms, change);
        if self.recovery.closing.is_none() {
            self.recovery.close_done = true;
            return false;
        }
        true
    }

    /// Whether the master's queue starts with this node's own close (a stopping
    /// master still runs it).
    pub(super) fn recovery_close_queued(&self) -> bool {
        self.recovery.closing.is_some_and(|r| {
            self.master
                .as_ref()
                .and_then(|ms| ms.queue.front())
                .is_some_and(|(o, _)| o.node == self.cfg.me && o.request == r)
        })
    }

    /// Master: a forwarded close of `from`'s start is about to run; that start is
    /// never opened again.
    pub(super) fn recovery_note_close(&mut self, from: NodeId, change: &M::Change) {
        if let Some(inc) = self.view.as_ref().and_then(|v| v.incarnation(from)) {
            if self.committed.config.node_close(from, inc).as_ref() == Some(change) {
                self.recovery.closed.insert((from, inc));
            }
        }
    }

    /// A clean stop that could not make sure its data plane stopped writing (the
    /// driver could not revoke its lease or drain it): this start is not closed, so
    /// the master recovers it once its lease has run out. Called before
    /// [`Event::Shutdown`].
    pub fn keep_open_at_stop(&mut self) {
        if !self.recovery.close_done && self.recovery.closing.is_none() {
            self.recovery.close_done = true;
            let line = format!(
                "node {}: stopping without closing its start {}: its mirrors will be recovered",
                self.name(self.cfg.me),
                self.cfg.incarnation
            );
            self.log(log::Level::Warn, line);
        }
    }

    /// A transaction starts here (validated on the master, checked on a slave):
    /// remembers whether it carries one of the bookkeeping's own requests.
    pub(super) fn recovery_note_txn(&mut self, txn: TxnId, origin: Origin) {
        // The end of a resync (the master's own `resync_done`) too: a recovery
        // starts resyncs that no test asked for.
        if is_own(origin.request) || origin.request.0 >= RESYNC_REQUEST_BASE {
            self.recovery.bookkeeping_txn = Some(txn);
        }
    }

    /// Whether `txn` is the last of the master's own transactions (this
    /// bookkeeping's, a resync's end) this node took part in: the daemon's
    /// failpoints leave those alone ([`NodeConfig::bookkeeping_failpoints`]).
    pub fn is_bookkeeping_txn(&self, txn: TxnId) -> bool {
        self.recovery.bookkeeping_txn == Some(txn)
    }

    /// A transaction's failpoint, unless it is the bookkeeping's own transaction and
    /// [`NodeConfig::bookkeeping_failpoints`] is off: an armed plexd then dies in the
    /// transaction a test asks for, not in the opens and recoveries that follow
    /// every restart.
    pub(super) fn txn_failpoint(&mut self, name: &'static str, txn: TxnId) {
        if !self.cfg.bookkeeping_failpoints && self.is_bookkeeping_txn(txn) {
            return;
        }
        self.failpoint(name);
    }

    /// The answer to one of the bookkeeping's own requests.
    pub(super) fn recovery_answer(&mut self, request: RequestId, result: Result<(), RequestError>) {
        if self.recovery.self_recovering == Some(request) {
            self.recovery.self_recovering = None;
            if let Err(e) = result {
                self.recovery.retry_at_ms = self.clock_ms + RECOVERY_RETRY_MS;
                let line = format!(
                    "node {}: the recovery of its own start failed: {e}; asking again",
                    self.name(self.cfg.me)
                );
                self.log(log::Level::Warn, line);
            }
            return;
        }
        if self.recovery.closing == Some(request) {
            self.recovery.closing = None;
            self.recovery.close_done = true;
            let line = match &result {
                Ok(()) => format!("node {}: closed cleanly", self.name(self.cfg.me)),
                Err(e) => format!(
                    "node {}: could not close cleanly ({e}); its mirrors will be recovered",
                    self.name(self.cfg.me)
                ),
            };
            self.log(log::Level::Info, line);
            return;
        }
        if self.recovery.pending != Some(request) {
            return;
        }
        self.recovery.pending = None;
        if let Err(e) = result {
            self.recovery.retry_at_ms = self.clock_ms + RECOVERY_RETRY_MS;
            let line = format!(
                "node {}: recovery bookkeeping change failed: {e}; trying again",
                self.name(self.cfg.me)
            );
            self.log(log::Level::Warn, line);
        }
    }
}

/// What a recovery's log reads said, for its log line: empty without logs.
fn log_summary(logs: &[(DirtyLogSection, DirtyLogRead)]) -> String {
    if logs.is_empty() {
        return String::new();
    }
    let (mut unused, mut dirty, mut bytes, mut unreadable) = (0, 0, 0u64, 0);
    for (_, r) in logs {
        match r {
            DirtyLogRead::Unused => unused += 1,
            DirtyLogRead::Dirty(ranges) if ranges.is_empty() => unused += 1,
            DirtyLogRead::Dirty(ranges) => {
                dirty += 1;
                bytes += ranges.iter().map(|r| r.1).sum::<u64>();
            }
            DirtyLogRead::Unreadable(_) => unreadable += 1,
        }
    }
    format!(
        "; dirty region logs: {dirty} volume(s) with {bytes} dirty bytes, {unused} clean, {unreadable} unreadable (resynced whole)"
    )
}
