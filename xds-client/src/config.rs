//! How to reach istiod and how to behave on the stream.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;

use crate::node::NodeInfo;
use crate::resource::type_url;

/// istiod's discovery address inside the cluster (`DISCOVERY_ADDRESS` / `CA_ADDR` default).
pub const DEFAULT_ADDRESS: &str = "istiod.istio-system.svc:15012";
/// The DNS name istiod's serving certificate carries.
pub const DEFAULT_SERVER_NAME: &str = "istiod.istio-system.svc";

/// Which ADS flavour to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Mode {
    /// `DeltaAggregatedResources`.
    Delta,
    /// `StreamAggregatedResources` (state of the world).
    StateOfTheWorld,
    /// Delta, switching to state of the world for the rest of the run if the server answers the
    /// Delta call with `Unimplemented`.
    DeltaWithFallback,
}

/// Reconnect delays: the n-th consecutive failure waits a random time in
/// `[d/2, d]`, `d = min(max, base * 2^n)`. A stream that lived `reset_after` resets `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
            reset_after: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before attempt `failures + 1`, jittered.
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(20)).unwrap_or(u32::MAX);
        let ceiling = self.base.saturating_mul(factor).min(self.max);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_micros() as u64;
        let jitter = if spread == 0 {
            0
        } else {
            rand::Rng::gen_range(&mut rand::thread_rng(), 0..=spread)
        };
        half + Duration::from_micros(jitter)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("xDS client: {0}")]
    Invalid(String),
}

/// Everything [`crate::Client`] needs.
///
/// Authentication is what istiod accepts from proxies (`security/pkg/server/ca/authenticate`):
/// a client certificate whose SPIFFE id matches the node's namespace and service account
/// (`ClientCertAuthenticator`; checked in `pilot/pkg/xds/auth.go`), or a Kubernetes service-account
/// JWT as `authorization: Bearer <token>` (`KubeJWTAuthenticator`, `pkg/security/security.go`)
/// with `ClusterID` metadata naming the cluster that issued the token (`kubeauth/kube_jwt.go`
/// reads the lowercased `clusterid`; an absent one means istiod's own cluster). The Istio agent
/// sends `ClusterID` on every XDS stream (`pkg/istio-agent/xds_proxy.go`).
#[derive(Clone)]
pub struct ClientConfig {
    /// `host:port` of istiod.
    pub address: String,
    /// The name istiod's certificate must carry.
    pub server_name: String,
    /// PEM bundle istiod's certificate is verified against.
    pub root_pem: Vec<u8>,
    /// Presented when the server asks for a client certificate; consulted on every handshake, so
    /// a rotating resolver rotates the certificate.
    pub client_cert: Option<Arc<dyn ResolvesClientCert>>,
    /// Read on every (re)connect and sent as `authorization: Bearer <token>`.
    pub token_path: Option<PathBuf>,
    /// Sent as `ClusterID` gRPC metadata; empty sends none.
    pub cluster_id: String,
    pub node: NodeInfo,
    pub mode: Mode,
    /// Types subscribed with a wildcard, in the order of the initial requests (Envoy's: CDS, LDS).
    pub wildcard_types: Vec<String>,
    pub backoff: Backoff,
    /// Bound on TCP connect + TLS handshake + the server answering the stream call.
    pub connect_timeout: Duration,
    /// The form payloads are kept in: `None` keeps each as it came; a [`Compact`] is offered
    /// every payload once it passed the client's checks, and what it returns is kept instead.
    /// Readers of [`crate::Payload::value`] then read what the hook's owner defines.
    pub compact: Option<Compact>,
}

/// A payload's compact form, given its type URL and its bytes, or `None` to keep it as it came
/// (see [`ClientConfig::compact`]).
pub type Compact = fn(&str, &[u8]) -> Option<bytes::Bytes>;

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("address", &self.address)
            .field("server_name", &self.server_name)
            .field("root_pem_bytes", &self.root_pem.len())
            .field("client_cert", &self.client_cert.is_some())
            .field("token_path", &self.token_path)
            .field("cluster_id", &self.cluster_id)
            .field("node", &self.node.id())
            .field("mode", &self.mode)
            .field("wildcard_types", &self.wildcard_types)
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("compact", &self.compact.is_some())
            .finish()
    }
}

/// The name istiod's certificate is checked for when only its address is known: the address's
/// host, or `istiod.istio-system.svc` for an IP or `localhost` (a port-forward).
pub fn istiod_server_name(address: &str) -> String {
    let host = match address.rsplit_once(':') {
        Some((host, _port)) => host.trim_start_matches('[').trim_end_matches(']'),
        None => address,
    };
    if host.contains("localhost") || host.parse::<std::net::IpAddr>().is_ok() {
        DEFAULT_SERVER_NAME.to_string()
    } else {
        host.to_string()
    }
}

impl ClientConfig {
    /// Delta ADS to `address`, verified against `root_pem`, CDS and LDS as wildcards, the node's
    /// cluster id as `ClusterID`, server name `istiod.istio-system.svc` when the host is an IP or
    /// `localhost` (port-forwards), else the host.
    pub fn new(address: impl Into<String>, root_pem: impl Into<Vec<u8>>, node: NodeInfo) -> Self {
        let address = address.into();
        let server_name = istiod_server_name(&address);
        Self {
            server_name,
            address,
            root_pem: root_pem.into(),
            client_cert: None,
            token_path: None,
            cluster_id: node.cluster_id.clone(),
            node,
            mode: Mode::Delta,
            wildcard_types: vec![
                type_url::CLUSTER.to_string(),
                type_url::LISTENER.to_string(),
            ],
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(10),
            compact: None,
        }
    }

    /// Present a fixed certificate. For rotation set [`ClientConfig::client_cert`] to a resolver.
    pub fn with_certified_key(mut self, key: Arc<CertifiedKey>) -> Self {
        self.client_cert = Some(Arc::new(FixedClientCert(key)));
        self
    }

    pub(crate) fn roots(&self) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
        let roots = CertificateDer::pem_slice_iter(&self.root_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::Invalid(format!("root bundle is not valid PEM: {e}")))?;
        if roots.is_empty() {
            return Err(ConfigError::Invalid(
                "root bundle holds no CERTIFICATE".into(),
            ));
        }
        Ok(roots)
    }
}

#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            reset_after: Duration::from_secs(5),
        };
        for _ in 0..50 {
            let d0 = b.delay(0);
            assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
            let d2 = b.delay(2);
            assert!(d2 >= Duration::from_millis(200) && d2 <= Duration::from_millis(400));
            let big = b.delay(40);
            assert!(big >= Duration::from_millis(500) && big <= Duration::from_secs(1));
        }
    }

    #[test]
    fn server_name_defaults() {
        let node = NodeInfo::new("p", "ns", "10.0.0.1".parse().unwrap());
        let c = ClientConfig::new("istiod.istio-system.svc:15012", vec![], node.clone());
        assert_eq!(c.server_name, "istiod.istio-system.svc");
        let c = ClientConfig::new("istiod-canary.istio-system.svc:15012", vec![], node.clone());
        assert_eq!(c.server_name, "istiod-canary.istio-system.svc");
        let c = ClientConfig::new("127.0.0.1:15012", vec![], node);
        assert_eq!(c.server_name, DEFAULT_SERVER_NAME);
        assert_eq!(c.cluster_id, "Kubernetes");
    }
}
