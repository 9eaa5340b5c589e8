//! Istio's proxy health metrics, computed from the live [`Status`] at scrape time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use super::Status;

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
struct Worker {
    worker: usize,
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
        scalar_counter(
            &mut e,
            "waypoint_memory_trims",
            "Times the allocator's freed pages were returned to the kernel once a config change \
             had settled",
            load(&crate::control::memory::TRIMS),
        )?;
        scalar_counter(
            &mut e,
            "waypoint_memory_returned_bytes",
            "Resident bytes those trims returned to the kernel",
            load(&crate::control::memory::RETURNED_BYTES),
        )?;
        scalar_counter(
            &mut e,
            "waypoint_memory_code_released_bytes",
            "Resident bytes of code and read-only data (clean file pages) those trims took out of \
             the resident set; the pages that run again come back from the page cache",
            load(&crate::control::memory::CODE_RELEASED_BYTES),
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
                    (
                        Reason {
                            reason: "filtered_out",
                        },
                        log.filtered_out(),
                    ),
                ],
            )?;
        }
        if let Some(api) = status.telemetry_api.get() {
            let s = &api.export;
            counter(
                &mut e,
                "waypoint_spans",
                "Spans of sampled requests by outcome (dropped: the export queue was full; \
                 failed: the collector did not take them)",
                &[
                    (Reason { reason: "exported" }, load(&s.exported)),
                    (Reason { reason: "dropped" }, load(&s.dropped)),
                    (Reason { reason: "failed" }, load(&s.failed)),
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
        if let Some(workers) = dp.server.workers() {
            let open: Vec<_> = (workers.connections().into_iter().enumerate())
                .map(|(worker, n)| (Worker { worker }, n as f64))
                .collect();
            gauge(
                &mut e,
                "waypoint_worker_connections",
                "Inbound HBONE connections open per data-path worker thread (each serves the \
                 connections it was given, and the next goes to the least loaded; absent with \
                 --work-stealing)",
                &open,
            )?;
        }
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
