//! Envoy route matchers → [`RouteMatch`] conditions.
//!
//! istiod writes `uri` as `prefix` / `path` / `safe_regex`, `case_sensitive =
//! !ignoreUriCase`, header conditions (incl. `:method`, `:authority`,
//! `:scheme`) as `HeaderMatcher`s with `string_match` or `present_match`,
//! `withoutHeaders` with `invert_match` (+ `treat_missing_header_as_empty`),
//! and `queryParams` as `QueryParameterMatcher`s (`route/route.go`
//! `TranslateRouteMatch`). Suffix / contains / case-insensitive matchers,
//! which Istio never produces, become equivalent anchored regexes.

use crate::model::{MatchRegex, RouteMatch, StringMatch};
use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::query_parameter_matcher::QueryParameterMatchSpecifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, RouteMatch as EnvoyMatch};
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatcher, StringMatcher};

/// Why a matcher could not be translated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Issue {
    /// Valid for Envoy, not expressible in the model: the route is left out
    /// (a route that can never match) with a warning.
    Unsupported(String),
    /// Envoy would reject the resource.
    Invalid(String),
}

fn regex(source: &str) -> Result<StringMatch, Issue> {
    MatchRegex::new(source)
        .map(StringMatch::Regex)
        .map_err(|e| Issue::Invalid(format!("invalid regex {source:?}: {e}")))
}

pub(crate) fn safe_regex(m: &RegexMatcher) -> Result<StringMatch, Issue> {
    regex(&m.regex)
}

/// A `StringMatcher` as a model condition on the whole value.
pub(crate) fn string_matcher(m: &StringMatcher) -> Result<StringMatch, Issue> {
    let Some(pattern) = &m.match_pattern else {
        return Err(Issue::Invalid("string matcher without a pattern".into()));
    };
    let ci = if m.ignore_case { "(?i)" } else { "" };
    match pattern {
        MatchPattern::Exact(s) if !m.ignore_case => Ok(StringMatch::Exact(s.clone())),
        MatchPattern::Prefix(s) if !m.ignore_case => Ok(StringMatch::Prefix(s.clone())),
        MatchPattern::Exact(s) => regex(&format!("{ci}{}", regex::escape(s))),
        MatchPattern::Prefix(s) => regex(&format!("(?s){ci}{}.*", regex::escape(s))),
        MatchPattern::Suffix(s) => regex(&format!("(?s){ci}.*{}", regex::escape(s))),
        MatchPattern::Contains(s) => regex(&format!("(?s){ci}.*{}.*", regex::escape(s))),
        MatchPattern::SafeRegex(r) => safe_regex(r),
        MatchPattern::Custom(c) => Err(Issue::Unsupported(format!(
            "custom string matcher {}",
            c.name
        ))),
    }
}

/// A header matcher's condition (without inversion). The deprecated
/// specifiers are still what older control planes send.
#[allow(deprecated)]
fn header_condition(h: &HeaderMatcher) -> Result<StringMatch, Issue> {
    match &h.header_match_specifier {
        None => Ok(StringMatch::Present),
        Some(HeaderMatchSpecifier::PresentMatch(true)) => Ok(StringMatch::Present),
        Some(HeaderMatchSpecifier::PresentMatch(false)) => Err(Issue::Unsupported(format!(
            "header {} present_match: false",
            h.name
        ))),
        Some(HeaderMatchSpecifier::ExactMatch(s)) => Ok(StringMatch::Exact(s.clone())),
        Some(HeaderMatchSpecifier::PrefixMatch(s)) => Ok(StringMatch::Prefix(s.clone())),
        Some(HeaderMatchSpecifier::SuffixMatch(s)) => regex(&format!("(?s).*{}", regex::escape(s))),
        Some(HeaderMatchSpecifier::ContainsMatch(s)) => {
            regex(&format!("(?s).*{}.*", regex::escape(s)))
        }
        Some(HeaderMatchSpecifier::SafeRegexMatch(r)) => safe_regex(r),
        Some(HeaderMatchSpecifier::StringMatch(m)) => string_matcher(m),
        Some(HeaderMatchSpecifier::RangeMatch(_)) => {
            Err(Issue::Unsupported(format!("header {} range_match", h.name)))
        }
    }
}

/// One Envoy `RouteMatch` → one model match block (without `port`).
pub(crate) fn route_match(m: &EnvoyMatch) -> Result<RouteMatch, Issue> {
    let mut out = RouteMatch::default();
    let case_insensitive = m.case_sensitive.as_ref().is_some_and(|b| !b.value);
    match &m.path_specifier {
        None => {
            return Err(Issue::Invalid(
                "route match without a path specifier".into(),
            ))
        }
        Some(PathSpecifier::Prefix(p)) => {
            // istiod's match-all is prefix "/" (no `uri` condition in Istio).
            if p != "/" || case_insensitive {
                out.uri = Some(StringMatch::Prefix(p.clone()));
            }
            out.ignore_uri_case = case_insensitive && p != "/";
        }
        Some(PathSpecifier::Path(p)) => {
            out.uri = Some(StringMatch::Exact(p.clone()));
            out.ignore_uri_case = case_insensitive;
        }
        Some(PathSpecifier::SafeRegex(r)) => out.uri = Some(safe_regex(r)?),
        Some(PathSpecifier::PathSeparatedPrefix(p)) => {
            // `/foo` matches `/foo` and `/foo/…`, not `/foobar`.
            let ci = if case_insensitive { "(?i)" } else { "" };
            out.uri = Some(regex(&format!("(?s){ci}{}(/.*)?", regex::escape(p)))?);
        }
        Some(PathSpecifier::ConnectMatcher(_)) => {
            return Err(Issue::Unsupported("connect_matcher".into()))
        }
        Some(PathSpecifier::PathMatchPolicy(p)) => {
            return Err(Issue::Unsupported(format!("path_match_policy {}", p.name)))
        }
    }
    if m.runtime_fraction.is_some() {
        return Err(Issue::Unsupported("runtime_fraction".into()));
    }
    if m.grpc.is_some() {
        return Err(Issue::Unsupported("grpc match".into()));
    }
    if m.tls_context.is_some() {
        return Err(Issue::Unsupported("tls_context match".into()));
    }
    if !m.dynamic_metadata.is_empty() {
        return Err(Issue::Unsupported(
            "dynamic_metadata match (JWT claim headers)".into(),
        ));
    }
    if !m.filter_state.is_empty() {
        return Err(Issue::Unsupported("filter_state match".into()));
    }
    if !m.cookies.is_empty() {
        return Err(Issue::Unsupported("cookie match".into()));
    }
    for h in &m.headers {
        let name = h.name.to_ascii_lowercase();
        let cond = header_condition(h)?;
        if h.invert_match {
            if name.starts_with(':') {
                return Err(Issue::Unsupported(format!("inverted {name} match")));
            }
            out.without_headers.push((name, cond));
            continue;
        }
        match name.as_str() {
            ":method" => set_once(&mut out.method, cond, &name)?,
            ":authority" | "host" => set_once(&mut out.authority, cond, &name)?,
            ":scheme" => set_once(&mut out.scheme, cond, &name)?,
            n if n.starts_with(':') => {
                return Err(Issue::Unsupported(format!("pseudo-header {n} match")))
            }
            _ => out.headers.push((name, cond)),
        }
    }
    for q in &m.query_parameters {
        let cond = match &q.query_parameter_match_specifier {
            None | Some(QueryParameterMatchSpecifier::PresentMatch(true)) => StringMatch::Present,
            Some(QueryParameterMatchSpecifier::PresentMatch(false)) => {
                return Err(Issue::Unsupported(format!(
                    "query parameter {} present_match: false",
                    q.name
                )))
            }
            Some(QueryParameterMatchSpecifier::StringMatch(s)) => string_matcher(s)?,
        };
        out.query_params.push((q.name.clone(), cond));
    }
    Ok(out)
}

fn set_once(slot: &mut Option<StringMatch>, cond: StringMatch, name: &str) -> Result<(), Issue> {
    if slot.is_some() {
        return Err(Issue::Unsupported(format!("two {name} conditions")));
    }
    *slot = Some(cond);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SimpleRequest;

    fn sm(p: MatchPattern, ignore_case: bool) -> StringMatcher {
        StringMatcher {
            ignore_case,
            match_pattern: Some(p),
        }
    }

    #[test]
    fn string_matchers_table() {
        let cases: Vec<(StringMatcher, &[&str], &[&str])> = vec![
            (
                sm(MatchPattern::Exact("a".into()), false),
                &["a"],
                &["A", "ab"],
            ),
            (
                sm(MatchPattern::Exact("a.b".into()), true),
                &["A.B", "a.b"],
                &["axb"],
            ),
            (
                sm(MatchPattern::Prefix("ab".into()), true),
                &["ABc"],
                &["xab"],
            ),
            (
                sm(MatchPattern::Suffix(".com".into()), false),
                &["x.com"],
                &["x.co", "xcom"],
            ),
            (
                sm(MatchPattern::Contains("mid".into()), false),
                &["amidb"],
                &["mi"],
            ),
            (
                sm(
                    MatchPattern::SafeRegex(RegexMatcher {
                        regex: "v[0-9]+".into(),
                        ..Default::default()
                    }),
                    false,
                ),
                &["v12"],
                &["xv1", "v"],
            ),
        ];
        for (m, yes, no) in cases {
            let c = string_matcher(&m).unwrap();
            for v in yes {
                assert!(c.matches(v), "{m:?} {v}");
            }
            for v in no {
                assert!(!c.matches(v), "{m:?} {v}");
            }
        }
        let bad = sm(
            MatchPattern::SafeRegex(RegexMatcher {
                regex: "(".into(),
                ..Default::default()
            }),
            false,
        );
        assert!(matches!(string_matcher(&bad), Err(Issue::Invalid(_))));
        assert!(matches!(
            string_matcher(&StringMatcher::default()),
            Err(Issue::Invalid(_))
        ));
    }

    #[test]
    fn route_match_headers_and_path() {
        let m = EnvoyMatch {
            path_specifier: Some(PathSpecifier::Prefix("/api".into())),
            case_sensitive: Some(envoy_types::pb::google::protobuf::BoolValue { value: false }),
            headers: vec![
                HeaderMatcher {
                    name: ":method".into(),
                    header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(sm(
                        MatchPattern::Exact("GET".into()),
                        false,
                    ))),
                    ..Default::default()
                },
                HeaderMatcher {
                    name: "X-User".into(),
                    header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
                    invert_match: true,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let rm = route_match(&m).unwrap();
        assert!(rm.ignore_uri_case);
        let ok = SimpleRequest::new("/API/x");
        assert!(rm.matches_on_port(&ok, 80));
        let with_user = SimpleRequest::new("/api").with_header("x-user", "u");
        assert!(!rm.matches_on_port(&with_user, 80));
        let post = SimpleRequest::new("/api").with_method("POST");
        assert!(!rm.matches_on_port(&post, 80));
        let range = EnvoyMatch {
            path_specifier: Some(PathSpecifier::Prefix("/".into())),
            headers: vec![HeaderMatcher {
                name: "x".into(),
                header_match_specifier: Some(HeaderMatchSpecifier::RangeMatch(Default::default())),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(matches!(route_match(&range), Err(Issue::Unsupported(_))));
        assert!(matches!(
            route_match(&EnvoyMatch::default()),
            Err(Issue::Invalid(_))
        ));
    }
}
