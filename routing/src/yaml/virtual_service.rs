//! `VirtualService` documents (HTTP routes only).

use super::diag::{Diag, Extra};
use super::{parse_spec, DocCtx};
use crate::error::DocRef;
use crate::hosts::expand_host;
use crate::model::{HttpRoute, RouteDestination, RouteMatch, StringMatch, VirtualService};
use serde::Deserialize;
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
struct Spec {
    hosts: Option<Vec<String>>,
    http: Option<Vec<HttpY>>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct HttpY {
    name: Option<String>,
    #[serde(rename = "match")]
    matches: Option<Vec<MatchY>>,
    route: Option<Vec<RouteY>>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct MatchY {
    name: Option<String>,
    uri: Option<StringMatchY>,
    headers: Option<BTreeMap<String, StringMatchY>>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct StringMatchY {
    exact: Option<String>,
    prefix: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct RouteY {
    destination: Option<DestinationY>,
    weight: Option<i64>,
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

/// A checked VirtualService; hosts are expanded but not yet resolved.
#[derive(Debug)]
pub(crate) struct VirtualServiceIr {
    pub at: DocRef,
    pub vs: VirtualService,
    /// For each kept route of `vs.http`: its index in the document's `http` list.
    pub source_index: Vec<usize>,
}

/// Fields whose presence turns a route without `route` into a (skipped) non-forwarding route.
const NON_FORWARDING: [&str; 3] = ["redirect", "directResponse", "delegate"];

pub(crate) fn parse(ctx: &DocCtx<'_>, diag: &mut Diag) -> Option<VirtualServiceIr> {
    let spec: Spec = parse_spec(ctx, diag)?;
    let at = &ctx.at;
    let errors_before = diag.errors.len();
    diag.unsupported(at, "spec.", &spec.extra, &[]);
    let hosts: Vec<String> = spec
        .hosts
        .unwrap_or_default()
        .iter()
        .map(|h| expand_host(h, &ctx.namespace))
        .collect();
    if hosts.is_empty() {
        diag.error(at, Some("spec.hosts"), "at least one host is required");
    }
    let mut http = Vec::new();
    let mut source_index = Vec::new();
    for (i, h) in spec.http.unwrap_or_default().into_iter().enumerate() {
        if let Some(route) = parse_route(ctx, i, h, diag) {
            http.push(route);
            source_index.push(i);
        }
    }
    if diag.errors.len() > errors_before {
        return None;
    }
    Some(VirtualServiceIr {
        at: at.clone(),
        vs: VirtualService {
            namespace: ctx.namespace.clone(),
            name: ctx.name.clone(),
            hosts,
            http,
        },
        source_index,
    })
}

fn parse_route(ctx: &DocCtx<'_>, i: usize, h: HttpY, diag: &mut Diag) -> Option<HttpRoute> {
    let at = &ctx.at;
    let f = format!("spec.http[{i}]");
    diag.unsupported(at, &format!("{f}."), &h.extra, &[]);
    let matches = h
        .matches
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(k, m)| parse_match(at, &format!("{f}.match[{k}]"), m, diag))
        .collect();
    let routes = h.route.unwrap_or_default();
    if routes.is_empty() {
        if let Some(kind) = NON_FORWARDING.iter().find(|k| h.extra.contains_key(**k)) {
            diag.warn(
                at,
                Some(&f),
                format!("route has no destinations ({kind} is not supported yet); route skipped"),
            );
        } else {
            diag.error(
                at,
                Some(&format!("{f}.route")),
                "at least one destination is required",
            );
        }
        return None;
    }
    let destinations = parse_destinations(ctx, &f, routes, diag)?;
    Some(HttpRoute {
        name: h.name.unwrap_or_else(|| format!("{}.{i}", ctx.name)),
        matches,
        destinations,
    })
}

fn parse_match(at: &DocRef, f: &str, m: MatchY, diag: &mut Diag) -> RouteMatch {
    diag.unsupported(at, &format!("{f}."), &m.extra, &[]);
    let uri = m
        .uri
        .and_then(|u| string_match(at, &format!("{f}.uri"), u, diag));
    let headers = m
        .headers
        .unwrap_or_default()
        .into_iter()
        .filter_map(|(name, sm)| {
            let cond = string_match(at, &format!("{f}.headers.{name}"), sm, diag)?;
            Some((name.to_ascii_lowercase(), cond))
        })
        .collect();
    RouteMatch {
        uri,
        headers,
        name: m.name,
    }
}

fn string_match(at: &DocRef, f: &str, s: StringMatchY, diag: &mut Diag) -> Option<StringMatch> {
    diag.unsupported(at, &format!("{f}."), &s.extra, &[]);
    match (s.exact, s.prefix) {
        (Some(_), Some(_)) => {
            diag.error(at, Some(f), "only one of exact or prefix may be set");
            None
        }
        (Some(e), None) => Some(StringMatch::Exact(e)),
        (None, Some(p)) => Some(StringMatch::Prefix(p)),
        (None, None) => {
            if s.extra.is_empty() {
                diag.error(at, Some(f), "one of exact or prefix is required");
            }
            None
        }
    }
}

fn parse_destinations(
    ctx: &DocCtx<'_>,
    f: &str,
    routes: Vec<RouteY>,
    diag: &mut Diag,
) -> Option<Vec<RouteDestination>> {
    let at = &ctx.at;
    let n = routes.len();
    let mut out = Vec::with_capacity(n);
    let mut ok = true;
    for (j, r) in routes.into_iter().enumerate() {
        let rf = format!("{f}.route[{j}]");
        diag.unsupported(at, &format!("{rf}."), &r.extra, &[]);
        let weight = match r.weight {
            None if n == 1 => Some(100),
            None => Some(0),
            Some(w) => u32::try_from(w).ok().or_else(|| {
                diag.error(
                    at,
                    Some(&format!("{rf}.weight")),
                    format!("weight {w} out of range"),
                );
                None
            }),
        };
        let Some(d) = diag.required(at, &format!("{rf}.destination"), r.destination) else {
            ok = false;
            continue;
        };
        let df = format!("{rf}.destination");
        diag.unsupported(at, &format!("{df}."), &d.extra, &[]);
        let host = diag.required(at, &format!("{df}.host"), d.host);
        let port = match d.port {
            None => Some(None),
            Some(p) => {
                diag.unsupported(at, &format!("{df}.port."), &p.extra, &[]);
                let n = diag.required(at, &format!("{df}.port.number"), p.number);
                n.and_then(|n| diag.port(at, &format!("{df}.port.number"), n))
                    .map(Some)
            }
        };
        match (host, port, weight) {
            (Some(host), Some(port), Some(weight)) => out.push(RouteDestination {
                host: expand_host(&host, &ctx.namespace),
                subset: d.subset,
                port,
                weight,
            }),
            _ => ok = false,
        }
    }
    if !ok {
        return None;
    }
    let total: u64 = out.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        diag.error(at, Some(&format!("{f}.route")), "all weights are zero");
        return None;
    }
    if n > 1 && total != 100 {
        diag.error(
            at,
            Some(&format!("{f}.route")),
            format!("weights sum to {total}, must sum to 100"),
        );
        return None;
    }
    Some(out)
}
