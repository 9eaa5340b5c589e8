//! The decision for one request against a [`PolicySet`], in Istio's order.

use std::borrow::Cow;
use std::net::IpAddr;

use serde::Serialize;

use super::expr::Tri;
use super::{Action, Policy, PolicySet, Rule};

/// The validated JWT of a request, as RequestAuthentication leaves it.
pub enum Jwt<'a> {
    /// No token (or no RequestAuthentication): `request.auth.*` are absent.
    None,
    /// A verified token's claims.
    Claims(&'a serde_json::Value),
    /// Tokens are configured but the waypoint cannot verify them: `request.auth.*` are unknown.
    Unverifiable,
}

/// What authorization reads of a request or a TCP connection.
pub trait AuthzView {
    /// An HTTP request (false: a TCP connection, where HTTP attributes are unknown).
    fn is_http(&self) -> bool;
    /// The client's SPIFFE id (`spiffe://…`).
    fn principal(&self) -> Option<&str>;
    /// The client's address as far as the waypoint can vouch for it (`source.ip`).
    fn source_ip(&self) -> Option<IpAddr>;
    fn remote_ip(&self) -> Option<IpAddr> {
        self.source_ip()
    }
    /// Another address the client *claims* to come from and the waypoint could not verify
    /// (ztunnel's `forwarded: for=` naming a workload whose identity is not the peer's
    /// certificate, or no workload the config knows). The true source is one of the two: a
    /// `source.ip` / `remote.ip` test that gives different answers for them is unknown, so an
    /// ALLOW rule cannot be satisfied by a claim and a DENY rule matching either address denies.
    fn unverified_source_ip(&self) -> Option<IpAddr> {
        None
    }
    fn destination_ip(&self) -> Option<IpAddr>;
    fn destination_port(&self) -> u16;
    fn sni(&self) -> Option<&str> {
        None
    }
    fn method(&self) -> &str {
        ""
    }
    fn host(&self) -> Option<&str> {
        None
    }
    /// `:path`, query included.
    fn path(&self) -> &str {
        ""
    }
    /// A request header by lowercased name: several values joined with `,`, as Envoy's
    /// `HeaderUtility::getAllOfHeaderAsString` does for header matchers, so a DENY on one value
    /// cannot be dodged by sending the header twice.
    fn header(&self, _lowercase_name: &str) -> Option<Cow<'_, str>> {
        None
    }
    fn jwt(&self) -> Jwt<'_> {
        Jwt::None
    }
}

/// Allowed or denied, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// No policy applies to this destination.
    NoPolicy,
    /// Policies apply, none denied, and there is no ALLOW policy.
    AllowedNoAllowPolicy,
    /// An ALLOW rule matched.
    Allowed { policy: String, rule: String },
    /// A DENY rule matched.
    Denied { policy: String, rule: String },
    /// ALLOW policies exist and none matched.
    NoAllowMatched,
    /// A CUSTOM rule matched and the external authorizer cannot be consulted: fails closed.
    CustomUnavailable {
        policy: String,
        rule: String,
        provider: String,
    },
    /// A CUSTOM rule matched and the external authorizer denied.
    CustomDenied {
        policy: String,
        rule: String,
        provider: String,
    },
}

impl Verdict {
    pub fn allowed(&self) -> bool {
        matches!(
            self,
            Verdict::NoPolicy | Verdict::AllowedNoAllowPolicy | Verdict::Allowed { .. }
        )
    }

    /// Envoy's `%RESPONSE_CODE_DETAILS%` for a denial (None when allowed).
    pub fn response_code_details(&self) -> Option<String> {
        match self {
            Verdict::Denied { rule, .. } => {
                Some(format!("rbac_access_denied_matched_policy[{rule}]"))
            }
            Verdict::NoAllowMatched => Some("rbac_access_denied_matched_policy[none]".into()),
            Verdict::CustomUnavailable { .. } => Some("ext_authz_error".into()),
            Verdict::CustomDenied { .. } => Some("ext_authz_denied".into()),
            _ => None,
        }
    }

    /// The `policy` label of the decision metric: `NS/NAME`, `none`, or `-`.
    pub fn policy(&self) -> &str {
        match self {
            Verdict::Allowed { policy, .. }
            | Verdict::Denied { policy, .. }
            | Verdict::CustomUnavailable { policy, .. }
            | Verdict::CustomDenied { policy, .. } => policy,
            Verdict::NoAllowMatched => "none",
            Verdict::NoPolicy | Verdict::AllowedNoAllowPolicy => "-",
        }
    }

    /// The `action` label of the decision metric.
    pub fn action(&self) -> &'static str {
        match self {
            Verdict::NoPolicy | Verdict::AllowedNoAllowPolicy | Verdict::Allowed { .. } => "allow",
            Verdict::Denied { .. } | Verdict::NoAllowMatched => "deny",
            Verdict::CustomUnavailable { .. } | Verdict::CustomDenied { .. } => "custom_deny",
        }
    }
}

/// The decision and what the policies that do not decide (AUDIT, dry-run) said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    #[serde(flatten)]
    pub verdict: Verdict,
    /// AUDIT rules that matched (`NS/NAME rule`).
    pub audited: Vec<String>,
    /// What the dry-run policies would have decided, when any apply.
    pub dry_run: Option<Verdict>,
}

/// The first rule of `policy` whose principal and permission both hold (`strict`: unknown
/// counts as a match, for DENY and CUSTOM) — or, for ALLOW and AUDIT, are both true.
fn matching_rule<'p>(policy: &'p Policy, req: &dyn AuthzView, strict: bool) -> Option<&'p Rule> {
    policy
        .rules
        .iter()
        .find(|rule| match rule_truth(rule, req) {
            Tri::True => true,
            Tri::Unknown => strict,
            Tri::False => false,
        })
}

/// A rule holds when its principal and its permission both do (the permission is not
/// evaluated when the principal is false).
fn rule_truth(rule: &Rule, req: &dyn AuthzView) -> Tri {
    match rule.principal.eval(req) {
        Tri::False => Tri::False,
        p => match (p, rule.permission.eval(req)) {
            (_, Tri::False) => Tri::False,
            (Tri::True, Tri::True) => Tri::True,
            _ => Tri::Unknown,
        },
    }
}

fn full_name(p: &Policy) -> String {
    format!("{}/{}", p.namespace, p.name)
}

/// A CUSTOM rule that matched: the request goes to `provider`'s external authorizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomMatch {
    pub policy: String,
    pub rule: String,
    pub provider: String,
}

/// CUSTOM (unless `skip_custom`: already decided by the authorizer), DENY, ALLOW over
/// `policies` (one kind: enforced, or dry-run).
fn verdict<'p>(
    policies: impl Iterator<Item = &'p Policy> + Clone,
    req: &dyn AuthzView,
    skip_custom: bool,
) -> Verdict {
    for p in policies.clone().filter(|_| !skip_custom) {
        if let Action::Custom { provider } = &p.action {
            if let Some(rule) = matching_rule(p, req, true) {
                return Verdict::CustomUnavailable {
                    policy: full_name(p),
                    rule: rule.name.clone(),
                    provider: provider.clone(),
                };
            }
        }
    }
    for p in policies.clone().filter(|p| p.action == Action::Deny) {
        if let Some(rule) = matching_rule(p, req, true) {
            return Verdict::Denied {
                policy: full_name(p),
                rule: rule.name.clone(),
            };
        }
    }
    let mut any_allow = false;
    for p in policies.filter(|p| p.action == Action::Allow) {
        any_allow = true;
        if let Some(rule) = matching_rule(p, req, false) {
            return Verdict::Allowed {
                policy: full_name(p),
                rule: rule.name.clone(),
            };
        }
    }
    if any_allow {
        Verdict::NoAllowMatched
    } else {
        Verdict::AllowedNoAllowPolicy
    }
}

impl PolicySet {
    /// The decision for `req`. With no policy this is one branch, no allocation. A matching
    /// CUSTOM rule denies ([`Verdict::CustomUnavailable`]): callers that can consult the
    /// authorizer use [`PolicySet::custom`] and [`PolicySet::evaluate_after_custom`].
    pub fn evaluate(&self, req: &dyn AuthzView) -> Decision {
        self.decide(req, false)
    }

    fn decide(&self, req: &dyn AuthzView, skip_custom: bool) -> Decision {
        if self.policies.is_empty() {
            return Decision {
                verdict: Verdict::NoPolicy,
                audited: Vec::new(),
                dry_run: None,
            };
        }
        let enforced = self.policies.iter().map(|p| &**p).filter(|p| !p.dry_run);
        let shadow = self.policies.iter().map(|p| &**p).filter(|p| p.dry_run);
        let audited = enforced
            .clone()
            .filter(|p| p.action == Action::Audit)
            .filter_map(|p| {
                matching_rule(p, req, false).map(|r| format!("{} {}", full_name(p), r.name))
            })
            .collect();
        let dry_run = shadow
            .clone()
            .next()
            .is_some()
            .then(|| verdict(shadow, req, false));
        Decision {
            verdict: verdict(enforced, req, skip_custom),
            audited,
            dry_run,
        }
    }

    /// The first enforced CUSTOM rule `req` matches (unknown counts: strict), which sends it to
    /// an external authorizer before DENY and ALLOW are looked at.
    pub fn custom(&self, req: &dyn AuthzView) -> Option<CustomMatch> {
        self.policies.iter().filter(|p| !p.dry_run).find_map(|p| {
            let Action::Custom { provider } = &p.action else {
                return None;
            };
            matching_rule(p, req, true).map(|rule| CustomMatch {
                policy: full_name(p),
                rule: rule.name.clone(),
                provider: provider.clone(),
            })
        })
    }

    /// The decision once an external authorizer allowed the request: CUSTOM policies are
    /// skipped, DENY and ALLOW decide.
    pub fn evaluate_after_custom(&self, req: &dyn AuthzView) -> Decision {
        self.decide(req, true)
    }
}

/// How one rule evaluated, for `explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RuleTrace {
    pub name: String,
    pub principal: Tri,
    pub permission: Tri,
    /// Whether the rule counts as matched for its policy's action (unknown matches DENY and
    /// CUSTOM rules, never ALLOW or AUDIT ones).
    pub matched: bool,
}

/// How one policy evaluated, for `explain`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyTrace {
    pub policy: String,
    pub action: &'static str,
    pub dry_run: bool,
    pub rules: Vec<RuleTrace>,
}

impl PolicySet {
    /// Every rule of every policy against `req`, in order.
    pub fn trace(&self, req: &dyn AuthzView) -> Vec<PolicyTrace> {
        self.policies
            .iter()
            .map(|p| {
                let strict = matches!(p.action, Action::Deny | Action::Custom { .. });
                PolicyTrace {
                    policy: full_name(p),
                    action: p.action.as_str(),
                    dry_run: p.dry_run,
                    rules: p
                        .rules
                        .iter()
                        .map(|r| {
                            let (principal, permission) =
                                (r.principal.eval(req), r.permission.eval(req));
                            let t = rule_truth(r, req);
                            RuleTrace {
                                name: r.name.clone(),
                                principal,
                                permission,
                                matched: t == Tri::True || (strict && t == Tri::Unknown),
                            }
                        })
                        .collect(),
                }
            })
            .collect()
    }
}

/// The values of one header as a matcher sees them: one value as it is, several joined with `,`
/// (Envoy's `getAllOfHeaderAsString`). Bytes that are not UTF-8 are replaced rather than
/// hiding the header, so a DENY on its presence still matches.
pub fn joined_header<'a>(mut values: impl Iterator<Item = &'a [u8]>) -> Option<Cow<'a, str>> {
    let first = String::from_utf8_lossy(values.next()?);
    let Some(second) = values.next() else {
        return Some(first);
    };
    let mut all = first.into_owned();
    for v in std::iter::once(second).chain(values) {
        all.push(',');
        all.push_str(&String::from_utf8_lossy(v));
    }
    Some(Cow::Owned(all))
}
