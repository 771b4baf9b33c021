//! The SCSI command layer (SPC-4 and SBC-3 for a direct-access block device) as
//! pure logic: [`decode`] turns a CDB into either a finished [`Response`] or an
//! [`Op`] that the connection carries out against the LUN's bdev (reads, writes,
//! compares, unmaps), and helpers finish those ops (compare buffers, parse
//! UNMAP and MODE SELECT parameter lists). No I/O happens in this module.
//!
//! This file holds the types, the dispatch on the opcode and the commands of
//! the target itself (REPORT LUNS, REQUEST SENSE, reservations); by concern:
//! `block` (reads, writes, the medium), `inquiry` (INQUIRY, VPD pages), `mode`
//! (mode pages), `opcodes` (the command table, REPORT SUPPORTED OPERATION CODES).

use super::alua;
use super::bytes::{be16, be32, be64, put16, put32, put64};
use super::lun::LunInfo;
use super::pr::Access;
use super::sense::{self, Sense};

mod block;
mod inquiry;
mod mode;
mod opcodes;
#[cfg(test)]
mod tests;

use block::*;
pub use block::{compare, unmap_ranges};
use inquiry::*;
pub use mode::mode_select;
use mode::*;
use opcodes::*;

/// Largest data transfer of one command (the buffer pool's largest chunk).
pub const MAX_TRANSFER_BYTES: u32 = 1 << 20;
/// Most blocks one UNMAP descriptor or WRITE SAME with UNMAP may cover.
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 20;
/// Most descriptors in one UNMAP parameter list.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Largest parameter list of control commands (MODE SELECT, UNMAP, PR OUT).
pub const MAX_PARAM_BYTES: u32 = 64 << 10;
/// Vendor identification (8 bytes).
pub const VENDOR: &[u8; 8] = b"PLEXD   ";
/// Product identification (16 bytes).
pub const PRODUCT: &[u8; 16] = b"plexd volume    ";
/// Product revision (4 bytes).
pub const REVISION: &[u8; 4] = b"0001";

/// A finished command: status, Data-In bytes and sense.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// SCSI status.
    pub status: u8,
    /// Data for the initiator (already truncated to the allocation length).
    pub data: Vec<u8>,
    /// Sense for CHECK CONDITION.
    pub sense: Option<Sense>,
}

impl Response {
    /// GOOD with data.
    pub fn good(data: Vec<u8>) -> Response {
        Response {
            status: sense::GOOD,
            data,
            sense: None,
        }
    }
    /// CHECK CONDITION.
    pub fn check(s: Sense) -> Response {
        Response {
            status: sense::CHECK_CONDITION,
            data: Vec::new(),
            sense: Some(s),
        }
    }
    /// RESERVATION CONFLICT.
    pub fn conflict() -> Response {
        Response {
            status: sense::RESERVATION_CONFLICT,
            data: Vec::new(),
            sense: None,
        }
    }
}

/// Work a command needs from the block device, with the data-out it needs first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Answered from the CDB alone.
    Done(Response),
    /// Read `blocks` at `lba` and return them.
    Read {
        /// First block.
        lba: u64,
        /// Block count (nonzero).
        blocks: u32,
    },
    /// Write the data-out at `lba`.
    Write {
        /// First block.
        lba: u64,
        /// Block count (nonzero).
        blocks: u32,
        /// Force unit access: flush after the write.
        fua: bool,
    },
    /// Read and compare against data-out (BYTCHK 1: all blocks; 3: one block repeated).
    Verify {
        /// First block.
        lba: u64,
        /// Block count (nonzero).
        blocks: u32,
        /// BYTCHK field.
        bytchk: u8,
    },
    /// ORWRITE: read, OR the data-out into it, write the result.
    OrWrite {
        /// First block.
        lba: u64,
        /// Block count (nonzero).
        blocks: u32,
    },
    /// COMPARE AND WRITE: data-out is `blocks` to compare then `blocks` to write.
    CompareAndWrite {
        /// First block.
        lba: u64,
        /// Block count (nonzero).
        blocks: u32,
    },
    /// WRITE SAME: one block of data-out (unless `ndob`) written `blocks` times.
    WriteSame {
        /// First block.
        lba: u64,
        /// Block count (nonzero).
        blocks: u32,
        /// UNMAP bit: deallocate when the data is zeroes.
        unmap: bool,
        /// No data-out buffer: write zeroes.
        ndob: bool,
    },
    /// UNMAP with a parameter list of `len` bytes.
    Unmap {
        /// Parameter list length.
        len: u32,
    },
    /// SYNCHRONIZE CACHE.
    Flush,
    /// MODE SELECT with a parameter list.
    ModeSelect {
        /// Parameter list length.
        len: u32,
        /// MODE SELECT(10) header layout.
        ten: bool,
    },
    /// PERSISTENT RESERVE IN (needs the LUN's reservation state).
    PrIn {
        /// Service action.
        sa: u8,
        /// Allocation length.
        alloc: u32,
    },
    /// PERSISTENT RESERVE OUT with a parameter list.
    PrOut {
        /// Service action.
        sa: u8,
        /// Scope and type byte.
        scope_type: u8,
        /// Parameter list length.
        len: u32,
    },
    /// RESERVE(6).
    Reserve6,
    /// RELEASE(6).
    Release6,
}

impl Op {
    /// Bytes of data-out the op needs.
    pub fn data_out_len(&self, bs: u32) -> u32 {
        match *self {
            Op::Write { blocks, .. } => blocks * bs,
            Op::Verify { blocks, bytchk, .. } => match bytchk {
                1 => blocks * bs,
                3 => bs,
                _ => 0,
            },
            Op::CompareAndWrite { blocks, .. } => 2 * blocks * bs,
            Op::OrWrite { blocks, .. } => blocks * bs,
            Op::WriteSame { ndob, .. } => {
                if ndob {
                    0
                } else {
                    bs
                }
            }
            Op::Unmap { len } | Op::ModeSelect { len, .. } | Op::PrOut { len, .. } => len,
            _ => 0,
        }
    }

    /// Bytes the op sends back as Data-In (before EDTL truncation).
    pub fn data_in_len(&self, bs: u32) -> u32 {
        match *self {
            Op::Read { blocks, .. } => blocks * bs,
            Op::Done(ref r) => r.data.len() as u32,
            _ => 0,
        }
    }
}

fn trunc(mut v: Vec<u8>, alloc: usize) -> Vec<u8> {
    v.truncate(alloc);
    v
}

/// How a CDB touches the medium, for reservation checks.
pub fn access_of(cdb: &[u8]) -> Access {
    match cdb[0] {
        0x08 | 0x28 | 0xa8 | 0x88 | 0x2f | 0xaf | 0x8f | 0x34 | 0x90 => Access::Read,
        0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x89 | 0x8b | 0x9c | 0x41 | 0x93
        | 0x42 | 0x35 | 0x91 | 0x15 | 0x55 | 0x1a | 0x5a | 0x1b | 0x1e | 0x04 => Access::Write,
        0x9e if cdb[1] & 0x1f == 0x12 => Access::Read,
        _ => Access::Any,
    }
}

/// Per I_T nexus and LUN state the SCSI layer keeps (sense for REQUEST SENSE,
/// PREVENT ALLOW MEDIUM REMOVAL).
#[derive(Clone, Debug, Default)]
pub struct NexusState {
    /// PREVENT MEDIUM REMOVAL is in effect.
    pub prevent: bool,
    /// The LUN's reset epoch this nexus last reported (a change is a unit
    /// attention). None until the first unit attention is reported: a new I_T
    /// nexus starts with POWER ON, RESET, OR BUS DEVICE RESET OCCURRED pending.
    pub ua_epoch: Option<u64>,
    /// The LUN's capacity epoch this nexus last reported (a change is the unit
    /// attention CAPACITY DATA HAS CHANGED). None until the nexus's first command
    /// that could report it: a new nexus hears of the power on instead.
    pub cap_epoch: Option<u64>,
}

impl NexusState {
    /// Whether command `opcode` gets the pending unit attention (POWER ON, RESET,
    /// OR BUS DEVICE RESET OCCURRED: 06h/29h/00h) instead of running, given the
    /// LUN's reset epoch; true consumes it. Pending when the nexus is new (like
    /// tgt: every nexus hears of the power on, so a host learns of a target
    /// restart and re-reads reservations and capacity) or the LUN was reset since
    /// this nexus last heard. INQUIRY and REPORT LUNS run and leave it pending;
    /// REQUEST SENSE consumes it and reports it as its sense data (SPC-4 5.14,
    /// UA_INTLCK_CTRL 00b; see [`request_sense`]).
    pub fn take_unit_attention(&mut self, lun_epoch: u64, opcode: u8) -> bool {
        if matches!(opcode, 0x12 | 0xa0) || self.ua_epoch == Some(lun_epoch) {
            return false;
        }
        self.ua_epoch = Some(lun_epoch);
        true
    }

    /// Whether command `opcode` gets CAPACITY DATA HAS CHANGED (06h/2Ah/09h)
    /// instead of running, given the LUN's capacity epoch; true consumes it, so
    /// each nexus hears of a resize once. Asked after
    /// [`NexusState::take_unit_attention`] (the power on or reset is reported
    /// first). A nexus that has not reported anything yet takes the current
    /// epoch silently: it reads the capacity after its power-on unit attention.
    /// INQUIRY and REPORT LUNS run and leave it pending; REQUEST SENSE consumes it.
    pub fn take_capacity_changed(&mut self, cap_epoch: u64, opcode: u8) -> bool {
        if matches!(opcode, 0x12 | 0xa0) {
            return false;
        }
        match self.cap_epoch.replace(cap_epoch) {
            None => false,
            Some(seen) => seen != cap_epoch,
        }
    }
}

/// Decodes and, where possible, answers a command. `luns` lists every LUN of the
/// target (REPORT LUNS); `lun` is None when the addressed LUN does not exist.
/// `swp` is the software write protect bit of the control mode page.
pub fn decode(
    cdb: &[u8; 16],
    lun: Option<&LunInfo>,
    luns: &[u64],
    nexus: &mut NexusState,
    swp: bool,
) -> Op {
    let opcode = cdb[0];
    // Commands valid on any LUN number.
    match opcode {
        0x12 => return Op::Done(inquiry(cdb, lun)),
        0xa0 => return Op::Done(report_luns(cdb, luns)),
        0x03 => return Op::Done(request_sense(cdb, None)),
        _ => {}
    }
    let Some(info) = lun else {
        return Op::Done(Response::check(sense::LUN_NOT_SUPPORTED));
    };
    match decode_lun(cdb, info, nexus, swp) {
        Ok(op) => op,
        Err(s) => Op::Done(Response::check(s)),
    }
}

fn control_ok(cdb: &[u8], len: usize) -> Result<(), Sense> {
    // NACA and the link bit are not supported.
    if cdb[len - 1] & 0x05 != 0 {
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    Ok(())
}

fn range_ok(info: &LunInfo, lba: u64, blocks: u64) -> Result<(), Sense> {
    // A zero-length transfer may name the block just past the end, no further.
    // Read once: a resize may change the capacity meanwhile.
    let cap = info.capacity.blocks();
    if lba > cap || (blocks > 0 && lba >= cap) {
        return Err(sense::LBA_OUT_OF_RANGE);
    }
    match lba.checked_add(blocks) {
        Some(end) if end <= cap => Ok(()),
        _ => Err(sense::LBA_OUT_OF_RANGE),
    }
}

/// Decodes a command for an existing LUN: one function per command (group).
fn decode_lun(
    cdb: &[u8; 16],
    info: &LunInfo,
    nexus: &mut NexusState,
    swp: bool,
) -> Result<Op, Sense> {
    match cdb[0] {
        0x00 => {
            control_ok(cdb, 6)?;
            good()
        }
        // READ 6/10/12/16
        0x08 | 0x28 | 0xa8 | 0x88 => read(cdb, info),
        // WRITE 6/10/12/16, WRITE AND VERIFY 10/12/16, WRITE ATOMIC(16), ORWRITE(16)
        0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x9c | 0x8b => write(cdb, info, swp),
        // VERIFY 10/12/16
        0x2f | 0xaf | 0x8f => verify(cdb, info),
        // PRE-FETCH 10/16: nothing to stage on these backends.
        0x34 | 0x90 => prefetch(cdb, info),
        // SYNCHRONIZE CACHE 10/16
        0x35 | 0x91 => synchronize_cache(cdb, info),
        // COMPARE AND WRITE
        0x89 => compare_and_write(cdb, info, swp),
        // WRITE SAME 10/16
        0x41 | 0x93 => write_same(cdb, info, swp),
        // UNMAP
        0x42 => unmap(cdb, info, swp),
        // READ CAPACITY(10)
        0x25 => read_capacity_10(cdb, info),
        // SERVICE ACTION IN(16): READ CAPACITY(16), GET LBA STATUS
        0x9e => service_action_in(cdb, info),
        // MODE SENSE 6/10
        0x1a | 0x5a => mode_sense(cdb, info, swp).map(Op::Done),
        // MODE SELECT 6/10
        0x15 | 0x55 => mode_select_cdb(cdb),
        // START STOP UNIT: the medium is not removable; power conditions are accepted.
        0x1b => start_stop_unit(cdb, nexus),
        // PREVENT ALLOW MEDIUM REMOVAL
        0x1e => prevent_allow_medium_removal(cdb, nexus),
        // READ DEFECT DATA 10/12: no defects.
        0x37 | 0xb7 => read_defect_data(cdb),
        // MAINTENANCE IN: REPORT TARGET PORT GROUPS
        0xa3 if cdb[1] & 0x1f == 0x0a => {
            control_ok(cdb, 12)?;
            alua::report_target_port_groups(cdb, &info.alua).map(|b| Op::Done(Response::good(b)))
        }
        // MAINTENANCE IN: REPORT SUPPORTED OPERATION CODES
        0xa3 if cdb[1] & 0x1f == 0x0c => report_opcodes(cdb).map(Op::Done),
        0x5e => persistent_reserve_in(cdb),
        0x5f => persistent_reserve_out(cdb),
        0x16 => {
            control_ok(cdb, 6)?;
            if cdb[1] & 0x01 != 0 {
                return Err(sense::INVALID_FIELD_IN_CDB); // third-party reservations
            }
            Ok(Op::Reserve6)
        }
        0x17 => {
            control_ok(cdb, 6)?;
            Ok(Op::Release6)
        }
        _ => Err(sense::INVALID_OPCODE),
    }
}

/// GOOD without data.
fn good() -> Result<Op, Sense> {
    Ok(Op::Done(Response::good(Vec::new())))
}

/// Writes are allowed (the LUN is not read-only, SWP is off).
fn write_ok(info: &LunInfo, swp: bool) -> Result<(), Sense> {
    if info.read_only || swp {
        Err(sense::WRITE_PROTECTED)
    } else {
        Ok(())
    }
}

/// PERSISTENT RESERVE IN.
fn persistent_reserve_in(cdb: &[u8; 16]) -> Result<Op, Sense> {
    control_ok(cdb, 10)?;
    let sa = cdb[1] & 0x1f;
    if sa > 3 {
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    Ok(Op::PrIn {
        sa,
        alloc: be16(cdb, 7) as u32,
    })
}

/// PERSISTENT RESERVE OUT.
fn persistent_reserve_out(cdb: &[u8; 16]) -> Result<Op, Sense> {
    control_ok(cdb, 10)?;
    let sa = cdb[1] & 0x1f;
    if sa > 6 {
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    let len = be32(cdb, 5);
    if len > MAX_PARAM_BYTES {
        return Err(sense::PARAM_LIST_LENGTH);
    }
    Ok(Op::PrOut {
        sa,
        scope_type: cdb[2],
        len,
    })
}

/// REQUEST SENSE: GOOD with the pending unit attention's sense data when there is
/// one (the caller has consumed it), else NO SENSE. Fixed format only: DESC=1 is an
/// invalid field, and the caller leaves a unit attention pending for it.
pub fn request_sense(cdb: &[u8; 16], pending: Option<Sense>) -> Response {
    if cdb[1] & 0x01 != 0 {
        return Response::check(sense::INVALID_FIELD_IN_CDB);
    }
    let s = pending
        .unwrap_or(Sense::new(sense::key::NO_SENSE, 0, 0))
        .to_fixed();
    Response::good(trunc(s.to_vec(), cdb[4] as usize))
}

fn report_luns(cdb: &[u8; 16], luns: &[u64]) -> Response {
    let alloc = be32(cdb, 6) as usize;
    if alloc < 16 {
        return Response::check(sense::INVALID_FIELD_IN_CDB);
    }
    if cdb[2] > 2 && !(0x10..=0x12).contains(&cdb[2]) {
        return Response::check(sense::INVALID_FIELD_IN_CDB);
    }
    let list: Vec<u64> = if cdb[2] == 1 || cdb[2] == 0x10 {
        Vec::new()
    } else {
        luns.to_vec()
    };
    let mut b = vec![0u8; 8];
    put32(&mut b, 0, (list.len() * 8) as u32);
    for l in list {
        b.extend_from_slice(&encode_lun(l).to_be_bytes());
    }
    Response::good(trunc(b, alloc))
}

/// The 8-byte LUN field for a LUN number (peripheral addressing below 256, flat
/// addressing above).
pub fn encode_lun(lun: u64) -> u64 {
    if lun < 256 {
        lun << 48
    } else {
        (0x4000 | (lun & 0x3fff)) << 48
    }
}

/// The LUN number in an 8-byte LUN field.
pub fn decode_lun_field(field: u64) -> u64 {
    let top = (field >> 48) as u16;
    match top >> 14 {
        0 => (top & 0xff) as u64,
        1 => (top & 0x3fff) as u64,
        _ => u64::MAX,
    }
}
