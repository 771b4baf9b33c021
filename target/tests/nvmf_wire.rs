//! The NVMe/TCP target driven by a small host written here over plain sockets:
//! ICReq, admin and I/O Connect, properties, Identify, writes read back (in-capsule
//! and through R2T, checked against the bdev itself) with and without digests,
//! two I/O queues on two reactors, discovery, ANA, keep-alive expiry and hostile
//! PDUs that must close one connection without hurting the target. Every socket
//! read has a timeout and only 127.0.0.1 is used.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{bdev_read, two_reactor_target};
use plexd_target::bdev::malloc::MallocBdev;
use plexd_target::diag::{run_ios, IoReq};
use plexd_target::frontend::nvmf::pdu::{self, flag, ty, Digests};
use plexd_target::frontend::nvmf::{
    AnaState, NamespaceConfig, NvmfConfig, NvmfFrontend, SubsystemConfig, DISCOVERY_NQN,
};
use plexd_target::testutil::pattern;
use plexd_target::Target;

const NQN: &str = "nqn.2026-11.io.plexd:wire";
const BS: usize = nvmf_host::BS;
const IO_TIMEOUT: Duration = nvmf_host::IO_TIMEOUT;

fn start_target(size_bytes: u64) -> Arc<Target> {
    let t = two_reactor_target();
    t.add_bdev(MallocBdev::new("m0", size_bytes, BS as u32).unwrap())
        .unwrap();
    t
}

fn config() -> NvmfConfig {
    NvmfConfig {
        listeners: vec!["127.0.0.1:0".into()],
        subsystems: vec![SubsystemConfig {
            nqn: NQN.into(),
            allow_any: true,
            namespaces: vec![NamespaceConfig {
                nsid: 1,
                bdev: "m0".into(),
                identity: Some("dg-1/vol0".into()),
                read_only: false,
            }],
            ..Default::default()
        }],
        cntlid_range: Some((100, 199)),
        ana_group: Some(3),
        pr_dir: None,
    }
}

#[allow(dead_code)]
#[path = "../../tests/src/nvmf_host.rs"]
mod nvmf_host;
use nvmf_host::{Host, HOST};

/// An admin queue, connected and enabled; returns the host and the controller id.
fn admin_queue(port: u16, dig: Digests, kato_ms: u32) -> (Host, u16) {
    let mut a = Host::ic(port, dig);
    let c = a.connect(0, 0xffff, kato_ms, NQN);
    assert_eq!(c.sc(), 0, "admin connect");
    let cntlid = c.dw0 as u16;
    let cap = a.prop_get(0x00, true);
    assert_eq!(cap & 0xffff, 127, "MQES");
    assert!(cap & (1 << 37) != 0, "NVM command set");
    assert_eq!(a.prop_get(0x08, false), 0x0001_0400);
    a.prop_set(0x14, 0x0046_0001);
    assert_eq!(a.prop_get(0x1c, false) & 1, 1, "CSTS.RDY");
    (a, cntlid)
}

fn io_queue(port: u16, dig: Digests, qid: u16, cntlid: u16) -> Host {
    let mut q = Host::ic(port, dig);
    let c = q.connect(qid, cntlid, 0, NQN);
    assert_eq!(c.sc(), 0, "I/O connect of queue {qid}");
    q
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + IO_TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {IO_TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn identify_and_io(dig: Digests) {
    let t = start_target(64 << 20);
    let fe = NvmfFrontend::start(&t, &config()).unwrap();
    let port = fe.listeners()[0].port();
    let (mut a, cntlid) = admin_queue(port, dig, 5000);
    assert!(
        (100..=199).contains(&cntlid),
        "cntlid {cntlid} from the configured range"
    );

    let id = a.admin(0x06, 0, 1, 0, 4096);
    assert_eq!(id.sc(), 0);
    assert_eq!(id.data.len(), 4096);
    assert_eq!(
        pdu::le16(&id.data, 78),
        cntlid,
        "Identify's cntlid is Connect's"
    );
    assert_eq!(&id.data[768..768 + NQN.len()], NQN.as_bytes());
    assert!(
        pdu::le32(&id.data, 1792) as usize * 16 >= 64 + 8192,
        "IOCCSZ"
    );
    assert_eq!(id.data[76] & 0x08, 0x08, "ANA reporting");
    let ns = a.admin(0x06, 1, 0, 0, 4096);
    assert_eq!(ns.sc(), 0);
    assert_eq!(pdu::le64(&ns.data, 0), (64 << 20) / BS as u64, "NSZE");
    assert_eq!(pdu::le32(&ns.data, 92), 3, "ANA group");
    let list = a.admin(0x06, 0, 2, 0, 4096);
    assert_eq!(pdu::le32(&list.data, 0), 1);
    assert_eq!(pdu::le32(&list.data, 4), 0);
    let descs = a.admin(0x06, 1, 3, 0, 4096);
    assert_eq!(&descs.data[..2], &[1, 8], "EUI-64 descriptor first");
    assert_eq!(
        &descs.data[16..32],
        &ns.data[104..120],
        "NGUID descriptor = Identify's NGUID"
    );
    // Two I/O queues granted, then connected from two sockets.
    let q = a.admin(0x09, 0, 0x07, 0x0001_0001, 0);
    assert_eq!((q.sc(), q.dw0), (0, 0x0001_0001));
    let mut q1 = io_queue(port, dig, 1, cntlid);
    let mut q2 = io_queue(port, dig, 2, cntlid);
    let ctrls = fe.controllers();
    assert_eq!(ctrls.len(), 1);
    let qs = &ctrls[0].io_queues;
    assert_eq!(qs.len(), 2);
    assert_ne!(
        qs[0].1, qs[1].1,
        "the two I/O queues live on two reactors: {qs:?}"
    );

    // In-capsule (4 KiB), R2T (256 KiB > in-capsule size), the largest (1 MiB).
    let cases: [(u64, usize, bool); 4] = [
        (0, BS, true),
        (8, 4096, true),
        (100, 256 << 10, false),
        (4096, 1 << 20, false),
    ];
    for (i, (lba, len, inline)) in cases.iter().enumerate() {
        let data = pattern(i as u64 + 7, *len);
        let q = if i % 2 == 0 { &mut q1 } else { &mut q2 };
        let w = q.rw(0x01, *lba, (*len / BS) as u16, &data, *inline);
        assert_eq!(w.sc(), 0, "write of {len} bytes at {lba}");
        let r = q.rw(0x02, *lba, (*len / BS) as u16, &[], false);
        assert_eq!(r.sc(), 0);
        assert!(r.data == data, "read back {len} bytes at {lba}");
        assert!(
            bdev_read(&t, "m0", lba * BS as u64, *len as u64) == data,
            "the bdev holds what was written"
        );
    }
    // Compare: equal, then different.
    let data = pattern(7, BS);
    assert_eq!(q1.rw(0x05, 0, 1, &data, true).sc(), 0);
    assert_eq!(q1.rw(0x05, 0, 1, &pattern(8, BS), true).sc(), 0x285);
    // Flush, Write Zeroes, beyond the end.
    assert_eq!(q2.rw(0x00, 0, 1, &[], false).sc(), 0);
    assert_eq!(q2.rw(0x08, 8, 8, &[], false).sc(), 0);
    assert!(bdev_read(&t, "m0", 8 * BS as u64, 4096)
        .iter()
        .all(|b| *b == 0));
    assert_eq!(
        q2.rw(0x02, (64 << 20) / BS as u64, 1, &[], false).sc(),
        0x80
    );
    let c = &fe.controllers()[0];
    assert!(c.write_bytes >= 1 << 20 && c.read_bytes >= 1 << 20);
    // Keep alive, then disconnect: the controller goes.
    assert_eq!(a.admin(0x18, 0, 0, 0, 0).sc(), 0);
    drop(q1);
    drop(q2);
    let mut sqe = [0u8; 64];
    sqe[0] = 0x7f;
    sqe[4] = 0x08;
    assert_eq!(a.cmd(sqe, &[], false, 0).sc(), 0);
    assert!(a.closed_by_target());
    wait_until("controller gone", || fe.controllers().is_empty());
}

#[test]
fn identify_write_and_read_back_without_digests() {
    identify_and_io(Digests::default());
}

#[test]
fn identify_write_and_read_back_with_header_and_data_digests() {
    identify_and_io(Digests {
        header: true,
        data: true,
    });
}

#[test]
fn c2h_success_flag_only_when_the_host_disabled_sq_flow_control() {
    let t = start_target(16 << 20);
    let fe = NvmfFrontend::start(&t, &config()).unwrap();
    let port = fe.listeners()[0].port();
    let (_a, cntlid) = admin_queue(port, Digests::default(), 5000);
    let mut q = io_queue(port, Digests::default(), 1, cntlid);
    let r = q.rw(0x02, 0, 8, &[], false);
    assert_eq!(r.sc(), 0);
    assert!(
        !r.success_flag,
        "SQ flow control on: a response capsule follows"
    );
    // A queue whose Connect sets CATTR bit 2 (SQ flow control disabled).
    let mut q2 = Host::ic(port, Digests::default());
    let mut sqe = [0u8; 64];
    sqe[0] = 0x7f;
    sqe[4] = 0x01;
    sqe[42..44].copy_from_slice(&2u16.to_le_bytes());
    sqe[44..46].copy_from_slice(&31u16.to_le_bytes());
    sqe[46] = 0x04;
    let mut d = vec![0u8; 1024];
    d[16..18].copy_from_slice(&cntlid.to_le_bytes());
    d[256..256 + NQN.len()].copy_from_slice(NQN.as_bytes());
    d[512..512 + HOST.len()].copy_from_slice(HOST.as_bytes());
    assert_eq!(q2.cmd(sqe, &d, true, 0).sc(), 0);
    let r = q2.rw(0x02, 0, 8, &[], false);
    assert!(r.success_flag && r.data.len() == 4096);
}

#[test]
fn a_silent_host_is_dropped_after_its_keep_alive_timeout() {
    let t = start_target(16 << 20);
    let fe = NvmfFrontend::start(&t, &config()).unwrap();
    let port = fe.listeners()[0].port();
    let (mut a, cntlid) = admin_queue(port, Digests::default(), 1000);
    let mut q = io_queue(port, Digests::default(), 1, cntlid);
    assert_eq!(fe.controllers().len(), 1);
    let t0 = Instant::now();
    assert!(a.closed_by_target(), "admin queue closed");
    assert!(q.closed_by_target(), "I/O queue closed with its controller");
    // Not before KATO: the target waits at least the timeout the host gave.
    assert!(t0.elapsed() >= Duration::from_millis(1000));
    wait_until("controller gone", || fe.controllers().is_empty());
    // A host that keeps sending Keep Alive stays.
    let (mut b, _) = admin_queue(port, Digests::default(), 1000);
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        assert_eq!(b.admin(0x18, 0, 0, 0, 0).sc(), 0);
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(fe.controllers().len(), 1);
}

#[test]
fn hostile_pdus_close_the_connection_and_the_target_keeps_serving() {
    let t = start_target(16 << 20);
    let fe = NvmfFrontend::start(&t, &config()).unwrap();
    let port = fe.listeners()[0].port();
    let mut rng_state = 0x1234_5678u64;
    let mut garbage = vec![0u8; 4096];
    for b in garbage.iter_mut() {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        *b = rng_state as u8;
    }
    // Garbage before ICReq.
    let mut h = Host::tcp(port);
    h.send_raw(&garbage);
    assert!(h.closed_by_target(), "garbage");
    // A capsule before ICReq: a termination request, then close.
    let mut h = Host::tcp(port);
    let mut v = Vec::new();
    pdu::encode(
        &mut v,
        ty::CAPSULE_CMD,
        0,
        &[0u8; 64],
        &[],
        Digests::default(),
        0,
    );
    h.send_raw(&v);
    let p = h.recv().unwrap();
    assert_eq!(p.ty, ty::C2H_TERM);
    assert_eq!(pdu::le16(&p.hdr, 8), 0x02, "PDU sequence error");
    assert!(h.closed_by_target());
    // After ICReq: a bad HLEN, a huge PLEN, H2CData for no command, a header
    // digest error, garbage.
    let cases: Vec<(&str, Vec<u8>, Digests)> = vec![
        (
            "bad hlen",
            vec![0x04, 0, 20, 0, 72, 0, 0, 0],
            Digests::default(),
        ),
        (
            "huge plen",
            vec![0x06, 0, 24, 0, 0xff, 0xff, 0xff, 0x7f],
            Digests::default(),
        ),
        (
            "unknown command",
            {
                let mut v = Vec::new();
                pdu::encode(
                    &mut v,
                    ty::H2C_DATA,
                    flag::LAST_PDU,
                    &pdu::data_hdr(9, 1, 0, 4),
                    b"abcd",
                    Digests::default(),
                    0,
                );
                v
            },
            Digests::default(),
        ),
        (
            "header digest",
            {
                let d = Digests {
                    header: true,
                    data: false,
                };
                let mut v = Vec::new();
                pdu::encode(&mut v, ty::CAPSULE_CMD, 0, &[0u8; 64], &[], d, 0);
                v[72] ^= 0xff;
                v
            },
            Digests {
                header: true,
                data: false,
            },
        ),
        ("garbage", garbage.clone(), Digests::default()),
    ];
    for (what, bytes, dig) in cases {
        let mut h = Host::ic(port, dig);
        h.send_raw(&bytes);
        let p = h.recv();
        if let Ok(p) = p {
            assert_eq!(p.ty, ty::C2H_TERM, "{what}: a termination request");
        }
        assert!(h.closed_by_target(), "{what}: closed");
    }
    // Too many commands outstanding for the queue size (SQ size 32): the host
    // sends 40 commands that wait for data (R2T) and never sends the data.
    let (_a, cntlid) = admin_queue(port, Digests::default(), 5000);
    let mut q = io_queue(port, Digests::default(), 1, cntlid);
    let mut all = Vec::new();
    for cid in 100..140u16 {
        let mut sqe = [0u8; 64];
        sqe[0] = 0x01;
        sqe[2..4].copy_from_slice(&cid.to_le_bytes());
        sqe[4..8].copy_from_slice(&1u32.to_le_bytes());
        sqe[32..36].copy_from_slice(&512u32.to_le_bytes());
        sqe[39] = 0x5A;
        pdu::encode(
            &mut all,
            ty::CAPSULE_CMD,
            0,
            &sqe,
            &[],
            Digests::default(),
            0,
        );
    }
    q.send_raw(&all);
    assert!(q.closed_by_target(), "queue overrun");
    // The target still serves.
    let (_a2, cntlid) = admin_queue(port, Digests::default(), 5000);
    let mut q = io_queue(port, Digests::default(), 1, cntlid);
    let data = pattern(3, 8192);
    assert_eq!(q.rw(0x01, 0, 16, &data, true).sc(), 0);
    assert!(q.rw(0x02, 0, 16, &[], false).data == data);
}

#[test]
fn discovery_lists_the_subsystem_and_refuses_io() {
    let t = start_target(16 << 20);
    let fe = NvmfFrontend::start(&t, &config()).unwrap();
    let port = fe.listeners()[0].port();
    let mut d = Host::ic(port, Digests::default());
    let c = d.connect(0, 0xffff, 0, DISCOVERY_NQN);
    assert_eq!(c.sc(), 0);
    d.prop_set(0x14, 1);
    let id = d.admin(0x06, 0, 1, 0, 4096);
    assert_eq!(id.data[111], 2, "a discovery controller");
    // Header first (as nvme-cli does), then the whole log.
    let numd = |len: u32| (len / 4 - 1) << 16;
    let head = d.admin(0x02, 0, 0x70 | numd(16), 0, 16);
    let n = pdu::le64(&head.data, 8) as usize;
    assert_eq!(n, 2, "the discovery subsystem and ours");
    let len = (1024 * (n + 1)) as u32;
    let log = d.admin(0x02, 0, 0x70 | numd(len), 0, len as usize);
    let e = &log.data[2048..3072];
    assert_eq!(e[0], 3, "TCP");
    assert_eq!(e[2], 2, "an NVM subsystem");
    assert_eq!(&e[256..256 + NQN.len()], NQN.as_bytes());
    assert_eq!(
        std::str::from_utf8(&e[32..64]).unwrap().trim(),
        port.to_string()
    );
    assert_eq!(
        std::str::from_utf8(&e[512..768]).unwrap().trim(),
        "127.0.0.1"
    );
    // Namespaces are not a discovery controller's business.
    assert_ne!(d.admin(0x06, 1, 0, 0, 4096).sc(), 0);
    drop(fe);
}

#[test]
fn discovery_lists_the_subsystem_at_the_other_nodes_listeners_too() {
    let t = start_target(16 << 20);
    let mut cfg = config();
    cfg.subsystems[0].peer_listeners = vec!["127.0.0.2:4421".into(), "127.0.0.3:4422".into()];
    let mut fe = NvmfFrontend::start(&t, &cfg).unwrap();
    let port = fe.listeners()[0].port();
    // A second subsystem for another host only: not listed for ours.
    fe.add_subsystem(&SubsystemConfig {
        nqn: "nqn.2026-11.io.plexd:other".into(),
        hosts: vec!["nqn.2026-11.io.plexd:someone-else".into()],
        peer_listeners: vec!["127.0.0.4:4420".into()],
        ..Default::default()
    })
    .unwrap();
    let mut d = Host::ic(port, Digests::default());
    assert_eq!(d.connect(0, 0xffff, 0, DISCOVERY_NQN).sc(), 0);
    d.prop_set(0x14, 1);
    let numd = |len: u32| (len / 4 - 1) << 16;
    let head = d.admin(0x02, 0, 0x70 | numd(16), 0, 16);
    let n = pdu::le64(&head.data, 8) as usize;
    let len = (1024 * (n + 1)) as u32;
    let log = d.admin(0x02, 0, 0x70 | numd(len), 0, len as usize);
    let text = |e: &[u8], r: std::ops::Range<usize>| {
        std::str::from_utf8(&e[r])
            .unwrap()
            .trim_matches(|c| c == ' ' || c == '\0')
            .to_string()
    };
    let entries: Vec<(String, String, String, u16)> = (1..=n)
        .map(|i| {
            let e = &log.data[1024 * i..1024 * (i + 1)];
            (
                text(e, 256..512),
                text(e, 512..768),
                text(e, 32..64),
                pdu::le16(e, 4),
            )
        })
        .collect();
    let ours: Vec<(&str, &str, u16)> = entries
        .iter()
        .filter(|e| e.0 == NQN)
        .map(|e| (e.1.as_str(), e.2.as_str(), e.3))
        .collect();
    let p = port.to_string();
    assert_eq!(
        ours,
        [
            ("127.0.0.1", p.as_str(), 1),
            ("127.0.0.2", "4421", 2),
            ("127.0.0.3", "4422", 3)
        ],
        "this node's listener, then the other nodes' ones, each its own port id: {entries:?}"
    );
    assert_eq!(
        n, 4,
        "the discovery subsystem and ours three times: {entries:?}"
    );
    // A bad peer listener is refused, naming it.
    let e = fe
        .add_subsystem(&SubsystemConfig {
            nqn: "nqn.2026-11.io.plexd:bad".into(),
            peer_listeners: vec!["nowhere".into()],
            ..Default::default()
        })
        .unwrap_err();
    assert!(e.to_string().contains("nowhere"), "{e}");
}

#[test]
fn ana_state_changes_reach_the_host_and_inaccessible_fails_io_with_a_path_error() {
    let t = start_target(16 << 20);
    let mut fe = NvmfFrontend::start(&t, &config()).unwrap();
    let port = fe.listeners()[0].port();
    let (mut a, cntlid) = admin_queue(port, Digests::default(), 5000);
    let mut q = io_queue(port, Digests::default(), 1, cntlid);
    // Enable ANA change notices and post an AER.
    assert_eq!(a.admin(0x09, 0, 0x0B, 1 << 11, 0).sc(), 0);
    let cid = a.next_cid();
    let mut sqe = [0u8; 64];
    sqe[0] = 0x0C;
    sqe[2..4].copy_from_slice(&cid.to_le_bytes());
    a.send(ty::CAPSULE_CMD, 0, &sqe, &[]);
    let ana = |a: &mut Host| a.admin(0x02, 0, 0x0C | ((4096 / 4 - 1) << 16), 0, 4096);
    let l = ana(&mut a);
    assert_eq!(pdu::le32(&l.data, 16), 3, "group id");
    assert_eq!(l.data[32], 1, "optimized");
    fe.set_ana(AnaState::Inaccessible);
    let p = a.recv().unwrap();
    assert_eq!(p.ty, ty::CAPSULE_RESP);
    assert_eq!(pdu::le16(&p.hdr[8..], 12), cid, "the AER completes");
    assert_eq!(pdu::le32(&p.hdr[8..], 0), 0x000C_0302, "ANA change notice");
    let l = ana(&mut a);
    assert_eq!(l.data[32], 3, "inaccessible");
    assert_eq!(pdu::le32(&l.data, 20), 1, "one namespace");
    assert_eq!(pdu::le32(&l.data, 48), 1, "namespace 1");
    let r = q.rw(0x02, 0, 1, &[], false);
    assert_eq!(r.sc(), 0x302, "ANA inaccessible");
    fe.set_ana(AnaState::NonOptimized);
    assert_eq!(q.rw(0x02, 0, 1, &[], false).sc(), 0);
}

#[test]
fn a_fenced_shared_volume_fails_io_with_the_ana_inaccessible_path_error() {
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
    let mut cfg = config();
    cfg.subsystems[0].namespaces[0].bdev = "sv".into();
    let fe = NvmfFrontend::start(&t, &cfg).unwrap();
    let port = fe.listeners()[0].port();
    let (mut adm, cntlid) = admin_queue(port, Digests::default(), 5000);
    let mut q = io_queue(port, Digests::default(), 1, cntlid);
    // The state byte of the ANA log's one group descriptor.
    let ana_state = |h: &mut Host| {
        let l = h.admin(0x02, 0, 0x0C | ((4096 / 4 - 1) << 16), 0, 4096);
        assert_eq!(l.sc(), 0);
        l.data[32]
    };
    t.renew_lease(60_000).unwrap();
    assert_eq!(
        ana_state(&mut adm),
        0x01,
        "optimized while the lease is valid"
    );
    let a = pattern(5, 4096);
    assert_eq!(q.rw(0x01, 8, 8, &a, true).sc(), 0);
    // Revoked (an expiry does the same): reads and writes fail with the path
    // error Linux fails over on; the queue stays up; the ANA log says
    // inaccessible (what was set is optimized), so a host re-reading it after the
    // path error keeps away from this path.
    t.renew_lease(0).unwrap();
    assert_eq!(ana_state(&mut adm), 0x03, "inaccessible while fenced");
    assert_eq!(fe.ana().1, AnaState::Optimized, "the set state is kept");
    assert_eq!(q.rw(0x02, 8, 8, &[], false).sc(), 0x302, "read fenced");
    assert_eq!(
        q.rw(0x01, 8, 8, &pattern(6, 4096), true).sc(),
        0x302,
        "write fenced"
    );
    // Renewed: the path is back and the fenced write changed nothing.
    t.renew_lease(60_000).unwrap();
    assert_eq!(ana_state(&mut adm), 0x01, "optimized again");
    let r = q.rw(0x02, 8, 8, &[], false);
    assert_eq!(r.sc(), 0);
    assert!(r.data == a);
}

/// Issue 9: a committed resize of the volume behind a namespace reaches the
/// host: an outstanding AER completes with the namespace attribute changed notice
/// (dword 0 0004_0002h: notice, info 00h, log page 04h), the Changed Namespace
/// List names the namespace, Identify Namespace's NSZE/NCAP/NUSE give the new
/// size and the grown range reads; a shrink does the same the other way. (Before
/// the resize event, Identify kept the created size and no AER completed.)
#[test]
fn a_resized_volume_changes_nsze_and_completes_an_aer_with_the_namespace_notice() {
    use plexd_target::volume::{PlexKind, PlexSpec, PlexState, SubdiskSpec, VolumeSpec};
    let spec = |size: u64| VolumeSpec {
        log: None,
        name: "rv".into(),
        size_bytes: size,
        plexes: vec![PlexSpec {
            name: "rv-01".into(),
            kind: PlexKind::Concat,
            columns: vec![vec![SubdiskSpec {
                bdev: "m0".into(),
                offset_bytes: 0,
                len_bytes: size,
            }]],
            state: PlexState::Active,
        }],
        read_policy: Default::default(),
        shared: false,
        local_detach: false,
    };
    let t = start_target(16 << 20);
    t.create_volume(&spec(8 << 20)).unwrap();
    let mut cfg = config();
    cfg.subsystems[0].namespaces[0].bdev = "rv".into();
    let fe = NvmfFrontend::start(&t, &cfg).unwrap();
    let port = fe.listeners()[0].port();
    let (mut a, cntlid) = admin_queue(port, Digests::default(), 5000);
    let mut q = io_queue(port, Digests::default(), 1, cntlid);
    // Enable namespace attribute notices (AEC bit 8).
    assert_eq!(a.admin(0x09, 0, 0x0B, 1 << 8, 0).sc(), 0);
    let nsze = |a: &mut Host| {
        let id = a.admin(0x06, 1, 0, 0, 4096);
        assert_eq!(id.sc(), 0, "Identify Namespace");
        let f = |o: usize| u64::from_le_bytes(id.data[o..o + 8].try_into().unwrap());
        assert_eq!((f(8), f(16)), (f(0), f(0)), "NCAP and NUSE follow NSZE");
        f(0)
    };
    let post_aer = |a: &mut Host| {
        let cid = a.next_cid();
        let mut sqe = [0u8; 64];
        sqe[0] = 0x0C;
        sqe[2..4].copy_from_slice(&cid.to_le_bytes());
        a.send(ty::CAPSULE_CMD, 0, &sqe, &[]);
        cid
    };
    let changed_list = |a: &mut Host| {
        let l = a.admin(0x02, 0, 0x04 | ((4096 / 4 - 1) << 16), 0, 4096);
        assert_eq!(l.sc(), 0, "Changed Namespace List");
        (pdu::le32(&l.data, 0), pdu::le32(&l.data, 4))
    };
    let resize = |size: u64| {
        t.prepare("rv", &spec(size), Duration::from_secs(5))
            .unwrap();
        t.commit("rv").unwrap();
    };
    let blocks = |size: u64| size / BS as u64;
    assert_eq!(nsze(&mut a), blocks(8 << 20));
    let old_end = blocks(8 << 20);
    assert_ne!(q.rw(0x02, old_end, 8, &[], false).sc(), 0, "past the end");
    // m0 beyond the volume's old end holds a pattern the grown range must show.
    let far = pattern(41, 4096);
    let m0 = t.bdev("m0").unwrap();
    run_ios(
        &t.reactors().handles()[0],
        &m0,
        vec![IoReq::write(8 << 20, far.clone())],
        IO_TIMEOUT,
    )
    .unwrap();

    for (size, what) in [(16u64 << 20, "grow"), (4 << 20, "shrink")] {
        let cid = post_aer(&mut a);
        resize(size);
        let p = a.recv().unwrap();
        assert_eq!(p.ty, ty::CAPSULE_RESP, "{what}");
        assert_eq!(pdu::le16(&p.hdr[8..], 12), cid, "{what}: the AER completes");
        assert_eq!(
            pdu::le32(&p.hdr[8..], 0),
            0x0004_0002,
            "{what}: namespace attribute changed notice"
        );
        assert_eq!(changed_list(&mut a), (1, 0), "{what}: namespace 1 changed");
        assert_eq!(nsze(&mut a), blocks(size), "{what}: NSZE");
    }
    // The grow was seen by the read path too; after the shrink the range is gone.
    assert_ne!(
        q.rw(0x02, old_end, 8, &[], false).sc(),
        0,
        "past the new end"
    );
    resize(16 << 20);
    let r = q.rw(0x02, old_end, 8, &[], false);
    assert_eq!(r.sc(), 0, "a read in the grown range");
    assert!(r.data == far);
}

/// Pause between the pieces of a PDU sent in parts: only pacing, so the pieces
/// leave as separate segments; no assertion depends on it.
const PIECE_PAUSE: Duration = Duration::from_millis(20);

#[test]
fn pdus_arriving_in_pieces_are_resumed() {
    let t = start_target(16 << 20);
    let fe = NvmfFrontend::start(&t, &config()).unwrap();
    let port = fe.listeners()[0].port();
    let dig = Digests {
        header: true,
        data: true,
    };
    let (_a, cntlid) = admin_queue(port, dig, 5000);
    let mut q = io_queue(port, dig, 1, cntlid);
    // A write capsule with 4 KiB in-capsule data, cut inside the common header,
    // inside the SQE, inside the header digest and inside the data.
    let data = pattern(21, 4096);
    let mut sqe = [0u8; 64];
    sqe[0] = 0x01;
    sqe[2..4].copy_from_slice(&500u16.to_le_bytes());
    sqe[4..8].copy_from_slice(&1u32.to_le_bytes());
    sqe[40..48].copy_from_slice(&16u64.to_le_bytes());
    sqe[48..50].copy_from_slice(&7u16.to_le_bytes());
    sqe[32..36].copy_from_slice(&4096u32.to_le_bytes());
    sqe[39] = 0x01;
    let mut v = Vec::new();
    pdu::encode(&mut v, ty::CAPSULE_CMD, 0, &sqe, &data, dig, 0);
    let cuts = [3usize, 40, 74, 1000, v.len()];
    let mut from = 0;
    for to in cuts {
        q.send_raw(&v[from..to]);
        from = to;
        std::thread::sleep(PIECE_PAUSE);
    }
    let p = q.recv().unwrap();
    assert_eq!(p.ty, ty::CAPSULE_RESP);
    assert_eq!(pdu::le16(&p.hdr[8..], 12), 500);
    assert_eq!(
        (pdu::le16(&p.hdr[8..], 14) >> 1) & 0x7ff,
        0,
        "write in pieces"
    );
    let r = q.rw(0x02, 16, 8, &[], false);
    assert!(r.data == data, "read back what was written in pieces");
}

#[test]
fn two_nodes_exporting_one_volume_present_one_namespace_identity() {
    // Two frontends stand for two nodes exporting the same shared volume: the same
    // identity, their own controller id ranges and ANA groups.
    let t = start_target(16 << 20);
    let a = NvmfFrontend::start(&t, &config()).unwrap();
    let mut cfg_b = config();
    cfg_b.cntlid_range = Some((200, 299));
    cfg_b.ana_group = Some(4);
    let b = NvmfFrontend::start(&t, &cfg_b).unwrap();
    let mut seen = Vec::new();
    for fe in [&a, &b] {
        let (mut h, cntlid) = admin_queue(fe.listeners()[0].port(), Digests::default(), 5000);
        let ns = h.admin(0x06, 1, 0, 0, 4096);
        let descs = h.admin(0x06, 1, 3, 0, 4096);
        seen.push((
            cntlid,
            pdu::le32(&ns.data, 92),
            ns.data[104..128].to_vec(),
            descs.data[..64].to_vec(),
        ));
    }
    assert!((100..=199).contains(&seen[0].0) && (200..=299).contains(&seen[1].0));
    assert_eq!((seen[0].1, seen[1].1), (3, 4), "one ANA group per node");
    assert_eq!(seen[0].2, seen[1].2, "same NGUID and EUI-64");
    assert_eq!(
        seen[0].3, seen[1].3,
        "same identification descriptors (UUID too)"
    );
    assert!(seen[0].2.iter().any(|x| *x != 0));
}

/// Admin and one I/O queue of a host with its own NQN and host identifier.
fn host_queues(port: u16, hostnqn: &str, hostid: [u8; 16]) -> (Host, Host) {
    let mut a = Host::ic(port, Digests::default());
    a.hostnqn = hostnqn.into();
    a.hostid = hostid;
    let c = a.connect(0, 0xffff, 0, NQN);
    assert_eq!(c.sc(), 0, "admin connect of {hostnqn}");
    let cntlid = c.dw0 as u16;
    a.prop_set(0x14, 0x0046_0001);
    let mut q = Host::ic(port, Digests::default());
    q.hostnqn = hostnqn.into();
    q.hostid = hostid;
    assert_eq!(
        q.connect(1, cntlid, 0, NQN).sc(),
        0,
        "I/O connect of {hostnqn}"
    );
    (a, q)
}

/// Two 8-byte keys, little endian (Register: CRKEY, NRKEY; Acquire: CRKEY, PRKEY).
fn keys(a: u64, b: u64) -> Vec<u8> {
    let mut d = a.to_le_bytes().to_vec();
    d.extend_from_slice(&b.to_le_bytes());
    d
}

const RESV_REGISTER: u8 = 0x0d;
const RESV_REPORT: u8 = 0x0e;
const RESV_ACQUIRE: u8 = 0x11;
const RESV_RELEASE: u8 = 0x15;
const RESERVATION_CONFLICT: u16 = 0x83;

#[test]
fn reservations_between_two_hosts_register_acquire_conflict_report_release() {
    let t = start_target(4 << 20);
    let fe = NvmfFrontend::start(&t, &config()).unwrap();
    let port = fe.listeners()[0].port();
    let (id_a, id_b) = ([0xa1u8; 16], [0xb2u8; 16]);
    let (mut adm_a, mut a) = host_queues(port, "nqn.2014-08.org.nvmexpress:uuid:a", id_a);
    let (_adm_b, mut b) = host_queues(port, "nqn.2014-08.org.nvmexpress:uuid:b", id_b);

    // Identify announces reservations (ONCS bit 5, RESCAP of the namespace).
    let ctrl = adm_a.admin(0x06, 0, 1, 0, 4096);
    assert_ne!(pdu::le16(&ctrl.data, 520) & 0x20, 0, "ONCS reservations");
    let ns = adm_a.admin(0x06, 1, 0, 0, 4096);
    assert_eq!(ns.data[31] & 0x7e, 0x7e, "RESCAP: the six types");
    // Get Features Host Identifier (extended): the Connect's.
    let hid = adm_a.admin(0x0a, 0, 0x81, 1, 16);
    assert_eq!(hid.sc(), 0);
    assert_eq!(hid.data, id_a);

    let block = pattern(7, BS);
    // Both hosts register.
    assert_eq!(a.resv(RESV_REGISTER, 1, 0, 0, &keys(0, 0xaaaa), 0).sc(), 0);
    assert_eq!(b.resv(RESV_REGISTER, 1, 0, 0, &keys(0, 0xbbbb), 0).sc(), 0);
    // A registering another key conflicts.
    assert_eq!(
        a.resv(RESV_REGISTER, 1, 0, 0, &keys(0, 0x1234), 0).sc(),
        RESERVATION_CONFLICT
    );
    // A acquires write exclusive (type 1); B's acquire with its key conflicts.
    assert_eq!(
        a.resv(RESV_ACQUIRE, 1, 1 << 8, 0, &keys(0xaaaa, 0), 0).sc(),
        0
    );
    assert_eq!(
        b.resv(RESV_ACQUIRE, 1, 1 << 8, 0, &keys(0xbbbb, 0), 0).sc(),
        RESERVATION_CONFLICT
    );
    // B's write fails with Reservation Conflict, B's read succeeds, A writes.
    let w = b.rw(0x01, 8, 1, &block, true);
    assert_eq!(
        w.sc(),
        RESERVATION_CONFLICT,
        "B's write under A's reservation"
    );
    assert_ne!(w.status & 0x8000, 0, "do not retry");
    assert_eq!(
        b.rw(0x00, 0, 1, &[], true).sc(),
        RESERVATION_CONFLICT,
        "flush is a write"
    );
    assert_eq!(b.rw(0x02, 8, 1, &[], true).sc(), 0, "B's read");
    assert_eq!(a.rw(0x01, 8, 1, &block, true).sc(), 0, "A's write");
    assert_eq!(bdev_read(&t, "m0", 8 * BS as u64, BS as u64), block);

    // Report (extended, as B): both registrants, A the holder of type 1.
    let r = b.resv(RESV_REPORT, 1, (4096 / 4) - 1, 1, &[], 4096);
    assert_eq!(r.sc(), 0);
    let d = &r.data;
    assert_eq!(d[4], 1, "reservation type");
    assert_eq!(pdu::le16(d, 5), 2, "registrants");
    let entries: Vec<(u8, u64, Vec<u8>)> = (0..2)
        .map(|i| {
            let e = &d[64 + 64 * i..128 + 64 * i];
            (e[2], pdu::le64(e, 8), e[16..32].to_vec())
        })
        .collect();
    assert!(
        entries.contains(&(1, 0xaaaa, id_a.to_vec())),
        "{entries:x?}"
    );
    assert!(
        entries.contains(&(0, 0xbbbb, id_b.to_vec())),
        "{entries:x?}"
    );
    // The non-extended report: 24-byte header and entries, 64-bit host ids.
    let r = b.resv(RESV_REPORT, 1, (72 / 4) - 1, 0, &[], 72);
    assert_eq!(r.sc(), 0);
    assert_eq!(r.data.len(), 72);
    assert_eq!(pdu::le16(&r.data, 5), 2);

    // A releases; B writes.
    assert_eq!(
        a.resv(RESV_RELEASE, 1, 1 << 8, 0, &0xaaaau64.to_le_bytes(), 0)
            .sc(),
        0
    );
    assert_eq!(
        b.rw(0x01, 8, 1, &block, true).sc(),
        0,
        "B's write after the release"
    );
    let r = b.resv(RESV_REPORT, 1, (4096 / 4) - 1, 1, &[], 4096);
    assert_eq!(r.data[4], 0, "no reservation");
    drop(fe);
}

#[test]
fn reservations_of_a_standalone_namespace_survive_a_frontend_restart_with_pr_dir() {
    let t = start_target(4 << 20);
    let dir = std::env::temp_dir().join(format!("plexd-nvmf-pr-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = NvmfConfig {
        pr_dir: Some(dir.clone()),
        ..config()
    };
    let (id_a, id_b) = ([0xa1u8; 16], [0xb2u8; 16]);
    let (ha, hb) = (
        "nqn.2014-08.org.nvmexpress:uuid:a",
        "nqn.2014-08.org.nvmexpress:uuid:b",
    );
    {
        let fe = NvmfFrontend::start(&t, &cfg).unwrap();
        let port = fe.listeners()[0].port();
        let (_adm, mut a) = host_queues(port, ha, id_a);
        assert_eq!(a.resv(RESV_REGISTER, 1, 0, 0, &keys(0, 0xaaaa), 0).sc(), 0);
        // Exclusive access, registrants only (type 4).
        assert_eq!(
            a.resv(RESV_ACQUIRE, 1, 4 << 8, 0, &keys(0xaaaa, 0), 0).sc(),
            0
        );
    }
    // A new frontend over the same directory: the state is back.
    let mut fe = NvmfFrontend::start(&t, &cfg).unwrap();
    let port = fe.listeners()[0].port();
    let (_adm_b, mut b) = host_queues(port, hb, id_b);
    assert_eq!(
        b.rw(0x02, 0, 1, &[], true).sc(),
        RESERVATION_CONFLICT,
        "B reads"
    );
    let r = b.resv(RESV_REPORT, 1, (4096 / 4) - 1, 1, &[], 4096);
    assert_eq!((r.data[4], pdu::le16(&r.data, 5)), (4, 1));
    assert_eq!(pdu::le64(&r.data, 64 + 8), 0xaaaa);
    assert_eq!(&r.data[64 + 16..64 + 32], &id_a);
    // Removing the namespace forgets its reservations.
    fe.remove_namespace(NQN, 1).unwrap();
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(files, 0, "reservation file left in {}", dir.display());
    drop(fe);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Posts an Asynchronous Event Request on admin queue `a`; returns its command id.
fn post_aer(a: &mut Host) -> u16 {
    let cid = a.next_cid();
    let mut sqe = [0u8; 64];
    sqe[0] = 0x0C;
    sqe[2..4].copy_from_slice(&cid.to_le_bytes());
    a.send(ty::CAPSULE_CMD, 0, &sqe, &[]);
    cid
}

/// Waits (the host's read timeout bounds it) for AER `cid` to complete with an ANA
/// change notice.
fn expect_ana_notice(a: &mut Host, cid: u16, why: &str) {
    let p = a
        .recv()
        .unwrap_or_else(|e| panic!("no ANA change notice {why}: {e}"));
    assert_eq!(p.ty, ty::CAPSULE_RESP, "{why}");
    assert_eq!(pdu::le16(&p.hdr[8..], 12), cid, "the AER completes {why}");
    assert_eq!(
        pdu::le32(&p.hdr[8..], 0),
        0x000C_0302,
        "ANA change notice {why}"
    );
}

/// Issue 9, found by Linux multipath in a VM (tests/tests/nvmf_multipath.rs): a new
/// master's ANA state turned optimized while its lease was still out (the host read
/// the log then: inaccessible), and the renewal that lifted the fence told no host,
/// so Linux kept the only live path inaccessible and queued I/O. Every fence and
/// unfence by the lease is now an ANA change: notice, new change count.
#[test]
fn the_lease_fencing_and_unfencing_a_shared_volume_sends_ana_change_notices() {
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
    let mut cfg = config();
    cfg.subsystems[0].namespaces[0].bdev = "sv".into();
    let fe = NvmfFrontend::start(&t, &cfg).unwrap();
    let port = fe.listeners()[0].port();
    let (mut a, cntlid) = admin_queue(port, Digests::default(), 5000);
    let mut q = io_queue(port, Digests::default(), 1, cntlid);
    assert_eq!(a.admin(0x09, 0, 0x0B, 1 << 11, 0).sc(), 0, "ANA notices on");
    // (state, change count) of the ANA log.
    let ana = |a: &mut Host| {
        let l = a.admin(0x02, 0, 0x0C | ((4096 / 4 - 1) << 16), 0, 4096);
        assert_eq!(l.sc(), 0);
        (l.data[32], pdu::le64(&l.data, 0))
    };
    let (s0, c0) = ana(&mut a);
    assert_eq!(s0, 0x03, "inaccessible before any lease");

    let cid = post_aer(&mut a);
    t.renew_lease(60_000).unwrap();
    expect_ana_notice(&mut a, cid, "when the first lease is granted");
    let (s1, c1) = ana(&mut a);
    assert_eq!(s1, 0x01, "optimized once served");
    assert!(c1 > c0, "a new change count: {c0} -> {c1}");
    // A renewal of a valid lease changes nothing.
    t.renew_lease(60_000).unwrap();
    assert_eq!(ana(&mut a), (0x01, c1));

    let cid = post_aer(&mut a);
    t.renew_lease(0).unwrap();
    expect_ana_notice(&mut a, cid, "when the lease is revoked");
    let (s2, c2) = ana(&mut a);
    assert_eq!(s2, 0x03, "inaccessible while fenced");
    assert!(c2 > c1, "a new change count: {c1} -> {c2}");
    assert_eq!(q.rw(0x02, 8, 8, &[], false).sc(), 0x302, "read fenced");

    // The failover of issue 9: the state set while fenced (the host reads
    // inaccessible), then the renewal after expiry must tell the host again.
    let cid = post_aer(&mut a);
    t.renew_lease(60_000).unwrap();
    expect_ana_notice(&mut a, cid, "when the lease is renewed after the fence");
    let (s3, c3) = ana(&mut a);
    assert_eq!(s3, 0x01, "optimized again");
    assert!(c3 > c2, "a new change count: {c2} -> {c3}");
    assert_eq!(q.rw(0x02, 8, 8, &[], false).sc(), 0, "read served");

    // An expiry (no renewal in time: the coordinator died) is a fence too. The
    // lease is 100 ms; the host's read timeout (10 s) bounds the wait.
    let cid = post_aer(&mut a);
    t.renew_lease(100).unwrap();
    expect_ana_notice(&mut a, cid, "when the lease expires");
    assert_eq!(ana(&mut a).0, 0x03, "inaccessible after the expiry");
}

const PREEMPT_ABORTED: u16 = 0x1b;

/// Sends a Write capsule of `data.len()` bytes at `lba` of namespace 1, in the
/// capsule when `inline`, else announcing a transport SGL; returns its command id.
fn send_write(h: &mut Host, lba: u64, data: &[u8], inline: bool) -> u16 {
    let cid = h.next_cid();
    let mut sqe = [0u8; 64];
    sqe[0] = 0x01;
    sqe[2..4].copy_from_slice(&cid.to_le_bytes());
    sqe[4..8].copy_from_slice(&1u32.to_le_bytes());
    sqe[32..36].copy_from_slice(&(data.len() as u32).to_le_bytes());
    sqe[39] = if inline { 0x01 } else { 0x5A };
    sqe[40..48].copy_from_slice(&lba.to_le_bytes());
    sqe[48..50].copy_from_slice(&((data.len() / BS - 1) as u16).to_le_bytes());
    h.send(ty::CAPSULE_CMD, 0, &sqe, if inline { data } else { &[] });
    cid
}

/// Reads one R2T; returns (command id, transfer tag, offset, length).
fn recv_r2t(h: &mut Host) -> (u16, u16, usize, usize) {
    let p = h.recv().expect("an R2T");
    assert_eq!(p.ty, ty::R2T, "an R2T");
    (
        pdu::le16(&p.hdr, 8),
        pdu::le16(&p.hdr, 10),
        pdu::le32(&p.hdr, 12) as usize,
        pdu::le32(&p.hdr, 16) as usize,
    )
}

/// Reads one response capsule; returns (command id, SCT << 8 | SC).
fn recv_resp(h: &mut Host) -> (u16, u16) {
    let p = h.recv().expect("a response capsule");
    assert_eq!(p.ty, ty::CAPSULE_RESP, "a response capsule");
    let c = &p.hdr[8..24];
    (pdu::le16(c, 12), (pdu::le16(c, 14) >> 1) & 0x7ff)
}

/// Issue 9: Reservation Acquire "preempt and abort" aborts the preempted host's
/// commands on this node: two writes waiting for their data after an R2T end with
/// "Command Aborted due to Preempt and Abort" when their data comes and write
/// nothing; a write already at the bdev (held there 2 s by an error bdev's
/// latency) ends with that status too, and the Acquire completes only after it
/// (no command of the preempted host is still at the bdev once the preempting
/// host sees the Acquire done). Before the fix the held writes met a reservation
/// conflict, the write at the bdev succeeded and the Acquire did not wait for it.
#[test]
fn preempt_and_abort_ends_the_preempted_hosts_commands_before_the_acquire_completes() {
    use plexd_target::bdev::error::ErrorBdev;
    let t = start_target(4 << 20);
    let e = ErrorBdev::new("e0", t.bdev("m0").unwrap());
    t.add_bdev(e.clone()).unwrap();
    let mut cfg = config();
    cfg.subsystems[0].namespaces[0].bdev = "e0".into();
    let fe = NvmfFrontend::start(&t, &cfg).unwrap();
    let port = fe.listeners()[0].port();
    let (_adm_a, mut a) = host_queues(port, "nqn.2014-08.org.nvmexpress:uuid:a", [0xa1; 16]);
    let (_adm_b, mut b) = host_queues(port, "nqn.2014-08.org.nvmexpress:uuid:b", [0xb2; 16]);

    // A's data first, before any reservation.
    let old = pattern(1, 128 << 10);
    assert_eq!(a.rw(0x01, 0, 256, &old, false).sc(), 0, "A's write");
    assert_eq!(a.resv(RESV_REGISTER, 1, 0, 0, &keys(0, 0xaaaa), 0).sc(), 0);
    assert_eq!(b.resv(RESV_REGISTER, 1, 0, 0, &keys(0, 0xbbbb), 0).sc(), 0);
    assert_eq!(
        b.resv(RESV_ACQUIRE, 1, 1 << 8, 0, &keys(0xbbbb, 0), 0).sc(),
        0,
        "B acquires write exclusive"
    );

    // B: two 64 KiB writes over A's data, each given its R2T, data held back.
    let new = pattern(2, 128 << 10);
    let mut held = Vec::new();
    for i in 0..2usize {
        let cid = send_write(
            &mut b,
            (i * 128) as u64,
            &new[i * (64 << 10)..][..64 << 10],
            false,
        );
        let (rcid, ttag, off, len) = recv_r2t(&mut b);
        assert_eq!((rcid, off, len), (cid, 0, 64 << 10), "R2T of command {cid}");
        held.push((cid, ttag, i));
    }
    // B: a 4 KiB write that sits at the bdev for 2 s (the latency is added after
    // the inner bdev wrote it: its data on m0 says it is there).
    let latency = Duration::from_secs(2);
    e.injection().set_latency_us(latency.as_micros() as u64);
    let at_bdev = pattern(3, 4096);
    let sent = Instant::now();
    let slow_cid = send_write(&mut b, 512, &at_bdev, true);
    wait_until("B's write at the bdev", || {
        bdev_read(&t, "m0", 512 * BS as u64, 4096) == at_bdev
    });

    // A preempts B and aborts (action 010b, type 1, PRKEY B's key).
    let pa = a.resv(RESV_ACQUIRE, 1, 2 | (1 << 8), 0, &keys(0xaaaa, 0xbbbb), 0);
    let acquired = sent.elapsed();
    e.injection().set_latency_us(0);
    assert_eq!(pa.sc(), 0, "A's preempt and abort");
    assert!(
        acquired >= latency,
        "the Acquire completed after {acquired:?}, while B's write was still at the bdev ({latency:?})"
    );
    // B's write at the bdev ended with the abort status.
    assert_eq!(
        recv_resp(&mut b),
        (slow_cid, PREEMPT_ABORTED),
        "B's write at the bdev"
    );
    // B's held writes get their data now and end with the abort status.
    for &(cid, ttag, i) in &held {
        let chunk = &new[i * (64 << 10)..][..64 << 10];
        let h = pdu::data_hdr(cid, ttag, 0, chunk.len() as u32);
        b.send(ty::H2C_DATA, flag::LAST_PDU, &h, chunk);
        assert_eq!(
            recv_resp(&mut b),
            (cid, PREEMPT_ABORTED),
            "B's held write {cid}"
        );
    }
    assert_eq!(
        bdev_read(&t, "m0", 0, 128 << 10),
        old,
        "nothing of B's aborted writes on the bdev"
    );
    // A holds the reservation, B is no longer registered: its new write conflicts.
    let r = a.resv(RESV_REPORT, 1, (4096 / 4) - 1, 1, &[], 4096);
    assert_eq!(
        (r.data[4], pdu::le16(&r.data, 5)),
        (1, 1),
        "type 1, one registrant"
    );
    assert_eq!(pdu::le64(&r.data, 64 + 8), 0xaaaa);
    assert_eq!(
        b.rw(0x01, 0, 1, &new[..BS], true).sc(),
        RESERVATION_CONFLICT
    );
    assert_eq!(a.rw(0x01, 0, 1, &new[..BS], true).sc(), 0, "A writes");
    drop(fe);
}

/// Reads the reservation notification log page (80h, 64 bytes, RAE clear) on
/// admin queue `adm`: (log page count, type, available pages, namespace id).
fn resv_log(adm: &mut Host) -> (u64, u8, u8, u32) {
    let d = adm.admin(0x02, 0, 0x80 | (15 << 16), 0, 64);
    assert_eq!(d.sc(), 0, "Get Log Page 80h");
    assert_eq!(d.data.len(), 64);
    (
        pdu::le64(&d.data, 0),
        d.data[8],
        d.data[9],
        pdu::le32(&d.data, 12),
    )
}

/// Waits (the host's read timeout bounds it) for AER `cid` to complete with
/// "reservation log page available".
fn expect_resv_aen(adm: &mut Host, cid: u16, why: &str) {
    let p = adm
        .recv()
        .unwrap_or_else(|e| panic!("no reservation notice {why}: {e}"));
    assert_eq!(p.ty, ty::CAPSULE_RESP, "{why}");
    assert_eq!(pdu::le16(&p.hdr[8..], 12), cid, "the AER completes {why}");
    assert_eq!(
        pdu::le32(&p.hdr[8..], 0),
        0x0080_0006,
        "reservation log page available {why}"
    );
}

/// Issue 9: reservation notifications between two hosts. A release of a
/// registrants-only reservation by B gives A "reservation released", a preempt
/// by A gives B "registration preempted" and a clear "reservation preempted":
/// each a page of log 80h (count, type, pages left, namespace) announced by an
/// AEN, unless masked with Set Features 82h; the log keeps at most
/// MAX_RESV_NOTICES pages (the count shows the ones dropped). Features 83h
/// reports persist through power loss. Before: log 80h and features 82h / 83h
/// were refused.
#[test]
fn reservation_notifications_reach_the_other_host_through_log_80h_and_an_aen() {
    use plexd_target::frontend::nvmf::subsys::MAX_RESV_NOTICES;
    let t = start_target(4 << 20);
    let fe = NvmfFrontend::start(&t, &config()).unwrap();
    let port = fe.listeners()[0].port();
    let (mut adm_a, mut a) = host_queues(port, "nqn.2014-08.org.nvmexpress:uuid:a", [0xa1; 16]);
    let (mut adm_b, mut b) = host_queues(port, "nqn.2014-08.org.nvmexpress:uuid:b", [0xb2; 16]);

    // Features 83h: persist through power loss, only PTPL set is accepted.
    let g = adm_a.admin(0x0a, 1, 0x83, 0, 0);
    assert_eq!((g.sc(), g.dw0 & 1), (0, 1), "Get Features 83h: PTPL");
    assert_eq!(adm_a.admin(0x09, 1, 0x83, 1, 0).sc(), 0, "Set 83h PTPL 1");
    assert_eq!(
        adm_a.admin(0x09, 1, 0x83, 0, 0).sc(),
        0x02,
        "Set 83h PTPL 0"
    );
    assert_eq!(
        adm_a.admin(0x0a, 7, 0x83, 0, 0).sc(),
        0x0b,
        "no namespace 7"
    );
    let g = adm_a.admin(0x0a, 1, 0x82, 0, 0);
    assert_eq!((g.sc(), g.dw0), (0, 0), "Get Features 82h: nothing masked");
    assert_eq!(resv_log(&mut adm_a), (0, 0, 0, 0), "an empty log");

    assert_eq!(a.resv(RESV_REGISTER, 1, 0, 0, &keys(0, 0xaaaa), 0).sc(), 0);
    assert_eq!(b.resv(RESV_REGISTER, 1, 0, 0, &keys(0, 0xbbbb), 0).sc(), 0);
    // B takes and releases write exclusive, registrants only (type 3): A is told.
    let aer_a = post_aer(&mut adm_a);
    let b_takes_and_releases = |b: &mut Host| {
        assert_eq!(
            b.resv(RESV_ACQUIRE, 1, 3 << 8, 0, &keys(0xbbbb, 0), 0).sc(),
            0
        );
        let rel = b.resv(RESV_RELEASE, 1, 3 << 8, 0, &0xbbbbu64.to_le_bytes(), 0);
        assert_eq!(rel.sc(), 0);
    };
    b_takes_and_releases(&mut b);
    expect_resv_aen(&mut adm_a, aer_a, "after B's release");
    assert_eq!(resv_log(&mut adm_a), (1, 2, 0, 1), "reservation released");
    assert_eq!(resv_log(&mut adm_a), (0, 0, 0, 0), "read: gone");
    assert_eq!(
        resv_log(&mut adm_b),
        (0, 0, 0, 0),
        "nothing for the releaser"
    );

    // Masked (every namespace): no page.
    assert_eq!(adm_a.admin(0x09, u32::MAX, 0x82, 1 << 2, 0).sc(), 0);
    assert_eq!(adm_a.admin(0x0a, 1, 0x82, 0, 0).dw0, 1 << 2);
    b_takes_and_releases(&mut b);
    assert_eq!(resv_log(&mut adm_a), (0, 0, 0, 0), "masked");
    assert_eq!(adm_a.admin(0x09, 1, 0x82, 0, 0).sc(), 0, "unmasked");

    // A preempts B (action 001b, type 1): B's registration preempted.
    let aer_b = post_aer(&mut adm_b);
    assert_eq!(
        b.resv(RESV_ACQUIRE, 1, 3 << 8, 0, &keys(0xbbbb, 0), 0).sc(),
        0
    );
    let pre = a.resv(RESV_ACQUIRE, 1, 1 | (1 << 8), 0, &keys(0xaaaa, 0xbbbb), 0);
    assert_eq!(pre.sc(), 0, "A preempts B");
    expect_resv_aen(&mut adm_b, aer_b, "after A's preempt");
    assert_eq!(resv_log(&mut adm_b), (1, 1, 0, 1), "registration preempted");

    // A clears, again and again: B's reservation preempted each time; the log
    // keeps the newest MAX_RESV_NOTICES and its count shows the ones dropped.
    let clears = MAX_RESV_NOTICES + 3;
    for _ in 0..clears {
        assert_eq!(a.resv(RESV_REGISTER, 1, 0, 0, &keys(0, 0xaaaa), 0).sc(), 0);
        assert_eq!(b.resv(RESV_REGISTER, 1, 0, 0, &keys(0, 0xbbbb), 0).sc(), 0);
        let clear = a.resv(RESV_RELEASE, 1, 1, 0, &0xaaaau64.to_le_bytes(), 0);
        assert_eq!(clear.sc(), 0, "A clears");
    }
    let first = (2 + clears - MAX_RESV_NOTICES) as u64;
    let left = (MAX_RESV_NOTICES - 1).min(255) as u8;
    assert_eq!(
        resv_log(&mut adm_b),
        (first, 3, left, 1),
        "reservation preempted"
    );
    assert_eq!(resv_log(&mut adm_b), (first + 1, 3, left - 1, 1));
    assert_eq!(
        resv_log(&mut adm_a),
        (0, 0, 0, 0),
        "nothing for the host clearing"
    );
    drop(fe);
}

/// An admin queue and one I/O queue whose ICReq announced `maxr2t`.
fn r2t_queues(port: u16, maxr2t: u32) -> (Host, Host) {
    let (adm, cntlid) = admin_queue(port, Digests::default(), 0);
    let mut q = Host::ic_r2t(port, Digests::default(), maxr2t);
    assert_eq!(q.connect(1, cntlid, 0, NQN).sc(), 0, "I/O connect");
    (adm, q)
}

/// Reads PDUs up to the response to command `cid`, which must come first
/// except for R2Ts of other commands: returns those R2Ts.
fn r2ts_before_response(h: &mut Host, cid: u16) -> Vec<(u16, u16, usize, usize)> {
    let mut r2ts = Vec::new();
    for _ in 0..nvmf_host::MAX_PDUS_PER_CMD {
        let p = h.recv().expect("a PDU");
        match p.ty {
            ty::R2T => r2ts.push((
                pdu::le16(&p.hdr, 8),
                pdu::le16(&p.hdr, 10),
                pdu::le32(&p.hdr, 12) as usize,
                pdu::le32(&p.hdr, 16) as usize,
            )),
            ty::CAPSULE_RESP => {
                let c = &p.hdr[8..24];
                assert_eq!(pdu::le16(c, 12), cid, "the response expected");
                assert_eq!((pdu::le16(c, 14) >> 1) & 0x7ff, 0, "command {cid}");
                return r2ts;
            }
            t => panic!("unexpected PDU type {t:#x}"),
        }
    }
    panic!("no response to command {cid}");
}

/// Answers one R2T with its data from `data` in two H2CData PDUs.
fn answer_r2t(h: &mut Host, (cid, ttag, off, len): (u16, u16, usize, usize), data: &[u8]) {
    let half = len / 2;
    for (o, n) in [(off, half), (off + half, len - half)] {
        let f = if o + n == off + len {
            flag::LAST_PDU
        } else {
            0
        };
        let hdr = pdu::data_hdr(cid, ttag, o as u32, n as u32);
        h.send(ty::H2C_DATA, f, &hdr, &data[o..o + n]);
    }
}

/// Issue 9: a 1 MiB write is asked for in R2Ts of at most 128 KiB
/// (MAX_R2T_DATA_BYTES), never more outstanding than the host's MAXR2T (1, then
/// 4): right after the write's capsule exactly MAXR2T R2Ts come (a Flush sent
/// behind it is answered after them and no further R2T), then one more each
/// time an R2T's data is in. The data is read back and compared with the bdev.
/// Before: one R2T for the whole megabyte whatever MAXR2T.
#[test]
fn a_large_write_is_asked_for_in_r2t_pieces_up_to_the_hosts_maxr2t() {
    use plexd_target::frontend::nvmf::MAX_R2T_DATA_BYTES;
    let t = start_target(16 << 20);
    let fe = NvmfFrontend::start(&t, &config()).unwrap();
    let port = fe.listeners()[0].port();
    let total = 1usize << 20;
    for (i, maxr2t) in [1usize, 4].into_iter().enumerate() {
        let (_adm, mut q) = r2t_queues(port, maxr2t as u32);
        let data = pattern(40 + i as u64, total);
        let lba = (i * total / BS) as u64;
        let cid = send_write(&mut q, lba, &data, false);
        let flush = q.next_cid();
        let mut sqe = [0u8; 64];
        sqe[2..4].copy_from_slice(&flush.to_le_bytes());
        sqe[4..8].copy_from_slice(&1u32.to_le_bytes());
        q.send(ty::CAPSULE_CMD, 0, &sqe, &[]);
        let mut outstanding = r2ts_before_response(&mut q, flush);
        assert_eq!(
            outstanding.len(),
            maxr2t,
            "R2Ts outstanding at MAXR2T {maxr2t}"
        );
        let (mut next, mut pieces) = (0usize, 0usize);
        for _ in 0..total / MAX_R2T_DATA_BYTES + 1 {
            if outstanding.is_empty() {
                break;
            }
            let r = outstanding.remove(0);
            assert_eq!(r.0, cid);
            assert_eq!(r.2, next, "R2Ts in order, back to back");
            assert!(r.3 > 0 && r.3 <= MAX_R2T_DATA_BYTES, "R2T of {} bytes", r.3);
            next += r.3;
            pieces += 1;
            answer_r2t(&mut q, r, &data);
            if next + outstanding.iter().map(|r| r.3).sum::<usize>() < total {
                outstanding.push(recv_r2t(&mut q));
                assert!(outstanding.len() <= maxr2t);
            }
        }
        assert_eq!((next, pieces), (total, total / MAX_R2T_DATA_BYTES));
        assert_eq!(
            recv_resp(&mut q),
            (cid, 0),
            "the 1 MiB write at MAXR2T {maxr2t}"
        );
        let back = q.rw(0x02, lba, (total / BS) as u16, &[], false);
        assert_eq!(back.sc(), 0);
        assert!(back.data == data, "read back at MAXR2T {maxr2t}");
        assert!(bdev_read(&t, "m0", lba * BS as u64, total as u64) == data);
    }
    drop(fe);
}

/// Issue 9: H2CData must answer an outstanding R2T of its command: a transfer
/// tag no R2T outstanding gave, or an offset other than the next one of its R2T,
/// ends the connection with a termination request (the target keeps serving).
#[test]
fn h2c_data_for_a_wrong_transfer_tag_or_offset_ends_the_connection() {
    let t = start_target(16 << 20);
    let fe = NvmfFrontend::start(&t, &config()).unwrap();
    let port = fe.listeners()[0].port();
    let data = pattern(5, 1 << 20);
    type Bend = fn((u16, u16, usize, usize)) -> (u16, u16, usize, usize);
    let cases: [(&str, Bend, u16); 3] = [
        (
            "a transfer tag no R2T gave",
            |(c, t, o, l)| (c, t.wrapping_add(100), o, l),
            0x01,
        ),
        (
            "an offset past the R2T's next",
            |(c, t, o, l)| (c, t, o + BS, l - BS),
            0x04,
        ),
        (
            "an offset before the R2T",
            |(c, t, o, l)| (c, t, o - BS, l),
            0x04,
        ),
    ];
    for (what, bend, fes) in cases {
        let (_adm, mut q) = r2t_queues(port, 4);
        let cid = send_write(&mut q, 0, &data, false);
        let _first = recv_r2t(&mut q);
        let second = recv_r2t(&mut q);
        assert_eq!(second.0, cid);
        let (c, tag, off, len) = bend(second);
        let hdr = pdu::data_hdr(c, tag, off as u32, len as u32);
        q.send(ty::H2C_DATA, flag::LAST_PDU, &hdr, &data[off..off + len]);
        let mut term = None;
        for _ in 0..8 {
            match q.recv() {
                Ok(p) if p.ty == ty::C2H_TERM => {
                    term = Some(pdu::le16(&p.hdr, 8));
                    break;
                }
                Ok(p) => assert_eq!(p.ty, ty::R2T, "{what}: only R2Ts before the end"),
                Err(e) => panic!("{what}: no termination request: {e}"),
            }
        }
        assert_eq!(term, Some(fes), "{what}: the termination request's FES");
        assert!(q.closed_by_target(), "{what}: closed");
    }
    let (_adm, mut q) = r2t_queues(port, 4);
    assert_eq!(
        q.rw(0x01, 0, 8, &data[..8 * BS], false).sc(),
        0,
        "still serving"
    );
    drop(fe);
}

/// Issue 9: a preempt and abort run through another node reaches this one with
/// the committed state (`setReservations`): the preempted host's commands here
/// end with "Command Aborted due to Preempt and Abort" (a write waiting for its
/// data after an R2T when the data comes, one held at the bdev for 2 s when it
/// leaves it), applying the state waits for the write at the bdev, nothing of the
/// aborted writes is on the disk, and the preempted host's controller here gets
/// the "registration preempted" notice (AEN and log 80h). Before: the state was
/// installed and nothing else happened (both writes succeeded, no notice, the
/// apply returned at once).
#[test]
fn a_committed_preempt_and_abort_from_another_node_aborts_and_notifies_here() {
    use plexd_target::bdev::error::ErrorBdev;
    use plexd_target::frontend::nvmf::resv;
    use plexd_target::frontend::scsi::pr::{self, PrState};
    use plexd_target::volume::{PlexKind, PlexSpec, PlexState, SubdiskSpec, VolumeSpec};
    let size = 4u64 << 20;
    let t = start_target(size);
    let e = ErrorBdev::new("e0", t.bdev("m0").unwrap());
    t.add_bdev(e.clone()).unwrap();
    t.create_volume(&VolumeSpec {
        log: None,
        name: "sv".into(),
        size_bytes: size,
        plexes: vec![PlexSpec {
            name: "sv-01".into(),
            kind: PlexKind::Concat,
            columns: vec![vec![SubdiskSpec {
                bdev: "e0".into(),
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
    t.renew_lease(60_000).unwrap();
    let mut cfg = config();
    cfg.subsystems[0].namespaces[0].bdev = "sv".into();
    let fe = NvmfFrontend::start(&t, &cfg).unwrap();
    let port = fe.listeners()[0].port();
    let (hid_a, hid_b) = ([0xa1; 16], [0xb2; 16]);
    let (nqn_a, nqn_b) = (
        "nqn.2014-08.org.nvmexpress:uuid:a",
        "nqn.2014-08.org.nvmexpress:uuid:b",
    );
    let (a_nexus, b_nexus) = (resv::nexus(nqn_a, &hid_a), resv::nexus(nqn_b, &hid_b));
    // Host B is connected to this node; host A (through another node) only
    // appears in the committed states.
    let (mut adm_b, mut b) = host_queues(port, nqn_b, hid_b);
    let old = pattern(1, 64 << 10);
    assert_eq!(b.rw(0x01, 0, 128, &old, false).sc(), 0, "B's first write");

    // Committed: A and B registered, B holds write exclusive.
    let mut state = PrState::default();
    state
        .out(&a_nexus, 0, 0, &pr::param(0, 0xaaaa, false))
        .unwrap();
    state
        .out(&b_nexus, 0, 0, &pr::param(0, 0xbbbb, false))
        .unwrap();
    state
        .out(&b_nexus, 1, 1, &pr::param(0xbbbb, 0, false))
        .unwrap();
    fe.set_reservations("sv", &state).wait().unwrap();
    let aer = post_aer(&mut adm_b);

    // B: a 64 KiB write given its R2T, data held back...
    let new = pattern(2, 64 << 10);
    let held = send_write(&mut b, 0, &new, false);
    let (rcid, ttag, off, len) = recv_r2t(&mut b);
    assert_eq!(
        (rcid, off, len),
        (held, 0, 64 << 10),
        "R2T of the held write"
    );
    // ... and a 4 KiB write sitting at the bdev for 2 s (its data is on m0 when
    // the latency starts).
    let latency = Duration::from_secs(2);
    e.injection().set_latency_us(latency.as_micros() as u64);
    let at_bdev = pattern(3, 4096);
    let sent = Instant::now();
    let slow = send_write(&mut b, 512, &at_bdev, true);
    wait_until("B's write at the bdev", || {
        bdev_read(&t, "m0", 512 * BS as u64, 4096) == at_bdev
    });

    // The cluster commits A's preempt and abort of B (type 1, PRKEY B's key).
    let mut after = state.clone();
    assert_eq!(
        after.out(
            &a_nexus,
            resv::SA_PREEMPT_AND_ABORT,
            1,
            &pr::param(0xaaaa, 0xbbbb, false)
        ),
        Ok(true)
    );
    fe.set_reservations("sv", &after).wait().unwrap();
    let applied = sent.elapsed();
    e.injection().set_latency_us(0);
    assert!(
        applied >= latency,
        "applied after {applied:?}, while B's write was still at the bdev ({latency:?})"
    );
    assert_eq!(
        recv_resp(&mut b),
        (slow, PREEMPT_ABORTED),
        "B's write at the bdev"
    );
    let h = pdu::data_hdr(held, ttag, 0, new.len() as u32);
    b.send(ty::H2C_DATA, flag::LAST_PDU, &h, &new);
    assert_eq!(recv_resp(&mut b), (held, PREEMPT_ABORTED), "B's held write");
    assert_eq!(
        bdev_read(&t, "m0", 0, 64 << 10),
        old,
        "nothing of the held write"
    );
    // B's controller here: registration preempted (type 1) on namespace 1.
    expect_resv_aen(&mut adm_b, aer, "after the committed preempt and abort");
    let (count, notice, left, nsid) = resv_log(&mut adm_b);
    assert_eq!(
        (notice, left, nsid),
        (1, 0, 1),
        "registration preempted on namespace 1 (log count {count})"
    );
    assert_eq!(
        b.rw(0x01, 0, 1, &new[..BS], true).sc(),
        RESERVATION_CONFLICT,
        "B is no longer registered"
    );
    // The same state again (a coordinator restart sets it again): nothing new.
    fe.set_reservations("sv", &after).wait().unwrap();
    assert_eq!(resv_log(&mut adm_b), (0, 0, 0, 0), "no second notice");
    drop(fe);
}
