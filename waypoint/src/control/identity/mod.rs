//! Workload identity: the waypoint's own SPIFFE certificate, the trust bundle, and the rustls
//! configurations for both HBONE legs (inbound server, outbound client).

pub mod istio_ca;
mod mint;
mod peer;
mod spiffe;
mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Serialize;

pub use istio_ca::{read_token, request_certificate, CaClientConfig, CaError};
pub use mint::{Ca, MintedCert};
pub use mint::{Csr, CsrError};
pub use peer::{cert_sans, EndpointIdentityError, PeerCheck};
pub use spiffe::{SpiffeId, SpiffeIdError};
pub use tls::{client_config, peer_identity, serial, server_config, ClientConfigs, SanError};
pub(crate) use tls::{ChainVerifier, EndEntityCheck};

/// The waypoint's own certificate, offered as a TLS client certificate to other servers (istiod's
/// xDS port), following every rotation.
#[derive(Debug, Default)]
pub struct OwnCert(arc_swap::ArcSwapOption<rustls::sign::CertifiedKey>);

impl OwnCert {
    /// Present `cert` from the next handshake on. A key the crypto provider cannot load leaves the
    /// previous certificate in place (the data path has already refused such a certificate).
    pub fn set(&self, cert: &WorkloadCert) {
        let provider = rustls::crypto::ring::default_provider();
        if let Ok(signing) = provider.key_provider.load_private_key(cert.key.clone_key()) {
            let certified = rustls::sign::CertifiedKey::new(cert.chain.clone(), signing);
            self.0.store(Some(Arc::new(certified)));
        }
    }
}

impl rustls::client::ResolvesClientCert for OwnCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.0.load_full()
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot read {what} file {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} file {path} holds no PEM {expected}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{what} file {path} is not valid PEM: {reason}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("certificate {path} carries no usable SPIFFE URI SAN: {reason}")]
    NoSpiffeId { path: PathBuf, reason: SanError },
    #[error("certificate and private key do not belong together: {0}")]
    KeyMismatch(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("certificate minting failed: {0}")]
    Mint(#[from] rcgen::Error),
    #[error("{what} is not valid: {reason}")]
    Invalid { what: &'static str, reason: String },
}

/// Why the waypoint's certificate cannot be put in service now.
#[derive(Debug, thiserror::Error)]
pub enum ValidityError {
    #[error("the certificate cannot be parsed: {0}")]
    Unparsable(#[source] x509_parser::nom::Err<x509_parser::error::X509Error>),
    #[error("certificate {serial} is not valid yet: not before {not_before}")]
    NotYetValid {
        serial: String,
        not_before: x509_parser::time::ASN1Time,
    },
    #[error("certificate {serial} expired at {not_after}")]
    Expired {
        serial: String,
        not_after: x509_parser::time::ASN1Time,
    },
}

/// The waypoint's own certificate chain, key and the roots it trusts.
#[derive(Debug)]
pub struct WorkloadCert {
    pub id: SpiffeId,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub roots: Vec<CertificateDer<'static>>,
}

impl Clone for WorkloadCert {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            roots: self.roots.clone(),
        }
    }
}

/// What `/config_dump` and startup logs show about the identity (never the key).
#[derive(Clone, Serialize)]
pub struct IdentitySummary {
    pub spiffe_id: String,
    pub serial: String,
    pub not_after: String,
    /// `not_after` as seconds since the Unix epoch (0 when unparsable).
    pub not_after_unix: i64,
    pub roots: usize,
    /// The chain (leaf first) and the trusted roots, for `/config_dump`'s secrets (certificates
    /// only: the key is never kept here).
    #[serde(skip)]
    pub chain: Vec<CertificateDer<'static>>,
    #[serde(skip)]
    pub trusted: Vec<CertificateDer<'static>>,
}

/// The fields logs show: the certificates only by count.
impl std::fmt::Debug for IdentitySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySummary")
            .field("spiffe_id", &self.spiffe_id)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("chain", &self.chain.len())
            .field("roots", &self.roots)
            .finish()
    }
}

impl WorkloadCert {
    /// Load a PEM chain (leaf first), a PEM private key and a PEM bundle of trusted roots.
    pub fn from_files(cert: &Path, key: &Path, bundle: &Path) -> Result<Self, IdentityError> {
        let chain = read_certs("certificate chain", cert)?;
        let roots = read_certs("trust bundle", bundle)?;
        let key_pem = read("private key", key)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| IdentityError::Pem {
            what: "private key",
            path: key.to_path_buf(),
            reason: e.to_string(),
        })?;
        let id = peer_identity(&chain[0]).map_err(|reason| IdentityError::NoSpiffeId {
            path: cert.to_path_buf(),
            reason,
        })?;
        let loaded = Self {
            id,
            chain,
            key,
            roots,
        };
        loaded.check_key_matches()?;
        Ok(loaded)
    }

    /// Build from an in-memory chain (leaf first) and key, as DER; the identity is the leaf's URI
    /// SAN and the key must match the leaf.
    pub fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, IdentityError> {
        let leaf = chain.first().ok_or(IdentityError::Invalid {
            what: "certificate chain",
            reason: "no certificate".into(),
        })?;
        if roots.is_empty() {
            return Err(IdentityError::Invalid {
                what: "trust bundle",
                reason: "no certificate".into(),
            });
        }
        let id = peer_identity(leaf).map_err(|e| IdentityError::Invalid {
            what: "leaf certificate",
            reason: e.to_string(),
        })?;
        let built = Self {
            id,
            chain,
            key,
            roots,
        };
        built.check_key_matches()?;
        Ok(built)
    }

    /// [`WorkloadCert::from_parts`] from PEM: a chain (leaf first), a private key, a root bundle.
    pub fn from_pem(chain: &[u8], key: &[u8], roots: &[u8]) -> Result<Self, IdentityError> {
        let certs = |what: &'static str, pem: &[u8]| {
            CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| IdentityError::Invalid {
                    what,
                    reason: e.to_string(),
                })
        };
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| IdentityError::Invalid {
            what: "private key",
            reason: e.to_string(),
        })?;
        Self::from_parts(
            certs("certificate chain", chain)?,
            key,
            certs("trust bundle", roots)?,
        )
    }

    /// Reject a key that does not sign for the leaf certificate (a half-rotated pair).
    fn check_key_matches(&self) -> Result<(), IdentityError> {
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider
            .key_provider
            .load_private_key(self.key.clone_key())
            .map_err(|e| IdentityError::KeyMismatch(e.to_string()))?;
        let certified = rustls::sign::CertifiedKey::new(self.chain.clone(), signing);
        certified
            .keys_match()
            .map_err(|e| IdentityError::KeyMismatch(e.to_string()))
    }

    /// Whether the leaf certificate is valid at `now`: an expired or not yet valid certificate
    /// would fail every handshake, so it is never put in service.
    pub fn check_validity(&self, now: std::time::SystemTime) -> Result<(), ValidityError> {
        let (_, leaf) = x509_parser::parse_x509_certificate(&self.chain[0])
            .map_err(ValidityError::Unparsable)?;
        let now = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let validity = leaf.validity();
        if now < validity.not_before.timestamp() {
            return Err(ValidityError::NotYetValid {
                serial: leaf.raw_serial_as_string(),
                not_before: validity.not_before,
            });
        }
        if now > validity.not_after.timestamp() {
            return Err(ValidityError::Expired {
                serial: leaf.raw_serial_as_string(),
                not_after: validity.not_after,
            });
        }
        Ok(())
    }

    pub fn summary(&self) -> IdentitySummary {
        let (serial, not_after, not_after_unix) =
            match x509_parser::parse_x509_certificate(&self.chain[0]) {
                Ok((_, cert)) => (
                    cert.raw_serial_as_string(),
                    cert.validity().not_after.to_string(),
                    cert.validity().not_after.timestamp(),
                ),
                Err(_) => ("unparsable".into(), "unparsable".into(), 0),
            };
        IdentitySummary {
            spiffe_id: self.id.to_string(),
            serial,
            not_after,
            not_after_unix,
            roots: self.roots.len(),
            chain: self.chain.clone(),
            trusted: self.roots.clone(),
        }
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, IdentityError> {
    std::fs::read(path).map_err(|source| IdentityError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| IdentityError::Pem {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(IdentityError::Empty {
            what,
            path: path.to_path_buf(),
            expected: "CERTIFICATE block",
        });
    }
    Ok(certs)
}

/// Install ring as the process-wide rustls provider (idempotent).
pub fn install_crypto_provider() {
    let _already_installed = rustls::crypto::ring::default_provider().install_default();
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
