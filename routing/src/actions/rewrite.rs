//! Istio `HTTPRewrite`: `uri` (Envoy `prefix_rewrite`), `uriRegexRewrite`
//! (Envoy `regex_rewrite`, RE2 `GlobalReplace`) and `authority` (Envoy
//! `host_rewrite_literal`).
//!
//! `uri` replaces what the route matched: the matched prefix for a `uri`
//! prefix match; the whole path (the query string is kept) for `exact` and
//! `regex` matches. A match block without a `uri` condition — and a route
//! without match blocks — is the prefix `"/"` in Envoy (istiod's
//! `TranslateRouteMatch` default), so `uri: /v2` turns `/a` into `/v2a`.

use crate::model::{RouteMatch, StringMatch};
use serde::{Serialize, Serializer};
use std::fmt;

/// How the path is rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UriRewrite {
    /// Istio `rewrite.uri`: replaces the matched prefix (or whole path).
    Prefix(String),
    /// Istio `rewrite.uriRegexRewrite`.
    Regex(RegexRewrite),
}

/// `uriRegexRewrite {match, rewrite}`: every non-overlapping match of the
/// (unanchored, RE2-syntax) pattern in the path — without the query string,
/// which is kept — is replaced by the substitution, where `\0`…`\9` are
/// capture groups and `\\` a backslash (RE2's rewrite syntax). Compares and
/// serializes as its configured text.
#[derive(Debug, Clone)]
pub struct RegexRewrite {
    regex: regex::Regex,
    pattern: String,
    substitution: String,
    /// `substitution` in the `regex` crate's replacement syntax.
    replacement: String,
}

/// Why a `regex_rewrite` / `uriRegexRewrite` cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The pattern does not compile: the regex engine's reason.
    #[error("{0}")]
    Regex(String),
    #[error(
        "rewrite {substitution:?} uses \\{group} but the pattern has {groups} capture group{}",
        plural(*.groups)
    )]
    NoSuchGroup {
        substitution: String,
        group: usize,
        groups: usize,
    },
    #[error("rewrite {substitution:?}: invalid escape \\{escape} (use \\0-\\9 or \\\\)")]
    InvalidEscape { substitution: String, escape: char },
    #[error("rewrite {0:?} ends with a lone backslash")]
    LoneBackslash(String),
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

impl RegexRewrite {
    /// Compile `pattern` and check `substitution` (RE2 `CheckRewriteString`:
    /// only `\0`…`\9` up to the pattern's group count, and `\\`).
    pub fn new(pattern: &str, substitution: &str) -> Result<RegexRewrite, RewriteError> {
        let regex = regex::Regex::new(pattern).map_err(|e| {
            let text = e.to_string();
            RewriteError::Regex(
                text.lines()
                    .rev()
                    .find_map(|l| l.trim().strip_prefix("error: "))
                    .map(str::to_string)
                    .unwrap_or_else(|| text.lines().next().unwrap_or("invalid").trim().to_string()),
            )
        })?;
        let groups = regex.captures_len() - 1;
        let mut replacement = String::with_capacity(substitution.len() + 8);
        let mut chars = substitution.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('\\') => replacement.push('\\'),
                    Some(d @ '0'..='9') => {
                        let n = d.to_digit(10).unwrap_or(0) as usize;
                        if n > groups {
                            return Err(RewriteError::NoSuchGroup {
                                substitution: substitution.to_string(),
                                group: n,
                                groups,
                            });
                        }
                        replacement.push_str(&format!("${{{n}}}"));
                    }
                    Some(other) => {
                        return Err(RewriteError::InvalidEscape {
                            substitution: substitution.to_string(),
                            escape: other,
                        })
                    }
                    None => return Err(RewriteError::LoneBackslash(substitution.to_string())),
                },
                '$' => replacement.push_str("$$"),
                c => replacement.push(c),
            }
        }
        Ok(RegexRewrite {
            regex,
            pattern: pattern.to_string(),
            substitution: substitution.to_string(),
            replacement,
        })
    }

    /// The pattern as configured (`match`).
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The substitution as configured (`rewrite`, RE2 `\1` syntax).
    pub fn substitution(&self) -> &str {
        &self.substitution
    }

    /// Rewrite `path_and_query`: the path part is replaced, the query kept.
    pub fn apply(&self, path_and_query: &str) -> String {
        let path = path_only(path_and_query);
        let rest = &path_and_query[path.len()..];
        let mut out = self
            .regex
            .replace_all(path, self.replacement.as_str())
            .into_owned();
        out.push_str(rest);
        out
    }
}

impl PartialEq for RegexRewrite {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern && self.substitution == other.substitution
    }
}

impl Eq for RegexRewrite {}

impl Serialize for RegexRewrite {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("RegexRewrite", 2)?;
        st.serialize_field("match", &self.pattern)?;
        st.serialize_field("rewrite", &self.substitution)?;
        st.end()
    }
}

/// Istio `HTTPRewrite`. At least one part is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rewrite {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uri: Option<UriRewrite>,
    /// New `:authority` / `Host`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
}

impl Rewrite {
    /// The request's new `:path`. `matched_prefix` is what the route's
    /// match block matched as a prefix — [`Rewrite::matched_prefix`] of the
    /// block [`crate::Snapshot::route_with_match`] reports —, `None` when
    /// the block matched the whole path (`exact`, `regex`). Without a `uri`
    /// rewrite the path is returned unchanged. The query string is kept.
    pub fn apply(&self, path_and_query: &str, matched_prefix: Option<&str>) -> String {
        match &self.uri {
            None => path_and_query.to_string(),
            Some(UriRewrite::Prefix(p)) => replace_matched(path_and_query, matched_prefix, p),
            Some(UriRewrite::Regex(r)) => r.apply(path_and_query),
        }
    }

    /// The prefix a `uri` rewrite replaces for this matched block: the
    /// `uri.prefix`; `"/"` when the block has no `uri` condition (or there
    /// is no block: a route without `match`); `None` for `exact` and
    /// `regex` (the whole path is replaced).
    pub fn matched_prefix(matched: Option<&RouteMatch>) -> Option<&str> {
        match matched.and_then(|m| m.uri.as_ref()) {
            None | Some(StringMatch::Present) => Some("/"),
            Some(StringMatch::Prefix(p)) => Some(p.as_str()),
            Some(_) => None,
        }
    }
}

impl fmt::Display for Rewrite {
    /// `uri → "/v2"`, `uri regex "^/a/(.*)" → "/b/\1"`, `authority → "x"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        match &self.uri {
            Some(UriRewrite::Prefix(p)) => parts.push(format!("uri → {p:?}")),
            Some(UriRewrite::Regex(r)) => parts.push(format!(
                "uri regex {:?} → {:?}",
                r.pattern(),
                r.substitution()
            )),
            None => {}
        }
        if let Some(a) = &self.authority {
            parts.push(format!("authority → {a:?}"));
        }
        f.write_str(&parts.join(", "))
    }
}

/// The path without query string and fragment.
pub(crate) fn path_only(path: &str) -> &str {
    match path.find(['?', '#']) {
        Some(i) => &path[..i],
        None => path,
    }
}

/// Envoy's `prefix_rewrite`: replace the matched prefix of `path_and_query`
/// (compared ASCII case-insensitively, as `ignoreUriCase` may have matched
/// it) with `replacement`; with no prefix (or one that is not there), replace
/// the whole path and keep the query string.
pub(crate) fn replace_matched(
    path_and_query: &str,
    matched_prefix: Option<&str>,
    replacement: &str,
) -> String {
    let cut = match matched_prefix {
        Some(p)
            if path_and_query
                .as_bytes()
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes()))
                && path_and_query.is_char_boundary(p.len()) =>
        {
            p.len()
        }
        _ => path_only(path_and_query).len(),
    };
    let mut out = String::with_capacity(replacement.len() + path_and_query.len() - cut);
    out.push_str(replacement);
    out.push_str(&path_and_query[cut..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MatchRegex;

    fn prefix(p: &str) -> Rewrite {
        Rewrite {
            uri: Some(UriRewrite::Prefix(p.into())),
            authority: None,
        }
    }

    fn regex(m: &str, r: &str) -> Rewrite {
        Rewrite {
            uri: Some(UriRewrite::Regex(RegexRewrite::new(m, r).unwrap())),
            authority: None,
        }
    }

    #[test]
    fn prefix_rewrite_replaces_matched_prefix() {
        let r = prefix("/v2/");
        assert_eq!(r.apply("/v1/reviews?x=1", Some("/v1/")), "/v2/reviews?x=1");
        // case-insensitive prefix (ignoreUriCase)
        assert_eq!(r.apply("/V1/reviews", Some("/v1/")), "/v2/reviews");
        // the implicit "/" of a block without uri condition
        assert_eq!(prefix("/v2").apply("/a/b?q", Some("/")), "/v2a/b?q");
        // prefix "" prepends
        assert_eq!(prefix("/x").apply("/a", Some("")), "/x/a");
    }

    #[test]
    fn prefix_rewrite_replaces_whole_path_for_exact_and_regex() {
        let r = prefix("/new");
        assert_eq!(r.apply("/old/path?a=1&b=2", None), "/new?a=1&b=2");
        assert_eq!(r.apply("/old#frag", None), "/new#frag");
        assert_eq!(r.apply("/old", None), "/new");
        // a prefix that is not there (should not happen) → whole path
        assert_eq!(r.apply("/zzz?q", Some("/aaa")), "/new?q");
    }

    #[test]
    fn matched_prefix_of_blocks() {
        let m = |uri| RouteMatch {
            uri,
            ..Default::default()
        };
        assert_eq!(Rewrite::matched_prefix(None), Some("/"));
        assert_eq!(Rewrite::matched_prefix(Some(&m(None))), Some("/"));
        assert_eq!(
            Rewrite::matched_prefix(Some(&m(Some(StringMatch::Prefix("/v1".into()))))),
            Some("/v1")
        );
        assert_eq!(
            Rewrite::matched_prefix(Some(&m(Some(StringMatch::Exact("/v1".into()))))),
            None
        );
        assert_eq!(
            Rewrite::matched_prefix(Some(&m(Some(StringMatch::Regex(
                MatchRegex::new("/v.*").unwrap()
            ))))),
            None
        );
        assert_eq!(
            Rewrite::matched_prefix(Some(&m(Some(StringMatch::Present)))),
            Some("/")
        );
    }

    #[test]
    fn regex_rewrite_with_captures() {
        // Istio's documented example (its text drops a slash: \2 is "/v1/api")
        let r = regex("^/service/([^/]+)(/.*)$", "/customprefix/\\2/\\1");
        assert_eq!(
            r.apply("/service/update/v1/api?k=v", None),
            "/customprefix//v1/api/update?k=v"
        );
        let r = regex("^/service/([^/]+)/(.*)$", "/customprefix/\\2/\\1");
        assert_eq!(
            r.apply("/service/update/v1/api", None),
            "/customprefix/v1/api/update"
        );
        let r = regex("(?i)/xxx/", "/yyy/");
        assert_eq!(r.apply("/aaa/XxX/bbb", None), "/aaa/yyy/bbb");
        // global: every match; \0 is the whole match; $ is literal; \\ is a backslash
        let r = regex("a", "[\\0$1\\\\]");
        assert_eq!(r.apply("/banana?a", None), "/b[a$1\\]n[a$1\\]n[a$1\\]?a");
        // no match: unchanged
        let r = regex("^/nomatch", "/x");
        assert_eq!(r.apply("/path?q", Some("/")), "/path?q");
    }

    #[test]
    fn regex_rewrite_errors() {
        assert!(RegexRewrite::new("(", "/x")
            .unwrap_err()
            .to_string()
            .contains("unclosed"));
        assert_eq!(
            RegexRewrite::new("^/(a)", "/\\2").unwrap_err().to_string(),
            "rewrite \"/\\\\2\" uses \\2 but the pattern has 1 capture group"
        );
        assert!(RegexRewrite::new("a", "\\q")
            .unwrap_err()
            .to_string()
            .contains("invalid escape \\q"));
        assert!(RegexRewrite::new("a", "x\\")
            .unwrap_err()
            .to_string()
            .contains("lone backslash"));
        assert_eq!(
            RegexRewrite::new("a", "b").unwrap(),
            RegexRewrite::new("a", "b").unwrap()
        );
    }

    #[test]
    fn no_uri_rewrite_keeps_path_and_display() {
        let r = Rewrite {
            uri: None,
            authority: Some("other.example".into()),
        };
        assert_eq!(r.apply("/a?b", Some("/a")), "/a?b");
        assert_eq!(r.to_string(), "authority → \"other.example\"");
        assert_eq!(
            regex("^/a/(.*)", "/b/\\1").to_string(),
            "uri regex \"^/a/(.*)\" → \"/b/\\\\1\""
        );
    }
}
