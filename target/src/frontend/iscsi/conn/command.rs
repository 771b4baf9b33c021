//! The SCSI-task glue: a SCSI Command PDU becomes a [`ScsiTask`] of the SCSI
//! layer; this file moves its data-out (immediate, unsolicited, R2T-solicited),
//! submits the block I/O the task asks for and hands the outcome to
//! [`super::response`].

use super::*;

impl Conn {
    /// A SCSI Command PDU: admitted by the window, decoded by the SCSI layer,
    /// answered at once or turned into a task that gets its buffer and data.
    pub(super) fn handle_cmd(&self, st: &mut St, p: &pdu::PduView) -> Handled {
        let b = p.bhs;
        let itt = field::itt(b);
        if !self.admit_cmd(st, b) {
            return Handled::Done;
        }
        self.refresh_target(st);
        let Some(target) = st.target.clone() else {
            return Handled::Close("normal session without a target".into());
        };
        let mut plan = self.plan_cmd(st, &target, b);
        if plan.need_buf > 0 && BufPool::class_for(plan.need_buf as usize).is_none() {
            log::error!(
                "iscsi: connection {} from {}: ITT {itt:#x} needs a {}-byte buffer, larger than the largest pool class",
                self.link.id,
                self.link.peer,
                plan.need_buf
            );
            return Handled::Close("buffer request too large".into());
        }
        Self::consume_cmdsn(st, b);
        if let Some(s) = &st.session {
            s.stats.commands.fetch_add(1, Ordering::Relaxed);
        }
        let Some((lun, opv)) = self.answer_early(st, itt, &mut plan) else {
            return Handled::Done;
        };
        let mut t = Task::new(itt, ScsiTask::new(lun, opv), &plan);
        let mut imm = 0;
        if plan.out_len > 0 {
            imm = p.data.len().min(plan.out_len as usize);
            if imm > 0 && !st.params.immediate_data {
                return Handled::Close("immediate data not negotiated".into());
            }
            t.received = imm as u32;
            let sent = (p.data.len() as u32).min(plan.recv_limit);
            let fb = st.params.first_burst.min(plan.recv_limit);
            t.unsol_end = if b[1] & 0x80 != 0 || st.params.initial_r2t {
                sent
            } else {
                fb.max(sent)
            };
            t.next_r2t = t.unsol_end.min(plan.out_len);
        }
        self.buffer_or_park(st, t, &p.data[..imm]);
        Handled::Done
    }

    /// The checks before a command is decoded: the CmdSN window, a free ITT and
    /// room in the session's task set (TASK SET FULL beyond it). False when the
    /// command was ignored or answered.
    fn admit_cmd(&self, st: &mut St, b: &[u8; BHS_LEN]) -> bool {
        let itt = field::itt(b);
        if !self.cmdsn_in_window(st, b) {
            return false;
        }
        if st.itts.contains_key(&itt) {
            log::warn!(
                "iscsi: connection {}: ITT {itt:#x} already in use; rejected",
                self.link.id
            );
            self.reject(st, b, pdu::reject::INVALID_FIELD);
            return false;
        }
        if st.itts.len() > self.shared.queue_depth as usize {
            // Only immediate commands can exceed the window.
            Self::consume_cmdsn(st, b);
            self.respond(st, itt, sense::TASK_SET_FULL, None, (0, 0));
            return false;
        }
        true
    }

    /// Decodes the command (SCSI layer) and sizes its transfer against the
    /// EDTL of the PDU.
    fn plan_cmd(&self, st: &mut St, target: &TargetRt, b: &[u8; BHS_LEN]) -> CmdPlan {
        let lun_field = field::lun(b);
        let lun_no = cdb::decode_lun_field(lun_field);
        let mut cdb = [0u8; 16];
        cdb.copy_from_slice(&b[32..48]);
        let lun = target.luns.get(&lun_no).cloned();
        // The LUN list is only needed (and only allocated) for REPORT LUNS.
        let luns: Vec<u64> = if cdb[0] == 0xa0 {
            target.luns.keys().copied().collect()
        } else {
            Vec::new()
        };
        // State is kept only for LUNs that exist, so commands to made-up LUN
        // numbers cannot grow the map.
        let mut scratch = NexusState::default();
        let ns = if lun.is_some() {
            st.nexus_state.entry(lun_no).or_default()
        } else {
            &mut scratch
        };
        let reactor = &self.link.reactor;
        let fenced = |l: &LunRt| reactor.channel(&l.bdev).is_ok_and(|ch| ch.unavailable());
        let op = task::decode_command(&cdb, lun.as_deref(), &luns, (ns, &st.nexus), &fenced);
        CmdPlan::new(cdb, lun, op, lun_field, b)
    }

    /// Answers what needs no task: a write cut to nothing by its EDTL, no such
    /// LUN, a reservation conflict, a data-out length that does not match, and
    /// commands finished by the SCSI layer. Otherwise returns the LUN and the op
    /// of the task to run.
    fn answer_early(&self, st: &mut St, itt: u32, plan: &mut CmdPlan) -> Option<(Arc<LunRt>, Op)> {
        let (edtl, lun_field) = (plan.edtl, plan.lun_field);
        let op = std::mem::replace(&mut plan.op, Op::Flush);
        let good = matches!(&op, Op::Done(r) if r.status == sense::GOOD);
        if plan.is_write && plan.out_len == 0 && good {
            // A write truncated to nothing by its EDTL.
            self.respond(st, itt, sense::GOOD, None, residual(plan.spdtl, edtl));
            return None;
        }
        let Some(lun) = plan.lun.take() else {
            // No such LUN: decode already answered.
            if let Op::Done(r) = op {
                self.finish_simple(st, itt, lun_field, edtl, r);
            }
            return None;
        };
        if task::reservation_conflict(&lun, &st.nexus, &plan.cdb) {
            self.finish_simple(st, itt, lun_field, edtl, Response::conflict());
            return None;
        }
        if plan.mismatch {
            let resid = residual(plan.out_len, edtl);
            if let Some(s) = &st.session {
                s.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            let s = Some(sense::INVALID_FIELD_IN_IU);
            self.respond(st, itt, sense::CHECK_CONDITION, s, resid);
            return None;
        }
        match task::reservation_op(op, &lun, &st.nexus) {
            Op::Done(r) => {
                self.finish_simple(st, itt, lun_field, edtl, r);
                None
            }
            op => Some((lun, op)),
        }
    }

    /// Gives a new task its buffer (with the immediate data `imm`) and starts it,
    /// or parks it until a buffer comes (TASK SET FULL when the data kept for
    /// parked commands would pass [`PARKED_DATA_MAX_BYTES`]).
    fn buffer_or_park(&self, st: &mut St, mut t: Task, imm: &[u8]) {
        let (itt, need_buf) = (t.itt, t.need_buf);
        if need_buf > 0 {
            let class = BufPool::class_for(need_buf as usize).unwrap_or(0);
            // Keep arrival order: behind parked tasks of the class, wait too.
            let buf = if st.parked_n[class] == 0 {
                self.alloc_buf(st, need_buf as usize, false)
            } else {
                None
            };
            let Some(mut x) = buf else {
                return self.park(st, t, imm, class);
            };
            x.bytes_mut()[..imm.len()].copy_from_slice(imm);
            t.buf = Some(x);
        }
        let key = st.tasks.insert(t);
        st.itts.insert(itt, key);
        self.start_task(st, key);
    }

    /// Parks a new task of size class `class`: the data that may arrive before
    /// its buffer is kept aside.
    fn park(&self, st: &mut St, mut t: Task, imm: &[u8], class: usize) {
        let itt = t.itt;
        let early = if t.out_len > 0 {
            t.unsol_end.max(imm.len() as u32).min(t.out_len) as usize
        } else {
            0
        };
        if st.parked_bytes + early > PARKED_DATA_MAX_BYTES {
            log::warn!(
                "iscsi: connection {} from {}: ITT {itt:#x} waits for a buffer with {early} bytes of data, {} already kept for waiting commands; TASK SET FULL",
                self.link.id,
                self.link.peer,
                st.parked_bytes
            );
            self.respond(st, itt, sense::TASK_SET_FULL, None, (0, 0));
            return;
        }
        t.parked = true;
        t.early_reserved = early as u32;
        t.early = imm.to_vec();
        st.parked_bytes += early;
        let key = st.tasks.insert(t);
        st.itts.insert(itt, key);
        st.parked.push_back(key);
        st.parked_n[class] += 1;
        self.sync_active(st, class);
        // Registers with the cache when the pool is what is short.
        st.need_serve = true;
    }

    /// A task with its buffer: ask for the rest of its data, or run it.
    pub(super) fn start_task(&self, st: &mut St, key: usize) {
        let t = &st.tasks[key];
        if t.out_len > 0 && t.received < t.out_len {
            self.maybe_r2t(st, key);
            return;
        }
        self.execute(st, key);
    }

    /// Sends the next R2T of a task when none is outstanding and the unsolicited
    /// part has arrived.
    pub(super) fn maybe_r2t(&self, st: &mut St, key: usize) {
        let max_burst = st.params.max_burst;
        let ttt = st.alloc_ttt();
        let statsn = st.statsn;
        let exp = st.exp_cmdsn;
        let max = st.max_cmdsn(self.shared.queue_depth);
        let t = &mut st.tasks[key];
        if t.parked || t.r2t.is_some() || t.next_r2t >= t.out_len {
            return;
        }
        let len = (t.out_len - t.next_r2t).min(max_burst);
        let off = t.next_r2t;
        t.next_r2t += len;
        t.r2t = Some(R2t {
            ttt,
            offset: off,
            len,
            got: 0,
            datasn: 0,
        });
        let mut b = Bhs::new(op::R2T, 0x80);
        b.u64_at(8, t.lun_field)
            .u32_at(16, t.itt)
            .u32_at(20, ttt)
            .u32_at(24, statsn)
            .u32_at(28, exp)
            .u32_at(32, max)
            .u32_at(36, t.r2tsn)
            .u32_at(40, off)
            .u32_at(44, len);
        t.r2tsn += 1;
        st.emit(&b, &[]);
    }

    /// A Data-Out PDU: checked against its task's unsolicited window or R2T,
    /// its data kept, then the task runs or asks for more.
    pub(super) fn handle_data_out(&self, st: &mut St, p: &pdu::PduView) -> Handled {
        let b = p.bhs;
        let itt = field::itt(b);
        let off = pdu::be32(b, 40);
        let Some(&key) = st.itts.get(&itt) else {
            // Data for a command already answered (e.g. rejected before its
            // unsolicited data arrived): drop it.
            log::debug!(
                "iscsi: connection {}: Data-Out for unknown ITT {itt:#x} dropped",
                self.link.id
            );
            return Handled::Done;
        };
        let t = &mut st.tasks[key];
        if t.out_len == 0 || (t.buf.is_none() && !t.parked) {
            return Handled::Done;
        }
        let (ttt, datasn) = (field::w20(b), pdu::be32(b, 36));
        match accept_data_out(t, ttt, datasn, off, p.data.len() as u32) {
            Ok(end) => {
                store_data_out(t, off, end, p.data);
                if !t.parked {
                    // A parked task runs (or asks for the rest) once its buffer comes.
                    self.data_out_received(st, key);
                }
            }
            Err(why) => self.fail_data_out(st, key, itt, &why),
        }
        Handled::Done
    }

    /// A Data-Out that breaks the rules ends its task with CHECK CONDITION
    /// (ErrorRecoveryLevel 0); later Data-Out PDUs of it are dropped as
    /// belonging to no task.
    fn fail_data_out(&self, st: &mut St, key: usize, itt: u32, why: &str) {
        log::warn!(
            "iscsi: connection {}: ITT {itt:#x}: {why}; task failed",
            self.link.id
        );
        st.itts.remove(&itt);
        self.forget_parked(st, key);
        if st.tasks[key].scsi.inflight() == 0 {
            let t = st.tasks.remove(key);
            self.release(st, t);
        } else {
            st.tasks[key].aborted = true;
        }
        if let Some(s) = &st.session {
            s.stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.respond(
            st,
            itt,
            sense::CHECK_CONDITION,
            Some(sense::DATA_PHASE_ERROR),
            (0, 0),
        );
    }

    /// Data-Out of task `key` arrived: an R2T burst may be complete; the task
    /// runs once it has all its data, else asks for the next burst.
    fn data_out_received(&self, st: &mut St, key: usize) {
        let t = &mut st.tasks[key];
        let burst_done = t.r2t.as_ref().is_some_and(|r| r.got >= r.len);
        if burst_done {
            t.r2t = None;
        }
        if t.received >= t.out_len {
            t.r2t = None;
            self.execute(st, key);
        } else if t.r2t.is_none() {
            self.maybe_r2t(st, key);
        }
    }

    /// Hands a block I/O of task `key` to the LUN's bdev channel on this reactor.
    pub(super) fn submit(&self, key: usize, lun: &LunRt, io: BlockIo) -> Result<(), Sense> {
        let ch = self.link.reactor.channel(&lun.bdev).map_err(|e| {
            log::error!(
                "iscsi: lun {} ({}): no channel on reactor {}: {e}",
                lun.info.lun,
                lun.bdev.name(),
                self.link.reactor.id()
            );
            sense::INTERNAL_FAILURE
        })?;
        let me = self.rc().ok_or(sense::INTERNAL_FAILURE)?;
        ch.submit(BdevIo {
            kind: io.kind,
            offset_bytes: io.offset_bytes,
            len_bytes: io.len_bytes,
            buf: io.buf,
            cb: IoCallback::new(me, key as u64),
        });
        Ok(())
    }

    /// Starts (or continues, after I/O) the block work of a task.
    pub(super) fn execute(&self, st: &mut St, key: usize) {
        let St { tasks, nexus, .. } = st;
        let t = &mut tasks[key];
        let step = t.scsi.step(t.buf.as_ref(), nexus, &mut |lun, io| {
            self.submit(key, lun, io)
        });
        match step {
            Step::Wait => {}
            Step::Done => self.complete(st, key),
            Step::Conflict => {
                let t = st.tasks.remove(key);
                st.itts.remove(&t.itt);
                let (itt, lf, edtl) = (t.itt, t.lun_field, t.edtl);
                self.release(st, t);
                self.finish_simple(st, itt, lf, edtl, Response::conflict());
            }
            Step::Forward(req) => self.forward_pr(st, key, req),
            Step::PreemptAbort(nexuses) => self.start_preempt_abort(st, key, nexuses),
        }
    }

    /// Sends the PERSISTENT RESERVE OUT of task `key` to the cluster through its
    /// LUN's broker; the result comes back through [`PrDone`]. A request that
    /// cannot be sent fails the task with a sense the host retries.
    fn forward_pr(&self, st: &mut St, key: usize, req: PrOutRequest) {
        let lun = Arc::clone(&st.tasks[key].scsi.lun);
        let sent = match (lun.cluster_pr(), self.rc()) {
            (Some(b), Some(me)) => {
                let me: Rc<dyn PrDone> = me;
                b.forward(&self.link.reactor, req, Rc::downgrade(&me), key as u64)
                    .map(|id| (id, Arc::clone(b)))
            }
            _ => Err("the LUN's reservations are not kept by a cluster".to_string()),
        };
        match sent {
            Ok((id, broker)) => st.pr_waits.push(PrWait {
                key,
                id,
                deadline: Instant::now() + PR_OUT_TIMEOUT,
                broker,
            }),
            Err(e) => {
                log::warn!(
                    "iscsi: connection {} from {}: lun {} ({}): PERSISTENT RESERVE OUT cannot reach the cluster: {e}",
                    self.link.id,
                    self.link.peer,
                    lun.info.lun,
                    lun.bdev.name()
                );
                st.tasks[key].scsi.pr_done(PrOutResult::Unavailable);
                self.execute(st, key);
            }
        }
    }

    /// Fails the PR OUT tasks whose cluster answer is overdue (from the tick).
    pub(super) fn expire_pr_waits(&self, now: Instant) {
        let expired: Vec<PrWait> = {
            let mut st = self.st.borrow_mut();
            if st.pr_waits.iter().all(|w| w.deadline > now) {
                return;
            }
            let (late, keep) = std::mem::take(&mut st.pr_waits)
                .into_iter()
                .partition(|w| w.deadline <= now);
            st.pr_waits = keep;
            late
        };
        for w in expired {
            log::warn!(
                "iscsi: connection {} from {}: PERSISTENT RESERVE OUT request {}: no answer from the cluster within {} s; the host retries",
                self.link.id,
                self.link.peer,
                w.id,
                PR_OUT_TIMEOUT.as_secs()
            );
            w.broker.cancel(&self.link.reactor, w.id);
            self.task_event(w.key, |t| t.pr_done(PrOutResult::Unavailable));
        }
    }

    /// A completion for task `key`: `f` records it and says whether nothing is
    /// left in flight; then the task goes on (or is dropped if it was aborted).
    pub(super) fn task_event(&self, key: usize, f: impl FnOnce(&mut ScsiTask) -> bool) {
        {
            let mut st = self.st.borrow_mut();
            let Some(t) = st.tasks.get_mut(key) else {
                log::error!(
                    "iscsi: connection {}: completion for unknown task {key}",
                    self.link.id
                );
                return;
            };
            if !f(&mut t.scsi) {
                return;
            }
            if let Some(pa) = t.held_by.take() {
                // Aborted by a preempt and abort, and now off the bdev.
                pa.release(Some(&self.link.reactor));
            }
            if t.aborted || st.closed {
                let t = st.tasks.remove(key);
                self.release(&mut st, t);
                if !st.closed {
                    self.after(&mut st);
                }
                return;
            }
            self.execute(&mut st, key);
            self.after(&mut st);
        }
        self.mark_dirty();
        Wire::resume_if_stalled(self);
    }

    /// Sends the outcome of a task and frees it.
    pub(super) fn complete(&self, st: &mut St, key: usize) {
        if st.tasks[key].scsi.inflight() > 0 {
            return;
        }
        let t = st.tasks.remove(key);
        st.itts.remove(&t.itt);
        let bs = t.scsi.lun.info.block_size;
        if let Some(e) = t.scsi.err {
            if let Some(s) = &st.session {
                s.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
            let resid = residual(0, t.edtl);
            self.respond(st, t.itt, e.status(), e.sense(), resid);
            return self.release(st, t);
        }
        match t.scsi.op {
            Op::Read { blocks, .. } => {
                let n = blocks * bs;
                if let Some(s) = &st.session {
                    s.stats.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
                }
                let resid = residual(n, t.edtl);
                let send = n.min(t.edtl) as usize;
                let mut t = t;
                if send == 0 {
                    self.respond(st, t.itt, sense::GOOD, None, resid);
                } else if let Some(b) = t.buf.take() {
                    self.send_data_in_buf(st, t.itt, t.lun_field, b, send, Some(resid));
                }
                return self.release(st, t);
            }
            _ => {
                if let Some(s) = &st.session {
                    s.stats
                        .write_bytes
                        .fetch_add(t.out_len as u64, Ordering::Relaxed);
                }
                self.respond(st, t.itt, sense::GOOD, None, residual(t.spdtl, t.edtl));
            }
        }
        self.release(st, t);
    }
}

impl IoDone for Conn {
    fn io_done(&self, tag: u64, status: IoStatus) {
        self.task_event(tag as usize, |t| t.io_done(status));
    }
}

impl PrDone for Conn {
    fn pr_done(&self, tag: u64, result: PrOutResult) {
        let key = tag as usize;
        self.st.borrow_mut().pr_waits.retain(|w| w.key != key);
        self.task_event(key, |t| t.pr_done(result));
    }
}

/// A decoded command sized against its PDU (FCP-4 rules for EDTL mismatches).
struct CmdPlan {
    cdb: [u8; 16],
    /// None: no such LUN.
    lun: Option<Arc<LunRt>>,
    /// What the SCSI layer made of it, writes cut to the EDTL (taken by
    /// `answer_early`).
    op: Op,
    lun_field: u64,
    edtl: u32,
    /// Data-out length the CDB asked for (for the residual).
    spdtl: u32,
    /// Data-out the op moves.
    out_len: u32,
    /// Highest data-out offset the initiator may send (its EDTL for writes).
    recv_limit: u32,
    /// Pool buffer bytes the task needs.
    need_buf: u32,
    is_write: bool,
    /// Data-out for a non-write whose EDTL or W bit disagrees with the CDB.
    mismatch: bool,
}

impl CmdPlan {
    fn new(
        cdb: [u8; 16],
        lun: Option<Arc<LunRt>>,
        mut op: Op,
        lun_field: u64,
        b: &[u8; BHS_LEN],
    ) -> CmdPlan {
        let wr = b[1] & 0x20 != 0;
        let edtl = field::w20(b);
        let bs = lun.as_ref().map_or(512, |l| l.info.block_size);
        let spdtl = op.data_out_len(bs);
        // A write whose EDTL differs from its CDB moves min(EDTL, CDB) bytes,
        // rounded down to whole blocks, and reports the residual (FCP-4 rules).
        let mut is_write = false;
        if let Op::Write { lba, blocks, fua } = op {
            is_write = true;
            let want = if wr { edtl.min(blocks * bs) / bs } else { 0 };
            if want == 0 {
                op = Op::Done(Response::good(Vec::new()));
            } else if want != blocks {
                op = Op::Write {
                    lba,
                    blocks: want,
                    fua,
                };
            }
        }
        if cdb[0] == 0x89 && cdb[13] == 0 && edtl > 0 {
            // Data offered for a zero-length compare: the CDB is inconsistent.
            op = Op::Done(Response::check(sense::INVALID_FIELD_IN_CDB));
        }
        let out_len = op.data_out_len(bs);
        let recv_limit = if is_write && wr {
            edtl.max(out_len)
        } else {
            out_len
        };
        let in_len = match op {
            Op::Read { blocks, .. } => blocks * bs,
            _ => 0,
        };
        let mismatch = out_len > 0 && !is_write && (edtl != out_len || !wr);
        let need_buf = if mismatch { 0 } else { out_len.max(in_len) };
        CmdPlan {
            cdb,
            lun,
            op,
            lun_field,
            edtl,
            spdtl,
            out_len,
            recv_limit,
            need_buf,
            is_write,
            mismatch,
        }
    }
}

impl Task {
    /// A task for `scsi`, with the transfer sizes of `plan`, before any data.
    fn new(itt: u32, scsi: ScsiTask, plan: &CmdPlan) -> Task {
        Task {
            itt,
            scsi,
            lun_field: plan.lun_field,
            edtl: plan.edtl,
            buf: None,
            out_len: plan.out_len,
            spdtl: plan.spdtl,
            recv_limit: plan.recv_limit,
            received: 0,
            unsol_end: 0,
            unsol_datasn: 0,
            next_r2t: 0,
            r2t: None,
            r2tsn: 0,
            aborted: false,
            orphan: false,
            parked: false,
            need_buf: plan.need_buf,
            early: Vec::new(),
            early_reserved: 0,
            held_by: None,
            pa: None,
        }
    }
}

/// Checks a Data-Out of `len` bytes at `off` against task `t`: within what the
/// initiator may send, and in its unsolicited window (reserved TTT) or its
/// outstanding R2T, in DataSN order; counts it. The end offset, or why not.
fn accept_data_out(t: &mut Task, ttt: u32, datasn: u32, off: u32, len: u32) -> Result<u32, String> {
    let Some(end) = off.checked_add(len).filter(|e| *e <= t.recv_limit) else {
        return Err(format!(
            "Data-Out beyond the expected length (offset {off}, {len} bytes)"
        ));
    };
    if ttt == RESERVED_TAG {
        if end > t.unsol_end || datasn != t.unsol_datasn {
            return Err(format!(
                "bad unsolicited Data-Out (offset {off}, DataSN {datasn}, expected {})",
                t.unsol_datasn
            ));
        }
        t.unsol_datasn += 1;
        return Ok(end);
    }
    let Some(r) = t.r2t.as_mut() else {
        return Err(format!("Data-Out with TTT {ttt:#x} but no R2T outstanding"));
    };
    if r.ttt != ttt || off < r.offset || end > r.offset + r.len || datasn != r.datasn {
        return Err(format!(
            "Data-Out does not match its R2T (TTT {ttt:#x}, offset {off}, DataSN {datasn})"
        ));
    }
    r.datasn += 1;
    r.got += len;
    Ok(end)
}

/// Keeps the part of Data-Out bytes `data` (offsets `off..end`) inside what
/// task `t` moves: in its buffer, or aside while it is parked.
fn store_data_out(t: &mut Task, off: u32, end: u32, data: &[u8]) {
    let keep_end = end.min(t.out_len);
    if off >= keep_end {
        return;
    }
    let src = &data[..(keep_end - off) as usize];
    if let Some(x) = t.buf.as_mut() {
        x.bytes_mut()[off as usize..keep_end as usize].copy_from_slice(src);
    } else if t.parked {
        // Unsolicited data only (no R2T while parked): within the reserve.
        let end = (keep_end as usize).min(t.early_reserved as usize);
        if t.early.len() < end {
            t.early.resize(end, 0);
        }
        let n = end.saturating_sub(off as usize);
        t.early[off as usize..off as usize + n].copy_from_slice(&src[..n]);
    }
    t.received += keep_end - off;
}
