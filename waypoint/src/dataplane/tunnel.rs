//! What the waypoint knows about an inbound tunnel, available in every `ProxyHttp` hook.

use std::net::SocketAddr;
use std::sync::Arc;

use pingora_core::protocols::Digest;

use crate::control::identity::SpiffeId;

#[derive(Debug, Clone)]
pub struct TunnelInfo {
    /// The ztunnel's socket address (the TCP peer of the HBONE connection).
    pub peer: SocketAddr,
    /// The client's address as the waypoint vouches for it: `forwarded: for=` when it is the
    /// peer's own address or a workload of the peer's identity, else the peer
    /// ([`crate::dataplane::source::resolve`]).
    pub source_addr: SocketAddr,
    /// A `forwarded: for=` address that could not be verified (shown in the access log, seen
    /// by DENY rules only).
    pub claimed_source: Option<SocketAddr>,
    /// The SPIFFE id of the client's workload, from its mTLS certificate.
    pub source_identity: SpiffeId,
    /// The CONNECT `:authority`: service VIP:port or pod IP:port.
    pub original_dst: SocketAddr,
    /// The waypoint's own listening address.
    pub local: SocketAddr,
    pub forwarded_host: Option<String>,
    pub baggage: Option<String>,
    pub traceparent: Option<String>,
    /// The `source_*` metric labels, built on first use and shared by every request of the tunnel.
    pub metric_labels: std::sync::OnceLock<crate::telemetry::metrics::SourceLabels>,
    /// `source_identity` as a URI (`spiffe://…`), built on first use: what authorization
    /// matches principals against.
    pub principal: std::sync::OnceLock<String>,
}

impl TunnelInfo {
    /// Istio's source labels for this tunnel's client (computed once per tunnel, with the
    /// workload `snapshot` has at the client's address).
    pub fn source_labels(
        &self,
        snapshot: &routing::Snapshot,
    ) -> &crate::telemetry::metrics::SourceLabels {
        self.metric_labels.get_or_init(|| {
            crate::telemetry::metrics::SourceLabels::from_tunnel(
                Some(self),
                self.source_workload(snapshot),
            )
        })
    }

    /// The client's SPIFFE id as a URI (computed once per tunnel).
    pub fn principal(&self) -> &str {
        self.principal
            .get_or_init(|| self.source_identity.to_string())
    }

    /// The tunnel a pingora session was accepted on (stored in the proxy digest's user data).
    pub fn from_digest(digest: Option<&Digest>) -> Option<Arc<TunnelInfo>> {
        TunnelData::from_digest(digest).map(|d| d.info.clone())
    }

    /// The workload the request comes from: the one at the source address, if it carries the
    /// peer certificate's identity. Its labels are what `sourceLabels` match.
    pub fn source_workload<'a>(
        &self,
        snapshot: &'a routing::Snapshot,
    ) -> Option<&'a routing::Endpoint> {
        snapshot
            .source_workload(self.source_addr.ip())
            .filter(|w| crate::dataplane::source::identity_matches(w, &self.source_identity))
    }

    /// A `baggage` member (`k8s.namespace.name`, `service.version`, …).
    pub fn baggage_value(&self, key: &str) -> Option<&str> {
        self.baggage.as_deref()?.split(',').find_map(|member| {
            let (k, v) = member.split_once('=')?;
            (k.trim() == key).then(|| v.split(';').next().unwrap_or("").trim())
        })
    }
}

/// Parse `forwarded: for="10.1.2.3:40280";host=reviews.default.svc.cluster.local` (RFC 7239,
/// first element). Returns (for address, host).
pub fn parse_forwarded(value: &str) -> (Option<SocketAddr>, Option<String>) {
    let first = value.split(',').next().unwrap_or("");
    let mut addr = None;
    let mut host = None;
    for pair in first.split(';') {
        let Some((k, v)) = pair.split_once('=') else {
            continue;
        };
        let v = v.trim().trim_matches('"');
        match k.trim().to_ascii_lowercase().as_str() {
            "for" => addr = v.parse::<SocketAddr>().ok(),
            "host" => host = Some(v.to_string()),
            _ => {}
        }
    }
    (addr, host)
}

/// What the proxy digest of a tunnel's pingora session carries: the tunnel, for HTTP/1.1 the
/// clock of its request-header deadline, and how the tunnel is to end (reset at the drain
/// deadline when a response was cut short).
pub struct TunnelData {
    pub info: Arc<TunnelInfo>,
    pub header_clock: Option<Arc<crate::transport::header_deadline::HeaderClock>>,
    pub end: Option<Arc<crate::transport::hbone::stream::TunnelEnd>>,
}

impl TunnelData {
    pub fn from_digest(digest: Option<&Digest>) -> Option<&TunnelData> {
        digest?
            .proxy_digest
            .as_ref()?
            .user_data
            .as_ref()?
            .downcast_ref::<TunnelData>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_header_as_ztunnel_sends_it() {
        let (addr, host) =
            parse_forwarded(r#"for="10.1.2.3:40280";host=reviews.default.svc.cluster.local"#);
        assert_eq!(addr, Some("10.1.2.3:40280".parse().unwrap()));
        assert_eq!(host.as_deref(), Some("reviews.default.svc.cluster.local"));
        let (addr, _) = parse_forwarded(r#"for="[fd00::1]:80""#);
        assert_eq!(addr, Some("[fd00::1]:80".parse().unwrap()));
        assert_eq!(parse_forwarded("for=unknown"), (None, None));
    }

    #[test]
    fn baggage_members() {
        let t = TunnelInfo {
            peer: "127.0.0.1:1".parse().unwrap(),
            source_addr: "127.0.0.1:1".parse().unwrap(),
            claimed_source: None,
            source_identity: SpiffeId::new("td", "ns", "sa"),
            original_dst: "127.0.0.1:2".parse().unwrap(),
            local: "127.0.0.1:3".parse().unwrap(),
            forwarded_host: None,
            baggage: Some("k8s.namespace.name=default, service.version=v1;p=1".into()),
            traceparent: None,
            metric_labels: Default::default(),
            principal: Default::default(),
        };
        assert_eq!(t.baggage_value("k8s.namespace.name"), Some("default"));
        assert_eq!(t.baggage_value("service.version"), Some("v1"));
        assert_eq!(t.baggage_value("missing"), None);
    }
}
