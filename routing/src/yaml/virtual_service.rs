//! `VirtualService` documents: `http` routes (matches, destinations and the
//! actions of [`super::actions`]) and `tcp` routes.
//!
//! Validation follows istiod's (`pkg/config/validation/virtualservice.go`,
//! `validation.go`): what istiod rejects is a load error here, naming the
//! field; valid Istio that the waypoint does not enforce is a warning.

use super::actions::{
    CorsY, DirectResponseY, FaultY, HeadersY, PercentRule, PercentY, RedirectY, RetriesY, RewriteY,
};
use super::diag::{Diag, Extra};
use super::fields::{present, DurationRule, Fields, Scalar};
use super::schema;
use super::{parse_spec, yaml_options, DocCtx};
use crate::actions::{Headers, Mirror, Percent, RetryPolicy, RouteAction, UriRewrite};
use crate::error::DocRef;
use crate::hosts::{expand_host, hosts_overlap};
use crate::model::{
    HttpRoute, MatchRegex, RouteDestination, RouteMatch, StringMatch, VirtualService,
};
use crate::tcp::{Cidr, TcpMatch, TcpRoute};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Deserialize)]
pub(super) struct Spec {
    hosts: Option<Vec<String>>,
    gateways: Option<Vec<String>>,
    http: Option<Vec<HttpY>>,
    tcp: Option<Vec<TcpY>>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpY {
    name: Option<String>,
    #[serde(rename = "match")]
    matches: Option<Vec<MatchY>>,
    route: Option<Vec<RouteY>>,
    redirect: Option<RedirectY>,
    direct_response: Option<DirectResponseY>,
    delegate: Option<serde_json::Value>,
    rewrite: Option<RewriteY>,
    timeout: Scalar,
    retries: Option<RetriesY>,
    fault: Option<FaultY>,
    mirror: Option<DestinationY>,
    mirrors: Option<Vec<MirrorPolicyY>>,
    mirror_percent: Scalar,
    mirror_percentage: Option<PercentY>,
    cors_policy: Option<CorsY>,
    headers: Option<HeadersY>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct MirrorPolicyY {
    destination: Option<DestinationY>,
    percentage: Option<PercentY>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct TcpY {
    #[serde(rename = "match")]
    matches: Option<Vec<L4MatchY>>,
    route: Option<Vec<RouteY>>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct L4MatchY {
    destination_subnets: Option<Vec<String>>,
    port: Option<i64>,
    source_labels: Option<BTreeMap<String, String>>,
    source_namespace: Option<String>,
    gateways: Option<Vec<String>>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MatchY {
    name: Option<String>,
    uri: Option<StringMatchY>,
    scheme: Option<StringMatchY>,
    method: Option<StringMatchY>,
    authority: Option<StringMatchY>,
    headers: Option<BTreeMap<String, StringMatchY>>,
    without_headers: Option<BTreeMap<String, StringMatchY>>,
    query_params: Option<BTreeMap<String, StringMatchY>>,
    ignore_uri_case: Option<bool>,
    port: Option<i64>,
    source_labels: Option<BTreeMap<String, String>>,
    source_namespace: Option<String>,
    gateways: Option<Vec<String>>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
pub(super) struct StringMatchY {
    exact: Option<String>,
    prefix: Option<String>,
    regex: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct RouteY {
    destination: Option<DestinationY>,
    weight: Option<i64>,
    headers: Option<HeadersY>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct DestinationY {
    host: Option<String>,
    subset: Option<String>,
    port: Option<PortSelectorY>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct PortSelectorY {
    number: Option<i64>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct MetaDoc {
    metadata: Option<CreatedY>,
}

#[derive(Debug, Deserialize)]
struct CreatedY {
    #[serde(rename = "creationTimestamp")]
    creation_timestamp: Option<String>,
}

/// A checked VirtualService; hosts are expanded but not yet resolved.
#[derive(Debug)]
pub(crate) struct VirtualServiceIr {
    pub at: DocRef,
    pub vs: VirtualService,
    /// For each kept route of `vs.http`: its index in the document's `http` list.
    pub source_index: Vec<usize>,
    /// For each kept route of `vs.http`: the field of each of its mirrors
    /// (`spec.http[i].mirror` or `spec.http[i].mirrors[k].destination`).
    pub mirror_fields: Vec<Vec<String>>,
    /// `metadata.creationTimestamp` (`YYYY-MM-DDTHH:MM:SSZ`, so it orders as
    /// text), when the document has one: istiod's precedence between
    /// VirtualServices for the same host.
    pub created: Option<String>,
}

/// Istio's limit on a regex's length (Envoy's RE2 program size stand-in).
const MAX_REGEX_LEN: usize = 1024;

pub(crate) fn parse(ctx: &DocCtx<'_>, diag: &mut Diag) -> Option<VirtualServiceIr> {
    let spec: Spec = parse_spec(ctx, diag)?;
    let at = &ctx.at;
    let errors_before = diag.errors.len();
    diag.unsupported(at, "spec.", &spec.extra, schema::VIRTUAL_SERVICE, &[]);
    // `gateways` empty or naming `mesh`: the VirtualService applies to sidecars and waypoints.
    let gateways = spec.gateways.unwrap_or_default();
    let applies_to_mesh = gateways.is_empty() || gateways.iter().any(|g| g == "mesh");
    let raw_hosts: Vec<String> = spec
        .hosts
        .unwrap_or_default()
        .iter()
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    if raw_hosts.is_empty() {
        diag.error(at, Some("spec.hosts"), "at least one host is required");
    }
    for (i, h) in raw_hosts.iter().enumerate() {
        if applies_to_mesh && h == "*" {
            diag.error(
                at,
                Some(&format!("spec.hosts[{i}]")),
                "wildcard host * is not allowed for virtual services bound to the mesh gateway",
            );
        }
        if let Some(prev) = raw_hosts[..i].iter().find(|p| hosts_overlap(p, h)) {
            diag.error(
                at,
                Some(&format!("spec.hosts[{i}]")),
                format!("duplicate hosts in virtual service: {prev} & {h}"),
            );
        }
    }
    let hosts: Vec<String> = raw_hosts
        .iter()
        .map(|h| expand_host(h, &ctx.namespace))
        .collect();
    let mut http = Vec::new();
    let mut source_index = Vec::new();
    let mut mirror_fields = Vec::new();
    for (i, h) in spec.http.unwrap_or_default().into_iter().enumerate() {
        if let Some((route, mirrors)) = parse_route(ctx, i, h, applies_to_mesh, diag) {
            http.push(route);
            source_index.push(i);
            mirror_fields.push(mirrors);
        }
    }
    let mut tcp = Vec::new();
    for (i, t) in spec.tcp.unwrap_or_default().into_iter().enumerate() {
        if let Some(route) = parse_tcp_route(ctx, i, t, diag) {
            tcp.push(route);
        }
    }
    if diag.errors.len() > errors_before {
        return None;
    }
    if !applies_to_mesh {
        diag.warn(
            at,
            Some("spec.gateways"),
            format!(
                "[{}] does not include mesh: the VirtualService applies to gateways only; skipped",
                gateways.join(", ")
            ),
        );
        return None;
    }
    warn_unreachable(at, &http, &source_index, diag);
    Some(VirtualServiceIr {
        at: at.clone(),
        vs: VirtualService {
            namespace: ctx.namespace.clone(),
            name: ctx.name.clone(),
            hosts,
            http,
            tcp,
        },
        source_index,
        mirror_fields,
        created: creation_timestamp(ctx, diag),
    })
}

/// `metadata.creationTimestamp` in Kubernetes' form, or `None` (with a warning
/// when it is there but in another form).
fn creation_timestamp(ctx: &DocCtx<'_>, diag: &mut Diag) -> Option<String> {
    let doc: Option<MetaDoc> =
        serde_saphyr::from_str_with_options(ctx.text, yaml_options()).ok()?;
    let ts = doc?.metadata?.creation_timestamp?;
    let ts = ts.trim();
    let shape = "dddd-dd-ddTdd:dd:ddZ";
    let ok = ts.len() == shape.len()
        && ts.bytes().zip(shape.bytes()).all(|(c, s)| match s {
            b'd' => c.is_ascii_digit(),
            _ => c == s,
        });
    if !ok {
        diag.warn(
            &ctx.at,
            Some("metadata.creationTimestamp"),
            format!("{ts:?} is not of the form 2006-01-02T15:04:05Z; ignored (load order applies)"),
        );
        return None;
    }
    Some(ts.to_string())
}

fn parse_route(
    ctx: &DocCtx<'_>,
    i: usize,
    h: HttpY,
    mesh: bool,
    diag: &mut Diag,
) -> Option<(HttpRoute, Vec<String>)> {
    let at = &ctx.at;
    let f = format!("spec.http[{i}]");
    diag.unsupported(at, &format!("{f}."), &h.extra, schema::VS_HTTP_ROUTE, &[]);
    let matches: Vec<RouteMatch> = h
        .matches
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(k, m)| parse_match(at, &format!("{f}.match[{k}]"), m, mesh, diag))
        .collect();
    let routes = h.route.unwrap_or_default();
    let errors_before = diag.errors.len();
    let redirect = h.redirect.is_some();
    let direct = h.direct_response.is_some();
    if h.delegate.is_some() {
        // istiod validateHTTPRouteConflict (root route)
        if redirect {
            diag.error(
                at,
                Some(&f),
                "a route with delegate must not specify redirect",
            );
        }
        if !routes.is_empty() {
            diag.error(at, Some(&f), "a route with delegate must not specify route");
        }
        if diag.errors.len() == errors_before {
            diag.warn(
                at,
                Some(&format!("{f}.delegate")),
                "delegation is not supported at a waypoint; route skipped",
            );
        }
        return None;
    }
    // istiod validateHTTPRouteConflict
    let exclusive = |diag: &mut Diag, what: &str| {
        diag.error(at, Some(&f), format!("{what} are exclusive"));
    };
    if redirect && !routes.is_empty() {
        exclusive(diag, "redirect and route");
    }
    if direct && !routes.is_empty() {
        exclusive(diag, "directResponse and route");
    }
    if redirect && direct {
        exclusive(diag, "redirect and directResponse");
    }
    let answer = if redirect {
        "redirect"
    } else {
        "directResponse"
    };
    if (redirect || direct) && h.fault.is_some() {
        exclusive(diag, &format!("fault and {answer}"));
    }
    if (redirect || direct) && h.rewrite.is_some() {
        exclusive(diag, &format!("rewrite and {answer}"));
    }
    if !redirect && !direct && routes.is_empty() {
        diag.error(
            at,
            Some(&format!("{f}.route")),
            "at least one destination is required (or a redirect or directResponse)",
        );
    }
    if h.mirror.is_some() && h.mirrors.as_ref().is_some_and(|m| !m.is_empty()) {
        exclusive(diag, "mirror and mirrors");
    }
    if diag.errors.len() > errors_before {
        return None;
    }
    let forwards = !redirect && !direct;
    let mut fl = Fields { at, diag };
    if !forwards {
        for (field, set) in [
            ("timeout", present(h.timeout.clone()).is_some()),
            ("retries", h.retries.is_some()),
            ("mirror", h.mirror.is_some()),
            ("mirrors", h.mirrors.is_some()),
        ] {
            if set {
                fl.warn(
                    &format!("{f}.{field}"),
                    format!("has no effect on a {answer} (nothing is forwarded); ignored"),
                );
            }
        }
    }
    let action = if let Some(r) = h.redirect {
        fl.redirect(&format!("{f}.redirect"), r, &matches)
            .map(RouteAction::Redirect)
    } else if let Some(d) = h.direct_response {
        fl.direct_response(&format!("{f}.directResponse"), d)
            .map(RouteAction::DirectResponse)
    } else {
        Some(RouteAction::Route)
    };
    let rewrite = h
        .rewrite
        .and_then(|r| fl.rewrite(&format!("{f}.rewrite"), r));
    let headers = match h.headers {
        Some(hy) => fl.headers(&format!("{f}.headers"), hy, true),
        None => Some(Headers::default()),
    };
    if let (Some(r), Some(hd)) = (&rewrite, &headers) {
        if let (Some(a), Some(b)) = (&r.authority, &hd.authority) {
            fl.error(
                &f,
                format!("authority header cannot be set multiple times: have {a:?} (rewrite.authority), attempting to set {b:?} (headers.request)"),
            );
        }
        if let Some(UriRewrite::Prefix(p)) = &r.uri {
            let implicit = matches.is_empty()
                || matches
                    .iter()
                    .any(|m| matches!(m.uri, None | Some(StringMatch::Present)));
            if implicit && !p.ends_with('/') {
                fl.warn(
                    &format!("{f}.rewrite.uri"),
                    format!("replaces the prefix \"/\" of requests matched without a uri condition (Envoy prefix_rewrite): /a becomes {p}a"),
                );
            }
        }
    }
    let timeout = if forwards {
        route_timeout(&mut fl, &format!("{f}.timeout"), h.timeout)
    } else {
        None
    };
    let retries = if forwards {
        fl.retries(&format!("{f}.retries"), h.retries)
    } else {
        Some(RetryPolicy::disabled())
    };
    let fault = h.fault.and_then(|fy| fl.fault(&format!("{f}.fault"), fy));
    let cors = h
        .cors_policy
        .and_then(|c| fl.cors(&format!("{f}.corsPolicy"), c));
    let mut mirrors = Vec::new();
    let mut mirror_fields = Vec::new();
    let pct_set = h.mirror_percentage.is_some() || present(h.mirror_percent.clone()).is_some();
    if let (Some(m), true) = (h.mirror, forwards) {
        let mf = format!("{f}.mirror");
        let pct = if let Some(p) = h.mirror_percentage {
            fl.percentage(&format!("{f}.mirrorPercentage"), p, PercentRule::Range)
        } else if present(h.mirror_percent.clone()).is_some() {
            let pf = format!("{f}.mirrorPercent");
            fl.warn(&pf, "deprecated; use mirrorPercentage");
            fl.uint(&pf, h.mirror_percent, 100)
                .map(|n| Percent::from_int(n as u32))
        } else {
            Some(Percent::HUNDRED)
        };
        let dest = parse_destination(ctx, &mf, m, fl.diag);
        if let (Some((host, subset, port)), Some(percentage)) = (dest, pct) {
            if push_mirror(&mut fl, &mf, &mut mirrors, host, subset, port, percentage) {
                mirror_fields.push(mf);
            }
        }
    } else if pct_set && forwards {
        fl.warn(
            &format!("{f}.mirrorPercentage"),
            "has no effect without mirror; ignored",
        );
    }
    for (k, mp) in h.mirrors.unwrap_or_default().into_iter().enumerate() {
        if !forwards {
            break;
        }
        let mf = format!("{f}.mirrors[{k}]");
        fl.unsupported(&mf, &mp.extra, schema::HTTP_MIRROR_POLICY);
        let df = format!("{mf}.destination");
        let Some(d) = fl.diag.required(at, &df, mp.destination) else {
            continue;
        };
        let dest = parse_destination(ctx, &df, d, fl.diag);
        let pct = match mp.percentage {
            Some(p) => fl.percentage(&format!("{mf}.percentage"), p, PercentRule::Range),
            None => Some(Percent::HUNDRED),
        };
        if let (Some((host, subset, port)), Some(percentage)) = (dest, pct) {
            if push_mirror(&mut fl, &mf, &mut mirrors, host, subset, port, percentage) {
                mirror_fields.push(df);
            }
        }
    }
    let destinations = if routes.is_empty() {
        Vec::new()
    } else {
        parse_destinations(ctx, &f, routes, false, diag)?
    };
    if diag.errors.len() > errors_before {
        return None;
    }
    let route = HttpRoute {
        name: h.name.unwrap_or_else(|| format!("{}.{i}", ctx.name)),
        matches,
        destinations,
        action: action?,
        rewrite,
        headers: headers?,
        timeout,
        retries: retries?,
        fault,
        mirrors,
        cors,
    };
    Some((route, mirror_fields))
}

/// A mirror, unless its percentage is 0 (istiod builds no mirror policy
/// then). True when it was added.
fn push_mirror(
    fl: &mut Fields<'_, '_>,
    f: &str,
    mirrors: &mut Vec<Mirror>,
    host: String,
    subset: Option<String>,
    port: Option<u16>,
    percentage: Percent,
) -> bool {
    if percentage.is_zero() {
        fl.warn(f, "percentage 0: nothing is mirrored; ignored");
        return false;
    }
    mirrors.push(Mirror {
        host,
        subset,
        port,
        percentage,
    });
    true
}

/// `timeout`: ≥ 1ms at millisecond precision (the CRD and istiod), or `0s`,
/// accepted with a warning as "no timeout" (what Envoy makes of 0).
fn route_timeout(fl: &mut Fields<'_, '_>, f: &str, v: Scalar) -> Option<Duration> {
    let d = fl.duration(f, v.clone(), DurationRule::NonNegative)?;
    if d.is_zero() {
        fl.warn(
            f,
            "0s: no timeout (Envoy's reading of 0; Kubernetes rejects it: the CRD requires ≥ 1ms — leave timeout out instead)",
        );
        return None;
    }
    fl.duration(f, v, DurationRule::AtLeastMillis)
}

fn parse_tcp_route(ctx: &DocCtx<'_>, i: usize, t: TcpY, diag: &mut Diag) -> Option<TcpRoute> {
    let at = &ctx.at;
    let f = format!("spec.tcp[{i}]");
    diag.unsupported(at, &format!("{f}."), &t.extra, schema::TCP_ROUTE, &[]);
    let errors_before = diag.errors.len();
    let mut matches = Vec::new();
    for (k, m) in t.matches.unwrap_or_default().into_iter().enumerate() {
        let mf = format!("{f}.match[{k}]");
        diag.unsupported(
            at,
            &format!("{mf}."),
            &m.extra,
            schema::L4_MATCH_ATTRIBUTES,
            &[],
        );
        let port = m.port.and_then(|p| diag.port(at, &format!("{mf}.port"), p));
        let mut destination_subnets = Vec::new();
        for (j, s) in m.destination_subnets.unwrap_or_default().iter().enumerate() {
            match Cidr::parse(s.trim()) {
                Ok(c) => destination_subnets.push(c),
                Err(e) => diag.error(at, Some(&format!("{mf}.destinationSubnets[{j}]")), e),
            }
        }
        if !destination_subnets.is_empty() {
            diag.warn(
                at,
                Some(&format!("{mf}.destinationSubnets")),
                "istiod ignores destinationSubnets at waypoints; here they match the connection's original destination IP",
            );
        }
        let source_labels = m.source_labels.unwrap_or_default();
        let source_namespace = m.source_namespace.filter(|ns| !ns.is_empty());
        if !source_labels.is_empty() || source_namespace.is_some() {
            diag.warn(
                at,
                Some(&mf),
                "istiod never matches tcp blocks with sourceLabels or sourceNamespace at waypoints; \
                 here they match the source workload when the proxy knows it",
            );
        }
        let gateways = m.gateways.unwrap_or_default();
        if !gateways.is_empty() && !gateways.iter().any(|g| g == "mesh") {
            diag.warn(
                at,
                Some(&format!("{mf}.gateways")),
                format!(
                    "[{}] does not include mesh: this match block never applies to a waypoint",
                    gateways.join(", ")
                ),
            );
        }
        matches.push(TcpMatch {
            port,
            destination_subnets,
            source_labels,
            source_namespace,
            gateways,
        });
    }
    let routes = t.route.unwrap_or_default();
    if routes.is_empty() {
        diag.error(at, Some(&format!("{f}.route")), "TCP route is required");
        return None;
    }
    let destinations = parse_destinations(ctx, &f, routes, true, diag)?;
    if diag.errors.len() > errors_before {
        return None;
    }
    Some(TcpRoute {
        name: format!("{}.tcp.{i}", ctx.name),
        matches,
        destinations,
    })
}

/// Where a StringMatch sits: istiod allows an empty `prefix` only on `uri`,
/// and `regex: "*"` (present) only in `withoutHeaders`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Place {
    Uri,
    WithoutHeaders,
    Other,
}

fn parse_match(at: &DocRef, f: &str, m: MatchY, mesh: bool, diag: &mut Diag) -> RouteMatch {
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
pub(super) fn string_match(
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

/// Does this block match every request on every port?
fn is_catch_all(m: &RouteMatch) -> bool {
    let any_uri = match &m.uri {
        None | Some(StringMatch::Present) => true,
        Some(StringMatch::Prefix(p)) => p.is_empty() || p == "/",
        Some(StringMatch::Regex(r)) => r.as_str() == ".*",
        Some(_) => false,
    };
    any_uri
        && m.scheme.is_none()
        && m.method.is_none()
        && m.authority.is_none()
        && m.headers.is_empty()
        && m.without_headers.is_empty()
        && m.query_params.is_empty()
        && m.port.is_none()
        && m.source_labels.is_empty()
        && m.source_namespace.is_none()
        && m.gateways.is_empty()
}

/// Routes after one that matches everything are never used (istiod warns too:
/// `VirtualServiceUnreachableRule`).
fn warn_unreachable(at: &DocRef, http: &[HttpRoute], source_index: &[usize], diag: &mut Diag) {
    let Some(k) = http
        .iter()
        .position(|r| r.matches.is_empty() || r.matches.iter().any(is_catch_all))
    else {
        return;
    };
    for &i in &source_index[k + 1..] {
        diag.warn(
            at,
            Some(&format!("spec.http[{i}]")),
            format!(
                "route not used: spec.http[{}] before it matches every request",
                source_index[k]
            ),
        );
    }
}

/// A `Destination`: (expanded host, subset, port).
fn parse_destination(
    ctx: &DocCtx<'_>,
    df: &str,
    d: DestinationY,
    diag: &mut Diag,
) -> Option<(String, Option<String>, Option<u16>)> {
    let at = &ctx.at;
    diag.unsupported(at, &format!("{df}."), &d.extra, schema::DESTINATION, &[]);
    let host = diag.required(at, &format!("{df}.host"), d.host);
    if host.as_deref() == Some("*") {
        diag.error(
            at,
            Some(&format!("{df}.host")),
            "invalid destination host *",
        );
        return None;
    }
    let port = match d.port {
        None => Some(None),
        Some(p) => {
            diag.unsupported(
                at,
                &format!("{df}.port."),
                &p.extra,
                schema::PORT_SELECTOR,
                &[],
            );
            let n = diag.required(at, &format!("{df}.port.number"), p.number);
            n.and_then(|n| diag.port(at, &format!("{df}.port.number"), n))
                .map(Some)
        }
    };
    Some((expand_host(&host?, &ctx.namespace), d.subset, port?))
}

/// `route` of an http (`tcp == false`) or tcp route.
fn parse_destinations(
    ctx: &DocCtx<'_>,
    f: &str,
    routes: Vec<RouteY>,
    tcp: bool,
    diag: &mut Diag,
) -> Option<Vec<RouteDestination>> {
    let at = &ctx.at;
    let n = routes.len();
    let mut out = Vec::with_capacity(n);
    let mut ok = true;
    for (j, r) in routes.into_iter().enumerate() {
        let rf = format!("{f}.route[{j}]");
        let known = if tcp {
            schema::ROUTE_DESTINATION
        } else {
            schema::HTTP_ROUTE_DESTINATION
        };
        diag.unsupported(at, &format!("{rf}."), &r.extra, known, &[]);
        // istiod (validateHTTPRouteDestinations): weights are int32 >= 0; a
        // missing weight is 0; a lone destination gets all requests whatever
        // its weight (route.go gives it a plain cluster, no weighted clusters).
        let weight = match r.weight {
            Some(w) if !(0..=i64::from(i32::MAX)).contains(&w) => {
                diag.error(
                    at,
                    Some(&format!("{rf}.weight")),
                    format!("weight {w} out of range 0..{}", i32::MAX),
                );
                None
            }
            Some(w) if n == 1 && w != 100 => {
                diag.warn(
                    at,
                    Some(&format!("{rf}.weight")),
                    format!("weight {w} of the only destination has no effect; it receives all requests"),
                );
                Some(100)
            }
            _ if n == 1 => Some(100),
            None => Some(0),
            Some(w) => u32::try_from(w).ok(),
        };
        let headers = match r.headers {
            None => Some(Headers::default()),
            Some(_) if tcp => {
                diag.warn(
                    at,
                    Some(&format!("{rf}.headers")),
                    "is not supported on tcp routes; ignored",
                );
                Some(Headers::default())
            }
            Some(hy) => Fields { at, diag }.headers(&format!("{rf}.headers"), hy, false),
        };
        let Some(d) = diag.required(at, &format!("{rf}.destination"), r.destination) else {
            ok = false;
            continue;
        };
        let dest = parse_destination(ctx, &format!("{rf}.destination"), d, diag);
        match (dest, weight, headers) {
            (Some((host, subset, port)), Some(weight), Some(headers)) => {
                out.push(RouteDestination {
                    host,
                    subset,
                    port,
                    weight,
                    headers,
                })
            }
            _ => ok = false,
        }
    }
    if !ok {
        return None;
    }
    let total: u64 = out.iter().map(|d| u64::from(d.weight)).sum();
    if n > 1 && total == 0 {
        diag.error(
            at,
            Some(&format!("{f}.route")),
            "all weights are zero (total destination weight = 0)",
        );
        return None;
    }
    if n > 1 && total != 100 {
        diag.warn(
            at,
            Some(&format!("{f}.route")),
            format!("weights sum to {total}, not 100: each destination receives weight/{total} of the requests"),
        );
    }
    // Zero-weight destinations are dropped once their references are checked (assemble).
    Some(out)
}
