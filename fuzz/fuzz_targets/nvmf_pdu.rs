//! Feeds arbitrary bytes to the NVMe/TCP PDU parser as a receive buffer: every PDU
//! found is checked for consistency, its header read as the queue pair reads it
//! (SQE fields of a capsule, ICReq fields, data header fields), and re-encoded.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "nvmf_codec.rs"]
mod nvmf_codec;
use nvmf_codec::{nvme, pdu};

/// Largest data section accepted (the target's MAXH2CDATA).
const MAX_DATA: usize = 128 << 10;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, buf)) = data.split_first() else {
        return;
    };
    let dig = pdu::Digests {
        header: mode & 1 != 0,
        data: mode & 2 != 0,
    };
    let max = if mode & 4 != 0 { 8192 } else { MAX_DATA };
    let mut pos = 0;
    // Bounded: every iteration consumes at least the 8-byte common header.
    while pos < buf.len() {
        match pdu::parse(&buf[pos..], dig, max) {
            Ok(pdu::Parsed::Pdu(p)) => {
                assert!(p.wire_len >= pdu::CH_LEN && p.wire_len <= buf.len() - pos);
                assert!(p.data.len() <= max);
                assert_eq!(Some(p.hdr.len()), pdu::host_hlen(p.ty));
                match p.ty {
                    pdu::ty::CAPSULE_CMD => {
                        let s = nvme::Sqe::from_slice(&p.hdr[pdu::CH_LEN..]);
                        let _ = (s.cid(), s.nsid(), s.sgl_len(), s.sgl_type(), s.direction());
                        let _ = (s.cdw(10), s.cdw(15), nvme::c_str(p.data));
                    }
                    pdu::ty::IC_REQ => {
                        let _ = pdu::ic_req(p.hdr);
                    }
                    _ => {
                        let _ = (pdu::le16(p.hdr, 8), pdu::le32(p.hdr, 12), pdu::le32(p.hdr, 16));
                    }
                }
                // Re-encoding gives a PDU that parses to the same type and data.
                if !p.data_digest_bad && p.ty != pdu::ty::IC_REQ && p.ty != pdu::ty::H2C_TERM {
                    let mut out = Vec::new();
                    let flags = p.flags & !(pdu::flag::HDGSTF | pdu::flag::DDGSTF);
                    pdu::encode(&mut out, p.ty, flags, &p.hdr[pdu::CH_LEN..], p.data, dig, 0);
                    match pdu::parse(&out, dig, max) {
                        Ok(pdu::Parsed::Pdu(q)) => {
                            assert_eq!((q.ty, q.data), (p.ty, p.data));
                            assert!(!q.data_digest_bad);
                        }
                        other => panic!("re-encoded PDU does not parse: {other:?}"),
                    }
                }
                pos += p.wire_len;
            }
            Ok(pdu::Parsed::Need(n)) => {
                assert!(n > buf.len() - pos);
                break;
            }
            Err(e) => {
                let _ = e.fes_fei();
                break;
            }
        }
    }
});
