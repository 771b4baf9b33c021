//! Persistent reservations (SPC-4 §5.13) and the older RESERVE(6)/RELEASE(6), per
//! LUN. Pure state plus a small file (written to a temporary name, then renamed)
//! so reservations survive target restarts.
//!
//! An I_T nexus ([`Nexus`]) is the initiator port name `iqn,i,0x<ISID>` with the
//! relative target port id: 1 on a standalone target, the node id in a cluster
//! (one port per node, see `alua.rs`), so a host's registration through one node's
//! portal is a different nexus from the same host's through another node's.

use std::path::{Path, PathBuf};

use super::bytes::{be32, be64, put16, put32, put64};
use super::sense::{self, Sense};

/// Most registrations kept per LUN (REGISTER beyond it gets INSUFFICIENT RESOURCES).
pub const MAX_REGISTRATIONS: usize = 256;
/// The PERSISTENT RESERVE OUT service action REGISTER.
pub const SA_REGISTER: u8 = 0;
/// The PERSISTENT RESERVE OUT service action RELEASE.
pub const SA_RELEASE: u8 = 2;
/// The PERSISTENT RESERVE OUT service action CLEAR.
pub const SA_CLEAR: u8 = 3;
/// The PERSISTENT RESERVE OUT service action REGISTER AND IGNORE EXISTING KEY.
pub const SA_REGISTER_IGNORE: u8 = 6;
/// The PERSISTENT RESERVE OUT service action PREEMPT.
pub const SA_PREEMPT: u8 = 4;
/// The PERSISTENT RESERVE OUT service action PREEMPT AND ABORT.
pub const SA_PREEMPT_AND_ABORT: u8 = 5;

/// Reservation types.
pub mod ty {
    /// Write Exclusive.
    pub const WE: u8 = 1;
    /// Exclusive Access.
    pub const EA: u8 = 3;
    /// Write Exclusive – Registrants Only.
    pub const WE_RO: u8 = 5;
    /// Exclusive Access – Registrants Only.
    pub const EA_RO: u8 = 6;
    /// Write Exclusive – All Registrants.
    pub const WE_AR: u8 = 7;
    /// Exclusive Access – All Registrants.
    pub const EA_AR: u8 = 8;
}

/// How a command touches the medium, for conflict checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads the medium.
    Read,
    /// Changes the medium (or the device's state).
    Write,
    /// Allowed whatever the reservation (INQUIRY, REPORT LUNS, PR IN...).
    Any,
}

/// A failed reservation command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrError {
    /// RESERVATION CONFLICT status.
    Conflict,
    /// CHECK CONDITION with this sense.
    Check(Sense),
}

/// An I_T nexus: an initiator port and the target port it reaches this LUN through.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Nexus {
    /// Initiator port name (`iqn,i,0x<ISID>`).
    pub initiator: String,
    /// Relative target port identifier.
    pub port: u16,
}

impl Nexus {
    /// The nexus of `initiator` through relative target port `port`.
    pub fn new(initiator: impl Into<String>, port: u16) -> Nexus {
        Nexus {
            initiator: initiator.into(),
            port,
        }
    }
}

impl std::fmt::Display for Nexus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} via target port {}", self.initiator, self.port)
    }
}

/// The relative target port of state saved before ports were recorded (a
/// standalone target's only port).
fn port_one() -> u16 {
    1
}

/// One registration.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Registration {
    /// Initiator port name.
    pub nexus: String,
    /// Relative target port the registration was made through.
    #[serde(default = "port_one")]
    pub port: u16,
    /// Reservation key.
    pub key: u64,
}

impl Registration {
    fn is(&self, n: &Nexus) -> bool {
        self.nexus == n.initiator && self.port == n.port
    }
}

/// The persistent reservation held on a LUN.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reservation {
    /// Holder's initiator port (meaningless for the all-registrants types).
    pub holder: String,
    /// Holder's relative target port.
    #[serde(default = "port_one")]
    pub holder_port: u16,
    /// Type.
    pub ty: u8,
}

impl Reservation {
    fn held_by(&self, n: &Nexus) -> bool {
        self.holder == n.initiator && self.holder_port == n.port
    }

    fn holder(&self) -> Nexus {
        Nexus::new(self.holder.clone(), self.holder_port)
    }
}

/// Reservation state of one LUN.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PrState {
    /// PRgeneration.
    pub generation: u32,
    /// Registrations.
    pub regs: Vec<Registration>,
    /// The persistent reservation.
    pub res: Option<Reservation>,
    /// Activate persist through power loss (as last set by REGISTER).
    pub aptpl: bool,
    /// RESERVE(6) holder; not persisted (and kept per node in a cluster).
    #[serde(skip)]
    pub legacy: Option<Nexus>,
    /// The PERSISTENT RESERVE OUT that made this state (the last change): a
    /// cluster's nodes receiving a committed state learn from it what the
    /// issuing node's frontend does itself (a preempt and abort's aborts,
    /// NVMe reservation notices). None for a state no change made yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last: Option<PrChange>,
}

/// The PERSISTENT RESERVE OUT that last changed a [`PrState`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PrChange {
    /// The I_T nexus (or NVMe host) that sent it.
    pub nexus: Nexus,
    /// Its service action (5: PREEMPT AND ABORT).
    pub sa: u8,
    /// Its scope and type byte.
    pub scope_type: u8,
}

fn all_registrants(t: u8) -> bool {
    t == ty::WE_AR || t == ty::EA_AR
}

impl PrState {
    fn key_of(&self, nexus: &Nexus) -> Option<u64> {
        self.regs.iter().find(|r| r.is(nexus)).map(|r| r.key)
    }

    fn is_holder(&self, nexus: &Nexus) -> bool {
        match &self.res {
            Some(r) if all_registrants(r.ty) => self.key_of(nexus).is_some(),
            Some(r) => r.held_by(nexus),
            None => false,
        }
    }

    /// True when nothing persistent is recorded (no registration, no reservation,
    /// generation 0): how a volume without reservations is stored.
    pub fn is_empty(&self) -> bool {
        self.generation == 0 && self.regs.is_empty() && self.res.is_none() && !self.aptpl
    }

    /// Replaces the persistent part with `other`'s, keeping this node's RESERVE(6)
    /// holder (a cluster's committed state arriving on a node).
    pub fn set_persistent(&mut self, other: &PrState) {
        let legacy = self.legacy.take();
        *self = other.clone();
        self.legacy = legacy;
    }

    /// True when the persistent part (and the change that made it) differs
    /// from `before`'s: RESERVE(6) holders, kept per node, do not count.
    pub fn changed_since(&self, before: &PrState) -> bool {
        let strip = |s: &PrState| PrState {
            legacy: None,
            ..s.clone()
        };
        strip(self) != strip(before)
    }

    /// True when any reservation is held (a cheap pre-check for the I/O path).
    pub fn any(&self) -> bool {
        self.res.is_some() || self.legacy.is_some()
    }

    /// Whether `nexus` may run a command with `access`.
    pub fn conflicts(&self, nexus: &Nexus, access: Access) -> bool {
        if access == Access::Any {
            return false;
        }
        if let Some(h) = &self.legacy {
            return h != nexus;
        }
        let Some(r) = &self.res else { return false };
        if self.is_holder(nexus) {
            return false;
        }
        let registered = self.key_of(nexus).is_some();
        match (r.ty, access) {
            (ty::WE, Access::Write) | (ty::EA, _) => true,
            (ty::WE_RO | ty::WE_AR, Access::Write) => !registered,
            (ty::EA_RO | ty::EA_AR, _) => !registered,
            _ => false,
        }
    }

    /// RESERVE(6).
    pub fn reserve6(&mut self, nexus: &Nexus) -> Result<(), PrError> {
        if self.res.is_some() {
            return Err(PrError::Conflict);
        }
        match &self.legacy {
            Some(h) if h != nexus => Err(PrError::Conflict),
            _ => {
                self.legacy = Some(nexus.clone());
                Ok(())
            }
        }
    }

    /// RELEASE(6): a no-op unless `nexus` holds the reservation.
    pub fn release6(&mut self, nexus: &Nexus) -> Result<(), PrError> {
        if self.res.is_some() {
            return Err(PrError::Conflict);
        }
        if self.legacy.as_ref() == Some(nexus) {
            self.legacy = None;
        }
        Ok(())
    }

    /// The nexus went away (logout, connection loss): drop its RESERVE(6).
    pub fn nexus_lost(&mut self, initiator: &str) {
        if self
            .legacy
            .as_ref()
            .is_some_and(|h| h.initiator == initiator)
        {
            self.legacy = None;
        }
    }

    /// LUN reset or target reset: drop RESERVE(6) (persistent state stays).
    pub fn reset(&mut self) {
        self.legacy = None;
    }

    /// PERSISTENT RESERVE OUT. Returns whether the persistent state changed
    /// (then [`PrState::last`] says what changed it).
    pub fn out(
        &mut self,
        nexus: &Nexus,
        sa: u8,
        scope_type: u8,
        param: &[u8],
    ) -> Result<bool, PrError> {
        let r = self.run_out(nexus, sa, scope_type, param);
        if r == Ok(true) {
            self.last = Some(PrChange {
                nexus: nexus.clone(),
                sa,
                scope_type,
            });
        }
        r
    }

    fn run_out(
        &mut self,
        nexus: &Nexus,
        sa: u8,
        scope_type: u8,
        param: &[u8],
    ) -> Result<bool, PrError> {
        let check = |s: Sense| Err(PrError::Check(s));
        if sa > 7 {
            return check(sense::INVALID_FIELD_IN_CDB);
        }
        if param.len() != 24 {
            return check(sense::PARAM_LIST_LENGTH);
        }
        let rkey = be64(param, 0);
        let sakey = be64(param, 8);
        let flags = param[20];
        if flags & 0x08 != 0 || flags & 0x04 != 0 {
            // SPEC_I_PT and ALL_TG_PT are not supported (REPORT CAPABILITIES says so).
            return check(sense::INVALID_FIELD_IN_PARAM);
        }
        let aptpl = flags & 0x01 != 0;
        let rtype = scope_type & 0x0f;
        let scope = scope_type >> 4;
        if sa == SA_REGISTER || sa == SA_REGISTER_IGNORE {
            return self.register(nexus, sa == SA_REGISTER_IGNORE, rkey, sakey, aptpl);
        }
        if sa == 7 {
            // REGISTER AND MOVE is not supported.
            return check(sense::INVALID_FIELD_IN_CDB);
        }
        // The other service actions need the nexus registered with `rkey`.
        if self.key_of(nexus) != Some(rkey) {
            return Err(PrError::Conflict);
        }
        match sa {
            1 => self.reserve(nexus, rtype, scope),
            SA_RELEASE => self.release(nexus, rtype, scope),
            SA_CLEAR => {
                self.regs.clear();
                self.res = None;
                self.generation = self.generation.wrapping_add(1);
                Ok(true)
            }
            SA_PREEMPT | SA_PREEMPT_AND_ABORT => {
                self.preempt(nexus, sakey, rtype, scope)?;
                self.generation = self.generation.wrapping_add(1);
                Ok(true)
            }
            _ => check(sense::INVALID_FIELD_IN_CDB),
        }
    }

    /// REGISTER (`rkey` must match the nexus's key, 0 when it has none) or
    /// REGISTER AND IGNORE EXISTING KEY (`ignore`): registers `sakey`, changes
    /// the nexus's key to it, or unregisters with 0.
    fn register(
        &mut self,
        nexus: &Nexus,
        ignore: bool,
        rkey: u64,
        sakey: u64,
        aptpl: bool,
    ) -> Result<bool, PrError> {
        if self.legacy.is_some() && self.legacy.as_ref() != Some(nexus) {
            return Err(PrError::Conflict);
        }
        match self.key_of(nexus) {
            None => {
                if !ignore && rkey != 0 {
                    return Err(PrError::Conflict);
                }
                if sakey == 0 {
                    return Ok(false);
                }
                if self.regs.len() >= MAX_REGISTRATIONS {
                    return Err(PrError::Check(Sense::new(
                        sense::key::ILLEGAL_REQUEST,
                        0x55,
                        0x04,
                    )));
                }
                self.regs.push(Registration {
                    nexus: nexus.initiator.clone(),
                    port: nexus.port,
                    key: sakey,
                });
            }
            Some(k) => {
                if !ignore && rkey != k {
                    return Err(PrError::Conflict);
                }
                if sakey == 0 {
                    self.unregister(nexus);
                } else if let Some(r) = self.regs.iter_mut().find(|r| r.is(nexus)) {
                    r.key = sakey;
                }
            }
        }
        self.aptpl = aptpl;
        self.generation = self.generation.wrapping_add(1);
        Ok(true)
    }

    /// RESERVE of type `rtype` for a registered nexus.
    fn reserve(&mut self, nexus: &Nexus, rtype: u8, scope: u8) -> Result<bool, PrError> {
        if scope != 0 || !matches!(rtype, 1 | 3 | 5 | 6 | 7 | 8) {
            return Err(PrError::Check(sense::INVALID_FIELD_IN_CDB));
        }
        if self.legacy.is_some() {
            return Err(PrError::Conflict);
        }
        match &self.res {
            Some(r) if self.is_holder(nexus) && r.ty == rtype => Ok(false),
            Some(_) => Err(PrError::Conflict),
            None => {
                self.res = Some(Reservation {
                    holder: nexus.initiator.clone(),
                    holder_port: nexus.port,
                    ty: rtype,
                });
                Ok(true)
            }
        }
    }

    /// RELEASE by a registered nexus: only the holder's release of the same
    /// type ends the reservation.
    fn release(&mut self, nexus: &Nexus, rtype: u8, scope: u8) -> Result<bool, PrError> {
        let Some(r) = self.res.clone() else {
            return Ok(false);
        };
        if !self.is_holder(nexus) {
            return Ok(false);
        }
        if r.ty != rtype || scope != 0 {
            return Err(PrError::Check(sense::INVALID_RELEASE));
        }
        self.res = None;
        Ok(true)
    }

    fn unregister(&mut self, nexus: &Nexus) {
        let was_holder = self.is_holder(nexus);
        self.regs.retain(|r| !r.is(nexus));
        if let Some(r) = &self.res {
            if all_registrants(r.ty) {
                if self.regs.is_empty() {
                    self.res = None;
                }
            } else if was_holder {
                self.res = None;
            }
        }
    }

    fn preempt(&mut self, nexus: &Nexus, sakey: u64, rtype: u8, scope: u8) -> Result<(), PrError> {
        let mine = Reservation {
            holder: nexus.initiator.clone(),
            holder_port: nexus.port,
            ty: rtype,
        };
        let valid_type = scope == 0 && matches!(rtype, 1 | 3 | 5 | 6 | 7 | 8);
        match self.res.clone() {
            Some(r) if all_registrants(r.ty) => {
                if sakey == 0 {
                    if !valid_type {
                        return Err(PrError::Check(sense::INVALID_FIELD_IN_CDB));
                    }
                    self.regs.retain(|x| x.is(nexus));
                    self.res = Some(mine);
                } else {
                    let before = self.regs.len();
                    self.regs.retain(|x| x.key != sakey || x.is(nexus));
                    if self.regs.len() == before {
                        return Err(PrError::Conflict);
                    }
                }
            }
            Some(r) if self.key_of(&r.holder()) == Some(sakey) => {
                if !valid_type {
                    return Err(PrError::Check(sense::INVALID_FIELD_IN_CDB));
                }
                self.regs.retain(|x| x.key != sakey || x.is(nexus));
                self.res = Some(mine);
            }
            _ => {
                if sakey == 0 {
                    return Err(PrError::Check(sense::INVALID_FIELD_IN_PARAM));
                }
                let before = self.regs.len();
                self.regs.retain(|x| x.key != sakey || x.is(nexus));
                if self.regs.len() == before {
                    return Err(PrError::Conflict);
                }
                if let Some(r) = &self.res {
                    if !self.regs.iter().any(|x| x.is(&r.holder())) {
                        self.res = None;
                    }
                }
            }
        }
        Ok(())
    }

    /// PERSISTENT RESERVE IN: the full parameter data (the caller truncates).
    pub fn read(&self, sa: u8) -> Result<Vec<u8>, Sense> {
        let mut b = Vec::with_capacity(64);
        match sa {
            0 => {
                b.resize(8, 0);
                put32(&mut b, 0, self.generation);
                put32(&mut b, 4, (self.regs.len() * 8) as u32);
                for r in &self.regs {
                    b.extend_from_slice(&r.key.to_be_bytes());
                }
            }
            1 => {
                b.resize(8, 0);
                put32(&mut b, 0, self.generation);
                if let Some(r) = &self.res {
                    put32(&mut b, 4, 16);
                    let key = if all_registrants(r.ty) {
                        0
                    } else {
                        self.key_of(&r.holder()).unwrap_or(0)
                    };
                    b.resize(24, 0);
                    put64(&mut b, 8, key);
                    b[21] = r.ty & 0x0f;
                }
            }
            2 => {
                b.resize(8, 0);
                put16(&mut b, 0, 8);
                // CRH=1, PTPL_C=1; TMV=1 with ALLOW COMMANDS=0; PTPL_A as set.
                b[2] = 0x10 | 0x01;
                b[3] = 0x80 | u8::from(self.aptpl);
                b[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
                b[5] = 0x01;
            }
            3 => {
                b.resize(8, 0);
                put32(&mut b, 0, self.generation);
                for r in &self.regs {
                    let name = r.nexus.as_bytes();
                    let tid_len = (4 + name.len() + 1).div_ceil(4) * 4;
                    let start = b.len();
                    b.resize(start + 24 + tid_len, 0);
                    let d = &mut b[start..];
                    put64(d, 0, r.key);
                    let holder = self.is_holder(&Nexus::new(r.nexus.clone(), r.port));
                    if holder {
                        d[12] = 0x01;
                        d[13] = self.res.as_ref().map_or(0, |x| x.ty & 0x0f);
                    }
                    put16(d, 18, r.port);
                    put32(d, 20, tid_len as u32);
                    d[24] = 0x40 | 0x05;
                    put16(d, 26, (tid_len - 4) as u16);
                    d[28..28 + name.len()].copy_from_slice(name);
                }
                let n = (b.len() - 8) as u32;
                put32(&mut b, 4, n);
            }
            _ => return Err(sense::INVALID_FIELD_IN_CDB),
        }
        Ok(b)
    }

    /// Loads the state saved at `path` (missing file: empty state).
    pub fn load(path: &Path) -> Result<PrState, String> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("reservation file {}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(PrState::default()),
            Err(e) => Err(format!("reservation file {}: {e}", path.display())),
        }
    }

    /// Saves the persistent part (write to a temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        use std::io::Write;
        let tmp: PathBuf = path.with_extension("tmp");
        let data = serde_json::to_vec(self).map_err(|e| e.to_string())?;
        let res = (|| -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        })();
        res.map_err(|e| format!("reservation file {}: {e}", path.display()))
    }
}

/// The registrants of `before` that `after` no longer has (the I_T nexuses or
/// hosts a preempt removed).
pub fn removed(before: &PrState, after: &PrState) -> Vec<Nexus> {
    before
        .regs
        .iter()
        .filter(|r| {
            !after
                .regs
                .iter()
                .any(|a| a.nexus == r.nexus && a.port == r.port)
        })
        .map(|r| Nexus::new(r.nexus.clone(), r.port))
        .collect()
}

/// What a reservation change establishes for a registered I_T nexus (or NVMe
/// host) other than the one that made it ([`notices`]): a SCSI unit attention
/// ([`Notice::sense`]), an NVMe reservation notification (log page 80h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A PREEMPT (or PREEMPT AND ABORT) removed its registration: REGISTRATIONS
    /// PREEMPTED; NVMe "registration preempted".
    RegistrationPreempted,
    /// A registrants-only or all-registrants reservation it is registered under
    /// was released, or a PREEMPT changed the reservation's type: RESERVATIONS
    /// RELEASED; NVMe "reservation released".
    ReservationsReleased,
    /// A CLEAR removed its registration and the reservation: RESERVATIONS
    /// PREEMPTED; NVMe "reservation preempted".
    ReservationsPreempted,
}

impl Notice {
    /// The unit attention a SCSI I_T nexus gets for it.
    pub fn sense(self) -> Sense {
        match self {
            Notice::RegistrationPreempted => sense::REGISTRATIONS_PREEMPTED,
            Notice::ReservationsReleased => sense::RESERVATIONS_RELEASED,
            Notice::ReservationsPreempted => sense::RESERVATIONS_PREEMPTED,
        }
    }
}

fn registrants_only(t: u8) -> bool {
    t == ty::WE_RO || t == ty::EA_RO
}

/// What the change that made `after` from `before` ([`PrState::last`]: its
/// service action and the I_T nexus that sent it) establishes for the other
/// registered I_T nexuses, as SPC-4 says for each PERSISTENT RESERVE OUT
/// service action (sections "Releasing", "Unregistering", "Preempting",
/// "Clearing"):
///
/// - PREEMPT, PREEMPT AND ABORT: REGISTRATIONS PREEMPTED for every nexus whose
///   registration it removed; when it changed the reservation's type (the
///   scope is always LU_SCOPE here), RESERVATIONS RELEASED for every other
///   nexus still registered (none when the type stayed).
/// - RELEASE of a registrants-only or all-registrants reservation:
///   RESERVATIONS RELEASED for every other registered nexus (none for the
///   other types).
/// - REGISTER or REGISTER AND IGNORE EXISTING KEY that unregistered the holder
///   of a registrants-only reservation (which releases it): the same. (An
///   all-registrants reservation ends with its last registrant: nobody is left.)
/// - CLEAR: RESERVATIONS PREEMPTED for every nexus registered before it, other
///   than the one that sent it.
///
/// Nothing when `after` is no change of `before` (the same committed state set
/// again) or no change made it. Nexuses of every target port and NVMe hosts
/// alike: each node and frontend keeps those it serves.
pub fn notices(before: &PrState, after: &PrState) -> Vec<(Nexus, Notice)> {
    let Some(change) = after.last.as_ref() else {
        return Vec::new();
    };
    if !after.changed_since(before) {
        return Vec::new();
    }
    let others = |s: &PrState, n: Notice| -> Vec<(Nexus, Notice)> {
        s.regs
            .iter()
            .map(|r| Nexus::new(r.nexus.clone(), r.port))
            .filter(|x| *x != change.nexus)
            .map(|x| (x, n))
            .collect()
    };
    let old_ty = before.res.as_ref().map(|r| r.ty);
    let new_ty = after.res.as_ref().map(|r| r.ty);
    let ended = |shared: fn(u8) -> bool| old_ty.is_some_and(shared) && new_ty.is_none();
    match change.sa {
        SA_PREEMPT | SA_PREEMPT_AND_ABORT => {
            let mut v: Vec<(Nexus, Notice)> = removed(before, after)
                .into_iter()
                .filter(|x| *x != change.nexus)
                .map(|x| (x, Notice::RegistrationPreempted))
                .collect();
            if old_ty.is_some() && new_ty.is_some() && old_ty != new_ty {
                v.extend(others(after, Notice::ReservationsReleased));
            }
            v
        }
        SA_RELEASE if ended(|t| registrants_only(t) || all_registrants(t)) => {
            others(after, Notice::ReservationsReleased)
        }
        SA_REGISTER | SA_REGISTER_IGNORE if ended(registrants_only) => {
            others(after, Notice::ReservationsReleased)
        }
        SA_CLEAR => others(before, Notice::ReservationsPreempted),
        _ => Vec::new(),
    }
}

/// The parameter data of a PR OUT, for tests and callers building one.
pub fn param(rkey: u64, sakey: u64, aptpl: bool) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    put64(&mut p, 0, rkey);
    put64(&mut p, 8, sakey);
    p[20] = u8::from(aptpl);
    p
}

/// Reads a key list from READ KEYS data (tests).
pub fn keys_of(data: &[u8]) -> Vec<u64> {
    let n = be32(data, 4) as usize / 8;
    (0..n).map(|i| be64(data, 8 + i * 8)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A_NAME: &str = "iqn.a,i,0x1";
    const B_NAME: &str = "iqn.b,i,0x2";

    fn n(name: &str) -> Nexus {
        Nexus::new(name, 1)
    }

    #[test]
    fn register_reserve_release() {
        let mut s = PrState::default();
        assert_eq!(s.out(&n(A_NAME), 0, 0, &param(0, 0xaa, false)), Ok(true));
        assert_eq!(s.out(&n(B_NAME), 0, 0, &param(0, 0xbb, false)), Ok(true));
        assert_eq!(keys_of(&s.read(0).unwrap()), vec![0xaa, 0xbb]);
        assert_eq!(
            s.out(&n(A_NAME), 1, ty::WE, &param(0xaa, 0, false)),
            Ok(true)
        );
        assert!(s.conflicts(&n(B_NAME), Access::Write));
        assert!(!s.conflicts(&n(B_NAME), Access::Read));
        assert!(!s.conflicts(&n(A_NAME), Access::Write));
        assert_eq!(
            s.out(&n(B_NAME), 1, ty::WE, &param(0xbb, 0, false)),
            Err(PrError::Conflict)
        );
        assert_eq!(
            s.out(&n(A_NAME), 2, ty::EA, &param(0xaa, 0, false)),
            Err(PrError::Check(sense::INVALID_RELEASE))
        );
        assert_eq!(
            s.out(&n(A_NAME), 2, ty::WE, &param(0xaa, 0, false)),
            Ok(true)
        );
        assert!(!s.conflicts(&n(B_NAME), Access::Write));
        // Wrong key is a conflict.
        assert_eq!(
            s.out(&n(A_NAME), 0, 0, &param(0x1, 0x2, false)),
            Err(PrError::Conflict)
        );
    }

    #[test]
    fn registrants_only_and_preempt() {
        let mut s = PrState::default();
        s.out(&n(A_NAME), 0, 0, &param(0, 1, false)).unwrap();
        s.out(&n(B_NAME), 0, 0, &param(0, 2, false)).unwrap();
        s.out(&n(A_NAME), 1, ty::EA_RO, &param(1, 0, false))
            .unwrap();
        assert!(!s.conflicts(&n(B_NAME), Access::Read));
        assert!(s.conflicts(&n("iqn.c,i,0x3"), Access::Read));
        s.out(&n(B_NAME), 4, ty::EA, &param(2, 1, false)).unwrap();
        assert_eq!(s.res.as_ref().unwrap().holder, B_NAME);
        assert_eq!(keys_of(&s.read(0).unwrap()), vec![2]);
        assert!(s.conflicts(&n(A_NAME), Access::Read));
    }

    #[test]
    fn legacy_reserve() {
        let mut s = PrState::default();
        s.reserve6(&n(A_NAME)).unwrap();
        s.reserve6(&n(A_NAME)).unwrap();
        assert_eq!(s.reserve6(&n(B_NAME)), Err(PrError::Conflict));
        assert!(s.conflicts(&n(B_NAME), Access::Read));
        s.release6(&n(B_NAME)).unwrap();
        assert!(s.conflicts(&n(B_NAME), Access::Read));
        s.nexus_lost(A_NAME);
        assert!(!s.conflicts(&n(B_NAME), Access::Read));
    }

    #[test]
    fn survives_save_and_load() {
        let dir = std::env::temp_dir().join(format!("plexd-pr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("lun0.json");
        let mut s = PrState::default();
        s.out(&n(A_NAME), 0, 0, &param(0, 7, true)).unwrap();
        s.out(&n(A_NAME), 1, ty::WE_AR, &param(7, 0, false))
            .unwrap();
        s.save(&path).unwrap();
        let back = PrState::load(&path).unwrap();
        assert_eq!(back, s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_target_port_is_part_of_the_nexus() {
        let mut s = PrState::default();
        let via1 = Nexus::new(A_NAME, 1);
        let via2 = Nexus::new(A_NAME, 2);
        s.out(&via1, 0, 0, &param(0, 0xa1, false)).unwrap();
        s.out(&via1, 1, ty::WE, &param(0xa1, 0, false)).unwrap();
        // The same initiator port through another target port is another nexus:
        // not registered, not the holder.
        assert!(s.conflicts(&via2, Access::Write));
        assert!(!s.conflicts(&via1, Access::Write));
        assert_eq!(
            s.out(&via2, 1, ty::WE, &param(0xa1, 0, false)),
            Err(PrError::Conflict)
        );
        s.out(&via2, 0, 0, &param(0, 0xa2, false)).unwrap();
        assert_eq!(keys_of(&s.read(0).unwrap()), vec![0xa1, 0xa2]);
        // READ FULL STATUS reports each registration's relative target port.
        let full = s.read(3).unwrap();
        let first = 8;
        let second = first + 24 + be32(&full, first + 20) as usize;
        assert_eq!(super::super::bytes::be16(&full, first + 18), 1);
        assert_eq!(super::super::bytes::be16(&full, second + 18), 2);
        assert_eq!(full[first + 12], 0x01, "the holder");
        assert_eq!(full[second + 12], 0x00);
        // State saved before ports were recorded reads as port 1.
        let old = r#"{"generation":3,"regs":[{"nexus":"iqn.a,i,0x1","key":5}],"res":{"holder":"iqn.a,i,0x1","ty":1},"aptpl":false}"#;
        let back: PrState = serde_json::from_str(old).unwrap();
        assert!(!back.conflicts(&via1, Access::Write));
        assert!(back.conflicts(&via2, Access::Write));
    }

    /// `who` sends PR OUT `sa` (type `t`, keys `rkey`, `sakey`) on `s`: the
    /// notices it gives the others.
    fn step(s: &mut PrState, who: &Nexus, sa: u8, t: u8, keys: (u64, u64)) -> Vec<(Nexus, Notice)> {
        let before = s.clone();
        assert_eq!(s.out(who, sa, t, &param(keys.0, keys.1, false)), Ok(true));
        notices(&before, s)
    }

    fn all(v: &[&Nexus], what: Notice) -> Vec<(Nexus, Notice)> {
        v.iter().map(|x| ((*x).clone(), what)).collect()
    }

    /// Nexuses a, b, c registered with keys 0xa, 0xb, 0xc.
    fn three_registered() -> (Nexus, Nexus, Nexus, PrState) {
        let (a, b, c) = (n(A_NAME), n(B_NAME), n("iqn.c,i,0x3"));
        let mut s = PrState::default();
        for (x, k) in [(&a, 0xa), (&b, 0xb), (&c, 0xc)] {
            step(&mut s, x, SA_REGISTER, 0, (0, k));
        }
        (a, b, c, s)
    }

    #[test]
    fn a_release_tells_the_other_registrants_of_shared_types_only() {
        let (a, b, c, mut s) = three_registered();
        for t in [ty::WE, ty::EA, ty::WE_RO, ty::EA_RO, ty::WE_AR, ty::EA_AR] {
            assert!(step(&mut s, &a, 1, t, (0xa, 0)).is_empty(), "RESERVE {t}");
            let want = match t {
                ty::WE | ty::EA => Vec::new(),
                _ => all(&[&b, &c], Notice::ReservationsReleased),
            };
            assert_eq!(step(&mut s, &a, SA_RELEASE, t, (0xa, 0)), want, "type {t}");
        }
        assert!(notices(&s, &s).is_empty(), "the same state again");
        assert!(notices(&PrState::default(), &PrState::default()).is_empty());
        // Unregistering as the holder of a registrants-only reservation
        // releases it: the others hear; as a write exclusive holder: nobody.
        step(&mut s, &a, 1, ty::EA_RO, (0xa, 0));
        assert_eq!(
            step(&mut s, &a, SA_REGISTER, 0, (0xa, 0)),
            all(&[&b, &c], Notice::ReservationsReleased)
        );
        step(&mut s, &b, 1, ty::WE, (0xb, 0));
        assert!(step(&mut s, &b, SA_REGISTER_IGNORE, 0, (0, 0)).is_empty());
        assert!(s.res.is_none());
        // CLEAR: every registrant before it but the sender, reservation or not.
        step(&mut s, &a, SA_REGISTER, 0, (0, 0xa));
        assert_eq!(
            step(&mut s, &c, SA_CLEAR, 0, (0xc, 0)),
            all(&[&a], Notice::ReservationsPreempted)
        );
    }

    #[test]
    fn a_preempt_that_changes_the_type_releases_it_for_the_registrants_left() {
        let (a, b, c, mut s) = three_registered();
        step(&mut s, &a, 1, ty::WE, (0xa, 0));
        // The same type: only the preempted nexus hears.
        assert_eq!(
            step(&mut s, &b, SA_PREEMPT, ty::WE, (0xb, 0xa)),
            all(&[&a], Notice::RegistrationPreempted)
        );
        // Another type: the preempted one, then the one left (not the sender).
        step(&mut s, &a, SA_REGISTER, 0, (0, 0xa));
        let mut want = all(&[&b], Notice::RegistrationPreempted);
        want.extend(all(&[&a], Notice::ReservationsReleased));
        assert_eq!(
            step(&mut s, &c, SA_PREEMPT_AND_ABORT, ty::EA, (0xc, 0xb)),
            want
        );
        // The holder preempting its own reservation to change its type.
        assert_eq!(
            step(&mut s, &c, SA_PREEMPT, ty::WE_RO, (0xc, 0xc)),
            all(&[&a], Notice::ReservationsReleased)
        );
        assert_eq!(s.res.as_ref().map(|r| r.ty), Some(ty::WE_RO));
        // Removing a registration that holds nothing: the type stays.
        step(&mut s, &b, SA_REGISTER, 0, (0, 0xb));
        assert_eq!(
            step(&mut s, &c, SA_PREEMPT, ty::WE_RO, (0xc, 0xb)),
            all(&[&b], Notice::RegistrationPreempted)
        );
        assert_eq!(Notice::ReservationsReleased.sense().ascq, 0x04);
        assert_eq!(Notice::ReservationsPreempted.sense().ascq, 0x03);
    }

    #[test]
    fn a_committed_state_keeps_the_local_reserve6_holder() {
        let mut local = PrState::default();
        local.reserve6(&n(A_NAME)).unwrap();
        let mut cluster = PrState::default();
        cluster.out(&n(B_NAME), 0, 0, &param(0, 9, false)).unwrap();
        local.set_persistent(&cluster);
        assert_eq!(local.legacy, Some(n(A_NAME)));
        assert_eq!(local.regs, cluster.regs);
        assert!(PrState::default().is_empty());
        assert!(!cluster.is_empty());
    }
}
