//! I/O commands (NVM command set): decode a submission queue entry into the
//! block operation to run. Pure logic: the queue pair moves data and submits.
//!
//! The reservation commands become [`IoPlan::Resv`]; [`super::resv`] runs them.

use super::nvme::{io_op, Sqe, Status};
use super::resv;
use super::subsys::Namespace;
use super::{MAX_ADMIN_DATA_BYTES, MAX_TRANSFER_BYTES};

/// Largest Compare: its data is held in memory until the read completes.
pub const MAX_COMPARE_BYTES: u64 = 64 << 10;
/// Most ranges of a Dataset Management command (the NR field's limit).
pub const MAX_DSM_RANGES: usize = 256;

/// What an I/O command does, in bytes of the namespace's bdev.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoPlan {
    /// Read `len` bytes at `off` into a pool buffer and send them.
    Read {
        /// Offset.
        off: u64,
        /// Length.
        len: u64,
    },
    /// Take `len` bytes from the host into a pool buffer and write them at `off`.
    Write {
        /// Offset.
        off: u64,
        /// Length.
        len: u64,
    },
    /// Make completed writes durable.
    Flush,
    /// Write zeroes over the range.
    WriteZeroes {
        /// Offset.
        off: u64,
        /// Length.
        len: u64,
    },
    /// Take `ranges` 16-byte range descriptors from the host; deallocate them
    /// when `deallocate` (mapped to the bdev's unmap), else nothing to do.
    Dsm {
        /// Number of ranges.
        ranges: usize,
        /// The AD attribute.
        deallocate: bool,
    },
    /// Take `len` bytes from the host, read the range and compare.
    Compare {
        /// Offset.
        off: u64,
        /// Length.
        len: u64,
    },
    /// A reservation command (Register, Report, Acquire, Release): `host`
    /// bytes from the host (kept in memory), `to_host` bytes of report data.
    Resv {
        /// The opcode.
        opcode: u8,
        /// Bytes from the host.
        host: u64,
        /// Bytes to the host (Report).
        to_host: u64,
    },
}

impl IoPlan {
    /// Bytes the host sends for this command.
    pub fn host_data_len(&self) -> u64 {
        match *self {
            IoPlan::Write { len, .. } | IoPlan::Compare { len, .. } => len,
            IoPlan::Dsm { ranges, .. } => ranges as u64 * 16,
            IoPlan::Resv { host, .. } => host,
            _ => 0,
        }
    }
    /// Bytes sent to the host.
    pub fn ctrl_data_len(&self) -> u64 {
        match *self {
            IoPlan::Read { len, .. } => len,
            IoPlan::Resv { to_host, .. } => to_host,
            _ => 0,
        }
    }
}

fn range(sqe: &Sqe, ns: &Namespace, limit: Option<u64>) -> Result<(u64, u64), Status> {
    let slba = u64::from(sqe.cdw(10)) | (u64::from(sqe.cdw(11)) << 32);
    let nlb = u64::from(sqe.cdw(12) & 0xffff) + 1;
    let bs = u64::from(ns.block_size());
    let end = slba.checked_add(nlb).ok_or(Status::LBA_RANGE)?;
    if end > ns.blocks() {
        return Err(Status::LBA_RANGE);
    }
    let len = nlb * bs;
    if limit.is_some_and(|l| len > l) {
        return Err(Status::INVALID_FIELD);
    }
    Ok((slba * bs, len))
}

/// Decodes an I/O command for namespace `ns`.
pub fn decode(sqe: &Sqe, ns: &Namespace) -> Result<IoPlan, Status> {
    let ro = ns.conf.read_only;
    match sqe.opcode() {
        io_op::READ => {
            let (off, len) = range(sqe, ns, Some(MAX_TRANSFER_BYTES as u64))?;
            Ok(IoPlan::Read { off, len })
        }
        io_op::WRITE | io_op::WRITE_ZEROES | io_op::DSM if ro => Err(Status::NS_WRITE_PROTECTED),
        io_op::WRITE => {
            let (off, len) = range(sqe, ns, Some(MAX_TRANSFER_BYTES as u64))?;
            Ok(IoPlan::Write { off, len })
        }
        io_op::FLUSH => Ok(IoPlan::Flush),
        io_op::WRITE_ZEROES => {
            let (off, len) = range(sqe, ns, None)?;
            Ok(IoPlan::WriteZeroes { off, len })
        }
        io_op::DSM => Ok(IoPlan::Dsm {
            ranges: (sqe.cdw(10) & 0xff) as usize + 1,
            deallocate: sqe.cdw(11) & 0x4 != 0,
        }),
        io_op::COMPARE => {
            let (off, len) = range(sqe, ns, Some(MAX_COMPARE_BYTES))?;
            Ok(IoPlan::Compare { off, len })
        }
        op if resv::is_resv(op) => {
            let to_host = if op == io_op::RESV_REPORT {
                let (len, _) = resv::report_params(sqe);
                if len > MAX_ADMIN_DATA_BYTES as u64 {
                    return Err(Status::INVALID_FIELD);
                }
                len
            } else {
                0
            };
            Ok(IoPlan::Resv {
                opcode: op,
                host: resv::host_data_len(op),
                to_host,
            })
        }
        _ => Err(Status::INVALID_OPCODE),
    }
}

/// The byte ranges of Dataset Management descriptors, checked against `ns`.
pub fn dsm_ranges(data: &[u8], ns: &Namespace) -> Result<Vec<(u64, u64)>, Status> {
    let bs = u64::from(ns.block_size());
    let mut out = Vec::with_capacity(data.len() / 16);
    for d in data.chunks_exact(16).take(MAX_DSM_RANGES) {
        let nlb = u64::from(super::pdu::le32(d, 4));
        let slba = super::pdu::le64(d, 8);
        if nlb == 0 {
            continue;
        }
        let end = slba.checked_add(nlb).ok_or(Status::LBA_RANGE)?;
        if end > ns.blocks() {
            return Err(Status::LBA_RANGE);
        }
        out.push((slba * bs, nlb * bs));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bdev::malloc::MallocBdev;
    use crate::frontend::nvmf::config::NamespaceConfig;
    use crate::frontend::nvmf::subsys::NsIdent;

    fn ns() -> Namespace {
        Namespace {
            conf: NamespaceConfig {
                nsid: 1,
                bdev: "m".into(),
                ..Default::default()
            },
            bdev: MallocBdev::new("m", 1 << 20, 512).unwrap(),
            ident: NsIdent::derive("m"),
            resv: crate::frontend::nvmf::resv::NsResv::local(Default::default(), None),
            desc: None,
        }
    }

    fn sqe(op: u8, slba: u64, nlb0: u16) -> Sqe {
        let mut s = [0u8; 64];
        s[0] = op;
        s[40..44].copy_from_slice(&(slba as u32).to_le_bytes());
        s[44..48].copy_from_slice(&((slba >> 32) as u32).to_le_bytes());
        s[48..50].copy_from_slice(&nlb0.to_le_bytes());
        Sqe(s)
    }

    #[test]
    fn reads_and_writes_are_bounded_by_the_namespace() {
        let n = ns();
        assert_eq!(
            decode(&sqe(io_op::READ, 2, 7), &n),
            Ok(IoPlan::Read {
                off: 1024,
                len: 4096
            })
        );
        assert_eq!(
            decode(&sqe(io_op::WRITE, 2047, 0), &n),
            Ok(IoPlan::Write {
                off: 2047 * 512,
                len: 512
            })
        );
        assert_eq!(
            decode(&sqe(io_op::WRITE, 2047, 1), &n),
            Err(Status::LBA_RANGE)
        );
        assert_eq!(
            decode(&sqe(io_op::READ, u64::MAX, 1), &n),
            Err(Status::LBA_RANGE)
        );
        assert_eq!(decode(&sqe(0x7e, 0, 0), &n), Err(Status::INVALID_OPCODE));
    }

    #[test]
    fn dsm_ranges_are_checked() {
        let n = ns();
        let mut d = vec![0u8; 32];
        d[4..8].copy_from_slice(&8u32.to_le_bytes());
        d[8..16].copy_from_slice(&16u64.to_le_bytes());
        d[20..24].copy_from_slice(&1u32.to_le_bytes());
        d[24..32].copy_from_slice(&2048u64.to_le_bytes());
        assert_eq!(dsm_ranges(&d, &n), Err(Status::LBA_RANGE));
        d[24..32].copy_from_slice(&2047u64.to_le_bytes());
        assert_eq!(
            dsm_ranges(&d, &n),
            Ok(vec![(16 * 512, 8 * 512), (2047 * 512, 512)])
        );
    }
}
