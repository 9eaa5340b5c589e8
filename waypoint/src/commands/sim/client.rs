//! The client side of a ztunnel: opens HBONE tunnels to the waypoint with a client workload's
//! identity and speaks HTTP inside them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use crate::control::identity::{ClientConfigs, SpiffeId, WorkloadCert};
use crate::transport::hbone::{ConnectError, H2Stream, HboneClient};

pub struct ZtunnelClient {
    hbone: HboneClient,
    pub waypoint: SocketAddr,
    pub waypoint_identity: SpiffeId,
    /// `forwarded: for=` address of the simulated client pod.
    pub source: SocketAddr,
}

pub type Http1 = http1::SendRequest<Full<Bytes>>;

impl ZtunnelClient {
    pub fn new(cert: WorkloadCert, waypoint: SocketAddr, waypoint_identity: SpiffeId) -> Self {
        Self {
            hbone: HboneClient::new(Arc::new(ClientConfigs::new(cert)), Duration::from_secs(5)),
            waypoint,
            waypoint_identity,
            source: "10.244.1.5:40280".parse().expect("static"),
        }
    }

    /// `CONNECT dst` to the waypoint, with the headers ztunnel sends.
    pub async fn tunnel(&self, dst: SocketAddr) -> Result<H2Stream, ConnectError> {
        let headers = [
            ("forwarded", format!("for=\"{}\"", self.source)),
            ("baggage", "k8s.namespace.name=default,k8s.deployment.name=productpage-v1,service.name=productpage,service.version=v1".to_string()),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".to_string()),
        ];
        let (stream, _slot) = self
            .hbone
            .open(
                self.waypoint,
                &self.waypoint_identity.clone().into(),
                dst,
                &headers,
            )
            .await?;
        Ok(stream)
    }

    /// A tunnel carrying an HTTP/1.1 keep-alive session.
    pub async fn http1(&self, dst: SocketAddr) -> anyhow::Result<Http1> {
        let stream = self.tunnel(dst).await?;
        let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(send)
    }

    pub fn hbone(&self) -> &HboneClient {
        &self.hbone
    }
}

/// Send a GET and collect the whole response.
pub async fn get(
    send: &mut Http1,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(http::response::Parts, Bytes)> {
    request(send, http::Method::GET, host, path, headers).await
}

/// One request with any method and an empty body; the response's head and whole body.
pub async fn request(
    send: &mut Http1,
    method: http::Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<(http::response::Parts, Bytes)> {
    send.ready().await?;
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = send
        .send_request(req.body(Full::new(Bytes::new()))?)
        .await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((parts, body))
}
