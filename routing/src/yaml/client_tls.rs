//! DestinationRule `tls` (`ClientTLSSettings`, istio/api `networking/v1alpha3/destination_rule.proto`)
//! → [`ClientTls`], as istiod builds it for a waypoint's `inbound-vip` cluster (istio/istio
//! 1.24.0 … 1.30.0 and master 86c9f01: `pilot/pkg/networking/core/cluster_waypoint.go`
//! `buildWaypointTLSContext`, `cluster_tls.go` `constructUpstreamTLS`), so the data path dials
//! what the xDS front-end would translate from istiod's cluster:
//!
//! | field | becomes |
//! | --- | --- |
//! | `mode: SIMPLE` / `MUTUAL` | TLS originated to endpoints dialled directly |
//! | `sni` | SNI; unset: the request's host (istiod sets `auto_sni`) |
//! | `subjectAltNames` | exact matchers on any SAN kind (istiod: untyped `match_subject_alt_names`); unset: the certificate must name the SNI (`auto_san_validation`) |
//! | `caCertificates` | PEM roots file; unset: the system roots (istiod's `file-root:system`) |
//! | `clientCertificate`, `privateKey` | MUTUAL: the client certificate (istiod's `file-cert:`) |
//! | `insecureSkipVerify: true` | nothing verified (istiod: a bare validation context, no CA, no SANs) |
//! | `mode: DISABLE` | plaintext |
//! | `mode: ISTIO_MUTUAL` | Istio mutual TLS with the waypoint's certificate ([`crate::Transport::IstioMutual`]) |
//!
//! Istio's validation (`pkg/config/validation/agent/validation.go` `ValidateTLS`) is enforced
//! as errors. Two valid settings cannot be honoured from files: `credentialName` (a Kubernetes
//! secret) and `caCrl` (revocation is not checked); they make the caller reject the whole
//! DestinationRule ([`ClientTls::Refused`]), never fall back to plaintext or to a weaker check.
//!
//! Differences from istiod, on purpose:
//! - `ISTIO_MUTUAL`: istiod's waypoint leaves such a cluster `raw_buffer` ("not supported (?)"),
//!   i.e. plaintext to an endpoint outside HBONE. Files mode dials it in Istio mutual TLS, as the
//!   xDS front-end does for a sidecar pod (`tlsMode-istio`), rather than send plaintext where
//!   the rule asked for mutual TLS.
//! - `MUTUAL` without `clientCertificate` / `privateKey`: istiod logs an error and leaves
//!   `raw_buffer` (plaintext); here it is an error, as Istio's validation makes it.
//! - HBONE endpoints: istiod wraps this TLS inside the HBONE tunnel; the waypoint does not (the
//!   tunnel is the mesh's mutual TLS), with a warning naming the rule
//!   ([`super::assemble`]).

use super::diag::Extra;
use super::fields::{present, Fields, Scalar};
use super::schema;
use crate::model::StringMatch;
use crate::upstream::{ClientTls, SanKind, SanMatcher, TlsMode, UpstreamTls};
use serde::Deserialize;
use serde_json::Value;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ClientTlsY {
    mode: Scalar,
    client_certificate: Scalar,
    private_key: Scalar,
    ca_certificates: Scalar,
    credential_name: Scalar,
    subject_alt_names: Option<Vec<String>>,
    sni: Scalar,
    insecure_skip_verify: Scalar,
    ca_crl: Scalar,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Disable,
    Simple,
    Mutual,
    IstioMutual,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Disable => "DISABLE",
            Mode::Simple => "SIMPLE",
            Mode::Mutual => "MUTUAL",
            Mode::IstioMutual => "ISTIO_MUTUAL",
        }
    }
}

impl Fields<'_, '_> {
    /// A non-empty string field (proto3: `""` is unset).
    fn nonempty(&mut self, f: &str, v: Scalar) -> Option<String> {
        self.string(f, v).filter(|s| !s.is_empty())
    }

    fn tls_mode(&mut self, f: &str, v: Scalar) -> Option<Mode> {
        let mode = match present(v) {
            None => Mode::Disable,
            Some(Value::String(s)) => match s.to_ascii_uppercase().as_str() {
                "DISABLE" => Mode::Disable,
                "SIMPLE" => Mode::Simple,
                "MUTUAL" => Mode::Mutual,
                "ISTIO_MUTUAL" => Mode::IstioMutual,
                _ => {
                    self.error(
                        f,
                        format!(
                            "unknown value {s:?} (expected DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL)"
                        ),
                    );
                    return None;
                }
            },
            Some(Value::Number(n)) => match n.as_u64() {
                Some(0) => Mode::Disable,
                Some(1) => Mode::Simple,
                Some(2) => Mode::Mutual,
                Some(3) => Mode::IstioMutual,
                _ => {
                    self.error(f, format!("unknown value {n} (expected 0..=3)"));
                    return None;
                }
            },
            Some(other) => {
                self.error(f, format!("must be a string, got {other}"));
                return None;
            }
        };
        Some(mode)
    }

    /// `f` is the `tls` field's path (`spec.trafficPolicy.tls`). `None` after an error.
    pub(super) fn client_tls(&mut self, f: &str, t: ClientTlsY) -> Option<ClientTls> {
        self.unsupported(f, &t.extra, schema::CLIENT_TLS_SETTINGS);
        let errors = self.diag.errors.len();
        let mode = self.tls_mode(&format!("{f}.mode"), t.mode);
        let client_certificate =
            self.nonempty(&format!("{f}.clientCertificate"), t.client_certificate);
        let private_key = self.nonempty(&format!("{f}.privateKey"), t.private_key);
        let ca_certificates = self.nonempty(&format!("{f}.caCertificates"), t.ca_certificates);
        let credential_name = self.nonempty(&format!("{f}.credentialName"), t.credential_name);
        let sni = self.nonempty(&format!("{f}.sni"), t.sni);
        let ca_crl = self.nonempty(&format!("{f}.caCrl"), t.ca_crl);
        let insecure = self
            .boolean(&format!("{f}.insecureSkipVerify"), t.insecure_skip_verify)
            .unwrap_or(false);
        let sans = t.subject_alt_names.unwrap_or_default();
        for (i, s) in sans.iter().enumerate() {
            if s.is_empty() {
                self.error(&format!("{f}.subjectAltNames[{i}]"), "must not be empty");
            }
        }
        let mode = mode?;
        let originate = matches!(mode, Mode::Simple | Mode::Mutual);

        // Istio's ValidateTLS.
        if insecure && originate {
            let conflicting = match mode {
                Mode::Simple => {
                    ca_certificates.is_some() || credential_name.is_some() || !sans.is_empty()
                }
                _ => ca_certificates.is_some() || !sans.is_empty(),
            };
            if conflicting {
                self.error(
                    &format!("{f}.insecureSkipVerify"),
                    "cannot specify caCertificates, credentialName (SIMPLE) or subjectAltNames when insecureSkipVerify is true",
                );
            }
        }
        if originate && credential_name.is_some() {
            if client_certificate.is_some()
                || ca_certificates.is_some()
                || private_key.is_some()
                || ca_crl.is_some()
            {
                self.error(
                    &format!("{f}.credentialName"),
                    "cannot specify clientCertificate, privateKey, caCertificates or caCrl when credentialName is set",
                );
            }
        } else if mode == Mode::Mutual {
            if client_certificate.is_none() {
                self.error(
                    &format!("{f}.clientCertificate"),
                    "required for mode MUTUAL",
                );
            }
            if private_key.is_none() {
                self.error(&format!("{f}.privateKey"), "required for mode MUTUAL");
            }
        }
        if self.diag.errors.len() > errors {
            return None;
        }

        // Fields the mode does not use (istiod ignores them too).
        let set: [(&str, bool); 8] = [
            ("sni", sni.is_some()),
            ("subjectAltNames", !sans.is_empty()),
            ("caCertificates", ca_certificates.is_some()),
            ("clientCertificate", client_certificate.is_some()),
            ("privateKey", private_key.is_some()),
            ("credentialName", credential_name.is_some()),
            ("insecureSkipVerify", insecure),
            ("caCrl", ca_crl.is_some()),
        ];
        let unused: &[&str] = match mode {
            Mode::Disable | Mode::IstioMutual => &[
                "sni",
                "subjectAltNames",
                "caCertificates",
                "clientCertificate",
                "privateKey",
                "credentialName",
                "insecureSkipVerify",
                "caCrl",
            ],
            Mode::Simple if insecure => &["clientCertificate", "privateKey", "caCrl"],
            Mode::Simple => &["clientCertificate", "privateKey"],
            // insecureSkipVerify: istiod builds no validation context, so no CRL either.
            Mode::Mutual if insecure => &["caCrl"],
            Mode::Mutual => &[],
        };
        for (name, _) in set.iter().filter(|(n, on)| *on && unused.contains(n)) {
            self.warn(
                &format!("{f}.{name}"),
                format!("ignored with mode {}", mode.name()),
            );
        }

        match mode {
            Mode::Disable => return Some(ClientTls::Disable),
            Mode::IstioMutual => return Some(ClientTls::IstioMutual),
            Mode::Simple | Mode::Mutual => {}
        }
        // Valid Istio the waypoint cannot honour from files: the rule is rejected.
        if credential_name.is_some() {
            return Some(ClientTls::Refused(format!(
                "{f}.credentialName: Kubernetes secrets are not read in files mode; use caCertificates, clientCertificate and privateKey files"
            )));
        }
        if ca_crl.is_some() && !insecure {
            return Some(ClientTls::Refused(format!(
                "{f}.caCrl: certificate revocation lists are not checked by the waypoint"
            )));
        }
        let mutual = mode == Mode::Mutual;
        Some(ClientTls::Originate(UpstreamTls {
            mode: if mutual {
                TlsMode::Mutual
            } else {
                TlsMode::Simple
            },
            sni,
            // insecureSkipVerify: istiod's bare validation context has neither SANs nor a CA.
            subject_alt_names: if insecure {
                Vec::new()
            } else {
                sans.into_iter()
                    .map(|s| SanMatcher {
                        kind: SanKind::Any,
                        matcher: StringMatch::Exact(s),
                    })
                    .collect()
            },
            ca_certificates: ca_certificates.filter(|_| !insecure),
            client_certificate: client_certificate.filter(|_| mutual),
            private_key: private_key.filter(|_| mutual),
            insecure_skip_verify: insecure,
            // The cluster's protocol decides (the snapshot builder, for HTTP/2 and gRPC ports).
            alpn_h2: false,
        }))
    }
}
