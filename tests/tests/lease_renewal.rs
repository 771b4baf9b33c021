//! The data-plane lease is renewed with an absolute deadline: a coordinator stalled
//! between computing a renewal and sending it (here the `lease.renew` failpoint; in
//! life SIGSTOP, a paused VM, a long page fault) never gives its data plane more
//! lease than the coordinator itself holds.

use std::time::{Duration, Instant};

use plexd_target::lease::LeaseState;
use plexd_tests::{Cluster, ClusterOpts};

/// The lease of the test cluster.
const LEASE_MS: u64 = 4000;
/// How long the lease thread stalls between taking a lease and sending it.
const STALL_MS: u64 = 2000;
/// How long the data plane's lease is watched: several renewals.
const WATCH: Duration = Duration::from_millis(4 * STALL_MS);
/// Between two looks at the data plane's lease.
const SAMPLE: Duration = Duration::from_millis(20);

#[test]
fn a_stalled_renewal_does_not_extend_the_data_plane_lease() {
    let opts = ClusterOpts {
        lease_ms: LEASE_MS,
        init_disks: false,
        ..ClusterOpts::default()
    }
    .failpoint(0, &format!("lease.renew:sleep={STALL_MS}"));
    let c = Cluster::start(1, opts);
    let k = c.kernel(0);
    // Every renewal reaches the data plane STALL_MS after the coordinator computed
    // it, when the coordinator's own lease has at most LEASE_MS - STALL_MS left (a
    // one-node cluster's master confirms itself every tick: about that much). A
    // renewal measured from its arrival would leave the data plane about LEASE_MS.
    // Half the stall is left for the tick, the call and the sampling.
    let bound_ms = LEASE_MS - STALL_MS / 2;
    let end = Instant::now() + WATCH;
    let (mut most_ms, mut valid_seen) = (0u64, 0usize);
    while Instant::now() < end {
        let st = k.lease_status().expect("leaseStatus");
        if st.state == LeaseState::Valid {
            valid_seen += 1;
            most_ms = most_ms.max(st.remaining_ms);
        }
        std::thread::sleep(SAMPLE);
    }
    eprintln!("most lease seen on the data plane: {most_ms} ms (bound {bound_ms} ms)");
    assert!(
        valid_seen > 0,
        "the data plane was never given a lease in {WATCH:?}"
    );
    assert!(
        most_ms <= bound_ms,
        "the data plane held {most_ms} ms of lease after a renewal stalled {STALL_MS} ms: \
         more than the {bound_ms} ms the coordinator could still have held (lease {LEASE_MS} ms)"
    );
}
