//! Istio `HTTPRedirect` and `HTTPDirectResponse`, the two answers a route
//! gives without a destination.
//!
//! A redirect's `Location` follows Envoy's `RedirectAction` as istiod builds
//! it (`ApplyRedirect`): scheme from `scheme` or the request's; host from
//! `authority` or the request's `:authority`, whose port is dropped when a
//! port redirect applies or when the scheme changes away from the port's
//! default (`processRequestHost`); `:port` from `port` or `derivePort:
//! FROM_REQUEST_PORT` (the service port the request came in on), left out
//! when it is 80 with scheme http or 443 with https (istiod, with the scheme
//! defaulting to http at a waypoint); path from `uri` (the whole path;
//! its own query string replaces the request's, otherwise the request's is
//! kept), `prefixRewrite` (replaces the matched prefix) or the request's.

use super::rewrite::replace_matched;
use serde::{Serialize, Serializer};
use std::fmt;

/// The path part of a redirect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RedirectPath {
    /// Istio `uri` (Envoy `path_redirect`): the whole path.
    Uri(String),
    /// Istio `prefixRewrite` (Envoy `prefix_rewrite`): the matched prefix.
    Prefix(String),
    /// Gateway API `ReplacePrefixMatch` (the rule's PathPrefix, matched by
    /// path segment) and Envoy `regex_rewrite`: the path rewritten, the
    /// query kept.
    Regex(super::RegexRewrite),
}

/// Istio `redirectPort`: `port` or `derivePort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RedirectPort {
    /// `derivePort: FROM_PROTOCOL_DEFAULT`: no port in the location (the
    /// request's is kept or dropped as without any port setting).
    FromProtocolDefault,
    /// `derivePort: FROM_REQUEST_PORT`: the service port of the request.
    FromRequestPort,
    /// `port: N`.
    #[serde(untagged)]
    Port(u16),
}

/// Istio `HTTPRedirect`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Redirect {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<RedirectPath>,
    /// New host (`authority`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// `http` or `https`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<RedirectPort>,
    /// 301 (default), 302, 303, 307 or 308.
    pub code: u16,
}

impl Redirect {
    /// The redirect's status and `Location` for a request with this
    /// `scheme` (`http` at a waypoint), `:authority` (Host, may carry a
    /// port), `:path`, service port (`request_port`, for `FROM_REQUEST_PORT`)
    /// and matched prefix (for `prefixRewrite`; see
    /// [`super::Rewrite::matched_prefix`]).
    pub fn location(
        &self,
        scheme: &str,
        authority: &str,
        path_and_query: &str,
        request_port: u16,
        matched_prefix: Option<&str>,
    ) -> (u16, String) {
        let mut port = match self.port {
            Some(RedirectPort::Port(p)) => Some(p),
            Some(RedirectPort::FromRequestPort) if request_port != 0 => Some(request_port),
            _ => None,
        };
        // istiod: no explicit :80 for http or :443 for https (scheme
        // defaulting to http: a waypoint's listener is not TLS).
        let configured_scheme = self.scheme.as_deref().unwrap_or("http");
        if (port == Some(80) && configured_scheme.eq_ignore_ascii_case("http"))
            || (port == Some(443) && configured_scheme.eq_ignore_ascii_case("https"))
        {
            port = None;
        }
        let final_scheme = self.scheme.as_deref().unwrap_or(scheme);
        let host = match &self.authority {
            Some(a) if port.is_some() => split_port(a).0,
            Some(a) => a.as_str(),
            None => request_host(authority, scheme, final_scheme, port.is_some()),
        };
        let mut path = match &self.path {
            None => path_and_query.to_string(),
            Some(RedirectPath::Uri(u)) if u.contains('?') => u.clone(),
            Some(RedirectPath::Uri(u)) => match path_and_query.find('?') {
                Some(q) => format!("{u}{}", &path_and_query[q..]),
                None => u.clone(),
            },
            Some(RedirectPath::Prefix(p)) => replace_matched(path_and_query, matched_prefix, p),
            Some(RedirectPath::Regex(r)) => r.apply(path_and_query),
        };
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        let port = port.map(|p| format!(":{p}")).unwrap_or_default();
        (self.code, format!("{final_scheme}://{host}{port}{path}"))
    }
}

impl fmt::Display for Redirect {
    /// `301 scheme https, authority "b", port 8443, uri "/x"`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        let mut parts = Vec::new();
        if let Some(s) = &self.scheme {
            parts.push(format!("scheme {s}"));
        }
        if let Some(a) = &self.authority {
            parts.push(format!("authority {a:?}"));
        }
        match self.port {
            Some(RedirectPort::Port(p)) => parts.push(format!("port {p}")),
            Some(RedirectPort::FromRequestPort) => parts.push("port FROM_REQUEST_PORT".into()),
            Some(RedirectPort::FromProtocolDefault) => {
                parts.push("port FROM_PROTOCOL_DEFAULT".into())
            }
            None => {}
        }
        match &self.path {
            Some(RedirectPath::Uri(u)) => parts.push(format!("uri {u:?}")),
            Some(RedirectPath::Prefix(p)) => parts.push(format!("prefixRewrite {p:?}")),
            Some(RedirectPath::Regex(r)) => parts.push(format!(
                "path rewrite {:?} -> {:?}",
                r.pattern(),
                r.substitution()
            )),
            None => {}
        }
        if !parts.is_empty() {
            write!(f, " {}", parts.join(", "))?;
        }
        Ok(())
    }
}

/// `host[:port]` → (host, `:port`), as Envoy splits an authority (IPv6 in
/// brackets).
fn split_port(authority: &str) -> (&str, Option<&str>) {
    let end = if authority.starts_with('[') {
        authority.rfind("]:").map(|i| i + 1)
    } else {
        authority.rfind(':')
    };
    match end {
        Some(i) => (&authority[..i], Some(&authority[i..])),
        None => (authority, None),
    }
}

/// Envoy's `processRequestHost`: the request's authority, without its port
/// when a port redirect applies or when the scheme changes and the port is
/// the old scheme's default.
fn request_host<'a>(
    authority: &'a str,
    request_scheme: &str,
    new_scheme: &str,
    new_port: bool,
) -> &'a str {
    let (host, port) = split_port(authority);
    let Some(port) = port else {
        return authority;
    };
    let mut remove = new_port;
    if !new_scheme.eq_ignore_ascii_case(request_scheme) {
        remove |= request_scheme.eq_ignore_ascii_case("https") && port == ":443";
        remove |= request_scheme.eq_ignore_ascii_case("http") && port == ":80";
    }
    if remove {
        host
    } else {
        authority
    }
}

/// Istio `HTTPDirectResponse`: answer with `status` and `body`. (Envoy sends
/// a body as `content-type: text/plain`.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DirectResponse {
    /// 200..=599.
    pub status: u16,
    /// `body.string` or the decoded `body.bytes`; `None` = no body.
    #[serde(serialize_with = "serialize_body")]
    pub body: Option<Vec<u8>>,
}

impl DirectResponse {
    /// The body as text, when it is UTF-8.
    pub fn body_str(&self) -> Option<&str> {
        self.body
            .as_deref()
            .and_then(|b| std::str::from_utf8(b).ok())
    }
}

impl fmt::Display for DirectResponse {
    /// `503, body "sorry"` / `204` / `200, body 1024 bytes`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.status)?;
        match (&self.body, self.body_str()) {
            (None, _) => Ok(()),
            (Some(_), Some(s)) if s.len() <= 64 => write!(f, ", body {s:?}"),
            (Some(b), _) => write!(f, ", body {} bytes", b.len()),
        }
    }
}

/// UTF-8 bodies as a string, others as `{"base64": …}`.
fn serialize_body<S: Serializer>(body: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
    match body {
        None => s.serialize_none(),
        Some(b) => match std::str::from_utf8(b) {
            Ok(text) => s.serialize_str(text),
            Err(_) => {
                use serde::ser::SerializeMap;
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("base64", &base64_encode(b))?;
                m.end()
            }
        },
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Why a `directResponse.body.bytes` value is not base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Base64Error {
    #[error("too much padding")]
    Padding,
    #[error("invalid base64 character {character:?} at {at}")]
    Character { character: char, at: usize },
    #[error("truncated base64 (length is 1 mod 4)")]
    Truncated,
}

/// Decode base64 as protobuf's JSON mapping accepts `bytes`: the standard or
/// the URL-safe alphabet, padded or not (whitespace is not allowed).
pub(crate) fn base64_decode(text: &str) -> Result<Vec<u8>, Base64Error> {
    let trimmed = text.trim_end_matches('=');
    if text.len() - trimmed.len() > 2 {
        return Err(Base64Error::Padding);
    }
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for (i, c) in trimmed.bytes().enumerate() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => {
                return Err(Base64Error::Character {
                    character: c as char,
                    at: i,
                })
            }
        };
        acc = acc << 6 | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits & 0xff) as u8);
        }
    }
    if bits >= 6 {
        return Err(Base64Error::Truncated);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect() -> Redirect {
        Redirect {
            path: None,
            authority: None,
            scheme: None,
            port: None,
            code: 301,
        }
    }

    #[test]
    fn uri_and_authority() {
        let r = Redirect {
            path: Some(RedirectPath::Uri("/v1/bookRatings".into())),
            authority: Some("newratings.default.svc.cluster.local".into()),
            ..redirect()
        };
        assert_eq!(
            r.location(
                "http",
                "ratings:9080",
                "/v1/getProductRatings?id=1",
                9080,
                None
            ),
            (
                301,
                "http://newratings.default.svc.cluster.local/v1/bookRatings?id=1".into()
            )
        );
        // the uri's own query string wins
        let r = Redirect {
            path: Some(RedirectPath::Uri("/new?a=b".into())),
            code: 302,
            ..redirect()
        };
        assert_eq!(
            r.location("http", "x:9080", "/old?c=d", 9080, None),
            (302, "http://x:9080/new?a=b".into())
        );
    }

    #[test]
    fn keeps_request_host_and_path_without_settings() {
        let r = Redirect {
            scheme: Some("https".into()),
            code: 308,
            ..redirect()
        };
        // scheme change drops the old scheme's default port only
        assert_eq!(
            r.location("http", "web.example.com:80", "/a?b", 80, None),
            (308, "https://web.example.com/a?b".into())
        );
        assert_eq!(
            r.location("http", "web.example.com:8080", "/a", 8080, None),
            (308, "https://web.example.com:8080/a".into())
        );
        assert_eq!(
            r.location("http", "web.example.com", "/", 80, None).1,
            "https://web.example.com/"
        );
    }

    #[test]
    fn ports_and_derive_port() {
        let mut r = Redirect {
            port: Some(RedirectPort::Port(8443)),
            scheme: Some("https".into()),
            ..redirect()
        };
        assert_eq!(
            r.location("http", "a.example:9080", "/p", 9080, None).1,
            "https://a.example:8443/p"
        );
        // 443 with https is left out (istiod) — and then Envoy keeps the
        // request's own port, as without a port setting
        r.port = Some(RedirectPort::Port(443));
        assert_eq!(
            r.location("http", "a.example:9080", "/p", 9080, None).1,
            "https://a.example:9080/p"
        );
        assert_eq!(
            r.location("http", "a.example", "/p", 9080, None).1,
            "https://a.example/p"
        );
        // FROM_REQUEST_PORT: the service port
        r.port = Some(RedirectPort::FromRequestPort);
        r.scheme = None;
        assert_eq!(
            r.location("http", "a.example", "/p", 9080, None).1,
            "http://a.example:9080/p"
        );
        // ... unless it is 80 with http: then no port of its own (the
        // request's Host is kept as it is)
        assert_eq!(
            r.location("http", "a.example", "/p", 80, None).1,
            "http://a.example/p"
        );
        assert_eq!(
            r.location("http", "a.example:80", "/p", 80, None).1,
            "http://a.example:80/p"
        );
        // FROM_PROTOCOL_DEFAULT: no port of its own; the request's stays
        r.port = Some(RedirectPort::FromProtocolDefault);
        assert_eq!(
            r.location("http", "a.example:9080", "/p", 9080, None).1,
            "http://a.example:9080/p"
        );
        r.scheme = Some("https".into());
        assert_eq!(
            r.location("http", "a.example:80", "/p", 80, None).1,
            "https://a.example/p"
        );
        // a configured authority loses its port when a port applies
        let r = Redirect {
            authority: Some("b.example:1234".into()),
            port: Some(RedirectPort::Port(8080)),
            ..redirect()
        };
        assert_eq!(
            r.location("http", "a:1", "/", 1, None).1,
            "http://b.example:8080/"
        );
        // IPv6 literal hosts
        let r = Redirect {
            port: Some(RedirectPort::Port(8080)),
            ..redirect()
        };
        assert_eq!(
            r.location("http", "[::1]:9080", "/", 9080, None).1,
            "http://[::1]:8080/"
        );
    }

    #[test]
    fn prefix_rewrite() {
        let r = Redirect {
            path: Some(RedirectPath::Prefix("/bar".into())),
            ..redirect()
        };
        assert_eq!(
            r.location("http", "h", "/foo/baz?q=1", 80, Some("/foo")).1,
            "http://h/bar/baz?q=1"
        );
        let r = Redirect {
            path: Some(RedirectPath::Prefix("/".into())),
            ..redirect()
        };
        // Istio's documented example: /foo match, prefixRewrite / → //baz
        assert_eq!(
            r.location("http", "h", "/foo/baz", 80, Some("/foo")).1,
            "http://h//baz"
        );
        assert_eq!(r.to_string(), "301 prefixRewrite \"/\"",);
    }

    #[test]
    fn direct_response_and_base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64_decode("_-8").unwrap(), [0xff, 0xef]);
        assert_eq!(base64_decode("/+8=").unwrap(), [0xff, 0xef]);
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("a").is_err());
        assert!(base64_decode("a*==").is_err());
        for data in [&b""[..], b"f", b"fo", b"foo", b"foob", &[0, 255, 128, 7]] {
            assert_eq!(base64_decode(&base64_encode(data)).unwrap(), data);
        }
        let d = DirectResponse {
            status: 503,
            body: Some(b"sorry".to_vec()),
        };
        assert_eq!(d.to_string(), "503, body \"sorry\"");
        assert_eq!(d.body_str(), Some("sorry"));
        let bin = DirectResponse {
            status: 200,
            body: Some(vec![0xff, 0xfe]),
        };
        assert_eq!(bin.to_string(), "200, body 2 bytes");
        assert_eq!(
            serde_json::to_value(&bin).unwrap(),
            serde_json::json!({"status": 200, "body": {"base64": "//4="}})
        );
    }
}
