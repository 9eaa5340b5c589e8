//! `http` routes: matches, destinations, actions, mirrors and timeout of one route;
//! unreachable-route warnings.

use super::*;

pub(super) fn parse_route(
    ctx: &DocCtx<'_>,
    i: usize,
    h: HttpY,
    mesh: bool,
    diag: &mut Diag,
) -> Option<(HttpRoute, Vec<String>)> {
    let at = &ctx.at;
    let f = format!("spec.http[{i}]");
    diag.unsupported(at, &format!("{f}."), &h.extra, schema::VS_HTTP_ROUTE, &[]);
    let matches: Vec<RouteMatch> = h
        .matches
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(k, m)| parse_match(at, &format!("{f}.match[{k}]"), m, mesh, diag))
        .collect();
    let routes = h.route.unwrap_or_default();
    let errors_before = diag.errors.len();
    let redirect = h.redirect.is_some();
    let direct = h.direct_response.is_some();
    if h.delegate.is_some() {
        // istiod validateHTTPRouteConflict (root route)
        if redirect {
            diag.error(
                at,
                Some(&f),
                "a route with delegate must not specify redirect",
            );
        }
        if !routes.is_empty() {
            diag.error(at, Some(&f), "a route with delegate must not specify route");
        }
        if diag.errors.len() == errors_before {
            diag.warn(
                at,
                Some(&format!("{f}.delegate")),
                "delegation is not supported at a waypoint; route skipped",
            );
        }
        return None;
    }
    // istiod validateHTTPRouteConflict
    let exclusive = |diag: &mut Diag, what: &str| {
        diag.error(at, Some(&f), format!("{what} are exclusive"));
    };
    if redirect && !routes.is_empty() {
        exclusive(diag, "redirect and route");
    }
    if direct && !routes.is_empty() {
        exclusive(diag, "directResponse and route");
    }
    if redirect && direct {
        exclusive(diag, "redirect and directResponse");
    }
    let answer = if redirect {
        "redirect"
    } else {
        "directResponse"
    };
    if (redirect || direct) && h.fault.is_some() {
        exclusive(diag, &format!("fault and {answer}"));
    }
    if (redirect || direct) && h.rewrite.is_some() {
        exclusive(diag, &format!("rewrite and {answer}"));
    }
    if !redirect && !direct && routes.is_empty() {
        diag.error(
            at,
            Some(&format!("{f}.route")),
            "at least one destination is required (or a redirect or directResponse)",
        );
    }
    if h.mirror.is_some() && h.mirrors.as_ref().is_some_and(|m| !m.is_empty()) {
        exclusive(diag, "mirror and mirrors");
    }
    if diag.errors.len() > errors_before {
        return None;
    }
    let forwards = !redirect && !direct;
    let mut fl = Fields { at, diag };
    if !forwards {
        for (field, set) in [
            ("timeout", present(h.timeout.clone()).is_some()),
            ("retries", h.retries.is_some()),
            ("mirror", h.mirror.is_some()),
            ("mirrors", h.mirrors.is_some()),
        ] {
            if set {
                fl.warn(
                    &format!("{f}.{field}"),
                    format!("has no effect on a {answer} (nothing is forwarded); ignored"),
                );
            }
        }
    }
    let action = if let Some(r) = h.redirect {
        fl.redirect(&format!("{f}.redirect"), r, &matches)
            .map(|r| RouteAction::Redirect(Box::new(r)))
    } else if let Some(d) = h.direct_response {
        fl.direct_response(&format!("{f}.directResponse"), d)
            .map(|d| RouteAction::DirectResponse(Box::new(d)))
    } else {
        Some(RouteAction::Route)
    };
    let rewrite = h
        .rewrite
        .and_then(|r| fl.rewrite(&format!("{f}.rewrite"), r));
    let headers = match h.headers {
        Some(hy) => fl.headers(&format!("{f}.headers"), hy, true),
        None => Some(Headers::default()),
    };
    if let (Some(r), Some(hd)) = (&rewrite, &headers) {
        if let (Some(a), Some(b)) = (&r.authority, &hd.authority) {
            fl.error(
                &f,
                format!("authority header cannot be set multiple times: have {a:?} (rewrite.authority), attempting to set {b:?} (headers.request)"),
            );
        }
        if let Some(UriRewrite::Prefix(p)) = &r.uri {
            let implicit = matches.is_empty()
                || matches
                    .iter()
                    .any(|m| matches!(m.uri, None | Some(StringMatch::Present)));
            if implicit && !p.ends_with('/') {
                fl.warn(
                    &format!("{f}.rewrite.uri"),
                    format!("replaces the prefix \"/\" of requests matched without a uri condition (Envoy prefix_rewrite): /a becomes {p}a"),
                );
            }
        }
    }
    let timeout = if forwards {
        route_timeout(&mut fl, &format!("{f}.timeout"), h.timeout)
    } else {
        None
    };
    let retries = if forwards {
        fl.retries(&format!("{f}.retries"), h.retries)
    } else {
        Some(RetryPolicy::disabled())
    };
    let fault = h.fault.and_then(|fy| fl.fault(&format!("{f}.fault"), fy));
    let cors = h
        .cors_policy
        .and_then(|c| fl.cors(&format!("{f}.corsPolicy"), c));
    let mut mirrors = Vec::new();
    let mut mirror_fields = Vec::new();
    let pct_set = h.mirror_percentage.is_some() || present(h.mirror_percent.clone()).is_some();
    if let (Some(m), true) = (h.mirror, forwards) {
        let mf = format!("{f}.mirror");
        let pct = if let Some(p) = h.mirror_percentage {
            fl.percentage(&format!("{f}.mirrorPercentage"), p, PercentRule::Range)
        } else if present(h.mirror_percent.clone()).is_some() {
            let pf = format!("{f}.mirrorPercent");
            fl.warn(&pf, "deprecated; use mirrorPercentage");
            fl.uint(&pf, h.mirror_percent, 100)
                .map(|n| Percent::from_int(n as u32))
        } else {
            Some(Percent::HUNDRED)
        };
        let dest = parse_destination(ctx, &mf, m, fl.diag);
        if let (Some((host, subset, port)), Some(percentage)) = (dest, pct) {
            if push_mirror(&mut fl, &mf, &mut mirrors, host, subset, port, percentage) {
                mirror_fields.push(mf);
            }
        }
    } else if pct_set && forwards {
        fl.warn(
            &format!("{f}.mirrorPercentage"),
            "has no effect without mirror; ignored",
        );
    }
    for (k, mp) in h.mirrors.unwrap_or_default().into_iter().enumerate() {
        if !forwards {
            break;
        }
        let mf = format!("{f}.mirrors[{k}]");
        fl.unsupported(&mf, &mp.extra, schema::HTTP_MIRROR_POLICY);
        let df = format!("{mf}.destination");
        let Some(d) = fl.diag.required(at, &df, mp.destination) else {
            continue;
        };
        let dest = parse_destination(ctx, &df, d, fl.diag);
        let pct = match mp.percentage {
            Some(p) => fl.percentage(&format!("{mf}.percentage"), p, PercentRule::Range),
            None => Some(Percent::HUNDRED),
        };
        if let (Some((host, subset, port)), Some(percentage)) = (dest, pct) {
            if push_mirror(&mut fl, &mf, &mut mirrors, host, subset, port, percentage) {
                mirror_fields.push(df);
            }
        }
    }
    let destinations = if routes.is_empty() {
        Vec::new()
    } else {
        parse_destinations(ctx, &f, routes, false, diag)?
    };
    if diag.errors.len() > errors_before {
        return None;
    }
    let route = HttpRoute {
        name: h.name.unwrap_or_else(|| format!("{}.{i}", ctx.name)),
        matches,
        destinations,
        action: action?,
        rewrite: rewrite.map(Box::new),
        headers: headers?,
        timeout,
        retries: retries?.shared(),
        fault: fault.map(Box::new),
        mirrors,
        cors: cors.map(Box::new),
    };
    Some((route, mirror_fields))
}

/// A mirror, unless its percentage is 0 (istiod builds no mirror policy
/// then). True when it was added.
fn push_mirror(
    fl: &mut Fields<'_, '_>,
    f: &str,
    mirrors: &mut Vec<Mirror>,
    host: String,
    subset: Option<String>,
    port: Option<u16>,
    percentage: Percent,
) -> bool {
    if percentage.is_zero() {
        fl.warn(f, "percentage 0: nothing is mirrored; ignored");
        return false;
    }
    mirrors.push(Mirror {
        host,
        subset,
        port,
        percentage,
    });
    true
}

/// `timeout`: ≥ 1ms at millisecond precision (the CRD and istiod), or `0s`,
/// accepted with a warning as "no timeout" (what Envoy makes of 0).
fn route_timeout(fl: &mut Fields<'_, '_>, f: &str, v: Scalar) -> Option<Duration> {
    let d = fl.duration(f, v.clone(), DurationRule::NonNegative)?;
    if d.is_zero() {
        fl.warn(
            f,
            "0s: no timeout (Envoy's reading of 0; Kubernetes rejects it: the CRD requires ≥ 1ms — leave timeout out instead)",
        );
        return None;
    }
    fl.duration(f, v, DurationRule::AtLeastMillis)
}

/// Does this block match every request on every port?
fn is_catch_all(m: &RouteMatch) -> bool {
    let any_uri = match &m.uri {
        None | Some(StringMatch::Present) => true,
        Some(StringMatch::Prefix(p)) => p.is_empty() || p == "/",
        Some(StringMatch::Regex(r)) => r.as_str() == ".*",
        Some(_) => false,
    };
    any_uri
        && m.scheme.is_none()
        && m.method.is_none()
        && m.authority.is_none()
        && m.headers.is_empty()
        && m.without_headers.is_empty()
        && m.query_params.is_empty()
        && m.port.is_none()
        && m.source_labels.is_empty()
        && m.source_namespace.is_none()
        && m.gateways.is_empty()
}

/// Routes after one that matches everything are never used (istiod warns too:
/// `VirtualServiceUnreachableRule`).
pub(super) fn warn_unreachable(
    at: &DocRef,
    http: &[std::sync::Arc<HttpRoute>],
    source_index: &[usize],
    diag: &mut Diag,
) {
    let Some(k) = http
        .iter()
        .position(|r| r.matches.is_empty() || r.matches.iter().any(is_catch_all))
    else {
        return;
    };
    for &i in &source_index[k + 1..] {
        diag.warn(
            at,
            Some(&format!("spec.http[{i}]")),
            format!(
                "route not used: spec.http[{}] before it matches every request",
                source_index[k]
            ),
        );
    }
}
