//! The kernel interface's NVMe-oF/TCP calls: the service operations (the frontend
//! started from `[nvmf]` or by the first `nvmfAddListener` / `nvmfAddSubsystem`)
//! and the conversions to and from the schema's `Nvmf*` structs.

use std::net::SocketAddr;
use std::sync::MutexGuard;

use capnp::Result;
use plexd_proto::kernel_capnp as k;

use super::service::KernelService;
use super::{ApiError, ErrorCode};
use crate::frontend::nvmf::{
    AnaState, ControllerInfo, NamespaceConfig, NvmfConfig, NvmfFrontend, SubsystemConfig,
};
use crate::target::TargetError;

/// Most namespaces or hosts read from one `NvmfSubsystem`.
const MAX_LIST: u32 = 1024;

const FRONTEND: &str = "nvmf frontend";

/// The NVMe-oF frontend of a service and whether it may still start one.
#[derive(Default)]
pub(crate) struct NvmfSlot {
    fe: Option<NvmfFrontend>,
    stopped: bool,
}

fn subsystem_not_found(nqn: &str) -> ApiError {
    ApiError::from(TargetError::NotFound {
        kind: "nvmf subsystem",
        name: nqn.to_string(),
    })
}

fn not_running<T>() -> std::result::Result<T, ApiError> {
    Err(ApiError {
        code: ErrorCode::Invalid,
        object: FRONTEND.into(),
        reason: "not running".into(),
    })
}

impl KernelService {
    fn nvmf_slot(&self) -> MutexGuard<'_, NvmfSlot> {
        self.nvmf.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands the service the NVMe-oF frontend started from the configuration file.
    pub fn set_nvmf(&self, fe: Option<NvmfFrontend>) {
        self.nvmf_slot().fe = fe;
    }

    /// Stops the NVMe-oF frontend (listeners and connections closed); later calls
    /// that would start one fail. Returns whether one was running.
    pub fn stop_nvmf(&self) -> bool {
        let fe = {
            let mut slot = self.nvmf_slot();
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

    /// The namespaces mapping `name`, for deletions to refuse.
    pub(crate) fn nvmf_users(&self, name: &str) -> Vec<String> {
        self.nvmf_slot()
            .fe
            .as_ref()
            .map(|f| f.namespace_users(name))
            .unwrap_or_default()
    }

    fn with_nvmf<T>(
        &self,
        start: bool,
        none: impl FnOnce() -> std::result::Result<T, ApiError>,
        f: impl FnOnce(&mut NvmfFrontend) -> std::result::Result<T, ApiError>,
    ) -> std::result::Result<T, ApiError> {
        let mut slot = self.nvmf_slot();
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
            slot.fe = Some(NvmfFrontend::new(self.target(), &NvmfConfig::default())?);
            log::info!("nvmf: frontend started by the kernel interface");
        }
        match slot.fe.as_mut() {
            Some(fe) => f(fe),
            None => none(),
        }
    }

    /// Starts the frontend with controller ids `cntlid_range` and ANA group
    /// `ana_group` if none runs; a running one must have these settings (they are
    /// fixed while it runs).
    pub fn nvmf_start(
        &self,
        cntlid_range: (u16, u16),
        ana_group: u32,
    ) -> std::result::Result<(), ApiError> {
        let mut slot = self.nvmf_slot();
        if let Some(fe) = slot.fe.as_ref() {
            let (have_range, have_group) = (fe.cntlid_range(), fe.ana().0);
            if (have_range, have_group) == (cntlid_range, ana_group) {
                return Ok(());
            }
            return Err(ApiError {
                code: ErrorCode::Invalid,
                object: FRONTEND.into(),
                reason: format!(
                    "runs with controller ids {}..={} and ANA group {have_group}, not {}..={} and {ana_group}; these are fixed while it runs (restart plexd-target, or change its [nvmf] section)",
                    have_range.0, have_range.1, cntlid_range.0, cntlid_range.1
                ),
            });
        }
        if slot.stopped {
            return Err(ApiError {
                code: ErrorCode::Invalid,
                object: FRONTEND.into(),
                reason: "the target is stopping".into(),
            });
        }
        let cfg = NvmfConfig {
            cntlid_range: Some(cntlid_range),
            ana_group: Some(ana_group),
            ..NvmfConfig::default()
        };
        slot.fe = Some(NvmfFrontend::new(self.target(), &cfg)?);
        log::info!(
            "nvmf: frontend started by the kernel interface (controller ids {}..={}, ANA group {ana_group})",
            cntlid_range.0,
            cntlid_range.1
        );
        Ok(())
    }

    /// Listens on `addr` (port 0 picks one), starting the frontend if none runs.
    pub fn nvmf_add_listener(&self, addr: &str) -> std::result::Result<SocketAddr, ApiError> {
        self.with_nvmf(true, not_running, |fe| Ok(fe.add_listener(addr)?))
    }

    /// Stops listening on `addr`; established connections stay.
    pub fn nvmf_remove_listener(&self, addr: &str) -> std::result::Result<(), ApiError> {
        let a: SocketAddr = addr.parse().map_err(|e| ApiError {
            code: ErrorCode::Invalid,
            object: format!("nvmf listener {addr}"),
            reason: format!("{e}"),
        })?;
        let none = || {
            Err(ApiError::from(TargetError::NotFound {
                kind: "nvmf listener",
                name: a.to_string(),
            }))
        };
        self.with_nvmf(false, none, |fe| Ok(fe.remove_listener(a)?))
    }

    /// Exports a subsystem, starting the frontend (no listener) if none runs.
    pub fn nvmf_add_subsystem(&self, s: &SubsystemConfig) -> std::result::Result<(), ApiError> {
        self.with_nvmf(true, not_running, |fe| Ok(fe.add_subsystem(s)?))
    }

    /// Removes a subsystem and drops its controllers.
    pub fn nvmf_remove_subsystem(&self, nqn: &str) -> std::result::Result<(), ApiError> {
        self.with_nvmf(
            false,
            || Err(subsystem_not_found(nqn)),
            |fe| Ok(fe.remove_subsystem(nqn)?),
        )
    }

    /// Adds a namespace to a subsystem.
    pub fn nvmf_add_namespace(
        &self,
        nqn: &str,
        n: &NamespaceConfig,
    ) -> std::result::Result<(), ApiError> {
        self.with_nvmf(
            false,
            || Err(subsystem_not_found(nqn)),
            |fe| Ok(fe.add_namespace(nqn, n)?),
        )
    }

    /// Removes a namespace from a subsystem.
    pub fn nvmf_remove_namespace(&self, nqn: &str, nsid: u32) -> std::result::Result<(), ApiError> {
        self.with_nvmf(
            false,
            || Err(subsystem_not_found(nqn)),
            |fe| Ok(fe.remove_namespace(nqn, nsid)?),
        )
    }

    /// Sets this node's ANA group state; returns the group id.
    pub fn nvmf_set_ana(&self, state: AnaState) -> std::result::Result<u32, ApiError> {
        self.with_nvmf(false, not_running, |fe| {
            fe.set_ana(state);
            Ok(fe.ana().0)
        })
    }

    /// The exported subsystems and the listeners.
    pub fn nvmf_subsystems(&self) -> (Vec<SubsystemConfig>, Vec<SocketAddr>) {
        self.nvmf_slot()
            .fe
            .as_ref()
            .map(|f| (f.subsystems(), f.listeners()))
            .unwrap_or_default()
    }

    /// The controllers with their queues and counters.
    pub fn nvmf_controllers(&self) -> Vec<ControllerInfo> {
        self.nvmf_slot()
            .fe
            .as_ref()
            .map(|f| f.controllers())
            .unwrap_or_default()
    }
}

pub(crate) fn set_namespace(mut b: k::nvmf_namespace::Builder<'_>, n: &NamespaceConfig) {
    b.set_nsid(n.nsid);
    b.set_bdev(n.bdev.as_str());
    b.set_identity(n.identity.as_deref().unwrap_or(""));
    b.set_read_only(n.read_only);
}

pub(crate) fn read_namespace(r: k::nvmf_namespace::Reader<'_>) -> Result<NamespaceConfig> {
    let identity = r.get_identity()?.to_string()?;
    Ok(NamespaceConfig {
        nsid: r.get_nsid(),
        bdev: r.get_bdev()?.to_string()?,
        identity: (!identity.is_empty()).then_some(identity),
        read_only: r.get_read_only(),
    })
}

pub(crate) fn set_subsystem(mut b: k::nvmf_subsystem::Builder<'_>, s: &SubsystemConfig) {
    b.set_nqn(s.nqn.as_str());
    b.set_serial(s.serial.as_deref().unwrap_or(""));
    b.set_model(s.model.as_deref().unwrap_or(""));
    b.set_allow_any(s.allow_any);
    {
        let mut h = b.reborrow().init_hosts(s.hosts.len() as u32);
        for (i, x) in s.hosts.iter().enumerate() {
            h.set(i as u32, x.as_str());
        }
    }
    {
        let mut p = b
            .reborrow()
            .init_peer_listeners(s.peer_listeners.len() as u32);
        for (i, x) in s.peer_listeners.iter().enumerate() {
            p.set(i as u32, x.as_str());
        }
    }
    let mut l = b.init_namespaces(s.namespaces.len() as u32);
    for (i, n) in s.namespaces.iter().enumerate() {
        set_namespace(l.reborrow().get(i as u32), n);
    }
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub(crate) fn read_subsystem(r: k::nvmf_subsystem::Reader<'_>) -> Result<SubsystemConfig> {
    let hosts = r.get_hosts()?;
    let nss = r.get_namespaces()?;
    let peers = r.get_peer_listeners()?;
    if hosts.len() > MAX_LIST || nss.len() > MAX_LIST || peers.len() > MAX_LIST {
        return Err(capnp::Error::failed(format!(
            "nvmf subsystem: {} hosts, {} namespaces and {} peer listeners, at most {MAX_LIST} each",
            hosts.len(),
            nss.len(),
            peers.len()
        )));
    }
    Ok(SubsystemConfig {
        nqn: r.get_nqn()?.to_string()?,
        serial: opt(r.get_serial()?.to_string()?),
        model: opt(r.get_model()?.to_string()?),
        hosts: hosts
            .iter()
            .map(|h| Ok(h?.to_string()?))
            .collect::<Result<Vec<_>>>()?,
        allow_any: r.get_allow_any(),
        namespaces: nss.iter().map(read_namespace).collect::<Result<Vec<_>>>()?,
        peer_listeners: peers
            .iter()
            .map(|p| Ok(p?.to_string()?))
            .collect::<Result<Vec<_>>>()?,
    })
}

pub(crate) fn ana_to(s: AnaState) -> k::NvmfAnaState {
    match s {
        AnaState::Optimized => k::NvmfAnaState::Optimized,
        AnaState::NonOptimized => k::NvmfAnaState::NonOptimized,
        AnaState::Inaccessible => k::NvmfAnaState::Inaccessible,
    }
}

pub(crate) fn ana_from(s: k::NvmfAnaState) -> AnaState {
    match s {
        k::NvmfAnaState::Optimized => AnaState::Optimized,
        k::NvmfAnaState::NonOptimized => AnaState::NonOptimized,
        k::NvmfAnaState::Inaccessible => AnaState::Inaccessible,
    }
}

pub(crate) fn set_controller(mut b: k::nvmf_controller::Builder<'_>, c: &ControllerInfo) {
    b.set_cntlid(c.cntlid);
    b.set_subnqn(c.subnqn.as_str());
    b.set_hostnqn(c.hostnqn.as_str());
    b.set_peer(c.peer.as_str());
    b.set_reactor(c.reactor as u32);
    b.set_kato_ms(c.kato_ms);
    b.set_commands(c.commands);
    b.set_read_bytes(c.read_bytes);
    b.set_write_bytes(c.write_bytes);
    b.set_errors(c.errors);
    let mut q = b.init_io_queues(c.io_queues.len() as u32);
    for (i, (qid, r)) in c.io_queues.iter().enumerate() {
        let mut e = q.reborrow().get(i as u32);
        e.set_qid(*qid);
        e.set_reactor(*r as u32);
    }
}

pub(crate) fn read_controller(r: k::nvmf_controller::Reader<'_>) -> Result<ControllerInfo> {
    let qs = r.get_io_queues()?;
    Ok(ControllerInfo {
        cntlid: r.get_cntlid(),
        subnqn: r.get_subnqn()?.to_string()?,
        hostnqn: r.get_hostnqn()?.to_string()?,
        peer: r.get_peer()?.to_string()?,
        reactor: r.get_reactor() as usize,
        io_queues: qs
            .iter()
            .map(|q| (q.get_qid(), q.get_reactor() as usize))
            .collect(),
        kato_ms: r.get_kato_ms(),
        commands: r.get_commands(),
        read_bytes: r.get_read_bytes(),
        write_bytes: r.get_write_bytes(),
        errors: r.get_errors(),
    })
}
