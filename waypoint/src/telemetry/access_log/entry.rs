//! What a line is made of: [`Line`] borrows the request's own data (and keeps addresses and the
//! start time typed), so that building and rendering one allocates nothing; [`Entry`] owns its
//! strings, for lines built piece by piece (the TCP splice) and for tests.

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::SystemTime;

use serde::{Serialize, Serializer};

use super::template::time::write_timestamp;

/// One text value of a [`Line`], written straight into the line. Empty text is "absent".
#[derive(Clone, Copy)]
pub enum Field<'a> {
    Str(&'a str),
    Addr(SocketAddr),
    /// Envoy's default `%START_TIME%` format.
    Time(SystemTime),
    /// Anything else with a text form (an identity), formatted when the line is rendered.
    Display(&'a (dyn fmt::Display + Sync)),
}

impl Default for Field<'_> {
    fn default() -> Self {
        Field::Str("")
    }
}

impl<'a> From<&'a str> for Field<'a> {
    fn from(s: &'a str) -> Self {
        Field::Str(s)
    }
}

impl<'a> From<&'a String> for Field<'a> {
    fn from(s: &'a String) -> Self {
        Field::Str(s)
    }
}

impl From<SocketAddr> for Field<'_> {
    fn from(a: SocketAddr) -> Self {
        Field::Addr(a)
    }
}

/// `None` is absent.
impl From<Option<SocketAddr>> for Field<'_> {
    fn from(a: Option<SocketAddr>) -> Self {
        a.map_or(Field::Str(""), Field::Addr)
    }
}

impl From<SystemTime> for Field<'_> {
    fn from(t: SystemTime) -> Self {
        Field::Time(t)
    }
}

impl Field<'_> {
    /// Appends the text form; returns whether it wrote anything (empty is absent).
    pub fn write(&self, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        match self {
            Field::Str(s) => out.extend_from_slice(s.as_bytes()),
            Field::Addr(a) => {
                let _ = write!(out, "{a}");
            }
            Field::Time(t) => write_timestamp(*t, out),
            Field::Display(d) => {
                let _ = write!(out, "{d}");
            }
        }
        out.len() > start
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Field::Str(s) => s.is_empty(),
            Field::Addr(_) | Field::Time(_) => false,
            Field::Display(d) => {
                struct Any(bool);
                impl fmt::Write for Any {
                    fn write_str(&mut self, s: &str) -> fmt::Result {
                        self.0 |= !s.is_empty();
                        Ok(())
                    }
                }
                let mut any = Any(false);
                let _ = fmt::write(&mut any, format_args!("{d}"));
                !any.0
            }
        }
    }
}

impl fmt::Debug for Field<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = Vec::new();
        self.write(&mut buf);
        fmt::Debug::fmt(&String::from_utf8_lossy(&buf), f)
    }
}

/// As the JSON string of its text form, written without an intermediate `String`; absent
/// (empty) is `null`, as Envoy writes a lone command operator without a value in a
/// `json_format` (Istio's JSON access log is one).
impl Serialize for Field<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Field::Str("") => s.serialize_none(),
            Field::Str(v) => s.serialize_str(v),
            Field::Addr(a) => s.collect_str(a),
            Field::Time(t) => {
                // Timestamps take under 40 bytes, whatever the year.
                let mut buf = [0u8; 64];
                let mut cursor = std::io::Cursor::new(&mut buf[..]);
                write_timestamp(*t, &mut cursor);
                let len = cursor.position() as usize;
                s.serialize_str(std::str::from_utf8(&buf[..len]).unwrap_or_default())
            }
            // Formatted once, on the stack (an identity fits), to tell empty from not.
            Field::Display(d) => {
                let mut buf = [0u8; 256];
                let mut cursor = std::io::Cursor::new(&mut buf[..]);
                let long;
                let text = if write!(cursor, "{d}").is_ok() {
                    let len = cursor.position() as usize;
                    std::str::from_utf8(&buf[..len]).unwrap_or_default()
                } else {
                    long = d.to_string();
                    &long
                };
                if text.is_empty() {
                    s.serialize_none()
                } else {
                    s.serialize_str(text)
                }
            }
        }
    }
}

/// One line, borrowing what it logs. Absent text is an empty [`Field`] (`-` in text, `null` in
/// JSON). The default JSON object is Istio's (`EnvoyJSONLogFormatIstio` in istio/istio
/// `pilot/pkg/networking/core/accesslog.go`: the same 24 keys, typed as Envoy writes them) plus
/// the waypoint's own keys after `route_name`, those marked `skip_serializing_if` only when set.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Line<'a> {
    pub start_time: Field<'a>,
    pub method: Field<'a>,
    pub path: Field<'a>,
    pub protocol: Field<'a>,
    pub response_code: u16,
    /// Envoy writes `-` for no flags (`ResponseFlagUtils::toShortString`), also in JSON.
    #[serde(serialize_with = "flags_or_dash")]
    pub response_flags: Field<'a>,
    pub response_code_details: Field<'a>,
    pub upstream_transport_failure_reason: Field<'a>,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    #[serde(rename = "duration")]
    pub duration_ms: u64,
    /// Envoy's `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%`: a header, so text (`"3"`), or `null`.
    #[serde(rename = "upstream_service_time", serialize_with = "header_millis")]
    pub upstream_service_time_ms: Option<u64>,
    pub x_forwarded_for: Field<'a>,
    pub user_agent: Field<'a>,
    pub request_id: Field<'a>,
    pub authority: Field<'a>,
    pub upstream_host: Field<'a>,
    pub upstream_cluster: Field<'a>,
    pub downstream_local_address: Field<'a>,
    pub downstream_remote_address: Field<'a>,
    #[serde(skip_serializing_if = "Field::is_empty")]
    pub downstream_claimed_address: Field<'a>,
    pub source_principal: Field<'a>,
    #[serde(skip_serializing_if = "Field::is_empty")]
    pub destination_principal: Field<'a>,
    pub route_name: Field<'a>,
    pub tunnel_traceparent: Field<'a>,
    pub config_version: u64,
    #[serde(skip_serializing_if = "Field::is_empty")]
    pub authz: Field<'a>,
    #[serde(skip_serializing_if = "Field::is_empty")]
    pub authz_dry_run: Field<'a>,
    #[serde(skip_serializing_if = "Field::is_empty")]
    pub authz_audit: Field<'a>,
    #[serde(skip)]
    pub request_headers: &'a [(String, String)],
    #[serde(skip)]
    pub response_headers: &'a [(String, String)],
    pub upstream_local_address: Field<'a>,
    pub requested_server_name: Field<'a>,
    pub connection_termination_details: Field<'a>,
    #[serde(skip)]
    pub attempt_count: u32,
}

fn flags_or_dash<S: Serializer>(flags: &Field<'_>, s: S) -> Result<S::Ok, S::Error> {
    match flags {
        Field::Str("") => s.serialize_str("-"),
        other => other.serialize(s),
    }
}

/// A duration in milliseconds as a header carries it: its decimal text.
fn header_millis<S: Serializer>(ms: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.collect_str(ms),
        None => s.serialize_none(),
    }
}

impl Line<'_> {
    /// The built-in JSON object.
    pub fn write_default_json(&self, out: &mut Vec<u8>) {
        // Plain data into a Vec: serializing cannot fail.
        let _ = serde_json::to_writer(out, self);
    }
}

/// What one line is made of, owned. Empty strings are "absent" (`-` in text, `null` in JSON).
/// Rendered through [`Entry::line`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Entry {
    pub start_time: String,
    pub method: String,
    pub path: String,
    pub protocol: String,
    pub response_code: u16,
    pub response_flags: String,
    pub response_code_details: String,
    pub upstream_transport_failure_reason: String,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration_ms: u64,
    pub upstream_service_time_ms: Option<u64>,
    pub x_forwarded_for: String,
    pub user_agent: String,
    pub request_id: String,
    pub authority: String,
    pub upstream_host: String,
    pub upstream_cluster: String,
    pub downstream_local_address: String,
    pub downstream_remote_address: String,
    /// A `forwarded: for=` address the waypoint could not verify against the peer's identity
    /// (`downstream_remote_address` is then the HBONE peer's own address).
    pub downstream_claimed_address: String,
    pub source_principal: String,
    /// The upstream's identity: the SPIFFE URI SAN its HBONE certificate proved, else the
    /// endpoint's known identity (Envoy `%UPSTREAM_PEER_URI_SAN%`, Istio `destination_principal`).
    pub destination_principal: String,
    pub route_name: String,
    /// The `traceparent` of the HBONE CONNECT that carried the request: links it to its tunnel.
    pub tunnel_traceparent: String,
    /// Version of the routing snapshot the request was served by.
    pub config_version: u64,
    /// The authorization decision (`allow|deny|custom_deny <policy>`), when policies applied.
    pub authz: String,
    /// What dry-run policies would have decided (`istio.io/dry-run`), when any applied.
    pub authz_dry_run: String,
    /// AUDIT rules the request matched.
    pub authz_audit: String,
    /// Request headers the template reads (names lowercase; [`super::AccessLog::request_headers`]).
    pub request_headers: Vec<(String, String)>,
    /// Response headers the template reads (names lowercase; [`super::AccessLog::response_headers`]).
    pub response_headers: Vec<(String, String)>,
    pub upstream_local_address: String,
    /// SNI of the downstream TLS connection, if any.
    pub requested_server_name: String,
    /// Why the waypoint closed the connection (a TCP policy denial), Envoy's
    /// `%CONNECTION_TERMINATION_DETAILS%`.
    pub connection_termination_details: String,
    /// Upstream attempts made (1 + retries); 0 when none was made.
    pub attempt_count: u32,
}

impl Entry {
    /// This entry as a [`Line`] (borrowed; no allocation).
    pub fn line(&self) -> Line<'_> {
        Line {
            start_time: (&self.start_time).into(),
            method: (&self.method).into(),
            path: (&self.path).into(),
            protocol: (&self.protocol).into(),
            response_code: self.response_code,
            response_flags: (&self.response_flags).into(),
            response_code_details: (&self.response_code_details).into(),
            upstream_transport_failure_reason: (&self.upstream_transport_failure_reason).into(),
            bytes_received: self.bytes_received,
            bytes_sent: self.bytes_sent,
            duration_ms: self.duration_ms,
            upstream_service_time_ms: self.upstream_service_time_ms,
            x_forwarded_for: (&self.x_forwarded_for).into(),
            user_agent: (&self.user_agent).into(),
            request_id: (&self.request_id).into(),
            authority: (&self.authority).into(),
            upstream_host: (&self.upstream_host).into(),
            upstream_cluster: (&self.upstream_cluster).into(),
            downstream_local_address: (&self.downstream_local_address).into(),
            downstream_remote_address: (&self.downstream_remote_address).into(),
            downstream_claimed_address: (&self.downstream_claimed_address).into(),
            source_principal: (&self.source_principal).into(),
            destination_principal: (&self.destination_principal).into(),
            route_name: (&self.route_name).into(),
            tunnel_traceparent: (&self.tunnel_traceparent).into(),
            config_version: self.config_version,
            authz: (&self.authz).into(),
            authz_dry_run: (&self.authz_dry_run).into(),
            authz_audit: (&self.authz_audit).into(),
            request_headers: &self.request_headers,
            response_headers: &self.response_headers,
            upstream_local_address: (&self.upstream_local_address).into(),
            requested_server_name: (&self.requested_server_name).into(),
            connection_termination_details: (&self.connection_termination_details).into(),
            attempt_count: self.attempt_count,
        }
    }
}
