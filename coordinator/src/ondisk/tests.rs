//! On-disk tests against sparse files in a temporary directory.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rand::{Rng, SeedableRng};

use super::*;
use crate::model::{apply, Change, ClusterConfig, DetachPolicy, VolumeLayout};

const DISK_BYTES: u64 = 64 << 20;

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "plexd-ondisk-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A sparse disk file of `size` bytes.
    fn disk(&self, name: &str, size: u64) -> PathBuf {
        let path = self.0.join(format!("{name}.img"));
        File::create(&path).unwrap().set_len(size).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `n` initialised disks `disk01..` and a shared group `dg1` over them with one
/// mirrored volume.
fn group(dir: &TempDir, n: usize) -> (Vec<PathBuf>, ClusterConfig) {
    let mut paths = Vec::new();
    let mut disks = Vec::new();
    for i in 1..=n {
        let name = format!("disk{i:02}");
        let path = dir.disk(&name, DISK_BYTES);
        let label = init_disk(&path, &name, InitOptions::default()).unwrap();
        disks.push(label.disk_record(&path));
        paths.push(path);
    }
    let c = apply(
        &ClusterConfig::default(),
        &Change::DgCreate {
            dg: "dg1".into(),
            dg_id: crate::model::new_id(),
            shared: true,
            owner_id: "cluster-1".into(),
            disks,
        },
    )
    .unwrap();
    let c = c
        .apply(&Change::VolCreate {
            dg: "dg1".into(),
            volume: "vol1".into(),
            size_bytes: 8 << 20,
            layout: VolumeLayout::Mirror {
                mirrors: n.min(2) as u32,
            },
            log: Default::default(),
            disks: Vec::new(),
        })
        .unwrap();
    (paths, c)
}

fn next(c: &ClusterConfig, volume: &str) -> ClusterConfig {
    c.apply(&Change::VolCreate {
        dg: "dg1".into(),
        volume: volume.into(),
        size_bytes: 1 << 20,
        layout: VolumeLayout::Concat,
        log: Default::default(),
        disks: Vec::new(),
    })
    .unwrap()
}

fn corrupt(path: &Path, offset: u64, bytes: &[u8]) {
    let f = OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

fn slot_offset(path: &Path, index: usize) -> u64 {
    read_label(path).unwrap().slot_offset_bytes(index)
}

#[test]
fn init_writes_a_label_that_reads_back() {
    let dir = TempDir::new();
    let path = dir.disk("a", DISK_BYTES);
    let label = init_disk(&path, "disk01", InitOptions::default()).unwrap();
    assert_eq!(label.disk_name, "disk01");
    assert_eq!(label.disk_id.len(), 32);
    assert_eq!(label.public_offset_bytes, DEFAULT_PRIVATE_REGION_BYTES);
    assert_eq!(
        label.public_len_bytes,
        DISK_BYTES - DEFAULT_PRIVATE_REGION_BYTES
    );
    assert_eq!(label.disk_group, None);
    assert_eq!(read_label(&path).unwrap(), label);
    let disk = label.disk_record(&path);
    assert_eq!(disk.size_bytes, DISK_BYTES);
    // Same name again: idempotent; another name: refused without force.
    assert_eq!(
        init_disk(&path, "disk01", InitOptions::default()).unwrap(),
        label
    );
    let err = init_disk(&path, "disk09", InitOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .contains("already initialised as disk disk01"),
        "{err}"
    );
    let forced = init_disk(
        &path,
        "disk09",
        InitOptions {
            force: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_ne!(forced.disk_id, label.disk_id);
}

#[test]
fn init_refuses_small_disks_and_bad_names() {
    let dir = TempDir::new();
    let small = dir.disk("small", 1 << 20);
    let err = init_disk(&small, "disk01", InitOptions::default()).unwrap_err();
    assert!(err.to_string().contains("too small"), "{err}");
    let ok = dir.disk("ok", DISK_BYTES);
    assert!(init_disk(&ok, "bad name", InitOptions::default()).is_err());
    let missing = dir.0.join("missing.img");
    let err = init_disk(&missing, "disk01", InitOptions::default()).unwrap_err();
    assert!(matches!(err, OnDiskError::Io { .. }));
    assert!(err.to_string().contains("missing.img"), "{err}");
}

#[test]
fn config_round_trips_across_disks_and_updates_labels() {
    let dir = TempDir::new();
    let (paths, c) = group(&dir, 3);
    let g = &c.disk_groups[0];
    let report = write_config(&paths, g, 17, None).unwrap();
    assert!(report.all_ok());
    let read = read_config(&paths).unwrap();
    assert_eq!(&read.config, g);
    assert_eq!(read.seq, g.seq);
    assert_eq!(read.txn_id, 17);
    assert!(read.disks.iter().all(|d| d.current));
    let label = read_label(&paths[0]).unwrap();
    let lg = label.disk_group.unwrap();
    assert_eq!(
        (lg.name.as_str(), lg.shared, lg.owner_id.as_str()),
        ("dg1", true, "cluster-1")
    );
    assert_eq!(lg.id, g.id);
}

#[test]
fn a_dirty_region_log_and_resync_ranges_round_trip_through_the_disks() {
    let dir = TempDir::new();
    let (paths, c) = group(&dir, 3);
    let mut g = c.disk_groups[0].clone();
    let log = g.volumes[0]
        .log
        .clone()
        .expect("a mirrored volume has a log");
    assert_eq!(
        log.disks(),
        "disk03+disk01",
        "copy 1 not on a disk of its plexes"
    );
    g.volume_mut(0).plexes[1].state = crate::model::PlexState::Syncing;
    g.volume_mut(0).plexes[1].resync_ranges = vec![(0, 512 << 10), (4 << 20, 1 << 20)];
    // A plex that `dg evacuate` moves (replaces) reads back with its mark.
    let first = g.volumes[0].plexes[0].name.clone();
    g.volume_mut(0).plexes[1].replaces = Some(first.clone());
    g.validate().unwrap();
    write_config(&paths, &g, 18, None).unwrap();
    let read = read_config(&paths).unwrap();
    assert_eq!(read.config, g);
    assert_eq!(read.config.volumes[0].log.as_ref(), Some(&log));
    assert_eq!(
        read.config.volumes[0].plexes[1].resync_ranges,
        vec![(0, 512 << 10), (4 << 20, 1 << 20)]
    );
    assert_eq!(read.config.volumes[0].plexes[1].replaces, Some(first));
    // A log of one copy (as every record of an older plexd) is written without
    // moreCopies and reads back as one copy.
    g.volume_mut(0).log.as_mut().unwrap().copies.truncate(1);
    g.validate().unwrap();
    let bytes = crate::ondisk::codec::encode_config(&g);
    let back = crate::ondisk::codec::decode_config(&bytes).unwrap();
    assert_eq!(back, g);
    assert_eq!(back.volumes[0].log.as_ref().unwrap().copies.len(), 1);
}

#[test]
fn a_write_past_its_deadline_reaches_no_disk() {
    let dir = TempDir::new();
    let (paths, c1) = group(&dir, 2);
    write_config(&paths, &c1.disk_groups[0], 1, None).unwrap();
    let c2 = next(&c1, "v2");
    let past = std::time::Instant::now() - std::time::Duration::from_millis(1);
    let err = write_config(&paths, &c2.disk_groups[0], 2, Some(past)).unwrap_err();
    assert!(
        err.to_string().contains(crate::core::WRITE_DEADLINE),
        "{err}"
    );
    assert_eq!(read_config(&paths).unwrap().config, c1.disk_groups[0]);
    let future = std::time::Instant::now() + std::time::Duration::from_secs(60);
    write_config(&paths, &c2.disk_groups[0], 2, Some(future)).unwrap();
    assert_eq!(read_config(&paths).unwrap().config, c2.disk_groups[0]);
}

#[test]
fn slots_are_written_alternately() {
    let dir = TempDir::new();
    let (paths, c1) = group(&dir, 2);
    let c2 = next(&c1, "v2");
    let c3 = next(&c2, "v3");
    let slots = |r: &WriteReport| r.written.iter().map(|(_, s)| *s).collect::<Vec<_>>();
    assert_eq!(
        slots(&write_config(&paths, &c1.disk_groups[0], 1, None).unwrap()),
        [0, 0]
    );
    assert_eq!(
        slots(&write_config(&paths, &c2.disk_groups[0], 2, None).unwrap()),
        [1, 1]
    );
    assert_eq!(
        slots(&write_config(&paths, &c3.disk_groups[0], 3, None).unwrap()),
        [0, 0]
    );
    let read = read_config(&paths).unwrap();
    assert_eq!(read.config, c3.disk_groups[0]);
    let seqs: Vec<_> = read.disks[0]
        .slots
        .iter()
        .map(|s| match s {
            SlotStatus::Valid { seq, .. } => *seq,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(seqs, [c3.disk_groups[0].seq, c2.disk_groups[0].seq]);
}

#[test]
fn torn_newest_slot_falls_back_to_the_previous_configuration() {
    let dir = TempDir::new();
    let (paths, c1) = group(&dir, 2);
    let c2 = next(&c1, "v2");
    write_config(&paths, &c1.disk_groups[0], 1, None).unwrap();
    write_config(&paths, &c2.disk_groups[0], 2, None).unwrap();
    // Tear the payload of the newest slot (slot 1) on every disk.
    for p in &paths {
        corrupt(p, slot_offset(p, 1) + BLOCK_BYTES + 100, &[0xff; 512]);
    }
    let read = read_config(&paths).unwrap();
    assert_eq!(read.config, c1.disk_groups[0]);
    assert_eq!(read.txn_id, 1);
    assert!(matches!(
        &read.disks[0].slots[1],
        SlotStatus::Invalid { reason } if reason.contains("payload checksum mismatch")
    ));
    // The next write goes over the torn slot, not over the good one.
    let report = write_config(&paths, &c2.disk_groups[0], 2, None).unwrap();
    assert_eq!(report.written[0].1, 1);
    assert_eq!(read_config(&paths).unwrap().config, c2.disk_groups[0]);
    // ... and says so, per disk.
    assert_eq!(report.repaired.len(), 2, "{:?}", report.repaired);
    assert!(report.repaired[0].2.starts_with("slot 1 (payload checksum"));
    // A damaged label copy is repaired (and reported) by the next write too.
    corrupt(&paths[0], BLOCK_BYTES + 8, &[0xee; 16]);
    let c3 = next(&c2, "v3");
    let report = write_config(&paths, &c3.disk_groups[0], 3, None).unwrap();
    let labels: Vec<_> = report
        .repaired
        .iter()
        .filter(|r| r.2 == "label copy")
        .collect();
    assert_eq!(labels.len(), 1, "{:?}", report.repaired);
    assert_eq!(labels[0].0, paths[0]);
}

#[test]
fn torn_header_is_detected() {
    let dir = TempDir::new();
    let (paths, c1) = group(&dir, 1);
    let c2 = next(&c1, "v2");
    write_config(&paths, &c1.disk_groups[0], 1, None).unwrap();
    write_config(&paths, &c2.disk_groups[0], 2, None).unwrap();
    // Half a header: the first sector new, the rest old... here: zero the second half
    // of the header's first sector.
    corrupt(&paths[0], slot_offset(&paths[0], 1) + 256, &[0; 256]);
    let read = read_config(&paths).unwrap();
    assert_eq!(read.config, c1.disk_groups[0]);
    assert!(matches!(
        &read.disks[0].slots[1],
        SlotStatus::Invalid { reason } if reason.contains("header checksum")
    ));
}

#[test]
fn newest_slot_on_any_disk_wins_and_lagging_disks_are_reported() {
    let dir = TempDir::new();
    let (paths, c1) = group(&dir, 3);
    let c2 = next(&c1, "v2");
    write_config(&paths, &c1.disk_groups[0], 1, None).unwrap();
    // The master died after writing one disk.
    write_config(&paths[1..2], &c2.disk_groups[0], 2, None).unwrap();
    let read = read_config(&paths).unwrap();
    assert_eq!(read.config, c2.disk_groups[0]);
    let current: Vec<bool> = read.disks.iter().map(|d| d.current).collect();
    assert_eq!(current, [false, true, false]);
    // The new master rewrites it idempotently everywhere.
    let report = write_config(&paths, &c2.disk_groups[0], 2, None).unwrap();
    assert!(report.all_ok());
    assert!(read_config(&paths).unwrap().disks.iter().all(|d| d.current));
}

#[test]
fn idempotent_rewrite_is_allowed_but_stale_or_conflicting_writes_are_refused() {
    let dir = TempDir::new();
    let (paths, c1) = group(&dir, 1);
    let c2 = next(&c1, "v2");
    write_config(&paths, &c2.disk_groups[0], 5, None).unwrap();
    let again = write_config(&paths, &c2.disk_groups[0], 5, None).unwrap();
    assert_eq!(again.written[0].1, 1, "rewrite goes to the other slot");
    let err = write_config(&paths, &c2.disk_groups[0], 6, None).unwrap_err();
    assert!(
        err.to_string().contains("from transaction 5, not 6"),
        "{err}"
    );
    let err = write_config(&paths, &c1.disk_groups[0], 4, None).unwrap_err();
    assert!(err.to_string().contains("newer than seq"), "{err}");
    assert_eq!(read_config(&paths).unwrap().txn_id, 5);
}

#[test]
fn conflicting_transactions_with_the_same_seq_are_an_error() {
    let dir = TempDir::new();
    let (paths, c1) = group(&dir, 2);
    write_config(&paths[..1], &c1.disk_groups[0], 1, None).unwrap();
    write_config(&paths[1..], &c1.disk_groups[0], 2, None).unwrap();
    let err = read_config(&paths).unwrap_err();
    assert!(matches!(err, OnDiskError::Conflict { .. }), "{err}");
}

#[test]
fn write_refuses_a_disk_outside_the_group() {
    let dir = TempDir::new();
    let (mut paths, c) = group(&dir, 1);
    let stranger = dir.disk("stranger", DISK_BYTES);
    init_disk(&stranger, "disk77", InitOptions::default()).unwrap();
    paths.push(stranger.clone());
    let report = write_config(&paths, &c.disk_groups[0], 1, None).unwrap();
    assert_eq!(report.written.len(), 1);
    let (path, err) = &report.failed[0];
    assert_eq!(path, &stranger);
    assert!(
        err.to_string().contains("is not a disk of disk group dg1"),
        "{err}"
    );
    let err = write_config(&paths[1..], &c.disk_groups[0], 1, None).unwrap_err();
    assert!(matches!(err, OnDiskError::WriteFailed { .. }), "{err}");
}

#[test]
fn all_slots_corrupt_is_a_clear_error_naming_each_disk() {
    let dir = TempDir::new();
    let (paths, c) = group(&dir, 2);
    write_config(&paths, &c.disk_groups[0], 1, None).unwrap();
    for p in &paths {
        corrupt(p, slot_offset(p, 0) + 20, b"garbage!");
    }
    let err = read_config(&paths).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, OnDiskError::NoValidConfig { .. }));
    for p in &paths {
        assert!(text.contains(&p.display().to_string()), "{text}");
    }
    assert!(text.contains("slot 0 invalid (header checksum"), "{text}");
    assert!(text.contains("slot 1 empty"), "{text}");
}

#[test]
fn a_corrupt_primary_label_is_recovered_from_the_backup() {
    let dir = TempDir::new();
    let (paths, c) = group(&dir, 1);
    write_config(&paths, &c.disk_groups[0], 1, None).unwrap();
    let before = read_label(&paths[0]).unwrap();
    corrupt(&paths[0], 300, b"scribble");
    assert_eq!(read_label(&paths[0]).unwrap(), before);
    // The next configuration write repairs the damaged copy.
    write_config(&paths, &c.disk_groups[0], 1, None).unwrap();
    let mut primary = vec![0u8; BLOCK_BYTES as usize];
    File::open(&paths[0])
        .unwrap()
        .read_exact_at(&mut primary, 0)
        .unwrap();
    let repaired = Label::decode(&primary).unwrap();
    assert_eq!(repaired.generation, before.generation + 1);
    let before = read_label(&paths[0]).unwrap();
    corrupt(&paths[0], 300, b"scribble");
    assert_eq!(read_label(&paths[0]).unwrap(), before);
    corrupt(&paths[0], BLOCK_BYTES + 300, b"scribble");
    let err = read_label(&paths[0]).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, OnDiskError::Label { .. }));
    assert!(text.contains(&paths[0].display().to_string()), "{text}");
    assert!(text.contains("checksum mismatch"), "{text}");
    // read_config reports the disk and its reason.
    let err = read_config(&paths).unwrap_err().to_string();
    assert!(err.contains("unreadable label"), "{err}");
}

#[test]
fn blank_and_truncated_disks_are_reported_with_the_reason() {
    let dir = TempDir::new();
    let blank = dir.disk("blank", DISK_BYTES);
    let err = read_label(&blank).unwrap_err().to_string();
    assert!(
        err.contains("blank.img: unreadable label: no label (blank"),
        "{err}"
    );
    let tiny = dir.disk("tiny", 100);
    let err = read_label(&tiny).unwrap_err().to_string();
    assert!(err.contains("too small to hold a label"), "{err}");
    let (paths, _) = group(&dir, 1);
    File::options()
        .write(true)
        .open(&paths[0])
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let err = read_label(&paths[0]).unwrap_err().to_string();
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn release_clears_the_disk_group_and_the_slots() {
    let dir = TempDir::new();
    let (paths, c) = group(&dir, 2);
    write_config(&paths, &c.disk_groups[0], 1, None).unwrap();
    let label = release_disk(&paths[0], &ReleaseExpect::default()).unwrap();
    assert_eq!(label.disk_group, None);
    assert_eq!(read_label(&paths[0]).unwrap().disk_group, None);
    let read = read_config(&paths).unwrap();
    assert_eq!(read.disks[0].slots, [SlotStatus::Empty, SlotStatus::Empty]);
    assert!(read.disks[1].current);
    // A released disk can join another group.
    assert!(init_disk(&paths[0], "disk01", InitOptions::default()).is_ok());
}

#[test]
fn init_refuses_a_disk_in_a_group_unless_forced() {
    let dir = TempDir::new();
    let (paths, c) = group(&dir, 1);
    write_config(&paths, &c.disk_groups[0], 1, None).unwrap();
    let err = init_disk(&paths[0], "disk01", InitOptions::default()).unwrap_err();
    assert!(err.to_string().contains("is in disk group dg1"), "{err}");
    assert!(!err.to_string().contains("(or force)"), "{err}");
    // Forced: still refused while the group is imported (its label has an owner).
    let forced = InitOptions {
        force: true,
        ..Default::default()
    };
    let err = init_disk(&paths[0], "disk01", forced)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dg rm-disk dg1") && err.contains("--force"),
        "{err}"
    );
    assert!(read_label(&paths[0]).unwrap().disk_group.is_some());
    // A deported group's disk: refused without force, re-initialised with it.
    write_config(&paths, &c.disk_groups[0].deported(), 2, None).unwrap();
    let err = init_disk(&paths[0], "disk01", InitOptions::default()).unwrap_err();
    assert!(err.to_string().contains("deported"), "{err}");
    let fresh = init_disk(&paths[0], "disk01", forced).unwrap();
    assert!(fresh.disk_group.is_none());
}

#[test]
fn read_config_of_picks_one_group() {
    let dir = TempDir::new();
    let (paths, c) = group(&dir, 1);
    write_config(&paths, &c.disk_groups[0], 1, None).unwrap();
    let id = c.disk_groups[0].id.clone();
    assert!(read_config_of(&paths, Some(&id)).is_ok());
    let err = read_config_of(&paths, Some("someoneelse"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("another disk group"), "{err}");
}

#[test]
fn random_damage_to_the_private_region_never_panics() {
    let dir = TempDir::new();
    let (paths, c1) = group(&dir, 2);
    let c2 = next(&c1, "v2");
    write_config(&paths, &c1.disk_groups[0], 1, None).unwrap();
    write_config(&paths, &c2.disk_groups[0], 2, None).unwrap();
    // And a change log record after c2's checkpoint.
    let c3 = next(&c2, "v3");
    assert_eq!(write_change(&paths, &c2, 2, &c3, 3).logged.len(), 2);
    let private = DEFAULT_PRIVATE_REGION_BYTES as usize;
    let pristine: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| {
            let mut buf = vec![0u8; private];
            File::open(p).unwrap().read_exact_at(&mut buf, 0).unwrap();
            buf
        })
        .collect();
    let slots = [slot_offset(&paths[0], 0), slot_offset(&paths[0], 1)];
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
    let (mut newest, mut older, mut failed) = (0, 0, 0);
    for _ in 0..300 {
        for (p, image) in paths.iter().zip(&pristine) {
            corrupt(p, 0, image);
        }
        for _ in 0..rng.gen_range(1..8) {
            let p = &paths[rng.gen_range(0..paths.len())];
            let offset = match rng.gen_range(0..5) {
                0 => rng.gen_range(0..2 * BLOCK_BYTES),
                1 => slots[0] + rng.gen_range(0..2 * BLOCK_BYTES),
                2 => slots[1] + rng.gen_range(0..2 * BLOCK_BYTES),
                // The record after a checkpoint of at most two blocks.
                3 => slots[rng.gen_range(0..2)] + rng.gen_range(2 * BLOCK_BYTES..4 * BLOCK_BYTES),
                _ => rng.gen_range(0..private as u64 - 64),
            };
            let len = rng.gen_range(1..64);
            let junk: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            corrupt(p, offset, &junk);
        }
        match read_config(&paths) {
            Ok(read) if read.config == c3.disk_groups[0] => newest += 1,
            Ok(read) => {
                assert!(
                    read.config == c2.disk_groups[0] || read.config == c1.disk_groups[0],
                    "seq {}",
                    read.seq
                );
                older += 1;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                failed += 1;
            }
        }
    }
    assert!(
        newest > 0 && older > 0,
        "newest {newest}, older {older}, failed {failed}"
    );
}

#[test]
fn discover_groups_disks_and_finds_lagging_labels() {
    let dir = TempDir::new();
    let (paths, c) = group(&dir, 2);
    let g = &c.disk_groups[0];
    write_config(&paths, g, 1, None).unwrap();
    let free = dir.disk("free", DISK_BYTES);
    let free_label = init_disk(&free, "disk03", InitOptions::default()).unwrap();
    let blank = dir.disk("blank", DISK_BYTES);
    let all = vec![
        paths[0].clone(),
        paths[1].clone(),
        free.clone(),
        blank.clone(),
    ];
    let found = discover(&all);
    assert_eq!(found.groups.len(), 1);
    assert_eq!(found.free_disks.len(), 1);
    assert_eq!(found.unreadable[0].0, blank);
    let read = found.groups[0].config.as_ref().unwrap();
    assert_eq!(&read.config, g);
    assert_eq!(read.member_paths(), paths);
    assert!(read.missing_disks().is_empty());
    assert_eq!(read.missing_disks_warning(), None);
    // add-disk whose label update was lost: the slots still count.
    let c2 = c
        .apply(&Change::DgAddDisk {
            dg: "dg1".into(),
            disk: free_label.disk_record(&free),
        })
        .unwrap();
    write_config(&all[..3], &c2.disk_groups[0], 2, None).unwrap();
    let lbl = read_label(&free).unwrap();
    let mut lagging = lbl.clone();
    lagging.disk_group = None;
    corrupt(&free, 0, &lagging.encode());
    corrupt(&free, BLOCK_BYTES, &lagging.encode());
    let found = discover(&all);
    let read = found.groups[0].config.as_ref().unwrap();
    assert_eq!(read.config, c2.disk_groups[0]);
    assert_eq!(read.member_paths().len(), 3);
    // A missing disk is named, and warned of.
    let read = read_config(&paths).unwrap();
    assert_eq!(read.missing_disks(), ["disk03"]);
    let warning = read.missing_disks_warning().unwrap();
    assert!(
        warning.starts_with("disk group dg1: configuration seq 3 read without its disk(s) disk03,"),
        "{warning}"
    );
}

#[test]
fn write_refuses_a_disk_labelled_for_another_group() {
    let dir = TempDir::new();
    let (paths, c) = group(&dir, 1);
    write_config(&paths, &c.disk_groups[0], 1, None).unwrap();
    // Another group claiming the same disk (e.g. created on a node that did not see
    // dg1) must not overwrite it.
    let mut other = c.disk_groups[0].clone();
    other.name = "dg2".into();
    other.id = crate::model::new_id();
    let err = write_config(&paths, &other, 1, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("belongs to disk group dg1"), "{err}");
    assert_eq!(read_config(&paths).unwrap().config, c.disk_groups[0]);
}

#[test]
fn release_refuses_a_disk_that_now_holds_another_disk_or_group() {
    let dir = TempDir::new();
    let (paths, c) = group(&dir, 2);
    let dg = &c.disk_groups[0];
    write_config(&paths, dg, 1, None).unwrap();
    let other_group = ReleaseExpect {
        disk_id: None,
        dg_id: Some("not-this-group"),
    };
    assert!(release_disk(&paths[0], &other_group).is_err());
    let other_disk = ReleaseExpect {
        disk_id: Some("not-this-disk"),
        dg_id: None,
    };
    assert!(release_disk(&paths[0], &other_disk).is_err());
    // Refused means untouched: the group and its configuration are still there.
    assert!(read_label(&paths[0]).unwrap().disk_group.is_some());
    assert!(read_config(&paths).is_ok());
    let same = ReleaseExpect {
        disk_id: Some(&dg.disks[0].id),
        dg_id: Some(&dg.id),
    };
    assert_eq!(release_disk(&paths[0], &same).unwrap().disk_group, None);
}

/// A transaction id of epoch (master's view) `epoch`, number `n` in it.
fn txn(epoch: u64, n: u64) -> u64 {
    (epoch << 32) | n
}

#[test]
fn a_replaced_master_cannot_write_over_a_newer_epoch_and_readers_drop_its_stale_lineage() {
    let dir = TempDir::new();
    let (paths, c1) = group(&dir, 2);
    write_config(&paths, &c1.disk_groups[0], txn(3, 1), None).unwrap();
    // The new master (epoch 5) commits seq 2, reaching the first disk only.
    let new2 = next(&c1, "new");
    write_config(&paths[..1], &new2.disk_groups[0], txn(5, 1), None).unwrap();
    // The replaced master (epoch 3) writes its own seq 2: the first disk refuses it
    // and the whole write fails naming the newer epoch, although the second disk
    // took it.
    let old2 = next(&c1, "old");
    let err = write_config(&paths, &old2.disk_groups[0], txn(3, 2), None).unwrap_err();
    assert!(matches!(err, OnDiskError::NewerEpoch { .. }), "{err}");
    assert!(err.to_string().contains(crate::core::NEWER_EPOCH), "{err}");
    // It goes on to seq 3 on the second disk only, which knows no newer epoch.
    let old3 = next(&old2, "old3");
    write_config(&paths[1..], &old3.disk_groups[0], txn(3, 3), None).unwrap();
    // Readers take the newer epoch's seq 2 over the stale lineage's seq 3.
    let read = read_config(&paths).unwrap();
    assert_eq!(read.config, new2.disk_groups[0]);
    assert_eq!(read.txn_id, txn(5, 1));
    // The new master's next write brings the second disk back into its lineage.
    let new3 = next(&new2, "new3");
    let report = write_config(&paths, &new3.disk_groups[0], txn(5, 2), None).unwrap();
    assert!(report.all_ok(), "{:?}", report.failed);
    assert_eq!(read_config(&paths).unwrap().config, new3.disk_groups[0]);
}

#[test]
fn a_write_after_the_last_one_validates_the_change_and_refuses_a_broken_one() {
    let dir = TempDir::new();
    let (paths, c1) = group(&dir, 2);
    let g1 = &c1.disk_groups[0];
    write_config(&paths, g1, 1, None).unwrap();
    let c2 = next(&c1, "vol2");
    let g2 = &c2.disk_groups[0];
    assert!(write_config_after(&paths, g2, Some((g1, 1)), 2, None)
        .unwrap()
        .all_ok());
    assert_eq!(read_config(&paths).unwrap().seq, g2.seq);
    // The changed volume's subdisk moved over one of vol1's, which the change left
    // alone: the change is checked against it, and nothing is written.
    let mut bad = g2.clone();
    bad.seq += 1;
    let vol1 = g2.volume("vol1").unwrap().plexes[0].subdisks[0].clone();
    let at = bad.volumes.iter().position(|v| v.name == "vol2").unwrap();
    let sd = &mut bad.volume_mut(at).plexes[0].subdisks[0];
    sd.disk = vol1.disk;
    sd.disk_offset_bytes = vol1.disk_offset_bytes;
    let err = write_config_after(&paths, &bad, Some((g2, 2)), 3, None).unwrap_err();
    assert!(matches!(err, OnDiskError::BadConfig { .. }), "{err}");
    assert_eq!(read_config(&paths).unwrap().seq, g2.seq);
}

/// The change that makes round `i` of the change log tests: a mix of creates,
/// grows, removes and a group setting, so records keep, replace, drop and add
/// volumes.
fn log_change(c: &ClusterConfig, i: u64, rng: &mut rand::rngs::StdRng) -> ClusterConfig {
    let g = &c.disk_groups[0];
    let names: Vec<String> = g.volumes.iter().map(|v| v.name.clone()).collect();
    let pick = |rng: &mut rand::rngs::StdRng| names[rng.gen_range(0..names.len())].clone();
    let change = match rng.gen_range(0..6) {
        0 | 1 => Change::VolCreate {
            dg: "dg1".into(),
            volume: format!("lv{i}"),
            size_bytes: 1 << 20,
            layout: VolumeLayout::Concat,
            log: Default::default(),
            disks: Vec::new(),
        },
        2 | 3 => {
            let volume = pick(rng);
            let size = g.volume(&volume).unwrap().size_bytes;
            Change::VolGrow {
                dg: "dg1".into(),
                volume,
                new_size_bytes: size + 4096,
            }
        }
        4 if names.len() > 2 => Change::VolRm {
            dg: "dg1".into(),
            volume: pick(rng),
        },
        _ => Change::DgSetDetachPolicy {
            dg: "dg1".into(),
            policy: if i.is_multiple_of(2) {
                DetachPolicy::Local
            } else {
                DetachPolicy::Global
            },
        },
    };
    c.apply(&change).unwrap()
}

/// Writes `after` as the change of `before` (written by transaction `before_txn`).
fn write_change(
    paths: &[PathBuf],
    before: &ClusterConfig,
    before_txn: u64,
    after: &ClusterConfig,
    txn: u64,
) -> WriteReport {
    write_config_after(
        paths,
        &after.disk_groups[0],
        Some((&before.disk_groups[0], before_txn)),
        txn,
        None,
    )
    .unwrap()
}

/// Rewrites the CRC32C at `crc_at` of a header block over the bytes before it.
fn reseal(block: &mut [u8], crc_at: usize) {
    let crc = crc32c::crc32c(&block[..crc_at]);
    block[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Makes `slot` of the disk at `path` a version 1 checkpoint (an older plexd's),
/// its header CRC right.
fn make_version_1(path: &Path, slot: usize) {
    let at = slot_offset(path, slot);
    let mut header = vec![0u8; BLOCK_BYTES as usize];
    File::open(path)
        .unwrap()
        .read_exact_at(&mut header, at)
        .unwrap();
    header[8..12].copy_from_slice(&1u32.to_le_bytes());
    reseal(&mut header, 508);
    corrupt(path, at, &header);
}

/// Both slot headers of the disk at `path`, decoded.
fn slot_headers(path: &Path) -> Vec<SlotHeader> {
    let label = read_label(path).unwrap();
    let f = File::open(path).unwrap();
    (0..2)
        .map(|i| {
            let mut h = vec![0u8; BLOCK_BYTES as usize];
            f.read_exact_at(&mut h, label.slot_offset_bytes(i)).unwrap();
            SlotHeader::decode(&h, i as u32, label.max_payload_bytes()).unwrap()
        })
        .collect()
}

/// Where the first change log record of `slot` of the disk at `path` is (from the
/// device's start), and its header's bytes.
fn first_record(path: &Path, slot: usize) -> (u64, Vec<u8>) {
    let at = slot_offset(path, slot);
    let f = File::open(path).unwrap();
    let mut header = vec![0u8; BLOCK_BYTES as usize];
    f.read_exact_at(&mut header, at).unwrap();
    let payload_len = u64::from_le_bytes(header[32..40].try_into().unwrap());
    let first = at + BLOCK_BYTES + payload_len.div_ceil(BLOCK_BYTES) * BLOCK_BYTES;
    let mut rec = vec![0u8; log::RECORD_HEADER_BYTES as usize];
    f.read_exact_at(&mut rec, first).unwrap();
    (first, rec)
}

#[test]
fn small_changes_go_to_the_change_log_and_read_back_until_a_checkpoint() {
    let dir = TempDir::new();
    let (paths, mut c) = group(&dir, 2);
    write_config(&paths, &c.disk_groups[0], 1, None).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x109);
    let (mut logged, mut checkpoints, mut slot) = (0, 0, 0);
    for i in 2..200u64 {
        let after = log_change(&c, i, &mut rng);
        let report = write_change(&paths, &c, i - 1, &after, i);
        assert!(report.all_ok());
        let used = report.written[0].1;
        if report.logged.len() == paths.len() {
            // A record goes into the slot holding the newest configuration.
            assert_eq!(used, slot, "round {i}");
            logged += 1;
        } else {
            assert!(report.logged.is_empty(), "round {i}: {:?}", report.logged);
            assert_ne!(used, slot, "round {i}: a checkpoint goes to the other slot");
            checkpoints += 1;
        }
        slot = used;
        let read = read_config(&paths).unwrap();
        assert_eq!(read.config, after.disk_groups[0], "round {i}");
        assert_eq!((read.seq, read.txn_id), (after.disk_groups[0].seq, i));
        assert!(read.disks.iter().all(|d| d.current));
        c = after;
    }
    // The log holds at most MAX_LOG_RECORDS records (or its byte budget) between
    // checkpoints.
    assert!(
        logged > 150 && checkpoints >= 3,
        "logged {logged}, checkpoints {checkpoints}"
    );
}

#[test]
fn a_torn_record_ends_the_log_and_the_next_write_is_a_checkpoint() {
    let dir = TempDir::new();
    let (paths, c1) = group(&dir, 2);
    write_config(&paths, &c1.disk_groups[0], 1, None).unwrap();
    let c2 = next(&c1, "v2");
    let c3 = next(&c2, "v3");
    assert_eq!(write_change(&paths, &c1, 1, &c2, 2).logged.len(), 2);
    let report = write_change(&paths, &c2, 2, &c3, 3);
    assert_eq!(report.logged.len(), 2);
    // Tear the second record on both disks: its payload's last bytes (the record
    // after the checkpoint and the first record).
    let slot = report.written[0].1;
    for p in &paths {
        let checkpoint = read_config(std::slice::from_ref(p)).unwrap();
        assert_eq!(checkpoint.seq, c3.disk_groups[0].seq);
        let (first, rec) = first_record(p, slot);
        let second = first + log::record_len(u64::from_le_bytes(rec[32..40].try_into().unwrap()));
        corrupt(p, second + log::RECORD_HEADER_BYTES + 8, &[0xa5; 16]);
    }
    let read = read_config(&paths).unwrap();
    assert_eq!(
        read.config, c2.disk_groups[0],
        "the torn record's change is lost, no more"
    );
    // The writer's memory says seq 3 of txn 3, the disks hold seq 2: the next change
    // is not chained to a record that is not there.
    let c4 = next(&c3, "v4");
    let report = write_change(&paths, &c3, 3, &c4, 4);
    assert!(report.logged.is_empty(), "{:?}", report.logged);
    assert!(report.written.iter().all(|(_, s)| *s != slot));
    assert_eq!(read_config(&paths).unwrap().config, c4.disk_groups[0]);
    // And the log goes on from that checkpoint.
    let c5 = next(&c4, "v5");
    assert_eq!(write_change(&paths, &c4, 4, &c5, 5).logged.len(), 2);
    assert_eq!(read_config(&paths).unwrap().config, c5.disk_groups[0]);
}

#[test]
fn records_left_by_an_earlier_use_of_the_slot_do_not_extend_a_new_checkpoint() {
    let dir = TempDir::new();
    let (paths, mut c) = group(&dir, 1);
    write_config(&paths, &c.disk_groups[0], 1, None).unwrap();
    // Slot 1: a checkpoint and records; then slot 0 a checkpoint; then slot 1 a
    // checkpoint again, over which the old records lie.
    let mut txn = 1;
    let mut history = vec![c.clone()];
    for round in 0..3 {
        let after = next(&c, &format!("r{round}"));
        txn += 1;
        // A write without the change: a checkpoint.
        write_config(&paths, &after.disk_groups[0], txn, None).unwrap();
        c = after;
        for k in 0..3 {
            let after = next(&c, &format!("r{round}k{k}"));
            let r = write_change(&paths, &c, txn, &after, txn + 1);
            assert_eq!(r.logged.len(), 1);
            txn += 1;
            c = after;
            history.push(c.clone());
        }
    }
    assert_eq!(read_config(&paths).unwrap().config, c.disk_groups[0]);
    // A checkpoint of an older configuration into the slot holding the newest log
    // (as a new master rewriting from scratch would not, but bytes can): the old
    // records behind it are not its log.
    let label = read_label(&paths[0]).unwrap();
    let slot_bytes = |i: usize| {
        let mut b = vec![0u8; 64 << 10];
        File::open(&paths[0])
            .unwrap()
            .read_exact_at(&mut b, label.slot_offset_bytes(i))
            .unwrap();
        b
    };
    let newest = read_config(&paths).unwrap();
    let holding = (0..2)
        .find(|i| matches!(&newest.disks[0].slots[*i], SlotStatus::Valid { seq, .. } if *seq == newest.seq))
        .unwrap();
    let before = slot_bytes(holding);
    // Rewrite only that slot's checkpoint block(s) with the same checkpoint bytes
    // the other slot would hold, leaving the records behind it.
    let other = 1 - holding;
    let other_bytes = slot_bytes(other);
    let mut header = other_bytes[..4096].to_vec();
    header[44..48].copy_from_slice(&(holding as u32).to_le_bytes());
    reseal(&mut header, 508);
    let len = u64::from_le_bytes(header[32..40].try_into().unwrap());
    let padded = (4096 + len.div_ceil(4096) * 4096) as usize;
    let mut image = header;
    image.extend_from_slice(&other_bytes[4096..padded]);
    assert_ne!(&before[..padded], &image[..]);
    corrupt(&paths[0], label.slot_offset_bytes(holding), &image);
    let read = read_config(&paths).unwrap();
    let other_seq = u64::from_le_bytes(other_bytes[16..24].try_into().unwrap());
    assert!(read.seq < newest.seq);
    // The old records ended the transplanted checkpoint's log (they are not linked
    // to it): its slot reads as that checkpoint alone, valid.
    assert!(
        matches!(&read.disks[0].slots[holding], SlotStatus::Valid { seq, .. } if *seq == other_seq),
        "{:?}",
        read.disks[0].slots[holding]
    );
    assert!(
        history
            .iter()
            .any(|h| h.disk_groups[0] == read.config && read.seq >= other_seq),
        "read seq {} is a configuration that was written",
        read.seq
    );
}

#[test]
fn a_linked_record_this_plexd_cannot_read_makes_its_slot_invalid() {
    let dir = TempDir::new();
    let (paths, c1) = group(&dir, 1);
    write_config(&paths, &c1.disk_groups[0], 1, None).unwrap();
    let c2 = next(&c1, "v2");
    let slot = write_change(&paths, &c1, 1, &c2, 2).written[0].1;
    let (at, mut rec) = first_record(&paths[0], slot);
    // A newer record format, its header CRC right: refused, never skipped.
    rec[8..12].copy_from_slice(&9u32.to_le_bytes());
    reseal(&mut rec, 252);
    corrupt(&paths[0], at, &rec);
    // The slot is invalid as a whole (not read as its checkpoint alone, an older
    // configuration); this disk's other slot was never written.
    let err = read_config(&paths).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "slot {slot} invalid (checkpoint seq {}: change log record 1: format version 9",
            c1.disk_groups[0].seq
        )),
        "{err}"
    );
}

#[test]
fn a_disk_written_before_the_change_log_gets_version_2_in_both_slots() {
    let dir = TempDir::new();
    let (paths, c1) = group(&dir, 1);
    write_config(&paths, &c1.disk_groups[0], 1, None).unwrap();
    // Make slot 0 a version 1 checkpoint (an older plexd's), header CRC right.
    make_version_1(&paths[0], 0);
    assert_eq!(read_config(&paths).unwrap().config, c1.disk_groups[0]);
    // No record goes after a version 1 checkpoint: an older plexd would not see it.
    let c2 = next(&c1, "v2");
    let report = write_change(&paths, &c1, 1, &c2, 2);
    assert!(report.logged.is_empty());
    assert_eq!(report.written[0].1, 1);
    // Both slots now hold version 2 checkpoints of seq 2: an older plexd reads none
    // of them rather than the older configuration.
    for (i, h) in slot_headers(&paths[0]).iter().enumerate() {
        assert_eq!((h.version, h.seq), (2, c2.disk_groups[0].seq), "slot {i}");
    }
    let c3 = next(&c2, "v3");
    assert_eq!(write_change(&paths, &c2, 2, &c3, 3).logged.len(), 1);
    assert_eq!(read_config(&paths).unwrap().config, c3.disk_groups[0]);
}

#[test]
fn a_crash_before_the_second_copy_of_an_upgrade_leaves_no_record_after_it() {
    let dir = TempDir::new();
    let (paths, c1) = group(&dir, 1);
    write_config(&paths, &c1.disk_groups[0], 1, None).unwrap();
    let c2 = next(&c1, "v2");
    write_config(&paths, &c2.disk_groups[0], 2, None).unwrap();
    // What a crash between an upgrade's two checkpoint writes leaves: the newest
    // configuration in a version 2 slot (1), the older one still version 1 (0).
    make_version_1(&paths[0], 0);
    // The next change is a checkpoint into the version 1 slot, not a record an
    // older plexd would miss while it still reads that slot.
    let c3 = next(&c2, "v3");
    let report = write_change(&paths, &c2, 2, &c3, 3);
    assert!(report.logged.is_empty());
    assert_eq!(report.written[0].1, 0);
    for (i, h) in slot_headers(&paths[0]).iter().enumerate() {
        assert_eq!(h.version, 2, "slot {i}");
    }
    assert_eq!(read_config(&paths).unwrap().config, c3.disk_groups[0]);
    let c4 = next(&c3, "v4");
    assert_eq!(write_change(&paths, &c3, 3, &c4, 4).logged.len(), 1);
}

#[test]
fn a_change_not_made_from_the_disks_newest_configuration_is_a_checkpoint() {
    let dir = TempDir::new();
    let (paths, c1) = group(&dir, 2);
    write_config(&paths, &c1.disk_groups[0], 1, None).unwrap();
    let c2 = next(&c1, "v2");
    // Another transaction wrote this seq: the change's base is not the disks'.
    let r = write_change(&paths, &c1, 99, &c2, 2);
    assert!(r.logged.is_empty());
    assert_eq!(read_config(&paths).unwrap().config, c2.disk_groups[0]);
    // A change of the lineage (owner) is a checkpoint too.
    let mut c3 = c2.clone();
    let g = &mut c3.disk_groups[0];
    g.seq += 1;
    g.owner_id = "cluster-2".into();
    let r = write_change(&paths, &c2, 2, &c3, 3);
    assert!(r.logged.is_empty());
    assert_eq!(read_config(&paths).unwrap().config, c3.disk_groups[0]);
}

#[test]
fn a_replaced_master_cannot_append_after_a_newer_masters_write() {
    let dir = TempDir::new();
    let (paths, c1) = group(&dir, 2);
    write_config(&paths, &c1.disk_groups[0], txn(3, 1), None).unwrap();
    // The master of epoch 3 logs seq 2.
    let old2 = next(&c1, "old2");
    assert_eq!(
        write_change(&paths, &c1, txn(3, 1), &old2, txn(3, 2))
            .logged
            .len(),
        2
    );
    // A new master (epoch 5), which never wrote this group, commits its own seq 2
    // from seq 1 (the old master's seq 2 was never committed): a checkpoint.
    let new2 = next(&c1, "new2");
    let r = write_config_after(
        &paths,
        &new2.disk_groups[0],
        Some((&c1.disk_groups[0], txn(3, 1))),
        txn(5, 1),
        None,
    )
    .unwrap();
    assert!(r.logged.is_empty());
    // The replaced master, frozen meanwhile, goes on from its seq 2: its record
    // would chain to its own log, but the disks hold a newer epoch's configuration.
    let old3 = next(&old2, "old3");
    let err = write_config_after(
        &paths,
        &old3.disk_groups[0],
        Some((&old2.disk_groups[0], txn(3, 2))),
        txn(3, 3),
        None,
    )
    .unwrap_err();
    assert!(matches!(err, OnDiskError::NewerEpoch { .. }), "{err}");
    let read = read_config(&paths).unwrap();
    assert_eq!(
        (read.config.clone(), read.txn_id),
        (new2.disk_groups[0].clone(), txn(5, 1))
    );
    // The new master's next change is logged after its own checkpoint.
    let new3 = next(&new2, "new3");
    assert_eq!(
        write_change(&paths, &new2, txn(5, 1), &new3, txn(5, 2))
            .logged
            .len(),
        2
    );
    assert_eq!(read_config(&paths).unwrap().config, new3.disk_groups[0]);
}

/// Two checkpoints on `paths` (c1 into slot 0, c2 into slot 1, txns 1 and 2), and
/// the change after c2.
fn two_checkpoints(dir: &TempDir) -> (Vec<PathBuf>, [ClusterConfig; 3]) {
    let (paths, c1) = group(dir, 2);
    let c2 = next(&c1, "v2");
    write_config(&paths, &c1.disk_groups[0], 1, None).unwrap();
    write_config(&paths, &c2.disk_groups[0], 2, None).unwrap();
    for p in &paths {
        assert_eq!(
            slot_headers(p).iter().map(|h| h.seq).collect::<Vec<_>>(),
            [c1.disk_groups[0].seq, c2.disk_groups[0].seq]
        );
    }
    let c3 = next(&c2, "v3");
    (paths, [c1, c2, c3])
}

/// Damages the checkpoint payload of `slot` on every disk of `paths` (its header
/// stays intact).
fn damage_checkpoint(paths: &[PathBuf], slot: usize) {
    for p in paths {
        corrupt(p, slot_offset(p, slot) + BLOCK_BYTES + 64, &[0x5a; 32]);
    }
}

/// `report` is a checkpoint into `slot` on every disk, each replacing a damaged
/// configuration there.
fn assert_checkpoint_repaired(report: &WriteReport, slot: usize) {
    assert!(report.logged.is_empty(), "{:?}", report.logged);
    assert!(report.written.iter().all(|(_, s)| *s == slot));
    assert_eq!(
        report.repaired.len(),
        report.written.len(),
        "{:?}",
        report.repaired
    );
    let what = format!("slot {slot}");
    assert!(report.repaired.iter().all(|(_, _, w)| w.contains(&what)));
}

#[test]
fn a_damaged_newest_checkpoint_gets_no_record_after_it() {
    let dir = TempDir::new();
    let (paths, [_, c2, c3]) = two_checkpoints(&dir);
    damage_checkpoint(&paths, 1);
    // The writer remembers c2 as written by txn 2, and slot 1's header says so;
    // its payload does not check: the change is a checkpoint, into slot 1 (the
    // newest valid configuration, c1, is in slot 0), which repairs it.
    let report = write_change(&paths, &c2, 2, &c3, 3);
    assert_eq!(report.written.len(), 2);
    assert_checkpoint_repaired(&report, 1);
    let read = read_config(&paths).unwrap();
    assert_eq!(read.config, c3.disk_groups[0]);
    assert!(read.disks.iter().all(|d| d.current));
}

#[test]
fn a_damaged_older_checkpoint_does_not_stop_the_log_and_the_next_checkpoint_repairs_it() {
    let dir = TempDir::new();
    let (paths, [_, c2, c3]) = two_checkpoints(&dir);
    damage_checkpoint(&paths, 0);
    // A record goes after slot 1's checkpoint (read whole); slot 0's payload is not
    // read for it.
    let report = write_change(&paths, &c2, 2, &c3, 3);
    assert_eq!(report.logged.len(), 2, "{report:?}");
    assert!(report.written.iter().all(|(_, s)| *s == 1));
    assert!(report.repaired.is_empty());
    let read = read_config(&paths).unwrap();
    assert_eq!(read.config, c3.disk_groups[0]);
    // The log fills; its checkpoint goes into slot 0 and replaces the damaged one.
    let (mut before, mut txn) = (c3, 3);
    loop {
        let after = next(&before, &format!("w{txn}"));
        let report = write_change(&paths, &before, txn, &after, txn + 1);
        assert!(report.all_ok());
        txn += 1;
        before = after;
        if report.logged.is_empty() {
            assert_eq!(report.written.len(), 2);
            assert_checkpoint_repaired(&report, 0);
            break;
        }
        assert!(
            txn < 3 + 2 * u64::from(log::MAX_LOG_RECORDS),
            "no checkpoint after {txn} changes"
        );
    }
    let read = read_config(&paths).unwrap();
    assert_eq!(read.config, before.disk_groups[0]);
    for d in &read.disks {
        let valid = |s: &SlotStatus| matches!(s, SlotStatus::Valid { .. });
        assert!(d.slots.iter().all(valid), "{:?}", d.slots);
    }
}
