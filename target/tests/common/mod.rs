//! Set-up shared by the target's integration tests (test code only: each test
//! file that needs it says `mod common;`).

use std::sync::Arc;

use plexd_target::reactor::ReactorConfig;
use plexd_target::{Target, TargetConfig};

/// A target on two reactors (cores 0 and 1), logging to the test's output.
#[allow(dead_code)] // not every test binary that shares this module needs it
pub fn two_reactor_target() -> Arc<Target> {
    let _ = env_logger::builder().is_test(true).try_init();
    Target::start(&TargetConfig {
        reactors: ReactorConfig {
            cores: vec![0, 1],
            ..Default::default()
        },
        ..Default::default()
    })
    .expect("a target on cores 0 and 1 starts")
}

/// Starts an NVMe/TCP frontend of `t` on 127.0.0.1 (a free port) exporting bdev
/// `bdev` as namespace 1 of subsystem `nqn` to any host; returns it and its port.
#[allow(dead_code)] // not every test binary that shares this module exports over NVMe/TCP
pub fn nvmf_export(
    t: &Arc<Target>,
    nqn: &str,
    bdev: &str,
) -> (plexd_target::frontend::nvmf::NvmfFrontend, u16) {
    use plexd_target::frontend::nvmf::{
        NamespaceConfig, NvmfConfig, NvmfFrontend, SubsystemConfig,
    };
    let fe = NvmfFrontend::start(
        t,
        &NvmfConfig {
            listeners: vec!["127.0.0.1:0".into()],
            subsystems: vec![SubsystemConfig {
                nqn: nqn.into(),
                allow_any: true,
                namespaces: vec![NamespaceConfig {
                    nsid: 1,
                    bdev: bdev.into(),
                    identity: None,
                    read_only: false,
                }],
                ..Default::default()
            }],
            cntlid_range: None,
            ana_group: None,
            pr_dir: None,
        },
    )
    .expect("the NVMe/TCP frontend starts on 127.0.0.1");
    let port = fe.listeners()[0].port();
    (fe, port)
}

/// An iSCSI configuration of one open target `iqn` on a 127.0.0.1 portal (a
/// free port) with bdev `bdev` as LUN 0.
#[allow(dead_code)] // not every test binary that shares this module exports over iSCSI
pub fn iscsi_config(iqn: &str, bdev: &str) -> plexd_target::frontend::iscsi::IscsiConfig {
    use plexd_target::frontend::iscsi::{IscsiConfig, LunConfig, TargetNodeConfig};
    IscsiConfig {
        portal: Some("127.0.0.1:0".into()),
        targets: vec![TargetNodeConfig {
            iqn: iqn.into(),
            luns: vec![LunConfig {
                lun: 0,
                bdev: bdev.into(),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Reads `len` bytes at `off` of bdev `name` of `t` straight from the bdev, on
/// reactor 0 (within 10 s).
#[allow(dead_code)] // not every test binary that shares this module reads a bdev
pub fn bdev_read(t: &Arc<Target>, name: &str, off: u64, len: u64) -> Vec<u8> {
    use plexd_target::bdev::Bdev;
    use plexd_target::diag::{run_ios, IoReq};
    let bdev: Arc<dyn Bdev> = t.bdev(name).expect("the bdev exists");
    let out = run_ios(
        &t.reactors().handles()[0],
        &bdev,
        vec![IoReq::read(off, len)],
        std::time::Duration::from_secs(10),
    )
    .expect("the bdev read completes");
    out[0].data.clone()
}
