//! The kernel interface's operations in plain Rust, on top of [`Target`]. The RPC
//! server calls these (on `smol::unblock` threads: several of them block), and so
//! does the standalone configuration loader, so a bdev made from a file and one made
//! over the socket are the same thing.
//!
//! Besides the target, the service keeps the `error` bdevs it created by name: the
//! target's registry holds them as `dyn Bdev`, and fault injection needs the
//! concrete type. It also holds the iSCSI frontend (started from the configuration
//! file, or by the first `iscsi_add_portal` / `iscsi_add_target`), so the kernel
//! interface manages portals, targets, LUNs, ACLs and CHAP at run time, and bdev and
//! volume deletion can refuse what a LUN maps.

pub use plexd_target_api::bdev::{BdevKind, BdevRequest, Injection, IoResult, MAX_IO_BYTES};
pub use plexd_target_api::info::TargetInfo;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::bdev::error::ErrorBdev;
use crate::bdev::malloc::MallocBdev;
use crate::bdev::null::NullBdev;
use crate::bdev::uring::{UringBdev, UringOpts};
use crate::bdev::{Bdev, BdevInfo, IoKind, IoStatus};
use crate::diag::{run_ios, IoReq};
use crate::frontend::iscsi::{
    lun_obj, ChapConfig, IscsiConfig, IscsiFrontend, LunConfig, SessionInfo, TargetNodeConfig,
};
use crate::frontend::scsi::alua::Alua;
use crate::frontend::scsi::pr::PrState;
use crate::frontend::scsi::pr_cluster::PrOutResult;
use crate::reactor::PollMode;
use crate::target::{Target, TargetError};

use super::{ApiError, ErrorCode};

/// Longest an `io` call waits for its completion (and the default when none is given).
pub const MAX_IO_TIMEOUT: Duration = Duration::from_secs(60);
/// Default block size of `null` and `malloc` bdevs.
pub const DEFAULT_BLOCK_SIZE_BYTES: u32 = 512;
/// Largest block size accepted for `null` and `malloc` bdevs.
pub const MAX_BLOCK_SIZE_BYTES: u32 = 64 << 10;

/// One diagnostic I/O for [`KernelService::io`].
#[derive(Clone, Debug)]
pub struct DiagIo {
    /// The bdev or volume.
    pub bdev: String,
    /// Read, write, flush, write-zeroes or unmap.
    pub kind: IoKind,
    /// Start in bytes.
    pub offset_bytes: u64,
    /// Length in bytes (at most [`MAX_IO_BYTES`]).
    pub len_bytes: u64,
    /// For writes: `len_bytes` of data.
    pub data: Vec<u8>,
    /// The reactor to submit on.
    pub reactor: usize,
    /// How long to wait (zero or above [`MAX_IO_TIMEOUT`]: that limit).
    pub timeout: Duration,
}

/// The operations of the kernel interface on one target.
pub struct KernelService {
    target: Arc<Target>,
    poll_mode: PollMode,
    socket: Mutex<String>,
    error_bdevs: Mutex<HashMap<String, Arc<ErrorBdev>>>,
    /// Lock order: `iscsi` before `nvmf` before `error_bdevs`.
    iscsi: Mutex<IscsiSlot>,
    /// The NVMe-oF frontend (`super::nvmf`).
    pub(super) nvmf: Mutex<super::nvmf::NvmfSlot>,
}

/// The iSCSI frontend and what a run-time start uses.
struct IscsiSlot {
    fe: Option<IscsiFrontend>,
    /// Settings of a frontend started by the API (its `portal` and `targets` are
    /// not used).
    defaults: IscsiConfig,
    /// Set by [`KernelService::stop_iscsi`]: no frontend is started afterwards.
    stopped: bool,
}

const FRONTEND: &str = "iscsi frontend";

fn target_not_found(iqn: &str) -> ApiError {
    ApiError::from(TargetError::NotFound {
        kind: "iscsi target",
        name: iqn.to_string(),
    })
}

fn bdev_obj(name: &str) -> String {
    format!("bdev {name}")
}

impl KernelService {
    /// A service over `target`, whose reactors run in `poll_mode` (reported by `info`).
    pub fn new(target: Arc<Target>, poll_mode: PollMode) -> Arc<KernelService> {
        Arc::new(KernelService {
            target,
            poll_mode,
            socket: Mutex::new(String::new()),
            error_bdevs: Mutex::new(HashMap::new()),
            iscsi: Mutex::new(IscsiSlot {
                fe: None,
                defaults: IscsiConfig::default(),
                stopped: false,
            }),
            nvmf: Mutex::new(Default::default()),
        })
    }

    /// The target.
    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }

    /// Records the socket path `info` reports.
    pub fn set_socket(&self, path: &str) {
        *self.socket.lock().unwrap_or_else(|p| p.into_inner()) = path.to_string();
    }

    fn errors(&self) -> MutexGuard<'_, HashMap<String, Arc<ErrorBdev>>> {
        self.error_bdevs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn iscsi_slot(&self) -> MutexGuard<'_, IscsiSlot> {
        self.iscsi.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands the service the iSCSI frontend started from the configuration file.
    pub fn set_iscsi(&self, fe: Option<IscsiFrontend>) {
        self.iscsi_slot().fe = fe;
    }

    /// Settings (queue depth, NOP-In, `pr_dir`, discovery CHAP) of a frontend the
    /// API starts when none runs; `portal` and `targets` are ignored.
    pub fn set_iscsi_defaults(&self, cfg: IscsiConfig) {
        self.iscsi_slot().defaults = cfg;
    }

    /// Stops the iSCSI frontend (portals and sessions closed); later calls that
    /// would start one fail. Returns whether one was running.
    pub fn stop_iscsi(&self) -> bool {
        let fe = {
            let mut slot = self.iscsi_slot();
            slot.stopped = true;
            slot.fe.take()
        };
        match fe {
            Some(mut fe) => {
                fe.stop();
                true
            }
            None => false,
        }
    }

    /// Runs `f` on the frontend, starting one (with no portal) first when `start`
    /// is set and none runs; without one and without `start`, `none` answers.
    fn with_iscsi<T>(
        &self,
        start: bool,
        none: impl FnOnce() -> Result<T, ApiError>,
        f: impl FnOnce(&mut IscsiFrontend) -> Result<T, ApiError>,
    ) -> Result<T, ApiError> {
        let mut slot = self.iscsi_slot();
        if slot.fe.is_none() {
            if !start {
                return none();
            }
            if slot.stopped {
                return Err(ApiError {
                    code: ErrorCode::Invalid,
                    object: FRONTEND.into(),
                    reason: "the target is stopping".into(),
                });
            }
            let cfg = IscsiConfig {
                portal: None,
                targets: Vec::new(),
                ..slot.defaults.clone()
            };
            let fe = IscsiFrontend::new(&self.target, &cfg)?;
            log::info!(
                "iscsi: frontend started by the kernel interface (queue depth {}, reservations in {})",
                cfg.queue_depth(),
                cfg.pr_dir
                    .as_ref()
                    .map_or_else(|| "memory".to_string(), |d| d.display().to_string())
            );
            slot.fe = Some(fe);
        }
        match slot.fe.as_mut() {
            Some(fe) => f(fe),
            None => none(),
        }
    }

    /// Listens on `addr` (`ip:port`, port 0 picks one), starting the frontend if
    /// none runs; returns the bound address.
    pub fn iscsi_add_portal(&self, addr: &str) -> Result<SocketAddr, ApiError> {
        self.with_iscsi(true, unreachable_frontend, |fe| Ok(fe.add_portal(addr)?))
    }

    /// Stops listening on `addr`; established sessions stay.
    pub fn iscsi_remove_portal(&self, addr: &str) -> Result<(), ApiError> {
        let a: SocketAddr = addr.parse().map_err(|e| ApiError {
            code: ErrorCode::Invalid,
            object: format!("iscsi portal {addr}"),
            reason: format!("{e}"),
        })?;
        let not_found = || {
            Err(ApiError::from(TargetError::NotFound {
                kind: "iscsi portal",
                name: a.to_string(),
            }))
        };
        self.with_iscsi(false, not_found, |fe| Ok(fe.remove_portal(a)?))
    }

    /// The portals listening now.
    pub fn iscsi_portals(&self) -> Vec<SocketAddr> {
        self.iscsi_slot()
            .fe
            .as_ref()
            .map(|f| f.portals())
            .unwrap_or_default()
    }

    /// Exports a target node (starting the frontend, with no portal, if none runs).
    pub fn iscsi_add_target(&self, t: &TargetNodeConfig) -> Result<(), ApiError> {
        self.with_iscsi(true, unreachable_frontend, |fe| {
            fe.add_target(t).map_err(|e| match e {
                TargetError::NotFound { kind: "bdev", name } => ApiError {
                    code: ErrorCode::NotFound,
                    object: format!("iscsi target {}", t.iqn),
                    reason: format!("bdev {name} not found"),
                },
                e => ApiError::from(e),
            })
        })
    }

    /// Removes a target node and closes its sessions.
    pub fn iscsi_remove_target(&self, iqn: &str) -> Result<(), ApiError> {
        self.with_iscsi(
            false,
            || Err(target_not_found(iqn)),
            |fe| Ok(fe.remove_target(iqn)?),
        )
    }

    /// Maps a LUN. A missing bdev is `notFound` on `lun N of IQN`.
    pub fn iscsi_add_lun(&self, iqn: &str, lun: &LunConfig) -> Result<(), ApiError> {
        self.with_iscsi(
            false,
            || Err(target_not_found(iqn)),
            |fe| {
                fe.add_lun(iqn, lun).map_err(|e| match e {
                    TargetError::NotFound { kind: "bdev", name } => ApiError {
                        code: ErrorCode::NotFound,
                        object: lun_obj(iqn, lun.lun),
                        reason: format!("bdev {name} not found"),
                    },
                    e => ApiError::from(e),
                })
            },
        )
    }

    /// Unmaps a LUN.
    pub fn iscsi_remove_lun(&self, iqn: &str, lun: u64) -> Result<(), ApiError> {
        self.with_iscsi(
            false,
            || Err(target_not_found(iqn)),
            |fe| Ok(fe.remove_lun(iqn, lun)?),
        )
    }

    /// The committed reservations of shared volume `volume` (kept by the cluster):
    /// recorded for LUNs mapped later and given to every LUN and NVMe namespace
    /// of it now; answers once no command a preempt and abort ended on this
    /// node is still at a bdev (both frontends' aborts run meanwhile).
    pub fn set_reservations(&self, volume: &str, state: &PrState) -> Result<(), ApiError> {
        self.target.pr_broker().set_state(volume, state);
        let iscsi = self.with_iscsi(
            false,
            || Ok(None),
            |fe| Ok(Some(fe.set_reservations(volume, state))),
        )?;
        let nvmf = self.nvmf_set_reservations(volume, state);
        // Not holding either frontend while the aborted commands finish.
        if let Some(a) = iscsi {
            a.wait()?;
        }
        if let Some(a) = nvmf {
            a.wait()?;
        }
        Ok(())
    }

    /// The coordinator's answer to a PR OUT request (an `Event::PrOut`).
    pub fn pr_out_done(&self, request: u64, result: PrOutResult) -> Result<(), ApiError> {
        Ok(self.target.complete_pr_out(request, result)?)
    }

    /// Replaces the ALUA view of a LUN.
    pub fn iscsi_set_alua(&self, iqn: &str, lun: u64, alua: &Alua) -> Result<(), ApiError> {
        self.with_iscsi(
            false,
            || Err(target_not_found(iqn)),
            |fe| Ok(fe.set_alua(iqn, lun, alua)?),
        )
    }

    /// Allows an initiator on a target (and takes it off the deny list).
    pub fn iscsi_allow_initiator(&self, iqn: &str, initiator: &str) -> Result<(), ApiError> {
        self.with_iscsi(
            false,
            || Err(target_not_found(iqn)),
            |fe| Ok(fe.allow_initiator(iqn, initiator)?),
        )
    }

    /// Denies an initiator on a target and closes its sessions there.
    pub fn iscsi_deny_initiator(&self, iqn: &str, initiator: &str) -> Result<(), ApiError> {
        self.with_iscsi(
            false,
            || Err(target_not_found(iqn)),
            |fe| Ok(fe.deny_initiator(iqn, initiator)?),
        )
    }

    /// Sets (or with `None` clears) a target's CHAP secrets.
    pub fn iscsi_set_chap(&self, iqn: &str, chap: Option<ChapConfig>) -> Result<(), ApiError> {
        self.with_iscsi(
            false,
            || Err(target_not_found(iqn)),
            |fe| Ok(fe.set_chap(iqn, chap)?),
        )
    }

    /// The exported target nodes, secrets included (the RPC layer withholds them).
    pub fn iscsi_targets(&self) -> Vec<TargetNodeConfig> {
        self.iscsi_slot()
            .fe
            .as_ref()
            .map(|f| f.targets())
            .unwrap_or_default()
    }

    /// The sessions with their counters.
    pub fn iscsi_sessions(&self) -> Vec<SessionInfo> {
        self.iscsi_slot()
            .fe
            .as_ref()
            .map(|f| f.sessions())
            .unwrap_or_default()
    }

    /// Refuses to delete `name` (a `kind`) while a LUN maps it.
    fn check_lun_users(
        slot: &IscsiSlot,
        kind: &'static str,
        name: &str,
    ) -> Result<(), TargetError> {
        let users = slot
            .fe
            .as_ref()
            .map(|f| f.lun_users(name))
            .unwrap_or_default();
        if users.is_empty() {
            return Ok(());
        }
        Err(TargetError::InUse {
            kind,
            name: name.to_string(),
            user: users.join(", "),
        })
    }

    /// Deletes a volume no LUN or namespace maps (see [`Target::delete_volume`]).
    pub fn delete_volume(&self, name: &str) -> Result<(), TargetError> {
        // Held across the delete, so no LUN can map the volume meanwhile.
        let slot = self.iscsi_slot();
        Self::check_lun_users(&slot, "volume", name)?;
        Self::check_ns_users(self.nvmf_users(name), "volume", name)?;
        self.target.delete_volume(name)
    }

    /// Refuses to delete `name` (a `kind`) while an NVMe-oF namespace maps it.
    fn check_ns_users(
        users: Vec<String>,
        kind: &'static str,
        name: &str,
    ) -> Result<(), TargetError> {
        if users.is_empty() {
            return Ok(());
        }
        Err(TargetError::InUse {
            kind,
            name: name.to_string(),
            user: users.join(", "),
        })
    }

    /// What the target is.
    pub fn info(&self) -> TargetInfo {
        let r = self.target.reactors();
        TargetInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            reactors: r.len() as u32,
            cores: r.cores().to_vec(),
            poll_mode: self.poll_mode,
            hugepages: self.target.pool().hugepages(),
            socket: self
                .socket
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            pid: std::process::id(),
            detach_policy: self.target.detach_policy(),
        }
    }

    /// Creates and registers a bdev.
    pub fn create_bdev(&self, req: &BdevRequest) -> Result<BdevInfo, TargetError> {
        let obj = bdev_obj(&req.name);
        let bad = |reason: String| TargetError::invalid(obj.clone(), reason);
        let block_size = req.block_size.filter(|&b| b != 0);
        if let Some(bs) = block_size {
            if !bs.is_power_of_two() || !(512..=MAX_BLOCK_SIZE_BYTES).contains(&bs) {
                return Err(bad(format!(
                    "block size {bs} is not a power of two in 512..={MAX_BLOCK_SIZE_BYTES}"
                )));
            }
        }
        let bs = block_size.unwrap_or(DEFAULT_BLOCK_SIZE_BYTES);
        let sized = |what: &str| -> Result<(), TargetError> {
            if req.size_bytes == 0 || !req.size_bytes.is_multiple_of(bs as u64) {
                return Err(bad(format!(
                    "a {what} bdev needs a size that is a positive multiple of the block size {bs}, got {}",
                    req.size_bytes
                )));
            }
            Ok(())
        };
        let mut error_bdev = None;
        let bdev: Arc<dyn Bdev> = match req.kind {
            BdevKind::Null => {
                sized("null")?;
                NullBdev::new(&req.name, req.size_bytes, bs)
            }
            BdevKind::Malloc => {
                sized("malloc")?;
                MallocBdev::new(&req.name, req.size_bytes, bs).map_err(|reason| {
                    TargetError::Io {
                        object: obj.clone(),
                        reason,
                    }
                })?
            }
            BdevKind::Uring => {
                let Some(path) = req.path.as_ref().filter(|p| !p.as_os_str().is_empty()) else {
                    return Err(bad("a uring bdev needs a path".into()));
                };
                let opts = UringOpts {
                    block_size_bytes: block_size,
                    buffered: req.buffered,
                };
                UringBdev::open(&req.name, path, &opts).map_err(|reason| TargetError::Io {
                    object: obj.clone(),
                    reason,
                })?
            }
            BdevKind::Error => {
                let Some(inner) = req.inner.as_deref().filter(|i| !i.is_empty()) else {
                    return Err(bad("an error bdev needs an inner bdev".into()));
                };
                let e = ErrorBdev::new(&req.name, self.target.bdev(inner)?);
                error_bdev = Some(Arc::clone(&e));
                e
            }
        };
        // Hold the error map across registration so a concurrent delete of the same
        // name cannot interleave.
        let mut errors = self.errors();
        self.target.add_bdev(Arc::clone(&bdev))?;
        if let Some(e) = error_bdev {
            errors.insert(req.name.clone(), e);
        }
        Ok(bdev.info())
    }

    /// Deletes a bdev that neither a volume, an `error` bdev nor an iSCSI LUN uses. Volumes are
    /// deleted with [`Target::delete_volume`].
    pub fn delete_bdev(&self, name: &str) -> Result<(), TargetError> {
        if self.target.volume_spec(name).is_ok() {
            return Err(TargetError::invalid(
                bdev_obj(name),
                "it is a volume; delete it with deleteVolume",
            ));
        }
        // Held across the delete, so no LUN can map the bdev meanwhile.
        let slot = self.iscsi_slot();
        Self::check_lun_users(&slot, "bdev", name)?;
        Self::check_ns_users(self.nvmf_users(name), "bdev", name)?;
        let mut errors = self.errors();
        if let Some((user, _)) = errors.iter().find(|(_, e)| e.inner().name() == name) {
            return Err(TargetError::InUse {
                kind: "bdev",
                name: name.to_string(),
                user: format!("error bdev {user}"),
            });
        }
        self.target.delete_bdev(name)?;
        errors.remove(name);
        Ok(())
    }

    /// Injects a fault into the `error` bdev `name`; returns its injection state.
    pub fn inject_error(&self, name: &str, inj: Injection) -> Result<String, TargetError> {
        let registered = self.target.bdev(name)?;
        let e = self
            .errors()
            .get(name)
            .cloned()
            .filter(|e| std::ptr::addr_eq(Arc::as_ptr(e), Arc::as_ptr(&registered)))
            .ok_or_else(|| {
                TargetError::invalid(
                    bdev_obj(name),
                    format!(
                        "it is a {} bdev; faults are injected into error bdevs",
                        registered.info().kind
                    ),
                )
            })?;
        let i = e.injection();
        match inj {
            Injection::Fail { on, errno, count } => i.fail(on, errno, count),
            Injection::LatencyUs(us) => i.set_latency_us(us),
            Injection::ClearFailures => i.clear_failures(),
            Injection::Clear => i.clear(),
        }
        let detail = i.describe();
        log::info!("bdev {name}: injection now: {detail}");
        Ok(detail)
    }

    /// Runs one diagnostic I/O (a bdev or a volume). A failed I/O is a result
    /// (`status` = errno), not an error.
    pub fn io(&self, io: DiagIo) -> Result<IoResult, TargetError> {
        let DiagIo {
            bdev,
            kind,
            offset_bytes,
            len_bytes,
            data,
            reactor,
            timeout,
        } = io;
        let bdev = bdev.as_str();
        let obj = bdev_obj(bdev);
        let b = self.target.bdev(bdev)?;
        if len_bytes > MAX_IO_BYTES {
            return Err(TargetError::invalid(
                obj,
                format!("diagnostic I/O of {len_bytes} bytes is above the limit of {MAX_IO_BYTES}"),
            ));
        }
        if kind == IoKind::Write && data.len() as u64 != len_bytes {
            return Err(TargetError::invalid(
                obj,
                format!(
                    "write of {len_bytes} bytes carries {} bytes of data",
                    data.len()
                ),
            ));
        }
        if kind == IoKind::Reset {
            return Err(TargetError::invalid(obj, "reset is not a diagnostic I/O"));
        }
        let handles = self.target.reactors().handles();
        let Some(h) = handles.get(reactor) else {
            return Err(TargetError::invalid(
                obj,
                format!("no reactor {reactor} (the target has {})", handles.len()),
            ));
        };
        let timeout = if timeout.is_zero() {
            MAX_IO_TIMEOUT
        } else {
            timeout.min(MAX_IO_TIMEOUT)
        };
        let req = match kind {
            IoKind::Write => IoReq::write(offset_bytes, data),
            IoKind::Read => IoReq::read(offset_bytes, len_bytes),
            k => IoReq::other(k, offset_bytes, len_bytes),
        }
        .heap();
        let mut out = run_ios(h, &b, vec![req], timeout).map_err(|reason| {
            // A completion that never came is a timeout; the rest are setup failures.
            if reason.contains("did not all complete") {
                TargetError::Timeout {
                    object: obj.clone(),
                    reason,
                }
            } else {
                TargetError::invalid(obj.clone(), reason)
            }
        })?;
        let Some(o) = out.pop() else {
            return Err(TargetError::invalid(obj, "the I/O returned no result"));
        };
        let status = match o.status {
            IoStatus::Success => 0,
            IoStatus::Failed(errno) => errno,
        };
        Ok(IoResult {
            status,
            data: if kind == IoKind::Read && status == 0 {
                o.data
            } else {
                Vec::new()
            },
            latency_us: o.latency.as_micros().min(u64::MAX as u128) as u64,
        })
    }
}

/// The answer of a call that starts the frontend when none runs: never reached.
fn unreachable_frontend<T>() -> Result<T, ApiError> {
    Err(ApiError {
        code: ErrorCode::Invalid,
        object: FRONTEND.into(),
        reason: "not running".into(),
    })
}
