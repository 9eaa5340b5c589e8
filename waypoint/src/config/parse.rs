//! Value parsers shared by the flags (clap calls them) and the environment (`RunConfig::from_env`),
//! and the error that names a bad variable.

use crate::telemetry::access_log::Format;

/// A setting in the environment that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// `name=value` does not parse.
    #[error("environment variable {name}={value:?}: {reason}")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    /// Two variables that exclude each other are both set.
    #[error("environment variables {first} and {second} are both set: give only one")]
    Conflict {
        first: &'static str,
        second: &'static str,
    },
}

/// Why one value does not parse (the variable or flag is named by the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

/// `NAMESPACE/NAME`.
pub fn parse_gateway(s: &str) -> Result<(String, String), InvalidValue> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(InvalidValue(format!("{s:?} is not NAMESPACE/NAME"))),
    }
}

/// A number strictly between 0 and 1.
pub fn parse_fraction(s: &str) -> Result<f64, InvalidValue> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f < 1.0 => Ok(f),
        _ => Err(InvalidValue(format!(
            "{s:?} is not a fraction strictly between 0 and 1"
        ))),
    }
}

/// `true` or `false`, as clap reads a switch's variable.
pub fn parse_bool(s: &str) -> Result<bool, InvalidValue> {
    match s {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(InvalidValue(format!("{s:?} is not true or false"))),
    }
}

/// A whole number of at least 1.
pub fn parse_positive<T>(s: &str) -> Result<T, InvalidValue>
where
    T: std::str::FromStr + PartialOrd + From<u8>,
    T::Err: std::fmt::Display,
{
    let n: T = s.parse().map_err(|e| InvalidValue(format!("{s:?}: {e}")))?;
    if n < T::from(1) {
        return Err(InvalidValue(format!("{s:?} is less than 1")));
    }
    Ok(n)
}

/// `text` or `json`.
pub fn parse_access_log_format(s: &str) -> Result<Format, InvalidValue> {
    match s {
        "text" => Ok(Format::Text),
        "json" => Ok(Format::Json),
        _ => Err(InvalidValue(format!("{s:?} is not text or json"))),
    }
}

/// Any `FromStr` value, its error as text.
pub(super) fn parse_from_str<T>(s: &str) -> Result<T, InvalidValue>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| InvalidValue(e.to_string()))
}
