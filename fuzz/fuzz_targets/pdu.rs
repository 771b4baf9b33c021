//! Feeds arbitrary bytes to the PDU parser as a receive buffer: every PDU found is
//! checked for consistency, its data segment goes through the text parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "codec.rs"]
mod codec;
use codec::iscsi::{pdu, text};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, buf)) = data.split_first() else {
        return;
    };
    let dig = pdu::Digests {
        header: mode & 1 != 0,
        data: mode & 2 != 0,
    };
    let max = if mode & 4 != 0 { 8192 } else { 262_144 };
    let mut pos = 0;
    // Bounded: every iteration consumes at least 48 bytes.
    while pos < buf.len() {
        match pdu::parse(&buf[pos..], dig, max) {
            Ok(pdu::Parsed::Pdu(p)) => {
                assert!(p.wire_len >= pdu::BHS_LEN && p.wire_len <= buf.len() - pos);
                assert!(p.data.len() <= max);
                let _ = pdu::opcode(p.bhs);
                let _ = text::parse(p.data);
                // Re-encoding gives a PDU that parses to the same header and data.
                let mut out = Vec::new();
                let b = pdu::Bhs(*p.bhs);
                pdu::encode(&mut out, &b, p.data, dig);
                if p.ahs.is_empty() {
                    match pdu::parse(&out, dig, max) {
                        Ok(pdu::Parsed::Pdu(q)) => assert_eq!(q.data, p.data),
                        other => panic!("re-encoded PDU does not parse: {other:?}"),
                    }
                }
                pos += p.wire_len;
            }
            Ok(pdu::Parsed::Need(n)) => {
                assert!(n > buf.len() - pos);
                assert!(n <= pdu::max_wire_len(max));
                break;
            }
            Err(_) => break,
        }
    }
});
