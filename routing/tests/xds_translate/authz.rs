//! authz.json: the RBAC, ext_authz and jwt_authn filters of policies F1–F10.

use super::*;

#[test]
fn authz_f1_allow_principal_method_path() {
    let t = authz_fixture();
    let rule = "ns[foo]-policy[allow-sleep]-rule[0]";
    assert_eq!(
        verdict(&t, "f1", &AuthzReq::get("/info/x?q=1")),
        allowed_by(rule)
    );
    for req in [
        AuthzReq::get("/info").method("POST"),
        AuthzReq::get("/other"),
        AuthzReq::get("/info").from("spiffe://cluster.local/ns/foo/sa/other"),
        AuthzReq::get("/info").from("cluster.local/ns/foo/sa/sleep"),
    ] {
        let v = verdict(&t, "f1", &req);
        assert_eq!(v, Verdict::NoAllowMatched, "{} {}", req.method, req.path);
        assert_eq!(
            v.response_code_details().as_deref(),
            Some("rbac_access_denied_matched_policy[none]")
        );
    }
}

#[test]
fn authz_f2_allow_all_and_f3_allow_nothing() {
    let t = authz_fixture();
    let all = "ns[foo]-policy[allow-all]-rule[0]";
    assert_eq!(verdict(&t, "f2", &AuthzReq::get("/")), allowed_by(all));
    assert_eq!(
        verdict(&t, "f2", &AuthzReq::get("/x").from(BAD).method("DELETE")),
        allowed_by(all)
    );
    for req in [AuthzReq::get("/"), AuthzReq::get("/info").from(BAD)] {
        assert_eq!(verdict(&t, "f3", &req), Verdict::NoAllowMatched);
    }
}

#[test]
fn authz_f4_deny_other_namespaces_except_healthz() {
    let t = authz_fixture();
    let rule = "ns[foo]-policy[deny-other-ns]-rule[0]";
    let v = verdict(&t, "f4", &AuthzReq::get("/data").from(BAD));
    assert_eq!(v, denied_by(rule));
    assert_eq!(
        v.response_code_details().unwrap(),
        format!("rbac_access_denied_matched_policy[{rule}]")
    );
    assert_eq!(
        verdict(&t, "f4", &AuthzReq::get("/healthz").from(BAD)),
        Verdict::AllowedNoAllowPolicy
    );
    assert_eq!(
        verdict(&t, "f4", &AuthzReq::get("/data")),
        Verdict::AllowedNoAllowPolicy
    );
}

#[test]
fn authz_f5_dry_run_is_not_enforced() {
    let t = authz_fixture();
    let d = decide(&t, Some(&svc("f5")), &AuthzReq::get("/").host("evil.test"));
    assert!(d.verdict.allowed(), "{d:?}");
    assert_eq!(d.dry_run, Some(Verdict::NoAllowMatched));
    let d = decide(
        &t,
        Some(&svc("f5")),
        &AuthzReq::get("/").host("API.Example.COM"),
    );
    assert_eq!(
        d.dry_run,
        Some(allowed_by("ns[foo]-policy[try-it]-rule[0]")),
        "hosts ignore case"
    );
}

#[test]
fn authz_f6_jwt_authn_providers_and_exact_claims() {
    let t = authz_fixture();
    // istiod's jwt_authn (requires_any[provider, allow_missing], payload in metadata) becomes
    // the providers the waypoint verifies tokens for…
    let set = t
        .snapshot
        .authorization()
        .for_service(Some(&svc("f6")), true);
    assert_eq!(set.jwt.len(), 1);
    assert_eq!(set.jwt[0].issuer, "https://issuer.example");
    assert!(set.jwt[0].forward_original_token);
    // …and the RBAC filter's claim tests are exact: alice in group admin is allowed, without a
    // token or with another subject or group nothing matches.
    let alice = |groups: serde_json::Value| serde_json::json!({"iss": "https://issuer.example", "sub": "alice", "groups": groups});
    assert_eq!(
        verdict(
            &t,
            "f6",
            &AuthzReq::get("/api/v1/items/7").claims(alice(serde_json::json!(["admin"])))
        ),
        allowed_by("ns[foo]-policy[jwt]-rule[0]")
    );
    assert_eq!(
        verdict(
            &t,
            "f6",
            &AuthzReq::get("/api/v1/items/7").claims(alice(serde_json::json!("admin")))
        ),
        allowed_by("ns[foo]-policy[jwt]-rule[0]")
    );
    for claims in [
        None,
        Some(alice(serde_json::json!(["dev"]))),
        Some(
            serde_json::json!({"iss": "https://issuer.example", "sub": "bob", "groups": ["admin"]}),
        ),
    ] {
        let mut req = AuthzReq::get("/api/v1/items/7");
        req.claims = claims;
        assert_eq!(verdict(&t, "f6", &req), Verdict::NoAllowMatched);
    }
    // Rules without claims still decide, with the {*}/{**} template.
    assert_eq!(
        verdict(&t, "f6", &AuthzReq::get("/public/v1/items/a/b?x=1")),
        allowed_by("ns[foo]-policy[public-items]-rule[0]")
    );
    assert_eq!(
        verdict(&t, "f6", &AuthzReq::get("/public/v1/v2/items/a")),
        Verdict::NoAllowMatched
    );
}

#[test]
fn authz_f7_audit_deny_allow() {
    let t = authz_fixture();
    let d = decide(&t, Some(&svc("f7")), &AuthzReq::get("/"));
    assert_eq!(d.verdict, allowed_by("ns[foo]-policy[allow-get]-rule[0]"));
    assert_eq!(
        d.audited,
        vec!["foo/audit-all ns[foo]-policy[audit-all]-rule[0]".to_string()]
    );
    assert_eq!(
        verdict(&t, "f7", &AuthzReq::get("/").method("POST")),
        denied_by("ns[foo]-policy[deny-post]-rule[0]")
    );
    assert_eq!(
        verdict(&t, "f7", &AuthzReq::get("/").method("PUT")),
        Verdict::NoAllowMatched
    );
}

#[test]
fn authz_f8_network_rbac_on_tcp_chains() {
    let t = authz_fixture();
    // ALLOW whose HTTP-only rule istiod dropped: `rules: {}` denies every connection.
    assert_eq!(
        verdict(&t, "f8a", &AuthzReq::tcp(5432)),
        Verdict::NoAllowMatched
    );
    // DENY namespaces [bad] ports [8080].
    assert_eq!(
        verdict(&t, "f8b", &AuthzReq::tcp(8080).from(BAD)),
        denied_by("ns[foo]-policy[d]-rule[0]")
    );
    assert_eq!(
        verdict(&t, "f8b", &AuthzReq::tcp(8080)),
        Verdict::AllowedNoAllowPolicy
    );
    // A service with TCP chains only uses the same set for HTTP.
    assert_eq!(
        verdict(&t, "f8b", &AuthzReq::get("/").from(BAD).method("GET")),
        Verdict::AllowedNoAllowPolicy,
        "port 8000 is not 8080"
    );
    // An HTTP-only service's TCP set is its HTTP set: F1's ALLOW on a TCP connection is unknown.
    assert_eq!(
        verdict(&t, "f1", &AuthzReq::tcp(8000)),
        Verdict::NoAllowMatched
    );
}

#[test]
fn authz_f10_custom_denies_matching_requests_only() {
    let t = authz_fixture();
    let v = verdict(&t, "f10", &AuthzReq::get("/admin/users"));
    assert_eq!(
        v,
        Verdict::CustomUnavailable {
            policy: "foo/ext".into(),
            rule: "istio-ext-authz-ext-authz-http-ns[foo]-policy[ext]-rule[0]".into(),
            provider: "outbound|8000||ext-authz.foo.svc.cluster.local".into(),
        }
    );
    assert!(!v.allowed());
    assert_eq!(
        verdict(&t, "f10", &AuthzReq::get("/public")),
        Verdict::AllowedNoAllowPolicy
    );
    // The ext_authz filter's service is what the waypoint calls for those requests: the
    // cluster's host and port, istiod's timeout, failOpen as failure_mode_allow.
    let p = t
        .snapshot
        .authorization()
        .provider("outbound|8000||ext-authz.foo.svc.cluster.local")
        .expect("the authorizer is translated");
    assert_eq!(p.address, "ext-authz.foo.svc.cluster.local:8000");
    assert_eq!(p.timeout, std::time::Duration::from_secs(600));
    assert!(p.fail_open);
    assert_eq!(p.status_on_error, 403);
    assert!(matches!(
        p.kind,
        routing::authz::ext::ExtAuthzKind::Http { .. }
    ));
    // includeRequestBodyInCheck (istiod's `withRequestBody`): the body buffer.
    assert_eq!(
        p.body,
        Some(routing::authz::ext::BodyBuffer {
            max_bytes: 4096,
            allow_partial: true,
            pack_as_bytes: false,
        })
    );
}

#[test]
fn authz_unknown_principal_kinds_never_fail_open() {
    let t = authz_fixture();
    // DENY on a principal kind the waypoint cannot evaluate: denies what the rest matches…
    assert_eq!(
        verdict(&t, "unk", &AuthzReq::get("/admin")),
        denied_by("ns[foo]-policy[deny-admin-by-tag]-rule[0]")
    );
    // …and ALLOW on one never allows: only rule 1 (path /public) can.
    assert_eq!(
        verdict(&t, "unk", &AuthzReq::get("/private")),
        Verdict::NoAllowMatched
    );
    assert_eq!(
        verdict(&t, "unk", &AuthzReq::get("/public/x")),
        allowed_by("ns[foo]-policy[allow-local]-rule[1]")
    );
    let text: Vec<String> = t.warnings.iter().map(|w| w.to_string()).collect();
    for (key, construct) in [
        (
            "ns[foo]-policy[deny-admin-by-tag]-rule[0]",
            "sourced_metadata",
        ),
        (
            "ns[foo]-policy[allow-local]-rule[0]",
            "io.istio.local_principal",
        ),
    ] {
        assert!(
            text.iter()
                .any(|w| w.contains(&svc("unk")) && w.contains(key) && w.contains(construct)),
            "{key}: {text:#?}"
        );
    }
}

#[test]
fn authz_direct_chain_is_the_waypoint_wide_set() {
    let t = authz_fixture();
    let rule = "ns[foo]-policy[deny-bad-ns]-rule[0]";
    assert_eq!(
        decide(&t, None, &AuthzReq::get("/").from(BAD)).verdict,
        denied_by(rule)
    );
    assert_eq!(
        decide(&t, None, &AuthzReq::tcp(80).from(BAD)).verdict,
        denied_by(rule)
    );
    assert_eq!(
        decide(&t, None, &AuthzReq::get("/")).verdict,
        Verdict::AllowedNoAllowPolicy
    );
    // Services have their own chains' sets, not the waypoint's.
    assert_eq!(
        verdict(&t, "f2", &AuthzReq::get("/").from(BAD)),
        allowed_by("ns[foo]-policy[allow-all]-rule[0]")
    );
    // Only the expected warnings: unknown constructs and endpoint identities.
    for w in &t.warnings {
        assert!(
            w.message.contains("without a known identity")
                || w.message.contains("treated as unknown"),
            "{w}"
        );
    }
}
