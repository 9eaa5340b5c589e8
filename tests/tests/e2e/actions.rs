//! VirtualService route actions on live traffic: redirect, direct response, rewrite, header
//! operations, timeout (504 UT), retries on 5xx landing on another endpoint, faults, CORS
//! preflight and mirroring.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use waypoint_tests::{reviews_yaml, sim, Mesh};

async fn request(
    mesh: &Mesh,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (http::response::Parts, bytes::Bytes) {
    mesh.reviews_request(method, path, headers).await
}

const ROUTES: &str = "  - name: moved
    match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, authority: reviews.example.com, redirectCode: 308}
  - name: canned
    match: [{uri: {exact: /canned}}]
    directResponse: {status: 418, body: {string: teapot}}
  - name: rewritten
    match: [{uri: {prefix: /api/v1}}]
    rewrite: {uri: /v2, authority: reviews-internal}
    headers:
      request:
        set: {x-route: rewritten}
        remove: [x-secret]
      response:
        add: {x-served-by: waypoint}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: slow
    match: [{uri: {prefix: /slow}}]
    timeout: 200ms
    route: [{destination: {host: reviews, subset: v1}}]
  - name: retried
    match: [{uri: {prefix: /flaky}}]
    retries: {attempts: 2, retryOn: 5xx}
    route: [{destination: {host: reviews}}]
  - name: reset-retried
    match: [{uri: {prefix: /reset-retried}}]
    retries: {attempts: 2, retryOn: reset}
    route: [{destination: {host: reviews}}]
  - name: reset-not-retried
    match: [{uri: {prefix: /reset-kept}}]
    retries: {attempts: 2, retryOn: connect-failure}
    route: [{destination: {host: reviews}}]
  - name: aborted
    match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 503, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: delayed
    match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}
    route: [{destination: {host: reviews, subset: v1}}]
  - name: cors
    match: [{uri: {prefix: /cors}}]
    corsPolicy:
      allowOrigins: [{exact: 'https://shop.example'}]
      allowMethods: [GET, POST]
      allowHeaders: [x-token]
      maxAge: 60s
    route: [{destination: {host: reviews, subset: v1}}]
  - name: mirrored
    match: [{uri: {prefix: /mirror}}]
    mirror: {host: reviews, subset: v3}
    mirrorPercentage: {value: 100}
    route: [{destination: {host: reviews, subset: v1}}]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_actions_on_live_traffic() {
    let mesh = Mesh::start(&reviews_yaml("ROUND_ROBIN", ROUTES)).await;

    let (p, _) = request(&mesh, "GET", "/old/page?q=1", &[]).await;
    assert_eq!(p.status, 308);
    assert_eq!(
        p.headers["location"], "http://reviews.example.com/new?q=1",
        "`uri` replaces the whole path (Envoy path_redirect); the query string stays"
    );

    let (p, body) = request(&mesh, "GET", "/canned", &[]).await;
    assert_eq!((p.status.as_u16(), &body[..]), (418, &b"teapot"[..]));

    let (p, body) = request(&mesh, "GET", "/api/v1/items?x=1", &[("x-secret", "s")]).await;
    assert_eq!(p.status, 200);
    assert_eq!(p.headers["x-served-by"], "waypoint");
    let echo: sim::Echo = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo.path, "/v2/items?x=1");
    assert_eq!(
        echo.headers.get("host").map(String::as_str),
        Some("reviews-internal")
    );
    assert_eq!(
        echo.headers.get("x-route").map(String::as_str),
        Some("rewritten")
    );
    assert!(!echo.headers.contains_key("x-secret"));

    let started = Instant::now();
    let (p, _) = request(&mesh, "GET", "/slow", &[("x-delay-ms", "2000")]).await;
    assert_eq!(p.status, 504);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );

    // reviews-v1 answers 500: the retry lands on another endpoint and the client sees 200.
    let v1_before = mesh
        .app("reviews-v1")
        .stats
        .requests
        .load(Ordering::Relaxed);
    for _ in 0..6 {
        let (p, _) = request(&mesh, "GET", "/flaky", &[("x-fail-on", "reviews-v1")]).await;
        assert_eq!(p.status, 200);
        assert_ne!(p.headers["x-pod"], "reviews-v1");
    }
    // Each 500 from v1 was retried: Envoy's cluster counter says so, under Envoy's name.
    let retried = mesh
        .app("reviews-v1")
        .stats
        .requests
        .load(Ordering::Relaxed)
        - v1_before;
    assert!(retried >= 1, "round robin reaches v1 in 6 requests");
    let scrape = waypoint_tests::scrape(mesh.admin().await.addr).await;
    let retries: f64 = scrape
        .samples("envoy_cluster_upstream_rq_retry", &[])
        .iter()
        .map(|s| match &s.value {
            openmetrics_parser::OpenMetricsValue::Unknown(n) => n.as_f64(),
            other => panic!("{other:?}"),
        })
        .sum();
    assert_eq!(retries, retried as f64);

    // reviews-v1 reads the whole request, then drops the connection (a reset after the request
    // was sent). `retryOn: reset` retries it on another endpoint, body replayed, whatever the
    // method; `connect-failure` alone does not.
    for i in 0..6 {
        let body = format!("order-{i}");
        let r = waypoint_tests::reviews_request_with_body(
            &mesh.client(),
            "POST",
            "/reset-retried",
            &[("x-reset-on", "reviews-v1")],
            body.clone().into(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let pod = r.headers["x-pod"].to_str().unwrap().to_string();
        assert_ne!(pod, "reviews-v1");
        assert_eq!(
            mesh.app(&pod).last_body.lock().as_deref(),
            Some(body.as_bytes()),
            "the retried request carries the body"
        );
    }
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let (p, _) = request(&mesh, "GET", "/reset-kept", &[("x-reset-on", "reviews-v1")]).await;
        statuses.push(p.status.as_u16());
    }
    assert!(statuses.contains(&503), "{statuses:?}");
    assert!(statuses.contains(&200), "{statuses:?}");

    let (p, _) = request(&mesh, "GET", "/abort", &[]).await;
    assert_eq!(p.status, 503);

    let started = Instant::now();
    let (p, _) = request(&mesh, "GET", "/delay", &[]).await;
    assert_eq!(p.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    let (p, _) = request(
        &mesh,
        "OPTIONS",
        "/cors",
        &[
            ("origin", "https://shop.example"),
            ("access-control-request-method", "POST"),
        ],
    )
    .await;
    assert_eq!(p.status, 200);
    assert_eq!(
        p.headers["access-control-allow-origin"],
        "https://shop.example"
    );
    assert!(p.headers.get("x-pod").is_none(), "answered by the waypoint");
    let (p, _) = request(&mesh, "GET", "/cors", &[("origin", "https://shop.example")]).await;
    assert_eq!(
        p.headers["access-control-allow-origin"],
        "https://shop.example"
    );

    let v3_before = mesh
        .app("reviews-v3")
        .stats
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);
    let (p, _) = request(&mesh, "GET", "/mirror", &[]).await;
    assert_eq!(p.headers["x-pod"], "reviews-v1");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v3 = mesh
            .app("reviews-v3")
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed);
        if v3 > v3_before {
            break;
        }
        assert!(Instant::now() < deadline, "the mirror never reached v3");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mirrored = mesh.app("reviews-v3").last_headers.lock().clone().unwrap();
    assert_eq!(mirrored["host"], "reviews-shadow:9080");

    // A request body reaches the copy whole, streamed chunk by chunk (256 KiB: many chunks).
    let payload: bytes::Bytes = (0..256 * 1024)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<u8>>()
        .into();
    let v3_before = mesh
        .app("reviews-v3")
        .stats
        .requests
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut send = mesh
        .client()
        .http1("10.0.0.10:9080".parse().unwrap())
        .await
        .unwrap();
    let req = http::Request::post("/mirror")
        .header("host", "reviews:9080")
        .body(http_body_util::Full::new(payload.clone()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.headers()["x-pod"], "reviews-v1");
    drop(resp);
    let deadline = Instant::now() + Duration::from_secs(5);
    while mesh
        .app("reviews-v3")
        .stats
        .requests
        .load(std::sync::atomic::Ordering::Relaxed)
        == v3_before
    {
        assert!(
            Instant::now() < deadline,
            "the mirrored POST never reached v3"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let copied = mesh.app("reviews-v3").last_body.lock().clone();
        if copied.as_ref().is_some_and(|b| !b.is_empty()) {
            assert!(
                copied.unwrap() == payload,
                "the copy's body equals the original's"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mirrored body never completed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        mesh.app("reviews-v1").last_body.lock().as_deref(),
        Some(&payload[..])
    );

    let log = mesh.access_log();
    let flags_of = |route: &str| -> Vec<String> {
        log.iter()
            .filter(|l| l["route_name"] == route)
            .map(|l| l["response_flags"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(flags_of("slow"), ["UT"]);
    assert_eq!(flags_of("aborted"), ["FI"]);
    assert_eq!(flags_of("delayed"), ["DI"]);
}
