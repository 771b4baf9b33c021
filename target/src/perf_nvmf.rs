//! plexperf's NVMe/TCP initiator (`plexperf --nvmf tcp://ADDR:PORT/NQN`): a small
//! host that measures an NVMe/TCP target from outside, for benchmarks and quick
//! tests (the kernel's initiator stays the reference in the VM tests).
//!
//! One admin queue (Connect, Property Set CC.EN and a wait for CSTS.RDY, Identify
//! controller and namespace, Set Features number of queues), then `qpairs` I/O
//! queue pairs, each a TCP connection driven by one thread that keeps `qd`
//! commands in flight: Read, and Write with its data in the capsule when it fits
//! the controller's in-capsule size (IOCCSZ), else after the R2Ts (up to 8
//! outstanding, the MAXR2T it announces) in H2CData PDUs of at most the ICResp's
//! MAXH2CDATA. The PDUs are encoded and parsed with the
//! target's own codec ([`crate::frontend::nvmf::pdu`]). The workloads, the
//! verification patterns and the result are those of [`crate::perf`].
//!
//! Every wait is bounded: socket reads and writes by [`IO_TIMEOUT`], the
//! controller's ready wait by [`READY_TIMEOUT`], the drain at the end by
//! [`crate::perf::STOP_TIMEOUT`], the receive buffer by the largest PDU.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::frontend::nvmf::fabrics::prop;
use crate::frontend::nvmf::nvme::{admin_op, fctype, io_op, put16, put32, put64, sgl};
use crate::frontend::nvmf::pdu::{self, flag, ty, Digests, Parsed, PduView};
use crate::perf::{
    fill_pattern, verify_offset, xorshift, JobResult, Workload, LATENCY_SAMPLE_EVERY, STOP_TIMEOUT,
};
use crate::reactor::thread_cpu_ns;

/// Longest a socket read or write may block: a target silent this long with
/// commands outstanding fails the run.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the controller may take to report CSTS.RDY after CC.EN (at most
/// CAP.TO, which the target may make shorter).
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Most I/O queue pairs (the target grants at most 64 I/O queues).
pub const MAX_QPAIRS: usize = 64;
/// Most commands in flight per queue pair: the SQ size asked at Connect (SQSIZE
/// is 0-based and must stay below MQES + 1 = 128 on plexd's target).
pub const MAX_QD_PER_QPAIR: u32 = 127;
/// Largest block size: one command's data (plexd's MDTS, 1 MiB).
pub const MAX_BLOCK_BYTES: u64 = 1 << 20;
/// Most PDUs one admin command may take before its response (C2HData pieces).
pub const MAX_PDUS_PER_ADMIN: usize = 256;
/// Size of an Identify data structure.
const IDENTIFY_LEN: usize = 4096;
/// Size of a Connect command's data.
const CONNECT_DATA_LEN: usize = 1024;
/// The host NQN plexperf connects as.
pub const HOST_NQN: &str = "nqn.2026-11.io.plexd:plexperf";
/// R2Ts a command may have outstanding (the ICReq's MAXR2T): all of the pieces
/// plexd's target asks a largest write in.
const MAX_R2T: u32 = crate::frontend::nvmf::MAX_R2T_PER_CMD as u32;
/// Bytes asked of one read(2) at least.
const READ_CHUNK: usize = 64 << 10;

/// A parsed `tcp://ADDR:PORT/NQN`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NvmfUrl {
    /// The target's listener.
    pub addr: SocketAddr,
    /// The subsystem NQN.
    pub nqn: String,
}

impl NvmfUrl {
    /// Parses `tcp://ADDR:PORT/NQN` (ADDR an IPv4 address or `[IPv6]`).
    pub fn parse(s: &str) -> Result<NvmfUrl, String> {
        let bad = |why: &str| format!("--nvmf {s:?}: {why} (expected tcp://ADDR:PORT/NQN)");
        let rest = s
            .strip_prefix("tcp://")
            .ok_or_else(|| bad("only the tcp transport is supported"))?;
        let (addr, nqn) = rest.split_once('/').ok_or_else(|| bad("no NQN"))?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| bad(&format!("{addr:?} is not ADDR:PORT")))?;
        if nqn.is_empty() || nqn.len() > 223 {
            return Err(bad("the NQN must be 1..=223 bytes"));
        }
        Ok(NvmfUrl {
            addr,
            nqn: nqn.to_string(),
        })
    }
}

impl fmt::Display for NvmfUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tcp://{}/{}", self.addr, self.nqn)
    }
}

/// Parses `none`, `header`, `data` or `both` (the digests asked in the ICReq).
pub fn parse_digests(s: &str) -> Result<Digests, String> {
    let (header, data) = match s {
        "none" => (false, false),
        "header" => (true, false),
        "data" => (false, true),
        "both" => (true, true),
        o => {
            return Err(format!(
                "--digest {o:?}: expected none, header, data or both"
            ))
        }
    };
    Ok(Digests { header, data })
}

/// An NVMe/TCP job.
#[derive(Clone, Debug)]
pub struct NvmfJobConfig {
    /// Target and subsystem.
    pub url: NvmfUrl,
    /// Namespace to load.
    pub nsid: u32,
    /// Digests to ask for.
    pub digests: Digests,
    /// Workload.
    pub workload: Workload,
    /// Bytes per I/O.
    pub block_bytes: u64,
    /// Commands in flight per queue pair.
    pub qd: u32,
    /// I/O queue pairs (one thread and one TCP connection each).
    pub qpairs: usize,
    /// Cores to pin the queue pairs' threads to, round-robin (empty: not pinned).
    pub cores: Vec<usize>,
    /// Seed of the offsets and patterns.
    pub seed: u64,
    /// How long to run.
    pub duration: Duration,
    /// Keep alive timeout asked at the admin Connect (zero: none); a Keep
    /// Alive goes out every half of it while the job runs.
    pub kato: Duration,
}

/// The keep alive timeout plexperf asks for unless told (the Linux host's).
pub const DEFAULT_KATO: Duration = Duration::from_secs(5);

/// A failure of the initiator, naming the target and the subsystem.
fn err(url: &NvmfUrl, what: &str, why: impl fmt::Display) -> String {
    format!("nvmf {url}: {what}: {why}")
}

/// A completion as received.
#[derive(Clone, Copy, Debug, Default)]
struct Completion {
    dw0: u32,
    dw1: u32,
    /// Status field without the phase bit.
    status: u16,
}

impl Completion {
    fn from_resp(hdr: &[u8]) -> Completion {
        Completion {
            dw0: pdu::le32(hdr, 8),
            dw1: pdu::le32(hdr, 12),
            status: pdu::le16(hdr, 22) >> 1,
        }
    }
    fn ok(&self) -> bool {
        self.status & 0x7ff == 0
    }
}

/// Status code type and code as text.
fn status_text(s: u16) -> String {
    let (sct, sc) = ((s >> 8) & 7, s & 0xff);
    let name = match (sct, sc) {
        (0, 0x02) => "invalid field",
        (0, 0x04) => "data transfer error",
        (0, 0x06) => "internal error",
        (0, 0x0B) => "invalid namespace",
        (0, 0x0C) => "command sequence error",
        (0, 0x21) => "command interrupted",
        (0, 0x22) => "transient transport error",
        (0, 0x80) => "LBA out of range",
        (0, 0x82) => "namespace not ready",
        (0, 0x83) => "reservation conflict",
        (1, 0x80) => "incompatible Connect format",
        (1, 0x81) => "controller busy",
        (1, 0x82) => "invalid Connect parameters",
        (1, 0x84) => "host not allowed",
        (2, 0x80) => "write fault",
        (2, 0x81) => "unrecovered read error",
        (3, 0x02) => "ANA inaccessible",
        _ => "error",
    };
    format!("{name} (SCT {sct:#x} SC {sc:#04x})")
}

/// A command's submission queue entry, built field by field.
struct SqeBuf([u8; pdu::SQE_LEN]);

impl SqeBuf {
    fn new(opcode: u8, cid: u16, nsid: u32) -> SqeBuf {
        let mut s = [0u8; pdu::SQE_LEN];
        s[0] = opcode;
        // PSDT: SGLs for the data.
        s[1] = 0x40;
        put16(&mut s, 2, cid);
        put32(&mut s, 4, nsid);
        SqeBuf(s)
    }
    /// SGL1: `len` bytes in the capsule (offset 0) or, not `inline`, a
    /// transport data block the controller moves with C2HData / R2T.
    fn sgl(mut self, len: u32, inline: bool) -> SqeBuf {
        put64(&mut self.0, 24, 0);
        put32(&mut self.0, 32, len);
        self.0[39] = if inline {
            sgl::IN_CAPSULE
        } else {
            sgl::TRANSPORT
        };
        self
    }
    fn cdw(mut self, n: usize, v: u32) -> SqeBuf {
        put32(&mut self.0, n * 4, v);
        self
    }
}

/// A receive buffer: bytes `start..end` are received and not yet consumed.
struct Rx {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Rx {
    fn new(cap: usize) -> Rx {
        Rx {
            buf: vec![0; cap],
            start: 0,
            end: 0,
        }
    }

    /// Reads once, with room for a PDU of `need` bytes from `start`.
    fn fill(&mut self, s: &mut TcpStream, need: usize) -> Result<(), String> {
        if need > self.buf.len() {
            return Err(format!(
                "a PDU of {need} bytes is larger than the receive buffer ({} bytes)",
                self.buf.len()
            ));
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0
            && (self.buf.len() - self.start < need || self.buf.len() - self.end < READ_CHUNK)
        {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        match s.read(&mut self.buf[self.end..]) {
            Ok(0) => Err("the target closed the connection".into()),
            Ok(n) => {
                self.end += n;
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                Err(format!("nothing received within {IO_TIMEOUT:?}"))
            }
            Err(e) => Err(format!("receive: {e}")),
        }
    }
}

/// Why a controller PDU cannot be used: the parse error, or a termination request.
fn bad_pdu(p: &PduView<'_>) -> String {
    if p.ty == ty::C2H_TERM {
        format!(
            "the target terminated the connection (FES {:#x}, FEI {})",
            pdu::le16(p.hdr, 8),
            pdu::le32(p.hdr, 10)
        )
    } else {
        format!("unexpected PDU type {:#04x}", p.ty)
    }
}

/// One connection (admin or I/O queue) after ICReq/ICResp.
struct Conn {
    url: NvmfUrl,
    /// "admin queue" or "I/O queue N", for errors.
    what: String,
    s: TcpStream,
    dig: Digests,
    /// The controller's data alignment for our data (CPDA).
    cpda: u8,
    /// Largest H2CData data section (MAXH2CDATA).
    maxh2c: usize,
    /// Largest data section accepted from the controller.
    max_data: usize,
    rx: Rx,
    tx: Vec<u8>,
}

impl Conn {
    /// Connects and exchanges ICReq/ICResp asking for `dig`.
    fn open(url: &NvmfUrl, what: &str, dig: Digests, max_data: usize) -> Result<Conn, String> {
        let e = |why: String| err(url, what, why);
        let s = TcpStream::connect_timeout(&url.addr, IO_TIMEOUT)
            .map_err(|x| e(format!("connect: {x}")))?;
        s.set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|_| s.set_write_timeout(Some(IO_TIMEOUT)))
            .and_then(|_| s.set_nodelay(true))
            .map_err(|x| e(format!("socket options: {x}")))?;
        let rx_cap = 2 * (pdu::DATA_HLEN + 2 * pdu::DIGEST_LEN + 256 + max_data) + READ_CHUNK;
        let mut c = Conn {
            url: url.clone(),
            what: what.to_string(),
            s,
            dig: Digests::default(),
            cpda: 0,
            maxh2c: 0,
            max_data,
            rx: Rx::new(rx_cap),
            tx: Vec::with_capacity(64 << 10),
        };
        let mut req = [0u8; pdu::IC_LEN - pdu::CH_LEN];
        // PFV 0, HPDA 0, digests, MAXR2T (0-based): as many R2Ts outstanding as
        // plexd's target gives one command, so a large write is not asked for
        // one piece per round trip.
        req[3] = u8::from(dig.header) | (u8::from(dig.data) << 1);
        req[4..8].copy_from_slice(&(MAX_R2T - 1).to_le_bytes());
        pdu::encode(&mut c.tx, ty::IC_REQ, 0, &req, &[], Digests::default(), 0);
        c.flush()?;
        let (granted, cpda, maxh2c) = loop {
            match pdu::parse_ctrl(&c.rx.buf[c.rx.start..c.rx.end], Digests::default(), 4096) {
                Ok(Parsed::Need(n)) => {
                    c.rx.fill(&mut c.s, n)
                        .map_err(|x| e(format!("ICResp: {x}")))?
                }
                Ok(Parsed::Pdu(p)) if p.ty == ty::IC_RESP => {
                    let h = p.hdr;
                    let d = h.get(11).copied().unwrap_or(0);
                    let pfv = pdu::le16(h, 8);
                    if pfv != 0 {
                        return Err(e(format!("ICResp with PDU format version {pfv}")));
                    }
                    c.rx.start += p.wire_len;
                    break (
                        Digests {
                            header: d & 1 != 0,
                            data: d & 2 != 0,
                        },
                        h.get(10).copied().unwrap_or(0),
                        pdu::le32(h, 12) as usize,
                    );
                }
                Ok(Parsed::Pdu(p)) => return Err(e(format!("ICResp: {}", bad_pdu(&p)))),
                Err(x) => return Err(e(format!("ICResp: {x}"))),
            }
        };
        if granted != dig {
            return Err(e(format!(
                "asked for digests {dig:?}, the target granted {granted:?}"
            )));
        }
        if maxh2c < 4096 {
            return Err(e(format!("MAXH2CDATA {maxh2c} is below 4096")));
        }
        c.dig = granted;
        c.cpda = cpda;
        c.maxh2c = maxh2c;
        Ok(c)
    }

    fn fail(&self, why: impl fmt::Display) -> String {
        err(&self.url, &self.what, why)
    }

    /// Sends what `tx` holds.
    fn flush(&mut self) -> Result<(), String> {
        if self.tx.is_empty() {
            return Ok(());
        }
        let r = self.s.write_all(&self.tx);
        self.tx.clear();
        r.map_err(|x| self.fail(format!("send: {x}")))
    }

    /// Queues a command capsule (with in-capsule `data`).
    fn push_cmd(&mut self, sqe: &SqeBuf, data: &[u8]) {
        pdu::encode(
            &mut self.tx,
            ty::CAPSULE_CMD,
            0,
            &sqe.0,
            data,
            self.dig,
            self.cpda,
        );
    }

    /// Queues the H2CData PDUs answering an R2T for `data[off..off + len]`.
    fn push_h2c(&mut self, cid: u16, ttag: u16, data: &[u8], off: usize, len: usize) {
        let mut o = off;
        while o < off + len {
            let n = (off + len - o).min(self.maxh2c);
            let last = o + n == off + len;
            let h = pdu::data_hdr(cid, ttag, o as u32, n as u32);
            let f = if last { flag::LAST_PDU } else { 0 };
            pdu::encode(
                &mut self.tx,
                ty::H2C_DATA,
                f,
                &h,
                &data[o..o + n],
                self.dig,
                self.cpda,
            );
            o += n;
        }
    }

    /// Runs one command to completion (admin commands and Connect): `out` is
    /// sent in the capsule, `read_len` bytes are expected back.
    fn exec(
        &mut self,
        sqe: SqeBuf,
        out: &[u8],
        read_len: usize,
    ) -> Result<(Completion, Vec<u8>), String> {
        let cid = pdu::le16(&sqe.0, 2);
        let sqe = if out.is_empty() {
            sqe.sgl(read_len as u32, false)
        } else {
            sqe.sgl(out.len() as u32, true)
        };
        self.push_cmd(&sqe, out);
        self.flush()?;
        let mut data = vec![0u8; read_len];
        for _ in 0..MAX_PDUS_PER_ADMIN {
            let (dig, max) = (self.dig, self.max_data);
            let p = match pdu::parse_ctrl(&self.rx.buf[self.rx.start..self.rx.end], dig, max) {
                Ok(Parsed::Need(n)) => {
                    let r = self.rx.fill(&mut self.s, n);
                    r.map_err(|x| self.fail(x))?;
                    continue;
                }
                Ok(Parsed::Pdu(p)) => p,
                Err(x) => return Err(self.fail(x)),
            };
            let wire = p.wire_len;
            if p.data_digest_bad {
                return Err(self.fail("data digest error"));
            }
            match p.ty {
                ty::C2H_DATA if pdu::le16(p.hdr, 8) == cid => {
                    let off = pdu::le32(p.hdr, 12) as usize;
                    let end = off + p.data.len();
                    if end > data.len() {
                        return Err(self.fail(format!("C2HData past the {read_len} bytes asked")));
                    }
                    data[off..end].copy_from_slice(p.data);
                    let success = p.flags & flag::SUCCESS != 0;
                    self.rx.start += wire;
                    if success {
                        return Ok((Completion::default(), data));
                    }
                }
                ty::CAPSULE_RESP if pdu::le16(p.hdr, 20) == cid => {
                    let c = Completion::from_resp(p.hdr);
                    self.rx.start += wire;
                    return Ok((c, data));
                }
                _ => {
                    let why = bad_pdu(&p);
                    return Err(self.fail(why));
                }
            }
        }
        Err(self.fail(format!("no response within {MAX_PDUS_PER_ADMIN} PDUs")))
    }

    /// Fabrics Connect of queue `qid` with `sqsize` (0-based) entries and
    /// keep alive timeout `kato` (the admin queue's; zero: none).
    fn connect(
        &mut self,
        qid: u16,
        sqsize: u16,
        cntlid: u16,
        hostid: &[u8; 16],
        kato: Duration,
    ) -> Result<u16, String> {
        let mut sqe = SqeBuf::new(admin_op::FABRICS, 0, 0);
        sqe.0[4] = fctype::CONNECT;
        put16(&mut sqe.0, 42, qid);
        put16(&mut sqe.0, 44, sqsize);
        put32(
            &mut sqe.0,
            48,
            kato.as_millis().min(u128::from(u32::MAX)) as u32,
        );
        // CATTR 0: SQ flow control on (the response capsule of each command
        // carries SQHD), as the Linux host does.
        let mut d = vec![0u8; CONNECT_DATA_LEN];
        d[..16].copy_from_slice(hostid);
        put16(&mut d, 16, cntlid);
        d[256..256 + self.url.nqn.len()].copy_from_slice(self.url.nqn.as_bytes());
        d[512..512 + HOST_NQN.len()].copy_from_slice(HOST_NQN.as_bytes());
        let (c, _) = self.exec(sqe, &d, 0)?;
        if !c.ok() {
            let mut why = format!("Connect refused: {}", status_text(c.status));
            if c.status & 0x7ff == 0x182 {
                let off = c.dw0 & 0xffff;
                let field = match (c.dw0 >> 16 & 1, off) {
                    (1, 256) => " (subsystem NQN unknown)".to_string(),
                    (1, 512) => " (host NQN refused)".to_string(),
                    (1, 16) => " (controller id unknown)".to_string(),
                    (a, o) => format!(" (attribute {a}, offset {o})"),
                };
                why.push_str(&field);
            }
            return Err(self.fail(why));
        }
        Ok(c.dw0 as u16)
    }

    fn prop_get(&mut self, off: u32, eight: bool) -> Result<u64, String> {
        let mut sqe = SqeBuf::new(admin_op::FABRICS, 1, 0);
        sqe.0[4] = fctype::PROPERTY_GET;
        sqe.0[40] = u8::from(eight);
        let (c, _) = self.exec(sqe.cdw(11, off), &[], 0)?;
        if !c.ok() {
            return Err(self.fail(format!("Property Get {off:#x}: {}", status_text(c.status))));
        }
        Ok(u64::from(c.dw0) | (u64::from(c.dw1) << 32))
    }

    fn prop_set(&mut self, off: u32, v: u32) -> Result<(), String> {
        let mut sqe = SqeBuf::new(admin_op::FABRICS, 2, 0);
        sqe.0[4] = fctype::PROPERTY_SET;
        let (c, _) = self.exec(sqe.cdw(11, off).cdw(12, v), &[], 0)?;
        if !c.ok() {
            return Err(self.fail(format!("Property Set {off:#x}: {}", status_text(c.status))));
        }
        Ok(())
    }

    fn admin(
        &mut self,
        opcode: u8,
        nsid: u32,
        cdw10: u32,
        cdw11: u32,
        read_len: usize,
    ) -> Result<(u32, Vec<u8>), String> {
        let sqe = SqeBuf::new(opcode, 3, nsid).cdw(10, cdw10).cdw(11, cdw11);
        let (c, d) = self.exec(sqe, &[], read_len)?;
        if !c.ok() {
            return Err(self.fail(format!(
                "admin command {opcode:#04x} (nsid {nsid}, cdw10 {cdw10:#x}): {}",
                status_text(c.status)
            )));
        }
        Ok((c.dw0, d))
    }
}

/// The controller as the admin queue found it.
struct Controller {
    admin: Conn,
    cntlid: u16,
    hostid: [u8; 16],
    /// Largest in-capsule data of an I/O command (IOCCSZ).
    icd_bytes: usize,
    /// I/O queues granted.
    io_queues: usize,
    /// Most entries per queue (CAP.MQES + 1).
    mqes: u32,
    /// The namespace's size and block size.
    ns_bytes: u64,
    lba_bytes: u64,
}

/// Admin queue: Connect, enable, Identify, number of queues.
fn open_controller(cfg: &NvmfJobConfig) -> Result<Controller, String> {
    let mut a = Conn::open(&cfg.url, "admin queue", cfg.digests, IDENTIFY_LEN)?;
    let mut hostid = [0u8; 16];
    hostid[..8].copy_from_slice(&(0x706c_6578_7065_7266u64).to_be_bytes());
    hostid[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    let cntlid = a.connect(0, 31, 0xFFFF, &hostid, cfg.kato)?;
    let cap = a.prop_get(prop::CAP, true)?;
    let mqes = (cap & 0xffff) as u32 + 1;
    let to = Duration::from_millis(((cap >> 24) & 0xff).max(1) * 500).min(READY_TIMEOUT);
    // CC: EN, IOSQES 6 (64-byte entries), IOCQES 4 (16 bytes).
    a.prop_set(prop::CC, 1 | (6 << 16) | (4 << 20))?;
    let deadline = Instant::now() + to;
    loop {
        let csts = a.prop_get(prop::CSTS, false)?;
        if csts & 2 != 0 {
            return Err(a.fail("controller fatal status (CSTS.CFS) after enabling"));
        }
        if csts & 1 != 0 {
            break;
        }
        if Instant::now() >= deadline {
            return Err(a.fail(format!("CSTS.RDY not set within {to:?} of CC.EN")));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (_, id) = a.admin(admin_op::IDENTIFY, 0, 1, 0, IDENTIFY_LEN)?;
    let ioccsz = pdu::le32(&id, 1792) as usize;
    let icd_bytes = (ioccsz * 16).saturating_sub(pdu::SQE_LEN);
    let want = (cfg.qpairs as u32).saturating_sub(1);
    let (granted, _) = a.admin(admin_op::SET_FEATURES, 0, 0x07, want | (want << 16), 0)?;
    let io_queues = ((granted & 0xffff).min(granted >> 16) + 1) as usize;
    let (_, ns) = a.admin(admin_op::IDENTIFY, cfg.nsid, 0, 0, IDENTIFY_LEN)?;
    let nsze = pdu::le64(&ns, 0);
    let flbas = (ns.get(26).copied().unwrap_or(0) & 0xF) as usize;
    let lbads = ns.get(128 + 4 * flbas + 2).copied().unwrap_or(0);
    if nsze == 0 || !(9..=16).contains(&lbads) {
        return Err(a.fail(format!(
            "namespace {} is not active (NSZE {nsze}, LBADS {lbads})",
            cfg.nsid
        )));
    }
    let lba_bytes = 1u64 << lbads;
    Ok(Controller {
        admin: a,
        cntlid,
        hostid,
        icd_bytes,
        io_queues,
        mqes,
        ns_bytes: nsze * lba_bytes,
        lba_bytes,
    })
}

/// One command slot of a queue pair.
struct Slot {
    /// Data written, or read into (by a verify round; other reads drop it).
    buf: Vec<u8>,
    offset: u64,
    /// TSC reading at submit, 0 when this I/O is not sampled.
    start: u64,
    /// Bytes of C2HData received.
    got: usize,
    /// Opcode in flight, 0 when idle.
    opcode: u8,
    generation: u64,
}

/// What one queue pair measured.
#[derive(Default)]
struct Part {
    ios: u64,
    bytes: u64,
    failed: u64,
    verify_errors: u64,
    hist: Option<Histogram<u64>>,
    first_mismatch: Option<String>,
    cpu_ns: u64,
}

/// One I/O queue pair's run state (everything but the connection).
struct Qpair<'a> {
    cfg: &'a NvmfJobConfig,
    index: usize,
    nsid: u32,
    lba_bytes: u64,
    icd_bytes: usize,
    blocks: u64,
    slots: Vec<Slot>,
    busy: usize,
    rng: u64,
    seq: u64,
    submitted: u64,
    clock: quanta::Clock,
    part: Part,
}

const OP_WRITE: u8 = io_op::WRITE;
const OP_READ: u8 = io_op::READ;

impl Qpair<'_> {
    fn rand(&mut self) -> u64 {
        xorshift(&mut self.rng)
    }

    fn pick_offset(&mut self, i: usize) -> u64 {
        let bs = self.cfg.block_bytes;
        match self.cfg.workload {
            Workload::Read | Workload::Write => {
                let s = self.seq;
                self.seq = (s + 1) % self.blocks;
                s * bs
            }
            Workload::Verify => {
                let slot_count = (self.cfg.qpairs * self.slots.len()) as u64;
                let global = (self.index * self.slots.len() + i) as u64;
                let r = self.rand();
                verify_offset(self.blocks, slot_count, global, r) * bs
            }
            _ => (self.rand() % self.blocks) * bs,
        }
    }

    fn opcode_for(&mut self) -> u8 {
        match self.cfg.workload {
            Workload::Read | Workload::RandRead => OP_READ,
            Workload::Write | Workload::RandWrite | Workload::Verify => OP_WRITE,
            Workload::RandRw(pct) => {
                if self.rand() % 100 < u64::from(pct) {
                    OP_READ
                } else {
                    OP_WRITE
                }
            }
        }
    }

    /// Starts slot `i`'s next I/O (a verify round starts with its write).
    fn start_slot(&mut self, c: &mut Conn, i: usize) {
        let off = self.pick_offset(i);
        let op = self.opcode_for();
        let s = &mut self.slots[i];
        s.offset = off;
        if self.cfg.workload == Workload::Verify {
            s.generation += 1;
            fill_pattern(
                &mut s.buf,
                self.cfg.seed,
                off,
                s.generation * 1_000_003 + (self.index * 65536 + i) as u64,
            );
        }
        self.submit(c, i, op);
    }

    fn submit(&mut self, c: &mut Conn, i: usize, op: u8) {
        self.submitted = self.submitted.wrapping_add(1);
        let sampled = self.submitted.is_multiple_of(LATENCY_SAMPLE_EVERY);
        let start = if sampled { self.clock.raw().max(1) } else { 0 };
        let bs = self.cfg.block_bytes;
        let s = &mut self.slots[i];
        s.start = start;
        s.got = 0;
        s.opcode = op;
        self.busy += 1;
        let slba = s.offset / self.lba_bytes;
        let nlb = (bs / self.lba_bytes - 1) as u32;
        let inline = op == OP_WRITE && bs as usize <= self.icd_bytes;
        let sqe = SqeBuf::new(op, i as u16, self.nsid)
            .sgl(bs as u32, inline)
            .cdw(10, slba as u32)
            .cdw(11, (slba >> 32) as u32)
            .cdw(12, nlb);
        c.push_cmd(&sqe, if inline { &s.buf } else { &[] });
    }

    /// Handles one PDU of the controller; Err ends the queue pair.
    fn on_pdu(&mut self, c: &mut Conn, p: &PduView<'_>, stopping: bool) -> Result<(), String> {
        if p.data_digest_bad {
            return Err(c.fail("data digest error in a C2HData PDU"));
        }
        let cid = pdu::le16(p.hdr, if p.ty == ty::CAPSULE_RESP { 20 } else { 8 }) as usize;
        let bs = self.cfg.block_bytes as usize;
        match p.ty {
            ty::C2H_DATA | ty::R2T | ty::CAPSULE_RESP => {}
            _ => return Err(c.fail(bad_pdu(p))),
        }
        let Some(s) = self.slots.get_mut(cid).filter(|s| s.opcode != 0) else {
            return Err(c.fail(format!(
                "PDU type {:#04x} for command {cid}, not outstanding",
                p.ty
            )));
        };
        match p.ty {
            ty::C2H_DATA => {
                let off = pdu::le32(p.hdr, 12) as usize;
                if s.opcode != OP_READ || off != s.got || off + p.data.len() > bs {
                    return Err(c.fail(format!(
                        "C2HData for command {cid} at {off}+{} out of order or range",
                        p.data.len()
                    )));
                }
                // Only a verify round looks at what it read.
                if self.cfg.workload == Workload::Verify {
                    s.buf[off..off + p.data.len()].copy_from_slice(p.data);
                }
                s.got += p.data.len();
                if p.flags & flag::SUCCESS != 0 {
                    self.complete(c, cid, 0, stopping);
                }
            }
            ty::R2T => {
                let ttag = pdu::le16(p.hdr, 10);
                let off = pdu::le32(p.hdr, 12) as usize;
                let len = pdu::le32(p.hdr, 16) as usize;
                if s.opcode != OP_WRITE || off + len > bs {
                    return Err(
                        c.fail(format!("R2T for command {cid} at {off}+{len} out of range"))
                    );
                }
                c.push_h2c(cid as u16, ttag, &s.buf, off, len);
            }
            _ => {
                let status = Completion::from_resp(p.hdr).status & 0x7ff;
                if status == 0 && s.opcode == OP_READ && s.got != bs {
                    return Err(
                        c.fail(format!("read {cid} completed with {} of {bs} bytes", s.got))
                    );
                }
                self.complete(c, cid, status, stopping);
            }
        }
        Ok(())
    }

    fn complete(&mut self, c: &mut Conn, i: usize, status: u16, stopping: bool) {
        self.busy -= 1;
        let bs = self.cfg.block_bytes;
        let s = &mut self.slots[i];
        let op = std::mem::replace(&mut s.opcode, 0);
        let p = &mut self.part;
        p.ios += 1;
        p.bytes += bs;
        if s.start != 0 {
            let lat = self.clock.delta_as_nanos(s.start, self.clock.raw());
            if let Some(h) = p.hist.as_mut() {
                let _ = h.record(lat.max(1));
            }
        }
        if status != 0 {
            p.failed += 1;
            if p.failed <= 3 {
                log::error!(
                    "nvmf {} queue pair {}: {} at {} failed: {}",
                    self.cfg.url,
                    self.index + 1,
                    if op == OP_READ { "read" } else { "write" },
                    s.offset,
                    status_text(status)
                );
            }
        }
        if self.cfg.workload == Workload::Verify && status == 0 {
            if op == OP_WRITE {
                s.buf.fill(0xEE);
                self.submit(c, i, OP_READ);
                return;
            }
            let mut expect = vec![0u8; bs as usize];
            fill_pattern(
                &mut expect,
                self.cfg.seed,
                s.offset,
                s.generation * 1_000_003 + (self.index * 65536 + i) as u64,
            );
            if s.buf != expect {
                p.verify_errors += 1;
                if p.first_mismatch.is_none() {
                    let at = s
                        .buf
                        .iter()
                        .zip(&expect)
                        .position(|(a, b)| a != b)
                        .unwrap_or(0);
                    p.first_mismatch = Some(format!(
                        "nvmf {} nsid {}: data mismatch at offset {} (+{at}) on queue pair {}",
                        self.cfg.url,
                        self.nsid,
                        s.offset,
                        self.index + 1
                    ));
                }
            }
        }
        if !stopping {
            self.start_slot(c, i);
        }
    }
}

/// Runs one I/O queue pair until `stop`, then drains it.
fn run_qpair(mut c: Conn, mut q: Qpair<'_>, stop: &AtomicBool) -> Result<Part, String> {
    let cpu_start = thread_cpu_ns();
    let mut rx = std::mem::replace(&mut c.rx, Rx::new(0));
    for i in 0..q.slots.len() {
        q.start_slot(&mut c, i);
    }
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        if stopping {
            if q.busy == 0 {
                break;
            }
            let d = *drain_deadline.get_or_insert_with(|| Instant::now() + STOP_TIMEOUT);
            if Instant::now() > d {
                return Err(c.fail(format!(
                    "{} commands still outstanding after {STOP_TIMEOUT:?}",
                    q.busy
                )));
            }
        }
        // Every PDU complete in the buffer, then what they queued goes out in
        // one write, then one read.
        let need = loop {
            match pdu::parse_ctrl(&rx.buf[rx.start..rx.end], c.dig, c.max_data) {
                Ok(Parsed::Need(n)) => break n,
                Ok(Parsed::Pdu(p)) => {
                    let w = p.wire_len;
                    q.on_pdu(&mut c, &p, stopping)?;
                    rx.start += w;
                }
                Err(e) => return Err(c.fail(e)),
            }
        };
        c.flush()?;
        if stopping && q.busy == 0 {
            break;
        }
        let r = rx.fill(&mut c.s, need);
        r.map_err(|e| c.fail(e))?;
    }
    q.part.cpu_ns = thread_cpu_ns().saturating_sub(cpu_start);
    Ok(std::mem::take(&mut q.part))
}

/// Checks the job against the controller; returns the number of queue pairs.
fn check(cfg: &NvmfJobConfig, ctrl: &Controller) -> Result<usize, String> {
    let e = |why: String| err(&cfg.url, &format!("namespace {}", cfg.nsid), why);
    let bs = cfg.block_bytes;
    if bs == 0 || !bs.is_multiple_of(ctrl.lba_bytes) || bs > MAX_BLOCK_BYTES {
        return Err(e(format!(
            "block size {bs} must be a multiple of {} up to {MAX_BLOCK_BYTES}",
            ctrl.lba_bytes
        )));
    }
    let max_qd = MAX_QD_PER_QPAIR.min(ctrl.mqes - 1);
    if cfg.qd == 0 || cfg.qd > max_qd {
        return Err(e(format!(
            "queue depth {} must be 1..={max_qd} per queue pair",
            cfg.qd
        )));
    }
    if cfg.qpairs == 0 || cfg.qpairs > MAX_QPAIRS {
        return Err(e(format!(
            "{} queue pairs: must be 1..={MAX_QPAIRS}",
            cfg.qpairs
        )));
    }
    if cfg.qpairs > ctrl.io_queues {
        return Err(e(format!(
            "{} queue pairs asked, the controller grants {}",
            cfg.qpairs, ctrl.io_queues
        )));
    }
    let blocks = ctrl.ns_bytes / bs;
    let slots = cfg.qpairs as u64 * u64::from(cfg.qd);
    if blocks == 0 || (cfg.workload == Workload::Verify && blocks < slots) {
        return Err(e(format!(
            "{} bytes hold {blocks} blocks of {bs} bytes; need at least {}",
            ctrl.ns_bytes,
            if cfg.workload == Workload::Verify {
                slots
            } else {
                1
            }
        )));
    }
    Ok(cfg.qpairs)
}

/// Sends the admin queue's Keep Alives: one every half KATO (none with KATO 0).
struct KeepAlive {
    every: Option<Duration>,
    next: Instant,
}

impl KeepAlive {
    fn new(kato: Duration) -> KeepAlive {
        let every = (!kato.is_zero()).then(|| kato / 2);
        KeepAlive {
            every,
            next: Instant::now() + every.unwrap_or_default(),
        }
    }

    /// Sends a Keep Alive when one is due.
    fn tick(&mut self, admin: &mut Conn) -> Result<(), String> {
        let Some(every) = self.every else {
            return Ok(());
        };
        if Instant::now() < self.next {
            return Ok(());
        }
        admin.admin(admin_op::KEEP_ALIVE, 0, 0, 0, 0)?;
        self.next = Instant::now() + every;
        Ok(())
    }

    /// How long the supervisor may sleep: until the next Keep Alive, at most `max`.
    fn nap(&self, max: Duration) -> Duration {
        match self.every {
            Some(_) => self.next.saturating_duration_since(Instant::now()).min(max),
            None => max,
        }
    }
}

/// Polling period of the thread supervising the queue pairs.
const SUPERVISE_EVERY: Duration = Duration::from_millis(50);

/// The run state of queue pair `k` of `qpairs` over `blocks` blocks.
fn new_qpair<'a>(
    cfg: &'a NvmfJobConfig,
    ctrl: &Controller,
    k: usize,
    qpairs: usize,
    blocks: u64,
    clock: quanta::Clock,
) -> Qpair<'a> {
    Qpair {
        cfg,
        index: k,
        nsid: cfg.nsid,
        lba_bytes: ctrl.lba_bytes,
        icd_bytes: ctrl.icd_bytes,
        blocks,
        slots: (0..cfg.qd)
            .map(|_| Slot {
                buf: vec![0u8; cfg.block_bytes as usize],
                offset: 0,
                start: 0,
                got: 0,
                opcode: 0,
                generation: 0,
            })
            .collect(),
        busy: 0,
        rng: cfg.seed ^ (((k as u64) + 1) << 40) | 1,
        seq: (blocks / qpairs as u64) * k as u64 % blocks.max(1),
        submitted: 0,
        clock,
        part: Part {
            hist: Histogram::new(3).ok(),
            ..Default::default()
        },
    }
}

/// Pins the calling thread to `core` (a warning when it cannot).
fn pin(cfg: &NvmfJobConfig, k: usize, core: usize) {
    let mut set = nix::sched::CpuSet::new();
    let pinned = set
        .set(core)
        .and_then(|_| nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set));
    if let Err(e) = pinned {
        log::warn!(
            "nvmf {}: queue pair {} not pinned to core {core}: {e}",
            cfg.url,
            k + 1
        );
    }
}

/// Waits for the run to end (its duration passed, or a queue pair failed), then
/// for every queue pair to drain, sending Keep Alives on the admin queue all
/// along (each thread bounds its own drain). A failed Keep Alive stops the run.
fn supervise<T>(
    handles: &[std::thread::ScopedJoinHandle<'_, T>],
    stop: &AtomicBool,
    end: Instant,
    admin: &mut Conn,
    ka: &mut KeepAlive,
) -> Result<(), String> {
    let mut res = Ok(());
    // Bounded: the run's end, then the threads' own drain and I/O timeouts.
    while !handles.iter().all(|h| h.is_finished()) {
        if Instant::now() >= end {
            stop.store(true, Ordering::Relaxed);
        }
        if res.is_ok() {
            res = ka.tick(admin);
            if res.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
        }
        let until_end = end.saturating_duration_since(Instant::now());
        let nap = ka.nap(SUPERVISE_EVERY);
        std::thread::sleep(if stop.load(Ordering::Relaxed) {
            nap.min(Duration::from_millis(5))
        } else {
            nap.min(until_end)
        });
    }
    res
}

/// Adds up the queue pairs' results over `elapsed`.
fn merge(parts: Vec<Result<Part, String>>, elapsed: Duration) -> Result<JobResult, String> {
    let mut res = JobResult {
        ios: 0,
        bytes: 0,
        failed_ios: 0,
        verify_errors: 0,
        latency_ns: Histogram::new(3).map_err(|e| e.to_string())?,
        elapsed,
        cpu_pct: Vec::new(),
        first_mismatch: None,
    };
    for p in parts {
        let p = p?;
        res.ios += p.ios;
        res.bytes += p.bytes;
        res.failed_ios += p.failed;
        res.verify_errors += p.verify_errors;
        if let Some(h) = &p.hist {
            let _ = res.latency_ns.add(h);
        }
        res.cpu_pct
            .push(p.cpu_ns as f64 / elapsed.as_nanos().max(1) as f64 * 100.0);
        if res.first_mismatch.is_none() {
            res.first_mismatch = p.first_mismatch;
        }
    }
    Ok(res)
}

/// Runs an NVMe/TCP job: connects, loads the namespace for `cfg.duration`
/// (with a Keep Alive every half KATO on the admin queue), drains and merges
/// the queue pairs' results.
pub fn run_nvmf_job(cfg: &NvmfJobConfig) -> Result<JobResult, String> {
    let mut ctrl = open_controller(cfg)?;
    let mut ka = KeepAlive::new(cfg.kato);
    let qpairs = check(cfg, &ctrl)?;
    let max_data = (cfg.block_bytes as usize).max(IDENTIFY_LEN);
    let mut conns = Vec::with_capacity(qpairs);
    for k in 0..qpairs {
        let qid = (k + 1) as u16;
        let mut c = Conn::open(&cfg.url, &format!("I/O queue {qid}"), cfg.digests, max_data)?;
        c.connect(
            qid,
            cfg.qd as u16,
            ctrl.cntlid,
            &ctrl.hostid,
            Duration::ZERO,
        )?;
        conns.push(c);
        ka.tick(&mut ctrl.admin)?;
    }
    let blocks = ctrl.ns_bytes / cfg.block_bytes;
    let stop = Arc::new(AtomicBool::new(false));
    let clock = quanta::Clock::new();
    let started = Instant::now();
    let (parts, supervised) = std::thread::scope(|sc| {
        let handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(k, c)| {
                let stop = Arc::clone(&stop);
                let core = (!cfg.cores.is_empty()).then(|| cfg.cores[k % cfg.cores.len()]);
                let q = new_qpair(cfg, &ctrl, k, qpairs, blocks, clock.clone());
                sc.spawn(move || {
                    if let Some(core) = core {
                        pin(cfg, k, core);
                    }
                    let r = run_qpair(c, q, &stop);
                    if r.is_err() {
                        // The others stop too: the run has failed.
                        stop.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        let end = started + cfg.duration;
        let supervised = supervise(&handles, &stop, end, &mut ctrl.admin, &mut ka);
        let parts: Vec<Result<Part, String>> = handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(err(&cfg.url, "queue pair", "thread panicked")))
            })
            .collect();
        (parts, supervised)
    });
    let elapsed = started.elapsed();
    drop(ctrl.admin);
    let res = merge(parts, elapsed)?;
    supervised?;
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = NvmfUrl::parse("tcp://127.0.0.1:4420/nqn.2026-11.io.plexd:demo").unwrap();
        assert_eq!(u.addr, "127.0.0.1:4420".parse().unwrap());
        assert_eq!(u.nqn, "nqn.2026-11.io.plexd:demo");
        assert_eq!(
            u.to_string(),
            "tcp://127.0.0.1:4420/nqn.2026-11.io.plexd:demo"
        );
        let u = NvmfUrl::parse("tcp://[::1]:4420/x").unwrap();
        assert_eq!(u.addr.port(), 4420);
        for bad in [
            "rdma://1.2.3.4:4420/x",
            "tcp://127.0.0.1/x",
            "tcp://127.0.0.1:4420",
            "tcp://127.0.0.1:4420/",
        ] {
            assert!(NvmfUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statuses_read() {
        assert!(status_text(0x182).contains("invalid Connect parameters"));
        assert!(status_text(0x281).contains("unrecovered read error"));
        assert_eq!(
            parse_digests("both").unwrap(),
            Digests {
                header: true,
                data: true
            }
        );
        assert!(parse_digests("crc").is_err());
    }
}
