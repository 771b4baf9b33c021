//! Rust types ⇄ `kernel.capnp` builders and readers, used by both the server (in
//! plexd-target) and the client so the two sides cannot drift apart.

use std::path::PathBuf;

use capnp::Result;
use plexd_proto::kernel_capnp as k;

use crate::bdev::{BdevInfo, BdevKind, BdevRequest, FailOn, Injection, IoKind};
use crate::error::{ApiError, ErrorCode};
use crate::info::{DetachPolicy, Event, LeaseState, PollMode, TargetInfo};
use crate::iscsi::{ChapConfig, LunConfig, SessionInfo, TargetNodeConfig};
use crate::nvmf::{AnaState, ControllerInfo, NamespaceConfig, SubsystemConfig};
use crate::scsi::alua::{Alua, AluaState, PortGroup, MAX_PORTS_PER_GROUP, MAX_PORT_GROUPS};
use crate::scsi::pr::{PrState, Registration, Reservation};
use crate::scsi::PrOutResult;
use crate::volume::{
    PlexInfo, PlexKind, PlexSpec, PlexState, ReadPolicy, SubdiskSpec, VolumeInfo, VolumeSpec,
    VolumeStats,
};

// ---- enums ----

pub fn error_code_to(c: ErrorCode) -> k::ErrorCode {
    match c {
        ErrorCode::NotFound => k::ErrorCode::NotFound,
        ErrorCode::Exists => k::ErrorCode::Exists,
        ErrorCode::InUse => k::ErrorCode::InUse,
        ErrorCode::Invalid => k::ErrorCode::Invalid,
        ErrorCode::Timeout => k::ErrorCode::Timeout,
        ErrorCode::Io => k::ErrorCode::Io,
    }
}

pub fn error_code_from(c: k::ErrorCode) -> ErrorCode {
    match c {
        k::ErrorCode::NotFound => ErrorCode::NotFound,
        k::ErrorCode::Exists => ErrorCode::Exists,
        k::ErrorCode::InUse => ErrorCode::InUse,
        k::ErrorCode::Invalid => ErrorCode::Invalid,
        k::ErrorCode::Timeout => ErrorCode::Timeout,
        k::ErrorCode::Io => ErrorCode::Io,
    }
}

pub fn plex_state_to(s: PlexState) -> k::PlexState {
    match s {
        PlexState::Active => k::PlexState::Active,
        PlexState::Stale => k::PlexState::Stale,
        PlexState::Detached => k::PlexState::Detached,
        PlexState::Syncing => k::PlexState::Syncing,
    }
}

pub fn plex_state_from(s: k::PlexState) -> PlexState {
    match s {
        k::PlexState::Active => PlexState::Active,
        k::PlexState::Stale => PlexState::Stale,
        k::PlexState::Detached => PlexState::Detached,
        k::PlexState::Syncing => PlexState::Syncing,
    }
}

pub fn bdev_kind_to(b: BdevKind) -> k::BdevKind {
    match b {
        BdevKind::Null => k::BdevKind::Null,
        BdevKind::Malloc => k::BdevKind::Malloc,
        BdevKind::Uring => k::BdevKind::Uring,
        BdevKind::Error => k::BdevKind::Error,
    }
}

pub fn bdev_kind_from(b: k::BdevKind) -> BdevKind {
    match b {
        k::BdevKind::Null => BdevKind::Null,
        k::BdevKind::Malloc => BdevKind::Malloc,
        k::BdevKind::Uring => BdevKind::Uring,
        k::BdevKind::Error => BdevKind::Error,
    }
}

pub fn detach_policy_to(p: DetachPolicy) -> k::DetachPolicy {
    match p {
        DetachPolicy::Local => k::DetachPolicy::Local,
        DetachPolicy::External => k::DetachPolicy::External,
    }
}

pub fn detach_policy_from(p: k::DetachPolicy) -> DetachPolicy {
    match p {
        k::DetachPolicy::Local => DetachPolicy::Local,
        k::DetachPolicy::External => DetachPolicy::External,
    }
}

pub fn fail_on_to(f: FailOn) -> k::FailOn {
    match f {
        FailOn::Reads => k::FailOn::Reads,
        FailOn::Writes => k::FailOn::Writes,
        FailOn::Both => k::FailOn::Both,
    }
}

pub fn fail_on_from(f: k::FailOn) -> FailOn {
    match f {
        k::FailOn::Reads => FailOn::Reads,
        k::FailOn::Writes => FailOn::Writes,
        k::FailOn::Both => FailOn::Both,
    }
}

/// `None` for kinds the diagnostic `io` method does not carry (reset).
pub fn io_op_to(kind: IoKind) -> Option<k::IoOp> {
    Some(match kind {
        IoKind::Read => k::IoOp::Read,
        IoKind::Write => k::IoOp::Write,
        IoKind::Flush => k::IoOp::Flush,
        IoKind::WriteZeroes => k::IoOp::WriteZeroes,
        IoKind::Unmap => k::IoOp::Unmap,
        IoKind::Reset => return None,
    })
}

pub fn io_op_from(op: k::IoOp) -> IoKind {
    match op {
        k::IoOp::Read => IoKind::Read,
        k::IoOp::Write => IoKind::Write,
        k::IoOp::Flush => IoKind::Flush,
        k::IoOp::WriteZeroes => IoKind::WriteZeroes,
        k::IoOp::Unmap => IoKind::Unmap,
    }
}

// ---- errors ----

pub fn set_error(mut b: k::error::Builder<'_>, e: &ApiError) {
    b.set_code(error_code_to(e.code));
    b.set_object(e.object.as_str());
    b.set_reason(e.reason.as_str());
    b.set_message(e.to_string().as_str());
}

pub fn read_error(r: k::error::Reader<'_>) -> Result<ApiError> {
    Ok(ApiError {
        code: error_code_from(r.get_code()?),
        object: r.get_object()?.to_string()?,
        reason: r.get_reason()?.to_string()?,
    })
}

// ---- bdevs ----

pub fn set_bdev_request(mut b: k::bdev_request::Builder<'_>, r: &BdevRequest) {
    b.set_kind(bdev_kind_to(r.kind));
    b.set_name(r.name.as_str());
    b.set_size_bytes(r.size_bytes);
    b.set_block_size(r.block_size.unwrap_or(0));
    if let Some(p) = &r.path {
        b.set_path(p.to_string_lossy().as_ref());
    }
    if let Some(i) = &r.inner {
        b.set_inner(i.as_str());
    }
    b.set_buffered(r.buffered);
}

pub fn read_bdev_request(r: k::bdev_request::Reader<'_>) -> Result<BdevRequest> {
    let path = r.get_path()?.to_str()?;
    let inner = r.get_inner()?.to_str()?;
    Ok(BdevRequest {
        kind: bdev_kind_from(r.get_kind()?),
        name: r.get_name()?.to_string()?,
        size_bytes: r.get_size_bytes(),
        block_size: Some(r.get_block_size()).filter(|&b| b != 0),
        path: (!path.is_empty()).then(|| PathBuf::from(path)),
        inner: (!inner.is_empty()).then(|| inner.to_string()),
        buffered: r.get_buffered(),
    })
}

pub fn set_bdev_info(mut b: k::bdev_info::Builder<'_>, i: &BdevInfo) {
    b.set_name(i.name.as_str());
    b.set_kind(i.kind.as_str());
    b.set_block_size(i.block_size);
    b.set_size_bytes(i.size_bytes);
    b.set_detail(i.detail.as_str());
    b.set_refused(i.refused);
}

pub fn read_bdev_info(r: k::bdev_info::Reader<'_>) -> Result<BdevInfo> {
    Ok(BdevInfo {
        name: r.get_name()?.to_string()?,
        kind: r.get_kind()?.to_string()?,
        block_size: r.get_block_size(),
        size_bytes: r.get_size_bytes(),
        detail: r.get_detail()?.to_string()?,
        refused: r.get_refused(),
    })
}

// ---- volumes ----

fn set_columns(
    mut b: capnp::struct_list::Builder<'_, k::column::Owned>,
    cols: &[Vec<SubdiskSpec>],
) {
    for (i, col) in cols.iter().enumerate() {
        let mut sds = b.reborrow().get(i as u32).init_subdisks(col.len() as u32);
        for (j, sd) in col.iter().enumerate() {
            let mut s = sds.reborrow().get(j as u32);
            s.set_bdev(sd.bdev.as_str());
            s.set_offset_bytes(sd.offset_bytes);
            s.set_len_bytes(sd.len_bytes);
        }
    }
}

fn read_columns(
    r: capnp::struct_list::Reader<'_, k::column::Owned>,
) -> Result<Vec<Vec<SubdiskSpec>>> {
    let mut cols = Vec::with_capacity(r.len() as usize);
    for c in r.iter() {
        let mut col = Vec::new();
        for s in c.get_subdisks()?.iter() {
            col.push(SubdiskSpec {
                bdev: s.get_bdev()?.to_string()?,
                offset_bytes: s.get_offset_bytes(),
                len_bytes: s.get_len_bytes(),
            });
        }
        cols.push(col);
    }
    Ok(cols)
}

fn set_read_policy(mut b: k::read_policy::Builder<'_>, p: &ReadPolicy) {
    match p {
        ReadPolicy::LeastBusy => b.set_least_busy(()),
        ReadPolicy::Round => b.set_round(()),
        ReadPolicy::Prefer(plex) => b.set_prefer(plex.as_str()),
    }
}

fn read_read_policy(r: k::read_policy::Reader<'_>) -> Result<ReadPolicy> {
    Ok(match r.which()? {
        k::read_policy::LeastBusy(()) => ReadPolicy::LeastBusy,
        k::read_policy::Round(()) => ReadPolicy::Round,
        k::read_policy::Prefer(p) => ReadPolicy::Prefer(p?.to_string()?),
    })
}

pub fn set_volume_spec(mut b: k::volume_spec::Builder<'_>, s: &VolumeSpec) {
    b.set_name(s.name.as_str());
    b.set_size_bytes(s.size_bytes);
    b.set_shared(s.shared);
    b.set_local_detach(s.local_detach);
    if let Some(l) = &s.log {
        let mut lb = b.reborrow().init_log();
        if let Some(first) = l.copies.first() {
            lb.set_bdev(first.bdev.as_str());
            lb.set_offset_bytes(first.offset_bytes);
        }
        if l.copies.len() > 1 {
            let mut more = lb.reborrow().init_more_copies((l.copies.len() - 1) as u32);
            for (i, c) in l.copies.iter().skip(1).enumerate() {
                let mut cb = more.reborrow().get(i as u32);
                cb.set_bdev(c.bdev.as_str());
                cb.set_offset_bytes(c.offset_bytes);
            }
        }
        lb.set_section_bytes(l.section_bytes);
        lb.set_node(l.node);
        lb.set_log_id(l.log_id);
        lb.set_region_bytes(l.region_bytes);
    }
    set_read_policy(b.reborrow().init_read_policy(), &s.read_policy);
    let mut plexes = b.init_plexes(s.plexes.len() as u32);
    for (i, p) in s.plexes.iter().enumerate() {
        let mut pb = plexes.reborrow().get(i as u32);
        pb.set_name(p.name.as_str());
        match p.kind {
            PlexKind::Concat => pb.set_layout(k::PlexLayout::Concat),
            PlexKind::Stripe { stripe_unit_bytes } => {
                pb.set_layout(k::PlexLayout::Stripe);
                pb.set_stripe_unit_bytes(stripe_unit_bytes);
            }
        }
        pb.set_state(plex_state_to(p.state));
        set_columns(pb.init_columns(p.columns.len() as u32), &p.columns);
    }
}

pub fn read_volume_spec(r: k::volume_spec::Reader<'_>) -> Result<VolumeSpec> {
    let mut plexes = Vec::new();
    for p in r.get_plexes()?.iter() {
        let kind = match p.get_layout()? {
            k::PlexLayout::Concat => PlexKind::Concat,
            k::PlexLayout::Stripe => PlexKind::Stripe {
                stripe_unit_bytes: p.get_stripe_unit_bytes(),
            },
        };
        plexes.push(PlexSpec {
            name: p.get_name()?.to_string()?,
            kind,
            columns: read_columns(p.get_columns()?)?,
            state: plex_state_from(p.get_state()?),
        });
    }
    Ok(VolumeSpec {
        name: r.get_name()?.to_string()?,
        size_bytes: r.get_size_bytes(),
        plexes,
        read_policy: if r.has_read_policy() {
            read_read_policy(r.get_read_policy()?)?
        } else {
            ReadPolicy::LeastBusy
        },
        shared: r.get_shared(),
        local_detach: r.get_local_detach(),
        log: if r.has_log() {
            let l = r.get_log()?;
            let mut copies = vec![crate::drl::DrlCopy {
                bdev: l.get_bdev()?.to_string()?,
                offset_bytes: l.get_offset_bytes(),
            }];
            if l.has_more_copies() {
                let more = l.get_more_copies()?;
                if more.len() as usize >= crate::drl::MAX_LOG_COPIES {
                    return Err(capnp::Error::failed(format!(
                        "dirty region log with {} copies (at most {})",
                        more.len() + 1,
                        crate::drl::MAX_LOG_COPIES
                    )));
                }
                for c in more.iter() {
                    copies.push(crate::drl::DrlCopy {
                        bdev: c.get_bdev()?.to_string()?,
                        offset_bytes: c.get_offset_bytes(),
                    });
                }
            }
            Some(crate::drl::DirtyLogSpec {
                copies,
                section_bytes: l.get_section_bytes(),
                node: l.get_node(),
                log_id: l.get_log_id(),
                region_bytes: l.get_region_bytes(),
            })
        } else {
            None
        },
    })
}

fn set_stats(mut b: k::volume_stats::Builder<'_>, s: &VolumeStats) {
    b.set_read_ops(s.read_ops);
    b.set_write_ops(s.write_ops);
    b.set_other_ops(s.other_ops);
    b.set_read_bytes(s.read_bytes);
    b.set_write_bytes(s.write_bytes);
    b.set_failed_ops(s.failed_ops);
    b.set_read_retries(s.read_retries);
    b.set_latency_ns_total(s.latency_ns_total);
    b.set_latency_ns_max(s.latency_ns_max);
    b.set_parked_refused(s.parked_refused);
    b.set_held_refused(s.held_refused);
    b.set_inflight_refused(s.inflight_refused);
    b.set_log_writes(s.log_writes);
    b.set_log_waits(s.log_waits);
    b.set_log_dirty_regions(s.log_dirty_regions);
    b.set_log_refused(s.log_refused);
    b.set_log_copy_failures(s.log_copy_failures);
}

fn read_stats(r: k::volume_stats::Reader<'_>) -> VolumeStats {
    VolumeStats {
        read_ops: r.get_read_ops(),
        write_ops: r.get_write_ops(),
        other_ops: r.get_other_ops(),
        read_bytes: r.get_read_bytes(),
        write_bytes: r.get_write_bytes(),
        failed_ops: r.get_failed_ops(),
        read_retries: r.get_read_retries(),
        latency_ns_total: r.get_latency_ns_total(),
        latency_ns_max: r.get_latency_ns_max(),
        parked_refused: r.get_parked_refused(),
        held_refused: r.get_held_refused(),
        inflight_refused: r.get_inflight_refused(),
        log_writes: r.get_log_writes(),
        log_waits: r.get_log_waits(),
        log_dirty_regions: r.get_log_dirty_regions(),
        log_refused: r.get_log_refused(),
        log_copy_failures: r.get_log_copy_failures(),
    }
}

pub fn set_volume_info(mut b: k::volume_info::Builder<'_>, v: &VolumeInfo) {
    b.set_name(v.name.as_str());
    b.set_size_bytes(v.size_bytes);
    b.set_block_size(v.block_size);
    b.set_state(v.state.as_str());
    b.set_staged(v.staged);
    set_read_policy(b.reborrow().init_read_policy(), &v.read_policy);
    set_stats(b.reborrow().init_stats(), &v.stats);
    b.set_inflight(v.inflight);
    b.set_parked(v.parked);
    b.set_held(v.held);
    let mut plexes = b.init_plexes(v.plexes.len() as u32);
    for (i, p) in v.plexes.iter().enumerate() {
        let mut pb = plexes.reborrow().get(i as u32);
        pb.set_name(p.name.as_str());
        pb.set_state(plex_state_to(p.state));
        pb.set_layout(if p.layout == "stripe" {
            k::PlexLayout::Stripe
        } else {
            k::PlexLayout::Concat
        });
        pb.set_len_bytes(p.len_bytes);
        set_columns(pb.init_columns(p.columns.len() as u32), &p.columns);
    }
}

pub fn read_volume_info(r: k::volume_info::Reader<'_>) -> Result<VolumeInfo> {
    let mut plexes = Vec::new();
    for p in r.get_plexes()?.iter() {
        plexes.push(PlexInfo {
            name: p.get_name()?.to_string()?,
            state: plex_state_from(p.get_state()?),
            layout: match p.get_layout()? {
                k::PlexLayout::Concat => "concat".into(),
                k::PlexLayout::Stripe => "stripe".into(),
            },
            len_bytes: p.get_len_bytes(),
            columns: read_columns(p.get_columns()?)?,
        });
    }
    Ok(VolumeInfo {
        name: r.get_name()?.to_string()?,
        size_bytes: r.get_size_bytes(),
        block_size: r.get_block_size(),
        state: r.get_state()?.to_string()?,
        staged: r.get_staged(),
        read_policy: read_read_policy(r.get_read_policy()?)?,
        plexes,
        stats: read_stats(r.get_stats()?),
        inflight: r.get_inflight(),
        parked: r.get_parked(),
        held: r.get_held(),
    })
}

// ---- injection, events, info ----

pub fn set_injection(mut b: k::injection::Builder<'_>, i: &Injection) {
    match *i {
        Injection::Fail { on, errno, count } => {
            let mut f = b.init_fail();
            f.set_on(fail_on_to(on));
            f.set_errno(errno);
            f.set_count(count.unwrap_or(0));
        }
        Injection::LatencyUs(us) => b.set_latency_us(us),
        Injection::ClearFailures => b.set_clear_failures(()),
        Injection::Clear => b.set_clear(()),
    }
}

pub fn read_injection(r: k::injection::Reader<'_>) -> Result<Injection> {
    Ok(match r.which()? {
        k::injection::Fail(f) => Injection::Fail {
            on: fail_on_from(f.get_on()?),
            errno: f.get_errno(),
            count: Some(f.get_count()).filter(|&c| c != 0),
        },
        k::injection::LatencyUs(us) => Injection::LatencyUs(us),
        k::injection::ClearFailures(()) => Injection::ClearFailures,
        k::injection::Clear(()) => Injection::Clear,
    })
}

pub fn set_event(b: k::event::Builder<'_>, ev: &Event) {
    match ev {
        Event::PlexIoError {
            volume,
            plex,
            errno,
            failed,
        } => {
            let mut g = b.init_plex_io_error();
            g.set_volume(volume.as_str());
            g.set_plex(plex.as_str());
            g.set_errno(*errno);
            if let Some((off, len)) = failed {
                g.set_failed_offset_bytes(*off);
                g.set_failed_len_bytes(*len);
            }
        }
        Event::PlexState {
            volume,
            plex,
            state,
        } => {
            let mut g = b.init_plex_state();
            g.set_volume(volume.as_str());
            g.set_plex(plex.as_str());
            // States are published with PlexState::as_str; anything else is a bug
            // upstream, shown as STALE (the conservative reading) rather than lost.
            g.set_state(plex_state_to(
                PlexState::parse(state).unwrap_or(PlexState::Stale),
            ));
        }
        Event::DiskGone { bdev, reason } => {
            let mut g = b.init_disk_gone();
            g.set_bdev(bdev.as_str());
            g.set_reason(reason.as_str());
        }
        Event::LeaseExpired { volumes } => {
            let g = b.init_lease_expired();
            set_text_list(g.init_volumes(volumes.len() as u32), volumes);
        }
        Event::PrOut {
            request,
            volume,
            initiator,
            relative_port,
            service_action,
            scope_type,
            parameters,
        } => {
            let mut g = b.init_pr_out();
            g.set_request(*request);
            g.set_volume(volume.as_str());
            g.set_initiator(initiator.as_str());
            g.set_relative_port(*relative_port);
            g.set_service_action(*service_action);
            g.set_scope_type(*scope_type);
            g.set_parameters(parameters);
        }
    }
}

pub fn read_event(r: k::event::Reader<'_>) -> Result<Event> {
    Ok(match r.which()? {
        k::event::PlexIoError(g) => Event::PlexIoError {
            volume: g.get_volume()?.to_string()?,
            plex: g.get_plex()?.to_string()?,
            errno: g.get_errno(),
            failed: (g.get_failed_len_bytes() > 0)
                .then(|| (g.get_failed_offset_bytes(), g.get_failed_len_bytes())),
        },
        k::event::PlexState(g) => Event::PlexState {
            volume: g.get_volume()?.to_string()?,
            plex: g.get_plex()?.to_string()?,
            state: plex_state_from(g.get_state()?).as_str().to_string(),
        },
        k::event::DiskGone(g) => Event::DiskGone {
            bdev: g.get_bdev()?.to_string()?,
            reason: g.get_reason()?.to_string()?,
        },
        k::event::LeaseExpired(g) => Event::LeaseExpired {
            volumes: read_text_list(g.get_volumes()?)?,
        },
        k::event::PrOut(g) => Event::PrOut {
            request: g.get_request(),
            volume: g.get_volume()?.to_string()?,
            initiator: g.get_initiator()?.to_string()?,
            relative_port: g.get_relative_port(),
            service_action: g.get_service_action(),
            scope_type: g.get_scope_type(),
            parameters: g.get_parameters()?.to_vec(),
        },
    })
}

pub fn lease_state_to(s: LeaseState) -> k::LeaseState {
    match s {
        LeaseState::None => k::LeaseState::None,
        LeaseState::Valid => k::LeaseState::Valid,
        LeaseState::Expired => k::LeaseState::Expired,
    }
}

pub fn lease_state_from(s: k::LeaseState) -> LeaseState {
    match s {
        k::LeaseState::None => LeaseState::None,
        k::LeaseState::Valid => LeaseState::Valid,
        k::LeaseState::Expired => LeaseState::Expired,
    }
}

pub fn set_info(mut b: k::target_info::Builder<'_>, i: &TargetInfo) {
    b.set_version(i.version.as_str());
    b.set_reactors(i.reactors);
    b.set_poll_mode(match i.poll_mode {
        PollMode::Adaptive => k::PollMode::Adaptive,
        PollMode::Always => k::PollMode::Always,
    });
    b.set_hugepages(i.hugepages);
    b.set_socket(i.socket.as_str());
    b.set_pid(i.pid);
    b.set_detach_policy(detach_policy_to(i.detach_policy));
    let mut cores = b.init_cores(i.cores.len() as u32);
    for (n, c) in i.cores.iter().enumerate() {
        cores.set(n as u32, c.map_or(-1, |c| c as i32));
    }
}

pub fn read_info(r: k::target_info::Reader<'_>) -> Result<TargetInfo> {
    Ok(TargetInfo {
        version: r.get_version()?.to_string()?,
        reactors: r.get_reactors(),
        cores: r
            .get_cores()?
            .iter()
            .map(|c| usize::try_from(c).ok())
            .collect(),
        poll_mode: match r.get_poll_mode()? {
            k::PollMode::Adaptive => PollMode::Adaptive,
            k::PollMode::Always => PollMode::Always,
        },
        hugepages: r.get_hugepages(),
        socket: r.get_socket()?.to_string()?,
        pid: r.get_pid(),
        detach_policy: detach_policy_from(r.get_detach_policy()?),
    })
}

// ---- iSCSI ----

pub fn set_iscsi_lun(mut b: k::iscsi_lun::Builder<'_>, l: &LunConfig) {
    b.set_lun(l.lun);
    b.set_bdev(l.bdev.as_str());
    b.set_device_id(l.device_id.as_deref().unwrap_or(""));
    b.set_read_only(l.read_only);
    b.set_cluster_reservations(l.cluster_reservations);
    if let Some(a) = &l.alua {
        set_alua(b.init_alua(), a);
    }
}

pub fn read_iscsi_lun(r: k::iscsi_lun::Reader<'_>) -> Result<LunConfig> {
    let device_id = r.get_device_id()?.to_string()?;
    Ok(LunConfig {
        lun: r.get_lun(),
        bdev: r.get_bdev()?.to_string()?,
        device_id: (!device_id.is_empty()).then_some(device_id),
        read_only: r.get_read_only(),
        alua: if r.has_alua() {
            Some(read_alua(r.get_alua()?)?)
        } else {
            None
        },
        cluster_reservations: r.get_cluster_reservations(),
    })
}

/// Most registrations a `Reservations` message may carry (the PR logic's own bound).
const MAX_WIRE_REGISTRATIONS: u32 = crate::scsi::pr::MAX_REGISTRATIONS as u32;

pub fn set_reservations(mut b: k::reservations::Builder<'_>, s: &PrState) {
    b.set_generation(s.generation);
    b.set_aptpl(s.aptpl);
    if let Some(r) = &s.res {
        b.set_reserved(true);
        b.set_holder(r.holder.as_str());
        b.set_holder_port(r.holder_port);
        b.set_type(r.ty);
    }
    let mut l = b.reborrow().init_registrations(s.regs.len() as u32);
    for (i, r) in s.regs.iter().enumerate() {
        let mut rb = l.reborrow().get(i as u32);
        rb.set_initiator(r.nexus.as_str());
        rb.set_relative_port(r.port);
        rb.set_key(r.key);
    }
    if let Some(c) = &s.last {
        let mut cb = b.init_last_change();
        cb.set_initiator(c.nexus.initiator.as_str());
        cb.set_relative_port(c.nexus.port);
        cb.set_service_action(c.sa);
        cb.set_scope_type(c.scope_type);
    }
}

pub fn read_reservations(r: k::reservations::Reader<'_>) -> Result<PrState> {
    let regs = r.get_registrations()?;
    if regs.len() > MAX_WIRE_REGISTRATIONS {
        return Err(capnp::Error::failed(format!(
            "reservations: {} registrations, at most {MAX_WIRE_REGISTRATIONS}",
            regs.len()
        )));
    }
    let mut out = PrState {
        generation: r.get_generation(),
        aptpl: r.get_aptpl(),
        ..PrState::default()
    };
    for g in regs.iter() {
        out.regs.push(Registration {
            nexus: g.get_initiator()?.to_string()?,
            port: g.get_relative_port(),
            key: g.get_key(),
        });
    }
    if r.get_reserved() {
        out.res = Some(Reservation {
            holder: r.get_holder()?.to_string()?,
            holder_port: r.get_holder_port(),
            ty: r.get_type(),
        });
    }
    if r.has_last_change() {
        let c = r.get_last_change()?;
        out.last = Some(crate::scsi::pr::PrChange {
            nexus: crate::scsi::pr::Nexus::new(
                c.get_initiator()?.to_string()?,
                c.get_relative_port(),
            ),
            sa: c.get_service_action(),
            scope_type: c.get_scope_type(),
        });
    }
    Ok(out)
}

pub fn pr_out_result_to(r: PrOutResult) -> k::PrOutResult {
    match r {
        PrOutResult::Committed => k::PrOutResult::Committed,
        PrOutResult::Stale => k::PrOutResult::Stale,
        PrOutResult::Unavailable => k::PrOutResult::Unavailable,
    }
}

pub fn pr_out_result_from(r: k::PrOutResult) -> PrOutResult {
    match r {
        k::PrOutResult::Committed => PrOutResult::Committed,
        k::PrOutResult::Stale => PrOutResult::Stale,
        k::PrOutResult::Unavailable => PrOutResult::Unavailable,
    }
}

fn alua_state_to(s: AluaState) -> k::AluaState {
    match s {
        AluaState::ActiveOptimized => k::AluaState::ActiveOptimized,
        AluaState::ActiveNonOptimized => k::AluaState::ActiveNonOptimized,
        AluaState::Standby => k::AluaState::Standby,
        AluaState::Unavailable => k::AluaState::Unavailable,
        AluaState::Transitioning => k::AluaState::Transitioning,
    }
}

fn alua_state_from(s: k::AluaState) -> AluaState {
    match s {
        k::AluaState::ActiveOptimized => AluaState::ActiveOptimized,
        k::AluaState::ActiveNonOptimized => AluaState::ActiveNonOptimized,
        k::AluaState::Standby => AluaState::Standby,
        k::AluaState::Unavailable => AluaState::Unavailable,
        k::AluaState::Transitioning => AluaState::Transitioning,
    }
}

pub fn set_alua(mut b: k::alua::Builder<'_>, a: &Alua) {
    b.set_local_group(a.local_group);
    b.set_relative_port(a.relative_port);
    let mut groups = b.init_groups(a.groups.len() as u32);
    for (i, g) in a.groups.iter().enumerate() {
        let mut gb = groups.reborrow().get(i as u32);
        gb.set_id(g.id);
        gb.set_state(alua_state_to(g.state));
        let mut ports = gb.init_ports(g.ports.len() as u32);
        for (j, p) in g.ports.iter().enumerate() {
            ports.set(j as u32, *p);
        }
    }
}

/// Reads an ALUA view; more groups or ports than the frontend allows are an error
/// (the frontend's validation names the limits).
pub fn read_alua(r: k::alua::Reader<'_>) -> Result<Alua> {
    let groups = r.get_groups()?;
    if groups.len() as usize > MAX_PORT_GROUPS {
        return Err(capnp::Error::failed(format!(
            "alua: {} port groups, at most {MAX_PORT_GROUPS}",
            groups.len()
        )));
    }
    let mut out = Vec::with_capacity(groups.len() as usize);
    for g in groups.iter() {
        let ports = g.get_ports()?;
        if ports.len() as usize > MAX_PORTS_PER_GROUP {
            return Err(capnp::Error::failed(format!(
                "alua: port group {} has {} ports, at most {MAX_PORTS_PER_GROUP}",
                g.get_id(),
                ports.len()
            )));
        }
        let state = g
            .get_state()
            .map(alua_state_from)
            .map_err(|e| capnp::Error::failed(format!("alua: unknown state {e}")))?;
        out.push(PortGroup {
            id: g.get_id(),
            state,
            ports: ports.iter().collect(),
        });
    }
    Ok(Alua {
        local_group: r.get_local_group(),
        relative_port: r.get_relative_port(),
        groups: out,
    })
}

/// Whether CHAP secrets go into the message: requests carry them, answers never.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Secrets {
    /// Put the secrets in (a request).
    Send,
    /// Leave them out (an answer: secrets are write-only).
    Withhold,
}

pub fn set_iscsi_chap(mut b: k::iscsi_chap::Builder<'_>, c: &ChapConfig, s: Secrets) {
    b.set_user(c.user.as_str());
    b.set_mutual_user(c.mutual_user.as_deref().unwrap_or(""));
    b.set_has_secret(!c.secret.is_empty());
    b.set_has_mutual_secret(c.mutual_secret.as_ref().is_some_and(|m| !m.is_empty()));
    if s == Secrets::Send {
        b.set_secret(c.secret.as_str());
        b.set_mutual_secret(c.mutual_secret.as_deref().unwrap_or(""));
    }
}

/// Reads a CHAP configuration. A request's secrets are taken as sent; an answer has
/// none, so they read as empty strings (`mutual_secret` is `Some("")` when set).
pub fn read_iscsi_chap(r: k::iscsi_chap::Reader<'_>) -> Result<ChapConfig> {
    let mutual_user = r.get_mutual_user()?.to_string()?;
    let mutual_secret = r.get_mutual_secret()?.to_string()?;
    Ok(ChapConfig {
        user: r.get_user()?.to_string()?,
        secret: r.get_secret()?.to_string()?,
        mutual_user: (!mutual_user.is_empty()).then_some(mutual_user),
        mutual_secret: if !mutual_secret.is_empty() {
            Some(mutual_secret)
        } else if r.get_has_mutual_secret() {
            Some(String::new())
        } else {
            None
        },
    })
}

fn set_text_list(mut b: capnp::text_list::Builder<'_>, v: &[String]) {
    for (i, t) in v.iter().enumerate() {
        b.set(i as u32, t.as_str());
    }
}

fn read_text_list(r: capnp::text_list::Reader<'_>) -> Result<Vec<String>> {
    r.iter().map(|t| Ok(t?.to_string()?)).collect()
}

pub fn set_iscsi_target(mut b: k::iscsi_target::Builder<'_>, t: &TargetNodeConfig, s: Secrets) {
    b.set_iqn(t.iqn.as_str());
    b.set_alias(t.alias.as_deref().unwrap_or(""));
    let mut luns = b.reborrow().init_luns(t.luns.len() as u32);
    for (i, l) in t.luns.iter().enumerate() {
        set_iscsi_lun(luns.reborrow().get(i as u32), l);
    }
    set_text_list(b.reborrow().init_allow(t.allow.len() as u32), &t.allow);
    set_text_list(b.reborrow().init_deny(t.deny.len() as u32), &t.deny);
    if let Some(c) = &t.chap {
        set_iscsi_chap(b.init_chap(), c, s);
    }
}

pub fn read_iscsi_target(r: k::iscsi_target::Reader<'_>) -> Result<TargetNodeConfig> {
    let alias = r.get_alias()?.to_string()?;
    Ok(TargetNodeConfig {
        iqn: r.get_iqn()?.to_string()?,
        alias: (!alias.is_empty()).then_some(alias),
        luns: r
            .get_luns()?
            .iter()
            .map(read_iscsi_lun)
            .collect::<Result<_>>()?,
        allow: read_text_list(r.get_allow()?)?,
        deny: read_text_list(r.get_deny()?)?,
        chap: if r.has_chap() {
            Some(read_iscsi_chap(r.get_chap()?)?)
        } else {
            None
        },
    })
}

pub fn set_iscsi_session(mut b: k::iscsi_session::Builder<'_>, s: &SessionInfo) {
    b.set_tsih(s.tsih);
    b.set_initiator(s.initiator.as_str());
    b.set_isid(s.isid.as_str());
    b.set_target(s.target.as_str());
    let mut c = b.init_connections(1).get(0);
    c.set_reactor(u32::try_from(s.reactor).unwrap_or(u32::MAX));
    c.set_peer(s.peer.as_str());
    c.set_commands(s.commands);
    c.set_read_bytes(s.read_bytes);
    c.set_write_bytes(s.write_bytes);
    c.set_errors(s.errors);
    c.set_buffers_held(s.buffers_held);
    c.set_cmds_waiting_buf(s.cmds_waiting_buf);
    c.set_send_blocked_ms(s.send_blocked_ms);
}

/// Reads a session; with several connections the counters are summed and the
/// first connection gives the reactor and peer.
pub fn read_iscsi_session(r: k::iscsi_session::Reader<'_>) -> Result<SessionInfo> {
    let mut s = SessionInfo {
        tsih: r.get_tsih(),
        initiator: r.get_initiator()?.to_string()?,
        isid: r.get_isid()?.to_string()?,
        target: r.get_target()?.to_string()?,
        reactor: 0,
        peer: String::new(),
        commands: 0,
        read_bytes: 0,
        write_bytes: 0,
        errors: 0,
        buffers_held: 0,
        cmds_waiting_buf: 0,
        send_blocked_ms: 0,
    };
    for (i, c) in r.get_connections()?.iter().enumerate() {
        if i == 0 {
            s.reactor = c.get_reactor() as usize;
            s.peer = c.get_peer()?.to_string()?;
        }
        s.commands += c.get_commands();
        s.read_bytes += c.get_read_bytes();
        s.write_bytes += c.get_write_bytes();
        s.errors += c.get_errors();
        s.buffers_held += c.get_buffers_held();
        s.cmds_waiting_buf += c.get_cmds_waiting_buf();
        s.send_blocked_ms += c.get_send_blocked_ms();
    }
    Ok(s)
}

// ---- NVMe-oF ----

/// Most namespaces or hosts read from one `NvmfSubsystem`.
const MAX_LIST: u32 = 1024;

pub fn set_namespace(mut b: k::nvmf_namespace::Builder<'_>, n: &NamespaceConfig) {
    b.set_nsid(n.nsid);
    b.set_bdev(n.bdev.as_str());
    b.set_identity(n.identity.as_deref().unwrap_or(""));
    b.set_read_only(n.read_only);
}

pub fn read_namespace(r: k::nvmf_namespace::Reader<'_>) -> Result<NamespaceConfig> {
    let identity = r.get_identity()?.to_string()?;
    Ok(NamespaceConfig {
        nsid: r.get_nsid(),
        bdev: r.get_bdev()?.to_string()?,
        identity: (!identity.is_empty()).then_some(identity),
        read_only: r.get_read_only(),
    })
}

pub fn set_subsystem(mut b: k::nvmf_subsystem::Builder<'_>, s: &SubsystemConfig) {
    b.set_nqn(s.nqn.as_str());
    b.set_serial(s.serial.as_deref().unwrap_or(""));
    b.set_model(s.model.as_deref().unwrap_or(""));
    b.set_allow_any(s.allow_any);
    {
        let mut h = b.reborrow().init_hosts(s.hosts.len() as u32);
        for (i, x) in s.hosts.iter().enumerate() {
            h.set(i as u32, x.as_str());
        }
    }
    {
        let mut p = b
            .reborrow()
            .init_peer_listeners(s.peer_listeners.len() as u32);
        for (i, x) in s.peer_listeners.iter().enumerate() {
            p.set(i as u32, x.as_str());
        }
    }
    let mut l = b.init_namespaces(s.namespaces.len() as u32);
    for (i, n) in s.namespaces.iter().enumerate() {
        set_namespace(l.reborrow().get(i as u32), n);
    }
}

fn opt(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

pub fn read_subsystem(r: k::nvmf_subsystem::Reader<'_>) -> Result<SubsystemConfig> {
    let hosts = r.get_hosts()?;
    let nss = r.get_namespaces()?;
    let peers = r.get_peer_listeners()?;
    if hosts.len() > MAX_LIST || nss.len() > MAX_LIST || peers.len() > MAX_LIST {
        return Err(capnp::Error::failed(format!(
            "nvmf subsystem: {} hosts, {} namespaces and {} peer listeners, at most {MAX_LIST} each",
            hosts.len(),
            nss.len(),
            peers.len()
        )));
    }
    Ok(SubsystemConfig {
        nqn: r.get_nqn()?.to_string()?,
        serial: opt(r.get_serial()?.to_string()?),
        model: opt(r.get_model()?.to_string()?),
        hosts: hosts
            .iter()
            .map(|h| Ok(h?.to_string()?))
            .collect::<Result<Vec<_>>>()?,
        allow_any: r.get_allow_any(),
        namespaces: nss.iter().map(read_namespace).collect::<Result<Vec<_>>>()?,
        peer_listeners: peers
            .iter()
            .map(|p| Ok(p?.to_string()?))
            .collect::<Result<Vec<_>>>()?,
    })
}

pub fn ana_to(s: AnaState) -> k::NvmfAnaState {
    match s {
        AnaState::Optimized => k::NvmfAnaState::Optimized,
        AnaState::NonOptimized => k::NvmfAnaState::NonOptimized,
        AnaState::Inaccessible => k::NvmfAnaState::Inaccessible,
    }
}

pub fn ana_from(s: k::NvmfAnaState) -> AnaState {
    match s {
        k::NvmfAnaState::Optimized => AnaState::Optimized,
        k::NvmfAnaState::NonOptimized => AnaState::NonOptimized,
        k::NvmfAnaState::Inaccessible => AnaState::Inaccessible,
    }
}

pub fn set_controller(mut b: k::nvmf_controller::Builder<'_>, c: &ControllerInfo) {
    b.set_cntlid(c.cntlid);
    b.set_subnqn(c.subnqn.as_str());
    b.set_hostnqn(c.hostnqn.as_str());
    b.set_peer(c.peer.as_str());
    b.set_reactor(c.reactor as u32);
    b.set_kato_ms(c.kato_ms);
    b.set_commands(c.commands);
    b.set_read_bytes(c.read_bytes);
    b.set_write_bytes(c.write_bytes);
    b.set_errors(c.errors);
    let mut q = b.init_io_queues(c.io_queues.len() as u32);
    for (i, (qid, r)) in c.io_queues.iter().enumerate() {
        let mut e = q.reborrow().get(i as u32);
        e.set_qid(*qid);
        e.set_reactor(*r as u32);
    }
}

pub fn read_controller(r: k::nvmf_controller::Reader<'_>) -> Result<ControllerInfo> {
    let qs = r.get_io_queues()?;
    Ok(ControllerInfo {
        cntlid: r.get_cntlid(),
        subnqn: r.get_subnqn()?.to_string()?,
        hostnqn: r.get_hostnqn()?.to_string()?,
        peer: r.get_peer()?.to_string()?,
        reactor: r.get_reactor() as usize,
        io_queues: qs
            .iter()
            .map(|q| (q.get_qid(), q.get_reactor() as usize))
            .collect(),
        kato_ms: r.get_kato_ms(),
        commands: r.get_commands(),
        read_bytes: r.get_read_bytes(),
        write_bytes: r.get_write_bytes(),
        errors: r.get_errors(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VolumeSpec {
        let sd = |b: &str, o, l| SubdiskSpec {
            bdev: b.into(),
            offset_bytes: o,
            len_bytes: l,
        };
        VolumeSpec {
            log: None,
            name: "v0".into(),
            size_bytes: 1 << 20,
            plexes: vec![
                PlexSpec {
                    name: "v0-01".into(),
                    kind: PlexKind::Concat,
                    columns: vec![vec![sd("m0", 0, 1 << 19), sd("m1", 4096, 1 << 19)]],
                    state: PlexState::Active,
                },
                PlexSpec {
                    name: "v0-02".into(),
                    kind: PlexKind::Stripe {
                        stripe_unit_bytes: 65536,
                    },
                    columns: vec![vec![sd("m2", 0, 1 << 19)], vec![sd("m3", 0, 1 << 19)]],
                    state: PlexState::Syncing,
                },
            ],
            read_policy: ReadPolicy::Prefer("v0-02".into()),
            shared: true,
            local_detach: true,
        }
    }

    #[test]
    fn volume_spec_round_trips() {
        let s = spec();
        let mut msg = capnp::message::Builder::new_default();
        set_volume_spec(msg.init_root(), &s);
        let r = msg.get_root_as_reader::<k::volume_spec::Reader>().unwrap();
        assert_eq!(read_volume_spec(r).unwrap(), s);
    }

    #[test]
    fn a_log_spec_with_one_or_two_copies_round_trips() {
        let copy = |b: &str, o| crate::drl::DrlCopy {
            bdev: b.into(),
            offset_bytes: o,
        };
        for copies in [
            vec![copy("m4", 8192)],
            vec![copy("m4", 8192), copy("m5", 4096)],
        ] {
            let s = VolumeSpec {
                log: Some(crate::drl::DirtyLogSpec {
                    copies,
                    section_bytes: 8192,
                    node: 2,
                    log_id: 0x77,
                    region_bytes: crate::drl::DEFAULT_REGION_BYTES,
                }),
                ..spec()
            };
            let mut msg = capnp::message::Builder::new_default();
            set_volume_spec(msg.init_root(), &s);
            let r = msg.get_root_as_reader::<k::volume_spec::Reader>().unwrap();
            assert_eq!(read_volume_spec(r).unwrap(), s);
        }
    }

    #[test]
    fn refusal_counters_cross_the_kernel_interface() {
        let stats = VolumeStats {
            read_ops: 1,
            failed_ops: 9,
            parked_refused: 2,
            held_refused: 3,
            inflight_refused: 4,
            log_writes: 5,
            log_waits: 6,
            log_dirty_regions: 7,
            log_refused: 8,
            log_copy_failures: 10,
            ..Default::default()
        };
        let mut msg = capnp::message::Builder::new_default();
        set_stats(msg.init_root(), &stats);
        let r = msg.get_root_as_reader::<k::volume_stats::Reader>().unwrap();
        assert_eq!(read_stats(r), stats);
        let info = BdevInfo {
            name: "u0".into(),
            kind: "uring".into(),
            block_size: 512,
            size_bytes: 1 << 20,
            detail: "/dev/x".into(),
            refused: 7,
        };
        let mut msg = capnp::message::Builder::new_default();
        set_bdev_info(msg.init_root(), &info);
        let r = msg.get_root_as_reader::<k::bdev_info::Reader>().unwrap();
        assert_eq!(read_bdev_info(r).unwrap(), info);
    }

    #[test]
    fn reservations_round_trip() {
        use crate::scsi::pr::{param, Nexus};
        let mut s = PrState::default();
        s.out(&Nexus::new("iqn.a,i,0x1", 2), 0, 0, &param(0, 5, true))
            .unwrap();
        s.out(&Nexus::new("iqn.b,i,0x2", 3), 0, 0, &param(0, 6, false))
            .unwrap();
        s.out(&Nexus::new("iqn.b,i,0x2", 3), 1, 5, &param(6, 0, false))
            .unwrap();
        for state in [PrState::default(), s] {
            let mut msg = capnp::message::Builder::new_default();
            set_reservations(msg.init_root(), &state);
            let r = msg.get_root_as_reader::<k::reservations::Reader>().unwrap();
            assert_eq!(read_reservations(r).unwrap(), state);
        }
        for r in [
            PrOutResult::Committed,
            PrOutResult::Stale,
            PrOutResult::Unavailable,
        ] {
            assert_eq!(pr_out_result_from(pr_out_result_to(r)), r);
        }
    }

    #[test]
    fn events_round_trip() {
        for ev in [
            Event::PlexIoError {
                volume: "v0".into(),
                plex: "v0-01".into(),
                errno: 5,
                failed: None,
            },
            Event::PlexIoError {
                volume: "v0".into(),
                plex: "v0-01".into(),
                errno: 5,
                failed: Some((1 << 20, 4096)),
            },
            Event::PlexState {
                volume: "v0".into(),
                plex: "v0-01".into(),
                state: "STALE".into(),
            },
            Event::LeaseExpired {
                volumes: vec!["v0".into(), "v1".into()],
            },
            Event::DiskGone {
                bdev: "u0".into(),
                reason: "ENODEV".into(),
            },
            Event::PrOut {
                request: 7,
                volume: "dg1.vol1".into(),
                initiator: "iqn.a,i,0x1".into(),
                relative_port: 2,
                service_action: 4,
                scope_type: 1,
                parameters: vec![9; 24],
            },
        ] {
            let mut msg = capnp::message::Builder::new_default();
            set_event(msg.init_root(), &ev);
            let r = msg.get_root_as_reader::<k::event::Reader>().unwrap();
            assert_eq!(read_event(r).unwrap(), ev);
        }
    }

    #[test]
    fn iscsi_target_round_trip_withholds_secrets_in_answers() {
        let t = TargetNodeConfig {
            iqn: "iqn.2026-11.io.plexd:t".into(),
            alias: Some("t".into()),
            luns: vec![LunConfig {
                lun: 3,
                bdev: "vol0".into(),
                device_id: Some("uuid".into()),
                read_only: true,
                alua: Some(Alua {
                    local_group: 2,
                    relative_port: 2,
                    groups: vec![
                        PortGroup {
                            id: 1,
                            state: AluaState::ActiveOptimized,
                            ports: vec![1],
                        },
                        PortGroup {
                            id: 2,
                            state: AluaState::Transitioning,
                            ports: vec![2],
                        },
                    ],
                }),
                cluster_reservations: true,
            }],
            allow: vec!["iqn.a".into()],
            deny: vec!["iqn.b".into()],
            chap: Some(ChapConfig {
                user: "u".into(),
                secret: "0123456789ab".into(),
                mutual_user: Some("tgt".into()),
                mutual_secret: Some("ba9876543210".into()),
            }),
        };
        let mut msg = capnp::message::Builder::new_default();
        set_iscsi_target(msg.init_root(), &t, Secrets::Send);
        let r = msg.get_root_as_reader::<k::iscsi_target::Reader>().unwrap();
        assert_eq!(read_iscsi_target(r).unwrap(), t);

        let mut msg = capnp::message::Builder::new_default();
        set_iscsi_target(msg.init_root(), &t, Secrets::Withhold);
        let r = msg.get_root_as_reader::<k::iscsi_target::Reader>().unwrap();
        let c = r.get_chap().unwrap();
        assert!(c.get_has_secret() && c.get_has_mutual_secret());
        let back = read_iscsi_target(r).unwrap();
        let chap = back.chap.clone().unwrap();
        assert_eq!(
            (chap.secret.as_str(), chap.mutual_secret.as_deref()),
            ("", Some(""))
        );
        assert_eq!(chap.user, "u");
        assert_eq!(back.luns, t.luns);

        let none = TargetNodeConfig {
            iqn: "iqn.x".into(),
            ..Default::default()
        };
        let mut msg = capnp::message::Builder::new_default();
        set_iscsi_target(msg.init_root(), &none, Secrets::Withhold);
        let r = msg.get_root_as_reader::<k::iscsi_target::Reader>().unwrap();
        assert_eq!(read_iscsi_target(r).unwrap(), none);
    }

    #[test]
    fn iscsi_session_round_trip() {
        let s = SessionInfo {
            tsih: 7,
            initiator: "iqn.i".into(),
            isid: "800000123401".into(),
            target: "iqn.t".into(),
            reactor: 1,
            peer: "127.0.0.1:40000".into(),
            commands: 10,
            read_bytes: 4096,
            write_bytes: 512,
            errors: 1,
            buffers_held: 3,
            cmds_waiting_buf: 2,
            send_blocked_ms: 1500,
        };
        let mut msg = capnp::message::Builder::new_default();
        set_iscsi_session(msg.init_root(), &s);
        let r = msg
            .get_root_as_reader::<k::iscsi_session::Reader>()
            .unwrap();
        assert_eq!(read_iscsi_session(r).unwrap(), s);
    }

    #[test]
    fn bdev_request_and_injection_round_trip() {
        let mut req = BdevRequest::uring("u0", "/tmp/x.img");
        req.block_size = Some(4096);
        req.buffered = true;
        let mut msg = capnp::message::Builder::new_default();
        set_bdev_request(msg.init_root(), &req);
        let r = msg.get_root_as_reader::<k::bdev_request::Reader>().unwrap();
        assert_eq!(read_bdev_request(r).unwrap(), req);

        for inj in [
            Injection::Fail {
                on: FailOn::Writes,
                errno: 5,
                count: Some(3),
            },
            Injection::Fail {
                on: FailOn::Both,
                errno: 61,
                count: None,
            },
            Injection::LatencyUs(250),
            Injection::ClearFailures,
            Injection::Clear,
        ] {
            let mut msg = capnp::message::Builder::new_default();
            set_injection(msg.init_root(), &inj);
            let r = msg.get_root_as_reader::<k::injection::Reader>().unwrap();
            assert_eq!(read_injection(r).unwrap(), inj);
        }
    }
}
