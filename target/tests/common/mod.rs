//! Set-up shared by the target's integration tests (test code only: each test
//! file that needs it says `mod common;`).

use std::sync::Arc;

use plexd_target::reactor::ReactorConfig;
use plexd_target::{Target, TargetConfig};

/// A target on two reactors (cores 0 and 1), logging to the test's output.
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
