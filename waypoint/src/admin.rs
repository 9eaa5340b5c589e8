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
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use pingora_core::server::ShutdownWatch;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::debug;

use crate::access_log::AccessLog;
use crate::logging::LogControl;
use crate::metrics::CONTENT_TYPE;
use crate::status::Telemetry;

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

type Body = Full<Bytes>;

fn reply(code: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static response parts")
}

fn text(code: StatusCode, body: impl Into<String>) -> Response<Body> {
    let mut body = body.into();
    if !body.ends_with('\n') {
        body.push('\n');
    }
    reply(code, "text/plain; charset=utf-8", body)
}

fn json_reply(value: &serde_json::Value) -> Response<Body> {
    let body =
        serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
    reply(StatusCode::OK, "application/json", body)
}

fn query_pairs(req: &Request<Incoming>) -> Vec<(String, String)> {
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
        if req.method() != Method::POST {
            return text(
                StatusCode::OK,
                format!(
                    "active filter: {}\nchange with POST /logging?level=<level> or ?<target>=<level>",
                    logs.filter()
                ),
            );
        }
        match logs.apply(&query_pairs(req)) {
            Ok(filter) => {
                tracing::info!(%filter, "log filter changed via admin");
                text(StatusCode::OK, format!("active filter: {filter}"))
            }
            Err(e) => text(StatusCode::BAD_REQUEST, e),
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
            (Role::Admin, "/config_dump") => self.config_dump(),
            (Role::Admin, "/logging") => self.logging(req),
            (Role::Admin, "/access_log") => self.access_log(req),
            (Role::Admin, "/splits") => self.splits(req),
            (Role::Admin, "/") => text(
                StatusCode::OK,
                "waypoint admin: /ready /config_dump /logging /access_log /splits /stats/prometheus",
            ),
            _ => text(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
        }
    }

    /// Serve `role`'s endpoints on `listener` until shutdown.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        role: Role,
        mut shutdown: ShutdownWatch,
    ) {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        debug!(error = %e, "admin accept failed");
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let resp = admin.handle(role, &req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await
                {
                    debug!(%peer, error = %e, "admin connection ended");
                }
            });
        }
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
