//! Transport output: the output queue (headers and small data copied, read
//! data sent from its pool buffer), vectored nonblocking sends, POLLOUT on a
//! full socket, and the per-reactor poller that flushes connections with new
//! output every iteration and ticks every connection once a second.

use super::*;

/// A run of queued output bytes.
enum Seg {
    /// The next `len` unsent bytes of [`Out::bytes`].
    Inline(usize),
    /// `len` bytes at `ptr`, inside a pool buffer in [`Out::held`].
    Pool { ptr: *const u8, len: usize },
}

/// The output queue of a connection.
#[derive(Default)]
pub(super) struct Out {
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
}

impl Out {
    /// An empty queue with room for 64 KiB of headers.
    pub(super) fn new() -> Out {
        Out {
            bytes: Vec::with_capacity(64 << 10),
            ..Out::default()
        }
    }

    pub(super) fn pending(&self) -> usize {
        (self.queued - self.sent) as usize
    }

    /// Accounts for the bytes appended to `bytes` since it was `start` long.
    pub(super) fn push_inline(&mut self, start: usize) {
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

    /// Queues a whole PDU, copying its data.
    pub(super) fn emit(&mut self, bhs: &Bhs, data: &[u8], dig: Digests) {
        let start = self.bytes.len();
        pdu::encode(&mut self.bytes, bhs, data, dig);
        self.push_inline(start);
    }

    /// Queues a PDU whose data segment is sent from where it lies, without a copy.
    ///
    /// # Safety
    /// `data` must lie in a pool buffer that the caller passes to [`Out::hold`]
    /// before anything else touches this queue (so it stays allocated, and is not
    /// written, until its bytes are sent or the queue is discarded).
    pub(super) unsafe fn emit_ref(&mut self, bhs: &Bhs, data: &[u8], dig: Digests) {
        let start = self.bytes.len();
        pdu::encode_head(&mut self.bytes, bhs, data.len(), dig);
        self.push_inline(start);
        if !data.is_empty() {
            self.queued += data.len() as u64;
            self.segs.push_back(Seg::Pool {
                ptr: data.as_ptr(),
                len: data.len(),
            });
        }
        let start = self.bytes.len();
        pdu::encode_tail(&mut self.bytes, data, dig);
        self.push_inline(start);
    }

    /// Keeps `buf` until the bytes queued so far are sent.
    pub(super) fn hold(&mut self, buf: PoolBuf) {
        self.held.push_back((self.queued, buf));
    }

    /// Fills `iov` with the front of the queue; returns how many entries it used.
    pub(super) fn iovecs(&self, iov: &mut [libc::iovec; MAX_IOV]) -> usize {
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
    pub(super) fn advance(&mut self, mut n: usize, done: &mut Vec<PoolBuf>) {
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
                self.bytes.shrink_to(64 << 10);
            }
        } else if self.pos > (1 << 20) {
            self.bytes.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Drops everything queued; returns the held pool buffers.
    pub(super) fn discard(&mut self, done: &mut Vec<PoolBuf>) {
        self.segs.clear();
        self.bytes.clear();
        self.pos = 0;
        self.sent = self.queued;
        done.extend(self.held.drain(..).map(|(_, b)| b));
    }
}

/// Runs every reactor iteration: flushes the connections with new output, and
/// once a second looks at every connection (login timeout, NOP-In keep-alive).
pub(super) struct FlushAndTick {
    reactor: Weak<Reactor>,
    /// This reactor's registry (held directly: this runs every loop iteration).
    reg: Rc<Registry>,
    next: Cell<Instant>,
    /// The dirty list being flushed, swapped with the registry's so neither
    /// list is reallocated per iteration.
    batch: RefCell<Vec<Rc<Conn>>>,
}

impl FlushAndTick {
    pub(super) fn new(r: &Rc<Reactor>, reg: &Rc<Registry>) -> FlushAndTick {
        FlushAndTick {
            reactor: Rc::downgrade(r),
            reg: Rc::clone(reg),
            next: Cell::new(Instant::now() + KEEPALIVE_TICK),
            batch: RefCell::new(Vec::new()),
        }
    }
}

impl Poller for FlushAndTick {
    fn poll(&self, now: Instant) -> usize {
        let mut flushed = 0;
        if !self.reg.dirty.borrow().is_empty() {
            let mut batch = self.batch.take();
            std::mem::swap(&mut batch, &mut *self.reg.dirty.borrow_mut());
            flushed = batch.len();
            for c in batch.drain(..) {
                c.dirty.set(false);
                c.flush();
            }
            *self.batch.borrow_mut() = batch;
        }
        if now < self.next.get() {
            return flushed;
        }
        let Some(r) = self.reactor.upgrade() else {
            return flushed;
        };
        self.next.set(now + KEEPALIVE_TICK);
        let conns: Vec<Rc<Conn>> = r
            .local::<Registry>()
            .conns
            .borrow()
            .values()
            .cloned()
            .collect();
        for c in conns {
            c.tick(now);
        }
        flushed
    }
    fn next_deadline(&self) -> Option<Instant> {
        Some(self.next.get())
    }
}

impl Conn {
    /// Writes queued output; arms POLLOUT when the socket is full.
    pub(super) fn flush(&self) {
        let mut close_now = None;
        let mut done = Vec::new();
        {
            let mut st = self.st.borrow_mut();
            if st.closed {
                return;
            }
            std::mem::swap(&mut done, &mut st.spare);
            // SAFETY: iovec is plain data; every entry used is filled by `iovecs`.
            let mut iov: [libc::iovec; MAX_IOV] = unsafe { std::mem::zeroed() };
            // Two rounds at most: the queued output, then the window announcement
            // that may follow a blocked stretch.
            for _ in 0..2 {
                while st.out.pending() > 0 {
                    let n_iov = st.out.iovecs(&mut iov);
                    // SAFETY: a zeroed msghdr is valid (no address, no control data).
                    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
                    msg.msg_iov = iov.as_mut_ptr();
                    msg.msg_iovlen = n_iov as _;
                    // SAFETY: every iovec points at queued bytes: either inside
                    // `out.bytes` (not modified while `st` is borrowed here) or inside a
                    // pool buffer that `out.held` keeps until those bytes are sent
                    // (`Out::emit_ref`'s contract). The call is synchronous, so nothing
                    // refers to the iovecs after it returns. MSG_NOSIGNAL avoids SIGPIPE.
                    let n = unsafe {
                        libc::sendmsg(self.fd(), &msg, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT)
                    };
                    if n > 0 {
                        st.out.advance(n as usize, &mut done);
                        if let Some(since) = st.send_blocked_since.take() {
                            // The socket drains again: buffers and the window open.
                            st.send_blocked_total += since.elapsed();
                            st.need_serve = true;
                        }
                        continue;
                    }
                    let e = std::io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EAGAIN) => {
                            if st.send_blocked_since.is_none() {
                                st.send_blocked_since = Some(Instant::now());
                            }
                            self.arm(&mut st, true);
                            break;
                        }
                        Some(libc::EINTR) => continue,
                        _ => {
                            close_now = Some(format!("write failed: {e}"));
                            break;
                        }
                    }
                }
                if st.out.pending() > 0 || close_now.is_some() || !st.window_stale {
                    break;
                }
                // PDUs queued while blocked carried a frozen MaxCmdSN: announce the
                // open window with a NOP-In that wants no answer (RFC 7143 §11.19).
                st.window_stale = false;
                if matches!(st.phase, Phase::Full(_)) {
                    st.emit_nop_in(RESERVED_TAG, self.shared.queue_depth);
                }
            }
            if st.out.pending() == 0 && st.close_after_flush && close_now.is_none() {
                close_now = Some("logged out".into());
            }
            for b in done.drain(..) {
                self.put_buf(&mut st, b);
            }
            std::mem::swap(&mut done, &mut st.spare);
            if close_now.is_none() {
                self.after(&mut st);
                // Tasks unparked by the buffers this flush freed may have queued
                // R2Ts or Data-In: send them on the next pass, not at the next tick
                // (a blocked socket's POLLOUT resumes it by itself).
                if st.out.pending() > 0 && st.send_blocked_since.is_none() {
                    self.mark_dirty();
                }
            }
        }
        if let Some(w) = close_now {
            self.close(&w);
        }
    }

    /// Asks for a flush at the end of this reactor iteration.
    pub(super) fn mark_dirty(&self) {
        if self.dirty.replace(true) {
            return;
        }
        match self.rc() {
            Some(me) => self.reactor.local::<Registry>().dirty.borrow_mut().push(me),
            None => self.dirty.set(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes `iovecs` would send next, up to `max`.
    fn next_bytes(out: &Out, max: usize) -> Vec<u8> {
        // SAFETY: plain data; `iovecs` fills the entries it reports.
        let mut iov: [libc::iovec; MAX_IOV] = unsafe { std::mem::zeroed() };
        let n = out.iovecs(&mut iov);
        let mut v = Vec::new();
        for e in &iov[..n] {
            // SAFETY: the entries point at live queued bytes (the test's data
            // vectors outlive the queue).
            let s = unsafe { std::slice::from_raw_parts(e.iov_base as *const u8, e.iov_len) };
            v.extend_from_slice(s);
        }
        v.truncate(max);
        v
    }

    #[test]
    fn vectored_output_matches_copied_output_across_partial_sends() {
        let dig = Digests {
            header: true,
            data: true,
        };
        let payloads: Vec<Vec<u8>> = (0..40usize)
            .map(|i| (0..(i * 37 % 600)).map(|j| (i + j) as u8).collect())
            .collect();
        let mut want = Vec::new();
        let mut out = Out::default();
        for (i, p) in payloads.iter().enumerate() {
            let mut b = Bhs::new(op::DATA_IN, 0x81);
            b.u32_at(16, i as u32);
            pdu::encode(&mut want, &b, p, dig);
            if i % 3 == 0 {
                out.emit(&b, p, dig);
            } else {
                // SAFETY: `payloads` outlives `out`; nothing writes to it.
                unsafe { out.emit_ref(&b, p, dig) };
            }
        }
        assert_eq!(out.pending(), want.len());
        let mut got = Vec::new();
        let mut done = Vec::new();
        let mut step = 1;
        while out.pending() > 0 {
            let chunk = next_bytes(&out, step);
            got.extend_from_slice(&chunk);
            out.advance(chunk.len(), &mut done);
            step = step * 3 % 1999 + 1;
        }
        assert_eq!(got, want);
        assert!(out.segs.is_empty() && out.bytes.is_empty());
    }
}
