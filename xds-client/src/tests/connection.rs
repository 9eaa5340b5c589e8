//! Authentication, reconnection and shutdown: bad and missing tokens, server restarts, client
//! certificates.

use super::*;

#[tokio::test]
async fn wrong_token_is_retried_with_backoff_and_reported() {
    let (_pki, server) = server(AdsServerOptions::with_token(TOKEN)).await;
    let v = server.set(type_url::CLUSTER, "c1", cluster("c1", false));
    let token = TokenFile::new("stolen");
    let path = token.0.clone();
    let client = start_client(config(&server, Mode::Delta, &token), token);
    let status = client
        .wait_status("retrying", |s| s.connect_attempts >= 3)
        .await;
    assert!(!status.connected);
    let error = status.last_error.unwrap();
    assert!(error.contains("unauthenticated"), "{error}");
    assert!(server.refused() >= 2);
    assert!(client.handler.0.lock().offered.is_empty());

    // The token is read again on each attempt: a rotated token gets in.
    std::fs::write(&path, TOKEN).expect("rotate token");
    ack(&server, type_url::CLUSTER, &v).await;
    client.wait_status("connected", |s| s.connected).await;
    client.shutdown().await;
}

#[tokio::test]
async fn missing_token_file_is_reported() {
    let (_pki, server) = server(AdsServerOptions::with_token(TOKEN)).await;
    let token = TokenFile::new(TOKEN);
    let mut cfg = config(&server, Mode::Delta, &token);
    cfg.token_path = Some(PathBuf::from("/nonexistent/xds-client/token"));
    let client = start_client(cfg, token);
    let status = client
        .wait_status("retrying", |s| s.connect_attempts >= 2)
        .await;
    assert!(status
        .last_error
        .unwrap()
        .contains("/nonexistent/xds-client/token"));
    assert_eq!(server.streams(), 0);
    client.shutdown().await;
}

#[tokio::test]
async fn server_restart_resyncs_with_initial_resource_versions() {
    let (_pki, server) = server(AdsServerOptions::with_token(TOKEN)).await;
    let v1 = server.set(type_url::CLUSTER, "c1", cluster("c1", false));
    let token = TokenFile::new(TOKEN);
    let client = start_client(config(&server, Mode::Delta, &token), token);
    ack(&server, type_url::CLUSTER, &v1).await;

    server.stop().await;
    client
        .wait_status("disconnected", |s| !s.connected && s.last_error.is_some())
        .await;
    // The handler still holds the last good state while istiod is away.
    assert_eq!(client.handler.names(type_url::CLUSTER), ["c1"]);
    let v2 = server.set(type_url::CLUSTER, "c2", cluster("c2", false));
    server.restart().await.expect("restart on the same port");

    ack(&server, type_url::CLUSTER, &v2).await;
    let resync = server
        .wait_for_request(WAIT, |r| r.stream >= 2 && r.type_url == type_url::CLUSTER)
        .await
        .unwrap();
    assert_eq!(
        resync.initial_resource_versions.get("c1"),
        Some(&v1),
        "{resync:#?}"
    );
    assert!(resync.node.is_some(), "a new stream starts with the node");
    assert_eq!(client.handler.names(type_url::CLUSTER), ["c1", "c2"]);
    // No accepted state was ever empty after the first.
    assert!(client
        .handler
        .0
        .lock()
        .accepted
        .iter()
        .all(|s| s.len(type_url::CLUSTER) >= 1));
    let status = client.wait_status("reconnected", |s| s.connected).await;
    assert!(status.reconnects >= 1);
    client.shutdown().await;
}

#[tokio::test]
async fn client_certificate_is_presented_when_required() {
    let options = AdsServerOptions {
        require_client_cert: true,
        ..AdsServerOptions::with_token(TOKEN)
    };
    let (pki, server) = server(options).await;
    let v = server.set(type_url::CLUSTER, "c1", cluster("c1", false));

    // Without a certificate the handshake fails and the client says so.
    let token = TokenFile::new(TOKEN);
    let without = start_client(config(&server, Mode::Delta, &token), token);
    let status = without
        .wait_status("tls refused", |s| s.connect_attempts >= 2)
        .await;
    assert!(!status.connected);
    assert!(status.last_error.is_some());
    without.shutdown().await;
    assert_eq!(server.streams(), 0);

    let token = TokenFile::new(TOKEN);
    let issued = pki.issue(&["spiffe://cluster.local/ns/bookinfo/sa/waypoint"]);
    let cfg = config(&server, Mode::Delta, &token).with_certified_key(issued.certified_key());
    let with = start_client(cfg, token);
    ack(&server, type_url::CLUSTER, &v).await;
    assert!(server.requests().iter().all(|r| r.client_cert));
    with.shutdown().await;
}

#[tokio::test]
async fn shutdown_while_disconnected_is_prompt() {
    let (_pki, server) = server(AdsServerOptions::with_token(TOKEN)).await;
    server.stop().await;
    let token = TokenFile::new(TOKEN);
    let mut cfg = config(&server, Mode::Delta, &token);
    cfg.backoff.base = Duration::from_secs(60);
    cfg.backoff.max = Duration::from_secs(60);
    let client = start_client(cfg, token);
    client
        .wait_status("failed once", |s| s.last_error.is_some())
        .await;
    client.shutdown().await;
}
