//! The iSCSI target driven by a small initiator written here over a plain socket:
//! data integrity with digests and R2Ts (checked against the bdev itself), CHAP,
//! persistent reservations across a restart, and hostile PDUs that must close one
//! connection without hurting the target. Every socket read has a timeout and
//! only 127.0.0.1 is used.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use common::bdev_read;

use plexd_target::bdev::malloc::MallocBdev;
use plexd_target::bdev::uring::{UringBdev, UringOpts};
use plexd_target::bdev::Bdev;
use plexd_target::diag::{run_ios, IoReq};
use plexd_target::frontend::iscsi::chap;
use plexd_target::frontend::iscsi::pdu::{self, op, Bhs, Digests, BHS_LEN, RESERVED_TAG};
use plexd_target::frontend::iscsi::{ChapConfig, IscsiConfig, IscsiFrontend, LunConfig};
use plexd_target::frontend::scsi::alua::{self, Alua, AluaState, PortGroup};
use plexd_target::reactor::ReactorConfig;
use plexd_target::testutil::pattern;
use plexd_target::{Target, TargetConfig};

const IQN: &str = "iqn.2026-11.io.plexd:wire";
const BS: usize = 512;
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// TEST UNIT READY attempts to clear unit attentions after login.
const MAX_UA_RETRIES: usize = 4;

/// Most log lines kept by [`Capture`] (the oldest are dropped).
const MAX_CAPTURED_LINES: usize = 4096;

/// The test binary's logger: env_logger as usual, plus the last info-or-worse
/// lines of plexd-target kept for tests that check what was logged.
struct Capture {
    inner: env_logger::Logger,
    lines: std::sync::Mutex<std::collections::VecDeque<String>>,
}

impl log::Log for Capture {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Info || self.inner.enabled(m)
    }
    fn log(&self, r: &log::Record) {
        if r.level() <= log::Level::Info && r.target().starts_with("plexd_target") {
            let mut l = self.lines.lock().unwrap_or_else(|p| p.into_inner());
            if l.len() >= MAX_CAPTURED_LINES {
                l.pop_front();
            }
            l.push_back(r.args().to_string());
        }
        if self.inner.matches(r) {
            self.inner.log(r);
        }
    }
    fn flush(&self) {
        self.inner.flush();
    }
}

fn capture() -> &'static Capture {
    static CAPTURE: std::sync::OnceLock<&'static Capture> = std::sync::OnceLock::new();
    CAPTURE.get_or_init(|| {
        let inner = env_logger::Builder::from_default_env()
            .is_test(true)
            .build();
        let max = inner.filter().max(log::LevelFilter::Info);
        let c: &'static Capture = Box::leak(Box::new(Capture {
            inner,
            lines: Default::default(),
        }));
        if log::set_logger(c).is_ok() {
            log::set_max_level(max);
        }
        c
    })
}

/// Waits up to [`IO_TIMEOUT`] for `n` captured log lines satisfying `pred`;
/// returns every such line.
fn wait_for_log_lines(what: &str, n: usize, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    loop {
        let found: Vec<String> = {
            let l = capture().lines.lock().unwrap_or_else(|p| p.into_inner());
            l.iter().filter(|x| pred(x)).cloned().collect()
        };
        if found.len() >= n {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} log line(s) {what} within {IO_TIMEOUT:?}, want {n}: {found:?}",
            found.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start_target(size_bytes: u64) -> Arc<Target> {
    capture();
    let t = Target::start(&TargetConfig {
        reactors: ReactorConfig {
            cores: vec![0, 1],
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    t.add_bdev(MallocBdev::new("m0", size_bytes, BS as u32).unwrap())
        .unwrap();
    t
}

fn config(chap: Option<ChapConfig>, pr_dir: Option<std::path::PathBuf>) -> IscsiConfig {
    let mut c = common::iscsi_config(IQN, "m0");
    c.pr_dir = pr_dir;
    c.targets[0].chap = chap;
    c
}

/// A minimal initiator: one connection, one command at a time.
struct Ini {
    s: TcpStream,
    /// Distinct per connection: the same ISID would reinstate (close) the older session.
    isid: [u8; 6],
    dig: Digests,
    cmdsn: u32,
    itt: u32,
}

struct Reply {
    bhs: [u8; BHS_LEN],
    data: Vec<u8>,
}

struct ScsiResult {
    status: u8,
    data: Vec<u8>,
    sense_key: Option<u8>,
    /// (ASC, ASCQ) of fixed-format sense data.
    asc: Option<(u8, u8)>,
}

impl Ini {
    fn connect(port: u16) -> Ini {
        Ini::with_stream(TcpStream::connect(("127.0.0.1", port)).unwrap())
    }

    /// A connection whose receive buffer is locked at `rcvbuf` bytes (so
    /// autotuning never grows it, whatever the machine's `net.ipv4.tcp_rmem`
    /// allows): a test that fills the socket by not reading fills it for sure.
    fn connect_with_rcvbuf(port: u16, rcvbuf: usize) -> Ini {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBuf, &rcvbuf).unwrap();
        Ini::with_stream(s)
    }

    fn with_stream(s: TcpStream) -> Ini {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        static NEXT_ISID: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
        let n = NEXT_ISID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ini {
            s,
            isid: [0x80, 0, 0, 0x12, 0x34, n],
            dig: Digests::default(),
            cmdsn: 1,
            itt: 1,
        }
    }

    fn send(&mut self, bhs: &Bhs, data: &[u8]) {
        let mut v = Vec::new();
        pdu::encode(&mut v, bhs, data, self.dig);
        self.s.write_all(&v).unwrap();
    }

    fn recv(&mut self) -> std::io::Result<Reply> {
        let mut h = [0u8; BHS_LEN];
        self.s.read_exact(&mut h)?;
        let total = pdu::wire_len(&h, self.dig, 1 << 24).unwrap();
        let mut rest = vec![0u8; total - BHS_LEN];
        self.s.read_exact(&mut rest)?;
        let mut all = h.to_vec();
        all.extend_from_slice(&rest);
        match pdu::parse(&all, self.dig, 1 << 24).unwrap() {
            pdu::Parsed::Pdu(p) => Ok(Reply {
                bhs: *p.bhs,
                data: p.data.to_vec(),
            }),
            pdu::Parsed::Need(_) => unreachable!("whole PDU read"),
        }
    }

    fn login_step(&mut self, flags: u8, text: &str) -> Reply {
        let mut b = Bhs::new(op::LOGIN_REQ, flags);
        b.byte(0, 0x40 | op::LOGIN_REQ);
        b.0[8..14].copy_from_slice(&self.isid);
        b.u32_at(16, self.itt).u32_at(24, self.cmdsn);
        self.send(&b, text.as_bytes());
        self.recv().unwrap()
    }

    fn keys(r: &Reply) -> Vec<(String, String)> {
        String::from_utf8_lossy(&r.data)
            .split('\0')
            .filter(|x| !x.is_empty())
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect()
    }

    /// Logs in without CHAP, straight to the operational stage, then clears LUN 0's
    /// power-on unit attention as initiators do; returns the login status.
    fn login(&mut self, digests: bool) -> u16 {
        let status = self.login_raw(digests);
        if status == 0 {
            self.clear_ua(0);
        }
        status
    }

    /// TEST UNIT READY on `lun` until GOOD (bounded): consumes a pending unit
    /// attention, as initiators do after login.
    fn clear_ua(&mut self, lun: u64) {
        for _ in 0..MAX_UA_RETRIES {
            let r = self.scsi_lun(lun, &[0u8; 6], None, 0);
            // GOOD, or a LUN fenced by the data-plane lease (NOT READY 04h/0Ch):
            // either way no unit attention is pending any more.
            if r.status == 0 || (r.sense_key == Some(2) && r.asc == Some((0x04, 0x0c))) {
                return;
            }
            assert_eq!(
                r.sense_key,
                Some(6),
                "TEST UNIT READY: only a unit attention"
            );
        }
        panic!("lun {lun}: TEST UNIT READY still fails after {MAX_UA_RETRIES} tries");
    }

    /// Logs in like [`Ini::login`] but leaves the unit attention pending.
    fn login_raw(&mut self, digests: bool) -> u16 {
        let d = if digests { "CRC32C" } else { "None" };
        let r = self.login_step(
            0x87,
            &format!(
                "InitiatorName=iqn.2026-11.io.plexd:ini\0TargetName={IQN}\0SessionType=Normal\0\
                 HeaderDigest={d}\0DataDigest={d}\0MaxRecvDataSegmentLength=8192\0\
                 ImmediateData=Yes\0InitialR2T=Yes\0FirstBurstLength=65536\0MaxBurstLength=131072\0"
            ),
        );
        let status = pdu::be16(&r.bhs, 36);
        if status == 0 {
            assert_eq!(r.bhs[1] & 0x83, 0x83, "transit to full feature");
            self.dig = Digests {
                header: digests,
                data: digests,
            };
        }
        status
    }

    fn scsi(&mut self, cdb: &[u8], write: Option<&[u8]>, read_len: u32) -> ScsiResult {
        self.scsi_lun(0, cdb, write, read_len)
    }

    fn scsi_lun(
        &mut self,
        lun: u64,
        cdb: &[u8],
        write: Option<&[u8]>,
        read_len: u32,
    ) -> ScsiResult {
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
        b.0[8..16].copy_from_slice(&(lun << 48).to_be_bytes());
        b.0[32..32 + cdb.len()].copy_from_slice(cdb);
        self.cmdsn += 1;
        let imm = write.map(|w| &w[..w.len().min(8192)]).unwrap_or(&[]);
        self.send(&b, imm);
        let mut data = Vec::new();
        loop {
            let r = self.recv().unwrap();
            match pdu::opcode(&r.bhs) {
                op::R2T => {
                    let ttt = pdu::be32(&r.bhs, 20);
                    let off = pdu::be32(&r.bhs, 40) as usize;
                    let len = pdu::be32(&r.bhs, 44) as usize;
                    let w = write.expect("R2T for a write");
                    let mut sent = 0;
                    let mut datasn = 0;
                    while sent < len {
                        let n = (len - sent).min(8192);
                        let last = sent + n == len;
                        let mut d = Bhs::new(op::DATA_OUT, if last { 0x80 } else { 0 });
                        d.u32_at(16, itt)
                            .u32_at(20, ttt)
                            .u32_at(36, datasn)
                            .u32_at(40, (off + sent) as u32);
                        self.send(&d, &w[off + sent..off + sent + n]);
                        sent += n;
                        datasn += 1;
                    }
                }
                op::DATA_IN => {
                    assert_eq!(pdu::be32(&r.bhs, 16), itt, "Data-In of another task");
                    let off = pdu::be32(&r.bhs, 40) as usize;
                    assert_eq!(off, data.len(), "Data-In in order");
                    data.extend_from_slice(&r.data);
                    if r.bhs[1] & 0x01 != 0 {
                        return ScsiResult {
                            status: r.bhs[3],
                            data,
                            sense_key: None,
                            asc: None,
                        };
                    }
                }
                op::SCSI_RESP => {
                    assert_eq!(pdu::be32(&r.bhs, 16), itt, "the response of another task");
                    let fixed = r.data.len() >= 2 + 14;
                    let sense_key = fixed.then(|| r.data[2 + 2] & 0x0f);
                    let asc = fixed.then(|| (r.data[2 + 12], r.data[2 + 13]));
                    return ScsiResult {
                        status: r.bhs[3],
                        data,
                        sense_key,
                        asc,
                    };
                }
                op::NOP_IN => {
                    // A keep-alive ping from the target: answer it.
                    let mut a = Bhs::new(op::NOP_OUT, 0x80);
                    a.byte(0, 0x40 | op::NOP_OUT)
                        .u32_at(16, RESERVED_TAG)
                        .u32_at(20, pdu::be32(&r.bhs, 20))
                        .u32_at(24, self.cmdsn);
                    self.send(&a, &[]);
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn write10(&mut self, lba: u32, data: &[u8]) -> ScsiResult {
        let n = (data.len() / BS) as u16;
        let mut cdb = [0u8; 10];
        cdb[0] = 0x2a;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&n.to_be_bytes());
        self.scsi(&cdb, Some(data), 0)
    }

    fn read10(&mut self, lba: u32, blocks: u16) -> ScsiResult {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        self.scsi(&cdb, None, blocks as u32 * BS as u32)
    }

    fn test_unit_ready(&mut self) -> ScsiResult {
        self.scsi(&[0u8; 6], None, 0)
    }

    /// Sends a WRITE(10) of `blocks` blocks at `lba` on LUN 0 with `imm` as its
    /// immediate data, without waiting for anything; returns its ITT.
    fn send_write10(&mut self, lba: u32, blocks: u16, imm: &[u8]) -> u32 {
        let itt = self.itt;
        self.itt += 1;
        let mut cdb = [0u8; 10];
        cdb[0] = 0x2a;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        let mut b = Bhs::new(op::SCSI_CMD, 0x80 | 0x20 | 0x01);
        b.u32_at(16, itt)
            .u32_at(20, blocks as u32 * BS as u32)
            .u32_at(24, self.cmdsn);
        b.0[32..42].copy_from_slice(&cdb);
        self.cmdsn += 1;
        self.send(&b, imm);
        itt
    }

    /// Reads the next PDU, which must be an R2T for task `itt`: (TTT, offset,
    /// length).
    fn recv_r2t(&mut self, itt: u32) -> (u32, u32, u32) {
        let r = self.recv().unwrap();
        assert_eq!(pdu::opcode(&r.bhs), op::R2T, "an R2T for ITT {itt:#x}");
        assert_eq!(pdu::be32(&r.bhs, 16), itt, "an R2T for ITT {itt:#x}");
        (
            pdu::be32(&r.bhs, 20),
            pdu::be32(&r.bhs, 40),
            pdu::be32(&r.bhs, 44),
        )
    }

    /// Sends `data` at offset `off` of task `itt` as one final Data-Out PDU
    /// answering R2T `ttt`.
    fn send_data_out(&mut self, itt: u32, ttt: u32, off: u32, data: &[u8]) {
        let mut d = Bhs::new(op::DATA_OUT, 0x80);
        d.u32_at(16, itt).u32_at(20, ttt).u32_at(40, off);
        self.send(&d, data);
    }

    fn logout(&mut self) {
        let mut b = Bhs::new(op::LOGOUT_REQ, 0x80);
        b.byte(0, 0x40 | op::LOGOUT_REQ)
            .u32_at(16, self.itt)
            .u32_at(24, self.cmdsn);
        self.send(&b, &[]);
        let r = self.recv().unwrap();
        assert_eq!(pdu::opcode(&r.bhs), op::LOGOUT_RESP);
    }

    /// True when the target closed the connection (EOF or reset) within the timeout.
    fn closed_by_target(&mut self) -> bool {
        let mut b = [0u8; 4096];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue, // a Reject or a response before the close
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

#[test]
fn writes_read_back_through_the_target_and_land_on_the_bdev() {
    let t = start_target(64 << 20);
    let fe = IscsiFrontend::start(&t, &config(None, None)).unwrap();
    let mut ini = Ini::connect(fe.portal().port());
    assert_eq!(ini.login(true), 0);
    // Sizes: one block, immediate only, several R2T bursts, the largest transfer.
    let cases: [(u32, usize); 4] = [(0, BS), (10, 8 << 10), (100, 300 << 10), (2000, 1 << 20)];
    for (i, (lba, len)) in cases.iter().enumerate() {
        let data = pattern(i as u64 + 1, *len);
        let w = ini.write10(*lba, &data);
        assert_eq!(w.status, 0, "write of {len} bytes at {lba}");
        let r = ini.read10(*lba, (*len / BS) as u16);
        assert_eq!(r.status, 0);
        assert!(r.data == data, "read back {len} bytes at {lba}");
        let bdev: Arc<dyn Bdev> = t.bdev("m0").unwrap();
        let out = run_ios(
            &t.reactors().handles()[1],
            &bdev,
            vec![IoReq::read(*lba as u64 * BS as u64, *len as u64)],
            IO_TIMEOUT,
        )
        .unwrap();
        assert!(out[0].data == data, "the bdev holds what was written");
    }
    // Beyond the end: CHECK CONDITION, the session stays usable.
    let r = ini.read10(u32::MAX - 1, 1);
    assert_eq!((r.status, r.sense_key), (2, Some(5)));
    let s = fe.sessions();
    assert_eq!(s.len(), 1);
    assert!(s[0].write_bytes >= (1 << 20) as u64 && s[0].read_bytes >= (1 << 20) as u64);
    ini.logout();
}

#[test]
fn chap_one_way_accepts_the_secret_and_refuses_others() {
    let t = start_target(16 << 20);
    let secret = "secretsecret1234";
    let fe = IscsiFrontend::start(
        &t,
        &config(
            Some(ChapConfig {
                user: "host1".into(),
                secret: secret.into(),
                ..Default::default()
            }),
            None,
        ),
    )
    .unwrap();
    for (pw, ok) in [(secret, true), ("wrongwrongwrong1", false)] {
        let mut ini = Ini::connect(fe.portal().port());
        let r = ini.login_step(
            0x81,
            &format!(
                "InitiatorName=iqn.2026-11.io.plexd:ini\0TargetName={IQN}\0AuthMethod=CHAP,None\0"
            ),
        );
        assert!(Ini::keys(&r).contains(&("AuthMethod".into(), "CHAP".into())));
        let r = ini.login_step(0x01, "CHAP_A=5\0");
        let k = Ini::keys(&r);
        let get = |n: &str| k.iter().find(|(a, _)| a == n).unwrap().1.clone();
        let id: u8 = get("CHAP_I").parse().unwrap();
        let c = chap::from_binary(&get("CHAP_C")).unwrap();
        let resp = chap::to_hex(&chap::response(id, pw.as_bytes(), &c));
        let r = ini.login_step(0x81, &format!("CHAP_N=host1\0CHAP_R={resp}\0"));
        let status = pdu::be16(&r.bhs, 36);
        if ok {
            assert_eq!(status, 0);
            let r = ini.login_step(0x87, "MaxRecvDataSegmentLength=8192\0");
            assert_eq!(pdu::be16(&r.bhs, 36), 0);
        } else {
            assert_eq!(status, 0x0201, "authentication failure");
            assert!(ini.closed_by_target());
        }
    }
    // Skipping authentication is refused too.
    let mut ini = Ini::connect(fe.portal().port());
    assert_eq!(ini.login(false), 0x0201);
}

#[test]
fn persistent_reservations_survive_a_restart() {
    const HOLDER_ISID: [u8; 6] = [0x80, 0, 0, 0xaa, 0xbb, 0xcc];
    let dir = plexd_target::testutil::TempPath::new("iscsi-pr");
    std::fs::create_dir_all(&dir.0).unwrap();
    let t = start_target(16 << 20);
    let prout = |ini: &mut Ini, sa: u8, ty: u8, rkey: u64, sakey: u64| {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x5f;
        cdb[1] = sa;
        cdb[2] = ty;
        cdb[8] = 24;
        let mut p = vec![0u8; 24];
        p[0..8].copy_from_slice(&rkey.to_be_bytes());
        p[8..16].copy_from_slice(&sakey.to_be_bytes());
        ini.scsi(&cdb, Some(&p), 0).status
    };
    let read_keys = |ini: &mut Ini| -> Vec<u8> {
        let cdb = [0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0];
        ini.scsi(&cdb, None, 4096).data
    };
    {
        let fe = IscsiFrontend::start(&t, &config(None, Some(dir.0.clone()))).unwrap();
        let mut ini = Ini::connect(fe.portal().port());
        ini.isid = HOLDER_ISID;
        assert_eq!(ini.login(false), 0);
        assert_eq!(prout(&mut ini, 0, 0, 0, 0xabcd), 0, "REGISTER");
        assert_eq!(
            prout(&mut ini, 1, 1, 0xabcd, 0),
            0,
            "RESERVE write exclusive"
        );
        ini.logout();
    }
    let fe = IscsiFrontend::start(&t, &config(None, Some(dir.0.clone()))).unwrap();
    // Another initiator port is not the holder: its writes conflict, reads pass.
    let mut other = Ini::connect(fe.portal().port());
    assert_eq!(other.login(false), 0);
    assert_eq!(
        other.write10(0, &[7u8; BS]).status,
        0x18,
        "RESERVATION CONFLICT"
    );
    assert_eq!(other.read10(0, 1).status, 0);
    other.logout();
    let mut ini = Ini::connect(fe.portal().port());
    ini.isid = HOLDER_ISID;
    assert_eq!(ini.login(false), 0);
    let keys = read_keys(&mut ini);
    assert_eq!(&keys[4..8], &[0, 0, 0, 8], "one key registered");
    assert_eq!(&keys[8..16], &0xabcdu64.to_be_bytes());
    // The same initiator port still holds the reservation: it may write.
    assert_eq!(ini.write10(0, &[7u8; BS]).status, 0);
    assert_eq!(prout(&mut ini, 3, 0, 0xabcd, 0), 0, "CLEAR");
    ini.logout();
    let _ = std::fs::remove_dir_all(&dir.0);
}

#[test]
fn hostile_pdus_close_the_connection_and_the_target_keeps_serving() {
    let t = start_target(16 << 20);
    let fe = IscsiFrontend::start(&t, &config(None, None)).unwrap();
    let port = fe.portal().port();

    // 1. Garbage before login.
    let mut ini = Ini::connect(port);
    ini.s.write_all(&[0xffu8; 48]).unwrap();
    assert!(ini.closed_by_target(), "garbage closes the connection");

    // 2. A data segment far beyond MaxRecvDataSegmentLength.
    let mut ini = Ini::connect(port);
    assert_eq!(ini.login(false), 0);
    let mut b = Bhs::new(op::NOP_OUT, 0x80);
    b.u32_at(16, 9).u32_at(20, RESERVED_TAG);
    let mut v = b.0.to_vec();
    v[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    ini.s.write_all(&v).unwrap();
    assert!(
        ini.closed_by_target(),
        "oversize segment closes the connection"
    );

    // 3. A corrupted header digest.
    let mut ini = Ini::connect(port);
    assert_eq!(ini.login(true), 0);
    let mut b = Bhs::new(op::NOP_OUT, 0x80);
    b.u32_at(16, 9).u32_at(20, RESERVED_TAG);
    let mut v = Vec::new();
    pdu::encode(&mut v, &b, &[], ini.dig);
    v[50] ^= 0x55;
    ini.s.write_all(&v).unwrap();
    assert!(
        ini.closed_by_target(),
        "bad header digest closes the connection"
    );

    // 4. A Data-Out for a task that does not exist, an unknown opcode, and a
    //    command outside the CmdSN window: dropped or rejected, the session lives.
    let mut ini = Ini::connect(port);
    assert_eq!(ini.login(false), 0);
    let mut d = Bhs::new(op::DATA_OUT, 0x80);
    d.u32_at(16, 0x7777).u32_at(20, RESERVED_TAG);
    ini.send(&d, &[1u8; 512]);
    let mut x = Bhs::new(0x1e, 0x80);
    x.u32_at(16, 0x7778);
    ini.send(&x, &[]);
    let r = ini.recv().unwrap();
    assert_eq!(pdu::opcode(&r.bhs), op::REJECT);
    let mut c = Bhs::new(op::SCSI_CMD, 0x80);
    c.u32_at(16, 0x7779).u32_at(24, ini.cmdsn + 1000);
    ini.send(&c, &[]);
    let data = pattern(77, 4096);
    assert_eq!(ini.write10(5, &data).status, 0);
    assert!(ini.read10(5, 8).data == data);

    // 5. A truncated PDU followed by a close.
    let mut ini = Ini::connect(port);
    ini.s.write_all(&[0x43, 0x87, 0, 0]).unwrap();
    drop(ini);

    // The target still serves new sessions.
    let mut ini = Ini::connect(port);
    assert_eq!(ini.login(true), 0);
    assert_eq!(ini.read10(5, 8).status, 0);
    ini.logout();
}

#[test]
fn a_mirror_with_a_failing_plex_keeps_data_intact() {
    use plexd_target::bdev::error::{ErrorBdev, FailOn};
    use plexd_target::volume::{PlexKind, PlexSpec, PlexState, SubdiskSpec, VolumeSpec};
    let size = 16u64 << 20;
    let t = start_target(size);
    t.add_bdev(MallocBdev::new("m1", size, BS as u32).unwrap())
        .unwrap();
    let e1 = ErrorBdev::new("e1", t.bdev("m1").unwrap());
    t.add_bdev(e1.clone()).unwrap();
    let plex = |name: &str, bdev: &str| PlexSpec {
        name: name.into(),
        kind: PlexKind::Concat,
        columns: vec![vec![SubdiskSpec {
            bdev: bdev.into(),
            offset_bytes: 0,
            len_bytes: size,
        }]],
        state: PlexState::Active,
    };
    t.create_volume(&VolumeSpec {
        log: None,
        name: "mv".into(),
        size_bytes: size,
        plexes: vec![plex("mv-01", "m0"), plex("mv-02", "e1")],
        read_policy: Default::default(),
        shared: false,
        local_detach: false,
    })
    .unwrap();
    let mut cfg = config(None, None);
    cfg.targets[0].luns[0].bdev = "mv".into();
    let fe = IscsiFrontend::start(&t, &cfg).unwrap();
    let mut ini = Ini::connect(fe.portal().port());
    assert_eq!(ini.login(true), 0);
    let a = pattern(1, 64 << 10);
    assert_eq!(ini.write10(0, &a).status, 0);
    // The second plex starts failing every write: the volume detaches it and the
    // host sees no error.
    e1.injection().fail(FailOn::Writes, 5, None);
    let b = pattern(2, 300 << 10);
    assert_eq!(
        ini.write10(256, &b).status,
        0,
        "write acked once the plex is detached"
    );
    for _ in 0..4 {
        assert!(ini.read10(0, 128).data == a, "old data intact");
        assert!(ini.read10(256, 600).data == b, "new data intact");
    }
    let m0: Arc<dyn Bdev> = t.bdev("m0").unwrap();
    let out = run_ios(
        &t.reactors().handles()[0],
        &m0,
        vec![IoReq::read(256 * BS as u64, b.len() as u64)],
        IO_TIMEOUT,
    )
    .unwrap();
    assert!(out[0].data == b, "the surviving plex holds the data");
    ini.logout();
}

#[test]
fn silent_initiators_get_a_nop_in_and_are_closed_when_they_do_not_answer() {
    let t = start_target(16 << 20);
    let mut cfg = config(None, None);
    cfg.nop_in_interval_s = Some(1);
    cfg.nop_in_timeout_s = Some(1);
    let fe = IscsiFrontend::start(&t, &cfg).unwrap();
    // One initiator answers the ping and stays; the other stays silent.
    let mut good = Ini::connect(fe.portal().port());
    assert_eq!(good.login(false), 0);
    let mut silent = Ini::connect(fe.portal().port());
    assert_eq!(silent.login(false), 0);
    let ping = good.recv().unwrap();
    assert_eq!(pdu::opcode(&ping.bhs), op::NOP_IN);
    assert_eq!(pdu::be32(&ping.bhs, 16), RESERVED_TAG, "a target ping");
    let mut answer = Bhs::new(op::NOP_OUT, 0x80);
    answer
        .byte(0, 0x40 | op::NOP_OUT)
        .u32_at(16, RESERVED_TAG)
        .u32_at(20, pdu::be32(&ping.bhs, 20))
        .u32_at(24, good.cmdsn);
    good.send(&answer, &[]);
    let p = silent.recv().unwrap();
    assert_eq!(pdu::opcode(&p.bhs), op::NOP_IN);
    assert!(
        silent.closed_by_target(),
        "no answer: the connection is closed"
    );
    // The answering initiator still works.
    assert_eq!(good.read10(0, 1).status, 0);
}

#[test]
fn portals_are_added_and_removed_at_run_time() {
    let t = start_target(16 << 20);
    let mut fe = IscsiFrontend::start(&t, &config(None, None)).unwrap();
    let second = fe.add_portal("127.0.0.1:0").unwrap();
    assert_ne!(second, fe.portal());
    let mut ini = Ini::connect(second.port());
    assert_eq!(ini.login(false), 0);
    fe.remove_portal(second).unwrap();
    // The established session stays; new connections are refused.
    assert_eq!(ini.read10(0, 1).status, 0);
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while TcpStream::connect(second).is_ok() {
        assert!(std::time::Instant::now() < deadline, "portal still accepts");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        fe.remove_portal(second).is_err(),
        "removing twice is an error"
    );
    ini.logout();
}

/// A target with a 16 MiB shared volume `sv` (one concat plex on `m0`), served only
/// under the data-plane lease; no lease granted yet.
fn shared_volume_target() -> Arc<Target> {
    use plexd_target::volume::{PlexKind, PlexSpec, PlexState, SubdiskSpec, VolumeSpec};
    let size = 16u64 << 20;
    let t = start_target(size);
    t.create_volume(&VolumeSpec {
        log: None,
        name: "sv".into(),
        size_bytes: size,
        plexes: vec![PlexSpec {
            name: "sv-01".into(),
            kind: PlexKind::Concat,
            columns: vec![vec![SubdiskSpec {
                bdev: "m0".into(),
                offset_bytes: 0,
                len_bytes: size,
            }]],
            state: PlexState::Active,
        }],
        read_policy: Default::default(),
        shared: true,
        local_detach: false,
    })
    .unwrap();
    t
}

#[test]
fn a_fenced_shared_volume_answers_not_ready_target_port_unavailable() {
    let t = shared_volume_target();
    let mut cfg = config(None, None);
    cfg.targets[0].luns[0].bdev = "sv".into();
    let fe = IscsiFrontend::start(&t, &cfg).unwrap();
    let mut ini = Ini::connect(fe.portal().port());
    assert_eq!(ini.login(true), 0);
    // NOT READY (2) / 04h 0Ch: a path failure to Linux (dm-multipath fails over).
    let unavailable =
        |r: &ScsiResult| (r.status, r.sense_key, r.asc) == (2, Some(2), Some((0x04, 0x0c)));
    t.renew_lease(60_000).unwrap();
    let a = pattern(5, 8 * BS);
    assert_eq!(ini.write10(8, &a).status, 0);
    assert_eq!(ini.test_unit_ready().status, 0);
    // Revoked (an expiry does the same): reads, writes and TEST UNIT READY fail
    // as a path failure; the session stays up.
    t.renew_lease(0).unwrap();
    let r = ini.read10(8, 8);
    assert!(
        unavailable(&r),
        "read: status {} sense {:?} {:?}",
        r.status,
        r.sense_key,
        r.asc
    );
    let r = ini.write10(8, &pattern(6, 8 * BS));
    assert!(
        unavailable(&r),
        "write: status {} sense {:?} {:?}",
        r.status,
        r.sense_key,
        r.asc
    );
    let r = ini.test_unit_ready();
    assert!(
        unavailable(&r),
        "tur: status {} sense {:?} {:?}",
        r.status,
        r.sense_key,
        r.asc
    );
    // Renewed: the path is back, the fenced write changed nothing.
    t.renew_lease(60_000).unwrap();
    assert_eq!(ini.test_unit_ready().status, 0);
    let r = ini.read10(8, 8);
    assert_eq!(r.status, 0);
    assert!(r.data == a, "the data written before the expiry, untouched");
    ini.logout();
}

fn rtpg(ini: &mut Ini) -> Vec<(u16, u8, Vec<u16>)> {
    let r = ini.scsi(&[0xa3, 0x0a, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0], None, 1024);
    assert_eq!(
        r.status, 0,
        "REPORT TARGET PORT GROUPS: sense {:?} {:?}",
        r.sense_key, r.asc
    );
    let len = u32::from_be_bytes(r.data[0..4].try_into().unwrap()) as usize;
    assert_eq!(len, r.data.len() - 4);
    let mut at = 4;
    let mut out = Vec::new();
    while at < r.data.len() {
        let d = alua::descriptor_at(&r.data, at).expect("a whole descriptor");
        at += 8 + 4 * d.2.len();
        out.push(d);
    }
    out
}

#[test]
fn alua_reports_the_coordinators_groups_and_a_fenced_port_as_unavailable() {
    let t = shared_volume_target();
    t.renew_lease(60_000).unwrap();
    let mut cfg = config(None, None);
    cfg.targets[0].luns[0].bdev = "sv".into();
    let mut fe = IscsiFrontend::start(&t, &cfg).unwrap();
    let mut ini = Ini::connect(fe.portal().port());
    assert_eq!(ini.login(true), 0);
    ini.clear_ua(0);
    // A target on its own: one group, this port, active/optimized; TPGS = implicit.
    assert_eq!(rtpg(&mut ini), [(1, 0x0, vec![1])]);
    let std = ini.scsi(&[0x12, 0, 0, 0, 96, 0], None, 96);
    assert_eq!(std.data[5] & 0x30, 0x10);
    // The coordinator says: node 1 is the master (optimized), this is node 2.
    let view = Alua {
        local_group: 2,
        relative_port: 2,
        groups: vec![
            PortGroup {
                id: 1,
                state: AluaState::ActiveOptimized,
                ports: vec![1],
            },
            PortGroup {
                id: 2,
                state: AluaState::ActiveNonOptimized,
                ports: vec![2],
            },
        ],
    };
    fe.set_alua(IQN, 0, &view).unwrap();
    assert_eq!(rtpg(&mut ini), [(1, 0x0, vec![1]), (2, 0x1, vec![2])]);
    let p83 = ini.scsi(&[0x12, 1, 0x83, 1, 0, 0], None, 256);
    assert_eq!(
        &p83.data[p83.data.len() - 16..],
        &alua::port_designators(&view)[..]
    );
    // Fenced (the lease revoked or run out): this port's group is unavailable.
    t.renew_lease(0).unwrap();
    assert_eq!(rtpg(&mut ini), [(1, 0x0, vec![1]), (2, 0x3, vec![2])]);
    t.renew_lease(60_000).unwrap();
    assert_eq!(rtpg(&mut ini), [(1, 0x0, vec![1]), (2, 0x1, vec![2])]);
    // A malformed view is refused, naming the LUN; the old one stays.
    let mut bad = view.clone();
    bad.local_group = 9;
    let e = fe.set_alua(IQN, 0, &bad).unwrap_err().to_string();
    assert!(e.contains("lun 0") && e.contains("local group 9"), "{e}");
    assert_eq!(rtpg(&mut ini).len(), 2);
    ini.logout();
}

/// A directory on a disk file system (the build directory), for files whose
/// durability a test checks: on tmpfs there is no page cache to flush.
fn disk_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// A sparse file of `len` bytes in [`disk_dir`], removed on drop.
fn disk_file(tag: &str, len: u64) -> plexd_target::testutil::TempPath {
    let p = disk_dir().join(format!("plexd-wire-{tag}-{}.img", std::process::id()));
    std::fs::File::create(&p).unwrap().set_len(len).unwrap();
    plexd_target::testutil::TempPath(p)
}

/// Opens `path` as a buffered uring bdev and adds it to `t`; the file must be on
/// a disk file system (a volatile page cache in front of stable storage).
fn buffered_bdev(t: &Target, name: &str, path: &std::path::Path) -> Arc<UringBdev> {
    let u = UringBdev::open(
        name,
        path,
        &UringOpts {
            buffered: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(
        u.volatile_write_cache(),
        "{} must be on a disk file system, not in memory: {}",
        path.display(),
        u.info().detail
    );
    t.add_bdev(u.clone()).unwrap();
    u
}

/// Dirty plus under-writeback pages of `len` bytes at `off` of the file at `path`
/// (cachestat(2)); None on kernels without it (before 6.5).
fn unwritten_pages(path: &std::path::Path, off: u64, len: u64) -> Option<u64> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    #[repr(C)]
    #[derive(Default)]
    struct Cachestat {
        nr_cache: u64,
        nr_dirty: u64,
        nr_writeback: u64,
        nr_evicted: u64,
        nr_recently_evicted: u64,
    }
    /// The cachestat syscall number (the same on every Linux architecture).
    const SYS_CACHESTAT: libc::c_long = 451;
    let f = std::fs::File::open(path).unwrap();
    let range = Range { off, len };
    let mut cs = Cachestat::default();
    // SAFETY: cachestat reads `range` and writes one `Cachestat` (the kernel's
    // struct cachestat layout) into `cs`; both live across the call and the fd is
    // open. It touches nothing else.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            f.as_raw_fd(),
            &range as *const Range,
            &mut cs as *mut Cachestat,
            0u32,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSYS), "cachestat: {e}");
        eprintln!("cachestat(2) is missing: the page cache state is not checked");
        return None;
    }
    Some(cs.nr_dirty + cs.nr_writeback)
}

/// Drops the clean cached pages of the file at `path` (they are dropped only
/// when clean, i.e. written back).
fn drop_cache(path: &std::path::Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: posix_fadvise on an open fd; it touches no memory of ours.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise(DONTNEED) on {}", path.display());
}

/// WCE of LUN `lun` from the caching mode page (MODE SENSE(6), DBD).
fn wce(ini: &mut Ini, lun: u64) -> bool {
    let r = ini.scsi_lun(lun, &[0x1a, 0x08, 0x08, 0, 255, 0], None, 255);
    assert_eq!(r.status, 0, "MODE SENSE of lun {lun}");
    assert_eq!(&r.data[4..6], &[0x08, 0x12], "caching page of lun {lun}");
    r.data[6] & 0x04 != 0
}

/// SYNCHRONIZE CACHE(10) or (16) of the whole LUN; returns the status.
fn sync_cache(ini: &mut Ini, lun: u64, sixteen: bool) -> u8 {
    let cdb: &[u8] = if sixteen {
        &[0x91, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    } else {
        &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    };
    ini.scsi_lun(lun, cdb, None, 0).status
}

#[test]
fn synchronize_cache_puts_buffered_writes_on_the_disk() {
    let t = start_target(16 << 20);
    let file = disk_file("durable", 16 << 20);
    let u0 = buffered_bdev(&t, "u0", &file.0);
    let mut cfg = config(None, None);
    cfg.targets[0].luns = vec![
        LunConfig {
            lun: 0,
            bdev: "u0".into(),
            ..Default::default()
        },
        LunConfig {
            lun: 1,
            bdev: "m0".into(),
            ..Default::default()
        },
    ];
    let fe = IscsiFrontend::start(&t, &cfg).unwrap();
    let mut ini = Ini::connect(fe.portal().port());
    assert_eq!(ini.login(false), 0);
    ini.clear_ua(1);
    // Buffered writes complete from the page cache: the host must be told, so that
    // its fsync sends SYNCHRONIZE CACHE. The RAM disk has nothing to flush.
    assert!(wce(&mut ini, 0), "buffered file: WCE=1");
    assert!(!wce(&mut ini, 1), "malloc: WCE=0");

    for (round, sixteen) in [false, true].into_iter().enumerate() {
        let lba = 64 + round as u32 * 1024;
        let (off, len) = (lba as u64 * BS as u64, 256u64 << 10);
        let data = pattern(40 + round as u64, len as usize);
        assert_eq!(ini.write10(lba, &data).status, 0);
        let dirty = unwritten_pages(&file.0, off, len);
        if let Some(n) = dirty {
            // Dirty pages expire after dirty_expire_centisecs (30 s by default),
            // far longer than this test takes: the write sits in the page cache.
            assert!(n > 0, "the write is in the page cache, not yet on the disk");
        }
        let flushes = u0.flushes();
        assert_eq!(sync_cache(&mut ini, 0, sixteen), 0, "SYNCHRONIZE CACHE");
        assert_eq!(u0.flushes(), flushes + 1, "one fdatasync reached the file");
        if dirty.is_some() {
            assert_eq!(
                unwritten_pages(&file.0, off, len),
                Some(0),
                "after SYNCHRONIZE CACHE nothing is left to write back"
            );
        }
        // Read the file from the disk, around the page cache: O_DIRECT, after
        // dropping the (clean) cached pages.
        drop_cache(&file.0);
        let direct =
            UringBdev::open(&format!("direct{round}"), &file.0, &UringOpts::default()).unwrap();
        assert!(direct.is_direct(), "{}", direct.info().detail);
        let direct: Arc<dyn Bdev> = direct;
        let out = run_ios(
            &t.reactors().handles()[0],
            &direct,
            vec![IoReq::read(off, len)],
            IO_TIMEOUT,
        )
        .unwrap();
        assert!(out[0].data == data, "the file on the disk holds the write");
    }
    ini.logout();
}

#[test]
fn a_mirror_flush_and_fua_writes_reach_every_plex() {
    use plexd_target::volume::{PlexKind, PlexSpec, PlexState, SubdiskSpec, VolumeSpec};
    let size = 8u64 << 20;
    let t = start_target(size);
    let files = [disk_file("plex1", size), disk_file("plex2", size)];
    let plexes = [
        buffered_bdev(&t, "u1", &files[0].0),
        buffered_bdev(&t, "u2", &files[1].0),
    ];
    let plex = |name: &str, bdev: &str| PlexSpec {
        name: name.into(),
        kind: PlexKind::Concat,
        columns: vec![vec![SubdiskSpec {
            bdev: bdev.into(),
            offset_bytes: 0,
            len_bytes: size,
        }]],
        state: PlexState::Active,
    };
    for (name, plexes) in [
        ("mv", vec![plex("mv-01", "u1"), plex("mv-02", "u2")]),
        ("mm", vec![plex("mm-01", "m0")]),
    ] {
        t.create_volume(&VolumeSpec {
            log: None,
            name: name.into(),
            size_bytes: size,
            plexes,
            read_policy: Default::default(),
            shared: false,
            local_detach: false,
        })
        .unwrap();
    }
    let mut cfg = config(None, None);
    cfg.targets[0].luns = vec![
        LunConfig {
            lun: 0,
            bdev: "mv".into(),
            ..Default::default()
        },
        LunConfig {
            lun: 1,
            bdev: "mm".into(),
            ..Default::default()
        },
    ];
    let fe = IscsiFrontend::start(&t, &cfg).unwrap();
    let mut ini = Ini::connect(fe.portal().port());
    assert_eq!(ini.login(true), 0);
    ini.clear_ua(1);
    assert!(wce(&mut ini, 0), "a volume with a buffered subdisk: WCE=1");
    assert!(!wce(&mut ini, 1), "a volume on a RAM disk: WCE=0");
    let flushes = || plexes.iter().map(|u| u.flushes()).collect::<Vec<_>>();
    let unwritten = |off: u64, len: u64| {
        files
            .iter()
            .map(|f| unwritten_pages(&f.0, off, len))
            .collect::<Vec<_>>()
    };

    // A plain write, then SYNCHRONIZE CACHE: every plex's file is flushed.
    let a = pattern(51, 128 << 10);
    assert_eq!(ini.write10(0, &a).status, 0);
    for n in unwritten(0, a.len() as u64).into_iter().flatten() {
        assert!(n > 0, "the write is in the page cache of each plex's file");
    }
    let before = flushes();
    assert_eq!(sync_cache(&mut ini, 0, true), 0);
    assert_eq!(
        flushes(),
        vec![before[0] + 1, before[1] + 1],
        "each plex flushed"
    );
    for n in unwritten(0, a.len() as u64) {
        assert!(matches!(n, None | Some(0)), "written back: {n:?}");
    }

    // A FUA write is durable when it completes: each plex's file is flushed after it.
    let b = pattern(52, 64 << 10);
    let lba = 4096u32;
    let mut cdb = [0u8; 10];
    cdb[0] = 0x2a;
    cdb[1] = 0x08; // FUA
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&((b.len() / BS) as u16).to_be_bytes());
    let before = flushes();
    assert_eq!(ini.scsi(&cdb, Some(&b), 0).status, 0, "FUA write");
    assert_eq!(
        flushes(),
        vec![before[0] + 1, before[1] + 1],
        "each plex flushed"
    );
    let off = lba as u64 * BS as u64;
    for n in unwritten(off, b.len() as u64) {
        assert!(matches!(n, None | Some(0)), "written back: {n:?}");
    }
    for f in &files {
        drop_cache(&f.0);
        let on_disk = std::fs::read(&f.0).unwrap();
        assert!(
            on_disk[..a.len()] == a[..],
            "{}: first write",
            f.0.display()
        );
        assert!(
            on_disk[off as usize..off as usize + b.len()] == b[..],
            "{}: FUA write",
            f.0.display()
        );
    }
    ini.logout();
}

#[test]
fn a_new_session_gets_one_power_on_unit_attention_per_lun() {
    let t = start_target(16 << 20);
    let fe = IscsiFrontend::start(&t, &config(None, None)).unwrap();
    for session in 0..3 {
        let mut ini = Ini::connect(fe.portal().port());
        assert_eq!(ini.login_raw(false), 0);
        // INQUIRY, REPORT LUNS and a REQUEST SENSE it cannot answer (descriptor
        // format) run and leave it pending.
        assert_eq!(ini.scsi(&[0x12, 0, 0, 0, 96, 0], None, 96).status, 0);
        let rl = [0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
        assert_eq!(ini.scsi(&rl, None, 256).status, 0);
        assert_eq!(ini.scsi(&[0x03, 1, 0, 0, 18, 0], None, 18).status, 2);
        if session == 2 {
            // REQUEST SENSE reports it (GOOD, the sense as data) and clears it.
            let rs = ini.scsi(&[0x03, 0, 0, 0, 18, 0], None, 18);
            assert_eq!(rs.status, 0);
            assert_eq!((rs.data[2] & 0x0f, rs.data[12], rs.data[13]), (6, 0x29, 0));
            let rs = ini.scsi(&[0x03, 0, 0, 0, 18, 0], None, 18);
            assert_eq!((rs.data[2] & 0x0f, rs.data[12]), (0, 0), "reported once");
            assert_eq!(ini.write10(7, &[0; BS]).status, 0);
            ini.logout();
            continue;
        }
        // The first other command gets POWER ON, RESET, OR BUS DEVICE RESET
        // OCCURRED and does not run.
        let w = ini.write10(7, &[0x5a; BS]);
        assert_eq!(
            (w.status, w.sense_key, w.asc),
            (2, Some(6), Some((0x29, 0x00))),
            "unit attention on the first command"
        );
        let r = ini.read10(7, 1);
        assert_eq!(r.status, 0, "reported once");
        assert!(r.data.iter().all(|&x| x == 0), "the write did not run");
        assert_eq!(ini.write10(7, &[0x5a; BS]).status, 0);
        assert_eq!(ini.write10(7, &[0; BS]).status, 0);
        let s = fe.sessions();
        let me = s
            .iter()
            .find(|x| x.isid.ends_with(&format!("{:02x}", ini.isid[5])));
        assert_eq!(
            me.map(|x| x.errors),
            Some(1),
            "a unit attention is no error (the one error: the descriptor-format REQUEST SENSE)"
        );
        ini.logout();
    }
    // A restarted frontend (as after a target restart): new nexuses, the same news.
    drop(fe);
    let fe = IscsiFrontend::start(&t, &config(None, None)).unwrap();
    let mut ini = Ini::connect(fe.portal().port());
    assert_eq!(ini.login_raw(false), 0);
    let r = ini.scsi(&[0u8; 6], None, 0);
    assert_eq!((r.status, r.asc), (2, Some((0x29, 0))), "after the restart");
    assert_eq!(ini.scsi(&[0u8; 6], None, 0).status, 0);
    ini.logout();
}

#[test]
fn first_burst_length_above_max_burst_length_is_negotiated_down() {
    let t = start_target(16 << 20);
    let fe = IscsiFrontend::start(&t, &config(None, None)).unwrap();
    let mut ini = Ini::connect(fe.portal().port());
    let r = ini.login_step(
        0x87,
        &format!(
            "InitiatorName=iqn.2026-11.io.plexd:ini\0TargetName={IQN}\0SessionType=Normal\0\
             HeaderDigest=None\0DataDigest=None\0MaxRecvDataSegmentLength=8192\0\
             ImmediateData=Yes\0InitialR2T=No\0FirstBurstLength=262144\0MaxBurstLength=65536\0"
        ),
    );
    assert_eq!(pdu::be16(&r.bhs, 36), 0, "login succeeds");
    let keys = Ini::keys(&r);
    let get = |k: &str| keys.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
    assert_eq!(get("MaxBurstLength").as_deref(), Some("65536"));
    assert_eq!(
        get("FirstBurstLength").as_deref(),
        Some("65536"),
        "FirstBurstLength may not exceed MaxBurstLength (RFC 7143 §13.14): {keys:?}"
    );
    ini.clear_ua(0);
    // The session works with what was negotiated: a write of 1 MiB in bursts.
    let data = pattern(61, 1 << 20);
    assert_eq!(ini.write10(0, &data).status, 0);
    assert!(ini.read10(0, (data.len() / BS) as u16).data == data);
    ini.logout();
}

#[test]
fn a_session_reinstatement_is_logged_as_one() {
    const ISID: [u8; 6] = [0x80, 0, 0, 0x5e, 0x55, 0x10];
    /// Reinstatements tried to meet both cases (reactors are handed connections
    /// in turn, so a filler connection puts the next login on the same reactor).
    const MAX_ATTEMPTS: usize = 8;
    let t = start_target(16 << 20);
    let fe = IscsiFrontend::start(&t, &config(None, None)).unwrap();
    let reactor_of = |ini: &Ini| {
        let peer = ini.s.local_addr().unwrap().to_string();
        let s = fe.sessions();
        s.iter()
            .find(|x| x.peer == peer)
            .map(|x| x.reactor)
            .unwrap()
    };
    let mut old = Ini::connect(fe.portal().port());
    old.isid = ISID;
    assert_eq!(old.login(false), 0);
    let (mut same, mut cross, mut reinstated) = (false, false, 0);
    for _ in 0..MAX_ATTEMPTS {
        if same && cross {
            break;
        }
        let old_reactor = reactor_of(&old);
        let filler = (!same).then(|| TcpStream::connect(fe.portal()).unwrap());
        let mut new = Ini::connect(fe.portal().port());
        new.isid = ISID;
        assert_eq!(new.login(false), 0);
        assert!(old.closed_by_target(), "the older session is closed");
        reinstated += 1;
        if reactor_of(&new) == old_reactor {
            same = true;
        } else {
            cross = true;
        }
        drop(filler);
        old = new;
    }
    assert!(
        same && cross,
        "reinstated on one reactor {same}, across two {cross}"
    );
    let isid = "0x8000005e5510";
    let lines = wait_for_log_lines("naming the reinstated session", reinstated, |l| {
        l.contains("reinstated") && l.contains(isid)
    });
    assert_eq!(
        lines.len(),
        reinstated,
        "one line per reinstatement: {lines:?}"
    );
    for l in &lines {
        assert!(
            l.contains("iqn.2026-11.io.plexd:ini") && l.contains(IQN),
            "names initiator and target: {l}"
        );
        assert!(!l.contains("management API"), "{l}");
    }
    old.logout();
}

/// PR OUT of the test's initiator: status and (sense key, ASC, ASCQ).
fn pr_out(ini: &mut Ini, sa: u8, ty: u8, rkey: u64, sakey: u64) -> (u8, Option<(u8, u8, u8)>) {
    let mut cdb = [0u8; 10];
    cdb[0] = 0x5f;
    cdb[1] = sa;
    cdb[2] = ty;
    cdb[8] = 24;
    let p = plexd_target::frontend::scsi::pr::param(rkey, sakey, false);
    let r = ini.scsi(&cdb, Some(&p), 0);
    let sense = r.sense_key.zip(r.asc).map(|(k, (a, q))| (k, a, q));
    (r.status, sense)
}

#[test]
fn a_shared_volumes_pr_out_goes_to_the_cluster_and_its_committed_state_is_served() {
    use plexd_target::frontend::scsi::pr::{keys_of, Nexus, PrState};
    use plexd_target::frontend::scsi::pr_cluster::PrOutResult;
    use plexd_target::Event;
    const NOT_READY_TRANSITION: Option<(u8, u8, u8)> = Some((2, 0x04, 0x0a));
    let t = start_target(16 << 20);
    let mut cfg = config(None, None);
    cfg.targets[0].luns[0].cluster_reservations = true;
    cfg.targets[0].luns[0].alua = Some(Alua {
        local_group: 3,
        relative_port: 3,
        groups: vec![PortGroup {
            id: 3,
            state: AluaState::ActiveOptimized,
            ports: vec![3],
        }],
    });
    let fe = Arc::new(std::sync::Mutex::new(
        IscsiFrontend::start(&t, &cfg).unwrap(),
    ));
    let port = fe.lock().unwrap().portal().port();
    let mut ini = Ini::connect(port);
    assert_eq!(ini.login(false), 0);

    // No coordinator listens: the host is told to retry, nothing changes.
    assert_eq!(pr_out(&mut ini, 0, 0, 0, 0xa), (2, NOT_READY_TRANSITION));
    assert_eq!(t.pr_broker().waiting(), 0);

    // A fake coordinator: answers each request as `answers` says (the committed
    // state set first, as plexd's kernel commit does), and records the requests.
    let events = t.subscribe();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let (answer_tx, answer_rx) = std::sync::mpsc::channel::<(PrState, PrOutResult)>();
    let coordinator = {
        let (t, fe) = (Arc::clone(&t), Arc::clone(&fe));
        std::thread::spawn(move || {
            // One answer per request; ends when the test drops `answer_tx`.
            for (state, result) in answer_rx {
                let next = smol::block_on(smol::future::or(
                    async {
                        loop {
                            match events.recv().await {
                                Ok(ev @ Event::PrOut { .. }) => return Some(ev),
                                Ok(_) => continue,
                                Err(_) => return None,
                            }
                        }
                    },
                    async {
                        smol::Timer::after(IO_TIMEOUT).await;
                        None
                    },
                ));
                let Some(ev) = next else {
                    panic!("no PR OUT event within {IO_TIMEOUT:?}");
                };
                let Event::PrOut { request, .. } = ev else {
                    unreachable!("only PR OUT events are kept");
                };
                seen_tx.send(ev).unwrap();
                t.pr_broker().set_state("m0", &state);
                let applied = fe.lock().unwrap().set_reservations("m0", &state);
                applied.wait().unwrap();
                t.complete_pr_out(request, result).unwrap();
            }
        })
    };
    let me = Nexus::new(
        format!("iqn.2026-11.io.plexd:ini,i,0x{}", hex(&ini.isid)),
        3,
    );
    let other = Nexus::new("iqn.2026-11.io.plexd:other,i,0x1", 7);

    // REGISTER: forwarded with the nexus (relative port 3, the ALUA port), committed.
    let mut committed = PrState::default();
    committed
        .out(
            &me,
            0,
            0,
            &plexd_target::frontend::scsi::pr::param(0, 0xa, false),
        )
        .unwrap();
    answer_tx
        .send((committed.clone(), PrOutResult::Committed))
        .unwrap();
    assert_eq!(pr_out(&mut ini, 0, 0, 0, 0xa), (0, None));
    match seen_rx.recv_timeout(IO_TIMEOUT).unwrap() {
        Event::PrOut {
            volume,
            initiator,
            relative_port,
            service_action,
            parameters,
            ..
        } => {
            assert_eq!(
                (
                    volume.as_str(),
                    initiator.as_str(),
                    relative_port,
                    service_action
                ),
                ("m0", me.initiator.as_str(), 3, 0)
            );
            assert_eq!(parameters.len(), 24);
        }
        other => panic!("{other:?}"),
    }
    let keys = ini
        .scsi(&[0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], None, 4096)
        .data;
    assert_eq!(keys_of(&keys), vec![0xa], "PR IN reads the committed state");

    // A RESERVE the cluster finds stale (another node's host reserved meanwhile):
    // decided again on the new state, it is a RESERVATION CONFLICT.
    let mut newer = committed.clone();
    let p = |r, s| plexd_target::frontend::scsi::pr::param(r, s, false);
    newer.out(&other, 0, 0, &p(0, 0xb)).unwrap();
    newer.out(&other, 1, 1, &p(0xb, 0)).unwrap();
    answer_tx.send((newer.clone(), PrOutResult::Stale)).unwrap();
    assert_eq!(pr_out(&mut ini, 1, 1, 0xa, 0), (0x18, None));
    assert!(matches!(
        seen_rx.recv_timeout(IO_TIMEOUT),
        Ok(Event::PrOut { .. })
    ));
    assert!(
        seen_rx.try_recv().is_err(),
        "a conflict on the new state is not sent again"
    );
    // Writes of this nexus now conflict (write exclusive held by the other one).
    assert_eq!(ini.write10(0, &[1u8; BS]).status, 0x18);

    // The cluster cannot run it (no quorum): NOT READY 04h/0Ah, state unchanged.
    answer_tx
        .send((newer.clone(), PrOutResult::Unavailable))
        .unwrap();
    assert_eq!(pr_out(&mut ini, 0, 0, 0xa, 0xc), (2, NOT_READY_TRANSITION));
    let keys = ini
        .scsi(&[0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], None, 4096)
        .data;
    assert_eq!(keys_of(&keys), vec![0xa, 0xb]);
    assert_eq!(t.pr_broker().waiting(), 0, "every request was answered");
    // An answer to a request nobody waits for is refused, naming it.
    let e = t.complete_pr_out(9999, PrOutResult::Committed).unwrap_err();
    assert!(e.to_string().contains("9999"), "{e}");
    ini.logout();
    drop(answer_tx);
    coordinator.join().unwrap();
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads of this size fill the connection's socket (128 KiB each).
const FILL_READ_BLOCKS: u16 = 256;
/// Most reads sent to fill it (32 MiB: far more than a loopback socket pair
/// holds; the target's send buffer autotunes up to 4 MB).
const MAX_FILL_READS: u32 = 256;
/// The filling initiator's receive buffer (the kernel's minimum, about): with
/// more, a machine whose `tcp_rmem` lets the queue be collapsed opens the window
/// again by the little output the target still holds, and the Logout completes.
const FILL_RCVBUF: usize = 4 << 10;

/// Found by review: while a Logout response waits behind output the socket does
/// not take, bytes from the initiator must not make the reactor spin (the read
/// poll re-armed although nothing will be read until the connection closes). The
/// observable: every reactor still goes to sleep (`ReactorStats::sleeps`) while
/// the connection waits; a spinning reactor always has a completion to handle
/// and never sleeps, so before the fix the wait below runs into its deadline.
#[test]
fn bytes_after_a_logout_stuck_in_a_full_socket_do_not_spin_the_reactor() {
    let t = start_target(8 << 20);
    let fe = IscsiFrontend::start(&t, &config(None, None)).unwrap();
    let port = fe.portal().port();
    let mut ini = Ini::connect_with_rcvbuf(port, FILL_RCVBUF);
    assert_eq!(ini.login(false), 0);
    // Reads the initiator does not take, one at a time (each answered before the
    // next, so the queued output stays far below the 4 MiB above which the
    // target stops reading requests), until one is not answered at once (it
    // waits for a buffer: the socket takes nothing) or the target says it is
    // blocked on send. Then the Data-In waits in the output queue.
    let len = u32::from(FILL_READ_BLOCKS) * BS as u32;
    let session = |what: &str| {
        let s = fe.sessions();
        assert_eq!(s.len(), 1, "{what}: the session stays");
        s.into_iter().next().unwrap()
    };
    for i in 0..MAX_FILL_READS {
        let itt = ini.itt;
        ini.itt += 1;
        let mut b = Bhs::new(op::SCSI_CMD, 0x80 | 0x40 | 0x01);
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&(i * u32::from(FILL_READ_BLOCKS) % 8192).to_be_bytes());
        cdb[7..9].copy_from_slice(&FILL_READ_BLOCKS.to_be_bytes());
        b.u32_at(16, itt).u32_at(20, len).u32_at(24, ini.cmdsn);
        b.0[32..42].copy_from_slice(&cdb);
        ini.cmdsn += 1;
        ini.send(&b, &[]);
        let want = u64::from(i + 1) * u64::from(len);
        let deadline = std::time::Instant::now() + IO_TIMEOUT;
        let s = loop {
            let s = session("filling");
            if s.read_bytes >= want || s.cmds_waiting_buf > 0 || s.send_blocked_ms > 0 {
                break s;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "read {i} not answered within {IO_TIMEOUT:?}: {s:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        if s.cmds_waiting_buf > 0 || s.send_blocked_ms > 0 {
            break;
        }
    }
    // The counter is published when a request arrives: TEST UNIT READY (48
    // bytes of answer each) until it shows the connection blocked on send.
    let mut blocked = false;
    for _ in 0..MAX_FILL_READS {
        if session("blocked").send_blocked_ms > 0 {
            blocked = true;
            break;
        }
        let mut b = Bhs::new(op::SCSI_CMD, 0x80 | 0x01);
        b.u32_at(16, ini.itt).u32_at(24, ini.cmdsn);
        ini.itt += 1;
        ini.cmdsn += 1;
        ini.send(&b, &[]);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(blocked, "{MAX_FILL_READS} reads did not fill the socket");
    // Logout: its response queues behind the Data-In. Once the reactor has gone
    // to sleep twice since (it sleeps only with nothing to do, so it has read
    // and answered the Logout), more bytes come (a NOP-Out) that the target will
    // never read: they find the read poll armed only before the fix.
    let stats = t.reactors().stats().to_vec();
    let sleeps = |s: &[Arc<plexd_target::reactor::ReactorStats>]| -> Vec<u64> {
        s.iter()
            .map(|r| r.sleeps.load(std::sync::atomic::Ordering::Relaxed))
            .collect()
    };
    let slept_twice = |start: &[u64], what: &str| {
        let deadline = std::time::Instant::now() + IO_TIMEOUT;
        loop {
            assert_eq!(
                fe.sessions().len(),
                1,
                "{what}: the session waits for its output (the socket must be full for this test)"
            );
            let now = sleeps(&stats);
            if now.iter().zip(start).all(|(n, s)| *n >= s + 2) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: a reactor did not sleep within {IO_TIMEOUT:?} (sleeps {start:?} -> {now:?}): it spins"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let mut b = Bhs::new(op::LOGOUT_REQ, 0x80);
    b.byte(0, 0x40 | op::LOGOUT_REQ)
        .u32_at(16, ini.itt)
        .u32_at(24, ini.cmdsn);
    ini.send(&b, &[]);
    slept_twice(&sleeps(&stats), "after the Logout");
    let mut nop = Bhs::new(op::NOP_OUT, 0x80);
    nop.byte(0, 0x40 | op::NOP_OUT)
        .u32_at(16, RESERVED_TAG)
        .u32_at(20, RESERVED_TAG)
        .u32_at(24, ini.cmdsn);
    ini.send(&nop, &[]);
    // Every reactor sleeps twice more while the connection waits (an idle
    // reactor sleeps at most MAX_SLEEP, 500 ms, at a time).
    slept_twice(&sleeps(&stats), "after more bytes");
    // The initiator reads: the output drains and the target closes the
    // connection (with the NOP-Out unread in its socket that close is a reset,
    // which may drop what the kernel still held for the initiator, so the test
    // does not insist on seeing the Logout response).
    while ini.recv().is_ok() {}
    let deadline = std::time::Instant::now() + IO_TIMEOUT;
    while !fe.sessions().is_empty() {
        assert!(std::time::Instant::now() < deadline, "the session ends");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Issue 9, iSCSI: PERSISTENT RESERVE OUT PREEMPT AND ABORT aborts the tasks
/// of the preempted I_T nexus on the LUN as ABORT TASK does with TAS=0. B holds
/// a write exclusive reservation and has two writes waiting for their data
/// after an R2T and one at the bdev (held 2 s there by an error bdev's latency,
/// after the inner bdev wrote it); A preempts and aborts B. A's GOOD comes only
/// after B's write left the bdev; none of B's writes is ever answered (a
/// response to any of them would come before, or instead of, the answers to
/// B's next commands, whose ITTs are checked); the data B sends after the
/// preempt writes nothing; B's next commands report REGISTRATIONS PREEMPTED
/// (2Ah/05h), then COMMANDS CLEARED BY ANOTHER INITIATOR (2Fh/00h); B's key is
/// gone and its write conflicts. Before: the PR OUT acted as PREEMPT (B's write
/// at the bdev answered GOOD before anything else, the held writes wrote their
/// data, no unit attention).
#[test]
fn preempt_and_abort_aborts_the_preempted_nexus_tasks_before_its_good() {
    use plexd_target::bdev::error::ErrorBdev;
    const WE: u8 = 1;
    let t = start_target(16 << 20);
    let e = ErrorBdev::new("e0", t.bdev("m0").unwrap());
    t.add_bdev(e.clone()).unwrap();
    let mut cfg = config(None, None);
    cfg.targets[0].luns[0].bdev = "e0".into();
    let fe = IscsiFrontend::start(&t, &cfg).unwrap();
    let port = fe.portal().port();
    let mut a = Ini::connect(port);
    assert_eq!(a.login(false), 0);
    let mut b = Ini::connect(port);
    assert_eq!(b.login(false), 0);

    // A's data first, before any reservation.
    let old = pattern(1, 128 << 10);
    assert_eq!(a.write10(0, &old).status, 0, "A's write");
    assert_eq!(pr_out(&mut a, 0, 0, 0, 0xaaaa), (0, None), "REGISTER A");
    assert_eq!(pr_out(&mut b, 0, 0, 0, 0xbbbb), (0, None), "REGISTER B");
    assert_eq!(pr_out(&mut b, 1, WE, 0xbbbb, 0), (0, None), "B reserves");

    // B: two 64 KiB writes over A's data, each given its R2T, data held back.
    let new = pattern(2, 128 << 10);
    let mut held = Vec::new();
    for i in 0..2u32 {
        let itt = b.send_write10(i * 128, 128, &[]);
        let (ttt, off, len) = b.recv_r2t(itt);
        assert_eq!((off, len), (0, 64 << 10), "R2T of ITT {itt:#x}");
        held.push((itt, ttt, i as usize));
    }
    // B: a 4 KiB write (immediate data) that sits at the bdev for 2 s.
    let latency = Duration::from_secs(2);
    e.injection().set_latency_us(latency.as_micros() as u64);
    let at_bdev = pattern(3, 4096);
    let sent = std::time::Instant::now();
    b.send_write10(512, 8, &at_bdev);
    let deadline = sent + IO_TIMEOUT;
    while bdev_read(&t, "m0", 512 * BS as u64, 4096) != at_bdev {
        assert!(
            std::time::Instant::now() < deadline,
            "B's write at the bdev"
        );
        std::thread::sleep(Duration::from_millis(5));
    }

    // A preempts B and aborts (service action 5, write exclusive).
    let r = pr_out(&mut a, 5, WE, 0xaaaa, 0xbbbb);
    let took = sent.elapsed();
    e.injection().set_latency_us(0);
    assert_eq!(r, (0, None), "A's PREEMPT AND ABORT");
    assert!(
        took >= latency,
        "GOOD after {took:?}, while B's write was still at the bdev ({latency:?})"
    );
    // B's held writes get their data now: dropped, never answered.
    for &(itt, ttt, i) in &held {
        b.send_data_out(itt, ttt, 0, &new[i * (64 << 10)..][..64 << 10]);
    }
    let ua = |r: ScsiResult| (r.status, r.sense_key, r.asc);
    assert_eq!(
        ua(b.test_unit_ready()),
        (2, Some(6), Some((0x2a, 0x05))),
        "B: REGISTRATIONS PREEMPTED"
    );
    assert_eq!(
        ua(b.test_unit_ready()),
        (2, Some(6), Some((0x2f, 0x00))),
        "B: COMMANDS CLEARED BY ANOTHER INITIATOR"
    );
    assert_eq!(ua(b.test_unit_ready()), (0, None, None), "B: nothing more");
    assert_eq!(
        ua(a.test_unit_ready()),
        (0, None, None),
        "A: no unit attention"
    );
    // A holds the reservation; B's key is gone and its write conflicts.
    let keys = b
        .scsi(&[0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], None, 4096)
        .data;
    assert_eq!(
        plexd_target::frontend::scsi::pr::keys_of(&keys),
        vec![0xaaaa],
        "B's registration is gone"
    );
    let res = b
        .scsi(&[0x5e, 1, 0, 0, 0, 0, 0, 0x10, 0, 0], None, 4096)
        .data;
    assert_eq!((&res[8..16], res[21]), (&0xaaaau64.to_be_bytes()[..], WE));
    assert_eq!(
        b.write10(0, &new[..BS]).status,
        0x18,
        "B's new write conflicts"
    );
    assert!(
        bdev_read(&t, "m0", 0, 128 << 10) == old,
        "nothing of B's aborted writes on the bdev"
    );
    assert_eq!(a.write10(0, &new[..BS]).status, 0, "A writes");
    a.logout();
    b.logout();
}

/// A command's (status, sense key, (ASC, ASCQ)).
type Outcome = (u8, Option<u8>, Option<(u8, u8)>);

/// Issue 9, iSCSI: the reservation unit attentions other than a preempt's
/// REGISTRATIONS PREEMPTED, through the wire with three I_T nexuses A, B, C on
/// one LUN (SPC-4, PERSISTENT RESERVE OUT service actions), never for the nexus
/// that sent the change: A releasing a registrants-only reservation gives B and
/// C RESERVATIONS RELEASED (2Ah/04h), releasing a write exclusive one nothing;
/// B preempting A's write exclusive reservation as exclusive access (another
/// type) gives A REGISTRATIONS PREEMPTED and C RESERVATIONS RELEASED; C's CLEAR
/// gives A and B RESERVATIONS PREEMPTED (2Ah/03h); A unregistering as the
/// holder of a registrants-only reservation gives B (registered) RESERVATIONS
/// RELEASED and C (not registered) nothing. Before: only the preempt's unit
/// attention, B's and C's commands ran as if nothing had changed.
#[test]
fn release_clear_and_a_type_changing_preempt_raise_their_unit_attentions() {
    const WE: u8 = 1;
    const EA: u8 = 3;
    const WE_RO: u8 = 5;
    const EA_RO: u8 = 6;
    const RELEASED: Outcome = (2, Some(6), Some((0x2a, 0x04)));
    const PREEMPTED: Outcome = (2, Some(6), Some((0x2a, 0x03)));
    const REG_PREEMPTED: Outcome = (2, Some(6), Some((0x2a, 0x05)));
    const NONE: Outcome = (0, None, None);
    let t = start_target(16 << 20);
    let fe = IscsiFrontend::start(&t, &config(None, None)).unwrap();
    let port = fe.portal().port();
    let mut n: Vec<Ini> = (0..3)
        .map(|_| {
            let mut i = Ini::connect(port);
            assert_eq!(i.login(false), 0);
            i
        })
        .collect();
    let (a, b, c) = (0, 1, 2);
    let keys = [0xaaaa, 0xbbbb, 0xcccc];
    // The unit attentions each nexus reports (TEST UNIT READY), then GOOD.
    let check = |n: &mut Vec<Ini>, want: [&[Outcome]; 3], what: &str| {
        for (i, w) in want.iter().enumerate() {
            for (k, ua) in w.iter().chain([&NONE]).enumerate() {
                let r = n[i].test_unit_ready();
                assert_eq!(
                    (r.status, r.sense_key, r.asc),
                    *ua,
                    "{what}: nexus {} (report {k})",
                    ["A", "B", "C"][i]
                );
            }
        }
    };
    for i in [a, b, c] {
        assert_eq!(
            pr_out(&mut n[i], 0, 0, 0, keys[i]),
            (0, None),
            "REGISTER {i}"
        );
    }

    assert_eq!(pr_out(&mut n[a], 1, WE_RO, keys[a], 0), (0, None));
    assert_eq!(pr_out(&mut n[a], 2, WE_RO, keys[a], 0), (0, None));
    check(&mut n, [&[], &[RELEASED], &[RELEASED]], "A released WE_RO");
    assert_eq!(pr_out(&mut n[a], 1, WE, keys[a], 0), (0, None));
    assert_eq!(pr_out(&mut n[a], 2, WE, keys[a], 0), (0, None));
    check(&mut n, [&[], &[], &[]], "A released WE");

    assert_eq!(pr_out(&mut n[a], 1, WE, keys[a], 0), (0, None));
    assert_eq!(
        pr_out(&mut n[b], 4, EA, keys[b], keys[a]),
        (0, None),
        "B preempts A as EA"
    );
    check(
        &mut n,
        [&[REG_PREEMPTED], &[], &[RELEASED]],
        "B preempted A's WE as EA",
    );

    assert_eq!(pr_out(&mut n[a], 0, 0, 0, keys[a]), (0, None), "A again");
    assert_eq!(pr_out(&mut n[c], 3, 0, keys[c], 0), (0, None), "C clears");
    check(&mut n, [&[PREEMPTED], &[PREEMPTED], &[]], "C cleared");
    let read_keys = |ini: &mut Ini| {
        let d = ini
            .scsi(&[0x5e, 0, 0, 0, 0, 0, 0, 0x10, 0, 0], None, 4096)
            .data;
        plexd_target::frontend::scsi::pr::keys_of(&d)
    };
    assert_eq!(read_keys(&mut n[a]), Vec::<u64>::new());

    for i in [a, b] {
        assert_eq!(
            pr_out(&mut n[i], 0, 0, 0, keys[i]),
            (0, None),
            "REGISTER {i}"
        );
    }
    assert_eq!(pr_out(&mut n[a], 1, EA_RO, keys[a], 0), (0, None));
    assert_eq!(
        pr_out(&mut n[a], 0, 0, keys[a], 0),
        (0, None),
        "A unregisters"
    );
    check(
        &mut n,
        [&[], &[RELEASED], &[]],
        "A unregistered holding EA_RO",
    );
    assert_eq!(read_keys(&mut n[b]), vec![keys[b]]);
    for mut i in n {
        i.logout();
    }
}
