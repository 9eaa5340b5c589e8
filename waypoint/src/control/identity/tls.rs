//! rustls configurations for HBONE: TLS 1.3 only, ALPN `h2`, SPIFFE identities in URI SANs.
//! DNS and IP SANs play no part in identity.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use x509_parser::error::X509Error;

use super::{cert_sans, provider, IdentityError, PeerCheck, SpiffeId, SpiffeIdError, WorkloadCert};

pub const ALPN_H2: &[u8] = b"h2";

/// Why a certificate (or a certificate request) shows no usable SPIFFE identity.
#[derive(Debug, thiserror::Error)]
pub enum SanError {
    #[error("unparsable certificate: {0}")]
    Unparsable(#[source] x509_parser::nom::Err<X509Error>),
    #[error("bad subjectAltName extension: {0}")]
    BadExtension(#[source] X509Error),
    #[error("no subjectAltName extension")]
    NoExtension,
    #[error("no URI SAN")]
    NoUri,
    #[error("{0} URI SANs, expected exactly one")]
    ManyUris(usize),
    #[error(transparent)]
    NotSpiffe(#[from] SpiffeIdError),
}

/// The SPIFFE id in a certificate's URI SAN.
pub fn peer_identity(cert: &CertificateDer<'_>) -> Result<SpiffeId, SanError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).map_err(SanError::Unparsable)?;
    let san = parsed
        .subject_alternative_name()
        .map_err(SanError::BadExtension)?
        .ok_or(SanError::NoExtension)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    only_spiffe_uri(&uris)
}

/// The identity of exactly one URI SAN that is a SPIFFE id.
pub(super) fn only_spiffe_uri(uris: &[impl AsRef<str>]) -> Result<SpiffeId, SanError> {
    match uris {
        [one] => Ok(one.as_ref().parse::<SpiffeId>()?),
        [] => Err(SanError::NoUri),
        many => Err(SanError::ManyUris(many.len())),
    }
}

/// A certificate's serial number as hex (the form `IdentitySummary::serial` uses).
pub fn serial(cert: &CertificateDer<'_>) -> Option<String> {
    x509_parser::parse_x509_certificate(cert)
        .ok()
        .map(|(_, c)| c.raw_serial_as_string())
}

fn roots(cert: &WorkloadCert) -> Result<Arc<RootCertStore>, IdentityError> {
    let mut store = RootCertStore::empty();
    for root in &cert.roots {
        store
            .add(root.clone())
            .map_err(|e| IdentityError::Tls(format!("bad trust bundle certificate: {e}")))?;
    }
    Ok(Arc::new(store))
}

fn reject(reason: String) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        std::io::Error::other(reason),
    ))))
}

/// Inbound leg: mandatory client certificate chained to the bundle, peer trust domain accepted.
pub fn server_config(
    cert: &WorkloadCert,
    trust_domains: &[String],
) -> Result<Arc<ServerConfig>, IdentityError> {
    let provider = provider();
    let inner = WebPkiClientVerifier::builder_with_provider(roots(cert)?, provider.clone())
        .build()
        .map_err(|e| IdentityError::Tls(e.to_string()))?;
    let verifier = Arc::new(TrustDomainVerifier {
        inner,
        trust_domains: trust_domains.to_vec(),
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())
        .map_err(|e| IdentityError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct TrustDomainVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    trust_domains: Vec<String>,
}

impl ClientCertVerifier for TrustDomainVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let id =
            peer_identity(end_entity).map_err(|e| reject(format!("client certificate: {e}")))?;
        if !self.trust_domains.contains(&id.trust_domain) {
            return Err(reject(format!(
                "client {id} is in trust domain {:?}, accepted: {:?}",
                id.trust_domain, self.trust_domains
            )));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Outbound leg: present our certificate, verify the peer chain and that the peer passes
/// `expected` (its exact identity, or istiod's SAN matchers).
pub fn client_config(
    cert: &WorkloadCert,
    expected: &PeerCheck,
) -> Result<Arc<ClientConfig>, IdentityError> {
    let provider = provider();
    let verifier = Arc::new(ChainVerifier {
        roots: Some(roots(cert)?),
        check: expected.clone(),
        provider: provider.clone(),
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| IdentityError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())
        .map_err(|e| IdentityError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// Client configs per expected peer identity, built once and shared.
pub struct ClientConfigs {
    cert: WorkloadCert,
    by_identity: Mutex<HashMap<PeerCheck, Arc<ClientConfig>>>,
}

impl ClientConfigs {
    pub fn new(cert: WorkloadCert) -> Self {
        Self {
            cert,
            by_identity: Mutex::new(HashMap::new()),
        }
    }

    pub fn own_identity(&self) -> &SpiffeId {
        &self.cert.id
    }

    pub fn for_peer(&self, expected: &PeerCheck) -> Result<Arc<ClientConfig>, IdentityError> {
        if let Some(c) = self.by_identity.lock().get(expected) {
            return Ok(c.clone());
        }
        let config = client_config(&self.cert, expected)?;
        self.by_identity
            .lock()
            .insert(expected.clone(), config.clone());
        Ok(config)
    }
}

/// What a [`ChainVerifier`] requires of a server's end-entity certificate once its chain to the
/// roots verified.
pub(crate) trait EndEntityCheck: std::fmt::Debug + Send + Sync {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error>;
}

/// The HBONE peer: the identity or SAN matchers it must show.
impl EndEntityCheck for PeerCheck {
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let id = peer_identity(end_entity);
        let sans = match self {
            PeerCheck::Identity(_) => Vec::new(),
            PeerCheck::Sans(_) => cert_sans(end_entity),
        };
        if self.admits(id.as_ref().ok(), &sans) {
            return Ok(());
        }
        let shown = match &id {
            Ok(id) => id.to_string(),
            Err(e) => format!("no SPIFFE identity ({e})"),
        };
        Err(reject(format!(
            "endpoint presented {shown}, expected {self}"
        )))
    }
}

/// Server certificate verification: the chain to `roots`, then `check` on the end entity (in
/// place of the server-name check). No roots: nothing is verified (`insecureSkipVerify`).
#[derive(Debug)]
pub(crate) struct ChainVerifier<C> {
    pub(crate) roots: Option<Arc<RootCertStore>>,
    pub(crate) check: C,
    pub(crate) provider: Arc<CryptoProvider>,
}

impl<C: EndEntityCheck> ServerCertVerifier for ChainVerifier<C> {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(roots) = &self.roots else {
            return Ok(ServerCertVerified::assertion());
        };
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        self.check.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
