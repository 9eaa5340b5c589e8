//! Route actions other than forwarding: CORS, faults, header operations, redirects and direct
//! responses.

use super::*;

/// A per-route `CorsPolicy` translated: the policy (`None`: the filter is
/// off for this route) and the fields that had to be left out.
pub(super) struct CorsTranslated {
    pub(super) policy: Option<Cors>,
    pub(super) ignored: Vec<&'static str>,
}

/// The CORS filter's per-route `CorsPolicy` (istiod `TranslateCORSPolicy`
/// writes it under `envoy.filters.http.cors`) → [`Cors`]. Envoy's list
/// fields are comma-joined strings; `max_age` is whole seconds; an unset
/// `forward_not_matching_preflights` forwards (Envoy's default).
pub(super) fn cors(c: &CorsPolicy) -> Result<CorsTranslated, Issue> {
    let mut ignored = Vec::new();
    let enabled = match &c.filter_enabled {
        None => Percent::HUNDRED,
        Some(f) => {
            if !f.runtime_key.is_empty() {
                ignored.push("filter_enabled runtime_key");
            }
            fraction(f.default_value.as_ref()).min(Percent::HUNDRED)
        }
    };
    // shadow_enabled only evaluates without enforcing: nothing to do here.
    if enabled.is_zero() {
        return Ok(CorsTranslated {
            policy: None,
            ignored,
        });
    }
    if enabled != Percent::HUNDRED {
        return Err(Issue::Unsupported(format!(
            "CORS enabled for {enabled} of requests"
        )));
    }
    let list = |s: &str| -> Vec<String> {
        s.split(',')
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect()
    };
    let max_age = match c.max_age.trim() {
        "" => None,
        secs => match secs.parse::<u64>() {
            Ok(n) => Some(Duration::from_secs(n)),
            Err(_) => {
                ignored.push("max_age that is not whole seconds");
                None
            }
        },
    };
    if c.allow_private_network_access
        .as_ref()
        .is_some_and(|b| b.value)
    {
        ignored.push("allow_private_network_access");
    }
    let policy = Cors {
        allow_origins: c
            .allow_origin_string_match
            .iter()
            .map(matchers::string_matcher)
            .collect::<Result<_, _>>()?,
        allow_methods: list(&c.allow_methods),
        allow_headers: list(&c.allow_headers),
        expose_headers: list(&c.expose_headers),
        max_age,
        allow_credentials: c.allow_credentials.as_ref().is_some_and(|b| b.value),
        unmatched_preflights: match &c.forward_not_matching_preflights {
            Some(b) if !b.value => UnmatchedPreflights::Ignore,
            _ => UnmatchedPreflights::Forward,
        },
    };
    Ok(CorsTranslated {
        policy: Some(policy),
        ignored,
    })
}

/// An `HTTPFault` (route or filter level) → [`Fault`]; `None` when it has
/// neither delay nor abort.
pub(crate) fn fault(f: &HttpFault) -> Result<Option<Fault>, Issue> {
    let delay = match &f.delay {
        None => None,
        Some(d) => match &d.fault_delay_secifier {
            Some(FaultDelaySecifier::FixedDelay(fd)) => Some(FaultDelay {
                fixed_delay: duration(fd)
                    .ok_or_else(|| Issue::Invalid("negative fault delay".into()))?,
                percentage: fraction(d.percentage.as_ref()),
            }),
            Some(FaultDelaySecifier::HeaderDelay(_)) => {
                return Err(Issue::Unsupported("header-controlled fault delay".into()))
            }
            None => return Err(Issue::Invalid("fault delay without fixed_delay".into())),
        },
    };
    let abort = match &f.abort {
        None => None,
        Some(a) => {
            let abort = match &a.error_type {
                Some(ErrorType::HttpStatus(s)) if (200..600).contains(s) => Abort::Http(*s as u16),
                Some(ErrorType::HttpStatus(s)) => {
                    return Err(Issue::Invalid(format!(
                        "fault abort status {s} not in 200..600"
                    )))
                }
                Some(ErrorType::GrpcStatus(code)) => GRPC_STATUS_CODES
                    .iter()
                    .find(|(_, c)| u32::from(*c) == *code)
                    .and_then(|(n, _)| Abort::grpc(n))
                    .ok_or_else(|| Issue::Unsupported(format!("gRPC fault status {code}")))?,
                Some(ErrorType::HeaderAbort(_)) => {
                    return Err(Issue::Unsupported("header-controlled fault abort".into()))
                }
                None => return Err(Issue::Invalid("fault abort without error type".into())),
            };
            Some(FaultAbort {
                abort,
                percentage: fraction(a.percentage.as_ref()),
            })
        }
    };
    if f.max_active_faults.is_some()
        || !f.headers.is_empty()
        || !f.downstream_nodes.is_empty()
        || f.response_rate_limit.is_some()
    {
        return Err(Issue::Unsupported(
            "fault max_active_faults / headers / downstream_nodes / response_rate_limit".into(),
        ));
    }
    if delay.is_none() && abort.is_none() {
        return Ok(None);
    }
    Ok(Some(Fault { delay, abort }))
}

/// A `FractionalPercent` as a [`Percent`]; unset = 100 % (Envoy's default
/// for faults and mirrors).
fn fraction(p: Option<&FractionalPercent>) -> Percent {
    let Some(p) = p else {
        return Percent::HUNDRED;
    };
    // DenominatorType: HUNDRED = 0, TEN_THOUSAND = 1, MILLION = 2.
    let scale: u64 = match p.denominator {
        0 => 10_000,
        1 => 100,
        _ => 1,
    };
    let per_million = (u64::from(p.numerator) * scale).min(1_000_000) as u32;
    Percent::from_per_million(per_million)
}

pub(super) fn runtime_fraction(p: Option<&RuntimeFractionalPercent>) -> Percent {
    match p {
        None => Percent::HUNDRED,
        Some(r) => fraction(r.default_value.as_ref()),
    }
}

/// Route or per-destination header operations.
pub(super) fn headers(
    req_add: &[HeaderValueOption],
    req_remove: &[String],
    resp_add: &[HeaderValueOption],
    resp_remove: &[String],
) -> Result<Headers, Issue> {
    let mut out = Headers::default();
    let (set, add, authority) = split_ops(req_add)?;
    out.authority = authority;
    out.request = HeaderOps::new(set, add, req_remove.iter().cloned());
    let (set, add, host) = split_ops(resp_add)?;
    if host.is_some() {
        return Err(Issue::Unsupported("response host header".into()));
    }
    out.response = HeaderOps::new(set, add, resp_remove.iter().cloned());
    Ok(out)
}

type Ops = Vec<(String, String)>;

// `append` is deprecated but still sent by older control planes.
#[allow(deprecated)]
fn split_ops(list: &[HeaderValueOption]) -> Result<(Ops, Ops, Option<String>), Issue> {
    let (mut set, mut add, mut authority) = (Vec::new(), Vec::new(), None);
    for o in list {
        let Some(h) = &o.header else {
            return Err(Issue::Invalid("header option without header".into()));
        };
        let value = if h.raw_value.is_empty() {
            h.value.clone()
        } else {
            String::from_utf8(h.raw_value.clone())
                .map_err(|_| Issue::Unsupported(format!("non-UTF-8 value of header {}", h.key)))?
        };
        // `append` (deprecated) wins when set; else append_action
        // (APPEND_IF_EXISTS_OR_ADD = 0, ADD_IF_ABSENT = 1,
        // OVERWRITE_IF_EXISTS_OR_ADD = 2, OVERWRITE_IF_EXISTS = 3).
        let overwrite = match o.append.as_ref().map(|b| b.value) {
            Some(append) => !append,
            None => match o.append_action {
                0 => false,
                2 => true,
                other => {
                    return Err(Issue::Unsupported(format!(
                        "append_action {other} on header {}",
                        h.key
                    )))
                }
            },
        };
        let key = h.key.to_ascii_lowercase();
        if key == "host" || key == ":authority" {
            if overwrite || authority.is_none() {
                authority = Some(value);
            }
            continue;
        }
        if overwrite {
            set.push((key, value));
        } else {
            add.push((key, value));
        }
    }
    Ok((set, add, authority))
}

pub(super) fn redirect_action(r: &RedirectAction) -> Result<Redirect, Issue> {
    let code = match r.response_code {
        0 => 301,
        1 => 302,
        2 => 303,
        3 => 307,
        4 => 308,
        other => return Err(Issue::Invalid(format!("redirect response_code {other}"))),
    };
    let scheme = match &r.scheme_rewrite_specifier {
        None | Some(SchemeRewriteSpecifier::HttpsRedirect(false)) => None,
        Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => Some("https".to_string()),
        Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => Some(s.clone()),
    };
    let path = match &r.path_rewrite_specifier {
        None => None,
        Some(PathRewriteSpecifier::PathRedirect(p)) => Some(RedirectPath::Uri(p.clone())),
        Some(PathRewriteSpecifier::PrefixRewrite(p)) => Some(RedirectPath::Prefix(p.clone())),
        Some(_) => return Err(Issue::Unsupported("redirect regex / path rewrite".into())),
    };
    let port = match r.port_redirect {
        0 => None,
        p => Some(RedirectPort::Port(u16::try_from(p).map_err(|_| {
            Issue::Invalid(format!("redirect port {p} out of range"))
        })?)),
    };
    if r.strip_query {
        return Err(Issue::Unsupported("redirect strip_query".into()));
    }
    Ok(Redirect {
        path,
        authority: (!r.host_redirect.is_empty()).then(|| r.host_redirect.clone()),
        scheme,
        port,
        code,
    })
}

pub(super) fn direct_response(d: &DirectResponseAction) -> Result<DirectResponse, Issue> {
    if !(200..600).contains(&d.status) {
        return Err(Issue::Invalid(format!(
            "direct response status {} not in 200..600",
            d.status
        )));
    }
    let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
        None => None,
        Some(Specifier::InlineString(s)) => Some(s.clone().into_bytes()),
        Some(Specifier::InlineBytes(b)) => Some(b.clone()),
        Some(_) => {
            return Err(Issue::Unsupported(
                "direct response body from a file or environment variable".into(),
            ))
        }
    };
    if d.body_format.is_some() {
        return Err(Issue::Unsupported("direct response body_format".into()));
    }
    Ok(DirectResponse {
        status: d.status as u16,
        body,
    })
}
