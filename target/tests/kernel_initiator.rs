//! The iSCSI target against the Linux kernel's initiator (open-iscsi) in a VM
//! (issue 15): Debian bookworm's kernel under qemu (TCG, no KVM needed) boots the
//! initramfs ci/vm/image builds, reaches plexd-target (two reactors) through a tap
//! device in a network namespace made for this test, logs in two sessions and runs fio
//! with verification: a burst of 1 MiB reads at iodepth 64 on one session, then on the
//! other the 1 MiB sequential write at iodepth 1 of issue 15 (direct and through the
//! page cache), random 4 KiB and 1 MiB read/write at iodepth 16 without and with
//! header and data digests, a read-back of the first writes in a later session, and
//! logouts. The VM's dmesg must show no ping timeout, connection error or session
//! recovery. Against the code before the buffer pool fix (71b3c6d) it fails with
//! "ping timeout" in the VM's dmesg.
//!
//! The NVMe/TCP target against the kernel's nvme-tcp host in the same VM (issue 9,
//! `linux_nvme_tcp_host_discovers_connects_and_verifies`): nvme discover, connect,
//! id-ctrl / id-ns / ana-log, a dd pattern compared by sha256, fio verification,
//! disconnect, then the same with header and data digests. Before the NVMe/TCP
//! frontend, plexd-target refuses the `[nvmf]` section (unknown field) and the test
//! fails at start. One VM runs at a time (`VM_LOCK`). `PLEXD_VM_VERBOSE=1` prints the
//! results and keeps the console and target log in /tmp/plexd-vm-*.log.
//!
//! Needs root (network namespace, tap device) and qemu-system-x86_64 (ci/setup); the
//! first run downloads the VM's packages (ci/vm/fetch, cached in build/vm/). Every
//! child (plexd-target, qemu) runs in its own process group, SIGKILLed and reaped on
//! drop; the namespace is deleted on drop; every wait has a deadline.
//! `PLEXD_TARGET_BIN=PATH` runs another plexd-target binary (an older build, a
//! release build) instead of this build's.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

const IQN: &str = "iqn.2026-11.io.plexd:kernel";
/// The target's address on the tap device, inside the test's namespace only
/// (TEST-NET-1, never routed).
const TARGET_IP: &str = "192.0.2.1";
/// The VM's eth0.
const VM_IP: &str = "192.0.2.2/24";
/// The LUN: 256 MiB of RAM.
const LUN_BYTES: u64 = 256 << 20;
/// Building the image; the first run downloads about 150 MB of packages.
const IMAGE_DEADLINE: Duration = Duration::from_secs(600);
/// The target must listen within this.
const TARGET_START_DEADLINE: Duration = Duration::from_secs(30);
/// The whole VM run (boot, login, every fio job, logout, power off); qemu is killed
/// after it. Under TCG on 2 shared cores the run takes about 60 s (115 s with other
/// builds running).
const VM_DEADLINE: Duration = Duration::from_secs(240);
/// Lines of the VM's dmesg and the target's log printed on failure.
const TAIL_LINES: usize = 60;
/// Messages of the kernel initiator that mean the session broke.
const SESSION_TROUBLE: [&str; 4] = [
    "ping timeout",
    "conn error",
    "session recovery",
    "connection error",
];

/// The VM's script (busybox sh). Each step prints `PLEXD-RESULT <step> rc=<N>`; every
/// command is bounded by `timeout`. Two sessions through two open-iscsi interfaces
/// (`default` with queue depth 64, `second`) land on the target's two reactors
/// (connections are handed round robin). Session A runs a burst of 1 MiB reads at
/// iodepth 64, then session B runs the write of issue 15 (`--rw=write --bs=1m
/// --iodepth=1`): before the buffer pool fix (908721e) B's writes stalled, the
/// kernel logged "ping timeout" and "detected conn error" and recovered the session.
/// Then random 4 KiB and 1 MiB read/write at iodepth 16, a logout, a login with
/// CRC32C header and data digests, the same random jobs, a read-back of the first
/// writes and a logout. Regions of the LUN (MiB): w1m 0-64, rr4k-none 64-72,
/// rr1m-none 80-112, rr4k-crc 112-120, rr1m-crc 128-160, w1m-buffered 160-224
/// (through the page cache: writeback keeps many 1 MiB writes in flight); the
/// burst reads 0-64 before anything is written.
const VM_SCRIPT: &str = r#"
P=@PORTAL@; IQN=@IQN@
res() { echo "PLEXD-RESULT $*"; }
disks() { for d in /sys/block/sd*; do [ -e "$d" ] && echo "${d##*/}"; done; }
iscsid; res iscsid rc=$?
iscsiadm -m iface -I second --op new >/dev/null
rc=1
for i in $(seq 1 10); do
  timeout 30 iscsiadm -m discovery -t sendtargets -p $P -I default -I second >/tmp/disc 2>&1 && { rc=0; break; }
  sleep 1
done
cat /tmp/disc; res discovery rc=$rc
# login IFACE DIGEST: logs in, waits for the new disk and sets NEW to /dev/sdX.
login() {
  before=" $(disks | tr '\n' ' ')"
  for k in HeaderDigest DataDigest; do
    iscsiadm -m node -T $IQN -p $P -I $1 -o update -n "node.conn[0].iscsi.$k" -v $2
  done
  # A NOP-Out unanswered for 15 s (default 5 s) is a ping timeout: a stalled
  # connection never answers, a guest descheduled on a loaded host may for seconds.
  iscsiadm -m node -T $IQN -p $P -I $1 -o update -n 'node.conn[0].timeo.noop_out_timeout' -v 15
  timeout 30 iscsiadm -m node -T $IQN -p $P -I $1 --login; res login-$1-$2 rc=$?
  NEW=""
  for i in $(seq 1 40); do
    for d in $(disks); do case "$before" in *" $d "*) ;; *) NEW=/dev/$d ;; esac; done
    [ -n "$NEW" ] && [ -b "$NEW" ] && break; NEW=""; sleep 0.5
  done
  echo "login $1 $2: disk $NEW"
  iscsiadm -m session -P 2 | grep -E 'HeaderDigest|DataDigest' | sed 's/^[ \t]*/PLEXD-DIGEST /'
}
logout() { timeout 30 iscsiadm -m node -T $IQN -p $P --logout; res logout rc=$?;
  for i in $(seq 1 40); do [ -z "$(disks)" ] && break; sleep 0.5; done; }
# job NAME DEV ARGS...: fio with crc32c verification unless ARGS turn it off.
job() {
  name=$1; dev=$2; shift 2
  timeout 120 fio --name=$name --filename=$dev --direct=1 --ioengine=libaio \
    --verify=crc32c --do_verify=1 --verify_fatal=1 "$@" >/tmp/$name.out 2>&1
  rc=$?
  grep -E 'err=|READ: bw|WRITE: bw|verify|fio:' /tmp/$name.out | sed "s/^/$name: /"
  res job-$name rc=$rc
}
iscsiadm -m node -T $IQN -p $P -I default -o update -n node.session.queue_depth -v 64
login default None; A=$NEW
login second None; B=$NEW
job burst $A --rw=randread --bs=1m --iodepth=64 --size=64m --io_size=256m --verify=0
job w1m $B --rw=write --bs=1m --iodepth=1 --size=64m
job w1m-buffered $B --rw=write --bs=1m --iodepth=1 --offset=160m --size=64m --direct=0 --end_fsync=1
job rr4k-none $B --rw=randrw --bs=4k --iodepth=16 --offset=64m --size=8m --randrepeat=0
job rr1m-none $B --rw=randrw --bs=1m --iodepth=16 --offset=80m --size=32m --randrepeat=0
logout
login second CRC32C; B=$NEW
job rr4k-crc $B --rw=randrw --bs=4k --iodepth=16 --offset=112m --size=8m --randrepeat=0
job rr1m-crc $B --rw=randrw --bs=1m --iodepth=16 --offset=128m --size=32m --randrepeat=0
job readback $B --rw=write --bs=1m --iodepth=1 --size=64m --verify_only
job readback-buffered $B --rw=write --bs=1m --iodepth=1 --offset=160m --size=64m --verify_only
logout
echo PLEXD-DMESG-BEGIN; dmesg; echo PLEXD-DMESG-END
"#;

/// The steps the script must report with rc=0.
const STEPS: [&str; 16] = [
    "iscsid",
    "discovery",
    "login-default-None",
    "login-second-None",
    "job-burst",
    "job-w1m",
    "job-w1m-buffered",
    "job-rr4k-none",
    "job-rr1m-none",
    "logout",
    "login-second-CRC32C",
    "job-rr4k-crc",
    "job-rr1m-crc",
    "job-readback",
    "job-readback-buffered",
    "logout",
];

/// A child in its own process group, SIGKILLed (the whole group) and reaped on drop.
struct Group(Option<Child>);

impl Group {
    fn spawn(cmd: &mut Command) -> Group {
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        Group(Some(child))
    }

    /// Waits for the exit within `deadline`; None if it did not exit (then killed).
    fn wait(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let start = Instant::now();
        let c = self.0.as_mut()?;
        while start.elapsed() < deadline {
            if let Some(s) = c.try_wait().expect("try_wait") {
                self.0 = None;
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = killpg(Pid::from_raw(c.id() as i32), Signal::SIGKILL);
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A network namespace with a tap device carrying the target's address; deleted
/// (with the tap) on drop.
struct Netns {
    name: String,
}

const TAP: &str = "tap0";

impl Netns {
    fn create() -> Netns {
        let name = format!("plexd-vm-{}-{}", std::process::id(), nanos() % 1_000_000);
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
        ns.ip(&["addr", "add", &format!("{TARGET_IP}/24"), "dev", TAP]);
        ns.ip(&["link", "set", TAP, "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a);
    }

    /// `ip netns exec NS program args...`
    fn exec(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let o = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run ip {args:?}: {e}"));
    assert!(
        o.status.success(),
        "ip {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn in_path(prog: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        .unwrap_or(false)
}

fn read(path: &Path) -> String {
    let mut s = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut s);
    }
    String::from_utf8_lossy(&s).into_owned()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The test's temp dir: removed on success, kept (and named) on failure.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kernel_initiator: kept {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// What a VM run left: the console (script output and dmesg), the target's log.
struct VmRun {
    out: String,
    dmesg: String,
    target_log: String,
    status: Option<std::process::ExitStatus>,
    elapsed: Duration,
}

impl VmRun {
    /// The tails of the VM's dmesg and the target's log and the results, for
    /// failure messages.
    fn context(&self) -> String {
        format!(
            "\n--- VM console/dmesg (last {TAIL_LINES} lines) ---\n{}\n--- plexd-target log ---\n{}\n--- results ---\n{}",
            tail(&self.dmesg, TAIL_LINES),
            tail(&self.target_log, TAIL_LINES),
            self.out
                .lines()
                .filter(|l| l.starts_with("PLEXD-") || l.contains(": "))
                .filter(|l| !l.starts_with('['))
                .collect::<Vec<_>>()
                .join("\n")
        )
    }

    /// The `PLEXD-RESULT step rc=N` lines, in order.
    fn results(&self) -> Vec<(&str, &str)> {
        self.out
            .lines()
            .filter_map(|l| l.strip_prefix("PLEXD-RESULT "))
            .filter_map(|l| l.trim().split_once(' '))
            .collect()
    }
}

/// One VM at a time in this binary: two under TCG on the CI's cores would
/// only make both slow.
static VM_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Builds the image, starts plexd-target in a new namespace with the malloc-backed
/// volume `vol0` of `LUN_BYTES` and the frontend section `frontend_toml`, waits for
/// `listening` in its log and runs `script` in the VM (bounded by VM_DEADLINE).
fn run_vm(tag: &str, frontend_toml: &str, listening: &str, script: &str) -> VmRun {
    let _one = VM_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    assert!(
        is_root(),
        "kernel_initiator needs root (a network namespace and a tap device); CI runs as root"
    );
    assert!(
        in_path("qemu-system-x86_64"),
        "kernel_initiator needs qemu-system-x86_64: run ci/setup (Debian package qemu-system-x86)"
    );
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let vm_dir = repo.join("ci").join("vm");

    // The VM image (cached in build/vm/; the first run downloads the packages).
    let mut image = Group::spawn(&mut Command::new(vm_dir.join("image")));
    let st = image
        .wait(IMAGE_DEADLINE)
        .unwrap_or_else(|| panic!("ci/vm/image did not finish within {IMAGE_DEADLINE:?}"));
    assert!(st.success(), "ci/vm/image failed: {st}");

    let dir = std::env::temp_dir().join(format!(
        "plexd-kernel-{tag}-{}-{}",
        std::process::id(),
        nanos()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let dir = TempDir(dir);
    let ns = Netns::create();

    // plexd-target in the namespace: a concat volume over a malloc bdev on two
    // reactors, as in docs/examples/iscsi.toml and nvmf.toml.
    let cfg = dir.0.join("target.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[target]
cores = "0,1"
socket = "{sock}"
[[bdevs]]
kind = "malloc"
name = "m0"
size = "{LUN_BYTES}"
block_size = 512
[[volumes]]
name = "vol0"
size = "{LUN_BYTES}"
plexes = [ {{ name = "vol0-01", layout = "concat", subdisks = [{{ bdev = "m0", offset = "0", length = "{LUN_BYTES}" }}] }} ]
{front}
"#,
            sock = dir.0.join("target.sock").display(),
            front = frontend_toml.replace("@DIR@", &dir.0.display().to_string()),
        ),
    )
    .unwrap();
    let target_log = dir.0.join("target.log");
    let log_file = File::create(&target_log).unwrap();
    let target_bin = std::env::var_os("PLEXD_TARGET_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_plexd-target")));
    let _target = Group::spawn(
        ns.exec(&target_bin)
            .arg("--config")
            .arg(&cfg)
            .env("RUST_LOG", "info")
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file),
    );
    let start = Instant::now();
    while !read(&target_log).contains(listening) {
        assert!(
            start.elapsed() < TARGET_START_DEADLINE,
            "plexd-target did not log `{listening}` in namespace {} within {TARGET_START_DEADLINE:?}:\n{}",
            ns.name,
            tail(&read(&target_log), TAIL_LINES)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The VM: its serial console goes to a file.
    let script_path = dir.0.join("vm.sh");
    std::fs::write(&script_path, script).unwrap();
    let console = dir.0.join("console.log");
    let started = Instant::now();
    let mut vm = Group::spawn(
        ns.exec(&vm_dir.join("boot"))
            .args(["--tap", TAP, "--ip", VM_IP, "--timeout"])
            .arg(VM_DEADLINE.as_secs().to_string())
            .arg(&script_path)
            .stdout(File::create(&console).unwrap())
            .stderr(Stdio::inherit()),
    );
    let status = vm.wait(VM_DEADLINE + Duration::from_secs(10));
    let elapsed = started.elapsed();
    drop(vm);
    let out = read(&console);
    let dmesg = out
        .split("PLEXD-DMESG-BEGIN")
        .nth(1)
        .map(|s| s.split("PLEXD-DMESG-END").next().unwrap_or(s))
        .unwrap_or(&out)
        .to_string();
    VmRun {
        dmesg,
        target_log: read(&target_log),
        out,
        status,
        elapsed,
    }
}

#[test]
fn linux_initiator_writes_and_verifies_without_session_recovery() {
    let run = run_vm(
        "iscsi",
        &format!(
            r#"[iscsi]
portal = "{TARGET_IP}:3260"
pr_dir = "@DIR@/pr"
[[iscsi.targets]]
iqn = "{IQN}"
luns = [{{ lun = 0, bdev = "vol0", device_id = "vol0" }}]
"#
        ),
        &format!("portal {TARGET_IP}:3260 listening"),
        &VM_SCRIPT
            .replace("@PORTAL@", &format!("{TARGET_IP}:3260"))
            .replace("@IQN@", IQN),
    );
    let (out, dmesg, status, elapsed) = (&run.out, &run.dmesg, run.status, run.elapsed);
    let context = || run.context();
    assert!(
        status.is_some() && out.contains("PLEXD-VM-END"),
        "the VM did not finish within {VM_DEADLINE:?} (status {status:?}){}",
        context()
    );

    // Every step, in order, with rc=0.
    let results = run.results();
    let names: Vec<&str> = results.iter().map(|r| r.0).collect();
    assert_eq!(names, STEPS, "steps reported by the VM{}", context());
    for (step, rc) in &results {
        assert_eq!(*rc, "rc=0", "{step} failed in the VM{}", context());
    }
    // The second session really negotiated digests.
    let digests: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("PLEXD-DIGEST "))
        .collect();
    assert_eq!(
        digests.iter().filter(|d| d.contains("CRC32C")).count(),
        2,
        "header and data digests not negotiated in the last session: {digests:?}{}",
        context()
    );
    for t in SESSION_TROUBLE {
        assert!(
            !dmesg.to_lowercase().contains(t),
            "the VM's dmesg shows `{t}`{}",
            context()
        );
    }
    let w1m = out
        .lines()
        .find(|l| l.starts_with("w1m: ") && l.contains("WRITE: bw="))
        .unwrap_or("w1m: no WRITE line");
    eprintln!(
        "kernel_initiator: VM run {:.1} s; 1 MiB sequential write, iodepth 1 (TCG): {}",
        elapsed.as_secs_f64(),
        w1m.trim()
    );
}

/// The subsystem of the NVMe/TCP run.
const NVME_NQN: &str = "nqn.2026-11.io.plexd:kernel";
/// NVMe/TCP's port.
const NVME_PORT: u16 = 4420;

/// The VM's script for the NVMe/TCP target: `nvme discover`, `nvme connect`
/// (digests off), `nvme list` / `id-ctrl` / `id-ns` / `ana-log`, a pattern written
/// with dd through the page cache (fsync, caches dropped) and read back compared by
/// sha256, fio with crc32c verification (1 MiB sequential writes, 4 KiB random
/// read/write), `nvme disconnect`; then a connect with header and data digests,
/// 4 KiB and 128 KiB random jobs, a read-back verify of the first writes, and a
/// disconnect. Reservations: after identify the host registers and acquires
/// write exclusive (`resv-register`, `resv-acquire`, `resv-report`: type 1, one
/// registrant); after the first disconnect a second host NQN connects, its write
/// fails with the reservation conflict, its read succeeds, its report shows the
/// reservation; after the digest connect the first host releases and unregisters
/// (`resv-release`, report: type 0, no registrant) and the jobs write again. Regions (MiB): w1m 0-32, rr4k 64-72, dd 100-108, rr4k-crc 112-120,
/// rr128k-crc 128-160.
const NVME_SCRIPT: &str = r#"
A=@ADDR@; S=@PORT@; NQN=@NQN@
HOSTB=nqn.2014-08.org.nvmexpress:uuid:0b0b0b0b-0000-4000-8000-00000000000b
HOSTB_ID=0b0b0b0b-0000-4000-8000-00000000000b
res() { echo "PLEXD-RESULT $*"; }
# ndev: waits for the namespace's block device (not the hidden nvmeXcYnZ paths).
ndev() {
  DEV=""
  for i in $(seq 1 40); do
    for d in /sys/block/nvme*; do
      [ -e "$d" ] || continue
      case "${d##*/}" in *c*) continue ;; esac
      DEV=/dev/${d##*/}
    done
    [ -n "$DEV" ] && [ -b "$DEV" ] && break; DEV=""; sleep 0.5
  done
  echo "namespace device: $DEV"
}
gone() { for i in $(seq 1 40); do ls /sys/block | grep -q nvme || return 0; sleep 0.5; done; return 1; }
job() {
  name=$1; dev=$2; shift 2
  timeout 120 fio --name=$name --filename=$dev --direct=1 --ioengine=libaio \
    --verify=crc32c --do_verify=1 --verify_fatal=1 "$@" >/tmp/$name.out 2>&1
  rc=$?
  grep -E 'err=|READ: bw|WRITE: bw|verify|fio:' /tmp/$name.out | sed "s/^/$name: /"
  res job-$name rc=$rc
}
rc=1
for i in $(seq 1 10); do
  timeout 30 nvme discover -t tcp -a $A -s $S >/tmp/disc 2>&1 && grep -q "$NQN" /tmp/disc && { rc=0; break; }
  sleep 1
done
cat /tmp/disc; res discover rc=$rc
timeout 60 nvme connect -t tcp -a $A -s $S -n $NQN; rc=$?; ndev
[ -n "$DEV" ] || rc=1; res connect rc=$rc
nvme list
timeout 30 nvme id-ctrl $DEV >/tmp/idc && timeout 30 nvme id-ns $DEV >/tmp/idn && timeout 30 nvme ana-log $DEV >/tmp/ana; rc=$?
grep -E '^(sn|mn|cntlid|subnqn|ioccsz|cmic|anacap) ' /tmp/idc; grep -E '^(nsze|nmic|anagrpid) ' /tmp/idn; cat /tmp/ana
grep -q "$NQN" /tmp/idc || rc=1; res identify rc=$rc
# Reservations, this host (A): register key a1, acquire write exclusive (type 1).
timeout 30 nvme resv-register $DEV --nrkey=161 --rrega=0; rc=$?
timeout 30 nvme resv-acquire $DEV --crkey=161 --rtype=1 --racqa=0 || rc=1
timeout 30 nvme resv-report $DEV >/tmp/rr || rc=1; cat /tmp/rr
grep -Eq 'rtype[^0-9]*1$' /tmp/rr && grep -Eq 'regctl[^0-9]*1$' /tmp/rr || rc=1
res resv-acquire rc=$rc
dd if=/dev/urandom of=/tmp/pat bs=1M count=8 2>/dev/null
dd if=/tmp/pat of=$DEV bs=1M seek=100 conv=fsync 2>/dev/null; rc=$?
echo 3 > /proc/sys/vm/drop_caches
dd if=$DEV of=/tmp/back bs=1M skip=100 count=8 2>/dev/null || rc=1
a=$(sha256sum </tmp/pat); b=$(sha256sum </tmp/back); echo "dd sha256 $a / $b"
[ "$a" = "$b" ] || rc=1; res dd-sha256 rc=$rc
job w1m $DEV --rw=write --bs=1m --iodepth=4 --size=32m
job rr4k $DEV --rw=randrw --bs=4k --iodepth=16 --offset=64m --size=8m --randrepeat=0
timeout 30 nvme disconnect -n $NQN; rc=$?; gone || rc=1; res disconnect rc=$rc
# A second host (B, its own NQN and host id): its write conflicts with A's write
# exclusive reservation, its read does not, its report shows A's registration.
timeout 60 nvme connect -t tcp -a $A -s $S -n $NQN --hostnqn=$HOSTB --hostid=$HOSTB_ID; rc=$?; ndev
[ -n "$DEV" ] || rc=1
dd if=/dev/zero of=$DEV bs=4k count=1 seek=24576 oflag=direct 2>/tmp/wb && { echo "host B wrote"; rc=1; }
cat /tmp/wb
dd if=$DEV of=/dev/null bs=4k count=1 skip=24576 iflag=direct 2>/dev/null || rc=1
timeout 30 nvme resv-report $DEV >/tmp/rr || rc=1; cat /tmp/rr
grep -Eq 'rtype[^0-9]*1$' /tmp/rr || rc=1
res resv-conflict rc=$rc
timeout 30 nvme disconnect -n $NQN; rc=$?; gone || rc=1; res disconnect rc=$rc
timeout 60 nvme connect -t tcp -a $A -s $S -n $NQN --hdr-digest --data-digest; rc=$?; ndev
[ -n "$DEV" ] || rc=1; res connect-digests rc=$rc
# Host A releases and unregisters: the jobs below write again.
timeout 30 nvme resv-release $DEV --crkey=161 --rtype=1 --rrela=0; rc=$?
timeout 30 nvme resv-register $DEV --crkey=161 --rrega=1 || rc=1
timeout 30 nvme resv-report $DEV >/tmp/rr || rc=1; cat /tmp/rr
grep -Eq 'rtype[^0-9]*0$' /tmp/rr && grep -Eq 'regctl[^0-9]*0$' /tmp/rr || rc=1
res resv-release rc=$rc
job rr4k-crc $DEV --rw=randrw --bs=4k --iodepth=16 --offset=112m --size=8m --randrepeat=0
job rr128k-crc $DEV --rw=randrw --bs=128k --iodepth=16 --offset=128m --size=32m --randrepeat=0
job readback $DEV --rw=write --bs=1m --iodepth=4 --size=32m --verify_only
timeout 30 nvme disconnect -n $NQN; rc=$?; gone || rc=1; res disconnect rc=$rc
echo PLEXD-DMESG-BEGIN; dmesg; echo PLEXD-DMESG-END
"#;

/// The steps NVME_SCRIPT must report with rc=0.
const NVME_STEPS: [&str; 16] = [
    "discover",
    "connect",
    "identify",
    "resv-acquire",
    "dd-sha256",
    "job-w1m",
    "job-rr4k",
    "disconnect",
    "resv-conflict",
    "disconnect",
    "connect-digests",
    "resv-release",
    "job-rr4k-crc",
    "job-rr128k-crc",
    "job-readback",
    "disconnect",
];

/// Words in an `nvme` line of the VM's dmesg that mean the controller broke.
const NVME_TROUBLE: [&str; 4] = ["timeout", "error recovery", "reconnect", "failed"];

#[test]
fn linux_nvme_tcp_host_discovers_connects_and_verifies() {
    let run = run_vm(
        "nvmf",
        &format!(
            r#"[nvmf]
listeners = ["{TARGET_IP}:{NVME_PORT}"]
[[nvmf.subsystems]]
nqn = "{NVME_NQN}"
allow_any = true
namespaces = [{{ nsid = 1, bdev = "vol0", identity = "kernel/vol0" }}]
"#
        ),
        &format!("nvmf: listening on {TARGET_IP}:{NVME_PORT}"),
        &NVME_SCRIPT
            .replace("@ADDR@", TARGET_IP)
            .replace("@PORT@", &NVME_PORT.to_string())
            .replace("@NQN@", NVME_NQN),
    );
    assert!(
        run.status.is_some() && run.out.contains("PLEXD-VM-END"),
        "the VM did not finish within {VM_DEADLINE:?} (status {:?}){}",
        run.status,
        run.context()
    );
    let results = run.results();
    let names: Vec<&str> = results.iter().map(|r| r.0).collect();
    assert_eq!(
        names,
        NVME_STEPS,
        "steps reported by the VM{}",
        run.context()
    );
    for (step, rc) in &results {
        assert_eq!(*rc, "rc=0", "{step} failed in the VM{}", run.context());
    }
    assert!(
        run.target_log
            .contains("digests Digests { header: true, data: true }"),
        "the second connect negotiated header and data digests{}",
        run.context()
    );
    for l in run.dmesg.lines().filter(|l| l.contains("nvme")) {
        let low = l.to_lowercase();
        for t in NVME_TROUBLE {
            assert!(
                !low.contains(t),
                "the VM's dmesg shows `{t}`: {l}{}",
                run.context()
            );
        }
    }
    if std::env::var_os("PLEXD_VM_VERBOSE").is_some() {
        let _ = std::fs::write("/tmp/plexd-vm-console.log", &run.out);
        let _ = std::fs::write("/tmp/plexd-vm-target.log", &run.target_log);
        eprintln!("{}", run.context());
    }
    eprintln!(
        "kernel_initiator: NVMe/TCP VM run {:.1} s; {}",
        run.elapsed.as_secs_f64(),
        run.out
            .lines()
            .find(|l| l.starts_with("w1m: ") && l.contains("WRITE: bw="))
            .unwrap_or("w1m: no WRITE line")
            .trim()
    );
}
