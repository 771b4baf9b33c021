//! The kernel adapter: turns disk group configurations into the data plane's bdevs and
//! volumes through [`KernelClient`].
//!
//! Names in the target: a disk is a `uring` bdev `DG.DISK` on the disk's path (the
//! whole device; subdisk offsets are device offsets, past the private region) that
//! volumes use. With the cluster file's `fault_injection`, the `uring` bdev is
//! `DG.DISK.dev`, wrapped by an `error` bdev `DG.DISK` (a pass-through until a fault
//! is injected, which is how tests fail a plex). A volume is `DG.VOL`. Plex states map ACTIVE→ACTIVE, STALE→STALE, SYNCING→SYNCING,
//! EMPTY→DETACHED.
//!
//! A transaction's kernel phase ([`Kernel::prepare`]) creates the bdevs of new disks,
//! quiesces and stages every existing volume whose layout changes, and remembers the
//! volumes to create and delete; [`Kernel::commit`] applies all of it. A change that
//! only moves plex states (detach after an I/O error, attach) is applied at commit
//! with `setPlexState`, which releases writes held for a failed plex without a
//! quiesce (a quiesce would wait for those held writes).
//!
//! The adapter remembers what the data plane holds after a pruning commit that went
//! through without an error (the target changes volumes and exports only when this
//! adapter asks it to). While it is sure, a kernel phase costs one `prepare` and one
//! `commit` call per changed volume (a phase that only creates volumes: one `info`
//! call, so a lost data plane still fails it): no listing of bdevs and volumes, no
//! `getVolume` of each volume, no iSCSI listing when the exports did not change. Any
//! error, a reconnection, a [`Kernel::load`] or a change of the disk set makes it
//! ask the target again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use plexd_target_api::volume::{PlexState as KPlexState, VolumeSpec};
use plexd_target_api::DetachPolicy;
use plexd_target_api::{BdevRequest, ClientError, ErrorCode, KernelClient};

use crate::model::{disk_bdev, volume_bdev, DiskGroupConfig, PrState, Volume};

/// How long a prepare waits for in-flight I/O of a volume to drain.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a prepare meeting a resync's quiesce is retried.
const PREPARE_RETRIES: u32 = 20;
/// Pause between those retries.
const PREPARE_RETRY_PAUSE: Duration = Duration::from_millis(10);

/// The target's name of the raw device under disk bdev `bdev`.
pub fn raw_bdev(bdev: &str) -> String {
    format!("{bdev}.dev")
}

/// What the data plane should hold for a set of disk groups.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// Disk bdev name → path.
    pub disks: BTreeMap<String, String>,
    /// Volume bdev name → spec (both shared with [`SpecCache`] and the staged phase).
    /// A persistent map: the cache's copy of it, the remembered one and the desired
    /// one share every node a change did not touch, so taking a copy or dropping one
    /// costs what the change touched, not the number of volumes.
    pub volumes: imbl::OrdMap<Arc<str>, Arc<VolumeSpec>>,
    /// iSCSI targets this node serves, by IQN (see [`super::exports`]).
    pub exports: BTreeMap<String, super::exports::ExportSpec>,
    /// Persistent reservations of the shared volumes, by volume bdev name (empty
    /// states left out).
    pub reservations: BTreeMap<String, PrState>,
    /// NVM subsystems this node serves, by NQN.
    pub nvmf: BTreeMap<String, super::exports::NvmfSpec>,
    /// This node's NVMe-oF frontend settings (used when `nvmf` is not empty).
    pub nvmf_node: super::exports::NvmfNode,
}

impl Desired {
    /// The bdevs and volumes of `groups` for node `node` (its id: the volumes get
    /// its section of their dirty region logs).
    pub fn of<'a>(groups: impl IntoIterator<Item = &'a DiskGroupConfig>, node: u32) -> Desired {
        Desired::of_cached(groups, node, &mut SpecCache::default())
    }

    /// [`Desired::of`], projecting only the volumes `specs` has not seen as they
    /// are (the others' specs are taken from it); the volume map is the one `specs`
    /// built last, less the volumes gone and with those projected again.
    pub fn of_cached<'a>(
        groups: impl IntoIterator<Item = &'a DiskGroupConfig>,
        node: u32,
        specs: &mut SpecCache,
    ) -> Desired {
        Desired::of_cached_with_extras(groups, node, specs).0
    }

    /// [`Desired::of_cached`], and the volumes with exports or reservations (what
    /// the exports are gathered from): the cache knows them, so no other volume is
    /// read.
    pub fn of_cached_with_extras<'a>(
        groups: impl IntoIterator<Item = &'a DiskGroupConfig>,
        node: u32,
        specs: &mut SpecCache,
    ) -> (Desired, Vec<(&'a DiskGroupConfig, &'a Volume)>) {
        let mut d = Desired::default();
        let mut extras = Vec::new();
        specs.round += 1;
        for g in groups {
            for disk in &g.disks {
                d.disks
                    .insert(disk_bdev(&g.name, &disk.name), disk.path.clone());
            }
            for i in specs.group_specs(g, node) {
                let v = &*g.volumes[i];
                if g.shared && !v.reservations.is_empty() {
                    d.reservations
                        .insert(volume_bdev(&g.name, &v.name), v.reservations.clone());
                }
                extras.push((g, v));
            }
        }
        d.volumes = specs.volumes();
        (d, extras)
    }
}

/// The data-plane specs of the volumes last projected ([`Desired::of_cached`]), by
/// disk group, in the group's volume order, each with the volume it was projected
/// from: a volume left alone by a change is the same allocation
/// ([`DiskGroupConfig::volumes`]), so a kernel phase projects only the volumes the
/// change replaced. A spec also depends on its group's name, sharing and detach
/// policy and on the node id: a change of those projects the group's volumes again.
/// A projection walks the group's volumes next to the cached ones comparing
/// pointers (no hashing, no name compared but for a volume projected again), so a
/// change that replaces, adds or removes one volume costs one projection.
#[derive(Debug, Default)]
pub struct SpecCache {
    groups: HashMap<String, CachedGroup>,
    /// The current projection (groups of an earlier one are dropped after it).
    round: u64,
    /// Every cached spec by volume bdev name, as the last projection returned them.
    volumes: imbl::OrdMap<Arc<str>, Arc<VolumeSpec>>,
    /// The current projection's specs projected again, and the bdev names of the
    /// cached ones it did not take.
    fresh: Vec<(Arc<str>, Arc<VolumeSpec>)>,
    gone: Vec<Arc<str>>,
}

#[derive(Debug, Default)]
struct CachedGroup {
    /// (shared, detach policy, node) of the projection.
    context: Option<(bool, crate::model::DetachPolicy, u32)>,
    /// Each volume projected, in the group's order (its spec is in
    /// [`SpecCache::volumes`] under `name`).
    specs: Vec<CachedSpec>,
    round: u64,
}

/// A volume [`SpecCache`] projected.
#[derive(Debug)]
struct CachedSpec {
    /// The volume (held, so that its address names it while it is cached).
    volume: Arc<Volume>,
    /// Its bdev name.
    name: Arc<str>,
    /// It has exports or reservations.
    extras: bool,
}

impl SpecCache {
    /// The specs of `g`'s volumes for node `node`, in the group's order: the cached
    /// one of each volume that is still the allocation it was projected from, in
    /// the same context. Returns the positions in `g.volumes` of the volumes with
    /// exports or reservations. A cached entry is moved, not copied: no volume a
    /// change left alone is read or has its counts touched.
    fn group_specs(&mut self, g: &DiskGroupConfig, node: u32) -> Vec<usize> {
        let context = Some((g.shared, g.detach_policy, node));
        let round = self.round;
        let cached = self.groups.entry(g.name.clone()).or_default();
        let old = std::mem::take(&mut cached.specs);
        let (old, unused) = if cached.context == context {
            (old, Vec::new())
        } else {
            (Vec::new(), old)
        };
        let mut old: Vec<Option<CachedSpec>> = old.into_iter().map(Some).collect();
        let mut specs = Vec::with_capacity(g.volumes.len());
        let mut extras = Vec::new();
        // The next cached volume not yet met: a volume in its place, or in the next
        // one (the cached volume there was removed), is the cached one.
        let mut next = 0;
        for (i, v) in g.volumes.iter().enumerate() {
            let same = |i: usize| {
                old.get(i)
                    .and_then(|c| c.as_ref())
                    .is_some_and(|c| Arc::ptr_eq(&c.volume, v))
            };
            let at = if same(next) {
                Some(next)
            } else if same(next + 1) {
                Some(next + 1)
            } else {
                None
            };
            let entry = match at.and_then(|at| Some((at, old[at].take()?))) {
                Some((at, entry)) => {
                    next = at + 1;
                    entry
                }
                None => {
                    // Replaced (its cached self is passed) or new.
                    if old
                        .get(next)
                        .and_then(|c| c.as_ref())
                        .is_some_and(|c| c.volume.name == v.name)
                    {
                        next += 1;
                    }
                    let spec = Arc::new(g.volume_spec(v, node));
                    let name: Arc<str> = Arc::from(spec.name.as_str());
                    self.fresh.push((Arc::clone(&name), Arc::clone(&spec)));
                    CachedSpec {
                        volume: Arc::clone(v),
                        name,
                        extras: !v.exports.is_empty() || !v.reservations.is_empty(),
                    }
                }
            };
            if entry.extras {
                extras.push(i);
            }
            specs.push(entry);
        }
        self.gone.extend(
            unused
                .into_iter()
                .chain(old.into_iter().flatten())
                .map(|c| c.name),
        );
        cached.context = context;
        cached.specs = specs;
        cached.round = round;
        extras
    }

    /// Ends the current projection: drops the groups it did not see and returns
    /// every spec it took by bdev name (the last projection's map, less what is
    /// gone, with what was projected again).
    fn volumes(&mut self) -> imbl::OrdMap<Arc<str>, Arc<VolumeSpec>> {
        let round = self.round;
        let gone = &mut self.gone;
        self.groups.retain(|_, g| {
            if g.round != round {
                gone.extend(g.specs.drain(..).map(|c| c.name));
            }
            g.round == round
        });
        for name in self.gone.drain(..) {
            self.volumes.remove(&name);
        }
        for (name, spec) in self.fresh.drain(..) {
            self.volumes.insert(name, spec);
        }
        self.volumes.clone()
    }
}

/// A staged kernel phase.
#[derive(Debug, Default)]
struct Staged {
    prepared: Vec<String>,
    states: Vec<(String, String, KPlexState)>,
    create: Vec<VolumeSpec>,
    delete: Vec<String>,
    desired: Desired,
    prune: bool,
    /// What the data plane held when this phase was staged, if known (see
    /// [`Kernel::known`]).
    before: Option<Desired>,
}

/// The connection to this node's data plane and what it was last told.
pub struct Kernel {
    /// The driver's calls, run on its own thread (no connection thread to hand
    /// them to: [`KernelClient::connect_inline`]); replaced by [`Kernel::reconnect`].
    client: KernelClient,
    /// A second connection to the same target, opened just before `client`: the
    /// event thread subscribes on it and probes it, the lease threads renew on it
    /// ([`Kernel::shared_client`]). A target that restarts breaks both; one that
    /// restarted between the two connects broke this one, whose loss starts the
    /// reconnection of both.
    events: Arc<KernelClient>,
    staged: Option<Staged>,
    /// What the data plane holds (volumes, disk bdevs, managed exports), as the last
    /// pruning commit without an error left it; `None` when not sure.
    known: Option<Desired>,
    /// Disks are wrapped in `error` bdevs (see the module documentation).
    fault_injection: bool,
    /// The specs of the volumes last projected for this data plane (a desired
    /// state is computed on the driver's thread, next to the kernel phase).
    specs: std::cell::RefCell<SpecCache>,
}

/// Whether `e` means the connection to the data plane is gone (the target died or
/// restarted), as opposed to a refusal or a slow answer.
pub fn connection_lost(e: &ClientError) -> bool {
    matches!(e, ClientError::Connect { .. } | ClientError::Rpc { .. })
}

/// Whether `e` says the data plane does not know the method (an older
/// plexd-target: Cap'n Proto's `Unimplemented`).
pub fn unimplemented(e: &ClientError) -> bool {
    matches!(e, ClientError::Rpc { reason, .. } if reason.starts_with("Unimplemented"))
}

/// Logs an error when the data plane at the other end of `client` runs in another
/// time namespace than this process: the lease deadlines (`CLOCK_BOOTTIME`, which a
/// time namespace offsets) would then be off by the difference of their offsets.
/// Checked only when both share the PID namespace (the target's pid names it here).
fn check_time_namespace(client: &KernelClient) {
    let Ok(info) = client.info() else {
        return; // the next call reports a lost connection
    };
    let ns = |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
    let pid = info.pid.to_string();
    if ns("self", "pid").is_none() || ns("self", "pid") != ns(&pid, "pid") {
        log::debug!(
            "plexd-target (pid {pid}) is not in this PID namespace: its time namespace is not checked"
        );
        return;
    }
    let (mine, theirs) = (ns("self", "time"), ns(&pid, "time"));
    if let (Some(mine), Some(theirs)) = (mine, theirs) {
        if mine != theirs {
            log::error!(
                "plexd-target (pid {pid}, socket {}) runs in time namespace {} and this plexd in {}: \
                 the data-plane lease deadlines (CLOCK_BOOTTIME) are off by the difference of their \
                 offsets; run both in one time namespace (docs/KERNEL_INTERFACE.md)",
                client.path(),
                theirs.display(),
                mine.display()
            );
        }
    }
}

fn err(e: ClientError) -> String {
    e.to_string()
}

impl Kernel {
    /// Connects to the target socket, waiting up to `wait` for it to accept.
    pub fn connect(socket: &std::path::Path, wait: Duration) -> Result<Kernel, String> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match Kernel::open(socket) {
                Ok((client, events)) => {
                    return Ok(Kernel {
                        client,
                        events,
                        staged: None,
                        known: None,
                        fault_injection: false,
                        specs: Default::default(),
                    })
                }
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Wraps disks created from now on in `error` bdevs (the cluster file's
    /// `fault_injection`).
    pub fn set_fault_injection(&mut self, on: bool) {
        self.fault_injection = on;
    }

    /// One attempt to connect to the target at `socket` and set it up as at start:
    /// detach policy `external`, leftover staged layouts dropped. Returns the
    /// driver's connection and the shared one (see [`Kernel::events`]).
    fn open(socket: &std::path::Path) -> Result<(KernelClient, Arc<KernelClient>), String> {
        let events = Arc::new(KernelClient::connect(socket).map_err(err)?);
        let client = KernelClient::connect_inline(socket).map_err(err)?;
        client
            .set_detach_policy(DetachPolicy::External)
            .map_err(|e| format!("cannot set the detach policy: {e}"))?;
        Kernel::drop_leftover_prepares(&client)?;
        check_time_namespace(&client);
        Ok((client, events))
    }

    /// One attempt to connect again to the same socket after the data plane was lost
    /// (it restarted): on success the new connection replaces the old one and the
    /// staged phase (which lived in the old target) is forgotten. The caller loads the
    /// configuration again. Does not wait: a socket that does not answer is an error.
    pub fn reconnect(&mut self) -> Result<(), String> {
        let socket = std::path::PathBuf::from(self.client.path());
        let (client, events) = Kernel::open(&socket)?;
        self.client = client;
        self.events = events;
        self.staged = None;
        self.known = None;
        Ok(())
    }

    /// The shared connection ([`Kernel::events`]): the event thread subscribes on it
    /// and probes it, so a lost data plane is noticed even when no kernel phase runs.
    pub fn shared_client(&self) -> Arc<KernelClient> {
        Arc::clone(&self.events)
    }

    /// A previous coordinator that died in a kernel phase left volumes quiesced with a
    /// staged layout: drop those (resuming their I/O); the cluster's configuration is
    /// loaded after the join.
    fn drop_leftover_prepares(client: &KernelClient) -> Result<(), String> {
        for v in client.list_volumes().map_err(err)? {
            if v.staged || v.state == "QUIESCED" {
                log::warn!(
                    "data plane: volume {} has a staged layout left by a previous plexd; aborting it",
                    v.name
                );
                if let Err(e) = client.abort(&v.name) {
                    log::error!("data plane: volume {}: abort: {e}", v.name);
                }
            }
        }
        Ok(())
    }

    /// The volume specs last projected for this data plane ([`Desired::of_cached`]).
    pub fn specs(&self) -> std::cell::RefMut<'_, SpecCache> {
        self.specs.borrow_mut()
    }

    /// The client, for I/O (resync) and event subscriptions.
    /// Whether the data plane holds disk bdev `bdev`, as far as this client knows
    /// (false when not sure).
    pub fn holds_disk(&self, bdev: &str) -> bool {
        self.known
            .as_ref()
            .is_some_and(|k| k.disks.contains_key(bdev))
    }

    pub fn client(&self) -> &KernelClient {
        &self.client
    }

    /// Whether the data plane behind the connection is gone (one probe call): a
    /// failed kernel phase is then the loss, not a refusal.
    pub fn lost(&self) -> bool {
        self.client.info().is_err_and(|e| connection_lost(&e))
    }

    fn existing(&self) -> Result<(BTreeSet<String>, BTreeSet<String>), String> {
        let bdevs = self.client.list_bdevs().map_err(err)?;
        let volumes: BTreeSet<String> = self
            .client
            .list_volumes()
            .map_err(err)?
            .into_iter()
            .map(|v| v.name)
            .collect();
        let bdevs = bdevs
            .into_iter()
            .map(|b| b.name)
            .filter(|n| !volumes.contains(n))
            .collect();
        Ok((bdevs, volumes))
    }

    fn ensure_disks(&self, desired: &Desired, bdevs: &BTreeSet<String>) -> Result<(), String> {
        for (name, path) in &desired.disks {
            if !self.fault_injection {
                if !bdevs.contains(name) {
                    self.client
                        .create_bdev(&BdevRequest::uring(name, path))
                        .map_err(|e| format!("disk {name} ({path}): {e}"))?;
                }
                continue;
            }
            let raw = raw_bdev(name);
            if !bdevs.contains(&raw) {
                self.client
                    .create_bdev(&BdevRequest::uring(&raw, path))
                    .map_err(|e| format!("disk {name} ({path}): {e}"))?;
            }
            if !bdevs.contains(name) {
                self.client
                    .create_bdev(&BdevRequest::error(name, &raw))
                    .map_err(|e| format!("disk {name} ({path}): {e}"))?;
            }
        }
        Ok(())
    }

    /// Kernel phase: stage `desired` (the whole configuration after the change).
    /// With `prune`, volumes and disk bdevs (named `X.Y`) not in `desired` are
    /// deleted at commit; without it they are left alone.
    pub fn prepare(&mut self, desired: Desired, prune: bool) -> Result<(), String> {
        self.abort();
        // What the target holds: remembered (same disks: nothing to create), or asked.
        let before = self
            .known
            .take()
            .filter(|k| prune && k.disks == desired.disks);
        // The data plane's volumes when not remembered (remembered: `before`'s).
        let listed: Option<BTreeSet<String>> = match &before {
            Some(_) => None,
            None => {
                let (bdevs, volumes) = self.existing()?;
                self.ensure_disks(&desired, &bdevs)?;
                Some(volumes)
            }
        };
        // The remembered volumes, walked next to `desired`'s (both sorted by name):
        // each name is compared once, not looked up; those passed are not desired.
        let mut known = before.as_ref().map(|k| k.volumes.iter().peekable());
        let mut not_desired: Vec<String> = Vec::new();
        let mut staged = Staged::default();
        for (name, spec) in &desired.volumes {
            // A name the two maps share is the same allocation (the desired map is
            // the remembered one changed): compared by pointer, its text is not read.
            let remembered = known.as_mut().and_then(|it| {
                while let Some((k, _)) = it.next_if(|(k, _)| !Arc::ptr_eq(k, name) && *k < name) {
                    not_desired.push(k.to_string());
                }
                it.next_if(|(k, _)| Arc::ptr_eq(k, name) || *k == name)
                    .map(|(_, c)| c)
            });
            let exists = match &listed {
                Some(l) => l.contains(&**name),
                None => remembered.is_some(),
            };
            if !exists {
                staged.create.push((**spec).clone());
                continue;
            }
            let current = match remembered {
                // The spec it was given, or one alike (a volume projected again).
                Some(c) if Arc::ptr_eq(c, spec) || c == spec => continue,
                Some(c) => Arc::clone(c),
                None => Arc::new(self.client.get_volume(name).map_err(err)?.1),
            };
            if current == *spec {
                continue;
            }
            if only_states_differ(&current, spec) {
                for p in &spec.plexes {
                    if current
                        .plexes
                        .iter()
                        .any(|c| c.name == p.name && c.state != p.state)
                    {
                        staged
                            .states
                            .push((name.to_string(), p.name.clone(), p.state));
                    }
                }
                continue;
            }
            if let Err(e) = self.prepare_volume(name, spec) {
                self.staged = Some(staged);
                self.abort();
                return Err(format!("volume {name}: {e}"));
            }
            staged.prepared.push(name.to_string());
        }
        if let Some(it) = known {
            not_desired.extend(it.map(|(k, _)| k.to_string()));
        }
        if before.is_some() && staged.prepared.is_empty() {
            // Nothing was asked of the data plane yet: it must answer (a lost data
            // plane fails the kernel phase). One `info` call, not a listing of every
            // volume: the remembered state was built on this very connection (a
            // reconnection forgets it), so the process that answers holds it.
            self.client.info().map_err(err)?;
        }
        if prune {
            let held = match &listed {
                Some(l) => l
                    .iter()
                    .filter(|v| !desired.volumes.contains_key(v.as_str()))
                    .cloned()
                    .collect(),
                None => not_desired,
            };
            staged.delete = held.into_iter().filter(|v| v.contains('.')).collect();
        }
        staged.prune = prune;
        staged.desired = desired;
        staged.before = before;
        self.staged = Some(staged);
        Ok(())
    }

    /// Prepares one volume; a resync holds a volume quiesced for one chunk at a time,
    /// so a prepare that meets such a quiesce is retried a few times.
    fn prepare_volume(&self, name: &str, spec: &VolumeSpec) -> Result<(), ClientError> {
        let mut tries = 0;
        loop {
            match self.client.prepare(name, spec, DRAIN_TIMEOUT) {
                Ok(_) => return Ok(()),
                // A resync's quiesce of one chunk holds the volume: `inUse`.
                Err(e) if tries < PREPARE_RETRIES && e.code() == Some(ErrorCode::InUse) => {
                    tries += 1;
                    std::thread::sleep(PREPARE_RETRY_PAUSE);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Applies the staged phase. Errors are logged and returned (the change is
    /// committed cluster-wide; a later load repairs the data plane).
    pub fn commit(&mut self) -> Result<(), String> {
        let Some(staged) = self.staged.take() else {
            return Ok(());
        };
        self.known = None;
        // The exports and disks as they were: nothing to list, add or remove.
        let exports_same = staged
            .before
            .as_ref()
            .is_some_and(|k| k.exports == staged.desired.exports);
        let nvmf_same = staged.before.as_ref().is_some_and(|k| {
            k.nvmf == staged.desired.nvmf && k.nvmf_node == staged.desired.nvmf_node
        });
        let disks_same = staged
            .before
            .as_ref()
            .is_some_and(|k| k.disks == staged.desired.disks);
        let mut errors = Vec::new();
        for v in &staged.prepared {
            if let Err(e) = self.client.commit(v) {
                errors.push(format!("volume {v}: commit: {e}"));
            }
        }
        // Activations first, so a detach never meets a volume without an ACTIVE plex.
        let mut states = staged.states;
        states.sort_by_key(|(_, _, s)| *s != KPlexState::Active);
        for (v, p, s) in &states {
            if let Err(e) = self.client.set_plex_state(v, p, *s) {
                errors.push(format!("volume {v}: plex {p}: {e}"));
            }
        }
        for spec in &staged.create {
            if let Err(e) = self.client.create_volume(spec) {
                errors.push(format!("volume {}: create: {e}", spec.name));
            }
        }
        if staged.prune && !exports_same {
            errors.extend(super::exports::remove_stale(
                &self.client,
                &staged.desired.exports,
            ));
        }
        if staged.prune && !nvmf_same {
            errors.extend(super::exports::remove_stale_nvmf(
                &self.client,
                &staged.desired.nvmf,
            ));
        }
        for v in &staged.delete {
            if let Err(e) = self.client.delete_volume(v) {
                errors.push(format!("volume {v}: delete: {e}"));
            }
        }
        // Reservations before new exports: a LUN mapped after takes its volume's.
        errors.extend(self.set_reservations(
            staged.before.as_ref().map(|k| &k.reservations),
            &staged.desired,
        ));
        if !exports_same {
            errors.extend(super::exports::add_missing(
                &self.client,
                &staged.desired.exports,
            ));
        }
        if !nvmf_same {
            errors.extend(super::exports::add_missing_nvmf(
                &self.client,
                &staged.desired.nvmf_node,
                &staged.desired.nvmf,
            ));
        }
        if staged.prune && !disks_same {
            self.delete_unused_disks(&staged.desired);
        }
        if errors.is_empty() {
            if staged.prune {
                self.known = Some(staged.desired);
            }
            Ok(())
        } else {
            let e = errors.join("; ");
            log::error!("data plane: {e}");
            Err(e)
        }
    }

    /// Gives the data plane the reservations of `desired` that differ from `before`
    /// (all of them when not known), and empties those of the shared volumes that
    /// have none any more. Returns the errors, each naming the volume.
    fn set_reservations(
        &self,
        before: Option<&BTreeMap<String, PrState>>,
        desired: &Desired,
    ) -> Vec<String> {
        let empty = PrState::default();
        let mut errors = Vec::new();
        let mut set = |volume: &str, state: &PrState| {
            if let Err(e) = self.client.set_reservations(volume, state) {
                errors.push(format!("volume {volume}: set reservations: {e}"));
            }
        };
        for (v, state) in &desired.reservations {
            if before.and_then(|b| b.get(v)) != Some(state) {
                set(v, state);
            }
        }
        match before {
            Some(b) => {
                for v in b.keys().filter(|v| !desired.reservations.contains_key(*v)) {
                    set(v, &empty);
                }
            }
            None => {
                // Not known: every shared volume without reservations is told so.
                for (v, spec) in &desired.volumes {
                    if spec.shared && !desired.reservations.contains_key(&**v) {
                        set(v, &empty);
                    }
                }
            }
        }
        errors
    }

    /// Drops the staged phase and resumes I/O.
    pub fn abort(&mut self) {
        if let Some(staged) = self.staged.take() {
            let mut clean = true;
            for v in &staged.prepared {
                if let Err(e) = self.client.abort(v) {
                    log::error!("data plane: volume {v}: abort: {e}");
                    clean = false;
                }
            }
            // The data plane is back where it was (when that is known).
            if clean {
                self.known = staged.before;
            }
        }
    }

    /// Makes the data plane hold exactly `desired` (idempotent): used on forming,
    /// joining and after a restart.
    pub fn load(&mut self, desired: Desired) -> Result<(), String> {
        self.abort();
        self.known = None;
        self.prepare(desired, true)?;
        self.commit()
    }

    fn delete_unused_disks(&self, desired: &Desired) {
        let Ok((bdevs, _)) = self.existing() else {
            return;
        };
        let wanted = |b: &str| {
            desired.disks.contains_key(b)
                || b.strip_suffix(".dev")
                    .is_some_and(|d| desired.disks.contains_key(d))
        };
        // Wrappers first, then the raw devices under them.
        let (raw, wrappers): (Vec<String>, Vec<String>) = bdevs
            .into_iter()
            .filter(|b| b.contains('.') && !wanted(b))
            .partition(|b| b.ends_with(".dev"));
        for b in wrappers.into_iter().chain(raw) {
            if let Err(e) = self.client.delete_bdev(&b) {
                log::warn!("data plane: disk bdev {b}: delete: {e}");
            }
        }
    }

    /// The node left the cluster: a staged layout is dropped and writes held for a
    /// cluster decision fail, but the shared volumes and their exports stay in the
    /// data plane, fenced by the lease (revoked on the next tick: no quorate view),
    /// so hosts get NOT READY on a path that stays logged in and comes back when
    /// the node rejoins and loads the cluster's configuration. `private` holds the
    /// volumes whose decisions stay local.
    pub fn leave(&mut self, private: &Desired) {
        self.abort();
        if let Ok((_, volumes)) = self.existing() {
            for v in volumes
                .iter()
                .filter(|v| v.contains('.') && !private.volumes.contains_key(v.as_str()))
            {
                // Writes held for a failed plex would wait for a cluster decision
                // that will not come: fail them.
                if let Err(e) = self.client.fail_held_writes(v) {
                    log::debug!("data plane: volume {v}: fail held writes: {e}");
                }
            }
        }
    }
}

fn only_states_differ(a: &VolumeSpec, b: &VolumeSpec) -> bool {
    a.name == b.name
        && a.size_bytes == b.size_bytes
        && a.read_policy == b.read_policy
        && a.local_detach == b.local_detach
        && a.log == b.log
        && a.plexes.len() == b.plexes.len()
        && a.plexes
            .iter()
            .zip(&b.plexes)
            .all(|(x, y)| x.name == y.name && x.kind == y.kind && x.columns == y.columns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{apply, Change, ClusterConfig, Disk, VolumeLayout};

    fn disk(name: &str, id: &str) -> Disk {
        Disk {
            name: name.into(),
            id: id.into(),
            path: format!("/tmp/{name}.img"),
            size_bytes: 65 << 20,
            public_offset_bytes: 1 << 20,
            public_len_bytes: 64 << 20,
            failed: false,
            staled: Vec::new(),
        }
    }

    /// A shared group dg1 on disks d1 and d2 with 2-way mirrors of (name, size).
    fn group_with(volumes: &[(&str, u64)]) -> ClusterConfig {
        let mut c = apply(
            &ClusterConfig::default(),
            &Change::DgCreate {
                dg: "dg1".into(),
                dg_id: "a".repeat(32),
                shared: true,
                owner_id: "demo".into(),
                disks: vec![disk("d1", &"1".repeat(32)), disk("d2", &"2".repeat(32))],
            },
        )
        .unwrap();
        for (v, size) in volumes {
            c = apply(
                &c,
                &Change::VolCreate {
                    dg: "dg1".into(),
                    volume: v.to_string(),
                    size_bytes: *size,
                    layout: VolumeLayout::Mirror { mirrors: 2 },
                    log: Default::default(),
                    disks: Vec::new(),
                },
            )
            .unwrap();
        }
        c
    }

    #[test]
    fn mirror_volume_becomes_two_concat_plexes_on_disk_bdevs() {
        let c = group_with(&[("v1", 4 << 20)]);
        let d = Desired::of(&c.disk_groups, 1);
        assert_eq!(d.disks.get("dg1.d1").unwrap(), "/tmp/d1.img");
        let spec = d.volumes.get("dg1.v1").unwrap();
        assert_eq!(spec.size_bytes, 4 << 20);
        assert_eq!(spec.plexes.len(), 2);
        let bdevs: BTreeSet<&str> = spec
            .plexes
            .iter()
            .map(|p| p.columns[0][0].bdev.as_str())
            .collect();
        assert_eq!(bdevs, ["dg1.d1", "dg1.d2"].into_iter().collect());
        for p in &spec.plexes {
            assert_eq!(p.kind, plexd_target_api::volume::PlexKind::Concat);
            assert_eq!(p.state, KPlexState::Active);
            assert!(p.columns[0][0].offset_bytes >= 1 << 20);
        }
        let mut stale = (**spec).clone();
        stale.plexes[1].state = KPlexState::Stale;
        assert!(only_states_differ(spec, &stale));
        stale.size_bytes += 512;
        assert!(!only_states_differ(spec, &stale));
    }

    #[test]
    fn a_cached_projection_finds_every_export_and_reservation_without_reading_the_rest() {
        use crate::daemon::exports;
        use crate::model::{Export, ExportProtocol};
        let export = |volume: &str, protocol| Change::VolExport {
            dg: "dg1".into(),
            volume: volume.into(),
            export: Export {
                protocol,
                iqn: match protocol {
                    ExportProtocol::Iscsi => format!("iqn.2026-12.io.plexd:{volume}"),
                    ExportProtocol::Nvmf => format!("nqn.2026-12.io.plexd:{volume}"),
                },
                nodes: Vec::new(),
                portal: String::new(),
                hosts: Vec::new(),
            },
        };
        let mut c = group_with(&[("v1", 1 << 20), ("v2", 1 << 20), ("v3", 1 << 20)]);
        let mut specs = SpecCache::default();
        let nodes = [("a".to_string(), "127.0.0.1:4420".to_string())];
        let changes = [
            export("v2", ExportProtocol::Iscsi),
            Change::VolGrow {
                dg: "dg1".into(),
                volume: "v1".into(),
                new_size_bytes: 2 << 20,
            },
            export("v3", ExportProtocol::Nvmf),
            Change::VolUnexport {
                dg: "dg1".into(),
                volume: "v2".into(),
                protocol: ExportProtocol::Iscsi,
            },
            export("v1", ExportProtocol::Iscsi),
            Change::VolRm {
                dg: "dg1".into(),
                volume: "v2".into(),
            },
        ];
        for change in changes {
            c = apply(&c, &change).unwrap();
            // A reservation on v3 from the second change on, set by hand (a host's
            // PERSISTENT RESERVE OUT would).
            let v3 = |v: &Arc<Volume>| v.name == "v3" && v.reservations.is_empty();
            if let Some(v) = c.disk_groups[0].volumes.iter().position(v3) {
                c.disk_groups[0].volume_mut(v).reservations.generation = 1;
            }
            let (d, extras) = Desired::of_cached_with_extras(&c.disk_groups, 1, &mut specs);
            let g = &c.disk_groups[0];
            let every: Vec<_> = g.volumes.iter().map(|v| (g, &**v)).collect();
            let with: Vec<&str> = every
                .iter()
                .filter(|(_, v)| !v.exports.is_empty() || !v.reservations.is_empty())
                .map(|(_, v)| v.name.as_str())
                .collect();
            let found: Vec<&str> = extras.iter().map(|(_, v)| v.name.as_str()).collect();
            assert_eq!(found, with, "after {change:?}");
            assert_eq!(d, Desired::of(&c.disk_groups, 1), "after {change:?}");
            assert_eq!(
                exports::desired(extras.iter().copied(), "a", "127.0.0.1:3260"),
                exports::desired(every.iter().copied(), "a", "127.0.0.1:3260"),
            );
            assert_eq!(
                exports::desired_nvmf(extras.iter().copied(), "a", &nodes),
                exports::desired_nvmf(every.iter().copied(), "a", &nodes),
            );
        }
    }

    #[test]
    fn a_cached_projection_projects_only_the_volumes_a_change_replaced() {
        let c = group_with(&[("v1", 1 << 20), ("v2", 1 << 20), ("v3", 1 << 20)]);
        let mut specs = SpecCache::default();
        let before = Desired::of_cached(&c.disk_groups, 1, &mut specs);
        let grown = apply(
            &c,
            &Change::VolGrow {
                dg: "dg1".into(),
                volume: "v2".into(),
                new_size_bytes: 2 << 20,
            },
        )
        .unwrap();
        let after = Desired::of_cached(&grown.disk_groups, 1, &mut specs);
        // The same as a projection from scratch ...
        assert_eq!(after, Desired::of(&grown.disk_groups, 1));
        // ... where only the grown volume was projected again.
        for v in ["dg1.v1", "dg1.v3"] {
            assert!(Arc::ptr_eq(&before.volumes[v], &after.volumes[v]), "{v}");
        }
        assert!(!Arc::ptr_eq(
            &before.volumes["dg1.v2"],
            &after.volumes["dg1.v2"]
        ));
        assert_eq!(after.volumes["dg1.v2"].size_bytes, 2 << 20);
        // Another node id, or a removed volume, is not taken from the cache.
        let other = Desired::of_cached(&grown.disk_groups, 2, &mut specs);
        assert_eq!(other, Desired::of(&grown.disk_groups, 2));
        let removed = apply(
            &grown,
            &Change::VolRm {
                dg: "dg1".into(),
                volume: "v1".into(),
            },
        )
        .unwrap();
        let d = Desired::of_cached(&removed.disk_groups, 2, &mut specs);
        assert_eq!(d, Desired::of(&removed.disk_groups, 2));
        assert_eq!(
            specs.groups["dg1"].specs.len(),
            2,
            "the removed volume is forgotten"
        );
    }
}
