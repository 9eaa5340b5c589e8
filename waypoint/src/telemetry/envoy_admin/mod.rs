//! The admin endpoints in Envoy's formats, for `istioctl proxy-config` and Envoy-based tooling:
//! `/config_dump` (`envoy.admin.v3.ConfigDump`, with `?mask=` and `?include_eds`),
//! `/clusters` (text, or `envoy.admin.v3.Clusters` with `?format=json`), `/server_info`,
//! `/certs` and `/memory`. The messages are envoy-types' prost structs rendered as Envoy's
//! admin writes JSON (original field names, `@type` on every `Any`).
//!
//! Under istiod `/config_dump` holds the resources of the last complete state the waypoint
//! accepted, as istiod sent them (a refused resource's last good version in its place). On
//! files it holds what istiod would send a waypoint for the config: the clusters and their
//! endpoints the config became (one EDS cluster per Istio cluster name), the `main_internal`
//! listener with a filter chain per service port ([`listeners`]) and each HTTP chain's route
//! configuration with the VirtualService routes ([`routes`]); the config's own model is in
//! `/config_dump?format=waypoint`.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use envoy_types::pb::envoy::admin::v3 as admin;
use envoy_types::pb::envoy::config::bootstrap::v3::Bootstrap;
use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, Locality, Node, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::{Any, Timestamp};
use prost::{Message, Name};
use serde_json::Value;
use xds_client::type_url;

mod handlers;
mod listeners;
mod route_match;
mod routes;
#[cfg(test)]
mod tests;

/// Where `/config_dump`'s resources come from.
pub enum DumpSource<'a> {
    /// The last complete xDS state accepted.
    Xds(&'a xds_client::ResourceState),
    /// The snapshot the files became.
    Files(&'a routing::Snapshot),
    /// Nothing accepted yet.
    Nothing,
}

fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

/// An xDS payload as the client keeps it, as the `Any` istiod sent: its protobuf bytes again
/// when it was kept compact ([`routing::xds::stored`]).
fn any_of(p: &xds_client::Payload) -> Any {
    let value = match routing::xds::stored::expand(&p.value) {
        Ok(bytes) => bytes.into_owned(),
        // Only a compact form this process made can fail to expand, so never in practice; the
        // kept bytes then show what is held.
        Err(_) => p.value.to_vec(),
    };
    Any {
        type_url: p.type_url.to_string(),
        value,
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

fn socket_address(addr: std::net::SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                addr.port(),
            ))),
            ..Default::default()
        })),
    }
}

fn locality(l: &routing::Locality) -> Locality {
    Locality {
        region: l.region.clone(),
        zone: l.zone.clone(),
        sub_zone: l.sub_zone.clone(),
    }
}

/// The waypoint's certificate as Envoy's SDS secrets: `default` (the chain; the key shown as
/// `[redacted]`, as Envoy writes it) and `ROOTCA` (the trusted roots), what `istioctl
/// proxy-config secret` lists.
fn secrets(
    identity: Option<&crate::control::identity::IdentitySummary>,
) -> admin::SecretsConfigDump {
    use admin::secrets_config_dump::DynamicSecret;
    use envoy_types::pb::envoy::config::core::v3::{data_source, DataSource};
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        secret, CertificateValidationContext, Secret, TlsCertificate,
    };
    let Some(id) = identity else {
        return admin::SecretsConfigDump::default();
    };
    let pem_of = |ders: &[rustls_pki_types::CertificateDer<'static>]| DataSource {
        specifier: Some(data_source::Specifier::InlineBytes(
            pem::encode_many(
                &ders
                    .iter()
                    .map(|d| pem::Pem::new("CERTIFICATE", d.to_vec()))
                    .collect::<Vec<_>>(),
            )
            .into_bytes(),
        )),
        ..Default::default()
    };
    let version = id.serial.clone();
    let entry = |name: &str, kind: secret::Type| DynamicSecret {
        name: name.to_string(),
        version_info: version.clone(),
        secret: Some(any(&Secret {
            name: name.to_string(),
            r#type: Some(kind),
        })),
        ..Default::default()
    };
    admin::SecretsConfigDump {
        dynamic_active_secrets: vec![
            entry(
                "default",
                secret::Type::TlsCertificate(TlsCertificate {
                    certificate_chain: Some(pem_of(&id.chain)),
                    private_key: Some(DataSource {
                        specifier: Some(data_source::Specifier::InlineString("[redacted]".into())),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            ),
            entry(
                "ROOTCA",
                secret::Type::ValidationContext(CertificateValidationContext {
                    trusted_ca: Some(pem_of(&id.trusted)),
                    ..Default::default()
                }),
            ),
        ],
        ..Default::default()
    }
}

/// The `ConfigDump` of `source`: bootstrap (the node), clusters, listeners, routes, the
/// waypoint's certificate as secrets and, with `include_eds`, endpoints, in Envoy's order.
pub fn config_dump(
    node: Option<&Node>,
    identity: Option<&crate::control::identity::IdentitySummary>,
    source: DumpSource<'_>,
    include_eds: bool,
) -> admin::ConfigDump {
    let bootstrap = admin::BootstrapConfigDump {
        bootstrap: Some(Bootstrap {
            node: node.cloned(),
            ..Default::default()
        }),
        last_updated: None,
    };
    let mut clusters = admin::ClustersConfigDump::default();
    let mut listeners = admin::ListenersConfigDump::default();
    let mut routes = admin::RoutesConfigDump::default();
    let mut endpoints = admin::EndpointsConfigDump::default();
    match source {
        DumpSource::Xds(state) => {
            use admin::clusters_config_dump::DynamicCluster;
            use admin::endpoints_config_dump::DynamicEndpointConfig;
            use admin::listeners_config_dump::{DynamicListener, DynamicListenerState};
            use admin::routes_config_dump::DynamicRouteConfig;
            for r in state.resources(type_url::CLUSTER) {
                clusters.dynamic_active_clusters.push(DynamicCluster {
                    version_info: r.version.clone(),
                    cluster: Some(any_of(&r.value)),
                    ..Default::default()
                });
            }
            for r in state.resources(type_url::LISTENER) {
                listeners.dynamic_listeners.push(DynamicListener {
                    name: r.name.to_string(),
                    active_state: Some(DynamicListenerState {
                        version_info: r.version.clone(),
                        listener: Some(any_of(&r.value)),
                        last_updated: None,
                    }),
                    ..Default::default()
                });
            }
            for r in state.resources(type_url::ROUTE_CONFIGURATION) {
                routes.dynamic_route_configs.push(DynamicRouteConfig {
                    version_info: r.version.clone(),
                    route_config: Some(any_of(&r.value)),
                    ..Default::default()
                });
            }
            if include_eds {
                for r in state.resources(type_url::CLUSTER_LOAD_ASSIGNMENT) {
                    endpoints
                        .dynamic_endpoint_configs
                        .push(DynamicEndpointConfig {
                            version_info: r.version.clone(),
                            endpoint_config: Some(any_of(&r.value)),
                            ..Default::default()
                        });
                }
            }
        }
        DumpSource::Files(snapshot) => {
            use admin::clusters_config_dump::DynamicCluster;
            use admin::endpoints_config_dump::DynamicEndpointConfig;
            use admin::listeners_config_dump::{DynamicListener, DynamicListenerState};
            use admin::routes_config_dump::DynamicRouteConfig;
            let version = snapshot.version().to_string();
            let mut by_host = std::collections::HashMap::new();
            let ports = listeners::service_ports(snapshot, &mut by_host);
            let main = listeners::main_internal(snapshot, &ports);
            listeners.dynamic_listeners.push(DynamicListener {
                name: main.name.clone(),
                active_state: Some(DynamicListenerState {
                    version_info: version.clone(),
                    listener: Some(any(&main)),
                    last_updated: None,
                }),
                ..Default::default()
            });
            for r in routes::route_configs(snapshot, &ports) {
                routes.dynamic_route_configs.push(DynamicRouteConfig {
                    version_info: version.clone(),
                    route_config: Some(any(&r)),
                    ..Default::default()
                });
            }
            for c in snapshot.clusters() {
                clusters.dynamic_active_clusters.push(DynamicCluster {
                    version_info: version.clone(),
                    cluster: Some(any(&files_cluster(c))),
                    ..Default::default()
                });
                if include_eds {
                    endpoints
                        .dynamic_endpoint_configs
                        .push(DynamicEndpointConfig {
                            version_info: version.clone(),
                            endpoint_config: Some(any(&assignment(c))),
                            ..Default::default()
                        });
                }
            }
        }
        DumpSource::Nothing => {}
    }
    let mut configs = vec![
        any(&bootstrap),
        any(&clusters),
        any(&listeners),
        any(&routes),
        any(&secrets(identity)),
    ];
    if include_eds {
        configs.push(any(&endpoints));
    }
    admin::ConfigDump { configs }
}

/// A files-mode cluster as the EDS cluster Envoy would hold for it.
fn files_cluster(c: &routing::Cluster) -> Cluster {
    Cluster {
        name: c.name.to_string(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::EdsClusterConfig {
            service_name: c.name.to_string(),
            eds_config: None,
        }),
        ..Default::default()
    }
}

/// A cluster's endpoints as its `ClusterLoadAssignment`, grouped by priority and locality.
fn assignment(c: &routing::Cluster) -> ClusterLoadAssignment {
    let mut groups: Vec<LocalityLbEndpoints> = Vec::new();
    for e in &c.endpoints {
        let locality = locality(&e.placement.locality);
        let lb = LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(socket_address(e.target())),
                ..Default::default()
            })),
            ..Default::default()
        };
        match groups
            .iter_mut()
            .find(|g| g.priority == e.placement.priority && g.locality.as_ref() == Some(&locality))
        {
            Some(g) => g.lb_endpoints.push(lb),
            None => groups.push(LocalityLbEndpoints {
                locality: Some(locality),
                priority: e.placement.priority,
                lb_endpoints: vec![lb],
                ..Default::default()
            }),
        }
    }
    ClusterLoadAssignment {
        cluster_name: c.name.to_string(),
        endpoints: groups,
        ..Default::default()
    }
}

/// Envoy's `?mask=`: a comma-separated list of field paths (`dynamic_active_clusters`,
/// `bootstrap.node`) kept in each element of `configs`; the others lose every other field.
pub fn apply_mask(dump: &mut Value, mask: &str) {
    let paths: Vec<Vec<&str>> = mask
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.split('.').collect())
        .collect();
    if paths.is_empty() {
        return;
    }
    if let Some(configs) = dump.get_mut("configs").and_then(Value::as_array_mut) {
        for config in configs {
            let masked = keep(config, &paths);
            *config = masked;
        }
    }
}

/// `v` with only `paths` (and an `Any`'s `@type`).
fn keep(v: &Value, paths: &[Vec<&str>]) -> Value {
    let Value::Object(map) = v else {
        return v.clone();
    };
    let mut out = serde_json::Map::new();
    if let Some(t) = map.get("@type") {
        out.insert("@type".into(), t.clone());
    }
    let heads: BTreeSet<&str> = paths.iter().filter_map(|p| p.first().copied()).collect();
    for head in heads {
        let Some(field) = map.get(head) else { continue };
        let rest: Vec<Vec<&str>> = paths
            .iter()
            .filter(|p| p.first() == Some(&head))
            .map(|p| p[1..].to_vec())
            .collect();
        if rest.iter().any(Vec::is_empty) {
            out.insert(head.into(), field.clone());
        } else {
            out.insert(head.into(), keep(field, &rest));
        }
    }
    Value::Object(out)
}

/// The health of one endpoint, as `/clusters` reports it.
struct Host<'a> {
    endpoint: &'a routing::ClusterEndpoint,
    ejected: bool,
}

fn hosts(c: &routing::Cluster) -> Vec<Host<'_>> {
    let now = std::time::Instant::now();
    c.endpoints
        .iter()
        .map(|e| Host {
            endpoint: e,
            ejected: c.is_ejected(e.target(), now),
        })
        .collect()
}

/// `/clusters` as Envoy's text: `cluster::host::stat::value` lines.
pub fn clusters_text(snapshot: &routing::Snapshot) -> String {
    let mut out = String::new();
    for c in snapshot.clusters() {
        let name = &c.name;
        out.push_str(&format!("{name}::observability_name::{name}\n"));
        out.push_str(&format!("{name}::added_via_api::true\n"));
        for h in hosts(c) {
            let e = h.endpoint;
            let t = e.target();
            let health = if h.ejected {
                "/failed_outlier_check"
            } else {
                "healthy"
            };
            for (stat, value) in [
                ("rq_active", e.active().to_string()),
                ("health_flags", health.to_string()),
                ("weight", "1".to_string()),
                ("region", e.placement.locality.region.clone()),
                ("zone", e.placement.locality.zone.clone()),
                ("sub_zone", e.placement.locality.sub_zone.clone()),
                ("priority", e.placement.priority.to_string()),
            ] {
                out.push_str(&format!("{name}::{t}::{stat}::{value}\n"));
            }
        }
    }
    out
}

/// `/clusters?format=json`: `envoy.admin.v3.Clusters`.
pub fn clusters(snapshot: &routing::Snapshot) -> admin::Clusters {
    let cluster_statuses = snapshot
        .clusters()
        .into_iter()
        .map(|c| admin::ClusterStatus {
            name: c.name.to_string(),
            observability_name: c.name.to_string(),
            added_via_api: true,
            host_statuses: hosts(c)
                .into_iter()
                .map(|h| {
                    let e = h.endpoint;
                    admin::HostStatus {
                        address: Some(socket_address(e.target())),
                        stats: vec![admin::SimpleMetric {
                            r#type: admin::simple_metric::Type::Gauge as i32,
                            value: e.active() as u64,
                            name: "rq_active".into(),
                        }],
                        health_status: Some(admin::HostHealthStatus {
                            failed_outlier_check: h.ejected,
                            eds_health_status:
                                envoy_types::pb::envoy::config::core::v3::HealthStatus::Healthy
                                    as i32,
                            ..Default::default()
                        }),
                        weight: 1,
                        priority: e.placement.priority,
                        locality: Some(locality(&e.placement.locality)),
                        ..Default::default()
                    }
                })
                .collect(),
            ..Default::default()
        })
        .collect();
    admin::Clusters { cluster_statuses }
}

/// `/server_info`: `envoy.admin.v3.ServerInfo`.
pub fn server_info(node: Option<&Node>, state: admin::server_info::State, up: Duration) -> Value {
    let uptime = envoy_types::pb::google::protobuf::Duration {
        seconds: up.as_secs() as i64,
        nanos: 0,
    };
    let info = admin::ServerInfo {
        version: format!("waypoint/{}", env!("CARGO_PKG_VERSION")),
        state: state as i32,
        uptime_current_epoch: Some(uptime),
        uptime_all_epochs: Some(uptime),
        hot_restart_version: "disabled".into(),
        command_line_options: None,
        node: node.cloned(),
        ..Default::default()
    };
    render_all(&info)
}

/// `/certs`: `envoy.admin.v3.Certificates`, the waypoint's own chain and its roots.
pub fn certs(summary: Option<&crate::control::identity::IdentitySummary>) -> Value {
    let certificates = summary
        .map(|s| {
            let expiration = UNIX_EPOCH + Duration::from_secs(s.not_after_unix.max(0) as u64);
            let days = expiration
                .duration_since(SystemTime::now())
                .map_or(0, |d| d.as_secs() / 86_400);
            vec![admin::Certificate {
                ca_cert: Vec::new(),
                cert_chain: vec![admin::CertificateDetails {
                    path: "waypoint".into(),
                    serial_number: s.serial.clone(),
                    subject_alt_names: vec![admin::SubjectAlternateName {
                        name: Some(admin::subject_alternate_name::Name::Uri(
                            s.spiffe_id.clone(),
                        )),
                    }],
                    days_until_expiration: days,
                    expiration_time: Some(timestamp(expiration)),
                    ..Default::default()
                }],
            }]
        })
        .unwrap_or_default();
    render(&admin::Certificates { certificates })
}

/// `/memory`: `envoy.admin.v3.Memory` from jemalloc's statistics. Written here rather than
/// through [`render_all`]: the message is six `uint64`s, and the descriptor pool `render_all`
/// decodes for each answer (about 11 MiB of heap, 12–30 ms) left about 20 MiB of freed pages
/// resident after every call until the next config change's trim. A poller of `/memory` (a
/// dashboard, `xds_bench`'s heap readings) made the RSS it watched.
pub fn memory() -> Value {
    memory_json(&memory_stats())
}

/// `m` as proto3 JSON, as [`render_all`] writes it: the fields' proto names, every field
/// written, a `uint64` as a decimal string.
fn memory_json(m: &admin::Memory) -> Value {
    serde_json::json!({
        "allocated": m.allocated.to_string(),
        "heap_size": m.heap_size.to_string(),
        "pageheap_unmapped": m.pageheap_unmapped.to_string(),
        "pageheap_free": m.pageheap_free.to_string(),
        "total_thread_cache": m.total_thread_cache.to_string(),
        "total_physical_bytes": m.total_physical_bytes.to_string(),
    })
}

/// jemalloc's figures as Envoy's `Memory` (`/memory`, and `/stats`'s `server.memory_*`).
fn memory_stats() -> admin::Memory {
    use tikv_jemalloc_ctl::{epoch, stats};
    let _ = epoch::advance();
    let read = |r: tikv_jemalloc_ctl::Result<usize>| r.unwrap_or(0) as u64;
    let resident = read(stats::resident::read());
    let mapped = read(stats::mapped::read());
    admin::Memory {
        allocated: read(stats::allocated::read()),
        heap_size: mapped,
        pageheap_unmapped: read(stats::retained::read()),
        pageheap_free: mapped.saturating_sub(resident),
        total_thread_cache: 0,
        total_physical_bytes: resident,
    }
}

/// `message` as Envoy's admin JSON (`{}` if it cannot be rendered, which the embedded
/// descriptors rule out for these types).
pub fn render<M: Message + Name>(message: &M) -> Value {
    rendered::<M>(routing::xds::json_out::to_json(message))
}

/// [`render`] with fields at their default value written too.
pub fn render_all<M: Message + Name>(message: &M) -> Value {
    rendered::<M>(routing::xds::json_out::to_json_with_defaults(message))
}

fn rendered<M: Name>(r: Result<Value, routing::xds::json::JsonError>) -> Value {
    // The descriptor pool this answer decoded (about 11 MiB) is freed: its pages go back to the
    // kernel with the trim that follows, not at the next config change.
    crate::control::retired::settled_later();
    r.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "admin: cannot render {}", M::full_name());
        Value::Object(Default::default())
    })
}
