//! Task management functions: ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LUN
//! RESET, TARGET WARM/COLD RESET.

use super::*;

impl Conn {
    pub(super) fn handle_tmf(&self, st: &mut St, p: &pdu::PduView) -> Handled {
        let b = p.bhs;
        let _ = self.take_cmdsn(st, b);
        let func = b[1] & 0x7f;
        let ref_itt = field::w20(b);
        let lun_no = cdb::decode_lun_field(field::lun(b));
        self.refresh_target(st);
        let lun_exists = st
            .target
            .as_ref()
            .is_some_and(|t| t.luns.contains_key(&lun_no));
        let resp: u8 = match func {
            // ABORT TASK
            1 => match st.itts.get(&ref_itt).copied() {
                Some(key) => {
                    self.abort_task(st, key);
                    0
                }
                None => 1,
            },
            // ABORT TASK SET, CLEAR TASK SET, LOGICAL UNIT RESET
            2 | 3 | 5 => {
                if !lun_exists {
                    2
                } else {
                    let keys: Vec<usize> = st
                        .itts
                        .values()
                        .copied()
                        .filter(|k| st.tasks[*k].scsi.lun.info.lun == lun_no)
                        .collect();
                    for k in keys {
                        self.abort_task(st, k);
                    }
                    if func == 5 {
                        if let Some(t) = &st.target {
                            if let Some(l) = t.luns.get(&lun_no) {
                                l.reset();
                            }
                        }
                        if let Some(ns) = st.nexus_state.get_mut(&lun_no) {
                            ns.prevent = false;
                        }
                    }
                    0
                }
            }
            // TARGET WARM RESET, TARGET COLD RESET
            6 | 7 => {
                let keys: Vec<usize> = st.itts.values().copied().collect();
                for k in keys {
                    self.abort_task(st, k);
                }
                if let Some(t) = &st.target {
                    for l in t.luns.values() {
                        l.reset();
                    }
                }
                for ns in st.nexus_state.values_mut() {
                    ns.prevent = false;
                }
                if func == 7 {
                    st.close_after_flush = true;
                }
                0
            }
            // CLEAR ACA, TASK REASSIGN: not supported at ErrorRecoveryLevel 0.
            4 => 5,
            8 => 4,
            _ => 5,
        };
        let mut r = Bhs::new(op::TMF_RESP, 0x80);
        let sn = st.take_statsn();
        let max = st.max_cmdsn(self.shared.queue_depth);
        r.byte(2, resp)
            .u32_at(16, field::itt(b))
            .u32_at(24, sn)
            .u32_at(28, st.exp_cmdsn)
            .u32_at(32, max);
        st.emit(&r, &[]);
        Handled::Done
    }

    pub(super) fn abort_task(&self, st: &mut St, key: usize) {
        let itt = st.tasks[key].itt;
        st.itts.remove(&itt);
        self.forget_parked(st, key);
        if st.tasks[key].scsi.inflight() == 0 {
            let t = st.tasks.remove(key);
            self.release(st, t);
        } else {
            st.tasks[key].aborted = true;
            st.tasks[key].orphan = true;
        }
    }
}
