//! Resync fences: a cluster-wide quiesce of one volume for the copy of one chunk.
//!
//! A resync copies a chunk from an ACTIVE plex's disks to the SYNCING plex's disks.
//! A host write to that chunk through *any* node between the copy's read and its
//! write would be overwritten on the SYNCING plex with older data. So for each chunk
//! the resyncing node (the master, for a shared group) holds a *fence* on every member
//! of its view: each node quiesces the volume on its own data plane (host I/O is
//! parked, not failed) and answers; the master copies; then it releases the fences.
//!
//! A fence never blocks a node for long. The node breaks it (resumes I/O) when a
//! transaction's kernel phase needs the volume, when the fence's holder is no longer
//! its master, or when [`FENCE_LEASE`] runs out. The release then answers "broken",
//! and the master copies the chunk again under new fences; it also copies it again
//! when the view changed during the copy (a joiner was not fenced). A node fences
//! only for its master and only once it has applied the transaction that made the
//! plex SYNCING, so every fenced node sends its writes to the SYNCING plex too.
//!
//! [`Fences`] is the node side (the driver thread's table); [`Fencer`] is the copying
//! side, used by a resync thread.

use std::collections::BTreeMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use plexd_proto::cluster_capnp::peer;
use plexd_target_api::{ClientError, ErrorCode, KernelClient};
use smol::{Async, LocalExecutor};

use super::Input;
use crate::core::{NodeId, TxnId};

/// Longest a node keeps a fence before it resumes I/O on its own.
pub const FENCE_LEASE: Duration = Duration::from_secs(5);
/// Drain timeout of a fence's quiesce.
pub const FENCE_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one fence call may take (the drain, plus the network).
pub const FENCE_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a chunk's copy keeps retrying to fence every member.
pub const FENCE_RETRY_FOR: Duration = Duration::from_secs(60);
/// Pause between those retries (grows up to 16 times this).
const FENCE_RETRY_PAUSE: Duration = Duration::from_millis(20);
/// How long a broken fence is remembered, so its release answers "broken".
const BROKEN_KEPT: Duration = Duration::from_secs(30);

/// One fence a node holds.
#[derive(Debug)]
struct Held {
    holder: NodeId,
    token: u64,
    since: Instant,
    /// Whether the volume was quiesced for it (a volume this node does not serve
    /// needs no quiesce).
    quiesced: bool,
    /// Why it was broken, once it was.
    broken: Option<String>,
}

/// The fences held by this node, by volume bdev name (node side).
#[derive(Debug, Default)]
pub struct Fences {
    held: BTreeMap<String, Held>,
}

/// What a fence needs of the data plane (the kernel client; a fake in tests).
pub trait Quiesce {
    /// Quiesces `volume`; `Ok(false)` when this data plane has no such volume.
    fn quiesce_volume(&self, volume: &str) -> Result<bool, String>;
    /// Resumes `volume`'s I/O.
    fn resume_volume(&self, volume: &str) -> Result<(), String>;
}

impl Quiesce for KernelClient {
    fn quiesce_volume(&self, volume: &str) -> Result<bool, String> {
        match self.quiesce(volume, FENCE_DRAIN_TIMEOUT) {
            Ok(_) => Ok(true),
            Err(ClientError::Api(a)) if a.code == ErrorCode::NotFound => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    fn resume_volume(&self, volume: &str) -> Result<(), String> {
        self.resume(volume).map_err(|e| e.to_string())
    }
}

impl Fences {
    /// Quiesces `volume` for `holder`'s copy `token`.
    pub fn hold(
        &mut self,
        k: &impl Quiesce,
        volume: &str,
        holder: NodeId,
        token: u64,
        now: Instant,
    ) -> Result<(), String> {
        if let Some(h) = self.held.get_mut(volume) {
            if h.broken.is_none() {
                // An earlier copy's release never came: the volume is still
                // quiesced, and the new fence takes it over.
                log::warn!(
                    "fence on volume {volume}: copy {} of node {} was never released; taken over by copy {token}",
                    h.token,
                    h.holder
                );
                h.holder = holder;
                h.token = token;
                h.since = now;
                return Ok(());
            }
            self.held.remove(volume);
        }
        let quiesced = k
            .quiesce_volume(volume)
            .map_err(|e| format!("volume {volume}: {e}"))?;
        self.held.insert(
            volume.to_string(),
            Held {
                holder,
                token,
                since: now,
                quiesced,
                broken: None,
            },
        );
        Ok(())
    }

    /// Ends copy `token`'s fence on `volume`; `Ok(true)` when it held from the hold
    /// until now, `Ok(false)` when it was broken meanwhile (the copy must be redone).
    pub fn release(&mut self, k: &impl Quiesce, volume: &str, token: u64) -> Result<bool, String> {
        if self.held.get(volume).map(|h| h.token) != Some(token) {
            return Ok(false);
        }
        let Some(h) = self.held.remove(volume) else {
            return Ok(false);
        };
        if h.broken.is_some() {
            return Ok(false);
        }
        if h.quiesced {
            k.resume_volume(volume)
                .map_err(|e| format!("volume {volume}: {e}"))?;
        }
        Ok(true)
    }

    /// Breaks every fence (a transaction's kernel phase, a stop): I/O resumes.
    pub fn break_all(&mut self, k: &impl Quiesce, why: &str) {
        let volumes: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| h.broken.is_none())
            .map(|(v, _)| v.clone())
            .collect();
        for v in volumes {
            self.break_one(k, &v, why);
        }
    }

    /// Breaks the fences whose lease ran out or whose holder is no longer `master`
    /// (fences `me` holds for its own private groups are kept), and forgets broken
    /// fences after a while.
    pub fn expire(&mut self, k: &impl Quiesce, now: Instant, me: NodeId, master: Option<NodeId>) {
        let mut to_break = Vec::new();
        self.held.retain(|v, h| {
            let age = now.saturating_duration_since(h.since);
            match &h.broken {
                Some(_) => age < BROKEN_KEPT,
                None => {
                    if age > FENCE_LEASE {
                        to_break.push((v.clone(), "its lease ran out".to_string()));
                    } else if h.holder != me && Some(h.holder) != master {
                        to_break.push((
                            v.clone(),
                            format!("node {} is no longer the master", h.holder),
                        ));
                    }
                    true
                }
            }
        });
        for (v, why) in to_break {
            self.break_one(k, &v, &why);
        }
    }

    fn break_one(&mut self, k: &impl Quiesce, volume: &str, why: &str) {
        let Some(h) = self.held.get_mut(volume) else {
            return;
        };
        if h.broken.is_some() {
            return;
        }
        log::info!(
            "fence on volume {volume} for copy {} of node {}: broken: {why}",
            h.token,
            h.holder
        );
        if h.quiesced {
            if let Err(e) = k.resume_volume(volume) {
                log::error!("fence on volume {volume}: cannot resume I/O: {e}");
            }
        }
        h.broken = Some(why.to_string());
    }

    /// Whether a fence holds `volume` quiesced now.
    pub fn holds(&self, volume: &str) -> bool {
        self.held
            .get(volume)
            .is_some_and(|h| h.broken.is_none() && h.quiesced)
    }
}

/// The members of a view, as a resync thread sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ViewSnapshot {
    /// View id.
    pub id: u64,
    /// Its master.
    pub master: NodeId,
    /// Members (ascending) with their coordinator addresses.
    pub members: Vec<(NodeId, String)>,
}

/// The current view, shared by the main loop (writer), the driver and resync threads
/// (readers).
pub type SharedView = Arc<Mutex<Option<ViewSnapshot>>>;

fn snapshot(view: &SharedView) -> Option<ViewSnapshot> {
    view.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(0);

fn next_token() -> u64 {
    if NEXT_TOKEN.load(Ordering::Relaxed) == 0 {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        let _ = NEXT_TOKEN.compare_exchange(0, seed, Ordering::Relaxed, Ordering::Relaxed);
    }
    NEXT_TOKEN.fetch_add(1, Ordering::Relaxed)
}

/// Runs copies under fences (copying side).
pub struct Fencer {
    me: NodeId,
    /// `Some` for a shared group: fence every member of the view; `None`: this node
    /// only (a private group).
    view: Option<SharedView>,
    /// The transaction every fenced node must have applied.
    min_txn: TxnId,
    inputs: SyncSender<Input>,
}

/// What one fence call answers: whether the fence held (release) / was taken (hold).
type CallResult = Result<bool, String>;

impl Fencer {
    /// A fencer of node `me`; `view` for a shared group, whose members must have
    /// applied `min_txn`.
    pub fn new(
        me: NodeId,
        view: Option<SharedView>,
        min_txn: TxnId,
        inputs: SyncSender<Input>,
    ) -> Fencer {
        Fencer {
            me,
            view,
            min_txn,
            inputs,
        }
    }

    fn members(&self) -> Result<(u64, Vec<(NodeId, String)>), String> {
        let Some(view) = &self.view else {
            return Ok((0, vec![(self.me, String::new())]));
        };
        match snapshot(view) {
            Some(s) if s.master == self.me => Ok((s.id, s.members)),
            Some(s) => Err(format!(
                "node {} is no longer the master (node {} is)",
                self.me, s.master
            )),
            None => Err(format!("node {} is not in the cluster", self.me)),
        }
    }

    fn view_id(&self) -> u64 {
        self.view
            .as_ref()
            .and_then(snapshot)
            .map(|s| s.id)
            .unwrap_or(0)
    }

    fn call(
        &self,
        node: NodeId,
        address: &str,
        volume: &str,
        hold: bool,
        token: u64,
    ) -> CallResult {
        let r = if node == self.me {
            self.call_local(volume, hold, token)
        } else {
            call_remote(address, self.me, volume, hold, token, self.min_txn)
        };
        r.map_err(|e| format!("node {node}: {e}"))
    }

    fn call_local(&self, volume: &str, hold: bool, token: u64) -> CallResult {
        let (tx, rx) = smol::channel::bounded(1);
        self.inputs
            .send(Input::Fence {
                from: self.me,
                volume: volume.to_string(),
                hold,
                token,
                min_txn: self.min_txn,
                reply: tx,
            })
            .map_err(|_| "the daemon is stopping".to_string())?;
        smol::block_on(smol::future::or(
            async {
                rx.recv()
                    .await
                    .unwrap_or_else(|_| Err("the daemon is stopping".into()))
            },
            async {
                smol::Timer::after(FENCE_CALL_TIMEOUT).await;
                Err(format!(
                    "no answer within {} s",
                    FENCE_CALL_TIMEOUT.as_secs()
                ))
            },
        ))
    }

    /// Runs `copy` while every member holds a fence on `volume`; runs it again while a
    /// fence was broken or the view changed meanwhile. An error of `copy` ends at once.
    pub fn run<T>(
        &self,
        volume: &str,
        cancel: &AtomicBool,
        mut copy: impl FnMut() -> Result<T, String>,
    ) -> Result<T, String> {
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            if cancel.load(Ordering::Relaxed) {
                return Err("cancelled".into());
            }
            let (view_id, members) = self.members()?;
            let token = next_token();
            let mut fenced = Vec::new();
            let mut why = None;
            for (node, address) in &members {
                match self.call(*node, address, volume, true, token) {
                    Ok(_) => fenced.push((*node, address.clone())),
                    Err(e) => {
                        why = Some(format!("cannot fence: {e}"));
                        break;
                    }
                }
            }
            let copied = if why.is_none() { Some(copy()) } else { None };
            for (node, address) in fenced.iter().rev() {
                match self.call(*node, address, volume, false, token) {
                    Ok(true) => {}
                    Ok(false) => {
                        why.get_or_insert_with(|| format!("node {node} broke its fence"));
                    }
                    Err(e) => {
                        why.get_or_insert_with(|| format!("release: {e}"));
                    }
                }
            }
            if why.is_none() && self.view_id() != view_id {
                why = Some(format!("the view changed from {view_id} during the copy"));
            }
            match (copied, why) {
                (Some(Err(e)), _) => return Err(e),
                (Some(Ok(v)), None) => return Ok(v),
                (_, Some(why)) => {
                    if started.elapsed() > FENCE_RETRY_FOR {
                        return Err(format!(
                            "volume {volume}: no copy under a fence of every member within {} s: {why}",
                            FENCE_RETRY_FOR.as_secs()
                        ));
                    }
                    log::info!(
                        "volume {volume}: copy again (attempt {}): {why}",
                        attempt + 2
                    );
                    std::thread::sleep(FENCE_RETRY_PAUSE * (1 << attempt.min(4)));
                    attempt += 1;
                }
                (None, None) => return Err(format!("volume {volume}: nothing fenced")),
            }
        }
    }
}

/// One `Peer.fence` call on a new connection to `address`.
fn call_remote(
    address: &str,
    me: NodeId,
    volume: &str,
    hold: bool,
    token: u64,
    min_txn: TxnId,
) -> CallResult {
    let addr = address
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("cannot resolve {address}"))?;
    let stream = TcpStream::connect_timeout(&addr, FENCE_CALL_TIMEOUT)
        .map_err(|e| format!("{address}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let stream = Async::new(stream).map_err(|e| format!("{address}: {e}"))?;
    let ex = Rc::new(LocalExecutor::new());
    let (rpc, client) = super::transport::client_connection::<peer::Client>(stream);
    let call = async {
        let mut rq = client.fence_request();
        {
            let mut p = rq.get();
            p.set_from(me);
            p.set_volume(volume);
            p.set_hold(hold);
            p.set_token(token);
            p.set_min_txn_view(min_txn.view);
            p.set_min_txn_n(min_txn.n);
        }
        let resp = rq.send().promise.await.map_err(|e| e.to_string())?;
        let r = resp.get().map_err(|e| e.to_string())?;
        let error = r
            .get_error()
            .map_err(|e| e.to_string())?
            .to_string()
            .map_err(|e| e.to_string())?;
        if error.is_empty() {
            Ok(r.get_intact())
        } else {
            Err(error)
        }
    };
    let conn = async {
        let r = rpc.await;
        Err(format!("connection closed: {r:?}"))
    };
    let timeout = async {
        smol::Timer::after(FENCE_CALL_TIMEOUT).await;
        Err(format!(
            "no answer within {} s",
            FENCE_CALL_TIMEOUT.as_secs()
        ))
    };
    smol::block_on(ex.run(smol::future::or(smol::future::or(call, conn), timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A data plane that records calls; volume "gone" does not exist.
    #[derive(Default)]
    struct Fake {
        calls: RefCell<Vec<String>>,
        fail: bool,
    }

    impl Quiesce for Fake {
        fn quiesce_volume(&self, v: &str) -> Result<bool, String> {
            self.calls.borrow_mut().push(format!("quiesce {v}"));
            if self.fail {
                return Err("a prepare is already in progress".into());
            }
            Ok(v != "gone")
        }
        fn resume_volume(&self, v: &str) -> Result<(), String> {
            self.calls.borrow_mut().push(format!("resume {v}"));
            Ok(())
        }
    }

    fn calls(k: &Fake) -> Vec<String> {
        k.calls.borrow_mut().drain(..).collect()
    }

    #[test]
    fn tokens_are_unique_and_nonzero() {
        let a = next_token();
        let b = next_token();
        assert_ne!(a, 0);
        assert_ne!(a, b);
    }

    #[test]
    fn a_held_fence_quiesces_then_its_release_resumes_and_reports_intact() {
        let (k, mut f, now) = (Fake::default(), Fences::default(), Instant::now());
        f.hold(&k, "dg1.v1", 1, 7, now).unwrap();
        assert!(f.holds("dg1.v1"));
        assert_eq!(
            f.release(&k, "dg1.v1", 8),
            Ok(false),
            "another copy's token"
        );
        assert!(f.holds("dg1.v1"));
        assert_eq!(f.release(&k, "dg1.v1", 7), Ok(true));
        assert!(!f.holds("dg1.v1"));
        assert_eq!(calls(&k), ["quiesce dg1.v1", "resume dg1.v1"]);
        assert_eq!(f.release(&k, "dg1.v1", 7), Ok(false), "released twice");
    }

    #[test]
    fn a_volume_the_node_does_not_serve_is_fenced_without_a_quiesce() {
        let (k, mut f, now) = (Fake::default(), Fences::default(), Instant::now());
        f.hold(&k, "gone", 1, 7, now).unwrap();
        assert!(!f.holds("gone"));
        assert_eq!(f.release(&k, "gone", 7), Ok(true));
        assert_eq!(calls(&k), ["quiesce gone"]);
    }

    #[test]
    fn a_refused_quiesce_fails_the_hold() {
        let (mut k, mut f) = (Fake::default(), Fences::default());
        k.fail = true;
        let e = f.hold(&k, "dg1.v1", 1, 7, Instant::now()).unwrap_err();
        assert!(e.contains("dg1.v1") && e.contains("in progress"), "{e}");
        assert_eq!(f.release(&k, "dg1.v1", 7), Ok(false));
    }

    #[test]
    fn a_transaction_breaks_fences_and_their_release_reports_broken() {
        let (k, mut f, now) = (Fake::default(), Fences::default(), Instant::now());
        f.hold(&k, "dg1.v1", 1, 7, now).unwrap();
        f.break_all(&k, "a transaction");
        assert!(!f.holds("dg1.v1"));
        assert_eq!(calls(&k), ["quiesce dg1.v1", "resume dg1.v1"]);
        assert_eq!(f.release(&k, "dg1.v1", 7), Ok(false));
        assert!(calls(&k).is_empty(), "no second resume");
    }

    #[test]
    fn a_lost_release_is_taken_over_by_the_next_hold() {
        let (k, mut f, now) = (Fake::default(), Fences::default(), Instant::now());
        f.hold(&k, "dg1.v1", 1, 7, now).unwrap();
        f.hold(&k, "dg1.v1", 1, 9, now).unwrap();
        assert_eq!(f.release(&k, "dg1.v1", 7), Ok(false));
        assert_eq!(f.release(&k, "dg1.v1", 9), Ok(true));
        assert_eq!(calls(&k), ["quiesce dg1.v1", "resume dg1.v1"]);
    }

    #[test]
    fn fences_expire_with_their_lease_or_their_master() {
        let (k, mut f, t0) = (Fake::default(), Fences::default(), Instant::now());
        f.hold(&k, "dg1.a", 1, 1, t0).unwrap();
        f.hold(&k, "dg1.b", 2, 2, t0).unwrap();
        f.hold(&k, "own.c", 3, 3, t0).unwrap();
        // Node 3 itself holds own.c (a private group); node 1 is the master.
        f.expire(&k, t0, 3, Some(1));
        assert!(f.holds("dg1.a") && !f.holds("dg1.b") && f.holds("own.c"));
        f.expire(&k, t0 + FENCE_LEASE + Duration::from_millis(1), 3, Some(1));
        assert!(!f.holds("dg1.a") && !f.holds("own.c"));
        assert_eq!(f.release(&k, "dg1.a", 1), Ok(false));
        f.expire(&k, t0 + BROKEN_KEPT + FENCE_LEASE, 3, Some(1));
        assert!(f.held.is_empty(), "broken fences are forgotten");
    }
}
