//! One access log line per request (and per TCP connection), in Envoy's format language.
//!
//! Text lines follow an Envoy format string ([`template`]); the default is Istio's
//! ([`ISTIO_DEFAULT_FORMAT`]). JSON lines are either the built-in object (the [`Entry`] fields,
//! one key each) or an Envoy `json_format` object. Lines can be sampled, or switched off, at
//! runtime with [`AccessLog::set_sample_rate`].
//!
//! Off the request path: sampling is decided before a line is built ([`AccessLog::log_with`]),
//! and stdout lines are appended to a shared buffer that a writer thread empties in batches
//! ([`FLUSH_INTERVAL`], [`FLUSH_BYTES`]) rather than being woken for every line.

mod batch;
mod entry;
pub mod filter;
mod sinks;
pub mod template;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

pub use batch::{FLUSH_BYTES, FLUSH_INTERVAL};
pub use entry::{Entry, Field, Line};
use serde::Serialize;
pub use sinks::LogView;
use sinks::{Configured, ConfiguredSink};

pub use template::{JsonTemplate, Template, TemplateError, ISTIO_DEFAULT_FORMAT};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Text,
    Json,
}

impl Entry {
    /// Renders with the default template of `format` (Istio's text format, or the built-in JSON
    /// object).
    pub fn render(&self, format: Format) -> String {
        let mut out = Vec::with_capacity(512);
        match format {
            Format::Json => self.line().write_default_json(&mut out),
            Format::Text => Template::istio_default().write_text(&self.line(), &mut out),
        }
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
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

enum Renderer {
    Text(Template),
    DefaultJson,
    Json(JsonTemplate),
}

/// Lines waiting for the stdout writer thread; beyond this, lines are dropped (and counted)
/// rather than blocking requests on a stalled log reader.
pub const STDOUT_QUEUE: usize = batch::QUEUE_LINES;

pub struct AccessLog {
    /// The Telemetry API's logs (meshConfig providers, or istiod's `access_log`); when set they
    /// replace the default one the flags describe.
    configured: arc_swap::ArcSwapOption<Configured>,
    /// Lines a sink's filter left out.
    filtered_out: AtomicU64,
    format: Format,
    renderer: Renderer,
    sink: Sink,
    /// For [`Sink::Stdout`]: the buffer the writer thread empties.
    stdout: Option<batch::Batcher>,
    request_headers: Vec<String>,
    response_headers: Vec<String>,
    /// `f64` bits of the sample rate, 0..=1.
    sample_rate: AtomicU64,
    written: AtomicU64,
    sampled_out: AtomicU64,
}

/// Why a sample rate (flag or environment variable) does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SampleRateError {
    #[error("{0:?} is not a number")]
    NotANumber(String),
    #[error("{0} is not in 0..=1 (0 switches logs off, 1 logs every line)")]
    OutOfRange(String),
}

/// Parses a sample rate for a command-line flag: a number in 0..=1.
pub fn parse_sample_rate(s: &str) -> Result<f64, SampleRateError> {
    let rate: f64 = s
        .trim()
        .parse()
        .map_err(|_| SampleRateError::NotANumber(s.to_string()))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(SampleRateError::OutOfRange(s.to_string()))
    }
}

impl AccessLog {
    /// Istio's text format, or the built-in JSON object.
    pub fn new(format: Format, sink: Sink) -> Self {
        let renderer = match format {
            Format::Text => Renderer::Text(Template::istio_default().clone()),
            Format::Json => Renderer::DefaultJson,
        };
        Self::build(format, renderer, sink)
    }

    /// `template`: an Envoy format string for [`Format::Text`], a json_format object for
    /// [`Format::Json`]; `None` or blank for the default. One trailing newline of a text format
    /// is dropped (each line gets one).
    pub fn with_template(
        format: Format,
        template: Option<&str>,
        sink: Sink,
    ) -> Result<Self, TemplateError> {
        let template = template.filter(|t| !t.trim().is_empty());
        let renderer = match (format, template) {
            (Format::Text, None) => Renderer::Text(Template::istio_default().clone()),
            (Format::Text, Some(t)) => Renderer::text(t)?,
            (Format::Json, None) => Renderer::DefaultJson,
            (Format::Json, Some(t)) => Renderer::Json(JsonTemplate::parse(t)?),
        };
        Ok(Self::build(format, renderer, sink))
    }

    fn build(format: Format, renderer: Renderer, sink: Sink) -> Self {
        let (request_headers, response_headers) =
            (renderer.request_headers(), renderer.response_headers());
        let stdout = matches!(sink, Sink::Stdout).then(|| batch::Batcher::spawn(std::io::stdout()));
        Self {
            format,
            renderer,
            sink,
            stdout,
            request_headers,
            response_headers,
            sample_rate: AtomicU64::new(1.0f64.to_bits()),
            written: AtomicU64::new(0),
            sampled_out: AtomicU64::new(0),
            configured: Default::default(),
            filtered_out: AtomicU64::new(0),
        }
    }

    /// Applies the Telemetry API's access logs: `None` restores the default log (the flags);
    /// `Some(sinks)` replaces it (empty: no lines). A sink whose format or filter cannot be used
    /// is left out; the errors name it. The sample rate applies to every sink.
    pub fn configure(&self, sinks: Option<&[routing::telemetry::AccessLogSink]>) -> Vec<String> {
        let Some(sinks) = sinks else {
            self.configured.store(None);
            return Vec::new();
        };
        let mut errors = Vec::new();
        let mut out = Configured::default();
        for sink in sinks {
            match ConfiguredSink::new(sink) {
                Ok(s) => {
                    for h in s.request_headers() {
                        if !out.request_headers.contains(&h) {
                            out.request_headers.push(h);
                        }
                    }
                    for h in s.response_headers() {
                        if !out.response_headers.contains(&h) {
                            out.response_headers.push(h);
                        }
                    }
                    out.sinks.push(s);
                }
                Err(e) => errors.push(format!("access log provider {}: {e}", sink.provider)),
            }
        }
        self.configured.store(Some(Arc::new(out)));
        errors
    }

    /// The logs lines go to now, with the headers they read.
    pub fn view(&self) -> LogView<'_> {
        LogView {
            log: self,
            configured: self.configured.load_full(),
        }
    }

    /// Lines the Telemetry API's filters left out.
    pub fn filtered_out(&self) -> u64 {
        self.filtered_out.load(Ordering::Relaxed)
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// Lowercase request header names the format reads that [`Entry`] has no field for: put
    /// these (when present) in [`Entry::request_headers`]. A pseudo header such as `:scheme`
    /// may be among them.
    pub fn request_headers(&self) -> &[String] {
        &self.request_headers
    }

    /// Lowercase response header names to put in [`Entry::response_headers`].
    pub fn response_headers(&self) -> &[String] {
        &self.response_headers
    }

    /// Fraction of lines written, clamped to 0..=1: 0 switches the log off, 1 writes every line.
    /// Takes effect for the next line; NaN is ignored.
    pub fn set_sample_rate(&self, rate: f64) {
        if rate.is_nan() {
            return;
        }
        self.sample_rate
            .store(rate.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    }

    pub fn sample_rate(&self) -> f64 {
        f64::from_bits(self.sample_rate.load(Ordering::Relaxed))
    }

    /// Lines written, and lines dropped by sampling, since start (the `Off` sink counts neither).
    pub fn stats(&self) -> (u64, u64) {
        (
            self.written.load(Ordering::Relaxed),
            self.sampled_out.load(Ordering::Relaxed),
        )
    }

    /// Lines dropped because the stdout writer could not keep up.
    pub fn dropped(&self) -> u64 {
        self.stdout.as_ref().map_or(0, batch::Batcher::dropped)
    }

    /// `write` calls the stdout writer has made (each carries a batch of lines).
    pub fn batches(&self) -> u64 {
        self.stdout.as_ref().map_or(0, batch::Batcher::writes)
    }

    /// Writes the lines still buffered, now (before the process exits).
    pub fn flush(&self) {
        if let Some(b) = &self.stdout {
            b.flush();
        }
    }

    /// The line for `entry` in this log's format (no trailing newline).
    pub fn render(&self, entry: &Entry) -> String {
        let mut out = Vec::with_capacity(512);
        self.render_into(&entry.line(), &mut out);
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// Appends the line for `line` in this log's format (no trailing newline) to `out`. Allocates
    /// nothing but `out`'s growth (see `tests/access_log_alloc.rs`).
    pub fn render_into(&self, line: &Line<'_>, out: &mut Vec<u8>) {
        self.renderer.write(line, out)
    }

    fn sampled_in(&self) -> bool {
        let rate = self.sample_rate();
        rate >= 1.0 || (rate > 0.0 && rand::random::<f64>() < rate)
    }

    /// Whether the next line is to be written (the sink is on and the sample takes it); a line
    /// sampled out is counted here. Build the [`Entry`] only when this is true.
    pub fn sample(&self) -> bool {
        if matches!(self.sink, Sink::Off) {
            return false;
        }
        if self
            .configured
            .load()
            .as_ref()
            .is_some_and(|c| c.sinks.is_empty())
        {
            return false;
        }
        if !self.sampled_in() {
            self.sampled_out.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Writes the line `build` makes, calling it only when the line is sampled in.
    pub fn log_with(&self, build: impl FnOnce() -> Entry) {
        if self.sample() {
            self.emit(&build().line());
        }
    }

    pub fn write(&self, entry: &Entry) {
        if self.sample() {
            self.emit(&entry.line());
        }
    }

    /// Renders and hands over a line already sampled in ([`AccessLog::sample`] said yes). For
    /// stdout the line is rendered straight into the writer's buffer: no `String` per line.
    pub fn emit(&self, line: &Line<'_>) {
        self.view().emit(line)
    }

    /// The default log's line (the flags' format).
    fn emit_default(&self, line: &Line<'_>) {
        match &self.sink {
            Sink::Off => return,
            // Requests never wait on stdout: a full buffer (a reader that stopped reading) drops
            // the line and counts it.
            Sink::Stdout => {
                if let Some(b) = &self.stdout {
                    b.push_with(|buf| self.render_into(line, buf));
                }
            }
            Sink::Memory(lines) => {
                let mut out = Vec::with_capacity(512);
                self.render_into(line, &mut out);
                let text = String::from_utf8(out)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                lines.lock().push(text);
            }
        }
        self.written.fetch_add(1, Ordering::Relaxed);
    }
}

/// The timestamp format Envoy uses for `%START_TIME%`.
pub fn timestamp(t: std::time::SystemTime) -> String {
    let mut out = Vec::with_capacity(24);
    template::time::write_timestamp(t, &mut out);
    String::from_utf8(out).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory(format: Format, template: Option<&str>) -> (AccessLog, Arc<Mutex<Vec<String>>>) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log = AccessLog::with_template(format, template, Sink::Memory(lines.clone())).unwrap();
        (log, lines)
    }

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
        assert_eq!(
            line,
            "[2026-01-01T00:00:00.000Z] \"GET / HTTP/1.1\" 404 NR - - \"-\" 0 0 0 - \"-\" \"-\" \
             \"-\" \"-\" \"-\" - - - - - -"
        );
        let json: serde_json::Value = serde_json::from_str(&e.render(Format::Json)).unwrap();
        assert_eq!(json["response_flags"], "NR");
        assert_eq!(json["upstream_service_time"], serde_json::Value::Null);
    }

    /// Istio's JSON access log keys: `EnvoyJSONLogFormatIstio` in istio/istio
    /// `pilot/pkg/networking/core/accesslog.go` (1.2x), every value one command operator.
    const ISTIO_JSON_KEYS: [&str; 24] = [
        "start_time",
        "route_name",
        "method",
        "path",
        "protocol",
        "response_code",
        "response_flags",
        "response_code_details",
        "connection_termination_details",
        "bytes_received",
        "bytes_sent",
        "duration",
        "upstream_service_time",
        "x_forwarded_for",
        "user_agent",
        "request_id",
        "authority",
        "upstream_host",
        "upstream_cluster",
        "upstream_local_address",
        "downstream_local_address",
        "downstream_remote_address",
        "requested_server_name",
        "upstream_transport_failure_reason",
    ];

    #[test]
    fn default_json_is_istios_keys_typed_as_envoy_writes_them() {
        let e = Entry {
            response_code: 200,
            duration_ms: 7,
            upstream_service_time_ms: Some(3),
            upstream_local_address: "10.0.0.5:40123".into(),
            tunnel_traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
            request_headers: vec![("x-a".into(), "b".into())],
            attempt_count: 1,
            ..Default::default()
        };
        let (log, lines) = memory(Format::Json, None);
        log.write(&e);
        let line = lines.lock()[0].clone();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        // Istio's keys, and the waypoint's own three (the others only when set).
        let mut want: Vec<&str> = ISTIO_JSON_KEYS.to_vec();
        want.extend(["source_principal", "tunnel_traceparent", "config_version"]);
        want.sort_unstable();
        assert_eq!(keys, want);
        // Numbers where Envoy's operator is numeric; a header's value is text; absent is null.
        assert_eq!(v["response_code"], 200);
        assert_eq!(v["bytes_sent"], 0);
        assert_eq!(v["duration"], 7);
        assert_eq!(v["upstream_service_time"], "3");
        assert_eq!(v["upstream_local_address"], "10.0.0.5:40123");
        assert_eq!(v["response_flags"], "-", "Envoy's none");
        for absent in [
            "requested_server_name",
            "connection_termination_details",
            "method",
        ] {
            assert_eq!(v[absent], serde_json::Value::Null, "{absent}");
        }
        assert_eq!(
            v["tunnel_traceparent"],
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        let v: serde_json::Value =
            serde_json::from_str(&Entry::default().render(Format::Json)).unwrap();
        assert_eq!(v["upstream_service_time"], serde_json::Value::Null);
        assert_eq!(v["duration"], 0);
        // Blank templates mean the default.
        let (log, _) = memory(Format::Json, Some("  "));
        assert_eq!(log.render(&e), line);
        assert!(log.request_headers().is_empty());
    }

    #[test]
    fn custom_templates() {
        let (log, lines) = memory(
            Format::Text,
            Some("%REQ(:METHOD)% %RESPONSE_CODE% %REQ(X-TENANT)% %RESP(X-B)%\n"),
        );
        assert_eq!(log.request_headers(), ["x-tenant"]);
        assert_eq!(log.response_headers(), ["x-b"]);
        log.write(&Entry {
            method: "POST".into(),
            response_code: 201,
            request_headers: vec![("x-tenant".into(), "acme".into())],
            ..Default::default()
        });
        assert_eq!(*lines.lock(), ["POST 201 acme -"]);

        let (log, lines) = memory(
            Format::Json,
            Some(r#"{"c":"%RESPONSE_CODE%","m":"%REQ(:METHOD)%"}"#),
        );
        log.write(&Entry::default());
        assert_eq!(*lines.lock(), [r#"{"c":0,"m":null}"#]);

        let err = AccessLog::with_template(Format::Text, Some("x %NOPE%"), Sink::Off)
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "unknown command operator %NOPE% at offset 2"
        );
        assert!(AccessLog::with_template(Format::Json, Some("%DURATION%"), Sink::Off).is_err());
    }

    #[test]
    fn tcp_lines_render_in_both_formats() {
        let e = Entry {
            start_time: "2026-01-01T00:00:00.000Z".into(),
            response_flags: "UF".into(),
            upstream_transport_failure_reason: "connection refused".into(),
            ..Default::default()
        };
        assert_eq!(
            AccessLog::new(Format::Text, Sink::Off).render(&e),
            "[2026-01-01T00:00:00.000Z] \"- - -\" 0 UF - - \"connection refused\" 0 0 0 - \"-\" \
             \"-\" \"-\" \"-\" \"-\" - - - - - -"
        );
        let v: serde_json::Value =
            serde_json::from_str(&AccessLog::new(Format::Json, Sink::Off).render(&e)).unwrap();
        assert_eq!(v["method"], serde_json::Value::Null);
        assert_eq!(v["response_flags"], "UF");
    }

    #[test]
    fn sampling() {
        let e = Entry::default();
        let (log, lines) = memory(Format::Text, None);
        assert_eq!(log.sample_rate(), 1.0);
        for _ in 0..100 {
            log.write(&e);
        }
        assert_eq!(lines.lock().len(), 100);
        assert_eq!(log.stats(), (100, 0));

        log.set_sample_rate(0.0);
        for _ in 0..100 {
            log.write(&e);
        }
        assert_eq!(lines.lock().len(), 100, "rate 0 writes nothing");
        assert_eq!(log.stats(), (100, 100));

        log.set_sample_rate(0.5);
        for _ in 0..2000 {
            log.write(&e);
        }
        let written = lines.lock().len() - 100;
        // Binomial(2000, 0.5): sd ≈ 22; ±200 is > 8 sd.
        assert!((800..=1200).contains(&written), "{written} of 2000");
        let (w, s) = log.stats();
        assert_eq!(w + s, 2200);
        assert_eq!(w, 100 + written as u64);

        log.set_sample_rate(7.0);
        assert_eq!(log.sample_rate(), 1.0);
        log.set_sample_rate(-1.0);
        assert_eq!(log.sample_rate(), 0.0);
        log.set_sample_rate(f64::NAN);
        assert_eq!(log.sample_rate(), 0.0);
        log.set_sample_rate(1.0);
        log.write(&e);
        assert_eq!(lines.lock().len(), 100 + written + 1);

        let off = AccessLog::new(Format::Text, Sink::Off);
        off.write(&e);
        assert_eq!(off.stats(), (0, 0));
    }

    /// A sampled-out line is never built nor rendered: sampling is decided first.
    #[test]
    fn sampled_out_lines_are_not_built() {
        let (log, lines) = memory(Format::Text, None);
        let builds = std::cell::Cell::new(0u32);
        let build = || {
            builds.set(builds.get() + 1);
            Entry::default()
        };
        log.set_sample_rate(0.0);
        for _ in 0..100 {
            log.log_with(build);
        }
        assert_eq!(builds.get(), 0, "no Entry built for a sampled-out line");
        assert_eq!(log.stats(), (0, 100), "no line rendered");
        assert!(lines.lock().is_empty());
        log.set_sample_rate(1.0);
        log.log_with(build);
        assert_eq!(builds.get(), 1);
        assert_eq!(log.stats(), (1, 100));
        assert_eq!(lines.lock().len(), 1);
        let off = AccessLog::new(Format::Text, Sink::Off);
        off.log_with(build);
        assert_eq!(builds.get(), 1, "the Off sink builds nothing");
    }

    #[test]
    fn sample_rate_flag() {
        assert_eq!(parse_sample_rate("0.25"), Ok(0.25));
        assert_eq!(parse_sample_rate("1"), Ok(1.0));
        assert_eq!(parse_sample_rate("0"), Ok(0.0));
        assert!(parse_sample_rate("1.5").is_err());
        assert!(parse_sample_rate("-0.1").is_err());
        assert!(parse_sample_rate("NaN").is_err());
        assert!(parse_sample_rate("x").is_err());
    }
}
