//! istiod's `envoy.filters.http.jwt_authn` → [`JwtProvider`]s the waypoint verifies tokens for
//! (`pilot/pkg/security/authn/policy_applier.go`, `convertToEnvoyJwtConfig`): providers with
//! `payload_in_metadata: payload`, inline (`local_jwks`) or remote (`remote_jwks`) keys, and
//! rules that all apply to `/` and allow a missing token (istiod's
//! `requires_any[provider…, allow_missing]`). Any other shape returns the reason, and the
//! chain's JWT claims stay unknown (never fail open).

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::data_source::Specifier;
use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
    jwt_provider::JwksSourceSpecifier, jwt_requirement::RequiresType,
    requirement_rule::RequirementType, JwtAuthentication, JwtRequirement,
};

use crate::authz::jwt::{Jwks, JwtProvider, TokenLocation, DEFAULT_JWKS_TIMEOUT};

/// A JWT filter whose behaviour this proxy cannot reproduce exactly.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JwtFilterError {
    /// A requirement kind other than provider name, allow-missing, any or all (protobuf form).
    #[error("requirement {0}")]
    Requirement(String),
    #[error("a rule that does not match every path")]
    NotEveryPath,
    #[error("a rule that requires a token")]
    RequiresToken,
    #[error("provider {provider}: payload_in_metadata {payload_in_metadata:?} (istiod uses \"payload\")")]
    PayloadInMetadata {
        provider: String,
        payload_in_metadata: String,
    },
    /// A local JWKS source other than an inline string or bytes (protobuf form).
    #[error("provider {provider}: local_jwks {specifier}")]
    LocalJwks { provider: String, specifier: String },
    #[error("provider {0}: remote_jwks without http_uri")]
    RemoteWithoutUri(String),
    #[error("provider {0}: no JWKS")]
    NoJwks(String),
}

/// Whether a requirement only names providers and lets a missing token through.
fn allows_missing(r: &JwtRequirement) -> Result<bool, JwtFilterError> {
    Ok(match &r.requires_type {
        Some(RequiresType::ProviderName(_)) => false,
        Some(RequiresType::AllowMissing(_)) => true,
        Some(RequiresType::RequiresAny(list)) => {
            let mut any = false;
            for r in &list.requirements {
                any |= allows_missing(r)?;
            }
            any
        }
        Some(RequiresType::RequiresAll(list)) => {
            let mut all = !list.requirements.is_empty();
            for r in &list.requirements {
                all &= allows_missing(r)?;
            }
            all
        }
        other => return Err(JwtFilterError::Requirement(format!("{other:?}"))),
    })
}

pub(crate) fn providers(j: &JwtAuthentication) -> Result<Vec<JwtProvider>, JwtFilterError> {
    for rule in &j.rules {
        let prefix_root = matches!(
            rule.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()),
            Some(PathSpecifier::Prefix(p)) if p == "/"
        );
        if !prefix_root {
            return Err(JwtFilterError::NotEveryPath);
        }
        match &rule.requirement_type {
            Some(RequirementType::Requires(r)) if allows_missing(r)? => {}
            _ => return Err(JwtFilterError::RequiresToken),
        }
    }
    let mut names: Vec<&String> = j.providers.keys().collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let p = &j.providers[name];
        if p.payload_in_metadata != "payload" {
            return Err(JwtFilterError::PayloadInMetadata {
                provider: name.clone(),
                payload_in_metadata: p.payload_in_metadata.clone(),
            });
        }
        let jwks = match &p.jwks_source_specifier {
            Some(JwksSourceSpecifier::LocalJwks(d)) => match &d.specifier {
                Some(Specifier::InlineString(s)) => Jwks::Inline(s.clone()),
                Some(Specifier::InlineBytes(b)) => {
                    Jwks::Inline(String::from_utf8_lossy(b).into_owned())
                }
                other => {
                    return Err(JwtFilterError::LocalJwks {
                        provider: name.clone(),
                        specifier: format!("{other:?}"),
                    })
                }
            },
            Some(JwksSourceSpecifier::RemoteJwks(r)) => {
                let uri = r
                    .http_uri
                    .as_ref()
                    .ok_or_else(|| JwtFilterError::RemoteWithoutUri(name.clone()))?;
                let timeout = uri
                    .timeout
                    .as_ref()
                    .and_then(|t| {
                        let secs = u64::try_from(t.seconds).ok()?;
                        let nanos = u32::try_from(t.nanos).ok()?;
                        Some(Duration::new(secs, nanos))
                    })
                    .filter(|t| !t.is_zero())
                    .unwrap_or(DEFAULT_JWKS_TIMEOUT);
                Jwks::Uri {
                    uri: uri.uri.clone(),
                    timeout,
                }
            }
            None => return Err(JwtFilterError::NoJwks(name.clone())),
        };
        let mut locations: Vec<TokenLocation> = p
            .from_headers
            .iter()
            .map(|h| TokenLocation::Header {
                name: h.name.to_ascii_lowercase(),
                prefix: h.value_prefix.clone(),
            })
            .chain(p.from_params.iter().cloned().map(TokenLocation::Param))
            .chain(p.from_cookies.iter().cloned().map(TokenLocation::Cookie))
            .collect();
        if locations.is_empty() {
            locations = crate::authz::jwt::default_locations();
        }
        out.push(JwtProvider {
            source: format!("jwt_authn provider {name}"),
            issuer: p.issuer.clone(),
            audiences: p.audiences.clone(),
            jwks,
            locations,
            output_payload_to_header: Some(p.forward_payload_header.clone())
                .filter(|h| !h.is_empty()),
            forward_original_token: p.forward,
            output_claim_to_headers: p
                .claim_to_headers
                .iter()
                .map(|c| (c.header_name.to_ascii_lowercase(), c.claim_name.clone()))
                .collect(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::DataSource;
    use envoy_types::pb::envoy::config::route::v3::RouteMatch;
    use envoy_types::pb::envoy::extensions::filters::http::jwt_authn::v3::{
        JwtProvider as EnvoyProvider, JwtRequirementOrList, RequirementRule,
    };

    fn provider(payload: &str) -> EnvoyProvider {
        EnvoyProvider {
            issuer: "https://issuer.example".into(),
            payload_in_metadata: payload.into(),
            jwks_source_specifier: Some(JwksSourceSpecifier::LocalJwks(DataSource {
                specifier: Some(Specifier::InlineString("{\"keys\":[]}".into())),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    fn rule(requires: RequiresType) -> RequirementRule {
        RequirementRule {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            requirement_type: Some(RequirementType::Requires(JwtRequirement {
                requires_type: Some(requires),
            })),
        }
    }

    fn name(p: &str) -> JwtRequirement {
        JwtRequirement {
            requires_type: Some(RequiresType::ProviderName(p.into())),
        }
    }

    #[test]
    fn only_istiods_allow_missing_shape_is_verified_here() {
        let allow_missing = JwtRequirement {
            requires_type: Some(RequiresType::AllowMissing(Default::default())),
        };
        let istiod = JwtAuthentication {
            providers: [("origins-0".to_string(), provider("payload"))].into(),
            rules: vec![rule(RequiresType::RequiresAny(JwtRequirementOrList {
                requirements: vec![name("origins-0"), allow_missing],
            }))],
            ..Default::default()
        };
        let got = providers(&istiod).unwrap();
        assert_eq!(got[0].issuer, "https://issuer.example");
        assert_eq!(got[0].jwks, Jwks::Inline("{\"keys\":[]}".into()));
        assert_eq!(got[0].locations.len(), 2, "Envoy's default locations");

        // A token required (no allow_missing), or the payload elsewhere: not reproduced.
        let required = JwtAuthentication {
            rules: vec![rule(RequiresType::ProviderName("origins-0".into()))],
            ..istiod.clone()
        };
        assert!(providers(&required)
            .unwrap_err()
            .to_string()
            .contains("requires a token"));
        let elsewhere = JwtAuthentication {
            providers: [("origins-0".to_string(), provider("claims"))].into(),
            ..istiod
        };
        assert!(providers(&elsewhere)
            .unwrap_err()
            .to_string()
            .contains("payload_in_metadata"));
    }
}
