//! One HTTPRoute rule: filters (headers, redirect, rewrite, mirror), backendRefs and timeouts.

use super::*;

/// GEP-2257 duration: 1–4 of `<digits>(h|m|s|ms)`.
fn duration(s: &str) -> Option<Duration> {
    let mut rest = s;
    let mut total = Duration::ZERO;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(n), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(n * 3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(n * 60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(n), 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total += unit;
        parts += 1;
    }
    (1..=4).contains(&parts).then_some(total)
}

/// An `HTTPHeaderFilter` at `f`.
fn header_ops(at: &DocRef, f: &str, h: HeaderModY, diag: &mut Diag) -> HeaderOps {
    diag.unsupported(
        at,
        &format!("{f}."),
        &h.extra,
        schema::HTTP_HEADER_FILTER,
        &[],
    );
    let mut pairs = |list: Option<Vec<HeaderValueY>>, what: &str| -> Vec<(String, String)> {
        let list = list.unwrap_or_default().into_iter().enumerate();
        list.map(|(k, v)| {
            let vf = format!("{f}.{what}[{k}].");
            diag.unsupported(at, &vf, &v.extra, schema::HTTP_HEADER, &[]);
            (v.name, v.value)
        })
        .collect()
    };
    let set = pairs(h.set, "set");
    let add = pairs(h.add, "add");
    HeaderOps::new(set, add, h.remove.unwrap_or_default())
}

/// A backend reference → (FQDN, port); reports missing fields.
fn backend(ctx: &DocCtx<'_>, f: &str, b: &BackendRefY, diag: &mut Diag) -> Option<(String, u16)> {
    let at = &ctx.at;
    let kind = b.kind.as_deref().unwrap_or("Service");
    if kind != "Service" || !is_core(&b.group) {
        diag.error(
            at,
            Some(f),
            format!("backend kind {kind} is not supported (use Service)"),
        );
        return None;
    }
    let name = diag.required(at, &format!("{f}.name"), b.name.clone())?;
    let port = diag.required(at, &format!("{f}.port"), b.port)?;
    let port = diag.port(at, &format!("{f}.port"), port)?;
    let ns = b.namespace.clone().unwrap_or_else(|| ctx.namespace.clone());
    Some((expand_host(&name, &ns), port))
}

type RuleOut = (HttpRoute, (Vec<String>, Vec<String>));

pub(super) fn parse_rule(ctx: &DocCtx<'_>, i: usize, r: RuleY, diag: &mut Diag) -> Option<RuleOut> {
    let at = &ctx.at;
    let f = format!("spec.rules[{i}]");
    diag.unsupported(at, &format!("{f}."), &r.extra, schema::HTTP_ROUTE_RULE, &[]);
    let matches: Vec<RouteMatch> = r
        .matches
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(k, m)| parse_match(ctx, &format!("{f}.matches[{k}]"), m, diag))
        .collect();
    let name = r.name.unwrap_or_else(|| format!("{}.{i}", ctx.name));
    let mut route = HttpRoute::new(name, matches, Vec::new());
    let mut mirror_fields = Vec::new();
    let mut redirect = None;
    for (k, flt) in r.filters.unwrap_or_default().into_iter().enumerate() {
        let ff = format!("{f}.filters[{k}]");
        diag.unsupported(
            at,
            &format!("{ff}."),
            &flt.extra,
            schema::HTTP_ROUTE_FILTER,
            &[],
        );
        let kind = flt.kind.clone().unwrap_or_default();
        match kind.as_str() {
            "RequestHeaderModifier" => {
                if let Some(h) = flt.request_header_modifier {
                    let hf = format!("{ff}.requestHeaderModifier");
                    route.headers.request = header_ops(at, &hf, h, diag);
                }
            }
            "ResponseHeaderModifier" => {
                if let Some(h) = flt.response_header_modifier {
                    let hf = format!("{ff}.responseHeaderModifier");
                    route.headers.response = header_ops(at, &hf, h, diag);
                }
            }
            "RequestRedirect" => {
                let Some(rd) = flt.request_redirect else {
                    continue;
                };
                let rf = format!("{ff}.requestRedirect");
                let known = schema::HTTP_REQUEST_REDIRECT_FILTER;
                diag.unsupported(at, &format!("{rf}."), &rd.extra, known, &[]);
                let code = rd.status_code.unwrap_or(302);
                if ![301, 302, 303, 307, 308].contains(&code) {
                    diag.error(
                        at,
                        Some(&format!("{ff}.requestRedirect.statusCode")),
                        format!("{code} is not a redirect status (301, 302, 303, 307 or 308)"),
                    );
                    continue;
                }
                let port = match rd.port {
                    Some(p) => diag
                        .port(at, &format!("{ff}.requestRedirect.port"), p)
                        .map(RedirectPort::Port),
                    None => rd
                        .scheme
                        .as_ref()
                        .map(|_| RedirectPort::FromProtocolDefault),
                };
                let pf = format!("{ff}.requestRedirect.path");
                let path = match rd.path {
                    Some(p) => path_mod(at, &pf, p, diag).and_then(|(full, v)| {
                        if full {
                            Some(crate::actions::RedirectPath::Uri(v))
                        } else {
                            let rewrite = prefix_rewrite(&route.matches, &v);
                            if rewrite.is_none() {
                                diag.error(
                                    at,
                                    Some(&pf),
                                    "ReplacePrefixMatch needs the rule to match one PathPrefix",
                                );
                            }
                            rewrite.map(crate::actions::RedirectPath::Regex)
                        }
                    }),
                    None => None,
                };
                redirect = Some(Redirect {
                    path,
                    authority: rd.hostname,
                    scheme: rd.scheme,
                    port,
                    code: code as u16,
                });
            }
            "URLRewrite" => {
                let Some(u) = flt.url_rewrite else { continue };
                let uf = format!("{ff}.urlRewrite");
                let known = schema::HTTP_URL_REWRITE_FILTER;
                diag.unsupported(at, &format!("{uf}."), &u.extra, known, &[]);
                let uri = match u.path {
                    Some(p) => path_mod(at, &format!("{ff}.urlRewrite.path"), p, diag).and_then(
                        |(full, v)| {
                            if full {
                                // Whole path replaced, query kept.
                                RegexRewrite::new("^.*$", &v.replace('\\', "\\\\"))
                                    .ok()
                                    .map(UriRewrite::Regex)
                            } else {
                                prefix_rewrite(&route.matches, &v).map(UriRewrite::Regex)
                            }
                        },
                    ),
                    None => None,
                };
                if uri.is_some() || u.hostname.is_some() {
                    route.rewrite = Some(Box::new(Rewrite {
                        uri,
                        authority: u.hostname,
                    }));
                }
            }
            "RequestMirror" => {
                let Some(m) = flt.request_mirror else {
                    continue;
                };
                let known = schema::HTTP_REQUEST_MIRROR_FILTER;
                diag.unsupported(at, &format!("{ff}.requestMirror."), &m.extra, known, &[]);
                let mf = format!("{ff}.requestMirror.backendRef");
                let Some(b) = diag.required(at, &mf, m.backend_ref) else {
                    continue;
                };
                let known = schema::BACKEND_OBJECT_REFERENCE;
                diag.unsupported(at, &format!("{mf}."), &b.extra, known, &[]);
                let Some((host, port)) = backend(ctx, &mf, &b, diag) else {
                    continue;
                };
                let percentage = m
                    .percent
                    .and_then(Percent::from_value)
                    .unwrap_or(Percent::HUNDRED);
                route.mirrors.push(Mirror {
                    host,
                    subset: None,
                    port: Some(port),
                    percentage,
                });
                mirror_fields.push(mf);
            }
            other => diag.warn(
                at,
                Some(&format!("{ff}.type")),
                format!("filter {other} is not supported; ignored"),
            ),
        }
    }
    if let Some(t) = r.timeouts {
        let known = schema::HTTP_ROUTE_TIMEOUTS;
        diag.unsupported(at, &format!("{f}.timeouts."), &t.extra, known, &[]);
        for (v, which) in [
            (&t.request, "request"),
            (&t.backend_request, "backendRequest"),
        ] {
            let Some(v) = v else { continue };
            let Some(d) = duration(v) else {
                diag.error(
                    at,
                    Some(&format!("{f}.timeouts.{which}")),
                    format!("invalid duration {v:?}"),
                );
                continue;
            };
            let d = (!d.is_zero()).then_some(d);
            if which == "request" {
                route.timeout = d;
            } else {
                let mut retries = (*route.retries).clone();
                retries.per_try_timeout = d;
                route.retries = retries.shared();
            }
        }
    }
    let mut dest_fields = Vec::new();
    if let Some(rd) = redirect {
        route.action = RouteAction::Redirect(Box::new(rd));
        route.retries = crate::actions::RetryPolicy::disabled().shared();
    } else {
        for (j, b) in r.backend_refs.unwrap_or_default().into_iter().enumerate() {
            let bf = format!("{f}.backendRefs[{j}]");
            diag.unsupported(
                at,
                &format!("{bf}."),
                &b.extra,
                schema::HTTP_BACKEND_REF,
                &[],
            );
            let Some((host, port)) = backend(ctx, &bf, &b, diag) else {
                continue;
            };
            let weight = b.weight.unwrap_or(1);
            if !(0..=1_000_000).contains(&weight) {
                diag.error(
                    at,
                    Some(&format!("{bf}.weight")),
                    format!("{weight} out of range 0..1000000"),
                );
                continue;
            }
            let mut headers = Headers::default();
            for (k, flt) in b.filters.unwrap_or_default().into_iter().enumerate() {
                let ff = format!("{bf}.filters[{k}]");
                diag.unsupported(
                    at,
                    &format!("{ff}."),
                    &flt.extra,
                    schema::HTTP_ROUTE_FILTER,
                    &[],
                );
                match (
                    flt.kind.as_deref().unwrap_or(""),
                    flt.request_header_modifier,
                    flt.response_header_modifier,
                ) {
                    ("RequestHeaderModifier", Some(h), _) => {
                        let hf = format!("{ff}.requestHeaderModifier");
                        headers.request = header_ops(at, &hf, h, diag);
                    }
                    ("ResponseHeaderModifier", _, Some(h)) => {
                        let hf = format!("{ff}.responseHeaderModifier");
                        headers.response = header_ops(at, &hf, h, diag);
                    }
                    (other, _, _) => diag.warn(
                        at,
                        Some(&format!("{ff}.type")),
                        format!("backend filter {other} is not supported; ignored"),
                    ),
                }
            }
            if weight == 0 {
                continue;
            }
            route.destinations.push(RouteDestination {
                host,
                subset: None,
                port: Some(port),
                weight: weight as u32,
                headers,
            });
            dest_fields.push(bf);
        }
        if route.destinations.is_empty() {
            // Gateway API: no (or only zero-weight) backends → HTTP 500.
            route.action = RouteAction::DirectResponse(Box::new(DirectResponse {
                status: 500,
                body: None,
            }));
            route.retries = crate::actions::RetryPolicy::disabled().shared();
        }
    }
    Some((route, (dest_fields, mirror_fields)))
}

/// `(true, ReplaceFullPath)` or `(false, ReplacePrefixMatch)`.
fn path_mod(at: &DocRef, f: &str, p: PathModY, diag: &mut Diag) -> Option<(bool, String)> {
    diag.unsupported(
        at,
        &format!("{f}."),
        &p.extra,
        schema::HTTP_PATH_MODIFIER,
        &[],
    );
    match p.kind.as_deref() {
        Some("ReplaceFullPath") => diag
            .required(at, &format!("{f}.replaceFullPath"), p.replace_full_path)
            .map(|v| (true, v)),
        Some("ReplacePrefixMatch") => diag
            .required(
                at,
                &format!("{f}.replacePrefixMatch"),
                p.replace_prefix_match,
            )
            .map(|v| (false, v)),
        other => {
            diag.error(
                at,
                Some(&format!("{f}.type")),
                format!(
                    "unknown path modifier type {} (use ReplaceFullPath or ReplacePrefixMatch)",
                    other.unwrap_or("<missing>")
                ),
            );
            None
        }
    }
}

/// `ReplacePrefixMatch`: needs exactly one PathPrefix value across the
/// rule's matches; replaces that segment prefix (Gateway API: `/foo` →
/// `/bar` turns `/foo/x` into `/bar/x`; → `/` turns it into `/x`).
fn prefix_rewrite(matches: &[RouteMatch], replacement: &str) -> Option<RegexRewrite> {
    let prefix = match matches.first().and_then(|m| m.uri.as_ref()) {
        None | Some(StringMatch::Prefix(_)) => String::new(),
        Some(StringMatch::Regex(r)) => r.as_str().strip_suffix("(/.*)?")?.to_string(),
        Some(_) => return None,
    };
    let repl = replacement.trim_end_matches('/').replace('\\', "\\\\");
    if repl.is_empty() {
        RegexRewrite::new(&format!("^{prefix}/?"), "/").ok()
    } else {
        RegexRewrite::new(&format!("^{prefix}"), &repl).ok()
    }
}
