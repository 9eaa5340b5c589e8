//! `Snapshot::explain_route`: why a request goes where [`Snapshot::route`]
//! sends it, in words (for `waypoint explain` and the admin endpoints).
//! Off the hot path: this allocates freely; `route()` does not.

use crate::actions::{RetryPolicy, Rewrite, RouteAction};
use crate::matching::RequestView;
use crate::model::{HttpRoute, RouteDestination, RouteMatch, Service};
use crate::policy::format_duration;
use crate::snapshot::{RouteDecision, Snapshot};
use serde::Serialize;
use std::fmt;

/// The trace of one routing decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteExplanation {
    /// Service FQDN.
    pub service: String,
    /// Service port the request came in on.
    pub port: u16,
    /// `"namespace/name"` of every VirtualService naming the service, in
    /// precedence order. Only the first with HTTP routes applies.
    pub virtual_services: Vec<String>,
    /// The VirtualService whose routes were evaluated.
    pub applied: Option<String>,
    /// Its routes in order, up to and including the first that matched.
    pub routes: Vec<RouteTrace>,
    pub decision: ExplainedDecision,
    /// What the decided route does to this request, one `"<what>: <how>"`
    /// line each: `action`, `rewrite`, `timeout`, `retries` (effective,
    /// Istio's default included), `fault`, `mirror`, `request headers`,
    /// `response headers`, `cors`. Empty for `NoRoute`.
    pub actions: Vec<String>,
}

/// One HTTP route as evaluated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteTrace {
    /// `"namespace/name"`
    pub virtual_service: String,
    /// Index in the VirtualService's (loaded) `http` list.
    pub index: usize,
    pub name: String,
    pub matched: bool,
    /// The match block that matched; `None` for a route without blocks (or no match).
    pub matched_block: Option<usize>,
    /// For each block that did not match, its first failing condition, e.g.
    /// `match[0]: uri prefix "/v2" does not match "/v1/reviews"`.
    pub failures: Vec<String>,
}

/// The outcome, as [`RouteDecision`] but owned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExplainedDecision {
    Route {
        virtual_service: String,
        route_index: usize,
        route_name: String,
    },
    /// All endpoints of the service; `reason` says why.
    Default { reason: String },
    /// 404 with response flag NR.
    NoRoute,
}

impl fmt::Display for ExplainedDecision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExplainedDecision::Route {
                virtual_service,
                route_index,
                route_name,
            } => write!(
                f,
                "route {virtual_service} http[{route_index}] {route_name}"
            ),
            ExplainedDecision::Default { reason } => write!(f, "default: {reason}"),
            ExplainedDecision::NoRoute => f.write_str("no route: 404 NR"),
        }
    }
}

impl fmt::Display for RouteExplanation {
    /// Several lines:
    ///
    /// ```text
    /// reviews.default.svc.cluster.local:9080
    /// virtual service default/reviews
    /// http[0] jason: no match
    ///   match[0]: header end-user: absent
    /// http[1] reviews.1: matched (no match conditions)
    /// decision: route default/reviews http[1] reviews.1
    ///   action: forward to reviews.default.svc.cluster.local subset v1 (weight 100)
    ///   timeout: none (Istio's default)
    ///   retries: 2 retries on connect-failure,… (Istio's default)
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}:{}", self.service, self.port)?;
        for vs in &self.virtual_services {
            match &self.applied {
                Some(a) if a == vs => writeln!(f, "virtual service {vs}")?,
                Some(a) => writeln!(
                    f,
                    "virtual service {vs}: ignored (only the first VirtualService for a host applies: {a})"
                )?,
                None => writeln!(f, "virtual service {vs}: ignored (no HTTP routes)")?,
            }
        }
        for r in &self.routes {
            let outcome = match (r.matched, r.matched_block) {
                (true, Some(k)) => format!("matched by match[{k}]"),
                (true, None) => "matched (no match conditions)".to_string(),
                (false, _) => "no match".to_string(),
            };
            writeln!(f, "http[{}] {}: {outcome}", r.index, r.name)?;
            for why in &r.failures {
                writeln!(f, "  {why}")?;
            }
        }
        write!(f, "decision: {}", self.decision)?;
        for line in &self.actions {
            write!(f, "\n  {line}")?;
        }
        Ok(())
    }
}

impl Snapshot {
    /// Explain [`Snapshot::route`] for the same arguments: the VirtualServices
    /// considered, each route in order with why it did not match (the first
    /// failing condition of each match block), up to the first that matched,
    /// and the decision (always the one `route()` makes).
    pub fn explain_route(
        &self,
        service: &Service,
        port: u16,
        req: &dyn RequestView,
    ) -> RouteExplanation {
        let host = &service.hostname;
        let virtual_services: Vec<String> = self
            .virtual_services
            .iter()
            .filter(|vs| vs.hosts.iter().any(|h| h == host))
            .map(|vs| vs.id())
            .collect();
        let entries = self
            .routes
            .get(host.as_str())
            .map(|e| &e[..])
            .unwrap_or(&[]);
        let applied = entries.first().map(|e| e.virtual_service.clone());
        let mut routes = Vec::new();
        for e in entries {
            let mut trace = RouteTrace {
                virtual_service: e.virtual_service.clone(),
                index: e.index,
                name: e.route.name.clone(),
                matched: e.route.matches.is_empty(),
                matched_block: None,
                failures: Vec::new(),
            };
            for (k, m) in e.route.matches.iter().enumerate() {
                match m.first_miss(req, port) {
                    None => {
                        trace.matched = true;
                        trace.matched_block = Some(k);
                        break;
                    }
                    Some(miss) => trace.failures.push(format!("match[{k}]: {miss}")),
                }
            }
            let matched = trace.matched;
            routes.push(trace);
            if matched {
                break;
            }
        }
        let (decision, matched) = self.route_with_match(service, port, req);
        let mut actions = Vec::new();
        let decision = match decision {
            RouteDecision::Route {
                virtual_service,
                route_index,
                route,
            } => {
                actions = explain_actions(route, matched, port, req);
                ExplainedDecision::Route {
                    virtual_service: virtual_service.to_string(),
                    route_index,
                    route_name: route.name.clone(),
                }
            }
            RouteDecision::NoRoute => ExplainedDecision::NoRoute,
            RouteDecision::Default => {
                actions = vec![
                    format!("action: forward to {host} (all endpoints)"),
                    "timeout: none (Istio's default)".to_string(),
                    format!(
                        "retries: {}",
                        service
                            .port(port)
                            .map_or_else(RetryPolicy::istio_default, |p| p
                                .default_retry_policy()
                                .into_owned())
                    ),
                ];
                ExplainedDecision::Default {
                    reason: match &applied {
                        None => "no VirtualService".to_string(),
                        Some(vs) => format!("no route of {vs} exists for port {port}"),
                    },
                }
            }
        };
        RouteExplanation {
            service: host.clone(),
            port,
            virtual_services,
            applied,
            routes,
            decision,
            actions,
        }
    }
}

fn destination_name(d: &RouteDestination) -> String {
    let mut s = d.host.clone();
    if let Some(sub) = &d.subset {
        s += &format!(" subset {sub}");
    }
    if let Some(p) = d.port {
        s += &format!(" port {p}");
    }
    s
}

/// The `actions` lines of a matched route for this request.
fn explain_actions(
    route: &HttpRoute,
    matched: Option<&RouteMatch>,
    port: u16,
    req: &dyn RequestView,
) -> Vec<String> {
    let mut out = Vec::new();
    let path = req.path();
    match &route.action {
        RouteAction::Route => {
            let dests: Vec<String> = route
                .destinations
                .iter()
                .map(|d| format!("{} (weight {})", destination_name(d), d.weight))
                .collect();
            out.push(format!("action: forward to {}", dests.join(", ")));
        }
        RouteAction::Redirect(r) => {
            let (code, location) = r.location(
                req.scheme(),
                req.authority().unwrap_or(""),
                path,
                port,
                Rewrite::matched_prefix(matched),
            );
            out.push(format!("action: redirect {r} → {code} {location}"));
        }
        RouteAction::DirectResponse(d) => out.push(format!("action: direct response {d}")),
    }
    let forwards = route.action.is_route();
    if let Some(r) = route.rewrite.as_ref().filter(|_| forwards) {
        let mut line = format!("rewrite: {r}");
        if let Some(new_path) = route.rewritten_path(matched, path) {
            line += &format!(" (path {path:?} becomes {new_path:?})");
        }
        out.push(line);
    }
    if forwards {
        out.push(match route.timeout {
            Some(t) => format!("timeout: {}", format_duration(t)),
            None => "timeout: none (Istio's default)".to_string(),
        });
        out.push(format!("retries: {}", route.retries));
    }
    if let Some(fault) = &route.fault {
        out.push(format!("fault: {fault}"));
    }
    for m in route.mirrors.iter().filter(|_| forwards) {
        out.push(format!("mirror: {m}"));
    }
    if let Some(a) = route.headers.authority.as_deref() {
        out.push(format!("authority: {a:?} (headers.request)"));
    }
    if !route.headers.request.is_empty() {
        out.push(format!("request headers: {}", route.headers.request));
    }
    if !route.headers.response.is_empty() {
        out.push(format!("response headers: {}", route.headers.response));
    }
    for d in route.destinations.iter().filter(|d| !d.headers.is_empty()) {
        let name = destination_name(d);
        if let Some(a) = d.headers.authority.as_deref() {
            out.push(format!("authority (to {name}): {a:?}"));
        }
        if !d.headers.request.is_empty() {
            out.push(format!(
                "request headers (to {name}): {}",
                d.headers.request
            ));
        }
        if !d.headers.response.is_empty() {
            out.push(format!(
                "response headers (from {name}): {}",
                d.headers.response
            ));
        }
    }
    if let Some(c) = &route.cors {
        out.push(format!("cors: {c}"));
    }
    out
}
