//! Sizes as people type and read them: `"10G"`, `"512M"`, `"64K"`, `"1T"`, `"4096"`.
//!
//! Suffixes are binary (K = 1024 bytes) and case-insensitive; `KiB`/`KB`/`k` all mean
//! the same. A decimal fraction is accepted when the result is a whole number of bytes
//! (`"1.5G"`), and `s` means 512-byte sectors (`"2048s"` = 1 MiB).

// The crate allows every clippy lint for the generated schema code; this module is
// hand-written and held to the workspace's lints.
#![warn(clippy::all)]

use thiserror::Error;

/// Bytes in a sector: the unit of `s` sizes and the alignment of every on-disk extent.
pub const SECTOR_BYTES: u64 = 512;

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SizeError {
    /// Nothing to parse.
    #[error("empty size (expected a number with an optional K/M/G/T suffix, e.g. 10G)")]
    Empty,
    /// Not a number followed by a known suffix.
    #[error("invalid size {input:?}: {reason} (examples: 4096, 64K, 512M, 10G, 1T)")]
    Invalid {
        /// The text given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The value does not fit in 64 bits of bytes.
    #[error("size {input:?} is too large")]
    Overflow {
        /// The text given.
        input: String,
    },
}

/// Parses a size into bytes. See the module documentation for the accepted forms.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let text = input.trim();
    if text.is_empty() {
        return Err(SizeError::Empty);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let invalid = |reason: &str| SizeError::Invalid {
        input: input.to_string(),
        reason: reason.to_string(),
    };
    if number.is_empty() {
        return Err(invalid("no number before the suffix"));
    }
    let multiplier = suffix_multiplier(suffix.trim())
        .ok_or_else(|| invalid("unknown suffix (use K, M, G, T, P, s for sectors, or none)"))?;
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    if fraction.contains('.') || (whole.is_empty() && fraction.is_empty()) {
        return Err(invalid("malformed number"));
    }
    let overflow = || SizeError::Overflow {
        input: input.to_string(),
    };
    let whole_value: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| overflow())?
    };
    if fraction.len() > 18 {
        return Err(invalid("too many decimal places"));
    }
    let fraction_value: u128 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| invalid("malformed number"))?
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let total_scaled = whole_value
        .checked_mul(scale)
        .and_then(|v| v.checked_add(fraction_value))
        .and_then(|v| v.checked_mul(u128::from(multiplier)))
        .ok_or_else(overflow)?;
    if total_scaled % scale != 0 {
        return Err(invalid("not a whole number of bytes"));
    }
    u64::try_from(total_scaled / scale).map_err(|_| overflow())
}

fn suffix_multiplier(suffix: &str) -> Option<u64> {
    let lower = suffix.to_ascii_lowercase();
    let unit = lower
        .strip_suffix("ib")
        .or_else(|| lower.strip_suffix('b').filter(|u| !u.is_empty()))
        .unwrap_or(&lower);
    match unit {
        "" | "b" => Some(1),
        "s" => Some(SECTOR_BYTES),
        "k" => Some(1 << 10),
        "m" => Some(1 << 20),
        "g" => Some(1 << 30),
        "t" => Some(1 << 40),
        "p" => Some(1 << 50),
        _ => None,
    }
}

/// Formats a byte count for people: `"512 B"`, `"64.0 KiB"`, `"10.0 GiB"`, `"1.5 TiB"`.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Formats a byte count compactly for table columns: `"512"`, `"64K"`, `"3M"`,
/// `"1.5G"` (exact when the size is a whole number of the unit, else one decimal).
pub fn format_size_short(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("T", 1 << 40),
        ("G", 1 << 30),
        ("M", 1 << 20),
        ("K", 1 << 10),
    ];
    for (unit, scale) in UNITS {
        if bytes >= scale {
            return if bytes.is_multiple_of(scale) {
                format!("{}{unit}", bytes / scale)
            } else {
                format!("{:.1}{unit}", bytes as f64 / scale as f64)
            };
        }
    }
    format!("{bytes}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_format_is_exact_for_whole_units() {
        assert_eq!(format_size_short(512), "512");
        assert_eq!(format_size_short(3 << 20), "3M");
        assert_eq!(format_size_short(3 << 29), "1.5G");
        assert_eq!(format_size_short(64 << 10), "64K");
    }

    #[test]
    fn parses_suffixes_as_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("10GiB"), Ok(10 << 30));
        assert_eq!(parse_size("10gb"), Ok(10 << 30));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size(" 1.5G "), Ok(3 << 29));
        assert_eq!(parse_size("2048s"), Ok(1 << 20));
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size("0"), Ok(0));
    }

    #[test]
    fn refuses_malformed_sizes_with_a_reason() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        for bad in ["G", "10X", "1.2.3G", "-5G", "0.5", "10 GG", "."] {
            let err = parse_size(bad).unwrap_err();
            assert!(matches!(err, SizeError::Invalid { .. }), "{bad}: {err}");
            assert!(err.to_string().contains(bad.trim()), "{err}");
        }
        assert!(matches!(
            parse_size("99999999999999999999999T"),
            Err(SizeError::Overflow { .. })
        ));
        assert!(matches!(
            parse_size("16384P"),
            Err(SizeError::Overflow { .. })
        ));
    }

    #[test]
    fn formats_sizes_for_people() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(512), "512 B");
        assert_eq!(format_size(64 << 10), "64.0 KiB");
        assert_eq!(format_size(10 << 30), "10.0 GiB");
        assert_eq!(format_size(3 << 29), "1.5 GiB");
        assert_eq!(format_size(1 << 40), "1.0 TiB");
    }
}
