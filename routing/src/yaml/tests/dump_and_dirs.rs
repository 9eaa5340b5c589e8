//! Config dump, versions, the example directory, DNS ServiceEntries, one- and two-pass parsing.

use super::*;

#[test]
fn config_dump_json() {
    let s = load(&[]);
    let j = s.to_json();
    assert_eq!(j["services"][0]["service"]["hostname"], FQDN);
    assert_eq!(j["services"][0]["endpoints"].as_array().unwrap().len(), 3);
    assert_eq!(j["clusters"].as_array().unwrap().len(), 4);
    assert_eq!(
        j["destination_rules"][0]["traffic_policy"]["load_balancer"]["simple"],
        "RANDOM"
    );
    assert_eq!(j["clusters"][0]["lb"], "RANDOM");
}

#[test]
fn versions_differ_per_load() {
    assert_ne!(load(&[]).version(), load(&[]).version());
}

#[test]
fn example_directory_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/bookinfo");
    let s = load_dir(&dir, "cluster.local").unwrap_or_else(|e| panic!("{e}"));
    assert!(s.warnings().is_empty(), "{:?}", s.warnings());
    let hosts: Vec<&str> = s.services().map(|s| s.hostname.as_str()).collect();
    assert_eq!(
        hosts,
        vec![
            "reviews.default.svc.cluster.local",
            "ratings.default.svc.cluster.local",
            "mongodb.default.svc.cluster.local"
        ]
    );
    assert_eq!(s.cluster(FQDN, 9080, None).unwrap().endpoints.len(), 3);
    assert_eq!(
        s.cluster(FQDN, 9080, Some("v2")).unwrap().endpoints[0].target(),
        addr("127.0.10.2:9080")
    );
    let ratings = s.service_by_host("ratings:9080").unwrap();
    assert!(matches!(
        s.route(ratings, 9080, &SimpleRequest::new("/")),
        RouteDecision::Default
    ));
    let c = s
        .cluster("ratings.default.svc.cluster.local", 9080, None)
        .unwrap();
    assert_eq!(c.endpoints.len(), 1);
    assert_eq!(c.endpoints[0].target(), addr("127.0.10.4:9080"));
    match s.resolve_destination(addr("10.0.0.30:27017")) {
        Some(Destination::Service { service, port }) => {
            assert_eq!(service.hostname, "mongodb.default.svc.cluster.local");
            assert_eq!(port.protocol, Protocol::Tcp);
        }
        other => panic!("{other:?}"),
    }
    let m = s
        .cluster("mongodb.default.svc.cluster.local", 27017, None)
        .unwrap();
    assert_eq!(
        &*m.name,
        "inbound-vip|27017|tcp|mongodb.default.svc.cluster.local"
    );
    assert_eq!(m.endpoints[0].target(), addr("127.0.10.5:27017"));
    let reviews = s.service_by_host("reviews").unwrap();
    assert!(matches!(
        s.route(reviews, 9080, &SimpleRequest::new("/")),
        RouteDecision::Route { .. }
    ));
}

#[test]
fn service_entry_resolution_dns_uses_the_answers_given() {
    use crate::dns::{DnsAnswers, DnsFamily, DnsQuery};
    let se = |resolution: &str, endpoints: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: ext\n  namespace: default\nspec:\n  hosts: [ext.example.com]\n  addresses: [10.9.0.1]\n  ports:\n  - number: 443\n    name: tls\n    protocol: TLS\n    targetPort: 8443\n  resolution: {resolution}\n{endpoints}"
        )
    };
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let q = |h: &str| DnsQuery {
        hostname: h.to_string(),
        family: DnsFamily::V4,
    };
    let answers: DnsAnswers = [
        (q("ext.example.com"), vec![ip("192.0.2.1"), ip("192.0.2.2")]),
        (q("a.example.net"), vec![ip("192.0.2.9")]),
    ]
    .into_iter()
    .collect();
    let load = |yaml: String, answers: &DnsAnswers| {
        let mut opts = crate::yaml::LoadOptions::new("cluster.local");
        opts.dns = answers.clone();
        crate::yaml::check_str_with(&[("se.yaml".to_string(), yaml)], &opts).result
    };
    let eps = |s: &Snapshot| {
        let mut v: Vec<(String, crate::Transport)> = s
            .endpoints("ext.example.com")
            .iter()
            .map(|e| (e.address.to_string(), e.transport))
            .collect();
        v.sort();
        v
    };
    let direct = crate::Transport::Direct;
    // No endpoints: the host itself, every address.
    let s = load(se("DNS", ""), &answers).unwrap();
    assert_eq!(
        eps(&s),
        vec![("192.0.2.1".into(), direct), ("192.0.2.2".into(), direct)]
    );
    assert_eq!(s.dns_targets().len(), 1);
    assert_eq!(s.dns_targets()[0].query, q("ext.example.com"));
    assert_eq!(
        s.service_by_host("ext.example.com").unwrap().ports[0].target_port,
        8443
    );
    // Not answered yet: no endpoints, still a target.
    let s = load(se("DNS", ""), &DnsAnswers::new()).unwrap();
    assert!(eps(&s).is_empty());
    assert_eq!(s.dns_targets().len(), 1);
    // A hostname endpoint beside an IP one; DNS_ROUND_ROBIN takes the first address only.
    let listed = "  endpoints:\n  - address: a.example.net\n  - address: 192.0.2.50\n";
    let s = load(se("DNS", listed), &answers).unwrap();
    assert_eq!(eps(&s).len(), 2);
    let s = load(se("DNS_ROUND_ROBIN", ""), &answers).unwrap();
    assert_eq!(eps(&s), vec![("192.0.2.1".into(), direct)]);
    // STATIC: a hostname is still not an address.
    assert!(load(
        se("STATIC", "  endpoints:\n  - address: a.example.net\n"),
        &answers
    )
    .is_err());
}

/// A document whose `kind` precedes its `spec` is parsed once, the spec as its kind's type;
/// one with the spec first, an unknown top-level key or a spec error takes the two-pass path,
/// which words the diagnostics (so errors keep their field path and file line).
#[test]
fn one_pass_for_kind_before_spec_two_passes_otherwise() {
    let pass = crate::yaml::one_pass(SERVICE_ENTRY)
        .expect("one pass")
        .expect("not empty");
    let spec = pass.spec.expect("spec parsed with the header");
    assert!(spec.is::<Option<crate::yaml::service_entry::Spec>>());
    let spec_first = "spec: {hosts: [a]}\nkind: ServiceEntry\n";
    assert!(crate::yaml::one_pass(spec_first)
        .unwrap()
        .unwrap()
        .spec
        .is_none());
    assert!(crate::yaml::one_pass("kind: ServiceEntry\nextra: 1\nspec: {}\n").is_none());
    let bad = SERVICE_ENTRY.replace("number: 9080", "number: [1]");
    assert!(crate::yaml::one_pass(&bad).is_none());
    let err = load_str(&[("a.yaml".into(), format!("---\n{bad}"))], "cluster.local")
        .unwrap_err()
        .to_string();
    assert!(err.contains("spec.ports[0].number"), "{err}");
    assert!(err.contains("at line 10, column 13"), "{err}");
    // Both paths load the same service.
    let reordered = "spec:\n  hosts: [reviews]\n  addresses: [10.0.0.10]\n  ports:\n  - {number: 9080, name: http}\n  resolution: STATIC\n  workloadSelector: {labels: {app: reviews}}\napiVersion: networking.istio.io/v1beta1\nkind: ServiceEntry\nmetadata: {name: reviews}\n";
    for text in [SERVICE_ENTRY, reordered] {
        let s = load_str(&[("a.yaml".into(), text.to_string())], "cluster.local").unwrap();
        assert!(s
            .service_by_host("reviews.default.svc.cluster.local")
            .is_some());
    }
}
