//! RequestAuthentication on the HTTP path, as Envoy's `jwt_authn` runs it for Istio: the token
//! is found where a provider looks for it, verified against the provider's JWKS (inline, or
//! fetched from `jwksUri` and cached), and then either the request goes on with its claims as
//! `request.auth.*` (the token removed unless `forwardOriginalToken`, the payload and claims
//! copied to headers when asked), or it gets 401 with Envoy's message. A request without a
//! token goes on: authorization decides (`requestPrincipals: ["*"]` requires one).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use parking_lot::Mutex;
use pingora_http::RequestHeader;
use routing::authz::jwt::{Jwks, JwtProvider, TokenLocation};

/// How long fetched keys are used before they are fetched again (istiod's `cacheDuration`).
pub const JWKS_CACHE_DURATION: Duration = Duration::from_secs(300);
/// Envoy's clock skew allowance for `exp` and `nbf`.
const CLOCK_SKEW_SECONDS: u64 = 60;
/// A JWKS document larger than this is refused.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// The outcome of authentication for one request.
#[derive(Debug)]
pub enum Authn {
    /// No token where any provider looks.
    NoToken,
    Verified {
        claims: serde_json::Value,
        provider: Arc<JwtProvider>,
        location: TokenLocation,
        /// The payload as it came, base64url (for `outputPayloadToHeader`).
        payload_b64: String,
    },
    /// 401 with Envoy's message (`Jwt is expired`, `Jwt verification fails`, …).
    Rejected(&'static str),
}

/// Why no keys are at hand for a provider's JWKS.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("inline jwks is not a JWKS document: {0}")]
    Inline(#[source] serde_json::Error),
    /// A fetch failed and no earlier keys stand in.
    #[error("fetching the keys of {key}: {source}")]
    Fetch { key: String, source: Box<JwksError> },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{uri}: not a JWKS document: {source}")]
    NotJwks {
        uri: String,
        source: serde_json::Error,
    },
    #[error("{uri}: not a JSON document: {source}")]
    NotJson {
        uri: String,
        source: serde_json::Error,
    },
    #[error("{uri}: no http(s) jwks_uri in the OpenID configuration (found {found:?})")]
    NoJwksUri {
        uri: String,
        found: Option<serde_json::Value>,
    },
    #[error("bad URL: {0}")]
    BadUrl(#[source] http::uri::InvalidUri),
    #[error("URL without host")]
    NoHost,
    #[error("connect {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: std::io::Error,
    },
    #[error(transparent)]
    Request(#[from] http::Error),
    #[error("server name {host}: {source}")]
    ServerName {
        host: String,
        source: rustls_pki_types::InvalidDnsNameError,
    },
    #[error("no system CA certificates to verify https jwksUri")]
    NoSystemRoots,
    #[error("TLS to {host}: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Http(#[from] hyper::Error),
    #[error("HTTP {0}")]
    Status(http::StatusCode),
    #[error("reading the body: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// One fetched JWKS and when it was fetched; the async lock makes concurrent fetches one.
type RemoteSlot = Arc<tokio::sync::Mutex<Option<(Instant, Arc<JwkSet>)>>>;

/// Keys by JWKS source: inline documents parsed once, fetched ones refreshed after
/// [`JWKS_CACHE_DURATION`]; concurrent fetches of one URI are made once.
#[derive(Default)]
pub struct JwksCache {
    inline: Mutex<HashMap<String, Arc<JwkSet>>>,
    remote: Mutex<HashMap<String, RemoteSlot>>,
}

impl JwksCache {
    pub async fn keys(&self, jwks: &Jwks) -> Result<Arc<JwkSet>, JwksError> {
        match jwks {
            Jwks::Inline(doc) => {
                if let Some(k) = self.inline.lock().get(doc) {
                    return Ok(k.clone());
                }
                let set: JwkSet = serde_json::from_str(doc).map_err(JwksError::Inline)?;
                let set = Arc::new(set);
                self.inline.lock().insert(doc.clone(), set.clone());
                Ok(set)
            }
            Jwks::Uri { uri, timeout } => self.remote(uri, *timeout, fetch_jwks(uri)).await,
            Jwks::Discovery { issuer, timeout } => {
                let keys = async {
                    let uri = discover_jwks_uri(issuer).await?;
                    fetch_jwks(&uri).await
                };
                self.remote(issuer, *timeout, keys).await
            }
        }
    }

    /// Keys fetched by `fetch` under the cache slot `key`: cached for
    /// [`JWKS_CACHE_DURATION`], one fetch at a time, the last keys kept when a fetch fails.
    async fn remote(
        &self,
        key: &str,
        timeout: Duration,
        fetch: impl std::future::Future<Output = Result<JwkSet, JwksError>>,
    ) -> Result<Arc<JwkSet>, JwksError> {
        let slot = self
            .remote
            .lock()
            .entry(key.to_string())
            .or_default()
            .clone();
        let mut cached = slot.lock().await;
        if let Some((at, keys)) = cached.as_ref() {
            if at.elapsed() < JWKS_CACHE_DURATION {
                return Ok(keys.clone());
            }
        }
        match tokio::time::timeout(timeout, fetch).await {
            Ok(Ok(keys)) => {
                let keys = Arc::new(keys);
                *cached = Some((Instant::now(), keys.clone()));
                Ok(keys)
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e,
                    _ => JwksError::Timeout(timeout),
                };
                tracing::warn!(source = %key, error = %why, "JWKS fetch failed");
                // The last keys stay usable until a fetch succeeds.
                cached
                    .as_ref()
                    .map(|(_, k)| k.clone())
                    .ok_or_else(|| JwksError::Fetch {
                        key: key.to_string(),
                        source: Box::new(why),
                    })
            }
        }
    }
}

/// GET `uri` and parse the JWKS.
async fn fetch_jwks(uri: &str) -> Result<JwkSet, JwksError> {
    let body = fetch(uri).await?;
    serde_json::from_slice(&body).map_err(|source| JwksError::NotJwks {
        uri: uri.to_string(),
        source,
    })
}

/// The `jwks_uri` of `issuer`'s OpenID configuration (a trailing `/` of the issuer dropped,
/// as istiod does).
async fn discover_jwks_uri(issuer: &str) -> Result<String, JwksError> {
    let config = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let body = fetch(&config).await?;
    let doc: serde_json::Value =
        serde_json::from_slice(&body).map_err(|source| JwksError::NotJson {
            uri: config.clone(),
            source,
        })?;
    match doc.get("jwks_uri") {
        Some(serde_json::Value::String(uri))
            if uri.starts_with("http://") || uri.starts_with("https://") =>
        {
            Ok(uri.clone())
        }
        other => Err(JwksError::NoJwksUri {
            found: other.cloned(),
            uri: config,
        }),
    }
}

/// GET `uri` (http or https, verified against the system's roots): the body of a 2xx answer,
/// at most [`MAX_JWKS_BYTES`].
async fn fetch(uri: &str) -> Result<bytes::Bytes, JwksError> {
    use http_body_util::{BodyExt, Empty, Limited};
    let parsed: http::Uri = uri.parse().map_err(JwksError::BadUrl)?;
    let https = parsed.scheme_str() == Some("https");
    let host = parsed.host().ok_or(JwksError::NoHost)?.to_string();
    let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|source| JwksError::Connect {
            host: host.clone(),
            port,
            source,
        })?;
    let path = parsed
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let request = http::Request::get(path)
        .header(
            "host",
            parsed.authority().map_or(host.as_str(), |a| a.as_str()),
        )
        .header("accept", "application/json")
        .body(Empty::<bytes::Bytes>::new())?;
    let response = if https {
        let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(|source| {
            JwksError::ServerName {
                host: host.clone(),
                source,
            }
        })?;
        let tls = tokio_rustls::TlsConnector::from(https_config()?)
            .connect(name, tcp)
            .await
            .map_err(|source| JwksError::Tls { host, source })?;
        send(tls, request).await?
    } else {
        send(tcp, request).await?
    };
    if !response.status().is_success() {
        return Err(JwksError::Status(response.status()));
    }
    Ok(Limited::new(response.into_body(), MAX_JWKS_BYTES)
        .collect()
        .await
        .map_err(JwksError::Body)?
        .to_bytes())
}

async fn send<S>(
    io: S,
    request: http::Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, JwksError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender.send_request(request).await?)
}

/// A client config trusting the system's roots (the image ships CA certificates). Built once;
/// `None` when the system has no roots, its one failure.
fn https_config() -> Result<Arc<rustls::ClientConfig>, JwksError> {
    static CONFIG: std::sync::OnceLock<Option<Arc<rustls::ClientConfig>>> =
        std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            (!roots.is_empty()).then(|| {
                Arc::new(
                    rustls::ClientConfig::builder()
                        .with_root_certificates(roots)
                        .with_no_client_auth(),
                )
            })
        })
        .clone()
        .ok_or(JwksError::NoSystemRoots)
}

/// The token at `location`, if the request carries one there.
fn token_at<'r>(req: &'r RequestHeader, location: &TokenLocation) -> Option<&'r str> {
    match location {
        TokenLocation::Header { name, prefix } => {
            let v = req.headers.get(name.as_str())?.to_str().ok()?;
            let t = if prefix.is_empty() {
                v
            } else if v.len() >= prefix.len() && v[..prefix.len()].eq_ignore_ascii_case(prefix) {
                &v[prefix.len()..]
            } else {
                return None;
            };
            Some(t.trim()).filter(|t| !t.is_empty())
        }
        TokenLocation::Param(p) => req
            .uri
            .query()?
            .split('&')
            .find_map(|kv| kv.strip_prefix(p.as_str())?.strip_prefix('='))
            .filter(|t| !t.is_empty()),
        TokenLocation::Cookie(c) => req
            .headers
            .get_all("cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|kv| kv.trim().strip_prefix(c.as_str())?.strip_prefix('='))
            .filter(|t| !t.is_empty()),
    }
}

/// The unverified `iss` of a token (to choose the provider).
fn issuer_of(token: &str) -> Result<(String, String), &'static str> {
    const MALFORMED: &str =
        "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections";
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(MALFORMED);
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| "Jwt payload is an invalid Base64")?;
    let claims: serde_json::Value =
        serde_json::from_slice(&raw).map_err(|_| "Jwt payload is an invalid JSON")?;
    let iss = claims
        .get("iss")
        .and_then(|v| v.as_str())
        .ok_or("Jwt issuer is not configured")?;
    Ok((iss.to_string(), payload.to_string()))
}

/// Authenticate `req` against `providers`.
pub async fn authenticate(
    providers: &[Arc<JwtProvider>],
    req: &RequestHeader,
    cache: &JwksCache,
) -> Authn {
    // The first token any provider finds (Envoy extracts per location, then matches issuers).
    let found = providers.iter().find_map(|p| {
        p.locations
            .iter()
            .find_map(|l| token_at(req, l).map(|t| (t.to_string(), l.clone())))
    });
    let Some((token, location)) = found else {
        return Authn::NoToken;
    };
    let (issuer, payload_b64) = match issuer_of(&token) {
        Ok(found) => found,
        Err(why) => return Authn::Rejected(why),
    };
    let Some(provider) = providers
        .iter()
        .find(|p| p.issuer == issuer && p.locations.contains(&location))
    else {
        return Authn::Rejected("Jwt issuer is not configured");
    };
    let keys = match cache.keys(&provider.jwks).await {
        Ok(k) => k,
        Err(why) => {
            tracing::debug!(provider = %provider.source, %why, "no keys to verify a token");
            return Authn::Rejected("Jwks remote fetch is failed");
        }
    };
    let Ok(header) = jsonwebtoken::decode_header(&token) else {
        return Authn::Rejected("Jwt header is an invalid JSON");
    };
    let candidates: Vec<&jsonwebtoken::jwk::Jwk> = match &header.kid {
        Some(kid) => keys.find(kid).into_iter().collect(),
        None => keys.keys.iter().collect(),
    };
    if candidates.is_empty() {
        return Authn::Rejected("Jwks doesn't have key to match kid or alg from Jwt");
    }
    let mut validation = Validation::new(header.alg);
    validation.required_spec_claims.clear();
    validation.leeway = CLOCK_SKEW_SECONDS;
    validation.validate_nbf = true;
    validation.set_issuer(&[&provider.issuer]);
    if provider.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&provider.audiences);
    }
    let mut last = "Jwt verification fails";
    for jwk in candidates {
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        match jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation) {
            Ok(data) => {
                return Authn::Verified {
                    claims: data.claims,
                    provider: provider.clone(),
                    location,
                    payload_b64,
                }
            }
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind as K;
                last = match e.kind() {
                    K::ExpiredSignature => "Jwt is expired",
                    K::ImmatureSignature => "Jwt not yet valid",
                    K::InvalidAudience => "Audiences in Jwt are not allowed",
                    K::InvalidIssuer => "Jwt issuer is not configured",
                    _ => "Jwt verification fails",
                };
                if matches!(
                    e.kind(),
                    K::ExpiredSignature | K::ImmatureSignature | K::InvalidAudience
                ) {
                    // The signature checked out: no other key would change the answer.
                    break;
                }
            }
        }
    }
    Authn::Rejected(last)
}

/// The header changes a verified token makes: the token removed (unless forwarded), the
/// payload and claims copied to headers.
pub fn apply_headers(
    req: &mut RequestHeader,
    claims: &serde_json::Value,
    provider: &JwtProvider,
    location: &TokenLocation,
    payload_b64: &str,
) {
    if !provider.forward_original_token {
        if let TokenLocation::Header { name, .. } = location {
            req.remove_header(name.as_str());
        }
    }
    if let Some(h) = &provider.output_payload_to_header {
        let _ = req.insert_header(h.to_ascii_lowercase(), payload_b64);
    }
    for (header, claim) in &provider.output_claim_to_headers {
        let value = match claims.get(claim) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => v.to_string(),
            _ => continue,
        };
        let _ = req.insert_header(header.clone(), value);
    }
}

/// Envoy's `%RESPONSE_CODE_DETAILS%` for a rejected token.
pub fn details(message: &str) -> String {
    format!("jwt_authn_access_denied{{{}}}", message.replace(' ', "_"))
}
