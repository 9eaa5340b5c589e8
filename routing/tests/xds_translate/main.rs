//! Golden tests of the xDS front-end: fixtures under `tests/fixtures/xds/`
//! (written after istiod's waypoint output, see `routing::xds` docs) are
//! loaded as Envoy JSON, translated, and checked through the Snapshot's
//! public lookups — where useful against the YAML front-end given the
//! equivalent Istio config.

use bytes::Bytes;
use routing::xds::{self, json::load_resources, Resources, TranslateOptions, Translation};
use routing::{
    Abort, Destination, HashKey, HeaderOpKind, LbPolicy, Protocol, RedirectPath, RedirectPort,
    RetryFailure, RetryOn, RouteAction, RouteDecision, SimpleRequest, Snapshot, StringMatch,
    UnmatchedPreflights, UriRewrite,
};
use std::net::SocketAddr;
use std::time::Duration;

mod authz;
mod authz_chains;
mod bookinfo;
mod dns;
mod locality;
mod matcher;
mod memo;
mod outbound;
mod patch;
mod reuse;
mod rules;
mod splice;
mod stored;
mod subscriptions;
mod upstreams;

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/xds/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn translate(res: &Resources) -> Translation {
    match xds::translate(res, &TranslateOptions::default()) {
        Ok(t) => t,
        Err(r) => panic!("rejected: {r:?}"),
    }
}

fn load(name: &str) -> Translation {
    translate(&load_resources(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}")))
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const REVIEWS: &str = "reviews.default.svc.cluster.local";

/// The route a request to `vip` takes.
fn route_of<'s>(s: &'s Snapshot, vip: &str, req: &SimpleRequest) -> RouteDecision<'s> {
    let Some(Destination::Service { service, port }) = s.resolve_destination(addr(vip)) else {
        panic!("{vip} is not a service VIP");
    };
    s.route(service, port.number, req)
}

fn routed(d: RouteDecision<'_>) -> &routing::HttpRoute {
    match d {
        RouteDecision::Route { route, .. } => route,
        other => panic!("expected a route, got {other:?}"),
    }
}
// ---- Authorization: istiod's RBAC / ext_authz / jwt_authn filters (fixture authz.json) ----

use routing::authz::{AuthzView, Decision, Verdict};
use std::net::IpAddr;

/// A request (or a TCP connection) as authorization sees it.
#[derive(Clone)]
struct AuthzReq {
    http: bool,
    principal: Option<&'static str>,
    port: u16,
    method: &'static str,
    host: &'static str,
    path: &'static str,
    /// Claims of a token verified before authorization.
    claims: Option<serde_json::Value>,
}

impl AuthzReq {
    fn get(path: &'static str) -> AuthzReq {
        AuthzReq {
            http: true,
            principal: Some(SLEEP),
            port: 8000,
            method: "GET",
            host: "svc:8000",
            path,
            claims: None,
        }
    }
    fn claims(mut self, c: serde_json::Value) -> AuthzReq {
        self.claims = Some(c);
        self
    }
    fn tcp(port: u16) -> AuthzReq {
        AuthzReq {
            http: false,
            port,
            ..AuthzReq::get("")
        }
    }
    fn from(mut self, p: &'static str) -> AuthzReq {
        self.principal = Some(p);
        self
    }
    fn method(mut self, m: &'static str) -> AuthzReq {
        self.method = m;
        self
    }
    fn host(mut self, h: &'static str) -> AuthzReq {
        self.host = h;
        self
    }
}

impl AuthzView for AuthzReq {
    fn is_http(&self) -> bool {
        self.http
    }
    fn principal(&self) -> Option<&str> {
        self.principal
    }
    fn source_ip(&self) -> Option<IpAddr> {
        Some("10.244.0.9".parse().unwrap())
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
        Some(self.host)
    }
    fn path(&self) -> &str {
        self.path
    }
    fn jwt(&self) -> routing::authz::Jwt<'_> {
        self.claims
            .as_ref()
            .map_or(routing::authz::Jwt::None, routing::authz::Jwt::Claims)
    }
}

const SLEEP: &str = "spiffe://cluster.local/ns/foo/sa/sleep";
const BAD: &str = "spiffe://cluster.local/ns/bad/sa/x";

fn authz_fixture() -> Translation {
    load("authz.json")
}

fn svc(name: &str) -> String {
    format!("{name}.foo.svc.cluster.local")
}

fn decide(t: &Translation, service: Option<&str>, req: &AuthzReq) -> Decision {
    t.snapshot
        .authorization()
        .for_service(service, req.http)
        .evaluate(req)
}

fn verdict(t: &Translation, service: &str, req: &AuthzReq) -> Verdict {
    decide(t, Some(&svc(service)), req).verdict
}

fn denied_by(rule: &str) -> Verdict {
    Verdict::Denied {
        policy: policy_of(rule),
        rule: rule.to_string(),
    }
}

fn allowed_by(rule: &str) -> Verdict {
    Verdict::Allowed {
        policy: policy_of(rule),
        rule: rule.to_string(),
    }
}

/// `ns[NS]-policy[NAME]-rule[I]` → `NS/NAME`.
fn policy_of(rule: &str) -> String {
    let ns = rule.split("ns[").nth(1).unwrap().split(']').next().unwrap();
    let name = rule
        .split("policy[")
        .nth(1)
        .unwrap()
        .split(']')
        .next()
        .unwrap();
    format!("{ns}/{name}")
}
/// bookinfo.json with the fixture `overlay` laid over it: its clusters and EDS assignments
/// replace bookinfo's of the same name.
fn bookinfo_with_overlay(overlay: &str) -> Translation {
    bookinfo_with_overlay_text(&fixture(overlay)).unwrap_or_else(|e| panic!("{e:?}"))
}

/// [`bookinfo_with_overlay`] with the overlay's text; the rejections when there are any.
fn bookinfo_with_overlay_text(overlay: &str) -> Result<Translation, Vec<xds::Rejection>> {
    let mut res = load_resources(&fixture("bookinfo.json")).unwrap();
    let over = load_resources(overlay).unwrap();
    res.clusters
        .retain(|c| !over.clusters.iter().any(|o| o.name == c.name));
    res.endpoints.retain(|e| {
        !over
            .endpoints
            .iter()
            .any(|o| o.cluster_name == e.cluster_name)
    });
    res.clusters.extend(over.clusters);
    res.endpoints.extend(over.endpoints);
    xds::translate(&res, &TranslateOptions::default())
}

/// bookinfo.json with upstreams.json laid over it.
fn bookinfo_with_upstreams() -> Translation {
    bookinfo_with_overlay("upstreams.json")
}
