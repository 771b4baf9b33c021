//! corosync as the cluster monitor (`monitor = "corosync"`, cargo feature
//! `corosync`): one thread connects to the local corosync, joins the CPG process
//! group [`GROUP`] and tracks votequorum, and hands the main loop what they say as
//! [`Input::Monitor`] (the core's `Event::MonitorView`, `core::monitor`).
//!
//! - Members: the nodes whose plexd is in the group as this node's corosync sees
//!   it (CPG confchg), by corosync node id, which must equal the node's id in the
//!   cluster file (ids corosync reports that the cluster file lacks are ignored).
//! - Quorate: votequorum's quorum notification (expected votes and a qdevice, if
//!   configured, are corosync's business).
//! - A corosync that is not running, refuses the connection, reports another local
//!   node id or closes the connection is reported as no members and not quorate,
//!   with the reason; the thread connects again every [`RECONNECT_EVERY`].
//!
//! The library's callbacks are plain function pointers called from `dispatch` on
//! this thread: they record what they saw in a thread-local the thread reads after
//! each dispatch.

use super::Inputs;
use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rust_corosync::{cpg, votequorum, DispatchFlags, TrackFlags};

use super::Input;
use crate::core::NodeId;

/// The CPG process group every plexd of a cluster joins.
pub const GROUP: &str = "plexd";
/// Pause between two attempts to connect to corosync.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(1);
/// Longest wait for corosync's next message before the thread checks its stop flag.
pub const POLL_EVERY_MS: u16 = 250;

/// What the callbacks saw since the connection was made.
#[derive(Default)]
struct Seen {
    /// CPG members of [`GROUP`] (corosync node ids), from the last confchg.
    members: Option<BTreeSet<u32>>,
    /// votequorum's last quorum notification.
    quorate: Option<bool>,
}

thread_local! {
    static SEEN: RefCell<Seen> = RefCell::new(Seen::default());
}

fn on_confchg(
    _handle: &cpg::Handle,
    group: &str,
    members: Vec<cpg::Address>,
    _left: Vec<cpg::Address>,
    _joined: Vec<cpg::Address>,
) {
    if group != GROUP {
        return;
    }
    let ids = members.iter().map(|a| u32::from(a.nodeid)).collect();
    SEEN.with(|s| s.borrow_mut().members = Some(ids));
}

fn on_quorum(
    _handle: &votequorum::Handle,
    _context: u64,
    quorate: bool,
    _nodes: Vec<votequorum::Node>,
) {
    SEEN.with(|s| s.borrow_mut().quorate = Some(quorate));
}

/// The monitor thread; stopped (and joined) when dropped.
pub struct Monitor {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the thread reports: (members, quorate, detail).
type View = (BTreeSet<NodeId>, bool, String);

impl Monitor {
    /// Starts the thread for node `me` (`name`) of a cluster whose nodes are
    /// `nodes` (id, name); its reports go to `tx`.
    pub fn start(
        me: NodeId,
        name: &str,
        nodes: Vec<(NodeId, String)>,
        tx: Inputs,
    ) -> Result<Monitor, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let t = Thread {
            me,
            name: name.to_string(),
            nodes,
            tx,
            stop: Arc::clone(&stop),
            last: None,
        };
        let thread = std::thread::Builder::new()
            .name("corosync".into())
            .spawn(move || t.run())
            .map_err(|e| format!("node {name}: cannot start the corosync monitor thread: {e}"))?;
        Ok(Monitor {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Thread {
    me: NodeId,
    name: String,
    nodes: Vec<(NodeId, String)>,
    tx: Inputs,
    stop: Arc<AtomicBool>,
    /// The last view reported (a report is sent only when it changes).
    last: Option<View>,
}

impl Thread {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Connects, follows corosync until it fails, reports the failure, waits
    /// [`RECONNECT_EVERY`], again; until the stop flag is set or the main loop is gone.
    fn run(mut self) {
        while !self.stopped() {
            let e = match self.session() {
                Ok(()) => return,
                Err(e) => e,
            };
            if !self.report((BTreeSet::new(), false, format!("corosync: {e}"))) {
                return;
            }
            let mut waited = Duration::ZERO;
            while waited < RECONNECT_EVERY && !self.stopped() {
                let step = Duration::from_millis(u64::from(POLL_EVERY_MS));
                std::thread::sleep(step);
                waited += step;
            }
        }
    }

    /// Sends `view` to the main loop if it differs from the last one; false when
    /// the main loop is gone.
    fn report(&mut self, view: View) -> bool {
        if self.last.as_ref() == Some(&view) {
            return true;
        }
        if view.1 {
            log::info!("node {}: {}", self.name, view.2);
        } else {
            log::warn!("node {}: no quorum from corosync: {}", self.name, view.2);
        }
        self.last = Some(view.clone());
        let (members, quorate, detail) = view;
        self.tx
            .send_blocking(Input::Monitor {
                members,
                quorate,
                detail,
            })
            .is_ok()
    }

    fn node_name(&self, id: u32) -> Option<&str> {
        self.nodes
            .iter()
            .find(|(n, _)| *n == id)
            .map(|(_, name)| name.as_str())
    }

    /// One connection to corosync: Ok when stopped (or the main loop is gone), the
    /// reason when corosync cannot be reached or the connection broke.
    fn session(&mut self) -> Result<(), String> {
        SEEN.with(|s| *s.borrow_mut() = Seen::default());
        let model = cpg::ModelData::ModelV1(cpg::Model1Data {
            flags: cpg::Model1Flags::None,
            deliver_fn: None,
            confchg_fn: Some(on_confchg),
            totem_confchg_fn: None,
        });
        let cpg_h = cpg::initialize(&model, 0)
            .map_err(|e| format!("not running or not reachable (CPG: {e})"))?;
        let local = cpg::local_get(&cpg_h).map_err(|e| format!("CPG local node id: {e}"))?;
        if u32::from(local) != self.me {
            return Err(format!(
                "corosync's local node id is {local}, but node {}'s id in the cluster file is {} (they must be equal)",
                self.name, self.me
            ));
        }
        cpg::join(&cpg_h, GROUP).map_err(|e| format!("cannot join CPG group {GROUP}: {e}"))?;
        let callbacks = votequorum::Callbacks {
            quorum_notification_fn: Some(on_quorum),
            nodelist_notification_fn: None,
            expectedvotes_notification_fn: None,
        };
        let vq_h = votequorum::initialize(&callbacks)
            .map_err(|e| format!("votequorum is not available: {e}"))?;
        votequorum::trackstart(&vq_h, 0, TrackFlags::Changes)
            .map_err(|e| format!("votequorum tracking: {e}"))?;
        let cpg_fd = cpg::fd_get(&cpg_h).map_err(|e| format!("CPG fd: {e}"))?;
        let vq_fd = votequorum::fd_get(&vq_h).map_err(|e| format!("votequorum fd: {e}"))?;
        log::info!(
            "node {}: connected to corosync (node id {}), joined CPG group {GROUP}",
            self.name,
            self.me
        );
        while !self.stopped() {
            let mut pfds = [
                libc::pollfd {
                    fd: cpg_fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: vq_fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: `pfds` is a valid array of two pollfd structs that lives
            // across the call, and its length is passed; both descriptors belong
            // to the library's open connections (`cpg_h`, `vq_h`), open until the
            // end of this function.
            let n = unsafe {
                libc::poll(
                    pfds.as_mut_ptr(),
                    pfds.len() as libc::nfds_t,
                    i32::from(POLL_EVERY_MS),
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(format!("poll: {e}"));
            }
            let ready =
                |p: &libc::pollfd| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0;
            if ready(&pfds[0]) {
                cpg::dispatch(&cpg_h, DispatchFlags::All)
                    .map_err(|e| format!("connection lost (CPG: {e})"))?;
            }
            if ready(&pfds[1]) {
                votequorum::dispatch(&vq_h, DispatchFlags::All)
                    .map_err(|e| format!("connection lost (votequorum: {e})"))?;
            }
            let Some(view) = self.view() else {
                continue;
            };
            if !self.report(view) {
                return Ok(());
            }
        }
        Ok(())
    }

    /// The view once both the group's membership and the quorum are known.
    fn view(&self) -> Option<View> {
        let (members, quorate) = SEEN.with(|s| {
            let s = s.borrow();
            Some((s.members.clone()?, s.quorate?))
        })?;
        let known: BTreeSet<NodeId> = members
            .iter()
            .copied()
            .filter(|&id| self.node_name(id).is_some())
            .collect();
        let names: Vec<&str> = known.iter().filter_map(|&id| self.node_name(id)).collect();
        let detail = if quorate {
            format!("corosync: quorate; plexd running on {}", names.join(", "))
        } else {
            format!(
                "corosync: this node's partition is not quorate (plexd running on {})",
                names.join(", ")
            )
        };
        Some((known, quorate, detail))
    }
}
