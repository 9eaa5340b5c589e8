//! Unknown fields (errors, with "did you mean") versus valid Istio fields the
//! waypoint does not interpret (warnings); type errors that name their field;
//! what each kind of document does; structured warnings.

use super::tests::files;
use super::{check_path, check_str, Report};
use crate::LoadWarning;

/// The bookinfo set with `(name, content)` added or replaced.
fn check_with(replace: &[(&str, &str)]) -> Report {
    let mut f = files(&[]);
    for (name, content) in replace {
        f.retain(|(n, _)| n != name);
        f.push((name.to_string(), content.to_string()));
    }
    check_str(&f, "cluster.local")
}

fn errors(r: &Report) -> String {
    match &r.result {
        Ok(_) => panic!("load unexpectedly succeeded; warnings: {:?}", r.warnings),
        Err(e) => e.to_string(),
    }
}

fn warnings(r: &Report) -> String {
    if let Err(e) = &r.result {
        panic!("load failed:\n{e}");
    }
    let text: Vec<String> = r.warnings.iter().map(|w| w.to_string()).collect();
    text.join("\n")
}

/// A VirtualService for bookinfo's reviews whose first route destination
/// gets `extra` (flow mapping entries) and whose spec gets `spec_extra`.
fn reviews_vs(route_extra: &str, spec_extra: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: reviews}}\n\
         spec:\n  hosts: [reviews]\n{spec_extra}  http:\n  - route:\n    - {{destination: {{host: reviews, subset: v1}}{route_extra}}}\n"
    )
}

const AT: &str = "reviews.yaml doc 0 VirtualService default/reviews: ";

#[test]
fn misspelled_field_is_an_error_with_suggestion() {
    let r = check_with(&[("reviews.yaml", &reviews_vs(", weigth: 10", ""))]);
    let e = errors(&r);
    assert!(
        e.contains(&format!(
            "{AT}spec.http[0].route[0].weigth: unknown field `weigth` (did you mean `weight`?)"
        )),
        "{e}"
    );
    assert!(!e.contains("not supported yet"), "{e}");
}

#[test]
fn unknown_field_without_near_name_has_no_suggestion() {
    let r = check_with(&[("reviews.yaml", &reviews_vs(", colour: red", ""))]);
    let e = errors(&r);
    assert!(
        e.contains(&format!(
            "{AT}spec.http[0].route[0].colour: unknown field `colour`"
        )),
        "{e}"
    );
    assert!(!e.contains("did you mean"), "{e}");
}

#[test]
fn known_but_unsupported_field_stays_a_structured_warning() {
    let r = check_with(&[("reviews.yaml", &reviews_vs("", "  exportTo: ['.']\n"))]);
    let w = warnings(&r);
    assert!(
        w.contains(&format!("{AT}spec.exportTo is not supported yet; ignored")),
        "{w}"
    );
    let warning = r
        .warnings
        .iter()
        .find(|w| w.field.as_deref() == Some("spec.exportTo"))
        .expect("structured warning");
    assert_eq!(warning.at.file, "reviews.yaml");
    assert_eq!(warning.at.kind.as_deref(), Some("VirtualService"));
    assert_eq!(warning.at.name.as_deref(), Some("default/reviews"));
    assert_eq!(warning.message, "is not supported yet; ignored");
    // The snapshot keeps the same text.
    let snapshot = r.result.as_ref().unwrap();
    assert!(snapshot.warnings().contains(&warning.to_string()));
}

#[test]
fn unknown_fields_in_every_api() {
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  trafficPolicy:\n    connectionPool:\n      tcp: {max_connections: 10}\n";
    let e = errors(&check_with(&[("reviews-dr.yaml", dr)]));
    assert!(
        e.contains("spec.trafficPolicy.connectionPool.tcp.max_connections: unknown field `max_connections` (did you mean `maxConnections`?)"),
        "{e}"
    );
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{kind: Service, group: '', name: reviews}]\n  rules:\n  - backendRefs: [{name: reviews, port: 9080, wieght: 1}]\n";
    let e = errors(&check_with(&[("route.yaml", route)]));
    assert!(
        e.contains(
            "spec.rules[0].backendRefs[0].wieght: unknown field `wieght` (did you mean `weight`?)"
        ),
        "{e}"
    );
    // A Gateway API field the waypoint does not interpret: a warning.
    let route = route.replace(
        "wieght: 1}]",
        "weight: 1}]\n    sessionPersistence: {type: Cookie}",
    );
    let w = warnings(&check_with(&[("route.yaml", &route)]));
    assert!(
        w.contains("spec.rules[0].sessionPersistence is not supported yet; ignored"),
        "{w}"
    );
    // Top-level keys of the document.
    let se = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\nspec: {address: 10.1.1.1}\nstatuss: {}\n";
    let e = errors(&check_with(&[("we.yaml", se)]));
    assert!(
        e.contains("we.yaml doc 0 WorkloadEntry default/w: statuss: unknown field `statuss` (did you mean `status`?)"),
        "{e}"
    );
}

#[test]
fn type_error_names_the_field_path() {
    let r = check_with(&[("reviews.yaml", &reviews_vs(", weight: \"ten\"", ""))]);
    let e = errors(&r);
    assert!(
        e.contains(&format!("{AT}spec.http[0].route[0].weight: invalid: ")),
        "{e}"
    );
    // A field of a struct that also collects unknown keys (`#[serde(flatten)]`).
    let dr = "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  trafficPolicy:\n    loadBalancer: {simple: [RANDOM]}\n";
    let e = errors(&check_with(&[("reviews-dr.yaml", dr)]));
    assert!(
        e.contains("spec.trafficPolicy.loadBalancer.simple: invalid: "),
        "{e}"
    );
}

fn doc(api_version: &str, kind: &str) -> String {
    format!("apiVersion: {api_version}\nkind: {kind}\nmetadata: {{name: x, namespace: ns}}\nspec: {{}}\n")
}

#[test]
fn kinds_not_applied_by_design_are_skipped_with_the_reason() {
    for (api, kind, why) in [
        ("security.istio.io/v1", "PeerAuthentication", "ztunnel"),
        ("networking.istio.io/v1", "Sidecar", "sidecar proxies"),
        ("networking.istio.io/v1", "WorkloadGroup", "WorkloadEntries"),
    ] {
        let w = warnings(&check_with(&[("k.yaml", &doc(api, kind))]));
        assert!(
            w.contains(&format!(
                "k.yaml doc 0 {kind}: kind {kind} is not applied by a waypoint ("
            )) && w.contains(why)
                && w.contains("document skipped"),
            "{w}"
        );
    }
}

#[test]
fn kinds_not_supported_yet_are_errors() {
    for (api, kind) in [
        ("networking.istio.io/v1", "Gateway"),
        ("networking.istio.io/v1alpha3", "EnvoyFilter"),
        ("networking.istio.io/v1beta1", "ProxyConfig"),
        ("extensions.istio.io/v1alpha1", "WasmPlugin"),
        ("gateway.networking.k8s.io/v1", "GRPCRoute"),
        ("gateway.networking.k8s.io/v1alpha2", "TCPRoute"),
        ("gateway.networking.k8s.io/v1alpha2", "TLSRoute"),
        ("gateway.networking.k8s.io/v1alpha2", "UDPRoute"),
    ] {
        let e = errors(&check_with(&[("k.yaml", &doc(api, kind))]));
        assert!(
            e.contains(&format!(
                "k.yaml doc 0 {kind} ns/x: kind {kind} is not supported by this waypoint yet"
            )),
            "{e}"
        );
    }
}

#[test]
fn other_kinds_are_skipped_with_a_warning() {
    for (api, kind) in [
        ("gateway.networking.k8s.io/v1", "Gateway"),
        ("gateway.networking.k8s.io/v1", "GatewayClass"),
        ("gateway.networking.k8s.io/v1beta1", "ReferenceGrant"),
        ("v1", "Service"),
        ("v1", "ConfigMap"),
        ("apps/v1", "Deployment"),
    ] {
        let w = warnings(&check_with(&[("k.yaml", &doc(api, kind))]));
        assert!(
            w.contains(&format!(
                "k.yaml doc 0 {kind}: kind {kind} is not supported; document skipped"
            )),
            "{w}"
        );
    }
}

#[test]
fn unknown_kinds_are_errors() {
    let e = errors(&check_with(&[(
        "k.yaml",
        &doc("networking.istio.io/v1", "VirtualSevice"),
    )]));
    assert!(
        e.contains("k.yaml doc 0 VirtualSevice ns/x: kind: unknown kind VirtualSevice (did you mean VirtualService?)"),
        "{e}"
    );
    // Misspelled whatever the group says.
    let e = errors(&check_with(&[(
        "k.yaml",
        &doc("v1", "AuthorisationPolicy"),
    )]));
    assert!(
        e.contains("unknown kind AuthorisationPolicy (did you mean AuthorizationPolicy?)"),
        "{e}"
    );
    // Not near any known kind, but under an Istio group.
    let e = errors(&check_with(&[(
        "k.yaml",
        &doc("networking.istio.io/v1", "Frobnicator"),
    )]));
    assert!(e.contains("kind: unknown kind Frobnicator"), "{e}");
    assert!(!e.contains("did you mean"), "{e}");
}

#[test]
fn check_path_loads_a_single_file() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/bookinfo/services.yaml"
    );
    let r = check_path(std::path::Path::new(file), "cluster.local");
    let s = r.result.unwrap_or_else(|e| panic!("{e}"));
    assert!(s.services().count() > 0);
}

#[test]
fn builder_warnings_without_a_document_display_as_their_message() {
    let w = LoadWarning {
        at: Default::default(),
        field: None,
        message: "duplicate service a; ignored".into(),
        subject: false,
    };
    assert_eq!(w.to_string(), "duplicate service a; ignored");
}
