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

    /// `redirect`. `matches` are the route's match blocks (`prefixRewrite`
    /// needs every `uri` condition to be a prefix).
    pub(super) fn redirect(
        &mut self,
        f: &str,
        r: RedirectY,
        matches: &[RouteMatch],
    ) -> Option<Redirect> {
        self.unsupported(f, &r.extra, schema::HTTP_REDIRECT);
        let uri = r.uri.filter(|s| !s.is_empty());
        let prefix = r.prefix_rewrite.filter(|s| !s.is_empty());
        let authority = r.authority.filter(|s| !s.is_empty());
        let scheme = r.scheme.filter(|s| !s.is_empty());
        let mut ok = true;
        let path = match (uri, prefix) {
            (Some(_), Some(_)) => {
                self.error(f, "redirect may only specify one of uri or prefixRewrite");
                return None;
            }
            (Some(u), None) => Some(RedirectPath::Uri(u)),
            (None, Some(p)) => {
                if matches
                    .iter()
                    .any(|m| m.uri.is_some() && !matches!(m.uri, Some(StringMatch::Prefix(_))))
                {
                    self.error(
                        &format!("{f}.prefixRewrite"),
                        "requires every match block's uri to be a prefix match",
                    );
                    ok = false;
                }
                Some(RedirectPath::Prefix(p))
            }
            (None, None) => None,
        };
        let port_set = present(r.port.clone()).is_some();
        let derive_set = present(r.derive_port.clone()).is_some();
        let port = if port_set && derive_set {
            self.error(f, "redirect may only specify one of port or derivePort");
            return None;
        } else if port_set {
            let pf = format!("{f}.port");
            match self.uint(&pf, r.port, u64::from(u32::MAX))? {
                p @ 1..=65535 => Some(RedirectPort::Port(p as u16)),
                p => {
                    self.error(
                        &pf,
                        format!("port number {p} must be in the range 1..65535"),
                    );
                    return None;
                }
            }
        } else if derive_set {
            let df = format!("{f}.derivePort");
            match self.string(&df, r.derive_port)?.as_str() {
                "FROM_PROTOCOL_DEFAULT" => Some(RedirectPort::FromProtocolDefault),
                "FROM_REQUEST_PORT" => Some(RedirectPort::FromRequestPort),
                other => {
                    self.error(
                        &df,
                        format!("unknown derivePort {other:?} (use FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT)"),
                    );
                    return None;
                }
            }
        } else {
            None
        };
        if path.is_none() && authority.is_none() && scheme.is_none() && port.is_none() {
            self.error(
                f,
                "redirect must specify uri, prefixRewrite, authority, scheme, port or derivePort",
            );
            return None;
        }
        if let Some(s) = &scheme {
            if s != "http" && s != "https" {
                self.error(
                    &format!("{f}.scheme"),
                    format!("invalid redirect scheme {s:?}, must be \"http\" or \"https\""),
                );
                ok = false;
            }
        }
        let cf = format!("{f}.redirectCode");
        let code = match self.uint(&cf, r.redirect_code, u64::from(u32::MAX)) {
            None | Some(0) | Some(301) => 301,
            Some(c @ (302 | 303 | 307 | 308)) => c as u16,
            Some(c @ 300..=399) => {
                self.error(
                    &cf,
                    format!("redirect code {c} is not supported (Envoy redirects with 301, 302, 303, 307 or 308)"),
                );
                return None;
            }
            Some(c) => {
                self.error(
                    &cf,
                    format!("{c} is not a valid redirect code, must be 3xx"),
                );
                return None;
            }
        };
        ok.then_some(Redirect {
            path,
            authority,
            scheme,
            port,
            code,
        })
    }

    /// `directResponse`.
    pub(super) fn direct_response(
        &mut self,
        f: &str,
        d: DirectResponseY,
    ) -> Option<DirectResponse> {
        self.unsupported(f, &d.extra, schema::HTTP_DIRECT_RESPONSE);
        let sf = format!("{f}.status");
        let status = match present(d.status.clone()) {
            None => {
                self.error(&sf, "missing required field");
                return None;
            }
            Some(_) => self.uint(&sf, d.status, u64::from(u32::MAX))?,
        };
        if !(200..=599).contains(&status) {
            self.error(
                &sf,
                format!("HTTP status {status} is not in range 200..=599"),
            );
            return None;
        }
        let body = match d.body {
            None => None,
            Some(b) => {
                let bf = format!("{f}.body");
                self.unsupported(&bf, &b.extra, schema::HTTP_BODY);
                match (b.string, b.bytes) {
                    (Some(_), Some(_)) => {
                        self.error(&bf, "only one of string or bytes may be set");
                        return None;
                    }
                    (Some(s), None) => Some(s.into_bytes()),
                    (None, Some(b64)) => match crate::actions::base64_decode(&b64) {
                        Ok(bytes) => Some(bytes),
                        Err(e) => {
                            self.error(&format!("{bf}.bytes"), format!("invalid base64: {e}"));
                            return None;
                        }
                    },
                    (None, None) => None,
                }
            }
        };
        let size = body.as_ref().map_or(0, Vec::len);
        if size > MAX_BODY {
            self.error(
                &format!("{f}.body"),
                format!("body of {size} bytes: large direct responses may impact control plane performance, must be less than 1MB"),
            );
            return None;
        }
        if size > LARGE_BODY {
            self.warn(
                &format!("{f}.body"),
                format!("body of {size} bytes: large direct responses may impact control plane performance"),
            );
        }
        Some(DirectResponse {
            status: status as u16,
            body,
        })
    }

    /// `rewrite`.
    pub(super) fn rewrite(&mut self, f: &str, r: RewriteY) -> Option<Rewrite> {
        self.unsupported(f, &r.extra, schema::HTTP_REWRITE);
        let uri = r.uri.filter(|s| !s.is_empty());
        let authority = r.authority.filter(|s| !s.is_empty());
        if uri.is_some() && r.uri_regex_rewrite.is_some() {
            self.error(f, "rewrite may only contain one of uri or uriRegexRewrite");
            return None;
        }
        let uri = match (uri, r.uri_regex_rewrite) {
            (Some(u), _) => Some(UriRewrite::Prefix(u)),
            (None, Some(rr)) => {
                let rf = format!("{f}.uriRegexRewrite");
                self.unsupported(&rf, &rr.extra, schema::REGEX_REWRITE);
                let (Some(pattern), Some(rewrite)) = (
                    rr.pattern.filter(|s| !s.is_empty()),
                    rr.rewrite.filter(|s| !s.is_empty()),
                ) else {
                    self.error(&rf, "uriRegexRewrite requires both match and rewrite");
                    return None;
                };
                if pattern.len() > MAX_REGEX_LEN {
                    self.error(
                        &format!("{rf}.match"),
                        format!("regex is too large, max length allowed is {MAX_REGEX_LEN}"),
                    );
                    return None;
                }
                match RegexRewrite::new(&pattern, &rewrite) {
                    Ok(re) => Some(UriRewrite::Regex(re)),
                    Err(e) if regex::Regex::new(&pattern).is_err() => {
                        self.error(
                            &format!("{rf}.match"),
                            format!("invalid regex {pattern:?}: {e}"),
                        );
                        return None;
                    }
                    Err(e) => {
                        self.error(&format!("{rf}.rewrite"), e);
                        return None;
                    }
                }
            }
            (None, None) => None,
        };
        if uri.is_none() && authority.is_none() {
            self.error(
                f,
                "rewrite must specify at least one of uri, uriRegexRewrite or authority",
            );
            return None;
        }
        Some(Rewrite { uri, authority })
    }

    /// `headers` of a route (`route_level`) or of a destination.
    pub(super) fn headers(&mut self, f: &str, h: HeadersY, route_level: bool) -> Option<Headers> {
        self.unsupported(f, &h.extra, schema::HEADERS);
        let mut ok = true;
        let mut authority: Option<String> = None;
        let mut authorities: Vec<(String, String)> = Vec::new();
        let mut request = HeaderOps::default();
        if let Some(r) = h.request {
            let rf = format!("{f}.request");
            self.unsupported(&rf, &r.extra, schema::HEADER_OPERATIONS);
            let set = self.header_values(&rf, "set", r.set, true, &mut authorities, &mut ok);
            let add = self.header_values(&rf, "add", r.add, true, &mut authorities, &mut ok);
            let remove = self.header_removals(&rf, r.remove, &mut ok);
            request = HeaderOps::new(set, add, remove);
            // `set` wins over `add` (istiod TranslateHeadersOperations).
            authority = authorities.first().map(|(_, v)| v.clone());
            if authorities.len() > 1 {
                let (first, _) = &authorities[0];
                let others: Vec<&str> = authorities[1..].iter().map(|(w, _)| w.as_str()).collect();
                if route_level {
                    self.error(
                        &rf,
                        format!(
                            "authority header cannot be set multiple times: have {:?} ({first}), attempting to set {:?} ({})",
                            authorities[0].1,
                            authorities[1].1,
                            others.join(", ")
                        ),
                    );
                    ok = false;
                } else {
                    self.warn(
                        &rf,
                        format!(
                            "authority is set more than once; {first} {:?} applies",
                            authorities[0].1
                        ),
                    );
                }
            }
        }
        let mut response = HeaderOps::default();
        if let Some(r) = h.response {
            let rf = format!("{f}.response");
            self.unsupported(&rf, &r.extra, schema::HEADER_OPERATIONS);
            let mut ignored = Vec::new();
            let set = self.header_values(&rf, "set", r.set, false, &mut ignored, &mut ok);
            let add = self.header_values(&rf, "add", r.add, false, &mut ignored, &mut ok);
            let remove = self.header_removals(&rf, r.remove, &mut ok);
            response = HeaderOps::new(set, add, remove);
        }
        ok.then_some(Headers {
            request,
            response,
            authority,
        })
    }

    /// `set` or `add`: (name, value) pairs. With `authority_allowed`
    /// (request side), `host` / `:authority` go to `authorities` as
    /// (`set.host`, value) instead.
    fn header_values(
        &mut self,
        f: &str,
        list: &str,
        map: Option<BTreeMap<String, Value>>,
        authority_allowed: bool,
        authorities: &mut Vec<(String, String)>,
        ok: &mut bool,
    ) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, value) in map.unwrap_or_default() {
            let hf = format!("{f}.{list}.{name}");
            let value = match value {
                Value::String(s) => s,
                other => {
                    self.error(&hf, format!("header value must be a string, got {other}"));
                    *ok = false;
                    continue;
                }
            };
            let is_authority =
                name.eq_ignore_ascii_case("host") || name.eq_ignore_ascii_case(":authority");
            if is_authority && authority_allowed {
                if !valid_value(self, &hf, &value) {
                    *ok = false;
                } else {
                    authorities.push((format!("{list}.{name}"), value));
                }
                continue;
            }
            if !self.header_name(&hf, &name) || !valid_value(self, &hf, &value) {
                *ok = false;
                continue;
            }
            let value = value.replace("%%", "%");
            out.push((name, value));
        }
        out
    }

    fn header_removals(
        &mut self,
        f: &str,
        list: Option<Vec<String>>,
        ok: &mut bool,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (i, name) in list.unwrap_or_default().into_iter().enumerate() {
            if self.header_name(&format!("{f}.remove[{i}]"), &name) {
                out.push(name);
            } else {
                *ok = false;
            }
        }
        out
    }

    /// istiod `ValidateHTTPHeaderOperationName`, plus a token check.
    fn header_name(&mut self, f: &str, name: &str) -> bool {
        let problem = if name.is_empty() {
            "header name cannot be empty".to_string()
        } else if name.eq_ignore_ascii_case("host") {
            format!("invalid header {name:?}: cannot set Host header")
        } else if name.starts_with(':') {
            format!("invalid header {name:?}: header cannot have \":\" prefix")
        } else if !name.chars().all(is_tchar) {
            format!("header name {name} is not a valid header name")
        } else {
            return true;
        };
        self.error(f, problem);
        false
    }

    /// `retries`; `None` (absent) is Istio's default policy.
    pub(super) fn retries(&mut self, f: &str, r: Option<RetriesY>) -> Option<RetryPolicy> {
        let Some(r) = r else {
            return Some(RetryPolicy::istio_default());
        };
        self.unsupported(f, &r.extra, schema::HTTP_RETRY);
        let errors = self.diag.errors.len();
        let af = format!("{f}.attempts");
        let attempts = match present(r.attempts) {
            None => 0,
            Some(v) => match self.int(&af, Some(v), i64::from(i32::MIN), i64::from(i32::MAX)) {
                Some(n) if n < 0 => {
                    self.error(&af, format!("attempts cannot be negative, got {n}"));
                    return None;
                }
                Some(n) => n as u32,
                None => return None,
            },
        };
        let has_others = present(r.per_try_timeout.clone()).is_some()
            || present(r.retry_on.clone()).is_some_and(|v| v != Value::String(String::new()))
            || present(r.retry_remote_localities.clone()).is_some();
        if attempts == 0 && has_others {
            self.error(
                f,
                "http retry policy configured when attempts are set to 0 (disabled)",
            );
            return None;
        }
        let per_try_timeout = self.duration(
            &format!("{f}.perTryTimeout"),
            r.per_try_timeout,
            DurationRule::AtLeastMillis,
        );
        let backoff = self.duration(
            &format!("{f}.backoff"),
            r.backoff,
            DurationRule::AtLeastMillis,
        );
        let retry_remote_localities = self
            .boolean(
                &format!("{f}.retryRemoteLocalities"),
                r.retry_remote_localities,
            )
            .unwrap_or(false);
        let retry_ignore_previous_hosts = self
            .boolean(
                &format!("{f}.retryIgnorePreviousHosts"),
                r.retry_ignore_previous_hosts,
            )
            .unwrap_or(true);
        let rf = format!("{f}.retryOn");
        let retry_on_text = self.string(&rf, r.retry_on).unwrap_or_default();
        let (mut retry_on, mut codes) = (Vec::new(), Vec::new());
        if retry_on_text.is_empty() {
            retry_on = RetryPolicy::DEFAULT_RETRY_ON.to_vec();
        } else {
            for word in retry_on_text.split(',') {
                if let Some(c) = RetryOn::parse(word) {
                    if !retry_on.contains(&c) {
                        retry_on.push(c);
                    }
                } else if let Some(code) = word
                    .parse::<i64>()
                    .ok()
                    .filter(|c| crate::actions::is_known_status(*c))
                {
                    if !codes.contains(&(code as u16)) {
                        codes.push(code as u16);
                    }
                } else {
                    self.error(&rf, format!("{word:?} is not a valid retryOn policy"));
                }
            }
            if !codes.is_empty() && !retry_on.contains(&RetryOn::RetriableStatusCodes) {
                retry_on.push(RetryOn::RetriableStatusCodes);
            }
        }
        if self.diag.errors.len() > errors {
            return None;
        }
        if attempts == 0 {
            return Some(RetryPolicy {
                backoff,
                ..RetryPolicy::disabled()
            });
        }
        Some(RetryPolicy {
            attempts,
            per_try_timeout,
            retry_on,
            retriable_status_codes: codes,
            retry_remote_localities,
            retry_ignore_previous_hosts,
            host_selection_retry_max_attempts:
                crate::actions::ISTIO_HOST_SELECTION_RETRY_MAX_ATTEMPTS,
            backoff,
            is_default: false,
        })
    }

    /// `fault`.
    pub(super) fn fault(&mut self, f: &str, fy: FaultY) -> Option<Fault> {
        self.unsupported(f, &fy.extra, schema::HTTP_FAULT_INJECTION);
        if fy.delay.is_none() && fy.abort.is_none() {
            self.error(f, "HTTP fault injection must have an abort and/or a delay");
            return None;
        }
        let errors = self.diag.errors.len();
        let delay = fy.delay.and_then(|d| {
            let df = format!("{f}.delay");
            self.unsupported(&df, &d.extra, schema::FAULT_DELAY);
            if present(d.exponential_delay).is_some() {
                self.error(
                    &format!("{df}.exponentialDelay"),
                    "exponentialDelay not supported yet",
                );
                return None;
            }
            let ff = format!("{df}.fixedDelay");
            let Some(fixed_delay) =
                self.duration(&ff, d.fixed_delay.clone(), DurationRule::AtLeastMillis)
            else {
                if present(d.fixed_delay).is_none() {
                    self.error(&df, "needs fixedDelay");
                }
                return None;
            };
            let percentage = self.fault_percentage(&df, d.percentage, d.percent, "delayed")?;
            Some(FaultDelay {
                fixed_delay,
                percentage,
            })
        });
        let abort = fy.abort.and_then(|a| {
            let af = format!("{f}.abort");
            self.unsupported(&af, &a.extra, schema::FAULT_ABORT);
            let http = present(a.http_status.clone()).is_some();
            let grpc = present(a.grpc_status.clone()).is_some();
            let h2 = present(a.http2_error).is_some();
            if usize::from(http) + usize::from(grpc) + usize::from(h2) > 1 {
                self.error(&af, "only one of httpStatus, grpcStatus or http2Error may be set");
                return None;
            }
            let abort = if http {
                let hf = format!("{af}.httpStatus");
                let s = self.int(&hf, a.http_status, i64::MIN, i64::MAX)?;
                if !(200..=599).contains(&s) {
                    self.error(&hf, format!("HTTP status {s} is not in range 200..=599"));
                    return None;
                }
                Abort::Http(s as u16)
            } else if grpc {
                let gf = format!("{af}.grpcStatus");
                let name = self.string(&gf, a.grpc_status)?;
                let Some(abort) = Abort::grpc(&name) else {
                    self.error(
                        &gf,
                        format!("gRPC status {name:?} is not supported (use a name such as UNAVAILABLE or NOT_FOUND)"),
                    );
                    return None;
                };
                abort
            } else if h2 {
                self.error(&format!("{af}.http2Error"), "HTTP/2 abort fault injection not supported yet");
                return None;
            } else {
                self.error(&af, "needs httpStatus or grpcStatus");
                return None;
            };
            let percentage = self.fault_percentage(&af, a.percentage, None, "aborted")?;
            Some(FaultAbort { abort, percentage })
        });
        if self.diag.errors.len() > errors {
            return None;
        }
        Some(Fault { delay, abort })
    }

    /// `percentage` (or the deprecated integer `percent`) of a fault; unset
    /// is 0 %, with a warning.
    fn fault_percentage(
        &mut self,
        f: &str,
        percentage: Option<PercentY>,
        percent: Scalar,
        what: &str,
    ) -> Option<Percent> {
        if let Some(p) = percentage {
            return self.percentage(&format!("{f}.percentage"), p, PercentRule::FaultRange);
        }
        if present(percent.clone()).is_some() {
            let pf = format!("{f}.percent");
            self.warn(&pf, "deprecated; use percentage.value");
            let n = self.uint(&pf, percent, 100)?;
            return Some(Percent::from_int(n as u32));
        }
        self.warn(
            f,
            format!("no percentage: no request is {what} (Istio's default); set percentage.value"),
        );
        Some(Percent::ZERO)
    }

    /// `corsPolicy`.
    pub(super) fn cors(&mut self, f: &str, c: CorsY) -> Option<Cors> {
        self.unsupported(f, &c.extra, schema::CORS_POLICY);
        let errors = self.diag.errors.len();
        let mut allow_origins = Vec::new();
        if let Some(list) = c.allow_origins {
            for (i, sm) in list.into_iter().enumerate() {
                let of = format!("{f}.allowOrigins[{i}]");
                let Some(m) = string_match(self.at, &of, sm, Place::Other, self.diag) else {
                    continue;
                };
                let empty = match &m {
                    StringMatch::Exact(s) | StringMatch::Prefix(s) => s.is_empty(),
                    StringMatch::Regex(_) => false,
                    _ => true,
                };
                if empty {
                    self.error(&of, "'' is not a valid match type for CORS allow origins");
                    continue;
                }
                allow_origins.push(m);
            }
        } else if let Some(list) = c.allow_origin {
            self.warn(
                &format!("{f}.allowOrigin"),
                "deprecated; use allowOrigins (taken as exact matches)",
            );
            allow_origins.extend(list.into_iter().map(StringMatch::Exact));
        }
        let allow_methods = c.allow_methods.unwrap_or_default();
        for (i, m) in allow_methods.iter().enumerate() {
            const METHODS: [&str; 10] = [
                "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*",
            ];
            if !METHODS.contains(&m.as_str()) {
                self.error(
                    &format!("{f}.allowMethods[{i}]"),
                    format!("{m:?} is not a supported HTTP method"),
                );
            }
        }
        let allow_headers = c.allow_headers.unwrap_or_default();
        let expose_headers = c.expose_headers.unwrap_or_default();
        for (list, name) in [
            (&allow_headers, "allowHeaders"),
            (&expose_headers, "exposeHeaders"),
        ] {
            for (i, h) in list.iter().enumerate() {
                let hf = format!("{f}.{name}[{i}]");
                if h.is_empty() {
                    self.error(&hf, "header name cannot be empty");
                } else if h != "*" && !h.chars().all(is_tchar) {
                    self.error(&hf, format!("header name {h} is not a valid header name"));
                }
            }
        }
        let mf = format!("{f}.maxAge");
        let max_age = self.duration(&mf, c.max_age, DurationRule::AtLeastMillis);
        if max_age.is_some_and(|d| d.subsec_nanos() != 0) {
            self.error(
                &mf,
                "max_age duration is accurate only to seconds precision",
            );
        }
        let allow_credentials = self
            .boolean(&format!("{f}.allowCredentials"), c.allow_credentials)
            .unwrap_or(false);
        let uf = format!("{f}.unmatchedPreflights");
        let unmatched_preflights = match self.string(&uf, c.unmatched_preflights).as_deref() {
            None | Some("UNSPECIFIED" | "FORWARD") => UnmatchedPreflights::Forward,
            Some("IGNORE") => UnmatchedPreflights::Ignore,
            Some(other) => {
                self.error(
                    &uf,
                    format!("unknown value {other:?} (use FORWARD or IGNORE)"),
                );
                UnmatchedPreflights::Forward
            }
        };
        if self.diag.errors.len() > errors {
            return None;
        }
        Some(Cors {
            allow_origins,
            allow_methods,
            allow_headers,
            expose_headers,
            max_age: max_age.map(|d| Duration::from_secs(d.as_secs())),
            allow_credentials,
            unmatched_preflights,
        })
    }
}

/// RFC 7230 token characters (istiod's `validHeaderNameRegex`).
pub(super) fn is_tchar(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// istiod `ValidateHTTPHeaderValue`: no control characters but tab, and
/// `%` only as `%%` or around an Envoy command operator (`%HOSTNAME%`), which
/// the waypoint does not expand (warned: the value is sent as written).
fn valid_value(fl: &mut Fields<'_, '_>, f: &str, value: &str) -> bool {
    if value
        .chars()
        .any(|c| (c.is_ascii_control() && c != '\t') || c == '\u{7f}')
    {
        fl.error(
            f,
            format!("header value configuration {value:?} is invalid"),
        );
        return false;
    }
    let bytes = value.as_bytes();
    let mut i = 0;
    let mut operators = false;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            i += 1;
            continue;
        }
        if bytes.get(i + 1) == Some(&b'%') {
            i += 2;
            continue;
        }
        match value[i + 1..].find('%') {
            Some(end) if end > 0 => {
                operators = true;
                i += end + 2;
            }
            _ => {
                fl.error(
                    f,
                    format!("header value configuration {value:?}: invalid header configuration. Un-escaped %"),
                );
                return false;
            }
        }
    }
    if operators {
        fl.warn(
            f,
            format!("{value:?}: Envoy command operators (%…%) are not expanded by the waypoint; sent as written"),
        );
    }
    true
}
