//! The dirty region log in the configuration (issue 11): `vol create` gives a
//! mirrored volume a log (unless `--drl off`) with two copies when the group has
//! the disks, `print` shows it, every node's data plane gets its own section of it
//! (on each copy) with the volume's layout, and `dg rm-disk` moves a copy off the
//! disk it removes.

use std::collections::BTreeSet;
use std::time::Duration;

use plexd_tests::{volume, wait_until, Cluster, ClusterOpts};

/// How long a committed change may take to reach every node's data plane (the reply
/// comes after the commit; this only bounds a slow machine).
const SPEC_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn a_mirrored_volume_gets_a_log_and_each_node_its_own_section() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    let m = c.master();
    c.ctl_ok(m, "dg create dg1 d0 d1 d2 --shared");
    c.ctl_ok(
        m,
        "vol create dg1 vol1 64M --layout mirror --mirrors 2 --region-size 256K",
    );
    c.ctl_ok(
        m,
        "vol create dg1 vol2 16M --layout mirror --mirrors 2 --drl off",
    );
    let bad = c.ctl_err(
        m,
        "vol create dg1 vol3 16M --layout mirror --mirrors 2 --region-size 96K",
    );
    assert!(bad.contains("vol3") && bad.contains("region size"), "{bad}");

    let p = c.print(m);
    let v1 = volume(&p, "dg1", "vol1").expect("vol1 in print");
    let log = &v1["log"];
    // Copy 1 on the disk the plexes do not use, copy 2 on another (a plex's);
    // 256 regions of 256 KiB: one bitmap block.
    assert_eq!(log["disk"], "d2", "{v1}");
    assert_eq!(log["copies"][0]["disk"], "d2", "{v1}");
    assert_eq!(log["copies"][1]["disk"], "d0", "{v1}");
    let copy2_offset = log["copies"][1]["disk_offset"].as_u64().unwrap();
    assert_eq!(log["region"], 256 << 10);
    assert_eq!(log["section"], 2 * 4096);
    assert_eq!(log["len"], 65 * 2 * 4096);
    let (log_offset, log_id) = (
        log["disk_offset"].as_u64().unwrap(),
        log["log_id"].as_u64().unwrap(),
    );
    let v2 = volume(&p, "dg1", "vol2").expect("vol2 in print");
    assert!(v2.get("log").is_none(), "--drl off: {v2}");
    let text = c.ctl_ok(m, "print dg1");
    assert!(
        text.contains("lg vol1         d2       ") && text.contains("region 256.0 KiB"),
        "{text}"
    );

    let mut offsets = BTreeSet::new();
    for i in 0..3 {
        let node = i as u32 + 1;
        let k = c.kernel(i);
        let spec = wait_until(
            &format!("node {node}'s data plane to hold dg1.vol1 with its log section"),
            SPEC_TIMEOUT,
            || {
                let (_, spec) = k.get_volume("dg1.vol1").map_err(|e| e.to_string())?;
                spec.log.ok_or_else(|| "no log in its spec".to_string())
            },
        );
        let bdevs: Vec<&str> = spec.copies.iter().map(|c| c.bdev.as_str()).collect();
        assert_eq!(bdevs, ["dg1.d2", "dg1.d0"]);
        assert_eq!(spec.node, node);
        assert_eq!(spec.log_id, log_id);
        assert_eq!(spec.region_bytes, 256 << 10);
        assert_eq!(spec.section_bytes, 2 * 4096);
        assert_eq!(
            spec.copies[0].offset_bytes,
            log_offset + u64::from(node) * 2 * 4096
        );
        assert_eq!(
            spec.copies[1].offset_bytes,
            copy2_offset + u64::from(node) * 2 * 4096
        );
        assert!(
            offsets.insert(spec.copies[0].offset_bytes),
            "node {node}: {spec:?}"
        );
        let (_, spec2) = k.get_volume("dg1.vol2").unwrap();
        assert_eq!(spec2.log, None, "node {node}: vol2 has --drl off");
    }
    // Every member shows the same configuration, the disks hold it, and no log
    // overlaps a subdisk (invariants::no_shared_extents).
    c.check_invariants();
}

/// Writes through a node mark the log before they reach the plexes: `vol stats`
/// shows that node's log writes and the writes that waited for one, and the node's
/// section on the log disk decodes to the written regions (read from the disk file
/// itself). Another node's section stays unused.
#[test]
fn vol_stats_shows_the_log_and_the_section_holds_the_written_regions() {
    use plexd_target_api::drl::DirtyLog;

    let mut c = Cluster::start(3, ClusterOpts::default());
    let m = c.master();
    c.ctl_ok(m, "dg create dg1 d0 d1 d2 --shared");
    c.ctl_ok(m, "vol create dg1 vol1 64M --layout mirror --mirrors 2");
    let region = 512u64 << 10;
    // Regions 0, 3 and 100 through node index 1 (node id 2).
    for off in [0, 3 * region + 4096, 100 * region] {
        c.write_pattern(1, "dg1", "vol1", off, 8192);
    }
    let v = c.ctl_json(1, "vol stats dg1 vol1");
    let st = &v["volume"]["stats"];
    assert_eq!(v["node"], c.nodes[1].name.as_str(), "{v}");
    assert!(st["write_ops"].as_u64().unwrap() >= 3, "{v}");
    assert!(st["log_writes"].as_u64().unwrap() >= 1, "{v}");
    assert!(st["log_waits"].as_u64().unwrap() >= 1, "{v}");
    let text = c.ctl_ok(1, "vol stats dg1 vol1");
    assert!(text.contains("writes waited for one"), "{text}");
    let idle = c.ctl_json(2, "vol stats dg1 vol1");
    assert_eq!(idle["volume"]["stats"]["log_writes"], 0, "{idle}");

    let p = c.print(m);
    let log = &volume(&p, "dg1", "vol1").expect("vol1")["log"];
    let (section, id) = (
        log["section"].as_u64().unwrap(),
        log["log_id"].as_u64().unwrap(),
    );
    let copies = log["copies"].as_array().unwrap();
    assert_eq!(copies.len(), 2, "{log}");
    // Both copies hold the marks.
    for copy in copies {
        let off = copy["disk_offset"].as_u64().unwrap();
        let read = |node: u64| section_at(&c, copy, off + node * section, section, node, id);
        // The regions stay dirty until idle for the data plane's clean interval
        // (5 s); the check runs right after the writes.
        assert_eq!(
            read(2),
            DirtyLog::Dirty(vec![
                (0, region),
                (3 * region, region),
                (100 * region, region)
            ]),
            "copy on {}",
            copy["disk"]
        );
        assert_eq!(read(3), DirtyLog::Unused);
    }
    let err = c.ctl_err(m, "vol stats dg1 nosuch");
    assert!(err.contains("nosuch") && err.contains("dg1"), "{err}");
}

/// Node `node`'s section (log `id`) at `offset` of the disk `copy` names in `print
/// --json` (`{"disk": "dN", ...}`), read from the disk file.
fn section_at(
    c: &Cluster,
    copy: &serde_json::Value,
    offset: u64,
    section: u64,
    node: u64,
    id: u64,
) -> plexd_target_api::drl::DirtyLog {
    use std::os::unix::fs::FileExt;
    let disk = copy["disk"].as_str().unwrap();
    let idx: usize = disk.trim_start_matches('d').parse().unwrap();
    let f = std::fs::File::open(&c.disks[idx]).unwrap();
    let mut buf = vec![0u8; section as usize];
    f.read_exact_at(&mut buf, offset).unwrap();
    plexd_target_api::drl::read_section(&buf, node as u32, id).unwrap()
}

/// `dg rm-disk` of a disk holding a log copy moves the copy to another disk with
/// room (a new log id: every data plane re-inits its sections at the commit's
/// drained quiesce), instead of refusing as it did; writes go on and mark the new
/// copy, whose section decodes (the refusal when no disk has room is
/// `model::alloc`'s `rm_disk_of_a_log_copy_without_room_elsewhere_is_refused_naming_it`).
#[test]
fn rm_disk_of_a_log_disk_moves_the_log_copy() {
    use plexd_target_api::drl::DirtyLog;

    let mut c = Cluster::start(2, ClusterOpts::default());
    let m = c.master();
    c.ctl_ok(m, "dg create dg1 d0 d1 d2 d3 d4 --shared");
    c.ctl_ok(m, "vol create dg1 vol1 64M --layout mirror --mirrors 2");
    let p = c.print(m);
    let before = volume(&p, "dg1", "vol1").expect("vol1")["log"].clone();
    let disks = |log: &serde_json::Value| -> Vec<String> {
        log["copies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["disk"].as_str().unwrap().to_string())
            .collect()
    };
    // Plexes on d0 and d1, the copies off them.
    assert_eq!(disks(&before), ["d2", "d3"], "{before}");
    c.write_pattern(1, "dg1", "vol1", 0, 8192);

    c.ctl_ok(m, "dg rm-disk dg1 d3");
    let p = c.print(m);
    let after = volume(&p, "dg1", "vol1").expect("vol1")["log"].clone();
    assert_eq!(disks(&after), ["d2", "d4"], "{after}");
    assert_ne!(
        after["log_id"], before["log_id"],
        "a moved log gets a new id"
    );
    let id = after["log_id"].as_u64().unwrap();
    let section = after["section"].as_u64().unwrap();
    // Every data plane runs on the new spec (both copies, the new id).
    for i in 0..2 {
        let k = c.kernel(i);
        wait_until(
            &format!("node {i}'s data plane to take the moved log"),
            SPEC_TIMEOUT,
            || {
                let (_, spec) = k.get_volume("dg1.vol1").map_err(|e| e.to_string())?;
                let log = spec.log.ok_or("no log")?;
                let bdevs: Vec<&str> = log.copies.iter().map(|c| c.bdev.as_str()).collect();
                (log.log_id == id && bdevs == ["dg1.d2", "dg1.d4"])
                    .then_some(())
                    .ok_or_else(|| format!("{log:?}"))
            },
        );
    }
    // Writes work, and mark both copies: the moved copy's section decodes.
    let region = 512u64 << 10;
    c.write_pattern(1, "dg1", "vol1", 7 * region, 8192);
    for copy in after["copies"].as_array().unwrap() {
        let off = copy["disk_offset"].as_u64().unwrap() + 2 * section;
        assert_eq!(
            section_at(&c, copy, off, section, 2, id),
            DirtyLog::Dirty(vec![(7 * region, region)]),
            "node 2's section on {}",
            copy["disk"]
        );
    }
    c.verify_patterns_on(&[0, 1]).unwrap();
    c.check_invariants();
}
