//! Rendering a compiled template: every operator writes its value straight into the output
//! buffer (numbers as digits, addresses and identities through `Display`), then fixes it up in
//! place (the `-` of an absent value, `:N` truncation, `?query` and port stripping, JSON
//! escaping). No intermediate `String` per value or per line.

use std::cell::RefCell;
use std::io::Write as _;

use super::time::to_millis;
use super::{hostname, Op, Piece, Template, UNSPECIFIED};
use crate::telemetry::access_log::entry::{Field, Line};

/// What an operator wrote.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// Digits.
    Num,
    /// Text; nothing written is absent.
    Str,
    Absent,
}

/// Appends the decimal digits of `n`.
pub fn push_u64(out: &mut Vec<u8>, n: u64) {
    push_u64_padded(out, n, 1);
}

/// Appends the decimal digits of `n`, zero-padded to at least `width` (≤ 20) digits.
pub fn push_u64_padded(out: &mut Vec<u8>, mut n: u64, width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let i = i.min(buf.len() - width.min(buf.len()));
    out.extend_from_slice(&buf[i..]);
}

/// Cuts what was written after `start` to at most `max` bytes, at a character boundary.
fn truncate_at(out: &mut Vec<u8>, start: usize, max: Option<usize>) {
    let Some(max) = max else { return };
    if out.len() - start <= max {
        return;
    }
    let mut end = start + max;
    // `out[end]` exists (the value is longer); step back off UTF-8 continuation bytes.
    while end > start && out[end] & 0xC0 == 0x80 {
        end -= 1;
    }
    out.truncate(end);
}

/// Keeps only `out[from..to]` of what was written after `start`.
fn keep(out: &mut Vec<u8>, start: usize, from: usize, to: usize) {
    out.copy_within(from..to, start);
    out.truncate(start + (to - from));
}

/// What was written after `start`, as text (always UTF-8: only `str`s and `Display`s are written).
fn written(out: &[u8], start: usize) -> &str {
    std::str::from_utf8(&out[start..]).unwrap_or_default()
}

/// Writes the values of header `name` (lowercase) among `headers`, joined with `,` when
/// repeated; whether there was one.
fn captured(headers: &[(String, String)], name: &str, out: &mut Vec<u8>) -> bool {
    let mut any = false;
    for (_, v) in headers
        .iter()
        .filter(|(k, v)| k.eq_ignore_ascii_case(name) && !v.is_empty())
    {
        if any {
            out.push(b',');
        }
        out.extend_from_slice(v.as_bytes());
        any = true;
    }
    any
}

fn request_header(e: &Line<'_>, name: &str, out: &mut Vec<u8>) -> bool {
    let field = match name {
        ":method" => Some(&e.method),
        ":path" => Some(&e.path),
        ":authority" | "host" => Some(&e.authority),
        "x-request-id" => Some(&e.request_id),
        "x-forwarded-for" => Some(&e.x_forwarded_for),
        "user-agent" => Some(&e.user_agent),
        _ => None,
    };
    field.is_some_and(|f| f.write(out)) || captured(e.request_headers, name, out)
}

fn response_header(e: &Line<'_>, name: &str, out: &mut Vec<u8>) -> bool {
    captured(e.response_headers, name, out)
        || match name {
            "x-envoy-upstream-service-time" => match e.upstream_service_time_ms {
                Some(t) => {
                    push_u64(out, t);
                    true
                }
                None => false,
            },
            ":status" if e.response_code != 0 => {
                push_u64(out, u64::from(e.response_code));
                true
            }
            _ => false,
        }
}

/// `host:port` / `[v6]:port` → the address without the port.
fn without_port(f: &Field<'_>, out: &mut Vec<u8>) -> Kind {
    if let Field::Addr(a) = f {
        let _ = write!(out, "{}", a.ip());
        return Kind::Str;
    }
    let start = out.len();
    if !f.write(out) {
        return Kind::Absent;
    }
    let addr = written(out, start);
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        out.truncate(start);
        let _ = write!(out, "{}", sa.ip());
        return Kind::Str;
    }
    if addr.parse::<std::net::IpAddr>().is_ok() {
        return Kind::Str;
    }
    if let Some((host, port)) = addr.rsplit_once(':') {
        if !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let from = start + (host.as_ptr() as usize - addr.as_ptr() as usize);
            let to = from + host.len();
            keep(out, start, from, to);
        }
    }
    Kind::Str
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn trace_id(traceparent: &str) -> Option<&str> {
    let id = traceparent.trim().split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
        .then_some(id)
}

fn field(f: &Field<'_>, out: &mut Vec<u8>) -> Kind {
    if f.write(out) {
        Kind::Str
    } else {
        Kind::Absent
    }
}

impl Op {
    /// Appends this operator's value for `e` (nothing when absent).
    fn write(&self, e: &Line<'_>, out: &mut Vec<u8>) -> Kind {
        let num = |out: &mut Vec<u8>, n: u64| {
            push_u64(out, n);
            Kind::Num
        };
        match self {
            Op::StartTime(None) => field(&e.start_time, out),
            Op::StartTime(Some(f)) => {
                let dt = match e.start_time {
                    Field::Time(t) => Some(to_millis(t)),
                    Field::Str(s) => chrono::DateTime::parse_from_rfc3339(s).ok().map(Into::into),
                    _ => None,
                };
                match dt {
                    Some(dt) => {
                        f.write(dt, out);
                        Kind::Str
                    }
                    None => Kind::Absent,
                }
            }
            Op::Req {
                main,
                alt,
                without_query,
            } => {
                let start = out.len();
                let found = request_header(e, main, out)
                    || alt.as_deref().is_some_and(|a| request_header(e, a, out));
                if !found {
                    return Kind::Absent;
                }
                if *without_query {
                    if let Some(q) = out[start..].iter().position(|b| *b == b'?') {
                        out.truncate(start + q);
                    }
                }
                Kind::Str
            }
            Op::Resp { main, alt } => {
                let found = response_header(e, main, out)
                    || alt.as_deref().is_some_and(|a| response_header(e, a, out));
                if found {
                    Kind::Str
                } else {
                    Kind::Absent
                }
            }
            Op::Protocol => field(&e.protocol, out),
            Op::ResponseCode => num(out, u64::from(e.response_code)),
            // Envoy's `ResponseFlagUtils::toShortString`: `-` (a value, not absent) for none.
            Op::ResponseFlags => {
                if !e.response_flags.write(out) {
                    out.push(b'-');
                }
                Kind::Str
            }
            Op::ResponseCodeDetails => field(&e.response_code_details, out),
            Op::ConnectionTerminationDetails => field(&e.connection_termination_details, out),
            Op::UpstreamTransportFailureReason => field(&e.upstream_transport_failure_reason, out),
            Op::BytesReceived => num(out, e.bytes_received),
            Op::BytesSent => num(out, e.bytes_sent),
            Op::Duration => num(out, e.duration_ms),
            Op::ResponseDuration => match e.upstream_service_time_ms {
                Some(t) => num(out, t),
                None => Kind::Absent,
            },
            Op::UpstreamHost => field(&e.upstream_host, out),
            Op::UpstreamCluster => field(&e.upstream_cluster, out),
            Op::UpstreamLocalAddress => field(&e.upstream_local_address, out),
            Op::DownstreamLocalAddress => field(&e.downstream_local_address, out),
            Op::DownstreamLocalAddressWithoutPort => without_port(&e.downstream_local_address, out),
            Op::DownstreamRemoteAddress => field(&e.downstream_remote_address, out),
            Op::DownstreamRemoteAddressWithoutPort => {
                without_port(&e.downstream_remote_address, out)
            }
            Op::DownstreamPeerUriSan => field(&e.source_principal, out),
            Op::RequestedServerName => field(&e.requested_server_name, out),
            Op::RouteName => field(&e.route_name, out),
            Op::Hostname => field(&Field::Str(hostname().unwrap_or_default()), out),
            Op::UpstreamRequestAttemptCount => num(out, u64::from(e.attempt_count)),
            Op::TraceId => {
                let start = out.len();
                if !captured(e.request_headers, "traceparent", out) {
                    return Kind::Absent;
                }
                let tp = written(out, start);
                match trace_id(tp) {
                    Some(id) => {
                        let from = start + (id.as_ptr() as usize - tp.as_ptr() as usize);
                        let to = from + id.len();
                        keep(out, start, from, to);
                        Kind::Str
                    }
                    None => {
                        out.truncate(start);
                        Kind::Absent
                    }
                }
            }
            Op::TunnelTraceparent => field(&e.tunnel_traceparent, out),
            Op::ConfigVersion => num(out, e.config_version),
        }
    }
}

thread_local! {
    /// Room to escape a JSON string value that needs it (quotes, backslashes, control bytes).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Makes `out[start..]` (raw text) a JSON string body, escaped as serde_json escapes it.
fn escape_in_place(out: &mut Vec<u8>, start: usize) {
    let needs = out[start..]
        .iter()
        .any(|b| *b == b'"' || *b == b'\\' || *b < 0x20);
    if !needs {
        return;
    }
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        s.clear();
        s.extend_from_slice(&out[start..]);
        out.truncate(start);
        let text = std::str::from_utf8(&s).unwrap_or_default();
        // A JSON string: `"…"`; the quotes are added by the caller.
        let at = out.len();
        let _ = serde_json::to_writer(&mut *out, text);
        // Drop the quotes serde_json wrote around it.
        out.pop();
        out.remove(at);
    });
}

impl Template {
    /// Appends one text line (absent values as `-`).
    pub fn write_text(&self, e: &Line<'_>, out: &mut Vec<u8>) {
        for p in &self.pieces {
            match p {
                Piece::Literal(s) => out.extend_from_slice(s.as_bytes()),
                Piece::Op { op, max_len } => {
                    let start = out.len();
                    match op.write(e, out) {
                        Kind::Num => {}
                        _ if out.len() == start => out.extend_from_slice(UNSPECIFIED.as_bytes()),
                        _ => truncate_at(out, start, *max_len),
                    }
                }
            }
        }
    }

    /// Appends this template as a json_format value: a lone operator keeps its type (number /
    /// string / null); anything else is a string.
    pub(super) fn write_json(&self, e: &Line<'_>, out: &mut Vec<u8>) {
        if let [Piece::Op { op, max_len }] = self.pieces.as_slice() {
            let start = out.len();
            out.push(b'"');
            let kind = op.write(e, out);
            match kind {
                Kind::Num if op.is_numeric() => {
                    // Digits, unquoted.
                    out.remove(start);
                }
                _ if out.len() == start + 1 || kind == Kind::Absent => {
                    out.truncate(start);
                    out.extend_from_slice(b"null");
                }
                _ => {
                    if kind != Kind::Num {
                        truncate_at(out, start + 1, *max_len);
                    }
                    escape_in_place(out, start + 1);
                    out.push(b'"');
                }
            }
            return;
        }
        let start = out.len();
        out.push(b'"');
        self.write_text(e, out);
        escape_in_place(out, start + 1);
        out.push(b'"');
    }
}
