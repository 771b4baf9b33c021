//! `plexctl print`: the configuration as the ctl API's `PrintedConfig` (each disk
//! group in its on-disk encoding, `ondisk::codec`), and the same rendered as the
//! stable JSON document and the vxprint -ht-like tree by `plexd_proto::print` (the
//! code plexctl renders with) for the answer's older `json` and `text` fields.
//! docs/OPERATIONS.md shows the JSON shape.

use plexd_proto::ctl_capnp::printed_config;

use super::disks::FailedGroup;
use crate::model::DiskGroupConfig;
use crate::ondisk::codec::write_group;

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Writes `print`'s answer: the disk groups and the failed disk groups.
pub fn write(groups: &[DiskGroupConfig], failed: &[FailedGroup], b: printed_config::Builder<'_>) {
    let mut b = b;
    let mut list = b.reborrow().init_disk_groups(len_u32(groups.len()));
    for (i, g) in (0..).zip(groups) {
        write_group(g, list.reborrow().get(i));
    }
    let mut list = b.init_failed_groups(len_u32(failed.len()));
    for (i, f) in (0..).zip(failed) {
        let mut fb = list.reborrow().get(i);
        fb.set_name(f.name.as_str());
        fb.set_id(f.id.as_str());
        fb.set_shared(f.shared);
        fb.set_reason(f.reason.as_str());
        let mut disks = fb.init_disks(len_u32(f.disks.len()));
        for (j, (name, path)) in (0..).zip(&f.disks) {
            let mut d = disks.reborrow().get(j);
            d.set_name(name.as_str());
            d.set_path(path.to_string_lossy().as_ref());
        }
    }
}

/// The JSON document (pretty-printed) and the text tree of `print`'s answer.
pub fn render(c: printed_config::Reader<'_>) -> capnp::Result<(String, String)> {
    let json = plexd_proto::print::json(c)?;
    let json = serde_json::to_string_pretty(&json)
        .map_err(|e| capnp::Error::failed(format!("print: cannot render JSON: {e}")))?;
    Ok((json, plexd_proto::print::text_tree(c)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::test_support::cluster;
    use crate::model::{
        Change, ClusterConfig, Export, ExportProtocol, PlexLayout, ReadPolicy, VolumeLayout,
        VolumeState,
    };
    use capnp::message::Builder;

    /// Two groups: a mirrored volume (a plex detached, a preferred plex, exported), a
    /// striped disabled one, a plex added as stripe; and a private empty group.
    fn sample() -> (Vec<DiskGroupConfig>, Vec<FailedGroup>) {
        let mut c: ClusterConfig = cluster(&[
            ("disk01", 1 << 30),
            ("disk02", 1 << 30),
            ("disk03", 1 << 30),
            ("disk04", 1 << 30),
        ]);
        for change in [
            Change::VolCreate {
                dg: "dg1".into(),
                volume: "vol1".into(),
                size_bytes: 100 << 20,
                layout: VolumeLayout::Mirror { mirrors: 2 },
                // Without a log: the renderings of before
                // (print_shows_the_log_and_ranges_left shows one).
                log: crate::model::LogPolicy::Off,
                disks: Vec::new(),
            },
            Change::VolCreate {
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
            },
            Change::PlexAdd {
                dg: "dg1".into(),
                volume: "vol2".into(),
                layout: PlexLayout::Stripe {
                    columns: 1,
                    stripe_unit_bytes: 64 << 10,
                },
                disks: Vec::new(),
            },
            Change::PlexDetach {
                dg: "dg1".into(),
                plex: "vol1-02".into(),
            },
            Change::VolExport {
                dg: "dg1".into(),
                volume: "vol1".into(),
                export: Export {
                    protocol: ExportProtocol::Iscsi,
                    iqn: "iqn.2026-11.io.plexd:test.dg1.vol1".into(),
                    nodes: vec!["a".into(), "b".into()],
                    portal: "127.0.0.1:3260".into(),
                    hosts: Vec::new(),
                },
            },
            Change::VolExport {
                dg: "dg1".into(),
                volume: "vol2".into(),
                export: Export {
                    protocol: ExportProtocol::Iscsi,
                    iqn: "iqn.2026-11.io.plexd:test.dg1.vol2".into(),
                    nodes: Vec::new(),
                    portal: String::new(),
                    hosts: Vec::new(),
                },
            },
        ] {
            c = c.apply(&change).unwrap();
        }
        let mut g = c.disk_groups[0].clone();
        g.volume_mut(0).read_policy = ReadPolicy::Prefer {
            plex: "vol1-01".into(),
        };
        g.volume_mut(1).state = VolumeState::Disabled;
        // The plex added made vol2 mirrored, which gave it a log: left out here (the
        // renderings of before; print_shows_the_log_and_ranges_left shows one).
        g.volume_mut(1).log = None;
        g.volume_mut(1).read_policy = ReadPolicy::LeastBusy;
        let mut p = g.clone();
        p.name = "pdg".into();
        p.shared = false;
        p.owner_id = "host1".into();
        p.volumes.clear();
        let failed = vec![
            FailedGroup {
                name: "dg9".into(),
                id: "9".repeat(32),
                shared: true,
                reason: "no configuration copy passes its checksum".into(),
                disks: vec![("d9".into(), "/tmp/d9.img".into())],
            },
            FailedGroup {
                name: "dg8".into(),
                id: "8".repeat(32),
                shared: false,
                reason: "format version 7".into(),
                disks: Vec::new(),
            },
        ];
        (vec![g, p], failed)
    }

    /// plexctl's --json document and text of `print`'s answer, through the wire.
    fn through_the_wire(groups: &[DiskGroupConfig], failed: &[FailedGroup]) -> (String, String) {
        let mut message = Builder::new_default();
        write(groups, failed, message.init_root());
        let bytes = capnp::serialize::write_message_to_words(&message);
        let reader = capnp::serialize::read_message_from_flat_slice(
            &mut bytes.as_slice(),
            Default::default(),
        )
        .unwrap();
        let root = reader.get_root::<printed_config::Reader>().unwrap();
        let v = plexd_proto::print::json(root).unwrap();
        (
            serde_json::to_string_pretty(&v).unwrap(),
            plexd_proto::print::text_tree(root).unwrap(),
        )
    }

    /// The files hold what plexctl printed before `print` answered with structs (the
    /// node's JSON text and tree, rendered from these samples by the code of then):
    /// the renderings must not change.
    #[test]
    fn print_renders_like_before() {
        let (groups, failed) = sample();
        let (json, text) = through_the_wire(&groups, &failed);
        assert_eq!(json, include_str!("testdata/print_failed.json"));
        assert_eq!(text, include_str!("testdata/print_failed.txt"));
        let (json, text) = through_the_wire(&groups[..1], &[]);
        assert_eq!(json, include_str!("testdata/print.json"));
        assert_eq!(text, include_str!("testdata/print.txt"));
        assert!(!json.contains("failed_disk_groups"));
        // The node's own renderings (for an older plexctl) are the same.
        let mut message = Builder::new_default();
        write(&groups, &failed, message.init_root());
        let root = message
            .get_root_as_reader::<printed_config::Reader>()
            .unwrap();
        let (node_json, node_text) = render(root).unwrap();
        let v: serde_json::Value = serde_json::from_str(&node_json).unwrap();
        assert_eq!(
            serde_json::to_string_pretty(&v).unwrap(),
            json_of(&groups, &failed)
        );
        assert_eq!(node_text, include_str!("testdata/print_failed.txt"));
    }

    #[test]
    fn print_shows_the_log_and_ranges_left() {
        let c = cluster(&[
            ("disk01", 1 << 30),
            ("disk02", 1 << 30),
            ("disk03", 1 << 30),
        ]);
        let region = crate::model::LogPolicy::On {
            region_bytes: 1 << 20,
        };
        let c = crate::model::test_support::with_mirror(&c, "vol1", 100 << 20, region);
        let mut g = c.disk_groups[0].clone();
        g.volume_mut(0).plexes[1].state = crate::model::PlexState::Syncing;
        g.volume_mut(0).plexes[1].resync_ranges = vec![(0, 1 << 20), (8 << 20, 2 << 20)];
        let log = g.volumes[0].log.clone().unwrap();
        let (json, text) = through_the_wire(&[g], &[]);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let vol = &v["disk_groups"][0]["volumes"][0];
        let (c1, c2) = (&log.copies[0], &log.copies[1]);
        assert_eq!(
            vol["log"],
            serde_json::json!({
                "disk": "disk03", "disk_offset": c1.disk_offset_bytes,
                "copies": [
                    {"disk": "disk03", "disk_offset": c1.disk_offset_bytes},
                    {"disk": "disk01", "disk_offset": c2.disk_offset_bytes},
                ],
                "len": log.len_bytes,
                "section": log.section_bytes, "region": 1 << 20, "log_id": log.log_id,
            })
        );
        assert_eq!(
            vol["plexes"][1]["resync"],
            serde_json::json!({
                "ranges": 2, "bytes": 3 << 20, "list": [[0, 1 << 20], [8 << 20, 2 << 20]],
            })
        );
        assert!(vol["plexes"][0].get("resync").is_none(), "{json}");
        assert!(
            text.contains("\nlg vol1         disk03   1.0 MiB  520.0 KiB region 1.0 MiB\n"),
            "{text}"
        );
        // Copy 2 on disk01, after the plex (100 MiB from 1 MiB).
        assert!(
            text.contains("\nlg vol1         disk01   101.0 MiB 520.0 KiB region 1.0 MiB\n"),
            "{text}"
        );
        assert!(
            text.contains("SYNCING  CONCAT   100.0 MiB resync 2 ranges 3.0 MiB left\n"),
            "{text}"
        );
    }

    fn json_of(groups: &[DiskGroupConfig], failed: &[FailedGroup]) -> String {
        through_the_wire(groups, failed).0
    }
}
