//! plexperf's NVMe/TCP initiator (`plexperf --nvmf`) against an in-process target
//! on 127.0.0.1: a verify run (4 KiB in-capsule writes, then 64 KiB writes through
//! R2T/H2CData with header and data digests, two queue pairs; 1 MiB writes in
//! eight R2Ts) completes I/O with
//! no verify error; a wrong subsystem NQN fails with an error naming the address
//! and the NQN and a non-zero exit. Every plexperf run is bounded (`--time 1`, its
//! own I/O timeouts) and killed by PID if it outlives [`RUN_DEADLINE`].

mod common;

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{nvmf_export, two_reactor_target};
use plexd_target::bdev::malloc::MallocBdev;
use plexd_target::frontend::nvmf::NvmfFrontend;
use plexd_target::Target;

const NQN: &str = "nqn.2026-11.io.plexd:perf";
/// Longest one plexperf run may take (it runs 1 s and drains within its own
/// bounds; this is the backstop).
const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// A child process killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs plexperf with `args`; returns (exit success, stdout, stderr).
fn plexperf(args: &[&str]) -> (bool, String, String) {
    let child = Command::new(env!("CARGO_BIN_EXE_plexperf"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn plexperf");
    let mut c = Reaped(child);
    let deadline = Instant::now() + RUN_DEADLINE;
    let status = loop {
        if let Some(s) = c.0.try_wait().expect("wait plexperf") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "plexperf {args:?} still running after {RUN_DEADLINE:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    c.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    c.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    (status.success(), out, err)
}

fn start() -> (Arc<Target>, NvmfFrontend, u16) {
    let t = two_reactor_target();
    t.add_bdev(MallocBdev::new("m0", 64 << 20, 512).unwrap())
        .unwrap();
    let (fe, port) = nvmf_export(&t, NQN, "m0");
    (t, fe, port)
}

/// Runs a verify job and checks its JSON report: I/O done, none failed, no
/// verify error.
fn verify_run(url: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "--nvmf", url, "--rw", "verify", "--time", "1", "--json", "--cores", "0",
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = plexperf(&args);
    assert!(ok, "plexperf {args:?} failed: {err}\n{out}");
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("plexperf JSON {out:?}: {e}"));
    assert!(v["iops"].as_f64().unwrap() > 0.0, "IOPS in {v}");
    assert!(v["ios"].as_u64().unwrap() > 0, "I/Os in {v}");
    assert_eq!(v["verify_errors"].as_u64(), Some(0), "{v}");
    assert_eq!(v["failed_ios"].as_u64(), Some(0), "{v}");
    v
}

#[test]
fn plexperf_nvmf_verifies_through_capsules_and_r2t_and_names_a_wrong_nqn() {
    let (_t, fe, port) = start();
    let url = format!("tcp://127.0.0.1:{port}/{NQN}");
    // 4 KiB writes fit the target's 8 KiB in-capsule data; one queue pair.
    let v = verify_run(&url, &["--bs", "4k", "--qd", "8"]);
    assert_eq!(v["qpairs"].as_u64(), Some(1));
    // 64 KiB writes go through R2T and H2CData; digests both ways; two queue
    // pairs (two connections, on the target's two reactors).
    let v = verify_run(
        &url,
        &[
            "--bs", "64k", "--qd", "4", "--qpairs", "2", "--digest", "both",
        ],
    );
    assert_eq!(v["qpairs"].as_u64(), Some(2));
    assert_eq!(v["digest"].as_str(), Some("both"));
    // 1 MiB writes: eight 128 KiB R2Ts, all outstanding at once (plexperf's MAXR2T).
    verify_run(&url, &["--bs", "1m", "--qd", "2"]);

    // A subsystem the target does not have: a clear error, a failed exit.
    let bad = format!("tcp://127.0.0.1:{port}/nqn.2026-11.io.plexd:nosuch");
    let (ok, out, err) = plexperf(&["--nvmf", &bad, "--time", "1"]);
    assert!(!ok, "a wrong NQN must fail: {out}");
    assert!(
        err.contains(&bad) && err.contains("subsystem NQN unknown"),
        "error names the address, the NQN and the reason: {err}"
    );
    // Nothing listening: the connection error names the address too.
    drop(fe);
    let (ok, _, err) = plexperf(&["--nvmf", &url, "--time", "1"]);
    assert!(!ok);
    assert!(err.contains(&url) && err.contains("connect"), "{err}");
}

/// Issue 9: plexperf connects with a keep alive timeout and sends a Keep Alive
/// every half of it. A 3 s verify run over a 1 s KATO (the target drops a
/// controller without a Keep Alive for 2 x KATO, 2 s, and with it the I/O
/// queues, which fails the run) completes with no failed I/O; while it runs the
/// target lists plexperf's controller with that KATO. Without the Keep Alives
/// the run fails once the target drops the controller.
#[test]
fn plexperf_nvmf_keeps_its_controller_alive_through_a_run_longer_than_twice_its_kato() {
    let (_t, fe, port) = start();
    let url = format!("tcp://127.0.0.1:{port}/{NQN}");
    let run = {
        let url = url.clone();
        std::thread::spawn(move || {
            plexperf(&[
                "--nvmf",
                &url,
                "--rw",
                "verify",
                "--bs",
                "4k",
                "--qd",
                "4",
                "--time",
                "3",
                "--kato-ms",
                "1000",
                "--json",
                "--cores",
                "0",
            ])
        })
    };
    let deadline = Instant::now() + RUN_DEADLINE;
    let mut seen = None;
    while seen.is_none() && !run.is_finished() && Instant::now() < deadline {
        seen = fe
            .controllers()
            .into_iter()
            .find(|c| c.hostnqn.contains("plexperf"))
            .map(|c| c.kato_ms);
        std::thread::sleep(Duration::from_millis(20));
    }
    let (ok, out, err) = run.join().expect("plexperf thread");
    assert!(ok, "plexperf failed: {err}\n{out}");
    assert_eq!(seen, Some(1000), "plexperf's controller with KATO 1000 ms");
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("plexperf JSON {out:?}: {e}"));
    assert!(v["ios"].as_u64().unwrap() > 0, "I/Os in {v}");
    assert_eq!(v["failed_ios"].as_u64(), Some(0), "{v}");
    assert_eq!(v["verify_errors"].as_u64(), Some(0), "{v}");
    drop(fe);
}
