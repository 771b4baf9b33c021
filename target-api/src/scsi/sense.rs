//! SCSI status codes and sense data (SPC-4 §4.5, fixed format).

/// SCSI status GOOD.
pub const GOOD: u8 = 0x00;
/// SCSI status CHECK CONDITION.
pub const CHECK_CONDITION: u8 = 0x02;
/// SCSI status CONDITION MET.
pub const CONDITION_MET: u8 = 0x04;
/// SCSI status BUSY.
pub const BUSY: u8 = 0x08;
/// SCSI status RESERVATION CONFLICT.
pub const RESERVATION_CONFLICT: u8 = 0x18;
/// SCSI status TASK SET FULL.
pub const TASK_SET_FULL: u8 = 0x28;

/// Sense keys.
pub mod key {
    /// NO SENSE.
    pub const NO_SENSE: u8 = 0x0;
    /// NOT READY.
    pub const NOT_READY: u8 = 0x2;
    /// MEDIUM ERROR.
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// HARDWARE ERROR.
    pub const HARDWARE_ERROR: u8 = 0x4;
    /// ILLEGAL REQUEST.
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    /// UNIT ATTENTION.
    pub const UNIT_ATTENTION: u8 = 0x6;
    /// DATA PROTECT.
    pub const DATA_PROTECT: u8 = 0x7;
    /// ABORTED COMMAND.
    pub const ABORTED_COMMAND: u8 = 0xb;
    /// MISCOMPARE.
    pub const MISCOMPARE: u8 = 0xe;
}

/// One sense condition: key, additional sense code and qualifier, and the
/// INFORMATION field when it is meaningful.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
    /// INFORMATION (e.g. the offset of a miscompare).
    pub info: Option<u32>,
    /// Sense-key specific field pointer: the CDB byte in error.
    pub field: Option<u16>,
}

impl Sense {
    /// A sense without INFORMATION.
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense {
            key,
            asc,
            ascq,
            info: None,
            field: None,
        }
    }

    /// The same sense pointing at CDB byte `byte` (SKSV, C/D set).
    pub const fn at_cdb_byte(self, byte: u16) -> Sense {
        Sense {
            field: Some(byte),
            ..self
        }
    }

    /// Fixed-format sense data (18 bytes).
    pub fn to_fixed(&self) -> [u8; 18] {
        let mut b = [0u8; 18];
        b[0] = 0x70;
        b[2] = self.key & 0x0f;
        if let Some(i) = self.info {
            b[0] |= 0x80;
            b[3..7].copy_from_slice(&i.to_be_bytes());
        }
        b[7] = 10;
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some(f) = self.field {
            b[15] = 0x80 | 0x40;
            b[16..18].copy_from_slice(&f.to_be_bytes());
        }
        b
    }
}
/// NOT READY, LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION
/// (02h/04h/0Ah): a transient condition the host retries on the same path (Linux's
/// ALUA handler retries it as NEEDS_RETRY). A PERSISTENT RESERVE OUT of a shared
/// volume gets it when the cluster cannot run it now (no quorum, not a member).
pub const STATE_TRANSITION: Sense = Sense::new(key::NOT_READY, 0x04, 0x0a);

/// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE.
pub const INVALID_OPCODE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x20, 0x00);
/// ILLEGAL REQUEST / INVALID FIELD IN CDB.
pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x24, 0x00);
/// ILLEGAL REQUEST / INVALID FIELD IN PARAMETER LIST.
pub const INVALID_FIELD_IN_PARAM: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x00);
/// ILLEGAL REQUEST / PARAMETER LIST LENGTH ERROR.
pub const PARAM_LIST_LENGTH: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x1a, 0x00);
/// ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE.
pub const LBA_OUT_OF_RANGE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x00);
/// ILLEGAL REQUEST / LOGICAL UNIT NOT SUPPORTED.
pub const LUN_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x25, 0x00);
/// ILLEGAL REQUEST / SAVING PARAMETERS NOT SUPPORTED.
pub const SAVING_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x39, 0x00);
/// ILLEGAL REQUEST / INVALID RELEASE OF PERSISTENT RESERVATION.
pub const INVALID_RELEASE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x04);
/// ILLEGAL REQUEST / INVALID FIELD IN COMMAND INFORMATION UNIT.
pub const INVALID_FIELD_IN_IU: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x0e, 0x03);
/// DATA PROTECT / WRITE PROTECTED.
pub const WRITE_PROTECTED: Sense = Sense::new(key::DATA_PROTECT, 0x27, 0x00);
/// MEDIUM ERROR / UNRECOVERED READ ERROR.
pub const READ_ERROR: Sense = Sense::new(key::MEDIUM_ERROR, 0x11, 0x00);
/// MEDIUM ERROR / WRITE ERROR.
pub const WRITE_ERROR: Sense = Sense::new(key::MEDIUM_ERROR, 0x0c, 0x00);
/// HARDWARE ERROR / INTERNAL TARGET FAILURE.
pub const INTERNAL_FAILURE: Sense = Sense::new(key::HARDWARE_ERROR, 0x44, 0x00);
/// ABORTED COMMAND / DATA PHASE ERROR (a Data-Out problem).
pub const DATA_PHASE_ERROR: Sense = Sense::new(key::ABORTED_COMMAND, 0x4b, 0x00);
/// MISCOMPARE / MISCOMPARE DURING VERIFY OPERATION.
pub const MISCOMPARE: Sense = Sense::new(key::MISCOMPARE, 0x1d, 0x00);
/// NOT READY / LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE: the
/// answer for a shared volume fenced by the data-plane lease. Linux fails the
/// command with a path error (BLK_STS_IOERR), so dm-multipath fails the path over;
/// multipathd's TUR checker keeps the path down while TEST UNIT READY gets it.
pub const PORT_UNAVAILABLE: Sense = Sense::new(key::NOT_READY, 0x04, 0x0c);
/// UNIT ATTENTION / POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
pub const RESET_OCCURRED: Sense = Sense::new(key::UNIT_ATTENTION, 0x29, 0x00);
/// UNIT ATTENTION / CAPACITY DATA HAS CHANGED: the LUN was resized (SBC-4; hosts
/// re-read the capacity).
pub const CAPACITY_CHANGED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2a, 0x09);
/// UNIT ATTENTION / REGISTRATIONS PREEMPTED: another I_T nexus's PREEMPT or
/// PREEMPT AND ABORT removed this nexus's registration (SPC-4 5.12.11.2.4).
pub const REGISTRATIONS_PREEMPTED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2a, 0x05);
/// UNIT ATTENTION / RESERVATIONS RELEASED: another I_T nexus released (RELEASE,
/// or unregistering as its holder) a registrants-only or all-registrants
/// reservation this nexus is registered under, or its PREEMPT changed the
/// reservation's type (SPC-4: releasing, unregistering, preempting).
pub const RESERVATIONS_RELEASED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2a, 0x04);
/// UNIT ATTENTION / RESERVATIONS PREEMPTED: another I_T nexus's CLEAR removed
/// every registration and the reservation (SPC-4: clearing).
pub const RESERVATIONS_PREEMPTED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2a, 0x03);
/// UNIT ATTENTION / COMMANDS CLEARED BY ANOTHER INITIATOR: another I_T nexus's
/// action (here a PREEMPT AND ABORT) aborted commands of this nexus, which got no
/// status (TAS=0; SAM-5 5.6).
pub const COMMANDS_CLEARED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2f, 0x00);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_layout() {
        let b = INVALID_FIELD_IN_CDB.to_fixed();
        assert_eq!(b[0], 0x70);
        assert_eq!(b[2], 5);
        assert_eq!(b[7], 10);
        assert_eq!((b[12], b[13]), (0x24, 0));
        let mut m = MISCOMPARE;
        m.info = Some(513);
        let b = m.to_fixed();
        assert_eq!(b[0], 0xf0);
        assert_eq!(&b[3..7], &[0, 0, 2, 1]);
    }
}
