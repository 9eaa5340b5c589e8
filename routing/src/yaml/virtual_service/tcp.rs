//! `tcp` routes: L4 matches and destinations.

use super::*;

pub(super) fn parse_tcp_route(
    ctx: &DocCtx<'_>,
    i: usize,
    t: TcpY,
    diag: &mut Diag,
) -> Option<TcpRoute> {
    let at = &ctx.at;
    let f = format!("spec.tcp[{i}]");
    diag.unsupported(at, &format!("{f}."), &t.extra, schema::TCP_ROUTE, &[]);
    let errors_before = diag.errors.len();
    let mut matches = Vec::new();
    for (k, m) in t.matches.unwrap_or_default().into_iter().enumerate() {
        let mf = format!("{f}.match[{k}]");
        diag.unsupported(
            at,
            &format!("{mf}."),
            &m.extra,
            schema::L4_MATCH_ATTRIBUTES,
            &[],
        );
        let port = m.port.and_then(|p| diag.port(at, &format!("{mf}.port"), p));
        let mut destination_subnets = Vec::new();
        for (j, s) in m.destination_subnets.unwrap_or_default().iter().enumerate() {
            match Cidr::parse(s.trim()) {
                Ok(c) => destination_subnets.push(c),
                Err(e) => diag.error(
                    at,
                    Some(&format!("{mf}.destinationSubnets[{j}]")),
                    e.to_string(),
                ),
            }
        }
        if !destination_subnets.is_empty() {
            diag.warn(
                at,
                Some(&format!("{mf}.destinationSubnets")),
                "istiod ignores destinationSubnets at waypoints; here they match the connection's original destination IP",
            );
        }
        let source_labels = m.source_labels.unwrap_or_default();
        let source_namespace = m.source_namespace.filter(|ns| !ns.is_empty());
        if !source_labels.is_empty() || source_namespace.is_some() {
            diag.warn(
                at,
                Some(&mf),
                "istiod never matches tcp blocks with sourceLabels or sourceNamespace at waypoints; \
                 here they match the source workload when the proxy knows it",
            );
        }
        let gateways = m.gateways.unwrap_or_default();
        if !gateways.is_empty() && !gateways.iter().any(|g| g == "mesh") {
            diag.warn(
                at,
                Some(&format!("{mf}.gateways")),
                format!(
                    "[{}] does not include mesh: this match block never applies to a waypoint",
                    gateways.join(", ")
                ),
            );
        }
        matches.push(TcpMatch {
            port,
            destination_subnets,
            source_labels,
            source_namespace,
            gateways,
        });
    }
    let routes = t.route.unwrap_or_default();
    if routes.is_empty() {
        diag.error(at, Some(&format!("{f}.route")), "TCP route is required");
        return None;
    }
    let destinations = parse_destinations(ctx, &f, routes, true, diag)?;
    if diag.errors.len() > errors_before {
        return None;
    }
    Some(TcpRoute {
        name: format!("{}.tcp.{i}", ctx.name),
        matches,
        destinations,
    })
}
