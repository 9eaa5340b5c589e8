//! Files mode: a VirtualService `match` block as the Envoy `RouteMatch` istiod writes for it
//! (istio/istio 1.27, `pilot/pkg/networking/core/route/route.go` `TranslateRouteMatch`,
//! `translateHeaderMatch`, `translateQueryParamMatch`; `pilot/pkg/networking/util/util.go`
//! `ConvertToEnvoyMatch`).

use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, query_parameter_matcher, route_match, HeaderMatcher, QueryParameterMatcher,
    RouteMatch,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, RegexMatcher, StringMatcher};
use envoy_types::pb::google::protobuf::BoolValue;
use routing::StringMatch;

/// `ConvertToEnvoyMatch`; `None` for a condition that only asks for presence.
fn string_matcher(m: &StringMatch) -> Option<StringMatcher> {
    let pattern = match m {
        StringMatch::Exact(s) => string_matcher::MatchPattern::Exact(s.clone()),
        StringMatch::Prefix(s) => string_matcher::MatchPattern::Prefix(s.clone()),
        StringMatch::Regex(r) => string_matcher::MatchPattern::SafeRegex(RegexMatcher {
            regex: r.as_str().to_string(),
            ..Default::default()
        }),
        _ => return None,
    };
    Some(StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    })
}

/// `translateHeaderMatch`: an empty condition (`{}`) is `present_match`.
fn header(name: &str, m: &StringMatch) -> HeaderMatcher {
    let specifier = match string_matcher(m) {
        Some(sm) => header_matcher::HeaderMatchSpecifier::StringMatch(sm),
        None => header_matcher::HeaderMatchSpecifier::PresentMatch(true),
    };
    HeaderMatcher {
        name: name.to_string(),
        header_match_specifier: Some(specifier),
        ..Default::default()
    }
}

/// `withoutHeaders`: the inverted matcher, a missing header read as empty (not with
/// `present_match`, which Envoy does not allow it with).
fn without_header(name: &str, m: &StringMatch) -> HeaderMatcher {
    let present = string_matcher(m).is_none();
    HeaderMatcher {
        invert_match: true,
        treat_missing_header_as_empty: !present,
        ..header(name, m)
    }
}

fn query_param(name: &str, m: &StringMatch) -> QueryParameterMatcher {
    let specifier = match string_matcher(m) {
        Some(sm) => query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(sm),
        None => query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true),
    };
    QueryParameterMatcher {
        name: name.to_string(),
        query_parameter_match_specifier: Some(specifier),
    }
}

/// `TranslateRouteMatch`: the path (prefix `/` when the block has no `uri`), `case_sensitive`,
/// the headers and `withoutHeaders` sorted by name, then `:method`, `:authority` and `:scheme`,
/// then the query parameters. No block: prefix `/` alone.
pub(super) fn route_match(block: Option<&routing::RouteMatch>) -> RouteMatch {
    let mut out = RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix("/".into())),
        ..Default::default()
    };
    let Some(m) = block else {
        return out;
    };
    let mut headers: Vec<HeaderMatcher> = m
        .headers
        .iter()
        .map(|(n, c)| header(n, c))
        .chain(m.without_headers.iter().map(|(n, c)| without_header(n, c)))
        .collect();
    headers.sort_by(|a, b| a.name.cmp(&b.name));
    match &m.uri {
        Some(StringMatch::Exact(p)) => {
            out.path_specifier = Some(route_match::PathSpecifier::Path(p.clone()));
        }
        Some(StringMatch::Prefix(p)) => {
            out.path_specifier = Some(route_match::PathSpecifier::Prefix(p.clone()));
        }
        Some(StringMatch::Regex(r)) => {
            out.path_specifier = Some(route_match::PathSpecifier::SafeRegex(RegexMatcher {
                regex: r.as_str().to_string(),
                ..Default::default()
            }));
        }
        _ => {}
    }
    out.case_sensitive = Some(BoolValue {
        value: !m.ignore_uri_case,
    });
    for (name, cond) in [
        (":method", &m.method),
        (":authority", &m.authority),
        (":scheme", &m.scheme),
    ] {
        if let Some(c) = cond {
            headers.push(header(name, c));
        }
    }
    out.headers = headers;
    out.query_parameters = m
        .query_params
        .iter()
        .map(|(n, c)| query_param(n, c))
        .collect();
    out
}

/// istiod's `IsCatchAllRoute`: prefix `/` (or regex `.*`) and no header or query condition.
pub(super) fn is_catch_all(m: &RouteMatch) -> bool {
    let path = match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => p == "/",
        Some(route_match::PathSpecifier::PathSeparatedPrefix(p)) => p == "/",
        Some(route_match::PathSpecifier::SafeRegex(r)) => r.regex == ".*",
        _ => false,
    };
    path && m.headers.is_empty() && m.query_parameters.is_empty() && m.dynamic_metadata.is_empty()
}

/// The path part of istiod's `GetRouteOperation`: `<prefix>*`, the exact path or the regex.
pub(super) fn operation_path(m: &RouteMatch) -> String {
    match &m.path_specifier {
        Some(route_match::PathSpecifier::Prefix(p)) => format!("{p}*"),
        Some(route_match::PathSpecifier::Path(p)) => p.clone(),
        Some(route_match::PathSpecifier::SafeRegex(r)) => r.regex.clone(),
        _ => "/*".into(),
    }
}
