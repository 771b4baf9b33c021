//! CHAP (RFC 1994) with MD5, as iSCSI uses it (RFC 7143 §12.1.3): one-way (the
//! target checks the initiator) and mutual (the initiator also checks the target).

/// CHAP_A value of MD5.
pub const CHAP_MD5: &str = "5";
/// Bytes of the challenge the target sends.
pub const CHALLENGE_BYTES: usize = 16;
/// Longest challenge or response accepted from an initiator, in bytes.
pub const MAX_BINARY_BYTES: usize = 1024;

/// MD5 (RFC 1321) of `parts` concatenated.
pub fn md5(parts: &[&[u8]]) -> [u8; 16] {
    use md5::{Digest, Md5};
    let mut h = Md5::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// The CHAP response: MD5(id || secret || challenge).
pub fn response(id: u8, secret: &[u8], challenge: &[u8]) -> [u8; 16] {
    md5(&[&[id], secret, challenge])
}

/// Encodes binary as `0x` + lowercase hex.
pub fn to_hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 + b.len() * 2);
    s.push_str("0x");
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Decodes a binary value in `0x` hex or `0b` base64 form (RFC 7143 §6.1), bounded.
pub fn from_binary(v: &str) -> Option<Vec<u8>> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        // Only hex digits: slicing below is then on character boundaries (the
        // fuzzer found a multi-byte character here).
        if h.len() > MAX_BINARY_BYTES * 2
            || h.is_empty()
            || !h.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return None;
        }
        let h = if h.len() % 2 == 1 {
            format!("0{h}")
        } else {
            h.to_string()
        };
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).ok())
            .collect()
    } else if let Some(b) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        if b.len() > MAX_BINARY_BYTES * 2 {
            return None;
        }
        base64_decode(b)
    } else {
        None
    }
}

/// Base64 (RFC 4648 standard alphabet) as initiators send it: padding optional,
/// non-zero trailing bits tolerated.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::alphabet::STANDARD;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine;
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    LENIENT.decode(s).ok()
}

/// Constant-time comparison of two digests.
pub fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_vectors() {
        assert_eq!(to_hex(&md5(&[b""])), "0xd41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(
            to_hex(&md5(&[b"abc"])),
            "0x900150983cd24fb0d6963f7d28e17f72"
        );
        assert_eq!(
            to_hex(&md5(&[
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890"
            ])),
            "0x57edf4a22be3c955ac49da2e2107b67a"
        );
    }

    #[test]
    fn binary_values() {
        assert_eq!(from_binary("0x0102ff").unwrap(), vec![1, 2, 255]);
        assert_eq!(from_binary("0xf").unwrap(), vec![15]);
        assert_eq!(from_binary("0bAQL/").unwrap(), vec![1, 2, 255]);
        assert!(from_binary("0xzz").is_none());
        assert!(from_binary("12").is_none());
        assert!(from_binary("0x").is_none());
        // Found by fuzzing: a multi-byte character inside a hex value.
        assert!(from_binary("0x0011\u{1db}ab").is_none());
    }

    #[test]
    fn response_matches_definition() {
        let r = response(1, b"secret", &[9; 16]);
        assert_eq!(r, md5(&[&[1], b"secret", &[9; 16]]));
        assert!(same(&r, &r));
        assert!(!same(&r, &[0; 16]));
    }
}
