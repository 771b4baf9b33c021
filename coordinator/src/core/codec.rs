//! The cluster protocol's wire encoding: a [`Message`] as the `Message` struct of
//! `schema/cluster.capnp`.
//!
//! Pure functions (no I/O): [`Message::write`] fills a Cap'n Proto builder and
//! [`Message::read`] reads one back; [`Message::encode`] ([`Message::encode_into`])
//! and [`Message::decode`] do the same to and from bytes (one Cap'n Proto message,
//! standard framing, unpacked): the daemon's peer stream writes batches with
//! `encode_into` and reads each framed message with [`Message::read_message`]; the
//! simulator and the tests use the bytes too. Configurations and changes inside messages stay the model's bytes
//! (`Data` fields), so the core is still not generic over its envelope.
//!
//! Malformed input (truncated, oversized, a pointer out of bounds, text that is not
//! UTF-8, a message kind this node does not know, another protocol version) is an
//! error, never a panic. Evolution rules are in the schema and docs/PROTOCOL.md.

use capnp::message::{Builder, ReaderOptions};
use capnp::serialize;
use plexd_proto::cluster_capnp as wire;
use plexd_proto::ctl_capnp::ErrorKind as WireKind;

use super::messages::{
    Echo, FenceToken, Message, NodeId, Origin, RequestId, TxnId, TxnState, View, WireRequest,
    MAX_MESSAGE_BYTES,
};
use super::ErrorKind;

/// The protocol version this node speaks: sent in every [`Message`] and in the
/// handshake (`Peer.hello`'s parameters). Nodes of different versions refuse each other; a message of another
/// version does not decode. Bumped only for a change the schema's additive rules
/// cannot express (see `schema/cluster.capnp`). 2: the dirty region log (a node of
/// version 1 would apply `vol create` without the log and `NodeRecover` as a whole
/// resync, so its configuration would differ from the master's). 3: the peer stream
/// (`daemon::peer_stream`: messages on a one-way stream after a handshake, not one
/// `Peer.deliver` call each; a version-2 node neither sends nor reads them).
pub const PROTOCOL_VERSION: u32 = 3;

/// Most words a decoded message may make the reader traverse: the message size limit.
const TRAVERSAL_LIMIT_WORDS: usize = MAX_MESSAGE_BYTES / 8;

impl Message {
    /// Serialises the message: one Cap'n Proto message whose root is
    /// `cluster.capnp` `Message`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends [`Message::encode`]'s bytes to `out` (a peer stream's batch).
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut message = Builder::new_default();
        self.write(message.init_root());
        // Writing into a Vec cannot fail.
        let _ = serialize::write_message(out, &message);
    }

    /// Parses [`Message::encode`]'s bytes; malformed or oversized input is an error,
    /// never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Message, String> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(format!(
                "message of {} bytes exceeds the limit of {} bytes",
                bytes.len(),
                MAX_MESSAGE_BYTES
            ));
        }
        let mut options = ReaderOptions::new();
        options.traversal_limit_in_words(Some(TRAVERSAL_LIMIT_WORDS));
        let mut slice = bytes;
        let message = serialize::read_message_from_flat_slice(&mut slice, options)
            .map_err(|e| format!("malformed message: not a Cap'n Proto message: {e}"))?;
        if !slice.is_empty() {
            return Err(format!(
                "malformed message: {} bytes after the message",
                slice.len()
            ));
        }
        Message::read_message(&message)
    }

    /// Reads the [`Message`] at the root of one Cap'n Proto message (read from a
    /// flat slice, or from a peer stream), as [`Message::read`].
    pub fn read_message<S: capnp::message::ReaderSegments>(
        message: &capnp::message::Reader<S>,
    ) -> Result<Message, String> {
        let root = message
            .get_root::<wire::message::Reader>()
            .map_err(|e| format!("malformed message: bad root: {e}"))?;
        Message::read(root)
    }

    /// Writes the message into `b` (a peer stream message's root), with this
    /// node's [`PROTOCOL_VERSION`].
    pub fn write(&self, mut b: wire::message::Builder<'_>) {
        b.set_version(PROTOCOL_VERSION);
        // The transaction's steps here; heartbeats, forwarded requests, joins,
        // takeovers and resync fences in functions of their own.
        match self {
            Message::Heartbeat { .. } => write_heartbeat(self, b.init_heartbeat()),
            Message::Forward { request, body } => write_forward(*request, body, b.init_forward()),
            Message::Outcome {
                request,
                result,
                kind,
                node,
            } => {
                let mut o = b.init_outcome();
                o.set_request(request.0);
                write_result(result, o.reborrow().init_result());
                match kind {
                    Some(k) => o.reborrow().get_kind().set_kind(wire_kind(*k)),
                    None => o.reborrow().get_kind().set_none(()),
                }
                if let Some(n) = node {
                    o.set_node(n.as_str());
                }
            }
            Message::Check {
                txn,
                change,
                origin,
                base,
            } => {
                let mut c = b.init_check();
                write_txn(txn, c.reborrow().init_txn());
                c.set_change(change);
                c.set_origin_node(origin.node);
                c.set_origin_request(origin.request.0);
                if let Some(t) = base {
                    write_txn_state(t, c.init_base());
                }
            }
            Message::CheckReply { txn, result, kind } => {
                let mut c = b.init_check_reply();
                write_txn(txn, c.reborrow().init_txn());
                write_result(result, c.reborrow().init_result());
                match kind {
                    Some(k) => c.get_kind().set_kind(wire_kind(*k)),
                    None => c.get_kind().set_none(()),
                }
            }
            Message::Prepare { txn } => write_txn(txn, b.init_prepare().init_txn()),
            Message::PrepareReply { txn, result } => {
                let mut p = b.init_prepare_reply();
                write_txn(txn, p.reborrow().init_txn());
                write_result(result, p.init_result());
            }
            Message::Commit { txn } => write_txn(txn, b.init_commit().init_txn()),
            Message::CommitAck { txn } => write_txn(txn, b.init_commit_ack().init_txn()),
            Message::Applied { txn } => write_txn(txn, b.init_applied().init_txn()),
            Message::Abort { txn } => write_txn(txn, b.init_abort().init_txn()),
            Message::JoinRequest { .. }
            | Message::JoinOffer { .. }
            | Message::JoinReady { .. }
            | Message::JoinAbandon { .. } => write_join(self, b),
            Message::TakeoverQuery { .. } | Message::TakeoverInfo { .. } | Message::View { .. } => {
                write_takeover(self, b)
            }
            Message::Fence { .. }
            | Message::FenceReply { .. }
            | Message::Release { .. }
            | Message::ReleaseReply { .. } => write_fence(self, b),
        }
    }

    /// Reads a message written by [`Message::write`] (a peer stream message's
    /// root). An error says what is wrong: more than [`MAX_MESSAGE_BYTES`],
    /// another protocol version, a kind this node does not know, a malformed field.
    pub fn read(r: wire::message::Reader<'_>) -> Result<Message, String> {
        let words = r
            .total_size()
            .map_err(|e| format!("malformed message: {e}"))?
            .word_count;
        if words.saturating_mul(8) > MAX_MESSAGE_BYTES as u64 {
            return Err(format!(
                "message of {} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes",
                words.saturating_mul(8)
            ));
        }
        let version = r.get_version();
        if version != PROTOCOL_VERSION {
            return Err(format!(
                "message of protocol version {version}, this node speaks {PROTOCOL_VERSION}"
            ));
        }
        read_message(r).map_err(|e| format!("malformed message: {e}"))
    }
}

/// Writes a [`Message::Heartbeat`] (`m`, from [`Message::write`]).
fn write_heartbeat(m: &Message, mut h: wire::heartbeat::Builder<'_>) {
    let Message::Heartbeat {
        incarnation,
        view_id,
        master,
        member,
        stamp_ms,
        echo,
        lease_left_ms,
        max_view,
        member_ago_ms,
        txns,
        leased,
        heard,
        disk_vote,
        applied,
    } = m
    else {
        unreachable!("write_heartbeat of {}", m.kind());
    };
    h.set_incarnation(*incarnation);
    h.set_view_id(*view_id);
    match master {
        Some(n) => h.reborrow().get_master().set_node(*n),
        None => h.reborrow().get_master().set_none(()),
    }
    h.set_member(*member);
    h.set_stamp_ms(*stamp_ms);
    if let Some(e) = echo {
        write_echo(e, h.reborrow().init_echo());
    }
    h.set_lease_left_ms(*lease_left_ms);
    h.set_max_view(*max_view);
    match member_ago_ms {
        Some(ms) => h.reborrow().get_member_ago_ms().set_ms(*ms),
        None => h.reborrow().get_member_ago_ms().set_never(()),
    }
    if let Some(t) = txns {
        write_txn_state(t, h.reborrow().init_txns());
    }
    h.set_leased(*leased);
    if let Some(e) = heard {
        write_echo(e, h.reborrow().init_heard());
    }
    h.set_disk_vote(*disk_vote);
    if let Some(t) = applied {
        write_txn(t, h.reborrow().init_applied());
    }
}

/// Writes a [`Message::Forward`].
fn write_forward(request: RequestId, body: &WireRequest, mut f: wire::forward::Builder<'_>) {
    f.set_request(request.0);
    let mut w = f.init_body();
    match body {
        WireRequest::Change(bytes) => w.set_change(bytes),
        WireRequest::DetachPlex {
            volume,
            plex,
            ranges,
        } => {
            let mut d = w.init_detach_plex();
            d.set_volume(volume.as_str());
            d.set_plex(plex.as_str());
            let mut l = d.init_ranges(len_u32(ranges.len()));
            for (i, (off, len)) in (0..).zip(ranges) {
                l.reborrow().get(i).set_offset_bytes(*off);
                l.reborrow().get(i).set_len_bytes(*len);
            }
        }
    }
}

/// Writes a join message (`m`, from [`Message::write`]): request, offer, ready,
/// abandon.
fn write_join(m: &Message, b: wire::message::Builder<'_>) {
    match m {
        Message::JoinRequest { incarnation } => b.init_join_request().set_incarnation(*incarnation),
        Message::JoinOffer {
            join,
            config,
            config_txn,
            disks,
        } => {
            let mut j = b.init_join_offer();
            j.set_join(*join);
            j.set_config(config);
            write_txn(config_txn, j.reborrow().init_config_txn());
            let mut list = j.init_disks(len_u32(disks.len()));
            for (i, d) in (0..).zip(disks) {
                list.set(i, d.as_str());
            }
        }
        Message::JoinReady { join } => b.init_join_ready().set_join(*join),
        Message::JoinAbandon { join, reason } => {
            let mut j = b.init_join_abandon();
            j.set_join(*join);
            j.set_reason(reason.as_str());
        }
        _ => unreachable!("write_join of {}", m.kind()),
    }
}

/// Writes a takeover or view message (`m`, from [`Message::write`]).
fn write_takeover(m: &Message, b: wire::message::Builder<'_>) {
    match m {
        Message::TakeoverQuery {
            master,
            incarnation,
        } => {
            let mut t = b.init_takeover_query();
            t.set_master(*master);
            t.set_incarnation(*incarnation);
        }
        Message::TakeoverInfo {
            view,
            granted,
            master_silent_ms,
            vote_kept,
        } => {
            let mut t = b.init_takeover_info();
            if let Some(v) = view {
                write_view(v, t.reborrow().init_view());
            }
            t.set_granted(*granted);
            match master_silent_ms {
                Some(ms) => t.reborrow().get_master_silent_ms().set_ms(*ms),
                None => t.reborrow().get_master_silent_ms().set_never(()),
            }
            t.set_vote_kept(*vote_kept);
        }
        Message::View {
            view,
            config_seq,
            last_txn,
            reasons,
        } => {
            let mut v = b.init_view();
            write_view(view, v.reborrow().init_view());
            v.set_config_seq(*config_seq);
            write_txn(last_txn, v.reborrow().init_last_txn());
            let mut list = v.init_reasons(len_u32(reasons.len()));
            for (i, (node, reason)) in (0..).zip(reasons) {
                let mut r = list.reborrow().get(i);
                r.set_node(*node);
                r.set_reason(reason.as_str());
            }
        }
        _ => unreachable!("write_takeover of {}", m.kind()),
    }
}

/// Writes a resync fence message (`m`, from [`Message::write`]).
fn write_fence(m: &Message, b: wire::message::Builder<'_>) {
    match m {
        Message::Fence {
            token,
            dg,
            volume,
            plex,
        } => {
            let mut f = b.init_fence();
            write_token(token, f.reborrow().init_token());
            f.set_dg(dg.as_str());
            f.set_volume(volume.as_str());
            f.set_plex(plex.as_str());
        }
        Message::FenceReply { token, result } => {
            let mut f = b.init_fence_reply();
            write_token(token, f.reborrow().init_token());
            write_result(result, f.init_result());
        }
        Message::Release { token } => write_token(token, b.init_release().init_token()),
        Message::ReleaseReply { token, intact } => {
            let mut r = b.init_release_reply();
            write_token(token, r.reborrow().init_token());
            r.set_intact(*intact);
        }
        _ => unreachable!("write_fence of {}", m.kind()),
    }
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn write_txn(t: &TxnId, mut b: wire::txn_id::Builder<'_>) {
    b.set_view(t.view);
    b.set_n(t.n);
}

fn write_echo(e: &Echo, mut b: wire::echo::Builder<'_>) {
    b.set_incarnation(e.incarnation);
    b.set_stamp_ms(e.stamp_ms);
}

fn write_token(t: &FenceToken, mut b: wire::fence_token::Builder<'_>) {
    b.set_view(t.view);
    b.set_n(t.n);
}

fn read_token(r: wire::fence_token::Reader<'_>) -> FenceToken {
    FenceToken {
        view: r.get_view(),
        n: r.get_n(),
    }
}

fn write_txn_state(t: &TxnState, mut b: wire::txn_state::Builder<'_>) {
    write_txn(&t.committed, b.reborrow().init_committed());
    b.set_seq(t.seq);
    if let Some(r) = &t.running {
        write_txn(r, b.init_running());
    }
}

fn write_view(v: &View, mut b: wire::view::Builder<'_>) {
    b.set_id(v.id);
    b.set_master(v.master);
    let mut members = b.reborrow().init_members(len_u32(v.members.len()));
    for (i, m) in (0..).zip(&v.members) {
        members.set(i, *m);
    }
    let mut incs = b.init_incarnations(len_u32(v.incarnations.len()));
    for (i, n) in (0..).zip(&v.incarnations) {
        incs.set(i, *n);
    }
}

fn write_result(r: &Result<(), String>, mut b: wire::answer::Builder<'_>) {
    match r {
        Ok(()) => b.set_ok(()),
        Err(e) => b.set_err(e.as_str()),
    }
}

/// The ctl API's error kind of a core error kind (the two sets agree; the ctl one
/// adds plexctl's own `usage`).
fn wire_kind(k: ErrorKind) -> WireKind {
    match k {
        ErrorKind::Refused => WireKind::Refused,
        ErrorKind::InUse => WireKind::InUse,
        ErrorKind::NotFound => WireKind::NotFound,
        ErrorKind::Exists => WireKind::Exists,
        ErrorKind::NoQuorum => WireKind::NoQuorum,
        ErrorKind::NotMaster => WireKind::NotMaster,
        ErrorKind::Busy => WireKind::Busy,
        ErrorKind::Unreachable => WireKind::Unreachable,
        ErrorKind::OutcomeUnknown => WireKind::OutcomeUnknown,
        ErrorKind::Failed => WireKind::Failed,
        ErrorKind::Internal => WireKind::Internal,
    }
}

/// The core error kind of a wire kind: `usage` (never sent by a node) and a kind a
/// newer node added read as [`ErrorKind::Internal`], so the client still fails.
fn core_kind(k: Result<WireKind, capnp::NotInSchema>) -> ErrorKind {
    match k {
        Ok(WireKind::Refused) => ErrorKind::Refused,
        Ok(WireKind::InUse) => ErrorKind::InUse,
        Ok(WireKind::NotFound) => ErrorKind::NotFound,
        Ok(WireKind::Exists) => ErrorKind::Exists,
        Ok(WireKind::NoQuorum) => ErrorKind::NoQuorum,
        Ok(WireKind::NotMaster) => ErrorKind::NotMaster,
        Ok(WireKind::Busy) => ErrorKind::Busy,
        Ok(WireKind::Unreachable) => ErrorKind::Unreachable,
        Ok(WireKind::OutcomeUnknown) => ErrorKind::OutcomeUnknown,
        Ok(WireKind::Failed) => ErrorKind::Failed,
        Ok(WireKind::Internal) | Ok(WireKind::Usage) | Err(_) => ErrorKind::Internal,
    }
}

fn text(r: capnp::Result<capnp::text::Reader<'_>>) -> capnp::Result<String> {
    r?.to_string()
        .map_err(|e| capnp::Error::failed(format!("text is not UTF-8: {e}")))
}

fn unknown(what: &str, e: capnp::NotInSchema) -> capnp::Error {
    capnp::Error::failed(format!("unknown {what} {}", e.0))
}

fn read_txn(r: wire::txn_id::Reader<'_>) -> TxnId {
    TxnId {
        view: r.get_view(),
        n: r.get_n(),
    }
}

fn read_echo(r: wire::echo::Reader<'_>) -> Echo {
    Echo {
        incarnation: r.get_incarnation(),
        stamp_ms: r.get_stamp_ms(),
    }
}

fn read_txn_state(r: wire::txn_state::Reader<'_>) -> capnp::Result<TxnState> {
    Ok(TxnState {
        committed: read_txn(r.get_committed()?),
        seq: r.get_seq(),
        running: if r.has_running() {
            Some(read_txn(r.get_running()?))
        } else {
            None
        },
    })
}

fn read_view(r: wire::view::Reader<'_>) -> capnp::Result<View> {
    Ok(View {
        id: r.get_id(),
        master: r.get_master(),
        members: r.get_members()?.iter().collect(),
        incarnations: r.get_incarnations()?.iter().collect(),
    })
}

fn read_result(r: wire::answer::Reader<'_>) -> capnp::Result<Result<(), String>> {
    use wire::answer::Which;
    Ok(match r.which().map_err(|e| unknown("result", e))? {
        Which::Ok(()) => Ok(()),
        Which::Err(t) => Err(text(t)?),
    })
}

fn read_message(r: wire::message::Reader<'_>) -> capnp::Result<Message> {
    use wire::message::Which;
    Ok(match r.which().map_err(|e| unknown("message kind", e))? {
        Which::Heartbeat(h) => read_heartbeat(h?)?,
        Which::Forward(f) => read_forward(f?)?,
        Which::Outcome(o) => read_outcome(o?)?,
        Which::Check(c) => read_check(c?)?,
        Which::CheckReply(c) => {
            let c = c?;
            use wire::check_reply::kind;
            Message::CheckReply {
                txn: read_txn(c.get_txn()?),
                result: read_result(c.get_result()?)?,
                kind: match c.get_kind().which().map_err(|e| unknown("kind", e))? {
                    kind::None(()) => None,
                    kind::Kind(k) => Some(core_kind(k)),
                },
            }
        }
        Which::Prepare(p) => Message::Prepare {
            txn: read_txn(p?.get_txn()?),
        },
        Which::PrepareReply(p) => {
            let p = p?;
            Message::PrepareReply {
                txn: read_txn(p.get_txn()?),
                result: read_result(p.get_result()?)?,
            }
        }
        Which::Commit(c) => Message::Commit {
            txn: read_txn(c?.get_txn()?),
        },
        Which::CommitAck(c) => Message::CommitAck {
            txn: read_txn(c?.get_txn()?),
        },
        Which::Applied(c) => Message::Applied {
            txn: read_txn(c?.get_txn()?),
        },
        Which::Abort(a) => Message::Abort {
            txn: read_txn(a?.get_txn()?),
        },
        Which::JoinRequest(j) => Message::JoinRequest {
            incarnation: j?.get_incarnation(),
        },
        Which::JoinOffer(j) => read_join_offer(j?)?,
        Which::JoinReady(j) => Message::JoinReady {
            join: j?.get_join(),
        },
        Which::JoinAbandon(j) => {
            let j = j?;
            Message::JoinAbandon {
                join: j.get_join(),
                reason: text(j.get_reason())?,
            }
        }
        Which::TakeoverQuery(t) => {
            let t = t?;
            Message::TakeoverQuery {
                master: t.get_master(),
                incarnation: t.get_incarnation(),
            }
        }
        Which::TakeoverInfo(t) => read_takeover_info(t?)?,
        Which::View(v) => read_view_message(v?)?,
        Which::Fence(f) => read_fence(f?)?,
        Which::FenceReply(f) => {
            let f = f?;
            Message::FenceReply {
                token: read_token(f.get_token()?),
                result: read_result(f.get_result()?)?,
            }
        }
        Which::Release(r) => Message::Release {
            token: read_token(r?.get_token()?),
        },
        Which::ReleaseReply(r) => {
            let r = r?;
            Message::ReleaseReply {
                token: read_token(r.get_token()?),
                intact: r.get_intact(),
            }
        }
    })
}

fn read_heartbeat(h: wire::heartbeat::Reader<'_>) -> capnp::Result<Message> {
    use wire::heartbeat::{master, member_ago_ms};
    Ok(Message::Heartbeat {
        incarnation: h.get_incarnation(),
        view_id: h.get_view_id(),
        master: match h.get_master().which().map_err(|e| unknown("master", e))? {
            master::None(()) => None,
            master::Node(n) => Some(n),
        },
        member: h.get_member(),
        stamp_ms: h.get_stamp_ms(),
        echo: if h.has_echo() {
            Some(read_echo(h.get_echo()?))
        } else {
            None
        },
        lease_left_ms: h.get_lease_left_ms(),
        max_view: h.get_max_view(),
        member_ago_ms: match h
            .get_member_ago_ms()
            .which()
            .map_err(|e| unknown("memberAgoMs", e))?
        {
            member_ago_ms::Never(()) => None,
            member_ago_ms::Ms(ms) => Some(ms),
        },
        txns: if h.has_txns() {
            Some(read_txn_state(h.get_txns()?)?)
        } else {
            None
        },
        leased: h.get_leased(),
        heard: if h.has_heard() {
            Some(read_echo(h.get_heard()?))
        } else {
            None
        },
        disk_vote: h.get_disk_vote(),
        applied: if h.has_applied() {
            Some(read_txn(h.get_applied()?))
        } else {
            None
        },
    })
}

fn read_forward(f: wire::forward::Reader<'_>) -> capnp::Result<Message> {
    use wire::wire_request::Which as W;
    let body = match f.get_body()?.which().map_err(|e| unknown("request", e))? {
        W::Change(bytes) => WireRequest::Change(bytes?.to_vec()),
        W::DetachPlex(d) => {
            let list = d.get_ranges()?;
            if list.len() as usize > super::detach::MAX_REPORTED_RANGES {
                return Err(capnp::Error::failed(format!(
                    "plex error report with {} ranges, at most {}",
                    list.len(),
                    super::detach::MAX_REPORTED_RANGES
                )));
            }
            WireRequest::DetachPlex {
                volume: text(d.get_volume())?,
                plex: text(d.get_plex())?,
                ranges: list
                    .iter()
                    .map(|r| (r.get_offset_bytes(), r.get_len_bytes()))
                    .collect(),
            }
        }
    };
    Ok(Message::Forward {
        request: RequestId(f.get_request()),
        body,
    })
}

fn read_outcome(o: wire::outcome::Reader<'_>) -> capnp::Result<Message> {
    use wire::outcome::kind;
    Ok(Message::Outcome {
        request: RequestId(o.get_request()),
        result: read_result(o.get_result()?)?,
        kind: match o.get_kind().which().map_err(|e| unknown("kind", e))? {
            kind::None(()) => None,
            kind::Kind(k) => Some(core_kind(k)),
        },
        node: if o.has_node() {
            Some(text(o.get_node())?)
        } else {
            None
        },
    })
}

fn read_check(c: wire::check::Reader<'_>) -> capnp::Result<Message> {
    Ok(Message::Check {
        txn: read_txn(c.get_txn()?),
        change: c.get_change()?.to_vec(),
        origin: Origin {
            node: c.get_origin_node(),
            request: RequestId(c.get_origin_request()),
        },
        base: if c.has_base() {
            Some(read_txn_state(c.get_base()?)?)
        } else {
            None
        },
    })
}

fn read_join_offer(j: wire::join_offer::Reader<'_>) -> capnp::Result<Message> {
    let mut disks = Vec::new();
    for d in j.get_disks()? {
        disks.push(text(d)?);
    }
    Ok(Message::JoinOffer {
        join: j.get_join(),
        config: j.get_config()?.to_vec(),
        config_txn: read_txn(j.get_config_txn()?),
        disks,
    })
}

fn read_takeover_info(t: wire::takeover_info::Reader<'_>) -> capnp::Result<Message> {
    use wire::takeover_info::master_silent_ms;
    Ok(Message::TakeoverInfo {
        view: if t.has_view() {
            Some(read_view(t.get_view()?)?)
        } else {
            None
        },
        granted: t.get_granted(),
        master_silent_ms: match t
            .get_master_silent_ms()
            .which()
            .map_err(|e| unknown("masterSilentMs", e))?
        {
            master_silent_ms::Never(()) => None,
            master_silent_ms::Ms(ms) => Some(ms),
        },
        vote_kept: t.get_vote_kept(),
    })
}

/// Reads a [`Message::View`] (the view itself: [`read_view`]).
fn read_view_message(v: wire::install_view::Reader<'_>) -> capnp::Result<Message> {
    let mut reasons = Vec::new();
    for r in v.get_reasons()? {
        reasons.push((r.get_node() as NodeId, text(r.get_reason())?));
    }
    Ok(Message::View {
        view: read_view(v.get_view()?)?,
        config_seq: v.get_config_seq(),
        last_txn: read_txn(v.get_last_txn()?),
        reasons,
    })
}

fn read_fence(f: wire::fence::Reader<'_>) -> capnp::Result<Message> {
    Ok(Message::Fence {
        token: read_token(f.get_token()?),
        dg: text(f.get_dg())?,
        volume: text(f.get_volume())?,
        plex: text(f.get_plex())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn txn(view: u64, n: u64) -> TxnId {
        TxnId { view, n }
    }

    fn view() -> View {
        View {
            id: 7,
            master: 2,
            members: vec![1, 2, 4],
            incarnations: vec![11, 22, 44],
        }
    }

    fn state(running: Option<TxnId>) -> TxnState {
        TxnState {
            committed: txn(6, 3),
            seq: 41,
            running,
        }
    }

    /// Every kind of message, with each optional field both set and unset.
    fn samples() -> Vec<Message> {
        let echo = Echo {
            incarnation: 5,
            stamp_ms: 123_456,
        };
        vec![
            Message::Heartbeat {
                incarnation: u64::MAX,
                view_id: 7,
                master: Some(2),
                member: true,
                stamp_ms: 99,
                echo: Some(echo),
                lease_left_ms: 1500,
                max_view: 9,
                member_ago_ms: Some(0),
                txns: Some(state(Some(txn(7, 1)))),
                leased: true,
                heard: Some(Echo {
                    incarnation: 6,
                    stamp_ms: 1,
                }),
                disk_vote: true,
                applied: Some(txn(6, 4)),
            },
            Message::Heartbeat {
                incarnation: 1,
                view_id: 0,
                master: None,
                member: false,
                stamp_ms: 0,
                echo: None,
                lease_left_ms: 0,
                max_view: 0,
                member_ago_ms: None,
                txns: None,
                leased: false,
                heard: None,
                disk_vote: false,
                applied: None,
            },
            Message::Heartbeat {
                incarnation: 1,
                view_id: 3,
                master: Some(0),
                member: true,
                stamp_ms: 0,
                echo: None,
                lease_left_ms: 0,
                max_view: 3,
                member_ago_ms: Some(5000),
                txns: Some(state(None)),
                leased: false,
                heard: None,
                disk_vote: false,
                applied: None,
            },
            Message::Forward {
                request: RequestId(3),
                body: WireRequest::Change(vec![0, 1, 2, 255]),
            },
            Message::Forward {
                request: RequestId(4),
                body: WireRequest::Change(Vec::new()),
            },
            Message::Forward {
                request: RequestId(5),
                body: WireRequest::DetachPlex {
                    volume: "dg1.vol1".into(),
                    plex: "vol1-02".into(),
                    ranges: Vec::new(),
                },
            },
            Message::Forward {
                request: RequestId(6),
                body: WireRequest::DetachPlex {
                    volume: "vol1".into(),
                    plex: "vol1-02".into(),
                    ranges: vec![(4096, 8192), (1 << 30, 512)],
                },
            },
            Message::Outcome {
                request: RequestId(4),
                result: Err("node b: volume v1 is in use".into()),
                kind: Some(ErrorKind::InUse),
                node: Some("b".into()),
            },
            Message::Outcome {
                request: RequestId(4),
                result: Ok(()),
                kind: None,
                node: None,
            },
            Message::Outcome {
                request: RequestId(4),
                result: Err(String::new()),
                kind: Some(ErrorKind::OutcomeUnknown),
                node: Some(String::new()),
            },
            Message::Check {
                txn: txn(3, 1),
                change: vec![1, 2, 3],
                origin: Origin {
                    node: 2,
                    request: RequestId(9),
                },
                base: Some(state(Some(txn(3, 1)))),
            },
            Message::Check {
                txn: txn(3, 2),
                change: Vec::new(),
                origin: Origin {
                    node: 0,
                    request: RequestId(0),
                },
                base: None,
            },
            Message::CheckReply {
                txn: txn(3, 1),
                result: Err("cannot open disk d1".into()),
                kind: Some(ErrorKind::Failed),
            },
            Message::CheckReply {
                txn: txn(3, 1),
                result: Ok(()),
                kind: None,
            },
            Message::Prepare { txn: txn(3, 1) },
            Message::PrepareReply {
                txn: txn(3, 1),
                result: Ok(()),
            },
            Message::PrepareReply {
                txn: txn(3, 1),
                result: Err("volume dg1.v1: quiesce timed out".into()),
            },
            Message::Commit { txn: txn(3, 1) },
            Message::CommitAck { txn: txn(3, 1) },
            Message::Applied { txn: txn(3, 1) },
            Message::Abort {
                txn: txn(u64::MAX, u64::MAX),
            },
            Message::JoinRequest { incarnation: 77 },
            Message::JoinOffer {
                join: 2,
                config: vec![9; 100],
                config_txn: txn(2, 5),
                disks: vec!["d1".into(), "d2".into(), "é".into()],
            },
            Message::JoinReady { join: 2 },
            Message::JoinAbandon {
                join: 2,
                reason: "cannot find disk d1 on node c".into(),
            },
            Message::TakeoverQuery {
                master: 1,
                incarnation: 12,
            },
            Message::TakeoverInfo {
                view: Some(view()),
                granted: true,
                master_silent_ms: Some(250),
                vote_kept: true,
            },
            Message::TakeoverInfo {
                view: None,
                granted: false,
                master_silent_ms: None,
                vote_kept: false,
            },
            Message::View {
                view: view(),
                config_seq: 41,
                last_txn: txn(6, 3),
                reasons: vec![
                    (3, "cannot find disk d1 on node c".into()),
                    (4, String::new()),
                ],
            },
            Message::View {
                view: View {
                    id: 1,
                    master: 1,
                    members: vec![1],
                    incarnations: vec![1],
                },
                config_seq: 0,
                last_txn: TxnId::default(),
                reasons: Vec::new(),
            },
            Message::Fence {
                token: FenceToken { view: 7, n: 3 },
                dg: "dg1".into(),
                volume: "v1".into(),
                plex: "v1-02".into(),
            },
            Message::FenceReply {
                token: FenceToken { view: 7, n: 3 },
                result: Err("node c: plex v1-02 is not SYNCING here".into()),
            },
            Message::FenceReply {
                token: FenceToken::default(),
                result: Ok(()),
            },
            Message::Release {
                token: FenceToken {
                    view: u64::MAX,
                    n: 1,
                },
            },
            Message::ReleaseReply {
                token: FenceToken { view: 7, n: 3 },
                intact: true,
            },
        ]
    }

    #[test]
    fn every_message_kind_round_trips() {
        let samples = samples();
        let kinds: std::collections::BTreeSet<_> = samples.iter().map(|m| m.kind()).collect();
        assert_eq!(kinds.len(), 22, "a sample of every kind: {kinds:?}");
        for m in &samples {
            let bytes = m.encode();
            assert_eq!(bytes.len() % 8, 0);
            assert_eq!(Message::decode(&bytes).as_ref(), Ok(m), "{}", m.brief());
        }
    }

    #[test]
    fn every_error_kind_round_trips() {
        use ErrorKind::*;
        for kind in [
            Refused,
            InUse,
            NotFound,
            Exists,
            NoQuorum,
            NotMaster,
            Busy,
            Unreachable,
            OutcomeUnknown,
            Failed,
            Internal,
        ] {
            let m = Message::CheckReply {
                txn: txn(1, 1),
                result: Err("x".into()),
                kind: Some(kind),
            };
            assert_eq!(Message::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn another_protocol_version_is_refused() {
        let mut message = Builder::new_default();
        let mut root = message.init_root::<wire::message::Builder>();
        Message::Commit { txn: txn(1, 1) }.write(root.reborrow());
        root.set_version(PROTOCOL_VERSION + 1);
        let bytes = serialize::write_message_to_words(&message);
        let e = Message::decode(&bytes).unwrap_err();
        assert!(
            e.contains(&format!("protocol version {}", PROTOCOL_VERSION + 1)),
            "{e}"
        );
        // Version 0: a message without the field (e.g. an empty struct).
        let mut message = Builder::new_default();
        message.init_root::<wire::message::Builder>();
        let bytes = serialize::write_message_to_words(&message);
        let e = Message::decode(&bytes).unwrap_err();
        assert!(e.contains("protocol version 0"), "{e}");
    }

    #[test]
    fn an_unknown_message_kind_is_an_error() {
        let mut bytes = Message::Commit { txn: txn(1, 1) }.encode();
        // One segment (8 bytes of table), the root pointer, then the root's data
        // word: `version` in bytes 0..4, the union's tag in bytes 4..6.
        assert_eq!(&bytes[16..20], &PROTOCOL_VERSION.to_le_bytes());
        bytes[20..22].copy_from_slice(&999u16.to_le_bytes());
        let e = Message::decode(&bytes).unwrap_err();
        assert!(e.contains("unknown message kind 999"), "{e}");
    }

    #[test]
    fn an_older_nodes_message_without_the_newer_fields_decodes_with_their_defaults() {
        // An Outcome of a node from before `kind` and `node`: they read as none.
        let mut message = Builder::new_default();
        let mut root = message.init_root::<wire::message::Builder>();
        root.set_version(PROTOCOL_VERSION);
        let mut o = root.init_outcome();
        o.set_request(4);
        o.init_result().set_err("x");
        let bytes = serialize::write_message_to_words(&message);
        assert_eq!(
            Message::decode(&bytes),
            Ok(Message::Outcome {
                request: RequestId(4),
                result: Err("x".into()),
                kind: None,
                node: None,
            })
        );
        // A Heartbeat with its first field only.
        let mut message = Builder::new_default();
        let mut root = message.init_root::<wire::message::Builder>();
        root.set_version(PROTOCOL_VERSION);
        root.init_heartbeat().set_incarnation(5);
        let bytes = serialize::write_message_to_words(&message);
        assert_eq!(
            Message::decode(&bytes),
            Ok(Message::Heartbeat {
                incarnation: 5,
                view_id: 0,
                master: None,
                member: false,
                stamp_ms: 0,
                echo: None,
                lease_left_ms: 0,
                max_view: 0,
                member_ago_ms: None,
                txns: None,
                leased: false,
                heard: None,
                disk_vote: false,
                applied: None,
            })
        );
    }

    #[test]
    fn a_newer_nodes_message_with_fields_this_node_does_not_know_decodes() {
        // A newer node's Prepare with more fields after `txn`: laid out like Check
        // (`txn` first, then data and pointers this node's Prepare does not have).
        // Relabel an encoded Check as a Prepare: it reads its `txn`, ignores the rest.
        let check = Message::Check {
            txn: txn(8, 2),
            change: vec![1, 2, 3],
            origin: Origin {
                node: 2,
                request: RequestId(9),
            },
            base: Some(state(None)),
        };
        let mut bytes = check.encode();
        assert_eq!(&bytes[20..22], &3u16.to_le_bytes(), "the tag of check");
        bytes[20..22].copy_from_slice(&5u16.to_le_bytes());
        assert_eq!(
            Message::decode(&bytes),
            Ok(Message::Prepare { txn: txn(8, 2) })
        );
    }

    #[test]
    fn oversized_input_is_refused() {
        let big = vec![0u8; MAX_MESSAGE_BYTES + 1];
        let e = Message::decode(&big).unwrap_err();
        assert!(e.contains("exceeds the limit"), "{e}");
        // A well-formed message over the limit (a configuration blob).
        let m = Message::JoinOffer {
            join: 1,
            config: vec![7; MAX_MESSAGE_BYTES],
            config_txn: txn(1, 1),
            disks: Vec::new(),
        };
        let e = Message::decode(&m.encode()).unwrap_err();
        assert!(e.contains("exceeds the limit"), "{e}");
        let mut message = Builder::new_default();
        m.write(message.init_root());
        let root = message
            .get_root_as_reader::<wire::message::Reader>()
            .unwrap();
        let e = Message::read(root).unwrap_err();
        assert!(e.contains("exceeds the limit"), "{e}");
    }

    #[test]
    fn garbage_and_truncated_input_is_an_error_not_a_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(10);
        let samples = samples();
        assert!(Message::decode(&[]).is_err());
        assert!(Message::decode(b"{\"Commit\":{\"txn\":{\"view\":1,\"n\":1}}}").is_err());
        for _ in 0..3000 {
            let len = rng.gen_range(0..256);
            let junk: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let _ = Message::decode(&junk);
            let good = samples[rng.gen_range(0..samples.len())].encode();
            // Every strict prefix is an error: the segment table says how long it is.
            let cut = rng.gen_range(0..good.len());
            assert!(Message::decode(&good[..cut]).is_err());
            let mut flipped = good.clone();
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..flipped.len());
                flipped[i] ^= 1 << rng.gen_range(0..8);
            }
            let _ = Message::decode(&flipped);
            let mut longer = good;
            longer.extend_from_slice(&[0; 8]);
            assert!(Message::decode(&longer).is_err());
        }
    }
}
