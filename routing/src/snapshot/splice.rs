//! A snapshot made from another by replacing, adding or removing whole services (an xDS push
//! that changed a few services' clusters, assignments or chains): the per-service tables get
//! the spliced services' entries, the host index has its indexes moved and the added services'
//! names put in (made again when a name is shared), the VIP index is made again over the
//! services' order (a service added or removed moves the indexes after it), the pod index (by
//! name) has
//! the spliced services' entries moved, and every table a service does not feed
//! (authorization aside, see [`Snapshot::with_services`]) is shared.

use super::{ByHost, ByVip, Snapshot};
use crate::model::{DestinationRule, Endpoint, Service, VirtualService};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// A service's endpoints as a snapshot holds them.
type Endpoints = Arc<[Arc<Endpoint>]>;

/// One service of a snapshot replaced, added (`new` for a host it does not have) or removed
/// (`new: None`).
#[derive(Debug)]
pub(crate) struct ServiceSplice {
    /// The service's FQDN.
    pub(crate) host: String,
    pub(crate) new: Option<SplicedService>,
}

/// What a service gives a snapshot, as the xDS assembly hands it to the builder: the service
/// (addressable as pods: not route-only), its endpoints, its one VirtualService and its one
/// DestinationRule, each naming the service's host alone.
#[derive(Debug)]
pub(crate) struct SplicedService {
    pub(crate) service: Service,
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
    pub(crate) virtual_service: Option<Arc<VirtualService>>,
    pub(crate) destination_rule: Option<Arc<DestinationRule>>,
}

impl Snapshot {
    /// This snapshot with `splices` applied, as [`crate::SnapshotBuilder`] would build it from
    /// the xDS assembly's services (in host order, each with at most one VirtualService and
    /// one DestinationRule of its own host, no explicit aliases) with those services changed:
    /// the spliced services' clusters are built over their endpoints (`now` as in
    /// [`crate::SnapshotBuilder::build_at`]; the caller carries state over), their routes and
    /// rules placed in host order, the host and VIP indexes made again (a service added or
    /// removed moves the ones after it), their pods' entries moved. `authorization` replaces
    /// the snapshot's when given. Warnings, workloads, authorities and the rest are shared: the
    /// caller vouches that the splice does not change them. A new version.
    ///
    /// `None` when the snapshot is not one the xDS assembly made (services, routes or rules out
    /// of host order, a VirtualService of several hosts or with TCP routes next to a spliced
    /// one), or a splice does not fit (a host twice, a service of another host).
    pub(crate) fn with_services(
        &self,
        mut splices: Vec<ServiceSplice>,
        authorization: Option<crate::authz::Authorization>,
        now: Instant,
    ) -> Option<Snapshot> {
        splices.sort_by(|a, b| a.host.cmp(&b.host));
        // Kept as long as the snapshot: without the spare capacity the assembly left.
        for s in &mut splices {
            let vs = s.new.as_mut().and_then(|n| n.virtual_service.as_mut());
            if let Some(vs) = vs.and_then(Arc::get_mut) {
                vs.http.shrink_to_fit();
                vs.tcp.shrink_to_fit();
            }
        }
        if splices.windows(2).any(|w| w[0].host == w[1].host)
            || splices
                .iter()
                .any(|s| s.new.as_ref().is_some_and(|n| !fits(&s.host, n)))
        {
            return None;
        }
        let touched: HashSet<&str> = splices.iter().map(|s| s.host.as_str()).collect();
        let virtual_services = spliced_list(
            &self.virtual_services,
            |v| single_host(&v.hosts),
            &touched,
            splices.iter().filter_map(|s| {
                let vs = s.new.as_ref()?.virtual_service.as_ref()?;
                Some((s.host.as_str(), vs.clone()))
            }),
        )?;
        // TCP routes are not spliced: neither the old nor the new service has any.
        if self.tcp_routes.keys().any(|h| touched.contains(h.as_str()))
            || virtual_services
                .iter()
                .any(|v| touched.contains(v.hosts[0].as_str()) && !v.tcp.is_empty())
        {
            return None;
        }
        let destination_rules = spliced_list(
            &self.destination_rules,
            |d| Some(d.host.as_str()),
            &touched,
            splices.iter().filter_map(|s| {
                let dr = s.new.as_ref()?.destination_rule.as_ref()?;
                Some((s.host.as_str(), dr.clone()))
            }),
        )?;

        // The services in host order; of each spliced one, its endpoints before and after.
        let count = self.services.len() + splices.len();
        let mut services: Vec<Service> = Vec::with_capacity(count);
        let mut endpoints: Vec<Endpoints> = Vec::with_capacity(count);
        let mut repoint: Vec<(Arc<str>, Endpoints, Endpoints)> = Vec::with_capacity(splices.len());
        let mut clusters = self.clusters.clone();
        let mut routes = self.routes.clone();
        let mut pending = splices.into_iter().peekable();
        // Old index → new (`usize::MAX`: gone), and the new indexes of services added.
        let mut remap = vec![usize::MAX; self.services.len()];
        let mut added: Vec<usize> = Vec::new();
        let mut place = |s: ServiceSplice,
                         old: Option<&Endpoints>,
                         services: &mut Vec<Service>,
                         endpoints: &mut Vec<Endpoints>| {
            clusters.remove(s.host.as_str());
            routes.remove(s.host.as_str());
            // One string for the service's clusters, its route table and its pod entries.
            let host: Arc<str> = Arc::from(s.host.as_str());
            let old = old.cloned().unwrap_or_else(|| Arc::new([]));
            let Some(new) = s.new else {
                repoint.push((host, old, Arc::new([])));
                return;
            };
            // The one rule of its host (`fits`), as the builder finds it.
            let dr = new.destination_rule.as_deref();
            let built =
                crate::builder::service_clusters(&new.service, &host, &new.endpoints, dr, now);
            clusters.insert(host.clone(), Arc::new(built));
            if let Some(vs) = new.virtual_service.filter(|v| !v.http.is_empty()) {
                routes.insert(host.clone(), super::route_table(&vs));
            }
            let list: Endpoints = new.endpoints.into();
            repoint.push((host, old, list.clone()));
            services.push(new.service);
            endpoints.push(list);
        };
        for (si, s) in self.services.iter().enumerate() {
            if si > 0 && self.services[si - 1].hostname >= s.hostname {
                return None;
            }
            while let Some(p) = pending.next_if(|p| p.host < s.hostname) {
                let at = services.len();
                place(p, None, &mut services, &mut endpoints);
                added.extend((services.len() > at).then_some(at));
            }
            if let Some(p) = pending.next_if(|p| p.host == s.hostname) {
                let at = services.len();
                place(p, Some(&self.endpoints[si]), &mut services, &mut endpoints);
                if services.len() > at {
                    remap[si] = at;
                }
                continue;
            }
            remap[si] = services.len();
            services.push(s.clone());
            endpoints.push(self.endpoints[si].clone());
        }
        for p in pending {
            let at = services.len();
            place(p, None, &mut services, &mut endpoints);
            added.extend((services.len() > at).then_some(at));
        }

        let mut out = self.shared();
        let moved = moved_by_host(&self.by_host, &services, &remap, &added);
        out.by_host = Arc::new(moved.unwrap_or_else(|| by_host(&services)));
        out.by_vip = Arc::new(by_vip(&services));
        // The pod index names services: only the spliced ones' entries move. Its lists are in
        // service order, which is host order here.
        let mut by_pod_ip = self.by_pod_ip.clone();
        for (host, old, new) in &repoint {
            super::patch::repoint_pods(&mut by_pod_ip, host, old, new, |h| h <= &**host);
        }
        out.by_pod_ip = by_pod_ip;
        out.services = Arc::new(services);
        out.endpoints = endpoints.into_iter().collect();
        out.clusters = clusters;
        out.routes = routes;
        out.virtual_services = Arc::new(virtual_services);
        out.destination_rules = Arc::new(destination_rules);
        if let Some(a) = authorization {
            out.authorization = Arc::new(a);
        }
        Some(out)
    }
}

/// A spliced service of `host` names that host, and so do its route and rule.
fn fits(host: &str, new: &SplicedService) -> bool {
    new.service.hostname == host
        && new
            .virtual_service
            .as_ref()
            .is_none_or(|v| single_host(&v.hosts) == Some(host))
        && new.destination_rule.as_ref().is_none_or(|d| d.host == host)
}

fn single_host(hosts: &[String]) -> Option<&str> {
    match hosts {
        [h] => Some(h.as_str()),
        _ => None,
    }
}

/// `list` (in host order, one item per host) without the items of `touched` hosts and with
/// `new` ones (in host order) in their places; `None` when `list` is not in host order.
fn spliced_list<'a, T: Clone + 'a>(
    list: &[T],
    host: impl Fn(&T) -> Option<&str>,
    touched: &HashSet<&str>,
    new: impl Iterator<Item = (&'a str, T)>,
) -> Option<Vec<T>> {
    let mut new = new.peekable();
    let mut out = Vec::with_capacity(list.len() + touched.len());
    let mut last: Option<&str> = None;
    for item in list {
        let h = host(item)?;
        if last.is_some_and(|l| l >= h) {
            return None;
        }
        last = Some(h);
        while let Some((_, n)) = new.next_if(|(nh, _)| *nh < h) {
            out.push(n);
        }
        if !touched.contains(h) {
            out.push(item.clone());
        }
    }
    out.extend(new.map(|(_, n)| n));
    out.shrink_to_fit();
    Some(out)
}

/// FQDNs and their Kubernetes short names → service index, as the builder makes them (the
/// first service of a short name wins).
fn by_host(services: &[Service]) -> ByHost {
    let mut by_host = ByHost::with_capacity_and_hasher(services.len() * 4, Default::default());
    for (si, s) in services.iter().enumerate() {
        by_host.insert(Arc::from(s.hostname.as_str()), si);
    }
    for (si, s) in services.iter().enumerate() {
        for alias in crate::hosts::kube_aliases(&s.hostname) {
            by_host.entry(Arc::from(alias)).or_insert(si);
        }
    }
    by_host
}

/// What [`by_host`] makes of `services`, from the host index `old` of the services before the
/// splice (`remap`: old index → new, `usize::MAX` for a service gone; `added`: new indexes of
/// services added): its names shared, their indexes moved, the added services' names put in.
/// `None` when a name may have another owner than before: an added name the table has, or a
/// gone service's name that a remaining FQDN starts with, followed by a dot (a short name is
/// every such FQDN's, and the first of them in host order owns it).
fn moved_by_host(
    old: &ByHost,
    services: &[Service],
    remap: &[usize],
    added: &[usize],
) -> Option<ByHost> {
    let mut moved = old.clone();
    let mut gone: Vec<Arc<str>> = Vec::new();
    moved.retain(|name, si| match remap.get(*si) {
        Some(&to) if to != usize::MAX => {
            *si = to;
            true
        }
        _ => {
            gone.push(name.clone());
            false
        }
    });
    for name in gone {
        let prefix = format!("{name}.");
        let i = services.partition_point(|s| s.hostname.as_str() < prefix.as_str());
        if services
            .get(i)
            .is_some_and(|s| s.hostname.starts_with(&prefix))
        {
            return None;
        }
    }
    for &si in added {
        let s = &services[si];
        let names =
            std::iter::once(s.hostname.clone()).chain(crate::hosts::kube_aliases(&s.hostname));
        for name in names {
            match moved.entry(Arc::from(name)) {
                std::collections::hash_map::Entry::Occupied(_) => return None,
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(si);
                }
            }
        }
    }
    Some(moved)
}

fn by_vip(services: &[Service]) -> ByVip {
    let mut by_vip = ByVip::with_capacity_and_hasher(services.len(), Default::default());
    for (si, s) in services.iter().enumerate() {
        for (pi, port) in s.ports.iter().enumerate() {
            for vip in &s.vips {
                by_vip
                    .entry(SocketAddr::new(*vip, port.number))
                    .or_insert((si, pi));
            }
        }
    }
    by_vip
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(host: &str) -> Service {
        Service {
            hostname: host.into(),
            namespace: String::new(),
            vips: Vec::new(),
            ports: Vec::new(),
        }
    }

    /// The services of `hosts`, in host order.
    fn services(hosts: &[&str]) -> Vec<Service> {
        let mut hosts = hosts.to_vec();
        hosts.sort();
        hosts.into_iter().map(service).collect()
    }

    /// `moved_by_host` from `before` to `after` (the old index → new, the added ones).
    fn moved(before: &[Service], after: &[Service]) -> Option<ByHost> {
        moved_from(&by_host(before), before, after)
    }

    fn moved_from(old: &ByHost, before: &[Service], after: &[Service]) -> Option<ByHost> {
        let at = |list: &[Service], h: &str| list.iter().position(|s| s.hostname == h);
        let remap: Vec<usize> = before
            .iter()
            .map(|s| at(after, &s.hostname).unwrap_or(usize::MAX))
            .collect();
        let added: Vec<usize> = (0..after.len())
            .filter(|&i| at(before, &after[i].hostname).is_none())
            .collect();
        moved_by_host(old, after, &remap, &added)
    }

    const A: &str = "reviews.a.svc.cluster.local";
    const B: &str = "ratings.a.svc.cluster.local";
    const C: &str = "details.b.svc.cluster.local";

    /// Services added and gone with names of their own: the old table moved, equal to one made
    /// again, and its names the old table's allocations.
    #[test]
    fn names_of_their_own_are_moved() {
        let before = services(&[A, B, "external.example.com"]);
        let after = services(&[A, C, "external.example.com"]);
        let old = by_host(&before);
        let m = moved_from(&old, &before, &after).expect("moved");
        assert_eq!(m, by_host(&after));
        // The kept names are the old table's allocations, not new strings.
        let (kept, _) = m.get_key_value(A).unwrap();
        let (was, _) = old.get_key_value(A).unwrap();
        assert!(Arc::ptr_eq(kept, was));
        assert_eq!(
            m["reviews"],
            after.iter().position(|s| s.hostname == A).unwrap()
        );
        assert!(!m.contains_key("ratings"));
    }

    /// A short name two FQDNs share (`reviews` of two namespaces): made again, whether the
    /// second comes or the first goes, so that the first in host order owns it.
    #[test]
    fn a_shared_short_name_is_made_again() {
        let other = "reviews.b.svc.cluster.local";
        assert_eq!(moved(&services(&[A]), &services(&[A, other])), None);
        assert_eq!(moved(&services(&[A, other]), &services(&[other])), None);
        // An FQDN that is another's short name.
        assert_eq!(moved(&services(&[A]), &services(&[A, "reviews"])), None);
        assert_eq!(moved(&services(&["reviews", A]), &services(&[A])), None);
    }
}
