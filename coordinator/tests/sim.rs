//! The protocol core under the deterministic simulator: focused scenarios, one per
//! rule of docs/PROTOCOL.md, and many random seeds with crashes, restarts and joins.
//!
//! `PLEXD_SIM_SEED=N` runs that one seed (with its trace on failure);
//! `PLEXD_SIM_SEEDS=N` changes how many seeds the random test runs.

use plexd_coordinator::core::Role;
use plexd_coordinator::sim::{run_seed, Sim};
use std::time::Instant;

/// Seeds the random test runs by default.
const DEFAULT_SEEDS: u64 = 300;
/// Steps of 10 ms of simulated time per seed.
const STEPS_PER_SEED: u64 = 400;

#[test]
fn random_schedules_keep_the_invariants() {
    let started = Instant::now();
    let seeds: Vec<u64> = match std::env::var("PLEXD_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("PLEXD_SIM_SEED is a number")],
        Err(_) => {
            let n = std::env::var("PLEXD_SIM_SEEDS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(DEFAULT_SEEDS);
            (0..n).collect()
        }
    };
    let (mut events, mut acked, mut failed) = (0, 0, 0);
    for &seed in &seeds {
        match run_seed(seed, STEPS_PER_SEED) {
            Ok(s) => {
                events += s.events;
                acked += s.acked;
                failed += s.failed;
            }
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!(
        "simulator: {} seeds × {STEPS_PER_SEED} steps, {events} events, {acked} changes acknowledged, {failed} refused, in {:.1} s",
        seeds.len(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn cluster_forms_with_one_master() {
    let sim = Sim::cluster(3, 1);
    let m = sim.master().unwrap();
    assert_eq!(sim.core(m).unwrap().role(), Role::Master);
}
