//! `waypoint translate`: what istiod sends a waypoint, saved as JSON, translated offline.

use crate::config::{self, env};
use crate::control::xds::load_dump;

/// `waypoint translate`: print the snapshot a saved xDS config translates to.
#[derive(Debug, clap::Args)]
pub struct TranslateArgs {
    /// Envoy resources as JSON: an Envoy waypoint's `/config_dump`, `istioctl proxy-config all
    /// <waypoint-pod> -o json`, or a list of typed resources.
    pub file: std::path::PathBuf,
    /// Mesh trust domain (when connect_originate names none).
    #[arg(long, env = env::TRUST_DOMAIN, default_value = config::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Exit 1 on any warning too, not only on resources Envoy would reject.
    #[arg(long)]
    pub strict: bool,
}

/// Print the snapshot JSON (the shape of `/config_dump?format=waypoint`'s `config.snapshot`) on stdout and, on
/// stderr, every resource's status: translated, warned (why) or rejected (why). Exit 1 when a
/// resource would be rejected (with `--strict`: also on a warning); the rest is still printed.
pub fn run(args: &TranslateArgs) -> i32 {
    match load_dump(&args.file, &args.trust_domain) {
        Ok(dump) => {
            eprint!("{}", dump.report());
            let warned = !dump.translation.warnings.is_empty();
            eprintln!(
                "{} resources: {} rejected, {} warning(s); {} dump entries not translated",
                dump.resources.len(),
                dump.refused.len(),
                dump.translation.warnings.len(),
                dump.skipped.len()
            );
            crate::outln!(
                "{}",
                serde_json::to_string_pretty(&dump.translation.snapshot.to_json())
                    .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            );
            i32::from(!dump.refused.is_empty() || (args.strict && warned))
        }
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}
