//! `request_filter`: the request's service, route and cluster, with its policies on the way.

use super::request::{authority, HeaderView};
use super::{RequestCtx, Waypoint, ISTIO_DEFAULT_RETRIES};
use crate::dataplane::upstream::{ClusterKey, PodTarget};
use crate::telemetry::splits::SplitAudit;
use pingora_error::{Error, ErrorType, Result};
use pingora_proxy::Session;
use routing::{Destination, Protocol, RequestView, RouteDecision};
use std::sync::Arc;
use tracing::{debug, warn};

impl Waypoint {
    pub(super) async fn route_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let req = session.req_header_mut();
        ctx.request_id = match req
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
        {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => {
                let id = super::request_id::new_request_id();
                req.insert_header("x-request-id", &id)?;
                id
            }
        };
        let Some(tunnel) = ctx.tunnel.clone() else {
            return Err(Error::explain(
                ErrorType::InternalError,
                "request without tunnel metadata",
            ));
        };
        // The overload manager (overload.rs), before any routing or policy: shedding only denies.
        let overload = &self.telemetry.overload;
        if overload.keepalive_disabled() {
            session.set_keepalive(None);
        }
        if overload.reject_request() {
            let text = [("content-type".to_string(), "text/plain".to_string())];
            let body = Some(bytes::Bytes::from_static(b"waypoint overloaded"));
            return self
                .local_reply(session, ctx, 503, &text, body, "OM", "overload")
                .await;
        }
        // Envoy's connection manager: no Host (HTTP/1) / `:authority` (h2) is 400
        // `missing_host_header`, before any routing or policy.
        if authority(session.req_header()).is_none_or(str::is_empty) {
            debug!(dst = %tunnel.original_dst, "request without Host");
            return self
                .reply(session, ctx, 400, "", "missing_host_header")
                .await;
        }
        super::sanitize::request_headers(session.req_header_mut());
        let snapshot = ctx.snapshot.clone();
        let (service, port) = match snapshot.resolve_destination(tunnel.original_dst) {
            Some(Destination::Service { service, port }) => {
                // The service's own connection manager setting (xDS), else the process-wide one.
                let policy = port.path.unwrap_or_else(|| self.path_normalization.into());
                if let Some(replied) = self.normalize_path(session, ctx, &policy).await? {
                    return Ok(replied);
                }
                (service, port)
            }
            Some(Destination::Pod {
                endpoint,
                port,
                services,
                bound,
            }) => {
                // istiod's `direct-http` chain serves pod-addressed requests, whatever their Host.
                let policy = snapshot
                    .pod_path()
                    .unwrap_or_else(|| self.path_normalization.into());
                if let Some(replied) = self.normalize_path(session, ctx, &policy).await? {
                    return Ok(replied);
                }
                // Pod-addressed: istiod's `direct-http` chain forwards to the pod the client
                // addressed, whatever the Host, under the waypoint-wide policies; a service's
                // VirtualService never re-routes it.
                ctx.service = services
                    .first()
                    .map(|s| (s.hostname.clone(), s.namespace.clone()));
                ctx.outcome.endpoint = Some(Arc::new(endpoint.clone()));
                let pod = PodTarget::new(&ctx.snapshot, endpoint, port)
                    .map_err(|e| Error::explain(ErrorType::InternalError, e.to_string()))?;
                ctx.outcome.cluster = pod.cluster_name();
                ctx.direct = Some(pod);
                ctx.protocol = match bound {
                    // The upstream speaks what the client spoke.
                    Some(_) => Protocol::Unknown,
                    None => services
                        .iter()
                        .find_map(|s| s.ports.iter().find(|p| p.target_port == port))
                        .map_or(Protocol::Unknown, |p| p.protocol),
                };
                return self.authorize(session, ctx, &tunnel, None).await;
            }
            None => {
                warn!(dst = %tunnel.original_dst, "destination left the configuration while its tunnel was open");
                return self
                    .reply(session, ctx, 404, "NR", "destination_not_served")
                    .await;
            }
        };
        ctx.protocol = port.protocol;
        ctx.service = Some((service.hostname.clone(), service.namespace.clone()));
        if self
            .authorize(session, ctx, &tunnel, Some(&service.hostname))
            .await?
        {
            return Ok(true);
        }
        let view = HeaderView {
            req: session.req_header(),
            port: port.number,
            source_namespace: Some(tunnel.source_identity.namespace.as_str()),
            source_labels: tunnel.source_workload(&snapshot).map(|e| &*e.labels),
        };
        let (decision, matched) = snapshot.route_with_match(service, port.number, &view);
        match decision {
            RouteDecision::Route { route, .. } => {
                ctx.route_name = route.name.clone();
                // Everything the actions need from the request, computed before replying.
                let path = view.path().to_string();
                let origin = view.header("origin").map(String::from);
                let preflight = route.cors.as_ref().and_then(|c| c.preflight_request(&view));
                let fault = route
                    .fault
                    .as_ref()
                    .map(|f| f.decide(&mut rand::thread_rng()));
                let redirect = match &route.action {
                    routing::RouteAction::Redirect(r) => Some(r.location(
                        view.scheme(),
                        view.authority().unwrap_or(""),
                        &path,
                        port.number,
                        matched.and_then(|m| match &m.uri {
                            Some(routing::StringMatch::Prefix(p)) => Some(p.as_str()),
                            _ => None,
                        }),
                    )),
                    _ => None,
                };
                ctx.rewrite_path = route.rewritten_path(matched, &path);
                ctx.route = Some(route.clone());
                if let Some(cors) = &route.cors {
                    ctx.extra_response_headers = cors.response_headers(origin.as_deref());
                }
                if let Some(headers) = preflight {
                    return self
                        .local_reply(session, ctx, 200, &headers, None, "", "cors_preflight")
                        .await;
                }
                if let Some(fault) = fault {
                    if let Some(delay) = fault.delay {
                        ctx.outcome.flags.add("DI");
                        tokio::time::sleep(delay).await;
                    }
                    match fault.abort {
                        Some(routing::Abort::Http(code)) => {
                            return self
                                .reply(session, ctx, code, "FI", "fault_filter_abort")
                                .await;
                        }
                        Some(routing::Abort::Grpc { code, .. }) => {
                            let headers = [
                                ("content-type".to_string(), "application/grpc".to_string()),
                                ("grpc-status".to_string(), code.to_string()),
                            ];
                            return self
                                .local_reply(
                                    session,
                                    ctx,
                                    200,
                                    &headers,
                                    None,
                                    "FI",
                                    "fault_filter_abort",
                                )
                                .await;
                        }
                        None => {}
                    }
                }
                match &route.action {
                    routing::RouteAction::Redirect(_) => {
                        let (code, location) = redirect.expect("computed for redirects");
                        let headers = [("location".to_string(), location)];
                        return self
                            .local_reply(session, ctx, code, &headers, None, "", "redirect")
                            .await;
                    }
                    routing::RouteAction::DirectResponse(d) => {
                        let body = d.body.clone().map(bytes::Bytes::from);
                        return self
                            .local_reply(session, ctx, d.status, &[], body, "", "direct_response")
                            .await;
                    }
                    routing::RouteAction::Route => {}
                }
                let Some(dest) =
                    routing::pick_weighted(&route.destinations, &mut rand::thread_rng())
                else {
                    return self
                        .reply(session, ctx, 503, "NR", "route_has_no_destination")
                        .await;
                };
                if SplitAudit::audits(&route.destinations) {
                    ctx.split = self.telemetry.splits.record(
                        &service.hostname,
                        &route.name,
                        &route.destinations,
                        dest,
                    );
                }
                ctx.destination = route
                    .destinations
                    .iter()
                    .position(|d| std::ptr::eq(d, dest));
                ctx.cluster = Some(ClusterKey {
                    host: dest.host.clone(),
                    port: dest.port.unwrap_or(port.number),
                    subset: dest.subset.clone(),
                });
                self.mirror(session, ctx, route, port.number);
            }
            RouteDecision::Default => {
                ctx.route_name = "default".into();
                // The default route's retry policy as the configuration states it (xDS: what
                // istiod wrote on the route), else Istio's default.
                ctx.default_retries = Some(
                    port.default_retries
                        .clone()
                        .unwrap_or_else(|| ISTIO_DEFAULT_RETRIES.clone()),
                );
                ctx.cluster = Some(ClusterKey {
                    host: service.hostname.clone(),
                    port: port.number,
                    subset: None,
                });
            }
            RouteDecision::NoRoute => {
                return self.reply(session, ctx, 404, "NR", "route_not_found").await;
            }
        }
        self.admit(session, ctx, &tunnel).await
    }
}
