//! Traffic mirroring (VirtualService `mirror`/`mirrors`): a copy of the request goes to another
//! cluster, fire and forget. The copy is sent from its own task after the original was admitted;
//! its response is read and dropped; its failures are logged at debug level and counted. It never
//! delays or changes the original response. As Envoy does, the copy's `Host` gets `-shadow`.
//!
//! A request body is copied chunk by chunk as the original streams through ([`BodyTap`]), never
//! buffered whole and never waited for: a copy whose queue is full (its destination is slower than
//! the original's) is abandoned, and an abandoned or cut-short copy ends with a body error, so its
//! destination never sees a truncated body as complete.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;
use tracing::debug;

use crate::control::identity::PeerCheck;
use crate::transport::hbone::{ConnectError, Lease, TunnelPolicy, TunnelPool};

/// A mirrored request may take this long in total; then it is abandoned.
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);
/// Body chunks a copy may fall behind the original before it is abandoned.
pub const MIRROR_QUEUE_CHUNKS: usize = 64;

#[derive(Debug, Default)]
pub struct MirrorStats {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    /// Copies abandoned because they fell behind the original's body.
    pub abandoned: AtomicU64,
}

/// The original request's end of a copied body.
pub struct BodyTap {
    tx: Option<mpsc::Sender<Bytes>>,
    aborted: Arc<AtomicBool>,
    stats: Arc<MirrorStats>,
}

impl BodyTap {
    /// Copy `chunk` without waiting; false when the copy is abandoned (its queue is full or its
    /// request already ended), after which this tap should be dropped.
    pub fn push(&mut self, chunk: &Bytes) -> bool {
        let Some(tx) = &self.tx else {
            return false;
        };
        if tx.try_send(chunk.clone()).is_ok() {
            return true;
        }
        self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
        self.abort();
        false
    }

    /// The original body ended: so does the copy.
    pub fn finish(mut self) {
        self.tx = None;
    }

    fn abort(&mut self) {
        self.aborted.store(true, Ordering::Release);
        self.tx = None;
    }
}

impl Drop for BodyTap {
    /// Dropped before [`BodyTap::finish`]: the original was cut short, so is the copy.
    fn drop(&mut self) {
        if self.tx.is_some() {
            self.abort();
        }
    }
}

/// A copy's body: none, or the chunks a [`BodyTap`] passes on.
pub enum MirrorBody {
    Empty,
    Tapped {
        rx: mpsc::Receiver<Bytes>,
        aborted: Arc<AtomicBool>,
    },
}

impl MirrorBody {
    /// A body fed by the returned tap.
    pub fn tapped(stats: Arc<MirrorStats>) -> (BodyTap, MirrorBody) {
        let (tx, rx) = mpsc::channel(MIRROR_QUEUE_CHUNKS);
        let aborted = Arc::new(AtomicBool::new(false));
        let tap = BodyTap {
            tx: Some(tx),
            aborted: aborted.clone(),
            stats,
        };
        (tap, MirrorBody::Tapped { rx, aborted })
    }

    fn into_http(self) -> BoxBody<Bytes, std::io::Error> {
        match self {
            MirrorBody::Empty => Empty::new().map_err(|never| match never {}).boxed(),
            MirrorBody::Tapped { rx, aborted } => {
                let frames = futures::stream::unfold(Some((rx, aborted)), |state| async move {
                    let (mut rx, aborted) = state?;
                    match rx.recv().await {
                        Some(chunk) => Some((Ok(Frame::data(chunk)), Some((rx, aborted)))),
                        None if aborted.load(Ordering::Acquire) => Some((
                            Err(std::io::Error::other("original request body cut short")),
                            None,
                        )),
                        None => None,
                    }
                });
                StreamBody::new(frames).boxed()
            }
        }
    }
}

/// What to send: the original request's head (already rewritten for the copy) and body.
pub struct MirrorRequest {
    pub method: http::Method,
    pub path_and_query: String,
    pub headers: http::HeaderMap,
    pub body: MirrorBody,
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
    identity: PeerCheck,
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

/// Why a copy got no answer.
#[derive(Debug, thiserror::Error)]
enum MirrorError {
    #[error(transparent)]
    Tunnel(#[from] ConnectError),
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error(transparent)]
    Request(#[from] http::Error),
}

async fn send(
    pool: &Arc<TunnelPool>,
    target: SocketAddr,
    identity: &PeerCheck,
    req: MirrorRequest,
) -> Result<http::StatusCode, MirrorError> {
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
        .send_request(builder.body(req.body.into_http())?)
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
