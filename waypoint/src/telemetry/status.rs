//! What the process knows about itself: whether it has a certificate and a first config (and so
//! is ready), the numbers behind its health metrics, and the telemetry sinks every part shares.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use routing::Snapshot;
use serde::Serialize;

use crate::control::identity::IdentitySummary;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::splits::{SplitAudit, SplitCollector};
use crate::transport::hbone::server::HboneServer;
use crate::transport::hbone::TunnelPool;

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
    /// The xDS client's state, in xDS mode.
    xds: OnceLock<xds_client::StatusHandle>,
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
        Arc::new(Self::default())
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
        if self.draining.load(Ordering::Relaxed) {
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
            Box::new(SplitCollector(splits.clone())),
            Box::new(crate::transport::listen::ListenerCollector(
                listeners.clone(),
            )),
            Box::new(crate::dataplane::overload::OverloadCollector(
                overload.clone(),
            )),
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct XdsType {
    type_url: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Direction {
    direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct State {
    state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Stage {
    stage: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConfigInfo {
    version: String,
    source: String,
}

/// Proxy health metrics, computed from live counters at scrape time.
#[derive(Debug)]
pub struct ProxyHealth(pub Arc<Status>);

fn counter<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(L, u64)],
) -> Result<(), std::fmt::Error> {
    let mut enc = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(*v).encode(enc.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(L, f64)],
) -> Result<(), std::fmt::Error> {
    let mut enc = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(*v).encode(enc.encode_family(labels)?)?;
    }
    Ok(())
}

fn scalar_gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: f64,
) -> Result<(), std::fmt::Error> {
    let enc = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(enc)
}

fn scalar_counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let enc = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(enc)
}

impl Collector for ProxyHealth {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let status = &self.0;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        scalar_gauge(
            &mut e,
            "waypoint_ready",
            "1 when a certificate and a first config are loaded and HBONE is serving",
            if status.readiness().is_ok() { 1.0 } else { 0.0 },
        )?;
        if let Some(cert) = status.certificate() {
            scalar_gauge(
                &mut e,
                "waypoint_certificate_expiry_timestamp_seconds",
                "When the waypoint's workload certificate expires (Unix seconds)",
                cert.not_after_unix as f64,
            )?;
        }
        scalar_counter(
            &mut e,
            "waypoint_certificate_rotations",
            "Certificates replaced while serving (files changed or renewed by the CA)",
            load(&status.cert_rotations),
        )?;
        scalar_counter(
            &mut e,
            "waypoint_certificate_rejected",
            "Certificate updates rejected (the current certificate kept serving)",
            load(&status.cert_rejections),
        )?;
        scalar_counter(
            &mut e,
            "waypoint_config_updates",
            "Config snapshots accepted",
            load(&status.config_updates),
        )?;
        scalar_counter(
            &mut e,
            "waypoint_config_rejected",
            "Config updates rejected (the last good config kept serving)",
            load(&status.config_rejections),
        )?;
        scalar_gauge(
            &mut e,
            "waypoint_config_unreadable_entries",
            "Config directory entries named like config that are not files (not loaded)",
            status.config_unreadable.lock().len() as f64,
        )?;
        scalar_counter(
            &mut e,
            "waypoint_config_unreadable_reported",
            "Config directory entries reported as not files (each time one appears)",
            load(&status.config_unreadable_reports),
        )?;
        if let Some(xds) = status.xds() {
            scalar_gauge(
                &mut e,
                "waypoint_xds_connected",
                "1 while the ADS stream to istiod is up",
                if xds.connected { 1.0 } else { 0.0 },
            )?;
            scalar_counter(
                &mut e,
                "waypoint_xds_reconnects",
                "Connections to istiod established after the first",
                xds.reconnects,
            )?;
            let per_type = |f: fn(&xds_client::TypeStatus) -> u64| -> Vec<(XdsType, u64)> {
                xds.types
                    .iter()
                    .map(|(t, ts)| {
                        let short = t.rsplit('.').next().unwrap_or(t).to_string();
                        (XdsType { type_url: short }, f(ts))
                    })
                    .collect()
            };
            counter(
                &mut e,
                "waypoint_xds_acks",
                "xDS responses accepted (ACKed), per resource type",
                &per_type(|t| t.acks),
            )?;
            counter(
                &mut e,
                "waypoint_xds_nacks",
                "xDS responses rejected (NACKed, the last good config kept serving), per resource type",
                &per_type(|t| t.nacks),
            )?;
        }
        if let Some(config) = status.config() {
            scalar_gauge(
                &mut e,
                "waypoint_config_last_update_timestamp_seconds",
                "When the serving config snapshot was accepted (Unix seconds)",
                config.updated_at,
            )?;
            gauge(
                &mut e,
                "waypoint_config_info",
                "The serving config snapshot: version and source",
                &[(
                    ConfigInfo {
                        version: config.version.to_string(),
                        source: config.source.clone(),
                    },
                    1.0,
                )],
            )?;
        }
        if let Some(log) = status.access_log.get() {
            let (written, sampled_out) = log.stats();
            counter(
                &mut e,
                "waypoint_access_log_lines",
                "Access log lines by outcome (dropped: the stdout reader could not keep up)",
                &[
                    (Reason { reason: "written" }, written),
                    (
                        Reason {
                            reason: "sampled_out",
                        },
                        sampled_out,
                    ),
                    (Reason { reason: "dropped" }, log.dropped()),
                ],
            )?;
        }
        let Some(dp) = status.dataplane() else {
            return Ok(());
        };
        let server = &dp.server.stats;
        let client = &dp.pool.client().stats;
        let (out_conns, out_streams) = dp.pool.client().open_counts();
        let inbound = Direction {
            direction: "inbound",
        };
        let outbound = Direction {
            direction: "outbound",
        };
        counter(
            &mut e,
            "waypoint_hbone_connections_opened",
            "HBONE (mTLS HTTP/2) connections established",
            &[
                (inbound.clone(), load(&server.connections)),
                (outbound.clone(), load(&client.connections_opened)),
            ],
        )?;
        gauge(
            &mut e,
            "waypoint_hbone_connections_open",
            "HBONE connections open now",
            &[
                (inbound.clone(), load(&server.connections_open) as f64),
                (outbound.clone(), out_conns as f64),
            ],
        )?;
        counter(
            &mut e,
            "waypoint_hbone_streams_opened",
            "HBONE CONNECT streams (tunnels) established",
            &[
                (inbound.clone(), load(&server.tunnels)),
                (outbound.clone(), load(&client.tunnels_opened)),
            ],
        )?;
        gauge(
            &mut e,
            "waypoint_hbone_streams_open",
            "HBONE CONNECT streams open now",
            &[
                (inbound, load(&server.tunnels_open) as f64),
                (outbound, out_streams as f64),
            ],
        )?;
        counter(
            &mut e,
            "waypoint_hbone_rejected",
            "Inbound HBONE connections or streams refused",
            &[
                (
                    Reason {
                        reason: "handshake",
                    },
                    load(&server.rejected_handshakes),
                ),
                (Reason { reason: "stream" }, load(&server.rejected_streams)),
            ],
        )?;
        counter(
            &mut e,
            "waypoint_source_unverified",
            "Tunnels whose forwarded source address was not used: a workload of another identity \
             (identity_mismatch) or none the config knows (unknown_workload)",
            &[
                (
                    Reason {
                        reason: "identity_mismatch",
                    },
                    load(&server.sources.mismatch),
                ),
                (
                    Reason {
                        reason: "unknown_workload",
                    },
                    load(&server.sources.unknown),
                ),
            ],
        )?;
        gauge(
            &mut e,
            "waypoint_hbone_inbound_connections",
            "Inbound HBONE connections now, by state: `tls_handshake`, `http2_handshake` \
             (authenticated, waiting for the client's HTTP/2 preface), `established`",
            &[
                (
                    State {
                        state: "tls_handshake",
                    },
                    load(&server.tls_handshaking) as f64,
                ),
                (
                    State {
                        state: "http2_handshake",
                    },
                    load(&server.h2_handshaking) as f64,
                ),
                (
                    State {
                        state: "established",
                    },
                    load(&server.connections_open) as f64,
                ),
            ],
        )?;
        counter(
            &mut e,
            "waypoint_hbone_handshake_timeouts",
            "Inbound HBONE connections closed because the handshake timeout passed, by stage: \
             `tls`, or `http2` (TLS done, no HTTP/2 preface)",
            &[
                (Stage { stage: "tls" }, load(&server.tls_handshake_timeouts)),
                (
                    Stage { stage: "http2" },
                    load(&server.h2_handshake_timeouts),
                ),
            ],
        )?;
        let (completed, responded_503, reset) = dp.server.drain().counts();
        counter(
            &mut e,
            "waypoint_drain_requests",
            "Requests and TCP connections in flight during the SIGTERM drain, by outcome: \
             `completed` (ended on their own), `responded_503` (answered 503 LR at the drain \
             deadline), `reset` (tunnel reset at the deadline: response started, or TCP)",
            &[
                (
                    Outcome {
                        outcome: "completed",
                    },
                    completed,
                ),
                (
                    Outcome {
                        outcome: "responded_503",
                    },
                    responded_503,
                ),
                (Outcome { outcome: "reset" }, reset),
            ],
        )?;
        scalar_counter(
            &mut e,
            "waypoint_hbone_send_timeouts",
            "Tunnels closed because the client kept its flow-control window shut past --stream-send-timeout-ms",
            crate::transport::hbone::stream::SEND_TIMEOUTS.load(std::sync::atomic::Ordering::Relaxed),
        )?;
        scalar_counter(
            &mut e,
            "waypoint_hbone_small_frames_coalesced",
            "DATA frames under 256 bytes taken out of HTTP/2 buffers and copied together while the tunnel's reader was busy, so they do not count against h2's small-frame budget",
            crate::transport::hbone::recv::SMALL_FRAMES_COALESCED.load(std::sync::atomic::Ordering::Relaxed),
        )?;
        scalar_counter(
            &mut e,
            "waypoint_hbone_premature_resets",
            "Inbound tunnels the client reset within 1 s of acceptance, before any byte was sent back",
            load(&server.premature_resets),
        )?;
        scalar_counter(
            &mut e,
            "waypoint_hbone_connections_closed_for_resets",
            "Inbound HBONE connections closed (GOAWAY ENHANCE_YOUR_CALM) after 500 tunnels, more than half reset prematurely",
            load(&server.closed_for_resets),
        )?;
        let reused = load(&dp.pool.stats.tunnels_reused);
        let opened = load(&client.tunnels_opened);
        scalar_counter(
            &mut e,
            "waypoint_upstream_tunnels_reused",
            "Requests sent on an idle upstream tunnel instead of a new CONNECT",
            reused,
        )?;
        scalar_gauge(
            &mut e,
            "waypoint_upstream_tunnel_reuse_ratio",
            "reused / (reused + opened) upstream tunnels since start",
            if reused + opened == 0 {
                0.0
            } else {
                reused as f64 / (reused + opened) as f64
            },
        )?;
        scalar_gauge(
            &mut e,
            "waypoint_upstream_tunnels_idle",
            "Idle upstream tunnels in the pool",
            dp.pool.idle_count() as f64,
        )?;
        scalar_counter(
            &mut e,
            "waypoint_request_headers_timeouts",
            "Tunnels closed because an HTTP/1.1 request's headers did not complete within --request-headers-timeout-ms",
            crate::transport::header_deadline::TIMED_OUT.load(std::sync::atomic::Ordering::Relaxed),
        )?;
        scalar_counter(
            &mut e,
            "waypoint_upstream_dials_coalesced",
            "Requests that waited on another request's dial to the same node instead of dialing",
            load(&client.dials_coalesced),
        )?;
        counter(
            &mut e,
            "waypoint_upstream_connections_closed",
            "Upstream HBONE connections closed by the waypoint: idle past the idle timeout, or a keep-alive PING unanswered (a hung node)",
            &[
                (Reason { reason: "idle" }, load(&client.closed_idle)),
                (
                    Reason {
                        reason: "keepalive",
                    },
                    load(&client.closed_keepalive),
                ),
            ],
        )?;
        Ok(())
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
        });
        let missing = status.readiness().unwrap_err();
        assert_eq!(
            missing,
            vec!["certificate spiffe://cluster.local/ns/default/sa/waypoint expired at Jan  1 00:00:00 2021 +00:00".to_string()]
        );
    }
}
