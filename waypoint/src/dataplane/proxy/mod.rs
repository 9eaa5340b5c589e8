//! The L7 core: pingora `ProxyHttp` hooks that route each request of a tunnel and send it over
//! HBONE to the chosen endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use routing::{Destination, Endpoint, Protocol, RequestView, RouteDecision, Snapshot};
use tracing::{debug, warn};

use crate::control::identity::PeerCheck;
use crate::dataplane::tunnel::TunnelInfo;
use crate::telemetry::access_log::{AccessLog, Field, Line};
use crate::telemetry::splits::SplitAudit;
use crate::telemetry::status::Telemetry;
use crate::transport::hbone::pool::TUNNEL_IDLE_TIMEOUT;
use crate::transport::hbone::{Lease, TunnelConnector, TunnelPolicy, TunnelPool};

mod authz;
pub mod ext_authz;
mod http1;
pub(crate) mod jwt;
mod policy;
mod request;
mod request_id;
pub mod sanitize;

pub use authz::{AuthzNote, HttpAuthz, TcpAuthz, DENIED_BODY};
pub use jwt::JwksCache;

use request::{
    authority, capture, header_str, retry_failure, status_error, HeaderView, RequestSink,
    ResponseSink,
};

/// Connect attempts after the first for TCP connections (HTTP requests follow their route's
/// retry policy, [`RequestCtx::retry_policy`]).
pub const DEFAULT_RETRY_ATTEMPTS: usize = 2;

/// The retry policy of a default route the front-end did not describe (files mode).
static ISTIO_DEFAULT_RETRIES: std::sync::LazyLock<Arc<routing::RetryPolicy>> =
    std::sync::LazyLock::new(|| Arc::new(routing::RetryPolicy::istio_default()));

pub struct Waypoint {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub pool: Arc<TunnelPool>,
    pub access_log: Arc<AccessLog>,
    pub telemetry: Telemetry,
    pub path_normalization: routing::path::PathNormalization,
    /// Keys of RequestAuthentication providers (fetched jwksUri cached across requests).
    pub jwks: Arc<JwksCache>,
    /// meshConfig extensionProviders that CUSTOM policies name.
    pub authorizers: Arc<std::collections::HashMap<String, ext_authz::Provider>>,
    /// The SIGTERM drain: at its cut, requests in flight are answered 503 `LR` or reset.
    pub drain: Arc<crate::dataplane::drain::Drain>,
}

/// Which cluster a request goes to.
#[derive(Debug, Clone)]
struct ClusterKey {
    host: String,
    port: u16,
    subset: Option<String>,
}

/// Envoy response flags, in Envoy's order of reporting.
#[derive(Debug, Default, Clone)]
pub struct Flags(Vec<&'static str>);

impl Flags {
    pub fn add(&mut self, flag: &'static str) {
        if !self.0.contains(&flag) {
            self.0.push(flag);
        }
    }

    pub fn render(&self) -> String {
        self.0.join(",")
    }

    pub fn has(&self, flag: &str) -> bool {
        self.0.contains(&flag)
    }
}

pub struct RequestCtx {
    snapshot: Arc<Snapshot>,
    tunnel: Option<Arc<TunnelInfo>>,
    started: Instant,
    start_time: SystemTime,
    request_id: String,
    route_name: String,
    cluster: Option<ClusterKey>,
    cluster_name: String,
    /// Endpoint to use directly (pod-addressed traffic outside any routed service).
    direct: Option<(SocketAddr, PeerCheck)>,
    protocol: Protocol,
    /// (hostname, namespace) of the service the request addressed.
    service: Option<(String, String)>,
    /// The endpoint the request was last sent to.
    endpoint: Option<Arc<Endpoint>>,
    grpc_status: Option<String>,
    /// The matched VirtualService route (its timeout, retries, header operations, CORS).
    route: Option<Arc<routing::HttpRoute>>,
    /// The retry policy of the port's default route, when the request took it.
    default_retries: Option<Arc<routing::RetryPolicy>>,
    /// The weighted destination picked (for its header operations).
    destination: Option<routing::RouteDestination>,
    /// `rewrite.uri` applied to the request's path.
    rewrite_path: Option<String>,
    /// Headers added to the response (CORS).
    extra_response_headers: Vec<(String, String)>,
    /// Consistent-hash key of this request, when its cluster hashes.
    hash: Option<u64>,
    /// `set-cookie` value for a consistent-hash cookie the client did not send.
    set_cookie: Option<String>,
    /// The request's slot in its cluster's connection pool (`http2MaxRequests`).
    _request_slot: Option<routing::PoolGuard>,
    /// Retry slots (`maxRetries`), held until the request ends.
    retry_slots: Vec<routing::PoolGuard>,
    tried: Vec<SocketAddr>,
    upstream: Option<SocketAddr>,
    upstream_h2: bool,
    upstream_started: Option<Instant>,
    upstream_time: Option<Duration>,
    lease: Option<Arc<Lease>>,
    /// Copies of the request body on their way to mirrors.
    mirror_taps: Vec<crate::dataplane::mirror::BodyTap>,
    /// The upstream answered 101: its tunnel carries the upgraded protocol and is never reused.
    upgraded: bool,
    failure: Arc<Mutex<Option<String>>>,
    flags: Flags,
    details: std::borrow::Cow<'static, str>,
    /// The authorization decision, for the access log.
    authz: AuthzNote,
    _active: Option<routing::ActiveGuard>,
    /// The tunnel's HTTP/1.1 request-header deadline, restarted when this exchange ends.
    header_clock: Option<Arc<crate::transport::header_deadline::HeaderClock>>,
}

impl RequestCtx {
    /// The retry policy of the request's route as configured: the matched route's, or its
    /// port's default route's. `None` for pod-addressed requests outside any routed service.
    fn retry_policy(&self) -> Option<&routing::RetryPolicy> {
        match (&self.route, &self.default_retries) {
            (Some(route), _) => Some(&route.retries),
            (None, Some(p)) => Some(p),
            (None, None) => None,
        }
    }
}

#[async_trait]
impl ProxyHttp for Waypoint {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            snapshot: self.snapshot.load_full(),
            tunnel: None,
            started: Instant::now(),
            start_time: SystemTime::now(),
            request_id: String::new(),
            route_name: String::new(),
            cluster: None,
            cluster_name: String::new(),
            direct: None,
            protocol: Protocol::Unknown,
            service: None,
            endpoint: None,
            grpc_status: None,
            route: None,
            default_retries: None,
            destination: None,
            rewrite_path: None,
            extra_response_headers: Vec::new(),
            hash: None,
            set_cookie: None,
            _request_slot: None,
            retry_slots: Vec::new(),
            tried: Vec::new(),
            upstream: None,
            upstream_h2: false,
            upstream_started: None,
            upstream_time: None,
            lease: None,
            mirror_taps: Vec::new(),
            upgraded: false,
            failure: Arc::new(Mutex::new(None)),
            flags: Flags::default(),
            details: "".into(),
            authz: AuthzNote::default(),
            _active: None,
            header_clock: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // HTTP/1.1 pipelining (RFC 9112 §9.3.2): bytes read past this request are kept for the
        // next one, answered after this response (pingora's opt-in, see docs/architecture.md;
        // without it they are dropped with the connection).
        session.set_pipelining_enabled(true);
        if let Some(data) = crate::dataplane::tunnel::TunnelData::from_digest(session.digest()) {
            ctx.tunnel = Some(data.info.clone());
            // The request's headers are in: the tunnel's header deadline stops.
            if let Some(clock) = &data.header_clock {
                clock.headers_done();
                ctx.header_clock = Some(clock.clone());
            }
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let req = session.req_header_mut();
        ctx.request_id = match req
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
        {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => {
                let id = request_id::new_request_id();
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
        sanitize::request_headers(session.req_header_mut());
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
                ctx.endpoint = Some(Arc::new(endpoint.clone()));
                let identity = PeerCheck::for_endpoint(&ctx.snapshot, endpoint)
                    .map_err(|e| Error::explain(ErrorType::InternalError, e))?;
                let target = SocketAddr::new(endpoint.address, port);
                ctx.direct = Some((target, identity));
                ctx.cluster_name = format!("inbound-pod|{port}||{}", endpoint.address);
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
            source_labels: tunnel.source_workload(&snapshot).map(|e| &e.labels),
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
                        ctx.flags.add("DI");
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
                    self.telemetry.splits.record(
                        &service.hostname,
                        &route.name,
                        &route.destinations,
                        dest,
                    );
                }
                ctx.destination = Some(dest.clone());
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

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let mut policy = TunnelPolicy::default();
        // A workload outside the mesh: dialled directly, with the cluster's DestinationRule TLS.
        let mut direct_tls: Option<Option<routing::UpstreamTls>> = None;
        // A sidecar endpoint: Istio mutual TLS (peer check, SNI).
        let mut istio_mtls: Option<(PeerCheck, String)> = None;
        let (target, identity) = if let Some(direct) = ctx.direct.clone() {
            if ctx.tried.contains(&direct.0) {
                ctx.flags.add("URX");
                return Err(status_error(503, "pod endpoint failed"));
            }
            direct
        } else {
            let key = ctx
                .cluster
                .clone()
                .ok_or_else(|| status_error(500, "no cluster chosen"))?;
            let snapshot = ctx.snapshot.clone();
            let Some(cluster) = snapshot.cluster(&key.host, key.port, key.subset.as_deref()) else {
                ctx.flags.add("NC");
                ctx.details = "cluster_not_found".into();
                return Err(status_error(503, "no cluster for route destination"));
            };
            ctx.cluster_name = cluster.name.clone();
            policy = TunnelPolicy::for_cluster(cluster);
            if !ctx.tried.is_empty() {
                // A retry: it needs a slot in the cluster's retry budget (maxRetries).
                match cluster.try_acquire(routing::PoolResource::Retry) {
                    Ok(slot) => ctx.retry_slots.push(slot),
                    Err(overflow) => {
                        debug!(cluster = %cluster.name, %overflow, "retry budget exhausted");
                        ctx.flags.add("URX");
                        return Err(status_error(503, "retry budget exhausted"));
                    }
                }
                // Envoy's fully jittered exponential backoff before each retry (25 ms base, or
                // the route's `retry_back_off`).
                if let Some(p) = ctx.retry_policy() {
                    let delay = p.backoff_delay(ctx.tried.len() as u32, &mut rand::thread_rng());
                    tokio::time::sleep(delay).await;
                }
            }
            // PASSTHROUGH: the endpoint the client addressed, when it addressed a pod of this
            // cluster (a service VIP has no single endpoint: fall back to the cluster's pick).
            let passthrough = cluster.passthrough().then(|| {
                let dst = ctx.tunnel.as_ref()?.original_dst;
                cluster
                    .endpoints
                    .iter()
                    .find(|e| e.target.ip() == dst.ip() && !ctx.tried.contains(&e.target))
            });
            // A retry avoids the endpoints tried while others are left (previous_hosts), else
            // goes back to one of them, as Envoy does.
            let avoid_tried = ctx
                .retry_policy()
                .is_none_or(routing::RetryPolicy::avoids_tried_endpoints);
            let picked = match passthrough.flatten() {
                Some(ep) => Some(ep),
                None => cluster.pick_attempt(ctx.hash, &ctx.tried, avoid_tried),
            };
            let Some(ep) = picked else {
                if ctx.tried.is_empty() {
                    ctx.flags.add("UH");
                    ctx.details = "no_healthy_upstream".into();
                } else {
                    ctx.flags.add("URX");
                }
                return Err(status_error(503, "no healthy upstream"));
            };
            let identity = match ep.endpoint.transport {
                routing::Transport::Hbone => PeerCheck::for_endpoint(&snapshot, &ep.endpoint)
                    .map_err(|e| Error::explain(ErrorType::InternalError, e))?,
                routing::Transport::Direct => {
                    direct_tls = Some(cluster.policy.originate_tls().cloned());
                    PeerCheck::Sans(Default::default())
                }
                routing::Transport::IstioMutual => {
                    let expected = PeerCheck::for_endpoint(&snapshot, &ep.endpoint)
                        .map_err(|e| Error::explain(ErrorType::InternalError, e))?;
                    let sni = crate::dataplane::direct::istio_sni(
                        &key.host,
                        key.port,
                        key.subset.as_deref(),
                    );
                    istio_mtls = Some((expected, sni));
                    PeerCheck::Sans(Default::default())
                }
            };
            ctx._active = Some(ep.begin());
            ctx.endpoint = Some(ep.endpoint.clone());
            (ep.target, identity)
        };
        ctx.tried.push(target);
        ctx.upstream = Some(target);
        let lease = Arc::new(Lease::default());
        ctx.lease = Some(lease.clone());
        ctx.upstream_h2 = match ctx.protocol {
            Protocol::Http2 | Protocol::Grpc => true,
            Protocol::Http | Protocol::Tcp => false,
            Protocol::Unknown => session.req_header().version == http::Version::HTTP_2,
        };
        let mut peer = HttpPeer::new(target, false, String::new());
        peer.group_key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            identity.hash(&mut h);
            h.finish()
        };
        peer.options.idle_timeout = Some(TUNNEL_IDLE_TIMEOUT);
        // The route's timeout bounds the wait for the response (504 UT); a per-try timeout
        // bounds each attempt within it.
        if let Some(route) = &ctx.route {
            let remaining = route
                .timeout
                .map(|t| t.saturating_sub(ctx.started.elapsed()));
            let limit = match (remaining, route.retries.per_try_timeout) {
                (Some(r), Some(p)) => Some(r.min(p)),
                (r, p) => r.or(p),
            };
            if let Some(limit) = limit {
                if limit.is_zero() {
                    ctx.flags.add("UT");
                    return Err(status_error(
                        504,
                        "route timeout elapsed before the attempt",
                    ));
                }
                peer.options.read_timeout = Some(limit);
            }
        }
        if let Some((expected, sni)) = istio_mtls {
            // Dialled directly in Istio mutual TLS with the waypoint's own certificate.
            if ctx.upstream_h2 {
                peer.options.set_http_version(2, 2);
            }
            let config = crate::dataplane::direct::istio_mutual_config(
                &self.pool.client().configs(),
                &expected,
                ctx.upstream_h2,
            )
            .map_err(|e| {
                *ctx.failure.lock() = Some(e.clone());
                Error::explain(ErrorType::TLSHandshakeFailure, e)
            })?;
            peer.group_key = 0;
            peer.options.connection_timeout = policy.connect_timeout;
            peer.options.custom_l4 = Some(Arc::new(crate::dataplane::direct::TlsConnector {
                config,
                sni: Some(sni),
                connect_timeout: policy.connect_timeout,
                failure: ctx.failure.clone(),
            }));
            ctx.upstream_started = Some(Instant::now());
            return Ok(Box::new(peer));
        }
        if let Some(tls) = direct_tls {
            // No HBONE: pingora dials the endpoint itself, or our TLS connector does.
            ctx.upstream_h2 |= tls.as_ref().is_some_and(|t| t.alpn_h2);
            if ctx.upstream_h2 {
                peer.options.set_http_version(2, 2);
            }
            peer.group_key = 0;
            peer.options.connection_timeout = policy.connect_timeout;
            if let Some(tls) = tls {
                let config = crate::dataplane::direct::tls_config(&tls).map_err(|e| {
                    *ctx.failure.lock() = Some(e.clone());
                    Error::explain(ErrorType::TLSHandshakeFailure, e)
                })?;
                // Envoy's auto_sni: the request's host when the DestinationRule names no sni.
                let sni = tls.sni.clone().or_else(|| {
                    authority(session.req_header())
                        .map(routing::normalize_authority)
                        .filter(|h| h.parse::<std::net::IpAddr>().is_err())
                });
                peer.options.custom_l4 = Some(Arc::new(crate::dataplane::direct::TlsConnector {
                    config,
                    sni,
                    connect_timeout: policy.connect_timeout,
                    failure: ctx.failure.clone(),
                }));
            }
            ctx.upstream_started = Some(Instant::now());
            return Ok(Box::new(peer));
        }
        if ctx.upstream_h2 {
            peer.options.set_http_version(2, 2);
        }
        peer.options.custom_l4 = Some(Arc::new(TunnelConnector {
            pool: self.pool.clone(),
            identity,
            lease,
            policy,
            failure: ctx.failure.clone(),
            h2: ctx.upstream_h2,
        }));
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if matches!(e.etype(), ErrorType::HTTPStatus(503)) {
            // The connector's answer to tcp.maxConnections / http1MaxPendingRequests overflow
            // (a failed connect is a connect error type): 503 UO, no retry.
            ctx.flags.add("UO");
            ctx.details = "upstream_overflow".into();
            debug!(upstream = %peer._address, cluster = %ctx.cluster_name, error = %e, "connection pool overflow");
            return e;
        }
        ctx.flags.add("UF");
        warn!(upstream = %peer._address, cluster = %ctx.cluster_name, error = %e, "upstream connect failed");
        if let Some(target) = ctx.upstream {
            self.report(ctx, target, routing::Outcome::ConnectFailure);
        }
        // Retry when the route's policy allows: connect-failure, reset-before-request (istiod's
        // default route), reset, 5xx, gateway-error.
        let (attempts, retriable) = match ctx.retry_policy() {
            Some(p) => (
                p.attempts as usize,
                p.should_retry(None, routing::RetryFailure::ConnectFailure, None),
            ),
            None => (0, false),
        };
        if ctx.direct.is_none() && retriable && ctx.tried.len() <= attempts && !self.drain.is_cut()
        {
            e.set_retry(true);
        }
        e
    }

    /// An error after the upstream connection was made (a reset, a closed connection, a per-try
    /// timeout): retried as the route's `retry_on` says, as Envoy does — `reset` (and `5xx`,
    /// `gateway-error`, which include it) retries a reset before a response whatever the method,
    /// `refused-stream` an HTTP/2 `REFUSED_STREAM` — when the body could be replayed (at most
    /// pingora's 64 KiB retry buffer) and attempts remain. pingora's own rule stays too: an
    /// idempotent request that failed on a reused (possibly stale) connection is retried.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let replayable = !session.as_ref().retry_buffer_truncated();
        let stale_reuse = replayable && session.req_header().method.is_idempotent() && {
            e.retry.decide_reuse(client_reused);
            e.retry()
        };
        let failure = retry_failure(&e);
        let by_policy = match (ctx.retry_policy(), failure) {
            (Some(p), Some(f)) => {
                ctx.direct.is_none()
                    // Before the response: once headers are forwarded, nothing can be retried.
                    && ctx.upstream_time.is_none()
                    && replayable
                    && ctx.tried.len() <= p.attempts as usize
                    && p.should_retry(None, f, None)
            }
            _ => false,
        };
        if by_policy {
            debug!(route = %ctx.route_name, ?failure, attempt = ctx.tried.len(), error = %e, "retrying after an upstream reset");
        }
        // At the drain deadline the upstream was dropped on purpose: nothing is retried.
        e.set_retry((stale_reuse || by_policy) && !self.drain.is_cut());
        e
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut pingora_http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_time = ctx.upstream_started.map(|t| t.elapsed());
        if let Some(target) = ctx.upstream {
            self.report(
                ctx,
                target,
                routing::Outcome::Status(upstream_response.status.as_u16()),
            );
        }
        // A trailers-only gRPC response carries its status in the headers.
        if let Some(s) = upstream_response.headers.get("grpc-status") {
            ctx.grpc_status = s.to_str().ok().map(String::from);
        }
        // retryOn for responses (5xx, gateway-error, retriable-status-codes, gRPC codes): drop
        // this response and try another endpoint while attempts remain.
        if let Some(retries) = ctx.retry_policy() {
            let status = upstream_response.status.as_u16();
            if ctx.direct.is_none()
                && ctx.tried.len() <= retries.attempts as usize
                && retries.should_retry(
                    Some(status),
                    routing::RetryFailure::Response,
                    ctx.grpc_status.as_deref(),
                )
            {
                debug!(route = %ctx.route_name, status, attempt = ctx.tried.len(), "retrying on response status");
                let mut e =
                    Error::explain(ErrorType::HTTPStatus(status), "retriable upstream response");
                e.set_retry(true);
                return Err(e);
            }
        }
        // A response without a body is complete with its header. (1xx: the final response
        // follows, or, for 101, the tunnel now carries the upgraded protocol.)
        let status = upstream_response.status.as_u16();
        ctx.upgraded |= status == 101;
        let no_body = matches!(status, 204 | 304)
            || session.req_header().method == http::Method::HEAD
            || upstream_response
                .headers
                .get(http::header::CONTENT_LENGTH)
                .is_some_and(|v| v.as_bytes() == b"0");
        if no_body {
            self.response_complete(ctx);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        response: &mut pingora_http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        http1::fit_response(session, response);
        if session.is_process_shutting_down() {
            // Draining (`App::start_drain`): the HTTP/1.1 client gets `connection: close` and
            // its tunnel ends after this response.
            session.set_keepalive(None);
        }
        if let Some(cookie) = ctx.set_cookie.take() {
            response.append_header("set-cookie", cookie)?;
        }
        if let Some(route) = &ctx.route {
            route.apply_response_headers(ctx.destination.as_ref(), &mut ResponseSink(response));
        }
        for (k, v) in std::mem::take(&mut ctx.extra_response_headers) {
            response.append_header(k, v.as_str())?;
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        _body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if end_of_stream {
            self.response_complete(ctx);
        }
        Ok(None)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if !ctx.mirror_taps.is_empty() {
            if let Some(chunk) = body.as_ref().filter(|c| !c.is_empty()) {
                ctx.mirror_taps.retain_mut(|tap| tap.push(chunk));
            }
            if end_of_stream {
                ctx.mirror_taps
                    .drain(..)
                    .for_each(crate::dataplane::mirror::BodyTap::finish);
            }
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        if let Some(path) = &ctx.rewrite_path {
            match path.parse::<http::Uri>() {
                Ok(uri) => upstream_request.set_uri(uri),
                Err(e) => {
                    warn!(route = %route.name, %path, error = %e, "rewritten path is not a valid URI; sent unchanged")
                }
            }
        }
        if let Some(authority) = route.authority_rewrite(ctx.destination.as_ref()) {
            upstream_request.insert_header(http::header::HOST, authority)?;
        }
        route.apply_request_headers(ctx.destination.as_ref(), &mut RequestSink(upstream_request));
        Ok(())
    }

    fn upstream_response_trailer_filter(
        &self,
        _session: &mut Session,
        trailers: &mut http::HeaderMap,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(s) = trailers.get("grpc-status") {
            ctx.grpc_status = s.to_str().ok().map(String::from);
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        use ErrorType::*;
        if self.drain.is_cut() && e.esource() != &ErrorSource::Downstream {
            return self.cut_at_drain_deadline(session, ctx).await;
        }
        let code = match (e.esource(), e.etype()) {
            (_, HTTPStatus(code)) => *code,
            (
                ErrorSource::Upstream,
                ConnectTimedout | ConnectRefused | ConnectNoRoute | TLSHandshakeFailure
                | ConnectError | ConnectProxyFailure,
            ) => {
                ctx.flags.add("UF");
                503
            }
            (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => {
                ctx.flags.add("UT");
                if let Some(target) = ctx.upstream {
                    self.report(ctx, target, routing::Outcome::Timeout);
                }
                504
            }
            (ErrorSource::Upstream, ReadError | WriteError | ConnectionClosed) => {
                ctx.flags.add("UC");
                if let Some(target) = ctx.upstream {
                    self.report(ctx, target, routing::Outcome::Reset);
                }
                503
            }
            (ErrorSource::Upstream, _) => 502,
            (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => {
                ctx.flags.add("DC");
                0
            }
            (ErrorSource::Downstream, _) => 400,
            _ => 500,
        };
        if code > 0 {
            if let Err(write_err) = session.respond_error(code).await {
                debug!(error = %write_err, "could not send error response downstream");
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if self.drain.is_draining() && !ctx.flags.has("LR") {
            self.drain
                .record(crate::dataplane::drain::Outcome::Completed);
        }
        if let Some(clock) = &ctx.header_clock {
            clock.await_next();
        }
        if e.is_none() && !ctx.upstream_h2 {
            if let Some(lease) = &ctx.lease {
                lease.mark_clean();
            }
        }
        if let Some(e) = e {
            debug!(request_id = %ctx.request_id, error = %e, "request failed");
        }
        let req = session.req_header();
        let code = session.response_written().map_or(0, |r| r.status.as_u16());
        let flags = ctx.flags.render();
        // The identity the upstream proved (beats the one the snapshot knew ahead).
        let proved = ctx
            .lease
            .as_ref()
            .and_then(|l| l.peer())
            .map(|p| p.to_string());
        self.record_metrics(session, ctx, code, &flags, proved.as_deref());
        // The line is built only when it is sampled in, borrowing the request's data, and
        // rendered straight into the log's buffer.
        if self.access_log.sample() {
            let tunnel = ctx.tunnel.as_deref();
            let failure = ctx.failure.lock();
            let request_headers = capture(&req.headers, self.access_log.request_headers());
            let response_headers = session
                .response_written()
                .map(|r| capture(&r.headers, self.access_log.response_headers()))
                .unwrap_or_default();
            self.access_log.emit(&Line {
                start_time: ctx.start_time.into(),
                method: req.method.as_str().into(),
                path: req.uri.path_and_query().map_or("/", |p| p.as_str()).into(),
                protocol: crate::telemetry::access_log::template::protocol_name(req.version).into(),
                response_code: code,
                response_flags: (&flags).into(),
                response_code_details: if ctx.details.is_empty() && ctx.upstream_time.is_some() {
                    "via_upstream".into()
                } else {
                    Field::Str(&ctx.details)
                },
                upstream_transport_failure_reason: failure.as_deref().unwrap_or_default().into(),
                bytes_received: session.body_bytes_read() as u64,
                bytes_sent: session.body_bytes_sent() as u64,
                duration_ms: ctx.started.elapsed().as_millis() as u64,
                upstream_service_time_ms: ctx.upstream_time.map(|d| d.as_millis() as u64),
                x_forwarded_for: header_str(req, "x-forwarded-for").into(),
                user_agent: header_str(req, "user-agent").into(),
                request_id: (&ctx.request_id).into(),
                authority: authority(req).unwrap_or("").into(),
                upstream_host: ctx.upstream.into(),
                upstream_cluster: (&ctx.cluster_name).into(),
                downstream_local_address: tunnel.map(|t| t.original_dst).into(),
                downstream_remote_address: tunnel.map(|t| t.source_addr).into(),
                downstream_claimed_address: tunnel.and_then(|t| t.claimed_source).into(),
                source_principal: tunnel
                    .map_or(Field::Str(""), |t| Field::Display(&t.source_identity)),
                destination_principal: proved
                    .as_deref()
                    .or_else(|| ctx.endpoint.as_ref().map(|e| e.identity.as_str()))
                    .unwrap_or_default()
                    .into(),
                route_name: (&ctx.route_name).into(),
                tunnel_traceparent: tunnel
                    .and_then(|t| t.traceparent.as_deref())
                    .unwrap_or_default()
                    .into(),
                request_headers: &request_headers,
                response_headers: &response_headers,
                attempt_count: ctx.tried.len().max(1) as u32,
                config_version: ctx.snapshot.version(),
                authz: (&ctx.authz.decision).into(),
                authz_dry_run: (&ctx.authz.dry_run).into(),
                authz_audit: (&ctx.authz.audit).into(),
                ..Default::default()
            });
        }
    }
}

impl Waypoint {
    /// A request still in flight at the drain deadline (its upstream was dropped): answered
    /// `503` with `connection: close` when no response header was sent yet, else its tunnel is
    /// reset so that the client sees a failure rather than a response that merely stops. Flag
    /// `LR` (Envoy's "connection local reset": the waypoint itself ended the upstream stream).
    async fn cut_at_drain_deadline(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        ctx.flags.add("LR");
        ctx.details = "drain_deadline".into();
        if session.response_written().is_none() {
            // `respond_error` turns keep-alive off: the 503 carries `connection: close`.
            if let Err(write_err) = session.respond_error(503).await {
                debug!(error = %write_err, "could not send the drain 503 downstream");
            }
            self.drain
                .record(crate::dataplane::drain::Outcome::Responded503);
            return FailToProxy {
                error_code: 503,
                can_reuse_downstream: false,
            };
        }
        // HTTP/2 inside the tunnel: pingora resets the inner stream; the tunnel carries others.
        if session.req_header().version != http::Version::HTTP_2 {
            if let Some(end) = crate::dataplane::tunnel::TunnelData::from_digest(session.digest())
                .and_then(|d| d.end.as_ref())
            {
                end.reset_on_close();
            }
        }
        self.drain.record(crate::dataplane::drain::Outcome::Reset);
        FailToProxy {
            error_code: session.response_written().map_or(0, |r| r.status.as_u16()),
            can_reuse_downstream: false,
        }
    }
}
