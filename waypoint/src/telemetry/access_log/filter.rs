//! Access-log filter expressions: Istio's Telemetry API `accessLogging[].filter.expression`, a CEL
//! expression over Envoy's request attributes. istiod hands it to Envoy as the access-log
//! `ExtensionFilter` `envoy.access_loggers.extension_filters.cel`
//! (`envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter`); Envoy writes the line only
//! when the expression evaluates to boolean `true`, and an evaluation error or a result of another
//! type means the line is not written (Envoy v1.34
//! `source/extensions/access_loggers/filters/cel/cel.cc`, `CELAccessLogExtensionFilter::evaluate`;
//! `source/extensions/filters/common/expr/evaluator.cc`, `matches`).
//!
//! # Attributes
//!
//! Names and types are Envoy's (`docs/root/intro/arch_overview/advanced/attributes.rst`, v1.34 to
//! main, a name added since v1.34 being accepted too; values as
//! `source/extensions/filters/common/expr/context.cc` computes them). Each root is a map
//! looked up lazily, on access, from the [`Line`]: nothing is built for a root the expression does
//! not read. An attribute the line cannot answer is absent, as an absent attribute is in Envoy:
//! reading it is an evaluation error (no such key), so the line is not written, and `has(...)` of
//! it is `false`.
//!
//! | Attribute | Type | From the line |
//! |---|---|---|
//! | `request.path` | string | `:path`, with the query |
//! | `request.url_path` | string | `:path` up to `?` |
//! | `request.query` | string | `:path` after `?` (up to `#`); `""` without one |
//! | `request.host` | string | `:authority` |
//! | `request.scheme` | string | a captured `:scheme` header |
//! | `request.method` | string | `:method` |
//! | `request.headers` | map | see [Headers](#headers) |
//! | `request.referer` | string | a captured `referer` header |
//! | `request.useragent` | string | `user-agent` |
//! | `request.id` | string | `x-request-id` |
//! | `request.protocol` | string | `HTTP/1.0`, `HTTP/1.1`, `HTTP/2`, `HTTP/3`; absent for TCP |
//! | `request.time` | timestamp | the start time, when the line has one |
//! | `request.duration` | duration | the line's duration (millisecond precision) |
//! | `request.size` | int | a captured `content-length`, else the body bytes received |
//! | `request.total_size` | int | body bytes received + the bytes of the headers the line knows |
//! | `response.code` | int | the status; absent when no response was sent (0, TCP) |
//! | `response.code_details` | string | the response code details |
//! | `response.flags` | int | Envoy's `legacyResponseFlags()`: bit `n` for `CoreResponseFlag` `n` ([`RESPONSE_FLAGS`]) |
//! | `response.grpc_status` | int | a captured `grpc-status` header, else inferred from the status as Envoy does |
//! | `response.headers` | map | see [Headers](#headers) |
//! | `response.size` | int | body bytes sent |
//! | `response.total_size` | int | body bytes sent + the bytes of the headers the line knows |
//! | `source.address`, `source.port` | string, int | the downstream remote address (`ip:port`, as Envoy writes it), its port |
//! | `destination.address`, `destination.port` | string, int | the downstream local (original destination) address, its port |
//! | `connection.mtls` | bool | whether the HBONE peer presented a certificate (the line has its identity) |
//! | `connection.requested_server_name` | string | the SNI; `""` without one |
//! | `connection.termination_details` | string | why the waypoint closed the connection |
//! | `connection.uri_san_peer_certificate` | string | the downstream peer's SPIFFE identity |
//! | `upstream.address`, `upstream.port` | string, int | the endpoint of the last attempt, its port |
//! | `upstream.local_address` | string | the upstream connection's local address |
//! | `upstream.transport_failure_reason` | string | why the upstream connection failed; `""` when an upstream was picked without failure |
//! | `upstream.request_attempt_count` | uint | attempts made |
//! | `upstream.uri_san_peer_certificate` | string | the upstream's identity: the one its HBONE certificate proved, else the endpoint's known one |
//! | `xds.cluster_name` | string | the upstream cluster |
//! | `xds.route_name` | string | the route |
//!
//! Not available (absent at evaluation; the names compile, being Envoy's): `request.headers_bytes`,
//! `response.headers_bytes`, `response.trailers`, `response.backend_latency`, `connection.id`,
//! `connection.transport_failure_reason`, the downstream and upstream TLS details other than the
//! peer URI SAN (`tls_version`, `subject_*`, `dns_san_*`, `uri_san_local_certificate`,
//! `sha256_peer_certificate_digest`, `peer_certificate`), `upstream.locality`,
//! `upstream.num_endpoints`, `upstream.cx_pool_ready_duration`, and `xds.*` but `cluster_name` and
//! `route_name`. The roots `metadata`, `filter_state` and `upstream_filter_state` are Envoy's but
//! not the waypoint's: an expression naming them does not compile, nor does one naming a root or
//! an attribute Envoy does not have.
//!
//! `request.total_size` and `response.total_size` count only the headers the line carries, so
//! they are lower bounds of Envoy's. `response.grpc_status` does not see trailers (the line has
//! none): without a `grpc-status` response header it is inferred from the status, as Envoy infers
//! it when neither trailers nor headers carry one.
//!
//! # Headers
//!
//! `request.headers` and `response.headers` are maps keyed by header name, looked up
//! case-insensitively (Envoy lowercases the key), repeated headers joined with `,`. They hold only
//! what the line carries: on the request side `:method`, `:path`, `:authority`, `x-request-id`,
//! `x-forwarded-for` and `user-agent`, and on the response side `:status` and
//! `x-envoy-upstream-service-time`, plus the headers captured into
//! [`Line::request_headers`]/[`Line::response_headers`]. [`LogFilter::request_headers`] and
//! [`LogFilter::response_headers`] list the ones the expression names literally
//! (`request.headers['x-debug']`, `'x-debug' in request.headers`, and those behind
//! `request.referer`, `request.scheme`, `request.size` and `response.grpc_status`): the caller
//! captures them along with the access-log format's own.
//!
//! # The language
//!
//! As in Envoy (`evaluator.cc`, `createBuilder`), comprehensions (`all`, `exists`, `exists_one`,
//! `map`, `filter`) are disabled: an expression using them does not compile; nor does CEL's
//! optional syntax. `duration('1s')` and `timestamp('2026-01-01T00:00:00Z')` make durations and
//! timestamps, which compare (`<`, `==`, ...) with each other, add and subtract (a timestamp minus
//! a timestamp is a duration), and a duration has `getHours()`, `getMinutes()`, `getSeconds()` and
//! `getMilliseconds()` (totals, as cel-go). They are the waypoint's own: the workspace builds the
//! `cel` crate without its `chrono` feature.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use cel::common::ast::{operators, EntryExpr, Expr, IdedExpr, LiteralValue, MapExpr, StructExpr};
use cel::common::traits::{Adder, Comparer, Container, Indexer, Sizer, Subtractor};
use cel::common::types::{
    CelBool, CelInt, CelString, CelUInt, Type, DURATION_TYPE, MAP_TYPE, STRING_TYPE, TIMESTAMP_TYPE,
};
use cel::common::value::{CowVal, StaticVal, Val};
use cel::context::VariableResolver;
use cel::{Context, Env, ExecutionError, Program, Value};

use super::{Field, Line};

/// Envoy's `CoreResponseFlag`s, by short name, in enum order (Envoy v1.34
/// `envoy/stream_info/stream_info.h`; short names from `source/common/stream_info/utility.h`):
/// `response.flags` has bit `1 << i` set for flag `RESPONSE_FLAGS[i]`, as
/// `StreamInfoImpl::legacyResponseFlags` sets them. A flag not among these is not in the bitmask
/// (Envoy leaves custom flags out too).
pub const RESPONSE_FLAGS: [&str; 30] = [
    "LH", "UH", "UT", "LR", "UR", "UF", "UC", "UO", "NR", "DI", "FI", "RL", "UAEX", "RLSE", "DC",
    "URX", "SI", "IH", "DPE", "UMSDR", "RFCF", "NFCF", "DT", "UPE", "NC", "OM", "DF", "DO", "DR",
    "UDO",
];

/// Why an expression does not compile.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("access log filter {expression:?} does not parse: {message}")]
    Syntax { expression: String, message: String },
    #[error(
        "access log filter {expression:?}: unknown attribute {name:?}{hint} (the waypoint \
         provides request.*, response.*, source.*, destination.*, connection.*, upstream.* and \
         xds.*)"
    )]
    UnknownRoot {
        expression: String,
        name: String,
        hint: &'static str,
    },
    #[error("access log filter {expression:?}: {root}.{field} is not an Envoy attribute")]
    UnknownField {
        expression: String,
        root: &'static str,
        field: String,
    },
    #[error("access log filter {expression:?}: {what} (Envoy's CEL runtime does not allow it)")]
    Unsupported {
        expression: String,
        what: &'static str,
    },
}

/// A compiled access-log filter expression.
pub struct LogFilter {
    program: Program,
    expression: String,
    /// [`Root::bit`]s of the roots the expression reads: the only ones it is given.
    roots: u8,
    request_headers: Vec<String>,
    response_headers: Vec<String>,
}

impl fmt::Debug for LogFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogFilter")
            .field("expression", &self.expression)
            .finish_non_exhaustive()
    }
}

impl LogFilter {
    /// Compiles; rejects syntax errors and references to variables that are not Envoy attribute
    /// roots the waypoint provides, or to attributes Envoy does not have (`request.pth`).
    pub fn compile(expression: &str) -> Result<Self, FilterError> {
        let program = ENV.compile(expression).map_err(|e| FilterError::Syntax {
            expression: expression.to_owned(),
            message: e.to_string(),
        })?;
        let mut refs = References {
            expression,
            roots: 0,
            request_headers: Vec::new(),
            response_headers: Vec::new(),
        };
        refs.walk(program.expression())?;
        Ok(Self {
            roots: refs.roots,
            request_headers: refs.request_headers,
            response_headers: refs.response_headers,
            program,
            expression: expression.to_owned(),
        })
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// Lowercase request header names the expression reads: capture them into
    /// [`Line::request_headers`] for it to see them.
    pub fn request_headers(&self) -> &[String] {
        &self.request_headers
    }

    /// Lowercase response header names the expression reads ([`Line::response_headers`]).
    pub fn response_headers(&self) -> &[String] {
        &self.response_headers
    }

    /// `Ok(true)`: write the line. `Err`: an evaluation error, or a result that is not a bool
    /// (the caller counts it, and does not write the line).
    pub fn evaluate(&self, line: &Line<'_>) -> Result<bool, String> {
        let attributes = Attributes {
            line,
            roots: self.roots,
        };
        let mut context = Context::with_env(Arc::clone(&ENV));
        context.set_variable_resolver(&attributes);
        let value =
            Value::resolve_val(self.program.expression(), &context).map_err(|e| e.to_string())?;
        match value.downcast_ref::<CelBool>() {
            Some(b) => Ok(*b.inner()),
            None => Err(format!(
                "access log filter {:?} evaluated to a {}, not a bool",
                self.expression,
                value.get_type().name()
            )),
        }
    }

    /// Whether to write the line: [`LogFilter::evaluate`], an error being `false`.
    pub fn matches(&self, line: &Line<'_>) -> bool {
        self.evaluate(line).unwrap_or(false)
    }
}

/// The standard library, without the optional syntax (Envoy's runtime has none), with the
/// waypoint's `duration()` and `timestamp()`.
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib().with_optional_support(false);
    declare_time(&mut env)
        .expect("cel is built without `chrono`: the waypoint declares durations itself");
    Arc::new(env)
});

/// The `google.protobuf.Duration` and `google.protobuf.Timestamp` types, `duration(string)`,
/// `timestamp(string)`, and a duration's getters.
fn declare_time(env: &mut Env) -> Result<(), cel::DeclarationError> {
    env.add_type(DURATION_TYPE)?;
    env.add_type(TIMESTAMP_TYPE)?;
    env.add_overload(
        "duration",
        "waypoint_string_to_duration",
        vec![STRING_TYPE],
        to_duration,
    )?;
    env.add_overload(
        "timestamp",
        "waypoint_string_to_timestamp",
        vec![STRING_TYPE],
        to_timestamp,
    )?;
    for (name, id, f) in DURATION_GETTERS {
        env.add_member_overload(name, id, DURATION_TYPE, vec![], f)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Compile-time checks: the roots and attributes named, the headers read.
// ---------------------------------------------------------------------------------------------

/// Envoy's attribute roots the waypoint provides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Root {
    Request,
    Response,
    Source,
    Destination,
    Connection,
    Upstream,
    Xds,
}

/// Envoy's TLS attributes, under `connection` and `upstream` (`context.cc`, `SslExtractorsValues`).
const TLS_FIELDS: &str = "tls_version subject_local_certificate subject_peer_certificate \
    uri_san_local_certificate uri_san_peer_certificate dns_san_local_certificate \
    dns_san_peer_certificate sha256_peer_certificate_digest peer_certificate";

impl Root {
    fn parse(name: &str) -> Option<Root> {
        Some(match name {
            "request" => Root::Request,
            "response" => Root::Response,
            "source" => Root::Source,
            "destination" => Root::Destination,
            "connection" => Root::Connection,
            "upstream" => Root::Upstream,
            "xds" => Root::Xds,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Root::Request => "request",
            Root::Response => "response",
            Root::Source => "source",
            Root::Destination => "destination",
            Root::Connection => "connection",
            Root::Upstream => "upstream",
            Root::Xds => "xds",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    /// Whether Envoy has attribute `field` under this root (`context.h`, `context.cc`).
    fn has_field(self, field: &str) -> bool {
        let own = match self {
            Root::Request => {
                "path url_path host scheme method headers headers_bytes referer useragent time id \
                 protocol query duration size total_size"
            }
            Root::Response => {
                "code code_details flags grpc_status headers headers_bytes trailers size \
                 total_size backend_latency"
            }
            Root::Source | Root::Destination => "address port",
            Root::Connection => {
                "id mtls requested_server_name termination_details transport_failure_reason"
            }
            Root::Upstream => {
                "address port local_address transport_failure_reason request_attempt_count \
                 cx_pool_ready_duration locality num_endpoints"
            }
            Root::Xds => {
                "node cluster_name cluster_metadata listener_direction listener_metadata \
                 route_name route_metadata virtual_host_name virtual_host_metadata \
                 upstream_host_metadata upstream_host_locality_metadata filter_chain_name"
            }
        };
        let tls = matches!(self, Root::Connection | Root::Upstream);
        own.split_whitespace().any(|f| f == field)
            || (tls && TLS_FIELDS.split_whitespace().any(|f| f == field))
    }
}

/// What a compiled expression refers to.
struct References<'e> {
    expression: &'e str,
    roots: u8,
    request_headers: Vec<String>,
    response_headers: Vec<String>,
}

/// `root.field`, `has(root.field)` or `root['field']`, with `root` an attribute root.
fn attribute_of(e: &IdedExpr) -> Option<(Root, &str)> {
    match &e.expr {
        Expr::Select(s) => match &s.operand.expr {
            Expr::Ident(root) => Some((Root::parse(root)?, s.field.as_str())),
            _ => None,
        },
        Expr::Call(c) if c.func_name == operators::INDEX && c.target.is_none() => {
            match (&c.args.first()?.expr, string_literal(c.args.get(1)?)) {
                (Expr::Ident(root), Some(field)) => Some((Root::parse(root)?, field)),
                _ => None,
            }
        }
        _ => None,
    }
}

fn string_literal(e: &IdedExpr) -> Option<&str> {
    match &e.expr {
        Expr::Literal(LiteralValue::String(s)) => Some(s.inner()),
        _ => None,
    }
}

/// `a.b.c` as written, for a chain of selections on an identifier.
fn qualified_name(e: &IdedExpr) -> Option<String> {
    match &e.expr {
        Expr::Ident(name) => Some(name.clone()),
        Expr::Select(s) if !s.test => Some(format!("{}.{}", qualified_name(&s.operand)?, s.field)),
        _ => None,
    }
}

impl References<'_> {
    fn walk(&mut self, e: &IdedExpr) -> Result<(), FilterError> {
        if let Some((root, field)) = attribute_of(e) {
            self.attribute(root, field)?;
        }
        match &e.expr {
            Expr::Unspecified | Expr::Literal(_) => Ok(()),
            Expr::Ident(name) => self.ident(name),
            Expr::Select(s) => {
                // A type's qualified name, `google.protobuf.Duration`.
                if let Some(name) = qualified_name(e) {
                    if ENV.types().find_type(&name).is_some() {
                        return Ok(());
                    }
                }
                // `request.headers.x_b`, `has(request.headers.x)`: a header, named as a field.
                if let Some(side) = headers_of(&s.operand) {
                    self.header(side, &s.field);
                }
                self.walk(&s.operand)
            }
            Expr::Call(c) => {
                match (c.func_name.as_str(), c.args.as_slice()) {
                    (operators::INDEX, [map, key]) | (operators::IN, [key, map]) => {
                        if let (Some(side), Some(name)) = (headers_of(map), string_literal(key)) {
                            self.header(side, name);
                        }
                    }
                    _ => {}
                }
                if let Some(target) = &c.target {
                    self.walk(target)?;
                }
                c.args.iter().try_for_each(|a| self.walk(a))
            }
            Expr::Comprehension(_) => Err(FilterError::Unsupported {
                expression: self.expression.to_owned(),
                what: "comprehensions (all, exists, exists_one, map, filter) are disabled",
            }),
            Expr::List(l) => l.elements.iter().try_for_each(|a| self.walk(a)),
            Expr::Map(MapExpr { entries }) | Expr::Struct(StructExpr { entries, .. }) => {
                entries.iter().try_for_each(|entry| match &entry.expr {
                    EntryExpr::MapEntry(m) => {
                        self.walk(&m.key)?;
                        self.walk(&m.value)
                    }
                    EntryExpr::StructField(f) => self.walk(&f.value),
                })
            }
        }
    }

    fn ident(&mut self, name: &str) -> Result<(), FilterError> {
        if let Some(root) = Root::parse(name) {
            self.roots |= root.bit();
            return Ok(());
        }
        // A type name, as in `type(x) == int`.
        if ENV.types().find_type(name).is_some() {
            return Ok(());
        }
        let hint = match name {
            "metadata" | "filter_state" | "upstream_filter_state" => {
                ", an Envoy attribute the waypoint does not provide"
            }
            _ => "",
        };
        Err(FilterError::UnknownRoot {
            expression: self.expression.to_owned(),
            name: name.to_owned(),
            hint,
        })
    }

    fn attribute(&mut self, root: Root, field: &str) -> Result<(), FilterError> {
        if !root.has_field(field) {
            return Err(FilterError::UnknownField {
                expression: self.expression.to_owned(),
                root: root.name(),
                field: field.to_owned(),
            });
        }
        // Attributes read from a header the line carries only when captured.
        match (root, field) {
            (Root::Request, "referer") => self.header(Side::Request, "referer"),
            (Root::Request, "scheme") => self.header(Side::Request, ":scheme"),
            (Root::Request, "size") => self.header(Side::Request, "content-length"),
            (Root::Response, "grpc_status") => self.header(Side::Response, "grpc-status"),
            _ => {}
        }
        Ok(())
    }

    /// A header the expression reads, unless the line has a field for it.
    fn header(&mut self, side: Side, name: &str) {
        let name = name.to_ascii_lowercase();
        let (own, list): (&[&str], _) = match side {
            Side::Request => (&REQUEST_OWN, &mut self.request_headers),
            Side::Response => (&RESPONSE_OWN, &mut self.response_headers),
        };
        if !own.contains(&name.as_str()) && !list.contains(&name) {
            list.push(name);
        }
    }
}

/// `request.headers` / `response.headers`: which side's.
fn headers_of(e: &IdedExpr) -> Option<Side> {
    match attribute_of(e)? {
        (Root::Request, "headers") => Some(Side::Request),
        (Root::Response, "headers") => Some(Side::Response),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation: the roots, their attributes, the header maps.
// ---------------------------------------------------------------------------------------------

/// The variables of one evaluation: the roots the expression reads, each resolved on lookup.
struct Attributes<'l, 'a> {
    line: &'l Line<'a>,
    roots: u8,
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

fn nanos_since_epoch(t: SystemTime) -> i128 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    }
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
        (Root::Request, "time") => match l.start_time {
            Field::Time(t) => Box::new(Timestamp(nanos_since_epoch(t))),
            Field::Str(s) if !s.is_empty() => Box::new(Timestamp::parse(s)?),
            _ => return None,
        },
        (Root::Request, "duration") => Box::new(Duration(
            i64::try_from(l.duration_ms).ok()?.checked_mul(1_000_000)?,
        )),
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
enum Side {
    Request,
    Response,
}

/// Request headers the line has a field for.
const REQUEST_OWN: [&str; 6] = [
    ":method",
    ":path",
    ":authority",
    "x-request-id",
    "x-forwarded-for",
    "user-agent",
];

/// Response headers the line has a field for.
const RESPONSE_OWN: [&str; 2] = [":status", "x-envoy-upstream-service-time"];

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

// ---------------------------------------------------------------------------------------------
// Durations and timestamps (the `cel` crate's own need its `chrono` feature, which is off).
// ---------------------------------------------------------------------------------------------

/// A CEL `google.protobuf.Duration`: nanoseconds, in an `i64` as cel-go's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Duration(i64);

/// A CEL `google.protobuf.Timestamp`: nanoseconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timestamp(i128);

impl Duration {
    /// Go's `time.ParseDuration` syntax, as CEL's `duration()`: `1s`, `-1.5h`, `1m30s`, `300ms`,
    /// `10us`, `5ns`, `0`.
    fn parse(s: &str) -> Option<Duration> {
        let (negative, mut rest) = match s.as_bytes().first() {
            Some(b'-') => (true, &s[1..]),
            Some(b'+') => (false, &s[1..]),
            _ => (false, s),
        };
        if rest == "0" {
            return Some(Duration(0));
        }
        if rest.is_empty() {
            return None;
        }
        let digits_end = |s: &str| s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let mut total: i128 = 0;
        while !rest.is_empty() {
            let (whole, r) = rest.split_at(digits_end(rest));
            let (fraction, r) = match r.strip_prefix('.') {
                Some(r) => r.split_at(digits_end(r)),
                None => ("", r),
            };
            if whole.is_empty() && fraction.is_empty() {
                return None;
            }
            let unit_end = r
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(r.len());
            let (unit, r) = r.split_at(unit_end);
            let scale: i128 = match unit {
                "ns" => 1,
                "us" | "µs" | "μs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return None,
            };
            let whole: i128 = if whole.is_empty() {
                0
            } else {
                whole.parse().ok()?
            };
            total = total.checked_add(whole.checked_mul(scale)?)?;
            if !fraction.is_empty() {
                let fraction = &fraction[..fraction.len().min(18)];
                let f: i128 = fraction.parse().ok()?;
                total += f * scale / 10i128.pow(fraction.len() as u32);
            }
            if total > i128::from(i64::MAX) + 1 {
                return None;
            }
            rest = r;
        }
        i64::try_from(if negative { -total } else { total })
            .ok()
            .map(Duration)
    }
}

impl Timestamp {
    /// RFC 3339, as CEL's `timestamp()`.
    fn parse(s: &str) -> Option<Timestamp> {
        let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
        Some(Timestamp(
            i128::from(t.timestamp()) * 1_000_000_000 + i128::from(t.timestamp_subsec_nanos()),
        ))
    }
}

fn no_overload(op: &str, lhs: &dyn Val, rhs: &dyn Val) -> ExecutionError {
    ExecutionError::no_such_overload(
        op,
        vec![
            lhs.get_type().name().to_owned(),
            rhs.get_type().name().to_owned(),
        ],
    )
}

fn overflow(op: &str) -> ExecutionError {
    ExecutionError::function_error(op, "duration or timestamp out of range")
}

/// A timestamp within `i64` seconds (CEL's range is narrower still).
fn timestamp_in_range(nanos: i128) -> Result<Timestamp, ExecutionError> {
    let seconds = nanos.div_euclid(1_000_000_000);
    if i64::try_from(seconds).is_ok() {
        Ok(Timestamp(nanos))
    } else {
        Err(overflow("timestamp"))
    }
}

impl Val for Duration {
    fn get_type(&self) -> &Type {
        &DURATION_TYPE
    }

    fn cel_type() -> &'static Type {
        &DURATION_TYPE
    }

    fn as_adder<'b, 'v>(&'b self) -> Option<&'b (dyn Adder + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn as_subtractor<'b, 'v>(&'b self) -> Option<&'b (dyn Subtractor + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn as_comparer(&self) -> Option<&dyn Comparer> {
        Some(self)
    }

    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<Duration>() == Some(self)
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(*self)
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl StaticVal for Duration {}

impl Comparer for Duration {
    fn compare(&self, rhs: &dyn Val) -> Result<Ordering, ExecutionError> {
        rhs.downcast_ref::<Duration>()
            .map(|r| self.cmp(r))
            .ok_or_else(|| ExecutionError::UnexpectedType {
                got: rhs.get_type().name().to_owned(),
                want: DURATION_TYPE.name().to_owned(),
            })
    }
}

impl Adder for Duration {
    fn add<'b, 'v>(&'b self, rhs: &(dyn Val + 'v)) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        if let Some(r) = rhs.downcast_ref::<Duration>() {
            let sum = self.0.checked_add(r.0).ok_or_else(|| overflow("_+_"))?;
            return Ok(CowVal::owned(Duration(sum)));
        }
        if let Some(t) = rhs.downcast_ref::<Timestamp>() {
            return Ok(CowVal::owned(timestamp_in_range(t.0 + i128::from(self.0))?));
        }
        Err(no_overload("_+_", self, rhs))
    }
}

impl Subtractor for Duration {
    fn sub<'b, 'v>(&'b self, rhs: &(dyn Val + 'v)) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        match rhs.downcast_ref::<Duration>() {
            Some(r) => {
                let diff = self.0.checked_sub(r.0).ok_or_else(|| overflow("_-_"))?;
                Ok(CowVal::owned(Duration(diff)))
            }
            None => Err(no_overload("_-_", self, rhs)),
        }
    }
}

impl Val for Timestamp {
    fn get_type(&self) -> &Type {
        &TIMESTAMP_TYPE
    }

    fn cel_type() -> &'static Type {
        &TIMESTAMP_TYPE
    }

    fn as_adder<'b, 'v>(&'b self) -> Option<&'b (dyn Adder + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn as_subtractor<'b, 'v>(&'b self) -> Option<&'b (dyn Subtractor + 'v)>
    where
        Self: 'v,
    {
        Some(self)
    }

    fn as_comparer(&self) -> Option<&dyn Comparer> {
        Some(self)
    }

    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<Timestamp>() == Some(self)
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(*self)
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl StaticVal for Timestamp {}

impl Comparer for Timestamp {
    fn compare(&self, rhs: &dyn Val) -> Result<Ordering, ExecutionError> {
        rhs.downcast_ref::<Timestamp>()
            .map(|r| self.cmp(r))
            .ok_or_else(|| ExecutionError::UnexpectedType {
                got: rhs.get_type().name().to_owned(),
                want: TIMESTAMP_TYPE.name().to_owned(),
            })
    }
}

impl Adder for Timestamp {
    fn add<'b, 'v>(&'b self, rhs: &(dyn Val + 'v)) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        match rhs.downcast_ref::<Duration>() {
            Some(d) => Ok(CowVal::owned(timestamp_in_range(self.0 + i128::from(d.0))?)),
            None => Err(no_overload("_+_", self, rhs)),
        }
    }
}

impl Subtractor for Timestamp {
    fn sub<'b, 'v>(&'b self, rhs: &(dyn Val + 'v)) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        if let Some(d) = rhs.downcast_ref::<Duration>() {
            return Ok(CowVal::owned(timestamp_in_range(self.0 - i128::from(d.0))?));
        }
        if let Some(t) = rhs.downcast_ref::<Timestamp>() {
            let diff = i64::try_from(self.0 - t.0).map_err(|_| overflow("_-_"))?;
            return Ok(CowVal::owned(Duration(diff)));
        }
        Err(no_overload("_-_", self, rhs))
    }
}

/// The one string argument of a conversion function.
fn string_arg<'a>(args: &'a [CowVal<'_, '_>], function: &str) -> Result<&'a str, ExecutionError> {
    match args {
        [arg] => key_str(arg.as_ref()),
        _ => Err(ExecutionError::invalid_argument_count(1, args.len())),
    }
    .map_err(|e| ExecutionError::function_error(function, e))
}

/// `duration(string)`.
fn to_duration<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let s = string_arg(&args, "duration")?;
    let d = Duration::parse(s).ok_or_else(|| {
        ExecutionError::function_error("duration", format!("invalid duration {s:?}"))
    })?;
    Ok(CowVal::owned(d))
}

/// `timestamp(string)`.
fn to_timestamp<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let s = string_arg(&args, "timestamp")?;
    let t = Timestamp::parse(s).ok_or_else(|| {
        ExecutionError::function_error("timestamp", format!("invalid timestamp {s:?}"))
    })?;
    Ok(CowVal::owned(t))
}

/// A duration's total in `unit` nanoseconds, for its `get*()` member functions.
fn duration_in<'b, 'v>(
    args: Vec<CowVal<'b, 'v>>,
    unit: i64,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    match args.first().and_then(|a| a.downcast_ref::<Duration>()) {
        Some(d) => Ok(CowVal::owned(CelInt::from(d.0 / unit))),
        None => Err(ExecutionError::function_error(
            "duration",
            "expected a duration",
        )),
    }
}

fn hours<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    duration_in(args, 3_600_000_000_000)
}

fn minutes<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    duration_in(args, 60_000_000_000)
}

fn seconds<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    duration_in(args, 1_000_000_000)
}

fn milliseconds<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    duration_in(args, 1_000_000)
}

/// A duration's member functions: totals in the unit, as cel-go's.
const DURATION_GETTERS: [(&str, &str, cel::common::functions::Function); 4] = [
    ("getHours", "waypoint_duration_to_hours", hours),
    ("getMinutes", "waypoint_duration_to_minutes", minutes),
    ("getSeconds", "waypoint_duration_to_seconds", seconds),
    (
        "getMilliseconds",
        "waypoint_duration_to_milliseconds",
        milliseconds,
    ),
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::access_log::Entry;

    fn filter(expression: &str) -> LogFilter {
        LogFilter::compile(expression).unwrap_or_else(|e| panic!("{e}"))
    }

    /// An HTTP request as the waypoint logs it.
    fn http() -> Entry {
        Entry {
            start_time: "2026-01-01T00:00:00.250Z".into(),
            method: "GET".into(),
            path: "/api/v1/items?page=2#top".into(),
            protocol: "HTTP/1.1".into(),
            response_code: 200,
            response_code_details: "via_upstream".into(),
            bytes_received: 10,
            bytes_sent: 300,
            duration_ms: 12,
            upstream_service_time_ms: Some(9),
            x_forwarded_for: "192.168.0.7".into(),
            user_agent: "curl/8.5.0".into(),
            request_id: "5f6b6c2e-0000-4000-8000-000000000001".into(),
            authority: "reviews.shop.svc.cluster.local:9080".into(),
            upstream_host: "10.0.0.9:9080".into(),
            upstream_cluster: "inbound-vip|9080|http|reviews.shop.svc.cluster.local".into(),
            downstream_local_address: "10.96.0.20:9080".into(),
            downstream_remote_address: "10.0.0.1:52000".into(),
            source_principal: "spiffe://cluster.local/ns/shop/sa/frontend".into(),
            destination_principal: "spiffe://cluster.local/ns/shop/sa/reviews".into(),
            route_name: "reviews-v1".into(),
            upstream_local_address: "10.0.0.5:40123".into(),
            attempt_count: 1,
            ..Default::default()
        }
    }

    fn eval(expression: &str, e: &Entry) -> Result<bool, String> {
        filter(expression).evaluate(&e.line())
    }

    fn is_true(expression: &str, e: &Entry) -> bool {
        match eval(expression, e) {
            Ok(b) => b,
            Err(err) => panic!("{expression}: {err}"),
        }
    }

    #[test]
    fn istio_example_error_codes() {
        let f = filter("response.code >= 400");
        assert_eq!(f.expression(), "response.code >= 400");
        let mut e = http();
        assert_eq!(f.evaluate(&e.line()), Ok(false));
        for code in [400, 404, 503] {
            e.response_code = code;
            assert_eq!(f.evaluate(&e.line()), Ok(true), "{code}");
        }
        e.response_code = 399;
        assert!(!f.matches(&e.line()));
        // No response (a TCP line): `response.code` is absent, the line is not written.
        e.response_code = 0;
        assert!(f.evaluate(&e.line()).is_err());
        assert!(!f.matches(&e.line()));
    }

    #[test]
    fn istio_example_request_header() {
        let f = filter("request.headers['x-debug'] == 'on'");
        assert_eq!(f.request_headers(), ["x-debug"]);
        assert!(f.response_headers().is_empty());
        let mut e = http();
        e.request_headers = vec![("x-debug".into(), "on".into())];
        assert_eq!(f.evaluate(&e.line()), Ok(true));
        assert!(f.matches(&e.line()));
        e.request_headers = vec![("x-debug".into(), "off".into())];
        assert_eq!(f.evaluate(&e.line()), Ok(false));
        // Absent header: no such key, an evaluation error; the line is not written.
        e.request_headers = vec![("x-other".into(), "on".into())];
        let err = f.evaluate(&e.line()).unwrap_err();
        assert!(err.contains("x-debug"), "{err}");
        assert!(!f.matches(&e.line()));
        // Envoy lowercases the key; repeated headers are joined with `,`.
        e.request_headers = vec![
            ("x-debug".into(), "on".into()),
            ("x-debug".into(), "2".into()),
        ];
        assert!(is_true("request.headers['X-Debug'] == 'on,2'", &e));
        assert!(is_true("'x-debug' in request.headers", &e));
        assert!(!is_true("'x-nope' in request.headers", &e));
        assert!(!is_true("has(request.headers.x_debug)", &e));
        // The headers the line has fields for.
        let e = http();
        assert!(is_true(
            "request.headers[':authority'] == 'reviews.shop.svc.cluster.local:9080' && \
             request.headers[':method'] == 'GET' && \
             request.headers[':path'] == '/api/v1/items?page=2#top' && \
             request.headers['user-agent'] == 'curl/8.5.0' && \
             request.headers['x-forwarded-for'] == '192.168.0.7' && \
             request.headers['x-request-id'] == request.id && size(request.headers) == 6",
            &e
        ));
        // Literal header names are reported for capture, the line's own fields are not.
        let f = filter(
            "'X-A' in request.headers || request.headers.x_b == '' || \
             has(request.headers.x_c) || request.headers[':method'] == 'GET' || \
             response.headers['Grpc-Message'] == '' || request.referer == ''",
        );
        assert_eq!(f.request_headers(), ["x-a", "x_b", "x_c", "referer"]);
        assert_eq!(f.response_headers(), ["grpc-message"]);
    }

    #[test]
    fn istio_example_errors_or_slow() {
        let f = filter("response.code >= 500 || request.duration > duration('1s')");
        let mut e = http();
        e.duration_ms = 999;
        assert_eq!(f.evaluate(&e.line()), Ok(false));
        e.duration_ms = 1000;
        assert_eq!(f.evaluate(&e.line()), Ok(false), "not more than 1s");
        e.duration_ms = 1001;
        assert_eq!(f.evaluate(&e.line()), Ok(true));
        e.duration_ms = 0;
        e.response_code = 503;
        assert_eq!(f.evaluate(&e.line()), Ok(true));
        // The duration is a CEL duration, in milliseconds.
        e.duration_ms = 1500;
        assert!(is_true("request.duration == duration('1.5s')", &e));
        assert!(is_true("request.duration == duration('1500ms')", &e));
        assert!(is_true("request.duration.getMilliseconds() == 1500", &e));
        assert!(is_true("request.duration.getSeconds() == 1", &e));
        assert!(is_true(
            "request.duration - duration('1s') < duration('501ms')",
            &e
        ));
        assert!(is_true(
            "duration('1m') + request.duration == duration('61.5s')",
            &e
        ));
        assert!(!is_true("request.duration < duration('1s')", &e));
        assert!(
            eval("request.duration > 1000", &e).is_err(),
            "no int comparison"
        );
        assert!(eval("request.duration > duration('1 s')", &e).is_err());
    }

    #[test]
    fn istio_example_mtls_and_source() {
        // Envoy's `source.address` is the address with its port (`Address::asStringView`).
        let f = filter("connection.mtls && source.address == '10.0.0.1:52000'");
        let mut e = http();
        assert_eq!(f.evaluate(&e.line()), Ok(true));
        assert!(!is_true(
            "connection.mtls && source.address == '10.0.0.1'",
            &e
        ));
        e.downstream_remote_address = "10.0.0.2:52000".into();
        assert_eq!(f.evaluate(&e.line()), Ok(false));
        // No peer identity: not mTLS.
        let mut e = http();
        e.source_principal.clear();
        assert_eq!(f.evaluate(&e.line()), Ok(false));
        assert!(is_true("!connection.mtls", &e));
        let e = http();
        assert!(is_true(
            "source.port == 52000 && destination.address == '10.96.0.20:9080' && \
             destination.port == 9080 && connection.uri_san_peer_certificate == \
             'spiffe://cluster.local/ns/shop/sa/frontend'",
            &e
        ));
        // Typed addresses (the proxy's own lines), IPv6 included.
        let remote: SocketAddr = "[fd00::1]:40000".parse().unwrap();
        let line = Line {
            downstream_remote_address: remote.into(),
            ..e.line()
        };
        let f = filter("source.address == '[fd00::1]:40000' && source.port == 40000");
        assert_eq!(f.evaluate(&line), Ok(true));
    }

    #[test]
    fn istio_example_not_health_checks() {
        let f = filter("!(request.url_path.startsWith('/health'))");
        let mut e = http();
        assert_eq!(f.evaluate(&e.line()), Ok(true));
        e.path = "/healthz".into();
        assert_eq!(f.evaluate(&e.line()), Ok(false));
        e.path = "/health?probe=1".into();
        assert_eq!(f.evaluate(&e.line()), Ok(false));
        // The query is not part of `url_path`.
        e.path = "/api?next=/health".into();
        assert_eq!(f.evaluate(&e.line()), Ok(true));
        assert!(is_true("request.url_path == '/api'", &e));
        assert!(is_true("request.path == '/api?next=/health'", &e));
        assert!(is_true("request.query == 'next=/health'", &e));
        let e = http();
        assert!(
            is_true("request.query == 'page=2'", &e),
            "without the fragment"
        );
        let mut e = http();
        e.path = "/plain".into();
        assert!(is_true(
            "request.query == '' && request.url_path == request.path",
            &e
        ));
        // A TCP line has no path: absent, not written.
        e.path.clear();
        assert!(eval("!(request.url_path.startsWith('/health'))", &e).is_err());
    }

    #[test]
    fn syntax_errors_do_not_compile() {
        for bad in ["response.code >=", "request.headers['x'", "", "a ? b"] {
            let err = LogFilter::compile(bad).unwrap_err();
            assert!(matches!(err, FilterError::Syntax { .. }), "{bad}: {err}");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        // Optional syntax: not in Envoy's runtime.
        assert!(matches!(
            LogFilter::compile("request.?path == '/'"),
            Err(FilterError::Syntax { .. })
        ));
    }

    #[test]
    fn unknown_roots_and_fields_do_not_compile() {
        let err = LogFilter::compile("foo.x == 1").unwrap_err();
        assert!(
            matches!(&err, FilterError::UnknownRoot { name, .. } if name == "foo"),
            "{err}"
        );
        let text = err.to_string();
        assert!(
            text.contains("\"foo\"") && text.contains("foo.x == 1"),
            "{text}"
        );
        let err = LogFilter::compile("response.code == 200 && bar").unwrap_err();
        assert!(matches!(&err, FilterError::UnknownRoot { name, .. } if name == "bar"));
        // Envoy's, not the waypoint's.
        let err = LogFilter::compile("metadata.filter_metadata['x'] == 1").unwrap_err();
        assert!(err.to_string().contains("does not provide"), "{err}");
        let err = LogFilter::compile("optional.of(1) == 1").unwrap_err();
        assert!(matches!(&err, FilterError::UnknownRoot { name, .. } if name == "optional"));
        // A known root, a name Envoy does not have.
        for (expr, field) in [
            ("request.pth == '/'", "request.pth"),
            ("has(response.status)", "response.status"),
            ("source['ip'] == ''", "source.ip"),
        ] {
            let err = LogFilter::compile(expr).unwrap_err();
            assert!(matches!(err, FilterError::UnknownField { .. }), "{expr}");
            assert!(err.to_string().contains(field), "{err}");
        }
        // Comprehensions are disabled, as in Envoy.
        let err = LogFilter::compile("[1, 2].exists(x, x == response.code)").unwrap_err();
        assert!(matches!(err, FilterError::Unsupported { .. }), "{err}");
        // Type names are no attributes.
        assert!(is_true(
            "type(response.code) == int && type(request.path) == string",
            &http()
        ));
        assert!(is_true(
            "type(request.duration) == google.protobuf.Duration",
            &http()
        ));
    }

    #[test]
    fn non_bool_results_are_errors() {
        let f = filter("response.code");
        let err = f.evaluate(&http().line()).unwrap_err();
        assert!(err.contains("int"), "{err}");
        assert!(!f.matches(&http().line()));
        for expr in [
            "request.path",
            "request.duration",
            "request.headers",
            "1 + 1",
        ] {
            assert!(eval(expr, &http()).is_err(), "{expr}");
        }
        assert!(eval("1 / 0 == 1", &http()).is_err());
    }

    #[test]
    fn absent_attributes_are_errors() {
        let mut e = http();
        e.start_time.clear();
        e.response_code_details.clear();
        for expr in [
            "request.time > timestamp('2020-01-01T00:00:00Z')",
            "response.code_details == 'via_upstream'",
            "connection.tls_version == 'TLSv1.3'",
            "response.backend_latency > duration('1s')",
            "xds.virtual_host_name == ''",
            "request.scheme == 'http'",
            "connection.termination_details == ''",
        ] {
            let f = filter(expr);
            let err = f.evaluate(&e.line()).unwrap_err();
            assert!(err.contains("No such key"), "{expr}: {err}");
            assert!(!f.matches(&e.line()), "{expr}");
        }
        assert!(!is_true(
            "has(request.time) || has(response.code_details)",
            &e
        ));
        assert!(is_true("has(request.path) && has(response.flags)", &e));
        // `||` forgives an error on one side when the other is true, as CEL does.
        assert!(is_true(
            "connection.tls_version == 'x' || response.code == 200",
            &e
        ));
    }

    #[test]
    fn request_attributes() {
        let mut e = http();
        e.request_headers = vec![
            (":scheme".into(), "http".into()),
            ("referer".into(), "https://shop.example/".into()),
        ];
        assert!(is_true(
            "request.method == 'GET' && request.host == 'reviews.shop.svc.cluster.local:9080' && \
             request.scheme == 'http' && request.referer == 'https://shop.example/' && \
             request.useragent == 'curl/8.5.0' && \
             request.id == '5f6b6c2e-0000-4000-8000-000000000001' && \
             request.protocol == 'HTTP/1.1' && request.size == 10",
            &e
        ));
        assert!(is_true(
            "request.time == timestamp('2026-01-01T00:00:00.250Z') && \
             request.time - timestamp('2026-01-01T00:00:00Z') == duration('250ms') && \
             request.time + duration('750ms') == timestamp('2026-01-01T00:00:01Z')",
            &e
        ));
        // The headers the line carries, name and value bytes.
        let headers: u64 = [
            (":method", "GET"),
            (":path", "/api/v1/items?page=2#top"),
            (":authority", "reviews.shop.svc.cluster.local:9080"),
            ("x-request-id", "5f6b6c2e-0000-4000-8000-000000000001"),
            ("x-forwarded-for", "192.168.0.7"),
            ("user-agent", "curl/8.5.0"),
            (":scheme", "http"),
            ("referer", "https://shop.example/"),
        ]
        .iter()
        .map(|(k, v)| (k.len() + v.len()) as u64)
        .sum();
        assert!(is_true(
            &format!("request.total_size == {}", 10 + headers),
            &e
        ));
        // A content-length header is the size, as in Envoy; an invalid one is absent.
        e.request_headers = vec![("content-length".into(), "42".into())];
        assert!(is_true("request.size == 42", &e));
        assert_eq!(
            filter("request.size > 0").request_headers(),
            ["content-length"]
        );
        e.request_headers = vec![("content-length".into(), "x".into())];
        assert!(eval("request.size == 10", &e).is_err());
        e.protocol = "HTTP/2".into();
        assert!(is_true("request.protocol == 'HTTP/2'", &e));
        // A typed start time.
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_767_225_600_250);
        let line = Line {
            start_time: t.into(),
            ..e.line()
        };
        let f = filter("request.time == timestamp('2026-01-01T00:00:00.250Z')");
        assert_eq!(f.evaluate(&line), Ok(true));
        let f = filter("request.time > timestamp('2026-01-01T00:00:00.251Z')");
        assert_eq!(f.evaluate(&line), Ok(false));
    }

    #[test]
    fn response_attributes() {
        let mut e = http();
        e.response_headers = vec![("content-type".into(), "application/grpc".into())];
        assert!(is_true(
            "response.code == 200 && response.code_details == 'via_upstream' && \
             response.size == 300 && response.flags == 0 && \
             response.headers['content-type'] == 'application/grpc' && \
             response.headers[':status'] == '200' && \
             response.headers['x-envoy-upstream-service-time'] == '9'",
            &e
        ));
        let headers = "content-type".len()
            + "application/grpc".len()
            + ":status".len()
            + 3
            + "x-envoy-upstream-service-time".len()
            + 1;
        assert!(is_true(
            &format!("response.total_size == {}", 300 + headers),
            &e
        ));
        assert!(is_true("size(response.headers) == 3", &e));
        // A captured header the line also has a field for is one header.
        let mut no_response = e.clone();
        no_response.response_code = 0;
        no_response.upstream_service_time_ms = None;
        no_response.response_headers = vec![(":status".into(), "204".into())];
        assert!(is_true(
            "size(response.headers) == 1 && response.headers[':status'] == '204'",
            &no_response
        ));
        // The flags: bit n for Envoy's CoreResponseFlag n.
        e.response_flags = "UF,URX".into();
        assert!(
            is_true("response.flags == 32800", &e),
            "UF = 1 << 5, URX = 1 << 15"
        );
        assert!(is_true("response.flags % 64 >= 32", &e));
        e.response_flags = "NR".into();
        assert!(is_true("response.flags == 256", &e));
        e.response_flags = "LH".into();
        assert!(is_true("response.flags == 1", &e));
        e.response_flags = "UDO,DR".into();
        assert!(is_true("response.flags == 805306368", &e));
        // gRPC status: the header, else inferred from the HTTP status.
        e.response_headers = vec![("grpc-status".into(), "5".into())];
        assert!(is_true("response.grpc_status == 5", &e));
        e.response_headers = vec![("grpc-status".into(), "99".into())];
        assert!(is_true("response.grpc_status == -1", &e), "InvalidCode");
        e.response_headers.clear();
        for (code, grpc) in [
            (200, 2),
            (400, 13),
            (401, 16),
            (403, 7),
            (404, 12),
            (503, 14),
        ] {
            e.response_code = code;
            assert!(
                is_true(&format!("response.grpc_status == {grpc}"), &e),
                "{code}"
            );
        }
        assert_eq!(
            filter("response.grpc_status == 0").response_headers(),
            ["grpc-status"]
        );
        e.response_code = 0;
        assert!(eval("response.grpc_status == 2", &e).is_err());
    }

    #[test]
    fn connection_upstream_and_xds_attributes() {
        let mut e = http();
        assert!(is_true(
            "upstream.address == '10.0.0.9:9080' && upstream.port == 9080 && \
             upstream.local_address == '10.0.0.5:40123' && \
             upstream.transport_failure_reason == '' && upstream.request_attempt_count == 1u && \
             upstream.uri_san_peer_certificate == 'spiffe://cluster.local/ns/shop/sa/reviews' && \
             xds.cluster_name == 'inbound-vip|9080|http|reviews.shop.svc.cluster.local' && \
             xds.route_name == 'reviews-v1' && connection.requested_server_name == ''",
            &e
        ));
        e.upstream_transport_failure_reason = "connection refused".into();
        e.requested_server_name = "reviews.shop".into();
        e.connection_termination_details = "rbac_access_denied_matched_policy[none]".into();
        e.attempt_count = 3;
        assert!(is_true(
            "upstream.transport_failure_reason == 'connection refused' && \
             connection.requested_server_name == 'reviews.shop' && \
             connection.termination_details.startsWith('rbac_') && \
             upstream.request_attempt_count == 3u",
            &e
        ));
        // No upstream picked: no upstream info.
        let mut e = http();
        e.upstream_host.clear();
        assert!(eval("upstream.transport_failure_reason == ''", &e).is_err());
        assert!(eval("upstream.address == ''", &e).is_err());
        assert!(eval("upstream.port == 0", &e).is_err());
    }

    #[test]
    fn only_the_roots_referenced_are_resolved() {
        let f = filter("response.code == 200");
        assert_eq!(f.roots, Root::Response.bit());
        let f = filter("request.path == '/' || source.port == 1 || xds.route_name == ''");
        assert_eq!(
            f.roots,
            Root::Request.bit() | Root::Source.bit() | Root::Xds.bit()
        );
    }

    #[test]
    fn durations_parse_as_cel_go_does() {
        let ns = |s: &str| Duration::parse(s).map(|d| d.0);
        assert_eq!(ns("1s"), Some(1_000_000_000));
        assert_eq!(ns("0"), Some(0));
        assert_eq!(ns("-1.5h"), Some(-5_400_000_000_000));
        assert_eq!(ns("1m30s"), Some(90_000_000_000));
        assert_eq!(ns("300ms"), Some(300_000_000));
        assert_eq!(ns("10us"), Some(10_000));
        assert_eq!(ns("10µs"), Some(10_000));
        assert_eq!(ns("5ns"), Some(5));
        assert_eq!(ns(".5s"), Some(500_000_000));
        assert_eq!(ns("1.s"), Some(1_000_000_000));
        for bad in [
            "",
            "1",
            "s",
            ".s",
            "1d",
            "1 s",
            "-",
            "1s2",
            "9999999999999h",
        ] {
            assert_eq!(ns(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_filter_is_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<LogFilter>();
    }
}
