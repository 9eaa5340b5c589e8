//! [`XdsHandler`] against istiod's shapes (the bookinfo golden fixture): a state that lacks only
//! its new clusters' assignments is deferred, not translated, and still published by the warm
//! timeout; what the translation would refuse is never deferred; an EDS push of known
//! assignments is read alone only while the translator's last translation is the handler's.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use xds_client::{type_url, Change, Handler, Payload, Resource, ResourceState, Update};

use super::state::{missing, missing_since};
use super::*;

const FIXTURE: &str = include_str!("../../../../routing/tests/fixtures/xds/bookinfo.json");
const REVIEWS: &str = "inbound-vip|9080|http|reviews.default.svc.cluster.local";
const NEW: &str = "inbound-vip|9080|http|added.default.svc.cluster.local";

fn resource<M: Message + Name>(name: &str, m: &M) -> Arc<Resource> {
    Arc::new(Resource {
        name: name.into(),
        version: "1".into(),
        value: Payload {
            type_url: M::type_url().into(),
            value: m.encode_to_vec().into(),
        },
    })
}

/// bookinfo as the client holds it once istiod sent it.
fn bookinfo() -> ResourceState {
    let res = routing::xds::json::load_resources(FIXTURE).unwrap();
    let mut state = ResourceState::default();
    for l in &res.listeners {
        state.insert(type_url::LISTENER, resource(&l.name, l));
    }
    for c in &res.clusters {
        state.insert(type_url::CLUSTER, resource(&c.name, c));
    }
    for e in &res.endpoints {
        state.insert(
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            resource(&e.cluster_name, e),
        );
    }
    state
}

/// A new service's cluster and assignment: reviews' under another name.
fn added(state: &ResourceState) -> (Cluster, ClusterLoadAssignment) {
    let decode = |t: &str| &state.get(t, REVIEWS).unwrap().value.value;
    let mut cluster = Cluster::decode(decode(type_url::CLUSTER).as_ref()).unwrap();
    cluster.name = NEW.into();
    if let Some(eds) = cluster.eds_cluster_config.as_mut() {
        eds.service_name = NEW.into();
    }
    let mut cla =
        ClusterLoadAssignment::decode(decode(type_url::CLUSTER_LOAD_ASSIGNMENT).as_ref()).unwrap();
    cla.cluster_name = NEW.into();
    (cluster, cla)
}

fn change(type_url: &str, updated: &[&str]) -> Change {
    Change {
        type_url: type_url.to_string(),
        updated: updated.iter().map(|s| s.to_string()).collect(),
        removed: Vec::new(),
    }
}

fn handler(warm_timeout: Duration) -> XdsHandler {
    XdsHandler::new(
        Arc::new(SnapshotSink::with_warm_timeout(warm_timeout)),
        TranslateOptions::default(),
        crate::telemetry::status::Status::new(),
        crate::control::dns::Dns::new_or_unconfigured(None),
    )
}

/// `changes` applied, leading to `state`.
fn apply_changes(h: &mut XdsHandler, changes: &[Change], state: &ResourceState) -> Applied {
    h.apply(&Update { changes, state }).unwrap()
}

/// `state` applied as istiod's first push of it (CDS, EDS and LDS).
fn apply_whole(h: &mut XdsHandler, state: &ResourceState) -> Applied {
    let changes = [
        change(type_url::CLUSTER, &[]),
        change(type_url::CLUSTER_LOAD_ASSIGNMENT, &[]),
        change(type_url::LISTENER, &[]),
    ];
    apply_changes(h, &changes, state)
}

/// A new cluster the translation refuses: its upstream TLS context is a malformed typed config.
fn refused_cluster(state: &ResourceState) -> Cluster {
    let (mut cluster, _) = added(state);
    cluster.transport_socket = Some(envoy_types::pb::envoy::config::core::v3::TransportSocket {
        name: "envoy.transport_sockets.tls".into(),
        config_type: Some(
            envoy_types::pb::envoy::config::core::v3::transport_socket::ConfigType::TypedConfig(
                Any {
                    type_url: "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext".into(),
                    value: vec![0xff, 0xff, 0xff],
                },
            ),
        ),
    });
    cluster
}

/// bookinfo applied and published (held: no data path in these tests).
fn served(h: &mut XdsHandler) -> ResourceState {
    let state = bookinfo();
    let applied = apply_whole(h, &state);
    assert!(applied.refused.is_empty(), "{:?}", applied.refused);
    let first = h.sink.take().expect("bookinfo is complete");
    assert!(first
        .cluster("added.default.svc.cluster.local", 9080, None)
        .is_none());
    state
}

/// `cluster` added to `state` by a response of clusters, applied.
fn push_cluster(h: &mut XdsHandler, state: &mut ResourceState, cluster: &Cluster) -> Applied {
    state.insert(type_url::CLUSTER, resource(NEW, cluster));
    let changes = [change(type_url::CLUSTER, &[NEW])];
    apply_changes(h, &changes, state)
}

/// A response with a new cluster is ACKed asking for its assignment, without a translation (the
/// state is held deferred); once the assignment arrives the state is translated and published.
#[test]
fn new_clusters_wait_for_their_assignments_untranslated() {
    let mut h = handler(Duration::from_secs(60));
    let mut state = served(&mut h);
    let (cluster, cla) = added(&state);
    let applied = push_cluster(&mut h, &mut state, &cluster);
    held_asking_for_the_new_assignment(&h, &applied);
    assert!(h.sink.take().is_none(), "nothing published");
    // Asked of the new cluster alone: only clusters changed since the published state.
    assert_eq!((h.asked, h.asked_alone), (1, 1));

    state.insert(type_url::CLUSTER_LOAD_ASSIGNMENT, resource(NEW, &cla));
    let changes = [change(type_url::CLUSTER_LOAD_ASSIGNMENT, &[NEW])];
    apply_changes(&mut h, &changes, &state);
    published_with_the_new_service(&mut h);
}

/// A new cluster that comes with a change of another type (here reviews' assignment) is asked
/// about with the whole state, not alone: only a state that changed clusters alone since the
/// published one is asked of them alone. The answer is the same.
#[test]
fn new_clusters_with_other_changes_are_asked_with_the_whole_state() {
    let mut h = handler(Duration::from_secs(60));
    let mut state = served(&mut h);
    let (cluster, _) = added(&state);
    let reviews = &state
        .get(type_url::CLUSTER_LOAD_ASSIGNMENT, REVIEWS)
        .unwrap()
        .value
        .value;
    let mut fewer = ClusterLoadAssignment::decode(reviews.as_ref()).unwrap();
    fewer.endpoints[0].lb_endpoints.pop();
    state.insert(type_url::CLUSTER_LOAD_ASSIGNMENT, resource(REVIEWS, &fewer));
    state.insert(type_url::CLUSTER, resource(NEW, &cluster));
    let changes = [
        change(type_url::CLUSTER_LOAD_ASSIGNMENT, &[REVIEWS]),
        change(type_url::CLUSTER, &[NEW]),
    ];
    let applied = apply_changes(&mut h, &changes, &state);
    held_asking_for_the_new_assignment(&h, &applied);
    assert_eq!((h.asked, h.asked_alone), (1, 0));
}

/// The state is held untranslated, and the client asked for the new assignment beside the
/// ones it had.
fn held_asking_for_the_new_assignment(h: &XdsHandler, applied: &Applied) {
    let asked = applied
        .subscriptions
        .names(type_url::CLUSTER_LOAD_ASSIGNMENT)
        .unwrap();
    assert!(asked.contains(NEW) && asked.contains(REVIEWS), "{asked:?}");
    assert!(h.sink.is_deferred(), "held untranslated");
}

/// The state is no longer deferred: published, the new service with its assignment's pods.
fn published_with_the_new_service(h: &mut XdsHandler) {
    assert!(!h.sink.is_deferred());
    let snapshot = h.sink.take().expect("complete: published");
    let c = snapshot
        .cluster("added.default.svc.cluster.local", 9080, None)
        .expect("the new service");
    assert!(!c.endpoints.is_empty(), "with the new assignment's pods");
}

/// A known cluster changed (its policy, here its EDS name) is translated at once, as before
/// deferral: only new cluster names are asked about without a translation. The state lacks the
/// new assignment, so it is held translated, not published.
#[test]
fn a_changed_known_cluster_is_translated_at_once() {
    let mut h = handler(Duration::from_secs(60));
    let mut state = served(&mut h);
    let decode = |t: &str| state.get(t, REVIEWS).unwrap().value.value.clone();
    let mut reviews = Cluster::decode(decode(type_url::CLUSTER).as_ref()).unwrap();
    let eds = reviews
        .eds_cluster_config
        .get_or_insert_with(Default::default);
    eds.service_name = "elsewhere".into();
    state.insert(type_url::CLUSTER, resource(REVIEWS, &reviews));
    let changes = [change(type_url::CLUSTER, &[REVIEWS])];
    let applied = h
        .apply(&Update {
            changes: &changes,
            state: &state,
        })
        .unwrap();
    let asked = applied
        .subscriptions
        .names(type_url::CLUSTER_LOAD_ASSIGNMENT)
        .unwrap();
    assert!(asked.contains("elsewhere"), "{asked:?}");
    assert!(!h.sink.is_deferred(), "translated, held as incomplete");
    assert!(h.sink.take().is_none(), "not published: incomplete");
}

/// A deferred state that nothing completes is translated and published at the warm timeout,
/// its new cluster without endpoints.
#[tokio::test]
async fn a_deferred_state_is_published_at_the_warm_timeout() {
    let mut h = handler(Duration::from_millis(100));
    let timer = tokio::spawn(h.sink.clone().warm_timeouts(translate_deferred(
        h.rebuild.clone(),
        h.options.clone(),
        h.dns.clone(),
        h.sink.clone(),
    )));
    let mut state = served(&mut h);
    let (cluster, _) = added(&state);
    push_cluster(&mut h, &mut state, &cluster);
    assert!(h.sink.is_deferred());
    h.sink.wait(Duration::from_secs(10)).await;
    let snapshot = h.sink.take().expect("published at the warm timeout");
    let c = snapshot
        .cluster("added.default.svc.cluster.local", 9080, None)
        .expect("the new service, translated");
    assert!(c.endpoints.is_empty());
    timer.abort();
}

/// A new cluster the translation refuses is not deferred: the response is NACKed naming it, as
/// without deferral, and the rest serves.
#[test]
fn a_refused_cluster_is_never_deferred() {
    let mut h = handler(Duration::from_secs(60));
    let mut state = served(&mut h);
    let cluster = refused_cluster(&state);
    let applied = push_cluster(&mut h, &mut state, &cluster);
    assert!(
        applied.refused.iter().any(|r| r.name == NEW),
        "refused: {:?}",
        applied.refused
    );
    assert!(!h.sink.is_deferred());
}

/// `main_internal` and an assignment, as istiod sends them after a new service's clusters (the
/// listener again, the assignment if given), applied as one update.
fn push_listener(
    h: &mut XdsHandler,
    state: &mut ResourceState,
    listener: Arc<Resource>,
    cla: Option<&ClusterLoadAssignment>,
) -> Applied {
    state.insert(type_url::LISTENER, listener);
    let mut changes = vec![change(type_url::LISTENER, &["main_internal"])];
    if let Some(cla) = cla {
        state.insert(type_url::CLUSTER_LOAD_ASSIGNMENT, resource(NEW, cla));
        changes.push(change(type_url::CLUSTER_LOAD_ASSIGNMENT, &[NEW]));
    }
    apply_changes(h, &changes, state)
}

/// A listener that arrives while a state waits is asked about (judged before the ACK, what it
/// needs subscribed) and the state keeps waiting; one that arrives together with the awaited
/// assignment is not: the state is translated at once and published.
#[test]
fn a_listener_with_the_awaited_assignments_is_translated_without_the_question() {
    let mut h = handler(Duration::from_secs(60));
    let mut state = served(&mut h);
    let (cluster, cla) = added(&state);
    push_cluster(&mut h, &mut state, &cluster);
    assert!(h.sink.is_deferred());
    let mut main = state
        .get(type_url::LISTENER, "main_internal")
        .expect("istiod's waypoint listener")
        .clone();
    // Other bytes (an unknown field, field 999 = 1, that readers skip): a listener istiod sent
    // again.
    main.value.value = [&main.value.value[..], &[0xb8, 0x3e, 0x01]].concat().into();
    let main = Arc::new(main);

    let (asked, alone) = (h.asked, h.asked_alone);
    push_listener(&mut h, &mut state, main.clone(), None);
    assert_eq!(h.asked, asked + 1, "alone: asked");
    assert_eq!(
        h.asked_alone,
        alone + 1,
        "of the new cluster and listener alone"
    );
    assert!(h.sink.is_deferred(), "still waiting for the assignment");

    let asked = h.asked;
    let applied = push_listener(&mut h, &mut state, main, Some(&cla));
    assert!(applied.refused.is_empty(), "{:?}", applied.refused);
    assert_eq!(h.asked, asked, "with the assignment: not asked");
    published_with_the_new_service(&mut h);
}

/// A listener the translation refuses, arriving with the awaited assignment, is still refused
/// (NACKed naming it) though nobody asked about it first: the translation judged it.
#[test]
fn a_refused_listener_with_the_awaited_assignments_is_refused() {
    let mut h = handler(Duration::from_secs(60));
    let mut state = served(&mut h);
    let (cluster, cla) = added(&state);
    push_cluster(&mut h, &mut state, &cluster);
    let broken = Arc::new(Resource {
        name: "main_internal".into(),
        version: "2".into(),
        value: Payload {
            type_url: type_url::LISTENER.into(),
            value: bytes::Bytes::from_static(&[0xff, 0xff, 0xff]),
        },
    });
    let applied = push_listener(&mut h, &mut state, broken, Some(&cla));
    assert!(
        applied.refused.iter().any(|r| r.name == "main_internal"),
        "refused: {:?}",
        applied.refused
    );
}

/// What a state awaits names a few assignments and counts the rest: at start-up it awaits all of
/// them, which is one log line and one readiness message, not thousands of names.
#[test]
fn what_is_awaited_names_a_few_and_counts_the_rest() {
    let mut state = bookinfo();
    let needed = routing::xds::Subscriptions {
        endpoints: (0..20).map(|i| format!("eds-{i:02}")).collect(),
        routes: ["rds-a".to_string()].into_iter().collect(),
    };
    let what = missing(&state, &needed).unwrap();
    assert_eq!(
        what,
        "EDS eds-00, eds-01, eds-02, eds-03, eds-04, eds-05, eds-06, eds-07 and 12 more; RDS rds-a"
    );
    let (_, cla) = added(&state);
    for i in 0..18 {
        state.insert(
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            resource(&format!("eds-{i:02}"), &cla),
        );
    }
    let needed = routing::xds::Subscriptions {
        routes: Default::default(),
        ..needed
    };
    assert_eq!(missing(&state, &needed).unwrap(), "EDS eds-18, eds-19");
    // Held names around an absent one, and one past the last held name.
    let held = "inbound-vip|9080|http|reviews.default.svc.cluster.local";
    assert!(state.get(type_url::CLUSTER_LOAD_ASSIGNMENT, held).is_some());
    let needed = routing::xds::Subscriptions {
        endpoints: [
            "eds-00",
            held,
            "inbound-vip|9080|http|nowhere.default.svc.cluster.local",
            "zz-last",
        ]
        .map(String::from)
        .into_iter()
        .collect(),
        routes: Default::default(),
    };
    assert_eq!(
        missing(&state, &needed).unwrap(),
        "EDS inbound-vip|9080|http|nowhere.default.svc.cluster.local, zz-last"
    );
}

/// What a state made from a published one lacks, found from what changed since (names the
/// subscriptions added, resources gone), is what a look at every name finds.
#[test]
fn what_is_awaited_is_found_from_what_changed() {
    let good = bookinfo();
    let held: Vec<String> = good
        .resources(type_url::CLUSTER_LOAD_ASSIGNMENT)
        .map(|r| r.name.to_string())
        .collect();
    let subscribed = routing::xds::Subscriptions {
        endpoints: held.iter().cloned().collect(),
        routes: Default::default(),
    };
    let base = state::client_subscriptions(&subscribed);
    assert_eq!(missing(&good, &subscribed), None, "the base lacks nothing");
    let mut state = good.clone();
    let (_, cla) = added(&state);
    // Two names added, one of them held; one held assignment gone; an RDS name added.
    state.insert(type_url::CLUSTER_LOAD_ASSIGNMENT, resource("a-held", &cla));
    state.remove(type_url::CLUSTER_LOAD_ASSIGNMENT, &held[1]);
    let mut needed = subscribed.clone();
    needed
        .endpoints
        .extend(["a-held".to_string(), NEW.to_string()]);
    needed.routes.insert("rds-a".into());
    let found = missing_since(&state, &needed, (&good, &base));
    assert_eq!(found, missing(&state, &needed));
    assert_eq!(found.unwrap(), format!("EDS {}, {NEW}; RDS rds-a", held[1]));
    // No longer needed, the gone one is not awaited.
    needed.endpoints.remove(held[1].as_str());
    let found = missing_since(&state, &needed, (&good, &base));
    assert_eq!(found, missing(&state, &needed));
}

/// bookinfo applied and served as by a running data path: the translator sees it live.
fn live(h: &mut XdsHandler) -> ResourceState {
    let state = bookinfo();
    apply_whole(h, &state);
    h.sink.serve_for_tests();
    state
}

/// reviews' pod of `subset` gone from the service's assignment and the subset's (an EDS push of
/// those two): what the translator reused and built for it, and how many endpoints reviews has
/// in the live snapshot.
fn push_reviews_without(
    h: &mut XdsHandler,
    state: &mut ResourceState,
    subset: &str,
) -> (routing::xds::Reuse, usize) {
    let cla = |state: &ResourceState, name: &str| {
        let bytes = &state
            .get(type_url::CLUSTER_LOAD_ASSIGNMENT, name)
            .unwrap()
            .value
            .value;
        ClusterLoadAssignment::decode(bytes.as_ref()).unwrap()
    };
    let of_subset = REVIEWS.replace("http|", &format!("http/{subset}|"));
    let gone = cla(state, &of_subset).endpoints[0].lb_endpoints[0]
        .host_identifier
        .clone();
    let mut names = Vec::new();
    for name in [REVIEWS, of_subset.as_str()] {
        let mut a = cla(state, name);
        for l in &mut a.endpoints {
            l.lb_endpoints.retain(|e| e.host_identifier != gone);
        }
        state.insert(type_url::CLUSTER_LOAD_ASSIGNMENT, resource(name, &a));
        names.push(name);
    }
    let changes = [change(type_url::CLUSTER_LOAD_ASSIGNMENT, &names)];
    apply_changes(h, &changes, state);
    let reuse = h.rebuild.lock().translator.reuse();
    (reuse, reviews_pods(h))
}

/// The endpoints of reviews' cluster in the live snapshot.
fn reviews_pods(h: &XdsHandler) -> usize {
    let live = h.sink.live().unwrap();
    let reviews = live.cluster("reviews.default.svc.cluster.local", 9080, None);
    reviews.unwrap().endpoints.len()
}

/// An EDS push of a known assignment, after a state published whole, is read alone: one piece
/// built, nothing else read (a patch through the full path reads every piece), and the live
/// snapshot has the pod fewer. Twice: the second follows the first patch.
#[test]
fn an_eds_push_of_a_known_assignment_is_read_alone() {
    let mut h = handler(Duration::from_secs(60));
    let mut state = live(&mut h);
    let before = reviews_pods(&h);
    for (k, subset) in [(1, "v1"), (2, "v2")] {
        let (reuse, pods) = push_reviews_without(&mut h, &mut state, subset);
        assert!(reuse.patched, "{reuse:?}");
        assert_eq!((reuse.built, reuse.reused), (2, 0), "read alone: {reuse:?}");
        assert_eq!(pods, before - k);
    }
}

/// Not read alone when the translator translated something else since (a DNS rebuild, a
/// deferred state's warm timeout), nor after a state that had a resource refused: translated
/// through the full path (still patched, every piece read), with the same result.
#[test]
fn an_eds_push_is_read_whole_after_another_translation_or_a_refusal() {
    let mut h = handler(Duration::from_secs(60));
    let mut state = live(&mut h);
    let before = reviews_pods(&h);
    {
        let mut latest = h.rebuild.lock();
        let last = latest.state.clone().unwrap();
        let mut options = h.options.clone();
        let (dns, sink) = (h.dns.clone(), h.sink.clone());
        let t = translate_again(&mut latest.translator, &last, &mut options, &dns, &sink);
        // Published, as a DNS rebuild publishes what it translated.
        h.sink.offer(t.unwrap().snapshot);
    }
    let (reuse, pods) = push_reviews_without(&mut h, &mut state, "v1");
    assert!(reuse.reused > 2, "read whole: {reuse:?}");
    assert_eq!(pods, before - 1);
    // Read alone again after that full translation.
    let (reuse, _) = push_reviews_without(&mut h, &mut state, "v2");
    assert_eq!((reuse.built, reuse.reused), (2, 0), "{reuse:?}");

    // A new cluster refused (a TLS context that does not decode): the state that serves is not
    // the client's, so the next push is read whole.
    let cluster = refused_cluster(&state);
    let applied = push_cluster(&mut h, &mut state, &cluster);
    assert!(applied.refused.iter().any(|r| r.name == NEW));
    let (reuse, pods) = push_reviews_without(&mut h, &mut state, "v3");
    assert!(reuse.reused > 2, "read whole: {reuse:?}");
    assert_eq!(pods, before - 3);
}

/// Not read alone after a state that holds an assignment nothing subscribes to: the client drops
/// it once the state is accepted, so its state is no longer the one translated.
#[test]
fn an_eds_push_is_read_whole_after_a_state_with_an_unsubscribed_assignment() {
    let mut h = handler(Duration::from_secs(60));
    let mut state = bookinfo();
    let (_, mut orphan) = added(&state);
    orphan.cluster_name = "inbound-vip|9080|http|orphan.default.svc.cluster.local".into();
    state.insert(
        type_url::CLUSTER_LOAD_ASSIGNMENT,
        resource(&orphan.cluster_name, &orphan),
    );
    let applied = apply_whole(&mut h, &state);
    let asked = applied
        .subscriptions
        .names(type_url::CLUSTER_LOAD_ASSIGNMENT);
    assert!(!asked.unwrap().contains(orphan.cluster_name.as_str()));
    h.sink.serve_for_tests();
    let before = reviews_pods(&h);
    let (reuse, pods) = push_reviews_without(&mut h, &mut state, "v1");
    assert!(reuse.reused > 2, "read whole: {reuse:?}");
    assert_eq!(pods, before - 1);
}
