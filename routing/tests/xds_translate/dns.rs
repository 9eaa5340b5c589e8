//! dns_serviceentry_*.json: DNS ServiceEntry clusters.

use super::*;

/// bookinfo.json with a DNS ServiceEntry overlay (`dns_serviceentry_<release>.json`): the
/// overlay's clusters replace bookinfo's of the same name, their EDS assignments dropped.
fn bookinfo_with_dns(fixture_name: &str, answers: routing::dns::DnsAnswers) -> Translation {
    let mut res = load_resources(&fixture("bookinfo.json")).unwrap();
    let over = load_resources(&fixture(fixture_name)).unwrap();
    res.clusters
        .retain(|c| !over.clusters.iter().any(|o| o.name == c.name));
    res.endpoints
        .retain(|e| !over.clusters.iter().any(|o| o.name == e.cluster_name));
    res.clusters.extend(over.clusters);
    let opts = TranslateOptions {
        dns: answers,
        ..TranslateOptions::default()
    };
    xds::translate(&res, &opts).unwrap_or_else(|r| panic!("rejected: {r:?}"))
}

fn dns_endpoints(t: &Translation, host: &str) -> Vec<(String, routing::Transport)> {
    let c = t.snapshot.cluster(host, 9080, None).unwrap();
    let mut eps: Vec<_> = c
        .endpoints
        .iter()
        .map(|e| (e.target().to_string(), e.endpoint.transport))
        .collect();
    eps.sort();
    eps
}

/// A ServiceEntry `resolution: DNS` / `DNS_ROUND_ROBIN` bound to the waypoint (istiod 1.24.6 and
/// 1.30.3 shapes): the hostnames are listed to resolve, and the endpoints are the answers given,
/// dialled directly; STRICT_DNS takes every address of every hostname, LOGICAL_DNS the first.
#[test]
fn dns_service_entry_clusters_resolve_through_the_answers_given() {
    use routing::dns::{DnsFamily, DnsQuery};
    const RATINGS: &str = "ratings.default.svc.cluster.local";
    const PRODUCTPAGE: &str = "productpage.default.svc.cluster.local";
    for (fixture_name, logical_family) in [
        ("dns_serviceentry_1_24.json", DnsFamily::V4),
        ("dns_serviceentry_1_30.json", DnsFamily::All),
    ] {
        let q = |h: &str, family| DnsQuery {
            hostname: h.to_string(),
            family,
        };
        // Nothing resolved yet: no endpoints, a warning, the targets listed.
        let t = bookinfo_with_dns(fixture_name, Default::default());
        assert!(dns_endpoints(&t, RATINGS).is_empty());
        let mut targets: Vec<_> = t.dns.iter().map(|d| d.query.clone()).collect();
        targets.sort();
        assert_eq!(
            targets,
            vec![
                q("productpage.example.com", logical_family),
                q("ratings-a.example.com", DnsFamily::V4),
                q("ratings-b.example.com", DnsFamily::V4),
            ],
            "{fixture_name}"
        );
        let ratings_a = t
            .dns
            .iter()
            .find(|d| d.query.hostname == "ratings-a.example.com");
        let ratings_a = ratings_a.unwrap();
        assert_eq!(ratings_a.refresh, Duration::from_secs(60));
        assert_eq!(t.snapshot.dns_targets(), &t.dns[..]);
        assert!(ratings_a.respect_ttl);
        assert!(
            t.warnings
                .iter()
                .any(|w| w.message.contains("not resolved yet")),
            "{:?}",
            t.warnings
        );
        // c-ares is accepted without a warning (its settings only tune c-ares).
        assert!(
            !t.warnings.iter().any(|w| w.message.contains("resolver")),
            "{:?}",
            t.warnings
        );
        // Answered.
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let answers = [
            (
                q("ratings-a.example.com", DnsFamily::V4),
                vec![ip("192.0.2.1"), ip("192.0.2.2")],
            ),
            (
                q("ratings-b.example.com", DnsFamily::V4),
                vec![ip("192.0.2.3")],
            ),
            (
                q("productpage.example.com", logical_family),
                vec![ip("198.51.100.7"), ip("198.51.100.8")],
            ),
        ]
        .into_iter()
        .collect();
        let t = bookinfo_with_dns(fixture_name, answers);
        let direct = routing::Transport::Direct;
        assert_eq!(
            dns_endpoints(&t, RATINGS),
            vec![
                ("192.0.2.1:9080".to_string(), direct),
                ("192.0.2.2:9080".to_string(), direct),
                ("192.0.2.3:9080".to_string(), direct),
            ],
            "{fixture_name}: STRICT_DNS"
        );
        assert_eq!(
            dns_endpoints(&t, PRODUCTPAGE),
            vec![("198.51.100.7:9080".to_string(), direct)],
            "{fixture_name}: LOGICAL_DNS"
        );
        // Still served on its VIP.
        assert!(matches!(
            t.snapshot.resolve_destination(addr("10.96.0.11:9080")),
            Some(Destination::Service { service, .. }) if service.hostname == RATINGS
        ));
    }
}
