//! `explain`'s authorization: the request as policies read it, and their decision.

use super::*;

/// The request of `explain` as authorization reads it.
struct ExplainAuthz<'a> {
    principal: Option<String>,
    source_ip: Option<IpAddr>,
    destination: SocketAddr,
    method: String,
    authority: String,
    path: &'a str,
    headers: &'a [(String, String)],
    claims: Option<&'a serde_json::Value>,
}

impl routing::authz::AuthzView for ExplainAuthz<'_> {
    fn is_http(&self) -> bool {
        true
    }
    fn principal(&self) -> Option<&str> {
        self.principal.as_deref()
    }
    fn source_ip(&self) -> Option<IpAddr> {
        self.source_ip
    }
    fn destination_ip(&self) -> Option<IpAddr> {
        Some(self.destination.ip())
    }
    fn destination_port(&self) -> u16 {
        self.destination.port()
    }
    fn method(&self) -> &str {
        &self.method
    }
    fn host(&self) -> Option<&str> {
        Some(&self.authority)
    }
    fn path(&self) -> &str {
        self.path
    }
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        routing::authz::joined_header(
            self.headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_bytes()),
        )
    }
    fn jwt(&self) -> routing::authz::Jwt<'_> {
        self.claims
            .map_or(routing::authz::Jwt::None, routing::authz::Jwt::Claims)
    }
}

/// The request's token verified as the data path does (keys fetched when they are remote), on
/// a thread of its own so that it works from any context.
fn authenticate(
    providers: &[std::sync::Arc<routing::authz::jwt::JwtProvider>],
    method: &str,
    path: &str,
    authority: &str,
    headers: &[(String, String)],
) -> Result<crate::dataplane::proxy::jwt::Authn, AuthnError> {
    let mut req = pingora_http::RequestHeader::build(method, path.as_bytes(), None)?;
    req.insert_header("host", authority)?;
    for (k, v) in headers {
        req.append_header(k.clone(), v.as_str())?;
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let cache = crate::dataplane::proxy::JwksCache::default();
            Ok(rt.block_on(crate::dataplane::proxy::jwt::authenticate(
                providers, &req, &cache,
            )))
        })
        .join()
        .map_err(|_| AuthnError::Panicked)?
    })
}

/// Why explain could not check the request's token (the report says "not checked: …").
#[derive(Debug, thiserror::Error)]
enum AuthnError {
    #[error("{0}")]
    Request(#[from] Box<pingora_error::Error>),
    #[error("{0}")]
    Runtime(#[from] std::io::Error),
    #[error("token verification panicked")]
    Panicked,
}

pub(super) fn explain_authz(
    snapshot: &Snapshot,
    args: &ExplainArgs,
    service: Option<&str>,
    destination: SocketAddr,
    authority: &str,
    path: &str,
) -> Option<AuthzExplanation> {
    let set = snapshot.authorization().for_service(service, true);
    if set.is_empty() {
        return None;
    }
    let method = args.method.to_ascii_uppercase();
    let mut claims = None;
    let mut authentication = None;
    if !set.jwt.is_empty() {
        use crate::dataplane::proxy::jwt::Authn;
        match authenticate(&set.jwt, &method, path, authority, &args.headers) {
            Ok(Authn::NoToken) => authentication = Some("no token".to_string()),
            Ok(Authn::Verified { claims: c, .. }) => {
                let principal = format!(
                    "{}/{}",
                    c["iss"].as_str().unwrap_or(""),
                    c["sub"].as_str().unwrap_or("")
                );
                authentication = Some(format!("verified {principal}"));
                claims = Some(c);
            }
            Ok(Authn::Rejected(message)) => {
                return Some(AuthzExplanation {
                    authentication: Some(format!("rejected: {message}")),
                    decision: None,
                    status: Some(401),
                    response_code_details: Some(crate::dataplane::proxy::jwt::details(message)),
                    policies: Vec::new(),
                })
            }
            Err(e) => authentication = Some(format!("not checked: {e}")),
        }
    }
    let view = ExplainAuthz {
        principal: args.source.as_ref().map(|s| s.to_string()),
        source_ip: args.source_ip,
        destination,
        method,
        authority: authority.to_string(),
        path,
        headers: &args.headers,
        claims: claims.as_ref(),
    };
    let decision = set.evaluate(&view);
    let details = decision.verdict.response_code_details();
    Some(AuthzExplanation {
        authentication,
        status: details.is_some().then_some(403),
        response_code_details: details,
        policies: set.trace(&view),
        decision: Some(decision),
    })
}
