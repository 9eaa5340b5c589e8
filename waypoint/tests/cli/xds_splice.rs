//! A service that arrives over xDS as istiod pushes it — its clusters and assignment, then
//! `main_internal` with its chain and VIP, back to back — is spliced into the live snapshot
//! (only the services the push changed are assembled; `routing/src/xds/assemble/services.rs`)
//! and serves at once through the real binary.

use crate::common::*;
use crate::xds::{bookinfo, serve, tunnel, wait_ack};
use serde_json::Value;
use std::collections::BTreeMap;
use waypoint_tests::{sim, xds_run_command, Net};
use xds_client::testing::any;
use xds_client::type_url;

const TOKEN: &str = "istio-token-for-the-test";
const RATINGS: &str = "ratings.default.svc.cluster.local";
const RATINGS_VIP: &str = "10.96.0.11:9080";

/// `doc` without ratings: its clusters, assignment, `main_internal` chain and matcher range.
fn without_ratings(doc: &Value) -> Value {
    let mut doc = doc.clone();
    let named = |v: &Value| {
        ["name", "cluster_name"]
            .iter()
            .filter_map(|k| v.get(*k).and_then(Value::as_str))
            .any(|n| n.ends_with(RATINGS))
    };
    let list = doc.as_array_mut().unwrap();
    list.retain(|r| !named(r));
    let main = list
        .iter_mut()
        .find(|r| {
            r["name"] == "main_internal" && r["@type"].as_str().unwrap().ends_with("Listener")
        })
        .unwrap();
    main["filter_chains"]
        .as_array_mut()
        .unwrap()
        .retain(|c| !named(c));
    let ranges = main["filter_chain_matcher"]["matcher_tree"]["custom_match"]["typed_config"]
        ["range_matchers"]
        .as_array_mut()
        .unwrap();
    let before = ranges.len();
    ranges.retain(|r| r["ranges"][0]["address_prefix"] != "10.96.0.11");
    assert_eq!(ranges.len(), before - 1, "ratings' VIP was in the matcher");
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_service_is_spliced_in_and_serves() {
    let net = Net::new();
    let Istiod {
        ca, dir, server, ..
    } = Istiod::start("xds splice mesh", "xds-splice", TOKEN).await;
    let _productpage = Pod::start_as(&net, &ca, 5, "productpage-v1", "bookinfo-productpage").await;
    let _ratings = Pod::start_as(&net, &ca, 6, "ratings-v1", "bookinfo-ratings").await;
    let _v1 = Pod::start_as(&net, &ca, 7, "reviews-v1", "bookinfo-reviews").await;
    let _v2 = Pod::start_as(&net, &ca, 8, "reviews-v2", "bookinfo-reviews").await;
    let _v3 = Pod::start_as(&net, &ca, 9, "reviews-v3", "bookinfo-reviews").await;
    let full = bookinfo(&net);
    let first = serve(&server, &without_ratings(&full));

    let mut cmd = xds_run_command(&binary(), &server.address(), &dir, "waypoint-5f2a1c-s9s");
    let (mut child, addrs, stderr) = spawn_announcing(&mut cmd, 4);
    let logs = collect(stderr);
    let waypoint = addrs["hbone"];
    poll_until(addrs["admin"], "/ready", |s, _| s == 200).await;
    wait_ack(&server, &first).await;

    // ratings arrives: its clusters and assignment, then main_internal, back to back.
    let res = routing::xds::json::load_resources(&full.to_string()).unwrap();
    for c in res.clusters.iter().filter(|c| c.name.ends_with(RATINGS)) {
        server.set(type_url::CLUSTER, &c.name, any(c));
    }
    let mut assignments = String::new();
    for e in res
        .endpoints
        .iter()
        .filter(|e| e.cluster_name.ends_with(RATINGS))
    {
        assignments = server.set(type_url::CLUSTER_LOAD_ASSIGNMENT, &e.cluster_name, any(e));
    }
    let main = res
        .listeners
        .iter()
        .find(|l| l.name == "main_internal")
        .unwrap();
    let version = server.set(type_url::LISTENER, "main_internal", any(main));
    // Both: the assignments go out only once the waypoint has subscribed to them (after it
    // took the clusters), so the listener can be ACKed first, with ratings still held back.
    wait_ack(
        &server,
        &BTreeMap::from([
            (type_url::LISTENER, version),
            (type_url::CLUSTER_LOAD_ASSIGNMENT, assignments),
        ]),
    )
    .await;

    let mut send = tunnel(&ca, waypoint, RATINGS_VIP).await;
    let (parts, _) = sim::get(&mut send, "ratings:9080", "/ratings/1", &[])
        .await
        .unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(parts.headers["x-pod"], "ratings-v1");

    child.kill().ok();
    child.wait().ok();
    let logs = logs.lock().unwrap().join("\n");
    // The translation that brought ratings (the third service) was a splice.
    let spliced = logs
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains("xDS config translated") && l.contains("services=3"))
        .any(|l| l.contains("patched=true"));
    assert!(
        spliced,
        "ratings was spliced in, not translated in full:\n{logs}"
    );
}
