//! Bdevs as the kernel interface describes them: what to create, what is listed,
//! I/O kinds, fault injections and diagnostic I/O results.

use std::path::PathBuf;

/// What an I/O does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IoKind {
    /// Read `len_bytes` at `offset_bytes` into the buffer.
    Read,
    /// Write the buffer at `offset_bytes`.
    Write,
    /// Make completed writes durable.
    Flush,
    /// Write zeroes over the range (no buffer).
    WriteZeroes,
    /// Deallocate the range (no buffer); reads after it return zeroes or old data.
    Unmap,
    /// Abort what can be aborted and return to a known state.
    Reset,
}

impl IoKind {
    /// True for kinds that carry data in the buffer.
    pub fn has_data(self) -> bool {
        matches!(self, IoKind::Read | IoKind::Write)
    }

    /// True for kinds that change the medium.
    pub fn is_write_like(self) -> bool {
        matches!(self, IoKind::Write | IoKind::WriteZeroes | IoKind::Unmap)
    }
}

/// Properties of a bdev, as shown by the management API.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct BdevInfo {
    /// Unique name within a target.
    pub name: String,
    /// Backend or layer: `null`, `malloc`, `uring`, `error`, `volume`.
    pub kind: String,
    /// Logical block size.
    pub block_size: u32,
    /// Capacity in bytes.
    pub size_bytes: u64,
    /// Backend-specific detail (path, hugepages, injected faults...).
    pub detail: String,
    /// I/O failed with `EAGAIN` by the bdev's own bounded queue since it was
    /// opened (`uring`: `MAX_WAITING_IOS`; `error`: `MAX_DELAYED_IOS`; 0 for
    /// the others).
    #[serde(default)]
    pub refused: u64,
}

/// Which I/Os an injected failure hits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOn {
    /// Reads.
    Reads,
    /// Writes, write-zeroes, unmap and flush (everything that changes or persists
    /// the medium).
    Writes,
    /// Reads and writes as above. Reset is never failed.
    Both,
}

/// Largest I/O of the diagnostic `io` method.
pub const MAX_IO_BYTES: u64 = 1 << 20;

/// Backends a client can create.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BdevKind {
    /// Completes everything at once, stores nothing.
    Null,
    /// Memory.
    Malloc,
    /// A file or block device through io_uring.
    Uring,
    /// Wraps another bdev and injects faults on command.
    Error,
}

impl BdevKind {
    /// The name used in the schema and the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            BdevKind::Null => "null",
            BdevKind::Malloc => "malloc",
            BdevKind::Uring => "uring",
            BdevKind::Error => "error",
        }
    }
}

/// A bdev to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BdevRequest {
    /// Backend.
    pub kind: BdevKind,
    /// Unique name.
    pub name: String,
    /// Capacity (`null`, `malloc`).
    pub size_bytes: u64,
    /// Block size; `None` = the backend's default.
    pub block_size: Option<u32>,
    /// File or block device (`uring`).
    pub path: Option<PathBuf>,
    /// The wrapped bdev (`error`).
    pub inner: Option<String>,
    /// Through the page cache instead of O_DIRECT (`uring`).
    pub buffered: bool,
}

impl BdevRequest {
    /// A `null` bdev.
    pub fn null(name: &str, size_bytes: u64) -> BdevRequest {
        BdevRequest::sized(BdevKind::Null, name, size_bytes)
    }

    /// A `malloc` bdev.
    pub fn malloc(name: &str, size_bytes: u64) -> BdevRequest {
        BdevRequest::sized(BdevKind::Malloc, name, size_bytes)
    }

    /// A `uring` bdev on `path`.
    pub fn uring(name: &str, path: impl Into<PathBuf>) -> BdevRequest {
        BdevRequest {
            path: Some(path.into()),
            ..BdevRequest::sized(BdevKind::Uring, name, 0)
        }
    }

    /// An `error` bdev wrapping `inner`.
    pub fn error(name: &str, inner: &str) -> BdevRequest {
        BdevRequest {
            inner: Some(inner.to_string()),
            ..BdevRequest::sized(BdevKind::Error, name, 0)
        }
    }

    fn sized(kind: BdevKind, name: &str, size_bytes: u64) -> BdevRequest {
        BdevRequest {
            kind,
            name: name.to_string(),
            size_bytes,
            block_size: None,
            path: None,
            inner: None,
            buffered: false,
        }
    }
}

/// A fault to inject into an `error` bdev.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Injection {
    /// Fail matching I/Os with `errno` (EIO when 0), the next `count` of them or
    /// until cleared (`None`).
    Fail {
        /// Which I/Os.
        on: FailOn,
        /// The errno.
        errno: i32,
        /// How many; `None` = until cleared.
        count: Option<u64>,
    },
    /// Add this latency to every I/O (0 removes it).
    LatencyUs(u64),
    /// Stop failing I/Os.
    ClearFailures,
    /// Stop failures and latency.
    Clear,
}

/// How a diagnostic I/O ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IoResult {
    /// 0, or the errno the I/O failed with.
    pub status: i32,
    /// For reads: the bytes read.
    pub data: Vec<u8>,
    /// From submit to completion, microseconds.
    pub latency_us: u64,
}
