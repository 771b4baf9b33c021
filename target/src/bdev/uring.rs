//! The `uring` bdev: a file or a block device driven through each reactor's own
//! io_uring.
//!
//! - Opened with `O_DIRECT`; when the file system refuses it at open (EINVAL) the
//!   bdev falls back to buffered I/O with a warning, and `info().detail` says so.
//! - A file on a memory file system (tmpfs, ramfs) is read and written inline on
//!   the reactor with `pread`/`pwrite`, buffered: the kernel cannot do those
//!   asynchronously (shmem refuses `RWF_NOWAIT`, so io_uring hands each one to a
//!   worker thread), and they are memory copies. Only a tmpfs page swapped out can
//!   make one wait. O_DIRECT is not used there even when the kernel accepts it
//!   (6.6 and later do on tmpfs): it is emulated, the same page-cache copy, but
//!   io_uring still hands it to a worker thread; the bdev clears the flag
//!   ([`io_path`]). fio's equivalent of this path is `--ioengine=psync --direct=0`.
//! - A regular file gets `O_NOATIME` when the kernel allows it (owner or
//!   CAP_FOWNER): reads do not update its access time.
//! - Block size: the device's logical block size (`BLKSSZGET`) for block devices;
//!   for files 512 bytes by default, raised to the file system's O_DIRECT offset
//!   alignment (`statx` `STATX_DIOALIGN`) when that is larger, or as configured.
//! - Size: `BLKGETSIZE64` (or the end offset) for block devices, the length for
//!   files; it must be a positive multiple of the block size.
//! - Channel: one per reactor, submitting to the reactor's ring with
//!   [`Reactor::uring_push`]. Reads and writes use `ReadFixed`/`WriteFixed` when the
//!   buffer lies in the registered pool region, plain `Read`/`Write` otherwise.
//!   Flush is `fdatasync` (`IORING_OP_FSYNC` with `DATASYNC`), unmap is `fallocate(PUNCH_HOLE | KEEP_SIZE)` (success
//!   when the file system cannot punch: unmap is advisory), write-zeroes is
//!   `fallocate(ZERO_RANGE | KEEP_SIZE)` with a fallback to writing from a zero
//!   buffer when the file system answers EOPNOTSUPP. Reset aborts nothing (the
//!   kernel owns submitted I/O): it completes once every I/O that reached the
//!   channel before it has completed.
//! - Each channel registers its file in the reactor's registered-file table
//!   ([`Reactor::register_file`]) and reads/writes name it by slot; control ops
//!   (fsync, fallocate) and a full table fall back to the plain fd. Buffers are
//!   registered too (the pool region).
//! - Short reads and writes resubmit the remainder; EAGAIN/EINTR resubmit (bounded);
//!   a read that makes no progress (end of file) fails with EIO. A completion result
//!   never panics.
//! - Write cache ([`Bdev::volatile_write_cache`], the WCE hosts see): a buffered
//!   file or device (configured, or the fallback when O_DIRECT is refused) completes
//!   writes from the page cache, so it is volatile. An O_DIRECT regular file is
//!   reported volatile too: the data bypasses the page cache, but an allocating
//!   write (a sparse file, unwritten extents) leaves file system metadata that only
//!   `fdatasync` commits, and the disk beneath may cache the data itself. An
//!   O_DIRECT block device reports what the kernel says of the device
//!   (`/sys/dev/block/M:m/queue/write_cache`, the whole disk's for a partition;
//!   volatile when unreadable). A file on a memory file system is not volatile:
//!   memory is its medium, there is nothing to flush to.
//! - Completed flushes are counted ([`UringBdev::flushes`]): one relaxed atomic
//!   add per flush, at its completion (an `fdatasync` costs far more), so hosts'
//!   and tests' claims that flushes reach the file can be checked.
//! - In-flight state lives in a slab preallocated per channel
//!   ([`CHANNEL_SLOTS`] entries); I/O beyond it waits in a preallocated FIFO, so the
//!   steady state allocates nothing per I/O. The FIFO holds at most
//!   [`MAX_WAITING_IOS`]; I/O beyond that fails with [`RETRY_ERRNO`] (counted,
//!   [`UringBdev::refused`]).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use io_uring::{opcode, squeue, types};

use super::{
    check_range, Bdev, BdevChannel, BdevInfo, BdevIo, IoCallback, IoKind, IoStatus, RETRY_ERRNO,
};
use crate::reactor::{Reactor, UringDone};

/// Block size of a file when none is configured (raised to the O_DIRECT alignment
/// of the file system when that is larger).
pub const DEFAULT_FILE_BLOCK_SIZE_BYTES: u32 = 512;
/// Largest configurable block size.
pub const MAX_BLOCK_SIZE_BYTES: u32 = 64 << 10;
/// In-flight operations per channel before further I/O waits in the channel's FIFO.
pub const CHANNEL_SLOTS: usize = 1024;
/// I/O waiting in one channel's FIFO for a free slot; more fails with
/// [`RETRY_ERRNO`].
pub const MAX_WAITING_IOS: usize = 4 * CHANNEL_SLOTS;
/// Largest length of one read or write SQE; longer I/O is issued in pieces.
const MAX_OP_BYTES: u64 = 1 << 30;
/// How many times one operation is resubmitted after EAGAIN/EINTR before it fails.
const MAX_RETRIES: u32 = 128;
/// Size of the per-channel zero buffer used when write-zeroes falls back to writes.
const ZERO_BUF_BYTES: usize = 128 << 10;
/// Alignment of the zero buffer (enough for O_DIRECT on 4 KiB-sector devices).
const ZERO_BUF_ALIGN_BYTES: usize = 4096;

/// How to open a `uring` bdev.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UringOpts {
    /// Logical block size in bytes. `None`: the device's for block devices;
    /// [`DEFAULT_FILE_BLOCK_SIZE_BYTES`] (or the file system's O_DIRECT alignment,
    /// when larger) for files.
    pub block_size_bytes: Option<u32>,
    /// Open without O_DIRECT (through the page cache).
    pub buffered: bool,
}

/// A file or block device served through io_uring.
pub struct UringBdev {
    name: String,
    path: PathBuf,
    file: File,
    block_size: u32,
    size_bytes: u64,
    direct: bool,
    block_device: bool,
    /// Why the bdev is buffered, when O_DIRECT was asked for and refused.
    fallback_reason: Option<String>,
    /// The file lives in memory (tmpfs, ramfs), opened buffered: reads and writes
    /// are memory copies the kernel cannot do asynchronously (io_uring hands each
    /// one to a worker thread), so the channel does them inline with pread/pwrite.
    inline: bool,
    /// A completed write may be lost on power failure until a flush (module doc).
    volatile_cache: bool,
    /// Flushes (`fdatasync`) completed successfully.
    flushes: AtomicU64,
    /// I/O failed with [`RETRY_ERRNO`] because [`MAX_WAITING_IOS`] were waiting.
    refused: AtomicU64,
}

/// `statfs` magic numbers of memory file systems (linux/magic.h).
const TMPFS_MAGIC: i64 = 0x0102_1994;
const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// How a bdev's reads and writes reach its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IoPath {
    /// O_DIRECT through the reactor's io_uring.
    Direct,
    /// Through the page cache, by the reactor's io_uring.
    Buffered,
    /// Through the page cache with `pread`/`pwrite` on the reactor (memory file
    /// systems only), the O_DIRECT flag cleared if the open kept it.
    Inline,
}

/// Chooses the I/O path of a bdev: whether its file is a block device, lives on a
/// memory file system, and was opened with O_DIRECT. On a memory file system
/// O_DIRECT is emulated (the same page-cache copy) and io_uring cannot do it
/// without a worker thread, so the file is read and written inline, buffered.
fn io_path(block_device: bool, memory_fs: bool, opened_direct: bool) -> IoPath {
    match (block_device, memory_fs, opened_direct) {
        (false, true, _) => IoPath::Inline,
        (_, _, true) => IoPath::Direct,
        _ => IoPath::Buffered,
    }
}

/// Clears O_DIRECT on an open file (for [`IoPath::Inline`]).
fn clear_o_direct(file: &File) -> std::io::Result<()> {
    change_status_flags(file, |f| f & !libc::O_DIRECT)
}

/// Sets O_NOATIME on an open regular file: a read does not update the file's
/// access time (on tmpfs that was about 9% of an inline 4 KiB read's CPU). The
/// kernel allows it to the file's owner or with CAP_FOWNER only (EPERM otherwise).
fn set_noatime(file: &File) -> std::io::Result<()> {
    change_status_flags(file, |f| f | libc::O_NOATIME)
}

/// Replaces an open file's status flags (F_GETFL/F_SETFL) with `f(flags)`.
fn change_status_flags(file: &File, f: impl Fn(i32) -> i32) -> std::io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on an fd we own; they touch no memory.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, f(flags)) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `file` is on a memory file system.
fn on_memory_fs(file: &File) -> bool {
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: fstatfs writes a statfs into the buffer we own for a valid fd; it is
    // read only when the call succeeded.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    // SAFETY: fstatfs returned 0, so the struct is initialised.
    // f_type's width differs between architectures (i64 here, u32/i32 elsewhere).
    #[allow(clippy::unnecessary_cast)]
    let magic = unsafe { st.assume_init() }.f_type as i64;
    magic == TMPFS_MAGIC || magic == RAMFS_MAGIC
}

impl UringBdev {
    /// Opens `path` (a regular file or a block device) read-write.
    ///
    /// Errors name the bdev and the path and say what to change.
    pub fn open(name: &str, path: &Path, opts: &UringOpts) -> Result<Arc<UringBdev>, String> {
        let who = format!("uring bdev {name} ({})", path.display());
        let (file, opened_direct, fallback_reason) = open_file(&who, path, opts.buffered)?;
        let meta = file
            .metadata()
            .map_err(|e| format!("{who}: cannot stat: {e}"))?;
        let ft = meta.file_type();
        let block_device = ft.is_block_device();
        let memory_fs = !block_device && on_memory_fs(&file);
        let mut path_kind = io_path(block_device, memory_fs, opened_direct);
        if path_kind == IoPath::Inline && opened_direct {
            if let Err(e) = clear_o_direct(&file) {
                log::warn!("{who}: cannot clear O_DIRECT on a memory file system ({e}); reads and writes go through io_uring worker threads");
                path_kind = IoPath::Direct;
            }
        }
        if ft.is_file() {
            if let Err(e) = set_noatime(&file) {
                log::debug!("{who}: reads update the access time (O_NOATIME refused: {e})");
            }
        }
        let direct = path_kind == IoPath::Direct;
        let inline = path_kind == IoPath::Inline;
        let (block_size, size_bytes) = if block_device {
            let dev_bs = blk_logical_block_size(&file)
                .map_err(|e| format!("{who}: BLKSSZGET failed: {e}"))?;
            let size =
                blk_size_bytes(&file).map_err(|e| format!("{who}: cannot get device size: {e}"))?;
            let bs = match opts.block_size_bytes {
                None => dev_bs,
                Some(bs) => {
                    check_block_size(&who, bs)?;
                    if bs < dev_bs {
                        return Err(format!(
                            "{who}: block size {bs} is smaller than the device's logical block size {dev_bs}; use {dev_bs} or larger"
                        ));
                    }
                    bs
                }
            };
            (bs, size)
        } else if ft.is_file() {
            let dio_align = if direct { dio_offset_align(&file) } else { 0 };
            let bs = match opts.block_size_bytes {
                None => DEFAULT_FILE_BLOCK_SIZE_BYTES.max(dio_align),
                Some(bs) => {
                    check_block_size(&who, bs)?;
                    if bs < dio_align {
                        return Err(format!(
                            "{who}: block size {bs} is smaller than the file system's O_DIRECT alignment {dio_align}; use {dio_align} or open buffered"
                        ));
                    }
                    bs
                }
            };
            check_block_size(&who, bs)?;
            (bs, meta.len())
        } else {
            return Err(format!("{who}: not a regular file or a block device"));
        };
        if size_bytes == 0 || size_bytes % block_size as u64 != 0 {
            return Err(format!(
                "{who}: size {size_bytes} bytes is not a positive multiple of the block size {block_size}; resize it (e.g. truncate -s) or pick another block size"
            ));
        }
        let volatile_cache = if memory_fs {
            false
        } else if direct && block_device {
            use std::os::unix::fs::MetadataExt;
            let (major, minor) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
            match device_write_cache(major, minor) {
                Some(v) => v,
                None => {
                    log::info!(
                        "{who}: cannot read the write cache mode of device {major}:{minor} from sysfs; assuming a volatile cache"
                    );
                    true
                }
            }
        } else {
            true
        };
        Ok(Arc::new(UringBdev {
            name: name.to_string(),
            path: path.to_path_buf(),
            file,
            block_size,
            size_bytes,
            direct,
            block_device,
            fallback_reason,
            inline,
            volatile_cache,
            flushes: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }))
    }

    /// Flushes (`fdatasync`) that completed successfully since the bdev was opened.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// I/O refused with [`RETRY_ERRNO`] because a channel's FIFO was full
    /// ([`MAX_WAITING_IOS`]), since the bdev was opened.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// True when the bdev does O_DIRECT I/O.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn check_block_size(who: &str, bs: u32) -> Result<(), String> {
    if !bs.is_power_of_two() || !(512..=MAX_BLOCK_SIZE_BYTES).contains(&bs) {
        return Err(format!(
            "{who}: block size {bs} must be a power of two from 512 to {MAX_BLOCK_SIZE_BYTES}"
        ));
    }
    Ok(())
}

/// Opens read-write, with O_DIRECT unless `buffered`; falls back to buffered when
/// the file system refuses O_DIRECT (EINVAL at open).
fn open_file(
    who: &str,
    path: &Path,
    buffered: bool,
) -> Result<(File, bool, Option<String>), String> {
    let open = |flags: i32| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(flags | libc::O_CLOEXEC)
            .open(path)
    };
    if buffered {
        let f = open(0).map_err(|e| format!("{who}: cannot open: {e}"))?;
        return Ok((f, false, None));
    }
    match open(libc::O_DIRECT) {
        Ok(f) => Ok((f, true, None)),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            log::warn!("{who}: the file system refuses O_DIRECT ({e}); using buffered I/O");
            let f = open(0).map_err(|e| format!("{who}: cannot open: {e}"))?;
            Ok((f, false, Some(e.to_string())))
        }
        Err(e) => Err(format!("{who}: cannot open: {e}")),
    }
}

/// Whether block device `major:minor` has a volatile (write-back) cache, as the
/// kernel reports it in sysfs; a partition answers for its whole disk. None when
/// sysfs does not say.
fn device_write_cache(major: u32, minor: u32) -> Option<bool> {
    let dev = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    [
        dev.join("queue/write_cache"),
        dev.join("../queue/write_cache"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok())
    .and_then(|s| parse_write_cache(&s))
}

/// Parses sysfs `queue/write_cache`: `write back` (volatile) or `write through`.
fn parse_write_cache(s: &str) -> Option<bool> {
    match s.trim() {
        "write back" => Some(true),
        "write through" => Some(false),
        _ => None,
    }
}

fn blk_logical_block_size(file: &File) -> std::io::Result<u32> {
    let mut bs: libc::c_int = 0;
    // SAFETY: BLKSSZGET writes one int into `bs`, which lives across the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut bs) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    u32::try_from(bs).map_err(|_| std::io::Error::other(format!("bad block size {bs}")))
}

/// `_IOR(0x12, 114, size_t)` with the generic ioctl encoding of 64-bit targets.
#[cfg(all(
    target_pointer_width = "64",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
))]
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

fn blk_size_bytes(file: &File) -> std::io::Result<u64> {
    #[cfg(all(
        target_pointer_width = "64",
        any(
            target_arch = "x86_64",
            target_arch = "aarch64",
            target_arch = "riscv64"
        )
    ))]
    {
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 into `size`, which lives across the call.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) };
        if rc == 0 {
            return Ok(size);
        }
    }
    // Elsewhere (or if the ioctl failed) the end offset of a block device is its size.
    // SAFETY: lseek on an fd we own; it touches no memory.
    let end = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
    if end < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(end as u64)
}

/// The O_DIRECT file-offset alignment the file system reports, or 0 when unknown.
fn dio_offset_align(file: &File) -> u32 {
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the empty C string and `stx` outlive the call; AT_EMPTY_PATH makes
    // statx describe the fd itself.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc != 0 || stx.stx_mask & libc::STATX_DIOALIGN == 0 {
        return 0;
    }
    stx.stx_dio_offset_align
}

impl Bdev for UringBdev {
    fn name(&self) -> &str {
        &self.name
    }
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn size_bytes(&self) -> u64 {
        self.size_bytes
    }
    fn info(&self) -> BdevInfo {
        let kind = if self.block_device {
            "block device"
        } else {
            "file"
        };
        let mode = match (&self.fallback_reason, self.direct) {
            (_, true) => "O_DIRECT".to_string(),
            (Some(why), false) => format!("buffered (O_DIRECT refused: {why})"),
            (None, false) => "buffered".to_string(),
        };
        let mode = if self.inline {
            format!("{mode}, memory file system: reads and writes inline, O_DIRECT not used")
        } else {
            mode
        };
        BdevInfo {
            name: self.name.clone(),
            kind: "uring".into(),
            block_size: self.block_size,
            size_bytes: self.size_bytes,
            detail: format!(
                "{} ({kind}, {mode}){}",
                self.path.display(),
                if self.volatile_cache {
                    "; volatile write cache"
                } else {
                    ""
                }
            ),
            refused: self.refused(),
        }
    }
    fn volatile_write_cache(&self) -> bool {
        self.volatile_cache
    }
    fn create_channel(
        self: Arc<Self>,
        reactor: &Rc<Reactor>,
    ) -> Result<Rc<dyn BdevChannel>, String> {
        let zero_buf = ZeroBuf::new()
            .ok_or_else(|| format!("uring bdev {}: cannot allocate zero buffer", self.name))?;
        let fd = self.file.as_raw_fd();
        let file_ref = match reactor.register_file(fd) {
            Some(slot) => FileRef::Fixed(slot),
            None => FileRef::Fd(fd),
        };
        let state = Rc::new_cyclic(|me| ChannelState {
            me: me.clone(),
            bdev: self,
            reactor: Rc::clone(reactor),
            fd,
            file_ref,
            ops: RefCell::new(slab::Slab::with_capacity(CHANNEL_SLOTS)),
            waiting: RefCell::new(VecDeque::with_capacity(CHANNEL_SLOTS)),
            refusing: Cell::new(false),
            resets: RefCell::new(VecDeque::with_capacity(4)),
            next_seq: Cell::new(0),
            zero_buf,
            zero_range_unsupported: Cell::new(false),
        });
        Ok(Rc::new(UringChannel { state }))
    }
}

/// An aligned, zero-filled buffer owned by a channel.
struct ZeroBuf {
    ptr: *mut u8,
}

impl ZeroBuf {
    fn layout() -> std::alloc::Layout {
        // Constant, valid size and power-of-two alignment.
        std::alloc::Layout::from_size_align(ZERO_BUF_BYTES, ZERO_BUF_ALIGN_BYTES)
            .expect("constant layout is valid")
    }

    fn new() -> Option<ZeroBuf> {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout()) };
        (!ptr.is_null()).then_some(ZeroBuf { ptr })
    }
}

impl Drop for ZeroBuf {
    fn drop(&mut self) {
        // SAFETY: ptr came from alloc_zeroed with the same layout. The channel state
        // owning this buffer is kept alive by the reactor (its uring user table) until
        // every operation using the buffer has completed.
        unsafe { std::alloc::dealloc(self.ptr, Self::layout()) };
    }
}

/// One operation in flight on a channel.
struct Op {
    io: BdevIo,
    /// Arrival number on the channel (resets wait for every I/O that arrived before them).
    seq: u64,
    /// Bytes already transferred (reads, writes, zero-fill writes).
    done_bytes: u64,
    /// Bytes asked for by the SQE in flight.
    issued_bytes: u64,
    /// EAGAIN/EINTR resubmissions so far.
    retries: u32,
    /// Write-zeroes is being done by writing a zero buffer.
    zero_fill: bool,
}

/// What to do after a read/write completion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The I/O is finished.
    Done(IoStatus),
    /// `n` bytes went through; issue the rest.
    Advance(u64),
    /// Nothing went through (EAGAIN/EINTR); issue the same again.
    Retry,
}

/// Decides what a read/write completion means. `issued_bytes` were asked for by the
/// SQE, `remaining_bytes` are left in the whole I/O (>= issued). Never panics.
fn data_step(issued_bytes: u64, remaining_bytes: u64, res: i32, retries: u32) -> Step {
    if res == -libc::EAGAIN || res == -libc::EINTR {
        return if retries < MAX_RETRIES {
            Step::Retry
        } else {
            Step::Done(IoStatus::Failed(-res))
        };
    }
    if res < 0 {
        return Step::Done(IoStatus::Failed(res.checked_neg().unwrap_or(libc::EIO)));
    }
    let n = res as u64;
    if n == 0 || n > issued_bytes || n > remaining_bytes {
        // No progress (end of file, full device) or a result the kernel cannot
        // legitimately give: fail rather than loop.
        return Step::Done(IoStatus::Failed(libc::EIO));
    }
    if n == remaining_bytes {
        Step::Done(IoStatus::Success)
    } else {
        Step::Advance(n)
    }
}

/// What to do after an fsync/fallocate completion.
fn control_step(kind: IoKind, res: i32, retries: u32) -> ControlStep {
    if res >= 0 {
        return ControlStep::Done(IoStatus::Success);
    }
    let errno = res.checked_neg().unwrap_or(libc::EIO);
    match errno {
        libc::EAGAIN | libc::EINTR if retries < MAX_RETRIES => ControlStep::Retry,
        libc::EOPNOTSUPP if kind == IoKind::Unmap => ControlStep::Done(IoStatus::Success),
        libc::EOPNOTSUPP if kind == IoKind::WriteZeroes => ControlStep::ZeroFill,
        _ => ControlStep::Done(IoStatus::Failed(errno)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ControlStep {
    Done(IoStatus),
    Retry,
    /// The file system cannot zero a range: write zeroes instead.
    ZeroFill,
}

struct UringChannel {
    state: Rc<ChannelState>,
}

impl Drop for ChannelState {
    fn drop(&mut self) {
        // Runs once no op is in flight (each op's completion holds the state).
        if let FileRef::Fixed(slot) = self.file_ref {
            self.reactor.unregister_file(slot);
        }
    }
}

struct ChannelState {
    /// Ourselves, to hand the reactor an `Rc<dyn UringDone>` (no allocation).
    me: Weak<ChannelState>,
    bdev: Arc<UringBdev>,
    reactor: Rc<Reactor>,
    fd: RawFd,
    /// How read/write SQEs name the file (registered slot or fd).
    file_ref: FileRef,
    ops: RefCell<slab::Slab<Op>>,
    /// I/O waiting for a free slot, in arrival order, with its arrival number.
    waiting: RefCell<VecDeque<(u64, BdevIo)>>,
    /// A refusal was logged since the FIFO last emptied (one line per episode).
    refusing: Cell<bool>,
    /// Resets waiting for the I/O that arrived before them (arrival number, callback),
    /// in arrival order.
    resets: RefCell<VecDeque<(u64, IoCallback)>>,
    /// Arrival number of the next I/O.
    next_seq: Cell<u64>,
    zero_buf: ZeroBuf,
    /// Set once the file system answered EOPNOTSUPP to ZERO_RANGE.
    zero_range_unsupported: Cell<bool>,
}

impl BdevChannel for UringChannel {
    fn submit(&self, io: BdevIo) {
        self.state.submit(io);
    }
}

impl ChannelState {
    fn submit(&self, io: BdevIo) {
        let seq = self.next_seq.get();
        self.next_seq.set(seq + 1);
        if io.kind == IoKind::Reset {
            // Nothing can be aborted once handed to the kernel: a reset completes when
            // every I/O that arrived before it has completed (later I/O does not delay it).
            if self.oldest_in_flight().is_none() {
                io.cb.defer(&self.reactor, IoStatus::Success);
            } else {
                self.resets.borrow_mut().push_back((seq, io.cb));
            }
            return;
        }
        if let Err(errno) = check_range(&io, self.bdev.block_size, self.bdev.size_bytes) {
            io.cb.defer(&self.reactor, IoStatus::Failed(errno));
            return;
        }
        if self.bdev.inline && matches!(io.kind, IoKind::Read | IoKind::Write) {
            let status = self.rw_inline(&io);
            io.cb.defer(&self.reactor, status);
            return;
        }
        if self.ops.borrow().len() >= CHANNEL_SLOTS || !self.waiting.borrow().is_empty() {
            let mut waiting = self.waiting.borrow_mut();
            if waiting.len() < MAX_WAITING_IOS {
                waiting.push_back((seq, io));
                return;
            }
            drop(waiting);
            self.refuse(io);
            return;
        }
        self.start(seq, io);
    }

    /// Fails `io` with [`RETRY_ERRNO`]: the FIFO is full.
    #[cold]
    fn refuse(&self, io: BdevIo) {
        self.bdev.refused.fetch_add(1, Ordering::Relaxed);
        if !self.refusing.replace(true) {
            log::warn!(
                "uring bdev {} on reactor {}: {MAX_WAITING_IOS} I/Os wait for a slot; \
                 failing more with EAGAIN until they drain",
                self.bdev.name,
                self.reactor.id()
            );
        }
        io.cb.defer(&self.reactor, IoStatus::Failed(RETRY_ERRNO));
    }

    /// A read or write of a memory-backed file, done now (see `UringBdev::inline`).
    fn rw_inline(&self, io: &BdevIo) -> IoStatus {
        let mut done = 0u64;
        while done < io.len_bytes {
            let piece = io.buf.slice(done as usize, (io.len_bytes - done) as usize);
            let off = (io.offset_bytes + done) as libc::off_t;
            // SAFETY: `piece` is a view of the I/O's buffer, valid for reads and writes
            // while the I/O is in flight (IoBuf's contract), and check_range proved its
            // length; pread/pwrite touch only those bytes.
            let n = unsafe {
                if io.kind == IoKind::Read {
                    libc::pread(self.fd, piece.as_ptr().cast(), piece.len(), off)
                } else {
                    libc::pwrite(self.fd, piece.as_ptr().cast(), piece.len(), off)
                }
            };
            match n {
                n if n > 0 => done += n as u64,
                0 => return IoStatus::Failed(libc::EIO),
                _ => {
                    let errno = std::io::Error::last_os_error()
                        .raw_os_error()
                        .unwrap_or(libc::EIO);
                    if errno != libc::EINTR {
                        return IoStatus::Failed(errno);
                    }
                }
            }
        }
        IoStatus::Success
    }

    /// Arrival number of the oldest I/O not yet completed, if any.
    fn oldest_in_flight(&self) -> Option<u64> {
        let in_ops = self.ops.borrow().iter().map(|(_, op)| op.seq).min();
        let in_waiting = self.waiting.borrow().front().map(|(seq, _)| *seq);
        match (in_ops, in_waiting) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Completes the resets whose predecessors have all completed.
    fn release_resets(&self) {
        // The scan over in-flight ops runs only while a reset waits (rare).
        let oldest = self.oldest_in_flight().unwrap_or(u64::MAX);
        loop {
            let next = {
                let mut resets = self.resets.borrow_mut();
                match resets.front() {
                    Some((seq, _)) if *seq < oldest => resets.pop_front(),
                    _ => None,
                }
            };
            match next {
                Some((_, cb)) => cb.defer(&self.reactor, IoStatus::Success),
                None => break,
            }
        }
    }

    fn start(&self, seq: u64, io: BdevIo) {
        debug_assert!(
            self.ops.borrow().len() < CHANNEL_SLOTS,
            "op slab over its bound"
        );
        let zero_fill = io.kind == IoKind::WriteZeroes && self.zero_range_unsupported.get();
        let key = self.ops.borrow_mut().insert(Op {
            io,
            seq,
            done_bytes: 0,
            issued_bytes: 0,
            retries: 0,
            zero_fill,
        });
        self.push_op(key);
    }

    /// Builds and queues the SQE for the current state of op `key`.
    fn push_op(&self, key: usize) {
        let Some(me) = self.me.upgrade() else {
            // Cannot happen while a method runs on `self`; never panic on the I/O path.
            log::error!("uring bdev {}: channel state gone", self.bdev.name);
            return;
        };
        let fd = types::Fd(self.fd);
        let entry = {
            let mut ops = self.ops.borrow_mut();
            let Some(op) = ops.get_mut(key) else {
                log::error!("uring bdev {}: no op {key} to submit", self.bdev.name);
                return;
            };
            let remaining = op.io.len_bytes - op.done_bytes;
            let off = op.io.offset_bytes + op.done_bytes;
            match op.io.kind {
                IoKind::Read | IoKind::Write => {
                    // A data op is (re)issued only with bytes left to move.
                    debug_assert!(remaining > 0, "op {key} issued with nothing left");
                    let n = remaining.min(MAX_OP_BYTES);
                    op.issued_bytes = n;
                    // check_range proved buf.len() == len_bytes, and done + n <= len.
                    let piece = op.io.buf.slice(op.done_bytes as usize, n as usize);
                    rw_entry(
                        op.io.kind,
                        self.file_ref,
                        piece.as_ptr(),
                        n as u32,
                        off,
                        self.reactor.fixed_buf_index(&op.io.buf),
                    )
                }
                IoKind::WriteZeroes if op.zero_fill => {
                    let n = remaining.min(ZERO_BUF_BYTES as u64);
                    op.issued_bytes = n;
                    opcode::Write::new(fd, self.zero_buf.ptr, n as u32)
                        .offset(off)
                        .build()
                }
                IoKind::WriteZeroes => opcode::Fallocate::new(fd, op.io.len_bytes)
                    .offset(op.io.offset_bytes)
                    .mode(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)
                    .build(),
                IoKind::Unmap => opcode::Fallocate::new(fd, op.io.len_bytes)
                    .offset(op.io.offset_bytes)
                    .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                    .build(),
                IoKind::Flush | IoKind::Reset => opcode::Fsync::new(fd)
                    .flags(types::FsyncFlags::DATASYNC)
                    .build(),
            }
        };
        // SAFETY: the SQE points at (a) the I/O's buffer, which its submitter keeps
        // alive until the completion (the IoBuf contract), (b) the zero buffer owned
        // by this channel state, which the reactor keeps alive through `me` until
        // the completion is delivered, or (c) no memory. The fd belongs to the bdev,
        // which the state holds. The fixed-buffer index comes from this reactor's
        // `fixed_buf_index`, so it names the region registered with its ring.
        unsafe { self.reactor.uring_push(entry, me, key as u64) };
    }

    /// Completes op `key` and lets waiting work in.
    fn finish(&self, key: usize, status: IoStatus) {
        let op = self.ops.borrow_mut().try_remove(key);
        if let Some(op) = op {
            op.io.cb.defer(&self.reactor, status);
        }
        loop {
            if self.ops.borrow().len() >= CHANNEL_SLOTS {
                break;
            }
            let next = self.waiting.borrow_mut().pop_front();
            match next {
                Some((seq, io)) => self.start(seq, io),
                None => {
                    self.refusing.set(false);
                    break;
                }
            }
        }
        if !self.resets.borrow().is_empty() {
            self.release_resets();
        }
    }
}

/// The file of a channel as SQEs name it: a slot of the reactor's registered-file
/// table when one was free (saves the kernel a file lookup per I/O), else the fd.
#[derive(Clone, Copy)]
enum FileRef {
    Fixed(u32),
    Fd(RawFd),
}

fn rw_entry(
    kind: IoKind,
    file: FileRef,
    ptr: *mut u8,
    len: u32,
    offset: u64,
    fixed: Option<u16>,
) -> squeue::Entry {
    macro_rules! build {
        ($f:expr) => {
            match (kind, fixed) {
                (IoKind::Read, Some(idx)) => opcode::ReadFixed::new($f, ptr, len, idx)
                    .offset(offset)
                    .build(),
                (IoKind::Read, None) => opcode::Read::new($f, ptr, len).offset(offset).build(),
                (_, Some(idx)) => opcode::WriteFixed::new($f, ptr, len, idx)
                    .offset(offset)
                    .build(),
                (_, None) => opcode::Write::new($f, ptr, len).offset(offset).build(),
            }
        };
    }
    match file {
        FileRef::Fixed(i) => build!(types::Fixed(i)),
        FileRef::Fd(fd) => build!(types::Fd(fd)),
    }
}

impl UringDone for ChannelState {
    fn uring_done(&self, tag: u64, res: i32, _flags: u32) {
        let key = tag as usize;
        enum Next {
            Finish(IoStatus),
            Resubmit,
            Missing,
        }
        let next = {
            let mut ops = self.ops.borrow_mut();
            match ops.get_mut(key) {
                None => Next::Missing,
                Some(op) => {
                    let data = matches!(op.io.kind, IoKind::Read | IoKind::Write) || op.zero_fill;
                    if data {
                        let remaining = op.io.len_bytes - op.done_bytes;
                        match data_step(op.issued_bytes, remaining, res, op.retries) {
                            Step::Done(s) => Next::Finish(s),
                            Step::Advance(n) => {
                                op.done_bytes += n;
                                op.retries = 0;
                                Next::Resubmit
                            }
                            Step::Retry => {
                                op.retries += 1;
                                Next::Resubmit
                            }
                        }
                    } else {
                        match control_step(op.io.kind, res, op.retries) {
                            ControlStep::Done(s) => {
                                if s.is_ok() && op.io.kind == IoKind::Flush {
                                    self.bdev.flushes.fetch_add(1, Ordering::Relaxed);
                                }
                                Next::Finish(s)
                            }
                            ControlStep::Retry => {
                                op.retries += 1;
                                Next::Resubmit
                            }
                            ControlStep::ZeroFill => {
                                if !self.zero_range_unsupported.replace(true) {
                                    log::info!(
                                        "uring bdev {}: no ZERO_RANGE support; writing zeroes instead",
                                        self.bdev.name
                                    );
                                }
                                op.zero_fill = true;
                                op.retries = 0;
                                Next::Resubmit
                            }
                        }
                    }
                }
            }
        };
        match next {
            Next::Finish(status) => self.finish(key, status),
            Next::Resubmit => self.push_op(key),
            Next::Missing => log::error!(
                "uring bdev {}: completion for unknown op {key} (res {res})",
                self.bdev.name
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(tag: &str, len: u64) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "plexd-uring-unit-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = File::create(&p).unwrap();
        f.set_len(len).unwrap();
        p
    }

    #[test]
    fn full_transfer_completes_and_short_transfer_advances() {
        assert_eq!(
            data_step(4096, 4096, 4096, 0),
            Step::Done(IoStatus::Success)
        );
        assert_eq!(data_step(4096, 4096, 512, 0), Step::Advance(512));
        assert_eq!(
            data_step(1 << 30, 3 << 30, 1 << 30, 0),
            Step::Advance(1 << 30)
        );
    }

    #[test]
    fn end_of_file_and_impossible_results_fail_instead_of_looping() {
        assert_eq!(
            data_step(4096, 4096, 0, 0),
            Step::Done(IoStatus::Failed(libc::EIO))
        );
        assert_eq!(
            data_step(4096, 4096, 8192, 0),
            Step::Done(IoStatus::Failed(libc::EIO))
        );
        assert_eq!(
            data_step(4096, 4096, -libc::EIO, 0),
            Step::Done(IoStatus::Failed(libc::EIO))
        );
        assert_eq!(
            data_step(4096, 4096, i32::MIN, 0),
            Step::Done(IoStatus::Failed(libc::EIO))
        );
    }

    #[test]
    fn eagain_is_retried_a_bounded_number_of_times() {
        assert_eq!(data_step(4096, 4096, -libc::EAGAIN, 0), Step::Retry);
        assert_eq!(
            data_step(4096, 4096, -libc::EAGAIN, MAX_RETRIES),
            Step::Done(IoStatus::Failed(libc::EAGAIN))
        );
        assert_eq!(
            control_step(IoKind::Flush, -libc::EINTR, 0),
            ControlStep::Retry
        );
    }

    #[test]
    fn unsupported_unmap_succeeds_and_unsupported_zero_range_falls_back() {
        assert_eq!(
            control_step(IoKind::Unmap, -libc::EOPNOTSUPP, 0),
            ControlStep::Done(IoStatus::Success)
        );
        assert_eq!(
            control_step(IoKind::WriteZeroes, -libc::EOPNOTSUPP, 0),
            ControlStep::ZeroFill
        );
        assert_eq!(
            control_step(IoKind::Flush, -libc::EIO, 0),
            ControlStep::Done(IoStatus::Failed(libc::EIO))
        );
    }

    #[test]
    fn write_cache_mode_of_a_device_is_parsed_from_sysfs_text() {
        assert_eq!(parse_write_cache("write back\n"), Some(true));
        assert_eq!(parse_write_cache("write through\n"), Some(false));
        assert_eq!(parse_write_cache(""), None);
        assert_eq!(parse_write_cache("writeback"), None);
    }

    #[test]
    fn files_on_disk_report_a_volatile_write_cache_and_memory_files_do_not() {
        let p = temp_file("wce", 1 << 20);
        let on_memory = on_memory_fs(&File::open(&p).unwrap());
        for buffered in [false, true] {
            let opts = UringOpts {
                buffered,
                ..Default::default()
            };
            let b = UringBdev::open("u0", &p, &opts).unwrap();
            // Buffered: the page cache; O_DIRECT on a file: metadata and the disk's
            // own cache still need fdatasync. Memory file systems have no cache.
            assert_eq!(b.volatile_write_cache(), !on_memory, "buffered {buffered}");
            assert_eq!(
                b.info().detail.contains("volatile write cache"),
                !on_memory,
                "{}",
                b.info().detail
            );
            assert_eq!(b.flushes(), 0);
        }
        std::fs::remove_file(&p).unwrap();
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            let p = shm.join(format!("plexd-uring-unit-wce-{}", std::process::id()));
            File::create(&p).unwrap().set_len(1 << 20).unwrap();
            if on_memory_fs(&File::open(&p).unwrap()) {
                let b = UringBdev::open("u1", &p, &UringOpts::default()).unwrap();
                assert!(!b.volatile_write_cache(), "{}", b.info().detail);
            }
            std::fs::remove_file(&p).unwrap();
        }
    }

    #[test]
    fn memory_files_are_inline_whatever_the_open_kept_and_others_follow_o_direct() {
        // (block device, memory fs, opened with O_DIRECT)
        assert_eq!(io_path(false, true, true), IoPath::Inline);
        assert_eq!(io_path(false, true, false), IoPath::Inline);
        assert_eq!(io_path(false, false, true), IoPath::Direct);
        assert_eq!(io_path(false, false, false), IoPath::Buffered);
        assert_eq!(io_path(true, false, true), IoPath::Direct);
        assert_eq!(io_path(true, false, false), IoPath::Buffered);
    }

    #[test]
    fn a_file_on_tmpfs_is_opened_without_o_direct_and_read_inline() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            return;
        }
        /// Removes the file when the test ends, failed or not.
        struct Remove(PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let p = shm.join(format!("plexd-uring-unit-inline-{}", std::process::id()));
        let _remove = Remove(p.clone());
        File::create(&p).unwrap().set_len(1 << 20).unwrap();
        if on_memory_fs(&File::open(&p).unwrap()) {
            let b = UringBdev::open("u0", &p, &UringOpts::default()).unwrap();
            // Kernels from 6.6 accept O_DIRECT on tmpfs; the bdev must not keep it.
            assert!(!b.is_direct(), "{}", b.info().detail);
            // SAFETY: F_GETFL on the bdev's open fd touches no memory.
            let flags = unsafe { libc::fcntl(b.file.as_raw_fd(), libc::F_GETFL) };
            assert_eq!(flags & libc::O_DIRECT, 0, "O_DIRECT cleared on the fd");
            // The test owns the file: reads leave its access time alone.
            assert_ne!(flags & libc::O_NOATIME, 0, "O_NOATIME set on the fd");
            assert!(b.inline);
            assert!(b.info().detail.contains("inline"), "{}", b.info().detail);
        }
    }

    #[test]
    fn size_not_a_multiple_of_the_block_size_is_refused_naming_the_path() {
        let p = temp_file("odd", 4096 + 100);
        let err = UringBdev::open("u0", &p, &UringOpts::default())
            .err()
            .expect("odd size refused");
        assert!(err.contains(&p.display().to_string()), "{err}");
        assert!(err.contains("multiple of the block size"), "{err}");
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn bad_block_sizes_and_missing_files_are_refused() {
        let p = temp_file("bs", 1 << 20);
        for bs in [0, 100, 1000, 1 << 20] {
            let opts = UringOpts {
                block_size_bytes: Some(bs),
                ..Default::default()
            };
            assert!(UringBdev::open("u0", &p, &opts).is_err(), "block size {bs}");
        }
        let opts = UringOpts {
            block_size_bytes: Some(4096),
            ..Default::default()
        };
        let b = UringBdev::open("u0", &p, &opts).unwrap();
        assert_eq!(b.block_size(), 4096);
        assert_eq!(b.size_bytes(), 1 << 20);
        std::fs::remove_file(&p).unwrap();
        let err = UringBdev::open("u1", Path::new("/nonexistent/plexd.img"), &opts)
            .err()
            .unwrap();
        assert!(err.contains("/nonexistent/plexd.img"), "{err}");
    }

    #[test]
    fn files_open_with_o_direct_where_supported_and_say_so() {
        let p = temp_file("direct", 1 << 20);
        let b = UringBdev::open("u0", &p, &UringOpts::default()).unwrap();
        let info = b.info();
        assert_eq!(info.kind, "uring");
        assert!(info.detail.contains(&p.display().to_string()));
        if b.is_direct() {
            assert!(info.detail.contains("O_DIRECT"), "{}", info.detail);
        }
        let buffered = UringBdev::open(
            "u1",
            &p,
            &UringOpts {
                buffered: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert!(!buffered.is_direct());
        std::fs::remove_file(&p).unwrap();
    }
}
