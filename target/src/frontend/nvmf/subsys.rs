//! The subsystem model: subsystems, namespaces and their identity, controllers
//! (with their properties, keep-alive and pending asynchronous events), ANA state.

pub use plexd_target_api::nvmf::AnaState;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::config::{NamespaceConfig, SubsystemConfig};
use crate::bdev::Bdev;

/// The NQN of the discovery subsystem.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";
/// Asynchronous events kept per controller until the host asks for them (older
/// ones are dropped: the host reads the log pages anyway).
pub const MAX_PENDING_AENS: usize = 16;
/// Changed namespace ids kept per controller (more: the log says "more than 1024").
pub const MAX_CHANGED_NS: usize = 1024;
/// Reservation notification log pages (log 80h) kept per controller until the
/// host reads them; past it the oldest is dropped (the host sees the gap in the
/// log page count).
pub const MAX_RESV_NOTICES: usize = 64;
/// Reservation notification mask bits (Set Features 82h): registration
/// preempted, reservation released, reservation preempted.
pub const RESV_MASK_BITS: u32 = 0x0e;

/// One reservation notification log page: its count, type and namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResvNotice {
    /// Log page count (1.., wrapping to 1).
    pub count: u64,
    /// Type ([`super::resv::notice`]).
    pub ty: u8,
    /// Namespace id.
    pub nsid: u32,
}

/// A controller's reservation notifications and their masks.
#[derive(Debug, Default)]
struct ResvLog {
    /// Count of the last log page made.
    count: u64,
    /// Pages not yet read, oldest first.
    pages: VecDeque<ResvNotice>,
    /// A "reservation log page available" event went out and the host has not
    /// read the log since (no more such events until it does).
    aen_out: bool,
    /// Masks by namespace id (absent: 0, nothing masked).
    masks: BTreeMap<u32, u32>,
}

/// The identity of a namespace as hosts see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NsIdent {
    /// Namespace globally unique identifier.
    pub nguid: [u8; 16],
    /// IEEE extended unique identifier.
    pub eui64: [u8; 8],
    /// Namespace UUID (an RFC 4122 name-based, MD5, version 3 UUID).
    pub uuid: [u8; 16],
}

impl NsIdent {
    /// Derived from `identity` alone, so every node exporting one shared volume
    /// under the same identity presents the same namespace.
    pub fn derive(identity: &str) -> NsIdent {
        use crate::frontend::iscsi::chap::md5;
        let nguid = md5(&[b"plexd-nvmf-nguid\0", identity.as_bytes()]);
        let e = md5(&[b"plexd-nvmf-eui64\0", identity.as_bytes()]);
        let mut uuid = md5(&[b"plexd-nvmf-uuid\0", identity.as_bytes()]);
        uuid[6] = (uuid[6] & 0x0f) | 0x30;
        uuid[8] = (uuid[8] & 0x3f) | 0x80;
        let mut eui64 = [0u8; 8];
        eui64.copy_from_slice(&e[..8]);
        // A locally administered, unicast identifier (no OUI of ours).
        eui64[0] = (eui64[0] & 0xfc) | 0x02;
        NsIdent { nguid, eui64, uuid }
    }
}

/// A namespace as connections see it.
pub struct Namespace {
    /// Its configuration.
    pub conf: NamespaceConfig,
    /// The bdev it maps to.
    pub bdev: Arc<dyn Bdev>,
    /// Its identity.
    pub ident: NsIdent,
    /// Its reservations (the cluster's for a shared volume).
    pub resv: super::resv::NsResv,
    /// Its descriptor on the bdev (resize events; None in unit tests), closed
    /// when the namespace goes.
    pub desc: Option<crate::bdev::BdevDesc>,
}

impl Namespace {
    /// Logical block size.
    pub fn block_size(&self) -> u32 {
        self.bdev.block_size()
    }
    /// Size in blocks.
    pub fn blocks(&self) -> u64 {
        self.bdev.size_bytes() / u64::from(self.bdev.block_size().max(1))
    }
}

/// A subsystem as connections see it (replaced as a whole on every change).
pub struct Subsystem {
    /// Its configuration, as given.
    pub conf: SubsystemConfig,
    /// Namespaces by id.
    pub namespaces: BTreeMap<u32, Arc<Namespace>>,
}

impl Subsystem {
    /// True when `host` may connect.
    pub fn allows(&self, host: &str) -> bool {
        self.conf.allow_any || self.conf.hosts.iter().any(|h| h == host)
    }
    /// The serial number, defaulted from the NQN.
    pub fn serial(&self) -> String {
        self.conf.serial.clone().unwrap_or_else(|| {
            let h = crate::frontend::iscsi::chap::md5(&[self.conf.nqn.as_bytes()]);
            h[..10].iter().map(|b| format!("{b:02x}")).collect()
        })
    }
    /// The model number, defaulted.
    pub fn model(&self) -> String {
        self.conf
            .model
            .clone()
            .unwrap_or_else(|| "plexd".to_string())
    }
}

/// Where a controller's admin queue lives (for asynchronous events).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueAt {
    /// Reactor index.
    pub reactor: usize,
    /// Connection id within the reactor's registry.
    pub conn: u64,
}

/// Counters of one controller.
#[derive(Default, Debug)]
pub struct CtrlStats {
    /// Commands received on every queue.
    pub commands: AtomicU64,
    /// Bytes read by the host.
    pub read_bytes: AtomicU64,
    /// Bytes written by the host.
    pub write_bytes: AtomicU64,
    /// Commands that failed.
    pub errors: AtomicU64,
}

/// One controller: an association of a host with a subsystem.
pub struct Ctrl {
    /// Controller id.
    pub cntlid: u16,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Host NQN.
    pub hostnqn: String,
    /// Host identifier.
    pub hostid: [u8; 16],
    /// True for a controller of the discovery subsystem.
    pub discovery: bool,
    /// Keep alive timeout in ms (0: none).
    pub kato_ms: AtomicU32,
    /// Controller configuration property.
    pub cc: AtomicU32,
    /// Controller status property.
    pub csts: AtomicU32,
    /// I/O queues granted (Set Features "number of queues").
    pub io_queues: AtomicU32,
    /// Async event configuration (Set Features 0x0B).
    pub aec: AtomicU32,
    /// Milliseconds since the frontend started at the last keep alive.
    pub last_ka_ms: AtomicU64,
    /// Set when the controller is gone: its queues close.
    pub dead: AtomicBool,
    /// Bumped when the controller is disabled: its I/O queues close.
    pub io_epoch: AtomicU32,
    /// The admin queue.
    pub admin: QueueAt,
    /// The local address the host reached (for the discovery log).
    pub local: Option<std::net::SocketAddr>,
    /// Peer address of the admin queue.
    pub peer: String,
    /// I/O queues connected now: queue id -> reactor.
    io_qids: Mutex<BTreeMap<u16, usize>>,
    /// Events waiting for an Asynchronous Event Request.
    aens: Mutex<VecDeque<u32>>,
    /// Namespaces changed since the host last read the changed list.
    changed: Mutex<Vec<u32>>,
    /// Reservation notifications (log 80h) and their masks (feature 82h).
    resv_log: Mutex<ResvLog>,
    /// Counters.
    pub stats: CtrlStats,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Ctrl {
    /// A new controller.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cntlid: u16,
        subnqn: &str,
        hostnqn: &str,
        hostid: [u8; 16],
        kato_ms: u32,
        admin: QueueAt,
        local: Option<std::net::SocketAddr>,
        peer: String,
        now_ms: u64,
        io_queues: u32,
    ) -> Ctrl {
        Ctrl {
            cntlid,
            subnqn: subnqn.to_string(),
            hostnqn: hostnqn.to_string(),
            hostid,
            discovery: subnqn == DISCOVERY_NQN,
            kato_ms: AtomicU32::new(kato_ms),
            cc: AtomicU32::new(0),
            csts: AtomicU32::new(0),
            io_queues: AtomicU32::new(io_queues),
            aec: AtomicU32::new(0),
            last_ka_ms: AtomicU64::new(now_ms),
            dead: AtomicBool::new(false),
            io_epoch: AtomicU32::new(0),
            admin,
            local,
            peer,
            io_qids: Mutex::new(BTreeMap::new()),
            aens: Mutex::new(VecDeque::new()),
            changed: Mutex::new(Vec::new()),
            resv_log: Mutex::new(ResvLog::default()),
            stats: CtrlStats::default(),
        }
    }

    /// True when CC.EN and CSTS.RDY are set.
    pub fn enabled(&self) -> bool {
        self.csts.load(Ordering::Acquire) & 1 != 0
    }

    /// Claims I/O queue `qid` for a queue pair on `reactor`; false when it is
    /// connected already or beyond the queues granted.
    pub fn claim_qid(&self, qid: u16, reactor: usize) -> bool {
        if qid == 0 || u32::from(qid) > self.io_queues.load(Ordering::Acquire) {
            return false;
        }
        let mut q = lock(&self.io_qids);
        if q.contains_key(&qid) {
            return false;
        }
        q.insert(qid, reactor);
        true
    }

    /// Releases an I/O queue id.
    pub fn release_qid(&self, qid: u16) {
        lock(&self.io_qids).remove(&qid);
    }

    /// I/O queues connected now, with the reactor of each.
    pub fn io_queue_list(&self) -> Vec<(u16, usize)> {
        lock(&self.io_qids).iter().map(|(q, r)| (*q, *r)).collect()
    }

    /// Queues an asynchronous event (dword 0 of the AER's completion) if the
    /// host enabled its kind (`aec_bit` of Set Features 0x0B; 0 for events no
    /// configuration bit controls); true if queued.
    pub fn push_aen(&self, dw0: u32, aec_bit: u32) -> bool {
        if aec_bit != 0 && self.aec.load(Ordering::Acquire) & aec_bit == 0 {
            return false;
        }
        let mut q = lock(&self.aens);
        if q.contains(&dw0) {
            return true;
        }
        if q.len() >= MAX_PENDING_AENS {
            q.pop_front();
        }
        q.push_back(dw0);
        true
    }

    /// The oldest pending event.
    pub fn pop_aen(&self) -> Option<u32> {
        lock(&self.aens).pop_front()
    }

    /// Notes a changed namespace.
    pub fn ns_changed(&self, nsid: u32) {
        let mut c = lock(&self.changed);
        if c.len() <= MAX_CHANGED_NS && !c.contains(&nsid) {
            c.push(nsid);
        }
    }

    /// A reservation notification of type `ty` for namespace `nsid`, unless the
    /// host masked it; true when a "reservation log page available" event is
    /// to go out (none is outstanding).
    pub fn resv_notice(&self, ty: u8, nsid: u32) -> bool {
        let mut g = lock(&self.resv_log);
        if g.masks.get(&nsid).copied().unwrap_or(0) & (1 << ty) != 0 {
            return false;
        }
        g.count = g.count.checked_add(1).unwrap_or(1);
        let count = g.count;
        if g.pages.len() >= MAX_RESV_NOTICES {
            g.pages.pop_front();
        }
        g.pages.push_back(ResvNotice { count, ty, nsid });
        !std::mem::replace(&mut g.aen_out, true)
    }

    /// Reads (and removes) the oldest reservation notification with the number
    /// of pages left; `rae` clear: the next notification may raise an event
    /// again (true when pages are left and one should go out now).
    pub fn take_resv_notice(&self, rae: bool) -> (Option<ResvNotice>, usize, bool) {
        let mut g = lock(&self.resv_log);
        let page = g.pages.pop_front();
        let left = g.pages.len();
        let mut again = false;
        if !rae {
            g.aen_out = left > 0;
            again = left > 0;
        }
        (page, left, again)
    }

    /// Sets the reservation notification mask of namespace `nsid`.
    pub fn set_resv_mask(&self, nsid: u32, mask: u32) {
        let mut g = lock(&self.resv_log);
        if mask == 0 {
            g.masks.remove(&nsid);
        } else {
            g.masks.insert(nsid, mask);
        }
    }

    /// The reservation notification mask of namespace `nsid`.
    pub fn resv_mask(&self, nsid: u32) -> u32 {
        lock(&self.resv_log).masks.get(&nsid).copied().unwrap_or(0)
    }

    /// Takes the changed namespace list.
    pub fn take_changed(&self) -> Vec<u32> {
        std::mem::take(&mut *lock(&self.changed))
    }
}

/// Controller ids in use, by subsystem NQN, and the range this node hands out.
pub struct CntlidAlloc {
    range: (u16, u16),
    used: BTreeMap<String, BTreeSet<u16>>,
    next: u16,
}

impl CntlidAlloc {
    /// Over `[min, max]`.
    pub fn new(range: (u16, u16)) -> CntlidAlloc {
        CntlidAlloc {
            range,
            used: BTreeMap::new(),
            next: range.0,
        }
    }

    /// A free id of subsystem `nqn`, or None when the range is used up.
    pub fn alloc(&mut self, nqn: &str) -> Option<u16> {
        let (lo, hi) = self.range;
        let used = self.used.entry(nqn.to_string()).or_default();
        let span = u32::from(hi - lo) + 1;
        let mut c = self.next.clamp(lo, hi);
        for _ in 0..span {
            let id = c;
            c = if c >= hi { lo } else { c + 1 };
            if used.insert(id) {
                self.next = c;
                return Some(id);
            }
        }
        None
    }

    /// Frees an id.
    pub fn free(&mut self, nqn: &str, id: u16) {
        if let Some(u) = self.used.get_mut(nqn) {
            u.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_is_deterministic_and_distinct() {
        let a = NsIdent::derive("dg-1234/vol0");
        assert_eq!(a, NsIdent::derive("dg-1234/vol0"));
        let b = NsIdent::derive("dg-1234/vol1");
        assert_ne!(a.nguid, b.nguid);
        assert_ne!(a.eui64, b.eui64);
        assert_ne!(a.uuid, b.uuid);
        assert_eq!(a.uuid[6] >> 4, 3, "version 3 UUID");
    }

    #[test]
    fn cntlids_stay_in_range_and_are_reused() {
        let mut a = CntlidAlloc::new((10, 12));
        assert_eq!(a.alloc("s"), Some(10));
        assert_eq!(a.alloc("s"), Some(11));
        assert_eq!(a.alloc("s"), Some(12));
        assert_eq!(a.alloc("s"), None);
        assert_eq!(a.alloc("t"), Some(10), "per subsystem");
        a.free("s", 11);
        assert_eq!(a.alloc("s"), Some(11));
    }
}
