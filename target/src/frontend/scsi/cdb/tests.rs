//! Unit tests of the CDB decoder.

use super::*;
use crate::frontend::scsi::alua::Alua;
use crate::frontend::scsi::lun::Identity;

fn info() -> LunInfo {
    LunInfo {
        lun: 0,
        block_size: 512,
        capacity: crate::frontend::scsi::lun::Capacity::new(2048),
        read_only: false,
        ident: Identity::from_device_id("vol0"),
        write_cache: false,
        alua: Alua::default(),
    }
}

fn cdb(bytes: &[u8]) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[..bytes.len()].copy_from_slice(bytes);
    c
}

fn run(bytes: &[u8]) -> Op {
    decode(
        &cdb(bytes),
        Some(&info()),
        &[0, 1],
        &mut NexusState::default(),
        false,
    )
}

fn check_of(op: Op) -> Sense {
    match op {
        Op::Done(r) => r.sense.expect("check condition"),
        o => panic!("expected a check condition, got {o:?}"),
    }
}

fn data_of(op: Op) -> Vec<u8> {
    match op {
        Op::Done(r) => {
            assert_eq!(r.status, sense::GOOD, "{r:?}");
            r.data
        }
        o => panic!("expected data, got {o:?}"),
    }
}

#[test]
fn identity_is_stable_and_distinct() {
    let a = Identity::from_device_id("vol0");
    assert_eq!(a, Identity::from_device_id("vol0"));
    assert_ne!(a.naa, Identity::from_device_id("vol1").naa);
    assert_eq!(a.naa[0] >> 4, 6);
}

#[test]
fn reads_and_ranges() {
    assert_eq!(
        run(&[0x28, 0, 0, 0, 0, 0, 0, 0, 8, 0]),
        Op::Read { lba: 0, blocks: 8 }
    );
    assert_eq!(
        run(&[0x08, 0, 0, 1, 0, 0]),
        Op::Read {
            lba: 1,
            blocks: 256
        }
    );
    assert_eq!(
        check_of(run(&[0x28, 0, 0, 0, 0x08, 0, 0, 0, 1, 0])),
        sense::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        check_of(run(&[0x28, 0, 0, 0, 0x07, 0xff, 0, 0, 2, 0])),
        sense::LBA_OUT_OF_RANGE
    );
    assert_eq!(
        check_of(run(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0])),
        sense::INVALID_FIELD_IN_CDB
    );
    assert_eq!(
        data_of(run(&[0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0])),
        Vec::<u8>::new()
    );
    let mut c = [0u8; 16];
    c[0] = 0x88;
    put64(&mut c, 2, u64::MAX);
    c[13] = 1;
    assert_eq!(check_of(run(&c)), sense::LBA_OUT_OF_RANGE);
}

#[test]
fn unknown_opcode_is_invalid() {
    assert_eq!(check_of(run(&[0xff, 0, 0, 0, 0, 0])), sense::INVALID_OPCODE);
}

#[test]
fn report_target_port_groups_answers_from_the_lun_view() {
    let r = data_of(run(&[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]));
    assert_eq!(alua::descriptor_at(&r, 4), Some((1, 0x0, vec![1])));
    assert_eq!(
        check_of(run(&[0xa3, 0x4a, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0])),
        sense::INVALID_FIELD_IN_CDB
    );
    // Listed by REPORT SUPPORTED OPERATION CODES (one command: MAINTENANCE IN/0Ah).
    let one = data_of(run(&[0xa3, 0x0c, 2, 0xa3, 0, 0x0a, 0, 0, 0xff, 0xff, 0, 0]));
    assert_eq!(one[1] & 0x07, 0x03, "supported");
}

#[test]
fn inquiry_pages() {
    let std = data_of(run(&[0x12, 0, 0, 0, 96, 0]));
    assert_eq!(std.len(), 96);
    assert_eq!(std[3] & 0x0f, 2);
    assert_eq!(&std[8..16], VENDOR);
    let vpd0 = data_of(run(&[0x12, 1, 0, 0, 255, 0]));
    assert_eq!(&vpd0[4..], &[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    let b0 = data_of(run(&[0x12, 1, 0xb0, 0, 255, 0]));
    assert_eq!(b0.len(), 64);
    assert_eq!(b0[3], 0x3c);
    let p83 = data_of(run(&[0x12, 1, 0x83, 0, 255, 0]));
    assert_eq!(&p83[8..24], &info().ident.naa);
    assert_eq!(
        check_of(run(&[0x12, 1, 0x42, 0, 255, 0])),
        sense::INVALID_FIELD_IN_CDB
    );
    assert_eq!(
        check_of(run(&[0x12, 0, 0x80, 0, 255, 0])),
        sense::INVALID_FIELD_IN_CDB
    );
    assert_eq!(data_of(run(&[0x12, 0, 0, 0, 5, 0])).len(), 5);
    // Implicit ALUA; the page names the port and its target port group.
    assert_eq!(std[5] & 0x30, 0x10);
    let tail = &p83[p83.len() - 16..];
    assert_eq!(tail, &alua::port_designators(&Alua::default())[..]);
    // A LUN that does not exist answers INQUIRY with qualifier 3.
    let r = decode(
        &cdb(&[0x12, 0, 0, 0, 36, 0]),
        None,
        &[0],
        &mut NexusState::default(),
        false,
    );
    assert_eq!(data_of(r)[0], 0x7f);
}

#[test]
fn capacity_and_luns() {
    let rc = data_of(run(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]));
    assert_eq!(rc, vec![0, 0, 7, 0xff, 0, 0, 2, 0]);
    let mut c = [0u8; 16];
    c[0] = 0x9e;
    c[1] = 0x10;
    c[13] = 32;
    let rc16 = data_of(run(&c));
    assert_eq!(be64(&rc16, 0), 2047);
    let rl = data_of(run(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]));
    assert_eq!(be32(&rl, 0), 16);
    assert_eq!(be64(&rl, 16), 1 << 48);
}

#[test]
fn write_same_unmap_and_caw() {
    let op = run(&[0x41, 0x08, 0, 0, 0, 0, 0, 0, 4, 0]);
    assert_eq!(
        op,
        Op::WriteSame {
            lba: 0,
            blocks: 4,
            unmap: true,
            ndob: false
        }
    );
    assert_eq!(op.data_out_len(512), 512);
    // Zero blocks runs to the end (this LUN is exactly the largest transfer).
    assert_eq!(
        run(&[0x41, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        Op::WriteSame {
            lba: 0,
            blocks: 2048,
            unmap: false,
            ndob: false
        }
    );
    assert_eq!(
        run(&[0x41, 0, 0, 0, 0x07, 0xf0, 0, 0, 0, 0]),
        Op::WriteSame {
            lba: 2032,
            blocks: 16,
            unmap: false,
            ndob: false
        }
    );
    let mut c = [0u8; 16];
    c[0] = 0x89;
    c[13] = 2;
    let op = run(&c);
    assert_eq!(op.data_out_len(512), 2048);
    let mut p = vec![0u8; 24];
    put16(&mut p, 2, 16);
    put64(&mut p, 8, 10);
    put32(&mut p, 16, 5);
    assert_eq!(unmap_ranges(&p, &info()).unwrap(), vec![(10, 5)]);
    put64(&mut p, 8, 2047);
    assert_eq!(unmap_ranges(&p, &info()), Err(sense::LBA_OUT_OF_RANGE));
    assert!(compare(b"abc", b"abc").is_ok());
    assert_eq!(compare(b"abc", b"abd").unwrap_err().info, Some(2));
}

#[test]
fn mode_sense_and_select() {
    let ms = data_of(run(&[0x1a, 0, 0x3f, 0, 255, 0]));
    assert_eq!(ms[0] as usize, ms.len() - 1);
    assert_eq!(ms[3], 8);
    let ctl = data_of(run(&[0x1a, 0x08, 0x0a, 0, 255, 0]));
    assert_eq!(ctl[4], 0x0a);
    assert_eq!(
        check_of(run(&[0x1a, 0, 0xc0 | 0x0a, 0, 255, 0])),
        sense::SAVING_NOT_SUPPORTED
    );
    let mut sel = vec![0u8, 0, 0, 0];
    sel.extend(mode_page(0x0a, 0, false, false).unwrap());
    assert_eq!(mode_select(&sel, false, &info()), Ok(Some(false)));
    sel[8] |= 0x08;
    assert_eq!(mode_select(&sel, false, &info()), Ok(Some(true)));
    sel[8] &= !0x08;
    assert!(mode_select(&sel, false, &info()).is_ok());
    sel[6] ^= 0x04;
    assert!(mode_select(&sel, false, &info()).is_err());
}

#[test]
fn a_new_nexus_has_a_power_on_unit_attention_reported_once() {
    let mut ns = NexusState::default();
    for op in [0x12, 0xa0] {
        assert!(!ns.take_unit_attention(0, op), "opcode {op:#x} runs");
    }
    assert!(ns.take_unit_attention(0, 0x00), "first TEST UNIT READY");
    // REQUEST SENSE consumes it (it reports it as its data).
    let mut rs = NexusState::default();
    assert!(rs.take_unit_attention(0, 0x03));
    assert!(!rs.take_unit_attention(0, 0x00));
    assert!(!ns.take_unit_attention(0, 0x00), "reported once");
    assert!(!ns.take_unit_attention(0, 0x28));
    // A LUN reset (epoch bump) raises it again, once.
    assert!(!ns.take_unit_attention(1, 0x12));
    assert!(ns.take_unit_attention(1, 0x2a));
    assert!(!ns.take_unit_attention(1, 0x2a));
}

#[test]
fn a_capacity_change_is_a_unit_attention_once_per_nexus_and_resizes_the_view() {
    let lun = info();
    let cap = lun.capacity.clone();
    let mut ns = NexusState::default();
    // A nexus that has reported nothing takes the current epoch silently.
    assert!(!ns.take_capacity_changed(cap.epoch(), 0x00));
    assert!(!ns.take_capacity_changed(cap.epoch(), 0x28));
    assert!(!cap.set(2048), "the same size is no change");
    assert!(cap.set(4096));
    assert_eq!(lun.capacity.blocks(), 4096, "clones share the capacity");
    assert!(range_ok(&lun, 3000, 8).is_ok(), "the grown range");
    for op in [0x12, 0xa0] {
        assert!(!ns.take_capacity_changed(cap.epoch(), op), "{op:#x} runs");
    }
    assert!(ns.take_capacity_changed(cap.epoch(), 0x9e));
    assert!(
        !ns.take_capacity_changed(cap.epoch(), 0x9e),
        "reported once"
    );
    let mut other = NexusState {
        cap_epoch: Some(0),
        ..Default::default()
    };
    assert!(
        other.take_capacity_changed(cap.epoch(), 0x03),
        "REQUEST SENSE"
    );
    assert!(cap.set(1024));
    assert_eq!(range_ok(&lun, 2000, 8), Err(sense::LBA_OUT_OF_RANGE));
}

#[test]
fn caching_page_reports_the_write_cache_of_the_lun() {
    let sense_caching = |i: &LunInfo, pc: u8| {
        let r = decode(
            &cdb(&[0x1a, 0x08, (pc << 6) | 0x08, 0, 255, 0]),
            Some(i),
            &[0],
            &mut NexusState::default(),
            false,
        );
        let d = data_of(r);
        assert_eq!(&d[4..6], &[0x08, 0x12], "caching page after the header");
        d[6]
    };
    let mut i = info();
    assert_eq!(sense_caching(&i, 0) & 0x04, 0, "write-through: WCE=0");
    i.write_cache = true;
    assert_eq!(sense_caching(&i, 0) & 0x04, 0x04, "volatile cache: WCE=1");
    assert_eq!(sense_caching(&i, 1) & 0x04, 0, "WCE is not changeable");
    // DPOFUA is set: hosts may send FUA writes.
    let ms = data_of(decode(
        &cdb(&[0x1a, 0x08, 0x08, 0, 255, 0]),
        Some(&i),
        &[0],
        &mut NexusState::default(),
        false,
    ));
    assert_eq!(ms[2] & 0x10, 0x10);
    // MODE SELECT may send the current caching page back, but not flip WCE.
    let mut sel = vec![0u8, 0, 0, 0];
    sel.extend(mode_page(0x08, 0, false, true).unwrap());
    assert_eq!(mode_select(&sel, false, &i), Ok(None));
    sel[6] &= !0x04;
    assert_eq!(
        mode_select(&sel, false, &i),
        Err(sense::INVALID_FIELD_IN_PARAM)
    );
}

#[test]
fn supported_opcodes() {
    let all = data_of(run(&[0xa3, 0x0c, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0]));
    assert_eq!(be32(&all, 0) as usize, COMMANDS.len() * 8);
    let one = data_of(run(&[0xa3, 0x0c, 1, 0x28, 0, 0, 0, 0, 0xff, 0xff, 0, 0]));
    assert_eq!(one[1] & 7, 3);
    assert_eq!(one[4], 0x28);
    assert_eq!(
        check_of(run(&[0xa3, 0x0c, 1, 0x9e, 0, 0x10, 0, 0, 0xff, 0xff, 0, 0])),
        sense::INVALID_FIELD_IN_CDB.at_cdb_byte(2)
    );
    let sa = data_of(run(&[0xa3, 0x0c, 2, 0x9e, 0, 0x10, 0, 0, 0xff, 0xff, 0, 0]));
    assert_eq!(sa[1] & 7, 3);
}

#[test]
fn read_only_luns_refuse_writes() {
    let mut i = info();
    i.read_only = true;
    let r = decode(
        &cdb(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
        Some(&i),
        &[0],
        &mut NexusState::default(),
        false,
    );
    assert_eq!(check_of(r), sense::WRITE_PROTECTED);
}
