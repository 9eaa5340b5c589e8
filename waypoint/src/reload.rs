//! Keeping the running waypoint's inputs current: loading the identity and the config, watching
//! their files (applied once they have settled), renewing istiod-issued certificates with backoff,
//! and hot-reloading the config. Invalid updates are rejected, logged once and counted; the last
//! good identity or config keeps serving.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use routing::Snapshot;
use tracing::{info, warn};

use crate::app::App;
use crate::cli::RunArgs;
use crate::identity::{
    read_token, request_certificate, CaClientConfig, IdentityError, SpiffeId, WorkloadCert,
};

/// What one look at the files found.
pub(crate) enum Found<T> {
    Ready(T),
    /// Not there (yet): the reason for readiness.
    Missing(String),
    /// There but unusable.
    Invalid(String),
}

pub(crate) fn load_identity(args: &RunArgs) -> Found<WorkloadCert> {
    match WorkloadCert::from_files(&args.cert_chain, &args.key, &args.trust_bundle) {
        Ok(cert) => match &args.expected_identity {
            Some(expected) if cert.id.to_string() != *expected => Found::Invalid(format!(
                "certificate {} is for {}, but this waypoint runs as {expected}",
                args.cert_chain.display(),
                cert.id
            )),
            _ => Found::Ready(cert),
        },
        Err(IdentityError::Read { source, path, what })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Found::Missing(format!("{what} file {} does not exist", path.display()))
        }
        Err(e) => Found::Invalid(format!("loading the waypoint's identity: {e}")),
    }
}

pub(crate) fn load_config(dir: &Path, options: &routing::LoadOptions) -> Found<Snapshot> {
    if !dir.is_dir() {
        return Found::Missing(format!("config directory {} does not exist", dir.display()));
    }
    match routing::load_dir_with(dir, options) {
        Ok(snapshot) => Found::Ready(snapshot),
        Err(errors) => Found::Invalid(format!(
            "{} problem(s) in {}:\n{errors}",
            errors.len(),
            dir.display()
        )),
    }
}

/// Watches a fingerprint of some files: a change counts once the files have stayed the same for
/// one more read (writers update them one at a time).
struct Settled<F> {
    previous: F,
    applied: F,
}

impl<F: PartialEq + Clone> Settled<F> {
    fn new(initial: F) -> Self {
        Self {
            previous: initial.clone(),
            applied: initial,
        }
    }

    /// Feed the latest reading; true when it differs from the last one acted on and is stable.
    fn changed(&mut self, now: F) -> bool {
        let stable = now == self.previous;
        self.previous = now.clone();
        if !stable || now == self.applied {
            return false;
        }
        self.applied = now;
        true
    }
}

/// How often the identity files are read for changes.
const IDENTITY_POLL: Duration = Duration::from_millis(250);

/// What the identity files hold now: a hash of their contents, or why they cannot be read.
fn identity_fingerprint(args: &RunArgs) -> Vec<Result<u64, std::io::ErrorKind>> {
    use std::hash::{Hash, Hasher};
    [&args.cert_chain, &args.key, &args.trust_bundle]
        .iter()
        .map(|path| {
            std::fs::read(path)
                .map(|bytes| {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    bytes.hash(&mut h);
                    h.finish()
                })
                .map_err(|e| e.kind())
        })
        .collect()
}

/// Files mode: pick up a rotated certificate, key or trust bundle within a second. A change is
/// loaded once the files have been stable for one poll (writers update them one at a time); a
/// half-written or mismatched set is rejected, logged once, and the current identity keeps
/// serving until a valid set appears.
pub(crate) async fn watch_identity(app: Arc<App>, args: RunArgs) {
    let status = app.telemetry.status.clone();
    let mut files = Settled::new(identity_fingerprint(&args));
    let mut last_error: Option<String> = None;
    loop {
        tokio::time::sleep(IDENTITY_POLL).await;
        if !files.changed(identity_fingerprint(&args)) {
            continue;
        }
        let old = status.certificate();
        let result = match load_identity(&args) {
            Found::Ready(cert) => {
                let summary = cert.summary();
                app.rotate(cert)
                    .map(|()| summary)
                    .map_err(|e| e.to_string())
            }
            Found::Missing(why) | Found::Invalid(why) => Err(why),
        };
        match result {
            Ok(new) => {
                info!(
                    old_serial = old.as_ref().map_or("-", |c| c.serial.as_str()),
                    new_serial = %new.serial,
                    not_after = %new.not_after,
                    "certificate rotated"
                );
                last_error = None;
            }
            Err(why) => {
                status
                    .cert_rejections
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if last_error.as_ref() != Some(&why) {
                    warn!(
                        "certificate update rejected, the current certificate keeps serving: {why}"
                    );
                }
                last_error = Some(why);
            }
        }
    }
}

/// Retry delays for the CA: 0.5 s doubling to 30 s, each ±20 % so that replicas spread out.
pub(crate) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(30);

    pub(crate) fn new() -> Self {
        Self { next: Self::FIRST }
    }

    pub(crate) fn delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        base.mul_f64(rand::Rng::gen_range(&mut rand::thread_rng(), 0.8..1.2))
    }
}

/// Ask the Istio CA for a certificate for `--expected-identity`.
pub(crate) async fn fetch_identity(args: &RunArgs) -> Result<WorkloadCert, String> {
    let id: SpiffeId = args
        .expected_identity
        .as_deref()
        .ok_or("no identity to request (--expected-identity)")?
        .parse()
        .map_err(|e| format!("--expected-identity: {e}"))?;
    let root = std::fs::read(&args.ca_root)
        .map_err(|e| format!("mesh root {}: {e}", args.ca_root.display()))?;
    let mut cfg = CaClientConfig::new(&args.ca_address, root);
    if let Some(name) = &args.ca_server_name {
        cfg.server_name = name.clone();
    }
    cfg.token = Some(read_token(&args.ca_token).map_err(|e| e.to_string())?);
    cfg.cluster_id = args.cluster_id.clone();
    cfg.validity = Duration::from_secs(args.cert_validity_seconds.max(1));
    request_certificate(&cfg, &id)
        .await
        .map_err(|e| e.to_string())
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// istiod mode: renew when `--cert-renew-fraction` of the remaining lifetime has passed; retry
/// failures with backoff while the current certificate keeps serving (readiness fails only
/// once it has expired).
pub(crate) async fn renew_identity(app: Arc<App>, args: RunArgs) {
    let status = app.telemetry.status.clone();
    loop {
        let Some(current) = status.certificate() else {
            return;
        };
        let remaining = (current.not_after_unix as f64 - unix_now()).max(0.0);
        tokio::time::sleep(Duration::from_secs_f64(
            remaining * args.cert_renew_fraction,
        ))
        .await;
        let mut backoff = Backoff::new();
        loop {
            let renewed = match fetch_identity(&args).await {
                Ok(cert) => {
                    let summary = cert.summary();
                    app.rotate(cert)
                        .map(|()| summary)
                        .map_err(|e| e.to_string())
                }
                Err(why) => Err(why),
            };
            match renewed {
                Ok(new) => {
                    info!(
                        old_serial = %current.serial,
                        new_serial = %new.serial,
                        not_after = %new.not_after,
                        "certificate renewed by the Istio CA"
                    );
                    break;
                }
                Err(why) => {
                    status
                        .cert_rejections
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let delay = backoff.delay();
                    warn!(
                        "certificate renewal failed, retrying in {delay:?}; the current \
                         certificate keeps serving until {}: {why}",
                        current.not_after
                    );
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// What the config directory holds now: (file name, content hash) of every YAML file, sorted.
fn config_fingerprint(dir: &Path) -> Result<Vec<(String, u64)>, std::io::ErrorKind> {
    use std::hash::{Hash, Hasher};
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| e.kind())? {
        let path = entry.map_err(|e| e.kind())?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| e.kind())?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut h);
        out.push((name, h.finish()));
    }
    out.sort();
    Ok(out)
}

/// Hot reload: the config directory is read every `--reload-interval-ms`; a change is loaded
/// once the files have been stable for one read, off the request path, and published with one
/// atomic swap (requests in flight finish on the snapshot they started with). An invalid edit
/// is rejected, logged once, counted, and the last good config keeps serving. The hostnames of
/// ServiceEntries with `resolution: DNS` are kept resolved ([`crate::dns`]); a changed answer
/// loads the files again with it.
pub(crate) async fn watch_config(app: Arc<App>, args: RunArgs) {
    let Some(config) = args.config.clone() else {
        return;
    };
    let dns = crate::dns::Dns::new_or_unconfigured(args.dns_server);
    dns.sync(app.snapshot.load().dns_targets());
    let mut dns_changed = dns.changed();
    let interval = Duration::from_millis(args.reload_interval_ms.max(10));
    let status = app.telemetry.status.clone();
    let mut files = Settled::new(config_fingerprint(&config));
    let mut last_error: Option<String> = None;
    loop {
        let answered = tokio::select! {
            _ = tokio::time::sleep(interval) => false,
            r = dns_changed.changed() => r.is_ok(),
        };
        if !files.changed(config_fingerprint(&config)) && !answered {
            continue;
        }
        let (dir, mut options) = (
            config.clone(),
            args.waypoint.load_options(&args.trust_domain),
        );
        options.dns = dns.answers();
        let loaded = tokio::task::spawn_blocking(move || load_config(&dir, &options)).await;
        match loaded {
            Ok(Found::Ready(snapshot)) => {
                for w in snapshot.warnings() {
                    warn!("{w}");
                }
                info!(
                    version = snapshot.version(),
                    services = snapshot.services().count(),
                    "config reloaded"
                );
                dns.sync(snapshot.dns_targets());
                app.publish(snapshot, "files");
                last_error = None;
            }
            Ok(Found::Missing(why) | Found::Invalid(why)) => {
                status
                    .config_rejections
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if last_error.as_ref() != Some(&why) {
                    // One log line per rejection, however many problems it has.
                    let problems = why.replace('\n', "; ");
                    warn!("config update rejected, the last good config keeps serving: {problems}");
                }
                last_error = Some(why);
            }
            Err(e) => warn!(error = %e, "config reload task failed"),
        }
    }
}
