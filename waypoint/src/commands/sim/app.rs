//! A workload "app" on a real TCP port: HTTP/1.1 and h2c (gRPC included), WebSocket-style
//! upgrades echoed back, or a plain TCP echo. Counts its connections and requests.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// What the app answers: who it is and what it saw.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Echo {
    pub pod: String,
    pub method: String,
    pub path: String,
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
pub struct AppStats {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    /// Chunks of `x-response-chunks` bodies handed to the connection.
    pub chunks_sent: AtomicU64,
}

pub struct AppHandle {
    pub addr: SocketAddr,
    pub name: String,
    pub stats: Arc<AppStats>,
    pub last_headers: Arc<Mutex<Option<HeaderMap>>>,
    /// The body of the last plain HTTP request (not upgrades or gRPC).
    pub last_body: Arc<Mutex<Option<Bytes>>>,
    task: JoinHandle<()>,
}

impl Drop for AppHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppKind {
    /// HTTP/1.1 or h2c (auto-detected), upgrades echoed.
    Http,
    /// Raw TCP echo.
    TcpEcho,
}

pub async fn start_app(addr: SocketAddr, name: &str, kind: AppKind) -> std::io::Result<AppHandle> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let stats = Arc::new(AppStats::default());
    let last_headers = Arc::new(Mutex::new(None));
    let last_body = Arc::new(Mutex::new(None));
    let (st, lh, pod) = (
        stats.clone(),
        (last_headers.clone(), last_body.clone()),
        name.to_string(),
    );
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            st.connections.fetch_add(1, Ordering::Relaxed);
            let (st, lh, pod) = (st.clone(), lh.clone(), pod.clone());
            tokio::spawn(async move {
                match kind {
                    AppKind::TcpEcho => tcp_echo(tcp).await,
                    AppKind::Http => {
                        let svc = hyper::service::service_fn(move |req| {
                            handle(req, pod.clone(), st.clone(), lh.clone())
                        });
                        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                            .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                            .await;
                    }
                }
            });
        }
    });
    Ok(AppHandle {
        addr,
        name: name.to_string(),
        stats,
        last_headers,
        last_body,
        task,
    })
}

async fn tcp_echo(mut tcp: tokio::net::TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if tcp.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

/// The app's answer to `x-reset-on`: hyper drops the connection without a response.
#[derive(Debug)]
pub struct ResetRequested;

impl std::fmt::Display for ResetRequested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset requested by x-reset-on")
    }
}

impl std::error::Error for ResetRequested {}

/// Where the app records the last request's headers and body.
type LastSeen = (Arc<Mutex<Option<HeaderMap>>>, Arc<Mutex<Option<Bytes>>>);

async fn handle(
    req: Request<Incoming>,
    pod: String,
    stats: Arc<AppStats>,
    (last, last_body): LastSeen,
) -> Result<Response<Body>, ResetRequested> {
    stats.requests.fetch_add(1, Ordering::Relaxed);
    *last.lock() = Some(req.headers().clone());
    // `x-delay-ms: N` makes the app answer N ms later (bounded to 60 s): slow endpoints on demand;
    // with `x-delay-on: <pod>` only that pod is slow.
    let delayed_here = req
        .headers()
        .get("x-delay-on")
        .is_none_or(|v| v.as_bytes() == pod.as_bytes());
    if let Some(ms) = req
        .headers()
        .get("x-delay-ms")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .filter(|_| delayed_here)
    {
        tokio::time::sleep(std::time::Duration::from_millis(ms.min(60_000))).await;
    }
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let echo = Echo {
        pod: pod.clone(),
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
        headers,
    };
    // `x-fail-on: <pod>`: that pod answers 500 (an unhealthy endpoint on demand).
    if req
        .headers()
        .get("x-fail-on")
        .is_some_and(|v| v.as_bytes() == pod.as_bytes())
    {
        return Ok(Response::builder()
            .status(StatusCode::INTERNAL_SERVER_ERROR)
            .header("x-pod", pod)
            .body(full("failing on request"))
            .expect("valid response"));
    }
    let is_grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if req.headers().contains_key(http::header::UPGRADE) {
        return Ok(upgrade(req));
    }
    if is_grpc {
        return Ok(grpc_echo(req, pod).await);
    }
    // `x-reset-on: <pod>`: that pod reads the whole request, then drops the connection without
    // answering (a reset after the request was sent).
    let reset_here = req
        .headers()
        .get("x-reset-on")
        .is_some_and(|v| v.as_bytes() == pod.as_bytes());
    match req.into_body().collect().await {
        Ok(_) if reset_here => return Err(ResetRequested),
        Ok(body) => *last_body.lock() = Some(body.to_bytes()),
        Err(_) => {
            *last_body.lock() = None;
            return Ok(Response::builder()
                .status(StatusCode::BAD_REQUEST)
                .header("x-pod", pod)
                .body(full("request body aborted"))
                .expect("valid response"));
        }
    }
    // `x-response-chunks: N`: a body of N one-byte chunks (bounded to 1 M), one per millisecond:
    // a chatty streaming response that reaches the client in tiny HTTP/2 frames.
    if let Some(n) = echo
        .headers
        .get("x-response-chunks")
        .and_then(|v| v.parse::<u64>().ok())
    {
        let body = paced(
            b"x",
            n.min(1 << 20),
            std::time::Duration::from_millis(1),
            stats.clone(),
        );
        return Ok(Response::builder()
            .header("x-pod", pod)
            .body(body)
            .expect("valid response"));
    }
    // `x-trickle-ms: N`: the response header at once, then a 1 KiB chunk every N ms (at least
    // 1) for 60 s: a response that is still streaming when something cuts it.
    if let Some(ms) = echo
        .headers
        .get("x-trickle-ms")
        .and_then(|v| v.parse::<u64>().ok())
    {
        let body = paced(
            &[b'x'; 1024],
            (60_000 / ms.max(1)).max(1),
            std::time::Duration::from_millis(ms.max(1)),
            stats.clone(),
        );
        return Ok(Response::builder()
            .header("x-pod", pod)
            .body(body)
            .expect("valid response"));
    }
    // `x-response-bytes: N`: a body of N bytes (bounded to 64 MiB) instead of the echo.
    if let Some(n) = echo
        .headers
        .get("x-response-bytes")
        .and_then(|v| v.parse::<usize>().ok())
    {
        return Ok(Response::builder()
            .header("x-pod", pod)
            .body(full(vec![b'x'; n.min(64 << 20)]))
            .expect("valid response"));
    }
    let body = serde_json::to_vec(&echo).expect("echo serializes");
    // `x-http10: length | close`: answer as an HTTP/1.0 server that does not keep connections
    // alive: an `HTTP/1.0` status line, the echo with a content-length (`length`) or delimited
    // by closing the connection (`close`).
    if let Some(mode) = echo.headers.get("x-http10") {
        let body = if mode == "close" {
            let frame = Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(body)));
            http_body_util::StreamBody::new(futures::stream::iter([frame])).boxed()
        } else {
            full(body)
        };
        return Ok(Response::builder()
            .version(http::Version::HTTP_10)
            .header("content-type", "application/json")
            .header("x-pod", pod)
            .header(http::header::CONNECTION, "close")
            .body(body)
            .expect("valid response"));
    }
    Ok(Response::builder()
        .header("content-type", "application/json")
        .header("x-pod", pod)
        .body(full(body))
        .expect("valid response"))
}

/// A body of `count` copies of `chunk`, the first at once and each next one `every` later; each
/// chunk handed to hyper is counted in `stats.chunks_sent`.
fn paced(
    chunk: &'static [u8],
    count: u64,
    every: std::time::Duration,
    stats: Arc<AppStats>,
) -> Body {
    let chunks = futures::stream::unfold(0u64, move |sent| {
        let stats = stats.clone();
        async move {
            if sent == count {
                return None;
            }
            if sent > 0 {
                tokio::time::sleep(every).await;
            }
            stats.chunks_sent.fetch_add(1, Ordering::Relaxed);
            let frame = hyper::body::Frame::data(Bytes::from_static(chunk));
            Some((Ok::<_, Infallible>(frame), sent + 1))
        }
    });
    http_body_util::StreamBody::new(chunks).boxed()
}

/// Answer 101 and echo whatever the client sends after the upgrade.
fn upgrade(req: Request<Incoming>) -> Response<Body> {
    let proto = req.headers()[http::header::UPGRADE].clone();
    tokio::spawn(async move {
        if let Ok(upgraded) = hyper::upgrade::on(req).await {
            let mut io = TokioIo::new(upgraded);
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::CONNECTION, "upgrade")
        .header(http::header::UPGRADE, proto)
        .body(full(Bytes::new()))
        .expect("valid response")
}

/// A unary gRPC echo: the reply message is the request message prefixed with the pod name.
async fn grpc_echo(req: Request<Incoming>, pod: String) -> Response<Body> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let message = body.get(5..).unwrap_or_default();
    let mut reply = pod.into_bytes();
    reply.push(b':');
    reply.extend_from_slice(message);
    let mut framed = BytesMut::with_capacity(reply.len() + 5);
    framed.put_u8(0);
    framed.put_u32(reply.len() as u32);
    framed.put_slice(&reply);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", "0".parse().expect("static"));
    let body = Full::new(framed.freeze())
        .with_trailers(async move { Some(Ok(trailers)) })
        .boxed();
    Response::builder()
        .header("content-type", "application/grpc")
        .body(body)
        .expect("valid response")
}
