//! A snapshot made from another by replacing some services' endpoints (an EDS push): every
//! table the patch does not touch is shared with the snapshot it came from.

use super::{PodServices, Snapshot};
use crate::model::{DestinationRule, Endpoint, VirtualService};
use crate::shards::Shards;
use std::net::IpAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

/// The new endpoints of one service of a snapshot.
#[derive(Debug)]
pub(crate) struct EndpointsPatch {
    /// The service's FQDN (a service of the snapshot patched).
    pub(crate) host: String,
    /// Addressable as pods (the service is not route-only).
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    /// The service's DestinationRule, which must be the snapshot's first for its host (as a
    /// build finds it; the xDS translation makes one per service, from its own clusters).
    pub(crate) destination_rule: Option<Arc<DestinationRule>>,
}

impl Snapshot {
    /// This snapshot with each patch's service serving its new endpoints: the service's
    /// clusters are built again over them (`now` as in [`crate::SnapshotBuilder::build_at`]; the
    /// caller carries their state over), the pod index is updated for the addresses whose
    /// entries changed, and everything else is shared. A new version. Costs the patched
    /// services' endpoints, the shards and chunks they land in, and one copy of each changed
    /// table's shard or chunk pointers. `None` when a patch names a service this snapshot does
    /// not have.
    pub(crate) fn patched(&self, patches: Vec<EndpointsPatch>, now: Instant) -> Option<Snapshot> {
        // Every table shared, and the three a patch changes changed in place (each table's
        // slots copied once).
        let mut out = self.shared();
        for p in patches {
            // The host index's string for the name: one for the service's indexes and clusters.
            let (host, &si) = self.by_host.get_key_value(p.host.as_str())?;
            let host = host.clone();
            let service = &self.services[si];
            if service.hostname != p.host {
                return None;
            }
            // The pod index: this service's entries out of the old addresses, into the new ones,
            // each address's list kept in service order (as a build from scratch makes it).
            let order = |h: &str| self.by_host.get(h).copied().unwrap_or(usize::MAX);
            repoint_pods(
                &mut out.by_pod_ip,
                &host,
                &self.endpoints[si],
                &p.endpoints,
                |h| order(h) <= si,
            );
            // The service's rule, as a build finds it (the caller's, checked in tests: a scan
            // for the first of its host compares every rule's host, per push).
            let dr = p.destination_rule.as_deref();
            debug_assert_eq!(
                dr,
                self.destination_rules
                    .iter()
                    .find(|d| d.host == service.hostname)
                    .map(|d| &**d)
            );
            let built = crate::builder::service_clusters(service, &host, &p.endpoints, dr, now);
            out.clusters.insert(host, Arc::new(built));
            out.endpoints.set(si, p.endpoints.into());
        }
        Some(out)
    }
}

/// The pod index with service `host`'s entries moved from the addresses of `old` to those of
/// `new` (its endpoints before and after); an entry goes after those of the services `before`
/// it in service order. An address whose entries for `host` are already `new`'s (the same
/// `Arc`s, in order) is left as it is: an EDS push that changes one pod copies the index's
/// shards of that pod's addresses only.
pub(super) fn repoint_pods(
    by_pod_ip: &mut Shards<IpAddr, PodServices>,
    host: &Arc<str>,
    old: &[Arc<Endpoint>],
    new: &[Arc<Endpoint>],
    before: impl Fn(&str) -> bool,
) {
    let mut addresses: Vec<IpAddr> = old.iter().chain(new).map(|e| e.address).collect();
    addresses.sort_unstable();
    addresses.dedup();
    for ip in addresses {
        let wanted = new.iter().filter(|e| e.address == ip);
        let list = by_pod_ip.get(&ip);
        let held = list
            .into_iter()
            .flat_map(|l| l.iter())
            .filter(|(s, _)| s == host)
            .map(|(_, e)| Arc::as_ptr(e));
        if held.eq(wanted.clone().map(Arc::as_ptr)) {
            continue;
        }
        let mut entries: Vec<_> = list
            .into_iter()
            .flat_map(|l| l.iter())
            .filter(|(s, _)| s != host)
            .cloned()
            .collect();
        let at = entries.partition_point(|(s, _)| before(s));
        entries.splice(at..at, wanted.map(|e| (host.clone(), e.clone())));
        if entries.is_empty() {
            by_pod_ip.remove(&ip);
        } else {
            by_pod_ip.insert(ip, entries.into());
        }
    }
}

impl Snapshot {
    /// This snapshot with each VirtualService of `tables` routing its one host instead of the
    /// one that does now (which must be the only one naming that host, with HTTP routes and no
    /// TCP routes); everything else shared. A new version. `None` when one cannot be placed so.
    pub(crate) fn with_routes(&self, tables: Vec<VirtualService>) -> Option<Snapshot> {
        let mut virtual_services = (*self.virtual_services).clone();
        let mut routes = self.routes.clone();
        for mut vs in tables {
            let [host] = vs.hosts.as_slice() else {
                return None;
            };
            let mut naming = virtual_services
                .iter()
                .enumerate()
                .filter(|(_, v)| v.hosts.iter().any(|h| h == host));
            let (i, old) = naming.next()?;
            if naming.next().is_some()
                || old.hosts.len() != 1
                || old.http.is_empty()
                || !old.tcp.is_empty()
                || vs.http.is_empty()
                || !vs.tcp.is_empty()
            {
                return None;
            }
            vs.http.shrink_to_fit();
            routes.insert(Arc::from(host.as_str()), super::route_table(&vs));
            virtual_services[i] = Arc::new(vs);
        }
        let mut out = self.shared();
        out.routes = routes;
        out.virtual_services = Arc::new(virtual_services);
        Some(out)
    }

    /// A new version sharing every table with this one.
    pub(super) fn shared(&self) -> Snapshot {
        Snapshot {
            version: crate::builder::next_version(),
            services: self.services.clone(),
            endpoints: self.endpoints.clone(),
            by_host: self.by_host.clone(),
            by_vip: self.by_vip.clone(),
            by_pod_ip: self.by_pod_ip.clone(),
            routes: self.routes.clone(),
            tcp_routes: self.tcp_routes.clone(),
            virtual_services: self.virtual_services.clone(),
            destination_rules: self.destination_rules.clone(),
            clusters: self.clusters.clone(),
            warnings: self.warnings.clone(),
            authorization: self.authorization.clone(),
            pod_path: self.pod_path,
            workloads: self.workloads.clone(),
            known_workloads: self.known_workloads.clone(),
            by_authority: self.by_authority.clone(),
            hbone_peer_sans: self.hbone_peer_sans.clone(),
            dns_targets: self.dns_targets.clone(),
            telemetry: self.telemetry.clone(),
            runtime: OnceLock::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ip: u32) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            address: IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + ip)),
            labels: Default::default(),
            workload: Arc::new(crate::model::Workload::new(
                format!("pod-{ip}").into(),
                "default".into(),
                "sa".into(),
                "".into(),
            )),
            transport: Default::default(),
        })
    }

    /// One pod of a service replaced: the index's entries move for its old and new address
    /// only; the shards of the nine pods that stayed are still shared with the index before.
    #[test]
    fn moving_one_pod_copies_the_shards_of_its_addresses_only() {
        let host: Arc<str> = "reviews.default.svc.cluster.local".into();
        let other: Arc<str> = "other.default.svc.cluster.local".into();
        let old: Vec<Arc<Endpoint>> = (0..10).map(pod).collect();
        let index: Shards<IpAddr, PodServices> = (100..5_000)
            .map(|i| (pod(i).address, vec![(other.clone(), pod(i))].into()))
            .chain(
                old.iter()
                    .map(|e| (e.address, vec![(host.clone(), e.clone())].into())),
            )
            .collect();
        let mut new = old.clone();
        new[3] = pod(50);
        let mut moved = index.clone();
        repoint_pods(&mut moved, &host, &old, &new, |h| h <= &*host);
        // What was copied: the shards of 10.0.0.3 and 10.0.0.50 (one, should they share it).
        let per_shard = index.len() / index.shard_count();
        let copied = moved.unshared_values_mut().count();
        assert!(copied <= 3 * per_shard, "{copied} entries copied");
        assert!(moved.get(&old[3].address).is_none());
        let at_new = moved.get(&new[3].address).unwrap();
        assert!(at_new.len() == 1 && Arc::ptr_eq(&at_new[0].1, &new[3]));
        for e in &old[..3] {
            assert!(Arc::ptr_eq(&moved.get(&e.address).unwrap()[0].1, e));
        }
    }
}
