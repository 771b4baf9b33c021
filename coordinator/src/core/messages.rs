//! The messages coordinators exchange, and the identifiers they carry.
//!
//! Messages are plain data. Configurations and changes travel as opaque byte blobs
//! produced by [`ConfigModel`](super::ConfigModel)'s encode functions, so this enum is
//! not generic. On the wire a message is the `Message` struct of
//! `schema/cluster.capnp` (`super::codec`: [`Message::write`]/[`Message::read`] for
//! the daemon's peer stream, [`Message::encode`]/[`Message::decode`] for bytes); a field added
//! here is added there with a new ordinal, its default meaning what an older node did.

use std::fmt;

use super::ErrorKind;

/// A node's identifier from the cluster file.
pub type NodeId = u32;

/// Longest message [`Message::decode`] and [`Message::read`] accept, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A transaction's identifier: the view in which the master started it and a counter
/// within that view. Views only grow, so identifiers are unique within a cluster's life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxnId {
    /// View id at the start of the transaction.
    pub view: u64,
    /// Counter within that view, from 1.
    pub n: u64,
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.view, self.n)
    }
}

/// A resync fence's identifier: the view of the master that asked for it and a
/// counter of that master's fences. A node holds a fence only for its master's
/// current view, so a token of an older view is stale wherever it arrives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FenceToken {
    /// View id of the master that asked.
    pub view: u64,
    /// Counter of that master's fences, from 1.
    pub n: u64,
}

impl fmt::Display for FenceToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.view, self.n)
    }
}

/// A client request's identifier, chosen by the driver; unique per node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// Where a request came from: the node that received it from a client, and its id there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The node the client talks to.
    pub node: NodeId,
    /// The request's id on that node.
    pub request: RequestId,
}

/// A numbered cluster membership: who is in, and who is master.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct View {
    /// Increments on every membership change.
    pub id: u64,
    /// The master of this view.
    pub master: NodeId,
    /// Members, sorted ascending, master included.
    pub members: Vec<NodeId>,
    /// The incarnation of each member, in the order of `members`: a member heard
    /// with another incarnation has restarted and is no longer in the view.
    pub incarnations: Vec<u64>,
}

impl View {
    /// The incarnation `node` has in this view, if it is a member.
    pub fn incarnation(&self, node: NodeId) -> Option<u64> {
        let i = self.members.binary_search(&node).ok()?;
        self.incarnations.get(i).copied()
    }

    /// Whether the view is well formed: members sorted and unique, one incarnation each.
    pub fn is_well_formed(&self) -> bool {
        self.members.windows(2).all(|w| w[0] < w[1])
            && self.incarnations.len() == self.members.len()
            && self.contains(self.master)
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: NodeId) -> bool {
        self.members.binary_search(&node).is_ok()
    }

    /// The designated successor: the lowest-numbered member other than the master
    /// and other than the nodes in `excluded`.
    pub fn successor(&self, excluded: &std::collections::BTreeSet<NodeId>) -> Option<NodeId> {
        self.members
            .iter()
            .copied()
            .find(|&m| m != self.master && !excluded.contains(&m))
    }
}

/// A heartbeat stamp sent back to the node that made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Echo {
    /// The incarnation of the node that made the stamp (a stamp of an older start
    /// means nothing to a newer one: its clock started again).
    pub incarnation: u64,
    /// The stamp.
    pub stamp_ms: u64,
}

/// Where a master's transactions stand, as it tells the members of its view (in
/// heartbeats and with every CHECK): a member that missed a COMMIT or an ABORT (a
/// message lost while a link was cut) catches up, or rejoins when it cannot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TxnState {
    /// The transaction of the master's committed configuration.
    pub committed: TxnId,
    /// The committed configuration's sequence number.
    pub seq: u64,
    /// The transaction the master is running, if any.
    pub running: Option<TxnId>,
}

/// A request as it travels from a slave to the master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WireRequest {
    /// A configuration change, encoded by `ConfigModel::encode_change`.
    Change(Vec<u8>),
    /// A plex I/O error reported by a data plane: detach the plex cluster-wide.
    DetachPlex {
        /// Volume name.
        volume: String,
        /// Plex name.
        plex: String,
        /// The failed writes' byte ranges (offset, length); empty under the global
        /// detach policy (added later; an older node sends none).
        ranges: Vec<(u64, u64)>,
    },
}

/// Every message between coordinators.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Sent to every configured node every heartbeat interval.
    Heartbeat {
        /// The sender's incarnation (new at every start): a change means it restarted.
        incarnation: u64,
        /// The sender's view id (0 when it is not a member).
        view_id: u64,
        /// The master the sender knows of, if any.
        master: Option<NodeId>,
        /// Whether the sender is a member of a view.
        member: bool,
        /// The sender's clock when it sent this heartbeat (its own time base; only
        /// the sender compares it, when it comes back as `echo_ms`).
        stamp_ms: u64,
        /// The newest stamp the sender has received from the recipient, echoed back
        /// as a confirmation that the recipient is still its master (or, from a
        /// master, still a member of its view); none when the sender does not
        /// confirm it.
        echo: Option<Echo>,
        /// From a master to a member of its view: how much of the master's own lease
        /// was left when it sent this (a slave's lease never outlasts its master's).
        lease_left_ms: u64,
        /// The newest view id the sender has seen: a node that forms a cluster
        /// numbers its view above every view still remembered anywhere.
        max_view: u64,
        /// How long ago the sender was last a member of a view (none: never since it
        /// started): a new cluster forms only once every live node's last cluster
        /// is a lease in the past.
        member_ago_ms: Option<u64>,
        /// From a master to the members of its view: where its transactions stand.
        txns: Option<TxnState>,
        /// The sender is a master holding its lease (a majority confirmed it within
        /// the lease). Only such a master's newer view makes another master give way
        /// when a partition heals: a cut-off master's views may carry higher ids.
        leased: bool,
        /// The newest stamp the sender has heard from the recipient, whether or
        /// not it confirms it: the recipient learns this heartbeat left after it
        /// sent that stamp, so a heartbeat held in a buffer through a partition
        /// shows its age (a stale `leased` makes nobody give way).
        heard: Option<Echo>,
        /// The sender counts the quorum disk's vote (for `cluster status`).
        disk_vote: bool,
        /// From a slave to its master: the newest transaction the slave's data
        /// plane applied. It tells again what a lost [`Message::Applied`] said, so
        /// a held answer does not wait out [`super::APPLIED_WAIT_MS`] for it.
        applied: Option<TxnId>,
    },
    /// Slave → master: a client's request.
    Forward {
        /// The request's id on the sender.
        request: RequestId,
        /// What the client asked for.
        body: WireRequest,
    },
    /// Master → origin slave: the final result of a forwarded request.
    Outcome {
        /// The request's id on the receiver.
        request: RequestId,
        /// The result to give the client.
        result: Result<(), String>,
        /// The kind of the failure (absent from an older master's answer).
        kind: Option<ErrorKind>,
        /// The node that refused or failed (absent from an older master's answer).
        node: Option<String>,
    },
    /// Master → slaves: step 2, run your local checks on this change.
    Check {
        /// The transaction.
        txn: TxnId,
        /// The change, encoded by `ConfigModel::encode_change`.
        change: Vec<u8>,
        /// Who asked for it.
        origin: Origin,
        /// The master's committed transaction this one builds on (`running` is
        /// `txn`): a slave whose COMMIT of it was lost applies it first; one that
        /// is otherwise out of step refuses and rejoins.
        base: Option<TxnState>,
    },
    /// Slave → master: the local checks' result.
    CheckReply {
        /// The transaction.
        txn: TxnId,
        /// Ok, or why this node refuses (without the node name; the master adds it).
        result: Result<(), String>,
        /// The kind of the refusal (absent from an older slave's answer: refused).
        kind: Option<ErrorKind>,
    },
    /// Master → slaves: step 3, quiesce and stage the new layout.
    Prepare {
        /// The transaction.
        txn: TxnId,
    },
    /// Slave → master: the kernel phase's result.
    PrepareReply {
        /// The transaction.
        txn: TxnId,
        /// Ok, or why the data plane refused.
        result: Result<(), String>,
    },
    /// Master → slaves: step 4, apply the staged layout.
    Commit {
        /// The transaction.
        txn: TxnId,
    },
    /// Slave → master: COMMIT applied (the successor's is the commit point).
    CommitAck {
        /// The transaction.
        txn: TxnId,
    },
    /// Slave → master: this node's data plane applied the COMMIT of `txn`
    /// (sent after every COMMIT it applies; the master waits for it before
    /// answering a change whose answer must follow every node's apply,
    /// [`super::ConfigModel::answer_after_applied`]).
    Applied {
        /// The transaction.
        txn: TxnId,
    },
    /// Master → slaves: drop the transaction (and the staged layout).
    Abort {
        /// The transaction.
        txn: TxnId,
    },
    /// Joiner → master: let me in.
    JoinRequest {
        /// The joiner's incarnation.
        incarnation: u64,
    },
    /// Master → joiner: the shared disk groups' configuration and their disks.
    JoinOffer {
        /// The join attempt, echoed in the answer.
        join: u64,
        /// The committed configuration, encoded by `ConfigModel::encode`.
        config: Vec<u8>,
        /// The transaction that produced `config`.
        config_txn: TxnId,
        /// Every disk of the shared disk groups; the joiner must reach them all.
        disks: Vec<String>,
    },
    /// Joiner → master: disks reached and configuration loaded in the data plane.
    JoinReady {
        /// The join attempt.
        join: u64,
    },
    /// Joiner → master: the join is abandoned.
    JoinAbandon {
        /// The join attempt.
        join: u64,
        /// Why, e.g. `cannot find disk d1 on node c`.
        reason: String,
    },
    /// Designated successor → every live node: which view do you hold? Answered
    /// once the receiver has seen that start of the master go, so that no view from
    /// the master is still on its way to it.
    TakeoverQuery {
        /// The lost master.
        master: NodeId,
        /// Its incarnation in the successor's view.
        incarnation: u64,
    },
    /// Answer to `TakeoverQuery`: the sender's installed view, none if not a member.
    TakeoverInfo {
        /// The view.
        view: Option<View>,
        /// The sender's vote goes to this takeover: it has stopped confirming the
        /// lost master and gives its vote to no other successor of that master
        /// while this one lives.
        granted: bool,
        /// How long before sending this the sender last heard the lost master (none:
        /// never): the successor's bound on when the master's lease was last confirmed.
        master_silent_ms: Option<u64>,
        /// The sender's vote was already with this successor when the query came:
        /// it has confirmed the lost master no more since it first gave it (so a
        /// later round of votes need not wait for its `master_silent_ms` again).
        vote_kept: bool,
    },
    /// Master → members: install this view.
    View {
        /// The new view.
        view: View,
        /// The master's committed configuration's sequence number.
        config_seq: u64,
        /// The transaction of the master's committed configuration. A new master uses
        /// it to tell slaves whether their prepared transaction committed.
        last_txn: TxnId,
        /// Last failure reasons per node (abandoned joins), for `cluster status`.
        reasons: Vec<(NodeId, String)>,
    },
    /// Master → members (resync): quiesce `volume` for the copy of one chunk of
    /// SYNCING `plex` (docs/PROTOCOL.md, "Resync fences").
    Fence {
        /// The copy's fence.
        token: FenceToken,
        /// Disk group.
        dg: String,
        /// Volume.
        volume: String,
        /// The SYNCING plex: the member must hold it SYNCING (it applied the
        /// transaction that made it so, so its writes reach it).
        plex: String,
    },
    /// Member → master: the fence is held (the volume is quiesced here, or this
    /// node does not serve it), or why not.
    FenceReply {
        /// The fence.
        token: FenceToken,
        /// Ok, or why this node refuses or cannot quiesce.
        result: Result<(), String>,
    },
    /// Master → members: the chunk is copied (or given up); resume the volume.
    Release {
        /// The fence.
        token: FenceToken,
    },
    /// Member → master: whether the fence held from its hold until the release.
    ReleaseReply {
        /// The fence.
        token: FenceToken,
        /// False: it was broken (a kernel phase, a view change, its lease) or never
        /// held: the chunk is copied again.
        intact: bool,
    },
}

impl Message {
    /// A one-line summary for logs and traces (blobs left out).
    pub fn brief(&self) -> String {
        match self {
            Message::Forward {
                request,
                body: WireRequest::Change(b),
            } => {
                format!(
                    "Forward {{ request: {}, change: {} bytes }}",
                    request.0,
                    b.len()
                )
            }
            Message::Check { txn, origin, .. } => {
                format!("Check {{ txn: {txn}, origin: {origin:?} }}")
            }
            Message::JoinOffer {
                join,
                config_txn,
                disks,
                ..
            } => {
                format!("JoinOffer {{ join: {join}, config_txn: {config_txn}, disks: {disks:?} }}")
            }
            m => format!("{m:?}"),
        }
    }

    /// A short name for logs and traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Heartbeat { .. } => "Heartbeat",
            Message::Forward { .. } => "Forward",
            Message::Outcome { .. } => "Outcome",
            Message::Check { .. } => "Check",
            Message::CheckReply { .. } => "CheckReply",
            Message::Prepare { .. } => "Prepare",
            Message::PrepareReply { .. } => "PrepareReply",
            Message::Commit { .. } => "Commit",
            Message::CommitAck { .. } => "CommitAck",
            Message::Applied { .. } => "Applied",
            Message::Abort { .. } => "Abort",
            Message::JoinRequest { .. } => "JoinRequest",
            Message::JoinOffer { .. } => "JoinOffer",
            Message::JoinReady { .. } => "JoinReady",
            Message::JoinAbandon { .. } => "JoinAbandon",
            Message::TakeoverQuery { .. } => "TakeoverQuery",
            Message::TakeoverInfo { .. } => "TakeoverInfo",
            Message::View { .. } => "View",
            Message::Fence { .. } => "Fence",
            Message::FenceReply { .. } => "FenceReply",
            Message::Release { .. } => "Release",
            Message::ReleaseReply { .. } => "ReleaseReply",
        }
    }
}
