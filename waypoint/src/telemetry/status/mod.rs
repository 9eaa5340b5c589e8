//! What the process knows about itself: whether it has a certificate and a first config (and so
//! is ready), the numbers behind its health metrics, and the telemetry sinks every part shares.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use routing::Snapshot;
use serde::Serialize;

use crate::control::identity::IdentitySummary;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::splits::{SplitAudit, SplitCollector};
use crate::transport::hbone::server::HboneServer;
use crate::transport::hbone::TunnelPool;

mod clusters;
mod health;

pub use health::ProxyHealth;

/// Default sliding window of the split audit.
pub const SPLIT_WINDOW: Duration = Duration::from_secs(300);

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigStatus {
    pub version: u64,
    pub source: String,
    pub services: usize,
    /// Seconds since the Unix epoch.
    pub updated_at: f64,
}

/// The parts of a running data path the health metrics read.
pub struct Dataplane {
    pub server: Arc<HboneServer>,
    pub pool: Arc<TunnelPool>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
}

#[derive(Default)]
pub struct Status {
    cert: ArcSwapOption<IdentitySummary>,
    config: ArcSwapOption<ConfigStatus>,
    /// Why the certificate or the config is not there yet (shown by the readiness endpoints).
    waiting: Mutex<Vec<(&'static str, String)>>,
    dataplane: OnceLock<Dataplane>,
    pub config_updates: AtomicU64,
    pub config_rejections: AtomicU64,
    /// Certificate updates that could not be used (the current certificate kept serving).
    pub cert_rejections: AtomicU64,
    /// Certificates replaced on a running data path.
    pub cert_rotations: AtomicU64,
    /// Config directory entries named like config that are not files (a directory, a dangling
    /// symlink, a loop), as the watcher last saw them.
    config_unreadable: Mutex<Vec<routing::Unreadable>>,
    /// Such entries reported (each time an entry starts being unreadable or changes reason).
    pub config_unreadable_reports: AtomicU64,
    draining: std::sync::atomic::AtomicBool,
    access_log: OnceLock<Arc<crate::telemetry::access_log::AccessLog>>,
    /// The Telemetry API's tracer and its span export counters.
    pub telemetry_api: OnceLock<Arc<crate::telemetry::spans::TelemetryApi>>,
    /// The xDS client's state, in xDS mode.
    xds: OnceLock<xds_client::StatusHandle>,
    /// The last complete xDS state accepted (shares the resources with the client's state).
    xds_resources: Mutex<Option<xds_client::ResourceState>>,
    /// The node this waypoint is (sent to istiod; the bootstrap of `/config_dump`).
    node: OnceLock<xds_client::pb::envoy::config::core::v3::Node>,
    /// The last config update refused, with when (seconds since the Unix epoch).
    last_rejection: Mutex<Option<(f64, String)>>,
    /// When the process started (`/server_info`'s uptime).
    started: OnceLock<std::time::Instant>,
}

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Status")
            .field("ready", &self.readiness().is_ok())
            .finish_non_exhaustive()
    }
}

impl Status {
    pub fn new() -> Arc<Self> {
        let status = Self::default();
        let _ = status.started.set(std::time::Instant::now());
        Arc::new(status)
    }

    /// A config update was refused (the last good config keeps serving): counted, and kept as
    /// the last rejection (the canary page shows it).
    pub fn reject_config(&self, why: String) {
        self.config_rejections.fetch_add(1, Ordering::Relaxed);
        let at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        *self.last_rejection.lock() = Some((at, why));
    }

    pub fn last_rejection(&self) -> Option<(f64, String)> {
        self.last_rejection.lock().clone()
    }

    /// The last complete xDS state accepted, for `/config_dump`.
    pub fn set_xds_resources(&self, state: xds_client::ResourceState) {
        *self.xds_resources.lock() = Some(state);
    }

    pub fn xds_resources(&self) -> Option<xds_client::ResourceState> {
        self.xds_resources.lock().clone()
    }

    pub fn set_node(&self, node: xds_client::pb::envoy::config::core::v3::Node) {
        let _ = self.node.set(node);
    }

    pub fn node(&self) -> Option<&xds_client::pb::envoy::config::core::v3::Node> {
        self.node.get()
    }

    /// Time since [`Status::new`].
    pub fn uptime(&self) -> std::time::Duration {
        self.started.get().map(|t| t.elapsed()).unwrap_or_default()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn attach_xds(&self, handle: xds_client::StatusHandle) {
        let _ = self.xds.set(handle);
    }

    /// The xDS client's connection, versions and ACK/NACK counts (xDS mode only).
    pub fn xds(&self) -> Option<xds_client::Status> {
        self.xds.get().map(|h| h.get())
    }

    pub fn set_certificate(&self, summary: IdentitySummary) {
        self.clear_waiting("certificate");
        self.cert.store(Some(Arc::new(summary)));
    }

    pub fn certificate(&self) -> Option<Arc<IdentitySummary>> {
        self.cert.load_full()
    }

    /// A config was accepted and is serving.
    pub fn set_config(&self, snapshot: &Snapshot, source: &str) {
        self.clear_waiting("config");
        self.config_updates.fetch_add(1, Ordering::Relaxed);
        self.config.store(Some(Arc::new(ConfigStatus {
            version: snapshot.version(),
            source: source.to_string(),
            services: snapshot.services().count(),
            updated_at: unix_now(),
        })));
    }

    pub fn config(&self) -> Option<Arc<ConfigStatus>> {
        self.config.load_full()
    }

    /// The config entries that are not loaded because they are not files; returns the ones
    /// that are new since the last call (and counts them).
    pub fn set_config_unreadable(&self, now: Vec<routing::Unreadable>) -> Vec<routing::Unreadable> {
        let mut current = self.config_unreadable.lock();
        let new: Vec<_> = now
            .iter()
            .filter(|u| !current.contains(u))
            .cloned()
            .collect();
        self.config_unreadable_reports
            .fetch_add(new.len() as u64, Ordering::Relaxed);
        *current = now;
        new
    }

    pub fn config_unreadable(&self) -> Vec<routing::Unreadable> {
        self.config_unreadable.lock().clone()
    }

    /// `what` ("certificate" or "config") is not available yet, because of `why`.
    pub fn waiting_for(&self, what: &'static str, why: String) {
        let mut waiting = self.waiting.lock();
        waiting.retain(|(w, _)| *w != what);
        waiting.push((what, why));
    }

    fn clear_waiting(&self, what: &'static str) {
        self.waiting.lock().retain(|(w, _)| *w != what);
    }

    /// Shutting down: readiness fails so that no new traffic is sent here.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The access log whose line counts the health metrics report.
    pub fn attach_access_log(&self, log: Arc<crate::telemetry::access_log::AccessLog>) {
        let _first_wins = self.access_log.set(log);
    }

    pub fn attach(&self, dataplane: Dataplane) {
        let _first_wins = self.dataplane.set(dataplane);
    }

    pub fn dataplane(&self) -> Option<&Dataplane> {
        self.dataplane.get()
    }

    /// Ok when a certificate and a first config are loaded and the HBONE listener is serving;
    /// otherwise one line per missing piece.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let waiting = self.waiting.lock();
        let why = |what: &str| {
            waiting
                .iter()
                .find(|(w, _)| *w == what)
                .map(|(_, why)| why.clone())
        };
        let mut missing = Vec::new();
        match self.cert.load().as_deref() {
            None => missing.push(format!(
                "no certificate: {}",
                why("certificate").unwrap_or_else(|| "not loaded yet".into())
            )),
            Some(cert) if (cert.not_after_unix as f64) < unix_now() => missing.push(format!(
                "certificate {} expired at {}",
                cert.spiffe_id, cert.not_after
            )),
            Some(_) => {}
        }
        if self.config.load().is_none() {
            missing.push(format!(
                "no config: {}",
                why("config").unwrap_or_else(|| "not loaded yet".into())
            ));
        }
        if self.is_draining() {
            missing.push("draining: shutting down".into());
        }
        if self.dataplane.get().is_none() && missing.is_empty() {
            missing.push("HBONE listener not serving yet".into());
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing)
        }
    }
}

/// Everything the data path reports to: metrics, the split audit, process status.
#[derive(Clone)]
pub struct Telemetry {
    pub metrics: Arc<Metrics>,
    pub splits: Arc<SplitAudit>,
    pub status: Arc<Status>,
    /// `destination_cluster` label value (Istio's default cluster id is `Kubernetes`).
    pub cluster_id: Arc<str>,
    /// The waypoint's certificate as a client certificate for istiod's xDS port.
    pub own_cert: Arc<crate::control::identity::OwnCert>,
    /// Mirrored requests sent and failed.
    pub mirrors: Arc<crate::dataplane::mirror::MirrorStats>,
    /// Per-listener connection counters (admin, stats, health, HBONE).
    pub listeners: Arc<crate::transport::listen::Listeners>,
    /// The process-wide memory budget and its actions (off until started).
    pub overload: Arc<crate::dataplane::overload::Overload>,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new("Kubernetes", SPLIT_WINDOW)
    }
}

impl Telemetry {
    pub fn new(cluster_id: &str, split_window: Duration) -> Self {
        let status = Status::new();
        let splits = SplitAudit::new(split_window);
        let listeners = Arc::new(crate::transport::listen::Listeners::default());
        let overload = Arc::new(crate::dataplane::overload::Overload::default());
        let metrics = Arc::new(Metrics::new(vec![
            Box::new(ProxyHealth(status.clone())),
            Box::new(clusters::ClusterCollector(status.clone())),
            Box::new(SplitCollector(splits.clone())),
            Box::new(crate::transport::listen::ListenerCollector(
                listeners.clone(),
            )),
            Box::new(crate::dataplane::overload::OverloadCollector(
                overload.clone(),
            )),
            Box::new(crate::telemetry::metrics::process::ProcessCollector),
        ]));
        Self {
            metrics,
            splits,
            status,
            cluster_id: Arc::from(cluster_id),
            own_cert: Arc::default(),
            mirrors: Arc::default(),
            listeners,
            overload,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_what_is_missing() {
        let status = Status::new();
        status.waiting_for(
            "certificate",
            "/etc/certs/cert-chain.pem: No such file".into(),
        );
        let missing = status.readiness().unwrap_err();
        assert_eq!(
            missing,
            vec![
                "no certificate: /etc/certs/cert-chain.pem: No such file".to_string(),
                "no config: not loaded yet".to_string(),
            ]
        );
        status.set_config(&Snapshot::empty(), "files");
        assert_eq!(status.readiness().unwrap_err().len(), 1);
    }

    #[test]
    fn an_expired_certificate_is_not_ready() {
        let status = Status::new();
        status.set_config(&Snapshot::empty(), "files");
        status.set_certificate(IdentitySummary {
            spiffe_id: "spiffe://cluster.local/ns/default/sa/waypoint".into(),
            serial: "01".into(),
            not_after: "Jan  1 00:00:00 2021 +00:00".into(),
            not_after_unix: 1_609_459_200,
            roots: 1,
            chain: Vec::new(),
            trusted: Vec::new(),
        });
        let missing = status.readiness().unwrap_err();
        assert_eq!(
            missing,
            vec!["certificate spiffe://cluster.local/ns/default/sa/waypoint expired at Jan  1 00:00:00 2021 +00:00".to_string()]
        );
    }
}
