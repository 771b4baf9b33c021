//! The peer stream: how the cluster protocol's messages travel from one node to
//! another (cluster protocol version 3).
//!
//! A node opens one TCP connection to each other node's server address (the port
//! that also serves plexctl's Cap'n Proto RPC) and writes, in this order:
//! - [`MAGIC`], 8 bytes;
//! - its handshake: `Peer.hello`'s parameters (`schema/cluster.capnp`) as one Cap'n
//!   Proto message (standard framing, unpacked): its id, cluster id, node list and
//!   protocol version.
//!
//! The server answers with `Peer.hello`'s results as one message: its own identity
//! and, when it refuses the caller, why. Both sides judge the other with
//! [`Identity::mismatch`]. After an accepted handshake the connection carries
//! messages one way only, from the caller to the server: each is one Cap'n Proto
//! message whose root is `cluster.capnp`'s `Message` ([`Message::write`]). Nothing
//! answers a message; the server writes nothing after its answer. TCP keeps them in
//! order, and the sender ([`super::transport`]) learns of a broken connection from
//! a write that fails or does not finish within its timeout, from the kernel
//! (`TCP_USER_TIMEOUT`: data unacknowledged that long), or from the end of the
//! stream.
//!
//! Why not an RPC call per message: a `Peer.deliver` call put a Call, a Return and
//! a Finish on the wire and woke both sides for each, and Cap'n Proto RPC's
//! bookkeeping was a third to a half of a node's control-thread CPU per
//! transaction (docs/TESTING.md).
//!
//! The server tells a peer stream from an RPC client by the first 8 bytes
//! ([`is_peer_stream`]): a Cap'n Proto message starts with its segment count minus
//! one as a little-endian `u32`, and a reader refuses more than 512 segments;
//! [`MAGIC`]'s first four bytes read as 1,146,637,392. So an RPC server of an older
//! release refuses a peer stream, and this one hands anything else to RPC.
//!
//! Everything read here is bounded: a handshake of more than [`MAX_HELLO_BYTES`] of
//! identity, or a message of more than [`MAX_MESSAGE_BYTES`], ends the connection
//! before it is read into memory. A message that frames well but does not decode
//! is dropped (logged), like a lost message.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Duration;

use capnp::message::{Builder, ReaderOptions};
use capnp::serialize::{self, OwnedSegments};
use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};
use plexd_proto::cluster_capnp::peer;

use super::transport::{Identity, Refusals};
use super::{Input, Inputs};
use crate::core::{Message, NodeId, MAX_MESSAGE_BYTES, PROTOCOL_VERSION};
use crate::ondisk::codec::text;

/// The first 8 bytes of a peer stream.
pub const MAGIC: [u8; 8] = *b"PLXDPEER";
/// Most bytes of cluster id and node list a handshake may carry (they are kept and
/// logged when they differ): far above what a cluster file of `MAX_NODES` makes.
pub const MAX_HELLO_BYTES: usize = 64 * 1024;
/// How long a handshake may take, either side.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a connection's first 8 bytes start a peer stream (else: RPC).
pub fn is_peer_stream(prefix: &[u8; 8]) -> bool {
    *prefix == MAGIC
}

/// What one side says in the handshake (the caller's `hello`, the server's answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's node id (the caller's; 0 in an answer).
    pub from: NodeId,
    /// Its cluster file's `id`.
    pub cluster_id: String,
    /// Its node list.
    pub node_list: String,
    /// Its cluster protocol version.
    pub protocol_version: u32,
    /// Why the server refuses the caller (an answer only; empty: accepted).
    pub error: String,
}

impl Hello {
    /// What `identity` says.
    pub fn of(identity: &Identity) -> Hello {
        Hello {
            from: identity.me,
            cluster_id: identity.cluster_id.clone(),
            node_list: identity.node_list.clone(),
            protocol_version: PROTOCOL_VERSION,
            error: String::new(),
        }
    }
}

fn hello_options() -> ReaderOptions {
    let mut o = ReaderOptions::new();
    // The identity's text plus the struct, its pointers and text padding.
    o.traversal_limit_in_words(Some(MAX_HELLO_BYTES / 8 + 64));
    o
}

fn message_options() -> ReaderOptions {
    let mut o = ReaderOptions::new();
    o.traversal_limit_in_words(Some(MAX_MESSAGE_BYTES / 8));
    o
}

/// The caller's first bytes: [`MAGIC`] and its handshake.
pub fn encode_hello(identity: &Identity) -> Vec<u8> {
    let mut b = Builder::new_default();
    let mut p = b.init_root::<peer::hello_params::Builder>();
    p.set_from(identity.me);
    p.set_cluster_id(identity.cluster_id.as_str());
    p.set_node_list(identity.node_list.as_str());
    p.set_protocol_version(PROTOCOL_VERSION);
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&serialize::write_message_to_words(&b));
    out
}

/// The server's answer: its identity, and `error` (empty: accepted).
pub fn encode_answer(identity: &Identity, error: &str) -> Vec<u8> {
    let mut b = Builder::new_default();
    let mut r = b.init_root::<peer::hello_results::Builder>();
    r.set_error(error);
    r.set_cluster_id(identity.cluster_id.as_str());
    r.set_node_list(identity.node_list.as_str());
    r.set_protocol_version(PROTOCOL_VERSION);
    serialize::write_message_to_words(&b)
}

/// Refuses a handshake of more than [`MAX_HELLO_BYTES`] of identity.
pub fn check_hello_size(h: &Hello) -> Result<(), String> {
    let n = h.cluster_id.len() + h.node_list.len() + h.error.len();
    if n > MAX_HELLO_BYTES {
        return Err(format!(
            "{n} bytes of identity, more than {MAX_HELLO_BYTES}"
        ));
    }
    Ok(())
}

/// Reads one handshake message and makes a [`Hello`] of it with `parse`; one over
/// [`MAX_HELLO_BYTES`] is refused before it is read into memory, or after.
async fn read_handshake<R, F>(reader: R, parse: F) -> Result<Hello, String>
where
    R: AsyncRead + Unpin,
    F: FnOnce(&capnp::message::Reader<OwnedSegments>) -> capnp::Result<Hello>,
{
    let m = capnp_futures::serialize::read_message(reader, hello_options())
        .await
        .map_err(|e| e.to_string())?;
    let h = parse(&m).map_err(|e| e.to_string())?;
    check_hello_size(&h)?;
    Ok(h)
}

/// Reads the caller's handshake (after [`MAGIC`]).
pub async fn read_hello<R: AsyncRead + Unpin>(reader: R) -> Result<Hello, String> {
    read_handshake(reader, |m| {
        let p = m.get_root::<peer::hello_params::Reader>()?;
        Ok(Hello {
            from: p.get_from(),
            cluster_id: text(p.get_cluster_id())?,
            node_list: text(p.get_node_list())?,
            protocol_version: p.get_protocol_version(),
            error: String::new(),
        })
    })
    .await
}

/// Reads the server's answer.
pub async fn read_answer<R: AsyncRead + Unpin>(reader: R) -> Result<Hello, String> {
    read_handshake(reader, |m| {
        let r = m.get_root::<peer::hello_results::Reader>()?;
        Ok(Hello {
            from: 0,
            cluster_id: text(r.get_cluster_id())?,
            node_list: text(r.get_node_list())?,
            protocol_version: r.get_protocol_version(),
            error: text(r.get_error())?,
        })
    })
    .await
}

/// What [`read_message`] found.
pub enum Read {
    /// A message.
    Message(Message),
    /// A message that framed well but does not decode (why): drop it.
    Undecodable(String),
    /// The stream ended cleanly.
    End,
}

/// Reads the next message of the stream; an error (bad framing, too large, a broken
/// connection) ends the stream.
pub async fn read_message<R: AsyncRead + Unpin>(reader: R) -> Result<Read, String> {
    let Some(m) = capnp_futures::serialize::try_read_message(reader, message_options())
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(Read::End);
    };
    // Message::read refuses another protocol version or a malformed field.
    Ok(match Message::read_message(&m) {
        Ok(msg) => Read::Message(msg),
        Err(e) => Read::Undecodable(e),
    })
}

/// The newest accepted stream of each peer, on this node's server. A stream whose
/// peer has since opened a newer one delivers nothing more: the sender opens a new
/// connection only after it gave up the old one, so what the old one still holds
/// is older than anything on the new one, and a message of an abandoned connection
/// must not arrive after one of its successor's. Holds only peers of the node list
/// (a handshake from any other id is refused).
///
/// The check and the hand-over to the main loop are one step ([`Streams::deliver`]):
/// the main loop's queue is bounded, so a stream can wait in its hand-over, and a
/// newer stream's message must not overtake the message an older one is handing
/// over (a send into a queue with room does not wait behind senders already
/// waiting).
#[derive(Debug, Default)]
pub struct Streams {
    newest: RefCell<BTreeMap<NodeId, u64>>,
    opened: Cell<u64>,
    /// Held by the stream handing a message over; one for every peer: they share
    /// the queue, so when one waits for room every other would too.
    handing: smol::lock::Mutex<()>,
}

/// What [`Streams::deliver`] did with a message.
#[derive(Debug, PartialEq, Eq)]
enum Delivery {
    /// Handed to the main loop.
    Delivered,
    /// Not handed over: the peer opened a newer stream.
    Superseded,
    /// Not handed over: the main loop is gone.
    Closed,
}

impl Streams {
    /// Records a newly accepted stream of `peer`: its number.
    fn open(&self, peer: NodeId) -> u64 {
        let n = self.opened.get() + 1;
        self.opened.set(n);
        self.newest.borrow_mut().insert(peer, n);
        n
    }

    /// Whether stream `n` is still `peer`'s newest.
    fn is_newest(&self, peer: NodeId, n: u64) -> bool {
        self.newest.borrow().get(&peer) == Some(&n)
    }

    /// Hands `msg`, read from `peer`'s stream `n`, to the main loop unless `peer`
    /// opened a newer stream; waits for any hand-over in progress first, so
    /// messages reach the main loop in the order of their streams.
    async fn deliver(&self, peer: NodeId, n: u64, msg: Message, inputs: &Inputs) -> Delivery {
        let _handing = self.handing.lock().await;
        if !self.is_newest(peer, n) {
            return Delivery::Superseded;
        }
        match inputs.send(Input::Peer { from: peer, msg }).await {
            Ok(()) => Delivery::Delivered,
            Err(_) => Delivery::Closed,
        }
    }
}

/// Judges a caller's handshake as this node's server: `None` accepts it, `Some`
/// is the error to answer. A refusal (and the first acceptance after one) is
/// logged once and kept in `refusals` for `cluster status`.
pub fn judge(identity: &Identity, refusals: &Refusals, hello: &Hello) -> Option<String> {
    let from = hello.from;
    let not_a_peer = (!identity.is_peer(from)).then(|| {
        format!(
            "node id {from} is not another node of this node's list ({})",
            identity.node_list
        )
    });
    let why = identity
        .mismatch(&hello.cluster_id, &hello.node_list, hello.protocol_version)
        .or(not_a_peer);
    match why {
        Some(why) => {
            if refusals.set(from, format!("refused: {why}")) {
                log::error!(
                    "cluster: node {} (id {}) refuses node {from}: {why}; fix the cluster files (or run one plexd release) so they agree",
                    identity.name,
                    identity.me
                );
            }
            Some(format!("node {} refuses node {from}: {why}", identity.name))
        }
        None => {
            if refusals.clear(from) {
                log::info!(
                    "cluster: node {} accepts node {from} again: the cluster files and protocol versions agree",
                    identity.name
                );
            }
            None
        }
    }
}

/// Serves one peer stream whose [`MAGIC`] was read: the handshake, then every
/// message to the main loop as [`Input::Peer`], until the stream ends or its peer
/// opens a newer one ([`Streams`]). The main loop's queue is bounded, so a busy
/// node stops reading and the sender's writes wait (its timeout ends the connection
/// if that lasts).
pub async fn serve<R, W>(
    mut reader: R,
    mut writer: W,
    inputs: Inputs,
    identity: &Identity,
    refusals: &Refusals,
    streams: &Streams,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let name = &identity.name;
    let hello = async { read_hello(&mut reader).await };
    let timeout = async {
        smol::Timer::after(HELLO_TIMEOUT).await;
        Err("no handshake in time".to_string())
    };
    let hello = match smol::future::or(hello, timeout).await {
        Ok(h) => h,
        Err(e) => {
            log::warn!("cluster: node {name}: a peer connection's handshake failed: {e}");
            return;
        }
    };
    let from = hello.from;
    let refused = judge(identity, refusals, &hello);
    let answer = encode_answer(identity, refused.as_deref().unwrap_or(""));
    if let Err(e) = async {
        writer.write_all(&answer).await?;
        writer.flush().await
    }
    .await
    {
        log::debug!("cluster: node {name}: answering node {from}'s handshake: {e}");
        return;
    }
    if refused.is_some() {
        return;
    }
    let stream = streams.open(from);
    loop {
        match read_message(&mut reader).await {
            Ok(Read::Message(msg)) => match streams.deliver(from, stream, msg, &inputs).await {
                Delivery::Delivered => {}
                Delivery::Superseded => {
                    log::info!(
                        "cluster: node {name}: a stream from node {from} ends unread: node {from} opened a newer one"
                    );
                    return;
                }
                Delivery::Closed => return,
            },
            Ok(Read::Undecodable(e)) => {
                log::warn!("cluster: node {name}: message from node {from} dropped: {e}")
            }
            Ok(Read::End) => return,
            Err(e) => {
                log::warn!("cluster: node {name}: stream from node {from} ended: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::net::{SocketAddr, TcpStream};
    use std::rc::Rc;
    use std::time::Instant;

    use futures::AsyncReadExt;
    use smol::{Async, LocalExecutor};

    use super::*;
    use crate::core::TxnId;
    use crate::daemon::ctl::Server;
    use crate::daemon::transport::{Transport, BACKOFF_MIN, SEND_TIMEOUT};

    const NODES: &str = "1=a@127.0.0.1:1,2=b@127.0.0.1:2,3=c@127.0.0.1:3";

    fn identity(me: NodeId, cluster_id: &str) -> Identity {
        Identity {
            me,
            name: ["", "a", "b", "c"][me as usize].into(),
            cluster_id: cluster_id.into(),
            node_list: NODES.into(),
        }
    }

    /// Node a's identity under another id (the same cluster file otherwise).
    fn identity_as(id: NodeId) -> Identity {
        Identity {
            me: id,
            ..identity(1, "c1")
        }
    }

    fn applied(n: u64) -> Message {
        Message::Applied {
            txn: TxnId { view: 7, n },
        }
    }

    /// `f`, or a panic after 10 s.
    async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
        let deadline = async {
            smol::Timer::after(Duration::from_secs(10)).await;
            panic!("{what}: not within 10 s");
        };
        smol::future::or(f, deadline).await
    }

    /// Waits (at most 10 s) until `cond` holds.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        let end = Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(Instant::now() < end, "{what}: not within 10 s");
            smol::Timer::after(Duration::from_millis(5)).await;
        }
    }

    /// Node b's server on a free port: its address, its inputs, its refusals.
    fn serve_b(
        ex: &Rc<LocalExecutor<'static>>,
    ) -> (SocketAddr, smol::channel::Receiver<Input>, Refusals) {
        let (tx, rx) = smol::channel::bounded(64);
        let refusals = Refusals::default();
        let server =
            Server::bind("127.0.0.1:0", tx, identity(2, "c1"), refusals.clone()).expect("bind");
        let addr = server.local_addr().expect("address");
        ex.spawn(server.serve(Rc::clone(ex))).detach();
        (addr, rx, refusals)
    }

    /// A transport of node `me` in cluster `cluster_id` to node b at `addr`, and
    /// the inputs it gives node `me`'s main loop (`ConnectionLost`).
    fn transport_to(
        ex: &Rc<LocalExecutor<'static>>,
        me: NodeId,
        cluster_id: &str,
        addr: SocketAddr,
    ) -> (Transport, Refusals, smol::channel::Receiver<Input>) {
        let (tx, rx) = smol::channel::bounded(64);
        let refusals = Refusals::default();
        let (t, tasks) = Transport::new(
            &identity(me, cluster_id),
            vec![(2, addr.to_string())],
            BACKOFF_MIN,
            tx,
            refusals.clone(),
        );
        for task in tasks {
            ex.spawn(task.run()).detach();
        }
        (t, refusals, rx)
    }

    async fn next_peer(rx: &smol::channel::Receiver<Input>) -> (NodeId, Message) {
        match within("a message", rx.recv()).await {
            Ok(Input::Peer { from, msg }) => (from, msg),
            Ok(_) => panic!("not a peer message"),
            Err(e) => panic!("inputs closed: {e}"),
        }
    }

    /// Writes `msg` on the stream `s`.
    async fn send(s: &mut Async<TcpStream>, msg: &Message) {
        s.write_all(&msg.encode()).await.unwrap();
    }

    /// Asserts (within 10 s) that the server closes `s`.
    async fn assert_closed(s: &mut Async<TcpStream>, what: &str) {
        let mut byte = [0u8; 1];
        let n = within(&format!("{what}: closed"), s.read(&mut byte)).await;
        assert!(matches!(n, Ok(0) | Err(_)), "{what}: {n:?}");
    }

    /// Writes `a`'s handshake on `s` and reads an accepting answer.
    async fn handshake(s: &mut Async<TcpStream>, a: &Identity) {
        s.write_all(&encode_hello(a)).await.unwrap();
        let answer = within("answer", read_answer(&mut *s)).await.unwrap();
        assert_eq!(answer.error, "");
    }

    fn run(
        test: impl FnOnce(Rc<LocalExecutor<'static>>) -> std::pin::Pin<Box<dyn Future<Output = ()>>>,
    ) {
        let ex = Rc::new(LocalExecutor::new());
        let main = test(Rc::clone(&ex));
        smol::block_on(ex.run(main));
    }

    #[test]
    fn messages_arrive_in_order_and_a_refused_node_delivers_none() {
        run(|ex| {
            Box::pin(async move {
                let (addr, rx, b_refusals) = serve_b(&ex);
                // Node c of another cluster: both sides refuse, with the reason.
                let (c, c_refusals, _) = transport_to(&ex, 3, "other", addr);
                c.send(2, &applied(999));
                until("both sides refuse node c", || {
                    b_refusals.get(3).is_some() && c_refusals.get(2).is_some()
                })
                .await;
                let why = b_refusals.get(3).unwrap();
                assert!(
                    why.contains("cluster id \"other\" there, \"c1\" here"),
                    "{why}"
                );
                let why = c_refusals.get(2).unwrap();
                assert!(
                    why.contains("cluster id \"c1\" there, \"other\" here"),
                    "{why}"
                );
                c.send(2, &applied(998));
                // Node a of this cluster: its messages arrive in order (two rounds of
                // as many as its queue holds), and none of c's.
                let (a, a_refusals, _) = transport_to(&ex, 1, "c1", addr);
                let per_round = crate::daemon::transport::PEER_QUEUE_DEPTH as u64;
                for round in 0..2 {
                    let first = round * per_round + 1;
                    for n in first..first + per_round {
                        a.send(2, &applied(n));
                    }
                    for n in first..first + per_round {
                        assert_eq!(next_peer(&rx).await, (1, applied(n)));
                    }
                }
                assert_eq!(a_refusals.get(2), None);
                assert_eq!(b_refusals.get(1), None);
                drop((a, c));
            })
        });
    }

    #[test]
    fn a_node_of_an_older_release_is_refused_over_rpc_on_the_same_port() {
        run(|ex| {
            Box::pin(async move {
                let (addr, _rx, b_refusals) = serve_b(&ex);
                let stream = Async::<TcpStream>::connect(addr).await.expect("connect");
                let (rpc, client) = plexd_proto::connection::client::<peer::Client>(stream);
                ex.spawn(rpc).detach();
                let mut req = client.hello_request();
                req.get().set_from(1);
                req.get().set_cluster_id("c1");
                req.get().set_node_list(NODES);
                req.get().set_protocol_version(2);
                let answer = within("hello", req.send().promise).await.expect("hello");
                let r = answer.get().expect("answer");
                let error = r.get_error().unwrap().to_str().unwrap();
                assert!(
                    error.contains(&format!(
                        "protocol version 2 there, {PROTOCOL_VERSION} here"
                    )),
                    "{error}"
                );
                assert_eq!(r.get_protocol_version(), PROTOCOL_VERSION);
                assert!(b_refusals.get(1).is_some());
                let e = within("deliver", client.deliver_request().send().promise)
                    .await
                    .err()
                    .expect("Peer.deliver is refused");
                assert!(e.to_string().contains("retired"), "{e}");
            })
        });
    }

    #[test]
    fn bad_bytes_on_a_stream_drop_a_message_or_end_the_stream_never_the_server() {
        run(|ex| {
            Box::pin(async move {
                let (addr, rx, _) = serve_b(&ex);
                let a = identity(1, "c1");
                let mut s = Async::<TcpStream>::connect(addr).await.unwrap();
                handshake(&mut s, &a).await;
                // A message of another protocol version frames well: dropped alone.
                let mut b = Builder::new_default();
                let mut root = b.init_root::<plexd_proto::cluster_capnp::message::Builder>();
                applied(1).write(root.reborrow());
                root.set_version(PROTOCOL_VERSION + 1);
                s.write_all(&serialize::write_message_to_words(&b))
                    .await
                    .unwrap();
                send(&mut s, &applied(2)).await;
                assert_eq!(next_peer(&rx).await, (1, applied(2)));
                // A frame larger than MAX_MESSAGE_BYTES ends the stream unread.
                let words = (MAX_MESSAGE_BYTES / 8 + 1) as u32;
                let mut frame = 0u32.to_le_bytes().to_vec();
                frame.extend_from_slice(&words.to_le_bytes());
                s.write_all(&frame).await.unwrap();
                assert_closed(&mut s, "the stream with an oversized frame").await;
                // A handshake whose identity is too large: no answer, closed.
                let mut s = Async::<TcpStream>::connect(addr).await.unwrap();
                let mut big = a.clone();
                big.node_list = "x".repeat(MAX_HELLO_BYTES + 1);
                s.write_all(&encode_hello(&big)).await.unwrap();
                assert_closed(&mut s, "the stream with an oversized handshake").await;
                // The server goes on.
                let mut s = Async::<TcpStream>::connect(addr).await.unwrap();
                handshake(&mut s, &a).await;
                send(&mut s, &applied(3)).await;
                assert_eq!(next_peer(&rx).await, (1, applied(3)));
            })
        });
    }

    /// Accepts one connection on `listener`, reads its magic and handshake and
    /// accepts it as node b.
    async fn accept_as_b(listener: &Async<std::net::TcpListener>) -> Async<TcpStream> {
        let (mut s, _) = within("a connection", listener.accept()).await.unwrap();
        let mut magic = [0u8; 8];
        within("the magic", s.read_exact(&mut magic)).await.unwrap();
        assert!(is_peer_stream(&magic));
        let hello = within("the handshake", read_hello(&mut s)).await.unwrap();
        assert_eq!(hello.from, 1);
        s.write_all(&encode_answer(&identity(2, "c1"), ""))
            .await
            .unwrap();
        s
    }

    #[test]
    fn a_peer_that_stops_reading_is_given_up_and_the_sender_connects_again() {
        run(|ex| {
            Box::pin(async move {
                // Node b's stand-in, with a small receive buffer: its first
                // connection shakes hands, then reads nothing (a stuck process).
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                nix::sys::socket::setsockopt(&listener, nix::sys::socket::sockopt::RcvBuf, &4096)
                    .unwrap();
                let addr = listener.local_addr().unwrap();
                let listener = Async::new(listener).unwrap();
                let (a, _, inputs) = transport_to(&ex, 1, "c1", addr);
                a.send(2, &applied(0));
                let stuck = accept_as_b(&listener).await;
                // Messages until the buffers are full and the sender's write waits;
                // it must give the connection up (SEND_TIMEOUT, or the kernel's
                // TCP_USER_TIMEOUT) and say so, however long the peer stays stuck.
                let lost = async {
                    loop {
                        match inputs.recv().await {
                            Ok(Input::ConnectionLost { peer }) => return peer,
                            Ok(_) => {}
                            Err(e) => panic!("inputs closed: {e}"),
                        }
                    }
                };
                let fill = async {
                    for n in 1.. {
                        for k in 0..512 {
                            a.send(2, &applied(n * 512 + k));
                        }
                        smol::Timer::after(Duration::from_millis(10)).await;
                    }
                    unreachable!()
                };
                let deadline = async {
                    smol::Timer::after(SEND_TIMEOUT * 4).await;
                    panic!("the stuck connection was not given up in 4 x SEND_TIMEOUT");
                };
                let peer = smol::future::or(smol::future::or(lost, fill), deadline).await;
                assert_eq!(peer, 2);
                // It connects again and sends what its queue held (which filled
                // while the write waited); what is sent after that arrives too.
                let mut s = accept_as_b(&listener).await;
                let first = within("the queued messages", read_message(&mut s)).await;
                assert!(matches!(first, Ok(Read::Message(_))));
                let marker = applied(u64::MAX);
                a.send(2, &marker);
                loop {
                    match within("the marker", read_message(&mut s)).await {
                        Ok(Read::Message(m)) if m == marker => break,
                        Ok(Read::Message(_)) => {}
                        Ok(Read::Undecodable(e)) => panic!("undecodable: {e}"),
                        Ok(Read::End) => panic!("the new connection ended"),
                        Err(e) => panic!("the new connection broke: {e}"),
                    }
                }
                drop(stuck);
            })
        });
    }

    #[test]
    fn a_newer_streams_message_waits_for_the_hand_over_of_an_older_ones() {
        run(|_| {
            Box::pin(async move {
                let streams = Streams::default();
                // The main loop's queue, full after one message.
                let (tx, rx) = smol::channel::bounded(1);
                let old = streams.open(1);
                let d = streams.deliver(1, old, applied(1), &tx).await;
                assert_eq!(d, Delivery::Delivered);
                // The old stream's next message waits for room.
                let mut second = Box::pin(streams.deliver(1, old, applied(2), &tx));
                assert!(futures::poll!(second.as_mut()).is_pending());
                // The peer opens a newer stream; room is made (the waiting old
                // stream is woken, not yet run), and the new stream's first message
                // is handed over at once: it must not go first.
                let new = streams.open(1);
                assert!(matches!(rx.try_recv(), Ok(Input::Peer { msg, .. }) if msg == applied(1)));
                let mut first = Box::pin(streams.deliver(1, new, applied(3), &tx));
                assert!(
                    futures::poll!(first.as_mut()).is_pending(),
                    "the new stream's message was handed over before the old one's"
                );
                let got = async {
                    let mut got = Vec::new();
                    for _ in 0..2 {
                        got.push(next_peer(&rx).await);
                    }
                    got
                };
                let (d2, d3, got) = within("the hand-overs", async {
                    futures::join!(second, first, got)
                })
                .await;
                assert_eq!((d2, d3), (Delivery::Delivered, Delivery::Delivered));
                assert_eq!(got, vec![(1, applied(2)), (1, applied(3))]);
                // From here the old stream hands nothing over.
                let d = streams.deliver(1, old, applied(4), &tx).await;
                assert_eq!(d, Delivery::Superseded);
                assert!(rx.is_empty());
            })
        });
    }

    #[test]
    fn a_stream_given_up_for_a_newer_one_delivers_nothing_more_and_only_peers_shake_hands() {
        run(|ex| {
            Box::pin(async move {
                let (addr, rx, b_refusals) = serve_b(&ex);
                let a = identity(1, "c1");
                // Node a opens a stream, then another (as after giving the first up).
                let mut old = Async::<TcpStream>::connect(addr).await.unwrap();
                handshake(&mut old, &a).await;
                let mut new = Async::<TcpStream>::connect(addr).await.unwrap();
                handshake(&mut new, &a).await;
                // What the old one still carries is not delivered; it is closed.
                send(&mut old, &applied(1)).await;
                assert_closed(&mut old, "the old stream").await;
                send(&mut new, &applied(2)).await;
                assert_eq!(next_peer(&rx).await, (1, applied(2)));
                // A handshake in this node's own id, or one not in the list: refused.
                for id in [2, 9] {
                    let mut s = Async::<TcpStream>::connect(addr).await.unwrap();
                    s.write_all(&encode_hello(&identity_as(id))).await.unwrap();
                    let answer = within("answer", read_answer(&mut s)).await.unwrap();
                    assert!(
                        answer
                            .error
                            .contains(&format!("node id {id} is not another node")),
                        "{}",
                        answer.error
                    );
                    assert!(b_refusals.get(id).is_some());
                }
            })
        });
    }
}
