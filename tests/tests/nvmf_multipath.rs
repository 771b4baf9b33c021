//! Linux native NVMe multipath over a cluster (issue 9): three nodes in network
//! namespaces ([`ClusterOpts::netns`]) export one shared 2-way mirrored volume over
//! NVMe/TCP (`plexctl export nvmf`); the test VM (ci/vm: Debian's kernel under qemu,
//! with nvme-cli and fio) sits on the nodes' bridge through a tap device, connects to
//! the master and to one slave, and must see one namespace with two paths, the
//! master's optimized and the slave's non-optimized (ANA). fio writes with crc32c
//! verification on the multipath device; once writes run (the VM prints a marker on
//! its console) the test kill -9s the plexd and plexd-target of the master (first
//! test) or of the slave (second test). fio must end with its verification passing
//! and no error, the VM's dmesg must show the dead path's controller recovering (the
//! path change) and no I/O error, the survivors must serve the volume, and the
//! surviving path must be optimized (after the master's death: the new master's ANA
//! change notice). Against the target before the lease's ANA notices (the commit
//! adding `Target::watch_lease`), the first test hangs: the new master's path stays
//! inaccessible in the host, fio's I/O stays queued and the VM is killed at its
//! deadline.
//!
//! Needs root (namespaces, tap), `ip`/`nft`/`tc` and qemu-system-x86_64 (ci/setup);
//! the first run downloads the VM's packages (ci/vm/fetch, cached in build/vm/).
//! Every process (the nodes', qemu) is SIGKILLed and reaped on drop, and the
//! namespaces (with the tap) are deleted after, also when the test fails.
//! `PLEXD_VM_VERBOSE=1` prints the VM's console.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use plexd_tests::cluster::NETNS_NVMF_PORT;
use plexd_tests::netns::Netns;
use plexd_tests::proc::{run_bounded, Proc, Spec};
use plexd_tests::wait::wait_until;
use plexd_tests::{Cluster, ClusterOpts};

/// Building the image (cached; the first run downloads about 150 MB of packages).
const IMAGE_DEADLINE: Duration = Duration::from_secs(600);
/// The whole VM run (boot, connect, fio before and after the failover, dmesg);
/// qemu is killed after it. Under TCG on 2 shared cores it takes about 90 s.
const VM_DEADLINE: Duration = Duration::from_secs(300);
/// From the VM's start to its marker that I/O runs on the multipath device.
const IO_RUNNING_DEADLINE: Duration = Duration::from_secs(200);
/// How long the exports get to appear on every node.
const SERVE_TIMEOUT: Duration = Duration::from_secs(20);
/// The VM's tap device in the bridge's namespace.
const TAP: &str = "tapvm";
/// Lines of the console printed on failure.
const TAIL_LINES: usize = 80;
/// Console lines saying I/O failed up to the file system or application (the
/// multipath layer must have retried on the other path instead).
const IO_ERRORS: [&str; 4] = [
    "i/o error",
    "buffer i/o",
    "critical medium error",
    "blk_update_request",
];

/// The VM's script (busybox sh); every step prints `PLEXD-RESULT <step> rc=<N>`, every
/// command is bounded by `timeout` or a counted loop. Connects to @A1@ (the master)
/// and @A2@ (a slave) with a short reconnect delay, checks one namespace device and
/// two path devices, prints each path (`PLEXD-PATH <path> <controller address>
/// <controller state> <ANA state>`), starts fio (rate-limited 16 KiB random writes
/// over 48 MiB from offset 8 MiB, then their crc32c verification) in the background,
/// prints `PLEXD-IO-RUNNING rc=0` once 2 MiB went to the paths (rc=1: not within
/// 60 s), waits for fio, then
/// waits (bounded) for the path to @SURV@ (the node left alive) to be optimized and
/// prints the paths again.
const SCRIPT: &str = r#"
A1=@A1@; A2=@A2@; SURV=@SURV@; S=@PORT@; NQN=@NQN@
res() { echo "PLEXD-RESULT $*"; }
paths() {
  for p in /sys/block/nvme*c*n*; do
    [ -e "$p" ] || continue
    c=${p##*/}; c=${c%n*}; c=nvme${c#nvme*c}
    a=$(cat /sys/class/nvme/$c/address 2>/dev/null | tr ',' ' ' | sed -n 's/.*traddr=\([^ ]*\).*/\1/p')
    echo "PLEXD-PATH $1 ${p##*/} $a $(cat /sys/class/nvme/$c/state) $(cat $p/ana_state)"
  done
}
n=0
for a in $A1 $A2; do
  n=$((n+1)); rc=1
  for i in $(seq 1 10); do
    timeout 60 nvme connect -t tcp -a $a -s $S -n $NQN --reconnect-delay=5 --ctrl-loss-tmo=120 && { rc=0; break; }
    sleep 1
  done
  res connect-$n rc=$rc
done
DEV=""; np=0
for i in $(seq 1 60); do
  DEV=""; nd=0; np=0
  for d in /sys/block/nvme*; do
    [ -e "$d" ] || continue
    case "${d##*/}" in *c*) np=$((np+1)) ;; *) nd=$((nd+1)); DEV=/dev/${d##*/} ;; esac
  done
  [ $nd = 1 ] && [ $np = 2 ] && [ -b "$DEV" ] && break
  sleep 0.5
done
echo "namespace devices $nd, path devices $np, device $DEV"
rc=0; [ "$nd" = 1 ] && [ "$np" = 2 ] || rc=1; res one-namespace-two-paths rc=$rc
nvme list-subsys 2>&1
paths before
timeout 250 fio --name=mp --filename=$DEV --direct=1 --ioengine=libaio --rw=randwrite \
  --bs=16k --iodepth=8 --offset=8m --size=48m --rate=,3m --randrepeat=0 \
  --verify=crc32c --do_verify=1 --verify_fatal=1 >/tmp/fio.out 2>&1 &
fio=$!
# Sectors written to the paths (the multipath device itself counts none).
written() { cat /sys/block/nvme*/stat | awk '{s += $7} END {print s}'; }
w0=$(written)
rc=1
for i in $(seq 1 120); do
  [ $(($(written) - w0)) -ge 4096 ] && { rc=0; break; }
  sleep 0.5
done
echo "PLEXD-IO-RUNNING rc=$rc"
wait $fio; rc=$?
grep -E 'err=|READ: bw|WRITE: bw|verify|fio:' /tmp/fio.out | sed "s/^/fio: /"
res fio rc=$rc
rc=1
for i in $(seq 1 60); do
  for p in /sys/block/nvme*c*n*; do
    c=${p##*/}; c=${c%n*}; c=nvme${c#nvme*c}
    grep -q "traddr=$SURV," /sys/class/nvme/$c/address && grep -q '^optimized' $p/ana_state && rc=0
  done
  [ $rc = 0 ] && break
  sleep 0.5
done
res survivor-optimized rc=$rc
paths after
echo PLEXD-DMESG-BEGIN; dmesg; echo PLEXD-DMESG-END
"#;

/// The steps SCRIPT must report with rc=0, in order.
const STEPS: [&str; 5] = [
    "connect-1",
    "connect-2",
    "one-namespace-two-paths",
    "fio",
    "survivor-optimized",
];

fn read(path: &Path) -> String {
    String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `PLEXD-PATH <when> ...` lines: (path, address, controller state, ANA state).
fn paths<'a>(out: &'a str, when: &str) -> Vec<(&'a str, &'a str, &'a str, &'a str)> {
    let prefix = format!("PLEXD-PATH {when} ");
    out.lines()
        .filter_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 4).then(|| (f[0], f[1], f[2], f[3]))
        })
        .collect()
}

/// Whose processes the test kills while fio runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Victim {
    /// The master, whose path is optimized: the slave's path must carry the I/O
    /// and turn optimized when its node takes over.
    Master,
    /// The slave, whose path is non-optimized: the master's path stays optimized.
    Slave,
}

#[test]
fn linux_multipath_keeps_verified_io_going_when_the_optimized_node_dies() {
    multipath_survives(Victim::Master);
}

#[test]
fn linux_multipath_keeps_verified_io_going_when_the_non_optimized_node_dies() {
    multipath_survives(Victim::Slave);
}

/// One VM at a time: two under TCG on the CI's cores would only make both slow.
static VM_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn multipath_survives(victim: Victim) {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        plexd_tests::netns::find_program("qemu-system-x86_64").is_some(),
        "nvmf_multipath needs qemu-system-x86_64: run ci/setup (Debian package qemu-system-x86)"
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let vm_dir = repo.join("ci").join("vm");
    let out = run_bounded(&mut Command::new(vm_dir.join("image")), IMAGE_DEADLINE)
        .unwrap_or_else(|e| panic!("ci/vm/image: {e}"));
    assert!(
        out.status.success(),
        "ci/vm/image failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut c = Cluster::start(
        3,
        ClusterOpts {
            netns: true,
            ..ClusterOpts::default()
        },
    );
    let m = c.master();
    let s = (m + 1) % 3;
    c.shared_mirror(m, "dg1", "vol1", "64M");
    c.ctl_ok(s, "export nvmf dg1 vol1");
    let nqn = c.export_name("dg1", "vol1", "nvmf");
    for i in 0..3 {
        c.wait_nvmf_subsystem(i, &nqn, SERVE_TIMEOUT);
    }

    // The VM on the nodes' bridge (the tap goes with the bridge's namespace).
    let net: &Netns = c.net();
    net.attach_tap(TAP);
    let vm_ip = format!("{}/{}", net.guest_addr(0), Netns::PREFIX_LEN);
    let (a1, a2) = (net.addr(m), net.addr(s));
    let (dead, alive) = match victim {
        Victim::Master => (m, s),
        Victim::Slave => (s, m),
    };
    let (dead_addr, alive_addr) = (net.addr(dead), net.addr(alive));
    let script = SCRIPT
        .replace("@A1@", &a1)
        .replace("@A2@", &a2)
        .replace("@SURV@", &alive_addr)
        .replace("@PORT@", &NETNS_NVMF_PORT.to_string())
        .replace("@NQN@", &nqn);
    let script_path = c.dir.join("vm.sh");
    std::fs::write(&script_path, script).unwrap();
    let console = c.dir.join("vm-console.log");
    let started = Instant::now();
    let mut vm = Proc::spawn(&Spec {
        name: "qemu".into(),
        exe: net.ip_program().to_path_buf(),
        args: vec![
            "netns".into(),
            "exec".into(),
            net.bridge_ns().into(),
            vm_dir.join("boot").display().to_string(),
            "--tap".into(),
            TAP.into(),
            "--ip".into(),
            vm_ip,
            "--timeout".into(),
            VM_DEADLINE.as_secs().to_string(),
            script_path.display().to_string(),
        ],
        env: Vec::new(),
        cwd: c.dir.clone(),
        log: console.clone(),
        hide: Vec::new(),
        hide_with: c.dir.join("empty"),
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let context = |out: &str| {
        format!(
            "\n--- VM console (last {TAIL_LINES} lines) ---\n{}",
            tail(out, TAIL_LINES)
        )
    };

    // I/O runs on the multipath device: kill -9 the master's processes.
    wait_until(
        "the VM's PLEXD-IO-RUNNING marker",
        IO_RUNNING_DEADLINE,
        || {
            let out = read(&console);
            if out.contains("PLEXD-IO-RUNNING rc=0") {
                return Ok(());
            }
            assert!(
                !out.contains("PLEXD-IO-RUNNING"),
                "fio wrote nothing to the multipath device{}",
                context(&out)
            );
            match vm.try_status() {
                Some(st) => panic!(
                    "the VM ended ({}) before I/O ran{}",
                    Proc::describe(Some(st)),
                    context(&out)
                ),
                None => Err("not yet".to_string()),
            }
        },
    );
    let marker_at = started.elapsed();
    c.kill_node(dead);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != dead).collect();
    let nm = c.wait_joined(&survivors);
    c.wait_served(alive, "dg1", "vol1");

    let status = vm.wait_exit(VM_DEADLINE + Duration::from_secs(10));
    let elapsed = started.elapsed();
    drop(vm);
    let out = read(&console);
    if std::env::var_os("PLEXD_VM_VERBOSE").is_some() {
        eprintln!("{out}");
    }
    assert!(
        status.is_some() && out.contains("PLEXD-VM-END"),
        "the VM did not finish within {VM_DEADLINE:?} ({}){}",
        Proc::describe(status),
        context(&out)
    );
    let results: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("PLEXD-RESULT "))
        .filter_map(|l| l.trim().split_once(' '))
        .collect();
    let names: Vec<&str> = results.iter().map(|r| r.0).collect();
    assert_eq!(names, STEPS, "steps reported by the VM{}", context(&out));
    for (step, rc) in &results {
        assert_eq!(*rc, "rc=0", "{step} failed in the VM{}", context(&out));
    }
    assert!(
        out.contains("PLEXD-IO-RUNNING rc=0"),
        "no I/O before the kill{}",
        context(&out)
    );

    // Before: the master's path optimized, the slave's non-optimized, both live.
    let mut before: Vec<(&str, &str)> = paths(&out, "before")
        .iter()
        .map(|p| {
            assert_eq!(p.2, "live", "path {p:?} before the kill{}", context(&out));
            (p.1, p.3)
        })
        .collect();
    before.sort();
    let mut want = vec![(a1.as_str(), "optimized"), (a2.as_str(), "non-optimized")];
    want.sort();
    assert_eq!(before, want, "ANA states before the kill{}", context(&out));
    // After: the dead node's controller is reconnecting, the survivor's is live.
    let after = paths(&out, "after");
    assert_eq!(after.len(), 2, "two paths after the kill{}", context(&out));
    for p in after {
        if p.1 == dead_addr {
            assert!(
                p.2 == "connecting" || p.2 == "resetting",
                "the dead node's path {p:?}{}",
                context(&out)
            );
        } else {
            assert_eq!(
                (p.2, p.3),
                ("live", "optimized"),
                "the survivor's path{}",
                context(&out)
            );
        }
    }

    // The kernel saw the path fail and retried on the other one: the dead path's
    // controller recovers, nothing reaches fio as an I/O error.
    let dmesg = out
        .split("PLEXD-DMESG-BEGIN")
        .nth(1)
        .and_then(|s| s.split("PLEXD-DMESG-END").next())
        .unwrap_or("");
    assert!(
        dmesg.contains("starting error recovery") || dmesg.contains("Reconnecting"),
        "no path failure in the VM's dmesg{}",
        context(&out)
    );
    for l in dmesg.lines() {
        let low = l.to_lowercase();
        for e in IO_ERRORS {
            assert!(
                !low.contains(e),
                "the VM's dmesg shows `{e}`: {l}{}",
                context(&out)
            );
        }
    }
    let fio_lines: Vec<&str> = out.lines().filter(|l| l.starts_with("fio: ")).collect();
    assert!(
        fio_lines.iter().any(|l| l.contains("err= 0")),
        "fio reports no err= 0: {fio_lines:#?}"
    );

    // The survivors serve the volume, the data written before still reads back.
    for &i in &survivors {
        c.wait_served(i, "dg1", "vol1");
    }
    let st = c.status(nm);
    assert_eq!(
        plexd_tests::cluster::members(&st).len(),
        2,
        "two members after the kill: {st}"
    );
    c.check_invariants();
    eprintln!(
        "nvmf_multipath: VM run {:.1} s (I/O running at {:.1} s); {}",
        elapsed.as_secs_f64(),
        marker_at.as_secs_f64(),
        fio_lines.join(" | ")
    );
}
