//! One access log line per request (and per TCP connection), Envoy-like text or JSON.
//!
//! Text field order (quoted fields are `"-"` when absent):
//! `[START_TIME] "METHOD PATH PROTOCOL" RESPONSE_CODE RESPONSE_FLAGS RESPONSE_CODE_DETAILS
//! "UPSTREAM_TRANSPORT_FAILURE_REASON" BYTES_RECEIVED BYTES_SENT DURATION UPSTREAM_SERVICE_TIME
//! "X-FORWARDED-FOR" "USER-AGENT" "X-REQUEST-ID" "AUTHORITY" "UPSTREAM_HOST" UPSTREAM_CLUSTER
//! DOWNSTREAM_LOCAL_ADDRESS DOWNSTREAM_REMOTE_ADDRESS SOURCE_PRINCIPAL ROUTE_NAME`

use std::io::Write;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Entry {
    pub start_time: String,
    pub method: String,
    pub path: String,
    pub protocol: String,
    pub response_code: u16,
    pub response_flags: String,
    pub response_code_details: String,
    pub upstream_transport_failure_reason: String,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration_ms: u64,
    pub upstream_service_time_ms: Option<u64>,
    pub x_forwarded_for: String,
    pub user_agent: String,
    pub request_id: String,
    pub authority: String,
    pub upstream_host: String,
    pub upstream_cluster: String,
    pub downstream_local_address: String,
    pub downstream_remote_address: String,
    pub source_principal: String,
    pub route_name: String,
}

fn dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

impl Entry {
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Json => serde_json::to_string(self).expect("entry serializes"),
            Format::Text => {
                let ust = self
                    .upstream_service_time_ms
                    .map_or_else(|| "-".to_string(), |t| t.to_string());
                format!(
                    "[{}] \"{} {} {}\" {} {} {} \"{}\" {} {} {} {} \"{}\" \"{}\" \"{}\" \"{}\" \"{}\" {} {} {} {} {}",
                    self.start_time,
                    dash(&self.method),
                    dash(&self.path),
                    dash(&self.protocol),
                    self.response_code,
                    dash(&self.response_flags),
                    dash(&self.response_code_details),
                    dash(&self.upstream_transport_failure_reason),
                    self.bytes_received,
                    self.bytes_sent,
                    self.duration_ms,
                    ust,
                    dash(&self.x_forwarded_for),
                    dash(&self.user_agent),
                    dash(&self.request_id),
                    dash(&self.authority),
                    dash(&self.upstream_host),
                    dash(&self.upstream_cluster),
                    dash(&self.downstream_local_address),
                    dash(&self.downstream_remote_address),
                    dash(&self.source_principal),
                    dash(&self.route_name),
                )
            }
        }
    }
}

/// Where lines go.
#[derive(Clone)]
pub enum Sink {
    Stdout,
    /// Kept in memory (the demo prints a few; tests read them).
    Memory(Arc<Mutex<Vec<String>>>),
    Off,
}

pub struct AccessLog {
    format: Format,
    sink: Sink,
}

impl AccessLog {
    pub fn new(format: Format, sink: Sink) -> Self {
        Self { format, sink }
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn write(&self, entry: &Entry) {
        match &self.sink {
            Sink::Off => {}
            Sink::Stdout => {
                let line = entry.render(self.format);
                let mut out = std::io::stdout().lock();
                // A closed stdout must not take the proxy down; the line is lost, not the request.
                let _ignored = writeln!(out, "{line}");
            }
            Sink::Memory(lines) => lines.lock().push(entry.render(self.format)),
        }
    }
}

/// The timestamp format Envoy uses for `%START_TIME%`.
pub fn timestamp(t: std::time::SystemTime) -> String {
    let dt: chrono::DateTime<chrono::Utc> = t.into();
    dt.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_marks_absent_fields_with_dash() {
        let e = Entry {
            start_time: "2026-01-01T00:00:00.000Z".into(),
            method: "GET".into(),
            path: "/".into(),
            protocol: "HTTP/1.1".into(),
            response_code: 404,
            response_flags: "NR".into(),
            ..Default::default()
        };
        let line = e.render(Format::Text);
        assert!(
            line.starts_with(
                "[2026-01-01T00:00:00.000Z] \"GET / HTTP/1.1\" 404 NR - \"-\" 0 0 0 -"
            ),
            "{line}"
        );
        let json: serde_json::Value = serde_json::from_str(&e.render(Format::Json)).unwrap();
        assert_eq!(json["response_flags"], "NR");
        assert_eq!(json["upstream_service_time_ms"], serde_json::Value::Null);
    }
}
