//! A small certificate authority for the demo and the tests: a root, and SPIFFE leaf certificates
//! shaped like Istio's (URI SAN only, serverAuth + clientAuth).

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::error::X509Error;
use x509_parser::oid_registry::Oid;

use super::tls::only_spiffe_uri;
use super::{IdentityError, SanError, SpiffeId, WorkloadCert};

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
}

/// A leaf issued by [`Ca`], with PEM forms for writing to disk.
pub struct MintedCert {
    pub workload: WorkloadCert,
    pub chain_pem: String,
    pub key_pem: String,
    pub roots_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Result<Self, IdentityError> {
        let key = KeyPair::generate()?;
        let params = Self::params(name)?;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA saved by [`Ca::write_to`] under `name` (the subject it was created with: leaves
    /// name it as their issuer).
    pub fn from_pem(name: &str, cert_pem: &str, key_pem: &str) -> Result<Self, IdentityError> {
        let key = KeyPair::from_pem(key_pem)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| {
            IdentityError::Invalid {
                what: "CA certificate",
                reason: e.to_string(),
            }
        })?;
        Ok(Self {
            cert_der,
            cert_pem: cert_pem.to_string(),
            issuer: Issuer::new(Self::params(name)?, key),
        })
    }

    /// Write `root-cert.pem` and `ca-key.pem` into `dir`.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("root-cert.pem"), &self.cert_pem)?;
        std::fs::write(dir.join("ca-key.pem"), self.issuer.key().serialize_pem())?;
        Ok(())
    }

    fn params(name: &str) -> Result<CertificateParams, IdentityError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::OrganizationName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ok(params)
    }

    /// The root in DER (tests compare what a CA client received against it).
    #[cfg(any(test, feature = "testing"))]
    pub fn root_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    pub fn root_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issue a workload certificate for `id`.
    pub fn issue(&self, id: &SpiffeId) -> Result<MintedCert, IdentityError> {
        self.issue_with(id, |_| {})
    }

    /// Issue with a hook to change the parameters (validity, extra SANs) before signing.
    pub fn issue_with(
        &self,
        id: &SpiffeId,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> Result<MintedCert, IdentityError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = rcgen::date_time_ymd(2000, 1, 1);
        params.not_before = now;
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        tweak(&mut params);
        let cert = params.signed_by(&key, &self.issuer)?;
        let workload = WorkloadCert {
            id: id.clone(),
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            roots: vec![self.cert_der.clone()],
        };
        Ok(MintedCert {
            workload,
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            roots_pem: self.cert_pem.clone(),
        })
    }
}

impl MintedCert {
    /// Write `cert-chain.pem`, `key.pem` and `root-cert.pem` into `dir` (Istio's file names).
    pub fn write_to(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("cert-chain.pem"), &self.chain_pem)?;
        std::fs::write(dir.join("key.pem"), &self.key_pem)?;
        std::fs::write(dir.join("root-cert.pem"), &self.roots_pem)?;
        Ok(())
    }
}

/// A PKCS#10 certificate signing request whose self-signature checked out: what an Istio CA
/// receives in `IstioCertificateRequest.csr`.
pub struct Csr {
    public_key: CsrPublicKey,
    uri_sans: Vec<String>,
}

struct CsrPublicKey {
    alg: &'static rcgen::SignatureAlgorithm,
    raw: Vec<u8>,
}

impl rcgen::PublicKeyData for CsrPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        self.alg
    }
}

/// Why a certificate signing request is refused.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("not a PEM CERTIFICATE REQUEST: {0}")]
    Pem(#[source] rustls_pki_types::pem::Error),
    #[error("unparsable certificate request: {0}")]
    Unparsable(#[source] x509_parser::nom::Err<X509Error>),
    #[error("certificate request signature does not verify: {0}")]
    Signature(#[source] X509Error),
    #[error("unsupported EC curve {0:?}")]
    Curve(Option<Oid<'static>>),
    #[error("unsupported public key algorithm {0}")]
    KeyAlgorithm(Oid<'static>),
}

impl Csr {
    /// Parse a PEM `CERTIFICATE REQUEST` and verify its signature. Keys: ECDSA P-256/P-384,
    /// Ed25519, RSA.
    pub fn from_pem(pem: &str) -> Result<Self, CsrError> {
        use rustls_pki_types::pem::PemObject;
        use x509_parser::extensions::{GeneralName, ParsedExtension};
        use x509_parser::oid_registry::{
            OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
            OID_SIG_ED25519,
        };
        use x509_parser::prelude::FromDer;

        let der = rustls_pki_types::CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .map_err(CsrError::Pem)?;
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
                .map_err(CsrError::Unparsable)?;
        csr.verify_signature().map_err(CsrError::Signature)?;
        let spki = &csr.certification_request_info.subject_pki;
        let key_oid = &spki.algorithm.algorithm;
        let alg = if *key_oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok());
            match curve {
                Some(c) if c == OID_EC_P256 => &rcgen::PKCS_ECDSA_P256_SHA256,
                Some(c) if c == OID_NIST_EC_P384 => &rcgen::PKCS_ECDSA_P384_SHA384,
                other => return Err(CsrError::Curve(other.map(|c| c.to_owned()))),
            }
        } else if *key_oid == OID_SIG_ED25519 {
            &rcgen::PKCS_ED25519
        } else if *key_oid == OID_PKCS1_RSAENCRYPTION {
            &rcgen::PKCS_RSA_SHA256
        } else {
            return Err(CsrError::KeyAlgorithm(key_oid.to_owned()));
        };
        let mut uri_sans = Vec::new();
        for ext in csr.requested_extensions().into_iter().flatten() {
            if let ParsedExtension::SubjectAlternativeName(san) = ext {
                for name in &san.general_names {
                    if let GeneralName::URI(uri) = name {
                        uri_sans.push(uri.to_string());
                    }
                }
            }
        }
        Ok(Self {
            public_key: CsrPublicKey {
                alg,
                raw: spki.subject_public_key.data.to_vec(),
            },
            uri_sans,
        })
    }

    /// The URI SANs the request asks for.
    pub fn uri_sans(&self) -> &[String] {
        &self.uri_sans
    }

    /// The SPIFFE id the request asks for: exactly one URI SAN, a valid SPIFFE id.
    pub fn spiffe_id(&self) -> Result<SpiffeId, SanError> {
        only_spiffe_uri(&self.uri_sans)
    }
}

impl Ca {
    /// Sign `csr` the way istiod does: the certificate carries the request's public key and
    /// exactly `id` (the caller's authenticated identity) as its only SAN, serverAuth +
    /// clientAuth, valid from two minutes ago (clock skew grace) until now + `validity`.
    pub fn sign_csr(
        &self,
        csr: &Csr,
        id: &SpiffeId,
        validity: std::time::Duration,
    ) -> Result<rcgen::Certificate, IdentityError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let now = std::time::Duration::from_secs(now.as_secs());
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.to_string().try_into()?)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = epoch + now.saturating_sub(std::time::Duration::from_secs(120));
        params.not_after = epoch + now + validity;
        let mut serial = [0u8; 16];
        rand::Rng::fill(&mut rand::thread_rng(), &mut serial[..]);
        serial[0] &= 0x7f;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        Ok(params.signed_by(&csr.public_key, &self.issuer)?)
    }
}
