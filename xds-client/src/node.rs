//! The `Node` a waypoint presents to istiod.
//!
//! Facts from istio/istio:
//! - The id is `<type>~<ip>~<pod>.<namespace>~<namespace>.svc.<cluster domain>`
//!   (`pkg/istio-agent/agent.go` joins type, IP, ID, DNSDomain with `~`; the waypoint template
//!   `manifests/.../files/waypoint.yaml` passes `proxy waypoint --domain $(POD_NAMESPACE).svc.
//!   cluster.local`; `pkg/model/proxy.go` defines NodeType `waypoint`).
//! - Metadata keys are `NodeMetadata`'s JSON tags in `pkg/model/proxy.go`: `NAMESPACE`,
//!   `SERVICE_ACCOUNT`, `NODE_NAME`, `CLUSTER_ID`, `INSTANCE_IPS` (a *comma-joined string*,
//!   `StringList`), `ISTIO_VERSION` (empty means "latest" to istiod), `LABELS` (a struct),
//!   `WORKLOAD_NAME`, `MESH_ID`, `NETWORK`, `INTERCEPTION_MODE`, `OWNER`, `NAME` (pod name).
//! - `pkg/bootstrap/config.go`: every `ISTIO_META_<KEY>=value` env var becomes metadata `<KEY>`
//!   (a string); `POD_NAME`, `POD_NAMESPACE`, `SERVICE_ACCOUNT` fill `NAME`, `NAMESPACE`,
//!   `SERVICE_ACCOUNT`; pod labels come from the downward-API file (`/etc/istio/pod/labels`),
//!   without `pod-template-hash`.
//! - `node.locality` (`pkg/bootstrap/config.go` `getNodeMetaData`, `pkg/model/proxy.go`
//!   `GetLocalityLabel` / `SanitizeLocalityLabel`): the pod label `topology.istio.io/locality`,
//!   else `istio-locality`, with `.` standing for `/` when the value has no `/`, split into
//!   region / zone / sub-zone (`SplitLocalityLabel`). istiod prefers the pod's Kubernetes node
//!   topology labels and falls back to this (`pilot/pkg/xds/ads.go` `setTopologyLabels`); it
//!   places endpoints into failover priorities relative to the result.
//! - istiod (`pilot/pkg/xds/auth.go`) checks the authenticated identity's namespace and service
//!   account against `NAMESPACE`/the id's namespace and `SERVICE_ACCOUNT`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

/// Node type istiod knows waypoints by.
pub const WAYPOINT_NODE_TYPE: &str = "waypoint";
/// `CLUSTER_ID` when none is configured (Istio's default cluster name).
pub const DEFAULT_CLUSTER_ID: &str = "Kubernetes";
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// Pod labels that carry the proxy's locality, in the order Istio reads them.
pub const LOCALITY_LABELS: [&str; 2] = ["topology.istio.io/locality", "istio-locality"];
/// Where the waypoint template mounts the pod's labels (downward API).
pub const DEFAULT_LABELS_PATH: &str = "/etc/istio/pod/labels";

/// Env vars read by [`NodeInfo::from_env`].
pub mod env {
    pub const POD_NAME: &str = "POD_NAME";
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    pub const INSTANCE_IP: &str = "INSTANCE_IP";
    pub const SERVICE_ACCOUNT: &str = "SERVICE_ACCOUNT";
    /// Istio's prefix for free-form node metadata.
    pub const META_PREFIX: &str = "ISTIO_META_";
    /// Cluster domain (`cluster.local` when unset).
    pub const CLUSTER_DOMAIN: &str = "CLUSTER_DOMAIN";
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NodeError {
    #[error("environment variable {name} is not set (the waypoint pod template sets it from the downward API)")]
    Missing { name: &'static str },
    #[error("environment variable {name}={value:?}: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
}

/// Who this waypoint is, as istiod needs to know.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct NodeInfo {
    /// `waypoint` for this proxy.
    pub node_type: String,
    pub pod_name: String,
    pub namespace: String,
    /// The pod's IPs; the first goes into the node id.
    pub instance_ips: Vec<IpAddr>,
    pub cluster_domain: String,
    pub service_account: String,
    pub node_name: String,
    pub cluster_id: String,
    pub istio_version: String,
    pub labels: BTreeMap<String, String>,
    /// Other string metadata (`WORKLOAD_NAME`, `MESH_ID`, `NETWORK`, `INTERCEPTION_MODE`,
    /// `OWNER`, ...), by metadata key. Typed fields above win over same-named keys here.
    pub metadata: BTreeMap<String, String>,
}

impl NodeInfo {
    /// A waypoint node with the given identity and defaults elsewhere (`default` service account,
    /// cluster `Kubernetes`, `cluster.local`, `INTERCEPTION_MODE=REDIRECT` as the template sets).
    pub fn new(pod_name: &str, namespace: &str, ip: IpAddr) -> Self {
        let mut metadata = BTreeMap::new();
        metadata.insert("INTERCEPTION_MODE".to_string(), "REDIRECT".to_string());
        Self {
            node_type: WAYPOINT_NODE_TYPE.to_string(),
            pod_name: pod_name.to_string(),
            namespace: namespace.to_string(),
            instance_ips: vec![ip],
            cluster_domain: DEFAULT_CLUSTER_DOMAIN.to_string(),
            service_account: "default".to_string(),
            node_name: String::new(),
            cluster_id: DEFAULT_CLUSTER_ID.to_string(),
            istio_version: String::new(),
            labels: BTreeMap::new(),
            metadata,
        }
    }

    /// From the process environment, as the waypoint pod template sets it. Labels are not read
    /// here; see [`labels_from_downward_api`].
    pub fn from_env() -> Result<Self, NodeError> {
        Self::from_vars(std::env::vars())
    }

    /// From `(name, value)` pairs: `POD_NAME`, `POD_NAMESPACE`, `INSTANCE_IP` (required;
    /// `INSTANCE_IP` may hold several comma-separated IPs), `SERVICE_ACCOUNT` or
    /// `ISTIO_META_SERVICE_ACCOUNT`, `CLUSTER_DOMAIN`, and every `ISTIO_META_<KEY>` as metadata
    /// `<KEY>` (`NODE_NAME`, `CLUSTER_ID`, `ISTIO_VERSION`, `WORKLOAD_NAME`, `MESH_ID`, ...).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Self, NodeError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let vars: BTreeMap<String, String> = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .filter(|(_, v)| !v.trim().is_empty())
            .collect();
        let required = |name: &'static str| {
            vars.get(name)
                .map(|v| v.trim().to_string())
                .ok_or(NodeError::Missing { name })
        };
        let pod_name = required(env::POD_NAME)?;
        let namespace = required(env::POD_NAMESPACE)?;
        let ip_var = required(env::INSTANCE_IP)?;
        let instance_ips = ip_var
            .split(',')
            .map(|ip| {
                ip.trim().parse::<IpAddr>().map_err(|e| NodeError::Invalid {
                    name: env::INSTANCE_IP.to_string(),
                    value: ip_var.clone(),
                    reason: e.to_string(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut node = Self::new(&pod_name, &namespace, instance_ips[0]);
        node.instance_ips = instance_ips;
        let mut metadata: BTreeMap<String, String> = vars
            .iter()
            .filter_map(|(k, v)| {
                let key = k.strip_prefix(env::META_PREFIX)?;
                (!key.is_empty()).then(|| (key.to_string(), v.clone()))
            })
            .collect();
        let mut take = |key: &str| metadata.remove(key);
        if let Some(sa) =
            take("SERVICE_ACCOUNT").or_else(|| vars.get(env::SERVICE_ACCOUNT).cloned())
        {
            node.service_account = sa;
        }
        if let Some(v) = take("NODE_NAME") {
            node.node_name = v;
        }
        if let Some(v) = take("CLUSTER_ID") {
            node.cluster_id = v;
        }
        if let Some(v) = take("ISTIO_VERSION") {
            node.istio_version = v;
        }
        if let Some(v) = vars.get(env::CLUSTER_DOMAIN) {
            node.cluster_domain = v.clone();
        }
        // Computed from the fields above; an env override would disagree with them.
        for derived in ["NAMESPACE", "NAME", "INSTANCE_IPS", "LABELS"] {
            metadata.remove(derived);
        }
        node.metadata.extend(metadata);
        Ok(node)
    }

    /// `waypoint~10.0.0.5~waypoint-abc.ns~ns.svc.cluster.local`
    pub fn id(&self) -> String {
        let ip = self
            .instance_ips
            .first()
            .map(|ip| ip.to_string())
            .unwrap_or_default();
        format!(
            "{}~{ip}~{}.{}~{}.svc.{}",
            self.node_type, self.pod_name, self.namespace, self.namespace, self.cluster_domain
        )
    }

    /// Node metadata as istiod reads it (`NodeMetadata` JSON).
    pub fn metadata_struct(&self) -> Struct {
        let mut fields: BTreeMap<String, Value> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), string(v)))
            .collect();
        let mut put = |key: &str, value: &str| {
            if !value.is_empty() {
                fields.insert(key.to_string(), string(value));
            }
        };
        put("NAME", &self.pod_name);
        put("NAMESPACE", &self.namespace);
        put("SERVICE_ACCOUNT", &self.service_account);
        put("NODE_NAME", &self.node_name);
        put("CLUSTER_ID", &self.cluster_id);
        put("ISTIO_VERSION", &self.istio_version);
        let ips: Vec<String> = self.instance_ips.iter().map(|ip| ip.to_string()).collect();
        put("INSTANCE_IPS", &ips.join(","));
        if !self.labels.is_empty() {
            let labels = Struct {
                fields: self
                    .labels
                    .iter()
                    .map(|(k, v)| (k.clone(), string(v)))
                    .collect(),
            };
            fields.insert(
                "LABELS".to_string(),
                Value {
                    kind: Some(Kind::StructValue(labels)),
                },
            );
        }
        Struct {
            fields: fields.into_iter().collect(),
        }
    }

    pub fn to_node(&self) -> Node {
        Node {
            id: self.id(),
            // What `--serviceCluster <sa>.<namespace>` gives in the waypoint template.
            cluster: format!("{}.{}", self.service_account, self.namespace),
            metadata: Some(self.metadata_struct()),
            user_agent_name: "waypoint".to_string(),
            locality: self.locality(),
            ..Default::default()
        }
    }

    /// `node.locality` from the locality labels ([`LOCALITY_LABELS`]); `None` without one.
    pub fn locality(&self) -> Option<Locality> {
        let value = LOCALITY_LABELS
            .iter()
            .find_map(|l| self.labels.get(*l))
            .filter(|v| !v.is_empty())?;
        let value = if value.contains('/') {
            value.clone()
        } else {
            value.replace('.', "/")
        };
        let mut parts = value.split('/').map(str::to_string);
        Some(Locality {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            sub_zone: parts.next().unwrap_or_default(),
        })
    }
}

fn string(v: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(v.to_string())),
    }
}

/// Parse the downward API's labels file (`key="value"` per line, values quoted with Go escapes),
/// dropping `pod-template-hash` as the Istio agent does. Lines that do not parse are skipped.
pub fn labels_from_downward_api(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once('=')?;
            let value = value.trim();
            let value = value.strip_prefix('"')?.strip_suffix('"')?;
            Some((key.trim().to_string(), unescape(value)))
        })
        .filter(|(k, _)| !k.is_empty() && k != "pod-template-hash")
        .collect()
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn id_and_metadata_from_env() {
        let node = NodeInfo::from_vars(vars(&[
            ("POD_NAME", "waypoint-7d9f"),
            ("POD_NAMESPACE", "bookinfo"),
            ("INSTANCE_IP", "10.1.2.3"),
            ("SERVICE_ACCOUNT", "waypoint"),
            ("ISTIO_META_NODE_NAME", "node-a"),
            ("ISTIO_META_CLUSTER_ID", "east"),
            ("ISTIO_META_WORKLOAD_NAME", "waypoint"),
            ("ISTIO_META_MESH_ID", "cluster.local"),
            ("ISTIO_META_NETWORK", "net1"),
            ("ISTIO_META_INSTANCE_IPS", "6.6.6.6"),
            ("UNRELATED", "x"),
        ]))
        .unwrap();
        assert_eq!(
            node.id(),
            "waypoint~10.1.2.3~waypoint-7d9f.bookinfo~bookinfo.svc.cluster.local"
        );
        let meta = node.metadata_struct();
        let get = |k: &str| match meta.fields.get(k).and_then(|v| v.kind.clone()) {
            Some(Kind::StringValue(s)) => s,
            other => panic!("{k}: {other:?}"),
        };
        assert_eq!(get("NAMESPACE"), "bookinfo");
        assert_eq!(get("SERVICE_ACCOUNT"), "waypoint");
        assert_eq!(get("NODE_NAME"), "node-a");
        assert_eq!(get("CLUSTER_ID"), "east");
        assert_eq!(get("WORKLOAD_NAME"), "waypoint");
        assert_eq!(get("MESH_ID"), "cluster.local");
        assert_eq!(get("NETWORK"), "net1");
        assert_eq!(get("INTERCEPTION_MODE"), "REDIRECT");
        // Derived from INSTANCE_IP, not overridable.
        assert_eq!(get("INSTANCE_IPS"), "10.1.2.3");
        assert!(!meta.fields.contains_key("UNRELATED"));
        assert_eq!(node.to_node().cluster, "waypoint.bookinfo");
    }

    #[test]
    fn missing_and_invalid_variables_are_named() {
        let err = NodeInfo::from_vars(vars(&[("POD_NAME", "p"), ("INSTANCE_IP", "10.0.0.1")]))
            .unwrap_err();
        assert_eq!(
            err,
            NodeError::Missing {
                name: "POD_NAMESPACE"
            }
        );
        assert!(err.to_string().contains("POD_NAMESPACE"));
        let err = NodeInfo::from_vars(vars(&[
            ("POD_NAME", "p"),
            ("POD_NAMESPACE", "ns"),
            ("INSTANCE_IP", "10.0.0.1,nope"),
        ]))
        .unwrap_err();
        assert!(matches!(err, NodeError::Invalid { ref name, .. } if name == "INSTANCE_IP"));
        // Empty counts as unset.
        let err = NodeInfo::from_vars(vars(&[
            ("POD_NAME", ""),
            ("POD_NAMESPACE", "ns"),
            ("INSTANCE_IP", "10.0.0.1"),
        ]))
        .unwrap_err();
        assert_eq!(err, NodeError::Missing { name: "POD_NAME" });
    }

    #[test]
    fn several_ips_and_labels() {
        let mut node = NodeInfo::from_vars(vars(&[
            ("POD_NAME", "p"),
            ("POD_NAMESPACE", "ns"),
            ("INSTANCE_IP", "10.0.0.1, fd00::1"),
        ]))
        .unwrap();
        node.labels = labels_from_downward_api(
            "app=\"waypoint\"\npod-template-hash=\"abc\"\ngateway.networking.k8s.io/gateway-name=\"wp\"\nbroken\n",
        );
        assert_eq!(node.id(), "waypoint~10.0.0.1~p.ns~ns.svc.cluster.local");
        let meta = node.metadata_struct();
        assert_eq!(
            meta.fields["INSTANCE_IPS"].kind,
            Some(Kind::StringValue("10.0.0.1,fd00::1".into()))
        );
        let Some(Kind::StructValue(labels)) = &meta.fields["LABELS"].kind else {
            panic!("LABELS is not a struct");
        };
        assert_eq!(labels.fields.len(), 2);
        assert_eq!(
            labels.fields["gateway.networking.k8s.io/gateway-name"].kind,
            Some(Kind::StringValue("wp".into()))
        );
    }

    #[test]
    fn locality_from_labels() {
        let mut node = NodeInfo::new("w", "ns", "10.0.0.1".parse().unwrap());
        assert_eq!(node.to_node().locality, None);
        node.labels
            .insert("istio-locality".into(), "us-east1.us-east1-b".into());
        let l = node.to_node().locality.unwrap();
        assert_eq!(
            (l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()),
            ("us-east1", "us-east1-b", "")
        );
        // The newer label wins; a value with `/` is taken as is (dots kept).
        node.labels.insert(
            "topology.istio.io/locality".into(),
            "eu/eu-west1.a/rack-1".into(),
        );
        let l = node.locality().unwrap();
        assert_eq!(
            (l.region.as_str(), l.zone.as_str(), l.sub_zone.as_str()),
            ("eu", "eu-west1.a", "rack-1")
        );
    }
}
