//! Synchronous bdev I/O from a control thread: submit requests on a reactor and
//! wait for their results with a deadline. The kernel interface's diagnostic
//! `read`/`write`, plexperf and tests drive I/O this way.
//!
//! ```no_run
//! # use plexd_target::diag::{run_ios, IoReq};
//! # use std::time::Duration;
//! # fn demo(t: &plexd_target::Target) {
//! let bdev = t.bdev("u0").unwrap();
//! let h = &t.reactors().handles()[0];
//! let out = run_ios(h, &bdev, vec![IoReq::write(0, vec![7u8; 4096])], Duration::from_secs(5)).unwrap();
//! assert!(out[0].status.is_ok());
//! # }
//! ```
//!
//! All requests of one call are submitted back to back on the reactor (they are in
//! flight together); results come back in request order.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bdev::{Bdev, BdevIo, IoCallback, IoDone, IoKind, IoStatus};
use crate::buf::{IoBuf, PoolBuf, BUF_ALIGN_BYTES};
use crate::reactor::{Reactor, ReactorHandle};

/// Where a request's data buffer comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufSource {
    /// The reactor's buffer pool (registered with io_uring).
    Pool,
    /// A separate aligned heap allocation (not registered).
    Heap,
}

/// One I/O to run.
#[derive(Clone, Debug)]
pub struct IoReq {
    /// What to do.
    pub kind: IoKind,
    /// Start in bytes.
    pub offset_bytes: u64,
    /// Length in bytes (the buffer is this long for reads and writes).
    pub len_bytes: u64,
    /// For writes: the bytes to write (`len_bytes` long).
    pub data: Vec<u8>,
    /// Where the buffer comes from.
    pub buf: BufSource,
}

impl IoReq {
    /// A read of `len_bytes` at `offset_bytes`.
    pub fn read(offset_bytes: u64, len_bytes: u64) -> IoReq {
        IoReq::other(IoKind::Read, offset_bytes, len_bytes)
    }

    /// A write of `data` at `offset_bytes`.
    pub fn write(offset_bytes: u64, data: Vec<u8>) -> IoReq {
        IoReq {
            kind: IoKind::Write,
            offset_bytes,
            len_bytes: data.len() as u64,
            data,
            buf: BufSource::Pool,
        }
    }

    /// Any kind without data to write (flush, unmap, write-zeroes, reset, read).
    pub fn other(kind: IoKind, offset_bytes: u64, len_bytes: u64) -> IoReq {
        IoReq {
            kind,
            offset_bytes,
            len_bytes,
            data: Vec::new(),
            buf: BufSource::Pool,
        }
    }

    /// The same request with its buffer outside the pool.
    pub fn heap(mut self) -> IoReq {
        self.buf = BufSource::Heap;
        self
    }
}

/// How one I/O ended.
#[derive(Clone, Debug)]
pub struct IoOutcome {
    /// Its status.
    pub status: IoStatus,
    /// For reads: the bytes read (whatever the buffer held if it failed).
    pub data: Vec<u8>,
    /// From submit to completion.
    pub latency: Duration,
}

/// Runs `reqs` against `bdev` on the reactor behind `handle`, all in flight at once,
/// and waits up to `timeout` for every completion. Results are in request order.
pub fn run_ios(
    handle: &ReactorHandle,
    bdev: &Arc<dyn Bdev>,
    reqs: Vec<IoReq>,
    timeout: Duration,
) -> Result<Vec<IoOutcome>, String> {
    start_ios(handle, bdev, reqs)?.wait(timeout)
}

/// Submits `reqs` like [`run_ios`] but returns once they are submitted, so the
/// caller can act (quiesce, inject, delete) while they are in flight.
pub fn start_ios(
    handle: &ReactorHandle,
    bdev: &Arc<dyn Bdev>,
    reqs: Vec<IoReq>,
) -> Result<PendingIos, String> {
    let (tx, rx) = mpsc::channel();
    let bdev = Arc::clone(bdev);
    let count = reqs.len();
    handle
        .call_blocking(move |r| Batch::start(r, &bdev, reqs, tx))
        .map_err(|e| format!("cannot reach reactor {}: {e}", handle.id()))??;
    Ok(PendingIos {
        rx,
        count,
        reactor: handle.id(),
    })
}

/// I/Os submitted by [`start_ios`], not yet waited for.
pub struct PendingIos {
    rx: mpsc::Receiver<Vec<IoOutcome>>,
    count: usize,
    reactor: usize,
}

impl PendingIos {
    /// Waits up to `timeout` for every completion; results are in request order.
    pub fn wait(self, timeout: Duration) -> Result<Vec<IoOutcome>, String> {
        self.rx.recv_timeout(timeout).map_err(|_| {
            format!(
                "{} I/O(s) on reactor {} did not all complete within {timeout:?}",
                self.count, self.reactor
            )
        })
    }
}

/// One request's buffer.
enum Buf {
    None,
    Pool(PoolBuf),
    Heap(HeapBuf),
}

impl Buf {
    fn io(&self) -> IoBuf {
        match self {
            Buf::None => IoBuf::empty(),
            Buf::Pool(p) => p.io(),
            Buf::Heap(h) => h.io(),
        }
    }
}

/// An aligned heap buffer outside the pool.
struct HeapBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
    len: usize,
}

impl HeapBuf {
    fn new(len: usize) -> Result<HeapBuf, String> {
        let layout = std::alloc::Layout::from_size_align(len.max(1), BUF_ALIGN_BYTES)
            .map_err(|e| format!("bad buffer size {len}: {e}"))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(format!("cannot allocate {len} bytes"));
        }
        Ok(HeapBuf { ptr, layout, len })
    }

    fn io(&self) -> IoBuf {
        // SAFETY: the allocation holds `len` bytes and lives until the batch (which
        // owns this buffer) has seen the I/O complete.
        unsafe { IoBuf::from_raw(self.ptr, self.len) }
    }
}

impl Drop for HeapBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout; dropped only after the I/O completed.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

struct Slot {
    kind: IoKind,
    buf: Buf,
    submitted: Instant,
    outcome: Option<IoOutcome>,
}

/// The requests of one `run_ios` call, living on the reactor until all complete.
struct Batch {
    reactor: Rc<Reactor>,
    slots: RefCell<Vec<Slot>>,
    left: Cell<usize>,
    tx: RefCell<Option<mpsc::Sender<Vec<IoOutcome>>>>,
}

impl Batch {
    fn start(
        r: &Rc<Reactor>,
        bdev: &Arc<dyn Bdev>,
        reqs: Vec<IoReq>,
        tx: mpsc::Sender<Vec<IoOutcome>>,
    ) -> Result<(), String> {
        let ch = r.channel(bdev)?;
        let mut slots = Vec::with_capacity(reqs.len());
        for req in &reqs {
            let len = usize::try_from(req.len_bytes).map_err(|_| "length too large")?;
            let mut buf = match (req.kind.has_data(), req.buf) {
                (false, _) => Buf::None,
                (true, BufSource::Pool) => Buf::Pool(
                    r.bufs()
                        .try_get(len)
                        .ok_or_else(|| format!("no pool buffer of {len} bytes"))?,
                ),
                (true, BufSource::Heap) => Buf::Heap(HeapBuf::new(len)?),
            };
            if req.kind == IoKind::Write {
                let io = buf.io();
                // SAFETY: the buffer is fresh, owned here, and no I/O uses it yet.
                let bytes = unsafe { io.as_mut_slice() };
                let n = bytes.len().min(req.data.len());
                bytes[..n].copy_from_slice(&req.data[..n]);
            } else if let Buf::Pool(p) = &mut buf {
                p.bytes_mut().fill(0);
            }
            slots.push(Slot {
                kind: req.kind,
                buf,
                submitted: Instant::now(),
                outcome: None,
            });
        }
        let batch = Rc::new(Batch {
            reactor: Rc::clone(r),
            left: Cell::new(slots.len()),
            slots: RefCell::new(slots),
            tx: RefCell::new(Some(tx)),
        });
        if reqs.is_empty() {
            batch.send();
            return Ok(());
        }
        for (i, req) in reqs.iter().enumerate() {
            let buf = {
                let mut slots = batch.slots.borrow_mut();
                slots[i].submitted = Instant::now();
                slots[i].buf.io()
            };
            ch.submit(BdevIo {
                kind: req.kind,
                offset_bytes: req.offset_bytes,
                len_bytes: req.len_bytes,
                buf,
                cb: IoCallback::new(Rc::clone(&batch) as Rc<dyn IoDone>, i as u64),
            });
        }
        Ok(())
    }

    fn send(&self) {
        let outs: Vec<IoOutcome> = self
            .slots
            .borrow_mut()
            .iter_mut()
            .map(|s| {
                s.outcome.take().unwrap_or(IoOutcome {
                    status: IoStatus::Failed(libc::EIO),
                    data: Vec::new(),
                    latency: Duration::ZERO,
                })
            })
            .collect();
        if let Some(tx) = self.tx.borrow_mut().take() {
            let _ = tx.send(outs);
        }
    }
}

impl IoDone for Batch {
    fn io_done(&self, tag: u64, status: IoStatus) {
        {
            let mut slots = self.slots.borrow_mut();
            let Some(slot) = slots.get_mut(tag as usize) else {
                log::error!("testutil: completion for unknown request {tag}");
                return;
            };
            if slot.outcome.is_some() {
                log::error!("testutil: request {tag} completed twice");
                return;
            }
            let data = if slot.kind == IoKind::Read {
                // SAFETY: the I/O on this buffer has completed.
                unsafe { slot.buf.io().as_slice() }.to_vec()
            } else {
                Vec::new()
            };
            slot.outcome = Some(IoOutcome {
                status,
                data,
                latency: slot.submitted.elapsed(),
            });
            if let Buf::Pool(p) = std::mem::replace(&mut slot.buf, Buf::None) {
                self.reactor.bufs().put(p);
            }
        }
        self.left.set(self.left.get().saturating_sub(1));
        if self.left.get() == 0 {
            self.send();
        }
    }
}
