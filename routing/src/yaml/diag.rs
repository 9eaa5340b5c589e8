//! Error/warning collection with document context, and small field checks.

use crate::error::{DocRef, LoadError};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Fields that are valid in Istio but not (yet) interpreted.
pub(crate) type Extra = BTreeMap<String, serde_json::Value>;

#[derive(Debug, Default)]
pub(crate) struct Diag {
    pub errors: Vec<LoadError>,
    pub warnings: Vec<String>,
}

impl Diag {
    pub fn error(&mut self, at: &DocRef, field: Option<&str>, message: impl Into<String>) {
        self.errors.push(LoadError {
            at: at.clone(),
            field: field.map(str::to_string),
            message: message.into(),
        });
    }

    pub fn warn(&mut self, at: &DocRef, field: Option<&str>, message: impl Into<String>) {
        let message = message.into();
        self.warnings.push(match field {
            Some(f) => format!("{at}: {f}: {message}"),
            None => format!("{at}: {message}"),
        });
    }

    /// One warning per unknown field: `<at>: <prefix><key> is not supported yet; ignored`.
    pub fn unsupported(
        &mut self,
        at: &DocRef,
        prefix: &str,
        extra: &Extra,
        silently_ignored: &[&str],
    ) {
        for key in extra
            .keys()
            .filter(|k| !silently_ignored.contains(&k.as_str()))
        {
            self.warnings
                .push(format!("{at}: {prefix}{key} is not supported yet; ignored"));
        }
    }

    /// A port number in 1..=65535.
    pub fn port(&mut self, at: &DocRef, field: &str, value: i64) -> Option<u16> {
        match u16::try_from(value) {
            Ok(p) if p != 0 => Some(p),
            _ => {
                self.error(
                    at,
                    Some(field),
                    format!("port {value} out of range 1..65535"),
                );
                None
            }
        }
    }

    /// An IP address (no CIDR, no hostname).
    pub fn ip(&mut self, at: &DocRef, field: &str, value: &str) -> Option<IpAddr> {
        if value.contains('/') {
            self.error(
                at,
                Some(field),
                format!("CIDR {value:?} is not supported; use a single IP address"),
            );
            return None;
        }
        match value.trim().parse() {
            Ok(ip) => Some(ip),
            Err(_) => {
                self.error(at, Some(field), format!("invalid IP address {value:?}"));
                None
            }
        }
    }

    /// A required field.
    pub fn required<T>(&mut self, at: &DocRef, field: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.error(at, Some(field), "missing required field");
        }
        value
    }
}
