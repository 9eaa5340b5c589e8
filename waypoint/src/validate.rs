//! `waypoint validate DIR`: check a config directory the way `waypoint run` would load it, without
//! starting anything — one line per problem naming file, document, resource and field, like
//! `istioctl analyze`. Exit 0 when the config loads (warnings allowed), 1 when it does not.

use std::path::PathBuf;

use serde_json::json;

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Directory of Istio YAML, as given to `waypoint run --config`.
    pub dir: PathBuf,
    /// Mesh trust domain (endpoint identities are minted in it).
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// `text` (one line per problem) or `json`.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// Prints the verdict; returns the process exit code.
pub fn run(args: &ValidateArgs) -> i32 {
    if !args.dir.is_dir() {
        eprintln!("{}: not a directory", args.dir.display());
        return 1;
    }
    let result = routing::load_dir(&args.dir, &args.trust_domain);
    match (&result, args.output) {
        (Ok(snapshot), Output::Text) => {
            for w in snapshot.warnings() {
                println!("warning: {w}");
            }
            println!(
                "{}: valid ({} services, {} warnings)",
                args.dir.display(),
                snapshot.services().count(),
                snapshot.warnings().len()
            );
        }
        (Err(errors), Output::Text) => {
            for e in errors.iter() {
                println!("error: {e}");
            }
            println!("{}: {} problem(s)", args.dir.display(), errors.len());
        }
        (Ok(snapshot), Output::Json) => println!(
            "{}",
            json!({
                "valid": true,
                "services": snapshot.services().count(),
                "warnings": snapshot.warnings(),
                "errors": [],
            })
        ),
        (Err(errors), Output::Json) => {
            let list: Vec<_> = errors
                .iter()
                .map(|e| {
                    json!({
                        "file": e.at.file,
                        "doc": e.at.doc,
                        "kind": e.at.kind,
                        "name": e.at.name,
                        "field": e.field,
                        "message": e.message,
                        "text": e.to_string(),
                    })
                })
                .collect();
            println!(
                "{}",
                json!({"valid": false, "errors": list, "warnings": []})
            );
        }
    }
    i32::from(result.is_err())
}
