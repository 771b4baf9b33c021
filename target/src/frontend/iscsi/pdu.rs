//! The iSCSI PDU codec (RFC 7143 §11): the 48-byte basic header segment, additional
//! header segments, header and data digests (CRC32C) and padding.
//!
//! Parsing works on borrowed bytes and allocates nothing: [`parse`] looks at the
//! start of a receive buffer and either returns a complete [`PduView`] borrowing
//! it, says how many more bytes are needed, or rejects the PDU. Every length is
//! checked against a limit before any byte is trusted, so no input can panic or
//! make the caller allocate more than its receive buffer.

// A relative path (not `crate::`), so the fuzz crate can compile this file too.
pub use super::super::scsi::bytes::{be16, be32, be64, put16, put32, put64};

/// Length of the basic header segment.
pub const BHS_LEN: usize = 48;
/// Largest AHS: TotalAHSLength is one byte counting 4-byte words.
pub const MAX_AHS_BYTES: usize = 255 * 4;
/// Length of a digest.
pub const DIGEST_LEN: usize = 4;
/// A reserved (unused) initiator or target task tag.
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// Opcodes (byte 0, low six bits).
pub mod op {
    /// NOP-Out (initiator).
    pub const NOP_OUT: u8 = 0x00;
    /// SCSI Command.
    pub const SCSI_CMD: u8 = 0x01;
    /// Task Management Function Request.
    pub const TMF_REQ: u8 = 0x02;
    /// Login Request.
    pub const LOGIN_REQ: u8 = 0x03;
    /// Text Request.
    pub const TEXT_REQ: u8 = 0x04;
    /// SCSI Data-Out.
    pub const DATA_OUT: u8 = 0x05;
    /// Logout Request.
    pub const LOGOUT_REQ: u8 = 0x06;
    /// SNACK Request.
    pub const SNACK: u8 = 0x10;
    /// NOP-In (target).
    pub const NOP_IN: u8 = 0x20;
    /// SCSI Response.
    pub const SCSI_RESP: u8 = 0x21;
    /// Task Management Function Response.
    pub const TMF_RESP: u8 = 0x22;
    /// Login Response.
    pub const LOGIN_RESP: u8 = 0x23;
    /// Text Response.
    pub const TEXT_RESP: u8 = 0x24;
    /// SCSI Data-In.
    pub const DATA_IN: u8 = 0x25;
    /// Logout Response.
    pub const LOGOUT_RESP: u8 = 0x26;
    /// Ready To Transfer.
    pub const R2T: u8 = 0x31;
    /// Asynchronous Message.
    pub const ASYNC: u8 = 0x32;
    /// Reject.
    pub const REJECT: u8 = 0x3f;
}

/// Reject reasons (RFC 7143 §11.17.1).
pub mod reject {
    /// Data (payload) digest error.
    pub const DATA_DIGEST: u8 = 0x02;
    /// SNACK reject.
    pub const SNACK: u8 = 0x03;
    /// Protocol error.
    pub const PROTOCOL: u8 = 0x04;
    /// Command not supported.
    pub const NOT_SUPPORTED: u8 = 0x05;
    /// Immediate command rejected: too many immediate commands.
    pub const IMMEDIATE: u8 = 0x06;
    /// Invalid PDU field.
    pub const INVALID_FIELD: u8 = 0x09;
    /// Long op reject: out of resources.
    pub const OUT_OF_RESOURCES: u8 = 0x0a;
    /// Waiting for logout.
    pub const WAITING_LOGOUT: u8 = 0x0c;
}

/// Why bytes are not a PDU this connection accepts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    /// The data segment is larger than this side declared it can receive.
    #[error("data segment of {len} bytes exceeds MaxRecvDataSegmentLength {max}")]
    Oversize {
        /// DataSegmentLength of the PDU.
        len: usize,
        /// The negotiated limit.
        max: usize,
    },
    /// The header digest does not match.
    #[error("header digest mismatch (got {got:#010x}, computed {want:#010x})")]
    HeaderDigest {
        /// Digest in the PDU.
        got: u32,
        /// Digest computed over the header.
        want: u32,
    },
    /// The data digest does not match; the header is intact.
    #[error("data digest mismatch (got {got:#010x}, computed {want:#010x})")]
    DataDigest {
        /// Digest in the PDU.
        got: u32,
        /// Digest computed over the data.
        want: u32,
    },
}

/// Which digests are in use on a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    /// CRC32C after the header.
    pub header: bool,
    /// CRC32C after the data segment.
    pub data: bool,
}

/// A complete PDU borrowed from a receive buffer.
#[derive(Debug, Clone, Copy)]
pub struct PduView<'a> {
    /// The basic header segment.
    pub bhs: &'a [u8; BHS_LEN],
    /// Additional header segments (may be empty).
    pub ahs: &'a [u8],
    /// The data segment without padding.
    pub data: &'a [u8],
    /// Bytes of the buffer this PDU occupies (with digests and padding).
    pub wire_len: usize,
}

/// Outcome of looking at the start of a receive buffer.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// A whole PDU.
    Pdu(PduView<'a>),
    /// At least this many bytes in total are needed before the PDU is complete.
    Need(usize),
}

/// Rounds a data segment length up to a 4-byte boundary.
pub fn padded(len: usize) -> usize {
    (len + 3) & !3
}

/// CRC32C as iSCSI uses it (the digest goes on the wire little-endian).
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Total wire length of a PDU whose header is `bhs`, or an error when its data
/// segment exceeds `max_data`. Needs only the 48 header bytes.
pub fn wire_len(bhs: &[u8; BHS_LEN], dig: Digests, max_data: usize) -> Result<usize, PduError> {
    let ahs = bhs[4] as usize * 4;
    let data = data_segment_len(bhs);
    if data > max_data {
        return Err(PduError::Oversize {
            len: data,
            max: max_data,
        });
    }
    let mut n = BHS_LEN + ahs;
    if dig.header {
        n += DIGEST_LEN;
    }
    if data > 0 {
        n += padded(data);
        if dig.data {
            n += DIGEST_LEN;
        }
    }
    Ok(n)
}

/// Parses the PDU at the start of `buf`. `max_data` is the MaxRecvDataSegmentLength
/// this side declared; the caller's buffer must hold [`max_wire_len`] bytes.
pub fn parse(buf: &[u8], dig: Digests, max_data: usize) -> Result<Parsed<'_>, PduError> {
    let Some(bhs) = buf.get(..BHS_LEN) else {
        return Ok(Parsed::Need(BHS_LEN));
    };
    let bhs: &[u8; BHS_LEN] = bhs.try_into().expect("slice of BHS_LEN bytes");
    let total = wire_len(bhs, dig, max_data)?;
    if buf.len() < total {
        return Ok(Parsed::Need(total));
    }
    let ahs_len = bhs[4] as usize * 4;
    let mut pos = BHS_LEN + ahs_len;
    let ahs = &buf[BHS_LEN..pos];
    if dig.header {
        let got = u32::from_le_bytes(buf[pos..pos + 4].try_into().expect("4 bytes"));
        let want = crc32c(&buf[..pos]);
        if got != want {
            return Err(PduError::HeaderDigest { got, want });
        }
        pos += DIGEST_LEN;
    }
    let dlen = data_segment_len(bhs);
    let data = &buf[pos..pos + dlen];
    if dlen > 0 && dig.data {
        let end = pos + padded(dlen);
        let got = u32::from_le_bytes(buf[end..end + 4].try_into().expect("4 bytes"));
        let want = crc32c(&buf[pos..end]);
        if got != want {
            return Err(PduError::DataDigest { got, want });
        }
    }
    Ok(Parsed::Pdu(PduView {
        bhs,
        ahs,
        data,
        wire_len: total,
    }))
}

/// Largest wire length of a PDU with at most `max_data` bytes of data.
pub fn max_wire_len(max_data: usize) -> usize {
    BHS_LEN + MAX_AHS_BYTES + DIGEST_LEN + padded(max_data) + DIGEST_LEN
}

/// DataSegmentLength (bytes 5..8).
pub fn data_segment_len(bhs: &[u8; BHS_LEN]) -> usize {
    (bhs[5] as usize) << 16 | (bhs[6] as usize) << 8 | bhs[7] as usize
}

/// The opcode of a header.
pub fn opcode(bhs: &[u8; BHS_LEN]) -> u8 {
    bhs[0] & 0x3f
}

/// The immediate-delivery bit of a request.
pub fn immediate(bhs: &[u8; BHS_LEN]) -> bool {
    bhs[0] & 0x40 != 0
}

/// The final bit (byte 1, top bit).
pub fn final_bit(bhs: &[u8; BHS_LEN]) -> bool {
    bhs[1] & 0x80 != 0
}

/// Fields common to requests (initiator → target).
pub mod field {
    use super::*;
    /// LUN field (bytes 8..16).
    pub fn lun(bhs: &[u8; BHS_LEN]) -> u64 {
        be64(bhs, 8)
    }
    /// Initiator task tag (bytes 16..20).
    pub fn itt(bhs: &[u8; BHS_LEN]) -> u32 {
        be32(bhs, 16)
    }
    /// Target transfer tag or ExpectedDataTransferLength (bytes 20..24).
    pub fn w20(bhs: &[u8; BHS_LEN]) -> u32 {
        be32(bhs, 20)
    }
    /// CmdSN (bytes 24..28).
    pub fn cmdsn(bhs: &[u8; BHS_LEN]) -> u32 {
        be32(bhs, 24)
    }
    /// ExpStatSN (bytes 28..32).
    pub fn exp_statsn(bhs: &[u8; BHS_LEN]) -> u32 {
        be32(bhs, 28)
    }
}

/// Builder of an outgoing header.
#[derive(Clone, Copy)]
pub struct Bhs(pub [u8; BHS_LEN]);

impl Bhs {
    /// A zeroed header with `opcode` and byte-1 flags.
    pub fn new(opcode: u8, flags: u8) -> Bhs {
        let mut b = [0u8; BHS_LEN];
        b[0] = opcode & 0x3f;
        b[1] = flags;
        Bhs(b)
    }
    /// Sets DataSegmentLength.
    pub fn data_len(&mut self, len: usize) -> &mut Self {
        debug_assert!(len < 1 << 24);
        self.0[5] = (len >> 16) as u8;
        self.0[6] = (len >> 8) as u8;
        self.0[7] = len as u8;
        self
    }
    /// Sets a big-endian u32 at `off`.
    pub fn u32_at(&mut self, off: usize, v: u32) -> &mut Self {
        put32(&mut self.0, off, v);
        self
    }
    /// Sets bytes 8..16 (LUN or ISID+TSIH).
    pub fn u64_at(&mut self, off: usize, v: u64) -> &mut Self {
        put64(&mut self.0, off, v);
        self
    }
    /// Sets one byte.
    pub fn byte(&mut self, off: usize, v: u8) -> &mut Self {
        self.0[off] = v;
        self
    }
}

/// Appends a whole PDU (header, digests, data, padding) to `out`.
pub fn encode(out: &mut Vec<u8>, bhs: &Bhs, data: &[u8], dig: Digests) {
    encode_head(out, bhs, data.len(), dig);
    out.extend_from_slice(data);
    encode_tail(out, data, dig);
}

/// Appends the part of a PDU before its data segment (the header with
/// DataSegmentLength = `data_len`, and the header digest), for a PDU whose data is
/// sent from elsewhere (a vectored write) and followed by [`encode_tail`].
pub fn encode_head(out: &mut Vec<u8>, bhs: &Bhs, data_len: usize, dig: Digests) {
    let mut h = *bhs;
    h.data_len(data_len);
    out.extend_from_slice(&h.0);
    if dig.header {
        out.extend_from_slice(&crc32c(&h.0).to_le_bytes());
    }
}

/// Appends the part of a PDU after its data segment `data`: padding to 4 bytes and
/// the data digest (over data and padding). Nothing for an empty segment.
pub fn encode_tail(out: &mut Vec<u8>, data: &[u8], dig: Digests) {
    if data.is_empty() {
        return;
    }
    let pad = &[0u8; 3][..padded(data.len()) - data.len()];
    out.extend_from_slice(pad);
    if dig.data {
        let c = crc32c::crc32c_append(crc32c(data), pad);
        out.extend_from_slice(&c.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nop_out(data: &[u8]) -> Vec<u8> {
        let mut b = Bhs::new(op::NOP_OUT, 0x80);
        b.byte(0, 0x40).u32_at(16, 7).u32_at(20, RESERVED_TAG);
        let mut v = Vec::new();
        encode(&mut v, &b, data, Digests::default());
        v
    }

    #[test]
    fn round_trip_with_padding() {
        let v = nop_out(b"hello");
        assert_eq!(v.len(), 48 + 8);
        assert_eq!(&v[5..8], &[0, 0, 5]);
        match parse(&v, Digests::default(), 8192).unwrap() {
            Parsed::Pdu(p) => {
                assert_eq!(p.data, b"hello");
                assert_eq!(p.wire_len, 56);
                assert_eq!(opcode(p.bhs), op::NOP_OUT);
                assert!(immediate(p.bhs));
                assert_eq!(field::itt(p.bhs), 7);
            }
            Parsed::Need(_) => panic!("complete pdu"),
        }
    }

    #[test]
    fn partial_input_asks_for_more() {
        let v = nop_out(b"hello");
        for cut in 0..v.len() {
            match parse(&v[..cut], Digests::default(), 8192).unwrap() {
                Parsed::Need(n) => assert!(n > cut),
                Parsed::Pdu(_) => panic!("incomplete at {cut}"),
            }
        }
    }

    #[test]
    fn oversize_segment_is_refused_from_the_header_alone() {
        let mut v = nop_out(b"");
        v[5] = 0xff;
        assert!(matches!(
            parse(&v[..48], Digests::default(), 8192),
            Err(PduError::Oversize { len: 0xff0000, .. })
        ));
    }

    #[test]
    fn digests_are_checked() {
        let dig = Digests {
            header: true,
            data: true,
        };
        let mut b = Bhs::new(op::NOP_OUT, 0x80);
        b.u32_at(16, 1);
        let mut v = Vec::new();
        encode(&mut v, &b, b"abc", dig);
        assert_eq!(v.len(), 48 + 4 + 4 + 4);
        assert!(matches!(parse(&v, dig, 8192), Ok(Parsed::Pdu(_))));
        let mut bad = v.clone();
        bad[20] ^= 1;
        assert!(matches!(
            parse(&bad, dig, 8192),
            Err(PduError::HeaderDigest { .. })
        ));
        let mut bad = v.clone();
        bad[53] ^= 1;
        assert!(matches!(
            parse(&bad, dig, 8192),
            Err(PduError::DataDigest { .. })
        ));
    }

    #[test]
    fn split_encoding_matches_whole() {
        for dig in [
            Digests::default(),
            Digests {
                header: true,
                data: true,
            },
        ] {
            for len in [0usize, 1, 3, 4, 5, 511, 4096] {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
                let b = Bhs::new(op::DATA_IN, 0x81);
                let mut whole = Vec::new();
                encode(&mut whole, &b, &data, dig);
                let mut split = Vec::new();
                encode_head(&mut split, &b, data.len(), dig);
                split.extend_from_slice(&data);
                encode_tail(&mut split, &data, dig);
                assert_eq!(whole, split, "len {len} {dig:?}");
                match parse(&whole, dig, 8192).unwrap() {
                    Parsed::Pdu(p) => assert_eq!(p.data, &data[..]),
                    Parsed::Need(_) => panic!("complete pdu"),
                }
            }
        }
    }

    #[test]
    fn known_crc32c_vector() {
        // RFC 3720 B.4: 32 bytes of zeroes.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(crc32c(&[0xffu8; 32]), 0x62a8_ab43);
    }

    #[test]
    fn ahs_counts_in_words() {
        let mut v = nop_out(b"");
        v[4] = 2;
        v.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        match parse(&v, Digests::default(), 0).unwrap() {
            Parsed::Pdu(p) => assert_eq!(p.ahs.len(), 8),
            Parsed::Need(_) => panic!(),
        }
    }
}
