//! Every load error names file, document index and field.

use super::tests::files;
use crate::load_str;

/// Load the bookinfo set plus/instead of `(name, content)` and return the error text.
fn errors_with(replace: &[(&str, &str)]) -> String {
    let mut f = files(&[]);
    for (name, content) in replace {
        f.retain(|(n, _)| n != name);
        f.push((name.to_string(), content.to_string()));
    }
    match load_str(&f, "cluster.local") {
        Ok(_) => panic!("load unexpectedly succeeded"),
        Err(e) => e.to_string(),
    }
}

fn assert_has(err: &str, needles: &[&str]) {
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in:\n{err}");
    }
}

const VS_HEAD: &str = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews}\nspec:\n  hosts: [reviews]\n  http:\n";

fn vs(routes: &str) -> String {
    format!("{VS_HEAD}{routes}")
}

#[test]
fn bad_yaml_has_line_and_column() {
    let e = errors_with(&[(
        "bad.yaml",
        "apiVersion: networking.istio.io/v1\n---\nkind: ServiceEntry\nspec: {hosts: [a\n",
    )]);
    assert_has(&e, &["bad.yaml doc 1: invalid YAML", "line 4"]);
}

#[test]
fn wrong_type_names_doc_and_line() {
    let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec:\n  hosts: [x]\n  ports:\n  - number: [1]\n    name: http\n";
    let e = errors_with(&[("x.yaml", se)]);
    assert_has(
        &e,
        &[
            "x.yaml doc 0 ServiceEntry default/x: spec.ports[0].number: invalid",
            "line 7",
        ],
    );
}

#[test]
fn missing_required_fields() {
    let e = errors_with(&[("we.yaml", "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w}\nspec: {labels: {a: b}}\n")]);
    assert_has(
        &e,
        &["we.yaml doc 0 WorkloadEntry default/w: spec.address: missing required field"],
    );
    let e = errors_with(&[(
        "m.yaml",
        "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nspec: {address: 1.2.3.4}\n",
    )]);
    assert_has(
        &e,
        &["m.yaml doc 0 WorkloadEntry: metadata.name: missing required field"],
    );
    let e = errors_with(&[("k.yaml", "apiVersion: v1\nmetadata: {name: w}\n")]);
    assert_has(&e, &["k.yaml doc 0: kind: missing required field"]);
    let e = errors_with(&[(
        "s.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\n",
    )]);
    assert_has(
        &e,
        &["s.yaml doc 0 DestinationRule default/d: spec: missing required field"],
    );
    let e = errors_with(&[(
        "reviews.yaml",
        &vs("  - route:\n    - destination: {subset: v1}\n"),
    )]);
    assert_has(&e, &["reviews.yaml doc 0 VirtualService default/reviews: spec.http[0].route[0].destination.host: missing required field"]);
    let e = errors_with(&[("reviews.yaml", &vs("  - match: [{uri: {prefix: /}}]\n"))]);
    assert_has(
        &e,
        &["spec.http[0].route: at least one destination is required"],
    );
    let e = errors_with(&[("p.yaml", "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: p}\nspec: {hosts: [p], ports: [{number: 80}]}\n")]);
    assert_has(
        &e,
        &["p.yaml doc 0 ServiceEntry default/p: spec.ports[0].name: missing required field"],
    );
}

#[test]
fn invalid_ip_and_cidr() {
    let we = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w, namespace: ns1}\nspec: {address: pod.example.com}\n";
    let e = errors_with(&[("we.yaml", we)]);
    assert_has(&e, &["we.yaml doc 0 WorkloadEntry ns1/w: spec.address: invalid IP address \"pod.example.com\""]);
    let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: c}\nspec: {hosts: [c], addresses: [10.1.0.0/16, 300.1.1.1], ports: [{number: 80, name: http}]}\n";
    let e = errors_with(&[("c.yaml", se)]);
    assert_has(
        &e,
        &[
            "c.yaml doc 0 ServiceEntry default/c: spec.addresses[0]: CIDR",
            "spec.addresses[1]: invalid IP address",
        ],
    );
}

#[test]
fn port_out_of_range() {
    let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: p}\nspec: {hosts: [p], ports: [{number: 70000, name: http}, {number: 80, name: h2, targetPort: 0}]}\n";
    let e = errors_with(&[("p.yaml", se)]);
    assert_has(
        &e,
        &[
            "p.yaml doc 0 ServiceEntry default/p: spec.ports[0].number: port 70000 out of range",
            "spec.ports[1].targetPort: port 0 out of range",
        ],
    );
    let e = errors_with(&[(
        "reviews.yaml",
        &vs("  - route:\n    - destination: {host: reviews, port: {number: 8080}}\n"),
    )]);
    assert_has(&e, &["reviews.yaml doc 0 VirtualService default/reviews: spec.http[0].route[0].destination.port.number: port 8080 is not a port of reviews.default.svc.cluster.local"]);
}

#[test]
fn unknown_destination_host() {
    let e = errors_with(&[(
        "reviews.yaml",
        &vs("  - route:\n    - destination: {host: details}\n"),
    )]);
    assert_has(&e, &["reviews.yaml doc 0 VirtualService default/reviews: spec.http[0].route[0].destination.host: host details.default.svc.cluster.local is not a known service"]);
}

#[test]
fn unknown_subset() {
    let e = errors_with(&[(
        "reviews.yaml",
        &vs("  - route:\n    - destination: {host: reviews, subset: v1}\n  - route:\n    - destination: {host: reviews, subset: v4}\n"),
    )]);
    assert_has(&e, &["reviews.yaml doc 0 VirtualService default/reviews: spec.http[1].route[0].destination.subset: unknown subset v4 for host reviews.default.svc.cluster.local"]);
}

#[test]
fn weights() {
    let e = errors_with(&[(
        "reviews.yaml",
        &vs("  - route:\n    - destination: {host: reviews, subset: v1}\n      weight: 0\n    - destination: {host: reviews, subset: v2}\n      weight: 0\n"),
    )]);
    assert_has(&e, &["reviews.yaml doc 0 VirtualService default/reviews: spec.http[0].route: all weights are zero"]);
    // Weights need not sum to 100 (istiod accepts any positive total): see tests_matching.
    let e = errors_with(&[(
        "reviews.yaml",
        &vs("  - route:\n    - destination: {host: reviews}\n      weight: -5\n"),
    )]);
    assert_has(
        &e,
        &["spec.http[0].route[0].weight: weight -5 out of range"],
    );
}

#[test]
fn duplicate_host_and_vip() {
    let dup = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: reviews2}\nspec: {hosts: [reviews], ports: [{number: 9080, name: http}]}\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: other}\nspec: {hosts: [other], addresses: [10.0.0.10], ports: [{number: 9080, name: http}]}\n";
    let e = errors_with(&[("z.yaml", dup)]);
    assert_has(&e, &[
        "z.yaml doc 0 ServiceEntry default/reviews2: spec.hosts[0]: duplicate host reviews.default.svc.cluster.local (already defined by services.yaml doc 0 ServiceEntry default/reviews)",
        "z.yaml doc 1 ServiceEntry default/other: spec.addresses[0]: duplicate VIP:port 10.0.0.10:9080",
    ]);
}

#[test]
fn bad_api_version_and_string_match() {
    let e = errors_with(&[("v.yaml", "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: {name: v}\nspec: {hosts: [reviews]}\n")]);
    assert_has(
        &e,
        &["v.yaml doc 0 VirtualService default/v: apiVersion: unsupported version v2"],
    );
    let e = errors_with(&[("reviews.yaml", &vs("  - match: [{uri: {exact: /a, prefix: /b}}]\n    route:\n    - destination: {host: reviews}\n"))]);
    assert_has(
        &e,
        &["spec.http[0].match[0].uri: only one of exact, prefix or regex may be set"],
    );
}

#[test]
fn all_errors_reported_one_per_line() {
    let e = errors_with(&[
        ("a.yaml", "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: a}\nspec: {address: nope}\n"),
        ("b.yaml", "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: b}\nspec: {address: also-nope}\n"),
    ]);
    assert_eq!(e.lines().count(), 2, "{e}");
    assert!(e.lines().next().unwrap().starts_with("a.yaml doc 0"));
}

/// Line numbers are the file's, in any document, with no padding of documents (each is parsed
/// from its own slice of the file and the lines before it are added back).
#[test]
fn type_error_in_a_later_document_names_the_file_line() {
    let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: x}\nspec:\n  hosts: [x]\n  ports:\n  - number: [1]\n    name: http\n";
    let ok = "apiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {name: w0}\nspec: {address: 10.0.0.1}\n";
    // Two 5-line documents (marker + 4 lines) before: the bad `number` is on line 10 + 8.
    let file = format!("---\n{ok}---\n{ok}---\n{se}");
    let e = errors_with(&[("x.yaml", &file)]);
    assert_has(
        &e,
        &[
            "x.yaml doc 2 ServiceEntry default/x: spec.ports[0].number: invalid",
            "line 18",
        ],
    );
}
