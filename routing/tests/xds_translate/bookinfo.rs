//! The bookinfo fixture: services, subsets, identities, parity with the YAML front-end.

use super::*;

#[test]
fn bookinfo_services_by_vip_and_port() {
    let t = load("bookinfo.json");
    let s = &t.snapshot;
    // The only thing istiod's waypoint config does not say: service accounts.
    assert!(
        t.warnings
            .iter()
            .all(|w| w.message.contains("without a known identity")),
        "{:?}",
        t.warnings
    );
    assert_eq!(s.services().count(), 3);
    // Held as long as the snapshot: no spare room in a service's ports.
    for service in s.services() {
        assert_eq!(
            service.ports.capacity(),
            service.ports.len(),
            "{}",
            service.hostname
        );
    }
    for (vip, host) in [
        ("10.96.0.10:9080", "productpage.default.svc.cluster.local"),
        ("10.96.0.11:9080", "ratings.default.svc.cluster.local"),
        ("10.96.0.12:9080", REVIEWS),
    ] {
        match s.resolve_destination(addr(vip)) {
            Some(Destination::Service { service, port }) => {
                assert_eq!(service.hostname, host);
                assert_eq!(&*service.namespace, "default");
                assert_eq!(port.protocol, Protocol::Http);
                assert_eq!(port.target_port, 9080);
            }
            other => panic!("{vip}: {other:?}"),
        }
    }
    assert!(s.resolve_destination(addr("10.96.0.12:9081")).is_none());
    assert!(
        s.service_by_host("reviews").is_some(),
        "short names resolve"
    );
    // Pod IPs resolve through the endpoints (direct pod access).
    assert!(matches!(
        s.resolve_destination(addr("10.244.1.8:9080")),
        Some(Destination::Pod { .. })
    ));
    // productpage has only istiod's default route: no VirtualService.
    assert!(matches!(
        route_of(s, "10.96.0.10:9080", &SimpleRequest::new("/")),
        RouteDecision::Default
    ));
}

#[test]
fn bookinfo_reviews_split_subsets_and_identity() {
    let t = load("bookinfo.json");
    let s = &t.snapshot;
    let decision = route_of(s, "10.96.0.12:9080", &SimpleRequest::new("/reviews/1"));
    let RouteDecision::Route {
        virtual_service, ..
    } = decision.clone()
    else {
        panic!("{decision:?}");
    };
    assert_eq!(
        virtual_service, "default/reviews",
        "from the route's istio metadata"
    );
    let r = routed(decision);
    let split: Vec<(Option<&str>, u32)> = r
        .destinations
        .iter()
        .map(|d| (d.subset.as_deref(), d.weight))
        .collect();
    assert_eq!(split, vec![(Some("v1"), 90), (Some("v2"), 10)]);
    assert!(r.retries.is_default);
    assert_eq!(r.timeout, None);
    for (subset, ip) in [
        ("v1", "10.244.1.7"),
        ("v2", "10.244.1.8"),
        ("v3", "10.244.1.9"),
    ] {
        let c = s.cluster(REVIEWS, 9080, Some(subset)).expect(subset);
        let ips: Vec<String> = c
            .endpoints
            .iter()
            .map(|e| e.target().ip().to_string())
            .collect();
        assert_eq!(ips, vec![ip.to_string()], "{subset}");
        assert_eq!(c.lb, LbPolicy::Random);
        assert_eq!(
            &*c.name,
            format!("inbound-vip|9080|http/{subset}|{REVIEWS}")
        );
    }
    assert_eq!(s.cluster(REVIEWS, 9080, None).unwrap().endpoints.len(), 3);
    // Identity: xDS names no service account, so it is unknown until the handshake; the peer is
    // verified against connect_originate's SAN matchers, all of them.
    let ep = &s.endpoints(REVIEWS)[0];
    assert_eq!(&*ep.workload.identity, "");
    assert_eq!(ep.transport, routing::Transport::Hbone);
    let sans: Vec<String> = s
        .hbone_peer_sans()
        .expect("xDS verifies by SAN matchers")
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(!sans.is_empty(), "{sans:?}");
    assert_eq!(&*ep.workload.service_account, "unknown");
    assert_eq!(&*ep.workload.name, "reviews-v1");
    assert_eq!(
        ep.labels.get("service.istio.io/canonical-revision"),
        Some("v1")
    );
    // ... and from the caller when it knows it.
    let mut opts = TranslateOptions::default();
    let reviews_id = "spiffe://example.org/ns/default/sa/bookinfo-reviews";
    for pod in ["10.244.1.7", "10.244.1.8", "10.244.1.9"] {
        opts.identities
            .insert(pod.parse().unwrap(), reviews_id.into());
    }
    let res = load_resources(&fixture("bookinfo.json")).unwrap();
    let t2 = xds::translate(&res, &opts).unwrap();
    let eps = t2.snapshot.endpoints(REVIEWS);
    let ep = &eps[0];
    assert_eq!(&*ep.workload.service_account, "bookinfo-reviews");
    assert_eq!(&*ep.workload.identity, reviews_id);
    // The pods of a workload share one string for each name.
    assert_eq!(eps.len(), 3);
    for other in &eps[1..] {
        assert!(std::sync::Arc::ptr_eq(
            &ep.workload.identity,
            &other.workload.identity
        ));
        assert!(std::sync::Arc::ptr_eq(
            &ep.workload.service_account,
            &other.workload.service_account
        ));
        assert!(std::sync::Arc::ptr_eq(
            &ep.workload.namespace,
            &other.workload.namespace
        ));
    }
}

const BOOKINFO_YAML: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [10.96.0.12]
  ports: [{number: 9080, name: http}]
  resolution: STATIC
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1, namespace: default}
spec: {address: 10.244.1.7, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2, namespace: default}
spec: {address: 10.244.1.8, labels: {app: reviews, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v3, namespace: default}
spec: {address: 10.244.1.9, labels: {app: reviews, version: v3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: default}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: default}
spec:
  hosts: [reviews]
  http:
  - route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
";

#[test]
fn bookinfo_matches_the_yaml_front_end() {
    let x = load("bookinfo.json").snapshot;
    let y = routing::load_str(&[("b.yaml".into(), BOOKINFO_YAML.into())], "example.org")
        .unwrap_or_else(|e| panic!("{e}"));
    for path in ["/", "/reviews/7", "/x?y=1"] {
        let req = SimpleRequest::new(path);
        let (xr, yr) = (
            routed(route_of(&x, "10.96.0.12:9080", &req)),
            routed(route_of(&y, "10.96.0.12:9080", &req)),
        );
        let strip = |r: &routing::HttpRoute| {
            r.destinations
                .iter()
                .map(|d| (d.host.clone(), d.subset.clone(), d.weight))
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(xr), strip(yr), "{path}");
        assert_eq!(xr.retries, yr.retries);
        assert_eq!(xr.timeout, yr.timeout);
    }
    for subset in [None, Some("v1"), Some("v2"), Some("v3")] {
        let (xc, yc) = (
            x.cluster(REVIEWS, 9080, subset).unwrap(),
            y.cluster(REVIEWS, 9080, subset).unwrap(),
        );
        assert_eq!(xc.name, yc.name);
        assert_eq!(xc.lb, yc.lb);
        assert_eq!(xc.limits(), yc.limits());
        let ips = |c: &routing::Cluster| {
            let mut v: Vec<SocketAddr> = c.endpoints.iter().map(|e| e.target()).collect();
            v.sort();
            v
        };
        assert_eq!(ips(xc), ips(yc), "{subset:?}");
    }
}

#[test]
fn config_dump_shape_loads_the_same() {
    let a = load("bookinfo.json");
    let b = load("bookinfo_config_dump.json");
    assert_eq!(a.snapshot.services().count(), b.snapshot.services().count());
    assert_eq!(
        a.snapshot
            .clusters()
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>(),
        b.snapshot
            .clusters()
            .iter()
            .map(|c| c.name.clone())
            .collect::<Vec<_>>()
    );
}

#[test]
fn subscriptions_list_eds_names() {
    let res = load_resources(&fixture("bookinfo.json")).unwrap();
    let s = xds::required_resources(&res.listeners, &res.clusters);
    assert_eq!(s.endpoints.len(), 6);
    assert!(s
        .endpoints
        .contains(format!("inbound-vip|9080|http/v2|{REVIEWS}").as_str()));
    assert!(s.routes.is_empty(), "istiod inlines waypoint routes");
}

/// bookinfo.json as istiod writes it for an IPv6 (or dual-stack) cluster. The facts, from
/// istio/istio `pilot/pkg/networking/util/util_test.go` (`TestGetEndpointHost`, "internal
/// address(ipv6)"): an HBONE endpoint's `endpoint_id` is `[addr]:port`, as Go's
/// `net.JoinHostPort` writes it; a VIP is a `/128` range. `dual`: each VIP range matcher lists
/// the IPv4 `/32` and the IPv6 `/128` of the service, as for a `PreferDualStack` Service.
fn bookinfo_ipv6(dual: bool) -> Translation {
    let mut text = fixture("bookinfo.json");
    for vip in 10..=12 {
        let v4 = format!(
            "\"address_prefix\": \"10.96.0.{vip}\",\n          \"prefix_len\": 32\n         }}"
        );
        assert!(text.contains(&v4), "bookinfo.json changed: {v4}");
        let v6 = format!(
            "\"address_prefix\": \"fd00:10:96::{vip}\",\n          \"prefix_len\": 128\n         }}"
        );
        let both = if dual {
            format!("{v4},\n         {{{v6}")
        } else {
            v6
        };
        text = text.replace(&v4, &both);
    }
    for pod in 5..=9 {
        text = text.replace(
            &format!("\"10.244.1.{pod}:9080\""),
            &format!("\"[fd00:10:244:1::{pod}]:9080\""),
        );
    }
    translate(&load_resources(&text).unwrap())
}

#[test]
fn an_ipv6_mesh_resolves_vips_and_pods_by_their_ipv6_addresses() {
    for dual in [false, true] {
        let t = bookinfo_ipv6(dual);
        let s = &t.snapshot;
        assert!(
            t.warnings
                .iter()
                .all(|w| w.message.contains("without a known identity")),
            "dual={dual}: {:?}",
            t.warnings
        );
        for (vip, host) in [
            (
                "[fd00:10:96::10]:9080",
                "productpage.default.svc.cluster.local",
            ),
            ("[fd00:10:96::12]:9080", REVIEWS),
        ] {
            match s.resolve_destination(addr(vip)) {
                Some(Destination::Service { service, .. }) => assert_eq!(service.hostname, host),
                other => panic!("dual={dual} {vip}: {other:?}"),
            }
        }
        // The IPv4 VIP is served only when istiod lists it too.
        assert_eq!(
            s.resolve_destination(addr("10.96.0.12:9080")).is_some(),
            dual
        );
        let mut pods: Vec<String> = s
            .endpoints(REVIEWS)
            .iter()
            .map(|e| e.address.to_string())
            .collect();
        pods.sort();
        assert_eq!(
            pods,
            ["fd00:10:244:1::7", "fd00:10:244:1::8", "fd00:10:244:1::9"],
            "dual={dual}"
        );
        assert!(matches!(
            s.resolve_destination(addr("[fd00:10:244:1::8]:9080")),
            Some(Destination::Pod { .. })
        ));
    }
}

/// The replicas of one workload are one record: bookinfo with a second `reviews-v1` pod, listed
/// as istiod lists a Deployment's replicas (the same `istio.workload`, another address), in the
/// service's assignment and its `v1` subset's. Its endpoints share the record with the first
/// pod's, and a pod of another workload has its own.
#[test]
fn the_replicas_of_a_workload_share_one_record() {
    let mut json: serde_json::Value = serde_json::from_str(&fixture("bookinfo.json")).unwrap();
    for r in json.as_array_mut().unwrap() {
        let cluster = r["cluster_name"].as_str().unwrap_or_default();
        if !cluster.starts_with("inbound-vip|9080|http|reviews")
            && !cluster.starts_with("inbound-vip|9080|http/v1|reviews")
        {
            continue;
        }
        let pods = r["endpoints"][0]["lb_endpoints"].as_array_mut().unwrap();
        let first = pods
            .iter()
            .find(|p| p.to_string().contains("10.244.1.7:9080"));
        let replica = first
            .unwrap()
            .to_string()
            .replace("10.244.1.7", "10.244.1.10");
        pods.push(serde_json::from_str(&replica).unwrap());
    }
    let t = translate(&load_resources(&json.to_string()).unwrap());
    let eps = t.snapshot.endpoints(REVIEWS);
    let at = |ip: &str| eps.iter().find(|e| e.address.to_string() == ip).unwrap();
    let (first, replica) = (at("10.244.1.7"), at("10.244.1.10"));
    assert_eq!(&*replica.workload.name, "reviews-v1");
    assert!(std::sync::Arc::ptr_eq(&first.workload, &replica.workload));
    assert!(!std::sync::Arc::ptr_eq(
        &first.workload,
        &at("10.244.1.8").workload
    ));
    // Both are in the subset's cluster.
    let v1 = t.snapshot.cluster(REVIEWS, 9080, Some("v1")).unwrap();
    assert_eq!(v1.endpoints.len(), 2);
}
