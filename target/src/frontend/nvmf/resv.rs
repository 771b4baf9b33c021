//! NVMe reservations (Reservation Register 0Dh, Report 0Eh, Acquire 11h, Release
//! 15h) mapped onto the SCSI persistent reservation state ([`PrState`]): a volume
//! has one reservation state whichever protocol its hosts use.
//!
//! Mapping (docs/NVMF.md, "Reservations"):
//! - A host is the nexus `nvme:hostid:<32 hex digits>` (its Connect's host
//!   identifier; `nvme:hostnqn:<NQN>` for a host that sends an all-zero one) on
//!   relative port [`NVME_PORT`] (0): NVMe registers a host, not a path, so one
//!   host is one registrant through every controller and every node.
//! - Types: NVMe 1..6 (write exclusive, exclusive access, the registrants-only and
//!   the all-registrants variants) are SCSI types 1, 3, 5, 6, 7, 8.
//! - Register (register / unregister / replace, IEKEY, CPTPL) is SCSI REGISTER or
//!   REGISTER AND IGNORE EXISTING KEY; Acquire (acquire / preempt / preempt and
//!   abort) is RESERVE / PREEMPT / PREEMPT AND ABORT; Release (release / clear) is
//!   RELEASE / CLEAR. The NVMe cases SCSI answers differently are decided here
//!   (registering again with the same key succeeds; unregistering or replacing an
//!   unknown host conflicts).
//! - Report: the state as an NVMe reservation status data structure (extended
//!   with 128-bit host identifiers when EDS is set); registrants that are SCSI I_T
//!   nexuses have host identifier 0 and controller id FFFFh, as every entry.
//!
//! Pure logic except [`NsResv`], which holds a namespace's copy of the state.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::nvme::{io_op, Sqe, Status};
use crate::frontend::scsi::pr::{self, ty, Access, Nexus, Notice, PrError, PrState};
use crate::frontend::scsi::pr_cluster::PrBroker;

/// The relative target port of every NVMe nexus (a host is one registrant
/// whatever controller or node it goes through).
pub const NVME_PORT: u16 = 0;
pub use crate::frontend::scsi::pr::{removed, SA_PREEMPT_AND_ABORT};
/// Bytes of a Reservation Report header (non-extended; the extended one is 64).
pub const REPORT_HDR: usize = 24;
/// Bytes of a registered controller entry (extended: 64).
pub const REPORT_ENTRY: usize = 24;
/// Bytes of the extended header and entries.
pub const REPORT_EXT: usize = 64;

/// The nexus of a host with host identifier `hostid` and NQN `hostnqn`.
pub fn nexus(hostnqn: &str, hostid: &[u8; 16]) -> Nexus {
    if hostid.iter().all(|b| *b == 0) {
        return Nexus::new(format!("nvme:hostnqn:{hostnqn}"), NVME_PORT);
    }
    let hex: String = hostid.iter().map(|b| format!("{b:02x}")).collect();
    Nexus::new(format!("nvme:hostid:{hex}"), NVME_PORT)
}

/// The host identifier of a registrant's nexus name (0 for SCSI nexuses and
/// hosts known by NQN).
pub fn hostid_of(initiator: &str) -> [u8; 16] {
    let mut id = [0u8; 16];
    let Some(hex) = initiator.strip_prefix("nvme:hostid:") else {
        return id;
    };
    if hex.len() != 32 || !hex.is_ascii() {
        return id;
    }
    for (i, b) in id.iter_mut().enumerate() {
        match u8::from_str_radix(&hex[2 * i..2 * i + 2], 16) {
            Ok(v) => *b = v,
            Err(_) => return [0u8; 16],
        }
    }
    id
}

/// SCSI type of NVMe reservation type `t` (1..=6).
pub fn scsi_type(t: u8) -> Option<u8> {
    Some(match t {
        1 => ty::WE,
        2 => ty::EA,
        3 => ty::WE_RO,
        4 => ty::EA_RO,
        5 => ty::WE_AR,
        6 => ty::EA_AR,
        _ => return None,
    })
}

/// NVMe reservation type of SCSI type `t` (0 for none or unknown).
pub fn nvme_type(t: u8) -> u8 {
    match t {
        ty::WE => 1,
        ty::EA => 2,
        ty::WE_RO => 3,
        ty::EA_RO => 4,
        ty::WE_AR => 5,
        ty::EA_AR => 6,
        _ => 0,
    }
}

/// True for the four reservation opcodes.
pub fn is_resv(opcode: u8) -> bool {
    matches!(
        opcode,
        io_op::RESV_REGISTER | io_op::RESV_REPORT | io_op::RESV_ACQUIRE | io_op::RESV_RELEASE
    )
}

/// Bytes the host sends with reservation command `opcode`.
pub fn host_data_len(opcode: u8) -> u64 {
    match opcode {
        io_op::RESV_REGISTER | io_op::RESV_ACQUIRE => 16,
        io_op::RESV_RELEASE => 8,
        _ => 0,
    }
}

/// How an I/O command meets a reservation (NVMe's read and write command groups).
pub fn access(opcode: u8) -> Access {
    match opcode {
        io_op::READ | io_op::COMPARE => Access::Read,
        io_op::WRITE | io_op::WRITE_ZEROES | io_op::DSM | io_op::FLUSH => Access::Write,
        _ => Access::Any,
    }
}

/// A changing reservation command as the SCSI PERSISTENT RESERVE OUT it maps to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrOut {
    /// Service action.
    pub sa: u8,
    /// Scope (0) and SCSI type.
    pub scope_type: u8,
    /// The 24-byte parameter list.
    pub param: Vec<u8>,
}

fn pr_out(sa: u8, scsi_ty: u8, rkey: u64, sakey: u64, aptpl: bool) -> PrOut {
    PrOut {
        sa,
        scope_type: scsi_ty,
        param: crate::frontend::scsi::pr::param(rkey, sakey, aptpl),
    }
}

fn key_of(state: &PrState, n: &Nexus) -> Option<u64> {
    state
        .regs
        .iter()
        .find(|r| r.nexus == n.initiator && r.port == n.port)
        .map(|r| r.key)
}

fn le64(d: &[u8], at: usize) -> u64 {
    d.get(at..at + 8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// The PR OUT a Register, Acquire or Release command of `nexus` (with its host
/// data `data`) maps to against `state`: `Ok(None)` when it succeeds without a
/// change, `Err` with the status it fails with at once.
pub fn to_pr_out(
    state: &PrState,
    nexus: &Nexus,
    sqe: &Sqe,
    data: &[u8],
) -> Result<Option<PrOut>, Status> {
    let cdw10 = sqe.cdw(10);
    let action = (cdw10 & 0x7) as u8;
    let iekey = cdw10 & 0x8 != 0;
    if data.len() as u64 != host_data_len(sqe.opcode()) {
        return Err(Status::INVALID_FIELD);
    }
    let crkey = le64(data, 0);
    let current = key_of(state, nexus);
    match sqe.opcode() {
        io_op::RESV_REGISTER => {
            let nrkey = le64(data, 8);
            let aptpl = match cdw10 >> 30 {
                0 => state.aptpl,
                2 => false,
                3 => true,
                _ => return Err(Status::INVALID_FIELD),
            };
            let sa = if iekey { 6 } else { 0 };
            match (action, current) {
                (0, _) if nrkey == 0 => Err(Status::INVALID_FIELD),
                (0, Some(k)) if k == nrkey && aptpl == state.aptpl => Ok(None),
                (0, Some(k)) if k == nrkey => Ok(Some(pr_out(0, 0, k, k, aptpl))),
                (0, Some(_)) => Err(Status::RESERVATION_CONFLICT),
                (0, None) => Ok(Some(pr_out(0, 0, 0, nrkey, aptpl))),
                (1, None) => Err(Status::RESERVATION_CONFLICT),
                (1, Some(k)) if !iekey && k != crkey => Err(Status::RESERVATION_CONFLICT),
                (1, Some(k)) => Ok(Some(pr_out(sa, 0, k, 0, aptpl))),
                (2, _) if nrkey == 0 => Err(Status::INVALID_FIELD),
                (2, None) => Err(Status::RESERVATION_CONFLICT),
                (2, Some(k)) if !iekey && k != crkey => Err(Status::RESERVATION_CONFLICT),
                (2, Some(k)) => Ok(Some(pr_out(sa, 0, k, nrkey, aptpl))),
                _ => Err(Status::INVALID_FIELD),
            }
        }
        io_op::RESV_ACQUIRE => {
            let prkey = le64(data, 8);
            let t = scsi_type(((cdw10 >> 8) & 0xff) as u8).ok_or(Status::INVALID_FIELD)?;
            let rkey = if iekey {
                current.unwrap_or(crkey)
            } else {
                crkey
            };
            let sa = match action {
                0 => 1,
                1 => 4,
                2 => 5,
                _ => return Err(Status::INVALID_FIELD),
            };
            Ok(Some(pr_out(sa, t, rkey, prkey, state.aptpl)))
        }
        io_op::RESV_RELEASE => {
            let rkey = if iekey {
                current.unwrap_or(crkey)
            } else {
                crkey
            };
            match action {
                0 => {
                    let t = scsi_type(((cdw10 >> 8) & 0xff) as u8).ok_or(Status::INVALID_FIELD)?;
                    Ok(Some(pr_out(2, t, rkey, 0, state.aptpl)))
                }
                1 => Ok(Some(pr_out(3, 0, rkey, 0, state.aptpl))),
                _ => Err(Status::INVALID_FIELD),
            }
        }
        _ => Err(Status::INVALID_OPCODE),
    }
}

/// Runs `out` for `nexus` on `state`: whether it changed the state, or the
/// NVMe status it fails with.
pub fn run(state: &mut PrState, nexus: &Nexus, out: &PrOut) -> Result<bool, Status> {
    state
        .out(nexus, out.sa, out.scope_type, &out.param)
        .map_err(|e| match e {
            PrError::Conflict => Status::RESERVATION_CONFLICT,
            PrError::Check(_) => Status::INVALID_FIELD,
        })
}

/// Reservation notification log page types (log 80h, byte 8).
pub mod notice {
    /// Registration preempted: another host's preempt removed this host's
    /// registration.
    pub const REG_PREEMPTED: u8 = 1;
    /// Reservation released: a registrants-only or all-registrants reservation
    /// (or its type) went away by another host's release, unregistration or
    /// preempt.
    pub const RES_RELEASED: u8 = 2;
    /// Reservation preempted: another host cleared the reservation and every
    /// registration.
    pub const RES_PREEMPTED: u8 = 3;
}

/// The reservation notifications the change that made `after` from `before`
/// ([`PrState::last`]) gives NVMe hosts other than the one that sent it: (host,
/// [`notice`] type), by the rule SCSI's unit attentions follow ([`pr::notices`]:
/// registration preempted to the hosts a preempt removed, reservation released
/// to the registrants left when a preempt changed the type or a registrants-only
/// or all-registrants reservation was released or its holder unregistered,
/// reservation preempted to every other registrant of a clear). SCSI
/// registrants get unit attentions instead.
pub fn notices(before: &PrState, after: &PrState) -> Vec<(Nexus, u8)> {
    pr::notices(before, after)
        .into_iter()
        .filter(|(n, _)| n.initiator.starts_with("nvme:"))
        .map(|(n, what)| {
            let t = match what {
                Notice::RegistrationPreempted => notice::REG_PREEMPTED,
                Notice::ReservationsReleased => notice::RES_RELEASED,
                Notice::ReservationsPreempted => notice::RES_PREEMPTED,
            };
            (n, t)
        })
        .collect()
}

/// The Reservation Report data of `state` (`extended`: 128-bit host
/// identifiers), whole; the caller truncates to what the host asked.
pub fn report(state: &PrState, extended: bool) -> Vec<u8> {
    let (hdr, entry) = if extended {
        (REPORT_EXT, REPORT_EXT)
    } else {
        (REPORT_HDR, REPORT_ENTRY)
    };
    let mut d = vec![0u8; hdr + entry * state.regs.len()];
    d[0..4].copy_from_slice(&state.generation.to_le_bytes());
    let res_ty = state.res.as_ref().map_or(0, |r| r.ty);
    d[4] = nvme_type(res_ty);
    let n = state.regs.len().min(usize::from(u16::MAX)) as u16;
    d[5..7].copy_from_slice(&n.to_le_bytes());
    // PTPLS: the state is stored on every change whatever CPTPL said (feature
    // 83h reports the same).
    d[9] = 1;
    let all = res_ty == ty::WE_AR || res_ty == ty::EA_AR;
    for (i, r) in state.regs.iter().enumerate() {
        let e = &mut d[hdr + i * entry..hdr + (i + 1) * entry];
        // Controller id FFFFh: the host may use several controllers.
        e[0..2].copy_from_slice(&0xffffu16.to_le_bytes());
        let holds = state
            .res
            .as_ref()
            .is_some_and(|x| all || (x.holder == r.nexus && x.holder_port == r.port));
        e[2] = u8::from(holds);
        let id = hostid_of(&r.nexus);
        if extended {
            e[8..16].copy_from_slice(&r.key.to_le_bytes());
            e[16..32].copy_from_slice(&id);
        } else {
            e[8..16].copy_from_slice(&id[..8]);
            e[16..24].copy_from_slice(&r.key.to_le_bytes());
        }
    }
    d
}

/// The Report command's data length (NUMD + 1 dwords) and extended flag.
pub fn report_params(sqe: &Sqe) -> (u64, bool) {
    ((u64::from(sqe.cdw(10)) + 1) * 4, sqe.cdw(11) & 1 != 0)
}

/// What a reservation change did to other hosts.
#[derive(Debug, Default)]
pub struct Changed {
    /// The registrants it removed (a preempt's).
    pub removed: Vec<Nexus>,
    /// The notifications it gives ([`notices`]).
    pub notices: Vec<(Nexus, u8)>,
}

/// A namespace's reservation state: its own (saved to a file when it has one) or,
/// for a shared volume, the cluster's committed copy (changes go through the
/// [`PrBroker`] as PERSISTENT RESERVE OUT requests; see `pr_cluster`).
pub struct NsResv {
    state: Mutex<PrState>,
    /// True while a reservation is held: the I/O path checks only this.
    active: AtomicBool,
    path: Option<PathBuf>,
    cluster: Option<Arc<PrBroker>>,
}

impl NsResv {
    /// A namespace's own state `state`, saved to `path` on change when given.
    pub fn local(state: PrState, path: Option<PathBuf>) -> NsResv {
        NsResv {
            active: AtomicBool::new(state.any()),
            state: Mutex::new(state),
            path,
            cluster: None,
        }
    }

    /// The cluster's state of shared volume `volume`, as `broker` holds it now.
    pub fn cluster(volume: &str, broker: Arc<PrBroker>) -> NsResv {
        let mut r = NsResv::local(broker.state(volume), None);
        r.cluster = Some(broker);
        r
    }

    fn lock(&self) -> MutexGuard<'_, PrState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The broker when the cluster keeps this state.
    pub fn broker(&self) -> Option<&Arc<PrBroker>> {
        self.cluster.as_ref()
    }

    /// A copy of the state.
    pub fn state(&self) -> PrState {
        self.lock().clone()
    }

    /// True while a reservation is held (lock-free).
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Whether `nexus` may run a command with `access` (lock-free when no
    /// reservation is held).
    pub fn conflicts(&self, nexus: &Nexus, access: Access) -> bool {
        self.active.load(Ordering::Acquire) && self.lock().conflicts(nexus, access)
    }

    /// Installs the cluster's committed state; returns the one it replaced.
    pub fn set_committed(&self, state: &PrState) -> PrState {
        let mut g = self.lock();
        let old = g.clone();
        g.set_persistent(state);
        self.active.store(g.any(), Ordering::Release);
        old
    }

    /// Runs `out` on this namespace's own state (saved when it changed).
    /// `what` names the namespace for the log. The registrants it removed (a
    /// preempt's), or the status it fails with.
    pub fn run_local(&self, nexus: &Nexus, out: &PrOut, what: &str) -> Result<Changed, Status> {
        let mut g = self.lock();
        let before = g.clone();
        let r = run(&mut g, nexus, out);
        self.active.store(g.any(), Ordering::Release);
        if r == Ok(true) {
            if let Some(p) = &self.path {
                if let Err(e) = g.save(p) {
                    log::error!("nvmf: {what}: cannot save reservations: {e}");
                }
            }
        }
        r.map(|_| Changed {
            removed: removed(&before, &g),
            notices: notices(&before, &g),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqe(op: u8, cdw10: u32, cdw11: u32) -> Sqe {
        let mut s = [0u8; 64];
        s[0] = op;
        s[40..44].copy_from_slice(&cdw10.to_le_bytes());
        s[44..48].copy_from_slice(&cdw11.to_le_bytes());
        Sqe(s)
    }

    fn keys(a: u64, b: u64) -> Vec<u8> {
        let mut d = a.to_le_bytes().to_vec();
        d.extend_from_slice(&b.to_le_bytes());
        d
    }

    fn exec(s: &mut PrState, n: &Nexus, q: &Sqe, d: &[u8]) -> Result<bool, Status> {
        match to_pr_out(s, n, q, d)? {
            Some(o) => run(s, n, &o),
            None => Ok(false),
        }
    }

    #[test]
    fn two_hosts_register_acquire_conflict_release() {
        let a = nexus("nqn.a", &[0xaa; 16]);
        let b = nexus("nqn.b", &[0xbb; 16]);
        assert_eq!(hostid_of(&a.initiator), [0xaa; 16]);
        let mut s = PrState::default();
        let reg = sqe(io_op::RESV_REGISTER, 0, 0);
        assert_eq!(exec(&mut s, &a, &reg, &keys(0, 0xa)), Ok(true));
        assert_eq!(exec(&mut s, &b, &reg, &keys(0, 0xb)), Ok(true));
        // Registering again with the same key is fine; another key conflicts.
        assert_eq!(exec(&mut s, &a, &reg, &keys(0, 0xa)), Ok(false));
        assert_eq!(
            exec(&mut s, &a, &reg, &keys(0, 0xc)),
            Err(Status::RESERVATION_CONFLICT)
        );
        // A acquires write exclusive (NVMe type 1).
        let acq = sqe(io_op::RESV_ACQUIRE, 1 << 8, 0);
        assert_eq!(exec(&mut s, &a, &acq, &keys(0xa, 0)), Ok(true));
        assert!(s.conflicts(&b, Access::Write));
        assert!(!s.conflicts(&b, Access::Read));
        assert!(!s.conflicts(&a, Access::Write));
        // B cannot acquire; a wrong key conflicts.
        assert_eq!(
            exec(&mut s, &b, &acq, &keys(0xb, 0)),
            Err(Status::RESERVATION_CONFLICT)
        );
        let rep = report(&s, true);
        assert_eq!(rep[4], 1);
        assert_eq!(u16::from_le_bytes([rep[5], rep[6]]), 2);
        assert_eq!(rep[64 + 2], 1, "A holds");
        assert_eq!(&rep[64 + 16..64 + 32], &[0xaa; 16]);
        assert_eq!(rep[128 + 2], 0);
        assert_eq!(le64(&rep, 128 + 8), 0xb);
        let short = report(&s, false);
        assert_eq!(short.len(), 24 + 48);
        assert_eq!(le64(&short, 24 + 16), 0xa);
        // Release with another type: invalid field; with the right one: released.
        let rel_ea = sqe(io_op::RESV_RELEASE, 2 << 8, 0);
        assert_eq!(
            exec(&mut s, &a, &rel_ea, &keys(0xa, 0)[..8]),
            Err(Status::INVALID_FIELD)
        );
        let rel = sqe(io_op::RESV_RELEASE, 1 << 8, 0);
        assert_eq!(exec(&mut s, &a, &rel, &keys(0xa, 0)[..8]), Ok(true));
        assert!(!s.conflicts(&b, Access::Write));
    }

    #[test]
    fn notices_go_to_the_hosts_a_change_concerns_never_to_its_issuer() {
        let a = nexus("nqn.a", &[1; 16]);
        let b = nexus("nqn.b", &[2; 16]);
        let scsi = Nexus::new("iqn.x,i,0x1", 1);
        let mut s = PrState::default();
        let reg = sqe(io_op::RESV_REGISTER, 0, 0);
        exec(&mut s, &a, &reg, &keys(0, 1)).unwrap();
        exec(&mut s, &b, &reg, &keys(0, 2)).unwrap();
        s.out(&scsi, 0, 0, &crate::frontend::scsi::pr::param(0, 3, false))
            .unwrap();
        let change = |s: &mut PrState, who: &Nexus, q: Sqe, d: &[u8]| {
            let before = s.clone();
            let out = to_pr_out(s, who, &q, d).unwrap().unwrap();
            run(s, who, &out).unwrap();
            notices(&before, s)
        };
        // B: write exclusive, registrants only, then release: A is told, not
        // B nor the SCSI registrant.
        change(&mut s, &b, sqe(io_op::RESV_ACQUIRE, 3 << 8, 0), &keys(2, 0));
        let n = change(
            &mut s,
            &b,
            sqe(io_op::RESV_RELEASE, 3 << 8, 0),
            &keys(2, 0)[..8],
        );
        assert_eq!(n, vec![(a.clone(), notice::RES_RELEASED)]);
        // A plain write exclusive released: nobody.
        change(&mut s, &b, sqe(io_op::RESV_ACQUIRE, 1 << 8, 0), &keys(2, 0));
        let n = change(
            &mut s,
            &b,
            sqe(io_op::RESV_RELEASE, 1 << 8, 0),
            &keys(2, 0)[..8],
        );
        assert!(n.is_empty(), "{n:?}");
        // A preempts B: B's registration preempted.
        change(&mut s, &b, sqe(io_op::RESV_ACQUIRE, 1 << 8, 0), &keys(2, 0));
        let n = change(
            &mut s,
            &a,
            sqe(io_op::RESV_ACQUIRE, 2 | (1 << 8), 0),
            &keys(1, 2),
        );
        assert_eq!(n, vec![(b.clone(), notice::REG_PREEMPTED)]);
        // B again; A clears: B's reservation preempted.
        exec(&mut s, &b, &reg, &keys(0, 2)).unwrap();
        let n = change(&mut s, &a, sqe(io_op::RESV_RELEASE, 1, 0), &keys(1, 0)[..8]);
        assert_eq!(n, vec![(b, notice::RES_PREEMPTED)]);
    }

    #[test]
    fn preempt_unregister_and_clear() {
        let a = nexus("nqn.a", &[1; 16]);
        let b = nexus("nqn.b", &[0; 16]);
        assert_eq!(b.initiator, "nvme:hostnqn:nqn.b");
        let mut s = PrState::default();
        let reg = sqe(io_op::RESV_REGISTER, 0, 0);
        exec(&mut s, &a, &reg, &keys(0, 1)).unwrap();
        exec(&mut s, &b, &reg, &keys(0, 2)).unwrap();
        // A: exclusive access, registrants only (NVMe 4 = SCSI 6).
        exec(
            &mut s,
            &a,
            &sqe(io_op::RESV_ACQUIRE, 4 << 8, 0),
            &keys(1, 0),
        )
        .unwrap();
        assert_eq!(s.res.as_ref().unwrap().ty, ty::EA_RO);
        // B preempts A (removes A's key), takes write exclusive.
        let pre = sqe(io_op::RESV_ACQUIRE, 1 | (1 << 8), 0);
        assert_eq!(exec(&mut s, &b, &pre, &keys(2, 1)), Ok(true));
        assert!(s.conflicts(&a, Access::Write));
        assert_eq!(s.regs.len(), 1);
        // Unregistering an unknown host conflicts; replace changes the key.
        let unreg = sqe(io_op::RESV_REGISTER, 1, 0);
        assert_eq!(
            exec(&mut s, &a, &unreg, &keys(1, 0)),
            Err(Status::RESERVATION_CONFLICT)
        );
        let replace = sqe(io_op::RESV_REGISTER, 2, 0);
        assert_eq!(exec(&mut s, &b, &replace, &keys(2, 3)), Ok(true));
        assert_eq!(s.regs[0].key, 3);
        // Clear drops everything.
        let clear = sqe(io_op::RESV_RELEASE, 1, 0);
        assert_eq!(exec(&mut s, &b, &clear, &keys(3, 0)[..8]), Ok(true));
        assert!(s.regs.is_empty() && s.res.is_none());
        // Bad types and actions.
        assert_eq!(
            exec(
                &mut s,
                &a,
                &sqe(io_op::RESV_ACQUIRE, 7 << 8, 0),
                &keys(1, 0)
            ),
            Err(Status::INVALID_FIELD)
        );
        assert_eq!(
            exec(&mut s, &a, &sqe(io_op::RESV_REGISTER, 3, 0), &keys(0, 1)),
            Err(Status::INVALID_FIELD)
        );
    }
}
