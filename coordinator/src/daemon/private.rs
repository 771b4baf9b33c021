//! Private disk-group changes, as the driver carries them out. What runs when is the
//! core's (`core::private`: one at a time, validated against the groups the one
//! before left, none while a shared transaction is in progress or staged here, no
//! disk or group name shared with the cluster's groups); the daemon hands its
//! `PrivateChange` action to the driver as one job (checked, staged in the data
//! plane, written to the group's disks, committed, all on this node) and feeds the
//! answer back as `Event::PrivateDone`.

use super::*;

impl Daemon {
    /// The driver job of the core's `PrivateChange` action.
    pub(super) fn private_job(
        &self,
        request: RequestId,
        change: Change,
        before: ClusterConfig,
        after: ClusterConfig,
        shared: SharedConfig,
    ) -> Job {
        Job::Private {
            group: before.disk_group(change.dg_name()).cloned().map(Box::new),
            request,
            change,
            before,
            after,
            shared: shared.groups,
            txn: incarnation(),
        }
    }
}
