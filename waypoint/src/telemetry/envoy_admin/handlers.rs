//! The Envoy-format endpoints of the admin listener, on [`Admin`]: parameters in, the
//! messages of the parent module out.

use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::Value;

use super::{
    apply_mask, clusters, clusters_text, config_dump, memory_stats, render, render_all, DumpSource,
};
use crate::telemetry::admin::{json_reply, query_has, query_pairs, text, Admin, Body};

/// How long `/quitquitquit` leaves its reply to be written before the process starts to drain.
const QUIT_REPLY_GRACE: Duration = Duration::from_millis(250);

impl Admin {
    /// `/config_dump` as Envoy's `ConfigDump` (see [`envoy_admin`]).
    pub(in crate::telemetry) fn envoy_config_dump(
        &self,
        req: &Request<Incoming>,
    ) -> Response<Body> {
        let pairs = query_pairs(req);
        if let Some((k, _)) = pairs
            .iter()
            .find(|(k, _)| !matches!(k.as_str(), "mask" | "include_eds" | "format"))
        {
            return text(
                StatusCode::BAD_REQUEST,
                format!(
                    "/config_dump: ?{k}= is not supported (mask, include_eds, format=waypoint are)"
                ),
            );
        }
        let status = &self.telemetry.status;
        let xds = status.xds_resources();
        let snapshot = status.dataplane().map(|dp| dp.snapshot.load_full());
        let source = match (&xds, &snapshot) {
            (Some(state), _) => DumpSource::Xds(state),
            (None, Some(s)) if status.xds().is_none() => DumpSource::Files(s),
            _ => DumpSource::Nothing,
        };
        let include_eds = pairs.iter().any(|(k, _)| k == "include_eds");
        let identity = status.certificate();
        let dump = config_dump(status.node(), identity.as_deref(), source, include_eds);
        let mut value = render(&dump);
        if let Some((_, mask)) = pairs.iter().find(|(k, _)| k == "mask") {
            apply_mask(&mut value, mask);
        }
        json_reply(&value)
    }

    pub(in crate::telemetry) fn clusters(&self, req: &Request<Incoming>) -> Response<Body> {
        let snapshot = self
            .telemetry
            .status
            .dataplane()
            .map(|dp| dp.snapshot.load_full())
            .unwrap_or_else(|| Arc::new(routing::Snapshot::empty()));
        if query_has(req, "format", "json") {
            json_reply(&render_all(&clusters(&snapshot)))
        } else {
            text(StatusCode::OK, clusters_text(&snapshot))
        }
    }

    /// `/stats`: Envoy's statistics the waypoint keeps, as Envoy's text (`name: value`, sorted)
    /// or `?format=json`; `?filter=<regex>` keeps the matching names, `?usedonly` the non-zero.
    pub(in crate::telemetry) fn stats(&self, req: &Request<Incoming>) -> Response<Body> {
        let pairs = query_pairs(req);
        let filter = match pairs.iter().find(|(k, _)| k == "filter") {
            Some((_, f)) => match regex::Regex::new(f) {
                Ok(r) => Some(r),
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("filter {f:?}: {e}")),
            },
            None => None,
        };
        let used_only = pairs.iter().any(|(k, _)| k == "usedonly");
        let status = &self.telemetry.status;
        let mut stats: Vec<(String, u64)> = vec![
            ("server.live".into(), u64::from(status.readiness().is_ok())),
            ("server.state".into(), self.server_state() as u64),
            ("server.uptime".into(), status.uptime().as_secs()),
        ];
        let memory = memory_stats();
        stats.push(("server.memory_allocated".into(), memory.allocated));
        stats.push(("server.memory_heap_size".into(), memory.heap_size));
        if let Some(dp) = status.dataplane() {
            let snapshot = dp.snapshot.load_full();
            let clusters = snapshot.clusters();
            stats.push((
                "cluster_manager.active_clusters".into(),
                clusters.len() as u64,
            ));
            let now = std::time::Instant::now();
            for c in clusters {
                let membership = ("membership_total", "", c.endpoints.len() as u64);
                for (stat, _, v) in c.stats(now).named().into_iter().chain([membership]) {
                    stats.push((format!("cluster.{}.{stat}", c.name), v));
                }
            }
        }
        stats.retain(|(name, v)| {
            (!used_only || *v != 0) && filter.as_ref().is_none_or(|f| f.is_match(name))
        });
        stats.sort();
        if query_has(req, "format", "json") {
            let stats: Vec<Value> = stats
                .iter()
                .map(|(name, value)| serde_json::json!({"name": name, "value": value}))
                .collect();
            return json_reply(&serde_json::json!({ "stats": stats }));
        }
        let mut out = String::new();
        for (name, value) in stats {
            out.push_str(&format!("{name}: {value}\n"));
        }
        text(StatusCode::OK, out)
    }

    pub(in crate::telemetry) fn server_state(
        &self,
    ) -> envoy_types::pb::envoy::admin::v3::server_info::State {
        use envoy_types::pb::envoy::admin::v3::server_info::State;
        let status = &self.telemetry.status;
        if status.is_draining() {
            State::Draining
        } else if status.readiness().is_ok() {
            State::Live
        } else {
            State::Initializing
        }
    }

    /// `POST /quitquitquit`: the process drains and exits as on SIGTERM.
    pub(in crate::telemetry) fn quit(&self, req: &Request<Incoming>) -> Response<Body> {
        if req.method() != Method::POST {
            return text(StatusCode::METHOD_NOT_ALLOWED, "use POST /quitquitquit");
        }
        tracing::warn!("admin: /quitquitquit: draining and exiting");
        // The signal goes once this reply had time to leave: with no connection to drain the
        // process exits at once, and the caller must still read "OK".
        tokio::spawn(async {
            tokio::time::sleep(QUIT_REPLY_GRACE).await;
            if let Err(e) = rustix::process::kill_process(
                rustix::process::getpid(),
                rustix::process::Signal::TERM,
            ) {
                tracing::error!(error = %e, "admin: /quitquitquit: cannot signal the process");
            }
        });
        text(StatusCode::OK, "OK")
    }
}
