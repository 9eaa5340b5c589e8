//! meshConfig `extensionProviders` of the external-authorization kinds, read into
//! [`Provider`]s, and why a file of them is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use routing::authz::ext::BodyBufferError;
use serde::Deserialize;

use super::{BodyBuffer, Kind, Provider};

/// Istio's default check timeout (`timeoutOrDefault`).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MeshConfigY {
    #[serde(default)]
    extension_providers: Vec<ProviderY>,
    /// Other meshConfig fields are not this file's business here.
    #[serde(flatten)]
    _rest: HashMap<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProviderY {
    name: String,
    envoy_ext_authz_http: Option<HttpY>,
    envoy_ext_authz_grpc: Option<GrpcY>,
    #[serde(flatten)]
    other: HashMap<String, serde_json::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HttpY {
    service: String,
    port: u16,
    timeout: Option<String>,
    path_prefix: Option<String>,
    #[serde(default)]
    fail_open: bool,
    status_on_error: Option<String>,
    #[serde(default)]
    include_request_headers_in_check: Vec<String>,
    #[serde(default)]
    include_headers_in_check: Vec<String>,
    #[serde(default)]
    include_additional_headers_in_check: HashMap<String, String>,
    #[serde(default)]
    headers_to_upstream_on_allow: Vec<String>,
    #[serde(default)]
    headers_to_downstream_on_deny: Vec<String>,
    #[serde(default)]
    headers_to_downstream_on_allow: Vec<String>,
    include_request_body_in_check: Option<BodyY>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GrpcY {
    service: String,
    port: u16,
    timeout: Option<String>,
    #[serde(default)]
    fail_open: bool,
    status_on_error: Option<String>,
    include_request_body_in_check: Option<BodyY>,
}

/// `includeRequestBodyInCheck` (meshConfig `EnvoyExternalAuthorizationRequestBody`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct BodyY {
    #[serde(default)]
    max_request_bytes: u32,
    #[serde(default)]
    allow_partial_message: bool,
    #[serde(default)]
    pack_as_bytes: bool,
}

/// Why the mesh config's providers cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum MeshConfigError {
    #[error(transparent)]
    Read(#[from] crate::config::MeshConfigReadError),
    #[error("mesh config {}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: Box<serde_saphyr::Error>,
    },
    #[error("mesh config {} extensionProviders {name}: {source}", path.display())]
    Provider {
        path: PathBuf,
        name: String,
        source: ProviderError,
    },
}

/// What is wrong with one ext_authz provider.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("timeout {0:?} is not a duration")]
    Timeout(String),
    #[error("statusOnError {0:?} is not an HTTP status")]
    StatusOnError(String),
    #[error("includeRequestBodyInCheck: {0}")]
    Body(#[source] BodyBufferError),
    #[error("both envoyExtAuthzHttp and envoyExtAuthzGrpc")]
    BothKinds,
}

/// The providers of a meshConfig YAML file (`extensionProviders`), by name. Providers of other
/// kinds (tracing, logging) are ignored; malformed ext_authz ones are errors naming them.
pub fn load_providers(path: &Path) -> Result<HashMap<String, Provider>, MeshConfigError> {
    let text = crate::config::read_mesh_config(path)?;
    let mesh: MeshConfigY = serde_saphyr::from_str(&text).map_err(|e| MeshConfigError::Parse {
        path: path.to_path_buf(),
        source: Box::new(e),
    })?;
    let mut out = HashMap::new();
    for p in mesh.extension_providers {
        let at = |source: ProviderError| MeshConfigError::Provider {
            path: path.to_path_buf(),
            name: p.name.clone(),
            source,
        };
        let timeout = |t: &Option<String>| match t {
            None => Ok(DEFAULT_TIMEOUT),
            Some(t) => parse_seconds(t).ok_or_else(|| at(ProviderError::Timeout(t.clone()))),
        };
        let status = |s: &Option<String>| match s {
            None => Ok(403),
            Some(s) => s
                .parse::<u16>()
                .ok()
                .filter(|c| (100..600).contains(c))
                .ok_or_else(|| at(ProviderError::StatusOnError(s.clone()))),
        };
        let body = |b: &Option<BodyY>| {
            b.as_ref()
                .map(|b| {
                    BodyBuffer::new(
                        b.max_request_bytes,
                        b.allow_partial_message,
                        b.pack_as_bytes,
                    )
                })
                .transpose()
                .map_err(|e| at(ProviderError::Body(e)))
        };
        let provider = match (&p.envoy_ext_authz_http, &p.envoy_ext_authz_grpc) {
            (Some(h), None) => Provider {
                name: p.name.clone(),
                address: format!("{}:{}", h.service, h.port),
                timeout: timeout(&h.timeout)?,
                fail_open: h.fail_open,
                status_on_error: status(&h.status_on_error)?,
                body: body(&h.include_request_body_in_check)?,
                kind: Kind::Http {
                    path_prefix: h.path_prefix.clone().unwrap_or_default(),
                    request_headers: h
                        .include_request_headers_in_check
                        .iter()
                        .chain(&h.include_headers_in_check)
                        .map(|s| s.to_ascii_lowercase())
                        .collect(),
                    additional_headers: h
                        .include_additional_headers_in_check
                        .iter()
                        .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                        .collect(),
                    upstream_on_allow: lower(&h.headers_to_upstream_on_allow),
                    downstream_on_deny: lower(&h.headers_to_downstream_on_deny),
                    downstream_on_allow: lower(&h.headers_to_downstream_on_allow),
                },
            },
            (None, Some(g)) => Provider {
                name: p.name.clone(),
                address: format!("{}:{}", g.service, g.port),
                timeout: timeout(&g.timeout)?,
                fail_open: g.fail_open,
                status_on_error: status(&g.status_on_error)?,
                body: body(&g.include_request_body_in_check)?,
                kind: Kind::Grpc,
            },
            (Some(_), Some(_)) => return Err(at(ProviderError::BothKinds)),
            (None, None) => {
                tracing::debug!(provider = %p.name, kinds = ?p.other.keys().collect::<Vec<_>>(), "extension provider is not an authorizer");
                continue;
            }
        };
        out.insert(p.name.clone(), provider);
    }
    Ok(out)
}

fn lower(v: &[String]) -> Vec<String> {
    v.iter().map(|s| s.to_ascii_lowercase()).collect()
}

/// A positive meshConfig duration (Go's form: `2s`, `500ms`, `1m30s`).
pub(super) fn parse_seconds(s: &str) -> Option<Duration> {
    routing::yaml::parse_duration(s)
        .ok()
        .filter(|d| !d.is_zero())
}
