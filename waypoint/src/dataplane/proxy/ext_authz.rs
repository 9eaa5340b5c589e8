//! CUSTOM authorization: meshConfig `extensionProviders` (`envoyExtAuthzHttp`,
//! `envoyExtAuthzGrpc`) and the check a request matching a CUSTOM rule goes through, as
//! istiod configures Envoy's `ext_authz` (`pilot/pkg/security/authz/builder/extauthz.go`):
//! HTTP — the original method, `pathPrefix` + path, the allowed headers; 2xx allows (with
//! `headersToUpstreamOnAllow`), anything else is the answer the client gets (with
//! `headersToDownstreamOnDeny`). gRPC — `envoy.service.auth.v3.Authorization/Check`; OK allows
//! with the ok response's headers, otherwise the denied response. A failed check (connection,
//! timeout) follows `failOpen` (default closed: `statusOnError`, 403 unless set).
//! `includeRequestBodyInCheck` sends the request body too (see [`body`]): HTTP — as the check
//! request's body; gRPC — `attributes.request.http.body` (or `raw_body` with `packAsBytes`); both
//! with `x-envoy-auth-partial-body`.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3 as auth;
use http_body_util::{BodyExt, Full, Limited};
use pingora_http::RequestHeader;

pub mod body;
pub mod dial;
mod providers;

pub use body::{BodyRead, CheckBody, PARTIAL_BODY_HEADER};
pub use providers::{load_providers, MeshConfigError, ProviderError};
pub use routing::authz::ext::{BodyBuffer, ExtAuthzKind as Kind, ExtAuthzProvider as Provider};

/// Bodies of denials larger than this are cut.
const MAX_DENY_BODY: usize = 64 * 1024;

fn partial_value(b: &CheckBody) -> &'static str {
    if b.partial {
        "true"
    } else {
        "false"
    }
}

/// Whether `name` is in `patterns` (exact, `prefix*`, `*suffix`).
fn listed(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| {
        if let Some(prefix) = p.strip_suffix('*') {
            name.starts_with(prefix)
        } else if let Some(suffix) = p.strip_prefix('*') {
            name.ends_with(suffix)
        } else {
            p == name
        }
    })
}

/// What the authorizer decided.
#[derive(Debug)]
pub enum Check {
    /// Go on, with these headers set on the upstream request and these added to the response.
    Allow {
        upstream: Vec<(String, String)>,
        downstream: Vec<(String, String)>,
    },
    /// Answer the client with this.
    Deny {
        status: u16,
        headers: Vec<(String, String)>,
        body: Bytes,
    },
    /// The check itself failed (connection, timeout, malformed answer).
    Error(CheckError),
}

/// Why a check got no answer.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("not an HTTP provider")]
    NotHttp,
    #[error(transparent)]
    Dial(#[from] dial::DialError),
    #[error(transparent)]
    Handshake(hyper::Error),
    #[error(transparent)]
    Request(#[from] http::Error),
    #[error("check request: {0}")]
    Send(#[source] hyper::Error),
    #[error(transparent)]
    Endpoint(tonic::transport::Error),
    #[error("connect {address}: {source}")]
    Connect {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("Check: {0}")]
    Check(#[source] Box<tonic::Status>),
}

/// Ask `provider` about `req` (with its body when the provider takes it).
pub async fn check(
    provider: &Provider,
    req: &RequestHeader,
    body: Option<&CheckBody>,
    source: &str,
    route: &dial::Route,
) -> Check {
    let call = async {
        match &provider.kind {
            Kind::Http { .. } => check_http(provider, req, body, route).await,
            Kind::Grpc => check_grpc(provider, req, body, source, route).await,
        }
    };
    match tokio::time::timeout(provider.timeout, call).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => Check::Error(e),
        Err(_) => Check::Error(CheckError::Timeout(provider.timeout)),
    }
}

async fn check_http(
    provider: &Provider,
    req: &RequestHeader,
    body: Option<&CheckBody>,
    route: &dial::Route,
) -> Result<Check, CheckError> {
    let Kind::Http {
        path_prefix,
        request_headers,
        additional_headers,
        upstream_on_allow,
        downstream_on_deny,
        downstream_on_allow,
    } = &provider.kind
    else {
        return Err(CheckError::NotHttp);
    };
    let conn = route.connect(&provider.address).await?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(conn))
            .await
            .map_err(CheckError::Handshake)?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = format!(
        "{path_prefix}{}",
        req.uri.path_and_query().map_or("/", |p| p.as_str())
    );
    let mut check = http::Request::builder()
        .method(req.method.clone())
        .uri(path);
    // Envoy always sends these, then the allowed ones.
    for (name, value) in req.headers.iter() {
        let n = name.as_str();
        if matches!(n, "host" | "authorization" | "content-length") || listed(request_headers, n) {
            let n = if n == "content-length" {
                "x-original-content-length"
            } else {
                n
            };
            check = check.header(n, value.clone());
        }
    }
    if !req.headers.contains_key("host") {
        if let Some(a) = req.uri.authority() {
            check = check.header("host", a.as_str());
        }
    }
    for (k, v) in additional_headers {
        check = check.header(k.as_str(), v.as_str());
    }
    // The buffered body is the check's (hyper sets its content-length).
    let payload = match body {
        Some(b) => {
            check = check.header(PARTIAL_BODY_HEADER, partial_value(b));
            b.bytes.clone()
        }
        None => Bytes::new(),
    };
    let response = sender
        .send_request(check.body(Full::new(payload))?)
        .await
        .map_err(CheckError::Send)?;
    let (parts, body) = response.into_parts();
    let pick = |names: &[String]| -> Vec<(String, String)> {
        parts
            .headers
            .iter()
            .filter(|(k, _)| listed(names, k.as_str()))
            .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
            .collect()
    };
    if parts.status.is_success() {
        return Ok(Check::Allow {
            upstream: pick(upstream_on_allow),
            downstream: pick(downstream_on_allow),
        });
    }
    let body = Limited::new(body, MAX_DENY_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    Ok(Check::Deny {
        status: parts.status.as_u16(),
        headers: pick(downstream_on_deny),
        body,
    })
}

async fn check_grpc(
    provider: &Provider,
    req: &RequestHeader,
    body: Option<&CheckBody>,
    source: &str,
    route: &dial::Route,
) -> Result<Check, CheckError> {
    let (route, address) = (route.clone(), provider.address.clone());
    let connector = tower::service_fn(move |_: http::Uri| {
        let (route, address) = (route.clone(), address.clone());
        async move {
            route
                .connect(&address)
                .await
                .map(hyper_util::rt::TokioIo::new)
                .map_err(std::io::Error::other)
        }
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", provider.address))
        .map_err(CheckError::Endpoint)?
        .connect_with_connector(connector)
        .await
        .map_err(|source| CheckError::Connect {
            address: provider.address.clone(),
            source,
        })?;
    let mut client = auth::authorization_client::AuthorizationClient::new(channel);
    let mut headers: HashMap<String, String> = req
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let (mut text, mut raw) = (String::new(), Vec::new());
    if let Some(b) = body {
        headers.insert(PARTIAL_BODY_HEADER.into(), partial_value(b).into());
        if provider.body.is_some_and(|s| s.pack_as_bytes) {
            raw = b.bytes.to_vec();
        } else {
            // A protobuf string is UTF-8: other bytes need packAsBytes.
            text = String::from_utf8_lossy(&b.bytes).into_owned();
        }
    }
    let http_request = auth::attribute_context::HttpRequest {
        method: req.method.to_string(),
        path: req
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
        host: req
            .headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .or(req.uri.authority().map(|a| a.as_str()))
            .unwrap_or("")
            .to_string(),
        headers,
        protocol: "HTTP/1.1".into(),
        body: text,
        raw_body: raw,
        ..Default::default()
    };
    let request = auth::CheckRequest {
        attributes: Some(auth::AttributeContext {
            source: Some(auth::attribute_context::Peer {
                principal: source.to_string(),
                ..Default::default()
            }),
            request: Some(auth::attribute_context::Request {
                http: Some(http_request),
                ..Default::default()
            }),
            ..Default::default()
        }),
    };
    let response = client
        .check(request)
        .await
        .map_err(|e| CheckError::Check(Box::new(e)))?
        .into_inner();
    let header_pairs = |hs: &[envoy_types::pb::envoy::config::core::v3::HeaderValueOption]| {
        hs.iter()
            .filter_map(|h| h.header.as_ref())
            .map(|h| {
                let v = if h.raw_value.is_empty() {
                    h.value.clone()
                } else {
                    String::from_utf8_lossy(&h.raw_value).into_owned()
                };
                (h.key.to_ascii_lowercase(), v)
            })
            .collect::<Vec<_>>()
    };
    use auth::check_response::HttpResponse;
    let ok = response.status.as_ref().is_some_and(|s| s.code == 0);
    if ok {
        let (upstream, downstream) = match &response.http_response {
            Some(HttpResponse::OkResponse(r)) => (
                header_pairs(&r.headers),
                header_pairs(&r.response_headers_to_add),
            ),
            _ => (Vec::new(), Vec::new()),
        };
        return Ok(Check::Allow {
            upstream,
            downstream,
        });
    }
    Ok(match &response.http_response {
        Some(HttpResponse::DeniedResponse(d)) => Check::Deny {
            status: d
                .status
                .as_ref()
                .map(|s| s.code as u16)
                .filter(|c| (100..600).contains(c))
                .unwrap_or(403),
            headers: header_pairs(&d.headers),
            body: Bytes::from(d.body.clone()),
        },
        _ => Check::Deny {
            status: 403,
            headers: Vec::new(),
            body: Bytes::new(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::providers::parse_seconds;
    use super::*;

    #[test]
    fn header_lists_and_durations() {
        let p = vec!["x-ext-authz".to_string(), "x-b3-*".into(), "*-id".into()];
        assert!(
            listed(&p, "x-ext-authz") && listed(&p, "x-b3-traceid") && listed(&p, "x-request-id")
        );
        assert!(!listed(&p, "cookie"));
        assert_eq!(parse_seconds("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_seconds("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_seconds("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_seconds("0s"), None);
        assert_eq!(parse_seconds("soon"), None);
    }

    fn load(yaml: &str) -> Result<HashMap<String, Provider>, MeshConfigError> {
        let path = std::env::temp_dir().join(format!(
            "ext-authz-body-{}-{:?}.yaml",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&path, yaml).unwrap();
        let out = load_providers(&path);
        std::fs::remove_file(&path).unwrap();
        out
    }

    #[test]
    fn request_body_in_check() {
        let p = load(
            "extensionProviders:\n\
             - name: h\n  envoyExtAuthzHttp:\n    service: a\n    port: 80\n    includeRequestBodyInCheck: {maxRequestBytes: 1024, allowPartialMessage: true}\n\
             - name: g\n  envoyExtAuthzGrpc:\n    service: b\n    port: 90\n    includeRequestBodyInCheck: {maxRequestBytes: 65536, packAsBytes: true}\n\
             - name: none\n  envoyExtAuthzGrpc: {service: c, port: 91}\n",
        )
        .unwrap();
        assert_eq!(
            p["h"].body,
            Some(BodyBuffer::new(1024, true, false).unwrap())
        );
        assert_eq!(
            p["g"].body,
            Some(BodyBuffer::new(65536, false, true).unwrap())
        );
        assert_eq!(p["none"].body, None);
        // Errors name the provider and say why.
        for (body, why) in [
            (
                "{maxRequestBytes: 65537}",
                "more than this proxy can buffer",
            ),
            ("{allowPartialMessage: true}", "at least 1"),
            ("{maxRequestBytes: -1}", "maxRequestBytes"),
            ("{maxRequestBytes: 10, maxBytes: 10}", "maxBytes"),
        ] {
            for kind in ["envoyExtAuthzHttp", "envoyExtAuthzGrpc"] {
                let e = load(&format!(
                    "extensionProviders:\n- name: big\n  {kind}:\n    service: a\n    port: 80\n    includeRequestBodyInCheck: {body}\n"
                ))
                .unwrap_err()
                .to_string();
                assert!(e.contains(why), "{kind} {body}: {e}");
                if why.contains(' ') {
                    assert!(e.contains("extensionProviders big"), "{e}");
                }
            }
        }
    }
}
