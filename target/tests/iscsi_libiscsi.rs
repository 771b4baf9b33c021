//! The iSCSI target against libiscsi's tools (Debian package `libiscsi-bin`):
//! discovery, inquiry, capacity, a data round trip and the iscsi-test-cu
//! conformance suite. Every child process is killed and reaped by a guard and
//! every wait has a deadline; only 127.0.0.1 is used.

use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexd_target::bdev::error::{ErrorBdev, FailOn};
use plexd_target::bdev::malloc::MallocBdev;
use plexd_target::frontend::iscsi::{IscsiConfig, IscsiFrontend, LunConfig, TargetNodeConfig};
use plexd_target::reactor::ReactorConfig;
use plexd_target::volume::spec::{PlexKind, PlexSpec, PlexState, SubdiskSpec, VolumeSpec};
use plexd_target::{Target, TargetConfig};

const IQN: &str = "iqn.2026-11.io.plexd:test";

/// A child process that is killed and reaped however the test ends.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `cmd` with a deadline; returns its output (killed at the deadline).
fn run(cmd: &mut Command, deadline: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e} (install libiscsi-bin: ci/setup)"));
    let mut g = ChildGuard(Some(child));
    // Read output on threads so a chatty child never blocks on a full pipe.
    let mut out = g.0.as_mut().unwrap().stdout.take().unwrap();
    let mut err = g.0.as_mut().unwrap().stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = g.0.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > deadline {
            drop(g);
            panic!("{cmd:?} did not finish within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    g.0 = None;
    Output {
        status,
        stdout: to.join().unwrap(),
        stderr: te.join().unwrap(),
    }
}

struct Fixture {
    fe: IscsiFrontend,
    _target: Arc<Target>,
    _dir: std::path::PathBuf,
}

impl Fixture {
    fn start(size_bytes: u64) -> Fixture {
        Fixture::start_with(size_bytes, false)
    }

    /// With `mirror`, the LUN is a two-way mirror whose second plex sits on an
    /// error bdev that fails every write from the start.
    fn start_with(size_bytes: u64, mirror: bool) -> Fixture {
        let _ = env_logger::builder().is_test(true).try_init();
        let target = Target::start(&TargetConfig {
            reactors: ReactorConfig {
                cores: vec![0, 1],
                ..Default::default()
            },
            ..Default::default()
        })
        .unwrap();
        target
            .add_bdev(MallocBdev::new("m0", size_bytes, 512).unwrap())
            .unwrap();
        // The LUN is a volume (a concat plex over the malloc bdev), as exported in
        // production.
        let plex = |name: &str, bdev: &str| PlexSpec {
            name: name.into(),
            kind: PlexKind::Concat,
            columns: vec![vec![SubdiskSpec {
                bdev: bdev.into(),
                offset_bytes: 0,
                len_bytes: size_bytes,
            }]],
            state: PlexState::Active,
        };
        let mut plexes = vec![plex("vol0-01", "m0")];
        if mirror {
            target
                .add_bdev(MallocBdev::new("m1", size_bytes, 512).unwrap())
                .unwrap();
            let e1 = ErrorBdev::new("e1", target.bdev("m1").unwrap());
            e1.injection().fail(FailOn::Writes, 5, None);
            target.add_bdev(e1).unwrap();
            plexes.push(plex("vol0-02", "e1"));
        }
        target
            .create_volume(&VolumeSpec {
                log: None,
                name: "vol0".into(),
                size_bytes,
                plexes,
                read_policy: Default::default(),
                shared: false,
                local_detach: false,
            })
            .unwrap();
        let dir = std::env::temp_dir().join(format!(
            "plexd-iscsi-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        let cfg = IscsiConfig {
            portal: Some("127.0.0.1:0".into()),
            pr_dir: Some(dir.clone()),
            targets: vec![TargetNodeConfig {
                iqn: IQN.into(),
                alias: Some("test".into()),
                luns: vec![LunConfig {
                    lun: 0,
                    bdev: "vol0".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let fe = IscsiFrontend::start(&target, &cfg).unwrap();
        Fixture {
            fe,
            _target: target,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("iscsi://127.0.0.1:{}/{IQN}/0", self.fe.portal().port())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.fe.stop();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn discovery_lists_the_target() {
    let f = Fixture::start(64 << 20);
    let o = run(
        Command::new("iscsi-ls")
            .arg("-s")
            .arg(format!("iscsi://127.0.0.1:{}", f.fe.portal().port())),
        Duration::from_secs(30),
    );
    let t = text(&o);
    assert!(o.status.success(), "iscsi-ls failed: {t}");
    assert!(t.contains(IQN), "target missing from discovery: {t}");
}

#[test]
fn inquiry_and_capacity_over_the_wire() {
    let f = Fixture::start(64 << 20);
    let o = run(
        Command::new("iscsi-inq").arg(f.url()),
        Duration::from_secs(30),
    );
    let t = text(&o);
    assert!(o.status.success(), "iscsi-inq failed: {t}");
    assert!(t.contains("PLEXD"), "vendor missing: {t}");
    let o = run(
        Command::new("iscsi-inq")
            .args(["-e", "1", "-c", "0x83"])
            .arg(f.url()),
        Duration::from_secs(30),
    );
    assert!(o.status.success(), "iscsi-inq vpd 83 failed: {}", text(&o));
    let o = run(
        Command::new("iscsi-readcapacity16").arg(f.url()),
        Duration::from_secs(30),
    );
    let t = text(&o);
    assert!(o.status.success(), "readcapacity16 failed: {t}");
    assert!(
        t.contains(&format!("{}", (64u64 << 20) / 512 - 1)) || t.contains("131071"),
        "{t}"
    );
    assert_eq!(f.fe.sessions().len(), 0, "sessions are gone after logout");
}

/// Counts from iscsi-test-cu's CUnit summary.
#[derive(Debug, Default)]
struct CuSummary {
    total: u32,
    passed: u32,
    failed: u32,
    skipped: u32,
}

fn parse_cu(out: &str) -> CuSummary {
    let mut s = CuSummary::default();
    for line in out.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        // "               tests    230    230    221      0        0"
        if w.first() == Some(&"tests") && w.len() >= 5 {
            s.total = w[1].parse().unwrap_or(0);
            s.passed = w[3].parse().unwrap_or(0);
            s.failed = w[4].parse().unwrap_or(0);
        }
    }
    // A test that logs [SKIPPED] still counts as passed in CUnit; count them apart,
    // by suite and test name (test names repeat across suites).
    let mut suite = String::new();
    let mut current = String::new();
    let mut skipped_tests = std::collections::BTreeSet::new();
    for line in out.lines() {
        let l = line.trim();
        if let Some(rest) = l.strip_prefix("Suite: ") {
            suite = rest.trim().to_string();
        }
        if let Some(rest) = l.strip_prefix("Test: ") {
            current = format!("{suite}.{}", rest.split_whitespace().next().unwrap_or(""));
        }
        if l.contains("[SKIPPED]") && !current.is_empty() {
            skipped_tests.insert(current.clone());
        }
    }
    s.skipped = skipped_tests.len() as u32;
    s.passed = s.passed.saturating_sub(s.skipped);
    s
}

#[test]
fn libiscsi_conformance_suite_passes() {
    let f = Fixture::start(256 << 20);
    let url = f.url();
    let start = Instant::now();
    let o = run(
        Command::new("iscsi-test-cu")
            .args(["-d", "-S", "-t"])
            .arg(std::env::var("PLEXD_ISCSI_CU_TESTS").unwrap_or_else(|_| "ALL".into()))
            .arg(&url)
            .arg(&url),
        Duration::from_secs(600),
    );
    let elapsed = start.elapsed();
    let t = text(&o);
    if let Ok(p) = std::env::var("PLEXD_ISCSI_CU_LOG") {
        let _ = std::fs::write(p, &t);
    }
    let s = parse_cu(&t);
    eprintln!(
        "iscsi-test-cu: {} tests, {} passed, {} failed, {} skipped in {:.1}s",
        s.total,
        s.passed,
        s.failed,
        s.skipped,
        elapsed.as_secs_f64()
    );
    let failures: Vec<&str> = t
        .lines()
        .filter(|l| l.contains("[FAILED]"))
        .take(40)
        .collect();
    assert!(
        s.total > 0,
        "no summary from iscsi-test-cu:\n{}",
        &t[t.len().saturating_sub(4000)..]
    );
    assert_eq!(
        s.failed,
        0,
        "iscsi-test-cu failures:\n{}",
        failures.join("\n")
    );
    if std::env::var("PLEXD_ISCSI_CU_TESTS").is_err() {
        // The acceptance bar of the iSCSI issue (tgt: 162 passed on this suite).
        // Its time is printed above, not asserted (no speed in tests): `run`
        // bounds it at 600 s so a hang fails instead of stalling CI.
        assert!(s.passed >= 190, "only {} tests passed: {s:?}", s.passed);
    }
}

#[test]
fn data_survives_a_mirror_with_a_failing_plex_under_libiscsi() {
    // Suites that write patterns and read them back (COMPARE AND WRITE compares
    // the medium against what was written, ORWRITE and WRITE SAME read back).
    let f = Fixture::start_with(64 << 20, true);
    let url = f.url();
    for suite in [
        "ALL.CompareAndWrite",
        "ALL.OrWrite",
        "ALL.WriteSame10",
        "ALL.Write16",
    ] {
        let o = run(
            Command::new("iscsi-test-cu")
                .args(["-d", "-t", suite])
                .arg(&url),
            Duration::from_secs(120),
        );
        let t = text(&o);
        let s = parse_cu(&t);
        assert!(s.total > 0, "{suite}: no summary:\n{t}");
        assert_eq!(s.failed, 0, "{suite} through the degraded mirror:\n{t}");
        assert!(s.passed > 0, "{suite}: nothing ran: {s:?}");
    }
}
