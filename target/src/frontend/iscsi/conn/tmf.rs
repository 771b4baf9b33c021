//! Task management functions: ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LUN
//! RESET, TARGET WARM/COLD RESET.

use super::*;

impl Conn {
    pub(super) fn handle_tmf(&self, st: &mut St, p: &pdu::PduView) -> Handled {
        let b = p.bhs;
        let _ = self.take_cmdsn(st, b);
        let func = b[1] & 0x7f;
        let ref_itt = field::w20(b);
        let lun_no = cdb::decode_lun_field(field::lun(b));
        self.refresh_target(st);
        let lun_exists = st
            .target
            .as_ref()
            .is_some_and(|t| t.luns.contains_key(&lun_no));
        let resp: u8 = match func {
            // ABORT TASK
            1 => match st.itts.get(&ref_itt).copied() {
                Some(key) => {
                    self.abort_task(st, key);
                    0
                }
                None => 1,
            },
            // ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET
            2 | 3 | 5 => {
                if !lun_exists {
                    2
                } else {
                    let keys: Vec<usize> = st
                        .itts
                        .values()
                        .copied()
                        .filter(|k| st.tasks[*k].scsi.lun.info.lun == lun_no)
                        .collect();
                    for k in keys {
                        self.abort_task(st, k);
                    }
                    if func == 5 {
                        if let Some(t) = &st.target {
                            if let Some(l) = t.luns.get(&lun_no) {
                                l.reset();
                            }
                        }
                        if let Some(ns) = st.nexus_state.get_mut(&lun_no) {
                            ns.prevent = false;
                        }
                    }
                    0
                }
            }
            // TARGET WARM RESET, TARGET COLD RESET
            6 | 7 => {
                let keys: Vec<usize> = st.itts.values().copied().collect();
                for k in keys {
                    self.abort_task(st, k);
                }
                if let Some(t) = &st.target {
                    for l in t.luns.values() {
                        l.reset();
                    }
                }
                for ns in st.nexus_state.values_mut() {
                    ns.prevent = false;
                }
                if func == 7 {
                    st.close_after_flush = true;
                }
                0
            }
            // CLEAR ACA, TASK REASSIGN: not supported at ErrorRecoveryLevel 0.
            4 => 5,
            8 => 4,
            _ => 5,
        };
        let mut r = Bhs::new(op::TMF_RESP, 0x80);
        let sn = st.take_statsn();
        let max = st.max_cmdsn(self.shared.queue_depth);
        r.byte(2, resp)
            .u32_at(16, field::itt(b))
            .u32_at(24, sn)
            .u32_at(28, st.exp_cmdsn)
            .u32_at(32, max);
        st.emit(&r, &[]);
        Handled::Done
    }

    pub(super) fn abort_task(&self, st: &mut St, key: usize) {
        let itt = st.tasks[key].itt;
        st.itts.remove(&itt);
        self.forget_parked(st, key);
        if st.tasks[key].scsi.inflight() == 0 {
            let t = st.tasks.remove(key);
            self.release(st, t);
        } else {
            st.tasks[key].aborted = true;
            st.tasks[key].orphan = true;
        }
    }
}

/// Continues the PERSISTENT RESERVE OUT (PREEMPT AND ABORT) tasks of connection
/// `id` whose aborted tasks are all off the bdevs (the preempt's
/// [`crate::frontend::preempt::DoneFn`]).
pub(crate) fn preempt_done(r: &Rc<Reactor>, fid: u64, id: u64) {
    if let Some(c) = Registry::find(r, fid, id) {
        c.poll_preempts();
    }
}

impl Conn {
    /// Task `key`, a PERSISTENT RESERVE OUT PREEMPT AND ABORT, removed the
    /// registrations of `nexuses`: every reactor aborts their tasks on the LUN's
    /// bdev (`abort_for`), and the task completes once none of them is at a bdev.
    pub(super) fn start_preempt_abort(&self, st: &mut St, key: usize, nexuses: Vec<Nexus>) {
        let lun = Arc::clone(&st.tasks[key].scsi.lun);
        log::info!(
            "iscsi: connection {} from {}: lun {} ({}): PREEMPT AND ABORT by {}: aborting the tasks of {} on this node",
            self.link.id,
            self.link.peer,
            lun.info.lun,
            lun.bdev.name(),
            st.nexus,
            nexuses.iter().map(|n| n.initiator.as_str()).collect::<Vec<_>>().join(", ")
        );
        let fns = (ABORT_PREEMPTED, preempt_done as DoneFn);
        st.tasks[key].pa = Some(PaWait::start(&self.link, fns, lun.bdev.name(), nexuses));
    }

    /// Resends preempt and abort messages that did not fit in a reactor's ring
    /// and continues the PREEMPT AND ABORT tasks whose aborted tasks are done.
    pub(super) fn poll_preempts(&self) {
        let done: Vec<usize> = {
            let mut st = self.st.borrow_mut();
            if st.closed {
                return;
            }
            let r = &self.link.reactor;
            let mut done = Vec::new();
            for (k, t) in st.tasks.iter_mut() {
                if t.pa.as_mut().is_some_and(|w| w.poll(r)) {
                    t.pa = None;
                    done.push(k);
                }
            }
            done
        };
        for k in done {
            self.task_event(k, |t| t.preempt_abort_done());
        }
    }
}

impl Preemptible for Conn {
    /// Aborts this session's tasks on `pa`'s bdev when its I_T nexus (through
    /// the LUN's target port) is one `pa` preempted, as ABORT TASK does: no
    /// status for them (TAS=0), Data-Out still coming for them is dropped, a
    /// task at the bdev ends when its I/O completes (`pa` waits for it; a
    /// PERSISTENT RESERVE OUT with the cluster is not waited for), and each LUN
    /// with aborted tasks gets COMMANDS CLEARED BY ANOTHER INITIATOR for the
    /// nexus (see [`LunRt::preempted`]).
    fn abort_for(&self, pa: &Arc<PreemptAbort>) {
        {
            let mut st = self.st.borrow_mut();
            if st.closed || st.session.is_none() {
                return;
            }
            let keys: Vec<usize> = st
                .itts
                .values()
                .copied()
                .filter(|&k| {
                    let (t, l) = (&st.tasks[k], &st.tasks[k].scsi.lun);
                    t.pa.is_none() && l.bdev.name() == pa.bdev && pa.preempted(&l.nexus(&st.nexus))
                })
                .collect();
            if keys.is_empty() {
                return;
            }
            let mut luns: Vec<Arc<LunRt>> = Vec::new();
            for &k in &keys {
                let lun = Arc::clone(&st.tasks[k].scsi.lun);
                if !luns.iter().any(|l| Arc::ptr_eq(l, &lun)) {
                    luns.push(lun);
                }
                self.abort_task(&mut st, k);
                if let Some(t) = st.tasks.get_mut(k) {
                    if t.scsi.stage() != task::Stage::Cluster {
                        pa.hold();
                        t.held_by = Some(Arc::clone(pa));
                    }
                }
            }
            for l in &luns {
                l.queue_nexus_ua(&l.nexus(&st.nexus), sense::COMMANDS_CLEARED);
            }
            log::info!(
                "iscsi: connection {} from {}: {} task(s) of {} on bdev {} aborted by a preempt and abort (no status; COMMANDS CLEARED BY ANOTHER INITIATOR pending)",
                self.link.id,
                self.link.peer,
                keys.len(),
                st.nexus,
                pa.bdev
            );
            self.after(&mut st);
        }
        self.mark_dirty();
    }
}
