//! Arbitrary bytes → xDS resources → `routing::xds::translate`; nothing may
//! panic. The input is a sequence of records `[kind][len_hi][len_lo][payload]`:
//! `kind % 4` picks Listener / Cluster / ClusterLoadAssignment /
//! RouteConfiguration and the payload is its protobuf encoding (an `Any`
//! value as it arrives over ADS). Resources that decode are translated; a
//! snapshot that results is driven through the public API (see
//! `../src/exercise.rs`), and its authorization (istiod's RBAC, ext_authz
//! and jwt_authn filters translated into `routing::authz` policies) is
//! evaluated for every service with a few requests and connections. Typed
//! configs nested inside the resources (HCM, tcp_proxy, fault, matchers,
//! RBAC) are reached through their own `Any` bytes; the seed
//! `corpus/xds_translate/authz-istiod` is `tests/fixtures/xds/authz.json`.
#![no_main]

#[allow(dead_code)]
#[path = "../src/exercise.rs"]
mod exercise;

use envoy_types::pb::google::protobuf::Any;
use routing::authz::AuthzView;
use routing::xds::{self, Resources, TranslateOptions};
use routing::Snapshot;
use std::net::IpAddr;

const TYPES: [&str; 4] = [
    xds::LISTENER_TYPE,
    xds::CLUSTER_TYPE,
    xds::ENDPOINT_TYPE,
    xds::ROUTE_TYPE,
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut anys = Vec::new();
    let mut rest = data;
    while rest.len() >= 3 && anys.len() < 64 {
        let kind = TYPES[usize::from(rest[0] % 4)];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        anys.push(Any {
            type_url: kind.to_string(),
            value: rest[3..3 + len].to_vec(),
        });
        rest = &rest[3 + len..];
    }
    // Decode each on its own so one bad record does not hide the others.
    let mut res = Resources::default();
    for any in &anys {
        let _rejected = res.push_any(any).is_err();
    }
    let subs = xds::required_resources(&res.listeners, &res.clusters);
    let _ = (subs.endpoints.len(), subs.routes.len());
    match xds::translate(&res, &TranslateOptions::default()) {
        Ok(t) => {
            for w in &t.warnings {
                assert!(!w.to_string().is_empty());
            }
            exercise::exercise_snapshot(&t.snapshot);
            exercise_authz(&t.snapshot);
        }
        Err(rejections) => {
            assert!(!rejections.is_empty());
            for r in &rejections {
                assert!(!r.reason.is_empty(), "{r:?}");
            }
        }
    }
});

/// A request or connection as authorization sees it.
struct View {
    http: bool,
    port: u16,
    principal: Option<&'static str>,
    method: &'static str,
    path: &'static str,
}

impl AuthzView for View {
    fn is_http(&self) -> bool {
        self.http
    }
    fn principal(&self) -> Option<&str> {
        self.principal
    }
    fn source_ip(&self) -> Option<IpAddr> {
        Some(IpAddr::from([10, 244, 0, 9]))
    }
    fn destination_ip(&self) -> Option<IpAddr> {
        None
    }
    fn destination_port(&self) -> u16 {
        self.port
    }
    fn method(&self) -> &str {
        self.method
    }
    fn host(&self) -> Option<&str> {
        Some("svc")
    }
    fn path(&self) -> &str {
        self.path
    }
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        (name == "x-a").then_some("1".into())
    }
}

/// Every service's (and the waypoint-wide) policies against a few requests:
/// a decision denies exactly when it has Envoy response details.
fn exercise_authz(s: &Snapshot) {
    let a = s.authorization();
    let hosts: Vec<Option<String>> = std::iter::once(None)
        .chain(s.services().map(|svc| Some(svc.hostname.clone())))
        .collect();
    for host in &hosts {
        for http in [true, false] {
            let set = a.for_service(host.as_deref(), http);
            for (port, principal, method, path) in [
                (8000, Some("spiffe://cluster.local/ns/foo/sa/sleep"), "GET", "/info?x"),
                (8080, Some("spiffe://cluster.local/ns/bad/sa/x"), "POST", "/admin/a"),
                (5432, None, "", ""),
            ] {
                let d = set.evaluate(&View {
                    http,
                    port,
                    principal,
                    method,
                    path,
                });
                assert_eq!(
                    d.verdict.allowed(),
                    d.verdict.response_code_details().is_none(),
                    "{d:?}"
                );
            }
        }
    }
    let _ = (a.policies().len(), a.attachments().len(), a.is_empty());
}
