//! An Istio CA on loopback for the tests and the demos: a real gRPC server (tonic's server codec
//! over hyper's HTTP/2, behind rustls) answering `istio.v1.auth.IstioCertificateService/
//! CreateCertificate` the way istiod does, with a serving certificate for
//! `istiod.istio-system.svc` minted by its own [`Ca`].
//!
//! Authentication is a fixed map of bearer tokens to the identity each stands for. Checks, in
//! order: an injected failure (`Unavailable`), the token (`Unauthenticated`), `ClusterID` metadata
//! (`InvalidArgument`), the CSR (`InvalidArgument`), the CSR's SPIFFE id against the token's
//! (`PermissionDenied`; see [`CaServerOptions::check_csr_identity`]). The leaf is signed for the
//! requested validity (a non-positive request gets the default, a longer one the cap) and returned
//! as `[leaf, root]`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use rcgen::SanType;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tonic::{Request, Response, Status};

use crate::control::identity::istio_ca::{
    IstioCertificateRequest, IstioCertificateResponse, CREATE_CERTIFICATE_PATH,
    DEFAULT_CA_SERVER_NAME,
};
use crate::control::identity::{provider, Ca, CaClientConfig, Csr, SpiffeId};

/// How the simulated CA behaves.
#[derive(Debug, Clone)]
pub struct CaServerOptions {
    /// The name in the serving certificate's SAN (DNS name or IP address).
    pub server_name: String,
    /// Validity when the request asks for none.
    pub default_validity: Duration,
    /// Longest validity granted.
    pub max_validity: Duration,
    /// Refuse a CSR whose SPIFFE id is not the caller's (`PermissionDenied`). When off, sign for
    /// the caller's identity whatever the CSR asks, as istiod does.
    pub check_csr_identity: bool,
}

impl Default for CaServerOptions {
    fn default() -> Self {
        Self {
            server_name: DEFAULT_CA_SERVER_NAME.to_string(),
            default_validity: Duration::from_secs(24 * 3600),
            max_validity: Duration::from_secs(90 * 24 * 3600),
            check_csr_identity: true,
        }
    }
}

/// What the CA has seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CaServerStats {
    /// CreateCertificate calls received (all outcomes).
    pub requests: u64,
    /// Certificates issued.
    pub issued: u64,
    /// Calls refused by a check (not counting injected failures).
    pub rejected: u64,
    /// Calls failed on purpose with `Unavailable` ([`CaServerHandle::fail_next`]).
    pub injected_failures: u64,
    /// `ClusterID` of the last call that carried one.
    pub last_cluster_id: Option<String>,
    /// `validity_duration` (seconds) of the last call.
    pub last_requested_validity: Option<i64>,
}

struct State {
    ca: Ca,
    root_pem: String,
    options: CaServerOptions,
    tokens: Mutex<HashMap<String, SpiffeId>>,
    requests: AtomicU64,
    issued: AtomicU64,
    rejected: AtomicU64,
    injected: AtomicU64,
    fail_next: AtomicU32,
    last: Mutex<(Option<String>, Option<i64>)>,
}

/// A running CA; dropping it stops the server and closes its connections.
pub struct CaServerHandle {
    pub local_addr: SocketAddr,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Start a CA with a fresh root and the default options.
pub async fn start(addr: SocketAddr) -> std::io::Result<CaServerHandle> {
    let ca = Ca::new("sim Istio CA").map_err(std::io::Error::other)?;
    start_with(addr, ca, CaServerOptions::default()).await
}

/// Start a CA that signs with `ca` (whose root then is the mesh root).
pub async fn start_with(
    addr: SocketAddr,
    ca: Ca,
    options: CaServerOptions,
) -> std::io::Result<CaServerHandle> {
    let tls = Arc::new(serving_config(&ca, &options.server_name)?);
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let state = Arc::new(State {
        root_pem: ca.root_pem().to_string(),
        ca,
        options,
        tokens: Mutex::new(HashMap::new()),
        requests: AtomicU64::new(0),
        issued: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        injected: AtomicU64::new(0),
        fail_next: AtomicU32::new(0),
        last: Mutex::new((None, None)),
    });
    let (shutdown, stop) = oneshot::channel();
    let task = tokio::spawn(accept_loop(listener, tls, state.clone(), stop));
    Ok(CaServerHandle {
        local_addr,
        state,
        shutdown: Some(shutdown),
        task: Some(task),
    })
}

impl CaServerHandle {
    /// `ip:port` to dial.
    pub fn address(&self) -> String {
        self.local_addr.to_string()
    }

    /// The CA's root certificate (PEM): the mesh root, and the root of the serving certificate.
    pub fn root_pem(&self) -> &str {
        &self.state.root_pem
    }

    /// The signing CA, to mint further certificates under the same root.
    pub fn ca(&self) -> &Ca {
        &self.state.ca
    }

    /// The name the serving certificate carries.
    pub fn server_name(&self) -> &str {
        &self.state.options.server_name
    }

    /// Accept `token` as a bearer token standing for `id`.
    pub fn add_token(&self, token: &str, id: &SpiffeId) {
        self.state
            .tokens
            .lock()
            .insert(token.to_string(), id.clone());
    }

    /// Fail the next `n` calls with `Unavailable` (before any other check).
    pub fn fail_next(&self, n: u32) {
        self.state.fail_next.store(n, Ordering::SeqCst);
    }

    pub fn stats(&self) -> CaServerStats {
        let s = &self.state;
        let (last_cluster_id, last_requested_validity) = s.last.lock().clone();
        CaServerStats {
            requests: s.requests.load(Ordering::SeqCst),
            issued: s.issued.load(Ordering::SeqCst),
            rejected: s.rejected.load(Ordering::SeqCst),
            injected_failures: s.injected.load(Ordering::SeqCst),
            last_cluster_id,
            last_requested_validity,
        }
    }

    /// A client configuration for this CA: its address, server name and root, the given token,
    /// cluster `Kubernetes`, default validity.
    pub fn client_config(&self, token: Option<&str>) -> CaClientConfig {
        let mut cfg = CaClientConfig::new(self.address(), self.root_pem().as_bytes().to_vec());
        cfg.server_name = self.server_name().to_string();
        cfg.token = token.map(str::to_string);
        cfg
    }

    /// Stop accepting and close every connection.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for CaServerHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn serving_config(ca: &Ca, server_name: &str) -> std::io::Result<ServerConfig> {
    let san = match server_name.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(
            server_name
                .try_into()
                .map_err(|e: rcgen::Error| std::io::Error::other(e.to_string()))?,
        ),
    };
    let istiod = SpiffeId::new("cluster.local", "istio-system", "istiod");
    let minted = ca
        .issue_with(&istiod, |params| params.subject_alt_names = vec![san])
        .map_err(std::io::Error::other)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(minted.workload.chain, minted.workload.key)
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
                    tracing::debug!("sim CA accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(acceptor: tokio_rustls::TlsAcceptor, tcp: TcpStream, state: Arc<State>) {
    let tls = match acceptor.accept(tcp).await {
        Ok(tls) => tls,
        Err(e) => {
            tracing::debug!("sim CA TLS handshake failed: {e}");
            return;
        }
    };
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(state, req).await) }
    });
    if let Err(e) = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await
    {
        tracing::debug!("sim CA connection ended: {e}");
    }
}

async fn route(
    state: Arc<State>,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<tonic::body::Body> {
    if req.uri().path() != CREATE_CERTIFICATE_PATH {
        return Status::unimplemented(format!("unknown method {}", req.uri().path())).into_http();
    }
    let method = tower::service_fn(move |call: Request<IstioCertificateRequest>| {
        let state = state.clone();
        async move { state.create_certificate(call) }
    });
    let codec =
        tonic_prost::ProstCodec::<IstioCertificateResponse, IstioCertificateRequest>::default();
    tonic::server::Grpc::new(codec).unary(method, req).await
}

impl State {
    fn create_certificate(
        &self,
        call: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let injected = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if injected {
            self.injected.fetch_add(1, Ordering::SeqCst);
            return Err(Status::unavailable("injected failure"));
        }
        let result = self.check_and_sign(call);
        match &result {
            Ok(_) => self.issued.fetch_add(1, Ordering::SeqCst),
            Err(_) => self.rejected.fetch_add(1, Ordering::SeqCst),
        };
        result
    }

    fn check_and_sign(
        &self,
        call: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let metadata = call.metadata();
        let cluster_id = metadata
            .get("clusterid")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        let token = metadata
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let caller = token.and_then(|t| self.tokens.lock().get(t).cloned());
        let request = call.get_ref();
        *self.last.lock() = (cluster_id.clone(), Some(request.validity_duration));

        let Some(caller) = caller else {
            return Err(Status::unauthenticated("request authenticate failure"));
        };
        if cluster_id.is_none() {
            return Err(Status::invalid_argument("missing ClusterID metadata"));
        }
        let csr = Csr::from_pem(&request.csr)
            .map_err(|e| Status::invalid_argument(format!("invalid CSR: {e}")))?;
        if self.options.check_csr_identity {
            let requested = csr
                .spiffe_id()
                .map_err(|e| Status::invalid_argument(format!("CSR identity: {e}")))?;
            if requested != caller {
                return Err(Status::permission_denied(format!(
                    "caller {caller} may not request a certificate for {requested}"
                )));
            }
        }
        let validity = match u64::try_from(request.validity_duration) {
            Ok(0) | Err(_) => self.options.default_validity,
            Ok(secs) => Duration::from_secs(secs).min(self.options.max_validity),
        };
        let leaf = self
            .ca
            .sign_csr(&csr, &caller, validity)
            .map_err(|e| Status::internal(format!("signing failed: {e}")))?;
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: vec![leaf.pem(), self.root_pem.clone()],
        }))
    }
}
