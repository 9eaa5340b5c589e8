//! State-of-the-world: ACK/NACK and named requests, malformed payloads, fallback from delta.

use super::*;

#[tokio::test]
async fn sotw_acks_nacks_and_requests_named_resources() {
    let (_pki, server) = server(AdsServerOptions::with_token(TOKEN)).await;
    let v1 = server.set(type_url::CLUSTER, "eds-a", cluster("eds-a", true));
    server.set(
        type_url::CLUSTER_LOAD_ASSIGNMENT,
        "eds-a",
        endpoints("eds-a"),
    );
    let ev = server.set(
        type_url::CLUSTER_LOAD_ASSIGNMENT,
        "eds-z",
        endpoints("eds-z"),
    );
    let token = TokenFile::new(TOKEN);
    let client = start_client(config(&server, Mode::StateOfTheWorld, &token), token);
    ack(&server, type_url::CLUSTER, &v1).await;
    ack(&server, type_url::CLUSTER_LOAD_ASSIGNMENT, &ev).await;
    assert_eq!(
        client.handler.names(type_url::CLUSTER_LOAD_ASSIGNMENT),
        ["eds-a"]
    );
    let first = &server.requests()[0];
    assert!(!first.delta);
    assert_eq!(first.type_url, type_url::CLUSTER);
    assert!(first.node.is_some());
    let cds_ack = server
        .wait_for_request(WAIT, |r| r.is_ack() && r.type_url == type_url::CLUSTER)
        .await
        .unwrap();
    assert_eq!(cds_ack.version_info, v1, "SotW ACK carries the version");
    let eds = server
        .wait_for_request(WAIT, |r| r.type_url == type_url::CLUSTER_LOAD_ASSIGNMENT)
        .await
        .unwrap();
    assert_eq!(eds.resource_names, ["eds-a"]);

    client.handler.reject("bad");
    server.set(type_url::CLUSTER, "bad", cluster("bad", false));
    let nack = server
        .wait_for_nack(type_url::CLUSTER, WAIT)
        .await
        .expect("NACK");
    assert_eq!(nack.version_info, v1, "a NACK carries the previous version");
    assert!(nack.error_detail.unwrap().message.contains("bad"));
    assert_eq!(client.handler.names(type_url::CLUSTER), ["eds-a"]);

    // A full set without eds-a removes it (wildcard type) and EDS is dropped with it.
    server.remove(type_url::CLUSTER, "bad");
    server.remove(type_url::CLUSTER, "eds-a");
    let v = server.set(type_url::CLUSTER, "c9", cluster("c9", false));
    ack(&server, type_url::CLUSTER, &v).await;
    assert_eq!(client.handler.names(type_url::CLUSTER), ["c9"]);
    let empty_eds = server
        .wait_for_request(WAIT, |r| {
            r.type_url == type_url::CLUSTER_LOAD_ASSIGNMENT
                && r.resource_names.is_empty()
                && !r.response_nonce.is_empty()
        })
        .await;
    assert!(empty_eds.is_some(), "{:#?}", server.requests());
    client.shutdown().await;
}

#[tokio::test]
async fn malformed_payloads_are_nacked_by_the_client() {
    let (_pki, server) = server(AdsServerOptions::with_token(TOKEN)).await;
    let v = server.set(type_url::CLUSTER, "c1", cluster("c1", false));
    let token = TokenFile::new(TOKEN);
    let client = start_client(config(&server, Mode::Delta, &token), token);
    ack(&server, type_url::CLUSTER, &v).await;

    server.set(type_url::CLUSTER, "wrong-type", listener("wrong-type"));
    let nack = server.wait_for_nack(type_url::CLUSTER, WAIT).await.unwrap();
    let message = nack.error_detail.unwrap().message;
    assert!(
        message.contains("wrong-type") && message.contains("Listener"),
        "{message}"
    );
    server.remove(type_url::CLUSTER, "wrong-type");

    server.set(
        type_url::CLUSTER,
        "garbage",
        Any {
            type_url: type_url::CLUSTER.into(),
            value: vec![0x0a, 0xff, 0x01],
        },
    );
    let garbage = server
        .wait_for_request(WAIT, |r| {
            r.error_detail
                .as_ref()
                .is_some_and(|d| d.message.contains("garbage"))
        })
        .await
        .expect("NACK naming the undecodable resource");
    assert!(garbage.error_detail.unwrap().message.contains("decode"));
    assert_eq!(client.handler.names(type_url::CLUSTER), ["c1"]);
    client.shutdown().await;
}

#[tokio::test]
async fn falls_back_to_sotw_when_delta_is_unimplemented() {
    let options = AdsServerOptions {
        delta: false,
        ..AdsServerOptions::with_token(TOKEN)
    };
    let (_pki, server) = server(options).await;
    let v = server.set(type_url::CLUSTER, "c1", cluster("c1", false));
    let token = TokenFile::new(TOKEN);
    let client = start_client(config(&server, Mode::DeltaWithFallback, &token), token);
    ack(&server, type_url::CLUSTER, &v).await;
    let status = client
        .wait_status("sotw", |s| s.mode == Some(Mode::StateOfTheWorld))
        .await;
    assert!(status.last_error.unwrap().contains("does not implement"));
    client.shutdown().await;
}
