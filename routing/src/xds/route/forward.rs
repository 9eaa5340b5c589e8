//! The forwarding `RouteAction`: weighted destinations, hash policies, retries.

use super::*;

/// A cluster name → destination (`weight` to be filled in).
fn destination(
    cluster: &str,
    ctx: &RouteCtx<'_>,
    route: &str,
    at: At<'_>,
    diag: &mut Diag,
) -> Result<RouteDestination, Issue> {
    if !ctx.known_clusters.contains(cluster) {
        if ctx.validate_clusters {
            return Err(Issue::Invalid(format!("unknown cluster {cluster}")));
        }
        at.warn(
            diag,
            format!("route {route}: cluster {cluster} is not (yet) known; requests to it fail"),
        );
    }
    let (host, subset, port) = match ClusterName::parse(cluster) {
        // `outbound|…` (a service this waypoint does not serve) is routable like its own.
        Some(c) => (
            c.host().to_string(),
            c.subset().map(str::to_string),
            Some(c.port),
        ),
        None => {
            at.warn(
                diag,
                format!("route {route}: cluster {cluster} is not an istiod service cluster"),
            );
            (cluster.to_string(), None, None)
        }
    };
    Ok(RouteDestination {
        host,
        subset,
        port,
        weight: 100,
        headers: Headers::default(),
    })
}

// `total_weight` and `cors` are deprecated but still sent by older control planes.
#[allow(deprecated)]
pub(super) fn route_action(
    a: &EnvoyRouteAction,
    name: &str,
    ctx: &RouteCtx<'_>,
    route: &mut HttpRoute,
    hash_keys: &mut Vec<(String, HashKey)>,
    at: At<'_>,
    diag: &mut Diag,
) -> Result<(), Issue> {
    let mut clusters = Vec::new();
    match &a.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) => {
            route
                .destinations
                .push(destination(c, ctx, name, at, diag)?);
            clusters.push(c.clone());
        }
        Some(ClusterSpecifier::WeightedClusters(w)) => {
            let mut sum: u64 = 0;
            for cw in &w.clusters {
                let weight = cw.weight.as_ref().map_or(0, |v| v.value);
                sum += u64::from(weight);
                if weight == 0 {
                    continue;
                }
                let mut d = destination(&cw.name, ctx, name, at, diag)?;
                d.weight = weight;
                d.headers = headers(
                    &cw.request_headers_to_add,
                    &cw.request_headers_to_remove,
                    &cw.response_headers_to_add,
                    &cw.response_headers_to_remove,
                )?;
                if let Some(cluster_weight::HostRewriteSpecifier::HostRewriteLiteral(h)) =
                    &cw.host_rewrite_specifier
                {
                    d.headers.authority = Some(h.clone());
                }
                if !cw.typed_per_filter_config.is_empty() || !cw.cluster_header.is_empty() {
                    return Err(Issue::Unsupported(
                        "per-cluster filter config / cluster_header in weighted_clusters".into(),
                    ));
                }
                route.destinations.push(d);
                clusters.push(cw.name.clone());
            }
            if sum == 0 {
                return Err(Issue::Invalid("weighted_clusters weights sum to 0".into()));
            }
            if let Some(total) = &w.total_weight {
                if u64::from(total.value) != sum {
                    return Err(Issue::Invalid(format!(
                        "weighted_clusters weights sum to {sum}, total_weight is {}",
                        total.value
                    )));
                }
            }
            if sum > u64::from(u32::MAX) {
                return Err(Issue::Invalid("weighted_clusters weights overflow".into()));
            }
        }
        Some(ClusterSpecifier::ClusterHeader(_)) => {
            return Err(Issue::Unsupported("cluster_header".into()))
        }
        Some(_) => return Err(Issue::Unsupported("cluster specifier plugin".into())),
        None => return Err(Issue::Invalid("route action without cluster".into())),
    }
    route.timeout = match &a.timeout {
        None => Some(ENVOY_DEFAULT_ROUTE_TIMEOUT),
        Some(t) => match duration(t) {
            Some(d) if d.is_zero() => None,
            Some(d) => Some(d),
            None => return Err(Issue::Invalid("negative timeout".into())),
        },
    };
    route.retries = match a.retry_policy.as_ref().or(ctx.vhost_retry) {
        None => RetryPolicy::disabled().shared(),
        Some(p) => retry_policy(p, name, at, diag).shared(),
    };
    let mut rewrite = Rewrite {
        uri: None,
        authority: None,
    };
    if !a.prefix_rewrite.is_empty() {
        rewrite.uri = Some(UriRewrite::Prefix(a.prefix_rewrite.clone()));
    }
    if let Some(rr) = &a.regex_rewrite {
        let pattern = rr.pattern.as_ref().map_or("", |p| p.regex.as_str());
        let r = RegexRewrite::new(pattern, &rr.substitution)
            .map_err(|e| Issue::Invalid(format!("invalid regex_rewrite {pattern:?}: {e}")))?;
        rewrite.uri = Some(UriRewrite::Regex(r));
    }
    match &a.host_rewrite_specifier {
        None => {}
        Some(HostRewriteSpecifier::HostRewriteLiteral(h)) => rewrite.authority = Some(h.clone()),
        Some(_) => {
            return Err(Issue::Unsupported(
                "host rewrite other than a literal".into(),
            ))
        }
    }
    if a.path_rewrite_policy.is_some() {
        return Err(Issue::Unsupported("path_rewrite_policy".into()));
    }
    if rewrite.uri.is_some() || rewrite.authority.is_some() {
        route.rewrite = Some(Box::new(rewrite));
    }
    for m in &a.request_mirror_policies {
        let d = destination(&m.cluster, ctx, name, at, diag)?;
        route.mirrors.push(Mirror {
            host: d.host,
            subset: d.subset,
            port: d.port,
            percentage: runtime_fraction(m.runtime_fraction.as_ref()),
        });
    }
    route.mirrors.retain(|m| !m.percentage.is_zero());
    for (i, h) in a.hash_policy.iter().enumerate() {
        match hash_key(h) {
            Ok(key) if i == 0 => {
                hash_keys.extend(clusters.iter().map(|c| (c.clone(), key.clone())));
            }
            Ok(_) => at.warn(
                diag,
                format!("route {name}: only the first hash_policy is used"),
            ),
            Err(what) => at.warn(diag, format!("route {name}: {what}; not used")),
        }
    }
    let unsupported: [(&str, bool); 8] = [
        ("rate_limits", !a.rate_limits.is_empty()),
        ("hedge_policy", a.hedge_policy.is_some()),
        (
            "internal_redirect_policy",
            a.internal_redirect_policy.is_some(),
        ),
        ("metadata_match", a.metadata_match.is_some()),
        ("idle_timeout", a.idle_timeout.is_some()),
        ("upgrade_configs", !a.upgrade_configs.is_empty()),
        ("cors (route action)", a.cors.is_some()),
        (
            "retry_policy_typed_config",
            a.retry_policy_typed_config.is_some(),
        ),
    ];
    for (field, set) in unsupported {
        if set {
            at.warn(
                diag,
                format!("route {name}: {field} is not supported; ignored"),
            );
        }
    }
    Ok(())
}

/// A `hash_policy` this proxy cannot hash on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HashPolicyError {
    #[error("hash_policy header regex_rewrite is not supported")]
    HeaderRegexRewrite,
    #[error("hash_policy cookie attributes are not supported")]
    CookieAttributes,
    #[error("hash_policy filter_state is not supported")]
    FilterState,
    #[error("empty hash_policy")]
    Empty,
}

pub(super) fn hash_key(h: &HashPolicy) -> Result<HashKey, HashPolicyError> {
    match &h.policy_specifier {
        Some(PolicySpecifier::Header(hd)) => {
            if hd.regex_rewrite.is_some() {
                return Err(HashPolicyError::HeaderRegexRewrite);
            }
            Ok(HashKey::Header(hd.header_name.to_ascii_lowercase()))
        }
        Some(PolicySpecifier::Cookie(c)) => {
            if !c.attributes.is_empty() {
                return Err(HashPolicyError::CookieAttributes);
            }
            Ok(HashKey::Cookie(HttpCookie {
                name: c.name.clone(),
                path: (!c.path.is_empty()).then(|| c.path.clone()),
                ttl: c.ttl.as_ref().and_then(duration),
            }))
        }
        Some(PolicySpecifier::ConnectionProperties(cp)) if cp.source_ip => Ok(HashKey::SourceIp),
        Some(PolicySpecifier::QueryParameter(q)) => Ok(HashKey::QueryParameter(q.name.clone())),
        Some(PolicySpecifier::FilterState(_)) => Err(HashPolicyError::FilterState),
        _ => Err(HashPolicyError::Empty),
    }
}

/// Envoy's retry host predicate that avoids hosts already tried.
pub(super) const PREVIOUS_HOSTS: &str = "envoy.retry_host_predicates.previous_hosts";
/// Envoy's retry priority that moves retries to other priorities (localities).
pub(super) const PREVIOUS_PRIORITIES: &str = "envoy.retry_priorities.previous_priorities";

/// The route's `retry_policy` as written (the virtual host's when the route
/// has none); neither → no retries. Envoy's `retry_on` words, `num_retries`
/// (default 1), `per_try_timeout`, `retriable_status_codes`, the
/// `previous_hosts` predicate and `host_selection_retry_max_attempts`.
pub(super) fn retry_policy(
    p: &EnvoyRetryPolicy,
    name: &str,
    at: At<'_>,
    diag: &mut Diag,
) -> RetryPolicy {
    let mut out = RetryPolicy {
        attempts: p.num_retries.as_ref().map_or(1, |n| n.value),
        per_try_timeout: p.per_try_timeout.as_ref().and_then(duration),
        retry_on: Vec::new(),
        retriable_status_codes: Vec::new(),
        retry_remote_localities: p
            .retry_priority
            .as_ref()
            .is_some_and(|r| r.name == PREVIOUS_PRIORITIES),
        retry_ignore_previous_hosts: p
            .retry_host_predicate
            .iter()
            .any(|h| h.name == PREVIOUS_HOSTS),
        host_selection_retry_max_attempts: u32::try_from(
            p.host_selection_retry_max_attempts.max(0),
        )
        .unwrap_or(u32::MAX),
        backoff: p
            .retry_back_off
            .as_ref()
            .and_then(|b| b.base_interval.as_ref())
            .and_then(duration),
        is_default: false,
    };
    for word in p
        .retry_on
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
    {
        match RetryOn::parse(word) {
            Some(c) if !out.retry_on.contains(&c) => out.retry_on.push(c),
            Some(_) => {}
            None => at.warn(
                diag,
                format!("route {name}: retry_on {word:?} is not supported; ignored"),
            ),
        }
    }
    for code in &p.retriable_status_codes {
        match u16::try_from(*code) {
            Ok(c) if (100..=599).contains(&c) => out.retriable_status_codes.push(c),
            _ => at.warn(
                diag,
                format!("route {name}: retriable status code {code} ignored"),
            ),
        }
    }
    if !p.retriable_headers.is_empty()
        || !p.retriable_request_headers.is_empty()
        || p.rate_limited_retry_back_off.is_some()
        || p.per_try_idle_timeout.is_some()
    {
        at.warn(
            diag,
            format!(
                "route {name}: retriable headers / rate-limited backoff / per-try idle timeout \
                 are not supported; ignored"
            ),
        );
    }
    for h in &p.retry_host_predicate {
        if h.name != PREVIOUS_HOSTS {
            at.warn(
                diag,
                format!(
                    "route {name}: retry host predicate {} is not supported; ignored",
                    h.name
                ),
            );
        }
    }
    if let Some(r) = p
        .retry_priority
        .as_ref()
        .filter(|r| r.name != PREVIOUS_PRIORITIES)
    {
        at.warn(
            diag,
            format!(
                "route {name}: retry priority {} is not supported; ignored",
                r.name
            ),
        );
    }
    let default = RetryPolicy::istio_default();
    out.is_default = RetryPolicy {
        is_default: true,
        ..out.clone()
    } == default;
    out
}
