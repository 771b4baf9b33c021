//! The I/O job engine behind `plexperf` (the bdevperf of this project) and the
//! load tests: on each chosen reactor, keep `qd` I/Os in flight against a bdev
//! for a while, record latencies, optionally verify data.
//!
//! Per reactor, a [`Job`] owns `qd` slots, each with its own pool buffer; slots are
//! reused, so the steady state allocates nothing. Stopping is a message to each
//! reactor; a reactor reports once its slots are idle.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::bdev::{Bdev, BdevChannel, BdevIo, IoCallback, IoDone, IoKind, IoStatus};
use crate::buf::PoolBuf;
use crate::reactor::{thread_cpu_ns, Reactor};
use crate::target::{Target, TargetError};

/// One I/O in this many has its latency recorded (the clock read is not free).
pub const LATENCY_SAMPLE_EVERY: u64 = 4;
/// Most I/Os in flight per reactor.
pub const MAX_QD: u32 = 4096;
/// Longest a reactor may take to stop its job before the run is declared stuck.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// What the job does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    RandRead,
    /// Random writes.
    RandWrite,
    /// Random mix; the number is the read percentage.
    RandRw(u8),
    /// Each slot writes a pattern then reads it back and compares.
    Verify,
}

impl Workload {
    /// Parses `read`, `write`, `randread`, `randwrite`, `randrw[:PCT]`, `verify`.
    pub fn parse(s: &str) -> Result<Workload, String> {
        Ok(match s {
            "read" => Workload::Read,
            "write" => Workload::Write,
            "randread" => Workload::RandRead,
            "randwrite" => Workload::RandWrite,
            "randrw" => Workload::RandRw(50),
            "verify" => Workload::Verify,
            _ => match s.strip_prefix("randrw:").map(|p| p.parse::<u8>()) {
                Some(Ok(p)) if p <= 100 => Workload::RandRw(p),
                _ => {
                    return Err(format!(
                        "unknown workload {s:?} (read, write, randread, randwrite, randrw[:PCT], verify)"
                    ))
                }
            },
        })
    }
}

/// A job description.
#[derive(Clone, Debug)]
pub struct JobConfig {
    /// Target bdev (or volume) name.
    pub bdev: String,
    /// Workload.
    pub workload: Workload,
    /// Bytes per I/O.
    pub block_bytes: u64,
    /// I/Os in flight per reactor.
    pub qd: u32,
    /// Reactors to run on (indexes); empty = all.
    pub reactors: Vec<usize>,
    /// Seed of the offsets and patterns.
    pub seed: u64,
}

/// What a job measured.
#[derive(Debug)]
pub struct JobResult {
    /// Completed I/Os.
    pub ios: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// I/Os that completed with an error.
    pub failed_ios: u64,
    /// Reads whose data did not match what was written (verify).
    pub verify_errors: u64,
    /// Latency histogram in nanoseconds, of one I/O in [`LATENCY_SAMPLE_EVERY`].
    pub latency_ns: Histogram<u64>,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// CPU use of each reactor during the run, in percent of one core.
    pub cpu_pct: Vec<f64>,
    /// First verify mismatch, for the report.
    pub first_mismatch: Option<String>,
}

impl JobResult {
    /// I/Os per second.
    pub fn iops(&self) -> f64 {
        self.ios as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// MiB per second.
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at quantile `q` in microseconds.
    pub fn lat_us(&self, q: f64) -> f64 {
        self.latency_ns.value_at_quantile(q) as f64 / 1000.0
    }
}

struct Slot {
    buf: Option<PoolBuf>,
    /// Raw TSC reading at submit (see [`Job::clock`]).
    start: Cell<u64>,
    offset: Cell<u64>,
    /// Verify: the write of this round is done, the read is next / in flight.
    reading: Cell<bool>,
    generation: Cell<u64>,
}

struct Part {
    ios: u64,
    bytes: u64,
    failed: u64,
    verify_errors: u64,
    hist: Histogram<u64>,
    first_mismatch: Option<String>,
    cpu_ns: u64,
}

impl Part {
    /// Nothing counted yet.
    fn empty() -> Part {
        Part {
            ios: 0,
            bytes: 0,
            failed: 0,
            verify_errors: 0,
            hist: Histogram::new(3).expect("histogram"),
            first_mismatch: None,
            cpu_ns: 0,
        }
    }
}

/// One reactor's share of a job.
struct Job {
    reactor: Rc<Reactor>,
    ch: Rc<dyn BdevChannel>,
    me: RefCell<std::rc::Weak<Job>>,
    cfg: JobConfig,
    blocks: u64,
    slot_count: u64,
    slot_base: u64,
    slots: Vec<Slot>,
    rng: Cell<u64>,
    seq: Cell<u64>,
    stopping: Cell<bool>,
    busy: Cell<u32>,
    part: RefCell<Part>,
    cpu_start: u64,
    /// A calibrated TSC clock: reading it costs a few ns where the system clock
    /// can cost tens (it is read twice per I/O).
    clock: quanta::Clock,
    /// I/Os submitted, for latency sampling.
    submitted: Cell<u64>,
    done_tx: RefCell<Option<mpsc::Sender<Part>>>,
}

/// The next number of a xorshift64* sequence (cheap, deterministic for a seed).
pub fn xorshift(state: &mut u64) -> u64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// The block a verify slot uses next: slots own disjoint blocks (block %
/// `slot_count` == the slot's `global` index), `rand` picks the row.
pub fn verify_offset(blocks: u64, slot_count: u64, global: u64, rand: u64) -> u64 {
    let rows = (blocks - global).div_ceil(slot_count).max(1);
    (rand % rows) * slot_count + global
}

/// Fills `buf` with the verify pattern of (`seed`, `offset`, `generation`).
pub fn fill_pattern(buf: &mut [u8], seed: u64, offset: u64, generation: u64) {
    let key = seed ^ generation.wrapping_mul(0xA076_1D64_78BD_642F);
    for (i, w) in buf.chunks_exact_mut(8).enumerate() {
        let v = ((offset + 8 * i as u64) ^ key).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        w.copy_from_slice(&v.to_le_bytes());
    }
}

impl Job {
    fn next_rand(&self) -> u64 {
        // xorshift64*: cheap, per reactor, deterministic for a seed.
        let mut x = self.rng.get();
        let r = xorshift(&mut x);
        self.rng.set(x);
        r
    }

    fn pick_offset(&self, slot: usize) -> u64 {
        let bs = self.cfg.block_bytes;
        match self.cfg.workload {
            Workload::Read | Workload::Write => {
                let s = self.seq.get();
                self.seq.set((s + 1) % self.blocks);
                s * bs
            }
            Workload::Verify => {
                // Slots own disjoint blocks: block % slot_count == this slot's index.
                let global = self.slot_base + slot as u64;
                verify_offset(self.blocks, self.slot_count, global, self.next_rand()) * bs
            }
            _ => (self.next_rand() % self.blocks) * bs,
        }
    }

    fn kind_for(&self) -> IoKind {
        match self.cfg.workload {
            Workload::Read | Workload::RandRead => IoKind::Read,
            Workload::Write | Workload::RandWrite | Workload::Verify => IoKind::Write,
            Workload::RandRw(pct) => {
                if self.next_rand() % 100 < pct as u64 {
                    IoKind::Read
                } else {
                    IoKind::Write
                }
            }
        }
    }

    fn submit_slot(&self, i: usize, kind: IoKind) {
        let s = &self.slots[i];
        let buf = s.buf.as_ref().expect("slot buffer").io();
        // Sample the latency of one I/O in LATENCY_SAMPLE_EVERY (0 = not sampled).
        let n = self.submitted.get().wrapping_add(1);
        self.submitted.set(n);
        s.start.set(if n.is_multiple_of(LATENCY_SAMPLE_EVERY) {
            self.clock.raw().max(1)
        } else {
            0
        });
        let me: Rc<dyn IoDone> = self
            .me
            .borrow()
            .upgrade()
            .expect("job alive while I/O runs");
        self.ch.submit(BdevIo {
            kind,
            offset_bytes: s.offset.get(),
            len_bytes: self.cfg.block_bytes,
            buf,
            cb: IoCallback::new(me, i as u64),
        });
    }

    fn start_slot(&self, i: usize) {
        let off = self.pick_offset(i);
        let s = &self.slots[i];
        s.offset.set(off);
        let kind = self.kind_for();
        if self.cfg.workload == Workload::Verify {
            let g = s.generation.get() + 1;
            s.generation.set(g);
            s.reading.set(false);
            // SAFETY: the slot's buffer has no I/O in flight (its last one completed).
            let bytes = unsafe { s.buf.as_ref().expect("slot buffer").io().as_mut_slice() };
            fill_pattern(bytes, self.cfg.seed, off, g * 1_000_003 + i as u64);
        }
        // One I/O per slot at a time: never more in flight than slots.
        debug_assert!(
            (self.busy.get() as usize) < self.slots.len(),
            "a slot started twice"
        );
        self.busy.set(self.busy.get() + 1);
        self.submit_slot(i, kind);
    }

    fn finish_if_stopped(&self) {
        if self.stopping.get() && self.busy.get() == 0 {
            if let Some(tx) = self.done_tx.borrow_mut().take() {
                let mut part = self.part.replace(Part::empty());
                part.cpu_ns = thread_cpu_ns().saturating_sub(self.cpu_start);
                let _ = tx.send(part);
            }
        }
    }
}

impl IoDone for Job {
    fn io_done(&self, tag: u64, status: IoStatus) {
        let i = tag as usize;
        let s = &self.slots[i];
        let started = s.start.get();
        debug_assert!(self.busy.get() > 0, "a completion with nothing in flight");
        self.busy.set(self.busy.get() - 1);
        {
            let mut p = self.part.borrow_mut();
            p.ios += 1;
            p.bytes += self.cfg.block_bytes;
            if started != 0 {
                let lat = self.clock.delta_as_nanos(started, self.clock.raw());
                let _ = p.hist.record(lat.max(1));
            }
            if !status.is_ok() {
                p.failed += 1;
                if p.failed <= 3 {
                    log::error!(
                        "{}: I/O at {} failed: {status:?} (reactor {})",
                        self.cfg.bdev,
                        s.offset.get(),
                        self.reactor.id()
                    );
                }
            }
        }
        if self.cfg.workload == Workload::Verify && status.is_ok() {
            if !s.reading.get() {
                // Write done: read it back into the same buffer after scrubbing it.
                s.reading.set(true);
                // SAFETY: no I/O is in flight on this slot's buffer.
                let bytes = unsafe { s.buf.as_ref().expect("slot buffer").io().as_mut_slice() };
                bytes.fill(0xEE);
                self.busy.set(self.busy.get() + 1);
                self.submit_slot(i, IoKind::Read);
                return;
            }
            let mut expect = vec![0u8; self.cfg.block_bytes as usize];
            fill_pattern(
                &mut expect,
                self.cfg.seed,
                s.offset.get(),
                s.generation.get() * 1_000_003 + i as u64,
            );
            // SAFETY: the read completed; nothing writes the buffer now.
            let got = unsafe { s.buf.as_ref().expect("slot buffer").io().as_slice() };
            if got != expect.as_slice() {
                let mut p = self.part.borrow_mut();
                p.verify_errors += 1;
                if p.first_mismatch.is_none() {
                    let at = got
                        .iter()
                        .zip(&expect)
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    p.first_mismatch = Some(format!(
                        "{}: data mismatch at offset {} (+{at}) on reactor {}",
                        self.cfg.bdev,
                        s.offset.get(),
                        self.reactor.id()
                    ));
                }
            }
        }
        if self.stopping.get() {
            self.finish_if_stopped();
        } else {
            self.start_slot(i);
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        for s in &mut self.slots {
            if let Some(b) = s.buf.take() {
                self.reactor.bufs().put(b);
            }
        }
    }
}

/// Per-reactor jobs of one run, kept alive until they report.
#[derive(Default)]
struct RunningJobs {
    jobs: RefCell<Vec<Rc<Job>>>,
}

/// A job running in the background. Call [`RunningJob::stop`] to end it.
pub struct RunningJob {
    target: Arc<Target>,
    reactors: Vec<usize>,
    started: Instant,
    rx: mpsc::Receiver<Part>,
}

/// Starts a job on its reactors.
pub fn start_job(target: &Arc<Target>, cfg: &JobConfig) -> Result<RunningJob, TargetError> {
    let bdev = target.bdev(&cfg.bdev)?;
    let obj = format!("job on {}", cfg.bdev);
    let reactors = check_job(target, cfg, bdev.as_ref(), &obj)?;
    let blocks = bdev.size_bytes() / cfg.block_bytes;
    let (tx, rx) = mpsc::channel();
    let clock = quanta::Clock::new();
    for (k, &r) in reactors.iter().enumerate() {
        let place = JobPlace {
            bdev: Arc::clone(&bdev),
            blocks,
            index: k as u64,
            reactors: reactors.len() as u64,
        };
        let (cfg, tx, clock) = (cfg.clone(), tx.clone(), clock.clone());
        let res = target.reactors().handles()[r]
            .call_blocking(move |reactor| Job::start(reactor, cfg, place, clock, tx))
            .map_err(|e| TargetError::invalid(obj.clone(), e.to_string()))?;
        res.map_err(|e| TargetError::invalid(obj.clone(), e))?;
    }
    Ok(RunningJob {
        target: Arc::clone(target),
        reactors,
        started: Instant::now(),
        rx,
    })
}

/// Checks a job's block size, queue depth, reactors and (for verify) the bdev's
/// size; returns the reactors it runs on.
fn check_job(
    target: &Target,
    cfg: &JobConfig,
    bdev: &dyn Bdev,
    obj: &str,
) -> Result<Vec<usize>, TargetError> {
    let bs = cfg.block_bytes;
    if bs == 0 || !bs.is_multiple_of(bdev.block_size() as u64) || bs > (1 << 20) {
        return Err(TargetError::invalid(
            obj,
            format!(
                "block size {bs} must be a multiple of {} up to 1 MiB",
                bdev.block_size()
            ),
        ));
    }
    if cfg.qd == 0 || cfg.qd > MAX_QD {
        return Err(TargetError::invalid(
            obj,
            format!("queue depth must be 1..{MAX_QD}"),
        ));
    }
    let reactors: Vec<usize> = if cfg.reactors.is_empty() {
        (0..target.reactors().len()).collect()
    } else {
        cfg.reactors.clone()
    };
    if let Some(bad) = reactors.iter().find(|&&r| r >= target.reactors().len()) {
        return Err(TargetError::invalid(obj, format!("no reactor {bad}")));
    }
    let slot_count = reactors.len() as u64 * cfg.qd as u64;
    if cfg.workload == Workload::Verify && bdev.size_bytes() / bs < slot_count {
        return Err(TargetError::invalid(
            obj,
            format!("verify needs at least {slot_count} blocks of {bs} bytes (qd x reactors)"),
        ));
    }
    Ok(reactors)
}

/// Where one reactor's part of a job runs: the bdev, its size in blocks, this
/// part's index among the job's `reactors` parts.
struct JobPlace {
    bdev: Arc<dyn Bdev>,
    blocks: u64,
    index: u64,
    reactors: u64,
}

impl Job {
    /// Starts this reactor's part of a job: `cfg.qd` slots, each with a pool
    /// buffer, all submitting at once.
    fn start(
        reactor: &Rc<Reactor>,
        cfg: JobConfig,
        place: JobPlace,
        clock: quanta::Clock,
        tx: mpsc::Sender<Part>,
    ) -> Result<(), String> {
        let ch = reactor.channel(&place.bdev)?;
        let slots = Job::alloc_slots(reactor, cfg.qd, cfg.block_bytes)?;
        let JobPlace {
            blocks,
            index: k,
            reactors: nr,
            ..
        } = place;
        let seed = cfg.seed ^ ((k + 1) << 40) | 1;
        let job = Rc::new(Job {
            reactor: Rc::clone(reactor),
            ch,
            me: RefCell::new(std::rc::Weak::new()),
            blocks,
            slot_count: nr * cfg.qd as u64,
            slot_base: k * cfg.qd as u64,
            slots,
            rng: Cell::new(seed),
            seq: Cell::new((blocks / nr) * k % blocks.max(1)),
            stopping: Cell::new(false),
            busy: Cell::new(0),
            part: RefCell::new(Part::empty()),
            cpu_start: thread_cpu_ns(),
            clock,
            submitted: Cell::new(0),
            done_tx: RefCell::new(Some(tx)),
            cfg,
        });
        *job.me.borrow_mut() = Rc::downgrade(&job);
        for i in 0..job.slots.len() {
            job.start_slot(i);
        }
        reactor.local::<RunningJobs>().jobs.borrow_mut().push(job);
        Ok(())
    }

    /// `qd` idle slots with a pool buffer of `bs` bytes each, or none (every
    /// buffer returned) if the pool cannot give them all.
    fn alloc_slots(reactor: &Reactor, qd: u32, bs: u64) -> Result<Vec<Slot>, String> {
        let mut slots = Vec::with_capacity(qd as usize);
        for _ in 0..qd {
            let Some(buf) = reactor.bufs().try_get(bs as usize) else {
                for s in slots.drain(..) {
                    let s: Slot = s;
                    if let Some(b) = s.buf {
                        reactor.bufs().put(b);
                    }
                }
                return Err(format!("not enough I/O buffers for qd {qd}"));
            };
            slots.push(Slot {
                buf: Some(buf),
                start: Cell::new(0),
                offset: Cell::new(0),
                reading: Cell::new(false),
                generation: Cell::new(0),
            });
        }
        Ok(slots)
    }
}

impl RunningJob {
    /// Stops the job, waits for in-flight I/O and merges the reactors' results.
    pub fn stop(self) -> Result<JobResult, TargetError> {
        let elapsed = self.started.elapsed();
        for &r in &self.reactors {
            self.target.reactors().handles()[r]
                .call_blocking(|reactor| {
                    let jobs = reactor.local::<RunningJobs>();
                    for j in jobs.jobs.borrow().iter() {
                        j.stopping.set(true);
                        j.finish_if_stopped();
                    }
                })
                .map_err(|e| TargetError::invalid("job", e.to_string()))?;
        }
        let mut res = JobResult {
            ios: 0,
            bytes: 0,
            failed_ios: 0,
            verify_errors: 0,
            latency_ns: Histogram::new(3).expect("histogram"),
            elapsed,
            cpu_pct: Vec::new(),
            first_mismatch: None,
        };
        let deadline = Instant::now() + STOP_TIMEOUT;
        for _ in &self.reactors {
            let part = self
                .rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .map_err(|_| TargetError::Timeout {
                    object: "job".into(),
                    reason: format!("I/O still in flight after {STOP_TIMEOUT:?}"),
                })?;
            res.ios += part.ios;
            res.bytes += part.bytes;
            res.failed_ios += part.failed;
            res.verify_errors += part.verify_errors;
            let _ = res.latency_ns.add(&part.hist);
            res.cpu_pct
                .push(part.cpu_ns as f64 / elapsed.as_nanos().max(1) as f64 * 100.0);
            if res.first_mismatch.is_none() {
                res.first_mismatch = part.first_mismatch;
            }
        }
        for &r in &self.reactors {
            let _ = self.target.reactors().handles()[r].call_blocking(|reactor| {
                reactor.local::<RunningJobs>().jobs.borrow_mut().clear();
            });
        }
        Ok(res)
    }
}

/// Runs a job for `duration`, calling `during` repeatedly meanwhile (for example to
/// reconfigure the volume under load) until the time is up.
pub fn run_job(
    target: &Arc<Target>,
    cfg: &JobConfig,
    duration: Duration,
    mut during: impl FnMut(Instant) -> bool,
) -> Result<JobResult, TargetError> {
    let job = start_job(target, cfg)?;
    let end = Instant::now() + duration;
    while Instant::now() < end {
        if !during(end) {
            std::thread::sleep(
                end.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(20)),
            );
        }
    }
    job.stop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_parse() {
        assert_eq!(Workload::parse("randrw:70"), Ok(Workload::RandRw(70)));
        assert_eq!(Workload::parse("verify"), Ok(Workload::Verify));
        assert!(Workload::parse("randrw:170").is_err());
        assert!(Workload::parse("trim").is_err());
    }

    #[test]
    fn patterns_depend_on_offset_and_generation() {
        let mut a = [0u8; 64];
        let mut b = [0u8; 64];
        fill_pattern(&mut a, 1, 4096, 1);
        fill_pattern(&mut b, 1, 4096, 2);
        assert_ne!(a, b);
        fill_pattern(&mut b, 1, 8192, 1);
        assert_ne!(a, b);
        fill_pattern(&mut b, 1, 4096, 1);
        assert_eq!(a, b);
    }
}
