//! `waypoint validate PATH`: check a config directory (or one file) the way `waypoint run` would
//! load it, without starting anything — one line per problem naming file, document, resource and
//! field, like `istioctl analyze`. Exit 0 when the config loads (warnings allowed), 1 when it does
//! not.

use std::path::PathBuf;

use routing::DocRef;
use serde_json::{json, Value};

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Directory of Istio YAML, as given to `waypoint run --config`, or a single YAML file.
    pub path: PathBuf,
    /// Mesh trust domain (endpoint identities are minted in it).
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    #[command(flatten)]
    pub waypoint: crate::commands::cli::WaypointArgs,
    /// meshConfig YAML whose providers Telemetry documents name (as `waypoint run --mesh-config`);
    /// without it only the built-in `envoy` log provider is known.
    #[arg(long, env = crate::config::env::WAYPOINT_MESH_CONFIG, value_name = "FILE")]
    pub mesh_config: Option<PathBuf>,
    /// `text` (one line per problem) or `json`.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// One error or warning as a JSON object (the same keys for both).
fn problem(at: &DocRef, field: &Option<String>, message: &str, text: String) -> Value {
    json!({
        "file": at.file,
        "doc": at.doc,
        "kind": at.kind,
        "name": at.name,
        "field": field,
        "message": message,
        "text": text,
    })
}

/// Prints the verdict; returns the process exit code.
pub fn run(args: &ValidateArgs) -> i32 {
    let mut options = args.waypoint.load_options(&args.trust_domain);
    if let Some(mesh) = &args.mesh_config {
        match crate::config::mesh_telemetry(mesh) {
            Ok((m, warnings)) => {
                for w in warnings {
                    crate::outln!("warning: {}: {w}", mesh.display());
                }
                options.mesh = std::sync::Arc::new(m);
            }
            Err(e) => {
                crate::outln!("error: {e}");
                return 1;
            }
        }
    }
    let report = routing::check_path_with(&args.path, &options);
    let path = args.path.display();
    match args.output {
        Output::Text => {
            for w in &report.warnings {
                crate::outln!("warning: {w}");
            }
            match &report.result {
                Ok(snapshot) => crate::outln!(
                    "{path}: valid ({} services, {} warnings)",
                    snapshot.services().count(),
                    report.warnings.len()
                ),
                Err(errors) => {
                    for e in errors.iter() {
                        crate::outln!("error: {e}");
                    }
                    crate::outln!("{path}: {} problem(s)", errors.len());
                }
            }
        }
        Output::Json => {
            let warnings: Vec<Value> = report
                .warnings
                .iter()
                .map(|w| problem(&w.at, &w.field, &w.message, w.to_string()))
                .collect();
            let verdict = match &report.result {
                Ok(snapshot) => json!({
                    "valid": true,
                    "services": snapshot.services().count(),
                    "warnings": warnings,
                    "errors": [],
                }),
                Err(errors) => {
                    let errors: Vec<Value> = errors
                        .iter()
                        .map(|e| problem(&e.at, &e.field, &e.message, e.to_string()))
                        .collect();
                    json!({"valid": false, "errors": errors, "warnings": warnings})
                }
            };
            crate::outln!("{verdict}");
        }
    }
    i32::from(report.result.is_err())
}
