//! INQUIRY: the standard data and the vital product data pages.

use super::*;

pub(super) fn inquiry(cdb: &[u8; 16], lun: Option<&LunInfo>) -> Response {
    if control_ok(cdb, 6).is_err() || cdb[1] & 0xfe != 0 {
        return Response::check(sense::INVALID_FIELD_IN_CDB);
    }
    let evpd = cdb[1] & 0x01 != 0;
    let page = cdb[2];
    let alloc = be16(cdb, 3) as usize;
    // Peripheral qualifier 3 / type 1f: no LUN here.
    let pq = if lun.is_some() { 0x00 } else { 0x7f };
    if !evpd {
        if page != 0 {
            return Response::check(sense::INVALID_FIELD_IN_CDB);
        }
        return Response::good(trunc(standard_data(pq), alloc));
    }
    let Some(info) = lun else {
        let mut b = vec![pq, page, 0, 0];
        if page != 0 {
            return Response::check(sense::INVALID_FIELD_IN_CDB);
        }
        b.push(0);
        b[3] = 1;
        return Response::good(trunc(b, alloc));
    };
    match vpd_page(pq, page, info) {
        Some(b) => Response::good(trunc(b, alloc)),
        None => Response::check(sense::INVALID_FIELD_IN_CDB),
    }
}

/// The standard INQUIRY data with peripheral qualifier and type `pq`.
fn standard_data(pq: u8) -> Vec<u8> {
    let mut b = vec![0u8; 96];
    b[0] = pq;
    b[2] = 0x06; // SPC-4
    b[3] = 0x12; // HiSup, response data format 2
    b[4] = (b.len() - 5) as u8;
    b[5] = alua::TPGS_IMPLICIT; // PROTECT=0, 3PC=0, ACC=0: implicit ALUA only
    b[6] = 0x00;
    b[7] = 0x02; // CmdQue
    b[8..16].copy_from_slice(VENDOR);
    b[16..32].copy_from_slice(PRODUCT);
    b[32..36].copy_from_slice(REVISION);
    // Version descriptors: SAM-5, iSCSI, SPC-4, SBC-3.
    for (i, v) in [0x00a0u16, 0x0960, 0x0460, 0x04c0].iter().enumerate() {
        put16(&mut b, 58 + i * 2, *v);
    }
    b
}

/// Vital product data page `page` of an existing LUN, or None for a page this
/// target does not have.
fn vpd_page(pq: u8, page: u8, info: &LunInfo) -> Option<Vec<u8>> {
    let mut b = vec![pq, page, 0, 0];
    match page {
        0x00 => b.extend_from_slice(&[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]),
        0x80 => b.extend_from_slice(info.ident.serial.as_bytes()),
        0x83 => device_identification(&mut b, info),
        0xb0 => block_limits(&mut b, info),
        0xb1 => {
            b.resize(64, 0);
            put16(&mut b, 4, 1); // non-rotating medium
        }
        0xb2 => {
            b.resize(8, 0);
            // LBPU, LBPWS, LBPWS10, LBPRZ (bits 7,6,5 and 2 of byte 5).
            b[5] = 0x80 | 0x40 | 0x20 | 0x04;
            b[6] = 0x02; // thin provisioned
        }
        _ => return None,
    }
    let n = (b.len() - 4) as u16;
    put16(&mut b, 2, n);
    Some(b)
}

/// Device Identification (0x83) designators, appended to `b`.
fn device_identification(b: &mut Vec<u8>, info: &LunInfo) {
    // NAA, binary, associated with the LU.
    b.extend_from_slice(&[0x01, 0x03, 0x00, 16]);
    b.extend_from_slice(&info.ident.naa);
    // T10 vendor id, ASCII.
    let mut t10 = VENDOR.to_vec();
    t10.extend_from_slice(info.ident.t10.as_bytes());
    b.extend_from_slice(&[0x02, 0x01, 0x00, t10.len() as u8]);
    b.extend_from_slice(&t10);
    // Relative target port and target port group (ALUA), of the target port.
    b.extend_from_slice(&alua::port_designators(&info.alua));
}

/// Block Limits (0xb0): the page `b` (its 4-byte header so far) filled in.
fn block_limits(b: &mut Vec<u8>, info: &LunInfo) {
    b.resize(64, 0);
    b[4] = 0x00; // WSNZ=0: WRITE SAME with zero blocks runs to the end
    b[5] = info.max_caw_blocks() as u8;
    put16(b, 6, 1);
    put32(b, 8, info.max_xfer_blocks());
    put32(b, 12, info.max_xfer_blocks());
    put32(b, 20, MAX_UNMAP_BLOCKS);
    put32(b, 24, MAX_UNMAP_DESCRIPTORS);
    put32(b, 28, 1); // optimal unmap granularity
    put64(b, 36, info.max_xfer_blocks() as u64);
    // Atomic writes: any aligned length up to the largest transfer.
    put32(b, 44, info.max_xfer_blocks());
    put32(b, 48, 1);
    put32(b, 52, 1);
}
