//! Filter chains: their kind, the filters that matter, the HTTP connection manager and its
//! per-chain path policy.

use super::*;

/// Filters that carry no routing meaning for this proxy (telemetry, filter
/// state plumbing), by type URL or by name (istiod wraps its own filters,
/// e.g. `istio.metadata_exchange`, in a TypedStruct).
pub(crate) fn harmless(type_url: &str) -> bool {
    const PARTS: &[&str] = &[
        "set_filter_state",
        "metadata_exchange",
        "peer_metadata",
        "stats.PluginConfig",
        "grpc_stats",
        "filters.http.router",
        "filters.http.cors",
        "alpn",
        "connect_authority",
        "header_to_metadata",
    ];
    PARTS.iter().any(|p| type_url.contains(p))
}

/// Filters whose authorization meaning [`access`] translates or enforces
/// (RBAC, ext_authz, jwt_authn, and access-control filters it makes deny):
/// no "not supported" warning here.
fn policy_filter(name: &str, type_url: &str) -> bool {
    access::access_control(name, type_url)
}

pub(crate) fn chain_kind(
    chain: &FilterChain,
    routes: &BTreeMap<&str, &RouteConfiguration>,
    at: At<'_>,
    diag: &mut Diag,
) -> Option<ChainKind> {
    let mut kind = None;
    for f in &chain.filters {
        let any = match &f.config_type {
            Some(ConfigType::TypedConfig(any)) => any,
            // ECDS filters: the chain denies (see `access`).
            Some(ConfigType::ConfigDiscovery(_)) => continue,
            None => {
                at.reject(
                    diag,
                    format!("chain {}: filter {} without config", chain.name, f.name),
                );
                return None;
            }
        };
        if let Some(hcm) = decode_any::<HttpConnectionManager>(any) {
            let hcm = match hcm {
                Ok(h) => h,
                Err(e) => {
                    at.reject(diag, format!("chain {}: {e}", chain.name));
                    return None;
                }
            };
            kind = http_chain(&chain.name, &hcm, routes, at, diag);
        } else if let Some(tcp) = decode_any::<TcpProxy>(any) {
            match tcp {
                Ok(t) => kind = Some(ChainKind::Tcp(Box::new(t))),
                Err(e) => {
                    at.reject(diag, format!("chain {}: {e}", chain.name));
                    return None;
                }
            }
        } else {
            other_filter(&chain.name, f, any, at, diag);
        }
    }
    if kind.is_none() {
        at.warn(
            diag,
            format!(
                "chain {}: neither http_connection_manager nor tcp_proxy; ignored",
                chain.name
            ),
        );
    }
    kind
}

fn other_filter(chain: &str, f: &Filter, any: &Any, at: At<'_>, diag: &mut Diag) {
    if policy_filter(&f.name, &any.type_url) {
        // Translated or made to deny by `access`, which reports it.
    } else if !harmless(&access::effective_type(any)) && !harmless(&f.name) {
        at.warn(
            diag,
            format!(
                "chain {chain}: filter {} ({}) is not supported; ignored",
                f.name,
                access::type_label(any)
            ),
        );
    }
}

/// The chain's connection manager, if it has one that decodes.
pub(crate) fn chain_hcm(chain: &FilterChain) -> Option<HttpConnectionManager> {
    chain.filters.iter().find_map(|f| match &f.config_type {
        Some(ConfigType::TypedConfig(any)) => decode_any::<HttpConnectionManager>(any)?.ok(),
        _ => None,
    })
}

/// The HCM's `normalize_path`, `merge_slashes` and `path_with_escaped_slashes_action`.
/// `normalize_path` unset is Envoy's runtime default (`false`); istiod always sets it
/// (`buildHTTPConnectionManager`: `false` only for meshConfig `pathNormalization: NONE`).
pub(crate) fn path_policy(
    chain: &str,
    hcm: &HttpConnectionManager,
    at: At<'_>,
    diag: &mut Diag,
) -> Option<PathPolicy> {
    let escaped_slashes =
        match PathWithEscapedSlashesAction::try_from(hcm.path_with_escaped_slashes_action) {
            Ok(
                PathWithEscapedSlashesAction::ImplementationSpecificDefault
                | PathWithEscapedSlashesAction::KeepUnchanged,
            ) => EscapedSlashes::KeepUnchanged,
            Ok(PathWithEscapedSlashesAction::RejectRequest) => EscapedSlashes::RejectRequest,
            Ok(PathWithEscapedSlashesAction::UnescapeAndRedirect) => {
                EscapedSlashes::UnescapeAndRedirect
            }
            Ok(PathWithEscapedSlashesAction::UnescapeAndForward) => {
                EscapedSlashes::UnescapeAndForward
            }
            Err(_) => {
                at.reject(
                    diag,
                    format!(
                        "chain {chain}: path_with_escaped_slashes_action {} is not a known action",
                        hcm.path_with_escaped_slashes_action
                    ),
                );
                return None;
            }
        };
    if hcm.typed_header_validation_config.is_some() {
        at.warn(
            diag,
            format!(
                "chain {chain}: typed_header_validation_config is not supported; the path is \
                 handled by normalize_path, merge_slashes and path_with_escaped_slashes_action"
            ),
        );
    }
    Some(PathPolicy {
        normalize_path: hcm.normalize_path.as_ref().is_some_and(|b| b.value),
        merge_slashes: hcm.merge_slashes,
        escaped_slashes,
    })
}

fn http_chain(
    chain: &str,
    hcm: &HttpConnectionManager,
    routes: &BTreeMap<&str, &RouteConfiguration>,
    at: At<'_>,
    diag: &mut Diag,
) -> Option<ChainKind> {
    let path = path_policy(chain, hcm, at, diag)?;
    let mut default_fault = None;
    for hf in &hcm.http_filters {
        if hf.disabled {
            continue;
        }
        let any = match &hf.config_type {
            Some(http_filter::ConfigType::TypedConfig(a)) => a,
            // ECDS filters: the chain denies (see `access`).
            Some(http_filter::ConfigType::ConfigDiscovery(_)) => continue,
            None if policy_filter(&hf.name, "") => continue,
            None => {
                at.warn(
                    diag,
                    format!(
                        "chain {chain}: http filter {} without typed_config; ignored",
                        hf.name
                    ),
                );
                continue;
            }
        };
        if let Some(f) = decode_any::<HttpFault>(any) {
            match f
                .map_err(|e| Issue::Invalid(e.to_string()))
                .and_then(|f| route::fault(&f))
            {
                Ok(f) => default_fault = f,
                Err(Issue::Invalid(e)) => {
                    at.reject(diag, format!("chain {chain}: {e}"));
                    return None;
                }
                Err(Issue::Unsupported(e)) => at.warn(
                    diag,
                    format!("chain {chain}: fault filter {e} is not supported"),
                ),
            }
        } else if policy_filter(&hf.name, &any.type_url) {
            // Translated or made to deny by `access`, which reports it.
        } else if !harmless(&access::effective_type(any)) && !harmless(&hf.name) {
            at.warn(
                diag,
                format!(
                    "chain {chain}: http filter {} ({}) is not supported; ignored",
                    hf.name,
                    access::type_label(any)
                ),
            );
        }
    }
    let (routes, rds) = match &hcm.route_specifier {
        Some(RouteSpecifier::RouteConfig(rc)) => (Some(Box::new(rc.clone())), false),
        Some(RouteSpecifier::Rds(rds)) => match routes.get(rds.route_config_name.as_str()) {
            Some(rc) => (Some(Box::new((*rc).clone())), true),
            None => {
                at.warn(
                    diag,
                    format!(
                        "chain {chain}: route configuration {} not received yet; default route used",
                        rds.route_config_name
                    ),
                );
                (None, true)
            }
        },
        Some(RouteSpecifier::ScopedRoutes(_)) => {
            at.warn(
                diag,
                format!("chain {chain}: scoped routes are not supported; default route used"),
            );
            (None, false)
        }
        None => {
            at.reject(
                diag,
                format!("chain {chain}: http_connection_manager without routes"),
            );
            return None;
        }
    };
    Some(ChainKind::Http {
        routes,
        rds,
        http2: hcm.http2_protocol_options.is_some(),
        default_fault,
        path,
        telemetry: Some(super::super::telemetry::from_hcm(chain, hcm, at, diag)),
    })
}
