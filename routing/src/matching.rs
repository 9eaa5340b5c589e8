//! Request matching against [`HttpRoute`]s.

use crate::model::{HttpRoute, RouteMatch, StringMatch};

/// The parts of an HTTP request that routing looks at.
pub trait RequestView {
    /// Request path including the query string (the `:path` pseudo-header).
    fn path(&self) -> &str;
    /// First value of a header; `lowercase_name` is already lowercased.
    fn header(&self, lowercase_name: &str) -> Option<&str>;
}

/// A simple owned [`RequestView`], handy for tests and tools.
#[derive(Debug, Clone, Default)]
pub struct SimpleRequest {
    pub path: String,
    /// (name, value); names are compared case-insensitively.
    pub headers: Vec<(String, String)>,
}

impl SimpleRequest {
    pub fn new(path: impl Into<String>) -> Self {
        SimpleRequest {
            path: path.into(),
            headers: Vec::new(),
        }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
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
}

impl StringMatch {
    /// Does `value` satisfy this condition?
    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
        }
    }

    /// URI semantics (as Envoy): `exact` compares the path without its query
    /// string, `prefix` compares the full path including the query.
    pub fn matches_uri(&self, path_and_query: &str) -> bool {
        match self {
            StringMatch::Exact(s) => strip_query(path_and_query) == s,
            other => other.matches(path_and_query),
        }
    }
}

fn strip_query(path: &str) -> &str {
    match path.find('?') {
        Some(i) => &path[..i],
        None => path,
    }
}

impl RouteMatch {
    /// All present conditions hold. A missing header never matches.
    pub fn matches(&self, req: &dyn RequestView) -> bool {
        if let Some(uri) = &self.uri {
            if !uri.matches_uri(req.path()) {
                return false;
            }
        }
        self.headers
            .iter()
            .all(|(name, cond)| match req.header(name) {
                Some(v) => cond.matches(v),
                None => false,
            })
    }
}

impl HttpRoute {
    /// Any match block holds; no match blocks = matches everything.
    pub fn matches(&self, req: &dyn RequestView) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(s: &str) -> StringMatch {
        StringMatch::Exact(s.to_string())
    }
    fn pre(s: &str) -> StringMatch {
        StringMatch::Prefix(s.to_string())
    }

    #[test]
    fn uri_exact_vs_prefix() {
        let r = SimpleRequest::new("/reviews/1?x=y");
        assert!(!ex("/reviews").matches_uri(r.path()));
        assert!(ex("/reviews/1").matches_uri(r.path()));
        assert!(pre("/reviews").matches_uri(r.path()));
        assert!(pre("/reviews/1?x").matches_uri(r.path()));
        assert!(!pre("/ratings").matches_uri(r.path()));
    }

    #[test]
    fn headers_exact_prefix_and_missing() {
        let r = SimpleRequest::new("/").with_header("End-User", "jason-x");
        let m = |h: StringMatch| RouteMatch {
            headers: vec![("end-user".to_string(), h)],
            ..Default::default()
        };
        assert!(!m(ex("jason")).matches(&r));
        assert!(m(ex("jason-x")).matches(&r));
        assert!(m(pre("jason")).matches(&r));
        assert!(!m(pre("bob")).matches(&r));
        let missing = RouteMatch {
            headers: vec![("x-missing".to_string(), pre(""))],
            ..Default::default()
        };
        assert!(!missing.matches(&r));
    }

    #[test]
    fn conditions_and_within_match_or_across() {
        let and = RouteMatch {
            uri: Some(pre("/a")),
            headers: vec![("x".to_string(), ex("1"))],
            name: None,
        };
        assert!(and.matches(&SimpleRequest::new("/a").with_header("x", "1")));
        assert!(!and.matches(&SimpleRequest::new("/a")));
        assert!(!and.matches(&SimpleRequest::new("/b").with_header("x", "1")));
        let route = HttpRoute {
            name: "r".into(),
            matches: vec![
                RouteMatch {
                    uri: Some(ex("/a")),
                    ..Default::default()
                },
                RouteMatch {
                    uri: Some(ex("/b")),
                    ..Default::default()
                },
            ],
            destinations: vec![],
        };
        assert!(route.matches(&SimpleRequest::new("/b")));
        assert!(!route.matches(&SimpleRequest::new("/c")));
        let all = HttpRoute {
            name: "all".into(),
            matches: vec![],
            destinations: vec![],
        };
        assert!(all.matches(&SimpleRequest::new("/anything")));
    }
}
