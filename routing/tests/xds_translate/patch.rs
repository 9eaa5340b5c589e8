//! The translator's patches of the published snapshot (an EDS push, a route change): what they
//! share with it, and when they give way to a full translation. That a patch equals a
//! translation from scratch is also part of `memo`'s property.

use super::memo::retime_wire;
use super::reuse::{
    bookinfo_wire, encoded, publish, reviews_without, translate_wire, Wire, PRODUCTPAGE, REVIEWS,
};
use super::*;
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use prost::Message;
use routing::xds::{Translator, CLUSTER_TYPE};

/// bookinfo translated and published, and bookinfo without the first pod of reviews (`gone`).
struct Published {
    full: Wire,
    translator: Translator,
    first: std::sync::Arc<routing::Snapshot>,
    gone: std::net::SocketAddr,
    fewer: Wire,
}

fn bookinfo_published() -> Published {
    let res = load_resources(&fixture("bookinfo.json")).unwrap();
    let full = bookinfo_wire(&res);
    let mut translator = Translator::new();
    let first = publish(&mut translator, &full, &routing::Snapshot::empty());
    let gone = first.cluster(REVIEWS, 9080, None).unwrap().endpoints[0].target();
    let fewer = reviews_without(&res, gone);
    Published {
        full,
        translator,
        first,
        gone,
        fewer,
    }
}

/// An EDS push against the published snapshot patches it: the services its assignments feed
/// are built again, everything else is the published snapshot's (shared, not copied), and the
/// result is a translation from scratch's. Not once that snapshot is held back, nor when more
/// than assignments changed.
#[test]
fn an_eds_push_patches_the_published_snapshot() {
    let Published {
        full,
        mut translator,
        first,
        gone,
        fewer,
    } = bookinfo_published();
    assert!(!translator.reuse().patched, "nothing to patch yet");

    let second = publish(&mut translator, &fewer, &first);
    let reuse = translator.reuse();
    assert!(reuse.patched, "{reuse:?}");
    assert_eq!(reuse.services_built, 1, "reviews only: {reuse:?}");
    assert_eq!(describe_wire(&second), scratch_wire(&fewer));
    assert!(std::ptr::eq(
        first.cluster(PRODUCTPAGE, 9080, None).unwrap(),
        second.cluster(PRODUCTPAGE, 9080, None).unwrap()
    ));
    assert!(std::ptr::eq(
        first.virtual_services().as_ptr(),
        second.virtual_services().as_ptr()
    ));
    let reviews2 = second.cluster(REVIEWS, 9080, None).unwrap();
    assert!(reviews2.endpoint(gone).is_none());
    assert!(second.endpoint_by_ip(gone.ip()).is_none());
    assert!(first.endpoint_by_ip(gone.ip()).is_some());
    // The pods that stayed are the same endpoints, in the service's list and the pod index:
    // no second copy of them, and the index's shards of their addresses are not copied.
    let kept = second.endpoints(REVIEWS);
    assert_eq!(kept.len(), first.endpoints(REVIEWS).len() - 1);
    for e in kept {
        let before = first
            .endpoints(REVIEWS)
            .iter()
            .find(|b| b.address == e.address);
        assert!(
            before.is_some_and(|b| std::sync::Arc::ptr_eq(b, e)),
            "{e:?}"
        );
        assert!(std::ptr::eq(
            first.endpoint_by_ip(e.address).unwrap(),
            second.endpoint_by_ip(e.address).unwrap()
        ));
    }

    // The pod is back: patched again, from the second snapshot.
    let third = publish(&mut translator, &full, &second);
    assert!(translator.reuse().patched);
    assert_eq!(describe_wire(&third), scratch_wire(&full));
    assert!(third.endpoint_by_ip(gone.ip()).is_some());

    // Held back (not published): the next one is translated in full.
    let held = translate_wire(&mut translator, &fewer).snapshot;
    assert!(translator.reuse().patched, "a patch of the third");
    drop(held);
    let _ = publish(&mut translator, &full, &third);
    assert!(
        !translator.reuse().patched,
        "the held-back snapshot was never published"
    );

    // A cluster changed as well: more than endpoints, its service is assembled again and
    // spliced in (the others shared).
    let live = publish(&mut translator, &full, &third);
    let mut changed = fewer.clone();
    let (_, _, bytes) = changed
        .iter_mut()
        .find(|(t, n, _)| *t == CLUSTER_TYPE && n.ends_with(PRODUCTPAGE))
        .unwrap();
    let mut c = envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(&bytes[..]).unwrap();
    c.connect_timeout = Some(ProtoDuration {
        seconds: 3,
        nanos: 0,
    });
    *bytes = c.encode_to_vec().into();
    let after = publish(&mut translator, &changed, &live);
    let reuse = translator.reuse();
    assert!(reuse.patched, "{reuse:?}");
    assert_eq!(
        reuse.services_built, 2,
        "reviews and productpage: {reuse:?}"
    );
    assert_eq!(describe_wire(&after), scratch_wire(&changed));
    assert!(std::ptr::eq(
        live.cluster("ratings.default.svc.cluster.local", 9080, None)
            .unwrap(),
        after
            .cluster("ratings.default.svc.cluster.local", 9080, None)
            .unwrap()
    ));
}

/// An EDS push of assignments the last state had, read alone (what the waypoint does when only
/// assignments changed): a patch of the published snapshot equal to a translation from scratch
/// of the whole state. Not when the last snapshot was held back, nor for a name the state did
/// not have.
#[test]
fn changed_assignments_alone_patch_the_published_snapshot() {
    let Published {
        full,
        mut translator,
        first,
        gone,
        fewer,
    } = bookinfo_published();
    let changed = |wire: &Wire| -> Vec<(&'static str, std::sync::Arc<str>, Bytes)> {
        wire.iter()
            .filter(|(t, n, _)| *t == routing::xds::ENDPOINT_TYPE && n.ends_with(REVIEWS))
            .cloned()
            .collect()
    };
    let view = |wire: &[(&'static str, std::sync::Arc<str>, Bytes)]| -> Vec<(&'static str, std::sync::Arc<str>, Bytes)> {
        wire.to_vec()
    };
    let alone = view(&changed(&fewer));
    assert!(alone.len() > 1, "reviews' assignment and its subsets'");
    let mut t = translator
        .translate_assignments(&encoded(&alone), &TranslateOptions::default())
        .expect("known assignments of a published translation");
    let reuse = translator.reuse();
    assert!(reuse.patched, "{reuse:?}");
    // Built: the assignments whose bytes changed (the service's, and the subset's of the pod).
    let differ = alone.iter().filter(|a| !full.contains(a)).count();
    assert!(differ > 0);
    assert_eq!(
        (reuse.built, reuse.reused, reuse.services_built),
        (differ, alone.len() - differ, 1),
        "{reuse:?}"
    );
    assert_eq!(describe_wire(&t.snapshot), scratch_wire(&fewer));
    t.snapshot.carry_over_state(&first);
    let second = std::sync::Arc::new(t.snapshot);
    translator.published(&second);
    assert!(std::ptr::eq(
        first.cluster(PRODUCTPAGE, 9080, None).unwrap(),
        second.cluster(PRODUCTPAGE, 9080, None).unwrap()
    ));
    assert!(second.endpoint_by_ip(gone.ip()).is_none());

    // Back, alone again: from the second (patched) snapshot.
    let back = changed(&full);
    let view = encoded(&back);
    let third = translator
        .translate_assignments(&view, &TranslateOptions::default())
        .expect("a patch of a patch");
    assert_eq!(describe_wire(&third.snapshot), scratch_wire(&full));
    // Not published: the next push has nothing to patch.
    drop(third);
    assert!(translator
        .translate_assignments(&view, &TranslateOptions::default())
        .is_none());
    // A name the state did not have.
    let live = publish(&mut translator, &full, &second);
    let nowhere = "inbound-vip|9080|http|nowhere.default.svc.cluster.local".into();
    let unknown = routing::xds::Encoded {
        type_url: routing::xds::ENDPOINT_TYPE,
        name: &nowhere,
        value: view[0].value,
    };
    assert!(translator
        .translate_assignments(&[unknown], &TranslateOptions::default())
        .is_none());
    drop(live);
}

/// A push read alone lets go of what it replaced. The translator held the bytes of every
/// resource the last full translation read, and kept a replaced assignment's bytes (and its
/// piece), or `main_internal`'s, until the next full translation: under EDS pushes alone that
/// never comes, and each push left one more behind. A full translation after the pushes
/// reuses what they read, without building anything again.
#[test]
fn a_push_read_alone_lets_go_of_the_bytes_it_replaced() {
    let Published {
        full,
        mut translator,
        first,
        mut fewer,
        ..
    } = bookinfo_published();
    let changed: Wire = fewer
        .iter()
        .filter(|r| r.0 == routing::xds::ENDPOINT_TYPE && !full.contains(r))
        .cloned()
        .collect();
    assert!(!changed.is_empty());
    let replaced = |wire: &Wire, t: &str, names: &[&str]| -> Vec<(std::sync::Arc<str>, Bytes)> {
        wire.iter()
            .filter(|(ty, n, _)| *ty == t && names.contains(&&**n))
            .map(|(_, n, b)| (n.clone(), b.clone()))
            .collect()
    };
    let names: Vec<&str> = changed.iter().map(|(_, n, _)| &**n).collect();
    let old = replaced(&full, routing::xds::ENDPOINT_TYPE, &names);
    let old_main = replaced(&full, routing::xds::LISTENER_TYPE, &["main_internal"]);
    drop(full);
    // Held by this test (`old`) and by the translator.
    for (n, b) in old.iter().chain(&old_main) {
        assert!(!b.is_unique(), "the full translation holds {n}");
    }
    let t = translator
        .translate_assignments(&encoded(&changed), &TranslateOptions::default())
        .expect("a patch");
    for (n, b) in &old {
        assert!(
            b.is_unique(),
            "the EDS push read alone let go of {n}'s bytes"
        );
    }
    let mut snapshot = t.snapshot;
    snapshot.carry_over_state(&first);
    let second = std::sync::Arc::new(snapshot);
    translator.published(&second);

    // A route change read alone (`fewer`'s `main_internal` is `full`'s, encoded again).
    let chain = format!("inbound-vip|9080|http|{REVIEWS}");
    retime_wire(&mut fewer, &chain, 7);
    let main: Wire = fewer
        .iter()
        .filter(|(t, n, _)| *t == routing::xds::LISTENER_TYPE && &**n == "main_internal")
        .cloned()
        .collect();
    translator
        .translate_listener(&encoded(&main), &TranslateOptions::default())
        .expect("a route patch");
    for (n, b) in &old_main {
        assert!(
            b.is_unique(),
            "the route push read alone let go of {n}'s bytes"
        );
    }

    // The full translation that follows reads nothing again.
    let third = translate_wire(&mut translator, &fewer);
    let reuse = translator.reuse();
    assert_eq!((reuse.built, reuse.services_built), (0, 0), "{reuse:?}");
    assert_eq!(describe_wire(&third.snapshot), scratch_wire(&fewer));
}

/// A snapshot's objects and lookup tables, without its version.
pub(super) fn describe_wire(s: &routing::Snapshot) -> String {
    let mut json = s.to_json();
    json.as_object_mut().unwrap().remove("version");
    format!("{json:#}\n{:#}", s.index_json())
}

pub(super) fn scratch_wire(wire: &Wire) -> String {
    let mut res = Resources::default();
    for (t, _, bytes) in wire {
        res.push_encoded(t, bytes).unwrap();
    }
    describe_wire(
        &xds::translate(&res, &TranslateOptions::default())
            .unwrap()
            .snapshot,
    )
}

/// A route change (a VirtualService edit: istiod re-sends `main_internal` with one chain's
/// route changed) patches the published snapshot's route table of that service only; the rest
/// is shared, and the result is a translation from scratch's. Not when the chain changed more
/// than its routes.
#[test]
fn a_route_change_patches_the_published_snapshot() {
    let res = load_resources(&fixture("bookinfo.json")).unwrap();
    let full = bookinfo_wire(&res);
    let mut translator = Translator::new();
    let first = publish(&mut translator, &full, &routing::Snapshot::empty());
    let chain = format!("inbound-vip|9080|http|{REVIEWS}");
    let mut retimed = full.clone();
    retime_wire(&mut retimed, &chain, 7);

    let second = publish(&mut translator, &retimed, &first);
    let reuse = translator.reuse();
    assert!(reuse.patched, "{reuse:?}");
    assert_eq!(reuse.services_built, 0, "{reuse:?}");
    assert_eq!(describe_wire(&second), scratch_wire(&retimed));
    let vs_of = |s: &routing::Snapshot, host: &str| {
        s.virtual_services()
            .iter()
            .find(|v| v.hosts.iter().any(|h| h == host))
            .cloned()
            .unwrap()
    };
    assert_eq!(
        vs_of(&second, REVIEWS).http[0].timeout,
        Some(std::time::Duration::from_secs(7))
    );
    // Clusters and services are the published snapshot's (one list, shared).
    assert!(std::ptr::eq(
        first.services().next().unwrap(),
        second.services().next().unwrap()
    ));
    assert!(std::ptr::eq(
        first.cluster(REVIEWS, 9080, None).unwrap(),
        second.cluster(REVIEWS, 9080, None).unwrap()
    ));

    // And back, patched again.
    let third = publish(&mut translator, &full, &second);
    assert!(translator.reuse().patched);
    assert_eq!(describe_wire(&third), scratch_wire(&full));

    // A chain that loses its routes' table is more than a route change: its service is
    // assembled again and spliced in.
    let mut fewer = full.clone();
    let (_, _, bytes) = fewer
        .iter_mut()
        .find(|(t, n, _)| *t == routing::xds::LISTENER_TYPE && &**n == "main_internal")
        .unwrap();
    let mut l = envoy_types::pb::envoy::config::listener::v3::Listener::decode(&bytes[..]).unwrap();
    l.filter_chains.retain(|c| c.name != chain);
    *bytes = l.encode_to_vec().into();
    let fourth = publish(&mut translator, &fewer, &third);
    assert!(translator.reuse().patched);
    assert_eq!(translator.reuse().services_built, 1);
    assert_eq!(describe_wire(&fourth), scratch_wire(&fewer));
}

/// bookinfo's resources, each in a few versions as pushes change them (a route's timeout,
/// an endpoint fewer, a cluster's timeout): random sequences of them, every snapshot published,
/// patch after patch (and full translations where a patch cannot), always equal to a
/// translation from scratch.
mod sequences {
    use super::super::memo::{describe, from_scratch};
    use super::*;
    use proptest::prelude::*;
    use routing::xds::Encoded;

    /// Each resource (type, name) with its versions.
    type Versions = Vec<(&'static str, std::sync::Arc<str>, Vec<Bytes>)>;

    fn versions() -> &'static Versions {
        static V: std::sync::OnceLock<Versions> = std::sync::OnceLock::new();
        V.get_or_init(|| {
            let res = load_resources(&fixture("bookinfo.json")).unwrap();
            let full = bookinfo_wire(&res);
            let chain = format!("inbound-vip|9080|http|{REVIEWS}");
            full.iter()
                .map(|(t, n, bytes)| {
                    let mut list = vec![bytes.clone()];
                    if *t == routing::xds::LISTENER_TYPE && &**n == "main_internal" {
                        for secs in [7, 9] {
                            let mut w = vec![(*t, n.clone(), bytes.clone())];
                            retime_wire(&mut w, &chain, secs);
                            list.push(w.remove(0).2);
                        }
                    } else if *t == routing::xds::ENDPOINT_TYPE {
                        let mut cla = envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment::decode(&bytes[..]).unwrap();
                        if let Some(l) = cla.endpoints.first_mut() {
                            l.lb_endpoints.pop();
                        }
                        list.push(cla.encode_to_vec().into());
                    } else if *t == CLUSTER_TYPE {
                        let mut c = envoy_types::pb::envoy::config::cluster::v3::Cluster::decode(
                            &bytes[..],
                        )
                        .unwrap();
                        c.connect_timeout = Some(ProtoDuration { seconds: 3, nanos: 0 });
                        list.push(c.encode_to_vec().into());
                    }
                    (*t, n.clone(), list)
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]
        #[test]
        fn patches_equal_translations_from_scratch(
            steps in proptest::collection::vec((0..64usize, 0..3usize), 1..12),
        ) {
            let all = versions();
            let mut state: Vec<usize> = vec![0; all.len()];
            let mut translator = Translator::new();
            let mut live = std::sync::Arc::new(routing::Snapshot::empty());
            // A third of the steps change the listener (its routes), the rest any resource.
            let main = all.iter().position(|(t, n, _)| *t == routing::xds::LISTENER_TYPE && &**n == "main_internal").unwrap();
            for (i, (key, version)) in std::iter::once((64, 0)).chain(steps).enumerate() {
                let k = if key < 21 { main } else { key % all.len() };
                state[k] = version % all[k].2.len();
                let encoded: Vec<Encoded<'_>> = all
                    .iter()
                    .zip(&state)
                    .map(|((t, n, v), &s)| Encoded { type_url: t, name: n, value: &v[s] })
                    .collect();
                // An assignment changed: read alone when the translator can, as the waypoint
                // does for an EDS push of known assignments.
                // The same for `main_internal`, read alone as the waypoint does for a route push.
                let alone = if all[k].0 == routing::xds::ENDPOINT_TYPE {
                    translator.translate_assignments(&encoded[k..=k], &Default::default())
                } else if k == main {
                    translator.translate_listener(&encoded[k..=k], &Default::default())
                } else {
                    None
                };
                let mut t = match alone {
                    Some(t) => t,
                    None => translator.translate(&encoded, &Default::default()).unwrap(),
                };
                t.snapshot.carry_over_state(&live);
                let got = describe(&t);
                live = std::sync::Arc::new(t.snapshot);
                translator.published(&live);
                prop_assert_eq!(Ok(got), from_scratch(&encoded), "step {}", i);
            }
        }
    }
}
