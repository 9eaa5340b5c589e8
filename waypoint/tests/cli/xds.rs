//! `waypoint run --xds`: config from an in-test ADS server (TLS, bearer token) serving what istiod
//! serves an Envoy waypoint for bookinfo (routing/tests/fixtures/xds/bookinfo.json: reviews
//! v1 90 % / v2 10 %). The real binary, real pods behind real HBONE, on loopback.
//!
//! One scenario, in order: the split converges to 90/10; a push to 50/50 takes effect without a
//! restart and without a failed request under load; an invalid resource is NACKed naming it while
//! traffic keeps the last good split; a bad cluster is refused alone and a later push of new
//! weights still applies; a push adding then removing a ratings endpoint moves traffic
//! onto it and off it again (a request in flight on it when it goes still completes); the server
//! going away and coming back is survived (the last config keeps serving, the client reconnects
//! with the versions it holds and resyncs).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use serde_json::Value;
use waypoint::control::identity::Ca;
use waypoint_tests::{sim, spiffe, xds_run_command, Net, TRUST_DOMAIN};
use xds_client::testing::{any, AdsServer};
use xds_client::type_url;

const FIXTURE: &str = include_str!("../../../routing/tests/fixtures/xds/bookinfo.json");
const TOKEN: &str = "istio-token-for-the-test";
const REVIEWS_VIP: &str = "10.96.0.12:9080";
const RATINGS_VIP: &str = "10.96.0.11:9080";

/// The fixture on this test's net: pod IPs 10.244.1.N → @N, trust domain → the test mesh's.
pub(crate) fn bookinfo(net: &Net) -> Value {
    let mut text = FIXTURE.replace("example.org", TRUST_DOMAIN);
    for n in 5..=9 {
        text = text.replace(&format!("10.244.1.{n}"), &net.ip(n).to_string());
    }
    serde_json::from_str(&text).unwrap()
}

/// Every JSON object in `v`, depth first.
pub(crate) fn objects_mut(v: &mut Value, f: &mut impl FnMut(&mut serde_json::Map<String, Value>)) {
    match v {
        Value::Object(map) => {
            f(map);
            for child in map.values_mut() {
                objects_mut(child, f);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| objects_mut(c, f)),
        _ => {}
    }
}

/// Set the reviews route's subset weights.
fn set_weights(doc: &mut Value, v1: u64, v2: u64) {
    let mut found = 0;
    objects_mut(doc, &mut |o| {
        if let Some(Value::Array(clusters)) = o.get_mut("clusters") {
            for c in clusters {
                let name = c["name"].as_str().unwrap_or_default().to_string();
                if name.contains("http/v1|reviews") {
                    c["weight"] = v1.into();
                    found += 1;
                } else if name.contains("http/v2|reviews") {
                    c["weight"] = v2.into();
                    found += 1;
                }
            }
        }
    });
    assert_eq!(found, 2, "the reviews route has weighted v1 and v2");
}

/// Make the reviews route match on a regex Envoy would refuse.
pub(crate) fn break_reviews_route(doc: &mut Value) {
    let mut found = 0;
    objects_mut(doc, &mut |o| {
        let weighted = o
            .get("route")
            .and_then(|r| r.get("weighted_clusters"))
            .is_some();
        if weighted && o.contains_key("match") {
            o.insert(
                "match".into(),
                serde_json::json!({"safe_regex": {"regex": "/reviews/(unclosed"}}),
            );
            found += 1;
        }
    });
    assert_eq!(found, 1);
}

/// Give ratings' cluster a Maglev table size Envoy would refuse.
pub(crate) fn break_ratings_cluster(doc: &mut Value) {
    let mut found = 0;
    objects_mut(doc, &mut |o| {
        if o.get("name").and_then(Value::as_str)
            == Some("inbound-vip|9080|http|ratings.default.svc.cluster.local")
            && o.contains_key("type")
        {
            o.insert("lb_policy".into(), "MAGLEV".into());
            o.insert(
                "maglev_lb_config".into(),
                serde_json::json!({"table_size": 0}),
            );
            found += 1;
        }
    });
    assert_eq!(found, 1);
}

const RATINGS_CLA: &str = "inbound-vip|9080|http|ratings.default.svc.cluster.local";

/// Give ratings' assignment the endpoints at these hosts of the net (the fixture has @6).
fn set_ratings_endpoints(doc: &mut Value, net: &Net, hosts: &[u8]) {
    let template_ip = net.ip(6).to_string();
    let mut found = 0;
    objects_mut(doc, &mut |o| {
        let is_ratings_cla = o.get("cluster_name").and_then(Value::as_str) == Some(RATINGS_CLA);
        if !is_ratings_cla {
            return;
        }
        let template = o["endpoints"][0]["lb_endpoints"][0].to_string();
        let endpoints: Vec<Value> = hosts
            .iter()
            .map(|h| {
                let text = template
                    .replace(&template_ip, &net.ip(*h).to_string())
                    .replace("ratings-v1;", &format!("ratings-{h};"));
                serde_json::from_str(&text).unwrap()
            })
            .collect();
        o["endpoints"][0]["lb_endpoints"] = Value::Array(endpoints);
        found += 1;
    });
    assert_eq!(found, 1);
}

/// Serve `doc`'s resources (all of them, replacing what the server holds of each name).
pub(crate) fn serve(server: &AdsServer, doc: &Value) -> BTreeMap<&'static str, String> {
    let res = routing::xds::json::load_resources(&doc.to_string()).unwrap();
    let mut versions = BTreeMap::new();
    for l in &res.listeners {
        versions.insert(
            type_url::LISTENER,
            server.set(type_url::LISTENER, &l.name, any(l)),
        );
    }
    for c in &res.clusters {
        versions.insert(
            type_url::CLUSTER,
            server.set(type_url::CLUSTER, &c.name, any(c)),
        );
    }
    for e in &res.endpoints {
        versions.insert(
            type_url::CLUSTER_LOAD_ASSIGNMENT,
            server.set(type_url::CLUSTER_LOAD_ASSIGNMENT, &e.cluster_name, any(e)),
        );
    }
    versions
}

/// Serve `doc`'s `main_internal` listener only, as istiod's push of a route change.
fn serve_listener(server: &AdsServer, doc: &Value) -> BTreeMap<&'static str, String> {
    let res = routing::xds::json::load_resources(&doc.to_string()).unwrap();
    let l = res
        .listeners
        .iter()
        .find(|l| l.name == "main_internal")
        .unwrap();
    let version = server.set(type_url::LISTENER, &l.name, any(l));
    BTreeMap::from([(type_url::LISTENER, version)])
}

/// Serve `doc`'s assignment `name` only, as istiod's incremental EDS push of one service's
/// endpoint change.
fn serve_endpoints(server: &AdsServer, doc: &Value, name: &str) -> BTreeMap<&'static str, String> {
    let res = routing::xds::json::load_resources(&doc.to_string()).unwrap();
    let e = res
        .endpoints
        .iter()
        .find(|e| e.cluster_name == name)
        .unwrap();
    let version = server.set(type_url::CLUSTER_LOAD_ASSIGNMENT, name, any(e));
    BTreeMap::from([(type_url::CLUSTER_LOAD_ASSIGNMENT, version)])
}

pub(crate) async fn tunnel(ca: &Ca, waypoint: SocketAddr, vip: &str) -> sim::Http1 {
    client_to(ca, waypoint, &spiffe("waypoint"), vip).await
}

/// `n` requests to reviews; the pods that answered, counted.
pub(crate) async fn reviews_split(send: &mut sim::Http1, n: usize) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for _ in 0..n {
        let (parts, _) = sim::get(send, "reviews:9080", "/reviews/1", &[])
            .await
            .unwrap();
        assert_eq!(parts.status, 200);
        let pod = parts.headers["x-pod"].to_str().unwrap().to_string();
        *seen.entry(pod).or_default() += 1;
    }
    seen
}

fn share(seen: &BTreeMap<String, usize>, pod: &str) -> f64 {
    let total: usize = seen.values().sum();
    *seen.get(pod).unwrap_or(&0) as f64 / total as f64
}

pub(crate) async fn wait_ack(server: &AdsServer, versions: &BTreeMap<&'static str, String>) {
    for (t, v) in versions {
        assert!(
            server.wait_for_ack(t, v, Duration::from_secs(10)).await,
            "{t} version {v} was never ACKed; NACKs: {:?}",
            server.nacks()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_mode_follows_istiod_pushes() {
    let net = Net::new();
    let Istiod {
        ca, dir, server, ..
    } = Istiod::start("xds test mesh", "xds", TOKEN).await;

    let _productpage = Pod::start_as(&net, &ca, 5, "productpage-v1", "bookinfo-productpage").await;
    let ratings = Pod::start_as(&net, &ca, 6, "ratings-v1", "bookinfo-ratings").await;
    let ratings2 = Pod::start_as(&net, &ca, 4, "ratings-v2", "bookinfo-ratings").await;
    let _v1 = Pod::start_as(&net, &ca, 7, "reviews-v1", "bookinfo-reviews").await;
    let _v2 = Pod::start_as(&net, &ca, 8, "reviews-v2", "bookinfo-reviews").await;
    let _v3 = Pod::start_as(&net, &ca, 9, "reviews-v3", "bookinfo-reviews").await;
    let mut doc = bookinfo(&net);
    let first = serve(&server, &doc);

    let mut cmd = xds_run_command(&binary(), &server.address(), &dir, "waypoint-7d4c9b-x2x");
    let (child, addrs, stderr) = spawn_announcing(&mut cmd, 4);
    let logs = collect(stderr);
    let waypoint = addrs["hbone"];
    let admin = addrs["admin"];
    poll_until(admin, "/ready", |s, _| s == 200).await;
    wait_ack(&server, &first).await;

    // Translations run on the `xds` thread at nice 10 (or the process's own, if lower), the
    // data path's workers at the process's own: a large push yields the cores to requests.
    let nice = |comm: &str| thread_nice(child.id(), comm);
    let own = nice("waypoint");
    assert!(!own.is_empty(), "the main thread is listed");
    assert_eq!(
        nice("xds"),
        vec![own[0].max(10)],
        "one xds thread, at nice 10"
    );

    // The node istiod sees, on the first request only, with the token's cluster.
    let hello = &server.requests()[0];
    let node = hello.node.as_ref().expect("node on the first request");
    assert_eq!(
        node.id,
        "waypoint~127.0.0.1~waypoint-7d4c9b-x2x.default~default.svc.cluster.local"
    );

    // 90/10.
    let mut reviews = tunnel(&ca, waypoint, REVIEWS_VIP).await;
    let seen = reviews_split(&mut reviews, 300).await;
    assert!(!seen.contains_key("reviews-v3"), "{seen:?}");
    assert!(
        (0.03..0.2).contains(&share(&seen, "reviews-v2")),
        "{seen:?}"
    );

    // Push 50/50 under load: no request fails, the new split shows.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, failed, served) = (stop.clone(), failed.clone(), served.clone());
        let mut send = tunnel(&ca, waypoint, REVIEWS_VIP).await;
        tokio::spawn(async move {
            for _ in 0..5_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match sim::get(&mut send, "reviews:9080", "/reviews/2", &[]).await {
                    Ok((p, _)) if p.status == 200 => served.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    set_weights(&mut doc, 50, 50);
    // As istiod pushes a VirtualService edit: `main_internal` again, nothing else.
    let pushed = serve_listener(&server, &doc);
    wait_ack(&server, &pushed).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed across the push"
    );
    assert!(served.load(Ordering::Relaxed) > 20);
    let seen = reviews_split(&mut reviews, 300).await;
    assert!(
        (0.35..0.65).contains(&share(&seen, "reviews-v2")),
        "{seen:?}"
    );

    // An invalid resource: NACKed naming it and why; the 50/50 config keeps serving.
    let mut broken = doc.clone();
    break_reviews_route(&mut broken);
    serve(&server, &broken);
    let nack = server
        .wait_for_nack(type_url::LISTENER, Duration::from_secs(10))
        .await
        .expect("the bad listener is NACKed");
    let detail = nack.error_detail.expect("error_detail").message;
    assert!(detail.contains("main_internal"), "{detail}");
    assert!(detail.contains("regex"), "{detail}");
    let seen = reviews_split(&mut reviews, 200).await;
    assert!((0.3..0.7).contains(&share(&seen, "reviews-v2")), "{seen:?}");
    let (_, dump) =
        waypoint_tests::http_request(admin, "GET", "/config_dump?format=waypoint").await;
    let dump: Value = serde_json::from_str(&dump).unwrap();
    assert!(
        dump["config"]["xds"]["nacks"].as_u64().unwrap() >= 1,
        "{}",
        dump["config"]["xds"]
    );
    assert_eq!(dump["config"]["status"]["source"], "xds");
    // The Envoy-shaped dump (what istioctl reads) holds what was accepted as istiod sent it:
    // the refused listener's last good version, which translates (the broken one would not).
    let (_, envoy) = waypoint_tests::http_request(admin, "GET", "/config_dump?include_eds").await;
    let loaded = routing::xds::json::load(&envoy).expect("an Envoy ConfigDump");
    // Only the bootstrap and the secrets are not translated (the waypoint's own node and
    // certificate).
    assert!(
        loaded
            .skipped
            .iter()
            .all(|s| s.kind == "Bootstrap" || s.kind == "Secret"),
        "{:?}",
        loaded.skipped
    );
    assert!(!loaded.resources.endpoints.is_empty(), "include_eds");
    let accepted = routing::xds::translate(&loaded.resources, &Default::default())
        .expect("the dump is the accepted state");
    assert!(accepted
        .snapshot
        .service_by_host("reviews.default.svc.cluster.local")
        .is_some());
    let envoy: Value = serde_json::from_str(&envoy).unwrap();
    assert!(envoy["configs"][0]["bootstrap"]["node"]["id"]
        .as_str()
        .unwrap()
        .starts_with("waypoint~"));
    let stats = waypoint_tests::http_request(admin, "GET", "/stats/prometheus")
        .await
        .1;
    assert!(stats.contains("waypoint_xds_connected 1"), "{stats}");
    assert!(
        stats.contains(r#"waypoint_xds_nacks_total{type_url="Listener"} 1"#),
        "{stats}"
    );
    serve(&server, &doc); // fixed again

    // One bad resource does not freeze the others: ratings' cluster is refused alone (NACK
    // naming it, its last good version keeps serving ratings), and a later push of new
    // weights is applied although the bad cluster is still in what istiod sends.
    let mut bad = doc.clone();
    break_ratings_cluster(&mut bad);
    serve(&server, &bad);
    let refusal = server
        .wait_for_request(Duration::from_secs(10), |r| {
            r.type_url == type_url::CLUSTER
                && r.error_detail
                    .as_ref()
                    .is_some_and(|d| d.message.contains("ratings") && d.message.contains("maglev"))
        })
        .await
        .expect("the bad cluster is NACKed by name");
    assert!(refusal
        .error_detail
        .unwrap()
        .message
        .contains("inbound-vip|9080|http|ratings"));
    set_weights(&mut bad, 10, 90);
    let pushed = serve(&server, &bad);
    assert!(
        server
            .wait_for_ack(
                type_url::LISTENER,
                &pushed[type_url::LISTENER],
                Duration::from_secs(10)
            )
            .await,
        "the listener with the new weights is ACKed; NACKs: {:?}",
        server.nacks()
    );
    let seen = reviews_split(&mut reviews, 300).await;
    assert!(
        (0.78..0.98).contains(&share(&seen, "reviews-v2")),
        "the new weights serve despite the refused cluster: {seen:?}"
    );
    let mut ratings_tunnel = tunnel(&ca, waypoint, RATINGS_VIP).await;
    let (p, _) = sim::get(&mut ratings_tunnel, "ratings:9080", "/ratings/1", &[])
        .await
        .unwrap();
    assert_eq!(p.status, 200, "ratings keeps its last good cluster");
    drop(ratings_tunnel);
    wait_ack(&server, &serve(&server, &doc)).await; // fixed again

    // A second ratings endpoint: traffic reaches it; removed: traffic leaves it.
    set_ratings_endpoints(&mut doc, &net, &[6, 4]);
    wait_ack(&server, &serve_endpoints(&server, &doc, RATINGS_CLA)).await;
    let mut ratings_tunnel = tunnel(&ca, waypoint, RATINGS_VIP).await;
    let before = ratings2.requests();
    for _ in 0..60 {
        let (p, _) = sim::get(&mut ratings_tunnel, "ratings:9080", "/ratings/1", &[])
            .await
            .unwrap();
        assert_eq!(p.status, 200);
    }
    assert!(
        ratings2.requests() > before,
        "the added endpoint gets traffic"
    );
    // A request in flight on ratings-v2 when it is removed still completes.
    let mut in_flight = None;
    for _ in 0..40 {
        let seen = ratings2.requests();
        let mut send = tunnel(&ca, waypoint, RATINGS_VIP).await;
        let slow = tokio::spawn(async move {
            let slow_on_v2 = [("x-delay-ms", "1500"), ("x-delay-on", "ratings-v2")];
            sim::get(&mut send, "ratings:9080", "/ratings/1", &slow_on_v2)
                .await
                .map(|(p, _)| p.status.as_u16())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        if ratings2.requests() > seen {
            in_flight = Some(slow);
            break;
        }
        assert_eq!(slow.await.unwrap().unwrap(), 200);
    }
    let in_flight = in_flight.expect("a request reached ratings-v2");
    set_ratings_endpoints(&mut doc, &net, &[6]);
    wait_ack(&server, &serve_endpoints(&server, &doc, RATINGS_CLA)).await;
    assert!(
        !in_flight.is_finished(),
        "still in flight after the removal"
    );
    assert_eq!(
        in_flight.await.unwrap().unwrap(),
        200,
        "the request in flight on the removed endpoint completes"
    );
    let (before2, before1) = (ratings2.requests(), ratings.requests());
    for _ in 0..60 {
        let (p, _) = sim::get(&mut ratings_tunnel, "ratings:9080", "/ratings/1", &[])
            .await
            .unwrap();
        assert_eq!(p.status, 200);
    }
    assert_eq!(
        ratings2.requests(),
        before2,
        "the removed endpoint is drained"
    );
    assert_eq!(ratings.requests(), before1 + 60);

    // istiod goes away: the last config keeps serving; it comes back: reconnect and resync.
    let streams = server.streams();
    server.stop().await;
    let seen = reviews_split(&mut reviews, 100).await;
    assert!(seen.contains_key("reviews-v2"), "{seen:?}");
    set_weights(&mut doc, 100, 0);
    let resynced = serve(&server, &doc);
    server.restart().await.unwrap();
    wait_ack(&server, &resynced).await;
    assert!(server.streams() > streams);
    let reconnect = server
        .requests()
        .into_iter()
        .find(|r| r.stream > 1 && r.type_url == type_url::CLUSTER)
        .expect("a CDS request on the new stream");
    assert!(
        reconnect
            .initial_resource_versions
            .contains_key("inbound-vip|9080|http|reviews.default.svc.cluster.local"),
        "the new stream carries the versions the waypoint holds: {:?}",
        reconnect.initial_resource_versions
    );
    let seen = reviews_split(&mut reviews, 100).await;
    assert_eq!(seen.get("reviews-v1"), Some(&100), "{seen:?}");

    // Each refusal is logged once, however many pushes repeated it.
    let logs = logs.lock().unwrap().join("\n");
    // Once a snapshot was published, the next ones share the clusters of the services that
    // did not change (productpage's, reviews' across the ratings pushes).
    let shared = logs
        .lines()
        .filter(|l| l.contains("xDS config translated") || l.contains("xDS endpoints patched"))
        .map(strip_ansi)
        .filter_map(|l| {
            l.split("clusters_shared=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .max();
    assert!(
        shared.is_some_and(|n| n >= 2),
        "clusters shared: {shared:?}\n{logs}"
    );
    // The ratings endpoint pushes (EDS only, of assignments the waypoint had) were read alone
    // and patched the live snapshot: no full translation, no walk over the other resources
    // (and the endpoint added, then removed with a request in flight, behaved as above).
    let patched_at: Vec<f64> = logs
        .lines()
        .map(strip_ansi)
        .filter(|l| l.contains("xDS endpoints patched") && l.contains("assignments="))
        .map(|l| seconds_of_day(&l).unwrap_or_else(|| panic!("no time in {l}")))
        .collect();
    assert!(
        !patched_at.is_empty(),
        "an EDS push was translated from its assignments alone:\n{logs}"
    );
    // Patched pushes (many a second under churn) log one line per 10 s: the two ratings
    // pushes above, seconds apart, log one (midnight between two lines: not compared).
    for pair in patched_at.windows(2) {
        let apart = pair[1] - pair[0];
        assert!(
            !(0.0..9.9).contains(&apart),
            "patched lines {apart:.1} s apart:\n{logs}"
        );
    }
    // The 50/50 push (`main_internal` only) was read from that listener alone.
    assert!(
        logs.lines()
            .map(strip_ansi)
            .any(|l| l.contains("xDS routes patched")),
        "a route push was translated from main_internal alone:\n{logs}"
    );
    for what in ["main_internal: route reviews-split", "maglev table_size 0"] {
        let lines = logs
            .lines()
            .filter(|l| l.contains("refused (NACK)") && l.contains(what))
            .count();
        assert_eq!(lines, 1, "{what}: logged once:\n{logs}");
    }
}

/// The time of day of a log line (`2026-12-07T05:10:00.123456Z  INFO …`), in seconds.
fn seconds_of_day(line: &str) -> Option<f64> {
    let time = line.split_whitespace().next()?.split_once('T')?.1;
    let mut parts = time.trim_end_matches('Z').split(':');
    let (h, m, s) = (parts.next()?, parts.next()?, parts.next()?);
    Some(h.parse::<f64>().ok()? * 3600.0 + m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}
