//! `upstream_peer` and the hooks after a failed attempt: which endpoint an attempt goes to, how it is
//! dialled, and whether a failure is retried.

use super::request::{authority, retry_failure, status_error};
use super::{RequestCtx, Waypoint};
use crate::control::identity::PeerCheck;
use crate::dataplane::upstream::{Attempt, Dial, NoPick};
use crate::transport::hbone::pool::TUNNEL_IDLE_TIMEOUT;
use crate::transport::hbone::{Lease, TunnelConnector, TunnelPolicy};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_proxy::{FailToProxy, Session};
use routing::Protocol;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, warn};

impl Waypoint {
    pub(super) async fn pick_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let mut policy = TunnelPolicy::default();
        // A workload outside the mesh: dialled directly, with the cluster's DestinationRule TLS.
        let mut direct_tls: Option<Option<routing::UpstreamTls>> = None;
        // A sidecar endpoint: Istio mutual TLS (peer check, SNI).
        let mut istio_mtls: Option<(PeerCheck, String)> = None;
        let pick = if let Some(pod) = ctx.direct.as_ref() {
            if ctx.tried.contains(&pod.target) {
                ctx.outcome.flags.add("URX");
                return Err(status_error(503, "pod endpoint failed"));
            }
            pod.pick()
        } else {
            let key = ctx
                .cluster
                .clone()
                .ok_or_else(|| status_error(500, "no cluster chosen"))?;
            let snapshot = ctx.snapshot.clone();
            let Some(cluster) = key.lookup(&snapshot) else {
                ctx.outcome.no_pick(&NoPick::NoCluster);
                return Err(status_error(503, "no cluster for route destination"));
            };
            ctx.outcome.cluster = cluster.name.to_string();
            policy = TunnelPolicy::for_cluster(cluster);
            if !ctx.tried.is_empty() {
                // A retry: it needs a slot in the cluster's retry budget (maxRetries).
                match cluster.try_acquire(routing::PoolResource::Retry) {
                    Ok(slot) => ctx.retry_slots.push(slot),
                    Err(overflow) => {
                        debug!(cluster = %cluster.name, %overflow, "retry budget exhausted");
                        ctx.outcome.flags.add("URX");
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
            let attempt = Attempt {
                hash: ctx.hash,
                tried: &ctx.tried,
                // A retry avoids the endpoints tried while others are left (previous_hosts),
                // else goes back to one of them, as Envoy does.
                avoid_tried: ctx
                    .retry_policy()
                    .is_none_or(routing::RetryPolicy::avoids_tried_endpoints),
                original_dst: ctx.tunnel.as_ref().map(|t| t.original_dst),
            };
            match crate::dataplane::upstream::pick(&snapshot, cluster, &key, attempt) {
                Ok(pick) => pick,
                Err(NoPick::Identity { reason, .. }) => {
                    return Err(Error::explain(ErrorType::InternalError, reason.to_string()));
                }
                Err(no) => {
                    ctx.outcome.no_pick(&no);
                    return Err(status_error(503, "no healthy upstream"));
                }
            }
        };
        let target = pick.target;
        ctx.outcome.attempt(&pick);
        ctx.tried.push(target);
        let identity = match pick.dial {
            Dial::Hbone(identity) => identity,
            Dial::Direct(tls) => {
                direct_tls = Some(tls);
                PeerCheck::Sans(Default::default())
            }
            Dial::IstioMutual { expected, sni } => {
                istio_mtls = Some((expected, sni));
                PeerCheck::Sans(Default::default())
            }
        };
        ctx._active = Some(pick.active);
        let lease = Arc::new(Lease::default());
        ctx.lease = Some(lease.clone());
        ctx.upstream_h2 = match ctx.protocol {
            Protocol::Http2 | Protocol::Grpc => true,
            Protocol::Http | Protocol::Tcp => false,
            Protocol::Unknown => session.req_header().version == http::Version::HTTP_2,
        };
        let mut peer = HttpPeer::new(target, false, String::new());
        // foldhash, as the tunnel pool's keys: SipHash of the identity was 500 instructions a
        // request.
        peer.group_key = {
            use std::hash::BuildHasher;
            foldhash::fast::FixedState::default().hash_one(&identity)
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
                    ctx.outcome.flags.add("UT");
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
            .map_err(|e| tls_setup_failed(ctx, e))?;
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
                let config = crate::dataplane::direct::tls_config(&tls)
                    .map_err(|e| tls_setup_failed(ctx, e))?;
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

    pub(super) fn on_connect_failure(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if matches!(e.etype(), ErrorType::HTTPStatus(503)) {
            // The connector's answer to tcp.maxConnections / http1MaxPendingRequests overflow
            // (a failed connect is a connect error type): 503 UO, no retry.
            ctx.outcome.flags.add("UO");
            ctx.outcome.details = "upstream_overflow".into();
            debug!(upstream = %peer._address, cluster = %ctx.outcome.cluster, error = %e, "connection pool overflow");
            return e;
        }
        ctx.outcome.flags.add("UF");
        warn!(upstream = %peer._address, cluster = %ctx.outcome.cluster, error = %e, "upstream connect failed");
        if let Some(target) = ctx.outcome.host {
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
    pub(super) fn on_proxy_error(
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

    pub(super) async fn on_proxy_failure(
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
                ctx.outcome.flags.add("UF");
                503
            }
            (ErrorSource::Upstream, ReadTimedout | WriteTimedout) => {
                ctx.outcome.flags.add("UT");
                if let Some(target) = ctx.outcome.host {
                    self.report(ctx, target, routing::Outcome::Timeout);
                }
                504
            }
            (ErrorSource::Upstream, ReadError | WriteError | ConnectionClosed) => {
                ctx.outcome.flags.add("UC");
                if let Some(target) = ctx.outcome.host {
                    self.report(ctx, target, routing::Outcome::Reset);
                }
                503
            }
            (ErrorSource::Upstream, _) => 502,
            (ErrorSource::Downstream, ReadError | WriteError | ConnectionClosed) => {
                ctx.outcome.flags.add("DC");
                0
            }
            (ErrorSource::Downstream, _) => 400,
            _ => 500,
        };
        if ctx.outcome.details.is_empty() {
            let started = session.response_written().is_some();
            let failure = ctx.failure.lock().clone();
            if let Some(details) = reset_details(e, started, failure.as_deref()) {
                ctx.outcome.details = details.into();
            }
        }
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
}

/// A direct endpoint's TLS cannot be set up: the reason is the attempt's transport failure
/// (for the response details) and the error pingora sees.
fn tls_setup_failed(ctx: &RequestCtx, e: crate::dataplane::direct::DirectError) -> Box<Error> {
    let e = e.to_string();
    *ctx.failure.lock() = Some(e.clone());
    Error::explain(ErrorType::TLSHandshakeFailure, e)
}

/// Envoy's `%RESPONSE_CODE_DETAILS%` for an upstream that failed or reset (envoyproxy/envoy
/// `source/common/router/router.cc` `onUpstreamReset`, 1.3x): `upstream_reset_before_response_started`
/// (or `_after_` once the response began) with the reset reason in braces, then `|` and the
/// transport failure reason when there is one, spaces made `_`; a timeout is
/// `upstream_response_timeout`. `None`: not an upstream failure.
fn reset_details(e: &Error, started: bool, transport: Option<&str>) -> Option<String> {
    use ErrorType::*;
    if e.esource() != &ErrorSource::Upstream {
        return None;
    }
    let reason = match e.etype() {
        ReadTimedout | WriteTimedout if !started => {
            return Some("upstream_response_timeout".into())
        }
        ConnectTimedout | ConnectRefused | ConnectNoRoute | TLSHandshakeFailure | ConnectError
        | ConnectProxyFailure => "remote_connection_failure",
        ReadError | WriteError | ConnectionClosed | ReadTimedout | WriteTimedout => {
            "connection_termination"
        }
        H2Error => "remote_reset",
        _ => return None,
    };
    let when = if started { "after" } else { "before" };
    let mut details = format!("upstream_reset_{when}_response_started{{{reason}");
    if let Some(t) = transport.filter(|t| !t.is_empty()) {
        details.push('|');
        details.push_str(t);
    }
    details.push('}');
    Some(details.replace(char::is_whitespace, "_"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_failures_get_envoys_details() {
        let up = Error::new_up;
        assert_eq!(
            reset_details(&up(ErrorType::ConnectRefused), false, None).as_deref(),
            Some("upstream_reset_before_response_started{remote_connection_failure}")
        );
        assert_eq!(
            reset_details(
                &up(ErrorType::TLSHandshakeFailure),
                false,
                Some("TLS error: certificate expired")
            )
            .as_deref(),
            Some(
                "upstream_reset_before_response_started{remote_connection_failure|TLS_error:_certificate_expired}"
            )
        );
        assert_eq!(
            reset_details(&up(ErrorType::ConnectionClosed), false, None).as_deref(),
            Some("upstream_reset_before_response_started{connection_termination}")
        );
        assert_eq!(
            reset_details(&up(ErrorType::ReadError), true, None).as_deref(),
            Some("upstream_reset_after_response_started{connection_termination}")
        );
        assert_eq!(
            reset_details(&up(ErrorType::H2Error), false, None).as_deref(),
            Some("upstream_reset_before_response_started{remote_reset}")
        );
        assert_eq!(
            reset_details(&up(ErrorType::ReadTimedout), false, None).as_deref(),
            Some("upstream_response_timeout")
        );
        let down = Error::new_down(ErrorType::ConnectionClosed);
        assert_eq!(reset_details(&down, false, None), None);
    }
}
