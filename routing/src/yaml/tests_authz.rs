//! AuthorizationPolicy documents: attachment to this waypoint by `targetRefs` (istiod 1.25+
//! `ShouldAttachPolicy`), what is not applied and why, dry-run, and refused policies.

use super::tests::files;
use super::{check_str_with, LoadOptions, Report, WaypointRef};
use crate::authz::{AuthzView, Verdict};
use std::net::IpAddr;

/// A second service, ratings, besides the test set's reviews.
const RATINGS: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings}
spec:
  hosts: [ratings.default.svc.cluster.local]
  addresses: [10.0.0.20]
  ports: [{number: 9080, name: http}]
  workloadSelector: {labels: {app: reviews}}
";

fn policy(name: &str, ns: &str, extra_meta: &str, spec: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}{extra_meta}}}\nspec:\n{spec}"
    )
}

const DENY_ALL: &str = "  action: DENY\n  rules: [{}]\n";

fn load(policies: &[String]) -> Report {
    let mut extra: Vec<(String, String)> = vec![("ratings.yaml".into(), RATINGS.into())];
    for (i, p) in policies.iter().enumerate() {
        extra.push((format!("p{i}.yaml"), p.clone()));
    }
    let refs: Vec<(&str, &str)> = extra
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let options = LoadOptions {
        trust_domain: "cluster.local".into(),
        waypoint: WaypointRef {
            namespace: "default".into(),
            name: "waypoint".into(),
            root_namespace: "istio-system".into(),
        },
        dns: Default::default(),
        limits: Default::default(),
        mesh: Default::default(),
    };
    check_str_with(&files(&refs), &options)
}

struct Get;

impl AuthzView for Get {
    fn is_http(&self) -> bool {
        true
    }
    fn principal(&self) -> Option<&str> {
        Some("spiffe://cluster.local/ns/default/sa/sleep")
    }
    fn source_ip(&self) -> Option<IpAddr> {
        None
    }
    fn destination_ip(&self) -> Option<IpAddr> {
        None
    }
    fn destination_port(&self) -> u16 {
        9080
    }
    fn method(&self) -> &str {
        "GET"
    }
    fn path(&self) -> &str {
        "/"
    }
}

/// Whether GET / to `host` is allowed, and the warnings.
fn allowed(r: &Report, host: &str) -> bool {
    let snapshot = r.result.as_ref().expect("loads");
    let d = snapshot
        .authorization()
        .for_service(Some(host), true)
        .evaluate(&Get);
    d.verdict.allowed()
}

fn warnings(r: &Report) -> String {
    r.warnings
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";
const RATINGS_HOST: &str = "ratings.default.svc.cluster.local";

#[test]
fn gateway_and_gateway_class_targets_apply_to_every_service() {
    let gw = "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n";
    let r = load(&[policy("deny", "default", "", &format!("{gw}{DENY_ALL}"))]);
    assert!(!allowed(&r, REVIEWS) && !allowed(&r, RATINGS_HOST));
    let class = "  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}]\n";
    let r = load(&[policy(
        "deny",
        "istio-system",
        "",
        &format!("{class}{DENY_ALL}"),
    )]);
    assert!(!allowed(&r, REVIEWS) && !allowed(&r, RATINGS_HOST));
    // Pod-addressed traffic (no service) gets the waypoint-wide policies too.
    let snapshot = r.result.as_ref().unwrap();
    assert!(!snapshot
        .authorization()
        .for_service(None, true)
        .evaluate(&Get)
        .verdict
        .allowed());
}

#[test]
fn service_and_service_entry_targets_apply_to_that_service_only() {
    let svc = "  targetRefs: [{kind: Service, group: \"\", name: reviews}]\n";
    let r = load(&[policy("deny", "default", "", &format!("{svc}{DENY_ALL}"))]);
    assert!(!allowed(&r, REVIEWS));
    assert!(allowed(&r, RATINGS_HOST));
    let se = "  targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: ratings}]\n";
    let r = load(&[policy("deny", "default", "", &format!("{se}{DENY_ALL}"))]);
    assert!(allowed(&r, REVIEWS));
    assert!(!allowed(&r, RATINGS_HOST));
    let d = r
        .result
        .as_ref()
        .unwrap()
        .authorization()
        .for_service(Some(RATINGS_HOST), false)
        .evaluate(&Get);
    assert_eq!(
        d.verdict,
        Verdict::Denied {
            policy: "default/deny".into(),
            rule: "ns[default]-policy[deny]-rule[0]".into()
        },
        "the same policy applies to TCP"
    );
}

#[test]
fn policies_that_do_not_reach_a_waypoint_are_named_and_not_applied() {
    let cases = [
        (
            policy("sel", "default", "", &format!("  selector: {{matchLabels: {{app: reviews}}}}\n{DENY_ALL}")),
            "spec.selector: selects workloads",
        ),
        (policy("ns-wide", "default", "", DENY_ALL), "has no targetRefs"),
        (
            policy(
                "other-gw",
                "default",
                "",
                &format!("  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: other}}]\n{DENY_ALL}"),
            ),
            "targets Gateway default/other, not this waypoint (default/waypoint)",
        ),
        (
            policy(
                "gw-other-ns",
                "prod",
                "",
                &format!("  targetRefs: [{{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}}]\n{DENY_ALL}"),
            ),
            "targets Gateway prod/waypoint",
        ),
        (
            policy(
                "class-not-root",
                "default",
                "",
                &format!("  targetRefs: [{{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}}]\n{DENY_ALL}"),
            ),
            "only istio-waypoint, from the root namespace istio-system",
        ),
        (
            policy(
                "svc-elsewhere",
                "prod",
                "",
                &format!("  targetRefs: [{{kind: Service, group: \"\", name: reviews}}]\n{DENY_ALL}"),
            ),
            "targets Service prod/reviews, which this waypoint does not serve",
        ),
    ];
    for (p, why) in cases {
        let r = load(std::slice::from_ref(&p));
        let w = warnings(&r);
        assert!(w.contains(why), "{why}: {w}");
        assert!(allowed(&r, REVIEWS), "{why}");
    }
}

#[test]
fn dry_run_is_evaluated_not_enforced() {
    let gw = "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n";
    let r = load(&[policy(
        "dry",
        "default",
        ", annotations: {istio.io/dry-run: \"true\"}",
        &format!("{gw}{DENY_ALL}"),
    )]);
    let d = r
        .result
        .as_ref()
        .unwrap()
        .authorization()
        .for_service(Some(REVIEWS), true)
        .evaluate(&Get);
    assert!(d.verdict.allowed());
    assert!(matches!(d.dry_run, Some(Verdict::Denied { .. })), "{d:?}");
    let e = load(&[policy(
        "dry",
        "default",
        ", annotations: {istio.io/dry-run: \"maybe\"}",
        DENY_ALL,
    )]);
    assert!(e
        .result
        .unwrap_err()
        .to_string()
        .contains("metadata.annotations[istio.io/dry-run]: \"maybe\" is not a boolean"));
}

#[test]
fn invalid_policies_refuse_the_config_with_the_field() {
    let bad = policy(
        "bad",
        "default",
        "",
        "  targetRefs: [{kind: Service, name: reviews}]\n  rules:\n  - to:\n    - operation:\n        methods: [GET]\n        pahts: [/x]\n",
    );
    let e = load(&[bad]).result.unwrap_err().to_string();
    assert!(
        e.contains("AuthorizationPolicy default/bad: spec.rules[0].to[0].operation.pahts"),
        "{e}"
    );
    let bad = policy(
        "bad",
        "default",
        "",
        "  rules:\n  - when:\n    - key: request.nope\n      values: [x]\n",
    );
    let e = load(&[bad]).result.unwrap_err().to_string();
    assert!(
        e.contains("spec.rules[0].when[0].key: unknown attribute"),
        "{e}"
    );
    // Under another group the kind is not skipped: refused.
    let wrong = "apiVersion: networking.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: w}\nspec: {}\n";
    let e = load(&[wrong.to_string()]).result.unwrap_err().to_string();
    assert!(
        e.contains("AuthorizationPolicy is security.istio.io/v1"),
        "{e}"
    );
}
