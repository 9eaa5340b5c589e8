//! Host forms, precedence between VirtualServices, weights.

use super::*;

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
