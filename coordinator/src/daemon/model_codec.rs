//! The wire encoding of the daemon's configuration model: a [`SharedConfig`] as
//! `cluster.capnp`'s `SharedConfig` and an [`model::Change`] as its `ConfigChange`,
//! each one Cap'n Proto message (standard framing, unpacked) that travels in a `Data`
//! field of the core's messages. Disk groups, disks, exports, read policies and plex
//! layouts reuse the on-disk encoding (`crate::ondisk::codec`, `ondisk.capnp`).
//!
//! Malformed input is an error naming what is wrong, never a panic.

use capnp::message::{Builder, ReaderOptions};
use capnp::serialize;
use plexd_proto::cluster_capnp as wire;
use std::sync::Arc;

use super::model::SharedConfig;
use crate::core::MAX_MESSAGE_BYTES;
use crate::model::{
    Change, DiskUpdate, LogPolicy, Nexus, OpenNode, RecoverLog, VolumeLayout, MAX_OPEN_NODES,
    MAX_RECOVER_RANGES_PER_CHANGE,
};
use crate::ondisk::codec as disk;

/// Most words a decoded configuration or change may make the reader traverse: it
/// travels in a message, so the message size limit bounds it.
const TRAVERSAL_LIMIT_WORDS: usize = MAX_MESSAGE_BYTES / 8;

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Encodes the cluster-wide configuration.
pub fn encode_config(c: &SharedConfig) -> Vec<u8> {
    let mut message = Builder::new_default();
    let mut root = message.init_root::<wire::shared_config::Builder>();
    root.set_seq(c.seq);
    let mut groups = root.reborrow().init_groups(len_u32(c.groups.len()));
    for (i, g) in (0..).zip(&c.groups) {
        disk::write_group(g, groups.reborrow().get(i));
    }
    let mut updates = root.reborrow().init_updates(len_u32(c.updates.len()));
    for (i, u) in (0..).zip(c.updates.iter()) {
        let b = updates.reborrow().get(i);
        match u {
            DiskUpdate::WriteConfig(g) => disk::write_group(g, b.init_write_config()),
            DiskUpdate::Release(d) => disk::write_disk(d, b.init_release()),
        }
    }
    let mut open = root.init_open_nodes(len_u32(c.open_nodes.len()));
    for (i, o) in (0..).zip(&c.open_nodes) {
        write_open(o, open.reborrow().get(i));
    }
    serialize::write_message_to_words(&message)
}

/// Decodes [`encode_config`]'s bytes.
pub fn decode_config(bytes: &[u8]) -> Result<SharedConfig, String> {
    let message = read(bytes).map_err(|e| format!("malformed configuration: {e}"))?;
    let root = message
        .get_root::<wire::shared_config::Reader>()
        .and_then(read_config)
        .map_err(|e| format!("malformed configuration: {e}"))?;
    Ok(root)
}

/// Encodes a change.
pub fn encode_change(c: &Change) -> Vec<u8> {
    let mut message = Builder::new_default();
    write_change(c, message.init_root());
    serialize::write_message_to_words(&message)
}

/// Decodes [`encode_change`]'s bytes.
pub fn decode_change(bytes: &[u8]) -> Result<Change, String> {
    let message = read(bytes).map_err(|e| format!("malformed change: {e}"))?;
    message
        .get_root::<wire::config_change::Reader>()
        .and_then(read_change)
        .map_err(|e| format!("malformed change: {e}"))
}

fn read(
    bytes: &[u8],
) -> Result<capnp::message::Reader<capnp::serialize::BufferSegments<&[u8]>>, String> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(format!(
            "{} bytes exceed the limit of {MAX_MESSAGE_BYTES} bytes",
            bytes.len()
        ));
    }
    let mut options = ReaderOptions::new();
    options.traversal_limit_in_words(Some(TRAVERSAL_LIMIT_WORDS));
    let mut slice = bytes;
    let message = serialize::read_message_from_flat_slice(&mut slice, options)
        .map_err(|e| format!("not a Cap'n Proto message: {e}"))?;
    if !slice.is_empty() {
        return Err(format!("{} bytes after the message", slice.len()));
    }
    Ok(message)
}

fn read_config(r: wire::shared_config::Reader<'_>) -> capnp::Result<SharedConfig> {
    let mut groups = Vec::new();
    for g in r.get_groups()? {
        groups.push(disk::read_group(g)?);
    }
    let mut updates = Vec::new();
    for u in r.get_updates()? {
        use wire::disk_update::Which;
        updates.push(match u.which().map_err(|e| unknown("disk update", e))? {
            Which::WriteConfig(g) => DiskUpdate::WriteConfig(Arc::new(disk::read_group(g?)?)),
            Which::Release(d) => DiskUpdate::Release(disk::read_disk(d?)?),
        });
    }
    let open = r.get_open_nodes()?;
    if open.len() as usize > MAX_OPEN_NODES {
        return Err(capnp::Error::failed(format!(
            "{} open node starts, at most {MAX_OPEN_NODES}",
            open.len()
        )));
    }
    let mut open_nodes: Vec<OpenNode> = open.iter().map(read_open).collect();
    open_nodes.sort_unstable();
    open_nodes.dedup();
    Ok(SharedConfig {
        seq: r.get_seq(),
        groups: groups.into_iter().map(Arc::new).collect(),
        open_nodes,
        updates: Arc::new(updates),
    })
}

fn unknown(what: &str, e: capnp::NotInSchema) -> capnp::Error {
    capnp::Error::failed(format!("unknown {what} {}", e.0))
}

fn write_layout(l: &VolumeLayout, mut b: wire::volume_layout::Builder<'_>) {
    match *l {
        VolumeLayout::Concat => b.set_concat(()),
        VolumeLayout::Stripe {
            columns,
            stripe_unit_bytes,
        } => {
            let mut s = b.init_stripe();
            s.set_columns(columns);
            s.set_stripe_unit_bytes(stripe_unit_bytes);
        }
        VolumeLayout::Mirror { mirrors } => b.init_mirror().set_mirrors(mirrors),
        VolumeLayout::MirrorStripe {
            mirrors,
            columns,
            stripe_unit_bytes,
        } => {
            let mut s = b.init_mirror_stripe();
            s.set_mirrors(mirrors);
            s.set_columns(columns);
            s.set_stripe_unit_bytes(stripe_unit_bytes);
        }
    }
}

fn read_layout(r: wire::volume_layout::Reader<'_>) -> capnp::Result<VolumeLayout> {
    use wire::volume_layout::Which;
    Ok(match r.which().map_err(|e| unknown("volume layout", e))? {
        Which::Concat(()) => VolumeLayout::Concat,
        Which::Stripe(s) => VolumeLayout::Stripe {
            columns: s.get_columns(),
            stripe_unit_bytes: s.get_stripe_unit_bytes(),
        },
        Which::Mirror(m) => VolumeLayout::Mirror {
            mirrors: m.get_mirrors(),
        },
        Which::MirrorStripe(s) => VolumeLayout::MirrorStripe {
            mirrors: s.get_mirrors(),
            columns: s.get_columns(),
            stripe_unit_bytes: s.get_stripe_unit_bytes(),
        },
    })
}

fn write_change(c: &Change, b: wire::config_change::Builder<'_>) {
    match c {
        Change::DgCreate { .. }
        | Change::DgAddDisk { .. }
        | Change::DgRmDisk { .. }
        | Change::DgFailDisk { .. }
        | Change::DgReattachDisk { .. }
        | Change::DgEvacuate { .. }
        | Change::DgDestroy { .. }
        | Change::DgDeport { .. }
        | Change::DgImport { .. }
        | Change::DgSetDetachPolicy { .. } => write_dg_change(c, b),
        Change::VolCreate { .. }
        | Change::VolGrow { .. }
        | Change::VolShrink { .. }
        | Change::VolSetReadPolicy { .. }
        | Change::VolRm { .. }
        | Change::VolExport { .. }
        | Change::VolUnexport { .. }
        | Change::VolPrOut { .. } => write_vol_change(c, b),
        Change::PlexAdd { .. }
        | Change::PlexDetach { .. }
        | Change::PlexAttach { .. }
        | Change::PlexRm { .. }
        | Change::SetPlexState { .. }
        | Change::PlexDiverged { .. } => write_plex_change(c, b),
        Change::NodeOpen { node } => write_open(node, b.init_node_open()),
        Change::NodeClose { node } => write_open(node, b.init_node_close()),
        Change::NodeRecover { node, logs } => {
            let mut g = b.init_node_recover();
            write_open(node, g.reborrow());
            if !logs.is_empty() {
                write_recover_logs(logs, g.init_recover_logs(len_u32(logs.len())));
            }
        }
    }
}

/// [`write_change`] of a disk group change.
fn write_dg_change(c: &Change, b: wire::config_change::Builder<'_>) {
    match c {
        Change::DgCreate {
            dg,
            dg_id,
            shared,
            owner_id,
            disks,
        } => {
            let mut g = b.init_dg_create();
            g.set_dg(dg.as_str());
            g.set_dg_id(dg_id.as_str());
            g.set_shared(*shared);
            g.set_owner_id(owner_id.as_str());
            let mut list = g.init_disks(len_u32(disks.len()));
            for (i, d) in (0..).zip(disks) {
                disk::write_disk(d, list.reborrow().get(i));
            }
        }
        Change::DgAddDisk { dg, disk: d } => {
            let mut g = b.init_dg_add_disk();
            g.set_dg(dg.as_str());
            disk::write_disk(d, g.init_disk());
        }
        Change::DgRmDisk { dg, disk: d } => {
            let mut g = b.init_dg_rm_disk();
            g.set_dg(dg.as_str());
            g.set_disk(d.as_str());
        }
        Change::DgFailDisk { dg, disk: d, force } => {
            let mut g = b.init_dg_fail_disk();
            g.set_dg(dg.as_str());
            g.set_disk(d.as_str());
            g.set_force(*force);
        }
        Change::DgReattachDisk { dg, disk: d } => {
            let mut g = b.init_dg_reattach_disk();
            g.set_dg(dg.as_str());
            disk::write_disk(d, g.init_disk());
        }
        Change::DgEvacuate { dg, disk: d, to } => {
            let mut g = b.init_dg_evacuate();
            g.set_dg(dg.as_str());
            g.set_disk(d.as_str());
            disk::write_texts(to, g.init_to(len_u32(to.len())));
        }
        Change::DgDestroy { dg, force } => {
            let mut g = b.init_dg_destroy();
            g.set_dg(dg.as_str());
            g.set_force(*force);
        }
        Change::DgDeport { dg, force } => {
            let mut g = b.init_dg_deport();
            g.set_dg(dg.as_str());
            g.set_force(*force);
        }
        Change::DgImport {
            config,
            shared,
            owner_id,
        } => {
            let mut g = b.init_dg_import();
            disk::write_group(config, g.reborrow().init_config());
            g.set_shared(*shared);
            g.set_owner_id(owner_id.as_str());
        }
        Change::DgSetDetachPolicy { dg, policy } => {
            let mut g = b.init_dg_set_detach_policy();
            g.set_dg(dg.as_str());
            g.set_policy(disk::write_detach_policy(*policy));
        }
        _ => unreachable!("write_dg_change of {c:?}: not a disk group change"),
    }
}

/// [`write_change`] of a volume change.
fn write_vol_change(c: &Change, b: wire::config_change::Builder<'_>) {
    match c {
        Change::VolCreate {
            dg,
            volume,
            size_bytes,
            layout,
            log,
            disks,
        } => {
            let mut g = b.init_vol_create();
            g.set_dg(dg.as_str());
            g.set_volume(volume.as_str());
            g.set_size_bytes(*size_bytes);
            match log {
                LogPolicy::Off => g.set_drl_off(true),
                LogPolicy::On { region_bytes } => g.set_region_bytes(*region_bytes),
            }
            write_layout(layout, g.reborrow().init_layout());
            disk::write_texts(disks, g.init_disks(len_u32(disks.len())));
        }
        Change::VolGrow {
            dg,
            volume,
            new_size_bytes,
        } => {
            let mut g = b.init_vol_grow();
            g.set_dg(dg.as_str());
            g.set_volume(volume.as_str());
            g.set_new_size_bytes(*new_size_bytes);
        }
        Change::VolShrink {
            dg,
            volume,
            new_size_bytes,
            force,
        } => {
            let mut g = b.init_vol_shrink();
            g.set_dg(dg.as_str());
            g.set_volume(volume.as_str());
            g.set_new_size_bytes(*new_size_bytes);
            g.set_force(*force);
        }
        Change::VolSetReadPolicy { dg, volume, policy } => {
            let mut g = b.init_vol_set_read_policy();
            g.set_dg(dg.as_str());
            g.set_volume(volume.as_str());
            disk::write_read_policy(policy, g.init_policy());
        }
        Change::VolRm { dg, volume } => {
            let mut g = b.init_vol_rm();
            g.set_dg(dg.as_str());
            g.set_volume(volume.as_str());
        }
        Change::VolExport { dg, volume, export } => {
            let mut g = b.init_vol_export();
            g.set_dg(dg.as_str());
            g.set_volume(volume.as_str());
            disk::write_export(export, g.init_export());
        }
        Change::VolUnexport {
            dg,
            volume,
            protocol,
        } => {
            let mut g = b.init_vol_unexport();
            g.set_dg(dg.as_str());
            g.set_volume(volume.as_str());
            g.set_protocol(protocol.as_str());
        }
        Change::VolPrOut {
            dg,
            volume,
            nexus,
            service_action,
            scope_type,
            parameters,
        } => {
            let mut g = b.init_vol_pr_out();
            g.set_dg(dg.as_str());
            g.set_volume(volume.as_str());
            g.set_initiator(nexus.initiator.as_str());
            g.set_target_port(nexus.port);
            g.set_service_action(*service_action);
            g.set_scope_type(*scope_type);
            g.set_parameters(parameters);
        }
        _ => unreachable!("write_vol_change of {c:?}: not a volume change"),
    }
}

/// [`write_change`] of a plex change.
fn write_plex_change(c: &Change, b: wire::config_change::Builder<'_>) {
    match c {
        Change::PlexAdd {
            dg,
            volume,
            layout,
            disks,
        } => {
            let mut g = b.init_plex_add();
            g.set_dg(dg.as_str());
            g.set_volume(volume.as_str());
            disk::write_plex_layout(layout, g.reborrow().init_layout());
            disk::write_texts(disks, g.init_disks(len_u32(disks.len())));
        }
        Change::PlexDetach { dg, plex } => {
            let mut g = b.init_plex_detach();
            g.set_dg(dg.as_str());
            g.set_plex(plex.as_str());
        }
        Change::PlexAttach { dg, plex } => {
            let mut g = b.init_plex_attach();
            g.set_dg(dg.as_str());
            g.set_plex(plex.as_str());
        }
        Change::PlexRm { dg, plex, force } => {
            let mut g = b.init_plex_rm();
            g.set_dg(dg.as_str());
            g.set_plex(plex.as_str());
            g.set_force(*force);
        }
        Change::SetPlexState { dg, plex, state } => {
            let mut g = b.init_set_plex_state();
            g.set_dg(dg.as_str());
            g.set_plex(plex.as_str());
            g.set_state(disk::wire_plex_state(*state));
        }
        Change::PlexDiverged { dg, plex, ranges } => {
            let mut g = b.init_plex_diverged();
            g.set_dg(dg.as_str());
            g.set_plex(plex.as_str());
            let mut l = g.init_ranges(ranges.len().try_into().unwrap_or(u32::MAX));
            for (i, (off, len)) in (0..).zip(ranges) {
                l.reborrow().get(i).set_offset_bytes(*off);
                l.reborrow().get(i).set_len_bytes(*len);
            }
        }
        _ => unreachable!("write_plex_change of {c:?}: not a plex change"),
    }
}

fn read_change(r: wire::config_change::Reader<'_>) -> capnp::Result<Change> {
    use wire::config_change::Which;
    let which = r.which().map_err(|e| unknown("change", e))?;
    match which {
        Which::DgCreate(_)
        | Which::DgAddDisk(_)
        | Which::DgRmDisk(_)
        | Which::DgFailDisk(_)
        | Which::DgReattachDisk(_)
        | Which::DgEvacuate(_)
        | Which::DgDestroy(_)
        | Which::DgDeport(_)
        | Which::DgImport(_)
        | Which::DgSetDetachPolicy(_) => read_dg_change(which),
        Which::VolCreate(_)
        | Which::VolGrow(_)
        | Which::VolShrink(_)
        | Which::VolSetReadPolicy(_)
        | Which::VolRm(_)
        | Which::VolExport(_)
        | Which::VolUnexport(_)
        | Which::VolPrOut(_) => read_vol_change(which),
        Which::PlexAdd(_)
        | Which::PlexDetach(_)
        | Which::PlexAttach(_)
        | Which::PlexRm(_)
        | Which::SetPlexState(_)
        | Which::PlexDiverged(_) => read_plex_change(which),
        Which::NodeOpen(g) => Ok(Change::NodeOpen {
            node: read_open(g?),
        }),
        Which::NodeClose(g) => Ok(Change::NodeClose {
            node: read_open(g?),
        }),
        Which::NodeRecover(g) => {
            let g = g?;
            Ok(Change::NodeRecover {
                node: read_open(g),
                logs: read_recover_logs(g.get_recover_logs()?)?,
            })
        }
    }
}

/// [`read_change`] of a disk group change.
fn read_dg_change(which: wire::config_change::WhichReader<'_>) -> capnp::Result<Change> {
    use disk::text;
    use wire::config_change::Which;
    Ok(match which {
        Which::DgCreate(g) => {
            let mut disks = Vec::new();
            for d in g.get_disks()? {
                disks.push(disk::read_disk(d)?);
            }
            Change::DgCreate {
                dg: text(g.get_dg())?,
                dg_id: text(g.get_dg_id())?,
                shared: g.get_shared(),
                owner_id: text(g.get_owner_id())?,
                disks,
            }
        }
        Which::DgAddDisk(g) => Change::DgAddDisk {
            dg: text(g.get_dg())?,
            disk: disk::read_disk(g.get_disk()?)?,
        },
        Which::DgRmDisk(g) => Change::DgRmDisk {
            dg: text(g.get_dg())?,
            disk: text(g.get_disk())?,
        },
        Which::DgFailDisk(g) => Change::DgFailDisk {
            dg: text(g.get_dg())?,
            disk: text(g.get_disk())?,
            force: g.get_force(),
        },
        Which::DgReattachDisk(g) => Change::DgReattachDisk {
            dg: text(g.get_dg())?,
            disk: disk::read_disk(g.get_disk()?)?,
        },
        Which::DgEvacuate(g) => Change::DgEvacuate {
            dg: text(g.get_dg())?,
            disk: text(g.get_disk())?,
            to: disk::texts(g.get_to())?,
        },
        Which::DgDestroy(g) => Change::DgDestroy {
            dg: text(g.get_dg())?,
            force: g.get_force(),
        },
        Which::DgDeport(g) => Change::DgDeport {
            dg: text(g.get_dg())?,
            force: g.get_force(),
        },
        Which::DgImport(g) => Change::DgImport {
            config: disk::read_group(g.get_config()?)?,
            shared: g.get_shared(),
            owner_id: text(g.get_owner_id())?,
        },
        Which::DgSetDetachPolicy(g) => Change::DgSetDetachPolicy {
            dg: text(g.get_dg())?,
            policy: disk::read_detach_policy(g.get_policy())?,
        },
        _ => return Err(capnp::Error::failed("not a disk group change".into())),
    })
}

/// [`read_change`] of a volume change.
fn read_vol_change(which: wire::config_change::WhichReader<'_>) -> capnp::Result<Change> {
    use disk::text;
    use wire::config_change::Which;
    Ok(match which {
        Which::VolCreate(g) => Change::VolCreate {
            dg: text(g.get_dg())?,
            volume: text(g.get_volume())?,
            size_bytes: g.get_size_bytes(),
            layout: read_layout(g.get_layout()?)?,
            log: match (g.get_drl_off(), g.get_region_bytes()) {
                (true, _) => LogPolicy::Off,
                (false, 0) => LogPolicy::default(),
                (false, region_bytes) => LogPolicy::On { region_bytes },
            },
            disks: disk::texts(g.get_disks())?,
        },
        Which::VolGrow(g) => Change::VolGrow {
            dg: text(g.get_dg())?,
            volume: text(g.get_volume())?,
            new_size_bytes: g.get_new_size_bytes(),
        },
        Which::VolShrink(g) => Change::VolShrink {
            dg: text(g.get_dg())?,
            volume: text(g.get_volume())?,
            new_size_bytes: g.get_new_size_bytes(),
            force: g.get_force(),
        },
        Which::VolSetReadPolicy(g) => Change::VolSetReadPolicy {
            dg: text(g.get_dg())?,
            volume: text(g.get_volume())?,
            policy: disk::read_read_policy(g.get_policy()?)?,
        },
        Which::VolRm(g) => Change::VolRm {
            dg: text(g.get_dg())?,
            volume: text(g.get_volume())?,
        },
        Which::VolExport(g) => Change::VolExport {
            dg: text(g.get_dg())?,
            volume: text(g.get_volume())?,
            export: disk::read_export(g.get_export()?)?,
        },
        Which::VolUnexport(g) => Change::VolUnexport {
            dg: text(g.get_dg())?,
            volume: text(g.get_volume())?,
            protocol: disk::read_protocol(g.get_protocol())?,
        },
        Which::VolPrOut(g) => Change::VolPrOut {
            dg: text(g.get_dg())?,
            volume: text(g.get_volume())?,
            nexus: Nexus::new(text(g.get_initiator())?, g.get_target_port()),
            service_action: g.get_service_action(),
            scope_type: g.get_scope_type(),
            parameters: g.get_parameters()?.to_vec(),
        },
        _ => return Err(capnp::Error::failed("not a volume change".into())),
    })
}

/// [`read_change`] of a plex change.
fn read_plex_change(which: wire::config_change::WhichReader<'_>) -> capnp::Result<Change> {
    use disk::text;
    use wire::config_change::Which;
    Ok(match which {
        Which::PlexAdd(g) => Change::PlexAdd {
            dg: text(g.get_dg())?,
            volume: text(g.get_volume())?,
            layout: disk::read_plex_layout(g.get_layout()?)?,
            disks: disk::texts(g.get_disks())?,
        },
        Which::PlexDetach(g) => Change::PlexDetach {
            dg: text(g.get_dg())?,
            plex: text(g.get_plex())?,
        },
        Which::PlexAttach(g) => Change::PlexAttach {
            dg: text(g.get_dg())?,
            plex: text(g.get_plex())?,
        },
        Which::PlexRm(g) => Change::PlexRm {
            dg: text(g.get_dg())?,
            plex: text(g.get_plex())?,
            force: g.get_force(),
        },
        Which::SetPlexState(g) => Change::SetPlexState {
            dg: text(g.get_dg())?,
            plex: text(g.get_plex())?,
            state: disk::read_plex_state(g.get_state())?,
        },
        Which::PlexDiverged(g) => {
            let list = g.get_ranges()?;
            if list.len() as usize > crate::model::MAX_DIVERGED_RANGES {
                return Err(capnp::Error::failed(format!(
                    "PlexDiverged with {} ranges, at most {}",
                    list.len(),
                    crate::model::MAX_DIVERGED_RANGES
                )));
            }
            Change::PlexDiverged {
                dg: text(g.get_dg())?,
                plex: text(g.get_plex())?,
                ranges: list
                    .iter()
                    .map(|r| (r.get_offset_bytes(), r.get_len_bytes()))
                    .collect(),
            }
        }
        _ => return Err(capnp::Error::failed("not a plex change".into())),
    })
}

fn write_open(node: &OpenNode, mut b: wire::open_node_start::Builder<'_>) {
    b.set_node(node.node);
    b.set_incarnation(node.incarnation);
}

fn write_recover_logs(
    logs: &[RecoverLog],
    mut b: capnp::struct_list::Builder<'_, wire::recover_log::Owned>,
) {
    for (i, l) in (0..).zip(logs) {
        let mut lb = b.reborrow().get(i);
        lb.set_dg(l.dg.as_str());
        lb.set_volume(l.volume.as_str());
        lb.set_log_id(l.log_id);
        let mut rb = lb.init_ranges(len_u32(l.ranges.len()));
        for (j, (off, len)) in (0..).zip(&l.ranges) {
            rb.reborrow().get(j).set_offset_bytes(*off);
            rb.reborrow().get(j).set_len_bytes(*len);
        }
    }
}

/// A `nodeRecover`'s volume entries; more than [`MAX_RECOVER_RANGES_PER_CHANGE`]
/// ranges in all is malformed.
fn read_recover_logs(
    r: capnp::struct_list::Reader<'_, wire::recover_log::Owned>,
) -> capnp::Result<Vec<RecoverLog>> {
    let mut out = Vec::with_capacity(r.len() as usize);
    let mut total = 0usize;
    for l in r.iter() {
        let ranges = l.get_ranges()?;
        total += ranges.len() as usize;
        if total > MAX_RECOVER_RANGES_PER_CHANGE {
            return Err(capnp::Error::failed(format!(
                "node recovery: more than {MAX_RECOVER_RANGES_PER_CHANGE} dirty ranges"
            )));
        }
        out.push(RecoverLog {
            dg: disk::text(l.get_dg())?,
            volume: disk::text(l.get_volume())?,
            log_id: l.get_log_id(),
            ranges: ranges
                .iter()
                .map(|x| (x.get_offset_bytes(), x.get_len_bytes()))
                .collect(),
        });
    }
    Ok(out)
}

fn read_open(r: wire::open_node_start::Reader<'_>) -> OpenNode {
    OpenNode {
        node: r.get_node(),
        incarnation: r.get_incarnation(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ConfigModel;
    use crate::model::test_support::{cluster, disk};
    use crate::model::{Export, ExportProtocol, PlexLayout, PlexState, ReadPolicy};
    use rand::{Rng, SeedableRng};

    /// The variant's name; exhaustive, so a new variant must get a sample below.
    fn name(c: &Change) -> &'static str {
        match c {
            Change::DgCreate { .. } => "DgCreate",
            Change::DgAddDisk { .. } => "DgAddDisk",
            Change::DgRmDisk { .. } => "DgRmDisk",
            Change::DgFailDisk { .. } => "DgFailDisk",
            Change::DgReattachDisk { .. } => "DgReattachDisk",
            Change::DgEvacuate { .. } => "DgEvacuate",
            Change::DgDestroy { .. } => "DgDestroy",
            Change::DgDeport { .. } => "DgDeport",
            Change::DgImport { .. } => "DgImport",
            Change::VolCreate { .. } => "VolCreate",
            Change::VolGrow { .. } => "VolGrow",
            Change::VolShrink { .. } => "VolShrink",
            Change::VolSetReadPolicy { .. } => "VolSetReadPolicy",
            Change::VolRm { .. } => "VolRm",
            Change::PlexAdd { .. } => "PlexAdd",
            Change::PlexDetach { .. } => "PlexDetach",
            Change::PlexAttach { .. } => "PlexAttach",
            Change::PlexRm { .. } => "PlexRm",
            Change::SetPlexState { .. } => "SetPlexState",
            Change::VolExport { .. } => "VolExport",
            Change::VolUnexport { .. } => "VolUnexport",
            Change::VolPrOut { .. } => "VolPrOut",
            Change::NodeOpen { .. } => "NodeOpen",
            Change::NodeClose { .. } => "NodeClose",
            Change::NodeRecover { .. } => "NodeRecover",
            Change::DgSetDetachPolicy { .. } => "DgSetDetachPolicy",
            Change::PlexDiverged { .. } => "PlexDiverged",
        }
    }

    /// A shared configuration with a mirrored, exported volume and a striped one.
    fn config() -> SharedConfig {
        let c0 = SharedConfig {
            seq: 0,
            groups: cluster(&[("d1", 1 << 30), ("d2", 1 << 30), ("d3", 1 << 30)])
                .disk_groups
                .into_iter()
                .map(Arc::new)
                .collect(),
            open_nodes: Vec::new(),
            updates: Arc::default(),
        };
        let mut c = c0;
        for change in [
            Change::VolCreate {
                dg: "dg1".into(),
                volume: "v1".into(),
                size_bytes: 64 << 20,
                layout: VolumeLayout::Mirror { mirrors: 2 },
                log: Default::default(),
                disks: Vec::new(),
            },
            Change::VolCreate {
                dg: "dg1".into(),
                volume: "v2".into(),
                size_bytes: 8 << 20,
                layout: VolumeLayout::MirrorStripe {
                    mirrors: 1,
                    columns: 3,
                    stripe_unit_bytes: 64 << 10,
                },
                log: Default::default(),
                disks: Vec::new(),
            },
            export(),
            Change::NodeOpen {
                node: OpenNode {
                    node: 2,
                    incarnation: 77,
                },
            },
        ] {
            c = c.validate_and_apply(&change).unwrap();
        }
        c
    }

    fn export() -> Change {
        Change::VolExport {
            dg: "dg1".into(),
            volume: "v1".into(),
            export: Export {
                protocol: ExportProtocol::Iscsi,
                iqn: "iqn.2026-11.io.plexd:c1.dg1.v1".into(),
                nodes: vec!["a".into(), "b".into()],
                portal: "127.0.0.1:3260".into(),
                hosts: Vec::new(),
            },
        }
    }

    /// A sample of every change, some twice (one per layout, policy or protocol).
    fn changes() -> Vec<Change> {
        [
            dg_changes(),
            vol_changes(),
            plex_changes(),
            export_changes(),
        ]
        .concat()
    }

    /// Disk group changes.
    fn dg_changes() -> Vec<Change> {
        let dg = || "dg1".to_string();
        vec![
            Change::DgCreate {
                dg: dg(),
                dg_id: "0123456789abcdef0123456789abcdef".into(),
                shared: true,
                owner_id: "c1".into(),
                disks: vec![disk("d1", 1 << 30), disk("d2", 2 << 30)],
            },
            Change::DgAddDisk {
                dg: dg(),
                disk: disk("d4", 5 << 20),
            },
            Change::DgRmDisk {
                dg: dg(),
                disk: "d4".into(),
            },
            Change::DgFailDisk {
                dg: dg(),
                disk: "d1".into(),
                force: true,
            },
            Change::DgEvacuate {
                dg: dg(),
                disk: "d2".into(),
                to: vec!["d3".into(), "d4".into()],
            },
            Change::DgEvacuate {
                dg: dg(),
                disk: "d2".into(),
                to: Vec::new(),
            },
            Change::DgReattachDisk {
                dg: dg(),
                disk: crate::model::Disk {
                    failed: true,
                    staled: vec![
                        crate::model::StaledPlex {
                            plex: "v1-01".into(),
                            last_active: true,
                        },
                        crate::model::StaledPlex {
                            plex: "v2-02".into(),
                            last_active: false,
                        },
                    ],
                    ..disk("d1", 1 << 30)
                },
            },
            Change::DgDestroy {
                dg: dg(),
                force: true,
            },
            Change::DgDeport {
                dg: dg(),
                force: false,
            },
            Change::DgImport {
                config: (*config().groups[0]).clone(),
                shared: true,
                owner_id: "c1".into(),
            },
        ]
    }

    /// Volume changes but exports and reservations.
    fn vol_changes() -> Vec<Change> {
        let dg = || "dg1".to_string();
        vec![
            Change::VolCreate {
                dg: dg(),
                volume: "v3".into(),
                size_bytes: 1 << 40,
                layout: VolumeLayout::Stripe {
                    columns: 2,
                    stripe_unit_bytes: 128 << 10,
                },
                log: Default::default(),
                disks: Vec::new(),
            },
            Change::VolCreate {
                dg: dg(),
                volume: "v4".into(),
                size_bytes: 512,
                layout: VolumeLayout::Concat,
                log: Default::default(),
                disks: Vec::new(),
            },
            Change::VolCreate {
                dg: dg(),
                volume: "v5".into(),
                size_bytes: 8 << 20,
                layout: VolumeLayout::Mirror { mirrors: 3 },
                log: LogPolicy::Off,
                disks: vec!["d1".into(), "d4".into(), "d6".into()],
            },
            Change::VolCreate {
                dg: dg(),
                volume: "v6".into(),
                size_bytes: 8 << 20,
                layout: VolumeLayout::Mirror { mirrors: 2 },
                log: LogPolicy::On {
                    region_bytes: 1 << 20,
                },
                disks: Vec::new(),
            },
            Change::VolGrow {
                dg: dg(),
                volume: "v1".into(),
                new_size_bytes: 128 << 20,
            },
            Change::VolShrink {
                dg: dg(),
                volume: "v1".into(),
                new_size_bytes: 32 << 20,
                force: true,
            },
            Change::VolSetReadPolicy {
                dg: dg(),
                volume: "v1".into(),
                policy: ReadPolicy::Prefer {
                    plex: "v1-01".into(),
                },
            },
            Change::VolSetReadPolicy {
                dg: dg(),
                volume: "v1".into(),
                policy: ReadPolicy::LeastBusy,
            },
            Change::DgSetDetachPolicy {
                dg: dg(),
                policy: crate::model::DetachPolicy::Local,
            },
            Change::VolRm {
                dg: dg(),
                volume: "v2".into(),
            },
        ]
    }

    /// Plex changes.
    fn plex_changes() -> Vec<Change> {
        let dg = || "dg1".to_string();
        vec![
            Change::PlexAdd {
                dg: dg(),
                volume: "v1".into(),
                layout: PlexLayout::Stripe {
                    columns: 2,
                    stripe_unit_bytes: 64 << 10,
                },
                disks: vec!["d1".into(), "d3".into()],
            },
            Change::PlexAdd {
                dg: dg(),
                volume: "v1".into(),
                layout: PlexLayout::Concat,
                disks: Vec::new(),
            },
            Change::PlexDetach {
                dg: dg(),
                plex: "v1-02".into(),
            },
            Change::PlexDiverged {
                dg: dg(),
                plex: "v1-02".into(),
                ranges: vec![(0, 4096), (1 << 20, 64 << 10)],
            },
            Change::PlexAttach {
                dg: dg(),
                plex: "v1-02".into(),
            },
            Change::PlexRm {
                dg: dg(),
                plex: "v1-02".into(),
                force: true,
            },
            Change::SetPlexState {
                dg: dg(),
                plex: "v1-02".into(),
                state: PlexState::Syncing,
            },
        ]
    }

    /// Exports and reservations.
    fn export_changes() -> Vec<Change> {
        let dg = || "dg1".to_string();
        vec![
            export(),
            Change::VolUnexport {
                dg: dg(),
                volume: "v1".into(),
                protocol: ExportProtocol::Iscsi,
            },
            Change::VolExport {
                dg: dg(),
                volume: "v1".into(),
                export: Export {
                    protocol: ExportProtocol::Nvmf,
                    iqn: "nqn.2026-11.io.plexd:c1.dg1.v1".into(),
                    nodes: Vec::new(),
                    portal: String::new(),
                    hosts: vec!["nqn.2014-08.org.nvmexpress:uuid:h1".into()],
                },
            },
            Change::VolPrOut {
                dg: dg(),
                volume: "v1".into(),
                nexus: Nexus::new("iqn.2026-12.io.example:h1,i,0x23d000000001", 2),
                service_action: 0,
                scope_type: 0,
                parameters: vec![0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7],
            },
            Change::NodeOpen {
                node: OpenNode {
                    node: 2,
                    incarnation: 77,
                },
            },
            Change::NodeClose {
                node: OpenNode {
                    node: 2,
                    incarnation: 77,
                },
            },
            Change::NodeRecover {
                node: OpenNode {
                    node: 3,
                    incarnation: 1 << 40,
                },
                logs: vec![],
            },
            Change::NodeRecover {
                node: OpenNode {
                    node: 3,
                    incarnation: 7,
                },
                logs: vec![
                    RecoverLog {
                        dg: "dg1".into(),
                        volume: "v1".into(),
                        log_id: 0x77,
                        ranges: vec![(0, 512 << 10), (4 << 20, 1 << 20)],
                    },
                    RecoverLog {
                        dg: "dg1".into(),
                        volume: "v2".into(),
                        log_id: 0x78,
                        ranges: vec![],
                    },
                ],
            },
        ]
    }

    #[test]
    fn every_change_round_trips() {
        let changes = changes();
        let names: std::collections::BTreeSet<_> = changes.iter().map(name).collect();
        assert_eq!(names.len(), 27, "a sample of every change: {names:?}");
        for c in &changes {
            let bytes = encode_change(c);
            assert_eq!(decode_change(&bytes).as_ref(), Ok(c));
            assert_eq!(SharedConfig::decode_change(&bytes).as_ref(), Ok(c));
        }
    }

    #[test]
    fn shared_config_round_trips_with_its_disk_updates() {
        let c = config();
        assert!(!c.updates.is_empty());
        assert_eq!(decode_config(&encode_config(&c)), Ok(c.clone()));
        // The commit of a destroy releases the disks.
        let d = c
            .validate_and_apply(&Change::DgDestroy {
                dg: "dg1".into(),
                force: true,
            })
            .unwrap();
        assert!(matches!(d.updates[0], DiskUpdate::Release(_)));
        assert_eq!(SharedConfig::decode(&d.encode()), Ok(d));
        let empty = SharedConfig::default();
        assert_eq!(SharedConfig::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn garbage_and_truncated_input_is_an_error_not_a_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let good = [
            encode_config(&config()),
            encode_change(&changes()[5]),
            encode_change(&export()),
        ];
        assert!(decode_config(&[]).is_err());
        assert!(decode_change(b"{\"VolRm\":{\"dg\":\"dg1\",\"volume\":\"v1\"}}").is_err());
        for _ in 0..2000 {
            let len = rng.gen_range(0..256);
            let junk: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            let _ = decode_config(&junk);
            let _ = decode_change(&junk);
            let g = &good[rng.gen_range(0..good.len())];
            let cut = rng.gen_range(0..g.len());
            assert!(decode_config(&g[..cut]).is_err());
            assert!(decode_change(&g[..cut]).is_err());
            let mut flipped = g.clone();
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..flipped.len());
                flipped[i] ^= 1 << rng.gen_range(0..8);
            }
            let _ = decode_config(&flipped);
            let _ = decode_change(&flipped);
        }
    }
}
