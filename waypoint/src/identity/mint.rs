//! A small certificate authority for the demo and the tests: a root, and SPIFFE leaf certificates
//! shaped like Istio's (URI SAN only, serverAuth + clientAuth).

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use super::{IdentityError, SpiffeId, WorkloadCert};

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
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::OrganizationName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_der: cert.der().clone(),
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

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
