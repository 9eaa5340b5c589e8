//! The builder's indexes and clusters, from hand-made services.

use super::*;
use crate::upstream::Transport;

fn endpoint(ip: &str, labels: &[(&str, &str)]) -> Arc<Endpoint> {
    Arc::new(Endpoint {
        address: ip.parse().unwrap(),
        labels: Arc::new(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        workload: Arc::new(crate::model::Workload::new(
            ip.into(),
            "default".into(),
            "sa".into(),
            "spiffe://cluster.local/ns/default/sa/sa".into(),
        )),
        transport: Transport::Hbone,
    })
}

fn service() -> Service {
    Service {
        hostname: "r.default.svc.cluster.local".into(),
        namespace: "default".into(),
        vips: vec!["10.0.0.1".parse().unwrap()],
        ports: vec![ServicePort {
            number: 80,
            name: "http".into(),
            protocol: Protocol::Http,
            target_port: 80,
            path: None,
            default_retries: None,
        }],
    }
}

fn subset(name: &str) -> crate::model::Subset {
    crate::model::Subset {
        name: name.into(),
        labels: Arc::new([("version".to_string(), name.to_string())].into()),
        traffic_policy: None,
    }
}

#[test]
fn equal_labels_are_one_map_and_a_shared_endpoint_stays_shared() {
    let v1 = [("app", "r"), ("version", "v1")];
    let (a, b) = (endpoint("10.1.0.1", &v1), endpoint("10.1.0.2", &v1));
    let c = endpoint("10.1.0.3", &[("app", "r"), ("version", "v2")]);
    assert!(!Arc::ptr_eq(&a.labels, &b.labels));
    let mut builder = SnapshotBuilder::new();
    builder
        .service(service(), vec![a.clone(), b, c])
        .workload(a.clone(), Protocol::Unknown)
        .known_workload(a);
    let snap = builder.build();
    let eps = snap.endpoints("r.default.svc.cluster.local");
    assert_eq!(eps.len(), 3);
    assert!(Arc::ptr_eq(&eps[0].labels, &eps[1].labels));
    assert!(!Arc::ptr_eq(&eps[0].labels, &eps[2].labels));
    assert_eq!(eps[1].labels.get("version"), Some("v1"));
    assert_eq!(
        eps[1].address,
        "10.1.0.2".parse::<std::net::IpAddr>().unwrap()
    );
    // One endpoint for one input, wherever the snapshot holds it.
    let ip = eps[0].address;
    assert!(Arc::ptr_eq(&snap.workloads[&ip].0, &eps[0]));
    assert!(Arc::ptr_eq(&snap.known_workloads[&ip], &eps[0]));
    assert!(Arc::ptr_eq(&snap.by_pod_ip.get(&ip).unwrap()[0].1, &eps[0]));
}

/// A pod that backs one service keeps it inline in the pod index (no list allocated per pod);
/// one that backs two lists both, in service order.
#[test]
fn the_pod_index_holds_a_lone_service_inline() {
    use crate::snapshot::PodServices;
    let (a, b) = (endpoint("10.1.0.1", &[]), endpoint("10.1.0.2", &[]));
    let other = Service {
        hostname: "s.default.svc.cluster.local".into(),
        vips: vec!["10.0.0.2".parse().unwrap()],
        ..service()
    };
    let mut builder = SnapshotBuilder::new();
    builder
        .service(service(), vec![a.clone(), b.clone()])
        .service(other, vec![b.clone()]);
    let snap = builder.build();
    let lone = snap.by_pod_ip.get(&a.address).unwrap();
    assert!(matches!(lone, PodServices::One(_)), "{lone:?}");
    assert_eq!(&*lone[0].0, "r.default.svc.cluster.local");
    let both = snap.by_pod_ip.get(&b.address).unwrap();
    assert!(matches!(both, PodServices::Many(_)), "{both:?}");
    let hosts: Vec<&str> = both.iter().map(|(h, _)| &**h).collect();
    assert_eq!(
        hosts,
        ["r.default.svc.cluster.local", "s.default.svc.cluster.local"]
    );
    assert_eq!(
        snap.source_workload(b.address).map(|e| e.address),
        Some(b.address)
    );
}

#[test]
fn subsets_are_found_by_name_whatever_the_rule_order() {
    let v1 = endpoint("10.1.0.1", &[("version", "v1")]);
    let v2 = endpoint("10.1.0.2", &[("version", "v2")]);
    let mut builder = SnapshotBuilder::new();
    builder
        .service(service(), vec![v1, v2])
        .destination_rule(DestinationRule {
            namespace: "default".into(),
            name: "r".into(),
            host: "r.default.svc.cluster.local".into(),
            traffic_policy: None,
            subsets: vec![subset("v3"), subset("v2"), subset("v1")],
        });
    let snap = builder.build();
    let host = "r.default.svc.cluster.local";
    for (name, targets) in [("v1", 1), ("v2", 1), ("v3", 0)] {
        let c = snap.cluster(host, 80, Some(name)).unwrap();
        assert_eq!(c.subset.as_deref(), Some(name));
        assert_eq!(c.endpoints.len(), targets, "{name}");
    }
    assert!(snap.cluster(host, 80, Some("v4")).is_none());
    assert!(snap.cluster(host, 80, Some("")).is_none());
    let all = snap.cluster(host, 80, None).unwrap();
    assert_eq!(all.endpoints.len(), 2);
    // An identity is parsed once for all of the port's clusters.
    let v1 = snap.cluster(host, 80, Some("v1")).unwrap();
    let id = |c: &Cluster| c.endpoints[0].spiffe_id().unwrap().clone();
    assert!(Arc::ptr_eq(&id(all), &id(v1)));
    assert_eq!(id(v1).service_account, "sa");
    // And the service's clusters share one hostname string.
    assert_eq!(&*all.service_hostname, host);
    assert!(Arc::ptr_eq(&all.service_hostname, &v1.service_hostname));
}

/// A service's hostname is one string: the host index, the cluster index, the route index,
/// the pod index and its clusters hold the same `Arc` (a snapshot of 10 000 services held
/// five copies of each hostname before).
#[test]
fn a_service_s_indexes_and_clusters_share_its_hostname() {
    let host = "s.default.svc.cluster.local";
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: s\n  \
         namespace: default\nspec:\n  hosts:\n  - {host}\n  addresses:\n  - 10.0.0.1\n  \
         ports:\n  - number: 80\n    name: http\n    protocol: HTTP\n  resolution: STATIC\n  \
         endpoints:\n  - address: 10.1.0.1\n    serviceAccount: sa\n---\n\
         apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: s\n  \
         namespace: default\nspec:\n  hosts:\n  - {host}\n  http:\n  - route:\n    \
         - destination:\n        host: {host}\n"
    );
    let snap = crate::load_str(&[("c.yaml".into(), yaml)], "cluster.local").unwrap();
    let (key, _) = snap.by_host.get_key_value(host).unwrap();
    let cluster = snap.cluster(host, 80, None).unwrap();
    assert!(Arc::ptr_eq(key, &cluster.service_hostname));
    let same = |what: &str, other: &Arc<str>| {
        assert!(Arc::ptr_eq(key, other), "{what} holds a string of its own");
    };
    let (clusters_key, _) = snap.clusters.iter().find(|(k, _)| &***k == host).unwrap();
    same("the cluster index", clusters_key);
    let (routes_key, _) = snap.routes.iter().find(|(k, _)| &***k == host).unwrap();
    same("the route index", routes_key);
    let pod = snap.by_pod_ip.get(&"10.1.0.1".parse().unwrap()).unwrap();
    same("the pod index", &pod[0].0);
}
