//! `connectionPool` (tcp and http limits) and `outlierDetection`.

use super::*;

impl Fields<'_, '_> {
    pub(super) fn connection_pool(&mut self, f: &str, cp: ConnectionPoolY) -> ConnectionPool {
        self.unsupported(f, &cp.extra, schema::CONNECTION_POOL_SETTINGS);
        if cp.tcp.is_none() && cp.http.is_none() {
            self.error(f, "must set tcp or http");
        }
        let tcp = cp.tcp.map(|t| {
            let tf = format!("{f}.tcp");
            self.unsupported(&tf, &t.extra, schema::TCP_SETTINGS);
            TcpSettings {
                max_connections: self.int32(&format!("{tf}.maxConnections"), t.max_connections),
                connect_timeout: self.duration(
                    &format!("{tf}.connectTimeout"),
                    t.connect_timeout,
                    DurationRule::AtLeastMillis,
                ),
                max_connection_duration: self.duration(
                    &format!("{tf}.maxConnectionDuration"),
                    t.max_connection_duration,
                    DurationRule::AtLeastMillis,
                ),
                idle_timeout: self.duration(
                    &format!("{tf}.idleTimeout"),
                    t.idle_timeout,
                    DurationRule::NonNegative,
                ),
            }
        });
        let http = cp.http.map(|h| {
            let hf = format!("{f}.http");
            self.unsupported(&hf, &h.extra, schema::HTTP_SETTINGS);
            HttpSettings {
                http1_max_pending_requests: self.int32(
                    &format!("{hf}.http1MaxPendingRequests"),
                    h.http1_max_pending_requests,
                ),
                http2_max_requests: self
                    .int32(&format!("{hf}.http2MaxRequests"), h.http2_max_requests),
                max_requests_per_connection: self.int32(
                    &format!("{hf}.maxRequestsPerConnection"),
                    h.max_requests_per_connection,
                ),
                max_retries: self.int32(&format!("{hf}.maxRetries"), h.max_retries),
                idle_timeout: self.duration(
                    &format!("{hf}.idleTimeout"),
                    h.idle_timeout,
                    DurationRule::AtLeastMillis,
                ),
                max_concurrent_streams: self.int32(
                    &format!("{hf}.maxConcurrentStreams"),
                    h.max_concurrent_streams,
                ),
            }
        });
        ConnectionPool { tcp, http }
    }

    pub(super) fn outlier_detection(&mut self, f: &str, od: OutlierDetectionY) -> OutlierDetection {
        self.unsupported(f, &od.extra, schema::OUTLIER_DETECTION);
        OutlierDetection {
            consecutive_5xx_errors: self.uint32(
                &format!("{f}.consecutive5xxErrors"),
                od.consecutive_5xx_errors,
            ),
            consecutive_gateway_errors: self.uint32(
                &format!("{f}.consecutiveGatewayErrors"),
                od.consecutive_gateway_errors,
            ),
            interval: self.duration(
                &format!("{f}.interval"),
                od.interval,
                DurationRule::AtLeastMillis,
            ),
            base_ejection_time: self.duration(
                &format!("{f}.baseEjectionTime"),
                od.base_ejection_time,
                DurationRule::AtLeastMillis,
            ),
            max_ejection_percent: self
                .percent(&format!("{f}.maxEjectionPercent"), od.max_ejection_percent),
            min_health_percent: self
                .percent(&format!("{f}.minHealthPercent"), od.min_health_percent),
        }
    }
}
