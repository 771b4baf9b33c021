//! The private-group lease renewer: a thread that renews the data plane's
//! private-group lease (`renewPrivateLeaseUntil`) only while this node finds itself
//! the owner of its private groups on their disks.
//!
//! Why: `dg import DG --clear-owner` lets another node take over a private group
//! whose owner is not a member of the view (docs/OPERATIONS.md, "A private group
//! whose node is gone"). An owner that is frozen (SIGSTOP, a VM pause) or cut off,
//! not dead, must not go on writing the group once the importer serves it. The
//! importer rewrites the group's labels with itself as owner and then waits out a
//! lease ([`takeover_wait_ms`]) before it serves the group; this thread renews the
//! lease until a deadline counted from *before* it read the labels, so:
//! - an owner that read its labels before the importer's write holds a deadline
//!   earlier than the importer's wait ends;
//! - an owner that reads them after sees the other owner and renews no more; the
//!   lease it holds runs out within one lease;
//! - an owner frozen at any point finds its deadline passed when it runs again: its
//!   data plane checks the host's boot clock, so a frozen data plane fences too.
//!
//! Once a group is found taken over, no private volume of this node is renewed
//! (the lease is one for the node): the error names the group and its new owner,
//! `cluster status` lists it, and the main loop drops the group from this node
//! (`daemon::taken`: the data plane stops serving it, its disks are not written);
//! from then on the remaining groups are checked alone and the lease is renewed for
//! them again. A group none of whose labels
//! can be read is not held against the others (its volumes cannot reach its disks
//! either). Without private groups the lease is renewed all the same, so one
//! created later is served at once.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use plexd_target_api::KernelClient;

/// A private group whose ownership the thread checks: its id and the paths of its
/// disks on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owned {
    /// Disk group name.
    pub name: String,
    /// Disk group id.
    pub id: String,
    /// Its disks' paths here.
    pub paths: Vec<PathBuf>,
}

#[derive(Default)]
struct State {
    client: Option<Arc<KernelClient>>,
    groups: Vec<Owned>,
    /// Groups found owned by another (name → that owner), as last checked.
    taken: BTreeMap<String, String>,
    stop: bool,
    /// A clean stop revoked the lease: no renewal grants it again.
    sealed: bool,
}

type Shared = super::lease::RenewerShared<State>;

/// The handle on the renewer thread.
pub struct OwnerLease {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// The private groups `groups` as the thread checks them, each disk at its path on
/// this node (`files`: the disk paths it scans).
pub fn owned(groups: &[crate::model::DiskGroupConfig], files: &[PathBuf]) -> Vec<Owned> {
    if groups.is_empty() {
        return Vec::new();
    }
    let local = super::disks::LocalDisks::scan(files);
    groups
        .iter()
        .map(|g| Owned {
            name: g.name.clone(),
            id: g.id.clone(),
            paths: g.disks.iter().map(|d| local.path_of(d)).collect(),
        })
        .collect()
}

/// What a node taking a group over waits after writing its labels, before it serves
/// the group: the longest the old owner's data plane can still serve it (its lease,
/// the clock drift allowance, the margin: as for a lost node's shared lease).
pub fn takeover_wait_ms(cluster: &super::config::ClusterSection) -> u64 {
    cluster.lease_ms + crate::core::drift_allowance_ms(cluster.lease_ms) + cluster.lease_margin_ms
}

impl OwnerLease {
    /// Starts the thread of node `node`, whose private groups' labels name it by
    /// `owner_id`, renewing `lease_ms` at a time on `client` (every quarter lease).
    pub fn start(
        node: &str,
        owner_id: &str,
        client: Arc<KernelClient>,
        lease_ms: u64,
    ) -> OwnerLease {
        let shared = Shared::new(State {
            client: Some(client),
            ..State::default()
        });
        let s = Arc::clone(&shared);
        let (name, owner) = (node.to_string(), owner_id.to_string());
        let thread = std::thread::Builder::new()
            .name("owner-lease".into())
            .spawn(move || run(&name, &owner, &s, lease_ms))
            .map_err(|e| {
                log::error!(
                    "node {node}: cannot start the private-group lease thread: {e}; private \
                     volumes are served without it"
                )
            })
            .ok();
        OwnerLease { shared, thread }
    }

    /// The private groups to check from the next round on (the driver's, after
    /// each change).
    pub fn set_groups(&self, groups: Vec<Owned>) {
        let mut st = self.shared.lock();
        st.taken
            .retain(|name, _| groups.iter().any(|g| &g.name == name));
        st.groups = groups;
    }

    /// The connection to renew on from the next round on (none while the data
    /// plane is lost).
    pub fn set_client(&self, client: Option<Arc<KernelClient>>) {
        self.shared.lock().client = client;
    }

    /// The new owner of private group `dg` if its disks name another.
    pub fn taken(&self, dg: &str) -> Option<String> {
        self.shared.lock().taken.get(dg).cloned()
    }

    /// Every private group found owned by another: (group, its owner).
    pub fn taken_all(&self) -> Vec<(String, String)> {
        self.shared
            .lock()
            .taken
            .iter()
            .map(|(g, o)| (g.clone(), o.clone()))
            .collect()
    }

    /// A clean stop: revokes the private-group lease after any renewal in flight
    /// and renews it no more.
    pub fn revoke_for_stop(&self) -> Result<(), String> {
        self.shared.revoke_sealed(
            "private-group lease",
            |st| {
                st.sealed = true;
                st.client.clone()
            },
            |c| c.renew_private_lease_until(0),
        )
    }
}

impl Drop for OwnerLease {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_one();
        // A renewal in flight ends within the client's call timeout; do not wait.
        drop(self.thread.take());
    }
}

/// What a group's labels say of its owner.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// A label names `owner_id` and none another.
    Ours,
    /// A label of the group names this other owner (empty: deported).
    Taken(String),
    /// No label of the group could be read.
    Unreadable,
}

/// Reads the labels of `g`'s disks (each read goes to the disk, not a cache:
/// [`crate::ondisk::read_label`]).
fn check(g: &Owned, owner_id: &str) -> Verdict {
    let mut ours = false;
    for p in &g.paths {
        let Ok(label) = crate::ondisk::read_label(p) else {
            continue;
        };
        match label.disk_group {
            Some(d) if d.id == g.id && d.owner_id != owner_id => return Verdict::Taken(d.owner_id),
            Some(d) if d.id == g.id => ours = true,
            // Left the group (a disk removed from it): not this group's any more.
            _ => {}
        }
    }
    if ours {
        Verdict::Ours
    } else {
        Verdict::Unreadable
    }
}

fn run(node: &str, owner_id: &str, shared: &Shared, lease_ms: u64) {
    let period = Duration::from_millis((lease_ms / 4).max(20));
    let mut held = false;
    // A connection whose data plane predates renewPrivateLeaseUntil (told once).
    let mut old_target: Option<Arc<KernelClient>> = None;
    // The first round at once: a restart may find the lease already run out.
    let mut first = true;
    loop {
        let (groups, client) = {
            let st = shared.lock();
            let wait = if std::mem::take(&mut first) {
                Duration::ZERO
            } else {
                period
            };
            let st = shared
                .wake
                .wait_timeout_while(st, wait, |s| !s.stop)
                .unwrap_or_else(|p| p.into_inner())
                .0;
            if st.stop {
                return;
            }
            (st.groups.clone(), st.client.clone())
        };
        let Some(client) =
            client.filter(|c| !old_target.as_ref().is_some_and(|o| Arc::ptr_eq(o, c)))
        else {
            continue;
        };
        // The clock before the labels: the deadline never outlasts what they showed.
        let Some(boot_ns) = super::clock::boottime_ns() else {
            log::error!(
                "node {node}: cannot read CLOCK_BOOTTIME: the private-group lease is not renewed"
            );
            continue;
        };
        let mut taken = BTreeMap::new();
        for g in &groups {
            if let Verdict::Taken(owner) = check(g, owner_id) {
                taken.insert(g.name.clone(), owner);
            }
        }
        let _calls = shared.calls();
        {
            let mut st = shared.lock();
            for (g, owner) in &taken {
                if st.taken.get(g) != Some(owner) {
                    log::error!(
                        "node {node}: private disk group {g}: its disks now name {} as owner \
                         (taken over with `dg import --clear-owner`?): this node stops serving \
                         its private volumes within {lease_ms} ms, until the group is dropped \
                         here",
                        if owner.is_empty() {
                            "no one (deported)"
                        } else {
                            owner
                        }
                    );
                }
            }
            st.taken = taken;
            if st.sealed || !st.taken.is_empty() {
                held = false;
                continue;
            }
        }
        let until = boot_ns.saturating_add(lease_ms.saturating_mul(1_000_000));
        match client.renew_private_lease_until(until) {
            Ok(was_expired) => {
                if was_expired || !held {
                    log::info!(
                        "node {node}: private-group lease granted ({lease_ms} ms{}): private \
                         volumes served",
                        if was_expired {
                            ", after it had run out"
                        } else {
                            ""
                        }
                    );
                }
                held = true;
            }
            Err(e) if super::kernel::unimplemented(&e) => {
                log::warn!(
                    "node {node}: plexd-target at {} predates renewPrivateLeaseUntil: its private \
                     volumes are served without a lease until it is upgraded",
                    client.path()
                );
                // Not asked again on this connection (a reconnection asks anew).
                old_target = Some(client);
            }
            Err(e) => log::warn!("node {node}: cannot renew the private-group lease: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label_for(dir: &std::path::Path, name: &str, dg: Option<(&str, &str)>) -> PathBuf {
        let path = dir.join(name);
        crate::ondisk::test_disk(&path, name, dg);
        path
    }

    #[test]
    fn a_group_is_ours_taken_or_unreadable_as_its_labels_say() {
        let dir = tempfile_dir();
        let a = label_for(&dir, "d0", Some(("g1", "a")));
        let b = label_for(&dir, "d1", Some(("g1", "a")));
        let g = Owned {
            name: "dg".into(),
            id: "g1".into(),
            paths: vec![a.clone(), b.clone()],
        };
        assert_eq!(check(&g, "a"), Verdict::Ours);
        assert_eq!(check(&g, "b"), Verdict::Taken("a".into()));
        // One disk relabelled by an importer: taken, whatever the other says.
        label_for(&dir, "d1", Some(("g1", "b")));
        assert_eq!(check(&g, "a"), Verdict::Taken("b".into()));
        // A disk that left the group does not count; none readable: unreadable.
        label_for(&dir, "d1", None);
        assert_eq!(check(&g, "a"), Verdict::Ours);
        let gone = Owned {
            paths: vec![dir.join("missing")],
            ..g
        };
        assert_eq!(check(&gone, "a"), Verdict::Unreadable);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("plexd-owner-lease-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
