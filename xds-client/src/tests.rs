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

mod batch;
mod connection;
mod sotw;

const WAIT: Duration = Duration::from_secs(10);
const TOKEN: &str = "good-token";

/// What the test handler saw and decides.
#[derive(Default)]
struct Shared {
    /// Every accepted candidate, in order.
    accepted: Vec<ResourceState>,
    /// Every response offered: (type, updated, removed).
    offered: Vec<(String, Vec<String>, Vec<String>)>,
    /// How many responses each call of the handler judged together.
    batches: Vec<usize>,
    /// Cluster names to reject.
    reject: BTreeSet<String>,
    /// Refuse those clusters alone and accept the rest (partial acceptance) instead of
    /// rejecting the whole candidate.
    partial: bool,
    /// The subscriptions handed back last: handed back again (shared) while unchanged, as the
    /// waypoint's handler does.
    subscriptions: Subscriptions,
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
            .map(|r| r.name.to_string())
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
        shared.offered.extend(
            update
                .changes
                .iter()
                .map(|c| (c.type_url.clone(), c.updated.clone(), c.removed.clone())),
        );
        shared.batches.push(update.changes.len());
        let mut rejections = Vec::new();
        let mut eds = Vec::new();
        for resource in update.state.resources(type_url::CLUSTER) {
            match resource.decode::<Cluster>() {
                Ok(_) if shared.reject.contains(&*resource.name) => rejections.push(
                    Rejection::new(type_url::CLUSTER, &resource.name, "refused by the test"),
                ),
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
        let subscriptions = Subscriptions::new().with(type_url::CLUSTER_LOAD_ASSIGNMENT, eds);
        if subscriptions != shared.subscriptions {
            shared.subscriptions = subscriptions;
        }
        Ok(Applied {
            subscriptions: shared.subscriptions.clone(),
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
    // Two responses' payloads, one type URL allocation (the process's).
    let both = client.handler.current();
    let url = |name| {
        both.get(type_url::CLUSTER, name)
            .unwrap()
            .value
            .type_url
            .clone()
    };
    assert!(Arc::ptr_eq(&url("c1"), &url("c2")));
    assert!(Arc::ptr_eq(
        &url("c1"),
        &crate::intern_type_url(type_url::CLUSTER)
    ));
    let other = "type.googleapis.com/example.Unknown";
    assert_eq!(&*crate::intern_type_url(other), other);
    // A resource's name is one string, the map's key and the resource's.
    let clusters = both.type_state(type_url::CLUSTER);
    let (key, held) = clusters.resources.get_key_value("c2").unwrap();
    assert!(Arc::ptr_eq(key, &held.name));
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

/// With a compacting hook the client keeps what the hook gives for each payload (here the
/// bytes and an unknown field, which decode as the cluster still), after reading the name
/// from the bytes as they came; in both protocols.
#[tokio::test]
async fn payloads_are_kept_in_the_hook_s_form() {
    fn marked(type_url: &str, raw: &[u8]) -> Option<bytes::Bytes> {
        // Offered with its type.
        (type_url == type_url::CLUSTER).then(|| [raw, MARK].concat().into())
    }
    // Field 999, varint 1: skipped by a decoder.
    const MARK: &[u8] = &[0xb8, 0x3e, 0x01];
    for mode in [Mode::Delta, Mode::StateOfTheWorld] {
        let (_pki, server) = server(AdsServerOptions::with_token(TOKEN)).await;
        let v = server.set(type_url::CLUSTER, "c1", cluster("c1", false));
        let token = TokenFile::new(TOKEN);
        let mut cfg = config(&server, mode, &token);
        cfg.compact = Some(marked);
        let client = start_client(cfg, token);
        ack(&server, type_url::CLUSTER, &v).await;
        let state = client.handler.current();
        let kept = &state.get(type_url::CLUSTER, "c1").unwrap().value.value;
        assert!(kept.ends_with(MARK), "{mode:?}");
        assert_eq!(kept.len(), cluster("c1", false).value.len() + MARK.len());
        client.shutdown().await;
    }
}
