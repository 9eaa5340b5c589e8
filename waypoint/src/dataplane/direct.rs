//! Endpoints outside the mesh (no HBONE): dialled directly over TCP, with TLS originated when
//! the cluster's DestinationRule says SIMPLE / MUTUAL (istiod: `internal_upstream` wrapping
//! `tls` on a `socket_address` endpoint).
//!
//! The TLS session is handed to pingora as a virtual stream (pingora never reuses one), so
//! every request to a TLS endpoint opens its own connection; plaintext direct connections are
//! ordinary pingora TCP peers and pooled by pingora.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_core::connectors::L4Connect;
use pingora_core::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora_core::protocols::l4::stream::Stream;
use pingora_core::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora_error::{Error, ErrorType, Result};
use routing::{SanMatcher, UpstreamTls};
use rustls::pki_types::pem::Error as PemError;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::control::identity::{cert_sans, provider, ChainVerifier, EndEntityCheck, IdentityError};

/// Istio's default connect timeout.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a direct endpoint's TLS cannot be set up, or the endpoint cannot be reached.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    /// The DestinationRule's `caCertificates` file cannot be read.
    #[error("caCertificates {path}: {source}")]
    CaRead {
        path: String,
        source: std::io::Error,
    },
    /// A certificate of `caCertificates` that rustls refuses as a root.
    #[error("caCertificates {path}: {source}")]
    CaCert { path: String, source: rustls::Error },
    /// The client certificate or key file cannot be read.
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The key file holds no usable PEM private key.
    #[error("{path}: {source}")]
    Key { path: String, source: PemError },
    #[error("bad PEM: {0}")]
    Pem(#[source] PemError),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    /// Istio mutual TLS: no client config for the peer the endpoint must prove.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error("{target}: connect timeout")]
    Timeout { target: SocketAddr },
    #[error("{target}: {source}")]
    Connect {
        target: SocketAddr,
        source: std::io::Error,
    },
    /// The TLS connection (TCP connect or handshake), as the connector reports it.
    #[error(transparent)]
    Tls(Box<Error>),
}

/// A rustls client config for a cluster's [`UpstreamTls`].
pub fn tls_config(tls: &UpstreamTls) -> std::result::Result<Arc<ClientConfig>, DirectError> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    match &tls.ca_certificates {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|source| DirectError::CaRead {
                path: path.clone(),
                source,
            })?;
            for cert in rustls_pemfile_certs(&pem)? {
                roots.add(cert).map_err(|source| DirectError::CaCert {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let roots = Arc::new(roots);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if tls.insecure_skip_verify || !tls.subject_alt_names.is_empty() {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ChainVerifier {
                // insecureSkipVerify: nothing is verified.
                roots: (!tls.insecure_skip_verify).then_some(roots),
                check: DrSans(tls.subject_alt_names.clone()),
                provider,
            }))
    } else {
        // No SAN list: the certificate must name the SNI host (Envoy's auto_san_validation).
        builder.with_root_certificates(roots)
    };
    let mut config = match (&tls.client_certificate, &tls.private_key) {
        (Some(chain), Some(key)) => {
            let read = |path: &String| {
                std::fs::read(path).map_err(|source| DirectError::Read {
                    path: path.clone(),
                    source,
                })
            };
            let chain_pem = read(chain)?;
            let key_pem = read(key)?;
            let key = {
                use rustls::pki_types::pem::PemObject;
                PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| DirectError::Key {
                    path: key.clone(),
                    source,
                })?
            };
            builder.with_client_auth_cert(rustls_pemfile_certs(&chain_pem)?, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    if tls.alpn_h2 {
        config.alpn_protocols = vec![b"h2".to_vec()];
    }
    Ok(Arc::new(config))
}

/// Istio's ALPN for mutual TLS between proxies (istiod `util.go` `ALPNInMeshWithMxc`; with
/// `h2` appended for HTTP/2 clusters, `ALPNInMeshH2WithMxc`).
const ALPN_ISTIO: [&[u8]; 2] = [b"istio-peer-exchange", b"istio"];

/// A rustls client config for Istio mutual TLS to a sidecar endpoint (istiod's ISTIO_MUTUAL
/// `tlsMode-istio` socket): the waypoint's own certificate and peer check (`expected`, as for
/// HBONE peers), with SNI and Istio's ALPN instead of HBONE's.
pub fn istio_mutual_config(
    configs: &crate::control::identity::ClientConfigs,
    expected: &crate::control::identity::PeerCheck,
    h2: bool,
) -> std::result::Result<Arc<ClientConfig>, DirectError> {
    let base = configs.for_peer(expected)?;
    let mut config = (*base).clone();
    config.enable_sni = true;
    config.alpn_protocols = ALPN_ISTIO.iter().map(|p| p.to_vec()).collect();
    if h2 {
        config.alpn_protocols.push(b"h2".to_vec());
    }
    Ok(Arc::new(config))
}

/// The SNI istiod gives an outbound cluster's ISTIO_MUTUAL socket
/// (`model.BuildDNSSrvSubsetKey`): `outbound_.<port>_.<subset>_.<host>`.
pub fn istio_sni(host: &str, port: u16, subset: Option<&str>) -> String {
    format!("outbound_.{port}_.{}_.{host}", subset.unwrap_or(""))
}

fn rustls_pemfile_certs(
    pem: &[u8],
) -> std::result::Result<Vec<CertificateDer<'static>>, DirectError> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(DirectError::Pem)
}

/// DestinationRule `subjectAltNames` (any of them), checked instead of the host name once the
/// chain verified.
#[derive(Debug)]
struct DrSans(Vec<SanMatcher>);

impl EndEntityCheck for DrSans {
    fn check(&self, end_entity: &CertificateDer<'_>) -> std::result::Result<(), rustls::Error> {
        if SanMatcher::any_matches(&self.0, &cert_sans(end_entity)) {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName,
            ))
        }
    }
}

/// A direct connection for a TCP splice: plaintext, or TLS with `tls` (config and SNI).
pub async fn connect_stream(
    target: SocketAddr,
    tls: Option<(Arc<ClientConfig>, Option<String>)>,
    connect_timeout: Option<Duration>,
) -> std::result::Result<Stream, DirectError> {
    match tls {
        Some((config, sni)) => {
            let connector = TlsConnector {
                config,
                sni,
                connect_timeout,
                failure: Default::default(),
            };
            connector
                .connect(&PingoraAddr::Inet(target))
                .await
                .map_err(DirectError::Tls)
        }
        None => {
            let timeout = connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
            match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
                Err(_) => Err(DirectError::Timeout { target }),
                Ok(Err(source)) => Err(DirectError::Connect { target, source }),
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    Ok(Stream::from(tcp))
                }
            }
        }
    }
}

/// The `custom_l4` connector of a TLS-originating direct attempt.
#[derive(Clone)]
pub struct TlsConnector {
    pub config: Arc<ClientConfig>,
    /// SNI; `None` sends none (the endpoint is addressed by IP).
    pub sni: Option<String>,
    pub connect_timeout: Option<Duration>,
    /// Why the last connect failed, for the access log.
    pub failure: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("sni", &self.sni)
            .finish()
    }
}

struct TlsSocket(TlsStream<TcpStream>);

impl tokio::io::AsyncRead for TlsSocket {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for TlsSocket {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl VirtualSocket for TlsSocket {
    fn set_socket_option(&self, _opt: VirtualSockOpt) -> std::io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for TlsSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSocket")
    }
}

#[async_trait]
impl L4Connect for TlsConnector {
    async fn connect(&self, addr: &PingoraAddr) -> Result<Stream> {
        let PingoraAddr::Inet(target) = addr else {
            return Error::e_explain(ErrorType::ConnectError, "direct TLS needs an IP endpoint");
        };
        let target: SocketAddr = *target;
        let timeout = self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let fail = |etype: ErrorType, reason: String| {
            *self.failure.lock() = Some(reason.clone());
            Error::e_explain(etype, format!("{target}: {reason}"))
        };
        let tcp = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
            Err(_) => return fail(ErrorType::ConnectTimedout, "connect timeout".into()),
            Ok(Err(e)) => return fail(ErrorType::ConnectRefused, e.to_string()),
            Ok(Ok(t)) => t,
        };
        let _ = tcp.set_nodelay(true);
        let name = match &self.sni {
            Some(sni) => ServerName::try_from(sni.clone())
                .map_err(|e| Error::explain(ErrorType::ConnectError, format!("SNI {sni}: {e}")))?,
            None => ServerName::IpAddress(target.ip().into()),
        };
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        match tokio::time::timeout(timeout, connector.connect(name, tcp)).await {
            Err(_) => fail(ErrorType::ConnectTimedout, "TLS handshake timeout".into()),
            Ok(Err(e)) => fail(ErrorType::TLSHandshakeFailure, e.to_string()),
            Ok(Ok(tls)) => Ok(Stream::from(VirtualSocketStream::new(Box::new(TlsSocket(
                tls,
            ))))),
        }
    }
}
