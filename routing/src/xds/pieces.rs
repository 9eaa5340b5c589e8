//! What one cluster or one assignment translates to on its own, before the resources are put
//! together ([`super::assemble`]): a *piece*. A piece depends on its resource's bytes only, so
//! [`Memo`] keeps each piece under its resource's name and a digest of its bytes, and the next
//! translation reuses it when the bytes are the same: an unchanged resource is neither decoded
//! nor translated again, and an EDS push rebuilds the piece of the one assignment it changed.
//!
//! Warnings and rejections found while building a piece are kept with it and reported again
//! each time the piece is used, where a translation from scratch reports them, so that a
//! memoized translation is indistinguishable from one from scratch (property-tested in
//! `super::tests::memo`).

use super::cluster::{self, held_as, EndpointSource, ServiceCluster};
use super::endpoint::{self, PodEndpoint, PodShare};
use super::listener::{ListenerMemo, ShallowListener, MAIN_INTERNAL};
use super::names::{ClusterName, Direction};
use super::outbound::{self, MatchMetadata, SocketMatch};
use super::{At, Diag, Encoded, HeldDiag, Rejection, CLUSTER_TYPE, ENDPOINT_TYPE};
use crate::labels::LabelMaps;
use crate::upstream::SanMatcher;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use std::collections::HashMap;
use std::sync::Arc;

/// Clusters istiod sends a waypoint that are not services.
const INFRA_CLUSTERS: &[&str] = &[
    "main_internal",
    "encap",
    "connect_originate",
    "inner_connect_originate",
    "outer_connect_originate",
    "forward_inner_connect",
    "BlackHoleCluster",
    "PassthroughCluster",
    "InboundPassthroughCluster",
    "InboundPassthroughClusterIpv4",
    "InboundPassthroughClusterIpv6",
    "agent",
    "prometheus_stats",
    "sds-grpc",
    "xds-grpc",
];

/// What a cluster is to the waypoint.
// Most clusters are services, and each role lives once in its piece: no box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum ClusterRole {
    /// A service cluster (`inbound-vip|…`); `matches`: an `outbound|…` cluster's transport
    /// socket matches (see [`outbound`]), `None` for `inbound-vip`.
    Service {
        cluster: ServiceCluster,
        matches: Option<Box<[SocketMatch]>>,
    },
    /// `connect_originate`: the SAN matchers HBONE peers are verified against.
    ConnectOriginate(Vec<SanMatcher>),
    /// Rejected, infrastructure, or not a waypoint cluster (the piece's diagnostics say which).
    Other,
}

/// One translated cluster.
#[derive(Debug)]
pub(crate) struct ClusterPiece {
    /// The cluster's own name: the xDS client's string for it (an EDS assignment named after
    /// the cluster holds the same one, [`AssignmentPiece::name`] and `eds` too).
    pub(crate) name: Arc<str>,
    pub(crate) role: ClusterRole,
    /// The EDS assignment it needs, if it is an EDS cluster (the very string of its role's
    /// [`EndpointSource::Eds`]: at 5 000 services, 15 000 names held once instead of twice).
    pub(crate) eds: Option<Arc<str>>,
    pub(crate) diag: HeldDiag,
}

impl ClusterPiece {
    /// Whether what a state asks for can be told from this piece without assembling it: it
    /// reported no rejection, and it is not a service cluster whose endpoints are read at
    /// assembly (inline, DNS) or by its socket matches (`outbound|…`).
    pub(crate) fn subscribable(&self) -> bool {
        let plain = match &self.role {
            ClusterRole::Service { cluster, matches } => {
                matches.is_none()
                    && matches!(
                        cluster.source,
                        EndpointSource::Eds(_) | EndpointSource::None
                    )
            }
            _ => true,
        };
        plain && self.diag.rejections.is_empty()
    }

    /// The piece of cluster resource `r`; a rejection naming it when it does not decode.
    fn decode(r: &Encoded<'_>) -> Result<ClusterPiece, Rejection> {
        super::stored::decode::<Cluster>(r.value)
            .map(|c| ClusterPiece::build(&c, r.name))
            .map_err(|e| undecodable(r, e))
    }

    /// The piece of `c`, held under `shared` (its name as the xDS client holds it) when that is
    /// its name.
    pub(crate) fn build(c: &Cluster, shared: &Arc<str>) -> ClusterPiece {
        let mut diag = Diag::default();
        let name = c.name.as_str();
        let own = held_as(shared, name);
        let role = match ClusterName::parse_shared(&own) {
            Some(cn) if cn.direction == Direction::InboundVip => {
                match cluster::service_cluster(c, cn, &mut diag) {
                    Some(cluster) => ClusterRole::Service {
                        cluster,
                        matches: None,
                    },
                    None => ClusterRole::Other,
                }
            }
            Some(cn) => match outbound::outbound_cluster(c, cn, &mut diag) {
                Some(oc) => ClusterRole::Service {
                    cluster: oc.cluster,
                    matches: Some(oc.matches.into_boxed_slice()),
                },
                None => ClusterRole::Other,
            },
            None if name == "connect_originate" => {
                let at = At {
                    type_url: CLUSTER_TYPE,
                    name,
                };
                ClusterRole::ConnectOriginate(cluster::connect_originate_sans(c, at, &mut diag))
            }
            None if INFRA_CLUSTERS.contains(&name) => ClusterRole::Other,
            None => {
                diag.warn(
                    CLUSTER_TYPE,
                    name,
                    "not an istiod waypoint cluster; ignored",
                );
                ClusterRole::Other
            }
        };
        // The role's string, when it has one.
        let eds = match &role {
            ClusterRole::Service { cluster, .. } => match &cluster.source {
                EndpointSource::Eds(eds) => Some(eds.clone()),
                _ => cluster::eds_name(c, &own),
            },
            _ => cluster::eds_name(c, &own),
        };
        ClusterPiece {
            name: own,
            role,
            eds,
            diag: HeldDiag::new(diag),
        }
    }
}

/// One translated EDS assignment.
#[derive(Debug)]
pub(crate) struct AssignmentPiece {
    /// The assignment's `cluster_name`: the xDS client's string for it, which is its cluster's
    /// (`xds_client::ResourceState::held_name`).
    pub(crate) name: Arc<str>,
    /// Its routable pods, each shared with the assignments decoded with it that list an
    /// equal pod (a service's subsets list its pods again: [`PodShare`]).
    pub(crate) pods: Vec<Arc<PodEndpoint>>,
    /// Its endpoints' transport socket match metadata (read for `outbound|…` clusters).
    pub(crate) socket_meta: Option<MatchMetadata>,
    /// What reading the pods found (reported as the assignment's).
    pub(crate) diag: HeldDiag,
}

/// `r` does not decode: a rejection naming it.
fn undecodable(r: &Encoded<'_>, e: super::stored::ReadError) -> Rejection {
    Rejection {
        type_url: r.type_url.to_string(),
        name: r.name.to_string(),
        reason: format!("cannot decode resource: {e}"),
    }
}

impl AssignmentPiece {
    /// The piece of the encoded assignment `r`.
    fn decode(
        r: &Encoded<'_>,
        labels: &mut LabelMaps,
        share: &mut PodShare,
    ) -> Result<AssignmentPiece, Rejection> {
        super::stored::decode::<ClusterLoadAssignment>(r.value)
            .map(|c| AssignmentPiece::build(&c, r.name, labels, share))
            .map_err(|e| undecodable(r, e))
    }

    /// The piece of `cla`, held under `shared` (its name as the xDS client holds it) when that is
    /// its name.
    pub(crate) fn build(
        cla: &ClusterLoadAssignment,
        shared: &Arc<str>,
        labels: &mut LabelMaps,
        share: &mut PodShare,
    ) -> AssignmentPiece {
        let mut diag = Diag::default();
        let at = At {
            type_url: ENDPOINT_TYPE,
            name: &cla.cluster_name,
        };
        let decoded = endpoint::pods(cla, at, &mut diag);
        // A new vector of the exact length: collected from `decoded` in place, the pointers
        // would keep its whole allocation (16 slots of 112 bytes for ten pods).
        let mut pods = Vec::with_capacity(decoded.len());
        for mut p in decoded {
            labels.share(&mut p.labels);
            pods.push(share.pod(p));
        }
        AssignmentPiece {
            name: held_as(shared, &cla.cluster_name),
            pods,
            socket_meta: outbound::match_metadata(cla),
            diag: HeldDiag::new(diag),
        }
    }
}

/// The very same bytes: the same address and length (the xDS client shares an unchanged
/// resource's bytes from one state to the next). Sound while one side holds its `Bytes`: no
/// other bytes can then be at that address.
pub(crate) fn same_bytes(a: &bytes::Bytes, b: &bytes::Bytes) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}

/// 128 bits of XXH3 over a resource's bytes: equal digests are taken as equal bytes.
pub(crate) fn digest(bytes: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(bytes)
}

/// Pieces of one type by resource name ([`name_key`]), with the digest of the bytes each was
/// built from.
type Pieces<P> = HashMap<u128, Remembered<P>, super::FastHash>;

/// A resource name as its piece's key: 128 bits of XXH3 (equal keys are taken as equal names,
/// as [`digest`]'s are for bytes). A lookup then compares two integers held in the table instead
/// of reading the remembered name from the heap: an EDS push at 5 000 services looks up all
/// 30 000 clusters and assignments, and those names' cache misses were about a third of it.
pub(crate) fn name_key(name: &str) -> u128 {
    xxhash_rust::xxh3::xxh3_128(name.as_bytes())
}

#[derive(Debug)]
struct Remembered<P> {
    digest: u128,
    piece: Arc<P>,
    /// The last translation that used it ([`Memo::generation`]).
    used: u64,
}

/// The pieces of the last translation, reused by the next one where the bytes are unchanged.
/// Holds only what the last translation used: a resource that is gone is forgotten.
#[derive(Debug, Default)]
pub(crate) struct Memo {
    clusters: Pieces<ClusterPiece>,
    assignments: Pieces<AssignmentPiece>,
    /// `main_internal`'s chains and matcher.
    pub(crate) listener: ListenerMemo,
    /// The services assembled from the pieces.
    pub(crate) services: super::assemble::ServiceMemo,
    /// Pieces reused and built by the last [`Memo::pieces`].
    pub(crate) reused: usize,
    pub(crate) built: usize,
    /// Of `reused`, those whose bytes were the very ones the call before read ([`Walked`]).
    pub(crate) same_bytes: usize,
    /// Listeners whose bytes the last [`Memo::pieces`] digested (not the very bytes the call
    /// before digested).
    pub(crate) listeners_digested: usize,
    /// Counts translations: the pieces a translation did not use are forgotten after it.
    generation: u64,
    /// One allocation per distinct pod label map across the remembered assignments (a workload's
    /// pods carry the same canonical name and revision, and a pod is in its service's assignment
    /// and its subset's); maps no piece holds any more are let go after each translation.
    labels: LabelMaps,
    /// The resources the last [`Memo::pieces`] read, in its order, each with what it gave.
    walked: Vec<Walked>,
    /// Where in `walked` the last walk put each assignment it gave a piece for (the order of
    /// [`Decoded::assignments`]), and `main_internal`: what a push read alone replaces there
    /// ([`Memo::walked_assignment`], [`Memo::walked_main`]).
    assignment_at: Vec<u32>,
    main_at: Option<u32>,
    /// Clusters whose pieces [`Memo::cluster_piece`] built since the last walk.
    built_outside: Vec<u128>,
}

/// The encoded resources of one translation, clusters and assignments as pieces.
pub(crate) struct Decoded {
    /// Route configurations (listeners, clusters and assignments are not decoded into it).
    pub(crate) resources: super::Resources,
    pub(crate) listeners: Vec<ShallowListener>,
    pub(crate) clusters: Vec<Arc<ClusterPiece>>,
    pub(crate) assignments: Vec<Arc<AssignmentPiece>>,
    /// The digests of the other resources ([`others_digest`](super::assemble::eds::others_digest)).
    pub(crate) others: (u128, u128),
}

impl Memo {
    /// The piece of assignment `r`, which the last translation read as `old`: `old` when the
    /// bytes are the same, else built from them (and remembered in its place). `None` when
    /// `old` is not what the memo holds under that name or the bytes do not decode.
    pub(crate) fn assignment(
        &mut self,
        r: &Encoded<'_>,
        old: &Arc<AssignmentPiece>,
    ) -> Option<Arc<AssignmentPiece>> {
        let held = self.assignments.get(&name_key(r.name))?;
        if !Arc::ptr_eq(&held.piece, old) {
            return None;
        }
        let labels = &mut self.labels;
        let counts = &mut (0, 0);
        memoized(&mut self.assignments, self.generation, r, counts, || {
            AssignmentPiece::decode(r, labels, &mut PodShare::default())
        })
        .ok()
    }

    /// Let go of the pod label maps no piece holds any more (after pieces were replaced), once
    /// there are twice as many as the last time ([`LabelMaps::prune_grown`]).
    pub(crate) fn forget_unused_labels(&mut self) {
        self.labels.prune_grown();
    }

    /// The piece of cluster `r`, outside a walk: the memo's when its bytes are the same, else
    /// built and kept for the walk that follows (which takes it by digest). One built here that
    /// the next walk does not read is forgotten after it. `None` when it does not decode.
    pub(crate) fn cluster_piece(&mut self, r: &Encoded<'_>) -> Option<Arc<ClusterPiece>> {
        let counts = &mut (0, 0);
        let piece = memoized(&mut self.clusters, self.generation, r, counts, || {
            ClusterPiece::decode(r)
        })
        .ok()?;
        if counts.1 > 0 {
            self.built_outside.push(name_key(r.name));
        }
        Some(piece)
    }

    /// The last translation's piece of cluster `name`.
    pub(crate) fn cluster(&self, name: &str) -> Option<&Arc<ClusterPiece>> {
        self.clusters.get(&name_key(name)).map(|r| &r.piece)
    }

    /// Decode `resources`: listeners and route configurations in full, clusters and assignments
    /// only when their bytes differ from the last translation's (else their pieces are reused).
    /// A resource that does not decode is a rejection naming it.
    ///
    /// A resource whose bytes are the very ones the last call read in the same place gives what
    /// it gave then, with nothing decoded, digested or looked up ([`Walked`]); any other is
    /// found by name and the digest of its bytes.
    pub(crate) fn pieces(&mut self, resources: &[Encoded<'_>]) -> Result<Decoded, Vec<Rejection>> {
        use prost::Message;
        let mut out = Decoded {
            resources: super::Resources::default(),
            listeners: Vec::new(),
            clusters: Vec::new(),
            assignments: Vec::new(),
            others: (0, 0),
        };
        self.generation += 1;
        let generation = self.generation;
        // (reused, built)
        let counts = &mut (0, 0);
        let mut rejections = Vec::new();
        let mut last = Cursor {
            rest: std::mem::take(&mut self.walked).into_iter(),
            ahead: Default::default(),
        };
        let mut gone = Vec::new();
        let mut walked = Vec::with_capacity(resources.len());
        self.assignment_at.clear();
        self.main_at = None;
        let mut share = PodShare::default();
        let mut walk_hits = 0;
        let mut others = walk::Others::default();
        for r in resources {
            let kind = Kind::of(r.type_url);
            let (key, was) = match last.next_same(kind, r.value) {
                Some(w) => {
                    debug_assert_eq!(w.key.get(), name_key(r.name), "{}", r.name);
                    (w.key.get(), Some(w))
                }
                None => {
                    let key = name_key(r.name);
                    (key, last.find(kind, key, |w| gone.push(w)))
                }
            };
            let same = was.as_ref().is_some_and(|w| same_bytes(&w.bytes, r.value));
            let listener = (kind == Kind::Listener).then(|| {
                let known = was.as_ref().filter(|_| same);
                others.listener_digest(r, known.and_then(Walked::listener_digest))
            });
            others.add(kind, r, listener);
            // Where it goes in the walk, if it gives a piece or a listener.
            let at = walked.len() as u32;
            if let Some(w) = was.filter(|_| same) {
                let hit = match &w.gave {
                    Gave::Cluster(p) => {
                        out.clusters.push(p.clone());
                        true
                    }
                    Gave::Assignment(p) => {
                        out.assignments.push(p.clone());
                        self.assignment_at.push(at);
                        true
                    }
                    Gave::Listener(l) => {
                        out.listeners.push(l.0.clone());
                        self.main_at = self.main_at.or((**r.name == *MAIN_INTERNAL).then_some(at));
                        true
                    }
                    Gave::Nothing => false,
                };
                if hit {
                    let piece = usize::from(kind != Kind::Listener);
                    counts.0 += piece;
                    walk_hits += piece;
                    walked.push(w);
                    continue;
                }
            }
            let bad = |e: super::stored::ReadError| undecodable(r, e);
            let result = match kind {
                Kind::Cluster => memoized(&mut self.clusters, generation, r, counts, || {
                    ClusterPiece::decode(r)
                })
                .map(|p| {
                    out.clusters.push(p.clone());
                    Gave::Cluster(p)
                }),
                Kind::Assignment => memoized(&mut self.assignments, generation, r, counts, || {
                    AssignmentPiece::decode(r, &mut self.labels, &mut share)
                })
                .map(|p| {
                    out.assignments.push(p.clone());
                    self.assignment_at.push(at);
                    Gave::Assignment(p)
                }),
                Kind::Listener => super::stored::shallow(r.value)
                    .and_then(|b| Ok(ShallowListener::decode(b)?))
                    .map(|l| {
                        out.listeners.push(l.clone());
                        self.main_at = self.main_at.or((**r.name == *MAIN_INTERNAL).then_some(at));
                        Gave::Listener(Box::new((l, listener.unwrap_or_default())))
                    })
                    .map_err(bad),
                Kind::Other => out
                    .resources
                    .push_encoded(r.type_url, r.value)
                    .map(|()| Gave::Nothing)
                    .map_err(|mut e| {
                        e.name = r.name.to_string();
                        e
                    }),
            };
            let gave = result.unwrap_or_else(|e| {
                rejections.push(e);
                Gave::Nothing
            });
            walked.push(Walked {
                kind,
                key: key.into(),
                bytes: r.value.clone(),
                gave,
            });
        }
        gone.extend(last.rest);
        gone.extend(last.ahead);
        // What is gone from the state is forgotten, unless read again under its name this time
        // (elsewhere in the order). Pieces reused from the walk are not marked as used: the maps
        // are looked up only for bytes the walk did not know, and by the EDS push read alone
        // (which checks that what it finds is what the last translation read).
        drop(share);
        for key in std::mem::take(&mut self.built_outside) {
            forget(&mut self.clusters, key, generation);
        }
        for w in gone {
            match w.kind {
                Kind::Cluster => forget(&mut self.clusters, w.key.get(), generation),
                Kind::Assignment => forget(&mut self.assignments, w.key.get(), generation),
                Kind::Listener | Kind::Other => {}
            }
        }
        self.walked = walked;
        self.labels.prune_grown();
        (self.reused, self.built) = *counts;
        self.same_bytes = walk_hits;
        self.listeners_digested = others.digested;
        out.others = others.digests();
        if rejections.is_empty() {
            Ok(out)
        } else {
            Err(rejections)
        }
    }
}

/// Forget the piece of `key` unless translation `generation` used it.
fn forget<P>(memo: &mut Pieces<P>, key: u128, generation: u64) {
    if memo.get(&key).is_some_and(|p| p.used != generation) {
        memo.remove(&key);
    }
}

/// The piece of `r`: the last translation's when its bytes are the same, else `build`'s.
/// Recorded in `memo` as used by translation `generation` either way (in place), and counted in
/// `(reused, built)`.
fn memoized<P>(
    memo: &mut Pieces<P>,
    generation: u64,
    r: &Encoded<'_>,
    (reused, built): &mut (usize, usize),
    build: impl FnOnce() -> Result<P, Rejection>,
) -> Result<Arc<P>, Rejection> {
    let digest = digest(r.value);
    let key = name_key(r.name);
    if let Some(old) = memo.get_mut(&key) {
        if old.digest == digest {
            *reused += 1;
            old.used = generation;
            return Ok(old.piece.clone());
        }
    }
    let piece = Arc::new(build()?);
    *built += 1;
    memo.insert(
        key,
        Remembered {
            digest,
            piece: piece.clone(),
            used: generation,
        },
    );
    Ok(piece)
}

#[cfg(test)]
pub(crate) mod tests;
mod walk;
use walk::{Cursor, Gave, Kind, Walked};
