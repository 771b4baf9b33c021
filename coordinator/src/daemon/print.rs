//! `plexctl print`: the configuration as stable JSON and as a vxprint -ht-like tree.
//!
//! JSON shape (docs/OPERATIONS.md): `{"disk_groups": [{"name", "id", "shared", "seq",
//! "owner", "disks": [{"name", "id", "path", "size", "public_offset", "public_len"}],
//! "volumes": [{"name", "size", "state", "read_policy", "plexes": [{"name", "state",
//! "layout", "columns", "stripe_unit", "subdisks": [{"name", "disk", "disk_offset",
//! "len", "column", "plex_offset"}]}], "exports": [{"protocol", "iqn", "nodes",
//! "portal", "hosts"}]}]}]}`. Sizes are bytes; an export's empty `nodes` means every
//! node, its empty `portal` each node's own, its empty `hosts` (nvmf) any host; `iqn`
//! is the target name (the subsystem NQN for nvmf).

use serde::Serialize;

use super::disks::FailedGroup;
use crate::objects::{DiskGroupConfig, PlexLayout, ReadPolicy};
use crate::size::format_size;

#[derive(Serialize)]
struct Out<'a> {
    disk_groups: Vec<Dg<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    failed_disk_groups: Vec<Failed<'a>>,
}

/// A failed disk group (`disks::FailedGroup`): name, id, kind, reason, disks.
#[derive(Serialize)]
struct Failed<'a> {
    name: &'a str,
    id: &'a str,
    shared: bool,
    state: &'static str,
    reason: &'a str,
    disks: Vec<&'a str>,
}

#[derive(Serialize)]
struct Dg<'a> {
    name: &'a str,
    id: &'a str,
    shared: bool,
    seq: u64,
    owner: &'a str,
    disks: Vec<Dm<'a>>,
    volumes: Vec<Vol<'a>>,
}

#[derive(Serialize)]
struct Dm<'a> {
    name: &'a str,
    id: &'a str,
    path: &'a str,
    size: u64,
    public_offset: u64,
    public_len: u64,
}

#[derive(Serialize)]
struct Vol<'a> {
    name: &'a str,
    size: u64,
    state: &'static str,
    read_policy: String,
    plexes: Vec<Pl<'a>>,
    exports: Vec<Ex<'a>>,
}

#[derive(Serialize)]
struct Ex<'a> {
    protocol: &'static str,
    iqn: &'a str,
    nodes: &'a [String],
    portal: &'a str,
    hosts: &'a [String],
}

#[derive(Serialize)]
struct Pl<'a> {
    name: &'a str,
    state: &'static str,
    layout: &'static str,
    columns: u32,
    stripe_unit: u64,
    subdisks: Vec<Sd<'a>>,
}

#[derive(Serialize)]
struct Sd<'a> {
    name: &'a str,
    disk: &'a str,
    disk_offset: u64,
    len: u64,
    column: u32,
    plex_offset: u64,
}

fn read_policy(p: &ReadPolicy) -> String {
    match p {
        ReadPolicy::Round => "round".into(),
        ReadPolicy::Prefer { plex } => format!("prefer:{plex}"),
        ReadPolicy::LeastOutstanding => "least-busy".into(),
    }
}

fn layout(l: PlexLayout) -> (&'static str, u32, u64) {
    match l {
        PlexLayout::Concat => ("concat", 1, 0),
        PlexLayout::Stripe {
            columns,
            stripe_unit_bytes,
        } => ("stripe", columns, stripe_unit_bytes),
    }
}

/// The JSON document, with the failed disk groups (`failed_disk_groups`, left out
/// when there are none).
pub fn json(groups: &[&DiskGroupConfig], failed: &[&FailedGroup]) -> String {
    let out = Out {
        failed_disk_groups: failed
            .iter()
            .map(|f| Failed {
                name: &f.name,
                id: &f.id,
                shared: f.shared,
                state: "failed",
                reason: &f.reason,
                disks: f.disks.iter().map(|(n, _)| n.as_str()).collect(),
            })
            .collect(),
        disk_groups: groups
            .iter()
            .map(|g| Dg {
                name: &g.name,
                id: &g.id,
                shared: g.shared,
                seq: g.seq,
                owner: &g.owner_id,
                disks: g
                    .disks
                    .iter()
                    .map(|d| Dm {
                        name: &d.name,
                        id: &d.id,
                        path: &d.path,
                        size: d.size_bytes,
                        public_offset: d.public_offset_bytes,
                        public_len: d.public_len_bytes,
                    })
                    .collect(),
                volumes: g
                    .volumes
                    .iter()
                    .map(|v| Vol {
                        name: &v.name,
                        size: v.size_bytes,
                        state: v.state.as_str(),
                        read_policy: read_policy(&v.read_policy),
                        plexes: v
                            .plexes
                            .iter()
                            .map(|p| {
                                let (kind, columns, su) = layout(p.layout);
                                Pl {
                                    name: &p.name,
                                    state: p.state.as_str(),
                                    layout: kind,
                                    columns,
                                    stripe_unit: su,
                                    subdisks: p
                                        .subdisks
                                        .iter()
                                        .map(|s| Sd {
                                            name: &s.name,
                                            disk: &s.disk,
                                            disk_offset: s.disk_offset_bytes,
                                            len: s.len_bytes,
                                            column: s.column,
                                            plex_offset: s.plex_offset_bytes,
                                        })
                                        .collect(),
                                }
                            })
                            .collect(),
                        exports: v
                            .exports
                            .iter()
                            .map(|e| Ex {
                                protocol: e.protocol.as_str(),
                                iqn: &e.iqn,
                                nodes: &e.nodes,
                                portal: &e.portal,
                                hosts: &e.hosts,
                            })
                            .collect(),
                    })
                    .collect(),
            })
            .collect(),
    };
    serde_json::to_string_pretty(&out).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// The text tree (`dg`, `dm`, `v`, `pl`, `sd` lines), then one `dg NAME FAILED` line
/// (with its disks and the reason) per failed disk group.
pub fn text(groups: &[&DiskGroupConfig], failed: &[&FailedGroup]) -> String {
    let mut s = tree(groups);
    for f in failed {
        let kind = if f.shared { "shared" } else { "private" };
        s.push('\n');
        s.push_str(&format!(
            "dg {:<12} {:<8} FAILED {}\n",
            f.name, kind, f.reason
        ));
        for (name, path) in &f.disks {
            s.push_str(&format!("dm {:<12} {}\n", name, path.display()));
        }
    }
    s
}

fn tree(groups: &[&DiskGroupConfig]) -> String {
    let mut s = String::new();
    s.push_str("DG NAME         KIND     SEQ    OWNER\n");
    s.push_str("DM NAME         DEVICE                               LENGTH\n");
    s.push_str("V  NAME         STATE    LENGTH   READPOL\n");
    s.push_str("PL NAME         VOLUME       STATE    LAYOUT   LENGTH\n");
    s.push_str("SD NAME         PLEX         DISK     OFFSET   LENGTH   [COL/]OFF\n");
    s.push_str("EX PROTO  VOLUME       NODES        PORTAL           TARGET\n");
    for g in groups {
        s.push('\n');
        let kind = if g.shared { "shared" } else { "private" };
        s.push_str(&format!(
            "dg {:<12} {:<8} {:<6} {}\n",
            g.name, kind, g.seq, g.owner_id
        ));
        for d in &g.disks {
            s.push_str(&format!(
                "dm {:<12} {:<36} {}\n",
                d.name,
                d.path,
                format_size(d.public_len_bytes)
            ));
        }
        for v in &g.volumes {
            s.push('\n');
            s.push_str(&format!(
                "v  {:<12} {:<8} {:<8} {}\n",
                v.name,
                v.state.as_str(),
                format_size(v.size_bytes),
                read_policy(&v.read_policy)
            ));
            for e in &v.exports {
                let nodes = if e.nodes.is_empty() {
                    "all".to_string()
                } else {
                    e.nodes.join(",")
                };
                let portal = if e.portal.is_empty() {
                    "(node's)"
                } else {
                    e.portal.as_str()
                };
                let hosts = match (e.protocol, e.hosts.is_empty()) {
                    (crate::objects::ExportProtocol::Nvmf, true) => " hosts=any".to_string(),
                    (_, true) => String::new(),
                    (_, false) => format!(" hosts={}", e.hosts.join(",")),
                };
                s.push_str(&format!(
                    "ex {:<6} {:<12} {:<12} {:<16} {}{hosts}\n",
                    e.protocol.as_str(),
                    v.name,
                    nodes,
                    portal,
                    e.iqn
                ));
            }
            for p in &v.plexes {
                let (kind, columns, su) = layout(p.layout);
                let lay = if kind == "stripe" {
                    format!("STRIPE {columns}/{}", format_size(su))
                } else {
                    "CONCAT".to_string()
                };
                s.push_str(&format!(
                    "pl {:<12} {:<12} {:<8} {:<8} {}\n",
                    p.name,
                    v.name,
                    p.state.as_str(),
                    lay,
                    format_size(v.size_bytes)
                ));
                for sd in &p.subdisks {
                    s.push_str(&format!(
                        "sd {:<12} {:<12} {:<8} {:<8} {:<8} {}/{}\n",
                        sd.name,
                        p.name,
                        sd.disk,
                        format_size(sd.disk_offset_bytes),
                        format_size(sd.len_bytes),
                        sd.column,
                        format_size(sd.plex_offset_bytes)
                    ));
                }
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{apply, Change, ClusterConfig, Disk, VolumeLayout};

    #[test]
    fn json_has_the_contract_fields() {
        let disk = |n: &str, id: char| Disk {
            name: n.into(),
            id: id.to_string().repeat(32),
            path: format!("/tmp/{n}.img"),
            size_bytes: 65 << 20,
            public_offset_bytes: 1 << 20,
            public_len_bytes: 64 << 20,
        };
        let c = apply(
            &ClusterConfig::default(),
            &Change::DgCreate {
                dg: "dg1".into(),
                dg_id: "a".repeat(32),
                shared: true,
                owner_id: "demo".into(),
                disks: vec![disk("d1", '1'), disk("d2", '2')],
            },
        )
        .unwrap();
        let c = apply(
            &c,
            &Change::VolCreate {
                dg: "dg1".into(),
                volume: "v1".into(),
                size_bytes: 4 << 20,
                layout: VolumeLayout::Mirror { mirrors: 2 },
            },
        )
        .unwrap();
        let groups: Vec<&DiskGroupConfig> = c.disk_groups.iter().collect();
        let v: serde_json::Value = serde_json::from_str(&json(&groups, &[])).unwrap();
        let g = &v["disk_groups"][0];
        assert_eq!(g["name"], "dg1");
        assert_eq!(g["shared"], true);
        assert_eq!(g["seq"], 2);
        assert_eq!(g["disks"].as_array().unwrap().len(), 2);
        let vol = &g["volumes"][0];
        assert_eq!(vol["size"], 4 << 20);
        assert_eq!(vol["state"], "ENABLED");
        assert_eq!(vol["plexes"][0]["state"], "ACTIVE");
        assert_eq!(vol["plexes"][0]["layout"], "concat");
        assert_eq!(vol["plexes"][1]["subdisks"].as_array().unwrap().len(), 1);
        let t = text(&groups, &[]);
        assert!(t.contains("dg dg1"));
        assert!(t.contains("pl "));
    }
}
