//! Transport output: iSCSI PDUs into the shared output queue
//! ([`crate::frontend::transport::OutQueue`]), flushing it (POLLOUT on a full
//! socket, the window announcement after a blocked stretch) and asking the
//! reactor's flush-and-tick poller for a flush.

use super::*;

/// Queues a whole PDU, copying its data.
pub(super) fn emit(out: &mut OutQueue, bhs: &Bhs, data: &[u8], dig: Digests) {
    out.push(|v| pdu::encode(v, bhs, data, dig));
}

/// Queues a PDU whose data segment is sent from where it lies, without a copy.
///
/// # Safety
/// As [`OutQueue::push_ref`]: `data` must lie in a pool buffer that the caller
/// passes to [`OutQueue::hold`] before anything else touches `out`.
pub(super) unsafe fn emit_ref(out: &mut OutQueue, bhs: &Bhs, data: &[u8], dig: Digests) {
    // SAFETY: the caller keeps `push_ref`'s contract (above).
    unsafe {
        out.push_ref(
            |v| pdu::encode_head(v, bhs, data.len(), dig),
            data,
            |v| pdu::encode_tail(v, data, dig),
        )
    };
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
            // Two rounds at most: the queued output, then the window announcement
            // that may follow a blocked stretch.
            for _ in 0..2 {
                let (sent, unblocked) = st.out.send(self.fd(), &mut done);
                if let Some(since) = unblocked {
                    // The socket drains again: buffers and the window open.
                    st.send_blocked_total += since.elapsed();
                    st.need_serve = true;
                }
                match sent {
                    Sent::Done => {}
                    Sent::Blocked => self.arm(&mut st, true),
                    Sent::Failed(e) => close_now = Some(format!("write failed: {e}")),
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
                if st.out.pending() > 0 && st.out.blocked_since().is_none() {
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
        Registry::mark_dirty(&self.link.reactor, self, self.rc());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pdus_sent_from_pool_buffers_match_copied_pdus() {
        let dig = Digests {
            header: true,
            data: true,
        };
        let payloads: Vec<Vec<u8>> = (0..40usize)
            .map(|i| (0..(i * 37 % 600)).map(|j| (i + j) as u8).collect())
            .collect();
        let mut want = Vec::new();
        let mut out = OutQueue::default();
        for (i, p) in payloads.iter().enumerate() {
            let mut b = Bhs::new(op::DATA_IN, 0x81);
            b.u32_at(16, i as u32);
            pdu::encode(&mut want, &b, p, dig);
            if i % 3 == 0 {
                emit(&mut out, &b, p, dig);
            } else {
                // SAFETY: `payloads` outlives `out`; nothing writes to it.
                unsafe { emit_ref(&mut out, &b, p, dig) };
            }
        }
        assert_eq!(out.drain_in_steps(), want);
    }
}
