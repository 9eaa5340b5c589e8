//! istiod's `envoy.filters.http.ext_authz` (`pilot/pkg/security/authz/builder/extauthz.go`,
//! `generateHTTPConfig` / `generateGRPCConfig`) → the external authorizer the waypoint calls
//! for CUSTOM rules: the service from the `outbound|PORT||HOST` cluster (or the URI), the
//! timeout, `failure_mode_allow` (the provider's `failOpen`), `status_on_error`, for HTTP the
//! path prefix and the header lists, and `with_request_body` (istiod's `withBodyRequest` of
//! `includeRequestBodyInCheck`) as the body buffer. What this proxy cannot do as Envoy would (a
//! body buffer over [`crate::authz::ext::MAX_BODY_BYTES`], header matchers other than
//! exact/prefix/suffix) returns the reason: the CUSTOM rules then deny.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::grpc_service::TargetSpecifier;
use envoy_types::pb::envoy::config::core::v3::http_uri::HttpUpstreamType;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::ext_authz::Services;
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::ExtAuthz;
use envoy_types::pb::envoy::r#type::matcher::v3::string_matcher::MatchPattern;
use envoy_types::pb::envoy::r#type::matcher::v3::ListStringMatcher;

use super::names::ClusterName;
use crate::authz::ext::{BodyBuffer, BodyBufferError, ExtAuthzKind, ExtAuthzProvider};

/// Envoy's default check timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(200);

/// An ext_authz filter this proxy cannot run as written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ExtAuthzError {
    #[error("no service address (cluster {cluster:?}, uri {uri:?})")]
    NoAddress {
        cluster: Option<String>,
        uri: Option<String>,
    },
    /// A header list entry other than exact, prefix or suffix (its protobuf form).
    #[error("header matcher {0}")]
    HeaderMatcher(String),
    #[error("with_request_body: {0}")]
    Body(BodyBufferError),
    #[error("http_service without server_uri")]
    NoServerUri,
    #[error("a gRPC service that is not an Envoy cluster")]
    NotEnvoyGrpc,
    #[error("no authorization service")]
    NoService,
}

/// `outbound|9000||ext-authz.foo.svc.cluster.local` → `ext-authz.foo.svc.cluster.local:9000`;
/// `http://host:port/...` → `host:port`.
fn address(cluster: Option<&str>, uri: Option<&str>) -> Result<String, ExtAuthzError> {
    if let Some(c) = cluster.filter(|c| !c.is_empty()) {
        let parts: Vec<&str> = c.split('|').collect();
        if let [_, port, _, host] = parts.as_slice() {
            if port.parse::<u16>().is_ok() && !host.is_empty() {
                return Ok(format!("{host}:{port}"));
            }
        }
        if let Some(cn) = ClusterName::parse(c) {
            return Ok(format!("{}:{}", cn.host(), cn.port));
        }
    }
    if let Some(uri) = uri {
        let rest = uri.split_once("://").map_or(uri, |(_, r)| r);
        let authority = rest.split(['/', '?']).next().unwrap_or(rest);
        if !authority.is_empty() {
            let with_port = if authority.contains(':') {
                authority.to_string()
            } else {
                format!("{authority}:80")
            };
            return Ok(with_port);
        }
    }
    Err(ExtAuthzError::NoAddress {
        cluster: cluster.map(str::to_string),
        uri: uri.map(str::to_string),
    })
}

fn duration(d: Option<&envoy_types::pb::google::protobuf::Duration>) -> Duration {
    d.and_then(|t| {
        let secs = u64::try_from(t.seconds).ok()?;
        let nanos = u32::try_from(t.nanos).ok()?;
        Some(Duration::new(secs, nanos))
    })
    .filter(|d| !d.is_zero())
    .unwrap_or(DEFAULT_TIMEOUT)
}

/// Header names in this module's list syntax (`name`, `prefix*`, `*suffix`, lowercased).
fn names(list: Option<&ListStringMatcher>) -> Result<Vec<String>, ExtAuthzError> {
    let mut out = Vec::new();
    for m in list.map(|l| l.patterns.as_slice()).unwrap_or_default() {
        let name = match &m.match_pattern {
            Some(MatchPattern::Exact(e)) => e.to_ascii_lowercase(),
            Some(MatchPattern::Prefix(p)) => format!("{}*", p.to_ascii_lowercase()),
            Some(MatchPattern::Suffix(s)) => format!("*{}", s.to_ascii_lowercase()),
            other => return Err(ExtAuthzError::HeaderMatcher(format!("{other:?}"))),
        };
        out.push(name);
    }
    Ok(out)
}

pub(crate) fn provider(name: &str, x: &ExtAuthz) -> Result<ExtAuthzProvider, ExtAuthzError> {
    let body = x
        .with_request_body
        .map(|b| {
            BodyBuffer::new(
                b.max_request_bytes,
                b.allow_partial_message,
                b.pack_as_bytes,
            )
        })
        .transpose()
        .map_err(ExtAuthzError::Body)?;
    let status_on_error = x
        .status_on_error
        .as_ref()
        .map(|s| s.code)
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (100..600).contains(c))
        .unwrap_or(403);
    let (address, timeout, kind) = match &x.services {
        Some(Services::HttpService(h)) => {
            let uri = h.server_uri.as_ref().ok_or(ExtAuthzError::NoServerUri)?;
            let cluster = match &uri.http_upstream_type {
                Some(HttpUpstreamType::Cluster(c)) => Some(c.as_str()),
                _ => None,
            };
            let request = h.authorization_request.as_ref();
            let response = h.authorization_response.as_ref();
            let additional_headers = request
                .map(|r| {
                    r.headers_to_add
                        .iter()
                        .map(|hv| (hv.key.to_ascii_lowercase(), hv.value.clone()))
                        .collect()
                })
                .unwrap_or_default();
            (
                address(cluster, Some(&uri.uri))?,
                duration(uri.timeout.as_ref()),
                ExtAuthzKind::Http {
                    path_prefix: h.path_prefix.clone(),
                    // istiod sets the filter's `allowed_headers` (older releases the
                    // authorization request's, deprecated since).
                    request_headers: names(x.allowed_headers.as_ref().or({
                        #[allow(deprecated)]
                        request.and_then(|r| r.allowed_headers.as_ref())
                    }))?,
                    additional_headers,
                    upstream_on_allow: names(
                        response.and_then(|r| r.allowed_upstream_headers.as_ref()),
                    )?,
                    downstream_on_deny: names(
                        response.and_then(|r| r.allowed_client_headers.as_ref()),
                    )?,
                    downstream_on_allow: names(
                        response.and_then(|r| r.allowed_client_headers_on_success.as_ref()),
                    )?,
                },
            )
        }
        Some(Services::GrpcService(g)) => {
            let cluster = match &g.target_specifier {
                Some(TargetSpecifier::EnvoyGrpc(e)) => e.cluster_name.as_str(),
                _ => return Err(ExtAuthzError::NotEnvoyGrpc),
            };
            (
                address(Some(cluster), None)?,
                duration(g.timeout.as_ref()),
                ExtAuthzKind::Grpc,
            )
        }
        None => return Err(ExtAuthzError::NoService),
    };
    Ok(ExtAuthzProvider {
        name: name.to_string(),
        address,
        timeout,
        fail_open: x.failure_mode_allow,
        status_on_error,
        body,
        kind,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            address(Some("outbound|9000||ext-authz.foo.svc.cluster.local"), None).unwrap(),
            "ext-authz.foo.svc.cluster.local:9000"
        );
        assert_eq!(
            address(None, Some("http://authz.example:8080/check")).unwrap(),
            "authz.example:8080"
        );
        assert_eq!(
            address(None, Some("http://authz.example")).unwrap(),
            "authz.example:80"
        );
        assert!(address(Some(""), None).is_err());
    }
}
