//! Size and duration units of spec/CONFIG.md §3: parsing (`"64KiB"`, `"5s"`) and formatting
//! (largest exact unit), lossless in both directions.
//!
//! Sizes accept `B`, `KiB`, `MiB` and a bare integer (bytes). Durations accept `ms`, `s`, `m`,
//! `h`, plus `us` and `ns` so that any [`Duration`] set programmatically formats and re-parses
//! losslessly (the config sources themselves only ever need the four spec units). Numbers are
//! whole, unsigned and decimal; overflow, negatives, fractions, missing or unknown units are
//! errors ([`UnitError`]), which callers turn into `ConfigError::Parse` naming the key.
//!
//! This module does not know about keys or sources.

use std::fmt;
use std::time::Duration;

/// Why a size or duration string was rejected. The text is a stable, human-readable reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitError(String);

impl UnitError {
    fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }

    /// The reason text.
    pub fn reason(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UnitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UnitError {}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Size units, largest first (formatting picks the first exact one).
const SIZE_UNITS: [(&str, u64); 3] = [("MiB", MIB), ("KiB", KIB), ("B", 1)];

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Duration units in nanoseconds, largest first (formatting picks the first exact one).
const DURATION_UNITS: [(&str, u128); 6] = [
    ("h", 3_600 * NANOS_PER_SEC),
    ("m", 60 * NANOS_PER_SEC),
    ("s", NANOS_PER_SEC),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

/// Parses a size: `"1MiB"`, `"64KiB"`, `"512B"`, `"0"`, `"65536"` (bare integer = bytes).
/// Whitespace around the value and between number and unit is allowed.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let (number, unit) = split_number(text)?;
    let factor = if unit.is_empty() {
        1
    } else {
        SIZE_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                UnitError::new(format!(
                    "unknown size unit `{unit}` (expected B, KiB or MiB)"
                ))
            })?
    };
    let n: u64 = number
        .parse()
        .map_err(|_| UnitError::new("number does not fit in 64 bits"))?;
    n.checked_mul(factor)
        .ok_or_else(|| UnitError::new("size overflows 64 bits"))
}

/// Formats a size in its largest exact unit: `65536` ⇒ `"64KiB"`, `1048576` ⇒ `"1MiB"`,
/// `1000` ⇒ `"1000B"`, `0` ⇒ `"0B"`.
pub fn format_size(bytes: u64) -> String {
    if bytes == 0 {
        return "0B".to_owned();
    }
    for (name, factor) in SIZE_UNITS {
        if bytes % factor == 0 {
            return format!("{}{name}", bytes / factor);
        }
    }
    unreachable!("the `B` unit divides every size")
}

/// Parses a duration: `"500ms"`, `"5s"`, `"1m"`, `"2h"` (also `"us"`, `"ns"`). A unit is
/// required, except that a bare `"0"` means zero.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let (number, unit) = split_number(text)?;
    let n: u128 = number
        .parse()
        .map_err(|_| UnitError::new("number does not fit in 128 bits"))?;
    let factor = if unit.is_empty() {
        if n == 0 {
            1
        } else {
            return Err(UnitError::new(
                "missing duration unit (expected ms, s, m or h, e.g. \"5s\")",
            ));
        }
    } else {
        DURATION_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                UnitError::new(format!(
                    "unknown duration unit `{unit}` (expected ms, s, m or h)"
                ))
            })?
    };
    let nanos = n
        .checked_mul(factor)
        .ok_or_else(|| UnitError::new("duration overflows"))?;
    let secs =
        u64::try_from(nanos / NANOS_PER_SEC).map_err(|_| UnitError::new("duration overflows"))?;
    // The remainder of a division by 10^9 always fits in u32.
    let sub = (nanos % NANOS_PER_SEC) as u32;
    Ok(Duration::new(secs, sub))
}

/// Formats a duration in its largest exact unit: 5 s ⇒ `"5s"`, 90 s ⇒ `"90s"`,
/// 1500 ms ⇒ `"1500ms"`, 2 h ⇒ `"2h"`, zero ⇒ `"0s"`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    for (name, factor) in DURATION_UNITS {
        if nanos % factor == 0 {
            return format!("{}{name}", nanos / factor);
        }
    }
    unreachable!("the `ns` unit divides every duration")
}

/// Splits `"  64 KiB "` into (`"64"`, `"KiB"`), rejecting empty, negative, signed and
/// fractional input with a precise reason.
fn split_number(text: &str) -> Result<(&str, &str), UnitError> {
    let t = text.trim();
    if t.is_empty() {
        return Err(UnitError::new("empty value"));
    }
    if t.starts_with('-') {
        return Err(UnitError::new("negative values are not allowed"));
    }
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, rest) = t.split_at(digits_end);
    if number.is_empty() {
        return Err(UnitError::new("expected a whole number followed by a unit"));
    }
    let unit = rest.trim_start();
    if unit.starts_with(['.', ',']) {
        return Err(UnitError::new(
            "fractional values are not allowed; use a smaller unit",
        ));
    }
    if unit.chars().any(|c| !c.is_ascii_alphabetic()) {
        return Err(UnitError::new(format!("unexpected characters in `{t}`")));
    }
    Ok((number, unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(MIB));
        assert_eq!(parse_size("64KiB"), Ok(64 * KIB));
        assert_eq!(parse_size(" 64 KiB "), Ok(64 * KIB));
        assert_eq!(parse_size("12B"), Ok(12));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(format_size(65536), "64KiB");
        assert_eq!(format_size(MIB), "1MiB");
        assert_eq!(format_size(1000), "1000B");
        assert_eq!(format_size(0), "0B");
        for bad in [
            "",
            "-1",
            "1.5MiB",
            "1KB",
            "MiB",
            "1 MiB x",
            "18446744073709551616",
            "17592186044416MiB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(format_duration(Duration::from_secs(5)), "5s");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_secs(120)), "2m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(
            parse_duration(&format_duration(Duration::MAX)),
            Ok(Duration::MAX)
        );
        for bad in [
            "",
            "5",
            "-5s",
            "1.5s",
            "5sec",
            "5 d",
            "99999999999999999999999999999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be rejected");
        }
    }
}
