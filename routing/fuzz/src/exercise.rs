//! What the `yaml_front_end` fuzz target does with one input, shared with the
//! stable-Rust harness `routing/tests/proptest_yaml/` (included in main.rs with
//! `#[path]`), so the seed corpus runs through the same code on every
//! `cargo test`.
//!
//! Loads the input through `routing::load_str` (whole, and split into 1–3
//! files), checks that every error names one of the files, and on success
//! drives the snapshot: `route()` and `explain_route()` for every service
//! port with a few requests (some built to satisfy the routes' own match
//! blocks), every cluster's picks and hashes, `to_json()` and
//! `carry_over_state()`. It must never panic; the `assert!`s are invariants
//! of the public API, so a failing one is a finding too.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::SeedableRng;
use routing::{
    pick_weighted, Destination, LoadErrors, Outcome, PoolResource, RequestView, RouteDecision,
    RouteMatch, Service, SimpleHashRequest, SimpleRequest, Snapshot, StringMatch,
};
use std::net::SocketAddr;
use std::time::Instant;

/// Trust domain used for every load.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// Upper bounds so one input stays cheap.
const MAX_ROUTES: usize = 8;
const MAX_BLOCKS: usize = 4;
const MAX_SERVICES: usize = 16;
const MAX_CLUSTERS: usize = 64;

/// One fuzz input: arbitrary bytes.
pub fn exercise_bytes(data: &[u8]) {
    let text = String::from_utf8_lossy(data).into_owned();
    // 1. Everything as one file.
    let whole = check_load(&[("fuzz.yaml".to_string(), text.clone())]);
    // 2. Split into 1–3 files: the documents (at `---` lines) dealt round-robin.
    let n = 1 + data.first().map_or(0, |b| usize::from(*b % 3));
    let by_docs = check_load(&split_by_documents(&text, n));
    // 3. Split at arbitrary character positions (documents cut in two).
    let cut = check_load(&split_at_positions(&text, data));
    if let (Ok(prev), Ok(mut next)) = (whole, by_docs) {
        next.carry_over_state(&prev);
        exercise_snapshot(&next);
    }
    drop(cut);
}

/// Load, check the errors, and drive the snapshot when it loads.
pub fn check_load(files: &[(String, String)]) -> Result<Snapshot, LoadErrors> {
    let result = routing::load_str(files, TRUST_DOMAIN);
    match &result {
        Ok(s) => exercise_snapshot(s),
        Err(e) => check_errors(files, e),
    }
    result
}

/// Every error names one of the loaded files, and its message starts with it.
pub fn check_errors(files: &[(String, String)], errors: &LoadErrors) {
    assert!(!errors.is_empty(), "Err(LoadErrors) without any error");
    for e in errors.iter() {
        assert!(
            files.iter().any(|(name, _)| *name == e.at.file),
            "error names no loaded file: {e} (file {:?})",
            e.at.file
        );
        let line = e.to_string();
        assert!(
            line.starts_with(&e.at.file),
            "error text does not start with its file: {line}"
        );
    }
    let _ = errors.to_string();
}

/// Documents (at `---` marker lines) dealt round-robin into `n` files.
pub fn split_by_documents(text: &str, n: usize) -> Vec<(String, String)> {
    let n = n.clamp(1, 3);
    let mut files = vec![String::new(); n];
    let mut doc = 0usize;
    for line in text.split_inclusive('\n') {
        if line.starts_with("---") && !files.iter().all(String::is_empty) {
            doc += 1;
        }
        files[doc % n].push_str(line);
    }
    name_files(files)
}

/// Cut `text` into 1–3 files at character positions chosen from `seed`.
pub fn split_at_positions(text: &str, seed: &[u8]) -> Vec<(String, String)> {
    let len = text.len();
    let byte = |i: usize| seed.get(i).copied().unwrap_or(0) as usize;
    let n = 1 + byte(1) % 3;
    let mut cuts: Vec<usize> = (0..n - 1)
        .map(|k| {
            let mut at = if len == 0 {
                0
            } else {
                (byte(2 + k) * len) / 256
            };
            while at < len && !text.is_char_boundary(at) {
                at += 1;
            }
            at
        })
        .collect();
    cuts.sort_unstable();
    let mut files = Vec::new();
    let mut start = 0;
    for c in cuts {
        files.push(text[start..c].to_string());
        start = c;
    }
    files.push(text[start..].to_string());
    name_files(files)
}

fn name_files(texts: Vec<String>) -> Vec<(String, String)> {
    texts
        .into_iter()
        .enumerate()
        .map(|(i, t)| (format!("part{i}.yaml"), t))
        .collect()
}

/// Drive a loaded snapshot through its public API.
pub fn exercise_snapshot(s: &Snapshot) {
    let _ = s.version();
    let _ = s.warnings().len();
    let _ = s.virtual_services().len();
    let _ = s.destination_rules().len();
    for svc in s.services().take(MAX_SERVICES) {
        let _ = s.service_by_host(&svc.hostname);
        let _ = s.endpoints(&svc.hostname).len();
        for vip in &svc.vips {
            for p in &svc.ports {
                let d = s.resolve_destination(SocketAddr::new(*vip, p.number));
                assert!(
                    matches!(d, Some(Destination::Service { .. })),
                    "VIP {vip}:{} of {} does not resolve to a service",
                    p.number,
                    svc.hostname
                );
            }
        }
        for ep in s.endpoints(&svc.hostname) {
            let _ = s.endpoint_by_ip(ep.address);
            for p in &svc.ports {
                let _ = s.resolve_destination(SocketAddr::new(ep.address, p.target_port));
            }
        }
        for p in &svc.ports {
            for req in requests_for(s, svc, p.number) {
                route_one(s, svc, p.number, &req);
            }
        }
    }
    let remote: SocketAddr = "10.9.9.9:40000".parse().unwrap_or_else(|_| unreachable!());
    let local: SocketAddr = "10.0.0.10:9080".parse().unwrap_or_else(|_| unreachable!());
    let hash_reqs = [
        SimpleHashRequest::new("/"),
        SimpleHashRequest::new("/a?user=7&x")
            .with_header("x-user", "jason")
            .with_header("cookie", "affinity=abc; session=1")
            .with_source_ip(remote.ip()),
    ];
    for c in s.clusters().into_iter().take(MAX_CLUSTERS) {
        let _ = c.passthrough();
        let _ = c.limits();
        let _ = c.outlier_settings();
        let picked = c.pick(&[]).map(|e| e.target());
        if let Some(t) = picked {
            assert!(
                c.endpoint(t).is_some(),
                "picked endpoint {t} not in {}",
                c.name
            );
            let _active = c.begin(t);
            let _ = c.pick(&[t]);
            let _ = c.weight(t, Instant::now());
            let _ = c.report(t, Outcome::Status(503), Instant::now());
            let _ = c.is_ejected(t, Instant::now());
        }
        for hr in &hash_reqs {
            let rh = c.request_hash(hr, remote, local);
            if let Some(sc) = &rh.set_cookie {
                let _ = sc.header_value();
            }
            if let Some(h) = rh.hash {
                let _ = c.pick_hashed(h, &[]);
            }
        }
        if let Ok(_g) = c.try_acquire(PoolResource::Request) {
            let _ = c.in_use(PoolResource::Request);
        }
        let _ = c.ejected(Instant::now());
        let _ = serde_json::to_string(c);
    }
    let _ = serde_json::to_string(&s.to_json());
}

/// Route one request and cross-check `explain_route`.
fn route_one(s: &Snapshot, svc: &Service, port: u16, req: &SimpleRequest) {
    let decision = s.route(svc, port, req);
    let explained = s.explain_route(svc, port, req);
    let _ = explained.to_string();
    let _ = serde_json::to_string(&explained);
    match (&decision, &explained.decision) {
        (
            RouteDecision::Route {
                virtual_service,
                route_index,
                route,
            },
            routing::ExplainedDecision::Route {
                virtual_service: v2,
                route_index: i2,
                route_name,
            },
        ) => {
            assert_eq!(virtual_service, v2, "explain_route disagrees with route");
            assert_eq!(route_index, i2, "explain_route disagrees with route");
            assert_eq!(
                &route.name, route_name,
                "explain_route disagrees with route"
            );
            let mut rng = StdRng::seed_from_u64(port.into());
            let _ = pick_weighted(&route.destinations, &mut rng);
            for d in &route.destinations {
                let _ = s.cluster(&d.host, d.port.unwrap_or(port), d.subset.as_deref());
            }
        }
        (RouteDecision::Default, routing::ExplainedDecision::Default { .. })
        | (RouteDecision::NoRoute, routing::ExplainedDecision::NoRoute) => {}
        (d, e) => panic!("explain_route disagrees with route: {d:?} vs {e:?}"),
    }
}

/// A fixed set of requests plus, for the first routes of the service, one per
/// match block built to satisfy its exact/prefix conditions.
pub fn requests_for(s: &Snapshot, svc: &Service, port: u16) -> Vec<SimpleRequest> {
    let authority = format!("{}:{port}", svc.hostname);
    let mut v = vec![
        SimpleRequest::new("/"),
        SimpleRequest::new(""),
        SimpleRequest::new("/reviews/0?user=jason&x")
            .with_header("end-user", "jason")
            .with_header("x-version", "v2")
            .with_method("POST")
            .with_authority(authority.clone())
            .with_port(port)
            .with_source_labels([("app", "productpage"), ("version", "v1")])
            .with_source_namespace("default"),
        SimpleRequest::new("/\u{e4}%zz//?#").with_scheme("https"),
    ];
    let Some(vs) = s
        .virtual_services()
        .iter()
        .find(|vs| vs.hosts.contains(&svc.hostname))
    else {
        return v;
    };
    for route in vs.http.iter().take(MAX_ROUTES) {
        for m in route.matches.iter().take(MAX_BLOCKS) {
            v.push(request_matching(m, &authority, port));
        }
    }
    v
}

/// A value that satisfies `m` when it is exact/prefix/present; regexes get a
/// plain guess.
fn satisfy(m: &StringMatch) -> String {
    match m {
        StringMatch::Exact(s) | StringMatch::Prefix(s) => s.clone(),
        StringMatch::Regex(r) => r
            .as_str()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '/')
            .collect(),
        _ => "x".to_string(),
    }
}

fn request_matching(m: &RouteMatch, authority: &str, port: u16) -> SimpleRequest {
    let mut path = m.uri.as_ref().map_or_else(|| "/".to_string(), satisfy);
    let mut sep = '?';
    for (name, cond) in &m.query_params {
        path.push(sep);
        sep = '&';
        path.push_str(name);
        path.push('=');
        path.push_str(&satisfy(cond));
    }
    let mut req = SimpleRequest::new(path).with_port(m.port.unwrap_or(port));
    for (name, cond) in &m.headers {
        req = req.with_header(name.clone(), satisfy(cond));
    }
    req.method = m.method.as_ref().map(satisfy);
    req.scheme = m.scheme.as_ref().map(satisfy);
    req.authority = Some(
        m.authority
            .as_ref()
            .map_or_else(|| authority.to_string(), satisfy),
    );
    if !m.source_labels.is_empty() {
        req.source_labels = Some(m.source_labels.clone().into());
    }
    req.source_namespace = m.source_namespace.clone();
    let _ = req.path();
    req
}
