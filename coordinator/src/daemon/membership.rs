//! The membership record: a small node-local file saying until when this node may
//! have been a member of a view, so that the next start of plexd knows whether it
//! may have confirmed a master's lease just before it died (the core's
//! `NodeConfig::member_ago_at_start_ms`, `Action::RecordMembership`).
//!
//! The file holds one line: the boot id (`/proc/sys/kernel/random/boot_id`), the
//! time in milliseconds on `CLOCK_BOOTTIME` and on the wall clock until which the
//! node may be a member. The same boot compares `CLOCK_BOOTTIME` (monotonic, counts
//! suspend); another boot compares the wall clock. The file is replaced by rename,
//! never fsynced: it matters across a restart of the process, and a reboot that
//! loses it takes longer than a lease (a missing file means "never a member").
//! An unreadable or torn file counts as "a member until now" (the safe side).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where node `id` keeps its record: its `state_dir` when it has one, else next
/// to its data plane's socket.
pub fn record_path(state_dir: Option<&Path>, target_socket: &Path, id: u32) -> PathBuf {
    let dir = state_dir
        .map(Path::to_path_buf)
        .or_else(|| target_socket.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."));
    dir.join(format!("plexd-node-{id}.membership"))
}

/// The clocks a record is written and read with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Clocks {
    /// This boot's id.
    pub boot_id: String,
    /// `CLOCK_BOOTTIME`, milliseconds.
    pub boot_ms: u64,
    /// The wall clock, milliseconds since the epoch.
    pub wall_ms: u64,
}

impl Clocks {
    /// The clocks now.
    pub fn now() -> Clocks {
        let boot_id = fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let boot_ms = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
            .map(|t| (t.tv_sec() as u64) * 1000 + (t.tv_nsec() as u64) / 1_000_000)
            .unwrap_or(0);
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Clocks {
            boot_id,
            boot_ms,
            wall_ms,
        }
    }
}

/// The record's line for "a member until `ahead_ms` after `now`".
fn encode(now: &Clocks, ahead_ms: u64) -> String {
    format!(
        "{} {} {}\n",
        now.boot_id,
        now.boot_ms + ahead_ms,
        now.wall_ms + ahead_ms
    )
}

/// How long before `now` the record's node may last have been a member (0: it may
/// still have been at `now`); None when there is no record.
pub fn ago_ms(text: Option<&str>, now: &Clocks) -> Option<u64> {
    let text = text?;
    let mut fields = text.split_whitespace();
    let parsed = (|| {
        let boot_id = fields.next()?;
        let boot_ms: u64 = fields.next()?.parse().ok()?;
        let wall_ms: u64 = fields.next()?.parse().ok()?;
        Some((boot_id, boot_ms, wall_ms))
    })();
    let Some((boot_id, boot_ms, wall_ms)) = parsed else {
        return Some(0);
    };
    if !boot_id.is_empty() && boot_id == now.boot_id {
        Some(now.boot_ms.saturating_sub(boot_ms))
    } else {
        Some(now.wall_ms.saturating_sub(wall_ms))
    }
}

/// Reads the record at `path` (see [`ago_ms`]).
pub fn read_ago_ms(path: &Path) -> Option<u64> {
    match fs::read_to_string(path) {
        Ok(text) => ago_ms(Some(&text), &Clocks::now()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            log::warn!(
                "membership record {}: {e}; counting this node as a member until now",
                path.display()
            );
            Some(0)
        }
    }
}

/// Records at `path` that this node may be a member for `ahead_ms` from now.
pub fn write(path: &Path, ahead_ms: u64) -> io::Result<()> {
    let tmp = temporary(path);
    fs::write(&tmp, encode(&Clocks::now(), ahead_ms))?;
    fs::rename(&tmp, path)
}

/// Whether a record can be written next to `path` (its directory is created if
/// missing; the file [`write`] renames into place is created and removed; the
/// record itself is left as it is: a start reads it first). A node that cannot
/// record its membership must not become a member.
pub fn check_writable(path: &Path) -> Result<(), String> {
    let tmp = temporary(path);
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)
        .and_then(|()| fs::write(&tmp, b""))
        .and_then(|()| fs::remove_file(&tmp))
        .map_err(|e| format!("cannot write the membership record {}: {e}", path.display()))
}

/// The file a record is written to before it is renamed to `path`.
fn temporary(path: &Path) -> PathBuf {
    path.with_extension("membership.tmp")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clocks(boot_id: &str, boot_ms: u64, wall_ms: u64) -> Clocks {
        Clocks {
            boot_id: boot_id.into(),
            boot_ms,
            wall_ms,
        }
    }

    #[test]
    fn a_record_that_cannot_be_written_is_found_before_the_record_is_touched() {
        let dir =
            std::env::temp_dir().join(format!("plexd-membership-probe-{}", std::process::id()));
        let path = dir.join("plexd-node-1.membership");
        // A state directory that does not exist yet is made.
        assert_eq!(check_writable(&path), Ok(()));
        write(&path, 5_000).unwrap();
        let before = fs::read_to_string(&path).unwrap();
        assert_eq!(check_writable(&path), Ok(()));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            before,
            "the record is kept"
        );
        assert!(
            !temporary(&path).exists(),
            "the probe leaves nothing behind"
        );
        // A directory where the record's temporary file goes: every write fails.
        fs::create_dir(temporary(&path)).unwrap();
        let e = check_writable(&path).unwrap_err();
        assert!(
            e.starts_with("cannot write the membership record") && e.contains("plexd-node-1"),
            "{e}"
        );
        assert!(write(&path, 5_000).is_err());
        assert_eq!(fs::read_to_string(&path).unwrap(), before);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_same_boot_counts_on_the_boot_clock_another_on_the_wall_clock() {
        let then = clocks("b1", 10_000, 1_000_000);
        let line = encode(&then, 5_000);
        // Same boot: 20 s of boot time later, 5 s past the record's end.
        assert_eq!(
            ago_ms(Some(&line), &clocks("b1", 20_000, 9_000_000)),
            Some(5_000)
        );
        // Still inside the record: a member until now.
        assert_eq!(ago_ms(Some(&line), &clocks("b1", 12_000, 0)), Some(0));
        // Another boot: the wall clock decides.
        assert_eq!(
            ago_ms(Some(&line), &clocks("b2", 1, 1_007_000)),
            Some(2_000)
        );
    }

    #[test]
    fn no_record_is_never_a_member_and_a_torn_one_is_a_member_until_now() {
        let now = clocks("b1", 1, 1);
        assert_eq!(ago_ms(None, &now), None);
        assert_eq!(ago_ms(Some("b1 12"), &now), Some(0));
        assert_eq!(ago_ms(Some(""), &now), Some(0));
    }

    #[test]
    fn a_written_record_reads_back_as_a_member_until_now() {
        let dir = std::env::temp_dir().join(format!("plexd-membership-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = record_path(Some(&dir), Path::new("/nonexistent/t.sock"), 7);
        assert_eq!(read_ago_ms(&path), None);
        write(&path, 60_000).unwrap();
        assert_eq!(read_ago_ms(&path), Some(0));
        fs::remove_dir_all(&dir).unwrap();
    }
}
