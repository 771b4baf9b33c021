//! A SCSI command from its CDB to its outcome, for any SCSI transport.
//!
//! [`decode_command`] turns a CDB for a LUN on one I_T nexus into an [`Op`]
//! (unit attentions, the LUN's current view, fencing); [`reservation_op`] answers
//! the reservation commands that need the LUN's state. An op with block work
//! becomes a [`ScsiTask`]: the transport moves the data-out into its buffer, then
//! calls [`ScsiTask::step`] until it says [`Step::Done`], submitting the block I/O
//! the task asks for and reporting each completion with [`ScsiTask::io_done`].
//! The transport sends the outcome: [`ScsiTask::err`] (CHECK CONDITION) or GOOD,
//! with the read data for [`Op::Read`]. A PERSISTENT RESERVE OUT that changes the
//! reservations of a shared volume is [`Step::Forward`]ed to the cluster instead
//! (see [`super::pr_cluster`]); its result comes back with [`ScsiTask::pr_done`].

use std::ops::ControlFlow;
use std::sync::Arc;

use super::alua::AluaState;
use super::cdb::{self, NexusState, Op, Response};
use super::lun::LunRt;
use super::pr::{Access, Nexus, PrError, PrState};
use super::pr_cluster::{PrOutRequest, PrOutResult, PR_OUT_TRIES};
use super::sense::{self, Sense};
use crate::bdev::{IoKind, IoStatus, RETRY_ERRNO};
use crate::buf::{IoBuf, PoolBuf};
use crate::lease::FENCED_ERRNO;

/// The unit attention command `cdb` of initiator port `initiator` (whose state
/// for `lun` is `ns`) reports instead of running, consumed: the power on or a
/// reset first, then a capacity change, then those established for this nexus
/// alone (reservation preemption, commands cleared: [`LunRt::take_nexus_ua`]),
/// oldest first. INQUIRY and REPORT LUNS leave them pending; REQUEST SENSE in
/// descriptor format is refused (invalid field) and must not consume one it
/// cannot report.
fn pending_unit_attention(
    cdb: &[u8; 16],
    l: &LunRt,
    ns: &mut NexusState,
    initiator: &str,
) -> Option<Sense> {
    if cdb[0] == 0x03 && cdb[1] & 0x01 != 0 {
        return None;
    }
    if ns.take_unit_attention(l.ua_epoch(), cdb[0]) {
        // A new nexus's power on covers the capacity it has not read yet.
        ns.cap_epoch.get_or_insert(l.capacity_epoch());
        return Some(sense::RESET_OCCURRED);
    }
    if ns.take_capacity_changed(l.capacity_epoch(), cdb[0]) {
        return Some(sense::CAPACITY_CHANGED);
    }
    if matches!(cdb[0], 0x12 | 0xa0) {
        return None;
    }
    l.take_nexus_ua(initiator)
}

/// Decodes `cdb` for `lun` (None: no such LUN) from initiator port `initiator`
/// (the I_T nexus) whose state for this LUN is `ns`. `luns` lists the target's
/// LUNs (REPORT LUNS only); `fenced` says whether this reactor must not serve a
/// LUN now (a shared volume without a valid data-plane lease).
pub fn decode_command(
    cdb: &[u8; 16],
    lun: Option<&LunRt>,
    luns: &[u64],
    (ns, initiator): (&mut NexusState, &str),
    fenced: &dyn Fn(&LunRt) -> bool,
) -> Op {
    let wp = lun.is_some_and(|l| l.swp());
    let ua = lun.and_then(|l| pending_unit_attention(cdb, l, ns, initiator));
    if let Some(ua) = ua {
        return Op::Done(if cdb[0] == 0x03 {
            cdb::request_sense(cdb, Some(ua))
        } else {
            Response::check(ua)
        });
    }
    // MODE SENSE reads the write cache fresh (a volume's follows its layout);
    // INQUIRY and REPORT TARGET PORT GROUPS the ALUA view, with this port's
    // group unavailable while the LUN is fenced on this reactor.
    let alua_report = cdb[0] == 0x12 || (cdb[0] == 0xa3 && cdb[1] & 0x1f == 0x0a);
    let fresh;
    let info = match lun {
        Some(l) if matches!(cdb[0], 0x1a | 0x5a) || alua_report => {
            let mut f = l.info_now();
            if alua_report && fenced(l) {
                f.alua = f.alua.with_local_state(AluaState::Unavailable);
            }
            fresh = f;
            Some(&fresh)
        }
        Some(l) => Some(&l.info),
        None => None,
    };
    let op = cdb::decode(cdb, info, luns, ns, wp);
    // TEST UNIT READY on a LUN this reactor must not serve: the path is
    // unavailable, so a path checker keeps it down until the lease is renewed.
    if cdb[0] == 0x00 && matches!(&op, Op::Done(r) if r.status == sense::GOOD) {
        if let Some(l) = lun {
            if fenced(l) {
                return Op::Done(Response::check(sense::PORT_UNAVAILABLE));
            }
        }
    }
    op
}

/// True when a reservation held on `lun` keeps the initiator port `nexus` (through
/// this target's port) from running `cdb`.
pub fn reservation_conflict(lun: &LunRt, nexus: &str, cdb: &[u8; 16]) -> bool {
    if !lun.reserved() {
        return false;
    }
    let acc = cdb::access_of(cdb);
    if acc == Access::Any {
        return false;
    }
    let nexus = lun.nexus(nexus);
    lun.pr().conflicts(&nexus, acc)
}

/// Runs the reservation commands that need no data-out (PERSISTENT RESERVE IN,
/// RESERVE(6), RELEASE(6)) for the initiator port `nexus`; every other op is
/// returned as is. RESERVE(6) stays local to this target, also for a LUN whose
/// persistent reservations the cluster keeps.
pub fn reservation_op(op: Op, lun: &LunRt, nexus: &str) -> Op {
    match op {
        Op::PrIn { sa, alloc } => Op::Done(match lun.pr().read(sa) {
            Ok(mut d) => {
                d.truncate(alloc as usize);
                Response::good(d)
            }
            Err(s) => Response::check(s),
        }),
        Op::Reserve6 | Op::Release6 => {
            let reserve = matches!(op, Op::Reserve6);
            let nexus = lun.nexus(nexus);
            let r = lun.with_pr(|p| {
                let r = if reserve {
                    p.reserve6(&nexus)
                } else {
                    p.release6(&nexus)
                };
                (r, false)
            });
            Op::Done(match r {
                Ok(()) => Response::good(Vec::new()),
                Err(PrError::Conflict) => Response::conflict(),
                Err(PrError::Check(s)) => Response::check(s),
            })
        }
        o => o,
    }
}

/// Where the block work of a task stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Nothing ran yet (the data-out, if any, is in the buffer).
    Start,
    /// The command's own I/O is in flight (read, write, WRITE SAME, UNMAP, flush).
    Transfer,
    /// FUA write: the flush after the write is in flight.
    Flush,
    /// PERSISTENT RESERVE OUT of a shared volume: the cluster is running it.
    Cluster,
    /// PERSISTENT RESERVE OUT PREEMPT AND ABORT: the preempted nexuses' commands
    /// are being aborted.
    Aborting,
    /// VERIFY, COMPARE AND WRITE, ORWRITE: the blocks on the medium are being read.
    ReadOld,
    /// COMPARE AND WRITE, ORWRITE: the new blocks are being written.
    WriteNew,
    /// Nothing more to run: the outcome can be sent.
    Done,
}

/// What the transport does after [`ScsiTask::step`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Block I/O is in flight: call `step` again once [`ScsiTask::io_done`] says
    /// the last one completed.
    Wait,
    /// Finished: send [`ScsiTask::err`] as CHECK CONDITION, or GOOD.
    Done,
    /// PERSISTENT RESERVE OUT was refused: RESERVATION CONFLICT.
    Conflict,
    /// PERSISTENT RESERVE OUT of a shared volume: send it to the cluster (the
    /// LUN's [`super::pr_cluster::PrBroker`]) and report the result with
    /// [`ScsiTask::pr_done`] (it counts as in flight until then).
    Forward(PrOutRequest),
    /// PERSISTENT RESERVE OUT PREEMPT AND ABORT removed these I_T nexuses: abort
    /// their commands on the LUN (no status for them; see
    /// [`LunRt::preempted`]), and once none is left at a bdev report it with
    /// [`ScsiTask::preempt_abort_done`] (it counts as in flight until then).
    PreemptAbort(Vec<Nexus>),
}

/// One block I/O a task asks the transport to submit to the LUN's bdev.
pub struct BlockIo {
    /// Read, write, flush...
    pub kind: IoKind,
    /// Byte offset on the bdev.
    pub offset_bytes: u64,
    /// Length in bytes.
    pub len_bytes: u64,
    /// The memory (empty for flush, unmap, zeroes).
    pub buf: IoBuf,
}

/// How a task failed, as the transport reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// CHECK CONDITION with this sense.
    Check(Sense),
    /// BUSY, no sense: a bounded queue of the data plane was full
    /// ([`RETRY_ERRNO`]); the same command may succeed when retried. BUSY, not
    /// TASK SET FULL: SAM-5 (5.3.1) reserves TASK SET FULL for a logical unit
    /// that cannot enter one more command of the nexus into its task set (and
    /// Linux answers it by lowering the device's queue depth); this command was
    /// accepted and a queue behind it (shared by every nexus and LUN on the
    /// volume, the reactor, the disk) was full, which is BUSY's "temporarily
    /// unable to process" the command; Linux and other initiators retry BUSY
    /// after a short delay without counting it against the command's retries
    /// as a medium error would. The frontend's own command window still
    /// answers TASK SET FULL.
    Busy,
}

impl Failure {
    /// The SCSI status.
    pub fn status(self) -> u8 {
        match self {
            Failure::Check(_) => sense::CHECK_CONDITION,
            Failure::Busy => sense::BUSY,
        }
    }

    /// The sense data to send (CHECK CONDITION only).
    pub fn sense(self) -> Option<Sense> {
        match self {
            Failure::Check(s) => Some(s),
            Failure::Busy => None,
        }
    }
}

/// The execution of one SCSI command with block work on a LUN.
pub struct ScsiTask {
    /// The LUN it runs on.
    pub lun: Arc<LunRt>,
    /// What it does.
    pub op: Op,
    /// The first failure; the task ends with it (CHECK CONDITION and its sense,
    /// or BUSY).
    pub err: Option<Failure>,
    stage: Stage,
    /// Block I/O submitted and not completed.
    inflight: u32,
    /// Memory of the second buffer some ops need (blocks read back for VERIFY,
    /// COMPARE AND WRITE and ORWRITE; the pattern of WRITE SAME).
    aux: Vec<u8>,
    /// Times a PR OUT was sent to the cluster (at most [`PR_OUT_TRIES`]).
    pr_tries: u32,
}

impl ScsiTask {
    /// A task for `op` on `lun`, not started.
    pub fn new(lun: Arc<LunRt>, op: Op) -> ScsiTask {
        ScsiTask {
            lun,
            op,
            err: None,
            stage: Stage::Start,
            inflight: 0,
            aux: Vec::new(),
            pr_tries: 0,
        }
    }

    /// Where it stands.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Block I/O submitted and not completed.
    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    /// One of its block I/Os completed; true when none is left in flight. A
    /// failure becomes its outcome: a fenced volume (data-plane lease expired) a
    /// path failure the host fails over, a full data-plane queue
    /// ([`RETRY_ERRNO`]) BUSY, anything else a medium error.
    pub fn io_done(&mut self, status: IoStatus) -> bool {
        self.inflight = self.inflight.saturating_sub(1);
        if let IoStatus::Failed(errno) = status {
            if self.err.is_none() && errno == FENCED_ERRNO {
                // Logged once by the target when the lease runs out.
                log::debug!(
                    "scsi: lun {} ({}): {:?} fenced (lease expired)",
                    self.lun.info.lun,
                    self.lun.bdev.name(),
                    self.op
                );
                self.err = Some(Failure::Check(sense::PORT_UNAVAILABLE));
            } else if self.err.is_none() && errno == RETRY_ERRNO {
                // A bounded queue of the data plane was full (counted there).
                log::debug!(
                    "scsi: lun {} ({}): {:?} refused for now (a data-plane queue is full): BUSY",
                    self.lun.info.lun,
                    self.lun.bdev.name(),
                    self.op
                );
                self.err = Some(Failure::Busy);
            } else if self.err.is_none() {
                log::warn!(
                    "scsi: lun {} ({}): {:?} failed with errno {errno}",
                    self.lun.info.lun,
                    self.lun.bdev.name(),
                    self.op
                );
                self.err = Some(Failure::Check(match self.op {
                    Op::Read { .. } | Op::Verify { .. } => sense::READ_ERROR,
                    _ => sense::WRITE_ERROR,
                }));
            }
        }
        self.inflight == 0
    }

    /// The cluster's answer to the PR OUT this task forwarded; true when nothing
    /// is left in flight (call [`ScsiTask::step`] then). Committed: GOOD. Stale:
    /// the next step decides again on the state this node holds now. Unavailable:
    /// NOT READY, ASYMMETRIC ACCESS STATE TRANSITION, which hosts retry.
    pub fn pr_done(&mut self, result: PrOutResult) -> bool {
        self.inflight = self.inflight.saturating_sub(1);
        match result {
            PrOutResult::Committed => {}
            PrOutResult::Stale => self.stage = Stage::Start,
            PrOutResult::Unavailable => {
                if self.err.is_none() {
                    self.err = Some(Failure::Check(sense::STATE_TRANSITION));
                }
            }
        }
        self.inflight == 0
    }

    /// The commands a PREEMPT AND ABORT aborted left the bdevs; true when
    /// nothing is left in flight (call [`ScsiTask::step`] then: GOOD).
    pub fn preempt_abort_done(&mut self) -> bool {
        self.inflight = self.inflight.saturating_sub(1);
        self.inflight == 0
    }

    /// Runs the next stage. `data` is the task's buffer (data-out received, room
    /// for data-in), `nexus` the I_T nexus (reservations), `submit` hands a block
    /// I/O to the LUN's bdev (an error fails the task with that sense).
    pub fn step(
        &mut self,
        data: Option<&PoolBuf>,
        nexus: &str,
        submit: &mut dyn FnMut(&LunRt, BlockIo) -> Result<(), Sense>,
    ) -> Step {
        if self.err.is_some() || self.stage == Stage::Done {
            self.stage = Stage::Done;
            return Step::Done;
        }
        let stage = self.stage;
        let next = match self.op.clone() {
            Op::Read { lba, blocks } => self.read(stage, data, lba, blocks, submit),
            Op::Write { lba, blocks, fua } => self.write(stage, data, lba, blocks, fua, submit),
            Op::Verify {
                lba,
                blocks,
                bytchk,
            } => self.verify(stage, data, lba, blocks, bytchk, submit),
            Op::CompareAndWrite { lba, blocks } => {
                self.compare_and_write(stage, data, lba, blocks, submit)
            }
            Op::OrWrite { lba, blocks } => self.or_write(stage, data, lba, blocks, submit),
            Op::WriteSame {
                lba,
                blocks,
                unmap,
                ndob,
            } => self.write_same(stage, data, (lba, blocks), unmap, ndob, submit),
            Op::Unmap { len } => self.unmap(stage, data, len, submit),
            Op::Flush if stage == Stage::Start => {
                self.submit(submit, IoKind::Flush, 0, 0, IoBuf::empty());
                Stage::Transfer
            }
            Op::ModeSelect { len, ten } if stage == Stage::Start => {
                self.mode_select(data, len, ten)
            }
            Op::PrOut {
                sa,
                scope_type,
                len,
            } if stage == Stage::Start => {
                let param = bytes(data, len as usize).to_vec();
                match self.pr_out(nexus, sa, scope_type, param) {
                    ControlFlow::Continue(next) => next,
                    ControlFlow::Break(step) => return step,
                }
            }
            _ => Stage::Done,
        };
        // A submit that failed (`err` set) with nothing in flight: no completion
        // will call `step` again, so the task ends now with that sense (it used to
        // wait until its connection closed; the cause is a bdev channel that cannot
        // be created).
        let failed_idle = self.err.is_some() && self.inflight == 0;
        if next == Stage::Done || failed_idle {
            self.stage = Stage::Done;
            Step::Done
        } else {
            self.stage = next;
            Step::Wait
        }
    }

    /// PERSISTENT RESERVE OUT with parameter list `param`: the next stage, or
    /// a step to return at once (forwarded to the cluster, or a conflict).
    fn pr_out(
        &mut self,
        nexus: &str,
        sa: u8,
        scope_type: u8,
        param: Vec<u8>,
    ) -> ControlFlow<Step, Stage> {
        let nexus = self.lun.nexus(nexus);
        let r = if self.lun.cluster_pr().is_some() {
            self.pr_out_cluster(nexus, sa, scope_type, param)?
        } else {
            self.lun.with_pr(|p| {
                let before = p.clone();
                match p.out(&nexus, sa, scope_type, &param) {
                    Ok(changed) => (Ok(changed.then(|| (before, p.clone()))), changed),
                    Err(e) => (Err(e), false),
                }
            })
        };
        match r {
            Ok(Some((before, after))) => {
                let aborted = self.lun.preempted(&before, &after);
                if !aborted.is_empty() {
                    self.inflight += 1;
                    self.stage = Stage::Aborting;
                    return ControlFlow::Break(Step::PreemptAbort(aborted));
                }
            }
            Ok(None) => {}
            Err(PrError::Check(s)) => self.err = Some(Failure::Check(s)),
            Err(PrError::Conflict) => {
                self.stage = Stage::Done;
                return ControlFlow::Break(Step::Conflict);
            }
        }
        ControlFlow::Continue(Stage::Done)
    }

    /// PERSISTENT RESERVE OUT on a LUN whose reservations the cluster keeps:
    /// decided on a copy of the committed state, a conflict, a bad parameter or
    /// a no-op is answered here; a change goes to the cluster (a step to
    /// return), which commits it (or finds the state moved on).
    fn pr_out_cluster(
        &mut self,
        nexus: Nexus,
        sa: u8,
        scope_type: u8,
        param: Vec<u8>,
    ) -> ControlFlow<Step, Result<Option<(PrState, PrState)>, PrError>> {
        let mut copy = self.lun.pr().clone();
        match copy.out(&nexus, sa, scope_type, &param) {
            Ok(true) if self.pr_tries >= PR_OUT_TRIES => {
                log::warn!(
                    "scsi: lun {} ({}): PERSISTENT RESERVE OUT by {nexus}: the reservations changed under it {PR_OUT_TRIES} times; the host retries",
                    self.lun.info.lun,
                    self.lun.bdev.name()
                );
                ControlFlow::Continue(Err(PrError::Check(sense::STATE_TRANSITION)))
            }
            Ok(true) => {
                self.pr_tries += 1;
                self.inflight += 1;
                self.stage = Stage::Cluster;
                ControlFlow::Break(Step::Forward(PrOutRequest {
                    volume: self.lun.bdev.name().to_string(),
                    nexus,
                    sa,
                    scope_type,
                    param,
                }))
            }
            Ok(false) => ControlFlow::Continue(Ok(None)),
            Err(e) => ControlFlow::Continue(Err(e)),
        }
    }

    /// Submits one I/O of `blocks` at `lba` through `submit`.
    fn submit(
        &mut self,
        submit: &mut dyn FnMut(&LunRt, BlockIo) -> Result<(), Sense>,
        kind: IoKind,
        lba: u64,
        blocks: u64,
        buf: IoBuf,
    ) {
        let bs = self.lun.info.block_size as u64;
        let io = BlockIo {
            kind,
            offset_bytes: lba * bs,
            len_bytes: blocks * bs,
            buf,
        };
        match submit(&self.lun, io) {
            Ok(()) => self.inflight += 1,
            Err(s) => self.err = Some(Failure::Check(s)),
        }
    }

    /// The first `len` bytes of the task buffer as an I/O view.
    fn pool_io(data: Option<&PoolBuf>, off: usize, len: usize) -> IoBuf {
        data.map(|b| b.io().slice(off, len))
            .unwrap_or(IoBuf::empty())
    }

    /// The aux buffer as an I/O view.
    fn aux_io(&mut self) -> IoBuf {
        // SAFETY: the Vec's heap memory lives in the task, which outlives its
        // in-flight I/O (the transport keeps the task until `io_done` says none is
        // left), and nothing touches `aux` until then.
        unsafe { IoBuf::from_raw(self.aux.as_mut_ptr(), self.aux.len()) }
    }

    fn read(
        &mut self,
        stage: Stage,
        data: Option<&PoolBuf>,
        lba: u64,
        blocks: u32,
        submit: &mut dyn FnMut(&LunRt, BlockIo) -> Result<(), Sense>,
    ) -> Stage {
        if stage != Stage::Start {
            return Stage::Done;
        }
        let n = (blocks * self.lun.info.block_size) as usize;
        let io = Self::pool_io(data, 0, n);
        self.submit(submit, IoKind::Read, lba, blocks as u64, io);
        Stage::Transfer
    }

    fn write(
        &mut self,
        stage: Stage,
        data: Option<&PoolBuf>,
        lba: u64,
        blocks: u32,
        fua: bool,
        submit: &mut dyn FnMut(&LunRt, BlockIo) -> Result<(), Sense>,
    ) -> Stage {
        match stage {
            Stage::Start => {
                let n = (blocks * self.lun.info.block_size) as usize;
                let io = Self::pool_io(data, 0, n);
                self.submit(submit, IoKind::Write, lba, blocks as u64, io);
                Stage::Transfer
            }
            Stage::Transfer if fua => {
                self.submit(submit, IoKind::Flush, 0, 0, IoBuf::empty());
                Stage::Flush
            }
            _ => Stage::Done,
        }
    }

    /// Reads the blocks on the medium into `aux` (VERIFY, COMPARE AND WRITE, ORWRITE).
    fn read_old(
        &mut self,
        lba: u64,
        blocks: u32,
        submit: &mut dyn FnMut(&LunRt, BlockIo) -> Result<(), Sense>,
    ) -> Stage {
        self.aux = vec![0u8; (blocks * self.lun.info.block_size) as usize];
        let io = self.aux_io();
        self.submit(submit, IoKind::Read, lba, blocks as u64, io);
        Stage::ReadOld
    }

    fn verify(
        &mut self,
        stage: Stage,
        data: Option<&PoolBuf>,
        lba: u64,
        blocks: u32,
        bytchk: u8,
        submit: &mut dyn FnMut(&LunRt, BlockIo) -> Result<(), Sense>,
    ) -> Stage {
        match stage {
            Stage::Start => self.read_old(lba, blocks, submit),
            Stage::ReadOld => {
                let bs = self.lun.info.block_size;
                let data = data.map(|b| b.bytes()).unwrap_or(&[]);
                let res = if bytchk == 1 {
                    cdb::compare(&data[..(blocks * bs) as usize], &self.aux)
                } else {
                    let one = &data[..bs as usize];
                    self.aux
                        .chunks(bs as usize)
                        .enumerate()
                        .try_for_each(|(i, blk)| {
                            cdb::compare(one, blk).map_err(|mut s| {
                                s.info = s.info.map(|o| o + i as u32 * bs);
                                s
                            })
                        })
                };
                if let Err(s) = res {
                    self.err = Some(Failure::Check(s));
                }
                Stage::Done
            }
            _ => Stage::Done,
        }
    }

    fn compare_and_write(
        &mut self,
        stage: Stage,
        data: Option<&PoolBuf>,
        lba: u64,
        blocks: u32,
        submit: &mut dyn FnMut(&LunRt, BlockIo) -> Result<(), Sense>,
    ) -> Stage {
        match stage {
            Stage::Start => self.read_old(lba, blocks, submit),
            Stage::ReadOld => {
                let n = (blocks * self.lun.info.block_size) as usize;
                let bytes = data.map(|b| b.bytes()).unwrap_or(&[]);
                if let Err(s) = cdb::compare(&bytes[..n], &self.aux) {
                    self.err = Some(Failure::Check(s));
                    return Stage::Done;
                }
                let io = Self::pool_io(data, n, n);
                self.submit(submit, IoKind::Write, lba, blocks as u64, io);
                Stage::WriteNew
            }
            _ => Stage::Done,
        }
    }

    fn or_write(
        &mut self,
        stage: Stage,
        data: Option<&PoolBuf>,
        lba: u64,
        blocks: u32,
        submit: &mut dyn FnMut(&LunRt, BlockIo) -> Result<(), Sense>,
    ) -> Stage {
        match stage {
            Stage::Start => self.read_old(lba, blocks, submit),
            Stage::ReadOld => {
                let bytes = data.map(|b| b.bytes()).unwrap_or(&[]);
                for (a, d) in self.aux.iter_mut().zip(bytes) {
                    *a |= *d;
                }
                let io = self.aux_io();
                self.submit(submit, IoKind::Write, lba, blocks as u64, io);
                Stage::WriteNew
            }
            _ => Stage::Done,
        }
    }

    fn write_same(
        &mut self,
        stage: Stage,
        data: Option<&PoolBuf>,
        (lba, blocks): (u64, u32),
        unmap: bool,
        ndob: bool,
        submit: &mut dyn FnMut(&LunRt, BlockIo) -> Result<(), Sense>,
    ) -> Stage {
        if stage != Stage::Start {
            return Stage::Done;
        }
        let bs = self.lun.info.block_size;
        let block = data.map(|b| &b.bytes()[..bs as usize]);
        let zero = ndob || block.is_some_and(|d| d.iter().all(|&x| x == 0));
        // With UNMAP the blocks are deallocated whatever the data (they then read
        // as zeroes, LBPRZ=1), as initiators expect.
        if zero || unmap {
            let kind = if unmap {
                IoKind::Unmap
            } else {
                IoKind::WriteZeroes
            };
            self.submit(submit, kind, lba, blocks as u64, IoBuf::empty());
        } else {
            let pat = block.unwrap_or(&[]);
            let mut aux = Vec::with_capacity((blocks * bs) as usize);
            for _ in 0..blocks {
                aux.extend_from_slice(pat);
            }
            self.aux = aux;
            let io = self.aux_io();
            self.submit(submit, IoKind::Write, lba, blocks as u64, io);
        }
        Stage::Transfer
    }

    fn unmap(
        &mut self,
        stage: Stage,
        data: Option<&PoolBuf>,
        len: u32,
        submit: &mut dyn FnMut(&LunRt, BlockIo) -> Result<(), Sense>,
    ) -> Stage {
        if stage != Stage::Start {
            return Stage::Done;
        }
        match cdb::unmap_ranges(bytes(data, len as usize), &self.lun.info) {
            Ok(ranges) if ranges.is_empty() => Stage::Done,
            Ok(ranges) => {
                for (lba, n) in ranges {
                    self.submit(submit, IoKind::Unmap, lba, n as u64, IoBuf::empty());
                }
                Stage::Transfer
            }
            Err(s) => {
                self.err = Some(Failure::Check(s));
                Stage::Done
            }
        }
    }

    fn mode_select(&mut self, data: Option<&PoolBuf>, len: u32, ten: bool) -> Stage {
        match cdb::mode_select(bytes(data, len as usize), ten, &self.lun.info_now()) {
            Ok(Some(swp)) => self.lun.set_swp(swp),
            Ok(None) => {}
            Err(s) => self.err = Some(Failure::Check(s)),
        }
        Stage::Done
    }
}

/// The first `len` bytes of the task buffer (a parameter list).
fn bytes(data: Option<&PoolBuf>, len: usize) -> &[u8] {
    data.map(|b| &b.bytes()[..len]).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::null::NullBdev;
    use crate::frontend::scsi::alua::Alua;
    use crate::frontend::scsi::lun::{Identity, LunInfo};
    use crate::frontend::scsi::pr::PrState;

    fn lun() -> Arc<LunRt> {
        let bdev = NullBdev::new("t0", 1 << 20, 512);
        let info = LunInfo {
            lun: 0,
            block_size: 512,
            capacity: crate::frontend::scsi::lun::Capacity::new(2048),
            read_only: false,
            ident: Identity::from_device_id("t0"),
            write_cache: false,
            alua: Alua::default(),
        };
        Arc::new(LunRt::new(info, bdev, PrState::default(), None))
    }

    #[test]
    fn a_full_data_plane_queue_is_busy_and_a_medium_error_is_a_check_condition() {
        let read = || Op::Read { lba: 0, blocks: 1 };
        let mut t = ScsiTask::new(lun(), read());
        t.inflight = 1;
        assert!(t.io_done(IoStatus::Failed(RETRY_ERRNO)));
        assert_eq!(t.err, Some(Failure::Busy));
        assert_eq!(
            (Failure::Busy.status(), Failure::Busy.sense()),
            (0x08, None)
        );
        let mut t = ScsiTask::new(lun(), read());
        t.inflight = 1;
        assert!(t.io_done(IoStatus::Failed(libc::EIO)));
        assert_eq!(t.err, Some(Failure::Check(sense::READ_ERROR)));
        assert_eq!(t.err.unwrap().status(), sense::CHECK_CONDITION);
        let mut t = ScsiTask::new(lun(), read());
        t.inflight = 1;
        assert!(t.io_done(IoStatus::Failed(FENCED_ERRNO)));
        assert_eq!(t.err, Some(Failure::Check(sense::PORT_UNAVAILABLE)));
    }

    /// The unit attention (sense) the next command `cdb0` of `initiator` gets.
    fn ua_of(l: &LunRt, ns: &mut NexusState, initiator: &str, cdb0: u8) -> Option<Sense> {
        let mut cdb = [0u8; 16];
        cdb[0] = cdb0;
        cdb[4] = 36;
        match decode_command(&cdb, Some(l), &[0], (ns, initiator), &|_| false) {
            Op::Done(r) if r.status == sense::CHECK_CONDITION => r.sense,
            _ => None,
        }
    }

    /// Nexuses a, b, c of `l`'s port registered (keys 0xa, 0xb, 0xc) and `far`
    /// registered with its key through target port 9 (another node's nexus):
    /// the state.
    fn three_registered(l: &LunRt, far: (&str, u64)) -> PrState {
        use crate::frontend::scsi::pr::param;
        let mut st = PrState::default();
        for (n, k) in [(A, 0xa), (B, 0xb), (C, 0xc)] {
            st.out(&l.nexus(n), 0, 0, &param(0, k, false)).unwrap();
        }
        st.out(&Nexus::new(far.0, 9), 0, 0, &param(0, far.1, false))
            .unwrap();
        st
    }

    const A: &str = "iqn.a,i,0x1";
    const B: &str = "iqn.b,i,0x2";
    const C: &str = "iqn.c,i,0x3";

    #[test]
    fn a_preempt_and_abort_queues_registrations_preempted_and_names_the_nexuses_to_abort() {
        use crate::frontend::scsi::pr::{param, SA_PREEMPT, SA_PREEMPT_AND_ABORT};
        let l = lun();
        let (a, b, c) = (A, B, C);
        // b through another target port: another node's nexus, not this LUN's.
        let mut st = three_registered(&l, (b, 0xb));
        let before = st.clone();
        st.out(
            &l.nexus(a),
            SA_PREEMPT_AND_ABORT,
            1,
            &param(0xa, 0xb, false),
        )
        .unwrap();
        assert_eq!(l.preempted(&before, &st), vec![l.nexus(b)]);
        assert!(l.preempted(&st, &st).is_empty(), "the same state again");
        // Commands cleared, queued twice, is one; it comes after the preempt's.
        l.queue_nexus_ua(&l.nexus(b), sense::COMMANDS_CLEARED);
        l.queue_nexus_ua(&l.nexus(b), sense::COMMANDS_CLEARED);
        let mut ns = NexusState::default();
        assert_eq!(ua_of(&l, &mut ns, b, 0x00), Some(sense::RESET_OCCURRED));
        assert_eq!(ua_of(&l, &mut ns, b, 0x12), None, "INQUIRY runs");
        assert_eq!(
            ua_of(&l, &mut ns, b, 0x00),
            Some(sense::REGISTRATIONS_PREEMPTED)
        );
        assert_eq!(ua_of(&l, &mut ns, b, 0x00), Some(sense::COMMANDS_CLEARED));
        assert_eq!(ua_of(&l, &mut ns, b, 0x00), None);
        let (mut ns_a, mut ns_c) = (NexusState::default(), NexusState::default());
        for (n, ns) in [(a, &mut ns_a), (c, &mut ns_c)] {
            assert_eq!(ua_of(&l, ns, n, 0x00), Some(sense::RESET_OCCURRED));
            assert_eq!(ua_of(&l, ns, n, 0x00), None, "{n}: nothing more");
        }
        // PREEMPT: the unit attention, nothing to abort.
        let before = st.clone();
        st.out(&l.nexus(a), SA_PREEMPT, 1, &param(0xa, 0xc, false))
            .unwrap();
        assert!(l.preempted(&before, &st).is_empty());
        assert_eq!(
            ua_of(&l, &mut ns_c, c, 0x00),
            Some(sense::REGISTRATIONS_PREEMPTED)
        );
        assert_eq!(ua_of(&l, &mut ns_a, a, 0x00), None, "not the issuer");
    }

    #[test]
    fn release_clear_and_a_type_changing_preempt_queue_their_unit_attentions_on_this_port() {
        use crate::frontend::scsi::pr::{param, ty, SA_CLEAR, SA_PREEMPT, SA_RELEASE};
        let l = lun();
        let (a, b, c) = (A, B, C);
        // c through another target port: another node's nexus.
        let mut st = three_registered(&l, (c, 0xc));
        let mut ns: Vec<NexusState> = (0..3).map(|_| NexusState::default()).collect();
        for (i, n) in [a, b, c].into_iter().enumerate() {
            assert_eq!(ua_of(&l, &mut ns[i], n, 0), Some(sense::RESET_OCCURRED));
        }
        let mut change = |who: &str, sa: u8, t: u8, keys: (u64, u64)| {
            let before = st.clone();
            st.out(&l.nexus(who), sa, t, &param(keys.0, keys.1, false))
                .unwrap();
            assert!(l.preempted(&before, &st).is_empty(), "nothing to abort");
            assert!(l.preempted(&st, &st).is_empty(), "the same state again");
        };
        // A releases its registrants-only reservation: B and C hear, not A.
        change(a, 1, ty::WE_RO, (0xa, 0));
        change(a, SA_RELEASE, ty::WE_RO, (0xa, 0));
        // A write exclusive one: nobody.
        change(a, 1, ty::WE, (0xa, 0));
        change(a, SA_RELEASE, ty::WE, (0xa, 0));
        let want = [None, Some(sense::RESERVATIONS_RELEASED)];
        for (i, n) in [a, b, c].into_iter().enumerate() {
            assert_eq!(ua_of(&l, &mut ns[i], n, 0), want[usize::from(i > 0)], "{n}");
            assert_eq!(ua_of(&l, &mut ns[i], n, 0), None, "{n}: once");
        }
        // B takes write exclusive; C preempts it with exclusive access: B
        // preempted, A (still registered) told of the release, C nothing.
        change(b, 1, ty::WE, (0xb, 0));
        change(c, SA_PREEMPT, ty::EA, (0xc, 0xb));
        assert_eq!(
            ua_of(&l, &mut ns[0], a, 0),
            Some(sense::RESERVATIONS_RELEASED)
        );
        assert_eq!(
            ua_of(&l, &mut ns[1], b, 0),
            Some(sense::REGISTRATIONS_PREEMPTED)
        );
        assert_eq!(ua_of(&l, &mut ns[2], c, 0), None);
        // A clears: C (and nobody else here: B is not registered) is preempted.
        change(a, SA_CLEAR, 0, (0xa, 0));
        assert_eq!(
            ua_of(&l, &mut ns[2], c, 0),
            Some(sense::RESERVATIONS_PREEMPTED)
        );
        for (i, n) in [a, b, c].into_iter().enumerate() {
            assert_eq!(ua_of(&l, &mut ns[i], n, 0), None, "{n}: nothing more");
        }
        // Nothing was queued for c through port 9 (the other node's).
        l.set_alua(&Alua {
            relative_port: 9,
            ..Alua::default()
        });
        assert_eq!(l.take_nexus_ua(c), None);
    }

    #[test]
    fn a_submit_that_fails_with_nothing_in_flight_ends_the_task_with_its_sense() {
        let mut task = ScsiTask::new(lun(), Op::Flush);
        let mut refuse = |_: &LunRt, _: BlockIo| Err(sense::WRITE_ERROR);
        assert!(matches!(task.step(None, "i", &mut refuse), Step::Done));
        assert_eq!(task.inflight(), 0);
        assert_eq!(task.err, Some(Failure::Check(sense::WRITE_ERROR)));
    }
}
