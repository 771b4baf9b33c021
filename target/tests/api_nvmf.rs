//! NVMe-oF/TCP management through the kernel interface, end to end: a real
//! `plexd-target` process driven by `KernelClient`, checked from the host side
//! with a minimal NVMe/TCP host over a plain socket (ICReq and an admin Connect).
//! The target process is killed and reaped by its guard, every socket read has a
//! timeout, and only 127.0.0.1 is used.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use plexd_target::api::process::TargetProcess;
use plexd_target::api::{BdevRequest, ClientError, ErrorCode, KernelClient};
use plexd_target::frontend::nvmf::pdu::{self, ty, Digests};
use plexd_target::frontend::nvmf::{AnaState, NamespaceConfig, SubsystemConfig};

const MIB: u64 = 1 << 20;
const NQN: &str = "nqn.2026-11.io.plexd:api";
const HOST: &str = "nqn.2026-11.io.plexd:host-a";
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_plexd-target"))
}

fn code(e: ClientError) -> ErrorCode {
    match e {
        ClientError::Api(a) => a.code,
        other => panic!("expected a target error, got {other}"),
    }
}

/// ICReq, then an admin Connect to `nqn` as `host`; returns the socket and the
/// Connect's status (SCT << 8 | SC) and dword 0.
fn admin_connect(addr: SocketAddr, nqn: &str, host: &str) -> (TcpStream, u16, u32) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut v = Vec::new();
    pdu::encode(
        &mut v,
        ty::IC_REQ,
        0,
        &[0u8; 120],
        &[],
        Digests::default(),
        0,
    );
    let mut sqe = [0u8; 64];
    sqe[0] = 0x7f;
    sqe[2] = 1;
    sqe[4] = 0x01;
    sqe[32..36].copy_from_slice(&1024u32.to_le_bytes());
    sqe[39] = 0x01;
    sqe[44..46].copy_from_slice(&31u16.to_le_bytes());
    let mut d = vec![0u8; 1024];
    d[16..18].copy_from_slice(&0xffffu16.to_le_bytes());
    d[256..256 + nqn.len()].copy_from_slice(nqn.as_bytes());
    d[512..512 + host.len()].copy_from_slice(host.as_bytes());
    pdu::encode(&mut v, ty::CAPSULE_CMD, 0, &sqe, &d, Digests::default(), 0);
    s.write_all(&v).unwrap();
    let mut icresp = [0u8; 128];
    s.read_exact(&mut icresp).unwrap();
    assert_eq!(icresp[0], ty::IC_RESP);
    let mut resp = [0u8; 24];
    s.read_exact(&mut resp).unwrap();
    assert_eq!(resp[0], ty::CAPSULE_RESP);
    let status = (pdu::le16(&resp, 8 + 14) >> 1) & 0x7ff;
    (s, status, pdu::le32(&resp, 8))
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {IO_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn subsystems_namespaces_listeners_and_ana_through_the_kernel_interface() {
    let t = TargetProcess::start(exe(), "api-nvmf", &["--cores", "0,1"]).expect("starts");
    let k: KernelClient = t.client().expect("client connects");
    k.create_bdev(&BdevRequest::malloc("m0", 8 * MIB)).unwrap();
    k.create_bdev(&BdevRequest::malloc("m1", 8 * MIB)).unwrap();
    // No frontend yet: empty listings, ANA refused.
    assert_eq!(k.nvmf_subsystems().unwrap(), (vec![], vec![]));
    assert_eq!(
        code(k.nvmf_set_ana(AnaState::Inaccessible).unwrap_err()),
        ErrorCode::Invalid
    );
    // nvmfStart: a bad range or group is refused; then the frontend runs with this
    // node's settings, which a second call with others cannot change.
    assert_eq!(
        code(k.nvmf_start((10, 5), 2).unwrap_err()),
        ErrorCode::Invalid
    );
    assert_eq!(
        code(k.nvmf_start((1024, 2046), 0).unwrap_err()),
        ErrorCode::Invalid
    );
    k.nvmf_start((1024, 2046), 2).unwrap();
    k.nvmf_start((1024, 2046), 2).unwrap();
    let e = k.nvmf_start((1, 1023), 1).unwrap_err();
    assert!(e.to_string().contains("1024..=2046"), "{e}");
    assert_eq!(code(e), ErrorCode::Invalid);
    assert_eq!(
        k.nvmf_set_ana(AnaState::Optimized).unwrap(),
        2,
        "its ANA group"
    );

    let sub = SubsystemConfig {
        nqn: NQN.into(),
        hosts: vec![HOST.into()],
        namespaces: vec![NamespaceConfig {
            nsid: 1,
            bdev: "m0".into(),
            identity: Some("dg/vol".into()),
            read_only: false,
        }],
        ..Default::default()
    };
    k.nvmf_add_subsystem(&sub).unwrap();
    assert_eq!(
        code(k.nvmf_add_subsystem(&sub).unwrap_err()),
        ErrorCode::Exists
    );
    let bad = SubsystemConfig {
        nqn: "not-an-nqn".into(),
        ..Default::default()
    };
    assert_eq!(
        code(k.nvmf_add_subsystem(&bad).unwrap_err()),
        ErrorCode::Invalid
    );
    let bound = k.nvmf_add_listener("127.0.0.1:0").unwrap();
    assert_ne!(bound.port(), 0);
    k.nvmf_add_namespace(
        NQN,
        &NamespaceConfig {
            nsid: 2,
            bdev: "m1".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let missing = NamespaceConfig {
        nsid: 3,
        bdev: "nope".into(),
        ..Default::default()
    };
    assert_eq!(
        code(k.nvmf_add_namespace(NQN, &missing).unwrap_err()),
        ErrorCode::NotFound
    );
    let (subs, ls) = k.nvmf_subsystems().unwrap();
    assert_eq!(ls, vec![bound]);
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].namespaces.len(), 2);
    assert_eq!(subs[0].namespaces[0].identity.as_deref(), Some("dg/vol"));

    // A bdev a namespace maps cannot be deleted; once unmapped it can.
    let e = k.delete_bdev("m1").unwrap_err();
    assert_eq!(code(e), ErrorCode::InUse);
    k.nvmf_remove_namespace(NQN, 2).unwrap();
    k.delete_bdev("m1").unwrap();

    // The allowed host connects and is listed; another host is refused.
    let (_other, st, _) = admin_connect(bound, NQN, "nqn.2026-11.io.plexd:host-b");
    assert_eq!(st, 0x184, "connect: invalid host");
    let (mut s, st, cntlid) = admin_connect(bound, NQN, HOST);
    assert_eq!(st, 0);
    let c = k.nvmf_controllers().unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].cntlid as u32, c[0].hostnqn.as_str()), (cntlid, HOST));
    assert!(
        (1024..=2046).contains(&cntlid),
        "controller id {cntlid} from the range nvmfStart gave"
    );

    assert_eq!(k.nvmf_set_ana(AnaState::NonOptimized).unwrap(), 2);

    // Removing the subsystem drops its controller and closes the connection.
    k.nvmf_remove_subsystem(NQN).unwrap();
    assert_eq!(
        code(k.nvmf_remove_subsystem(NQN).unwrap_err()),
        ErrorCode::NotFound
    );
    wait_until("controller dropped", || {
        k.nvmf_controllers().unwrap().is_empty()
    });
    let mut b = [0u8; 64];
    assert!(
        matches!(s.read(&mut b), Ok(0) | Err(_)),
        "connection closed"
    );

    // Listener removed: nothing accepts there any more.
    k.nvmf_remove_listener(&bound.to_string()).unwrap();
    assert_eq!(
        code(k.nvmf_remove_listener(&bound.to_string()).unwrap_err()),
        ErrorCode::NotFound
    );
    wait_until("listener closed", || TcpStream::connect(bound).is_err());
}
