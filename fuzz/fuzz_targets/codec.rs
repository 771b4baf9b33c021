// The iSCSI codec modules of plexd-target and the SCSI modules they use, compiled
// into the fuzz targets. The nesting mirrors target/src/frontend/ (scsi/, iscsi/),
// so the sources' relative `super::super::scsi` paths resolve here too.
#![allow(dead_code, unused_imports)]

#[path = "../../target/src/frontend/scsi"]
pub mod scsi {
    #[path = "alua.rs"]
    pub mod alua;
    #[path = "bytes.rs"]
    pub mod bytes;
    #[path = "sense.rs"]
    pub mod sense;
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
