//! Reads, writes and the medium: READ/WRITE/VERIFY (all sizes), COMPARE AND
//! WRITE, WRITE SAME, UNMAP, READ CAPACITY, START STOP UNIT and friends, and the
//! helpers that finish their ops (UNMAP parameter lists, compares).

use super::*;

pub(super) fn rw_fields(cdb: &[u8]) -> (u64, u32, usize) {
    match cdb[0] {
        0x08 | 0x0a => {
            let lba = ((cdb[1] as u64 & 0x1f) << 16) | be16(cdb, 2) as u64;
            let n = if cdb[4] == 0 { 256 } else { cdb[4] as u32 };
            (lba, n, 6)
        }
        0x28 | 0x2a | 0x2e | 0x2f | 0x34 | 0x35 | 0x41 => {
            (be32(cdb, 2) as u64, be16(cdb, 7) as u32, 10)
        }
        0xa8 | 0xaa | 0xae | 0xaf => (be32(cdb, 2) as u64, be32(cdb, 6), 12),
        // WRITE ATOMIC(16): a two-byte transfer length after the atomic boundary.
        0x9c => (be64(cdb, 2), be16(cdb, 12) as u32, 16),
        _ => (be64(cdb, 2), be32(cdb, 10), 16),
    }
}

/// READ 6/10/12/16
pub(super) fn read(cdb: &[u8; 16], info: &LunInfo) -> Result<Op, Sense> {
    let opcode = cdb[0];
    let (lba, blocks, len) = rw_fields(cdb);
    control_ok(cdb, len)?;
    if len > 6 && cdb[1] & 0xe0 != 0 {
        return Err(sense::INVALID_FIELD_IN_CDB); // RDPROTECT without protection
    }
    if len > 6 && cdb[1] & 0x01 != 0 && opcode != 0x28 {
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    range_ok(info, lba, blocks as u64)?;
    if blocks > info.max_xfer_blocks() {
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    if blocks == 0 {
        return good();
    }
    Ok(Op::Read { lba, blocks })
}

/// WRITE 6/10/12/16, WRITE AND VERIFY 10/12/16, WRITE ATOMIC(16), ORWRITE(16)
pub(super) fn write(cdb: &[u8; 16], info: &LunInfo, swp: bool) -> Result<Op, Sense> {
    let opcode = cdb[0];
    let (lba, blocks, len) = rw_fields(cdb);
    control_ok(cdb, len)?;
    if opcode == 0x9c && be16(cdb, 10) != 0 {
        // No atomic boundaries (MAXIMUM ATOMIC BOUNDARY SIZE is 0).
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    if len > 6 && cdb[1] & 0xe0 != 0 {
        return Err(sense::INVALID_FIELD_IN_CDB); // WRPROTECT without protection
    }
    write_ok(info, swp)?;
    range_ok(info, lba, blocks as u64)?;
    if blocks > info.max_xfer_blocks() {
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    if blocks == 0 {
        return good();
    }
    let fua = len > 6 && cdb[1] & 0x08 != 0;
    if opcode == 0x8b {
        return Ok(Op::OrWrite { lba, blocks });
    }
    Ok(Op::Write { lba, blocks, fua })
}

/// VERIFY 10/12/16
pub(super) fn verify(cdb: &[u8; 16], info: &LunInfo) -> Result<Op, Sense> {
    let (lba, blocks, len) = rw_fields(cdb);
    control_ok(cdb, len)?;
    if cdb[1] & 0xe0 != 0 {
        return Err(sense::INVALID_FIELD_IN_CDB); // VRPROTECT
    }
    let bytchk = (cdb[1] >> 1) & 3;
    if bytchk == 2 {
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    range_ok(info, lba, blocks as u64)?;
    if blocks > info.max_xfer_blocks() {
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    if blocks == 0 || bytchk == 0 {
        return good();
    }
    Ok(Op::Verify {
        lba,
        blocks,
        bytchk,
    })
}

/// PRE-FETCH 10/16: nothing to stage on these backends.
pub(super) fn prefetch(cdb: &[u8; 16], info: &LunInfo) -> Result<Op, Sense> {
    let (lba, blocks, len) = rw_fields(cdb);
    control_ok(cdb, len)?;
    range_ok(info, lba, blocks as u64)?;
    good()
}

/// SYNCHRONIZE CACHE 10/16
pub(super) fn synchronize_cache(cdb: &[u8; 16], info: &LunInfo) -> Result<Op, Sense> {
    let (lba, blocks, len) = rw_fields(cdb);
    control_ok(cdb, len)?;
    range_ok(info, lba, blocks as u64)?;
    Ok(Op::Flush)
}

/// COMPARE AND WRITE
pub(super) fn compare_and_write(cdb: &[u8; 16], info: &LunInfo, swp: bool) -> Result<Op, Sense> {
    control_ok(cdb, 16)?;
    if cdb[1] & 0xe0 != 0 {
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    let lba = be64(cdb, 2);
    let blocks = cdb[13] as u32;
    write_ok(info, swp)?;
    if blocks > info.max_caw_blocks() {
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    range_ok(info, lba, blocks as u64)?;
    if blocks == 0 {
        return good();
    }
    Ok(Op::CompareAndWrite { lba, blocks })
}

/// WRITE SAME 10/16
pub(super) fn write_same(cdb: &[u8; 16], info: &LunInfo, swp: bool) -> Result<Op, Sense> {
    let opcode = cdb[0];
    let (lba, blocks, len) = rw_fields(cdb);
    control_ok(cdb, len)?;
    let ndob = opcode == 0x93 && cdb[1] & 0x01 != 0;
    let unmap = cdb[1] & 0x08 != 0;
    let anchor = cdb[1] & 0x10 != 0;
    if cdb[1] & 0xe0 != 0 || anchor || (opcode == 0x41 && cdb[1] & 0x06 != 0) {
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    write_ok(info, swp)?;
    // WSNZ=0: zero blocks means up to the end of the medium.
    let blocks = if blocks == 0 {
        let cap = info.capacity.blocks();
        if lba >= cap {
            return Err(sense::LBA_OUT_OF_RANGE);
        }
        u32::try_from(cap - lba).unwrap_or(u32::MAX)
    } else {
        blocks
    };
    // One limit for every form (the Block Limits page reports one).
    let max = info.max_xfer_blocks();
    range_ok(info, lba, blocks as u64)?;
    if blocks > max {
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    Ok(Op::WriteSame {
        lba,
        blocks,
        unmap,
        ndob,
    })
}

/// UNMAP
pub(super) fn unmap(cdb: &[u8; 16], info: &LunInfo, swp: bool) -> Result<Op, Sense> {
    control_ok(cdb, 10)?;
    if cdb[1] & 0x01 != 0 {
        return Err(sense::INVALID_FIELD_IN_CDB); // ANCHOR
    }
    write_ok(info, swp)?;
    let len = be16(cdb, 7) as u32;
    if len == 0 {
        return good();
    }
    if !(8..=MAX_PARAM_BYTES).contains(&len) {
        return Err(sense::PARAM_LIST_LENGTH);
    }
    Ok(Op::Unmap { len })
}

/// READ CAPACITY(10)
pub(super) fn read_capacity_10(cdb: &[u8; 16], info: &LunInfo) -> Result<Op, Sense> {
    let bs = info.block_size;
    control_ok(cdb, 10)?;
    let mut b = vec![0u8; 8];
    let last = info.capacity.blocks().saturating_sub(1);
    put32(&mut b, 0, u32::try_from(last).unwrap_or(u32::MAX));
    put32(&mut b, 4, bs);
    Ok(Op::Done(Response::good(b)))
}

/// SERVICE ACTION IN(16): READ CAPACITY(16), GET LBA STATUS
pub(super) fn service_action_in(cdb: &[u8; 16], info: &LunInfo) -> Result<Op, Sense> {
    let bs = info.block_size;
    control_ok(cdb, 16)?;
    let alloc = be32(cdb, 10) as usize;
    match cdb[1] & 0x1f {
        0x10 => {
            let mut b = vec![0u8; 32];
            put64(&mut b, 0, info.capacity.blocks().saturating_sub(1));
            put32(&mut b, 8, bs);
            // LBPME (thin provisioning: UNMAP supported) and LBPRZ (reads
            // after unmap return zeroes).
            // LOGICAL BLOCKS PER PHYSICAL BLOCK EXPONENT stays 0: libiscsi
            // 1.19's GetLBAStatus.UnmapSingle expects descriptors to start
            // at the next physical block when it is above 0, which SBC-3
            // does not allow (see docs/ISCSI.md).
            b[14] = 0x80 | 0x40;
            Ok(Op::Done(Response::good(trunc(b, alloc))))
        }
        0x12 => {
            let lba = be64(cdb, 2);
            let cap = info.capacity.blocks();
            if lba >= cap {
                return Err(sense::LBA_OUT_OF_RANGE);
            }
            let mut b = vec![0u8; 24];
            put32(&mut b, 0, 20);
            put64(&mut b, 8, lba);
            let n = (cap - lba).min(u32::MAX as u64) as u32;
            put32(&mut b, 16, n);
            b[20] = 0; // mapped
            Ok(Op::Done(Response::good(trunc(b, alloc))))
        }
        _ => Err(sense::INVALID_FIELD_IN_CDB),
    }
}

/// START STOP UNIT: the medium is not removable; power conditions are accepted.
pub(super) fn start_stop_unit(cdb: &[u8; 16], nexus: &mut NexusState) -> Result<Op, Sense> {
    control_ok(cdb, 6)?;
    let loej = cdb[4] & 0x02 != 0;
    let start = cdb[4] & 0x01 != 0;
    if loej && !start && nexus.prevent {
        return Err(Sense::new(sense::key::ILLEGAL_REQUEST, 0x53, 0x02));
    }
    good()
}

/// PREVENT ALLOW MEDIUM REMOVAL
pub(super) fn prevent_allow_medium_removal(
    cdb: &[u8; 16],
    nexus: &mut NexusState,
) -> Result<Op, Sense> {
    control_ok(cdb, 6)?;
    let p = cdb[4] & 0x03;
    if p > 1 {
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    nexus.prevent = p == 1;
    good()
}

/// READ DEFECT DATA 10/12: no defects.
pub(super) fn read_defect_data(cdb: &[u8; 16]) -> Result<Op, Sense> {
    let opcode = cdb[0];
    let (fmt, alloc) = if opcode == 0x37 {
        (cdb[2] & 0x07, be16(cdb, 7) as usize)
    } else {
        (cdb[1] & 0x07, be32(cdb, 6) as usize)
    };
    let mut b = if opcode == 0x37 {
        vec![0, cdb[2] & 0x18 | fmt, 0, 0]
    } else {
        vec![0, cdb[1] & 0x18 | fmt, 0, 0, 0, 0, 0, 0]
    };
    b[1] &= 0x1f;
    Ok(Op::Done(Response::good(trunc(b, alloc))))
}

/// The ranges of an UNMAP parameter list, checked against the LUN.
pub fn unmap_ranges(data: &[u8], info: &LunInfo) -> Result<Vec<(u64, u32)>, Sense> {
    if data.len() < 8 {
        return Err(sense::PARAM_LIST_LENGTH);
    }
    let bdl = be16(data, 2) as usize;
    if !bdl.is_multiple_of(16) {
        return Err(sense::PARAM_LIST_LENGTH);
    }
    let n = bdl.min(data.len() - 8) / 16;
    if n as u32 > MAX_UNMAP_DESCRIPTORS {
        return Err(Sense::new(sense::key::ILLEGAL_REQUEST, 0x26, 0x0e));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let d = &data[8 + i * 16..8 + i * 16 + 16];
        let lba = be64(d, 0);
        let blocks = be32(d, 8);
        range_ok(info, lba, blocks as u64)?;
        if blocks > MAX_UNMAP_BLOCKS {
            return Err(Sense::new(sense::key::ILLEGAL_REQUEST, 0x26, 0x0e));
        }
        if blocks > 0 {
            out.push((lba, blocks));
        }
    }
    Ok(out)
}

/// Compares `expected` with `actual`; on a difference, the MISCOMPARE sense with
/// the offset of the first differing byte.
pub fn compare(expected: &[u8], actual: &[u8]) -> Result<(), Sense> {
    match expected.iter().zip(actual).position(|(a, b)| a != b) {
        None => Ok(()),
        Some(off) => {
            let mut s = sense::MISCOMPARE;
            s.info = Some(off as u32);
            Err(s)
        }
    }
}
