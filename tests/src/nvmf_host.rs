//! A small NVMe/TCP host over plain sockets for tests (no production code): ICReq,
//! Connect, properties, admin commands, reads and writes (in-capsule data or R2T and
//! H2CData), with or without digests, checking every PDU it reads. Every socket read
//! has a timeout ([`IO_TIMEOUT`]) and a command reads at most [`MAX_PDUS_PER_CMD`]
//! PDUs. Shared by `target/tests/nvmf_wire.rs` (included there by path, as the
//! target crate cannot depend on this one) and the cluster tests in `tests/`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use plexd_target::frontend::nvmf::pdu::{self, flag, ty, Digests};

/// The host NQN a [`Host`] connects with unless told otherwise.
pub const HOST: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-000000000001";
/// The host identifier a [`Host`] connects with unless told otherwise.
pub const DEFAULT_HOSTID: [u8; 16] = [0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
/// Block size [`Host::rw`] assumes unless told otherwise.
pub const BS: usize = 512;
/// Timeout of every socket read.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on PDUs read while waiting for one command's answer.
pub const MAX_PDUS_PER_CMD: usize = 4096;

/// A completion as the host sees it.
#[derive(Debug, Default)]
pub struct Done {
    /// Dword 0 of the completion.
    pub dw0: u32,
    /// Dword 1.
    pub dw1: u32,
    /// The status field (phase bit included).
    pub status: u16,
    /// Data read (C2HData).
    pub data: Vec<u8>,
    /// The last C2HData carried the SUCCESS flag (no response capsule).
    pub success_flag: bool,
}

impl Done {
    /// SCT << 8 | SC.
    pub fn sc(&self) -> u16 {
        (self.status >> 1) & 0x7ff
    }
}

/// One queue pair (one TCP connection) of the host.
pub struct Host {
    /// The connection.
    pub s: TcpStream,
    /// Digests in use.
    pub dig: Digests,
    cid: u16,
    maxh2c: usize,
    /// The host NQN Connect sends.
    pub hostnqn: String,
    /// The host identifier Connect sends (a host's reservations go with it).
    pub hostid: [u8; 16],
    /// The block size [`Host::rw`] assumes.
    pub block_size: usize,
}

/// A PDU as received.
pub struct Pdu {
    /// PDU type.
    pub ty: u8,
    /// Flags.
    pub flags: u8,
    /// The header (common and specific).
    pub hdr: Vec<u8>,
    /// The data section.
    pub data: Vec<u8>,
}

impl Host {
    /// A TCP connection to 127.0.0.1:`port`, nothing sent.
    pub fn tcp(port: u16) -> Host {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        Host {
            s,
            dig: Digests::default(),
            cid: 0,
            maxh2c: 0,
            hostnqn: HOST.to_string(),
            hostid: DEFAULT_HOSTID,
            block_size: BS,
        }
    }

    /// TCP connection and ICReq/ICResp.
    pub fn ic(port: u16, dig: Digests) -> Host {
        Host::ic_r2t(port, dig, 1)
    }

    /// TCP connection and ICReq/ICResp announcing `maxr2t` (>= 1) R2Ts per
    /// command at most.
    pub fn ic_r2t(port: u16, dig: Digests, maxr2t: u32) -> Host {
        let mut h = Host::tcp(port);
        let mut req = [0u8; 120];
        req[3] = u8::from(dig.header) | (u8::from(dig.data) << 1);
        req[4..8].copy_from_slice(&maxr2t.saturating_sub(1).to_le_bytes());
        let mut v = Vec::new();
        pdu::encode(&mut v, ty::IC_REQ, 0, &req, &[], Digests::default(), 0);
        h.s.write_all(&v).unwrap();
        let p = h.recv().unwrap();
        assert_eq!(p.ty, ty::IC_RESP);
        assert_eq!(p.hdr.len(), 128);
        assert_eq!(p.hdr[11], req[3], "digests granted as asked");
        h.maxh2c = pdu::le32(&p.hdr, 12) as usize;
        assert!(h.maxh2c >= 4096);
        h.dig = dig;
        h
    }

    /// Sends raw bytes.
    pub fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    /// Sends one PDU with the negotiated digests.
    pub fn send(&mut self, t: u8, flags: u8, specific: &[u8], data: &[u8]) {
        let mut v = Vec::new();
        pdu::encode(&mut v, t, flags, specific, data, self.dig, 0);
        self.send_raw(&v);
    }

    /// Reads one PDU, checking its digests.
    pub fn recv(&mut self) -> std::io::Result<Pdu> {
        let mut ch = [0u8; 8];
        self.s.read_exact(&mut ch)?;
        let plen = pdu::le32(&ch, 4) as usize;
        let hlen = ch[2] as usize;
        assert!((8..(4 << 20)).contains(&plen), "PLEN {plen}");
        let mut rest = vec![0u8; plen - 8];
        self.s.read_exact(&mut rest)?;
        let mut all = ch.to_vec();
        all.extend_from_slice(&rest);
        let (t, flags, pdo) = (ch[0], ch[1], ch[3] as usize);
        let hd = flags & flag::HDGSTF != 0;
        let dd = flags & flag::DDGSTF != 0;
        if t != ty::IC_RESP && t != ty::C2H_TERM {
            assert_eq!(hd, self.dig.header, "header digest flag on type {t:#x}");
        }
        if hd {
            assert_eq!(
                pdu::le32(&all, hlen),
                pdu::digest(&all[..hlen]),
                "header digest"
            );
        }
        let head = hlen + if hd { 4 } else { 0 };
        let data = if plen > head {
            let end = plen - if dd { 4 } else { 0 };
            let d = all[pdo..end].to_vec();
            if dd {
                assert_eq!(pdu::le32(&all, end), pdu::digest(&d), "data digest");
            } else {
                assert!(!self.dig.data || d.is_empty(), "data without its digest");
            }
            d
        } else {
            Vec::new()
        };
        Ok(Pdu {
            ty: t,
            flags,
            hdr: all[..hlen].to_vec(),
            data,
        })
    }

    /// The next command id.
    pub fn next_cid(&mut self) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        self.cid
    }

    /// Sends a command (`sqe` without its cid and SGL) with `out` data (in the
    /// capsule when `inline`, else after R2T) and reads `read_len` bytes back.
    pub fn cmd(&mut self, mut sqe: [u8; 64], out: &[u8], inline: bool, read_len: usize) -> Done {
        let cid = self.next_cid();
        sqe[2..4].copy_from_slice(&cid.to_le_bytes());
        let sgl_len = if out.is_empty() { read_len } else { out.len() };
        sqe[32..36].copy_from_slice(&(sgl_len as u32).to_le_bytes());
        sqe[39] = if inline && !out.is_empty() {
            0x01
        } else {
            0x5A
        };
        let cap_data = if inline { out } else { &[][..] };
        self.send(ty::CAPSULE_CMD, 0, &sqe, cap_data);
        let mut done = Done {
            data: vec![0u8; read_len],
            ..Default::default()
        };
        let mut got = 0usize;
        for _ in 0..MAX_PDUS_PER_CMD {
            let p = self.recv().expect("an answer");
            match p.ty {
                ty::C2H_DATA => {
                    assert_eq!(pdu::le16(&p.hdr, 8), cid);
                    let off = pdu::le32(&p.hdr, 12) as usize;
                    let len = pdu::le32(&p.hdr, 16) as usize;
                    assert_eq!(len, p.data.len());
                    assert_eq!(off, got, "C2HData in order");
                    done.data[off..off + len].copy_from_slice(&p.data);
                    got += len;
                    if p.flags & flag::SUCCESS != 0 {
                        assert!(p.flags & flag::LAST_PDU != 0);
                        done.success_flag = true;
                        done.data.truncate(got);
                        return done;
                    }
                }
                ty::R2T => {
                    assert_eq!(pdu::le16(&p.hdr, 8), cid);
                    let ttag = pdu::le16(&p.hdr, 10);
                    let off = pdu::le32(&p.hdr, 12) as usize;
                    let len = pdu::le32(&p.hdr, 16) as usize;
                    assert!(off + len <= out.len());
                    let mut o = off;
                    while o < off + len {
                        let n = (off + len - o).min(self.maxh2c).min(64 << 10);
                        let last = o + n == off + len;
                        let h = pdu::data_hdr(cid, ttag, o as u32, n as u32);
                        let f = if last { flag::LAST_PDU } else { 0 };
                        self.send(ty::H2C_DATA, f, &h, &out[o..o + n]);
                        o += n;
                    }
                }
                ty::CAPSULE_RESP => {
                    let c = &p.hdr[8..24];
                    assert_eq!(pdu::le16(c, 12), cid, "response to our command");
                    done.dw0 = pdu::le32(c, 0);
                    done.dw1 = pdu::le32(c, 4);
                    done.status = pdu::le16(c, 14);
                    done.data.truncate(got);
                    return done;
                }
                t => panic!("unexpected PDU type {t:#x}"),
            }
        }
        panic!("no answer within {MAX_PDUS_PER_CMD} PDUs");
    }

    /// Fabrics Connect of queue `qid` to `subnqn` (controller `cntlid`, 0xFFFF for
    /// the admin queue) as [`Host::hostnqn`].
    pub fn connect(&mut self, qid: u16, cntlid: u16, kato_ms: u32, subnqn: &str) -> Done {
        let mut sqe = [0u8; 64];
        sqe[0] = 0x7f;
        sqe[4] = 0x01;
        sqe[42..44].copy_from_slice(&qid.to_le_bytes());
        sqe[44..46].copy_from_slice(&31u16.to_le_bytes());
        sqe[48..52].copy_from_slice(&kato_ms.to_le_bytes());
        let mut d = vec![0u8; 1024];
        d[..16].copy_from_slice(&self.hostid);
        d[16..18].copy_from_slice(&cntlid.to_le_bytes());
        d[256..256 + subnqn.len()].copy_from_slice(subnqn.as_bytes());
        let host = self.hostnqn.as_bytes();
        d[512..512 + host.len()].copy_from_slice(host);
        self.cmd(sqe, &d, true, 0)
    }

    /// Property Get (`eight`: 8 bytes).
    pub fn prop_get(&mut self, off: u32, eight: bool) -> u64 {
        let mut sqe = [0u8; 64];
        sqe[0] = 0x7f;
        sqe[4] = 0x04;
        sqe[40] = u8::from(eight);
        sqe[44..48].copy_from_slice(&off.to_le_bytes());
        let d = self.cmd(sqe, &[], false, 0);
        assert_eq!(d.sc(), 0);
        d.dw0 as u64 | ((d.dw1 as u64) << 32)
    }

    /// Property Set (4 bytes).
    pub fn prop_set(&mut self, off: u32, v: u32) {
        let mut sqe = [0u8; 64];
        sqe[0] = 0x7f;
        sqe[4] = 0x00;
        sqe[44..48].copy_from_slice(&off.to_le_bytes());
        sqe[48..52].copy_from_slice(&v.to_le_bytes());
        assert_eq!(self.cmd(sqe, &[], false, 0).sc(), 0);
    }

    /// An admin command reading `read_len` bytes.
    pub fn admin(
        &mut self,
        opcode: u8,
        nsid: u32,
        cdw10: u32,
        cdw11: u32,
        read_len: usize,
    ) -> Done {
        let mut sqe = [0u8; 64];
        sqe[0] = opcode;
        sqe[4..8].copy_from_slice(&nsid.to_le_bytes());
        sqe[40..44].copy_from_slice(&cdw10.to_le_bytes());
        sqe[44..48].copy_from_slice(&cdw11.to_le_bytes());
        self.cmd(sqe, &[], false, read_len)
    }

    /// Read (0x02), Write (0x01) or another I/O command of `blocks` blocks at
    /// `lba` on namespace 1.
    pub fn rw(&mut self, opcode: u8, lba: u64, blocks: u16, out: &[u8], inline: bool) -> Done {
        let mut sqe = [0u8; 64];
        sqe[0] = opcode;
        sqe[4..8].copy_from_slice(&1u32.to_le_bytes());
        sqe[40..48].copy_from_slice(&lba.to_le_bytes());
        sqe[48..50].copy_from_slice(&(blocks - 1).to_le_bytes());
        let read_len = if opcode == 0x02 {
            blocks as usize * self.block_size
        } else {
            0
        };
        self.cmd(sqe, out, inline, read_len)
    }

    /// A reservation command (`opcode` 0Dh Register, 0Eh Report, 11h Acquire,
    /// 15h Release) on namespace `nsid` with `data` from the host (in the
    /// capsule) and `read_len` bytes of report data back.
    pub fn resv(
        &mut self,
        opcode: u8,
        nsid: u32,
        cdw10: u32,
        cdw11: u32,
        data: &[u8],
        read_len: usize,
    ) -> Done {
        let mut sqe = [0u8; 64];
        sqe[0] = opcode;
        sqe[4..8].copy_from_slice(&nsid.to_le_bytes());
        sqe[40..44].copy_from_slice(&cdw10.to_le_bytes());
        sqe[44..48].copy_from_slice(&cdw11.to_le_bytes());
        self.cmd(sqe, data, true, read_len)
    }

    /// True once the target closed the connection (EOF or reset), maybe after
    /// a C2HTermReq; false if it stays open for IO_TIMEOUT.
    pub fn closed_by_target(&mut self) -> bool {
        let mut b = [0u8; 4096];
        let deadline = Instant::now() + IO_TIMEOUT;
        while Instant::now() < deadline {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
                Err(_) => return true,
            }
        }
        false
    }
}
