//! Istio `CorsPolicy` → Envoy's CORS filter (istiod `TranslateCORSPolicy`;
//! Envoy `CorsFilter::decodeHeaders` / `encodeHeaders`):
//!
//! - a preflight is `OPTIONS` with a non-empty `Origin` and a non-empty
//!   `Access-Control-Request-Method`. For an allowed origin Envoy answers it
//!   itself, `200` with `access-control-allow-origin` (the request's origin),
//!   `-allow-credentials: true` (if set), `-allow-methods`, `-allow-headers`
//!   (a lone `*` echoes the request's `Access-Control-Request-*`) and
//!   `-max-age` (seconds). For an origin that is not allowed the preflight is
//!   forwarded upstream (`unmatchedPreflights: FORWARD`, the default), or
//!   answered the same way without `-allow-origin` (`IGNORE`).
//! - any other request with an allowed `Origin` gets
//!   `access-control-allow-origin`, `-allow-credentials` and
//!   `-expose-headers` on its response.
//!
//! An origin is allowed when an `allowOrigins` matcher matches it, or
//! matches the string `*`.

use crate::matching::RequestView;
use crate::model::StringMatch;
use crate::policy::format_duration;
use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// `unmatchedPreflights`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum UnmatchedPreflights {
    /// Forward preflights from origins that are not allowed (default).
    #[default]
    Forward,
    /// Answer them without `access-control-allow-origin`.
    Ignore,
}

/// Istio `CorsPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cors {
    /// `allowOrigins` (or the deprecated `allowOrigin`, as exact matches).
    pub allow_origins: Vec<StringMatch>,
    pub allow_methods: Vec<String>,
    pub allow_headers: Vec<String>,
    pub expose_headers: Vec<String>,
    /// Whole seconds.
    #[serde(serialize_with = "crate::policy::serialize_opt_duration")]
    pub max_age: Option<Duration>,
    pub allow_credentials: bool,
    pub unmatched_preflights: UnmatchedPreflights,
}

fn pair(name: &str, value: impl Into<String>) -> (String, String) {
    (name.to_string(), value.into())
}

impl Cors {
    /// Does an `allowOrigins` matcher match `origin` (or `*`)?
    pub fn origin_allowed(&self, origin: &str) -> bool {
        self.allow_origins
            .iter()
            .any(|m| m.matches("*") || m.matches(origin))
    }

    /// The local answer to a preflight: `Some(headers)` when the proxy must
    /// answer `200` with these response headers (and no body) instead of
    /// forwarding; `None` when the request is not a preflight or goes
    /// upstream. `method` is `:method`; the others are the request's
    /// `Origin`, `Access-Control-Request-Method` and
    /// `Access-Control-Request-Headers`.
    pub fn preflight(
        &self,
        method: &str,
        origin: Option<&str>,
        request_method: Option<&str>,
        request_headers: Option<&str>,
    ) -> Option<Vec<(String, String)>> {
        let origin = origin.filter(|o| !o.is_empty())?;
        if method != "OPTIONS" {
            return None;
        }
        let request_method = request_method.filter(|m| !m.is_empty())?;
        let allowed = self.origin_allowed(origin);
        if !allowed && self.unmatched_preflights == UnmatchedPreflights::Forward {
            return None;
        }
        let mut out = Vec::new();
        if allowed {
            out.push(pair("access-control-allow-origin", origin));
        }
        if self.allow_credentials {
            out.push(pair("access-control-allow-credentials", "true"));
        }
        let methods = self.allow_methods.join(",");
        if methods == "*" {
            out.push(pair("access-control-allow-methods", request_method));
        } else if !methods.is_empty() {
            out.push(pair("access-control-allow-methods", methods));
        }
        let headers = self.allow_headers.join(",");
        if headers == "*" {
            out.push(pair(
                "access-control-allow-headers",
                request_headers.unwrap_or(""),
            ));
        } else if !headers.is_empty() {
            out.push(pair("access-control-allow-headers", headers));
        }
        if let Some(age) = self.max_age {
            out.push(pair("access-control-max-age", age.as_secs().to_string()));
        }
        Some(out)
    }

    /// [`Cors::preflight`] reading the request's headers.
    pub fn preflight_request(&self, req: &dyn RequestView) -> Option<Vec<(String, String)>> {
        self.preflight(
            req.method(),
            req.header("origin"),
            req.header("access-control-request-method"),
            req.header("access-control-request-headers"),
        )
    }

    /// Headers to set on the response of a (non-preflight, or forwarded)
    /// request with this `Origin`: none unless the origin is allowed.
    pub fn response_headers(&self, origin: Option<&str>) -> Vec<(String, String)> {
        let Some(origin) = origin.filter(|o| !o.is_empty() && self.origin_allowed(o)) else {
            return Vec::new();
        };
        let mut out = vec![pair("access-control-allow-origin", origin)];
        if self.allow_credentials {
            out.push(pair("access-control-allow-credentials", "true"));
        }
        if !self.expose_headers.is_empty() {
            out.push(pair(
                "access-control-expose-headers",
                self.expose_headers.join(","),
            ));
        }
        out
    }
}

impl fmt::Display for Cors {
    /// `origins [exact "https://a"], methods GET,POST, max age 24h`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let origins: Vec<String> = self.allow_origins.iter().map(|m| m.to_string()).collect();
        write!(f, "origins [{}]", origins.join(", "))?;
        for (what, list) in [
            ("methods", &self.allow_methods),
            ("headers", &self.allow_headers),
            ("expose", &self.expose_headers),
        ] {
            if !list.is_empty() {
                write!(f, ", {what} {}", list.join(","))?;
            }
        }
        if let Some(age) = self.max_age {
            write!(f, ", max age {}", format_duration(age))?;
        }
        if self.allow_credentials {
            f.write_str(", credentials")?;
        }
        if self.unmatched_preflights == UnmatchedPreflights::Ignore {
            f.write_str(", unmatched preflights answered")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matching::SimpleRequest;
    use crate::model::MatchRegex;

    fn cors() -> Cors {
        Cors {
            allow_origins: vec![
                StringMatch::Exact("https://app.example.com".into()),
                StringMatch::Regex(MatchRegex::new(r"https://.*\.test").unwrap()),
            ],
            allow_methods: vec!["GET".into(), "POST".into()],
            allow_headers: vec!["x-token".into()],
            expose_headers: vec!["x-trace".into(), "x-id".into()],
            max_age: Some(Duration::from_secs(86400)),
            allow_credentials: true,
            unmatched_preflights: UnmatchedPreflights::Forward,
        }
    }

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| pair(k, *v)).collect()
    }

    #[test]
    fn preflight_allowed_origin_is_answered() {
        let c = cors();
        assert_eq!(
            c.preflight(
                "OPTIONS",
                Some("https://app.example.com"),
                Some("POST"),
                Some("x-token")
            ),
            Some(h(&[
                ("access-control-allow-origin", "https://app.example.com"),
                ("access-control-allow-credentials", "true"),
                ("access-control-allow-methods", "GET,POST"),
                ("access-control-allow-headers", "x-token"),
                ("access-control-max-age", "86400"),
            ]))
        );
        // regex origins match fully
        assert!(c.origin_allowed("https://a.test"));
        assert!(!c.origin_allowed("https://a.test.evil"));
    }

    #[test]
    fn preflight_denied_origin_forward_or_ignore() {
        let mut c = cors();
        assert_eq!(
            c.preflight("OPTIONS", Some("https://evil"), Some("GET"), None),
            None
        );
        c.unmatched_preflights = UnmatchedPreflights::Ignore;
        assert_eq!(
            c.preflight("OPTIONS", Some("https://evil"), Some("GET"), None),
            Some(h(&[
                ("access-control-allow-credentials", "true"),
                ("access-control-allow-methods", "GET,POST"),
                ("access-control-allow-headers", "x-token"),
                ("access-control-max-age", "86400"),
            ]))
        );
        // and no CORS headers on its (or any) response
        assert!(c.response_headers(Some("https://evil")).is_empty());
    }

    #[test]
    fn not_a_preflight() {
        let c = cors();
        let o = Some("https://app.example.com");
        assert_eq!(c.preflight("GET", o, Some("GET"), None), None);
        assert_eq!(c.preflight("OPTIONS", o, None, None), None);
        assert_eq!(c.preflight("OPTIONS", o, Some(""), None), None);
        assert_eq!(c.preflight("OPTIONS", None, Some("GET"), None), None);
        assert_eq!(c.preflight("OPTIONS", Some(""), Some("GET"), None), None);
    }

    #[test]
    fn wildcards_echo_the_request() {
        let c = Cors {
            allow_origins: vec![StringMatch::Exact("*".into())],
            allow_methods: vec!["*".into()],
            allow_headers: vec!["*".into()],
            expose_headers: vec![],
            max_age: None,
            allow_credentials: false,
            unmatched_preflights: UnmatchedPreflights::Forward,
        };
        let req = SimpleRequest::new("/")
            .with_method("OPTIONS")
            .with_header("Origin", "https://anyone")
            .with_header("Access-Control-Request-Method", "DELETE")
            .with_header("Access-Control-Request-Headers", "x-a,x-b");
        assert_eq!(
            c.preflight_request(&req),
            Some(h(&[
                ("access-control-allow-origin", "https://anyone"),
                ("access-control-allow-methods", "DELETE"),
                ("access-control-allow-headers", "x-a,x-b"),
            ]))
        );
        assert_eq!(
            c.response_headers(Some("https://anyone")),
            h(&[("access-control-allow-origin", "https://anyone")])
        );
    }

    #[test]
    fn actual_request_headers() {
        let c = cors();
        assert_eq!(
            c.response_headers(Some("https://app.example.com")),
            h(&[
                ("access-control-allow-origin", "https://app.example.com"),
                ("access-control-allow-credentials", "true"),
                ("access-control-expose-headers", "x-trace,x-id"),
            ])
        );
        assert!(c.response_headers(None).is_empty());
        assert!(c.response_headers(Some("")).is_empty());
        assert_eq!(
            c.to_string(),
            "origins [exact \"https://app.example.com\", regex \"https://.*\\\\.test\"], methods GET,POST, headers x-token, expose x-trace,x-id, max age 24h, credentials"
        );
    }
}
