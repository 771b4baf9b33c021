// The iSCSI codec modules of plexd-target, compiled into the fuzz targets.
#![allow(dead_code)]

#[path = "../../target/src/frontend/iscsi/alua.rs"]
pub mod alua;
#[path = "../../target/src/frontend/iscsi/chap.rs"]
pub mod chap;
#[path = "../../target/src/frontend/iscsi/config.rs"]
pub mod config;
#[path = "../../target/src/frontend/iscsi/login.rs"]
pub mod login;
#[path = "../../target/src/frontend/iscsi/pdu.rs"]
pub mod pdu;
#[path = "../../target/src/frontend/iscsi/sense.rs"]
pub mod sense;
#[path = "../../target/src/frontend/iscsi/text.rs"]
pub mod text;
