//! The SCSI command layer (SPC-4 and SBC-3 for a direct-access block device) as
//! pure logic: [`decode`] turns a CDB into either a finished [`Response`] or an
//! [`Op`] that the connection carries out against the LUN's bdev (reads, writes,
//! compares, unmaps), and the helpers here finish those ops (compare buffers,
//! parse UNMAP and MODE SELECT parameter lists). No I/O happens in this file.

use super::alua;
use super::bytes::{be16, be32, be64, put16, put32, put64};
use super::lun::LunInfo;
use super::pr::Access;
use super::sense::{self, Sense};

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

/// One supported command: opcode, service action (if any), CDB usage mask.
struct CmdDesc {
    opcode: u8,
    sa: Option<u16>,
    usage: &'static [u8],
}

const fn c(opcode: u8, sa: Option<u16>, usage: &'static [u8]) -> CmdDesc {
    CmdDesc { opcode, sa, usage }
}

/// Every command this target implements, with its CDB usage data (REPORT
/// SUPPORTED OPERATION CODES). The first byte of each usage is the opcode.
static COMMANDS: &[CmdDesc] = &[
    c(0x00, None, &[0x00, 0, 0, 0, 0, 0x07]),
    c(0x03, None, &[0x03, 0x01, 0, 0, 0xff, 0x07]),
    c(0x08, None, &[0x08, 0x1f, 0xff, 0xff, 0xff, 0x07]),
    c(0x0a, None, &[0x0a, 0x1f, 0xff, 0xff, 0xff, 0x07]),
    c(0x12, None, &[0x12, 0x01, 0xff, 0xff, 0xff, 0x07]),
    c(0x15, None, &[0x15, 0x11, 0, 0, 0xff, 0x07]),
    c(0x16, None, &[0x16, 0, 0, 0, 0, 0x07]),
    c(0x17, None, &[0x17, 0, 0, 0, 0, 0x07]),
    c(0x1a, None, &[0x1a, 0x08, 0xff, 0xff, 0xff, 0x07]),
    c(0x1b, None, &[0x1b, 0x01, 0, 0x0f, 0xf7, 0x07]),
    c(0x1e, None, &[0x1e, 0, 0, 0, 0x03, 0x07]),
    c(0x25, None, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0x07]),
    c(
        0x28,
        None,
        &[0x28, 0x18, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    ),
    c(
        0x2a,
        None,
        &[0x2a, 0x18, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    ),
    c(
        0x2e,
        None,
        &[0x2e, 0x12, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    ),
    c(
        0x2f,
        None,
        &[0x2f, 0x16, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    ),
    c(
        0x34,
        None,
        &[0x34, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    ),
    c(
        0x35,
        None,
        &[0x35, 0x02, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    ),
    c(0x37, None, &[0x37, 0, 0x1f, 0, 0, 0, 0, 0xff, 0xff, 0x07]),
    c(
        0x41,
        None,
        &[0x41, 0x08, 0xff, 0xff, 0xff, 0xff, 0x1f, 0xff, 0xff, 0x07],
    ),
    c(0x42, None, &[0x42, 0, 0, 0, 0, 0, 0x1f, 0xff, 0xff, 0x07]),
    c(0x55, None, &[0x55, 0x11, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07]),
    c(
        0x5a,
        None,
        &[0x5a, 0x18, 0xff, 0xff, 0, 0, 0, 0xff, 0xff, 0x07],
    ),
    c(
        0x5e,
        Some(0),
        &[0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
    ),
    c(
        0x5e,
        Some(1),
        &[0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
    ),
    c(
        0x5e,
        Some(2),
        &[0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
    ),
    c(
        0x5e,
        Some(3),
        &[0x5e, 0x1f, 0, 0, 0, 0, 0, 0xff, 0xff, 0x07],
    ),
    c(
        0x5f,
        Some(0),
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
    ),
    c(
        0x5f,
        Some(1),
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
    ),
    c(
        0x5f,
        Some(2),
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
    ),
    c(
        0x5f,
        Some(3),
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
    ),
    c(
        0x5f,
        Some(4),
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
    ),
    c(
        0x5f,
        Some(5),
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
    ),
    c(
        0x5f,
        Some(6),
        &[0x5f, 0x1f, 0xff, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x07],
    ),
    c(
        0x88,
        None,
        &[
            0x88, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    ),
    c(
        0x89,
        None,
        &[
            0x89, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0xff, 0x1f, 0x07,
        ],
    ),
    c(
        0x8b,
        None,
        &[
            0x8b, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    ),
    c(
        0x9c,
        None,
        &[
            0x9c, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0xff, 0xff, 0x1f,
            0x07,
        ],
    ),
    c(
        0x8a,
        None,
        &[
            0x8a, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    ),
    c(
        0x8e,
        None,
        &[
            0x8e, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    ),
    c(
        0x8f,
        None,
        &[
            0x8f, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    ),
    c(
        0x90,
        None,
        &[
            0x90, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    ),
    c(
        0x91,
        None,
        &[
            0x91, 0x02, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    ),
    c(
        0x93,
        None,
        &[
            0x93, 0x09, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x1f, 0x07,
        ],
    ),
    c(
        0x9e,
        Some(0x10),
        &[
            0x9e, 0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0x07,
        ],
    ),
    c(
        0x9e,
        Some(0x12),
        &[
            0x9e, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0,
            0x07,
        ],
    ),
    c(
        0xa0,
        None,
        &[0xa0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07],
    ),
    c(
        0xa3,
        Some(0x0a),
        &[0xa3, 0xea, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07],
    ),
    c(
        0xa3,
        Some(0x0c),
        &[
            0xa3, 0x0c, 0x87, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0x07,
        ],
    ),
    c(
        0xa8,
        None,
        &[
            0xa8, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x07,
        ],
    ),
    c(
        0xaa,
        None,
        &[
            0xaa, 0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x07,
        ],
    ),
    c(
        0xae,
        None,
        &[
            0xae, 0x12, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x07,
        ],
    ),
    c(
        0xaf,
        None,
        &[
            0xaf, 0x16, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x1f, 0x07,
        ],
    ),
    c(
        0xb7,
        None,
        &[0xb7, 0, 0x1f, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0x07],
    ),
];

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
    if lba > info.num_blocks || (blocks > 0 && lba >= info.num_blocks) {
        return Err(sense::LBA_OUT_OF_RANGE);
    }
    match lba.checked_add(blocks) {
        Some(end) if end <= info.num_blocks => Ok(()),
        _ => Err(sense::LBA_OUT_OF_RANGE),
    }
}

fn rw_fields(cdb: &[u8]) -> (u64, u32, usize) {
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

/// READ 6/10/12/16
fn read(cdb: &[u8; 16], info: &LunInfo) -> Result<Op, Sense> {
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
fn write(cdb: &[u8; 16], info: &LunInfo, swp: bool) -> Result<Op, Sense> {
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
fn verify(cdb: &[u8; 16], info: &LunInfo) -> Result<Op, Sense> {
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
fn prefetch(cdb: &[u8; 16], info: &LunInfo) -> Result<Op, Sense> {
    let (lba, blocks, len) = rw_fields(cdb);
    control_ok(cdb, len)?;
    range_ok(info, lba, blocks as u64)?;
    good()
}

/// SYNCHRONIZE CACHE 10/16
fn synchronize_cache(cdb: &[u8; 16], info: &LunInfo) -> Result<Op, Sense> {
    let (lba, blocks, len) = rw_fields(cdb);
    control_ok(cdb, len)?;
    range_ok(info, lba, blocks as u64)?;
    Ok(Op::Flush)
}

/// COMPARE AND WRITE
fn compare_and_write(cdb: &[u8; 16], info: &LunInfo, swp: bool) -> Result<Op, Sense> {
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
fn write_same(cdb: &[u8; 16], info: &LunInfo, swp: bool) -> Result<Op, Sense> {
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
        if lba >= info.num_blocks {
            return Err(sense::LBA_OUT_OF_RANGE);
        }
        u32::try_from(info.num_blocks - lba).unwrap_or(u32::MAX)
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
fn unmap(cdb: &[u8; 16], info: &LunInfo, swp: bool) -> Result<Op, Sense> {
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
fn read_capacity_10(cdb: &[u8; 16], info: &LunInfo) -> Result<Op, Sense> {
    let bs = info.block_size;
    control_ok(cdb, 10)?;
    let mut b = vec![0u8; 8];
    let last = info.num_blocks.saturating_sub(1);
    put32(&mut b, 0, u32::try_from(last).unwrap_or(u32::MAX));
    put32(&mut b, 4, bs);
    Ok(Op::Done(Response::good(b)))
}

/// SERVICE ACTION IN(16): READ CAPACITY(16), GET LBA STATUS
fn service_action_in(cdb: &[u8; 16], info: &LunInfo) -> Result<Op, Sense> {
    let bs = info.block_size;
    control_ok(cdb, 16)?;
    let alloc = be32(cdb, 10) as usize;
    match cdb[1] & 0x1f {
        0x10 => {
            let mut b = vec![0u8; 32];
            put64(&mut b, 0, info.num_blocks.saturating_sub(1));
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
            if lba >= info.num_blocks {
                return Err(sense::LBA_OUT_OF_RANGE);
            }
            let mut b = vec![0u8; 24];
            put32(&mut b, 0, 20);
            put64(&mut b, 8, lba);
            let n = (info.num_blocks - lba).min(u32::MAX as u64) as u32;
            put32(&mut b, 16, n);
            b[20] = 0; // mapped
            Ok(Op::Done(Response::good(trunc(b, alloc))))
        }
        _ => Err(sense::INVALID_FIELD_IN_CDB),
    }
}

/// MODE SELECT 6/10
fn mode_select_cdb(cdb: &[u8; 16]) -> Result<Op, Sense> {
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

/// START STOP UNIT: the medium is not removable; power conditions are accepted.
fn start_stop_unit(cdb: &[u8; 16], nexus: &mut NexusState) -> Result<Op, Sense> {
    control_ok(cdb, 6)?;
    let loej = cdb[4] & 0x02 != 0;
    let start = cdb[4] & 0x01 != 0;
    if loej && !start && nexus.prevent {
        return Err(Sense::new(sense::key::ILLEGAL_REQUEST, 0x53, 0x02));
    }
    good()
}

/// PREVENT ALLOW MEDIUM REMOVAL
fn prevent_allow_medium_removal(cdb: &[u8; 16], nexus: &mut NexusState) -> Result<Op, Sense> {
    control_ok(cdb, 6)?;
    let p = cdb[4] & 0x03;
    if p > 1 {
        return Err(sense::INVALID_FIELD_IN_CDB);
    }
    nexus.prevent = p == 1;
    good()
}

/// READ DEFECT DATA 10/12: no defects.
fn read_defect_data(cdb: &[u8; 16]) -> Result<Op, Sense> {
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

fn inquiry(cdb: &[u8; 16], lun: Option<&LunInfo>) -> Response {
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
        return Response::good(trunc(b, alloc));
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
    let mut b = vec![pq, page, 0, 0];
    match page {
        0x00 => b.extend_from_slice(&[0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]),
        0x80 => b.extend_from_slice(info.ident.serial.as_bytes()),
        0x83 => {
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
        0xb0 => {
            b.resize(64, 0);
            b[4] = 0x00; // WSNZ=0: WRITE SAME with zero blocks runs to the end
            b[5] = info.max_caw_blocks() as u8;
            put16(&mut b, 6, 1);
            put32(&mut b, 8, info.max_xfer_blocks());
            put32(&mut b, 12, info.max_xfer_blocks());
            put32(&mut b, 20, MAX_UNMAP_BLOCKS);
            put32(&mut b, 24, MAX_UNMAP_DESCRIPTORS);
            put32(&mut b, 28, 1); // optimal unmap granularity
            put64(&mut b, 36, info.max_xfer_blocks() as u64);
            // Atomic writes: any aligned length up to the largest transfer.
            put32(&mut b, 44, info.max_xfer_blocks());
            put32(&mut b, 48, 1);
            put32(&mut b, 52, 1);
        }
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
        _ => return Response::check(sense::INVALID_FIELD_IN_CDB),
    }
    let n = (b.len() - 4) as u16;
    put16(&mut b, 2, n);
    Response::good(trunc(b, alloc))
}

/// Mode page `page` for page control `pc` (0 current, 1 changeable, 2 default).
/// `wce`: the LUN has a volatile write cache.
fn mode_page(page: u8, pc: u8, swp: bool, wce: bool) -> Option<Vec<u8>> {
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

fn mode_sense(cdb: &[u8; 16], info: &LunInfo, swp: bool) -> Result<Response, Sense> {
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
            put64(&mut bd, 0, info.num_blocks);
            put32(&mut bd, 12, info.block_size);
        } else {
            bd = vec![0u8; 8];
            put32(
                &mut bd,
                0,
                u32::try_from(info.num_blocks).unwrap_or(u32::MAX),
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

fn report_opcodes(cdb: &[u8; 16]) -> Result<Response, Sense> {
    let opts = cdb[2] & 0x07;
    let rctd = cdb[2] & 0x80 != 0;
    let req_op = cdb[3];
    let req_sa = be16(cdb, 4);
    let alloc = be32(cdb, 6) as usize;
    let timeouts = |b: &mut Vec<u8>| {
        let mut t = vec![0u8; 12];
        put16(&mut t, 0, 0x0a);
        put32(&mut t, 4, 30);
        put32(&mut t, 8, 30);
        b.extend(t);
    };
    let mut b;
    match opts {
        0 => {
            b = vec![0u8; 4];
            for d in COMMANDS {
                let mut e = vec![0u8; 8];
                e[0] = d.opcode;
                put16(&mut e, 2, d.sa.unwrap_or(0));
                e[5] = u8::from(d.sa.is_some()) | if rctd { 0x02 } else { 0 };
                put16(&mut e, 6, d.usage.len() as u16);
                b.extend(e);
                if rctd {
                    timeouts(&mut b);
                }
            }
            let n = (b.len() - 4) as u32;
            put32(&mut b, 0, n);
        }
        1..=3 => {
            let has_sa = COMMANDS
                .iter()
                .any(|d| d.opcode == req_op && d.sa.is_some());
            if (opts == 1 && has_sa)
                || (opts == 2 && !has_sa && COMMANDS.iter().any(|d| d.opcode == req_op))
            {
                return Err(sense::INVALID_FIELD_IN_CDB.at_cdb_byte(2));
            }
            let found = COMMANDS
                .iter()
                .find(|d| d.opcode == req_op && (opts == 1 || !has_sa || d.sa == Some(req_sa)));
            b = vec![0u8; 4];
            match found {
                Some(d) => {
                    b[1] = 0x03 | if rctd { 0x80 } else { 0 };
                    put16(&mut b, 2, d.usage.len() as u16);
                    b.extend_from_slice(d.usage);
                    if rctd {
                        timeouts(&mut b);
                    }
                }
                None => b[1] = 0x01,
            }
        }
        _ => return Err(sense::INVALID_FIELD_IN_CDB.at_cdb_byte(2)),
    }
    Ok(Response::good(trunc(b, alloc)))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frontend::scsi::alua::Alua;
    use crate::frontend::scsi::lun::Identity;

    fn info() -> LunInfo {
        LunInfo {
            lun: 0,
            block_size: 512,
            num_blocks: 2048,
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
}
