//! What goes back for a SCSI command: Data-In PDUs (phase-collapsed status in
//! the last one) and SCSI Response PDUs with sense data and residuals.

use super::*;

impl Conn {
    /// A command answered without block I/O.
    pub(super) fn finish_simple(
        &self,
        st: &mut St,
        itt: u32,
        lun_field: u64,
        edtl: u32,
        r: Response,
    ) {
        // A unit attention is news for the host, not a failed command.
        let ua = r.sense.is_some_and(|s| s.key == sense::key::UNIT_ATTENTION);
        if r.status != sense::GOOD && !ua {
            if let Some(s) = &st.session {
                s.stats.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        if r.status == sense::GOOD && !r.data.is_empty() && edtl > 0 {
            let n = (r.data.len() as u32).min(edtl);
            let resid = residual(r.data.len() as u32, edtl);
            self.send_data_in(st, itt, lun_field, &r.data[..n as usize], Some(resid));
            return;
        }
        let resid = if r.status == sense::GOOD {
            residual(r.data.len() as u32, edtl)
        } else {
            residual(0, edtl)
        };
        self.respond(st, itt, r.status, r.sense, resid);
    }

    /// Data-In PDUs for `data`; with `status_resid`, the last one carries GOOD
    /// status and the residual.
    pub(super) fn send_data_in(
        &self,
        st: &mut St,
        itt: u32,
        lun_field: u64,
        data: &[u8],
        status_resid: Option<(u8, u32)>,
    ) {
        self.data_in_pdus(st, itt, lun_field, data, status_resid, false);
    }

    /// Data-In PDUs for the first `len` bytes of a pool buffer, sent from the
    /// buffer itself (no copy); the output queue keeps the buffer until then.
    pub(super) fn send_data_in_buf(
        &self,
        st: &mut St,
        itt: u32,
        lun_field: u64,
        buf: PoolBuf,
        len: usize,
        status_resid: Option<(u8, u32)>,
    ) {
        let data = &buf.bytes()[..len];
        self.data_in_pdus(st, itt, lun_field, data, status_resid, true);
        st.out.hold(buf);
    }

    /// Queues the Data-In PDUs of `data`; with `by_ref`, `data` lies in a pool
    /// buffer that the caller hands to `OutQueue::hold` right after.
    pub(super) fn data_in_pdus(
        &self,
        st: &mut St,
        itt: u32,
        lun_field: u64,
        data: &[u8],
        status_resid: Option<(u8, u32)>,
        by_ref: bool,
    ) {
        let mrdsl = st.params.initiator_mrdsl.max(512) as usize;
        let burst = st.params.max_burst.max(512) as usize;
        let mut off = 0usize;
        let mut datasn = 0u32;
        while off < data.len() || (off == 0 && data.is_empty()) {
            let burst_left = burst - (off % burst);
            let n = (data.len() - off).min(mrdsl).min(burst_left);
            let last = off + n >= data.len();
            let mut flags = 0u8;
            if last || (off + n).is_multiple_of(burst) {
                flags |= 0x80;
            }
            let mut b = Bhs::new(op::DATA_IN, 0);
            let exp = st.exp_cmdsn;
            if last {
                if let Some((rf, rc)) = status_resid {
                    flags |= 0x01 | rf;
                    let sn = st.take_statsn();
                    b.u32_at(24, sn).u32_at(44, rc);
                } else {
                    b.u32_at(24, 0);
                }
            }
            let max = st.max_cmdsn(self.shared.queue_depth);
            b.0[1] = flags;
            b.u64_at(8, lun_field)
                .u32_at(16, itt)
                .u32_at(20, RESERVED_TAG)
                .u32_at(28, exp)
                .u32_at(32, max)
                .u32_at(36, datasn)
                .u32_at(40, off as u32);
            let chunk = &data[off..off + n];
            if by_ref {
                // SAFETY: `by_ref` callers pass bytes of a pool buffer and hold it in
                // the queue right after this loop (send_data_in_buf).
                unsafe { output::emit_ref(&mut st.out, &b, chunk, st.dig) };
            } else {
                st.emit(&b, chunk);
            }
            datasn += 1;
            off += n;
            if data.is_empty() {
                break;
            }
        }
    }

    /// A SCSI Response PDU. `resid` is (flags, count) with flags 0x02 underflow or
    /// 0x04 overflow.
    pub(super) fn respond(
        &self,
        st: &mut St,
        itt: u32,
        status: u8,
        s: Option<Sense>,
        resid: (u8, u32),
    ) {
        let mut b = Bhs::new(op::SCSI_RESP, 0x80 | resid.0);
        let sn = st.take_statsn();
        let max = st.max_cmdsn(self.shared.queue_depth);
        b.byte(3, status)
            .u32_at(16, itt)
            .u32_at(24, sn)
            .u32_at(28, st.exp_cmdsn)
            .u32_at(32, max)
            .u32_at(44, resid.1);
        match s {
            Some(s) => {
                let f = s.to_fixed();
                let mut d = Vec::with_capacity(2 + f.len());
                d.extend_from_slice(&(f.len() as u16).to_be_bytes());
                d.extend_from_slice(&f);
                st.emit(&b, &d);
            }
            None => st.emit(&b, &[]),
        }
    }
}
