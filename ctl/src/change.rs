//! Change commands: the `Change` each builds, checked for usage errors before any
//! node is asked.

use plexd_proto::ctl_capnp as c;

use crate::cli::*;
use crate::failure::Failure;

/// A size on the command line (the coordinator's parser: K/M/G/T/P, `s` sectors, a
/// fraction when it makes whole bytes); a bad one is a usage error.
pub(crate) fn parse_size(s: &str) -> Result<u64, Failure> {
    plexd_proto::size::parse_size(s).map_err(|e| Failure::Usage(e.to_string()))
}

/// `vol grow` / `vol shrink` SIZE: `(bytes, relative)`; `+SIZE` grows by, `-SIZE`
/// shrinks by (the other sign is a usage error).
pub(crate) fn parse_resize(s: &str, grow: bool) -> Result<(u64, bool), Failure> {
    let (sign, rest) = match s.trim().chars().next() {
        Some(c @ ('+' | '-')) => (Some(c), &s.trim()[1..]),
        _ => (None, s),
    };
    match (sign, grow) {
        (None, _) => Ok((parse_size(s)?, false)),
        (Some('+'), true) | (Some('-'), false) => {
            let by = parse_size(rest)?;
            if by == 0 {
                return Err(Failure::Usage(format!("size {s:?}: a change of 0 bytes")));
            }
            Ok((by, true))
        }
        (Some(_), _) => Err(Failure::Usage(format!(
            "size {s:?}: vol {} takes SIZE or {}SIZE",
            if grow { "grow" } else { "shrink" },
            if grow { '+' } else { '-' }
        ))),
    }
}

/// Fills the `Change` of a change request.
pub(crate) type ChangeBuilder = Box<dyn Fn(c::change::Builder<'_>)>;

/// Fills `list` (made with `texts.len()` entries) with `texts`.
fn fill(mut list: capnp::text_list::Builder<'_>, texts: &[String]) {
    for (i, t) in (0..).zip(texts) {
        list.set(i, t.as_str());
    }
}

/// Sets the change's `disks` (the disks a new plex may use), when any are named.
fn set_disks(b: c::change::Builder<'_>, disks: &[String]) {
    if !disks.is_empty() {
        fill(b.init_disks(disks.len() as u32), disks);
    }
}

/// The change request of `cmd`, checked for usage errors; `None` for read commands.
pub(crate) fn build_change(cmd: &Cmd) -> Result<Option<ChangeBuilder>, Failure> {
    Ok(Some(match cmd {
        Cmd::Dg(c) => return dg_change(c),
        Cmd::Vol(c) => return vol_change(c),
        Cmd::Plex(c) => return plex_change(c),
        Cmd::Export {
            protocol,
            dg,
            vol,
            all: _,
            on,
            iqn,
            nqn,
            portal,
            hosts,
        } => {
            let on = on.clone();
            let (protocol, dg, vol) = (protocol.clone(), dg.clone(), vol.clone());
            // One name field carries either (the node checks it for the protocol).
            let name = iqn.clone().or_else(|| nqn.clone()).unwrap_or_default();
            let (portal, hosts) = (portal.clone(), hosts.clone());
            Box::new(move |b| {
                let mut x = b.init_vol_export();
                x.set_protocol(protocol.as_str());
                x.set_dg(dg.as_str());
                x.set_volume(vol.as_str());
                x.set_iqn(name.as_str());
                x.set_portal(portal.as_deref().unwrap_or(""));
                fill(x.reborrow().init_hosts(hosts.len() as u32), &hosts);
                fill(x.init_nodes(u32::from(on.is_some())), on.as_slice());
            })
        }
        Cmd::Unexport { protocol, dg, vol } => {
            let (protocol, dg, vol) = (protocol.clone(), dg.clone(), vol.clone());
            Box::new(move |b| {
                let mut x = b.init_vol_unexport();
                x.set_protocol(protocol.as_str());
                x.set_dg(dg.as_str());
                x.set_volume(vol.as_str());
            })
        }
        _ => return Ok(None),
    }))
}

/// The change of a `dg` command; `None` for its read commands.
fn dg_change(cmd: &DgCmd) -> Result<Option<ChangeBuilder>, Failure> {
    Ok(Some(match cmd {
        DgCmd::Create { dg, disks, shared } => {
            let (dg, disks, shared) = (dg.clone(), disks.clone(), *shared);
            Box::new(move |b| {
                let mut x = b.init_dg_create();
                x.set_dg(dg.as_str());
                x.set_shared(shared);
                fill(x.init_disks(disks.len() as u32), &disks);
            })
        }
        DgCmd::AddDisk { dg, disk }
        | DgCmd::RmDisk { dg, disk }
        | DgCmd::ReattachDisk { dg, disk, .. }
        | DgCmd::Evacuate { dg, disk, .. } => {
            let (dg, disk, cmd) = (dg.clone(), disk.clone(), cmd.clone());
            Box::new(move |mut b| {
                if let DgCmd::Evacuate { to, .. } = &cmd {
                    set_disks(b.reborrow(), to);
                }
                let mut x = match cmd {
                    DgCmd::AddDisk { .. } => b.init_dg_add_disk(),
                    DgCmd::RmDisk { .. } => b.init_dg_rm_disk(),
                    DgCmd::Evacuate { .. } => b.init_dg_evacuate(),
                    _ => b.init_dg_reattach_disk(),
                };
                x.set_dg(dg.as_str());
                x.set_disk(disk.as_str());
            })
        }
        DgCmd::FailDisk { dg, disk, force } => {
            let (dg, disk, force) = (dg.clone(), disk.clone(), *force);
            Box::new(move |mut b| {
                b.set_force(force);
                let mut x = b.init_dg_fail_disk();
                x.set_dg(dg.as_str());
                x.set_disk(disk.as_str());
            })
        }
        DgCmd::Destroy { dg, force } => {
            let (dg, force) = (dg.clone(), *force);
            Box::new(move |mut b| {
                b.set_force(force);
                b.set_dg_destroy(dg.as_str())
            })
        }
        DgCmd::Deport { dg, force } => {
            let (dg, force) = (dg.clone(), *force);
            Box::new(move |mut b| {
                b.set_force(force);
                b.set_dg_deport(dg.as_str())
            })
        }
        DgCmd::Set { dg, settings } => {
            let policy = setting(settings, "dg set", "detach-policy", "global|local", |v| {
                matches!(v, "global" | "local")
            })?;
            let dg = dg.clone();
            Box::new(move |b| {
                let mut x = b.init_dg_set();
                x.set_dg(dg.as_str());
                x.set_detach_policy(policy.as_str());
            })
        }
        DgCmd::Import {
            dg,
            shared,
            clear_owner,
        } => {
            let (dg, shared, clear_owner) = (dg.clone(), *shared, *clear_owner);
            Box::new(move |b| {
                let mut x = b.init_dg_import();
                x.set_dg(dg.as_str());
                x.set_shared(shared);
                x.set_clear_owner(clear_owner);
            })
        }
        _ => return Ok(None),
    }))
}

/// The change of a `vol` command; `None` for its read commands.
fn vol_change(cmd: &VolCmd) -> Result<Option<ChangeBuilder>, Failure> {
    Ok(Some(match cmd {
        VolCmd::Create {
            dg,
            vol,
            size,
            layout,
            mirrors,
            columns,
            stripe_unit,
            drl,
            region_size,
            disks,
        } => {
            let size = parse_size(size)?;
            let drl_off = *drl == Drl::Off;
            let region_bytes = match (region_size, drl_off) {
                (Some(r), true) => {
                    return Err(Failure::Usage(format!(
                        "volume {vol}: --region-size {r} with --drl off (no log to size)"
                    )))
                }
                (Some(r), false) => match parse_size(r)? {
                    0 => {
                        return Err(Failure::Usage(format!(
                            "volume {vol}: --region-size {r}: must be a power of two from 64K to 1G"
                        )))
                    }
                    n => n,
                },
                (None, _) => 0,
            };
            if size == 0 {
                return Err(Failure::Usage(format!(
                    "volume {vol}: size 0: a volume holds at least one 512-byte block"
                )));
            }
            let su = match stripe_unit {
                Some(s) => match parse_size(s)? {
                    0 => {
                        return Err(Failure::Usage(format!(
                            "--stripe-unit {s}: must be a non-zero multiple of 4K"
                        )))
                    }
                    n => n,
                },
                None => 0,
            };
            let (dg, vol, layout, mirrors, columns, disks) = (
                dg.clone(),
                vol.clone(),
                *layout,
                mirrors.unwrap_or(0),
                columns.unwrap_or(0),
                disks.clone(),
            );
            Box::new(move |mut b| {
                set_disks(b.reborrow(), &disks);
                let mut x = b.init_vol_create();
                x.set_dg(dg.as_str());
                x.set_volume(vol.as_str());
                x.set_size_bytes(size);
                x.set_layout(match layout {
                    Layout::Concat => c::Layout::Concat,
                    Layout::Stripe => c::Layout::Stripe,
                    Layout::Mirror => c::Layout::Mirror,
                    Layout::MirrorStripe => c::Layout::MirrorStripe,
                });
                x.set_mirrors(mirrors);
                x.set_columns(columns);
                x.set_stripe_unit_bytes(su);
                x.set_drl_off(drl_off);
                x.set_region_bytes(region_bytes);
            })
        }
        VolCmd::Grow { dg, vol, size } | VolCmd::Shrink { dg, vol, size, .. } => {
            let grow = matches!(cmd, VolCmd::Grow { .. });
            let force = matches!(cmd, VolCmd::Shrink { force: true, .. });
            let (size, relative) = parse_resize(size, grow)?;
            let (dg, vol) = (dg.clone(), vol.clone());
            Box::new(move |mut b| {
                b.set_force(force);
                let mut x = if grow {
                    b.init_vol_grow()
                } else {
                    b.init_vol_shrink()
                };
                x.set_dg(dg.as_str());
                x.set_volume(vol.as_str());
                x.set_new_size_bytes(size);
                x.set_relative(relative);
            })
        }
        VolCmd::Rm { dg, vol } => {
            let (dg, vol) = (dg.clone(), vol.clone());
            Box::new(move |b| {
                let mut x = b.init_vol_rm();
                x.set_dg(dg.as_str());
                x.set_volume(vol.as_str());
            })
        }
        VolCmd::Set { dg, vol, settings } => {
            // The node parses the value (and names the plex a volume lacks).
            let policy = setting(
                settings,
                "vol set",
                "read-policy",
                "round|least-busy|prefer:PLEX",
                |v| !v.is_empty(),
            )?;
            let (dg, vol) = (dg.clone(), vol.clone());
            Box::new(move |b| {
                let mut x = b.init_vol_set();
                x.set_dg(dg.as_str());
                x.set_volume(vol.as_str());
                x.set_read_policy(policy.as_str());
            })
        }
        _ => return Ok(None),
    }))
}

/// The value of `key` among a `set` command's `KEY=VALUE` settings (the last one
/// given): `cmd` takes that one key, with a value `valid` accepts (`values` says
/// which). Anything else is a usage error naming it.
fn setting(
    settings: &[String],
    cmd: &str,
    key: &str,
    values: &str,
    valid: impl Fn(&str) -> bool,
) -> Result<String, Failure> {
    let mut value = String::new();
    for s in settings {
        match s.split_once('=') {
            Some((k, v)) if k == key && valid(v) => value = v.to_string(),
            Some((k, v)) if k == key => {
                return Err(Failure::Usage(format!("{key}={v:?}: takes {values}")))
            }
            _ => return Err(Failure::Usage(format!("{s:?}: {cmd} takes {key}={values}"))),
        }
    }
    Ok(value)
}

/// The change of a `plex` command (every one is a change).
fn plex_change(cmd: &PlexCmd) -> Result<Option<ChangeBuilder>, Failure> {
    Ok(Some(match cmd {
        PlexCmd::Add { dg, vol, disks } => {
            let (dg, vol, disks) = (dg.clone(), vol.clone(), disks.clone());
            Box::new(move |mut b| {
                set_disks(b.reborrow(), &disks);
                let mut x = b.init_plex_add();
                x.set_dg(dg.as_str());
                x.set_volume(vol.as_str());
            })
        }
        PlexCmd::Detach { dg, plex }
        | PlexCmd::Attach { dg, plex, .. }
        | PlexCmd::Rm { dg, plex, .. } => {
            let (op, force) = match cmd {
                PlexCmd::Detach { .. } => (0, false),
                PlexCmd::Attach { .. } => (1, false),
                PlexCmd::Rm { force, .. } => (2, *force),
                _ => (2, false),
            };
            let (dg, plex) = (dg.clone(), plex.clone());
            Box::new(move |mut b| {
                b.set_force(force);
                let mut x = match op {
                    0 => b.init_plex_detach(),
                    1 => b.init_plex_attach(),
                    _ => b.init_plex_rm(),
                };
                x.set_dg(dg.as_str());
                x.set_plex(plex.as_str());
            })
        }
    }))
}
