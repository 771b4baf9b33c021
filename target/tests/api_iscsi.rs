//! iSCSI management through the kernel interface, end to end: a real `plexd-target`
//! process driven by `KernelClient`, checked from the initiator side with libiscsi's
//! tools (Debian package `libiscsi-bin`) and a minimal initiator over a plain socket.
//! Every child process is killed and reaped by a guard, every wait has a deadline,
//! and only 127.0.0.1 is used.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use plexd_target::api::process::TargetProcess;
use plexd_target::api::{BdevRequest, ClientError, ErrorCode, KernelClient};
use plexd_target::frontend::iscsi::pdu::{self, op, Bhs, Digests, BHS_LEN};
use plexd_target::frontend::iscsi::{ChapConfig, LunConfig, SessionInfo, TargetNodeConfig};
use plexd_target::volume::{PlexKind, PlexSpec, PlexState, ReadPolicy, SubdiskSpec, VolumeSpec};

const MIB: u64 = 1 << 20;
const IQN: &str = "iqn.2026-11.io.plexd:api";
const INI_A: &str = "iqn.2026-11.io.plexd:host-a";
const INI_B: &str = "iqn.2026-11.io.plexd:host-b";
const TOOL_DEADLINE: Duration = Duration::from_secs(30);
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const BS: usize = 512;

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_plexd-target"))
}

/// A target process and the reservation folder its API-started frontend uses
/// (next to the socket), removed after the process is gone.
struct Fixture {
    t: Option<TargetProcess>,
    pr_dir: PathBuf,
}

impl Fixture {
    fn start(tag: &str) -> Fixture {
        let t = TargetProcess::start(exe(), tag, &["--cores", "0,1"]).expect("plexd-target starts");
        let pr_dir = t.socket().with_extension("iscsi-pr");
        Fixture { t: Some(t), pr_dir }
    }

    fn proc(&self) -> &TargetProcess {
        self.t.as_ref().expect("running")
    }

    fn client(&self) -> KernelClient {
        self.proc().client().expect("client connects")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        drop(self.t.take()); // kills and reaps the process
        let _ = std::fs::remove_dir_all(&self.pr_dir);
    }
}

/// m0 (malloc, 8 MiB) with a pattern in its first MiB, and vol0: a 4 MiB concat
/// volume over it.
fn volume(k: &KernelClient) -> Vec<u8> {
    k.create_bdev(&BdevRequest::malloc("m0", 8 * MIB)).unwrap();
    let data = pattern(11, MIB as usize);
    assert_eq!(k.write("m0", 0, &data).unwrap(), 0);
    k.create_volume(&VolumeSpec {
        log: None,
        name: "vol0".into(),
        size_bytes: 4 * MIB,
        plexes: vec![PlexSpec {
            name: "vol0-01".into(),
            kind: PlexKind::Concat,
            columns: vec![vec![SubdiskSpec {
                bdev: "m0".into(),
                offset_bytes: 0,
                len_bytes: 4 * MIB,
            }]],
            state: PlexState::Active,
        }],
        read_policy: ReadPolicy::LeastBusy,
        shared: false,
        local_detach: false,
    })
    .unwrap();
    data
}

fn lun(n: u64, bdev: &str) -> LunConfig {
    LunConfig {
        lun: n,
        bdev: bdev.into(),
        ..Default::default()
    }
}

fn node(iqn: &str, luns: Vec<LunConfig>) -> TargetNodeConfig {
    TargetNodeConfig {
        iqn: iqn.into(),
        alias: Some("api".into()),
        luns,
        ..Default::default()
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// The API error of a call expected to fail.
fn api_err<T: std::fmt::Debug>(r: Result<T, ClientError>) -> plexd_target::api::ApiError {
    match r {
        Err(ClientError::Api(e)) => e,
        other => panic!("expected a refusal from the target, got {other:?}"),
    }
}

/// Polls `cond` until it holds or `timeout` passes.
fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ---- libiscsi's tools ----

/// A child process that is killed and reaped however the test ends.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `cmd` with a deadline (killed at it); returns its output.
fn run(cmd: &mut Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e} (install libiscsi-bin: ci/setup)"));
    let mut g = ChildGuard(Some(child));
    let mut out = g.0.as_mut().unwrap().stdout.take().unwrap();
    let mut err = g.0.as_mut().unwrap().stderr.take().unwrap();
    let to = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let te = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = g.0.as_mut().unwrap().try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > TOOL_DEADLINE {
            drop(g);
            panic!("{cmd:?} did not finish within {TOOL_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    g.0 = None;
    Output {
        status,
        stdout: to.join().unwrap(),
        stderr: te.join().unwrap(),
    }
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn inq(
    portal: SocketAddr,
    initiator: &str,
    iqn: &str,
    lun: u64,
    creds: Option<(&str, &str)>,
) -> Output {
    let auth = creds.map(|(u, s)| format!("{u}%{s}@")).unwrap_or_default();
    run(Command::new("iscsi-inq")
        .args(["-i", initiator])
        .arg(format!("iscsi://{auth}{portal}/{iqn}/{lun}")))
}

fn discover(portal: SocketAddr, initiator: &str) -> String {
    let o = run(Command::new("iscsi-ls")
        .args(["-i", initiator, "-s"])
        .arg(format!("iscsi://{portal}")));
    let t = text(&o);
    assert!(o.status.success(), "iscsi-ls failed: {t}");
    t
}

// ---- a minimal initiator ----

/// One connection, one command at a time, no digests.
struct Ini {
    s: TcpStream,
    cmdsn: u32,
    itt: u32,
}

impl Ini {
    /// Logs in to `iqn` as `initiator` straight to full feature, then clears LUN
    /// 0's power-on unit attention with TEST UNIT READY as initiators do (two
    /// commands); `Err(status)` when the target refuses.
    fn login(portal: SocketAddr, initiator: &str, iqn: &str, isid: u8) -> Result<Ini, u16> {
        let s = TcpStream::connect(portal).unwrap();
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        let mut ini = Ini {
            s,
            cmdsn: 1,
            itt: 1,
        };
        let mut b = Bhs::new(op::LOGIN_REQ, 0x87);
        b.byte(0, 0x40 | op::LOGIN_REQ);
        b.0[8..14].copy_from_slice(&[0x80, 0, 0, 0x56, 0x78, isid]);
        b.u32_at(16, ini.itt).u32_at(24, ini.cmdsn);
        let keys = format!(
            "InitiatorName={initiator}\0TargetName={iqn}\0SessionType=Normal\0\
             HeaderDigest=None\0DataDigest=None\0MaxRecvDataSegmentLength=65536\0\
             ImmediateData=Yes\0InitialR2T=Yes\0FirstBurstLength=65536\0MaxBurstLength=262144\0"
        );
        ini.send(&b, keys.as_bytes());
        let (bhs, _) = ini.recv().expect("login response");
        assert_eq!(pdu::opcode(&bhs), op::LOGIN_RESP);
        let status = pdu::be16(&bhs, 36);
        if status != 0 {
            return Err(status);
        }
        assert_eq!(bhs[1] & 0x83, 0x83, "transit to full feature");
        ini.itt += 1;
        assert_eq!(ini.command(0, &[0u8; 6], 0).0, 2, "power-on unit attention");
        assert_eq!(ini.command(0, &[0u8; 6], 0).0, 0, "TEST UNIT READY");
        Ok(ini)
    }

    fn send(&mut self, bhs: &Bhs, data: &[u8]) {
        let mut v = Vec::new();
        pdu::encode(&mut v, bhs, data, Digests::default());
        self.s.write_all(&v).unwrap();
    }

    fn recv(&mut self) -> std::io::Result<([u8; BHS_LEN], Vec<u8>)> {
        let mut h = [0u8; BHS_LEN];
        self.s.read_exact(&mut h)?;
        let total = pdu::wire_len(&h, Digests::default(), 1 << 24).unwrap();
        let mut rest = vec![0u8; total - BHS_LEN];
        self.s.read_exact(&mut rest)?;
        let mut all = h.to_vec();
        all.extend_from_slice(&rest);
        match pdu::parse(&all, Digests::default(), 1 << 24).unwrap() {
            pdu::Parsed::Pdu(p) => Ok((*p.bhs, p.data.to_vec())),
            pdu::Parsed::Need(_) => unreachable!("whole PDU read"),
        }
    }

    /// A read-direction command on `lun`; returns (status, data).
    fn command(&mut self, lun: u64, cdb: &[u8], read_len: u32) -> (u8, Vec<u8>) {
        let (status, data, _) = self.command_sense(lun, cdb, read_len);
        (status, data)
    }

    /// A read-direction command on `lun`; returns (status, data, the SCSI
    /// Response's data segment: the sense of a CHECK CONDITION).
    fn command_sense(&mut self, lun: u64, cdb: &[u8], read_len: u32) -> (u8, Vec<u8>, Vec<u8>) {
        let itt = self.itt;
        self.itt += 1;
        let mut b = Bhs::new(op::SCSI_CMD, 0x80 | 0x40 | 0x01);
        b.0[8..16].copy_from_slice(&((lun & 0xff) << 48).to_be_bytes());
        b.u32_at(16, itt)
            .u32_at(20, read_len)
            .u32_at(24, self.cmdsn);
        b.0[32..32 + cdb.len()].copy_from_slice(cdb);
        self.cmdsn += 1;
        self.send(&b, &[]);
        let mut data = Vec::new();
        loop {
            let (h, d) = self.recv().expect("command answer");
            match pdu::opcode(&h) {
                op::DATA_IN => {
                    data.extend_from_slice(&d);
                    if h[1] & 0x01 != 0 {
                        return (h[3], data, Vec::new());
                    }
                }
                op::SCSI_RESP => return (h[3], data, d),
                op::NOP_IN => {
                    let mut a = Bhs::new(op::NOP_OUT, 0x80);
                    a.byte(0, 0x40 | op::NOP_OUT)
                        .u32_at(16, pdu::RESERVED_TAG)
                        .u32_at(20, pdu::be32(&h, 20))
                        .u32_at(24, self.cmdsn);
                    self.send(&a, &[]);
                }
                other => panic!("unexpected opcode {other:#x}"),
            }
        }
    }

    fn read10(&mut self, lun: u64, lba: u32, blocks: u16) -> (u8, Vec<u8>) {
        let mut cdb = [0u8; 10];
        cdb[0] = 0x28;
        cdb[2..6].copy_from_slice(&lba.to_be_bytes());
        cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
        self.command(lun, &cdb, blocks as u32 * BS as u32)
    }

    /// READ CAPACITY(16): (status, last LBA, sense key/ASC/ASCQ of a CHECK
    /// CONDITION).
    fn read_capacity16(&mut self, lun: u64) -> (u8, u64, (u8, u8, u8)) {
        let mut cdb = [0u8; 16];
        cdb[0] = 0x9e;
        cdb[1] = 0x10;
        cdb[10..14].copy_from_slice(&32u32.to_be_bytes());
        let (status, d, sense) = self.command_sense(lun, &cdb, 32);
        if status != 0 {
            // Data segment: SenseLength (2 bytes), then fixed-format sense.
            assert!(sense.len() >= 2 + 14, "sense data: {sense:?}");
            return (
                status,
                0,
                (sense[2 + 2] & 0x0f, sense[2 + 12], sense[2 + 13]),
            );
        }
        (
            status,
            u64::from_be_bytes(d[0..8].try_into().unwrap()),
            (0, 0, 0),
        )
    }

    /// The LUN numbers REPORT LUNS lists (flat addressing).
    fn report_luns(&mut self) -> Vec<u64> {
        let mut cdb = [0u8; 12];
        cdb[0] = 0xa0;
        cdb[6..10].copy_from_slice(&4096u32.to_be_bytes());
        let (status, d) = self.command(0, &cdb, 4096);
        assert_eq!(status, 0, "REPORT LUNS status");
        let n = u32::from_be_bytes(d[0..4].try_into().unwrap()) as usize / 8;
        (0..n)
            .map(|i| {
                let e = &d[8 + i * 8..16 + i * 8];
                (u16::from_be_bytes([e[0], e[1]]) & 0x3fff) as u64
            })
            .collect()
    }

    /// True when the target closed the connection within the read timeout.
    fn closed_by_target(&mut self) -> bool {
        let mut b = [0u8; 4096];
        loop {
            match self.s.read(&mut b) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

fn sessions_of(k: &KernelClient, initiator: &str) -> Vec<SessionInfo> {
    k.iscsi_sessions()
        .unwrap()
        .into_iter()
        .filter(|s| s.initiator == initiator)
        .collect()
}

// ---- tests ----

#[test]
fn a_target_made_through_the_api_is_discovered_inquired_and_read() {
    let f = Fixture::start("api-iscsi-read");
    let k = f.client();
    let data = volume(&k);
    // No [iscsi] section: no frontend, nothing listed.
    assert!(k.iscsi_portals().unwrap().is_empty());
    assert!(k.iscsi_targets().unwrap().is_empty());

    let portal = k.iscsi_add_portal("127.0.0.1:0").unwrap();
    assert!(portal.ip().is_loopback() && portal.port() != 0, "{portal}");
    assert_eq!(k.iscsi_portals().unwrap(), vec![portal]);
    let t = node(IQN, vec![lun(0, "vol0")]);
    k.iscsi_add_target(&t).unwrap();
    assert_eq!(k.iscsi_targets().unwrap(), vec![t]);

    assert!(discover(portal, INI_A).contains(IQN));
    let o = inq(portal, INI_A, IQN, 0, None);
    assert!(o.status.success(), "iscsi-inq failed: {}", text(&o));
    assert!(text(&o).contains("PLEXD"), "{}", text(&o));
    let o = run(Command::new("iscsi-readcapacity16")
        .args(["-i", INI_A])
        .arg(format!("iscsi://{portal}/{IQN}/0")));
    assert!(o.status.success(), "readcapacity16: {}", text(&o));
    assert!(
        text(&o).contains(&format!("{}", 4 * MIB / 512 - 1)),
        "{}",
        text(&o)
    );

    // The data the API wrote under the volume comes back over iSCSI.
    let mut ini = Ini::login(portal, INI_A, IQN, 1).expect("login");
    let (status, got) = ini.read10(0, 0, 128);
    assert_eq!(status, 0);
    assert_eq!(got, data[..128 * BS]);
    assert_eq!(ini.report_luns(), vec![0]);

    // A second portal serves the same target; removing the first keeps the session.
    let p2 = k.iscsi_add_portal("127.0.0.1:0").unwrap();
    assert_eq!(k.iscsi_portals().unwrap(), vec![portal, p2]);
    k.iscsi_remove_portal(&portal.to_string()).unwrap();
    assert_eq!(k.iscsi_portals().unwrap(), vec![p2]);
    assert!(
        TcpStream::connect(portal).is_err(),
        "{portal} still accepts"
    );
    assert!(discover(p2, INI_A).contains(IQN));
    let (status, got) = ini.read10(0, 8, 8);
    assert_eq!((status, got.as_slice()), (0, &data[8 * BS..16 * BS]));
}

#[test]
fn acl_deny_refuses_the_login_and_allow_restores_it() {
    let f = Fixture::start("api-iscsi-acl");
    let k = f.client();
    volume(&k);
    let portal = k.iscsi_add_portal("127.0.0.1:0").unwrap();
    k.iscsi_add_target(&node(IQN, vec![lun(0, "vol0")]))
        .unwrap();

    // Open target: both initiators log in.
    assert!(inq(portal, INI_B, IQN, 0, None).status.success());
    // Allowing A restricts the target to A.
    k.iscsi_allow_initiator(IQN, INI_A).unwrap();
    assert!(inq(portal, INI_A, IQN, 0, None).status.success());
    let o = inq(portal, INI_B, IQN, 0, None);
    assert!(!o.status.success(), "B logged in: {}", text(&o));
    assert!(
        !discover(portal, INI_B).contains(IQN),
        "B discovers the target"
    );

    // Denying A closes its open session and refuses new logins, also for B.
    let mut held = Ini::login(portal, INI_A, IQN, 2).expect("A logs in");
    assert_eq!(held.read10(0, 0, 1).0, 0);
    wait_until("A's session listed", IO_TIMEOUT, || {
        sessions_of(&k, INI_A).len() == 1
    });
    k.iscsi_deny_initiator(IQN, INI_A).unwrap();
    assert!(held.closed_by_target(), "A's session survived the deny");
    wait_until("A's session gone", IO_TIMEOUT, || {
        sessions_of(&k, INI_A).is_empty()
    });
    let o = inq(portal, INI_A, IQN, 0, None);
    assert!(!o.status.success(), "denied A logged in: {}", text(&o));
    assert_eq!(
        Ini::login(portal, INI_A, IQN, 3).err(),
        Some(0x0202),
        "authorization failure"
    );
    assert!(!inq(portal, INI_B, IQN, 0, None).status.success());
    let t = &k.iscsi_targets().unwrap()[0];
    assert_eq!(
        (t.allow.as_slice(), t.deny.as_slice()),
        (&[INI_A.to_string()][..], &[INI_A.to_string()][..])
    );

    // Allowing A again takes it off the deny list.
    k.iscsi_allow_initiator(IQN, INI_A).unwrap();
    assert!(inq(portal, INI_A, IQN, 0, None).status.success());
    assert!(k.iscsi_targets().unwrap()[0].deny.is_empty());

    // On an open target, a deny refuses only that initiator.
    k.iscsi_add_target(&node("iqn.2026-11.io.plexd:open", vec![lun(0, "m0")]))
        .unwrap();
    k.iscsi_deny_initiator("iqn.2026-11.io.plexd:open", INI_B)
        .unwrap();
    assert!(inq(portal, INI_A, "iqn.2026-11.io.plexd:open", 0, None)
        .status
        .success());
    assert!(!inq(portal, INI_B, "iqn.2026-11.io.plexd:open", 0, None)
        .status
        .success());
    // ... and hides the target from its discovery.
    assert!(discover(portal, INI_A).contains("iqn.2026-11.io.plexd:open"));
    let seen_by_b = discover(portal, INI_B);
    assert!(
        !seen_by_b.contains("iqn.2026-11.io.plexd:open"),
        "a denied initiator discovers the target: {seen_by_b}"
    );
}

#[test]
fn chap_is_enforced_and_its_secret_never_listed() {
    let f = Fixture::start("api-iscsi-chap");
    let k = f.client();
    volume(&k);
    let portal = k.iscsi_add_portal("127.0.0.1:0").unwrap();
    k.iscsi_add_target(&node(IQN, vec![lun(0, "vol0")]))
        .unwrap();
    let chap = ChapConfig {
        user: "alice".into(),
        secret: "s3cret-for-alice".into(),
        ..Default::default()
    };
    k.iscsi_set_chap(IQN, Some(&chap)).unwrap();

    let o = inq(portal, INI_A, IQN, 0, None);
    assert!(!o.status.success(), "logged in without CHAP: {}", text(&o));
    let o = inq(portal, INI_A, IQN, 0, Some(("alice", "wrong-secret-xx")));
    assert!(!o.status.success(), "logged in with a wrong secret");
    let o = inq(portal, INI_A, IQN, 0, Some(("alice", "s3cret-for-alice")));
    assert!(o.status.success(), "CHAP login failed: {}", text(&o));

    let listed = k.iscsi_targets().unwrap();
    let c = listed[0].chap.as_ref().expect("CHAP listed");
    assert_eq!((c.user.as_str(), c.secret.as_str()), ("alice", ""));
    assert_eq!(c.mutual_secret, None);

    // Mutual CHAP: the mutual secret is write-only too.
    let mutual = ChapConfig {
        mutual_user: Some("tgt".into()),
        mutual_secret: Some("target-secret-1".into()),
        ..chap.clone()
    };
    k.iscsi_set_chap(IQN, Some(&mutual)).unwrap();
    let c = k.iscsi_targets().unwrap()[0].chap.clone().unwrap();
    assert_eq!(
        (c.secret.as_str(), c.mutual_secret.as_deref()),
        ("", Some(""))
    );
    assert_eq!(c.mutual_user.as_deref(), Some("tgt"));

    // Bad secrets are refused, naming the target.
    let e = api_err(k.iscsi_set_chap(
        IQN,
        Some(&ChapConfig {
            secret: String::new(),
            ..chap.clone()
        }),
    ));
    assert_eq!(e.code, ErrorCode::Invalid);
    assert_eq!(e.object, format!("iscsi target {IQN}"));
    let e = api_err(k.iscsi_set_chap(
        IQN,
        Some(&ChapConfig {
            mutual_secret: Some(chap.secret.clone()),
            ..chap.clone()
        }),
    ));
    assert_eq!(e.code, ErrorCode::Invalid, "{e}");

    // Clearing opens the target again.
    k.iscsi_set_chap(IQN, None).unwrap();
    assert!(k.iscsi_targets().unwrap()[0].chap.is_none());
    assert!(inq(portal, INI_A, IQN, 0, None).status.success());
}

#[test]
fn removing_the_lun_and_the_target_removes_them() {
    let f = Fixture::start("api-iscsi-remove");
    let k = f.client();
    volume(&k);
    k.create_bdev(&BdevRequest::malloc("m1", 2 * MIB)).unwrap();
    let portal = k.iscsi_add_portal("127.0.0.1:0").unwrap();
    k.iscsi_add_target(&node(IQN, vec![lun(0, "vol0")]))
        .unwrap();
    k.iscsi_add_lun(IQN, &lun(3, "m1")).unwrap();
    let o = run(Command::new("iscsi-readcapacity16")
        .args(["-i", INI_A])
        .arg(format!("iscsi://{portal}/{IQN}/3")));
    assert!(o.status.success(), "LUN 3: {}", text(&o));
    assert!(
        text(&o).contains(&format!("{}", 2 * MIB / 512 - 1)),
        "{}",
        text(&o)
    );

    let mut ini = Ini::login(portal, INI_A, IQN, 4).expect("login");
    assert_eq!(ini.report_luns(), vec![0, 3]);
    k.iscsi_remove_lun(IQN, 3).unwrap();
    // The open session sees the change (no reconnect needed).
    assert_eq!(ini.report_luns(), vec![0]);
    let (status, _) = ini.read10(3, 0, 1);
    assert_eq!(status, 0x02, "CHECK CONDITION on a removed LUN");
    let o = run(Command::new("iscsi-readcapacity16")
        .args(["-i", INI_A])
        .arg(format!("iscsi://{portal}/{IQN}/3")));
    assert!(!o.status.success(), "LUN 3 still readable: {}", text(&o));
    assert_eq!(k.iscsi_targets().unwrap()[0].luns, vec![lun(0, "vol0")]);
    // Unmapped, m1 can be deleted.
    k.delete_bdev("m1").unwrap();

    k.iscsi_remove_target(IQN).unwrap();
    assert!(
        ini.closed_by_target(),
        "the target's session survived its removal"
    );
    assert!(k.iscsi_targets().unwrap().is_empty());
    assert!(!discover(portal, INI_A).contains(IQN));
    let o = inq(portal, INI_A, IQN, 0, None);
    assert!(!o.status.success(), "removed target answers: {}", text(&o));
    // With no LUN left on it, the volume can go.
    k.delete_volume("vol0").unwrap();
}

#[test]
fn sessions_list_a_connected_session_with_its_counters() {
    let f = Fixture::start("api-iscsi-sessions");
    let k = f.client();
    let data = volume(&k);
    let portal = k.iscsi_add_portal("127.0.0.1:0").unwrap();
    k.iscsi_add_target(&node(IQN, vec![lun(0, "vol0")]))
        .unwrap();
    assert!(k.iscsi_sessions().unwrap().is_empty());

    let mut ini = Ini::login(portal, INI_A, IQN, 5).expect("login");
    let reads = 4u64;
    for i in 0..reads {
        let (status, got) = ini.read10(0, (i * 16) as u32, 16);
        assert_eq!(status, 0);
        assert_eq!(
            got,
            data[(i * 16) as usize * BS..(i * 16 + 16) as usize * BS]
        );
    }
    let local = ini.s.local_addr().unwrap();
    let s = sessions_of(&k, INI_A);
    assert_eq!(s.len(), 1, "{s:?}");
    let s = &s[0];
    assert_eq!(s.target, IQN);
    assert_eq!(s.peer, local.to_string());
    assert_eq!(s.isid, "800000567805");
    assert!(s.tsih != 0 && s.reactor < 2, "{s:?}");
    assert_eq!(
        s.commands,
        reads + 2,
        "the reads and login's TEST UNIT READYs"
    );
    assert_eq!(s.read_bytes, reads * 16 * BS as u64);
    assert_eq!((s.write_bytes, s.errors), (0, 0));

    // A second initiator's session is listed beside it; closing it removes it.
    let other = Ini::login(portal, INI_B, IQN, 6).expect("login B");
    wait_until("B listed", IO_TIMEOUT, || sessions_of(&k, INI_B).len() == 1);
    assert_eq!(k.iscsi_sessions().unwrap().len(), 2);
    drop(other);
    wait_until("B's session gone after its disconnect", IO_TIMEOUT, || {
        sessions_of(&k, INI_B).is_empty()
    });
    assert_eq!(sessions_of(&k, INI_A).len(), 1);
}

#[test]
fn refusals_name_the_iscsi_object() {
    let f = Fixture::start("api-iscsi-errors");
    let k = f.client();
    volume(&k);
    k.create_bdev(&BdevRequest::malloc("m1", 2 * MIB)).unwrap();

    // Calls on a frontend that does not run yet.
    let e = api_err(k.iscsi_remove_target(IQN));
    assert_eq!(
        (e.code, e.object.as_str()),
        (ErrorCode::NotFound, &*format!("iscsi target {IQN}"))
    );
    let e = api_err(k.iscsi_remove_portal("127.0.0.1:3260"));
    assert_eq!(
        (e.code, e.object.as_str()),
        (ErrorCode::NotFound, "iscsi portal 127.0.0.1:3260")
    );
    assert!(k.iscsi_sessions().unwrap().is_empty());

    // Adding a target starts the frontend without a portal.
    k.iscsi_add_target(&node(IQN, vec![lun(0, "vol0")]))
        .unwrap();
    assert!(k.iscsi_portals().unwrap().is_empty());
    let e = api_err(k.iscsi_add_target(&node(IQN, vec![])));
    assert_eq!(
        (e.code, e.object.as_str()),
        (ErrorCode::Exists, &*format!("iscsi target {IQN}"))
    );
    let e = api_err(k.iscsi_add_target(&node("IQN.Bad Name", vec![])));
    assert_eq!(e.code, ErrorCode::Invalid, "{e}");
    assert_eq!(e.object, "iscsi target IQN.Bad Name");
    let e = api_err(k.iscsi_add_target(&node("iqn.2026-11.io.plexd:nobdev", vec![lun(0, "m9")])));
    assert_eq!(e.code, ErrorCode::NotFound, "{e}");
    assert!(e.reason.contains("bdev m9"), "{e}");
    assert!(k.iscsi_targets().unwrap().iter().all(|t| t.iqn == IQN));

    // LUNs: taken number, missing bdev, missing LUN, missing target.
    let e = api_err(k.iscsi_add_lun(IQN, &lun(0, "m1")));
    assert_eq!(
        (e.code, e.object.as_str()),
        (ErrorCode::Exists, &*format!("lun 0 of {IQN}"))
    );
    let e = api_err(k.iscsi_add_lun(IQN, &lun(1, "m9")));
    assert_eq!(
        (e.code, e.object.as_str()),
        (ErrorCode::NotFound, &*format!("lun 1 of {IQN}"))
    );
    assert_eq!(e.reason, "bdev m9 not found");
    let e = api_err(k.iscsi_add_lun(IQN, &lun(20000, "m1")));
    assert_eq!(
        (e.code, e.object.as_str()),
        (ErrorCode::Invalid, &*format!("lun 20000 of {IQN}"))
    );
    let e = api_err(k.iscsi_remove_lun(IQN, 7));
    assert_eq!(
        (e.code, e.object.as_str()),
        (ErrorCode::NotFound, &*format!("lun 7 of {IQN}"))
    );
    let e = api_err(k.iscsi_add_lun("iqn.2026-11.io.plexd:none", &lun(0, "m1")));
    assert_eq!(
        (e.code, e.object.as_str()),
        (
            ErrorCode::NotFound,
            "iscsi target iqn.2026-11.io.plexd:none"
        )
    );
    let e = api_err(k.iscsi_allow_initiator(IQN, ""));
    assert_eq!(e.code, ErrorCode::Invalid, "{e}");

    // A mapped volume or bdev cannot be deleted; the error names target and LUN.
    k.iscsi_add_lun(IQN, &lun(1, "m1")).unwrap();
    let e = api_err(k.delete_volume("vol0"));
    assert_eq!(
        (e.code, e.object.as_str()),
        (ErrorCode::InUse, "volume vol0")
    );
    assert_eq!(e.reason, format!("in use by lun 0 of {IQN}"));
    let e = api_err(k.delete_bdev("m1"));
    assert_eq!((e.code, e.object.as_str()), (ErrorCode::InUse, "bdev m1"));
    assert_eq!(e.reason, format!("in use by lun 1 of {IQN}"));
    assert!(k.list_volumes().unwrap().iter().any(|v| v.name == "vol0"));

    // Portals: bad address, twice the same, unknown.
    let e = api_err(k.iscsi_add_portal("localhost"));
    assert_eq!(
        (e.code, e.object.as_str()),
        (ErrorCode::Invalid, "iscsi portal localhost")
    );
    let p = k.iscsi_add_portal("127.0.0.1:0").unwrap();
    let e = api_err(k.iscsi_add_portal(&p.to_string()));
    assert_eq!(
        (e.code, e.object),
        (ErrorCode::Exists, format!("iscsi portal {p}"))
    );
    k.iscsi_remove_portal(&p.to_string()).unwrap();
    let e = api_err(k.iscsi_remove_portal(&p.to_string()));
    assert_eq!(
        (e.code, e.object),
        (ErrorCode::NotFound, format!("iscsi portal {p}"))
    );

    // Unmapped, both go.
    k.iscsi_remove_target(IQN).unwrap();
    k.delete_volume("vol0").unwrap();
    k.delete_bdev("m1").unwrap();
    // The target survived every refusal and still answers.
    assert_eq!(k.info().unwrap().reactors, 2);
}

#[test]
fn a_frontend_from_the_config_file_is_managed_through_the_api() {
    let dir = std::env::temp_dir().join(format!("plexd-api-iscsi-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    struct Rm(PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let socket = dir.join("t.sock");
    let cfg = dir.join("target.toml");
    std::fs::write(
        &cfg,
        format!(
            "[target]\ncores = [0, 1]\nsocket = \"{}\"\n\n\
             [[bdevs]]\nkind = \"malloc\"\nname = \"m0\"\nsize = \"4M\"\n\n\
             [iscsi]\nportal = \"127.0.0.1:0\"\npr_dir = \"{}\"\n\n\
             [[iscsi.targets]]\niqn = \"{IQN}\"\nluns = [{{ lun = 0, bdev = \"m0\" }}]\n\
             chap = {{ user = \"u\", secret = \"file-secret-123\" }}\n",
            socket.display(),
            dir.join("pr").display()
        ),
    )
    .unwrap();
    let mut t = TargetProcess::spawn(
        exe(),
        "api-iscsi-cfg",
        &["--config".into(), cfg.display().to_string()],
        socket,
    )
    .unwrap();
    t.wait_ready(Duration::from_secs(30)).unwrap();
    let k = t.client().unwrap();
    let portals = k.iscsi_portals().unwrap();
    assert_eq!(portals.len(), 1, "{portals:?}");
    assert!(
        t.stdout().contains(&format!("iscsi portal {}", portals[0])),
        "{}",
        t.stdout()
    );
    let listed = k.iscsi_targets().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].luns, vec![lun(0, "m0")]);
    assert_eq!(
        listed[0]
            .chap
            .as_ref()
            .map(|c| (c.user.as_str(), c.secret.as_str())),
        Some(("u", ""))
    );
    let e = api_err(k.delete_bdev("m0"));
    assert_eq!(e.code, ErrorCode::InUse, "{e}");
    k.iscsi_set_chap(IQN, None).unwrap();
    assert!(inq(portals[0], INI_A, IQN, 0, None).status.success());

    // SIGTERM still stops the frontend and exits cleanly.
    let st = t
        .signal_and_wait(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30))
        .unwrap();
    assert!(st.success(), "{st}: {}", t.stderr());
    assert!(TcpStream::connect(portals[0]).is_err());
}

/// vol0's spec over m0 with `size` bytes (one concat plex from m0's start).
fn vol0_spec(size: u64) -> VolumeSpec {
    VolumeSpec {
        log: None,
        name: "vol0".into(),
        size_bytes: size,
        plexes: vec![PlexSpec {
            name: "vol0-01".into(),
            kind: PlexKind::Concat,
            columns: vec![vec![SubdiskSpec {
                bdev: "m0".into(),
                offset_bytes: 0,
                len_bytes: size,
            }]],
            state: PlexState::Active,
        }],
        read_policy: ReadPolicy::LeastBusy,
        shared: false,
        local_detach: false,
    }
}

/// Issue 9: a committed volume resize reaches the LUN while sessions are logged
/// in. Each session gets CAPACITY DATA HAS CHANGED (06h/2Ah/09h) once on its next
/// command, then READ CAPACITY(16) answers the new size and the grown range reads;
/// a shrink takes the removed blocks away. (Before the resize event the LUN kept
/// the size it was built with: no unit attention, the old capacity, and a read
/// past the old end refused as out of range.)
#[test]
fn a_resized_volume_reaches_logged_in_sessions_with_a_capacity_unit_attention() {
    let f = Fixture::start("api-iscsi-resize");
    let k = f.client();
    volume(&k);
    // m0's bytes from 4 MiB on (beyond vol0 now) carry their own pattern.
    let far = pattern(77, MIB as usize);
    assert_eq!(k.write("m0", 4 * MIB, &far).unwrap(), 0);
    let portal = k.iscsi_add_portal("127.0.0.1:0").unwrap();
    k.iscsi_add_target(&node(IQN, vec![lun(0, "vol0")]))
        .unwrap();
    let mut a = Ini::login(portal, INI_A, IQN, 1).expect("login a");
    let mut b = Ini::login(portal, INI_B, IQN, 2).expect("login b");
    let old_last = 4 * MIB / BS as u64 - 1;
    assert_eq!(a.read_capacity16(0), (0, old_last, (0, 0, 0)));
    let grown_lba = (4 * MIB / BS as u64) as u32;
    assert_eq!(
        a.read10(0, grown_lba, 8).0,
        2,
        "past the end before the grow"
    );

    // Grow to 8 MiB through the kernel interface.
    k.prepare("vol0", &vol0_spec(8 * MIB), Duration::from_secs(5))
        .unwrap();
    k.commit("vol0").unwrap();
    let new_last = 8 * MIB / BS as u64 - 1;
    for (who, ini) in [("a", &mut a), ("b", &mut b)] {
        assert_eq!(
            ini.read_capacity16(0),
            (2, 0, (0x06, 0x2a, 0x09)),
            "session {who}: CAPACITY DATA HAS CHANGED"
        );
        assert_eq!(
            ini.read_capacity16(0),
            (0, new_last, (0, 0, 0)),
            "session {who}: the unit attention is reported once, then the new size"
        );
    }
    let (status, got) = a.read10(0, grown_lba, 8);
    assert_eq!(status, 0, "a read in the grown range");
    assert_eq!(got, far[..8 * BS]);
    // A new session hears of the power on, not of the resize, and sees the size.
    let mut c = Ini::login(portal, INI_A, IQN, 3).expect("login c");
    assert_eq!(c.read_capacity16(0), (0, new_last, (0, 0, 0)));

    // Shrink to 2 MiB: the removed blocks go away for every session.
    k.prepare("vol0", &vol0_spec(2 * MIB), Duration::from_secs(5))
        .unwrap();
    k.commit("vol0").unwrap();
    let small_last = 2 * MIB / BS as u64 - 1;
    for (who, ini) in [("a", &mut a), ("b", &mut b), ("c", &mut c)] {
        assert_eq!(
            ini.read_capacity16(0).2,
            (0x06, 0x2a, 0x09),
            "session {who}: shrink unit attention"
        );
        assert_eq!(ini.read_capacity16(0), (0, small_last, (0, 0, 0)));
        assert_eq!(
            ini.read10(0, (small_last + 1) as u32, 1).0,
            2,
            "session {who}: a read past the new end fails"
        );
    }
}
