// The iSCSI codec modules of plexd-target and the SCSI modules they use, compiled
// into the fuzz targets. The nesting mirrors target/src/frontend/ (scsi/, iscsi/),
// so the sources' relative `super::super::scsi` paths resolve here too; scsi/ is
// plexd-target-api's (the data plane re-exports it at that path).
#![allow(dead_code, unused_imports)]

// The SCSI modules live in plexd-target-api (built without its Cap'n Proto client).
pub mod scsi {
    pub use plexd_target_api::scsi::{alua, bytes, sense};
}

#[path = "../../target/src/frontend/iscsi"]
pub mod iscsi {
    #[path = "chap.rs"]
    pub mod chap;
    #[path = "config.rs"]
    pub mod config;
    #[path = "login.rs"]
    pub mod login;
    #[path = "pdu.rs"]
    pub mod pdu;
    #[path = "text.rs"]
    pub mod text;
}
