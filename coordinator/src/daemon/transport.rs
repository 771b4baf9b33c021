//! The cluster transport: one outgoing Cap'n Proto connection per peer, over which
//! this node calls `Peer.deliver` for every protocol message, in order (the message
//! as `cluster.capnp`'s `Message` struct, written by [`Message::write`]), with up to
//! [`DELIVER_WINDOW`] calls in flight (a call's return is not waited for before the
//! next; one timer per connection finds a call older than [`DELIVER_TIMEOUT`]).
//!
//! Each peer has a task on the network thread ([`super::net`], beside the node's
//! server) with a bounded queue ([`PEER_QUEUE_DEPTH`]). While a peer is
//! unreachable its queued messages are dropped (as a lost network would), and the
//! task reconnects with a backoff from [`BACKOFF_MIN`] to [`BACKOFF_MAX`]. An
//! established connection that breaks is reported once as `ConnectionLost`.
//!
//! Every connection starts with a handshake (`Peer.hello`): both nodes compare their
//! cluster id, node list and cluster protocol version ([`Identity`]; nodes of
//! different protocol versions do not talk). On a mismatch neither side delivers a
//! message over it: the peer is refused (logged once per reason, naming both nodes
//! and the differing value, and shown by `cluster status` through [`Refusals`]), as
//! if unreachable, and the sender retries at its longest backoff.

use super::Inputs;
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use capnp_rpc::{rpc_twoparty_capnp, twoparty, RpcSystem};
use futures::AsyncReadExt;
use plexd_proto::cluster_capnp::peer;
use smol::{Async, Timer};

use super::Input;
use crate::core::{Message, NodeId, PROTOCOL_VERSION};

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
/// `deliver` calls in flight on one connection at most: the sender does not wait for
/// a call's return before it makes the next (Cap'n Proto delivers the calls on one
/// capability in the order they were made), so a message never waits a round trip
/// behind the one before it (a heartbeat, say).
pub const DELIVER_WINDOW: usize = 64;
/// How often the sender looks for a `deliver` older than [`DELIVER_TIMEOUT`]: one
/// timer for the connection, not one per message (arming a timer wakes the I/O
/// reactor's thread).
const DELIVER_CHECK: Duration = Duration::from_millis(500);

/// What the handshake compares: this node's id, name, cluster id and node list
/// ([`super::config::ClusterFile::node_list`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// This node's id.
    pub me: NodeId,
    /// This node's name.
    pub name: String,
    /// The cluster file's `id`.
    pub cluster_id: String,
    /// The cluster file's node list.
    pub node_list: String,
}

impl Identity {
    /// Why a peer that says `(cluster_id, node_list, protocol_version)` is refused,
    /// or `None` when it belongs to this cluster as configured here and speaks this
    /// node's protocol version ([`PROTOCOL_VERSION`]; 0 is a node from before
    /// `hello` carried one: the JSON messages).
    pub fn mismatch(
        &self,
        cluster_id: &str,
        node_list: &str,
        protocol_version: u32,
    ) -> Option<String> {
        if protocol_version != PROTOCOL_VERSION {
            return Some(format!(
                "cluster protocol version {protocol_version} there, {PROTOCOL_VERSION} here; \
                 run the same plexd release on every node"
            ));
        }
        if cluster_id != self.cluster_id {
            return Some(format!(
                "cluster id {cluster_id:?} there, {:?} here",
                self.cluster_id
            ));
        }
        if node_list != self.node_list {
            return Some(format!(
                "the node lists differ: {}",
                super::config::node_list_difference(&self.node_list, node_list)
            ));
        }
        None
    }
}

/// Peers refused by the handshake (either side), with the reason; shared by the
/// transport, the server and `cluster status`. At most [`MAX_REFUSALS`] entries (a
/// caller names its own id, which may be any number).
#[derive(Debug, Clone, Default)]
pub struct Refusals(Arc<Mutex<BTreeMap<NodeId, String>>>);

/// Most refused peers remembered (a cluster file's most nodes).
pub const MAX_REFUSALS: usize = super::config::MAX_NODES;

impl Refusals {
    /// Records that `peer` is refused for `reason`; true when the reason is new (log
    /// it). Once [`MAX_REFUSALS`] peers are recorded, others are not (nor logged).
    pub fn set(&self, peer: NodeId, reason: String) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_REFUSALS && !map.contains_key(&peer) {
            return false;
        }
        map.insert(peer, reason.clone()).as_deref() != Some(reason.as_str())
    }

    /// `peer` passed a handshake: true when it was refused before.
    pub fn clear(&self, peer: NodeId) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&peer).is_some()
    }

    /// Why `peer` is refused, if it is.
    pub fn get(&self, peer: NodeId) -> Option<String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&peer).cloned()
    }
}

/// The outgoing side of the transport.
pub struct Transport {
    me: NodeId,
    peers: BTreeMap<NodeId, PeerHandle>,
    refusals: Refusals,
}

struct PeerHandle {
    tx: smol::channel::Sender<Message>,
    kick: Arc<AtomicBool>,
}

/// One peer's sender, to run on the network thread ([`PeerTask::run`]).
pub struct PeerTask {
    link: Link,
    rx: smol::channel::Receiver<Message>,
    inputs: Inputs,
    max_backoff: Duration,
    kick: Arc<AtomicBool>,
}

impl Transport {
    /// The transport to every peer in `peers` (id, address), and their sender tasks
    /// for the network thread to run; reconnects back off up to `max_backoff` (at
    /// most [`BACKOFF_MAX`]).
    pub fn new(
        identity: &Identity,
        incarnation: u64,
        peers: Vec<(NodeId, String)>,
        max_backoff: Duration,
        inputs: Inputs,
        refusals: Refusals,
    ) -> (Transport, Vec<PeerTask>) {
        let me = identity.me;
        let max_backoff = max_backoff.clamp(BACKOFF_MIN, BACKOFF_MAX);
        let mut map = BTreeMap::new();
        let mut tasks = Vec::new();
        for (id, address) in peers {
            let (tx, rx) = smol::channel::bounded(PEER_QUEUE_DEPTH);
            let inputs = inputs.clone();
            let kick = Arc::new(AtomicBool::new(false));
            let k2 = Arc::clone(&kick);
            let link = Link {
                identity: identity.clone(),
                incarnation,
                peer: id,
                address,
                refusals: refusals.clone(),
            };
            tasks.push(PeerTask {
                link,
                rx,
                inputs,
                max_backoff,
                kick: k2,
            });
            map.insert(id, PeerHandle { tx, kick });
        }
        let transport = Transport {
            me,
            peers: map,
            refusals,
        };
        (transport, tasks)
    }

    /// Why the handshake refused `peer` (either side), if it did.
    pub fn refused(&self, peer: NodeId) -> Option<String> {
        self.refusals.get(peer)
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
        if let Err(smol::channel::TrySendError::Full(_)) = p.tx.try_send(msg.clone()) {
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
async fn backoff_sleep(d: Duration, kick: &AtomicBool) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if kick.swap(false, Ordering::Relaxed) {
            return;
        }
        Timer::after(KICK_POLL.min(end.saturating_duration_since(Instant::now()))).await;
    }
}

/// Connects to `address` within [`CONNECT_TIMEOUT`].
async fn connect(address: &str) -> Result<Async<TcpStream>, String> {
    let addr = resolve(address).ok_or_else(|| "cannot resolve".to_string())?;
    let connect = async {
        Async::<TcpStream>::connect(addr)
            .await
            .map_err(|e| e.to_string())
    };
    let timeout = async {
        Timer::after(CONNECT_TIMEOUT).await;
        Err("connection timed out".to_string())
    };
    smol::future::or(connect, timeout).await
}

/// One peer connection's fixed facts.
struct Link {
    identity: Identity,
    incarnation: u64,
    peer: NodeId,
    address: String,
    refusals: Refusals,
}

/// How a connection ended.
enum Ended {
    /// It never delivered a message (connect or RPC failure).
    Idle,
    /// It delivered at least one message, then broke.
    Delivered,
    /// The handshake refused it.
    Refused,
}

impl PeerTask {
    /// Connects, shakes hands and delivers the queued messages, reconnecting with a
    /// backoff, until the transport is dropped.
    pub async fn run(self) {
        let PeerTask {
            link,
            rx,
            inputs,
            max_backoff,
            kick,
        } = self;
        peer_task(link, rx, inputs, max_backoff, kick).await
    }
}

async fn peer_task(
    link: Link,
    rx: smol::channel::Receiver<Message>,
    inputs: Inputs,
    max_backoff: Duration,
    kick: Arc<AtomicBool>,
) {
    let (peer, address) = (link.peer, link.address.as_str());
    let mut backoff = BACKOFF_MIN;
    let mut logged_down = false;
    loop {
        if rx.is_closed() {
            return;
        }
        let stream = match connect(address).await {
            Ok(s) => s,
            Err(e) => {
                if !logged_down {
                    log::info!("transport: node {peer} ({address}) unreachable: {e}; retrying");
                    logged_down = true;
                }
                while rx.try_recv().is_ok() {}
                backoff_sleep(backoff, &kick).await;
                backoff = (backoff * 2).min(max_backoff);
                continue;
            }
        };
        let _ = stream.get_ref().set_nodelay(true);
        logged_down = false;
        backoff = BACKOFF_MIN;
        log::info!("transport: connected to node {peer} ({address})");
        let ended = run_connection(&link, stream, &rx).await;
        if rx.is_closed() {
            return;
        }
        match ended {
            Ended::Delivered => {
                log::warn!("transport: connection to node {peer} ({address}) lost");
                if inputs.send(Input::ConnectionLost { peer }).await.is_err() {
                    return;
                }
            }
            Ended::Refused => {
                // Messages for a refused peer are dropped, as for an unreachable one.
                while rx.try_recv().is_ok() {}
                backoff_sleep(max_backoff, &kick).await;
                continue;
            }
            Ended::Idle => {}
        }
        backoff_sleep(backoff, &kick).await;
    }
}

/// The handshake's answer.
enum Hello {
    Accepted,
    Refused(String),
    Failed(String),
}

/// Calls `Peer.hello` and compares the answer with this node's identity.
async fn hello(link: &Link, client: &peer::Client) -> Hello {
    let mut req = client.hello_request();
    req.get().set_from(link.identity.me);
    req.get().set_cluster_id(link.identity.cluster_id.as_str());
    req.get().set_node_list(link.identity.node_list.as_str());
    req.get().set_protocol_version(PROTOCOL_VERSION);
    let call = async {
        let resp = req.send().promise.await.map_err(|e| e.to_string())?;
        let r = resp.get().map_err(|e| e.to_string())?;
        let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, String> {
            t.map_err(|e| e.to_string())?
                .to_string()
                .map_err(|e| e.to_string())
        };
        Ok::<_, String>((
            text(r.get_error())?,
            text(r.get_cluster_id())?,
            text(r.get_node_list())?,
            r.get_protocol_version(),
        ))
    };
    let timeout = async {
        smol::Timer::after(DELIVER_TIMEOUT).await;
        Err("hello timed out".to_string())
    };
    // The peer answers with its identity even when it refuses: judging it here the
    // way this node's server judges the peer's hello gives both sides of this node
    // one reason per peer (logged once), not two that alternate.
    match smol::future::or(call, timeout).await {
        Err(e) => Hello::Failed(e),
        Ok((error, cluster_id, node_list, version)) => {
            match link.identity.mismatch(&cluster_id, &node_list, version) {
                Some(why) => Hello::Refused(format!("refused: {why}")),
                None if !error.is_empty() => Hello::Refused(format!("refused by it: {error}")),
                None => Hello::Accepted,
            }
        }
    }
}

/// What the sender waits for next ([`deliver_all`]).
enum Next {
    /// A message to deliver (None: the queue is closed).
    Message(Option<Message>),
    /// A call returned.
    Returned(u64, Result<(), capnp::Error>),
    /// Time to look for a call that takes too long.
    Check,
}

/// Delivers the messages of `rx` in order with up to [`DELIVER_WINDOW`] calls in
/// flight, until the queue closes or a call fails or takes longer than
/// [`DELIVER_TIMEOUT`]; sets `delivered` once a call returned.
async fn deliver_all(
    me: NodeId,
    incarnation: u64,
    client: &peer::Client,
    rx: &smol::channel::Receiver<Message>,
    delivered: &mut bool,
) {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut in_flight = FuturesUnordered::new();
    // Call number → when it was made (the first entry is the oldest in flight).
    let mut started: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut check = smol::Timer::interval(DELIVER_CHECK);
    for seq in 0u64.. {
        let full = in_flight.len() >= DELIVER_WINDOW;
        let message = async {
            if full {
                std::future::pending().await
            } else {
                Next::Message(rx.recv().await.ok())
            }
        };
        let returned = async {
            match in_flight.next().await {
                Some((n, r)) => Next::Returned(n, r),
                None => std::future::pending().await,
            }
        };
        let tick = async {
            check.next().await;
            Next::Check
        };
        match smol::future::or(returned, smol::future::or(message, tick)).await {
            Next::Message(None) => return,
            Next::Message(Some(msg)) => {
                let mut req = client.deliver_request();
                req.get().set_from(me);
                req.get().set_incarnation(incarnation);
                msg.write(req.get().init_message());
                let promise = req.send().promise;
                started.insert(seq, Instant::now());
                in_flight.push(async move { (seq, promise.await.map(|_| ())) });
            }
            Next::Returned(n, Ok(())) => {
                started.remove(&n);
                *delivered = true;
            }
            Next::Returned(_, Err(e)) => {
                log::debug!("transport: deliver failed: {e}");
                return;
            }
            Next::Check => {
                if started
                    .values()
                    .next()
                    .is_some_and(|t| t.elapsed() > DELIVER_TIMEOUT)
                {
                    log::debug!("transport: deliver timed out");
                    return;
                }
            }
        }
    }
}

/// Shakes hands, then delivers queued messages until the connection breaks.
async fn run_connection(
    link: &Link,
    stream: Async<TcpStream>,
    rx: &smol::channel::Receiver<Message>,
) -> Ended {
    let (me, incarnation, peer) = (link.identity.me, link.incarnation, link.peer);
    let (rpc, client) = client_connection::<peer::Client>(stream);
    let mut delivered = false;
    let mut refused = false;
    let sender = async {
        match hello(link, &client).await {
            Hello::Accepted => {
                if link.refusals.clear(peer) {
                    log::info!(
                        "transport: node {} and node {peer} ({}) agree on the cluster again",
                        link.identity.name,
                        link.address
                    );
                }
            }
            Hello::Refused(why) => {
                if link.refusals.set(peer, why.clone()) {
                    log::error!(
                        "transport: node {} (id {me}) and node {peer} ({}): {why}; no messages are exchanged until the cluster files and protocol versions agree",
                        link.identity.name,
                        link.address
                    );
                }
                refused = true;
                return;
            }
            Hello::Failed(e) => {
                log::debug!("transport: node {peer}: hello failed: {e}");
                return;
            }
        }
        deliver_all(me, incarnation, &client, rx, &mut delivered).await;
    };
    let conn = async {
        if let Err(e) = rpc.await {
            log::debug!("transport: rpc ended: {e}");
        }
    };
    smol::future::or(sender, conn).await;
    if refused {
        Ended::Refused
    } else if delivered {
        Ended::Delivered
    } else {
        Ended::Idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_refuses_another_protocol_version() {
        let id = Identity {
            me: 1,
            name: "a".into(),
            cluster_id: "c1".into(),
            node_list: "1=a@127.0.0.1:1,2=b@127.0.0.1:2".into(),
        };
        let list = id.node_list.clone();
        assert_eq!(id.mismatch("c1", &list, PROTOCOL_VERSION), None);
        // A node from before the field (the JSON messages) says 0.
        let why = id.mismatch("c1", &list, 0).unwrap();
        assert!(
            why.contains(&format!(
                "protocol version 0 there, {PROTOCOL_VERSION} here"
            )),
            "{why}"
        );
        assert!(id.mismatch("c1", &list, PROTOCOL_VERSION + 1).is_some());
        assert!(id.mismatch("c2", &list, PROTOCOL_VERSION).is_some());
    }
}
