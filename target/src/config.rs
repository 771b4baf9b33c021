//! The standalone configuration file of `plexd-target` (TOML): reactors, the API
//! socket, bdevs and volumes created at start, so a target is useful without a
//! cluster (as SPDK's target is with its JSON config). `docs/examples/target.toml`
//! shows every key.
//!
//! ```toml
//! [target]
//! cores = "0,1"              # or cpumask = "0x3"
//! poll_mode = "adaptive"     # or "always"
//! reactor_nice = -10         # optional: the reactor threads' nice value
//! socket = "/run/plexd/target0.sock"
//!
//! [[bdevs]]
//! kind = "malloc"
//! name = "m0"
//! size = "1G"
//! block_size = 512
//!
//! [[volumes]]
//! name = "vol0"
//! size = "512M"
//! read_policy = "least-busy"
//! shared = false          # true: served only under the data-plane lease
//! plexes = [
//!   { name = "vol0-01", layout = "concat", subdisks = [{ bdev = "m0", offset = "0", length = "512M" }] },
//! ]
//! ```
//!
//! Loading: the file is parsed into a TOML tree, `--set key=value` overrides are
//! applied to the tree, then it is deserialised with unknown keys refused. Every error
//! reads `FILE:LINE: key: reason`. Applying creates the bdevs, then the volumes, in
//! file order; a failure names the entry and the object.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use toml::Spanned;

use crate::api::{BdevKind, BdevRequest, KernelService};
use crate::buf::PoolConfig;
use crate::frontend::iscsi::IscsiConfig;
use crate::frontend::nvmf::NvmfConfig;
use crate::reactor::{parse_cores, PollMode, ReactorConfig};
use crate::target::TargetError;
use crate::volume::{PlexKind, PlexSpec, PlexState, ReadPolicy, SubdiskSpec, VolumeSpec};
use plexd_proto::size::parse_size;

/// Largest configuration file read.
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// The socket used when neither the file nor the command line names one.
pub const DEFAULT_SOCKET: &str = "/run/plexd/target0.sock";

/// A configuration error: where, which key, why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file (or `--set`).
    pub file: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// The key, e.g. `bdevs[1].size`.
    pub key: String,
    /// Why it is refused.
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}: {}", self.file, self.key, self.reason),
            None => write!(f, "{}: {}: {}", self.file, self.key, self.reason),
        }
    }
}

// ---- value types ----

/// A byte count written as a number or a string with a K/M/G/T suffix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Size, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as 4096, \"64K\" or \"1G\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                u64::try_from(v)
                    .map(Size)
                    .map_err(|_| E::custom(format!("size {v} is negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                parse_size(v).map(Size).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Cores written as `"0,1,4-6"`, `"0x3"`, a number or a list of numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cores(pub Vec<usize>);

impl<'de> Deserialize<'de> for Cores {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cores, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cores;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("cores such as \"0,1\", \"2-5\", 0 or [0, 1]")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Cores, E> {
                Ok(Cores(vec![v as usize]))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Cores, E> {
                usize::try_from(v)
                    .map(|c| Cores(vec![c]))
                    .map_err(|_| E::custom(format!("core {v} is negative")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Cores, E> {
                parse_cores(v).map(Cores).map_err(E::custom)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Cores, A::Error> {
                let mut v = Vec::new();
                while let Some(c) = seq.next_element::<usize>()? {
                    v.push(c);
                }
                if v.is_empty() {
                    return Err(de::Error::custom("the core list is empty"));
                }
                v.sort_unstable();
                v.dedup();
                Ok(Cores(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// `concat` or `stripe`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayoutName {
    /// Subdisks one after another.
    #[default]
    Concat,
    /// Striped over columns.
    Stripe,
}

// ---- the file ----

/// `[target]`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSection {
    /// Cores, one reactor each.
    pub cores: Option<Cores>,
    /// The same as a hex mask.
    pub cpumask: Option<Spanned<String>>,
    /// `adaptive` (default) or `always`.
    pub poll_mode: Option<PollMode>,
    /// The reactor threads' nice value, -20..=19 (unset: inherited).
    pub reactor_nice: Option<Spanned<i32>>,
    /// The API socket.
    pub socket: Option<PathBuf>,
    /// Bytes of I/O buffers (the pool every reactor takes buffers from; resident
    /// while the target runs). Default 196 MiB.
    pub buffer_pool: Option<Spanned<Size>>,
}

/// One `[[bdevs]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BdevConfig {
    /// `null`, `malloc`, `uring` or `error`.
    pub kind: BdevKind,
    /// Unique name.
    pub name: Spanned<String>,
    /// Capacity (`null`, `malloc`).
    pub size: Option<Size>,
    /// Block size (default 512; the device's for `uring`).
    pub block_size: Option<Size>,
    /// File or block device (`uring`).
    pub path: Option<PathBuf>,
    /// The wrapped bdev (`error`).
    pub inner: Option<Spanned<String>>,
    /// `uring` through the page cache instead of O_DIRECT.
    #[serde(default)]
    pub buffered: bool,
}

/// A subdisk of a plex.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubdiskConfig {
    /// The bdev holding it.
    pub bdev: Spanned<String>,
    /// Start on the bdev (default 0).
    #[serde(default)]
    pub offset: Size,
    /// Length (default: the rest of the bdev).
    pub length: Option<Size>,
}

/// A plex of a volume.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlexConfig {
    /// Name (default `<volume>-NN`, NN from 01).
    pub name: Option<String>,
    /// `concat` (default) or `stripe`.
    #[serde(default)]
    pub layout: LayoutName,
    /// Stripe unit (stripe).
    pub stripe_unit: Option<Size>,
    /// Subdisks (concat).
    pub subdisks: Option<Vec<SubdiskConfig>>,
    /// Columns of subdisks (stripe).
    pub columns: Option<Vec<Vec<SubdiskConfig>>>,
    /// Initial state (default ACTIVE).
    pub state: Option<Spanned<String>>,
}

/// One `[[volumes]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeConfig {
    /// Unique name (also its bdev name).
    pub name: Spanned<String>,
    /// Size exposed to hosts.
    pub size: Size,
    /// `least-busy` (default), `round` or `prefer:<plex>`.
    pub read_policy: Option<Spanned<String>>,
    /// Served only under the data-plane lease (`renewLease` over the kernel
    /// interface); default false.
    #[serde(default)]
    pub shared: bool,
    /// Mirrors, 1..32.
    pub plexes: Vec<PlexConfig>,
}

/// The whole file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Reactors and socket.
    #[serde(default)]
    pub target: TargetSection,
    /// Bdevs, created in order.
    #[serde(default)]
    pub bdevs: Vec<BdevConfig>,
    /// Volumes, created in order after the bdevs.
    #[serde(default)]
    pub volumes: Vec<VolumeConfig>,
    /// `[iscsi]`: the iSCSI frontend (portal, target nodes, LUNs), started after the
    /// bdevs and volumes. See `docs/ISCSI.md`.
    #[serde(default)]
    pub iscsi: Option<IscsiConfig>,
    /// `[nvmf]`: the NVMe-oF/TCP frontend (listeners, subsystems, namespaces),
    /// started after the bdevs and volumes. See `docs/NVMF.md`.
    #[serde(default)]
    pub nvmf: Option<NvmfConfig>,
    #[serde(skip)]
    source: Source,
}

/// Where a configuration came from, to turn spans into lines.
#[derive(Clone, Debug, Default)]
struct Source {
    file: String,
    /// The file's text.
    original: String,
    /// The text deserialised, when `--set` overrides rewrote it.
    merged: Option<String>,
}

impl Source {
    fn err(&self, span: Option<Range<usize>>, key: &str, reason: impl Into<String>) -> ConfigError {
        let line = match (&self.merged, span) {
            (None, Some(s)) => Some(line_at(&self.original, s.start)),
            _ => line_of_key(&self.original, key),
        };
        ConfigError {
            file: self.file.clone(),
            line,
            key: key.to_string(),
            reason: reason.into(),
        }
    }
}

impl Config {
    /// Reads `path` and applies `overrides` (`key=value`, e.g. `target.cores=0`).
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let io_err = |reason: String| ConfigError {
            file: file.clone(),
            line: None,
            key: "(file)".into(),
            reason,
        };
        let meta = std::fs::metadata(path).map_err(|e| io_err(format!("cannot read: {e}")))?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(io_err(format!(
                "{} bytes is above the limit of {MAX_CONFIG_BYTES}",
                meta.len()
            )));
        }
        let text =
            std::fs::read_to_string(path).map_err(|e| io_err(format!("cannot read: {e}")))?;
        Config::parse(&file, &text, overrides)
    }

    /// Parses `text` (named `file` in errors) and applies `overrides`.
    pub fn parse(file: &str, text: &str, overrides: &[String]) -> Result<Config, ConfigError> {
        let mut source = Source {
            file: file.to_string(),
            original: text.to_string(),
            merged: None,
        };
        let mut cfg: Config = if overrides.is_empty() {
            toml::from_str(text).map_err(|e| de_error(&source, text, &e))?
        } else {
            let mut table: toml::Table = text.parse().map_err(|e| de_error(&source, text, &e))?;
            for o in overrides {
                apply_override(&mut table, o)?;
            }
            let merged = toml::to_string(&table).map_err(|e| ConfigError {
                file: file.to_string(),
                line: None,
                key: "--set".into(),
                reason: format!("cannot merge the overrides: {e}"),
            })?;
            let cfg = toml::from_str(&merged).map_err(|e| {
                let mut err = de_error(&source, &merged, &e);
                if let Some(o) = overrides.iter().find(|o| {
                    o.split_once('=')
                        .is_some_and(|(k, _)| normalise_key(k.trim()) == err.key)
                }) {
                    err.file = format!("--set {o}");
                    err.line = None;
                }
                err
            })?;
            source.merged = Some(merged);
            cfg
        };
        cfg.source = source;
        cfg.validate()?;
        Ok(cfg)
    }

    fn err(&self, span: Option<Range<usize>>, key: &str, reason: impl Into<String>) -> ConfigError {
        self.source.err(span, key, reason)
    }

    /// Checks what can be checked before anything is created.
    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_target()?;
        // Names defined so far, in file order: a later entry may use an earlier one.
        let mut names: Vec<&str> = Vec::new();
        for (i, b) in self.bdevs.iter().enumerate() {
            self.validate_bdev(i, b, &names)?;
            names.push(b.name.get_ref().as_str());
        }
        for (i, v) in self.volumes.iter().enumerate() {
            self.validate_volume(i, v, &names)?;
            names.push(v.name.get_ref().as_str());
        }
        Ok(())
    }

    /// `[target]`: cores or cpumask, not both; a cpumask is a hex mask.
    fn validate_target(&self) -> Result<(), ConfigError> {
        if self.target.cores.is_some() && self.target.cpumask.is_some() {
            let m = self.target.cpumask.as_ref().map(|m| m.span());
            return Err(self.err(m, "target.cpumask", "give cores or cpumask, not both"));
        }
        if let Some(m) = &self.target.cpumask {
            if !m.get_ref().trim().to_ascii_lowercase().starts_with("0x") {
                return Err(self.err(
                    Some(m.span()),
                    "target.cpumask",
                    format!("{:?} is not a hex mask such as \"0x3\"", m.get_ref()),
                ));
            }
            parse_cores(m.get_ref()).map_err(|e| self.err(Some(m.span()), "target.cpumask", e))?;
        }
        if let Some(p) = &self.target.buffer_pool {
            PoolConfig::with_total_bytes(p.get_ref().0)
                .map_err(|e| self.err(Some(p.span()), "target.buffer_pool", e))?;
        }
        if let Some(n) = &self.target.reactor_nice {
            if !(-20..=19).contains(n.get_ref()) {
                return Err(self.err(
                    Some(n.span()),
                    "target.reactor_nice",
                    format!("{} is not a nice value (-20..=19)", n.get_ref()),
                ));
            }
        }
        Ok(())
    }

    /// The buffer pool of `[target]` (validated at load).
    pub fn pool_config(&self) -> PoolConfig {
        self.target
            .buffer_pool
            .as_ref()
            .and_then(|p| PoolConfig::with_total_bytes(p.get_ref().0).ok())
            .unwrap_or_default()
    }

    /// `bdevs[i]`: a new name, the keys its kind needs, an `inner` bdev defined
    /// above it (`names`), a block size that fits.
    fn validate_bdev(&self, i: usize, b: &BdevConfig, names: &[&str]) -> Result<(), ConfigError> {
        let key = format!("bdevs[{i}]");
        let name = b.name.get_ref().as_str();
        let at = Some(b.name.span());
        if names.contains(&name) {
            return Err(self.err(
                at,
                &format!("{key}.name"),
                format!("bdev {name}: defined twice"),
            ));
        }
        let need = |what: &str| {
            self.err(
                at.clone(),
                &key,
                format!("bdev {name}: a {} bdev needs `{what}`", b.kind.as_str()),
            )
        };
        match b.kind {
            BdevKind::Null | BdevKind::Malloc if b.size.is_none() => return Err(need("size")),
            BdevKind::Uring if b.path.is_none() => return Err(need("path")),
            BdevKind::Error => {
                let Some(inner) = &b.inner else {
                    return Err(need("inner"));
                };
                if !names.contains(&inner.get_ref().as_str()) {
                    return Err(self.err(
                        Some(inner.span()),
                        &format!("{key}.inner"),
                        format!(
                            "bdev {name}: inner bdev {} is not defined above it in [[bdevs]]",
                            inner.get_ref()
                        ),
                    ));
                }
            }
            _ => {}
        }
        if let Some(bs) = b.block_size {
            if bs.0 > u32::MAX as u64 {
                return Err(self.err(at, &format!("{key}.block_size"), "too large"));
            }
        }
        Ok(())
    }

    /// `volumes[i]`: a new name, a known read policy, at least one valid plex.
    fn validate_volume(
        &self,
        i: usize,
        v: &VolumeConfig,
        names: &[&str],
    ) -> Result<(), ConfigError> {
        let vname = v.name.get_ref().as_str();
        let key = format!("volumes[{i}]");
        if names.contains(&vname) {
            return Err(self.err(
                Some(v.name.span()),
                &format!("{key}.name"),
                format!("volume {vname}: the name is already used by a bdev or volume"),
            ));
        }
        if let Some(rp) = &v.read_policy {
            ReadPolicy::parse(rp.get_ref()).map_err(|e| {
                self.err(
                    Some(rp.span()),
                    &format!("{key}.read_policy"),
                    format!("volume {vname}: {e}"),
                )
            })?;
        }
        if v.plexes.is_empty() {
            return Err(self.err(
                Some(v.name.span()),
                &format!("{key}.plexes"),
                format!("volume {vname}: needs at least one plex"),
            ));
        }
        for (j, p) in v.plexes.iter().enumerate() {
            self.validate_plex(v, &format!("{key}.plexes[{j}]"), p, names)?;
        }
        Ok(())
    }

    /// One plex of volume `v` (key `pkey`): the lists its layout needs, a known
    /// state, subdisks on bdevs defined above (`names`).
    fn validate_plex(
        &self,
        v: &VolumeConfig,
        pkey: &str,
        p: &PlexConfig,
        names: &[&str],
    ) -> Result<(), ConfigError> {
        let vname = v.name.get_ref().as_str();
        let at = Some(v.name.span());
        let columns = match (p.layout, &p.subdisks, &p.columns) {
            (LayoutName::Concat, Some(sds), None) => {
                vec![(String::from("subdisks"), sds)]
            }
            (LayoutName::Stripe, None, Some(cols)) => {
                if p.stripe_unit.is_none() {
                    return Err(self.err(
                        at,
                        &format!("{pkey}.stripe_unit"),
                        format!("volume {vname}: a stripe plex needs `stripe_unit`"),
                    ));
                }
                cols.iter()
                    .enumerate()
                    .map(|(c, col)| (format!("columns[{c}]"), col))
                    .collect()
            }
            (LayoutName::Concat, _, _) => {
                return Err(self.err(
                    at,
                    pkey,
                    format!("volume {vname}: a concat plex lists `subdisks` (and no `columns`)"),
                ))
            }
            (LayoutName::Stripe, _, _) => {
                return Err(self.err(
                    at,
                    pkey,
                    format!("volume {vname}: a stripe plex lists `columns` (and no `subdisks`)"),
                ))
            }
        };
        if let Some(s) = &p.state {
            if PlexState::parse(s.get_ref()).is_none() {
                return Err(self.err(
                    Some(s.span()),
                    &format!("{pkey}.state"),
                    format!(
                        "volume {vname}: unknown plex state {:?} (ACTIVE, STALE, DETACHED, SYNCING)",
                        s.get_ref()
                    ),
                ));
            }
        }
        for (ckey, sds) in columns {
            for (s, sd) in sds.iter().enumerate() {
                if !names.contains(&sd.bdev.get_ref().as_str()) {
                    return Err(self.err(
                        Some(sd.bdev.span()),
                        &format!("{pkey}.{ckey}[{s}].bdev"),
                        format!(
                            "volume {vname}: bdev {} is not defined in [[bdevs]] (or is defined after this volume)",
                            sd.bdev.get_ref()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The reactor configuration of `[target]`.
    pub fn reactor_config(&self) -> ReactorConfig {
        let mut rc = ReactorConfig::default();
        if let Some(c) = &self.target.cores {
            rc.cores = c.0.clone();
        } else if let Some(m) = &self.target.cpumask {
            // Validated at load.
            rc.cores = parse_cores(m.get_ref()).unwrap_or_default();
        }
        if let Some(p) = self.target.poll_mode {
            rc.poll_mode = p;
        }
        rc.nice = self.target.reactor_nice.as_ref().map(|n| *n.get_ref());
        rc
    }

    /// Creates the bdevs, then the volumes, in file order.
    pub fn apply(&self, svc: &KernelService) -> Result<(), ConfigError> {
        for (i, b) in self.bdevs.iter().enumerate() {
            let req = BdevRequest {
                kind: b.kind,
                name: b.name.get_ref().clone(),
                size_bytes: b.size.unwrap_or_default().0,
                block_size: b.block_size.map(|s| s.0 as u32),
                path: b.path.clone(),
                inner: b.inner.as_ref().map(|i| i.get_ref().clone()),
                buffered: b.buffered,
            };
            svc.create_bdev(&req).map_err(|e| {
                self.err(Some(b.name.span()), &format!("bdevs[{i}]"), e.to_string())
            })?;
        }
        for (i, v) in self.volumes.iter().enumerate() {
            let key = format!("volumes[{i}]");
            let at = Some(v.name.span());
            let spec = self
                .volume_spec(v, svc)
                .map_err(|e| self.err(at.clone(), &key, e.to_string()))?;
            svc.target()
                .create_volume(&spec)
                .map_err(|e| self.err(at, &key, e.to_string()))?;
        }
        Ok(())
    }

    /// Starts the iSCSI frontend of `[iscsi]`, if the file has one (after
    /// [`Config::apply`]: its LUNs name bdevs and volumes).
    pub fn start_iscsi(
        &self,
        target: &std::sync::Arc<crate::Target>,
    ) -> Result<Option<crate::frontend::iscsi::IscsiFrontend>, ConfigError> {
        let Some(ic) = &self.iscsi else {
            return Ok(None);
        };
        crate::frontend::iscsi::IscsiFrontend::start(target, ic)
            .map(Some)
            .map_err(|e| self.err(None, "iscsi", e.to_string()))
    }

    /// Starts the NVMe-oF/TCP frontend of `[nvmf]`, if the file has one (after
    /// [`Config::apply`]: its namespaces name bdevs and volumes).
    pub fn start_nvmf(
        &self,
        target: &std::sync::Arc<crate::Target>,
    ) -> Result<Option<crate::frontend::nvmf::NvmfFrontend>, ConfigError> {
        let Some(nc) = &self.nvmf else {
            return Ok(None);
        };
        crate::frontend::nvmf::NvmfFrontend::start(target, nc)
            .map(Some)
            .map_err(|e| self.err(None, "nvmf", e.to_string()))
    }

    fn volume_spec(
        &self,
        v: &VolumeConfig,
        svc: &KernelService,
    ) -> Result<VolumeSpec, TargetError> {
        let vname = v.name.get_ref();
        let mut plexes = Vec::new();
        for (j, p) in v.plexes.iter().enumerate() {
            let sd_spec = |sd: &SubdiskConfig| -> Result<SubdiskSpec, TargetError> {
                let bname = sd.bdev.get_ref();
                let size = svc.target().bdev(bname)?.size_bytes();
                let offset = sd.offset.0;
                let len = match sd.length {
                    Some(l) => l.0,
                    None => size.checked_sub(offset).ok_or_else(|| {
                        TargetError::invalid(
                            format!("volume {vname}"),
                            format!(
                                "subdisk offset {offset} is beyond bdev {bname} ({size} bytes)"
                            ),
                        )
                    })?,
                };
                Ok(SubdiskSpec {
                    bdev: bname.clone(),
                    offset_bytes: offset,
                    len_bytes: len,
                })
            };
            let (kind, columns) = match p.layout {
                LayoutName::Concat => {
                    let sds = p.subdisks.as_deref().unwrap_or_default();
                    (
                        PlexKind::Concat,
                        vec![sds.iter().map(sd_spec).collect::<Result<Vec<_>, _>>()?],
                    )
                }
                LayoutName::Stripe => {
                    let cols = p.columns.as_deref().unwrap_or_default();
                    (
                        PlexKind::Stripe {
                            stripe_unit_bytes: p.stripe_unit.unwrap_or_default().0,
                        },
                        cols.iter()
                            .map(|c| c.iter().map(sd_spec).collect::<Result<Vec<_>, _>>())
                            .collect::<Result<Vec<_>, _>>()?,
                    )
                }
            };
            plexes.push(PlexSpec {
                name: p
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("{vname}-{:02}", j + 1)),
                kind,
                columns,
                state: p
                    .state
                    .as_ref()
                    .and_then(|s| PlexState::parse(s.get_ref()))
                    .unwrap_or(PlexState::Active),
            });
        }
        Ok(VolumeSpec {
            log: None,
            name: vname.clone(),
            size_bytes: v.size.0,
            plexes,
            read_policy: v
                .read_policy
                .as_ref()
                .and_then(|r| ReadPolicy::parse(r.get_ref()).ok())
                .unwrap_or_default(),
            shared: v.shared,
            local_detach: false,
        })
    }
}

// ---- --set overrides ----

/// `bdevs[1].size` and `bdevs.1.size` name the same key.
fn normalise_key(k: &str) -> String {
    let mut out = String::new();
    for seg in k.split('.') {
        if seg.chars().all(|c| c.is_ascii_digit()) && !seg.is_empty() {
            out.push_str(&format!("[{seg}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(seg);
        }
    }
    out
}

/// Sets `key=value` in `table`. The value is read as a TOML value when it is one
/// (`0`, `true`, `"x"`, `[0, 1]`), else as a string (`127.0.0.1:3261`). Numeric
/// segments index arrays: `bdevs.0.size=2G`.
fn apply_override(table: &mut toml::Table, o: &str) -> Result<(), ConfigError> {
    let bad = |reason: String| ConfigError {
        file: format!("--set {o}"),
        line: None,
        key: o.split_once('=').map_or(o, |(k, _)| k).trim().to_string(),
        reason,
    };
    let Some((key, value)) = o.split_once('=') else {
        return Err(bad("expected key=value, e.g. target.cores=0".into()));
    };
    let key = key.trim();
    let value = value.trim();
    let segs: Vec<&str> = key.split('.').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(bad("empty key segment".into()));
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let Some((last, path)) = segs.split_last() else {
        return Err(bad("empty key".into()));
    };
    let mut cur: &mut toml::Value = {
        let first = path.first().copied().unwrap_or(last);
        if path.is_empty() {
            table.insert(last.to_string(), parsed);
            return Ok(());
        }
        table
            .entry(first.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
    };
    for seg in &path[1..] {
        cur = step(cur, seg).map_err(&bad)?;
    }
    match cur {
        toml::Value::Table(t) => {
            t.insert(last.to_string(), parsed);
        }
        toml::Value::Array(a) => {
            let i: usize = last
                .parse()
                .map_err(|_| bad(format!("{last:?} is not an index of an array")))?;
            let n = a.len();
            let slot = a
                .get_mut(i)
                .ok_or_else(|| bad(format!("no element {i} (the array has {n})")))?;
            *slot = parsed;
        }
        _ => return Err(bad("the key's parent is not a table".into())),
    }
    Ok(())
}

fn step<'a>(cur: &'a mut toml::Value, seg: &str) -> Result<&'a mut toml::Value, String> {
    match cur {
        toml::Value::Table(t) => Ok(t
            .entry(seg.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))),
        toml::Value::Array(a) => {
            let i: usize = seg
                .parse()
                .map_err(|_| format!("{seg:?} is not an index of an array"))?;
            let n = a.len();
            a.get_mut(i)
                .ok_or_else(|| format!("no element {i} (the array has {n})"))
        }
        _ => Err(format!("{seg:?}: the parent is not a table or an array")),
    }
}

// ---- spans to lines and keys ----

/// 1-based line of byte offset `pos` in `text`.
fn line_at(text: &str, pos: usize) -> usize {
    let pos = pos.min(text.len());
    text.as_bytes()[..pos]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// The `key =` at the start of a line, if any.
fn line_key(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let end = t.find(|c: char| !is_key_char(c))?;
    let (k, rest) = t.split_at(end);
    (!k.is_empty() && rest.trim_start().starts_with('=')).then_some(k)
}

/// Tracks `[table]` and `[[array]]` headers while scanning lines, giving the path
/// of the current table (`volumes[1]`, `volumes[1].plexes[0]`, `target`).
#[derive(Default)]
struct Headers {
    counts: std::collections::HashMap<String, usize>,
    path: String,
}

impl Headers {
    /// Feeds one line; true when it was a header.
    fn feed(&mut self, line: &str) -> bool {
        let t = line.trim();
        let (name, array) = if let Some(n) = t.strip_prefix("[[").and_then(|r| r.split("]]").next())
        {
            (n.trim(), true)
        } else if let Some(n) = t.strip_prefix('[').and_then(|r| r.split(']').next()) {
            (n.trim(), false)
        } else {
            return false;
        };
        if array {
            *self.counts.entry(name.to_string()).or_insert(0) += 1;
        }
        let prefix = format!("{name}.");
        self.counts.retain(|k, _| !k.starts_with(&prefix));
        let mut path = String::new();
        let mut acc = String::new();
        for seg in name.split('.') {
            if !acc.is_empty() {
                acc.push('.');
                path.push('.');
            }
            acc.push_str(seg.trim());
            path.push_str(seg.trim());
            if let Some(n) = self.counts.get(&acc) {
                path.push_str(&format!("[{}]", n.saturating_sub(1)));
            }
        }
        self.path = path;
        true
    }

    fn join(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }
}

/// The key at byte range `span` of `text`: the table path, the statement's key and,
/// inside inline tables, the key nearest before the span.
fn key_at(text: &str, span: &Range<usize>) -> String {
    let start = span.start.min(text.len());
    let mut headers = Headers::default();
    let mut top: Option<String> = None;
    let mut offset = 0usize;
    let mut span_line = "";
    let mut span_col = 0usize;
    for line in text.split_inclusive('\n') {
        let end = offset + line.len();
        if start < end || end == text.len() {
            span_line = line;
            span_col = start - offset;
            if headers.feed(line) {
                return headers.path.clone();
            }
            if let Some(k) = line_key(line) {
                top = Some(k.to_string());
            }
            break;
        }
        if headers.feed(line) {
            top = None;
        } else if let Some(k) = line_key(line) {
            top = Some(k.to_string());
        }
        offset = end;
    }
    // The span itself may be a key (unknown field); else the key before `=`.
    let at: String = span_line
        .get(span_col..)
        .unwrap_or("")
        .chars()
        .take_while(|&c| is_key_char(c))
        .collect();
    let before = span_line.get(..span_col).unwrap_or("");
    let after_at = span_line.get(span_col + at.len()..).unwrap_or("");
    let inner = if !at.is_empty() && after_at.trim_start().starts_with('=') {
        Some(at)
    } else {
        let b = before.trim_end();
        b.strip_suffix('=').map(|b| {
            let b = b.trim_end();
            let k: String = b
                .chars()
                .rev()
                .take_while(|&c| is_key_char(c))
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            k
        })
    };
    let key = match (top, inner.filter(|k| !k.is_empty())) {
        (Some(t), Some(i)) if t != i => format!("{t}.{i}"),
        (Some(t), _) => t,
        (None, Some(i)) => i,
        (None, None) => String::from("(document)"),
    };
    headers.join(&key)
}

/// The line of `key` (as [`key_at`] writes it) in `text`, found by scanning headers
/// and statement keys. Used when the text deserialised is not the file's.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let mut headers = Headers::default();
    let mut best: Option<usize> = None;
    let mut best_len = 0usize;
    for (n, line) in text.lines().enumerate() {
        let full = if headers.feed(line) {
            headers.path.clone()
        } else if let Some(k) = line_key(line) {
            headers.join(k)
        } else {
            continue;
        };
        // The longest prefix of `key` that a line declares wins.
        let matches = key == full
            || key.starts_with(&format!("{full}."))
            || key.starts_with(&format!("{full}["));
        if matches && full.len() > best_len {
            best = Some(n + 1);
            best_len = full.len();
        }
    }
    best
}

fn de_error(source: &Source, text: &str, e: &toml::de::Error) -> ConfigError {
    let reason = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            let key = key_at(text, &span);
            let line = if text == source.original {
                Some(line_at(text, span.start))
            } else {
                line_of_key(&source.original, &key)
            };
            ConfigError {
                file: source.file.clone(),
                line,
                key,
                reason,
            }
        }
        None => ConfigError {
            file: source.file.clone(),
            line: None,
            key: "(document)".into(),
            reason,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[target]
cores = "0"
poll_mode = "adaptive"
socket = "/tmp/x.sock"

[[bdevs]]
kind = "malloc"
name = "m0"
size = "1M"

[[bdevs]]
kind = "null"
name = "n0"
size = 1048576
block_size = "4K"

[[volumes]]
name = "vol0"
size = "512K"
read_policy = "round"
plexes = [
  { name = "vol0-01", layout = "concat", subdisks = [{ bdev = "m0", offset = "0", length = "512K" }] },
  { layout = "stripe", stripe_unit = "64K", columns = [[{ bdev = "m0", offset = "512K", length = "256K" }], [{ bdev = "n0", length = "256K" }]] },
]
"#;

    fn parse(text: &str, sets: &[&str]) -> Result<Config, ConfigError> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Config::parse("t.toml", text, &sets)
    }

    #[test]
    fn good_file_parses() {
        let c = parse(GOOD, &[]).unwrap();
        assert_eq!(c.reactor_config().cores, vec![0]);
        assert_eq!(c.bdevs.len(), 2);
        assert_eq!(c.bdevs[1].block_size, Some(Size(4096)));
        assert_eq!(c.volumes[0].size, Size(512 << 10));
        assert_eq!(c.volumes[0].plexes[1].layout, LayoutName::Stripe);
        assert_eq!(c.target.socket.as_deref(), Some(Path::new("/tmp/x.sock")));
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let text = GOOD.replace("size = 1048576", "size = 1048576\ncolour = \"red\"");
        let e = parse(&text, &[]).unwrap_err();
        assert_eq!(e.line, Some(16), "{e}");
        assert_eq!(e.key, "bdevs[1].colour", "{e}");
        assert!(e.reason.contains("unknown field"), "{e}");
        assert!(
            e.to_string().starts_with("t.toml:16: bdevs[1].colour: "),
            "{e}"
        );
    }

    #[test]
    fn bad_size_names_line_and_key() {
        let text = GOOD.replace("size = \"1M\"", "size = \"1Q\"");
        let e = parse(&text, &[]).unwrap_err();
        assert_eq!(e.line, Some(10), "{e}");
        assert_eq!(e.key, "bdevs[0].size", "{e}");
        assert!(e.reason.contains("unknown suffix"), "{e}");
    }

    #[test]
    fn key_inside_inline_table() {
        let text = GOOD.replace("layout = \"stripe\"", "layout = \"raid5\"");
        let e = parse(&text, &[]).unwrap_err();
        assert_eq!(e.line, Some(24), "{e}");
        assert_eq!(e.key, "volumes[0].plexes.layout", "{e}");
    }

    #[test]
    fn missing_bdev_is_refused_at_load() {
        let text = GOOD.replace("bdev = \"n0\"", "bdev = \"n9\"");
        let e = parse(&text, &[]).unwrap_err();
        assert_eq!(e.line, Some(24), "{e}");
        assert_eq!(e.key, "volumes[0].plexes[1].columns[1][0].bdev", "{e}");
        assert!(e.reason.contains("bdev n9 is not defined"), "{e}");
    }

    #[test]
    fn overrides_apply_before_deserialising() {
        let c = parse(
            GOOD,
            &[
                "target.cores=1",
                "iscsi.portal=127.0.0.1:3261",
                "bdevs.0.size=2M",
                "target.poll_mode=always",
            ],
        )
        .unwrap();
        assert_eq!(c.reactor_config().cores, vec![1]);
        assert_eq!(c.reactor_config().poll_mode, PollMode::Always);
        assert_eq!(c.bdevs[0].size, Some(Size(2 << 20)));
        let portal = c.iscsi.as_ref().map(|i| i.portal());
        assert_eq!(portal, Some("127.0.0.1:3261"));
    }

    #[test]
    fn the_reactor_nice_value_is_taken_within_its_bounds() {
        let c = parse(GOOD, &["target.reactor_nice=-10"]).unwrap();
        assert_eq!(c.reactor_config().nice, Some(-10));
        assert_eq!(parse(GOOD, &[]).unwrap().reactor_config().nice, None);
        let e = parse(GOOD, &["target.reactor_nice=-21"]).unwrap_err();
        assert_eq!(e.key, "target.reactor_nice", "{e}");
        assert!(e.reason.contains("not a nice value"), "{e}");
    }

    #[test]
    fn the_buffer_pool_is_sized_within_its_bounds() {
        let c = parse(GOOD, &["target.buffer_pool=\"64M\""]).unwrap();
        // Each class is rounded down to whole chunks.
        let got = c.pool_config().total_bytes();
        assert!((62 << 20..=64 << 20).contains(&got), "{got}");
        assert_eq!(
            parse(GOOD, &[]).unwrap().pool_config().total_bytes(),
            PoolConfig::default().total_bytes()
        );
        let e = parse(GOOD, &["target.buffer_pool=\"1M\""]).unwrap_err();
        assert_eq!(e.key, "target.buffer_pool", "{e}");
        assert!(e.reason.contains("outside 16 MiB"), "{e}");
    }

    #[test]
    fn bad_override_is_named() {
        let e = parse(GOOD, &["target.poll_mode=sometimes"]).unwrap_err();
        assert_eq!(e.file, "--set target.poll_mode=sometimes", "{e}");
        assert_eq!(e.key, "target.poll_mode", "{e}");
        let e = parse(GOOD, &["bdevs.7.size=1G"]).unwrap_err();
        assert!(e.reason.contains("no element 7"), "{e}");
        let e = parse(GOOD, &["nokey"]).unwrap_err();
        assert!(e.reason.contains("key=value"), "{e}");
    }

    #[test]
    fn error_in_file_with_overrides_still_has_a_line() {
        let text = GOOD.replace("size = \"1M\"", "size = \"1Q\"");
        let e = parse(&text, &["target.cores=0"]).unwrap_err();
        assert_eq!(e.key, "bdevs[0].size", "{e}");
        assert_eq!(e.line, Some(10), "{e}");
    }

    #[test]
    fn iscsi_section_is_typed() {
        let text = format!(
            "{GOOD}\n[iscsi]\nportal = \"127.0.0.1:0\"\n\n[[iscsi.targets]]\niqn = \"iqn.2026-11.io.plexd:t\"\nluns = [{{ lun = 0, bdev = \"vol0\" }}]\nflavour = 1\n"
        );
        let e = parse(&text, &[]).unwrap_err();
        assert_eq!(e.key, "iscsi.targets[0].flavour", "{e}");
        assert_eq!(e.line, Some(33), "{e}");
        let ok = text.replace("flavour = 1\n", "");
        let c = parse(&ok, &[]).unwrap();
        assert_eq!(c.iscsi.unwrap().targets[0].luns[0].bdev, "vol0");
    }

    #[test]
    fn nvmf_section_is_typed() {
        let text = format!(
            "{GOOD}\n[nvmf]\nlisteners = [\"127.0.0.1:0\"]\ncntlid_range = [100, 199]\n\n[[nvmf.subsystems]]\nnqn = \"nqn.2026-11.io.plexd:t\"\nallow_any = true\nnamespaces = [{{ nsid = 1, bdev = \"vol0\", identity = \"dg/vol0\" }}]\ncolour = 1\n"
        );
        let e = parse(&text, &[]).unwrap_err();
        assert_eq!(e.key, "nvmf.subsystems[0].colour", "{e}");
        let ok = text.replace("colour = 1\n", "");
        let c = parse(&ok, &[]).unwrap();
        let n = c.nvmf.unwrap();
        assert_eq!(n.cntlid_range, Some((100, 199)));
        assert_eq!(
            n.subsystems[0].namespaces[0].identity.as_deref(),
            Some("dg/vol0")
        );
    }

    #[test]
    fn syntax_error_has_a_line() {
        let e = parse("[target]\ncores = \n", &[]).unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
    }
}
