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
mod http;
use http::{parse_route, warn_unreachable};
mod tcp;
use tcp::parse_tcp_route;
mod matches;
use matches::parse_match;
pub(super) use matches::{string_match, Place};
mod destinations;
use destinations::{parse_destination, parse_destinations};

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
            http.push(std::sync::Arc::new(route));
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
