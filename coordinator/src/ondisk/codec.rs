//! The slot payload: a [`DiskGroupConfig`] as one Cap'n Proto message per
//! `schema/ondisk.capnp` (standard framing, unpacked).

use capnp::message::{Builder, ReaderOptions};
use capnp::serialize;
use plexd_proto::ondisk_capnp as wire;

use crate::model::{
    DetachPolicy, Disk, DiskGroupConfig, Export, ExportProtocol, LogCopy, OpenNode, Plex,
    PlexLayout, PlexState, PrState, ReadPolicy, StaledPlex, Subdisk, Volume, VolumeLog,
    VolumeState, MAX_LOG_COPIES, MAX_OPEN_NODES,
};
use plexd_target_api::scsi::pr::{Nexus, PrChange, Registration, Reservation, MAX_REGISTRATIONS};

/// The `formatVersion` this code writes and the newest it reads.
pub const CONFIG_FORMAT_VERSION: u32 = 1;

/// Most words a decoded payload may make the reader traverse (bounds work on corrupt
/// input; a 1 MiB payload is 128 Ki words).
const TRAVERSAL_LIMIT_WORDS: usize = 1 << 20;

/// Encodes a configuration into a slot payload.
pub fn encode_config(config: &DiskGroupConfig) -> Vec<u8> {
    let mut message = Builder::new_default();
    write_group(config, message.init_root());
    serialize::write_message_to_words(&message)
}

/// Writes `config` into `root` (a slot's root, or a disk group inside another
/// message: the cluster protocol's configurations reuse this encoding).
pub fn write_group(config: &DiskGroupConfig, root: wire::disk_group_config::Builder<'_>) {
    write_group_with(config, root, true)
}

/// [`write_group`], with its volumes or without them (a change log record's group).
fn write_group_with(
    config: &DiskGroupConfig,
    mut root: wire::disk_group_config::Builder<'_>,
    with_volumes: bool,
) {
    root.set_format_version(CONFIG_FORMAT_VERSION);
    root.set_name(config.name.as_str());
    root.set_id(config.id.as_str());
    root.set_shared(config.shared);
    root.set_owner_id(config.owner_id.as_str());
    root.set_seq(config.seq);
    let mut disks = root.reborrow().init_disks(len_u32(config.disks.len()));
    for (i, d) in (0..).zip(&config.disks) {
        write_disk(d, disks.reborrow().get(i));
    }
    if with_volumes {
        let mut volumes = root.reborrow().init_volumes(len_u32(config.volumes.len()));
        for (i, v) in (0..).zip(&config.volumes) {
            encode_volume(v, volumes.reborrow().get(i));
        }
    }
    root.set_detach_policy(write_detach_policy(config.detach_policy));
    if !config.open_nodes.is_empty() {
        let mut open = root.init_open_nodes(len_u32(config.open_nodes.len()));
        for (i, o) in (0..).zip(&config.open_nodes) {
            let mut b = open.reborrow().get(i);
            b.set_node(o.node);
            b.set_incarnation(o.incarnation);
        }
    }
}

/// A group's detach policy on the wire.
pub fn write_detach_policy(p: DetachPolicy) -> wire::DetachPolicy {
    match p {
        DetachPolicy::Global => wire::DetachPolicy::Global,
        DetachPolicy::Local => wire::DetachPolicy::Local,
    }
}

/// A group's detach policy from the wire; an enumerant this plexd does not know is
/// an error (a newer writer's policy is not silently taken for another).
pub fn read_detach_policy(
    p: Result<wire::DetachPolicy, capnp::NotInSchema>,
) -> capnp::Result<DetachPolicy> {
    match p {
        Ok(wire::DetachPolicy::Global) => Ok(DetachPolicy::Global),
        Ok(wire::DetachPolicy::Local) => Ok(DetachPolicy::Local),
        Err(capnp::NotInSchema(n)) => Err(capnp::Error::failed(format!(
            "unknown detach policy {n} (a newer plexd wrote it)"
        ))),
    }
}

/// Writes a disk record.
pub fn write_disk(d: &Disk, mut b: wire::disk::Builder<'_>) {
    b.set_name(d.name.as_str());
    b.set_id(d.id.as_str());
    b.set_path(d.path.as_str());
    b.set_size_bytes(d.size_bytes);
    b.set_public_offset_bytes(d.public_offset_bytes);
    b.set_public_len_bytes(d.public_len_bytes);
    b.set_failed(d.failed);
    if !d.staled.is_empty() {
        let mut list = b.init_staled(len_u32(d.staled.len()));
        for (i, p) in (0..).zip(&d.staled) {
            let mut e = list.reborrow().get(i);
            e.set_plex(p.plex.as_str());
            e.set_last_active(p.last_active);
        }
    }
}

/// Reads a disk record.
pub fn read_disk(d: wire::disk::Reader<'_>) -> capnp::Result<Disk> {
    Ok(Disk {
        name: text(d.get_name())?,
        id: text(d.get_id())?,
        path: text(d.get_path())?,
        size_bytes: d.get_size_bytes(),
        public_offset_bytes: d.get_public_offset_bytes(),
        public_len_bytes: d.get_public_len_bytes(),
        failed: d.get_failed(),
        staled: d
            .get_staled()?
            .iter()
            .map(|p| {
                Ok(StaledPlex {
                    plex: text(p.get_plex())?,
                    last_active: p.get_last_active(),
                })
            })
            .collect::<capnp::Result<_>>()?,
    })
}

/// Writes a read policy.
pub fn write_read_policy(p: &ReadPolicy, mut policy: wire::read_policy::Builder<'_>) {
    match p {
        ReadPolicy::Round => policy.set_round(()),
        ReadPolicy::Prefer { plex } => policy.set_prefer(plex.as_str()),
        ReadPolicy::LeastBusy => policy.set_least_busy(()),
    }
}

/// Reads a read policy.
pub fn read_read_policy(p: wire::read_policy::Reader<'_>) -> capnp::Result<ReadPolicy> {
    use wire::read_policy::Which;
    Ok(
        match p.which().map_err(|e| not_in_schema("read policy", e))? {
            Which::Round(()) => ReadPolicy::Round,
            Which::Prefer(plex) => ReadPolicy::Prefer { plex: text(plex)? },
            Which::LeastBusy(()) => ReadPolicy::LeastBusy,
        },
    )
}

/// Writes an export.
pub fn write_export(e: &Export, mut eb: wire::export::Builder<'_>) {
    eb.set_protocol(e.protocol.as_str());
    eb.set_iqn(e.iqn.as_str());
    eb.set_portal(e.portal.as_str());
    write_texts(&e.nodes, eb.reborrow().init_nodes(len_u32(e.nodes.len())));
    if !e.hosts.is_empty() {
        write_texts(&e.hosts, eb.init_hosts(len_u32(e.hosts.len())));
    }
}

/// Reads an export; a protocol this plexd does not know is an error.
pub fn read_export(e: wire::export::Reader<'_>) -> capnp::Result<Export> {
    let protocol = read_protocol(e.get_protocol())?;
    let mut nodes = Vec::new();
    for n in e.get_nodes()? {
        nodes.push(text(n)?);
    }
    let mut hosts = Vec::new();
    for h in e.get_hosts()? {
        hosts.push(text(h)?);
    }
    Ok(Export {
        protocol,
        iqn: text(e.get_iqn())?,
        nodes,
        portal: text(e.get_portal())?,
        hosts,
    })
}

/// Reads an export protocol's name ([`ExportProtocol::as_str`]).
pub fn read_protocol(
    name: capnp::Result<capnp::text::Reader<'_>>,
) -> capnp::Result<ExportProtocol> {
    let name = text(name)?;
    ExportProtocol::parse(&name)
        .ok_or_else(|| capnp::Error::failed(format!("export protocol {name:?} is not known")))
}

/// The wire value of a plex state.
pub fn wire_plex_state(s: PlexState) -> wire::PlexState {
    match s {
        PlexState::Active => wire::PlexState::Active,
        PlexState::Stale => wire::PlexState::Stale,
        PlexState::Syncing => wire::PlexState::Syncing,
        PlexState::Empty => wire::PlexState::Empty,
    }
}

/// The plex state of a wire value; one this plexd does not know is an error.
pub fn read_plex_state(s: Result<wire::PlexState, capnp::NotInSchema>) -> capnp::Result<PlexState> {
    Ok(match s.map_err(|e| not_in_schema("plex state", e))? {
        wire::PlexState::Active => PlexState::Active,
        wire::PlexState::Stale => PlexState::Stale,
        wire::PlexState::Syncing => PlexState::Syncing,
        wire::PlexState::Empty => PlexState::Empty,
    })
}

/// Writes a plex layout.
pub fn write_plex_layout(l: &PlexLayout, mut layout: wire::plex_layout::Builder<'_>) {
    match *l {
        PlexLayout::Concat => layout.set_concat(()),
        PlexLayout::Stripe {
            columns,
            stripe_unit_bytes,
        } => {
            let mut stripe = layout.init_stripe();
            stripe.set_columns(columns);
            stripe.set_stripe_unit_bytes(stripe_unit_bytes);
        }
    }
}

/// Reads a plex layout.
pub fn read_plex_layout(l: wire::plex_layout::Reader<'_>) -> capnp::Result<PlexLayout> {
    use wire::plex_layout::Which;
    Ok(
        match l.which().map_err(|e| not_in_schema("plex layout", e))? {
            Which::Concat(()) => PlexLayout::Concat,
            Which::Stripe(s) => PlexLayout::Stripe {
                columns: s.get_columns(),
                stripe_unit_bytes: s.get_stripe_unit_bytes(),
            },
        },
    )
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn encode_volume(v: &Volume, mut b: wire::volume::Builder<'_>) {
    b.set_name(v.name.as_str());
    b.set_size_bytes(v.size_bytes);
    b.set_state(match v.state {
        VolumeState::Enabled => wire::VolumeState::Enabled,
        VolumeState::Disabled => wire::VolumeState::Disabled,
    });
    write_read_policy(&v.read_policy, b.reborrow().init_read_policy());
    {
        let mut exports = b.reborrow().init_exports(len_u32(v.exports.len()));
        for (i, e) in (0..).zip(&v.exports) {
            write_export(e, exports.reborrow().get(i));
        }
    }
    if !v.reservations.is_empty() {
        encode_reservations(&v.reservations, b.reborrow().init_reservations());
    }
    if let Some(l) = &v.log {
        let mut lb = b.reborrow().init_log();
        if let Some(first) = l.copies.first() {
            lb.set_disk(first.disk.as_str());
            lb.set_disk_offset_bytes(first.disk_offset_bytes);
        }
        if l.copies.len() > 1 {
            let mut more = lb.reborrow().init_more_copies(len_u32(l.copies.len() - 1));
            for (i, c) in (0..).zip(&l.copies[1..]) {
                let mut cb = more.reborrow().get(i);
                cb.set_disk(c.disk.as_str());
                cb.set_disk_offset_bytes(c.disk_offset_bytes);
            }
        }
        lb.set_len_bytes(l.len_bytes);
        lb.set_section_bytes(l.section_bytes);
        lb.set_region_bytes(l.region_bytes);
        lb.set_log_id(l.log_id);
    }
    let mut plexes = b.init_plexes(len_u32(v.plexes.len()));
    for (i, p) in (0..).zip(&v.plexes) {
        let mut pb = plexes.reborrow().get(i);
        pb.set_name(p.name.as_str());
        pb.set_state(wire_plex_state(p.state));
        write_plex_layout(&p.layout, pb.reborrow().init_layout());
        if let Some(old) = &p.replaces {
            pb.set_replaces(old.as_str());
        }
        if !p.resync_ranges.is_empty() {
            let mut rb = pb
                .reborrow()
                .init_resync_ranges(len_u32(p.resync_ranges.len()));
            for (i, (off, len)) in (0..).zip(&p.resync_ranges) {
                rb.reborrow().get(i).set_offset_bytes(*off);
                rb.reborrow().get(i).set_len_bytes(*len);
            }
        }
        let mut sds = pb.init_subdisks(len_u32(p.subdisks.len()));
        for (j, sd) in (0..).zip(&p.subdisks) {
            let mut sb = sds.reborrow().get(j);
            sb.set_name(sd.name.as_str());
            sb.set_disk(sd.disk.as_str());
            sb.set_disk_offset_bytes(sd.disk_offset_bytes);
            sb.set_len_bytes(sd.len_bytes);
            sb.set_column(sd.column);
            sb.set_plex_offset_bytes(sd.plex_offset_bytes);
        }
    }
}

fn encode_reservations(r: &PrState, mut b: wire::reservations::Builder<'_>) {
    b.set_generation(r.generation);
    b.set_aptpl(r.aptpl);
    if let Some(res) = &r.res {
        b.set_reserved(true);
        b.set_holder(res.holder.as_str());
        b.set_holder_port(res.holder_port);
        b.set_type(res.ty);
    }
    let mut regs = b.reborrow().init_registrations(len_u32(r.regs.len()));
    for (i, reg) in (0..).zip(&r.regs) {
        let mut rb = regs.reborrow().get(i);
        rb.set_initiator(reg.nexus.as_str());
        rb.set_relative_port(reg.port);
        rb.set_key(reg.key);
    }
    if let Some(c) = &r.last {
        let mut cb = b.init_last_change();
        cb.set_initiator(c.nexus.initiator.as_str());
        cb.set_relative_port(c.nexus.port);
        cb.set_service_action(c.sa);
        cb.set_scope_type(c.scope_type);
    }
}

fn decode_reservations(r: wire::reservations::Reader<'_>) -> capnp::Result<PrState> {
    let regs = r.get_registrations()?;
    if regs.len() as usize > MAX_REGISTRATIONS {
        return Err(capnp::Error::failed(format!(
            "{} reservation registrations, at most {MAX_REGISTRATIONS}",
            regs.len()
        )));
    }
    let mut out = PrState {
        generation: r.get_generation(),
        aptpl: r.get_aptpl(),
        ..PrState::default()
    };
    for g in regs {
        out.regs.push(Registration {
            nexus: text(g.get_initiator())?,
            port: g.get_relative_port(),
            key: g.get_key(),
        });
    }
    if r.get_reserved() {
        out.res = Some(Reservation {
            holder: text(r.get_holder())?,
            holder_port: r.get_holder_port(),
            ty: r.get_type(),
        });
    }
    if r.has_last_change() {
        let c = r.get_last_change()?;
        out.last = Some(PrChange {
            nexus: Nexus::new(text(c.get_initiator())?, c.get_relative_port()),
            sa: c.get_service_action(),
            scope_type: c.get_scope_type(),
        });
    }
    Ok(out)
}

/// A payload as one Cap'n Proto message (standard framing, no bytes after it),
/// traversal bounded by [`TRAVERSAL_LIMIT_WORDS`].
fn read_payload(
    payload: &[u8],
) -> Result<capnp::message::Reader<serialize::BufferSegments<&[u8]>>, String> {
    let mut options = ReaderOptions::new();
    options.traversal_limit_in_words(Some(TRAVERSAL_LIMIT_WORDS));
    let mut slice = payload;
    let message = serialize::read_message_from_flat_slice(&mut slice, options)
        .map_err(|e| format!("not a Cap'n Proto message: {e}"))?;
    if !slice.is_empty() {
        return Err(format!("{} bytes after the message", slice.len()));
    }
    Ok(message)
}

/// Decodes a slot payload. Any malformed input is an error (the message says what),
/// never a panic. Does not run [`DiskGroupConfig::validate`].
pub fn decode_config(payload: &[u8]) -> Result<DiskGroupConfig, String> {
    let message = read_payload(payload)?;
    let root = message
        .get_root::<wire::disk_group_config::Reader>()
        .map_err(|e| format!("bad root: {e}"))?;
    read_group(root).map_err(|e| format!("malformed configuration: {e}"))
}

/// One entry of a change log record's volume list (`VolumeRun`, docs/ONDISK.md
/// "Change log"): volumes kept from the configuration before, or one written out.
#[derive(Debug, Clone)]
pub enum VolumeRun {
    /// The volumes `before[start .. start + count]`, unchanged.
    Kept { start: usize, count: usize },
    /// A volume as it is after the change.
    Volume(std::sync::Arc<Volume>),
}

/// Encodes a change log record's payload: every field of `after` but its volumes,
/// and its volume list as `runs`.
pub fn encode_delta(after: &DiskGroupConfig, runs: &[VolumeRun]) -> Vec<u8> {
    let mut message = Builder::new_default();
    let mut root: wire::config_delta::Builder<'_> = message.init_root();
    root.set_format_version(CONFIG_FORMAT_VERSION);
    write_group_with(after, root.reborrow().init_group(), false);
    let mut list = root.init_volumes(len_u32(runs.len()));
    for (i, run) in (0..).zip(runs) {
        let b = list.reborrow().get(i);
        match run {
            VolumeRun::Kept { start, count } => {
                let mut kept = b.init_kept();
                kept.set_start(len_u32(*start));
                kept.set_count(len_u32(*count));
            }
            VolumeRun::Volume(v) => encode_volume(v, b.init_volume()),
        }
    }
    serialize::write_message_to_words(&message)
}

/// Decodes a change log record's payload: the configuration's fields but its
/// volumes (`volumes` empty), and its volume list as runs.
pub fn decode_delta(payload: &[u8]) -> Result<(DiskGroupConfig, Vec<VolumeRun>), String> {
    let message = read_payload(payload)?;
    let read = || -> capnp::Result<(DiskGroupConfig, Vec<VolumeRun>)> {
        let root = message.get_root::<wire::config_delta::Reader>()?;
        let version = root.get_format_version();
        if version == 0 || version > CONFIG_FORMAT_VERSION {
            return Err(capnp::Error::failed(format!(
                "change format version {version}, this plexd reads 1 to {CONFIG_FORMAT_VERSION}"
            )));
        }
        let group = read_group(root.get_group()?)?;
        if !group.volumes.is_empty() {
            return Err(capnp::Error::failed(
                "the group of a change lists volumes".into(),
            ));
        }
        let mut runs = Vec::new();
        for r in root.get_volumes()? {
            runs.push(match r.which()? {
                wire::volume_run::Kept(k) => VolumeRun::Kept {
                    start: k.get_start() as usize,
                    count: k.get_count() as usize,
                },
                wire::volume_run::Volume(v) => {
                    VolumeRun::Volume(std::sync::Arc::new(decode_volume(v?)?))
                }
            });
        }
        Ok((group, runs))
    };
    read().map_err(|e| format!("malformed change: {e}"))
}

/// A text field as a `String`; text that is not UTF-8 is an error.
pub fn text(r: capnp::Result<capnp::text::Reader<'_>>) -> capnp::Result<String> {
    r?.to_string()
        .map_err(|e| capnp::Error::failed(format!("text is not UTF-8: {e}")))
}

/// A list of UTF-8 texts ([`text`] each).
pub fn texts(r: capnp::Result<capnp::text_list::Reader<'_>>) -> capnp::Result<Vec<String>> {
    r?.iter().map(text).collect()
}

/// Writes `texts` into `list` (made with their count): [`texts`]' writer.
pub fn write_texts(texts: &[String], mut list: capnp::text_list::Builder<'_>) {
    for (i, t) in (0..).zip(texts) {
        list.set(i, t.as_str());
    }
}

fn not_in_schema(what: &str, e: capnp::NotInSchema) -> capnp::Error {
    capnp::Error::failed(format!("unknown {what} {}", e.0))
}

/// Reads a disk group written by [`write_group`]; a `formatVersion` this plexd does
/// not read is an error.
pub fn read_group(root: wire::disk_group_config::Reader<'_>) -> capnp::Result<DiskGroupConfig> {
    let version = root.get_format_version();
    if version == 0 || version > CONFIG_FORMAT_VERSION {
        return Err(capnp::Error::failed(format!(
            "configuration format version {version}, this plexd reads 1 to {CONFIG_FORMAT_VERSION}"
        )));
    }
    let mut disks = Vec::new();
    for d in root.get_disks()? {
        disks.push(read_disk(d)?);
    }
    let mut volumes = Vec::new();
    for v in root.get_volumes()? {
        volumes.push(std::sync::Arc::new(decode_volume(v)?));
    }
    let open = root.get_open_nodes()?;
    if open.len() as usize > MAX_OPEN_NODES {
        return Err(capnp::Error::failed(format!(
            "{} open nodes, at most {MAX_OPEN_NODES}",
            open.len()
        )));
    }
    let mut open_nodes: Vec<OpenNode> = open
        .iter()
        .map(|o| OpenNode {
            node: o.get_node(),
            incarnation: o.get_incarnation(),
        })
        .collect();
    open_nodes.sort_unstable();
    open_nodes.dedup();
    Ok(DiskGroupConfig {
        name: text(root.get_name())?,
        id: text(root.get_id())?,
        shared: root.get_shared(),
        owner_id: text(root.get_owner_id())?,
        seq: root.get_seq(),
        disks,
        volumes,
        open_nodes,
        detach_policy: read_detach_policy(root.get_detach_policy())?,
    })
}

fn decode_volume(v: wire::volume::Reader<'_>) -> capnp::Result<Volume> {
    let state = match v
        .get_state()
        .map_err(|e| not_in_schema("volume state", e))?
    {
        wire::VolumeState::Enabled => VolumeState::Enabled,
        wire::VolumeState::Disabled => VolumeState::Disabled,
    };
    let read_policy = read_read_policy(v.get_read_policy()?)?;
    let mut plexes = Vec::new();
    for p in v.get_plexes()? {
        plexes.push(decode_plex(p)?);
    }
    let mut exports = Vec::new();
    for e in v.get_exports()? {
        exports.push(read_export(e)?);
    }
    let reservations = if v.has_reservations() {
        decode_reservations(v.get_reservations()?)?
    } else {
        PrState::default()
    };
    let log = if v.has_log() {
        let l = v.get_log()?;
        let mut copies = vec![LogCopy {
            disk: text(l.get_disk())?,
            disk_offset_bytes: l.get_disk_offset_bytes(),
        }];
        if l.has_more_copies() {
            let more = l.get_more_copies()?;
            if more.len() as usize >= MAX_LOG_COPIES {
                return Err(capnp::Error::failed(format!(
                    "volume {}: dirty region log with {} copies (at most {MAX_LOG_COPIES})",
                    text(v.get_name())?,
                    more.len() + 1
                )));
            }
            for c in more.iter() {
                copies.push(LogCopy {
                    disk: text(c.get_disk())?,
                    disk_offset_bytes: c.get_disk_offset_bytes(),
                });
            }
        }
        Some(VolumeLog {
            copies,
            len_bytes: l.get_len_bytes(),
            section_bytes: l.get_section_bytes(),
            region_bytes: l.get_region_bytes(),
            log_id: l.get_log_id(),
        })
    } else {
        None
    };
    Ok(Volume {
        name: text(v.get_name())?,
        size_bytes: v.get_size_bytes(),
        state,
        read_policy,
        plexes,
        exports,
        reservations,
        log,
    })
}

fn decode_plex(p: wire::plex::Reader<'_>) -> capnp::Result<Plex> {
    let state = read_plex_state(p.get_state())?;
    let layout = read_plex_layout(p.get_layout()?)?;
    let mut subdisks = Vec::new();
    for sd in p.get_subdisks()? {
        subdisks.push(Subdisk {
            name: text(sd.get_name())?,
            disk: text(sd.get_disk())?,
            disk_offset_bytes: sd.get_disk_offset_bytes(),
            len_bytes: sd.get_len_bytes(),
            column: sd.get_column(),
            plex_offset_bytes: sd.get_plex_offset_bytes(),
        });
    }
    let resync_ranges = p
        .get_resync_ranges()?
        .iter()
        .map(|r| (r.get_offset_bytes(), r.get_len_bytes()))
        .collect();
    let replaces = Some(text(p.get_replaces())?).filter(|r| !r.is_empty());
    Ok(Plex {
        name: text(p.get_name())?,
        state,
        layout,
        subdisks,
        resync_ranges,
        replaces,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_support::{cluster, with_mirror};
    use crate::model::{Change, VolumeLayout};
    use rand::{Rng, SeedableRng};

    fn sample() -> DiskGroupConfig {
        let c = cluster(&[
            ("disk01", 1 << 30),
            ("disk02", 1 << 30),
            ("disk03", 1 << 30),
        ]);
        let c = with_mirror(&c, "vol1", 100 << 20, Default::default());
        let c = c
            .apply(&Change::VolCreate {
                dg: "dg1".into(),
                volume: "vol2".into(),
                size_bytes: 10 << 20,
                layout: VolumeLayout::MirrorStripe {
                    mirrors: 1,
                    columns: 3,
                    stripe_unit_bytes: 128 << 10,
                },
                log: Default::default(),
                disks: Vec::new(),
            })
            .unwrap();
        let c = c
            .apply(&Change::PlexDetach {
                dg: "dg1".into(),
                plex: "vol1-02".into(),
            })
            .unwrap();
        let c = c
            .apply(&Change::VolExport {
                dg: "dg1".into(),
                volume: "vol1".into(),
                export: Export {
                    protocol: ExportProtocol::Iscsi,
                    iqn: "iqn.2026-11.io.plexd:test.dg1.vol1".into(),
                    nodes: vec!["a".into(), "b".into()],
                    portal: "127.0.0.1:3260".into(),
                    hosts: Vec::new(),
                },
            })
            .unwrap();
        let c = c
            .apply(&Change::VolExport {
                dg: "dg1".into(),
                volume: "vol1".into(),
                export: Export {
                    protocol: ExportProtocol::Nvmf,
                    iqn: "nqn.2026-11.io.plexd:test.dg1.vol1".into(),
                    nodes: Vec::new(),
                    portal: String::new(),
                    hosts: vec!["nqn.2014-08.org.nvmexpress:uuid:1".into()],
                },
            })
            .unwrap();
        let mut g = c.disk_groups[0].clone();
        g.volume_mut(0).read_policy = ReadPolicy::Prefer {
            plex: "vol1-01".into(),
        };
        g.volume_mut(1).state = VolumeState::Disabled;
        g.volume_mut(1).read_policy = ReadPolicy::LeastBusy;
        let host = crate::model::Nexus::new("iqn.1994-05.com.example:h1,i,0x1", 2);
        let r = &mut g.volume_mut(0).reservations;
        r.out(
            &host,
            0,
            0,
            &plexd_target_api::scsi::pr::param(0, 0xab, true),
        )
        .unwrap();
        r.out(
            &host,
            1,
            5,
            &plexd_target_api::scsi::pr::param(0xab, 0, false),
        )
        .unwrap();
        g
    }

    #[test]
    fn config_round_trips_through_capnp() {
        let g = sample();
        let bytes = encode_config(&g);
        assert_eq!(bytes.len() % 8, 0);
        assert_eq!(decode_config(&bytes).unwrap(), g);
    }

    #[test]
    fn decoding_garbage_is_an_error_not_a_panic() {
        let good = encode_config(&sample());
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        assert!(decode_config(&[]).is_err());
        for _ in 0..2000 {
            let len = rng.gen_range(0..256);
            let junk: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let _ = decode_config(&junk);
            let mut flipped = good.clone();
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..flipped.len());
                flipped[i] ^= 1 << rng.gen_range(0..8);
            }
            let _ = decode_config(&flipped);
            let cut = rng.gen_range(0..good.len());
            assert!(decode_config(&good[..cut]).is_err());
        }
    }
}
