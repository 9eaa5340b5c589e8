//! Gateway API `HTTPRoute` attached to a Service (as Istio attaches routes to waypoints),
//! enforced on live traffic: matches, header filters and weighted backendRefs.

use waypoint_tests::{service_yaml, workload_yaml, Mesh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_route_on_a_service_routes_live_traffic() {
    // reviews (the parent, with the VIP clients use) and two backend services with one pod each.
    // Backend pods carry their backend service's `app` label; the parent has one pod too.
    let yaml = service_yaml("reviews", "10.0.0.10", 9080, "http")
        + &workload_yaml("reviews-v1", "@1", "reviews-v1", "v1", "bookinfo-reviews")
        + &workload_yaml("reviews-v2", "@2", "reviews-v2", "v2", "bookinfo-reviews")
        + &workload_yaml("reviews-main", "@3", "reviews", "v0", "bookinfo-reviews")
        + &service_yaml("reviews-v1", "10.0.0.11", 9080, "http")
        + &service_yaml("reviews-v2", "10.0.0.12", 9080, "http")
        + "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
spec:
  parentRefs:
  - kind: Service
    group: \"\"
    name: reviews
    port: 9080
  rules:
  - matches:
    - headers:
      - name: x-canary
        value: \"yes\"
    filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        add:
        - name: x-route
          value: canary
    backendRefs:
    - name: reviews-v2
      port: 9080
  - matches:
    - path: {type: PathPrefix, value: /reviews}
    backendRefs:
    - name: reviews-v1
      port: 9080
";
    let mesh = Mesh::start(&yaml).await;
    let (p, _) = mesh
        .reviews_request("GET", "/reviews/1", &[("x-canary", "yes")])
        .await;
    assert_eq!(p.status, 200);
    assert_eq!(p.headers["x-pod"], "reviews-v2");
    assert_eq!(p.headers["x-route"], "canary");
    let (p, _) = mesh.reviews_request("GET", "/reviews/1", &[]).await;
    assert_eq!(p.headers["x-pod"], "reviews-v1");
    // PathPrefix matches whole path segments: /reviewsX is not under /reviews → 404 NR.
    let (p, _) = mesh.reviews_request("GET", "/reviewsX", &[]).await;
    assert_eq!(p.status, 404);
}
