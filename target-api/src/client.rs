//! A blocking client of the kernel interface, for the coordinator, tools and tests.
//!
//! ```no_run
//! use plexd_target_api::{BdevRequest, KernelClient};
//! let k = KernelClient::connect("/run/plexd/target0.sock")?;
//! k.create_bdev(&BdevRequest::malloc("m0", 64 << 20))?;
//! for b in k.list_bdevs()? {
//!     println!("{} {} bytes", b.name, b.size_bytes);
//! }
//! # Ok::<(), plexd_target_api::ClientError>(())
//! ```
//!
//! Cap'n Proto RPC objects are `!Send`, so each [`KernelClient`] owns one connection
//! thread that runs the `RpcSystem` on a local executor; a blocking method hands its
//! call to that thread and waits (bounded) for the answer. The client itself is `Send`
//! and `Sync`: several threads may call it at once, their calls are in flight together.
//! Dropping the client closes the connection (and ends its event subscriptions).

use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::{mpsc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use futures::future::LocalBoxFuture;
use plexd_proto::connection::{Polled, Stop};
use plexd_proto::kernel_capnp as k;
use smol::{Async, LocalExecutor};

use crate::bdev::{BdevInfo, BdevRequest, Injection, IoKind, IoResult};
use crate::convert::*;
use crate::error::{ApiError, ErrorCode};
use crate::info::{DetachPolicy, Event, LeaseStatus, TargetInfo, EVENT_QUEUE_DEPTH};
use crate::inline::Inline;
use crate::iscsi::{ChapConfig, LunConfig, SessionInfo, TargetNodeConfig};
use crate::nvmf::{AnaState, ControllerInfo, NamespaceConfig, SubsystemConfig};
use crate::scsi::alua::Alua;
use crate::scsi::pr::PrState;
use crate::scsi::PrOutResult;
use crate::volume::{PlexState, VolumeInfo, VolumeSpec};

/// How long a call waits for its answer by default (a prepare adds its drain timeout).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two connection attempts of [`KernelClient::connect_timeout`].
const CONNECT_RETRY_INTERVAL: Duration = Duration::from_millis(20);
/// Calls queued for the connection thread before callers wait.
const JOB_QUEUE_DEPTH: usize = 256;

/// Why a client call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The target refused the request (typed; the text names the object).
    #[error("{0}")]
    Api(ApiError),
    /// The socket could not be reached.
    #[error("kernel interface {path}: cannot connect: {reason}")]
    Connect {
        /// The socket.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The RPC failed (connection lost, malformed answer).
    #[error("kernel interface {path}: {reason}")]
    Rpc {
        /// The socket.
        path: String,
        /// What happened.
        reason: String,
    },
    /// No answer in time.
    #[error("kernel interface {path}: {method}: no answer within {timeout_ms} ms")]
    Timeout {
        /// The socket.
        path: String,
        /// The method.
        method: String,
        /// The wait.
        timeout_ms: u64,
    },
}

impl ClientError {
    /// The target's error code, when the target refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api(e) => Some(e.code),
            _ => None,
        }
    }
}

type Job = Box<dyn FnOnce(&k::kernel::Client) -> LocalBoxFuture<'static, ()> + Send>;

/// A connection to a target's kernel interface.
pub struct KernelClient {
    path: String,
    jobs: Option<smol::channel::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    /// Instead of `jobs`/`thread` for [`KernelClient::connect_inline`].
    inline: Option<Mutex<Inline>>,
    call_timeout: Duration,
}

/// Events from a [`KernelClient::subscribe`], in order. Dropping it (or the client)
/// ends the subscription.
pub struct Subscription {
    rx: smol::channel::Receiver<Event>,
}

impl Subscription {
    /// The next event, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        smol::block_on(smol::future::or(
            async { self.rx.recv().await.ok() },
            async {
                smol::Timer::after(timeout).await;
                None
            },
        ))
    }

    /// The next event if one is queued.
    pub fn try_recv(&self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// The channel itself, for async users.
    pub fn receiver(&self) -> &smol::channel::Receiver<Event> {
        &self.rx
    }
}

struct Sink {
    tx: smol::channel::Sender<Event>,
}

impl k::event_sink::Server for Sink {
    async fn event(
        self: Rc<Self>,
        params: k::event_sink::EventParams,
        _: k::event_sink::EventResults,
    ) -> Result<(), capnp::Error> {
        let ev = read_event(params.get()?.get_event()?)?;
        match self.tx.try_send(ev) {
            Ok(()) => Ok(()),
            Err(smol::channel::TrySendError::Full(ev)) => {
                log::warn!("kernel client: event queue full ({EVENT_QUEUE_DEPTH}); dropped {ev:?}");
                Ok(())
            }
            Err(smol::channel::TrySendError::Closed(_)) => {
                Err(capnp::Error::failed("subscriber gone".into()))
            }
        }
    }
}

/// The result of an RPC whose results carry `error :Error`.
fn check(
    path: &str,
    has_error: bool,
    err: impl FnOnce() -> capnp::Result<ApiError>,
) -> Result<(), ClientError> {
    if !has_error {
        return Ok(());
    }
    Err(match err() {
        Ok(e) => ClientError::Api(e),
        Err(e) => rpc_err(path, e),
    })
}

fn parse_addr(path: &str, s: &str) -> Result<SocketAddr, ClientError> {
    s.parse().map_err(|e| ClientError::Rpc {
        path: path.to_string(),
        reason: format!("the target answered a bad portal address {s:?}: {e}"),
    })
}

/// A `leaseStatus` or `privateLeaseStatus` answer's fields.
fn lease_status_of(
    path: &str,
    state: Result<k::LeaseState, capnp::NotInSchema>,
    remaining_ms: u64,
    expiries: u64,
) -> Result<LeaseStatus, ClientError> {
    Ok(LeaseStatus {
        state: lease_state_from(state.map_err(|e| rpc_err(path, e.into()))?),
        remaining_ms,
        expiries,
    })
}

fn rpc_err(path: &str, e: capnp::Error) -> ClientError {
    ClientError::Rpc {
        path: path.to_string(),
        reason: e.to_string(),
    }
}

/// The body of a blocking method: sends request `$req` on the connection thread
/// (its parameters set by `$set` on `$rq`), waits up to the call timeout (or
/// `within $timeout`) and turns an `error` in the results into [`ClientError::Api`].
/// Then, with the results' reader `$r`: nothing (`Ok(())`), `$read` (a
/// `capnp::Result`), or `$body` (with the socket path `$path`; a `Result<_,
/// ClientError>`).
macro_rules! rpc {
    ($self:ident, $method:literal, $req:ident, |$rq:ident| $set:block) => {
        rpc!($self, $method within $self.call_timeout, $req, |$rq| $set, |_r, _path| { Ok(()) })
    };
    ($self:ident, $method:literal, $req:ident, |$rq:ident| $set:block, |$r:ident| $read:expr) => {
        rpc!($self, $method within $self.call_timeout, $req, |$rq| $set, |$r, path| {
            $read.map_err(|e| rpc_err(&path, e))
        })
    };
    ($self:ident, $method:literal, $req:ident, |$rq:ident| $set:block,
     |$r:ident, $path:ident| $body:block) => {
        rpc!($self, $method within $self.call_timeout, $req, |$rq| $set, |$r, $path| $body)
    };
    ($self:ident, $method:literal within $timeout:expr, $req:ident, |$rq:ident| $set:block,
     |$r:ident, $path:ident| $body:block) => {
        $self.call($method, $timeout, move |kc, $path| {
            Box::pin(async move {
                #[allow(unused_mut)]
                let mut $rq = kc.$req();
                $set
                let resp = $rq.send().promise.await.map_err(|e| rpc_err(&$path, e))?;
                let $r = resp.get().map_err(|e| rpc_err(&$path, e))?;
                check(&$path, $r.has_error(), || read_error($r.get_error()?))?;
                $body
            })
        })
    };
}

/// Generates a blocking method for a call that takes a volume or bdev name and
/// returns nothing but a possible error.
macro_rules! name_call {
    ($(#[$doc:meta])* $fn:ident, $req:ident, $setter:ident, $method:literal) => {
        $(#[$doc])*
        pub fn $fn(&self, name: &str) -> Result<(), ClientError> {
            let name = name.to_string();
            rpc!(self, $method, $req, |rq| {
                rq.get().$setter(name.as_str());
            })
        }
    };
}

impl KernelClient {
    /// Connects to the target serving on `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<KernelClient, ClientError> {
        let (stream, shown) = dial(path.as_ref())?;
        let connect_err = |reason: String| connect_error(&shown, reason);
        let stream = Async::new(stream).map_err(|e| connect_err(e.to_string()))?;
        let (jobs_tx, jobs_rx) = smol::channel::bounded::<Job>(JOB_QUEUE_DEPTH);
        let thread = std::thread::Builder::new()
            .name("kernel-client".into())
            .spawn(move || run_connection(stream, jobs_rx))
            .map_err(|e| connect_err(format!("cannot start the connection thread: {e}")))?;
        Ok(KernelClient {
            path: shown,
            jobs: Some(jobs_tx),
            thread: Some(thread),
            inline: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
        })
    }

    /// Connects to the target serving on `path` without a connection thread: a
    /// call runs the connection on the calling thread until its answer, which
    /// wakes that thread directly (it waits in `poll(2)` on the socket). One call
    /// at a time (others wait their turn). For one caller on a latency path, the
    /// coordinator's driver. It cannot [`KernelClient::subscribe`]: nothing reads
    /// the connection between calls.
    pub fn connect_inline(path: impl AsRef<Path>) -> Result<KernelClient, ClientError> {
        let (stream, shown) = dial(path.as_ref())?;
        let connect_err = |reason: String| connect_error(&shown, reason);
        let (polled, socket) = Polled::new(stream).map_err(|e| connect_err(e.to_string()))?;
        let (rpc, kernel) = plexd_proto::connection::client::<k::kernel::Client>(socket);
        let rpc = async move {
            if let Err(e) = rpc.await {
                log::info!("kernel client: connection ended: {e}");
            }
        };
        Ok(KernelClient {
            path: shown,
            jobs: None,
            thread: None,
            inline: Some(Mutex::new(Inline::new(polled, rpc, kernel))),
            call_timeout: DEFAULT_CALL_TIMEOUT,
        })
    }

    /// Connects to `path`, retrying while the socket is absent or refuses (a target
    /// that is still starting), for at most `timeout`.
    pub fn connect_timeout(
        path: impl AsRef<Path>,
        timeout: Duration,
    ) -> Result<KernelClient, ClientError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match KernelClient::connect(path.as_ref()) {
                Ok(c) => return Ok(c),
                Err(e) if std::time::Instant::now() >= deadline => return Err(e),
                Err(_) => std::thread::sleep(CONNECT_RETRY_INTERVAL),
            }
        }
    }

    /// The socket path.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Changes how long calls wait for their answer.
    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.call_timeout = timeout;
    }

    /// Runs `f` on the connection thread and waits up to `timeout` for its result.
    fn call<T: Send + 'static>(
        &self,
        method: &str,
        timeout: Duration,
        f: impl FnOnce(k::kernel::Client, String) -> LocalBoxFuture<'static, Result<T, ClientError>>
            + Send
            + 'static,
    ) -> Result<T, ClientError> {
        if let Some(inline) = &self.inline {
            return self.call_inline(inline, method, timeout, f);
        }
        let (tx, rx) = mpsc::sync_channel(1);
        let path = self.path.clone();
        let job: Job = Box::new(move |kc: &k::kernel::Client| {
            let fut = f(kc.clone(), path);
            Box::pin(async move {
                let _ = tx.send(fut.await);
            })
        });
        let closed = || ClientError::Rpc {
            path: self.path.clone(),
            reason: format!("{method}: the connection is closed"),
        };
        let jobs = self.jobs.as_ref().ok_or_else(closed)?;
        jobs.send_blocking(job).map_err(|_| closed())?;
        match rx.recv_timeout(timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(ClientError::Timeout {
                path: self.path.clone(),
                method: method.to_string(),
                timeout_ms: timeout.as_millis() as u64,
            }),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(closed()),
        }
    }

    /// [`KernelClient::call`] of an inline client: the connection runs on this
    /// thread until the answer or `timeout`.
    fn call_inline<T>(
        &self,
        inline: &Mutex<Inline>,
        method: &str,
        timeout: Duration,
        f: impl FnOnce(k::kernel::Client, String) -> LocalBoxFuture<'static, Result<T, ClientError>>,
    ) -> Result<T, ClientError> {
        let deadline = std::time::Instant::now() + timeout;
        let conn = inline.lock().unwrap_or_else(|p| p.into_inner());
        let call = f(conn.kernel.clone(), self.path.clone());
        match conn.run(call, deadline) {
            Ok(r) => r,
            Err(Stop::Deadline) => Err(ClientError::Timeout {
                path: self.path.clone(),
                method: method.to_string(),
                timeout_ms: timeout.as_millis() as u64,
            }),
            Err(Stop::Poll(e)) => Err(ClientError::Rpc {
                path: self.path.clone(),
                reason: format!("{method}: cannot wait for the socket: {e}"),
            }),
            Err(Stop::HungUp) => Err(ClientError::Rpc {
                path: self.path.clone(),
                reason: format!("{method}: the connection was closed"),
            }),
        }
    }

    /// What the target is: reactors, cores, poll mode, hugepages, version.
    pub fn info(&self) -> Result<TargetInfo, ClientError> {
        self.call("info", self.call_timeout, |kc, path| {
            Box::pin(async move {
                let resp = kc
                    .info_request()
                    .send()
                    .promise
                    .await
                    .map_err(|e| rpc_err(&path, e))?;
                let r = resp.get().map_err(|e| rpc_err(&path, e))?;
                r.get_info()
                    .and_then(read_info)
                    .map_err(|e| rpc_err(&path, e))
            })
        })
    }

    /// Creates a bdev.
    pub fn create_bdev(&self, req: &BdevRequest) -> Result<BdevInfo, ClientError> {
        let req = req.clone();
        rpc!(
            self,
            "createBdev",
            create_bdev_request,
            |rq| {
                set_bdev_request(rq.get().init_bdev(), &req);
            },
            |r| r.get_info().and_then(read_bdev_info)
        )
    }

    name_call!(
        /// Deletes a bdev no volume or error bdev uses.
        delete_bdev, delete_bdev_request, set_name, "deleteBdev"
    );

    /// Every bdev (volumes included, as kind `volume`).
    pub fn list_bdevs(&self) -> Result<Vec<BdevInfo>, ClientError> {
        rpc!(self, "listBdevs", list_bdevs_request, |rq| {}, |r, path| {
            let list = r.get_bdevs().map_err(|e| rpc_err(&path, e))?;
            list.iter()
                .map(read_bdev_info)
                .collect::<capnp::Result<Vec<_>>>()
                .map_err(|e| rpc_err(&path, e))
        })
    }

    /// Creates a volume.
    pub fn create_volume(&self, spec: &VolumeSpec) -> Result<VolumeInfo, ClientError> {
        let spec = spec.clone();
        rpc!(
            self,
            "createVolume",
            create_volume_request,
            |rq| {
                set_volume_spec(rq.get().init_spec(), &spec);
            },
            |r| r.get_info().and_then(read_volume_info)
        )
    }

    name_call!(
        /// Deletes a volume with no I/O in flight.
        delete_volume, delete_volume_request, set_name, "deleteVolume"
    );

    /// Every volume with its plexes and stats.
    pub fn list_volumes(&self) -> Result<Vec<VolumeInfo>, ClientError> {
        rpc!(
            self,
            "listVolumes",
            list_volumes_request,
            |rq| {},
            |r, path| {
                let list = r.get_volumes().map_err(|e| rpc_err(&path, e))?;
                list.iter()
                    .map(read_volume_info)
                    .collect::<capnp::Result<Vec<_>>>()
                    .map_err(|e| rpc_err(&path, e))
            }
        )
    }

    /// One volume: its state and stats, and its committed layout.
    pub fn get_volume(&self, name: &str) -> Result<(VolumeInfo, VolumeSpec), ClientError> {
        let name = name.to_string();
        rpc!(
            self,
            "getVolume",
            get_volume_request,
            |rq| {
                rq.get().set_name(name.as_str());
            },
            |r, path| {
                let info = r
                    .get_info()
                    .and_then(read_volume_info)
                    .map_err(|e| rpc_err(&path, e))?;
                let spec = r
                    .get_spec()
                    .and_then(read_volume_spec)
                    .map_err(|e| rpc_err(&path, e))?;
                Ok((info, spec))
            }
        )
    }

    /// Quiesces `volume` and stages `spec`; returns the time it took to drain.
    pub fn prepare(
        &self,
        volume: &str,
        spec: &VolumeSpec,
        drain_timeout: Duration,
    ) -> Result<Duration, ClientError> {
        let volume = volume.to_string();
        let spec = spec.clone();
        let ms = drain_timeout.as_millis().min(u32::MAX as u128) as u32;
        rpc!(self, "prepare" within self.call_timeout + drain_timeout, prepare_request, |rq| {
            rq.get().set_volume(volume.as_str());
            rq.get().set_drain_timeout_ms(ms);
            set_volume_spec(rq.get().init_spec(), &spec);
        }, |r, _path| {
            Ok(Duration::from_micros(r.get_quiesce_us()))
        })
    }

    name_call!(
        /// Applies the staged layout and resumes I/O.
        commit, commit_request, set_volume, "commit"
    );
    name_call!(
        /// Drops the staged layout and resumes I/O.
        abort, abort_request, set_volume, "abort"
    );
    name_call!(
        /// Ends a quiesce (the same as abort).
        resume, resume_request, set_volume, "resume"
    );
    name_call!(
        /// Fails the writes held for a failed plex.
        fail_held_writes, fail_held_writes_request, set_volume, "failHeldWrites"
    );

    /// Quiesces `volume` without a layout change; returns the time it took to drain.
    pub fn quiesce(&self, volume: &str, drain_timeout: Duration) -> Result<Duration, ClientError> {
        let volume = volume.to_string();
        let ms = drain_timeout.as_millis().min(u32::MAX as u128) as u32;
        rpc!(self, "quiesce" within self.call_timeout + drain_timeout, quiesce_request, |rq| {
            rq.get().set_volume(volume.as_str());
            rq.get().set_drain_timeout_ms(ms);
        }, |r, _path| {
            Ok(Duration::from_micros(r.get_quiesce_us()))
        })
    }

    /// Changes a plex's state (detach, attach).
    pub fn set_plex_state(
        &self,
        volume: &str,
        plex: &str,
        state: PlexState,
    ) -> Result<(), ClientError> {
        let (volume, plex) = (volume.to_string(), plex.to_string());
        rpc!(self, "setPlexState", set_plex_state_request, |rq| {
            rq.get().set_volume(volume.as_str());
            rq.get().set_plex(plex.as_str());
            rq.get().set_state(plex_state_to(state));
        })
    }

    /// Copies `[offset_bytes, offset_bytes + len_bytes)` of `volume` from plex
    /// `source` (ACTIVE) to plex `target` (SYNCING) inside the data plane (one chunk of
    /// a resync, at most 1 MiB). Does not quiesce: the caller holds the cluster's
    /// fence, and the target refuses (`invalid`) unless the volume is quiesced there.
    pub fn copy_range(
        &self,
        volume: &str,
        source: &str,
        target: &str,
        offset_bytes: u64,
        len_bytes: u32,
    ) -> Result<(), ClientError> {
        let (volume, source, target) = (volume.to_string(), source.to_string(), target.to_string());
        rpc!(self, "copyRange", copy_range_request, |rq| {
            rq.get().set_volume(volume.as_str());
            rq.get().set_source_plex(source.as_str());
            rq.get().set_target_plex(target.as_str());
            rq.get().set_offset_bytes(offset_bytes);
            rq.get().set_len_bytes(len_bytes);
        })
    }

    /// Sets what the target does on a plex write error.
    pub fn set_detach_policy(&self, policy: DetachPolicy) -> Result<(), ClientError> {
        rpc!(self, "setDetachPolicy", set_detach_policy_request, |rq| {
            rq.get().set_policy(detach_policy_to(policy));
        })
    }

    /// Injects a fault into an `error` bdev; returns its injection state.
    pub fn inject_error(&self, bdev: &str, inj: Injection) -> Result<String, ClientError> {
        let bdev = bdev.to_string();
        rpc!(
            self,
            "injectError",
            inject_error_request,
            |rq| {
                rq.get().set_bdev(bdev.as_str());
                set_injection(rq.get().init_injection(), &inj);
            },
            |r, path| {
                r.get_detail()
                    .and_then(|d| Ok(d.to_string()?))
                    .map_err(|e| rpc_err(&path, e))
            }
        )
    }

    /// Subscribes to the target's events (from now on).
    pub fn subscribe(&self) -> Result<Subscription, ClientError> {
        if self.inline.is_some() {
            return Err(ClientError::Rpc {
                path: self.path.clone(),
                reason: "subscribe: an inline client reads no events between its calls; \
                         subscribe on a client made by KernelClient::connect"
                    .into(),
            });
        }
        let (tx, rx) = smol::channel::bounded(EVENT_QUEUE_DEPTH);
        self.call("subscribe", self.call_timeout, move |kc, path| {
            Box::pin(async move {
                let sink: k::event_sink::Client = capnp_rpc::new_client(Sink { tx });
                let mut rq = kc.subscribe_request();
                rq.get().set_sink(sink);
                let resp = rq.send().promise.await.map_err(|e| rpc_err(&path, e))?;
                let r = resp.get().map_err(|e| rpc_err(&path, e))?;
                check(&path, r.has_error(), || read_error(r.get_error()?))
            })
        })?;
        Ok(Subscription { rx })
    }

    /// One diagnostic I/O (at most [`crate::MAX_IO_BYTES`]) on reactor `reactor`.
    /// A failed I/O is `Ok` with `status` set to its errno.
    pub fn io(
        &self,
        bdev: &str,
        kind: IoKind,
        offset_bytes: u64,
        len_bytes: u32,
        data: &[u8],
        reactor: u32,
    ) -> Result<IoResult, ClientError> {
        let Some(op) = io_op_to(kind) else {
            return Err(ClientError::Api(ApiError {
                code: ErrorCode::Invalid,
                object: format!("bdev {bdev}"),
                reason: format!("{kind:?} is not a diagnostic I/O"),
            }));
        };
        let bdev = bdev.to_string();
        let data = data.to_vec();
        let timeout_ms = self.call_timeout.as_millis().min(u32::MAX as u128) as u32;
        rpc!(self, "io" within self.call_timeout * 2, io_request, |rq| {
            let mut p = rq.get();
            p.set_bdev(bdev.as_str());
            p.set_op(op);
            p.set_offset_bytes(offset_bytes);
            p.set_len_bytes(len_bytes);
            p.set_data(&data);
            p.set_reactor(reactor);
            p.set_timeout_ms(timeout_ms);
        }, |r, path| {
            Ok(IoResult {
                status: r.get_status(),
                data: r.get_data().map_err(|e| rpc_err(&path, e))?.to_vec(),
                latency_us: r.get_latency_us(),
            })
        })
    }

    /// Writes `data` at `offset_bytes` of `bdev` on reactor 0; returns 0 or the errno.
    pub fn write(&self, bdev: &str, offset_bytes: u64, data: &[u8]) -> Result<i32, ClientError> {
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        Ok(self
            .io(bdev, IoKind::Write, offset_bytes, len, data, 0)?
            .status)
    }

    // ---- iSCSI frontend ----

    /// Listens on `addr` (`ip:port`; port 0 picks a free port) and returns the
    /// bound address. Starts the iSCSI frontend if the target has none running.
    pub fn iscsi_add_portal(&self, addr: &str) -> Result<SocketAddr, ClientError> {
        let addr = addr.to_string();
        rpc!(
            self,
            "iscsiAddPortal",
            iscsi_add_portal_request,
            |rq| {
                rq.get().set_addr(addr.as_str());
            },
            |r, path| {
                let bound = r
                    .get_bound()
                    .and_then(|b| Ok(b.to_string()?))
                    .map_err(|e| rpc_err(&path, e))?;
                parse_addr(&path, &bound)
            }
        )
    }

    /// Stops listening on `addr` (established sessions stay).
    pub fn iscsi_remove_portal(&self, addr: &str) -> Result<(), ClientError> {
        let addr = addr.to_string();
        rpc!(
            self,
            "iscsiRemovePortal",
            iscsi_remove_portal_request,
            |rq| {
                rq.get().set_addr(addr.as_str());
            }
        )
    }

    /// The portals listening now (empty when no frontend runs).
    pub fn iscsi_portals(&self) -> Result<Vec<SocketAddr>, ClientError> {
        rpc!(
            self,
            "iscsiPortals",
            iscsi_portals_request,
            |rq| {},
            |r, path| {
                let list = r.get_portals().map_err(|e| rpc_err(&path, e))?;
                let mut out = Vec::with_capacity(list.len() as usize);
                for p in list.iter() {
                    let p = p
                        .and_then(|p| Ok(p.to_string()?))
                        .map_err(|e| rpc_err(&path, e))?;
                    out.push(parse_addr(&path, &p)?);
                }
                Ok(out)
            }
        )
    }

    /// Exports a target node with its LUNs, ACL and CHAP (starting the frontend,
    /// without a portal, if none runs). `exists` when the IQN is exported already.
    pub fn iscsi_add_target(&self, t: &TargetNodeConfig) -> Result<(), ClientError> {
        let t = t.clone();
        rpc!(self, "iscsiAddTarget", iscsi_add_target_request, |rq| {
            set_iscsi_target(rq.get().init_target(), &t, Secrets::Send);
        })
    }

    /// Removes a target node and closes its sessions.
    pub fn iscsi_remove_target(&self, iqn: &str) -> Result<(), ClientError> {
        let iqn = iqn.to_string();
        rpc!(
            self,
            "iscsiRemoveTarget",
            iscsi_remove_target_request,
            |rq| {
                rq.get().set_iqn(iqn.as_str());
            }
        )
    }

    /// Maps a LUN of target `iqn` to a bdev or volume: `exists` when the number is
    /// taken, `notFound` when the bdev does not exist.
    pub fn iscsi_add_lun(&self, iqn: &str, lun: &LunConfig) -> Result<(), ClientError> {
        let (iqn, lun) = (iqn.to_string(), lun.clone());
        rpc!(self, "iscsiAddLun", iscsi_add_lun_request, |rq| {
            rq.get().set_iqn(iqn.as_str());
            set_iscsi_lun(rq.get().init_lun(), &lun);
        })
    }

    /// Unmaps LUN `lun` of target `iqn`.
    pub fn iscsi_remove_lun(&self, iqn: &str, lun: u64) -> Result<(), ClientError> {
        let iqn = iqn.to_string();
        rpc!(self, "iscsiRemoveLun", iscsi_remove_lun_request, |rq| {
            rq.get().set_iqn(iqn.as_str());
            rq.get().set_lun(lun);
        })
    }

    /// Replaces the ALUA view (port groups and states) of LUN `lun` of target `iqn`.
    pub fn iscsi_set_alua(&self, iqn: &str, lun: u64, alua: &Alua) -> Result<(), ClientError> {
        let (iqn, alua) = (iqn.to_string(), alua.clone());
        rpc!(self, "iscsiSetAlua", iscsi_set_alua_request, |rq| {
            rq.get().set_iqn(iqn.as_str());
            rq.get().set_lun(lun);
            set_alua(rq.get().init_alua(), &alua);
        })
    }

    /// Gives shared volume `volume` the committed reservations `state` (every LUN
    /// of it whose reservations the cluster keeps, and LUNs mapped later).
    pub fn set_reservations(&self, volume: &str, state: &PrState) -> Result<(), ClientError> {
        let (volume, state) = (volume.to_string(), state.clone());
        rpc!(self, "setReservations", set_reservations_request, |rq| {
            rq.get().set_volume(volume.as_str());
            set_reservations(rq.get().init_state(), &state);
        })
    }

    /// Answers the PR OUT request `request` (an [`Event::PrOut`]) with `result`.
    pub fn pr_out_done(&self, request: u64, result: PrOutResult) -> Result<(), ClientError> {
        rpc!(self, "prOutDone", pr_out_done_request, |rq| {
            rq.get().set_request(request);
            rq.get().set_result(pr_out_result_to(result));
        })
    }

    /// Allows `initiator` on target `iqn` (a non-empty allow list admits only its
    /// initiators) and takes it off the deny list.
    pub fn iscsi_allow_initiator(&self, iqn: &str, initiator: &str) -> Result<(), ClientError> {
        let (iqn, ini) = (iqn.to_string(), initiator.to_string());
        rpc!(
            self,
            "iscsiAllowInitiator",
            iscsi_allow_initiator_request,
            |rq| {
                rq.get().set_iqn(iqn.as_str());
                rq.get().set_initiator(ini.as_str());
            }
        )
    }

    /// Denies `initiator` on target `iqn` (deny wins over allow) and closes its
    /// sessions there.
    pub fn iscsi_deny_initiator(&self, iqn: &str, initiator: &str) -> Result<(), ClientError> {
        let (iqn, ini) = (iqn.to_string(), initiator.to_string());
        rpc!(
            self,
            "iscsiDenyInitiator",
            iscsi_deny_initiator_request,
            |rq| {
                rq.get().set_iqn(iqn.as_str());
                rq.get().set_initiator(ini.as_str());
            }
        )
    }

    /// Sets the CHAP secrets of target `iqn`, or clears them with `None` (new logins).
    pub fn iscsi_set_chap(&self, iqn: &str, chap: Option<&ChapConfig>) -> Result<(), ClientError> {
        let (iqn, chap) = (iqn.to_string(), chap.cloned());
        rpc!(self, "iscsiSetChap", iscsi_set_chap_request, |rq| {
            rq.get().set_iqn(iqn.as_str());
            if let Some(c) = &chap {
                set_iscsi_chap(rq.get().init_chap(), c, Secrets::Send);
            }
        })
    }

    /// The exported target nodes. CHAP secrets are never sent back: `secret` is
    /// empty, `mutual_secret` is `Some("")` when one is set.
    pub fn iscsi_targets(&self) -> Result<Vec<TargetNodeConfig>, ClientError> {
        rpc!(
            self,
            "iscsiTargets",
            iscsi_targets_request,
            |rq| {},
            |r, path| {
                let list = r.get_targets().map_err(|e| rpc_err(&path, e))?;
                list.iter()
                    .map(read_iscsi_target)
                    .collect::<capnp::Result<Vec<_>>>()
                    .map_err(|e| rpc_err(&path, e))
            }
        )
    }

    /// The sessions (discovery ones included) with their connection's reactor,
    /// peer and counters.
    pub fn iscsi_sessions(&self) -> Result<Vec<SessionInfo>, ClientError> {
        rpc!(
            self,
            "iscsiSessions",
            iscsi_sessions_request,
            |rq| {},
            |r, path| {
                let list = r.get_sessions().map_err(|e| rpc_err(&path, e))?;
                list.iter()
                    .map(read_iscsi_session)
                    .collect::<capnp::Result<Vec<_>>>()
                    .map_err(|e| rpc_err(&path, e))
            }
        )
    }

    // ---- NVMe-oF/TCP frontend ----

    /// Listens on `addr` (`ip:port`; port 0 picks one) and returns the bound
    /// address. Starts the NVMe-oF frontend if the target has none running.
    pub fn nvmf_add_listener(&self, addr: &str) -> Result<SocketAddr, ClientError> {
        let addr = addr.to_string();
        rpc!(
            self,
            "nvmfAddListener",
            nvmf_add_listener_request,
            |rq| {
                rq.get().set_addr(addr.as_str());
            },
            |r, path| {
                let bound = r
                    .get_bound()
                    .and_then(|b| Ok(b.to_string()?))
                    .map_err(|e| rpc_err(&path, e))?;
                parse_addr(&path, &bound)
            }
        )
    }

    /// Stops listening on `addr` (established connections stay).
    pub fn nvmf_remove_listener(&self, addr: &str) -> Result<(), ClientError> {
        let addr = addr.to_string();
        rpc!(
            self,
            "nvmfRemoveListener",
            nvmf_remove_listener_request,
            |rq| {
                rq.get().set_addr(addr.as_str());
            }
        )
    }

    /// Exports a subsystem with its namespaces (starting the frontend, without a
    /// listener, if none runs). `exists` when the NQN is exported already.
    pub fn nvmf_add_subsystem(&self, sub: &SubsystemConfig) -> Result<(), ClientError> {
        let sub = sub.clone();
        rpc!(self, "nvmfAddSubsystem", nvmf_add_subsystem_request, |rq| {
            set_subsystem(rq.get().init_subsystem(), &sub);
        })
    }

    /// Removes a subsystem; its controllers are dropped.
    pub fn nvmf_remove_subsystem(&self, nqn: &str) -> Result<(), ClientError> {
        let nqn = nqn.to_string();
        rpc!(
            self,
            "nvmfRemoveSubsystem",
            nvmf_remove_subsystem_request,
            |rq| {
                rq.get().set_nqn(nqn.as_str());
            }
        )
    }

    /// Adds a namespace to subsystem `nqn`.
    pub fn nvmf_add_namespace(&self, nqn: &str, ns: &NamespaceConfig) -> Result<(), ClientError> {
        let (nqn, ns) = (nqn.to_string(), ns.clone());
        rpc!(self, "nvmfAddNamespace", nvmf_add_namespace_request, |rq| {
            rq.get().set_nqn(nqn.as_str());
            set_namespace(rq.get().init_namespace(), &ns);
        })
    }

    /// Removes namespace `nsid` of subsystem `nqn`.
    pub fn nvmf_remove_namespace(&self, nqn: &str, nsid: u32) -> Result<(), ClientError> {
        let nqn = nqn.to_string();
        rpc!(
            self,
            "nvmfRemoveNamespace",
            nvmf_remove_namespace_request,
            |rq| {
                rq.get().set_nqn(nqn.as_str());
                rq.get().set_nsid(nsid);
            }
        )
    }

    /// Sets this node's ANA group state; returns the group id.
    pub fn nvmf_set_ana(&self, state: AnaState) -> Result<u32, ClientError> {
        rpc!(
            self,
            "nvmfSetAna",
            nvmf_set_ana_request,
            |rq| {
                rq.get().set_state(ana_to(state));
            },
            |r, path| { Ok(r.get_group()) }
        )
    }

    /// Starts the NVMe-oF frontend with controller ids `cntlid_range` (min, max)
    /// and ANA group `ana_group` if none runs; `invalid` when one runs with other
    /// settings.
    pub fn nvmf_start(&self, cntlid_range: (u16, u16), ana_group: u32) -> Result<(), ClientError> {
        rpc!(self, "nvmfStart", nvmf_start_request, |rq| {
            rq.get().set_cntlid_min(cntlid_range.0);
            rq.get().set_cntlid_max(cntlid_range.1);
            rq.get().set_ana_group(ana_group);
        })
    }

    /// The exported subsystems and the listeners (empty when no frontend runs).
    pub fn nvmf_subsystems(&self) -> Result<(Vec<SubsystemConfig>, Vec<SocketAddr>), ClientError> {
        rpc!(
            self,
            "nvmfSubsystems",
            nvmf_subsystems_request,
            |rq| {},
            |r, path| {
                let subs = r
                    .get_subsystems()
                    .and_then(|l| l.iter().map(read_subsystem).collect())
                    .map_err(|e| rpc_err(&path, e))?;
                let list = r.get_listeners().map_err(|e| rpc_err(&path, e))?;
                let mut ls = Vec::with_capacity(list.len() as usize);
                for p in list.iter() {
                    let p = p
                        .and_then(|p| Ok(p.to_string()?))
                        .map_err(|e| rpc_err(&path, e))?;
                    ls.push(parse_addr(&path, &p)?);
                }
                Ok((subs, ls))
            }
        )
    }

    /// The controllers with their I/O queues and counters.
    pub fn nvmf_controllers(&self) -> Result<Vec<ControllerInfo>, ClientError> {
        rpc!(
            self,
            "nvmfControllers",
            nvmf_controllers_request,
            |rq| {},
            |r| r
                .get_controllers()
                .and_then(|l| l.iter().map(read_controller).collect())
        )
    }

    // ---- the data-plane lease ----

    /// Serves shared volumes for `lease_ms` more milliseconds of the target's
    /// monotonic clock (0 revokes at once). Returns whether the lease had run out
    /// (or been revoked) before this call.
    pub fn renew_lease(&self, lease_ms: u32) -> Result<bool, ClientError> {
        rpc!(
            self,
            "renewLease",
            renew_lease_request,
            |rq| {
                rq.get().set_lease_ms(lease_ms);
            },
            |r, path| { Ok(r.get_was_expired()) }
        )
    }

    /// Serves shared volumes until `until_ns` nanoseconds of the host's
    /// `CLOCK_BOOTTIME` (an absolute deadline: one already past, 0 among them,
    /// revokes at once). Returns whether the lease had run out (or been revoked)
    /// before this call. Caller and target must share the host, boot and time
    /// namespace.
    pub fn renew_lease_until(&self, until_ns: u64) -> Result<bool, ClientError> {
        self.renew_scope_until(until_ns, false)
    }

    /// Serves private volumes until `until_ns` of the host's `CLOCK_BOOTTIME`, as
    /// [`KernelClient::renew_lease_until`] shared ones: the private-group lease
    /// (before its first grant private volumes are served without one).
    pub fn renew_private_lease_until(&self, until_ns: u64) -> Result<bool, ClientError> {
        self.renew_scope_until(until_ns, true)
    }

    fn renew_scope_until(&self, until_ns: u64, private: bool) -> Result<bool, ClientError> {
        if private {
            rpc!(
                self,
                "renewPrivateLeaseUntil",
                renew_private_lease_until_request,
                |rq| {
                    rq.get().set_until_ns(until_ns);
                },
                |r, path| { Ok(r.get_was_expired()) }
            )
        } else {
            rpc!(
                self,
                "renewLeaseUntil",
                renew_lease_until_request,
                |rq| {
                    rq.get().set_until_ns(until_ns);
                },
                |r, path| { Ok(r.get_was_expired()) }
            )
        }
    }

    /// The lease's state (none, valid, expired), time left and expiry count.
    pub fn lease_status(&self) -> Result<LeaseStatus, ClientError> {
        self.scope_status(false)
    }

    /// The private-group lease's state (none: never granted), time left and
    /// expiry count.
    pub fn private_lease_status(&self) -> Result<LeaseStatus, ClientError> {
        self.scope_status(true)
    }

    fn scope_status(&self, private: bool) -> Result<LeaseStatus, ClientError> {
        if private {
            rpc!(
                self,
                "privateLeaseStatus",
                private_lease_status_request,
                |rq| {},
                |r, path| {
                    lease_status_of(&path, r.get_state(), r.get_remaining_ms(), r.get_expiries())
                }
            )
        } else {
            rpc!(
                self,
                "leaseStatus",
                lease_status_request,
                |rq| {},
                |r, path| {
                    lease_status_of(&path, r.get_state(), r.get_remaining_ms(), r.get_expiries())
                }
            )
        }
    }

    /// Reads `len_bytes` at `offset_bytes` of `bdev` on reactor 0.
    pub fn read(
        &self,
        bdev: &str,
        offset_bytes: u64,
        len_bytes: u32,
    ) -> Result<IoResult, ClientError> {
        self.io(bdev, IoKind::Read, offset_bytes, len_bytes, &[], 0)
    }
}

impl Drop for KernelClient {
    fn drop(&mut self) {
        // Closing the job queue ends the connection thread, which closes the socket.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!(
                    "kernel client {}: the connection thread panicked",
                    self.path
                );
            }
        }
    }
}

/// The socket at `path`, connected, and the path as errors name it.
fn dial(path: &Path) -> Result<(std::os::unix::net::UnixStream, String), ClientError> {
    let shown = path.display().to_string();
    let stream = std::os::unix::net::UnixStream::connect(path)
        .map_err(|e| connect_error(&shown, e.to_string()))?;
    Ok((stream, shown))
}

/// [`ClientError::Connect`] for the socket `path`.
fn connect_error(path: &str, reason: String) -> ClientError {
    ClientError::Connect {
        path: path.to_string(),
        reason,
    }
}

fn run_connection(
    stream: Async<std::os::unix::net::UnixStream>,
    jobs: smol::channel::Receiver<Job>,
) {
    let ex = Rc::new(LocalExecutor::new());
    let ex2 = Rc::clone(&ex);
    let (rpc, kernel) = plexd_proto::connection::client::<k::kernel::Client>(stream);
    smol::block_on(ex.run(async move {
        ex2.spawn(async move {
            if let Err(e) = rpc.await {
                log::info!("kernel client: connection ended: {e}");
            }
        })
        .detach();
        while let Ok(job) = jobs.recv().await {
            ex2.spawn(job(&kernel)).detach();
        }
    }));
}

// The client is shared between threads (the coordinator's driver, tests).
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<KernelClient>();
};
