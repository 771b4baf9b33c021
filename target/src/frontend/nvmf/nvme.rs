//! NVMe definitions shared by the command layers: submission queue entries
//! (read-only views), completion queue entries, status codes, opcodes.

use super::pdu::{le16, le32, le64, SQE_LEN};

/// A status field value (SCT in bits 10:8, SC in bits 7:0, DNR in bit 14),
/// before the phase bit shift of the CQE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    /// Successful completion.
    pub const SUCCESS: Status = Status(0);
    /// Invalid command opcode.
    pub const INVALID_OPCODE: Status = Status::dnr(0, 0x01);
    /// Invalid field in command.
    pub const INVALID_FIELD: Status = Status::dnr(0, 0x02);
    /// Data transfer error.
    pub const DATA_TRANSFER: Status = Status(0x04);
    /// Internal error.
    pub const INTERNAL: Status = Status(0x06);
    /// Command abort requested.
    pub const ABORT_REQUESTED: Status = Status(0x07);
    /// Command Aborted due to Preempt and Abort (generic status 1Bh): a command of
    /// a host whose registration another host's Reservation Acquire (preempt and
    /// abort) removed.
    pub const PREEMPT_ABORTED: Status = Status(0x1B);
    /// Invalid namespace or format.
    pub const INVALID_NS: Status = Status::dnr(0, 0x0B);
    /// Command sequence error.
    pub const SEQUENCE: Status = Status::dnr(0, 0x0C);
    /// Data SGL length invalid.
    pub const SGL_LENGTH: Status = Status::dnr(0, 0x0F);
    /// SGL descriptor type invalid.
    pub const SGL_TYPE: Status = Status::dnr(0, 0x11);
    /// Command interrupted (NVMe 1.4+ generic status 21h, DNR clear): the
    /// controller could not complete the command now and the host should retry
    /// it. The answer when a bounded queue of the data plane was full
    /// ([`crate::bdev::RETRY_ERRNO`]): exactly its meaning, not a path error (SCT
    /// 3h would make a multipath host fail over, when the queue is this node's
    /// and a retry on the same path is what helps), and not Namespace Not Ready
    /// (82h), which says the namespace itself is unavailable (formatting,
    /// sanitizing). Linux retries a status without DNR on the same path.
    pub const COMMAND_INTERRUPTED: Status = Status(0x21);
    /// Transient transport error (a data digest error, for one).
    pub const TRANSIENT_TRANSPORT: Status = Status(0x22);
    /// LBA out of range.
    pub const LBA_RANGE: Status = Status::dnr(0, 0x80);
    /// Namespace is write protected.
    pub const NS_WRITE_PROTECTED: Status = Status::dnr(0, 0x20);
    /// Invalid queue identifier.
    pub const INVALID_QID: Status = Status::dnr(1, 0x01);
    /// Asynchronous event request limit exceeded.
    pub const AER_LIMIT: Status = Status::dnr(1, 0x05);
    /// Invalid log page.
    pub const INVALID_LOG_PAGE: Status = Status::dnr(1, 0x09);
    /// Feature identifier not saveable.
    pub const NOT_SAVEABLE: Status = Status::dnr(1, 0x0D);
    /// Connect: incompatible format.
    pub const CONNECT_FORMAT: Status = Status::dnr(1, 0x80);
    /// Connect: controller busy.
    pub const CONNECT_BUSY: Status = Status::dnr(1, 0x81);
    /// Connect: invalid parameters (dword 0 points at the field).
    pub const CONNECT_INVALID: Status = Status::dnr(1, 0x82);
    /// Connect: invalid host.
    pub const CONNECT_HOST: Status = Status::dnr(1, 0x84);
    /// Write fault.
    pub const WRITE_FAULT: Status = Status(0x280);
    /// Unrecovered read error.
    pub const READ_ERROR: Status = Status(0x281);
    /// Compare failure.
    pub const COMPARE_FAILURE: Status = Status::dnr(2, 0x85);
    /// Reservation conflict (the command is not allowed by the namespace's
    /// reservation).
    pub const RESERVATION_CONFLICT: Status = Status::dnr(0, 0x83);
    /// Namespace not ready, retryable (a reservation change the cluster could
    /// not run now).
    pub const NS_NOT_READY: Status = Status(0x82);
    /// Asymmetric access inaccessible (a path error: Linux fails over).
    pub const ANA_INACCESSIBLE: Status = Status(0x302);

    /// Status `sc` of type `sct` with Do Not Retry set.
    pub const fn dnr(sct: u16, sc: u16) -> Status {
        Status((sct << 8) | sc | 0x4000)
    }

    /// True for success.
    pub fn ok(self) -> bool {
        self.0 & 0x7ff == 0
    }
}

/// Admin opcodes.
pub mod admin_op {
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0A;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT: u8 = 0x0C;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Fabrics commands (the type is in byte 4).
    pub const FABRICS: u8 = 0x7F;
}

/// NVM command set opcodes.
pub mod io_op {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Compare.
    pub const COMPARE: u8 = 0x05;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DSM: u8 = 0x09;
    /// Reservation Register.
    pub const RESV_REGISTER: u8 = 0x0D;
    /// Reservation Report.
    pub const RESV_REPORT: u8 = 0x0E;
    /// Reservation Acquire.
    pub const RESV_ACQUIRE: u8 = 0x11;
    /// Reservation Release.
    pub const RESV_RELEASE: u8 = 0x15;
}

/// Fabrics command types.
pub mod fctype {
    /// Property Set.
    pub const PROPERTY_SET: u8 = 0x00;
    /// Connect.
    pub const CONNECT: u8 = 0x01;
    /// Property Get.
    pub const PROPERTY_GET: u8 = 0x04;
    /// Disconnect.
    pub const DISCONNECT: u8 = 0x08;
}

/// SGL descriptor types (byte 15 of the descriptor: type << 4 | subtype).
pub mod sgl {
    /// Data block, offset subtype: in-capsule data.
    pub const IN_CAPSULE: u8 = 0x01;
    /// Transport data block (TCP: data moved by H2CData / C2HData).
    pub const TRANSPORT: u8 = 0x5A;
}

/// A submission queue entry, read-only.
#[derive(Clone, Copy)]
pub struct Sqe(pub [u8; SQE_LEN]);

impl Sqe {
    /// From the 64 bytes after a CapsuleCmd's common header.
    pub fn from_slice(b: &[u8]) -> Sqe {
        let mut s = [0u8; SQE_LEN];
        let n = b.len().min(SQE_LEN);
        s[..n].copy_from_slice(&b[..n]);
        Sqe(s)
    }
    /// Opcode.
    pub fn opcode(&self) -> u8 {
        self.0[0]
    }
    /// Fused / PSDT flags.
    pub fn flags(&self) -> u8 {
        self.0[1]
    }
    /// Command identifier.
    pub fn cid(&self) -> u16 {
        le16(&self.0, 2)
    }
    /// Namespace id.
    pub fn nsid(&self) -> u32 {
        le32(&self.0, 4)
    }
    /// Fabrics command type (byte 4).
    pub fn fctype(&self) -> u8 {
        self.0[4]
    }
    /// SGL1's length.
    pub fn sgl_len(&self) -> u32 {
        le32(&self.0, 32)
    }
    /// SGL1's address / offset.
    pub fn sgl_addr(&self) -> u64 {
        le64(&self.0, 24)
    }
    /// SGL1's type byte.
    pub fn sgl_type(&self) -> u8 {
        self.0[39]
    }
    /// Command dword `n` (10..=15).
    pub fn cdw(&self, n: usize) -> u32 {
        le32(&self.0, n * 4)
    }
    /// Direction of the data: bits 1:0 of the opcode (fabrics: of the type):
    /// 1 host to controller, 2 controller to host.
    pub fn direction(&self) -> u8 {
        if self.opcode() == admin_op::FABRICS {
            self.fctype() & 3
        } else {
            self.opcode() & 3
        }
    }
}

/// A completion queue entry's content.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cqe {
    /// Command specific dword 0.
    pub dw0: u32,
    /// Command specific dword 1.
    pub dw1: u32,
    /// SQ head pointer.
    pub sqhd: u16,
    /// SQ id.
    pub sqid: u16,
    /// Command id.
    pub cid: u16,
    /// Status (without the phase bit).
    pub status: u16,
}

impl Cqe {
    /// The 16 bytes on the wire.
    pub fn bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.dw0.to_le_bytes());
        b[4..8].copy_from_slice(&self.dw1.to_le_bytes());
        b[8..10].copy_from_slice(&self.sqhd.to_le_bytes());
        b[10..12].copy_from_slice(&self.sqid.to_le_bytes());
        b[12..14].copy_from_slice(&self.cid.to_le_bytes());
        b[14..16].copy_from_slice(&(self.status << 1).to_le_bytes());
        b
    }
}

/// Copies `s` into `dst`, padded with `pad` (identify strings are space padded).
pub fn put_str(dst: &mut [u8], s: &str, pad: u8) {
    dst.fill(pad);
    let n = s.len().min(dst.len());
    dst[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Writes a little-endian value at `at`.
pub fn put16(dst: &mut [u8], at: usize, v: u16) {
    dst[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

/// Writes a little-endian value at `at`.
pub fn put32(dst: &mut [u8], at: usize, v: u32) {
    dst[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

/// Writes a little-endian value at `at`.
pub fn put64(dst: &mut [u8], at: usize, v: u64) {
    dst[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// A NUL-terminated (or full-length) string field of a Connect's data.
pub fn c_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).trim_end().to_string()
}
