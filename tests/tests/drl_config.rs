//! The dirty region log in the configuration (issue 11): `vol create` gives a
//! mirrored volume a log (unless `--drl off`), `print` shows it, and every node's data
//! plane gets its own section of it with the volume's layout.

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
    // On the disk the plexes do not use; 256 regions of 256 KiB: one bitmap block.
    assert_eq!(log["disk"], "d2", "{v1}");
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
        assert_eq!(spec.bdev, "dg1.d2");
        assert_eq!(spec.node, node);
        assert_eq!(spec.log_id, log_id);
        assert_eq!(spec.region_bytes, 256 << 10);
        assert_eq!(spec.section_bytes, 2 * 4096);
        assert_eq!(spec.offset_bytes, log_offset + u64::from(node) * 2 * 4096);
        assert!(offsets.insert(spec.offset_bytes), "node {node}: {spec:?}");
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
    use plexd_target_api::drl::{read_section, DirtyLog};
    use std::os::unix::fs::FileExt;

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
    let (disk, off, section, id) = (
        log["disk"].as_str().unwrap().to_string(),
        log["disk_offset"].as_u64().unwrap(),
        log["section"].as_u64().unwrap(),
        log["log_id"].as_u64().unwrap(),
    );
    let idx: usize = disk.trim_start_matches('d').parse().unwrap();
    let f = std::fs::File::open(&c.disks[idx]).unwrap();
    let read = |node: u64| {
        let mut buf = vec![0u8; section as usize];
        f.read_exact_at(&mut buf, off + node * section).unwrap();
        read_section(&buf, node as u32, id).unwrap()
    };
    // The regions stay dirty until idle for the data plane's clean interval (5 s);
    // the check runs right after the writes.
    assert_eq!(
        read(2),
        DirtyLog::Dirty(vec![
            (0, region),
            (3 * region, region),
            (100 * region, region)
        ])
    );
    assert_eq!(read(3), DirtyLog::Unused);
    let err = c.ctl_err(m, "vol stats dg1 nosuch");
    assert!(err.contains("nosuch") && err.contains("dg1"), "{err}");
}
