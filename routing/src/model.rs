//! The proto-free routing model: services, endpoints, routes and policies.
//!
//! These are plain data types; the snapshot builder turns them into indexed
//! lookup tables and precomputed [`crate::Cluster`]s.

use crate::actions::{
    Cors, Fault, HeaderOps, HeaderSink, Headers, Mirror, RetryPolicy, Rewrite, RouteAction,
};
use crate::policy::TrafficPolicy;
use crate::tcp::TcpRoute;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

mod endpoint;
pub(crate) use endpoint::UNKNOWN_ACCOUNT;
pub use endpoint::{labels_superset, spiffe_identity, transport_of, Endpoint, Locality, Workload};

/// Application protocol of a service port, derived from Istio's port `protocol`
/// field or port-name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Protocol {
    Http,
    Http2,
    Grpc,
    Tcp,
    /// Not declared (or not understood): the proxy must sniff.
    Unknown,
}

impl Protocol {
    /// True for protocols the waypoint handles at L7 (`Http`, `Http2`, `Grpc`).
    pub fn is_http(&self) -> bool {
        matches!(self, Protocol::Http | Protocol::Http2 | Protocol::Grpc)
    }

    /// Parse one Istio protocol name (case-insensitive).
    ///
    /// HTTP, HTTP2, GRPC map to themselves; GRPC-WEB → Http; TCP, TLS, HTTPS → Tcp;
    /// anything else → Unknown.
    pub fn from_istio_name(name: &str) -> Protocol {
        match name.to_ascii_uppercase().as_str() {
            "HTTP" => Protocol::Http,
            "HTTP2" => Protocol::Http2,
            "GRPC" => Protocol::Grpc,
            "GRPC-WEB" => Protocol::Http,
            "TCP" | "TLS" | "HTTPS" => Protocol::Tcp,
            _ => Protocol::Unknown,
        }
    }

    /// Protocol of a port: the explicit `protocol` field wins; otherwise the port
    /// name's prefix before the first `-` (`http-web` → Http, `tcp-mongo` → Tcp;
    /// `grpc-web…` → Http).
    pub fn from_port(name: &str, protocol: Option<&str>) -> Protocol {
        if let Some(p) = protocol {
            return Protocol::from_istio_name(p);
        }
        let lower = name.to_ascii_lowercase();
        if lower == "grpc-web" || lower.starts_with("grpc-web-") {
            return Protocol::Http;
        }
        let prefix = lower.split('-').next().unwrap_or("");
        Protocol::from_istio_name(prefix)
    }
}

/// One port of a [`Service`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServicePort {
    pub number: u16,
    pub name: String,
    pub protocol: Protocol,
    /// Port on the endpoints (Istio `targetPort`, defaults to `number`).
    pub target_port: u16,
    /// This port's own path handling (xDS: its chain's connection manager); `None` = the
    /// process-wide `--path-normalization`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<crate::path::PathPolicy>,
    /// The retry policy of this port's default route (used when no
    /// VirtualService route applies), as the front-end states it (xDS: the
    /// default route's `retry_policy`, disabled when it has none); `None` =
    /// Istio's default ([`RetryPolicy::istio_default`]).
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_arc"
    )]
    pub default_retries: Option<std::sync::Arc<RetryPolicy>>,
}

impl ServicePort {
    /// The retry policy of requests that take this port's default route.
    pub fn default_retry_policy(&self) -> std::borrow::Cow<'_, RetryPolicy> {
        match &self.default_retries {
            Some(p) => std::borrow::Cow::Borrowed(p),
            None => std::borrow::Cow::Owned(RetryPolicy::istio_default()),
        }
    }
}

pub(crate) fn serialize_arc<T: Serialize, S: serde::Serializer>(
    v: &Arc<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    v.as_ref().serialize(s)
}

fn serialize_opt_arc<T: Serialize, S: serde::Serializer>(
    v: &Option<std::sync::Arc<T>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    v.as_deref().serialize(s)
}

/// A service (from a ServiceEntry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// Fully-qualified hostname, e.g. `reviews.default.svc.cluster.local`.
    pub hostname: String,
    pub namespace: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
}

impl Service {
    /// The port with this service port number.
    pub fn port(&self, number: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.number == number)
    }
}

/// A string condition (Istio `StringMatch`). `#[non_exhaustive]`: use
/// [`StringMatch::matches`] rather than matching on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// RE2-style regex that must match the WHOLE value (Envoy `safe_regex`).
    Regex(MatchRegex),
    /// An empty StringMatch `{}`: the value only has to be present (Envoy
    /// `present_match`); as a `uri` condition it matches every path.
    Present,
}

/// A compiled regex of a [`StringMatch::Regex`], anchored to a full match
/// (`^(?:source)$`). Compares and serializes as its source text.
/// Boxed: every route match has four optional string conditions, and inline the regex would
/// make each 56 bytes instead of 32.
#[derive(Debug, Clone)]
pub struct MatchRegex(Box<Compiled>);

#[derive(Debug, Clone)]
struct Compiled {
    source: String,
    anchored: regex::Regex,
}

impl MatchRegex {
    /// Compile `source` for full matching. The error is the regex parser's
    /// reason, without the pattern (e.g. `unclosed group`).
    pub fn new(source: &str) -> Result<MatchRegex, RegexError> {
        // Check the pattern as written first, so a reason never shows our wrapper.
        regex::Regex::new(source).map_err(RegexError)?;
        let anchored = regex::Regex::new(&format!("^(?:{source})$")).map_err(RegexError)?;
        Ok(MatchRegex(Box::new(Compiled {
            source: source.to_string(),
            anchored,
        })))
    }

    /// The regex as configured.
    pub fn as_str(&self) -> &str {
        &self.0.source
    }

    /// Does the regex match all of `value`?
    pub fn is_match(&self, value: &str) -> bool {
        self.0.anchored.is_match(value)
    }
}

/// A regex that does not compile. Shows the regex parser's reason without the pattern
/// (e.g. `unclosed group`): callers name the pattern themselves.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}", regex_reason(.0))]
pub struct RegexError(regex::Error);

fn regex_reason(e: &regex::Error) -> String {
    let text = e.to_string();
    text.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("error: "))
        .map(str::to_string)
        .unwrap_or_else(|| text.lines().next().unwrap_or("invalid").trim().to_string())
}

impl PartialEq for MatchRegex {
    fn eq(&self, other: &Self) -> bool {
        self.0.source == other.0.source
    }
}

impl Eq for MatchRegex {}

impl Serialize for MatchRegex {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0.source)
    }
}

/// One `match` block of an HTTP route (Istio `HTTPMatchRequest`): all present
/// conditions must hold. See `matching.rs` for the exact semantics.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct RouteMatch {
    /// Against `:path`: `exact`/`regex` without the query string, `prefix` with it.
    pub uri: Option<StringMatch>,
    /// `uri` `exact`/`prefix` compare ASCII case-insensitively (not `regex`).
    #[serde(skip_serializing_if = "is_false")]
    pub ignore_uri_case: bool,
    /// Against `:scheme`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    /// Against `:method`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// Against `:authority` (Host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// (lowercased header name, condition); an absent header never matches.
    pub headers: Vec<(String, StringMatch)>,
    /// (lowercased header name, condition): holds when the condition does NOT;
    /// an absent header counts as `""` (Envoy `treat_missing_header_as_empty`),
    /// except for [`StringMatch::Present`], which then holds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub without_headers: Vec<(String, StringMatch)>,
    /// (name, condition) on the first value of a query parameter (raw, as
    /// Envoy's router compares it); `?a` has the value `""`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<(String, StringMatch)>,
    /// The service port the request came in on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Must be a subset of the source workload's labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// The source workload's namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    /// Istio `gateways`: when set, the block applies to a waypoint only if it
    /// names `mesh`, and (as in istiod) source conditions are then not checked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    pub name: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A weighted destination of an HTTP (or TCP) route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteDestination {
    /// FQDN of the destination service.
    pub host: String,
    pub subset: Option<String>,
    /// Destination service port; `None` = the port the request came in on.
    pub port: Option<u16>,
    pub weight: u32,
    /// Header operations for requests sent to this destination (HTTP only),
    /// applied after the route's (see [`HttpRoute::apply_request_headers`]).
    #[serde(skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
}

/// One entry of a VirtualService's `http` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpRoute {
    /// Route `name`, or `"<vs-name>.<index>"` when unnamed.
    pub name: String,
    /// Alternatives (OR); empty = match everything.
    pub matches: Vec<RouteMatch>,
    /// The weighted destinations when `action` is [`RouteAction::Route`];
    /// empty for redirects and direct responses.
    pub destinations: Vec<RouteDestination>,
    /// Forward, redirect or answer directly.
    pub action: RouteAction,
    /// `rewrite` (forwarded requests only). Boxed, as [`HttpRoute::cors`]: most routes have
    /// none, and inline it is 128 bytes in each.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Box<Rewrite>>,
    /// Route-level header operations (all actions).
    #[serde(skip_serializing_if = "Headers::is_empty")]
    pub headers: Headers,
    /// Request timeout; `None` = no timeout (Istio's default; also `0s`).
    #[serde(serialize_with = "crate::policy::serialize_opt_duration")]
    pub timeout: Option<Duration>,
    /// Effective retry policy: Istio's default when `retries` is unset;
    /// disabled for redirects and direct responses (nothing is forwarded).
    pub retries: std::sync::Arc<RetryPolicy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Box<Fault>>,
    /// `mirror` (+ `mirrorPercentage`) or `mirrors`; 0 % mirrors are left out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<Box<Cors>>,
}

impl HttpRoute {
    /// A forwarding route with Istio's defaults for everything else (no
    /// rewrite, header operations, timeout, fault, mirror or CORS; Istio's
    /// default retry policy).
    pub fn new(
        name: impl Into<String>,
        matches: Vec<RouteMatch>,
        destinations: Vec<RouteDestination>,
    ) -> HttpRoute {
        HttpRoute {
            name: name.into(),
            matches,
            destinations,
            action: RouteAction::Route,
            rewrite: None,
            headers: Headers::default(),
            timeout: None,
            retries: RetryPolicy::istio_default().shared(),
            fault: None,
            mirrors: Vec::new(),
            cors: None,
        }
    }

    /// The new `:path` of a forwarded request, when the route rewrites it
    /// (`None`: keep the path). `matched` is the block
    /// [`crate::Snapshot::route_with_match`] reports.
    pub fn rewritten_path(
        &self,
        matched: Option<&RouteMatch>,
        path_and_query: &str,
    ) -> Option<String> {
        let rewrite = self.rewrite.as_ref().filter(|r| r.uri.is_some())?;
        Some(rewrite.apply(path_and_query, Rewrite::matched_prefix(matched)))
    }

    /// The new `:authority` of a request forwarded to `destination`:
    /// `rewrite.authority` or the route's `headers.request` host, else the
    /// destination's (istiod gives the route level precedence).
    pub fn authority_rewrite<'a>(
        &'a self,
        destination: Option<&'a RouteDestination>,
    ) -> Option<&'a str> {
        self.rewrite
            .as_ref()
            .and_then(|r| r.authority.as_deref())
            .or(self.headers.authority.as_deref())
            .or_else(|| destination.and_then(|d| d.headers.authority.as_deref()))
    }

    /// Apply the route's and then the destination's request header
    /// operations, as one Envoy list (see [`HeaderOps::apply_layered`]).
    pub fn apply_request_headers<S: HeaderSink + ?Sized>(
        &self,
        destination: Option<&RouteDestination>,
        sink: &mut S,
    ) {
        match destination {
            Some(d) => HeaderOps::apply_layered(&[&self.headers.request, &d.headers.request], sink),
            None => self.headers.request.apply(sink),
        }
    }

    /// Apply the route's and then the destination's response header operations.
    pub fn apply_response_headers<S: HeaderSink + ?Sized>(
        &self,
        destination: Option<&RouteDestination>,
        sink: &mut S,
    ) {
        match destination {
            Some(d) => {
                HeaderOps::apply_layered(&[&self.headers.response, &d.headers.response], sink)
            }
            None => self.headers.response.apply(sink),
        }
    }
}

/// Load-balancing algorithm of a cluster. DestinationRule `simple` gives the
/// first four; `consistentHash` gives `RingHash` or `Maglev` (with the key and
/// table settings in [`crate::ConsistentHash`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum LbPolicy {
    RoundRobin,
    Random,
    /// Istio's default: power-of-two-choices on active requests.
    #[default]
    LeastRequest,
    /// Connect to the request's original destination, no load balancing
    /// ([`crate::Cluster::passthrough`]).
    Passthrough,
    /// Consistent hashing on a ring (Envoy `RING_HASH`).
    RingHash,
    /// Consistent hashing with a Maglev table (Envoy `MAGLEV`).
    Maglev,
}

/// A compiled VirtualService (hosts already resolved to FQDNs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VirtualService {
    pub namespace: String,
    pub name: String,
    pub hosts: Vec<String>,
    /// Shared with the snapshot's route tables (a request holds its route without a copy).
    pub http: Vec<Arc<HttpRoute>>,
    /// `tcp` routes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp: Vec<TcpRoute>,
}

impl VirtualService {
    /// `"namespace/name"`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A subset of a DestinationRule.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Subset {
    pub name: String,
    /// Shared: the xDS front-end gives the subsets of one name one map, whichever service's
    /// (a subset there is the one label `xds.subset/<name>: "true"`).
    #[serde(serialize_with = "serialize_arc")]
    pub labels: Arc<BTreeMap<String, String>>,
    /// Merged over the rule's policy (see [`crate::ClusterPolicy::merge`]). Shared: the xDS
    /// front-end gives equal policies one allocation (istiod gives a waypoint's clusters one).
    #[serde(serialize_with = "serialize_opt_arc")]
    pub traffic_policy: Option<Arc<TrafficPolicy>>,
}

/// A compiled DestinationRule (host already resolved to an FQDN).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DestinationRule {
    pub namespace: String,
    pub name: String,
    pub host: String,
    /// Shared as a subset's is.
    #[serde(serialize_with = "serialize_opt_arc")]
    pub traffic_policy: Option<Arc<TrafficPolicy>>,
    pub subsets: Vec<Subset>,
}

impl DestinationRule {
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests;
