//! Request matching against [`HttpRoute`]s with Istio's `HTTPMatchRequest`
//! semantics, as istiod translates them to Envoy routes
//! (`pilot/pkg/networking/core/route/route.go`, `TranslateRouteMatch`):
//!
//! - `uri`: `exact` and `regex` compare the path without its query string,
//!   `prefix` the whole `:path` including the query (Envoy's `path`,
//!   `safe_regex` and `prefix`). `regex` is a FULL match. `ignoreUriCase`
//!   makes `exact`/`prefix` ASCII case-insensitive; Envoy ignores it for regex.
//! - `headers`: an absent header never matches; `{}` means "present".
//! - `withoutHeaders`: inverted header match with a missing header treated as
//!   `""` (`invert_match` + `treat_missing_header_as_empty`); `{}` (or
//!   `regex: "*"`) means "absent".
//! - `queryParams`: first value of the parameter, raw as Envoy's router sees it
//!   (`QueryParamsMulti::parseQueryString`, no percent-decoding); `?a` has the
//!   value `""`, so `exact: ""` means "present with an empty value"; `{}`
//!   means "present".
//! - `method`, `scheme`, `authority`: string matches on `:method`, `:scheme`,
//!   `:authority`.
//! - `port`: the service port the request came in on; `sourceLabels` /
//!   `sourceNamespace`: the source workload, when the [`RequestView`] knows it
//!   (unknown never matches).
//!
//! Matching never allocates: the first failing condition is a borrowed
//! [`Miss`], formatted only when someone asks (`Snapshot::explain_route`).

use crate::model::{labels_superset, HttpRoute, RouteMatch, StringMatch};
use std::collections::BTreeMap;
use std::fmt;

/// The parts of an HTTP request that routing looks at. Only `path` and
/// `header` are required; the rest have defaults so simple views keep working.
pub trait RequestView {
    /// Request path including the query string (the `:path` pseudo-header).
    fn path(&self) -> &str;
    /// First value of a header; `lowercase_name` is already lowercased.
    fn header(&self, lowercase_name: &str) -> Option<&str>;
    /// `:method`. Default: the `:method` header if the view has it, else `GET`.
    fn method(&self) -> &str {
        self.header(":method").unwrap_or("GET")
    }
    /// `:scheme`. Default: the `:scheme` header if the view has it, else `http`.
    fn scheme(&self) -> &str {
        self.header(":scheme").unwrap_or("http")
    }
    /// `:authority` (the Host header for HTTP/1). Default: `header(":authority")`.
    fn authority(&self) -> Option<&str> {
        self.header(":authority")
    }
    /// Service port the request came in on; 0 = unknown (a `port` condition
    /// then never matches). `Snapshot::route` uses its own `port` argument.
    fn port(&self) -> u16 {
        0
    }
    /// Labels of the source workload, when known.
    fn source_labels(&self) -> Option<&crate::Labels> {
        None
    }
    /// Namespace of the source workload, when known.
    fn source_namespace(&self) -> Option<&str> {
        None
    }
}

/// A simple owned [`RequestView`], handy for tests and tools.
#[derive(Debug, Clone, Default)]
pub struct SimpleRequest {
    pub path: String,
    /// (name, value); names are compared case-insensitively.
    pub headers: Vec<(String, String)>,
    /// `None` = `GET`.
    pub method: Option<String>,
    /// `None` = `http`.
    pub scheme: Option<String>,
    /// `None` = the `:authority` header, else the `host` header.
    pub authority: Option<String>,
    /// 0 = unknown.
    pub port: u16,
    pub source_labels: Option<crate::Labels>,
    pub source_namespace: Option<String>,
}

impl SimpleRequest {
    pub fn new(path: impl Into<String>) -> Self {
        SimpleRequest {
            path: path.into(),
            ..SimpleRequest::default()
        }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into());
        self
    }

    pub fn with_scheme(mut self, scheme: impl Into<String>) -> Self {
        self.scheme = Some(scheme.into());
        self
    }

    pub fn with_authority(mut self, authority: impl Into<String>) -> Self {
        self.authority = Some(authority.into());
        self
    }

    pub fn with_port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Source workload labels, e.g. `[("app", "productpage")]`.
    pub fn with_source_labels<K, V>(mut self, labels: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        self.source_labels = Some(
            labels
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        );
        self
    }

    pub fn with_source_namespace(mut self, namespace: impl Into<String>) -> Self {
        self.source_namespace = Some(namespace.into());
        self
    }
}

impl RequestView for SimpleRequest {
    fn path(&self) -> &str {
        &self.path
    }

    fn header(&self, lowercase_name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(lowercase_name))
            .map(|(_, v)| v.as_str())
    }

    fn method(&self) -> &str {
        self.method.as_deref().unwrap_or("GET")
    }

    fn scheme(&self) -> &str {
        self.scheme.as_deref().unwrap_or("http")
    }

    fn authority(&self) -> Option<&str> {
        self.authority
            .as_deref()
            .or_else(|| self.header(":authority"))
            .or_else(|| self.header("host"))
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn source_labels(&self) -> Option<&crate::Labels> {
        self.source_labels.as_ref()
    }

    fn source_namespace(&self) -> Option<&str> {
        self.source_namespace.as_deref()
    }
}

impl StringMatch {
    /// Does `value` satisfy this condition? (`Present` always does.)
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Regex(r) => r.is_match(value),
            StringMatch::Present => true,
        }
    }

    /// URI semantics (as Envoy): `exact` and `regex` compare the path without
    /// its query string, `prefix` compares the full path including the query.
    pub fn matches_uri(&self, path_and_query: &str) -> bool {
        self.matches_uri_case(path_and_query, false)
    }

    /// [`matches_uri`](Self::matches_uri), with `ignoreUriCase` applied to
    /// `exact` and `prefix` (ASCII case folding, as Envoy's `case_sensitive: false`).
    pub fn matches_uri_case(&self, path_and_query: &str, ignore_case: bool) -> bool {
        match self {
            StringMatch::Exact(s) if ignore_case => {
                path_only(path_and_query).eq_ignore_ascii_case(s)
            }
            StringMatch::Exact(s) => path_only(path_and_query) == s,
            StringMatch::Prefix(p) if ignore_case => path_and_query
                .as_bytes()
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes())),
            StringMatch::Prefix(p) => path_and_query.starts_with(p.as_str()),
            StringMatch::Regex(r) => r.is_match(path_only(path_and_query)),
            StringMatch::Present => true,
        }
    }

    /// The value a `uri` condition is compared with (for messages).
    fn uri_subject<'a>(&self, path_and_query: &'a str) -> &'a str {
        match self {
            StringMatch::Prefix(_) => path_and_query,
            _ => path_only(path_and_query),
        }
    }
}

impl fmt::Display for StringMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StringMatch::Exact(s) => write!(f, "exact {s:?}"),
            StringMatch::Prefix(s) => write!(f, "prefix {s:?}"),
            StringMatch::Regex(r) => write!(f, "regex {:?}", r.as_str()),
            StringMatch::Present => f.write_str("present"),
        }
    }
}

/// The path without query string and fragment.
fn path_only(path: &str) -> &str {
    match path.find(['?', '#']) {
        Some(i) => &path[..i],
        None => path,
    }
}

/// First value of query parameter `name` in `path` (raw, as Envoy's router
/// compares it: no percent-decoding; `?a` and `?a=` both give `""`).
pub fn query_param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let query = path.split_once('?')?.1;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query.split('&').find_map(|param| {
        let (k, v) = param.split_once('=').unwrap_or((param, ""));
        (k == name).then_some(v)
    })
}

/// A header of the request, with the HTTP/2 pseudo-headers Istio allows in
/// `headers` served from the view's own accessors.
fn header_value<'a>(req: &'a dyn RequestView, name: &str) -> Option<&'a str> {
    match name {
        ":method" => Some(req.method()),
        ":scheme" => Some(req.scheme()),
        ":authority" => req.authority(),
        ":path" => Some(req.path()),
        _ => req.header(name),
    }
}

/// Why a match block did not match: its first failing condition, borrowed
/// from the route and the request. `Display` gives the words.
#[derive(Debug, Clone, Copy)]
pub enum Miss<'a> {
    Port {
        want: u16,
        got: u16,
    },
    Gateways(&'a [String]),
    SourceNamespace {
        want: &'a str,
        got: Option<&'a str>,
    },
    SourceLabels {
        want: &'a BTreeMap<String, String>,
        got: Option<&'a crate::Labels>,
    },
    Uri {
        cond: &'a StringMatch,
        ignore_case: bool,
        value: &'a str,
    },
    /// `scheme`, `method` or `authority`.
    Pseudo {
        field: &'static str,
        cond: &'a StringMatch,
        value: Option<&'a str>,
    },
    Header {
        name: &'a str,
        cond: &'a StringMatch,
        value: Option<&'a str>,
    },
    WithoutHeader {
        name: &'a str,
        cond: &'a StringMatch,
        value: Option<&'a str>,
    },
    QueryParam {
        name: &'a str,
        cond: &'a StringMatch,
        value: Option<&'a str>,
    },
}

/// `{k=v, …}`.
fn show_labels<'a>(labels: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let pairs: Vec<String> = labels
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

/// [`show_labels`] of a selector.
fn show_selector(selector: &BTreeMap<String, String>) -> String {
    show_labels(selector.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

fn value_mismatch(
    f: &mut fmt::Formatter<'_>,
    what: fmt::Arguments<'_>,
    cond: &StringMatch,
    value: Option<&str>,
) -> fmt::Result {
    match value {
        None => write!(f, "{what}: absent"),
        Some(v) => write!(f, "{what} {cond} does not match {v:?}"),
    }
}

impl fmt::Display for Miss<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Miss::Port { want, got: 0 } => {
                write!(f, "port {want} does not match the request's port (unknown)")
            }
            Miss::Port { want, got } => write!(f, "port {want} does not match {got}"),
            Miss::Gateways(gws) => write!(f, "gateways [{}] do not include mesh", gws.join(", ")),
            Miss::SourceNamespace { want, got: None } => {
                write!(f, "sourceNamespace {want:?}: source namespace unknown")
            }
            Miss::SourceNamespace {
                want,
                got: Some(got),
            } => write!(f, "sourceNamespace {want:?} does not match {got:?}"),
            Miss::SourceLabels { want, got: None } => {
                write!(
                    f,
                    "sourceLabels {}: source labels unknown",
                    show_selector(want)
                )
            }
            Miss::SourceLabels {
                want,
                got: Some(got),
            } => write!(
                f,
                "sourceLabels {} not all in source labels {}",
                show_selector(want),
                show_labels(got.iter())
            ),
            Miss::Uri {
                cond,
                ignore_case,
                value,
            } => {
                let ic = if ignore_case && !matches!(cond, StringMatch::Regex(_)) {
                    " (ignoreUriCase)"
                } else {
                    ""
                };
                write!(f, "uri {cond}{ic} does not match {value:?}")
            }
            Miss::Pseudo { field, cond, value } => {
                value_mismatch(f, format_args!("{field}"), cond, value)
            }
            Miss::Header { name, cond, value } => {
                value_mismatch(f, format_args!("header {name}"), cond, value)
            }
            Miss::WithoutHeader { name, cond, value } => match (cond, value) {
                (StringMatch::Present, _) => write!(f, "withoutHeaders {name}: present"),
                (_, Some(v)) => write!(f, "withoutHeaders {name} {cond} matches {v:?}"),
                (_, None) => write!(
                    f,
                    "withoutHeaders {name} {cond} matches the absent header (taken as \"\")"
                ),
            },
            Miss::QueryParam { name, cond, value } => {
                value_mismatch(f, format_args!("queryParams {name}"), cond, value)
            }
        }
    }
}

impl RouteMatch {
    /// All present conditions hold, with the port taken from
    /// [`RequestView::port`]. A missing header never matches.
    pub fn matches(&self, req: &dyn RequestView) -> bool {
        self.matches_on_port(req, req.port())
    }

    /// All present conditions hold for a request that came in on service port `port`.
    pub fn matches_on_port(&self, req: &dyn RequestView, port: u16) -> bool {
        self.first_miss(req, port).is_none()
    }

    /// Can this block match anything on `port`? (Its `port` and `gateways`
    /// conditions, which istiod evaluates when it builds a port's routes.)
    pub fn applies_to_port(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port) && self.applies_to_mesh()
    }

    fn applies_to_mesh(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh")
    }

    /// The first condition (in a fixed order: port, gateways, sourceNamespace,
    /// sourceLabels, uri, scheme, method, authority, headers, withoutHeaders,
    /// queryParams) that does not hold, or `None` when the block matches.
    pub fn first_miss<'a>(&'a self, req: &'a dyn RequestView, port: u16) -> Option<Miss<'a>> {
        if let Some(want) = self.port {
            if want != port {
                return Some(Miss::Port { want, got: port });
            }
        }
        if !self.applies_to_mesh() {
            return Some(Miss::Gateways(&self.gateways));
        }
        // istiod's sourceMatchHTTP only looks at the source when `gateways` is empty.
        if self.gateways.is_empty() {
            if let Some(want) = self.source_namespace.as_deref() {
                let got = req.source_namespace();
                if got != Some(want) {
                    return Some(Miss::SourceNamespace { want, got });
                }
            }
            if !self.source_labels.is_empty() {
                let got = req.source_labels();
                if !got.is_some_and(|l| labels_superset(l, &self.source_labels)) {
                    return Some(Miss::SourceLabels {
                        want: &self.source_labels,
                        got,
                    });
                }
            }
        }
        if let Some(cond) = &self.uri {
            let path = req.path();
            if !cond.matches_uri_case(path, self.ignore_uri_case) {
                return Some(Miss::Uri {
                    cond,
                    ignore_case: self.ignore_uri_case,
                    value: cond.uri_subject(path),
                });
            }
        }
        let pseudo = [
            ("scheme", &self.scheme, Some(req.scheme())),
            ("method", &self.method, Some(req.method())),
            ("authority", &self.authority, req.authority()),
        ];
        for (field, cond, value) in pseudo {
            if let Some(cond) = cond {
                if !value.is_some_and(|v| cond.matches(v)) {
                    return Some(Miss::Pseudo { field, cond, value });
                }
            }
        }
        for (name, cond) in &self.headers {
            let value = header_value(req, name);
            if !value.is_some_and(|v| cond.matches(v)) {
                return Some(Miss::Header { name, cond, value });
            }
        }
        for (name, cond) in &self.without_headers {
            let value = header_value(req, name);
            let holds = match cond {
                StringMatch::Present => value.is_some(),
                _ => cond.matches(value.unwrap_or("")),
            };
            if holds {
                return Some(Miss::WithoutHeader { name, cond, value });
            }
        }
        for (name, cond) in &self.query_params {
            let value = query_param(req.path(), name);
            if !value.is_some_and(|v| cond.matches(v)) {
                return Some(Miss::QueryParam { name, cond, value });
            }
        }
        None
    }

    /// The first failing condition in words, or `None` when the block matches.
    pub fn mismatch(&self, req: &dyn RequestView, port: u16) -> Option<String> {
        self.first_miss(req, port).map(|m| m.to_string())
    }
}

impl HttpRoute {
    /// Any match block holds (port from [`RequestView::port`]); no match
    /// blocks = matches everything.
    pub fn matches(&self, req: &dyn RequestView) -> bool {
        self.matches_on_port(req, req.port())
    }

    /// Any match block holds for a request on service port `port`.
    pub fn matches_on_port(&self, req: &dyn RequestView, port: u16) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches_on_port(req, port))
    }

    /// Would istiod keep this route in the route table of `port`? (No match
    /// blocks, or one whose `port`/`gateways` allow it.)
    pub fn applies_to_port(&self, port: u16) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.applies_to_port(port))
    }
}

#[cfg(test)]
mod tests;
