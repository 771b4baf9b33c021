//! Plex resynchronisation: bring a STALE or DETACHED plex back to ACTIVE while
//! the volume stays online.
//!
//! The plex first becomes SYNCING (it takes every new write, no reads). Then the
//! copy runs chunk by chunk; each chunk is copied from an ACTIVE plex to the
//! syncing one under a short quiesce of the volume, so no host write can land
//! between the copy's read and its write (host I/O is parked for the length of one
//! chunk copy, never failed). When the last chunk is copied the plex becomes ACTIVE.
//!
//! The copy talks to the plexes' subdisk bdevs directly (through the same mapping
//! the I/O path uses), on reactor 0, from a control thread. Progress is visible as a
//! [`TaskInfo`] in [`Target::list_tasks`].
//!
//! Scope: this makes one target consistent. In a cluster, other nodes' writes are
//! not quiesced by this target; the coordinator must quiesce every node for each
//! chunk or run the copy with all nodes' writes paused (see docs/ARCHITECTURE.md).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::spec::{Layout, Plex, PlexState};
use crate::diag::{run_ios, IoReq};
use crate::target::{Target, TargetError};

/// Bytes copied per quiesce.
pub const RESYNC_CHUNK_BYTES: u64 = 1 << 20;
/// How long one chunk's quiesce may wait for in-flight I/O.
pub const RESYNC_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one chunk's I/O may take.
const RESYNC_IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Finished tasks kept for listing.
pub const MAX_FINISHED_TASKS: usize = 64;

/// A long-running operation of the target, as listed.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct TaskInfo {
    /// Unique within the target.
    pub id: u64,
    /// `resync`.
    pub kind: String,
    /// The object worked on, e.g. `plex vol1-02 (volume vol1)`.
    pub object: String,
    /// Bytes done.
    pub done_bytes: u64,
    /// Bytes in all.
    pub total_bytes: u64,
    /// `running`, `done` or `failed: <reason>`.
    pub state: String,
}

struct Task {
    info: Mutex<TaskInfo>,
    done_bytes: AtomicU64,
}

/// The target's task list.
#[derive(Default)]
pub struct Tasks {
    next_id: AtomicU64,
    list: Mutex<Vec<Arc<Task>>>,
}

impl Tasks {
    fn add(&self, kind: &str, object: String, total_bytes: u64) -> Arc<Task> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let t = Arc::new(Task {
            info: Mutex::new(TaskInfo {
                id,
                kind: kind.into(),
                object,
                done_bytes: 0,
                total_bytes,
                state: "running".into(),
            }),
            done_bytes: AtomicU64::new(0),
        });
        let mut list = self.list.lock().unwrap_or_else(|p| p.into_inner());
        list.push(Arc::clone(&t));
        // Keep every running task and the newest finished ones.
        let finished = list
            .iter()
            .filter(|t| t.info.lock().unwrap_or_else(|p| p.into_inner()).state != "running")
            .count();
        if finished > MAX_FINISHED_TASKS {
            if let Some(i) = list
                .iter()
                .position(|t| t.info.lock().unwrap_or_else(|p| p.into_inner()).state != "running")
            {
                list.remove(i);
            }
        }
        t
    }

    fn list(&self) -> Vec<TaskInfo> {
        self.list
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|t| {
                let mut i = t.info.lock().unwrap_or_else(|p| p.into_inner()).clone();
                i.done_bytes = t.done_bytes.load(Ordering::Relaxed);
                i
            })
            .collect()
    }
}

impl Task {
    fn finish(&self, state: String) {
        self.info.lock().unwrap_or_else(|p| p.into_inner()).state = state;
    }
}

/// Copies `[off, off+len)` of the volume from plex `src` to plex `dst` through
/// their subdisks.
fn copy_range(t: &Target, src: &Plex, dst: &Plex, off: u64, len: u64) -> Result<(), String> {
    let handle = &t.reactors().handles()[0];
    let mut data = vec![0u8; len as usize];
    let mut err = None;
    src.map.map(off, len, |col, sdi, in_sd, in_req, l| {
        if err.is_some() {
            return;
        }
        let sd = &src.columns[col][sdi];
        match run_ios(
            handle,
            &sd.bdev,
            vec![IoReq::read(sd.offset_bytes + in_sd, l)],
            RESYNC_IO_TIMEOUT,
        ) {
            Ok(mut o) if o[0].status.is_ok() => {
                let d = o.remove(0).data;
                data[in_req as usize..(in_req + l) as usize].copy_from_slice(&d);
            }
            Ok(o) => {
                err = Some(format!(
                    "read of plex {} at {off} failed: {:?}",
                    src.name, o[0].status
                ))
            }
            Err(e) => err = Some(e),
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    dst.map.map(off, len, |col, sdi, in_sd, in_req, l| {
        if err.is_some() {
            return;
        }
        let sd = &dst.columns[col][sdi];
        let piece = data[in_req as usize..(in_req + l) as usize].to_vec();
        match run_ios(
            handle,
            &sd.bdev,
            vec![IoReq::write(sd.offset_bytes + in_sd, piece)],
            RESYNC_IO_TIMEOUT,
        ) {
            Ok(o) if o[0].status.is_ok() => {}
            Ok(o) => {
                err = Some(format!(
                    "write of plex {} at {off} failed: {:?}",
                    dst.name, o[0].status
                ))
            }
            Err(e) => err = Some(e),
        }
    });
    err.map_or(Ok(()), Err)
}

impl Target {
    /// Starts resynchronising `plex` of `volume` in the background; returns the
    /// task id. The plex must not be ACTIVE; another plex must be.
    pub fn resync_plex(self: &Arc<Self>, volume: &str, plex: &str) -> Result<u64, TargetError> {
        let spec = self.volume_spec(volume)?;
        let obj = format!("plex {plex} (volume {volume})");
        let p =
            spec.plexes
                .iter()
                .find(|p| p.name == plex)
                .ok_or_else(|| TargetError::NotFound {
                    kind: "plex",
                    name: format!("{plex} (volume {volume})"),
                })?;
        if p.state == PlexState::Active {
            return Err(TargetError::invalid(obj, "is already ACTIVE"));
        }
        if !spec.plexes.iter().any(|q| q.state == PlexState::Active) {
            return Err(TargetError::invalid(
                obj,
                "the volume has no ACTIVE plex to copy from",
            ));
        }
        self.set_plex_state(volume, plex, PlexState::Syncing)?;
        let task = self.tasks.add("resync", obj.clone(), spec.size_bytes);
        let id = task.info.lock().unwrap_or_else(|p| p.into_inner()).id;
        let t = Arc::clone(self);
        let (vname, pname) = (volume.to_string(), plex.to_string());
        let spawned = std::thread::Builder::new()
            .name("plex-resync".into())
            .spawn(move || match t.run_resync(&vname, &pname, &task) {
                Ok(()) => {
                    log::info!("{obj}: resync done, plex ACTIVE");
                    task.finish("done".into());
                }
                Err(e) => {
                    log::error!("{obj}: resync failed: {e}");
                    let _ = t.set_plex_state(&vname, &pname, PlexState::Stale);
                    task.finish(format!("failed: {e}"));
                }
            });
        if let Err(e) = spawned {
            let _ = self.set_plex_state(volume, plex, PlexState::Stale);
            return Err(TargetError::Io {
                object: format!("plex {plex}"),
                reason: format!("cannot start the resync thread: {e}"),
            });
        }
        Ok(id)
    }

    fn run_resync(&self, volume: &str, plex: &str, task: &Task) -> Result<(), String> {
        let mut off = 0u64;
        loop {
            let spec = self.volume_spec(volume).map_err(|e| e.to_string())?;
            if off >= spec.size_bytes {
                break;
            }
            let len = RESYNC_CHUNK_BYTES.min(spec.size_bytes - off);
            // Quiesce: no host I/O in flight or started while this chunk is copied.
            self.prepare(volume, &spec, RESYNC_DRAIN_TIMEOUT)
                .map_err(|e| e.to_string())?;
            let res = (|| {
                let layout = Layout::resolve(self, &spec).map_err(|e| e.to_string())?;
                let dst = layout
                    .plexes
                    .iter()
                    .find(|p| &*p.name == plex && p.state == PlexState::Syncing)
                    .ok_or_else(|| format!("plex {plex} is no longer SYNCING"))?;
                let src = layout
                    .plexes
                    .iter()
                    .find(|p| p.state == PlexState::Active)
                    .ok_or("no ACTIVE plex left to copy from")?;
                copy_range(self, src, dst, off, len)
            })();
            self.abort(volume).map_err(|e| e.to_string())?;
            res?;
            off += len;
            task.done_bytes.store(off, Ordering::Relaxed);
        }
        self.set_plex_state(volume, plex, PlexState::Active)
            .map_err(|e| e.to_string())
    }

    /// Long-running operations (resyncs), running and recently finished.
    pub fn list_tasks(&self) -> Vec<TaskInfo> {
        self.tasks.list()
    }
}
