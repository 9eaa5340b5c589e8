//! `outbound|<port>|<subset>|<host>` clusters: a service this waypoint does not serve that a
//! route of one it serves points at (istiod `waypoint.go` `filterWaypointOutboundServices`;
//! routes name it through `listener_waypoint.go` `getWaypointDestinationCluster`). istiod builds
//! them as a sidecar's outbound clusters: EDS over ADS and, because a waypoint always sends
//! HBONE, `transport_socket_matches` (`cluster_tls.go` `applyHBONETransportSocketMatches`,
//! 1.24.6 L322):
//!
//! | match name | `match` | socket | here |
//! | --- | --- | --- | --- |
//! | `hbone` | `{tunnel: http}` | `envoy.transport_sockets.internal_upstream` (raw buffer) | HBONE to the pod's node |
//! | `tlsMode-istio` | `{tlsMode: istio}` | `tls`, SDS `default` / `ROOTCA` (ISTIO_MUTUAL) | Istio mutual TLS, dialled directly ([`crate::Transport::IstioMutual`]) |
//! | `tlsMode-disabled` | `{}` | `raw_buffer` | plaintext, dialled directly |
//!
//! An endpoint picks the first match whose keys its `envoy.transport_socket_match` metadata
//! holds (`endpoint_builder.go` `buildEnvoyLbEndpoint`, 1.24.6 L609: ambient pods carry
//! `{tunnel: http}` and an `envoy_internal_address` to `connect_originate`; sidecar pods
//! `{tlsMode: istio}` on a `socket_address`; plain pods nothing). Nothing is ever sent in
//! plaintext where istiod asked for TLS: an endpoint whose socket this proxy cannot originate
//! (DestinationRule SIMPLE / MUTUAL on an outbound cluster, TLS inside HBONE) is left out with
//! a warning naming it. For `tlsMode-istio` the waypoint presents its own certificate and
//! checks the peer as it checks HBONE peers (`connect_originate`'s SAN matchers, the trust
//! domain), not the service-account SANs of the match's context.

use super::cluster::{self, ServiceCluster};
use super::endpoint::PodEndpoint;
use super::names::ClusterName;
use super::{decode_any, At, Diag};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier;
use envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType;
use envoy_types::pb::envoy::config::core::v3::TransportSocket;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::UpstreamTlsContext;
use envoy_types::pb::google::protobuf::{value::Kind, Struct};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The endpoint metadata key a transport socket match looks at.
const SOCKET_MATCH_KEY: &str = "envoy.transport_socket_match";
/// The SDS secret istiod names for the proxy's own workload certificate (ISTIO_MUTUAL).
const ISTIO_CERT_SECRET: &str = "default";

/// What a transport socket asks of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Socket {
    /// `internal_upstream` around a raw buffer: the endpoint's internal address
    /// (`connect_originate`) is the HBONE tunnel.
    Hbone,
    /// Istio mutual TLS with the proxy's own certificate (ISTIO_MUTUAL).
    IstioMutual,
    /// Raw buffer: plaintext.
    Plain,
    /// Something this proxy does not originate on an outbound cluster (named).
    Unsupported(String),
}

/// One `transport_socket_matches` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SocketMatch {
    pub(crate) name: String,
    pub(crate) keys: BTreeMap<String, String>,
    pub(crate) socket: Socket,
}

/// A translated outbound cluster: the policy as for `inbound-vip`, plus its socket matches.
#[derive(Debug)]
pub(crate) struct OutboundCluster {
    pub(crate) cluster: ServiceCluster,
    pub(crate) matches: Vec<SocketMatch>,
}

/// Translate an `outbound|…` cluster; `None` when rejected.
pub(crate) fn outbound_cluster(
    c: &Cluster,
    name: ClusterName,
    diag: &mut Diag,
) -> Option<OutboundCluster> {
    let cluster = cluster::service_cluster(c, name, diag)?;
    let matches = c
        .transport_socket_matches
        .iter()
        .map(|m| SocketMatch {
            name: m.name.clone(),
            keys: m.r#match.as_ref().map(strings).unwrap_or_default(),
            socket: m
                .transport_socket
                .as_ref()
                .map_or(Socket::Plain, socket_kind),
        })
        .collect();
    Some(OutboundCluster { cluster, matches })
}

/// The string fields of a metadata struct (other kinds never equal a match's strings).
fn strings(s: &Struct) -> BTreeMap<String, String> {
    s.fields
        .iter()
        .filter_map(|(k, v)| match v.kind.as_ref() {
            Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
            _ => None,
        })
        .collect()
}

fn socket_kind(ts: &TransportSocket) -> Socket {
    let any = match ts.config_type.as_ref() {
        Some(ConfigType::TypedConfig(any)) => any,
        None => return Socket::Plain,
    };
    let kind = any.type_url.rsplit('.').next().unwrap_or_default();
    match kind {
        "RawBuffer" => Socket::Plain,
        "InternalUpstreamTransport" => {
            use envoy_types::pb::envoy::extensions::transport_sockets::internal_upstream::v3::InternalUpstreamTransport;
            match decode_any::<InternalUpstreamTransport>(any) {
                Some(Ok(iu)) => match iu.transport_socket.as_ref().map(socket_kind) {
                    None | Some(Socket::Plain) => Socket::Hbone,
                    Some(_) => Socket::Unsupported(format!(
                        "{} wrapping TLS (TLS inside the HBONE tunnel)",
                        ts.name
                    )),
                },
                _ => Socket::Unsupported(format!("{} (undecodable)", ts.name)),
            }
        }
        "UpstreamTlsContext" => match decode_any::<UpstreamTlsContext>(any) {
            Some(Ok(tls)) => {
                let istio = tls.common_tls_context.as_ref().is_some_and(|c| {
                    c.tls_certificate_sds_secret_configs
                        .iter()
                        .any(|s| s.name == ISTIO_CERT_SECRET)
                });
                if istio {
                    Socket::IstioMutual
                } else {
                    Socket::Unsupported(format!("{} (DestinationRule SIMPLE / MUTUAL)", ts.name))
                }
            }
            _ => Socket::Unsupported(format!("{} (undecodable)", ts.name)),
        },
        other => Socket::Unsupported(format!("{} ({other})", ts.name)),
    }
}

/// `envoy.transport_socket_match` metadata strings of each endpoint of an assignment, by address
/// (the internal address's `endpoint_id` or the socket address).
pub(crate) type MatchMetadata = BTreeMap<SocketAddr, BTreeMap<String, String>>;

/// The assignment's [`MatchMetadata`]; `None` when no endpoint has any (every lookup is empty).
pub(crate) fn match_metadata(cla: &ClusterLoadAssignment) -> Option<MatchMetadata> {
    let mut out = BTreeMap::new();
    for ep in cla.endpoints.iter().flat_map(|l| &l.lb_endpoints) {
        let Some(HostIdentifier::Endpoint(e)) = &ep.host_identifier else {
            continue;
        };
        let addr = match e.address.as_ref().and_then(|a| a.address.as_ref()) {
            Some(AddressKind::EnvoyInternalAddress(i)) => i.endpoint_id.parse().ok(),
            Some(AddressKind::SocketAddress(s)) => {
                match (&s.port_specifier, s.address.parse::<IpAddr>()) {
                    (Some(PortSpecifier::PortValue(p)), Ok(ip)) => {
                        u16::try_from(*p).ok().map(|p| SocketAddr::new(ip, p))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        let keys = ep
            .metadata
            .as_ref()
            .and_then(|m| m.filter_metadata.get(SOCKET_MATCH_KEY))
            .map(strings)
            .unwrap_or_default();
        if let Some(addr) = addr {
            out.insert(addr, keys);
        }
    }
    out.values().any(|keys| !keys.is_empty()).then_some(out)
}

/// The socket Envoy would pick for endpoint metadata `keys`: the first match whose keys it
/// holds; none matching = the cluster's default socket (istiod sets none: raw buffer).
fn pick<'m>(
    matches: &'m [SocketMatch],
    keys: &BTreeMap<String, String>,
) -> Option<&'m SocketMatch> {
    matches
        .iter()
        .find(|m| m.keys.iter().all(|(k, v)| keys.get(k) == Some(v)))
}

/// The pods of an outbound cluster that can be reached as istiod asks, each with its transport
/// (`tunnel`: HBONE, else direct plaintext); the others left out with a warning.
pub(crate) fn reachable(
    pods: Vec<Arc<PodEndpoint>>,
    meta: Option<&MatchMetadata>,
    matches: &[SocketMatch],
    at: At<'_>,
    diag: &mut Diag,
) -> Vec<Arc<PodEndpoint>> {
    if matches.is_empty() {
        // No matches: the cluster's own socket for every endpoint, as for `inbound-vip`.
        return pods;
    }
    let empty = BTreeMap::new();
    let mut out = Vec::new();
    for mut pod in pods {
        let keys = meta.and_then(|m| m.get(&pod.addr())).unwrap_or(&empty);
        let (name, socket) = match pick(matches, keys) {
            Some(m) => (m.name.as_str(), &m.socket),
            None => ("(cluster default)", &Socket::Plain),
        };
        let refused = match (socket, pod.tunnel) {
            // An internal address goes to `connect_originate` whatever the socket: HBONE.
            (Socket::Hbone | Socket::Plain, true) => None,
            (Socket::Plain, false) => None,
            (Socket::Hbone, false) => Some(format!(
                "transport socket {name:?} is HBONE but the endpoint is not an internal address to connect_originate"
            )),
            (Socket::IstioMutual, true) => None,
            (Socket::IstioMutual, false) => {
                Arc::make_mut(&mut pod).istio_mtls = true;
                None
            }
            (Socket::Unsupported(what), _) => {
                Some(format!("transport socket {name:?} ({what}) is not supported"))
            }
        };
        match refused {
            Some(reason) => at.warn(diag, format!("endpoint {} left out: {reason}", pod.addr())),
            None => out.push(pod),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, keys: &[(&str, &str)], socket: Socket) -> SocketMatch {
        SocketMatch {
            name: name.into(),
            keys: keys
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            socket,
        }
    }

    #[test]
    fn first_match_whose_keys_the_endpoint_holds() {
        let istiod = [
            m("hbone", &[("tunnel", "http")], Socket::Hbone),
            m(
                "tlsMode-istio",
                &[("tlsMode", "istio")],
                Socket::IstioMutual,
            ),
            m("tlsMode-disabled", &[], Socket::Plain),
        ];
        let keys = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
            v.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a str);
        let table: &[Case<'_>] = &[
            (&[("tunnel", "http")], "hbone"),
            (&[("tlsMode", "istio")], "tlsMode-istio"),
            (&[("tlsMode", "disabled")], "tlsMode-disabled"),
            (&[], "tlsMode-disabled"),
        ];
        for (k, want) in table {
            assert_eq!(pick(&istiod, &keys(k)).unwrap().name, *want, "{k:?}");
        }
        assert!(pick(&istiod[..2], &keys(&[])).is_none());
    }
}
