//! A throwaway CA for tests: a root, a serving certificate for istiod, client certificates with
//! SPIFFE ids.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// A root CA minted at test time.
pub struct TestPki {
    issuer: Issuer<'static, KeyPair>,
    root_der: CertificateDer<'static>,
    root_pem: String,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

/// A certificate chain (leaf, then root) and its key.
#[derive(Debug)]
pub struct Issued {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Issued {
    /// As rustls presents it.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        let key = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(self.key.clone_key())
            .expect("rcgen keys load into ring");
        Arc::new(CertifiedKey::new(self.chain.clone(), key))
    }
}

impl TestPki {
    pub fn new() -> Self {
        let key = KeyPair::generate().expect("key generation");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "xds-client test CA");
        params.distinguished_name = dn;
        let root = params.self_signed(&key).expect("self-signed root");
        Self {
            root_pem: root.pem(),
            root_der: root.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The root certificate, PEM: what clients trust.
    pub fn root_pem(&self) -> &str {
        &self.root_pem
    }

    pub fn root_der(&self) -> &CertificateDer<'static> {
        &self.root_der
    }

    /// A leaf for `sans`: DNS names, IP addresses, or `spiffe://` URIs.
    pub fn issue(&self, sans: &[&str]) -> Issued {
        let key = KeyPair::generate().expect("key generation");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = sans
            .iter()
            .map(|san| {
                if let Ok(ip) = san.parse() {
                    SanType::IpAddress(ip)
                } else if san.contains("://") {
                    SanType::URI((*san).try_into().expect("URI SAN"))
                } else {
                    SanType::DnsName((*san).try_into().expect("DNS SAN"))
                }
            })
            .collect();
        let cert = params.signed_by(&key, &self.issuer).expect("signing");
        Issued {
            chain: vec![cert.der().clone(), self.root_der.clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
