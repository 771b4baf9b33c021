//! A connection's output queue: headers and small data copied into one byte
//! buffer, read data sent from its pool buffer (held until its bytes are sent),
//! written with vectored nonblocking `sendmsg`. The frontend encodes its PDUs
//! into the queue ([`OutQueue::push`], [`OutQueue::push_ref`]).

use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::time::Instant;

use super::WBUF_HIGH_BYTES;
use crate::buf::PoolBuf;

/// Most iovecs per `sendmsg` (two per data PDU sent from a pool buffer).
pub(crate) const MAX_IOV: usize = 128;
/// Most `sendmsg` calls per [`OutQueue::send`].
const SENDS_PER_FLUSH: usize = 1024;
/// Capacity the byte buffer shrinks back to after a burst.
const KEEP_BYTES: usize = 64 << 10;
/// Sent bytes at the front of the byte buffer beyond which they are dropped
/// while more is queued.
const DRAIN_BYTES: usize = 1 << 20;

/// A run of queued output bytes.
enum Seg {
    /// The next `len` unsent bytes of [`OutQueue::bytes`].
    Inline(usize),
    /// `len` bytes at `ptr`, inside a pool buffer in [`OutQueue::held`].
    Pool { ptr: *const u8, len: usize },
}

/// The output queue of a connection.
#[derive(Default)]
pub(crate) struct OutQueue {
    /// Serialized headers and small data segments.
    bytes: Vec<u8>,
    /// Bytes of `bytes` already sent.
    pos: usize,
    /// What to send, in order (only the unsent remainder of the front one).
    segs: VecDeque<Seg>,
    /// Pool buffers with queued bytes, each with the stream position just past
    /// its last queued byte; given back once that position is sent.
    held: VecDeque<(u64, PoolBuf)>,
    /// Bytes ever queued and sent.
    queued: u64,
    sent: u64,
    /// Since when the socket accepts nothing (EAGAIN, nothing sent since).
    blocked_since: Option<Instant>,
}

/// How [`OutQueue::send`] ended.
#[derive(Debug)]
pub(crate) enum Sent {
    /// Everything queued is sent (or the call budget ran out with bytes left:
    /// the caller flushes again later).
    Done,
    /// The socket is full (EAGAIN): wait for POLLOUT.
    Blocked,
    /// The socket failed.
    Failed(std::io::Error),
}

impl OutQueue {
    /// An empty queue with room for `cap` bytes of headers.
    pub(crate) fn with_capacity(cap: usize) -> OutQueue {
        OutQueue {
            bytes: Vec::with_capacity(cap),
            ..OutQueue::default()
        }
    }

    /// Since when the socket accepts no output (EAGAIN, nothing sent since).
    pub(crate) fn blocked_since(&self) -> Option<Instant> {
        self.blocked_since
    }

    /// Bytes queued and not sent yet.
    pub(crate) fn pending(&self) -> usize {
        (self.queued - self.sent) as usize
    }

    /// Accounts for the bytes appended to `bytes` since it was `start` long.
    fn push_inline(&mut self, start: usize) {
        let n = self.bytes.len() - start;
        if n == 0 {
            return;
        }
        self.queued += n as u64;
        if let Some(Seg::Inline(len)) = self.segs.back_mut() {
            *len += n;
        } else {
            self.segs.push_back(Seg::Inline(n));
        }
    }

    /// Queues the bytes `encode` appends (a whole PDU, its data copied).
    pub(crate) fn push(&mut self, encode: impl FnOnce(&mut Vec<u8>)) {
        let start = self.bytes.len();
        encode(&mut self.bytes);
        self.push_inline(start);
    }

    /// Queues a PDU whose data segment is sent from where it lies, without a
    /// copy: the bytes `head` appends, then `data`, then those `tail` appends.
    ///
    /// # Safety
    /// `data` must lie in a pool buffer that the caller passes to
    /// [`OutQueue::hold`] before anything else touches this queue (so it stays
    /// allocated, and is not written, until its bytes are sent or the queue is
    /// discarded).
    pub(crate) unsafe fn push_ref(
        &mut self,
        head: impl FnOnce(&mut Vec<u8>),
        data: &[u8],
        tail: impl FnOnce(&mut Vec<u8>),
    ) {
        self.push(head);
        if !data.is_empty() {
            self.queued += data.len() as u64;
            self.segs.push_back(Seg::Pool {
                ptr: data.as_ptr(),
                len: data.len(),
            });
        }
        self.push(tail);
    }

    /// Keeps `buf` until the bytes queued so far are sent.
    pub(crate) fn hold(&mut self, buf: PoolBuf) {
        self.held.push_back((self.queued, buf));
    }

    /// Fills `iov` with the front of the queue; returns how many entries it used.
    pub(crate) fn iovecs(&self, iov: &mut [libc::iovec; MAX_IOV]) -> usize {
        let mut n = 0;
        let mut pos = self.pos;
        for seg in &self.segs {
            if n == MAX_IOV {
                break;
            }
            let (base, len) = match *seg {
                Seg::Inline(len) => {
                    let p = self.bytes[pos..pos + len].as_ptr();
                    pos += len;
                    (p, len)
                }
                Seg::Pool { ptr, len } => (ptr, len),
            };
            iov[n] = libc::iovec {
                iov_base: base as *mut libc::c_void,
                iov_len: len,
            };
            n += 1;
        }
        n
    }

    /// Marks `n` bytes from the front as sent; returns the pool buffers that are
    /// no longer needed.
    pub(crate) fn advance(&mut self, mut n: usize, done: &mut Vec<PoolBuf>) {
        self.sent += n as u64;
        while n > 0 {
            let Some(front) = self.segs.front_mut() else {
                break;
            };
            let left = match front {
                Seg::Inline(len) => {
                    let k = n.min(*len);
                    *len -= k;
                    self.pos += k;
                    n -= k;
                    *len
                }
                Seg::Pool { ptr, len } => {
                    let k = n.min(*len);
                    *len -= k;
                    // Stays inside (or one past the end of) the same buffer.
                    *ptr = ptr.wrapping_add(k);
                    n -= k;
                    *len
                }
            };
            if left == 0 {
                self.segs.pop_front();
            }
        }
        while self.held.front().is_some_and(|(end, _)| *end <= self.sent) {
            if let Some((_, b)) = self.held.pop_front() {
                done.push(b);
            }
        }
        if self.segs.is_empty() {
            self.bytes.clear();
            self.pos = 0;
            if self.bytes.capacity() > 2 * WBUF_HIGH_BYTES {
                self.bytes.shrink_to(KEEP_BYTES);
            }
        } else if self.pos > DRAIN_BYTES {
            self.bytes.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Drops everything queued; returns the held pool buffers.
    pub(crate) fn discard(&mut self, done: &mut Vec<PoolBuf>) {
        self.segs.clear();
        self.bytes.clear();
        self.pos = 0;
        self.sent = self.queued;
        done.extend(self.held.drain(..).map(|(_, b)| b));
    }

    /// Writes queued bytes to the socket `fd` until all are sent, the socket
    /// is full or fails; returns how it ended and, when bytes went out after
    /// the socket was blocked, since when it was (the stretch that ended).
    /// Pool buffers whose bytes are sent go to `done`.
    pub(crate) fn send(&mut self, fd: RawFd, done: &mut Vec<PoolBuf>) -> (Sent, Option<Instant>) {
        let mut unblocked = None;
        // SAFETY: iovec is plain data; every entry used is filled by `iovecs`.
        let mut iov: [libc::iovec; MAX_IOV] = unsafe { std::mem::zeroed() };
        for _ in 0..SENDS_PER_FLUSH {
            if self.pending() == 0 {
                break;
            }
            let n_iov = self.iovecs(&mut iov);
            // SAFETY: a zeroed msghdr is valid (no address, no control data).
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = n_iov as _;
            // SAFETY: every iovec points at queued bytes: either inside
            // `self.bytes` (not modified during the call: `self` is borrowed
            // mutably here) or inside a pool buffer that `self.held` keeps until
            // those bytes are sent (`push_ref`'s contract). The call is
            // synchronous, so nothing refers to the iovecs after it returns.
            // MSG_NOSIGNAL avoids SIGPIPE.
            let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) };
            if n > 0 {
                self.advance(n as usize, done);
                if let Some(since) = self.blocked_since.take() {
                    unblocked = Some(since);
                }
                continue;
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EAGAIN) => {
                    self.blocked_since.get_or_insert_with(Instant::now);
                    return (Sent::Blocked, unblocked);
                }
                Some(libc::EINTR) => continue,
                _ => return (Sent::Failed(e), unblocked),
            }
        }
        (Sent::Done, unblocked)
    }
}

#[cfg(test)]
impl OutQueue {
    /// Takes everything queued as a peer would receive it over many partial
    /// sends of odd sizes (1, 4, 13, ... bytes), checking the queue empties.
    pub(crate) fn drain_in_steps(&mut self) -> Vec<u8> {
        let mut got = Vec::new();
        let mut done = Vec::new();
        let mut step = 1;
        while self.pending() > 0 {
            // SAFETY: plain data; `iovecs` fills the entries it reports.
            let mut iov: [libc::iovec; MAX_IOV] = unsafe { std::mem::zeroed() };
            let n = self.iovecs(&mut iov);
            let mut chunk = Vec::new();
            for e in &iov[..n] {
                // SAFETY: the entries point at live queued bytes (the caller's
                // pool data outlives the queue: `push_ref`'s contract).
                let s = unsafe { std::slice::from_raw_parts(e.iov_base as *const u8, e.iov_len) };
                chunk.extend_from_slice(s);
            }
            chunk.truncate(step);
            got.extend_from_slice(&chunk);
            self.advance(chunk.len(), &mut done);
            step = step * 3 % 1999 + 1;
        }
        assert!(self.segs.is_empty() && self.bytes.is_empty());
        got
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectored_output_matches_copied_output_across_partial_sends() {
        let payloads: Vec<Vec<u8>> = (0..40usize)
            .map(|i| (0..(i * 37 % 600)).map(|j| (i + j) as u8).collect())
            .collect();
        let head = |i: usize| format!("<head {i} ").into_bytes();
        let tail = |i: usize| format!(" tail {i}>").into_bytes();
        let mut want = Vec::new();
        let mut out = OutQueue::default();
        for (i, p) in payloads.iter().enumerate() {
            want.extend(head(i));
            want.extend_from_slice(p);
            want.extend(tail(i));
            if i % 3 == 0 {
                out.push(|v| {
                    v.extend(head(i));
                    v.extend_from_slice(p);
                    v.extend(tail(i));
                });
            } else {
                // SAFETY: `payloads` outlives `out`; nothing writes to it.
                unsafe { out.push_ref(|v| v.extend(head(i)), p, |v| v.extend(tail(i))) };
            }
        }
        assert_eq!(out.pending(), want.len());
        assert_eq!(out.drain_in_steps(), want);
    }
}
