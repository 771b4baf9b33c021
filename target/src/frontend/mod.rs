//! Frontends: the protocols hosts use to reach bdevs and volumes.
//!
//! - [`iscsi`]: an iSCSI target (RFC 7143, SBC-3 disks over SPC-4), each
//!   connection pinned to one reactor, connections spread across reactors.
//! - [`scsi`]: the SCSI layer (CDB decode, sense, reservations, ALUA, the LUN
//!   object) that SCSI transports share; it knows nothing of iSCSI.
//! - [`nvmf`]: an NVMe over Fabrics target, TCP transport (NVMe/TCP): each queue
//!   pair pinned to one reactor, queue pairs spread across reactors.
//! - `pr_file`: where standalone LUNs and namespaces keep their reservations.
//! - `preempt`: a preempt and abort's aborts across a frontend's reactors and
//!   the wait for the aborted commands to leave the bdevs (both frontends).
//! - `transport`: the TCP pieces both use (the listener, the frontend's id and
//!   addresses, the connection's socket, output queue, receive buffer, polls,
//!   the per-reactor registry and its flush-and-tick poller, stopping).
//!
//! A frontend never owns block devices: it maps its own names (LUNs) to bdevs
//! registered in the [`crate::Target`] and submits I/O through their reactor-local
//! channels, like any other bdev user.

pub mod iscsi;
pub mod nvmf;
pub(crate) mod pr_file;
pub(crate) mod preempt;
pub mod scsi;
pub(crate) mod transport;

use std::sync::{Arc, Weak};

use crate::bdev::{Bdev, BdevDesc, BdevEventFn};
use crate::error::TargetError;
use crate::lease::{Lease, LeaseWatcher};
use crate::reactor::ReactorSet;
use crate::services::Services;
use crate::volume::{VolumeSpec, Volumes};
use scsi::pr_cluster::PrBroker;

/// What a frontend uses of the target it serves: the reactors and the bdev
/// registry ([`Services`]), the volumes (is a bdev a shared volume), the lease
/// (watchers) and the cluster's reservations. The [`crate::Target`] (the
/// composition root, above the frontends) makes one
/// ([`crate::Target::frontend_env`], or `From<&Arc<Target>>`, so a frontend
/// starts on `&target`); the frontends never see the `Target` itself.
#[derive(Clone)]
pub struct FrontendEnv {
    pub(crate) svc: Arc<Services>,
    pub(crate) volumes: Arc<Volumes>,
    pub(crate) lease: Arc<Lease>,
    pub(crate) pr: Arc<PrBroker>,
}

impl FrontendEnv {
    /// The reactors.
    pub fn reactors(&self) -> &ReactorSet {
        self.svc.reactors()
    }

    /// The bdev named `name`.
    pub fn bdev(&self, name: &str) -> Result<Arc<dyn Bdev>, TargetError> {
        self.svc.bdev(name)
    }

    /// Opens the bdev named `name` with an event callback (resize, removal).
    pub fn open_bdev(&self, name: &str, cb: BdevEventFn) -> Result<BdevDesc, TargetError> {
        self.svc.open_bdev(name, cb)
    }

    /// The committed layout of volume `name`.
    pub fn volume_spec(&self, name: &str) -> Result<VolumeSpec, TargetError> {
        self.volumes.spec(name)
    }

    /// The reservations of shared volumes kept by the cluster.
    pub fn pr_broker(&self) -> &Arc<PrBroker> {
        &self.pr
    }

    /// Registers a lease watcher ([`crate::lease::LeaseWatcher`]).
    pub fn watch_lease(&self, w: Weak<LeaseWatcher>) -> Result<(), TargetError> {
        self.lease.watch(w)
    }
}
