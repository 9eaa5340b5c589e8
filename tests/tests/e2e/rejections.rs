//! What the waypoint refuses, and how it fails when endpoints do: mTLS without a client cert,
//! from a foreign CA or trust domain; non-CONNECT; a bad authority; an unknown destination; an
//! endpoint presenting another identity; endpoints down.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use waypoint::control::identity::{Ca, SpiffeId, WorkloadCert};
use waypoint_tests::{client_tls, raw_h2, service_yaml, spiffe, workload_yaml, Mesh};

fn two_subsets() -> String {
    let mut y = service_yaml("reviews", "10.0.0.10", 9080, "http");
    y += &workload_yaml("reviews-v1a", "@1", "reviews", "v1", "bookinfo-reviews");
    y += &workload_yaml("reviews-v1b", "@4", "reviews", "v1", "bookinfo-reviews");
    y += &workload_yaml("reviews-v2", "@2", "reviews", "v2", "bookinfo-reviews");
    y += "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      simple: ROUND_ROBIN\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n  - name: v2\n    labels:\n      version: v2\n---\n";
    y += "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n  http:\n  - match:\n    - uri:\n        prefix: /v2\n    route:\n    - destination:\n        host: reviews\n        subset: v2\n  - route:\n    - destination:\n        host: reviews\n        subset: v1\n";
    y
}

/// Accepts any server certificate: lets a test present whatever client certificate it wants.
#[derive(Debug)]
struct AnyServer;

impl ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn insecure_client(cert: Option<WorkloadCert>) -> Arc<rustls::ClientConfig> {
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AnyServer));
    let mut config = match cert {
        Some(c) => builder.with_client_auth_cert(c.chain, c.key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

async fn connect_status(
    send: h2::client::SendRequest<Bytes>,
    method: Method,
    uri: &str,
) -> anyhow::Result<StatusCode> {
    let mut send = send.ready().await?;
    let (resp, _stream) =
        send.send_request(Request::builder().method(method).uri(uri).body(())?, false)?;
    Ok(resp.await?.status())
}

/// The handshake (or the first stream) fails and the waypoint counts a rejected handshake.
async fn assert_refused(mesh: &Mesh, config: Arc<rustls::ClientConfig>, what: &str) {
    let before = mesh
        .bench
        .app
        .server
        .stats
        .rejected_handshakes
        .load(Ordering::Relaxed);
    let result = async {
        connect_status(
            raw_h2(mesh.bench.waypoint_addr, config).await?,
            Method::CONNECT,
            "10.0.0.10:9080",
        )
        .await
    }
    .await;
    assert!(result.is_err(), "{what}: expected refusal, got {result:?}");
    for _ in 0..100 {
        if mesh
            .bench
            .app
            .server
            .stats
            .rejected_handshakes
            .load(Ordering::Relaxed)
            > before
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{what}: the waypoint did not record a rejected handshake");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refusals() {
    let mesh = Mesh::start(&two_subsets()).await;
    assert_refused(&mesh, insecure_client(None), "no client certificate").await;

    let foreign_ca = Ca::new("someone else").unwrap();
    let foreign = foreign_ca.issue(&spiffe("productpage")).unwrap().workload;
    assert_refused(
        &mesh,
        insecure_client(Some(foreign)),
        "client cert from a foreign CA",
    )
    .await;

    let other_td = mesh
        .bench
        .ca
        .issue(&SpiffeId::new("evil.local", "default", "productpage"))
        .unwrap()
        .workload;
    assert_refused(
        &mesh,
        insecure_client(Some(other_td)),
        "client from a foreign trust domain",
    )
    .await;

    // The same path with a proper certificate succeeds: the refusals above are about identity.
    let good = mesh.cert("productpage");
    let send = raw_h2(mesh.bench.waypoint_addr, insecure_client(Some(good)))
        .await
        .unwrap();
    assert_eq!(
        connect_status(send, Method::CONNECT, "10.0.0.10:9080")
            .await
            .unwrap(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_refusals_do_not_affect_the_connection() {
    let mesh = Mesh::start(&two_subsets()).await;
    let cert = mesh.cert("productpage");
    let send = raw_h2(
        mesh.bench.waypoint_addr,
        client_tls(cert, &mesh.bench.waypoint_id),
    )
    .await
    .unwrap();
    let cases = [
        (Method::GET, "https://10.0.0.10:9080/", 400, "non-CONNECT"),
        (
            Method::CONNECT,
            "reviews:9080",
            400,
            "authority not ip:port",
        ),
        (Method::CONNECT, "10.9.9.9:80", 404, "not served here"),
        (
            Method::CONNECT,
            "10.0.0.10:9999",
            404,
            "VIP with a port the service lacks",
        ),
        // The same HTTP/2 connection still serves a valid tunnel afterwards.
        (Method::CONNECT, "10.0.0.10:9080", 200, "valid tunnel"),
    ];
    for (method, uri, expected, what) in cases {
        let status = connect_status(send.clone(), method, uri).await.unwrap();
        assert_eq!(status, expected, "{what}");
    }
    assert_eq!(
        mesh.bench
            .app
            .server
            .stats
            .rejected_streams
            .load(Ordering::Relaxed),
        4
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_with_unexpected_identity_gets_503() {
    let mesh = Mesh::start_with(&two_subsets(), |net, opts| {
        // The v2 pod answers with a certificate for another service account.
        opts.pod_identity.insert(net.ip(2), spiffe("impostor"));
    })
    .await;
    let mut send = mesh
        .client()
        .http1("10.0.0.10:9080".parse().unwrap())
        .await
        .unwrap();
    let (parts, _) = waypoint_tests::sim::get(&mut send, "reviews:9080", "/v2/x", &[])
        .await
        .unwrap();
    assert_eq!(parts.status, 503);
    let log = mesh.wait_for_log_lines(1).await;
    assert!(
        log[0]["response_flags"].as_str().unwrap().contains("UF"),
        "{}",
        log[0]
    );
    assert_eq!(
        log[0]["upstream_transport_failure_reason"],
        "tls_handshake_failure"
    );
    assert_eq!(log[0]["upstream_host"], format!("{}:9080", mesh.net.ip(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_down_fails_over_and_all_down_is_503() {
    let mesh = Mesh::start_with(&two_subsets(), |net, opts| {
        opts.down.insert(net.ip(1)); // one of the two v1 pods
        opts.down.insert(net.ip(2)); // the only v2 pod
    })
    .await;
    let mut send = mesh
        .client()
        .http1("10.0.0.10:9080".parse().unwrap())
        .await
        .unwrap();
    for i in 0..6 {
        let (parts, body) =
            waypoint_tests::sim::get(&mut send, "reviews:9080", &format!("/v1/{i}"), &[])
                .await
                .unwrap();
        assert_eq!(
            parts.status, 200,
            "v1 request {i} must be served by the live v1 pod"
        );
        let echo: waypoint_tests::sim::Echo = serde_json::from_slice(&body).unwrap();
        assert_eq!(echo.pod, "reviews-v1b");
    }
    let (parts, _) = waypoint_tests::sim::get(&mut send, "reviews:9080", "/v2/x", &[])
        .await
        .unwrap();
    assert_eq!(parts.status, 503);
    let log = mesh.wait_for_log_lines(7).await;
    let retried = log[..6]
        .iter()
        .filter(|l| l["response_flags"].as_str().unwrap().contains("UF"))
        .count();
    assert!(
        retried >= 1,
        "round robin sends some v1 requests to the dead pod first, then retries: {log:?}"
    );
    let last = &log[6];
    assert_eq!(last["response_code"], 503);
    assert!(
        last["response_flags"].as_str().unwrap().contains("UF"),
        "{last}"
    );
    assert_eq!(
        last["upstream_transport_failure_reason"],
        "connection_failure"
    );
}

/// Rapid reset after acceptance (CVE-2023-44487, as Envoy mitigates it): a client that resets
/// each tunnel right after its 200 gets its connection closed with GOAWAY ENHANCE_YOUR_CALM once
/// 500 tunnels were carried and more than half were reset within 1 s; a client that lets its
/// tunnels finish is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_reset_right_after_acceptance_close_the_connection() {
    let mesh = Mesh::start(&two_subsets()).await;
    let cert = || mesh.cert("productpage");
    let connect = || {
        http::Request::builder()
            .method(Method::CONNECT)
            .uri("10.0.0.10:9080")
            .body(())
            .unwrap()
    };
    let mut send = raw_h2(
        mesh.bench.waypoint_addr,
        client_tls(cert(), &mesh.bench.waypoint_id),
    )
    .await
    .unwrap();
    let mut accepted = 0;
    let mut closed = None;
    for _ in 0..2000 {
        let opened = async {
            send = send.clone().ready().await?;
            let (response, mut stream) = send.send_request(connect(), false)?;
            let response = response.await?;
            anyhow::Ok((response.status(), {
                stream.send_reset(h2::Reason::CANCEL);
            }))
        };
        match opened.await {
            Ok((status, ())) => {
                assert_eq!(status, 200);
                accepted += 1;
            }
            Err(e) => {
                closed = Some(e);
                break;
            }
        }
    }
    let e = closed.expect("the connection survived 2000 reset tunnels");
    // The client sees the GOAWAY's reason, or, when the socket closed before its connection
    // task read the GOAWAY, a broken pipe; the server's counter below is what proves the cause.
    let reason = e.downcast_ref::<h2::Error>().and_then(h2::Error::reason);
    assert!(
        reason == Some(h2::Reason::ENHANCE_YOUR_CALM)
            || e.downcast_ref::<h2::Error>().is_some_and(h2::Error::is_io)
            || format!("{e:#}").contains("broken pipe"),
        "{e:#}"
    );
    assert!(accepted >= 500, "closed after {accepted} tunnels");
    let stats = &mesh.bench.app.server.stats;
    assert_eq!(stats.closed_for_resets.load(Ordering::Relaxed), 1);
    assert!(stats.premature_resets.load(Ordering::Relaxed) >= 250);

    // An honest client: 600 short tunnels on one connection, each closed (or reset) by the
    // client once it has its answer. None is premature; the connection stays.
    let client = mesh.client();
    for _ in 0..600 {
        let r = waypoint_tests::reviews_request(&client, "GET", "/", &[]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(
        client
            .hbone()
            .stats
            .connections_opened
            .load(Ordering::Relaxed),
        1
    );
    assert_eq!(stats.closed_for_resets.load(Ordering::Relaxed), 1);
}

/// A client that stops reading (its HTTP/2 window shut) does not hold its tunnel forever: the
/// waypoint's write gives up after the send timeout, the tunnel closes and is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_after_the_send_timeout() {
    let mesh = Mesh::start_with(&two_subsets(), |_, o| {
        o.send_timeout = Some(std::time::Duration::from_millis(500));
    })
    .await;
    let before = waypoint::transport::hbone::stream::SEND_TIMEOUTS.load(Ordering::Relaxed);
    let cert = mesh.cert("productpage");
    let addr = mesh.bench.waypoint_addr;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_tls(cert, &mesh.bench.waypoint_id))
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await
        .unwrap();
    // A 16-byte window, never reopened: the tunnel body is never read.
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(16)
        .handshake::<_, Bytes>(tls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut send = send.ready().await.unwrap();
    let req = Request::builder()
        .method(Method::CONNECT)
        .uri("10.0.0.10:9080")
        .body(())
        .unwrap();
    let (response, mut stream) = send.send_request(req, false).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    stream
        .send_data(
            Bytes::from_static(b"GET / HTTP/1.1\r\nhost: reviews:9080\r\n\r\n"),
            false,
        )
        .unwrap();
    let tunnels = &mesh.bench.app.server.stats.tunnels_open;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tunnels.load(Ordering::Relaxed) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled tunnel is still open"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(waypoint::transport::hbone::stream::SEND_TIMEOUTS.load(Ordering::Relaxed) > before);
    drop(response);
}
