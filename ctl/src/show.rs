//! Read commands and their output: tables for people, `--json` for scripts.

use plexd_proto::ctl_capnp::{self as c, ctl};
use serde_json::{json, Value};

use crate::cli::*;
use crate::connect::{check, rpc, text};
use crate::failure::{CtlFailure, Failure};
use plexd_proto::size::format_size_short as format_size;

pub(crate) async fn print_json(client: &ctl::Client, dg: &str) -> Result<Value, Failure> {
    printed(client, dg, plexd_proto::print::json).await
}

/// The node's configuration (`print`), rendered by `render` (the JSON document or
/// the text tree). The node sends only the structs (`configOnly`).
async fn printed<T>(
    client: &ctl::Client,
    dg: &str,
    render: impl FnOnce(c::printed_config::Reader<'_>) -> capnp::Result<T>,
) -> Result<T, Failure> {
    let mut req = client.print_request();
    req.get().set_dg(dg);
    req.get().set_config_only(true);
    let resp = req.send().promise.await.map_err(rpc)?;
    let r = resp.get().map_err(rpc)?;
    check(r.get_error(), r.has_failure().then(|| r.get_failure()))?;
    if !r.has_config() {
        return Err(Failure::Node(CtlFailure::internal(
            "the node's print answer has no configuration structs (`config`): the node is \
             older than this plexctl; use the plexctl of its release",
        )));
    }
    let config = r.get_config().map_err(rpc)?;
    render(config).map_err(|e| Failure::from(format!("malformed print answer: {e}")))
}

pub(crate) async fn status(client: &ctl::Client) -> Result<Value, Failure> {
    let resp = client
        .cluster_status_request()
        .send()
        .promise
        .await
        .map_err(rpc)?;
    let r = resp.get().map_err(rpc)?;
    check(r.get_error(), r.has_failure().then(|| r.get_failure()))?;
    let s = r.get_status().map_err(rpc)?;
    let mut nodes = Vec::new();
    for n in s.get_nodes().map_err(rpc)? {
        nodes.push(json!({
            "name": text(n.get_name())?,
            "id": n.get_id(),
            "role": text(n.get_role())?,
            "state": text(n.get_state())?,
            "reason": text(n.get_reason())?,
            "address": text(n.get_address())?,
        }));
    }
    let mut failed = Vec::new();
    for f in s.get_failed_groups().map_err(rpc)? {
        failed.push(Value::String(text(f)?));
    }
    Ok(json!({
        "node": text(s.get_node())?,
        "master": text(s.get_master())?,
        "view": s.get_view(),
        "nodes": nodes,
        "failed_disk_groups": failed,
        "quorum_disk": text(s.get_quorum_disk())?,
    }))
}

pub(crate) fn disk_json(d: c::disk_info::Reader<'_>) -> Result<Value, String> {
    Ok(json!({
        "name": text(d.get_name())?,
        "path": text(d.get_path())?,
        "size": d.get_size_bytes(),
        "dg": text(d.get_dg())?,
        "state": text(d.get_state())?,
        "id": text(d.get_id())?,
        "repairs": d.get_repairs(),
    }))
}

pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Pretty JSON for `--json` output.
fn pretty_json(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// `disk init`: labels a disk (not a change of any group).
pub(crate) async fn disk_init(
    client: &ctl::Client,
    json_out: bool,
    path: String,
    name: Option<String>,
    force: bool,
) -> Result<String, Failure> {
    let abs = std::path::absolute(&path)
        .map(|p| p.display().to_string())
        .unwrap_or(path);
    let mut req = client.disk_init_request();
    req.get().set_path(abs.as_str());
    req.get().set_name(name.as_deref().unwrap_or(""));
    req.get().set_force(force);
    let resp = req.send().promise.await.map_err(rpc)?;
    let r = resp.get().map_err(rpc)?;
    check(r.get_error(), r.has_failure().then(|| r.get_failure()))?;
    let d = disk_json(r.get_disk().map_err(rpc)?)?;
    if json_out {
        return Ok(pretty_json(&d));
    }
    Ok(format!(
        "disk {} initialised on {} ({})",
        s(&d["name"]),
        s(&d["path"]),
        format_size(d["size"].as_u64().unwrap_or(0))
    ))
}

/// `disk list`: the disks the node sees.
pub(crate) async fn disk_list(client: &ctl::Client, json_out: bool) -> Result<String, Failure> {
    let resp = client
        .disk_list_request()
        .send()
        .promise
        .await
        .map_err(rpc)?;
    let r = resp.get().map_err(rpc)?;
    check(r.get_error(), r.has_failure().then(|| r.get_failure()))?;
    let mut disks = Vec::new();
    for d in r.get_disks().map_err(rpc)? {
        disks.push(disk_json(d)?);
    }
    if json_out {
        return Ok(pretty_json(&json!({ "disks": disks })));
    }
    let mut out = format!(
        "{:<12} {:<40} {:>8}  {:<12} {:>7}  {}",
        "DISK", "PATH", "SIZE", "GROUP", "REPAIRS", "STATE"
    );
    for d in &disks {
        let dg = s(&d["dg"]);
        out.push_str(&format!(
            "\n{:<12} {:<40} {:>8}  {:<12} {:>7}  {}",
            s(&d["name"]),
            s(&d["path"]),
            format_size(d["size"].as_u64().unwrap_or(0)),
            if dg.is_empty() { "-".into() } else { dg },
            s(&d["repairs"]),
            s(&d["state"])
        ));
    }
    Ok(out)
}

/// `dg list`: disk groups, failed ones included.
pub(crate) async fn dg_list(client: &ctl::Client, json_out: bool) -> Result<String, Failure> {
    let v = print_json(client, "").await?;
    let groups: Vec<Value> = v["disk_groups"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|g| {
            json!({
                "name": g["name"], "shared": g["shared"], "seq": g["seq"],
                "disks": g["disks"].as_array().map(|a| a.len()).unwrap_or(0),
                "volumes": g["volumes"].as_array().map(|a| a.len()).unwrap_or(0),
                "state": "ok", "reason": "",
            })
        })
        .chain(
            v["failed_disk_groups"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|g| {
                    json!({
                        "name": g["name"], "shared": g["shared"], "seq": Value::Null,
                        "disks": g["disks"].as_array().map(|a| a.len()).unwrap_or(0),
                        "volumes": Value::Null,
                        "state": "failed", "reason": g["reason"],
                    })
                }),
        )
        .collect();
    if json_out {
        return Ok(pretty_json(&json!({ "disk_groups": groups })));
    }
    let mut out = format!(
        "{:<12} {:<8} {:>6} {:>6} {:>8}  {}",
        "GROUP", "KIND", "SEQ", "DISKS", "VOLUMES", "STATE"
    );
    for g in &groups {
        let dash = |v: &Value| if v.is_null() { "-".into() } else { s(v) };
        out.push_str(&format!(
            "\n{:<12} {:<8} {:>6} {:>6} {:>8}  {}",
            s(&g["name"]),
            if g["shared"] == true {
                "shared"
            } else {
                "private"
            },
            dash(&g["seq"]),
            s(&g["disks"]),
            dash(&g["volumes"]),
            if g["state"] == "failed" {
                format!("FAILED {}", s(&g["reason"]))
            } else {
                "ok".into()
            }
        ));
    }
    Ok(out)
}

/// `vol list [DG]`.
/// `vol stats DG VOL`: the answering node's data-plane counters of the volume.
pub(crate) async fn vol_stats(
    client: &ctl::Client,
    json_out: bool,
    dg: &str,
    vol: &str,
) -> Result<String, Failure> {
    let mut req = client.vol_stats_request();
    req.get().set_dg(dg);
    req.get().set_volume(vol);
    let resp = req.send().promise.await.map_err(rpc)?;
    let r = resp.get().map_err(rpc)?;
    check(r.get_error(), r.has_failure().then(|| r.get_failure()))?;
    let raw = text(r.get_json())?;
    let v: Value = serde_json::from_str(&raw).map_err(|e| {
        Failure::Node(CtlFailure::internal(format!(
            "internal error: vol stats answer is not JSON: {e}"
        )))
    })?;
    if json_out {
        return Ok(pretty_json(&v));
    }
    Ok(vol_stats_text(&v))
}

/// The text form of `vol stats`.
fn vol_stats_text(v: &Value) -> String {
    let info = &v["volume"];
    let st = &info["stats"];
    let u = |x: &Value, k: &str| x[k].as_u64().unwrap_or(0);
    let ops = u(st, "read_ops") + u(st, "write_ops") + u(st, "other_ops");
    let mean_us = u(st, "latency_ns_total") / ops.max(1) / 1000;
    let mut out = format!(
        "volume {} on node {}: {} {}\n",
        s(&info["name"]),
        s(&v["node"]),
        s(&info["state"]),
        format_size(u(info, "size_bytes"))
    );
    let rows = [
        (
            "reads",
            format!(
                "{} ops, {}",
                u(st, "read_ops"),
                format_size(u(st, "read_bytes"))
            ),
        ),
        (
            "writes",
            format!(
                "{} ops, {}",
                u(st, "write_ops"),
                format_size(u(st, "write_bytes"))
            ),
        ),
        (
            "other",
            format!("{} ops (flushes, resets)", u(st, "other_ops")),
        ),
        (
            "failed",
            format!(
                "{} ops, {} read retries",
                u(st, "failed_ops"),
                u(st, "read_retries")
            ),
        ),
        (
            "latency",
            format!(
                "mean {mean_us} us, max {} us (sampled)",
                u(st, "latency_ns_max") / 1000
            ),
        ),
        (
            "now",
            format!(
                "{} in flight, {} parked, {} held",
                u(info, "inflight"),
                u(info, "parked"),
                u(info, "held")
            ),
        ),
        (
            "refused",
            format!(
                "{} parked, {} held, {} in flight, {} log (EAGAIN)",
                u(st, "parked_refused"),
                u(st, "held_refused"),
                u(st, "inflight_refused"),
                u(st, "log_refused")
            ),
        ),
        (
            "log",
            format!(
                "{} log writes, {} writes waited for one, {} regions dirty, {} copies failed",
                u(st, "log_writes"),
                u(st, "log_waits"),
                u(st, "log_dirty_regions"),
                u(st, "log_copy_failures")
            ),
        ),
    ];
    for (k, val) in rows {
        out.push_str(&format!("  {k:<8} {val}\n"));
    }
    for p in info["plexes"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!(
            "  plex     {} {}\n",
            s(&p["name"]),
            s(&p["state"])
        ));
    }
    out.trim_end().to_string()
}

/// The disks of a `print --json` log's copies (older plexd: its one `disk`).
fn log_disks(log: &Value) -> Vec<String> {
    match log["copies"].as_array() {
        Some(copies) => copies.iter().map(|c| s(&c["disk"])).collect(),
        None => vec![s(&log["disk"])],
    }
}

pub(crate) async fn vol_list(
    client: &ctl::Client,
    json_out: bool,
    dg: Option<String>,
) -> Result<String, Failure> {
    let v = print_json(client, dg.as_deref().unwrap_or("")).await?;
    let mut vols = Vec::new();
    for g in v["disk_groups"].as_array().cloned().unwrap_or_default() {
        for vol in g["volumes"].as_array().cloned().unwrap_or_default() {
            let log = &vol["log"];
            vols.push(json!({
                "dg": g["name"], "name": vol["name"], "size": vol["size"],
                "state": vol["state"],
                "plexes": vol["plexes"].as_array().map(|a| a.len()).unwrap_or(0),
                "log": if log.is_object() {
                    json!({
                        "disk": log["disk"], "region": log["region"], "len": log["len"],
                        "copies": log_disks(log),
                    })
                } else {
                    Value::Null
                },
            }));
        }
    }
    if json_out {
        return Ok(pretty_json(&json!({ "volumes": vols })));
    }
    let mut out = format!(
        "{:<12} {:<12} {:>8} {:<9} {:>6}  {}",
        "GROUP", "VOLUME", "SIZE", "STATE", "PLEXES", "LOG"
    );
    for v in &vols {
        let log = &v["log"];
        let log = if log.is_object() {
            format!(
                "{} {} region {}",
                log_disks(log).join("+"),
                format_size(log["len"].as_u64().unwrap_or(0)),
                format_size(log["region"].as_u64().unwrap_or(0))
            )
        } else {
            "-".to_string()
        };
        out.push_str(&format!(
            "\n{:<12} {:<12} {:>8} {:<9} {:>6}  {}",
            s(&v["dg"]),
            s(&v["name"]),
            format_size(v["size"].as_u64().unwrap_or(0)),
            s(&v["state"]),
            s(&v["plexes"]),
            log
        ));
    }
    Ok(out)
}

/// `print [DG]`: the configuration as a tree (or JSON).
pub(crate) async fn print(
    client: &ctl::Client,
    json_out: bool,
    dg: Option<String>,
) -> Result<String, Failure> {
    let dg = dg.as_deref().unwrap_or("");
    Ok(if json_out {
        pretty_json(&print_json(client, dg).await?)
    } else {
        printed(client, dg, plexd_proto::print::text_tree)
            .await?
            .trim_end()
            .to_string()
    })
}

/// `cluster status` / `cluster nodes`.
pub(crate) async fn cluster(
    client: &ctl::Client,
    json_out: bool,
    which: ClusterCmd,
) -> Result<String, Failure> {
    let v = status(client).await?;
    if json_out {
        return Ok(pretty_json(&v));
    }
    let mut out = String::new();
    if let ClusterCmd::Status = which {
        out.push_str(&format!(
            "node {} sees: master {}, view {}\n",
            s(&v["node"]),
            if s(&v["master"]).is_empty() {
                "-".into()
            } else {
                s(&v["master"])
            },
            s(&v["view"])
        ));
        if !s(&v["quorum_disk"]).is_empty() {
            out.push_str(&format!("{}\n", s(&v["quorum_disk"])));
        }
    }
    out.push_str(&format!(
        "{:<4} {:<10} {:<22} {:<12} {:<6} {}",
        "ID", "NODE", "ADDRESS", "ROLE", "STATE", "REASON"
    ));
    for n in v["nodes"].as_array().cloned().unwrap_or_default() {
        out.push_str(&format!(
            "\n{:<4} {:<10} {:<22} {:<12} {:<6} {}",
            s(&n["id"]),
            s(&n["name"]),
            s(&n["address"]),
            s(&n["role"]),
            s(&n["state"]),
            s(&n["reason"])
        ));
    }
    for f in v["failed_disk_groups"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        out.push_str(&format!("\ndisk group {}", s(&f)));
    }
    Ok(out)
}

/// The node's tasks (its own, and the master's when it is a slave) as `task list
/// --json` shows each.
pub(crate) async fn tasks(client: &ctl::Client) -> Result<Vec<Value>, Failure> {
    let resp = client
        .task_list_request()
        .send()
        .promise
        .await
        .map_err(rpc)?;
    let r = resp.get().map_err(rpc)?;
    check(r.get_error(), r.has_failure().then(|| r.get_failure()))?;
    let mut tasks = Vec::new();
    for t in r.get_tasks().map_err(rpc)? {
        tasks.push(json!({
            "id": t.get_id(), "kind": text(t.get_kind())?, "dg": text(t.get_dg())?,
            "volume": text(t.get_volume())?, "plex": text(t.get_plex())?,
            "done": t.get_done_bytes(), "total": t.get_total_bytes(),
            "state": text(t.get_state())?, "node": text(t.get_node())?,
            "bytes_per_second": t.get_bytes_per_second(), "eta_seconds": t.get_eta_seconds(),
        }));
    }
    Ok(tasks)
}

/// A task's rate and time left, as `task list` shows them: `-` while no rate is
/// known; no time left once it ended.
pub(crate) fn rate_and_eta(t: &Value) -> (String, String) {
    let u = |k: &str| t[k].as_u64().unwrap_or(0);
    let rate = match u("bytes_per_second") {
        0 => "-".to_string(),
        r => format!("{}/s", format_size(r)),
    };
    let eta = match (u("eta_seconds"), t["state"] == "running") {
        (0, true) => "-".to_string(),
        (0, false) => String::new(),
        (e, _) => format!("{}:{:02}:{:02}", e / 3600, e / 60 % 60, e % 60),
    };
    (rate, eta)
}

/// A task's copied share of its total, in whole percent (at most 100).
pub(crate) fn percent(t: &Value) -> u64 {
    let u = |k: &str| t[k].as_u64().unwrap_or(0);
    (u("done").saturating_mul(100) / u("total").max(1)).min(100)
}

/// `task list`: resyncs with progress.
pub(crate) async fn task_list(client: &ctl::Client, json_out: bool) -> Result<String, Failure> {
    let tasks = tasks(client).await?;
    if json_out {
        return Ok(pretty_json(&json!({ "tasks": tasks })));
    }
    let mut out = format!(
        "{:<4} {:<7} {:<10} {:<12} {:<12} {:>6} {:>21} {:>11} {:>8} {:<8} {}",
        "ID", "KIND", "GROUP", "VOLUME", "PLEX", "DONE", "COPIED", "RATE", "ETA", "NODE", "STATE"
    );
    for t in &tasks {
        let u = |k: &str| t[k].as_u64().unwrap_or(0);
        let pct = percent(t);
        let (rate, eta) = rate_and_eta(t);
        out.push_str(&format!(
            "\n{:<4} {:<7} {:<10} {:<12} {:<12} {:>5}% {:>21} {:>11} {:>8} {:<8} {}",
            s(&t["id"]),
            s(&t["kind"]),
            s(&t["dg"]),
            s(&t["volume"]),
            s(&t["plex"]),
            pct,
            format!("{}/{}", format_size(u("done")), format_size(u("total"))),
            rate,
            eta,
            s(&t["node"]),
            s(&t["state"])
        ));
    }
    Ok(out)
}
