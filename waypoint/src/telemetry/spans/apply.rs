//! The Telemetry API's part of a published snapshot, applied: the access logs are replaced and
//! the tracer (with its export thread) rebuilt only when what the config declares changed.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;
use routing::telemetry::TelemetryConfig;

use super::{ExportStats, Tracer};
use crate::telemetry::access_log::AccessLog;

pub struct TelemetryApi {
    /// The tracer requests start their spans with; `None`: tracing is off.
    pub tracer: ArcSwapOption<Tracer>,
    /// Spans exported, dropped and failed, across tracers.
    pub export: Arc<ExportStats>,
    access_log: Arc<AccessLog>,
    applied: Mutex<Option<Arc<TelemetryConfig>>>,
    /// What the last change could not apply (named), for status.
    pub problems: Mutex<Vec<String>>,
}

impl TelemetryApi {
    pub fn new(access_log: Arc<AccessLog>) -> Self {
        Self {
            tracer: ArcSwapOption::empty(),
            export: Arc::default(),
            access_log,
            applied: Mutex::new(None),
            problems: Mutex::new(Vec::new()),
        }
    }

    /// Applies `config` unless it is what is applied already.
    pub fn apply(&self, config: &Arc<TelemetryConfig>) {
        let mut applied = self.applied.lock();
        if applied.as_deref() == Some(&**config) {
            return;
        }
        let mut problems = self.access_log.configure(config.access_logs.as_deref());
        let same_tracer = self.tracer.load().as_ref().map(|t| t.declared()).cloned();
        match &config.tracing {
            None => self.tracer.store(None),
            Some(t) if same_tracer.as_ref() == Some(t) => {}
            Some(t) => match Tracer::new(t, self.export.clone()) {
                Ok(tracer) => self.tracer.store(Some(Arc::new(tracer))),
                Err(e) => {
                    self.tracer.store(None);
                    problems.push(format!(
                        "tracing provider {}: cannot start the export thread: {e}",
                        t.provider
                    ));
                }
            },
        }
        for p in &problems {
            tracing::error!(problem = %p, "telemetry config not applied in part");
        }
        tracing::info!(
            sources = ?config.sources,
            access_logs = config.access_logs.as_ref().map(Vec::len),
            tracing = config.tracing.as_ref().map(|t| t.provider.as_str()),
            "telemetry config applied"
        );
        *self.problems.lock() = problems;
        *applied = Some(config.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::access_log::{Format, Sink};
    use routing::telemetry::{Collector, CollectorProtocol, Tracing};

    fn tracing(percent: f64) -> Tracing {
        Tracing {
            provider: "otel".into(),
            collector: Collector {
                protocol: CollectorProtocol::OtlpGrpc,
                host: "127.0.0.1".into(),
                port: 4317,
                path: String::new(),
                timeout: std::time::Duration::from_secs(1),
                headers: vec![],
            },
            service_name: String::new(),
            sampling_percent: percent,
            custom_tags: vec![],
            max_tag_length: 256,
        }
    }

    #[test]
    fn the_tracer_is_rebuilt_only_when_its_config_changes() {
        let api = TelemetryApi::new(Arc::new(AccessLog::new(Format::Text, Sink::Off)));
        let config = |t: Option<Tracing>| {
            Arc::new(TelemetryConfig {
                tracing: t,
                ..Default::default()
            })
        };
        api.apply(&config(Some(tracing(10.0))));
        let first = api.tracer.load_full().expect("tracing on");
        assert_eq!(first.declared().service_name, "", "declared as given");
        // An equal config in a new snapshot (a push that changed something else): same tracer,
        // same export thread.
        api.apply(&config(Some(tracing(10.0))));
        assert!(Arc::ptr_eq(&first, &api.tracer.load_full().unwrap()));
        api.apply(&config(Some(tracing(50.0))));
        assert!(!Arc::ptr_eq(&first, &api.tracer.load_full().unwrap()));
        api.apply(&config(None));
        assert!(api.tracer.load().is_none());
    }
}
