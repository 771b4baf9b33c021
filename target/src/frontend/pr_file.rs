//! Where a frontend keeps the reservations of a LUN or namespace that the cluster
//! does not keep (standalone targets): one JSON file per object in the frontend's
//! `pr_dir`, named after the object with anything but `[A-Za-z0-9.-]` replaced.

use std::path::{Path, PathBuf};

/// The reservation file of the object named `stem` (e.g. `IQN-lun0`) in `dir`.
pub(crate) fn path(dir: &Path, stem: &str) -> PathBuf {
    let safe: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    dir.join(format!("{safe}.pr.json"))
}

/// Removes the reservation file of an object that is gone (`what` names it in the
/// log line); a file that does not exist is fine.
pub(crate) fn remove(path: &Path, what: &str) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!(
            "{what}: cannot remove reservation file {}: {e}",
            path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_safe_and_removal_of_a_missing_file_is_quiet() {
        let p = path(Path::new("/tmp/x"), "iqn.2026-01.a:b/c-lun0");
        assert_eq!(p, Path::new("/tmp/x/iqn.2026-01.a_b_c-lun0.pr.json"));
        remove(Path::new("/nonexistent-dir/none.pr.json"), "test");
    }
}
