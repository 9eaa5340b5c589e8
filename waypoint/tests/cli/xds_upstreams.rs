//! `waypoint run --xds` reaching upstreams the way istiod describes them
//! (routing/tests/fixtures/xds/upstreams.json laid over bookinfo.json): a waypoint whose
//! `connect_originate` names another namespace (`istio-waypoint`) still reaches pods in
//! `default` over HBONE (any-of SAN matchers) and logs the pod's real identity; a plain
//! `socket_address` endpoint is dialled directly (the app sees plain HTTP on TCP, no CONNECT);
//! a DestinationRule SIMPLE TLS cluster originates TLS with its SNI to an in-test TLS server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::common::*;
use crate::xds::{bookinfo, serve, wait_ack};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint::control::identity::Ca;
use waypoint_tests::{sim, spiffe, xds_run_command, Net, TRUST_DOMAIN};
use xds_client::testing::{AdsServer, AdsServerOptions, TestPki};

const OVERLAY: &str = include_str!("../../../routing/tests/fixtures/xds/upstreams.json");
const TOKEN: &str = "istio-token-for-the-test";
const PRODUCTPAGE: &str = "inbound-vip|9080|http|productpage.default.svc.cluster.local";
const RATINGS: &str = "inbound-vip|9080|http|ratings.default.svc.cluster.local";

/// What a plain upstream saw: the first bytes of each connection and the SNI (TLS only).
#[derive(Default)]
pub(crate) struct Seen {
    pub(crate) first_bytes: Vec<String>,
    sni: Vec<Option<String>>,
}

/// An HTTP/1.1 app outside the mesh on `addr` (TLS when `tls` is given): answers 200 with
/// `x-pod: <name>` and records what it saw.
pub(crate) async fn plain_app(
    addr: SocketAddr,
    name: &'static str,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Arc<Mutex<Seen>> {
    let seen = Arc::new(Mutex::new(Seen::default()));
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (record, tls) = (record.clone(), tls.clone());
            tokio::spawn(async move {
                let mut io: Box<dyn Io> = match tls {
                    Some(cfg) => {
                        let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await else {
                            return;
                        };
                        let sni = s.get_ref().1.server_name().map(String::from);
                        record.lock().unwrap().sni.push(sni);
                        Box::new(s)
                    }
                    None => Box::new(tcp),
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match io.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                record.lock().unwrap().first_bytes.push(head);
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nx-pod: {name}\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                );
                let _ = io.write_all(resp.as_bytes()).await;
                let _ = io.shutdown().await;
            });
        }
    });
    seen
}

trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// A CA and a server certificate for `ratings.example.com`, minted now.
fn ratings_tls() -> (String, Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["ratings.example.com".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(waypoint::control::identity::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
    (ca_cert.pem(), Arc::new(config))
}

/// The overlay's resources on this test's net, the CA file path filled in.
fn overlay(net: &Net, ca_path: &str) -> Vec<Value> {
    let text = OVERLAY
        .replace("example.org", TRUST_DOMAIN)
        .replace("/etc/certs/ratings-ca.pem", ca_path)
        .replace("10.244.1.6", &net.ip(6).to_string())
        .replace("10.0.0.5", &net.ip(3).to_string());
    let doc: Value = serde_json::from_str(&text).unwrap();
    doc["resources"].as_array().unwrap().clone()
}

fn name_of(v: &Value) -> &str {
    v.get("name")
        .or_else(|| v.get("cluster_name"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Replace (by name) or add `resources` in `doc` (a JSON list).
fn lay_over(doc: &mut Value, resources: Vec<Value>) {
    let list = doc.as_array_mut().unwrap();
    for r in resources {
        let ty = r["@type"].clone();
        list.retain(|o| !(o["@type"] == ty && name_of(o) == name_of(&r)));
        list.push(r);
    }
}

/// An EDS assignment for `cluster` with one plain `socket_address` endpoint.
fn plain_eds(cluster: &str, addr: SocketAddr) -> Value {
    serde_json::json!({
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": cluster,
        "endpoints": [{"locality": {}, "lb_endpoints": [{
            "endpoint": {"address": {"socket_address": {
                "address": addr.ip().to_string(), "port_value": addr.port()}}},
            "metadata": {"filter_metadata": {"istio": {"workload": "vm;default;app;v1;Kubernetes"}}},
            "load_balancing_weight": 1, "health_status": "HEALTHY"}]}]
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_upstreams_cross_namespace_direct_and_tls() {
    let net = Net::new();
    let ca = Ca::new("xds upstreams mesh").unwrap();
    let dir = temp_dir("xds-upstreams");
    // The waypoint runs in istio-waypoint and serves pods in default.
    let wp_id =
        waypoint::control::identity::SpiffeId::new(TRUST_DOMAIN, "istio-waypoint", "waypoint");
    ca.issue(&wp_id).unwrap().write_to(&dir).unwrap();
    let pki = TestPki::new();
    let server = AdsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        &pki,
        AdsServerOptions::with_token(TOKEN),
    )
    .await
    .unwrap();
    std::fs::write(dir.join("istiod-root.pem"), pki.root_pem()).unwrap();
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let (ratings_ca, ratings_tls) = ratings_tls();
    let ca_path = dir.join("ratings-ca.pem");
    std::fs::write(&ca_path, ratings_ca).unwrap();

    let _ratings = Pod::start_as(&net, &ca, 6, "ratings-v1", "bookinfo-ratings").await;
    let plain_addr = SocketAddr::new(net.ip(2), 9080);
    let plain = plain_app(plain_addr, "plain-productpage", None).await;
    let tls_addr = SocketAddr::new(net.ip(3), 9080);
    let tls_seen = plain_app(tls_addr, "tls-ratings", Some(ratings_tls)).await;

    // Step 1: cross-namespace connect_originate; ratings as istiod would send it for the HBONE
    // pod only (the TLS cluster and the mixed EDS come in step 2); productpage dialled directly.
    let mut doc = bookinfo(&net);
    let over = overlay(&net, ca_path.to_str().unwrap());
    let connect_originate: Vec<Value> = over
        .iter()
        .filter(|r| name_of(r) == "connect_originate")
        .cloned()
        .collect();
    lay_over(&mut doc, connect_originate);
    lay_over(&mut doc, vec![plain_eds(PRODUCTPAGE, plain_addr)]);
    let first = serve(&server, &doc);

    let mut cmd = xds_run_command(&binary(), &server.address(), &dir, "waypoint-5f6d7c-abcde");
    cmd.env("WAYPOINT_ACCESS_LOG_FORMAT", "json");
    let (mut child, addrs, stderr) = spawn_announcing(&mut cmd, 4);
    let _logs = collect(stderr);
    let access = collect(child.0.stdout.take().unwrap());
    poll_until(addrs["admin"], "/ready", |s, _| s == 200).await;
    wait_ack(&server, &first).await;
    let waypoint = addrs["hbone"];

    // (a) HBONE to a pod in another namespace than the waypoint's; its real identity logged.
    let mut send = client_to(&ca, waypoint, &wp_id, "10.96.0.11:9080").await;
    let (parts, _) = sim::get(&mut send, "ratings:9080", "/ratings/1", &[])
        .await
        .unwrap();
    assert_eq!(parts.status, 200, "cross-namespace HBONE upstream refused");
    assert_eq!(parts.headers["x-pod"], "ratings-v1");
    let line = access_line(&access, "ratings:9080").await;
    assert_eq!(
        line["destination_principal"],
        spiffe("bookinfo-ratings").to_string(),
        "{line}"
    );

    // (b) A plain socket_address endpoint: a direct TCP connection, plain HTTP, no CONNECT.
    let mut send = client_to(&ca, waypoint, &wp_id, "10.96.0.10:9080").await;
    let (parts, _) = sim::get(&mut send, "productpage:9080", "/productpage", &[])
        .await
        .unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-pod"], "plain-productpage");
    let first_bytes = plain.lock().unwrap().first_bytes.clone();
    assert_eq!(first_bytes.len(), 1);
    assert!(
        first_bytes[0].starts_with("GET /productpage HTTP/1.1"),
        "{first_bytes:?}"
    );
    let line = access_line(&access, "productpage:9080").await;
    assert_eq!(line["upstream_host"], plain_addr.to_string());

    // (c) ratings with DestinationRule SIMPLE TLS: only the plain endpoint, so TLS originated
    // directly to it with the rule's SNI, verified against its CA and subjectAltNames.
    let mut ratings_only = over.clone();
    for r in ratings_only.iter_mut() {
        if name_of(r) == RATINGS && r.get("cluster_name").is_some() {
            *r = plain_eds(RATINGS, tls_addr);
        }
    }
    lay_over(&mut doc, ratings_only);
    let pushed = serve(&server, &doc);
    wait_ack(&server, &pushed).await;
    let mut send = client_to(&ca, waypoint, &wp_id, "10.96.0.11:9080").await;
    let (parts, _) = sim::get(&mut send, "ratings:9080", "/ratings/2", &[])
        .await
        .unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-pod"], "tls-ratings");
    let seen = tls_seen.lock().unwrap();
    assert_eq!(seen.sni, vec![Some("ratings.example.com".to_string())]);
    assert!(seen.first_bytes[0].starts_with("GET /ratings/2 HTTP/1.1"));
}
