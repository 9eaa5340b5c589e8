//! L7 authorization: Istio's AuthorizationPolicy semantics as a proto-free model that both
//! front-ends fill (the YAML `AuthorizationPolicy` kind, and istiod's `envoy.filters.http.rbac` /
//! `envoy.filters.network.rbac` filters), and its evaluation.
//!
//! A [`Policy`] has an action and rules; a [`Rule`] matches when its `principal` and its
//! `permission` expressions both hold, as an Envoy RBAC policy does (istiod builds one RBAC
//! policy per AuthorizationPolicy rule, named `ns[NS]-policy[NAME]-rule[I]`). Policies apply as
//! Istio orders them: CUSTOM, then DENY (any match denies), then ALLOW (when ALLOW policies exist
//! a request must match one); AUDIT and dry-run policies never change the decision.
//!
//! **Never fail open.** Expressions evaluate in three values: true, false, and unknown — an
//! attribute this request cannot have (an HTTP attribute on a TCP connection, istiod's rule for
//! "HTTP-only fields on TCP traffic") or a matcher the waypoint cannot evaluate. An ALLOW rule
//! matches only when it is true; a DENY or CUSTOM rule matches unless it is false. Unknown is
//! therefore always the stricter outcome.

mod eval;
mod expr;
pub mod ext;
pub mod istio;
pub mod jwt;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

pub use eval::{
    joined_header, AuthzView, CustomMatch, Decision, Jwt, PolicyTrace, RuleTrace, Verdict,
};
pub use expr::{Attr, Expr, Matcher, StrMatch, Tri};

/// What a policy does when one of its rules matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Action {
    Allow,
    Deny,
    Audit,
    /// Delegated to an external authorizer (meshConfig `extensionProviders`).
    Custom {
        provider: String,
    },
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom { .. } => "CUSTOM",
        }
    }
}

/// One AuthorizationPolicy (or one RBAC filter's policy set from istiod) as it applies here.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub action: Action,
    /// In order. An ALLOW policy without rules allows nothing (it still makes ALLOW policies
    /// exist); a DENY policy without rules denies nothing.
    pub rules: Vec<Rule>,
    /// `istio.io/dry-run: "true"` (istiod: `shadow_rules`): evaluated and reported, never
    /// enforced.
    pub dry_run: bool,
}

/// One rule: `ns[NS]-policy[NAME]-rule[I]`, matched when both expressions hold.
#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    pub name: String,
    /// Who sends the request (`from` sources, identity-based `when` conditions).
    pub principal: Expr,
    /// What is requested (`to` operations, request-based `when` conditions).
    pub permission: Expr,
}

impl Rule {
    /// istiod's RBAC policy name for rule `index` of policy `namespace/name`.
    pub fn istio_name(namespace: &str, name: &str, index: usize) -> String {
        format!("ns[{namespace}]-policy[{name}]-rule[{index}]")
    }
}

/// The policies that apply to one destination, in the order they were given, and the JWT
/// providers (RequestAuthentication) whose tokens it verifies.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    pub policies: Vec<Arc<Policy>>,
    pub jwt: Vec<Arc<jwt::JwtProvider>>,
}

impl PolicySet {
    pub fn new(policies: Vec<Arc<Policy>>) -> Self {
        Self {
            policies,
            jwt: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.policies.is_empty() && self.jwt.is_empty()
    }
}

/// One destination's policies for HTTP requests and for TCP connections. From YAML the two are
/// the same set (evaluation gives HTTP-only attributes their TCP meaning); from istiod they are
/// the HTTP chain's `envoy.filters.http.rbac` and the TCP chain's `envoy.filters.network.rbac`.
#[derive(Debug, Clone, Default)]
pub struct ServicePolicies {
    pub http: Arc<PolicySet>,
    pub tcp: Arc<PolicySet>,
}

impl ServicePolicies {
    /// The same policies for both protocols.
    pub fn both(set: PolicySet) -> Self {
        let set = Arc::new(set);
        Self {
            http: set.clone(),
            tcp: set,
        }
    }

    fn is_empty(&self) -> bool {
        self.http.is_empty() && self.tcp.is_empty()
    }
}

/// Every destination's policies, built once per snapshot.
#[derive(Debug, Clone, Default)]
pub struct Authorization {
    /// Service FQDN → its policies (the waypoint-wide ones included).
    by_service: HashMap<String, ServicePolicies>,
    /// External authorizers by the name CUSTOM policies give (istiod's `ext_authz` filters).
    providers: HashMap<String, Arc<ext::ExtAuthzProvider>>,
    /// Traffic that reached no service (pod-addressed traffic of a workload waypoint): the
    /// waypoint-wide policies.
    waypoint: ServicePolicies,
}

impl Authorization {
    pub fn new(waypoint: ServicePolicies, by_service: HashMap<String, ServicePolicies>) -> Self {
        Self {
            by_service,
            waypoint,
            providers: HashMap::new(),
        }
    }

    /// With the external authorizers CUSTOM policies name.
    pub fn with_providers(
        mut self,
        providers: HashMap<String, Arc<ext::ExtAuthzProvider>>,
    ) -> Self {
        self.providers = providers;
        self
    }

    /// This authorization with the policies of some services replaced (`None`: the service is
    /// gone), the rest shared.
    pub(crate) fn with_services_replaced(
        &self,
        changed: Vec<(String, Option<ServicePolicies>)>,
    ) -> Self {
        let mut out = self.clone();
        for (host, set) in changed {
            match set {
                Some(set) => {
                    out.by_service.insert(host, set);
                }
                None => {
                    out.by_service.remove(&host);
                }
            }
        }
        out
    }

    /// The external authorizer named `name`, when the config brought one.
    pub fn provider(&self, name: &str) -> Option<&Arc<ext::ExtAuthzProvider>> {
        self.providers.get(name)
    }

    /// The policies for a service (by FQDN; the waypoint-wide ones for none or an unknown one),
    /// for an HTTP request or a TCP connection.
    pub fn for_service(&self, hostname: Option<&str>, http: bool) -> &Arc<PolicySet> {
        let p = hostname
            .and_then(|h| self.by_service.get(h))
            .unwrap_or(&self.waypoint);
        if http {
            &p.http
        } else {
            &p.tcp
        }
    }

    pub fn is_empty(&self) -> bool {
        self.waypoint.is_empty() && self.by_service.values().all(ServicePolicies::is_empty)
    }

    fn sets(&self) -> impl Iterator<Item = &Arc<PolicySet>> {
        std::iter::once(&self.waypoint)
            .chain(self.by_service.values())
            .flat_map(|p| [&p.http, &p.tcp])
    }

    /// Every distinct policy in force, for `/config_dump`.
    pub fn policies(&self) -> Vec<Arc<Policy>> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::new();
        for set in self.sets() {
            for p in &set.policies {
                if seen.insert(Arc::as_ptr(p)) {
                    out.push(p.clone());
                }
            }
        }
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    /// Service FQDN → names of the policies that apply to its HTTP traffic, for
    /// `/config_dump` (`(waypoint)`: pod-addressed traffic).
    pub fn attachments(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let names = |s: &ServicePolicies| {
            let mut v: Vec<String> = Vec::new();
            for p in s.http.policies.iter().chain(&s.tcp.policies) {
                let name = format!("{}/{}", p.namespace, p.name);
                if !v.contains(&name) {
                    v.push(name);
                }
            }
            v
        };
        let mut out: std::collections::BTreeMap<String, Vec<String>> = self
            .by_service
            .iter()
            .map(|(k, v)| (k.clone(), names(v)))
            .collect();
        out.insert("(waypoint)".into(), names(&self.waypoint));
        out
    }
}
