//! Feeds arbitrary bytes to the Connect / Property Get / Property Set path as a
//! queue pair runs it after ICReq: each PDU the parser finds that is a fabrics
//! command capsule goes to the target's own functions (`fabrics.rs`): Connect's
//! parameters and data (parse_connect), Property Get (property_value) and
//! Property Set of CC (cc_transition) on a controller's CC / CSTS, checking the
//! invariants the queue pair relies on: a parsed Connect's SQ size fits the queue,
//! refusals carry Connect statuses, CSTS.RDY follows CC.EN, SHST is 0 or 2.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "nvmf_codec.rs"]
mod nvmf_codec;
use nvmf_codec::{fabrics, nvme, pdu};

/// Largest data section accepted (the target's in-capsule data).
const MAX_DATA: usize = 8192;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, buf)) = data.split_first() else {
        return;
    };
    let dig = pdu::Digests {
        header: mode & 1 != 0,
        data: mode & 2 != 0,
    };
    // The controller's properties, as Ctrl keeps them.
    let (mut cc, mut csts) = (0u32, 0u32);
    let mut pos = 0;
    // Bounded: every iteration consumes at least the 8-byte common header.
    while pos < buf.len() {
        let p = match pdu::parse(&buf[pos..], dig, MAX_DATA) {
            Ok(pdu::Parsed::Pdu(p)) => p,
            Ok(pdu::Parsed::Need(_)) | Err(_) => break,
        };
        pos += p.wire_len;
        if p.ty != pdu::ty::CAPSULE_CMD {
            continue;
        }
        let sqe = nvme::Sqe::from_slice(&p.hdr[pdu::CH_LEN..]);
        if sqe.opcode() != nvme::admin_op::FABRICS {
            continue;
        }
        match sqe.fctype() {
            nvme::fctype::CONNECT => match fabrics::parse_connect(&sqe, p.data) {
                Ok(c) => {
                    assert!(c.sqsize >= 1 && (c.sqsize as usize) < fabrics::MAX_QUEUE_ENTRIES);
                    assert!(p.data.len() >= fabrics::CONNECT_DATA_LEN);
                    assert_eq!(&c.hostid[..], &p.data[..16]);
                    assert!(c.subnqn.len() <= 256 * 3 && c.hostnqn.len() <= 256 * 3);
                }
                Err((st, _)) => assert!(
                    st == nvme::Status::CONNECT_FORMAT
                        || st == nvme::Status::SGL_LENGTH
                        || st == nvme::Status::CONNECT_INVALID,
                    "Connect refused with status {:#x}",
                    st.0
                ),
            },
            nvme::fctype::PROPERTY_GET => {
                let eight = sqe.0[40] & 7 == 1;
                let off = sqe.cdw(11);
                match fabrics::property_value(off, eight, cc, csts) {
                    Ok(v) => match off {
                        fabrics::prop::CAP => {
                            assert!(eight);
                            assert_eq!(v & 0xffff, (fabrics::MAX_QUEUE_ENTRIES - 1) as u64);
                        }
                        fabrics::prop::VS => assert_eq!(v, u64::from(fabrics::VERSION)),
                        fabrics::prop::CC => assert_eq!(v, u64::from(cc)),
                        fabrics::prop::CSTS => assert_eq!(v, u64::from(csts)),
                        o => panic!("property {o:#x} answered"),
                    },
                    Err(st) => assert_eq!(st, nvme::Status::INVALID_FIELD),
                }
            }
            nvme::fctype::PROPERTY_SET if sqe.cdw(11) == fabrics::prop::CC => {
                let new = sqe.cdw(12);
                let t = fabrics::cc_transition(cc, new, csts);
                let was_enabled = cc & 1 != 0;
                cc = new;
                csts = t.csts;
                assert_eq!(csts & 1, cc & 1, "CSTS.RDY follows CC.EN");
                assert!(matches!((csts >> 2) & 3, 0 | 2), "SHST {csts:#x}");
                if was_enabled && cc & 1 == 0 {
                    assert!(t.io_queues_close, "a reset closes the I/O queues");
                }
                if t.change == fabrics::CcChange::Enabled {
                    assert!(!t.io_queues_close);
                }
            }
            _ => {}
        }
    }
});
