//! Data patterns written through a volume bdev and verified later, on any node.
//!
//! A pattern is a function of (seed, byte offset): every 8-byte word holds a hash of
//! both, so a block read back from the wrong place or an old write is detected.

use crate::wait::try_wait_until;
use plexd_target::api::KernelClient;
use plexd_target::lease::FENCED_ERRNO;
use std::time::Duration;

/// Largest single I/O the helpers issue (the kernel interface's diagnostic I/O limit).
pub const CHUNK_BYTES: u64 = 1 << 20;

/// A pattern written at `offset_bytes..offset_bytes+len_bytes` of bdev `bdev`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    /// Bdev name, e.g. `dg1.vol1`.
    pub bdev: String,
    /// Where it starts.
    pub offset_bytes: u64,
    /// How long (a multiple of 512).
    pub len_bytes: u64,
    /// Which pattern.
    pub seed: u64,
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The bytes of pattern `seed` at `offset_bytes..offset_bytes+len` (8-byte aligned).
pub fn pattern_bytes(seed: u64, offset_bytes: u64, len: usize) -> Vec<u8> {
    assert!(offset_bytes & 7 == 0 && len & 7 == 0, "pattern: unaligned");
    let mut out = Vec::with_capacity(len);
    let mut word = offset_bytes / 8;
    while out.len() < len {
        out.extend_from_slice(&splitmix64(seed ^ splitmix64(word)).to_le_bytes());
        word += 1;
    }
    out
}

impl Pattern {
    /// Writes it through `k`.
    pub fn write(&self, k: &KernelClient) -> Result<(), String> {
        self.chunks(|off, len| self.write_chunk(k, off, len).map_err(|f| f.what))
    }

    /// Writes it through `k`, waiting up to `fenced_for` while the node's data plane
    /// is fenced (no data-plane lease: after a failover, until the node's coordinator
    /// renews it), as a multipath host retries a path that answers NOT READY.
    pub fn write_served(&self, k: &KernelClient, fenced_for: Duration) -> Result<(), String> {
        self.chunks(|off, len| served(fenced_for, || self.write_chunk(k, off, len)))
    }

    /// Reads it back through `k` and compares.
    pub fn verify(&self, k: &KernelClient) -> Result<(), String> {
        self.chunks(|off, len| self.verify_chunk(k, off, len).map_err(|f| f.what))
    }

    /// Like [`Pattern::verify`], waiting up to `fenced_for` while the node's data
    /// plane is fenced (see [`Pattern::write_served`]).
    pub fn verify_served(&self, k: &KernelClient, fenced_for: Duration) -> Result<(), String> {
        self.chunks(|off, len| served(fenced_for, || self.verify_chunk(k, off, len)))
    }

    fn write_chunk(&self, k: &KernelClient, off: u64, len: u64) -> Result<(), IoFail> {
        let data = pattern_bytes(self.seed, off, len as usize);
        match k.write(&self.bdev, off, &data) {
            Ok(0) => Ok(()),
            Ok(errno) => Err(IoFail {
                fenced: errno == FENCED_ERRNO,
                what: format!(
                    "write {} at {off}+{len} via {}: errno {errno}",
                    self.bdev,
                    k.path()
                ),
            }),
            Err(e) => Err(IoFail::other(format!(
                "write {} at {off}+{len}: {e}",
                self.bdev
            ))),
        }
    }

    fn verify_chunk(&self, k: &KernelClient, off: u64, len: u64) -> Result<(), IoFail> {
        let r = read_chunk(k, &self.bdev, off, len)?;
        let want = pattern_bytes(self.seed, off, len as usize);
        if r.data != want {
            let at = r
                .data
                .iter()
                .zip(&want)
                .position(|(a, b)| a != b)
                .unwrap_or(r.data.len().min(want.len()));
            return Err(IoFail::other(format!(
                "{} via {}: pattern {} differs at byte {} (read {} bytes of {})",
                self.bdev,
                k.path(),
                self.seed,
                off + at as u64,
                r.data.len(),
                len
            )));
        }
        Ok(())
    }

    fn chunks(&self, mut f: impl FnMut(u64, u64) -> Result<(), String>) -> Result<(), String> {
        let end = self.offset_bytes + self.len_bytes;
        let mut off = self.offset_bytes;
        while off < end {
            let len = CHUNK_BYTES.min(end - off);
            f(off, len)?;
            off += len;
        }
        Ok(())
    }
}

/// Reads `bdev` at `off..off + len` (at most [`CHUNK_BYTES`]) through `k`.
fn read_chunk(
    k: &KernelClient,
    bdev: &str,
    off: u64,
    len: u64,
) -> Result<plexd_target::api::IoResult, IoFail> {
    let r = k
        .read(bdev, off, len as u32)
        .map_err(|e| IoFail::other(format!("read {bdev} at {off}+{len}: {e}")))?;
    if r.status != 0 {
        return Err(IoFail {
            fenced: r.status == FENCED_ERRNO,
            what: format!(
                "read {bdev} at {off}+{len} via {}: errno {}",
                k.path(),
                r.status
            ),
        });
    }
    Ok(r)
}

/// Checks that `bdev` reads as zeroes at `offset..offset + len` through `k` (a
/// [`CHUNK_BYTES`] read at a time, each waiting up to `fenced_for` while the data
/// plane is fenced): the space a create or a grow gave a volume
/// (docs/OPERATIONS.md, "New space reads as zeroes").
pub fn verify_zeroes(
    k: &KernelClient,
    bdev: &str,
    offset: u64,
    len: u64,
    fenced_for: Duration,
) -> Result<(), String> {
    let mut off = offset;
    while off < offset + len {
        let n = CHUNK_BYTES.min(offset + len - off);
        served(fenced_for, || {
            let r = read_chunk(k, bdev, off, n)?;
            match r.data.iter().position(|&b| b != 0) {
                None => Ok(()),
                Some(at) => Err(IoFail::other(format!(
                    "{bdev} via {}: byte {} is {:#x}, not zero",
                    k.path(),
                    off + at as u64,
                    r.data[at]
                ))),
            }
        })?;
        off += n;
    }
    Ok(())
}

/// Why one chunk's I/O failed.
struct IoFail {
    /// The data plane refused it for want of a lease ([`FENCED_ERRNO`]).
    fenced: bool,
    what: String,
}

impl IoFail {
    fn other(what: String) -> IoFail {
        IoFail {
            fenced: false,
            what,
        }
    }
}

/// Runs `io` until it succeeds, fails for another reason than the fence, or has been
/// fenced for `fenced_for`.
fn served(fenced_for: Duration, mut io: impl FnMut() -> Result<(), IoFail>) -> Result<(), String> {
    let mut other = None;
    let r = try_wait_until(
        "the data plane to serve again (lease)",
        fenced_for,
        || match io() {
            Ok(()) => Ok(()),
            Err(f) if f.fenced => Err(f.what),
            Err(f) => {
                other = Some(f.what);
                Ok(())
            }
        },
    );
    match other {
        Some(what) => Err(what),
        None => r,
    }
}

/// Most rounds an [`IoLoop`] runs.
pub const IO_LOOP_MAX_ROUNDS: u64 = 1_000_000;
/// Longest an [`IoLoop`] runs.
pub const IO_LOOP_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(120);
/// Errors an [`IoLoop`] keeps (it counts them all).
const IO_LOOP_KEPT_ERRORS: usize = 10;

/// A thread writing a new pattern to one region of a bdev and reading it back, round
/// after round, until stopped (bounded in rounds and time), counting every error.
pub struct IoLoop {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    rounds: std::sync::Arc<std::sync::atomic::AtomicU64>,
    handle: Option<std::thread::JoinHandle<IoLoopResult>>,
}

/// What an [`IoLoop`] saw.
#[derive(Debug)]
pub struct IoLoopResult {
    /// Rounds completed (write then verify).
    pub rounds: u64,
    /// Failed rounds.
    pub error_count: u64,
    /// The first failures.
    pub errors: Vec<String>,
    /// The pattern the region holds now (the last one written), if any write succeeded.
    pub last: Option<Pattern>,
}

impl IoLoopResult {
    /// The kept failures other than fenced (errno 108: the node's data plane held
    /// no lease, as while a failover runs).
    pub fn unfenced_errors(&self) -> Vec<&String> {
        let fenced = format!("errno {FENCED_ERRNO}");
        self.errors
            .iter()
            .filter(|e| !e.contains(&fenced))
            .collect()
    }
}

impl IoLoop {
    /// Starts the loop on `socket` (a plexd-target's) over `region`; seeds count up
    /// from `region.seed`.
    pub fn start(socket: std::path::PathBuf, region: Pattern) -> Result<IoLoop, String> {
        use std::sync::atomic::Ordering;
        let k = KernelClient::connect(&socket).map_err(|e| e.to_string())?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let rounds = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop2, rounds2) = (stop.clone(), rounds.clone());
        let handle = std::thread::spawn(move || {
            let started = std::time::Instant::now();
            let mut res = IoLoopResult {
                rounds: 0,
                error_count: 0,
                errors: Vec::new(),
                last: None,
            };
            for round in 0..IO_LOOP_MAX_ROUNDS {
                if stop2.load(Ordering::Relaxed) || started.elapsed() > IO_LOOP_MAX_TIME {
                    break;
                }
                let p = Pattern {
                    seed: region.seed + round,
                    ..region.clone()
                };
                let r = p.write(&k).and_then(|_| {
                    res.last = Some(p.clone());
                    p.verify(&k)
                });
                if let Err(e) = r {
                    res.error_count += 1;
                    if res.errors.len() < IO_LOOP_KEPT_ERRORS {
                        res.errors.push(format!("round {round}: {e}"));
                    }
                }
                res.rounds += 1;
                rounds2.store(res.rounds, Ordering::Relaxed);
            }
            res
        });
        Ok(IoLoop {
            stop,
            rounds,
            handle: Some(handle),
        })
    }

    /// Rounds completed so far.
    pub fn rounds(&self) -> u64 {
        self.rounds.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits (bounded) until `more` rounds beyond the current count have completed.
    pub fn wait_more_rounds(&self, more: u64, timeout: std::time::Duration) {
        let target = self.rounds() + more;
        crate::wait::wait_until(
            &format!("the I/O loop to complete round {target}"),
            timeout,
            || match self.rounds() {
                r if r >= target => Ok(()),
                r => Err(format!("at round {r}")),
            },
        );
    }

    /// Stops the loop and returns what it saw.
    pub fn stop(mut self) -> IoLoopResult {
        self.finish()
    }

    fn finish(&mut self) -> IoLoopResult {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        match self.handle.take().map(|h| h.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => panic!("the I/O loop thread panicked"),
            None => panic!("the I/O loop was already stopped"),
        }
    }
}

impl Drop for IoLoop {
    fn drop(&mut self) {
        if self.handle.is_some() {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(h) = self.handle.take() {
                let _ = h.join();
            }
        }
    }
}
