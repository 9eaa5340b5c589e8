//! Cluster TLS: the upstream TLS context, SAN matchers, the CONNECT originator's SANs and
//! `UpstreamTls`.

use super::*;

/// The upstream TLS context of a transport socket named `tls` (or `envoy.transport_sockets.tls`).
fn upstream_tls_context(
    ts: &envoy_types::pb::envoy::config::core::v3::TransportSocket,
) -> Option<Result<UpstreamTlsContext, crate::xds::DecodeError>> {
    let ConfigType::TypedConfig(any) = ts.config_type.as_ref()?;
    decode_any::<UpstreamTlsContext>(any)
}

/// The SAN matchers of a TLS context's default validation context: the typed ones, then the
/// untyped (deprecated) ones, which look at every SAN kind. `Err` names a matcher that cannot
/// be translated (the caller decides whether that fails closed).
fn issue(e: crate::xds::matchers::Issue) -> SanError {
    match e {
        crate::xds::matchers::Issue::Unsupported(s) | crate::xds::matchers::Issue::Invalid(s) => {
            SanError::Matcher(s)
        }
    }
}

/// A SAN matcher that cannot be translated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SanError {
    #[error("SAN matcher type {0} is not supported")]
    UnsupportedType(i32),
    #[error("SAN matcher without a matcher")]
    NoMatcher,
    /// The string matcher's own reason.
    #[error("{0}")]
    Matcher(String),
}

fn san_matchers(vc: &CertificateValidationContext) -> Result<Vec<SanMatcher>, SanError> {
    let mut out = Vec::new();
    for m in &vc.match_typed_subject_alt_names {
        let kind = match m.san_type {
            1 => SanKind::Email,
            2 => SanKind::Dns,
            3 => SanKind::Uri,
            4 => SanKind::IpAddress,
            other => return Err(SanError::UnsupportedType(other)),
        };
        let sm = m.matcher.as_ref().ok_or(SanError::NoMatcher)?;
        let matcher = crate::xds::matchers::string_matcher(sm).map_err(issue)?;
        out.push(SanMatcher { kind, matcher });
    }
    #[allow(deprecated)]
    for sm in &vc.match_subject_alt_names {
        let matcher = crate::xds::matchers::string_matcher(sm).map_err(issue)?;
        out.push(SanMatcher {
            kind: SanKind::Any,
            matcher,
        });
    }
    Ok(out)
}

fn default_validation(c: &CommonTlsContext) -> Option<&CertificateValidationContext> {
    match c.validation_context_type.as_ref()? {
        ValidationContextType::CombinedValidationContext(c) => {
            c.default_validation_context.as_ref()
        }
        ValidationContextType::ValidationContext(v) => Some(v),
        _ => None,
    }
}

/// `connect_originate`'s URI SAN matchers exactly as istiod wrote them
/// (`cluster_waypoint.go` `buildConnectOriginate` → `buildCommonConnectTLSContext`): one prefix
/// `spiffe://<td>/` per trust domain plus `spiffe://<td>/ns/<waypoint ns>/sa/`; Envoy accepts a
/// peer when ANY matches, so a cross-namespace backend passes on the trust-domain prefix. With
/// `PILOT_SKIP_VALIDATE_TRUST_DOMAIN` (1.26.5 / 1.27.2 / 1.28+) the list is empty and only the
/// chain is checked. A matcher that cannot be translated is a warning and is left out; if it
/// was the only one, nothing matches (fail closed).
pub(crate) fn connect_originate_sans(c: &Cluster, at: At<'_>, diag: &mut Diag) -> Vec<SanMatcher> {
    let tls = match c.transport_socket.as_ref().and_then(upstream_tls_context) {
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            at.reject(diag, format!("transport socket: {e}"));
            return Vec::new();
        }
        None => {
            at.warn(
                diag,
                "no upstream TLS context; HBONE peers are checked against the CA only",
            );
            return Vec::new();
        }
    };
    let Some(vc) = tls.common_tls_context.as_ref().and_then(default_validation) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut dropped = false;
    for m in &vc.match_typed_subject_alt_names {
        let one = CertificateValidationContext {
            match_typed_subject_alt_names: vec![m.clone()],
            ..Default::default()
        };
        match san_matchers(&one) {
            Ok(v) => out.extend(v),
            Err(e) => {
                dropped = true;
                at.warn(diag, format!("SAN matcher left out: {e}"));
            }
        }
    }
    #[allow(deprecated)]
    for m in &vc.match_subject_alt_names {
        match crate::xds::matchers::string_matcher(m) {
            Ok(matcher) => out.push(SanMatcher {
                kind: SanKind::Any,
                matcher,
            }),
            Err(e) => {
                dropped = true;
                at.warn(diag, format!("SAN matcher left out: {}", issue(e)));
            }
        }
    }
    if dropped && out.is_empty() {
        // Never widen to "CA only" because a matcher was not understood.
        out.push(SanMatcher {
            kind: SanKind::Uri,
            matcher: StringMatch::Exact(String::new()),
        });
    }
    out
}

/// `file-root:<path>` / `file-cert:<cert>~<key>` (istiod's SDS names for DestinationRule files,
/// `model.GetOrDefault` / `ConstructSdsSecretConfig`); `system` means the system roots.
fn file_root(name: &str) -> Option<Option<String>> {
    let path = name.strip_prefix("file-root:")?;
    Some((path != "system").then(|| path.to_string()))
}

/// The TLS an `inbound-vip` cluster originates to endpoints it dials directly: istiod wraps it
/// in `internal_upstream` (`cluster_waypoint.go` `buildWaypointInboundVIPCluster`,
/// `buildWaypointTLSContext`: DestinationRule SIMPLE / MUTUAL only; ISTIO_MUTUAL and DISABLE
/// leave `raw_buffer`).
pub(super) fn upstream_tls(c: &Cluster, at: At<'_>, diag: &mut Diag) -> Option<UpstreamTls> {
    use envoy_types::pb::envoy::extensions::transport_sockets::internal_upstream::v3::InternalUpstreamTransport;
    let ts = c.transport_socket.as_ref()?;
    let ConfigType::TypedConfig(any) = ts.config_type.as_ref()?;
    let inner = match decode_any::<InternalUpstreamTransport>(any) {
        Some(Ok(iu)) => iu.transport_socket?,
        Some(Err(e)) => {
            at.reject(diag, format!("transport socket: {e}"));
            return None;
        }
        None => ts.clone(),
    };
    let tls = match upstream_tls_context(&inner) {
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            at.reject(diag, format!("transport socket: {e}"));
            return None;
        }
        None => {
            let ConfigType::TypedConfig(any) = inner.config_type.as_ref()?;
            if !any.type_url.ends_with("raw_buffer.v3.RawBuffer") {
                // Never plaintext where istiod asked for something else: the cluster is refused
                // alone (its last good version, if any, keeps serving).
                at.reject(
                    diag,
                    format!("transport socket {} is not supported", any.type_url),
                );
            }
            return None;
        }
    };
    let common = tls.common_tls_context.unwrap_or_default();
    let mut out = UpstreamTls {
        mode: TlsMode::Simple,
        sni: (!tls.sni.is_empty()).then(|| tls.sni.clone()),
        subject_alt_names: Vec::new(),
        ca_certificates: None,
        client_certificate: None,
        private_key: None,
        insecure_skip_verify: false,
        alpn_h2: common.alpn_protocols.iter().any(|p| p == "h2"),
    };
    match common.validation_context_type.as_ref() {
        Some(ValidationContextType::CombinedValidationContext(cv)) => {
            if let Some(name) = cv
                .validation_context_sds_secret_config
                .as_ref()
                .map(|s| &s.name)
            {
                match file_root(name) {
                    Some(root) => out.ca_certificates = root,
                    None => {
                        // A DestinationRule credentialName: verifying with the system roots
                        // instead would accept what istiod's CA secret does not.
                        at.reject(
                            diag,
                            format!(
                                "validation secret {name:?} (a DestinationRule credentialName) is not supported: the waypoint fetches no SDS secrets"
                            ),
                        );
                        return None;
                    }
                }
            }
        }
        // istiod's `insecureSkipVerify: true`: a bare validation context.
        Some(ValidationContextType::ValidationContext(v))
            if v.trusted_ca.is_none() && v.match_typed_subject_alt_names.is_empty() && {
                #[allow(deprecated)]
                v.match_subject_alt_names.is_empty()
            } =>
        {
            out.insecure_skip_verify = true;
        }
        _ => {}
    }
    if let Some(vc) = default_validation(&common) {
        if vc.crl.is_some() {
            // DestinationRule caCrl: ignoring it would accept revoked certificates.
            at.reject(
                diag,
                "certificate revocation list (DestinationRule caCrl) is not checked by the waypoint",
            );
            return None;
        }
        match san_matchers(vc) {
            Ok(m) => out.subject_alt_names = m,
            Err(e) => {
                at.reject(diag, format!("upstream TLS: {e}"));
                return None;
            }
        }
    }
    if let Some(cert) = common.tls_certificate_sds_secret_configs.first() {
        out.mode = TlsMode::Mutual;
        match cert
            .name
            .strip_prefix("file-cert:")
            .and_then(|p| p.split_once('~'))
        {
            Some((chain, key)) => {
                out.client_certificate = Some(chain.to_string());
                out.private_key = Some(key.to_string());
            }
            None => {
                at.reject(
                    diag,
                    format!(
                        "client certificate secret {:?} (a DestinationRule credentialName) is not supported: the waypoint fetches no SDS secrets",
                        cert.name
                    ),
                );
                return None;
            }
        }
    }
    Some(out)
}
