//! A push that changed a few services — their clusters, assignments or `main_internal` chains,
//! services added or removed (a new service arrives as its clusters and assignments, then a
//! `main_internal` with its chains) — without assembling every service: the services those
//! changes feed are assembled again as the full assembly would, and spliced into the published
//! snapshot ([`Snapshot::with_services`]); the other services, their clusters and tables are
//! shared. The state is still read whole (each resource found by digest) and `main_internal`
//! translated, but no other service is visited. Anything the splice could not reproduce
//! exactly as a translation from scratch would — a diagnostic on a changed piece or service,
//! a changed matcher for bound pods or authorities, a STATIC, DNS or `outbound|…` cluster,
//! other listeners or route configurations, options — falls back to the full translation, so
//! the result is always a translation from scratch's (property-tested with the rest of the
//! translator).

use super::eds::Last;
use super::*;
use crate::snapshot::{ServiceSplice, SplicedService};
use crate::xds::pieces::{Decoded, Memo};
use std::collections::HashMap;
use std::time::Instant;

mod changed;
use changed::{changed_pieces, spliceable};

/// The translation of `decoded` as a splice of the last one's published snapshot, when only a
/// few services changed; `None` otherwise (translate in full). On success the services' memo
/// describes the new snapshot (and the caller makes it the last translation), and the flag
/// says whether `decoded`'s clusters and assignments were found in name order.
pub(crate) fn patch(
    l: &Last,
    memo: &mut Memo,
    decoded: &Decoded,
    rest: u128,
    options: &TranslateOptions,
) -> Option<(Translation, bool)> {
    let live = l.published.clone()?;
    if !l.same_options(options) || rest != l.rest || memo.services.main.is_none() {
        return None;
    }
    let mut changes = changed_pieces(l, decoded)?;
    let sorted = changes.sorted;

    // `main_internal` read again (chains found by digest), with the clusters' names.
    let rcs: BTreeMap<&str, &RouteConfiguration> = decoded
        .resources
        .routes
        .iter()
        .map(|r| (&*r.name, r))
        .collect();
    let known: ClusterNames<'_> = decoded.clusters.iter().map(|c| Named(&c.name)).collect();
    let mut rds = crate::xds::Names::new();
    let mut diag = Diag::default();
    let main = listener::translate(
        &decoded.listeners,
        &rcs,
        &known,
        (
            !changes.names_changed,
            &changes.added.iter().map(String::as_str).collect::<Vec<_>>(),
        ),
        &mut memo.listener,
        &mut rds,
        &mut diag,
    );
    let old = memo.services.main.as_ref()?;
    let (m, o) = (&main.matched, &old.main.matched);
    if !diag.rejections.is_empty()
        || diag.warnings != old.warnings
        || rds != old.rds
        || main.direct_path != old.main.direct_path
        || main.telemetry != old.main.telemetry
        || (!Arc::ptr_eq(m, o) && (m.pods != o.pods || m.authorities != o.authorities))
    {
        return None;
    }
    for direct in ["direct-http", "direct-tcp"] {
        let same = match (main.authz.get(direct), old.main.authz.get(direct)) {
            (Some(a), Some(b)) => same_authz(a, b),
            (None, None) => true,
            _ => false,
        };
        if !same {
            return None;
        }
    }
    changed_chains(&main.chains, &old.main.chains, &mut changes.hosts)?;
    if !Arc::ptr_eq(m, o) {
        changed_vips(&m.vips, &o.vips, &mut changes.hosts);
    }
    let hosts = changes.hosts;
    if hosts.is_empty() {
        return None;
    }
    // Hash keys the routes give clusters: the changed services' clusters take theirs when built
    // again; another service's cluster given another key (a route to another service changed)
    // is not followed.
    let (hash, old_hash) = (first_hash_keys(&main), first_hash_keys(&old.main));
    let moved = hash
        .iter()
        .filter(|(c, k)| old_hash.get(*c) != Some(*k))
        .chain(old_hash.iter().filter(|(c, _)| !hash.contains_key(*c)));
    for (cluster, _) in moved {
        if !hosts.contains(host_of(cluster)?) {
            return None;
        }
    }
    if m.authorities
        .keys()
        .any(|(h, _)| hosts.contains(h.as_str()))
    {
        return None;
    }

    // The changed services assembled again, as the full assembly assembles them.
    let mut accs = accumulate(&hosts, &main, decoded, &hash)?;
    let mut splices = Vec::with_capacity(hosts.len());
    let mut rebuilt = Vec::with_capacity(hosts.len());
    let bound = |ip: &IpAddr| {
        live.workloads.contains_key(ip)
            || live.known_workloads.contains_key(ip)
            || m.pods.contains_key(ip)
    };
    for host in &hosts {
        let was = memo.services.services.get(host.as_str());
        if let Some(r) = was {
            // What the old service reported is in the warnings the new snapshot shares.
            let complete = r.key.assignments.iter().all(Option::is_some);
            if !r.out.diag.is_empty()
                || !complete
                || path_warns(&r.key.acc.chains)
                || r.out.endpoints.iter().any(|e| bound(&e.address))
            {
                return None;
            }
        } else if live.service_by_host(host).is_some() {
            // A service the memo does not keep (its endpoints read at assembly).
            return None;
        }
        let Some(a) = accs.remove(host.as_str()) else {
            splices.push(ServiceSplice {
                host: host.to_string(),
                new: None,
            });
            continue;
        };
        let mine: Vec<(&str, &ServiceCluster)> =
            a.clusters.iter().map(|(n, c)| (*n, &**c)).collect();
        let pieces: BTreeMap<&str, &Arc<ClusterPiece>> =
            a.pieces.iter().map(|p| (&*p.name, *p)).collect();
        let clas: BTreeMap<&str, &Arc<AssignmentPiece>> =
            a.assignments.iter().map(|p| (&*p.name, *p)).collect();
        let view = key_view(&a.acc, &mine, &pieces, &clas, options)?;
        let mut pods: Pods<'_> = BTreeMap::new();
        for (name, sc) in &mine {
            let list = match &sc.source {
                EndpointSource::Eds(eds) => clas.get(&**eds)?.pods.as_slice(),
                EndpointSource::None => &[][..],
                EndpointSource::Inline(_) | EndpointSource::Dns(_) => return None,
            };
            pods.insert(name, Cow::Borrowed(list));
        }
        let out = match was.filter(|r| view.matches(&r.key)) {
            Some(r) => r.out.clone(),
            None => Arc::new(build_service(host, &a.acc, &mine, &pods, options)),
        };
        if !out.diag.is_empty()
            || !a.diag.is_empty()
            || out.endpoints.iter().any(|e| bound(&e.address))
        {
            return None;
        }
        let key = view.owned();
        splices.push(ServiceSplice {
            host: host.to_string(),
            new: Some(SplicedService {
                service: out.service.clone(),
                endpoints: out.endpoints.clone(),
                virtual_service: out.virtual_service(a.acc).map(Arc::new),
                destination_rule: out.destination_rule.clone(),
            }),
        });
        rebuilt.push((host.to_string(), key, out));
    }

    // Authorization: made again when a chain's changed (a service's chains came or went).
    let authz_unchanged = main.authz.len() == old.main.authz.len()
        && main
            .authz
            .iter()
            .zip(&old.main.authz)
            .all(|((n, a), (o, b))| n == o && same_authz(a, b));
    let authorization = (!authz_unchanged).then(|| {
        access::authorization_patched(
            &live.authorization,
            &old.main.authz,
            &main.authz,
            same_authz,
        )
        .unwrap_or_else(|| access::authorization(&main.authz))
    });
    let snapshot = live.with_services(splices, authorization, Instant::now())?;

    let subscriptions = if changes.names_changed || changes.eds_changed {
        // Clusters only added (none asking for another assignment): the last set, grown.
        let endpoints = l.grown_endpoints(decoded).unwrap_or_else(|| {
            decoded
                .clusters
                .iter()
                .filter_map(|c| c.eds.as_deref().map(str::to_string))
                .collect()
        });
        let routes = rds.clone();
        Arc::new(super::super::Subscriptions { endpoints, routes })
    } else {
        l.subscriptions.clone()
    };

    // What the memo remembers for the next translation.
    let services = &mut memo.services;
    for host in &hosts {
        services.services.remove(host.as_str());
    }
    services.rebuilt(snapshot.version(), rebuilt);
    services.main = Some(routes::MainState {
        main,
        warnings: diag.warnings,
        rds,
    });
    let t = Translation {
        snapshot,
        warnings: l.warnings.clone(),
        dns: l.dns_targets.clone(),
        subscriptions,
    };
    Some((t, sorted))
}

/// The host of a cluster or chain named as istiod names them.
fn host_of(name: &str) -> Option<&str> {
    ClusterName::parse(name)?;
    name.rsplit_once('|').map(|(_, h)| h)
}

/// The services of the chains that differ between two `main_internal`s (by name: changed,
/// added, removed). `None` when one is not a service chain.
fn changed_chains(
    new: &BTreeMap<String, Arc<ChainPiece>>,
    old: &BTreeMap<String, Arc<ChainPiece>>,
    hosts: &mut BTreeSet<String>,
) -> Option<()> {
    let service = |p: &ChainPiece| match &p.role {
        ChainRole::Service { cluster, .. } => Some(cluster.host().to_string()),
        _ => None,
    };
    let (mut a, mut b) = (new.iter().peekable(), old.iter().peekable());
    loop {
        let changed = match (a.peek(), b.peek()) {
            (None, None) => return Some(()),
            (Some((na, pa)), Some((nb, pb))) if na == nb => {
                let (pa, pb) = (*pa, *pb);
                a.next();
                b.next();
                if Arc::ptr_eq(pa, pb) {
                    continue;
                }
                hosts.insert(service(pb)?);
                pa
            }
            (Some((na, _)), Some((nb, _))) if na > nb => b.next()?.1,
            (Some(_), _) => a.next()?.1,
            (None, Some(_)) => b.next()?.1,
        };
        hosts.insert(service(changed)?);
    }
}

/// The services of the chains of the (VIP, port) entries that differ between two matchers.
fn changed_vips(
    new: &BTreeMap<(IpAddr, u16), BTreeSet<String>>,
    old: &BTreeMap<(IpAddr, u16), BTreeSet<String>>,
    hosts: &mut BTreeSet<String>,
) {
    let mut add = |chains: &BTreeSet<String>| {
        hosts.extend(chains.iter().filter_map(|c| host_of(c)).map(str::to_string));
    };
    let (mut a, mut b) = (new.iter().peekable(), old.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return,
            (Some((ka, ca)), Some((kb, cb))) if ka == kb => {
                if ca != cb {
                    add(ca);
                    add(cb);
                }
                a.next();
                b.next();
            }
            (Some((ka, _)), Some((kb, _))) if ka > kb => add(b.next().expect("peeked").1),
            (Some(_), _) => add(a.next().expect("peeked").1),
            (None, Some(_)) => add(b.next().expect("peeked").1),
        }
    }
}

/// The hash key each cluster takes from the routes (the first route's, in chain order, as
/// [`take_hash_key`] leaves it).
fn first_hash_keys(main: &listener::MainListener) -> HashMap<&str, &HashKey> {
    let mut out = HashMap::new();
    for piece in main.chains.values() {
        if let ChainRole::Service {
            routes: Some(r), ..
        } = &piece.role
        {
            for (cluster, key) in &r.hash_keys {
                out.entry(cluster.as_str()).or_insert(key);
            }
        }
    }
    out
}

/// Whether two chains' authorization is the same (the same, or both restricting nothing).
fn same_authz(a: &Arc<access::ChainAuthz>, b: &Arc<access::ChainAuthz>) -> bool {
    Arc::ptr_eq(a, b) || (routes::unrestricted(a) && routes::unrestricted(b) && a.http == b.http)
}

/// Whether a service's chains report anything at assembly (paths that differ on a port, what
/// their routes found).
fn path_warns(chains: &[Arc<ChainPiece>]) -> bool {
    let mut acc = ServiceAcc::default();
    let mut diag = Diag::default();
    for c in chains {
        add_chain(&mut acc, &c.name, c, &mut diag, &mut Vec::new());
    }
    !diag.is_empty()
}

/// One changed service as the full assembly accumulates it.
#[derive(Default)]
struct Acc<'a> {
    acc: ServiceAcc,
    /// Its clusters by name, with the hash keys the routes give them.
    clusters: Vec<(&'a str, Cow<'a, ServiceCluster>)>,
    pieces: Vec<&'a Arc<ClusterPiece>>,
    assignments: Vec<&'a Arc<AssignmentPiece>>,
    /// What its chains report at assembly.
    diag: Diag,
}

/// The accumulators of the services of `hosts` that the state has (a host without one is
/// gone), made as the full assembly makes them: VIPs and ports from the matcher, namespace and
/// ports from the clusters (in name order), then the chains (in name order). `None` when a
/// cluster of theirs is not one a splice can follow.
fn accumulate<'a>(
    hosts: &BTreeSet<String>,
    main: &listener::MainListener,
    decoded: &'a Decoded,
    hash: &HashMap<&str, &HashKey>,
) -> Option<HashMap<String, Acc<'a>>> {
    let mut out: HashMap<String, Acc<'a>> = HashMap::new();
    fn entry<'m, 'a>(out: &'m mut HashMap<String, Acc<'a>>, host: &str) -> &'m mut Acc<'a> {
        out.entry(host.to_string()).or_default()
    }
    let touched = |name: &str| {
        name.rsplit_once('|')
            .is_some_and(|(_, h)| hosts.contains(h))
    };
    for ((ip, port), chains) in &main.matched.vips {
        for chain in chains.iter().filter(|c| touched(c)) {
            let Some(host) = host_of(chain) else {
                continue;
            };
            entry(&mut out, host).acc.add_vip(*ip, *port, chain);
        }
    }
    let mut clusters: Vec<(&'a Arc<ClusterPiece>, &'a ServiceCluster)> = Vec::new();
    for c in &decoded.clusters {
        if let ClusterRole::Service { cluster, .. } = &c.role {
            if hosts.contains(cluster.name.host()) {
                spliceable(c)?;
                clusters.push((c, cluster));
            }
        }
    }
    clusters.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    for (piece, sc) in clusters {
        let a = entry(&mut out, sc.name.host());
        if a.acc.namespace.is_none() {
            a.acc.namespace.clone_from(&sc.namespace);
        }
        a.acc.ports.entry(sc.name.port).or_default();
        let mut sc = Cow::Borrowed(sc);
        if let Some(key) = hash.get(&*piece.name) {
            take_hash_key(&mut sc, (*key).clone());
        }
        a.clusters.push((&*piece.name, sc));
        a.pieces.push(piece);
    }
    for (chain, piece) in &main.chains {
        if let Some(cn) = routed_chain(piece).filter(|cn| hosts.contains(cn.host())) {
            let a = entry(&mut out, cn.host());
            add_chain(&mut a.acc, chain, piece, &mut a.diag, &mut Vec::new());
        }
    }
    // Their assignments.
    let wanted: HashMap<&str, &str> = out
        .iter()
        .flat_map(|(h, a)| a.pieces.iter().map(move |p| (&*p.name, h.as_str())))
        .collect();
    let mut found: Vec<(String, &'a Arc<AssignmentPiece>)> = Vec::new();
    for a in &decoded.assignments {
        if let Some(h) = wanted.get(&*a.name) {
            found.push((h.to_string(), a));
        }
    }
    for (h, a) in found {
        if let Some(acc) = out.get_mut(&h) {
            acc.assignments.push(a);
        }
    }
    Some(out)
}
