//! One TLS connection to istiod handed to tonic, and the call metadata istiod authenticates.
//! TLS is our own tokio-rustls on ring (tonic's TLS features stay off).

use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig as TlsConfig, RootCertStore};
use tokio::net::TcpStream;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::ads::Ads;
use crate::config::{ClientConfig, ConfigError};

/// gRPC metadata key for the cluster the token belongs to. istiod reads it lowercased
/// (`clusterid`, `security/pkg/server/ca/authenticate/kubeauth/kube_jwt.go`); the Istio agent
/// writes `ClusterID`, which HTTP/2 lowercases on the wire.
pub const CLUSTER_ID_METADATA: &str = "clusterid";
/// `authorization: Bearer <token>` (`pkg/security/security.go`, `BearerTokenPrefix`).
pub const AUTHORIZATION_METADATA: &str = "authorization";
/// Largest response accepted (tonic's default, 4 MiB, is too small for a mesh-wide CDS).
pub const MAX_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read the token {path}: {reason}")]
    Token { path: String, reason: String },
    #[error("cannot connect to {address}: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error(
        "TLS handshake with {address} failed (expected server name {server_name:?}): {source}"
    )]
    Tls {
        address: String,
        server_name: String,
        source: std::io::Error,
    },
    #[error("HTTP/2 connection to {address} failed: {reason}")]
    Http2 { address: String, reason: String },
    #[error("{address} did not answer within {timeout:?}")]
    Timeout {
        address: String,
        timeout: std::time::Duration,
    },
}

pub(crate) fn tls_config(cfg: &ClientConfig) -> Result<Arc<TlsConfig>, ConfigError> {
    let mut store = RootCertStore::empty();
    for root in cfg.roots()? {
        store
            .add(root)
            .map_err(|e| ConfigError::Invalid(format!("bad root certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = TlsConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Invalid(e.to_string()))?
        .with_root_certificates(store);
    let mut config = match &cfg.client_cert {
        Some(resolver) => builder.with_client_cert_resolver(resolver.clone()),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

pub(crate) fn server_name(cfg: &ClientConfig) -> Result<ServerName<'static>, ConfigError> {
    ServerName::try_from(cfg.server_name.clone())
        .map_err(|e| ConfigError::Invalid(format!("server name {:?}: {e}", cfg.server_name)))
}

/// The metadata for one stream: a token read now (so a rotated token is picked up) and the
/// cluster id.
pub(crate) fn call_metadata(cfg: &ClientConfig) -> Result<MetadataMap, ConnectError> {
    let mut metadata = MetadataMap::new();
    if let Some(path) = &cfg.token_path {
        let token_err = |reason: String| ConnectError::Token {
            path: path.display().to_string(),
            reason,
        };
        let raw = std::fs::read_to_string(path).map_err(|e| token_err(e.to_string()))?;
        let token = raw.trim();
        if token.is_empty() {
            return Err(token_err("file is empty".into()));
        }
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| token_err("holds characters not allowed in a header".into()))?;
        metadata.insert(AUTHORIZATION_METADATA, value);
    }
    if !cfg.cluster_id.is_empty() {
        let value = MetadataValue::try_from(cfg.cluster_id.as_str())
            .map_err(|_| ConfigError::Invalid(format!("cluster id {:?}", cfg.cluster_id)))?;
        metadata.insert(CLUSTER_ID_METADATA, value);
    }
    Ok(metadata)
}

/// TCP, TLS and HTTP/2 to istiod; an ADS client on that one connection.
pub(crate) async fn connect(
    cfg: &ClientConfig,
    tls: Arc<TlsConfig>,
    name: ServerName<'static>,
) -> Result<Ads, ConnectError> {
    let tcp = TcpStream::connect(&cfg.address)
        .await
        .map_err(|source| ConnectError::Connect {
            address: cfg.address.clone(),
            source,
        })?;
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!("xDS: cannot set TCP_NODELAY: {e}");
    }
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|source| ConnectError::Tls {
            address: cfg.address.clone(),
            server_name: cfg.server_name.clone(),
            source,
        })?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", cfg.address))
        .map_err(|e| ConfigError::Invalid(format!("address is not host:port: {e}")))?
        // Notices a dead peer on an idle stream (istiod pushes rarely).
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    // Hand tonic the connection we made; it is the only one this channel gets (a reconnect is a
    // new `connect`).
    let slot = Arc::new(parking_lot::Mutex::new(Some(TokioIo::new(stream))));
    let connector = tower::service_fn(move |_: http::Uri| {
        let io = slot.lock().take();
        async move { io.ok_or_else(|| std::io::Error::other("connection to istiod was closed")) }
    });
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| ConnectError::Http2 {
            address: cfg.address.clone(),
            reason: e.to_string(),
        })?;
    Ok(Ads::new(channel))
}
