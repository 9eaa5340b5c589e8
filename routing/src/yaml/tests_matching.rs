//! VirtualService `http[].match` semantics, host resolution, precedence
//! between VirtualServices, weights and `explain_route`, as table tests.

use super::tests::files;
use crate::{load_str, ExplainedDecision, RouteDecision, SimpleRequest, Snapshot};

mod explain;
mod precedence;

const FQDN: &str = "reviews.default.svc.cluster.local";

/// More services: `ratings` in namespace `other`, `api.example.com` and
/// `web.example.com` (namespace `default`), each with one inline endpoint.
const MORE_SERVICES: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings, namespace: other}
spec:
  hosts: [ratings]
  addresses: [10.0.0.20]
  ports: [{number: 9080, name: http}]
  endpoints: [{address: 127.0.10.4}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  addresses: [10.0.0.21]
  ports: [{number: 80, name: http}]
  endpoints: [{address: 127.0.10.6}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web}
spec:
  hosts: [web.example.com]
  addresses: [10.0.0.22]
  ports: [{number: 80, name: http}]
  endpoints: [{address: 127.0.10.7}]
";

/// The bookinfo set with `reviews.yaml` replaced by `vs_files` (and more services).
fn try_load(vs_files: &[(&str, &str)]) -> Result<Snapshot, String> {
    let mut f = files(&[("more-services.yaml", MORE_SERVICES)]);
    f.retain(|(n, _)| n != "reviews.yaml");
    f.extend(vs_files.iter().map(|(n, c)| (n.to_string(), c.to_string())));
    load_str(&f, "cluster.local").map_err(|e| e.to_string())
}

fn load(vs_files: &[(&str, &str)]) -> Snapshot {
    try_load(vs_files).unwrap_or_else(|e| panic!("load failed:\n{e}"))
}

/// A VirtualService `name` for `reviews` with these `http` entries.
fn vs(name: &str, http: &str) -> String {
    format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [reviews]\n  http:\n{http}")
}

/// One `http` entry named `name` with these match blocks (YAML flow list items) to subset v1.
fn rule(name: &str, matches: &[&str]) -> String {
    let mut s = format!("  - name: {name}\n");
    if !matches.is_empty() {
        s += "    match:\n";
        for m in matches {
            s += &format!("    - {m}\n");
        }
    }
    s += "    route:\n    - destination: {host: reviews.default.svc.cluster.local, subset: v1}\n";
    s
}

/// `name` of the route taken, `DEFAULT`, or `404`.
fn decide(s: &Snapshot, host: &str, port: u16, req: &SimpleRequest) -> String {
    let svc = s
        .service_by_host(host)
        .unwrap_or_else(|| panic!("no service {host}"));
    match s.route(svc, port, req) {
        RouteDecision::Route { route, .. } => route.name.clone(),
        RouteDecision::Default => "DEFAULT".into(),
        RouteDecision::NoRoute => "404".into(),
    }
}

/// Load one VirtualService with one `m` route (match blocks `blocks`) and
/// check each request: `true` = route `m`, `false` = 404.
fn check_blocks(blocks: &[&str], cases: &[(SimpleRequest, bool)]) {
    let s = load(&[("vs.yaml", &vs("r", &rule("m", blocks)))]);
    for (i, (req, want)) in cases.iter().enumerate() {
        let got = decide(&s, FQDN, 9080, req);
        let want_name = if *want { "m" } else { "404" };
        assert_eq!(got, want_name, "case {i} {blocks:?}: {req:?}");
    }
}

fn req(path: &str) -> SimpleRequest {
    SimpleRequest::new(path)
}

fn load_error(vs_yaml: &str) -> String {
    match try_load(&[("vs.yaml", vs_yaml)]) {
        Ok(_) => panic!("load unexpectedly succeeded:\n{vs_yaml}"),
        Err(e) => e,
    }
}

const AT: &str = "vs.yaml doc 0 VirtualService default/r: ";

#[test]
fn first_match_in_order_wins() {
    let http = [
        rule("a", &["{uri: {prefix: /a}}"]),
        rule("exact-a", &["{uri: {exact: /a}}"]),
        rule("rest", &[]),
    ]
    .concat();
    let s = load(&[("vs.yaml", &vs("r", &http))]);
    for (path, want) in [("/a", "a"), ("/a/b", "a"), ("/b", "rest"), ("/", "rest")] {
        assert_eq!(decide(&s, FQDN, 9080, &req(path)), want, "{path}");
    }
    // The route after the catch-all is never used.
    let s = load(&[(
        "vs.yaml",
        &vs(
            "r",
            &[rule("all", &[]), rule("late", &["{uri: {prefix: /x}}"])].concat(),
        ),
    )]);
    assert!(s.warnings().iter().any(|w| w
        == "vs.yaml doc 0 VirtualService default/r: spec.http[1]: route not used: spec.http[0] before it matches every request"));
}

#[test]
fn uri_exact_prefix_and_ignore_uri_case() {
    check_blocks(
        &["{uri: {exact: /Reviews}, ignoreUriCase: true}"],
        &[
            (req("/reviews"), true),
            (req("/REVIEWS?x=1"), true),
            (req("/reviews/1"), false),
        ],
    );
    check_blocks(
        &["{uri: {prefix: /API}, ignoreUriCase: true}"],
        &[
            (req("/api/v1"), true),
            (req("/Api"), true),
            (req("/ap"), false),
        ],
    );
    check_blocks(
        &["{uri: {prefix: /API}}"],
        &[(req("/API/v1"), true), (req("/api/v1"), false)],
    );
    // exact ignores the query string, prefix sees it (Envoy)
    check_blocks(
        &["{uri: {exact: /a}}"],
        &[(req("/a?b=c"), true), (req("/a/"), false)],
    );
    check_blocks(
        &["{uri: {prefix: '/a?b'}}"],
        &[(req("/a?b=c"), true), (req("/a"), false)],
    );
    // uri {} is "any path"
    check_blocks(&["{uri: {}}"], &[(req("/anything"), true)]);
}

#[test]
fn uri_regex_is_a_full_match() {
    check_blocks(
        &["{uri: {regex: /api}}"],
        &[
            (req("/api"), true),
            (req("/api/v1"), false),
            (req("/x/api"), false),
            (req("/api?x=1"), true),
        ],
    );
    check_blocks(
        &["{uri: {regex: '/api/.*'}}"],
        &[(req("/api/v1"), true), (req("/api"), false)],
    );
    // alternation is anchored as a whole
    check_blocks(
        &["{uri: {regex: '/a|/b'}}"],
        &[(req("/a"), true), (req("/b"), true), (req("/ab"), false)],
    );
}

#[test]
fn headers_exact_prefix_regex_and_presence() {
    check_blocks(
        &["{headers: {End-User: {exact: jason}}}"],
        &[
            (req("/").with_header("end-user", "jason"), true),
            (req("/").with_header("END-USER", "jason"), true),
            (req("/").with_header("end-user", "Jason"), false),
            (req("/"), false),
        ],
    );
    check_blocks(
        &["{headers: {x-v: {prefix: v1}}}"],
        &[
            (req("/").with_header("x-v", "v1.2"), true),
            (req("/").with_header("x-v", "v2"), false),
        ],
    );
    check_blocks(
        &["{headers: {x-v: {regex: 'v[0-9]'}}}"],
        &[
            (req("/").with_header("x-v", "v7"), true),
            (req("/").with_header("x-v", "v77"), false),
        ],
    );
    check_blocks(
        &["{headers: {x-canary: {}}}"],
        &[
            (req("/").with_header("x-canary", ""), true),
            (req("/").with_header("x-canary", "anything"), true),
            (req("/"), false),
        ],
    );
}

#[test]
fn without_headers_is_a_negation() {
    check_blocks(
        &["{withoutHeaders: {x-env: {exact: test}}}"],
        &[
            (req("/"), true),
            (req("/").with_header("x-env", "prod"), true),
            (req("/").with_header("x-env", "test"), false),
        ],
    );
    // `{}` and `regex: "*"`: the header must be absent
    for block in [
        "{withoutHeaders: {x-debug: {}}}",
        "{withoutHeaders: {x-debug: {regex: '*'}}}",
    ] {
        check_blocks(
            &[block],
            &[
                (req("/"), true),
                (req("/").with_header("x-debug", ""), false),
                (req("/").with_header("x-debug", "1"), false),
            ],
        );
    }
    // Envoy treats a missing header as "" here, so `exact: ""` excludes absence too
    check_blocks(
        &["{withoutHeaders: {x-e: {exact: ''}}}"],
        &[(req("/"), false), (req("/").with_header("x-e", "v"), true)],
    );
}

#[test]
fn query_params() {
    check_blocks(
        &["{queryParams: {v: {exact: '1'}}}"],
        &[
            (req("/p?v=1"), true),
            (req("/p?a=b&v=1"), true),
            (req("/p?v=12"), false),
            (req("/p?v=2&v=1"), false), // the first value counts
            (req("/p"), false),
        ],
    );
    check_blocks(
        &["{queryParams: {v: {prefix: ab}}}"],
        &[(req("/p?v=abc"), true), (req("/p?v=xab"), false)],
    );
    check_blocks(
        &["{queryParams: {id: {regex: '[0-9]+'}}}"],
        &[(req("/p?id=42"), true), (req("/p?id=42x"), false)],
    );
    // exact "" = present with an empty value
    check_blocks(
        &["{queryParams: {flag: {exact: ''}}}"],
        &[
            (req("/p?flag"), true),
            (req("/p?flag="), true),
            (req("/p?flag=x"), false),
            (req("/p"), false),
        ],
    );
    // {} = present with any value
    check_blocks(
        &["{queryParams: {flag: {}}}"],
        &[
            (req("/p?flag=x"), true),
            (req("/p?a&flag"), true),
            (req("/p?flagx=1"), false),
        ],
    );
    // raw values, as Envoy's router compares them (no percent-decoding)
    check_blocks(
        &["{queryParams: {q: {exact: 'a%20b'}}}"],
        &[(req("/p?q=a%20b"), true), (req("/p?q=a b"), false)],
    );
}

#[test]
fn method_scheme_authority() {
    check_blocks(
        &["{method: {exact: POST}}"],
        &[(req("/").with_method("POST"), true), (req("/"), false)],
    );
    check_blocks(
        &["{method: {regex: 'GET|HEAD'}}"],
        &[
            (req("/"), true),
            (req("/").with_method("HEAD"), true),
            (req("/").with_method("GETX"), false),
        ],
    );
    check_blocks(
        &["{scheme: {exact: https}}"],
        &[(req("/").with_scheme("https"), true), (req("/"), false)],
    );
    check_blocks(
        &["{authority: {prefix: reviews}}"],
        &[
            (req("/").with_authority("reviews:9080"), true),
            (req("/").with_header("host", "reviews.default"), true),
            (req("/").with_header(":authority", "ratings"), false),
            (req("/"), false),
        ],
    );
}

#[test]
fn port_condition_and_port_scoped_routes() {
    let http = [
        rule("p9080", &["{port: 9080, uri: {prefix: /a}}"]),
        rule("p9081", &["{port: 9081}"]),
    ]
    .concat();
    let s = load(&[("vs.yaml", &vs("r", &http))]);
    assert_eq!(decide(&s, FQDN, 9080, &req("/a")), "p9080");
    assert_eq!(decide(&s, FQDN, 9081, &req("/a")), "p9081");
    // a route exists for 9080, none matched
    assert_eq!(decide(&s, FQDN, 9080, &req("/b")), "404");
    // no route of the VirtualService exists for 9082: istiod's default route
    assert_eq!(decide(&s, FQDN, 9082, &req("/a")), "DEFAULT");
    // RouteMatch::matches takes the port from the view (0 = unknown never matches)
    let r = &s.virtual_services()[0].http[0];
    assert!(r.matches(&req("/a").with_port(9080)));
    assert!(!r.matches(&req("/a")));
}

#[test]
fn source_labels_and_namespace() {
    check_blocks(
        &["{sourceLabels: {app: productpage}, sourceNamespace: web}"],
        &[
            (
                req("/")
                    .with_source_labels([("app", "productpage"), ("version", "v1")])
                    .with_source_namespace("web"),
                true,
            ),
            (
                req("/")
                    .with_source_labels([("app", "productpage")])
                    .with_source_namespace("default"),
                false,
            ),
            (
                req("/")
                    .with_source_labels([("app", "other")])
                    .with_source_namespace("web"),
                false,
            ),
            (req("/").with_source_namespace("web"), false), // labels unknown
            (req("/"), false),
        ],
    );
    let s = load(&[(
        "vs.yaml",
        &vs("r", &rule("m", &["{sourceLabels: {app: productpage}}"])),
    )]);
    assert!(s.warnings().iter().any(|w| w.contains(
        "spec.http[0].match[0].sourceLabels: istiod drops match blocks with sourceLabels at waypoints"
    )));
    // gateways without mesh: the block never applies to a waypoint, so the
    // route does not exist for it (default route, as istiod)
    let s = load(&[(
        "vs.yaml",
        &vs("r", &rule("m", &["{gateways: [default/gw]}"])),
    )]);
    assert_eq!(decide(&s, FQDN, 9080, &req("/")), "DEFAULT");
    check_blocks(
        &["{gateways: [mesh], uri: {prefix: /}}"],
        &[(req("/"), true)],
    );
}

#[test]
fn blocks_are_ored_and_fields_anded() {
    check_blocks(
        &[
            "{uri: {prefix: /a}, headers: {x: {exact: '1'}}, method: {exact: GET}}",
            "{queryParams: {b: {}}}",
        ],
        &[
            (req("/a").with_header("x", "1"), true),
            (req("/a").with_header("x", "1").with_method("PUT"), false),
            (req("/a"), false),
            (req("/z").with_header("x", "1"), false),
            (req("/z?b"), true),
            (req("/a?b").with_method("PUT"), true),
        ],
    );
}

#[test]
fn match_errors_name_the_field() {
    let cases: &[(&str, &str)] = &[
        (
            "{uri: {regex: '('}}",
            "spec.http[0].match[0].uri.regex: invalid regex \"(\": unclosed group",
        ),
        (
            "{headers: {x: {regex: 'a)'}}}",
            "spec.http[0].match[0].headers.x.regex: invalid regex \"a)\": unopened group",
        ),
        (
            "{headers: {x: {regex: '*'}}}",
            "spec.http[0].match[0].headers.x.regex: invalid regex \"*\": repetition operator missing expression",
        ),
        (
            "{uri: {exact: /a, prefix: /b}}",
            "spec.http[0].match[0].uri: only one of exact, prefix or regex may be set",
        ),
        (
            "{method: {prefix: G, regex: G.*}}",
            "spec.http[0].match[0].method: only one of exact, prefix or regex may be set",
        ),
        (
            "{uri: {suffix: /a}}",
            "spec.http[0].match[0].uri.suffix: unknown string match (use exact, prefix or regex)",
        ),
        (
            "{headers: {x: {prefix: ''}}}",
            "spec.http[0].match[0].headers.x.prefix: prefix string match should not be empty",
        ),
        (
            "{queryParams: {q: {regex: ''}}}",
            "spec.http[0].match[0].queryParams.q.regex: regex string match should not be empty",
        ),
        (
            "{headers: {'bad header': {exact: a}}}",
            "spec.http[0].match[0].headers.bad header: header name bad header is not a valid header name",
        ),
        (
            "{headers: {'@request.auth.claims.group': {exact: a}}}",
            "spec.http[0].match[0].headers.@request.auth.claims.group: JWT claim based routing is only supported for gateways",
        ),
        (
            "{port: 70000}",
            "spec.http[0].match[0].port: port 70000 out of range 1..65535",
        ),
        (
            "{sourceNamespace: Bad_NS}",
            "spec.http[0].match[0].sourceNamespace: sourceNamespace match Bad_NS is invalid",
        ),
    ];
    for (block, want) in cases {
        let e = load_error(&vs("r", &rule("m", &[block])));
        assert!(e.contains(&format!("{AT}{want}")), "{block}: got\n{e}");
    }
    // the second match block and a long regex
    let long = "a".repeat(1025);
    let e = load_error(&vs(
        "r",
        &rule(
            "m",
            &[
                "{uri: {prefix: /}}",
                &format!("{{uri: {{regex: '{long}'}}}}"),
            ],
        ),
    ));
    assert!(
        e.contains(&format!(
            "{AT}spec.http[0].match[1].uri.regex: regex is too large, max length allowed is 1024"
        )),
        "{e}"
    );
    // unknown match fields stay warnings
    let s = load(&[(
        "vs.yaml",
        &vs("r", &rule("m", &["{uri: {prefix: /}, statPrefix: x}"])),
    )]);
    assert!(s.warnings().iter().any(
        |w| w == &format!("{AT}spec.http[0].match[0].statPrefix is not supported yet; ignored")
    ));
}
