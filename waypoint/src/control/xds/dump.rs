//! Saved xDS config (a `/config_dump`, `istioctl proxy-config all -o json`) translated offline.

use std::collections::BTreeSet;

use routing::xds::{Resources, TranslateOptions};

/// Translate Envoy resources saved as JSON (an Envoy waypoint's `/config_dump`, `istioctl
/// proxy-config all <pod> -o json`, or a list of resources) into a snapshot, offline, as the
/// xDS client would: a resource Envoy would reject is refused alone and the rest translated.
/// `Err` only when the file cannot be read or the state cannot be used at all.
pub fn load_dump(path: &std::path::Path, trust_domain: &str) -> Result<Dump, DumpError> {
    let file = path.to_path_buf();
    let text = std::fs::read_to_string(path).map_err(|source| DumpError::Read {
        path: file.clone(),
        source,
    })?;
    let routing::xds::json::Loaded { resources, skipped } = routing::xds::json::load(&text)
        .map_err(|source| DumpError::Json {
            path: file.clone(),
            source,
        })?;
    let options = TranslateOptions {
        trust_domain: trust_domain.to_string(),
        ..TranslateOptions::default()
    };
    let (translation, refused) =
        routing::xds::translate_refusing(&resources, &options).map_err(|rejections| {
            DumpError::Rejected {
                path: file,
                rejections,
            }
        })?;
    Ok(Dump {
        resources,
        skipped,
        translation,
        refused,
    })
}

/// Why a saved xDS config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Json {
        path: std::path::PathBuf,
        source: routing::xds::json::JsonError,
    },
    #[error("{}: the config cannot be used; Envoy would reject:\n{}", path.display(), lines(rejections))]
    Rejected {
        path: std::path::PathBuf,
        rejections: Vec<routing::xds::Rejection>,
    },
}

fn lines(rejections: &[routing::xds::Rejection]) -> String {
    let lines: Vec<String> = rejections.iter().map(|r| format!("  {r}")).collect();
    lines.join("\n")
}

/// A saved xDS config, translated.
pub struct Dump {
    pub resources: Resources,
    /// Entries of a config dump that are not istiod's waypoint resources (bootstrap, secrets,
    /// inline copies…), each with why.
    pub skipped: Vec<routing::xds::json::Skipped>,
    pub translation: routing::xds::Translation,
    /// Resources Envoy would reject, left out of the translation.
    pub refused: Vec<routing::xds::Rejection>,
}

impl Dump {
    /// One line per resource: `translated`, `warned` (with each warning) or `rejected` (why),
    /// then warnings that name no resource of the file.
    pub fn report(&self) -> String {
        use std::fmt::Write as _;
        let short = |t: &str| t.rsplit('.').next().unwrap_or(t).to_string();
        let mut out = String::new();
        let mut named = BTreeSet::new();
        for (t, name) in self.resources.names() {
            named.insert((t, name));
            let rejected: Vec<_> = self
                .refused
                .iter()
                .filter(|r| r.type_url == t && r.name == name)
                .collect();
            let warned: Vec<_> = self
                .translation
                .warnings
                .iter()
                .filter(|w| w.type_url == t && w.name == name)
                .collect();
            let status = match (rejected.is_empty(), warned.is_empty()) {
                (false, _) => "rejected",
                (true, false) => "warned",
                (true, true) => "translated",
            };
            let _ = writeln!(out, "{status:<10} {} {name}", short(t));
            for r in rejected {
                let _ = writeln!(out, "           rejected: {}", r.reason);
            }
            for w in warned {
                let _ = writeln!(out, "           warning: {}", w.message);
            }
        }
        for w in &self.translation.warnings {
            if !named.contains(&(w.type_url, w.name.as_str())) {
                let _ = writeln!(out, "warning    {w}");
            }
        }
        for s in &self.skipped {
            let what = format!("{} {}", s.kind, s.name);
            let _ = writeln!(out, "skipped    {}", what.trim_end());
            let _ = writeln!(out, "           why: {}", s.why);
        }
        out
    }
}
