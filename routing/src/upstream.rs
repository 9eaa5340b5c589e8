//! How the waypoint reaches an endpoint and what it checks on the peer: HBONE (mutual TLS to the
//! node's port 15008, peer verified against the mesh's SAN matchers) or a direct connection
//! (plaintext, or TLS originated as a DestinationRule `tls` SIMPLE / MUTUAL asks).

use serde::Serialize;

use crate::model::StringMatch;

/// How an endpoint is dialled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// HTTP/2 CONNECT inside mutual TLS to the endpoint's node (istiod: the endpoint is an
    /// `envoy_internal_address` to `connect_originate`; files: a mesh workload).
    #[default]
    Hbone,
    /// A plain TCP connection to the endpoint's address (istiod: a `socket_address` endpoint, a
    /// workload outside ambient; files: a WorkloadEntry / ServiceEntry endpoint without
    /// `networking.istio.io/tunnel: http` or `ambient.istio.io/redirection: enabled`).
    Direct,
    /// A direct connection in Istio mutual TLS (istiod: a `socket_address` endpoint of an
    /// `outbound|…` cluster whose `{tlsMode: istio}` metadata selects the `tlsMode-istio`
    /// transport socket, a sidecar pod): the waypoint's own certificate, the peer verified like
    /// an HBONE peer, SNI `outbound_.<port>_.<subset>_.<host>`, ALPN `istio-peer-exchange`, `istio`.
    IstioMutual,
}

/// Which subject alternative names a [`SanMatcher`] looks at (Envoy `SubjectAltNameMatcher.SanType`;
/// `Any` is the untyped, deprecated `match_subject_alt_names`, which looks at all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SanKind {
    Uri,
    Dns,
    Email,
    IpAddress,
    Any,
}

/// One SAN matcher of an upstream TLS context.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SanMatcher {
    pub kind: SanKind,
    pub matcher: StringMatch,
}

impl SanMatcher {
    /// A matcher on URI SANs.
    pub fn uri(matcher: StringMatch) -> Self {
        SanMatcher {
            kind: SanKind::Uri,
            matcher,
        }
    }

    /// True when any of `sans` (kind, value) is of this matcher's kind and matches.
    pub fn matches(&self, sans: &[(SanKind, String)]) -> bool {
        sans.iter().any(|(kind, value)| {
            (self.kind == SanKind::Any || self.kind == *kind) && self.matcher.matches(value)
        })
    }

    /// Envoy's rule: a certificate passes when any matcher matches any of its SANs; an empty
    /// list checks nothing beyond the chain.
    pub fn any_matches(matchers: &[SanMatcher], sans: &[(SanKind, String)]) -> bool {
        matchers.is_empty() || matchers.iter().any(|m| m.matches(sans))
    }
}

impl std::fmt::Display for SanMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            SanKind::Uri => "uri",
            SanKind::Dns => "dns",
            SanKind::Email => "email",
            SanKind::IpAddress => "ip",
            SanKind::Any => "any",
        };
        match serde_json::to_string(&self.matcher) {
            Ok(m) => write!(f, "{kind}:{m}"),
            Err(_) => write!(f, "{kind}:{:?}", self.matcher),
        }
    }
}

/// DestinationRule `tls.mode` values that originate TLS on a direct connection
/// (`ISTIO_MUTUAL` and `DISABLE`: [`ClientTls`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TlsMode {
    Simple,
    Mutual,
}

/// TLS originated by the waypoint towards a directly dialled endpoint (DestinationRule
/// `trafficPolicy.tls` SIMPLE / MUTUAL; istiod: the `inbound-vip` cluster's
/// `internal_upstream` transport socket wrapping `envoy.transport_sockets.tls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UpstreamTls {
    pub mode: TlsMode,
    /// SNI; `None` = the request's authority (Envoy `auto_sni`), or none for TCP.
    pub sni: Option<String>,
    /// The server certificate must match one of these; empty = its name must match the SNI
    /// (Envoy `auto_san_validation`, rustls' hostname check).
    pub subject_alt_names: Vec<SanMatcher>,
    /// PEM file of trusted roots; `None` = the system roots.
    pub ca_certificates: Option<String>,
    /// MUTUAL: PEM files of the client certificate chain and key.
    pub client_certificate: Option<String>,
    pub private_key: Option<String>,
    /// No server certificate verification at all (`insecureSkipVerify`).
    pub insecure_skip_verify: bool,
    /// ALPN `h2` offered (the cluster speaks HTTP/2).
    pub alpn_h2: bool,
}

/// A DestinationRule `tls` block (`ClientTLSSettings`) as it applies to the endpoints of one
/// cluster that are dialled directly. HBONE endpoints ignore it: the tunnel is the mesh's mutual
/// TLS and what the app speaks inside is the request as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientTls {
    /// `DISABLE`: plaintext. Set (unlike no `tls` at all) so that a subset or port-level
    /// `DISABLE` overrides a `SIMPLE` above it.
    Disable,
    /// `SIMPLE` / `MUTUAL`: TLS originated by the waypoint.
    Originate(UpstreamTls),
    /// `ISTIO_MUTUAL`: the endpoint is dialled in Istio mutual TLS ([`Transport::IstioMutual`]).
    IstioMutual,
    /// The rule asked for TLS the waypoint cannot originate (files mode: `credentialName`,
    /// `caCrl`): the cluster's directly dialled endpoints are left out, never reached in
    /// plaintext. The reason names the DestinationRule and the field.
    Refused(String),
}

impl ClientTls {
    /// The TLS to originate, for `SIMPLE` / `MUTUAL`.
    pub fn originate(&self) -> Option<&UpstreamTls> {
        match self {
            ClientTls::Originate(t) => Some(t),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sans(v: &[(SanKind, &str)]) -> Vec<(SanKind, String)> {
        v.iter().map(|(k, s)| (*k, s.to_string())).collect()
    }

    #[test]
    fn any_of_semantics() {
        let td = SanMatcher::uri(StringMatch::Prefix("spiffe://cluster.local/".into()));
        let ns = SanMatcher::uri(StringMatch::Prefix(
            "spiffe://cluster.local/ns/istio-waypoint/sa/".into(),
        ));
        let pod = sans(&[(SanKind::Uri, "spiffe://cluster.local/ns/default/sa/reviews")]);
        let foreign = sans(&[(SanKind::Uri, "spiffe://other.td/ns/default/sa/reviews")]);
        let both = [td.clone(), ns.clone()];
        type Case<'a> = (&'a [SanMatcher], &'a [(SanKind, String)], bool);
        let table: &[Case<'_>] = &[
            (&both, &pod, true),
            (&both, &foreign, false),
            (std::slice::from_ref(&ns), &pod, false),
            (&[], &foreign, true),
        ];
        for (i, (m, s, want)) in table.iter().enumerate() {
            assert_eq!(SanMatcher::any_matches(m, s), *want, "case {i}");
        }
        // Kinds: a URI matcher ignores DNS names; an untyped one looks at all.
        let dns = sans(&[(SanKind::Dns, "spiffe://cluster.local/x")]);
        assert!(!td.matches(&dns));
        let any = SanMatcher {
            kind: SanKind::Any,
            matcher: StringMatch::Exact("spiffe://cluster.local/x".into()),
        };
        assert!(any.matches(&dns));
    }
}
