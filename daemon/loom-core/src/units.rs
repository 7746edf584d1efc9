//! Human units on the command line and in the config: `2G`, `512M`, `1.5` CPUs, `4h`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error(
        "invalid size {0:?}: use a whole number with an optional K, M, G or T suffix (powers of 1024), e.g. 512M or 2G"
    )]
    Size(String),
    #[error("invalid duration {0:?}: use a whole number with s, m, h or d, e.g. 90s, 30m or 4h")]
    Duration(String),
    #[error("invalid CPU count {0:?}: use a positive number such as 0.5, 1 or 1.5 (at most 1024)")]
    Cpus(String),
}

/// A byte count. Parsed from `4096`, `512K`, `512M`, `2G`, `1T` (binary multiples).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UnitError::Size(s.to_string());
        let t = s.trim();
        let t = t.strip_suffix(['B', 'b']).unwrap_or(t);
        let (digits, shift) = match t.char_indices().last() {
            Some((i, c)) if c.is_ascii_alphabetic() => {
                let shift = match c.to_ascii_uppercase() {
                    'K' => 10,
                    'M' => 20,
                    'G' => 30,
                    'T' => 40,
                    _ => return Err(err()),
                };
                (&t[..i], shift)
            }
            _ => (t, 0),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        let bytes = n.checked_shl(shift).filter(|v| v >> shift == n).ok_or_else(err)?;
        if bytes == 0 {
            return Err(err());
        }
        Ok(ByteSize(bytes))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (suffix, shift) in [("T", 40), ("G", 30), ("M", 20), ("K", 10)] {
            if self.0 >= 1 << shift && self.0.is_multiple_of(1 << shift) {
                return write!(f, "{}{}", self.0 >> shift, suffix);
            }
        }
        write!(f, "{}", self.0)
    }
}

/// A span of time in whole seconds. Parsed from `90s`, `30m`, `4h`, `2d`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub u64);

impl FromStr for Span {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || UnitError::Duration(s.to_string());
        let t = s.trim();
        let (digits, mult) = match t.chars().last() {
            Some('s') => (&t[..t.len() - 1], 1u64),
            Some('m') => (&t[..t.len() - 1], 60),
            Some('h') => (&t[..t.len() - 1], 3600),
            Some('d') => (&t[..t.len() - 1], 86400),
            _ => return Err(err()),
        };
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err());
        }
        let n: u64 = digits.parse().map_err(|_| err())?;
        let secs = n.checked_mul(mult).ok_or_else(err)?;
        if secs == 0 {
            return Err(err());
        }
        Ok(Span(secs))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (suffix, mult) in [("d", 86400), ("h", 3600), ("m", 60)] {
            if self.0.is_multiple_of(mult) {
                return write!(f, "{}{}", self.0 / mult, suffix);
            }
        }
        write!(f, "{}s", self.0)
    }
}

/// A CPU allowance in thousandths of a CPU, so that it compares and serializes exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cpus(pub u32);

impl Cpus {
    pub fn from_f64(v: f64) -> Result<Self, UnitError> {
        if !v.is_finite() || v <= 0.0 || v > 1024.0 {
            return Err(UnitError::Cpus(v.to_string()));
        }
        let milli = (v * 1000.0).round() as u32;
        if milli == 0 {
            return Err(UnitError::Cpus(v.to_string()));
        }
        Ok(Cpus(milli))
    }
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 1000.0
    }
    /// The CFS quota for `period_us`, as systemd's CPUQuotaPerSecUSec and cgroup `cpu.max` want it.
    pub fn quota_us(self, period_us: u64) -> u64 {
        period_us * u64::from(self.0) / 1000
    }
}

impl FromStr for Cpus {
    type Err = UnitError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let v: f64 = s.trim().parse().map_err(|_| UnitError::Cpus(s.to_string()))?;
        Cpus::from_f64(v).map_err(|_| UnitError::Cpus(s.to_string()))
    }
}

macro_rules! string_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
string_serde!(ByteSize);
string_serde!(Span);

impl fmt::Display for Cpus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_f64())
    }
}

impl Serialize for Cpus {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.as_f64())
    }
}

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        Cpus::from_f64(v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_size(input: &str, expected: Option<u64>) {
        assert_eq!(input.parse::<ByteSize>().ok().map(|b| b.0), expected, "{input}");
    }

    #[test]
    fn sizes() {
        check_size("4096", Some(4096));
        check_size("512K", Some(512 << 10));
        check_size("2G", Some(2 << 30));
        check_size("2g", Some(2 << 30));
        check_size("2GB", Some(2 << 30));
        check_size("1T", Some(1 << 40));
        check_size("0", None);
        check_size("", None);
        check_size("G", None);
        check_size("-1G", None);
        check_size("1.5G", None);
        check_size("2X", None);
        check_size("99999999999999999999T", None);
        check_size("17179869184T", None);
        assert_eq!(ByteSize(2 << 30).to_string(), "2G");
        assert_eq!(ByteSize(1000).to_string(), "1000");
    }

    #[test]
    fn spans() {
        assert_eq!("90s".parse::<Span>(), Ok(Span(90)));
        assert_eq!("4h".parse::<Span>(), Ok(Span(4 * 3600)));
        assert_eq!("2d".parse::<Span>(), Ok(Span(2 * 86400)));
        assert!("4".parse::<Span>().is_err());
        assert!("h".parse::<Span>().is_err());
        assert!("0s".parse::<Span>().is_err());
        assert_eq!(Span(7200).to_string(), "2h");
        assert_eq!(Span(61).to_string(), "61s");
    }

    #[test]
    fn cpus() {
        assert_eq!("1.5".parse::<Cpus>(), Ok(Cpus(1500)));
        assert!("0".parse::<Cpus>().is_err());
        assert!("-1".parse::<Cpus>().is_err());
        assert!("NaN".parse::<Cpus>().is_err());
        assert!("inf".parse::<Cpus>().is_err());
        assert_eq!(Cpus(1500).quota_us(100_000), 150_000);
    }

    #[test]
    fn size_error_says_what_to_do() {
        let e = "2X".parse::<ByteSize>().unwrap_err().to_string();
        assert!(e.contains("\"2X\"") && e.contains("e.g. 512M"), "{e}");
    }
}
