//! Session-level requests: login (and session reinstatement), NOP-Out, text
//! (SendTargets) and logout.

use super::*;

impl Conn {
    pub(super) fn handle_login(&self, st: &mut St, p: &pdu::PduView) -> Handled {
        let b = p.bhs;
        let req = LoginReq {
            flags: b[1],
            version_max: b[2],
            version_min: b[3],
            tsih: pdu::be16(b, 14),
            data: p.data,
        };
        st.isid.copy_from_slice(&b[8..14]);
        let cmdsn = field::cmdsn(b);
        if st.tsih == 0 && st.statsn == 0 {
            st.statsn = field::exp_statsn(b);
        }
        st.exp_cmdsn = cmdsn;
        let Phase::Login(lg) = &mut st.phase else {
            return Handled::Close("login state lost".into());
        };
        let mut rng = |buf: &mut [u8]| rand::Rng::fill(&mut rand::thread_rng(), buf);
        let reply = lg.step(&req, &*self.shared, &mut rng);
        let mut status = reply.status;
        let mut tsih = 0u16;
        let mut session_type = lg.session_type;
        let mut params = lg.params.clone();
        let initiator = lg.initiator.clone();
        let target_name = lg.target.clone();
        if reply.full_feature && status == 0 {
            session_type = lg.session_type;
            params = lg.params.clone();
            if self.shared.sessions().len() >= crate::frontend::iscsi::MAX_SESSIONS {
                status = login::status::TOO_MANY_CONNECTIONS;
            } else {
                tsih = self.shared.alloc_tsih();
            }
        }
        let mut bhs = Bhs::new(
            op::LOGIN_RESP,
            if status == 0 {
                reply.flags
            } else {
                reply.flags & 0x0c
            },
        );
        bhs.0[8..14].copy_from_slice(&b[8..14]);
        pdu::put16(&mut bhs.0, 14, tsih);
        let sn = st.take_statsn();
        let max_cmdsn = cmdsn.wrapping_add(self.shared.queue_depth - 1);
        bhs.u32_at(16, field::itt(b))
            .u32_at(24, sn)
            .u32_at(28, cmdsn)
            .u32_at(32, max_cmdsn)
            .byte(36, (status >> 8) as u8)
            .byte(37, status as u8);
        let data = if reply.data.len() > 8192 {
            &reply.data[..8192]
        } else {
            &reply.data[..]
        };
        st.emit(&bhs, data);
        st.max_adv = max_cmdsn;
        if status != 0 {
            log::warn!(
                "iscsi: connection {} from {}: login of {initiator:?} to {target_name:?} failed with status {status:#06x}",
                self.id,
                self.peer
            );
            st.close_after_flush = true;
            return Handled::Done;
        }
        if !reply.full_feature {
            return Handled::Done;
        }
        // Full feature phase: digests apply from the next PDU.
        st.dig = Digests {
            header: params.header_digest,
            data: params.data_digest,
        };
        st.params = params;
        st.tsih = tsih;
        st.phase = Phase::Full(session_type);
        let isid_hex: String = st.isid.iter().map(|x| format!("{x:02x}")).collect();
        st.nexus = format!("{initiator},i,0x{isid_hex}");
        if session_type == SessionType::Normal {
            st.target = self.shared.target(&target_name);
            st.target_gen = self.shared.generation.load(Ordering::Acquire);
            self.reinstate(&initiator, &isid_hex, &target_name);
        }
        let s = Arc::new(Session {
            tsih,
            initiator: initiator.clone(),
            isid: isid_hex,
            target: target_name.clone(),
            reactor: self.reactor.id(),
            peer: self.peer.to_string(),
            conn_id: self.id,
            stats: Default::default(),
        });
        self.shared.sessions().insert(tsih, Arc::clone(&s));
        st.session = Some(s);
        log::info!(
            "iscsi: {initiator} logged in to {} (tsih {tsih}, reactor {}, {:?}, digests {:?})",
            if target_name.is_empty() {
                "discovery"
            } else {
                &target_name
            },
            self.reactor.id(),
            self.peer,
            st.dig
        );
        Handled::Done
    }

    /// Session reinstatement: an older session of the same initiator port and
    /// target is closed (RFC 7143 §6.3.5).
    pub(super) fn reinstate(&self, initiator: &str, isid: &str, target: &str) {
        let old: Vec<(usize, u64)> = self
            .shared
            .sessions()
            .values()
            .filter(|s| s.initiator == initiator && s.isid == isid && s.target == target)
            .map(|s| (s.reactor, s.conn_id))
            .collect();
        let fid = self.fid;
        let why = format!(
            "session of {initiator} (ISID 0x{isid}) to {target} reinstated by a new login on connection {}",
            self.id
        );
        for (reactor, conn_id) in old {
            if reactor == self.reactor.id() {
                let c = self
                    .reactor
                    .local::<Registry>()
                    .conns
                    .borrow()
                    .get(&(fid, conn_id))
                    .cloned();
                if let Some(c) = c {
                    if c.id != self.id {
                        c.close(&why);
                    }
                }
            } else if let Some(h) = self.reactor.peers().get(reactor) {
                let why = why.clone();
                let msg: crate::reactor::Msg = Box::new(move |r| close_conn(r, fid, conn_id, &why));
                if h.try_send(msg).is_err() {
                    log::warn!(
                        "iscsi: could not reach reactor {reactor} to close the older session of {initiator} (ISID 0x{isid}) to {target} on reinstatement"
                    );
                }
            }
        }
    }

    pub(super) fn handle_nop(&self, st: &mut St, p: &pdu::PduView) -> Handled {
        let b = p.bhs;
        if !self.take_cmdsn(st, b) {
            return Handled::Done;
        }
        let itt = field::itt(b);
        if itt == RESERVED_TAG {
            // An answer to our NOP-In, or a ping that wants no answer.
            if field::w20(b) != RESERVED_TAG {
                st.nop_sent = None;
            }
            return Handled::Done;
        }
        let n = p.data.len().min(st.params.initiator_mrdsl as usize);
        let mut r = Bhs::new(op::NOP_IN, 0x80);
        let sn = st.take_statsn();
        let max = st.max_cmdsn(self.shared.queue_depth);
        r.u64_at(8, field::lun(b))
            .u32_at(16, itt)
            .u32_at(20, RESERVED_TAG)
            .u32_at(24, sn)
            .u32_at(28, st.exp_cmdsn)
            .u32_at(32, max);
        st.emit(&r, &p.data[..n]);
        Handled::Done
    }

    pub(super) fn handle_text(&self, st: &mut St, p: &pdu::PduView) -> Handled {
        let b = p.bhs;
        if !self.take_cmdsn(st, b) {
            return Handled::Done;
        }
        let pairs = match text::parse(p.data) {
            Ok(v) => v,
            Err(e) => {
                log::warn!(
                    "iscsi: connection {}: bad text request: {e}; rejected",
                    self.id
                );
                self.reject(st, b, pdu::reject::PROTOCOL);
                return Handled::Done;
            }
        };
        let initiator = st
            .session
            .as_ref()
            .map(|s| s.initiator.clone())
            .unwrap_or_default();
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in &pairs {
            if k == "SendTargets" {
                let addr = self.local.map(|a| a.to_string()).unwrap_or_default();
                let ts = self.shared.targets();
                for (iqn, t) in ts.iter() {
                    let allowed = (t.cfg.allow.is_empty() || t.cfg.allow.contains(&initiator))
                        && !t.cfg.deny.contains(&initiator);
                    let wanted = v == "All" || v == iqn || v.is_empty();
                    if allowed && wanted {
                        out.push(("TargetName".into(), iqn.clone()));
                        out.push(("TargetAddress".into(), format!("{addr},1")));
                    }
                }
            } else {
                out.push((k.clone(), "NotUnderstood".into()));
            }
        }
        let mut data = text::serialize(&out);
        data.truncate(st.params.initiator_mrdsl as usize);
        let mut r = Bhs::new(op::TEXT_RESP, 0x80);
        let sn = st.take_statsn();
        let max = st.max_cmdsn(self.shared.queue_depth);
        r.u32_at(16, field::itt(b))
            .u32_at(20, RESERVED_TAG)
            .u32_at(24, sn)
            .u32_at(28, st.exp_cmdsn)
            .u32_at(32, max);
        st.emit(&r, &data);
        Handled::Done
    }

    pub(super) fn handle_logout(&self, st: &mut St, p: &pdu::PduView) -> Handled {
        let b = p.bhs;
        let _ = self.take_cmdsn(st, b);
        let reason = b[1] & 0x7f;
        let mut r = Bhs::new(op::LOGOUT_RESP, 0x80);
        let sn = st.take_statsn();
        let max = st.max_cmdsn(self.shared.queue_depth);
        r.byte(2, if reason <= 1 { 0 } else { 2 })
            .u32_at(16, field::itt(b))
            .u32_at(24, sn)
            .u32_at(28, st.exp_cmdsn)
            .u32_at(32, max);
        st.emit(&r, &[]);
        st.close_after_flush = true;
        Handled::Done
    }
}
