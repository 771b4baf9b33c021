//! The link to this node's data plane: noticing it is lost, reconnecting (restarting
//! plexd-target if it died), loading it again, and what `cluster status` says meanwhile.

use super::*;

/// Starts `plexd-target` (next to the `plexd` binary) on `socket` unless a target
/// answers there; returns the new child, to be reaped when it exits.
pub(super) fn spawn_target_if_dead(
    socket: &std::path::Path,
) -> Result<Option<std::process::Child>, String> {
    if std::os::unix::net::UnixStream::connect(socket).is_ok() {
        return Ok(None);
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find plexd's path: {e}"))?;
    let target = exe.with_file_name("plexd-target");
    let child = std::process::Command::new(&target)
        .arg("--socket")
        .arg(socket)
        .arg("--cores")
        .arg("0")
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", target.display()))?;
    log::info!(
        "plexd: started {} on {}",
        target.display(),
        socket.display()
    );
    Ok(Some(child))
}

/// The data plane is lost; the main loop reconnects (see [`Daemon::try_reconnect`]).
pub(super) struct KernelLost {
    pub(super) reason: String,
    pub(super) since: Instant,
    pub(super) next_try: Instant,
    pub(super) backoff: Duration,
    pub(super) attempts: u32,
    pub(super) last_error: String,
    /// When this node last started a plexd-target for this loss (`--spawn-target`).
    pub(super) spawned_at: Option<Instant>,
}

impl Daemon {
    /// The connection to the data plane broke: remember it (the main loop reconnects),
    /// drop what lived in the old target (fences, resync copies).
    pub(super) fn on_kernel_lost(&mut self, epoch: u64, reason: String) {
        if epoch > self.kernel_epoch {
            // The connection the driver just made broke before its answer came.
            self.early_lost = Some((epoch, reason));
            return;
        }
        if epoch != self.kernel_epoch || self.kernel_lost.is_some() {
            log::debug!(
                "node {}: late report on kernel connection {epoch} ignored: {reason}",
                self.name
            );
            return;
        }
        log::error!(
            "node {}: data plane lost: {reason}; reconnecting to {}{}",
            self.name,
            self.socket,
            if self.spawn_target {
                " (starting plexd-target again)"
            } else {
                ""
            }
        );
        let now = Instant::now();
        self.kernel_lost = Some(KernelLost {
            reason,
            since: now,
            next_try: now,
            backoff: RECONNECT_BACKOFF_MIN,
            attempts: 0,
            last_error: String::new(),
            spawned_at: None,
        });
        self.tasks.cancel_all();
        self.lease.set_client(None);
        self.owner.set_client(None);
        self.submit(Job::BreakFences {
            why: "the data plane was lost".into(),
        });
        // The core's fences went with the data plane's quiesces.
        self.feed(Event::DataPlaneLost);
    }

    /// One attempt to reconnect to the lost data plane (from the main loop, when
    /// its backoff ran out): the driver reconnects and loads the whole desired
    /// configuration (private groups, and the committed shared configuration if this
    /// node is a member; a prepared transaction is staged again); see
    /// [`Daemon::on_reconnected`].
    pub(super) fn try_reconnect(&mut self) {
        let Some(lost) = self.kernel_lost.as_mut() else {
            return;
        };
        let now = Instant::now();
        lost.attempts += 1;
        if let Some(child) = self.target_child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                log::warn!(
                    "node {}: the plexd-target this plexd started exited ({status})",
                    self.name
                );
                self.target_child = None;
            }
        }
        let socket = PathBuf::from(&self.socket);
        if self.spawn_target
            && lost
                .spawned_at
                .is_none_or(|t| now.duration_since(t) >= TARGET_WAIT)
        {
            lost.spawned_at = Some(now);
            match spawn_target_if_dead(&socket) {
                Ok(Some(child)) => self.target_child = Some(child),
                Ok(None) => {}
                Err(e) => log::error!("node {}: {e}", self.name),
            }
        }
        // What the core's kernel actions left in the data plane (a joiner's load
        // included: its view may be installed after the reconnection).
        let shared = self.node.data_plane_shared().groups.clone();
        self.alua_sent.clear();
        self.ana_sent = None;
        self.alua_basis = None;
        let job = Job::Reconnect {
            epoch: self.kernel_epoch + 1,
            shared,
            staged: self.staged.as_ref().map(|(t, c)| (*t, c.groups.clone())),
        };
        self.submit(job);
        self.reconnecting = true;
    }

    /// The driver's reconnection attempt ended.
    pub(super) fn on_reconnected(
        &mut self,
        epoch: u64,
        result: Result<(Arc<plexd_target_api::KernelClient>, Result<usize, String>), String>,
    ) {
        self.reconnecting = false;
        let Some(lost) = self.kernel_lost.as_mut() else {
            return;
        };
        let (client, loaded) = match result {
            Ok(r) => r,
            Err(e) => {
                log::debug!(
                    "node {}: reconnect attempt {} to the data plane: {e}",
                    self.name,
                    lost.attempts
                );
                lost.last_error = e;
                lost.backoff = (lost.backoff * 2).min(RECONNECT_BACKOFF_MAX);
                lost.next_try = Instant::now() + lost.backoff;
                return;
            }
        };
        let Some(lost) = self.kernel_lost.take() else {
            return;
        };
        self.kernel_epoch = epoch;
        self.owner.set_client(Some(Arc::clone(&client)));
        self.lease.set_client(Some(client));
        if let Some((e, reason)) = self.early_lost.take() {
            if e == epoch {
                self.on_kernel_lost(e, reason);
                return;
            }
        }
        let member = self.node.view().is_some_and(|v| v.contains(self.me));
        let took = lost.since.elapsed().as_millis();
        match loaded {
            Ok(volumes) => log::info!(
                "node {}: data plane reconnected, {volumes} volumes loaded ({took} ms after the loss, {} attempts{})",
                self.name,
                lost.attempts,
                if member { "" } else { "; not a cluster member: private groups only" }
            ),
            Err(e) => log::error!(
                "node {}: data plane reconnected ({took} ms after the loss), but loading its volumes failed: {e}",
                self.name
            ),
        }
        self.after_config_change();
    }

    /// `cluster status` while the data plane is lost: this node's reason says so.
    pub(super) fn status_while_lost(&self) -> StatusOut {
        let mut out = self.status();
        if let Some(lost) = &self.kernel_lost {
            let mut reason = format!("data plane lost: {}", lost.reason);
            if !lost.last_error.is_empty() {
                reason.push_str(&format!("; reconnecting ({})", lost.last_error));
            }
            for n in out.nodes.iter_mut().filter(|n| n.id == self.me) {
                n.reason = reason.clone();
            }
        }
        out
    }
}
