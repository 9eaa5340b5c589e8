//! HTTPRoute matches: `path` (PathPrefix as a segment regex), `headers`, `queryParams`, `method`.

use super::*;

fn regex(diag: &mut Diag, at: &DocRef, f: &str, source: &str) -> Option<StringMatch> {
    match MatchRegex::new(source) {
        Ok(r) => Some(StringMatch::Regex(r)),
        Err(e) => {
            diag.error(at, Some(f), format!("invalid regex {source:?}: {e}"));
            None
        }
    }
}

/// Gateway API `PathPrefix`: `/foo` matches `/foo` and `/foo/…`, not
/// `/foobar` (Envoy `path_separated_prefix`, as istiod sets it). Modelled as
/// the full-path regex `/foo(/.*)?`; `/` is a plain prefix.
fn path_prefix(value: &str) -> StringMatch {
    let trimmed = value.trim_end_matches('/');
    if trimmed.is_empty() {
        return StringMatch::Prefix("/".to_string());
    }
    let source = format!("{}(/.*)?", regex::escape(trimmed));
    StringMatch::Regex(MatchRegex::new(&source).expect("escaped prefix is a valid regex"))
}

pub(super) fn parse_match(ctx: &DocCtx<'_>, f: &str, m: MatchY, diag: &mut Diag) -> RouteMatch {
    let at = &ctx.at;
    let mut out = RouteMatch::default();
    diag.unsupported(
        at,
        &format!("{f}."),
        &m.extra,
        schema::HTTP_ROUTE_MATCH,
        &[],
    );
    let pf = format!("{f}.path");
    let (kind, value) = match m.path {
        Some(p) => {
            diag.unsupported(
                at,
                &format!("{pf}."),
                &p.extra,
                schema::HTTP_PATH_MATCH,
                &[],
            );
            (
                p.kind.unwrap_or_else(|| "PathPrefix".into()),
                p.value.unwrap_or_else(|| "/".into()),
            )
        }
        None => ("PathPrefix".to_string(), "/".to_string()),
    };
    if !value.starts_with('/') && kind != "RegularExpression" {
        diag.error(
            at,
            Some(&format!("{pf}.value")),
            format!("{value:?} must start with /"),
        );
    }
    out.uri = match kind.as_str() {
        "PathPrefix" => Some(path_prefix(&value)),
        "Exact" => Some(StringMatch::Exact(value)),
        "RegularExpression" => regex(diag, at, &format!("{pf}.value"), &value),
        other => {
            diag.error(
                at,
                Some(&format!("{pf}.type")),
                format!(
                    "unknown path match type {other} (use PathPrefix, Exact or RegularExpression)"
                ),
            );
            None
        }
    };
    for (list, what, dst) in [
        (m.headers, "headers", 0),
        (m.query_params, "queryParams", 1),
    ] {
        for (k, h) in list.unwrap_or_default().into_iter().enumerate() {
            let hf = format!("{f}.{what}[{k}]");
            diag.unsupported(
                at,
                &format!("{hf}."),
                &h.extra,
                schema::HTTP_NAMED_MATCH,
                &[],
            );
            let Some(name) = diag.required(at, &format!("{hf}.name"), h.name) else {
                continue;
            };
            let value = h.value.unwrap_or_default();
            let cond = match h.kind.as_deref().unwrap_or("Exact") {
                "Exact" => Some(StringMatch::Exact(value)),
                "RegularExpression" => regex(diag, at, &format!("{hf}.value"), &value),
                other => {
                    diag.error(
                        at,
                        Some(&format!("{hf}.type")),
                        format!("unknown match type {other} (use Exact or RegularExpression)"),
                    );
                    None
                }
            };
            let Some(cond) = cond else { continue };
            if dst == 0 {
                out.headers.push((name.to_ascii_lowercase(), cond));
            } else {
                out.query_params.push((name, cond));
            }
        }
    }
    out.method = m.method.map(StringMatch::Exact);
    out
}
