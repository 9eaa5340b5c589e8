//! Gateway API HTTPRoute attached to Services.

use crate::actions::{RedirectPath, RedirectPort, RouteAction};
use crate::{load_str, RouteDecision, SimpleRequest, Snapshot};
use std::time::Duration;

const SERVICES: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web}
spec:
  hosts: [web.default.svc.cluster.local]
  addresses: [10.0.1.1]
  ports: [{number: 80, name: http}]
  resolution: STATIC
  endpoints: [{address: 127.0.1.1}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.default.svc.cluster.local]
  addresses: [10.0.1.2]
  ports: [{number: 8080, name: http}]
  resolution: STATIC
  endpoints: [{address: 127.0.1.2}]
";

const HEAD: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: web-route}\nspec:\n  parentRefs: [{kind: Service, group: \"\", name: web, port: 80}]\n  rules:\n";

fn route_doc(rules: &str) -> String {
    format!("{HEAD}{rules}")
}

fn try_load(docs: &[&str]) -> Result<Snapshot, String> {
    let mut files = vec![("services.yaml".to_string(), SERVICES.to_string())];
    for (i, d) in docs.iter().enumerate() {
        files.push((format!("r{i}.yaml"), d.to_string()));
    }
    load_str(&files, "cluster.local").map_err(|e| e.to_string())
}

fn load(rules: &str) -> Snapshot {
    try_load(&[&route_doc(rules)]).unwrap_or_else(|e| panic!("load failed:\n{e}"))
}

fn err(rules: &str) -> String {
    match try_load(&[&route_doc(rules)]) {
        Ok(_) => panic!("load unexpectedly succeeded"),
        Err(e) => e,
    }
}

/// The route name picked for `req` on web:80, or None (default / no route).
fn pick(s: &Snapshot, req: SimpleRequest) -> Option<String> {
    let svc = s.service_by_host("web.default.svc.cluster.local").unwrap();
    match s.route(svc, 80, &req.with_port(80)) {
        RouteDecision::Route { route, .. } => Some(route.name.clone()),
        _ => None,
    }
}

const BACKEND: &str = "    backendRefs: [{name: api, port: 8080}]\n";

#[test]
fn path_prefix_matches_segments() {
    let s = load(&format!(
        "  - matches: [{{path: {{type: PathPrefix, value: /foo}}}}]\n{BACKEND}"
    ));
    assert_eq!(
        pick(&s, SimpleRequest::new("/foo")),
        Some("web-route.0".into())
    );
    assert_eq!(
        pick(&s, SimpleRequest::new("/foo/bar?x=1")),
        Some("web-route.0".into())
    );
    assert_eq!(
        pick(&s, SimpleRequest::new("/foo/")),
        Some("web-route.0".into())
    );
    assert_eq!(pick(&s, SimpleRequest::new("/foobar")), None);
    // Trailing slash in the value means the same segment prefix.
    let s = load(&format!(
        "  - matches: [{{path: {{value: /foo/}}}}]\n{BACKEND}"
    ));
    assert_eq!(
        pick(&s, SimpleRequest::new("/foo")),
        Some("web-route.0".into())
    );
    assert_eq!(pick(&s, SimpleRequest::new("/foox")), None);
    // Default: PathPrefix /.
    let s = load(&format!("  - matches: [{{method: GET}}]\n{BACKEND}"));
    assert_eq!(
        pick(&s, SimpleRequest::new("/anything")),
        Some("web-route.0".into())
    );
}

#[test]
fn exact_regex_headers_query_method() {
    const I: &str = "  ";
    let s = load(&format!(
        "  - name: exact\n    matches: [{{path: {{type: Exact, value: /a}}}}]\n{BACKEND}{I}- name: re\n    matches: [{{path: {{type: RegularExpression, value: \"/r/[0-9]+\"}}}}]\n{BACKEND}{I}- name: hdr\n    matches: [{{headers: [{{name: X-Env, value: canary}}, {{type: RegularExpression, name: x-v, value: \"v[12]\"}}]}}]\n{BACKEND}{I}- name: q\n    matches: [{{queryParams: [{{name: debug, value: \"1\"}}]}}, {{method: DELETE}}]\n{BACKEND}"
    ));
    assert_eq!(pick(&s, SimpleRequest::new("/a")), Some("exact".into()));
    assert_eq!(pick(&s, SimpleRequest::new("/a/b")), None);
    assert_eq!(pick(&s, SimpleRequest::new("/r/12")), Some("re".into()));
    assert_eq!(pick(&s, SimpleRequest::new("/r/x")), None);
    let h = SimpleRequest::new("/h").with_header("x-env", "canary");
    assert_eq!(pick(&s, h.clone()), None);
    assert_eq!(pick(&s, h.with_header("x-v", "v2")), Some("hdr".into()));
    assert_eq!(pick(&s, SimpleRequest::new("/z?debug=1")), Some("q".into()));
    assert_eq!(
        pick(&s, SimpleRequest::new("/z").with_method("DELETE")),
        Some("q".into())
    );
    assert_eq!(pick(&s, SimpleRequest::new("/z")), None);
}

fn first(s: &Snapshot) -> &crate::HttpRoute {
    &s.routes.get("web.default.svc.cluster.local").unwrap()[0].route
}

#[test]
fn header_modifier_filters() {
    let s = load(&format!("  - filters:\n    - type: RequestHeaderModifier\n      requestHeaderModifier: {{set: [{{name: X-A, value: \"1\"}}], add: [{{name: x-b, value: \"2\"}}], remove: [x-c]}}\n    - type: ResponseHeaderModifier\n      responseHeaderModifier: {{set: [{{name: x-r, value: \"3\"}}]}}\n{BACKEND}"));
    let r = first(&s);
    let mut req: Vec<(String, String)> =
        vec![("x-c".into(), "gone".into()), ("x-a".into(), "0".into())];
    r.apply_request_headers(None, &mut req);
    assert_eq!(
        req,
        vec![
            ("x-a".to_string(), "1".to_string()),
            ("x-b".to_string(), "2".to_string())
        ]
    );
    let mut resp: Vec<(String, String)> = Vec::new();
    r.apply_response_headers(None, &mut resp);
    assert_eq!(resp, vec![("x-r".to_string(), "3".to_string())]);
}

#[test]
fn redirect_filter() {
    let s = load("  - filters:\n    - type: RequestRedirect\n      requestRedirect: {scheme: https, hostname: example.com, path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}\n");
    let RouteAction::Redirect(rd) = &first(&s).action else {
        panic!("not a redirect")
    };
    assert_eq!(rd.code, 301);
    assert_eq!(rd.scheme.as_deref(), Some("https"));
    assert_eq!(rd.authority.as_deref(), Some("example.com"));
    assert_eq!(rd.path, Some(RedirectPath::Uri("/new".into())));
    assert_eq!(rd.port, Some(RedirectPort::FromProtocolDefault));
    let s =
        load("  - filters:\n    - type: RequestRedirect\n      requestRedirect: {port: 8443}\n");
    let RouteAction::Redirect(rd) = &first(&s).action else {
        panic!("not a redirect")
    };
    assert_eq!(rd.code, 302);
    assert_eq!(rd.port, Some(RedirectPort::Port(8443)));
}

#[test]
fn redirect_replace_prefix_match() {
    let s = load("  - matches: [{path: {value: /foo}}]\n    filters:\n    - type: RequestRedirect\n      requestRedirect: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /bar}, statusCode: 301}\n");
    let RouteAction::Redirect(rd) = &first(&s).action else {
        panic!("not a redirect")
    };
    let loc = |path: &str| rd.location("http", "reviews:9080", path, 9080, None).1;
    assert_eq!(loc("/foo/x?q=1"), "http://reviews:9080/bar/x?q=1");
    assert_eq!(loc("/foo"), "http://reviews:9080/bar");
    assert!(s.warnings().is_empty(), "{:?}", s.warnings());
}

#[test]
fn url_rewrite_filter() {
    let s = load(&format!("  - matches: [{{path: {{value: /foo}}}}]\n    filters:\n    - type: URLRewrite\n      urlRewrite: {{hostname: other, path: {{type: ReplacePrefixMatch, replacePrefixMatch: /bar}}}}\n{BACKEND}"));
    let r = first(&s);
    assert_eq!(
        r.rewrite.as_ref().unwrap().authority.as_deref(),
        Some("other")
    );
    assert_eq!(
        r.rewritten_path(None, "/foo/x?q=1").as_deref(),
        Some("/bar/x?q=1")
    );
    assert_eq!(r.rewritten_path(None, "/foo").as_deref(), Some("/bar"));
    let s = load(&format!("  - matches: [{{path: {{value: /foo}}}}]\n    filters:\n    - type: URLRewrite\n      urlRewrite: {{path: {{type: ReplacePrefixMatch, replacePrefixMatch: /}}}}\n{BACKEND}"));
    assert_eq!(
        first(&s).rewritten_path(None, "/foo/x").as_deref(),
        Some("/x")
    );
    assert_eq!(first(&s).rewritten_path(None, "/foo").as_deref(), Some("/"));
    let s = load(&format!("  - filters:\n    - type: URLRewrite\n      urlRewrite: {{path: {{type: ReplaceFullPath, replaceFullPath: /all}}}}\n{BACKEND}"));
    assert_eq!(
        first(&s).rewritten_path(None, "/a/b?k=v").as_deref(),
        Some("/all?k=v")
    );
}

#[test]
fn mirror_filter_and_unsupported() {
    let s = load(&format!("  - filters:\n    - type: RequestMirror\n      requestMirror: {{backendRef: {{name: api, port: 8080}}}}\n    - type: ExtensionRef\n      extensionRef: {{name: x}}\n{BACKEND}"));
    let m = &first(&s).mirrors[0];
    assert_eq!(m.host, "api.default.svc.cluster.local");
    assert_eq!(m.percentage, crate::actions::Percent::HUNDRED);
    assert!(
        s.warnings
            .iter()
            .any(|w| w.contains("filter ExtensionRef is not supported")),
        "{:?}",
        s.warnings
    );
}

#[test]
fn weights_and_empty_backends() {
    let s = load("  - backendRefs: [{name: api, port: 8080, weight: 3}, {name: web, port: 80}, {name: web, port: 80, weight: 0}]\n");
    let d = &first(&s).destinations;
    assert_eq!(d.len(), 2);
    assert_eq!(
        (d[0].host.as_str(), d[0].weight, d[0].port),
        ("api.default.svc.cluster.local", 3, Some(8080))
    );
    assert_eq!(d[1].weight, 1);
    let s = load("  - matches: [{path: {value: /x}}]\n");
    assert!(matches!(&first(&s).action, RouteAction::DirectResponse(d) if d.status == 500));
    let s = load("  - backendRefs: [{name: api, port: 8080, weight: 0}]\n");
    assert!(matches!(&first(&s).action, RouteAction::DirectResponse(d) if d.status == 500));
}

#[test]
fn timeouts() {
    let s = load(&format!(
        "  - timeouts: {{request: 1m30s, backendRequest: 500ms}}\n{BACKEND}"
    ));
    let r = first(&s);
    assert_eq!(r.timeout, Some(Duration::from_secs(90)));
    assert_eq!(r.retries.per_try_timeout, Some(Duration::from_millis(500)));
    assert!(err(&format!("  - timeouts: {{request: 10x}}\n{BACKEND}"))
        .contains("spec.rules[0].timeouts.request: invalid duration"));
}

#[test]
fn errors() {
    let e = err(&format!(
        "  - matches: [{{path: {{type: Suffix, value: /a}}}}]\n{BACKEND}"
    ));
    assert!(e.contains("r0.yaml doc 0") || e.contains("r0.yaml"), "{e}");
    assert!(
        e.contains("spec.rules[0].matches[0].path.type: unknown path match type Suffix"),
        "{e}"
    );
    let e = err(&format!("  - matches: [{{headers: [{{type: RegularExpression, name: a, value: \"(\"}}]}}]\n{BACKEND}"));
    assert!(
        e.contains("spec.rules[0].matches[0].headers[0].value: invalid regex"),
        "{e}"
    );
    let e = err("  - backendRefs: [{name: nope, port: 80}]\n");
    assert!(e.contains("spec.rules[0].backendRefs[0]: backend nope.default.svc.cluster.local is not a known service"), "{e}");
    let e = err("  - backendRefs: [{name: api}]\n");
    assert!(
        e.contains("spec.rules[0].backendRefs[0].port: missing required field"),
        "{e}"
    );
}

#[test]
fn parents_and_precedence() {
    let doc = "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{kind: Service, name: ghost}, {kind: Service, group: core, name: api}]\n  rules:\n  - backendRefs: [{name: api, port: 8080}]\n";
    let s = try_load(&[doc]).unwrap();
    assert!(
        s.warnings.iter().any(|w| w.contains(
            "spec.parentRefs[0]: ghost.default.svc.cluster.local is not a known service"
        )),
        "{:?}",
        s.warnings
    );
    assert!(s.routes.contains_key("api.default.svc.cluster.local"));
    // A VirtualService for the same service wins.
    let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: api-vs}\nspec:\n  hosts: [api.default.svc.cluster.local]\n  http:\n  - route: [{destination: {host: web.default.svc.cluster.local}}]\n";
    let s = try_load(&[doc, vs]).unwrap();
    assert_eq!(
        s.routes.get("api.default.svc.cluster.local").unwrap()[0].virtual_service,
        "default/api-vs"
    );
    assert!(
        s.warnings.iter().any(|w| w.contains(
            "routed by VirtualService default/api-vs; the VirtualService takes precedence"
        )),
        "{:?}",
        s.warnings
    );
}

#[test]
fn route_picks_httproute_rule_on_parent_port() {
    let s = load(&format!("  - matches: [{{path: {{value: /v2}}}}]\n{BACKEND}  - backendRefs: [{{name: web, port: 80}}]\n"));
    let svc = s.service_by_host("web").unwrap();
    match s.route(svc, 80, &SimpleRequest::new("/v2/x").with_port(80)) {
        RouteDecision::Route {
            virtual_service,
            route_index,
            route,
        } => {
            assert_eq!(virtual_service, "default/web-route");
            assert_eq!(route_index, 0);
            assert_eq!(route.destinations[0].host, "api.default.svc.cluster.local");
        }
        other => panic!("{other:?}"),
    }
    match s.route(svc, 80, &SimpleRequest::new("/v2x").with_port(80)) {
        RouteDecision::Route { route_index, .. } => assert_eq!(route_index, 1),
        other => panic!("{other:?}"),
    }
}
