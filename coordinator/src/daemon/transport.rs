//! The cluster transport: one outgoing TCP connection per peer, a peer stream
//! ([`super::peer_stream`]): a handshake, then every protocol message for that peer,
//! in order, one way, with no answer per message. What is queued when the sender
//! wakes goes out in one write (up to [`BATCH_BYTES`]).
//!
//! Each peer has a task on the network thread ([`super::net`], beside the node's
//! server) with a bounded queue ([`PEER_QUEUE_DEPTH`]). While a peer is
//! unreachable its queued messages are dropped (as a lost network would), and the
//! task reconnects with a backoff from [`BACKOFF_MIN`] to [`BACKOFF_MAX`]. An
//! established connection that breaks is reported once as `ConnectionLost`. It
//! breaks when a write fails or does not finish within [`SEND_TIMEOUT`] (the peer
//! stopped reading: its queue is full, or it is frozen with a full socket buffer),
//! when data stays unacknowledged by the peer's kernel that long (`TCP_USER_TIMEOUT`:
//! a cut network), or when the peer closes it. A peer frozen with room in its
//! socket buffer gets the messages late, in order, when it runs again: a delay the
//! protocol tolerates as it tolerates any (docs/PROTOCOL.md); its silence is found
//! by the heartbeat timeout.
//!
//! Every connection starts with a handshake: both nodes compare their
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

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use nix::sys::socket::{setsockopt, sockopt};
use smol::{Async, Timer};

use super::peer_stream;
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
/// How long one write of queued messages may take, and how long sent data may stay
/// unacknowledged by the peer's kernel, before the connection is declared broken.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Most bytes of queued messages gathered into one write (a message larger than
/// this goes alone).
pub const BATCH_BYTES: usize = 256 * 1024;

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

    /// Whether `id` is another node of this node's list.
    pub fn is_peer(&self, id: NodeId) -> bool {
        id != self.me
            && self
                .node_list
                .split(',')
                .filter_map(|entry| entry.split_once('='))
                .any(|(n, _)| n.parse::<NodeId>() == Ok(id))
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
    peer: NodeId,
    address: String,
    refusals: Refusals,
}

/// How a connection ended.
enum Ended {
    /// It never delivered a message (connect or handshake failure).
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

/// The handshake's outcome.
enum Hello {
    Accepted,
    Refused(String),
    Failed(String),
}

/// Writes [`peer_stream::MAGIC`] and this node's handshake, reads the answer and
/// compares it with this node's identity.
async fn hello<R, W>(link: &Link, reader: R, mut writer: W) -> Hello
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let call = async {
        writer
            .write_all(&peer_stream::encode_hello(&link.identity))
            .await
            .map_err(|e| e.to_string())?;
        peer_stream::read_answer(reader).await
    };
    let timeout = async {
        smol::Timer::after(peer_stream::HELLO_TIMEOUT).await;
        Err("hello timed out".to_string())
    };
    // The peer answers with its identity even when it refuses: judging it here the
    // way this node's server judges the peer's hello gives both sides of this node
    // one reason per peer (logged once), not two that alternate.
    match smol::future::or(call, timeout).await {
        Err(e) => Hello::Failed(e),
        Ok(answer) => match link.identity.mismatch(
            &answer.cluster_id,
            &answer.node_list,
            answer.protocol_version,
        ) {
            Some(why) => Hello::Refused(format!("refused: {why}")),
            None if !answer.error.is_empty() => {
                Hello::Refused(format!("refused by it: {}", answer.error))
            }
            None => Hello::Accepted,
        },
    }
}

/// Writes the messages of `rx` in order, each batch of what is queued (up to
/// [`BATCH_BYTES`]) in one write, until the queue closes or a write fails or does
/// not finish within [`SEND_TIMEOUT`]; sets `delivered` once a write finished.
async fn send_all<W: AsyncWrite + Unpin>(
    mut writer: W,
    rx: &smol::channel::Receiver<Message>,
    delivered: &mut bool,
) {
    let mut batch = Vec::new();
    loop {
        let Ok(first) = rx.recv().await else {
            return;
        };
        batch.clear();
        first.encode_into(&mut batch);
        while batch.len() < BATCH_BYTES {
            let Ok(next) = rx.try_recv() else {
                break;
            };
            next.encode_into(&mut batch);
        }
        let write = async { writer.write_all(&batch).await.map_err(|e| e.to_string()) };
        let timeout = async {
            Timer::after(SEND_TIMEOUT).await;
            Err(format!("a write did not finish in {SEND_TIMEOUT:?}"))
        };
        if let Err(e) = smol::future::or(write, timeout).await {
            log::debug!("transport: send failed: {e}");
            return;
        }
        *delivered = true;
    }
}

/// Waits until the server ends the stream (it writes nothing after its answer).
async fn until_closed<R: AsyncRead + Unpin>(mut reader: R) {
    let mut byte = [0u8; 1];
    match reader.read(&mut byte).await {
        Ok(0) => log::debug!("transport: the peer closed the stream"),
        Ok(_) => log::warn!("transport: the peer wrote after its handshake; closing"),
        Err(e) => log::debug!("transport: stream broke: {e}"),
    }
}

/// Bounds how long sent data may stay unacknowledged by the peer's kernel (a cut
/// network) before the kernel ends the connection.
fn set_user_timeout(stream: &TcpStream) {
    let ms = u32::try_from(SEND_TIMEOUT.as_millis()).unwrap_or(u32::MAX);
    if let Err(e) = setsockopt(stream, sockopt::TcpUserTimeout, &ms) {
        log::debug!("transport: TCP_USER_TIMEOUT: {e}");
    }
}

/// Shakes hands, then sends queued messages until the connection breaks.
async fn run_connection(
    link: &Link,
    stream: Async<TcpStream>,
    rx: &smol::channel::Receiver<Message>,
) -> Ended {
    let (me, peer) = (link.identity.me, link.peer);
    set_user_timeout(stream.get_ref());
    let (reader, mut writer) = stream.split();
    let mut reader = futures::io::BufReader::new(reader);
    match hello(link, &mut reader, &mut writer).await {
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
            return Ended::Refused;
        }
        Hello::Failed(e) => {
            log::debug!("transport: node {peer}: hello failed: {e}");
            return Ended::Idle;
        }
    }
    let mut delivered = false;
    smol::future::or(send_all(writer, rx, &mut delivered), until_closed(reader)).await;
    if delivered {
        Ended::Delivered
    } else {
        Ended::Idle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose writes never finish (a peer that stopped reading, with every
    /// buffer full).
    struct Stuck;

    impl AsyncWrite for Stuck {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Pending
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Pending
        }
        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Pending
        }
    }

    #[test]
    fn a_write_that_does_not_finish_in_send_timeout_ends_the_connection() {
        // The kernel's TCP_USER_TIMEOUT ends a connection to a peer that stopped
        // reading too (peer_stream's test of a stuck peer passes with either); this
        // pins the sender's own bound.
        let (tx, rx) = smol::channel::bounded(4);
        tx.try_send(Message::Applied {
            txn: crate::core::TxnId { view: 1, n: 1 },
        })
        .unwrap();
        let mut delivered = false;
        let began = std::time::Instant::now();
        smol::block_on(smol::future::or(
            send_all(Stuck, &rx, &mut delivered),
            async {
                Timer::after(SEND_TIMEOUT * 4).await;
                panic!("send_all still waits after 4 x SEND_TIMEOUT");
            },
        ));
        assert!(
            began.elapsed() >= SEND_TIMEOUT,
            "gave up after {:?}",
            began.elapsed()
        );
        assert!(!delivered);
    }

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
