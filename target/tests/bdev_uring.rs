//! The `uring` bdev through a running target: data round trips on one and two
//! reactors, range checks, flush/unmap/write-zeroes, end of file, deep queues.

use std::sync::Arc;
use std::time::Duration;

use plexd_target::bdev::uring::{UringBdev, UringOpts};
use plexd_target::bdev::{Bdev, IoKind, IoStatus};
use plexd_target::buf::PoolConfig;
use plexd_target::diag::{run_ios, IoReq};
use plexd_target::reactor::ReactorConfig;
use plexd_target::testutil::{pattern, TempPath};
use plexd_target::{Target, TargetConfig};

const WAIT: Duration = Duration::from_secs(20);
const FILE_BYTES: u64 = 8 << 20;

fn target(reactors: usize) -> Arc<Target> {
    Target::start(&TargetConfig {
        reactors: ReactorConfig {
            cores: if reactors == 1 {
                Vec::new()
            } else {
                (0..reactors).collect()
            },
            ..Default::default()
        },
        pool: PoolConfig {
            chunks_per_class: [512, 32, 4, 4],
            hugepages: false,
        },
    })
    .expect("target starts")
}

fn uring(t: &Target, name: &str, path: &TempPath) -> Arc<dyn Bdev> {
    let b = UringBdev::open(name, &path.0, &UringOpts::default()).expect("open uring bdev");
    t.add_bdev(b).unwrap();
    t.bdev(name).unwrap()
}

fn statuses(out: &[plexd_target::diag::IoOutcome]) -> Vec<IoStatus> {
    out.iter().map(|o| o.status).collect()
}

#[test]
fn written_data_reads_back_and_reaches_the_file() {
    let path = TempPath::file("uring-rt", FILE_BYTES).unwrap();
    let t = target(1);
    let b = uring(&t, "u0", &path);
    let h = &t.reactors().handles()[0];
    let small = pattern(1, 4096);
    let big = pattern(2, 1 << 20);
    let heap = pattern(3, 8192);
    let out = run_ios(
        h,
        &b,
        vec![
            IoReq::write(0, small.clone()),
            IoReq::write(1 << 20, big.clone()),
            IoReq::write(4 << 20, heap.clone()).heap(),
        ],
        WAIT,
    )
    .unwrap();
    assert_eq!(statuses(&out), vec![IoStatus::Success; 3]);
    let out = run_ios(
        h,
        &b,
        vec![
            IoReq::read(0, 4096).heap(),
            IoReq::read(1 << 20, 1 << 20),
            IoReq::read(4 << 20, 8192),
        ],
        WAIT,
    )
    .unwrap();
    assert_eq!(statuses(&out), vec![IoStatus::Success; 3]);
    assert!(out[0].data == small, "4 KiB read back (heap buffer)");
    assert!(out[1].data == big, "1 MiB read back (registered buffer)");
    assert!(out[2].data == heap, "8 KiB read back");
    let on_disk = std::fs::read(&path.0).unwrap();
    assert!(on_disk[..4096] == small[..]);
    assert!(on_disk[1 << 20..2 << 20] == big[..]);
}

#[test]
fn two_reactors_see_each_others_writes() {
    let path = TempPath::file("uring-2r", FILE_BYTES).unwrap();
    let t = target(2);
    let b = uring(&t, "u0", &path);
    let hs = t.reactors().handles();
    let a = pattern(10, 64 << 10);
    let c = pattern(11, 64 << 10);
    let w0 = run_ios(&hs[0], &b, vec![IoReq::write(0, a.clone())], WAIT).unwrap();
    let w1 = run_ios(&hs[1], &b, vec![IoReq::write(1 << 20, c.clone())], WAIT).unwrap();
    assert!(w0[0].status.is_ok() && w1[0].status.is_ok());
    let r1 = run_ios(&hs[1], &b, vec![IoReq::read(0, 64 << 10)], WAIT).unwrap();
    let r0 = run_ios(&hs[0], &b, vec![IoReq::read(1 << 20, 64 << 10)], WAIT).unwrap();
    assert!(r1[0].status.is_ok() && r1[0].data == a);
    assert!(r0[0].status.is_ok() && r0[0].data == c);
}

#[test]
fn unaligned_or_out_of_range_io_fails_einval_without_touching_the_file() {
    let path = TempPath::file("uring-inval", FILE_BYTES).unwrap();
    let t = target(1);
    let b = uring(&t, "u0", &path);
    let bs = b.block_size() as u64;
    let h = &t.reactors().handles()[0];
    let mut unaligned_len = IoReq::write(0, pattern(5, 100));
    unaligned_len.len_bytes = 100;
    let out = run_ios(
        h,
        &b,
        vec![
            IoReq::write(100, pattern(4, bs as usize)),
            unaligned_len,
            IoReq::write(FILE_BYTES, pattern(6, bs as usize)),
            IoReq::write(FILE_BYTES - bs, pattern(7, 2 * bs as usize)),
            IoReq::read(bs / 2, bs),
            IoReq::other(IoKind::Unmap, 1, bs),
        ],
        WAIT,
    )
    .unwrap();
    assert_eq!(statuses(&out), vec![IoStatus::Failed(libc::EINVAL); 6]);
    let on_disk = std::fs::read(&path.0).unwrap();
    assert_eq!(on_disk.len() as u64, FILE_BYTES);
    assert!(on_disk.iter().all(|&x| x == 0), "file untouched");
}

#[test]
fn flush_unmap_and_write_zeroes_succeed_on_a_file() {
    let path = TempPath::file("uring-ctl", FILE_BYTES).unwrap();
    let t = target(1);
    let b = uring(&t, "u0", &path);
    let h = &t.reactors().handles()[0];
    let data = pattern(20, 256 << 10);
    let out = run_ios(
        h,
        &b,
        vec![
            IoReq::write(0, data.clone()),
            IoReq::write(1 << 20, data.clone()),
        ],
        WAIT,
    )
    .unwrap();
    assert_eq!(statuses(&out), vec![IoStatus::Success; 2]);
    let out = run_ios(
        h,
        &b,
        vec![
            IoReq::other(IoKind::Flush, 0, 0),
            IoReq::other(IoKind::Unmap, 0, 256 << 10),
            IoReq::other(IoKind::WriteZeroes, 1 << 20, 128 << 10),
        ],
        WAIT,
    )
    .unwrap();
    assert_eq!(statuses(&out), vec![IoStatus::Success; 3]);
    let out = run_ios(
        h,
        &b,
        vec![IoReq::read(0, 256 << 10), IoReq::read(1 << 20, 256 << 10)],
        WAIT,
    )
    .unwrap();
    assert_eq!(statuses(&out), vec![IoStatus::Success; 2]);
    assert!(
        out[0].data.iter().all(|&x| x == 0) || out[0].data == data,
        "unmapped range reads zeroes or the old data"
    );
    assert!(
        out[1].data[..128 << 10].iter().all(|&x| x == 0),
        "write-zeroes range reads zeroes"
    );
    assert!(
        out[1].data[128 << 10..] == data[128 << 10..],
        "data after the zeroed range is intact"
    );
}

#[test]
fn reading_past_a_shrunken_file_fails_instead_of_hanging() {
    let path = TempPath::file("uring-eof", 1 << 20).unwrap();
    let t = target(1);
    let b = uring(&t, "u0", &path);
    let h = &t.reactors().handles()[0];
    // The file shrinks behind the bdev's back: reads past the new end get 0 bytes.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path.0)
        .unwrap()
        .set_len(512 << 10)
        .unwrap();
    let out = run_ios(
        h,
        &b,
        vec![
            IoReq::read(768 << 10, 4096),
            // Straddles the end: a short read, then nothing more.
            IoReq::read((512 << 10) - 4096, 8192),
            IoReq::read(0, 4096),
        ],
        WAIT,
    )
    .expect("completes within the deadline");
    assert_eq!(
        statuses(&out),
        vec![
            IoStatus::Failed(libc::EIO),
            IoStatus::Failed(libc::EIO),
            IoStatus::Success
        ]
    );
}

#[test]
fn deep_queue_of_256_ios_from_one_reactor_keeps_every_block_right() {
    let path = TempPath::file("uring-qd", FILE_BYTES).unwrap();
    let t = target(1);
    let b = uring(&t, "u0", &path);
    let h = &t.reactors().handles()[0];
    const N: u64 = 256;
    let writes: Vec<IoReq> = (0..N)
        .map(|i| {
            let req = IoReq::write(i * 8192, pattern(100 + i, 4096));
            if i % 4 == 0 {
                req.heap()
            } else {
                req
            }
        })
        .collect();
    let out = run_ios(h, &b, writes, WAIT).unwrap();
    assert!(out.iter().all(|o| o.status.is_ok()), "{:?}", statuses(&out));
    // Reads in reverse order plus a reset, all in flight together.
    let mut reads: Vec<IoReq> = (0..N).rev().map(|i| IoReq::read(i * 8192, 4096)).collect();
    reads.push(IoReq::other(IoKind::Reset, 0, 0));
    let out = run_ios(h, &b, reads, WAIT).unwrap();
    assert!(out.iter().all(|o| o.status.is_ok()), "{:?}", statuses(&out));
    for (k, i) in (0..N).rev().enumerate() {
        assert!(out[k].data == pattern(100 + i, 4096), "block {i}");
    }
}

#[test]
fn more_ios_than_channel_slots_wait_their_turn_and_all_complete() {
    use plexd_target::bdev::uring::CHANNEL_SLOTS;
    let path = TempPath::file("uring-slots", FILE_BYTES).unwrap();
    let t = target(1);
    let b = uring(&t, "u0", &path);
    let h = &t.reactors().handles()[0];
    let n = (CHANNEL_SLOTS + CHANNEL_SLOTS / 2) as u64;
    assert!(n * 4096 <= FILE_BYTES);
    let req = |i: u64, r: IoReq| if i.is_multiple_of(3) { r } else { r.heap() };
    let mut writes: Vec<IoReq> = (0..n)
        .map(|i| req(i, IoReq::write(i * 4096, pattern(1000 + i, 4096))))
        .collect();
    // A reset in the middle waits for the writes before it, not for those after.
    writes.insert(CHANNEL_SLOTS, IoReq::other(IoKind::Reset, 0, 0));
    let out = run_ios(h, &b, writes, WAIT).unwrap();
    assert!(out.iter().all(|o| o.status.is_ok()), "{:?}", statuses(&out));
    let reads: Vec<IoReq> = (0..n)
        .map(|i| req(i, IoReq::read(i * 4096, 4096)))
        .collect();
    let out = run_ios(h, &b, reads, WAIT).unwrap();
    for (i, o) in out.iter().enumerate() {
        assert!(o.status.is_ok(), "read {i}: {:?}", o.status);
        assert!(o.data == pattern(1000 + i as u64, 4096), "block {i}");
    }
}

#[test]
fn io_past_the_waiting_bound_fails_with_eagain_and_the_rest_completes() {
    use plexd_target::bdev::uring::{CHANNEL_SLOTS, MAX_WAITING_IOS};
    use plexd_target::bdev::RETRY_ERRNO;
    let path = TempPath::file("uring-waiting", FILE_BYTES).unwrap();
    let t = target(1);
    let u = UringBdev::open("u0", &path.0, &UringOpts::default()).expect("open uring bdev");
    t.add_bdev(u.clone()).unwrap();
    if u.info().detail.contains("inline") {
        // A file on a memory file system is read inline: nothing ever waits.
        eprintln!("skipped: the temporary directory is a memory file system");
        return;
    }
    let b = t.bdev("u0").unwrap();
    let h = &t.reactors().handles()[0];
    // One submitting call: CHANNEL_SLOTS go to the kernel, MAX_WAITING_IOS wait, the
    // rest is refused.
    const OVER: usize = 3;
    let n = CHANNEL_SLOTS + MAX_WAITING_IOS + OVER;
    let blocks = FILE_BYTES / 512;
    let reads: Vec<IoReq> = (0..n as u64)
        .map(|i| IoReq::read((i % blocks) * 512, 512).heap())
        .collect();
    let out = run_ios(h, &b, reads, WAIT).unwrap();
    let refused: Vec<usize> = (0..n)
        .filter(|&i| out[i].status == IoStatus::Failed(RETRY_ERRNO))
        .collect();
    assert_eq!(refused, (n - OVER..n).collect::<Vec<_>>());
    assert_eq!(
        out.iter().filter(|o| o.status.is_ok()).count(),
        n - OVER,
        "everything within the bound completed"
    );
    assert_eq!(u.refused(), OVER as u64);
    // The channel drained: new I/O is taken again.
    let out = run_ios(h, &b, vec![IoReq::read(0, 4096)], WAIT).unwrap();
    assert!(out[0].status.is_ok());
}

#[test]
fn dev_shm_works_direct_or_buffered_and_zeroes_fall_back_to_writes() {
    let dir = std::path::Path::new("/dev/shm");
    if !dir.is_dir() {
        eprintln!("no /dev/shm; skipped");
        return;
    }
    let path = TempPath(dir.join(format!("plexd-uring-shm-{}", std::process::id())));
    std::fs::File::create(&path.0)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let t = target(1);
    let b = UringBdev::open("shm0", &path.0, &UringOpts::default()).unwrap();
    eprintln!(
        "/dev/shm: O_DIRECT {}",
        if b.is_direct() {
            "accepted"
        } else {
            "refused (buffered)"
        }
    );
    t.add_bdev(b).unwrap();
    let b = t.bdev("shm0").unwrap();
    let h = &t.reactors().handles()[0];
    let data = pattern(30, 512 << 10);
    let out = run_ios(h, &b, vec![IoReq::write(0, data.clone())], WAIT).unwrap();
    assert!(out[0].status.is_ok());
    // tmpfs has no ZERO_RANGE: the bdev writes zeroes instead (several pieces).
    let out = run_ios(
        h,
        &b,
        vec![IoReq::other(IoKind::WriteZeroes, 4096, 300 << 10)],
        WAIT,
    )
    .unwrap();
    assert_eq!(out[0].status, IoStatus::Success);
    let out = run_ios(h, &b, vec![IoReq::read(0, 512 << 10)], WAIT).unwrap();
    assert!(out[0].status.is_ok());
    let got = &out[0].data;
    assert!(got[..4096] == data[..4096]);
    assert!(got[4096..4096 + (300 << 10)].iter().all(|&x| x == 0));
    assert!(got[4096 + (300 << 10)..] == data[4096 + (300 << 10)..]);
    let detail = b.info().detail;
    if !detail.contains("O_DIRECT)") {
        // Buffered on tmpfs: reads and writes are done inline, not by io_uring workers.
        assert!(detail.contains("inline"), "{detail}");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path.0)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let out = run_ios(
            h,
            &b,
            vec![IoReq::read((1 << 20) + 4096, 4096), IoReq::read(0, 4096)],
            WAIT,
        )
        .unwrap();
        assert_eq!(
            statuses(&out),
            vec![IoStatus::Failed(libc::EIO), IoStatus::Success],
            "a read past the shrunken end fails"
        );
    }
}

#[test]
fn reset_on_an_idle_channel_completes_at_once_and_later_io_still_works() {
    let path = TempPath::file("uring-reset", 1 << 20).unwrap();
    let t = target(1);
    let b = uring(&t, "u0", &path);
    let h = &t.reactors().handles()[0];
    let out = run_ios(
        h,
        &b,
        vec![
            IoReq::other(IoKind::Reset, 0, 0),
            IoReq::write(0, pattern(50, 4096)),
            IoReq::other(IoKind::Reset, 0, 0),
            IoReq::read(8192, 4096),
            IoReq::other(IoKind::Reset, 0, 0),
        ],
        WAIT,
    )
    .unwrap();
    assert_eq!(statuses(&out), vec![IoStatus::Success; 5]);
}

/// Closed-loop random reads: every completion submits the next read until the deadline.
mod bench {
    use std::cell::{Cell, RefCell};
    use std::rc::{Rc, Weak};
    use std::sync::mpsc;
    use std::time::Instant;

    use plexd_target::bdev::{BdevChannel, BdevIo, IoCallback, IoDone, IoKind};
    use plexd_target::buf::PoolBuf;
    use plexd_target::reactor::Reactor;

    pub struct RandRead {
        pub me: Weak<RandRead>,
        pub reactor: Rc<Reactor>,
        pub ch: Rc<dyn BdevChannel>,
        pub bufs: RefCell<Vec<PoolBuf>>,
        pub blocks: u64,
        pub block_bytes: u64,
        pub rng: Cell<u64>,
        pub deadline: Instant,
        pub done: Cell<u64>,
        pub failed: Cell<u64>,
        pub in_flight: Cell<usize>,
        pub tx: RefCell<Option<mpsc::Sender<(u64, u64)>>>,
    }

    impl RandRead {
        pub fn submit(&self, slot: usize) {
            let mut x = self.rng.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.rng.set(x);
            let Some(me) = self.me.upgrade() else { return };
            let buf = self.bufs.borrow()[slot].io();
            self.ch.submit(BdevIo {
                kind: IoKind::Read,
                offset_bytes: (x % self.blocks) * self.block_bytes,
                len_bytes: self.block_bytes,
                buf,
                cb: IoCallback::new(me as Rc<dyn IoDone>, slot as u64),
            });
        }
    }

    impl IoDone for RandRead {
        fn io_done(&self, tag: u64, status: plexd_target::bdev::IoStatus) {
            self.done.set(self.done.get() + 1);
            if !status.is_ok() {
                self.failed.set(self.failed.get() + 1);
            }
            if Instant::now() < self.deadline {
                self.submit(tag as usize);
                return;
            }
            self.in_flight.set(self.in_flight.get() - 1);
            if self.in_flight.get() == 0 {
                for b in self.bufs.borrow_mut().drain(..) {
                    self.reactor.bufs().put(b);
                }
                if let Some(tx) = self.tx.borrow_mut().take() {
                    let _ = tx.send((self.done.get(), self.failed.get()));
                }
            }
        }
    }
}

/// A measurement, not a test: `cargo test --release -p plexd-target --test bdev_uring
/// -- --ignored --nocapture`. Prints 4 KiB random-read IOPS at queue depth 32 on one
/// reactor against a 1 GiB file in /dev/shm (compare with fio's io_uring engine).
#[test]
#[ignore]
fn measure_uring_randread_4k_qd32_dev_shm() {
    use std::cell::{Cell, RefCell};
    use std::time::Instant;
    const QD: usize = 32;
    const SECS: u64 = 5;
    let path = TempPath(std::path::PathBuf::from(format!(
        "/dev/shm/plexd-uring-bench-{}",
        std::process::id()
    )));
    {
        // Fill it so reads hit real pages, as fio's layout step does.
        use std::io::Write;
        let mut f = std::fs::File::create(&path.0).unwrap();
        let chunk = pattern(1, 1 << 20);
        for _ in 0..1024 {
            f.write_all(&chunk).unwrap();
        }
    }
    let t = target(1);
    let b = uring(&t, "u0", &path);
    let (tx, rx) = std::sync::mpsc::channel();
    let bdev = b.clone();
    let start = Instant::now();
    t.reactors().handles()[0]
        .call_blocking(move |r| {
            let ch = r.channel(&bdev).unwrap();
            let bufs = (0..QD).map(|_| r.bufs().try_get(4096).unwrap()).collect();
            let job = std::rc::Rc::new_cyclic(|me| bench::RandRead {
                me: me.clone(),
                reactor: r.clone(),
                ch,
                bufs: RefCell::new(bufs),
                blocks: bdev.size_bytes() / 4096,
                block_bytes: 4096,
                rng: Cell::new(0x2545_F491_4F6C_DD1D),
                deadline: Instant::now() + Duration::from_secs(SECS),
                done: Cell::new(0),
                failed: Cell::new(0),
                in_flight: Cell::new(QD),
                tx: RefCell::new(Some(tx)),
            });
            for slot in 0..QD {
                job.submit(slot);
            }
        })
        .unwrap();
    let (done, failed) = rx.recv_timeout(Duration::from_secs(SECS + 30)).unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!(
        "uring bdev 4k randread qd{QD} 1 reactor /dev/shm: {:.0} IOPS ({done} in {secs:.2}s, {failed} failed, O_DIRECT={})",
        done as f64 / secs,
        t.bdev("u0").unwrap().info().detail.contains("O_DIRECT")
    );
    assert_eq!(failed, 0);
}

/// Manual check of the block-device path (BLKSSZGET, BLKGETSIZE64, fallocate on a
/// device): `PLEXD_TEST_BLOCKDEV=/dev/loopN cargo test -p plexd-target --test
/// bdev_uring -- --ignored block_device`. Overwrites the start of the device.
#[test]
#[ignore]
fn block_device_round_trip_when_one_is_given() {
    let Ok(dev) = std::env::var("PLEXD_TEST_BLOCKDEV") else {
        eprintln!("PLEXD_TEST_BLOCKDEV not set; skipped");
        return;
    };
    let t = target(1);
    let u = UringBdev::open("blk0", std::path::Path::new(&dev), &UringOpts::default()).unwrap();
    eprintln!("{:?}", u.info());
    assert!(u.info().detail.contains("block device"));
    t.add_bdev(u).unwrap();
    let b = t.bdev("blk0").unwrap();
    let h = &t.reactors().handles()[0];
    let data = pattern(77, 128 << 10);
    let out = run_ios(
        h,
        &b,
        vec![
            IoReq::write(0, data.clone()),
            IoReq::write(1 << 20, data.clone()),
        ],
        WAIT,
    )
    .unwrap();
    assert_eq!(statuses(&out), vec![IoStatus::Success; 2]);
    let out = run_ios(
        h,
        &b,
        vec![
            IoReq::other(IoKind::Flush, 0, 0),
            IoReq::other(IoKind::WriteZeroes, 1 << 20, 64 << 10),
            IoReq::other(IoKind::Unmap, 2 << 20, 64 << 10),
        ],
        WAIT,
    )
    .unwrap();
    assert_eq!(statuses(&out), vec![IoStatus::Success; 3]);
    let out = run_ios(
        h,
        &b,
        vec![IoReq::read(0, 128 << 10), IoReq::read(1 << 20, 128 << 10)],
        WAIT,
    )
    .unwrap();
    assert!(out[0].data == data);
    assert!(out[1].data[..64 << 10].iter().all(|&x| x == 0));
    assert!(out[1].data[64 << 10..] == data[64 << 10..]);
}
