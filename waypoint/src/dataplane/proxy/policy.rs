//! The route and cluster policy the proxy hooks apply: local replies, admission to the cluster's
//! connection pool and consistent hashing, mirroring, outlier reports and Istio metrics.

use std::net::SocketAddr;

use pingora_error::Result;
use pingora_proxy::Session;
use tracing::debug;

use super::request::{authority, HashView};
use super::{RequestCtx, Waypoint};
use crate::dataplane::tunnel::TunnelInfo;
use crate::dataplane::upstream::{Attempt, ClusterKey, Dial};
use crate::telemetry::metrics::RequestKey;

impl Waypoint {
    /// The request's path as the destination's connection manager leaves it, before
    /// authorization and routing see it (`/x/../admin` meets the policies and routes of
    /// `/admin`). `Some(replied)` when the request was answered here: 400 for a path the
    /// policy rejects, 307 to the unescaped path for `UNESCAPE_AND_REDIRECT` (gRPC: rejected,
    /// as Envoy does, with grpc-status 13).
    pub(super) async fn normalize_path(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        policy: &routing::path::PathPolicy,
    ) -> Result<Option<bool>> {
        use routing::path::PathOutcome;
        const DETAILS: &str = "path_normalization_failed";
        let req = session.req_header_mut();
        let Some(pq) = req.uri.path_and_query() else {
            return Ok(None);
        };
        let grpc = super::request::is_grpc(req);
        let outcome = routing::path::apply(pq.as_str(), policy);
        let replied = match outcome {
            PathOutcome::Unchanged => return Ok(None),
            PathOutcome::Rewrite(p) => match p.parse::<http::Uri>() {
                Ok(uri) => {
                    req.set_uri(uri);
                    return Ok(None);
                }
                Err(_) => self.reply(session, ctx, 400, "", DETAILS).await?,
            },
            PathOutcome::Reject | PathOutcome::Redirect(_) if grpc => {
                let headers = [
                    ("content-type".to_string(), "application/grpc".to_string()),
                    ("grpc-status".to_string(), "13".to_string()),
                ];
                self.local_reply(session, ctx, 200, &headers, None, "", DETAILS)
                    .await?
            }
            PathOutcome::Reject => self.reply(session, ctx, 400, "", DETAILS).await?,
            PathOutcome::Redirect(location) => {
                let headers = [("location".to_string(), location)];
                self.local_reply(session, ctx, 307, &headers, None, "", DETAILS)
                    .await?
            }
        };
        Ok(Some(replied))
    }

    /// The upstream HTTP/1.1 response has been read to its end: the tunnel can go back to the
    /// pool at pingora's reuse test (see hbone/pool.rs). h2 upstreams are pingora's own.
    pub(super) fn response_complete(&self, ctx: &RequestCtx) {
        if !ctx.upstream_h2 && !ctx.upgraded {
            if let Some(lease) = &ctx.lease {
                lease.mark_complete();
            }
        }
    }

    /// A response of the waypoint's own (no route, overflow, redirect, direct response, CORS
    /// preflight, fault). It keeps the client's connection, as Envoy's local replies do, unless
    /// a request body is still unread on it.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn local_reply(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        code: u16,
        headers: &[(String, String)],
        body: Option<bytes::Bytes>,
        flag: &'static str,
        details: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Result<bool> {
        if !flag.is_empty() {
            ctx.outcome.flags.add(flag);
        }
        ctx.outcome.details = details.into();
        if !session.is_body_done() {
            // The unread body would be taken for the next request: close after this response.
            // (A body read whole, for an ext_authz check, leaves nothing behind.)
            session.set_keepalive(None);
        }
        let mut resp = pingora_http::ResponseHeader::build(code, Some(headers.len() + 1))?;
        for (k, v) in headers {
            resp.append_header(k.clone(), v.as_str())?;
        }
        let len = body.as_ref().map_or(0, |b| b.len());
        resp.insert_header("content-length", len.to_string())?;
        let end = body.is_none();
        session.write_response_header(Box::new(resp), end).await?;
        if !end {
            session.write_response_body(body, true).await?;
        }
        Ok(true)
    }

    /// An empty local reply with a response flag.
    pub(super) async fn reply(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        code: u16,
        flag: &'static str,
        details: &'static str,
    ) -> Result<bool> {
        self.local_reply(session, ctx, code, &[], None, flag, details)
            .await
    }
}

impl Waypoint {
    /// The chosen cluster's DestinationRule policy at admission: a slot in its connection pool
    /// (overflow → 503 UO) and the consistent-hash key.
    pub(super) async fn admit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        tunnel: &TunnelInfo,
    ) -> Result<bool> {
        let Some(key) = ctx.cluster.clone() else {
            return Ok(false);
        };
        let snapshot = ctx.snapshot.clone();
        let Some(cluster) = key.lookup(&snapshot) else {
            return Ok(false); // upstream_peer answers 503 NC
        };
        match cluster.try_acquire(routing::PoolResource::Request) {
            Ok(slot) => ctx._request_slot = Some(slot),
            Err(overflow) => {
                ctx.outcome.cluster = cluster.name.to_string();
                debug!(cluster = %cluster.name, %overflow, "connection pool overflow");
                return self
                    .reply(session, ctx, 503, "UO", "upstream_overflow")
                    .await;
            }
        }
        if cluster.consistent_hash().is_some() {
            let view = HashView {
                req: session.req_header(),
                source: tunnel.source_addr.ip(),
            };
            let rh = cluster.request_hash(&view, tunnel.source_addr, tunnel.original_dst);
            ctx.hash = rh.hash;
            ctx.set_cookie = rh.set_cookie.map(|c| c.header_value());
        }
        Ok(false)
    }

    /// Send copies of the request to the route's mirrors that this request is sampled for. A
    /// request body reaches the copies through taps fed by `request_body_filter`.
    pub(super) fn mirror(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route: &routing::HttpRoute,
        port: u16,
    ) {
        if route.mirrors.is_empty() {
            return;
        }
        let has_body = !session.is_body_empty();
        let req = session.req_header();
        for m in &route.mirrors {
            if !m.sampled(&mut rand::thread_rng()) {
                continue;
            }
            let key = ClusterKey::new(&m.host, m.port.unwrap_or(port), m.subset.as_deref());
            let Some(cluster) = key.lookup(&ctx.snapshot) else {
                debug!(mirror = %m.host, "mirror destination has no cluster");
                continue;
            };
            let attempt = Attempt {
                hash: None,
                tried: &[],
                avoid_tried: false,
                original_dst: None,
            };
            let Ok(pick) = crate::dataplane::upstream::pick(&ctx.snapshot, cluster, &key, attempt)
            else {
                continue;
            };
            // Mirrors go over HBONE only; a directly dialled endpoint is not mirrored to.
            let Dial::Hbone(identity) = pick.dial else {
                continue;
            };
            let mut headers = req.headers.clone();
            if let Some(a) = authority(req) {
                if let Ok(v) =
                    http::HeaderValue::from_str(&crate::dataplane::mirror::shadow_authority(a))
                {
                    headers.insert(http::header::HOST, v);
                }
            }
            let body = if has_body {
                let (tap, body) =
                    crate::dataplane::mirror::MirrorBody::tapped(self.telemetry.mirrors.clone());
                ctx.mirror_taps.push(tap);
                body
            } else {
                crate::dataplane::mirror::MirrorBody::Empty
            };
            crate::dataplane::mirror::spawn(
                self.pool.clone(),
                self.telemetry.mirrors.clone(),
                pick.target,
                identity,
                crate::dataplane::mirror::MirrorRequest {
                    method: req.method.clone(),
                    path_and_query: req
                        .uri
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .to_string(),
                    headers,
                    body,
                },
            );
        }
    }

    /// Feed an attempt's outcome to the cluster's outlier detection.
    pub(super) fn report(&self, ctx: &RequestCtx, target: SocketAddr, outcome: routing::Outcome) {
        let Some(key) = &ctx.cluster else {
            return;
        };
        if let Some(cluster) = key.lookup(&ctx.snapshot) {
            crate::dataplane::upstream::report(cluster, target, outcome);
        }
    }

    pub(super) fn record_metrics(
        &self,
        session: &Session,
        ctx: &RequestCtx,
        code: u16,
        flags: &str,
        proved_principal: Option<&str>,
    ) {
        let req = session.req_header();
        if let Some(t) = &ctx.tunnel {
            // The tunnel's source labels, with the workload at the client's address.
            t.source_labels(&ctx.snapshot);
        }
        // As Istio's stats filter: by the content type only.
        let grpc = super::request::is_grpc(req);
        let t = &self.telemetry;
        t.metrics.istio.record_request_key(
            RequestKey {
                tunnel: ctx.tunnel.as_ref(),
                service: ctx
                    .service
                    .as_ref()
                    .map(|(host, ns)| (host.as_str(), ns.as_str())),
                endpoint: ctx.outcome.endpoint.as_ref(),
                principal: proved_principal,
                cluster_id: &t.cluster_id,
                grpc,
                response_code: code,
                grpc_status: ctx.grpc_status.as_deref(),
                response_flags: flags,
            },
            ctx.started.elapsed().as_secs_f64() * 1000.0,
            // Envoy's wire bytes: headers and body (istio/proxy `istio_stats.cc`).
            session.body_bytes_read() as u64 + super::request::request_header_bytes(req),
            session.body_bytes_sent() as u64
                + session
                    .response_written()
                    .map_or(0, super::request::response_header_bytes),
            ctx.grpc_messages
                .as_ref()
                .map(|(into, out)| (into.messages, out.messages)),
        );
    }
}
