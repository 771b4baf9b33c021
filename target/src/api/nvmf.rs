//! The kernel interface's NVMe-oF/TCP calls: the service operations (the frontend
//! started from `[nvmf]` or by the first `nvmfAddListener` / `nvmfAddSubsystem`)
//! and the conversions to and from the schema's `Nvmf*` structs.

use std::net::SocketAddr;
use std::sync::MutexGuard;

use super::service::KernelService;
use super::{ApiError, ErrorCode};
use crate::frontend::nvmf::{
    AnaState, ControllerInfo, NamespaceConfig, NvmfConfig, NvmfFrontend, SubsystemConfig,
};
use crate::target::TargetError;

const FRONTEND: &str = "nvmf frontend";

/// The NVMe-oF frontend of a service and whether it may still start one.
#[derive(Default)]
pub(crate) struct NvmfSlot {
    fe: Option<NvmfFrontend>,
    stopped: bool,
    /// `pr_dir` of a frontend the API starts.
    pr_dir: Option<std::path::PathBuf>,
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

    /// The reservation directory (`NvmfConfig::pr_dir`) of a frontend the API
    /// starts when none runs.
    pub fn set_nvmf_pr_dir(&self, dir: Option<std::path::PathBuf>) {
        self.nvmf_slot().pr_dir = dir;
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
            let cfg = NvmfConfig {
                pr_dir: slot.pr_dir.clone(),
                ..NvmfConfig::default()
            };
            slot.fe = Some(NvmfFrontend::new(self.target(), &cfg)?);
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
            pr_dir: slot.pr_dir.clone(),
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

    /// Gives the NVMe namespaces of shared volume `volume` the cluster's
    /// committed reservations (as `setReservations` does for iSCSI LUNs), with
    /// what the change that made them does on this node (notices, a preempt
    /// and abort's aborts: `NvmfFrontend::set_reservations`); the caller waits
    /// for the aborts without holding the frontend. None without a frontend.
    pub(crate) fn nvmf_set_reservations(
        &self,
        volume: &str,
        state: &crate::frontend::scsi::pr::PrState,
    ) -> Option<crate::frontend::nvmf::ResvApplied> {
        self.nvmf_slot()
            .fe
            .as_ref()
            .map(|fe| fe.set_reservations(volume, state))
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
