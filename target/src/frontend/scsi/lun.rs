//! The LUN object: the bdev a LUN maps to, its SCSI identity, and the state every
//! I_T nexus shares (reservations, software write protect, reset epoch, ALUA view),
//! with the unit attentions established for single nexuses (a reservation
//! change's).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::alua::Alua;
use super::cdb::MAX_TRANSFER_BYTES;
use super::pr::{self, Nexus, PrState};
use super::pr_cluster::PrBroker;
use super::sense::Sense;
use crate::bdev::{Bdev, BdevDesc, BdevEvent};
use crate::error::TargetError;
use crate::frontend::FrontendEnv;

/// Most unit attentions a LUN keeps for single I_T nexuses (reservation
/// changes, commands cleared); beyond it the oldest is dropped (logged). Each
/// of the four kinds is pending at most once per nexus: four per registration.
pub const MAX_NEXUS_UNIT_ATTENTIONS: usize = 4 * pr::MAX_REGISTRATIONS;

/// Device identifiers derived from a LUN's `device_id` (by default the volume name
/// or uuid): the same string gives the same ids on every node and after restarts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// NAA IEEE Registered Extended (type 6) designator, 16 bytes.
    pub naa: [u8; 16],
    /// Unit serial number (VPD 80h), 32 hex characters.
    pub serial: String,
    /// T10 vendor id designator's vendor-specific part.
    pub t10: String,
}

impl Identity {
    /// Identity of `device_id`.
    pub fn from_device_id(device_id: &str) -> Identity {
        use md5::{Digest, Md5};
        let h: [u8; 16] = Md5::new()
            .chain_update(b"plexd-lun:")
            .chain_update(device_id.as_bytes())
            .finalize()
            .into();
        let mut naa = h;
        naa[0] = 0x60 | (naa[0] & 0x0f);
        let serial: String = h.iter().map(|b| format!("{b:02x}")).collect();
        let mut t10: String = device_id
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect();
        if t10.is_empty() {
            t10 = serial.clone();
        }
        Identity { naa, serial, t10 }
    }
}

/// A LUN's capacity in blocks and the count of its changes (the epoch a nexus
/// compares to report CAPACITY DATA HAS CHANGED once). Clones share it: a resize
/// reaches every copy of the LUN's view at once, lock-free.
#[derive(Clone, Debug, Default)]
pub struct Capacity(Arc<CapacityInner>);

#[derive(Debug, Default)]
struct CapacityInner {
    blocks: AtomicU64,
    epoch: AtomicU64,
}

impl Capacity {
    /// A capacity of `blocks` blocks, never changed yet (epoch 0).
    pub fn new(blocks: u64) -> Capacity {
        let c = Capacity::default();
        c.0.blocks.store(blocks, Ordering::Relaxed);
        c
    }

    /// The capacity in blocks now.
    #[inline]
    pub fn blocks(&self) -> u64 {
        self.0.blocks.load(Ordering::Acquire)
    }

    /// How many times the capacity changed.
    #[inline]
    pub fn epoch(&self) -> u64 {
        self.0.epoch.load(Ordering::Acquire)
    }

    /// Sets the capacity; true (and a new epoch) when it changed.
    pub fn set(&self, blocks: u64) -> bool {
        if self.0.blocks.swap(blocks, Ordering::AcqRel) == blocks {
            return false;
        }
        self.0.epoch.fetch_add(1, Ordering::AcqRel);
        true
    }
}

/// What the SCSI layer knows about a LUN.
#[derive(Clone, Debug)]
pub struct LunInfo {
    /// The LUN number.
    pub lun: u64,
    /// Logical block size.
    pub block_size: u32,
    /// Capacity in blocks, shared by every copy of this view and changed at run
    /// time when the bdev is resized ([`LunRt::resized`]).
    pub capacity: Capacity,
    /// Writes are refused.
    pub read_only: bool,
    /// Device identifiers.
    pub ident: Identity,
    /// The bdev has a volatile write cache: reported as WCE=1 in the caching mode
    /// page, so hosts send SYNCHRONIZE CACHE and FUA writes. A volume's answer can
    /// change with its layout, so callers refresh it from the bdev before MODE
    /// SENSE and MODE SELECT.
    pub write_cache: bool,
    /// Target port groups and this port's place in them (INQUIRY, REPORT TARGET
    /// PORT GROUPS). Callers refresh it (states change at run time) for those
    /// commands, with this port's own group unavailable while the LUN is fenced.
    pub alua: Alua,
}

impl LunInfo {
    /// Most blocks one command may move.
    pub(crate) fn max_xfer_blocks(&self) -> u32 {
        MAX_TRANSFER_BYTES / self.block_size
    }
    /// Most blocks of one COMPARE AND WRITE (half of a transfer: compare + write data).
    pub(crate) fn max_caw_blocks(&self) -> u32 {
        (MAX_TRANSFER_BYTES / 2 / self.block_size).min(255)
    }
}

/// A LUN as transports see it: its bdev, SCSI identity and the state shared by
/// every I_T nexus.
pub struct LunRt {
    /// The SCSI view.
    pub info: LunInfo,
    /// The bdev the LUN maps to.
    pub bdev: Arc<dyn Bdev>,
    /// Reservation state.
    pr: Mutex<PrState>,
    /// True while any reservation is held: the I/O path checks only this.
    pr_active: AtomicBool,
    pr_path: Option<PathBuf>,
    /// Set for a LUN of a shared volume: the cluster keeps its reservations (PR
    /// OUT goes through the broker; the state is set by the coordinator).
    cluster: Option<Arc<PrBroker>>,
    /// Software write protect (control mode page SWP), set by MODE SELECT.
    swp: AtomicBool,
    /// Bumped by LUN and target resets; a nexus that saw an older value gets a
    /// unit attention on its next command.
    ua_epoch: AtomicU64,
    /// The ALUA view, changed at run time by the coordinator
    /// ([`crate::frontend::iscsi::IscsiFrontend::set_alua`]); read by INQUIRY and
    /// REPORT TARGET PORT GROUPS only, never on the I/O path.
    alua: Mutex<Alua>,
    /// This target's relative port in `alua` (the I_T nexus of reservations), read
    /// without the lock by the reservation checks of the I/O path.
    port: AtomicU16,
    /// The LUN's open descriptor on its bdev (resize and remove events), set once
    /// by [`LunRt::open_events`]; dropped with the LUN.
    desc: OnceLock<BdevDesc>,
    /// Unit attentions established for single I_T nexuses, oldest first (at most
    /// [`MAX_NEXUS_UNIT_ATTENTIONS`]).
    nexus_uas: Mutex<VecDeque<(Nexus, Sense)>>,
    /// Length of `nexus_uas`: the I/O path's lock-free check.
    nexus_ua_count: AtomicUsize,
}

impl LunRt {
    /// A LUN over `bdev` with the reservations `pr` (saved to `pr_path` on change,
    /// when given) and the ALUA view of `info`.
    pub fn new(info: LunInfo, bdev: Arc<dyn Bdev>, pr: PrState, pr_path: Option<PathBuf>) -> LunRt {
        LunRt {
            port: AtomicU16::new(info.alua.relative_port),
            alua: Mutex::new(info.alua.clone()),
            pr_active: AtomicBool::new(pr.any()),
            pr: Mutex::new(pr),
            pr_path,
            cluster: None,
            info,
            bdev,
            swp: AtomicBool::new(false),
            ua_epoch: AtomicU64::new(0),
            desc: OnceLock::new(),
            nexus_uas: Mutex::new(VecDeque::new()),
            nexus_ua_count: AtomicUsize::new(0),
        }
    }

    /// Opens `lun`'s bdev on `target` with an event callback: a resize changes
    /// the LUN's capacity and queues CAPACITY DATA HAS CHANGED for every nexus
    /// ([`LunRt::resized`]). Catches up with a resize since the LUN was built.
    pub fn open_events(lun: &Arc<LunRt>, target: &FrontendEnv) -> Result<(), TargetError> {
        let w = Arc::downgrade(lun);
        let desc = target.open_bdev(
            lun.bdev.name(),
            Box::new(move |name, ev| {
                let Some(l) = w.upgrade() else { return };
                match ev {
                    BdevEvent::Resize { size_bytes } => l.resized(size_bytes),
                    BdevEvent::Remove => log::warn!(
                        "scsi: lun {}: its bdev {name} was removed; I/O to it fails",
                        l.info.lun
                    ),
                }
            }),
        )?;
        // Only the builder calls this, once; a second descriptor would just drop.
        let _ = lun.desc.set(desc);
        lun.resized(lun.bdev.size_bytes());
        Ok(())
    }

    /// A LUN of a shared volume whose reservations the cluster keeps: it starts with
    /// the committed state `broker` holds for its bdev and forwards PR OUT to it.
    pub fn new_cluster(info: LunInfo, bdev: Arc<dyn Bdev>, broker: Arc<PrBroker>) -> LunRt {
        let pr = broker.state(bdev.name());
        let mut l = LunRt::new(info, bdev, pr, None);
        l.cluster = Some(broker);
        l
    }

    /// The cluster's broker when the cluster keeps this LUN's reservations.
    pub fn cluster_pr(&self) -> Option<&Arc<PrBroker>> {
        self.cluster.as_ref()
    }

    /// Installs the cluster's committed reservation state (a LUN of a shared
    /// volume); this node's RESERVE(6) holder stays. Returns the state before.
    pub fn set_committed_pr(&self, state: &PrState) -> PrState {
        self.with_pr(|p| {
            let before = p.clone();
            p.set_persistent(state);
            (before, false)
        })
    }

    /// What the reservation change from `before` to `after` (made by
    /// [`PrState::last`]) does to the other I_T nexuses of this LUN through this
    /// target port, whichever node ran it: queues their unit attentions and
    /// returns the nexuses whose commands on the LUN are to be aborted (the
    /// transport does that, then queues [`super::sense::COMMANDS_CLEARED`] for each
    /// nexus that had any). The caller is whoever installed `after`: the task
    /// of a standalone LUN's PR OUT, or `setReservations` on every node for a
    /// shared volume's committed state, whether it is the change just made or
    /// one this node missed and catches up with.
    ///
    /// The unit attentions, SPC-4 for each PERSISTENT RESERVE OUT service
    /// action ([`pr::notices`]), never for the nexus that sent it:
    /// - PREEMPT, PREEMPT AND ABORT: REGISTRATIONS PREEMPTED (2Ah/05h) for
    ///   every nexus whose registration it removed; when it changed the
    ///   reservation's type, RESERVATIONS RELEASED (2Ah/04h) for every nexus
    ///   still registered.
    /// - RELEASE of a registrants-only or all-registrants reservation, and
    ///   REGISTER unregistering the holder of a registrants-only one:
    ///   RESERVATIONS RELEASED for every nexus still registered.
    /// - CLEAR: RESERVATIONS PREEMPTED (2Ah/03h) for every nexus registered
    ///   before it.
    ///
    /// PREEMPT AND ABORT ("preempting and aborting") then aborts every command
    /// of the preempted nexuses, as SAM-5 aborts commands, and returns GOOD only
    /// once those aborts completed (the transport waits for commands at a
    /// bdev). This LUN's control mode page has TAS=0 (not changeable): an
    /// aborted command ends with no status at all, and SAM-5 (5.6) establishes
    /// COMMANDS CLEARED BY ANOTHER INITIATOR (2Fh/00h) for each I_T nexus that
    /// had commands aborted, other than the one that caused the abort. A
    /// preempted nexus thus reports REGISTRATIONS PREEMPTED, then COMMANDS
    /// CLEARED BY ANOTHER INITIATOR if it had commands on the LUN. Nexuses
    /// through other target ports are other nodes' (each applies the committed
    /// state itself); NVMe hosts get their notices from their own frontend.
    /// A node that missed several changes gets the last one's unit attentions
    /// for the difference (`setReservations` carries only the newest state).
    pub fn preempted(&self, before: &PrState, after: &PrState) -> Vec<Nexus> {
        let port = self.port.load(Ordering::Acquire);
        let mut gone = Vec::new();
        for (n, what) in pr::notices(before, after) {
            if n.port != port {
                continue;
            }
            self.queue_nexus_ua(&n, what.sense());
            if what == pr::Notice::RegistrationPreempted {
                gone.push(n);
            }
        }
        let abort = after
            .last
            .as_ref()
            .is_some_and(|c| c.sa == pr::SA_PREEMPT_AND_ABORT);
        if abort {
            gone
        } else {
            Vec::new()
        }
    }

    /// Establishes unit attention `s` for I_T nexus `nexus` on this LUN, reported
    /// by its next command ([`LunRt::take_nexus_ua`]) after those established
    /// before it; the same one pending twice is one.
    pub fn queue_nexus_ua(&self, nexus: &Nexus, s: Sense) {
        let mut q = self.nexus_uas.lock().unwrap_or_else(|p| p.into_inner());
        if q.iter().any(|(n, x)| n == nexus && *x == s) {
            return;
        }
        if q.len() >= MAX_NEXUS_UNIT_ATTENTIONS {
            if let Some((n, x)) = q.pop_front() {
                log::warn!(
                    "scsi: lun {} ({}): {MAX_NEXUS_UNIT_ATTENTIONS} unit attentions pending; {:02x}h/{:02x}h for {n} dropped",
                    self.info.lun,
                    self.bdev.name(),
                    x.asc,
                    x.ascq
                );
            }
        }
        q.push_back((nexus.clone(), s));
        self.nexus_ua_count.store(q.len(), Ordering::Release);
    }

    /// Takes the oldest unit attention established for the I_T nexus of
    /// initiator port `initiator` through this target port; lock-free while
    /// none is pending for any nexus.
    pub fn take_nexus_ua(&self, initiator: &str) -> Option<Sense> {
        if self.nexus_ua_count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let nexus = self.nexus(initiator);
        let mut q = self.nexus_uas.lock().unwrap_or_else(|p| p.into_inner());
        let i = q.iter().position(|(n, _)| *n == nexus)?;
        let s = q.remove(i).map(|(_, s)| s);
        self.nexus_ua_count.store(q.len(), Ordering::Release);
        s
    }

    /// The I_T nexus of initiator port `initiator` on this LUN: with this target's
    /// relative port from the ALUA view (the node id in a cluster, else 1).
    pub fn nexus(&self, initiator: &str) -> Nexus {
        Nexus::new(initiator, self.port.load(Ordering::Acquire))
    }

    /// The SCSI view with the write cache read from the bdev now (a volume's
    /// answer follows its layout); for MODE SENSE and MODE SELECT, not the I/O path.
    pub fn info_now(&self) -> LunInfo {
        LunInfo {
            write_cache: self.bdev.volatile_write_cache(),
            alua: self.alua().clone(),
            ..self.info.clone()
        }
    }

    /// The ALUA view (read it; replace it with [`LunRt::set_alua`]).
    pub fn alua(&self) -> MutexGuard<'_, Alua> {
        self.alua.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the ALUA view (and with it this target's relative port).
    pub fn set_alua(&self, a: &Alua) {
        let mut g = self.alua();
        *g = a.clone();
        self.port.store(a.relative_port, Ordering::Release);
    }

    /// The reservation state, for reading.
    pub fn pr(&self) -> MutexGuard<'_, PrState> {
        self.pr.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while any reservation is held (a lock-free check for the I/O path).
    pub fn reserved(&self) -> bool {
        self.pr_active.load(Ordering::Acquire)
    }

    /// Runs `f` on the reservation state, then refreshes the fast flag and, when
    /// `f` says the persistent part changed, saves it.
    pub fn with_pr<R>(&self, f: impl FnOnce(&mut PrState) -> (R, bool)) -> R {
        let mut g = self.pr();
        let (r, changed) = f(&mut g);
        self.pr_active.store(g.any(), Ordering::Release);
        if changed {
            if let Some(p) = &self.pr_path {
                if let Err(e) = g.save(p) {
                    log::error!(
                        "scsi: lun {} ({}): cannot save reservations to {}: {e}",
                        self.info.lun,
                        self.bdev.name(),
                        p.display()
                    );
                }
            }
        }
        r
    }

    /// Software write protect (control mode page SWP).
    pub fn swp(&self) -> bool {
        self.swp.load(Ordering::Relaxed)
    }

    /// Sets software write protect (MODE SELECT).
    pub fn set_swp(&self, on: bool) {
        self.swp.store(on, Ordering::Relaxed)
    }

    /// The bdev was resized to `size_bytes`: the LUN takes the new capacity and
    /// every I_T nexus gets CAPACITY DATA HAS CHANGED on its next command (SPC-4
    /// 6.x unit attention 2Ah/09h, once per nexus). A size that is not a whole
    /// number of blocks is rounded down.
    pub fn resized(&self, size_bytes: u64) {
        let blocks = size_bytes / u64::from(self.info.block_size.max(1));
        let old = self.info.capacity.blocks();
        if self.info.capacity.set(blocks) {
            log::info!(
                "scsi: lun {} ({}): capacity {old} -> {blocks} blocks; unit attention for every nexus",
                self.info.lun,
                self.bdev.name()
            );
        }
    }

    /// The capacity epoch (a nexus that saw an older one has a unit attention).
    pub fn capacity_epoch(&self) -> u64 {
        self.info.capacity.epoch()
    }

    /// The reset epoch (a nexus that saw an older one has a unit attention).
    pub fn ua_epoch(&self) -> u64 {
        self.ua_epoch.load(Ordering::Acquire)
    }

    /// A LUN reset: reservations of RESERVE(6) go, every nexus gets a unit attention.
    pub fn reset(&self) {
        self.with_pr(|p| {
            p.reset();
            ((), false)
        });
        self.ua_epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// An I_T nexus is gone (its session ended).
    pub fn nexus_lost(&self, nexus: &str) {
        self.with_pr(|p| {
            p.nexus_lost(nexus);
            ((), false)
        });
    }
}
