// The NVMe/TCP codec modules of plexd-target, compiled into the fuzz targets.
#![allow(dead_code)]

#[path = "../../target/src/frontend/nvmf/fabrics.rs"]
pub mod fabrics;
#[path = "../../target/src/frontend/nvmf/nvme.rs"]
pub mod nvme;
#[path = "../../target/src/frontend/nvmf/pdu.rs"]
pub mod pdu;
