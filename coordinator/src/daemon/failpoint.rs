//! Failpoints of the daemon (`PLEXD_FAILPOINT`), for tests.
//!
//! - `<name>:exit` at a protocol failpoint of the core ([`crate::core::FAILPOINTS`]):
//!   the process exits at once when its core reaches the point, as under kill -9.
//! - `<name>:sleep=<ms>` at a driver point ([`DRIVER_FAILPOINTS`]): that action
//!   takes `ms` longer (a slow drain, a slow disk), at most [`MAX_FAILPOINT_SLEEP`].

use std::time::Duration;

/// Exit status of a failpoint exit (as a process killed by SIGKILL reports).
pub const FAILPOINT_EXIT_STATUS: i32 = 137;

/// Points of the driver that `<name>:sleep=<ms>` slows down:
/// `driver.kernel_prepare` (after the data plane staged a transaction, shared or a
/// private group's, its volumes
/// still quiesced: a slow drain), `driver.write_disks` (before a transaction's
/// configuration is written to the disks: a slow disk), `driver.kernel_commit`
/// (before the data plane applies a committed transaction: a node slow to take a
/// commit) and `lease.renew` (in the
/// lease thread, between taking the lease to renew and sending it to the data
/// plane: a process frozen mid-renewal) and `drl.read` (in the thread reading a
/// lost node start's dirty region log sections, before it reads: a slow disk, a
/// read pending while the process is frozen) and `peer.commit` (the control thread
/// stops before the core reads a COMMIT from its master: a process frozen with the
/// COMMIT unread; once, and not for the master's own bookkeeping transactions).
pub const DRIVER_FAILPOINTS: [&str; 6] = [
    "driver.kernel_prepare",
    "driver.kernel_commit",
    "driver.write_disks",
    "lease.renew",
    "drl.read",
    "peer.commit",
];

/// Longest sleep a failpoint may ask for.
pub const MAX_FAILPOINT_SLEEP: Duration = Duration::from_secs(60);

/// What a failpoint does when reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailAction {
    /// Exit at once with [`FAILPOINT_EXIT_STATUS`].
    Exit,
    /// Sleep that long, then go on.
    Sleep(Duration),
}

/// The failpoint armed in this process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failpoint {
    /// Its name (a core failpoint or one of [`DRIVER_FAILPOINTS`]).
    pub name: String,
    /// What it does.
    pub action: FailAction,
}

impl Failpoint {
    /// The exit failpoint `name`, if this one is it.
    pub fn exits_at(&self, name: &str) -> bool {
        self.name == name && self.action == FailAction::Exit
    }

    /// How long the driver point `name` sleeps, if this failpoint is it.
    pub fn sleep_at(&self, name: &str) -> Option<Duration> {
        match self.action {
            FailAction::Sleep(d) if self.name == name => Some(d),
            _ => None,
        }
    }
}

/// The failpoint selected by `PLEXD_FAILPOINT=<name>:exit` or
/// `PLEXD_FAILPOINT=<name>:sleep=<ms>`, if any; an unknown name or action is an error.
pub fn failpoint_from_env() -> Result<Option<Failpoint>, String> {
    let Ok(v) = std::env::var("PLEXD_FAILPOINT") else {
        return Ok(None);
    };
    parse(&v)
}

fn parse(v: &str) -> Result<Option<Failpoint>, String> {
    if v.is_empty() {
        return Ok(None);
    }
    let Some((name, action)) = v.split_once(':') else {
        return Err(format!(
            "PLEXD_FAILPOINT={v}: expected <name>:exit or <name>:sleep=<ms>"
        ));
    };
    let core = crate::core::FAILPOINTS.contains(&name);
    let driver = DRIVER_FAILPOINTS.contains(&name);
    if !core && !driver {
        return Err(format!(
            "PLEXD_FAILPOINT={v}: unknown failpoint {name} (known: {}; sleep only: {})",
            crate::core::FAILPOINTS.join(", "),
            DRIVER_FAILPOINTS.join(", ")
        ));
    }
    let action = if action == "exit" {
        if !core {
            return Err(format!(
                "PLEXD_FAILPOINT={v}: {name} is a driver point: only sleep=<ms>"
            ));
        }
        FailAction::Exit
    } else if let Some(ms) = action.strip_prefix("sleep=") {
        if !driver {
            return Err(format!(
                "PLEXD_FAILPOINT={v}: {name} is a protocol failpoint: only exit"
            ));
        }
        let ms: u64 = ms
            .parse()
            .map_err(|e| format!("PLEXD_FAILPOINT={v}: sleep={ms}: {e}"))?;
        let d = Duration::from_millis(ms);
        if d > MAX_FAILPOINT_SLEEP {
            return Err(format!(
                "PLEXD_FAILPOINT={v}: at most {} ms",
                MAX_FAILPOINT_SLEEP.as_millis()
            ));
        }
        FailAction::Sleep(d)
    } else {
        return Err(format!(
            "PLEXD_FAILPOINT={v}: unknown action {action} (exit, sleep=<ms>)"
        ));
    };
    Ok(Some(Failpoint {
        name: name.to_string(),
        action,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failpoints_are_checked() {
        assert_eq!(
            parse("txn.after_check:exit").unwrap(),
            Some(Failpoint {
                name: "txn.after_check".into(),
                action: FailAction::Exit
            })
        );
        let slow = parse("driver.kernel_prepare:sleep=2500").unwrap().unwrap();
        assert_eq!(
            slow.sleep_at("driver.kernel_prepare"),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(slow.sleep_at("driver.write_disks"), None);
        assert_eq!(
            parse("lease.renew:sleep=2000")
                .unwrap()
                .unwrap()
                .sleep_at("lease.renew"),
            Some(Duration::from_millis(2000))
        );
        assert!(!slow.exits_at("driver.kernel_prepare"));
        assert!(parse("txn.nowhere:exit").is_err());
        assert!(parse("txn.after_check:abort").is_err());
        assert!(parse("txn.after_check:sleep=10").is_err());
        assert!(parse("driver.write_disks:exit").is_err());
        assert!(parse("driver.write_disks:sleep=x").is_err());
        assert!(parse("driver.write_disks:sleep=600000").is_err());
        assert_eq!(parse("").unwrap(), None);
    }
}
