//! End-to-end harness: a loopback mesh per test (own 127.x.y.0/24 addresses, certificates minted
//! at test time, OS-chosen ports for the waypoint), built from Istio YAML written by the test.

pub mod dns;
pub mod load;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use waypoint::commands::demo::{Bench, BenchOptions};
use waypoint::control::identity::{ClientConfigs, SpiffeId};
use waypoint::telemetry::access_log::Format;

pub use waypoint::commands::demo::TRUST_DOMAIN;
pub use waypoint::commands::sim;

static NEXT_NET: AtomicU8 = AtomicU8::new(0);

/// A /24 of loopback addresses no other test in this process uses.
#[derive(Debug, Clone, Copy)]
pub struct Net(u8, u8);

impl Net {
    pub fn new() -> Self {
        let n = NEXT_NET.fetch_add(1, Ordering::Relaxed);
        Net(100 + (std::process::id() % 100) as u8, n)
    }

    pub fn ip(&self, host: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.0, self.1, host))
    }

    /// Replace `@1`..`@9` in a YAML template with this net's addresses.
    pub fn render(&self, template: &str) -> String {
        (1..=9).rev().fold(template.to_string(), |s, i| {
            s.replace(&format!("@{i}"), &self.ip(i).to_string())
        })
    }
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

pub fn spiffe(sa: &str) -> SpiffeId {
    SpiffeId::new(TRUST_DOMAIN, "default", sa)
}

/// A ServiceEntry `name` with VIP 10.<vip>.0.1, one port and a workloadSelector app=name.
pub fn service_yaml(name: &str, vip: &str, port: u16, port_name: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\nspec:\n  hosts: [{name}.default.svc.cluster.local]\n  addresses: [{vip}]\n  ports:\n  - number: {port}\n    name: {port_name}\n  workloadSelector:\n    labels:\n      app: {name}\n---\n"
    )
}

pub fn workload_yaml(name: &str, ip: &str, app: &str, version: &str, sa: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata:\n  name: {name}\nspec:\n  address: {ip}\n  serviceAccount: {sa}\n  labels:\n    app: {app}\n    version: {version}\n---\n"
    )
}

/// bookinfo's reviews service (VIP 10.0.0.10:9080) and its pods v1..v3 at @1..@3.
pub fn reviews_service_and_pods() -> String {
    let mut y = service_yaml("reviews", "10.0.0.10", 9080, "http");
    for (i, v) in ["v1", "v2", "v3"].iter().enumerate() {
        y += &workload_yaml(
            &format!("reviews-{v}"),
            &format!("@{}", i + 1),
            "reviews",
            v,
            "bookinfo-reviews",
        );
    }
    y
}

/// bookinfo's reviews service (VIP 10.0.0.10:9080) with pods v1..v3 at @1..@3, a DestinationRule
/// with subsets v1..v3 and load balancer `lb`, and a VirtualService with `vs_routes` (if any).
pub fn reviews_yaml(lb: &str, vs_routes: &str) -> String {
    let mut y = reviews_service_and_pods();
    y += &format!(
        "apiVersion: networking.istio.io/v1alpha3\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      simple: {lb}\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n  - name: v3\n    labels:\n      version: v3\n---\n"
    );
    if !vs_routes.is_empty() {
        y += &format!("apiVersion: networking.istio.io/v1alpha3\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts:\n    - reviews\n  http:\n{vs_routes}");
    }
    y
}

/// A VirtualService `http` entry splitting over reviews subsets by weight.
pub fn weighted_routes(weights: &[(&str, u32)]) -> String {
    let mut s = "  - route:\n".to_string();
    for (subset, w) in weights {
        s += &format!("    - destination:\n        host: reviews\n        subset: {subset}\n      weight: {w}\n");
    }
    s
}

pub struct Mesh {
    pub net: Net,
    pub bench: Bench,
}

impl Mesh {
    pub async fn start(yaml: &str) -> Mesh {
        Self::start_with(yaml, |_, _| {}).await
    }

    /// Start from a YAML template (see [`Net::render`]); `tweak` may mark pods down or give
    /// them another identity.
    pub async fn start_with(yaml: &str, tweak: impl FnOnce(&Net, &mut BenchOptions)) -> Mesh {
        let net = Net::new();
        let files = vec![("test.yaml".to_string(), net.render(yaml))];
        let snapshot =
            routing::load_str(&files, TRUST_DOMAIN).unwrap_or_else(|e| panic!("test config: {e}"));
        let mut opts = BenchOptions {
            format: Format::Json,
            ..Default::default()
        };
        tweak(&net, &mut opts);
        let bench = Bench::start_with(snapshot, opts)
            .await
            .expect("mesh starts");
        Mesh { net, bench }
    }

    /// A workload certificate for service account `sa`, from the mesh's CA.
    pub fn cert(&self, sa: &str) -> waypoint::control::identity::WorkloadCert {
        self.bench
            .ca
            .issue(&spiffe(sa))
            .expect("certificate from the test CA")
            .workload
    }

    /// The simulated node (HBONE terminator) of the pod at `@n`.
    pub fn node(&self, n: u8) -> &sim::PodHandle {
        let ip = self.net.ip(n);
        self.bench
            .pods
            .iter()
            .find(|p| p.hbone_addr.ip() == ip)
            .unwrap_or_else(|| panic!("no node at {ip}"))
    }

    pub fn client(&self) -> sim::ZtunnelClient {
        self.bench
            .client(&spiffe("productpage"))
            .expect("client cert")
    }

    pub fn access_log(&self) -> Vec<serde_json::Value> {
        self.bench
            .access_lines
            .lock()
            .iter()
            .map(|l| serde_json::from_str(l).expect("JSON access log line"))
            .collect()
    }

    pub fn tunnels_opened(&self) -> u64 {
        self.bench
            .app
            .pool
            .client()
            .stats
            .tunnels_opened
            .load(Ordering::Relaxed)
    }

    pub fn app(&self, name: &str) -> &sim::AppHandle {
        self.bench
            .apps
            .iter()
            .find(|a| a.name == name)
            .expect("app exists")
    }

    /// Wait (bounded) until the access log holds `n` lines; logging runs after the response.
    pub async fn wait_for_log_lines(&self, n: usize) -> Vec<serde_json::Value> {
        for _ in 0..200 {
            if self.bench.access_lines.lock().len() >= n {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        self.access_log()
    }
}

/// Wait, bounded, until `cond` holds: for states with no event to wait on (a connection's end,
/// a pool's idle count). Fails the test naming `what` when `within` passes first.
pub async fn eventually(what: &str, within: std::time::Duration, cond: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A raw h2 connection to the waypoint with a client config of the test's choosing.
pub async fn raw_h2(
    waypoint: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
    Ok(raw_h2_with(waypoint, config, &h2::client::Builder::new())
        .await?
        .send)
}

/// A raw h2 client connection made with the test's `builder` (windows, limits).
pub struct RawH2 {
    pub send: h2::client::SendRequest<Bytes>,
    pub ping: h2::PingPong,
    /// The connection task: finished once the connection has ended.
    pub driver: tokio::task::JoinHandle<()>,
}

/// [`raw_h2`] with the test's h2 `builder`, keeping the connection's ping handle and task.
pub async fn raw_h2_with(
    waypoint: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    builder: &h2::client::Builder,
) -> anyhow::Result<RawH2> {
    let tcp = tokio::net::TcpStream::connect(waypoint).await?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::IpAddress(waypoint.ip().into()), tcp)
        .await?;
    let (send, mut conn) = builder.handshake::<_, Bytes>(tls).await?;
    let ping = conn
        .ping_pong()
        .ok_or_else(|| anyhow::anyhow!("ping_pong taken"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(RawH2 {
        send: send.ready().await?,
        ping,
        driver,
    })
}

/// A client TLS config carrying `cert`, expecting the waypoint's identity.
pub fn client_tls(
    cert: waypoint::control::identity::WorkloadCert,
    waypoint_id: &SpiffeId,
) -> Arc<rustls::ClientConfig> {
    ClientConfigs::new(cert)
        .for_peer(&waypoint_id.clone().into())
        .expect("client config")
}

/// The admin endpoints of a [`Mesh`]'s waypoint, served on 127.0.0.1:0 while this lives.
pub struct AdminEndpoint {
    pub addr: SocketAddr,
    _stop: tokio::sync::watch::Sender<bool>,
}

impl Mesh {
    pub async fn admin(&self) -> AdminEndpoint {
        let admin = Arc::new(waypoint::telemetry::admin::Admin {
            telemetry: self.bench.app.telemetry.clone(),
            logs: None,
            access_log: None,
            process: serde_json::json!({"harness": true}),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("admin listener");
        let addr = listener.local_addr().expect("admin addr");
        let (stop, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(admin.serve(listener, waypoint::telemetry::admin::Role::Admin, watch));
        AdminEndpoint { addr, _stop: stop }
    }
}

/// One plain HTTP/1.1 request (`Connection: close`); returns status and body.
pub async fn http_request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tcp.read_to_end(&mut raw),
    )
    .await
    .expect("response within 10s")
    .expect("read response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

/// A parsed `/stats/prometheus` exposition (strict OpenMetrics parser).
pub struct Scrape(
    openmetrics_parser::MetricsExposition<
        openmetrics_parser::OpenMetricsType,
        openmetrics_parser::OpenMetricsValue,
    >,
);

pub type Sample = openmetrics_parser::Sample<openmetrics_parser::OpenMetricsValue>;

/// Scrape `/stats/prometheus` and parse it; malformed exposition fails the test.
pub async fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = http_request(addr, "GET", "/stats/prometheus").await;
    assert_eq!(status, 200, "{body}");
    Scrape(
        openmetrics_parser::openmetrics::parse_openmetrics(&body)
            .unwrap_or_else(|e| panic!("unparsable exposition: {e:?}\n{body}")),
    )
}

impl Scrape {
    /// Samples of metric family `family` (the name in `# TYPE`, e.g. `istio_requests`) whose
    /// labels include every pair of `labels`.
    pub fn samples(&self, family: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        let Some(f) = self.0.families.get(family) else {
            return Vec::new();
        };
        f.iter_samples()
            .filter(|s| {
                let set = s.get_labelset().expect("sample bound to its family");
                labels
                    .iter()
                    .all(|(k, v)| set.get_label_value(k) == Some(*v))
            })
            .collect()
    }

    fn one(&self, family: &str, labels: &[(&str, &str)]) -> &Sample {
        let found = self.samples(family, labels);
        assert_eq!(
            found.len(),
            1,
            "{family} {labels:?}: {:#?}",
            self.samples(family, &[])
        );
        found[0]
    }

    /// The value of the one counter or gauge sample of `family` with `labels`.
    pub fn value(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        use openmetrics_parser::OpenMetricsValue as V;
        match &self.one(family, labels).value {
            V::Counter(c) => c.value.as_f64(),
            V::Gauge(n) | V::Unknown(n) => n.as_f64(),
            other => panic!("{family} is not a scalar: {other:?}"),
        }
    }

    /// (count, sum, number of buckets) of the one histogram sample of `family` with `labels`.
    pub fn histogram(&self, family: &str, labels: &[(&str, &str)]) -> (u64, f64, usize) {
        match &self.one(family, labels).value {
            openmetrics_parser::OpenMetricsValue::Histogram(h) => (
                h.count.unwrap_or(0),
                h.sum.as_ref().map_or(0.0, |s| s.as_f64()),
                h.buckets.len(),
            ),
            other => panic!("{family} is not a histogram: {other:?}"),
        }
    }

    /// Every (family, label name, label value) in the exposition.
    pub fn labels(&self) -> Vec<(String, String, String)> {
        let mut out = Vec::new();
        for (name, f) in &self.0.families {
            for s in f.iter_samples() {
                for (k, v) in s.get_labelset().expect("bound").iter() {
                    out.push((name.clone(), k.clone(), v.clone()));
                }
            }
        }
        out
    }
}

/// The serial of the certificate the waypoint presents to a new mTLS handshake.
pub async fn presented_serial(
    waypoint: SocketAddr,
    client: waypoint::control::identity::WorkloadCert,
    waypoint_id: &SpiffeId,
) -> String {
    let tcp = tokio::net::TcpStream::connect(waypoint)
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(client_tls(client, waypoint_id))
        .connect(ServerName::IpAddress(waypoint.ip().into()), tcp)
        .await
        .expect("mTLS handshake");
    let leaf = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server certificate")
        .clone();
    waypoint::control::identity::serial(&leaf).expect("parsable serial")
}

impl Mesh {
    /// One request to the reviews VIP (10.0.0.10:9080, `Host: reviews:9080`) on a new tunnel;
    /// returns the response head and the whole body.
    pub async fn reviews_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> (http::response::Parts, Bytes) {
        use http_body_util::BodyExt;
        let mut send = self
            .client()
            .http1("10.0.0.10:9080".parse().expect("static"))
            .await
            .expect("tunnel to the reviews VIP");
        send.ready().await.expect("session ready");
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "reviews:9080");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = send
            .send_request(
                req.body(http_body_util::Full::new(Bytes::new()))
                    .expect("valid request"),
            )
            .await
            .expect("response");
        let (parts, body) = resp.into_parts();
        (parts, body.collect().await.expect("body").to_bytes())
    }
}

/// `waypoint run` in xDS mode against `xds_address`, as the xDS tests and the xDS bench start it:
/// istiod's root (`istiod-root.pem`), the token (`token`) and the waypoint's certificate files
/// (as `MintedCert::write_to` writes them) in `dir`; listeners on OS-chosen loopback ports; the
/// pod environment istiod's waypoint template sets, for pod `pod_name` in namespace `default`.
pub fn xds_run_command(
    exe: &std::path::Path,
    xds_address: &str,
    dir: &std::path::Path,
    pod_name: &str,
) -> std::process::Command {
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["run", "--listen", "127.0.0.1:0", "--xds", xds_address])
        .arg("--xds-root-ca")
        .arg(dir.join("istiod-root.pem"))
        .arg("--xds-token")
        .arg(dir.join("token"))
        .arg("--cert-chain")
        .arg(dir.join("cert-chain.pem"))
        .arg("--key")
        .arg(dir.join("key.pem"))
        .arg("--trust-bundle")
        .arg(dir.join("root-cert.pem"))
        .args(["--log", "info", "--drain-seconds", "1"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--stats-listen", "127.0.0.1:0"])
        .args(["--health-listen", "127.0.0.1:0"])
        .envs([
            ("POD_NAME", pod_name),
            ("POD_NAMESPACE", "default"),
            ("INSTANCE_IP", "127.0.0.1"),
            ("SERVICE_ACCOUNT", "waypoint"),
            ("ISTIO_META_CLUSTER_ID", "Kubernetes"),
        ]);
    cmd
}

/// What [`reviews_request`] got back.
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

/// One request to bookinfo's reviews VIP (10.0.0.10:9080, `Host: reviews:9080`) through a fresh
/// tunnel of `client`, the whole body read.
pub async fn reviews_request(
    client: &sim::ZtunnelClient,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Reply {
    reviews_request_with_body(client, method, path, headers, Bytes::new()).await
}

/// [`reviews_request`] with a request body (sent with its content-length).
pub async fn reviews_request_with_body(
    client: &sim::ZtunnelClient,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Reply {
    use http_body_util::BodyExt;
    let mut http = client
        .http1("10.0.0.10:9080".parse().expect("static"))
        .await
        .expect("tunnel to reviews");
    http.ready().await.expect("tunnel ready");
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "reviews:9080");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = http
        .send_request(req.body(http_body_util::Full::new(body)).expect("request"))
        .await
        .expect("response");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}
