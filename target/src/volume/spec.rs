//! Volume layouts as the controller describes them (names and numbers: the spec
//! types of plexd-target-api, re-exported here), and their resolution against a
//! target's bdevs into a [`Layout`] the reactors can use.
//! The mapping of a volume offset to subdisks is in [`Layout`]'s plexes
//! ([`PlexMap::map`]), pure and unit-tested.

pub use plexd_target_api::volume::{
    PlexKind, PlexSpec, PlexState, ReadPolicy, SubdiskSpec, VolumeSpec, MAX_COLUMNS, MAX_PLEXES,
    MAX_SUBDISKS_PER_COLUMN,
};

use std::sync::Arc;

use crate::bdev::Bdev;
use crate::error::TargetError;
use crate::services::Services;

/// A subdisk resolved to its bdev.
#[derive(Clone)]
pub struct Subdisk {
    /// The bdev.
    pub bdev: Arc<dyn Bdev>,
    /// Start on the bdev.
    pub offset_bytes: u64,
    /// Length.
    pub len_bytes: u64,
}

/// Geometry of a plex, without the bdevs: what the mapping needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlexMap {
    /// Concat or stripe.
    pub kind: PlexKind,
    /// Per column, the lengths of its subdisks in order.
    pub columns: Vec<Vec<u64>>,
}

impl PlexMap {
    /// Usable bytes of the plex.
    pub fn len_bytes(&self) -> u64 {
        match self.kind {
            PlexKind::Concat => self.columns.iter().flatten().sum(),
            PlexKind::Stripe { stripe_unit_bytes } => {
                let min_col: u64 = self
                    .columns
                    .iter()
                    .map(|c| c.iter().sum::<u64>())
                    .min()
                    .unwrap_or(0);
                (min_col / stripe_unit_bytes) * stripe_unit_bytes * self.columns.len() as u64
            }
        }
    }

    /// Splits `[offset, offset+len)` of the plex into pieces, calling
    /// `f(column, subdisk_index, offset_in_subdisk, offset_in_request, len)` for each,
    /// in ascending request order. The range must lie within [`PlexMap::len_bytes`].
    pub fn map(&self, offset: u64, len: u64, mut f: impl FnMut(usize, usize, u64, u64, u64)) {
        let mut done = 0u64;
        while done < len {
            let off = offset + done;
            let (col, col_off, room) = match self.kind {
                PlexKind::Concat => (0, off, len - done),
                PlexKind::Stripe {
                    stripe_unit_bytes: su,
                } => {
                    let ncols = self.columns.len() as u64;
                    let unit = off / su;
                    let within = off % su;
                    let row = unit / ncols;
                    let col = (unit % ncols) as usize;
                    (col, row * su + within, (su - within).min(len - done))
                }
            };
            // Walk the column's subdisks to the one holding col_off.
            let mut start = 0u64;
            let mut mapped = false;
            for (i, &sd_len) in self.columns[col].iter().enumerate() {
                if col_off < start + sd_len {
                    let in_sd = col_off - start;
                    let piece = room.min(sd_len - in_sd);
                    f(col, i, in_sd, done, piece);
                    done += piece;
                    mapped = true;
                    break;
                }
                start += sd_len;
            }
            assert!(
                mapped,
                "plex map: offset {off} beyond the plex (caller checks the range)"
            );
        }
    }
}

/// A resolved plex.
#[derive(Clone)]
pub struct Plex {
    /// Name.
    pub name: Arc<str>,
    /// State.
    pub state: PlexState,
    /// Geometry.
    pub map: PlexMap,
    /// Subdisks per column, parallel to `map.columns`.
    pub columns: Vec<Vec<Subdisk>>,
}

/// A resolved volume layout, shared by every reactor.
#[derive(Clone)]
pub struct Layout {
    /// The spec it came from.
    pub spec: VolumeSpec,
    /// Block size of the volume (largest of its bdevs').
    pub block_size: u32,
    /// Plexes in spec order.
    pub plexes: Vec<Plex>,
    /// The dirty region log's state (`spec.log`), attached by the volume registry
    /// after resolution (it outlives layouts that keep the same log spec).
    pub(crate) drl: Option<Arc<super::drl::DrlShared>>,
}

impl Layout {
    /// Validates `spec` and resolves its bdevs in `target`.
    pub fn resolve(target: &Services, spec: &VolumeSpec) -> Result<Layout, TargetError> {
        let bad = |reason: String| TargetError::invalid(format!("volume {}", spec.name), reason);
        if spec.plexes.is_empty() || spec.plexes.len() > MAX_PLEXES {
            return Err(bad(format!(
                "needs 1..{MAX_PLEXES} plexes, got {}",
                spec.plexes.len()
            )));
        }
        if spec.size_bytes == 0 {
            return Err(bad("size must be above zero".into()));
        }
        let mut plexes = Vec::new();
        let mut block_size = 512u32;
        for (i, p) in spec.plexes.iter().enumerate() {
            if spec.plexes[..i].iter().any(|q| q.name == p.name) {
                return Err(bad(format!("plex {} appears twice", p.name)));
            }
            plexes.push(resolve_plex(target, spec, p, &mut block_size)?);
        }
        if let ReadPolicy::Prefer(p) = &spec.read_policy {
            if !spec.plexes.iter().any(|q| &q.name == p) {
                return Err(bad(format!(
                    "read policy prefers plex {p}, which is not in the volume"
                )));
            }
        }
        if !spec.size_bytes.is_multiple_of(block_size as u64) {
            return Err(bad(format!(
                "size {} is not a multiple of the block size {block_size}",
                spec.size_bytes
            )));
        }
        if !plexes.iter().any(|p| p.state == PlexState::Active) {
            return Err(bad("needs at least one ACTIVE plex".into()));
        }
        if let Some(log) = &spec.log {
            super::drl::DrlShared::check(target, &spec.name, spec.size_bytes, log)?;
        }
        Ok(Layout {
            spec: spec.clone(),
            block_size,
            plexes,
            drl: None,
        })
    }

    /// Names of the bdevs this layout uses (its dirty region log's included).
    pub fn bdev_names(&self) -> impl Iterator<Item = &str> {
        self.spec
            .plexes
            .iter()
            .flat_map(|p| p.columns.iter().flatten().map(|s| s.bdev.as_str()))
            .chain(
                self.spec
                    .log
                    .iter()
                    .flat_map(|l| l.copies.iter().map(|c| c.bdev.as_str())),
            )
    }
}

/// Checks plex `p` of `spec` (its kind's column rules, its subdisks, its length
/// against the volume size) and resolves its subdisks' bdevs; raises
/// `block_size` to the largest block size among them.
fn resolve_plex(
    target: &Services,
    spec: &VolumeSpec,
    p: &PlexSpec,
    block_size: &mut u32,
) -> Result<Plex, TargetError> {
    let pname = format!("plex {}", p.name);
    let bad = |reason: String| TargetError::invalid(format!("volume {}", spec.name), reason);
    let ncols = p.columns.len();
    match p.kind {
        PlexKind::Concat if ncols != 1 => {
            return Err(bad(format!(
                "{pname}: a concat plex has exactly one column, got {ncols}"
            )))
        }
        PlexKind::Stripe { stripe_unit_bytes } => {
            if !(1..=MAX_COLUMNS).contains(&ncols) {
                return Err(bad(format!(
                    "{pname}: a stripe needs 1..{MAX_COLUMNS} columns, got {ncols}"
                )));
            }
            if stripe_unit_bytes == 0 || stripe_unit_bytes % 512 != 0 {
                return Err(bad(format!(
                    "{pname}: stripe unit {stripe_unit_bytes} is not a positive multiple of 512"
                )));
            }
        }
        _ => {}
    }
    let mut cols = Vec::new();
    let mut lens = Vec::new();
    for c in &p.columns {
        if c.is_empty() || c.len() > MAX_SUBDISKS_PER_COLUMN {
            return Err(bad(format!(
                "{pname}: each column needs 1..{MAX_SUBDISKS_PER_COLUMN} subdisks, got {}",
                c.len()
            )));
        }
        let sds = c
            .iter()
            .map(|sd| resolve_subdisk(target, sd, block_size, |r| bad(format!("{pname}: {r}"))))
            .collect::<Result<Vec<_>, _>>()?;
        lens.push(sds.iter().map(|sd| sd.len_bytes).collect());
        cols.push(sds);
    }
    let map = PlexMap {
        kind: p.kind,
        columns: lens,
    };
    if map.len_bytes() < spec.size_bytes {
        return Err(bad(format!(
            "{pname} holds {} bytes, less than the volume size {}",
            map.len_bytes(),
            spec.size_bytes
        )));
    }
    Ok(Plex {
        name: Arc::from(p.name.as_str()),
        state: p.state,
        map,
        columns: cols,
    })
}

/// Resolves one subdisk's bdev and checks that the subdisk is block-aligned and
/// fits it; raises `block_size` to the bdev's. A bdev that does not exist is the
/// registry's error; a subdisk that does not fit is `misfit(reason)`.
fn resolve_subdisk(
    target: &Services,
    sd: &SubdiskSpec,
    block_size: &mut u32,
    misfit: impl Fn(String) -> TargetError,
) -> Result<Subdisk, TargetError> {
    let bdev = target.bdev(&sd.bdev)?;
    let bs = bdev.block_size();
    *block_size = (*block_size).max(bs);
    let end = sd.offset_bytes.checked_add(sd.len_bytes);
    if sd.len_bytes == 0
        || !sd.offset_bytes.is_multiple_of(bs as u64)
        || !sd.len_bytes.is_multiple_of(bs as u64)
        || end.is_none_or(|e| e > bdev.size_bytes())
    {
        return Err(misfit(format!(
            "subdisk {}@{}+{} is not block-aligned or does not fit bdev {} ({} bytes)",
            sd.bdev,
            sd.offset_bytes,
            sd.len_bytes,
            sd.bdev,
            bdev.size_bytes()
        )));
    }
    Ok(Subdisk {
        bdev,
        offset_bytes: sd.offset_bytes,
        len_bytes: sd.len_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(m: &PlexMap, off: u64, len: u64) -> Vec<(usize, usize, u64, u64, u64)> {
        let mut v = Vec::new();
        m.map(off, len, |c, s, o, r, l| v.push((c, s, o, r, l)));
        v
    }

    #[test]
    fn concat_maps_within_and_across_subdisks() {
        let m = PlexMap {
            kind: PlexKind::Concat,
            columns: vec![vec![4096, 8192, 4096]],
        };
        assert_eq!(m.len_bytes(), 16384);
        assert_eq!(collect(&m, 0, 4096), vec![(0, 0, 0, 0, 4096)]);
        assert_eq!(
            collect(&m, 2048, 4096),
            vec![(0, 0, 2048, 0, 2048), (0, 1, 0, 2048, 2048)]
        );
        assert_eq!(
            collect(&m, 0, 16384),
            vec![
                (0, 0, 0, 0, 4096),
                (0, 1, 0, 4096, 8192),
                (0, 2, 0, 12288, 4096)
            ]
        );
        assert_eq!(
            collect(&m, 16384 - 512, 512),
            vec![(0, 2, 4096 - 512, 0, 512)]
        );
    }

    #[test]
    fn stripe_maps_units_round_robin() {
        let m = PlexMap {
            kind: PlexKind::Stripe {
                stripe_unit_bytes: 1024,
            },
            columns: vec![vec![4096], vec![4096], vec![4096]],
        };
        assert_eq!(m.len_bytes(), 12288);
        // unit 0 -> col 0 row 0, unit 1 -> col 1, unit 2 -> col 2, unit 3 -> col 0 row 1.
        assert_eq!(collect(&m, 0, 512), vec![(0, 0, 0, 0, 512)]);
        assert_eq!(collect(&m, 1024, 1024), vec![(1, 0, 0, 0, 1024)]);
        assert_eq!(
            collect(&m, 3072 + 512, 512),
            vec![(0, 0, 1024 + 512, 0, 512)]
        );
        assert_eq!(
            collect(&m, 512, 3072),
            vec![
                (0, 0, 512, 0, 512),
                (1, 0, 0, 512, 1024),
                (2, 0, 0, 1536, 1024),
                (0, 0, 1024, 2560, 512)
            ]
        );
    }

    #[test]
    fn stripe_column_spanning_subdisks_and_uneven_columns() {
        // Column 0 grew by a second subdisk; usable length follows the shortest column.
        let m = PlexMap {
            kind: PlexKind::Stripe {
                stripe_unit_bytes: 1024,
            },
            columns: vec![vec![1024, 2048], vec![4096]],
        };
        assert_eq!(m.len_bytes(), 6144);
        // unit 2 = col 0 row 1 = col offset 1024 = second subdisk of column 0.
        assert_eq!(collect(&m, 2048, 1024), vec![(0, 1, 0, 0, 1024)]);
        // A unit that straddles nothing but a request that spans units and subdisks.
        assert_eq!(
            collect(&m, 1536, 1536),
            vec![(1, 0, 512, 0, 512), (0, 1, 0, 512, 1024)]
        );
    }

    #[test]
    fn every_byte_maps_exactly_once() {
        let m = PlexMap {
            kind: PlexKind::Stripe {
                stripe_unit_bytes: 1536,
            },
            columns: vec![vec![3072, 1536], vec![4608], vec![1536, 1536, 1536]],
        };
        let total = m.len_bytes();
        let mut seen = std::collections::HashSet::new();
        for off in (0..total).step_by(512) {
            let v = collect(&m, off, 512);
            assert_eq!(v.len(), 1);
            let (c, s, o, _, l) = v[0];
            assert_eq!(l, 512);
            assert!(
                seen.insert((c, s, o)),
                "offset {off} maps onto a used place"
            );
        }
        // A whole-plex request yields the same set of places.
        let mut whole = std::collections::HashSet::new();
        m.map(0, total, |c, s, o, _, l| {
            for k in (0..l).step_by(512) {
                whole.insert((c, s, o + k));
            }
        });
        assert_eq!(seen, whole);
    }

    #[test]
    fn read_policy_parses() {
        assert_eq!(ReadPolicy::parse("round").unwrap(), ReadPolicy::Round);
        assert_eq!(
            ReadPolicy::parse("least-busy").unwrap(),
            ReadPolicy::LeastBusy
        );
        assert_eq!(
            ReadPolicy::parse("prefer:v1-02").unwrap(),
            ReadPolicy::Prefer("v1-02".into())
        );
        assert_eq!(
            ReadPolicy::parse("prefer v1-02").unwrap(),
            ReadPolicy::Prefer("v1-02".into())
        );
        assert!(ReadPolicy::parse("prefer").is_err());
        assert!(ReadPolicy::parse("fastest").is_err());
    }
}
