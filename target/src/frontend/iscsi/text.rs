//! Text keys (RFC 7143 §6, §13): `key=value` pairs separated by NUL bytes, and the
//! negotiation rule of every operational key a target answers.

use std::fmt::Write as _;

/// Longest key name (RFC 7143 §6.1: 63 bytes).
pub const MAX_KEY_BYTES: usize = 63;
/// Longest value accepted (CHAP challenges and responses are the long ones).
pub const MAX_VALUE_BYTES: usize = 8192;
/// Most pairs in one text or login exchange.
pub const MAX_PAIRS: usize = 256;

/// Why text is not a list of keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// A pair without `=`.
    #[error("key without '=': {0:?}")]
    NoEquals(String),
    /// An over-long or empty key, or a key with characters outside the allowed set.
    #[error("bad key {0:?}")]
    BadKey(String),
    /// An over-long value or one that is not UTF-8.
    #[error("bad value for key {0}")]
    BadValue(String),
    /// Too many pairs.
    #[error("more than {MAX_PAIRS} keys")]
    TooMany,
    /// The same key twice in one exchange.
    #[error("key {0} given twice")]
    Duplicate(String),
}

/// Parses NUL-separated `key=value` pairs. Trailing NULs and empty items are ignored.
pub fn parse(data: &[u8]) -> Result<Vec<(String, String)>, TextError> {
    let mut out: Vec<(String, String)> = Vec::new();
    for item in data.split(|&b| b == 0) {
        if item.is_empty() {
            continue;
        }
        if out.len() >= MAX_PAIRS {
            return Err(TextError::TooMany);
        }
        let Some(eq) = item.iter().position(|&b| b == b'=') else {
            return Err(TextError::NoEquals(lossy(item, 64)));
        };
        let (k, v) = (&item[..eq], &item[eq + 1..]);
        if k.is_empty()
            || k.len() > MAX_KEY_BYTES
            || !k
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || b".-+@_".contains(c))
        {
            return Err(TextError::BadKey(lossy(k, 64)));
        }
        let k = String::from_utf8_lossy(k).into_owned();
        if v.len() > MAX_VALUE_BYTES {
            return Err(TextError::BadValue(k));
        }
        let Ok(v) = std::str::from_utf8(v) else {
            return Err(TextError::BadValue(k));
        };
        if out.iter().any(|(ok, _)| *ok == k) {
            return Err(TextError::Duplicate(k));
        }
        out.push((k, v.to_string()));
    }
    Ok(out)
}

fn lossy(b: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&b[..b.len().min(max)]).into_owned()
}

/// Serializes pairs as `key=value\0...`.
pub fn serialize(pairs: &[(String, String)]) -> Vec<u8> {
    let mut s = String::new();
    for (k, v) in pairs {
        let _ = write!(s, "{k}={v}\0");
    }
    s.into_bytes()
}

/// A numerical value (decimal or 0x-hex), as RFC 7143 §6.1 allows.
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()
    } else {
        v.parse().ok()
    }
}

/// A boolean value.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

fn yes_no(b: bool) -> String {
    if b { "Yes" } else { "No" }.to_string()
}

/// Operational parameters of a session and connection, negotiated at login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Params {
    /// CRC32C header digests.
    pub header_digest: bool,
    /// CRC32C data digests.
    pub data_digest: bool,
    /// Largest data segment the initiator accepts (what the target may send).
    pub initiator_mrdsl: u32,
    /// Largest data segment the target accepts (declared by the target).
    pub target_mrdsl: u32,
    /// MaxBurstLength.
    pub max_burst: u32,
    /// FirstBurstLength.
    pub first_burst: u32,
    /// ImmediateData.
    pub immediate_data: bool,
    /// InitialR2T.
    pub initial_r2t: bool,
    /// MaxOutstandingR2T.
    pub max_outstanding_r2t: u32,
    /// DefaultTime2Wait.
    pub time2wait: u32,
    /// DefaultTime2Retain.
    pub time2retain: u32,
    /// MaxConnections.
    pub max_connections: u32,
    /// ErrorRecoveryLevel (always 0 here).
    pub error_recovery_level: u32,
    /// DataPDUInOrder.
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder.
    pub data_sequence_in_order: bool,
}

/// What the target offers when the initiator asks; also the RFC defaults where the
/// initiator does not ask.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Target's MaxRecvDataSegmentLength.
    pub target_mrdsl: u32,
    /// Largest MaxBurstLength accepted.
    pub max_burst: u32,
    /// Largest FirstBurstLength accepted.
    pub first_burst: u32,
    /// Whether the target accepts immediate data.
    pub immediate_data: bool,
    /// Whether the target wants InitialR2T.
    pub initial_r2t: bool,
    /// Most connections per session.
    pub max_connections: u32,
    /// Most outstanding R2Ts per task.
    pub max_outstanding_r2t: u32,
}

impl Params {
    /// RFC 7143 defaults (before negotiation), with the target's declared MRDSL.
    pub fn defaults(lim: &Limits) -> Params {
        Params {
            header_digest: false,
            data_digest: false,
            initiator_mrdsl: 8192,
            target_mrdsl: lim.target_mrdsl,
            max_burst: 262_144.min(lim.max_burst),
            first_burst: 65_536.min(lim.first_burst),
            immediate_data: lim.immediate_data,
            initial_r2t: true,
            max_outstanding_r2t: 1,
            time2wait: 2,
            time2retain: 20,
            max_connections: 1,
            error_recovery_level: 0,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
        }
    }
}

/// The answer to one operational key, or None when the key is not operational
/// (the login layer answers those). A value out of its range is answered
/// "Reject".
pub fn negotiate(key: &str, val: &str, p: &mut Params, lim: &Limits) -> Option<String> {
    let ans = match key {
        "HeaderDigest" | "DataDigest" => negotiate_digest(key, val, p),
        "MaxRecvDataSegmentLength"
        | "MaxBurstLength"
        | "FirstBurstLength"
        | "MaxOutstandingR2T"
        | "DefaultTime2Wait"
        | "DefaultTime2Retain"
        | "MaxConnections"
        | "ErrorRecoveryLevel" => negotiate_number(key, val, p, lim),
        "ImmediateData"
        | "InitialR2T"
        | "DataPDUInOrder"
        | "DataSequenceInOrder"
        | "IFMarker"
        | "OFMarker" => negotiate_bool(key, val, p, lim),
        "OFMarkInt" | "IFMarkInt" => Some("Irrelevant".into()),
        _ => return None,
    };
    Some(ans.unwrap_or_else(|| "Reject".to_string()))
}

/// HeaderDigest, DataDigest: the first of the offered list this target takes.
fn negotiate_digest(key: &str, val: &str, p: &mut Params) -> Option<String> {
    let c = val.split(',').find(|c| *c == "CRC32C" || *c == "None")?;
    let on = c == "CRC32C";
    if key == "HeaderDigest" {
        p.header_digest = on;
    } else {
        p.data_digest = on;
    }
    Some(c.to_string())
}

/// The numeric keys: the offer within the key's range, then the smaller (or
/// for DefaultTime2Wait the larger) of it and this target's value.
fn negotiate_number(key: &str, val: &str, p: &mut Params, lim: &Limits) -> Option<String> {
    let (lo, hi) = match key {
        "MaxRecvDataSegmentLength" | "MaxBurstLength" | "FirstBurstLength" => (512, (1 << 24) - 1),
        "MaxOutstandingR2T" | "MaxConnections" => (1, 65535),
        "DefaultTime2Wait" | "DefaultTime2Retain" => (0, 3600),
        _ => (0, 2), // ErrorRecoveryLevel
    };
    let n = parse_number(val).filter(|n| (lo..=hi).contains(n))? as u32;
    let ans = match key {
        "MaxRecvDataSegmentLength" => {
            p.initiator_mrdsl = n;
            // Declarative: the answer is the target's own value.
            lim.target_mrdsl
        }
        "MaxBurstLength" => {
            p.max_burst = n.min(lim.max_burst);
            // FirstBurstLength never exceeds MaxBurstLength (RFC 7143 §13.14);
            // an answer already in this exchange is fixed by `clamp_first_burst`.
            p.first_burst = p.first_burst.min(p.max_burst);
            p.max_burst
        }
        "FirstBurstLength" => {
            p.first_burst = n.min(lim.first_burst).min(p.max_burst);
            p.first_burst
        }
        "MaxOutstandingR2T" => {
            p.max_outstanding_r2t = n.min(lim.max_outstanding_r2t);
            p.max_outstanding_r2t
        }
        "DefaultTime2Wait" => {
            p.time2wait = n.max(2);
            p.time2wait
        }
        "DefaultTime2Retain" => {
            p.time2retain = n.min(20);
            p.time2retain
        }
        "MaxConnections" => {
            p.max_connections = n.min(lim.max_connections);
            p.max_connections
        }
        _ => {
            // ErrorRecoveryLevel: this target runs level 0 only.
            p.error_recovery_level = 0;
            0
        }
    };
    Some(ans.to_string())
}

/// The boolean keys: ImmediateData (AND), InitialR2T, DataPDUInOrder and
/// DataSequenceInOrder (OR), the markers (always No).
fn negotiate_bool(key: &str, val: &str, p: &mut Params, lim: &Limits) -> Option<String> {
    let b = parse_bool(val)?;
    let ans = match key {
        "ImmediateData" => {
            p.immediate_data = b && lim.immediate_data;
            yes_no(p.immediate_data)
        }
        "InitialR2T" => {
            p.initial_r2t = b || lim.initial_r2t;
            yes_no(p.initial_r2t)
        }
        // OR function: the target wants in-order data, so the result is Yes.
        "DataPDUInOrder" | "DataSequenceInOrder" => "Yes".into(),
        _ => "No".into(), // IFMarker, OFMarker
    };
    Some(ans)
}

/// Makes the FirstBurstLength answer among `answers` agree with `p` once every key
/// of an exchange is negotiated: a MaxBurstLength after FirstBurstLength in the
/// same request may have lowered it (RFC 7143 §13.14: FirstBurstLength MUST NOT
/// exceed MaxBurstLength).
pub fn clamp_first_burst(p: &Params, answers: &mut [(String, String)]) {
    for (k, v) in answers.iter_mut() {
        if k == "FirstBurstLength" && parse_number(v).is_some_and(|n| n > p.first_burst as u64) {
            *v = p.first_burst.to_string();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lim() -> Limits {
        Limits {
            target_mrdsl: 262_144,
            max_burst: 1 << 20,
            first_burst: 1 << 20,
            immediate_data: true,
            initial_r2t: false,
            max_connections: 1,
            max_outstanding_r2t: 1,
        }
    }

    #[test]
    fn parses_and_serializes() {
        let kv = parse(b"InitiatorName=iqn.x\0SessionType=Normal\0\0").unwrap();
        assert_eq!(kv[0], ("InitiatorName".into(), "iqn.x".into()));
        assert_eq!(kv.len(), 2);
        assert_eq!(serialize(&kv), b"InitiatorName=iqn.x\0SessionType=Normal\0");
    }

    #[test]
    fn rejects_bad_text() {
        assert!(matches!(parse(b"novalue\0"), Err(TextError::NoEquals(_))));
        assert!(matches!(parse(b"=x\0"), Err(TextError::BadKey(_))));
        assert!(matches!(parse(b"a=1\0a=2\0"), Err(TextError::Duplicate(_))));
        assert!(matches!(parse(b"a=\xff\0"), Err(TextError::BadValue(_))));
        let many: Vec<u8> = (0..300)
            .flat_map(|i| format!("k{i}=v\0").into_bytes())
            .collect();
        assert_eq!(parse(&many), Err(TextError::TooMany));
    }

    #[test]
    fn negotiation_rules() {
        let l = lim();
        let mut p = Params::defaults(&l);
        assert_eq!(
            negotiate("HeaderDigest", "CRC32C,None", &mut p, &l).unwrap(),
            "CRC32C"
        );
        assert!(p.header_digest);
        assert_eq!(negotiate("DataDigest", "None", &mut p, &l).unwrap(), "None");
        assert_eq!(
            negotiate("DataDigest", "MD5", &mut p, &l).unwrap(),
            "Reject"
        );
        assert_eq!(
            negotiate("MaxRecvDataSegmentLength", "8192", &mut p, &l).unwrap(),
            "262144"
        );
        assert_eq!(p.initiator_mrdsl, 8192);
        assert_eq!(
            negotiate("MaxBurstLength", "16776192", &mut p, &l).unwrap(),
            "1048576"
        );
        assert_eq!(
            negotiate("ImmediateData", "Yes", &mut p, &l).unwrap(),
            "Yes"
        );
        assert_eq!(negotiate("InitialR2T", "No", &mut p, &l).unwrap(), "No");
        assert_eq!(negotiate("MaxConnections", "8", &mut p, &l).unwrap(), "1");
        assert_eq!(
            negotiate("ErrorRecoveryLevel", "2", &mut p, &l).unwrap(),
            "0"
        );
        assert_eq!(negotiate("DefaultTime2Wait", "0", &mut p, &l).unwrap(), "2");
        assert_eq!(
            negotiate("MaxBurstLength", "0x10000", &mut p, &l).unwrap(),
            "65536"
        );
        assert_eq!(
            negotiate("MaxBurstLength", "1", &mut p, &l).unwrap(),
            "Reject"
        );
        assert!(negotiate("InitiatorName", "x", &mut p, &l).is_none());
    }

    #[test]
    fn first_burst_is_negotiated_down_to_max_burst_in_either_order() {
        let l = lim();
        // FirstBurstLength first: MaxBurstLength then lowers it.
        let mut p = Params::defaults(&l);
        let mut out = vec![
            (
                "FirstBurstLength".to_string(),
                negotiate("FirstBurstLength", "262144", &mut p, &l).unwrap(),
            ),
            (
                "MaxBurstLength".to_string(),
                negotiate("MaxBurstLength", "65536", &mut p, &l).unwrap(),
            ),
        ];
        clamp_first_burst(&p, &mut out);
        assert_eq!(out[0].1, "65536");
        assert_eq!(out[1].1, "65536");
        assert_eq!((p.first_burst, p.max_burst), (65536, 65536));
        // MaxBurstLength first.
        let mut p = Params::defaults(&l);
        assert_eq!(
            negotiate("MaxBurstLength", "16384", &mut p, &l).unwrap(),
            "16384"
        );
        assert_eq!(
            negotiate("FirstBurstLength", "1048576", &mut p, &l).unwrap(),
            "16384"
        );
        // Only MaxBurstLength below the default FirstBurstLength (65536).
        let mut p = Params::defaults(&l);
        negotiate("MaxBurstLength", "8192", &mut p, &l).unwrap();
        assert_eq!(p.first_burst, 8192);
        // Reject answers are left alone.
        let mut out = vec![("FirstBurstLength".to_string(), "Reject".to_string())];
        clamp_first_burst(&p, &mut out);
        assert_eq!(out[0].1, "Reject");
    }
}
