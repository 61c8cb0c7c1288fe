//! Durations ("30s", "2m", "1h30m") and sizes ("512MiB", "2GB") as written in topology
//! files.
//!
//! Both serialize to their canonical text so JSON output reads like the file and a
//! spec hash does not change when the same value is spelled differently.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a duration or size could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// The text was empty.
    #[error("empty value")]
    Empty,
    /// A number was expected where the text had something else.
    #[error("expected a number at `{0}`")]
    ExpectedNumber(String),
    /// The number had no unit after it.
    #[error("`{0}` has no unit")]
    MissingUnit(String),
    /// The unit is not one this kind of value knows.
    #[error("unknown unit `{unit}`")]
    UnknownUnit {
        /// The unit as written.
        unit: String,
    },
    /// The value does not fit in 64 bits.
    #[error("value too large")]
    Overflow,
}

/// A span of time with millisecond precision, written like `30s`, `2m`, `1h30m`, `250ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration {
    millis: u64,
}

const DURATION_UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

impl Duration {
    /// The units a duration accepts, for error messages.
    pub const UNITS: &'static str = "ms, s, m, h, d";

    /// A duration of `millis` milliseconds.
    #[must_use]
    pub const fn from_millis(millis: u64) -> Self {
        Self { millis }
    }

    /// A duration of `secs` seconds.
    #[must_use]
    pub const fn from_secs(secs: u64) -> Self {
        Self {
            millis: secs.saturating_mul(1_000),
        }
    }

    /// The duration in milliseconds.
    #[must_use]
    pub const fn as_millis(self) -> u64 {
        self.millis
    }

    /// The duration as a [`std::time::Duration`], for timers.
    #[must_use]
    pub const fn to_std(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.millis)
    }
}

impl FromStr for Duration {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self {
            millis: sum_quantities(text, DURATION_UNITS)?,
        })
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.millis == 0 {
            return f.write_str("0s");
        }
        let mut rest = self.millis;
        for (unit, factor) in DURATION_UNITS.iter().rev() {
            if rest >= *factor {
                write!(f, "{}{unit}", rest / factor)?;
                rest %= factor;
            }
        }
        Ok(())
    }
}

/// An amount of bytes, written with a binary (`KiB`, `MiB`, `GiB`, `TiB`) or decimal
/// (`kB`, `MB`, `GB`, `TB`) unit, or `B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize {
    bytes: u64,
}

const SIZE_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("kB", 1_000),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

impl ByteSize {
    /// The units a size accepts, for error messages.
    pub const UNITS: &'static str = "B, KiB, MiB, GiB, TiB (binary) or kB, MB, GB, TB (decimal)";

    /// A size of `bytes` bytes.
    #[must_use]
    pub const fn from_bytes(bytes: u64) -> Self {
        Self { bytes }
    }

    /// A size of `mib` mebibytes.
    #[must_use]
    pub const fn from_mib(mib: u64) -> Self {
        Self {
            bytes: mib.saturating_mul(1 << 20),
        }
    }

    /// A size of `gib` gibibytes.
    #[must_use]
    pub const fn from_gib(gib: u64) -> Self {
        Self {
            bytes: gib.saturating_mul(1 << 30),
        }
    }

    /// The size in bytes.
    #[must_use]
    pub const fn bytes(self) -> u64 {
        self.bytes
    }

    /// The size as an Incus config value (`limits.memory`, a disk `size`): a byte count
    /// with the `B` suffix, which Incus reads exactly.
    #[must_use]
    pub fn to_incus(self) -> String {
        format!("{}B", self.bytes)
    }

    /// A suggestion for a unit written in the wrong case or without its `B`.
    #[must_use]
    pub fn suggest_unit(unit: &str) -> Option<&'static str> {
        let lower = unit.to_ascii_lowercase();
        let wanted = match lower.as_str() {
            "k" | "ki" | "kib" => "KiB",
            "m" | "mi" | "mib" => "MiB",
            "g" | "gi" | "gib" => "GiB",
            "t" | "ti" | "tib" => "TiB",
            "kb" => "kB",
            "mb" => "MB",
            "gb" => "GB",
            "tb" => "TB",
            "b" | "bytes" => "B",
            _ => return None,
        };
        Some(wanted)
    }
}

impl FromStr for ByteSize {
    type Err = UnitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(Self {
            bytes: sum_quantities(text, SIZE_UNITS)?,
        })
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.bytes;
        // The largest unit, binary or decimal, that divides the size exactly.
        let units = [
            ("TiB", 1u64 << 40),
            ("TB", 1_000_000_000_000),
            ("GiB", 1 << 30),
            ("GB", 1_000_000_000),
            ("MiB", 1 << 20),
            ("MB", 1_000_000),
            ("KiB", 1 << 10),
            ("kB", 1_000),
        ];
        for (unit, factor) in units {
            if bytes >= factor && bytes.is_multiple_of(factor) {
                return write!(f, "{}{unit}", bytes / factor);
            }
        }
        write!(f, "{bytes}B")
    }
}

/// The sum of `1h30m`'s parts in the base unit of `units` (each unit's name with its
/// factor), checked for overflow.
fn sum_quantities(text: &str, units: &[(&str, u64)]) -> Result<u64, UnitError> {
    let mut total: u64 = 0;
    for (number, unit) in split_quantities(text)? {
        let factor = units
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|(_, factor)| *factor)
            .ok_or_else(|| UnitError::UnknownUnit {
                unit: unit.to_owned(),
            })?;
        let part = number.checked_mul(factor).ok_or(UnitError::Overflow)?;
        total = total.checked_add(part).ok_or(UnitError::Overflow)?;
    }
    Ok(total)
}

/// Splits `1h30m` into `[(1, "h"), (30, "m")]`; whitespace between parts is allowed.
fn split_quantities(text: &str) -> Result<Vec<(u64, &str)>, UnitError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(UnitError::Empty);
    }
    let mut parts = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(UnitError::ExpectedNumber(rest.to_owned()));
        }
        let number: u64 = rest[..digits].parse().map_err(|_| UnitError::Overflow)?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        if unit_len == 0 {
            return Err(UnitError::MissingUnit(text.to_owned()));
        }
        parts.push((number, &rest[..unit_len]));
        rest = rest[unit_len..].trim_start();
    }
    Ok(parts)
}

macro_rules! serde_as_text {
    ($ty:ty, $what:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(|err| {
                    serde::de::Error::custom(format_args!("invalid {} `{text}`: {err}", $what))
                })
            }
        }
    };
}

serde_as_text!(Duration, "duration");
serde_as_text!(ByteSize, "size");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_print_canonically() {
        let cases = [
            ("30s", 30_000, "30s"),
            ("2m", 120_000, "2m"),
            ("90s", 90_000, "1m30s"),
            ("1h30m", 5_400_000, "1h30m"),
            ("250ms", 250, "250ms"),
            ("1d", 86_400_000, "1d"),
            ("0s", 0, "0s"),
        ];
        for (text, millis, canonical) in cases {
            let parsed: Duration = text.parse().unwrap();
            assert_eq!(parsed.as_millis(), millis, "{text}");
            assert_eq!(parsed.to_string(), canonical, "{text}");
            assert_eq!(canonical.parse::<Duration>().unwrap(), parsed);
        }
    }

    #[test]
    fn durations_reject_bad_text() {
        assert_eq!("".parse::<Duration>(), Err(UnitError::Empty));
        assert_eq!(
            "30".parse::<Duration>(),
            Err(UnitError::MissingUnit("30".into()))
        );
        assert_eq!(
            "30sec".parse::<Duration>(),
            Err(UnitError::UnknownUnit { unit: "sec".into() })
        );
        assert_eq!(
            "s30".parse::<Duration>(),
            Err(UnitError::ExpectedNumber("s30".into()))
        );
        assert_eq!(
            "99999999999999999999s".parse::<Duration>(),
            Err(UnitError::Overflow)
        );
    }

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        assert_eq!("512MiB".parse::<ByteSize>().unwrap().bytes(), 512 << 20);
        assert_eq!("2GiB".parse::<ByteSize>().unwrap().bytes(), 2 << 30);
        assert_eq!("2GB".parse::<ByteSize>().unwrap().bytes(), 2_000_000_000);
        assert_eq!("1kB".parse::<ByteSize>().unwrap().bytes(), 1_000);
        assert_eq!("100B".parse::<ByteSize>().unwrap().bytes(), 100);
        assert_eq!(ByteSize::from_gib(2).to_string(), "2GiB");
        assert_eq!(ByteSize::from_bytes(2_000_000_000).to_string(), "2GB");
        assert_eq!(ByteSize::from_bytes(1_500).to_string(), "1500B");
        assert_eq!(ByteSize::from_gib(2).to_incus(), "2147483648B");
    }

    #[test]
    fn sizes_reject_unknown_units_with_a_suggestion() {
        assert_eq!(
            "2gb".parse::<ByteSize>(),
            Err(UnitError::UnknownUnit { unit: "gb".into() })
        );
        assert_eq!(ByteSize::suggest_unit("gb"), Some("GB"));
        assert_eq!(ByteSize::suggest_unit("G"), Some("GiB"));
        assert_eq!(ByteSize::suggest_unit("parsecs"), None);
    }

    #[test]
    fn units_round_trip_through_json() {
        let size: ByteSize = "512MiB".parse().unwrap();
        let json = serde_json::to_string(&size).unwrap();
        assert_eq!(json, "\"512MiB\"");
        assert_eq!(serde_json::from_str::<ByteSize>(&json).unwrap(), size);
        let err = serde_json::from_str::<Duration>("\"5 parsecs\"").unwrap_err();
        assert!(err.to_string().contains("invalid duration"), "{err}");
    }
}
