//! The Telemetry API's access logs: each sink has its format, its CEL filter and its stream,
//! and replaces the default log (the `--access-log-*` flags) while the config declares any.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{filter, AccessLog, JsonTemplate, Line, Renderer, Sink, Template, TemplateError};

/// The Telemetry API's logs.
#[derive(Default)]
pub(super) struct Configured {
    pub(super) sinks: Vec<ConfiguredSink>,
    pub(super) request_headers: Vec<String>,
    pub(super) response_headers: Vec<String>,
}

/// Why a configured sink cannot be used (the caller names its provider).
#[derive(Debug, thiserror::Error)]
pub(super) enum SinkError {
    #[error("format: {0}")]
    Text(#[source] TemplateError),
    #[error("JSON format: {0}")]
    Json(#[source] TemplateError),
    #[error("filter: {0}")]
    Filter(#[from] filter::FilterError),
}

pub(super) struct ConfiguredSink {
    renderer: Renderer,
    filter: Option<filter::LogFilter>,
    path: routing::telemetry::LogPath,
}

impl ConfiguredSink {
    pub(super) fn new(sink: &routing::telemetry::AccessLogSink) -> Result<Self, SinkError> {
        use routing::telemetry::LogFormat;
        let renderer = match &sink.format {
            LogFormat::IstioText => Renderer::Text(Template::istio_default().clone()),
            LogFormat::IstioJson => Renderer::DefaultJson,
            LogFormat::Text(t) => Renderer::text(t).map_err(SinkError::Text)?,
            LogFormat::Json(j) => Renderer::Json(JsonTemplate::parse(j).map_err(SinkError::Json)?),
        };
        let filter = sink
            .filter
            .as_deref()
            .map(filter::LogFilter::compile)
            .transpose()?;
        Ok(Self {
            renderer,
            filter,
            path: sink.path,
        })
    }

    pub(super) fn request_headers(&self) -> Vec<String> {
        let mut h = self.renderer.request_headers();
        if let Some(f) = &self.filter {
            h.extend(f.request_headers().iter().cloned());
        }
        h
    }

    pub(super) fn response_headers(&self) -> Vec<String> {
        let mut h = self.renderer.response_headers();
        if let Some(f) = &self.filter {
            h.extend(f.response_headers().iter().cloned());
        }
        h
    }
}

impl Renderer {
    /// An Envoy format string's renderer; one trailing newline is dropped (each line gets one).
    pub(super) fn text(t: &str) -> Result<Self, super::TemplateError> {
        let t = t
            .strip_suffix("\r\n")
            .or_else(|| t.strip_suffix('\n'))
            .unwrap_or(t);
        Ok(Renderer::Text(Template::parse(t)?))
    }

    pub(super) fn request_headers(&self) -> Vec<String> {
        match self {
            Renderer::Text(t) => t.request_headers(),
            Renderer::Json(j) => j.request_headers(),
            Renderer::DefaultJson => Vec::new(),
        }
    }

    pub(super) fn response_headers(&self) -> Vec<String> {
        match self {
            Renderer::Text(t) => t.response_headers(),
            Renderer::Json(j) => j.response_headers(),
            Renderer::DefaultJson => Vec::new(),
        }
    }

    pub(super) fn write(&self, line: &Line<'_>, out: &mut Vec<u8>) {
        match self {
            Renderer::Text(t) => t.write_text(line, out),
            Renderer::DefaultJson => line.write_default_json(out),
            Renderer::Json(j) => j.write(line, out),
        }
    }
}

/// The logs of the moment: the default one, or the Telemetry API's.
pub struct LogView<'a> {
    pub(super) log: &'a AccessLog,
    pub(super) configured: Option<Arc<Configured>>,
}

impl LogView<'_> {
    /// Request headers the formats and filters read (see [`AccessLog::request_headers`]).
    pub fn request_headers(&self) -> &[String] {
        match &self.configured {
            Some(c) => &c.request_headers,
            None => &self.log.request_headers,
        }
    }

    pub fn response_headers(&self) -> &[String] {
        match &self.configured {
            Some(c) => &c.response_headers,
            None => &self.log.response_headers,
        }
    }

    /// Writes the line (already sampled in) to each log whose filter takes it.
    pub fn emit(&self, line: &Line<'_>) {
        let Some(c) = &self.configured else {
            return self.log.emit_default(line);
        };
        let log = self.log;
        for sink in &c.sinks {
            if sink.filter.as_ref().is_some_and(|f| !f.matches(line)) {
                log.filtered_out.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match (&log.sink, sink.path) {
                (Sink::Off, _) => return,
                (Sink::Stdout, routing::telemetry::LogPath::Stdout) => {
                    if let Some(b) = &log.stdout {
                        b.push_with(|buf| sink.renderer.write(line, buf));
                    }
                }
                (Sink::Stdout, routing::telemetry::LogPath::Stderr) => {
                    use std::io::Write;
                    let mut out = Vec::with_capacity(512);
                    sink.renderer.write(line, &mut out);
                    out.push(b'\n');
                    let _ = std::io::stderr().lock().write_all(&out);
                }
                (Sink::Memory(lines), _) => {
                    let mut out = Vec::with_capacity(512);
                    sink.renderer.write(line, &mut out);
                    lines
                        .lock()
                        .push(String::from_utf8_lossy(&out).into_owned());
                }
            }
            log.written.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::access_log::{Entry, Format};
    use parking_lot::Mutex;
    use routing::telemetry::{AccessLogSink, LogFormat, LogPath};

    fn sink(format: LogFormat, filter: Option<&str>) -> AccessLogSink {
        AccessLogSink {
            provider: "p".into(),
            format,
            filter: filter.map(str::to_string),
            path: LogPath::Stdout,
        }
    }

    fn entry(code: u16, debug: &str) -> Entry {
        Entry {
            method: "GET".into(),
            path: "/x".into(),
            response_code: code,
            request_headers: vec![("x-debug".into(), debug.into())],
            ..Default::default()
        }
    }

    #[test]
    fn each_sink_writes_its_format_when_its_filter_takes_the_line() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let log = AccessLog::new(Format::Json, Sink::Memory(lines.clone()));
        let errors = log.configure(Some(&[
            sink(LogFormat::Text("%RESPONSE_CODE% all".into()), None),
            sink(
                LogFormat::Text("%RESPONSE_CODE% debug %REQ(X-DEBUG)%".into()),
                Some("request.headers['x-debug'] == 'on'"),
            ),
            sink(
                LogFormat::Json(r#"{"code":"%RESPONSE_CODE%"}"#.into()),
                Some("response.code >= 500"),
            ),
            // Left out, named; the others still log.
            sink(LogFormat::Text("%NOT_A_THING%".into()), None),
            sink(LogFormat::IstioText, Some("response.code >=")),
        ]));
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors
            .iter()
            .all(|e| e.starts_with("access log provider p:")));
        let view = log.view();
        assert_eq!(view.request_headers(), ["x-debug"], "what the filters read");
        for e in [entry(200, "off"), entry(503, "on")] {
            if log.sample() {
                let request_headers = e.request_headers.clone();
                let line = Line {
                    request_headers: &request_headers,
                    ..e.line()
                };
                log.view().emit(&line);
            }
        }
        assert_eq!(
            *lines.lock(),
            ["200 all", "503 all", "503 debug on", r#"{"code":503}"#]
        );
        assert_eq!(log.filtered_out(), 2);
        // Declared off: nothing sampled in; undeclared: the default log again.
        log.configure(Some(&[]));
        assert!(!log.sample());
        log.configure(None);
        assert!(log.sample());
        log.emit(&entry(200, "").line());
        assert!(lines.lock()[4].starts_with('{'), "the default JSON line");
    }
}
