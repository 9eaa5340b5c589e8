//! An ADS server for tests: Delta and state-of-the-world, over TLS, with istiod's
//! authentication shape (bearer token, optional client certificate), a mutable resource set per
//! type URL pushed to connected streams, and a log of every request received.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::pb::google::rpc;
use futures::channel::mpsc;
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use rustls::pki_types::CertificateDer;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};
use tonic::{Request, Response, Status, Streaming};
use tower::Service;

use super::pki::TestPki;
use super::streams::{serve_stream, DeltaStream, SotwStream};
use crate::config::DEFAULT_SERVER_NAME;

/// How the server authenticates and which flavours it speaks.
#[derive(Debug, Clone)]
pub struct AdsServerOptions {
    /// Required `authorization: Bearer <token>`; `None` accepts any caller.
    pub token: Option<String>,
    /// Refuse TLS handshakes without a client certificate from the test CA (always *asked* for).
    pub require_client_cert: bool,
    /// Answer `DeltaAggregatedResources` (else `Unimplemented`).
    pub delta: bool,
    /// Answer `StreamAggregatedResources` (else `Unimplemented`).
    pub sotw: bool,
    /// The DNS name in the serving certificate.
    pub server_name: String,
    /// Types pushed to every Delta stream although it never asked for them (as a server that
    /// misbehaves, or a newer one, might), wildcard, on every change.
    pub unsolicited: Vec<String>,
}

impl Default for AdsServerOptions {
    fn default() -> Self {
        Self {
            token: None,
            require_client_cert: false,
            delta: true,
            sotw: true,
            server_name: DEFAULT_SERVER_NAME.to_string(),
            unsolicited: Vec::new(),
        }
    }
}

impl AdsServerOptions {
    pub fn with_token(token: &str) -> Self {
        Self {
            token: Some(token.to_string()),
            ..Self::default()
        }
    }
}

/// One request as the server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// Stream number (1, 2, ...), in order of stream start.
    pub stream: u64,
    pub delta: bool,
    pub type_url: String,
    /// Present on the requests that carried it (the first of each stream).
    pub node: Option<Node>,
    pub response_nonce: String,
    /// As sent (state of the world only).
    pub version_info: String,
    /// The version of the response `response_nonce` refers to (both flavours).
    pub responded_version: Option<String>,
    pub error_detail: Option<rpc::Status>,
    /// State of the world.
    pub resource_names: Vec<String>,
    /// Delta.
    pub subscribe: Vec<String>,
    pub unsubscribe: Vec<String>,
    pub initial_resource_versions: HashMap<String, String>,
    /// `clusterid` metadata of the stream.
    pub cluster_id: Option<String>,
    /// Whether the connection presented a client certificate.
    pub client_cert: bool,
}

impl Received {
    pub fn is_nack(&self) -> bool {
        self.error_detail.is_some()
    }

    pub fn is_ack(&self) -> bool {
        !self.response_nonce.is_empty() && self.error_detail.is_none()
    }
}

#[derive(Default)]
struct TypeSet {
    version: u64,
    /// Shared with the streams' pushes: a push takes it without copying every resource (at
    /// thousands of resources a copy per change made the server, not the client, the slow side).
    items: Arc<Items>,
    /// The name each version changed (set or removed): a push walks what changed since the
    /// version a stream last compared, not every resource (istiod pushes only what changed).
    changes: BTreeMap<u64, String>,
}

/// A type's resources: name → (resource version, payload).
pub(super) type Items = BTreeMap<String, (String, Any)>;

pub(super) struct State {
    pub(super) options: Mutex<AdsServerOptions>,
    resources: Mutex<BTreeMap<String, TypeSet>>,
    /// Bumped on every resource change; streams push on change.
    pub(super) generation: watch::Sender<u64>,
    log: Mutex<Vec<Received>>,
    /// Length of `log`, for waiters.
    logged: watch::Sender<usize>,
    nonce_versions: Mutex<HashMap<String, String>>,
    nonces: AtomicU64,
    streams: AtomicU64,
    refused: AtomicU64,
    /// Bumped on stop: stream tasks end.
    pub(super) epoch: watch::Sender<u64>,
}

struct Running {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// A running (or stopped, restartable) ADS server. Dropping it stops it.
pub struct AdsServer {
    addr: SocketAddr,
    tls: Arc<ServerConfig>,
    root_pem: String,
    state: Arc<State>,
    running: Mutex<Option<Running>>,
}

impl std::fmt::Debug for AdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdsServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// The connection's client certificate, handed to the gRPC handlers.
#[derive(Clone)]
struct PeerCert(bool);

impl AdsServer {
    /// Listen on `addr` (port 0 picks one) with a serving certificate from `pki`.
    pub async fn start(
        addr: SocketAddr,
        pki: &TestPki,
        options: AdsServerOptions,
    ) -> std::io::Result<Self> {
        let tls = Arc::new(serving_config(pki, &options)?);
        let state = Arc::new(State {
            options: Mutex::new(options),
            resources: Mutex::new(BTreeMap::new()),
            generation: watch::channel(0).0,
            log: Mutex::new(Vec::new()),
            logged: watch::channel(0).0,
            nonce_versions: Mutex::new(HashMap::new()),
            nonces: AtomicU64::new(0),
            streams: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            epoch: watch::channel(0).0,
        });
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let server = Self {
            addr,
            tls,
            root_pem: pki.root_pem().to_string(),
            state,
            running: Mutex::new(None),
        };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&self, listener: TcpListener) {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(
            listener,
            self.tls.clone(),
            self.state.clone(),
            stopped,
        ));
        *self.running.lock() = Some(Running { stop, task });
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `ip:port` to dial.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The root the serving certificate chains to.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn server_name(&self) -> String {
        self.state.options.lock().server_name.clone()
    }

    /// Require `token` from now on (`None`: no check). Streams already up are unaffected.
    pub fn set_token(&self, token: Option<&str>) {
        self.state.options.lock().token = token.map(str::to_string);
    }

    /// Add or replace a resource; returns the type's new version (also the resource's version).
    pub fn set(&self, type_url: &str, name: &str, value: Any) -> String {
        self.change(type_url, name, |items, version| {
            items.insert(name.to_string(), (version.to_string(), value));
        })
    }

    /// Remove a resource; returns the type's new version.
    pub fn remove(&self, type_url: &str, name: &str) -> String {
        self.change(type_url, name, |items, _| {
            items.remove(name);
        })
    }

    fn change(&self, type_url: &str, name: &str, f: impl FnOnce(&mut Items, &str)) -> String {
        let version = {
            let mut resources = self.state.resources.lock();
            let set = resources.entry(type_url.to_string()).or_default();
            set.version += 1;
            set.changes.insert(set.version, name.to_string());
            let version = set.version.to_string();
            f(Arc::make_mut(&mut set.items), &version);
            version
        };
        self.state.generation.send_modify(|g| *g += 1);
        version
    }

    /// The type's current version ("0" before any change).
    pub fn version(&self, type_url: &str) -> String {
        self.state
            .resources
            .lock()
            .get(type_url)
            .map_or(0, |s| s.version)
            .to_string()
    }

    pub fn requests(&self) -> Vec<Received> {
        self.state.log.lock().clone()
    }

    pub fn acks(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(Received::is_ack)
            .collect()
    }

    pub fn nacks(&self) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(Received::is_nack)
            .collect()
    }

    /// Streams accepted (authenticated) so far.
    pub fn streams(&self) -> u64 {
        self.state.streams.load(Ordering::SeqCst)
    }

    /// Streams refused for authentication so far.
    pub fn refused(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Wait for a request matching `pred`; the first such, or `None` after `timeout`.
    pub async fn wait_for_request(
        &self,
        timeout: Duration,
        pred: impl Fn(&Received) -> bool,
    ) -> Option<Received> {
        let mut rx = self.state.logged.subscribe();
        let found = || self.state.log.lock().iter().find(|r| pred(r)).cloned();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|_| found().is_some())).await;
        match waited {
            Ok(Ok(_)) => found(),
            _ => None,
        }
    }

    /// Wait for an ACK of `version` of `type_url`.
    pub async fn wait_for_ack(&self, type_url: &str, version: &str, timeout: Duration) -> bool {
        self.wait_for_request(timeout, |r| {
            r.is_ack() && r.type_url == type_url && r.responded_version.as_deref() == Some(version)
        })
        .await
        .is_some()
    }

    /// Wait for a NACK of `type_url`.
    pub async fn wait_for_nack(&self, type_url: &str, timeout: Duration) -> Option<Received> {
        self.wait_for_request(timeout, |r| r.is_nack() && r.type_url == type_url)
            .await
    }

    /// Stop listening and close every connection and stream. Resources and the log are kept.
    pub async fn stop(&self) {
        let running = self.running.lock().take();
        if let Some(running) = running {
            // The accept loop may already be gone; then there is nothing to stop.
            let _ = running.stop.send(());
            if let Err(e) = running.task.await {
                tracing::debug!("test ADS server task ended: {e}");
            }
        }
        self.state.epoch.send_modify(|e| *e += 1);
    }

    /// Listen again on the same address (after [`AdsServer::stop`]).
    pub async fn restart(&self) -> std::io::Result<()> {
        self.stop().await;
        let listener = TcpListener::bind(self.addr).await?;
        self.serve(listener);
        Ok(())
    }
}

impl Drop for AdsServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.lock().take() {
            running.task.abort();
        }
        self.state.epoch.send_modify(|e| *e += 1);
    }
}

fn serving_config(pki: &TestPki, options: &AdsServerOptions) -> std::io::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let issued = pki.issue(&[options.server_name.as_str()]);
    let mut roots = RootCertStore::empty();
    roots
        .add(pki.root_der().clone())
        .map_err(std::io::Error::other)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
    let verifier = if options.require_client_cert {
        verifier.build()
    } else {
        verifier.allow_unauthenticated().build()
    }
    .map_err(std::io::Error::other)?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(issued.chain, issued.key)
        .map_err(std::io::Error::other)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

async fn accept_loop(
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    state: Arc<State>,
    mut stop: oneshot::Receiver<()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    // Dropped with this task: aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    connections.spawn(serve_connection(acceptor.clone(), tcp, state.clone()));
                }
                Err(e) => {
                    tracing::debug!("test ADS server accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(acceptor: tokio_rustls::TlsAcceptor, tcp: TcpStream, state: Arc<State>) {
    // As istiod: Go's TCP connections have Nagle's algorithm off unless asked (`net.TCPConn`
    // `SetNoDelay`: "The default is true"). With it on, a response's last segment could wait for
    // the waypoint's delayed ACK (40 ms on Linux) and push latencies would measure that.
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("test ADS server: TCP_NODELAY: {e}");
    }
    let tls = match acceptor.accept(tcp).await {
        Ok(tls) => tls,
        Err(e) => {
            tracing::debug!("test ADS server TLS handshake failed: {e}");
            return;
        }
    };
    let peer = PeerCert(
        tls.get_ref()
            .1
            .peer_certificates()
            .is_some_and(|c: &[CertificateDer<'_>]| !c.is_empty()),
    );
    let grpc = AggregatedDiscoveryServiceServer::new(Ads { state })
        .max_decoding_message_size(crate::transport::MAX_MESSAGE_SIZE);
    let service =
        hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer.clone());
            let mut grpc = grpc.clone();
            async move { grpc.call(req).await }
        });
    if let Err(e) = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!("test ADS server connection ended: {e}");
    }
}

struct Ads {
    state: Arc<State>,
}

/// What a stream knows about its caller.
pub(super) struct Caller {
    pub(super) stream: u64,
    pub(super) cluster_id: Option<String>,
    pub(super) client_cert: bool,
}

impl State {
    fn authenticate<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let metadata = request.metadata();
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let required = self.options.lock().token.clone();
        if let Some(required) = required {
            if token != Some(required.as_str()) {
                self.refused.fetch_add(1, Ordering::SeqCst);
                return Err(Status::unauthenticated("authentication failure"));
            }
        }
        let stream = self.streams.fetch_add(1, Ordering::SeqCst) + 1;
        Ok(Caller {
            stream,
            cluster_id: metadata
                .get("clusterid")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            client_cert: request.extensions().get::<PeerCert>().is_some_and(|p| p.0),
        })
    }

    pub(super) fn record(&self, received: Received) {
        let len = {
            let mut log = self.log.lock();
            log.push(received);
            log.len()
        };
        self.logged.send_replace(len);
    }

    pub(super) fn next_nonce(&self, version: &str) -> String {
        let nonce = format!("n{}", self.nonces.fetch_add(1, Ordering::SeqCst) + 1);
        self.nonce_versions
            .lock()
            .insert(nonce.clone(), version.to_string());
        nonce
    }

    pub(super) fn responded_version(&self, nonce: &str) -> Option<String> {
        self.nonce_versions.lock().get(nonce).cloned()
    }

    /// One type's version and resources (name -> (version, payload)), and when `since` is
    /// given, the names changed after that version.
    pub(super) fn snapshot(&self, type_url: &str, since: Option<u64>) -> TypeSnapshot {
        let resources = self.resources.lock();
        let Some(set) = resources.get(type_url) else {
            return TypeSnapshot {
                version: 0,
                items: Arc::default(),
                changed: since.map(|_| BTreeSet::new()),
            };
        };
        TypeSnapshot {
            version: set.version,
            items: set.items.clone(),
            changed: since.map(|s| {
                set.changes
                    .range(s.saturating_add(1)..)
                    .map(|(_, name)| name.clone())
                    .collect()
            }),
        }
    }
}

/// See [`State::snapshot`].
pub(super) struct TypeSnapshot {
    pub(super) version: u64,
    pub(super) items: Arc<Items>,
    pub(super) changed: Option<BTreeSet<String>>,
}

type ResponseStream<T> = mpsc::UnboundedReceiver<Result<T, Status>>;

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        if !self.state.options.lock().sotw {
            return Err(Status::unimplemented("state-of-the-world ADS is off"));
        }
        let caller = self.state.authenticate(&request)?;
        let (tx, rx) = mpsc::unbounded();
        let stream = SotwStream {
            state: self.state.clone(),
            caller,
            tx,
            subs: BTreeMap::new(),
        };
        tokio::spawn(serve_stream(stream, request.into_inner()));
        Ok(Response::new(rx))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        if !self.state.options.lock().delta {
            return Err(Status::unimplemented("delta ADS is off"));
        }
        let caller = self.state.authenticate(&request)?;
        let (tx, rx) = mpsc::unbounded();
        let stream = DeltaStream {
            state: self.state.clone(),
            caller,
            tx,
            subs: BTreeMap::new(),
        };
        tokio::spawn(serve_stream(stream, request.into_inner()));
        Ok(Response::new(rx))
    }
}
