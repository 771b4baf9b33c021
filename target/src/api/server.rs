//! The kernel interface's RPC server.
//!
//! One control thread (`kernel-api`) runs a `smol::LocalExecutor`: Cap'n Proto RPC
//! objects are `!Send`, so every connection's `RpcSystem` lives on that thread. Target
//! calls that block (most calls broadcast to reactors and wait for their answers) run
//! on `smol::unblock`'s thread pool, so one slow call never stalls other connections.
//! The calls of a transaction's kernel phase do not: a prepare (or quiesce) is
//! started here and its drain awaited here (the last reactor to drain wakes the
//! task), and a commit, abort or resume publishes its end and waits for no
//! reactor, so none of them costs a hop to a pool thread and back.
//!
//! The socket: a stale socket file (nobody answers on it) is removed at start; a live
//! one (another target accepts a connection) is refused. On stop the file is removed
//! if it is still the one this server bound.

use std::cell::Cell;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use capnp_rpc::{rpc_twoparty_capnp, twoparty, RpcSystem};
use futures::AsyncReadExt;
use plexd_proto::kernel_capnp as k;
use smol::{Async, LocalExecutor};

use super::service::{DiagIo, KernelService};
use super::ApiError;
use crate::target::{Event, TargetError};
use crate::volume::DEFAULT_DRAIN_TIMEOUT;
use plexd_target_api::convert::*;

/// Most client connections served at once; further ones are closed at accept.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest drain timeout a client may ask for.
pub const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
/// Longest the server waits for a subscriber's sink to take one event before it
/// ends the subscription.
pub const EVENT_DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept (e.g. out of file descriptors) before the next one.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A running server. Dropping it stops it.
pub struct ServerHandle {
    path: PathBuf,
    ino: u64,
    stop_tx: Option<smol::channel::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

fn socket_err(path: &Path, reason: impl Into<String>) -> TargetError {
    TargetError::Io {
        object: format!("socket {}", path.display()),
        reason: reason.into(),
    }
}

/// Checks that `path` can be served: absent, or a stale socket (removed here).
/// Refuses a socket another live target answers on, and anything that is not a
/// socket. [`ServerHandle::start`] does it too; a binary calls it early to fail
/// before it creates anything.
pub fn clear_stale_socket(path: &Path) -> Result<(), TargetError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(socket_err(path, format!("cannot stat: {e}"))),
    };
    if !meta.file_type().is_socket() {
        return Err(TargetError::invalid(
            format!("socket {}", path.display()),
            "the path exists and is not a socket; refusing to replace it",
        ));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(TargetError::InUse {
            kind: "socket",
            name: path.display().to_string(),
            user:
                "another live target (it accepted a connection); stop it or pick another --socket"
                    .into(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            log::info!("socket {}: removing a stale socket file", path.display());
            std::fs::remove_file(path)
                .map_err(|e| socket_err(path, format!("cannot remove the stale socket: {e}")))
        }
        Err(e) => Err(socket_err(
            path,
            format!("cannot probe the existing socket: {e}"),
        )),
    }
}

impl ServerHandle {
    /// Binds `path` and serves `service` on it from a new control thread.
    pub fn start(service: Arc<KernelService>, path: &Path) -> Result<ServerHandle, TargetError> {
        clear_stale_socket(path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| socket_err(path, format!("cannot create {}: {e}", dir.display())))?;
        }
        let listener =
            UnixListener::bind(path).map_err(|e| socket_err(path, format!("cannot bind: {e}")))?;
        let ino = std::fs::symlink_metadata(path)
            .map(|m| m.ino())
            .map_err(|e| socket_err(path, format!("cannot stat after bind: {e}")))?;
        let listener = Async::new(listener)
            .map_err(|e| socket_err(path, format!("cannot make non-blocking: {e}")))?;
        service.set_socket(&path.to_string_lossy());
        let (stop_tx, stop_rx) = smol::channel::bounded::<()>(1);
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("kernel-api".into())
            .spawn(move || serve(service, listener, stop_rx, shown))
            .map_err(|e| socket_err(path, format!("cannot start the control thread: {e}")))?;
        log::info!("kernel interface: listening on {}", path.display());
        Ok(ServerHandle {
            path: path.to_path_buf(),
            ino,
            stop_tx: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving: closes every connection, joins the control thread, removes the
    /// socket file if it is still ours.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(tx) = self.stop_tx.take() else {
            return;
        };
        drop(tx);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("kernel interface: the control thread panicked");
            }
        }
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if m.ino() == self.ino => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    log::warn!("socket {}: cannot remove: {e}", self.path.display());
                }
            }
            _ => log::warn!(
                "socket {}: replaced by someone else; left in place",
                self.path.display()
            ),
        }
        log::info!("kernel interface: stopped");
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve(
    service: Arc<KernelService>,
    listener: Async<UnixListener>,
    stop_rx: smol::channel::Receiver<()>,
    shown: String,
) {
    let ex = Rc::new(LocalExecutor::new());
    let ex2 = Rc::clone(&ex);
    let accept = async move {
        let active = Rc::new(Cell::new(0usize));
        let mut next_id = 0u64;
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    log::warn!("kernel interface {shown}: accept failed: {e}");
                    smol::Timer::after(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            if active.get() >= MAX_CONNECTIONS {
                log::warn!(
                    "kernel interface {shown}: {MAX_CONNECTIONS} connections open; refusing another"
                );
                continue;
            }
            next_id += 1;
            active.set(active.get() + 1);
            let conn = connection(
                Arc::clone(&service),
                Rc::downgrade(&ex2),
                stream,
                next_id,
                Rc::clone(&active),
            );
            ex2.spawn(conn).detach();
        }
    };
    let stop = async move {
        // Ends when the handle drops its sender.
        let _ = stop_rx.recv().await;
    };
    smol::block_on(ex.run(smol::future::or(accept, stop)));
    // Dropping the executor cancels every connection task: their sockets close.
}

async fn connection(
    service: Arc<KernelService>,
    ex: Weak<LocalExecutor<'static>>,
    stream: Async<UnixStream>,
    id: u64,
    active: Rc<Cell<usize>>,
) {
    struct Leave(Rc<Cell<usize>>);
    impl Drop for Leave {
        fn drop(&mut self) {
            self.0.set(self.0.get().saturating_sub(1));
        }
    }
    let _leave = Leave(active);
    log::debug!("kernel interface: connection {id} open");
    let (reader, writer) = stream.split();
    let network = twoparty::VatNetwork::new(
        futures::io::BufReader::new(reader),
        futures::io::BufWriter::new(writer),
        rpc_twoparty_capnp::Side::Server,
        Default::default(),
    );
    // Dropped when the connection ends: tells this connection's subscriptions to stop.
    let (closed_tx, closed_rx) = smol::channel::bounded::<()>(1);
    let kernel: k::kernel::Client = capnp_rpc::new_client(KernelImpl {
        service,
        ex,
        closed: closed_rx,
        conn: id,
    });
    let rpc = RpcSystem::new(Box::new(network), Some(kernel.client));
    match rpc.await {
        Ok(()) => log::debug!("kernel interface: connection {id} closed"),
        Err(e) => log::info!("kernel interface: connection {id} ended: {e}"),
    }
    drop(closed_tx);
}

/// The `Kernel` capability of one connection. It holds the executor weakly: its
/// tasks hold it, and a strong reference would keep the executor (and every
/// connection) alive after the server stops.
struct KernelImpl {
    service: Arc<KernelService>,
    ex: Weak<LocalExecutor<'static>>,
    closed: smol::channel::Receiver<()>,
    conn: u64,
}

/// Records a failed request once (log) and in the results.
fn fail(conn: u64, method: &str, e: &TargetError, b: k::error::Builder<'_>) {
    fail_api(conn, method, &ApiError::from(e), b);
}

/// [`fail`] for calls whose service answers an [`ApiError`].
fn fail_api(conn: u64, method: &str, e: &ApiError, b: k::error::Builder<'_>) {
    log::warn!("kernel interface: connection {conn}: {method}: {e}");
    set_error(b, e);
}

/// Runs a blocking iSCSI service call off the control thread.
async fn blocking_api<T: Send + 'static>(
    svc: &Arc<KernelService>,
    f: impl FnOnce(&KernelService) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let svc = Arc::clone(svc);
    smol::unblock(move || f(&svc)).await
}

fn drain_timeout(ms: u32) -> Duration {
    if ms == 0 {
        DEFAULT_DRAIN_TIMEOUT
    } else {
        Duration::from_millis(ms as u64).min(MAX_DRAIN_TIMEOUT)
    }
}

/// A prepare or quiesce [`started`](crate::Target::prepare_start) on the control
/// thread, its drain awaited there (the last reactor to drain wakes this task: no
/// thread of the pool in between, nor does the wait hold up other calls) until its
/// deadline, then finished.
async fn drained(
    svc: &KernelService,
    started: Result<crate::volume::Draining, TargetError>,
) -> Result<Duration, TargetError> {
    let d = started?;
    // No timer for a drain that is over (arming one wakes the I/O reactor's thread).
    if !d.is_drained() {
        let deadline = async {
            smol::Timer::at(d.deadline()).await;
        };
        smol::future::or(d.drained(), deadline).await;
    }
    svc.target().prepare_finish(d)
}

/// Runs a blocking service call off the control thread.
async fn blocking<T: Send + 'static>(
    svc: &Arc<KernelService>,
    f: impl FnOnce(&KernelService) -> Result<T, TargetError> + Send + 'static,
) -> Result<T, TargetError> {
    let svc = Arc::clone(svc);
    smol::unblock(move || f(&svc)).await
}

fn text(r: capnp::Result<capnp::text::Reader<'_>>) -> capnp::Result<String> {
    Ok(r?.to_string()?)
}

impl k::kernel::Server for KernelImpl {
    async fn info(
        self: Rc<Self>,
        _: k::kernel::InfoParams,
        mut results: k::kernel::InfoResults,
    ) -> Result<(), capnp::Error> {
        set_info(results.get().init_info(), &self.service.info());
        Ok(())
    }

    async fn create_bdev(
        self: Rc<Self>,
        params: k::kernel::CreateBdevParams,
        mut results: k::kernel::CreateBdevResults,
    ) -> Result<(), capnp::Error> {
        let req = read_bdev_request(params.get()?.get_bdev()?)?;
        match blocking(&self.service, move |s| s.create_bdev(&req)).await {
            Ok(info) => set_bdev_info(results.get().init_info(), &info),
            Err(e) => fail(self.conn, "createBdev", &e, results.get().init_error()),
        }
        Ok(())
    }

    async fn delete_bdev(
        self: Rc<Self>,
        params: k::kernel::DeleteBdevParams,
        mut results: k::kernel::DeleteBdevResults,
    ) -> Result<(), capnp::Error> {
        let name = text(params.get()?.get_name())?;
        if let Err(e) = blocking(&self.service, move |s| s.delete_bdev(&name)).await {
            fail(self.conn, "deleteBdev", &e, results.get().init_error());
        }
        Ok(())
    }

    async fn list_bdevs(
        self: Rc<Self>,
        _: k::kernel::ListBdevsParams,
        mut results: k::kernel::ListBdevsResults,
    ) -> Result<(), capnp::Error> {
        let list = self.service.target().list_bdevs();
        let mut l = results.get().init_bdevs(list.len() as u32);
        for (i, b) in list.iter().enumerate() {
            set_bdev_info(l.reborrow().get(i as u32), b);
        }
        Ok(())
    }

    async fn create_volume(
        self: Rc<Self>,
        params: k::kernel::CreateVolumeParams,
        mut results: k::kernel::CreateVolumeResults,
    ) -> Result<(), capnp::Error> {
        let spec = read_volume_spec(params.get()?.get_spec()?)?;
        match blocking(&self.service, move |s| s.target().create_volume(&spec)).await {
            Ok(info) => set_volume_info(results.get().init_info(), &info),
            Err(e) => fail(self.conn, "createVolume", &e, results.get().init_error()),
        }
        Ok(())
    }

    async fn delete_volume(
        self: Rc<Self>,
        params: k::kernel::DeleteVolumeParams,
        mut results: k::kernel::DeleteVolumeResults,
    ) -> Result<(), capnp::Error> {
        let name = text(params.get()?.get_name())?;
        if let Err(e) = blocking(&self.service, move |s| s.delete_volume(&name)).await {
            fail(self.conn, "deleteVolume", &e, results.get().init_error());
        }
        Ok(())
    }

    async fn list_volumes(
        self: Rc<Self>,
        _: k::kernel::ListVolumesParams,
        mut results: k::kernel::ListVolumesResults,
    ) -> Result<(), capnp::Error> {
        let list = blocking(&self.service, |s| Ok(s.target().list_volumes())).await;
        match list {
            Ok(list) => {
                let mut l = results.get().init_volumes(list.len() as u32);
                for (i, v) in list.iter().enumerate() {
                    set_volume_info(l.reborrow().get(i as u32), v);
                }
            }
            Err(e) => fail(self.conn, "listVolumes", &e, results.get().init_error()),
        }
        Ok(())
    }

    async fn get_volume(
        self: Rc<Self>,
        params: k::kernel::GetVolumeParams,
        mut results: k::kernel::GetVolumeResults,
    ) -> Result<(), capnp::Error> {
        let name = text(params.get()?.get_name())?;
        let r = blocking(&self.service, move |s| {
            let t = s.target();
            Ok((t.volume_info(&name)?, t.volume_spec(&name)?))
        })
        .await;
        match r {
            Ok((info, spec)) => {
                set_volume_info(results.get().init_info(), &info);
                set_volume_spec(results.get().init_spec(), &spec);
            }
            Err(e) => fail(self.conn, "getVolume", &e, results.get().init_error()),
        }
        Ok(())
    }

    async fn prepare(
        self: Rc<Self>,
        params: k::kernel::PrepareParams,
        mut results: k::kernel::PrepareResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let name = text(p.get_volume())?;
        let spec = read_volume_spec(p.get_spec()?)?;
        let timeout = drain_timeout(p.get_drain_timeout_ms());
        let started = self.service.target().prepare_start(&name, &spec, timeout);
        match drained(&self.service, started).await {
            Ok(d) => results.get().set_quiesce_us(d.as_micros() as u64),
            Err(e) => fail(self.conn, "prepare", &e, results.get().init_error()),
        }
        Ok(())
    }

    async fn commit(
        self: Rc<Self>,
        params: k::kernel::CommitParams,
        mut results: k::kernel::CommitResults,
    ) -> Result<(), capnp::Error> {
        let name = text(params.get()?.get_volume())?;
        // On this thread: a commit publishes the layout and waits for no reactor.
        if let Err(e) = self.service.target().commit(&name) {
            fail(self.conn, "commit", &e, results.get().init_error());
        }
        Ok(())
    }

    async fn abort(
        self: Rc<Self>,
        params: k::kernel::AbortParams,
        mut results: k::kernel::AbortResults,
    ) -> Result<(), capnp::Error> {
        let name = text(params.get()?.get_volume())?;
        // On this thread, like a commit: it waits for no reactor.
        if let Err(e) = self.service.target().abort(&name) {
            fail(self.conn, "abort", &e, results.get().init_error());
        }
        Ok(())
    }

    async fn quiesce(
        self: Rc<Self>,
        params: k::kernel::QuiesceParams,
        mut results: k::kernel::QuiesceResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let name = text(p.get_volume())?;
        let timeout = drain_timeout(p.get_drain_timeout_ms());
        let started = self.service.target().quiesce_start(&name, timeout);
        match drained(&self.service, started).await {
            Ok(d) => results.get().set_quiesce_us(d.as_micros() as u64),
            Err(e) => fail(self.conn, "quiesce", &e, results.get().init_error()),
        }
        Ok(())
    }

    async fn resume(
        self: Rc<Self>,
        params: k::kernel::ResumeParams,
        mut results: k::kernel::ResumeResults,
    ) -> Result<(), capnp::Error> {
        let name = text(params.get()?.get_volume())?;
        if let Err(e) = self.service.target().abort(&name) {
            fail(self.conn, "resume", &e, results.get().init_error());
        }
        Ok(())
    }

    async fn set_plex_state(
        self: Rc<Self>,
        params: k::kernel::SetPlexStateParams,
        mut results: k::kernel::SetPlexStateResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let vol = text(p.get_volume())?;
        let plex = text(p.get_plex())?;
        let state = plex_state_from(p.get_state()?);
        if let Err(e) = blocking(&self.service, move |s| {
            s.target().set_plex_state(&vol, &plex, state)
        })
        .await
        {
            fail(self.conn, "setPlexState", &e, results.get().init_error());
        }
        Ok(())
    }

    async fn fail_held_writes(
        self: Rc<Self>,
        params: k::kernel::FailHeldWritesParams,
        mut results: k::kernel::FailHeldWritesResults,
    ) -> Result<(), capnp::Error> {
        let name = text(params.get()?.get_volume())?;
        if let Err(e) = blocking(&self.service, move |s| s.target().fail_held_writes(&name)).await {
            fail(self.conn, "failHeldWrites", &e, results.get().init_error());
        }
        Ok(())
    }

    async fn set_detach_policy(
        self: Rc<Self>,
        params: k::kernel::SetDetachPolicyParams,
        _: k::kernel::SetDetachPolicyResults,
    ) -> Result<(), capnp::Error> {
        let p = detach_policy_from(params.get()?.get_policy()?);
        self.service.target().set_detach_policy(p);
        log::info!(
            "kernel interface: connection {}: detach policy set to {p:?}",
            self.conn
        );
        Ok(())
    }

    async fn inject_error(
        self: Rc<Self>,
        params: k::kernel::InjectErrorParams,
        mut results: k::kernel::InjectErrorResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let name = text(p.get_bdev())?;
        let inj = read_injection(p.get_injection()?)?;
        match self.service.inject_error(&name, inj) {
            Ok(detail) => results.get().set_detail(detail.as_str()),
            Err(e) => fail(self.conn, "injectError", &e, results.get().init_error()),
        }
        Ok(())
    }

    async fn subscribe(
        self: Rc<Self>,
        params: k::kernel::SubscribeParams,
        _: k::kernel::SubscribeResults,
    ) -> Result<(), capnp::Error> {
        let sink = params.get()?.get_sink()?;
        let Some(ex) = self.ex.upgrade() else {
            return Err(capnp::Error::disconnected("the server is stopping".into()));
        };
        let events = self.service.target().subscribe();
        log::info!(
            "kernel interface: connection {}: subscribed to events",
            self.conn
        );
        ex.spawn(forward_events(events, sink, self.closed.clone(), self.conn))
            .detach();
        Ok(())
    }

    async fn io(
        self: Rc<Self>,
        params: k::kernel::IoParams,
        mut results: k::kernel::IoResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let io = DiagIo {
            bdev: text(p.get_bdev())?,
            kind: io_op_from(p.get_op()?),
            offset_bytes: p.get_offset_bytes(),
            len_bytes: p.get_len_bytes() as u64,
            data: p.get_data()?.to_vec(),
            reactor: p.get_reactor() as usize,
            timeout: Duration::from_millis(p.get_timeout_ms() as u64),
        };
        match blocking(&self.service, move |s| s.io(io)).await {
            Ok(r) => {
                let mut b = results.get();
                b.set_status(r.status);
                b.set_data(&r.data);
                b.set_latency_us(r.latency_us);
            }
            Err(e) => fail(self.conn, "io", &e, results.get().init_error()),
        }
        Ok(())
    }

    async fn iscsi_add_portal(
        self: Rc<Self>,
        params: k::kernel::IscsiAddPortalParams,
        mut results: k::kernel::IscsiAddPortalResults,
    ) -> Result<(), capnp::Error> {
        let addr = text(params.get()?.get_addr())?;
        match blocking_api(&self.service, move |s| s.iscsi_add_portal(&addr)).await {
            Ok(bound) => results.get().set_bound(bound.to_string().as_str()),
            Err(e) => fail_api(self.conn, "iscsiAddPortal", &e, results.get().init_error()),
        }
        Ok(())
    }

    async fn iscsi_remove_portal(
        self: Rc<Self>,
        params: k::kernel::IscsiRemovePortalParams,
        mut results: k::kernel::IscsiRemovePortalResults,
    ) -> Result<(), capnp::Error> {
        let addr = text(params.get()?.get_addr())?;
        if let Err(e) = blocking_api(&self.service, move |s| s.iscsi_remove_portal(&addr)).await {
            fail_api(
                self.conn,
                "iscsiRemovePortal",
                &e,
                results.get().init_error(),
            );
        }
        Ok(())
    }

    async fn iscsi_portals(
        self: Rc<Self>,
        _: k::kernel::IscsiPortalsParams,
        mut results: k::kernel::IscsiPortalsResults,
    ) -> Result<(), capnp::Error> {
        // Through the pool: the frontend's lock may be held by a slow call.
        let list = match blocking_api(&self.service, |s| Ok(s.iscsi_portals())).await {
            Ok(l) => l,
            Err(e) => {
                fail_api(self.conn, "iscsiPortals", &e, results.get().init_error());
                return Ok(());
            }
        };
        let mut l = results.get().init_portals(list.len() as u32);
        for (i, p) in list.iter().enumerate() {
            l.set(i as u32, p.to_string().as_str());
        }
        Ok(())
    }

    async fn iscsi_add_target(
        self: Rc<Self>,
        params: k::kernel::IscsiAddTargetParams,
        mut results: k::kernel::IscsiAddTargetResults,
    ) -> Result<(), capnp::Error> {
        let t = read_iscsi_target(params.get()?.get_target()?)?;
        if let Err(e) = blocking_api(&self.service, move |s| s.iscsi_add_target(&t)).await {
            fail_api(self.conn, "iscsiAddTarget", &e, results.get().init_error());
        }
        Ok(())
    }

    async fn iscsi_remove_target(
        self: Rc<Self>,
        params: k::kernel::IscsiRemoveTargetParams,
        mut results: k::kernel::IscsiRemoveTargetResults,
    ) -> Result<(), capnp::Error> {
        let iqn = text(params.get()?.get_iqn())?;
        if let Err(e) = blocking_api(&self.service, move |s| s.iscsi_remove_target(&iqn)).await {
            fail_api(
                self.conn,
                "iscsiRemoveTarget",
                &e,
                results.get().init_error(),
            );
        }
        Ok(())
    }

    async fn iscsi_add_lun(
        self: Rc<Self>,
        params: k::kernel::IscsiAddLunParams,
        mut results: k::kernel::IscsiAddLunResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let iqn = text(p.get_iqn())?;
        let lun = read_iscsi_lun(p.get_lun()?)?;
        if let Err(e) = blocking_api(&self.service, move |s| s.iscsi_add_lun(&iqn, &lun)).await {
            fail_api(self.conn, "iscsiAddLun", &e, results.get().init_error());
        }
        Ok(())
    }

    async fn iscsi_remove_lun(
        self: Rc<Self>,
        params: k::kernel::IscsiRemoveLunParams,
        mut results: k::kernel::IscsiRemoveLunResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let iqn = text(p.get_iqn())?;
        let lun = p.get_lun();
        if let Err(e) = blocking_api(&self.service, move |s| s.iscsi_remove_lun(&iqn, lun)).await {
            fail_api(self.conn, "iscsiRemoveLun", &e, results.get().init_error());
        }
        Ok(())
    }

    async fn nvmf_add_listener(
        self: Rc<Self>,
        params: k::kernel::NvmfAddListenerParams,
        mut results: k::kernel::NvmfAddListenerResults,
    ) -> Result<(), capnp::Error> {
        let addr = text(params.get()?.get_addr())?;
        match blocking_api(&self.service, move |s| s.nvmf_add_listener(&addr)).await {
            Ok(bound) => results.get().set_bound(bound.to_string().as_str()),
            Err(e) => fail_api(self.conn, "nvmfAddListener", &e, results.get().init_error()),
        }
        Ok(())
    }

    async fn nvmf_remove_listener(
        self: Rc<Self>,
        params: k::kernel::NvmfRemoveListenerParams,
        mut results: k::kernel::NvmfRemoveListenerResults,
    ) -> Result<(), capnp::Error> {
        let addr = text(params.get()?.get_addr())?;
        if let Err(e) = blocking_api(&self.service, move |s| s.nvmf_remove_listener(&addr)).await {
            fail_api(
                self.conn,
                "nvmfRemoveListener",
                &e,
                results.get().init_error(),
            );
        }
        Ok(())
    }

    async fn nvmf_add_subsystem(
        self: Rc<Self>,
        params: k::kernel::NvmfAddSubsystemParams,
        mut results: k::kernel::NvmfAddSubsystemResults,
    ) -> Result<(), capnp::Error> {
        let sub = read_subsystem(params.get()?.get_subsystem()?)?;
        if let Err(e) = blocking_api(&self.service, move |s| s.nvmf_add_subsystem(&sub)).await {
            fail_api(
                self.conn,
                "nvmfAddSubsystem",
                &e,
                results.get().init_error(),
            );
        }
        Ok(())
    }

    async fn nvmf_remove_subsystem(
        self: Rc<Self>,
        params: k::kernel::NvmfRemoveSubsystemParams,
        mut results: k::kernel::NvmfRemoveSubsystemResults,
    ) -> Result<(), capnp::Error> {
        let nqn = text(params.get()?.get_nqn())?;
        if let Err(e) = blocking_api(&self.service, move |s| s.nvmf_remove_subsystem(&nqn)).await {
            fail_api(
                self.conn,
                "nvmfRemoveSubsystem",
                &e,
                results.get().init_error(),
            );
        }
        Ok(())
    }

    async fn nvmf_add_namespace(
        self: Rc<Self>,
        params: k::kernel::NvmfAddNamespaceParams,
        mut results: k::kernel::NvmfAddNamespaceResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let nqn = text(p.get_nqn())?;
        let ns = read_namespace(p.get_namespace()?)?;
        if let Err(e) = blocking_api(&self.service, move |s| s.nvmf_add_namespace(&nqn, &ns)).await
        {
            fail_api(
                self.conn,
                "nvmfAddNamespace",
                &e,
                results.get().init_error(),
            );
        }
        Ok(())
    }

    async fn nvmf_remove_namespace(
        self: Rc<Self>,
        params: k::kernel::NvmfRemoveNamespaceParams,
        mut results: k::kernel::NvmfRemoveNamespaceResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let nqn = text(p.get_nqn())?;
        let nsid = p.get_nsid();
        if let Err(e) =
            blocking_api(&self.service, move |s| s.nvmf_remove_namespace(&nqn, nsid)).await
        {
            fail_api(
                self.conn,
                "nvmfRemoveNamespace",
                &e,
                results.get().init_error(),
            );
        }
        Ok(())
    }

    async fn nvmf_set_ana(
        self: Rc<Self>,
        params: k::kernel::NvmfSetAnaParams,
        mut results: k::kernel::NvmfSetAnaResults,
    ) -> Result<(), capnp::Error> {
        let state = ana_from(params.get()?.get_state()?);
        match blocking_api(&self.service, move |s| s.nvmf_set_ana(state)).await {
            Ok(g) => results.get().set_group(g),
            Err(e) => fail_api(self.conn, "nvmfSetAna", &e, results.get().init_error()),
        }
        Ok(())
    }

    async fn nvmf_subsystems(
        self: Rc<Self>,
        _: k::kernel::NvmfSubsystemsParams,
        mut results: k::kernel::NvmfSubsystemsResults,
    ) -> Result<(), capnp::Error> {
        // Through the pool: the frontend's lock may be held by a slow call.
        let (subs, ls) = match blocking_api(&self.service, |s| Ok(s.nvmf_subsystems())).await {
            Ok(x) => x,
            Err(e) => {
                fail_api(self.conn, "nvmfSubsystems", &e, results.get().init_error());
                return Ok(());
            }
        };
        let mut r = results.get();
        {
            let mut l = r.reborrow().init_subsystems(subs.len() as u32);
            for (i, s) in subs.iter().enumerate() {
                set_subsystem(l.reborrow().get(i as u32), s);
            }
        }
        let mut l = r.init_listeners(ls.len() as u32);
        for (i, a) in ls.iter().enumerate() {
            l.set(i as u32, a.to_string().as_str());
        }
        Ok(())
    }

    async fn nvmf_controllers(
        self: Rc<Self>,
        _: k::kernel::NvmfControllersParams,
        mut results: k::kernel::NvmfControllersResults,
    ) -> Result<(), capnp::Error> {
        let list = match blocking_api(&self.service, |s| Ok(s.nvmf_controllers())).await {
            Ok(l) => l,
            Err(e) => {
                fail_api(self.conn, "nvmfControllers", &e, results.get().init_error());
                return Ok(());
            }
        };
        let mut l = results.get().init_controllers(list.len() as u32);
        for (i, c) in list.iter().enumerate() {
            set_controller(l.reborrow().get(i as u32), c);
        }
        Ok(())
    }

    async fn nvmf_start(
        self: Rc<Self>,
        params: k::kernel::NvmfStartParams,
        mut results: k::kernel::NvmfStartResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let (range, group) = ((p.get_cntlid_min(), p.get_cntlid_max()), p.get_ana_group());
        if let Err(e) = blocking_api(&self.service, move |s| s.nvmf_start(range, group)).await {
            fail_api(self.conn, "nvmfStart", &e, results.get().init_error());
        }
        Ok(())
    }

    async fn copy_range(
        self: Rc<Self>,
        params: k::kernel::CopyRangeParams,
        mut results: k::kernel::CopyRangeResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let vol = text(p.get_volume())?;
        let src = text(p.get_source_plex())?;
        let dst = text(p.get_target_plex())?;
        let (off, len) = (p.get_offset_bytes(), u64::from(p.get_len_bytes()));
        if let Err(e) = blocking(&self.service, move |s| {
            s.target().copy_range(&vol, &src, &dst, off, len)
        })
        .await
        {
            fail(self.conn, "copyRange", &e, results.get().init_error());
        }
        Ok(())
    }

    async fn iscsi_set_alua(
        self: Rc<Self>,
        params: k::kernel::IscsiSetAluaParams,
        mut results: k::kernel::IscsiSetAluaResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let iqn = text(p.get_iqn())?;
        let lun = p.get_lun();
        let alua = read_alua(p.get_alua()?)?;
        if let Err(e) =
            blocking_api(&self.service, move |s| s.iscsi_set_alua(&iqn, lun, &alua)).await
        {
            fail_api(self.conn, "iscsiSetAlua", &e, results.get().init_error());
        }
        Ok(())
    }

    async fn set_reservations(
        self: Rc<Self>,
        params: k::kernel::SetReservationsParams,
        mut results: k::kernel::SetReservationsResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let volume = text(p.get_volume())?;
        let state = read_reservations(p.get_state()?)?;
        if let Err(e) =
            blocking_api(&self.service, move |s| s.set_reservations(&volume, &state)).await
        {
            fail_api(self.conn, "setReservations", &e, results.get().init_error());
        }
        Ok(())
    }

    async fn pr_out_done(
        self: Rc<Self>,
        params: k::kernel::PrOutDoneParams,
        mut results: k::kernel::PrOutDoneResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let request = p.get_request();
        let result = pr_out_result_from(p.get_result()?);
        if let Err(e) = blocking_api(&self.service, move |s| s.pr_out_done(request, result)).await {
            fail_api(self.conn, "prOutDone", &e, results.get().init_error());
        }
        Ok(())
    }

    async fn iscsi_allow_initiator(
        self: Rc<Self>,
        params: k::kernel::IscsiAllowInitiatorParams,
        mut results: k::kernel::IscsiAllowInitiatorResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let iqn = text(p.get_iqn())?;
        let ini = text(p.get_initiator())?;
        if let Err(e) =
            blocking_api(&self.service, move |s| s.iscsi_allow_initiator(&iqn, &ini)).await
        {
            fail_api(
                self.conn,
                "iscsiAllowInitiator",
                &e,
                results.get().init_error(),
            );
        }
        Ok(())
    }

    async fn iscsi_deny_initiator(
        self: Rc<Self>,
        params: k::kernel::IscsiDenyInitiatorParams,
        mut results: k::kernel::IscsiDenyInitiatorResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let iqn = text(p.get_iqn())?;
        let ini = text(p.get_initiator())?;
        if let Err(e) =
            blocking_api(&self.service, move |s| s.iscsi_deny_initiator(&iqn, &ini)).await
        {
            fail_api(
                self.conn,
                "iscsiDenyInitiator",
                &e,
                results.get().init_error(),
            );
        }
        Ok(())
    }

    async fn iscsi_set_chap(
        self: Rc<Self>,
        params: k::kernel::IscsiSetChapParams,
        mut results: k::kernel::IscsiSetChapResults,
    ) -> Result<(), capnp::Error> {
        let p = params.get()?;
        let iqn = text(p.get_iqn())?;
        let chap = if p.has_chap() {
            Some(read_iscsi_chap(p.get_chap()?)?)
        } else {
            None
        };
        if let Err(e) = blocking_api(&self.service, move |s| s.iscsi_set_chap(&iqn, chap)).await {
            fail_api(self.conn, "iscsiSetChap", &e, results.get().init_error());
        }
        Ok(())
    }

    async fn iscsi_targets(
        self: Rc<Self>,
        _: k::kernel::IscsiTargetsParams,
        mut results: k::kernel::IscsiTargetsResults,
    ) -> Result<(), capnp::Error> {
        // Through the pool: the frontend's lock may be held by a slow call.
        let list = match blocking_api(&self.service, |s| Ok(s.iscsi_targets())).await {
            Ok(l) => l,
            Err(e) => {
                fail_api(self.conn, "iscsiTargets", &e, results.get().init_error());
                return Ok(());
            }
        };
        let mut l = results.get().init_targets(list.len() as u32);
        for (i, t) in list.iter().enumerate() {
            set_iscsi_target(l.reborrow().get(i as u32), t, Secrets::Withhold);
        }
        Ok(())
    }

    async fn iscsi_sessions(
        self: Rc<Self>,
        _: k::kernel::IscsiSessionsParams,
        mut results: k::kernel::IscsiSessionsResults,
    ) -> Result<(), capnp::Error> {
        // Through the pool: the frontend's lock may be held by a slow call.
        let list = match blocking_api(&self.service, |s| Ok(s.iscsi_sessions())).await {
            Ok(l) => l,
            Err(e) => {
                fail_api(self.conn, "iscsiSessions", &e, results.get().init_error());
                return Ok(());
            }
        };
        let mut l = results.get().init_sessions(list.len() as u32);
        for (i, s) in list.iter().enumerate() {
            set_iscsi_session(l.reborrow().get(i as u32), s);
        }
        Ok(())
    }

    async fn renew_lease(
        self: Rc<Self>,
        params: k::kernel::RenewLeaseParams,
        mut results: k::kernel::RenewLeaseResults,
    ) -> Result<(), capnp::Error> {
        let ms = params.get()?.get_lease_ms();
        // Through the pool: the renewal waits for every reactor to take it.
        match blocking(&self.service, move |s| s.target().renew_lease(ms)).await {
            Ok(was_expired) => results.get().set_was_expired(was_expired),
            Err(e) => fail(self.conn, "renewLease", &e, results.get().init_error()),
        }
        Ok(())
    }

    async fn renew_lease_until(
        self: Rc<Self>,
        params: k::kernel::RenewLeaseUntilParams,
        mut results: k::kernel::RenewLeaseUntilResults,
    ) -> Result<(), capnp::Error> {
        let until_ns = params.get()?.get_until_ns();
        // Through the pool: the renewal waits for every reactor to take it.
        match blocking(&self.service, move |s| {
            s.target().renew_lease_until(until_ns)
        })
        .await
        {
            Ok(was_expired) => results.get().set_was_expired(was_expired),
            Err(e) => fail(self.conn, "renewLeaseUntil", &e, results.get().init_error()),
        }
        Ok(())
    }

    async fn lease_status(
        self: Rc<Self>,
        _: k::kernel::LeaseStatusParams,
        mut results: k::kernel::LeaseStatusResults,
    ) -> Result<(), capnp::Error> {
        let st = self.service.target().lease_status();
        let mut b = results.get();
        b.set_state(lease_state_to(st.state));
        b.set_remaining_ms(st.remaining_ms);
        b.set_expiries(st.expiries);
        Ok(())
    }

    async fn renew_private_lease_until(
        self: Rc<Self>,
        params: k::kernel::RenewPrivateLeaseUntilParams,
        mut results: k::kernel::RenewPrivateLeaseUntilResults,
    ) -> Result<(), capnp::Error> {
        let until_ns = params.get()?.get_until_ns();
        // Through the pool: the renewal waits for every reactor to take it.
        match blocking(&self.service, move |s| {
            s.target().renew_private_lease_until(until_ns)
        })
        .await
        {
            Ok(was_expired) => results.get().set_was_expired(was_expired),
            Err(e) => fail(
                self.conn,
                "renewPrivateLeaseUntil",
                &e,
                results.get().init_error(),
            ),
        }
        Ok(())
    }

    async fn private_lease_status(
        self: Rc<Self>,
        _: k::kernel::PrivateLeaseStatusParams,
        mut results: k::kernel::PrivateLeaseStatusResults,
    ) -> Result<(), capnp::Error> {
        let st = self.service.target().private_lease_status();
        let mut b = results.get();
        b.set_state(lease_state_to(st.state));
        b.set_remaining_ms(st.remaining_ms);
        b.set_expiries(st.expiries);
        Ok(())
    }
}

/// Sends every event to `sink`, one call at a time, until the connection closes, a
/// call fails or takes longer than [`EVENT_DELIVERY_TIMEOUT`].
async fn forward_events(
    events: smol::channel::Receiver<Event>,
    sink: k::event_sink::Client,
    closed: smol::channel::Receiver<()>,
    conn: u64,
) {
    loop {
        let next = smol::future::or(async { events.recv().await.ok() }, async {
            let _ = closed.recv().await;
            None
        })
        .await;
        let Some(ev) = next else {
            break;
        };
        let mut req = sink.event_request();
        set_event(req.get().init_event(), &ev);
        let sent = smol::future::or(async { Some(req.send().promise.await) }, async {
            smol::Timer::after(EVENT_DELIVERY_TIMEOUT).await;
            None
        })
        .await;
        match sent {
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                log::info!("kernel interface: connection {conn}: event sink failed ({e}); subscription ended");
                break;
            }
            None => {
                log::warn!(
                    "kernel interface: connection {conn}: event sink did not answer within {EVENT_DELIVERY_TIMEOUT:?}; subscription ended"
                );
                break;
            }
        }
    }
    log::debug!("kernel interface: connection {conn}: event forwarding stopped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::KernelClient;
    use crate::reactor::PollMode;
    use crate::testutil::TempPath;
    use crate::{Target, TargetConfig};

    fn service() -> Arc<KernelService> {
        let t = Target::start(&TargetConfig::default()).unwrap();
        KernelService::new(t, PollMode::Adaptive)
    }

    #[test]
    fn two_servers_in_one_process_and_an_exclusive_socket() {
        let (a, b) = (service(), service());
        let pa = TempPath::new("srv-a");
        let pb = TempPath::new("srv-b");
        let sa = ServerHandle::start(Arc::clone(&a), &pa.0).unwrap();
        let sb = ServerHandle::start(Arc::clone(&b), &pb.0).unwrap();
        let ka = KernelClient::connect(&pa.0).unwrap();
        let kb = KernelClient::connect(&pb.0).unwrap();
        ka.create_bdev(&crate::api::BdevRequest::null("n0", 1 << 20))
            .unwrap();
        assert_eq!(ka.list_bdevs().unwrap().len(), 1);
        assert!(kb.list_bdevs().unwrap().is_empty());

        // The live socket is refused, naming it.
        let e = ServerHandle::start(Arc::clone(&b), &pa.0).err().unwrap();
        assert!(matches!(e, TargetError::InUse { .. }), "{e}");
        assert!(e.to_string().contains(&pa.0.display().to_string()), "{e}");

        drop(ka);
        sa.stop();
        assert!(!pa.0.exists());
        sb.stop();
        // The client of a stopped server gets a transport error at once, not a hang.
        let t0 = std::time::Instant::now();
        let e = kb.info().unwrap_err();
        assert!(matches!(e, crate::api::ClientError::Rpc { .. }), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    }

    #[test]
    fn a_path_that_is_not_a_socket_is_never_replaced() {
        let p = TempPath::file("srv-file", 10).unwrap();
        let e = ServerHandle::start(service(), &p.0).err().unwrap();
        assert!(matches!(e, TargetError::Invalid { .. }), "{e}");
        assert!(e.to_string().contains("not a socket"), "{e}");
        assert_eq!(std::fs::metadata(&p.0).unwrap().len(), 10);
    }
}
