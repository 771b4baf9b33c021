//! The standalone configuration file: a real `plexd-target --config FILE`, checked
//! through the kernel interface; bad files refused at start with FILE:LINE: key: reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use plexd_target::api::process::TargetProcess;
use plexd_target::testutil::TempPath;
use plexd_target::volume::{PlexKind, PlexState, ReadPolicy};

const MIB: u64 = 1 << 20;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_plexd-target"))
}

/// A config file and the socket it names, both removed on drop.
struct Setup {
    file: TempPath,
    socket: PathBuf,
    _disk: TempPath,
}

/// Writes `body` (with `@SOCKET@` and `@DISK@` replaced) to a temp file.
fn setup(tag: &str, body: &str) -> Setup {
    let disk = TempPath::file(&format!("{tag}-disk"), 4 * MIB).unwrap();
    let socket = TempPath::new(&format!("{tag}-sock"))
        .0
        .with_extension("sock");
    let text = body
        .replace("@SOCKET@", &socket.display().to_string())
        .replace("@DISK@", &disk.0.display().to_string());
    let file = TempPath::new(&format!("{tag}-cfg"));
    std::fs::write(&file.0, text).unwrap();
    Setup {
        file,
        socket,
        _disk: disk,
    }
}

const GOOD: &str = r#"# a standalone target
[target]
cores = "0,1"
poll_mode = "adaptive"
socket = "@SOCKET@"

[[bdevs]]
kind = "malloc"
name = "m0"
size = "8M"
block_size = 512

[[bdevs]]
kind = "null"
name = "n0"
size = "4M"

[[bdevs]]
kind = "uring"
name = "u0"
path = "@DISK@"
buffered = true

[[bdevs]]
kind = "error"
name = "e0"
inner = "u0"

[[volumes]]
name = "vol0"
size = "2M"
read_policy = "least-busy"
plexes = [
  { name = "vol0-01", layout = "concat", subdisks = [{ bdev = "m0", offset = "0", length = "2M" }] },
  { layout = "stripe", stripe_unit = "64K", columns = [[{ bdev = "e0", length = "1M" }], [{ bdev = "n0", offset = "1M", length = "1M" }]] },
]

[[volumes]]
name = "vol1"
size = "1M"
shared = true
plexes = [{ subdisks = [{ bdev = "m0", offset = "4M" }] }]
"#;

fn run(s: &Setup, extra: &[&str]) -> TargetProcess {
    let mut args = vec!["--config".to_string(), s.file.0.display().to_string()];
    args.extend(extra.iter().map(|a| a.to_string()));
    let mut p = TargetProcess::spawn(exe(), "config", &args, s.socket.clone()).unwrap();
    p.wait_ready(Duration::from_secs(30)).unwrap();
    p
}

/// Runs the binary on a file that must be refused; returns its stderr.
fn refused(s: &Setup, extra: &[&str]) -> String {
    let out = std::process::Command::new(exe())
        .arg("--config")
        .arg(&s.file.0)
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!s.socket.exists(), "a refused target left its socket");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("plexd-target: "))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    lines[0].to_string()
}

#[test]
fn a_good_file_creates_reactors_bdevs_and_volumes() {
    let s = setup("cfg-good", GOOD);
    let p = run(&s, &[]);
    let k = p.client().unwrap();
    let info = k.info().unwrap();
    assert_eq!(info.reactors, 2);
    let bdevs = k.list_bdevs().unwrap();
    let names: Vec<&str> = bdevs.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["e0", "m0", "n0", "u0", "vol0", "vol1"]);
    let u0 = bdevs.iter().find(|b| b.name == "u0").unwrap();
    assert_eq!((u0.kind.as_str(), u0.size_bytes), ("uring", 4 * MIB));

    let (v0, spec0) = k.get_volume("vol0").unwrap();
    assert_eq!(v0.size_bytes, 2 * MIB);
    assert_eq!(spec0.read_policy, ReadPolicy::LeastBusy);
    assert_eq!(spec0.plexes[1].name, "vol0-02");
    assert_eq!(
        spec0.plexes[1].kind,
        PlexKind::Stripe {
            stripe_unit_bytes: 64 << 10
        }
    );
    assert_eq!(spec0.plexes[1].columns[1][0].offset_bytes, MIB);
    assert!(v0.plexes.iter().all(|p| p.state == PlexState::Active));

    // vol1's subdisk defaults to the rest of m0 (4 MiB from offset 4M).
    let (_, spec1) = k.get_volume("vol1").unwrap();
    assert_eq!(spec1.plexes[0].name, "vol1-01");
    assert_eq!(spec1.plexes[0].columns[0][0].len_bytes, 4 * MIB);
    // vol1 is shared: served only under the data-plane lease.
    assert!(spec1.shared && !spec0.shared);
    let block = vec![7u8; 512];
    assert_eq!(
        k.write("vol1", 0, &block).unwrap(),
        plexd_target::lease::FENCED_ERRNO
    );
    k.renew_lease(60_000).unwrap();
    assert_eq!(k.write("vol1", 0, &block).unwrap(), 0);

    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(k.write("vol0", 0, &data).unwrap(), 0);
    assert_eq!(k.read("vol0", 0, 8192).unwrap().data, data);
}

#[test]
fn set_overrides_apply_before_the_file_is_read() {
    let s = setup("cfg-set", GOOD);
    let p = run(
        &s,
        &[
            "--set",
            "target.cores=0",
            "--set",
            "bdevs.0.size=16M",
            "--set",
            "volumes.0.read_policy=round",
        ],
    );
    let k = p.client().unwrap();
    assert_eq!(k.info().unwrap().cores, vec![Some(0)]);
    let m0 = k
        .list_bdevs()
        .unwrap()
        .into_iter()
        .find(|b| b.name == "m0")
        .unwrap();
    assert_eq!(m0.size_bytes, 16 * MIB);
    assert_eq!(
        k.get_volume("vol0").unwrap().1.read_policy,
        ReadPolicy::Round
    );
    // vol1's default length follows the overridden size.
    assert_eq!(
        k.get_volume("vol1").unwrap().1.plexes[0].columns[0][0].len_bytes,
        12 * MIB
    );
}

#[test]
fn command_line_flags_win_over_the_file() {
    let s = setup("cfg-flags", GOOD);
    let p = run(&s, &["--cores", "1", "--poll-mode", "always"]);
    let info = p.client().unwrap().info().unwrap();
    assert_eq!(info.cores, vec![Some(1)]);
    assert_eq!(info.poll_mode, plexd_target::reactor::PollMode::Always);
}

#[test]
fn an_unknown_key_is_refused_with_line_key_and_reason() {
    let s = setup(
        "cfg-unknown",
        &GOOD.replace("size = \"4M\"", "size = \"4M\"\ncolour = \"blue\""),
    );
    let line = refused(&s, &[]);
    let file = s.file.0.display().to_string();
    assert!(
        line.starts_with(&format!(
            "plexd-target: {file}:17: bdevs[1].colour: unknown field `colour`"
        )),
        "{line}"
    );
}

#[test]
fn a_bad_size_is_refused_with_line_key_and_reason() {
    let s = setup("cfg-size", &GOOD.replace("size = \"8M\"", "size = \"8Q\""));
    let line = refused(&s, &[]);
    let file = s.file.0.display().to_string();
    assert!(
        line.starts_with(&format!("plexd-target: {file}:10: bdevs[0].size: ")),
        "{line}"
    );
    assert!(line.contains("unknown suffix"), "{line}");
}

#[test]
fn a_missing_bdev_is_refused_with_line_key_and_reason() {
    let s = setup(
        "cfg-missing",
        &GOOD.replace("bdev = \"n0\"", "bdev = \"n9\""),
    );
    let line = refused(&s, &[]);
    let file = s.file.0.display().to_string();
    assert!(
        line.starts_with(&format!(
            "plexd-target: {file}:35: volumes[0].plexes[1].columns[1][0].bdev: "
        )),
        "{line}"
    );
    assert!(line.contains("bdev n9 is not defined"), "{line}");
}

#[test]
fn a_failure_while_applying_names_the_entry_and_the_object() {
    let s = setup(
        "cfg-apply",
        &GOOD.replace("path = \"@DISK@\"", "path = \"/nonexistent/d.img\""),
    );
    let line = refused(&s, &[]);
    let file = s.file.0.display().to_string();
    assert!(
        line.starts_with(&format!("plexd-target: {file}:20: bdevs[2]: bdev u0: ")),
        "{line}"
    );
    assert!(line.contains("/nonexistent/d.img"), "{line}");

    // A layout the target refuses: the plex is smaller than the volume.
    let s = setup(
        "cfg-apply2",
        &GOOD.replace("size = \"2M\"", "size = \"3M\""),
    );
    let line = refused(&s, &[]);
    assert!(line.contains("volumes[0]: volume vol0: "), "{line}");
    assert!(line.contains("less than the volume size"), "{line}");
}

#[test]
fn a_bad_override_is_refused_naming_it() {
    let s = setup("cfg-badset", GOOD);
    let line = refused(&s, &["--set", "target.poll_mode=sometimes"]);
    assert!(
        line.contains("--set target.poll_mode=sometimes: target.poll_mode: unknown variant"),
        "{line}"
    );
    let line = refused(&s, &["--set", "bdevs.9.size=1G"]);
    assert!(line.contains("no element 9"), "{line}");
}

const ISCSI: &str = r#"
[iscsi]
portal = "127.0.0.1:3260"

[[iscsi.targets]]
iqn = "iqn.2026-11.io.plexd:cfgtest"
luns = [{ lun = 0, bdev = "vol0" }]
"#;

#[test]
fn the_iscsi_section_starts_the_frontend_after_volumes() {
    let s = setup("cfg-iscsi", &format!("{GOOD}{ISCSI}"));
    // Port 0: any free port (the ready line tells which).
    let p = run(&s, &["--set", "iscsi.portal=127.0.0.1:0"]);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let portal = loop {
        let out = p.stdout();
        if let Some(rest) = out.split("iscsi portal ").nth(1) {
            break rest.lines().next().unwrap_or("").trim().to_string();
        }
        assert!(std::time::Instant::now() < deadline, "no ready line: {out}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(portal.starts_with("127.0.0.1:"), "{portal}");
    assert!(!portal.ends_with(":0"), "{portal}");
    std::net::TcpStream::connect(&portal).unwrap();

    // A LUN on a missing volume is refused at start, naming it.
    let s = setup(
        "cfg-iscsi-bad",
        &format!(
            "{GOOD}{}",
            ISCSI.replace("bdev = \"vol0\"", "bdev = \"vol7\"")
        ),
    );
    let line = refused(&s, &["--set", "iscsi.portal=127.0.0.1:0"]);
    assert!(
        line.contains(": iscsi: ") && line.contains("vol7"),
        "{line}"
    );
}

#[test]
fn the_documented_example_file_starts() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/target.toml");
    let socket = TempPath::new("cfg-example-sock").0.with_extension("sock");
    let args: Vec<String> = [
        "--config",
        &example.display().to_string(),
        "--set",
        &format!("target.socket={}", socket.display()),
        "--set",
        "target.cores=0",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut p = TargetProcess::spawn(exe(), "cfg-example", &args, socket.clone()).unwrap();
    p.wait_ready(Duration::from_secs(30)).unwrap();
    let k = p.client().unwrap();
    let vols: Vec<String> = k
        .list_volumes()
        .unwrap()
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(vols, ["scratch", "vol0"]);
    let (_, spec) = k.get_volume("vol0").unwrap();
    assert_eq!(spec.plexes.len(), 2);
    assert_eq!(spec.plexes[1].name, "vol0-02");
}
