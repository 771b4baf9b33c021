//! MODE SENSE and MODE SELECT: the mode pages (caching, control, ...).

use super::*;

/// MODE SELECT 6/10
pub(super) fn mode_select_cdb(cdb: &[u8; 16]) -> Result<Op, Sense> {
    let opcode = cdb[0];
    let ten = opcode == 0x55;
    control_ok(cdb, if ten { 10 } else { 6 })?;
    if cdb[1] & 0x01 != 0 {
        return Err(sense::SAVING_NOT_SUPPORTED);
    }
    let len = if ten {
        be16(cdb, 7) as u32
    } else {
        cdb[4] as u32
    };
    if len == 0 {
        return good();
    }
    if len > MAX_PARAM_BYTES {
        return Err(sense::PARAM_LIST_LENGTH);
    }
    Ok(Op::ModeSelect { len, ten })
}

/// Mode page `page` for page control `pc` (0 current, 1 changeable, 2 default).
/// `wce`: the LUN has a volatile write cache.
pub(super) fn mode_page(page: u8, pc: u8, swp: bool, wce: bool) -> Option<Vec<u8>> {
    let changeable = pc == 1;
    match page {
        // Read-write error recovery.
        0x01 => Some(vec![0x01, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
        // Caching: WCE says whether a completed write may sit in a volatile cache
        // (the bdev's answer; SYNCHRONIZE CACHE and FUA flush it). Not changeable:
        // the backend decides, not the host.
        0x08 => {
            let mut p = vec![0u8; 20];
            p[0] = 0x08;
            p[1] = 0x12;
            if !changeable && wce {
                p[2] = 0x04;
            }
            Some(p)
        }
        // Control: TST=0, D_SENSE=0, SWP=0, QERR=0.
        0x0a => {
            let mut p = vec![0u8; 12];
            p[0] = 0x0a;
            p[1] = 0x0a;
            if changeable {
                p[4] = 0x08; // SWP is the one changeable bit
            } else {
                p[3] = 0x10; // queue algorithm modifier 1: unrestricted reordering
                put16(&mut p, 8, 0xffff); // busy timeout period: unlimited
                if swp && pc == 0 {
                    p[4] = 0x08;
                }
            }
            Some(p)
        }
        // Informational exceptions control.
        0x1c => {
            let mut p = vec![0u8; 12];
            p[0] = 0x1c;
            p[1] = 0x0a;
            Some(p)
        }
        _ => None,
    }
}

pub(super) fn mode_sense(cdb: &[u8; 16], info: &LunInfo, swp: bool) -> Result<Response, Sense> {
    let ten = cdb[0] == 0x5a;
    control_ok(cdb, if ten { 10 } else { 6 })?;
    let dbd = cdb[1] & 0x08 != 0;
    let llbaa = ten && cdb[1] & 0x10 != 0;
    let pc = cdb[2] >> 6;
    let page = cdb[2] & 0x3f;
    let subpage = cdb[3];
    let alloc = if ten {
        be16(cdb, 7) as usize
    } else {
        cdb[4] as usize
    };
    if pc == 3 {
        return Err(sense::SAVING_NOT_SUPPORTED);
    }
    let mut pages = Vec::new();
    if page == 0x3f {
        if subpage != 0 && subpage != 0xff {
            return Err(sense::INVALID_FIELD_IN_CDB);
        }
        for p in [0x01, 0x08, 0x0a, 0x1c] {
            pages.extend(mode_page(p, pc, swp, info.write_cache).unwrap_or_default());
        }
    } else {
        if subpage != 0 {
            return Err(sense::INVALID_FIELD_IN_CDB);
        }
        pages = mode_page(page, pc, swp, info.write_cache).ok_or(sense::INVALID_FIELD_IN_CDB)?;
    }
    let mut bd = Vec::new();
    if !dbd {
        if llbaa {
            bd = vec![0u8; 16];
            put64(&mut bd, 0, info.capacity.blocks());
            put32(&mut bd, 12, info.block_size);
        } else {
            bd = vec![0u8; 8];
            put32(
                &mut bd,
                0,
                u32::try_from(info.capacity.blocks()).unwrap_or(u32::MAX),
            );
            put32(&mut bd, 4, info.block_size & 0x00ff_ffff);
            bd[4] = 0;
        }
    }
    // Device-specific parameter: WP, DPOFUA.
    let dsp = 0x10 | if info.read_only || swp { 0x80 } else { 0 };
    let mut b = if ten {
        let mut h = vec![0u8; 8];
        h[3] = dsp;
        if llbaa && !dbd {
            h[4] = 0x01;
        }
        put16(&mut h, 6, bd.len() as u16);
        h
    } else {
        vec![0, 0, dsp, bd.len() as u8]
    };
    b.extend(bd);
    b.extend(pages);
    if ten {
        let n = (b.len() - 2) as u16;
        put16(&mut b, 0, n);
    } else {
        b[0] = (b.len() - 1).min(255) as u8;
    }
    Ok(Response::good(trunc(b, alloc)))
}

/// MODE SELECT: accepts pages equal to the current ones except for the bits
/// reported changeable (only SWP in the control page). Returns the new SWP value
/// when the control page was given.
pub fn mode_select(data: &[u8], ten: bool, info: &LunInfo) -> Result<Option<bool>, Sense> {
    let (hdr, bdl) = if ten {
        if data.len() < 8 {
            return Err(sense::PARAM_LIST_LENGTH);
        }
        (8, be16(data, 6) as usize)
    } else {
        if data.len() < 4 {
            return Err(sense::PARAM_LIST_LENGTH);
        }
        (4, data[3] as usize)
    };
    let mut pos = hdr + bdl;
    let mut swp = None;
    if pos > data.len() {
        return Err(sense::PARAM_LIST_LENGTH);
    }
    if bdl >= 8 {
        let bl = be32(data, hdr + bdl - 4) & 0x00ff_ffff;
        if bl != 0 && bl != info.block_size {
            return Err(sense::INVALID_FIELD_IN_PARAM);
        }
    }
    while pos + 2 <= data.len() {
        let code = data[pos] & 0x3f;
        let spf = data[pos] & 0x40 != 0;
        let (plen, hl) = if spf {
            if pos + 4 > data.len() {
                return Err(sense::PARAM_LIST_LENGTH);
            }
            (be16(data, pos + 2) as usize, 4)
        } else {
            (data[pos + 1] as usize, 2)
        };
        let end = pos + hl + plen;
        if end > data.len() {
            return Err(sense::PARAM_LIST_LENGTH);
        }
        let (Some(cur), Some(mask)) = (
            mode_page(code, 0, false, info.write_cache),
            mode_page(code, 1, false, info.write_cache),
        ) else {
            return Err(sense::INVALID_FIELD_IN_PARAM);
        };
        if spf || cur.len() != hl + plen {
            return Err(sense::INVALID_FIELD_IN_PARAM);
        }
        // Ignore the PS bit; every other byte must match the current value
        // outside the changeable bits.
        let given = &data[pos + 2..end];
        let differs = given
            .iter()
            .zip(&cur[2..])
            .zip(&mask[2..])
            .any(|((g, c), m)| (g & !m) != (c & !m));
        if differs {
            return Err(sense::INVALID_FIELD_IN_PARAM);
        }
        if code == 0x0a {
            swp = Some(given[2] & 0x08 != 0);
        }
        pos = end;
    }
    Ok(swp)
}
