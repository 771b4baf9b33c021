//! The harness itself: children die with their whole process group, hidden disks are
//! hidden from one process only, patterns catch wrong data, waits name what they
//! waited for. Needs plexd-target only.

use std::path::Path;
use std::time::Duration;

use plexd_target::api::{BdevRequest, KernelClient};
use plexd_tests::bins::bin_dir;
use plexd_tests::proc::{tail, touch, Proc, Spec};
use plexd_tests::{try_wait_until, wait_until, Pattern};

fn scratch(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("plexd-harness-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sh(dir: &Path, name: &str, script: &str) -> Spec {
    Spec {
        name: name.into(),
        exe: "/bin/sh".into(),
        args: vec!["-c".into(), script.into()],
        env: vec![],
        cwd: dir.to_path_buf(),
        log: dir.join(format!("{name}.log")),
        hide: vec![],
        hide_with: dir.join("empty"),
    }
}

/// Gone or a zombie (reparented to an init that may not reap): either way not running.
fn running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => false,
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
    }
}

#[test]
fn a_dropped_child_takes_its_whole_process_group_with_it() {
    let dir = scratch("pgrp");
    let pidfile = dir.join("grandchild.pid");
    let script = format!("sleep 60 & echo $! > {}; wait", pidfile.display());
    let p = Proc::spawn(&sh(&dir, "parent", &script)).unwrap();
    let grandchild: i32 = wait_until("the grandchild's pid", Duration::from_secs(10), || {
        std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| "no pid yet".to_string())
    });
    assert!(running(grandchild));
    drop(p);
    wait_until(
        "the grandchild to die with its group",
        Duration::from_secs(10),
        || match running(grandchild) {
            false => Ok(()),
            true => Err(format!("{grandchild} still runs")),
        },
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_hidden_disk_is_an_empty_file_to_that_process_only() {
    let dir = scratch("hide");
    let disk = dir.join("d0.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    touch(&dir.join("empty")).unwrap();
    let mut spec = sh(
        &dir,
        "hider",
        &format!("stat -c size=%s {}", disk.display()),
    );
    spec.hide = vec![disk.clone()];
    let mut p = Proc::spawn(&spec).unwrap();
    let status = p.wait_exit(Duration::from_secs(10)).expect("sh exits");
    assert!(status.success(), "{}", tail(p.log(), 10));
    assert!(tail(p.log(), 1).contains("size=0"), "{}", tail(p.log(), 10));
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 1 << 20);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_pattern_reads_back_through_a_target_and_a_wrong_one_is_caught() {
    let dir = scratch("pattern");
    let sock = dir.join("t.sock");
    let exe = bin_dir().join("plexd-target");
    assert!(
        exe.is_file(),
        "{} missing: run cargo build --workspace --bins first",
        exe.display()
    );
    let spec = Spec {
        name: "plexd-target".into(),
        exe,
        args: vec![
            "--socket".into(),
            sock.display().to_string(),
            "--cores".into(),
            "0".into(),
        ],
        env: vec![("RUST_LOG".into(), "warn".into())],
        cwd: dir.clone(),
        log: dir.join("target.log"),
        hide: vec![],
        hide_with: dir.join("empty"),
    };
    let _target = Proc::spawn(&spec).unwrap();
    let k = wait_until("the target's socket", Duration::from_secs(20), || {
        KernelClient::connect(&sock).map_err(|e| e.to_string())
    });
    k.create_bdev(&BdevRequest::malloc("m0", 8 << 20)).unwrap();
    let p = Pattern {
        bdev: "m0".into(),
        offset_bytes: 512 << 10,
        len_bytes: 3 << 20,
        seed: 42,
    };
    p.write(&k).unwrap();
    p.verify(&k).unwrap();
    let wrong = Pattern { seed: 43, ..p };
    let e = wrong.verify(&k).unwrap_err();
    assert!(
        e.contains("pattern 43 differs at byte 524288"),
        "the first wrong byte is named: {e}"
    );
    drop(k);
    drop(_target);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_wait_that_times_out_names_what_it_waited_for_and_the_last_reason() {
    let mut polls = 0;
    let e = try_wait_until("the moon", Duration::from_millis(100), || {
        polls += 1;
        Err::<(), _>(format!("poll {polls}: not yet"))
    })
    .unwrap_err();
    assert!(e.contains("waiting for the moon: poll"), "{e}");
    assert!((2..50).contains(&polls), "bounded polling: {polls}");
}
