//! The cluster transport: one outgoing Cap'n Proto connection per peer, over which
//! this node calls `Peer.deliver` for every protocol message, in order.
//!
//! Each peer has a thread with a bounded queue ([`PEER_QUEUE_DEPTH`]). While a peer is
//! unreachable its queued messages are dropped (as a lost network would), and the
//! thread reconnects with a backoff from [`BACKOFF_MIN`] to [`BACKOFF_MAX`]. An
//! established connection that breaks is reported once as `ConnectionLost`.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use capnp_rpc::{rpc_twoparty_capnp, twoparty, RpcSystem};
use futures::AsyncReadExt;
use plexd_proto::cluster_capnp::peer;
use smol::{Async, LocalExecutor};

use super::Input;
use crate::core::{Message, NodeId};

/// Messages queued for one peer before new ones are dropped.
pub const PEER_QUEUE_DEPTH: usize = 1024;
/// First reconnect delay.
pub const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest reconnect delay (also capped at the heartbeat interval, so a restarted
/// peer hears this node before its form wait ends).
pub const BACKOFF_MAX: Duration = Duration::from_millis(1000);
/// Granularity of a backoff sleep: how soon a kick is noticed.
const KICK_POLL: Duration = Duration::from_millis(5);
/// How long a connect attempt waits.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// How long one `deliver` call may take before the connection is declared broken.
pub const DELIVER_TIMEOUT: Duration = Duration::from_secs(5);

/// The outgoing side of the transport.
pub struct Transport {
    me: NodeId,
    peers: BTreeMap<NodeId, PeerHandle>,
}

struct PeerHandle {
    tx: smol::channel::Sender<Vec<u8>>,
    kick: Arc<AtomicBool>,
}

impl Transport {
    /// Starts a sender thread for every peer in `peers` (id, address); reconnects
    /// back off up to `max_backoff` (at most [`BACKOFF_MAX`]).
    pub fn start(
        me: NodeId,
        incarnation: u64,
        peers: Vec<(NodeId, String)>,
        max_backoff: Duration,
        inputs: SyncSender<Input>,
    ) -> Transport {
        let max_backoff = max_backoff.clamp(BACKOFF_MIN, BACKOFF_MAX);
        let mut map = BTreeMap::new();
        for (id, address) in peers {
            let (tx, rx) = smol::channel::bounded(PEER_QUEUE_DEPTH);
            let inputs = inputs.clone();
            let kick = Arc::new(AtomicBool::new(false));
            let k2 = Arc::clone(&kick);
            let spawned = std::thread::Builder::new()
                .name(format!("peer-{id}"))
                .spawn(move || {
                    peer_thread(me, incarnation, id, address, rx, inputs, max_backoff, k2)
                });
            match spawned {
                Ok(_) => {
                    map.insert(id, PeerHandle { tx, kick });
                }
                Err(e) => log::error!("transport: cannot start the thread for node {id}: {e}"),
            }
        }
        Transport { me, peers: map }
    }

    /// A message came in from `peer`: if its connection is backing off, retry now.
    pub fn kick(&self, peer: NodeId) {
        if let Some(p) = self.peers.get(&peer) {
            p.kick.store(true, Ordering::Relaxed);
        }
    }

    /// Queues `msg` for `to`; drops it (logged) when the queue is full.
    pub fn send(&self, to: NodeId, msg: &Message) {
        let Some(p) = self.peers.get(&to) else {
            log::warn!("transport: node {}: no peer {to}", self.me);
            return;
        };
        if let Err(smol::channel::TrySendError::Full(_)) = p.tx.try_send(msg.encode()) {
            log::warn!(
                "transport: queue to node {to} full ({PEER_QUEUE_DEPTH}); dropped {}",
                msg.kind()
            );
        }
    }
}

/// The client side of a Cap'n Proto connection to a node on `stream`: the RPC system
/// (poll it, e.g. race it against the calls) and the node's bootstrap capability (a
/// `Peer`, which is also a `Ctl`).
pub fn client_connection<C: capnp::capability::FromClientHook>(
    stream: Async<TcpStream>,
) -> (RpcSystem<rpc_twoparty_capnp::Side>, C) {
    let (reader, writer) = stream.split();
    let network = twoparty::VatNetwork::new(
        futures::io::BufReader::new(reader),
        futures::io::BufWriter::new(writer),
        rpc_twoparty_capnp::Side::Client,
        Default::default(),
    );
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let client: C = rpc.bootstrap(rpc_twoparty_capnp::Side::Server);
    (rpc, client)
}

fn resolve(address: &str) -> Option<SocketAddr> {
    address.to_socket_addrs().ok()?.next()
}

/// Sleeps `d`, or less if kicked.
fn backoff_sleep(d: Duration, kick: &AtomicBool) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if kick.swap(false, Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(KICK_POLL.min(end.saturating_duration_since(Instant::now())));
    }
}

#[allow(clippy::too_many_arguments)]
fn peer_thread(
    me: NodeId,
    incarnation: u64,
    peer: NodeId,
    address: String,
    rx: smol::channel::Receiver<Vec<u8>>,
    inputs: SyncSender<Input>,
    max_backoff: Duration,
    kick: Arc<AtomicBool>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut logged_down = false;
    loop {
        if rx.is_closed() {
            return;
        }
        let stream = resolve(&address)
            .ok_or_else(|| "cannot resolve".to_string())
            .and_then(|a| {
                TcpStream::connect_timeout(&a, CONNECT_TIMEOUT).map_err(|e| e.to_string())
            });
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                if !logged_down {
                    log::info!("transport: node {peer} ({address}) unreachable: {e}; retrying");
                    logged_down = true;
                }
                while rx.try_recv().is_ok() {}
                backoff_sleep(backoff, &kick);
                backoff = (backoff * 2).min(max_backoff);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        logged_down = false;
        backoff = BACKOFF_MIN;
        log::info!("transport: connected to node {peer} ({address})");
        let delivered = run_connection(me, incarnation, stream, &rx);
        if rx.is_closed() {
            return;
        }
        if delivered {
            log::warn!("transport: connection to node {peer} ({address}) lost");
            if inputs.send(Input::ConnectionLost { peer }).is_err() {
                return;
            }
        }
        backoff_sleep(backoff, &kick);
    }
}

/// Delivers queued messages until the connection breaks; returns whether it ever
/// delivered one (an established connection).
fn run_connection(
    me: NodeId,
    incarnation: u64,
    stream: TcpStream,
    rx: &smol::channel::Receiver<Vec<u8>>,
) -> bool {
    let Ok(stream) = Async::new(stream) else {
        return false;
    };
    let ex = Rc::new(LocalExecutor::new());
    let (rpc, client) = client_connection::<peer::Client>(stream);
    let mut delivered = false;
    let sender = async {
        loop {
            let Ok(bytes) = rx.recv().await else {
                return;
            };
            let mut req = client.deliver_request();
            req.get().set_from(me);
            req.get().set_incarnation(incarnation);
            req.get().set_message(&bytes);
            let call = async { req.send().promise.await.map(|_| ()) };
            let timeout = async {
                smol::Timer::after(DELIVER_TIMEOUT).await;
                Err(capnp::Error::failed("deliver timed out".into()))
            };
            match smol::future::or(call, timeout).await {
                Ok(()) => delivered = true,
                Err(e) => {
                    log::debug!("transport: deliver failed: {e}");
                    return;
                }
            }
        }
    };
    let conn = async {
        if let Err(e) = rpc.await {
            log::debug!("transport: rpc ended: {e}");
        }
    };
    smol::block_on(ex.run(smol::future::or(sender, conn)));
    delivered
}
