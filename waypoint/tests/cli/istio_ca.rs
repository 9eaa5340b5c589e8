//! The Istio CA client against the simulated istiod CA, over real loopback sockets: issuance,
//! the certificates working for mutual TLS, and each failure surfaced as its own `CaError`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint::commands::sim::ca_server::{self, CaServerHandle};
use waypoint::control::identity::{
    client_config, peer_identity, read_token, request_certificate, server_config, Ca, CaError,
    SpiffeId,
};

const TD: &str = "cluster.local";

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "default", sa)
}

async fn ca_with_tokens() -> CaServerHandle {
    let ca = ca_server::start(loopback()).await.unwrap();
    ca.add_token("token-reviews", &id("reviews"));
    ca.add_token("token-ratings", &id("ratings"));
    ca
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn issues_working_certificates_with_the_requested_identity_and_validity() {
    let ca = ca_with_tokens().await;
    let mut cfg = ca.client_config(Some("token-reviews"));
    cfg.validity = Duration::from_secs(3 * 3600);
    let reviews = request_certificate(&cfg, &id("reviews")).await.unwrap();
    let ratings = request_certificate(&ca.client_config(Some("token-ratings")), &id("ratings"))
        .await
        .unwrap();

    assert_eq!(reviews.id, id("reviews"));
    assert_eq!(peer_identity(&reviews.chain[0]).unwrap(), id("reviews"));
    assert_eq!(ratings.id, id("ratings"));
    // The root is not part of the chain; the configured bundle is the trust roots.
    assert_eq!(reviews.chain.len(), 1);
    assert_eq!(reviews.roots, vec![ca.ca().root_der()]);

    let summary = reviews.summary();
    let expected = now_unix() + 3 * 3600;
    assert!(
        (summary.not_after_unix - expected).abs() <= 60,
        "not_after {} vs expected {expected}",
        summary.not_after
    );
    let expected = now_unix() + 24 * 3600;
    assert!((ratings.summary().not_after_unix - expected).abs() <= 60);

    let stats = ca.stats();
    assert_eq!((stats.requests, stats.issued, stats.rejected), (2, 2, 0));
    assert_eq!(stats.last_cluster_id.as_deref(), Some("Kubernetes"));
    assert_eq!(stats.last_requested_validity, Some(24 * 3600));

    // The two certificates authenticate each other in the HBONE TLS configurations (which also
    // proves each key matches its certificate).
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(server_config(&ratings, &[TD.into()]).unwrap());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let client_cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.unwrap();
        tls.write_all(b"pong").await.unwrap();
        tls.shutdown().await.unwrap();
        (peer_identity(&client_cert).unwrap(), buf)
    });
    let connector = tokio_rustls::TlsConnector::from(
        client_config(&reviews, &ratings.id.clone().into()).unwrap(),
    );
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector
        .connect(ServerName::try_from("ratings").unwrap(), tcp)
        .await
        .unwrap();
    let server_cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    tls.write_all(b"ping").await.unwrap();
    let mut reply = [0u8; 4];
    tls.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply, b"pong");
    assert_eq!(peer_identity(&server_cert).unwrap(), id("ratings"));
    let (client_id, ping) = server.await.unwrap();
    assert_eq!(client_id, id("reviews"));
    assert_eq!(&ping, b"ping");

    ca.shutdown().await;
}

#[tokio::test]
async fn validity_is_capped_by_the_ca() {
    let ca = ca_with_tokens().await;
    let mut cfg = ca.client_config(Some("token-reviews"));
    cfg.validity = Duration::from_secs(365 * 24 * 3600);
    let cert = request_certificate(&cfg, &id("reviews")).await.unwrap();
    let expected = now_unix() + 90 * 24 * 3600;
    assert!((cert.summary().not_after_unix - expected).abs() <= 60);
}

fn assert_status(err: CaError, code: tonic::Code, address: &str) {
    assert_eq!(err.code(), Some(code), "{err}");
    let text = err.to_string();
    assert!(text.contains(address), "{text}");
}

#[tokio::test]
async fn wrong_or_missing_token_is_unauthenticated() {
    let ca = ca_with_tokens().await;
    let err = request_certificate(&ca.client_config(Some("bogus")), &id("reviews"))
        .await
        .unwrap_err();
    assert_status(err, tonic::Code::Unauthenticated, &ca.address());
    let err = request_certificate(&ca.client_config(None), &id("reviews"))
        .await
        .unwrap_err();
    assert!(matches!(
        &err,
        CaError::Status { code: tonic::Code::Unauthenticated, message, .. }
            if message.contains("authenticate")
    ));
    let stats = ca.stats();
    assert_eq!((stats.requests, stats.issued, stats.rejected), (2, 0, 2));
}

#[tokio::test]
async fn token_for_another_identity_is_permission_denied() {
    let ca = ca_with_tokens().await;
    let err = request_certificate(&ca.client_config(Some("token-ratings")), &id("reviews"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("may not request"), "{err}");
    assert_status(err, tonic::Code::PermissionDenied, &ca.address());
}

#[tokio::test]
async fn missing_cluster_id_is_invalid_argument() {
    let ca = ca_with_tokens().await;
    let mut cfg = ca.client_config(Some("token-reviews"));
    cfg.cluster_id.clear();
    let err = request_certificate(&cfg, &id("reviews")).await.unwrap_err();
    assert!(err.to_string().contains("ClusterID"), "{err}");
    assert_status(err, tonic::Code::InvalidArgument, &ca.address());
}

#[tokio::test]
async fn injected_unavailable_then_recovers() {
    let ca = ca_with_tokens().await;
    ca.fail_next(2);
    let cfg = ca.client_config(Some("token-reviews"));
    for _ in 0..2 {
        let err = request_certificate(&cfg, &id("reviews")).await.unwrap_err();
        assert_status(err, tonic::Code::Unavailable, &ca.address());
    }
    request_certificate(&cfg, &id("reviews")).await.unwrap();
    let stats = ca.stats();
    assert_eq!(
        (stats.requests, stats.injected_failures, stats.issued),
        (3, 2, 1)
    );
}

#[tokio::test]
async fn ca_certificate_from_another_root_fails_tls() {
    let ca = ca_with_tokens().await;
    let other = Ca::new("some other mesh").unwrap();
    let mut cfg = ca.client_config(Some("token-reviews"));
    cfg.root_pem = other.root_pem().as_bytes().to_vec();
    let err = request_certificate(&cfg, &id("reviews")).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, CaError::Tls { .. }), "{text}");
    assert!(text.contains(&ca.address()), "{text}");
    assert!(text.contains("UnknownIssuer"), "{text}");
    assert_eq!(ca.stats().requests, 0);
}

#[tokio::test]
async fn server_name_mismatch_fails_tls() {
    let ca = ca_with_tokens().await;
    let mut cfg = ca.client_config(Some("token-reviews"));
    cfg.server_name = "istiod.other-namespace.svc".into();
    let err = request_certificate(&cfg, &id("reviews")).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, CaError::Tls { .. }), "{text}");
    assert!(text.contains(&ca.address()), "{text}");
    assert!(text.contains("istiod.other-namespace.svc"), "{text}");
    assert_eq!(ca.stats().requests, 0);
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let addr = {
        let l = std::net::TcpListener::bind(loopback()).unwrap();
        l.local_addr().unwrap()
    };
    let ca = Ca::new("unused").unwrap();
    let mut cfg = waypoint::control::identity::CaClientConfig::new(addr.to_string(), ca.root_pem());
    cfg.server_name = "istiod.istio-system.svc".into();
    let err = request_certificate(&cfg, &id("reviews")).await.unwrap_err();
    assert!(matches!(err, CaError::Connect { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()), "{err}");
}

#[tokio::test]
async fn silent_server_times_out() {
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(tcp);
    });
    let ca = Ca::new("unused").unwrap();
    let mut cfg = waypoint::control::identity::CaClientConfig::new(addr.to_string(), ca.root_pem());
    cfg.timeout = Duration::from_millis(300);
    let err = request_certificate(&cfg, &id("reviews")).await.unwrap_err();
    assert!(matches!(err, CaError::Timeout { .. }), "{err}");
    hold.abort();
}

#[test]
fn client_defaults_follow_the_istio_agent() {
    let cfg = waypoint::control::identity::CaClientConfig::new("istiod.istio-system.svc:15012", "");
    assert_eq!(cfg.server_name, "istiod.istio-system.svc");
    assert_eq!(cfg.cluster_id, "Kubernetes");
    assert_eq!(cfg.validity, Duration::from_secs(24 * 3600));
    let cfg = waypoint::control::identity::CaClientConfig::new("localhost:15012", "");
    assert_eq!(cfg.server_name, "istiod.istio-system.svc");
    let with_token = waypoint::control::identity::CaClientConfig {
        token: Some("secret-token".into()),
        ..cfg
    };
    assert!(!format!("{with_token:?}").contains("secret-token"));
}

#[test]
fn read_token_trims_and_names_missing_paths() {
    let dir = std::env::temp_dir().join(format!("waypoint-istio-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("istio-token");
    std::fs::write(&path, "  eyJhbGciOi.payload.sig\n").unwrap();
    assert_eq!(read_token(&path).unwrap(), "eyJhbGciOi.payload.sig");

    std::fs::write(&path, "\n").unwrap();
    let err = read_token(&path).unwrap_err().to_string();
    assert!(
        err.contains("empty") && err.contains(&path.display().to_string()),
        "{err}"
    );

    let missing = dir.join("no-such-token");
    let err = read_token(&missing).unwrap_err().to_string();
    assert!(err.contains(&missing.display().to_string()), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn istiod_style_signing_for_the_caller_is_caught_as_identity_mismatch() {
    // istiod signs for the caller's authenticated identity whatever the CSR asks; a token for
    // another service account then yields a certificate the client must refuse.
    let options = ca_server::CaServerOptions {
        check_csr_identity: false,
        ..Default::default()
    };
    let ca = ca_server::start_with(loopback(), Ca::new("istiod-like").unwrap(), options)
        .await
        .unwrap();
    ca.add_token("token-ratings", &id("ratings"));
    let err = request_certificate(&ca.client_config(Some("token-ratings")), &id("reviews"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, CaError::IdentityMismatch { .. }), "{text}");
    assert!(
        text.contains(&ca.address()) && text.contains("sa/ratings"),
        "{text}"
    );
    assert_eq!(ca.stats().issued, 1);
}

#[test]
fn sim_ca_handle_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CaServerHandle>();
}
