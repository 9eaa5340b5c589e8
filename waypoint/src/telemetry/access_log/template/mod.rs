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

use std::sync::OnceLock;

mod json;
mod render;
#[cfg(test)]
mod tests;
pub mod time;

pub use json::JsonTemplate;
pub use render::push_u64;
use time::TimeFormat;

use super::{Entry, Line};

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
        reason: InvalidOperator,
    },
    #[error("json_format: {0}")]
    Json(String),
    #[error("json_format key {key:?}: {source}")]
    InJsonKey {
        key: String,
        source: Box<TemplateError>,
    },
}

/// What is wrong with a command operator (follows `invalid command operator TOKEN at offset N: `).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidOperator {
    #[error(
        "expected an operator name (A-Z, 0-9, _) after '%'; write %% for a literal percent sign"
    )]
    NoName,
    #[error("expected a maximum length (digits) after ':'")]
    NoMaxLength,
    #[error("maximum length {0} is too large")]
    MaxLengthTooLarge(String),
    #[error("expected '%' to close the operator")]
    Unclosed,
    #[error("%{0}% takes no arguments")]
    NoArguments(String),
    #[error("%{0}% needs a header name, e.g. %{0}(X-REQUEST-ID)%")]
    NoHeaderName(String),
    #[error(transparent)]
    Header(#[from] HeaderArgError),
    #[error(transparent)]
    TimeFormat(#[from] time::UnsupportedTimeFormat),
}

/// What is wrong with the header names of a `REQ(X?Y)` / `RESP(X?Y)` argument.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderArgError {
    #[error("more than one alternative header (X?Y) given")]
    TooManyAlternatives,
    #[error("empty header name")]
    Empty,
    #[error("header name {name:?} contains {found:?}")]
    BadChar { name: String, found: char },
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

fn header_arg(args: &str) -> Result<(String, Option<String>), HeaderArgError> {
    let mut names = args.split('?');
    let main = names.next().unwrap_or_default();
    let alt = names.next();
    if names.next().is_some() {
        return Err(HeaderArgError::TooManyAlternatives);
    }
    let check = |n: &str| -> Result<String, HeaderArgError> {
        if n.is_empty() {
            return Err(HeaderArgError::Empty);
        }
        if let Some(found) = n
            .chars()
            .find(|c| c.is_whitespace() || c.is_control() || *c == '%')
        {
            return Err(HeaderArgError::BadChar {
                name: n.to_string(),
                found,
            });
        }
        Ok(n.to_ascii_lowercase())
    };
    Ok((check(main)?, alt.map(check).transpose()?))
}

/// Rendered bytes as a `String` (they are UTF-8: only `str`s and `Display`s are written, and
/// truncation cuts at character boundaries).
fn into_string(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
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
        self.render_line(&e.line())
    }

    /// Renders one text line of a borrowed [`Line`].
    pub fn render_line(&self, e: &Line<'_>) -> String {
        let mut out = Vec::with_capacity(256);
        self.write_text(e, &mut out);
        into_string(out)
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
            reason: InvalidOperator::NoName,
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
                reason: InvalidOperator::NoMaxLength,
            });
        }
        max_len = Some(
            digits
                .parse::<usize>()
                .map_err(|_| TemplateError::Invalid {
                    token: token_until(i),
                    offset: start,
                    reason: InvalidOperator::MaxLengthTooLarge(digits.to_string()),
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
            reason: InvalidOperator::Unclosed,
        });
    }
    let end = i + 1;
    let token = &src[start..end];
    let invalid = |reason: InvalidOperator| TemplateError::Invalid {
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
        (Args::None, Some(_)) => return Err(invalid(InvalidOperator::NoArguments(name.into()))),
        (Args::Required, None) => return Err(invalid(InvalidOperator::NoHeaderName(name.into()))),
        (_, None) => op,
        (_, Some(a)) => match op {
            Op::StartTime(_) if a.is_empty() => Op::StartTime(None),
            Op::StartTime(_) => {
                Op::StartTime(Some(TimeFormat::parse(a).map_err(|e| invalid(e.into()))?))
            }
            Op::Req { without_query, .. } => {
                let (main, alt) = header_arg(a).map_err(|e| invalid(e.into()))?;
                Op::Req {
                    main,
                    alt,
                    without_query,
                }
            }
            Op::Resp { .. } => {
                let (main, alt) = header_arg(a).map_err(|e| invalid(e.into()))?;
                Op::Resp { main, alt }
            }
            other => other,
        },
    };
    Ok((Piece::Op { op, max_len }, end))
}

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
