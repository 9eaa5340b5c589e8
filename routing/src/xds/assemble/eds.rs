//! An EDS-only push without a pass over every service: when the only resources that changed
//! since the last translation are assignments, and the published snapshot is that
//! translation's, the services those assignments feed are built again and the published
//! snapshot is patched with their endpoints and clusters ([`Snapshot::patched`]); every other
//! service, route table and index is shared. Anything the patch could not reproduce exactly as
//! a translation from scratch would (a changed diagnostic, port, rule or bound workload, an
//! `outbound|…` cluster, options that changed) falls back to the full translation, so the result
//! is always the same (property-tested with the rest of the translator).

use super::*;
use crate::snapshot::EndpointsPatch;
use crate::xds::pieces::{name_key, Decoded, Memo};
use crate::xds::{Encoded, Warning};
use std::collections::{HashMap, HashSet};
use std::time::Instant;
mod grown;
pub(crate) use grown::routes_asked;

/// What the last full or patched translation was made from and gave.
#[derive(Debug)]
pub(crate) struct Last {
    /// The version of its snapshot.
    version: u64,
    /// That snapshot, once published (carried over and live): what a patch starts from.
    pub(super) published: Option<Arc<Snapshot>>,
    /// Whether it was a patch.
    patched: bool,
    trust_domain: String,
    dns: crate::dns::DnsAnswers,
    /// [`others_digest`] of its resources: all but clusters and assignments (`None`: not known),
    /// and all but those and the `main_internal` listener.
    others: Option<u128>,
    pub(super) rest: u128,
    /// Its listeners but `main_internal` (`None` in its place), and its route configurations:
    /// what a route push read alone reads with the new `main_internal`.
    pub(super) listeners: Vec<Option<ShallowListener>>,
    pub(super) route_configurations: Vec<RouteConfiguration>,
    clusters: Vec<Arc<ClusterPiece>>,
    assignments: Vec<Arc<AssignmentPiece>>,
    /// Whether the names of `clusters` and of `assignments` strictly ascend (as the xDS client
    /// orders a state): then what a state changed is found by walking both lists side by side
    /// ([`super::aligned`]).
    pub(super) sorted: bool,
    /// Where each assignment is in `assignments`, by [`name_key`]: built when first asked (a
    /// state not in name order), not by every translation.
    at: std::cell::OnceCell<HashMap<u128, usize, crate::xds::FastHash>>,
    /// Assignments a patch cannot follow: used by another cluster than the one of their name,
    /// by two clusters, or by an `outbound|…` cluster (whose endpoints depend on its socket
    /// matches).
    irregular: HashSet<String>,
    pub(super) warnings: Vec<Warning>,
    pub(super) dns_targets: Vec<crate::dns::DnsTarget>,
    pub(super) subscriptions: Arc<crate::xds::Subscriptions>,
}

/// Digests over the resources that are neither clusters nor assignments (listeners, route
/// configurations), each with its type and name, in order: all of them, and all but the
/// `main_internal` listener (which a route patch reads itself). The first is
/// [`with_main`]`(rest, main_internal's bytes)`, so that a patch that read `main_internal`
/// alone knows it too.
pub(crate) fn others_digest(resources: &[Encoded<'_>]) -> (u128, u128) {
    let mut rest = xxhash_rust::xxh3::Xxh3::new();
    let mut main = None;
    for r in resources
        .iter()
        .filter(|r| r.type_url != CLUSTER_TYPE && r.type_url != ENDPOINT_TYPE)
    {
        if r.type_url == LISTENER_TYPE && **r.name == *listener::MAIN_INTERNAL {
            main = Some(&r.value[..]);
            // Where it stands among the others.
            rest.update(b"main_internal");
            continue;
        }
        for part in [r.type_url.as_bytes(), r.name.as_bytes(), &r.value[..]] {
            rest.update(&(part.len() as u64).to_le_bytes());
            rest.update(part);
        }
    }
    let rest = rest.digest128();
    (with_main(rest, main), rest)
}

/// The digest of all the resources but clusters and assignments, from that of all but
/// `main_internal` and `main_internal`'s bytes (if the state has it).
pub(crate) fn with_main(rest: u128, main: Option<&[u8]>) -> u128 {
    with_main_digest(rest, main.map(crate::xds::pieces::digest))
}

/// [`with_main`] from the [`digest`](crate::xds::pieces::digest) of `main_internal`'s bytes.
pub(crate) fn with_main_digest(rest: u128, main: Option<u128>) -> u128 {
    let mut all = xxhash_rust::xxh3::Xxh3::new();
    all.update(&rest.to_le_bytes());
    if let Some(main) = main {
        all.update(&main.to_le_bytes());
    }
    all.digest128()
}

impl Last {
    pub(crate) fn new(
        t: &Translation,
        decoded: Decoded,
        others: (u128, u128),
        options: &TranslateOptions,
    ) -> Last {
        let mut used = HashSet::new();
        let mut irregular = HashSet::new();
        for c in &decoded.clusters {
            if let ClusterRole::Service { cluster, matches } = &c.role {
                if let EndpointSource::Eds(eds) = &cluster.source {
                    if !used.insert(&**eds) || **eds != *c.name || matches.is_some() {
                        irregular.insert(eds.to_string());
                    }
                }
            }
        }
        let sorted = super::aligned::in_name_order(&decoded);
        Self::with(t, decoded, others, options, (irregular, sorted))
    }

    /// The last translation, `t` a splice of `from`'s ([`super::services::patch`]): a splice
    /// changes only clusters that use their own assignment (not irregular), so `from`'s
    /// irregular assignments are this one's; `sorted` as the splice found it.
    pub(crate) fn spliced(
        t: &Translation,
        decoded: Decoded,
        others: (u128, u128),
        options: &TranslateOptions,
        (from, sorted): (&Last, bool),
    ) -> Last {
        let sorted = sorted || super::aligned::in_name_order(&decoded);
        Self::with(
            t,
            decoded,
            others,
            options,
            (from.irregular.clone(), sorted),
        )
    }

    fn with(
        t: &Translation,
        decoded: Decoded,
        (others, rest): (u128, u128),
        options: &TranslateOptions,
        (irregular, sorted): (HashSet<String>, bool),
    ) -> Last {
        Last {
            version: t.snapshot.version(),
            published: None,
            patched: false,
            trust_domain: options.trust_domain.clone(),
            dns: options.dns.clone(),
            others: Some(others),
            rest,
            listeners: decoded
                .listeners
                .into_iter()
                .map(|l| (l.name != listener::MAIN_INTERNAL).then_some(l))
                .collect(),
            route_configurations: decoded.resources.routes,
            clusters: decoded.clusters,
            assignments: decoded.assignments,
            sorted,
            at: Default::default(),
            irregular,
            warnings: t.warnings.clone(),
            dns_targets: t.dns.clone(),
            subscriptions: t.subscriptions.clone(),
        }
    }

    /// `snapshot` is live: when it is this translation's, the next EDS push may patch it.
    pub(crate) fn published(&mut self, snapshot: &Arc<Snapshot>) {
        if snapshot.version() == self.version {
            self.published = Some(snapshot.clone());
        }
    }

    pub(crate) fn patched(&self) -> bool {
        self.patched
    }

    /// The same options, clusters and assignments as this translation's, and every other
    /// resource but the `main_internal` listener.
    pub(super) fn same_inputs_but_listener(
        &self,
        decoded: &Decoded,
        rest: u128,
        options: &TranslateOptions,
    ) -> bool {
        self.same_options(options)
            && rest == self.rest
            && same_pieces(&decoded.clusters, &self.clusters)
            && same_pieces(&decoded.assignments, &self.assignments)
    }

    /// Its clusters' pieces.
    pub(super) fn clusters(&self) -> &[Arc<ClusterPiece>] {
        &self.clusters
    }

    /// Its assignments' pieces.
    pub(super) fn assignments(&self) -> &[Arc<AssignmentPiece>] {
        &self.assignments
    }

    /// Where each assignment is, by [`name_key`] (built on first use).
    fn at(&self) -> &HashMap<u128, usize, crate::xds::FastHash> {
        self.at.get_or_init(|| {
            self.assignments
                .iter()
                .enumerate()
                .map(|(i, a)| (name_key(&a.name), i))
                .collect()
        })
    }

    /// Where its assignment `name` is: by a binary search when its assignments are in name
    /// order, else by [`name_key`].
    fn position(&self, name: &str) -> Option<usize> {
        if self.sorted {
            return super::aligned::position(&self.assignments, name);
        }
        self.at().get(&name_key(name)).copied()
    }

    /// Its assignment of [`name_key`] `key`.
    pub(super) fn assignment(&self, key: u128) -> Option<&Arc<AssignmentPiece>> {
        self.at().get(&key).map(|&i| &self.assignments[i])
    }

    /// Whether assignment `name` is one a patch cannot follow (see `irregular`).
    pub(super) fn irregular(&self, name: &str) -> bool {
        self.irregular.contains(name)
    }

    /// The route configurations this translation subscribed to, when every resource but the
    /// clusters and assignments is the one it read (`others` is [`others_digest`]'s first).
    pub(crate) fn routes_if_others_same(&self, others: u128) -> Option<crate::xds::Names> {
        (self.others == Some(others)).then(|| self.subscriptions.routes.clone())
    }

    /// This translation, made by a patch (see [`Translator::reuse`](crate::xds::Translator::reuse)).
    pub(crate) fn patched_from(mut self) -> Last {
        self.patched = true;
        self
    }

    pub(super) fn same_options(&self, options: &TranslateOptions) -> bool {
        options.identities.is_empty()
            && options.trust_domain == self.trust_domain
            && options.dns == self.dns
    }

    /// `snapshot` (a patch of the published one, whose other resources have the digests
    /// `others`, made from this translation's assignments as the caller left them) is now the
    /// last translation's: its translation, with what the published one reported.
    pub(super) fn patched_to(
        &mut self,
        snapshot: Snapshot,
        (others, rest): (Option<u128>, u128),
    ) -> Translation {
        self.version = snapshot.version();
        (self.others, self.rest) = (others, rest);
        self.published = None;
        self.patched = true;
        Translation {
            snapshot,
            warnings: self.warnings.clone(),
            dns: self.dns_targets.clone(),
            subscriptions: self.subscriptions.clone(),
        }
    }
}

/// The same pieces, in the same order.
fn same_pieces<P>(a: &[Arc<P>], b: &[Arc<P>]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(a, b)| Arc::ptr_eq(a, b))
}

/// The translation of `decoded` as a patch of the last one's published snapshot, when only
/// assignments changed and the patch gives what a full translation would; `None` otherwise
/// (translate in full). On success `last` and the services' memo describe the new snapshot.
pub(crate) fn patch(
    last: &mut Option<Last>,
    memo: &mut Memo,
    decoded: &Decoded,
    others: u128,
    options: &TranslateOptions,
) -> Option<Translation> {
    let l = last.as_mut()?;
    if Some(others) != l.others
        || !same_pieces(&decoded.clusters, &l.clusters)
        || decoded.assignments.len() != l.assignments.len()
    {
        return None;
    }
    // The assignments that changed, each (old, new); the same names in the same order.
    let changed: Vec<_> = decoded
        .assignments
        .iter()
        .zip(&l.assignments)
        .filter(|(new, old)| !Arc::ptr_eq(new, old))
        .map(|(new, old)| (old, new))
        .collect();
    let snapshot = patch_services(l, memo, &changed, options)?;
    l.assignments.clone_from(&decoded.assignments);
    let rest = l.rest;
    Some(l.patched_to(snapshot, (Some(others), rest)))
}

/// An EDS push read from the assignments it changed alone (see
/// [`Translator::translate_assignments`](crate::xds::Translator::translate_assignments)): the
/// last translation's state with `changed` in place of the assignments of those names, which it
/// had. `None` when that cannot be patched (translate the whole state instead).
pub(crate) fn patch_assignments(
    last: &mut Option<Last>,
    memo: &mut Memo,
    changed: &[Encoded<'_>],
    options: &TranslateOptions,
) -> Option<Translation> {
    let l = last.as_mut()?;
    let mut replaced: Vec<(usize, Arc<AssignmentPiece>, &Encoded<'_>)> =
        Vec::with_capacity(changed.len());
    for r in changed {
        let i = l.position(r.name)?;
        let old = &l.assignments[i];
        // Known, and what the translation read (a name twice is not one push's).
        if r.type_url != ENDPOINT_TYPE
            || *old.name != **r.name
            || replaced.iter().any(|(j, ..)| *j == i)
        {
            return None;
        }
        let new = memo.assignment(r, old)?;
        if !Arc::ptr_eq(&new, old) {
            replaced.push((i, new, r));
        }
    }
    let pairs: Vec<_> = replaced
        .iter()
        .map(|(i, new, _)| (&l.assignments[*i], new))
        .collect();
    let snapshot = patch_services(l, memo, &pairs, options)?;
    // What was read: the changed assignments only.
    (memo.built, memo.reused) = (replaced.len(), changed.len() - replaced.len());
    (memo.listener.built, memo.listener.reused) = (0, 0);
    for (i, new, r) in replaced {
        memo.walked_assignment(i, &l.assignments[i], r, &new);
        l.assignments[i] = new;
    }
    memo.forget_unused_labels();
    let others = (l.others, l.rest);
    Some(l.patched_to(snapshot, others))
}

/// The published snapshot with the services fed by the `changed` assignments (old, new) built
/// again, when the patch gives what a full translation would (`None` otherwise); the services'
/// memo then describes it.
fn patch_services(
    l: &Last,
    memo: &mut Memo,
    changed: &[(&Arc<AssignmentPiece>, &Arc<AssignmentPiece>)],
    options: &TranslateOptions,
) -> Option<Snapshot> {
    let live = l.published.as_ref()?;
    if !l.same_options(options) {
        return None;
    }
    for (old, new) in changed {
        if new.name != old.name || new.diag != old.diag || l.irregular.contains(&*new.name) {
            return None;
        }
    }
    // The services they feed: each assignment's own cluster's.
    let mut hosts: BTreeMap<&str, Vec<&Arc<AssignmentPiece>>> = BTreeMap::new();
    for (_, new) in changed {
        let cluster = memo.cluster(&new.name)?;
        let ClusterRole::Service {
            cluster: sc,
            matches: None,
        } = &cluster.role
        else {
            return None;
        };
        hosts.entry(sc.name.host()).or_default().push(new);
    }
    let now = Instant::now();
    let mut patches = Vec::with_capacity(hosts.len());
    let mut rebuilt = Vec::with_capacity(hosts.len());
    for (host, news) in &hosts {
        let r = memo.services.services.get(*host)?;
        let (key, mut out) = rebuild(r, news, options)?;
        // An endpoint equal to one the service has is that one: the pod index keeps its
        // entry, and no second copy of it lives on.
        let live_endpoints = live.endpoints(host);
        for e in &mut out.endpoints {
            if let Some(same) = live_endpoints.iter().find(|o| **o == *e) {
                *e = same.clone();
            }
        }
        // Bound workloads are read from the services' endpoints: a patch does not redo them.
        let bound =
            |ip: &IpAddr| live.workloads.contains_key(ip) || live.known_workloads.contains_key(ip);
        if r.out
            .endpoints
            .iter()
            .chain(&out.endpoints)
            .any(|e| bound(&e.address))
        {
            return None;
        }
        patches.push(EndpointsPatch {
            host: host.to_string(),
            endpoints: out.endpoints.clone(),
            destination_rule: out.destination_rule.clone(),
        });
        rebuilt.push((host.to_string(), key, Arc::new(out)));
    }
    let snapshot = live.patched(patches, now)?;
    memo.services.rebuilt(snapshot.version(), rebuilt);
    Some(snapshot)
}

/// Service `r` built again with its assignments in `news` replaced, as a full translation
/// builds it; `None` when anything but its endpoints and their clusters would differ.
fn rebuild(
    r: &Remembered,
    news: &[&Arc<AssignmentPiece>],
    options: &TranslateOptions,
) -> Option<(ServiceKey, ServiceOut)> {
    let assignments: Vec<Option<Arc<AssignmentPiece>>> = r
        .key
        .assignments
        .iter()
        .map(|a| {
            let a = a.as_ref()?;
            Some(
                news.iter()
                    .find(|n| n.name == a.name)
                    .map_or_else(|| a.clone(), |n| (*n).clone()),
            )
        })
        .collect();
    // Its clusters as the full translation hands them over: with the routes' hash key, and the
    // endpoints of their assignments.
    let mut clusters: Vec<(&str, Cow<'_, ServiceCluster>)> = Vec::new();
    let mut pods: Pods<'_> = BTreeMap::new();
    let mut eds = assignments.iter();
    for (piece, hash) in &r.key.clusters {
        let ClusterRole::Service {
            cluster,
            matches: None,
        } = &piece.role
        else {
            return None;
        };
        let mut sc = Cow::Borrowed(cluster);
        if let Some(hash) = hash {
            take_hash_key(&mut sc, hash.clone());
        }
        let list = match &cluster.source {
            EndpointSource::Eds(_) => match eds.next()? {
                Some(a) => Cow::Borrowed(a.pods.as_slice()),
                None => Cow::Borrowed(&[][..]),
            },
            EndpointSource::None => Cow::Borrowed(&[][..]),
            EndpointSource::Inline(_) | EndpointSource::Dns(_) => return None,
        };
        pods.insert(&*piece.name, list);
        clusters.push((&*piece.name, sc));
    }
    let mine: Vec<(&str, &ServiceCluster)> = clusters.iter().map(|(n, c)| (*n, &**c)).collect();
    let host = r.out.service.hostname.as_str();
    let mut out = build_service(host, &r.key.acc, &mine, &pods, options);
    let old = &r.out;
    if out.service != old.service
        || out.diag != old.diag
        || out.destination_rule.as_deref() != old.destination_rule.as_deref()
    {
        return None;
    }
    // The rule the snapshots hold stays the one they share.
    out.destination_rule.clone_from(&old.destination_rule);
    let key = ServiceKey {
        acc: r.key.acc.without_routes(),
        clusters: r.key.clusters.clone(),
        assignments,
    };
    Some((key, out))
}
