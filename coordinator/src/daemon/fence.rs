//! Private disk groups' resync fences: a quiesce of one volume on this node for the
//! copy of one chunk.
//!
//! A resync copies a chunk from an ACTIVE plex's disks to the SYNCING plex's disks.
//! A host write to that chunk between the copy's read and its write would be
//! overwritten on the SYNCING plex with older data, so the copy runs while this node
//! (the only one serving a private group) holds the volume quiesced (host I/O parked,
//! not failed). A fence never blocks for long: the driver breaks it (resumes I/O)
//! when a kernel phase or a private transaction needs the data plane, or when
//! [`FENCE_LEASE`] runs out; the release then answers "broken" and the chunk is
//! copied again.
//!
//! The shared groups' fences (every member of the view, per chunk) are decided in
//! the protocol core (`core::resync`, driven by the simulator) and travel as cluster
//! messages; the driver only quiesces and resumes for them. Here: [`Fences`] is the
//! node side (the driver thread's table), [`Fencer`] the copying side, used by a
//! private group's resync thread.

use super::Inputs;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use plexd_target_api::{ClientError, ErrorCode, KernelClient};

use super::Input;
use crate::core::NodeId;

/// Longest a node keeps a fence before it resumes I/O on its own.
pub const FENCE_LEASE: Duration = Duration::from_secs(5);
/// Drain timeout of a fence's quiesce.
pub const FENCE_DRAIN_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one fence call may take (the drain, plus the main loop's queue).
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

    /// Breaks the fences whose lease ran out, and forgets broken fences after a
    /// while.
    pub fn expire(&mut self, k: &impl Quiesce, now: Instant) {
        let mut to_break = Vec::new();
        self.held.retain(|v, h| {
            let age = now.saturating_duration_since(h.since);
            match &h.broken {
                Some(_) => age < BROKEN_KEPT,
                None => {
                    if age > FENCE_LEASE {
                        to_break.push(v.clone());
                    }
                    true
                }
            }
        });
        for v in to_break {
            self.break_one(k, &v, "its lease ran out");
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

/// Runs copies of a private group's resync under this node's own fence (copying
/// side; the shared groups' fences are the core's, `core::resync`).
pub struct Fencer {
    me: NodeId,
    inputs: Inputs,
}

/// What one fence call answers: whether the fence held (release) / was taken (hold).
type CallResult = Result<bool, String>;

impl Fencer {
    /// A fencer of node `me` for its private groups.
    pub fn new(me: NodeId, inputs: Inputs) -> Fencer {
        Fencer { me, inputs }
    }

    fn call(&self, volume: &str, hold: bool, token: u64) -> CallResult {
        let (tx, rx) = smol::channel::bounded(1);
        self.inputs
            .send_blocking(Input::Fence {
                volume: volume.to_string(),
                hold,
                token,
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
        .map_err(|e| format!("node {}: {e}", self.me))
    }

    /// Runs `copy` while this node holds a fence on `volume`; runs it again while
    /// the fence was broken meanwhile, whatever `copy` answered (a copy the data
    /// plane refused because the break had resumed the volume fails for that
    /// reason alone). An error of `copy` under a fence that held ends at once.
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
            let token = next_token();
            let (copied, mut why) = match self.call(volume, true, token) {
                Ok(_) => (Some(copy()), None),
                Err(e) => (None, Some(format!("cannot fence: {e}"))),
            };
            if copied.is_some() {
                match self.call(volume, false, token) {
                    Ok(true) => {}
                    Ok(false) => why = Some(format!("node {} broke its fence", self.me)),
                    Err(e) => why = Some(format!("release: {e}")),
                }
            }
            match (copied, why) {
                (Some(Err(e)), None) => return Err(e),
                (Some(Ok(v)), None) => return Ok(v),
                (_, Some(why)) => {
                    if started.elapsed() > FENCE_RETRY_FOR {
                        return Err(format!(
                            "volume {volume}: no copy under a fence within {} s: {why}",
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

    /// Answers `n` fence calls as the driver would: holds succeed, and the
    /// releases answer `released` in turn (false: the fence was broken).
    fn driver(
        rx: smol::channel::Receiver<Input>,
        released: Vec<bool>,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut released = released.into_iter();
            while let Ok(Input::Fence { hold, reply, .. }) = rx.recv_blocking() {
                let held = hold || released.next().unwrap_or(true);
                let _ = reply.try_send(Ok(held));
            }
        })
    }

    #[test]
    fn a_copy_refused_under_a_broken_fence_is_copied_again() {
        let (tx, rx) = smol::channel::bounded(4);
        let d = driver(rx, vec![false, true]);
        let fencer = Fencer::new(2, tx);
        let mut calls = 0;
        let r = fencer.run("dg.v", &AtomicBool::new(false), || {
            calls += 1;
            match calls {
                1 => Err("the volume is not quiesced on this data plane".to_string()),
                _ => Ok(calls),
            }
        });
        assert_eq!(r, Ok(2), "the refused copy ran again under a new fence");
        drop(fencer);
        d.join().unwrap();
    }

    #[test]
    fn a_copy_error_under_a_fence_that_held_ends_the_run() {
        let (tx, rx) = smol::channel::bounded(4);
        let d = driver(rx, vec![true]);
        let fencer = Fencer::new(2, tx);
        let mut calls = 0;
        let r: Result<(), String> = fencer.run("dg.v", &AtomicBool::new(false), || {
            calls += 1;
            Err("read error".to_string())
        });
        assert_eq!(r, Err("read error".to_string()));
        assert_eq!(calls, 1);
        drop(fencer);
        d.join().unwrap();
    }

    #[test]
    fn fences_expire_with_their_lease() {
        let (k, mut f, t0) = (Fake::default(), Fences::default(), Instant::now());
        f.hold(&k, "own.a", 3, 1, t0).unwrap();
        f.expire(&k, t0);
        assert!(f.holds("own.a"));
        f.expire(&k, t0 + FENCE_LEASE + Duration::from_millis(1));
        assert!(!f.holds("own.a"));
        assert_eq!(f.release(&k, "own.a", 1), Ok(false));
        f.expire(&k, t0 + BROKEN_KEPT + FENCE_LEASE);
        assert!(f.held.is_empty(), "broken fences are forgotten");
    }
}
