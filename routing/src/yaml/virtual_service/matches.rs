//! `HTTPMatchRequest` and `StringMatch` blocks, header names and values.

use super::*;

/// Where a StringMatch sits: istiod allows an empty `prefix` only on `uri`,
/// and `regex: "*"` (present) only in `withoutHeaders`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    Uri,
    WithoutHeaders,
    Other,
}

pub(super) fn parse_match(
    at: &DocRef,
    f: &str,
    m: MatchY,
    mesh: bool,
    diag: &mut Diag,
) -> RouteMatch {
    diag.unsupported(
        at,
        &format!("{f}."),
        &m.extra,
        schema::HTTP_MATCH_REQUEST,
        &[],
    );
    let uri = m
        .uri
        .and_then(|u| string_match(at, &format!("{f}.uri"), u, Place::Uri, diag));
    let ignore_uri_case = m.ignore_uri_case.unwrap_or(false);
    if ignore_uri_case && matches!(uri, Some(StringMatch::Regex(_))) {
        diag.warn(
            at,
            Some(&format!("{f}.ignoreUriCase")),
            "has no effect on uri.regex (as in Envoy); use (?i) in the regex",
        );
    }
    let pseudo = |field: &str, sm: Option<StringMatchY>, diag: &mut Diag| {
        sm.and_then(|s| string_match(at, &format!("{f}.{field}"), s, Place::Other, diag))
    };
    let scheme = pseudo("scheme", m.scheme, diag);
    let method = pseudo("method", m.method, diag);
    let authority = pseudo("authority", m.authority, diag);
    let headers = header_matches(at, f, "headers", m.headers, mesh, diag);
    let without_headers = header_matches(at, f, "withoutHeaders", m.without_headers, mesh, diag);
    let query_params = m
        .query_params
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, sm)| {
            let cond = string_match(
                at,
                &format!("{f}.queryParams.{name}"),
                sm,
                Place::Other,
                diag,
            )?;
            Some((name, cond))
        })
        .collect();
    let port = m.port.and_then(|p| diag.port(at, &format!("{f}.port"), p));
    let source_namespace = m.source_namespace.filter(|ns| !ns.is_empty());
    if let Some(ns) = &source_namespace {
        if !is_dns_label(ns) {
            diag.error(
                at,
                Some(&format!("{f}.sourceNamespace")),
                format!("sourceNamespace match {ns} is invalid (not a DNS-1123 label)"),
            );
        }
    }
    let source_labels = m.source_labels.unwrap_or_default();
    if !source_labels.is_empty() {
        diag.warn(
            at,
            Some(&format!("{f}.sourceLabels")),
            "istiod drops match blocks with sourceLabels at waypoints (istio/istio#51565); \
             here they match the source workload's labels when the proxy knows them",
        );
    }
    let gateways = m.gateways.unwrap_or_default();
    if !gateways.is_empty() && !gateways.iter().any(|g| g == "mesh") {
        diag.warn(
            at,
            Some(&format!("{f}.gateways")),
            format!(
                "[{}] does not include mesh: this match block never applies to a waypoint",
                gateways.join(", ")
            ),
        );
    }
    RouteMatch {
        uri,
        ignore_uri_case,
        scheme,
        method,
        authority,
        headers,
        without_headers,
        query_params,
        port,
        source_labels,
        source_namespace,
        gateways,
        name: m.name,
    }
}

/// RFC 7230 token characters (istiod's `validHeaderNameRegex`).
fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

const PSEUDO_HEADERS: [&str; 5] = [":method", ":scheme", ":authority", ":path", ":status"];

fn header_matches(
    at: &DocRef,
    f: &str,
    field: &str,
    map: Option<BTreeMap<String, StringMatchY>>,
    mesh: bool,
    diag: &mut Diag,
) -> Vec<(String, StringMatch)> {
    let place = if field == "withoutHeaders" {
        Place::WithoutHeaders
    } else {
        Place::Other
    };
    let mut out = Vec::new();
    for (name, sm) in map.unwrap_or_default() {
        let hf = format!("{f}.{field}.{name}");
        if name.is_empty() {
            diag.error(at, Some(&hf), "header name cannot be empty");
            continue;
        }
        if name.starts_with("@request.auth.claims") {
            if mesh {
                diag.error(
                    at,
                    Some(&hf),
                    "JWT claim based routing is only supported for gateways",
                );
            }
            continue;
        }
        let lower = name.to_ascii_lowercase();
        if !PSEUDO_HEADERS.contains(&lower.as_str()) && !name.chars().all(is_tchar) {
            diag.error(
                at,
                Some(&hf),
                format!("header name {name} is not a valid header name"),
            );
            continue;
        }
        if let Some(cond) = string_match(at, &hf, sm, place, diag) {
            out.push((lower, cond));
        }
    }
    out
}

/// One StringMatch: `exact`, `prefix`, `regex`, or `{}` (present).
pub(crate) fn string_match(
    at: &DocRef,
    f: &str,
    s: StringMatchY,
    place: Place,
    diag: &mut Diag,
) -> Option<StringMatch> {
    let mut ok = true;
    for key in s.extra.keys() {
        // An unknown form would otherwise vanish and widen the match.
        diag.error(
            at,
            Some(&format!("{f}.{key}")),
            match schema::suggest(key, schema::STRING_MATCH) {
                Some(k) => format!("unknown string match (did you mean `{k}`?)"),
                None => "unknown string match (use exact, prefix or regex)".to_string(),
            },
        );
        ok = false;
    }
    let set = [s.exact.is_some(), s.prefix.is_some(), s.regex.is_some()];
    if set.iter().filter(|x| **x).count() > 1 {
        diag.error(at, Some(f), "only one of exact, prefix or regex may be set");
        return None;
    }
    if !ok {
        return None;
    }
    if let Some(e) = s.exact {
        return Some(StringMatch::Exact(e));
    }
    if let Some(p) = s.prefix {
        if p.is_empty() && place != Place::Uri {
            diag.error(
                at,
                Some(&format!("{f}.prefix")),
                "prefix string match should not be empty",
            );
            return None;
        }
        return Some(StringMatch::Prefix(p));
    }
    let Some(r) = s.regex else {
        return Some(StringMatch::Present);
    };
    let rf = format!("{f}.regex");
    if place == Place::WithoutHeaders && r == "*" {
        // istiod: `*` is not RE2; it becomes a present match (istio/istio#20629).
        return Some(StringMatch::Present);
    }
    if r.is_empty() {
        diag.error(at, Some(&rf), "regex string match should not be empty");
        return None;
    }
    if r.len() > MAX_REGEX_LEN {
        diag.error(
            at,
            Some(&rf),
            format!("regex is too large, max length allowed is {MAX_REGEX_LEN}"),
        );
        return None;
    }
    match MatchRegex::new(&r) {
        Ok(re) => Some(StringMatch::Regex(re)),
        Err(reason) => {
            diag.error(at, Some(&rf), format!("invalid regex {r:?}: {reason}"));
            None
        }
    }
}

/// A DNS-1123 label: 1–63 of `[a-z0-9-]`, alphanumeric at both ends.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}
