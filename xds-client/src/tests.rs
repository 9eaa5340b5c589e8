//! Client against the in-process ADS server: real sockets on 127.0.0.1, real TLS.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::google::protobuf::{value::Kind, Any};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::testing::{any, AdsServer, AdsServerOptions, Received, TestPki};
use crate::{
    type_url, Applied, Backoff, Client, ClientConfig, Handler, Mode, NodeInfo, Rejection,
    ResourceState, Status, StatusHandle, Subscriptions, Update,
};

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "good-token";

/// What the test handler saw and decides.
#[derive(Default)]
struct Shared {
    /// Every accepted candidate, in order.
    accepted: Vec<ResourceState>,
    /// Every update offered: (type, updated, removed).
    offered: Vec<(String, Vec<String>, Vec<String>)>,
    /// Cluster names to reject.
    reject: BTreeSet<String>,
    /// Refuse those clusters alone and accept the rest (partial acceptance) instead of
    /// rejecting the whole candidate.
    partial: bool,
}

/// Rejects clusters named in `reject`; subscribes EDS to every EDS cluster.
#[derive(Clone, Default)]
struct TestHandler(Arc<Mutex<Shared>>);

impl TestHandler {
    fn current(&self) -> ResourceState {
        self.0.lock().accepted.last().cloned().unwrap_or_default()
    }

    fn names(&self, type_url: &str) -> Vec<String> {
        self.current()
            .resources(type_url)
            .map(|r| r.name.clone())
            .collect()
    }

    fn reject(&self, name: &str) {
        self.0.lock().reject.insert(name.to_string());
    }

    fn refuse_alone(&self, name: &str) {
        let mut shared = self.0.lock();
        shared.reject.insert(name.to_string());
        shared.partial = true;
    }
}

impl Handler for TestHandler {
    fn apply(&mut self, update: &Update<'_>) -> Result<Applied, Vec<Rejection>> {
        let mut shared = self.0.lock();
        shared.offered.push((
            update.type_url.to_string(),
            update.updated.to_vec(),
            update.removed.to_vec(),
        ));
        let mut rejections = Vec::new();
        let mut eds = Vec::new();
        for resource in update.state.resources(type_url::CLUSTER) {
            match resource.decode::<Cluster>() {
                Ok(_) if shared.reject.contains(&resource.name) => rejections.push(Rejection::new(
                    type_url::CLUSTER,
                    &resource.name,
                    "refused by the test",
                )),
                Ok(cluster) => {
                    let is_eds = cluster.cluster_discovery_type
                        == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32));
                    if is_eds {
                        eds.push(cluster.name);
                    }
                }
                Err(rejection) => rejections.push(rejection),
            }
        }
        if !rejections.is_empty() && !shared.partial {
            return Err(rejections);
        }
        shared.accepted.push(update.state.clone());
        Ok(Applied {
            subscriptions: Subscriptions::new().with(type_url::CLUSTER_LOAD_ASSIGNMENT, eds),
            refused: rejections,
        })
    }
}

fn cluster(name: &str, eds: bool) -> Any {
    let kind = if eds {
        DiscoveryType::Eds
    } else {
        DiscoveryType::StrictDns
    };
    any(&Cluster {
        name: name.to_string(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(kind as i32)),
        ..Default::default()
    })
}

fn listener(name: &str) -> Any {
    any(&Listener {
        name: name.to_string(),
        ..Default::default()
    })
}

fn endpoints(name: &str) -> Any {
    any(&ClusterLoadAssignment {
        cluster_name: name.to_string(),
        ..Default::default()
    })
}

/// A token file removed on drop.
struct TokenFile(PathBuf);

impl TokenFile {
    fn new(token: &str) -> Self {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "xds-client-test-token-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, format!("{token}\n")).expect("write token");
        Self(path)
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            eprintln!("cannot remove {}: {e}", self.0.display());
        }
    }
}

struct Running {
    handler: TestHandler,
    status: StatusHandle,
    stop: watch::Sender<bool>,
    task: JoinHandle<TestHandler>,
    _token: TokenFile,
}

impl Running {
    async fn shutdown(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("client stops promptly")
            .expect("client task");
    }

    async fn wait_status(&self, what: &str, pred: impl FnMut(&Status) -> bool) -> Status {
        match self.status.wait_for(WAIT, pred).await {
            Some(s) => s,
            None => panic!("{what}: status is {:#?}", self.status.get()),
        }
    }
}

fn node() -> NodeInfo {
    let mut node = NodeInfo::new("waypoint-0", "bookinfo", "10.0.0.5".parse().unwrap());
    node.service_account = "waypoint".into();
    node.metadata
        .insert("WORKLOAD_NAME".into(), "waypoint".into());
    node
}

fn config(server: &AdsServer, mode: Mode, token: &TokenFile) -> ClientConfig {
    let mut cfg = ClientConfig::new(server.address(), server.root_pem().as_bytes(), node());
    cfg.server_name = server.server_name();
    cfg.token_path = Some(token.0.clone());
    cfg.mode = mode;
    cfg.backoff = Backoff {
        base: Duration::from_millis(20),
        max: Duration::from_millis(200),
        reset_after: Duration::from_secs(30),
    };
    cfg.connect_timeout = Duration::from_secs(5);
    cfg
}

fn start_client(cfg: ClientConfig, token: TokenFile) -> Running {
    let handler = TestHandler::default();
    let client = Client::new(cfg).expect("valid config");
    let status = client.status();
    let (stop, stopped) = watch::channel(false);
    let task = tokio::spawn(client.run(handler.clone(), stopped));
    Running {
        handler,
        status,
        stop,
        task,
        _token: token,
    }
}

async fn server(options: AdsServerOptions) -> (TestPki, AdsServer) {
    let pki = TestPki::new();
    let server = AdsServer::start("127.0.0.1:0".parse().unwrap(), &pki, options)
        .await
        .expect("server starts");
    (pki, server)
}

async fn ack(server: &AdsServer, type_url: &str, version: &str) {
    assert!(
        server.wait_for_ack(type_url, version, WAIT).await,
        "no ACK of {type_url} version {version}; requests: {:#?}",
        server.requests()
    );
}

fn string_meta(r: &Received, key: &str) -> String {
    let meta = r.node.as_ref().and_then(|n| n.metadata.as_ref()).unwrap();
    match meta.fields.get(key).and_then(|v| v.kind.clone()) {
        Some(Kind::StringValue(s)) => s,
        other => panic!("{key}: {other:?}"),
    }
}

#[tokio::test]
async fn delta_subscribes_in_order_acks_and_sends_the_node() {
    let (_pki, server) = server(AdsServerOptions::with_token(TOKEN)).await;
    let cv = server.set(type_url::CLUSTER, "c1", cluster("c1", false));
    let lv = server.set(type_url::LISTENER, "l1", listener("l1"));
    let token = TokenFile::new(TOKEN);
    let client = start_client(config(&server, Mode::Delta, &token), token);

    ack(&server, type_url::CLUSTER, &cv).await;
    ack(&server, type_url::LISTENER, &lv).await;
    assert_eq!(client.handler.names(type_url::CLUSTER), ["c1"]);
    assert_eq!(client.handler.names(type_url::LISTENER), ["l1"]);

    let requests = server.requests();
    // Envoy's order: CDS, then LDS; the node on the first request only.
    assert_eq!(requests[0].type_url, type_url::CLUSTER);
    assert_eq!(requests[1].type_url, type_url::LISTENER);
    assert!(requests[0].subscribe.is_empty(), "wildcard");
    assert!(requests.iter().skip(1).all(|r| r.node.is_none()));
    let first = &requests[0];
    assert!(first.delta);
    assert_eq!(first.cluster_id.as_deref(), Some("Kubernetes"));
    let node = first.node.as_ref().unwrap();
    assert_eq!(
        node.id,
        "waypoint~10.0.0.5~waypoint-0.bookinfo~bookinfo.svc.cluster.local"
    );
    assert_eq!(string_meta(first, "NAMESPACE"), "bookinfo");
    assert_eq!(string_meta(first, "SERVICE_ACCOUNT"), "waypoint");
    assert_eq!(string_meta(first, "CLUSTER_ID"), "Kubernetes");
    assert_eq!(string_meta(first, "INSTANCE_IPS"), "10.0.0.5");
    assert_eq!(string_meta(first, "WORKLOAD_NAME"), "waypoint");

    let status = client
        .wait_status("acked", |s| {
            s.connected && s.types.get(type_url::LISTENER).map(|t| t.acks) == Some(1)
        })
        .await;
    assert_eq!(status.mode, Some(Mode::Delta));
    assert_eq!(status.types[type_url::CLUSTER].acked_version, cv);
    assert_eq!(status.types[type_url::CLUSTER].resources, 1);
    assert_eq!(status.nacks, 0);
    client.shutdown().await;
}

#[tokio::test]
async fn delta_rejection_nacks_and_keeps_the_last_good_state() {
    let (_pki, server) = server(AdsServerOptions::with_token(TOKEN)).await;
    let v1 = server.set(type_url::CLUSTER, "c1", cluster("c1", false));
    let token = TokenFile::new(TOKEN);
    let client = start_client(config(&server, Mode::Delta, &token), token);
    ack(&server, type_url::CLUSTER, &v1).await;

    client.handler.reject("bad");
    let v2 = server.set(type_url::CLUSTER, "bad", cluster("bad", false));
    let nack = server
        .wait_for_nack(type_url::CLUSTER, WAIT)
        .await
        .expect("NACK");
    assert_eq!(nack.responded_version.as_deref(), Some(v2.as_str()));
    let detail = nack.error_detail.unwrap();
    assert_eq!(detail.code, 3, "INVALID_ARGUMENT");
    assert!(
        detail.message.contains("bad") && detail.message.contains("refused by the test"),
        "{}",
        detail.message
    );
    // The last accepted state stays: only c1.
    assert_eq!(client.handler.names(type_url::CLUSTER), ["c1"]);
    let status = client.wait_status("nack counted", |s| s.nacks == 1).await;
    assert!(status.types[type_url::CLUSTER]
        .last_nack
        .as_deref()
        .unwrap()
        .contains("bad"));
    assert_eq!(status.types[type_url::CLUSTER].acked_version, v1);

    // Fixing the config on the server side is ACKed and clears the NACK.
    server.remove(type_url::CLUSTER, "bad");
    let v4 = server.set(type_url::CLUSTER, "c2", cluster("c2", false));
    ack(&server, type_url::CLUSTER, &v4).await;
    assert_eq!(client.handler.names(type_url::CLUSTER), ["c1", "c2"]);
    let status = client
        .wait_status("ack after nack", |s| {
            s.types[type_url::CLUSTER].last_nack.is_none()
        })
        .await;
    assert_eq!(status.types[type_url::CLUSTER].acked_version, v4);
    client.shutdown().await;
}

/// One resource the handler cannot use is refused alone: the response is NACKed naming it, and
/// the rest of it is applied (Envoy's partial acceptance), in both protocol flavours.
#[tokio::test]
async fn a_refused_resource_does_not_freeze_the_others() {
    for mode in [Mode::Delta, Mode::StateOfTheWorld] {
        let (_pki, server) = server(AdsServerOptions::with_token(TOKEN)).await;
        let v1 = server.set(type_url::CLUSTER, "c1", cluster("c1", false));
        let token = TokenFile::new(TOKEN);
        let client = start_client(config(&server, mode, &token), token);
        ack(&server, type_url::CLUSTER, &v1).await;

        client.handler.refuse_alone("bad");
        server.set(type_url::CLUSTER, "bad", cluster("bad", false));
        let v3 = server.set(type_url::CLUSTER, "c2", cluster("c2", false));
        let nack = server
            .wait_for_request(WAIT, |r| {
                r.type_url == type_url::CLUSTER
                    && r.responded_version.as_deref() == Some(v3.as_str())
                    && r.error_detail.is_some()
            })
            .await
            .unwrap_or_else(|| panic!("{mode:?}: NACK of the response carrying c2"));
        let detail = nack.error_detail.unwrap().message;
        assert!(
            detail.contains("bad") && detail.contains("refused by the test"),
            "{detail}"
        );
        if mode == Mode::StateOfTheWorld {
            // The NACK names the version accepted before, as Envoy's does.
            assert_eq!(nack.version_info, v1, "{mode:?}");
        }
        // c2 arrived with the bad one and is served; the state holds all three for the
        // handler to refuse again on the next push.
        assert_eq!(client.handler.names(type_url::CLUSTER), ["bad", "c1", "c2"]);
        client.shutdown().await;
    }
}

/// A type the waypoint never asked for (ECDS here, which istiod sends only to a proxy that
/// subscribes) is NACKed naming the type; the subscribed types keep flowing.
#[tokio::test]
async fn an_unexpected_type_is_nacked_and_the_others_keep_flowing() {
    const ECDS: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
    let mut options = AdsServerOptions::with_token(TOKEN);
    options.unsolicited = vec![ECDS.to_string()];
    let (_pki, server) = server(options).await;
    let v1 = server.set(type_url::CLUSTER, "c1", cluster("c1", false));
    let token = TokenFile::new(TOKEN);
    let client = start_client(config(&server, Mode::Delta, &token), token);
    ack(&server, type_url::CLUSTER, &v1).await;

    server.set(
        ECDS,
        "wasm-filter",
        any(
            &envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig {
                name: "wasm-filter".into(),
                typed_config: None,
            },
        ),
    );
    let nack = server.wait_for_nack(ECDS, WAIT).await.expect("ECDS NACKed");
    let detail = nack.error_detail.unwrap().message;
    assert!(
        detail.contains("TypedExtensionConfig") && detail.contains("not subscribed"),
        "{detail}"
    );
    let v2 = server.set(type_url::CLUSTER, "c2", cluster("c2", false));
    ack(&server, type_url::CLUSTER, &v2).await;
    assert_eq!(client.handler.names(type_url::CLUSTER), ["c1", "c2"]);
    client.shutdown().await;
}

#[tokio::test]
async fn delta_pushes_updates_and_removals() {
    let (_pki, server) = server(AdsServerOptions::with_token(TOKEN)).await;
    let v = server.set(type_url::CLUSTER, "c1", cluster("c1", false));
    let token = TokenFile::new(TOKEN);
    let client = start_client(config(&server, Mode::Delta, &token), token);
    ack(&server, type_url::CLUSTER, &v).await;

    let v2 = server.set(type_url::CLUSTER, "c2", cluster("c2", false));
    ack(&server, type_url::CLUSTER, &v2).await;
    assert_eq!(client.handler.names(type_url::CLUSTER), ["c1", "c2"]);

    let v = server.remove(type_url::CLUSTER, "c1");
    ack(&server, type_url::CLUSTER, &v).await;
    assert_eq!(client.handler.names(type_url::CLUSTER), ["c2"]);
    let offered = client.handler.0.lock().offered.clone();
    assert!(offered.contains(&(
        type_url::CLUSTER.to_string(),
        vec![],
        vec!["c1".to_string()]
    )));
    let c2 = client.handler.current();
    assert_eq!(c2.get(type_url::CLUSTER, "c2").unwrap().version, v2);
    client.shutdown().await;
}

#[tokio::test]
async fn delta_eds_follows_the_handler() {
    let (_pki, server) = server(AdsServerOptions::with_token(TOKEN)).await;
    server.set(
        type_url::CLUSTER_LOAD_ASSIGNMENT,
        "eds-a",
        endpoints("eds-a"),
    );
    let ev = server.set(
        type_url::CLUSTER_LOAD_ASSIGNMENT,
        "eds-b",
        endpoints("eds-b"),
    );
    let token = TokenFile::new(TOKEN);
    let client = start_client(config(&server, Mode::Delta, &token), token);
    let cv = server.set(type_url::CLUSTER, "eds-a", cluster("eds-a", true));
    ack(&server, type_url::CLUSTER, &cv).await;
    ack(&server, type_url::CLUSTER_LOAD_ASSIGNMENT, &ev).await;
    // Only the subscribed name arrives.
    assert_eq!(
        client.handler.names(type_url::CLUSTER_LOAD_ASSIGNMENT),
        ["eds-a"]
    );
    let subscribe = server
        .wait_for_request(WAIT, |r| {
            r.type_url == type_url::CLUSTER_LOAD_ASSIGNMENT && !r.subscribe.is_empty()
        })
        .await
        .unwrap();
    assert_eq!(subscribe.subscribe, ["eds-a"]);
    assert!(subscribe.response_nonce.is_empty(), "a change, not an ACK");

    // The cluster goes: the handler drops the name, the client unsubscribes and forgets it.
    let cv = server.remove(type_url::CLUSTER, "eds-a");
    ack(&server, type_url::CLUSTER, &cv).await;
    let unsubscribe = server
        .wait_for_request(WAIT, |r| r.unsubscribe == ["eds-a"])
        .await;
    assert!(unsubscribe.is_some(), "{:#?}", server.requests());
    // The next accepted candidate has no endpoints left.
    let v = server.set(type_url::CLUSTER, "plain", cluster("plain", false));
    ack(&server, type_url::CLUSTER, &v).await;
    assert!(client
        .handler
        .names(type_url::CLUSTER_LOAD_ASSIGNMENT)
        .is_empty());
    client.shutdown().await;
}

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
