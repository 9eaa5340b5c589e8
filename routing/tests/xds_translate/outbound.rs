//! outbound_1_24.json: outbound clusters as route destinations.

use super::*;

const RATINGS_EXT: &str = "ratings-ext.external.svc.cluster.local";
const RATINGS_EXT_CLUSTER: &str = "outbound|9080||ratings-ext.external.svc.cluster.local";

/// bookinfo.json with outbound_1_24.json (istiod 1.24.6): its resources added (after `edit`)
/// and the reviews-split route's weighted clusters replaced by the fixture's 80 / 20 split.
fn bookinfo_with_outbound(edit: impl FnOnce(&mut Vec<serde_json::Value>)) -> Resources {
    use serde_json::Value;
    fn walk(v: &mut Value, f: &mut impl FnMut(&mut serde_json::Map<String, Value>)) {
        match v {
            Value::Object(m) => {
                f(m);
                m.values_mut().for_each(|c| walk(c, f));
            }
            Value::Array(a) => a.iter_mut().for_each(|c| walk(c, f)),
            _ => {}
        }
    }
    let over: Value = serde_json::from_str(&fixture("outbound_1_24.json")).unwrap();
    let mut doc: Value = serde_json::from_str(&fixture("bookinfo.json")).unwrap();
    let mut replaced = 0;
    walk(&mut doc, &mut |o| {
        if o.get("name").and_then(Value::as_str) == Some("reviews-split") {
            o["route"]["weighted_clusters"]["clusters"] = over["reviews_split"].clone();
            replaced += 1;
        }
    });
    assert_eq!(replaced, 1, "bookinfo.json has the reviews-split route");
    let mut added = over["resources"].as_array().unwrap().clone();
    edit(&mut added);
    doc.as_array_mut().unwrap().extend(added);
    load_resources(&doc.to_string()).unwrap()
}

#[test]
fn outbound_cluster_is_a_route_destination_with_hbone_and_direct_endpoints() {
    let res = bookinfo_with_outbound(|_| {});
    // The client subscribes to the outbound cluster's EDS assignment.
    let subs = xds::required_resources(&res.listeners, &res.clusters);
    assert!(subs.endpoints.contains(RATINGS_EXT_CLUSTER), "{subs:?}");
    let t = translate(&res);
    assert!(
        !t.warnings
            .iter()
            .any(|w| w.name == RATINGS_EXT_CLUSTER || w.message.contains("outbound")),
        "{:?}",
        t.warnings
    );
    let s = &t.snapshot;
    let r = routed(route_of(s, "10.96.0.12:9080", &SimpleRequest::new("/")));
    let split: Vec<(&str, Option<&str>, Option<u16>, u32)> = r
        .destinations
        .iter()
        .map(|d| (d.host.as_str(), d.subset.as_deref(), d.port, d.weight))
        .collect();
    assert_eq!(
        split,
        vec![
            (REVIEWS, Some("v1"), Some(9080), 80),
            (RATINGS_EXT, None, Some(9080), 20)
        ]
    );
    let c = s
        .cluster(RATINGS_EXT, 9080, None)
        .expect("outbound cluster");
    let mut eps: Vec<(String, routing::Transport, String)> = c
        .endpoints
        .iter()
        .map(|e| {
            (
                e.target().to_string(),
                e.endpoint.transport,
                e.endpoint.workload.namespace.to_string(),
            )
        })
        .collect();
    eps.sort();
    assert_eq!(
        eps,
        vec![
            (
                "10.0.1.20:9080".to_string(),
                routing::Transport::Direct,
                "external".to_string()
            ),
            (
                "10.244.2.10:9080".to_string(),
                routing::Transport::Hbone,
                "external".to_string()
            ),
        ]
    );
    // tlsMode-disabled is raw_buffer: the direct endpoint gets no TLS.
    assert!(c.policy.tls.is_none());
    // Not served by this waypoint: no VIP of it resolves to a service.
    assert!(s.resolve_destination(addr("10.0.1.20:9080")).is_none());
}

#[test]
fn outbound_sidecar_endpoint_is_istio_mutual_and_odd_ones_left_out() {
    let res = bookinfo_with_outbound(|added| {
        let cla = added
            .iter_mut()
            .find(|r| r.get("cluster_name").is_some())
            .unwrap();
        let eps = cla["endpoints"][0]["lb_endpoints"].as_array_mut().unwrap();
        let ep = |ip: &str, keys: serde_json::Value| {
            serde_json::json!({
                "endpoint": {"address": {"socket_address": {"address": ip, "port_value": 9080}}},
                "metadata": {"filter_metadata": {"envoy.transport_socket_match": keys}},
                "load_balancing_weight": 1, "health_status": "HEALTHY"})
        };
        // A sidecar pod (tlsMode-istio).
        eps.push(ep("10.0.1.21", serde_json::json!({"tlsMode": "istio"})));
        // Tunnel metadata on a socket address: the hbone socket cannot reach it.
        eps.push(ep("10.0.1.22", serde_json::json!({"tunnel": "http"})));
    });
    let t = translate(&res);
    let warned: Vec<&str> = t
        .warnings
        .iter()
        .filter(|w| w.name == RATINGS_EXT_CLUSTER)
        .map(|w| w.message.as_str())
        .collect();
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(
        warned[0].contains("10.0.1.22:9080") && warned[0].contains("\"hbone\""),
        "{warned:?}"
    );
    let c = t.snapshot.cluster(RATINGS_EXT, 9080, None).unwrap();
    let mut eps: Vec<(String, routing::Transport)> = c
        .endpoints
        .iter()
        .map(|e| (e.target().to_string(), e.endpoint.transport))
        .collect();
    eps.sort();
    assert_eq!(
        eps,
        vec![
            ("10.0.1.20:9080".to_string(), routing::Transport::Direct),
            (
                "10.0.1.21:9080".to_string(),
                routing::Transport::IstioMutual
            ),
            ("10.244.2.10:9080".to_string(), routing::Transport::Hbone),
        ]
    );
}
