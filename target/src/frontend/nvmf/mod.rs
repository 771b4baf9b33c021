//! The NVMe over Fabrics target, TCP transport (NVMe/TCP, TP 8000), exporting
//! bdevs and volumes as namespaces of NVM subsystems.
//!
//! Code map:
//! - [`pdu`]: the PDU codec (common header, digests, lengths); no panics.
//! - [`nvme`]: submission / completion queue entries, status codes, opcodes.
//! - [`fabrics`]: Connect's parameters and the properties (CAP, VS, CC, CSTS)
//!   as pure functions of bytes and values (fuzzed as they are).
//! - [`admin`]: fabrics and admin commands applied to a controller (Identify,
//!   Get Log Page, features, keep alive, AER, abort); pure logic.
//! - [`io`]: I/O commands decoded into block operations; pure logic.
//! - preempt and abort across the reactors (the preempted hosts' commands
//!   aborted before the Acquire completes) is [`crate::frontend::preempt`],
//!   shared with iSCSI; this frontend gives it `qpair`'s abort.
//! - [`subsys`]: subsystems, namespaces and their identity, controllers, ANA.
//! - `qpair`: one queue pair (one TCP connection) on its reactor: socket I/O
//!   through io_uring polls, in-capsule data, R2T / H2CData, C2HData from pool
//!   buffers, keep alive.
//! - `transport::listener` (shared with iSCSI): the listening sockets and the round-robin hand-off of
//!   connections (so I/O queues spread over the reactors).
//! - [`config`]: the TOML configuration.
//!
//! Threads: the control API ([`NvmfFrontend`]) runs on control threads and
//! reaches reactors through their message rings. A queue pair lives on one
//! reactor; what controllers share (properties, keep-alive time, pending
//! events) sits in [`subsys::Ctrl`] (atomics and short mutexes, never taken by
//! the I/O path).

pub use plexd_target_api::nvmf::{ControllerInfo, MAX_NAMESPACES, MAX_PEER_LISTENERS};
pub mod admin;
pub mod config;
pub mod fabrics;
pub mod io;
pub mod nvme;
pub mod pdu;
mod qpair;
pub mod resv;
pub mod subsys;

use crate::frontend::transport::{listener, FrontendCore};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

pub use config::{NamespaceConfig, NvmfConfig, SubsystemConfig};
pub use subsys::{AnaState, DISCOVERY_NQN};

use crate::bdev::BdevEvent;
use crate::error::TargetError;
use crate::frontend::preempt::abort_committed;
use crate::frontend::scsi::pr::{Nexus, PrState};
use crate::frontend::FrontendEnv;
use crate::lease::LeaseWatcher;
use subsys::{CntlidAlloc, Ctrl, Namespace, NsIdent, Subsystem};

/// In-capsule data a command may carry (IOCCSZ announces 64 + this).
pub const IN_CAPSULE_DATA_BYTES: usize = 8192;
/// Largest data section of one H2CData PDU (MAXH2CDATA of the ICResp).
pub const MAX_H2C_DATA_BYTES: usize = 128 << 10;
/// Most host data one R2T asks for: a larger write is asked for in pieces of
/// this size, up to the host's MAXR2T of them outstanding at once.
pub const MAX_R2T_DATA_BYTES: usize = 128 << 10;
/// R2Ts outstanding per command at most, whatever MAXR2T the host announces
/// (the largest transfer in [`MAX_R2T_DATA_BYTES`] pieces).
pub const MAX_R2T_PER_CMD: usize = MAX_TRANSFER_BYTES / MAX_R2T_DATA_BYTES;
/// Largest data section of one C2HData PDU sent.
pub const MAX_C2H_DATA_BYTES: usize = 128 << 10;
/// Entries of a queue (MQES + 1, MAXCMD): commands outstanding per queue pair
/// (defined with the Connect parameters it bounds).
pub use fabrics::MAX_QUEUE_ENTRIES;
/// I/O queues granted per controller at most.
pub const MAX_IO_QUEUES: u32 = 64;
/// Asynchronous Event Requests held per controller (AERL + 1).
pub const MAX_AERS: usize = 4;
/// Largest ANA group id (ANAGRPMAX).
pub const MAX_ANA_GROUP: u32 = 128;
/// MDTS: 2^8 pages of 4 KiB, the largest pool buffer class.
pub const MDTS: u8 = 8;
/// Largest data transfer of one command (MDTS in bytes).
pub const MAX_TRANSFER_BYTES: usize = 4096 << MDTS;
/// Largest admin or fabrics data (in or out) and Dataset Management ranges.
pub const MAX_ADMIN_DATA_BYTES: usize = 64 << 10;
/// Most subsystems per frontend.
pub const MAX_SUBSYSTEMS: usize = 1024;
/// Most controllers (associations) per frontend.
pub const MAX_CONTROLLERS: usize = 4096;
pub use crate::frontend::preempt::{ResvApplied, PREEMPT_ABORT_WAIT};
/// Firmware revision reported.
pub const FW_REV: &str = "plexd01";

/// A subsystem or namespace object name for errors.
fn ns_obj(nqn: &str, nsid: u32) -> String {
    format!("namespace {nsid} of nvmf subsystem {nqn}")
}

/// State shared by the frontend's control API and its queue pairs.
pub(crate) struct Shared {
    /// The frontend's id, stop flag and listening addresses.
    pub(crate) core: FrontendCore,
    subsystems: Mutex<BTreeMap<String, Arc<Subsystem>>>,
    /// Bumped on every change of `subsystems`; queue pairs re-read on change.
    generation: AtomicU64,
    ctrls: Mutex<BTreeMap<(String, u16), Arc<Ctrl>>>,
    cntlids: Mutex<CntlidAlloc>,
    cntlid_range: (u16, u16),
    pub(crate) ana_group: u32,
    ana_state: AtomicU8,
    pub(crate) ana_chgcnt: AtomicU64,
    epoch: Instant,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
    pub(crate) fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        lock(&self.subsystems).get(nqn).cloned()
    }
    pub(crate) fn subsystem_list(&self) -> Vec<Arc<Subsystem>> {
        lock(&self.subsystems).values().cloned().collect()
    }
    pub(crate) fn listener_addrs(&self) -> Vec<SocketAddr> {
        self.core.addrs().clone()
    }
    pub(crate) fn ana_state(&self) -> AnaState {
        AnaState::from_code(self.ana_state.load(Ordering::Acquire))
    }
    /// Registers a new controller of `subnqn`; None when no id is free.
    pub(crate) fn add_ctrl(
        &self,
        make: impl FnOnce(u16) -> Ctrl,
        subnqn: &str,
    ) -> Option<Arc<Ctrl>> {
        let mut ctrls = lock(&self.ctrls);
        if ctrls.len() >= MAX_CONTROLLERS {
            return None;
        }
        let id = lock(&self.cntlids).alloc(subnqn)?;
        let c = Arc::new(make(id));
        ctrls.insert((subnqn.to_string(), id), Arc::clone(&c));
        Some(c)
    }
    pub(crate) fn ctrl(&self, subnqn: &str, cntlid: u16) -> Option<Arc<Ctrl>> {
        lock(&self.ctrls)
            .get(&(subnqn.to_string(), cntlid))
            .cloned()
    }
    /// Forgets a controller (its admin queue closed or it timed out).
    pub(crate) fn remove_ctrl(&self, c: &Ctrl) {
        c.dead.store(true, Ordering::Release);
        let mut ctrls = lock(&self.ctrls);
        if let Some(cur) = ctrls.get(&(c.subnqn.clone(), c.cntlid)) {
            if std::ptr::eq(Arc::as_ptr(cur), c) {
                ctrls.remove(&(c.subnqn.clone(), c.cntlid));
                lock(&self.cntlids).free(&c.subnqn, c.cntlid);
            }
        }
    }
    pub(crate) fn ctrl_list(&self) -> Vec<Arc<Ctrl>> {
        lock(&self.ctrls).values().cloned().collect()
    }
}

/// Tells the controllers of subsystem `nqn` that namespace `nsid` changed (added,
/// removed, resized): it joins their Changed Namespace List and a namespace
/// attribute changed event goes out (AER).
fn ns_changed(target: &FrontendEnv, shared: &Shared, nqn: &str, nsid: u32) {
    for c in shared.ctrl_list() {
        if c.subnqn == nqn {
            c.ns_changed(nsid);
            if c.push_aen(admin::AEN_NS_CHANGED, admin::AEC_NS_ATTR) {
                kick(target, shared, &c);
            }
        }
    }
}

/// Asks controller `c`'s admin queue to deliver its pending events.
fn kick(target: &FrontendEnv, sh: &Shared, c: &Ctrl) {
    let fid = sh.core.id;
    let at = c.admin;
    let h = &target.reactors().handles()[at.reactor];
    let msg: crate::reactor::Msg = Box::new(move |r| qpair::deliver_aens(r, fid, at.conn));
    if let Err((full, _)) = h.try_send(msg) {
        // The event stays pending: the next AER the host sends takes it.
        log::warn!(
            "nvmf: controller {} of {}: event not delivered now ({full}); it waits for the next AER",
            c.cntlid,
            c.subnqn
        );
    }
}

/// Queues reservation notifications (log 80h) on this node's controllers of
/// the hosts they are for, on every namespace of their subsystem that `shares`
/// the changed state. Returns the controllers whose "reservation log page
/// available" event was raised now: the caller asks their admin queues to
/// deliver it.
pub(crate) fn queue_resv_notices(
    sh: &Shared,
    shares: impl Fn(&Arc<Namespace>) -> bool,
    notices: &[(Nexus, u8)],
) -> Vec<Arc<Ctrl>> {
    let mut kick = Vec::new();
    if notices.is_empty() {
        return kick;
    }
    for c in sh.ctrl_list() {
        if c.discovery || c.dead.load(Ordering::Acquire) {
            continue;
        }
        let host = resv::nexus(&c.hostnqn, &c.hostid);
        if !notices.iter().any(|(n, _)| *n == host) {
            continue;
        }
        let Some(sub) = sh.subsystem(&c.subnqn) else {
            continue;
        };
        let mut raise = false;
        for (_, ty) in notices.iter().filter(|(n, _)| *n == host) {
            for (nsid, _) in sub.namespaces.iter().filter(|(_, x)| shares(x)) {
                raise |= c.resv_notice(*ty, *nsid);
            }
        }
        if raise && c.push_aen(admin::AEN_RESV_LOG, 0) {
            kick.push(c);
        }
    }
    kick
}

/// What the ANA log reports changed (the state set, or the lease's fence): a new
/// change count and an ANA change notice to every I/O controller that enabled it.
fn ana_changed(target: &FrontendEnv, sh: &Shared) {
    sh.ana_chgcnt.fetch_add(1, Ordering::AcqRel);
    for c in sh.ctrl_list() {
        if !c.discovery && c.push_aen(admin::AEN_ANA_CHANGE, admin::AEC_ANA) {
            kick(target, sh, &c);
        }
    }
}

/// A running NVMe-oF/TCP frontend of one [`Target`].
pub struct NvmfFrontend {
    target: Arc<FrontendEnv>,
    shared: Arc<Shared>,
    stopped: bool,
    /// Where namespaces keep reservations that are not the cluster's.
    pr_dir: Option<std::path::PathBuf>,
    /// Registered with the target's lease (held here: the target keeps a `Weak`).
    _lease_watch: Arc<LeaseWatcher>,
}

fn valid_nqn(nqn: &str) -> bool {
    nqn.len() <= 223
        && nqn.starts_with("nqn.")
        && nqn.is_ascii()
        && !nqn.chars().any(|c| c.is_ascii_control() || c == ' ')
}

impl NvmfFrontend {
    /// Exports the configured subsystems and starts the configured listeners on
    /// `target` (an `&Arc<Target>`, or its [`FrontendEnv`]).
    pub fn start(
        target: impl Into<FrontendEnv>,
        cfg: &NvmfConfig,
    ) -> Result<NvmfFrontend, TargetError> {
        let mut fe = NvmfFrontend::new(target, cfg)?;
        for l in cfg.listeners() {
            fe.add_listener(&l)?;
        }
        Ok(fe)
    }

    /// Exports the configured subsystems without listening anywhere yet.
    pub fn new(
        target: impl Into<FrontendEnv>,
        cfg: &NvmfConfig,
    ) -> Result<NvmfFrontend, TargetError> {
        let target = &Arc::new(target.into());
        let range = cfg.cntlid_range.unwrap_or(config::DEFAULT_CNTLID_RANGE);
        if range.0 == 0 || range.0 > range.1 || range.1 > config::DEFAULT_CNTLID_RANGE.1 {
            return Err(TargetError::invalid(
                "nvmf cntlid_range",
                format!("{range:?} must be [min, max] within 1..=65519"),
            ));
        }
        let group = cfg.ana_group.unwrap_or(config::DEFAULT_ANA_GROUP);
        if group == 0 || group > MAX_ANA_GROUP {
            return Err(TargetError::invalid(
                "nvmf ana_group",
                format!("{group} is outside 1..={MAX_ANA_GROUP}"),
            ));
        }
        if let Some(d) = &cfg.pr_dir {
            std::fs::create_dir_all(d).map_err(|e| TargetError::Io {
                object: format!("nvmf pr_dir {}", d.display()),
                reason: e.to_string(),
            })?;
        }
        let shared = Arc::new(Shared {
            core: FrontendCore::new(),
            subsystems: Mutex::new(BTreeMap::new()),
            generation: AtomicU64::new(1),
            ctrls: Mutex::new(BTreeMap::new()),
            cntlids: Mutex::new(CntlidAlloc::new(range)),
            cntlid_range: range,
            ana_group: group,
            ana_state: AtomicU8::new(AnaState::Optimized.code()),
            ana_chgcnt: AtomicU64::new(1),
            epoch: Instant::now(),
        });
        // The ANA log reports this node's group inaccessible while the lease fences
        // shared volumes: every fence and unfence is an ANA change for the hosts.
        let lease_watch: Arc<LeaseWatcher> = {
            let (t, sh) = (Arc::downgrade(target), Arc::downgrade(&shared));
            Arc::new(move |served: bool| {
                if let (Some(t), Some(sh)) = (t.upgrade(), sh.upgrade()) {
                    log::info!(
                        "nvmf: ANA group {}: shared volumes {} (data-plane lease): hosts told",
                        sh.ana_group,
                        if served { "served again" } else { "fenced" }
                    );
                    ana_changed(&t, &sh);
                }
            })
        };
        target.watch_lease(Arc::downgrade(&lease_watch))?;
        let mut fe = NvmfFrontend {
            target: Arc::clone(target),
            shared,
            stopped: false,
            pr_dir: cfg.pr_dir.clone(),
            _lease_watch: lease_watch,
        };
        for s in &cfg.subsystems {
            fe.add_subsystem(s)?;
        }
        Ok(fe)
    }

    /// Listens on `address:port` (port 0 picks one); returns the bound address.
    pub fn add_listener(&mut self, addr: &str) -> Result<SocketAddr, TargetError> {
        listener::add(&self.target, &self.shared, addr)
    }

    /// Stops listening on `addr` (established connections stay).
    pub fn remove_listener(&mut self, addr: SocketAddr) -> Result<(), TargetError> {
        listener::remove(&self.target, &self.shared, addr)
    }

    /// Every listener, in the order they were added.
    pub fn listeners(&self) -> Vec<SocketAddr> {
        self.shared.listener_addrs()
    }

    fn build_ns(&self, nqn: &str, n: &NamespaceConfig) -> Result<Arc<Namespace>, TargetError> {
        if n.nsid == 0 || n.nsid > MAX_NAMESPACES {
            return Err(TargetError::invalid(
                ns_obj(nqn, n.nsid),
                format!("namespace ids are 1..={MAX_NAMESPACES}"),
            ));
        }
        let bdev = self.target.bdev(&n.bdev)?;
        let identity = n
            .identity
            .clone()
            .filter(|i| !i.is_empty())
            .unwrap_or_else(|| n.bdev.clone());
        // A shared volume's reservations are the cluster's (the same state its
        // iSCSI LUNs use); any other namespace keeps its own.
        let resv = if self.target.volume_spec(&n.bdev).is_ok_and(|s| s.shared) {
            resv::NsResv::cluster(&n.bdev, Arc::clone(self.target.pr_broker()))
        } else {
            let path = self.pr_path(nqn, n.nsid);
            let state = match &path {
                Some(p) => {
                    crate::frontend::scsi::pr::PrState::load(p).map_err(|e| TargetError::Io {
                        object: ns_obj(nqn, n.nsid),
                        reason: e,
                    })?
                }
                None => Default::default(),
            };
            resv::NsResv::local(state, path)
        };
        // The namespace's descriptor on its bdev: a resize (Identify Namespace
        // reads the size from the bdev) becomes a namespace attribute changed
        // event for the subsystem's controllers, with the Changed Namespace List.
        let (t, sh) = (Arc::downgrade(&self.target), Arc::downgrade(&self.shared));
        let (subnqn, nsid) = (nqn.to_string(), n.nsid);
        let desc = self.target.open_bdev(
            &n.bdev,
            Box::new(move |name, ev| {
                let (Some(t), Some(sh)) = (t.upgrade(), sh.upgrade()) else {
                    return;
                };
                match ev {
                    BdevEvent::Resize { size_bytes } => {
                        log::info!(
                            "nvmf: {}: bdev {name} resized to {size_bytes} bytes; \
                             namespace attribute changed event to its controllers",
                            ns_obj(&subnqn, nsid)
                        );
                        ns_changed(&t, &sh, &subnqn, nsid);
                    }
                    BdevEvent::Remove => log::warn!(
                        "nvmf: {}: its bdev {name} was removed; I/O to it fails",
                        ns_obj(&subnqn, nsid)
                    ),
                }
            }),
        )?;
        Ok(Arc::new(Namespace {
            conf: n.clone(),
            ident: NsIdent::derive(&identity),
            bdev,
            resv,
            desc: Some(desc),
        }))
    }

    /// The reservation file of namespace `nsid` of `nqn`, when there is a `pr_dir`.
    fn pr_path(&self, nqn: &str, nsid: u32) -> Option<std::path::PathBuf> {
        let dir = self.pr_dir.as_ref()?;
        Some(super::pr_file::path(dir, &format!("nvmf-{nqn}-ns{nsid}")))
    }

    /// Forgets the reservations of a removed namespace (its file).
    fn drop_pr_state(&self, nqn: &str, nsid: u32) {
        if let Some(p) = self.pr_path(nqn, nsid) {
            super::pr_file::remove(&p, &format!("nvmf: {}", ns_obj(nqn, nsid)));
        }
    }

    /// Gives every namespace of shared volume `volume` the cluster's committed
    /// reservation state `state`, and does on this node what the change that
    /// made it ([`PrState::last`]) does to other hosts, whichever node ran it:
    /// the reservation notices go to this node's controllers of the hosts they
    /// are for, and a preempt and abort ends the preempted hosts' commands to
    /// the volume on this node's queue pairs (`preempt`). The caller waits
    /// ([`ResvApplied::wait`], without holding the frontend) until none of
    /// those commands is at a bdev, so that the cluster answers the preempting
    /// host only after no command of a preempted host can write anywhere.
    pub fn set_reservations(&self, volume: &str, state: &PrState) -> ResvApplied {
        let done = ResvApplied::nothing(volume);
        let mut before = None;
        for s in self.shared.subsystem_list() {
            for ns in s.namespaces.values() {
                if ns.resv.broker().is_some() && ns.conf.bdev == volume {
                    let old = ns.resv.set_committed(state);
                    before.get_or_insert(old);
                }
            }
        }
        // No namespace of the volume here, or nothing new: nothing to tell.
        let (Some(before), Some(change)) = (before, state.last.as_ref()) else {
            return done;
        };
        if !state.changed_since(&before) {
            return done;
        }
        let notices = resv::notices(&before, state);
        let shares = |x: &Arc<Namespace>| x.resv.broker().is_some() && x.conf.bdev == volume;
        for c in queue_resv_notices(&self.shared, shares, &notices) {
            kick(&self.target, &self.shared, &c);
        }
        let gone: Vec<Nexus> = resv::removed(&before, state)
            .into_iter()
            .filter(|n| n.initiator.starts_with("nvme:"))
            .collect();
        if change.sa != resv::SA_PREEMPT_AND_ABORT || gone.is_empty() {
            return done;
        }
        abort_committed(
            self.target.reactors(),
            (self.shared.core.id, qpair::ABORT_PREEMPTED),
            (volume, &format!("nvmf: volume {volume}")),
            &change.nexus,
            gone,
        )
    }

    fn publish(&self, nqn: &str, s: Option<Subsystem>) {
        let mut m = lock(&self.shared.subsystems);
        match s {
            Some(s) => {
                m.insert(nqn.to_string(), Arc::new(s));
            }
            None => {
                m.remove(nqn);
            }
        }
        self.shared.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Exports a subsystem.
    pub fn add_subsystem(&mut self, s: &SubsystemConfig) -> Result<(), TargetError> {
        let obj = format!("nvmf subsystem {}", s.nqn);
        if !valid_nqn(&s.nqn) || s.nqn == DISCOVERY_NQN {
            return Err(TargetError::invalid(
                obj,
                "an NQN is nqn.YYYY-MM.domain:name, at most 223 printable ASCII bytes, \
                 and not the discovery NQN",
            ));
        }
        if self.shared.subsystem(&s.nqn).is_some() {
            return Err(TargetError::Exists {
                kind: "nvmf subsystem",
                name: s.nqn.clone(),
            });
        }
        if lock(&self.shared.subsystems).len() >= MAX_SUBSYSTEMS {
            return Err(TargetError::invalid(
                obj,
                format!("{MAX_SUBSYSTEMS} subsystems already"),
            ));
        }
        if s.serial
            .as_ref()
            .is_some_and(|x| x.len() > 20 || !x.is_ascii())
            || s.model
                .as_ref()
                .is_some_and(|x| x.len() > 40 || !x.is_ascii())
        {
            return Err(TargetError::invalid(
                obj,
                "serial is at most 20 and model at most 40 ASCII characters",
            ));
        }
        for h in &s.hosts {
            if !valid_nqn(h) {
                return Err(TargetError::invalid(
                    obj,
                    format!("host NQN {h:?} is not an NQN"),
                ));
            }
        }
        if s.peer_listeners.len() > MAX_PEER_LISTENERS {
            return Err(TargetError::invalid(
                obj,
                format!("at most {MAX_PEER_LISTENERS} peer listeners"),
            ));
        }
        if let Some((p, e)) = s
            .peer_listeners
            .iter()
            .find_map(|p| p.parse::<SocketAddr>().err().map(|e| (p, e)))
        {
            return Err(TargetError::invalid(
                obj,
                format!("peer listener {p:?}: {e} (want address:port)"),
            ));
        }
        let mut namespaces = BTreeMap::new();
        for n in &s.namespaces {
            if namespaces.contains_key(&n.nsid) {
                return Err(TargetError::Exists {
                    kind: "nvmf namespace",
                    name: ns_obj(&s.nqn, n.nsid),
                });
            }
            namespaces.insert(n.nsid, self.build_ns(&s.nqn, n)?);
        }
        self.publish(
            &s.nqn,
            Some(Subsystem {
                conf: s.clone(),
                namespaces,
            }),
        );
        log::info!(
            "nvmf: subsystem {} exported with {} namespace(s)",
            s.nqn,
            s.namespaces.len()
        );
        Ok(())
    }

    /// Removes a subsystem; its controllers are dropped.
    pub fn remove_subsystem(&mut self, nqn: &str) -> Result<(), TargetError> {
        if self.shared.subsystem(nqn).is_none() {
            return Err(TargetError::NotFound {
                kind: "nvmf subsystem",
                name: nqn.to_string(),
            });
        }
        let nsids: Vec<u32> = self
            .shared
            .subsystem(nqn)
            .map(|s| s.namespaces.keys().copied().collect())
            .unwrap_or_default();
        self.publish(nqn, None);
        for nsid in nsids {
            self.drop_pr_state(nqn, nsid);
        }
        for c in self.shared.ctrl_list() {
            if c.subnqn == nqn {
                self.close_ctrl(&c, "its subsystem was removed");
            }
        }
        log::info!("nvmf: subsystem {nqn} removed");
        Ok(())
    }

    fn close_ctrl(&self, c: &Arc<Ctrl>, why: &'static str) {
        self.shared.remove_ctrl(c);
        let fid = self.shared.core.id;
        let at = c.admin;
        let h = &self.target.reactors().handles()[at.reactor];
        let msg: crate::reactor::Msg = Box::new(move |r| qpair::close_conn(r, fid, at.conn, why));
        if h.send_timeout(msg, crate::reactor::CONTROL_SEND_TIMEOUT)
            .is_err()
        {
            log::error!(
                "nvmf: controller {} of {}: could not reach reactor {}; its queues close at their next tick",
                c.cntlid,
                c.subnqn,
                at.reactor
            );
        }
    }

    fn modify(
        &mut self,
        nqn: &str,
        f: impl FnOnce(
            &mut SubsystemConfig,
            &mut BTreeMap<u32, Arc<Namespace>>,
        ) -> Result<(), TargetError>,
    ) -> Result<(), TargetError> {
        let cur = self
            .shared
            .subsystem(nqn)
            .ok_or_else(|| TargetError::NotFound {
                kind: "nvmf subsystem",
                name: nqn.to_string(),
            })?;
        let mut conf = cur.conf.clone();
        let mut namespaces = cur.namespaces.clone();
        f(&mut conf, &mut namespaces)?;
        self.publish(nqn, Some(Subsystem { conf, namespaces }));
        Ok(())
    }

    /// Adds a namespace to a subsystem; its controllers get a namespace
    /// attribute changed event.
    pub fn add_namespace(&mut self, nqn: &str, n: &NamespaceConfig) -> Result<(), TargetError> {
        let ns = self.build_ns(nqn, n)?;
        self.modify(nqn, |conf, map| {
            if map.contains_key(&n.nsid) {
                return Err(TargetError::Exists {
                    kind: "nvmf namespace",
                    name: ns_obj(nqn, n.nsid),
                });
            }
            conf.namespaces.push(n.clone());
            map.insert(n.nsid, ns);
            Ok(())
        })?;
        self.ns_changed(nqn, n.nsid);
        log::info!("nvmf: {} mapped to bdev {}", ns_obj(nqn, n.nsid), n.bdev);
        Ok(())
    }

    /// Removes a namespace from a subsystem.
    pub fn remove_namespace(&mut self, nqn: &str, nsid: u32) -> Result<(), TargetError> {
        self.modify(nqn, |conf, map| {
            if map.remove(&nsid).is_none() {
                return Err(TargetError::NotFound {
                    kind: "nvmf namespace",
                    name: ns_obj(nqn, nsid),
                });
            }
            conf.namespaces.retain(|x| x.nsid != nsid);
            Ok(())
        })?;
        self.drop_pr_state(nqn, nsid);
        self.ns_changed(nqn, nsid);
        log::info!("nvmf: {} removed", ns_obj(nqn, nsid));
        Ok(())
    }

    fn ns_changed(&self, nqn: &str, nsid: u32) {
        ns_changed(&self.target, &self.shared, nqn, nsid);
    }

    /// Sets the ANA state of this node's group; hosts get an ANA change event.
    pub fn set_ana(&mut self, state: AnaState) {
        let old = AnaState::from_code(self.shared.ana_state.swap(state.code(), Ordering::AcqRel));
        if old == state {
            return;
        }
        log::info!(
            "nvmf: ANA group {} {old:?} -> {state:?}",
            self.shared.ana_group
        );
        ana_changed(&self.target, &self.shared);
    }

    /// The ANA group of this node and its state.
    pub fn ana(&self) -> (u32, AnaState) {
        (self.shared.ana_group, self.shared.ana_state())
    }

    /// The controller ids this frontend hands out, `(min, max)`.
    pub fn cntlid_range(&self) -> (u16, u16) {
        self.shared.cntlid_range
    }

    /// The exported subsystems' configuration, as given.
    pub fn subsystems(&self) -> Vec<SubsystemConfig> {
        self.shared
            .subsystem_list()
            .iter()
            .map(|s| s.conf.clone())
            .collect()
    }

    /// The namespaces mapping bdev `bdev`, as `namespace N of nvmf subsystem NQN`.
    pub fn namespace_users(&self, bdev: &str) -> Vec<String> {
        self.shared
            .subsystem_list()
            .iter()
            .flat_map(|s| {
                s.conf
                    .namespaces
                    .iter()
                    .filter(|n| n.bdev == bdev)
                    .map(|n| ns_obj(&s.conf.nqn, n.nsid))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The controllers, with their counters.
    pub fn controllers(&self) -> Vec<ControllerInfo> {
        self.shared
            .ctrl_list()
            .iter()
            .map(|c| ControllerInfo {
                cntlid: c.cntlid,
                subnqn: c.subnqn.clone(),
                hostnqn: c.hostnqn.clone(),
                peer: c.peer.clone(),
                reactor: c.admin.reactor,
                io_queues: c.io_queue_list(),
                kato_ms: c.kato_ms.load(Ordering::Relaxed),
                commands: c.stats.commands.load(Ordering::Relaxed),
                read_bytes: c.stats.read_bytes.load(Ordering::Relaxed),
                write_bytes: c.stats.write_bytes.load(Ordering::Relaxed),
                errors: c.stats.errors.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// Stops the listeners and closes every connection.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        listener::stop_frontend(&self.target, &*self.shared);
        for c in self.shared.ctrl_list() {
            self.shared.remove_ctrl(&c);
        }
        log::info!("nvmf: stopped");
    }
}

impl Drop for NvmfFrontend {
    fn drop(&mut self) {
        self.stop();
    }
}

impl listener::Protocol for Shared {
    const NAME: &'static str = "nvmf";
    const WHAT: &'static str = "nvmf listener";
    type Conn = qpair::Conn;
    fn core(&self) -> &FrontendCore {
        &self.core
    }
    /// The discovery log lists the listeners: it changed.
    fn addrs_changed(&self, addr: SocketAddr, added: bool) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if added {
            log::info!("nvmf: listening on {addr}");
        } else {
            log::info!("nvmf: listener {addr} removed");
        }
    }
    fn connect(
        r: &std::rc::Rc<crate::reactor::Reactor>,
        shared: &Arc<Shared>,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        id: u64,
    ) -> std::rc::Rc<qpair::Conn> {
        qpair::connect(r, shared, stream, peer, id)
    }
}
