//! Envoy access log format strings ("command operators"), compiled once and rendered per line.
//!
//! A text template is a string with `%OPERATOR%`, `%OPERATOR(ARGS)%` or `%OPERATOR(ARGS):N%`
//! tokens (N = maximum length of the value, in bytes, cut at a character boundary); `%%` is a
//! literal percent sign. Any other `%` is an error, as in Envoy. Absent values render as `-`.
//!
//! A JSON template is Envoy's `json_format`: a JSON object whose string values are text templates
//! (nested objects allowed). A value that is exactly one numeric operator is written as a JSON
//! number; a value that is exactly one operator with no value is `null`. Key order is kept.
//!
//! Supported operators:
//! `START_TIME`, `START_TIME(strftime)`, `REQ(X?Y):N`, `REQ_WITHOUT_QUERY(X?Y):N`, `RESP(X?Y):N`,
//! `PROTOCOL`, `RESPONSE_CODE`, `RESPONSE_FLAGS`, `RESPONSE_CODE_DETAILS`,
//! `CONNECTION_TERMINATION_DETAILS`, `UPSTREAM_TRANSPORT_FAILURE_REASON`, `BYTES_RECEIVED`,
//! `BYTES_SENT`, `DURATION`, `RESPONSE_DURATION`, `UPSTREAM_HOST` (alias
//! `UPSTREAM_REMOTE_ADDRESS`), `UPSTREAM_CLUSTER` (alias `UPSTREAM_CLUSTER_RAW`),
//! `UPSTREAM_LOCAL_ADDRESS`, `DOWNSTREAM_LOCAL_ADDRESS`, `DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT`,
//! `DOWNSTREAM_REMOTE_ADDRESS`, `DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT`,
//! `DOWNSTREAM_PEER_URI_SAN`, `REQUESTED_SERVER_NAME`, `ROUTE_NAME`, `HOSTNAME`, `CONFIG_VERSION`
//! (waypoint extension: the routing snapshot that served the request),
//! `UPSTREAM_REQUEST_ATTEMPT_COUNT`, `TRACE_ID` (from the request's `traceparent`), and the
//! waypoint extension `TUNNEL_TRACEPARENT` (the `traceparent` of the HBONE CONNECT that carried
//! the request, linking it to its tunnel).
//!
//! Headers: `REQ(:METHOD)`, `REQ(:PATH)`, `REQ(:AUTHORITY)` (and `HOST`), `REQ(X-REQUEST-ID)`,
//! `REQ(X-FORWARDED-FOR)`, `REQ(USER-AGENT)` come from the [`Entry`] fields;
//! `RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)` is the captured header if any, else the entry's upstream
//! service time. `X-ENVOY-ORIGINAL-PATH` is never captured: the logged `:PATH` already is the
//! path the client sent, so `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%` logs it (and a client cannot
//! spoof the logged path with that header). Every other header is looked up in the entry's
//! captured `request_headers` / `response_headers`; [`Template::request_headers`] lists the ones
//! to capture.
//!
//! `START_TIME(fmt)` takes a chrono strftime string plus Envoy's `%f` / `%1f`..`%9f` (fractional
//! seconds, that many digits, no dot), `%E1S`..`%E9S` / `%E*S` (seconds with that many fractional
//! digits) and `%s` (epoch seconds). Envoy's default is `%Y-%m-%dT%H:%M:%S.%3fZ`.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::OnceLock;

use chrono::{DateTime, Timelike, Utc};

use super::Entry;

/// Istio's default text access log format (mesh config `accessLogFormat` left empty;
/// `EnvoyTextLogFormat` in istio/istio), without the trailing newline.
pub const ISTIO_DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% \
%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% \
%RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" \
%BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \
\"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \
\"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% \
%DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%";

/// What rendering writes for an absent value in text.
const UNSPECIFIED: &str = "-";

/// A template that cannot be compiled. Offsets are byte offsets into the template string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("unknown command operator {token} at offset {offset}")]
    UnknownOperator { token: String, offset: usize },
    #[error(
        "unterminated command operator at offset {offset} \
         (operators are %NAME%; write %% for a literal percent sign)"
    )]
    Unterminated { offset: usize },
    #[error("invalid command operator {token} at offset {offset}: {reason}")]
    Invalid {
        token: String,
        offset: usize,
        reason: String,
    },
    #[error("json_format: {0}")]
    Json(String),
    #[error("json_format key {key:?}: {source}")]
    InJsonKey {
        key: String,
        source: Box<TemplateError>,
    },
}

/// One piece of a compiled template.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Literal(String),
    Op { op: Op, max_len: Option<usize> },
}

#[derive(Debug, Clone, PartialEq)]
enum Op {
    /// `None`: the entry's `start_time` as is (Envoy's default format).
    StartTime(Option<TimeFormat>),
    Req {
        main: String,
        alt: Option<String>,
        without_query: bool,
    },
    Resp {
        main: String,
        alt: Option<String>,
    },
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    ResponseDuration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamPeerUriSan,
    RequestedServerName,
    RouteName,
    Hostname,
    UpstreamRequestAttemptCount,
    TraceId,
    TunnelTraceparent,
    ConfigVersion,
}

/// Argument shape an operator takes.
#[derive(Clone, Copy, PartialEq)]
enum Args {
    None,
    Optional,
    Required,
}

fn lookup(name: &str) -> Option<(Op, Args)> {
    use Op::*;
    let placeholder = |without_query| Req {
        main: String::new(),
        alt: None,
        without_query,
    };
    Some(match name {
        "START_TIME" => (StartTime(None), Args::Optional),
        "REQ" => (placeholder(false), Args::Required),
        "REQ_WITHOUT_QUERY" => (placeholder(true), Args::Required),
        "RESP" => (
            Resp {
                main: String::new(),
                alt: None,
            },
            Args::Required,
        ),
        "PROTOCOL" => (Protocol, Args::None),
        "RESPONSE_CODE" => (ResponseCode, Args::None),
        "RESPONSE_FLAGS" => (ResponseFlags, Args::None),
        "RESPONSE_CODE_DETAILS" => (ResponseCodeDetails, Args::None),
        "CONNECTION_TERMINATION_DETAILS" => (ConnectionTerminationDetails, Args::None),
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => (UpstreamTransportFailureReason, Args::None),
        "BYTES_RECEIVED" => (BytesReceived, Args::None),
        "BYTES_SENT" => (BytesSent, Args::None),
        "DURATION" => (Duration, Args::None),
        "RESPONSE_DURATION" => (ResponseDuration, Args::None),
        "UPSTREAM_HOST" | "UPSTREAM_REMOTE_ADDRESS" => (UpstreamHost, Args::None),
        "UPSTREAM_CLUSTER" | "UPSTREAM_CLUSTER_RAW" => (UpstreamCluster, Args::None),
        "UPSTREAM_LOCAL_ADDRESS" => (UpstreamLocalAddress, Args::None),
        "DOWNSTREAM_LOCAL_ADDRESS" => (DownstreamLocalAddress, Args::None),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => (DownstreamLocalAddressWithoutPort, Args::None),
        "DOWNSTREAM_REMOTE_ADDRESS" => (DownstreamRemoteAddress, Args::None),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" => {
            (DownstreamRemoteAddressWithoutPort, Args::None)
        }
        "DOWNSTREAM_PEER_URI_SAN" => (DownstreamPeerUriSan, Args::None),
        "REQUESTED_SERVER_NAME" => (RequestedServerName, Args::None),
        "ROUTE_NAME" => (RouteName, Args::None),
        "HOSTNAME" => (Hostname, Args::None),
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => (UpstreamRequestAttemptCount, Args::None),
        "TRACE_ID" => (TraceId, Args::None),
        "TUNNEL_TRACEPARENT" => (TunnelTraceparent, Args::None),
        "CONFIG_VERSION" => (ConfigVersion, Args::None),
        _ => return None,
    })
}

impl Op {
    /// Operators whose value is a number (a JSON number when alone in a json_format value).
    fn is_numeric(&self) -> bool {
        matches!(
            self,
            Op::ResponseCode
                | Op::BytesReceived
                | Op::BytesSent
                | Op::Duration
                | Op::ResponseDuration
                | Op::UpstreamRequestAttemptCount
                | Op::ConfigVersion
        )
    }
}

/// Request headers the [`Entry`] carries as fields (lowercase).
fn covered_request_header(name: &str) -> bool {
    matches!(
        name,
        ":method"
            | ":path"
            | ":authority"
            | "host"
            | "x-request-id"
            | "x-forwarded-for"
            | "user-agent"
            | "x-envoy-original-path"
    )
}

/// Response headers the [`Entry`] carries as fields (lowercase).
fn covered_response_header(name: &str) -> bool {
    matches!(name, ":status" | "x-envoy-upstream-service-time")
}

/// A rendered value.
enum Val<'a> {
    Str(Cow<'a, str>),
    Num(u64),
    Absent,
}

fn opt_str(s: &str) -> Val<'_> {
    if s.is_empty() {
        Val::Absent
    } else {
        Val::Str(Cow::Borrowed(s))
    }
}

fn non_empty(s: &str) -> Option<Cow<'_, str>> {
    (!s.is_empty()).then_some(Cow::Borrowed(s))
}

/// The values of header `name` (lowercase) among `headers`, joined with `,` when repeated.
fn captured<'a>(headers: &'a [(String, String)], name: &str) -> Option<Cow<'a, str>> {
    let mut values = headers
        .iter()
        .filter(|(k, v)| k.eq_ignore_ascii_case(name) && !v.is_empty())
        .map(|(_, v)| v.as_str());
    let first = values.next()?;
    match values.next() {
        None => Some(Cow::Borrowed(first)),
        Some(second) => {
            let mut joined = format!("{first},{second}");
            for v in values {
                joined.push(',');
                joined.push_str(v);
            }
            Some(Cow::Owned(joined))
        }
    }
}

fn request_header<'a>(e: &'a Entry, name: &str) -> Option<Cow<'a, str>> {
    let field = match name {
        ":method" => non_empty(&e.method),
        ":path" => non_empty(&e.path),
        ":authority" | "host" => non_empty(&e.authority),
        "x-request-id" => non_empty(&e.request_id),
        "x-forwarded-for" => non_empty(&e.x_forwarded_for),
        "user-agent" => non_empty(&e.user_agent),
        _ => None,
    };
    field.or_else(|| captured(&e.request_headers, name))
}

fn response_header<'a>(e: &'a Entry, name: &str) -> Option<Cow<'a, str>> {
    captured(&e.response_headers, name).or_else(|| match name {
        "x-envoy-upstream-service-time" => e
            .upstream_service_time_ms
            .map(|t| Cow::Owned(t.to_string())),
        ":status" if e.response_code != 0 => Some(Cow::Owned(e.response_code.to_string())),
        _ => None,
    })
}

/// `host:port` / `[v6]:port` → the address without the port.
fn without_port(addr: &str) -> Val<'_> {
    if addr.is_empty() {
        return Val::Absent;
    }
    if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
        return Val::Str(Cow::Owned(sa.ip().to_string()));
    }
    if addr.parse::<std::net::IpAddr>().is_ok() {
        return Val::Str(Cow::Borrowed(addr));
    }
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            Val::Str(Cow::Borrowed(
                host.trim_start_matches('[').trim_end_matches(']'),
            ))
        }
        _ => Val::Str(Cow::Borrowed(addr)),
    }
}

/// The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`).
fn trace_id(traceparent: &str) -> Option<&str> {
    let id = traceparent.trim().split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id.bytes().any(|b| b != b'0'))
        .then_some(id)
}

/// This machine's host name (Envoy's `%HOSTNAME%`), looked up once.
pub fn hostname() -> Option<&'static str> {
    static HOSTNAME: OnceLock<Option<String>> = OnceLock::new();
    HOSTNAME
        .get_or_init(|| {
            let from_env = std::env::var("HOSTNAME").ok();
            from_env
                .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .as_deref()
}

/// Truncates to at most `max` bytes at a character boundary.
fn truncate(s: Cow<'_, str>, max: Option<usize>) -> Cow<'_, str> {
    let Some(max) = max else { return s };
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    match s {
        Cow::Borrowed(b) => Cow::Borrowed(&b[..end]),
        Cow::Owned(mut o) => {
            o.truncate(end);
            Cow::Owned(o)
        }
    }
}

impl Op {
    fn value<'a>(&self, e: &'a Entry) -> Val<'a> {
        match self {
            Op::StartTime(None) => opt_str(&e.start_time),
            Op::StartTime(Some(f)) => match f.render(&e.start_time) {
                Some(s) => Val::Str(Cow::Owned(s)),
                None => Val::Absent,
            },
            Op::Req {
                main,
                alt,
                without_query,
            } => {
                let v = request_header(e, main)
                    .or_else(|| alt.as_deref().and_then(|a| request_header(e, a)));
                match v {
                    Some(v) if *without_query => match v.find('?') {
                        Some(q) => Val::Str(Cow::Owned(v[..q].to_string())),
                        None => Val::Str(v),
                    },
                    Some(v) => Val::Str(v),
                    None => Val::Absent,
                }
            }
            Op::Resp { main, alt } => response_header(e, main)
                .or_else(|| alt.as_deref().and_then(|a| response_header(e, a)))
                .map_or(Val::Absent, Val::Str),
            Op::Protocol => opt_str(&e.protocol),
            Op::ResponseCode => Val::Num(u64::from(e.response_code)),
            Op::ResponseFlags => opt_str(&e.response_flags),
            Op::ResponseCodeDetails => opt_str(&e.response_code_details),
            Op::ConnectionTerminationDetails => opt_str(&e.connection_termination_details),
            Op::UpstreamTransportFailureReason => opt_str(&e.upstream_transport_failure_reason),
            Op::BytesReceived => Val::Num(e.bytes_received),
            Op::BytesSent => Val::Num(e.bytes_sent),
            Op::Duration => Val::Num(e.duration_ms),
            Op::ResponseDuration => e.upstream_service_time_ms.map_or(Val::Absent, Val::Num),
            Op::UpstreamHost => opt_str(&e.upstream_host),
            Op::UpstreamCluster => opt_str(&e.upstream_cluster),
            Op::UpstreamLocalAddress => opt_str(&e.upstream_local_address),
            Op::DownstreamLocalAddress => opt_str(&e.downstream_local_address),
            Op::DownstreamLocalAddressWithoutPort => without_port(&e.downstream_local_address),
            Op::DownstreamRemoteAddress => opt_str(&e.downstream_remote_address),
            Op::DownstreamRemoteAddressWithoutPort => without_port(&e.downstream_remote_address),
            Op::DownstreamPeerUriSan => opt_str(&e.source_principal),
            Op::RequestedServerName => opt_str(&e.requested_server_name),
            Op::RouteName => opt_str(&e.route_name),
            Op::Hostname => hostname().map_or(Val::Absent, |h| Val::Str(Cow::Borrowed(h))),
            Op::UpstreamRequestAttemptCount => Val::Num(u64::from(e.attempt_count)),
            Op::TraceId => match captured(&e.request_headers, "traceparent") {
                Some(tp) => match trace_id(&tp) {
                    Some(id) => Val::Str(Cow::Owned(id.to_string())),
                    None => Val::Absent,
                },
                None => Val::Absent,
            },
            Op::TunnelTraceparent => opt_str(&e.tunnel_traceparent),
            Op::ConfigVersion => Val::Num(e.config_version),
        }
    }
}

/// A `START_TIME(...)` format, split into chrono strftime runs and Envoy's own specifiers.
#[derive(Debug, Clone, PartialEq)]
struct TimeFormat(Vec<TimePiece>);

#[derive(Debug, Clone, PartialEq)]
enum TimePiece {
    /// A run of chrono strftime, validated at parse time.
    Chrono(String),
    /// `%Nf`: N fractional-second digits, no dot.
    Fraction(u8),
    /// `%ENS`: two-digit seconds, then a dot and N fractional digits when N > 0.
    SecondsFraction(u8),
}

impl TimeFormat {
    fn parse(fmt: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut run = String::new();
        let mut rest = fmt;
        while let Some(at) = rest.find('%') {
            run.push_str(&rest[..at]);
            let spec = &rest[at + 1..];
            let b = spec.as_bytes();
            let (piece, used) = match b {
                [b'f', ..] => (Some(TimePiece::Fraction(9)), 1),
                [d @ b'1'..=b'9', b'f', ..] => (Some(TimePiece::Fraction(d - b'0')), 2),
                [b'E', d @ b'0'..=b'9', b'S', ..] => {
                    (Some(TimePiece::SecondsFraction(d - b'0')), 3)
                }
                [b'E', b'*', b'S', ..] => (Some(TimePiece::SecondsFraction(9)), 3),
                _ => (None, 0),
            };
            match piece {
                Some(p) => {
                    if !run.is_empty() {
                        pieces.push(TimePiece::Chrono(std::mem::take(&mut run)));
                    }
                    pieces.push(p);
                    rest = &spec[used..];
                }
                None => {
                    // Keep `%` and the character after it together, so `%%`, `%.3f`, `%-d`
                    // reach chrono whole.
                    run.push('%');
                    match spec.chars().next() {
                        Some(c) => {
                            run.push(c);
                            rest = &spec[c.len_utf8()..];
                        }
                        None => rest = spec,
                    }
                }
            }
        }
        run.push_str(rest);
        if !run.is_empty() {
            pieces.push(TimePiece::Chrono(run));
        }
        for p in &pieces {
            if let TimePiece::Chrono(s) = p {
                let bad = chrono::format::StrftimeItems::new(s)
                    .any(|i| matches!(i, chrono::format::Item::Error));
                if bad {
                    return Err(format!("unsupported time format {s:?}"));
                }
            }
        }
        Ok(Self(pieces))
    }

    /// `None` when the entry's start time is not an RFC 3339 timestamp.
    fn render(&self, start_time: &str) -> Option<String> {
        let dt: DateTime<Utc> = DateTime::parse_from_rfc3339(start_time).ok()?.into();
        let nanos = format!("{:09}", dt.nanosecond() % 1_000_000_000);
        let mut out = String::new();
        for p in &self.0 {
            match p {
                TimePiece::Chrono(s) => {
                    // Validated when parsed; an error here would only cut the value short.
                    let _ = write!(out, "{}", dt.format(s));
                }
                TimePiece::Fraction(n) => out.push_str(&nanos[..usize::from(*n)]),
                TimePiece::SecondsFraction(n) => {
                    let _ = write!(out, "{:02}", dt.second());
                    if *n > 0 {
                        out.push('.');
                        out.push_str(&nanos[..usize::from(*n)]);
                    }
                }
            }
        }
        Some(out)
    }
}

fn header_arg(args: &str) -> Result<(String, Option<String>), String> {
    let mut names = args.split('?');
    let main = names.next().unwrap_or_default();
    let alt = names.next();
    if names.next().is_some() {
        return Err("more than one alternative header (X?Y) given".into());
    }
    let check = |n: &str| -> Result<String, String> {
        if n.is_empty() {
            return Err("empty header name".into());
        }
        if let Some(c) = n
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == '%')
        {
            return Err(format!("header name {n:?} contains {c:?}"));
        }
        Ok(n.to_ascii_lowercase())
    };
    Ok((check(main)?, alt.map(check).transpose()?))
}

/// A compiled Envoy text format string.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pieces: Vec<Piece>,
}

impl Template {
    /// Compiles an Envoy format string.
    pub fn parse(src: &str) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let bytes = src.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let Some(rel) = src[i..].find('%') else {
                literal.push_str(&src[i..]);
                break;
            };
            let start = i + rel;
            literal.push_str(&src[i..start]);
            if bytes.get(start + 1) == Some(&b'%') {
                literal.push('%');
                i = start + 2;
                continue;
            }
            let (piece, end) = parse_operator(src, start)?;
            if !literal.is_empty() {
                pieces.push(Piece::Literal(std::mem::take(&mut literal)));
            }
            pieces.push(piece);
            i = end;
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        Ok(Self { pieces })
    }

    /// Istio's default text format, compiled.
    pub fn istio_default() -> &'static Template {
        static DEFAULT: OnceLock<Template> = OnceLock::new();
        DEFAULT.get_or_init(|| {
            Template::parse(ISTIO_DEFAULT_FORMAT).expect("Istio's default format compiles")
        })
    }

    /// Renders one text line (absent values as `-`).
    pub fn render(&self, e: &Entry) -> String {
        let mut out = String::with_capacity(256);
        self.render_into(e, &mut out);
        out
    }

    fn render_into(&self, e: &Entry, out: &mut String) {
        for p in &self.pieces {
            match p {
                Piece::Literal(s) => out.push_str(s),
                Piece::Op { op, max_len } => match op.value(e) {
                    Val::Str(s) if s.is_empty() => out.push_str(UNSPECIFIED),
                    Val::Str(s) => out.push_str(&truncate(s, *max_len)),
                    Val::Num(n) => {
                        let _ = write!(out, "{n}");
                    }
                    Val::Absent => out.push_str(UNSPECIFIED),
                },
            }
        }
    }

    /// As a json_format value: a lone operator keeps its type (number / string / null).
    fn render_json(&self, e: &Entry, out: &mut String) {
        if let [Piece::Op { op, max_len }] = self.pieces.as_slice() {
            match op.value(e) {
                Val::Num(n) if op.is_numeric() => {
                    let _ = write!(out, "{n}");
                }
                Val::Num(n) => write_json_str(out, &n.to_string()),
                Val::Str(s) if s.is_empty() => out.push_str("null"),
                Val::Str(s) => write_json_str(out, &truncate(s, *max_len)),
                Val::Absent => out.push_str("null"),
            }
            return;
        }
        let mut s = String::new();
        self.render_into(e, &mut s);
        write_json_str(out, &s);
    }

    fn collect_headers(&self, req: &mut Vec<String>, resp: &mut Vec<String>) {
        let add = |list: &mut Vec<String>, name: &str| {
            if !list.iter().any(|n| n == name) {
                list.push(name.to_string());
            }
        };
        for p in &self.pieces {
            let Piece::Op { op, .. } = p else { continue };
            match op {
                Op::Req { main, alt, .. } => {
                    for n in std::iter::once(main).chain(alt) {
                        if !covered_request_header(n) {
                            add(req, n);
                        }
                    }
                }
                Op::Resp { main, alt } => {
                    for n in std::iter::once(main).chain(alt) {
                        if !covered_response_header(n) {
                            add(resp, n);
                        }
                    }
                }
                Op::TraceId => add(req, "traceparent"),
                _ => {}
            }
        }
    }

    /// Lowercase request headers the template reads that [`Entry`] has no field for.
    pub fn request_headers(&self) -> Vec<String> {
        let (mut req, mut resp) = (Vec::new(), Vec::new());
        self.collect_headers(&mut req, &mut resp);
        req
    }

    /// Lowercase response headers the template reads that [`Entry`] has no field for.
    pub fn response_headers(&self) -> Vec<String> {
        let (mut req, mut resp) = (Vec::new(), Vec::new());
        self.collect_headers(&mut req, &mut resp);
        resp
    }
}

/// Parses the operator whose `%` is at `start`; returns it and the offset just past its closing
/// `%`.
fn parse_operator(src: &str, start: usize) -> Result<(Piece, usize), TemplateError> {
    let bytes = src.as_bytes();
    let name_start = start + 1;
    let mut i = name_start;
    while i < bytes.len()
        && (bytes[i].is_ascii_uppercase() || bytes[i].is_ascii_digit() || bytes[i] == b'_')
    {
        i += 1;
    }
    let name = &src[name_start..i];
    // Where the token (for messages) ends: the next `%` if any, else the end.
    let token_until = |from: usize| -> String {
        match src[from..].find('%') {
            Some(p) => src[start..from + p + 1].to_string(),
            None => src[start..].to_string(),
        }
    };
    if i >= bytes.len() {
        return Err(TemplateError::Unterminated { offset: start });
    }
    if name.is_empty() {
        return Err(TemplateError::Invalid {
            token: "%".into(),
            offset: start,
            reason: "expected an operator name (A-Z, 0-9, _) after '%'; \
                     write %% for a literal percent sign"
                .into(),
        });
    }
    let mut args = None;
    if bytes[i] == b'(' {
        let Some(close) = src[i + 1..].find(')') else {
            return Err(TemplateError::Unterminated { offset: start });
        };
        args = Some(&src[i + 1..i + 1 + close]);
        i = i + 1 + close + 1;
    }
    let mut max_len = None;
    if i < bytes.len() && bytes[i] == b':' {
        let digits_start = i + 1;
        let mut j = digits_start;
        while j < bytes.len() && bytes[j].is_ascii_digit() {
            j += 1;
        }
        let digits = &src[digits_start..j];
        if digits.is_empty() {
            return Err(TemplateError::Invalid {
                token: token_until(i),
                offset: start,
                reason: "expected a maximum length (digits) after ':'".into(),
            });
        }
        max_len = Some(
            digits
                .parse::<usize>()
                .map_err(|_| TemplateError::Invalid {
                    token: token_until(i),
                    offset: start,
                    reason: format!("maximum length {digits} is too large"),
                })?,
        );
        i = j;
    }
    if i >= bytes.len() {
        return Err(TemplateError::Unterminated { offset: start });
    }
    if bytes[i] != b'%' {
        return Err(TemplateError::Invalid {
            token: token_until(i),
            offset: start,
            reason: "expected '%' to close the operator".into(),
        });
    }
    let end = i + 1;
    let token = &src[start..end];
    let invalid = |reason: String| TemplateError::Invalid {
        token: token.to_string(),
        offset: start,
        reason,
    };
    let Some((op, shape)) = lookup(name) else {
        return Err(TemplateError::UnknownOperator {
            token: token.to_string(),
            offset: start,
        });
    };
    let op = match (shape, args) {
        (Args::None, Some(_)) => return Err(invalid(format!("%{name}% takes no arguments"))),
        (Args::Required, None) => {
            return Err(invalid(format!(
                "%{name}% needs a header name, e.g. %{name}(X-REQUEST-ID)%"
            )))
        }
        (_, None) => op,
        (_, Some(a)) => match op {
            Op::StartTime(_) if a.is_empty() => Op::StartTime(None),
            Op::StartTime(_) => Op::StartTime(Some(TimeFormat::parse(a).map_err(invalid)?)),
            Op::Req { without_query, .. } => {
                let (main, alt) = header_arg(a).map_err(invalid)?;
                Op::Req {
                    main,
                    alt,
                    without_query,
                }
            }
            Op::Resp { .. } => {
                let (main, alt) = header_arg(a).map_err(invalid)?;
                Op::Resp { main, alt }
            }
            other => other,
        },
    };
    Ok((Piece::Op { op, max_len }, end))
}

fn write_json_str(out: &mut String, s: &str) {
    // Serializing a str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "null".to_string()));
}

/// A compiled Envoy `json_format`: keys in the order given, values text templates, nested
/// objects, or JSON constants written as is.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonTemplate {
    fields: Vec<(String, JsonValue)>,
}

#[derive(Debug, Clone, PartialEq)]
enum JsonValue {
    Template(Template),
    Object(Vec<(String, JsonValue)>),
    /// A number, boolean or null from the format, written back verbatim.
    Constant(String),
}

/// The json_format object as parsed, order kept.
enum RawJson {
    Str(String),
    Obj(Vec<(String, RawJson)>),
    Constant(String),
}

impl<'de> serde::Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawJson;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, an object, a number, a boolean or null")
            }
            fn visit_str<E>(self, v: &str) -> Result<RawJson, E> {
                Ok(RawJson::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<RawJson, E> {
                Ok(RawJson::Str(v))
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawJson, E> {
                Ok(RawJson::Constant(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawJson, E> {
                Ok(RawJson::Constant(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawJson, E> {
                Ok(RawJson::Constant(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RawJson, E> {
                serde_json::to_string(&v)
                    .map(RawJson::Constant)
                    .map_err(E::custom)
            }
            fn visit_unit<E>(self) -> Result<RawJson, E> {
                Ok(RawJson::Constant("null".into()))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<RawJson, A::Error> {
                Err(serde::de::Error::custom("arrays are not supported"))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawJson, A::Error> {
                let mut fields: Vec<(String, RawJson)> = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, RawJson>()? {
                    if fields.iter().any(|(existing, _)| *existing == k) {
                        return Err(serde::de::Error::custom(format!("duplicate key {k:?}")));
                    }
                    fields.push((k, v));
                }
                Ok(RawJson::Obj(fields))
            }
        }
        d.deserialize_any(V)
    }
}

fn compile_object(raw: Vec<(String, RawJson)>) -> Result<Vec<(String, JsonValue)>, TemplateError> {
    raw.into_iter()
        .map(|(k, v)| {
            let compiled = match v {
                RawJson::Str(s) => Template::parse(&s).map(JsonValue::Template),
                RawJson::Obj(o) => compile_object(o).map(JsonValue::Object),
                RawJson::Constant(c) => Ok(JsonValue::Constant(c)),
            };
            match compiled {
                Ok(c) => Ok((k, c)),
                Err(e) => Err(TemplateError::InJsonKey {
                    key: k,
                    source: Box::new(e),
                }),
            }
        })
        .collect()
}

fn render_object(fields: &[(String, JsonValue)], e: &Entry, out: &mut String) {
    out.push('{');
    for (n, (k, v)) in fields.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        write_json_str(out, k);
        out.push(':');
        match v {
            JsonValue::Template(t) => t.render_json(e, out),
            JsonValue::Object(o) => render_object(o, e, out),
            JsonValue::Constant(c) => out.push_str(c),
        }
    }
    out.push('}');
}

fn visit_templates<'a>(fields: &'a [(String, JsonValue)], f: &mut dyn FnMut(&'a Template)) {
    for (_, v) in fields {
        match v {
            JsonValue::Template(t) => f(t),
            JsonValue::Object(o) => visit_templates(o, f),
            JsonValue::Constant(_) => {}
        }
    }
}

impl JsonTemplate {
    /// Compiles a json_format object string, e.g. `{"code":"%RESPONSE_CODE%"}`.
    pub fn parse(src: &str) -> Result<Self, TemplateError> {
        let raw: RawJson =
            serde_json::from_str(src).map_err(|e| TemplateError::Json(e.to_string()))?;
        match raw {
            RawJson::Obj(fields) => Ok(Self {
                fields: compile_object(fields)?,
            }),
            _ => Err(TemplateError::Json(
                "expected a JSON object mapping keys to format strings".into(),
            )),
        }
    }

    /// Renders one JSON object (one line).
    pub fn render(&self, e: &Entry) -> String {
        let mut out = String::with_capacity(512);
        render_object(&self.fields, e, &mut out);
        out
    }

    /// Lowercase request headers the templates read that [`Entry`] has no field for.
    pub fn request_headers(&self) -> Vec<String> {
        self.headers().0
    }

    /// Lowercase response headers the templates read that [`Entry`] has no field for.
    pub fn response_headers(&self) -> Vec<String> {
        self.headers().1
    }

    fn headers(&self) -> (Vec<String>, Vec<String>) {
        let (mut req, mut resp) = (Vec::new(), Vec::new());
        visit_templates(&self.fields, &mut |t| {
            t.collect_headers(&mut req, &mut resp)
        });
        (req, resp)
    }
}

/// `%PROTOCOL%` as Envoy writes it (`Http::Utility::getProtocolString`): `HTTP/1.0`, `HTTP/1.1`,
/// `HTTP/2`, `HTTP/3` (not `http::Version`'s `Debug`, which says `HTTP/2.0`).
pub fn protocol_name(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_is_named_as_envoy_names_it() {
        use http::Version;
        for (v, name) in [
            (Version::HTTP_10, "HTTP/1.0"),
            (Version::HTTP_11, "HTTP/1.1"),
            (Version::HTTP_2, "HTTP/2"),
            (Version::HTTP_3, "HTTP/3"),
        ] {
            assert_eq!(protocol_name(v), name);
            let e = Entry {
                protocol: protocol_name(v).into(),
                ..Entry::default()
            };
            assert_eq!(render("%PROTOCOL%", &e), name);
        }
    }

    fn known() -> Entry {
        Entry {
            start_time: "2026-03-04T05:06:07.089Z".into(),
            method: "GET".into(),
            path: "/reviews/7?x=1".into(),
            protocol: "HTTP/1.1".into(),
            response_code: 200,
            response_flags: "".into(),
            response_code_details: "via_upstream".into(),
            upstream_transport_failure_reason: "".into(),
            bytes_received: 12,
            bytes_sent: 345,
            duration_ms: 17,
            upstream_service_time_ms: Some(15),
            x_forwarded_for: "192.0.2.7".into(),
            user_agent: "e2e-agent/1.0".into(),
            request_id: "req-123".into(),
            authority: "reviews:9080".into(),
            upstream_host: "10.0.0.9:9080".into(),
            upstream_cluster: "inbound-vip|9080|http/v1|reviews.default.svc.cluster.local".into(),
            downstream_local_address: "10.96.0.10:9080".into(),
            downstream_remote_address: "10.244.1.5:40280".into(),
            downstream_claimed_address: String::new(),
            source_principal: "spiffe://cluster.local/ns/default/sa/productpage".into(),
            destination_principal: "spiffe://cluster.local/ns/default/sa/reviews".into(),
            route_name: "reviews.0".into(),
            request_headers: vec![
                ("x-tenant".into(), "acme".into()),
                (":scheme".into(), "http".into()),
                (
                    "traceparent".into(),
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                ),
            ],
            response_headers: vec![("content-type".into(), "application/json".into())],
            upstream_local_address: "10.0.0.2:51000".into(),
            requested_server_name: "outbound_.9080_._.reviews.default.svc.cluster.local".into(),
            connection_termination_details: "".into(),
            attempt_count: 2,
            config_version: 7,
            tunnel_traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            authz: String::new(),
            authz_dry_run: String::new(),
            authz_audit: String::new(),
        }
    }

    fn render(t: &str, e: &Entry) -> String {
        Template::parse(t)
            .unwrap_or_else(|err| panic!("{t}: {err}"))
            .render(e)
    }

    #[test]
    fn every_operator() {
        let e = known();
        let host = hostname().unwrap_or("-");
        let table: &[(&str, &str)] = &[
            ("%START_TIME%", "2026-03-04T05:06:07.089Z"),
            (
                "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
                "2026-03-04T05:06:07.089Z",
            ),
            (
                "%START_TIME(%Y/%m/%d %H:%M:%E3S)%",
                "2026/03/04 05:06:07.089",
            ),
            ("%START_TIME(%s.%6f)%", "1772600767.089000"),
            ("%START_TIME(%f)%", "089000000"),
            ("%START_TIME(%d %%)%", "04 %"),
            ("%REQ(:METHOD)%", "GET"),
            ("%REQ(:PATH)%", "/reviews/7?x=1"),
            ("%REQ_WITHOUT_QUERY(:PATH)%", "/reviews/7"),
            ("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "/reviews/7?x=1"),
            ("%REQ(:AUTHORITY)%", "reviews:9080"),
            ("%REQ(HOST)%", "reviews:9080"),
            ("%REQ(:SCHEME)%", "http"),
            ("%REQ(X-REQUEST-ID)%", "req-123"),
            ("%REQ(X-FORWARDED-FOR)%", "192.0.2.7"),
            ("%REQ(USER-AGENT)%", "e2e-agent/1.0"),
            ("%REQ(X-Tenant)%", "acme"),
            ("%REQ(X-MISSING)%", "-"),
            ("%RESP(CONTENT-TYPE)%", "application/json"),
            ("%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", "15"),
            ("%RESP(:STATUS)%", "200"),
            ("%RESP(X-MISSING)%", "-"),
            ("%PROTOCOL%", "HTTP/1.1"),
            ("%RESPONSE_CODE%", "200"),
            ("%RESPONSE_FLAGS%", "-"),
            ("%RESPONSE_CODE_DETAILS%", "via_upstream"),
            ("%CONNECTION_TERMINATION_DETAILS%", "-"),
            ("%UPSTREAM_TRANSPORT_FAILURE_REASON%", "-"),
            ("%BYTES_RECEIVED%", "12"),
            ("%BYTES_SENT%", "345"),
            ("%DURATION%", "17"),
            ("%RESPONSE_DURATION%", "15"),
            ("%UPSTREAM_HOST%", "10.0.0.9:9080"),
            ("%UPSTREAM_REMOTE_ADDRESS%", "10.0.0.9:9080"),
            (
                "%UPSTREAM_CLUSTER%",
                "inbound-vip|9080|http/v1|reviews.default.svc.cluster.local",
            ),
            (
                "%UPSTREAM_CLUSTER_RAW%",
                "inbound-vip|9080|http/v1|reviews.default.svc.cluster.local",
            ),
            ("%UPSTREAM_LOCAL_ADDRESS%", "10.0.0.2:51000"),
            ("%DOWNSTREAM_LOCAL_ADDRESS%", "10.96.0.10:9080"),
            ("%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%", "10.96.0.10"),
            ("%DOWNSTREAM_REMOTE_ADDRESS%", "10.244.1.5:40280"),
            ("%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%", "10.244.1.5"),
            (
                "%DOWNSTREAM_PEER_URI_SAN%",
                "spiffe://cluster.local/ns/default/sa/productpage",
            ),
            (
                "%REQUESTED_SERVER_NAME%",
                "outbound_.9080_._.reviews.default.svc.cluster.local",
            ),
            ("%ROUTE_NAME%", "reviews.0"),
            ("%CONFIG_VERSION%", "7"),
            ("%HOSTNAME%", host),
            ("%UPSTREAM_REQUEST_ATTEMPT_COUNT%", "2"),
            ("%TRACE_ID%", "4bf92f3577b34da6a3ce929d0e0e4736"),
            (
                "%TUNNEL_TRACEPARENT%",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("100%% %RESPONSE_CODE%%%", "100% 200%"),
            ("", ""),
            ("no operators", "no operators"),
        ];
        for (t, want) in table {
            assert_eq!(render(t, &e), *want, "template {t}");
        }
    }

    #[test]
    fn absent_values_are_dashes() {
        let e = Entry::default();
        for t in [
            "%START_TIME%",
            "%START_TIME(%Y)%",
            "%REQ(:METHOD)%",
            "%REQ(:PATH)%",
            "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
            "%RESP(:STATUS)%",
            "%RESPONSE_DURATION%",
            "%PROTOCOL%",
            "%UPSTREAM_HOST%",
            "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
            "%TRACE_ID%",
            "%TUNNEL_TRACEPARENT%",
        ] {
            assert_eq!(render(t, &e), "-", "{t}");
        }
        assert_eq!(render("%RESPONSE_CODE% %BYTES_SENT%", &e), "0 0");
    }

    #[test]
    fn header_fallback_and_truncation() {
        let mut e = known();
        e.request_headers
            .push(("x-envoy-original-path".into(), "/original".into()));
        assert_eq!(
            render("%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", &e),
            "/original"
        );
        assert_eq!(render("%REQ(X-MISSING?X-TENANT)%", &e), "acme");
        assert_eq!(render("%REQ(X-MISSING?X-OTHER)%", &e), "-");
        assert_eq!(render("%REQ(USER-AGENT):3%", &e), "e2e");
        assert_eq!(render("%REQ(X-MISSING?USER-AGENT):6%", &e), "e2e-ag");
        assert_eq!(render("%REQ(USER-AGENT):0%", &e), "");
        assert_eq!(render("%REQ(USER-AGENT):100%", &e), "e2e-agent/1.0");
        assert_eq!(render("%RESP(X-NONE?CONTENT-TYPE):11%", &e), "application");
        // Cut at a character boundary, never inside one.
        e.user_agent = "héllo".into();
        assert_eq!(render("%REQ(USER-AGENT):2%", &e), "h");
        // Repeated headers are joined.
        e.request_headers.push(("x-tenant".into(), "other".into()));
        assert_eq!(render("%REQ(X-TENANT)%", &e), "acme,other");
        // A captured upstream service time header wins over the entry's.
        e.response_headers
            .push(("x-envoy-upstream-service-time".into(), "9".into()));
        assert_eq!(render("%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", &e), "9");
    }

    #[test]
    fn errors_name_the_operator_and_offset() {
        let cases: &[(&str, TemplateError)] = &[
            (
                "[%START_TIME%] %FOO% x",
                TemplateError::UnknownOperator {
                    token: "%FOO%".into(),
                    offset: 15,
                },
            ),
            (
                "%BAR(x):3%",
                TemplateError::UnknownOperator {
                    token: "%BAR(x):3%".into(),
                    offset: 0,
                },
            ),
            ("abc %DURATION", TemplateError::Unterminated { offset: 4 }),
            ("abc %REQ(X", TemplateError::Unterminated { offset: 4 }),
            ("abc %REQ(X):12", TemplateError::Unterminated { offset: 4 }),
            ("trailing %", TemplateError::Unterminated { offset: 9 }),
        ];
        for (t, want) in cases {
            assert_eq!(Template::parse(t).unwrap_err(), *want, "{t}");
        }
        assert_eq!(
            Template::parse("[%START_TIME%] %FOO% x")
                .unwrap_err()
                .to_string(),
            "unknown command operator %FOO% at offset 15"
        );
        for (t, offset) in [
            ("50% off", 2),
            ("%req(x)%", 0),
            ("x %DURATION(1)%", 2),
            ("%REQ%", 0),
            ("%REQ()%", 0),
            ("%REQ(A?B?C)%", 0),
            ("%REQ(A B)%", 0),
            ("%REQ(A):x%", 0),
            ("%REQ(A):99999999999999999999999%", 0),
            ("%DURATION x%", 0),
            ("%START_TIME(%Q)%", 0),
        ] {
            match Template::parse(t) {
                Err(TemplateError::Invalid { offset: o, .. }) => assert_eq!(o, offset, "{t}"),
                other => panic!("{t}: {other:?}"),
            }
        }
    }

    #[test]
    fn no_panics_on_odd_input() {
        let e = known();
        for t in [
            "%",
            "%%",
            "%%%",
            "%(",
            "%A(",
            "%A()",
            "%A():",
            "%A():1",
            "é%é",
            "%é%",
            "%REQ(é)%",
            "%START_TIME(é%)%",
            "%START_TIME(%)%",
            "%START_TIME(%E)%",
            "%START_TIME(%9)%",
            "%START_TIME(%E9S%E0S%1f)%",
            ")%(",
            "::%:%",
            "%START_TIME():5%",
        ] {
            if let Ok(tpl) = Template::parse(t) {
                let _ = tpl.render(&e);
                let _ = tpl.render(&Entry::default());
            }
        }
        // Byte-wise prefixes of a template with multibyte characters.
        let src = "ü %REQ(ü?é):3% ✓ %START_TIME(%Y✓%3f)% %%";
        for end in 0..=src.len() {
            if let Some(prefix) = src.get(..end) {
                if let Ok(tpl) = Template::parse(prefix) {
                    let _ = tpl.render(&e);
                }
            }
        }
    }

    #[test]
    fn istio_default_line() {
        let e = known();
        let want = "[2026-03-04T05:06:07.089Z] \"GET /reviews/7?x=1 HTTP/1.1\" 200 - via_upstream - \
                    \"-\" 12 345 17 15 \"192.0.2.7\" \"e2e-agent/1.0\" \"req-123\" \"reviews:9080\" \
                    \"10.0.0.9:9080\" inbound-vip|9080|http/v1|reviews.default.svc.cluster.local \
                    10.0.0.2:51000 10.96.0.10:9080 10.244.1.5:40280 \
                    outbound_.9080_._.reviews.default.svc.cluster.local reviews.0";
        assert_eq!(Template::istio_default().render(&e), want);
        // No headers to capture for Istio's format: the entry has them all.
        assert!(Template::istio_default().request_headers().is_empty());
        assert!(Template::istio_default().response_headers().is_empty());
    }

    #[test]
    fn istio_default_tcp_line() {
        let e = Entry {
            start_time: "2026-03-04T05:06:07.089Z".into(),
            bytes_received: 10,
            bytes_sent: 20,
            duration_ms: 3,
            upstream_host: "10.0.0.9:9080".into(),
            upstream_cluster: "inbound-vip|9080|tcp|db".into(),
            downstream_local_address: "10.96.0.10:9080".into(),
            downstream_remote_address: "10.244.1.5:40280".into(),
            ..Default::default()
        };
        assert_eq!(
            Template::istio_default().render(&e),
            "[2026-03-04T05:06:07.089Z] \"- - -\" 0 - - - \"-\" 10 20 3 - \"-\" \"-\" \"-\" \"-\" \
             \"10.0.0.9:9080\" inbound-vip|9080|tcp|db - 10.96.0.10:9080 10.244.1.5:40280 - -"
        );
    }

    #[test]
    fn headers_to_capture() {
        let t = Template::parse(
            "%REQ(X-A?USER-AGENT)% %REQ(:SCHEME)% %REQ(x-a)% %RESP(X-B?X-ENVOY-UPSTREAM-SERVICE-TIME)% \
             %TRACE_ID% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        )
        .unwrap();
        assert_eq!(t.request_headers(), ["x-a", ":scheme", "traceparent"]);
        assert_eq!(t.response_headers(), ["x-b"]);
        let j = JsonTemplate::parse(r#"{"a":"%REQ(X-C)%","n":{"b":"%RESP(X-D)%"}}"#).unwrap();
        assert_eq!(j.request_headers(), ["x-c"]);
        assert_eq!(j.response_headers(), ["x-d"]);
    }

    #[test]
    fn json_format_types_nulls_and_order() {
        let j = JsonTemplate::parse(
            r#"{"z_code":"%RESPONSE_CODE%","p":"%REQ(:PATH)%","a_missing":"%REQ(X-MISSING)%",
                "ust":"%RESPONSE_DURATION%","tries":"%UPSTREAM_REQUEST_ATTEMPT_COUNT%",
                "sent":"%BYTES_SENT%","mixed":"%RESPONSE_CODE% %REQ(X-MISSING)%",
                "cut":"%REQ(USER-AGENT):3%","lit":"v1","quote":"%REQ(X-Q)%",
                "nested":{"d":"%DURATION%","flags":"%RESPONSE_FLAGS%"},"k":7,"b":true,"nil":null}"#,
        )
        .unwrap();
        let mut e = known();
        e.request_headers.push(("x-q".into(), "a\"b\\c".into()));
        let line = j.render(&e);
        assert_eq!(
            line,
            r#"{"z_code":200,"p":"/reviews/7?x=1","a_missing":null,"ust":15,"tries":2,"sent":345,"mixed":"200 -","cut":"e2e","lit":"v1","quote":"a\"b\\c","nested":{"d":17,"flags":null},"k":7,"b":true,"nil":null}"#
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["z_code"], 200);
        let e = Entry::default();
        let v: serde_json::Value = serde_json::from_str(&j.render(&e)).unwrap();
        assert_eq!(v["ust"], serde_json::Value::Null);
        assert_eq!(v["p"], serde_json::Value::Null);
        assert_eq!(v["z_code"], 0);
    }

    #[test]
    fn json_format_errors() {
        assert!(matches!(
            JsonTemplate::parse("[]"),
            Err(TemplateError::Json(_))
        ));
        assert!(matches!(
            JsonTemplate::parse("\"%DURATION%\""),
            Err(TemplateError::Json(_))
        ));
        assert!(matches!(
            JsonTemplate::parse("{"),
            Err(TemplateError::Json(_))
        ));
        assert!(matches!(
            JsonTemplate::parse(r#"{"a":"x","a":"y"}"#),
            Err(TemplateError::Json(_))
        ));
        assert!(matches!(
            JsonTemplate::parse(r#"{"a":["%DURATION%"]}"#),
            Err(TemplateError::Json(_))
        ));
        let err = JsonTemplate::parse(r#"{"ok":"%DURATION%","bad":"x %FOO%"}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "json_format key \"bad\": unknown command operator %FOO% at offset 2"
        );
    }
}
