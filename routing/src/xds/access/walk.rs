//! The walk over one chain's HTTP filters: RBAC, ext_authz and JWT filters in order, ALLOW filters
//! after the first as DENY.

use super::*;

impl Walk<'_> {
    pub(super) fn http_filters(&mut self, hcm: &HttpConnectionManager, diag: &mut Diag) {
        fn typed(hf: &http_filter::ConfigType) -> Option<&Any> {
            match hf {
                http_filter::ConfigType::TypedConfig(a) => Some(a),
                _ => None,
            }
        }
        let active = hcm.http_filters.iter().filter(|f| !f.disabled);
        let last_authz = active.clone().enumerate().fold(None, |acc, (i, f)| {
            match f.config_type.as_ref().and_then(typed) {
                Some(a) if is_authz_type(&a.type_url) => Some(i),
                _ => acc,
            }
        });
        for (i, hf) in active.enumerate() {
            let any = match &hf.config_type {
                Some(http_filter::ConfigType::TypedConfig(a)) => a,
                Some(http_filter::ConfigType::ConfigDiscovery(_)) => {
                    self.deny_all(&hf.name, "is delivered through ECDS", diag);
                    continue;
                }
                None => {
                    if access_control(&hf.name, "") {
                        self.deny_all(&hf.name, "has no typed_config", diag);
                    }
                    continue;
                }
            };
            if let Some(r) = decode_any::<HttpRbac>(any) {
                match r {
                    Ok(r) => self.rbac(
                        &hf.name,
                        r.rules.as_ref(),
                        r.shadow_rules.as_ref(),
                        &r.shadow_rules_stat_prefix,
                        r.matcher.is_some(),
                        diag,
                    ),
                    Err(e) => self.at.reject(diag, format!("chain {}: {e}", self.chain)),
                }
            } else if let Some(x) = decode_any::<HttpExtAuthz>(any) {
                match x {
                    Ok(x) => {
                        let provider = match &x.services {
                            Some(Services::GrpcService(g)) => Some(grpc_provider(g)),
                            Some(Services::HttpService(h)) => {
                                h.server_uri.as_ref().map(|u| match &u.http_upstream_type {
                                    Some(HttpUpstreamType::Cluster(c)) if !c.is_empty() => {
                                        c.clone()
                                    }
                                    _ => uri_host(&u.uri),
                                })
                            }
                            None => None,
                        };
                        if let Some(name) = &provider {
                            match crate::xds::ext_authz::provider(name, &x) {
                                Ok(p) => self.out.ext_authz.push(p),
                                // Its CUSTOM policies stay without an authorizer: they deny.
                                Err(why) => self.at.warn(
                                    diag,
                                    format!(
                                        "chain {}: filter {}: {why}; requests its CUSTOM rules \
                                         match are denied",
                                        self.chain, hf.name
                                    ),
                                ),
                            }
                        }
                        self.ext_authz(
                            &hf.name,
                            provider,
                            x.filter_enabled_metadata.is_some(),
                            x.shadow_mode,
                            diag,
                        )
                    }
                    Err(e) => self.at.reject(diag, format!("chain {}: {e}", self.chain)),
                }
            } else if let Some(j) = decode_any::<JwtAuthentication>(any) {
                match j.map(|j| crate::xds::jwt::providers(&j)) {
                    // Verified here: the RBAC filters' claim tests are exact.
                    Ok(Ok(providers)) => self.out.jwt.extend(providers),
                    // A shape this proxy cannot reproduce: its claims stay unknown.
                    Ok(Err(why)) => {
                        self.at.warn(
                            diag,
                            format!(
                                "chain {}: filter {}: {why}; JWT claims are unknown to \
                                 authorization (ALLOW rules on them never match, DENY rules do)",
                                self.chain, hf.name
                            ),
                        );
                        self.jwt = true;
                    }
                    Err(e) => self.at.reject(diag, format!("chain {}: {e}", self.chain)),
                }
            } else {
                let before_authz = last_authz.is_some_and(|l| i < l);
                self.other(&hf.name, any, before_authz, diag);
            }
        }
    }

    pub(super) fn other(&mut self, name: &str, any: &Any, before_authz: bool, diag: &mut Diag) {
        let inner = effective_type(any);
        let why = if access_control(name, &any.type_url) || access_control(name, &inner) {
            "is not run by this proxy"
        } else if known_inert(name, &inner) || !before_authz {
            return;
        } else {
            "runs before authorization and is not run by this proxy"
        };
        self.deny_all(name, &format!("({}) {why}", type_label(any)), diag);
    }

    /// A DENY policy matching everything on this chain.
    pub(super) fn deny_all(&mut self, filter: &str, why: &str, diag: &mut Diag) {
        self.at.warn(
            diag,
            format!(
                "chain {}: filter {filter} {why}: all traffic of this chain is denied (never fail open)",
                self.chain
            ),
        );
        self.out.policies.push(Policy {
            namespace: String::new(),
            name: SYNTHETIC.into(),
            action: Action::Deny,
            rules: vec![Rule {
                name: format!("unenforced-filter[{filter}]"),
                principal: Expr::Any,
                permission: Expr::Any,
            }],
            dry_run: false,
        });
    }

    fn report(&self, cx: Cx, diag: &mut Diag) {
        for (key, f) in cx.findings {
            for u in f.unknown {
                self.at.warn(
                    diag,
                    format!(
                        "chain {}: policy {key}: {u} cannot be evaluated by this proxy; treated as unknown (ALLOW does not match, DENY and CUSTOM match)",
                        self.chain
                    ),
                );
            }
            for i in f.invalid {
                self.at
                    .reject(diag, format!("chain {}: policy {key}: {i}", self.chain));
            }
        }
    }

    pub(super) fn rbac(
        &mut self,
        name: &str,
        rules: Option<&EnvoyRbac>,
        shadow: Option<&EnvoyRbac>,
        shadow_prefix: &str,
        matcher: bool,
        diag: &mut Diag,
    ) {
        if matcher {
            self.deny_all(
                name,
                "uses an RBAC matcher tree, which is not supported",
                diag,
            );
        }
        let mut cx = Cx::new(self.jwt);
        if let Some(r) = rules {
            let Some(action) = rbac::action(r.action) else {
                self.at.reject(
                    diag,
                    format!("chain {}: filter {name}: action {}", self.chain, r.action),
                );
                return;
            };
            let mut policies = rbac::policies(r, &action, false, &mut cx);
            if action == Action::Allow {
                self.allow_filters += 1;
                if policies.is_empty() {
                    // Envoy: an ALLOW filter without policies denies everything.
                    policies.push(Policy {
                        namespace: String::new(),
                        name: SYNTHETIC.into(),
                        action: Action::Allow,
                        rules: Vec::new(),
                        dry_run: false,
                    });
                }
                if self.allow_filters > 1 {
                    policies = vec![allow_as_deny(policies, self.allow_filters)];
                }
            }
            self.out.policies.extend(policies);
        }
        if let Some(s) = shadow {
            let Some(action) = rbac::action(s.action) else {
                self.at.reject(
                    diag,
                    format!("chain {}: filter {name}: action {}", self.chain, s.action),
                );
                return;
            };
            let policies = rbac::policies(s, &action, true, &mut cx);
            if shadow_prefix == EXT_AUTHZ_SHADOW_PREFIX {
                if let Some(unused) = self.pending_custom.replace(policies) {
                    self.out.policies.extend(unused);
                }
            } else {
                self.out.policies.extend(policies);
            }
        }
        self.report(cx, diag);
    }

    pub(super) fn ext_authz(
        &mut self,
        name: &str,
        provider: Option<String>,
        enabled_by_metadata: bool,
        shadow_mode: bool,
        diag: &mut Diag,
    ) {
        let provider = provider.unwrap_or_else(|| name.to_string());
        let pending = self.pending_custom.take();
        if shadow_mode {
            // The authorizer's answer is never enforced: the shadow rules stay dry-run.
            self.out.policies.extend(pending.unwrap_or_default());
            return;
        }
        match pending {
            Some(policies) if enabled_by_metadata => {
                for mut p in policies {
                    p.action = Action::Custom {
                        provider: provider.clone(),
                    };
                    p.dry_run = false;
                    self.out.policies.push(p);
                }
            }
            other => {
                self.out.policies.extend(other.unwrap_or_default());
                self.at.warn(
                    diag,
                    format!(
                        "chain {}: filter {name} (CUSTOM provider {provider}) applies to every request and this proxy does not call external authorizers: all traffic of this chain is denied",
                        self.chain
                    ),
                );
                self.out.policies.push(Policy {
                    namespace: String::new(),
                    name: SYNTHETIC.into(),
                    action: Action::Custom {
                        provider: provider.clone(),
                    },
                    rules: vec![Rule {
                        name: format!("ext-authz[{provider}]"),
                        principal: Expr::Any,
                        permission: Expr::Any,
                    }],
                    dry_run: false,
                });
            }
        }
    }

    pub(super) fn finish(mut self) -> ChainAuthz {
        // A CUSTOM shadow filter without ext_authz only reports.
        self.out
            .policies
            .extend(self.pending_custom.take().unwrap_or_default());
        self.out
    }
}

/// Every ALLOW filter after the first must allow too: a DENY policy that
/// matches when none of `policies`' rules does.
fn allow_as_deny(policies: Vec<Policy>, n: usize) -> Policy {
    let any_rule = Expr::or(
        policies
            .iter()
            .flat_map(|p| &p.rules)
            .map(|r| Expr::and(vec![r.principal.clone(), r.permission.clone()]))
            .collect(),
    );
    Policy {
        namespace: String::new(),
        name: SYNTHETIC.into(),
        action: Action::Deny,
        rules: vec![Rule {
            name: format!("allow-filter[{n}]-none-matched"),
            principal: Expr::Any,
            permission: Expr::negate(any_rule),
        }],
        dry_run: false,
    }
}

pub(super) fn grpc_provider(g: &GrpcService) -> String {
    match &g.target_specifier {
        Some(TargetSpecifier::EnvoyGrpc(e)) => e.cluster_name.clone(),
        Some(TargetSpecifier::GoogleGrpc(gg)) => gg.target_uri.clone(),
        None => String::new(),
    }
}

/// `http://host:port/path` → `host:port`.
fn uri_host(uri: &str) -> String {
    let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_string()
}
