//! Filters the waypoint cannot run or must combine, per-route overrides, and HCM path handling.

use super::*;

/// authz.json with `edit` applied to the `httpFilters` of `service`'s HTTP chain.
fn authz_edited(service: &str, edit: impl FnOnce(&mut Vec<serde_json::Value>)) -> Translation {
    let mut doc: serde_json::Value = serde_json::from_str(&fixture("authz.json")).unwrap();
    let chain = format!("inbound-vip|8000|http|{}", svc(service));
    let chains = doc["resources"][0]["filterChains"].as_array_mut().unwrap();
    let c = chains
        .iter_mut()
        .find(|c| c["name"] == chain.as_str())
        .unwrap();
    let filters = c["filters"][0]["typedConfig"]["httpFilters"]
        .as_array_mut()
        .unwrap();
    edit(filters);
    translate(&load_resources(&doc.to_string()).unwrap())
}

fn warned(t: &Translation, needle: &str) -> bool {
    t.warnings.iter().any(|w| w.to_string().contains(needle))
}

#[test]
fn authz_ext_authz_without_shadow_rules_denies_everything() {
    let t = authz_edited("f10", |f| {
        f.remove(0);
    });
    let v = verdict(&t, "f10", &AuthzReq::get("/public"));
    assert!(
        matches!(&v, Verdict::CustomUnavailable { provider, .. } if provider == "outbound|8000||ext-authz.foo.svc.cluster.local"),
        "{v:?}"
    );
    assert!(warned(&t, "applies to every request"));
}

/// F10's ext_authz filter with `edit` applied.
fn f10_ext_authz_edited(edit: impl FnOnce(&mut serde_json::Value)) -> Translation {
    authz_edited("f10", |f| {
        let x = f
            .iter_mut()
            .find(|x| x["name"] == "envoy.filters.http.ext_authz")
            .unwrap();
        edit(&mut x["typedConfig"]);
    })
}

#[test]
fn authz_ext_authz_request_body_grpc_and_limits() {
    use routing::authz::ext::{BodyBuffer, ExtAuthzKind};
    // istiod's generateGRPCConfig shape, with includeRequestBodyInCheck packAsBytes.
    let grpc = "outbound|9000||ext-authz-grpc.foo.svc.cluster.local";
    let t = f10_ext_authz_edited(|x| {
        x.as_object_mut().unwrap().remove("httpService");
        x["grpcService"] = serde_json::json!({
            "envoyGrpc": {"clusterName": grpc,
                          "authority": "outbound_.9000_._.ext-authz-grpc.foo.svc.cluster.local"},
            "timeout": "600s"});
        x["withRequestBody"] = serde_json::json!({"maxRequestBytes": 1024, "packAsBytes": true});
    });
    let p = t
        .snapshot
        .authorization()
        .provider(grpc)
        .expect("translated");
    assert_eq!(p.kind, ExtAuthzKind::Grpc);
    assert_eq!(p.body, Some(BodyBuffer::new(1024, false, true).unwrap()));

    // More than the waypoint can buffer and replay (64 KiB), or zero (Envoy's `gt: 0`): no
    // authorizer, so the CUSTOM rules deny; a warning says why.
    let http = "outbound|8000||ext-authz.foo.svc.cluster.local";
    for (max, why) in [
        (serde_json::json!(65537), "more than this proxy can buffer"),
        (serde_json::json!(0), "at least 1"),
    ] {
        let t = f10_ext_authz_edited(|x| x["withRequestBody"]["maxRequestBytes"] = max);
        assert!(t.snapshot.authorization().provider(http).is_none());
        assert!(
            matches!(
                verdict(&t, "f10", &AuthzReq::get("/admin")),
                Verdict::CustomUnavailable { .. }
            ),
            "{why}"
        );
        assert!(
            warned(&t, why) && warned(&t, "with_request_body"),
            "{why}: {:?}",
            t.warnings
        );
    }
    // Exactly the limit is fine.
    let t = f10_ext_authz_edited(|x| x["withRequestBody"]["maxRequestBytes"] = 65536.into());
    assert_eq!(
        t.snapshot.authorization().provider(http).unwrap().body,
        Some(BodyBuffer::new(65536, true, false).unwrap())
    );
}

#[test]
fn authz_second_allow_filter_must_also_allow() {
    // F7 plus a second ALLOW filter for path /ok: Envoy runs both, so GET must also be /ok.
    let t = authz_edited("f7", |f| {
        f.insert(
            3,
            serde_json::json!({"name": "envoy.filters.http.rbac", "typedConfig": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
                "rules": {"policies": {"ns[foo]-policy[allow-ok]-rule[0]": {
                    "permissions": [{"urlPath": {"path": {"exact": "/ok"}}}],
                    "principals": [{"any": true}]}}}}}),
        );
    });
    assert_eq!(
        verdict(&t, "f7", &AuthzReq::get("/ok")),
        allowed_by("ns[foo]-policy[allow-get]-rule[0]")
    );
    assert!(matches!(
        verdict(&t, "f7", &AuthzReq::get("/other")),
        Verdict::Denied { rule, .. } if rule == "allow-filter[2]-none-matched"
    ));
}

#[test]
fn authz_unrunnable_filters_deny_the_chain() {
    let wasm = serde_json::json!({"name": "istio.acme_plugin", "typedConfig": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"}});
    let ecds = serde_json::json!({"name": "istio.ecds_plugin", "configDiscovery": {
        "configSource": {"ads": {}}, "typeUrls": ["type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"]}});
    let unknown_first = serde_json::json!({"name": "acme.rewrite", "typedConfig": {
        "@type": "type.googleapis.com/acme.Rewrite"}});
    for (name, filter, at) in [
        ("istio.acme_plugin", wasm, 5),
        ("istio.ecds_plugin", ecds, 0),
        ("acme.rewrite", unknown_first, 0),
    ] {
        let t = authz_edited("f2", |f| f.insert(at, filter));
        let rule = format!("unenforced-filter[{name}]");
        assert!(
            matches!(verdict(&t, "f2", &AuthzReq::get("/")), Verdict::Denied { rule: r, .. } if r == rule),
            "{name}"
        );
        assert!(warned(&t, "all traffic of this chain is denied"), "{name}");
    }
    // An unknown filter after the authorization filters only warns.
    let t = authz_edited("f2", |f| {
        f.insert(
            3,
            serde_json::json!({"name": "acme.compress", "typedConfig": {"@type": "type.googleapis.com/acme.Compress"}}),
        )
    });
    assert!(verdict(&t, "f2", &AuthzReq::get("/")).allowed());
    assert!(warned(&t, "acme.Compress) is not supported; ignored"));
}

#[test]
fn authz_rbac_matcher_tree_denies_the_chain() {
    let t = authz_edited("f2", |f| {
        f[0]["typedConfig"] = serde_json::json!({
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
            "matcher": {"onNoMatch": {"action": {"name": "allow", "typedConfig": {
                "@type": "type.googleapis.com/envoy.config.rbac.v3.Action", "name": "allow"}}}}});
    });
    assert!(!verdict(&t, "f2", &AuthzReq::get("/")).allowed());
}

#[test]
fn authz_per_route_rbac_override_answers_403() {
    let mut doc: serde_json::Value = serde_json::from_str(&fixture("authz.json")).unwrap();
    let chain = format!("inbound-vip|8000|http|{}", svc("f2"));
    let chains = doc["resources"][0]["filterChains"].as_array_mut().unwrap();
    let c = chains
        .iter_mut()
        .find(|c| c["name"] == chain.as_str())
        .unwrap();
    c["filters"][0]["typedConfig"]["routeConfig"]["virtualHosts"][0]["routes"][0]
        ["typedPerFilterConfig"] = serde_json::json!({"envoy.filters.http.rbac": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute",
            "rbac": {"rules": {"policies": {}}}}});
    let t = translate(&load_resources(&doc.to_string()).unwrap());
    let r = routed(route_of(
        &t.snapshot,
        "10.96.3.2:8000",
        &SimpleRequest::new("/"),
    ));
    match &r.action {
        RouteAction::DirectResponse(d) => {
            assert_eq!(d.status, 403);
            assert_eq!(d.body.as_deref(), Some(&b"RBAC: access denied"[..]));
        }
        other => panic!("{other:?}"),
    }
    assert!(warned(&t, "the route answers 403"));
}

#[test]
fn authz_unknown_network_filter_before_the_hcm_denies() {
    let mut doc: serde_json::Value = serde_json::from_str(&fixture("authz.json")).unwrap();
    let chain = format!("inbound-vip|8000|http|{}", svc("f2"));
    let chains = doc["resources"][0]["filterChains"].as_array_mut().unwrap();
    let c = chains
        .iter_mut()
        .find(|c| c["name"] == chain.as_str())
        .unwrap();
    c["filters"].as_array_mut().unwrap().insert(
        0,
        serde_json::json!({"name": "acme.sni_rewrite", "typedConfig": {"@type": "type.googleapis.com/acme.SniRewrite"}}),
    );
    let t = translate(&load_resources(&doc.to_string()).unwrap());
    assert!(matches!(
        verdict(&t, "f2", &AuthzReq::get("/")),
        Verdict::Denied { rule, .. } if rule == "unenforced-filter[acme.sni_rewrite]"
    ));
}

/// Each chain's HCM path fields (istiod `buildHTTPConnectionManager`, per meshConfig
/// `pathNormalization`) become its service port's path handling, and authorization meets the
/// path as that handling leaves it.
#[test]
fn hcm_path_fields_are_per_service() {
    use routing::path::{apply, EscapedSlashes::*, PathOutcome, PathPolicy};
    let t = load("path_normalization.json");
    assert!(
        t.warnings.iter().all(|w| !w.message.contains("path")),
        "{:?}",
        t.warnings
    );
    let policy = |n: u8| -> PathPolicy {
        let vip = format!("10.96.4.{n}:9080");
        let Some(Destination::Service { port, .. }) = t.snapshot.resolve_destination(addr(&vip))
        else {
            panic!("{vip} is not a service VIP");
        };
        port.path.expect("the chain's HCM sets the path handling")
    };
    let p = |normalize_path, merge_slashes, escaped_slashes| PathPolicy {
        normalize_path,
        merge_slashes,
        escaped_slashes,
    };
    assert_eq!(policy(1), p(true, false, KeepUnchanged), "BASE");
    assert_eq!(policy(2), p(false, false, KeepUnchanged), "NONE");
    assert_eq!(policy(3), p(true, true, KeepUnchanged), "MERGE_SLASHES");
    assert_eq!(
        policy(4),
        p(true, true, UnescapeAndForward),
        "DECODE_AND_MERGE"
    );
    assert_eq!(policy(5), p(true, true, RejectRequest));
    assert_eq!(policy(6), p(true, true, UnescapeAndRedirect));
    // The meshConfig modes are what istiod writes for them.
    for (mode, n) in [("BASE", 1), ("NONE", 2), ("MERGE_SLASHES", 3)] {
        let m: routing::path::PathNormalization = mode.parse().unwrap();
        assert_eq!(PathPolicy::from(m), policy(n), "{mode}");
    }
    let m: routing::path::PathNormalization = "DECODE_AND_MERGE_SLASHES".parse().unwrap();
    assert_eq!(PathPolicy::from(m), policy(4));

    // What the DENY on /admin decides for the path as each service's HCM leaves it.
    let rule = "ns[default]-policy[deny-admin]-rule[0]";
    let decide_at = |n: u8, raw: &str| -> String {
        match apply(raw, &policy(n)) {
            PathOutcome::Reject => "400".to_string(),
            PathOutcome::Redirect(to) => format!("307 {to}"),
            outcome => {
                let path = match outcome {
                    PathOutcome::Rewrite(p) => p,
                    _ => raw.to_string(),
                };
                let req = AuthzReq::get(Box::leak(path.into_boxed_str()));
                let host = format!("p{n}.default.svc.cluster.local");
                match decide(&t, Some(&host), &req).verdict {
                    v if v == denied_by(rule) => "403".to_string(),
                    v if v.allowed() => "allowed".to_string(),
                    v => format!("{v:?}"),
                }
            }
        }
    };
    for (raw, expect) in [
        ("/admin", ["403", "403", "403", "403", "403", "403"]),
        (
            "/x/../admin",
            ["403", "allowed", "403", "403", "403", "403"],
        ),
        (
            "//admin",
            ["allowed", "allowed", "403", "403", "403", "403"],
        ),
        (
            "/x%2F..%2Fadmin",
            ["allowed", "allowed", "allowed", "403", "400", "307 /admin"],
        ),
        (
            "/ok",
            [
                "allowed", "allowed", "allowed", "allowed", "allowed", "allowed",
            ],
        ),
    ] {
        for (i, want) in expect.iter().enumerate() {
            assert_eq!(decide_at(i as u8 + 1, raw), *want, "p{} {raw}", i + 1);
        }
    }

    // `/config_dump` shows each port's handling.
    let dump = t.snapshot.to_json();
    let p3 = dump["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"]["hostname"] == "p3.default.svc.cluster.local")
        .unwrap();
    assert_eq!(
        p3["service"]["ports"][0]["path"],
        serde_json::json!({"normalize_path": true, "merge_slashes": true, "escaped_slashes": "KEEP_UNCHANGED"})
    );

    // An HCM without the fields (not istiod's: it always sets normalize_path) is Envoy's
    // defaults: no normalization, escaped slashes kept.
    let b = load("bookinfo.json");
    let Some(Destination::Service { port, .. }) =
        b.snapshot.resolve_destination(addr("10.96.0.12:9080"))
    else {
        panic!("reviews VIP");
    };
    assert_eq!(port.path, Some(PathPolicy::default()));
}
