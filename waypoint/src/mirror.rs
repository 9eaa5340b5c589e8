//! Traffic mirroring (VirtualService `mirror`/`mirrors`): a copy of the request goes to another
//! cluster, fire and forget. The copy is sent from its own task after the original was admitted;
//! its response is read and dropped; its failures are logged at debug level and counted. It never
//! delays or changes the original response. As Envoy does, the copy's `Host` gets `-shadow`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tracing::debug;

use crate::hbone::{Lease, TunnelPolicy, TunnelPool};
use crate::identity::SpiffeId;

/// A mirrored request may take this long in total; then it is abandoned.
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);
/// Request bodies larger than this are not mirrored (the copy would have to be buffered).
pub const MIRROR_BODY_LIMIT: usize = 64 * 1024;

#[derive(Debug, Default)]
pub struct MirrorStats {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
}

/// What to send: the original request's head (already rewritten for the copy) and body.
pub struct MirrorRequest {
    pub method: http::Method,
    pub path_and_query: String,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// `host:port` → `host-shadow:port`, as Envoy names mirrored authorities.
pub fn shadow_authority(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => {
            format!("{host}-shadow:{port}")
        }
        _ => format!("{authority}-shadow"),
    }
}

/// Send `req` to `target` (an endpoint reached over HBONE as `identity`) in the background.
pub fn spawn(
    pool: Arc<TunnelPool>,
    stats: Arc<MirrorStats>,
    target: SocketAddr,
    identity: SpiffeId,
    req: MirrorRequest,
) {
    tokio::spawn(async move {
        let result =
            tokio::time::timeout(MIRROR_TIMEOUT, send(&pool, target, &identity, req)).await;
        match result {
            Ok(Ok(status)) => {
                stats.sent.fetch_add(1, Ordering::Relaxed);
                debug!(%target, %status, "mirrored request answered");
            }
            Ok(Err(e)) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                debug!(%target, error = %e, "mirrored request failed");
            }
            Err(_) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                debug!(%target, "mirrored request timed out");
            }
        }
    });
}

async fn send(
    pool: &Arc<TunnelPool>,
    target: SocketAddr,
    identity: &SpiffeId,
    req: MirrorRequest,
) -> anyhow::Result<http::StatusCode> {
    let tunnel = pool
        .checkout(
            target,
            identity,
            Arc::new(Lease::default()),
            &TunnelPolicy::default(),
        )
        .await?;
    let (stream, _slot) = tunnel.into_inner();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut builder = http::Request::builder()
        .method(req.method)
        .uri(req.path_and_query);
    if let Some(h) = builder.headers_mut() {
        *h = req.headers;
    }
    let resp = send
        .send_request(builder.body(Full::new(req.body))?)
        .await?;
    let status = resp.status();
    // Read and drop the body so the exchange completes.
    let _ = resp.into_body().collect().await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shadow_hosts() {
        assert_eq!(shadow_authority("reviews:9080"), "reviews-shadow:9080");
        assert_eq!(shadow_authority("reviews"), "reviews-shadow");
        assert_eq!(
            shadow_authority("reviews.default.svc.cluster.local"),
            "reviews.default.svc.cluster.local-shadow"
        );
    }
}
