//! The operator-facing HTTP endpoints, as Istio's proxies lay them out:
//!
//! | listener (default)          | paths                                                        |
//! |-----------------------------|--------------------------------------------------------------|
//! | admin `127.0.0.1:15000`     | `/ready` `/config_dump` `/logging` `/stats/prometheus` `/splits` `/access_log` |
//! | stats `0.0.0.0:15020`       | `/stats/prometheus` `/healthz/ready`                         |
//! | health `0.0.0.0:15021`      | `/healthz/ready`                                             |
//!
//! Changes (`/logging`, `/access_log`) take POST; GET shows the current setting.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use pingora_core::server::ShutdownWatch;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::telemetry::access_log::AccessLog;
use crate::telemetry::envoy_admin;
use crate::telemetry::logging::LogControl;
use crate::telemetry::metrics::CONTENT_TYPE;
use crate::telemetry::status::Telemetry;
use crate::transport::listen::ListenerStats;

/// Which set of endpoints a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Stats,
    Health,
}

pub struct Admin {
    pub telemetry: Telemetry,
    pub logs: Option<Arc<LogControl>>,
    pub access_log: Option<Arc<AccessLog>>,
    /// The process's own configuration (flags), shown first in `/config_dump`.
    pub process: serde_json::Value,
}

pub(crate) type Body = Full<Bytes>;

fn reply(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static response parts")
}

pub(crate) fn text(code: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    reply(code, "text/plain; charset=utf-8", body)
}

pub(crate) fn json_reply(value: &serde_json::Value) -> Response<Body> {
    let body =
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    reply(StatusCode::OK, "application/json", body)
}

pub(crate) fn query_pairs(req: &Request<Incoming>) -> Vec<(String, String)> {
    let Some(q) = req.uri().query() else {
        return Vec::new();
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Whether the query has `key=value`.
pub(crate) fn query_has(req: &Request<Incoming>, key: &str, value: &str) -> bool {
    query_pairs(req).iter().any(|(k, v)| k == key && v == value)
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Admin {
    fn ready(&self) -> Response<Body> {
        match self.telemetry.status.readiness() {
            Ok(()) => text(StatusCode::OK, "ready"),
            Err(missing) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready:\n{}", missing.join("\n")),
            ),
        }
    }

    fn config_dump(&self) -> Response<Body> {
        let status = &self.telemetry.status;
        let snapshot = status
            .dataplane()
            .map(|dp| dp.snapshot.load().to_json())
            .unwrap_or(serde_json::Value::Null);
        json_reply(&json!({
            "process": self.process,
            "identity": status.certificate().map(|c| serde_json::to_value(&*c).unwrap_or_default()),
            "config": {
                "status": status.config().map(|c| serde_json::to_value(&*c).unwrap_or_default()),
                "unreadable": status.config_unreadable().iter().map(|u| u.to_string()).collect::<Vec<_>>(),
                "xds": status.xds().map(|x| serde_json::to_value(&x).unwrap_or_default()),
                "snapshot": snapshot,
                // What of the snapshot's `telemetry` could not be applied (a format or filter the
                // data path refused, an export thread that did not start).
                "telemetry_problems": status.telemetry_api.get().map(|t| t.problems.lock().clone()),
            },
            "ready": status.readiness().is_ok(),
        }))
    }

    fn logging(&self, req: &Request<Incoming>) -> Response<Body> {
        let Some(logs) = &self.logs else {
            return text(
                StatusCode::NOT_IMPLEMENTED,
                "log levels are not adjustable in this process",
            );
        };
        let pairs = query_pairs(req);
        if req.method() != Method::POST || pairs.is_empty() {
            // As Envoy lists its loggers (`istioctl proxy-config log`).
            let mut body = String::from("active loggers:\n");
            for (target, level) in logs.loggers() {
                body.push_str(&format!("  {target}: {level}\n"));
            }
            body.push_str(&format!(
                "active filter: {}\nchange with POST /logging?level=<level> or ?<target>=<level>",
                logs.filter()
            ));
            return text(StatusCode::OK, body);
        }
        match logs.apply(&pairs) {
            Ok(filter) => {
                tracing::info!(%filter, "log filter changed via admin");
                text(StatusCode::OK, format!("active filter: {filter}"))
            }
            Err(e) => text(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }

    fn access_log(&self, req: &Request<Incoming>) -> Response<Body> {
        let Some(log) = &self.access_log else {
            return text(StatusCode::NOT_IMPLEMENTED, "no access log in this process");
        };
        if req.method() == Method::POST {
            let pairs = query_pairs(req);
            let rate = pairs.iter().find_map(|(k, v)| match k.as_str() {
                "sample" => Some(v.parse::<f64>().map_err(|_| v.clone())),
                "enabled" => Some(match v.as_str() {
                    "true" | "1" | "on" => Ok(1.0),
                    "false" | "0" | "off" => Ok(0.0),
                    _ => Err(v.clone()),
                }),
                _ => None,
            });
            match rate {
                Some(Ok(r)) if (0.0..=1.0).contains(&r) => {
                    log.set_sample_rate(r);
                    tracing::info!(sample_rate = r, "access log sampling changed via admin");
                }
                Some(Ok(r)) => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        format!("sample must be within 0..=1, got {r}"),
                    )
                }
                Some(Err(v)) => {
                    return text(StatusCode::BAD_REQUEST, format!("cannot use {v:?}"));
                }
                None => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "give sample=<0..1> or enabled=<true|false>",
                    )
                }
            }
        }
        let (written, sampled_out) = log.stats();
        text(
            StatusCode::OK,
            format!(
                "sample rate: {}\nlines written: {written}\nlines sampled out: {sampled_out}\n\
                 lines dropped (stdout reader too slow): {}",
                log.sample_rate(),
                log.dropped()
            ),
        )
    }

    fn splits(&self, req: &Request<Incoming>) -> Response<Body> {
        let report = self.telemetry.splits.report();
        if query_pairs(req)
            .iter()
            .any(|(k, v)| k == "format" && v == "json")
        {
            json_reply(&serde_json::to_value(&report).unwrap_or_default())
        } else {
            text(StatusCode::OK, report.render_text())
        }
    }

    pub fn handle(&self, role: Role, req: &Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        match (role, path) {
            (_, "/healthz/ready") | (Role::Admin, "/ready") => self.ready(),
            (Role::Admin | Role::Stats, "/stats/prometheus" | "/metrics") => reply(
                StatusCode::OK,
                CONTENT_TYPE,
                self.telemetry.metrics.render(),
            ),
            (Role::Admin, "/config_dump") if query_has(req, "format", "waypoint") => {
                self.config_dump()
            }
            (Role::Admin, "/config_dump") => self.envoy_config_dump(req),
            (Role::Admin, "/clusters") => self.clusters(req),
            (Role::Admin, "/stats") => self.stats(req),
            (Role::Admin, "/server_info") => json_reply(&envoy_admin::server_info(
                self.telemetry.status.node(),
                self.server_state(),
                self.telemetry.status.uptime(),
            )),
            (Role::Admin, "/certs") => json_reply(&envoy_admin::certs(
                self.telemetry.status.certificate().as_deref(),
            )),
            (Role::Admin, "/memory") => json_reply(&envoy_admin::memory()),
            (Role::Admin, "/quitquitquit") => self.quit(req),
            (Role::Admin, "/logging") => self.logging(req),
            (Role::Admin, "/access_log") => self.access_log(req),
            (Role::Admin, "/splits") => self.splits(req),
            (Role::Admin, "/ui") => reply(
                StatusCode::OK,
                "text/html; charset=utf-8",
                crate::telemetry::ui::PAGE,
            ),
            (Role::Admin, "/ui/data") => json_reply(&crate::telemetry::ui::data(&self.telemetry)),
            (Role::Admin, "/") => text(
                StatusCode::OK,
                "waypoint admin: /ready /config_dump[?mask=…&include_eds|?format=waypoint] \
                 /clusters[?format=json] /stats[?format=json&filter=…&usedonly] /server_info /certs /memory /quitquitquit (POST) \
                 /logging /access_log /splits /ui /stats/prometheus",
            ),
            _ => text(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
        }
    }

    /// Serve `role`'s endpoints on `listener` until shutdown, with the default
    /// [`EndpointLimits`], counted as listener `admin`, `stats` or `health`.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        role: Role,
        shutdown: ShutdownWatch,
    ) {
        let name = match role {
            Role::Admin => "admin",
            Role::Stats => "stats",
            Role::Health => "health",
        };
        self.serve_with(listener, role, name, EndpointLimits::default(), shutdown)
            .await
    }

    /// Serve `role`'s endpoints on `listener` (counted as listener `name`) until shutdown. Each
    /// listener has its own connection cap, so that a flood of one port leaves the others
    /// answering.
    pub async fn serve_with(
        self: Arc<Self>,
        listener: TcpListener,
        role: Role,
        name: &'static str,
        limits: EndpointLimits,
        mut shutdown: ShutdownWatch,
    ) {
        let listeners = self.telemetry.listeners.clone();
        let stats = listeners.get(name);
        let slots = Arc::new(Semaphore::new(limits.max_connections));
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listeners.accept(name, &listener, &stats) => accepted,
                _ = shutdown.changed() => return,
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                // Closed at once: the descriptor is freed now, not when the peer gives up.
                stats.rejected_full.fetch_add(1, Ordering::Relaxed);
                if let Some(suppressed) = listeners.full_log.allow(name) {
                    warn!(listener = name, %peer, suppressed,
                        "{name} listener has its maximum of {} connections open; closing new \
                         ones",
                        limits.max_connections);
                }
                drop(tcp);
                continue;
            };
            let admin = self.clone();
            let stats = stats.clone();
            tokio::spawn(async move {
                let _slot = slot;
                admin.connection(tcp, peer, role, limits, &stats).await;
            });
        }
    }

    /// One HTTP/1.1 connection: request headers must arrive within the header timeout (which
    /// also bounds the wait between keep-alive requests), and a connection on which nothing is
    /// read or written for the idle timeout is closed.
    async fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: std::net::SocketAddr,
        role: Role,
        limits: EndpointLimits,
        stats: &ListenerStats,
    ) {
        let _open = OpenGuard::new(&stats.open);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched {
            inner: tcp,
            activity: activity.clone(),
        });
        let admin = self.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let resp = admin.handle(role, &req);
            async move { Ok::<_, Infallible>(resp) }
        });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let conn = builder.serve_connection(io, svc);
        tokio::pin!(conn);
        loop {
            let idle_until = activity.last() + limits.idle_timeout;
            tokio::select! {
                // The connection first: after a stall of the whole runtime, bytes that are
                // waiting count as activity before the idle clock is read.
                biased;
                ended = conn.as_mut() => {
                    match ended {
                        Ok(()) => {}
                        Err(e) if e.is_timeout() => {
                            stats.header_timeouts.fetch_add(1, Ordering::Relaxed);
                            debug!(%peer, "admin connection closed: no request headers within {:?}",
                                limits.header_timeout);
                        }
                        Err(e) => debug!(%peer, error = %e, "admin connection ended"),
                    }
                    return;
                }
                _ = tokio::time::sleep_until(idle_until) => {
                    if activity.last() + limits.idle_timeout <= tokio::time::Instant::now() {
                        stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                        debug!(%peer, "admin connection closed: idle for {:?}", limits.idle_timeout);
                        return;
                    }
                }
            }
        }
    }
}

/// What a peer of the admin, stats or health listener may hold (each listener separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointLimits {
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// From the connection's start (and after each response) to a request's complete headers.
    pub header_timeout: Duration,
    /// Nothing read or written for this long closes the connection (a peer that stops reading
    /// a response or sending a body).
    pub idle_timeout: Duration,
}

impl Default for EndpointLimits {
    fn default() -> Self {
        Self {
            max_connections: 256,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        }
    }
}

/// Counts one open connection for as long as it lives.
struct OpenGuard<'a>(&'a AtomicU64);

impl<'a> OpenGuard<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When a connection last moved a byte (milliseconds after it started).
struct Activity {
    start: tokio::time::Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: tokio::time::Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A stream that records when it last read or wrote a byte.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("waypoint%3A%3Aproxy"), "waypoint::proxy");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("é%4"), "é%4");
        assert_eq!(percent_decode("%41"), "A");
    }
}
