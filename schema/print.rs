//! `plexctl print`'s two renderings of the ctl API's `PrintedConfig`: the stable
//! JSON document and the vxprint -ht-like text tree. plexctl renders a node's answer
//! with them; a node renders the same for the answer's older `json`/`text` fields.
//!
//! JSON shape (docs/OPERATIONS.md): `{"disk_groups": [{"name", "id", "shared", "seq",
//! "owner", "detach_policy", "disks": [{"name", "id", "path", "size", "public_offset", "public_len", "failed" (only when true), "staled": [{"plex", "last_active"}] (a failed
//! disk's plexes that `dg reattach-disk` brings back; only when any)}],
//! "volumes": [{"name", "size", "state", "read_policy", "plexes": [{"name", "state",
//! "layout", "columns", "stripe_unit", "subdisks": [{"name", "disk", "disk_offset",
//! "len", "column", "plex_offset"}], "resync": {"ranges", "bytes", "list"}}],
//! "exports": [{"protocol", "iqn", "nodes", "portal", "hosts"}], "log": {"disk",
//! "disk_offset", "len", "section", "region", "log_id"}}]}], "failed_disk_groups":
//! [{"name", "id", "shared", "state", "reason", "disks"}]}` (`failed_disk_groups` left
//! out when empty; a volume's `log` only when it has a dirty region log; a plex's
//! `resync` only when it is SYNCING with ranges left: their count, bytes and
//! `[offset, len]` list). Sizes are bytes;
//! an export's empty `nodes` means every node, its empty `portal` each node's own, its
//! empty `hosts` (nvmf) any host; `iqn` is the target name (the NQN for nvmf).
//!
//! A value this build does not know (a state or layout a newer node added) is shown
//! as `unknown(N)` rather than failing the whole answer.

use serde_json::{json, Value};

use crate::ctl_capnp::printed_config;
use crate::ondisk_capnp as disk;
use crate::size::format_size;

fn text(r: capnp::Result<capnp::text::Reader<'_>>) -> capnp::Result<String> {
    r?.to_string()
        .map_err(|e| capnp::Error::failed(format!("text is not UTF-8: {e}")))
}

fn volume_state(s: Result<disk::VolumeState, capnp::NotInSchema>) -> String {
    match s {
        Ok(disk::VolumeState::Enabled) => "ENABLED".into(),
        Ok(disk::VolumeState::Disabled) => "DISABLED".into(),
        Err(e) => format!("unknown({})", e.0),
    }
}

fn plex_state(s: Result<disk::PlexState, capnp::NotInSchema>) -> String {
    match s {
        Ok(disk::PlexState::Active) => "ACTIVE".into(),
        Ok(disk::PlexState::Stale) => "STALE".into(),
        Ok(disk::PlexState::Syncing) => "SYNCING".into(),
        Ok(disk::PlexState::Empty) => "EMPTY".into(),
        Err(e) => format!("unknown({})", e.0),
    }
}

/// A group's detach policy: `global`, `local`, or `unknown(N)` from a newer node.
fn detach_policy(p: Result<disk::DetachPolicy, capnp::NotInSchema>) -> String {
    match p {
        Ok(disk::DetachPolicy::Global) => "global".into(),
        Ok(disk::DetachPolicy::Local) => "local".into(),
        Err(capnp::NotInSchema(n)) => format!("unknown({n})"),
    }
}

fn read_policy(p: disk::read_policy::Reader<'_>) -> capnp::Result<String> {
    use disk::read_policy::Which;
    Ok(match p.which() {
        Ok(Which::Round(())) => "round".into(),
        Ok(Which::Prefer(plex)) => format!("prefer:{}", text(plex)?),
        Ok(Which::LeastBusy(())) => "least-busy".into(),
        Err(e) => format!("unknown({})", e.0),
    })
}

/// A plex layout's name, columns and stripe unit (concat: 1 column, no unit).
fn layout(l: disk::plex_layout::Reader<'_>) -> (String, u32, u64) {
    use disk::plex_layout::Which;
    match l.which() {
        Ok(Which::Concat(())) => ("concat".into(), 1, 0),
        Ok(Which::Stripe(s)) => ("stripe".into(), s.get_columns(), s.get_stripe_unit_bytes()),
        Err(e) => (format!("unknown({})", e.0), 0, 0),
    }
}

/// A plex's ranges still to copy: how many, their bytes, and the ranges.
type ResyncRanges = (u32, u64, Vec<[u64; 2]>);

/// A plex's ranges still to copy; None for none.
fn resync_ranges(p: disk::plex::Reader<'_>) -> capnp::Result<Option<ResyncRanges>> {
    let ranges = p.get_resync_ranges()?;
    if ranges.is_empty() {
        return Ok(None);
    }
    let list: Vec<[u64; 2]> = ranges
        .iter()
        .map(|r| [r.get_offset_bytes(), r.get_len_bytes()])
        .collect();
    let bytes = list.iter().fold(0u64, |sum, r| sum.saturating_add(r[1]));
    Ok(Some((ranges.len(), bytes, list)))
}

/// The JSON document.
pub fn json(c: printed_config::Reader<'_>) -> capnp::Result<Value> {
    let mut groups = Vec::new();
    for g in c.get_disk_groups()? {
        let mut disks = Vec::new();
        for d in g.get_disks()? {
            let mut disk = json!({
                "name": text(d.get_name())?,
                "id": text(d.get_id())?,
                "path": text(d.get_path())?,
                "size": d.get_size_bytes(),
                "public_offset": d.get_public_offset_bytes(),
                "public_len": d.get_public_len_bytes(),
            });
            if d.get_failed() {
                disk["failed"] = json!(true);
            }
            let staled = d.get_staled()?;
            if !staled.is_empty() {
                let mut list = Vec::new();
                for sp in staled {
                    list.push(json!({
                        "plex": text(sp.get_plex())?,
                        "last_active": sp.get_last_active(),
                    }));
                }
                disk["staled"] = json!(list);
            }
            disks.push(disk);
        }
        let mut volumes = Vec::new();
        for v in g.get_volumes()? {
            let mut plexes = Vec::new();
            for p in v.get_plexes()? {
                let (kind, columns, su) = layout(p.get_layout()?);
                let mut subdisks = Vec::new();
                for s in p.get_subdisks()? {
                    subdisks.push(json!({
                        "name": text(s.get_name())?,
                        "disk": text(s.get_disk())?,
                        "disk_offset": s.get_disk_offset_bytes(),
                        "len": s.get_len_bytes(),
                        "column": s.get_column(),
                        "plex_offset": s.get_plex_offset_bytes(),
                    }));
                }
                let mut plex = json!({
                    "name": text(p.get_name())?,
                    "state": plex_state(p.get_state()),
                    "layout": kind,
                    "columns": columns,
                    "stripe_unit": su,
                    "subdisks": subdisks,
                });
                if let Some((count, bytes, list)) = resync_ranges(p)? {
                    plex["resync"] = json!({ "ranges": count, "bytes": bytes, "list": list });
                }
                let replaces = text(p.get_replaces())?;
                if !replaces.is_empty() {
                    plex["replaces"] = json!(replaces);
                }
                plexes.push(plex);
            }
            let mut exports = Vec::new();
            for e in v.get_exports()? {
                let mut nodes = Vec::new();
                for n in e.get_nodes()? {
                    nodes.push(text(n)?);
                }
                let mut hosts = Vec::new();
                for h in e.get_hosts()? {
                    hosts.push(text(h)?);
                }
                exports.push(json!({
                    "protocol": text(e.get_protocol())?,
                    "iqn": text(e.get_iqn())?,
                    "nodes": nodes,
                    "portal": text(e.get_portal())?,
                    "hosts": hosts,
                }));
            }
            let mut volume = json!({
                "name": text(v.get_name())?,
                "size": v.get_size_bytes(),
                "state": volume_state(v.get_state()),
                "read_policy": read_policy(v.get_read_policy()?)?,
                "plexes": plexes,
                "exports": exports,
            });
            if v.has_log() {
                let l = v.get_log()?;
                let mut copies = vec![json!({
                    "disk": text(l.get_disk())?,
                    "disk_offset": l.get_disk_offset_bytes(),
                })];
                for c in l.get_more_copies()? {
                    copies.push(json!({
                        "disk": text(c.get_disk())?,
                        "disk_offset": c.get_disk_offset_bytes(),
                    }));
                }
                volume["log"] = json!({
                    "disk": text(l.get_disk())?,
                    "disk_offset": l.get_disk_offset_bytes(),
                    "copies": copies,
                    "len": l.get_len_bytes(),
                    "section": l.get_section_bytes(),
                    "region": l.get_region_bytes(),
                    "log_id": l.get_log_id(),
                });
            }
            volumes.push(volume);
        }
        groups.push(json!({
            "name": text(g.get_name())?,
            "id": text(g.get_id())?,
            "shared": g.get_shared(),
            "seq": g.get_seq(),
            "owner": text(g.get_owner_id())?,
            "detach_policy": detach_policy(g.get_detach_policy()),
            "disks": disks,
            "volumes": volumes,
        }));
    }
    let mut failed = Vec::new();
    for f in c.get_failed_groups()? {
        let mut disks = Vec::new();
        for d in f.get_disks()? {
            disks.push(text(d.get_name())?);
        }
        failed.push(json!({
            "name": text(f.get_name())?,
            "id": text(f.get_id())?,
            "shared": f.get_shared(),
            "state": "failed",
            "reason": text(f.get_reason())?,
            "disks": disks,
        }));
    }
    Ok(if failed.is_empty() {
        json!({ "disk_groups": groups })
    } else {
        json!({ "disk_groups": groups, "failed_disk_groups": failed })
    })
}

/// The text tree (`dg`, `dm`, `v`, `lg`, `ex`, `pl`, `sd` lines; a SYNCING plex's
/// `pl` line ends with the ranges left to copy), then one
/// `dg NAME KIND FAILED reason` line (with its `dm` lines) per failed disk group.
pub fn text_tree(c: printed_config::Reader<'_>) -> capnp::Result<String> {
    let mut s = String::new();
    s.push_str("DG NAME         KIND     SEQ    OWNER\n");
    s.push_str("DM NAME         DEVICE                               LENGTH\n");
    s.push_str("V  NAME         STATE    LENGTH   READPOL\n");
    s.push_str("PL NAME         VOLUME       STATE    LAYOUT   LENGTH\n");
    s.push_str("SD NAME         PLEX         DISK     OFFSET   LENGTH   [COL/]OFF\n");
    s.push_str("EX PROTO  VOLUME       NODES        PORTAL           TARGET\n");
    for g in c.get_disk_groups()? {
        s.push('\n');
        let kind = if g.get_shared() { "shared" } else { "private" };
        // The default policy is not shown; another one follows the owner.
        let policy = match detach_policy(g.get_detach_policy()) {
            p if p == "global" => String::new(),
            p => format!(" detach-policy={p}"),
        };
        s.push_str(&format!(
            "dg {:<12} {:<8} {:<6} {}{policy}\n",
            text(g.get_name())?,
            kind,
            g.get_seq(),
            text(g.get_owner_id())?
        ));
        for d in g.get_disks()? {
            s.push_str(&format!(
                "dm {:<12} {:<36} {}{}\n",
                text(d.get_name())?,
                text(d.get_path())?,
                format_size(d.get_public_len_bytes()),
                if d.get_failed() { " FAILED" } else { "" }
            ));
        }
        for v in g.get_volumes()? {
            let vname = text(v.get_name())?;
            s.push('\n');
            s.push_str(&format!(
                "v  {:<12} {:<8} {:<8} {}\n",
                vname,
                volume_state(v.get_state()),
                format_size(v.get_size_bytes()),
                read_policy(v.get_read_policy()?)?
            ));
            if v.has_log() {
                let l = v.get_log()?;
                // One line per copy.
                let mut copies = vec![(text(l.get_disk())?, l.get_disk_offset_bytes())];
                for c in l.get_more_copies()? {
                    copies.push((text(c.get_disk())?, c.get_disk_offset_bytes()));
                }
                for (disk, offset) in copies {
                    s.push_str(&format!(
                        "lg {:<12} {:<8} {:<8} {:<8} region {}\n",
                        vname,
                        disk,
                        format_size(offset),
                        format_size(l.get_len_bytes()),
                        format_size(l.get_region_bytes())
                    ));
                }
            }
            for e in v.get_exports()? {
                let mut nodes = Vec::new();
                for n in e.get_nodes()? {
                    nodes.push(text(n)?);
                }
                let nodes = if nodes.is_empty() {
                    "all".to_string()
                } else {
                    nodes.join(",")
                };
                let portal = text(e.get_portal())?;
                let portal = if portal.is_empty() {
                    "(node's)".to_string()
                } else {
                    portal
                };
                let protocol = text(e.get_protocol())?;
                let mut hosts = Vec::new();
                for h in e.get_hosts()? {
                    hosts.push(text(h)?);
                }
                let hosts = match (protocol.as_str(), hosts.is_empty()) {
                    ("nvmf", true) => " hosts=any".to_string(),
                    (_, true) => String::new(),
                    (_, false) => format!(" hosts={}", hosts.join(",")),
                };
                s.push_str(&format!(
                    "ex {:<6} {:<12} {:<12} {:<16} {}{hosts}\n",
                    protocol,
                    vname,
                    nodes,
                    portal,
                    text(e.get_iqn())?
                ));
            }
            for p in v.get_plexes()? {
                let pname = text(p.get_name())?;
                let (kind, columns, su) = layout(p.get_layout()?);
                let lay = match kind.as_str() {
                    "stripe" => format!("STRIPE {columns}/{}", format_size(su)),
                    "concat" => "CONCAT".to_string(),
                    other => other.to_string(),
                };
                let mut notes = match resync_ranges(p)? {
                    Some((count, bytes, _)) => {
                        format!(" resync {count} ranges {} left", format_size(bytes))
                    }
                    None => String::new(),
                };
                let replaces = text(p.get_replaces())?;
                if !replaces.is_empty() {
                    notes += &format!(" replaces {replaces}");
                }
                s.push_str(&format!(
                    "pl {:<12} {:<12} {:<8} {:<8} {}{notes}\n",
                    pname,
                    vname,
                    plex_state(p.get_state()),
                    lay,
                    format_size(v.get_size_bytes())
                ));
                for sd in p.get_subdisks()? {
                    s.push_str(&format!(
                        "sd {:<12} {:<12} {:<8} {:<8} {:<8} {}/{}\n",
                        text(sd.get_name())?,
                        pname,
                        text(sd.get_disk())?,
                        format_size(sd.get_disk_offset_bytes()),
                        format_size(sd.get_len_bytes()),
                        sd.get_column(),
                        format_size(sd.get_plex_offset_bytes())
                    ));
                }
            }
        }
    }
    for f in c.get_failed_groups()? {
        let kind = if f.get_shared() { "shared" } else { "private" };
        s.push('\n');
        s.push_str(&format!(
            "dg {:<12} {:<8} FAILED {}\n",
            text(f.get_name())?,
            kind,
            text(f.get_reason())?
        ));
        for d in f.get_disks()? {
            s.push_str(&format!(
                "dm {:<12} {}\n",
                text(d.get_name())?,
                text(d.get_path())?
            ));
        }
    }
    Ok(s)
}
