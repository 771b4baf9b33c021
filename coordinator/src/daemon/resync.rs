//! Plex resynchronisation (`plex attach`): the copy itself, private groups'
//! resyncs, and the task list.
//!
//! While a plex is SYNCING (it receives every new write, on every node), its volume
//! is copied in chunks of at most [`CHUNK_BYTES`] from an ACTIVE plex's disk bdevs to
//! the SYNCING plex's, each chunk under a fence (the volume quiesced, host I/O
//! parked, on every node that could write it). [`copy_range`] is the one function
//! that copies.
//!
//! Shared groups: the protocol core decides everything (`core::resync`: who is
//! fenced, when a chunk is copied again, when the plex becomes ACTIVE, a new master
//! starting over); the daemon only carries out its `Quiesce`/`Resume`/`CopyChunk`
//! actions on the driver thread and shows its `ResyncProgress` in the task list
//! ([`Tasks::progress`]). Private groups: a thread per task ([`Job`]) copies under
//! this node's own fence ([`super::fence`]) and runs `SetPlexState ACTIVE` as a
//! private change.

use super::Inputs;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use plexd_target_api::volume::MAX_COPY_BYTES;
use plexd_target_api::KernelClient;

use super::ctl::TaskOut;
use super::fence::Fencer;
use super::Input;
use crate::core::{ResyncEnd, SyncingPlex, WRITE_DEADLINE};
use crate::model::{bound_ranges, volume_bdev, MAX_RECOVER_RANGES_PER_VOLUME};
use crate::model::{DiskGroupConfig, Plex, PlexState, Volume};

/// Largest copy per quiesce.
pub const CHUNK_BYTES: u64 = 1 << 20;
/// Most tasks kept in the list (finished ones are dropped first).
pub const MAX_TASKS: usize = 256;
/// Progress is reported every this many chunks.
const REPORT_EVERY_CHUNKS: u64 = 16;

/// A task's progress, sent to the main loop.
#[derive(Debug, Clone)]
pub struct Progress {
    /// Task id.
    pub task: u64,
    /// Bytes copied.
    pub done_bytes: u64,
    /// `Some` when the task ended.
    pub result: Option<ResyncEnd>,
}

/// Copies `len` bytes of `volume` of `dg` at volume offset `offset` from its first
/// ACTIVE plex to `plex`, piece by piece where a subdisk or stripe unit ends. The
/// one place that copies (the data plane's `copyRange`): the core's `CopyChunk` and the
/// private resync threads both come here. `past_deadline` is asked before each
/// piece's copy: true stops with [`WRITE_DEADLINE`] (the copy's authority, the
/// master's lease, may have passed to another master).
pub fn copy_range(
    k: &KernelClient,
    dg: &DiskGroupConfig,
    volume: &str,
    plex: &str,
    offset: u64,
    len: u64,
    past_deadline: &dyn Fn() -> bool,
) -> Result<(), String> {
    let v = dg
        .volumes
        .iter()
        .find(|v| v.name == volume)
        .ok_or_else(|| format!("disk group {}: no volume {volume}", dg.name))?;
    if !v.plexes.iter().any(|p| p.name == plex) {
        return Err(format!("volume {volume}: no plex {plex}"));
    }
    let source = v
        .plexes
        .iter()
        .find(|p| p.state == PlexState::Active)
        .ok_or_else(|| format!("volume {volume}: no ACTIVE plex to copy plex {plex} from"))?;
    let bdev = volume_bdev(&dg.name, volume);
    let end = offset.saturating_add(len).min(v.size_bytes);
    let mut at = offset;
    while at < end {
        // The data plane maps the range onto both plexes with the volume's own
        // layout; one call copies at most MAX_COPY_BYTES.
        let n = (end - at).min(MAX_COPY_BYTES);
        if past_deadline() {
            return Err(format!(
                "volume {volume}: copy to plex {plex} at offset {at}: {WRITE_DEADLINE}"
            ));
        }
        copy_chunk(k, &bdev, &source.name, plex, at, n)?;
        at += n;
    }
    Ok(())
}

/// One private group's resync to run.
pub struct Job {
    dg: DiskGroupConfig,
    volume_name: String,
    plex: String,
    volume: String,
    /// The byte ranges `(offset, len)` to copy: the plex's `resync_ranges` (a
    /// recovery's dirty ranges), or the whole volume when it has none.
    ranges: Vec<(u64, u64)>,
}

impl Job {
    /// A resync of `plex` (SYNCING) of `volume` from its first ACTIVE plex: its
    /// `resync_ranges` only when it has some, the whole volume otherwise.
    pub fn new(dg: &DiskGroupConfig, volume: &Volume, plex: &Plex) -> Option<Job> {
        volume
            .plexes
            .iter()
            .find(|p| p.state == PlexState::Active)?;
        Some(Job {
            dg: dg.clone(),
            volume_name: volume.name.clone(),
            plex: plex.name.clone(),
            volume: volume_bdev(&dg.name, &volume.name),
            ranges: job_ranges(&plex.resync_ranges, volume.size_bytes),
        })
    }

    /// Bytes to copy.
    pub fn total_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| r.1).sum()
    }

    /// Runs the copy on a new thread with its own connection to the target, each
    /// chunk under `fencer`'s fences.
    pub fn start(
        self,
        task: u64,
        socket: String,
        fencer: Fencer,
        cancel: Arc<AtomicBool>,
        tx: Inputs,
    ) {
        let tx2 = tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("resync-{task}"))
            .spawn(move || {
                let result = match self.copy(task, &socket, &fencer, &cancel, &tx) {
                    Ok(()) => {
                        log::info!("resync task {task}: plex {} is in sync", self.plex);
                        ResyncEnd::Done
                    }
                    Err(e) if cancel.load(Ordering::Relaxed) => {
                        log::info!("resync task {task} of plex {}: {e}", self.plex);
                        ResyncEnd::Stopped(e)
                    }
                    Err(e) => {
                        log::error!("resync task {task} of plex {}: {e}", self.plex);
                        ResyncEnd::Failed(e)
                    }
                };
                let _ = tx.send_blocking(Input::Resync(Progress {
                    task,
                    done_bytes: if result == ResyncEnd::Done {
                        self.total_bytes()
                    } else {
                        0
                    },
                    result: Some(result),
                }));
            });
        if let Err(e) = spawned {
            let _ = tx2.send_blocking(Input::Resync(Progress {
                task,
                done_bytes: 0,
                result: Some(ResyncEnd::Failed(format!(
                    "cannot start the resync thread: {e}"
                ))),
            }));
        }
    }

    fn copy(
        &self,
        task: u64,
        socket: &str,
        fencer: &Fencer,
        cancel: &AtomicBool,
        tx: &Inputs,
    ) -> Result<(), String> {
        let k = KernelClient::connect(socket).map_err(|e| e.to_string())?;
        let mut done = 0u64;
        let mut chunks = 0u64;
        for &(start, len) in &self.ranges {
            let end = start.saturating_add(len);
            let mut offset = start;
            while offset < end {
                if cancel.load(Ordering::Relaxed) {
                    return Err("cancelled: plexd is stopping, left the cluster or lost its data plane; the copy starts over".into());
                }
                let n = CHUNK_BYTES.min(end - offset);
                fencer.run(&self.volume, cancel, || {
                    copy_range(
                        &k,
                        &self.dg,
                        &self.volume_name,
                        &self.plex,
                        offset,
                        n,
                        &|| false,
                    )
                })?;
                offset += n;
                done += n;
                chunks += 1;
                if chunks.is_multiple_of(REPORT_EVERY_CHUNKS) {
                    let _ = tx.try_send(Input::Resync(Progress {
                        task,
                        done_bytes: done,
                        result: None,
                    }));
                }
            }
        }
        log::info!(
            "resync task {task}: plex {} of volume {}: {done} bytes copied in {} range(s)",
            self.plex,
            self.volume_name,
            self.ranges.len()
        );
        Ok(())
    }
}

/// The ranges a private resync copies: `resync_ranges` made ascending, disjoint
/// and clipped to a volume of `size_bytes` (at most
/// [`MAX_RECOVER_RANGES_PER_VOLUME`]); the whole volume when there are none.
fn job_ranges(resync_ranges: &[(u64, u64)], size_bytes: u64) -> Vec<(u64, u64)> {
    if resync_ranges.is_empty() {
        return vec![(0, size_bytes)];
    }
    bound_ranges(resync_ranges, size_bytes, MAX_RECOVER_RANGES_PER_VOLUME)
}

/// Copies one piece inside the data plane (`copyRange`); the caller holds the fence.
fn copy_chunk(
    k: &KernelClient,
    volume: &str,
    source: &str,
    target: &str,
    offset: u64,
    len: u64,
) -> Result<(), String> {
    let len32 = u32::try_from(len).map_err(|_| format!("chunk of {len} bytes too large"))?;
    k.copy_range(volume, source, target, offset, len32)
        .map_err(|e| {
            format!(
                "data plane {}: copy of {offset}+{len} from plex {source} to plex {target}: {e}",
                k.path()
            )
        })
}

struct Task {
    out: TaskOut,
    cancel: Arc<AtomicBool>,
    /// When this node first saw the task, and its bytes done then: the rate is
    /// the bytes copied since over the time since.
    seen: (Instant, u64),
    /// When it ended here.
    ended: Option<Instant>,
}

impl Task {
    /// `out` with the rate and the time left as of `now`.
    fn out_at(&self, now: Instant) -> TaskOut {
        let mut out = self.out.clone();
        let (since, done_then) = self.seen;
        let until = self.ended.unwrap_or(now);
        let secs = until.saturating_duration_since(since).as_secs_f64();
        let copied = out.done_bytes.saturating_sub(done_then);
        if secs > 0.0 && copied > 0 {
            out.bytes_per_second = (copied as f64 / secs) as u64;
        }
        let left = out.total_bytes.saturating_sub(out.done_bytes);
        if out.state == "running" && out.bytes_per_second > 0 {
            out.eta_seconds = left.div_ceil(out.bytes_per_second);
        }
        out
    }
}

/// The tasks of this node.
#[derive(Default)]
pub struct Tasks {
    next: u64,
    tasks: BTreeMap<u64, Task>,
}

impl Tasks {
    /// Registers a running resync; returns its id and cancel flag.
    pub fn add(
        &mut self,
        dg: &str,
        volume: &str,
        plex: &str,
        total_bytes: u64,
        node: &str,
    ) -> (u64, Arc<AtomicBool>) {
        while self.tasks.len() >= MAX_TASKS {
            let old = self
                .tasks
                .iter()
                .find(|(_, t)| t.out.state != "running")
                .map(|(id, _)| *id)
                .or_else(|| self.tasks.keys().next().copied());
            match old {
                Some(id) => {
                    self.tasks.remove(&id);
                }
                None => break,
            }
        }
        self.next += 1;
        let cancel = Arc::new(AtomicBool::new(false));
        self.tasks.insert(
            self.next,
            Task {
                out: TaskOut {
                    id: self.next,
                    kind: "resync".into(),
                    dg: dg.into(),
                    volume: volume.into(),
                    plex: plex.into(),
                    done_bytes: 0,
                    total_bytes,
                    state: "running".into(),
                    node: node.into(),
                    ..TaskOut::default()
                },
                cancel: Arc::clone(&cancel),
                seen: (Instant::now(), 0),
                ended: None,
            },
        );
        (self.next, cancel)
    }

    /// A resync the core runs (this node is the master): started, progressed or
    /// ended (`core::Action::ResyncProgress`: bytes done of the total it covers).
    pub fn progress(
        &mut self,
        p: &SyncingPlex,
        (done_bytes, total_bytes): (u64, u64),
        finished: Option<ResyncEnd>,
        node: &str,
    ) {
        let running = self
            .tasks
            .iter()
            .find(|(_, t)| t.out.dg == p.dg && t.out.plex == p.plex && t.out.state == "running")
            .map(|(id, _)| *id);
        let id = match running {
            Some(id) => id,
            None => {
                let id = self.add(&p.dg, &p.volume, &p.plex, total_bytes, node).0;
                if let Some(t) = self.tasks.get_mut(&id) {
                    // The rate counts from what was done when this node saw it.
                    t.seen.1 = done_bytes;
                }
                id
            }
        };
        if let Some(t) = self.tasks.get_mut(&id) {
            t.out.total_bytes = total_bytes;
        }
        let progress = Progress {
            task: id,
            done_bytes,
            result: finished,
        };
        if let (Some(t), Some(end)) = (self.update(&progress), &progress.result) {
            let state = t.state;
            match end {
                ResyncEnd::Done => log::info!(
                    "node {node}: resync task {id}: plex {} of volume {} is ACTIVE",
                    p.plex,
                    p.volume
                ),
                ResyncEnd::Stopped(_) => log::info!(
                    "node {node}: resync task {id}: plex {} of volume {}: {state}",
                    p.plex,
                    p.volume
                ),
                ResyncEnd::Failed(_) => log::warn!(
                    "node {node}: resync task {id}: plex {} of volume {}: {state}",
                    p.plex,
                    p.volume
                ),
            }
        }
    }

    /// Whether a resync of `plex` of `dg` is running.
    pub fn running(&self, dg: &str, plex: &str) -> bool {
        self.tasks
            .values()
            .any(|t| t.out.dg == dg && t.out.plex == plex && t.out.state == "running")
    }

    /// Records progress; returns the task when it just ended.
    pub fn update(&mut self, p: &Progress) -> Option<TaskOut> {
        let t = self.tasks.get_mut(&p.task)?;
        if p.result.is_some() {
            t.ended = Some(Instant::now());
        }
        match &p.result {
            None => {
                t.out.done_bytes = p.done_bytes;
                None
            }
            Some(end) => {
                if *end == ResyncEnd::Done {
                    t.out.done_bytes = t.out.total_bytes;
                }
                t.out.state = end.state();
                Some(t.out.clone())
            }
        }
    }

    /// Stops every running task.
    pub fn cancel_all(&mut self) {
        for t in self.tasks.values() {
            t.cancel.store(true, Ordering::Relaxed);
        }
    }

    /// `task list`: each task with its rate and time left as of now.
    pub fn list(&self) -> Vec<TaskOut> {
        self.list_at(Instant::now())
    }

    /// `task list` as of `now`.
    pub fn list_at(&self, now: Instant) -> Vec<TaskOut> {
        self.tasks.values().map(|t| t.out_at(now)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_resync_copies_the_plex_ranges_or_the_whole_volume() {
        const MIB: u64 = 1 << 20;
        assert_eq!(job_ranges(&[], 8 * MIB), vec![(0, 8 * MIB)]);
        // Overlapping ranges merged, clipped to the volume.
        assert_eq!(
            job_ranges(
                &[(MIB, MIB), (MIB + 4096, MIB), (7 * MIB, 4 * MIB)],
                8 * MIB
            ),
            vec![(MIB, MIB + 4096), (7 * MIB, MIB)]
        );
    }

    #[test]
    fn tasks_track_progress_and_end() {
        let mut t = Tasks::default();
        let (id, _) = t.add("dg1", "v1", "v1-02", 100, "a");
        assert!(t.running("dg1", "v1-02"));
        assert!(t
            .update(&Progress {
                task: id,
                done_bytes: 50,
                result: None
            })
            .is_none());
        assert_eq!(t.list()[0].done_bytes, 50);
        let end = t
            .update(&Progress {
                task: id,
                done_bytes: 100,
                result: Some(ResyncEnd::Done),
            })
            .unwrap();
        assert_eq!(end.state, "done");
        assert!(!t.running("dg1", "v1-02"));
    }

    #[test]
    fn task_list_shows_the_rate_and_the_time_left_of_the_ranges() {
        use std::time::Duration;
        const MIB: u64 = 1 << 20;
        let mut t = Tasks::default();
        let plex = SyncingPlex {
            dg: "dg1".into(),
            volume: "v1".into(),
            plex: "v1-02".into(),
            size_bytes: 1 << 30,
            ranges: vec![(0, 100 * MIB)],
        };
        // A resync of 100 MiB of ranges in a 1 GiB volume.
        t.progress(&plex, (0, 100 * MIB), None, "a");
        let start = Instant::now();
        let l = t.list_at(start);
        assert_eq!(
            (l[0].total_bytes, l[0].bytes_per_second, l[0].eta_seconds),
            (100 * MIB, 0, 0)
        );
        t.progress(&plex, (50 * MIB, 100 * MIB), None, "a");
        // 50 MiB in (a little over) 10 s: just under 5 MiB/s, 10 or 11 s left.
        let l = t.list_at(start + Duration::from_secs(10));
        assert_eq!(l.len(), 1);
        assert_eq!((l[0].done_bytes, l[0].total_bytes), (50 * MIB, 100 * MIB));
        assert!(
            (5 * MIB * 99 / 100..=5 * MIB).contains(&l[0].bytes_per_second),
            "{:?}",
            l[0]
        );
        assert!((10..=11).contains(&l[0].eta_seconds), "{:?}", l[0]);
        t.progress(&plex, (100 * MIB, 100 * MIB), Some(ResyncEnd::Done), "a");
        let l = t.list_at(start + Duration::from_secs(3600));
        assert_eq!((l[0].state.as_str(), l[0].eta_seconds), ("done", 0));
        // The rate of a finished task stops at its end.
        assert!(l[0].bytes_per_second > 5 * MIB, "{:?}", l[0]);
    }
}
