//! Files mode: each HTTP service port's routes as the `RouteConfiguration` istiod builds for a
//! waypoint chain, so that `istioctl proxy-config route` lists every VirtualService route.
//!
//! Shape followed: istio/istio 1.27 (1.27.9; 1.26 is the same):
//! - `pilot/pkg/networking/core/listener_waypoint.go` `buildWaypointInboundHTTPRouteConfig`:
//!   the configuration is named after the chain (`inbound-vip|<port>|http|<host>`) and has one
//!   virtual host `inbound|http|<port>` with domains `*`; its routes are those of the first
//!   VirtualService with `http` routes naming the service (`waypointInboundRoute`: one Envoy
//!   route per match block, blocks for another port or for gateways without `mesh` left out,
//!   nothing after a catch-all), else — no VirtualService, or none of its blocks for this port —
//!   a single route `default` to the port's cluster (`httproute.go`
//!   `buildSidecarInboundHTTPRouteConfig`, `route/route.go` `BuildDefaultHTTPInboundRoute`);
//! - `pilot/pkg/networking/core/route/route.go` `TranslateRoute`: route name `<name>` or
//!   `<name>.<match name>`, metadata `istio.config =
//!   /apis/networking.istio.io/v1/namespaces/<ns>/virtual-service/<name>` (what istioctl shows
//!   as the route's VirtualService), decorator, timeout (`0s` = none), retry policy
//!   (`route/retry/retry.go` `ConvertPolicy`), a lone destination as `cluster`, several as
//!   `weighted_clusters` (weight 0 left out), rewrites, header operations, mirrors, redirects
//!   and direct responses.
//!
//! Cluster names are the ones the `ClustersConfigDump` holds: the cluster this waypoint
//! resolves a destination to (`inbound-vip|<port>|<http|tcp>[/<subset>]|<host>`, the port the
//! request came in on when the destination names none). Unlike istiod's waypoint, a match
//! block with `sourceLabels` / `sourceNamespace` is kept (this waypoint evaluates them): Envoy
//! has no such condition, so the route shows them in its metadata under `waypoint` and is not
//! taken as a catch-all.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{
    data_source, header_value_option::HeaderAppendAction, DataSource, HeaderValue,
    HeaderValueOption, Metadata, RuntimeFractionalPercent,
};
use envoy_types::pb::envoy::config::route::v3::{
    redirect_action, retry_policy, route, route_action, weighted_cluster, Decorator,
    DirectResponseAction, RedirectAction, RetryPolicy, Route, RouteAction, RouteConfiguration,
    VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::retry::priority::previous_priorities::v3::PreviousPrioritiesConfig;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatchAndSubstitute, RegexMatcher};
use envoy_types::pb::envoy::r#type::v3::{fractional_percent, FractionalPercent};
use envoy_types::pb::google::protobuf::{self as pb, value::Kind, BoolValue, Struct, UInt32Value};
use routing::{
    HeaderOpKind, HeaderOps, Headers, HttpRoute, RedirectPath, RedirectPort, RouteDestination,
    Snapshot, UriRewrite, VirtualService,
};

use super::any;
use super::listeners::{destination_cluster, route_cluster, PortChains};
use super::route_match::{is_catch_all, operation_path, route_match};

/// The route configuration of every HTTP chain of `ports`.
pub(super) fn route_configs(
    snapshot: &Snapshot,
    ports: &[PortChains<'_>],
) -> Vec<RouteConfiguration> {
    ports
        .iter()
        .filter_map(|p| {
            let name = p.http.as_ref()?;
            // The first VirtualService with `http` routes naming the service
            // (`routing::SnapshotBuilder`, as istiod's `buildWaypointInboundHTTPRouteConfig`).
            let routes = p
                .virtual_services
                .iter()
                .find(|vs| !vs.http.is_empty())
                .map(|vs| vs_routes(snapshot, vs, p.port.number))
                .filter(|r| !r.is_empty())
                .unwrap_or_else(|| vec![default_route(snapshot, p)]);
            Some(RouteConfiguration {
                name: name.clone(),
                virtual_hosts: vec![VirtualHost {
                    name: format!("inbound|http|{}", p.port.number),
                    domains: vec!["*".into()],
                    routes,
                    ..Default::default()
                }],
                validate_clusters: Some(BoolValue { value: false }),
                ..Default::default()
            })
        })
        .collect()
}

/// istiod's `waypointInboundRoute` for service port `port`.
fn vs_routes(snapshot: &Snapshot, vs: &VirtualService, port: u16) -> Vec<Route> {
    let mut out = Vec::new();
    for r in &vs.http {
        if r.matches.is_empty() {
            out.push(route(snapshot, vs, r, None, port));
            break;
        }
        let mut catch_all = false;
        for block in r.matches.iter().filter(|m| m.applies_to_port(port)) {
            let translated = route(snapshot, vs, r, Some(block), port);
            catch_all = !has_source(block) && translated.r#match.as_ref().is_some_and(is_catch_all);
            out.push(translated);
            if catch_all {
                break;
            }
        }
        if catch_all {
            break;
        }
    }
    out
}

/// Does this waypoint check the block's source (istiod: only without `gateways`)?
fn has_source(m: &routing::RouteMatch) -> bool {
    m.gateways.is_empty() && (!m.source_labels.is_empty() || m.source_namespace.is_some())
}

fn duration(d: Duration) -> pb::Duration {
    pb::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn string_value(s: &str) -> pb::Value {
    pb::Value {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

/// `AddConfigInfoMetadata` of the VirtualService, plus the block's source conditions.
fn metadata(vs: &VirtualService, block: Option<&routing::RouteMatch>) -> Metadata {
    let config = format!(
        "/apis/networking.istio.io/v1/namespaces/{}/virtual-service/{}",
        vs.namespace, vs.name
    );
    let mut filter_metadata = std::collections::HashMap::new();
    filter_metadata.insert(
        "istio".to_string(),
        Struct {
            fields: [("config".to_string(), string_value(&config))].into(),
        },
    );
    if let Some(m) = block.filter(|m| has_source(m)) {
        let mut fields = std::collections::HashMap::new();
        if !m.source_labels.is_empty() {
            let labels = m
                .source_labels
                .iter()
                .map(|(k, v)| (k.clone(), string_value(v)))
                .collect();
            fields.insert(
                "source_labels".to_string(),
                pb::Value {
                    kind: Some(Kind::StructValue(Struct { fields: labels })),
                },
            );
        }
        if let Some(ns) = &m.source_namespace {
            fields.insert("source_namespace".to_string(), string_value(ns));
        }
        filter_metadata.insert("waypoint".to_string(), Struct { fields });
    }
    Metadata {
        filter_metadata,
        ..Default::default()
    }
}

/// Envoy's header operations: `(to add, to remove)` (`translateAppendHeaders`: `set`
/// overwrites, `add` appends).
fn header_ops(ops: &HeaderOps) -> (Vec<HeaderValueOption>, Vec<String>) {
    let mut add = Vec::new();
    let mut remove = Vec::new();
    for op in &ops.ops {
        let action = match op.kind {
            HeaderOpKind::Remove => {
                remove.push(op.name.clone());
                continue;
            }
            HeaderOpKind::Set => HeaderAppendAction::OverwriteIfExistsOrAdd,
            HeaderOpKind::Add => HeaderAppendAction::AppendIfExistsOrAdd,
        };
        add.push(HeaderValueOption {
            header: Some(HeaderValue {
                key: op.name.clone(),
                value: op.value.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        });
    }
    (add, remove)
}

/// The route's (and a lone destination's) header operations on `out`.
fn route_headers(out: &mut Route, headers: &Headers) {
    let (add, remove) = header_ops(&headers.request);
    out.request_headers_to_add.extend(add);
    out.request_headers_to_remove.extend(remove);
    let (add, remove) = header_ops(&headers.response);
    out.response_headers_to_add.extend(add);
    out.response_headers_to_remove.extend(remove);
}

/// `TranslateRoute` of one block (`None`: a route without match blocks).
fn route(
    snapshot: &Snapshot,
    vs: &VirtualService,
    r: &HttpRoute,
    block: Option<&routing::RouteMatch>,
    port: u16,
) -> Route {
    let name = match block.and_then(|m| m.name.as_deref()) {
        Some(n) if !n.is_empty() => format!("{}.{n}", r.name),
        _ => r.name.clone(),
    };
    let mut out = Route {
        name,
        r#match: Some(route_match(block)),
        metadata: Some(metadata(vs, block)),
        ..Default::default()
    };
    route_headers(&mut out, &r.headers);
    out.action = Some(match &r.action {
        routing::RouteAction::Redirect(redirect) => {
            route::Action::Redirect(redirect_action_of(redirect, port))
        }
        routing::RouteAction::DirectResponse(d) => {
            route::Action::DirectResponse(DirectResponseAction {
                status: u32::from(d.status),
                body: d.body.as_ref().map(|b| DataSource {
                    specifier: Some(match std::str::from_utf8(b) {
                        Ok(s) => data_source::Specifier::InlineString(s.to_string()),
                        Err(_) => data_source::Specifier::InlineBytes(b.clone()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
        }
        routing::RouteAction::Route => route::Action::Route(forward(snapshot, r, port, &mut out)),
    });
    let path = out.r#match.as_ref().map(operation_path).unwrap_or_default();
    let single = match &out.action {
        Some(route::Action::Route(a)) => match &a.cluster_specifier {
            Some(route_action::ClusterSpecifier::Cluster(c)) => {
                routing::xds::ClusterName::parse(c).map(|n| format!("{}:{}", n.host(), n.port))
            }
            _ => None,
        },
        _ => None,
    };
    out.decorator = Some(Decorator {
        operation: match single {
            Some(host_port) => format!("{host_port}{path}"),
            None => format!("{}:{port}{path}", vs.name),
        },
        ..Default::default()
    });
    out
}

/// The `RouteAction` of a forwarding route (`applyHTTPRouteDestination`); a lone
/// destination's header operations go on `out`.
fn forward(snapshot: &Snapshot, r: &HttpRoute, port: u16, out: &mut Route) -> RouteAction {
    let cluster = |d: &RouteDestination| route_cluster(snapshot, d, port);
    let mut action = RouteAction {
        timeout: Some(duration(r.timeout.unwrap_or_default())),
        retry_policy: retry_policy(&r.retries),
        ..Default::default()
    };
    // The route's authority rewrite wins over a destination's (`TranslateRoute`).
    let mut authority = r
        .rewrite
        .as_ref()
        .and_then(|w| w.authority.clone())
        .or_else(|| r.headers.authority.clone());
    if let Some(rw) = &r.rewrite {
        match &rw.uri {
            Some(UriRewrite::Prefix(p)) => action.prefix_rewrite = p.clone(),
            Some(UriRewrite::Regex(re)) => {
                action.regex_rewrite = Some(RegexMatchAndSubstitute {
                    pattern: Some(RegexMatcher {
                        regex: re.pattern().to_string(),
                        ..Default::default()
                    }),
                    substitution: re.substitution().to_string(),
                });
            }
            None => {}
        }
    }
    match r.destinations.as_slice() {
        [] => {}
        [one] => {
            action.cluster_specifier = Some(route_action::ClusterSpecifier::Cluster(cluster(one)));
            route_headers(out, &one.headers);
            authority = authority.or_else(|| one.headers.authority.clone());
        }
        many => {
            let clusters = many
                .iter()
                .filter(|d| d.weight > 0)
                .map(|d| {
                    let (request_add, request_remove) = header_ops(&d.headers.request);
                    let (response_add, response_remove) = header_ops(&d.headers.response);
                    weighted_cluster::ClusterWeight {
                        name: cluster(d),
                        weight: Some(UInt32Value { value: d.weight }),
                        request_headers_to_add: request_add,
                        request_headers_to_remove: request_remove,
                        response_headers_to_add: response_add,
                        response_headers_to_remove: response_remove,
                        host_rewrite_specifier: d.headers.authority.clone().map(
                            weighted_cluster::cluster_weight::HostRewriteSpecifier::HostRewriteLiteral,
                        ),
                        ..Default::default()
                    }
                })
                .collect();
            action.cluster_specifier = Some(route_action::ClusterSpecifier::WeightedClusters(
                WeightedCluster {
                    clusters,
                    ..Default::default()
                },
            ));
        }
    }
    action.host_rewrite_specifier =
        authority.map(route_action::HostRewriteSpecifier::HostRewriteLiteral);
    action.request_mirror_policies = r
        .mirrors
        .iter()
        .map(|m| route_action::RequestMirrorPolicy {
            cluster: destination_cluster(
                snapshot,
                &m.host,
                m.port.unwrap_or(port),
                m.subset.as_deref(),
            ),
            runtime_fraction: Some(RuntimeFractionalPercent {
                default_value: Some(FractionalPercent {
                    numerator: m.percentage.per_million(),
                    denominator: fractional_percent::DenominatorType::Million as i32,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    action
}

/// `retry.ConvertPolicy`: `None` when retries are off.
fn retry_policy(p: &routing::RetryPolicy) -> Option<RetryPolicy> {
    if !p.is_enabled() {
        return None;
    }
    let retry_on: Vec<&str> = p.retry_on.iter().map(|c| c.as_str()).collect();
    Some(RetryPolicy {
        retry_on: retry_on.join(","),
        num_retries: Some(UInt32Value { value: p.attempts }),
        per_try_timeout: p.per_try_timeout.map(duration),
        retriable_status_codes: p.retriable_status_codes.iter().map(|&c| c.into()).collect(),
        host_selection_retry_max_attempts: i64::from(p.host_selection_retry_max_attempts),
        retry_host_predicate: if p.retry_ignore_previous_hosts {
            vec![retry_policy::RetryHostPredicate {
                name: "envoy.retry_host_predicates.previous_hosts".into(),
                config_type: Some(retry_policy::retry_host_predicate::ConfigType::TypedConfig(
                    any(&PreviousHostsPredicate::default()),
                )),
            }]
        } else {
            Vec::new()
        },
        retry_priority: p
            .retry_remote_localities
            .then(|| retry_policy::RetryPriority {
                name: "envoy.retry_priorities.previous_priorities".into(),
                config_type: Some(retry_policy::retry_priority::ConfigType::TypedConfig(any(
                    &PreviousPrioritiesConfig {
                        update_frequency: 2,
                    },
                ))),
            }),
        retry_back_off: p.backoff.map(|b| retry_policy::RetryBackOff {
            base_interval: Some(duration(b)),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// `ApplyRedirect` (`FROM_REQUEST_PORT` is the service port the routes are built for; no
/// explicit `:80` for http).
fn redirect_action_of(r: &routing::Redirect, port: u16) -> RedirectAction {
    use redirect_action::{PathRewriteSpecifier as Path, RedirectResponseCode as Code};
    let path = r.path.as_ref().map(|p| match p {
        RedirectPath::Uri(u) => Path::PathRedirect(u.clone()),
        RedirectPath::Prefix(p) => Path::PrefixRewrite(p.clone()),
        RedirectPath::Regex(re) => Path::RegexRewrite(RegexMatchAndSubstitute {
            pattern: Some(RegexMatcher {
                regex: re.pattern().to_string(),
                ..Default::default()
            }),
            substitution: re.substitution().to_string(),
        }),
    });
    let mut port_redirect = match r.port {
        Some(RedirectPort::Port(p)) => u32::from(p),
        Some(RedirectPort::FromRequestPort) => u32::from(port),
        _ => 0,
    };
    let scheme = r.scheme.as_deref().unwrap_or("http");
    if (port_redirect == 80 && scheme == "http") || (port_redirect == 443 && scheme == "https") {
        port_redirect = 0;
    }
    let code = match r.code {
        302 => Code::Found,
        303 => Code::SeeOther,
        307 => Code::TemporaryRedirect,
        308 => Code::PermanentRedirect,
        _ => Code::MovedPermanently,
    };
    RedirectAction {
        host_redirect: r.authority.clone().unwrap_or_default(),
        port_redirect,
        response_code: code as i32,
        scheme_rewrite_specifier: r
            .scheme
            .clone()
            .map(redirect_action::SchemeRewriteSpecifier::SchemeRedirect),
        path_rewrite_specifier: path,
        ..Default::default()
    }
}

/// `BuildDefaultHTTPInboundRoute`: `default`, everything to the port's own cluster, no timeout,
/// with the retry policy this waypoint applies to the port's default route.
fn default_route(snapshot: &Snapshot, p: &PortChains<'_>) -> Route {
    let port = p.port.number;
    let zero = Some(duration(Duration::ZERO));
    Route {
        name: "default".into(),
        r#match: Some(route_match(None)),
        decorator: Some(Decorator {
            operation: format!("{}:{port}/*", p.service.hostname),
            ..Default::default()
        }),
        action: Some(route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                destination_cluster(snapshot, &p.service.hostname, port, None),
            )),
            timeout: zero,
            max_stream_duration: Some(route_action::MaxStreamDuration {
                max_stream_duration: zero,
                grpc_timeout_header_max: zero,
                ..Default::default()
            }),
            retry_policy: retry_policy(&p.port.default_retry_policy()),
            ..Default::default()
        })),
        ..Default::default()
    }
}
