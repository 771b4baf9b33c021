//! The driver: one thread that carries out the slow work of the daemon, in order, off
//! the main loop — kernel phases (prepare with its drain, commit, abort, load,
//! leave), disk writes and reads, local checks, private disk-group transactions,
//! resync fences and the reconnection to a lost data plane.
//!
//! It owns the data-plane adapter ([`Kernel`]) and the private groups' fence table
//! ([`Fences`]; the shared groups' fences are the core's, which asks for their
//! quiesces, resumes and chunk copies as jobs), so
//! every call that changes the data plane runs here, one after the other, in the
//! order the main loop submitted them (a FIFO of [`Job`]s). Each job answers one
//! [`Done`] on the completion channel, in the same order, and wakes the main loop
//! ([`Input::DriverDone`]); the main loop turns it into the core's completion event.
//!
//! Meanwhile the main loop keeps ticking: heartbeats leave, peers and `plexctl` are
//! answered, and the data-plane lease is renewed by its own thread ([`super::lease`]).
//! Between jobs (and at least every [`FENCE_EXPIRY_PERIOD`]) the driver breaks the
//! private fences whose lease ran out.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexd_target_api::KernelClient;

use super::config::{self, ClusterFile};
use super::disks::{self, FailedGroup, Repairs};
use super::exports;
use super::failpoint::Failpoint;
use super::fence::{Fences, Quiesce};
use super::kernel::{Desired, Kernel};
use super::model::{disk_txn, SharedConfig};
use super::owner_lease;
use super::takeover::{self, Deferred, Takeover};
use super::zero;
use super::{Input, Inputs};
use crate::core::{DiskRecord, ErrorKind, FenceToken, NodeId, RequestError, RequestId, TxnId};
use crate::model::{Change, ClusterConfig, DiskGroupConfig, DiskUpdate, ExportProtocol, NewSpace};

/// Jobs submitted to the driver and not yet answered, at most; the main loop waits
/// for the driver when it would submit more (see [`DriverHandle::submit`]).
pub const DRIVER_QUEUE_DEPTH: usize = 256;
/// How long a clean stop waits for the shared volumes' I/O in flight to drain once
/// the lease is revoked (then the node's start stays open: it is recovered).
pub const STOP_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the clean stop looks at the I/O in flight meanwhile.
pub const STOP_DRAIN_POLL: Duration = Duration::from_millis(5);
/// How often an idle driver checks the private fences' leases.
pub const FENCE_EXPIRY_PERIOD: Duration = Duration::from_millis(100);

/// One piece of slow work. Each carries the snapshot of the main loop's state it
/// needs (configurations are taken when the core asked, not when the job runs).
pub enum Job {
    /// The local checks of a transaction (disks, exports, host sessions).
    LocalCheck {
        /// Transaction.
        txn: TxnId,
        /// The change.
        change: Change,
        /// This node's private groups.
        private: ClusterConfig,
        /// The change's disk group as it is now, if it exists (a shared group is
        /// not copied for it).
        group: Option<Arc<DiskGroupConfig>>,
        /// The master's: the group after the change, and the space the change gives
        /// a volume, zeroed once the checks pass ([`super::zero`]).
        zero: Option<(Arc<DiskGroupConfig>, NewSpace)>,
    },
    /// Stage a transaction's configuration in the data plane (quiesce, drain).
    KernelPrepare {
        /// Transaction.
        txn: TxnId,
        /// The shared groups after the transaction (the private ones are the
        /// driver's own, [`Driver::private`]).
        shared: Vec<Arc<DiskGroupConfig>>,
    },
    /// Apply the staged transaction.
    KernelCommit {
        /// Transaction.
        txn: TxnId,
    },
    /// Drop the staged transaction.
    KernelAbort {
        /// Transaction.
        txn: TxnId,
    },
    /// Load a whole configuration (forming, joining).
    KernelLoad {
        /// Shared groups (the private ones are [`Driver::private`]).
        shared: Vec<Arc<DiskGroupConfig>>,
    },
    /// Write the core's record to the shared disks.
    WriteDisks {
        /// The record.
        record: DiskRecord<SharedConfig>,
        /// No disk is written after it (the core's `deadline_ms`)...
        deadline: Instant,
        /// ...or after this node's lease as last published, if that is later.
        lease_extends: bool,
    },
    /// Read the newest shared record.
    ReadDisks {
        /// Configurations this node knows (recognised on the disks).
        known: Vec<(TxnId, SharedConfig)>,
    },
    /// A joiner opens the disks it was offered.
    CheckDiskAccess {
        /// Disk media names.
        disks: Vec<String>,
        /// The configuration of the join offer, with the transaction that
        /// committed it.
        offered: Option<(TxnId, SharedConfig)>,
    },
    /// This node left the cluster: drop a staged layout, fail writes held for a
    /// cluster decision; the shared volumes stay, fenced by the lease.
    Leave,
    /// A private disk-group change, all of it (checks, stage, write, commit).
    Private {
        /// The core's request (echoed in the answer).
        request: RequestId,
        /// The change.
        change: Change,
        /// The private groups before it (the main loop's; the driver checks they are
        /// the ones it last committed).
        before: ClusterConfig,
        /// And after it.
        after: ClusterConfig,
        /// The shared groups (kept as they are in the data plane).
        shared: Vec<Arc<DiskGroupConfig>>,
        /// The change's disk group as it is now, if it exists (boxed: the jobs
        /// stay small).
        group: Option<Box<DiskGroupConfig>>,
        /// The transaction id written to the disks.
        txn: u64,
        /// The change drops a group another node took over (`daemon::taken`): it
        /// writes no disk, and the taken-over refusal does not apply.
        drop_taken: bool,
    },
    /// Hold or release a private group's resync fence (this node's own).
    Fence {
        /// Volume bdev name.
        volume: String,
        /// Hold (true) or release.
        hold: bool,
        /// The copy's token.
        token: u64,
        /// The answer.
        reply: smol::channel::Sender<Result<bool, String>>,
    },
    /// Fail the writes a volume holds for a plex that was not detached.
    FailHeldWrites {
        /// Volume bdev name.
        volume: String,
    },
    /// Answer the data plane's PR OUT request `request` (after the transaction's
    /// kernel commit, which set the new reservations).
    PrOutDone {
        /// The data plane's request id.
        request: u64,
        /// The answer.
        result: plexd_target_api::scsi::PrOutResult,
    },
    /// Give the exported LUNs of shared volumes their ALUA views, by IQN, and this
    /// node's NVMe-oF ANA group its state.
    SyncAlua {
        /// The view of each served export.
        alua: std::collections::BTreeMap<String, plexd_target_api::scsi::alua::Alua>,
        /// The ANA state, when this node serves an NVMe-oF export.
        ana: Option<plexd_target_api::nvmf::AnaState>,
    },
    /// A shared group's resync fence (`core::Action::Quiesce`): quiesce the volume.
    Quiesce {
        /// Disk group.
        dg: String,
        /// Volume.
        volume: String,
        /// The fence.
        token: FenceToken,
    },
    /// The end of a shared group's fence (`core::Action::Resume`).
    Resume {
        /// Volume bdev name.
        volume: String,
    },
    /// A chunk of a shared group's resync (`core::Action::CopyChunk`).
    CopyChunk {
        /// The fence.
        token: FenceToken,
        /// The disk group as it is now.
        group: Option<DiskGroupConfig>,
        /// Volume.
        volume: String,
        /// The SYNCING plex.
        plex: String,
        /// (volume offset, bytes) of each range copied under the fence.
        pieces: Vec<(u64, u64)>,
        /// No write starts from then on (moved on with this node's lease).
        deadline: Instant,
    },
    /// Break every private fence (I/O resumes).
    BreakFences {
        /// Why (logged).
        why: String,
    },
    /// A clean stop: revoke the data plane's lease for good and wait for the shared
    /// volumes' I/O in flight to drain, so no write of this node follows (node-crash
    /// recovery: the core then asks the master to close this node's start).
    StopSharedIo {
        /// The shared volumes' bdev names.
        volumes: Vec<String>,
    },
    /// One attempt to reconnect to the lost data plane and load it.
    Reconnect {
        /// The number of the new connection (for its event thread).
        epoch: u64,
        /// Shared groups to load (empty when this node is no member).
        shared: Vec<Arc<DiskGroupConfig>>,
        /// A transaction prepared at this moment, to stage again.
        staged: Option<(TxnId, Vec<Arc<DiskGroupConfig>>)>,
    },
}

/// The answer to a [`Job`].
pub enum Done {
    /// [`Job::LocalCheck`].
    LocalChecked {
        /// Transaction.
        txn: TxnId,
        /// Refusal, if any.
        result: Result<(), RequestError>,
    },
    /// [`Job::KernelPrepare`].
    KernelPrepared {
        /// Transaction.
        txn: TxnId,
        /// Result.
        result: Result<(), String>,
        /// How long this node's prepare took.
        took: Duration,
    },
    /// [`Job::KernelCommit`].
    KernelCommitted {
        /// Transaction.
        txn: TxnId,
    },
    /// [`Job::KernelLoad`].
    KernelLoaded {
        /// Result.
        result: Result<(), String>,
    },
    /// [`Job::WriteDisks`].
    DiskWritten {
        /// Transaction.
        txn: TxnId,
        /// Result.
        result: Result<(), String>,
    },
    /// [`Job::ReadDisks`].
    DisksRead {
        /// The newest valid record, if any.
        result: Result<Option<DiskRecord<SharedConfig>>, String>,
        /// The failed disk groups as the disks show them now.
        failed: Vec<FailedGroup>,
    },
    /// [`Job::CheckDiskAccess`].
    DiskAccessChecked {
        /// Why this node cannot take the offered configuration, if it cannot.
        refused: Option<String>,
    },
    /// [`Job::Private`].
    Private {
        /// The core's request.
        request: RequestId,
        /// Result (the error names the node).
        result: Result<(), RequestError>,
    },
    /// [`Job::Reconnect`].
    Reconnected {
        /// The connection's number.
        epoch: u64,
        /// The new connection and the result of loading it, or why it failed.
        result: Result<(Arc<KernelClient>, Result<usize, String>), String>,
    },
    /// [`Job::Quiesce`].
    Quiesced {
        /// Disk group.
        dg: String,
        /// Volume.
        volume: String,
        /// The fence.
        token: FenceToken,
        /// Result (a volume this data plane does not serve is Ok).
        result: Result<(), String>,
    },
    /// [`Job::CopyChunk`].
    ChunkCopied {
        /// The fence.
        token: FenceToken,
        /// Result.
        result: Result<(), String>,
    },
    /// [`Job::StopSharedIo`]: Ok once no write of this node to a shared volume can
    /// follow; Err names what could not be made sure of.
    SharedIoStopped {
        /// Result.
        result: Result<(), String>,
    },
    /// Jobs without a result for the main loop.
    Nothing,
}

/// The main loop's side of the driver.
pub struct DriverHandle {
    jobs: SyncSender<(u64, Job)>,
    done: smol::channel::Receiver<(u64, Done)>,
    next: u64,
}

impl DriverHandle {
    /// Hands `job` to the driver; returns its number (its [`Done`] carries it). Waits
    /// only when [`DRIVER_QUEUE_DEPTH`] jobs are queued (the driver never waits for
    /// the main loop, so it makes room). `Err` when the driver thread is gone.
    pub fn submit(&mut self, job: Job) -> Result<u64, String> {
        let seq = self.next;
        self.next += 1;
        self.jobs
            .send((seq, job))
            .map_err(|_| "the driver thread is gone".to_string())?;
        Ok(seq)
    }

    /// The next answer, if one is ready.
    pub fn try_done(&self) -> Option<(u64, Done)> {
        self.done.try_recv().ok()
    }

    /// The next answer, waiting at most `wait` (the control thread's other tasks run
    /// meanwhile); `Err` when the driver is gone.
    pub async fn done_within(&self, wait: Duration) -> Result<Option<(u64, Done)>, String> {
        let answer = async {
            match self.done.recv().await {
                Ok(d) => Ok(Some(d)),
                Err(_) => Err("the driver thread is gone".to_string()),
            }
        };
        let timeout = async {
            smol::Timer::after(wait).await;
            Ok(None)
        };
        smol::future::or(answer, timeout).await
    }
}

/// The driver thread's state.
pub struct Driver {
    /// The cluster file.
    pub file: ClusterFile,
    /// This node.
    pub me: NodeId,
    /// This node's name.
    pub name: String,
    /// The data-plane adapter.
    pub kernel: Kernel,
    /// Resync fences this node holds.
    pub fences: Fences,
    /// Label and slot copies repaired (shared with `disk list`).
    pub repairs: Arc<Mutex<Repairs>>,
    /// The group configurations this driver last wrote (a write validates what
    /// changed since).
    pub written: disks::Written,
    /// The main loop's input (wake-ups; kernel events of a new connection).
    pub tx: Inputs,
    /// The failpoint armed in this process.
    pub failpoint: Option<Failpoint>,
    /// This node's lease as the main loop last published it (a master's disk
    /// writes are checked against it).
    pub lease: super::lease::LeaseView,
    /// The private-group lease's renewer: told which private groups to check.
    pub owner: Arc<super::owner_lease::OwnerLease>,
    /// The private groups as the data plane holds them: the last private change
    /// this driver committed. Every job that stages or loads a whole layout takes
    /// them from here, not from a snapshot taken when the job was queued, so a
    /// shared transaction queued behind a private change keeps what it created.
    pub private: Vec<DiskGroupConfig>,
    /// A takeover import waiting out the old owner's lease, and the shared groups
    /// the data plane holds ([`takeover`]).
    pub takeover: Takeover,
    /// Where this node finds its disks, kept between transactions
    /// ([`disks::DiskFinder`]; a cell: [`Driver::desired`] reads `self.private`
    /// while it looks).
    pub finder: std::cell::RefCell<disks::DiskFinder>,
    /// What the loads last warned of, per disk group ([`servable_here`]).
    pub warned: Warned,
}

/// Whether the data plane already holds a disk bdev (by name).
pub type HeldDisk<'a> = &'a dyn Fn(&str) -> bool;

/// The last warning [`desired_of`] logged for each disk group (the volumes a
/// missing or failed disk keeps out): every load and kernel phase computes it
/// again, and it is logged only when it changes.
#[derive(Debug, Default)]
pub struct Warned(std::cell::RefCell<std::collections::BTreeMap<String, String>>);

impl Warned {
    /// Logs `line` for group `dg` unless it was the last one logged for it; `None`:
    /// nothing to warn of now (the next warning is logged again).
    fn note(&self, dg: &str, line: Option<String>) {
        let mut last = self.0.borrow_mut();
        match line {
            Some(line) if last.get(dg) != Some(&line) => {
                log::warn!("{line}");
                last.insert(dg.to_string(), line);
            }
            Some(_) => {}
            None => {
                last.remove(dg);
            }
        }
    }
}

impl Driver {
    /// Starts the driver thread.
    pub fn start(self) -> Result<DriverHandle, String> {
        let (jobs_tx, jobs_rx) = mpsc::sync_channel(DRIVER_QUEUE_DEPTH);
        // Holds at most one answer per job submitted (and one late answer): bounded
        // by the job queue.
        let (done_tx, done_rx) = smol::channel::unbounded();
        let name = self.name.clone();
        std::thread::Builder::new()
            .name("driver".into())
            .spawn(move || self.run(jobs_rx, done_tx))
            .map_err(|e| format!("node {name}: cannot start the driver thread: {e}"))?;
        Ok(DriverHandle {
            jobs: jobs_tx,
            done: done_rx,
            next: 0,
        })
    }

    fn run(mut self, jobs: Receiver<(u64, Job)>, done: smol::channel::Sender<(u64, Done)>) {
        let mut last_expiry = Instant::now();
        loop {
            let wait = self.takeover.wait(Instant::now(), FENCE_EXPIRY_PERIOD);
            match jobs.recv_timeout(wait) {
                Ok((seq, job)) => {
                    let answer = self.execute(job);
                    if done.send_blocking((seq, answer)).is_err() {
                        return;
                    }
                    // A full input queue is being read anyway: the main loop
                    // looks for answers after every input.
                    let _ = self.tx.try_send(Input::DriverDone);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if let Some(d) = self.takeover.due(Instant::now()) {
                let request = d.request;
                let result = self.serve_takeover(d);
                if done
                    .send_blocking((takeover::LATE, Done::Private { request, result }))
                    .is_err()
                {
                    return;
                }
                let _ = self.tx.try_send(Input::DriverDone);
            }
            if last_expiry.elapsed() >= FENCE_EXPIRY_PERIOD {
                self.fences.expire(self.kernel.client(), Instant::now());
                last_expiry = Instant::now();
            }
        }
    }

    fn err(&self, e: impl std::fmt::Display) -> String {
        format!("node {}: {e}", self.name)
    }

    fn portal(&self) -> &str {
        self.file
            .node(&self.name)
            .map(|n| n.iscsi_portal())
            .unwrap_or(config::DEFAULT_ISCSI_PORTAL)
    }

    fn nvmf_portal(&self) -> &str {
        self.file
            .node(&self.name)
            .map(|n| n.nvmf_portal())
            .unwrap_or(config::DEFAULT_NVMF_PORTAL)
    }

    fn files(&self) -> Vec<PathBuf> {
        self.file.disk_files()
    }

    fn desired(&self, shared: &[Arc<DiskGroupConfig>], private: &[DiskGroupConfig]) -> Desired {
        let mut specs = self.kernel.specs();
        let mut finder = self.finder.borrow_mut();
        let groups = shared.iter().map(|g| &**g).chain(private.iter());
        let local = finder.locate(|| self.files(), groups, Instant::now());
        let held = |bdev: &str| self.kernel.holds_disk(bdev);
        let node = (self.name.as_str(), &held as HeldDisk, &self.warned);
        desired_of(local, &self.file, node, (shared, private), &mut specs)
    }

    /// `updates` written by transaction `txn` to the disks where the finder says
    /// they are; a disk not written makes the finder read the labels again next
    /// time (its path may hold another disk now).
    fn write_updates(
        &mut self,
        updates: &[DiskUpdate],
        txn: u64,
        deadline: Option<Instant>,
    ) -> Result<(), String> {
        let mut finder = self.finder.borrow_mut();
        let groups = updates.iter().filter_map(|u| match u {
            DiskUpdate::WriteConfig(g) => Some(&**g),
            DiskUpdate::Release(_) => None,
        });
        let local = finder.locate(|| self.files(), groups, Instant::now());
        let mut repairs = self.repairs.lock().unwrap_or_else(|p| p.into_inner());
        let memory = (&mut *repairs, &mut self.written);
        let result = disks::write_updates(updates, txn, &self.name, local, memory, deadline);
        finder.written(&result);
        result.map(|_| ())
    }

    /// Driver point `point`: sleeps when `PLEXD_FAILPOINT=<point>:sleep=<ms>` names it.
    fn failpoint_sleep(&self, point: &str) {
        if let Some(d) = self.failpoint.as_ref().and_then(|f| f.sleep_at(point)) {
            log::warn!(
                "node {}: failpoint {point}: sleeping {} ms",
                self.name,
                d.as_millis()
            );
            std::thread::sleep(d);
        }
    }

    fn check_export(
        &self,
        group: Option<&DiskGroupConfig>,
        change: &Change,
    ) -> Result<(), RequestError> {
        check_export(
            self.kernel.client(),
            &self.name,
            (self.portal(), self.nvmf_portal()),
            group,
            change,
        )
    }

    /// [`Job::WriteDisks`]: the core's record to the shared disks, no disk written past the deadline (or this node's published lease, if later).
    fn write_disks(
        &mut self,
        record: DiskRecord<SharedConfig>,
        deadline: Instant,
        lease_extends: bool,
    ) -> Done {
        self.failpoint_sleep("driver.write_disks");
        let deadline = match self.lease.end().filter(|_| lease_extends) {
            Some(end) => end.max(deadline),
            None => deadline,
        };
        let result =
            self.write_updates(&record.config.updates, disk_txn(record.txn), Some(deadline));
        if let Err(e) = &result {
            log::error!(
                "node {}: transaction {}: disk write failed: {e}",
                self.name,
                record.txn
            );
        }
        Done::DiskWritten {
            txn: record.txn,
            result,
        }
    }

    /// [`Job::Fence`]: hold or release a private group's resync fence on this node.
    fn fence(
        &mut self,
        volume: String,
        hold: bool,
        token: u64,
        reply: smol::channel::Sender<Result<bool, String>>,
    ) -> Done {
        let from = self.me;
        let answer = if hold {
            self.fences
                .hold(self.kernel.client(), &volume, from, token, Instant::now())
                .map(|()| true)
                .map_err(|e| self.err(e))
        } else {
            self.fences.release(self.kernel.client(), &volume, token)
        };
        if let Err(e) = &answer {
            log::warn!(
                "node {}: fence on volume {volume} for node {from}: {e}",
                self.name
            );
        }
        let _ = reply.try_send(answer);
        Done::Nothing
    }

    /// [`Job::StopSharedIo`]: the lease revoked (in force on every reactor when the
    /// data plane answers: new I/O to shared volumes fails, parked and held I/O too),
    /// then the shared volumes' I/O still in flight drained: polled until none is
    /// left, within [`STOP_DRAIN_TIMEOUT`]. Gates and staged layouts are left alone
    /// (a transaction or a resync fence may hold them).
    fn stop_shared_io(&mut self, volumes: &[String]) -> Result<(), String> {
        self.lease.revoke_for_stop().map_err(|e| self.err(e))?;
        let deadline = Instant::now() + STOP_DRAIN_TIMEOUT;
        loop {
            let listed = self
                .kernel
                .client()
                .list_volumes()
                .map_err(|e| self.err(format!("cannot list the data plane's volumes: {e}")))?;
            let busy: Vec<String> = listed
                .iter()
                .filter(|v| v.inflight > 0 && volumes.contains(&v.name))
                .map(|v| format!("{} ({} I/Os)", v.name, v.inflight))
                .collect();
            if busy.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.err(format!(
                    "I/O in flight did not drain within {} ms of the stop: {}",
                    STOP_DRAIN_TIMEOUT.as_millis(),
                    busy.join(", ")
                )));
            }
            std::thread::sleep(STOP_DRAIN_POLL);
        }
    }

    /// [`Job::Quiesce`]: the core's fence on a shared volume: quiesce it here.
    fn quiesce(&mut self, dg: String, volume: String, token: FenceToken) -> Done {
        let bdev = crate::model::volume_bdev(&dg, &volume);
        let result = self
            .kernel
            .client()
            .quiesce_volume(&bdev)
            .map(|_| ())
            .map_err(|e| self.err(format!("volume {bdev}: fence {token}: {e}")));
        if let Err(e) = &result {
            log::warn!("{e}");
        }
        Done::Quiesced {
            dg,
            volume,
            token,
            result,
        }
    }

    /// [`Job::CopyChunk`]: one chunk of a shared resync (its pieces in order),
    /// copied by the data plane, refused past the master's lease.
    fn copy_chunk(
        &mut self,
        token: FenceToken,
        group: Option<DiskGroupConfig>,
        volume: String,
        plex: String,
        pieces: &[(u64, u64)],
        deadline: Instant,
    ) -> Done {
        let lease = self.lease.clone();
        let past = move || {
            let end = lease.end().map_or(deadline, |e| e.max(deadline));
            Instant::now() >= end
        };
        let result = match &group {
            Some(g) => pieces.iter().try_for_each(|&(offset, len)| {
                super::resync::copy_range(
                    self.kernel.client(),
                    g,
                    &volume,
                    &plex,
                    offset,
                    len,
                    &past,
                )
            }),
            None => Err(format!("no disk group holds volume {volume}")),
        }
        .map_err(|e| self.err(format!("resync copy {token}: {e}")));
        if let Err(e) = &result {
            log::warn!("{e}");
        }
        Done::ChunkCopied { token, result }
    }

    /// Carries out one job: a dispatch; each job longer than a line has a method.
    fn execute(&mut self, job: Job) -> Done {
        match job {
            Job::LocalCheck {
                txn,
                change,
                private,
                group,
                zero,
            } => self.local_check(txn, &change, &private, group.as_deref(), zero),
            Job::KernelPrepare { txn, shared } => self.kernel_prepare(txn, &shared),
            Job::KernelCommit { txn } => self.kernel_commit(txn),
            Job::KernelAbort { txn } => {
                log::info!("node {}: transaction {txn}: aborted", self.name);
                self.kernel.abort();
                self.takeover.aborted();
                Done::Nothing
            }
            Job::KernelLoad { shared } => self.kernel_load(&shared),
            Job::WriteDisks {
                record,
                deadline,
                lease_extends,
            } => self.write_disks(record, deadline, lease_extends),
            Job::ReadDisks { known } => {
                let files = self.files();
                let result = disks::read_shared(&files, &self.file.cluster.id, &self.name, &known);
                let failed = disks::failed_groups(&files, &self.file.cluster.id, &self.name);
                Done::DisksRead { result, failed }
            }
            Job::CheckDiskAccess { disks, offered } => Done::DiskAccessChecked {
                refused: self.check_disk_access(&disks, offered.as_ref()),
            },
            Job::Leave => {
                self.fences
                    .break_all(self.kernel.client(), "this node left the cluster");
                let private = self.desired(&[], &self.private);
                self.kernel.leave(&private);
                self.takeover.loaded(&[]);
                Done::Nothing
            }
            Job::Private {
                request,
                change,
                before,
                after,
                shared,
                group,
                txn,
                drop_taken,
            } => {
                let result = match drop_taken {
                    true => self
                        .drop_taken_group(&change, &after, &shared)
                        .map(|()| None),
                    false => self.private_change(&change, &before, &after, &shared, group, txn),
                };
                match result {
                    Ok(Some(until)) => {
                        // Answered once served ([`takeover`]).
                        self.takeover.defer(Deferred {
                            request,
                            change,
                            after,
                            until,
                        });
                        Done::Nothing
                    }
                    result => Done::Private {
                        request,
                        result: result.map(|_| ()),
                    },
                }
            }
            Job::Fence {
                volume,
                hold,
                token,
                reply,
            } => self.fence(volume, hold, token, reply),
            Job::FailHeldWrites { volume } => self.fail_held_writes(&volume),
            Job::PrOutDone { request, result } => self.pr_out_done(request, result),
            Job::SyncAlua { alua, ana } => self.sync_alua(&alua, ana),
            Job::Quiesce { dg, volume, token } => self.quiesce(dg, volume, token),
            Job::Resume { volume } => {
                if let Err(e) = self.kernel.client().resume_volume(&volume) {
                    log::debug!("node {}: volume {volume}: resume: {e}", self.name);
                }
                Done::Nothing
            }
            Job::CopyChunk {
                token,
                group,
                volume,
                plex,
                pieces,
                deadline,
            } => self.copy_chunk(token, group, volume, plex, &pieces, deadline),
            Job::StopSharedIo { volumes } => Done::SharedIoStopped {
                result: self.stop_shared_io(&volumes),
            },
            Job::BreakFences { why } => {
                self.fences.break_all(self.kernel.client(), &why);
                Done::Nothing
            }
            Job::Reconnect {
                epoch,
                shared,
                staged,
            } => Done::Reconnected {
                epoch,
                result: self.reconnect(epoch, &shared, staged),
            },
        }
    }

    /// A transaction's local check on this node: the disks the change names, and the
    /// export it makes.
    fn local_check(
        &mut self,
        txn: TxnId,
        change: &Change,
        private: &ClusterConfig,
        group: Option<&DiskGroupConfig>,
        zero: Option<(Arc<DiskGroupConfig>, NewSpace)>,
    ) -> Done {
        let result = disks::local_check(change, private, &self.files())
            .and_then(|()| self.check_export(group, change))
            .and_then(|()| match zero {
                Some((after, space)) => self.zero_new_space(&after, &space),
                None => Ok(()),
            });
        if let Err(e) = &result {
            log::warn!(
                "node {}: transaction {txn}: local check refused: {e}",
                self.name
            );
        }
        Done::LocalChecked { txn, result }
    }

    /// Zeroes `space`, the space a change gives a volume of `after` (the group after
    /// the change): [`super::zero`]. The disks are where the finder says (each label
    /// is read again before it is written); a failure makes the finder read the
    /// labels again next time.
    fn zero_new_space(
        &self,
        after: &DiskGroupConfig,
        space: &NewSpace,
    ) -> Result<(), RequestError> {
        let mut finder = self.finder.borrow_mut();
        let local = finder.locate(|| self.files(), [after], Instant::now());
        zero::zero_new_space(&self.name, after, space, local).map_err(|e| {
            finder.forget();
            log::error!("{e}");
            RequestError::new(ErrorKind::Failed, self.name.clone(), e)
        })
    }

    /// A transaction's kernel phase: stage the shared groups (with this node's private
    /// ones) in the data plane, quiescing what changes; breaks every resync fence first.
    fn kernel_prepare(&mut self, txn: TxnId, shared: &[Arc<DiskGroupConfig>]) -> Done {
        let began = Instant::now();
        let desired = self.desired(shared, &self.private);
        self.fences
            .break_all(self.kernel.client(), "a transaction's kernel phase");
        let result = self.kernel.prepare(desired, true);
        self.takeover.prepared(shared);
        self.failpoint_sleep("driver.kernel_prepare");
        if let Err(e) = &result {
            log::error!(
                "node {}: transaction {txn}: kernel phase failed: {e}",
                self.name
            );
        }
        Done::KernelPrepared {
            txn,
            result,
            took: began.elapsed(),
        }
    }

    /// Commits the staged layout in the data plane.
    fn kernel_commit(&mut self, txn: TxnId) -> Done {
        self.failpoint_sleep("driver.kernel_commit");
        if let Err(e) = self.kernel.commit() {
            log::error!(
                "node {}: transaction {txn}: data plane commit: {e}",
                self.name
            );
        }
        self.takeover.committed();
        Done::KernelCommitted { txn }
    }

    /// Loads a whole configuration into the data plane (join, reload).
    fn kernel_load(&mut self, shared: &[Arc<DiskGroupConfig>]) -> Done {
        let desired = self.desired(shared, &self.private);
        self.fences
            .break_all(self.kernel.client(), "a configuration load");
        let result = self.kernel.load(desired);
        self.takeover.loaded(shared);
        if let Err(e) = &result {
            log::error!(
                "node {}: cannot load the configuration into the data plane: {e}",
                self.name
            );
        }
        Done::KernelLoaded { result }
    }

    /// Fails the writes a volume holds after a plex error the cluster could not detach.
    fn fail_held_writes(&mut self, volume: &str) -> Done {
        if let Err(e) = self.kernel.client().fail_held_writes(volume) {
            log::error!(
                "node {}: volume {volume}: cannot fail held writes: {e}",
                self.name
            );
        }
        Done::Nothing
    }

    /// Answers the data plane's persistent reserve out request with the cluster's outcome.
    fn pr_out_done(&mut self, request: u64, result: plexd_target_api::scsi::PrOutResult) -> Done {
        if let Err(e) = self.kernel.client().pr_out_done(request, result) {
            log::warn!(
                "node {}: data plane: persistent reserve out request {request}: cannot answer {result:?}: {e}",
                self.name
            );
        }
        Done::Nothing
    }

    /// Hands the data plane the ALUA (and NVMe ANA) states the cluster decided.
    fn sync_alua(
        &mut self,
        alua: &std::collections::BTreeMap<String, plexd_target_api::scsi::alua::Alua>,
        ana: Option<plexd_target_api::nvmf::AnaState>,
    ) -> Done {
        let mut errors = super::exports::sync_alua(self.kernel.client(), alua);
        if let Some(state) = ana {
            errors.extend(super::exports::sync_ana(self.kernel.client(), state));
        }
        for e in errors {
            log::warn!("node {}: data plane: {e}", self.name);
        }
        Done::Nothing
    }

    /// A change of a private disk group: validated, staged in the data plane, written
    /// to the group's disks, committed — all on this node. A takeover import is not
    /// committed here: `Some(until)`, it is served at `until` ([`takeover`]).
    fn private_change(
        &mut self,
        change: &Change,
        before: &ClusterConfig,
        after: &ClusterConfig,
        shared: &[Arc<DiskGroupConfig>],
        group: Option<Box<DiskGroupConfig>>,
        txn: u64,
    ) -> Result<Option<Instant>, RequestError> {
        let updates = change.disk_updates(before, after);
        let node = self.name.clone();
        let failed = |e: String| RequestError::new(ErrorKind::Failed, node.clone(), e);
        if let Some(owner) = self.owner.taken(change.dg_name()) {
            let e = self.err(format!(
                "disk group {}: its disks name {owner} as owner now (taken over): this node \
                 no longer changes it",
                change.dg_name()
            ));
            log::error!("{e}");
            return Err(RequestError::new(ErrorKind::Refused, self.name.clone(), e));
        }
        disks::local_check(change, &ClusterConfig::default(), &self.files())
            .map_err(|e| e.on(&self.name))?;
        self.check_export(group.as_deref(), change)?;
        let dg = change.dg_name();
        if let Some(g) = after.disk_group(dg) {
            let cluster = &self.file.cluster;
            if let Some(space) = zero::space_to_zero(cluster, change, before.disk_group(dg), g) {
                self.zero_new_space(g, &space)?;
            }
        }
        let desired = self.desired(shared, &after.disk_groups);
        self.fences
            .break_all(self.kernel.client(), "a private transaction");
        if let Err(e) = self.kernel.prepare(desired, true) {
            self.kernel.abort();
            let e = self.err(format!("disk group {}: data plane: {e}", change.dg_name()));
            log::error!("{e}");
            return Err(failed(e));
        }
        self.failpoint_sleep("driver.kernel_prepare");
        // Groups whose owner the write changes (import, deport, destroy) are not
        // checked by the private-group lease while their labels change.
        let files = self.files();
        self.owner
            .set_groups(owner_lease::owned(&same_owner(before, after), &files));
        if let Err(e) = self.write_updates(&updates, txn, None) {
            self.kernel.abort();
            self.owner
                .set_groups(owner_lease::owned(&self.private, &files));
            let e = self.err(e);
            log::error!("{e}");
            return Err(failed(e));
        }
        if let Some(wait) = self.takeover_wait(change) {
            // Staged for its checks only; served once the old owner's lease is out.
            self.kernel.abort();
            return Ok(Some(Instant::now() + wait));
        }
        self.commit_private(change, after.disk_groups.clone(), shared);
        Ok(None)
    }

    /// Commits a private change staged with `shared` that leaves `private`.
    fn commit_private(
        &mut self,
        change: &Change,
        private: Vec<DiskGroupConfig>,
        shared: &[Arc<DiskGroupConfig>],
    ) {
        if let Err(e) = self.kernel.commit() {
            log::error!(
                "node {}: disk group {}: data plane commit: {e}",
                self.name,
                change.dg_name()
            );
        }
        self.takeover.loaded(shared);
        self.private = private;
        self.owner
            .set_groups(owner_lease::owned(&self.private, &self.files()));
        log::info!("node {}: private change committed: {change:?}", self.name);
    }

    /// Serves a takeover import whose wait is over ([`takeover`]): the shared groups
    /// the data plane holds and the private groups after the import, staged and
    /// committed. Its labels already name this node: a data plane that refuses it
    /// leaves the group unserved until plexd restarts (and imports it). A data plane
    /// lost meanwhile refuses nothing: the group is this node's like its others, and
    /// the reconnection loads it with them (the old owner's lease is out by now).
    fn serve_takeover(&mut self, d: Deferred) -> Result<(), RequestError> {
        let shared = self.takeover.shared();
        let desired = self.desired(&shared, &d.after.disk_groups);
        self.fences
            .break_all(self.kernel.client(), "a private transaction");
        if let Err(e) = self.kernel.prepare(desired, true) {
            self.kernel.abort();
            if self.kernel.lost() {
                log::warn!(
                    "node {}: disk group {}: taken over, but the data plane is lost ({e}); it \
                     is served when the data plane is back",
                    self.name,
                    d.change.dg_name()
                );
                self.private = d.after.disk_groups;
                self.owner
                    .set_groups(owner_lease::owned(&self.private, &self.files()));
                return Ok(());
            }
            self.owner
                .set_groups(owner_lease::owned(&self.private, &self.files()));
            let dg = d.change.dg_name();
            let e = self.err(format!(
                "disk group {dg}: its disks name this node as owner now, but the data plane \
                 refused to serve it: {e}; restart plexd on this node to serve it"
            ));
            log::error!("{e}");
            return Err(RequestError::new(ErrorKind::Failed, self.name.clone(), e));
        }
        self.commit_private(&d.change, d.after.disk_groups, &shared);
        Ok(())
    }

    /// The drop of a private group another node took over (`daemon::taken`): the
    /// data plane stops serving it (staged without it, committed), nothing is
    /// written to its disks (they are the new owner's), and only then does the
    /// private-group lease thread check the remaining groups alone (and renew the
    /// lease for them again). A failed stage or commit changes nothing here: the
    /// group stays held, every private volume stays fenced.
    fn drop_taken_group(
        &mut self,
        change: &Change,
        after: &ClusterConfig,
        shared: &[Arc<DiskGroupConfig>],
    ) -> Result<(), RequestError> {
        let desired = self.desired(shared, &after.disk_groups);
        self.fences
            .break_all(self.kernel.client(), "a private transaction");
        let staged = self.kernel.prepare(desired, true);
        let result = staged.and_then(|()| self.kernel.commit());
        if let Err(e) = result {
            self.kernel.abort();
            let e = self.err(format!(
                "disk group {}: data plane: {e} (dropping the taken-over group)",
                change.dg_name()
            ));
            log::error!("{e}");
            return Err(RequestError::new(ErrorKind::Failed, self.name.clone(), e));
        }
        self.takeover.loaded(shared);
        self.private = after.disk_groups.clone();
        self.owner
            .set_groups(owner_lease::owned(&self.private, &self.files()));
        log::info!(
            "node {}: disk group {} dropped from the data plane (taken over)",
            self.name,
            change.dg_name()
        );
        Ok(())
    }

    /// How long a private import that takes a group over from another owner (`dg
    /// import --clear-owner`), its labels now naming this node, waits before this
    /// node serves the group: until the old owner's data plane, frozen or cut off,
    /// can no longer serve it (it renews its private-group lease only while its
    /// labels name it: [`owner_lease`]). None for any other change.
    fn takeover_wait(&self, change: &Change) -> Option<Duration> {
        let Change::DgImport {
            config,
            shared: false,
            owner_id,
        } = change
        else {
            return None;
        };
        if config.owner_id.is_empty() || config.owner_id == *owner_id {
            return None;
        }
        let wait = owner_lease::takeover_wait_ms(&self.file.cluster);
        log::warn!(
            "node {}: disk group {}: taken over from {}; waiting {wait} ms (its private-group \
             lease) before serving it",
            self.name,
            config.name,
            config.owner_id
        );
        Some(Duration::from_millis(wait))
    }

    /// Why this node cannot take the offered configuration, naming this node: a
    /// disk it names that this node cannot find, or a newer configuration on the
    /// disks ([`disks::newer_than_offered`]).
    fn check_disk_access(
        &self,
        names: &[String],
        offered: Option<&(TxnId, SharedConfig)>,
    ) -> Option<String> {
        let missing = |name: &str| format!("cannot find disk {name} on node {}", self.name);
        let Some((offered_txn, offered)) = offered else {
            return names.first().map(|n| missing(n));
        };
        let files = self.files();
        let local = disks::LocalDisks::scan(&files);
        for name in names {
            let found = offered
                .groups
                .iter()
                .find_map(|g| g.disk(name).map(|d| (&g.name, d)));
            let Some((dg, d)) = found else {
                return Some(missing(name));
            };
            if let Err(e) = disks::check_disk(d, &local) {
                log::error!("node {}: {e}", self.name);
                // With the way out when the disk is gone for good.
                return Some(format!(
                    "{} (disk group {dg}; if it is gone for good, `plexctl dg fail-disk {dg} {name}` on the master records it failed)",
                    missing(name)
                ));
            }
        }
        // Logged by the core with the join it abandons.
        disks::newer_than_offered(
            &files,
            &self.file.cluster.id,
            &self.name,
            offered,
            *offered_txn,
        )
    }

    /// One attempt to reconnect to the lost data plane. Once connected: events again
    /// (connection `epoch`), the whole desired configuration loaded, a prepared
    /// transaction staged again. Returns the new connection and how many volumes the
    /// load held (or why it failed).
    fn reconnect(
        &mut self,
        epoch: u64,
        shared: &[Arc<DiskGroupConfig>],
        staged: Option<(TxnId, Vec<Arc<DiskGroupConfig>>)>,
    ) -> Result<(Arc<KernelClient>, Result<usize, String>), String> {
        self.kernel.reconnect()?;
        super::start_kernel_events(&self.kernel, self.tx.clone(), epoch, &self.name);
        let desired = self.desired(shared, &self.private);
        let volumes = desired.volumes.len();
        let loaded = self.kernel.load(desired).map(|()| volumes);
        self.takeover.loaded(shared);
        if let Some((txn, config)) = staged {
            self.takeover.prepared(&config);
            let again = self.desired(&config, &self.private);
            if let Err(e) = self.kernel.prepare(again, true) {
                log::error!(
                    "node {}: transaction {txn}: cannot stage it again in the reconnected data plane: {e}",
                    self.name
                );
            }
        }
        Ok((self.kernel.shared_client(), loaded))
    }
}

/// The private groups of `after` that `before` held with the same owner (a change
/// that imports, deports or destroys a group rewrites its labels' owner).
fn same_owner(before: &ClusterConfig, after: &ClusterConfig) -> Vec<DiskGroupConfig> {
    after
        .disk_groups
        .iter()
        .filter(|g| {
            before
                .disk_groups
                .iter()
                .any(|b| b.id == g.id && b.owner_id == g.owner_id)
        })
        .cloned()
        .collect()
}

/// The bdevs, volumes and exports node `name` of cluster file `file` serves for
/// `shared` and `private` groups, each disk opened where `local` finds it (by id,
/// [`disks::LocalDisks`]); the volumes' specs are projected again only
/// for volumes `specs` has not seen ([`Desired::of_cached`]). The node: its name,
/// whether its data plane already holds a disk bdev, and what it last warned of
/// ([`servable_here`]).
pub fn desired_of(
    local: &disks::LocalDisks,
    file: &ClusterFile,
    (name, held, warned): (&str, HeldDisk<'_>, &Warned),
    (shared, private): (&[Arc<DiskGroupConfig>], &[DiskGroupConfig]),
    specs: &mut super::kernel::SpecCache,
) -> Desired {
    let portal = file
        .node(name)
        .map(|n| n.iscsi_portal())
        .unwrap_or(config::DEFAULT_ISCSI_PORTAL);
    let nvmf_nodes: Vec<(String, String)> = file
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.nvmf_portal().to_string()))
        .collect();
    let servable = |g| {
        let (served, warning) = servable_here(g, local, name, held);
        warned.note(&g.name, warning);
        served
    };
    let shared: Vec<std::borrow::Cow<'_, DiskGroupConfig>> =
        shared.iter().map(|g| servable(g)).collect();
    let private: Vec<std::borrow::Cow<'_, DiskGroupConfig>> =
        private.iter().map(servable).collect();
    let all = || shared.iter().chain(&private).map(|g| &**g);
    let id = file.node(name).map_or(0, |n| n.id);
    let (mut d, extras) = Desired::of_cached_with_extras(all(), id, specs);
    // The disks at their paths on this node (nothing else of a group names a path:
    // the volumes name disk bdevs), without copying the groups.
    for g in all() {
        for disk in &g.disks {
            let path = local.path_of(disk).display().to_string();
            d.disks
                .insert(crate::model::disk_bdev(&g.name, &disk.name), path);
        }
    }
    d.exports = exports::desired(extras.iter().copied(), name, portal);
    d.nvmf = exports::desired_nvmf(extras.iter().copied(), name, &nvmf_nodes);
    d.nvmf_node = exports::NvmfNode::of(file, name).unwrap_or_default();
    d
}

/// Group `g` as node `node`'s data plane serves it.
/// - Without its disks recorded failed ([`crate::model::Disk::failed`]) and the
///   plexes on them (STALE or EMPTY: they take no I/O); a volume left without an
///   ACTIVE plex by that is not served.
/// - Without the disks this node does not find (`local`) and the volumes that use
///   one, with a warning naming them (logged when it changes, [`Warned`]), so that
///   a dead disk keeps only those
///   volumes from being served, not the node's other groups (nor, through a
///   refused load, the node from joining the cluster). A private group's disk is
///   missing this way when it died; a shared group's only on the master that forms
///   a cluster without it, and on the nodes that join while a change recording it
///   failed waits (`ConfigModel::disks_given_up`): a joiner must find every other
///   disk of the shared groups. A shared disk the data plane already holds
///   (`held`, by bdev name) is not cut: a path gone from under a running member
///   leaves its open disk serving as before (its I/O errors go through the detach
///   policy).
fn servable_here<'a>(
    g: &'a DiskGroupConfig,
    local: &disks::LocalDisks,
    node: &str,
    held: HeldDisk<'_>,
) -> (std::borrow::Cow<'a, DiskGroupConfig>, Option<String>) {
    let missing: Vec<&str> = g
        .disks
        .iter()
        .filter(|d| !d.failed && !local.finds(d))
        .filter(|d| !(g.shared && held(&crate::model::disk_bdev(&g.name, &d.name))))
        .map(|d| d.name.as_str())
        .collect();
    if missing.is_empty() && !g.disks.iter().any(|d| d.failed) {
        return (std::borrow::Cow::Borrowed(g), None);
    }
    let mut served = g.clone();
    served
        .disks
        .retain(|d| !d.failed && !missing.contains(&d.name.as_str()));
    let mut cut = std::collections::BTreeSet::new();
    for vi in 0..served.volumes.len() {
        let on_failed =
            |p: &crate::model::Plex| p.subdisks.iter().any(|sd| g.disk_failed(&sd.disk));
        if served.volumes[vi].plexes.iter().any(on_failed) {
            cut.insert(served.volumes[vi].name.clone());
            let v = served.volume_mut(vi);
            v.plexes.retain(|p| !on_failed(p));
            if let crate::model::ReadPolicy::Prefer { plex } = &v.read_policy {
                if !v.plexes.iter().any(|p| p.name == *plex) {
                    v.read_policy = crate::model::ReadPolicy::Round;
                }
            }
        }
    }
    let mut left_out = Vec::new();
    served.volumes.retain(|v| {
        let keep = (v.active_plexes() > 0 || !cut.contains(&v.name))
            && !missing.iter().any(|d| v.uses_disk(d));
        if !keep {
            left_out.push(v.name.clone());
        }
        keep
    });
    let warning = if !missing.is_empty() {
        Some(format!(
            "node {node}: disk group {}: disk(s) {} not found on the disk paths: volume(s) {} not served on this node until they are (its other volumes are)",
            g.name,
            missing.join(", "),
            if left_out.is_empty() { "none".to_string() } else { left_out.join(", ") },
        ))
    } else if !left_out.is_empty() {
        Some(format!(
            "node {node}: disk group {}: volume(s) {} have no ACTIVE plex off the disk(s) recorded failed: not served",
            g.name,
            left_out.join(", "),
        ))
    } else {
        None
    };
    (std::borrow::Cow::Owned(served), warning)
}

/// Whether the local check of `change` on node `name` reads this node's disks or
/// data plane ([`disks::local_check`], [`check_export`]): it adds disks, takes
/// volumes of `group` (the change's group as it is now) away from hosts, or exports
/// a volume on this node. Only then is it a driver job; the rest of the check
/// ([`disks::check_private_names`]) reads nothing.
pub fn local_check_reads(change: &Change, group: Option<&DiskGroupConfig>, name: &str) -> bool {
    !change.new_disks().is_empty()
        || group.is_some_and(|g| !exports::volumes_taken_away(change, g).0.is_empty())
        || matches!(change, Change::VolExport { export, .. } if exports::serves(export, name))
}

/// The local check of a change beyond the disks: an export this node would serve
/// needs a portal it can listen on (`portals`: this node's iSCSI portal and NVMe/TCP
/// listener); a change that takes volumes away from hosts is refused while a host
/// session or NVMe-oF controller on this node uses one. `group`: the change's disk
/// group as it is now.
pub fn check_export(
    k: &KernelClient,
    name: &str,
    portals: (&str, &str),
    group: Option<&DiskGroupConfig>,
    change: &Change,
) -> Result<(), RequestError> {
    if let Some(g) = group {
        let (volumes, taken) = exports::volumes_taken_away(change, g);
        exports::check_no_sessions(k, name, &g.name, (&volumes, taken))?;
    }
    let Change::VolExport { export, .. } = change else {
        return Ok(());
    };
    if !exports::serves(export, name) {
        return Ok(());
    }
    let checked = match export.protocol {
        ExportProtocol::Iscsi => exports::check(k, exports::portal_of(export, portals.0)),
        ExportProtocol::Nvmf => exports::check_nvmf(k, portals.1),
    };
    checked.map_err(|e| RequestError::new(ErrorKind::Refused, name, format!("node {name}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_support::{cluster, with_mirror};
    use crate::model::{Export, LogPolicy, VolumeLayout};

    #[test]
    fn a_group_is_served_without_its_missing_and_failed_disks_but_not_without_a_held_one() {
        let c = with_mirror(
            &cluster(&[("d0", 1 << 30), ("d1", 1 << 30)]),
            "mir",
            64 << 20,
            LogPolicy::Off,
        );
        let c = c
            .apply(&Change::VolCreate {
                dg: "dg1".into(),
                volume: "cat".into(),
                size_bytes: 64 << 20,
                layout: VolumeLayout::Concat,
                log: LogPolicy::Off,
                disks: Vec::new(),
            })
            .unwrap();
        let g = &c.disk_groups[0];
        let cat_disk = g.volume("cat").unwrap().plexes[0].subdisks[0].disk.clone();
        let (gone, kept) = if cat_disk == "d1" {
            ("d1", "d0")
        } else {
            ("d0", "d1")
        };
        let id = |name: &str| g.disk(name).unwrap().id.clone();
        let nothing_held = |_: &str| false;
        let names =
            |g: &DiskGroupConfig| g.volumes.iter().map(|v| v.name.clone()).collect::<Vec<_>>();
        // Every disk found: the group as it is.
        let all = disks::LocalDisks::of_ids(&[&id("d0"), &id("d1")]);
        let (served, warning) = servable_here(g, &all, "a", &nothing_held);
        assert!(matches!(served, std::borrow::Cow::Borrowed(_)) && warning.is_none());
        // One missing: it and the volumes on it are left out, named in the warning.
        let one = disks::LocalDisks::of_ids(&[&id(kept)]);
        let (served, warning) = servable_here(g, &one, "a", &nothing_held);
        assert!(
            names(&served).is_empty(),
            "both volumes use {gone}: {:?}",
            names(&served)
        );
        let warning = warning.expect("a warning");
        assert!(
            warning.contains(&format!("disk(s) {gone} not found")) && warning.contains("mir, cat"),
            "{warning}"
        );
        // A shared disk the data plane already holds is kept (a path gone from
        // under a running member).
        let bdev = crate::model::disk_bdev("dg1", gone);
        let held = |b: &str| b == bdev;
        let (served, warning) = servable_here(g, &one, "a", &held);
        assert!(matches!(served, std::borrow::Cow::Borrowed(_)) && warning.is_none());
        // Recorded failed: the mirror is served from its other plex; the concat
        // volume, with no ACTIVE plex left, is not.
        let failed = c
            .apply(&Change::DgFailDisk {
                dg: "dg1".into(),
                disk: gone.into(),
                force: true,
            })
            .unwrap();
        let g = &failed.disk_groups[0];
        for local in [&one, &all] {
            let (served, warning) = servable_here(g, local, "a", &nothing_held);
            assert_eq!(names(&served), ["mir"]);
            let mir = served.volume("mir").unwrap();
            assert_eq!(mir.plexes.len(), 1);
            assert!(!mir.uses_disk(gone) && served.disk(gone).is_none());
            assert!(warning.is_some_and(|w| w.contains("volume(s) cat have no ACTIVE plex")));
        }
    }

    #[test]
    fn only_a_local_check_that_reads_disks_or_the_data_plane_is_a_driver_job() {
        let c = with_mirror(
            &cluster(&[("d1", 64 << 20), ("d2", 64 << 20)]),
            "v1",
            1 << 20,
            LogPolicy::default(),
        );
        let g = &c.disk_groups[0];
        let vol = |change: Change| local_check_reads(&change, Some(g), "a");
        let (dg, volume) = ("dg1".to_string(), "v1".to_string());
        assert!(!vol(Change::VolGrow {
            dg: dg.clone(),
            volume: volume.clone(),
            new_size_bytes: 2 << 20,
        }));
        // Volumes taken away from hosts: the data plane's sessions are looked at.
        assert!(vol(Change::VolRm {
            dg: dg.clone(),
            volume: volume.clone(),
        }));
        // New disks are read.
        assert!(vol(Change::DgAddDisk {
            dg: dg.clone(),
            disk: crate::model::test_support::disk("d3", 64 << 20),
        }));
        let export = |nodes: &[&str]| Change::VolExport {
            dg: dg.clone(),
            volume: volume.clone(),
            export: Export {
                protocol: ExportProtocol::Iscsi,
                iqn: "iqn.2026-12.io.plexd:t".into(),
                nodes: nodes.iter().map(|n| n.to_string()).collect(),
                portal: String::new(),
                hosts: Vec::new(),
            },
        };
        // An export this node serves needs its portal; one it does not, nothing.
        assert!(vol(export(&[])));
        assert!(!vol(export(&["b"])));
    }
}
