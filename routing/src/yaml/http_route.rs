//! Gateway API `HTTPRoute` (`gateway.networking.k8s.io/v1`, `v1beta1`)
//! attached to Services through `parentRefs` (how Istio binds routes to a
//! waypoint), compiled onto the same model as VirtualServices: each parent
//! service gets one [`VirtualService`] named after the HTTPRoute, whose
//! `http` routes are the HTTPRoute's rules.
//!
//! Semantics follow the Gateway API spec as istiod converts it
//! (`pilot/pkg/config/kube/gateway/conversion.go`): `PathPrefix` matches
//! whole path segments; a rule without (or with only zero-weight)
//! `backendRefs` answers 500; `RequestRedirect.statusCode` defaults to 302.
//!
//! Precedence: a VirtualService that already routes a service wins over an
//! HTTPRoute for it (the HTTPRoute is ignored for that service, with a
//! warning). This is this loader's choice, not verified against istiod: the
//! Istio docs advise against mixing both APIs for one service.

use super::diag::{Diag, Extra};
use super::schema;
use super::{parse_spec, DocCtx};
use crate::actions::{
    DirectResponse, HeaderOps, Headers, Mirror, Percent, Redirect, RedirectPort, RegexRewrite,
    Rewrite, RouteAction, UriRewrite,
};
use crate::error::DocRef;
use crate::hosts::expand_host;
use crate::model::{
    HttpRoute, MatchRegex, RouteDestination, RouteMatch, StringMatch, VirtualService,
};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Spec {
    parent_refs: Option<Vec<ParentRefY>>,
    hostnames: Option<Vec<String>>,
    rules: Option<Vec<RuleY>>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ParentRefY {
    group: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    port: Option<i64>,
    section_name: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleY {
    name: Option<String>,
    matches: Option<Vec<MatchY>>,
    filters: Option<Vec<FilterY>>,
    backend_refs: Option<Vec<BackendRefY>>,
    timeouts: Option<TimeoutsY>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MatchY {
    path: Option<PathMatchY>,
    headers: Option<Vec<NamedMatchY>>,
    query_params: Option<Vec<NamedMatchY>>,
    method: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct PathMatchY {
    #[serde(rename = "type")]
    kind: Option<String>,
    value: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct NamedMatchY {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    value: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FilterY {
    #[serde(rename = "type")]
    kind: Option<String>,
    request_header_modifier: Option<HeaderModY>,
    response_header_modifier: Option<HeaderModY>,
    request_redirect: Option<RedirectY>,
    url_rewrite: Option<UrlRewriteY>,
    request_mirror: Option<MirrorY>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct HeaderModY {
    set: Option<Vec<HeaderValueY>>,
    add: Option<Vec<HeaderValueY>>,
    remove: Option<Vec<String>>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct HeaderValueY {
    name: String,
    value: String,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RedirectY {
    scheme: Option<String>,
    hostname: Option<String>,
    path: Option<PathModY>,
    port: Option<i64>,
    status_code: Option<i64>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct UrlRewriteY {
    hostname: Option<String>,
    path: Option<PathModY>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PathModY {
    #[serde(rename = "type")]
    kind: Option<String>,
    replace_full_path: Option<String>,
    replace_prefix_match: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MirrorY {
    backend_ref: Option<BackendRefY>,
    percent: Option<f64>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct BackendRefY {
    group: Option<String>,
    kind: Option<String>,
    name: Option<String>,
    namespace: Option<String>,
    port: Option<i64>,
    weight: Option<i64>,
    filters: Option<Vec<FilterY>>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TimeoutsY {
    request: Option<String>,
    backend_request: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

/// A checked HTTPRoute; service names are FQDNs, not yet resolved.
#[derive(Debug)]
pub(crate) struct HttpRouteIr {
    pub at: DocRef,
    pub namespace: String,
    pub name: String,
    /// (field, parent service FQDN, port restriction).
    pub parents: Vec<(String, String, Option<u16>)>,
    pub http: Vec<HttpRoute>,
    /// For each route of `http`: the field of each destination, then of each mirror.
    pub fields: Vec<(Vec<String>, Vec<String>)>,
}

fn is_core(group: &Option<String>) -> bool {
    matches!(group.as_deref(), None | Some("") | Some("core"))
}

pub(crate) fn parse(ctx: &DocCtx<'_>, diag: &mut Diag) -> Option<HttpRouteIr> {
    let spec: Spec = parse_spec(ctx, diag)?;
    let at = &ctx.at;
    let errors_before = diag.errors.len();
    diag.unsupported(at, "spec.", &spec.extra, schema::HTTP_ROUTE_SPEC, &[]);
    if spec.hostnames.as_ref().is_some_and(|h| !h.is_empty()) {
        diag.warn(
            at,
            Some("spec.hostnames"),
            "not checked for Service parents (the route applies to the whole service)",
        );
    }
    let mut parents = Vec::new();
    for (i, p) in spec.parent_refs.unwrap_or_default().into_iter().enumerate() {
        let f = format!("spec.parentRefs[{i}]");
        diag.unsupported(
            at,
            &format!("{f}."),
            &p.extra,
            schema::PARENT_REFERENCE,
            &[],
        );
        let kind = p.kind.as_deref().unwrap_or("Gateway");
        if kind != "Service" || !is_core(&p.group) {
            diag.warn(
                at,
                Some(&f),
                format!("parent kind {kind} is not a Service; ignored (only Service parents bind to a waypoint)"),
            );
            continue;
        }
        let Some(name) = diag.required(at, &format!("{f}.name"), p.name) else {
            continue;
        };
        if p.section_name.is_some() {
            diag.warn(
                at,
                Some(&format!("{f}.sectionName")),
                "not supported; ignored",
            );
        }
        let port = match p.port {
            Some(n) => match diag.port(at, &format!("{f}.port"), n) {
                Some(p) => Some(p),
                None => continue,
            },
            None => None,
        };
        let ns = p.namespace.unwrap_or_else(|| ctx.namespace.clone());
        parents.push((f, expand_host(&name, &ns), port));
    }
    if parents.is_empty() {
        diag.warn(
            at,
            Some("spec.parentRefs"),
            "no Service parent; the route attaches to nothing",
        );
    }
    let mut http = Vec::new();
    let mut fields = Vec::new();
    for (i, r) in spec.rules.unwrap_or_default().into_iter().enumerate() {
        if let Some((route, f)) = parse_rule(ctx, i, r, diag) {
            http.push(route);
            fields.push(f);
        }
    }
    if diag.errors.len() > errors_before {
        return None;
    }
    Some(HttpRouteIr {
        at: at.clone(),
        namespace: ctx.namespace.clone(),
        name: ctx.name.clone(),
        parents,
        http,
        fields,
    })
}

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
pub(crate) fn path_prefix(value: &str) -> StringMatch {
    let trimmed = value.trim_end_matches('/');
    if trimmed.is_empty() {
        return StringMatch::Prefix("/".to_string());
    }
    let source = format!("{}(/.*)?", regex::escape(trimmed));
    StringMatch::Regex(MatchRegex::new(&source).expect("escaped prefix is a valid regex"))
}

fn parse_match(ctx: &DocCtx<'_>, f: &str, m: MatchY, diag: &mut Diag) -> RouteMatch {
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

/// GEP-2257 duration: 1–4 of `<digits>(h|m|s|ms)`.
fn duration(s: &str) -> Option<Duration> {
    let mut rest = s;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(n), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(n * 3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(n * 60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(n), 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += unit;
        parts += 1;
    }
    (1..=4).contains(&parts).then_some(total)
}

/// An `HTTPHeaderFilter` at `f`.
fn header_ops(at: &DocRef, f: &str, h: HeaderModY, diag: &mut Diag) -> HeaderOps {
    diag.unsupported(
        at,
        &format!("{f}."),
        &h.extra,
        schema::HTTP_HEADER_FILTER,
        &[],
    );
    let mut pairs = |list: Option<Vec<HeaderValueY>>, what: &str| -> Vec<(String, String)> {
        let list = list.unwrap_or_default().into_iter().enumerate();
        list.map(|(k, v)| {
            let vf = format!("{f}.{what}[{k}].");
            diag.unsupported(at, &vf, &v.extra, schema::HTTP_HEADER, &[]);
            (v.name, v.value)
        })
        .collect()
    };
    let set = pairs(h.set, "set");
    let add = pairs(h.add, "add");
    HeaderOps::new(set, add, h.remove.unwrap_or_default())
}

/// A backend reference → (FQDN, port); reports missing fields.
fn backend(ctx: &DocCtx<'_>, f: &str, b: &BackendRefY, diag: &mut Diag) -> Option<(String, u16)> {
    let at = &ctx.at;
    let kind = b.kind.as_deref().unwrap_or("Service");
    if kind != "Service" || !is_core(&b.group) {
        diag.error(
            at,
            Some(f),
            format!("backend kind {kind} is not supported (use Service)"),
        );
        return None;
    }
    let name = diag.required(at, &format!("{f}.name"), b.name.clone())?;
    let port = diag.required(at, &format!("{f}.port"), b.port)?;
    let port = diag.port(at, &format!("{f}.port"), port)?;
    let ns = b.namespace.clone().unwrap_or_else(|| ctx.namespace.clone());
    Some((expand_host(&name, &ns), port))
}

type RuleOut = (HttpRoute, (Vec<String>, Vec<String>));

fn parse_rule(ctx: &DocCtx<'_>, i: usize, r: RuleY, diag: &mut Diag) -> Option<RuleOut> {
    let at = &ctx.at;
    let f = format!("spec.rules[{i}]");
    diag.unsupported(at, &format!("{f}."), &r.extra, schema::HTTP_ROUTE_RULE, &[]);
    let matches: Vec<RouteMatch> = r
        .matches
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(k, m)| parse_match(ctx, &format!("{f}.matches[{k}]"), m, diag))
        .collect();
    let name = r.name.unwrap_or_else(|| format!("{}.{i}", ctx.name));
    let mut route = HttpRoute::new(name, matches, Vec::new());
    let mut mirror_fields = Vec::new();
    let mut redirect = None;
    for (k, flt) in r.filters.unwrap_or_default().into_iter().enumerate() {
        let ff = format!("{f}.filters[{k}]");
        diag.unsupported(
            at,
            &format!("{ff}."),
            &flt.extra,
            schema::HTTP_ROUTE_FILTER,
            &[],
        );
        let kind = flt.kind.clone().unwrap_or_default();
        match kind.as_str() {
            "RequestHeaderModifier" => {
                if let Some(h) = flt.request_header_modifier {
                    let hf = format!("{ff}.requestHeaderModifier");
                    route.headers.request = header_ops(at, &hf, h, diag);
                }
            }
            "ResponseHeaderModifier" => {
                if let Some(h) = flt.response_header_modifier {
                    let hf = format!("{ff}.responseHeaderModifier");
                    route.headers.response = header_ops(at, &hf, h, diag);
                }
            }
            "RequestRedirect" => {
                let Some(rd) = flt.request_redirect else {
                    continue;
                };
                let rf = format!("{ff}.requestRedirect");
                let known = schema::HTTP_REQUEST_REDIRECT_FILTER;
                diag.unsupported(at, &format!("{rf}."), &rd.extra, known, &[]);
                let code = rd.status_code.unwrap_or(302);
                if ![301, 302, 303, 307, 308].contains(&code) {
                    diag.error(
                        at,
                        Some(&format!("{ff}.requestRedirect.statusCode")),
                        format!("{code} is not a redirect status (301, 302, 303, 307 or 308)"),
                    );
                    continue;
                }
                let port = match rd.port {
                    Some(p) => diag
                        .port(at, &format!("{ff}.requestRedirect.port"), p)
                        .map(RedirectPort::Port),
                    None => rd
                        .scheme
                        .as_ref()
                        .map(|_| RedirectPort::FromProtocolDefault),
                };
                let pf = format!("{ff}.requestRedirect.path");
                let path = match rd.path {
                    Some(p) => path_mod(at, &pf, p, diag).and_then(|(full, v)| {
                        if full {
                            Some(crate::actions::RedirectPath::Uri(v))
                        } else {
                            let rewrite = prefix_rewrite(&route.matches, &v);
                            if rewrite.is_none() {
                                diag.error(
                                    at,
                                    Some(&pf),
                                    "ReplacePrefixMatch needs the rule to match one PathPrefix",
                                );
                            }
                            rewrite.map(crate::actions::RedirectPath::Regex)
                        }
                    }),
                    None => None,
                };
                redirect = Some(Redirect {
                    path,
                    authority: rd.hostname,
                    scheme: rd.scheme,
                    port,
                    code: code as u16,
                });
            }
            "URLRewrite" => {
                let Some(u) = flt.url_rewrite else { continue };
                let uf = format!("{ff}.urlRewrite");
                let known = schema::HTTP_URL_REWRITE_FILTER;
                diag.unsupported(at, &format!("{uf}."), &u.extra, known, &[]);
                let uri = match u.path {
                    Some(p) => path_mod(at, &format!("{ff}.urlRewrite.path"), p, diag).and_then(
                        |(full, v)| {
                            if full {
                                // Whole path replaced, query kept.
                                RegexRewrite::new("^.*$", &v.replace('\\', "\\\\"))
                                    .ok()
                                    .map(UriRewrite::Regex)
                            } else {
                                prefix_rewrite(&route.matches, &v).map(UriRewrite::Regex)
                            }
                        },
                    ),
                    None => None,
                };
                if uri.is_some() || u.hostname.is_some() {
                    route.rewrite = Some(Rewrite {
                        uri,
                        authority: u.hostname,
                    });
                }
            }
            "RequestMirror" => {
                let Some(m) = flt.request_mirror else {
                    continue;
                };
                let known = schema::HTTP_REQUEST_MIRROR_FILTER;
                diag.unsupported(at, &format!("{ff}.requestMirror."), &m.extra, known, &[]);
                let mf = format!("{ff}.requestMirror.backendRef");
                let Some(b) = diag.required(at, &mf, m.backend_ref) else {
                    continue;
                };
                let known = schema::BACKEND_OBJECT_REFERENCE;
                diag.unsupported(at, &format!("{mf}."), &b.extra, known, &[]);
                let Some((host, port)) = backend(ctx, &mf, &b, diag) else {
                    continue;
                };
                let percentage = m
                    .percent
                    .and_then(Percent::from_value)
                    .unwrap_or(Percent::HUNDRED);
                route.mirrors.push(Mirror {
                    host,
                    subset: None,
                    port: Some(port),
                    percentage,
                });
                mirror_fields.push(mf);
            }
            other => diag.warn(
                at,
                Some(&format!("{ff}.type")),
                format!("filter {other} is not supported; ignored"),
            ),
        }
    }
    if let Some(t) = r.timeouts {
        let known = schema::HTTP_ROUTE_TIMEOUTS;
        diag.unsupported(at, &format!("{f}.timeouts."), &t.extra, known, &[]);
        for (v, which) in [
            (&t.request, "request"),
            (&t.backend_request, "backendRequest"),
        ] {
            let Some(v) = v else { continue };
            let Some(d) = duration(v) else {
                diag.error(
                    at,
                    Some(&format!("{f}.timeouts.{which}")),
                    format!("invalid duration {v:?}"),
                );
                continue;
            };
            let d = (!d.is_zero()).then_some(d);
            if which == "request" {
                route.timeout = d;
            } else {
                route.retries.per_try_timeout = d;
            }
        }
    }
    let mut dest_fields = Vec::new();
    if let Some(rd) = redirect {
        route.action = RouteAction::Redirect(rd);
        route.retries = crate::actions::RetryPolicy::disabled();
    } else {
        for (j, b) in r.backend_refs.unwrap_or_default().into_iter().enumerate() {
            let bf = format!("{f}.backendRefs[{j}]");
            diag.unsupported(
                at,
                &format!("{bf}."),
                &b.extra,
                schema::HTTP_BACKEND_REF,
                &[],
            );
            let Some((host, port)) = backend(ctx, &bf, &b, diag) else {
                continue;
            };
            let weight = b.weight.unwrap_or(1);
            if !(0..=1_000_000).contains(&weight) {
                diag.error(
                    at,
                    Some(&format!("{bf}.weight")),
                    format!("{weight} out of range 0..1000000"),
                );
                continue;
            }
            let mut headers = Headers::default();
            for (k, flt) in b.filters.unwrap_or_default().into_iter().enumerate() {
                let ff = format!("{bf}.filters[{k}]");
                diag.unsupported(
                    at,
                    &format!("{ff}."),
                    &flt.extra,
                    schema::HTTP_ROUTE_FILTER,
                    &[],
                );
                match (
                    flt.kind.as_deref().unwrap_or(""),
                    flt.request_header_modifier,
                    flt.response_header_modifier,
                ) {
                    ("RequestHeaderModifier", Some(h), _) => {
                        let hf = format!("{ff}.requestHeaderModifier");
                        headers.request = header_ops(at, &hf, h, diag);
                    }
                    ("ResponseHeaderModifier", _, Some(h)) => {
                        let hf = format!("{ff}.responseHeaderModifier");
                        headers.response = header_ops(at, &hf, h, diag);
                    }
                    (other, _, _) => diag.warn(
                        at,
                        Some(&format!("{ff}.type")),
                        format!("backend filter {other} is not supported; ignored"),
                    ),
                }
            }
            if weight == 0 {
                continue;
            }
            route.destinations.push(RouteDestination {
                host,
                subset: None,
                port: Some(port),
                weight: weight as u32,
                headers,
            });
            dest_fields.push(bf);
        }
        if route.destinations.is_empty() {
            // Gateway API: no (or only zero-weight) backends → HTTP 500.
            route.action = RouteAction::DirectResponse(DirectResponse {
                status: 500,
                body: None,
            });
            route.retries = crate::actions::RetryPolicy::disabled();
        }
    }
    Some((route, (dest_fields, mirror_fields)))
}

/// `(true, ReplaceFullPath)` or `(false, ReplacePrefixMatch)`.
fn path_mod(at: &DocRef, f: &str, p: PathModY, diag: &mut Diag) -> Option<(bool, String)> {
    diag.unsupported(
        at,
        &format!("{f}."),
        &p.extra,
        schema::HTTP_PATH_MODIFIER,
        &[],
    );
    match p.kind.as_deref() {
        Some("ReplaceFullPath") => diag
            .required(at, &format!("{f}.replaceFullPath"), p.replace_full_path)
            .map(|v| (true, v)),
        Some("ReplacePrefixMatch") => diag
            .required(
                at,
                &format!("{f}.replacePrefixMatch"),
                p.replace_prefix_match,
            )
            .map(|v| (false, v)),
        other => {
            diag.error(
                at,
                Some(&format!("{f}.type")),
                format!(
                    "unknown path modifier type {} (use ReplaceFullPath or ReplacePrefixMatch)",
                    other.unwrap_or("<missing>")
                ),
            );
            None
        }
    }
}

/// `ReplacePrefixMatch`: needs exactly one PathPrefix value across the
/// rule's matches; replaces that segment prefix (Gateway API: `/foo` →
/// `/bar` turns `/foo/x` into `/bar/x`; → `/` turns it into `/x`).
fn prefix_rewrite(matches: &[RouteMatch], replacement: &str) -> Option<RegexRewrite> {
    let prefix = match matches.first().and_then(|m| m.uri.as_ref()) {
        None | Some(StringMatch::Prefix(_)) => String::new(),
        Some(StringMatch::Regex(r)) => r.as_str().strip_suffix("(/.*)?")?.to_string(),
        Some(_) => return None,
    };
    let repl = replacement.trim_end_matches('/').replace('\\', "\\\\");
    if repl.is_empty() {
        RegexRewrite::new(&format!("^{prefix}/?"), "/").ok()
    } else {
        RegexRewrite::new(&format!("^{prefix}"), &repl).ok()
    }
}

/// Resolve references and turn each HTTPRoute into one VirtualService per
/// parent service that no VirtualService already routes.
pub(super) fn resolve(
    routes: Vec<HttpRouteIr>,
    resolve_host: &dyn Fn(&str) -> Option<String>,
    vs_owner: &HashMap<String, String>,
    diag: &mut Diag,
) -> Vec<VirtualService> {
    let mut out = Vec::new();
    let mut owner: HashMap<String, String> = HashMap::new();
    for HttpRouteIr {
        at,
        namespace,
        name,
        parents,
        mut http,
        fields,
    } in routes
    {
        let errors_before = diag.errors.len();
        for (route, (dests, mirrors)) in http.iter_mut().zip(&fields) {
            for (d, f) in route.destinations.iter_mut().zip(dests) {
                match resolve_host(&d.host) {
                    Some(h) => d.host = h,
                    None => diag.error(
                        &at,
                        Some(f),
                        format!("backend {} is not a known service", d.host),
                    ),
                }
            }
            for (m, f) in route.mirrors.iter_mut().zip(mirrors) {
                match resolve_host(&m.host) {
                    Some(h) => m.host = h,
                    None => diag.error(
                        &at,
                        Some(f),
                        format!("backend {} is not a known service", m.host),
                    ),
                }
            }
        }
        if diag.errors.len() > errors_before {
            continue;
        }
        // Parent service → ports (None: every port).
        let mut bound: Vec<(String, Option<Vec<u16>>)> = Vec::new();
        for (f, host, port) in parents {
            let Some(h) = resolve_host(&host) else {
                diag.warn(
                    &at,
                    Some(&f),
                    format!("{host} is not a known service; the route attaches to nothing there"),
                );
                continue;
            };
            match bound.iter_mut().find(|(b, _)| *b == h) {
                Some((_, ports)) => match (ports.as_mut(), port) {
                    (Some(ps), Some(p)) => ps.push(p),
                    _ => *ports = None,
                },
                None => bound.push((h, port.map(|p| vec![p]))),
            }
        }
        let id = format!("{namespace}/{name}");
        for (host, ports) in bound {
            if let Some(vs) = vs_owner.get(&host) {
                diag.warn(&at, None, format!("service {host} is routed by VirtualService {vs}; the VirtualService takes precedence and this HTTPRoute is ignored for it"));
                continue;
            }
            if let Some(prev) = owner.get(&host) {
                diag.warn(&at, None, format!("service {host} already has HTTPRoute {prev}; routes are not merged, so this one is ignored for it"));
                continue;
            }
            owner.insert(host.clone(), id.clone());
            let http = match &ports {
                None => http.clone(),
                Some(ps) => http
                    .iter()
                    .map(|r| {
                        let mut r = r.clone();
                        let base = if r.matches.is_empty() {
                            vec![RouteMatch::default()]
                        } else {
                            r.matches.clone()
                        };
                        r.matches = ps
                            .iter()
                            .flat_map(|p| {
                                base.iter().cloned().map(move |mut m| {
                                    m.port = Some(*p);
                                    m
                                })
                            })
                            .collect();
                        r
                    })
                    .collect(),
            };
            out.push(VirtualService {
                namespace: namespace.clone(),
                name: name.clone(),
                hosts: vec![host],
                http,
                tcp: Vec::new(),
            });
        }
    }
    out
}
