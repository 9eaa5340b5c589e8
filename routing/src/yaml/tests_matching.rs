//! VirtualService `http[].match` semantics, host resolution, precedence
//! between VirtualServices, weights and `explain_route`, as table tests.

use super::tests::files;
use crate::{load_str, ExplainedDecision, RouteDecision, SimpleRequest, Snapshot};

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

#[test]
fn hosts_short_fqdn_and_wildcard() {
    let vs_in = |ns: &str, name: &str, hosts: &str| {
        format!("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  hosts: {hosts}\n  http:\n{}", rule(name, &[]))
    };
    let s = load(&[
        // short name resolves in the VirtualService's namespace
        ("a.yaml", &vs_in("other", "short", "[ratings]")),
        // FQDN as written
        ("b.yaml", &vs_in("default", "fqdn", &format!("[{FQDN}]"))),
        // a wildcard applies to every service it matches
        ("c.yaml", &vs_in("default", "wild", "['*.example.com']")),
        // `ratings` in default is ratings.default…: unknown
        (
            "d.yaml",
            &vs_in("default", "miss", "[ratings, '*.nowhere.io']"),
        ),
    ]);
    assert_eq!(
        decide(&s, "ratings.other.svc.cluster.local", 9080, &req("/")),
        "short"
    );
    assert_eq!(decide(&s, FQDN, 9080, &req("/")), "fqdn");
    assert_eq!(decide(&s, "api.example.com", 80, &req("/")), "wild");
    assert_eq!(decide(&s, "web.example.com", 80, &req("/")), "wild");
    let w = s.warnings().join("\n");
    for needle in [
        "d.yaml doc 0 VirtualService default/miss: spec.hosts[0]: ratings.default.svc.cluster.local is not a known service; ignored",
        "d.yaml doc 0 VirtualService default/miss: spec.hosts[1]: *.nowhere.io matches no known service; ignored",
    ] {
        assert!(w.contains(needle), "missing {needle:?} in\n{w}");
    }
    let wild = s
        .virtual_services()
        .iter()
        .find(|v| v.name == "wild")
        .unwrap();
    assert_eq!(wild.hosts, vec!["api.example.com", "web.example.com"]);
    // a VirtualService from another namespace than the service's: applied, with a warning
    let s = load(&[("e.yaml", &vs_in("other", "cross", &format!("[{FQDN}]")))]);
    assert_eq!(decide(&s, FQDN, 9080, &req("/")), "cross");
    assert!(s.warnings().iter().any(|w| w.contains(
        "service reviews.default.svc.cluster.local is in namespace default: istiod applies"
    )));
    // istiod's host validation
    let e = load_error(&vs_in("default", "r", "['*']"));
    assert!(e.contains(&format!("{AT}spec.hosts[0]: wildcard host * is not allowed for virtual services bound to the mesh gateway")), "{e}");
    let e = load_error(&vs_in("default", "r", "['*.example.com', api.example.com]"));
    assert!(e.contains(&format!("{AT}spec.hosts[1]: duplicate hosts in virtual service: *.example.com & api.example.com")), "{e}");
    // gateways without mesh: not for the waypoint
    let gw = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: ['*']\n  gateways: [istio-system/ingress]\n  http:\n  - route: [{destination: {host: reviews}}]\n";
    let s = load(&[("vs.yaml", gw)]);
    assert_eq!(decide(&s, FQDN, 9080, &req("/")), "DEFAULT");
    assert!(s.warnings().iter().any(|w| w == &format!("{AT}spec.gateways: [istio-system/ingress] does not include mesh: the VirtualService applies to gateways only; skipped")));
}

#[test]
fn several_virtual_services_first_wins() {
    let a = vs("a", &rule("from-a", &["{uri: {prefix: /a}}"]));
    let b = vs("b", &rule("from-b", &[]));
    // load order stands in for creation order: a.yaml before b.yaml
    let s = load(&[("a.yaml", &a), ("b.yaml", &b)]);
    assert_eq!(decide(&s, FQDN, 9080, &req("/a")), "from-a");
    // not merged: b's catch-all is not used after a's routes
    assert_eq!(decide(&s, FQDN, 9080, &req("/b")), "404");
    assert!(s.warnings().iter().any(|w| w == "b.yaml doc 0 VirtualService default/b: service reviews.default.svc.cluster.local already has VirtualService default/a; only the first VirtualService for a host applies at a waypoint (routes are not merged), so this one is ignored for it"));
    // creationTimestamp, when present, decides (then name, then namespace)
    let stamp = |y: &str, ts: &str| {
        y.replacen(
            "metadata: {name: ",
            &format!("metadata: {{creationTimestamp: '{ts}', name: "),
            1,
        )
    };
    let s = load(&[
        ("a.yaml", &stamp(&a, "2024-05-02T00:00:00Z")),
        ("b.yaml", &stamp(&b, "2024-05-01T00:00:00Z")),
    ]);
    assert_eq!(decide(&s, FQDN, 9080, &req("/a")), "from-b");
    let s = load(&[
        ("a.yaml", &stamp(&b, "2024-05-01T00:00:00Z")),
        ("b.yaml", &stamp(&a, "2024-05-01T00:00:00Z")),
    ]);
    assert_eq!(
        decide(&s, FQDN, 9080, &req("/b")),
        "404",
        "same time: name a first"
    );
    // the explanation lists both
    let svc = s.service_by_host(FQDN).unwrap();
    let x = s.explain_route(svc, 9080, &req("/a"));
    assert_eq!(x.virtual_services, vec!["default/a", "default/b"]);
    assert_eq!(x.applied.as_deref(), Some("default/a"));
}

#[test]
fn weights_zero_dropped_and_relative() {
    let split = |weights: &[Option<i64>]| {
        let mut s = "  - route:\n".to_string();
        for (i, w) in weights.iter().enumerate() {
            s += &format!("    - destination: {{host: reviews, subset: v{}}}\n", i + 1);
            if let Some(w) = w {
                s += &format!("      weight: {w}\n");
            }
        }
        vs("r", &s)
    };
    let dests = |s: &Snapshot| -> Vec<(String, u32)> {
        s.virtual_services()[0].http[0]
            .destinations
            .iter()
            .map(|d| (d.subset.clone().unwrap(), d.weight))
            .collect()
    };
    let s = load(&[("vs.yaml", &split(&[None]))]);
    assert_eq!(dests(&s), vec![("v1".into(), 100)]);
    // a lone destination gets everything, whatever its weight (warned)
    let s = load(&[("vs.yaml", &split(&[Some(0)]))]);
    assert_eq!(dests(&s), vec![("v1".into(), 100)]);
    assert!(s.warnings().iter().any(|w| w == &format!("{AT}spec.http[0].route[0].weight: weight 0 of the only destination has no effect; it receives all requests")));
    // zero (or missing) weights among several are dropped
    let s = load(&[("vs.yaml", &split(&[Some(100), Some(0), None]))]);
    assert_eq!(dests(&s), vec![("v1".into(), 100)]);
    assert!(s.warnings().is_empty(), "{:?}", s.warnings());
    // weights are relative; a total other than 100 is a warning
    let s = load(&[("vs.yaml", &split(&[Some(1), Some(3)]))]);
    assert_eq!(dests(&s), vec![("v1".into(), 1), ("v2".into(), 3)]);
    assert!(s.warnings().iter().any(|w| w == &format!("{AT}spec.http[0].route: weights sum to 4, not 100: each destination receives weight/4 of the requests")));
    // errors
    let e = load_error(&split(&[Some(0), None]));
    assert!(
        e.contains(&format!(
            "{AT}spec.http[0].route: all weights are zero (total destination weight = 0)"
        )),
        "{e}"
    );
    let e = load_error(&split(&[Some(50), Some(-1)]));
    assert!(
        e.contains(&format!(
            "{AT}spec.http[0].route[1].weight: weight -1 out of range 0..2147483647"
        )),
        "{e}"
    );
    let e = load_error(&split(&[Some(3_000_000_000)]));
    assert!(
        e.contains(&format!(
            "{AT}spec.http[0].route[0].weight: weight 3000000000 out of range 0..2147483647"
        )),
        "{e}"
    );
}

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
