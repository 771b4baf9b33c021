//! Session-level requests: login (and session reinstatement), NOP-Out, text
//! (SendTargets) and logout.

use super::*;

/// One login step's outcome, as the connection answers and acts on it.
struct LoginStep {
    /// What the login state machine answered.
    reply: login::LoginReply,
    /// The response's status (the reply's, or TOO MANY CONNECTIONS).
    status: u16,
    /// The new session's TSIH (0 before the last step).
    tsih: u16,
    session_type: SessionType,
    params: Params,
    initiator: String,
    target: String,
}

impl Conn {
    /// A Login Request: one step of the login; the response, and on the last
    /// step the session (full feature phase).
    pub(super) fn handle_login(&self, st: &mut St, p: &pdu::PduView) -> Handled {
        let b = p.bhs;
        st.isid.copy_from_slice(&b[8..14]);
        if st.tsih == 0 && st.statsn == 0 {
            st.statsn = field::exp_statsn(b);
        }
        st.exp_cmdsn = field::cmdsn(b);
        let Some(step) = self.login_step(st, p) else {
            return Handled::Close("login state lost".into());
        };
        self.send_login_resp(st, b, &step);
        if step.status != 0 {
            log::warn!(
                "iscsi: connection {} from {}: login of {:?} to {:?} failed with status {:#06x}",
                self.link.id,
                self.link.peer,
                step.initiator,
                step.target,
                step.status
            );
            st.close_after_flush = true;
            return Handled::Done;
        }
        if step.reply.full_feature {
            self.start_session(st, step);
        }
        Handled::Done
    }

    /// Runs the login state machine on a request; with the last step, a TSIH
    /// for the new session (or TOO MANY CONNECTIONS). None without a login.
    fn login_step(&self, st: &mut St, p: &pdu::PduView) -> Option<LoginStep> {
        let b = p.bhs;
        let req = LoginReq {
            flags: b[1],
            version_max: b[2],
            version_min: b[3],
            tsih: pdu::be16(b, 14),
            data: p.data,
        };
        let Phase::Login(lg) = &mut st.phase else {
            return None;
        };
        let mut rng = |buf: &mut [u8]| rand::Rng::fill(&mut rand::thread_rng(), buf);
        let reply = lg.step(&req, &*self.shared, &mut rng);
        let mut step = LoginStep {
            status: reply.status,
            tsih: 0,
            session_type: lg.session_type,
            params: lg.params.clone(),
            initiator: lg.initiator.clone(),
            target: lg.target.clone(),
            reply,
        };
        if step.reply.full_feature && step.status == 0 {
            if self.shared.sessions().len() >= crate::frontend::iscsi::MAX_SESSIONS {
                step.status = login::status::TOO_MANY_CONNECTIONS;
            } else {
                step.tsih = self.shared.alloc_tsih();
            }
        }
        Some(step)
    }

    /// The Login Response to request `b` (at most 8 KiB of keys).
    fn send_login_resp(&self, st: &mut St, b: &[u8; BHS_LEN], step: &LoginStep) {
        let (status, cmdsn) = (step.status, st.exp_cmdsn);
        let flags = if status == 0 {
            step.reply.flags
        } else {
            step.reply.flags & 0x0c
        };
        let mut bhs = Bhs::new(op::LOGIN_RESP, flags);
        bhs.0[8..14].copy_from_slice(&b[8..14]);
        pdu::put16(&mut bhs.0, 14, step.tsih);
        let sn = st.take_statsn();
        let max_cmdsn = cmdsn.wrapping_add(self.shared.queue_depth - 1);
        bhs.u32_at(16, field::itt(b))
            .u32_at(24, sn)
            .u32_at(28, cmdsn)
            .u32_at(32, max_cmdsn)
            .byte(36, (status >> 8) as u8)
            .byte(37, status as u8);
        let data = &step.reply.data[..step.reply.data.len().min(8192)];
        st.emit(&bhs, data);
        st.max_adv = max_cmdsn;
    }

    /// The login completed: the full feature phase with its parameters, the
    /// session registered (an older one of the same I_T nexus reinstated).
    fn start_session(&self, st: &mut St, step: LoginStep) {
        let LoginStep {
            tsih,
            session_type,
            params,
            initiator,
            target: target_name,
            ..
        } = step;
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
            reactor: self.link.reactor.id(),
            peer: self.link.peer.to_string(),
            conn_id: self.link.id,
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
            self.link.reactor.id(),
            self.link.peer,
            st.dig
        );
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
        let fid = self.link.fid;
        let why = format!(
            "session of {initiator} (ISID 0x{isid}) to {target} reinstated by a new login on connection {}",
            self.link.id
        );
        for (reactor, conn_id) in old {
            if reactor == self.link.reactor.id() {
                let c = self
                    .link
                    .reactor
                    .local::<Registry>()
                    .conns
                    .borrow()
                    .get(&(fid, conn_id))
                    .cloned();
                if let Some(c) = c {
                    if c.link.id != self.link.id {
                        c.close(&why);
                    }
                }
            } else if let Some(h) = self.link.reactor.peers().get(reactor) {
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
                    self.link.id
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
                let addr = self.link.local.map(|a| a.to_string()).unwrap_or_default();
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
