//! The actions of a VirtualService `http` route: `redirect`,
//! `directResponse`, `rewrite`, `headers`, `timeout`, `retries`, `fault`,
//! `mirror`/`mirrors`, `corsPolicy` → [`crate::actions`] types.
//!
//! Validation follows istiod's (`pkg/config/validation/virtualservice.go`,
//! `validation.go`, `agent/validation.go`) and the CRD's rules; where istiod
//! would build no Envoy config (an abort without a status, a redirect code
//! Envoy lacks) it is an error here too, naming the field.

use super::diag::Extra;
use super::fields::{present, DurationRule, Fields, Scalar};
use super::schema;
use super::virtual_service::{string_match, Place, StringMatchY};
use crate::actions::{
    Abort, Cors, DirectResponse, Fault, FaultAbort, FaultDelay, HeaderOps, Headers, Percent,
    Redirect, RedirectPath, RedirectPort, RegexRewrite, RetryOn, RetryPolicy, Rewrite,
    UnmatchedPreflights, UriRewrite,
};
use crate::model::{RouteMatch, StringMatch};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;
mod cors;
mod headers;
mod redirect;
mod retries_fault;

/// Istio's limit on a regex's length (Envoy's RE2 program size stand-in).
const MAX_REGEX_LEN: usize = 1024;
/// istiod: direct response bodies over 1 MB are errors, over 100 KB warnings.
const MAX_BODY: usize = 1024 * 1024;
const LARGE_BODY: usize = 100 * 1024;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RedirectY {
    uri: Option<String>,
    authority: Option<String>,
    port: Scalar,
    derive_port: Scalar,
    scheme: Option<String>,
    redirect_code: Scalar,
    prefix_rewrite: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
pub(super) struct DirectResponseY {
    status: Scalar,
    body: Option<BodyY>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct BodyY {
    string: Option<String>,
    bytes: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RewriteY {
    uri: Option<String>,
    authority: Option<String>,
    uri_regex_rewrite: Option<RegexRewriteY>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct RegexRewriteY {
    #[serde(rename = "match")]
    pattern: Option<String>,
    rewrite: Option<String>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
pub(super) struct HeadersY {
    request: Option<HeaderOperationsY>,
    response: Option<HeaderOperationsY>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
struct HeaderOperationsY {
    set: Option<BTreeMap<String, Value>>,
    add: Option<BTreeMap<String, Value>>,
    remove: Option<Vec<String>>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RetriesY {
    attempts: Scalar,
    per_try_timeout: Scalar,
    retry_on: Scalar,
    retry_remote_localities: Scalar,
    retry_ignore_previous_hosts: Scalar,
    backoff: Scalar,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
pub(super) struct FaultY {
    delay: Option<DelayY>,
    abort: Option<AbortY>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DelayY {
    fixed_delay: Scalar,
    exponential_delay: Scalar,
    percentage: Option<PercentY>,
    percent: Scalar,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AbortY {
    http_status: Scalar,
    grpc_status: Scalar,
    http2_error: Scalar,
    percentage: Option<PercentY>,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
pub(super) struct PercentY {
    value: Scalar,
    #[serde(flatten)]
    extra: Extra,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct CorsY {
    allow_origin: Option<Vec<String>>,
    allow_origins: Option<Vec<StringMatchY>>,
    allow_methods: Option<Vec<String>>,
    allow_headers: Option<Vec<String>>,
    expose_headers: Option<Vec<String>>,
    max_age: Scalar,
    allow_credentials: Scalar,
    unmatched_preflights: Scalar,
    #[serde(flatten)]
    extra: Extra,
}

/// Which percentages are accepted.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum PercentRule {
    /// `0..=100`.
    Range,
    /// istiod `validatePercentage`: 0, or `0.0001..=100`.
    FaultRange,
}

impl Fields<'_, '_> {
    /// Istio `Percent {value}`; a missing `value` is 0.
    pub(super) fn percentage(
        &mut self,
        f: &str,
        p: PercentY,
        rule: PercentRule,
    ) -> Option<Percent> {
        self.unsupported(f, &p.extra, schema::PERCENT);
        let vf = format!("{f}.value");
        let Some(raw) = present(p.value) else {
            return Some(Percent::ZERO);
        };
        let x = match &raw {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        let Some(x) = x else {
            self.error(&vf, format!("must be a number, got {raw}"));
            return None;
        };
        let too_small = rule == PercentRule::FaultRange && x > 0.0 && x < 0.0001;
        match Percent::from_value(x) {
            Some(p) if !too_small => Some(p),
            _ => {
                let range = match rule {
                    PercentRule::Range => "0..=100",
                    PercentRule::FaultRange => "0 or 0.0001..=100",
                };
                self.error(&vf, format!("must be a percentage in {range}, got {raw}"));
                None
            }
        }
    }
}

/// RFC 7230 token characters (istiod's `validHeaderNameRegex`).
pub(super) fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}
