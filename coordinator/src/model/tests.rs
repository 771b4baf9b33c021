use std::collections::BTreeSet;

use super::test_support::*;
use super::*;

const GIB: u64 = 1 << 30;

fn create_vol(
    c: &ClusterConfig,
    name: &str,
    size: u64,
    layout: VolumeLayout,
) -> Result<ClusterConfig, ConfigError> {
    c.apply(&Change::VolCreate {
        dg: "dg1".into(),
        volume: name.into(),
        size_bytes: size,
        layout,
        log: Default::default(),
        disks: Vec::new(),
    })
}

fn pr_out(nexus: &Nexus, sa: u8, ty: u8, rkey: u64, sakey: u64) -> Change {
    Change::VolPrOut {
        dg: "dg1".into(),
        volume: "v1".into(),
        nexus: nexus.clone(),
        service_action: sa,
        scope_type: ty,
        parameters: plexd_target_api::scsi::pr::param(rkey, sakey, false),
    }
}

#[test]
fn persistent_reservations_are_changed_by_the_cluster_and_refused_when_stale() {
    use plexd_target_api::scsi::pr::{ty, Access};
    let c = create_vol(
        &cluster(&[("d1", GIB)]),
        "v1",
        8 << 20,
        VolumeLayout::Concat,
    )
    .unwrap();
    let a = Nexus::new("iqn.a,i,0x1", 1);
    let b = Nexus::new("iqn.b,i,0x2", 2);
    let c = c.apply(&pr_out(&a, 0, 0, 0, 0xa)).unwrap();
    let c = c.apply(&pr_out(&a, 1, ty::WE, 0xa, 0)).unwrap();
    assert_eq!(c.disk_groups[0].seq, 4, "each change bumps seq");
    let r = &c.disk_groups[0].volumes[0].reservations;
    assert!(r.conflicts(&b, Access::Write));
    assert!(!r.conflicts(&a, Access::Write));
    // What changes nothing (a second identical RESERVE) or conflicts is refused:
    // the requesting node answers it from the state it then holds.
    for stale in [pr_out(&a, 1, ty::WE, 0xa, 0), pr_out(&b, 1, ty::WE, 0xb, 0)] {
        let e = c.apply(&stale).unwrap_err();
        assert!(matches!(e, ConfigError::Invalid(_)), "{e}");
        assert!(e.to_string().contains("volume v1 of disk group dg1"), "{e}");
    }
    // PREEMPT by another nexus removes a's key and takes the reservation.
    let c = c.apply(&pr_out(&b, 0, 0, 0, 0xb)).unwrap();
    let c = c.apply(&pr_out(&b, 4, ty::WE, 0xb, 0xa)).unwrap();
    let r = &c.disk_groups[0].volumes[0].reservations;
    assert_eq!(r.regs.len(), 1);
    assert!(r.conflicts(&a, Access::Write));
    // A private group's volume keeps its reservations on its node.
    let private = apply(
        &ClusterConfig::default(),
        &Change::DgCreate {
            dg: "dg1".into(),
            dg_id: "dgid1".into(),
            shared: false,
            owner_id: "host1".into(),
            disks: vec![disk("d1", GIB)],
        },
    )
    .unwrap();
    let private = create_vol(&private, "v1", 8 << 20, VolumeLayout::Concat).unwrap();
    assert!(private.apply(&pr_out(&a, 0, 0, 0, 0xa)).is_err());
    // The change travels as JSON like every other.
    let ch = pr_out(&a, 0, 0, 0, 0xa);
    let back: Change = serde_json::from_str(&serde_json::to_string(&ch).unwrap()).unwrap();
    assert_eq!(back, ch);
}

#[test]
fn dg_create_refuses_duplicates_and_reused_disks() {
    let c = cluster(&[("disk01", GIB)]);
    assert_eq!(c.disk_groups[0].seq, 1);
    let again = Change::DgCreate {
        dg: "dg1".into(),
        dg_id: "other".into(),
        shared: true,
        owner_id: "c".into(),
        disks: vec![disk("disk02", GIB)],
    };
    assert_eq!(
        c.apply(&again).unwrap_err().to_string(),
        "disk group dg1 already exists"
    );
    let private = Change::DgCreate {
        dg: "dg1".into(),
        dg_id: "other".into(),
        shared: false,
        owner_id: "hostA".into(),
        disks: vec![disk("disk02", GIB)],
    };
    assert_eq!(
        c.apply(&private).unwrap_err().to_string(),
        "disk group dg1 exists as a shared disk group"
    );
    let reuse = Change::DgCreate {
        dg: "dg2".into(),
        dg_id: "dgid2".into(),
        shared: true,
        owner_id: "c".into(),
        disks: vec![disk("disk01", GIB)],
    };
    let err = c.apply(&reuse).unwrap_err().to_string();
    assert!(err.contains("already in disk group dg1"), "{err}");
    let empty = Change::DgCreate {
        dg: "dg2".into(),
        dg_id: "dgid2".into(),
        shared: true,
        owner_id: "c".into(),
        disks: vec![],
    };
    assert!(c.apply(&empty).is_err());
    let bad_name = Change::DgCreate {
        dg: "-x".into(),
        dg_id: "dgid3".into(),
        shared: true,
        owner_id: "c".into(),
        disks: vec![disk("disk03", GIB)],
    };
    assert!(c
        .apply(&bad_name)
        .unwrap_err()
        .to_string()
        .contains("invalid"));
}

#[test]
fn add_and_remove_disks() {
    let c = cluster(&[("disk01", GIB)]);
    let c = c
        .apply(&Change::DgAddDisk {
            dg: "dg1".into(),
            disk: disk("disk02", GIB),
        })
        .unwrap();
    assert_eq!(c.disk_groups[0].disks.len(), 2);
    assert_eq!(c.disk_groups[0].seq, 2);
    let dup = Change::DgAddDisk {
        dg: "dg1".into(),
        disk: disk("disk02", GIB),
    };
    assert!(c.apply(&dup).unwrap_err().to_string().contains("disk02"));
    let c = create_vol(&c, "vol1", GIB / 2, VolumeLayout::Concat).unwrap();
    let used = c.disk_groups[0].volumes[0].plexes[0].subdisks[0]
        .disk
        .clone();
    let err = c
        .apply(&Change::DgRmDisk {
            dg: "dg1".into(),
            disk: used.clone(),
        })
        .unwrap_err();
    assert!(err.to_string().contains("vol1/vol1-01"), "{err}");
    let other = if used == "disk01" { "disk02" } else { "disk01" };
    let c2 = c
        .apply(&Change::DgRmDisk {
            dg: "dg1".into(),
            disk: other.into(),
        })
        .unwrap();
    let err = c2
        .apply(&Change::DgRmDisk {
            dg: "dg1".into(),
            disk: "nope".into(),
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "disk nope does not exist in disk group dg1"
    );
    let updates = Change::DgRmDisk {
        dg: "dg1".into(),
        disk: other.into(),
    }
    .disk_updates(&c, &c2);
    assert_eq!(updates.len(), 2);
    assert!(matches!(&updates[1], DiskUpdate::Release(d) if d.name == other));
}

#[test]
fn names_like_subdisks_are_refused_or_skipped_never_given_twice() {
    let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
    let c = create_vol(&c, "vol01", 100 << 20, VolumeLayout::Concat).unwrap();
    // A volume named like a subdisk there is, or whose first plex would be.
    for (name, taken) in [("disk01-01", "disk01-01"), ("disk01", "disk01-01")] {
        let err = create_vol(&c, name, 1 << 20, VolumeLayout::Concat).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "volume {name}: the name {taken} is in use in disk group dg1 (subdisk disk01-01 of volume vol01); choose another volume name"
            )
        );
    }
    // A volume named like a subdisk to come: the subdisk gets the next number.
    let c = create_vol(&c, "disk01-02", 1 << 20, VolumeLayout::Concat).unwrap();
    let sd = &c.disk_groups[0].volume("disk01-02").unwrap().plexes[0].subdisks[0];
    assert_eq!(
        (sd.disk.as_str(), sd.name.as_str()),
        ("disk01", "disk01-03")
    );
    // A volume named like a disk: a plex added later skips its subdisks' names.
    let c = create_vol(&c, "disk02", 1 << 20, VolumeLayout::Concat).unwrap();
    let v = c.disk_groups[0].volume("disk02").unwrap();
    assert_eq!(v.plexes[0].name, "disk02-01");
    assert_eq!(v.plexes[0].subdisks[0].name, "disk01-04");
    let c = c
        .apply(&Change::PlexAdd {
            dg: "dg1".into(),
            volume: "disk02".into(),
            layout: PlexLayout::Concat,
            disks: Vec::new(),
        })
        .unwrap();
    let v = c.disk_groups[0].volume("disk02").unwrap();
    let names: Vec<(&str, &str)> = v
        .plexes
        .iter()
        .map(|p| (p.name.as_str(), p.subdisks[0].name.as_str()))
        .collect();
    // The new plex takes the volume's next plex name, disk02-02; its subdisk is on
    // disk02 (a mirror's distinct disk), whose names disk02-01 and disk02-02 are the
    // volume's plexes': it takes disk02-03.
    assert_eq!(
        names,
        [("disk02-01", "disk01-04"), ("disk02-02", "disk02-03")]
    );
    c.disk_groups[0].validate().unwrap();
}

#[test]
fn vol_create_names_plexes_and_subdisks_vxvm_style() {
    let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
    let c = create_vol(&c, "vol01", 100 << 20, VolumeLayout::Mirror { mirrors: 2 }).unwrap();
    let v = &c.disk_groups[0].volumes[0];
    assert_eq!(v.plexes[0].name, "vol01-01");
    assert_eq!(v.plexes[1].name, "vol01-02");
    assert_eq!(v.plexes[0].subdisks[0].name, "disk01-01");
    assert_eq!(v.plexes[1].subdisks[0].name, "disk02-01");
    assert!(v.plexes.iter().all(|p| p.state == PlexState::Active));
    let err = create_vol(&c, "vol01", GIB, VolumeLayout::Concat).unwrap_err();
    assert_eq!(
        err.to_string(),
        "volume vol01 already exists in disk group dg1"
    );
    let c = create_vol(&c, "vol02", 100 << 20, VolumeLayout::Concat).unwrap();
    assert_eq!(
        c.disk_groups[0].volumes[1].plexes[0].subdisks[0].name,
        "disk01-02"
    );
    assert_eq!(c.disk_groups[0].seq, 3);
    assert!(create_vol(&c, "vol03", 0, VolumeLayout::Concat).is_err());
}

#[test]
fn last_active_plex_can_never_be_detached() {
    let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
    let c = create_vol(&c, "vol1", 10 << 20, VolumeLayout::Mirror { mirrors: 2 }).unwrap();
    let detach = |c: &ClusterConfig, plex: &str| {
        c.apply(&Change::PlexDetach {
            dg: "dg1".into(),
            plex: plex.into(),
        })
    };
    let c = detach(&c, "vol1-01").unwrap();
    assert_eq!(
        c.disk_groups[0].volumes[0].plexes[0].state,
        PlexState::Stale
    );
    let err = detach(&c, "vol1-02").unwrap_err();
    assert_eq!(
        err.to_string(),
        "plex vol1-02: cannot detach the last ACTIVE plex of volume vol1"
    );
    let err = c
        .apply(&Change::SetPlexState {
            dg: "dg1".into(),
            plex: "vol1-02".into(),
            state: PlexState::Stale,
        })
        .unwrap_err();
    assert!(matches!(err, ConfigError::LastActivePlex { .. }));
    let err = c
        .apply(&Change::PlexRm {
            dg: "dg1".into(),
            plex: "vol1-02".into(),
            force: true,
        })
        .unwrap_err();
    assert!(matches!(err, ConfigError::LastActivePlex { .. }));
    // Attach: STALE → SYNCING → ACTIVE.
    let c = c
        .apply(&Change::PlexAttach {
            dg: "dg1".into(),
            plex: "vol1-01".into(),
        })
        .unwrap();
    assert_eq!(
        c.disk_groups[0].volumes[0].plexes[0].state,
        PlexState::Syncing
    );
    let c = c
        .apply(&Change::SetPlexState {
            dg: "dg1".into(),
            plex: "vol1-01".into(),
            state: PlexState::Active,
        })
        .unwrap();
    let c = detach(&c, "vol1-02").unwrap();
    let c = c
        .apply(&Change::PlexRm {
            dg: "dg1".into(),
            plex: "vol1-02".into(),
            force: true,
        })
        .unwrap();
    assert_eq!(c.disk_groups[0].volumes[0].plexes.len(), 1);
    let err = c
        .apply(&Change::PlexRm {
            dg: "dg1".into(),
            plex: "vol1-01".into(),
            force: true,
        })
        .unwrap_err();
    assert!(err.to_string().contains("only plex"), "{err}");
}

#[test]
fn plex_add_uses_other_disks_and_starts_empty() {
    let c = cluster(&[("disk01", GIB), ("disk02", GIB), ("disk03", GIB)]);
    let c = create_vol(&c, "vol1", 10 << 20, VolumeLayout::Concat).unwrap();
    let add = Change::PlexAdd {
        dg: "dg1".into(),
        volume: "vol1".into(),
        layout: PlexLayout::Concat,
        disks: Vec::new(),
    };
    let c = c.apply(&add).unwrap();
    let c = c.apply(&add).unwrap();
    let v = &c.disk_groups[0].volumes[0];
    assert_eq!(v.plexes[1].name, "vol1-02");
    assert_eq!(v.plexes[1].state, PlexState::Empty);
    let disks: BTreeSet<_> = v.plexes.iter().flat_map(|p| p.disks()).collect();
    assert_eq!(disks.len(), 3);
    let err = c.apply(&add).unwrap_err().to_string();
    assert!(err.contains("distinct disks"), "{err}");
}

#[test]
fn deport_import_and_destroy() {
    let c = cluster(&[("disk01", GIB)]);
    let c = create_vol(&c, "vol1", 10 << 20, VolumeLayout::Concat).unwrap();
    let deport = Change::DgDeport {
        dg: "dg1".into(),
        force: false,
    };
    let after = c.apply(&deport).unwrap();
    assert!(after.disk_groups.is_empty());
    let updates = deport.disk_updates(&c, &after);
    let DiskUpdate::WriteConfig(on_disk) = &updates[0] else {
        panic!("{updates:?}")
    };
    assert_eq!(on_disk.owner_id, "");
    assert_eq!(on_disk.seq, 3);
    let import = Change::DgImport {
        config: (**on_disk).clone(),
        shared: false,
        owner_id: "hostA".into(),
    };
    let back = after.apply(&import).unwrap();
    let g = &back.disk_groups[0];
    assert!(!g.shared);
    assert_eq!(g.owner_id, "hostA");
    assert_eq!(g.seq, 4);
    assert_eq!(g.volumes, c.disk_groups[0].volumes);
    assert!(back.apply(&import).is_err());
    let destroy = Change::DgDestroy {
        dg: "dg1".into(),
        force: false,
    };
    let gone = back.apply(&destroy).unwrap();
    assert!(gone.disk_groups.is_empty());
    assert!(matches!(
        destroy.disk_updates(&back, &gone)[..],
        [DiskUpdate::Release(_)]
    ));
    assert_eq!(
        gone.apply(&destroy).unwrap_err().to_string(),
        "disk group dg1 does not exist"
    );
}

#[test]
fn volume_specs_list_extents_per_column_on_the_disk_bdevs() {
    use plexd_target_api::volume::{PlexKind, PlexState as KPlexState};
    let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
    let c = create_vol(
        &c,
        "vol1",
        1 << 20,
        VolumeLayout::Stripe {
            columns: 2,
            stripe_unit_bytes: 64 << 10,
        },
    )
    .unwrap();
    let k = c.disk_groups[0].volume_specs(1);
    assert_eq!(k.len(), 1);
    assert_eq!(k[0].name, "dg1.vol1");
    let p = &k[0].plexes[0];
    assert_eq!(
        p.kind,
        PlexKind::Stripe {
            stripe_unit_bytes: 64 << 10
        }
    );
    assert_eq!(p.state, KPlexState::Active);
    assert_eq!(p.columns.len(), 2);
    assert_eq!(p.columns[0][0].bdev, "dg1.disk01");
    assert_eq!(p.columns[0][0].offset_bytes, 1 << 20);
    assert_eq!(p.columns[0][0].len_bytes, 512 << 10);
    assert_eq!(p.columns[1][0].bdev, "dg1.disk02");
}

#[test]
fn an_empty_plex_is_detached_in_the_data_plane() {
    use plexd_target_api::volume::PlexState as KPlexState;
    assert_eq!(kernel_plex_state(PlexState::Empty), KPlexState::Detached);
    assert_eq!(kernel_plex_state(PlexState::Syncing), KPlexState::Syncing);
}

#[test]
fn json_uses_the_documented_field_names() {
    let c = cluster(&[("disk01", GIB)]);
    let c = create_vol(&c, "vol1", 10 << 20, VolumeLayout::Concat).unwrap();
    let json = serde_json::to_value(&c).unwrap();
    let g = &json["disk_groups"][0];
    assert_eq!(g["name"], "dg1");
    assert_eq!(g["shared"], true);
    assert_eq!(g["seq"], 2);
    assert_eq!(g["disks"][0]["name"], "disk01");
    let v = &g["volumes"][0];
    assert_eq!(v["size"], 10 << 20);
    assert_eq!(v["state"], "ENABLED");
    assert_eq!(v["plexes"][0]["state"], "ACTIVE");
    assert_eq!(v["plexes"][0]["layout"]["type"], "concat");
    assert_eq!(v["plexes"][0]["subdisks"][0]["disk"], "disk01");
    let back: ClusterConfig = serde_json::from_value(json).unwrap();
    assert_eq!(back, c);
}

#[test]
fn shrink_cuts_every_plex_and_read_policy_names_a_plex() {
    let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
    let c = create_vol(&c, "vol1", 100 << 20, VolumeLayout::Mirror { mirrors: 2 }).unwrap();
    let shrink = |c: &ClusterConfig, size: u64| {
        c.apply(&Change::VolShrink {
            dg: "dg1".into(),
            volume: "vol1".into(),
            new_size_bytes: size,
            force: false,
        })
    };
    let small = shrink(&c, 30 << 20).unwrap();
    let v = &small.disk_groups[0].volumes[0];
    assert_eq!(v.size_bytes, 30 << 20);
    assert!(v.plexes.iter().all(|p| p.capacity_bytes() == 30 << 20));
    assert!(shrink(&c, 200 << 20).is_err());
    assert!(shrink(&c, 0).is_err());
    let set = |plex: &str| Change::VolSetReadPolicy {
        dg: "dg1".into(),
        volume: "vol1".into(),
        policy: ReadPolicy::Prefer { plex: plex.into() },
    };
    let preferred = small.apply(&set("vol1-02")).unwrap();
    assert_eq!(
        preferred.disk_groups[0].volumes[0].read_policy,
        ReadPolicy::Prefer {
            plex: "vol1-02".into()
        }
    );
    assert_eq!(
        small.apply(&set("vol9-01")).unwrap_err().to_string(),
        "plex vol9-01 does not exist in volume vol1"
    );
}

#[test]
fn io_error_detach_change_respects_the_last_active_plex() {
    let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
    let c = create_vol(&c, "vol1", 10 << 20, VolumeLayout::Mirror { mirrors: 2 }).unwrap();
    assert_eq!(c.shared_disk_paths(), ["/dev/disk01", "/dev/disk02"]);
    let change = c.detach_change("vol1", "vol1-02").unwrap().unwrap();
    let c = c.apply(&change).unwrap();
    assert_eq!(c.detach_change("vol1", "vol1-02").unwrap(), None);
    assert!(matches!(
        c.detach_change("vol1", "vol1-01"),
        Err(ConfigError::LastActivePlex { .. })
    ));
    assert!(c.detach_change("vol1", "vol1-09").is_err());
}

#[test]
fn validate_refuses_extreme_values_without_panicking() {
    let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
    let c = create_vol(&c, "vol1", 1 << 20, VolumeLayout::Concat).unwrap();
    let base = c.disk_groups[0].clone();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
    let extremes = [0, 1, 4096, u64::MAX, u64::MAX - 4095, u64::MAX / 2 + 1];
    for _ in 0..2000 {
        let mut g = base.clone();
        let pick =
            |rng: &mut rand::rngs::StdRng| extremes[rand::Rng::gen_range(rng, 0..extremes.len())];
        let mut sd = g.volumes[0].plexes[0].subdisks[0].clone();
        sd.name = "disk01-09".into();
        sd.len_bytes = pick(&mut rng);
        sd.disk_offset_bytes = pick(&mut rng);
        sd.plex_offset_bytes = pick(&mut rng);
        g.volume_mut(0).plexes[0].subdisks.push(sd);
        g.volume_mut(0).size_bytes = pick(&mut rng);
        g.disks[1].public_offset_bytes = pick(&mut rng);
        g.disks[1].public_len_bytes = pick(&mut rng);
        g.disks[1].size_bytes = pick(&mut rng);
        if rand::Rng::gen_bool(&mut rng, 0.5) {
            g.volume_mut(0).plexes[0].layout = PlexLayout::Stripe {
                columns: rand::Rng::gen_range(&mut rng, 0..3),
                stripe_unit_bytes: pick(&mut rng),
            };
        }
        let _ = g.validate();
        let _ = g.volume_specs(1);
        let _ = g.volumes[0].plexes[0].capacity_bytes();
        let _ = crate::model::alloc::free_extents(&g);
    }
}

#[test]
fn every_change_round_trips_through_json() {
    let c = cluster(&[("disk01", GIB)]);
    let g = c.disk_groups[0].clone();
    let dg = || "dg1".to_string();
    let changes = vec![
        Change::DgCreate {
            dg: dg(),
            dg_id: "id".into(),
            shared: true,
            owner_id: "c".into(),
            disks: g.disks.clone(),
        },
        Change::DgAddDisk {
            dg: dg(),
            disk: disk("disk02", u64::MAX / 2),
        },
        Change::DgRmDisk {
            dg: dg(),
            disk: "disk01".into(),
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
            config: g.clone(),
            shared: false,
            owner_id: "h".into(),
        },
        Change::VolCreate {
            dg: dg(),
            volume: "v".into(),
            size_bytes: u64::MAX,
            layout: VolumeLayout::MirrorStripe {
                mirrors: 2,
                columns: 3,
                stripe_unit_bytes: DEFAULT_STRIPE_UNIT_BYTES,
            },
            log: Default::default(),
            disks: Vec::new(),
        },
        Change::VolGrow {
            dg: dg(),
            volume: "v".into(),
            new_size_bytes: 1,
        },
        Change::VolShrink {
            dg: dg(),
            volume: "v".into(),
            new_size_bytes: 1,
            force: false,
        },
        Change::VolSetReadPolicy {
            dg: dg(),
            volume: "v".into(),
            policy: ReadPolicy::Prefer {
                plex: "v-01".into(),
            },
        },
        Change::VolRm {
            dg: dg(),
            volume: "v".into(),
        },
        Change::PlexAdd {
            dg: dg(),
            volume: "v".into(),
            layout: PlexLayout::Stripe {
                columns: 2,
                stripe_unit_bytes: 4096,
            },
            disks: Vec::new(),
        },
        Change::PlexDetach {
            dg: dg(),
            plex: "v-01".into(),
        },
        Change::PlexAttach {
            dg: dg(),
            plex: "v-01".into(),
        },
        Change::PlexRm {
            dg: dg(),
            plex: "v-01".into(),
            force: true,
        },
        Change::SetPlexState {
            dg: dg(),
            plex: "v-01".into(),
            state: PlexState::Syncing,
        },
    ];
    for change in changes {
        let json = serde_json::to_string(&change).unwrap();
        let back: Change = serde_json::from_str(&json).unwrap();
        assert_eq!(back, change, "{json}");
        assert_eq!(change.dg_name(), "dg1");
    }
}

#[test]
fn validate_catches_overlapping_subdisks() {
    let c = cluster(&[("disk01", GIB)]);
    let c = create_vol(&c, "vol1", 10 << 20, VolumeLayout::Concat).unwrap();
    let c = create_vol(&c, "vol2", 10 << 20, VolumeLayout::Concat).unwrap();
    let mut g = c.disk_groups[0].clone();
    g.validate().unwrap();
    g.volume_mut(1).plexes[0].subdisks[0].disk_offset_bytes = 1 << 20;
    let err = g.validate().unwrap_err().to_string();
    assert!(err.contains("overlap"), "{err}");
}

fn export(iqn: &str) -> Export {
    Export {
        hosts: Vec::new(),
        protocol: ExportProtocol::Iscsi,
        iqn: iqn.into(),
        nodes: Vec::new(),
        portal: String::new(),
    }
}

#[test]
fn iscsi_names_are_checked() {
    for ok in [
        "iqn.2026-11.io.plexd:demo",
        "iqn.1994-05.com.redhat:ab12",
        "eui.02004567a425678d",
        "naa.52004567ba64678d",
    ] {
        assert!(validate_iqn(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "iqn.2026-11",
        "iqn.26-11.io.plexd:x",
        "IQN.2026-11.io.plexd:x",
        "iqn.2026-11.io.plexd:Upper",
        "iqn.2026-11.io.plexd:sp ace",
        "eui.123",
        "vol1",
    ] {
        assert!(validate_iqn(bad).is_err(), "{bad:?}");
    }
    assert!(validate_iqn(&format!("iqn.2026-11.io.plexd:{}", "a".repeat(300))).is_err());
}

#[test]
fn nvmf_exports_check_their_nqns_and_hosts_and_sit_beside_iscsi() {
    for ok in [
        "nqn.2026-11.io.plexd:test.dg1.vol1",
        "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001",
    ] {
        assert!(validate_nqn("NQN", ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "nqn.2026-11",
        "iqn.2026-11.io.plexd:x",
        "nqn.26-11.io.plexd:x",
        "nqn.2026-11.io.plexd:sp ace",
        DISCOVERY_NQN,
    ] {
        assert!(validate_nqn("NQN", bad).is_err(), "{bad:?}");
    }
    let c = test_support::cluster(&[("disk01", 1 << 30)])
        .apply(&Change::VolCreate {
            dg: "dg1".into(),
            volume: "v1".into(),
            size_bytes: 1 << 20,
            layout: VolumeLayout::Concat,
            log: Default::default(),
            disks: Vec::new(),
        })
        .unwrap()
        .apply(&Change::VolExport {
            dg: "dg1".into(),
            volume: "v1".into(),
            export: export("iqn.2026-11.io.plexd:one"),
        })
        .unwrap();
    let nvmf = |nqn: &str, hosts: &[&str], portal: &str| Change::VolExport {
        dg: "dg1".into(),
        volume: "v1".into(),
        export: Export {
            protocol: ExportProtocol::Nvmf,
            iqn: nqn.into(),
            nodes: Vec::new(),
            portal: portal.into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
        },
    };
    let e = c
        .apply(&nvmf("nqn.2026-11.io.plexd:one", &["bad host"], ""))
        .unwrap_err();
    assert!(e.to_string().contains("host NQN \"bad host\""), "{e}");
    let e = c
        .apply(&nvmf("nqn.2026-11.io.plexd:one", &[], "127.0.0.1:4420"))
        .unwrap_err();
    assert!(e.to_string().contains("nvmf_portal"), "{e}");
    let host = "nqn.2014-08.org.nvmexpress:uuid:1";
    let c = c
        .apply(&nvmf("nqn.2026-11.io.plexd:one", &[host], ""))
        .unwrap();
    let v = &c.disk_groups[0].volumes[0];
    assert_eq!(
        v.exports.iter().map(|e| e.protocol).collect::<Vec<_>>(),
        [ExportProtocol::Iscsi, ExportProtocol::Nvmf]
    );
    assert_eq!(v.exports[1].hosts, [host]);
    let e = c
        .apply(&nvmf("nqn.2026-11.io.plexd:two", &[], ""))
        .unwrap_err();
    assert!(e.to_string().contains("already exported over nvmf"), "{e}");
    let c = c
        .apply(&Change::VolUnexport {
            dg: "dg1".into(),
            volume: "v1".into(),
            protocol: ExportProtocol::Nvmf,
        })
        .unwrap();
    assert_eq!(c.disk_groups[0].volumes[0].exports.len(), 1, "iSCSI stays");
}

#[test]
fn an_export_is_unique_keeps_its_volume_and_ends_with_unexport() {
    let c = test_support::cluster(&[("disk01", 1 << 30)]);
    let vol = |c: &ClusterConfig, v: &str| {
        c.apply(&Change::VolCreate {
            dg: "dg1".into(),
            volume: v.into(),
            size_bytes: 1 << 20,
            layout: VolumeLayout::Concat,
            log: Default::default(),
            disks: Vec::new(),
        })
        .unwrap()
    };
    let exp = |v: &str, iqn: &str| Change::VolExport {
        dg: "dg1".into(),
        volume: v.into(),
        export: export(iqn),
    };
    let c = vol(&vol(&c, "v1"), "v2");
    let c = c.apply(&exp("v1", "iqn.2026-11.io.plexd:one")).unwrap();
    assert_eq!(c.disk_groups[0].volumes[0].exports.len(), 1);
    let e = c.apply(&exp("v1", "iqn.2026-11.io.plexd:two")).unwrap_err();
    assert!(e.to_string().contains("already exported"), "{e}");
    let e = c.apply(&exp("v2", "iqn.2026-11.io.plexd:one")).unwrap_err();
    assert!(e.to_string().contains("volume v1"), "{e}");
    let rm = Change::VolRm {
        dg: "dg1".into(),
        volume: "v1".into(),
    };
    let e = c.apply(&rm).unwrap_err();
    assert!(e.to_string().contains("unexport it first"), "{e}");
    let unexport = Change::VolUnexport {
        dg: "dg1".into(),
        volume: "v1".into(),
        protocol: ExportProtocol::Iscsi,
    };
    let c = c.apply(&unexport).unwrap();
    assert!(c.apply(&unexport).is_err(), "nothing left to unexport");
    assert!(c.apply(&rm).is_ok());
}

#[test]
fn an_exported_group_is_deported_or_destroyed_only_with_force() {
    let c = test_support::cluster(&[("disk01", 1 << 30)]);
    let c = create_vol(&c, "v1", 1 << 20, VolumeLayout::Concat).unwrap();
    let c = c
        .apply(&Change::VolExport {
            dg: "dg1".into(),
            volume: "v1".into(),
            export: export("iqn.2026-11.io.plexd:one"),
        })
        .unwrap();
    for force in [false, true] {
        let deport = Change::DgDeport {
            dg: "dg1".into(),
            force,
        };
        let destroy = Change::DgDestroy {
            dg: "dg1".into(),
            force,
        };
        if force {
            let after = c.apply(&deport).unwrap();
            let updates = deport.disk_updates(&c, &after);
            let DiskUpdate::WriteConfig(on_disk) = &updates[0] else {
                panic!("{updates:?}")
            };
            assert!(on_disk.volumes[0].exports.is_empty(), "exports end");
            assert!(c.apply(&destroy).is_ok());
        } else {
            for change in [deport, destroy] {
                let e = c.apply(&change).unwrap_err().to_string();
                assert!(
                    e.contains("volume v1 is exported")
                        && e.contains("plexctl unexport iscsi dg1 v1")
                        && e.contains("--force"),
                    "{e}"
                );
            }
        }
    }
}

#[test]
fn an_active_mirror_is_removed_only_with_force_and_one_column_stripes_are_refused() {
    let c = test_support::cluster(&[("disk01", 1 << 30), ("disk02", 1 << 30)]);
    let c = create_vol(&c, "v1", 1 << 20, VolumeLayout::Mirror { mirrors: 2 }).unwrap();
    let rm = |force| Change::PlexRm {
        dg: "dg1".into(),
        plex: "v1-02".into(),
        force,
    };
    let e = c.apply(&rm(false)).unwrap_err().to_string();
    assert!(e.contains("ACTIVE") && e.contains("--force"), "{e}");
    assert_eq!(
        c.apply(&rm(true)).unwrap().disk_groups[0].volumes[0]
            .plexes
            .len(),
        1
    );
    let one_column = VolumeLayout::Stripe {
        columns: 1,
        stripe_unit_bytes: DEFAULT_STRIPE_UNIT_BYTES,
    };
    let e = create_vol(&c, "v2", 1 << 20, one_column)
        .unwrap_err()
        .to_string();
    assert!(e.contains("at least 2 columns"), "{e}");
}

#[test]
fn describe_states_size_placement_and_rounding() {
    let c = test_support::cluster(&[("disk01", 1 << 30), ("disk02", 1 << 30)]);
    let change = Change::VolCreate {
        dg: "dg1".into(),
        volume: "v1".into(),
        size_bytes: 513,
        layout: VolumeLayout::Mirror { mirrors: 2 },
        log: Default::default(),
        disks: Vec::new(),
    };
    let after = c.apply(&change).unwrap();
    let text = describe(&change, after.disk_group("dg1"));
    assert!(
        text.contains("volume v1 created in disk group dg1: 1.0 KiB"),
        "{text}"
    );
    assert!(text.contains("513 bytes asked, rounded up"), "{text}");
    assert!(text.contains("v1-01 ACTIVE concat on disk01"), "{text}");
    assert!(text.contains("v1-02 ACTIVE concat on disk02"), "{text}");
    assert!(
        text.contains("; dirty region log on disk") && text.ends_with(" (512.0 KiB regions)"),
        "{text}"
    );
}

#[test]
fn validate_catches_bad_logs_and_resync_ranges() {
    let c = cluster(&[("disk01", GIB), ("disk02", GIB), ("disk03", GIB)]);
    let c = create_vol(&c, "vol1", 64 << 20, VolumeLayout::Mirror { mirrors: 2 }).unwrap();
    let c = create_vol(&c, "vol2", 64 << 20, VolumeLayout::Mirror { mirrors: 2 }).unwrap();
    let g = &c.disk_groups[0];
    g.validate().unwrap();
    let broken = |f: &dyn Fn(&mut DiskGroupConfig)| {
        let mut b = g.clone();
        f(&mut b);
        b.validate().unwrap_err().to_string()
    };
    // A log over a subdisk.
    let e = broken(&|b| {
        let sd = b.volumes[0].plexes[0].subdisks[0].clone();
        let log = b.volume_mut(0).log.as_mut().unwrap();
        log.copies[1].disk = sd.disk;
        log.copies[1].disk_offset_bytes = sd.disk_offset_bytes;
    });
    assert!(
        e.contains("dirty region log of volume vol1") && e.contains("overlap"),
        "{e}"
    );
    // Two logs with one id.
    let e = broken(&|b| {
        let id = b.volumes[0].log.as_ref().unwrap().log_id;
        b.volume_mut(1).log.as_mut().unwrap().log_id = id;
    });
    assert!(e.contains("log id"), "{e}");
    // Too short for its sections, sections too small for the volume, a bad region.
    let e = broken(&|b| b.volume_mut(0).log.as_mut().unwrap().len_bytes = 4096);
    assert!(e.contains("sections"), "{e}");
    let e = broken(&|b| b.volume_mut(0).log.as_mut().unwrap().section_bytes = 4096);
    assert!(e.contains("section"), "{e}");
    let e = broken(&|b| b.volume_mut(0).log.as_mut().unwrap().region_bytes = 3 << 16);
    assert!(e.contains("region size"), "{e}");
    let e = broken(&|b| b.volume_mut(0).log.as_mut().unwrap().copies[0].disk = "nodisk".into());
    assert!(e.contains("not in the group"), "{e}");
    // Two copies on one disk; more than MAX_LOG_COPIES; none.
    let e = broken(&|b| {
        let log = b.volume_mut(0).log.as_mut().unwrap();
        log.copies[1].disk = log.copies[0].disk.clone();
    });
    assert!(e.contains("two copies on disk"), "{e}");
    let e = broken(&|b| {
        let log = b.volume_mut(0).log.as_mut().unwrap();
        let extra = log.copies[1].clone();
        log.copies.push(extra);
    });
    assert!(e.contains("3 copies"), "{e}");
    let e = broken(&|b| b.volume_mut(0).log.as_mut().unwrap().copies.clear());
    assert!(e.contains("0 copies"), "{e}");
    // Ranges on an ACTIVE plex, out of order, beyond the volume.
    let e = broken(&|b| b.volume_mut(0).plexes[1].resync_ranges = vec![(0, 4096)]);
    assert!(e.contains("ACTIVE has ranges"), "{e}");
    for ranges in [
        vec![(8192, 4096), (0, 4096)],
        vec![(0, 8192), (4096, 4096)],
        vec![(0, 0)],
        vec![(64 << 20, 4096)],
    ] {
        let e = broken(&|b| {
            b.volume_mut(0).plexes[1].state = PlexState::Syncing;
            b.volume_mut(0).plexes[1].resync_ranges = ranges.clone();
        });
        assert!(e.contains("resync range"), "{ranges:?}: {e}");
    }
}

#[test]
fn a_plex_leaving_syncing_drops_its_ranges() {
    let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
    let c = create_vol(&c, "vol1", 64 << 20, VolumeLayout::Mirror { mirrors: 2 }).unwrap();
    let mut g = c.disk_groups[0].clone();
    g.volume_mut(0).plexes[1].state = PlexState::Syncing;
    g.volume_mut(0).plexes[1].resync_ranges = vec![(0, 1 << 20)];
    let c = ClusterConfig {
        disk_groups: vec![g],
        ..c
    };
    for (change, state) in [
        (
            Change::SetPlexState {
                dg: "dg1".into(),
                plex: "vol1-02".into(),
                state: PlexState::Active,
            },
            PlexState::Active,
        ),
        (
            Change::PlexDetach {
                dg: "dg1".into(),
                plex: "vol1-02".into(),
            },
            PlexState::Stale,
        ),
    ] {
        let after = c.apply(&change).unwrap();
        let p = &after.disk_groups[0].volumes[0].plexes[1];
        assert_eq!((p.state, p.resync_ranges.len()), (state, 0), "{change:?}");
    }
}

#[test]
fn coalesce_ranges_merges_clips_and_bounds() {
    // Overlapping and adjacent merge; empty and outside ranges go; the end is clipped.
    let r = coalesce_ranges(
        &[
            (8192, 4096),
            (0, 4096),
            (4096, 4096),
            (100, 0),
            (1 << 20, 10),
            (60_000, 8192),
        ],
        64 << 10,
        8,
    );
    assert_eq!(r, vec![(0, 12288), (60_000, (64 << 10) - 60_000)]);
    // Past the bound the closest neighbours merge first.
    let many: Vec<(u64, u64)> = (0..10).map(|i| (i * 10_000, 100)).collect();
    let r = coalesce_ranges(&[many.as_slice(), &[(95_000, 100)]].concat(), 1 << 20, 10);
    assert_eq!(r.len(), 10);
    assert_eq!(r[9], (90_000, 5_100));
    assert_eq!(coalesce_ranges(&many, 1 << 20, 1), vec![(0, 90_100)]);
}

#[test]
fn detach_policy_is_set_on_shared_groups_and_diverged_plexes_resync_their_ranges() {
    let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
    let c = create_vol(&c, "vol1", 10 << 20, VolumeLayout::Mirror { mirrors: 2 }).unwrap();
    assert_eq!(c.detach_policy_of("vol1"), DetachPolicy::Global);
    let set = |c: &ClusterConfig, policy| {
        c.apply(&Change::DgSetDetachPolicy {
            dg: "dg1".into(),
            policy,
        })
    };
    let c = set(&c, DetachPolicy::Local).unwrap();
    assert_eq!(c.detach_policy_of("vol1"), DetachPolicy::Local);
    // A private group is refused the local policy.
    let mut private = c.clone();
    private.disk_groups[0].shared = false;
    let err = set(&private, DetachPolicy::Local).unwrap_err();
    assert!(
        err.to_string().contains("needs a shared disk group"),
        "{err}"
    );
    assert_eq!(private.detach_policy_of("vol1"), DetachPolicy::Global);
    // A failed write's range: the ACTIVE plex becomes SYNCING over it.
    let ch = c
        .diverged_change("vol1", "vol1-02", &[(4096, 4096), (0, 4096)])
        .unwrap()
        .unwrap();
    let c = c.apply(&ch).unwrap();
    let p = &c.disk_groups[0].volumes[0].plexes[1];
    assert_eq!(
        (p.state, p.resync_ranges.clone()),
        (PlexState::Syncing, vec![(0, 8192)])
    );
    // The same range again: nothing to do; a new one is added.
    assert_eq!(
        c.diverged_change("vol1", "vol1-02", &[(0, 4096)]).unwrap(),
        None
    );
    let ch = c
        .diverged_change("vol1", "vol1-02", &[(1 << 20, 512)])
        .unwrap()
        .unwrap();
    let c = c.apply(&ch).unwrap();
    assert_eq!(
        c.disk_groups[0].volumes[0].plexes[1].resync_ranges,
        vec![(0, 8192), (1 << 20, 512)]
    );
    // The last ACTIVE plex is never made SYNCING.
    let ch = c
        .diverged_change("vol1", "vol1-01", &[(0, 512)])
        .unwrap()
        .unwrap();
    assert!(matches!(
        c.apply(&ch).unwrap_err(),
        ConfigError::LastActivePlex { .. }
    ));
    // A detached plex takes no writes: nothing diverged.
    let c = c
        .apply(&Change::PlexDetach {
            dg: "dg1".into(),
            plex: "vol1-02".into(),
        })
        .unwrap();
    assert_eq!(
        c.diverged_change("vol1", "vol1-02", &[(0, 512)]).unwrap(),
        None
    );
}

/// A group of `n` volumes of every layout on four disks, some with logs.
fn group_of_every_layout(n: usize) -> DiskGroupConfig {
    let mut c = cluster(&[
        ("disk01", GIB),
        ("disk02", GIB),
        ("disk03", GIB),
        ("disk04", GIB),
    ]);
    let layouts = [
        VolumeLayout::Concat,
        VolumeLayout::Mirror { mirrors: 2 },
        VolumeLayout::Stripe {
            columns: 2,
            stripe_unit_bytes: 64 << 10,
        },
        VolumeLayout::MirrorStripe {
            mirrors: 2,
            columns: 2,
            stripe_unit_bytes: 64 << 10,
        },
    ];
    for i in 0..n {
        let log = if i % 3 == 0 {
            LogPolicy::Off
        } else {
            LogPolicy::default()
        };
        c = c
            .apply(&Change::VolCreate {
                dg: "dg1".into(),
                volume: format!("vol{i}"),
                size_bytes: (1 + i as u64 % 5) << 20,
                layout: layouts[i % layouts.len()],
                log,
                disks: Vec::new(),
            })
            .unwrap();
    }
    c.disk_groups.remove(0)
}

/// One random edit of `g` (a copy sharing its volumes with the group before):
/// most break a rule that involves another volume, some break nothing.
fn random_edit(g: &mut DiskGroupConfig, rng: &mut rand::rngs::StdRng) {
    use rand::Rng;
    let n = g.volumes.len();
    let (i, j) = (rng.gen_range(0..n), rng.gen_range(0..n));
    let other = g.volumes[j].clone();
    let osd = other.plexes[0].subdisks[0].clone();
    match rng.gen_range(0..12) {
        // Names: of another volume, plex or subdisk, or a fresh one.
        0 => g.volume_mut(i).name = other.name.clone(),
        1 => g.volume_mut(i).plexes[0].name = other.plexes[0].name.clone(),
        2 => g.volume_mut(i).plexes[0].subdisks[0].name = osd.name.clone(),
        3 => g.volume_mut(i).plexes[0].subdisks[0].name = format!("fresh{}", rng.gen::<u16>()),
        // Extents: onto another subdisk, somewhere at random, or moved by a little.
        4 => {
            let sd = &mut g.volume_mut(i).plexes[0].subdisks[0];
            sd.disk = osd.disk.clone();
            sd.disk_offset_bytes = osd.disk_offset_bytes + 4096 * rng.gen_range(0..4);
        }
        5 => {
            let at = (1 << 20) + 4096 * rng.gen_range(0..(GIB / 4096));
            g.volume_mut(i).plexes[0].subdisks[0].disk_offset_bytes = at;
        }
        6 => {
            let sd = &mut g.volume_mut(i).plexes[0].subdisks[0];
            sd.disk_offset_bytes = sd.disk_offset_bytes.saturating_sub(4096);
        }
        // Logs: another volume's id or extent.
        7 => {
            let id = other.log.as_ref().map_or(7, |l| l.log_id);
            if let Some(l) = g.volume_mut(i).log.as_mut() {
                l.log_id = id;
            }
        }
        8 => {
            if let Some(l) = g.volume_mut(i).log.as_mut() {
                l.copies[0].disk = osd.disk.clone();
                l.copies[0].disk_offset_bytes = osd.disk_offset_bytes;
            }
        }
        // Volumes: the same one twice, a copy under a new name, one less, a size.
        9 => g.volumes.push(other),
        10 => {
            let mut copy = (*other).clone();
            copy.name = format!("copy{}", rng.gen::<u16>());
            if rng.gen_bool(0.5) {
                for (k, p) in copy.plexes.iter_mut().enumerate() {
                    p.name = format!("{}-{k:02}", copy.name);
                    for (m, sd) in p.subdisks.iter_mut().enumerate() {
                        sd.name = format!("{}-{k}-{m}", copy.name);
                    }
                }
            }
            g.volumes.push(std::sync::Arc::new(copy));
        }
        _ => {
            if rng.gen_bool(0.5) {
                g.volumes.remove(i);
            } else {
                let v = g.volume_mut(i);
                v.size_bytes = v.size_bytes.saturating_add(512);
            }
        }
    }
}

#[test]
fn validate_change_gives_the_verdict_of_validate_on_random_edits() {
    let base = group_of_every_layout(24);
    base.validate().unwrap();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(12);
    let (mut valid, mut invalid) = (0, 0);
    for round in 0..3000 {
        // Edits on top of edits that stayed valid: `before` is always a valid group.
        let mut before = base.clone();
        for _ in 0..rand::Rng::gen_range(&mut rng, 1..4) {
            let mut after = before.clone();
            for _ in 0..rand::Rng::gen_range(&mut rng, 1..3) {
                random_edit(&mut after, &mut rng);
            }
            let whole = after.validate();
            let change = after.validate_change(&before);
            assert_eq!(
                change.is_ok(),
                whole.is_ok(),
                "round {round}: validate_change {change:?}, validate {whole:?}"
            );
            if whole.is_err() {
                invalid += 1;
                break;
            }
            valid += 1;
            before = after;
        }
    }
    // Both verdicts were exercised, many times.
    assert!(
        valid > 500 && invalid > 500,
        "{valid} valid, {invalid} invalid"
    );
}

/// A random change of group `g` (round `i`): a grow, a shrink, a plex added,
/// detached, attached or removed, a volume removed or created.
fn random_change(g: &DiskGroupConfig, i: usize, rng: &mut rand::rngs::StdRng) -> Change {
    use rand::Rng;
    let v = &g.volumes[rng.gen_range(0..g.volumes.len())];
    let p = &v.plexes[rng.gen_range(0..v.plexes.len())];
    let dg = "dg1".to_string();
    match rng.gen_range(0..8) {
        0 => Change::VolGrow {
            dg,
            volume: v.name.clone(),
            new_size_bytes: v.size_bytes + 4096 * rng.gen_range(1..300),
        },
        1 => Change::VolShrink {
            dg,
            volume: v.name.clone(),
            new_size_bytes: v.size_bytes.saturating_sub(4096 * rng.gen_range(1..3)),
            force: false,
        },
        2 => Change::PlexAdd {
            dg,
            volume: v.name.clone(),
            layout: PlexLayout::Concat,
            disks: Vec::new(),
        },
        3 => Change::PlexDetach {
            dg,
            plex: p.name.clone(),
        },
        4 => Change::PlexAttach {
            dg,
            plex: p.name.clone(),
        },
        5 => Change::PlexRm {
            dg,
            plex: p.name.clone(),
            force: true,
        },
        6 if g.volumes.len() > 4 => Change::VolRm {
            dg,
            volume: v.name.clone(),
        },
        _ => Change::VolCreate {
            dg,
            volume: format!("new{i}"),
            size_bytes: 4096 * rng.gen_range(1..2000),
            layout: VolumeLayout::Mirror { mirrors: 2 },
            log: LogPolicy::default(),
            disks: Vec::new(),
        },
    }
}

#[test]
fn random_changes_keep_every_group_valid() {
    let mut c = ClusterConfig {
        disk_groups: vec![group_of_every_layout(12)],
        open_nodes: Vec::new(),
    };
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
    let mut applied = 0;
    for i in 0..600 {
        let change = random_change(&c.disk_groups[0], i, &mut rng);
        // apply_dg checks validate_change against validate in a debug build.
        if let Ok(next) = c.apply(&change) {
            next.disk_groups[0].validate().unwrap();
            applied += 1;
            c = next;
        }
    }
    assert!(applied > 300, "{applied} of 600 changes applied");
}

/// A group in the index's table ([`index::remember`]), made from `before`'s.
fn indexed(
    g: DiskGroupConfig,
    before: Option<&DiskGroupConfig>,
) -> std::sync::Arc<DiskGroupConfig> {
    let g = std::sync::Arc::new(g);
    index::remember(&g, before);
    assert!(index::cached(&g).is_some());
    g
}

#[test]
fn validate_change_through_the_group_index_gives_the_walks_verdict() {
    let base = group_of_every_layout(24);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(21);
    let (mut valid, mut invalid) = (0, 0);
    for round in 0..2000 {
        let mut before = indexed(base.clone(), None);
        for _ in 0..rand::Rng::gen_range(&mut rng, 1..4) {
            let mut after = (*before).clone();
            random_edit(&mut after, &mut rng);
            // `before` has an index; a copy of it (another allocation) has none,
            // so the check walks the volumes.
            let by_index = after.validate_change(&before);
            let by_walk = after.validate_change(&(*before).clone());
            let whole = after.validate();
            assert_eq!(
                (by_index.is_ok(), by_walk.is_ok()),
                (whole.is_ok(), whole.is_ok()),
                "round {round}: index {by_index:?}, walk {by_walk:?}, validate {whole:?}"
            );
            if whole.is_err() {
                invalid += 1;
                break;
            }
            valid += 1;
            before = indexed(after, Some(&before));
        }
    }
    assert!(
        valid > 300 && invalid > 300,
        "{valid} valid, {invalid} invalid"
    );
}

#[test]
fn changes_through_the_group_index_apply_as_without_it() {
    let mut g = indexed(group_of_every_layout(12), None);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(5);
    let (mut applied, mut grown) = (0, 0);
    for i in 0..600 {
        let change = random_change(&g, i, &mut rng);
        // The group in the table (grows find their free run in its index; the
        // debug build checks each against the whole free map, and each derived
        // index against one made from every volume), and a copy without an index.
        let with_index = apply_dg(&g, &change);
        let without = apply_dg(&(*g).clone(), &change);
        assert_eq!(with_index, without, "change {i}: {change:?}");
        if let Ok(next) = with_index {
            grown += usize::from(matches!(change, Change::VolGrow { .. }));
            applied += 1;
            g = indexed(next, Some(&g));
        }
    }
    assert!(
        applied > 300 && grown > 50,
        "{applied} applied, {grown} grows"
    );
}

/// `dg fail-disk` of `disk` in `dg1`.
fn fail_disk(disk: &str, force: bool) -> Change {
    Change::DgFailDisk {
        dg: "dg1".into(),
        disk: disk.into(),
        force,
    }
}

/// The disks a plex's subdisks are on.
fn plex_disk(p: &Plex) -> &str {
    &p.subdisks[0].disk
}

#[test]
fn a_failed_disk_stales_its_plexes_moves_its_log_copy_and_takes_nothing_new() {
    let c = cluster(&[("disk01", GIB), ("disk02", GIB), ("disk03", GIB)]);
    let c = with_mirror(&c, "mir", 64 << 20, LogPolicy::default());
    let before = c.disk_groups[0].volume("mir").unwrap().clone();
    let gone = plex_disk(&before.plexes[0]).to_string();
    let log = before.log.clone().expect("a mirror has a log");
    assert!(log.copies.iter().any(|l| l.disk == gone), "{log:?}");
    let c = c.apply(&fail_disk(&gone, false)).unwrap();
    let g = &c.disk_groups[0];
    assert!(g.disk(&gone).unwrap().failed);
    let mir = g.volume("mir").unwrap();
    assert_eq!(mir.plexes[0].state, PlexState::Stale);
    assert_eq!(mir.plexes[1].state, PlexState::Active);
    let moved = mir.log.as_ref().expect("the log stays");
    assert!(moved.copies.iter().all(|l| l.disk != gone), "{moved:?}");
    assert_eq!(moved.copies.len(), log.copies.len());
    assert_ne!(moved.log_id, log.log_id, "a moved log gets a new id");
    // Its configuration goes to the group's disks; nothing is released.
    let updates = fail_disk(&gone, false).disk_updates(&ClusterConfig::default(), &c);
    assert!(matches!(&updates[..], [DiskUpdate::WriteConfig(_)]));
    // New space never comes from it.
    let c = create_vol(&c, "cat", 512 << 20, VolumeLayout::Concat).unwrap();
    let c = with_mirror(&c, "mir2", 64 << 20, LogPolicy::Off);
    for v in &c.disk_groups[0].volumes[1..] {
        assert!(
            !v.uses_disk(&gone),
            "{} uses the failed disk: {v:?}",
            v.name
        );
    }
    // Its plexes cannot be attached; it cannot be failed twice.
    let stale = mir.plexes[0].name.clone();
    let e = c
        .apply(&Change::PlexAttach {
            dg: "dg1".into(),
            plex: stale.clone(),
        })
        .unwrap_err();
    assert!(e.to_string().contains("recorded failed"), "{e}");
    let e = c.apply(&fail_disk(&gone, false)).unwrap_err();
    assert!(matches!(e, ConfigError::Exists(_)), "{e}");
    // A plex on it is never made ACTIVE again (the model refuses the state).
    let e = c
        .apply(&Change::SetPlexState {
            dg: "dg1".into(),
            plex: stale.clone(),
            state: PlexState::Active,
        })
        .unwrap_err();
    assert!(e.to_string().contains("recorded failed"), "{e}");
    // Taken out: its plex first, then the disk.
    let c = c
        .apply(&Change::PlexRm {
            dg: "dg1".into(),
            plex: stale,
            force: false,
        })
        .unwrap();
    let c = c
        .apply(&Change::DgRmDisk {
            dg: "dg1".into(),
            disk: gone.clone(),
        })
        .unwrap();
    assert!(c.disk_groups[0].disk(&gone).is_none());
}

#[test]
fn failing_a_disk_refuses_to_lose_a_volume_unless_forced_and_never_its_last_working_one() {
    let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
    let c = create_vol(&c, "cat", 64 << 20, VolumeLayout::Concat).unwrap();
    let on = plex_disk(&c.disk_groups[0].volumes[0].plexes[0]).to_string();
    let e = c.apply(&fail_disk(&on, false)).unwrap_err();
    assert!(
        matches!(&e, ConfigError::InUse(m) if m.contains("the only ACTIVE plex of volume(s) cat")),
        "{e}"
    );
    let forced = c.apply(&fail_disk(&on, true)).unwrap();
    let cat = forced.disk_groups[0].volume("cat").unwrap();
    assert_eq!(cat.active_plexes(), 0);
    assert!(
        describe(&fail_disk(&on, true), Some(&forced.disk_groups[0]))
            .contains("volume(s) cat have no ACTIVE plex")
    );
    let other = if on == "disk01" { "disk02" } else { "disk01" };
    let e = forced.apply(&fail_disk(other, true)).unwrap_err();
    assert!(e.to_string().contains("the last working disk"), "{e}");
}

#[test]
fn failing_the_source_of_a_copy_makes_a_ranged_copy_active_not_a_whole_one() {
    let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
    let c = with_mirror(&c, "mir", 64 << 20, LogPolicy::Off);
    let v = c.disk_groups[0].volume("mir").unwrap().clone();
    let (source, copy) = (&v.plexes[0], &v.plexes[1]);
    let gone = plex_disk(source).to_string();
    // A copy of some ranges (writes that failed on it, or a crash's dirty
    // regions): outside them it holds the volume's data.
    let ranged = c
        .apply(&Change::PlexDiverged {
            dg: "dg1".into(),
            plex: copy.name.clone(),
            ranges: vec![(0, 1 << 20)],
        })
        .unwrap();
    let after = ranged.apply(&fail_disk(&gone, false)).unwrap();
    let mir = after.disk_groups[0].volume("mir").unwrap();
    assert_eq!(
        (mir.plexes[1].state, mir.plexes[1].resync_ranges.len()),
        (PlexState::Active, 0)
    );
    // A whole copy (an attach) holds nothing yet: the volume would be lost.
    let detached = c
        .apply(&Change::PlexDetach {
            dg: "dg1".into(),
            plex: copy.name.clone(),
        })
        .unwrap();
    let whole = detached
        .apply(&Change::PlexAttach {
            dg: "dg1".into(),
            plex: copy.name.clone(),
        })
        .unwrap();
    let e = whole.apply(&fail_disk(&gone, false)).unwrap_err();
    assert!(e.to_string().contains("volume(s) mir"), "{e}");
    let forced = whole.apply(&fail_disk(&gone, true)).unwrap();
    assert_eq!(
        forced.disk_groups[0].volume("mir").unwrap().active_plexes(),
        0
    );
}

#[test]
fn a_log_copy_with_nowhere_to_go_is_dropped_with_the_failed_disk() {
    let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
    let c = with_mirror(&c, "mir", 64 << 20, LogPolicy::default());
    let log = c.disk_groups[0].volume("mir").unwrap().log.clone().unwrap();
    assert_eq!(log.copies.len(), 2, "{log:?}");
    let c = c.apply(&fail_disk("disk01", false)).unwrap();
    let kept = c.disk_groups[0].volume("mir").unwrap().log.clone().unwrap();
    assert_eq!(
        kept.copies
            .iter()
            .map(|l| l.disk.as_str())
            .collect::<Vec<_>>(),
        ["disk02"]
    );
    assert_ne!(kept.log_id, log.log_id);
}

fn reattach_disk(c: &ClusterConfig, disk: &str) -> Change {
    Change::DgReattachDisk {
        dg: "dg1".into(),
        disk: c.disk_groups[0].disk(disk).unwrap().clone(),
    }
}

#[test]
fn a_reattached_disk_brings_back_a_lost_volumes_plex_active_copies_the_others_and_leaves_older_stale_ones(
) {
    let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
    let c = create_vol(&c, "cat", 64 << 20, VolumeLayout::Concat).unwrap();
    let on = plex_disk(&c.disk_groups[0].volume("cat").unwrap().plexes[0]).to_string();
    let c = with_mirror(&c, "mir", 64 << 20, LogPolicy::Off);
    let c = with_mirror(&c, "old", 64 << 20, LogPolicy::Off);
    let plex_on = |c: &ClusterConfig, v: &str| {
        let v = c.disk_groups[0].volume(v).unwrap();
        v.plexes
            .iter()
            .find(|p| plex_disk(p) == on)
            .unwrap()
            .name
            .clone()
    };
    let (mir_on, old_on) = (plex_on(&c, "mir"), plex_on(&c, "old"));
    // A plex detached before the failure: the reattach leaves it to the operator.
    let c = c
        .apply(&Change::PlexDetach {
            dg: "dg1".into(),
            plex: old_on.clone(),
        })
        .unwrap();
    let e = c.apply(&reattach_disk(&c, &on)).unwrap_err();
    assert!(e.to_string().contains("is not recorded failed"), "{e}");
    let failed = c.apply(&fail_disk(&on, true)).unwrap();
    let d = failed.disk_groups[0].disk(&on).unwrap();
    let cat_on = plex_on(&c, "cat");
    assert_eq!(
        d.staled,
        vec![
            StaledPlex {
                plex: cat_on.clone(),
                last_active: true
            },
            StaledPlex {
                plex: mir_on.clone(),
                last_active: false
            },
        ]
    );
    // The record is the disk's own: another id is refused.
    let mut other = reattach_disk(&failed, &on);
    if let Change::DgReattachDisk { disk, .. } = &mut other {
        disk.id = "id-elsewhere".into();
    }
    let e = failed.apply(&other).unwrap_err();
    assert!(e.to_string().contains("has id id-"), "{e}");
    let back = failed.apply(&reattach_disk(&failed, &on)).unwrap();
    let g = &back.disk_groups[0];
    let d = g.disk(&on).unwrap();
    assert!(!d.failed && d.staled.is_empty(), "{d:?}");
    let state = |v: &str, p: &str| {
        let p = g.volume(v).unwrap().plex(p).unwrap();
        (p.state, p.resync_ranges.len())
    };
    assert_eq!(state("cat", &cat_on), (PlexState::Active, 0));
    assert_eq!(
        state("mir", &mir_on),
        (PlexState::Syncing, 0),
        "a whole copy"
    );
    assert_eq!(state("old", &old_on), (PlexState::Stale, 0));
    let line = describe(&reattach_disk(&failed, &on), Some(g));
    assert!(
        line.contains(&format!("plex(es) {cat_on} ACTIVE")),
        "{line}"
    );
    assert!(
        line.contains(&format!("plex(es) {mir_on} SYNCING")),
        "{line}"
    );
    assert!(line.contains(&format!("plex(es) {old_on} STALE")), "{line}");
    // Nothing left of the failure: it can be failed again.
    back.apply(&fail_disk(&on, true)).unwrap();
}

#[test]
fn a_plex_whose_volume_went_on_without_it_is_never_revived_active() {
    let c = cluster(&[("disk01", GIB), ("disk02", GIB), ("disk03", GIB)]);
    let c = with_mirror(&c, "mir", 64 << 20, LogPolicy::Off);
    let v = c.disk_groups[0].volume("mir").unwrap().clone();
    let (first, second) = (plex_disk(&v.plexes[0]), plex_disk(&v.plexes[1]));
    // The first disk fails while the other plex goes on taking writes; then the
    // second fails too, forced: the volume has no ACTIVE plex.
    let c = c.apply(&fail_disk(first, false)).unwrap();
    let c = c.apply(&fail_disk(second, true)).unwrap();
    assert_eq!(c.disk_groups[0].volume("mir").unwrap().active_plexes(), 0);
    // The first disk back: its plex missed the writes the second took, and there
    // is no source to copy from: it stays STALE.
    let c = c.apply(&reattach_disk(&c, first)).unwrap();
    let mir = c.disk_groups[0].volume("mir").unwrap();
    assert_eq!(
        (mir.plexes[0].state, mir.plexes[1].state),
        (PlexState::Stale, PlexState::Stale)
    );
    // The second back: the last ACTIVE plex is ACTIVE again.
    let c = c.apply(&reattach_disk(&c, second)).unwrap();
    let mir = c.disk_groups[0].volume("mir").unwrap();
    assert_eq!(
        (mir.plexes[0].state, mir.plexes[1].state),
        (PlexState::Stale, PlexState::Active)
    );
}

#[test]
fn a_plex_across_two_failed_disks_comes_back_with_the_second() {
    let c = cluster(&[
        ("disk01", 64 << 20),
        ("disk02", 64 << 20),
        ("disk03", 64 << 20),
    ]);
    let c = create_vol(&c, "wide", 100 << 20, VolumeLayout::Concat).unwrap();
    let plex = c.disk_groups[0].volume("wide").unwrap().plexes[0].clone();
    let disks: Vec<String> = plex.disks().into_iter().map(str::to_string).collect();
    assert_eq!(disks.len(), 2, "{plex:?}");
    let c = c.apply(&fail_disk(&disks[0], true)).unwrap();
    let c = c.apply(&fail_disk(&disks[1], true)).unwrap();
    // The first disk back: the plex still has a subdisk on the second, failed.
    let c = c.apply(&reattach_disk(&c, &disks[0])).unwrap();
    let g = &c.disk_groups[0];
    assert_eq!(g.volume("wide").unwrap().plexes[0].state, PlexState::Stale);
    assert_eq!(
        g.disk(&disks[1]).unwrap().staled,
        vec![StaledPlex {
            plex: plex.name.clone(),
            last_active: true
        }],
        "the plex waits for the second disk"
    );
    let c = c.apply(&reattach_disk(&c, &disks[1])).unwrap();
    assert_eq!(
        c.disk_groups[0].volume("wide").unwrap().plexes[0].state,
        PlexState::Active
    );
}

#[test]
fn a_degraded_mirror_grows_off_its_failed_disk_and_a_lost_volume_does_not_grow() {
    let grow = |volume: &str| Change::VolGrow {
        dg: "dg1".into(),
        volume: volume.into(),
        new_size_bytes: 128 << 20,
    };
    // Two disks: the STALE plex could only grow on the failed one.
    let c = cluster(&[("disk01", GIB), ("disk02", GIB)]);
    let c = create_vol(&c, "cat", 64 << 20, VolumeLayout::Concat).unwrap();
    let on = plex_disk(&c.disk_groups[0].volume("cat").unwrap().plexes[0]).to_string();
    let c = with_mirror(&c, "mir", 64 << 20, LogPolicy::Off);
    let c = c.apply(&fail_disk(&on, true)).unwrap();
    let e = c.apply(&grow("mir")).unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "its disk {on} is recorded failed: `plex rm` the plex"
        )),
        "{e}"
    );
    // A volume with no ACTIVE plex keeps its size.
    for change in [
        grow("cat"),
        Change::VolShrink {
            dg: "dg1".into(),
            volume: "cat".into(),
            new_size_bytes: 32 << 20,
            force: true,
        },
    ] {
        let e = c.apply(&change).unwrap_err();
        assert!(e.to_string().contains("has no ACTIVE plex"), "{e}");
    }
    // Three disks: the STALE plex's new part goes on the third, never on the
    // failed disk (whose free space follows the plex's subdisk there).
    let c = cluster(&[("disk01", GIB), ("disk02", GIB), ("disk03", GIB)]);
    let c = with_mirror(&c, "mir", 64 << 20, LogPolicy::Off);
    let on = plex_disk(&c.disk_groups[0].volume("mir").unwrap().plexes[0]).to_string();
    let c = c.apply(&fail_disk(&on, false)).unwrap();
    let grown = c.apply(&grow("mir")).unwrap();
    let g = &grown.disk_groups[0];
    let mir = g.volume("mir").unwrap();
    let before: u64 = c.disk_groups[0].volume("mir").unwrap().plexes[0]
        .subdisks
        .iter()
        .filter(|sd| sd.disk == on)
        .map(|sd| sd.len_bytes)
        .sum();
    let after: u64 = mir.plexes[0]
        .subdisks
        .iter()
        .filter(|sd| sd.disk == on)
        .map(|sd| sd.len_bytes)
        .sum();
    assert_eq!(after, before, "nothing new on the failed disk: {mir:?}");
    let space = new_data_space(&grow("mir"), Some(&c.disk_groups[0]), g).expect("new space");
    assert!(space.extents.iter().all(|e| e.disk != on), "{space:?}");
}

fn evacuate(disk: &str) -> Change {
    Change::DgEvacuate {
        dg: "dg1".into(),
        disk: disk.into(),
        to: Vec::new(),
    }
}

fn set_active(c: &ClusterConfig, plex: &str) -> ClusterConfig {
    c.apply(&Change::SetPlexState {
        dg: "dg1".into(),
        plex: plex.into(),
        state: PlexState::Active,
    })
    .unwrap()
}

/// The plex of `volume` that replaces `old`, if any.
fn replacement<'a>(c: &'a ClusterConfig, volume: &str, old: &str) -> Option<&'a Plex> {
    c.disk_groups[0]
        .volume(volume)?
        .plexes
        .iter()
        .find(|p| p.replaces.as_deref() == Some(old))
}

/// `dg evacuate` moves a plex (as vxevac moves its subdisks): a read policy that
/// preferred it prefers its replacement once that took its place; one preferring a
/// plex that stays is left as it is.
#[test]
fn a_preferred_plex_moved_by_evacuate_stays_preferred_in_its_replacement() {
    let c = cluster(&[("d1", GIB), ("d2", GIB), ("d3", GIB), ("d4", GIB)]);
    let c = with_mirror(&c, "mir", 64 << 20, Default::default());
    let plexes: Vec<(String, String)> = c.disk_groups[0]
        .volume("mir")
        .unwrap()
        .plexes
        .iter()
        .map(|p| (p.name.clone(), plex_disk(p).to_string()))
        .collect();
    let prefer = |c: &ClusterConfig, plex: &str| {
        c.apply(&Change::VolSetReadPolicy {
            dg: "dg1".into(),
            volume: "mir".into(),
            policy: ReadPolicy::Prefer { plex: plex.into() },
        })
        .unwrap()
    };
    let policy = |c: &ClusterConfig| c.disk_groups[0].volume("mir").unwrap().read_policy.clone();
    let (moving, on) = &plexes[0];
    let (staying, _) = &plexes[1];
    for preferred in [moving, staying] {
        let moved = prefer(&c, preferred).apply(&evacuate(on)).unwrap();
        let new = replacement(&moved, "mir", moving).unwrap().name.clone();
        assert_eq!(
            policy(&moved),
            ReadPolicy::Prefer {
                plex: preferred.clone()
            },
            "while the copy runs"
        );
        let done = set_active(&moved, &new);
        let want = if preferred == moving { &new } else { staying };
        assert_eq!(policy(&done), ReadPolicy::Prefer { plex: want.clone() });
    }
}

#[test]
fn evacuating_a_disk_moves_each_plex_on_it_to_a_replacement_that_removes_it_once_active() {
    let c = cluster(&[("d1", GIB), ("d2", GIB), ("d3", GIB), ("d4", GIB)]);
    let c = create_vol(&c, "cat", 64 << 20, VolumeLayout::Concat).unwrap();
    let on = plex_disk(&c.disk_groups[0].volume("cat").unwrap().plexes[0]).to_string();
    let c = with_mirror(&c, "mir", 64 << 20, Default::default());
    let mir_on: Vec<String> = c.disk_groups[0]
        .volume("mir")
        .unwrap()
        .plexes
        .iter()
        .filter(|p| plex_disk(p) == on)
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(mir_on.len(), 1, "the mirror has a plex on {on} too");
    let moved = c.apply(&evacuate(&on)).unwrap();
    let g = &moved.disk_groups[0];
    for (volume, old) in [("cat", "cat-01".to_string()), ("mir", mir_on[0].clone())] {
        let new = replacement(&moved, volume, &old).expect("a replacement");
        assert_eq!(new.state, PlexState::Syncing, "{new:?}");
        assert!(new.resync_ranges.is_empty(), "a whole copy: {new:?}");
        let others: BTreeSet<&str> = g
            .volume(volume)
            .unwrap()
            .plexes
            .iter()
            .filter(|p| p.name != new.name)
            .flat_map(|p| p.subdisks.iter().map(|sd| sd.disk.as_str()))
            .collect();
        assert!(
            new.subdisks
                .iter()
                .all(|sd| sd.disk != on && !others.contains(sd.disk.as_str())),
            "{new:?} shares a disk with {others:?}"
        );
    }
    let text = describe(&evacuate(&on), Some(g));
    assert!(
        text.starts_with(&format!(
            "disk {on} of disk group dg1: moving plex(es) cat-01 -> cat-02 (on "
        )),
        "{text}"
    );
    // Given again, it leaves the moves under way as they are.
    let e = moved.apply(&evacuate(&on)).unwrap_err();
    assert!(e.to_string().contains("are being moved already"), "{e}");
    // The copies end: each old plex goes in the change that makes its replacement
    // ACTIVE; the mirror keeps two plexes and its log.
    let cat_new = replacement(&moved, "cat", "cat-01").unwrap().name.clone();
    let mir_new = replacement(&moved, "mir", &mir_on[0]).unwrap().name.clone();
    let done = set_active(&set_active(&moved, &cat_new), &mir_new);
    let g = &done.disk_groups[0];
    let cat = g.volume("cat").unwrap();
    assert_eq!(
        cat.plexes
            .iter()
            .map(|p| (p.name.as_str(), p.state, p.replaces.is_some()))
            .collect::<Vec<_>>(),
        [(cat_new.as_str(), PlexState::Active, false)]
    );
    let mir = g.volume("mir").unwrap();
    assert_eq!(mir.plexes.len(), 2, "{mir:?}");
    assert!(mir
        .plexes
        .iter()
        .all(|p| p.state == PlexState::Active && p.replaces.is_none()));
    assert!(mir.log.is_some());
    assert!(g
        .volumes
        .iter()
        .flat_map(|v| &v.plexes)
        .all(|p| plex_disk(p) != on));
    let e = done.apply(&evacuate(&on)).unwrap_err();
    assert!(
        e.to_string().contains("holds no plex: nothing to evacuate"),
        "{e}"
    );
    // Empty now: the disk leaves the group (its log copies move).
    done.apply(&Change::DgRmDisk {
        dg: "dg1".into(),
        disk: on.clone(),
    })
    .unwrap();
}

#[test]
fn an_evacuation_needs_room_and_a_source_and_a_move_ends_with_its_old_or_new_plex() {
    // A mirror over both disks of a group of two has nowhere to go.
    let c = with_mirror(
        &cluster(&[("d1", GIB), ("d2", GIB)]),
        "mir",
        64 << 20,
        Default::default(),
    );
    let e = c.apply(&evacuate("d1")).unwrap_err();
    assert!(
        matches!(e, ConfigError::NoSpace(_))
            && e.to_string()
                .contains("mir-01 cannot move off disk d1 of disk group dg1"),
        "{e}"
    );
    let e = c.apply(&evacuate("d9")).unwrap_err();
    assert!(matches!(e, ConfigError::NotFound { .. }), "{e}");
    // Three disks: the move of mir-01 from d1 to d3.
    let c = with_mirror(
        &cluster(&[("d1", GIB), ("d2", GIB), ("d3", GIB)]),
        "mir",
        64 << 20,
        Default::default(),
    );
    let old = c.disk_groups[0]
        .volume("mir")
        .unwrap()
        .plexes
        .iter()
        .find(|p| plex_disk(p) == "d1")
        .unwrap()
        .name
        .clone();
    let moving = c.apply(&evacuate("d1")).unwrap();
    let new = replacement(&moving, "mir", &old).unwrap().name.clone();
    // Detached, the replacement keeps its move; attached again and copied, it
    // still ends it.
    let detached = moving
        .apply(&Change::PlexDetach {
            dg: "dg1".into(),
            plex: new.clone(),
        })
        .unwrap();
    assert_eq!(
        replacement(&detached, "mir", &old).map(|p| p.state),
        Some(PlexState::Stale)
    );
    let again = detached
        .apply(&Change::PlexAttach {
            dg: "dg1".into(),
            plex: new.clone(),
        })
        .unwrap();
    let done = set_active(&again, &new);
    let names: Vec<&str> = done.disk_groups[0]
        .volume("mir")
        .unwrap()
        .plexes
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert!(
        !names.contains(&old.as_str()) && names.contains(&new.as_str()),
        "{names:?}"
    );
    // The old plex removed first (plex rm): the move is over, the new plex stays.
    let removed = moving
        .apply(&Change::PlexRm {
            dg: "dg1".into(),
            plex: old.clone(),
            force: true,
        })
        .unwrap();
    assert!(replacement(&removed, "mir", &old).is_none());
    let done = set_active(&removed, &new);
    assert_eq!(done.disk_groups[0].volume("mir").unwrap().plexes.len(), 2);
    // A plex that replaces itself, or is ACTIVE and still replacing, is refused.
    for (state, replaces) in [
        (PlexState::Syncing, new.clone()),
        (PlexState::Active, old.clone()),
    ] {
        let mut bad = moving.disk_groups[0].clone();
        let v = bad.volume_mut(0);
        let p = v.plexes.iter_mut().find(|p| p.name == new).unwrap();
        p.state = state;
        p.replaces = Some(replaces);
        assert!(bad.validate().is_err(), "{state:?}");
    }
}

#[test]
fn evacuating_a_failed_disk_rebuilds_its_stale_plexes_elsewhere() {
    let c = with_mirror(
        &cluster(&[("d1", GIB), ("d2", GIB), ("d3", GIB)]),
        "mir",
        64 << 20,
        Default::default(),
    );
    let on = plex_disk(&c.disk_groups[0].volume("mir").unwrap().plexes[0]).to_string();
    let old = c.disk_groups[0].volume("mir").unwrap().plexes[0]
        .name
        .clone();
    let failed = c.apply(&fail_disk(&on, false)).unwrap();
    let moving = failed.apply(&evacuate(&on)).unwrap();
    let new = replacement(&moving, "mir", &old).expect("a replacement");
    assert_eq!(new.state, PlexState::Syncing);
    assert!(new
        .subdisks
        .iter()
        .all(|sd| !moving.disk_groups[0].disk_failed(&sd.disk)));
    let done = set_active(&moving, &new.name.clone());
    let mir = done.disk_groups[0].volume("mir").unwrap();
    assert!(
        mir.plexes.len() == 2
            && mir
                .plexes
                .iter()
                .all(|p| p.state == PlexState::Active && plex_disk(p) != on),
        "{mir:?}"
    );
}

/// The disks `plex`'s subdisks are on.
fn disks_of(p: &Plex) -> BTreeSet<String> {
    p.subdisks.iter().map(|sd| sd.disk.clone()).collect()
}

#[test]
fn plex_add_and_evacuate_place_new_plexes_only_on_the_disks_named() {
    let c = cluster(&[("d1", GIB), ("d2", GIB), ("d3", GIB), ("d4", GIB)]);
    let c = create_vol(&c, "cat", 64 << 20, VolumeLayout::Concat).unwrap();
    let on = plex_disk(&c.disk_groups[0].volume("cat").unwrap().plexes[0]).to_string();
    // Without --disks the allocator takes another disk than d4; with d4 named, the
    // new plex goes there.
    let add = |disks: &[&str]| Change::PlexAdd {
        dg: "dg1".into(),
        volume: "cat".into(),
        layout: PlexLayout::Concat,
        disks: disks.iter().map(|d| d.to_string()).collect(),
    };
    let anywhere = c.apply(&add(&[])).unwrap();
    let new = &anywhere.disk_groups[0].volume("cat").unwrap().plexes[1];
    assert!(!disks_of(new).contains("d4"), "{new:?}");
    let added = c.apply(&add(&["d4"])).unwrap();
    let new = &added.disk_groups[0].volume("cat").unwrap().plexes[1];
    assert_eq!(disks_of(new), BTreeSet::from(["d4".to_string()]), "{new:?}");
    // The disks named are the group's, working, each once; the volume's own disk
    // gives no room for a second plex.
    for (disks, want) in [
        (vec!["d9"], "disk d9 does not exist in disk group dg1"),
        (vec!["d4", "d4"], "disk d4 of disk group dg1 is named twice"),
        (
            vec![on.as_str()],
            "not enough free space for another plex of 64.0 MiB on distinct disks among the disks named",
        ),
    ] {
        let e = c.apply(&add(&disks)).unwrap_err().to_string();
        assert!(e.contains(want), "{disks:?}: {e}");
    }
    let failed = c
        .apply(&Change::DgFailDisk {
            dg: "dg1".into(),
            disk: "d3".into(),
            force: false,
        })
        .unwrap();
    let e = failed.apply(&add(&["d3"])).unwrap_err().to_string();
    assert!(
        e.contains("disk d3 of disk group dg1 is recorded failed"),
        "{e}"
    );
    // dg evacuate --to: the replacement goes to a disk named, never to the source.
    let to = |disks: &[&str]| Change::DgEvacuate {
        dg: "dg1".into(),
        disk: on.clone(),
        to: disks.iter().map(|d| d.to_string()).collect(),
    };
    let moved = c.apply(&to(&["d3"])).unwrap();
    let new = replacement(&moved, "cat", "cat-01").expect("a replacement");
    assert_eq!(disks_of(new), BTreeSet::from(["d3".to_string()]), "{new:?}");
    let e = c.apply(&to(&[on.as_str()])).unwrap_err().to_string();
    assert!(e.contains("--to names the disk being evacuated"), "{e}");
}

#[test]
fn vol_create_places_its_plexes_only_on_the_disks_named() {
    let c = cluster(&[("d1", GIB), ("d2", GIB), ("d3", GIB), ("d4", GIB)]);
    let create = |disks: &[&str]| Change::VolCreate {
        dg: "dg1".into(),
        volume: "m".into(),
        size_bytes: 64 << 20,
        layout: VolumeLayout::Mirror { mirrors: 2 },
        log: LogPolicy::Off,
        disks: disks.iter().map(|d| d.to_string()).collect(),
    };
    // Without --disks the best fits, here the first equally free disks (d1, d2);
    // with d2 and d4 named, one plex on each.
    let any = c.apply(&create(&[])).unwrap();
    let on = |c: &ClusterConfig| -> Vec<BTreeSet<String>> {
        c.disk_groups[0]
            .volume("m")
            .unwrap()
            .plexes
            .iter()
            .map(disks_of)
            .collect()
    };
    assert!(on(&any).iter().all(|d| !d.contains("d4")), "{:?}", on(&any));
    let placed = c.apply(&create(&["d2", "d4"])).unwrap();
    let mut got = on(&placed);
    got.sort();
    assert_eq!(
        got,
        vec![
            BTreeSet::from(["d2".to_string()]),
            BTreeSet::from(["d4".to_string()])
        ]
    );
    for (disks, want) in [
        (vec!["d4"], "need 2 distinct disks, 1 named (d4)"),
        (vec!["d1", "d9"], "disk d9 does not exist in disk group dg1"),
    ] {
        let e = c.apply(&create(&disks)).unwrap_err().to_string();
        assert!(e.contains(want), "{disks:?}: {e}");
    }
    // Its dirty region log too: without --disks the copies prefer disks the plexes
    // do not use (d3, d4); with d2 and d4 named they stay on those.
    let logged = |disks: &[&str]| Change::VolCreate {
        dg: "dg1".into(),
        volume: "m".into(),
        size_bytes: 64 << 20,
        layout: VolumeLayout::Mirror { mirrors: 2 },
        log: LogPolicy::On {
            region_bytes: plexd_target_api::drl::DEFAULT_REGION_BYTES,
        },
        disks: disks.iter().map(|d| d.to_string()).collect(),
    };
    let log_disks = |c: &ClusterConfig| -> BTreeSet<String> {
        let v = c.disk_groups[0].volume("m").unwrap();
        v.log
            .as_ref()
            .unwrap()
            .copies
            .iter()
            .map(|c| c.disk.clone())
            .collect()
    };
    let any = c.apply(&logged(&[])).unwrap();
    assert_eq!(log_disks(&any), BTreeSet::from(["d3".into(), "d4".into()]));
    let placed = c.apply(&logged(&["d2", "d4"])).unwrap();
    assert_eq!(
        log_disks(&placed),
        BTreeSet::from(["d2".into(), "d4".into()])
    );
}

/// A plex added with --disks to a one-plex volume makes it mirrored, and the new
/// dirty region log goes on the disks named or the volume's own, never elsewhere.
#[test]
fn a_plex_added_with_disks_named_keeps_the_new_log_on_those_and_the_volumes_own() {
    let c = cluster(&[("d1", GIB), ("d2", GIB), ("d3", GIB), ("d4", GIB)]);
    let c = create_vol(&c, "cat", 64 << 20, VolumeLayout::Concat).unwrap();
    let on = plex_disk(&c.disk_groups[0].volume("cat").unwrap().plexes[0]).to_string();
    let named = if on == "d4" { "d3" } else { "d4" };
    let added = c
        .apply(&Change::PlexAdd {
            dg: "dg1".into(),
            volume: "cat".into(),
            layout: PlexLayout::Concat,
            disks: vec![named.to_string()],
        })
        .unwrap();
    let v = added.disk_groups[0].volume("cat").unwrap();
    let log: BTreeSet<String> = v
        .log
        .as_ref()
        .expect("a log")
        .copies
        .iter()
        .map(|c| c.disk.clone())
        .collect();
    assert_eq!(
        log,
        BTreeSet::from([on.clone(), named.to_string()]),
        "{v:?}"
    );
}
