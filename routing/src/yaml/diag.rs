//! Error/warning collection with document context, and small field checks.

use super::schema;
use crate::error::{DocRef, LoadError, LoadWarning};
use std::collections::BTreeMap;
use std::net::IpAddr;

/// The keys of a YAML mapping that its struct does not handle.
pub(crate) type Extra = BTreeMap<String, serde_json::Value>;

#[derive(Debug, Default)]
pub(crate) struct Diag {
    pub errors: Vec<LoadError>,
    pub warnings: Vec<LoadWarning>,
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
        self.warnings.push(LoadWarning {
            at: at.clone(),
            field: field.map(str::to_string),
            message: message.into(),
            subject: false,
        });
    }

    /// The keys the struct did not handle (`extra`) of a message whose
    /// fields are `known` (a list of [`schema`]): a known field is a warning
    /// `<prefix><key> is not supported yet; ignored` (none for
    /// `silently_ignored`), any other key an error `unknown field`.
    pub fn unsupported(
        &mut self,
        at: &DocRef,
        prefix: &str,
        extra: &Extra,
        known: &[&str],
        silently_ignored: &[&str],
    ) {
        for key in extra
            .keys()
            .filter(|k| !silently_ignored.contains(&k.as_str()))
        {
            let field = format!("{prefix}{key}");
            if known.contains(&key.as_str()) {
                self.warnings.push(LoadWarning {
                    at: at.clone(),
                    field: Some(field),
                    message: "is not supported yet; ignored".to_string(),
                    subject: true,
                });
            } else {
                self.error(at, Some(&field), schema::unknown_field(key, known));
            }
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
