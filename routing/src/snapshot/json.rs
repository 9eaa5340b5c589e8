//! The snapshot as JSON: the config dump's objects ([`Snapshot::to_json`]) and the lookup
//! tables ([`Snapshot::index_json`]).

use super::Snapshot;
use crate::model::Endpoint;

impl Snapshot {
    /// Pods served through the direct chains, sorted by address.
    fn workloads_json(&self) -> Vec<serde_json::Value> {
        let mut w: Vec<_> = self.workloads.iter().collect();
        w.sort_by_key(|(ip, _)| **ip);
        w.into_iter()
            .map(|(_, (ep, protocol))| serde_json::json!({ "endpoint": ep.as_ref(), "protocol": protocol }))
            .collect()
    }

    /// The authority map, sorted: `"<hostname>:<port>"` → the VIP:port it stands for.
    fn authorities_json(&self) -> std::collections::BTreeMap<String, String> {
        self.by_authority
            .iter()
            .map(|((h, p), vip)| (format!("{h}:{p}"), vip.to_string()))
            .collect()
    }

    /// The lookup tables, sorted, each naming what it finds: hosts and their short names,
    /// VIP:ports, pod addresses (the services and endpoints of each, in order), and the route
    /// and TCP route tables by host (each route's VirtualService and index). What a request is
    /// routed by, where [`to_json`](Self::to_json) shows the objects these tables point at: for
    /// comparing two snapshots (a patched one and one built from scratch).
    pub fn index_json(&self) -> serde_json::Value {
        use std::collections::BTreeMap;
        let host = |si: usize| self.services[si].hostname.as_str();
        let by_host: BTreeMap<&str, &str> = self
            .by_host
            .iter()
            .map(|(h, &si)| (&**h, host(si)))
            .collect();
        let by_vip: BTreeMap<String, (&str, u16)> = self
            .by_vip
            .iter()
            .map(|(a, &(si, pi))| {
                (
                    a.to_string(),
                    (host(si), self.services[si].ports[pi].number),
                )
            })
            .collect();
        let by_pod_ip: BTreeMap<String, Vec<(&str, &str)>> = self
            .by_pod_ip
            .iter()
            .map(|(ip, list)| {
                let list = list
                    .iter()
                    .map(|(h, e)| (&**h, &*e.workload.name))
                    .collect();
                (ip.to_string(), list)
            })
            .collect();
        let routes: BTreeMap<&str, Vec<(&str, usize)>> = self
            .routes
            .iter()
            .map(|(h, t)| {
                let t = t
                    .iter()
                    .map(|e| (e.virtual_service.as_str(), e.index))
                    .collect();
                (&**h, t)
            })
            .collect();
        let tcp_routes: BTreeMap<&str, Vec<&str>> = self
            .tcp_routes
            .iter()
            .map(|(h, t)| {
                (
                    h.as_str(),
                    t.iter().map(|e| e.virtual_service.as_str()).collect(),
                )
            })
            .collect();
        serde_json::json!({
            "by_host": by_host,
            "by_vip": by_vip,
            "by_pod_ip": by_pod_ip,
            "routes": routes,
            "tcp_routes": tcp_routes,
        })
    }

    /// A JSON dump for `/config_dump`.
    pub fn to_json(&self) -> serde_json::Value {
        let services: Vec<serde_json::Value> = self
            .services
            .iter()
            .zip(self.endpoints.iter())
            .map(|(s, eps)| {
                let eps: Vec<&Endpoint> = eps.iter().map(|e| e.as_ref()).collect();
                serde_json::json!({ "service": s, "endpoints": eps })
            })
            .collect();
        let mut out = serde_json::json!({
            "version": self.version,
            "services": services,
            "virtual_services": self.virtual_services.iter().map(|v| &**v).collect::<Vec<_>>(),
            "destination_rules": self.destination_rules.iter().map(|d| &**d).collect::<Vec<_>>(),
            "clusters": self.clusters(),
            "authorization": {
                "policies": self.authorization.policies().iter().map(|p| &**p).collect::<Vec<_>>(),
                "attachments": self.authorization.attachments(),
            },
            "pod_path": self.pod_path,
            "workloads": self.workloads_json(),
            "authorities": self.authorities_json(),
            "dns_targets": *self.dns_targets,
            "hbone_peer_sans": self.hbone_peer_sans.as_deref().map(|m| m.iter().map(ToString::to_string).collect::<Vec<_>>()),
            "warnings": *self.warnings,
        });
        if !self.telemetry.is_default() {
            out["telemetry"] = serde_json::to_value(&*self.telemetry).unwrap_or_default();
        }
        out
    }
}
