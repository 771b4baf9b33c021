//! A connection's receive buffer: nonblocking reads into a fixed buffer sized
//! for the largest PDU the connection accepts; the frontend parses whole PDUs
//! in place and the unparsed rest moves to the front.

use std::os::fd::RawFd;

/// Most `read` calls per readiness event.
pub(crate) const READS_PER_EVENT: usize = 16;

/// The receive buffer of a connection.
#[derive(Default)]
pub(crate) struct RecvBuf {
    buf: Vec<u8>,
    /// Bytes received and not consumed, from the front.
    len: usize,
}

impl RecvBuf {
    /// A buffer of `cap` bytes.
    pub(crate) fn new(cap: usize) -> RecvBuf {
        RecvBuf {
            buf: vec![0u8; cap],
            len: 0,
        }
    }

    /// The received bytes not consumed yet.
    pub(crate) fn data(&self) -> &[u8] {
        &self.buf[..self.len.min(self.buf.len())]
    }

    /// Drops the buffer (a closed connection keeps none).
    pub(crate) fn release(&mut self) {
        self.buf = Vec::new();
    }

    /// Drops the first `n` received bytes, moving the rest to the front.
    pub(crate) fn consume(&mut self, n: usize) {
        if n == 0 || self.buf.is_empty() {
            return;
        }
        let n = n.min(self.len);
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
    }

    /// One nonblocking read into the free tail; `Ok(0)` at end of stream.
    fn read_once(&mut self, fd: RawFd) -> std::io::Result<usize> {
        let free = self.buf.len() - self.len;
        // SAFETY: reads at most `free` bytes into the unused tail of a buffer
        // this queue owns exclusively (`len <= buf.len()`).
        let n = unsafe {
            libc::read(
                fd,
                self.buf.as_mut_ptr().add(self.len) as *mut libc::c_void,
                free,
            )
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.len += n as usize;
        Ok(n as usize)
    }

    /// Reads from `fd` into the receive buffer in `st` (found by `rx`) at most
    /// [`READS_PER_EVENT`] times, calling `got` after every read that brought
    /// bytes (it parses and handles them). Before each read, `stop` may end the
    /// batch (too much output queued, the connection closing). A read that does
    /// not fill the free space drained the socket and ends the batch. `Err` is
    /// why the connection must close: the first error `got` returned, `eof` at
    /// the end of the stream, or the socket's error.
    pub(crate) fn read_batch<S>(
        fd: RawFd,
        st: &mut S,
        eof: &str,
        rx: impl Fn(&mut S) -> &mut RecvBuf,
        stop: impl Fn(&S) -> bool,
        mut got: impl FnMut(&mut S) -> Result<(), String>,
    ) -> Result<(), String> {
        for _ in 0..READS_PER_EVENT {
            if stop(st) {
                break;
            }
            let r = rx(st);
            let free = r.buf.len() - r.len;
            if free == 0 {
                // A full buffer always holds a complete PDU (it is sized for the
                // largest one accepted), so this only happens when parsing stalled.
                break;
            }
            match r.read_once(fd) {
                Ok(0) => return Err(eof.to_string()),
                Ok(n) => {
                    got(st)?;
                    if n < free {
                        // A short read drained the socket: wait for more with a
                        // poll instead of a read that would say EAGAIN.
                        break;
                    }
                }
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => break,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn reads_until_drained_and_consumes_from_the_front() {
        let (mut a, b) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        b.set_nonblocking(true).expect("nonblocking");
        a.write_all(b"hello world").expect("write");
        let mut rx = RecvBuf::new(8);
        let mut seen = Vec::new();
        RecvBuf::read_batch(
            b.as_raw_fd(),
            &mut rx,
            "eof",
            |r| r,
            |_| false,
            |r| {
                seen.push(r.data().to_vec());
                let n = r.data().len().min(5);
                r.consume(n);
                Ok(())
            },
        )
        .expect("no handler error");
        // 8 bytes fill the buffer, 5 are consumed, then 3 more arrive (a short
        // read of the remaining 3 of 11 ends the batch).
        assert_eq!(seen, vec![b"hello wo".to_vec(), b" world".to_vec()]);
        assert_eq!(rx.data(), b"d");
        let mut calls = 0;
        let mut batch = |rx: &mut RecvBuf| {
            RecvBuf::read_batch(
                b.as_raw_fd(),
                rx,
                "eof",
                |r| r,
                |_| false,
                |_| {
                    calls += 1;
                    Ok(())
                },
            )
        };
        // Nothing to read (EAGAIN): no call, no error.
        assert_eq!(batch(&mut rx), Ok(()));
        drop(a);
        assert_eq!(batch(&mut rx), Err("eof".to_string()));
        assert_eq!(calls, 0);
        assert_eq!(rx.data(), b"d");
    }
}
