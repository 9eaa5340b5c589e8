//! Istio's AuthorizationPolicy semantics as tables: for each policy set, requests that must be
//! allowed or denied. Cases follow Istio's reference documentation
//! (istio.io/latest/docs/reference/config/security/authorization-policy/) and its "Using HTTP-only
//! fields on TCP traffic" and dry-run sections.

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;

use super::istio::{translate, AuthorizationPolicySpec};
use super::*;

#[derive(Clone)]
struct Req {
    http: bool,
    principal: Option<&'static str>,
    source_ip: &'static str,
    port: u16,
    method: &'static str,
    host: &'static str,
    path: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    claims: Option<serde_json::Value>,
    unverifiable: bool,
    /// An address the client claims and the waypoint could not verify.
    claimed_ip: Option<&'static str>,
}

impl Req {
    fn get(path: &'static str) -> Req {
        Req {
            http: true,
            principal: Some("spiffe://cluster.local/ns/default/sa/sleep"),
            source_ip: "10.0.0.5",
            port: 9080,
            method: "GET",
            host: "reviews:9080",
            path,
            headers: Vec::new(),
            claims: None,
            unverifiable: false,
            claimed_ip: None,
        }
    }
    fn tcp() -> Req {
        Req {
            http: false,
            ..Req::get("")
        }
    }
    fn from(mut self, principal: &'static str) -> Req {
        self.principal = Some(principal);
        self
    }
    fn method(mut self, m: &'static str) -> Req {
        self.method = m;
        self
    }
    fn host(mut self, h: &'static str) -> Req {
        self.host = h;
        self
    }
    fn header(mut self, k: &'static str, v: &'static str) -> Req {
        self.headers.push((k, v));
        self
    }
    fn ip(mut self, ip: &'static str) -> Req {
        self.source_ip = ip;
        self
    }
    fn claims_ip(mut self, ip: &'static str) -> Req {
        self.claimed_ip = Some(ip);
        self
    }
    fn jwt(mut self, claims: serde_json::Value) -> Req {
        self.claims = Some(claims);
        self
    }
}

impl AuthzView for Req {
    fn is_http(&self) -> bool {
        self.http
    }
    fn principal(&self) -> Option<&str> {
        self.principal
    }
    fn source_ip(&self) -> Option<IpAddr> {
        self.source_ip.parse().ok()
    }
    fn unverified_source_ip(&self) -> Option<IpAddr> {
        self.claimed_ip.and_then(|ip| ip.parse().ok())
    }
    fn destination_ip(&self) -> Option<IpAddr> {
        "10.96.0.10".parse().ok()
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
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        joined_header(
            self.headers
                .iter()
                .filter(|(k, _)| *k == name)
                .map(|(_, v)| v.as_bytes()),
        )
    }
    fn jwt(&self) -> Jwt<'_> {
        match (&self.claims, self.unverifiable) {
            (_, true) => Jwt::Unverifiable,
            (Some(c), _) => Jwt::Claims(c),
            (None, _) => Jwt::None,
        }
    }
}

fn policy(name: &str, yaml: &str) -> Arc<Policy> {
    policy_with(name, yaml, false)
}

fn policy_with(name: &str, yaml: &str, dry_run: bool) -> Arc<Policy> {
    let spec: AuthorizationPolicySpec = serde_saphyr::from_str(yaml).unwrap();
    Arc::new(translate("default", name, &spec, dry_run).unwrap())
}

fn set(policies: Vec<Arc<Policy>>) -> PolicySet {
    PolicySet::new(policies)
}

/// Each `(request, expected verdict allowed?)` against `policies`, with the request's index in
/// the failure message.
fn check(policies: &PolicySet, cases: &[(Req, bool)]) {
    for (i, (req, allowed)) in cases.iter().enumerate() {
        let d = policies.evaluate(req);
        assert_eq!(
            d.verdict.allowed(),
            *allowed,
            "case {i}: {} {} from {:?}: {:?}",
            req.method,
            req.path,
            req.principal,
            d.verdict
        );
    }
}

#[test]
fn an_unverified_claimed_source_never_grants_and_still_denies() {
    // The vouched-for address is 192.0.2.1 (the HBONE peer); the client claims 10.0.0.5.
    let forged = || Req::get("/").ip("192.0.2.1").claims_ip("10.0.0.5");
    let allow_block = set(vec![policy(
        "a",
        "action: ALLOW\nrules:\n- from:\n  - source:\n      ipBlocks: [\"10.0.0.0/24\"]\n",
    )]);
    let allow_not_block = set(vec![policy(
        "a",
        "action: ALLOW\nrules:\n- from:\n  - source:\n      notIpBlocks: [\"192.0.2.0/24\"]\n",
    )]);
    let allow_remote = set(vec![policy(
        "a",
        "action: ALLOW\nrules:\n- when:\n  - key: remote.ip\n    values: [\"10.0.0.0/24\"]\n",
    )]);
    let deny_block = set(vec![policy(
        "d",
        "action: DENY\nrules:\n- from:\n  - source:\n      ipBlocks: [\"10.0.0.0/24\"]\n",
    )]);
    let deny_not_block = set(vec![policy(
        "d",
        "action: DENY\nrules:\n- from:\n  - source:\n      notIpBlocks: [\"192.0.2.0/24\"]\n",
    )]);
    let deny_other = set(vec![policy(
        "d",
        "action: DENY\nrules:\n- from:\n  - source:\n      ipBlocks: [\"172.16.0.0/12\"]\n",
    )]);
    // ALLOW: the claim satisfies no rule; the address itself still does when verified.
    check(
        &allow_block,
        &[
            (forged(), false),
            (Req::get("/").ip("10.0.0.5"), true),
            // Claim and vouched address agree on the rule: it is known.
            (Req::get("/").ip("10.0.0.9").claims_ip("10.0.0.5"), true),
        ],
    );
    check(&allow_not_block, &[(forged(), false)]);
    check(&allow_remote, &[(forged(), false)]);
    // DENY: the claimed address is denied as if it were verified, and claiming another
    // address does not dodge a rule on the real one.
    check(
        &deny_block,
        &[(forged(), false), (Req::get("/").ip("192.0.2.1"), true)],
    );
    check(
        &deny_not_block,
        &[(forged(), false), (Req::get("/").ip("192.0.2.1"), true)],
    );
    // A DENY neither address matches leaves the request alone.
    check(&deny_other, &[(forged(), true)]);
}

#[test]
fn reference_example_allow_sources_operations_and_conditions() {
    // The first example of the reference: two sources, two operations, one condition.
    let p = set(vec![policy(
        "httpbin",
        r#"
action: ALLOW
rules:
- from:
  - source:
      principals: ["cluster.local/ns/default/sa/sleep"]
  - source:
      namespaces: ["test"]
  to:
  - operation:
      methods: ["GET"]
      paths: ["/info*"]
  - operation:
      methods: ["POST"]
      paths: ["/data"]
  when:
  - key: request.auth.claims[iss]
    values: ["https://accounts.google.com"]
"#,
    )]);
    let google = serde_json::json!({"iss": "https://accounts.google.com", "sub": "u"});
    let other = serde_json::json!({"iss": "https://evil.example", "sub": "u"});
    check(
        &p,
        &[
            (Req::get("/info/1").jwt(google.clone()), true),
            (Req::get("/data").method("POST").jwt(google.clone()), true),
            (
                Req::get("/info")
                    .from("spiffe://cluster.local/ns/test/sa/any")
                    .jwt(google.clone()),
                true,
            ),
            // Wrong source, method, path, claim, or no token at all.
            (
                Req::get("/info")
                    .from("spiffe://cluster.local/ns/prod/sa/sleep")
                    .jwt(google.clone()),
                false,
            ),
            (Req::get("/info").method("POST").jwt(google.clone()), false),
            (Req::get("/data").jwt(google), false),
            (Req::get("/info").jwt(other), false),
            (Req::get("/info"), false),
        ],
    );
    let d = p.evaluate(
        &Req::get("/info?x=1").jwt(serde_json::json!({"iss": "https://accounts.google.com"})),
    );
    assert_eq!(
        d.verdict,
        Verdict::Allowed {
            policy: "default/httpbin".into(),
            rule: "ns[default]-policy[httpbin]-rule[0]".into()
        }
    );
}

#[test]
fn deny_wins_and_names_the_rule() {
    let p = set(vec![
        policy("allow-all", "rules:\n- {}\n"),
        policy(
            "deny-dev-post",
            "action: DENY\nrules:\n- from:\n  - source:\n      namespaces: [dev]\n  to:\n  - operation:\n      methods: [POST]\n",
        ),
    ]);
    let dev = "spiffe://cluster.local/ns/dev/sa/x";
    check(
        &p,
        &[
            (Req::get("/").from(dev).method("POST"), false),
            (Req::get("/").from(dev), true),
            (Req::get("/").method("POST"), true),
        ],
    );
    let d = p.evaluate(&Req::get("/").from(dev).method("POST"));
    assert_eq!(
        d.verdict.response_code_details().as_deref(),
        Some("rbac_access_denied_matched_policy[ns[default]-policy[deny-dev-post]-rule[0]]")
    );
    assert_eq!(d.verdict.policy(), "default/deny-dev-post");
}

#[test]
fn empty_policies_as_istio_documents_them() {
    // `spec: {}` (ALLOW, no rules): allow nothing.
    let nothing = set(vec![policy("allow-nothing", "{}")]);
    let d = nothing.evaluate(&Req::get("/"));
    assert_eq!(d.verdict, Verdict::NoAllowMatched);
    assert_eq!(
        d.verdict.response_code_details().as_deref(),
        Some("rbac_access_denied_matched_policy[none]")
    );
    // `rules: [{}]`: allow all.
    check(
        &set(vec![policy("allow-all", "rules:\n- {}\n")]),
        &[(Req::get("/"), true), (Req::tcp(), true)],
    );
    // DENY without rules denies nothing; DENY with `rules: [{}]` denies all.
    check(
        &set(vec![policy("d", "action: DENY\n")]),
        &[(Req::get("/"), true)],
    );
    check(
        &set(vec![policy("d", "action: DENY\nrules:\n- {}\n")]),
        &[(Req::get("/"), false), (Req::tcp(), false)],
    );
    // No policy at all.
    assert_eq!(
        set(vec![]).evaluate(&Req::get("/")).verdict,
        Verdict::NoPolicy
    );
}

#[test]
fn http_only_fields_on_tcp_make_the_result_stricter() {
    // ALLOW with an HTTP field: the rule never matches TCP.
    let allow = set(vec![policy(
        "a",
        "rules:\n- to:\n  - operation:\n      methods: [GET]\n",
    )]);
    check(&allow, &[(Req::get("/"), true), (Req::tcp(), false)]);
    // DENY with HTTP fields: they are ignored for TCP, the rest still decides.
    let deny = set(vec![policy(
        "d",
        "action: DENY\nrules:\n- from:\n  - source:\n      namespaces: [foo]\n  to:\n  - operation:\n      paths: [/admin]\n",
    )]);
    check(
        &deny,
        &[
            (Req::tcp().from("spiffe://cluster.local/ns/foo/sa/a"), false),
            (Req::tcp(), true),
            (
                Req::get("/public").from("spiffe://cluster.local/ns/foo/sa/a"),
                true,
            ),
            (
                Req::get("/admin").from("spiffe://cluster.local/ns/foo/sa/a"),
                false,
            ),
        ],
    );
    // notPaths in a DENY rule: ignored on TCP too (so it denies).
    let deny_not = set(vec![policy(
        "d",
        "action: DENY\nrules:\n- to:\n  - operation:\n      notPaths: [/healthz]\n",
    )]);
    check(
        &deny_not,
        &[
            (Req::tcp(), false),
            (Req::get("/healthz"), true),
            (Req::get("/x"), false),
        ],
    );
}

#[test]
fn string_forms_hosts_paths_ports_and_ips() {
    let p = set(vec![policy(
        "a",
        r#"
rules:
- to:
  - operation:
      hosts: ["reviews*", "*.example.com"]
      paths: ["/api/{*}/items/{**}", "/exact", "/pre*", "*.png"]
      ports: ["9080"]
  from:
  - source:
      ipBlocks: ["10.0.0.0/24"]
      notPrincipals: ["cluster.local/ns/default/sa/blocked"]
"#,
    )]);
    check(
        &p,
        &[
            (Req::get("/exact"), true),
            (Req::get("/exact").host("REVIEWS"), true),
            (Req::get("/exact").host("a.EXAMPLE.com"), true),
            // istiod keeps the port in `:authority` (HostMatcher): users write `host*`.
            (Req::get("/exact").host("a.example.com:80"), false),
            (Req::get("/exact").host("ratings:9080"), false),
            (Req::get("/exact?q=1"), true),
            (Req::get("/exact/more"), false),
            (Req::get("/prefix/x"), true),
            (Req::get("/img/a.png"), true),
            (Req::get("/api/v1/items/a/b"), true),
            (Req::get("/api/v1/v2/items/a"), false),
            (Req::get("/exact").ip("10.0.1.5"), false),
            (
                Req::get("/exact").from("spiffe://cluster.local/ns/default/sa/blocked"),
                false,
            ),
            (
                Req {
                    port: 8080,
                    ..Req::get("/exact")
                },
                false,
            ),
        ],
    );
}

#[test]
fn conditions_and_request_principals() {
    let p = set(vec![policy(
        "a",
        r#"
rules:
- from:
  - source:
      requestPrincipals: ["https://issuer/*"]
  when:
  - key: request.headers[Version]
    values: ["v1", "v2*"]
  - key: request.auth.claims[groups]
    values: ["admins"]
  - key: request.auth.claims[realm][role]
    notValues: ["guest"]
"#,
    )]);
    let claims = |groups: serde_json::Value, role: &str| serde_json::json!({"iss": "https://issuer", "sub": "alice", "groups": groups, "realm": {"role": role}});
    check(
        &p,
        &[
            (
                Req::get("/")
                    .header("version", "v1")
                    .jwt(claims(serde_json::json!(["dev", "admins"]), "user")),
                true,
            ),
            (
                Req::get("/")
                    .header("version", "v2beta")
                    .jwt(claims(serde_json::json!("admins"), "user")),
                true,
            ),
            (
                Req::get("/")
                    .header("version", "v3")
                    .jwt(claims(serde_json::json!(["admins"]), "user")),
                false,
            ),
            (
                Req::get("/")
                    .header("version", "v1")
                    .jwt(claims(serde_json::json!(["dev"]), "user")),
                false,
            ),
            (
                Req::get("/")
                    .header("version", "v1")
                    .jwt(claims(serde_json::json!(["admins"]), "guest")),
                false,
            ),
            (Req::get("/").header("version", "v1"), false),
        ],
    );
}

#[test]
fn repeated_headers_are_matched_joined_with_commas() {
    // Envoy matches `request.headers[...]` against every value joined with `,`
    // (HeaderUtility::getAllOfHeaderAsString); the first value alone is not what it sees.
    let deny = set(vec![policy(
        "d",
        "action: DENY\nrules:\n- when:\n  - key: request.headers[x-tag]\n    values: [\"*,admin\"]\n",
    )]);
    check(
        &deny,
        &[
            (
                Req::get("/")
                    .header("x-tag", "user")
                    .header("x-tag", "admin"),
                false,
            ),
            (Req::get("/").header("x-tag", "user"), true),
            (Req::get("/").header("x-tag", "admin"), true),
        ],
    );
    assert_eq!(
        joined_header([b"a".as_slice(), b"b", b"\xffc"].into_iter()).as_deref(),
        Some("a,b,\u{fffd}c")
    );
    assert_eq!(joined_header(std::iter::empty()), None);
}

#[test]
fn unverifiable_tokens_never_fail_open() {
    let deny = set(vec![policy(
        "d",
        "action: DENY\nrules:\n- from:\n  - source:\n      requestPrincipals: [\"https://issuer/mallory\"]\n",
    )]);
    let allow = set(vec![policy(
        "a",
        "rules:\n- from:\n  - source:\n      requestPrincipals: [\"*\"]\n",
    )]);
    let unverifiable = Req {
        unverifiable: true,
        ..Req::get("/")
    };
    // A DENY on a token attribute denies; an ALLOW on one does not allow.
    check(
        &deny,
        &[(unverifiable.clone(), false), (Req::get("/"), true)],
    );
    check(&allow, &[(unverifiable, false), (Req::get("/"), false)]);
    // DENY requests without a token (`notRequestPrincipals: ["*"]`).
    let need_token = set(vec![policy(
        "d",
        "action: DENY\nrules:\n- from:\n  - source:\n      notRequestPrincipals: [\"*\"]\n",
    )]);
    check(
        &need_token,
        &[
            (Req::get("/"), false),
            (
                Req::get("/").jwt(serde_json::json!({"iss": "i", "sub": "s"})),
                true,
            ),
        ],
    );
}

#[test]
fn custom_audit_and_dry_run_decide_as_istio_orders_them() {
    let custom = policy(
        "ext",
        "action: CUSTOM\nprovider:\n  name: opa\nrules:\n- to:\n  - operation:\n      paths: [/admin*]\n",
    );
    let d = set(vec![custom.clone()]).evaluate(&Req::get("/admin/x"));
    assert_eq!(
        d.verdict,
        Verdict::CustomUnavailable {
            policy: "default/ext".into(),
            rule: "ns[default]-policy[ext]-rule[0]".into(),
            provider: "opa".into()
        }
    );
    assert!(!d.verdict.allowed());
    assert!(set(vec![custom])
        .evaluate(&Req::get("/public"))
        .verdict
        .allowed());

    let audit = policy(
        "audit-get",
        "action: AUDIT\nrules:\n- to:\n  - operation:\n      methods: [GET]\n",
    );
    let dry = policy_with("deny-all-dry", "action: DENY\nrules:\n- {}\n", true);
    let d = set(vec![audit, dry]).evaluate(&Req::get("/"));
    assert_eq!(d.verdict, Verdict::AllowedNoAllowPolicy);
    assert_eq!(
        d.audited,
        ["default/audit-get ns[default]-policy[audit-get]-rule[0]"]
    );
    assert!(matches!(d.dry_run, Some(Verdict::Denied { .. })));
}

#[test]
fn invalid_policies_are_refused_with_the_field() {
    let err = |yaml: &str| {
        let spec: AuthorizationPolicySpec = serde_saphyr::from_str(yaml).unwrap();
        translate("default", "p", &spec, false).unwrap_err()
    };
    let e = err("rules:\n- to:\n  - operation:\n      paths: [\"/a*b\"]\n");
    assert_eq!(e[0].field, "spec.rules[0].to[0].operation.paths[0]");
    assert!(e[0].message.contains("only allowed alone"), "{e:?}");
    let e = err("rules:\n- when:\n  - key: request.weird\n    values: [x]\n");
    assert!(e[0].message.contains("unknown attribute"), "{e:?}");
    let e = err("action: CUSTOM\n");
    assert_eq!(e[0].field, "spec.provider.name");
    let e = err("rules:\n- from:\n  - source: {}\n");
    assert_eq!(e[0].field, "spec.rules[0].from[0].source");
    let e = err("rules:\n- from:\n  - source:\n      ipBlocks: [\"300.1.1.1\"]\n");
    assert_eq!(e[0].field, "spec.rules[0].from[0].source.ipBlocks[0]");
    // An unknown field is an error, never ignored.
    assert!(serde_saphyr::from_str::<AuthorizationPolicySpec>(
        "rules:\n- to:\n  - operation:\n      pahts: [/x]\n"
    )
    .is_err());
}
