//! Generated requests, and the checks of a loaded valid configuration.

use super::*;

// ---------------------------------------------------------------------------
// Requests
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub(crate) struct RequestG {
    pub(crate) path: usize,
    pub(crate) query: Option<(usize, usize)>,
    pub(crate) raw_path: Option<String>,
    pub(crate) headers: Vec<(usize, usize)>,
    pub(crate) method: usize,
    pub(crate) https: bool,
    pub(crate) authority: bool,
    pub(crate) source: Option<(usize, u8)>,
}

pub(crate) fn request_g() -> impl Strategy<Value = RequestG> {
    (
        0..PATHS.len(),
        proptest::option::of((0..QUERY_NAMES.len(), 0..HEADER_VALUES.len())),
        proptest::option::weighted(0.2, "[ -~]{0,16}"),
        prop::collection::vec((0..HEADER_NAMES.len(), 0..HEADER_VALUES.len()), 0..=3),
        0..METHODS.len(),
        any::<bool>(),
        any::<bool>(),
        proptest::option::of((0..NAMESPACES.len(), 1u8..=3)),
    )
        .prop_map(
            |(path, query, raw_path, headers, method, https, authority, source)| RequestG {
                path,
                query,
                raw_path,
                headers,
                method,
                https,
                authority,
                source,
            },
        )
}

pub(crate) fn build_request(r: &RequestG, host: &str, port: u16) -> SimpleRequest {
    let mut path = r
        .raw_path
        .clone()
        .unwrap_or_else(|| PATHS[r.path].to_string());
    if let Some((n, v)) = r.query {
        let _ = write!(path, "?{}={}", QUERY_NAMES[n], HEADER_VALUES[v]);
    }
    let mut req = SimpleRequest::new(path).with_method(METHODS[r.method]);
    for (h, v) in &r.headers {
        req = req.with_header(HEADER_NAMES[*h], HEADER_VALUES[*v]);
    }
    if r.https {
        req = req.with_scheme("https");
    }
    if r.authority {
        req = req.with_authority(format!("{host}:{port}"));
    }
    if let Some((ns, v)) = r.source {
        req = req
            .with_source_namespace(NAMESPACES[ns])
            .with_source_labels([("version", format!("v{v}"))]);
    }
    req.with_port(port)
}

// ---------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------

pub(crate) fn dump(files: &[(String, String)]) -> String {
    files
        .iter()
        .map(|(n, t)| format!("==> {n} <==\n{t}"))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(crate) fn load_valid(r: &Rendered) -> Snapshot {
    match load_str(&r.files, exercise::TRUST_DOMAIN) {
        Ok(s) => s,
        Err(e) => panic!(
            "generated config failed to load:\n{e}\n\n{}",
            dump(&r.files)
        ),
    }
}

/// Route `req` for (service, port) and check the decision.
pub(crate) fn check_route(s: &Snapshot, r: &Rendered, host: &str, port: u16, req: &SimpleRequest) {
    let svc = s
        .service_by_host(host)
        .unwrap_or_else(|| panic!("service {host} not found"));
    assert_eq!(svc.hostname, host);
    match s.route(svc, port, req) {
        RouteDecision::Route {
            virtual_service,
            route_index,
            route,
        } => {
            let vs = s
                .virtual_services()
                .iter()
                .find(|v| v.id() == virtual_service)
                .unwrap_or_else(|| panic!("route from unknown VirtualService {virtual_service}"));
            assert!(
                vs.hosts.iter().any(|h| h == host),
                "{virtual_service} does not name {host}"
            );
            assert_eq!(
                vs.http.get(route_index).map(|r| &**r),
                Some(&**route),
                "route index {route_index}"
            );
            assert!(
                !route.destinations.is_empty(),
                "route {} has no destination",
                route.name
            );
            for d in &route.destinations {
                let p = d.port.unwrap_or(port);
                assert!(
                    s.cluster(&d.host, p, d.subset.as_deref()).is_some(),
                    "route {} of {virtual_service}: no cluster for {} port {p} subset {:?}\n{}",
                    route.name,
                    d.host,
                    d.subset,
                    dump(&r.files)
                );
                assert!(d.weight > 0 || route.destinations.len() == 1);
            }
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
            assert!(routing::pick_weighted(&route.destinations, &mut rng).is_some());
        }
        RouteDecision::Default => {
            assert!(
                s.cluster(host, port, None).is_some(),
                "no default cluster {host}:{port}"
            );
        }
        RouteDecision::NoRoute => {
            assert!(
                r.routed.contains(host),
                "NoRoute for {host}, which no VirtualService names"
            );
        }
    }
}

pub(crate) fn check_valid(cfg: &ConfigG, reqs: &[RequestG]) {
    let r = render(cfg);
    let s = load_valid(&r);
    assert_eq!(s.services().count(), r.services.len(), "{}", dump(&r.files));
    for (host, ports) in &r.services {
        if !r.routed.contains(host) {
            let svc = s
                .service_by_host(host)
                .unwrap_or_else(|| panic!("{host} missing"));
            assert!(matches!(
                s.route(svc, ports[0], &SimpleRequest::new("/")),
                RouteDecision::Default
            ));
        }
        for &port in ports {
            assert!(
                s.cluster(host, port, None).is_some(),
                "no cluster {host}:{port}"
            );
            for req in reqs {
                check_route(&s, &r, host, port, &build_request(req, host, port));
            }
        }
    }
    exercise::exercise_snapshot(&s);
}
