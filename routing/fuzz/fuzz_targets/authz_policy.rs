//! Arbitrary bytes → AuthorizationPolicy documents → `routing::check_str`
//! (next to the bookinfo ServiceEntries, so `Service`/`ServiceEntry` targets
//! resolve) → every PolicySet of the snapshot evaluated and traced for a few
//! requests; nothing may panic.
//!
//! An input that starts like YAML text (a letter, `-`, `#` or whitespace) is
//! loaded as it is, as one more file. Any other input drives a generator: its
//! bytes pick 1–3 policies' fields (apiVersion, namespace, the dry-run
//! annotation, targetRefs, selector, action, provider, rules with
//! from/to/when) and their values from a vocabulary of valid and invalid ones
//! (Istio string syntax, path templates, CIDRs, ports, principals, service
//! accounts, condition keys) or raw strings cut from the input.
//!
//! Invariants checked on every decision: no policy means `NoPolicy`; a
//! verdict is allowed exactly when it has no response code details; an
//! `Allowed`/`Denied` verdict names a rule that `trace()` reports as matched,
//! in an enforced policy of that action; load errors name a loaded file.
#![no_main]

#[path = "../src/exercise.rs"]
mod exercise;

use routing::authz::{Action, AuthzView, Jwt, PolicySet, Verdict};
use std::fmt::Write as _;
use std::net::IpAddr;

/// The bookinfo services (ServiceEntries with VIPs), so policies have something to attach to.
const SERVICES: &str = include_str!("../../../examples/bookinfo/services.yaml");

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let policies = match data.first() {
        None => return,
        Some(b) if b.is_ascii_alphabetic() || b"-#\n\t ".contains(b) => {
            String::from_utf8_lossy(data).into_owned()
        }
        Some(_) => Gen::new(&data[1..]).documents(),
    };
    let files = vec![
        ("services.yaml".to_string(), SERVICES.to_string()),
        ("policies.yaml".to_string(), policies),
    ];
    let report = routing::check_str(&files, exercise::TRUST_DOMAIN);
    for w in &report.warnings {
        let _ = w.to_string();
    }
    let snapshot = match &report.result {
        Ok(s) => s,
        Err(errors) => {
            exercise::check_errors(&files, errors);
            return;
        }
    };
    let authz = snapshot.authorization();
    let _ = authz.is_empty();
    let _ = authz.attachments();
    for p in authz.policies() {
        let _ = serde_json::to_string(&*p);
    }
    let mut hosts: Vec<Option<String>> = vec![None, Some("unknown.example".into())];
    hosts.extend(snapshot.services().map(|s| Some(s.hostname.clone())));
    let claims = serde_json::json!({
        "iss": "https://issuer.example", "sub": "user-1",
        "aud": ["bookinfo", 7], "azp": "web", "groups": ["admin", "dev"],
        "a": {"b": 1, "c": null}
    });
    let extra = extra_request(data);
    for host in &hosts {
        for http in [true, false] {
            let set = authz.for_service(host.as_deref(), http);
            for req in requests(&claims).iter().chain(std::iter::once(&extra)) {
                check(set, req);
            }
        }
    }
});

/// Decide, trace, and check that the two agree.
fn check(set: &PolicySet, req: &Req<'_>) {
    let d = set.evaluate(req);
    let trace = set.trace(req);
    let _ = serde_json::to_string(&d);
    let _ = serde_json::to_string(&trace);
    assert_eq!(trace.len(), set.policies.len());
    if set.is_empty() {
        assert_eq!(d.verdict, Verdict::NoPolicy);
    }
    assert_eq!(
        d.verdict.allowed(),
        d.verdict.response_code_details().is_none(),
        "{:?}",
        d.verdict
    );
    let _ = (d.verdict.action(), d.verdict.policy());
    let (want, policy, rule) = match &d.verdict {
        Verdict::Allowed { policy, rule } => (Action::Allow, policy, rule),
        Verdict::Denied { policy, rule } => (Action::Deny, policy, rule),
        _ => return,
    };
    let found = set.policies.iter().zip(&trace).any(|(p, t)| {
        !p.dry_run
            && p.action == want
            && &t.policy == policy
            && t.rules.iter().any(|r| &r.name == rule && r.matched)
    });
    assert!(found, "{:?} has no matched rule in trace()", d.verdict);
}

/// A request or connection as authorization reads it.
struct Req<'a> {
    http: bool,
    principal: Option<&'a str>,
    source: Option<IpAddr>,
    remote: Option<IpAddr>,
    destination: Option<IpAddr>,
    port: u16,
    sni: Option<&'a str>,
    method: &'a str,
    host: Option<&'a str>,
    path: &'a str,
    headers: Vec<(&'a str, &'a str)>,
    jwt: Option<&'a serde_json::Value>,
    unverifiable: bool,
}

impl AuthzView for Req<'_> {
    fn is_http(&self) -> bool {
        self.http
    }
    fn principal(&self) -> Option<&str> {
        self.principal
    }
    fn source_ip(&self) -> Option<IpAddr> {
        self.source
    }
    fn remote_ip(&self) -> Option<IpAddr> {
        self.remote
    }
    fn destination_ip(&self) -> Option<IpAddr> {
        self.destination
    }
    fn destination_port(&self) -> u16 {
        self.port
    }
    fn sni(&self) -> Option<&str> {
        self.sni
    }
    fn method(&self) -> &str {
        self.method
    }
    fn host(&self) -> Option<&str> {
        self.host
    }
    fn path(&self) -> &str {
        self.path
    }
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        routing::authz::joined_header(
            self.headers
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, v)| v.as_bytes()),
        )
    }
    fn jwt(&self) -> Jwt<'_> {
        match (self.unverifiable, self.jwt) {
            (true, _) => Jwt::Unverifiable,
            (false, Some(c)) => Jwt::Claims(c),
            (false, None) => Jwt::None,
        }
    }
}

fn ip(s: &str) -> Option<IpAddr> {
    s.parse().ok()
}

fn requests(claims: &serde_json::Value) -> Vec<Req<'_>> {
    let base = Req {
        http: true,
        principal: Some("spiffe://cluster.local/ns/default/sa/bookinfo-productpage"),
        source: ip("10.0.0.5"),
        remote: ip("10.0.0.5"),
        destination: ip("10.0.0.10"),
        port: 9080,
        sni: None,
        method: "GET",
        host: Some("reviews:9080"),
        path: "/reviews/0?user=jason",
        headers: vec![("user-agent", "curl/8"), ("x-user", "jason")],
        jwt: None,
        unverifiable: false,
    };
    vec![
        Req {
            principal: None,
            source: ip("::1"),
            remote: ip("2001:db8::7"),
            method: "POST",
            host: Some("REVIEWS.default.svc.cluster.local"),
            path: "/admin/x/../y?",
            headers: vec![("x-user", "")],
            jwt: Some(claims),
            ..base_clone(&base)
        },
        Req {
            principal: Some("spiffe://td/ns/prod/sa/a/b"),
            method: "",
            host: None,
            path: "",
            headers: Vec::new(),
            unverifiable: true,
            port: 0,
            sni: Some("reviews.default.svc.cluster.local"),
            ..base_clone(&base)
        },
        Req {
            http: false,
            principal: Some("spiffe://cluster.local/ns/istio-system/sa/ztunnel"),
            destination: ip("10.0.0.20"),
            ..base_clone(&base)
        },
        base,
    ]
}

fn base_clone<'a>(b: &Req<'a>) -> Req<'a> {
    Req {
        headers: b.headers.clone(),
        ..*b
    }
}

/// A request whose attributes come from the input, so values the generator put in rules can
/// match.
fn extra_request(data: &[u8]) -> Req<'static> {
    let b = |i: usize| usize::from(data.get(i).copied().unwrap_or(0));
    Req {
        http: b(1) % 4 != 0,
        principal: Some(PRINCIPALS[b(2) % PRINCIPALS.len()]),
        source: ip(IPS[b(3) % IPS.len()]),
        remote: ip(IPS[b(4) % IPS.len()]),
        destination: ip(IPS[b(5) % IPS.len()]),
        port: [9080, 80, 0, 65535][b(6) % 4],
        sni: None,
        method: ["GET", "POST", "get", "DELETE"][b(7) % 4],
        host: Some(VALUES[b(8) % VALUES.len()]),
        path: VALUES[b(9) % VALUES.len()],
        headers: vec![
            ("x-user", VALUES[b(10) % VALUES.len()]),
            ("user-agent", VALUES[b(11) % VALUES.len()]),
        ],
        jwt: None,
        unverifiable: b(12) % 8 == 0,
    }
}

const PRINCIPALS: &[&str] = &[
    "spiffe://cluster.local/ns/default/sa/bookinfo-productpage",
    "spiffe://cluster.local/ns/prod/sa/sleep",
    "spiffe://other.td/ns/default/sa/default",
    "spiffe://cluster.local/ns//sa/",
    "not-a-spiffe-id",
    "spiffe://cluster.local/ns/d\u{e9}fault/sa/\u{fc}",
];

const IPS: &[&str] = &[
    "10.0.0.5",
    "127.0.0.1",
    "::1",
    "10.0.0.10",
    "fe80::1",
    "0.0.0.0",
];

/// String values for any field: Istio's syntax, valid and invalid, for every kind of field.
const VALUES: &[&str] = &[
    "*",
    "",
    "default",
    "prod*",
    "*.local",
    "a*b",
    "**",
    "*abc*",
    "cluster.local/ns/default/sa/bookinfo-productpage",
    "cluster.local/ns/default/sa/*",
    "*/sa/bookinfo-productpage",
    "default/bookinfo-productpage",
    "bookinfo-productpage",
    "ns/",
    "/sa",
    "/reviews/*",
    "/reviews/0",
    "/reviews/{*}",
    "/reviews/{**}",
    "/{*}/x/{**}/y",
    "/{x}",
    "/a{",
    "reviews",
    "GET",
    "get",
    "POST",
    "9080",
    "80",
    "70000",
    "-1",
    "10.0.0.0/8",
    "10.0.0.5",
    "::1/128",
    "10.0.0.0/33",
    "fe80::/10",
    "bad/cidr",
    "reviews:9080",
    "REVIEWS*",
    "\u{e9}\u{fc}*",
    "*\u{1f600}",
    "x\\y",
    "jason",
    "admin",
    "https://issuer.example/user-1",
];

const KEYS: &[&str] = &[
    "request.headers[x-user]",
    "request.headers[User-Agent]",
    "request.headers[]",
    "request.headers[a[b]]",
    "request.auth.claims[groups]",
    "request.auth.claims[a][b]",
    "request.auth.claims[]",
    "request.auth.claims",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "source.ip",
    "remote.ip",
    "destination.ip",
    "destination.port",
    "source.namespace",
    "source.principal",
    "connection.sni",
    "experimental.envoy.filters.network.mysql_proxy[db.table]",
    "unknown.attribute",
];

const SOURCE_FIELDS: &[&str] = &[
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "serviceAccounts",
    "notServiceAccounts",
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
    "bogusField",
];

const OPERATION_FIELDS: &[&str] = &[
    "hosts",
    "notHosts",
    "ports",
    "notPorts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
    "bogusField",
];

const TARGETS: &[&str] = &[
    "{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}",
    "{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint, namespace: default}",
    "{kind: Gateway, group: gateway.networking.k8s.io, name: other}",
    "{kind: GatewayClass, group: gateway.networking.k8s.io, name: istio-waypoint}",
    "{kind: Service, group: \"\", name: reviews}",
    "{kind: Service, name: ratings}",
    "{kind: ServiceEntry, group: networking.istio.io, name: reviews}",
    "{kind: ServiceEntry, group: networking.istio.io, name: ratings, namespace: prod}",
    "{kind: Pod, group: \"\", name: x}",
    "{kind: Gateway}",
];

/// Reads the input as choices.
struct Gen<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Gen<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    fn byte(&mut self) -> u8 {
        let b = self.data.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    fn below(&mut self, n: usize) -> usize {
        usize::from(self.byte()) % n.max(1)
    }

    fn pick<'v>(&mut self, from: &[&'v str]) -> &'v str {
        from[self.below(from.len())]
    }

    /// A vocabulary value, or (one time in eight) a raw string of up to 15 input bytes.
    fn value(&mut self) -> String {
        if self.below(8) == 0 {
            let len = self.below(16);
            let start = self.pos.min(self.data.len());
            let end = (start + len).min(self.data.len());
            self.pos += len;
            String::from_utf8_lossy(&self.data[start..end]).into_owned()
        } else {
            self.pick(VALUES).to_string()
        }
    }

    /// 0–3 values as a JSON (and so YAML flow) list; sometimes a scalar instead.
    fn values(&mut self) -> String {
        if self.below(16) == 0 {
            return quote(&self.value());
        }
        let n = self.below(4);
        let v: Vec<String> = (0..n).map(|_| quote(&self.value())).collect();
        format!("[{}]", v.join(", "))
    }

    fn fields(&mut self, names: &[&str], out: &mut String, indent: &str) {
        let n = self.below(4);
        for _ in 0..n {
            let name = self.pick(names);
            let values = self.values();
            let _ = writeln!(out, "{indent}{name}: {values}");
        }
    }

    fn documents(&mut self) -> String {
        let mut out = String::new();
        let n = 1 + self.below(3);
        for i in 0..n {
            self.policy(i, &mut out);
        }
        out
    }

    fn policy(&mut self, i: usize, out: &mut String) {
        let api = self.pick(&[
            "security.istio.io/v1",
            "security.istio.io/v1",
            "security.istio.io/v1beta1",
            "security.istio.io/v2",
            "networking.istio.io/v1",
        ]);
        let ns = self.pick(&["default", "default", "istio-system", "prod"]);
        let _ = write!(
            out,
            "---\napiVersion: {api}\nkind: AuthorizationPolicy\nmetadata:\n  name: p{i}\n  namespace: {ns}\n"
        );
        if self.below(4) == 0 {
            let v = self.pick(&["\"true\"", "\"false\"", "\"1\"", "\"T\"", "\"yes\"", "true"]);
            let _ = writeln!(out, "  annotations:\n    istio.io/dry-run: {v}");
        }
        if self.below(16) == 0 {
            return;
        }
        out.push_str("spec:\n");
        match self.below(8) {
            0 => {}
            1 => {
                let t = self.pick(TARGETS);
                let _ = writeln!(out, "  targetRef: {t}");
            }
            _ => {
                let n = self.below(3);
                let t: Vec<&str> = (0..n.max(1)).map(|_| self.pick(TARGETS)).collect();
                let _ = writeln!(out, "  targetRefs: [{}]", t.join(", "));
            }
        }
        if self.below(8) == 0 {
            out.push_str("  selector: {matchLabels: {app: reviews}}\n");
        }
        match self.below(7) {
            0 => {}
            1 => out.push_str("  action: CUSTOM\n  provider: {name: ext-authz}\n"),
            k => {
                let a = ["ALLOW", "DENY", "AUDIT", "CUSTOM", "allow", "ALLOW"][k - 1];
                let _ = writeln!(out, "  action: {a}");
            }
        }
        if self.below(16) == 0 {
            out.push_str("  provider: {name: \"\"}\n");
        }
        match self.below(8) {
            0 => {}
            1 => out.push_str("  rules: []\n"),
            _ => {
                out.push_str("  rules:\n");
                let n = 1 + self.below(4);
                for _ in 0..n {
                    self.rule(out);
                }
            }
        }
    }

    fn rule(&mut self, out: &mut String) {
        let mut first = true;
        let mut lead = |out: &mut String| {
            out.push_str(if first { "  - " } else { "    " });
            first = false;
        };
        if self.below(3) != 0 {
            lead(out);
            out.push_str("from:\n");
            for _ in 0..self.below(3) {
                if self.below(16) == 0 {
                    out.push_str("    - {}\n");
                    continue;
                }
                out.push_str("    - source:\n");
                self.fields(SOURCE_FIELDS, out, "        ");
            }
        }
        if self.below(3) != 0 {
            lead(out);
            out.push_str("to:\n");
            for _ in 0..self.below(3) {
                out.push_str("    - operation:\n");
                self.fields(OPERATION_FIELDS, out, "        ");
            }
        }
        if self.below(2) != 0 {
            lead(out);
            out.push_str("when:\n");
            for _ in 0..self.below(4) {
                let key = self.pick(KEYS);
                let _ = writeln!(out, "    - key: {}", quote(key));
                match self.below(4) {
                    0 => {}
                    1 => {
                        let v = self.values();
                        let _ = writeln!(out, "      notValues: {v}");
                    }
                    _ => {
                        let v = self.values();
                        let _ = writeln!(out, "      values: {v}");
                    }
                }
            }
        }
        if first {
            out.push_str("  - {}\n");
        }
    }
}

/// A YAML double-quoted scalar (JSON's escapes are YAML's).
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}
