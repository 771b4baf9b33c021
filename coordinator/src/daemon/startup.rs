//! Starting a node: the cluster file, the data plane (started or reconnected), the
//! private groups loaded at once (after one lease those a crashed start left open
//! and the data plane lost: `private::wait_before_serving`), the driver, lease,
//! quorum-disk and signal threads, then the main loop.

use std::collections::BTreeSet;

use super::*;
use crate::model::DiskGroupConfig;

/// Runs a node until a clean stop. Errors at start are returned (the binary prints
/// them and exits non-zero).
pub fn run(opts: Options) -> Result<(), String> {
    let (file, me) = this_node(&opts)?;
    let membership_path =
        membership::record_path(me.state_dir.as_deref(), &me.target_socket, me.id);
    membership::check_writable(&membership_path).map_err(|e| {
        format!(
            "node {}: {e}; plexd does not start without it (a restart must know whether this node may have confirmed a master's lease)",
            me.name
        )
    })?;
    let failpoint = failpoint_from_env()?;
    let signals = block_signals()?;
    let (target_child, mut kernel) = connect_data_plane(&opts, &file, &me)?;
    let (tx, rx) = smol::channel::bounded(INPUT_QUEUE_DEPTH);
    let identity = transport::Identity {
        me: me.id,
        name: me.name.clone(),
        cluster_id: file.cluster.id.clone(),
        node_list: file.node_list(),
    };
    let refusals = transport::Refusals::default();
    let server = ctl::Server::bind(&me.address, tx.clone(), identity.clone(), refusals.clone())
        .map_err(|e| format!("node {}: {e}", me.name))?;
    let inc = incarnation();
    let (transport, senders) = new_transport(&file, &identity, tx.clone(), refusals);
    start_signal_thread(signals, tx.clone());
    start_kernel_events(&kernel, tx.clone(), 0, &me.name);
    let files = file.disk_files();
    let qdisk = start_quorum_disk(&file, &me, &files, &tx)?;
    #[cfg(feature = "corosync")]
    let file_for_monitor = file.clone();
    let start_open = crate::model::OpenNode {
        node: me.id,
        incarnation: inc,
    };
    let (private, failed) = load_private_groups(&mut kernel, &file, &me.name, start_open, &files);
    let lease = lease::Renewer::start(
        &me.name,
        kernel.shared_client(),
        failpoint.as_ref().and_then(|f| f.sleep_at("lease.renew")),
    );
    let owner = Arc::new(owner_lease::OwnerLease::start(
        &me.name,
        &me.name,
        kernel.shared_client(),
        file.cluster.lease_ms,
    ));
    owner.set_groups(owner_lease::owned(&private.disk_groups, &files));
    let socket = kernel.client().path().to_string();
    let repairs = Arc::new(Mutex::new(disks::Repairs::default()));
    let driver = Driver {
        file: file.clone(),
        me: me.id,
        name: me.name.clone(),
        kernel,
        fences: fence::Fences::default(),
        repairs: Arc::clone(&repairs),
        written: super::disks::Written::default(),
        tx: tx.clone(),
        failpoint: failpoint.clone(),
        lease: lease.view(),
        owner: Arc::clone(&owner),
        private: private.disk_groups.clone(),
        takeover: Default::default(),
        finder: Default::default(),
        warned: Default::default(),
    }
    .start()?;
    let start = super::clock::CoreClock::start();
    let mut node = new_node(&file, &me, inc, start, &membership_path);
    node.load_private(private);
    announce(&me);
    let mut d = Daemon {
        file,
        me: me.id,
        start_open,
        name: me.name.clone(),
        failpoint,
        node,
        driver,
        pipeline: Pipeline::default(),
        lease,
        owner,
        taken: Default::default(),
        socket,
        transport,
        start,
        membership_path,
        next_request: 1,
        pending: BTreeMap::new(),
        staged: None,
        committed_txn: TxnId::default(),
        offered: None,
        history: std::collections::VecDeque::new(),
        tasks: resync::Tasks::default(),
        tx: tx.clone(),
        stopping: false,
        spawn_target: opts.spawn_target,
        target_child,
        kernel_epoch: 0,
        kernel_lost: None,
        alua_sent: BTreeMap::new(),
        ana_sent: None,
        alua_basis: None,
        reconnecting: false,
        early_lost: None,
        timer: None,
        ready: std::collections::VecDeque::new(),
        failed,
        repairs,
        qdisk,
        drl_reads: super::drl::Reads::default(),
        #[cfg(feature = "corosync")]
        _corosync: start_corosync(&file_for_monitor, &me, &tx)?,
    };
    // Private groups recovered at this start (SYNCING plexes) are copied now.
    d.after_config_change();
    net::run(server, senders, d.main_loop(rx));
    if d.stopping && d.stopped() {
        // A clean stop: the data plane stops serving private volumes (as it stopped
        // shared ones), and no recovery of the private groups follows at the next
        // start.
        if let Err(e) = d.owner.revoke_for_stop() {
            log::warn!("node {}: {e}", d.name);
        }
        super::private::close_private_groups(&d.name, &d.node.private().disk_groups, &files);
    }
    log::info!("plexd: node {} stopped", d.name);
    Ok(())
}

/// The cluster file and this node's entry in it.
fn this_node(opts: &Options) -> Result<(ClusterFile, config::NodeEntry), String> {
    let file = ClusterFile::load(&opts.cluster)?;
    let me = file
        .node(&opts.node)
        .ok_or_else(|| {
            format!(
                "node {} is not in cluster file {}",
                opts.node,
                opts.cluster.display()
            )
        })?
        .clone();
    Ok((file, me))
}

/// Starts the node's plexd-target when asked to and it is not running (the child,
/// if started), and connects to it.
fn connect_data_plane(
    opts: &Options,
    file: &ClusterFile,
    me: &config::NodeEntry,
) -> Result<(Option<std::process::Child>, Kernel), String> {
    let target_child = if opts.spawn_target {
        spawn_target_if_dead(&me.target_socket)?
    } else {
        None
    };
    let mut kernel = Kernel::connect(&me.target_socket, TARGET_WAIT).map_err(|e| {
        format!(
            "node {}: cannot reach plexd-target at {}: {e}",
            me.name,
            me.target_socket.display()
        )
    })?;
    kernel.set_fault_injection(file.cluster.fault_injection);
    Ok((target_child, kernel))
}

/// The connections to the other nodes of the cluster file, and their senders.
fn new_transport(
    file: &ClusterFile,
    identity: &transport::Identity,
    tx: Inputs,
    refusals: transport::Refusals,
) -> (transport::Transport, Vec<transport::PeerTask>) {
    let peers = file
        .nodes
        .iter()
        .filter(|n| n.id != identity.me)
        .map(|n| (n.id, n.address.clone()))
        .collect();
    transport::Transport::new(
        identity,
        peers,
        Duration::from_millis(file.cluster.heartbeat_interval_ms),
        tx,
        refusals,
    )
}

/// Starts the corosync monitor thread when the cluster file asks for it.
#[cfg(feature = "corosync")]
fn start_corosync(
    file: &ClusterFile,
    me: &config::NodeEntry,
    tx: &Inputs,
) -> Result<Option<super::corosync::Monitor>, String> {
    if file.cluster.monitor != config::MONITOR_COROSYNC {
        return Ok(None);
    }
    let nodes = file.nodes.iter().map(|n| (n.id, n.name.clone())).collect();
    log::info!(
        "node {}: membership and quorum also from corosync (CPG group {})",
        me.name,
        super::corosync::GROUP
    );
    super::corosync::Monitor::start(me.id, &me.name, nodes, tx.clone()).map(Some)
}

/// Starts watching the cluster's quorum disk, if it has one; refused when it is one
/// of the disks `disk_paths` matches (`files`).
fn start_quorum_disk(
    file: &ClusterFile,
    me: &config::NodeEntry,
    files: &[PathBuf],
    tx: &Inputs,
) -> Result<Option<qdisk::QuorumDisk>, String> {
    let Some(path) = &file.cluster.quorum_disk else {
        return Ok(None);
    };
    if files.iter().any(|f| f == path) {
        return Err(format!(
            "node {}: quorum disk {} is one of the disks disk_paths matches; give it a path of its own",
            me.name,
            path.display()
        ));
    }
    log::info!("node {}: quorum disk {}", me.name, path.display());
    Ok(Some(qdisk::QuorumDisk::start(
        &me.name,
        path.clone(),
        file.cluster.id.clone(),
        tx.clone(),
    )?))
}

/// Reads this node's private disk groups from `files`, recovers those a start that
/// did not stop cleanly left open and writes this start's open record to each
/// (`private::open_private_groups`), and loads them into the data plane; returns
/// them and the groups whose configuration cannot be read.
fn load_private_groups(
    kernel: &mut Kernel,
    file: &ClusterFile,
    name: &str,
    start: crate::model::OpenNode,
    files: &[PathBuf],
) -> (ClusterConfig, Vec<disks::FailedGroup>) {
    let (_, mut private_groups, _) = disks::discover(files, &file.cluster.id, name);
    let served: BTreeSet<String> = match kernel.client().list_volumes() {
        Ok(v) => v.into_iter().map(|v| v.name).collect(),
        Err(e) => {
            log::error!("node {name}: cannot list the data plane's volumes: {e}");
            BTreeSet::new()
        }
    };
    let held = super::private::wait_before_serving(&private_groups, &served);
    super::private::open_private_groups(name, start, &mut private_groups, files);
    let private = ClusterConfig {
        disk_groups: private_groups,
        open_nodes: Vec::new(),
    };
    let failed = disks::failed_groups(files, &file.cluster.id, name);
    for g in &failed {
        log::error!("node {name}: disk group {} {}", g.name, g.reason);
    }
    // Private groups come back at once, but for those that must wait out a former
    // owner's lease first; shared volumes the target still serves are left alone
    // until the cluster configuration is loaded (no I/O interruption).
    let (later, now): (Vec<DiskGroupConfig>, Vec<DiskGroupConfig>) = private
        .disk_groups
        .iter()
        .cloned()
        .partition(|g| held.contains(&g.name));
    serve_private_groups(kernel, file, name, files, &now);
    if !later.is_empty() {
        let wait = owner_lease::takeover_wait_ms(&file.cluster);
        log::warn!(
            "node {name}: private disk group(s) {held:?} left open by a start that did not stop \
             cleanly and not served by the data plane: waiting {wait} ms (a former owner's \
             private-group lease, in case that start was taking them over) before serving them"
        );
        std::thread::sleep(Duration::from_millis(wait));
        serve_private_groups(kernel, file, name, files, &later);
    }
    (private, failed)
}

/// Gives the data plane private `groups` (staged and committed; nothing else it
/// serves is touched).
fn serve_private_groups(
    kernel: &mut Kernel,
    file: &ClusterFile,
    name: &str,
    files: &[PathBuf],
    groups: &[DiskGroupConfig],
) {
    if groups.is_empty() {
        return;
    }
    let local = disks::LocalDisks::scan(files);
    let warned = driver::Warned::default();
    let held = |_: &str| false;
    let node = (name, &held as driver::HeldDisk, &warned);
    let desired = driver::desired_of(&local, file, node, (&[], groups), &mut kernel.specs());
    if let Err(e) = kernel.prepare(desired, false) {
        log::error!("node {name}: cannot load the private disk groups: {e}");
        kernel.abort();
    } else if let Err(e) = kernel.commit() {
        log::error!("node {name}: cannot load the private disk groups: {e}");
    }
}

/// The protocol core of this start (incarnation `inc`, clock from `start`), told
/// how long ago a previous start was a member (recorded at `membership_path`).
fn new_node(
    file: &ClusterFile,
    me: &config::NodeEntry,
    inc: u64,
    start: super::clock::CoreClock,
    membership_path: &std::path::Path,
) -> Node<SharedConfig> {
    let mut node_config = file.node_config(me.id, inc);
    node_config.member_ago_at_start_ms = membership::read_ago_ms(membership_path);
    if let Some(ago) = node_config.member_ago_at_start_ms {
        log::info!(
            "node {}: its previous start may have been a cluster member {ago} ms ago ({}): it counts as a member of another cluster until that lease has surely run out",
            me.name,
            membership_path.display()
        );
    }
    Node::new(node_config, now_ms(start))
}

/// Says on stdout and in the log that the node is up.
fn announce(me: &config::NodeEntry) {
    println!("plexd: node {} listening on {}", me.name, me.address);
    log::info!(
        "plexd: node {} (id {}) listening on {}; target {}",
        me.name,
        me.id,
        me.address,
        me.target_socket.display()
    );
}

pub(super) fn block_signals() -> Result<nix::sys::signal::SigSet, String> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGTERM);
    set.add(Signal::SIGINT);
    set.thread_block()
        .map_err(|e| format!("cannot block signals: {e}"))?;
    Ok(set)
}

pub(super) fn start_signal_thread(set: nix::sys::signal::SigSet, tx: Inputs) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match set.wait() {
                Ok(sig) => {
                    log::info!("plexd: {sig} received; stopping cleanly");
                    if tx.send_blocking(Input::Shutdown).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    log::error!("plexd: waiting for signals failed: {e}");
                    return;
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("plexd: cannot start the signal thread: {e}");
    }
}

/// Subscribes to the data plane's events on the kernel connection (`epoch`) and starts
/// the thread that forwards them. The thread also watches the connection: when the
/// subscription ends or an idle probe fails with a connection error, it sends one
/// [`Input::KernelLost`] and ends.
pub(super) fn start_kernel_events(kernel: &Kernel, tx: Inputs, epoch: u64, node: &str) {
    let client = kernel.shared_client();
    let sub = match client.subscribe() {
        Ok(s) => s,
        Err(e) if kernel::connection_lost(&e) => {
            // Called from the driver (or before the main loop starts): never block on
            // the main loop's queue.
            let reason = format!("cannot subscribe to events: {e}");
            let _ = tx.try_send(Input::KernelLost { epoch, reason });
            return;
        }
        Err(e) => {
            log::error!("node {node}: cannot subscribe to data plane events: {e}; plex I/O errors will not be handled");
            return;
        }
    };
    let name = node.to_string();
    let spawned = std::thread::Builder::new()
        .name("kernel-events".into())
        .spawn(move || {
            let reason = loop {
                match sub.recv_timeout(KERNEL_PROBE_INTERVAL) {
                    Some(plexd_target_api::Event::PlexIoError {
                        volume,
                        plex,
                        errno,
                        failed,
                    }) => {
                        log::warn!(
                            "data plane: volume {volume}: plex {plex}: write error (errno {errno}){}",
                            failed.map_or(String::new(), |(o, l)| format!(
                                "; the write of {l} bytes at {o} failed (local detach policy)"
                            ))
                        );
                        let ranges = failed.into_iter().collect();
                        if tx.send_blocking(Input::PlexIoError { volume, plex, ranges }).is_err() {
                            return;
                        }
                    }
                    Some(plexd_target_api::Event::PrOut {
                        request,
                        volume,
                        initiator,
                        relative_port,
                        service_action,
                        scope_type,
                        parameters,
                    }) => {
                        let input = Input::PrOut {
                            request,
                            volume,
                            nexus: crate::model::Nexus::new(initiator, relative_port),
                            service_action,
                            scope_type,
                            parameters,
                        };
                        if tx.send_blocking(input).is_err() {
                            return;
                        }
                    }
                    Some(_) => {}
                    None if sub.receiver().is_closed() => {
                        break "the event subscription ended (connection closed)".to_string();
                    }
                    None => match client.info() {
                        Ok(_) => {}
                        Err(e) if kernel::connection_lost(&e) => break e.to_string(),
                        Err(e) => log::warn!("node {name}: data plane probe: {e}"),
                    },
                }
            };
            log::debug!("node {name}: kernel connection {epoch}: {reason}");
            let _ = tx.send_blocking(Input::KernelLost { epoch, reason });
        });
    if let Err(e) = spawned {
        log::error!("node {node}: cannot start the kernel event thread: {e}");
    }
}
