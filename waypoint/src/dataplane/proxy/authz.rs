//! Authorization on the HTTP path: the destination's policies decide before any route action
//! (Envoy runs the RBAC filters ahead of the router). A denial is Envoy's: 403,
//! `RBAC: access denied`, `%RESPONSE_CODE_DETAILS%`
//! `rbac_access_denied_matched_policy[<rule>|none]`.

use std::borrow::Cow;
use std::net::IpAddr;

use pingora_error::Result;
use pingora_http::RequestHeader;
use pingora_proxy::Session;
use routing::authz::{joined_header, AuthzView, Decision, Jwt, Verdict};

use super::ext_authz;
use super::request::authority;
use super::{RequestCtx, Waypoint};
use crate::dataplane::tunnel::TunnelInfo;

/// Envoy's RBAC local reply body.
pub const DENIED_BODY: &str = "RBAC: access denied";

/// `%RESPONSE_CODE_DETAILS%` of a request whose body, read for an ext_authz check, went past
/// what can be replayed to the upstream (pingora's 64 KiB retry buffer): answered 413, closed.
pub const UNREPLAYABLE_DETAILS: &str = "ext_authz_request_body_over_replay_buffer";

/// A request as authorization reads it.
pub struct HttpAuthz<'a> {
    pub req: &'a RequestHeader,
    pub tunnel: &'a TunnelInfo,
    /// The claims of the request's verified JWT.
    pub jwt: Option<&'a serde_json::Value>,
}

impl AuthzView for HttpAuthz<'_> {
    fn is_http(&self) -> bool {
        true
    }
    fn principal(&self) -> Option<&str> {
        Some(self.tunnel.principal())
    }
    fn source_ip(&self) -> Option<IpAddr> {
        Some(self.tunnel.source_addr.ip())
    }
    fn unverified_source_ip(&self) -> Option<IpAddr> {
        self.tunnel.claimed_source.map(|a| a.ip())
    }
    fn destination_ip(&self) -> Option<IpAddr> {
        Some(self.tunnel.original_dst.ip())
    }
    fn destination_port(&self) -> u16 {
        self.tunnel.original_dst.port()
    }
    fn method(&self) -> &str {
        self.req.method.as_str()
    }
    fn host(&self) -> Option<&str> {
        authority(self.req)
    }
    fn path(&self) -> &str {
        self.req.uri.path_and_query().map_or("/", |p| p.as_str())
    }
    fn header(&self, name: &str) -> Option<Cow<'_, str>> {
        joined_header(self.req.headers.get_all(name).iter().map(|v| v.as_bytes()))
    }
    fn jwt(&self) -> Jwt<'_> {
        self.jwt.map_or(Jwt::None, Jwt::Claims)
    }
}

/// A TCP connection as authorization reads it: HTTP attributes are unknown.
pub struct TcpAuthz<'a>(pub &'a TunnelInfo);

impl AuthzView for TcpAuthz<'_> {
    fn is_http(&self) -> bool {
        false
    }
    fn principal(&self) -> Option<&str> {
        Some(self.0.principal())
    }
    fn source_ip(&self) -> Option<IpAddr> {
        Some(self.0.source_addr.ip())
    }
    fn unverified_source_ip(&self) -> Option<IpAddr> {
        self.0.claimed_source.map(|a| a.ip())
    }
    fn destination_ip(&self) -> Option<IpAddr> {
        Some(self.0.original_dst.ip())
    }
    fn destination_port(&self) -> u16 {
        self.0.original_dst.port()
    }
}

/// What the access log says about the decision (empty when no policy applied).
#[derive(Debug, Default, Clone)]
pub struct AuthzNote {
    /// `allow|deny|custom_deny <policy>`.
    pub decision: String,
    /// The dry-run policies' verdict, `allow|deny <policy>`.
    pub dry_run: String,
    /// Matched AUDIT rules.
    pub audit: String,
}

impl AuthzNote {
    pub fn from(d: &Decision) -> Self {
        let verdict = |v: &Verdict| format!("{} {}", v.action(), v.policy());
        Self {
            decision: verdict(&d.verdict),
            dry_run: d.dry_run.as_ref().map(verdict).unwrap_or_default(),
            audit: d.audited.join(","),
        }
    }
}

impl Waypoint {
    /// 413 `Payload Too Large` for a body the CUSTOM check cannot take.
    async fn payload_too_large(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        flags: &'static str,
        details: &'static str,
    ) -> Result<bool> {
        let headers = [("content-type".to_string(), "text/plain".to_string())];
        self.local_reply(
            session,
            ctx,
            413,
            &headers,
            Some(bytes::Bytes::from_static(b"Payload Too Large")),
            flags,
            details,
        )
        .await
    }

    /// Decide `session`'s request against the policies of `service` (the FQDN; `None` for
    /// pod-addressed traffic). Returns true when the request was answered (denied).
    pub(super) async fn authorize(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        tunnel: &TunnelInfo,
        service: Option<&str>,
    ) -> Result<bool> {
        let set = ctx
            .snapshot
            .authorization()
            .for_service(service, true)
            .clone();
        if set.is_empty() {
            return Ok(false);
        }
        // RequestAuthentication first (Envoy's jwt_authn runs before the RBAC filters).
        let mut claims = None;
        if !set.jwt.is_empty() {
            // Boxed, as the ext_authz call below: these futures are kilobytes, and unboxed
            // they would be part of every request's filter future, policy or not.
            let authn = Box::pin(super::jwt::authenticate(
                &set.jwt,
                session.req_header(),
                &self.jwks,
            ));
            match authn.await {
                super::jwt::Authn::NoToken => {}
                super::jwt::Authn::Rejected(message) => {
                    let req = session.req_header();
                    let realm =
                        format!("http://{}{}", authority(req).unwrap_or(""), req.uri.path());
                    let headers = [
                        ("content-type".to_string(), "text/plain".to_string()),
                        (
                            "www-authenticate".to_string(),
                            format!("Bearer realm=\"{realm}\", error=\"invalid_token\""),
                        ),
                    ];
                    return self
                        .local_reply(
                            session,
                            ctx,
                            401,
                            &headers,
                            Some(bytes::Bytes::from_static(message.as_bytes())),
                            "",
                            super::jwt::details(message),
                        )
                        .await;
                }
                super::jwt::Authn::Verified {
                    claims: verified,
                    provider,
                    location,
                    payload_b64,
                } => {
                    super::jwt::apply_headers(
                        session.req_header_mut(),
                        &verified,
                        &provider,
                        &location,
                        &payload_b64,
                    );
                    claims = Some(verified);
                }
            }
        }
        if set.policies.is_empty() {
            return Ok(false);
        }
        let custom = set.custom(&HttpAuthz {
            req: session.req_header(),
            tunnel,
            jwt: claims.as_ref(),
        });
        // The authorizer istiod configured with the policy, else the mesh config file's.
        let snapshot = ctx.snapshot.clone();
        let provider = |name: &str| {
            snapshot
                .authorization()
                .provider(name)
                .map(|p| &**p)
                .or_else(|| self.authorizers.get(name))
        };
        let decision = match custom.map(|m| (provider(&m.provider), m)) {
            // No CUSTOM rule matched: DENY and ALLOW decide (CUSTOM is not looked at twice).
            None => set.evaluate_after_custom(&HttpAuthz {
                req: session.req_header(),
                tunnel,
                jwt: claims.as_ref(),
            }),
            // Its provider is not configured: the evaluation denies (fails closed).
            Some((None, _)) => set.evaluate(&HttpAuthz {
                req: session.req_header(),
                tunnel,
                jwt: claims.as_ref(),
            }),
            Some((Some(provider), m)) => {
                // The body first, when the provider takes it (Envoy buffers before the call).
                let body = match provider.body {
                    None => None,
                    Some(settings) => match ext_authz::body::read(session, settings).await? {
                        ext_authz::BodyRead::Ready(body) => body,
                        // Envoy's buffer limit: 413 before any call, whatever failOpen says.
                        ext_authz::BodyRead::TooLarge => {
                            return self
                                .payload_too_large(session, ctx, "", "request_payload_too_large")
                                .await;
                        }
                        // The body could not be forwarded whole: closed, whatever failOpen says.
                        ext_authz::BodyRead::Unreplayable { read } => {
                            ext_authz::body::warn_unreplayable(&provider.name, read);
                            let decision = Decision {
                                verdict: Verdict::CustomUnavailable {
                                    policy: m.policy.clone(),
                                    rule: m.rule.clone(),
                                    provider: m.provider.clone(),
                                },
                                audited: Vec::new(),
                                dry_run: None,
                            };
                            self.telemetry.metrics.authz.record(&decision, true);
                            ctx.authz = AuthzNote::from(&decision);
                            return self
                                .payload_too_large(session, ctx, "UAEX", UNREPLAYABLE_DETAILS)
                                .await;
                        }
                    },
                };
                let route = ext_authz::dial::Route::for_provider(
                    &ctx.snapshot,
                    &provider.address,
                    &self.pool,
                    matches!(provider.kind, ext_authz::Kind::Grpc),
                );
                let check = Box::pin(ext_authz::check(
                    provider,
                    session.req_header(),
                    body.as_ref(),
                    tunnel.principal(),
                    &route,
                ))
                .await;
                let denial = match check {
                    ext_authz::Check::Allow {
                        upstream,
                        downstream,
                    } => {
                        let req = session.req_header_mut();
                        for (k, v) in upstream {
                            let _ = req.insert_header(k, v);
                        }
                        ctx.extra_response_headers.extend(downstream);
                        None
                    }
                    ext_authz::Check::Error(e) if provider.fail_open => {
                        tracing::debug!(provider = %provider.name, error = %e, "authorizer failed; failOpen");
                        None
                    }
                    ext_authz::Check::Error(e) => {
                        tracing::debug!(provider = %provider.name, error = %e, "authorizer failed");
                        Some((
                            provider.status_on_error,
                            Vec::new(),
                            bytes::Bytes::new(),
                            Verdict::CustomUnavailable {
                                policy: m.policy.clone(),
                                rule: m.rule.clone(),
                                provider: m.provider.clone(),
                            },
                        ))
                    }
                    ext_authz::Check::Deny {
                        status,
                        headers,
                        body,
                    } => Some((
                        status,
                        headers,
                        body,
                        Verdict::CustomDenied {
                            policy: m.policy.clone(),
                            rule: m.rule.clone(),
                            provider: m.provider.clone(),
                        },
                    )),
                };
                if let Some((status, headers, body, verdict)) = denial {
                    let decision = Decision {
                        verdict,
                        audited: Vec::new(),
                        dry_run: None,
                    };
                    self.telemetry.metrics.authz.record(&decision, true);
                    ctx.authz = AuthzNote::from(&decision);
                    let details = decision.verdict.response_code_details().unwrap_or_default();
                    return self
                        .local_reply(session, ctx, status, &headers, Some(body), "UAEX", details)
                        .await;
                }
                set.evaluate_after_custom(&HttpAuthz {
                    req: session.req_header(),
                    tunnel,
                    jwt: claims.as_ref(),
                })
            }
        };
        self.telemetry.metrics.authz.record(&decision, true);
        ctx.authz = AuthzNote::from(&decision);
        let Some(details) = decision.verdict.response_code_details() else {
            return Ok(false);
        };
        let flag = match decision.verdict {
            Verdict::CustomUnavailable { .. } | Verdict::CustomDenied { .. } => "UAEX",
            _ => "",
        };
        let headers = [("content-type".to_string(), "text/plain".to_string())];
        self.local_reply(
            session,
            ctx,
            403,
            &headers,
            Some(bytes::Bytes::from_static(DENIED_BODY.as_bytes())),
            flag,
            details,
        )
        .await
    }
}
