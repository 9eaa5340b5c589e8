//! A client for Istio's CA (`istio.v1.auth.IstioCertificateService/CreateCertificate`, served by
//! istiod on port 15012), the way the Istio agent and ztunnel call it: TLS to the CA verified with
//! the mesh root bundle, `authorization: Bearer <projected token>` and `ClusterID` gRPC metadata, a
//! PEM CSR for a fresh key whose only SAN is the workload's SPIFFE id, and a PEM chain back (leaf
//! first, the root last).
//!
//! No protoc and no generated code: the two messages are written by hand with `prost`, and the
//! method is called through `tonic::client::Grpc` on its path. TLS is our own tokio-rustls on ring
//! (tonic's TLS features stay off), handed to tonic as an already-connected stream.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::metadata::MetadataValue;

use super::{peer_identity, provider, IdentityError, SpiffeId, WorkloadCert};

/// istiod's CA address inside the cluster (`CA_ADDR` defaults to the discovery address).
pub const DEFAULT_CA_ADDRESS: &str = "istiod.istio-system.svc:15012";
/// The DNS name istiod's serving certificate carries.
pub const DEFAULT_CA_SERVER_NAME: &str = "istiod.istio-system.svc";
/// Where Kubernetes projects the `istio-ca` audience service-account token.
pub const DEFAULT_TOKEN_PATH: &str = "/var/run/secrets/tokens/istio-token";
/// `CLUSTER_ID`'s default in Istio.
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
/// Requested certificate lifetime (Istio's `SECRET_TTL` default).
pub const DEFAULT_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// The gRPC method path.
pub const CREATE_CERTIFICATE_PATH: &str =
    "/istio.v1.auth.IstioCertificateService/CreateCertificate";

/// `istio.v1.auth.IstioCertificateRequest` (istio/api `security/v1alpha1/ca.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateRequest {
    /// PEM-encoded PKCS#10 certificate request.
    #[prost(string, tag = "1")]
    pub csr: String,
    /// Requested validity in seconds (the CA may shorten it).
    #[prost(int64, tag = "3")]
    pub validity_duration: i64,
    /// Opaque metadata (`CertSigner`, impersonation); unset by this client.
    #[prost(message, optional, tag = "4")]
    pub metadata: Option<prost_types::Struct>,
}

/// `istio.v1.auth.IstioCertificateResponse`: PEM certificates, the leaf first, the root last.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IstioCertificateResponse {
    #[prost(string, repeated, tag = "1")]
    pub cert_chain: Vec<String>,
}

/// Where and how to ask for a certificate.
#[derive(Clone)]
pub struct CaClientConfig {
    /// `host:port` of the CA.
    pub address: String,
    /// The name the CA's serving certificate must carry (a DNS name or an IP address).
    pub server_name: String,
    /// PEM bundle the CA's certificate is verified against; also the issued certificate's trust
    /// roots (the mesh root bundle).
    pub root_pem: Vec<u8>,
    /// Bearer token (the projected service-account token); `None` sends no `authorization`.
    pub token: Option<String>,
    /// Sent as `ClusterID` metadata; empty sends none.
    pub cluster_id: String,
    /// Requested certificate lifetime.
    pub validity: Duration,
    /// Bound on the whole exchange: connect, TLS, request, response.
    pub timeout: Duration,
}

impl std::fmt::Debug for CaClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaClientConfig")
            .field("address", &self.address)
            .field("server_name", &self.server_name)
            .field("root_pem_bytes", &self.root_pem.len())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("cluster_id", &self.cluster_id)
            .field("validity", &self.validity)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl CaClientConfig {
    /// Defaults as the Istio agent has them: the server name is the address's host
    /// (`istiod.istio-system.svc` when the host is `localhost`, for port-forwards), cluster
    /// `Kubernetes`, 24 h validity, a 10 s timeout, no token.
    pub fn new(address: impl Into<String>, root_pem: impl Into<Vec<u8>>) -> Self {
        let address = address.into();
        let server_name = xds_client::istiod_server_name(&address);
        Self {
            server_name,
            address,
            root_pem: root_pem.into(),
            token: None,
            cluster_id: DEFAULT_CLUSTER_ID.to_string(),
            validity: DEFAULT_VALIDITY,
            timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA {address}: invalid client configuration: {reason}")]
    Config { address: String, reason: String },
    #[error("CA {address}: cannot connect: {source}")]
    Connect {
        address: String,
        source: std::io::Error,
    },
    #[error("CA {address}: TLS handshake failed (expected server name {server_name:?}): {source}")]
    Tls {
        address: String,
        server_name: String,
        source: std::io::Error,
    },
    #[error("CA {address}: CreateCertificate failed: {code:?}: {message}")]
    Status {
        address: String,
        code: tonic::Code,
        message: String,
    },
    #[error("CA {address}: no answer within {timeout:?}")]
    Timeout { address: String, timeout: Duration },
    #[error("CA {address}: invalid certificate chain in the response: {reason}")]
    InvalidChain { address: String, reason: String },
    #[error("CA {address}: issued certificate is for {issued}, requested {requested}")]
    IdentityMismatch {
        address: String,
        requested: SpiffeId,
        issued: String,
    },
    #[error("CA {address}: cannot build the certificate request: {source}")]
    Csr {
        address: String,
        source: rcgen::Error,
    },
    #[error("CA token {path}: {reason}")]
    Token {
        path: std::path::PathBuf,
        reason: String,
    },
}

impl CaError {
    /// The gRPC status code, when the CA answered with an error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            CaError::Status { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// Read a projected token file, trimmed of surrounding whitespace.
pub fn read_token(path: &Path) -> Result<String, CaError> {
    let err = |reason: String| CaError::Token {
        path: path.to_path_buf(),
        reason,
    };
    let raw = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(err("file is empty".into()));
    }
    Ok(token.to_string())
}

/// Generate a fresh ECDSA P-256 key and a CSR for `id`, have the CA sign it, and return the
/// certificate: the chain the CA returned without its root, the new key, and `cfg.root_pem` as
/// trust roots. The leaf must carry exactly `id`, match the key and chain to `cfg.root_pem`.
pub async fn request_certificate(
    cfg: &CaClientConfig,
    id: &SpiffeId,
) -> Result<WorkloadCert, CaError> {
    let roots = parse_roots(cfg)?;
    let csr_err = |source| CaError::Csr {
        address: cfg.address.clone(),
        source,
    };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(csr_err)?;
    let csr_pem = csr_for(id, &key).map_err(csr_err)?;
    let request = IstioCertificateRequest {
        csr: csr_pem,
        validity_duration: i64::try_from(cfg.validity.as_secs()).unwrap_or(i64::MAX),
        metadata: None,
    };
    let chain =
        match tokio::time::timeout(cfg.timeout, create_certificate(cfg, &roots, request)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(CaError::Timeout {
                    address: cfg.address.clone(),
                    timeout: cfg.timeout,
                })
            }
        };
    build_cert(cfg, id, &key, &chain, roots)
}

fn csr_for(id: &SpiffeId, key: &KeyPair) -> Result<String, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
    params.serialize_request(key)?.pem()
}

fn parse_roots(cfg: &CaClientConfig) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let config_err = |reason: String| CaError::Config {
        address: cfg.address.clone(),
        reason,
    };
    let roots = CertificateDer::pem_slice_iter(&cfg.root_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_err(format!("root bundle is not valid PEM: {e}")))?;
    if roots.is_empty() {
        return Err(config_err("root bundle holds no CERTIFICATE".into()));
    }
    Ok(roots)
}

fn tls_config(
    cfg: &CaClientConfig,
    roots: &[CertificateDer<'static>],
) -> Result<Arc<ClientConfig>, CaError> {
    let config_err = |reason: String| CaError::Config {
        address: cfg.address.clone(),
        reason,
    };
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|e| config_err(format!("bad root certificate: {e}")))?;
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_err(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

async fn connect(
    cfg: &CaClientConfig,
    roots: &[CertificateDer<'static>],
) -> Result<TlsStream<TcpStream>, CaError> {
    let server_name =
        ServerName::try_from(cfg.server_name.clone()).map_err(|e| CaError::Config {
            address: cfg.address.clone(),
            reason: format!("server name {:?}: {e}", cfg.server_name),
        })?;
    let connector = tokio_rustls::TlsConnector::from(tls_config(cfg, roots)?);
    let tcp = TcpStream::connect(&cfg.address)
        .await
        .map_err(|source| CaError::Connect {
            address: cfg.address.clone(),
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    connector
        .connect(server_name, tcp)
        .await
        .map_err(|source| CaError::Tls {
            address: cfg.address.clone(),
            server_name: cfg.server_name.clone(),
            source,
        })
}

/// One CreateCertificate call on a fresh connection; the raw PEM chain back.
async fn create_certificate(
    cfg: &CaClientConfig,
    roots: &[CertificateDer<'static>],
    request: IstioCertificateRequest,
) -> Result<Vec<String>, CaError> {
    let config_err = |reason: String| CaError::Config {
        address: cfg.address.clone(),
        reason,
    };
    let transport_err = |e: &dyn std::fmt::Display| CaError::Connect {
        address: cfg.address.clone(),
        source: std::io::Error::other(e.to_string()),
    };
    let mut grpc_request = tonic::Request::new(request);
    if let Some(token) = &cfg.token {
        let value = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| config_err("token holds characters not allowed in a header".into()))?;
        grpc_request.metadata_mut().insert("authorization", value);
    }
    if !cfg.cluster_id.is_empty() {
        let value = MetadataValue::try_from(cfg.cluster_id.as_str())
            .map_err(|_| config_err(format!("cluster id {:?}", cfg.cluster_id)))?;
        grpc_request.metadata_mut().insert("clusterid", value);
    }
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{}", cfg.address))
        .map_err(|e| config_err(format!("address is not host:port: {e}")))?;

    let tls = connect(cfg, roots).await?;
    // Hand tonic the connection we made; it is the only one this call gets.
    let slot = Arc::new(parking_lot::Mutex::new(Some(TokioIo::new(tls))));
    let connector = tower::service_fn(move |_: http::Uri| {
        let io = slot.lock().take();
        async move { io.ok_or_else(|| std::io::Error::other("connection to the CA was closed")) }
    });
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| transport_err(&e))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| transport_err(&e))?;
    let codec =
        tonic_prost::ProstCodec::<IstioCertificateRequest, IstioCertificateResponse>::default();
    let response = grpc
        .unary(
            grpc_request,
            PathAndQuery::from_static(CREATE_CERTIFICATE_PATH),
            codec,
        )
        .await
        .map_err(|status| CaError::Status {
            address: cfg.address.clone(),
            code: status.code(),
            message: status.message().to_string(),
        })?;
    Ok(response.into_inner().cert_chain)
}

fn build_cert(
    cfg: &CaClientConfig,
    id: &SpiffeId,
    key: &KeyPair,
    chain: &[String],
    roots: Vec<CertificateDer<'static>>,
) -> Result<WorkloadCert, CaError> {
    let invalid = |reason: String| CaError::InvalidChain {
        address: cfg.address.clone(),
        reason,
    };
    let Some((root, issued)) = chain.split_last().filter(|(_, issued)| !issued.is_empty()) else {
        return Err(invalid(format!(
            "{} element(s), expected the leaf (and any intermediates) followed by the root",
            chain.len()
        )));
    };
    let mut certs = Vec::new();
    for (i, element) in issued.iter().chain(std::iter::once(root)).enumerate() {
        let parsed = CertificateDer::pem_slice_iter(element.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(format!("element {i} is not valid PEM: {e}")))?;
        if parsed.is_empty() {
            return Err(invalid(format!("element {i} holds no CERTIFICATE")));
        }
        if i < issued.len() {
            certs.extend(parsed);
        }
    }

    match peer_identity(&certs[0]) {
        Ok(issued) if issued == *id => {}
        Ok(other) => {
            return Err(CaError::IdentityMismatch {
                address: cfg.address.clone(),
                requested: id.clone(),
                issued: other.to_string(),
            })
        }
        Err(reason) => {
            return Err(CaError::IdentityMismatch {
                address: cfg.address.clone(),
                requested: id.clone(),
                issued: format!("a certificate without a usable SPIFFE id ({reason})"),
            })
        }
    }

    let mut store = RootCertStore::empty();
    for r in &roots {
        let _ = store.add(r.clone());
    }
    let provider = provider();
    let leaf = rustls::server::ParsedCertificate::try_from(&certs[0])
        .map_err(|e| invalid(format!("leaf certificate: {e}")))?;
    verify_server_cert_signed_by_trust_anchor(
        &leaf,
        &store,
        &certs[1..],
        UnixTime::now(),
        provider.signature_verification_algorithms.all,
    )
    .map_err(|e| invalid(format!("does not chain to the configured root bundle: {e}")))?;

    let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    WorkloadCert::from_parts(certs, key_der, roots).map_err(|e| match e {
        IdentityError::KeyMismatch(reason) => invalid(format!(
            "the leaf does not carry the requested key: {reason}"
        )),
        other => invalid(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::identity::{Ca, Csr};

    fn cfg(ca: &Ca) -> CaClientConfig {
        CaClientConfig::new("ca.test:15012", ca.root_pem().as_bytes().to_vec())
    }

    fn id(sa: &str) -> SpiffeId {
        SpiffeId::new("cluster.local", "default", sa)
    }

    fn key() -> KeyPair {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap()
    }

    /// What the CA would answer for `key` and `id`: `[leaf, root]`.
    fn signed(ca: &Ca, key: &KeyPair, id: &SpiffeId) -> Vec<String> {
        let csr = Csr::from_pem(&csr_for(id, key).unwrap()).unwrap();
        let leaf = ca.sign_csr(&csr, id, DEFAULT_VALIDITY).unwrap();
        vec![leaf.pem(), ca.root_pem().to_string()]
    }

    fn build(
        ca: &Ca,
        key: &KeyPair,
        id: &SpiffeId,
        chain: &[String],
    ) -> Result<WorkloadCert, CaError> {
        let cfg = cfg(ca);
        let roots = parse_roots(&cfg).unwrap();
        build_cert(&cfg, id, key, chain, roots)
    }

    #[test]
    fn csr_round_trip_carries_the_spiffe_id_and_key() {
        let ca = Ca::new("unit").unwrap();
        let key = key();
        let pem = csr_for(&id("reviews"), &key).unwrap();
        let csr = Csr::from_pem(&pem).unwrap();
        assert_eq!(csr.spiffe_id().unwrap(), id("reviews"));
        assert_eq!(
            csr.uri_sans(),
            ["spiffe://cluster.local/ns/default/sa/reviews"]
        );
        let cert = build(
            &ca,
            &key,
            &id("reviews"),
            &signed(&ca, &key, &id("reviews")),
        )
        .unwrap();
        assert_eq!(cert.id, id("reviews"));
        assert_eq!(cert.chain.len(), 1);
        assert_eq!(cert.roots, vec![ca.root_der()]);
    }

    #[test]
    fn tampered_or_garbage_csr_is_refused() {
        assert!(Csr::from_pem("not pem").is_err());
        let pem = csr_for(&id("reviews"), &key()).unwrap();
        let mut lines: Vec<String> = pem.lines().map(str::to_string).collect();
        // The last base64 line ends inside the signature's `s` integer.
        let last = lines.len() - 2;
        let line = &mut lines[last];
        let at = line.len() / 2;
        let flipped = if &line[at..at + 1] == "A" { "B" } else { "A" };
        line.replace_range(at..at + 1, flipped);
        let err = Csr::from_pem(&lines.join("\n"))
            .err()
            .expect("tampered CSR accepted");
        assert!(err.to_string().contains("signature"), "{err}");
    }

    #[test]
    fn malformed_chains_are_invalid() {
        let ca = Ca::new("unit").unwrap();
        let key = key();
        let want = id("reviews");
        let good = signed(&ca, &key, &want);
        for (chain, expect) in [
            (vec![], "0 element(s)"),
            (vec![good[0].clone()], "1 element(s)"),
            (
                vec!["garbage".into(), good[1].clone()],
                "element 0 holds no CERTIFICATE",
            ),
            (
                vec![good[0].clone(), String::new()],
                "element 1 holds no CERTIFICATE",
            ),
        ] {
            let err = build(&ca, &key, &want, &chain).unwrap_err();
            assert!(matches!(err, CaError::InvalidChain { .. }), "{err}");
            let text = err.to_string();
            assert!(
                text.contains(expect) && text.contains("ca.test:15012"),
                "{text}"
            );
        }
    }

    #[test]
    fn leaf_from_another_root_or_for_another_key_is_invalid() {
        let ca = Ca::new("unit").unwrap();
        let other = Ca::new("other").unwrap();
        let key = key();
        let want = id("reviews");
        let err = build(&ca, &key, &want, &signed(&other, &key, &want)).unwrap_err();
        assert!(
            err.to_string()
                .contains("does not chain to the configured root bundle"),
            "{err}"
        );
        let err = build(&ca, &key, &want, &signed(&ca, &self::key(), &want)).unwrap_err();
        assert!(
            err.to_string().contains("does not carry the requested key"),
            "{err}"
        );
    }

    #[test]
    fn leaf_for_another_identity_is_a_mismatch() {
        let ca = Ca::new("unit").unwrap();
        let key = key();
        let err = build(
            &ca,
            &key,
            &id("reviews"),
            &signed(&ca, &key, &id("ratings")),
        )
        .unwrap_err();
        assert!(matches!(err, CaError::IdentityMismatch { .. }), "{err}");
        assert!(err.to_string().contains("sa/ratings"), "{err}");
    }

    #[test]
    fn server_name_defaults_to_the_host() {
        assert_eq!(
            CaClientConfig::new("istiod.istio-system.svc:15012", "").server_name,
            "istiod.istio-system.svc"
        );
        // istiod's serving certificate names DNS names only: an IP gets istiod's name.
        for address in ["10.0.0.7:15012", "[::1]:15012", "localhost:15012"] {
            assert_eq!(
                CaClientConfig::new(address, "").server_name,
                DEFAULT_CA_SERVER_NAME,
                "{address}"
            );
        }
        assert_eq!(
            CaClientConfig::new("localhost:15012", "").server_name,
            DEFAULT_CA_SERVER_NAME
        );
    }

    #[test]
    fn messages_use_istio_field_numbers() {
        use prost::Message;
        let req = IstioCertificateRequest {
            csr: "x".into(),
            validity_duration: 1,
            metadata: Some(prost_types::Struct::default()),
        };
        // tag 1 string, tag 3 varint, tag 4 message
        assert_eq!(req.encode_to_vec(), [0x0a, 1, b'x', 0x18, 1, 0x22, 0]);
        let resp = IstioCertificateResponse {
            cert_chain: vec!["a".into(), "b".into()],
        };
        assert_eq!(resp.encode_to_vec(), [0x0a, 1, b'a', 0x0a, 1, b'b']);
    }
}
