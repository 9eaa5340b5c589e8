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
mod matches;
use matches::parse_match;
mod rule;
use rule::parse_rule;

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
                None => http.iter().cloned().map(std::sync::Arc::new).collect(),
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
                        std::sync::Arc::new(r)
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
