//! The iSCSI target (RFC 7143) exporting bdevs and volumes as SBC-3 disks.
//!
//! Code map:
//! - [`pdu`]: the PDU codec (headers, digests, lengths); no allocation, no panics.
//! - [`text`]: `key=value` text and the negotiation rule of each operational key.
//! - [`login`]: the login state machine (stages, ACL, CHAP); pure logic.
//! - [`chap`]: MD5 and CHAP helpers.
//! - The SCSI layer it carries (CDB decode, sense, reservations, ALUA, the LUN
//!   object) is [`super::scsi`], shared with any other SCSI transport.
//! - `conn`: the connection driver on a reactor: socket I/O through io_uring
//!   polls, PDUs, tasks, Data-In/R2T/Data-Out, bdev I/O.
//! - `portal`: the listening socket and the round-robin hand-off of connections.
//! - [`config`]: the TOML configuration.
//!
//! Threads: the frontend's control API ([`IscsiFrontend`]) runs on control
//! threads and talks to reactors through their message rings. Everything a
//! connection owns lives on its reactor; state shared between connections (the
//! target table, persistent reservations, session list) sits behind mutexes that
//! the I/O path takes only for reservation checks while a reservation exists.

pub use plexd_target_api::iscsi::SessionInfo;
pub mod chap;
pub mod config;
mod conn;
pub mod login;
pub mod pdu;
pub mod text;

use crate::frontend::transport::{listener, FrontendCore};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use config::{ChapConfig, IscsiConfig, LunConfig, TargetNodeConfig};

use super::preempt::abort_committed;
pub use super::preempt::ResvApplied;
use super::scsi::alua;
use super::scsi::lun::Capacity;
use super::scsi::pr::{Nexus, PrState};
use super::scsi::{Identity, LunInfo, LunRt};
use crate::error::TargetError;
use crate::frontend::FrontendEnv;

/// MaxRecvDataSegmentLength this target declares.
pub const TARGET_MRDSL_BYTES: u32 = 256 << 10;
/// Largest MaxBurstLength / FirstBurstLength accepted.
pub const MAX_BURST_BYTES: u32 = 1 << 20;
/// Most target nodes per frontend.
pub const MAX_TARGETS: usize = 1024;
/// Most LUNs per target node.
pub const MAX_LUNS: usize = 256;
/// Most sessions per frontend; further logins are refused.
pub const MAX_SESSIONS: usize = 1024;

/// A target node as connections see it.
pub struct TargetRt {
    /// Configuration as connections apply it: `allow` is the effective allow list
    /// (the configured one without denied initiators; [`NOBODY`] when that leaves
    /// nobody), so discovery and login agree.
    pub cfg: TargetNodeConfig,
    /// Configuration as given (listed by [`IscsiFrontend::targets`]).
    conf: TargetNodeConfig,
    /// LUNs by number.
    pub luns: BTreeMap<u64, Arc<LunRt>>,
}

/// An allow-list entry no initiator can match (text keys cannot hold a NUL): the
/// effective allow list of a target whose allowed initiators are all denied.
pub const NOBODY: &str = "\0nobody";

impl TargetRt {
    fn new(conf: TargetNodeConfig, luns: BTreeMap<u64, Arc<LunRt>>) -> TargetRt {
        let mut cfg = conf.clone();
        if !conf.deny.is_empty() && !conf.allow.is_empty() {
            cfg.allow.retain(|a| !conf.deny.contains(a));
            if cfg.allow.is_empty() {
                cfg.allow.push(NOBODY.to_string());
            }
        }
        TargetRt { cfg, conf, luns }
    }
}

/// `lun N of IQN`: how errors name a LUN mapping.
pub fn lun_obj(iqn: &str, lun: u64) -> String {
    format!("lun {lun} of {iqn}")
}

/// Counters of one session (written by its reactor only).
#[derive(Default, Debug)]
pub struct SessionStats {
    /// SCSI commands received.
    pub commands: AtomicU64,
    /// Bytes read by the initiator.
    pub read_bytes: AtomicU64,
    /// Bytes written by the initiator.
    pub write_bytes: AtomicU64,
    /// Commands that ended in CHECK CONDITION (other than a unit attention) or
    /// RESERVATION CONFLICT.
    pub errors: AtomicU64,
    /// Pool buffers the connection holds now (tasks and queued Data-In).
    pub buffers_held: AtomicU64,
    /// Commands accepted but waiting for a pool buffer now.
    pub cmds_waiting_buf: AtomicU64,
    /// Milliseconds the connection has spent blocked on send (socket full), in
    /// total, including the current stretch.
    pub send_blocked_ms: AtomicU64,
}

/// One logged-in session.
pub struct Session {
    /// Target session identifying handle.
    pub tsih: u16,
    /// InitiatorName.
    pub initiator: String,
    /// ISID, as 12 hex digits.
    pub isid: String,
    /// TargetName (empty for discovery).
    pub target: String,
    /// Reactor serving the connection.
    pub reactor: usize,
    /// Peer address.
    pub peer: String,
    /// Connection id within its reactor's registry.
    conn_id: u64,
    /// Counters.
    pub stats: SessionStats,
}

/// State shared by the frontend's control API and its connections.
pub(crate) struct Shared {
    /// The frontend's id, stop flag and every listening portal.
    core: FrontendCore,
    targets: Mutex<BTreeMap<String, Arc<TargetRt>>>,
    /// Bumped on every change of `targets`; connections re-read on change.
    generation: AtomicU64,
    sessions: Mutex<BTreeMap<u16, Arc<Session>>>,
    next_tsih: AtomicU16,
    queue_depth: u32,
    nop_interval: Option<Duration>,
    nop_timeout: Duration,
    /// Longest a connection may stay blocked on send before it is dropped.
    send_timeout: Duration,
    discovery_chap: Option<ChapConfig>,
    portal: Mutex<SocketAddr>,
    pr_dir: Option<PathBuf>,
}

impl Shared {
    fn targets(&self) -> MutexGuard<'_, BTreeMap<String, Arc<TargetRt>>> {
        self.targets.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn sessions(&self) -> MutexGuard<'_, BTreeMap<u16, Arc<Session>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn limits(&self) -> text::Limits {
        text::Limits {
            target_mrdsl: TARGET_MRDSL_BYTES,
            max_burst: MAX_BURST_BYTES,
            first_burst: MAX_BURST_BYTES,
            immediate_data: true,
            initial_r2t: false,
            max_connections: 1,
            max_outstanding_r2t: 1,
        }
    }
    fn target(&self, iqn: &str) -> Option<Arc<TargetRt>> {
        self.targets().get(iqn).cloned()
    }
    /// The target `iqn`, or `NotFound` naming it.
    fn existing(&self, iqn: &str) -> Result<Arc<TargetRt>, TargetError> {
        self.target(iqn).ok_or_else(|| TargetError::NotFound {
            kind: "iscsi target",
            name: iqn.to_string(),
        })
    }
    fn alloc_tsih(&self) -> u16 {
        loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 && !self.sessions().contains_key(&t) {
                return t;
            }
        }
    }
}

impl login::LoginEnv for Shared {
    fn target(&self, iqn: &str) -> Option<login::TargetAuth> {
        self.target(iqn).map(|t| login::TargetAuth {
            allow: t.cfg.allow.clone(),
            chap: t.cfg.chap.clone(),
            alias: t.cfg.alias.clone(),
        })
    }
    fn discovery_chap(&self) -> Option<ChapConfig> {
        self.discovery_chap.clone()
    }
    fn denied(&self, iqn: &str, initiator: &str) -> bool {
        self.target(iqn)
            .is_some_and(|t| t.conf.deny.iter().any(|d| d == initiator))
    }
}

/// A running iSCSI frontend of one [`Target`].
pub struct IscsiFrontend {
    target: Arc<FrontendEnv>,
    shared: Arc<Shared>,
    stopped: bool,
}

/// Checks a CHAP configuration given at run time (or in a target node).
fn check_chap(obj: &str, c: &ChapConfig) -> Result<(), TargetError> {
    let bad = |reason: &str| Err(TargetError::invalid(obj.to_string(), reason.to_string()));
    if c.user.is_empty() || c.user.len() > 255 || c.user.contains('\0') {
        return bad("CHAP user must be 1..255 bytes without NUL");
    }
    if c.secret.is_empty() || c.secret.len() > 255 {
        return bad("CHAP secret must be 1..255 bytes");
    }
    if let Some(m) = &c.mutual_secret {
        if m.is_empty() || m.len() > 255 {
            return bad("mutual CHAP secret must be 1..255 bytes");
        }
        if *m == c.secret {
            return bad(
                "the mutual CHAP secret must differ from the initiator's secret (RFC 7143 §12.1.3)",
            );
        }
    }
    if let Some(u) = &c.mutual_user {
        if u.is_empty() || u.len() > 255 || u.contains('\0') {
            return bad("mutual CHAP user must be 1..255 bytes without NUL");
        }
    }
    Ok(())
}

/// Checks an initiator name of an allow or deny list.
fn check_initiator(obj: &str, name: &str) -> Result<(), TargetError> {
    if name.is_empty() || name.len() > 223 || name.contains('\0') {
        return Err(TargetError::invalid(
            obj.to_string(),
            format!("initiator name {name:?} must be 1..223 bytes without NUL"),
        ));
    }
    Ok(())
}

fn valid_iqn(iqn: &str) -> bool {
    (iqn.starts_with("iqn.") || iqn.starts_with("eui.") || iqn.starts_with("naa."))
        && iqn.len() <= 223
        && iqn
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-:".contains(c))
}

impl IscsiFrontend {
    /// Starts the portal and exports the configured targets of `cfg` on `target`
    /// (an `&Arc<Target>`, or its [`FrontendEnv`]).
    pub fn start(
        target: impl Into<FrontendEnv>,
        cfg: &IscsiConfig,
    ) -> Result<IscsiFrontend, TargetError> {
        let addr: SocketAddr = cfg.portal().parse().map_err(|e| {
            TargetError::invalid(format!("iscsi portal {}", cfg.portal()), format!("{e}"))
        })?;
        let fe = IscsiFrontend::new(target, cfg)?;
        let bound = listener::start(&fe.target, &fe.shared, addr)?;
        *fe.shared.portal.lock().unwrap_or_else(|p| p.into_inner()) = bound;
        fe.shared.core.addrs().push(bound);
        log::info!(
            "iscsi: portal {bound} listening, {} target(s)",
            cfg.targets.len()
        );
        Ok(fe)
    }

    /// Exports the configured targets without listening anywhere yet (`portal` of
    /// `cfg` is not used); [`IscsiFrontend::add_portal`] adds listeners.
    pub fn new(
        target: impl Into<FrontendEnv>,
        cfg: &IscsiConfig,
    ) -> Result<IscsiFrontend, TargetError> {
        let target = &Arc::new(target.into());
        if let Some(d) = &cfg.pr_dir {
            std::fs::create_dir_all(d).map_err(|e| TargetError::Io {
                object: format!("iscsi pr_dir {}", d.display()),
                reason: e.to_string(),
            })?;
        }
        let shared = Arc::new(Shared {
            core: FrontendCore::new(),
            targets: Mutex::new(BTreeMap::new()),
            generation: AtomicU64::new(1),
            sessions: Mutex::new(BTreeMap::new()),
            next_tsih: AtomicU16::new(1),
            queue_depth: cfg.queue_depth(),
            nop_interval: match cfg.nop_in_interval_s.unwrap_or(30) {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
            nop_timeout: Duration::from_secs(cfg.nop_in_timeout_s.unwrap_or(30).max(1)),
            send_timeout: Duration::from_secs(
                cfg.send_timeout_s
                    .unwrap_or(config::DEFAULT_SEND_TIMEOUT_S)
                    .max(1),
            ),
            discovery_chap: cfg.discovery_chap.clone(),
            portal: Mutex::new(SocketAddr::from(([0, 0, 0, 0], 0))),
            pr_dir: cfg.pr_dir.clone(),
        });
        let mut fe = IscsiFrontend {
            target: Arc::clone(target),
            shared,
            stopped: false,
        };
        for t in &cfg.targets {
            fe.add_target(t)?;
        }
        Ok(fe)
    }

    /// The address the portal of [`IscsiFrontend::start`] listens on (with the real
    /// port when 0 was asked); `0.0.0.0:0` for a frontend made with
    /// [`IscsiFrontend::new`].
    pub fn portal(&self) -> SocketAddr {
        *self.shared.portal.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every portal listening now, in the order they were added.
    pub fn portals(&self) -> Vec<SocketAddr> {
        self.shared.core.addrs().clone()
    }

    /// Listens on one more portal (`address:port`, port 0 picks one); returns the
    /// bound address. Every portal serves every target.
    pub fn add_portal(&mut self, addr: &str) -> Result<SocketAddr, TargetError> {
        listener::add(&self.target, &self.shared, addr)
    }

    /// Stops listening on a portal (established connections stay).
    pub fn remove_portal(&mut self, addr: SocketAddr) -> Result<(), TargetError> {
        listener::remove(&self.target, &self.shared, addr)
    }

    fn pr_path(&self, iqn: &str, lun: u64) -> Option<PathBuf> {
        let dir = self.shared.pr_dir.as_ref()?;
        Some(super::pr_file::path(dir, &format!("{iqn}-lun{lun}")))
    }

    /// Forgets the reservations of an unmapped LUN (its state file).
    fn drop_pr_state(&self, iqn: &str, lun: u64) {
        if let Some(p) = self.pr_path(iqn, lun) {
            super::pr_file::remove(&p, &format!("iscsi {}", lun_obj(iqn, lun)));
        }
    }

    fn build_lun(&self, iqn: &str, l: &LunConfig) -> Result<Arc<LunRt>, TargetError> {
        if l.lun >= 16384 {
            return Err(TargetError::invalid(
                lun_obj(iqn, l.lun),
                "LUN numbers are 0..16383",
            ));
        }
        let bdev = self.target.bdev(&l.bdev)?;
        let device_id = l
            .device_id
            .clone()
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| l.bdev.clone());
        // A cluster's LUN keeps no state file: its state comes from the cluster.
        let pr_path = self.pr_path(iqn, l.lun).filter(|_| !l.cluster_reservations);
        let pr = match &pr_path {
            Some(p) => PrState::load(p).map_err(|e| TargetError::Io {
                object: lun_obj(iqn, l.lun),
                reason: e,
            })?,
            None => PrState::default(),
        };
        let alua = l.alua.clone().unwrap_or_default();
        alua.validate()
            .map_err(|e| TargetError::invalid(lun_obj(iqn, l.lun), e))?;
        let info = LunInfo {
            lun: l.lun,
            block_size: bdev.block_size(),
            capacity: Capacity::new(bdev.size_bytes() / bdev.block_size() as u64),
            read_only: l.read_only,
            ident: Identity::from_device_id(&device_id),
            write_cache: bdev.volatile_write_cache(),
            alua,
        };
        let lun = if l.cluster_reservations {
            let broker = Arc::clone(self.target.pr_broker());
            Arc::new(LunRt::new_cluster(info, bdev, broker))
        } else {
            Arc::new(LunRt::new(info, bdev, pr, pr_path))
        };
        LunRt::open_events(&lun, &self.target)?;
        Ok(lun)
    }

    /// Gives every LUN of bdev `volume` whose reservations the cluster keeps the
    /// committed state `state`, and does on this node what the change that made
    /// it ([`PrState::last`]) does to other I_T nexuses, whichever node ran it
    /// ([`LunRt::preempted`]): it queues their reservation unit attentions
    /// (REGISTRATIONS PREEMPTED, RESERVATIONS RELEASED, RESERVATIONS PREEMPTED)
    /// for the nexuses through this node's port, and a PREEMPT AND ABORT aborts
    /// the preempted nexuses' tasks on the volume on this node's connections
    /// (`conn`'s [`crate::frontend::preempt::Preemptible`]).
    /// The caller waits ([`ResvApplied::wait`], without holding the frontend)
    /// until none of those tasks is at a bdev, so that the cluster answers the
    /// preempting nexus only after no task of a preempted one can write anywhere.
    pub fn set_reservations(&mut self, volume: &str, state: &PrState) -> ResvApplied {
        let targets: Vec<Arc<TargetRt>> = self.shared.targets().values().cloned().collect();
        let mut gone: Vec<Nexus> = Vec::new();
        for t in targets {
            for l in t.luns.values() {
                if l.cluster_pr().is_some() && l.bdev.name() == volume {
                    let before = l.set_committed_pr(state);
                    for n in l.preempted(&before, state) {
                        if !gone.contains(&n) {
                            gone.push(n);
                        }
                    }
                }
            }
        }
        let Some(change) = state.last.as_ref().filter(|_| !gone.is_empty()) else {
            return ResvApplied::nothing(volume);
        };
        abort_committed(
            self.target.reactors(),
            (self.shared.core.id, conn::ABORT_PREEMPTED),
            (volume, &format!("iscsi: volume {volume}")),
            &change.nexus,
            gone,
        )
    }

    fn publish(&self, iqn: &str, t: Option<TargetRt>) {
        let mut map = self.shared.targets();
        match t {
            Some(t) => {
                map.insert(iqn.to_string(), Arc::new(t));
            }
            None => {
                map.remove(iqn);
            }
        }
        self.shared.generation.fetch_add(1, Ordering::Release);
    }

    /// Exports a target node.
    pub fn add_target(&mut self, t: &TargetNodeConfig) -> Result<(), TargetError> {
        let obj = format!("iscsi target {}", t.iqn);
        if !valid_iqn(&t.iqn) {
            return Err(TargetError::invalid(
                obj,
                "names are iqn./eui./naa. names in lowercase (RFC 3720 §3.2.6)",
            ));
        }
        if self.shared.target(&t.iqn).is_some() {
            return Err(TargetError::Exists {
                kind: "iscsi target",
                name: t.iqn.clone(),
            });
        }
        if self.shared.targets().len() >= MAX_TARGETS || t.luns.len() > MAX_LUNS {
            return Err(TargetError::invalid(obj, "too many targets or LUNs"));
        }
        if let Some(c) = &t.chap {
            check_chap(&obj, c)?;
        }
        for i in t.allow.iter().chain(&t.deny) {
            check_initiator(&obj, i)?;
        }
        let mut luns = BTreeMap::new();
        for l in &t.luns {
            if luns.contains_key(&l.lun) {
                return Err(TargetError::Exists {
                    kind: "lun",
                    name: format!("{} of {}", l.lun, t.iqn),
                });
            }
            luns.insert(l.lun, self.build_lun(&t.iqn, l)?);
        }
        self.publish(&t.iqn, Some(TargetRt::new(t.clone(), luns)));
        log::info!(
            "iscsi: target {} exported with {} LUN(s)",
            t.iqn,
            t.luns.len()
        );
        Ok(())
    }

    /// Removes a target node and closes its sessions; the reservations of its
    /// LUNs are forgotten.
    pub fn remove_target(&mut self, iqn: &str) -> Result<(), TargetError> {
        let old = self.shared.existing(iqn)?;
        self.publish(iqn, None);
        self.close_sessions(|s| s.target == iqn);
        for lun in old.luns.keys() {
            self.drop_pr_state(iqn, *lun);
        }
        log::info!("iscsi: target {iqn} removed");
        Ok(())
    }

    fn modify(
        &mut self,
        iqn: &str,
        f: impl FnOnce(&mut TargetNodeConfig, &mut BTreeMap<u64, Arc<LunRt>>) -> Result<(), TargetError>,
    ) -> Result<(), TargetError> {
        let cur = self.shared.existing(iqn)?;
        let mut conf = cur.conf.clone();
        let mut luns = cur.luns.clone();
        f(&mut conf, &mut luns)?;
        self.publish(iqn, Some(TargetRt::new(conf, luns)));
        Ok(())
    }

    /// Maps a LUN of a target to a bdev. A LUN number in use is `Exists`
    /// (`lun N of IQN`), a missing bdev `NotFound` (`bdev NAME`).
    pub fn add_lun(&mut self, iqn: &str, lun: &LunConfig) -> Result<(), TargetError> {
        let taken = |luns: &BTreeMap<u64, Arc<LunRt>>| {
            if luns.contains_key(&lun.lun) {
                return Err(TargetError::Exists {
                    kind: "lun",
                    name: format!("{} of {iqn}", lun.lun),
                });
            }
            if luns.len() >= MAX_LUNS {
                return Err(TargetError::invalid(
                    lun_obj(iqn, lun.lun),
                    format!("the target has {MAX_LUNS} LUNs already"),
                ));
            }
            Ok(())
        };
        // Checked before and after building (which opens the reservation file).
        let cur = self.shared.existing(iqn)?;
        taken(&cur.luns)?;
        let rt = self.build_lun(iqn, lun)?;
        self.modify(iqn, |conf, luns| {
            taken(luns)?;
            conf.luns.push(lun.clone());
            luns.insert(lun.lun, rt);
            Ok(())
        })?;
        log::info!(
            "iscsi: {} mapped to bdev {}",
            lun_obj(iqn, lun.lun),
            lun.bdev
        );
        Ok(())
    }

    /// Replaces the ALUA view of a LUN (its port groups and their states): hosts
    /// see it in their next INQUIRY or REPORT TARGET PORT GROUPS. Logged when the
    /// local group's state changes.
    pub fn set_alua(&mut self, iqn: &str, lun: u64, alua: &alua::Alua) -> Result<(), TargetError> {
        alua.validate()
            .map_err(|e| TargetError::invalid(lun_obj(iqn, lun), e))?;
        self.modify(iqn, |conf, luns| {
            let rt = luns.get(&lun).ok_or_else(|| TargetError::NotFound {
                kind: "lun",
                name: format!("{lun} of {iqn}"),
            })?;
            let was = rt.alua().local_state();
            if was != alua.local_state() {
                log::info!(
                    "iscsi: {}: ALUA state of port group {} {:?} -> {:?}",
                    lun_obj(iqn, lun),
                    alua.local_group,
                    was,
                    alua.local_state()
                );
            }
            rt.set_alua(alua);
            if let Some(c) = conf.luns.iter_mut().find(|c| c.lun == lun) {
                c.alua = Some(alua.clone());
            }
            Ok(())
        })
    }

    /// Unmaps a LUN; its reservations are forgotten.
    pub fn remove_lun(&mut self, iqn: &str, lun: u64) -> Result<(), TargetError> {
        self.modify(iqn, |conf, luns| {
            if luns.remove(&lun).is_none() {
                return Err(TargetError::NotFound {
                    kind: "lun",
                    name: format!("{lun} of {iqn}"),
                });
            }
            conf.luns.retain(|l| l.lun != lun);
            Ok(())
        })?;
        self.drop_pr_state(iqn, lun);
        log::info!("iscsi: {} unmapped", lun_obj(iqn, lun));
        Ok(())
    }

    /// Allows an initiator: adds it to the allow list (a target with a non-empty
    /// list admits only those) and takes it off the deny list.
    pub fn allow_initiator(&mut self, iqn: &str, initiator: &str) -> Result<(), TargetError> {
        check_initiator(&format!("iscsi target {iqn}"), initiator)?;
        self.modify(iqn, |conf, _| {
            if !conf.allow.iter().any(|a| a == initiator) {
                conf.allow.push(initiator.to_string());
            }
            conf.deny.retain(|d| d != initiator);
            Ok(())
        })?;
        log::info!("iscsi: target {iqn}: initiator {initiator} allowed");
        Ok(())
    }

    /// Denies an initiator: puts it on the deny list (deny wins over allow; the
    /// allow list is kept, so a restricted target never becomes open) and closes
    /// its sessions.
    pub fn deny_initiator(&mut self, iqn: &str, initiator: &str) -> Result<(), TargetError> {
        check_initiator(&format!("iscsi target {iqn}"), initiator)?;
        self.modify(iqn, |conf, _| {
            if !conf.deny.iter().any(|d| d == initiator) {
                conf.deny.push(initiator.to_string());
            }
            Ok(())
        })?;
        self.close_sessions(|s| s.target == iqn && s.initiator == initiator);
        log::info!("iscsi: target {iqn}: initiator {initiator} denied");
        Ok(())
    }

    /// Sets or clears the CHAP secrets of a target (new logins only).
    pub fn set_chap(&mut self, iqn: &str, chap: Option<ChapConfig>) -> Result<(), TargetError> {
        if let Some(c) = &chap {
            check_chap(&format!("iscsi target {iqn}"), c)?;
        }
        let on = chap.is_some();
        self.modify(iqn, |conf, _| {
            conf.chap = chap;
            Ok(())
        })?;
        log::info!(
            "iscsi: target {iqn}: CHAP {}",
            if on { "set" } else { "cleared" }
        );
        Ok(())
    }

    /// The exported targets' configuration, as given (secrets included).
    pub fn targets(&self) -> Vec<TargetNodeConfig> {
        self.shared
            .targets()
            .values()
            .map(|t| t.conf.clone())
            .collect()
    }

    /// The LUN mappings of bdev `bdev`, as `lun N of IQN`.
    pub fn lun_users(&self, bdev: &str) -> Vec<String> {
        self.shared
            .targets()
            .values()
            .flat_map(|t| {
                t.conf
                    .luns
                    .iter()
                    .filter(|l| l.bdev == bdev)
                    .map(|l| lun_obj(&t.conf.iqn, l.lun))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Sessions with their counters.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.shared
            .sessions()
            .values()
            .map(|s| SessionInfo {
                tsih: s.tsih,
                initiator: s.initiator.clone(),
                isid: s.isid.clone(),
                target: s.target.clone(),
                reactor: s.reactor,
                peer: s.peer.clone(),
                commands: s.stats.commands.load(Ordering::Relaxed),
                read_bytes: s.stats.read_bytes.load(Ordering::Relaxed),
                write_bytes: s.stats.write_bytes.load(Ordering::Relaxed),
                errors: s.stats.errors.load(Ordering::Relaxed),
                buffers_held: s.stats.buffers_held.load(Ordering::Relaxed),
                cmds_waiting_buf: s.stats.cmds_waiting_buf.load(Ordering::Relaxed),
                send_blocked_ms: s.stats.send_blocked_ms.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn close_sessions(&self, pick: impl Fn(&Session) -> bool) {
        let victims: Vec<(usize, u64)> = self
            .shared
            .sessions()
            .values()
            .filter(|s| pick(s))
            .map(|s| (s.reactor, s.conn_id))
            .collect();
        for (reactor, conn_id) in victims {
            let fid = self.shared.core.id;
            let h = &self.target.reactors().handles()[reactor];
            let msg: crate::reactor::Msg = Box::new(move |r| {
                conn::close_conn(r, fid, conn_id, "closed by the management API")
            });
            if h.send_timeout(msg, crate::reactor::CONTROL_SEND_TIMEOUT)
                .is_err()
            {
                log::error!("iscsi: could not ask reactor {reactor} to close connection {conn_id}");
            }
        }
    }

    /// Stops the portal and closes every connection.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        listener::stop_frontend(&self.target, &*self.shared);
        log::info!("iscsi: portal {} stopped", self.portal());
    }
}

impl Drop for IscsiFrontend {
    fn drop(&mut self) {
        self.stop();
    }
}

impl listener::Protocol for Shared {
    const NAME: &'static str = "iscsi";
    const WHAT: &'static str = "iscsi portal";
    type Conn = conn::Conn;
    fn core(&self) -> &FrontendCore {
        &self.core
    }
    fn addrs_changed(&self, addr: SocketAddr, added: bool) {
        if added {
            log::info!("iscsi: portal {addr} listening");
        } else {
            log::info!("iscsi: portal {addr} removed");
        }
    }
    fn connect(
        r: &std::rc::Rc<crate::reactor::Reactor>,
        shared: &Arc<Shared>,
        stream: std::net::TcpStream,
        peer: SocketAddr,
        id: u64,
    ) -> std::rc::Rc<conn::Conn> {
        conn::connect(r, shared, stream, peer, id)
    }
}
