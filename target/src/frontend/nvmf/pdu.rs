//! The NVMe/TCP PDU codec (NVMe/TCP transport specification, TP 8000): the
//! common header, per-type header lengths, PDU data offset, header and data
//! digests (CRC32C, little endian). Parsing borrows the receive buffer and never
//! allocates or panics on any input; encoding appends to a `Vec`.

/// Length of the common header (type, flags, HLEN, PDO, PLEN).
pub const CH_LEN: usize = 8;
/// Length of a submission queue entry.
pub const SQE_LEN: usize = 64;
/// Length of a completion queue entry.
pub const CQE_LEN: usize = 16;
/// Length of a digest.
pub const DIGEST_LEN: usize = 4;
/// HLEN (and PLEN) of ICReq and ICResp.
pub const IC_LEN: usize = 128;
/// HLEN of a CapsuleCmd.
pub const CMD_HLEN: usize = CH_LEN + SQE_LEN;
/// HLEN of a CapsuleResp.
pub const RESP_HLEN: usize = CH_LEN + CQE_LEN;
/// HLEN of H2CData, C2HData, R2T and the termination requests.
pub const DATA_HLEN: usize = 24;

/// PDU types.
pub mod ty {
    /// Initialize Connection Request (host to controller).
    pub const IC_REQ: u8 = 0x00;
    /// Initialize Connection Response.
    pub const IC_RESP: u8 = 0x01;
    /// Host to controller termination request.
    pub const H2C_TERM: u8 = 0x02;
    /// Controller to host termination request.
    pub const C2H_TERM: u8 = 0x03;
    /// A command capsule.
    pub const CAPSULE_CMD: u8 = 0x04;
    /// A response capsule.
    pub const CAPSULE_RESP: u8 = 0x05;
    /// Host to controller data.
    pub const H2C_DATA: u8 = 0x06;
    /// Controller to host data.
    pub const C2H_DATA: u8 = 0x07;
    /// Ready to transfer.
    pub const R2T: u8 = 0x09;
}

/// PDU header flags.
pub mod flag {
    /// A header digest follows the header.
    pub const HDGSTF: u8 = 0x01;
    /// A data digest follows the data.
    pub const DDGSTF: u8 = 0x02;
    /// Last data PDU of a transfer (H2CData, C2HData).
    pub const LAST_PDU: u8 = 0x04;
    /// C2HData: the command completed successfully, no response capsule follows.
    pub const SUCCESS: u8 = 0x08;
}

/// Fatal error status values of a termination request.
pub mod fes {
    /// Invalid PDU header field (FEI: its byte offset).
    pub const INVALID_HEADER_FIELD: u16 = 0x01;
    /// PDU sequence error.
    pub const SEQUENCE: u16 = 0x02;
    /// Header digest error.
    pub const HEADER_DIGEST: u16 = 0x03;
    /// Data transfer out of range.
    pub const DATA_OUT_OF_RANGE: u16 = 0x04;
    /// Data transfer limit exceeded.
    pub const DATA_LIMIT: u16 = 0x05;
    /// Unsupported parameter (FEI: its byte offset).
    pub const UNSUPPORTED_PARAMETER: u16 = 0x06;
}

/// Which digests a connection uses (negotiated by ICReq/ICResp).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digests {
    /// CRC32C of each header.
    pub header: bool,
    /// CRC32C of each data section.
    pub data: bool,
}

/// A complete PDU inside the receive buffer.
#[derive(Debug)]
pub struct PduView<'a> {
    /// PDU type ([`ty`]).
    pub ty: u8,
    /// Flags ([`flag`]).
    pub flags: u8,
    /// The header, common header included (HLEN bytes, digest excluded).
    pub hdr: &'a [u8],
    /// The data section (digest and padding excluded); empty when none.
    pub data: &'a [u8],
    /// Bytes the PDU occupies on the wire (PLEN).
    pub wire_len: usize,
    /// The data digest did not match (the PDU is otherwise well formed): the
    /// receiver decides (a command fails, a data transfer ends the connection).
    pub data_digest_bad: bool,
}

/// What [`parse`] found.
#[derive(Debug)]
pub enum Parsed<'a> {
    /// This many bytes in total are needed before the PDU can be parsed.
    Need(usize),
    /// A complete PDU.
    Pdu(PduView<'a>),
}

/// A PDU that ends the connection: the termination request to send says why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    /// Unknown or host-illegal PDU type.
    #[error("PDU type {0:#04x} is not one a host sends")]
    BadType(u8),
    /// HLEN does not match the type.
    #[error("PDU type {ty:#04x}: HLEN {hlen}, want {want}")]
    BadHlen {
        /// The type.
        ty: u8,
        /// HLEN given.
        hlen: u8,
        /// HLEN of the type.
        want: usize,
    },
    /// PLEN out of range.
    #[error("PDU type {ty:#04x}: PLEN {plen} (header {hlen}, largest accepted {max})")]
    BadPlen {
        /// The type.
        ty: u8,
        /// PLEN given.
        plen: u32,
        /// Header length with its digest.
        hlen: usize,
        /// Largest PLEN accepted.
        max: usize,
    },
    /// PDO out of range.
    #[error("PDU type {ty:#04x}: PDO {pdo} outside {min}..={plen}")]
    BadPdo {
        /// The type.
        ty: u8,
        /// PDO given.
        pdo: u8,
        /// Smallest PDO possible.
        min: usize,
        /// PLEN.
        plen: u32,
    },
    /// The digest flags differ from what was negotiated.
    #[error("PDU type {ty:#04x}: digest flags {flags:#04x} differ from the negotiated digests")]
    DigestFlags {
        /// The type.
        ty: u8,
        /// Flags given.
        flags: u8,
    },
    /// Header digest mismatch.
    #[error("header digest error (got {got:#010x}, want {want:#010x})")]
    HeaderDigest {
        /// Digest received.
        got: u32,
        /// Digest computed.
        want: u32,
    },
}

impl PduError {
    /// The fatal error status and field index of the termination request.
    pub fn fes_fei(&self) -> (u16, u32) {
        match self {
            PduError::BadType(_) => (fes::INVALID_HEADER_FIELD, 0),
            PduError::BadHlen { .. } => (fes::INVALID_HEADER_FIELD, 2),
            PduError::BadPlen { .. } => (fes::INVALID_HEADER_FIELD, 4),
            PduError::BadPdo { .. } => (fes::INVALID_HEADER_FIELD, 3),
            PduError::DigestFlags { .. } => (fes::INVALID_HEADER_FIELD, 1),
            PduError::HeaderDigest { .. } => (fes::HEADER_DIGEST, 0),
        }
    }
}

/// The header length of a PDU type a host may send, None for the others.
pub fn host_hlen(t: u8) -> Option<usize> {
    match t {
        ty::IC_REQ => Some(IC_LEN),
        ty::H2C_TERM => Some(DATA_HLEN),
        ty::CAPSULE_CMD => Some(CMD_HLEN),
        ty::H2C_DATA => Some(DATA_HLEN),
        _ => None,
    }
}

/// Little-endian field readers over a byte slice; out-of-range reads give 0.
pub fn le16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .unwrap_or(0)
}

/// See [`le16`].
pub fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .unwrap_or(0)
}

/// See [`le16`].
pub fn le64(b: &[u8], at: usize) -> u64 {
    (le32(b, at) as u64) | ((le32(b, at + 4) as u64) << 32)
}

/// The CRC32C digest of `data` as NVMe/TCP computes it.
pub fn digest(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// The header length of a PDU type a controller may send, None for the others.
pub fn ctrl_hlen(t: u8) -> Option<usize> {
    match t {
        ty::IC_RESP => Some(IC_LEN),
        ty::C2H_TERM => Some(DATA_HLEN),
        ty::CAPSULE_RESP => Some(RESP_HLEN),
        ty::C2H_DATA => Some(DATA_HLEN),
        ty::R2T => Some(DATA_HLEN),
        _ => None,
    }
}

/// Which end sent the PDUs being parsed: the types, header lengths and data
/// sections allowed differ, the layout does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sender {
    /// A host (what the target parses).
    Host,
    /// A controller (what plexperf's initiator parses).
    Ctrl,
}

/// Parses the PDU at the start of `buf` (a host's PDU). `max_data` bounds the
/// data section; `dig` are the digests in force (none before ICResp).
#[inline]
pub fn parse(buf: &[u8], dig: Digests, max_data: usize) -> Result<Parsed<'_>, PduError> {
    parse_from(Sender::Host, buf, dig, max_data)
}

/// Parses the PDU at the start of `buf` as a host reads a controller's PDUs
/// (ICResp, CapsuleResp, C2HData, R2T, C2HTermReq), with the same checks as
/// [`parse`]: `max_data` bounds the data section; `dig` are the digests in force.
pub fn parse_ctrl(buf: &[u8], dig: Digests, max_data: usize) -> Result<Parsed<'_>, PduError> {
    parse_from(Sender::Ctrl, buf, dig, max_data)
}

/// Checks a PDU's type, HLEN and digest flags against what `from` may send and
/// the digests in force; returns the header length and whether a header digest
/// follows it.
#[inline(always)]
fn check_header(
    from: Sender,
    t: u8,
    flags: u8,
    hlen_b: u8,
    dig: Digests,
) -> Result<(usize, bool), PduError> {
    let (hlen_of, ic_ty): (fn(u8) -> Option<usize>, u8) = match from {
        Sender::Host => (host_hlen, ty::IC_REQ),
        Sender::Ctrl => (ctrl_hlen, ty::IC_RESP),
    };
    let want = hlen_of(t).ok_or(PduError::BadType(t))?;
    if hlen_b as usize != want {
        return Err(PduError::BadHlen {
            ty: t,
            hlen: hlen_b,
            want,
        });
    }
    let ic = t == ic_ty;
    if !ic && (flags & flag::HDGSTF != 0) != dig.header {
        return Err(PduError::DigestFlags { ty: t, flags });
    }
    if !ic && !dig.data && flags & flag::DDGSTF != 0 {
        return Err(PduError::DigestFlags { ty: t, flags });
    }
    Ok((want, !ic && dig.header))
}

#[inline(always)]
fn parse_from(
    from: Sender,
    buf: &[u8],
    dig: Digests,
    max_data: usize,
) -> Result<Parsed<'_>, PduError> {
    if buf.len() < CH_LEN {
        return Ok(Parsed::Need(CH_LEN));
    }
    let t = buf[0];
    let flags = buf[1];
    let pdo = buf[3];
    let plen = le32(buf, 4);
    let term_ty = match from {
        Sender::Host => ty::H2C_TERM,
        Sender::Ctrl => ty::C2H_TERM,
    };
    let (want, hd) = check_header(from, t, flags, buf[2], dig)?;
    let head = want + if hd { DIGEST_LEN } else { 0 };
    let carries_data = match from {
        Sender::Host => matches!(t, ty::CAPSULE_CMD | ty::H2C_DATA | ty::H2C_TERM),
        Sender::Ctrl => matches!(t, ty::C2H_DATA | ty::C2H_TERM),
    };
    let max = if carries_data {
        head + 255 + max_data + DIGEST_LEN
    } else {
        head
    };
    if (plen as usize) < head || plen as usize > max {
        return Err(PduError::BadPlen {
            ty: t,
            plen,
            hlen: head,
            max,
        });
    }
    let plen_u = plen as usize;
    let has_data = plen_u > head;
    let ddgst = has_data && flags & flag::DDGSTF != 0;
    if has_data && dig.data && !ddgst && t != term_ty {
        return Err(PduError::DigestFlags { ty: t, flags });
    }
    let data_start = if has_data { pdo as usize } else { head };
    let data_end = plen_u - if ddgst { DIGEST_LEN } else { 0 };
    if has_data && (data_start < head || data_start > data_end) {
        return Err(PduError::BadPdo {
            ty: t,
            pdo,
            min: head,
            plen,
        });
    }
    if data_end - data_start > max_data {
        return Err(PduError::BadPlen {
            ty: t,
            plen,
            hlen: head,
            max: head + max_data,
        });
    }
    if buf.len() < plen_u {
        return Ok(Parsed::Need(plen_u));
    }
    if hd {
        let got = le32(buf, want);
        let w = digest(&buf[..want]);
        if got != w {
            return Err(PduError::HeaderDigest { got, want: w });
        }
    }
    let data = &buf[data_start..data_end];
    let data_digest_bad = ddgst && le32(buf, data_end) != digest(data);
    Ok(Parsed::Pdu(PduView {
        ty: t,
        flags,
        hdr: &buf[..want],
        data,
        wire_len: plen_u,
        data_digest_bad,
    }))
}

/// Appends a PDU's header (common header with `specific` after it, header
/// digest, padding up to the data offset) for a data section of `data_len`
/// bytes, which the caller appends next, followed by [`encode_tail`].
/// `hpda` is the host's data alignment (HPDA, in 4-byte units minus one).
pub fn encode_head(
    out: &mut Vec<u8>,
    t: u8,
    mut flags: u8,
    specific: &[u8],
    data_len: usize,
    dig: Digests,
    hpda: u8,
) {
    let hlen = CH_LEN + specific.len();
    let hd = dig.header && t != ty::IC_RESP;
    let dd = dig.data && data_len > 0;
    if hd {
        flags |= flag::HDGSTF;
    }
    if dd {
        flags |= flag::DDGSTF;
    }
    let mut head = hlen + if hd { DIGEST_LEN } else { 0 };
    let mut pdo = 0usize;
    if data_len > 0 {
        let align = (hpda as usize + 1) * 4;
        head = head.div_ceil(align) * align;
        pdo = head;
    }
    let plen = head + data_len + if dd { DIGEST_LEN } else { 0 };
    let start = out.len();
    out.push(t);
    out.push(flags);
    out.push(hlen as u8);
    out.push(pdo.min(255) as u8);
    out.extend_from_slice(&(plen as u32).to_le_bytes());
    out.extend_from_slice(specific);
    if hd {
        let d = digest(&out[start..start + hlen]);
        out.extend_from_slice(&d.to_le_bytes());
    }
    out.resize(start + head, 0);
}

/// Appends the data digest of `data` when data digests are on (after the data).
pub fn encode_tail(out: &mut Vec<u8>, data: &[u8], dig: Digests) {
    if dig.data && !data.is_empty() {
        out.extend_from_slice(&digest(data).to_le_bytes());
    }
}

/// Appends a whole PDU, copying its data.
pub fn encode(
    out: &mut Vec<u8>,
    t: u8,
    flags: u8,
    specific: &[u8],
    data: &[u8],
    dig: Digests,
    hpda: u8,
) {
    encode_head(out, t, flags, specific, data.len(), dig, hpda);
    out.extend_from_slice(data);
    encode_tail(out, data, dig);
}

/// The 120 header bytes after the common header of an ICResp.
pub fn ic_resp(dig: Digests, maxh2cdata: u32) -> [u8; IC_LEN - CH_LEN] {
    let mut s = [0u8; IC_LEN - CH_LEN];
    // PFV 0, CPDA 0 (no alignment asked of the host's data).
    s[3] = u8::from(dig.header) | (u8::from(dig.data) << 1);
    s[4..8].copy_from_slice(&maxh2cdata.to_le_bytes());
    s
}

/// What an ICReq asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcReq {
    /// PDU format version.
    pub pfv: u16,
    /// Host PDU data alignment (4-byte units minus one).
    pub hpda: u8,
    /// Digests the host wants.
    pub dig: Digests,
    /// Most outstanding R2Ts per command, minus one.
    pub maxr2t: u32,
}

/// Reads an ICReq header.
pub fn ic_req(hdr: &[u8]) -> IcReq {
    let d = hdr.get(11).copied().unwrap_or(0);
    IcReq {
        pfv: le16(hdr, 8),
        hpda: hdr.get(10).copied().unwrap_or(0),
        dig: Digests {
            header: d & 1 != 0,
            data: d & 2 != 0,
        },
        maxr2t: le32(hdr, 12),
    }
}

/// The 16 header bytes after the common header of C2HData / R2T / H2CData:
/// command id, transfer tag, offset, length.
pub fn data_hdr(cccid: u16, ttag: u16, off: u32, len: u32) -> [u8; DATA_HLEN - CH_LEN] {
    let mut s = [0u8; DATA_HLEN - CH_LEN];
    s[0..2].copy_from_slice(&cccid.to_le_bytes());
    s[2..4].copy_from_slice(&ttag.to_le_bytes());
    s[4..8].copy_from_slice(&off.to_le_bytes());
    s[8..12].copy_from_slice(&len.to_le_bytes());
    s
}

/// The header after the common header of a C2HTermReq.
pub fn term_hdr(fes: u16, fei: u32) -> [u8; DATA_HLEN - CH_LEN] {
    let mut s = [0u8; DATA_HLEN - CH_LEN];
    s[0..2].copy_from_slice(&fes.to_le_bytes());
    s[2..6].copy_from_slice(&fei.to_le_bytes());
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capsule(data: &[u8], dig: Digests) -> Vec<u8> {
        let mut v = Vec::new();
        // Host PDUs have the same layout as ours: reuse the encoder.
        encode(&mut v, ty::CAPSULE_CMD, 0, &[7u8; SQE_LEN], data, dig, 0);
        v
    }

    #[test]
    fn round_trip_with_and_without_digests() {
        for dig in [
            Digests::default(),
            Digests {
                header: true,
                data: true,
            },
        ] {
            let v = capsule(b"hello", dig);
            match parse(&v, dig, 8192).unwrap() {
                Parsed::Pdu(p) => {
                    assert_eq!(p.ty, ty::CAPSULE_CMD);
                    assert_eq!(p.data, b"hello");
                    assert_eq!(p.hdr.len(), CMD_HLEN);
                    assert_eq!(p.wire_len, v.len());
                    assert!(!p.data_digest_bad);
                }
                Parsed::Need(n) => panic!("need {n}"),
            }
            // Every prefix asks for more, never errs or panics.
            for k in 0..v.len() {
                assert!(matches!(parse(&v[..k], dig, 8192), Ok(Parsed::Need(_))));
            }
        }
    }

    #[test]
    fn digests_are_checked() {
        let dig = Digests {
            header: true,
            data: true,
        };
        let mut v = capsule(b"abcd", dig);
        let n = v.len();
        v[n - 1] ^= 1;
        match parse(&v, dig, 8192).unwrap() {
            Parsed::Pdu(p) => assert!(p.data_digest_bad),
            Parsed::Need(_) => panic!(),
        }
        let mut v = capsule(b"abcd", dig);
        v[10] ^= 1;
        assert!(matches!(
            parse(&v, dig, 8192),
            Err(PduError::HeaderDigest { .. })
        ));
        // Digest flags must match what was negotiated.
        let v = capsule(b"abcd", Digests::default());
        assert!(matches!(
            parse(&v, dig, 8192),
            Err(PduError::DigestFlags { .. })
        ));
    }

    #[test]
    fn bad_headers_are_errors() {
        let mut v = capsule(b"", Digests::default());
        v[0] = ty::C2H_DATA;
        assert!(matches!(
            parse(&v, Digests::default(), 64),
            Err(PduError::BadType(_))
        ));
        let mut v = capsule(b"", Digests::default());
        v[2] = 20;
        assert!(matches!(
            parse(&v, Digests::default(), 64),
            Err(PduError::BadHlen { .. })
        ));
        let v = capsule(&[0u8; 100], Digests::default());
        assert!(matches!(
            parse(&v, Digests::default(), 64),
            Err(PduError::BadPlen { .. })
        ));
        let mut v = capsule(b"abc", Digests::default());
        v[3] = 2;
        assert!(matches!(
            parse(&v, Digests::default(), 64),
            Err(PduError::BadPdo { .. })
        ));
    }

    #[test]
    fn controller_pdus_parse_on_the_host_side() {
        let dig = Digests {
            header: true,
            data: true,
        };
        let mut v = Vec::new();
        encode(
            &mut v,
            ty::C2H_DATA,
            flag::LAST_PDU,
            &data_hdr(3, 0, 0, 4),
            b"wxyz",
            dig,
            0,
        );
        encode(&mut v, ty::R2T, 0, &data_hdr(4, 1, 0, 8192), &[], dig, 0);
        encode(&mut v, ty::CAPSULE_RESP, 0, &[0u8; CQE_LEN], &[], dig, 0);
        let mut at = 0;
        for (t, data) in [
            (ty::C2H_DATA, &b"wxyz"[..]),
            (ty::R2T, b""),
            (ty::CAPSULE_RESP, b""),
        ] {
            match parse_ctrl(&v[at..], dig, 8192).unwrap() {
                Parsed::Pdu(p) => {
                    assert_eq!((p.ty, p.data), (t, data));
                    assert!(!p.data_digest_bad);
                    at += p.wire_len;
                }
                Parsed::Need(n) => panic!("need {n}"),
            }
        }
        assert_eq!(at, v.len());
        // A host's PDU is not a controller's, and the other way round.
        let c = capsule(b"", Digests::default());
        assert!(matches!(
            parse_ctrl(&c, Digests::default(), 64),
            Err(PduError::BadType(ty::CAPSULE_CMD))
        ));
        assert!(matches!(
            parse(&v, dig, 8192),
            Err(PduError::BadType(ty::C2H_DATA))
        ));
        // R2T carries no data: a PLEN past its header is refused.
        let mut r = Vec::new();
        encode(
            &mut r,
            ty::R2T,
            0,
            &data_hdr(4, 1, 0, 8),
            b"data",
            Digests::default(),
            0,
        );
        assert!(matches!(
            parse_ctrl(&r, Digests::default(), 64),
            Err(PduError::BadPlen { .. })
        ));
    }

    #[test]
    fn host_alignment_pads_the_data() {
        let mut v = Vec::new();
        encode(
            &mut v,
            ty::C2H_DATA,
            0,
            &data_hdr(1, 0, 0, 3),
            b"xyz",
            Digests::default(),
            7,
        );
        assert_eq!(v[3], 32);
        assert_eq!(&v[32..35], b"xyz");
        assert_eq!(le32(&v, 4) as usize, v.len());
    }
}
