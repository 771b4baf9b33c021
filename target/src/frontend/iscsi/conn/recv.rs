//! Transport input: the POLLIN poll, read batches into the receive buffer
//! ([`crate::frontend::transport::RecvBuf`]), PDU parsing in place, and resuming
//! after a stall.

use super::*;

impl Conn {
    /// Arms POLLOUT (`out`) or POLLIN unless armed or closed.
    pub(super) fn arm(&self, st: &mut St, out: bool) {
        if st.closed {
            return;
        }
        if let Some(me) = self.rc() {
            st.polls.arm(&self.link.reactor, self.fd(), me, out);
        }
    }

    /// Reads a batch from the socket and handles the PDUs that arrived.
    pub(super) fn on_readable(&self) {
        let res = {
            let mut st = self.st.borrow_mut();
            if st.closed {
                return;
            }
            let res = RecvBuf::read_batch(
                self.fd(),
                &mut *st,
                "peer closed the connection",
                |st| &mut st.rx,
                |st| st.pending_out() > WBUF_HIGH_BYTES || st.close_after_flush,
                |st| {
                    st.last_rx = Instant::now();
                    st.nop_sent = None;
                    self.process(st)
                },
            );
            if res.is_ok() {
                // Not after a Logout (or a failed login): nothing more is read
                // until the output drains and the connection closes, and a read
                // poll would fire at once on the initiator's next bytes or its
                // close, and again after every re-arm (a spinning reactor).
                if !st.close_after_flush && st.pending_out() <= WBUF_HIGH_BYTES {
                    // Data may be left in the socket, or more comes: come back.
                    self.arm(&mut st, false);
                }
                self.after(&mut st);
            }
            res
        };
        match res {
            Ok(()) => self.flush(),
            Err(w) => self.close(&w),
        }
    }

    /// Parses and handles every complete PDU in the receive buffer.
    pub(super) fn process(&self, st: &mut St) -> Result<(), String> {
        let rx = std::mem::take(&mut st.rx);
        let res = self.process_buf(st, rx.data());
        st.rx = rx;
        st.rx.consume(res?);
        Ok(())
    }

    pub(super) fn process_buf(&self, st: &mut St, rbuf: &[u8]) -> Result<usize, String> {
        let mut pos = 0;
        let max_data = match st.phase {
            Phase::Login(_) => 8192usize.max(st.params.target_mrdsl as usize),
            Phase::Full(_) => st.params.target_mrdsl as usize,
        };
        while pos < rbuf.len() && !st.closed && !st.close_after_flush {
            let dig = st.dig;
            let buf = &rbuf[pos..];
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
                        self.link.id,
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

    /// Reading stalled and may resume ([`Wire::resume`]): not closed, and not
    /// closing after its output drains (nothing more is read then).
    pub(super) fn may_resume(&self) -> bool {
        let st = self.st.borrow();
        !st.closed && !st.polls.read && !st.close_after_flush
    }
}
