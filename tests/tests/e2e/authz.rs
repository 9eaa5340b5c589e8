//! AuthorizationPolicy on live traffic through HBONE: ALLOW and DENY with Envoy's exact reply
//! (403, `RBAC: access denied`, response code details naming the rule or `none`), the access log
//! and the decision metric; TCP connections closed by a policy; dry-run and AUDIT reported but
//! not enforced; and `explain` agreeing with the data path request by request.

use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint::commands::explain::{explain, ExplainArgs, Output};
use waypoint::commands::sim;
use waypoint_tests::{scrape, service_yaml, spiffe, workload_yaml, Mesh, TRUST_DOMAIN};

const POLICIES: &str = "\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  targetRefs: [{kind: Service, group: \"\", name: reviews}]
  action: DENY
  rules:
  - to: [{operation: {paths: [\"/admin*\"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: productpage-reads, namespace: default}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  rules:
  - from: [{source: {principals: [\"cluster.local/ns/default/sa/productpage\"]}}]
    to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-reads, namespace: default}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: AUDIT
  rules:
  - to: [{operation: {methods: [GET]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: would-deny-v2
  namespace: default
  annotations: {istio.io/dry-run: \"true\"}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules:
  - to: [{operation: {paths: [\"/v2*\"]}}]
---
";

fn config() -> String {
    let mut y = service_yaml("reviews", "10.0.0.10", 9080, "http");
    y += &workload_yaml("reviews-v1", "@1", "reviews", "v1", "bookinfo-reviews");
    y += POLICIES;
    y
}

async fn send(client: &sim::ZtunnelClient, method: &str, path: &str) -> (u16, String) {
    let r = waypoint_tests::reviews_request(client, method, path, &[]).await;
    (r.status, r.body)
}

fn explain_args(source: &str, method: &str, path: &str) -> ExplainArgs {
    ExplainArgs {
        config: Some(PathBuf::from("(in-process)")),
        xds_dump: None,
        trust_domain: TRUST_DOMAIN.into(),
        waypoint: Default::default(),
        source: Some(spiffe(source)),
        source_ip: None,
        headers: Vec::new(),
        output: Output::Json,
        method: method.into(),
        url: format!("http://reviews:9080{path}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_on_live_traffic_agree_with_explain() {
    let mesh = Mesh::start(&config()).await;
    let admin = mesh.admin().await;
    let productpage = mesh.client();
    let sleep = mesh.bench.client(&spiffe("sleep")).unwrap();
    let snapshot = mesh.bench.app.snapshot.load_full();
    // (client, who, method, path, expected status, expected response code details)
    let cases = [
        (
            &productpage,
            "productpage",
            "GET",
            "/reviews/1",
            200,
            "via_upstream",
        ),
        (
            &productpage,
            "productpage",
            "GET",
            "/admin/users",
            403,
            "rbac_access_denied_matched_policy[ns[default]-policy[deny-admin]-rule[0]]",
        ),
        (
            &productpage,
            "productpage",
            "POST",
            "/reviews/1",
            403,
            "rbac_access_denied_matched_policy[none]",
        ),
        (
            &sleep,
            "sleep",
            "GET",
            "/reviews/1",
            403,
            "rbac_access_denied_matched_policy[none]",
        ),
        (
            &productpage,
            "productpage",
            "GET",
            "/v2/x",
            200,
            "via_upstream",
        ),
        // Normalized (meshConfig pathNormalization BASE) before the policies see it.
        (
            &productpage,
            "productpage",
            "GET",
            "/reviews/.%2E/admin/%2e/users",
            403,
            "rbac_access_denied_matched_policy[ns[default]-policy[deny-admin]-rule[0]]",
        ),
    ];
    for (i, (client, who, method, path, status, details)) in cases.iter().enumerate() {
        let (got, body) = send(client, method, path).await;
        assert_eq!(got, *status, "{who} {method} {path}: {body}");
        if *status == 403 {
            assert_eq!(body, "RBAC: access denied");
        }
        let log = mesh.wait_for_log_lines(i + 1).await;
        let line = &log[i];
        assert_eq!(line["response_code_details"], *details, "{line}");
        // explain decides the same, with the same details.
        let e = explain(&snapshot, &explain_args(who, method, path)).unwrap();
        let a = e.authorization.expect("policies apply to reviews");
        assert_eq!(
            a.response_code_details.as_deref().unwrap_or("via_upstream"),
            *details,
            "explain disagrees for {who} {method} {path}"
        );
    }
    // Denied requests never reached the app: only the two allowed ones did.
    assert_eq!(
        mesh.app("reviews-v1")
            .stats
            .requests
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
    let log = mesh.access_log();
    assert_eq!(log[1]["authz"], "deny default/deny-admin");
    assert_eq!(log[0]["authz"], "allow default/productpage-reads");
    assert_eq!(
        log[0]["authz_audit"],
        "default/audit-reads ns[default]-policy[audit-reads]-rule[0]"
    );
    // The dry-run DENY on /v2* would have denied, and is only reported.
    assert_eq!(log[4]["authz_dry_run"], "deny default/would-deny-v2");
    assert_eq!(log.len(), 6, "{log:#?}");
    assert_eq!(log[5]["path"], "/admin/users");
    assert_eq!(log[0]["authz_dry_run"], "allow -");

    // /config_dump shows the policies in force and where they apply.
    let (status, body) =
        waypoint_tests::http_request(admin.addr, "GET", "/config_dump?format=waypoint").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&body).unwrap();
    let authz = &dump["config"]["snapshot"]["authorization"];
    let names: Vec<&str> = authz["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "audit-reads",
            "deny-admin",
            "productpage-reads",
            "would-deny-v2"
        ]
    );
    assert_eq!(
        authz["attachments"]["reviews.default.svc.cluster.local"]
            .as_array()
            .unwrap()
            .len(),
        4
    );

    let m = scrape(admin.addr).await;
    let decisions = |action: &str, policy: &str| {
        m.value(
            "waypoint_authz_decisions",
            &[("action", action), ("policy", policy), ("protocol", "http")],
        )
    };
    assert_eq!(decisions("deny", "default/deny-admin"), 2.0);
    assert_eq!(decisions("deny", "none"), 2.0);
    assert_eq!(decisions("allow", "default/productpage-reads"), 2.0);
    assert_eq!(
        m.value(
            "waypoint_authz_dry_run_decisions",
            &[("action", "deny"), ("policy", "default/would-deny-v2")]
        ),
        1.0
    );
    let denied: f64 = m
        .samples("istio_requests", &[("response_code", "403")])
        .iter()
        .map(|s| match &s.value {
            openmetrics_parser::OpenMetricsValue::Counter(c) => c.value.as_f64(),
            _ => 0.0,
        })
        .sum();
    assert_eq!(denied, 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_are_closed_by_policy() {
    let mut y = service_yaml("mongodb", "10.0.0.30", 27017, "tcp-mongo");
    y += &workload_yaml("mongodb-v1", "@1", "mongodb", "v1", "mongodb");
    // Only `productpage` may connect; an HTTP-only field in a DENY rule is ignored on TCP, so
    // `/x` paths from `sleep` deny every `sleep` connection.
    y += "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: only-pp, namespace: default}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: mongodb}]\n  rules:\n  - from: [{source: {principals: [\"cluster.local/ns/default/sa/productpage\", \"cluster.local/ns/default/sa/sleep\"]}}]\n---\n";
    y += "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-sleep-x, namespace: default}\nspec:\n  targetRefs: [{kind: Service, group: \"\", name: mongodb}]\n  action: DENY\n  rules:\n  - from: [{source: {principals: [\"cluster.local/ns/default/sa/sleep\"]}}]\n    to: [{operation: {paths: [/x]}}]\n---\n";
    let mesh = Mesh::start(&y).await;
    let admin = mesh.admin().await;
    let ping = b"ping-mongo";
    // Allowed.
    let mut t = mesh
        .client()
        .tunnel("10.0.0.30:27017".parse().unwrap())
        .await
        .unwrap();
    t.write_all(ping).await.unwrap();
    let mut back = vec![0u8; ping.len()];
    t.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, ping);
    t.shutdown().await.unwrap();
    let _ = t.read_to_end(&mut Vec::new()).await;
    // Denied: the tunnel is accepted (ztunnel sends bytes only after the 200), then closed.
    let sleep = mesh.bench.client(&spiffe("sleep")).unwrap();
    let mut t = sleep
        .tunnel("10.0.0.30:27017".parse().unwrap())
        .await
        .unwrap();
    let _ = t.write_all(ping).await;
    let mut rest = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), t.read_to_end(&mut rest))
        .await
        .expect("the denied connection is closed");
    assert!(rest.is_empty(), "nothing echoed: {read:?} {rest:?}");
    let log = mesh.wait_for_log_lines(2).await;
    let denied = log
        .iter()
        .find(|l| l["authz"] == "deny default/deny-sleep-x")
        .unwrap_or_else(|| panic!("{log:?}"));
    assert_eq!(
        denied["connection_termination_details"],
        "rbac_access_denied_matched_policy[ns[default]-policy[deny-sleep-x]-rule[0]]"
    );
    assert_eq!(denied["upstream_host"], serde_json::Value::Null);
    let m = scrape(admin.addr).await;
    assert_eq!(
        m.value(
            "waypoint_authz_decisions",
            &[
                ("action", "deny"),
                ("policy", "default/deny-sleep-x"),
                ("protocol", "tcp")
            ]
        ),
        1.0
    );
    assert_eq!(
        mesh.app("mongodb-v1")
            .stats
            .connections
            .load(std::sync::atomic::Ordering::Relaxed),
        1,
        "only the allowed connection reached the app"
    );
}
