//! Runs the login state machine on arbitrary login requests: the input is cut
//! into requests (a flags byte, a length byte, then that much key text).
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "codec.rs"]
mod codec;
use codec::iscsi::config::ChapConfig;
use codec::iscsi::login::{Login, LoginEnv, LoginReq, TargetAuth};
use codec::iscsi::text;

struct Env {
    chap: bool,
}

impl LoginEnv for Env {
    fn target(&self, iqn: &str) -> Option<TargetAuth> {
        (iqn == "iqn.t").then(|| TargetAuth {
            allow: vec!["iqn.i".into()],
            chap: self.chap.then(|| ChapConfig {
                user: "u".into(),
                secret: "secretsecret".into(),
                mutual_user: None,
                mutual_secret: Some("mutualsecret".into()),
            }),
            alias: None,
        })
    }
    fn discovery_chap(&self) -> Option<ChapConfig> {
        None
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = text::parse(data);
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let env = Env {
        chap: mode & 1 != 0,
    };
    let lim = text::Limits {
        target_mrdsl: 262_144,
        max_burst: 1 << 20,
        first_burst: 1 << 20,
        immediate_data: true,
        initial_r2t: false,
        max_connections: 1,
        max_outstanding_r2t: 1,
    };
    let mut login = Login::new(lim);
    let mut rng = |b: &mut [u8]| b.fill(7);
    // At most 32 requests, like a login that the target times out.
    for _ in 0..32 {
        if rest.len() < 2 {
            break;
        }
        let flags = rest[0];
        let n = (rest[1] as usize).min(rest.len() - 2);
        let req = LoginReq {
            flags,
            version_max: 0,
            version_min: 0,
            tsih: 0,
            data: &rest[2..2 + n],
        };
        rest = &rest[2 + n..];
        let r = login.step(&req, &env, &mut rng);
        assert!(r.data.len() <= 64 << 10);
        if r.status != 0 || r.full_feature {
            break;
        }
    }
});
