//! Waiting on a condition with a deadline: the only way the tests wait.

use std::time::{Duration, Instant};

/// First pause between two polls; doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(10);
/// Longest pause between two polls.
const MAX_POLL: Duration = Duration::from_millis(200);

/// Polls `cond` until it returns `Ok`, or `timeout` passes: then `Err` naming `desc`,
/// the time waited and the last reason `cond` gave.
pub fn try_wait_until<T>(
    desc: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    let start = Instant::now();
    let mut pause = FIRST_POLL;
    loop {
        let last = match cond() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(format!(
                "timed out after {} ms waiting for {desc}: {last}",
                waited.as_millis()
            ));
        }
        std::thread::sleep(pause.min(timeout - waited));
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// Like [`try_wait_until`], failing the test on timeout.
pub fn wait_until<T>(desc: &str, timeout: Duration, cond: impl FnMut() -> Result<T, String>) -> T {
    match try_wait_until(desc, timeout, cond) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}
