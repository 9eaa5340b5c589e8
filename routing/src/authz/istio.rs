//! The `security.istio.io` AuthorizationPolicy spec → [`Policy`], as istiod builds Envoy RBAC
//! for it (`pilot/pkg/security/authz/model`: one RBAC policy per rule, `from` sources OR-ed,
//! fields within a source AND-ed, values within a field OR-ed, `not*` fields negated, `when`
//! conditions AND-ed), with istiod's validation (`pkg/config/validation`:
//! `ValidateAuthorizationPolicy`). Unknown fields are errors: a policy field the waypoint would
//! ignore could let a request through.

use serde::Deserialize;

use super::expr::{Attr, Expr, Matcher, StrMatch};
use super::{Action, Policy, Rule};
use crate::model::MatchRegex;
use crate::tcp::Cidr;
mod builder;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    pub selector: Option<serde_json::Value>,
    pub target_ref: Option<TargetRef>,
    pub target_refs: Option<Vec<TargetRef>>,
    pub rules: Option<Vec<RuleY>>,
    pub action: Option<String>,
    pub provider: Option<ProviderY>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TargetRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderY {
    pub name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleY {
    pub from: Option<Vec<FromY>>,
    pub to: Option<Vec<ToY>>,
    pub when: Option<Vec<ConditionY>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromY {
    pub source: Option<SourceY>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToY {
    pub operation: Option<OperationY>,
}

type Values = Option<Vec<String>>;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceY {
    pub principals: Values,
    pub not_principals: Values,
    pub request_principals: Values,
    pub not_request_principals: Values,
    pub namespaces: Values,
    pub not_namespaces: Values,
    pub service_accounts: Values,
    pub not_service_accounts: Values,
    pub ip_blocks: Values,
    pub not_ip_blocks: Values,
    pub remote_ip_blocks: Values,
    pub not_remote_ip_blocks: Values,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OperationY {
    pub hosts: Values,
    pub not_hosts: Values,
    pub ports: Values,
    pub not_ports: Values,
    pub methods: Values,
    pub not_methods: Values,
    pub paths: Values,
    pub not_paths: Values,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConditionY {
    pub key: Option<String>,
    pub values: Values,
    pub not_values: Values,
}

/// A problem in a policy: the field path below `spec` and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

struct Builder<'a> {
    namespace: &'a str,
    errors: Vec<SpecError>,
}

/// Translate one policy; every problem is returned (the policy is then refused as a whole).
pub fn translate(
    namespace: &str,
    name: &str,
    spec: &AuthorizationPolicySpec,
    dry_run: bool,
) -> Result<Policy, Vec<SpecError>> {
    let mut b = Builder {
        namespace,
        errors: Vec::new(),
    };
    let action = match (spec.action.as_deref().unwrap_or("ALLOW"), &spec.provider) {
        ("CUSTOM", Some(ProviderY { name: Some(p) })) if !p.is_empty() => Action::Custom {
            provider: p.clone(),
        },
        ("CUSTOM", _) => {
            b.error(
                "spec.provider.name".into(),
                "a CUSTOM policy needs a provider",
            );
            Action::Custom {
                provider: String::new(),
            }
        }
        (a, Some(_)) if a != "CUSTOM" => {
            b.error(
                "spec.provider".into(),
                format!("only a CUSTOM policy takes a provider, not {a}"),
            );
            Action::Deny
        }
        ("ALLOW", _) => Action::Allow,
        ("DENY", _) => Action::Deny,
        ("AUDIT", _) => Action::Audit,
        (other, _) => {
            b.error(
                "spec.action".into(),
                format!("unknown action {other:?} (ALLOW, DENY, AUDIT or CUSTOM)"),
            );
            Action::Deny
        }
    };
    if spec.selector.is_some() && (spec.target_ref.is_some() || spec.target_refs.is_some()) {
        b.error(
            "spec.selector".into(),
            "selector and targetRefs are mutually exclusive",
        );
    }
    let mut rules = Vec::new();
    for (i, r) in spec.rules.iter().flatten().enumerate() {
        let at = format!("spec.rules[{i}]");
        let principal = match &r.from {
            None => Expr::Any,
            Some(from) => Expr::or(
                from.iter()
                    .enumerate()
                    .map(|(j, f)| {
                        let at = format!("{at}.from[{j}].source");
                        match &f.source {
                            Some(s) => b.source(&at, s),
                            None => {
                                b.error(at.clone(), "missing required field");
                                Expr::Unknown(at)
                            }
                        }
                    })
                    .collect(),
            ),
        };
        let to = match &r.to {
            None => Expr::Any,
            Some(to) => Expr::or(
                to.iter()
                    .enumerate()
                    .map(|(j, t)| {
                        let at = format!("{at}.to[{j}].operation");
                        match &t.operation {
                            Some(o) => b.operation(&at, o),
                            None => {
                                b.error(at.clone(), "missing required field");
                                Expr::Unknown(at)
                            }
                        }
                    })
                    .collect(),
            ),
        };
        let mut permission = vec![to];
        for (j, c) in r.when.iter().flatten().enumerate() {
            permission.push(b.condition(&format!("{at}.when[{j}]"), c));
        }
        rules.push(Rule {
            name: Rule::istio_name(namespace, name, i),
            principal,
            permission: Expr::and(permission),
        });
    }
    if !b.errors.is_empty() {
        return Err(b.errors);
    }
    Ok(Policy {
        namespace: namespace.to_string(),
        name: name.to_string(),
        action,
        rules,
        dry_run,
    })
}
