//! Plex resync as part of the state machine: the master's chunked copy of every
//! SYNCING plex of the shared groups, under a fence of every member per chunk, and
//! the fences each member holds (docs/PROTOCOL.md, "Resync fences").
//!
//! A SYNCING plex takes every new write on every node that applied the transaction
//! that made it SYNCING. The rest is copied from an ACTIVE plex, one chunk of at most
//! [`RESYNC_CHUNK_BYTES`] at a time: the whole plex, or only its ranges
//! ([`SyncingPlex::ranges`], a crashed node's dirty regions). A chunk is a list of
//! pieces: ranges shorter than a chunk share one fence round (up to
//! [`RESYNC_CHUNK_BYTES`] of copy and [`MAX_CHUNK_PIECES`] pieces), since the
//! round's messages and quiesces, not the copy, cost most of a small range's time.
//! Every copy starts
//! again when a node start is recovered (it may have written chunks already
//! copied). A host write to a chunk through *any* node between
//! the copy's read and its write would be overwritten on the SYNCING plex with older
//! data, so for each chunk the master (the *copier*):
//!
//! 1. sends `Fence` to every member of its view (itself included, without the
//!    network); each member quiesces the volume on its data plane
//!    ([`Action::Quiesce`], answered by [`Event::Quiesced`]) and answers `FenceReply`;
//! 2. once every member holds the fence, and the master may commit (it holds its
//!    lease, every lost node's lease has run out), copies the chunk
//!    ([`Action::CopyChunk`], answered by [`Event::ChunkCopied`]); the copy's write is
//!    refused past the master's lease, so a master frozen mid-copy cannot land it
//!    after a successor took over;
//! 3. sends `Release`; each member resumes the volume ([`Action::Resume`]) and
//!    answers whether its fence held from the hold until then (`ReleaseReply`);
//! 4. moves to the next chunk if every fence held and the view did not change;
//!    otherwise copies the same chunk again (after a short pause, growing).
//!
//! When every chunk is copied, the master runs the model's `resync_done` change
//! (SetPlexState ACTIVE) through the normal transaction path. A new master restarts
//! every SYNCING plex from its first chunk (it knows nothing of the old master's
//! progress).
//!
//! A member (the *fence side*) holds a fence only for its current master, in the
//! view the token names, while no transaction is in progress here, and only once it
//! holds the plex SYNCING. It breaks a fence (resumes I/O) when a kernel phase needs
//! the data plane (before the `KernelPrepare`/`KernelLoad`/... action of the step),
//! when its master or view changes, when the fence's lease (`fence_lease_ms`) runs
//! out, when it stops and when its data plane is lost. A broken fence's release
//! answers "not intact", so the chunk is copied again.

use super::*;

/// Largest copy under one fence.
pub const RESYNC_CHUNK_BYTES: u64 = 1 << 20;
/// Most ranges (pieces) copied under one fence.
pub const MAX_CHUNK_PIECES: usize = 64;
/// Most plexes a master resyncs at once (others wait for a slot).
pub const MAX_RESYNCS: usize = 8;
/// Most fences a node holds at once (one per volume).
pub const MAX_FENCES: usize = 256;
/// Request ids from here on are the master's own `resync_done` changes (never a
/// driver's: drivers count from 1).
pub const RESYNC_REQUEST_BASE: u64 = 1 << 62;
/// Pause before a chunk is fenced again after a failed round (doubles per failed
/// attempt, up to 16 times this).
pub const RESYNC_RETRY_MS: u64 = 20;
/// A progress action every this many chunks.
pub const RESYNC_PROGRESS_EVERY_CHUNKS: u64 = 16;

/// The master's resyncs.
#[derive(Debug, Default)]
pub(super) struct Copier {
    next_token: u64,
    next_gen: u64,
    /// By (disk group, plex).
    copies: BTreeMap<(String, String), Copy>,
    /// The open node starts when the copies were last driven: one gone without a
    /// clean close was recovered, and its data plane may have died writing a
    /// chunk already copied (to the SYNCING plex and not the ACTIVE one): every
    /// copy starts again.
    open_seen: Vec<(NodeId, u64)>,
}

#[derive(Debug)]
struct Copy {
    plex: SyncingPlex,
    /// Distinguishes this resync from an earlier one of the same plex.
    gen: u64,
    /// Bytes copied so far (progress).
    offset: u64,
    /// The ranges to copy ([`SyncingPlex::copy_ranges`]).
    todo: Vec<(u64, u64)>,
    /// The next range to copy (`todo.len()`: all copied).
    at: usize,
    /// Bytes of that range copied.
    pos: u64,
    /// Failed rounds of the current chunk.
    attempts: u32,
    chunks: u64,
    step: Step,
}

#[derive(Debug)]
enum Step {
    /// Waiting to fence the next chunk.
    Idle { not_before_ms: u64 },
    /// Fences asked for; waiting for every member's answer.
    Fencing(Round),
    /// Every member holds its fence; the copy runs.
    Copying(Round),
    /// Releases sent; waiting for every member's answer.
    Releasing(Round),
    /// Every chunk is copied; the ACTIVE change is (to be) proposed.
    Done { proposed: bool, not_before_ms: u64 },
}

/// One chunk's fences.
#[derive(Debug)]
struct Round {
    token: FenceToken,
    /// The chunk: (volume offset, bytes) of each piece.
    pieces: Vec<(u64, u64)>,
    /// Where the copy goes on once this chunk counts ([`Copy::at`], [`Copy::pos`]).
    next: (usize, u64),
    /// Bytes of the chunk.
    len: u64,
    members: Vec<NodeId>,
    awaiting: BTreeSet<NodeId>,
    /// Why the round does not count (the chunk is copied again).
    why: Option<String>,
    since_ms: u64,
}

/// The fences this node holds (fence side).
#[derive(Debug, Default)]
pub(super) struct Fences {
    /// By (disk group, volume).
    held: BTreeMap<(String, String), Held>,
}

#[derive(Debug)]
struct Held {
    holder: NodeId,
    token: FenceToken,
    since_ms: u64,
    /// The quiesce asked for and not answered yet (its token).
    quiescing: Option<FenceToken>,
}

impl Copy {
    /// Volume offset of the chunk being copied.
    fn chunk_offset(&self) -> u64 {
        self.todo.get(self.at).map_or(0, |r| r.0) + self.pos
    }

    /// The next chunk from (`at`, `pos`): its pieces and where the copy goes on
    /// after it.
    fn next_chunk(&self) -> (Vec<(u64, u64)>, (usize, u64)) {
        chunk_pieces(&self.todo, self.at, self.pos)
    }
}

/// The chunk of `todo` (ascending, disjoint ranges) that starts `pos` bytes into
/// range `at`: pieces of consecutive ranges until [`RESYNC_CHUNK_BYTES`] bytes or
/// [`MAX_CHUNK_PIECES`] pieces; and the (range, bytes into it) after the chunk.
fn chunk_pieces(
    todo: &[(u64, u64)],
    mut at: usize,
    mut pos: u64,
) -> (Vec<(u64, u64)>, (usize, u64)) {
    let mut pieces: Vec<(u64, u64)> = Vec::new();
    let mut left = RESYNC_CHUNK_BYTES;
    while left > 0 && pieces.len() < MAX_CHUNK_PIECES {
        let Some(&(offset, len)) = todo.get(at) else {
            break;
        };
        let n = left.min(len.saturating_sub(pos));
        if n > 0 {
            pieces.push((offset + pos, n));
            left -= n;
            pos += n;
        }
        if pos >= len {
            at += 1;
            pos = 0;
        }
    }
    (pieces, (at, pos))
}

fn is_kernel_action<M: ConfigModel>(a: &Action<M>) -> bool {
    matches!(
        a,
        Action::KernelPrepare { .. }
            | Action::KernelCommit { .. }
            | Action::KernelAbort { .. }
            | Action::KernelLoad { .. }
            | Action::LeaveCluster { .. }
    )
}

impl<M: ConfigModel> Node<M> {
    /// The fences this node holds: (disk group, volume, holder, token).
    pub fn fences_held(&self) -> Vec<(String, String, NodeId, FenceToken)> {
        self.fences
            .held
            .iter()
            .map(|((dg, v), h)| (dg.clone(), v.clone(), h.holder, h.token))
            .collect()
    }

    /// The resyncs this master runs: (plex, bytes copied).
    pub fn resyncs(&self) -> Vec<(SyncingPlex, u64)> {
        self.copier
            .copies
            .values()
            .map(|c| (c.plex.clone(), c.offset))
            .collect()
    }

    // ---- fence side ----

    fn fence_refusal(
        &self,
        from: NodeId,
        token: FenceToken,
        dg: &str,
        volume: &str,
        plex: &str,
    ) -> Option<String> {
        let Some(view) = self
            .view
            .as_ref()
            .filter(|_| matches!(self.state, State::Member))
        else {
            return Some("not a cluster member".into());
        };
        if view.master != from {
            return Some(format!(
                "node {} is not the master of this node's view {} (node {} is)",
                self.name(from),
                view.id,
                self.name(view.master)
            ));
        }
        if view.id != token.view {
            return Some(format!(
                "fence {token} is of view {}, this node holds view {}",
                token.view, view.id
            ));
        }
        if self.stopping {
            return Some("shutting down".into());
        }
        if self.txn_in_progress() || self.out.iter().any(is_kernel_action) {
            return Some("a transaction is in progress".into());
        }
        let syncing = self
            .committed
            .config
            .syncing_plexes()
            .iter()
            .any(|p| p.dg == dg && p.volume == volume && p.plex == plex);
        if !syncing {
            return Some(format!(
                "plex {plex} of volume {volume} (disk group {dg}) is not SYNCING in this node's configuration (seq {}, transaction {})",
                self.committed.config.seq(),
                self.committed.txn
            ));
        }
        let key = (dg.to_string(), volume.to_string());
        if self.fences.held.len() >= MAX_FENCES && !self.fences.held.contains_key(&key) {
            return Some(format!("{MAX_FENCES} fences already held"));
        }
        None
    }

    /// A `Fence` from `from` (or this master's own fence): the answer now, or None
    /// when it comes with the quiesce's answer.
    fn fence_hold(
        &mut self,
        now_ms: u64,
        from: NodeId,
        token: FenceToken,
        dg: &str,
        volume: &str,
        plex: &str,
    ) -> Option<Result<(), String>> {
        if let Some(why) = self.fence_refusal(from, token, dg, volume, plex) {
            let e = format!(
                "node {}: no fence {token} on volume {volume} of disk group {dg}: {why}",
                self.name(self.cfg.me)
            );
            log::info!("{e}");
            return Some(Err(e));
        }
        let key = (dg.to_string(), volume.to_string());
        if let Some(h) = self.fences.held.get_mut(&key) {
            // An earlier fence's release never came (or this is a duplicate): the
            // volume stays quiesced and the new fence takes it over.
            h.holder = from;
            h.token = token;
            h.since_ms = now_ms;
            return h.quiescing.is_none().then_some(Ok(()));
        }
        self.fences.held.insert(
            key,
            Held {
                holder: from,
                token,
                since_ms: now_ms,
                quiescing: Some(token),
            },
        );
        self.out.push(Action::Quiesce {
            dg: dg.to_string(),
            volume: volume.to_string(),
            token,
        });
        None
    }

    pub(super) fn on_fence(
        &mut self,
        now_ms: u64,
        from: NodeId,
        token: FenceToken,
        dg: String,
        volume: String,
        plex: String,
    ) {
        if let Some(result) = self.fence_hold(now_ms, from, token, &dg, &volume, &plex) {
            self.fence_answer(now_ms, from, Message::FenceReply { token, result });
        }
    }

    /// The data plane answered [`Action::Quiesce`].
    pub(super) fn on_quiesced(
        &mut self,
        now_ms: u64,
        dg: String,
        volume: String,
        token: FenceToken,
        result: Result<(), String>,
    ) {
        let key = (dg, volume);
        let Some(h) = self.fences.held.get_mut(&key) else {
            // Released or broken meanwhile: its Resume is queued after the quiesce.
            return;
        };
        if h.quiescing != Some(token) {
            return;
        }
        h.quiescing = None;
        let (holder, current) = (h.holder, h.token);
        let result = match result {
            Ok(()) => Ok(()),
            Err(e) => {
                self.fences.held.remove(&key);
                let (dg, volume) = key;
                let e = format!(
                    "node {}: volume {volume} of disk group {dg}: cannot quiesce for fence {current}: {e}",
                    self.name(self.cfg.me)
                );
                log::warn!("{e}");
                self.out.push(Action::Resume { dg, volume });
                Err(e)
            }
        };
        self.fence_answer(
            now_ms,
            holder,
            Message::FenceReply {
                token: current,
                result,
            },
        );
    }

    pub(super) fn on_release(&mut self, now_ms: u64, from: NodeId, token: FenceToken) {
        let key = self
            .fences
            .held
            .iter()
            .find(|(_, h)| h.token == token && h.holder == from)
            .map(|(k, _)| k.clone());
        let intact = match key.and_then(|k| self.fences.held.remove(&k).map(|h| (k, h))) {
            Some(((dg, volume), h)) => {
                self.out.push(Action::Resume { dg, volume });
                h.quiescing.is_none()
            }
            None => false,
        };
        self.fence_answer(now_ms, from, Message::ReleaseReply { token, intact });
    }

    /// A fence-side answer: to a peer, or to this node's own copier.
    fn fence_answer(&mut self, now_ms: u64, to: NodeId, msg: Message) {
        if to == self.cfg.me {
            match msg {
                Message::FenceReply { token, result } => {
                    self.copier_on_fence_reply(now_ms, to, token, result)
                }
                Message::ReleaseReply { token, intact } => {
                    self.copier_on_release_reply(now_ms, to, token, intact)
                }
                _ => {}
            }
        } else {
            self.send(to, msg);
        }
    }

    /// Breaks the fences that no longer hold (called after every event): all of
    /// them when the step has a kernel phase (their Resume goes before it), the
    /// ones whose lease ran out or whose holder is no longer this node's master in
    /// the token's view, and all when stopping.
    pub(super) fn fences_check(&mut self, now_ms: u64) {
        if self.fences.held.is_empty() {
            return;
        }
        let me = self.cfg.me;
        let kernel_at = self.out.iter().position(is_kernel_action);
        let member = matches!(self.state, State::Member);
        let mut broken = Vec::new();
        for (key, h) in &self.fences.held {
            let why = if kernel_at.is_some() {
                Some("a kernel phase needs the data plane".to_string())
            } else if self.stopping {
                Some("shutting down".to_string())
            } else if now_ms >= h.since_ms.saturating_add(self.cfg.fence_lease_ms) {
                Some(format!(
                    "its lease of {} ms ran out",
                    self.cfg.fence_lease_ms
                ))
            } else if !member
                || self
                    .view
                    .as_ref()
                    .is_none_or(|v| v.master != h.holder || v.id != h.token.view)
            {
                Some(format!(
                    "node {} is no longer this node's master in view {}",
                    self.name(h.holder),
                    h.token.view
                ))
            } else {
                None
            };
            if let Some(why) = why {
                broken.push((key.clone(), why));
            }
        }
        let mut resumes = Vec::new();
        for ((dg, volume), why) in broken {
            if let Some(h) = self.fences.held.remove(&(dg.clone(), volume.clone())) {
                log::info!(
                    "node {}: fence {} of node {} on volume {volume} of disk group {dg}: broken: {why}",
                    self.name(me),
                    h.token,
                    self.name(h.holder)
                );
            }
            resumes.push(Action::Resume { dg, volume });
        }
        let at = kernel_at.unwrap_or(self.out.len());
        self.out.splice(at..at, resumes);
    }

    /// The data plane was lost (its quiesces with it): every fence is broken.
    pub(super) fn fences_lost(&mut self) {
        for ((dg, volume), h) in std::mem::take(&mut self.fences.held) {
            log::info!(
                "node {}: fence {} on volume {volume} of disk group {dg}: broken: the data plane was lost",
                self.name(self.cfg.me),
                h.token
            );
            self.out.push(Action::Resume { dg, volume });
        }
    }

    // ---- copier (master) side ----

    fn progress(&mut self, c: &SyncingPlex, done_bytes: u64, finished: Option<ResyncEnd>) {
        self.out.push(Action::ResyncProgress {
            plex: c.clone(),
            done_bytes,
            total_bytes: c.bytes_to_copy(),
            finished,
        });
    }

    /// Starts, drives and ends the master's resyncs (called after every event).
    pub(super) fn resync_poll(&mut self, now_ms: u64) {
        if !self.is_master() || self.stopping {
            if !self.copier.copies.is_empty() {
                let why = format!(
                    "node {} is no longer the master; a new master starts the resync again",
                    self.name(self.cfg.me)
                );
                for (_, c) in std::mem::take(&mut self.copier.copies) {
                    self.progress(&c.plex, c.offset, Some(ResyncEnd::Stopped(why.clone())));
                }
            }
            self.copier.open_seen.clear();
            return;
        }
        let want = self.committed.config.syncing_plexes();
        let open = self.committed.config.open_nodes();
        let recovered = self
            .copier
            .open_seen
            .iter()
            .find(|s| !open.contains(s) && !self.recovery_closed(**s))
            .copied();
        self.copier.open_seen = open;
        if let (Some((node, inc)), false) = (recovered, self.copier.copies.is_empty()) {
            let line = format!(
                "node {}: node {} (start {inc}) was recovered: every resync starts again (its data plane may have written chunks already copied)",
                self.name(self.cfg.me),
                self.name(node)
            );
            self.log(log::Level::Info, line);
        }
        let gone: Vec<(String, String)> = self
            .copier
            .copies
            .iter()
            .filter(|(_, c)| recovered.is_some() || !want.contains(&c.plex))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            let Some(c) = self.copier.copies.remove(&k) else {
                continue;
            };
            let no_longer = || {
                let fate = self.committed.config.plex_fate(&c.plex);
                ResyncEnd::Stopped(match fate {
                    Some(fate) => format!("plex {} {fate}", c.plex.plex),
                    None => format!("plex {} is no longer SYNCING", c.plex.plex),
                })
            };
            let finished = match &c.step {
                Step::Done { .. } if recovered.is_none() => ResyncEnd::Done,
                Step::Done { .. } => ResyncEnd::Stopped(format!(
                    "plex {}: started again after a node's recovery",
                    c.plex.plex
                )),
                Step::Fencing(r) | Step::Copying(r) | Step::Releasing(r) => {
                    let end = no_longer();
                    let token = r.token;
                    let me = self.cfg.me;
                    for &m in r.members.iter().filter(|&&m| m != me) {
                        self.send(m, Message::Release { token });
                    }
                    self.on_release(now_ms, self.cfg.me, token);
                    end
                }
                Step::Idle { .. } => no_longer(),
            };
            self.progress(&c.plex, c.offset, Some(finished));
        }
        for p in want {
            let key = (p.dg.clone(), p.plex.clone());
            if self.copier.copies.contains_key(&key) || self.copier.copies.len() >= MAX_RESYNCS {
                continue;
            }
            self.copier.next_gen += 1;
            let todo = p.copy_ranges();
            let line = format!(
                "node {}: resync of plex {} of volume {} (disk group {}): started, {} bytes in {} range(s){}",
                self.name(self.cfg.me),
                p.plex,
                p.volume,
                p.dg,
                p.bytes_to_copy(),
                todo.len(),
                // A recovery's whole resync is one range over the volume.
                if p.ranges.is_empty() || todo == [(0, p.size_bytes)] {
                    " (the whole plex)"
                } else {
                    " (dirty regions)"
                }
            );
            self.log(log::Level::Info, line);
            self.progress(&p, 0, None);
            self.copier.copies.insert(
                key,
                Copy {
                    plex: p,
                    gen: self.copier.next_gen,
                    offset: 0,
                    todo,
                    at: 0,
                    pos: 0,
                    attempts: 0,
                    chunks: 0,
                    step: Step::Idle { not_before_ms: 0 },
                },
            );
        }
        let keys: Vec<(String, String)> = self.copier.copies.keys().cloned().collect();
        for key in keys {
            self.copy_drive(now_ms, &key);
        }
    }

    fn copy_drive(&mut self, now_ms: u64, key: &(String, String)) {
        let idle = self.master.as_ref().is_some_and(|m| m.is_idle())
            && self.may_commit(now_ms)
            && !self.out.iter().any(is_kernel_action);
        let view_id = self.view.as_ref().map_or(0, |v| v.id);
        let timeout = self.cfg.reply_timeout_ms;
        let Some(c) = self.copier.copies.get_mut(key) else {
            return;
        };
        match &mut c.step {
            Step::Idle { not_before_ms } if idle && now_ms >= *not_before_ms => {
                if c.at >= c.todo.len() {
                    c.step = Step::Done {
                        proposed: false,
                        not_before_ms: now_ms,
                    };
                    return self.copy_drive(now_ms, key);
                }
                self.copy_fence(now_ms, key);
            }
            Step::Fencing(r) => {
                if r.token.view != view_id {
                    r.why
                        .get_or_insert_with(|| format!("the view changed from {}", r.token.view));
                    self.copy_release(now_ms, key);
                } else if now_ms >= r.since_ms + timeout {
                    let late = r.awaiting.clone();
                    r.why.get_or_insert_with(|| {
                        format!("no fence answer from nodes {late:?} within {timeout} ms")
                    });
                    self.copy_release(now_ms, key);
                }
            }
            Step::Releasing(r) => {
                let stale = r.token.view != view_id;
                if stale || now_ms >= r.since_ms + timeout {
                    let late = r.awaiting.clone();
                    r.why.get_or_insert_with(|| {
                        if stale {
                            format!("the view changed from {}", r.token.view)
                        } else {
                            format!("no release answer from nodes {late:?} within {timeout} ms")
                        }
                    });
                    r.awaiting.clear();
                    self.copy_round_end(now_ms, key);
                }
            }
            Step::Done {
                proposed: false,
                not_before_ms,
            } if now_ms >= *not_before_ms => {
                let (plex, gen) = (c.plex.clone(), c.gen);
                c.step = Step::Done {
                    proposed: true,
                    not_before_ms: now_ms,
                };
                let origin = Origin {
                    node: self.cfg.me,
                    request: RequestId(RESYNC_REQUEST_BASE + gen),
                };
                self.master_enqueue(now_ms, origin, Request::ResyncDone { plex, gen });
            }
            _ => {}
        }
    }

    /// Fences the next chunk on every member.
    fn copy_fence(&mut self, now_ms: u64, key: &(String, String)) {
        let Some(view) = self.view.clone() else {
            return;
        };
        self.copier.next_token += 1;
        let token = FenceToken {
            view: view.id,
            n: self.copier.next_token,
        };
        let Some(c) = self.copier.copies.get_mut(key) else {
            return;
        };
        let (pieces, next) = c.next_chunk();
        if pieces.is_empty() {
            return;
        }
        let len = pieces.iter().map(|p| p.1).sum();
        log::debug!(
            "resync of plex {}: fence {token}: {} piece(s), {len} bytes from offset {}",
            c.plex.plex,
            pieces.len(),
            pieces[0].0
        );
        c.step = Step::Fencing(Round {
            token,
            pieces,
            next,
            len,
            members: view.members.clone(),
            awaiting: view.members.iter().copied().collect(),
            why: None,
            since_ms: now_ms,
        });
        let p = c.plex.clone();
        let msg = Message::Fence {
            token,
            dg: p.dg.clone(),
            volume: p.volume.clone(),
            plex: p.plex.clone(),
        };
        let me = self.cfg.me;
        for &m in view.members.iter().filter(|&&m| m != me) {
            self.send(m, msg.clone());
        }
        self.on_fence(now_ms, me, token, p.dg, p.volume, p.plex);
    }

    fn copy_find(&self, token: FenceToken) -> Option<(String, String)> {
        self.copier
            .copies
            .iter()
            .find(|(_, c)| match &c.step {
                Step::Fencing(r) | Step::Copying(r) | Step::Releasing(r) => r.token == token,
                _ => false,
            })
            .map(|(k, _)| k.clone())
    }

    pub(super) fn copier_on_fence_reply(
        &mut self,
        now_ms: u64,
        from: NodeId,
        token: FenceToken,
        result: Result<(), String>,
    ) {
        let Some(key) = self.copy_find(token) else {
            return;
        };
        let may_commit = self.may_commit(now_ms);
        let view_id = self.view.as_ref().map_or(0, |v| v.id);
        let deadline_ms = self.lease_until_ms().unwrap_or(now_ms);
        let Some(c) = self.copier.copies.get_mut(&key) else {
            return;
        };
        let Step::Fencing(r) = &mut c.step else {
            return;
        };
        r.awaiting.remove(&from);
        if let Err(e) = result {
            r.why = Some(format!("cannot fence: {e}"));
            return self.copy_release(now_ms, &key);
        }
        if !r.awaiting.is_empty() {
            return;
        }
        if r.token.view != view_id || !may_commit {
            r.why = Some("the view changed or this master may not commit".into());
            return self.copy_release(now_ms, &key);
        }
        let Step::Fencing(r) = std::mem::replace(&mut c.step, Step::Idle { not_before_ms: 0 })
        else {
            return;
        };
        let action = Action::CopyChunk {
            token,
            dg: c.plex.dg.clone(),
            volume: c.plex.volume.clone(),
            plex: c.plex.plex.clone(),
            pieces: r.pieces.clone(),
            deadline_ms,
        };
        log::debug!(
            "resync of plex {}: fence {token} held by every member: copying",
            c.plex.plex
        );
        c.step = Step::Copying(r);
        self.out.push(action);
    }

    /// The driver answered [`Action::CopyChunk`].
    pub(super) fn on_chunk_copied(
        &mut self,
        now_ms: u64,
        token: FenceToken,
        result: Result<(), String>,
    ) {
        let Some(key) = self.copy_find(token) else {
            return;
        };
        let me = self.name(self.cfg.me);
        let Some(c) = self.copier.copies.get_mut(&key) else {
            return;
        };
        let at = c.chunk_offset();
        let Step::Copying(r) = &mut c.step else {
            return;
        };
        log::debug!(
            "resync of plex {}: fence {token}: copied, releasing",
            c.plex.plex
        );
        if let Err(e) = result {
            let e = format!(
                "node {me}: resync of plex {} of volume {}: copy of {} bytes in {} piece(s) from offset {}: {e}",
                c.plex.plex,
                c.plex.volume,
                r.len,
                r.pieces.len(),
                at
            );
            r.why = Some(e.clone());
            self.log(log::Level::Warn, e);
        }
        self.copy_release(now_ms, &key);
    }

    /// Releases the round's fences on every member.
    fn copy_release(&mut self, now_ms: u64, key: &(String, String)) {
        let Some(c) = self.copier.copies.get_mut(key) else {
            return;
        };
        let round = match std::mem::replace(&mut c.step, Step::Idle { not_before_ms: 0 }) {
            Step::Fencing(r) | Step::Copying(r) => r,
            other => {
                c.step = other;
                return;
            }
        };
        let token = round.token;
        let members = round.members.clone();
        c.step = Step::Releasing(Round {
            awaiting: members.iter().copied().collect(),
            since_ms: now_ms,
            ..round
        });
        let me = self.cfg.me;
        for &m in members.iter().filter(|&&m| m != me) {
            self.send(m, Message::Release { token });
        }
        if members.contains(&me) {
            self.on_release(now_ms, me, token);
        }
    }

    pub(super) fn copier_on_release_reply(
        &mut self,
        now_ms: u64,
        from: NodeId,
        token: FenceToken,
        intact: bool,
    ) {
        let Some(key) = self.copy_find(token) else {
            return;
        };
        let name = self.name(from);
        let Some(c) = self.copier.copies.get_mut(&key) else {
            return;
        };
        let Step::Releasing(r) = &mut c.step else {
            return;
        };
        r.awaiting.remove(&from);
        if !intact {
            r.why
                .get_or_insert_with(|| format!("node {name}'s fence did not hold"));
        }
        if r.awaiting.is_empty() {
            self.copy_round_end(now_ms, &key);
        }
    }

    /// Every release is answered (or given up on): next chunk, or the same again.
    fn copy_round_end(&mut self, now_ms: u64, key: &(String, String)) {
        let view_id = self.view.as_ref().map_or(0, |v| v.id);
        let me = self.name(self.cfg.me);
        let Some(c) = self.copier.copies.get_mut(key) else {
            return;
        };
        let Step::Releasing(mut r) = std::mem::replace(
            &mut c.step,
            Step::Idle {
                not_before_ms: now_ms,
            },
        ) else {
            return;
        };
        log::debug!(
            "resync of plex {}: fence {}: released",
            c.plex.plex,
            r.token
        );
        if r.why.is_none() && r.token.view != view_id {
            r.why = Some(format!("the view changed from {}", r.token.view));
        }
        match r.why {
            None => {
                c.offset += r.len;
                (c.at, c.pos) = r.next;
                c.attempts = 0;
                c.chunks += 1;
                let (p, offset) = (c.plex.clone(), c.offset);
                if c.at >= c.todo.len() {
                    c.step = Step::Done {
                        proposed: false,
                        not_before_ms: now_ms,
                    };
                    let line = format!(
                        "node {me}: resync of plex {} of volume {}: every chunk copied under fences ({} fence round(s)); making it ACTIVE",
                        p.plex, p.volume, c.chunks
                    );
                    self.log(log::Level::Info, line);
                    self.progress(&p, offset, None);
                } else if c.chunks.is_multiple_of(RESYNC_PROGRESS_EVERY_CHUNKS) {
                    self.progress(&p, offset, None);
                }
            }
            Some(why) => {
                c.attempts += 1;
                c.step = Step::Idle {
                    not_before_ms: now_ms + (RESYNC_RETRY_MS << c.attempts.min(4)),
                };
                log::info!(
                    "node {me}: resync of plex {} of volume {}: chunk at offset {} again (attempt {}): {why}",
                    c.plex.plex,
                    c.plex.volume,
                    c.chunk_offset(),
                    c.attempts + 1
                );
            }
        }
        self.copy_drive(now_ms, key);
    }

    /// Whether the master's own ACTIVE request `gen` of `plex` still stands for a
    /// resync that copied every chunk (not one restarted meanwhile).
    pub(super) fn resync_done_valid(&self, plex: &SyncingPlex, gen: u64) -> bool {
        // A start recovered by the commit just made (this step): every copy
        // starts again, this one too.
        let open = self.committed.config.open_nodes();
        let recovered = self
            .copier
            .open_seen
            .iter()
            .any(|s| !open.contains(s) && !self.recovery_closed(*s));
        // The plex still SYNCING over the very ranges that were copied: a change
        // committed since (a local-policy write failure's `PlexDiverged`, a
        // recovery's union) that added ranges restarts the copy at the next poll,
        // which may not have run yet.
        !recovered
            && self.committed.config.syncing_plexes().contains(plex)
            && self
                .copier
                .copies
                .get(&(plex.dg.clone(), plex.plex.clone()))
                .is_some_and(|c| c.gen == gen && matches!(c.step, Step::Done { .. }))
    }

    /// The outcome of the master's own ACTIVE request (`request` ≥
    /// [`RESYNC_REQUEST_BASE`]): a failure is proposed again after a pause.
    pub(super) fn resync_done_outcome(
        &mut self,
        request: RequestId,
        result: Result<(), RequestError>,
    ) {
        let gen = request.0 - RESYNC_REQUEST_BASE;
        let now_ms = self.clock_ms;
        let me = self.name(self.cfg.me);
        let Some(c) = self.copier.copies.values_mut().find(|c| c.gen == gen) else {
            return;
        };
        match result {
            Ok(()) => log::info!(
                "node {me}: resync of plex {} of volume {}: ACTIVE",
                c.plex.plex,
                c.plex.volume
            ),
            Err(e) => {
                if let Step::Done {
                    proposed,
                    not_before_ms,
                } = &mut c.step
                {
                    *proposed = false;
                    *not_before_ms = now_ms + (RESYNC_RETRY_MS << 4);
                }
                let line = format!(
                    "node {me}: resync of plex {} of volume {}: cannot make it ACTIVE: {e}; trying again",
                    c.plex.plex, c.plex.volume
                );
                self.log(log::Level::Warn, line);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn small_ranges_share_a_chunk_up_to_its_bytes() {
        let todo = [(0, MIB / 2), (3 * MIB, MIB / 4), (9 * MIB, MIB)];
        // Two small ranges and the first quarter of the third: one chunk.
        let (pieces, next) = chunk_pieces(&todo, 0, 0);
        assert_eq!(
            pieces,
            vec![(0, MIB / 2), (3 * MIB, MIB / 4), (9 * MIB, MIB / 4)]
        );
        assert_eq!(next, (2, MIB / 4));
        // The rest of the third range.
        let (pieces, next) = chunk_pieces(&todo, next.0, next.1);
        assert_eq!(pieces, vec![(9 * MIB + MIB / 4, 3 * MIB / 4)]);
        assert_eq!(next, (3, 0));
        assert_eq!(chunk_pieces(&todo, 3, 0), (vec![], (3, 0)));
    }

    #[test]
    fn a_long_range_is_copied_a_chunk_at_a_time() {
        let todo = [(0, 3 * MIB)];
        let (pieces, next) = chunk_pieces(&todo, 0, MIB);
        assert_eq!(pieces, vec![(MIB, MIB)]);
        assert_eq!(next, (0, 2 * MIB));
    }

    #[test]
    fn a_chunk_holds_at_most_max_chunk_pieces() {
        let todo: Vec<(u64, u64)> = (0..200u64).map(|i| (i * MIB, 4096)).collect();
        let (pieces, next) = chunk_pieces(&todo, 0, 0);
        assert_eq!(pieces.len(), MAX_CHUNK_PIECES);
        assert_eq!(next, (MAX_CHUNK_PIECES, 0));
    }
}
