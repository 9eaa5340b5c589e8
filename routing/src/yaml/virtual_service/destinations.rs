//! `Destination`s and the weighted `route` list of http and tcp routes.

use super::*;

/// A `Destination`: (expanded host, subset, port).
pub(super) fn parse_destination(
    ctx: &DocCtx<'_>,
    df: &str,
    d: DestinationY,
    diag: &mut Diag,
) -> Option<(String, Option<String>, Option<u16>)> {
    let at = &ctx.at;
    diag.unsupported(at, &format!("{df}."), &d.extra, schema::DESTINATION, &[]);
    let host = diag.required(at, &format!("{df}.host"), d.host);
    if host.as_deref() == Some("*") {
        diag.error(
            at,
            Some(&format!("{df}.host")),
            "invalid destination host *",
        );
        return None;
    }
    let port = match d.port {
        None => Some(None),
        Some(p) => {
            diag.unsupported(
                at,
                &format!("{df}.port."),
                &p.extra,
                schema::PORT_SELECTOR,
                &[],
            );
            let n = diag.required(at, &format!("{df}.port.number"), p.number);
            n.and_then(|n| diag.port(at, &format!("{df}.port.number"), n))
                .map(Some)
        }
    };
    Some((expand_host(&host?, &ctx.namespace), d.subset, port?))
}

/// `route` of an http (`tcp == false`) or tcp route.
pub(super) fn parse_destinations(
    ctx: &DocCtx<'_>,
    f: &str,
    routes: Vec<RouteY>,
    tcp: bool,
    diag: &mut Diag,
) -> Option<Vec<RouteDestination>> {
    let at = &ctx.at;
    let n = routes.len();
    let mut out = Vec::with_capacity(n);
    let mut ok = true;
    for (j, r) in routes.into_iter().enumerate() {
        let rf = format!("{f}.route[{j}]");
        let known = if tcp {
            schema::ROUTE_DESTINATION
        } else {
            schema::HTTP_ROUTE_DESTINATION
        };
        diag.unsupported(at, &format!("{rf}."), &r.extra, known, &[]);
        // istiod (validateHTTPRouteDestinations): weights are int32 >= 0; a
        // missing weight is 0; a lone destination gets all requests whatever
        // its weight (route.go gives it a plain cluster, no weighted clusters).
        let weight = match r.weight {
            Some(w) if !(0..=i64::from(i32::MAX)).contains(&w) => {
                diag.error(
                    at,
                    Some(&format!("{rf}.weight")),
                    format!("weight {w} out of range 0..{}", i32::MAX),
                );
                None
            }
            Some(w) if n == 1 && w != 100 => {
                diag.warn(
                    at,
                    Some(&format!("{rf}.weight")),
                    format!("weight {w} of the only destination has no effect; it receives all requests"),
                );
                Some(100)
            }
            _ if n == 1 => Some(100),
            None => Some(0),
            Some(w) => u32::try_from(w).ok(),
        };
        let headers = match r.headers {
            None => Some(Headers::default()),
            Some(_) if tcp => {
                diag.warn(
                    at,
                    Some(&format!("{rf}.headers")),
                    "is not supported on tcp routes; ignored",
                );
                Some(Headers::default())
            }
            Some(hy) => Fields { at, diag }.headers(&format!("{rf}.headers"), hy, false),
        };
        let Some(d) = diag.required(at, &format!("{rf}.destination"), r.destination) else {
            ok = false;
            continue;
        };
        let dest = parse_destination(ctx, &format!("{rf}.destination"), d, diag);
        match (dest, weight, headers) {
            (Some((host, subset, port)), Some(weight), Some(headers)) => {
                out.push(RouteDestination {
                    host,
                    subset,
                    port,
                    weight,
                    headers,
                })
            }
            _ => ok = false,
        }
    }
    if !ok {
        return None;
    }
    let total: u64 = out.iter().map(|d| u64::from(d.weight)).sum();
    if n > 1 && total == 0 {
        diag.error(
            at,
            Some(&format!("{f}.route")),
            "all weights are zero (total destination weight = 0)",
        );
        return None;
    }
    if n > 1 && total != 100 {
        diag.warn(
            at,
            Some(&format!("{f}.route")),
            format!("weights sum to {total}, not 100: each destination receives weight/{total} of the requests"),
        );
    }
    // Zero-weight destinations are dropped once their references are checked (assemble).
    Some(out)
}
