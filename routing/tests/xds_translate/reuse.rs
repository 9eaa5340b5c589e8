//! bookinfo as the xDS client holds it (the wire: each resource's type, name and bytes), and
//! what a push rebuilds of it: an EDS change one assignment, a route change one chain, and a
//! published snapshot's unchanged services keep their very clusters.

use super::memo::retime_wire;
use super::*;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use prost::Message;
use routing::xds::{Encoded, Translator, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE};

/// bookinfo's clusters, assignments and listeners as istiod sends them: (type, name, bytes).
pub(super) type Wire = Vec<(&'static str, std::sync::Arc<str>, Bytes)>;

pub(super) fn bookinfo_wire(res: &Resources) -> Wire {
    res.clusters
        .iter()
        .map(|c| {
            (
                CLUSTER_TYPE,
                c.name.as_str().into(),
                c.encode_to_vec().into(),
            )
        })
        .chain(res.endpoints.iter().map(|c| {
            (
                ENDPOINT_TYPE,
                c.cluster_name.as_str().into(),
                c.encode_to_vec().into(),
            )
        }))
        .chain(res.listeners.iter().map(|l| {
            (
                LISTENER_TYPE,
                l.name.as_str().into(),
                l.encode_to_vec().into(),
            )
        }))
        .collect()
}

/// `wire` as the translator reads it.
pub(super) fn encoded(wire: &Wire) -> Vec<Encoded<'_>> {
    wire.iter()
        .map(|(t, n, v)| Encoded {
            type_url: t,
            name: n,
            value: v,
        })
        .collect()
}

pub(super) fn translate_wire(translator: &mut Translator, wire: &Wire) -> xds::Translation {
    translator
        .translate(&encoded(wire), &TranslateOptions::default())
        .unwrap_or_else(|r| panic!("rejected: {r:?}"))
}

/// An EDS push rebuilds the one assignment it changed; everything else is reused, and the
/// snapshot has the new endpoints.
#[test]
fn an_eds_change_rebuilds_one_assignment() {
    let res = load_resources(&fixture("bookinfo.json")).unwrap();
    let mut wire = bookinfo_wire(&res);
    let mut translator = Translator::new();
    let first = translate_wire(&mut translator, &wire);
    // Every cluster, assignment and main_internal chain.
    let chains: usize = res
        .listeners
        .iter()
        .filter(|l| l.name == "main_internal")
        .map(|l| l.filter_chains.len())
        .sum();
    let pieces = res.clusters.len() + res.endpoints.len() + chains;
    assert_eq!(translator.reuse().built, pieces);
    assert_eq!(translator.reuse().reused, 0);

    // ratings' assignment loses its endpoint.
    let host = "ratings.default.svc.cluster.local";
    let before = first.snapshot.endpoints(host).len();
    let i = wire
        .iter()
        .position(|(t, n, _)| {
            *t == ENDPOINT_TYPE && **n == *format!("inbound-vip|9080|http|{host}")
        })
        .expect("ratings' assignment");
    let mut cla = ClusterLoadAssignment::decode(&wire[i].2[..]).unwrap();
    let gone = cla.endpoints.iter_mut().find_map(|l| l.lb_endpoints.pop());
    assert!(gone.is_some() && before > 0);
    wire[i].2 = cla.encode_to_vec().into();
    let second = translate_wire(&mut translator, &wire);
    assert_eq!(translator.reuse().built, 1, "{:?}", translator.reuse());
    assert_eq!(translator.reuse().reused, pieces - 1);
    // Only ratings is assembled again.
    let services = first.snapshot.services().count();
    assert_eq!(translator.reuse().services_built, 1);
    assert_eq!(translator.reuse().services_reused, services - 1);
    assert_eq!(second.snapshot.endpoints(host).len(), before - 1);
}

/// A route change (istiod re-sends the whole `main_internal` listener) translates the one chain
/// it changed; the others are reused, and the snapshot has the new route.
#[test]
fn a_route_change_rebuilds_one_chain() {
    let res = load_resources(&fixture("bookinfo.json")).unwrap();
    let mut wire = bookinfo_wire(&res);
    let mut translator = Translator::new();
    translate_wire(&mut translator, &wire);
    let all = translator.reuse().built;

    // reviews' first route gets a 7 s timeout.
    let chain_name = "inbound-vip|9080|http|reviews.default.svc.cluster.local";
    retime_wire(&mut wire, chain_name, 7);
    let second = translate_wire(&mut translator, &wire);
    assert_eq!(translator.reuse().built, 1, "{:?}", translator.reuse());
    assert_eq!(translator.reuse().reused, all - 1);
    assert_eq!(translator.reuse().services_built, 1, "only reviews");
    let vs = second
        .snapshot
        .virtual_services()
        .iter()
        .find(|vs| {
            vs.hosts
                .iter()
                .any(|h| h == "reviews.default.svc.cluster.local")
        })
        .expect("reviews' routes");
    assert_eq!(vs.http[0].timeout, Some(std::time::Duration::from_secs(7)));
}

/// Published (carried over from the live snapshot) and shown to the translator, as the
/// waypoint does.
pub(super) fn publish(
    translator: &mut Translator,
    wire: &Wire,
    live: &routing::Snapshot,
) -> std::sync::Arc<routing::Snapshot> {
    let mut snapshot = translate_wire(translator, wire).snapshot;
    snapshot.carry_over_state(live);
    let snapshot = std::sync::Arc::new(snapshot);
    translator.published(&snapshot);
    snapshot
}

/// bookinfo without the pod at `gone` in reviews' assignments (the service's and its subset's).
pub(super) fn reviews_without(res: &Resources, gone: std::net::SocketAddr) -> Wire {
    let mut wire = bookinfo_wire(res);
    for (t, n, bytes) in &mut wire {
        if *t != ENDPOINT_TYPE || !n.ends_with(REVIEWS) {
            continue;
        }
        let mut cla = ClusterLoadAssignment::decode(&bytes[..]).unwrap();
        for l in &mut cla.endpoints {
            // istiod's internal address names the pod as `endpoint_id: "ip:port"`.
            l.lb_endpoints
                .retain(|e| !format!("{e:?}").contains(&format!("{gone:?}")));
        }
        *bytes = cla.encode_to_vec().into();
    }
    wire
}

pub(super) const REVIEWS: &str = "reviews.default.svc.cluster.local";
pub(super) const PRODUCTPAGE: &str = "productpage.default.svc.cluster.local";

/// After a publish, a service that did not change keeps the very clusters that served (and
/// their state: a request in flight stays counted); a changed one is built again and adopts the
/// state of the cluster it replaces. A snapshot that was not published, or a published one the
/// translator did not make, gives nothing to share.
#[test]
fn unchanged_services_share_their_clusters_with_the_next_snapshot() {
    let res = load_resources(&fixture("bookinfo.json")).unwrap();
    let full = bookinfo_wire(&res);
    let all = |s: &routing::Snapshot, host| s.cluster(host, 9080, None).unwrap().endpoints.len();
    let mut translator = Translator::new();
    let first = publish(&mut translator, &full, &routing::Snapshot::empty());
    let n = all(&first, REVIEWS);
    assert!(n >= 2, "reviews has {n} endpoints");
    let page = first.cluster(PRODUCTPAGE, 9080, None).unwrap();
    let page_guard = page.begin(page.endpoints[0].target());
    let reviews = first.cluster(REVIEWS, 9080, None).unwrap();
    let reviews_target = reviews.endpoints[0].target();
    let reviews_guard = reviews.begin(reviews_target);

    // reviews loses a pod: only its clusters are built again.
    let gone = reviews.endpoints[n - 1].target();
    let fewer = reviews_without(&res, gone);
    let second = publish(&mut translator, &fewer, &first);
    let page2 = second.cluster(PRODUCTPAGE, 9080, None).unwrap();
    assert!(std::ptr::eq(page, page2), "productpage's cluster is shared");
    assert_eq!(page2.endpoints[0].active(), 1);
    let reviews2 = second.cluster(REVIEWS, 9080, None).unwrap();
    assert!(
        !std::ptr::eq(reviews, reviews2),
        "reviews' cluster is built again"
    );
    assert_eq!(reviews2.endpoints.len(), n - 1);
    assert_eq!(
        reviews2.endpoint(reviews_target).unwrap().active(),
        1,
        "state adopted"
    );
    drop((page_guard, reviews_guard));
    assert_eq!(page2.endpoints[0].active(), 0);
    assert_eq!(reviews2.endpoint(reviews_target).unwrap().active(), 0);

    // reviews is whole again, but that snapshot is held back (not published); a snapshot of
    // another translation shown instead is ignored.
    let held = translate_wire(&mut translator, &full).snapshot;
    assert_eq!(all(&held, REVIEWS), n);
    translator.published(&second);
    // The same state again: reviews' clusters are built again (never published), with all
    // its endpoints, not taken from `second`; productpage's are still those that served.
    let third = publish(&mut translator, &full, &second);
    let reviews3 = third.cluster(REVIEWS, 9080, None).unwrap();
    assert!(!std::ptr::eq(reviews2, reviews3));
    assert!(!std::ptr::eq(
        held.cluster(REVIEWS, 9080, None).unwrap(),
        reviews3
    ));
    assert_eq!(reviews3.endpoints.len(), n);
    assert!(std::ptr::eq(
        page,
        third.cluster(PRODUCTPAGE, 9080, None).unwrap()
    ));
    // Published now: the next snapshot shares them.
    let fourth = publish(&mut translator, &full, &third);
    assert!(std::ptr::eq(
        reviews3,
        fourth.cluster(REVIEWS, 9080, None).unwrap()
    ));
    assert_eq!(third.to_json()["clusters"], fourth.to_json()["clusters"]);
}
