//! Process logs (stderr) with a filter that the admin port can change at runtime:
//! `POST /logging?level=debug` sets the default level, `POST /logging?waypoint::dataplane::proxy=trace`
//! one target's level (`off` works for both).

use std::collections::BTreeMap;

use parking_lot::Mutex;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Directives {
    /// The default level, or a full filter expression given at startup.
    base: String,
    /// Per-target levels set at runtime, applied after `base`.
    targets: BTreeMap<String, String>,
}

impl Directives {
    fn render(&self) -> String {
        let mut s = self.base.clone();
        for (target, level) in &self.targets {
            s.push(',');
            s.push_str(target);
            s.push('=');
            s.push_str(level);
        }
        s
    }
}

pub struct LogControl {
    handle: Option<reload::Handle<EnvFilter, Registry>>,
    current: Mutex<Directives>,
}

impl std::fmt::Debug for LogControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogControl")
            .field("filter", &self.filter())
            .finish()
    }
}

fn valid_target(t: &str) -> bool {
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-' || c == '.')
}

impl LogControl {
    /// Install the global subscriber. An invalid filter falls back to `info` with a warning
    /// on stderr (the process still starts).
    pub fn init(filter: &str) -> Self {
        Self::init_with(filter, false)
    }

    /// Like [`LogControl::init`]; `json` writes one JSON object per log line.
    pub fn init_with(filter: &str, json: bool) -> Self {
        let (filter, base) = match EnvFilter::try_new(filter) {
            Ok(f) => (f, filter.to_string()),
            Err(e) => {
                eprintln!("invalid --log filter {filter:?}: {e}; using info");
                (EnvFilter::new("info"), "info".to_string())
            }
        };
        let (layer, handle) = reload::Layer::new(filter);
        let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        let installed = if json {
            tracing_subscriber::registry()
                .with(layer)
                .with(fmt.json())
                .try_init()
        } else {
            tracing_subscriber::registry()
                .with(layer)
                .with(fmt)
                .try_init()
        }
        .is_ok();
        Self {
            // When a subscriber already exists (tests), changes have nothing to act on.
            handle: installed.then_some(handle),
            current: Mutex::new(Directives {
                base,
                targets: BTreeMap::new(),
            }),
        }
    }

    /// The levels in effect: `default` (the base filter) first, then each target set at
    /// runtime.
    pub fn loggers(&self) -> Vec<(String, String)> {
        let current = self.current.lock();
        std::iter::once(("default".to_string(), current.base.clone()))
            .chain(current.targets.iter().map(|(t, l)| (t.clone(), l.clone())))
            .collect()
    }

    /// The filter in effect, in env-filter syntax.
    pub fn filter(&self) -> String {
        self.current.lock().render()
    }

    /// Apply `level=<lvl>` (default level; clears per-target levels) and `<target>=<lvl>` pairs.
    /// Nothing changes unless every pair is valid. Returns the new filter.
    pub fn apply(&self, pairs: &[(String, String)]) -> Result<String, LogFilterError> {
        if pairs.is_empty() {
            return Err(LogFilterError::Empty);
        }
        let mut next = self.current.lock().clone();
        for (key, level) in pairs {
            let level = level.to_ascii_lowercase();
            if !LEVELS.contains(&level.as_str()) {
                return Err(LogFilterError::Level {
                    level,
                    key: key.clone(),
                });
            }
            if key == "level" {
                next.base = level;
                next.targets.clear();
            } else if valid_target(key) {
                next.targets.insert(key.clone(), level);
            } else {
                return Err(LogFilterError::Target(key.clone()));
            }
        }
        let rendered = next.render();
        let filter = EnvFilter::try_new(&rendered).map_err(|e| LogFilterError::Filter {
            filter: rendered.clone(),
            reason: e.to_string(),
        })?;
        if let Some(handle) = &self.handle {
            handle
                .reload(filter)
                .map_err(|e| LogFilterError::Reload(e.to_string()))?;
        }
        *self.current.lock() = next;
        Ok(rendered)
    }
}

/// Why a log filter change was refused (nothing changed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogFilterError {
    #[error("give level=<level> or <target>=<level>")]
    Empty,
    #[error("unknown level {level:?} for {key:?}; use one of {}", LEVELS.join(", "))]
    Level { level: String, key: String },
    #[error("{0:?} is not a log target")]
    Target(String),
    #[error("{filter}: {reason}")]
    Filter { filter: String, reason: String },
    #[error("reloading the log filter: {0}")]
    Reload(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn control(base: &str) -> LogControl {
        LogControl {
            handle: None,
            current: Mutex::new(Directives {
                base: base.into(),
                targets: BTreeMap::new(),
            }),
        }
    }

    fn kv(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn level_and_targets_compose() {
        let c = control("info");
        assert_eq!(
            c.apply(&[kv("waypoint::dataplane::proxy", "debug")])
                .unwrap(),
            "info,waypoint::dataplane::proxy=debug"
        );
        assert_eq!(c.apply(&[kv("level", "WARN")]).unwrap(), "warn");
    }

    #[test]
    fn bad_input_changes_nothing() {
        let c = control("info");
        assert!(c
            .apply(&[kv("level", "loud")])
            .unwrap_err()
            .to_string()
            .contains("loud"));
        assert!(c
            .apply(&[kv("waypoint", "debug"), kv("a b", "info")])
            .is_err());
        assert!(c.apply(&[]).is_err());
        assert_eq!(c.filter(), "info");
    }
}
