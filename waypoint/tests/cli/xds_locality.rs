//! `waypoint run --xds` with locality failover as istiod 1.24 writes it
//! (routing/tests/fixtures/xds/locality_1_24.json: a DestinationRule with
//! `localityLbSetting.failover` and `outlierDetection`): ratings gets a priority-0 pod in the
//! waypoint's zone and a priority-1 pod in another zone. Traffic goes only to the P0 pod while
//! it is healthy; when the P0 pod fails, outlier detection ejects it and every request goes to
//! the P1 pod — without an EDS push. The admin config dump shows each endpoint's priority.

use std::collections::BTreeMap;

use crate::common::*;
use crate::xds::{bookinfo, serve, wait_ack};
use serde_json::Value;
use waypoint_tests::{sim, spiffe, xds_run_command, Net};

const OVERLAY: &str = include_str!("../../../routing/tests/fixtures/xds/locality_1_24.json");
const TOKEN: &str = "istio-token-for-the-test";
const RATINGS: &str = "inbound-vip|9080|http|ratings.default.svc.cluster.local";
const REVIEWS: &str = "inbound-vip|9080|http|reviews.default.svc.cluster.local";

fn name_of(v: &Value) -> &str {
    v.get("name")
        .or_else(|| v.get("cluster_name"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// ratings' cluster and EDS with the fixture's failover shapes: the reviews cluster (outlier
/// detection, locality-weighted) renamed, one ejection per 5xx; EDS groups P0 = `@p0` (the
/// waypoint's zone) and P1 = `@p1` (same region, other zone).
fn failover_resources(doc: &Value, net: &Net, p0: u8, p1: u8) -> Vec<Value> {
    let overlay: Value = serde_json::from_str(OVERLAY).unwrap();
    let mut cluster = overlay["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| name_of(r) == REVIEWS && r.get("type").is_some())
        .unwrap()
        .clone();
    let text = cluster
        .to_string()
        .replace("reviews.default", "ratings.default")
        .replace("\"reviews\"", "\"ratings\"");
    cluster = serde_json::from_str(&text).unwrap();
    cluster["outlier_detection"]["consecutive_5xx"] = 1.into();
    cluster["outlier_detection"]["max_ejection_percent"] = 100.into();
    // The bookinfo ratings endpoint as the template of both pods.
    let cla = doc
        .as_array()
        .unwrap()
        .iter()
        .find(|r| name_of(r) == RATINGS && r.get("cluster_name").is_some())
        .unwrap();
    let template = cla["endpoints"][0]["lb_endpoints"][0].to_string();
    let template_ip = net.ip(6).to_string();
    let ep = |h: u8| -> Value {
        serde_json::from_str(&template.replace(&template_ip, &net.ip(h).to_string())).unwrap()
    };
    let eds = serde_json::json!({
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": RATINGS,
        "endpoints": [
            {"locality": {"region": "us-east1", "zone": "us-east1-b"},
             "lb_endpoints": [ep(p0)], "load_balancing_weight": 1},
            {"locality": {"region": "us-east1", "zone": "us-east1-c"},
             "lb_endpoints": [ep(p1)], "load_balancing_weight": 1, "priority": 1},
        ]
    });
    vec![cluster, eds]
}

/// `n` requests to ratings; the pods that answered, counted (failed requests under "503").
async fn ratings_answers(send: &mut sim::Http1, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for i in 0..n {
        let (parts, _) = sim::get(send, "ratings:9080", &format!("/ratings/{i}"), &[])
            .await
            .unwrap();
        let who = match parts.headers.get("x-pod") {
            Some(p) if parts.status == 200 => p.to_str().unwrap().to_string(),
            _ => parts.status.as_u16().to_string(),
        };
        *seen.entry(who).or_default() += 1;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_locality_failover_to_the_next_priority() {
    let net = Net::new();
    let Istiod {
        ca, dir, server, ..
    } = Istiod::start("xds locality mesh", "xds-locality", TOKEN).await;

    let near = Pod::start_at(&net, &ca, 1, "ratings-near").await;
    let far = Pod::start_at(&net, &ca, 2, "ratings-far").await;

    let mut doc = bookinfo(&net);
    let over = failover_resources(&doc, &net, 1, 2);
    let list = doc.as_array_mut().unwrap();
    for r in over {
        let ty = r["@type"].clone();
        list.retain(|o| !(o["@type"] == ty && name_of(o) == name_of(&r)));
        list.push(r);
    }
    let versions = serve(&server, &doc);

    // The pod's labels as the waypoint template's downward API writes them.
    std::fs::write(
        dir.join("labels"),
        "gateway.networking.k8s.io/gateway-name=\"waypoint\"\ntopology.istio.io/locality=\"us-east1.us-east1-b\"\n",
    )
    .unwrap();
    let mut cmd = xds_run_command(&binary(), &server.address(), &dir, "waypoint-5f6d7c-abcde");
    cmd.env("XDS_POD_LABELS", dir.join("labels"));
    let (_child, addrs, stderr) = spawn_announcing(&mut cmd, 4);
    let _logs = collect(stderr);
    poll_until(addrs["admin"], "/ready", |s, _| s == 200).await;
    wait_ack(&server, &versions).await;
    // istiod learns the waypoint's locality from the node (and its labels).
    let node = server
        .requests()
        .into_iter()
        .find_map(|r| r.node)
        .expect("a request with the node");
    let locality = node.locality.expect("node.locality");
    assert_eq!(
        (locality.region.as_str(), locality.zone.as_str()),
        ("us-east1", "us-east1-b")
    );
    let meta = node.metadata.unwrap().fields;
    assert!(format!("{:?}", meta["LABELS"]).contains("us-east1.us-east1-b"));

    // Healthy P0: all of it, the P1 pod sees nothing.
    let mut send = client_to(&ca, addrs["hbone"], &spiffe("waypoint"), "10.96.0.11:9080").await;
    let seen = ratings_answers(&mut send, 30).await;
    assert_eq!(seen.get("ratings-near"), Some(&30), "{seen:?}");
    assert_eq!(far.requests(), 0);

    // The config dump names each endpoint's priority and locality.
    let (_, dump) = poll_until(addrs["admin"], "/config_dump?format=waypoint", |s, _| {
        s == 200
    })
    .await;
    assert!(dump.contains("\"priority\": 1"), "{dump}");
    assert!(dump.contains("us-east1/us-east1-c"), "{dump}");

    // The P0 pod turns unhealthy: one 500 ejects it (consecutive_5xx 1). From then on P0 has
    // no healthy host and P1 takes all the load, though the P0 pod is still in the assignment
    // (and would answer): the load balancer moves, not an EDS push.
    let (parts, _) = sim::get(
        &mut send,
        "ratings:9080",
        "/ratings/fail",
        &[("x-fail-on", "ratings-near")],
    )
    .await
    .unwrap();
    assert_eq!(parts.status, 500);
    assert_eq!(parts.headers["x-pod"], "ratings-near");
    let near_before = near.requests();
    let seen = ratings_answers(&mut send, 30).await;
    assert_eq!(seen.get("ratings-far"), Some(&30), "{seen:?}");
    assert_eq!(
        near.requests(),
        near_before,
        "the ejected P0 pod got traffic"
    );
}

#[test]
fn explain_shows_endpoint_priority_and_locality() {
    let net = Net::new();
    let mut doc = bookinfo(&net);
    let over = failover_resources(&doc, &net, 1, 2);
    let list = doc.as_array_mut().unwrap();
    for r in over {
        let ty = r["@type"].clone();
        list.retain(|o| !(o["@type"] == ty && name_of(o) == name_of(&r)));
        list.push(r);
    }
    let dir = temp_dir("xds-locality-explain");
    std::fs::write(dir.join("dump.json"), doc.to_string()).unwrap();
    let out = std::process::Command::new(binary())
        .arg("explain")
        .arg("--xds-dump")
        .arg(dir.join("dump.json"))
        .args([
            "GET",
            "http://ratings.default.svc.cluster.local:9080/ratings/1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        format!("{}:9080 ", net.ip(1)),
        "priority 0 locality \"us-east1/us-east1-b\"".to_string(),
        format!("{}:9080 ", net.ip(2)),
        "priority 1 locality \"us-east1/us-east1-c\"".to_string(),
    ] {
        assert!(text.contains(&needle), "{needle} missing from\n{text}");
    }
}
