//! RequestAuthentication (security.istio.io): the JWT providers a destination accepts, as
//! istiod configures Envoy's `jwt_authn` for them (`pilot/pkg/security/authn/policy_applier.go`):
//! a request without a token passes (authorization decides), a token that fails verification
//! gets 401, a verified token's claims become `request.auth.*`. No I/O here: the waypoint fetches
//! `jwksUri` and verifies signatures.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::istio::{SpecError, TargetRef};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    pub selector: Option<serde_json::Value>,
    pub target_ref: Option<TargetRef>,
    pub target_refs: Option<Vec<TargetRef>>,
    pub jwt_rules: Option<Vec<JwtRuleY>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtRuleY {
    pub issuer: Option<String>,
    pub audiences: Option<Vec<String>>,
    pub jwks_uri: Option<String>,
    pub jwks: Option<String>,
    pub from_headers: Option<Vec<HeaderY>>,
    pub from_params: Option<Vec<String>>,
    pub from_cookies: Option<Vec<String>>,
    pub output_payload_to_header: Option<String>,
    pub forward_original_token: Option<bool>,
    pub output_claim_to_headers: Option<Vec<ClaimHeaderY>>,
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderY {
    pub name: String,
    pub prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimHeaderY {
    pub header: String,
    pub claim: String,
}

/// Where the signing keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Jwks {
    /// A JWKS document given inline.
    Inline(String),
    /// Fetched over HTTP(S), cached and refreshed by the waypoint.
    Uri { uri: String, timeout: Duration },
    /// Neither given: the `jwks_uri` of the issuer's OpenID configuration
    /// (`<issuer>/.well-known/openid-configuration`), as istiod's JWKS resolver finds it
    /// (`pilot/pkg/model/jwks_resolver.go`, `resolveJwksURIUsingOpenID`), then fetched as `Uri`.
    Discovery { issuer: String, timeout: Duration },
}

/// Where a token is read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenLocation {
    /// A header (lowercased name), with a prefix to strip (`Bearer `).
    Header {
        name: String,
        prefix: String,
    },
    Param(String),
    Cookie(String),
}

/// One accepted issuer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JwtProvider {
    /// `NS/NAME` of the RequestAuthentication and the rule index, for messages.
    pub source: String,
    pub issuer: String,
    /// Empty: any audience.
    pub audiences: Vec<String>,
    pub jwks: Jwks,
    pub locations: Vec<TokenLocation>,
    pub output_payload_to_header: Option<String>,
    pub forward_original_token: bool,
    /// (header, claim).
    pub output_claim_to_headers: Vec<(String, String)>,
}

/// Envoy's `remote_jwks` fetch timeout as istiod sets it.
pub const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// The default locations (Envoy's, when a rule names none): `Authorization: Bearer …` and the
/// `access_token` query parameter.
pub fn default_locations() -> Vec<TokenLocation> {
    vec![
        TokenLocation::Header {
            name: "authorization".into(),
            prefix: "Bearer ".into(),
        },
        TokenLocation::Param("access_token".into()),
    ]
}

/// Translate the rules of one RequestAuthentication; every problem is returned.
pub fn translate(
    namespace: &str,
    name: &str,
    spec: &RequestAuthenticationSpec,
) -> Result<Vec<JwtProvider>, Vec<SpecError>> {
    let mut errors = Vec::new();
    let mut err = |field: String, message: String| errors.push(SpecError { field, message });
    if spec.selector.is_some() && (spec.target_ref.is_some() || spec.target_refs.is_some()) {
        err(
            "spec.selector".into(),
            "selector and targetRefs are mutually exclusive".into(),
        );
    }
    let mut out = Vec::new();
    for (i, r) in spec.jwt_rules.iter().flatten().enumerate() {
        let at = format!("spec.jwtRules[{i}]");
        let Some(issuer) = r.issuer.clone().filter(|s| !s.is_empty()) else {
            err(format!("{at}.issuer"), "missing required field".into());
            continue;
        };
        let timeout = match r.timeout.as_deref() {
            None => DEFAULT_JWKS_TIMEOUT,
            Some(t) => match crate::yaml::parse_go_duration(t) {
                Ok(d) if !d.is_zero() => d,
                _ => {
                    err(
                        format!("{at}.timeout"),
                        format!("{t:?} is not a positive duration"),
                    );
                    continue;
                }
            },
        };
        let jwks = match (&r.jwks, &r.jwks_uri) {
            (Some(inline), _) => Jwks::Inline(inline.clone()),
            (None, Some(uri)) if uri.starts_with("http://") || uri.starts_with("https://") => {
                Jwks::Uri {
                    uri: uri.clone(),
                    timeout,
                }
            }
            (None, Some(uri)) => {
                err(
                    format!("{at}.jwksUri"),
                    format!("{uri:?} is not an http(s) URL"),
                );
                continue;
            }
            (None, None) if issuer.starts_with("http://") || issuer.starts_with("https://") => {
                Jwks::Discovery {
                    issuer: issuer.clone(),
                    timeout,
                }
            }
            (None, None) => {
                // istiod's discovery of such an issuer fails and it installs a key nobody can
                // sign with; refusing the rule says so where an operator looks.
                err(
                    format!("{at}.jwksUri"),
                    format!(
                        "issuer {issuer:?} is not an http(s) URL, so its keys cannot be found by \
                         OpenID discovery: give jwksUri or jwks"
                    ),
                );
                continue;
            }
        };
        let mut locations = Vec::new();
        for (j, h) in r.from_headers.iter().flatten().enumerate() {
            if h.name.is_empty() {
                err(
                    format!("{at}.fromHeaders[{j}].name"),
                    "empty header name".into(),
                );
            }
            locations.push(TokenLocation::Header {
                name: h.name.to_ascii_lowercase(),
                prefix: h.prefix.clone().unwrap_or_default(),
            });
        }
        locations.extend(
            r.from_params
                .iter()
                .flatten()
                .cloned()
                .map(TokenLocation::Param),
        );
        locations.extend(
            r.from_cookies
                .iter()
                .flatten()
                .cloned()
                .map(TokenLocation::Cookie),
        );
        if locations.is_empty() {
            locations = default_locations();
        }
        out.push(JwtProvider {
            source: format!("{namespace}/{name} jwtRules[{i}]"),
            issuer,
            audiences: r.audiences.clone().unwrap_or_default(),
            jwks,
            locations,
            output_payload_to_header: r.output_payload_to_header.clone(),
            forward_original_token: r.forward_original_token.unwrap_or(false),
            output_claim_to_headers: r
                .output_claim_to_headers
                .iter()
                .flatten()
                .map(|c| (c.header.to_ascii_lowercase(), c.claim.clone()))
                .collect(),
        });
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(rule: serde_json::Value) -> Result<Vec<JwtProvider>, Vec<SpecError>> {
        let spec: RequestAuthenticationSpec =
            serde_json::from_value(serde_json::json!({"jwtRules": [rule]})).unwrap();
        translate("default", "jwt", &spec)
    }

    #[test]
    fn keys_come_from_the_rule_or_from_openid_discovery() {
        let p = rules(serde_json::json!({"issuer": "https://idp.test", "jwks": "{\"keys\":[]}"}));
        assert_eq!(p.unwrap()[0].jwks, Jwks::Inline("{\"keys\":[]}".into()));
        let p = rules(
            serde_json::json!({"issuer": "https://idp.test", "jwksUri": "https://idp.test/k"}),
        );
        assert!(
            matches!(&p.unwrap()[0].jwks, Jwks::Uri { uri, .. } if uri == "https://idp.test/k")
        );
        // Neither: discovered from the issuer, within the rule's timeout.
        let p = rules(serde_json::json!({"issuer": "https://idp.test", "timeout": "2s"}));
        assert_eq!(
            p.unwrap()[0].jwks,
            Jwks::Discovery {
                issuer: "https://idp.test".into(),
                timeout: Duration::from_secs(2)
            }
        );
        // An issuer that is no URL cannot be discovered: refused, naming the field.
        let e = rules(serde_json::json!({"issuer": "testing@secure.istio.io"})).unwrap_err();
        assert_eq!(e[0].field, "spec.jwtRules[0].jwksUri");
        assert!(
            e[0].message.contains("OpenID discovery"),
            "{}",
            e[0].message
        );
    }
}
