//! Files mode: a DestinationRule's `tls` decides how the waypoint dials endpoints outside the
//! mesh (`istio.io/dataplane-mode: none`), through the real `waypoint run`:
//! SIMPLE with the rule's SNI and CA file reaches an in-test TLS server (certificate minted by
//! rcgen for `ext.example.com`); a wrong CA or a wrong subjectAltName is 503, never plaintext;
//! MUTUAL presents the client certificate to a server that requires one; ISTIO_MUTUAL dials a
//! sidecar-like endpoint in Istio mutual TLS with the waypoint's own certificate; a rule with
//! `credentialName` is rejected alone (the others serve) and its host is never dialled in
//! plaintext. `/config_dump` and `waypoint explain` show the transport.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use crate::common::*;
use crate::xds_outbound::{sidecar_app, tls_app};
use crate::xds_upstreams::plain_app;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use serde_json::Value;
use waypoint::control::identity::Ca;
use waypoint_tests::{sim, spiffe, Net};

/// A test CA: its PEM, and an issuer for leaves.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `dns_name`: (chain DER, key DER, chain PEM, key PEM).
    fn leaf(
        &self,
        dns_name: &str,
    ) -> (
        rustls::pki_types::CertificateDer<'static>,
        rustls::pki_types::PrivateKeyDer<'static>,
        String,
        String,
    ) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![dns_name.to_string()])
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (
            cert.der().clone(),
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            cert.pem(),
            key.serialize_pem(),
        )
    }

    fn roots(&self) -> rustls::RootCertStore {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        let der = rustls::pki_types::CertificateDer::from_pem_slice(self.pem.as_bytes()).unwrap();
        roots.add(der).unwrap();
        roots
    }
}

/// A TLS server config for `ext.example.com` (a client certificate of `clients` required, when
/// given).
fn server_config(ca: &TestCa, clients: Option<&TestCa>) -> Arc<rustls::ServerConfig> {
    let provider = waypoint::control::identity::provider();
    let (cert, key, _, _) = ca.leaf("ext.example.com");
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match clients {
        Some(clients) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(clients.roots()),
                provider,
            )
            .build()
            .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    Arc::new(builder.with_single_cert(vec![cert], key).unwrap())
}

/// A ServiceEntry `host` at `vip`:80 whose one endpoint, outside the mesh, is `target`, and its
/// DestinationRule with `tls`.
fn service(host: &str, vip: SocketAddr, target: SocketAddr, tls: &str) -> String {
    service_on(host, "HTTP", vip, target, tls)
}

/// [`service`] with port protocol `protocol`.
fn service_on(
    host: &str,
    protocol: &str,
    vip: SocketAddr,
    target: SocketAddr,
    tls: &str,
) -> String {
    let name = host.split('.').next().unwrap();
    format!(
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: {name}, namespace: default}}
spec:
  hosts: [{host}]
  addresses: [{}]
  ports:
  - {{number: 80, name: port, protocol: {protocol}, targetPort: {}}}
  endpoints:
  - address: {}
    serviceAccount: {name}
    labels: {{istio.io/dataplane-mode: none}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {name}, namespace: default}}
spec:
  host: {host}
  trafficPolicy:
    tls: {tls}
---
",
        vip.ip(),
        target.port(),
        target.ip()
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

async fn get(client: &sim::ZtunnelClient, vip: SocketAddr, host: &str) -> (u16, String) {
    let mut send = client.http1(vip).await.unwrap();
    let (parts, _) = sim::get(&mut send, host, "/tls", &[]).await.unwrap();
    let pod = parts
        .headers
        .get("x-pod")
        .map(|p| p.to_str().unwrap().to_string())
        .unwrap_or_default();
    (parts.status.as_u16(), pod)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_destination_rule_tls_to_endpoints_outside_the_mesh() {
    let net = Net::new();
    let mesh = Ca::new("files tls mesh").unwrap();
    let dir = temp_dir("files-tls");
    let (server_ca, other_ca, client_ca) = (TestCa::new(), TestCa::new(), TestCa::new());
    let ca_file = dir.join("ext-ca.pem");
    std::fs::write(&ca_file, &server_ca.pem).unwrap();
    let other_ca_file = dir.join("other-ca.pem");
    std::fs::write(&other_ca_file, &other_ca.pem).unwrap();
    let (_, _, client_pem, client_key_pem) = client_ca.leaf("client.example.com");
    let (client_cert, client_key) = (dir.join("client.pem"), dir.join("client-key.pem"));
    std::fs::write(&client_cert, client_pem).unwrap();
    std::fs::write(&client_key, client_key_pem).unwrap();

    // The upstreams, all outside the mesh.
    let simple_addr = SocketAddr::new(net.ip(3), 8443);
    let simple = tls_app(simple_addr, server_config(&server_ca, None), "ext-tls").await;
    let mutual_addr = SocketAddr::new(net.ip(4), 8443);
    let mutual = tls_app(
        mutual_addr,
        server_config(&server_ca, Some(&client_ca)),
        "ext-mtls",
    )
    .await;
    let sidecar_addr = SocketAddr::new(net.ip(5), 8443);
    let sidecar = sidecar_app(sidecar_addr, &mesh, "sidecar", "ext-sidecar").await;
    let plain_addr = SocketAddr::new(net.ip(6), 8443);
    let plain = plain_app(plain_addr, "ext-plain", None).await;

    let vip = |i: u8| SocketAddr::new(net.ip(30 + i), 80);
    let simple_tls = format!(
        "{{mode: SIMPLE, sni: ext.example.com, caCertificates: {}}}",
        path(&ca_file)
    );
    let config = temp_dir("files-tls-config");
    let yaml = [
        service("simple.example.com", vip(0), simple_addr, &simple_tls),
        service(
            "wrong-ca.example.com",
            vip(1),
            simple_addr,
            &format!(
                "{{mode: SIMPLE, sni: ext.example.com, caCertificates: {}}}",
                path(&other_ca_file)
            ),
        ),
        service(
            "wrong-san.example.com",
            vip(2),
            simple_addr,
            &format!(
                "{{mode: SIMPLE, sni: ext.example.com, caCertificates: {}, subjectAltNames: [other.example.com]}}",
                path(&ca_file)
            ),
        ),
        service(
            "mutual.example.com",
            vip(3),
            mutual_addr,
            &format!(
                "{{mode: MUTUAL, sni: ext.example.com, caCertificates: {}, clientCertificate: {}, privateKey: {}}}",
                path(&ca_file),
                path(&client_cert),
                path(&client_key)
            ),
        ),
        service("nocert.example.com", vip(4), mutual_addr, &simple_tls),
        service(
            "sidecar.example.com",
            vip(5),
            sidecar_addr,
            "{mode: ISTIO_MUTUAL}",
        ),
        service(
            "secret.example.com",
            vip(6),
            plain_addr,
            "{mode: SIMPLE, credentialName: ext-secret}",
        ),
        service("plain.example.com", vip(7), plain_addr, "{mode: DISABLE}"),
        service_on("tcp.example.com", "TCP", vip(8), simple_addr, &simple_tls),
    ]
    .concat();
    std::fs::write(config.join("ext.yaml"), yaml).unwrap();
    let certs = temp_dir("files-tls-certs");
    mesh.issue(&spiffe("waypoint"))
        .unwrap()
        .write_to(&certs)
        .unwrap();
    let (mut child, addrs, stderr) = spawn_run_with(&config, &cert_args(&certs));
    let logs = collect(stderr);
    let access = collect(child.0.stdout.take().unwrap());
    poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;
    let client = sim::ZtunnelClient::new(
        mesh.issue(&spiffe("productpage")).unwrap().workload,
        addrs["hbone"],
        spiffe("waypoint"),
    );

    // SIMPLE: TLS with the rule's SNI, the server verified against the rule's CA.
    assert_eq!(
        get(&client, vip(0), "simple.example.com").await,
        (200, "ext-tls".into())
    );
    assert_eq!(
        simple.lock().unwrap().0[0].0.as_deref(),
        Some("ext.example.com")
    );
    // A CA that did not sign the server's certificate, or a SAN it does not carry: 503 UF,
    // and no request reached the app.
    let done = simple.lock().unwrap().0.len();
    for host in ["wrong-ca.example.com", "wrong-san.example.com"] {
        let i = if host.starts_with("wrong-ca") { 1 } else { 2 };
        assert_eq!(get(&client, vip(i), host).await.0, 503, "{host}");
        let line = access_line(&access, host).await;
        assert!(
            line["response_flags"].as_str().unwrap().contains("UF"),
            "{line}"
        );
        assert!(
            line["upstream_transport_failure_reason"]
                .as_str()
                .unwrap()
                .contains("certificate"),
            "{line}"
        );
    }
    assert_eq!(simple.lock().unwrap().0.len(), done);

    // MUTUAL: the client certificate is presented to a server that requires one.
    assert_eq!(
        get(&client, vip(3), "mutual.example.com").await,
        (200, "ext-mtls".into())
    );
    {
        let seen = mutual.lock().unwrap();
        assert_eq!(seen.0.len(), 1);
        assert_eq!(seen.0[0].0.as_deref(), Some("ext.example.com"));
        assert!(
            seen.0[0].2.iter().any(|s| s == "client.example.com"),
            "{:?}",
            seen.0
        );
    }
    // The same server without the client certificate (SIMPLE) refuses the handshake.
    assert_ne!(get(&client, vip(4), "nocert.example.com").await.0, 200);
    assert_eq!(mutual.lock().unwrap().0.len(), 1);

    // ISTIO_MUTUAL: the waypoint's own certificate, Istio's SNI, the peer's identity checked.
    assert_eq!(
        get(&client, vip(5), "sidecar.example.com").await,
        (200, "ext-sidecar".into())
    );
    {
        let seen = sidecar.lock().unwrap();
        let (sni, alpn, sans) = &seen.0[0];
        assert_eq!(sni.as_deref(), Some("outbound_.80_._.sidecar.example.com"));
        assert_eq!(alpn.as_deref(), Some("istio-peer-exchange"));
        assert!(sans.contains(&spiffe("waypoint").to_string()), "{sans:?}");
    }

    // credentialName: the rule is rejected (named, with the reason), the others serve, and its
    // host is never reached in plaintext even though its endpoint speaks plain HTTP.
    assert_eq!(get(&client, vip(6), "secret.example.com").await.0, 503);
    assert!(plain.lock().unwrap().first_bytes.is_empty());
    assert!(
        logs.lock().unwrap().iter().any(|l| l.contains(
            "DestinationRule default/secret: rejected: spec.trafficPolicy.tls.credentialName"
        )),
        "{:?}",
        logs.lock().unwrap()
    );
    // DISABLE: plaintext to the same endpoint.
    assert_eq!(
        get(&client, vip(7), "plain.example.com").await,
        (200, "ext-plain".into())
    );

    // A TCP port: the splice originates the same TLS (the rule's SNI; the bytes inside are the
    // client's own HTTP request).
    let before = simple.lock().unwrap().0.len();
    assert_eq!(
        get(&client, vip(8), "tcp.example.com").await,
        (200, "ext-tls".into())
    );
    {
        let seen = simple.lock().unwrap();
        assert_eq!(seen.0.len(), before + 1);
        assert_eq!(seen.0[before].0.as_deref(), Some("ext.example.com"));
    }

    // /config_dump: each cluster endpoint's transport and the cluster's tls.
    let (_, dump) = poll_until(addrs["admin"], "/config_dump?format=waypoint", |s, _| {
        s == 200
    })
    .await;
    let dump: Value = serde_json::from_str(&dump).unwrap();
    let clusters = dump
        .pointer("/config/snapshot/clusters")
        .and_then(Value::as_array)
        .unwrap_or_else(|| panic!("no clusters in {dump}"));
    let cluster = |host: &str| {
        clusters
            .iter()
            .find(|c| c["name"] == format!("inbound-vip|80|http|{host}"))
            .unwrap_or_else(|| panic!("no cluster for {host}"))
    };
    let c = cluster("simple.example.com");
    assert_eq!(c["endpoints"][0]["transport"], "direct");
    assert_eq!(c["policy"]["tls"]["originate"]["sni"], "ext.example.com");
    assert_eq!(
        cluster("sidecar.example.com")["endpoints"][0]["transport"],
        "istio_mutual"
    );
    assert!(cluster("secret.example.com")["endpoints"]
        .as_array()
        .unwrap()
        .is_empty());

    // explain: the transport of each endpoint and the TLS it gets.
    let out = std::process::Command::new(binary())
        .args(["explain", "--config"])
        .arg(&config)
        .args(["GET", "http://simple.example.com/tls"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("tls (direct endpoints) {\"originate\""),
        "{text}"
    );
    assert!(text.contains(&format!("{simple_addr}")), "{text}");
    assert!(text.contains("via direct"), "{text}");
}
