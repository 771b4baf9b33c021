//! Transport input: the POLLIN poll, nonblocking reads into the receive buffer,
//! PDU parsing in place, and resuming after a stall.

use super::*;

impl Conn {
    pub(super) fn arm(&self, st: &mut St, out: bool) {
        if st.closed {
            return;
        }
        let armed = if out {
            &mut st.poll_out
        } else {
            &mut st.poll_in
        };
        if *armed {
            return;
        }
        let Some(me) = self.rc() else { return };
        *armed = true;
        let mask = if out {
            libc::POLLOUT
        } else {
            libc::POLLIN | libc::POLLRDHUP
        };
        let e = opcode::PollAdd::new(types::Fd(self.fd()), mask as u32).build();
        // SAFETY: a poll references no memory; the registration holds an Rc to
        // this connection, which owns the socket, so the fd outlives the poll.
        unsafe {
            self.reactor
                .uring_push(e, me, if out { TAG_POLLOUT } else { TAG_POLLIN })
        };
    }

    pub(super) fn on_readable(&self) {
        let mut why: Option<String> = None;
        {
            let mut st = self.st.borrow_mut();
            if st.closed {
                return;
            }
            for _ in 0..READS_PER_EVENT {
                if st.pending_out() > WBUF_HIGH_BYTES || st.close_after_flush {
                    break;
                }
                let cap = st.rbuf.len();
                let rlen = st.rlen;
                if rlen == cap {
                    // A full buffer always holds a complete PDU (it is sized for the
                    // largest one accepted), so this only happens when parsing stalled.
                    break;
                }
                // SAFETY: reads into the unused tail of a buffer we own exclusively.
                let n = unsafe {
                    libc::read(
                        self.fd(),
                        st.rbuf.as_mut_ptr().add(rlen) as *mut libc::c_void,
                        cap - rlen,
                    )
                };
                if n > 0 {
                    st.rlen += n as usize;
                    st.last_rx = Instant::now();
                    st.nop_sent = None;
                    if let Err(w) = self.process(&mut st) {
                        why = Some(w);
                        break;
                    }
                    if (n as usize) < cap - rlen {
                        // A short read drained the socket: wait for more with the
                        // poll armed below instead of a read that would say EAGAIN.
                        break;
                    }
                    continue;
                }
                if n == 0 {
                    why = Some("peer closed the connection".into());
                    break;
                }
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => {
                        self.arm(&mut st, false);
                        break;
                    }
                    Some(libc::EINTR) => continue,
                    _ => {
                        why = Some(format!("read failed: {e}"));
                        break;
                    }
                }
            }
            if why.is_none() && !st.poll_in && st.pending_out() <= WBUF_HIGH_BYTES {
                // The batch ended with data possibly left in the socket: come back.
                self.arm(&mut st, false);
            }
            if why.is_none() {
                self.after(&mut st);
            }
        }
        match why {
            Some(w) => self.close(&w),
            None => self.flush(),
        }
    }

    /// Parses and handles every complete PDU in the receive buffer.
    pub(super) fn process(&self, st: &mut St) -> Result<(), String> {
        let rbuf = std::mem::take(&mut st.rbuf);
        let res = self.process_buf(st, &rbuf);
        st.rbuf = rbuf;
        let consumed = res?;
        if consumed > 0 {
            st.rbuf.copy_within(consumed..st.rlen, 0);
            st.rlen -= consumed;
        }
        Ok(())
    }

    pub(super) fn process_buf(&self, st: &mut St, rbuf: &[u8]) -> Result<usize, String> {
        let mut pos = 0;
        let max_data = match st.phase {
            Phase::Login(_) => 8192usize.max(st.params.target_mrdsl as usize),
            Phase::Full(_) => st.params.target_mrdsl as usize,
        };
        while pos < st.rlen && !st.closed && !st.close_after_flush {
            let dig = st.dig;
            let buf = &rbuf[pos..st.rlen];
            match pdu::parse(buf, dig, max_data) {
                Ok(Parsed::Need(_)) => break,
                Ok(Parsed::Pdu(p)) => match self.handle(st, &p) {
                    Handled::Done => pos += p.wire_len,
                    Handled::Close(w) => return Err(w),
                },
                Err(pdu::PduError::DataDigest { got, want }) => {
                    let bhs: &[u8; BHS_LEN] = buf[..BHS_LEN].try_into().expect("48 bytes");
                    let len = pdu::wire_len(bhs, dig, max_data).map_err(|e| e.to_string())?;
                    log::warn!(
                        "iscsi: connection {}: data digest error (got {got:#x}, want {want:#x}) on opcode {:#x}; rejected",
                        self.id,
                        pdu::opcode(bhs)
                    );
                    if pdu::opcode(bhs) == op::DATA_OUT {
                        return Err("data digest error on Data-Out".into());
                    }
                    self.reject(st, bhs, pdu::reject::DATA_DIGEST);
                    if pdu::opcode(bhs) == op::SCSI_CMD
                        && !pdu::immediate(bhs)
                        && self.cmdsn_in_window(st, bhs)
                    {
                        // The command is dropped; its CmdSN is consumed so the window moves.
                        Self::consume_cmdsn(st, bhs);
                    }
                    pos += len;
                }
                Err(e) => return Err(format!("bad PDU: {e}")),
            }
        }
        Ok(pos)
    }

    pub(super) fn reject(&self, st: &mut St, bhs: &[u8; BHS_LEN], reason: u8) {
        let mut b = Bhs::new(op::REJECT, 0x80);
        let sn = st.take_statsn();
        let max = st.max_cmdsn(self.shared.queue_depth);
        b.byte(2, reason)
            .u32_at(16, RESERVED_TAG)
            .u32_at(24, sn)
            .u32_at(28, st.exp_cmdsn)
            .u32_at(32, max);
        st.emit(&b, bhs);
    }

    /// Resumes reading after a stall (buffer arrived or output drained).
    pub(super) fn resume(&self) {
        let was_paused = {
            let st = self.st.borrow();
            !st.closed && !st.poll_in
        };
        if was_paused {
            {
                let mut st = self.st.borrow_mut();
                if let Err(w) = self.process(&mut st) {
                    drop(st);
                    self.close(&w);
                    return;
                }
            }
            self.on_readable();
        } else {
            self.flush();
        }
    }
}
