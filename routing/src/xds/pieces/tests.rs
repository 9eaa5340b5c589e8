use super::*;
use crate::ClusterPolicy;
use envoy_types::pb::envoy::config::core::v3::{
    address, socket_address, Address, Metadata, SocketAddress,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};

/// An assignment of pods `ips` of workload `rev` (istiod's `istio.workload` metadata).
pub(crate) fn cla(name: &str, ips: &[&str], rev: &str) -> ClusterLoadAssignment {
    let pod = |ip: &str| {
        let workload = format!("reviews-{rev};default;reviews;{rev};Kubernetes");
        let istio = Struct {
            fields: [(
                "workload".to_string(),
                Value {
                    kind: Some(Kind::StringValue(workload)),
                },
            )]
            .into(),
        };
        LbEndpoint {
            host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                address: Some(Address {
                    address: Some(address::Address::SocketAddress(SocketAddress {
                        address: ip.to_string(),
                        port_specifier: Some(socket_address::PortSpecifier::PortValue(9080)),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })),
            metadata: Some(Metadata {
                filter_metadata: [("istio".to_string(), istio)].into(),
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    ClusterLoadAssignment {
        cluster_name: name.to_string(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: ips.iter().map(|ip| pod(ip)).collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn encoded<'a>(name: &'a Arc<str>, bytes: &'a bytes::Bytes) -> Encoded<'a> {
    Encoded {
        type_url: ENDPOINT_TYPE,
        name,
        value: bytes,
    }
}

/// A resource whose bytes are the very ones the last walk read, in the same place, gives
/// the same piece without a digest or a lookup; equal bytes elsewhere in memory are found
/// by digest, other bytes rebuilt; what is gone is forgotten, also from the middle.
#[test]
fn the_walk_knows_the_very_same_bytes() {
    use prost::Message;
    let names: Vec<Arc<str>> = (0..20).map(|i| format!("svc-{i:02}").into()).collect();
    let payloads: Vec<bytes::Bytes> = names
        .iter()
        .map(|n| cla(n, &["10.0.0.1"], "v1").encode_to_vec().into())
        .collect();
    fn state<'a>(
        (names, payloads): (&'a [Arc<str>], &'a [bytes::Bytes]),
        skip: Option<usize>,
        swap: Option<(usize, &'a bytes::Bytes)>,
    ) -> Vec<Encoded<'a>> {
        let mut out = Vec::new();
        for (i, (n, b)) in names.iter().zip(payloads).enumerate() {
            if skip != Some(i) {
                out.push(match swap {
                    Some((j, other)) if j == i => encoded(n, other),
                    _ => encoded(n, b),
                });
            }
        }
        out
    }
    let all = (&names[..], &payloads[..]);
    let mut memo = Memo::default();
    let first = memo.pieces(&state(all, None, None)).unwrap();
    assert_eq!((memo.built, memo.reused, memo.same_bytes), (20, 0, 0));

    let again = memo.pieces(&state(all, None, None)).unwrap();
    assert_eq!((memo.built, memo.reused, memo.same_bytes), (0, 20, 20));
    assert!(first
        .assignments
        .iter()
        .zip(&again.assignments)
        .all(|(a, b)| Arc::ptr_eq(a, b)));

    // A copy of the same bytes at another address: found by digest, not by the walk.
    let copy = bytes::Bytes::copy_from_slice(&payloads[7]);
    let copied = memo.pieces(&state(all, None, Some((7, &copy)))).unwrap();
    assert_eq!((memo.built, memo.reused, memo.same_bytes), (0, 20, 19));
    assert!(Arc::ptr_eq(&copied.assignments[7], &first.assignments[7]));

    // Other bytes: rebuilt; the rest still known by the walk.
    let changed: bytes::Bytes = cla("svc-07", &["10.0.0.2"], "v1").encode_to_vec().into();
    let rebuilt = memo.pieces(&state(all, None, Some((7, &changed)))).unwrap();
    assert_eq!((memo.built, memo.reused, memo.same_bytes), (1, 19, 19));
    assert_eq!(rebuilt.assignments[7].pods[0].ip.to_string(), "10.0.0.2");

    // One gone from the middle: forgotten; the walk finds the rest past it.
    memo.pieces(&state(all, Some(3), Some((7, &changed))))
        .unwrap();
    assert_eq!((memo.built, memo.reused, memo.same_bytes), (0, 19, 19));
    assert!(!memo.assignments.contains_key(&name_key("svc-03")));
    assert_eq!(memo.assignments.len(), 19);
    // Back: built again (it was forgotten), the others known.
    memo.pieces(&state(all, None, Some((7, &changed)))).unwrap();
    assert_eq!((memo.built, memo.reused, memo.same_bytes), (1, 19, 19));
}

/// Pods with the same labels share one map, across assignments (a pod is in its service's
/// assignment and its subset's); maps no piece holds are let go.
/// Assignments decoded together share equal pods (a service's subsets list its pods again),
/// equal label maps and names; a pod that differs is its own.
#[test]
fn assignments_share_equal_pods_and_pod_label_maps() {
    let mut labels = LabelMaps::default();
    let mut share = PodShare::default();
    let mut build = |name: &str, ips: &[&str], version: &str| {
        let cla = cla(name, ips, version);
        AssignmentPiece::build(&cla, &name.into(), &mut labels, &mut share)
    };
    let all = build("all", &["10.0.0.1", "10.0.0.2", "10.0.0.3"], "v1");
    let v1 = build("v1", &["10.0.0.1", "10.0.0.2"], "v1");
    let v2 = build("v2", &["10.0.0.4"], "v2");
    // The same address with another workload is another pod.
    let moved = build("moved", &["10.0.0.1"], "v2");
    drop(share);
    assert!(Arc::ptr_eq(&all.pods[0], &v1.pods[0]));
    assert!(Arc::ptr_eq(&all.pods[1], &v1.pods[1]));
    assert!(!Arc::ptr_eq(&all.pods[0], &moved.pods[0]));
    assert_ne!(all.pods[0].workload(), moved.pods[0].workload());
    // One namespace string for the pods of a decoding, whichever workload.
    let ns = |p: &AssignmentPiece, i: usize| p.pods[i].namespace().cloned().unwrap();
    assert_eq!(&*ns(&all, 0), "default");
    assert!(Arc::ptr_eq(&ns(&all, 0), &ns(&all, 2)));
    assert!(Arc::ptr_eq(&ns(&all, 0), &ns(&v2, 0)));
    assert!(Arc::ptr_eq(&ns(&all, 0), &ns(&moved, 0)));
    // One record for the replicas of a workload.
    let who = |p: &AssignmentPiece, i: usize| p.pods[i].who.clone().unwrap();
    assert_eq!(who(&all, 0).workload.as_deref(), Some("reviews-v1"));
    assert!(Arc::ptr_eq(&who(&all, 0), &who(&all, 2)));
    assert!(!Arc::ptr_eq(&who(&all, 0), &who(&v2, 0)));
    let map = |p: &AssignmentPiece, i: usize| p.pods[i].labels.clone();
    assert_eq!(
        map(&all, 0).get("service.istio.io/canonical-revision"),
        Some("v1")
    );
    assert!(Arc::ptr_eq(&map(&all, 0), &map(&all, 2)));
    assert!(Arc::ptr_eq(&map(&all, 0), &map(&v1, 1)));
    assert!(!Arc::ptr_eq(&map(&all, 0), &map(&v2, 0)));
    assert_eq!(labels.len(), 2);
    drop((all, v1));
    labels.prune();
    assert_eq!(labels.len(), 1, "v1's map is let go, v2's kept");
}

/// istiod gives a waypoint's clusters one policy: the pieces of bookinfo's inbound clusters
/// hold one allocation of it, not a copy each (448 bytes), and a different policy its own.
#[test]
fn cluster_pieces_share_equal_policies() {
    let json = include_str!("../../../tests/fixtures/xds/bookinfo.json");
    let res = crate::xds::json::load_resources(json).unwrap();
    let policies: Vec<(Arc<str>, Arc<ClusterPolicy>)> = res
        .clusters
        .iter()
        .map(|c| ClusterPiece::build(c, &c.name.as_str().into()))
        .filter_map(|p| match p.role {
            ClusterRole::Service { cluster, .. } => Some((p.name, cluster.policy)),
            _ => None,
        })
        .collect();
    assert!(policies.len() >= 4, "{policies:?}");
    let (first, rest) = policies.split_first().unwrap();
    for (name, p) in rest.iter().filter(|(_, p)| **p == *first.1) {
        assert!(Arc::ptr_eq(p, &first.1), "{name} has its own copy");
    }
    assert!(rest.iter().any(|(_, p)| Arc::ptr_eq(p, &first.1)));
    let mut other = res.clusters[0].clone();
    other.connect_timeout = Some(envoy_types::pb::google::protobuf::Duration {
        seconds: 77,
        nanos: 0,
    });
    if let ClusterRole::Service { cluster, .. } =
        ClusterPiece::build(&other, &other.name.as_str().into()).role
    {
        assert!(!Arc::ptr_eq(&cluster.policy, &first.1));
    }
}

/// An EDS cluster's piece names the assignment it needs once: the piece's `eds` and its
/// role's source are one string (at 5 000 services, 15 000 names of some 60 bytes), and the
/// name is the assignment's. istiod names the assignment after the cluster (its `service_name`
/// is the cluster's name), and then that string is the one the xDS client holds the cluster
/// under; an assignment's piece likewise holds the client's string.
#[test]
fn a_cluster_piece_names_its_assignment_once() {
    let json = include_str!("../../../tests/fixtures/xds/bookinfo.json");
    let res = crate::xds::json::load_resources(json).unwrap();
    let mut eds = 0;
    for c in &res.clusters {
        let held: Arc<str> = c.name.as_str().into();
        let p = ClusterPiece::build(c, &held);
        assert!(Arc::ptr_eq(&p.name, &held), "{held}");
        if let ClusterRole::Service { cluster, .. } = &p.role {
            if let crate::xds::cluster::EndpointSource::Eds(source) = &cluster.source {
                let named = p.eds.as_ref().expect("an EDS cluster's piece names it");
                assert!(Arc::ptr_eq(named, source), "{}", p.name);
                assert_eq!(
                    &**named,
                    crate::xds::cluster::eds_name(c, &held).unwrap().as_ref()
                );
                assert_eq!(
                    **named, *held,
                    "istiod's service_name is the cluster's name"
                );
                assert!(Arc::ptr_eq(named, &held), "{held}: the name's string");
                eds += 1;
            }
        }
    }
    assert!(eds >= 4, "{eds} EDS service clusters");
    let mut labels = LabelMaps::default();
    let mut share = PodShare::default();
    for a in &res.endpoints {
        let held: Arc<str> = a.cluster_name.as_str().into();
        let p = AssignmentPiece::build(a, &held, &mut labels, &mut share);
        assert!(Arc::ptr_eq(&p.name, &held), "{held}");
    }
    // Under another name (a client that holds it otherwise), the piece's own.
    let other: Arc<str> = "other".into();
    let c = &res.clusters[0];
    let p = ClusterPiece::build(c, &other);
    assert_eq!(*p.name, *c.name);
}

/// The walk gives the digests of the resources that are neither clusters nor assignments, as
/// `others_digest` computes them from all the bytes, and digests a listener's bytes only when
/// they are not the very bytes the last walk digested.
#[test]
fn the_walk_digests_a_listener_once() {
    use envoy_types::pb::envoy::config::listener::v3::Listener;
    use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
    use prost::Message;
    let listener = |name: &str, stat_prefix: &str| -> bytes::Bytes {
        let l = Listener {
            name: name.into(),
            stat_prefix: stat_prefix.into(),
            ..Default::default()
        };
        l.encode_to_vec().into()
    };
    let main = listener("main_internal", "a");
    let other = listener("connect_originate", "");
    let routes: bytes::Bytes = RouteConfiguration {
        name: "r".into(),
        ..Default::default()
    }
    .encode_to_vec()
    .into();
    let cla_bytes: bytes::Bytes = cla("svc", &["10.0.0.1"], "v1").encode_to_vec().into();
    let state = |main: &'_ bytes::Bytes| -> Vec<(&'static str, Arc<str>, bytes::Bytes)> {
        vec![
            (ENDPOINT_TYPE, "svc".into(), cla_bytes.clone()),
            (
                crate::xds::LISTENER_TYPE,
                "connect_originate".into(),
                other.clone(),
            ),
            (
                crate::xds::LISTENER_TYPE,
                "main_internal".into(),
                main.clone(),
            ),
            (crate::xds::ROUTE_TYPE, "r".into(), routes.clone()),
        ]
    };
    let walk = |memo: &mut Memo, main: &bytes::Bytes| {
        let owned = state(main);
        let resources: Vec<Encoded<'_>> = owned
            .iter()
            .map(|(t, n, b)| Encoded {
                type_url: t,
                name: n,
                value: b,
            })
            .collect();
        let decoded = memo.pieces(&resources).unwrap();
        assert_eq!(
            decoded.others,
            crate::xds::assemble::eds::others_digest(&resources)
        );
        (decoded.others, memo.listeners_digested)
    };
    let mut memo = Memo::default();
    let (first, digested) = walk(&mut memo, &main);
    assert_eq!(digested, 2);
    assert_eq!(walk(&mut memo, &main), (first, 0));
    // A copy elsewhere in memory is digested again, to the same digests.
    let copy = bytes::Bytes::copy_from_slice(&main);
    assert_eq!(walk(&mut memo, &copy), (first, 1));
    // Other bytes: other digests, the rest the same.
    let changed = listener("main_internal", "b");
    let (second, digested) = walk(&mut memo, &changed);
    assert_eq!(digested, 1);
    assert_ne!(second.0, first.0);
    assert_eq!(second.1, first.1, "all but main_internal");
}

/// A walk entry is 72 bytes (it was 96: a `u128` key and a `u128` digest beside the listener
/// aligned it to 16): a walk holds every resource of the state, 30 000 at 5 000 services.
#[test]
fn a_walk_entry_is_72_bytes() {
    assert_eq!(std::mem::size_of::<super::walk::Walked>(), 72);
    let k = name_key("inbound-vip|9080|http|reviews.default.svc.cluster.local");
    assert_eq!(super::walk::Key::from(k).get(), k);
}

/// A piece that found nothing holds no diagnostics, and its name is the client's string: an
/// assignment's piece is 80 bytes (96 allocated with its count, where it was 160), a cluster's
/// 144 (160, where it was 320: its inline assignment and DNS settings in its source, boxed, and
/// its parsed name's offsets `u16`s), a pod 48 (64, where it was 112).
#[test]
fn pieces_are_small() {
    assert!(std::mem::size_of::<AssignmentPiece>() <= 80);
    assert!(std::mem::size_of::<ClusterPiece>() <= 144);
    assert_eq!(std::mem::size_of::<super::HeldDiag>(), 8);
    // A pod: its address as an IP and a port (88 bytes with a `SocketAddr`), its workload's
    // names one shared record (72 with the two names inline).
    assert!(std::mem::size_of::<PodEndpoint>() <= 48);
    let nothing = super::HeldDiag::new(Diag::default());
    assert!(nothing.0.is_none() && nothing.is_empty());
    let mut found = Diag::default();
    found.warn(CLUSTER_TYPE, "c", "w");
    let held = super::HeldDiag::new(found.clone());
    assert_eq!(*held, found);
    assert_ne!(held, nothing);
}
