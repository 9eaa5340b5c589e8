//! `waypoint run --xds` with an `outbound|…` cluster (routing/tests/fixtures/xds/outbound_1_24.json,
//! istiod 1.24.6, laid over bookinfo.json): the reviews VirtualService sends 20 % to
//! ratings-ext, a service this waypoint does not serve. That share reaches ratings-ext's pods
//! as istiod's transport socket matches say: the ambient pod through its node's HBONE port
//! (a CONNECT tunnel is counted there), the pod outside the mesh directly (it has no HBONE port
//! at all).

use std::sync::atomic::Ordering;

use crate::common::*;
use crate::xds::{bookinfo, reviews_split, serve, tunnel, wait_ack};
use serde_json::Value;
use waypoint::identity::Ca;
use waypoint_tests::{sim, spiffe, xds_run_command, Net, TRUST_DOMAIN};
use xds_client::testing::{AdsServer, AdsServerOptions, TestPki};

const OVERLAY: &str = include_str!("../../../routing/tests/fixtures/xds/outbound_1_24.json");
const TOKEN: &str = "istio-token-for-the-test";
const REVIEWS_VIP: &str = "10.96.0.12:9080";

/// bookinfo with the fixture's outbound cluster and EDS added and its 80 / 20 reviews split
/// in place of bookinfo's, on this test's net (ambient pod @10, plain pod @11).
fn bookinfo_with_outbound(net: &Net) -> Value {
    let text = OVERLAY
        .replace("example.org", TRUST_DOMAIN)
        .replace("10.244.2.10", &net.ip(10).to_string())
        .replace("10.0.1.20", &net.ip(11).to_string());
    let over: Value = serde_json::from_str(&text).unwrap();
    let mut doc = bookinfo(net);
    let mut replaced = 0;
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
    walk(&mut doc, &mut |o| {
        if o.get("name").and_then(Value::as_str) == Some("reviews-split") {
            o["route"]["weighted_clusters"]["clusters"] = over["reviews_split"].clone();
            replaced += 1;
        }
    });
    assert_eq!(replaced, 1);
    doc.as_array_mut()
        .unwrap()
        .extend(over["resources"].as_array().unwrap().iter().cloned());
    doc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_outbound_cluster_share_reaches_its_pods() {
    let net = Net::new();
    let ca = Ca::new("xds outbound mesh").unwrap();
    let dir = temp_dir("xds-outbound");
    ca.issue(&spiffe("waypoint"))
        .unwrap()
        .write_to(&dir)
        .unwrap();
    let pki = TestPki::new();
    let server = AdsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        &pki,
        AdsServerOptions::with_token(TOKEN),
    )
    .await
    .unwrap();
    std::fs::write(dir.join("istiod-root.pem"), pki.root_pem()).unwrap();
    std::fs::write(dir.join("token"), TOKEN).unwrap();

    let _v1 = Pod::start_as(&net, &ca, 7, "reviews-v1", "bookinfo-reviews").await;
    // ratings-ext in another namespace: an ambient pod (HBONE on :15008) and a plain one.
    let ambient = Pod::start_as(&net, &ca, 10, "ratings-ext-v1", "ratings-ext").await;
    let plain = sim::start_app(
        std::net::SocketAddr::new(net.ip(11), 9080),
        "ratings-ext-legacy",
        sim::AppKind::Http,
    )
    .await
    .unwrap();
    let doc = bookinfo_with_outbound(&net);
    let first = serve(&server, &doc);

    let mut cmd = xds_run_command(&binary(), &server.address(), &dir, "waypoint-7d4c9b-out");
    let (_child, addrs, stderr) = spawn_announcing(&mut cmd, 4);
    let logs = collect(stderr);
    poll_until(addrs["admin"], "/ready", |s, _| s == 200).await;
    wait_ack(&server, &first).await;

    let mut reviews = tunnel(&ca, addrs["hbone"], REVIEWS_VIP).await;
    let n = 300;
    let seen = reviews_split(&mut reviews, n).await;
    let count = |pod: &str| *seen.get(pod).unwrap_or(&0);
    let (hbone, direct) = (count("ratings-ext-v1"), count("ratings-ext-legacy"));
    assert_eq!(count("reviews-v1") + hbone + direct, n, "{seen:?}");
    let share = (hbone + direct) as f64 / n as f64;
    assert!((0.1..0.3).contains(&share), "20 % expected: {seen:?}");
    assert!(hbone > 0 && direct > 0, "both ratings-ext pods: {seen:?}");
    // The ambient pod through its HBONE port: CONNECT tunnels counted there.
    assert!(
        ambient.pod.stats.tunnels.load(Ordering::Relaxed) > 0,
        "{seen:?}"
    );
    assert_eq!(ambient.requests(), hbone as u64);
    // The plain pod directly (nothing listens on its :15008).
    assert_eq!(plain.stats.requests.load(Ordering::Relaxed), direct as u64);
    let logs = logs.lock().unwrap().join("\n");
    assert!(
        !logs.contains("outbound cluster"),
        "no outbound warning expected:\n{logs}"
    );
}
