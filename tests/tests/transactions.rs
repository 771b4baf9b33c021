//! The volume reconfiguration transaction when every node stays up: forwarding to the
//! master, and the slaves' checks refusing a change with an error naming the node.

use plexd_tests::{group, volume, Cluster, ClusterOpts};

#[test]
fn a_shared_dg_and_mirrored_volume_created_on_a_slave_appear_identical_on_all_nodes() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    assert_eq!(c.master(), 0);
    c.ctl_ok(2, "dg create dg1 d0 d1 --shared");
    c.ctl_ok(2, "vol create dg1 vol1 64M --layout mirror --mirrors 2");
    let p = c.print(1);
    let v = volume(&p, "dg1", "vol1").unwrap_or_else(|| panic!("no dg1/vol1 on b: {p}"));
    let plexes = v["plexes"].as_array().expect("plexes");
    assert_eq!(plexes.len(), 2, "{v}");
    for pl in plexes {
        assert_eq!(pl["state"], "ACTIVE", "{v}");
    }
    c.write_pattern(2, "dg1", "vol1", 0, 1 << 20);
    c.write_pattern(2, "dg1", "vol1", 63 << 20, 1 << 20);
    c.check_invariants();
}

#[test]
fn a_private_disk_group_of_the_same_name_on_a_slave_refuses_the_shared_one_naming_the_node() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.ctl_ok(1, "dg create dg1 d0");
    let e = c.ctl_err(0, "dg create dg1 d1 d2 --shared");
    assert!(
        e.contains("node b") && e.contains("dg1"),
        "the error names the node and the disk group: {e}"
    );
    for i in 0..3 {
        let p = c.print(i);
        assert!(
            !matches!(group(&p, "dg1"), Some(g) if g["shared"] == true),
            "node {i}: no shared dg1 was created: {p}"
        );
    }
    let b = c.print(1);
    assert_eq!(
        group(&b, "dg1").map(|g| g["shared"].clone()),
        Some(false.into())
    );
    let master_log = std::fs::read_to_string(c.nodes[0].dir.join("plexd.log")).unwrap();
    assert!(
        master_log
            .lines()
            .any(|l| l.contains("node b") && l.contains("dg1")),
        "the master logs the refusal with the node's name"
    );
    c.check_invariants();
}

#[test]
fn a_disk_not_accessible_from_a_slave_refuses_the_change() {
    // Node c cannot see disk file 3 (d3).
    let mut c = Cluster::start(3, ClusterOpts::default().hide_disk(2, 3));
    c.shared_mirror(0, "dg1", "vol1", "32M");
    let e = c.ctl_err(0, "dg add-disk dg1 d3");
    assert!(
        e.contains("node c") && e.contains("d3"),
        "names node and disk: {e}"
    );
    let e = c.ctl_err(1, "dg create dg2 d3 d4 --shared");
    assert!(
        e.contains("node c") && e.contains("d3"),
        "names node and disk: {e}"
    );
    let p = c.print(0);
    let disks: Vec<&str> = group(&p, "dg1").expect("dg1")["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .filter_map(|d| d["name"].as_str())
        .collect();
    assert_eq!(disks, ["d0", "d1"], "d3 was not added");
    assert!(group(&p, "dg2").is_none(), "dg2 was not created: {p}");
    c.check_invariants();
}
