//! In-module checks that need no fixtures; the golden tests are in
//! `tests/xds_translate/` (one module per fixture group).

use super::*;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, EdsClusterConfig,
};

fn eds_cluster(name: &str, service_name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(3)),
        eds_cluster_config: Some(EdsClusterConfig {
            service_name: service_name.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn malformed_any_is_a_rejection() {
    let bad = Any {
        type_url: CLUSTER_TYPE.into(),
        value: vec![0xff, 0xff, 0xff],
    };
    let unknown = Any {
        type_url: "type.googleapis.com/acme.Thing".into(),
        value: vec![],
    };
    let errs = Resources::from_any([&bad, &unknown]).unwrap_err();
    assert_eq!(errs.len(), 2);
    assert!(errs[0].reason.contains("cannot decode"), "{}", errs[0]);
    assert!(
        errs[1].reason.contains("not a resource type"),
        "{}",
        errs[1]
    );
}

#[test]
fn eds_subscriptions() {
    let clusters = vec![
        eds_cluster("inbound-vip|9080|http|r.default.svc.cluster.local", ""),
        eds_cluster(
            "inbound-vip|9080|http/v1|r.default.svc.cluster.local",
            "custom",
        ),
        Cluster {
            name: "main_internal".into(),
            ..Default::default()
        },
    ];
    let s = required_resources(&[], &clusters);
    assert_eq!(
        s.endpoints.iter().map(|n| &**n).collect::<Vec<_>>(),
        vec![
            "custom",
            "inbound-vip|9080|http|r.default.svc.cluster.local"
        ]
    );
    assert!(s.routes.is_empty());
}

#[test]
fn empty_state_translates_to_empty_snapshot() {
    let t = translate(&Resources::default(), &TranslateOptions::default()).unwrap();
    assert_eq!(t.snapshot.services().count(), 0);
    assert!(t.warnings.is_empty());
}

#[test]
fn duplicate_names_are_rejected() {
    let c = eds_cluster("inbound-vip|80|http|a.default.svc.cluster.local", "");
    let res = Resources {
        clusters: vec![c.clone(), c],
        ..Default::default()
    };
    let errs = translate(&res, &TranslateOptions::default()).unwrap_err();
    assert_eq!(
        errs[0].name,
        "inbound-vip|80|http|a.default.svc.cluster.local"
    );
    assert!(errs[0].reason.contains("duplicate"));
}

mod rbac_translation {
    use super::super::rbac::{self, parse_key, template_regex, Cx};
    use crate::authz::{Action, AuthzView, Expr, Tri};
    use envoy_types::pb::envoy::config::rbac::v3::permission::Rule as PermRule;
    use envoy_types::pb::envoy::config::rbac::v3::principal::Identifier;
    use envoy_types::pb::envoy::config::rbac::v3::{Permission, Policy, Principal, Rbac};
    use envoy_types::pb::envoy::config::route::v3::header_matcher::HeaderMatchSpecifier;
    use envoy_types::pb::envoy::config::route::v3::HeaderMatcher;
    use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
    use envoy_types::pb::envoy::r#type::matcher::v3::StringMatcher;
    use std::net::IpAddr;

    struct Req {
        path: &'static str,
        headers: Vec<(&'static str, &'static str)>,
        port: u16,
    }

    impl AuthzView for Req {
        fn is_http(&self) -> bool {
            true
        }
        fn principal(&self) -> Option<&str> {
            None
        }
        fn source_ip(&self) -> Option<IpAddr> {
            None
        }
        fn destination_ip(&self) -> Option<IpAddr> {
            None
        }
        fn destination_port(&self) -> u16 {
            self.port
        }
        fn path(&self) -> &str {
            self.path
        }
        fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
            crate::authz::joined_header(
                self.headers
                    .iter()
                    .filter(|(k, _)| *k == name)
                    .map(|(_, v)| v.as_bytes()),
            )
        }
    }

    fn req(headers: Vec<(&'static str, &'static str)>) -> Req {
        Req {
            path: "/a?q=1",
            headers,
            port: 80,
        }
    }

    /// The permission of a one-policy RBAC with `perm`, and what was found.
    fn translate(perm: PermRule, jwt: bool) -> (Expr, rbac::Findings) {
        let rbac = Rbac {
            policies: [(
                "ns[foo]-policy[p]-rule[0]".to_string(),
                Policy {
                    permissions: vec![Permission { rule: Some(perm) }],
                    principals: vec![Principal {
                        identifier: Some(Identifier::Any(true)),
                    }],
                    ..Default::default()
                },
            )]
            .into(),
            ..Default::default()
        };
        let mut cx = Cx::new(jwt);
        let mut ps = rbac::policies(&rbac, &Action::Deny, false, &mut cx);
        let rule = ps.pop().unwrap().rules.pop().unwrap();
        (rule.permission, cx.findings.pop().unwrap().1)
    }

    fn header(name: &str, exact: &str, invert: bool, missing_empty: bool) -> PermRule {
        PermRule::Header(HeaderMatcher {
            name: name.into(),
            invert_match: invert,
            treat_missing_header_as_empty: missing_empty,
            header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                match_pattern: Some(MatchPattern::Exact(exact.into())),
                ignore_case: false,
            })),
        })
    }

    #[test]
    fn policy_keys() {
        assert_eq!(
            parse_key("ns[foo]-policy[httpbin]-rule[12]"),
            Some(("foo", "httpbin", 12))
        );
        assert_eq!(
            parse_key("istio-ext-authz-ext-authz-http-ns[foo]-policy[ext]-rule[0]"),
            Some(("foo", "ext", 0))
        );
        assert_eq!(
            parse_key("istio-ext-authz-ns[foo]-policy[ext]-rule[1]"),
            Some(("foo", "ext", 1))
        );
        for bad in [
            "ns[foo]-policy[x]-rule[0]-deny-due-to-bad-CUSTOM-action",
            "xns[foo]-policy[x]-rule[0]",
            "ns[foo]-policy[x]-rule[a]",
            "anything",
        ] {
            assert_eq!(parse_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn path_templates() {
        let m = |t: &str, path: &str| {
            let re = crate::model::MatchRegex::new(&template_regex(t).unwrap()).unwrap();
            re.is_match(path)
        };
        assert!(m("/api/*/items/**", "/api/v1/items/"));
        assert!(m("/api/*/items/**", "/api/v1/items/a/b"));
        assert!(!m("/api/*/items/**", "/api/v1/v2/items/a"));
        assert!(!m("/api/*/items/**", "/api//items/a"));
        assert!(!m("/api/*/items/**", "/api/v1/items"));
        assert!(m("/**.mpd", "/content/123/manifest.mpd"));
        assert!(!m("/a.b", "/aXb"), "literals are escaped");
        assert_eq!(template_regex("/a/{id}"), None);
        assert_eq!(template_regex("/**/a/*"), None, "** must be last");
    }

    #[test]
    #[allow(deprecated)] // prefix_match: what older control planes send
    fn header_conditions_as_envoy() {
        let (e, _) = translate(header("x-a", "1", false, false), false);
        assert_eq!(e.eval(&req(vec![("x-a", "1")])), Tri::True);
        assert_eq!(e.eval(&req(vec![])), Tri::False);
        // Inverted: a missing header does not match (Envoy matchHeaders).
        let (e, _) = translate(header("X-A", "1", true, false), false);
        assert_eq!(e.eval(&req(vec![("x-a", "2")])), Tri::True);
        assert_eq!(e.eval(&req(vec![("x-a", "1")])), Tri::False);
        assert_eq!(e.eval(&req(vec![])), Tri::False);
        // treat_missing_header_as_empty: missing is "".
        let (e, _) = translate(header("x-a", "", false, true), false);
        assert_eq!(e.eval(&req(vec![])), Tri::True);
        let (e, _) = translate(header("x-a", "", true, true), false);
        assert_eq!(e.eval(&req(vec![])), Tri::False);
        assert_eq!(e.eval(&req(vec![("x-a", "z")])), Tri::True);
        // :path includes the query: an exact match on it is unknown, a prefix is the path's.
        let (e, f) = translate(header(":path", "/a", false, false), false);
        assert_eq!(e.eval(&req(vec![])), Tri::Unknown);
        assert_eq!(f.unknown.len(), 1, "{f:?}");
        let (e, f) = translate(
            PermRule::Header(HeaderMatcher {
                name: ":path".into(),
                header_match_specifier: Some(HeaderMatchSpecifier::PrefixMatch("/a".into())),
                ..Default::default()
            }),
            false,
        );
        assert_eq!(e.eval(&req(vec![])), Tri::True);
        assert!(f.unknown.is_empty());
    }

    #[test]
    fn bad_regex_is_invalid() {
        let (_, f) = translate(
            PermRule::Header(HeaderMatcher {
                name: "x".into(),
                header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(StringMatcher {
                    match_pattern: Some(MatchPattern::SafeRegex(
                        envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher {
                            regex: "(".into(),
                            ..Default::default()
                        },
                    )),
                    ignore_case: false,
                })),
                ..Default::default()
            }),
            false,
        );
        assert_eq!(f.invalid.len(), 1, "{f:?}");
    }
}

mod per_service_sets {
    use super::super::access::{authorization, ChainAuthz};
    use crate::authz::{Action, Attr, AuthzView, Expr, Matcher, Policy, Rule, StrMatch, Verdict};
    use std::collections::BTreeMap;
    use std::net::IpAddr;

    struct Req(u16, &'static str);

    impl AuthzView for Req {
        fn is_http(&self) -> bool {
            true
        }
        fn principal(&self) -> Option<&str> {
            None
        }
        fn source_ip(&self) -> Option<IpAddr> {
            None
        }
        fn destination_ip(&self) -> Option<IpAddr> {
            None
        }
        fn destination_port(&self) -> u16 {
            self.0
        }
        fn path(&self) -> &str {
            self.1
        }
    }

    fn policy(action: Action, name: &str, path: &str) -> Policy {
        Policy {
            namespace: "ns".into(),
            name: name.into(),
            action,
            rules: vec![Rule {
                name: format!("ns[ns]-policy[{name}]-rule[0]"),
                principal: Expr::Any,
                permission: Expr::Test(
                    Attr::Path,
                    Matcher::Str {
                        m: StrMatch::Exact(path.into()),
                        ignore_case: false,
                    },
                ),
            }],
            dry_run: false,
        }
    }

    const HOST: &str = "s.ns.svc.cluster.local";

    fn chains(p80: Vec<Policy>, p81: Vec<Policy>) -> BTreeMap<String, std::sync::Arc<ChainAuthz>> {
        [(80, p80), (81, p81)]
            .into_iter()
            .map(|(port, policies)| {
                (
                    format!("inbound-vip|{port}|http|{HOST}"),
                    std::sync::Arc::new(ChainAuthz {
                        http: true,
                        policies,
                        jwt: Vec::new(),
                        ext_authz: Vec::new(),
                    }),
                )
            })
            .collect()
    }

    fn verdict(a: &crate::authz::Authorization, req: Req) -> Verdict {
        a.for_service(Some(HOST), true).evaluate(&req).verdict
    }

    #[test]
    fn identical_chains_share_one_unscoped_set() {
        let p = || vec![policy(Action::Allow, "a", "/a")];
        let a = authorization(&chains(p(), p()));
        let set = a.for_service(Some(HOST), true);
        assert_eq!(set.policies.len(), 1);
        assert!(verdict(&a, Req(81, "/a")).allowed());
        // No TCP chain: TCP uses the HTTP set.
        assert!(std::sync::Arc::ptr_eq(
            set,
            a.for_service(Some(HOST), false)
        ));
    }

    #[test]
    fn differing_chains_are_scoped_to_their_ports() {
        let a = authorization(&chains(
            vec![policy(Action::Allow, "a", "/a")],
            vec![policy(Action::Deny, "d", "/d")],
        ));
        assert!(verdict(&a, Req(80, "/a")).allowed());
        assert_eq!(verdict(&a, Req(80, "/b")), Verdict::NoAllowMatched);
        assert_eq!(
            verdict(&a, Req(80, "/d")),
            Verdict::NoAllowMatched,
            "port 81's DENY does not apply"
        );
        assert!(verdict(&a, Req(81, "/b")).allowed(), "port 81 has no ALLOW");
        assert!(!verdict(&a, Req(81, "/d")).allowed());
    }
}

/// The subsets of one name share one label map, and equal subset policies one allocation,
/// across services and translations: a one-entry map is a whole B-tree node, a policy about
/// 930 bytes, and a mesh has a few of each for thousands of services. Nothing keeps a map
/// alive once no rule holds it.
#[test]
fn subsets_share_their_label_maps_and_policies() {
    use super::assemble::service::subset_labels;
    use std::sync::Arc;
    let json = include_str!("../../tests/fixtures/xds/bookinfo.json");
    let res = super::json::load_resources(json).unwrap();
    let one = translate(&res, &TranslateOptions::default())
        .unwrap()
        .snapshot;
    let two = translate(&res, &TranslateOptions::default())
        .unwrap()
        .snapshot;
    let labels = |s: &crate::Snapshot, name: &str| {
        s.destination_rules()
            .iter()
            .flat_map(|d| d.subsets.iter())
            .find(|s| s.name == name)
            .map(|s| s.labels.clone())
            .unwrap()
    };
    // Their policies too: a subset's is its port's cluster policy, which istiod makes alike.
    let policies = |s: &crate::Snapshot| -> Vec<Arc<crate::TrafficPolicy>> {
        s.destination_rules()
            .iter()
            .flat_map(|d| d.subsets.iter())
            .filter_map(|s| s.traffic_policy.clone())
            .collect()
    };
    let (p1, p2) = (policies(&one), policies(&two));
    assert!(p1.len() >= 3, "{p1:?}");
    for (a, b) in p1.iter().zip(&p2) {
        assert!(Arc::ptr_eq(a, b));
    }
    assert!(
        p1.iter().all(|p| Arc::ptr_eq(p, &p1[0])),
        "bookinfo's subsets have one policy"
    );
    let v1 = labels(&one, "v1");
    assert_eq!(v1.get("xds.subset/v1").map(String::as_str), Some("true"));
    assert!(Arc::ptr_eq(&v1, &labels(&two, "v1")));
    assert!(Arc::ptr_eq(&v1, &subset_labels("v1")));
    assert!(!Arc::ptr_eq(&v1, &labels(&one, "v2")));
    let weak = Arc::downgrade(&v1);
    drop((one, two, v1));
    assert!(weak.upgrade().is_none(), "the cache holds no map alive");
    assert_eq!(subset_labels("v1").len(), 1);
}

/// A route is one allocation for the chain piece the translator keeps, the VirtualService
/// equivalent and the route table a request reads (it was a copy in each: about 1 KiB per
/// route), and a translation that reuses the chain reuses the route.
#[test]
fn a_route_is_shared_by_its_chain_piece_its_virtual_service_and_its_route_table() {
    use std::sync::Arc;
    let json = include_str!("../../tests/fixtures/xds/bookinfo.json");
    let res = super::json::load_resources(json).unwrap();
    let owned = encode_all(&res);
    let encoded = as_encoded(&owned);
    let options = TranslateOptions::default();
    let mut translator = Translator::new();
    let first = Arc::new(translator.translate(&encoded, &options).unwrap().snapshot);
    translator.published(&first);
    let again = translator.translate(&encoded, &options).unwrap().snapshot;
    let reviews = "reviews.default.svc.cluster.local";
    let vs_route = |s: &crate::Snapshot| {
        s.virtual_services()
            .iter()
            .find(|v| v.hosts.iter().any(|h| h == reviews))
            .map(|v| v.http[0].clone())
            .unwrap()
    };
    let table = first.routes.get(reviews).unwrap();
    assert!(Arc::ptr_eq(&table[0].route, &vs_route(&first)));
    assert!(Arc::ptr_eq(&vs_route(&first), &vs_route(&again)));
    // Kept without spare room: a route of one destination holds one, not four.
    for vs in first.virtual_services().iter() {
        for r in &vs.http {
            assert_eq!(
                r.destinations.capacity(),
                r.destinations.len(),
                "{}",
                r.name
            );
        }
    }
}
