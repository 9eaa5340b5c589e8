//! `AuthorizationPolicy` and `RequestAuthentication` documents
//! (security.istio.io): the specs through [`crate::authz::istio`] and
//! [`crate::authz::jwt`], the `istio.io/dry-run` annotation, and the
//! `targetRefs` that attach them to this waypoint (resolved in [`attach`] once
//! every service is known; both kinds attach alike).

use std::collections::HashMap;
use std::sync::Arc;

use super::diag::Diag;
use super::DocCtx;
use crate::authz::istio::{translate, AuthorizationPolicySpec, TargetRef};
use crate::authz::jwt::{JwtProvider, RequestAuthenticationSpec};
use crate::authz::{Authorization, Policy, PolicySet, ServicePolicies};
use crate::error::DocRef;

/// Istio's annotation for policies that are evaluated and logged, not enforced.
const DRY_RUN: &str = "istio.io/dry-run";

/// What a security document contributes.
#[derive(Debug)]
pub(crate) enum Security {
    Policy(Arc<Policy>),
    Jwt(Vec<Arc<JwtProvider>>),
}

#[derive(Debug)]
pub(crate) struct AuthorizationPolicyIr {
    pub at: DocRef,
    pub namespace: String,
    pub item: Security,
    pub target_refs: Vec<TargetRef>,
    pub selector: bool,
}

pub(crate) fn parse_authn(ctx: &DocCtx<'_>, diag: &mut Diag) -> Option<AuthorizationPolicyIr> {
    let spec: RequestAuthenticationSpec = super::parse_optional_spec(ctx, diag)
        .ok()?
        .unwrap_or_default();
    let item = crate::authz::jwt::translate(&ctx.namespace, &ctx.name, &spec)
        .map(|p| Security::Jwt(p.into_iter().map(Arc::new).collect()));
    ir(
        ctx,
        diag,
        item,
        spec.target_refs,
        spec.target_ref,
        spec.selector,
    )
}

pub(crate) fn parse(ctx: &DocCtx<'_>, diag: &mut Diag) -> Option<AuthorizationPolicyIr> {
    let spec: AuthorizationPolicySpec = super::parse_optional_spec(ctx, diag)
        .ok()?
        .unwrap_or_default();
    let dry_run = match ctx.annotations.get(DRY_RUN).map(String::as_str) {
        None => false,
        // Go's strconv.ParseBool, as istiod reads it.
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => true,
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => false,
        Some(other) => {
            diag.error(
                &ctx.at,
                Some(&format!("metadata.annotations[{DRY_RUN}]")),
                format!("{other:?} is not a boolean"),
            );
            return None;
        }
    };
    let item =
        translate(&ctx.namespace, &ctx.name, &spec, dry_run).map(|p| Security::Policy(Arc::new(p)));
    ir(
        ctx,
        diag,
        item,
        spec.target_refs,
        spec.target_ref,
        spec.selector,
    )
}

/// The document's contribution with its targets, or its errors reported.
fn ir(
    ctx: &DocCtx<'_>,
    diag: &mut Diag,
    item: Result<Security, Vec<crate::authz::istio::SpecError>>,
    target_refs: Option<Vec<TargetRef>>,
    target_ref: Option<TargetRef>,
    selector: Option<serde_json::Value>,
) -> Option<AuthorizationPolicyIr> {
    match item {
        Ok(item) => Some(AuthorizationPolicyIr {
            at: ctx.at.clone(),
            namespace: ctx.namespace.clone(),
            item,
            target_refs: target_refs
                .into_iter()
                .flatten()
                .chain(target_ref)
                .collect(),
            selector: selector.is_some(),
        }),
        Err(errors) => {
            for e in errors {
                diag.error(&ctx.at, Some(&e.field), e.message);
            }
            None
        }
    }
}

/// Which waypoint this is: its Gateway (namespace/name) and the mesh's root namespace.
#[derive(Debug, Clone)]
pub struct WaypointRef {
    pub namespace: String,
    pub name: String,
    pub root_namespace: String,
}

impl Default for WaypointRef {
    fn default() -> Self {
        Self {
            namespace: "default".into(),
            name: "waypoint".into(),
            root_namespace: "istio-system".into(),
        }
    }
}

/// What a target reference attaches a policy to.
enum Attached {
    Waypoint,
    /// Service FQDNs.
    Services(Vec<String>),
    Elsewhere(String),
}

/// Attach every policy as istiod 1.25+ does for a waypoint
/// (`pilot/pkg/model/policyattachment.go`, `ShouldAttachPolicy`): a `Gateway`
/// target naming this waypoint (policy in its namespace), a `GatewayClass`
/// `istio-waypoint` target (policy in the root namespace), a `Service` or
/// `ServiceEntry` target in the policy's namespace. Policies with a selector
/// or no target at all never reach a waypoint.
///
/// `services`: Kubernetes Service name (`name.ns`) → FQDN; `service_entries`:
/// `ns/name` → the entry's service FQDNs.
pub(crate) fn attach(
    items: Vec<AuthorizationPolicyIr>,
    waypoint: &WaypointRef,
    resolve_service: &dyn Fn(&str, &str) -> Option<String>,
    service_entries: &HashMap<String, Vec<String>>,
    diag: &mut Diag,
) -> Authorization {
    let mut waypoint_wide = PolicySet::default();
    let mut per_service: HashMap<String, PolicySet> = HashMap::new();
    for ir in items {
        if ir.selector {
            diag.warn(
                &ir.at,
                Some("spec.selector"),
                "selects workloads, which ztunnel and sidecars enforce; a waypoint applies \
                 policies by targetRefs only; not applied here",
            );
            continue;
        }
        if ir.target_refs.is_empty() {
            diag.warn(
                &ir.at,
                None,
                "has no targetRefs: a namespace-wide policy, enforced by ztunnel, never by a \
                 waypoint; not applied here",
            );
            continue;
        }
        for (i, t) in ir.target_refs.iter().enumerate() {
            let field = format!("spec.targetRefs[{i}]");
            match target(t, &ir.namespace, waypoint, resolve_service, service_entries) {
                Attached::Waypoint => add(&mut waypoint_wide, &ir.item),
                Attached::Services(hosts) => {
                    for h in hosts {
                        add(per_service.entry(h).or_default(), &ir.item);
                    }
                }
                Attached::Elsewhere(why) => diag.warn(&ir.at, Some(&field), why),
            }
        }
    }
    dedup(&mut waypoint_wide);
    let by_service = per_service
        .into_iter()
        .map(|(host, own)| {
            let mut all = waypoint_wide.clone();
            all.policies.extend(own.policies);
            all.jwt.extend(own.jwt);
            dedup(&mut all);
            (host, ServicePolicies::both(all))
        })
        .collect();
    Authorization::new(ServicePolicies::both(waypoint_wide), by_service)
}

fn add(set: &mut PolicySet, item: &Security) {
    match item {
        Security::Policy(p) => set.policies.push(p.clone()),
        Security::Jwt(providers) => set.jwt.extend(providers.iter().cloned()),
    }
}

fn dedup(set: &mut PolicySet) {
    let mut seen = std::collections::HashSet::new();
    set.policies.retain(|p| seen.insert(Arc::as_ptr(p)));
    let mut seen = std::collections::HashSet::new();
    set.jwt.retain(|p| seen.insert(Arc::as_ptr(p)));
}

fn target(
    t: &TargetRef,
    policy_ns: &str,
    waypoint: &WaypointRef,
    resolve_service: &dyn Fn(&str, &str) -> Option<String>,
    service_entries: &HashMap<String, Vec<String>>,
) -> Attached {
    let ns = t.namespace.as_deref().unwrap_or(policy_ns);
    match (t.group.as_str(), t.kind.as_str()) {
        ("gateway.networking.k8s.io", "Gateway") => {
            if t.name == waypoint.name && ns == waypoint.namespace && policy_ns == ns {
                Attached::Waypoint
            } else {
                Attached::Elsewhere(format!(
                    "targets Gateway {ns}/{}, not this waypoint ({}/{}); not applied here",
                    t.name, waypoint.namespace, waypoint.name
                ))
            }
        }
        ("gateway.networking.k8s.io", "GatewayClass") => {
            if t.name == "istio-waypoint" && policy_ns == waypoint.root_namespace {
                Attached::Waypoint
            } else {
                Attached::Elsewhere(format!(
                    "targets GatewayClass {}; only istio-waypoint, from the root namespace {}, \
                     applies to waypoints; not applied here",
                    t.name, waypoint.root_namespace
                ))
            }
        }
        ("" | "core", "Service") => match resolve_service(&t.name, ns) {
            Some(host) if ns == policy_ns => Attached::Services(vec![host]),
            Some(_) => Attached::Elsewhere(format!(
                "targets Service {ns}/{} from namespace {policy_ns}: a policy applies to \
                 services of its own namespace; not applied here",
                t.name
            )),
            None => Attached::Elsewhere(format!(
                "targets Service {ns}/{}, which this waypoint does not serve",
                t.name
            )),
        },
        ("networking.istio.io", "ServiceEntry") => {
            match service_entries.get(&format!("{ns}/{}", t.name)) {
                Some(hosts) if ns == policy_ns => Attached::Services(hosts.clone()),
                Some(_) => Attached::Elsewhere(format!(
                    "targets ServiceEntry {ns}/{} from namespace {policy_ns}; not applied here",
                    t.name
                )),
                None => Attached::Elsewhere(format!(
                    "targets ServiceEntry {ns}/{}, which this waypoint does not serve",
                    t.name
                )),
            }
        }
        (group, kind) => Attached::Elsewhere(format!(
            "targets {kind} (group {group:?}); a waypoint attaches policies to a Gateway, \
             GatewayClass, Service or ServiceEntry; not applied here"
        )),
    }
}
