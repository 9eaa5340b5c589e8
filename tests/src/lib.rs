//! End-to-end harness: a loopback mesh per test (own 127.x.y.0/24 addresses, certificates minted
//! at test time, OS-chosen ports for the waypoint), built from Istio YAML written by the test.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rustls::pki_types::ServerName;
use waypoint::access_log::Format;
use waypoint::demo::{Bench, BenchOptions};
use waypoint::identity::{ClientConfigs, SpiffeId};

pub use waypoint::demo::TRUST_DOMAIN;
pub use waypoint::sim;

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

/// A raw h2 connection to the waypoint with a client config of the test's choosing.
pub async fn raw_h2(
    waypoint: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> anyhow::Result<h2::client::SendRequest<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(waypoint).await?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(ServerName::IpAddress(waypoint.ip().into()), tcp)
        .await?;
    let (send, conn) = h2::client::handshake(tls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send.ready().await?)
}

/// A client TLS config carrying `cert`, expecting the waypoint's identity.
pub fn client_tls(
    cert: waypoint::identity::WorkloadCert,
    waypoint_id: &SpiffeId,
) -> Arc<rustls::ClientConfig> {
    ClientConfigs::new(cert)
        .for_peer(waypoint_id)
        .expect("client config")
}
