//! The bdev framework: the block device trait, the I/O descriptor and its
//! completion path. Every backend (`null`, `malloc`, `uring`, `error`) and every
//! layer of the volume stack lives in its own module behind [`Bdev`].
//!
//! Life of an I/O: the submitter (a frontend connection, plexperf, a volume layer)
//! gets the reactor-local channel of a bdev ([`crate::reactor::Reactor::channel`]),
//! builds a [`BdevIo`] whose [`IoCallback`] names itself and a tag, and calls
//! [`BdevChannel::submit`]. The bdev finishes the I/O on the same reactor with
//! [`IoCallback::defer`], which queues the completion as one of the reactor's
//! generic deferred calls ([`crate::reactor::Reactor::defer`]); the reactor loop
//! then calls [`IoDone::io_done`]. Completions never run inside `submit`, so a
//! layer may submit from its completion handler without re-entrancy.
//!
//! The reactor knows nothing of bdevs: this module keeps each reactor's channel
//! cache as a reactor-local ([`Reactor::channel`], [`Reactor::drop_channel`]).
//!
//! The submit path takes no lock and touches no shared atomic: channels are
//! reactor-local (`Rc`, `Cell`, `RefCell`).

pub use plexd_target_api::bdev::{BdevInfo, IoKind};
pub mod error;
pub mod events;
pub mod malloc;
pub mod null;
pub mod uring;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

pub use events::{BdevDesc, BdevEvent, BdevEventFn, MAX_BDEV_DESCS};

use crate::buf::IoBuf;
use crate::reactor::{Deferred, Reactor};

/// The errno of an I/O refused for lack of room in a bounded queue of the data
/// plane (a volume's parked or held I/O, a uring channel's FIFO, the reactor's
/// io_uring operations): the same I/O may succeed when retried. A refused held
/// write reached the plexes that did not fail; like any failed write, its range
/// holds old or new data until written again.
pub const RETRY_ERRNO: i32 = libc::EAGAIN;

/// How an I/O ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoStatus {
    /// Done.
    Success,
    /// Failed with this errno (EIO for medium errors, EINVAL for bad ranges...).
    Failed(i32),
}

impl IoStatus {
    /// True on success.
    pub fn is_ok(self) -> bool {
        self == IoStatus::Success
    }

    /// As a deferred call's result ([`Deferred::run_deferred`]): 0 on success, the
    /// negative errno on failure (EIO for a failure without a positive errno).
    #[inline]
    pub fn to_result(self) -> i32 {
        match self {
            IoStatus::Success => 0,
            IoStatus::Failed(e) if e > 0 => -e,
            IoStatus::Failed(_) => -libc::EIO,
        }
    }

    /// The status a deferred call's result stands for (see [`IoStatus::to_result`]).
    #[inline]
    pub fn from_result(res: i32) -> IoStatus {
        if res >= 0 {
            IoStatus::Success
        } else {
            IoStatus::Failed(res.checked_neg().unwrap_or(libc::EIO))
        }
    }

    /// The status of a syscall-style result: negative errno or a byte count.
    pub fn from_res(res: i32, expect_bytes: usize) -> IoStatus {
        if res < 0 {
            IoStatus::Failed(-res)
        } else if res as usize != expect_bytes {
            IoStatus::Failed(libc::EIO)
        } else {
            IoStatus::Success
        }
    }
}

/// Receives completions. Implemented by whoever submits I/O. Every receiver is a
/// reactor [`Deferred`] call too (a blanket impl), which is how a completion is
/// queued on the reactor ([`IoCallback::defer`]).
pub trait IoDone: Deferred {
    /// The I/O submitted with `tag` finished with `status`.
    fn io_done(&self, tag: u64, status: IoStatus);
}

impl<T: IoDone> Deferred for T {
    #[inline]
    fn run_deferred(&self, tag: u64, result: i32) {
        self.io_done(tag, IoStatus::from_result(result));
    }
}

/// Where a completion goes: a receiver and the tag it gave.
#[derive(Clone)]
pub struct IoCallback {
    /// The receiver.
    pub target: Rc<dyn IoDone>,
    /// The receiver's own identifier for the I/O.
    pub tag: u64,
}

impl IoCallback {
    /// A callback to `target` with `tag`.
    pub fn new(target: Rc<dyn IoDone>, tag: u64) -> Self {
        IoCallback { target, tag }
    }

    /// Completes the I/O with `status` from `reactor`'s loop, after the running
    /// callback returns (never inside the `submit` that is running).
    #[inline]
    pub fn defer(self, reactor: &Reactor, status: IoStatus) {
        reactor.defer(self.target, self.tag, status.to_result());
    }
}

/// A reactor's channels, by bdev name (a reactor-local of this module).
#[derive(Default)]
struct Channels(RefCell<HashMap<String, Rc<dyn BdevChannel>>>);

/// The bdev framework's per-reactor channel cache. It lives here, as a reactor-local
/// ([`Reactor::local`]), so that the reactor knows nothing of bdevs.
impl Reactor {
    /// The reactor-local channel of `bdev`, created on first use.
    pub fn channel(self: &Rc<Self>, bdev: &Arc<dyn Bdev>) -> Result<Rc<dyn BdevChannel>, String> {
        let chans = self.local::<Channels>();
        if let Some(ch) = chans.0.borrow().get(bdev.name()) {
            return Ok(Rc::clone(ch));
        }
        // Created without the map borrowed: a layer's channel takes its children's.
        let ch = Arc::clone(bdev).create_channel(self)?;
        chans
            .0
            .borrow_mut()
            .insert(bdev.name().to_string(), Rc::clone(&ch));
        Ok(ch)
    }

    /// Drops this reactor's channel of the bdev named `name` (bdev deletion).
    pub fn drop_channel(&self, name: &str) {
        let ch = self.local::<Channels>().0.borrow_mut().remove(name);
        // Dropped after the map's borrow ends (a channel's drop may use the reactor).
        drop(ch);
    }
}

/// One block I/O, by value. Offsets and lengths are in bytes and must be multiples
/// of the bdev's block size (checked by [`check_range`]).
#[derive(Clone)]
pub struct BdevIo {
    /// What to do.
    pub kind: IoKind,
    /// Start, in bytes from the bdev's start.
    pub offset_bytes: u64,
    /// Length in bytes (0 for flush and reset).
    pub len_bytes: u64,
    /// The data for reads and writes; empty otherwise.
    pub buf: IoBuf,
    /// Where the completion goes.
    pub cb: IoCallback,
}

/// A block device. Shared between reactors (`Send + Sync`); per-reactor state
/// lives in its channels.
pub trait Bdev: Send + Sync {
    /// Unique name within a target.
    fn name(&self) -> &str;
    /// Logical block size in bytes (512 or 4096).
    fn block_size(&self) -> u32;
    /// Capacity in bytes.
    fn size_bytes(&self) -> u64;
    /// Properties for listings.
    fn info(&self) -> BdevInfo;
    /// True when a completed write may still be lost on a power failure until a
    /// [`IoKind::Flush`] completes (a volatile write cache: the page cache of a
    /// buffered file, a disk's write-back cache). Frontends report it to hosts
    /// (the SCSI caching mode page's WCE bit) so that hosts send flushes. The
    /// default, for a backend that cannot tell, is the safe answer: true.
    fn volatile_write_cache(&self) -> bool {
        true
    }
    /// Creates this bdev's channel on `reactor` (called on that reactor's thread,
    /// once per reactor; the reactor caches it).
    fn create_channel(
        self: Arc<Self>,
        reactor: &Rc<Reactor>,
    ) -> Result<Rc<dyn BdevChannel>, String>;
}

/// A bdev's reactor-local submission context.
pub trait BdevChannel {
    /// Starts `io`. The completion is delivered later through the reactor, never
    /// from inside this call.
    fn submit(&self, io: BdevIo);

    /// True while this reactor must not serve the bdev at all (a shared volume
    /// fenced by the data-plane lease): frontends answer TEST UNIT READY with a
    /// path failure. Reactor-local and cheap; most bdevs are always available.
    fn unavailable(&self) -> bool {
        false
    }
}

/// Validates an I/O's range against a bdev: alignment, bounds and buffer length.
/// Returns the errno to fail it with.
pub fn check_range(io: &BdevIo, block_size: u32, size_bytes: u64) -> Result<(), i32> {
    let bs = block_size as u64;
    match io.kind {
        IoKind::Flush | IoKind::Reset => return Ok(()),
        _ => {}
    }
    // Block sizes are powers of two in practice (512, 4096): a mask, not a division.
    let aligned = |x: u64| {
        if bs.is_power_of_two() {
            x & (bs - 1) == 0
        } else {
            x.is_multiple_of(bs)
        }
    };
    if !aligned(io.offset_bytes) || !aligned(io.len_bytes) || io.len_bytes == 0 {
        return Err(libc::EINVAL);
    }
    match io.offset_bytes.checked_add(io.len_bytes) {
        Some(end) if end <= size_bytes => {}
        _ => return Err(libc::EINVAL),
    }
    if io.kind.has_data() && io.buf.len() as u64 != io.len_bytes {
        return Err(libc::EINVAL);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nop;
    impl IoDone for Nop {
        fn io_done(&self, _: u64, _: IoStatus) {}
    }

    fn io(kind: IoKind, off: u64, len: u64, buf_len: usize) -> BdevIo {
        let mut v = vec![0u8; buf_len.max(1)];
        BdevIo {
            kind,
            offset_bytes: off,
            len_bytes: len,
            // SAFETY: the vector outlives the check below, which only reads the length.
            buf: unsafe { IoBuf::from_raw(v.as_mut_ptr(), buf_len) },
            cb: IoCallback::new(Rc::new(Nop), 0),
        }
    }

    #[test]
    fn range_checks() {
        assert_eq!(
            check_range(&io(IoKind::Read, 0, 4096, 4096), 512, 8192),
            Ok(())
        );
        assert_eq!(
            check_range(&io(IoKind::Read, 4096, 4096, 4096), 512, 8192),
            Ok(())
        );
        assert_eq!(
            check_range(&io(IoKind::Read, 4608, 4096, 4096), 512, 8192),
            Err(libc::EINVAL)
        );
        assert_eq!(
            check_range(&io(IoKind::Read, 100, 512, 512), 512, 8192),
            Err(libc::EINVAL)
        );
        assert_eq!(
            check_range(&io(IoKind::Write, 0, 1024, 512), 512, 8192),
            Err(libc::EINVAL)
        );
        assert_eq!(
            check_range(&io(IoKind::Unmap, 0, 1024, 0), 512, 8192),
            Ok(())
        );
        assert_eq!(check_range(&io(IoKind::Flush, 0, 0, 0), 512, 8192), Ok(()));
        assert_eq!(
            check_range(&io(IoKind::Read, u64::MAX - 511, 512, 512), 512, u64::MAX),
            Err(libc::EINVAL)
        );
    }
}
