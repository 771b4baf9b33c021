//! Starting a node: the cluster file, the data plane (started or reconnected), the
//! private groups loaded at once, the driver, lease, quorum-disk and signal threads,
//! then the main loop.

use super::*;

/// Runs a node until a clean stop. Errors at start are returned (the binary prints
/// them and exits non-zero).
pub fn run(opts: Options) -> Result<(), String> {
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
    let failpoint = failpoint_from_env()?;
    let signals = block_signals()?;
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
    let (tx, rx) = mpsc::sync_channel(INPUT_QUEUE_DEPTH);
    let identity = transport::Identity {
        me: me.id,
        name: me.name.clone(),
        cluster_id: file.cluster.id.clone(),
        node_list: file.node_list(),
    };
    let refusals = transport::Refusals::default();
    ctl::start(&me.address, tx.clone(), identity.clone(), refusals.clone())
        .map_err(|e| format!("node {}: {e}", me.name))?;
    start_signal_thread(signals, tx.clone());
    start_kernel_events(&kernel, tx.clone(), 0, &me.name);
    let inc = incarnation();
    let peers = file
        .nodes
        .iter()
        .filter(|n| n.id != me.id)
        .map(|n| (n.id, n.address.clone()))
        .collect();
    let transport = transport::Transport::start(
        &identity,
        inc,
        peers,
        Duration::from_millis(file.cluster.heartbeat_interval_ms),
        tx.clone(),
        refusals,
    );
    let files = file.disk_files();
    let qdisk = match &file.cluster.quorum_disk {
        Some(path) => {
            if files.iter().any(|f| f == path) {
                return Err(format!(
                    "node {}: quorum disk {} is one of the disks disk_paths matches; give it a path of its own",
                    me.name,
                    path.display()
                ));
            }
            log::info!("node {}: quorum disk {}", me.name, path.display());
            Some(qdisk::QuorumDisk::start(
                &me.name,
                path.clone(),
                file.cluster.id.clone(),
                tx.clone(),
            )?)
        }
        None => None,
    };
    let (_, private_groups, _) = disks::discover(&files, &file.cluster.id, &me.name);
    let private = ClusterConfig {
        disk_groups: private_groups,
        open_nodes: Vec::new(),
    };
    let failed = disks::failed_groups(&files, &file.cluster.id, &me.name);
    for g in &failed {
        log::error!("node {}: disk group {} {}", me.name, g.name, g.reason);
    }
    // Private groups come back at once; shared volumes the target still serves are
    // left alone until the cluster configuration is loaded (no I/O interruption).
    let at_start = driver::desired_of(&files, &file, &me.name, &[], &private.disk_groups);
    if let Err(e) = kernel.prepare(at_start, false) {
        log::error!("node {}: cannot load the private disk groups: {e}", me.name);
        kernel.abort();
    } else if let Err(e) = kernel.commit() {
        log::error!("node {}: cannot load the private disk groups: {e}", me.name);
    }
    let lease = lease::Renewer::start(&me.name, kernel.shared_client());
    let socket = kernel.client().path().to_string();
    let repairs = Arc::new(Mutex::new(disks::Repairs::default()));
    let driver = Driver {
        file: file.clone(),
        me: me.id,
        name: me.name.clone(),
        kernel,
        fences: fence::Fences::default(),
        repairs: Arc::clone(&repairs),
        tx: tx.clone(),
        failpoint: failpoint.clone(),
        lease: lease.view(),
        private: private.disk_groups.clone(),
    }
    .start()?;
    let start = Instant::now();
    let membership_path =
        membership::record_path(me.state_dir.as_deref(), &me.target_socket, me.id);
    let mut node_config = file.node_config(me.id, inc);
    node_config.member_ago_at_start_ms = membership::read_ago_ms(&membership_path);
    if let Some(ago) = node_config.member_ago_at_start_ms {
        log::info!(
            "node {}: its previous start may have been a cluster member {ago} ms ago ({}): it counts as a member of another cluster until that lease has surely run out",
            me.name,
            membership_path.display()
        );
    }
    let node = Node::new(node_config, now_ms(start));
    println!("plexd: node {} listening on {}", me.name, me.address);
    log::info!(
        "plexd: node {} (id {}) listening on {}; target {}",
        me.name,
        me.id,
        me.address,
        me.target_socket.display()
    );
    let mut d = Daemon {
        file,
        me: me.id,
        name: me.name.clone(),
        failpoint,
        node,
        driver,
        pipeline: Pipeline::default(),
        lease,
        socket,
        transport,
        private,
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
        failed,
        repairs,
        private_queue: VecDeque::new(),
        private_running: None,
        qdisk,
    };
    d.main_loop(rx);
    log::info!("plexd: node {} stopped", d.name);
    Ok(())
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

pub(super) fn start_signal_thread(set: nix::sys::signal::SigSet, tx: SyncSender<Input>) {
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            match set.wait() {
                Ok(sig) => {
                    log::info!("plexd: {sig} received; stopping cleanly");
                    if tx.send(Input::Shutdown).is_err() {
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
pub(super) fn start_kernel_events(kernel: &Kernel, tx: SyncSender<Input>, epoch: u64, node: &str) {
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
                    }) => {
                        log::warn!(
                            "data plane: volume {volume}: plex {plex}: write error (errno {errno})"
                        );
                        if tx.send(Input::PlexIoError { volume, plex }).is_err() {
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
                        if tx.send(input).is_err() {
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
            let _ = tx.send(Input::KernelLost { epoch, reason });
        });
    if let Err(e) = spawned {
        log::error!("node {node}: cannot start the kernel event thread: {e}");
    }
}
