//! The authorization of a splice, made from the last one: only the services whose chains
//! changed are made again, and the result is what a build from all the chains gives.

use super::*;
use crate::authz::{Action, Expr, Policy, Rule};

fn policy(name: &str) -> Policy {
    Policy {
        namespace: "ns".into(),
        name: name.into(),
        action: Action::Allow,
        rules: vec![Rule {
            name: format!("ns[ns]-policy[{name}]-rule[0]"),
            principal: Expr::Any,
            permission: Expr::Any,
        }],
        dry_run: false,
    }
}

fn chain(http: bool, policies: &[&str]) -> Arc<ChainAuthz> {
    Arc::new(ChainAuthz {
        http,
        policies: policies.iter().map(|p| policy(p)).collect(),
        jwt: Vec::new(),
        ext_authz: Vec::new(),
    })
}

fn name(port: u16, proto: &str, host: &str) -> String {
    format!("inbound-vip|{port}|{proto}|{host}.ns.svc.cluster.local")
}

fn fqdn(host: &str) -> String {
    format!("{host}.ns.svc.cluster.local")
}

/// What an authorization says, for comparing two.
fn seen(a: &Authorization) -> String {
    let all = a.policies();
    let policies: Vec<&Policy> = all.iter().map(|p| &**p).collect();
    let policies = serde_json::to_string(&policies).unwrap();
    let per_port: Vec<String> = ["a", "b", "c"]
        .iter()
        .flat_map(|h| [true, false].map(|http| (fqdn(h), http)))
        .map(|(h, http)| format!("{h} {http} {:?}", a.for_service(Some(&h), http).policies))
        .collect();
    format!("{policies}\n{:?}\n{per_port:?}", a.attachments())
}

fn same(a: &Arc<ChainAuthz>, b: &Arc<ChainAuthz>) -> bool {
    Arc::ptr_eq(a, b)
}

#[test]
fn only_changed_services_are_made_again() {
    let was: BTreeMap<String, Arc<ChainAuthz>> = [
        (name(80, "http", "a"), chain(true, &["pa"])),
        (name(80, "http", "b"), chain(true, &[])),
        ("direct-http".to_string(), chain(true, &["waypoint"])),
    ]
    .into_iter()
    .collect();
    let old = authorization(&was);
    let mut now = was.clone();
    // a gets a TCP port with a policy of its own, c comes, b goes.
    now.insert(name(90, "tcp", "a"), chain(false, &["pa-tcp"]));
    now.insert(name(80, "http", "c"), chain(true, &["pc"]));
    now.remove(&name(80, "http", "b"));
    let patched = authorization_patched(&old, &was, &now, same).expect("patched");
    assert_eq!(seen(&patched), seen(&authorization(&now)));
    assert!(patched
        .for_service(Some(&fqdn("a")), false)
        .policies
        .iter()
        .any(|p| p.name == "pa-tcp"));

    // A service whose chains did not change keeps its sets (shared, not made again).
    let mut again = now.clone();
    again.insert(name(80, "http", "c"), chain(true, &["pc2"]));
    let next = authorization_patched(&patched, &now, &again, same).unwrap();
    assert_eq!(seen(&next), seen(&authorization(&again)));
    let a = fqdn("a");
    assert!(Arc::ptr_eq(
        patched.for_service(Some(&a), true),
        next.for_service(Some(&a), true)
    ));
}

/// The waypoint-wide chains changed: made from all the chains, not patched.
#[test]
fn a_changed_pod_chain_is_not_patched() {
    let was: BTreeMap<String, Arc<ChainAuthz>> = [
        (name(80, "http", "a"), chain(true, &["pa"])),
        ("direct-http".to_string(), chain(true, &["waypoint"])),
    ]
    .into_iter()
    .collect();
    let mut now = was.clone();
    now.insert(
        "direct-http".to_string(),
        chain(true, &["waypoint", "more"]),
    );
    assert!(authorization_patched(&authorization(&was), &was, &now, same).is_none());
}

/// A changed chain that names an external authorizer (the providers are every chain's):
/// made from all the chains, not patched.
#[test]
fn a_chain_naming_an_external_authorizer_is_not_patched() {
    let was: BTreeMap<String, Arc<ChainAuthz>> = [(name(80, "http", "a"), chain(true, &["pa"]))]
        .into_iter()
        .collect();
    let mut with_ext = ChainAuthz {
        http: true,
        policies: vec![policy("pc")],
        ..Default::default()
    };
    with_ext
        .ext_authz
        .push(crate::authz::ext::ExtAuthzProvider {
            name: "opa".into(),
            address: "opa.ns.svc.cluster.local:9191".into(),
            timeout: std::time::Duration::from_secs(1),
            fail_open: false,
            status_on_error: 403,
            body: None,
            kind: crate::authz::ext::ExtAuthzKind::Grpc,
        });
    let mut now = was.clone();
    now.insert(name(80, "http", "c"), Arc::new(with_ext));
    let old = authorization(&was);
    assert!(authorization_patched(&old, &was, &now, same).is_none());
    // Built from all the chains, the provider is there.
    assert!(authorization(&now).provider("opa").is_some());
    // Without the authorizer the same change is patched.
    now.insert(name(80, "http", "c"), chain(true, &["pc"]));
    assert!(authorization_patched(&old, &was, &now, same).is_some());
}
