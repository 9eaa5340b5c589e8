//! Keeping the running waypoint's inputs current: loading the identity and the config, watching
//! their files (applied once they have settled), renewing istiod-issued certificates with backoff,
//! and hot-reloading the config. Invalid updates are rejected, logged once and counted; the last
//! good identity or config keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use routing::Snapshot;
use tracing::{debug, info, warn};

use crate::app::App;
use crate::config::RunConfig;
use crate::control::identity::{
    read_token, request_certificate, CaClientConfig, CaError, IdentityError, SpiffeId,
    SpiffeIdError, WorkloadCert,
};
use crate::control::watch::{is_transient, parents, Change, Changes, Hashes, Settled};

/// What one look at the files found.
pub(crate) enum Found<T> {
    Ready(T),
    /// Not there (yet), or not usable now (an expired certificate, a config without services):
    /// waited for at startup, the reason for readiness; rejected at a reload.
    Missing(String),
    /// There but unusable.
    Invalid(String),
}

pub(crate) fn load_identity(args: &RunConfig) -> Found<WorkloadCert> {
    match WorkloadCert::from_files(&args.cert_chain, &args.key, &args.trust_bundle) {
        Ok(cert) => match &args.expected_identity {
            Some(expected) if cert.id.to_string() != *expected => Found::Invalid(format!(
                "certificate {} is for {}, but this waypoint runs as {expected}",
                args.cert_chain.display(),
                cert.id
            )),
            // Valid files, but not usable now: waited for at startup (not ready, this reason),
            // rejected at a rotation.
            _ => match cert.check_validity(std::time::SystemTime::now()) {
                Ok(()) => Found::Ready(cert),
                Err(why) => Found::Missing(format!("{}: {why}", args.cert_chain.display())),
            },
        },
        Err(IdentityError::Read { source, path, what })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            Found::Missing(format!("{what} file {} does not exist", path.display()))
        }
        Err(e) => Found::Invalid(format!("loading the waypoint's identity: {e}")),
    }
}

/// A config file that cannot be read for a temporary reason (EMFILE): neither a config nor a
/// rejection.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {source}")]
pub(crate) struct TransientReadError {
    file: String,
    source: std::io::Error,
}

/// Load the config directory. A directory that holds no services is `Missing` unless
/// `allow_empty`: waited for at startup, rejected at a reload. `Err`: a temporary read failure
/// (EMFILE), which is neither a config nor a rejection.
pub(crate) fn load_config_checked(
    dir: &Path,
    options: &routing::LoadOptions,
    allow_empty: bool,
) -> Result<Found<Snapshot>, TransientReadError> {
    if !dir.is_dir() {
        return Ok(Found::Missing(format!(
            "config directory {} does not exist",
            dir.display()
        )));
    }
    let files = match routing::read_config_dir(dir, &options.limits) {
        Ok(files) => files,
        Err(routing::ReadError::Io { file, error }) if is_transient(&error) => {
            return Err(TransientReadError {
                file,
                source: error,
            })
        }
        Err(e) => return Ok(invalid(dir, routing::LoadErrors::from(e))),
    };
    Ok(match routing::check_files_with(&files, options).result {
        Ok(snapshot) if snapshot.services().count() == 0 && !allow_empty => {
            Found::Missing(format!(
                "config directory {} holds no services ({} file(s) loaded); an empty config \
                 is served only with --allow-empty-config",
                dir.display(),
                files.files.len()
            ))
        }
        Ok(snapshot) => Found::Ready(snapshot),
        Err(errors) => invalid(dir, errors),
    })
}

fn invalid(dir: &Path, errors: routing::LoadErrors) -> Found<Snapshot> {
    Found::Invalid(format!(
        "{} problem(s) in {}:\n{errors}",
        errors.len(),
        dir.display()
    ))
}

/// [`load_config_checked`] at startup: a temporary failure is waited out like a missing input.
pub(crate) fn load_config(
    dir: &Path,
    options: &routing::LoadOptions,
    allow_empty: bool,
) -> Found<Snapshot> {
    load_config_checked(dir, options, allow_empty)
        .unwrap_or_else(|why| Found::Missing(format!("cannot read the config now: {why}")))
}

/// What the identity files hold now: a hash of each one's contents, or why it cannot be read;
/// `None` when a read failed for a temporary reason (nothing observed).
fn identity_fingerprint(
    args: &RunConfig,
    hashes: &mut Hashes,
) -> Option<Vec<Result<u64, std::io::ErrorKind>>> {
    let mut out = Vec::new();
    for path in [&args.cert_chain, &args.key, &args.trust_bundle] {
        match hashes.hash(path, None) {
            Ok(h) => out.push(Ok(h)),
            Err(e) if is_transient(&e) => return None,
            Err(e) => out.push(Err(e.kind())),
        }
    }
    Some(out)
}

/// Files mode: pick up a rotated certificate, key or trust bundle at once (change
/// notifications on their directories, and a look every `--reload-interval-ms`). A change is
/// loaded once the files have been stable for one look (writers update them one at a time); a
/// half-written, mismatched, expired or not yet valid set is rejected, logged once, counted, and
/// the current identity keeps serving until a valid set appears. Files that come back to what
/// serves (or a temporary read failure) rotate nothing.
pub(crate) async fn watch_identity(app: Arc<App>, args: RunConfig) {
    let status = app.telemetry.status.clone();
    let interval = Duration::from_millis(args.reload_interval_ms.max(10));
    let changes = Changes::watch(
        "identity files",
        &parents(&[&args.cert_chain, &args.key, &args.trust_bundle]),
        interval,
    );
    let mut hashes = Hashes::default();
    let mut files = Settled::new(identity_fingerprint(&args, &mut hashes));
    let mut last_error: Option<String> = None;
    loop {
        changes.next(files.settling()).await;
        let Some(now) = identity_fingerprint(&args, &mut hashes) else {
            continue;
        };
        match files.look(now) {
            Change::None => continue,
            Change::BackToServing => {
                if last_error.take().is_some() {
                    info!("identity files are back to the serving certificate");
                }
                continue;
            }
            Change::New => {}
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
                files.served();
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

/// Why no certificate came from the Istio CA.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    #[error("no identity to request (--expected-identity)")]
    NoIdentity,
    #[error("--expected-identity: {0}")]
    Identity(#[source] SpiffeIdError),
    #[error("mesh root {}: {source}", path.display())]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// Ask the Istio CA for a certificate for `--expected-identity`.
pub(crate) async fn fetch_identity(args: &RunConfig) -> Result<WorkloadCert, FetchError> {
    let id: SpiffeId = args
        .expected_identity
        .as_deref()
        .ok_or(FetchError::NoIdentity)?
        .parse()
        .map_err(FetchError::Identity)?;
    let root = std::fs::read(&args.ca_root).map_err(|source| FetchError::Root {
        path: args.ca_root.clone(),
        source,
    })?;
    let mut cfg = CaClientConfig::new(&args.ca_address, root);
    if let Some(name) = &args.ca_server_name {
        cfg.server_name = name.clone();
    }
    cfg.token = Some(read_token(&args.ca_token)?);
    cfg.cluster_id = args.cluster_id.clone();
    cfg.validity = Duration::from_secs(args.cert_validity_seconds.max(1));
    Ok(request_certificate(&cfg, &id).await?)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// istiod mode: renew when `--cert-renew-fraction` of the remaining lifetime has passed; retry
/// failures with backoff while the current certificate keeps serving (readiness fails only
/// once it has expired).
pub(crate) async fn renew_identity(app: Arc<App>, args: RunConfig) {
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
                Err(why) => Err(why.to_string()),
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

/// One look at a config entry: its content hash, or why it is not loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EntryState {
    Content(u64),
    /// A regular file that cannot be read (the load fails naming it).
    ReadError(std::io::ErrorKind),
    /// Not a file: left out of the load, reported.
    NotAFile(String),
}

/// What the config directory holds now: every config entry with its state, sorted; `None` when
/// a read failed for a temporary reason (nothing observed).
fn config_fingerprint(
    dir: &Path,
    hashes: &mut Hashes,
) -> Option<Result<Vec<(String, EntryState)>, std::io::ErrorKind>> {
    let entries = match routing::config_entries(dir) {
        Ok(entries) => entries,
        Err(e) if is_transient(&e) => return None,
        Err(e) => return Some(Err(e.kind())),
    };
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        out.push(match entry {
            routing::ConfigEntry::File {
                name,
                path,
                metadata,
            } => match hashes.hash(&path, Some(&metadata)) {
                Ok(h) => (name, EntryState::Content(h)),
                Err(e) if is_transient(&e) => return None,
                Err(e) => (name, EntryState::ReadError(e.kind())),
            },
            routing::ConfigEntry::Unreadable(u) => (u.name, EntryState::NotAFile(u.reason)),
        });
    }
    hashes.retain(|p| {
        p.file_name()
            .is_some_and(|n| out.iter().any(|(name, _)| n.to_string_lossy() == *name))
    });
    Some(Ok(out))
}

/// Reports config entries that are not files: each one is logged when it appears (or its
/// reason changes), at most [`UNREADABLE_LOGS`] lines per [`UNREADABLE_WINDOW`] (the next line
/// says how many were left out); the status and metrics always show the current set.
#[derive(Default)]
struct UnreadableReport {
    window_start: Option<std::time::Instant>,
    logged_in_window: u32,
    suppressed: u64,
    any: bool,
}

const UNREADABLE_LOGS: u32 = 10;
const UNREADABLE_WINDOW: Duration = Duration::from_secs(10);

impl UnreadableReport {
    fn update(&mut self, status: &crate::telemetry::status::Status, now: Vec<routing::Unreadable>) {
        let empty = now.is_empty();
        for u in status.set_config_unreadable(now) {
            let started = *self
                .window_start
                .get_or_insert_with(std::time::Instant::now);
            if started.elapsed() >= UNREADABLE_WINDOW {
                self.window_start = Some(std::time::Instant::now());
                self.logged_in_window = 0;
            }
            if self.logged_in_window >= UNREADABLE_LOGS {
                self.suppressed += 1;
                continue;
            }
            self.logged_in_window += 1;
            warn!(
                suppressed = std::mem::take(&mut self.suppressed),
                "config entry {} not loaded: {}; the other files are, and later edits apply",
                u.name,
                u.reason
            );
        }
        if empty && self.any {
            info!("every config entry is a readable file again");
        }
        self.any = !empty;
    }
}

/// Hot reload: the config directory is watched (change notifications, and a look every
/// `--reload-interval-ms` that reads metadata only); a change is loaded once the files have
/// been stable for one look, off the request path, and published with one atomic swap
/// (requests in flight finish on the snapshot they started with). An invalid edit, input over
/// the size limits, or a directory left without services (unless `--allow-empty-config`) is
/// rejected, logged once, counted, and the last good config keeps serving. Entries that are
/// not files do not stop later edits: they are left out and reported. A temporary read
/// failure changes nothing. The hostnames of ServiceEntries with `resolution: DNS` are kept
/// resolved ([`crate::control::dns`]); a changed answer loads the files again with it.
pub(crate) async fn watch_config(app: Arc<App>, args: RunConfig) {
    let Some(config) = args.config.clone() else {
        return;
    };
    let dns = crate::control::dns::Dns::new_or_unconfigured(args.dns_server);
    dns.sync(app.snapshot.load().dns_targets());
    let mut dns_changed = dns.changed();
    let interval = Duration::from_millis(args.reload_interval_ms.max(10));
    let changes = Changes::watch("config directory", std::slice::from_ref(&config), interval);
    let status = app.telemetry.status.clone();
    let mut hashes = Hashes::default();
    let mut unreadable = UnreadableReport::default();
    let mut files = Settled::new(config_fingerprint(&config, &mut hashes));
    let mut last_error: Option<String> = None;
    loop {
        let answered = tokio::select! {
            _ = changes.next(files.settling()) => false,
            r = dns_changed.changed() => r.is_ok(),
        };
        let look = config_fingerprint(&config, &mut hashes);
        if let Some(Ok(entries)) = &look {
            let now = entries
                .iter()
                .filter_map(|(name, state)| match state {
                    EntryState::NotAFile(reason) => Some(routing::Unreadable {
                        name: name.clone(),
                        reason: reason.clone(),
                    }),
                    _ => None,
                })
                .collect();
            unreadable.update(&status, now);
        }
        let change = look.map_or(Change::None, |now| files.look(now));
        if change == Change::BackToServing && last_error.take().is_some() {
            info!("config files are back to the serving config");
        }
        if change != Change::New && !answered {
            continue;
        }
        let (dir, mut options) = (config.clone(), args.load_options());
        options.dns = dns.answers();
        let allow_empty = args.allow_empty_config;
        let loaded =
            tokio::task::spawn_blocking(move || load_config_checked(&dir, &options, allow_empty))
                .await;
        match loaded {
            Ok(Ok(Found::Ready(snapshot))) => {
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
                files.served();
                last_error = None;
            }
            Ok(Ok(Found::Missing(why) | Found::Invalid(why))) => {
                status.reject_config(why.replace('\n', "; "));
                if last_error.as_ref() != Some(&why) {
                    // One log line per rejection, however many problems it has.
                    let problems = why.replace('\n', "; ");
                    warn!("config update rejected, the last good config keeps serving: {problems}");
                }
                last_error = Some(why);
            }
            Ok(Err(why)) => {
                debug!("config not readable now, trying again: {why}");
                files.retry();
            }
            Err(e) => {
                warn!(error = %e, "config reload task failed");
                files.retry();
            }
        }
    }
}
