//! The order of the main loop's work while the driver thread carries out slow actions
//! ([`super::driver`]): plain logic, unit-tested.
//!
//! [`plan`] turns one step of the core (the actions of one event) into operations in
//! order; [`Pipeline`] holds the driver's jobs not yet answered and the loop's work
//! that must wait for them. The rules:
//!
//! - Messages leave after the step's other actions: a failpoint exit in the step
//!   loses them, as a kill -9 before the network saw them would. Once no failpoint is
//!   left in the step, they leave before a slow local action (local check, kernel
//!   prepare or commit), so the peers work on them in the meantime (the master's
//!   Check and Prepare, its Commit to the others).
//! - A message the step sends after one of its own jobs waits for that job: nothing
//!   leaves before the disk write or the kernel phase it follows (the master's COMMIT
//!   to the other slaves after its disk write). A message to a peer with messages
//!   waiting waits behind them (per-peer order). Other messages leave at once, even
//!   while older jobs run: peers are answered during a drain.
//! - Replies, failpoints and the stop wait for every job before them: a client hears
//!   of a change once this node's data plane applied it.
//! - Heartbeats never wait, unless an armed exit failpoint waits: the process is as
//!   good as dead from there, so everything after it waits too.

use std::collections::{BTreeMap, VecDeque};

use crate::core::{Action, ConfigModel, Message, NodeId, RequestError, RequestId};

/// Jobs and the loop's work waiting behind them, at most, before the main loop stops
/// reading inputs and only waits for the driver.
pub const PIPELINE_MAX: usize = 4 * super::driver::DRIVER_QUEUE_DEPTH;

/// Work of the main loop that may have to wait for the driver.
#[derive(Debug, PartialEq)]
pub enum Item {
    /// A message to a peer.
    Send(NodeId, Message),
    /// The core's reply to a request.
    Reply(RequestId, Result<(), RequestError>),
    /// A failpoint (a timer mark; an exit when armed).
    Failpoint(&'static str),
    /// The core is ready to stop.
    ShutdownReady,
}

/// One operation of a step, in order (see [`plan`]).
#[derive(Debug, PartialEq)]
pub enum Op<M: ConfigModel> {
    /// Hand this slow action to the driver.
    Job(Action<M>),
    /// This loop work, in order with the jobs ([`Pipeline::later`]).
    Later(Item),
    /// These messages; `after_job`: a job of the same step comes before them
    /// ([`Pipeline::message`]).
    Send(Vec<(NodeId, Message)>, bool),
    /// Carry this out now (logging only).
    Now(Action<M>),
}

/// Whether the driver carries `a` out.
pub fn is_slow<M: ConfigModel>(a: &Action<M>) -> bool {
    matches!(
        a,
        Action::LocalCheck { .. }
            | Action::KernelPrepare { .. }
            | Action::KernelCommit { .. }
            | Action::KernelAbort { .. }
            | Action::KernelLoad { .. }
            | Action::WriteDisks { .. }
            | Action::ReadDisks
            | Action::CheckDiskAccess { .. }
            | Action::LeaveCluster { .. }
            | Action::Quiesce { .. }
            | Action::Resume { .. }
            | Action::CopyChunk { .. }
            | Action::PrivateChange { .. }
    )
}

/// The operations of one step of the core, in order (the rules above).
pub fn plan<M: ConfigModel>(actions: Vec<Action<M>>) -> Vec<Op<M>> {
    let mut ops = Vec::new();
    let mut sends = Vec::new();
    let mut failpoints_left = actions
        .iter()
        .filter(|a| matches!(a, Action::Failpoint(_)))
        .count();
    let mut after_job = false;
    for a in actions {
        match a {
            Action::Send { to, msg } => sends.push((to, msg)),
            Action::Reply { request, result } => ops.push(Op::Later(Item::Reply(request, result))),
            Action::Failpoint(name) => {
                failpoints_left -= 1;
                ops.push(Op::Later(Item::Failpoint(name)));
            }
            Action::ShutdownReady => ops.push(Op::Later(Item::ShutdownReady)),
            a if is_slow(&a) => {
                let flush_before = matches!(
                    a,
                    Action::LocalCheck { .. }
                        | Action::KernelPrepare { .. }
                        | Action::KernelCommit { .. }
                        | Action::PrivateChange { .. }
                );
                if flush_before && failpoints_left == 0 && !sends.is_empty() {
                    ops.push(Op::Send(std::mem::take(&mut sends), after_job));
                }
                ops.push(Op::Job(a));
                after_job = true;
            }
            a => ops.push(Op::Now(a)),
        }
    }
    if !sends.is_empty() {
        ops.push(Op::Send(sends, after_job));
    }
    ops
}

enum Entry {
    Job(u64),
    Item(Item),
}

/// The driver's jobs not yet answered, in order, with the loop's work waiting
/// behind each.
#[derive(Default)]
pub struct Pipeline {
    entries: VecDeque<Entry>,
    /// Messages waiting, per peer.
    waiting_to: BTreeMap<NodeId, usize>,
    /// An armed exit failpoint waits: everything after it waits too.
    hold_all: bool,
}

impl Pipeline {
    /// Entries held (jobs and waiting work).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing is with the driver (and so nothing waits).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Job `seq` was handed to the driver.
    pub fn job(&mut self, seq: u64) {
        self.entries.push_back(Entry::Job(seq));
    }

    /// `item`, to carry out now (returned) or after the jobs before it (kept).
    /// `armed_exit`: it is the failpoint this process exits at.
    pub fn later(&mut self, item: Item, armed_exit: bool) -> Option<Item> {
        if self.entries.is_empty() {
            return Some(item);
        }
        if armed_exit {
            self.hold_all = true;
        }
        self.keep(item);
        None
    }

    /// A message of a step, to send now (returned) or later (kept); `after_job`: a
    /// job of the same step comes before it (none held: the loop answered that
    /// action itself, so nothing is to wait for).
    pub fn message(
        &mut self,
        to: NodeId,
        msg: Message,
        after_job: bool,
    ) -> Option<(NodeId, Message)> {
        let heartbeat = matches!(msg, Message::Heartbeat { .. });
        let waiting_to = self.waiting_to.get(&to).is_some_and(|n| *n > 0);
        let after_job = after_job && !self.entries.is_empty();
        if self.hold_all || (!heartbeat && (after_job || waiting_to)) {
            self.keep(Item::Send(to, msg));
            None
        } else {
            Some((to, msg))
        }
    }

    fn keep(&mut self, item: Item) {
        if let Item::Send(to, _) = &item {
            *self.waiting_to.entry(*to).or_default() += 1;
        }
        self.entries.push_back(Entry::Item(item));
    }

    /// The driver answered job `seq`: the work now due (up to the next job), in
    /// order. `Err` when `seq` is not the oldest job (the driver answers in order, so
    /// that is a bug); the pipeline is left as it was.
    pub fn done(&mut self, seq: u64) -> Result<Vec<Item>, String> {
        match self.entries.front() {
            Some(Entry::Job(s)) if *s == seq => {}
            Some(Entry::Job(s)) => {
                return Err(format!("driver answer {seq}, but job {s} is the oldest"))
            }
            _ => return Err(format!("driver answer {seq}, but no job is waiting")),
        }
        self.entries.pop_front();
        let mut due = Vec::new();
        while let Some(Entry::Item(_)) = self.entries.front() {
            if let Some(Entry::Item(item)) = self.entries.pop_front() {
                if let Item::Send(to, _) = &item {
                    if let Some(n) = self.waiting_to.get_mut(to) {
                        *n = n.saturating_sub(1);
                    }
                }
                due.push(item);
            }
        }
        Ok(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{DiskRecord, TxnId};
    use crate::daemon::model::SharedConfig;
    use crate::model::Change;

    type A = Action<SharedConfig>;

    fn change() -> Change {
        Change::DgDestroy {
            dg: "dg1".into(),
            force: false,
        }
    }

    fn txn() -> TxnId {
        TxnId::default()
    }

    fn heartbeat() -> Message {
        Message::Heartbeat {
            incarnation: 1,
            view_id: 1,
            master: None,
            member: true,
            stamp_ms: 0,
            echo: None,
            lease_left_ms: 0,
            max_view: 1,
            member_ago_ms: Some(0),
            txns: None,
            leased: false,
            heard: None,
            disk_vote: false,
            applied: None,
        }
    }

    fn commit() -> Message {
        Message::Commit { txn: txn() }
    }

    fn check() -> Message {
        Message::Abort { txn: txn() }
    }

    fn send(to: NodeId, msg: Message) -> A {
        Action::Send { to, msg }
    }

    #[test]
    fn messages_leave_after_the_steps_failpoints_and_before_a_slow_action() {
        // The master's step on its disk write with a next request queued: COMMIT to
        // the others, its own kernel commit, the reply, the next Check and check.
        let ops = plan::<SharedConfig>(vec![
            Action::Failpoint("txn.after_disk_write"),
            send(3, commit()),
            Action::Failpoint("txn.after_commit_sent"),
            Action::KernelCommit { txn: txn() },
            Action::Reply {
                request: RequestId(1),
                result: Ok(()),
            },
            Action::Failpoint("txn.after_validate"),
            send(2, check()),
            Action::LocalCheck {
                txn: txn(),
                change: change(),
            },
        ]);
        assert_eq!(
            ops,
            vec![
                Op::Later(Item::Failpoint("txn.after_disk_write")),
                Op::Later(Item::Failpoint("txn.after_commit_sent")),
                Op::Job(Action::KernelCommit { txn: txn() }),
                Op::Later(Item::Reply(RequestId(1), Ok(()))),
                Op::Later(Item::Failpoint("txn.after_validate")),
                // A failpoint was left at the commit: the messages wait for it, and
                // so for the commit before it.
                Op::Send(vec![(3, commit()), (2, check())], true),
                Op::Job(Action::LocalCheck {
                    txn: txn(),
                    change: change()
                }),
            ]
        );
        // Without a failpoint after it, COMMIT leaves before the slow commit.
        let ops = plan::<SharedConfig>(vec![
            Action::Failpoint("txn.after_commit_sent"),
            send(3, commit()),
            Action::KernelCommit { txn: txn() },
        ]);
        assert_eq!(ops[1], Op::Send(vec![(3, commit())], false));
        // After a disk write (no flush point) messages wait for it.
        let ops = plan::<SharedConfig>(vec![
            Action::WriteDisks {
                record: DiskRecord {
                    txn: txn(),
                    config: SharedConfig::default(),
                },
                deadline_ms: u64::MAX,
                lease_extends: false,
            },
            send(2, commit()),
        ]);
        assert_eq!(ops[1], Op::Send(vec![(2, commit())], true));
    }

    #[test]
    fn work_waits_for_the_jobs_before_it_and_heartbeats_never_do() {
        let mut p = Pipeline::default();
        // Nothing with the driver: everything now.
        assert!(p.later(Item::ShutdownReady, false).is_some());
        assert!(p.message(2, commit(), false).is_some());
        p.job(7);
        // A reply of a later step waits; a message of a step without a job of its
        // own leaves (peers are answered during a drain); one after the step's own
        // job waits; then every later message to that peer waits, heartbeats do not.
        assert!(p.later(Item::Reply(RequestId(1), Ok(())), false).is_none());
        assert!(p.message(3, check(), false).is_some());
        assert!(p.message(2, commit(), true).is_none());
        assert!(p.message(2, check(), false).is_none());
        assert!(p.message(2, heartbeat(), false).is_some());
        assert!(p.message(3, check(), false).is_some());
        p.job(8);
        assert!(p.later(Item::Failpoint("txn.after_check"), false).is_none());
        assert_eq!(p.len(), 6);
        assert!(p.done(8).is_err(), "answers come in order");
        assert_eq!(
            p.done(7).unwrap(),
            vec![
                Item::Reply(RequestId(1), Ok(())),
                Item::Send(2, commit()),
                Item::Send(2, check()),
            ]
        );
        // The peer's waiting messages left: a new one goes at once.
        assert!(p.message(2, check(), false).is_some());
        assert_eq!(p.done(8).unwrap(), vec![Item::Failpoint("txn.after_check")]);
        assert!(p.is_empty());
        assert!(p.done(9).is_err());
    }

    #[test]
    fn an_armed_exit_waiting_holds_everything_after_it() {
        let mut p = Pipeline::default();
        p.job(1);
        assert!(p
            .later(Item::Failpoint("txn.after_prepare"), true)
            .is_none());
        assert!(p.message(2, heartbeat(), false).is_none());
        assert!(p.message(3, check(), false).is_none());
        let due = p.done(1).unwrap();
        assert_eq!(due[0], Item::Failpoint("txn.after_prepare"));
        assert_eq!(due.len(), 3);
    }

    #[test]
    fn a_message_after_a_job_the_loop_answered_itself_leaves_at_once() {
        let mut p = Pipeline::default();
        // Its step's job (a local check that reads nothing) was never held: nothing
        // is to wait for.
        assert_eq!(p.message(2, commit(), true), Some((2, commit())));
        // Behind a job held, it waits for it.
        p.job(7);
        assert_eq!(p.message(2, commit(), true), None);
        assert_eq!(p.done(7).unwrap(), vec![Item::Send(2, commit())]);
    }
}
