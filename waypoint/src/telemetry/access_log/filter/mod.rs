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
//! optional syntax. Durations and timestamps are the `cel` crate's (its `chrono` feature), which
//! follows cel-go: `duration('1s')` and `timestamp('2026-01-01T00:00:00Z')` make them; they compare
//! (`<`, `==`, ...) with their own kind, add and subtract (a timestamp minus a timestamp is a
//! duration); a duration has `getHours()`, `getMinutes()`, `getSeconds()` and `getMilliseconds()`
//! (totals), and a timestamp `getFullYear()`, `getMonth()`, `getDate()`, `getDayOfWeek()`,
//! `getHours()`, ... (`request.time` is in UTC; a time zone may be given, as in
//! `getHours('Europe/Paris')`).

use std::fmt;
use std::sync::{Arc, LazyLock};

use cel::common::types::CelBool;
use cel::{Context, Env, Program, Value};

use super::Line;

mod attributes;
mod references;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_time;

use attributes::Attributes;
use references::References;

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

/// Why an expression gives no verdict on a line (the line is not written).
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Execution(#[from] cel::ExecutionError),
    #[error("access log filter {expression:?} evaluated to a {type_name}, not a bool")]
    NotBool {
        expression: String,
        type_name: String,
    },
}

/// A compiled access-log filter expression.
pub struct LogFilter {
    program: Program,
    expression: String,
    /// [`references::Root::bit`]s of the roots the expression reads: the only ones it is given.
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
    pub fn evaluate(&self, line: &Line<'_>) -> Result<bool, EvalError> {
        let attributes = Attributes {
            line,
            roots: self.roots,
        };
        let mut context = Context::with_env(Arc::clone(&ENV));
        context.set_variable_resolver(&attributes);
        let value = Value::resolve_val(self.program.expression(), &context)?;
        match value.downcast_ref::<CelBool>() {
            Some(b) => Ok(*b.inner()),
            None => Err(EvalError::NotBool {
                expression: self.expression.clone(),
                type_name: value.get_type().name().to_string(),
            }),
        }
    }

    /// Whether to write the line: [`LogFilter::evaluate`], an error being `false`.
    pub fn matches(&self, line: &Line<'_>) -> bool {
        self.evaluate(line).unwrap_or(false)
    }
}

/// The standard library, durations and timestamps included, without the optional syntax
/// (Envoy's runtime has none).
static ENV: LazyLock<Arc<Env>> =
    LazyLock::new(|| Arc::new(Env::stdlib().with_optional_support(false)));
