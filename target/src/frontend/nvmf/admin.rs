//! Fabrics and admin commands: Connect's parameters, Property Get/Set, Identify,
//! Get Log Page, Set/Get Features, Keep Alive, Abort, Asynchronous Event Request.
//! Pure logic over the subsystem model: the queue pair moves the bytes.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

pub use super::fabrics::{
    cap, cc_transition, invalid_data_field, parse_connect, prop, property_value, CcChange,
    ConnectReq, CONNECT_DATA_LEN, VERSION,
};
use super::nvme::{admin_op, fctype, put16, put32, put64, put_str, Sqe, Status};
use super::subsys::{AnaState, Ctrl, Namespace, Subsystem, DISCOVERY_NQN, RESV_MASK_BITS};
use super::{
    Shared, FW_REV, IN_CAPSULE_DATA_BYTES, MAX_AERS, MAX_ANA_GROUP, MAX_IO_QUEUES, MAX_NAMESPACES,
    MAX_QUEUE_ENTRIES, MDTS,
};

/// Identify data size.
pub const IDENTIFY_LEN: usize = 4096;
/// Async event configuration bit: namespace attribute notices.
pub const AEC_NS_ATTR: u32 = 1 << 8;
/// Async event configuration bit: ANA change notices.
pub const AEC_ANA: u32 = 1 << 11;
/// Async event configuration bit: discovery log change notices.
pub const AEC_DISC: u32 = 1 << 31;
/// AER dword 0: namespace attribute changed (notice, info 0, log page 04h).
pub const AEN_NS_CHANGED: u32 = 0x02 | (0x04 << 16);
/// Log page id of the ANA log.
pub const LID_ANA: u8 = 0x0C;
/// AER dword 0: ANA change (notice, info 03h, log page 0Ch).
pub const AEN_ANA_CHANGE: u32 = 0x02 | (0x03 << 8) | (0x0C << 16);
/// Log page id of the reservation notification log.
pub const LID_RESV: u8 = 0x80;
/// Bytes of the reservation notification log page.
pub const RESV_LOG_LEN: usize = 64;
/// AER dword 0: reservation log page available (I/O command specific status,
/// info 00h, log page 80h).
pub const AEN_RESV_LOG: u32 = 0x06 | ((LID_RESV as u32) << 16);
/// Feature: reservation notification mask (namespace specific).
pub const FID_RESV_MASK: u8 = 0x82;
/// Feature: reservation persistence (namespace specific).
pub const FID_RESV_PERSIST: u8 = 0x83;

/// What an admin command came to.
pub enum AdminDone {
    /// Complete it with this status, dword 0 and data for the host.
    Reply {
        /// Status.
        status: Status,
        /// Dword 0 of the completion.
        dw0: u32,
        /// Dword 1 of the completion.
        dw1: u32,
        /// Data for the host (truncated to the host's buffer by the caller).
        data: Vec<u8>,
    },
    /// An Asynchronous Event Request: held until an event.
    HoldAer,
    /// Disconnect: complete with success, then close the queue.
    Disconnect,
}

fn reply(status: Status) -> AdminDone {
    AdminDone::Reply {
        status,
        dw0: 0,
        dw1: 0,
        data: Vec::new(),
    }
}

fn dw0(v: u32) -> AdminDone {
    AdminDone::Reply {
        status: Status::SUCCESS,
        dw0: v,
        dw1: 0,
        data: Vec::new(),
    }
}

fn data(d: Vec<u8>) -> AdminDone {
    AdminDone::Reply {
        status: Status::SUCCESS,
        dw0: 0,
        dw1: 0,
        data: d,
    }
}

/// Property Get.
pub fn property_get(ctrl: &Ctrl, sqe: &Sqe) -> AdminDone {
    let eight = sqe.0[40] & 7 == 1;
    let cc = ctrl.cc.load(Ordering::Acquire);
    let csts = ctrl.csts.load(Ordering::Acquire);
    match property_value(sqe.cdw(11), eight, cc, csts) {
        Ok(v) => AdminDone::Reply {
            status: Status::SUCCESS,
            dw0: v as u32,
            dw1: (v >> 32) as u32,
            data: Vec::new(),
        },
        Err(st) => reply(st),
    }
}

/// Property Set.
pub fn property_set(ctrl: &Ctrl, sqe: &Sqe) -> (AdminDone, CcChange) {
    let off = sqe.cdw(11);
    let v = sqe.cdw(12);
    if off != prop::CC {
        return (reply(Status::INVALID_FIELD), CcChange::None);
    }
    let old = ctrl.cc.swap(v, Ordering::AcqRel);
    let t = cc_transition(old, v, ctrl.csts.load(Ordering::Acquire));
    if t.io_queues_close {
        ctrl.io_epoch.fetch_add(1, Ordering::AcqRel);
    }
    ctrl.csts.store(t.csts, Ordering::Release);
    (reply(Status::SUCCESS), t.change)
}

/// Runs an admin command other than Connect (and other than the fabrics
/// commands the queue pair handles itself). `held_aers` is how many AERs the
/// queue holds now. `fenced`: this node must not serve the subsystem's
/// namespaces now (the data-plane lease fenced a shared volume of it), so the ANA
/// log reports this node's group inaccessible whatever state was set.
pub(crate) fn execute(
    sh: &Shared,
    ctrl: &Arc<Ctrl>,
    sqe: &Sqe,
    held_aers: usize,
    fenced: bool,
) -> AdminDone {
    match sqe.opcode() {
        admin_op::FABRICS => match sqe.fctype() {
            fctype::PROPERTY_GET => property_get(ctrl, sqe),
            fctype::DISCONNECT => AdminDone::Disconnect,
            _ => reply(Status::INVALID_FIELD),
        },
        admin_op::KEEP_ALIVE => {
            ctrl.last_ka_ms.store(sh.now_ms(), Ordering::Release);
            reply(Status::SUCCESS)
        }
        admin_op::IDENTIFY => identify(sh, ctrl, sqe),
        admin_op::GET_LOG_PAGE => get_log_page(sh, ctrl, sqe, fenced),
        admin_op::SET_FEATURES => set_features(sh, ctrl, sqe),
        admin_op::GET_FEATURES => get_features(sh, ctrl, sqe),
        admin_op::ASYNC_EVENT => {
            if held_aers >= MAX_AERS {
                reply(Status::AER_LIMIT)
            } else {
                AdminDone::HoldAer
            }
        }
        // Commands complete too fast here to be aborted: "not aborted".
        admin_op::ABORT => dw0(1),
        _ => reply(Status::INVALID_OPCODE),
    }
}

fn identify(sh: &Shared, ctrl: &Arc<Ctrl>, sqe: &Sqe) -> AdminDone {
    let cns = sqe.cdw(10) as u8;
    let sub = sh.subsystem(&ctrl.subnqn);
    let ns_of = |nsid: u32| sub.as_ref().and_then(|s| s.namespaces.get(&nsid).cloned());
    match cns {
        0x01 => data(identify_ctrl(ctrl, sub.as_deref())),
        _ if ctrl.discovery => reply(Status::INVALID_FIELD),
        0x00 => match ns_of(sqe.nsid()) {
            Some(ns) => data(identify_ns(&ns, sh.ana_group)),
            // An inactive id in range: all zeroes.
            None if sqe.nsid() >= 1 && sqe.nsid() <= MAX_NAMESPACES => {
                data(vec![0u8; IDENTIFY_LEN])
            }
            None => reply(Status::INVALID_NS),
        },
        0x02 | 0x10 => {
            let mut d = vec![0u8; IDENTIFY_LEN];
            if let Some(s) = &sub {
                for (i, nsid) in s
                    .namespaces
                    .keys()
                    .filter(|n| **n > sqe.nsid())
                    .take(IDENTIFY_LEN / 4)
                    .enumerate()
                {
                    put32(&mut d, i * 4, *nsid);
                }
            }
            data(d)
        }
        0x03 => match ns_of(sqe.nsid()) {
            Some(ns) => data(ns_descs(&ns)),
            None => reply(Status::INVALID_NS),
        },
        // I/O command set specific (NVM, CSI 0): controller and namespace; no
        // limits beyond MDTS.
        0x05 | 0x06 if (sqe.cdw(11) >> 24) == 0 => data(vec![0u8; IDENTIFY_LEN]),
        _ => reply(Status::INVALID_FIELD),
    }
}

/// Identify Controller.
pub fn identify_ctrl(ctrl: &Ctrl, sub: Option<&Subsystem>) -> Vec<u8> {
    let mut d = vec![0u8; IDENTIFY_LEN];
    let (serial, model) = match sub {
        Some(s) => (s.serial(), s.model()),
        None => ("plexd-discovery".to_string(), "plexd discovery".to_string()),
    };
    put_str(&mut d[4..24], &serial, b' ');
    put_str(&mut d[24..64], &model, b' ');
    put_str(&mut d[64..72], FW_REV, b' ');
    d[72] = 6; // recommended arbitration burst
    if !ctrl.discovery {
        // Multi-port, multi-controller, ANA reporting.
        d[76] = 0x0b;
    }
    d[77] = MDTS;
    put16(&mut d, 78, ctrl.cntlid);
    put32(&mut d, 80, VERSION);
    // OAES: namespace attribute and ANA change notices (discovery: log changes).
    put32(
        &mut d,
        92,
        if ctrl.discovery {
            AEC_DISC
        } else {
            AEC_NS_ATTR | AEC_ANA
        },
    );
    d[111] = if ctrl.discovery { 2 } else { 1 };
    d[258] = 3; // abort limit, 0-based
    d[259] = (MAX_AERS - 1) as u8;
    d[260] = 0x03; // one firmware slot, read-only
    d[261] = 0x04; // extended data for Get Log Page (offsets)
    put16(&mut d, 266, 0x0157); // warning temperature threshold (343 K)
    put16(&mut d, 268, 0x0175); // critical temperature threshold (373 K)
    put16(&mut d, 320, 10); // keep alive granularity: 1 s (100 ms units)
    if !ctrl.discovery {
        d[342] = 10; // ANA transition time (s)
        d[343] = 0x47; // optimized, non-optimized, inaccessible; group ids fixed
        put32(&mut d, 344, MAX_ANA_GROUP);
        put32(&mut d, 348, MAX_ANA_GROUP);
    }
    d[512] = 0x66;
    d[513] = 0x44;
    put16(&mut d, 514, MAX_QUEUE_ENTRIES as u16);
    if !ctrl.discovery {
        put32(&mut d, 516, MAX_NAMESPACES);
        // Compare, Dataset Management, Write Zeroes, Reservations.
        put16(&mut d, 520, 0x01 | 0x04 | 0x08 | 0x20);
        let vwc = sub.is_some_and(|s| s.namespaces.values().any(|n| n.bdev.volatile_write_cache()));
        // Bits 2:1 = 10b: no broadcast Flush (NSID FFFFFFFFh).
        d[525] = u8::from(vwc) | 0x04;
        put32(&mut d, 540, MAX_NAMESPACES);
    }
    // SGLs supported (no alignment), SGL offsets (in-capsule data).
    put32(&mut d, 536, 0x01 | (1 << 20));
    let nqn = if ctrl.discovery {
        DISCOVERY_NQN
    } else {
        &ctrl.subnqn
    };
    put_str(&mut d[768..1024], nqn, 0);
    put32(&mut d, 1792, ((64 + IN_CAPSULE_DATA_BYTES) / 16) as u32);
    put32(&mut d, 1796, 1);
    put16(&mut d, 1800, 0);
    d[1802] = 0; // dynamic controller model
    d[1803] = 1; // one SGL descriptor
    d
}

/// Identify Namespace.
pub fn identify_ns(ns: &Namespace, ana_group: u32) -> Vec<u8> {
    let mut d = vec![0u8; IDENTIFY_LEN];
    let blocks = ns.blocks();
    put64(&mut d, 0, blocks);
    put64(&mut d, 8, blocks);
    put64(&mut d, 16, blocks);
    d[25] = 0; // one LBA format
    d[26] = 0;
    d[30] = 1; // may be shared by several controllers
               // RESCAP: persist through power loss (always: the state is stored) and
               // the six reservation types.
    d[31] = 0x7f;
    put32(&mut d, 92, ana_group);
    d[99] = u8::from(ns.conf.read_only);
    d[104..120].copy_from_slice(&ns.ident.nguid);
    d[120..128].copy_from_slice(&ns.ident.eui64);
    d[130] = ns.block_size().max(1).trailing_zeros() as u8;
    d
}

/// Namespace identification descriptor list.
pub fn ns_descs(ns: &Namespace) -> Vec<u8> {
    let mut d = Vec::with_capacity(IDENTIFY_LEN);
    d.extend_from_slice(&[1, 8, 0, 0]);
    d.extend_from_slice(&ns.ident.eui64);
    d.extend_from_slice(&[2, 16, 0, 0]);
    d.extend_from_slice(&ns.ident.nguid);
    d.extend_from_slice(&[3, 16, 0, 0]);
    d.extend_from_slice(&ns.ident.uuid);
    d.extend_from_slice(&[4, 1, 0, 0, 0]);
    d.resize(IDENTIFY_LEN, 0);
    d
}

/// Whether namespace `nsid` of `ctrl`'s subsystem exists (all of them for
/// FFFFFFFFh when `all` is allowed).
fn ns_exists(sh: &Shared, ctrl: &Ctrl, nsid: u32, all: bool) -> bool {
    !ctrl.discovery
        && sh
            .subsystem(&ctrl.subnqn)
            .is_some_and(|s| (all && nsid == u32::MAX) || s.namespaces.contains_key(&nsid))
}

/// Set Features 82h (reservation notification mask of one namespace, or all
/// of them for FFFFFFFFh) and 83h (reservation persistence: the state always
/// persists, so only PTPL set is accepted).
fn set_resv_feature(sh: &Shared, ctrl: &Ctrl, sqe: &Sqe) -> AdminDone {
    let (fid, v, nsid) = (sqe.cdw(10) as u8, sqe.cdw(11), sqe.nsid());
    if !ns_exists(sh, ctrl, nsid, fid == FID_RESV_MASK) {
        return reply(Status::INVALID_NS);
    }
    if fid == FID_RESV_PERSIST {
        return reply(if v & 1 == 1 {
            Status::SUCCESS
        } else {
            Status::INVALID_FIELD
        });
    }
    if v & !RESV_MASK_BITS != 0 {
        return reply(Status::INVALID_FIELD);
    }
    let nsids: Vec<u32> = if nsid == u32::MAX {
        sh.subsystem(&ctrl.subnqn)
            .map(|s| s.namespaces.keys().copied().collect())
            .unwrap_or_default()
    } else {
        vec![nsid]
    };
    for n in nsids {
        ctrl.set_resv_mask(n, v);
    }
    reply(Status::SUCCESS)
}

fn set_features(sh: &Shared, ctrl: &Ctrl, sqe: &Sqe) -> AdminDone {
    if sqe.cdw(10) & (1 << 31) != 0 {
        return reply(Status::NOT_SAVEABLE);
    }
    let v = sqe.cdw(11);
    match sqe.cdw(10) as u8 {
        FID_RESV_MASK | FID_RESV_PERSIST => set_resv_feature(sh, ctrl, sqe),
        0x07 => {
            if ctrl.discovery {
                return reply(Status::INVALID_FIELD);
            }
            let (nsq, ncq) = (v & 0xffff, v >> 16);
            if nsq == 0xffff || ncq == 0xffff {
                return reply(Status::INVALID_FIELD);
            }
            let grant = (nsq.min(ncq) + 1).min(MAX_IO_QUEUES);
            ctrl.io_queues.store(grant, Ordering::Release);
            dw0((grant - 1) | ((grant - 1) << 16))
        }
        0x0F => {
            ctrl.kato_ms.store(v, Ordering::Release);
            reply(Status::SUCCESS)
        }
        0x0B => {
            let supported = if ctrl.discovery {
                AEC_DISC
            } else {
                AEC_NS_ATTR | AEC_ANA
            };
            ctrl.aec.store(v & supported, Ordering::Release);
            reply(Status::SUCCESS)
        }
        // Host Identifier: set by Connect on fabrics.
        0x81 => reply(Status::SEQUENCE),
        // Accepted and ignored: temperature threshold, error recovery, volatile
        // write cache (the cache follows the bdev), interrupt coalescing.
        0x04 | 0x05 | 0x06 | 0x08 => reply(Status::SUCCESS),
        _ => reply(Status::INVALID_FIELD),
    }
}

fn get_features(sh: &Shared, ctrl: &Ctrl, sqe: &Sqe) -> AdminDone {
    let sel = (sqe.cdw(10) >> 8) & 7;
    let fid = sqe.cdw(10) as u8;
    if sel == 3 {
        // Supported capabilities: changeable, not saveable, not per namespace.
        return match fid {
            0x04 | 0x05 | 0x06 | 0x07 | 0x08 | 0x0B | 0x0F => dw0(0x4),
            // Changeable, namespace specific.
            FID_RESV_MASK | FID_RESV_PERSIST if !ctrl.discovery => dw0(0x6),
            _ => reply(Status::INVALID_FIELD),
        };
    }
    match fid {
        FID_RESV_MASK | FID_RESV_PERSIST if !ns_exists(sh, ctrl, sqe.nsid(), false) => {
            reply(Status::INVALID_NS)
        }
        FID_RESV_MASK => dw0(ctrl.resv_mask(sqe.nsid())),
        // PTPL: the reservation state is stored on every change (a file, or
        // the cluster's configuration on disk), so it persists through power loss.
        FID_RESV_PERSIST => dw0(1),
        0x07 if !ctrl.discovery => {
            let g = if sel == 1 {
                MAX_IO_QUEUES
            } else {
                ctrl.io_queues.load(Ordering::Acquire)
            };
            dw0((g - 1) | ((g - 1) << 16))
        }
        0x0F => dw0(ctrl.kato_ms.load(Ordering::Acquire)),
        0x0B => dw0(ctrl.aec.load(Ordering::Acquire)),
        // Host Identifier (the Connect's): 128 bits with EXHID, else 64.
        0x81 if !ctrl.discovery => {
            let n = if sqe.cdw(11) & 1 != 0 { 16 } else { 8 };
            data(ctrl.hostid[..n].to_vec())
        }
        0x04 => dw0(0x0157),
        0x05 | 0x08 => dw0(0),
        0x06 => {
            let vwc = sh
                .subsystem(&ctrl.subnqn)
                .is_some_and(|s| s.namespaces.values().any(|n| n.bdev.volatile_write_cache()));
            dw0(u32::from(vwc))
        }
        _ => reply(Status::INVALID_FIELD),
    }
}

fn get_log_page(sh: &Shared, ctrl: &Arc<Ctrl>, sqe: &Sqe, fenced: bool) -> AdminDone {
    let lid = sqe.cdw(10) as u8;
    let lsp = (sqe.cdw(10) >> 8) & 0xf;
    let numd = (((sqe.cdw(11) & 0xffff) as u64) << 16 | (sqe.cdw(10) >> 16) as u64) + 1;
    let off = sqe.cdw(12) as u64 | ((sqe.cdw(13) as u64) << 32);
    let len = numd * 4;
    if !off.is_multiple_of(4) {
        return reply(Status::INVALID_FIELD);
    }
    let page: Vec<u8> = match lid {
        0x70 if ctrl.discovery => discovery_log(sh, ctrl),
        _ if ctrl.discovery => return reply(Status::INVALID_LOG_PAGE),
        0x01 => vec![0u8; 64],
        0x02 => smart_log(ctrl),
        0x03 => {
            let mut d = vec![0u8; 512];
            d[0] = 1;
            put_str(&mut d[8..16], FW_REV, b' ');
            d
        }
        0x04 => {
            let mut d = vec![0u8; 4096];
            let ch = ctrl.take_changed();
            if ch.len() > 1024 {
                put32(&mut d, 0, 0xffff_ffff);
            } else {
                for (i, n) in ch.iter().enumerate() {
                    put32(&mut d, i * 4, *n);
                }
            }
            d
        }
        LID_ANA => ana_log(sh, ctrl, lsp & 1 != 0, fenced),
        LID_RESV => resv_log(ctrl, off, sqe.cdw(10) & (1 << 15) != 0),
        _ => return reply(Status::INVALID_LOG_PAGE),
    };
    // Bounded by the host's buffer (the caller truncates to the SGL) and by a
    // 64 KiB window (larger reads see zeroes past the page).
    let len = len.min(super::MAX_ADMIN_DATA_BYTES as u64) as usize;
    let mut out = vec![0u8; len];
    if (off as usize) < page.len() {
        let o = off as usize;
        let n = (page.len() - o).min(len);
        out[..n].copy_from_slice(&page[o..o + n]);
    }
    data(out)
}

/// The reservation notification log page: the oldest notification not yet
/// read (read from offset 0 removes it), with the number of pages left; all
/// zeroes when there is none. `rae` clear lets the next notification raise an
/// event (one goes out now when pages are left).
fn resv_log(ctrl: &Ctrl, off: u64, rae: bool) -> Vec<u8> {
    let mut d = vec![0u8; RESV_LOG_LEN];
    if off != 0 {
        return d;
    }
    let (page, left, again) = ctrl.take_resv_notice(rae);
    if let Some(p) = page {
        put64(&mut d, 0, p.count);
        d[8] = p.ty;
        d[9] = left.min(255) as u8;
        put32(&mut d, 12, p.nsid);
    }
    if again {
        ctrl.push_aen(AEN_RESV_LOG, 0);
    }
    d
}

fn smart_log(ctrl: &Ctrl) -> Vec<u8> {
    let mut d = vec![0u8; 512];
    put16(&mut d, 1, 300); // composite temperature, K
    d[3] = 100; // available spare
    d[4] = 10; // its threshold
    let units = |b: u64| b.div_ceil(512_000);
    put64(
        &mut d,
        32,
        units(ctrl.stats.read_bytes.load(Ordering::Relaxed)),
    );
    put64(
        &mut d,
        48,
        units(ctrl.stats.write_bytes.load(Ordering::Relaxed)),
    );
    d
}

/// The ANA log page: this node's one group, its state (inaccessible while
/// `fenced`) and its namespaces.
pub(crate) fn ana_log(sh: &Shared, ctrl: &Ctrl, groups_only: bool, fenced: bool) -> Vec<u8> {
    let nsids: Vec<u32> = sh
        .subsystem(&ctrl.subnqn)
        .map(|s| s.namespaces.keys().copied().collect())
        .unwrap_or_default();
    let chg = sh.ana_chgcnt.load(Ordering::Acquire);
    let mut d = vec![0u8; 16 + 32];
    put64(&mut d, 0, chg);
    put16(&mut d, 8, 1);
    put32(&mut d, 16, sh.ana_group);
    put32(&mut d, 20, if groups_only { 0 } else { nsids.len() as u32 });
    put64(&mut d, 24, chg);
    d[32] = if fenced {
        AnaState::Inaccessible.code()
    } else {
        sh.ana_state().code()
    };
    if !groups_only {
        for n in nsids {
            d.extend_from_slice(&n.to_le_bytes());
        }
    }
    d
}

/// The discovery log page: every subsystem this host may reach (the discovery
/// subsystem itself included), through every listener of this node, then at the
/// listeners of the other nodes that export it too (`peer_listeners`), each
/// address once per subsystem.
pub(crate) fn discovery_log(sh: &Shared, ctrl: &Ctrl) -> Vec<u8> {
    // (NQN, address, subtype, port id)
    let mut entries: Vec<(String, SocketAddr, u8, u16)> = Vec::new();
    let listeners = sh.listener_addrs();
    let subs = sh.subsystem_list();
    let mut local: Vec<SocketAddr> = Vec::new();
    for l in &listeners {
        let addr = match (l.ip().is_unspecified(), ctrl.local) {
            (true, Some(local)) => SocketAddr::new(local.ip(), l.port()),
            _ => *l,
        };
        let portid = listeners
            .iter()
            .position(|l| l.port() == addr.port())
            .unwrap_or(0) as u16
            + 1;
        local.push(addr);
        entries.push((DISCOVERY_NQN.to_string(), addr, 3, portid));
        for s in &subs {
            if s.allows(&ctrl.hostnqn) {
                entries.push((s.conf.nqn.clone(), addr, 2, portid));
            }
        }
    }
    // Other nodes' ports are numbered after this node's, in order of appearance.
    let mut peers: Vec<SocketAddr> = Vec::new();
    for s in subs.iter().filter(|s| s.allows(&ctrl.hostnqn)) {
        let mut listed: Vec<SocketAddr> = Vec::new();
        for addr in s
            .conf
            .peer_listeners
            .iter()
            .filter_map(|p| p.parse::<SocketAddr>().ok())
        {
            if local.contains(&addr) || listed.contains(&addr) {
                continue;
            }
            listed.push(addr);
            let at = match peers.iter().position(|p| *p == addr) {
                Some(i) => i,
                None => {
                    peers.push(addr);
                    peers.len() - 1
                }
            };
            let portid = (listeners.len() + 1 + at).min(0xfffe) as u16;
            entries.push((s.conf.nqn.clone(), addr, 2, portid));
        }
    }
    let mut d = vec![0u8; 1024 + 1024 * entries.len()];
    put64(&mut d, 0, sh.generation());
    put64(&mut d, 8, entries.len() as u64);
    for (i, (nqn, addr, subtype, portid)) in entries.iter().enumerate() {
        let e = &mut d[1024 * (i + 1)..1024 * (i + 2)];
        e[0] = 3; // TCP
        e[1] = if addr.is_ipv4() { 1 } else { 2 };
        e[2] = *subtype;
        e[3] = 0x02; // secure channel not required
        put16(e, 4, *portid);
        put16(e, 6, 0xffff);
        put16(e, 8, MAX_QUEUE_ENTRIES as u16);
        put_str(&mut e[32..64], &addr.port().to_string(), b' ');
        put_str(&mut e[256..512], nqn, 0);
        put_str(&mut e[512..768], &addr.ip().to_string(), b' ');
        e[768] = 0; // no security
    }
    d
}
