//! Scalar field readers shared by the document parsers: integers, floats,
//! percentages, booleans and durations read from raw YAML values, with
//! errors that name the document and the field.

use super::diag::{Diag, Extra};
use crate::error::DocRef;
use serde_json::Value;
use std::time::Duration;

/// A scalar field read as-is, checked by hand for precise messages.
pub(crate) type Scalar = Option<Value>;

/// Why a duration string does not parse (the message follows `invalid duration "…": `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("must not be negative")]
    Negative,
    #[error("empty duration")]
    Empty,
    #[error("expected a number")]
    NoNumber,
    #[error("missing unit (use ms, s, m or h)")]
    MissingUnit,
    #[error("unknown unit {0:?} (use ms, s, m or h)")]
    UnknownUnit(String),
    #[error("number too large")]
    NumberTooLarge,
    #[error("duration too large")]
    TooLarge,
    #[error("bad fraction")]
    BadFraction,
}

/// Parse a duration in Istio's (Go's) string form: `"1h"`, `"1m30s"`,
/// `"1.5s"`, `"100ms"`, `"250us"`, `"0"`.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let t = s.trim();
    if t.starts_with('-') {
        return Err(DurationError::Negative);
    }
    let t = t.strip_prefix('+').unwrap_or(t);
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    if t.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut rest = t;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let int = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac = "";
        if let Some(r) = rest.strip_prefix('.') {
            let n = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            frac = &r[..n];
            rest = &r[n..];
        }
        if int.is_empty() && frac.is_empty() {
            return Err(DurationError::NoNumber);
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit_nanos: u128 = match &rest[..unit_len] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => return Err(DurationError::MissingUnit),
            u => return Err(DurationError::UnknownUnit(u.to_string())),
        };
        rest = &rest[unit_len..];
        let whole: u128 = if int.is_empty() {
            0
        } else {
            int.parse().map_err(|_| DurationError::NumberTooLarge)?
        };
        let mut part = whole
            .checked_mul(unit_nanos)
            .ok_or(DurationError::TooLarge)?;
        if !frac.is_empty() {
            let digits = &frac[..frac.len().min(18)];
            let f: u128 = digits.parse().map_err(|_| DurationError::BadFraction)?;
            part += f * unit_nanos / 10u128.pow(digits.len() as u32);
        }
        total = total.checked_add(part).ok_or(DurationError::TooLarge)?;
    }
    let nanos = u64::try_from(total).map_err(|_| DurationError::TooLarge)?;
    Ok(Duration::from_nanos(nanos))
}

/// How strictly a duration is checked.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum DurationRule {
    /// Istio's `ValidateDuration`: ≥ 1ms, millisecond precision.
    AtLeastMillis,
    /// Any non-negative duration (0 has a meaning).
    NonNegative,
}

/// Field readers that report errors with the document and field path.
pub(crate) struct Fields<'a, 'd> {
    pub(crate) at: &'a DocRef,
    pub(crate) diag: &'d mut Diag,
}

pub(crate) fn present(v: Scalar) -> Option<Value> {
    v.filter(|v| !v.is_null())
}

impl Fields<'_, '_> {
    pub(crate) fn error(&mut self, field: &str, message: impl Into<String>) {
        self.diag.error(self.at, Some(field), message);
    }

    pub(crate) fn warn(&mut self, field: &str, message: impl Into<String>) {
        self.diag.warn(self.at, Some(field), message);
    }

    /// See [`Diag::unsupported`]; `known` are the message's fields.
    pub(crate) fn unsupported(&mut self, prefix: &str, extra: &Extra, known: &[&str]) {
        self.diag
            .unsupported(self.at, &format!("{prefix}."), extra, known, &[]);
    }

    /// An integer in `0..=max` (YAML number or numeric string, as protobuf
    /// JSON accepts).
    pub(crate) fn uint(&mut self, f: &str, v: Scalar, max: u64) -> Option<u64> {
        let v = present(v)?;
        let n: Option<i128> = match &v {
            Value::Number(n) => n
                .as_i64()
                .map(i128::from)
                .or_else(|| n.as_u64().map(i128::from)),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        match n {
            None => {
                self.error(f, format!("must be an integer, got {v}"));
                None
            }
            Some(n) if n < 0 => {
                self.error(f, format!("must be ≥ 0, got {n}"));
                None
            }
            Some(n) if n > i128::from(max) => {
                self.error(f, format!("must be ≤ {max}, got {n}"));
                None
            }
            Some(n) => u64::try_from(n).ok(),
        }
    }

    /// An Istio `int32` limit (0 = default).
    pub(crate) fn int32(&mut self, f: &str, v: Scalar) -> Option<u32> {
        self.uint(f, v, i32::MAX as u64).map(|n| n as u32)
    }

    /// A `UInt32Value`.
    pub(crate) fn uint32(&mut self, f: &str, v: Scalar) -> Option<u32> {
        self.uint(f, v, u64::from(u32::MAX)).map(|n| n as u32)
    }

    pub(crate) fn percent(&mut self, f: &str, v: Scalar) -> Option<u8> {
        let v = present(v)?;
        let n = match &v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        match n {
            Some(n @ 0..=100) => Some(n as u8),
            _ => {
                self.error(f, format!("must be a percentage in 0..=100, got {v}"));
                None
            }
        }
    }

    pub(crate) fn float(
        &mut self,
        f: &str,
        v: Scalar,
        min: f64,
        max: f64,
        min_inclusive: bool,
    ) -> Option<f64> {
        let v = present(v)?;
        let x = match &v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        match x {
            Some(x) if (x > min || (min_inclusive && x == min)) && x <= max => Some(x),
            Some(_) => {
                let lo = if min_inclusive { "≥" } else { ">" };
                let hi = if max < f64::MAX {
                    format!(" and ≤ {max}")
                } else {
                    String::new()
                };
                self.error(f, format!("must be {lo} {min}{hi}, got {v}"));
                None
            }
            None => {
                self.error(f, format!("must be a number, got {v}"));
                None
            }
        }
    }

    pub(crate) fn boolean(&mut self, f: &str, v: Scalar) -> Option<bool> {
        match present(v)? {
            Value::Bool(b) => Some(b),
            other => {
                self.error(f, format!("must be true or false, got {other}"));
                None
            }
        }
    }

    pub(crate) fn duration(&mut self, f: &str, v: Scalar, rule: DurationRule) -> Option<Duration> {
        let v = present(v)?;
        let parsed = match &v {
            Value::String(s) => {
                parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
            }
            Value::Number(n) if n.as_u64() == Some(0) => Ok(Duration::ZERO),
            Value::Number(n) => Err(format!(
                "invalid duration \"{n}\": missing unit (use ms, s, m or h)"
            )),
            other => Err(format!(
                "must be a duration string like \"1s\", \"100ms\" or \"1m\", got {other}"
            )),
        };
        match parsed {
            Err(e) => {
                self.error(f, e);
                None
            }
            Ok(d) if rule == DurationRule::AtLeastMillis && d < Duration::from_millis(1) => {
                self.error(f, format!("must be ≥ 1ms, got {v}"));
                None
            }
            Ok(d) if rule == DurationRule::AtLeastMillis && d.subsec_nanos() % 1_000_000 != 0 => {
                self.error(
                    f,
                    format!("only millisecond precision is supported, got {v}"),
                );
                None
            }
            Ok(d) => Some(d),
        }
    }
}

impl Fields<'_, '_> {
    /// A string; other scalars are an error (`must be a string, got …`).
    pub(crate) fn string(&mut self, f: &str, v: Scalar) -> Option<String> {
        match present(v)? {
            Value::String(s) => Some(s),
            other => {
                self.error(f, format!("must be a string, got {other}"));
                None
            }
        }
    }

    /// A signed integer in `min..=max` (YAML number or numeric string).
    pub(crate) fn int(&mut self, f: &str, v: Scalar, min: i64, max: i64) -> Option<i64> {
        let v = present(v)?;
        let n: Option<i64> = match &v {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        match n {
            None => {
                self.error(f, format!("must be an integer, got {v}"));
                None
            }
            Some(n) if n < min || n > max => {
                self.error(f, format!("must be in {min}..={max}, got {n}"));
                None
            }
            Some(n) => Some(n),
        }
    }
}
