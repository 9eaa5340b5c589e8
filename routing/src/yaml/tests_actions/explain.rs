//! `explain_route` with actions and `route_with_match`.

use super::*;

#[test]
fn explain_shows_actions() {
    let s = load(&vs("  - name: main
    match: [{uri: {prefix: /v1/}}]
    rewrite: {uri: /v2/}
    timeout: 3s
    retries: {attempts: 3, perTryTimeout: 1s, retryOn: '5xx,503'}
    fault: {delay: {fixedDelay: 100ms, percentage: {value: 5}}}
    mirror: {host: ratings, subset: v2}
    mirrorPercentage: {value: 50}
    headers:
      request: {set: {x-env: prod}}
      response: {remove: [server]}
    corsPolicy: {allowOrigins: [{exact: 'https://a.example'}], allowMethods: [GET]}
    route:
    - destination: {host: reviews, subset: v1}
      weight: 80
      headers: {request: {add: {x-v: '1'}}}
    - destination: {host: reviews, subset: v2}
      weight: 20
  - name: gone
    directResponse: {status: 410, body: {string: gone}}
"));
    let svc = s.service_by_host(FQDN).unwrap();
    let x = s.explain_route(svc, 9080, &SimpleRequest::new("/v1/reviews?id=2"));
    assert_eq!(
        x.actions,
        [
            "action: forward to reviews.default.svc.cluster.local subset v1 (weight 80), reviews.default.svc.cluster.local subset v2 (weight 20)",
            "rewrite: uri → \"/v2/\" (path \"/v1/reviews?id=2\" becomes \"/v2/reviews?id=2\")",
            "timeout: 3s",
            "retries: 3 retries on 5xx,retriable-status-codes [503], per try 1s",
            "fault: delay 100ms for 5%",
            "mirror: ratings.default.svc.cluster.local subset v2 (50%)",
            "request headers: set x-env: prod",
            "response headers: remove server",
            "request headers (to reviews.default.svc.cluster.local subset v1): add x-v: 1",
            "cors: origins [exact \"https://a.example\"], methods GET",
        ]
    );
    assert!(x
        .to_string()
        .contains("decision: route default/reviews http[0] main\n  action: forward to"));
    let x = s.explain_route(svc, 9080, &SimpleRequest::new("/other"));
    assert_eq!(x.actions, ["action: direct response 410, body \"gone\""]);
    let j = serde_json::to_value(&x).unwrap();
    assert_eq!(
        j["actions"][0],
        "action: direct response 410, body \"gone\""
    );
    // the config dump carries the actions
    let dump = s.to_json();
    let http = &dump["virtual_services"][0]["http"];
    assert_eq!(http[0]["timeout"], "3s");
    assert_eq!(
        http[0]["retries"]["retry_on"],
        serde_json::json!(["5xx", "retriable-status-codes"])
    );
    assert_eq!(
        http[1]["action"],
        serde_json::json!({"kind": "direct_response", "status": 410, "body": "gone"})
    );
}

#[test]
fn route_with_match_reports_the_block() {
    let s = load(&vs("  - match: [{uri: {exact: /a}}, {uri: {prefix: /b/}}]
    route: [{destination: {host: reviews}}]
  - route: [{destination: {host: reviews}}]
"));
    let svc = s.service_by_host(FQDN).unwrap();
    let (_, m) = s.route_with_match(svc, 9080, &SimpleRequest::new("/b/x"));
    assert_eq!(
        m.and_then(|m| m.uri.clone()),
        Some(StringMatch::Prefix("/b/".into()))
    );
    let (_, m) = s.route_with_match(svc, 9080, &SimpleRequest::new("/a"));
    assert_eq!(
        m.and_then(|m| m.uri.clone()),
        Some(StringMatch::Exact("/a".into()))
    );
    let (d, m) = s.route_with_match(svc, 9080, &SimpleRequest::new("/zzz"));
    assert!(matches!(d, RouteDecision::Route { route_index: 1, .. }));
    assert!(m.is_none());
    // the same decision as route()
    for p in ["/a", "/b/1", "/c"] {
        let req = SimpleRequest::new(p);
        let a = format!("{:?}", s.route(svc, 9080, &req));
        let b = format!("{:?}", s.route_with_match(svc, 9080, &req).0);
        assert_eq!(a, b);
    }
}
