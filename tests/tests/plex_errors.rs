//! Plex I/O errors: the global detach policy makes the failing plex STALE on every
//! node before the held write completes; the write succeeds on the other plex.

use std::time::Duration;

use plexd_target::api::Injection;
use plexd_target::bdev::error::FailOn;
use plexd_tests::{wait_until, Cluster, ClusterOpts};

#[test]
fn a_plex_write_error_detaches_the_plex_on_every_node_and_the_write_succeeds() {
    let mut c = Cluster::start(3, ClusterOpts::default());
    c.shared_mirror(0, "dg1", "vol1", "32M");
    let (plex, state) = c.plex_on(0, "dg1", "vol1", "d1");
    assert_eq!(state, "ACTIVE");

    let k = c.kernel(0);
    let bdevs = k.list_bdevs().unwrap();
    let err_bdev = bdevs
        .iter()
        .find(|b| b.kind == "error" && b.name.contains("d1"))
        .unwrap_or_else(|| panic!("no error bdev over disk d1 on node a: {bdevs:?}"))
        .name
        .clone();
    k.inject_error(
        &err_bdev,
        Injection::Fail {
            on: FailOn::Writes,
            errno: libc::EIO,
            count: None,
        },
    )
    .unwrap();
    c.write_pattern(0, "dg1", "vol1", 2 << 20, 64 << 10);
    assert_eq!(
        c.plex_on(0, "dg1", "vol1", "d1").1,
        "STALE",
        "the master detached {plex} before the write completed"
    );
    for i in [1, 2] {
        wait_until(
            &format!("{plex} to be STALE on node {i}"),
            Duration::from_secs(5),
            || match c.plex_on(i, "dg1", "vol1", "d1").1.as_str() {
                "STALE" => Ok(()),
                s => Err(s.to_string()),
            },
        );
    }
    k.inject_error(&err_bdev, Injection::Clear).unwrap();
    c.check_invariants();
}
