//! The coordinator's clock: `CLOCK_BOOTTIME`, the clock of the data-plane lease.
//!
//! The core's milliseconds (heartbeat stamps, leases, timeouts) count from the start
//! on `CLOCK_BOOTTIME`, which goes on counting while the system is suspended
//! (`CLOCK_MONOTONIC`, behind `Instant`, stops): a node resumed from a suspend sees
//! the time the other nodes saw pass and its lease ended, instead of serving on
//! with a lease the cluster has waited out. (It does not count that time as its
//! peers' silence: the core's `count_out_own_stall`.) The data plane's lease
//! deadline (`renewLeaseUntil`) is on the same clock, which both processes share
//! (one host, one boot, one time namespace: docs/KERNEL_INTERFACE.md).
//! The driver's own deadlines stay `Instant`s, converted from the core's clock at
//! the moment they are handed over ([`CoreClock::instant_at`]).

use std::time::{Duration, Instant};

/// The host's `CLOCK_BOOTTIME` in nanoseconds; None if it cannot be read (not on
/// Linux 2.6.39 or later).
pub fn boottime_ns() -> Option<u64> {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    let secs = u64::try_from(t.tv_sec()).ok()?;
    let nanos = u64::try_from(t.tv_nsec()).ok()?;
    Some(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// Milliseconds since this start, on `CLOCK_BOOTTIME` (on the monotonic clock if
/// that could not be read at the start).
#[derive(Clone, Copy, Debug)]
pub struct CoreClock {
    start: Instant,
    /// `CLOCK_BOOTTIME` at the start.
    boot_start_ns: Option<u64>,
}

impl CoreClock {
    /// A clock that reads 0 now.
    pub fn start() -> CoreClock {
        let boot_start_ns = boottime_ns();
        if boot_start_ns.is_none() {
            log::warn!(
                "cannot read CLOCK_BOOTTIME: the coordinator's clock is the monotonic one, which stops while the system is suspended"
            );
        }
        CoreClock {
            start: Instant::now(),
            boot_start_ns,
        }
    }

    /// Milliseconds since the start.
    pub fn now_ms(&self) -> u64 {
        match (self.boot_start_ns, self.boot_start_ns.and(boottime_ns())) {
            (Some(start), Some(now)) => now.saturating_sub(start) / 1_000_000,
            _ => u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// The `Instant` at which this clock reads `ms`, converted now (a deadline
    /// already past is now); None if too far to represent.
    pub fn instant_at(&self, ms: u64) -> Option<Instant> {
        let now = Instant::now();
        now.checked_add(Duration::from_millis(ms.saturating_sub(self.now_ms())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_core_clock_counts_from_its_start() {
        let c = CoreClock::start();
        assert!(
            boottime_ns().is_some(),
            "CLOCK_BOOTTIME is readable on Linux"
        );
        let t0 = c.now_ms();
        std::thread::sleep(Duration::from_millis(20));
        let t1 = c.now_ms();
        assert!(t1 >= t0 + 20, "{t0} then {t1}");
        let at = c.instant_at(t1 + 1000).unwrap();
        let ahead = at.saturating_duration_since(Instant::now());
        assert!(ahead <= Duration::from_millis(1000), "{ahead:?}");
        assert!(c.instant_at(0).unwrap() <= Instant::now());
    }
}
