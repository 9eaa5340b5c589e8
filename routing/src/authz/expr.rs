//! Authorization expressions: attributes of a request, matchers on them, and the and/or/not
//! tree Envoy's RBAC principals and permissions are made of, evaluated in three values.

use std::borrow::Cow;
use std::net::IpAddr;

use serde::Serialize;

use super::eval::{AuthzView, Jwt};
use crate::model::MatchRegex;
use crate::tcp::Cidr;

/// A three-valued truth: `Unknown` is an attribute the request cannot have (HTTP on TCP) or a
/// matcher the waypoint cannot evaluate. Kleene's logic: `and` is false if any side is false,
/// `or` true if any side is true, `not unknown` is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tri {
    True,
    False,
    Unknown,
}

impl Tri {
    fn not(self) -> Tri {
        match self {
            Tri::True => Tri::False,
            Tri::False => Tri::True,
            Tri::Unknown => Tri::Unknown,
        }
    }
}

impl std::fmt::Display for Tri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tri::True => "true",
            Tri::False => "false",
            Tri::Unknown => "unknown",
        })
    }
}

impl From<bool> for Tri {
    fn from(b: bool) -> Tri {
        if b {
            Tri::True
        } else {
            Tri::False
        }
    }
}

/// What a matcher looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attr {
    /// The client's SPIFFE id, `spiffe://td/ns/NS/sa/SA` (`source.principal`).
    SourcePrincipal,
    /// The namespace of the client's SPIFFE id (`source.namespace`).
    SourceNamespace,
    /// The client pod's address (ztunnel's `forwarded: for=`), `source.ip` / Envoy's
    /// `direct_remote_ip`.
    SourceIp,
    /// The original client address (`remote.ip`; the source address unless trusted proxies
    /// say otherwise).
    RemoteIp,
    /// `iss/sub` of the request's validated JWT (`request.auth.principal`).
    RequestPrincipal,
    RequestAudiences,
    RequestPresenter,
    /// A claim of the validated JWT, by path (`request.auth.claims[a][b]`).
    RequestClaim(Vec<String>),
    /// `:authority`.
    Host,
    Method,
    /// The path without its query string.
    Path,
    /// A request header, lowercased name.
    Header(String),
    DestinationIp,
    DestinationPort,
    /// The TLS server name the client asked for (none inside HBONE).
    Sni,
}

impl Attr {
    /// Attributes only an HTTP request has: on a TCP connection a rule on them is unknown,
    /// which makes ALLOW rules not match and DENY rules match (istiod drops such ALLOW rules and
    /// ignores such fields in DENY rules for TCP).
    pub fn http_only(&self) -> bool {
        matches!(
            self,
            Attr::RequestPrincipal
                | Attr::RequestAudiences
                | Attr::RequestPresenter
                | Attr::RequestClaim(_)
                | Attr::Host
                | Attr::Method
                | Attr::Path
                | Attr::Header(_)
        )
    }
}

/// A string comparison; `ignore_case` is ASCII case folding (Envoy's `ignore_case`).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StrMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    /// A full match (Envoy `safe_regex`).
    Regex(MatchRegex),
    /// Any value, as long as there is one, empty included (Envoy `present_match`; Istio's `*`
    /// for headers, hosts and methods).
    Present,
    /// A non-empty value (istiod's `*` elsewhere: `safe_regex: ".+"`).
    NonEmpty,
}

impl StrMatch {
    /// Istio's string value syntax in AuthorizationPolicy fields (istiod `StringMatcher`): `*`
    /// (non-empty), `abc*` (prefix), `*abc` (suffix), otherwise exact.
    pub fn istio(value: &str) -> StrMatch {
        if value == "*" {
            StrMatch::NonEmpty
        } else if let Some(p) = value.strip_suffix('*') {
            StrMatch::Prefix(p.to_string())
        } else if let Some(s) = value.strip_prefix('*') {
            StrMatch::Suffix(s.to_string())
        } else {
            StrMatch::Exact(value.to_string())
        }
    }

    pub fn matches(&self, value: &str, ignore_case: bool) -> bool {
        let eq = |a: &str, b: &str| {
            if ignore_case {
                a.eq_ignore_ascii_case(b)
            } else {
                a == b
            }
        };
        match self {
            StrMatch::Exact(s) => eq(value, s),
            StrMatch::Prefix(p) => {
                value.len() >= p.len()
                    && value.is_char_boundary(p.len())
                    && eq(&value[..p.len()], p)
            }
            StrMatch::Suffix(s) => {
                value.len() >= s.len()
                    && value.is_char_boundary(value.len() - s.len())
                    && eq(&value[value.len() - s.len()..], s)
            }
            StrMatch::Contains(s) => {
                if ignore_case {
                    value.to_ascii_lowercase().contains(&s.to_ascii_lowercase())
                } else {
                    value.contains(s.as_str())
                }
            }
            StrMatch::Regex(r) => r.is_match(value),
            StrMatch::Present => true,
            StrMatch::NonEmpty => !value.is_empty(),
        }
    }
}

/// A test on one attribute.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Matcher {
    Str {
        m: StrMatch,
        ignore_case: bool,
    },
    Cidr(Cidr),
    Port(u16),
    /// `[start, end)`, as Envoy's `destination_port_range`.
    PortRange(u16, u16),
}

/// An Envoy RBAC principal or permission: a tree of attribute tests.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Expr {
    /// Always true (`any: true`, an empty `from`/`to`).
    Any,
    And(Vec<Expr>),
    Or(Vec<Expr>),
    Not(Box<Expr>),
    Test(Attr, Matcher),
    /// A construct the waypoint cannot evaluate, with what it is: always unknown.
    Unknown(String),
}

/// What an attribute is for one request.
enum Value<'a> {
    Str(&'a str),
    Owned(String),
    List(Vec<String>),
    Ip(IpAddr),
    Port(u16),
    Absent,
    /// Not something this request can have (HTTP attribute on TCP).
    NotApplicable,
}

impl Expr {
    pub fn and(mut parts: Vec<Expr>) -> Expr {
        parts.retain(|p| !matches!(p, Expr::Any));
        match parts.len() {
            0 => Expr::Any,
            1 => parts.pop().expect("one"),
            _ => Expr::And(parts),
        }
    }

    /// `or` of `parts`; an empty list is false (Envoy's `or_ids` needs at least one).
    pub fn or(mut parts: Vec<Expr>) -> Expr {
        match parts.len() {
            1 => parts.pop().expect("one"),
            _ => Expr::Or(parts),
        }
    }

    pub fn negate(e: Expr) -> Expr {
        Expr::Not(Box::new(e))
    }

    pub fn eval(&self, req: &dyn AuthzView) -> Tri {
        match self {
            Expr::Any => Tri::True,
            Expr::And(parts) => {
                let mut out = Tri::True;
                for p in parts {
                    match p.eval(req) {
                        Tri::False => return Tri::False,
                        Tri::Unknown => out = Tri::Unknown,
                        Tri::True => {}
                    }
                }
                out
            }
            Expr::Or(parts) => {
                let mut out = Tri::False;
                for p in parts {
                    match p.eval(req) {
                        Tri::True => return Tri::True,
                        Tri::Unknown => out = Tri::Unknown,
                        Tri::False => {}
                    }
                }
                out
            }
            Expr::Not(e) => e.eval(req).not(),
            Expr::Test(attr, m) => test(attr, m, req),
            Expr::Unknown(_) => Tri::Unknown,
        }
    }
}

fn value<'a>(attr: &Attr, req: &'a dyn AuthzView) -> Value<'a> {
    if attr.http_only() && !req.is_http() {
        return Value::NotApplicable;
    }
    let opt = |v: Option<&'a str>| v.map_or(Value::Absent, Value::Str);
    match attr {
        Attr::SourcePrincipal => opt(req.principal()),
        Attr::SourceNamespace => opt(req.principal().and_then(namespace_of)),
        Attr::SourceIp => req.source_ip().map_or(Value::Absent, Value::Ip),
        Attr::RemoteIp => req.remote_ip().map_or(Value::Absent, Value::Ip),
        Attr::DestinationIp => req.destination_ip().map_or(Value::Absent, Value::Ip),
        Attr::DestinationPort => Value::Port(req.destination_port()),
        Attr::Sni => opt(req.sni()),
        Attr::Host => opt(req.host()),
        Attr::Method => Value::Str(req.method()),
        Attr::Path => Value::Str(req.path().split('?').next().unwrap_or("")),
        Attr::Header(name) => match req.header(name) {
            None => Value::Absent,
            Some(Cow::Borrowed(v)) => Value::Str(v),
            Some(Cow::Owned(v)) => Value::Owned(v),
        },
        Attr::RequestPrincipal
        | Attr::RequestAudiences
        | Attr::RequestPresenter
        | Attr::RequestClaim(_) => match req.jwt() {
            Jwt::None => Value::Absent,
            Jwt::Unverifiable => Value::NotApplicable,
            Jwt::Claims(claims) => claim_value(attr, claims),
        },
    }
}

/// `ns` of `spiffe://td/ns/ns/sa/sa` (or of `td/ns/ns/sa/sa`).
fn namespace_of(principal: &str) -> Option<&str> {
    let rest = principal.split_once("/ns/")?.1;
    Some(rest.split('/').next().unwrap_or(rest))
}

fn claim_value<'a>(attr: &Attr, claims: &'a serde_json::Value) -> Value<'a> {
    let get = |path: &[&str]| {
        let mut v = claims;
        for p in path {
            v = v.get(*p)?;
        }
        Some(v)
    };
    let to_value = |v: Option<&'a serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => Value::Absent,
        Some(serde_json::Value::String(s)) => Value::Str(s),
        Some(serde_json::Value::Array(items)) => Value::List(
            items
                .iter()
                .map(|i| match i {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
        ),
        Some(other) => Value::Owned(other.to_string()),
    };
    match attr {
        Attr::RequestPrincipal => match (get(&["iss"]), get(&["sub"])) {
            (Some(serde_json::Value::String(iss)), Some(serde_json::Value::String(sub))) => {
                Value::Owned(format!("{iss}/{sub}"))
            }
            _ => Value::Absent,
        },
        Attr::RequestAudiences => to_value(get(&["aud"])),
        Attr::RequestPresenter => to_value(get(&["azp"])),
        Attr::RequestClaim(path) => {
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            to_value(get(&path))
        }
        _ => Value::Absent,
    }
}

fn test(attr: &Attr, m: &Matcher, req: &dyn AuthzView) -> Tri {
    if matches!(attr, Attr::SourceIp | Attr::RemoteIp) {
        if let Some(claimed) = req.unverified_source_ip() {
            // Two possible sources: the test is known only when both agree.
            let vouched = test_value(value(attr, req), m);
            return match test_value(Value::Ip(claimed), m) {
                t if t == vouched => t,
                _ => Tri::Unknown,
            };
        }
    }
    test_value(value(attr, req), m)
}

fn test_value(v: Value<'_>, m: &Matcher) -> Tri {
    let str_test = |s: &str| match m {
        Matcher::Str { m, ignore_case } => m.matches(s, *ignore_case),
        _ => false,
    };
    match v {
        Value::NotApplicable => Tri::Unknown,
        Value::Absent => Tri::False,
        Value::Str(s) => str_test(s).into(),
        Value::Owned(s) => str_test(&s).into(),
        Value::List(items) => items.iter().any(|s| str_test(s)).into(),
        Value::Ip(ip) => match m {
            Matcher::Cidr(c) => c.contains(ip).into(),
            Matcher::Str { m, ignore_case } => m.matches(&ip.to_string(), *ignore_case).into(),
            _ => Tri::False,
        },
        Value::Port(p) => match m {
            Matcher::Port(want) => (p == *want).into(),
            Matcher::PortRange(start, end) => (p >= *start && p < *end).into(),
            Matcher::Str { m, ignore_case } => m.matches(&p.to_string(), *ignore_case).into(),
            Matcher::Cidr(_) => Tri::False,
        },
    }
}
