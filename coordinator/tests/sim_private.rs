//! Private disk-group changes under the simulator: the order the core gives them
//! against the cluster's shared transactions (`core::private`). Each scenario holds
//! one side in the window it is about (a shared transaction staged on node c; a
//! private change of c with its driver) and checks what c's data plane serves.
//!
//! The random schedules of `tests/sim.rs` make private changes on random nodes too,
//! with the same invariants after every event.

use plexd_coordinator::core::{RequestId, MAX_QUEUED_PRIVATE};
use plexd_coordinator::sim::{Hold, Sim};

const A: u32 = 1;
const C: u32 = 3;

/// Runs until node `id` answers `request`; returns the answer.
fn answer(sim: &mut Sim, id: u32, request: Option<RequestId>) -> Result<(), String> {
    let request = request.expect("the node is up");
    let answered = sim.run_until(10_000, |s| s.reply(id, request).is_some());
    assert_eq!(sim.violation(), None, "trace:\n{}", sim.trace_text());
    assert!(answered, "no answer from node {id}:\n{}", sim.trace_text());
    sim.reply(id, request).cloned().expect("answered")
}

/// Runs until a, b, c form one idle view, then checks the invariants.
fn settle(sim: &mut Sim) {
    let whole = sim.run_until(10_000, |s| s.all_members(&[1, 2, 3]));
    assert!(whole, "the cluster did not settle:\n{}", sim.trace_text());
    sim.check().expect("invariants hold");
}

/// Three nodes, a master, every start open (the master's own open transactions are
/// over, so a scenario's transaction is the next one); tracing on.
fn cluster() -> Sim {
    let mut sim = Sim::cluster(3, 7);
    assert_eq!(sim.master(), Some(A));
    let ids = [1, 2, 3];
    let opened = sim.run_until(10_000, |s| s.all_members(&ids) && s.opened(&ids));
    assert!(opened, "the starts were not opened:\n{}", sim.trace_text());
    sim.run_for(100);
    sim
}

/// The master holds its disk write: c (not the successor b, which commits before
/// the master writes) keeps the shared change's layout staged until the release.
fn stage_on_c(sim: &mut Sim, dg: &str) -> Option<RequestId> {
    sim.hold(A, Hold::DiskWrite);
    let r = sim.create(A, dg, 1);
    assert!(
        sim.run_until(1_000, |s| s.held(A) == 1),
        "the master reached its disk write:\n{}",
        sim.trace_text()
    );
    assert!(sim.node(C).kernel.staged.is_some(), "c staged the layout");
    r
}

/// A private change asked while a shared transaction is staged on its node waits
/// for the commit; then both are in c's data plane. (A private change run at once
/// would stage c's whole layout again, dropping the staged shared one.)
#[test]
fn a_private_change_waits_for_the_shared_layout_staged_on_its_node() {
    let mut sim = cluster();
    let shared = stage_on_c(&mut sim, "dg1");
    let private = sim.create_private(C, "p1", 1);
    sim.run_for(300);
    assert_eq!(sim.violation(), None, "trace:\n{}", sim.trace_text());
    let request = private.expect("c is up");
    assert_eq!(sim.reply(C, request), None, "the private change waits");
    assert!(
        sim.node(C).kernel.staged.is_some(),
        "the shared layout is still staged"
    );
    assert!(!sim.private_disk(C).groups.contains_key("p1"));
    sim.release(A);
    assert_eq!(answer(&mut sim, A, shared), Ok(()));
    assert_eq!(answer(&mut sim, C, private), Ok(()));
    let k = &sim.node(C).kernel;
    assert!(k.active.groups.contains_key("dg1"), "c serves dg1");
    assert!(k.private.groups.contains_key("p1"), "c serves p1");
    settle(&mut sim);
}

/// A shared change whose local check on c passed while c's private change that
/// takes the same disk (here: the same group name) is with c's driver is refused
/// by c's core, and the private change goes through.
#[test]
fn a_shared_change_on_the_disk_of_a_private_change_in_progress_is_refused() {
    let mut sim = cluster();
    sim.hold(C, Hold::Private);
    let private = sim.create_private(C, "dg1", 1);
    assert!(
        sim.run_until(1_000, |s| s.held(C) == 1),
        "c's driver runs the private change"
    );
    let shared = sim.create(A, "dg1", 1);
    assert_eq!(
        answer(&mut sim, A, shared),
        Err("node c: disk group dg1 exists as a private disk group".into())
    );
    sim.release(C);
    assert_eq!(answer(&mut sim, C, private), Ok(()));
    settle(&mut sim);
    assert!(sim.private_disk(C).groups.contains_key("dg1"));
    assert!(!sim
        .disk()
        .is_some_and(|d| d.config.groups.contains_key("dg1")));
}

/// A private change asked on c between a shared change's local check and its
/// commit, on the disk that change takes, waits for the commit and is refused.
#[test]
fn a_private_change_on_the_disk_of_a_staged_shared_change_is_refused() {
    let mut sim = cluster();
    let shared = stage_on_c(&mut sim, "dg1");
    let private = sim.create_private(C, "dg1", 1);
    sim.run_for(100);
    sim.release(A);
    assert_eq!(answer(&mut sim, A, shared), Ok(()));
    assert_eq!(
        answer(&mut sim, C, private),
        Err(
            "node c: disk group dg1 exists as a private disk group in the cluster's configuration"
                .into()
        )
    );
    settle(&mut sim);
    assert!(!sim.private_disk(C).groups.contains_key("dg1"));
}

/// Private changes run one at a time, each validated against the groups the one
/// before left; past [`MAX_QUEUED_PRIVATE`] waiting, a change is refused as busy.
#[test]
fn private_changes_run_one_at_a_time_on_what_the_one_before_left() {
    let mut sim = cluster();
    sim.hold(C, Hold::Private);
    let first = sim.create_private(C, "p1", 1);
    let second = sim.create_private(C, "p2", 2);
    assert!(sim.run_until(1_000, |s| s.held(C) == 1));
    let mut more = Vec::new();
    for i in 0..MAX_QUEUED_PRIVATE - 1 {
        more.push(sim.create_private(C, &format!("q{i}"), 1));
    }
    let refused = sim.create_private(C, "over", 1);
    assert_eq!(
        answer(&mut sim, C, refused),
        Err(format!(
            "node c: {MAX_QUEUED_PRIVATE} private changes are waiting already; retry"
        ))
    );
    sim.release(C);
    assert_eq!(answer(&mut sim, C, first), Ok(()));
    assert_eq!(answer(&mut sim, C, second), Ok(()));
    for r in more {
        assert_eq!(answer(&mut sim, C, r), Ok(()));
    }
    let p = sim.private_disk(C);
    assert_eq!(p.seq, MAX_QUEUED_PRIVATE as u64 + 1);
    assert!(p.groups.contains_key("p1") && p.groups.contains_key("p2"));
    assert_eq!(sim.node(C).kernel.private, *p);
    settle(&mut sim);
}

/// c's coordinator is killed and restarted after a private change and a shared
/// one: its data plane kept serving the private group, the restarted core reads it
/// back from c's disks and the next private change builds on it.
#[test]
fn a_restarted_coordinator_builds_on_the_private_groups_its_disks_hold() {
    let mut sim = cluster();
    let r = sim.create_private(C, "p1", 1);
    assert_eq!(answer(&mut sim, C, r), Ok(()));
    let r = sim.create(A, "dg1", 1);
    assert_eq!(answer(&mut sim, A, r), Ok(()));
    sim.crash_coordinator(C);
    assert!(sim.node(C).kernel.private.groups.contains_key("p1"));
    sim.start(C);
    assert_eq!(
        sim.core(C).map(|c| c.private().clone()),
        Some(sim.private_disk(C).clone())
    );
    let r = sim.create_private(C, "p2", 1);
    assert_eq!(answer(&mut sim, C, r), Ok(()));
    settle(&mut sim);
    let k = &sim.node(C).kernel;
    assert!(k.private.groups.contains_key("p1") && k.private.groups.contains_key("p2"));
    assert!(k.active.groups.contains_key("dg1"));
}

/// The narrower window: c's local check of a shared change has passed, the change
/// is not staged yet (b's check is held), and a private change on c wants the same
/// disk. It waits for the shared change to end (waiting only while a layout is
/// staged, as the daemon once did, lets it commit first: then c would commit the
/// shared change beside a private group on the same disk), and is refused.
#[test]
fn a_private_change_between_a_shared_changes_check_and_its_prepare_waits() {
    const B: u32 = 2;
    let mut sim = cluster();
    sim.hold(B, Hold::LocalCheck);
    let shared = sim.create(A, "dg1", 1);
    assert!(sim.run_until(1_000, |s| s.held(B) == 1));
    sim.run_for(50);
    assert!(sim.node(C).kernel.staged.is_none(), "nothing staged yet");
    let private = sim.create_private(C, "dg1", 1);
    sim.run_for(100);
    sim.release(B);
    assert_eq!(answer(&mut sim, A, shared), Ok(()));
    assert_eq!(
        answer(&mut sim, C, private),
        Err(
            "node c: disk group dg1 exists as a private disk group in the cluster's configuration"
                .into()
        )
    );
    settle(&mut sim);
}
