//! The login phase (RFC 7143 §6.3, §11.12–11.13) as pure logic: stages (security →
//! operational → full feature), the session type, the target and initiator names,
//! the access list, CHAP and the operational keys. The connection feeds it login
//! requests and sends back what it answers; nothing here touches a socket.

use super::chap;
use super::config::ChapConfig;
use super::text::{self, Limits, Params};

/// Security negotiation stage.
pub const STAGE_SECURITY: u8 = 0;
/// Login operational negotiation stage.
pub const STAGE_OPERATIONAL: u8 = 1;
/// Full feature phase.
pub const STAGE_FULL: u8 = 3;
/// Most bytes of login text gathered across continued (C bit) requests.
pub const MAX_LOGIN_TEXT_BYTES: usize = 64 << 10;

/// Login status class/detail (RFC 7143 §11.13.5), as one u16.
pub mod status {
    /// Success.
    pub const SUCCESS: u16 = 0x0000;
    /// Initiator error (miscellaneous).
    pub const INITIATOR_ERROR: u16 = 0x0200;
    /// Authentication failure.
    pub const AUTH_FAILED: u16 = 0x0201;
    /// Authorization failure.
    pub const FORBIDDEN: u16 = 0x0202;
    /// Target not found.
    pub const NOT_FOUND: u16 = 0x0203;
    /// Missing parameter.
    pub const MISSING_PARAMETER: u16 = 0x0207;
    /// Session does not exist.
    pub const NO_SESSION: u16 = 0x020a;
    /// Invalid request during login.
    pub const INVALID_REQUEST: u16 = 0x020b;
    /// Unsupported version.
    pub const UNSUPPORTED_VERSION: u16 = 0x0205;
    /// Too many connections.
    pub const TOO_MANY_CONNECTIONS: u16 = 0x0206;
    /// Target error.
    pub const TARGET_ERROR: u16 = 0x0300;
}

/// Discovery or normal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionType {
    /// SendTargets only.
    Discovery,
    /// SCSI commands to one target.
    Normal,
}

/// What the login layer needs to know about a target.
#[derive(Clone, Debug, Default)]
pub struct TargetAuth {
    /// Initiators allowed; empty allows all.
    pub allow: Vec<String>,
    /// CHAP secrets; None means no authentication.
    pub chap: Option<ChapConfig>,
    /// TargetAlias to declare.
    pub alias: Option<String>,
}

/// Lookups the login layer makes.
pub trait LoginEnv {
    /// The target named `iqn`, if exported.
    fn target(&self, iqn: &str) -> Option<TargetAuth>;
    /// CHAP required for discovery sessions.
    fn discovery_chap(&self) -> Option<ChapConfig>;
    /// True when `initiator` is on the deny list of target `iqn`.
    fn denied(&self, _iqn: &str, _initiator: &str) -> bool {
        false
    }
    /// The portal group tag.
    fn portal_group_tag(&self) -> u16 {
        1
    }
}

/// The fields of a login request the state machine reads.
#[derive(Clone, Copy, Debug)]
pub struct LoginReq<'a> {
    /// Byte 1: T, C, CSG, NSG.
    pub flags: u8,
    /// VersionMax.
    pub version_max: u8,
    /// VersionMin.
    pub version_min: u8,
    /// TSIH from the initiator.
    pub tsih: u16,
    /// The data segment.
    pub data: &'a [u8],
}

/// The answer to one login request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginReply {
    /// Byte 1 of the response: T, C, CSG, NSG.
    pub flags: u8,
    /// Status class and detail; nonzero ends the login (close after sending).
    pub status: u16,
    /// Text keys to send.
    pub data: Vec<u8>,
    /// The response moves the connection to the full feature phase.
    pub full_feature: bool,
}

/// Byte 1 of a login request, decoded.
#[derive(Clone, Copy, Debug)]
struct StageFlags {
    /// T: the initiator wants to move to `nsg`.
    transit: bool,
    /// C: more text of this request follows.
    cont: bool,
    /// The current stage.
    csg: u8,
    /// The next stage.
    nsg: u8,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Auth {
    /// No AuthMethod seen yet.
    Start,
    /// CHAP chosen; waiting for CHAP_A.
    ChapAlgorithm,
    /// Challenge sent; waiting for CHAP_N/CHAP_R.
    ChapResponse { id: u8, challenge: Vec<u8> },
    /// Authenticated, or none needed.
    Done,
}

/// One connection's login.
#[derive(Debug)]
pub struct Login {
    stage: u8,
    started: bool,
    auth: Auth,
    chap: Option<ChapConfig>,
    pending_text: Vec<u8>,
    /// InitiatorName.
    pub initiator: String,
    /// TargetName (normal sessions).
    pub target: String,
    /// Session type.
    pub session_type: SessionType,
    /// Negotiated parameters.
    pub params: Params,
    limits: Limits,
    declared: bool,
}

fn kv(k: &str, v: impl Into<String>) -> (String, String) {
    (k.to_string(), v.into())
}

impl Login {
    /// A new login with the target's limits.
    pub fn new(limits: Limits) -> Login {
        Login {
            stage: STAGE_SECURITY,
            started: false,
            auth: Auth::Start,
            chap: None,
            pending_text: Vec::new(),
            initiator: String::new(),
            target: String::new(),
            session_type: SessionType::Normal,
            params: Params::defaults(&limits),
            limits,
            declared: false,
        }
    }

    fn fail(&self, status: u16) -> LoginReply {
        LoginReply {
            flags: self.stage << 2,
            status,
            data: Vec::new(),
            full_feature: false,
        }
    }

    /// Handles one login request; `random` fills challenge bytes.
    pub fn step(
        &mut self,
        req: &LoginReq,
        env: &dyn LoginEnv,
        random: &mut dyn FnMut(&mut [u8]),
    ) -> LoginReply {
        let h = match self.check_flags(req) {
            Ok(h) => h,
            Err(st) => return self.fail(st),
        };
        if self.pending_text.len() + req.data.len() > MAX_LOGIN_TEXT_BYTES {
            return self.fail(status::INITIATOR_ERROR);
        }
        self.pending_text.extend_from_slice(req.data);
        if h.cont {
            // More text follows: acknowledge with an empty response.
            return LoginReply {
                flags: h.csg << 2,
                status: status::SUCCESS,
                data: Vec::new(),
                full_feature: false,
            };
        }
        match self.exchange(req, h.csg, env, random) {
            Ok(out) => self.advance(h, &out),
            Err(st) => self.fail(st),
        }
    }

    /// The request's stage flags: valid, and for the stage the login is in.
    fn check_flags(&mut self, req: &LoginReq) -> Result<StageFlags, u16> {
        let h = StageFlags {
            transit: req.flags & 0x80 != 0,
            cont: req.flags & 0x40 != 0,
            csg: (req.flags >> 2) & 3,
            nsg: req.flags & 3,
        };
        if req.version_min > 0 {
            return Err(status::UNSUPPORTED_VERSION);
        }
        if (h.transit && h.cont) || h.csg == 2 || h.csg == STAGE_FULL {
            return Err(status::INITIATOR_ERROR);
        }
        if h.transit && (h.nsg <= h.csg || h.nsg == 2) {
            return Err(status::INITIATOR_ERROR);
        }
        if !self.started {
            self.stage = h.csg;
        } else if h.csg != self.stage {
            return Err(status::INITIATOR_ERROR);
        }
        Ok(h)
    }

    /// The keys of the whole (reassembled) request text of stage `csg`
    /// answered, authentication stepped; the keys to send.
    fn exchange(
        &mut self,
        req: &LoginReq,
        csg: u8,
        env: &dyn LoginEnv,
        random: &mut dyn FnMut(&mut [u8]),
    ) -> Result<Vec<(String, String)>, u16> {
        let bytes = std::mem::take(&mut self.pending_text);
        let pairs = text::parse(&bytes).map_err(|e| {
            log::warn!("iscsi login: bad text: {e}");
            status::INITIATOR_ERROR
        })?;
        let mut out: Vec<(String, String)> = Vec::new();
        if !self.started {
            self.started = true;
            self.first_request(&pairs, req, env, &mut out)?;
        }
        self.answer_keys(&pairs, csg, &mut out)?;
        text::clamp_first_burst(&self.params, &mut out);
        if csg == STAGE_SECURITY {
            self.chap_step(&pairs, &mut out, random)?;
        } else if self.auth != Auth::Done {
            // Skipping the security stage is allowed only when no CHAP is required.
            if self.chap.is_some() {
                return Err(status::AUTH_FAILED);
            }
            self.auth = Auth::Done;
        }
        if csg == STAGE_OPERATIONAL && !self.declared {
            self.declared = true;
            if !pairs.iter().any(|(k, _)| k == "MaxRecvDataSegmentLength") {
                out.push(kv(
                    "MaxRecvDataSegmentLength",
                    self.limits.target_mrdsl.to_string(),
                ));
            }
        }
        Ok(out)
    }

    /// Answers the keys of a request in stage `csg` (AuthMethod, operational
    /// keys); CHAP keys are left to [`Login::chap_step`].
    fn answer_keys(
        &mut self,
        pairs: &[(String, String)],
        csg: u8,
        out: &mut Vec<(String, String)>,
    ) -> Result<(), u16> {
        for (k, v) in pairs {
            match k.as_str() {
                "InitiatorName" | "TargetName" | "SessionType" | "InitiatorAlias" => {}
                "AuthMethod" => {
                    if csg != STAGE_SECURITY {
                        return Err(status::INITIATOR_ERROR);
                    }
                    let Some(m) = self.pick_auth(v) else {
                        return Err(status::AUTH_FAILED);
                    };
                    out.push(kv("AuthMethod", m));
                }
                k if k.starts_with("CHAP_") => {}
                "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" => {
                    // Target-declared keys an initiator must not send.
                    return Err(status::INITIATOR_ERROR);
                }
                _ => match text::negotiate(k, v, &mut self.params, &self.limits) {
                    Some(ans) => out.push((k.clone(), ans)),
                    None => out.push((k.clone(), "NotUnderstood".into())),
                },
            }
        }
        Ok(())
    }

    /// The reply to a complete request: moves to the next stage when the
    /// initiator asks to (transit) and authentication is done.
    fn advance(&mut self, h: StageFlags, out: &[(String, String)]) -> LoginReply {
        let mut flags = h.csg << 2;
        let mut full = false;
        if h.transit && self.auth == Auth::Done {
            flags |= 0x80 | h.nsg;
            self.stage = h.nsg;
            full = h.nsg == STAGE_FULL;
        }
        LoginReply {
            flags,
            status: status::SUCCESS,
            data: text::serialize(out),
            full_feature: full,
        }
    }

    fn first_request(
        &mut self,
        pairs: &[(String, String)],
        req: &LoginReq,
        env: &dyn LoginEnv,
        out: &mut Vec<(String, String)>,
    ) -> Result<(), u16> {
        let get = |k: &str| pairs.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.clone());
        self.initiator = get("InitiatorName").ok_or(status::MISSING_PARAMETER)?;
        if req.tsih != 0 {
            // Adding connections to an existing session is not supported (MaxConnections=1).
            return Err(status::NO_SESSION);
        }
        self.session_type = match get("SessionType").as_deref() {
            None | Some("Normal") => SessionType::Normal,
            Some("Discovery") => SessionType::Discovery,
            Some(_) => return Err(status::INITIATOR_ERROR),
        };
        match self.session_type {
            SessionType::Discovery => {
                self.chap = env.discovery_chap();
            }
            SessionType::Normal => {
                self.target = get("TargetName").ok_or(status::MISSING_PARAMETER)?;
                let t = env.target(&self.target).ok_or(status::NOT_FOUND)?;
                if (!t.allow.is_empty() && !t.allow.iter().any(|a| a == &self.initiator))
                    || env.denied(&self.target, &self.initiator)
                {
                    log::warn!(
                        "iscsi login: initiator {} is not allowed on target {}",
                        self.initiator,
                        self.target
                    );
                    return Err(status::FORBIDDEN);
                }
                self.chap = t.chap;
                if let Some(a) = t.alias {
                    out.push(kv("TargetAlias", a));
                }
                out.push(kv(
                    "TargetPortalGroupTag",
                    env.portal_group_tag().to_string(),
                ));
            }
        }
        if self.chap.is_none() && self.stage != STAGE_SECURITY {
            self.auth = Auth::Done;
        }
        Ok(())
    }

    fn pick_auth(&mut self, offered: &str) -> Option<&'static str> {
        let offers: Vec<&str> = offered.split(',').collect();
        if self.chap.is_some() {
            if offers.contains(&"CHAP") {
                self.auth = Auth::ChapAlgorithm;
                return Some("CHAP");
            }
            return None;
        }
        if offers.contains(&"None") {
            self.auth = Auth::Done;
            return Some("None");
        }
        None
    }

    fn chap_step(
        &mut self,
        pairs: &[(String, String)],
        out: &mut Vec<(String, String)>,
        random: &mut dyn FnMut(&mut [u8]),
    ) -> Result<(), u16> {
        let get = |k: &str| {
            pairs
                .iter()
                .find(|(pk, _)| pk == k)
                .map(|(_, v)| v.as_str())
        };
        match self.auth.clone() {
            Auth::Start => {
                if self.chap.is_none() && pairs.iter().all(|(k, _)| k != "AuthMethod") {
                    // No AuthMethod offered and none required.
                    self.auth = Auth::Done;
                } else if self.chap.is_some() && pairs.iter().all(|(k, _)| k != "AuthMethod") {
                    return Err(status::AUTH_FAILED);
                }
            }
            Auth::ChapAlgorithm => {
                if let Some(a) = get("CHAP_A") {
                    if !a.split(',').any(|x| x == chap::CHAP_MD5) {
                        out.push(kv("CHAP_A", "Reject"));
                        return Err(status::AUTH_FAILED);
                    }
                    let mut c = vec![0u8; chap::CHALLENGE_BYTES + 1];
                    random(&mut c);
                    let id = c[0];
                    let challenge = c[1..].to_vec();
                    out.push(kv("CHAP_A", chap::CHAP_MD5));
                    out.push(kv("CHAP_I", id.to_string()));
                    out.push(kv("CHAP_C", chap::to_hex(&challenge)));
                    self.auth = Auth::ChapResponse { id, challenge };
                }
            }
            Auth::ChapResponse { id, challenge } => {
                let cfg = self.chap.clone().ok_or(status::TARGET_ERROR)?;
                let (Some(n), Some(r)) = (get("CHAP_N"), get("CHAP_R")) else {
                    return Err(status::AUTH_FAILED);
                };
                let r = chap::from_binary(r).ok_or(status::AUTH_FAILED)?;
                let want = chap::response(id, cfg.secret.as_bytes(), &challenge);
                if n != cfg.user || !chap::same(&r, &want) {
                    log::warn!(
                        "iscsi login: CHAP authentication of {} (name {n:?}) failed",
                        self.initiator
                    );
                    return Err(status::AUTH_FAILED);
                }
                match (get("CHAP_I"), get("CHAP_C")) {
                    (Some(i), Some(c)) => {
                        let Some(secret) = cfg.mutual_secret.as_ref() else {
                            return Err(status::AUTH_FAILED);
                        };
                        let i: u8 = text::parse_number(i)
                            .and_then(|x| u8::try_from(x).ok())
                            .ok_or(status::AUTH_FAILED)?;
                        let c = chap::from_binary(c).ok_or(status::AUTH_FAILED)?;
                        // Refuse the target's own challenge reflected back.
                        if c == challenge {
                            return Err(status::AUTH_FAILED);
                        }
                        let name = cfg
                            .mutual_user
                            .clone()
                            .unwrap_or_else(|| self.target.clone());
                        out.push(kv("CHAP_N", name));
                        out.push(kv(
                            "CHAP_R",
                            chap::to_hex(&chap::response(i, secret.as_bytes(), &c)),
                        ));
                    }
                    (None, None) => {
                        if cfg.mutual_secret.is_some() {
                            // The target is configured for mutual CHAP; one-way is still
                            // accepted because the initiator chooses.
                        }
                    }
                    _ => return Err(status::AUTH_FAILED),
                }
                self.auth = Auth::Done;
            }
            Auth::Done => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Env {
        chap: Option<ChapConfig>,
        allow: Vec<String>,
    }
    impl LoginEnv for Env {
        fn target(&self, iqn: &str) -> Option<TargetAuth> {
            (iqn == "iqn.t").then(|| TargetAuth {
                allow: self.allow.clone(),
                chap: self.chap.clone(),
                alias: Some("demo".into()),
            })
        }
        fn discovery_chap(&self) -> Option<ChapConfig> {
            None
        }
    }

    fn lim() -> Limits {
        Limits {
            target_mrdsl: 262_144,
            max_burst: 1 << 20,
            first_burst: 1 << 20,
            immediate_data: true,
            initial_r2t: false,
            max_connections: 1,
            max_outstanding_r2t: 1,
        }
    }

    fn req(flags: u8, data: &[u8]) -> LoginReq<'_> {
        LoginReq {
            flags,
            version_max: 0,
            version_min: 0,
            tsih: 0,
            data,
        }
    }

    fn keys(r: &LoginReply) -> Vec<(String, String)> {
        text::parse(&r.data).unwrap()
    }

    fn get(r: &LoginReply, k: &str) -> Option<String> {
        keys(r).into_iter().find(|(x, _)| x == k).map(|(_, v)| v)
    }

    fn rnd(b: &mut [u8]) {
        for (i, x) in b.iter_mut().enumerate() {
            *x = i as u8 + 1;
        }
    }

    #[test]
    fn normal_login_without_auth() {
        let env = Env {
            chap: None,
            allow: vec![],
        };
        let mut l = Login::new(lim());
        let r = l.step(
            &req(
                0x81,
                b"InitiatorName=iqn.i\0TargetName=iqn.t\0AuthMethod=None\0",
            ),
            &env,
            &mut rnd,
        );
        assert_eq!(r.status, 0);
        assert_eq!(r.flags, 0x81);
        assert_eq!(get(&r, "AuthMethod").unwrap(), "None");
        assert_eq!(get(&r, "TargetPortalGroupTag").unwrap(), "1");
        let r = l.step(
            &req(
                0x87,
                b"HeaderDigest=CRC32C,None\0MaxRecvDataSegmentLength=65536\0X-foo=1\0",
            ),
            &env,
            &mut rnd,
        );
        assert_eq!(r.status, 0);
        assert!(r.full_feature);
        assert_eq!(r.flags, 0x87);
        assert_eq!(get(&r, "HeaderDigest").unwrap(), "CRC32C");
        assert_eq!(get(&r, "X-foo").unwrap(), "NotUnderstood");
        assert_eq!(l.params.initiator_mrdsl, 65536);
    }

    #[test]
    fn unknown_target_and_acl() {
        let env = Env {
            chap: None,
            allow: vec!["iqn.ok".into()],
        };
        let mut l = Login::new(lim());
        let r = l.step(
            &req(0x81, b"InitiatorName=iqn.i\0TargetName=iqn.nope\0"),
            &env,
            &mut rnd,
        );
        assert_eq!(r.status, status::NOT_FOUND);
        let mut l = Login::new(lim());
        let r = l.step(
            &req(0x81, b"InitiatorName=iqn.i\0TargetName=iqn.t\0"),
            &env,
            &mut rnd,
        );
        assert_eq!(r.status, status::FORBIDDEN);
        let mut l = Login::new(lim());
        let r = l.step(&req(0x81, b"TargetName=iqn.t\0"), &env, &mut rnd);
        assert_eq!(r.status, status::MISSING_PARAMETER);
    }

    #[test]
    fn discovery_goes_straight_to_full_feature() {
        let env = Env {
            chap: None,
            allow: vec![],
        };
        let mut l = Login::new(lim());
        let r = l.step(
            &req(0x87, b"InitiatorName=iqn.i\0SessionType=Discovery\0"),
            &env,
            &mut rnd,
        );
        assert_eq!(r.status, 0);
        assert!(r.full_feature);
        assert_eq!(l.session_type, SessionType::Discovery);
    }

    fn chap_env(mutual: bool) -> Env {
        Env {
            chap: Some(ChapConfig {
                user: "user".into(),
                secret: "secretsecret".into(),
                mutual_user: mutual.then(|| "tgt".into()),
                mutual_secret: mutual.then(|| "mutualsecret".into()),
            }),
            allow: vec![],
        }
    }

    #[test]
    fn chap_one_way_and_mutual() {
        for mutual in [false, true] {
            let env = chap_env(mutual);
            let mut l = Login::new(lim());
            let r = l.step(
                &req(
                    0x81,
                    b"InitiatorName=iqn.i\0TargetName=iqn.t\0AuthMethod=None,CHAP\0",
                ),
                &env,
                &mut rnd,
            );
            assert_eq!(get(&r, "AuthMethod").unwrap(), "CHAP");
            assert_eq!(r.flags & 0x80, 0, "no transit before authentication");
            let r = l.step(&req(0x01, b"CHAP_A=5\0"), &env, &mut rnd);
            let id: u8 = get(&r, "CHAP_I").unwrap().parse().unwrap();
            let c = chap::from_binary(&get(&r, "CHAP_C").unwrap()).unwrap();
            let resp = chap::to_hex(&chap::response(id, b"secretsecret", &c));
            let mut t = format!("CHAP_N=user\0CHAP_R={resp}\0");
            if mutual {
                t.push_str("CHAP_I=7\0CHAP_C=0x0102030405\0");
            }
            let r = l.step(&req(0x81, t.as_bytes()), &env, &mut rnd);
            assert_eq!(r.status, 0);
            assert_eq!(r.flags, 0x81);
            if mutual {
                let want = chap::to_hex(&chap::response(7, b"mutualsecret", &[1, 2, 3, 4, 5]));
                assert_eq!(get(&r, "CHAP_R").unwrap(), want);
                assert_eq!(get(&r, "CHAP_N").unwrap(), "tgt");
            }
        }
    }

    #[test]
    fn chap_bad_response_fails() {
        let env = chap_env(false);
        let mut l = Login::new(lim());
        l.step(
            &req(
                0x81,
                b"InitiatorName=iqn.i\0TargetName=iqn.t\0AuthMethod=CHAP\0",
            ),
            &env,
            &mut rnd,
        );
        l.step(&req(0x01, b"CHAP_A=5\0"), &env, &mut rnd);
        let r = l.step(&req(0x81, b"CHAP_N=user\0CHAP_R=0x00\0"), &env, &mut rnd);
        assert_eq!(r.status, status::AUTH_FAILED);
        // Skipping security when CHAP is required fails.
        let mut l = Login::new(lim());
        let r = l.step(
            &req(0x87, b"InitiatorName=iqn.i\0TargetName=iqn.t\0"),
            &env,
            &mut rnd,
        );
        assert_eq!(r.status, status::AUTH_FAILED);
        // Offering only None fails.
        let mut l = Login::new(lim());
        let r = l.step(
            &req(
                0x81,
                b"InitiatorName=iqn.i\0TargetName=iqn.t\0AuthMethod=None\0",
            ),
            &env,
            &mut rnd,
        );
        assert_eq!(r.status, status::AUTH_FAILED);
    }

    #[test]
    fn bad_stage_transitions_fail() {
        let env = Env {
            chap: None,
            allow: vec![],
        };
        let mut l = Login::new(lim());
        let r = l.step(
            &req(0x80, b"InitiatorName=iqn.i\0TargetName=iqn.t\0"),
            &env,
            &mut rnd,
        );
        assert_eq!(r.status, status::INITIATOR_ERROR);
        let mut l = Login::new(lim());
        let r = l.step(
            &req(0x0c, b"InitiatorName=iqn.i\0TargetName=iqn.t\0"),
            &env,
            &mut rnd,
        );
        assert_eq!(r.status, status::INITIATOR_ERROR);
    }
}
