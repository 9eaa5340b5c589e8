//! Responses that arrive back to back are judged together: one handler call, each response
//! still ACKed or NACKed on its own.

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    Resource as DeltaResource,
};
use tokio::sync::watch;

use super::{cluster, endpoints, listener, node, TestHandler};
use crate::session::{ready_after, Core, MAX_BATCH};
use crate::{type_url, ClientConfig, Mode, Status};

fn core(handler: &TestHandler, mode: Mode) -> Core<TestHandler> {
    let mut cfg = ClientConfig::new("https://127.0.0.1:15012", Vec::new(), node());
    cfg.mode = mode;
    let (status, _) = watch::channel(Status::default());
    Core::new(cfg, handler.clone(), status)
}

fn delta(
    type_url: &str,
    nonce: &str,
    resources: Vec<(&str, envoy_types::pb::google::protobuf::Any)>,
) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse {
        type_url: type_url.to_string(),
        nonce: nonce.to_string(),
        system_version_info: format!("v-{nonce}"),
        resources: resources
            .into_iter()
            .map(|(name, any)| DeltaResource {
                name: name.to_string(),
                version: "1".into(),
                resource: Some(any),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// A Delta CDS response of the clusters `names` (EDS clusters if `eds`).
fn cds(nonce: &str, names: &[&str], eds: bool) -> DeltaDiscoveryResponse {
    let clusters = names.iter().map(|n| (*n, cluster(n, eds))).collect();
    delta(type_url::CLUSTER, nonce, clusters)
}

/// A Delta LDS response of `main_internal`.
fn lds(nonce: &str) -> DeltaDiscoveryResponse {
    let main = "main_internal";
    delta(type_url::LISTENER, nonce, vec![(main, listener(main))])
}

/// (type, nonce, NACK reason) of each answer to a response, in order.
fn answers(requests: &[DeltaDiscoveryRequest]) -> Vec<(String, String, Option<String>)> {
    requests
        .iter()
        .filter(|r| !r.response_nonce.is_empty())
        .map(|r| {
            (
                type_url::short(&r.type_url).to_string(),
                r.response_nonce.clone(),
                r.error_detail.as_ref().map(|d| d.message.clone()),
            )
        })
        .collect()
}

fn ack(short: &str, nonce: &str) -> (String, String, Option<String>) {
    (short.to_string(), nonce.to_string(), None)
}

#[test]
fn a_push_of_three_types_is_judged_once_and_each_response_acked() {
    let handler = TestHandler::default();
    let mut core = core(&handler, Mode::Delta);
    let requests =
        crate::delta::answer_together(&mut core, vec![cds("c1", &["reviews"], true), lds("l1")]);
    assert_eq!(
        handler.0.lock().batches,
        vec![2],
        "one call for both responses"
    );
    assert_eq!(
        answers(&requests),
        vec![ack("Cluster", "c1"), ack("Listener", "l1")]
    );
    // The EDS subscription the handler asked for follows the ACKs, once.
    let subscribe: Vec<_> = requests
        .iter()
        .filter(|r| r.response_nonce.is_empty())
        .map(|r| {
            (
                type_url::short(&r.type_url).to_string(),
                r.resource_names_subscribe.clone(),
            )
        })
        .collect();
    assert_eq!(
        subscribe,
        vec![(
            "ClusterLoadAssignment".to_string(),
            vec!["reviews".to_string()]
        )]
    );
    // EDS arrives next, with two CDS responses right behind it: all three in one call, the
    // second CDS applied on top of the first.
    let requests = crate::delta::answer_together(
        &mut core,
        vec![
            delta(
                type_url::CLUSTER_LOAD_ASSIGNMENT,
                "e1",
                vec![("reviews", endpoints("reviews"))],
            ),
            cds("c2", &["ratings"], true),
            cds("c3", &["details"], false),
        ],
    );
    assert_eq!(handler.0.lock().batches, vec![2, 3]);
    assert_eq!(
        answers(&requests),
        vec![
            ack("ClusterLoadAssignment", "e1"),
            ack("Cluster", "c2"),
            ack("Cluster", "c3")
        ]
    );
    assert_eq!(
        handler.names(type_url::CLUSTER),
        vec!["details", "ratings", "reviews"]
    );
}

/// An assignment nobody subscribes to (a response crossing an unsubscribe) is not kept, even
/// when the subscriptions are the very set they were (only what the response brought is looked
/// at then).
#[test]
fn what_arrives_unsubscribed_is_dropped_when_the_subscriptions_are_unchanged() {
    let handler = TestHandler::default();
    let mut core = core(&handler, Mode::Delta);
    crate::delta::answer_together(&mut core, vec![cds("c1", &["reviews"], true)]);
    let eds = |nonce: &str, names: &[&str]| {
        let assignments = names.iter().map(|n| (*n, endpoints(n))).collect();
        delta(type_url::CLUSTER_LOAD_ASSIGNMENT, nonce, assignments)
    };
    let requests =
        crate::delta::answer_together(&mut core, vec![eds("e1", &["reviews", "ratings"])]);
    assert_eq!(answers(&requests), vec![ack("ClusterLoadAssignment", "e1")]);
    let held: Vec<&str> = core
        .accepted
        .resources(type_url::CLUSTER_LOAD_ASSIGNMENT)
        .map(|r| &*r.name)
        .collect();
    assert_eq!(held, ["reviews"]);
    // The handler was offered both; what it subscribes to is all that is kept.
    assert_eq!(
        handler.names(type_url::CLUSTER_LOAD_ASSIGNMENT),
        ["ratings", "reviews"]
    );
}

#[test]
fn responses_of_one_type_fold_in_order_and_a_refusal_goes_to_the_response_that_sent_it() {
    let handler = TestHandler::default();
    handler.refuse_alone("bad");
    let mut core = core(&handler, Mode::Delta);
    let mut removal = delta(type_url::CLUSTER, "c3", vec![]);
    removal.removed_resources.push("gone".into());
    let requests = crate::delta::answer_together(
        &mut core,
        vec![
            cds("c1", &["good", "gone"], false),
            cds("c2", &["bad"], false),
            removal,
        ],
    );
    assert_eq!(handler.0.lock().batches, vec![3]);
    let offered = handler.0.lock().offered.clone();
    let changed: Vec<(Vec<String>, Vec<String>)> =
        offered.into_iter().map(|(_, u, r)| (u, r)).collect();
    assert_eq!(
        changed,
        vec![
            (vec!["good".to_string(), "gone".to_string()], vec![]),
            (vec!["bad".to_string()], vec![]),
            (vec![], vec!["gone".to_string()]),
        ]
    );
    let answers = answers(&requests);
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert_eq!(answers[0], ack("Cluster", "c1"));
    assert_eq!(answers[1].1, "c2");
    assert!(
        answers[1].2.as_deref().is_some_and(|m| m.contains("bad")),
        "{answers:?}"
    );
    assert_eq!(answers[2], ack("Cluster", "c3"));
    assert_eq!(handler.names(type_url::CLUSTER), vec!["bad", "good"]);
}

#[test]
fn a_group_rejected_whole_is_judged_again_response_by_response() {
    let handler = TestHandler::default();
    handler.reject("bad");
    let mut core = core(&handler, Mode::Delta);
    let requests =
        crate::delta::answer_together(&mut core, vec![cds("c1", &["bad"], false), lds("l1")]);
    // Together (rejected: the cluster), then the cluster alone (NACK), the listener alone (ACK).
    assert_eq!(handler.0.lock().batches, vec![2, 1, 1]);
    let answers = answers(&requests);
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert_eq!(
        (answers[0].0.as_str(), answers[0].1.as_str()),
        ("Cluster", "c1")
    );
    assert!(
        answers[0]
            .2
            .as_deref()
            .is_some_and(|m| m.contains("bad") && m.contains("refused by the test")),
        "{answers:?}"
    );
    assert_eq!(answers[1], ack("Listener", "l1"));
    assert_eq!(handler.names(type_url::LISTENER), vec!["main_internal"]);
    assert!(handler.names(type_url::CLUSTER).is_empty());
}

#[test]
fn what_the_handler_refuses_is_nacked_on_its_own_response_only() {
    let handler = TestHandler::default();
    handler.refuse_alone("bad");
    let mut core = core(&handler, Mode::Delta);
    let requests = crate::delta::answer_together(
        &mut core,
        vec![cds("c1", &["bad", "good"], false), lds("l1")],
    );
    assert_eq!(handler.0.lock().batches, vec![2]);
    let answers = answers(&requests);
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(
        answers[0].2.as_deref().is_some_and(|m| m.contains("bad")),
        "{answers:?}"
    );
    assert_eq!(answers[1], ack("Listener", "l1"));
}

#[test]
fn a_response_the_client_refuses_splits_the_group_and_is_nacked_alone() {
    let handler = TestHandler::default();
    let mut core = core(&handler, Mode::Delta);
    let mut nameless = delta(type_url::LISTENER, "l1", vec![]);
    nameless.resources.push(DeltaResource::default());
    let requests = crate::delta::answer_together(
        &mut core,
        vec![cds("c1", &["reviews"], true), nameless, lds("l2")],
    );
    // The cluster is judged before the refused listener response is answered, the next
    // listener response after it.
    assert_eq!(handler.0.lock().batches, vec![1, 1]);
    let answers = answers(&requests);
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert_eq!(answers[0], ack("Cluster", "c1"));
    assert_eq!(
        (answers[1].1.as_str(), answers[1].2.as_deref()),
        ("l1", Some("Listener #0: no name"))
    );
    assert_eq!(answers[2], ack("Listener", "l2"));
}

#[test]
fn state_of_the_world_acks_each_response_of_a_group_with_its_version() {
    let handler = TestHandler::default();
    let mut core = core(&handler, Mode::StateOfTheWorld);
    let response = |type_url: &str, version: &str, any| DiscoveryResponse {
        type_url: type_url.to_string(),
        version_info: version.to_string(),
        nonce: format!("n-{version}"),
        resources: vec![any],
        ..Default::default()
    };
    let requests: Vec<DiscoveryRequest> = crate::sotw::answer_together(
        &mut core,
        vec![
            response(type_url::CLUSTER, "c7", cluster("reviews", false)),
            response(type_url::LISTENER, "l3", listener("main_internal")),
        ],
    );
    assert_eq!(handler.0.lock().batches, vec![2]);
    let acks: Vec<_> = requests
        .iter()
        .map(|r| {
            (
                type_url::short(&r.type_url).to_string(),
                r.version_info.clone(),
                r.response_nonce.clone(),
                r.error_detail.is_some(),
            )
        })
        .collect();
    assert_eq!(
        acks,
        vec![
            (
                "Cluster".to_string(),
                "c7".to_string(),
                "n-c7".to_string(),
                false
            ),
            (
                "Listener".to_string(),
                "l3".to_string(),
                "n-l3".to_string(),
                false
            ),
        ]
    );
}

#[test]
fn responses_already_received_are_taken_together_up_to_the_limit() {
    let items = (0..MAX_BATCH + 3).map(Ok::<usize, tonic::Status>);
    let mut inbound = futures::stream::iter(items);
    let (first, end) = ready_after(&mut inbound, 100);
    assert_eq!(first.len(), MAX_BATCH);
    assert_eq!(first[..3], [100, 0, 1]);
    assert!(end.is_none());
    let (rest, end) = ready_after(&mut inbound, 200);
    assert_eq!(
        rest,
        vec![200, MAX_BATCH - 1, MAX_BATCH, MAX_BATCH + 1, MAX_BATCH + 2]
    );
    assert!(
        matches!(end, Some(crate::StreamError::Closed)),
        "the end of the stream comes after the batch"
    );
    // A response still on its way is not waited for.
    let mut pending = futures::stream::pending::<Result<usize, tonic::Status>>();
    let (alone, end) = ready_after(&mut pending, 1);
    assert_eq!((alone, end.is_none()), (vec![1], true));
}

/// One random Delta response: upserts of (name, content) and removals, for one of two types.
fn arb_response() -> impl proptest::strategy::Strategy<Value = (bool, Vec<(u8, u8)>, Vec<u8>)> {
    use proptest::prelude::*;
    (
        any::<bool>(),
        proptest::collection::vec((0u8..6, 0u8..3), 0..4),
        proptest::collection::vec(0u8..6, 0..3),
    )
}

fn to_delta(
    i: usize,
    (listeners, upserts, removals): &(bool, Vec<(u8, u8)>, Vec<u8>),
) -> DeltaDiscoveryResponse {
    let type_url = if *listeners {
        type_url::LISTENER
    } else {
        type_url::CLUSTER
    };
    let mut r = DeltaDiscoveryResponse {
        type_url: type_url.to_string(),
        nonce: format!("n{i}"),
        system_version_info: format!("v{i}"),
        ..Default::default()
    };
    for (name, content) in upserts {
        let name = format!("r{name}");
        // The content differs by a field other than the name, so equal names with other
        // content are other bytes.
        let any = if *listeners {
            super::any(&envoy_types::pb::envoy::config::listener::v3::Listener {
                name: name.clone(),
                stat_prefix: format!("c{content}"),
                ..Default::default()
            })
        } else {
            super::any(&envoy_types::pb::envoy::config::cluster::v3::Cluster {
                name: name.clone(),
                alt_stat_name: format!("c{content}"),
                ..Default::default()
            })
        };
        r.resources.push(DeltaResource {
            name,
            version: format!("{content}"),
            resource: Some(any),
            ..Default::default()
        });
    }
    r.removed_resources = removals.iter().map(|n| format!("r{n}")).collect();
    r
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 128, ..Default::default() })]

    /// Judged together or one at a time, the same responses leave the same accepted state, and
    /// every response is ACKed either way (the handler accepts everything here).
    #[test]
    fn judged_together_equals_one_at_a_time(
        responses in proptest::collection::vec(arb_response(), 1..12)
    ) {
        let together = TestHandler::default();
        let mut core_together = core(&together, Mode::Delta);
        let batch = responses.iter().enumerate().map(|(i, r)| to_delta(i, r)).collect();
        let acks_together = answers(&crate::delta::answer_together(&mut core_together, batch));

        let alone = TestHandler::default();
        let mut core_alone = core(&alone, Mode::Delta);
        let mut acks_alone = Vec::new();
        for (i, r) in responses.iter().enumerate() {
            acks_alone.extend(answers(&crate::delta::answer_together(&mut core_alone, vec![to_delta(i, r)])));
        }
        proptest::prop_assert_eq!(&core_together.accepted, &core_alone.accepted);
        proptest::prop_assert_eq!(acks_together, acks_alone);
        proptest::prop_assert_eq!(together.0.lock().batches.clone(), vec![responses.len()]);
        // What each response changed is what it changed when it came alone.
        proptest::prop_assert_eq!(together.0.lock().offered.clone(), alone.0.lock().offered.clone());
    }
}

#[test]
fn a_heartbeat_for_what_an_earlier_response_of_the_group_added_is_accepted() {
    let handler = TestHandler::default();
    let mut core = core(&handler, Mode::Delta);
    let heartbeat = |nonce: &str, name: &str| {
        let mut r = delta(type_url::CLUSTER, nonce, vec![]);
        r.resources.push(DeltaResource {
            name: name.to_string(),
            version: "1".into(),
            ..Default::default()
        });
        r
    };
    let requests = crate::delta::answer_together(
        &mut core,
        vec![
            cds("c1", &["kept"], false),
            heartbeat("c2", "kept"),
            heartbeat("c3", "never-sent"),
        ],
    );
    let answers = answers(&requests);
    assert_eq!(answers.len(), 3, "{answers:?}");
    assert_eq!(answers[0], ack("Cluster", "c1"));
    assert_eq!(answers[1], ack("Cluster", "c2"));
    assert_eq!(
        (answers[2].1.as_str(), answers[2].2.as_deref()),
        ("c3", Some("Cluster never-sent: no resource payload"))
    );
    assert_eq!(handler.names(type_url::CLUSTER), vec!["kept"]);
}

/// When the subscriptions change, what the new set no longer has is dropped (found from the
/// two sets' difference), and so is what arrives unsubscribed; what both sets have stays.
#[test]
fn what_the_subscriptions_drop_is_forgotten_and_the_rest_kept() {
    let handler = TestHandler::default();
    let mut core = core(&handler, Mode::Delta);
    crate::delta::answer_together(
        &mut core,
        vec![cds("c1", &["details", "ratings", "reviews"], true)],
    );
    let eds = |nonce: &str, names: &[&str]| {
        let assignments = names.iter().map(|n| (*n, endpoints(n))).collect();
        delta(type_url::CLUSTER_LOAD_ASSIGNMENT, nonce, assignments)
    };
    crate::delta::answer_together(
        &mut core,
        vec![eds("e1", &["details", "ratings", "reviews"])],
    );
    let held = |core: &crate::session::Core<TestHandler>| -> Vec<String> {
        core.accepted
            .resources(type_url::CLUSTER_LOAD_ASSIGNMENT)
            .map(|r| r.name.to_string())
            .collect()
    };
    assert_eq!(held(&core), ["details", "ratings", "reviews"]);
    // `ratings` goes from the clusters while an unsubscribed assignment crosses it.
    let mut removal = delta(type_url::CLUSTER, "c2", vec![]);
    removal.removed_resources.push("ratings".into());
    crate::delta::answer_together(&mut core, vec![removal, eds("e2", &["unasked"])]);
    assert_eq!(held(&core), ["details", "reviews"]);
}

/// An assignment holds its cluster's name string, whether the cluster came before it or in the
/// same group; a cluster's name is its own.
#[test]
fn an_assignment_takes_its_clusters_name_string() {
    let handler = TestHandler::default();
    let mut core = core(&handler, Mode::Delta);
    let eds = |nonce: &str, name: &str| {
        delta(
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            nonce,
            vec![(name, endpoints(name))],
        )
    };
    crate::delta::answer_together(&mut core, vec![cds("c1", &["reviews"], true)]);
    crate::delta::answer_together(&mut core, vec![eds("e1", "reviews")]);
    crate::delta::answer_together(
        &mut core,
        vec![cds("c2", &["ratings"], true), eds("e2", "ratings")],
    );
    let held = |type_url: &str, name: &str| {
        let r = core.accepted.get_shared(type_url, name).expect(name);
        r.name.clone()
    };
    for name in ["reviews", "ratings"] {
        let cluster = held(type_url::CLUSTER, name);
        let assignment = held(type_url::CLUSTER_LOAD_ASSIGNMENT, name);
        assert_eq!(*assignment, *name);
        assert!(std::sync::Arc::ptr_eq(&cluster, &assignment), "{name}");
    }
}
