//! The same waypoint config in the shapes different istiod releases send (fixtures
//! `releases_1_23.json`, `releases_1_30.json`, `multinetwork_1_25.json`, `multinetwork_1_30.json`,
//! each citing its release and source): service chains named `inbound-vip|P||H-http` (1.22/1.23)
//! or after their cluster (1.24+), the multi-network authority map after the IP tree (1.25–1.28)
//! or before it (1.29+), and pods of workloads bound to the waypoint behind the
//! application-protocol matcher on `direct-http` / `direct-tcp`.

use routing::authz::{AuthzView, Jwt, Verdict};
use routing::xds::{self, json::load_resources, TranslateOptions, Translation};
use routing::{Destination, Protocol, Snapshot};
use std::net::{IpAddr, SocketAddr};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/xds/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn translate_text(text: &str) -> Translation {
    let res = load_resources(text).unwrap();
    match xds::translate(&res, &TranslateOptions::default()) {
        Ok(t) => t,
        Err(r) => panic!("rejected: {r:?}"),
    }
}

fn load(name: &str) -> Translation {
    translate_text(&fixture(name))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const WEB: &str = "web.default.svc.cluster.local";
const DB: &str = "db.default.svc.cluster.local";
const MIXED: &str = "mixed.default.svc.cluster.local";

/// Everything routing-relevant about a snapshot's services, as comparable text.
fn services(s: &Snapshot) -> Vec<String> {
    let mut out: Vec<String> = s
        .services()
        .map(|svc| {
            let eps: Vec<String> = s
                .endpoints(&svc.hostname)
                .iter()
                .map(|e| format!("{}={}", e.address, e.workload.identity))
                .collect();
            format!("{} {:?} {:?} {:?}", svc.hostname, svc.vips, svc.ports, eps)
        })
        .collect();
    out.sort();
    out
}

/// A request as authorization sees it.
struct Req {
    http: bool,
    path: &'static str,
}

impl AuthzView for Req {
    fn is_http(&self) -> bool {
        self.http
    }
    fn principal(&self) -> Option<&str> {
        Some("spiffe://cluster.local/ns/default/sa/client")
    }
    fn source_ip(&self) -> Option<IpAddr> {
        None
    }
    fn destination_ip(&self) -> Option<IpAddr> {
        None
    }
    fn destination_port(&self) -> u16 {
        8080
    }
    fn method(&self) -> &str {
        "GET"
    }
    fn host(&self) -> Option<&str> {
        None
    }
    fn path(&self) -> &str {
        self.path
    }
    fn jwt(&self) -> Jwt<'_> {
        Jwt::None
    }
}

fn verdict(t: &Translation, service: Option<&str>, path: &'static str) -> Verdict {
    t.snapshot
        .authorization()
        .for_service(service, true)
        .evaluate(&Req { http: true, path })
        .verdict
}

fn denied(v: &Verdict) -> bool {
    matches!(v, Verdict::Denied { .. })
}

/// Only the warning every fixture without identities has.
fn assert_quiet(t: &Translation) {
    for w in &t.warnings {
        assert!(w.message.contains("without a known identity"), "{w}");
    }
}

#[test]
fn istio_1_23_chain_names_translate_like_1_30() {
    let old = load("releases_1_23.json");
    let new = load("releases_1_30.json");
    assert_quiet(&old);
    assert_quiet(&new);
    assert_eq!(services(&old.snapshot), services(&new.snapshot));
    assert_eq!(old.snapshot.services().count(), 3);
    for t in [&old, &new] {
        let s = &t.snapshot;
        for (vip, host, protocol) in [
            ("10.96.5.1:8080", WEB, Protocol::Http),
            ("10.96.5.2:5432", DB, Protocol::Tcp),
            ("10.96.5.3:9000", MIXED, Protocol::Unknown),
        ] {
            match s.resolve_destination(addr(vip)) {
                Some(Destination::Service { service, port }) => {
                    assert_eq!(service.hostname, host);
                    assert_eq!(port.protocol, protocol, "{vip}");
                }
                other => panic!("{vip}: {other:?}"),
            }
        }
        // The service's policy and the waypoint-wide one, from the named chains.
        assert!(denied(&verdict(t, Some(WEB), "/admin")));
        assert!(!denied(&verdict(t, Some(WEB), "/")));
        assert!(denied(&verdict(t, None, "/secret")));
        assert!(!denied(&verdict(t, None, "/admin")));
        // The TCP chain's tcp_proxy names the cluster of the chain's own name.
        let svc = s.service_by_host(DB).unwrap();
        assert!(s.cluster(DB, 5432, None).is_some(), "{svc:?}");
    }
}

#[test]
fn bound_workloads_are_served_on_every_port_through_the_direct_chains() {
    for name in ["releases_1_23.json", "releases_1_30.json"] {
        let t = load(name);
        let s = &t.snapshot;
        // A bound pod in no service, any port: the application protocol decides (both chains).
        match s.resolve_destination(addr("10.244.5.9:7777")) {
            Some(Destination::Pod {
                endpoint,
                port,
                services,
                bound,
            }) => {
                assert_eq!(endpoint.address.to_string(), "10.244.5.9");
                // Not known until the HBONE handshake shows it (verified against
                // connect_originate's SAN matchers); the namespace is the waypoint's.
                assert_eq!(&*endpoint.workload.identity, "", "learned at the handshake");
                assert_eq!(&*endpoint.workload.namespace, "default");
                assert_eq!(port, 7777);
                assert!(services.is_empty());
                assert_eq!(bound, Some(Protocol::Unknown), "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
        // A bound pod that is also a service endpoint, on a port no service has.
        match s.resolve_destination(addr("10.244.5.1:1234")) {
            Some(Destination::Pod {
                services, bound, ..
            }) => {
                assert_eq!(services[0].hostname, WEB);
                assert_eq!(bound, Some(Protocol::Unknown));
            }
            other => panic!("{name}: {other:?}"),
        }
        // An endpoint not bound to the waypoint: only on its service's port, as before.
        assert!(matches!(
            s.resolve_destination(addr("10.244.5.2:5432")),
            Some(Destination::Pod { bound: None, .. })
        ));
        assert!(s.resolve_destination(addr("10.244.5.2:7777")).is_none());
    }
}

/// `releases_1_30.json` with the direct range's matcher replaced.
fn with_direct_range(edit: impl FnOnce(&mut serde_json::Value)) -> Translation {
    let mut doc: serde_json::Value = serde_json::from_str(&fixture("releases_1_30.json")).unwrap();
    let l = doc["resources"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["name"] == "main_internal")
        .unwrap();
    let ranges = l["filterChainMatcher"]["matcherTree"]["customMatch"]["typedConfig"]
        ["rangeMatchers"]
        .as_array_mut()
        .unwrap();
    edit(ranges.last_mut().unwrap());
    translate_text(&doc.to_string())
}

fn bound(t: &Translation, dst: &str) -> Option<Protocol> {
    match t.snapshot.resolve_destination(addr(dst)) {
        Some(Destination::Pod { bound, .. }) => bound,
        other => panic!("{dst}: {other:?}"),
    }
}

#[test]
fn the_application_protocol_matcher_selects_http_or_tcp() {
    // Only HTTP protocols lead anywhere: a pod served as HTTP only.
    let t = with_direct_range(|r| {
        r["onMatch"]["matcher"]
            .as_object_mut()
            .unwrap()
            .remove("onNoMatch");
    });
    assert_eq!(bound(&t, "10.244.5.9:80"), Some(Protocol::Http));
    // A plain action on direct-tcp: TCP only.
    let t = with_direct_range(|r| {
        r["onMatch"] = serde_json::json!({"action": {"name": "direct-tcp", "typedConfig": {
            "@type": "type.googleapis.com/google.protobuf.StringValue", "value": "direct-tcp"}}});
    });
    assert_eq!(bound(&t, "10.244.5.9:80"), Some(Protocol::Tcp));
    // A protocol key http_inspector never reports is named, not dropped silently.
    let t = with_direct_range(|r| {
        let map = &mut r["onMatch"]["matcher"]["matcherTree"]["exactMatchMap"]["map"];
        map["'tls'"] = map["'h2c'"].clone();
    });
    assert!(
        t.warnings.iter().any(|w| w.message.contains("'tls'")),
        "{:?}",
        t.warnings
    );
    // A range that sends every port to a service chain is not a pod range: warned.
    let t = with_direct_range(|r| {
        let c = format!("inbound-vip|8080|http|{WEB}");
        r["onMatch"] = serde_json::json!({"action": {"name": c, "typedConfig": {
            "@type": "type.googleapis.com/google.protobuf.StringValue", "value": c}}});
    });
    assert!(t
        .snapshot
        .resolve_destination(addr("10.244.5.9:80"))
        .is_none());
    assert!(
        t.warnings.iter().any(|w| w
            .message
            .contains("only direct-http and direct-tcp serve every port")),
        "{:?}",
        t.warnings
    );
}

#[test]
fn multi_network_authority_map_in_both_placements() {
    let plain = load("releases_1_30.json");
    for name in ["multinetwork_1_25.json", "multinetwork_1_30.json"] {
        let t = load(name);
        assert_quiet(&t);
        let s = &t.snapshot;
        assert_eq!(services(s), services(&plain.snapshot), "{name}");
        for (host, port, vip) in [
            (WEB, 8080, "10.96.5.1:8080"),
            (DB, 5432, "10.96.5.2:5432"),
            (MIXED, 9000, "10.96.5.3:9000"),
        ] {
            assert_eq!(s.resolve_authority(host, port), Some(addr(vip)), "{name}");
        }
        assert_eq!(s.resolve_authority(WEB, 9999), None);
        assert_eq!(
            bound(&t, "10.244.5.9:7777"),
            Some(Protocol::Unknown),
            "{name}"
        );
        assert!(denied(&verdict(&t, Some(WEB), "/admin")));
    }
    // Without multi-network no authority is served.
    assert_eq!(plain.snapshot.resolve_authority(WEB, 8080), None);
}

#[test]
fn unsupported_matcher_branches_are_named() {
    // An on_no_match action on the IP tree (a default chain) is reported.
    let mut doc: serde_json::Value = serde_json::from_str(&fixture("releases_1_30.json")).unwrap();
    let l = doc["resources"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["name"] == "main_internal")
        .unwrap();
    l["filterChainMatcher"]["onNoMatch"] = serde_json::json!({"action": {"name": "direct-tcp",
        "typedConfig": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": "direct-tcp"}}});
    let t = translate_text(&doc.to_string());
    assert!(
        t.warnings
            .iter()
            .any(|w| w.message.contains("on_no_match action \"direct-tcp\"")),
        "{:?}",
        t.warnings
    );
}
