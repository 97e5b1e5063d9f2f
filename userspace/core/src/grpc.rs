//! gRPC's vocabulary as weir uses it: status codes (names as in the gRPC spec, lower
//! snake_case in config and labels), sets of codes, and `grpc-timeout` values. Must not: do
//! I/O, know about HTTP/2 frames, or allocate.

use serde::{Deserialize, Serialize};

/// `grpc-status` codes, by number (0..=16).
pub const NAMES: [&str; 17] = [
    "ok",
    "cancelled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
];

/// `OK`.
pub const OK: u8 = 0;
/// `CANCELLED`.
pub const CANCELLED: u8 = 1;
/// `DEADLINE_EXCEEDED`.
pub const DEADLINE_EXCEEDED: u8 = 4;
/// `RESOURCE_EXHAUSTED`.
pub const RESOURCE_EXHAUSTED: u8 = 8;
/// `INTERNAL`.
pub const INTERNAL: u8 = 13;
/// `UNAVAILABLE`: also a gateway failure for outlier detection.
pub const UNAVAILABLE: u8 = 14;

/// The code named `name` (`"unavailable"`), or its number.
pub fn code_of(name: &str) -> Option<u8> {
    NAMES.iter().position(|n| *n == name).map(|i| i as u8).or_else(|| name.parse().ok().filter(|c| *c <= 16))
}

/// The lower snake_case name of `code` (`"other"` beyond 16).
pub fn name_of(code: u8) -> &'static str {
    NAMES.get(usize::from(code)).copied().unwrap_or("other")
}

/// The `grpc-status` weir answers a gRPC call with when it answers itself: `UNAVAILABLE` when
/// no endpoint could take the call (connect, overload, no endpoint, drain, a reset),
/// `DEADLINE_EXCEEDED` for its timeouts, and the nearest code otherwise.
pub const fn status_for(reason: crate::outcome::ErrorReason) -> u8 {
    use crate::outcome::ErrorReason as R;
    match reason {
        R::Timeout | R::HeaderReadTimeout => DEADLINE_EXCEEDED,
        R::ConnectFailure | R::NoHealthyEndpoint | R::Overloaded | R::Draining | R::UpstreamReset => UNAVAILABLE,
        R::NoRoute | R::NotImplemented | R::VersionNotSupported => 12, // UNIMPLEMENTED
        R::HeadTooLarge | R::UriTooLong | R::RateLimited => RESOURCE_EXHAUSTED,
        R::BadRequest | R::ExpectationFailed | R::UpstreamProtocolError | R::InternalError => INTERNAL,
        // A fault stands in for an endpoint's failure: the call fails as an unreachable one would.
        R::FaultInjected => UNAVAILABLE,
    }
}

/// Parses a `grpc-status` value.
pub fn parse_status(v: &[u8]) -> Option<u8> {
    std::str::from_utf8(v).ok()?.trim().parse::<u8>().ok()
}

/// A set of gRPC status codes (a bit per code), serialised as a list of names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CodeSet(u32);

impl CodeSet {
    /// The empty set.
    pub const EMPTY: CodeSet = CodeSet(0);

    /// `{code}`.
    pub const fn of(code: u8) -> CodeSet {
        CodeSet(1 << code)
    }

    /// The set with `code` added.
    pub const fn with(self, code: u8) -> CodeSet {
        CodeSet(self.0 | 1 << code)
    }

    /// Whether `code` is in the set.
    pub const fn contains(self, code: u8) -> bool {
        code <= 16 && self.0 & (1 << code) != 0
    }

    /// The codes in the set, in order.
    pub fn codes(self) -> impl Iterator<Item = u8> {
        (0..=16u8).filter(move |c| self.contains(*c))
    }
}

impl Serialize for CodeSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.codes().map(name_of))
    }
}

impl<'de> Deserialize<'de> for CodeSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<CodeSet, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        let mut set = CodeSet::EMPTY;
        for n in names {
            let code = code_of(&n).ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "{n:?} is not a gRPC status: expected one of {} (or a number 0..=16)",
                    NAMES.join(", ")
                ))
            })?;
            set = set.with(code);
        }
        Ok(set)
    }
}

/// Parses a `grpc-timeout` value (`1..=8 digits` + unit `H M S m u n`) into a duration.
pub fn parse_timeout(v: &[u8]) -> Option<std::time::Duration> {
    use std::time::Duration;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats `d` as a `grpc-timeout` value (at most 8 digits: the finest unit that fits),
/// into `out`; returns the bytes written.
pub fn format_timeout(d: std::time::Duration, out: &mut [u8; 10]) -> usize {
    let candidates: [(u128, u8); 5] = [
        (d.as_nanos(), b'n'),
        (d.as_micros(), b'u'),
        (d.as_millis(), b'm'),
        (u128::from(d.as_secs()), b'S'),
        (u128::from(d.as_secs() / 60), b'M'),
    ];
    let (n, unit) = candidates.into_iter().find(|(n, _)| *n < 100_000_000).unwrap_or((99_999_999, b'H'));
    let (mut digits, mut i, mut v) = ([0u8; 8], 8, n.max(1));
    while v > 0 {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let len = 8 - i;
    out[..len].copy_from_slice(&digits[i..]);
    out[len] = unit;
    len + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn codes_by_name_and_number() {
        assert_eq!(code_of("unavailable"), Some(UNAVAILABLE));
        assert_eq!(code_of("14"), Some(14));
        assert_eq!(code_of("17"), None);
        assert_eq!(code_of("Unavailable"), None);
        assert_eq!(name_of(4), "deadline_exceeded");
        let set = CodeSet::of(UNAVAILABLE).with(RESOURCE_EXHAUSTED);
        assert!(set.contains(14) && set.contains(8) && !set.contains(0) && !set.contains(40));
        assert_eq!(serde_json::to_string(&set).expect("json"), r#"["resource_exhausted","unavailable"]"#);
        assert_eq!(status_for(crate::outcome::ErrorReason::RateLimited), RESOURCE_EXHAUSTED);
    }

    #[test]
    fn timeouts_parse_and_format_within_eight_digits() {
        assert_eq!(parse_timeout(b"100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_timeout(b"2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_timeout(b"1H"), Some(Duration::from_secs(3600)));
        for bad in [&b""[..], b"m", b"123456789m", b"10x", b"-1S", b"1.5S"] {
            assert_eq!(parse_timeout(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        let mut b = [0u8; 10];
        let n = format_timeout(Duration::from_millis(1500), &mut b);
        assert_eq!(parse_timeout(&b[..n]), Some(Duration::from_millis(1500)));
        let n = format_timeout(Duration::from_secs(90_000), &mut b);
        assert!(n <= 9 && parse_timeout(&b[..n]).is_some(), "{:?}", String::from_utf8_lossy(&b[..n]));
    }
}
