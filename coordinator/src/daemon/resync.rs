//! Plex resynchronisation (`plex attach`) and the task list.
//!
//! The daemon copies: while the plex is SYNCING (it receives every new write, on
//! every node), a resync thread walks the volume in chunks of at most
//! [`CHUNK_BYTES`]; each chunk is read from an ACTIVE plex's disk bdev and written to
//! the SYNCING plex's disk bdev under a fence ([`super::fence`]): every member of the
//! view has quiesced the volume (host I/O is parked, not failed), so no host write,
//! through any node, races with the copy of the same range. When the copy is done the
//! daemon runs `SetPlexState ACTIVE` as a normal (cluster) change. The master runs the
//! resyncs of shared groups; a new master restarts any SYNCING plex without a task.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use plexd_target::api::KernelClient;

use super::ctl::TaskOut;
use super::fence::Fencer;
use super::kernel::{disk_bdev, volume_bdev};
use super::Input;
use crate::model::{DiskGroupConfig, Plex, PlexLayout, PlexState, Volume};

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
    pub result: Option<Result<(), String>>,
}

/// Where a plex keeps a volume byte: (disk bdev, device offset, bytes until the next
/// boundary).
pub fn map_offset(dg: &DiskGroupConfig, plex: &Plex, offset: u64) -> Option<(String, u64, u64)> {
    let (column, column_offset, unit_left) = match plex.layout {
        PlexLayout::Concat => (0, offset, u64::MAX),
        PlexLayout::Stripe {
            columns,
            stripe_unit_bytes: su,
        } => {
            if columns == 0 || su == 0 {
                return None;
            }
            let stripe = offset / su;
            let within = offset % su;
            (
                (stripe % columns as u64) as u32,
                (stripe / columns as u64) * su + within,
                su - within,
            )
        }
    };
    let sd = plex.subdisks.iter().find(|s| {
        s.column == column
            && s.plex_offset_bytes <= column_offset
            && column_offset < s.plex_offset_bytes + s.len_bytes
    })?;
    let into = column_offset - sd.plex_offset_bytes;
    let left = (sd.len_bytes - into).min(unit_left);
    dg.disk(&sd.disk)?;
    Some((
        disk_bdev(&dg.name, &sd.disk),
        sd.disk_offset_bytes + into,
        left,
    ))
}

/// One resync to run.
pub struct Job {
    dg: DiskGroupConfig,
    source: Plex,
    target: Plex,
    volume: String,
    size_bytes: u64,
}

impl Job {
    /// A resync of `plex` (SYNCING) of `volume` from its first ACTIVE plex.
    pub fn new(dg: &DiskGroupConfig, volume: &Volume, plex: &Plex) -> Option<Job> {
        let source = volume
            .plexes
            .iter()
            .find(|p| p.state == PlexState::Active)?
            .clone();
        Some(Job {
            dg: dg.clone(),
            source,
            target: plex.clone(),
            volume: volume_bdev(&dg.name, &volume.name),
            size_bytes: volume.size_bytes,
        })
    }

    /// Bytes to copy.
    pub fn total_bytes(&self) -> u64 {
        self.size_bytes
    }

    /// Runs the copy on a new thread with its own connection to the target, each
    /// chunk under `fencer`'s fences.
    pub fn start(
        self,
        task: u64,
        socket: String,
        fencer: Fencer,
        cancel: Arc<AtomicBool>,
        tx: SyncSender<Input>,
    ) {
        let tx2 = tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("resync-{task}"))
            .spawn(move || {
                let result = self.copy(task, &socket, &fencer, &cancel, &tx);
                if let Err(e) = &result {
                    log::error!("resync task {task} of plex {}: {e}", self.target.name);
                } else {
                    log::info!("resync task {task}: plex {} is in sync", self.target.name);
                }
                let _ = tx.send(Input::Resync(Progress {
                    task,
                    done_bytes: if result.is_ok() { self.size_bytes } else { 0 },
                    result: Some(result),
                }));
            });
        if let Err(e) = spawned {
            let _ = tx2.send(Input::Resync(Progress {
                task,
                done_bytes: 0,
                result: Some(Err(format!("cannot start the resync thread: {e}"))),
            }));
        }
    }

    fn copy(
        &self,
        task: u64,
        socket: &str,
        fencer: &Fencer,
        cancel: &AtomicBool,
        tx: &SyncSender<Input>,
    ) -> Result<(), String> {
        let k = KernelClient::connect(socket).map_err(|e| e.to_string())?;
        let mut offset = 0u64;
        let mut chunks = 0u64;
        while offset < self.size_bytes {
            if cancel.load(Ordering::Relaxed) {
                return Err("cancelled".into());
            }
            let (src, src_off, src_left) =
                map_offset(&self.dg, &self.source, offset).ok_or_else(|| {
                    format!("plex {}: offset {offset} is not mapped", self.source.name)
                })?;
            let (dst, dst_off, dst_left) =
                map_offset(&self.dg, &self.target, offset).ok_or_else(|| {
                    format!("plex {}: offset {offset} is not mapped", self.target.name)
                })?;
            let len = CHUNK_BYTES
                .min(src_left)
                .min(dst_left)
                .min(self.size_bytes - offset);
            fencer.run(&self.volume, cancel, || {
                copy_chunk(&k, &src, src_off, &dst, dst_off, len)
            })?;
            offset += len;
            chunks += 1;
            if chunks.is_multiple_of(REPORT_EVERY_CHUNKS) {
                let _ = tx.try_send(Input::Resync(Progress {
                    task,
                    done_bytes: offset,
                    result: None,
                }));
            }
        }
        Ok(())
    }
}

fn copy_chunk(
    k: &KernelClient,
    src: &str,
    src_off: u64,
    dst: &str,
    dst_off: u64,
    len: u64,
) -> Result<(), String> {
    let len32 = u32::try_from(len).map_err(|_| "chunk too large".to_string())?;
    let r = k
        .read(src, src_off, len32)
        .map_err(|e| format!("read {src}@{src_off}: {e}"))?;
    if r.status != 0 {
        return Err(format!("read {src}@{src_off}: errno {}", r.status));
    }
    let status = k
        .write(dst, dst_off, &r.data)
        .map_err(|e| format!("write {dst}@{dst_off}: {e}"))?;
    if status != 0 {
        return Err(format!("write {dst}@{dst_off}: errno {status}"));
    }
    Ok(())
}

struct Task {
    out: TaskOut,
    cancel: Arc<AtomicBool>,
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
                },
                cancel: Arc::clone(&cancel),
            },
        );
        (self.next, cancel)
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
        match &p.result {
            None => {
                t.out.done_bytes = p.done_bytes;
                None
            }
            Some(r) => {
                t.out.state = match r {
                    Ok(()) => {
                        t.out.done_bytes = t.out.total_bytes;
                        "done".into()
                    }
                    Err(e) => format!("failed: {e}"),
                };
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

    /// `task list`.
    pub fn list(&self) -> Vec<TaskOut> {
        self.tasks.values().map(|t| t.out.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{apply, Change, ClusterConfig, Disk, VolumeLayout};

    fn group(layout: VolumeLayout) -> DiskGroupConfig {
        let disk = |n: &str, id: char| Disk {
            name: n.into(),
            id: id.to_string().repeat(32),
            path: format!("/tmp/{n}.img"),
            size_bytes: 65 << 20,
            public_offset_bytes: 1 << 20,
            public_len_bytes: 64 << 20,
        };
        let c = apply(
            &ClusterConfig::default(),
            &Change::DgCreate {
                dg: "dg1".into(),
                dg_id: "a".repeat(32),
                shared: true,
                owner_id: "demo".into(),
                disks: vec![
                    disk("d1", '1'),
                    disk("d2", '2'),
                    disk("d3", '3'),
                    disk("d4", '4'),
                ],
            },
        )
        .unwrap();
        let c = apply(
            &c,
            &Change::VolCreate {
                dg: "dg1".into(),
                volume: "v1".into(),
                size_bytes: 8 << 20,
                layout,
            },
        )
        .unwrap();
        c.disk_groups[0].clone()
    }

    #[test]
    fn concat_maps_linearly_past_the_private_region() {
        let g = group(VolumeLayout::Concat);
        let p = &g.volumes[0].plexes[0];
        let (bdev, off, left) = map_offset(&g, p, 4096).unwrap();
        assert!(bdev.starts_with("dg1.d"));
        assert_eq!(off, p.subdisks[0].disk_offset_bytes + 4096);
        assert_eq!(left, (8 << 20) - 4096);
        assert!(map_offset(&g, p, 8 << 20).is_none());
    }

    #[test]
    fn stripe_alternates_columns_per_unit() {
        let g = group(VolumeLayout::Stripe {
            columns: 2,
            stripe_unit_bytes: 64 << 10,
        });
        let p = &g.volumes[0].plexes[0];
        let (b0, o0, l0) = map_offset(&g, p, 0).unwrap();
        let (b1, o1, _) = map_offset(&g, p, 64 << 10).unwrap();
        let (b2, o2, _) = map_offset(&g, p, 128 << 10).unwrap();
        assert_ne!(b0, b1);
        assert_eq!(b0, b2);
        assert_eq!(l0, 64 << 10);
        assert_eq!(o2, o0 + (64 << 10));
        assert_eq!(o1 % 4096, 0);
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
                result: Some(Ok(())),
            })
            .unwrap();
        assert_eq!(end.state, "done");
        assert!(!t.running("dg1", "v1-02"));
    }
}
