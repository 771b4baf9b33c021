//! The invariants of a disk group, checked after every change and on every load.

use std::collections::BTreeSet;

use super::*;

impl DiskGroupConfig {
    /// Checks every invariant: names valid and unique, subdisks inside their disk's
    /// public region and not overlapping, aligned, columns contiguous and long enough,
    /// plexes of a volume (and columns of a stripe) on distinct disks, at least one
    /// disk.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| {
            Err(ConfigError::Invalid(format!(
                "disk group {}: {msg}",
                self.name
            )))
        };
        validate_name("disk group", &self.name)?;
        if self.disks.is_empty() {
            return invalid("has no disks".into());
        }
        let mut names = BTreeSet::new();
        let mut ids = BTreeSet::new();
        for d in &self.disks {
            validate_name("disk", &d.name)?;
            if !names.insert(d.name.as_str()) || !ids.insert(d.id.as_str()) {
                return invalid(format!("disk {} (id {}) appears twice", d.name, d.id));
            }
            let end = d.public_offset_bytes.checked_add(d.public_len_bytes);
            if !matches!(end, Some(end) if end <= d.size_bytes) {
                return invalid(format!(
                    "disk {}: public region beyond the end of the disk",
                    d.name
                ));
            }
        }
        let mut extents: Vec<(&str, u64, u64, &str)> = Vec::new();
        let mut object_names = BTreeSet::new();
        for v in &self.volumes {
            validate_name("volume", &v.name)?;
            if !object_names.insert(v.name.as_str()) {
                return invalid(format!("name {} used twice", v.name));
            }
            if v.size_bytes == 0 || !v.size_bytes.is_multiple_of(SECTOR_BYTES) {
                return invalid(format!(
                    "volume {}: size {} is not a positive multiple of 512",
                    v.name, v.size_bytes
                ));
            }
            if v.plexes.is_empty() || v.plexes.len() > MAX_PLEXES {
                return invalid(format!(
                    "volume {}: has {} plexes (1 to {MAX_PLEXES} allowed)",
                    v.name,
                    v.plexes.len()
                ));
            }
            let mut volume_disks = BTreeSet::new();
            for p in &v.plexes {
                validate_name("plex", &p.name)?;
                if !object_names.insert(p.name.as_str()) {
                    return invalid(format!("name {} used twice", p.name));
                }
                p.layout.validate()?;
                let columns = p.layout.columns();
                let mut plex_disks = BTreeSet::new();
                for c in 0..columns {
                    let mut expected_offset = 0;
                    let mut column_disks = BTreeSet::new();
                    let count = p.subdisks.iter().filter(|sd| sd.column == c).count();
                    if count > MAX_SUBDISKS_PER_COLUMN {
                        return invalid(format!(
                            "plex {}: column {c} has {count} subdisks, at most {MAX_SUBDISKS_PER_COLUMN}",
                            p.name
                        ));
                    }
                    for sd in p.subdisks.iter().filter(|sd| sd.column == c) {
                        if sd.plex_offset_bytes != expected_offset {
                            return invalid(format!(
                                "plex {}: subdisk {} is not contiguous in column {c}",
                                p.name, sd.name
                            ));
                        }
                        let Some(next) = expected_offset.checked_add(sd.len_bytes) else {
                            return invalid(format!("plex {}: column {c} overflows", p.name));
                        };
                        expected_offset = next;
                        column_disks.insert(sd.disk.as_str());
                    }
                    if !column_disks.is_disjoint(&plex_disks) {
                        return invalid(format!("plex {}: two columns share a disk", p.name));
                    }
                    plex_disks.extend(column_disks);
                }
                if let Some(sd) = p.subdisks.iter().find(|sd| sd.column >= columns) {
                    return invalid(format!(
                        "plex {}: subdisk {} in column {} of {columns}",
                        p.name, sd.name, sd.column
                    ));
                }
                if !plex_disks.is_disjoint(&volume_disks) {
                    return invalid(format!(
                        "volume {}: plex {} shares a disk with another plex",
                        v.name, p.name
                    ));
                }
                volume_disks.extend(plex_disks);
                if p.capacity_bytes() < v.size_bytes {
                    return invalid(format!(
                        "plex {}: holds {} bytes, volume {} needs {}",
                        p.name,
                        p.capacity_bytes(),
                        v.name,
                        v.size_bytes
                    ));
                }
                for sd in &p.subdisks {
                    validate_name("subdisk", &sd.name)?;
                    if !object_names.insert(sd.name.as_str()) {
                        return invalid(format!("name {} used twice", sd.name));
                    }
                    let Some(d) = self.disk(&sd.disk) else {
                        return invalid(format!(
                            "subdisk {}: disk {} is not in the group",
                            sd.name, sd.disk
                        ));
                    };
                    let aligned = sd.disk_offset_bytes.is_multiple_of(ALLOC_ALIGN_BYTES)
                        && sd.len_bytes.is_multiple_of(ALLOC_ALIGN_BYTES)
                        && sd.len_bytes > 0;
                    let inside = sd.disk_offset_bytes >= d.public_offset_bytes
                        && sd
                            .disk_offset_bytes
                            .checked_add(sd.len_bytes)
                            .is_some_and(|end| end <= d.public_offset_bytes + d.public_len_bytes);
                    if !aligned || !inside {
                        return invalid(format!("subdisk {}: extent {}+{} is unaligned or outside disk {}'s public region", sd.name, sd.disk_offset_bytes, sd.len_bytes, d.name));
                    }
                    extents.push((
                        sd.disk.as_str(),
                        sd.disk_offset_bytes,
                        sd.len_bytes,
                        sd.name.as_str(),
                    ));
                }
            }
        }
        extents.sort();
        for pair in extents.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            if a.0 == b.0 && a.1 + a.2 > b.1 {
                return invalid(format!(
                    "subdisks {} and {} overlap on disk {}",
                    a.3, b.3, a.0
                ));
            }
        }
        Ok(())
    }
}
