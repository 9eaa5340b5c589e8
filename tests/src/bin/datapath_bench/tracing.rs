//! The tracing phase: the waypoint samples every request (a Telemetry at 100 %) and exports its
//! spans as Zipkin JSON to a sink in this process, which answers 202 and counts them. The
//! phase's waypoint CPU per request, against the same load untraced, is what tracing costs.

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// A Zipkin collector that takes every POST and counts the spans in it.
pub(super) struct ZipkinSink {
    pub(super) addr: SocketAddr,
    pub(super) spans: Arc<AtomicU64>,
}

impl ZipkinSink {
    pub(super) async fn start() -> anyhow::Result<ZipkinSink> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let spans = Arc::new(AtomicU64::new(0));
        let count = spans.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let count = count.clone();
                            async move {
                                let body = req.into_body().collect().await?.to_bytes();
                                let n = body
                                    .windows(b"\"traceId\"".len())
                                    .filter(|w| *w == b"\"traceId\"")
                                    .count();
                                count.fetch_add(n as u64, Ordering::Relaxed);
                                let mut resp = hyper::Response::new(Full::new(Bytes::new()));
                                *resp.status_mut() = hyper::StatusCode::ACCEPTED;
                                Ok::<_, hyper::Error>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Ok(ZipkinSink { addr, spans })
    }

    pub(super) fn spans(&self) -> u64 {
        self.spans.load(Ordering::Relaxed)
    }
}

/// meshConfig naming the sink as the `zipkin` provider (given to both waypoints).
pub(super) fn mesh_yaml(sink: SocketAddr) -> String {
    format!(
        "extensionProviders:\n- name: zipkin\n  zipkin: {{service: {}, port: {}}}\n",
        sink.ip(),
        sink.port()
    )
}

const TELEMETRY: &str = "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: bench-tracing, namespace: istio-system}
spec:
  tracing:
  - providers: [{name: zipkin}]
    randomSamplingPercentage: 100
";

/// Switches tracing on (`on`) or off in the shared config directory and waits (bounded: 15 s)
/// until the waypoint serves the change.
pub(super) async fn set_tracing(mesh: &Mesh, on: bool) -> anyhow::Result<()> {
    let file = mesh.dir.join("config/tracing.yaml");
    if on {
        std::fs::write(&file, TELEMETRY)?;
    } else {
        std::fs::remove_file(&file)?;
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = waypoint_tests::http_request(
            mesh.waypoint_admin,
            "GET",
            "/config_dump?format=waypoint",
        )
        .await;
        let dump: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let tracer = &dump["config"]["snapshot"]["telemetry"]["tracing"]["provider"];
        if (tracer == "zipkin") == on {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the waypoint did not apply tracing {on} within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded: 10 s) until the sink has `want` spans more than `before`; returns how many
/// arrived.
pub(super) async fn spans_reaching(sink: &ZipkinSink, before: u64, want: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    while sink.spans() - before < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sink.spans() - before
}
