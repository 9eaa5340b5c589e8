//! The L7 core: pingora `ProxyHttp` hooks that route each request of a tunnel and send it over
//! HBONE to the chosen endpoint.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::RequestHeader;
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use routing::Snapshot;
use tracing::{debug, warn};

use crate::telemetry::access_log::{AccessLog, Field, Line};
use crate::telemetry::status::Telemetry;
use crate::transport::hbone::TunnelPool;

mod authz;
mod ctx;
pub mod ext_authz;
mod grpc_frames;
mod http1;
pub(crate) mod jwt;
mod peer;
mod policy;
mod request;
mod request_id;
mod route;
pub mod sanitize;
#[cfg(test)]
mod sizes;

pub use crate::dataplane::outcome::Flags;
pub use authz::{AuthzNote, HttpAuthz, TcpAuthz, DENIED_BODY};
pub use ctx::RequestCtx;
pub use jwt::JwksCache;

use request::{authority, capture, header_str, RequestSink, ResponseSink};

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
    /// The Telemetry API's tracer (spans) and access logs.
    pub telemetry_api: Arc<crate::telemetry::spans::TelemetryApi>,
}

#[async_trait]
impl ProxyHttp for Waypoint {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(self.snapshot.load_full())
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
        if let Some(tracer) = self.telemetry_api.tracer.load().as_ref() {
            ctx.span = tracer.start(session.req_header());
        }
        let done = self.route_request(session, ctx).await?;
        // gRPC (by its port's protocol or its content type): count its messages.
        if ctx.protocol == routing::Protocol::Grpc || request::is_grpc(session.req_header()) {
            ctx.grpc_messages = Some(Default::default());
        }
        Ok(done)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        self.pick_peer(session, ctx).await
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.on_connect_failure(_session, peer, ctx, e)
    }

    /// An error after the upstream connection was made: see `Waypoint::on_proxy_error`.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        self.on_proxy_error(peer, session, e, ctx, client_reused)
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut pingora_http::ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_time = ctx.upstream_started.map(|t| t.elapsed());
        if let Some(target) = ctx.outcome.host {
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
            route.apply_response_headers(ctx.destination_in(route), &mut ResponseSink(response));
        }
        for (k, v) in std::mem::take(&mut ctx.extra_response_headers) {
            response.append_header(k, v.as_str())?;
        }
        Ok(())
    }

    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        if let (Some((_, out)), Some(chunk)) = (ctx.grpc_messages.as_mut(), body.as_ref()) {
            out.feed(chunk);
        }
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
        if let (Some((into, _)), Some(chunk)) = (ctx.grpc_messages.as_mut(), body.as_ref()) {
            into.feed(chunk);
        }
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
        if let Some(span) = &ctx.span {
            span.inject(upstream_request);
        }
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
        if let Some(authority) = route.authority_rewrite(ctx.destination_in(&route)) {
            upstream_request.insert_header(http::header::HOST, authority)?;
        }
        route.apply_request_headers(
            ctx.destination_in(&route),
            &mut RequestSink(upstream_request),
        );
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
        self.on_proxy_failure(session, e, ctx).await
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if self.drain.is_draining() && !ctx.outcome.flags.has("LR") {
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
        let flags = ctx.outcome.flags.render();
        if let Some(split) = ctx.split.take() {
            split.finish(code, ctx.started.elapsed());
        }
        // The identity the upstream proved (beats the one the snapshot knew ahead).
        let proved = ctx.lease.as_ref().and_then(|l| l.peer());
        self.record_metrics(session, ctx, code, &flags, proved.as_deref());
        // The line is built only when it is sampled in, borrowing the request's data, and
        // rendered straight into the log's buffer.
        let log = self.access_log.sample();
        if log || ctx.span.is_some() {
            let view = self.access_log.view();
            let tunnel = ctx.tunnel.as_deref();
            let failure = ctx.failure.lock();
            let request_headers = capture(&req.headers, view.request_headers());
            let response_headers = session
                .response_written()
                .map(|r| capture(&r.headers, view.response_headers()))
                .unwrap_or_default();
            let line = Line {
                start_time: ctx.start_time.into(),
                method: req.method.as_str().into(),
                path: req.uri.path_and_query().map_or("/", |p| p.as_str()).into(),
                protocol: crate::telemetry::access_log::template::protocol_name(req.version).into(),
                response_code: code,
                response_flags: (&flags).into(),
                response_code_details: if ctx.outcome.details.is_empty()
                    && ctx.upstream_time.is_some()
                {
                    "via_upstream".into()
                } else {
                    Field::Str(&ctx.outcome.details)
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
                upstream_host: ctx.outcome.host.into(),
                upstream_cluster: (&ctx.outcome.cluster).into(),
                downstream_local_address: tunnel.map(|t| t.original_dst).into(),
                downstream_remote_address: tunnel.map(|t| t.source_addr).into(),
                downstream_claimed_address: tunnel.and_then(|t| t.claimed_source).into(),
                source_principal: tunnel
                    .map_or(Field::Str(""), |t| Field::Display(&t.source_identity)),
                destination_principal: ctx.outcome.principal(proved.as_deref()).into(),
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
            };
            if log {
                view.emit(&line);
            }
            if let Some(span) = ctx.span.take() {
                span.finish(&line, ctx.start_time, ctx.started.elapsed());
            }
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
        ctx.outcome.flags.add("LR");
        ctx.outcome.details = "drain_deadline".into();
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
