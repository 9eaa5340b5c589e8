//! Evaluation: the attribute roots as maps over a [`Line`], each attribute computed on lookup,
//! and the header maps.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::time::UNIX_EPOCH;

use cel::common::traits::{Container, Indexer, Sizer};
use cel::common::types::{
    CelBool, CelDuration, CelInt, CelString, CelTimestamp, CelUInt, Type, MAP_TYPE,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;
use cel::ExecutionError;
use chrono::{DateTime, Datelike, FixedOffset, TimeDelta};

use super::references::Root;
use super::RESPONSE_FLAGS;
use crate::telemetry::access_log::{Field, Line};

/// The variables of one evaluation: the roots the expression reads, each resolved on lookup.
pub(super) struct Attributes<'l, 'a> {
    pub(super) line: &'l Line<'a>,
    /// [`Root::bit`]s of the roots the expression reads.
    pub(super) roots: u8,
}

impl VariableResolver for Attributes<'_, '_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let root = Root::parse(variable)?;
        (self.roots & root.bit() != 0).then(|| {
            CowVal::owned(RootMap {
                root,
                line: self.line,
            })
        })
    }
}

/// One attribute root, a map in Envoy: its attributes are computed when looked up.
#[derive(Clone, Copy)]
struct RootMap<'l> {
    root: Root,
    line: &'l Line<'l>,
}

impl fmt::Debug for RootMap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.root.name())
    }
}

impl Val for RootMap<'_> {
    fn get_type(&self) -> &Type {
        &MAP_TYPE
    }

    fn cel_type() -> &'static Type {
        &MAP_TYPE
    }

    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(*self)
    }
}

/// The key of a map lookup, as text.
fn key_str(key: &dyn Val) -> Result<&str, ExecutionError> {
    key.downcast_ref::<CelString>()
        .map(CelString::inner)
        .ok_or_else(|| ExecutionError::UnexpectedType {
            got: key.get_type().name().to_owned(),
            want: "string".to_owned(),
        })
}

impl Indexer for RootMap<'_> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let field = key_str(idx)?;
        attribute(self.root, field, self.line)
            .map(CowVal::Owned)
            .ok_or_else(|| ExecutionError::no_such_key(&format!("{}.{field}", self.root.name())))
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        self.get(idx).map(CowVal::into_owned)
    }
}

type Boxed<'l> = Box<dyn Val + 'l>;

fn string(s: Cow<'_, str>) -> Boxed<'_> {
    Box::new(CelString::from(s))
}

fn int<'l>(n: i64) -> Boxed<'l> {
    Box::new(CelInt::from(n))
}

/// The text of a field; `None` when absent (empty).
fn text<'l>(f: &Field<'l>) -> Option<Cow<'l, str>> {
    match *f {
        Field::Str("") => None,
        Field::Str(s) => Some(Cow::Borrowed(s)),
        ref other => {
            let mut buf = Vec::new();
            other
                .write(&mut buf)
                .then(|| Cow::Owned(String::from_utf8_lossy(&buf).into_owned()))
        }
    }
}

/// The port of an address field (`ip:port`, `[v6]:port`).
fn port(f: &Field<'_>) -> Option<i64> {
    match *f {
        Field::Addr(a) => Some(i64::from(a.port())),
        Field::Str(s) => s
            .parse::<SocketAddr>()
            .map(|a| a.port())
            .ok()
            .or_else(|| s.rsplit_once(':')?.1.parse::<u16>().ok())
            .map(i64::from),
        _ => None,
    }
}

/// Envoy's `legacyResponseFlags()` of the line's short flags (`UF,URX`).
fn response_flags(f: &Field<'_>) -> i64 {
    let Some(flags) = text(f) else { return 0 };
    flags
        .split(',')
        .filter_map(|flag| RESPONSE_FLAGS.iter().position(|f| *f == flag.trim()))
        .fold(0, |bits, i| bits | (1 << i))
}

/// Envoy's `Grpc::Utility::httpToGrpcStatus` (`source/common/grpc/status.cc`).
fn http_to_grpc_status(code: u16) -> i64 {
    match code {
        400 => 13,                   // Internal
        401 => 16,                   // Unauthenticated
        403 => 7,                    // PermissionDenied
        404 => 12,                   // Unimplemented
        429 | 502 | 503 | 504 => 14, // Unavailable
        _ => 2,                      // Unknown
    }
}

/// The start time of the line, a typed one or Envoy's `%START_TIME%` text (RFC 3339), as a CEL
/// timestamp in UTC; `None` outside CEL's range (years 1 to 9999), which the crate's own
/// `timestamp()` refuses too.
fn start_time(f: &Field<'_>) -> Option<Boxed<'static>> {
    let t = match *f {
        Field::Time(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => DateTime::UNIX_EPOCH.checked_add_signed(TimeDelta::from_std(d).ok()?)?,
            Err(e) => {
                DateTime::UNIX_EPOCH.checked_sub_signed(TimeDelta::from_std(e.duration()).ok()?)?
            }
        },
        Field::Str(s) if !s.is_empty() => DateTime::<FixedOffset>::parse_from_rfc3339(s)
            .ok()?
            .to_utc(),
        _ => return None,
    };
    (1..=9999)
        .contains(&t.year())
        .then(|| Box::new(CelTimestamp::from(t.fixed_offset())) as Boxed<'static>)
}

/// A CEL duration of `ms` milliseconds; `None` past CEL's range (`i64` nanoseconds, as cel-go's).
fn duration_ms(ms: u64) -> Option<Boxed<'static>> {
    let nanos = i64::try_from(ms).ok()?.checked_mul(1_000_000)?;
    Some(Box::new(CelDuration::from(TimeDelta::nanoseconds(nanos))))
}

/// The value of attribute `root.field`; `None` when the line cannot answer it.
fn attribute<'l>(root: Root, field: &str, l: &'l Line<'l>) -> Option<Boxed<'l>> {
    let request = Headers {
        side: Side::Request,
        line: l,
    };
    let response = Headers {
        side: Side::Response,
        line: l,
    };
    Some(match (root, field) {
        (Root::Request, "path") => string(text(&l.path)?),
        (Root::Request, "url_path") => string(split_path(text(&l.path)?).0),
        (Root::Request, "query") => string(split_path(text(&l.path)?).1),
        (Root::Request, "host") => string(text(&l.authority)?),
        (Root::Request, "scheme") => string(request.get(":scheme")?),
        (Root::Request, "method") => string(text(&l.method)?),
        (Root::Request, "headers") => Box::new(request),
        (Root::Request, "referer") => string(request.get("referer")?),
        (Root::Request, "useragent") => string(text(&l.user_agent)?),
        (Root::Request, "id") => string(text(&l.request_id)?),
        (Root::Request, "protocol") => string(text(&l.protocol)?),
        (Root::Request, "time") => start_time(&l.start_time)?,
        (Root::Request, "duration") => duration_ms(l.duration_ms)?,
        // Envoy: the content-length header if there is one (an invalid one is absent), else
        // the body bytes received.
        (Root::Request, "size") => match request.get("content-length") {
            Some(len) => int(len.trim().parse().ok()?),
            None => int(i64::try_from(l.bytes_received).ok()?),
        },
        (Root::Request, "total_size") => {
            int(i64::try_from(l.bytes_received.saturating_add(request.bytes())).ok()?)
        }
        (Root::Response, "code") if l.response_code != 0 => int(i64::from(l.response_code)),
        (Root::Response, "code_details") => string(text(&l.response_code_details)?),
        (Root::Response, "flags") => int(response_flags(&l.response_flags)),
        // Envoy's `Grpc::Common::getGrpcStatus(trailers, headers, info)`: the header, where a
        // value that is not a known code is `InvalidCode` (-1), else inferred from the status.
        (Root::Response, "grpc_status") => match response.get("grpc-status") {
            Some(s) => int(s
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|c| *c <= 16)
                .map_or(-1, i64::from)),
            None if l.response_code != 0 => int(http_to_grpc_status(l.response_code)),
            None => return None,
        },
        (Root::Response, "headers") => Box::new(response),
        (Root::Response, "size") => int(i64::try_from(l.bytes_sent).ok()?),
        (Root::Response, "total_size") => {
            int(i64::try_from(l.bytes_sent.saturating_add(response.bytes())).ok()?)
        }
        (Root::Source, "address") => string(text(&l.downstream_remote_address)?),
        (Root::Source, "port") => int(port(&l.downstream_remote_address)?),
        (Root::Destination, "address") => string(text(&l.downstream_local_address)?),
        (Root::Destination, "port") => int(port(&l.downstream_local_address)?),
        (Root::Connection, "mtls") => Box::new(CelBool::from(!l.source_principal.is_empty())),
        (Root::Connection, "requested_server_name") => {
            string(text(&l.requested_server_name).unwrap_or_default())
        }
        (Root::Connection, "termination_details") => {
            string(text(&l.connection_termination_details)?)
        }
        (Root::Connection, "uri_san_peer_certificate") => string(text(&l.source_principal)?),
        (Root::Upstream, "address") => string(text(&l.upstream_host)?),
        (Root::Upstream, "port") => int(port(&l.upstream_host)?),
        (Root::Upstream, "local_address") => string(text(&l.upstream_local_address)?),
        // Envoy: present (maybe empty) once there is upstream info.
        (Root::Upstream, "transport_failure_reason") => {
            match text(&l.upstream_transport_failure_reason) {
                Some(reason) => string(reason),
                None if !l.upstream_host.is_empty() => string(Cow::Borrowed("")),
                None => return None,
            }
        }
        (Root::Upstream, "request_attempt_count") => {
            Box::new(CelUInt::from(u64::from(l.attempt_count)))
        }
        (Root::Upstream, "uri_san_peer_certificate") => string(text(&l.destination_principal)?),
        (Root::Xds, "cluster_name") => string(text(&l.upstream_cluster)?),
        (Root::Xds, "route_name") => string(text(&l.route_name)?),
        _ => return None,
    })
}

/// `:path` as (path without the query, the query without the fragment); the query is empty
/// without a `?` (Envoy `context.cc`, `UrlPath` and `Query`).
fn split_path(path: Cow<'_, str>) -> (Cow<'_, str>, Cow<'_, str>) {
    fn parts(p: &str) -> (&str, &str) {
        match p.split_once('?') {
            Some((path, rest)) => (path, rest.split('#').next().unwrap_or_default()),
            None => (p, ""),
        }
    }
    match path {
        Cow::Borrowed(p) => {
            let (a, b) = parts(p);
            (Cow::Borrowed(a), Cow::Borrowed(b))
        }
        Cow::Owned(p) => {
            let (a, b) = parts(&p);
            (Cow::Owned(a.to_owned()), Cow::Owned(b.to_owned()))
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Request,
    Response,
}

/// Request headers the line has a field for.
pub(super) const REQUEST_OWN: [&str; 6] = [
    ":method",
    ":path",
    ":authority",
    "x-request-id",
    "x-forwarded-for",
    "user-agent",
];

/// Response headers the line has a field for.
pub(super) const RESPONSE_OWN: [&str; 2] = [":status", "x-envoy-upstream-service-time"];

/// `request.headers` / `response.headers`: the headers the line carries, looked up on access.
#[derive(Clone, Copy)]
struct Headers<'l> {
    side: Side,
    line: &'l Line<'l>,
}

impl fmt::Debug for Headers<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut map = f.debug_map();
        self.for_each(|k, v| {
            map.entry(&k, &v);
        });
        map.finish()
    }
}

impl<'l> Headers<'l> {
    /// A header the line has a field for; `name` lowercase.
    fn own(&self, name: &str) -> Option<Cow<'l, str>> {
        let l = self.line;
        match (self.side, name) {
            (Side::Request, ":method") => text(&l.method),
            (Side::Request, ":path") => text(&l.path),
            (Side::Request, ":authority") => text(&l.authority),
            (Side::Request, "x-request-id") => text(&l.request_id),
            (Side::Request, "x-forwarded-for") => text(&l.x_forwarded_for),
            (Side::Request, "user-agent") => text(&l.user_agent),
            (Side::Response, ":status") if l.response_code != 0 => {
                Some(Cow::Owned(l.response_code.to_string()))
            }
            (Side::Response, "x-envoy-upstream-service-time") => l
                .upstream_service_time_ms
                .map(|t| Cow::Owned(t.to_string())),
            _ => None,
        }
    }

    fn captured(&self) -> &'l [(String, String)] {
        match self.side {
            Side::Request => self.line.request_headers,
            Side::Response => self.line.response_headers,
        }
    }

    /// The values of captured header `name`, joined with `,` when repeated.
    fn captured_value(&self, name: &str) -> Option<Cow<'l, str>> {
        let mut values = self
            .captured()
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
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

    /// Header `name`, any case. The request's own fields first, the response's captured headers
    /// first (as `%REQ()%` and `%RESP()%` read them).
    fn get(&self, name: &str) -> Option<Cow<'l, str>> {
        let lower;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lower = name.to_ascii_lowercase();
            lower.as_str()
        } else {
            name
        };
        match self.side {
            Side::Request => self.own(name).or_else(|| self.captured_value(name)),
            Side::Response => self.captured_value(name).or_else(|| self.own(name)),
        }
    }

    /// Each header present once, with its (joined) value.
    fn for_each(&self, mut f: impl FnMut(&str, &str)) {
        let own: &[&str] = match self.side {
            Side::Request => &REQUEST_OWN,
            Side::Response => &RESPONSE_OWN,
        };
        for name in own {
            if let Some(v) = self.get(name) {
                f(name, &v);
            }
        }
        // The others, each name once (an own name was taken above).
        let captured = self.captured();
        for (i, (k, _)) in captured.iter().enumerate() {
            let seen = own.iter().any(|o| k.eq_ignore_ascii_case(o))
                || captured[..i].iter().any(|(p, _)| p.eq_ignore_ascii_case(k));
            if let Some(v) = (!seen).then(|| self.captured_value(k)).flatten() {
                f(k, &v);
            }
        }
    }

    /// Name and value bytes of the headers the line carries (Envoy's `HeaderMap::byteSize` of
    /// those).
    fn bytes(&self) -> u64 {
        let mut n = 0u64;
        self.for_each(|k, v| n += (k.len() + v.len()) as u64);
        n
    }
}

impl Val for Headers<'_> {
    fn get_type(&self) -> &Type {
        &MAP_TYPE
    }

    fn cel_type() -> &'static Type {
        &MAP_TYPE
    }

    fn as_container(&self) -> Option<&dyn Container> {
        Some(self)
    }

    fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn as_sizer(&self) -> Option<&dyn Sizer> {
        Some(self)
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
    where
        Self: 'v,
    {
        Box::new(*self)
    }
}

impl Indexer for Headers<'_> {
    fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let name = key_str(idx)?;
        Headers::get(self, name)
            .map(|v| CowVal::Owned(string(v)))
            .ok_or_else(|| ExecutionError::no_such_key(name))
    }

    fn steal<'v>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'v>, ExecutionError>
    where
        Self: 'v,
    {
        Indexer::get(&*self, idx).map(CowVal::into_owned)
    }
}

impl Container for Headers<'_> {
    fn contains(&self, value: &dyn Val) -> Result<bool, ExecutionError> {
        Ok(Headers::get(self, key_str(value)?).is_some())
    }
}

impl Sizer for Headers<'_> {
    fn size(&self) -> CelInt {
        let mut n = 0i64;
        self.for_each(|_, _| n += 1);
        CelInt::from(n)
    }
}
