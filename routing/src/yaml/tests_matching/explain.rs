//! `explain_route`: which route is taken and why, in words.

use super::*;

/// The three-route VirtualService of the explain tests.
fn explain_vs() -> String {
    let http = [
        rule("jason", &["{headers: {end-user: {exact: jason}}}"]),
        rule(
            "v2-api",
            &[
                "{uri: {prefix: /v2}}",
                "{uri: {prefix: /v1}, method: {exact: POST}}",
            ],
        ),
        rule("default", &["{uri: {regex: '/v[0-9]+/.*'}}"]),
    ]
    .concat();
    vs("r", &http)
}

#[test]
fn explain_three_routes() {
    let s = load(&[("vs.yaml", &explain_vs())]);
    let svc = s.service_by_host(FQDN).unwrap();

    let x = s.explain_route(svc, 9080, &req("/v1/reviews"));
    assert_eq!(
        x.to_string(),
        "\
reviews.default.svc.cluster.local:9080
virtual service default/r
http[0] jason: no match
  match[0]: header end-user: absent
http[1] v2-api: no match
  match[0]: uri prefix \"/v2\" does not match \"/v1/reviews\"
  match[1]: method exact \"POST\" does not match \"GET\"
http[2] default: matched by match[0]
decision: route default/r http[2] default
  action: forward to reviews.default.svc.cluster.local subset v1 (weight 100)
  timeout: none (Istio's default)
  retries: 2 retries on connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes (Istio's default)"
    );
    assert_eq!(x.routes[1].failures.len(), 2);
    assert_eq!(
        x.decision,
        ExplainedDecision::Route {
            virtual_service: "default/r".into(),
            route_index: 2,
            route_name: "default".into()
        }
    );

    // stops at the first match
    let x = s.explain_route(svc, 9080, &req("/v1/x").with_header("end-user", "jason"));
    assert_eq!(x.routes.len(), 1);
    assert_eq!(x.routes[0].matched_block, Some(0));

    // nothing matches: 404
    let x = s.explain_route(
        svc,
        9080,
        &req("/health?probe=1").with_header("end-user", "bob"),
    );
    assert_eq!(
        x.to_string(),
        "\
reviews.default.svc.cluster.local:9080
virtual service default/r
http[0] jason: no match
  match[0]: header end-user exact \"jason\" does not match \"bob\"
http[1] v2-api: no match
  match[0]: uri prefix \"/v2\" does not match \"/health?probe=1\"
  match[1]: uri prefix \"/v1\" does not match \"/health?probe=1\"
http[2] default: no match
  match[0]: uri regex \"/v[0-9]+/.*\" does not match \"/health\"
decision: no route: 404 NR"
    );

    // serializable
    let j = serde_json::to_value(&x).unwrap();
    assert_eq!(j["decision"]["kind"], "no_route");
    assert_eq!(
        j["routes"][0]["failures"][0],
        "match[0]: header end-user exact \"jason\" does not match \"bob\""
    );
    assert_eq!(j["applied"], "default/r");

    // no VirtualService
    let s = load(&[]);
    let svc = s.service_by_host(FQDN).unwrap();
    let x = s.explain_route(svc, 9080, &req("/"));
    assert_eq!(
        x.to_string(),
        "reviews.default.svc.cluster.local:9080\ndecision: default: no VirtualService
  action: forward to reviews.default.svc.cluster.local (all endpoints)
  timeout: none (Istio's default)
  retries: 2 retries on connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes (Istio's default)"
    );
}

#[test]
fn explain_other_conditions_in_words() {
    let blocks = [
        (
            "{withoutHeaders: {x-debug: {}}}",
            req("/").with_header("x-debug", "1"),
            "withoutHeaders x-debug: present",
        ),
        (
            "{withoutHeaders: {x-env: {exact: test}}}",
            req("/").with_header("x-env", "test"),
            "withoutHeaders x-env exact \"test\" matches \"test\"",
        ),
        (
            "{queryParams: {v: {exact: '2'}}}",
            req("/?v=1"),
            "queryParams v exact \"2\" does not match \"1\"",
        ),
        ("{queryParams: {v: {}}}", req("/"), "queryParams v: absent"),
        (
            "{authority: {exact: reviews}}",
            req("/"),
            "authority: absent",
        ),
        (
            "{scheme: {exact: https}}",
            req("/"),
            "scheme exact \"https\" does not match \"http\"",
        ),
        (
            "{uri: {exact: /A}, ignoreUriCase: true}",
            req("/b"),
            "uri exact \"/A\" (ignoreUriCase) does not match \"/b\"",
        ),
        ("{port: 8080}", req("/"), "port 8080 does not match 9080"),
        (
            "{sourceNamespace: web}",
            req("/"),
            "sourceNamespace \"web\": source namespace unknown",
        ),
        (
            "{sourceNamespace: web}",
            req("/").with_source_namespace("db"),
            "sourceNamespace \"web\" does not match \"db\"",
        ),
        (
            "{sourceLabels: {app: a}}",
            req("/").with_source_labels([("app", "b")]),
            "sourceLabels {app=a} not all in source labels {app=b}",
        ),
        (
            "{gateways: [default/gw]}",
            req("/"),
            "gateways [default/gw] do not include mesh",
        ),
    ];
    for (block, r, want) in blocks {
        let s = load(&[(
            "vs.yaml",
            &vs(
                "r",
                &[rule("m", &[block]), rule("other", &["{port: 9080}"])].concat(),
            ),
        )]);
        let svc = s.service_by_host(FQDN).unwrap();
        let x = s.explain_route(svc, 9080, &r);
        assert_eq!(
            x.routes[0].failures,
            vec![format!("match[0]: {want}")],
            "{block}"
        );
    }
}
