//! Fabrics Connect's parameters and the controller properties (CAP, VS, CC,
//! CSTS): pure functions over the command's bytes and the property values,
//! without the controller model, so the fuzz target
//! (`fuzz/fuzz_targets/nvmf_connect.rs`) runs exactly this code. `admin.rs`
//! applies them to a controller and re-exports them.

use super::nvme::{c_str, Sqe, Status};
use super::pdu::{le16, le32};

/// Entries of a queue (MQES + 1, MAXCMD): commands outstanding per queue pair.
pub const MAX_QUEUE_ENTRIES: usize = 128;
/// NVMe version reported: 1.4.
pub const VERSION: u32 = 0x0001_0400;
/// Size of the data of a Connect command.
pub const CONNECT_DATA_LEN: usize = 1024;

/// Property offsets.
pub mod prop {
    /// Controller capabilities (8 bytes).
    pub const CAP: u32 = 0x00;
    /// Version.
    pub const VS: u32 = 0x08;
    /// Controller configuration.
    pub const CC: u32 = 0x14;
    /// Controller status.
    pub const CSTS: u32 = 0x1C;
}

/// A parsed Connect command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectReq {
    /// Queue id (0: admin).
    pub qid: u16,
    /// Queue size, 0-based.
    pub sqsize: u16,
    /// Connect attributes (bit 2: SQ flow control disabled).
    pub cattr: u8,
    /// Keep alive timeout in ms.
    pub kato_ms: u32,
    /// Host identifier.
    pub hostid: [u8; 16],
    /// Controller id (0xFFFF: any, for the admin queue).
    pub cntlid: u16,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Host NQN.
    pub hostnqn: String,
}

/// Reads a Connect command and its data. Errors carry the status and dword 0
/// (the invalid parameter's attribute and offset).
pub fn parse_connect(sqe: &Sqe, d: &[u8]) -> Result<ConnectReq, (Status, u32)> {
    let recfmt = le16(&sqe.0, 40);
    if recfmt != 0 {
        return Err((Status::CONNECT_FORMAT, 0));
    }
    if d.len() < CONNECT_DATA_LEN {
        return Err((Status::SGL_LENGTH, 0));
    }
    let qid = le16(&sqe.0, 42);
    let sqsize = le16(&sqe.0, 44);
    // Invalid parameter in the command: IATTR 0, IPO = byte offset.
    if sqsize == 0 || u32::from(sqsize) >= MAX_QUEUE_ENTRIES as u32 {
        return Err((Status::CONNECT_INVALID, 44));
    }
    let mut hostid = [0u8; 16];
    hostid.copy_from_slice(&d[..16]);
    Ok(ConnectReq {
        qid,
        sqsize,
        cattr: sqe.0[46],
        kato_ms: le32(&sqe.0, 48),
        hostid,
        cntlid: le16(d, 16),
        subnqn: c_str(&d[256..512]),
        hostnqn: c_str(&d[512..768]),
    })
}

/// Dword 0 of a Connect failing on a field of its data at `offset`.
pub fn invalid_data_field(offset: u16) -> u32 {
    u32::from(offset) | (1 << 16)
}

/// The CAP property.
pub fn cap() -> u64 {
    let mqes = (MAX_QUEUE_ENTRIES - 1) as u64;
    // CQR, timeout 15 s (500 ms units), NVM command set.
    mqes | (1 << 16) | (30 << 24) | (1 << 37)
}

/// The value Property Get answers for the property at `off` (`eight`: an
/// 8-byte read, which CAP needs) given the controller's CC and CSTS.
pub fn property_value(off: u32, eight: bool, cc: u32, csts: u32) -> Result<u64, Status> {
    let v: u64 = match off {
        prop::CAP => cap(),
        prop::VS => VERSION.into(),
        prop::CC => cc.into(),
        prop::CSTS => csts.into(),
        _ => return Err(Status::INVALID_FIELD),
    };
    if !eight && off == prop::CAP {
        return Err(Status::INVALID_FIELD);
    }
    Ok(v)
}

/// What a Property Set did to the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CcChange {
    /// Nothing that matters.
    None,
    /// Enabled.
    Enabled,
    /// Disabled (reset): the I/O queues go.
    Disabled,
    /// Shutdown requested (done at once).
    Shutdown,
}

/// The outcome of writing CC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CcTransition {
    /// CSTS after the write.
    pub csts: u32,
    /// What changed (a shutdown wins over a disable written with it).
    pub change: CcChange,
    /// The controller's I/O queues must close (reset or shutdown).
    pub io_queues_close: bool,
}

/// CC goes from `old` to `new` with CSTS `csts`: CC.EN 0 -> 1 sets CSTS.RDY
/// (and clears SHST), 1 -> 0 clears it; CC.SHN set reports the shutdown
/// complete (SHST 2) at once, as nothing is cached here.
pub fn cc_transition(old: u32, new: u32, mut csts: u32) -> CcTransition {
    let mut change = CcChange::None;
    let mut close = false;
    if new & 1 != 0 && old & 1 == 0 {
        csts = (csts | 1) & !0xC;
        change = CcChange::Enabled;
    } else if new & 1 == 0 && old & 1 != 0 {
        csts &= !1;
        close = true;
        change = CcChange::Disabled;
    }
    if (new >> 14) & 3 != 0 && (old >> 14) & 3 == 0 {
        csts = (csts & !0xC) | (2 << 2);
        close = true;
        change = CcChange::Shutdown;
    }
    CcTransition {
        csts,
        change,
        io_queues_close: close,
    }
}
