//! A minimal iSCSI initiator over a plain socket for multi-process tests: one
//! connection, one command at a time (and a write left waiting for its data),
//! no digests, every read bounded by a timeout. Enough to send any CDB (with
//! R2T-solicited data-out) and read status, sense and data-in through a node's
//! portal; a response for another task than the one waited for is an error.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use plexd_target::frontend::iscsi::pdu::{self, op, Bhs, Digests, BHS_LEN, RESERVED_TAG};

/// Longest wait for one PDU from the target (a PERSISTENT RESERVE OUT of a shared
/// volume waits for a cluster transaction, at most the target's 30 s bound).
pub const READ_TIMEOUT: Duration = Duration::from_secs(45);
/// Most data-out bytes sent with a command or in one Data-Out PDU.
const SEGMENT_BYTES: usize = 8192;
/// TEST UNIT READY attempts to clear unit attentions after login.
const MAX_UA_RETRIES: usize = 4;
/// Largest PDU accepted from the target.
const MAX_PDU_BYTES: usize = 1 << 24;

/// The outcome of one SCSI command.
#[derive(Debug, Clone)]
pub struct ScsiResult {
    /// SCSI status (0 GOOD, 2 CHECK CONDITION, 0x18 RESERVATION CONFLICT).
    pub status: u8,
    /// Data-in.
    pub data: Vec<u8>,
    /// Sense key of fixed-format sense data.
    pub sense_key: Option<u8>,
    /// (ASC, ASCQ) of fixed-format sense data.
    pub asc: Option<(u8, u8)>,
}

/// One logged-in session of one connection.
pub struct Initiator {
    s: TcpStream,
    cmdsn: u32,
    itt: u32,
}

impl Initiator {
    /// Connects to `portal` ("ip:port") and logs in to `target` as `initiator` with
    /// ISID `isid` (the initiator port is `initiator,i,0x<isid>`); errors say why.
    pub fn login(
        portal: &str,
        initiator: &str,
        isid: [u8; 6],
        target: &str,
    ) -> Result<Initiator, String> {
        let s = TcpStream::connect(portal).map_err(|e| format!("connect {portal}: {e}"))?;
        s.set_read_timeout(Some(READ_TIMEOUT))
            .map_err(|e| e.to_string())?;
        s.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut ini = Initiator {
            s,
            cmdsn: 1,
            itt: 1,
        };
        let mut b = Bhs::new(op::LOGIN_REQ, 0x87);
        b.byte(0, 0x40 | op::LOGIN_REQ);
        b.0[8..14].copy_from_slice(&isid);
        b.u32_at(16, ini.itt).u32_at(24, ini.cmdsn);
        let text = format!(
            "InitiatorName={initiator}\0TargetName={target}\0SessionType=Normal\0\
             HeaderDigest=None\0DataDigest=None\0MaxRecvDataSegmentLength=65536\0\
             ImmediateData=Yes\0InitialR2T=Yes\0FirstBurstLength=65536\0MaxBurstLength=262144\0"
        );
        ini.send(&b, text.as_bytes())?;
        let (bhs, _) = ini.recv()?;
        let status = pdu::be16(&bhs, 36);
        if pdu::opcode(&bhs) != op::LOGIN_RESP || status != 0 {
            return Err(format!(
                "login to {target} on {portal}: status {status:#06x}"
            ));
        }
        if bhs[1] & 0x83 != 0x83 {
            return Err(format!(
                "login to {target} on {portal}: not in full feature phase"
            ));
        }
        Ok(ini)
    }

    fn send(&mut self, bhs: &Bhs, data: &[u8]) -> Result<(), String> {
        let mut v = Vec::new();
        pdu::encode(&mut v, bhs, data, Digests::default());
        self.s.write_all(&v).map_err(|e| format!("send: {e}"))
    }

    fn recv(&mut self) -> Result<([u8; BHS_LEN], Vec<u8>), String> {
        let mut h = [0u8; BHS_LEN];
        self.s
            .read_exact(&mut h)
            .map_err(|e| format!("receive: {e}"))?;
        let total = pdu::wire_len(&h, Digests::default(), MAX_PDU_BYTES)
            .map_err(|e| format!("bad PDU header: {e:?}"))?;
        let mut rest = vec![0u8; total - BHS_LEN];
        self.s
            .read_exact(&mut rest)
            .map_err(|e| format!("receive: {e}"))?;
        let mut all = h.to_vec();
        all.extend_from_slice(&rest);
        match pdu::parse(&all, Digests::default(), MAX_PDU_BYTES) {
            Ok(pdu::Parsed::Pdu(p)) => Ok((*p.bhs, p.data.to_vec())),
            other => Err(format!("bad PDU: {:?}", other.map(|_| ()))),
        }
    }

    /// TEST UNIT READY until GOOD or not a unit attention (bounded): consumes the
    /// power-on unit attention of a new session, as initiators do.
    pub fn clear_ua(&mut self) -> Result<(), String> {
        for _ in 0..MAX_UA_RETRIES {
            let r = self.scsi(&[0u8; 6], None, 0)?;
            if r.sense_key != Some(6) {
                return Ok(());
            }
        }
        Err(format!(
            "TEST UNIT READY: still a unit attention after {MAX_UA_RETRIES} tries"
        ))
    }

    /// Runs one command on LUN 0: `write` is its data-out, `read_len` its
    /// allocation for data-in.
    pub fn scsi(
        &mut self,
        cdb: &[u8],
        write: Option<&[u8]>,
        read_len: u32,
    ) -> Result<ScsiResult, String> {
        let itt = self.itt;
        self.itt += 1;
        let mut flags = 0x80 | 0x01;
        let edtl = match write {
            Some(w) => {
                flags |= 0x20;
                w.len() as u32
            }
            None => {
                if read_len > 0 {
                    flags |= 0x40;
                }
                read_len
            }
        };
        let mut b = Bhs::new(op::SCSI_CMD, flags);
        b.u32_at(16, itt).u32_at(20, edtl).u32_at(24, self.cmdsn);
        b.0[32..32 + cdb.len()].copy_from_slice(cdb);
        self.cmdsn += 1;
        let imm = write
            .map(|w| &w[..w.len().min(SEGMENT_BYTES)])
            .unwrap_or(&[]);
        self.send(&b, imm)?;
        let mut data = Vec::new();
        loop {
            let (bhs, seg) = self.recv()?;
            match pdu::opcode(&bhs) {
                op::R2T => {
                    Self::check_itt(&bhs, itt)?;
                    let ttt = pdu::be32(&bhs, 20);
                    let off = pdu::be32(&bhs, 40) as usize;
                    let len = pdu::be32(&bhs, 44) as usize;
                    let w = write.ok_or("R2T for a command without data-out")?;
                    if off + len > w.len() {
                        return Err(format!("R2T beyond the data-out: {off}+{len}"));
                    }
                    let mut sent = 0;
                    let mut datasn = 0;
                    while sent < len {
                        let n = (len - sent).min(SEGMENT_BYTES);
                        let last = sent + n == len;
                        let mut d = Bhs::new(op::DATA_OUT, if last { 0x80 } else { 0 });
                        d.u32_at(16, itt)
                            .u32_at(20, ttt)
                            .u32_at(36, datasn)
                            .u32_at(40, (off + sent) as u32);
                        self.send(&d, &w[off + sent..off + sent + n])?;
                        sent += n;
                        datasn += 1;
                    }
                }
                op::DATA_IN => {
                    Self::check_itt(&bhs, itt)?;
                    data.extend_from_slice(&seg);
                    if bhs[1] & 0x01 != 0 {
                        return Ok(ScsiResult {
                            status: bhs[3],
                            data,
                            sense_key: None,
                            asc: None,
                        });
                    }
                }
                op::SCSI_RESP => {
                    Self::check_itt(&bhs, itt)?;
                    let fixed = seg.len() >= 2 + 14;
                    return Ok(ScsiResult {
                        status: bhs[3],
                        data,
                        sense_key: fixed.then(|| seg[2 + 2] & 0x0f),
                        asc: fixed.then(|| (seg[2 + 12], seg[2 + 13])),
                    });
                }
                op::NOP_IN => {
                    let mut a = Bhs::new(op::NOP_OUT, 0x80);
                    a.byte(0, 0x40 | op::NOP_OUT)
                        .u32_at(16, RESERVED_TAG)
                        .u32_at(20, pdu::be32(&bhs, 20))
                        .u32_at(24, self.cmdsn);
                    self.send(&a, &[])?;
                }
                other => return Err(format!("unexpected opcode {other:#x}")),
            }
        }
    }

    /// An error when PDU `bhs` is for another task than `itt` (a response to a
    /// command this initiator no longer waits for).
    fn check_itt(bhs: &[u8; BHS_LEN], itt: u32) -> Result<(), String> {
        let got = pdu::be32(bhs, 16);
        if got != itt {
            return Err(format!(
                "opcode {:#x} for ITT {got:#x} while waiting for ITT {itt:#x}",
                pdu::opcode(bhs)
            ));
        }
        Ok(())
    }

    /// Sends a WRITE(10) of `blocks` 512-byte blocks at `lba` with no immediate
    /// data and reads its R2T: (ITT, TTT, offset, length). Answer it with
    /// [`Initiator::send_data_out`].
    pub fn start_write10(&mut self, lba: u32, blocks: u16) -> Result<(u32, u32, u32, u32), String> {
        let itt = self.itt;
        self.itt += 1;
        let mut b = Bhs::new(op::SCSI_CMD, 0x80 | 0x20 | 0x01);
        b.u32_at(16, itt)
            .u32_at(20, blocks as u32 * 512)
            .u32_at(24, self.cmdsn);
        b.0[32] = 0x2a;
        b.0[34..38].copy_from_slice(&lba.to_be_bytes());
        b.0[39..41].copy_from_slice(&blocks.to_be_bytes());
        self.cmdsn += 1;
        self.send(&b, &[])?;
        let (bhs, _) = self.recv()?;
        if pdu::opcode(&bhs) != op::R2T {
            return Err(format!("opcode {:#x} instead of an R2T", pdu::opcode(&bhs)));
        }
        Self::check_itt(&bhs, itt)?;
        Ok((
            itt,
            pdu::be32(&bhs, 20),
            pdu::be32(&bhs, 40),
            pdu::be32(&bhs, 44),
        ))
    }

    /// Sends `data` at offset `off` of task `itt` answering R2T `ttt`, in
    /// Data-Out PDUs of at most 8 KiB, the last one final; reads nothing.
    pub fn send_data_out(
        &mut self,
        itt: u32,
        ttt: u32,
        off: u32,
        data: &[u8],
    ) -> Result<(), String> {
        let n = data.len().div_ceil(SEGMENT_BYTES);
        for (i, chunk) in data.chunks(SEGMENT_BYTES).enumerate() {
            let mut d = Bhs::new(op::DATA_OUT, if i + 1 == n { 0x80 } else { 0 });
            d.u32_at(16, itt)
                .u32_at(20, ttt)
                .u32_at(36, i as u32)
                .u32_at(40, off + (i * SEGMENT_BYTES) as u32);
            self.send(&d, chunk)?;
        }
        Ok(())
    }

    /// PERSISTENT RESERVE OUT: service action `sa`, type `ty`, reservation key
    /// `rkey`, service action reservation key `sakey`.
    pub fn pr_out(&mut self, sa: u8, ty: u8, rkey: u64, sakey: u64) -> Result<ScsiResult, String> {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x5f;
        cdb[1] = sa;
        cdb[2] = ty;
        cdb[8] = 24;
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&rkey.to_be_bytes());
        p[8..16].copy_from_slice(&sakey.to_be_bytes());
        self.scsi(&cdb, Some(&p), 0)
    }

    /// PERSISTENT RESERVE IN, READ KEYS: (generation, keys).
    pub fn read_keys(&mut self) -> Result<(u32, Vec<u64>), String> {
        let r = self.scsi(&[0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], None, 4096)?;
        if r.status != 0 || r.data.len() < 8 {
            return Err(format!("READ KEYS: {r:?}"));
        }
        let gen = u32::from_be_bytes([r.data[0], r.data[1], r.data[2], r.data[3]]);
        let n = u32::from_be_bytes([r.data[4], r.data[5], r.data[6], r.data[7]]) as usize / 8;
        let keys = (0..n)
            .filter_map(|i| r.data.get(8 + i * 8..16 + i * 8))
            .map(|b| u64::from_be_bytes(b.try_into().unwrap_or([0; 8])))
            .collect();
        Ok((gen, keys))
    }

    /// PERSISTENT RESERVE IN, READ RESERVATION: (holder's key, type), None when no
    /// reservation is held.
    pub fn read_reservation(&mut self) -> Result<Option<(u64, u8)>, String> {
        let r = self.scsi(&[0x5e, 1, 0, 0, 0, 0, 0, 0x10, 0, 0], None, 4096)?;
        if r.status != 0 || r.data.len() < 8 {
            return Err(format!("READ RESERVATION: {r:?}"));
        }
        if r.data.len() < 24 {
            return Ok(None);
        }
        let key = u64::from_be_bytes(r.data[8..16].try_into().unwrap_or([0; 8]));
        Ok(Some((key, r.data[21] & 0x0f)))
    }

    /// WRITE(10) of `data` (whole 512-byte blocks) at `lba`.
    pub fn write10(&mut self, lba: u32, data: &[u8]) -> Result<ScsiResult, String> {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x2a;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&((data.len() / 512) as u16).to_be_bytes());
        self.scsi(&cdb, Some(data), 0)
    }

    /// READ(10) of `blocks` 512-byte blocks at `lba`.
    pub fn read10(&mut self, lba: u32, blocks: u16) -> Result<ScsiResult, String> {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        self.scsi(&cdb, None, blocks as u32 * 512)
    }
}
