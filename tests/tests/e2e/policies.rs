//! DestinationRule traffic policies enforced on live traffic: consistent hashing (header and
//! cookie), connection-pool limits (overflow → 503 UO, connect timeout, tunnel reuse limits) and
//! outlier ejection and return.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use waypoint_tests::{reviews_service_and_pods, sim, Mesh};

/// reviews (VIP 10.0.0.10:9080) with pods v1..v3 at @1..@3 and a DestinationRule `policy`
/// (YAML under `trafficPolicy:`, indented by 4).
fn reviews_with_policy(policy: &str) -> String {
    reviews_service_and_pods()
        + &format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews\n  trafficPolicy:\n{policy}"
    )
}

async fn get(send: &mut sim::Http1, headers: &[(&str, &str)]) -> (u16, String, http::HeaderMap) {
    let (parts, _) = sim::get(send, "reviews:9080", "/reviews/1", headers)
        .await
        .unwrap();
    let pod = parts
        .headers
        .get("x-pod")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (parts.status.as_u16(), pod, parts.headers)
}

async fn tunnel(mesh: &Mesh) -> sim::Http1 {
    mesh.client()
        .http1("10.0.0.10:9080".parse().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_on_a_header_is_sticky() {
    let mesh = Mesh::start(&reviews_with_policy(
        "    loadBalancer:\n      consistentHash:\n        httpHeaderName: x-user\n",
    ))
    .await;
    let mut send = tunnel(&mesh).await;
    let mut pod_of = BTreeMap::new();
    for round in 0..5 {
        for user in 0..12 {
            let u = format!("user-{user}");
            let (status, pod, _) = get(&mut send, &[("x-user", &u)]).await;
            assert_eq!(status, 200);
            let first = pod_of.entry(u.clone()).or_insert(pod.clone());
            assert_eq!(*first, pod, "{u} moved in round {round}");
        }
    }
    let pods: BTreeSet<_> = pod_of.values().collect();
    assert!(pods.len() >= 2, "12 keys all on one endpoint: {pod_of:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_cookie_is_set_and_honoured() {
    let mesh = Mesh::start(&reviews_with_policy(
        "    loadBalancer:\n      consistentHash:\n        httpCookie:\n          name: session\n          path: /\n          ttl: 60s\n",
    ))
    .await;
    let mut send = tunnel(&mesh).await;
    let (status, first_pod, headers) = get(&mut send, &[]).await;
    assert_eq!(status, 200);
    let set_cookie = headers
        .get("set-cookie")
        .expect("the waypoint sets the hash cookie")
        .to_str()
        .unwrap()
        .to_string();
    assert!(set_cookie.starts_with("session="), "{set_cookie}");
    assert!(set_cookie.contains("Max-Age=60"), "{set_cookie}");
    let cookie = set_cookie.split(';').next().unwrap().to_string();
    for _ in 0..10 {
        let (status, pod, headers) = get(&mut send, &[("cookie", &cookie)]).await;
        assert_eq!(status, 200);
        assert_eq!(pod, first_pod, "the cookie pins the endpoint");
        assert!(headers.get("set-cookie").is_none(), "set only when absent");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_pool_overflow_is_503_uo() {
    let mesh = Mesh::start(&reviews_with_policy(
        "    connectionPool:\n      http:\n        http2MaxRequests: 1\n",
    ))
    .await;
    let mut slow = tunnel(&mesh).await;
    let held = tokio::spawn(async move { get(&mut slow, &[("x-delay-ms", "800")]).await.0 });
    // Wait until the slow request holds the only slot.
    for _ in 0..200 {
        let busy: u64 = mesh
            .bench
            .apps
            .iter()
            .map(|a| a.stats.requests.load(std::sync::atomic::Ordering::Relaxed))
            .sum();
        if busy == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut other = tunnel(&mesh).await;
    let (status, _, _) = get(&mut other, &[]).await;
    assert_eq!(status, 503, "the second concurrent request overflows");
    assert_eq!(held.await.unwrap(), 200, "the first one completes");
    // The slot is released when the first request's processing ends (just after its response).
    let mut freed = false;
    for _ in 0..100 {
        if get(&mut other, &[]).await.0 == 200 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(freed, "the slot is free again");
    let log = mesh.wait_for_log_lines(3).await;
    let overflowed: Vec<_> = log.iter().filter(|l| l["response_code"] == 503).collect();
    assert!(!overflowed.is_empty());
    assert_eq!(overflowed[0]["response_flags"], "UO");
    assert_eq!(
        overflowed[0]["upstream_host"],
        serde_json::Value::Null,
        "no endpoint was tried"
    );
    // Envoy's cluster counter of requests the circuit breaker refused.
    let cluster = overflowed[0]["upstream_cluster"].as_str().unwrap();
    let scrape = waypoint_tests::scrape(mesh.admin().await.addr).await;
    assert_eq!(
        scrape.value(
            "envoy_cluster_upstream_rq_pending_overflow",
            &[("cluster_name", cluster)]
        ),
        overflowed.len() as f64
    );
}

fn reuses(mesh: &Mesh) -> u64 {
    mesh.bench
        .app
        .pool
        .stats
        .tunnels_reused
        .load(std::sync::atomic::Ordering::Relaxed)
}

fn in_use(mesh: &Mesh, resource: routing::PoolResource) -> u64 {
    mesh.bench
        .app
        .snapshot
        .load()
        .cluster("reviews.default.svc.cluster.local", 9080, None)
        .expect("reviews cluster")
        .in_use(resource)
}

async fn poll(mut ready: impl FnMut() -> bool) -> bool {
    for _ in 0..400 {
        if ready() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_queues_pending_requests_and_overflows_the_rest() {
    use routing::PoolResource::{Connection, PendingRequest};
    let mesh = Mesh::start(&reviews_with_policy(
        "    connectionPool:\n      tcp:\n        maxConnections: 1\n      http:\n        http1MaxPendingRequests: 1\n",
    ))
    .await;
    let slow = [("x-delay-ms", "600")];
    let mut first = tunnel(&mesh).await;
    let first = tokio::spawn(async move { get(&mut first, &slow).await.0 });
    assert!(
        poll(|| in_use(&mesh, Connection) == 1).await,
        "the first request holds the only tunnel"
    );
    let mut second = tunnel(&mesh).await;
    let second = tokio::spawn(async move { get(&mut second, &[]).await.0 });
    assert!(
        poll(|| in_use(&mesh, PendingRequest) == 1).await,
        "the second request waits as pending"
    );
    // No tunnel and no room in the pending queue: overflow at once.
    let mut third = tunnel(&mesh).await;
    let (status, _, _) = get(&mut third, &[]).await;
    assert_eq!(status, 503, "the third request overflows");
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(
        second.await.unwrap(),
        200,
        "the pending request is served once the tunnel frees up"
    );
    let log = mesh.wait_for_log_lines(3).await;
    let flags: Vec<_> = log
        .iter()
        .map(|l| {
            (
                l["response_code"].as_u64().unwrap(),
                l["response_flags"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        flags.iter().filter(|(c, f)| *c == 503 && f == "UO").count(),
        1,
        "{flags:?}"
    );
    assert_eq!(
        flags.iter().filter(|(c, f)| *c == 200 && f == "-").count(),
        2,
        "{flags:?}"
    );
    assert!(poll(|| in_use(&mesh, PendingRequest) == 0).await);
    assert!(
        in_use(&mesh, Connection) <= 1,
        "never more than one tunnel open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_bounds_opening_a_tunnel() {
    // reviews-v1's node accepts TCP but never answers the TLS handshake.
    let mesh = Mesh::start_with(
        &(reviews_service_and_pods()
            + "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      tcp:\n        connectTimeout: 300ms\n  subsets:\n  - name: v1\n    labels:\n      version: v1\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: reviews\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination:\n        host: reviews\n        subset: v1\n    retries:\n      attempts: 0\n"),
        |net, opts| {
            opts.down.insert(net.ip(1));
        },
    )
    .await;
    let black_hole =
        tokio::net::TcpListener::bind((mesh.net.ip(1), waypoint::transport::hbone::HBONE_PORT))
            .await
            .unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = black_hole.accept().await {
            held.push(socket);
        }
    });
    let mut send = tunnel(&mesh).await;
    let started = std::time::Instant::now();
    let (status, _, _) = get(&mut send, &[]).await;
    let took = started.elapsed();
    assert_eq!(status, 503);
    // The waypoint's own bound on a connect is 10 s; the DestinationRule's 300 ms must win.
    assert!(
        took < Duration::from_secs(5),
        "connect gave up after {took:?}"
    );
    let log = mesh.wait_for_log_lines(1).await;
    assert_eq!(log[0]["response_flags"], "UF");
    assert_eq!(
        log[0]["upstream_transport_failure_reason"],
        "connection_timeout"
    );
    // As Envoy's router writes it: the reset reason, then the transport failure reason.
    assert_eq!(
        log[0]["response_code_details"],
        "upstream_reset_before_response_started{remote_connection_failure|connection_timeout}"
    );
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_per_connection_and_idle_timeout_retire_tunnels() {
    // Baseline: sequential requests on one inbound tunnel reuse upstream tunnels.
    let reused = {
        let mesh = Mesh::start(&reviews_with_policy(
            "    loadBalancer:\n      simple: ROUND_ROBIN\n",
        ))
        .await;
        let mut send = tunnel(&mesh).await;
        for _ in 0..9 {
            assert_eq!(get(&mut send, &[]).await.0, 200);
        }
        reuses(&mesh)
    };
    assert!(
        reused >= 5,
        "round robin over 3 pods reuses tunnels: {reused}"
    );

    let mesh = Mesh::start(&reviews_with_policy(
        "    loadBalancer:\n      simple: ROUND_ROBIN\n    connectionPool:\n      http:\n        maxRequestsPerConnection: 1\n",
    ))
    .await;
    let mut send = tunnel(&mesh).await;
    for _ in 0..9 {
        assert_eq!(get(&mut send, &[]).await.0, 200);
    }
    assert_eq!(
        reuses(&mesh),
        0,
        "maxRequestsPerConnection: 1 never reuses a tunnel"
    );

    let mesh = Mesh::start(&reviews_with_policy(
        "    loadBalancer:\n      simple: ROUND_ROBIN\n    connectionPool:\n      http:\n        idleTimeout: 100ms\n",
    ))
    .await;
    let mut send = tunnel(&mesh).await;
    for _ in 0..6 {
        assert_eq!(get(&mut send, &[]).await.0, 200);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        reuses(&mesh),
        0,
        "idle tunnels older than idleTimeout are not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outlier_detection_ejects_and_returns_an_endpoint() {
    let mesh = Mesh::start(&reviews_with_policy(
        "    loadBalancer:\n      simple: ROUND_ROBIN\n    outlierDetection:\n      consecutive5xxErrors: 2\n      interval: 1s\n      baseEjectionTime: 2s\n      maxEjectionPercent: 100\n",
    ))
    .await;
    let mut send = tunnel(&mesh).await;
    let fail_v2 = [("x-fail-on", "reviews-v2")];
    // Round robin reaches v2 every third request: 6 requests give it 2 consecutive 500s.
    let mut v2_failures = 0;
    for _ in 0..6 {
        let (status, pod, _) = get(&mut send, &fail_v2).await;
        if pod == "reviews-v2" {
            assert_eq!(status, 500);
            v2_failures += 1;
        }
    }
    assert_eq!(v2_failures, 2);
    // Ejected: v2 gets nothing now.
    let mut served = BTreeMap::new();
    for _ in 0..12 {
        let (status, pod, _) = get(&mut send, &fail_v2).await;
        assert_eq!(status, 200, "only healthy endpoints are picked");
        *served.entry(pod).or_insert(0) += 1;
    }
    assert!(!served.contains_key("reviews-v2"), "{served:?}");
    let scrape = waypoint_tests::scrape(mesh.admin().await.addr).await;
    let cluster = [(
        "cluster_name",
        "inbound-vip|9080|http|reviews.default.svc.cluster.local",
    )];
    assert_eq!(
        scrape.value("envoy_cluster_outlier_detection_ejections_active", &cluster),
        1.0
    );
    assert_eq!(
        scrape.value(
            "envoy_cluster_outlier_detection_ejections_enforced_total",
            &cluster
        ),
        1.0
    );
    // After the base ejection time (and the next interval tick) it returns.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let mut back = false;
    for _ in 0..6 {
        let (_, pod, _) = get(&mut send, &[]).await;
        back |= pod == "reviews-v2";
    }
    assert!(back, "v2 returned after its ejection time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_keeps_the_pod_the_client_addressed() {
    let mesh = Mesh::start(&reviews_with_policy(
        "    loadBalancer:\n      simple: PASSTHROUGH\n",
    ))
    .await;
    let pod2 = std::net::SocketAddr::new(mesh.net.ip(2), 9080);
    let mut send = mesh.client().http1(pod2).await.unwrap();
    for _ in 0..6 {
        let (status, pod, _) = get(&mut send, &[]).await;
        assert_eq!((status, pod.as_str()), (200, "reviews-v2"));
    }
    // Through the VIP there is no single addressed pod: the cluster's own pick applies.
    let mut vip = tunnel(&mesh).await;
    let mut pods = BTreeSet::new();
    for _ in 0..30 {
        pods.insert(get(&mut vip, &[]).await.1);
    }
    assert!(pods.len() > 1, "{pods:?}");
}

/// Share of `n` requests (over 8 concurrent tunnels) that `pod` served while reviews-v1 answers
/// 150 ms late and v2 at once.
async fn share_with_slow_v1(lb: &str, n: usize) -> f64 {
    let yaml = format!(
        "{}apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: reviews\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer:\n      simple: {lb}\n",
        waypoint_tests::service_yaml("reviews", "10.0.0.10", 9080, "http")
            + &waypoint_tests::workload_yaml("reviews-v1", "@1", "reviews", "v1", "bookinfo-reviews")
            + &waypoint_tests::workload_yaml("reviews-v2", "@2", "reviews", "v2", "bookinfo-reviews")
    );
    let mesh = std::sync::Arc::new(Mesh::start(&yaml).await);
    let per_worker = n / 8;
    let mut workers = Vec::new();
    for _ in 0..8 {
        let mesh = mesh.clone();
        workers.push(tokio::spawn(async move {
            let mut send = tunnel(&mesh).await;
            let mut fast = 0usize;
            for _ in 0..per_worker {
                let (status, pod, _) = get(
                    &mut send,
                    &[("x-delay-ms", "150"), ("x-delay-on", "reviews-v1")],
                )
                .await;
                assert_eq!(status, 200);
                fast += usize::from(pod == "reviews-v2");
            }
            fast
        }));
    }
    let mut fast = 0;
    for w in workers {
        fast += w.await.unwrap();
    }
    fast as f64 / (per_worker * 8) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_prefers_the_idle_endpoint_under_skewed_latency() {
    // With 8 requests in flight and v1 slow, power-of-two-choices on active requests sends most
    // of them to v2; RANDOM stays near one half.
    let least = share_with_slow_v1("LEAST_REQUEST", 160).await;
    let random = share_with_slow_v1("RANDOM", 160).await;
    eprintln!("share served by the fast endpoint: LEAST_REQUEST {least:.2}, RANDOM {random:.2}");
    assert!(
        least > 0.75,
        "LEAST_REQUEST sent only {least:.2} to the fast endpoint"
    );
    assert!(
        random < 0.75,
        "RANDOM sent {random:.2} to the fast endpoint"
    );
    assert!(least > random + 0.15, "{least:.2} vs {random:.2}");
}
