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
    const S: [u32; 64] = [
        7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 7, 12, 17, 22, 5, 9, 14, 20, 5, 9, 14, 20, 5,
        9, 14, 20, 5, 9, 14, 20, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 4, 11, 16, 23, 6, 10,
        15, 21, 6, 10, 15, 21, 6, 10, 15, 21, 6, 10, 15, 21,
    ];
    let k: [u32; 64] =
        std::array::from_fn(|i| ((i as f64 + 1.0).sin().abs() * 4_294_967_296.0) as u32);
    let mut msg: Vec<u8> = parts.concat();
    let bit_len = (msg.len() as u64).wrapping_mul(8);
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&bit_len.to_le_bytes());
    let mut h: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];
    for block in msg.chunks_exact(64) {
        let m: [u32; 16] = std::array::from_fn(|i| {
            u32::from_le_bytes(block[i * 4..i * 4 + 4].try_into().expect("4 bytes"))
        });
        let [mut a, mut b, mut c, mut d] = h;
        for i in 0..64 {
            let (f, g) = match i / 16 {
                0 => ((b & c) | (!b & d), i),
                1 => ((d & b) | (!d & c), (5 * i + 1) % 16),
                2 => (b ^ c ^ d, (3 * i + 5) % 16),
                _ => (c ^ (b | !d), (7 * i) % 16),
            };
            let t = d;
            d = c;
            c = b;
            b = b.wrapping_add(
                a.wrapping_add(f)
                    .wrapping_add(k[i])
                    .wrapping_add(m[g])
                    .rotate_left(S[i]),
            );
            a = t;
        }
        h[0] = h[0].wrapping_add(a);
        h[1] = h[1].wrapping_add(b);
        h[2] = h[2].wrapping_add(c);
        h[3] = h[3].wrapping_add(d);
    }
    let mut out = [0u8; 16];
    for (i, w) in h.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
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

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for &c in s {
        acc = (acc << 6) | val(c)?;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
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
