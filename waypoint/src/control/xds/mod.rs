//! Config from istiod over xDS (`waypoint run --xds ADDRESS`): the [`xds_client`] keeps the ADS
//! stream, [`XdsHandler`] turns each candidate state of the world into a routing snapshot with a
//! [`routing::xds::Translator`] (which reuses what unchanged clusters, assignments, chains and
//! services translated to), and [`SnapshotSink`] hands it to the data path.
//!
//! - A resource Envoy would reject (bad regex, weights that do not add up, a typed config that
//!   does not decode…) is refused alone: NACKed naming it and why, counted and logged once, its
//!   last good version (if any) standing in; the rest of the candidate serves (Envoy's partial
//!   acceptance). A rejection naming no resource rejects the candidate whole: the last good
//!   snapshot keeps serving.
//! - A state is published once it is complete, as Envoy warms clusters: listeners have arrived and
//!   every EDS assignment and RDS route configuration they need is there. Until then the previous
//!   snapshot serves (at start-up: readiness says what is awaited). As Envoy's
//!   `initial_fetch_timeout` (15 s), an incomplete state is published anyway once it has waited
//!   that long, with a warning naming what never came (those clusters have no endpoints). A
//!   response of new clusters is not translated while their assignments are awaited, when what
//!   the state asks for can be found from its clusters and listeners alone (which judges them as
//!   the translation would): the state is deferred, and translated once it is complete, or at
//!   the warm timeout ([`XdsHandler::defer`]).
//! - Disconnects keep the last snapshot serving; the client reconnects with backoff and resyncs.
//! - The client and the translations run on their own thread (`run.rs`), off the data path's
//!   workers.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use routing::xds::{TranslateOptions, Translator};
use tracing::{info, warn};
use xds_client::{type_url, Applied, Handler, Rejection, ResourceState, Update};

use crate::telemetry::status::Status;

mod alone;
mod dump;
mod sink;
mod state;
#[cfg(test)]
mod tests;

pub use dump::{load_dump, Dump, DumpError};
pub use sink::{SnapshotSink, WARM_TIMEOUT};
use state::{client_subscriptions, encoded, missing_from};

/// The xDS types a waypoint's config is made of.
const TYPES: [&str; 4] = [
    type_url::LISTENER,
    type_url::CLUSTER,
    type_url::CLUSTER_LOAD_ASSIGNMENT,
    type_url::ROUTE_CONFIGURATION,
];

/// Translates candidate states for the xDS client.
pub struct XdsHandler {
    pub sink: Arc<SnapshotSink>,
    pub options: TranslateOptions,
    pub status: Arc<Status>,
    /// Warnings already logged (each is logged once, when it first appears).
    logged: BTreeSet<String>,
    /// What the last publish was waiting for, to log a change once.
    awaiting: Option<String>,
    /// A snapshot was offered: readiness no longer waits for config.
    published: bool,
    /// The resources of the last state that translated (refused ones replaced by their
    /// previous version or left out): a later version of one of them that cannot be used is
    /// refused alone and the version here serves in its place. Cheap to clone and to keep, it
    /// shares the resources with the client's state.
    last_good: ResourceState,
    /// Resolves the hostnames of DNS clusters; a changed answer rebuilds [`Self::rebuild`]'s.
    pub dns: Arc<crate::control::dns::Dns>,
    /// The translator and the last complete state published (as it translated: refused
    /// resources replaced or left out), translated again when a DNS answer changes. The state
    /// shares the resources' bytes with the client's; decoded protos are not kept between
    /// translations (they take about nine times the encoded size), only the translator's pieces.
    /// Held while a snapshot is translated and offered, so an older state never replaces a
    /// newer one.
    pub rebuild: Arc<Mutex<Latest>>,
    /// What the state deferred last (see [`XdsHandler::defer`]) subscribes to, while the sink
    /// holds it.
    deferred: Option<routing::xds::Subscriptions>,
    /// Set while the next EDS or route push may be translated from what it changed alone.
    alone_base: Option<alone::AloneBase>,
    /// How many states [`XdsHandler::defer`] asked the translator what they subscribe to, and
    /// of those, how many were asked of their changed clusters alone.
    asked: u64,
    asked_alone: u64,
    /// EDS pushes read alone come many a second under churn: one info line per
    /// [`crate::telemetry::throttle::PEER_EVENT_INTERVAL`], counting those left out.
    patched_lines: crate::telemetry::throttle::LogThrottle,
}

/// What [`XdsHandler::rebuild`] guards.
#[derive(Default)]
pub struct Latest {
    /// Reuses what the last translation built (see [`Translator`]).
    translator: Translator,
    /// The last complete state published.
    state: Option<ResourceState>,
}

impl XdsHandler {
    pub fn new(
        sink: Arc<SnapshotSink>,
        options: TranslateOptions,
        status: Arc<Status>,
        dns: Arc<crate::control::dns::Dns>,
    ) -> Self {
        Self {
            sink,
            options,
            status,
            logged: BTreeSet::new(),
            awaiting: None,
            published: false,
            last_good: ResourceState::default(),
            dns,
            rebuild: Arc::new(Mutex::new(Latest::default())),
            deferred: None,
            alone_base: None,
            asked: 0,
            asked_alone: 0,
            patched_lines: Default::default(),
        }
    }

    /// Translate `state`, refusing alone each resource the translation rejects (or that does
    /// not decode): its last good version stands in for it, or it is left out, and the rest is
    /// translated (Envoy applies the valid resources of an update). `Err` when a rejection
    /// names no resource that can be set aside: the candidate is rejected whole.
    fn translate_tolerant(
        &mut self,
        translator: &mut Translator,
        state: &ResourceState,
    ) -> Result<
        (routing::xds::Translation, Vec<routing::xds::Rejection>),
        Vec<routing::xds::Rejection>,
    > {
        let mut set_aside: BTreeSet<(String, String)> = BTreeSet::new();
        let (mut translation, mut refused) = translator
            .translate_refusing(&encoded(state, &self.last_good, &set_aside), &self.options)?;
        let mut stale_names = BTreeSet::new();
        if !refused.is_empty() {
            // The refused new versions: their last good versions stand in, translated again.
            set_aside.extend(refused.iter().map(|r| (r.type_url.clone(), r.name.clone())));
            let (again, stale) = translator
                .translate_refusing(&encoded(state, &self.last_good, &set_aside), &self.options)?;
            // A last good version that no longer fits the rest is left out as well.
            stale_names.extend(stale.iter().map(|r| (r.type_url.clone(), r.name.clone())));
            set_aside.extend(stale_names.iter().cloned());
            refused.extend(stale);
            translation = again;
        }
        // What translated is the new last good.
        let mut good = state.clone();
        for (t, n) in &set_aside {
            match self.last_good.get_shared(t, n) {
                Some(previous) if !stale_names.contains(&(t.clone(), n.clone())) => {
                    good.insert(t, previous.clone())
                }
                _ => {
                    good.remove(t, n);
                }
            }
        }
        self.last_good = good;
        Ok((translation, refused))
    }

    /// Resources set aside while the rest of the candidate serves: counted, logged once per
    /// distinct refusal, NACKed.
    fn refuse(&mut self, refused: Vec<routing::xds::Rejection>) -> Vec<Rejection> {
        let problems = refused
            .iter()
            .map(|r| r.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        self.status
            .reject_config(format!("xDS: refused {problems}"));
        if self.logged.insert(format!("refused: {problems}")) {
            warn!(
                "xDS: refused (NACK) {} resource(s); the rest of the update serves, each refused \
                 resource's last good version (if any) in its place: {problems}",
                refused.len()
            );
        }
        refused
            .into_iter()
            .map(|r| Rejection::new(&r.type_url, &r.name, r.reason))
            .collect()
    }

    /// Log once, and say in readiness until a config is published, what the state awaits.
    fn awaiting(&mut self, what: &str) {
        if self.awaiting.as_deref() != Some(what) {
            info!(awaiting = %what, "xDS config incomplete; the current config keeps serving");
            if !self.published {
                self.status
                    .waiting_for("config", format!("waiting for istiod to send {what}"));
            }
            self.awaiting = Some(what.to_string());
        }
    }

    /// An incomplete state is not translated when what it subscribes to can be found without
    /// (as Envoy warms new clusters while the current config serves): a response of new
    /// clusters asks for their assignments, and the state is translated when they arrive (or
    /// at the warm timeout, by the sink). [`Translator::subscriptions`] reads and judges the
    /// clusters and listeners as the translation would, so a resource the translation would
    /// refuse is never accepted this way: it answers nothing, and the state is translated as
    /// any other. Asked only of a response that brings new clusters, or of clusters or
    /// listeners while a deferred state waits (assignments and route configurations do not
    /// change what a state asks for): a route change, a cluster's policy change or an EDS push
    /// never pays for it.
    fn defer(&mut self, update: &Update<'_>, translator: &mut Translator) -> Option<Applied> {
        let state = update.state;
        let waiting = self.deferred.is_some() && self.sink.is_deferred();
        // Cluster names the last translated state did not have: a response that only changes
        // known clusters (a DestinationRule edit) is translated at once, without the question.
        let new_clusters = update
            .changes
            .iter()
            .filter(|c| c.type_url == type_url::CLUSTER)
            .flat_map(|c| &c.updated)
            .any(|name| self.last_good.get(type_url::CLUSTER, name).is_none());
        let reshaped = update.has_type(type_url::CLUSTER) || update.has_type(type_url::LISTENER);
        // Clusters or listeners changed while a state waits, and what it waited for has come
        // (in the same update: istiod's listener and the new service's assignments often arrive
        // together): translated at once. The translation judges them as the question would, and
        // finds what a changed listener or cluster newly needs; asking first would read the
        // listener twice (about 40 ms of a new service's 100 at 10 000 services).
        let arrived = |d: &routing::xds::Subscriptions| self.missing(state, d).is_none();
        if !new_clusters && waiting && reshaped && self.deferred.as_ref().is_some_and(arrived) {
            return None;
        }
        let needed = if new_clusters || (waiting && reshaped) {
            self.asked += 1;
            match self.clusters_alone(state, translator) {
                Some(needed) => {
                    self.asked_alone += 1;
                    needed
                }
                None => {
                    translator.subscriptions(&encoded(state, &self.last_good, &BTreeSet::new()))?
                }
            }
        } else if waiting {
            self.deferred.clone()?
        } else {
            return None;
        };
        let what = self.missing(state, &needed)?;
        self.awaiting(&what);
        self.sink.defer_incomplete(state.clone(), what);
        let subscriptions = client_subscriptions(&needed);
        self.deferred = Some(needed);
        Some(subscriptions.into())
    }

    fn reject(&self, rejections: Vec<routing::xds::Rejection>) -> Vec<Rejection> {
        let problems: Vec<String> = rejections.iter().map(|r| r.to_string()).collect();
        self.status
            .reject_config(format!("xDS: rejected {}", problems.join("; ")));
        warn!(
            "xDS update rejected (NACK), the last good config keeps serving: {}",
            problems.join("; ")
        );
        rejections
            .into_iter()
            .map(|r| Rejection::new(&r.type_url, &r.name, r.reason))
            .collect()
    }
}

impl Handler for XdsHandler {
    fn apply(&mut self, update: &Update<'_>) -> Result<Applied, Vec<Rejection>> {
        let started = std::time::Instant::now();
        let asked = self.asked;
        let outcome = self.judge(update);
        tracing::debug!(
            changes = %update
                .changes
                .iter()
                .map(|c| format!("{} +{} -{}", type_url::short(&c.type_url), c.updated.len(), c.removed.len()))
                .collect::<Vec<_>>()
                .join(", "),
            deferred = self.deferred.is_some(),
            asked = self.asked != asked,
            ok = outcome.is_ok(),
            took_ms = started.elapsed().as_secs_f64() * 1e3,
            "xDS update judged"
        );
        outcome
    }
}

impl XdsHandler {
    /// [`Handler::apply`].
    fn judge(&mut self, update: &Update<'_>) -> Result<Applied, Vec<Rejection>> {
        let state = update.state;
        let rebuild = self.rebuild.clone();
        let mut latest = rebuild.lock();
        // The last translation's snapshot, if it went live meanwhile (at once, when the data
        // path attached, or at the warm timeout): the next one shares its unchanged clusters.
        if let Some(live) = self.sink.live() {
            latest.translator.published(&live);
        }
        self.options.dns = self.dns.answers();
        if let Some(applied) = self.push_alone(update, &mut latest) {
            return Ok(applied);
        }
        // A deferred state is not translated: the translator's last translation is still the
        // base's (what a new service's clusters are asked of alone against).
        if let Some(applied) = self.defer(update, &mut latest.translator) {
            return Ok(applied);
        }
        // Translated now, so no longer the base; what the state lacks is still found from what
        // changed since the base's state.
        let base = self
            .alone_base
            .take()
            .map(|b| (self.last_good.clone(), b.subscriptions));
        self.deferred = None;
        let (translation, refused) = match self.translate_tolerant(&mut latest.translator, state) {
            Ok(t) => t,
            Err(rejections) => return Err(self.reject(rejections)),
        };
        let reuse = latest.translator.reuse();
        let refused_any = !refused.is_empty();
        // The NACKs name the resources of these responses' types (each response its own); one
        // of another type set aside again (still broken since its own response was NACKed, or
        // broken by this one's content) is logged, and its last good version keeps serving.
        let (own, others): (Vec<_>, Vec<_>) = refused
            .into_iter()
            .partition(|r| update.has_type(&r.type_url));
        if !others.is_empty() {
            let line = others
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>()
                .join("; ");
            if self.logged.insert(format!("set aside: {line}")) {
                warn!("xDS: still set aside, their last good version (if any) serving: {line}");
            }
        }
        let refused = if own.is_empty() {
            Vec::new()
        } else {
            self.refuse(own)
        };
        // Resolution starts at once (an incomplete state's DNS clusters warm meanwhile).
        self.dns.sync(&translation.dns);
        let needed = &translation.subscriptions;
        let subscriptions = client_subscriptions(needed);
        let applied = |subscriptions| Applied {
            subscriptions,
            refused: refused.clone(),
        };
        let base = base.as_ref().map(|(good, subscribed)| (good, subscribed));
        if let Some(what) = missing_from(state, needed, base) {
            self.awaiting(&what);
            self.sink.offer_incomplete(translation.snapshot, what);
            return Ok(applied(subscriptions));
        }
        self.awaiting = None;
        for w in &translation.warnings {
            let line = w.to_string();
            if !self.logged.contains(&line) {
                warn!("xDS: {line}");
                self.logged.insert(line);
            }
        }
        let snapshot = translation.snapshot;
        info!(
            version = snapshot.version(),
            services = snapshot.services().count(),
            listeners = state.len(type_url::LISTENER),
            clusters = state.len(type_url::CLUSTER),
            refused = refused.len(),
            reused = reuse.reused,
            rebuilt = reuse.built,
            clusters_shared = reuse.clusters_shared,
            services_rebuilt = reuse.services_built,
            patched = reuse.patched,
            "xDS config translated"
        );
        self.sink.offer(snapshot);
        latest.state = Some(self.last_good.clone());
        self.status.set_xds_resources(self.last_good.clone());
        self.published = true;
        self.remember_alone_base(
            &latest.translator,
            state,
            needed,
            &subscriptions,
            refused_any,
        );
        Ok(applied(subscriptions))
    }
}

/// Why `waypoint run --xds` cannot start its client. Each message is the context alone, and
/// the cause its source: `main` prints the chain (`context: cause`).
#[derive(Debug, thiserror::Error)]
pub enum XdsSetupError {
    #[error(
        "--xds needs the pod's identity in its environment (istiod's waypoint template sets it)"
    )]
    Node(#[source] xds_client::NodeError),
    #[error("reading the pod's labels {} (--xds-pod-labels / XDS_POD_LABELS)", path.display())]
    PodLabels {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading istiod's root certificate {} (--xds-root-ca / XDS_ROOT_CA)", path.display())]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("xDS client settings")]
    Client(#[source] xds_client::ConfigError),
}

/// The xDS client of `waypoint run --xds`, ready to run.
pub struct XdsRuntime {
    client: xds_client::Client,
    handler: XdsHandler,
    pub sink: Arc<SnapshotSink>,
}

impl XdsRuntime {
    /// Check the settings (node identity in the environment, istiod's roots) without connecting.
    pub fn new(
        args: &crate::config::RunConfig,
        telemetry: &crate::telemetry::status::Telemetry,
    ) -> Result<Self, XdsSetupError> {
        let address = args.xds.clone().unwrap_or_default();
        let mut node = xds_client::NodeInfo::from_env().map_err(XdsSetupError::Node)?;
        match std::fs::read_to_string(&args.xds_pod_labels) {
            Ok(text) => node.labels = xds_client::labels_from_downward_api(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(XdsSetupError::PodLabels {
                    path: args.xds_pod_labels.clone(),
                    source,
                })
            }
        }
        let root_path = args.xds_root_ca.as_ref().unwrap_or(&args.ca_root);
        let root = std::fs::read(root_path).map_err(|source| XdsSetupError::Root {
            path: root_path.clone(),
            source,
        })?;
        telemetry.status.set_node(node.to_node());
        let mut cfg = xds_client::ClientConfig::new(address, root, node);
        if let Some(name) = &args.xds_server_name {
            cfg.server_name = name.clone();
        }
        if args.xds_token.as_os_str() != "none" {
            cfg.token_path = Some(args.xds_token.clone());
        }
        cfg.mode = match args.xds_mode {
            crate::config::XdsMode::Delta => xds_client::Mode::Delta,
            crate::config::XdsMode::Sotw => xds_client::Mode::StateOfTheWorld,
            crate::config::XdsMode::Auto => xds_client::Mode::DeltaWithFallback,
        };
        cfg.client_cert = Some(telemetry.own_cert.clone());
        // Assignments and clusters are kept compact between pushes (about a quarter and two
        // thirds of their size), `main_internal` chain by chain (an eighth); the translator
        // reads them through `stored::expand`.
        cfg.compact = Some(routing::xds::stored::compact);
        let client = xds_client::Client::new(cfg).map_err(XdsSetupError::Client)?;
        telemetry.status.attach_xds(client.status());
        let sink = SnapshotSink::new();
        let options = TranslateOptions {
            trust_domain: args.trust_domain.clone(),
            ..TranslateOptions::default()
        };
        let dns = crate::control::dns::Dns::new_or_unconfigured(args.dns_server);
        let handler = XdsHandler::new(sink.clone(), options, telemetry.status.clone(), dns);
        Ok(Self {
            client,
            handler,
            sink,
        })
    }

    /// Keep the stream to istiod until `shutdown` turns true.
    pub async fn run(self, shutdown: tokio::sync::watch::Receiver<bool>) {
        let timer = tokio::spawn(self.sink.clone().warm_timeouts(translate_deferred(
            self.handler.rebuild.clone(),
            self.handler.options.clone(),
            self.handler.dns.clone(),
            self.sink.clone(),
        )));
        let dns = tokio::spawn(dns_rebuilds(
            self.handler.dns.clone(),
            self.handler.rebuild.clone(),
            self.handler.options.clone(),
            self.sink.clone(),
        ));
        self.client.run(self.handler, shutdown).await;
        timer.abort();
        dns.abort();
    }
}

/// How the sink translates a deferred state at its warm timeout (see [`XdsHandler::defer`]):
/// as the handler would have, with the translator the handler uses.
fn translate_deferred(
    rebuild: Arc<Mutex<Latest>>,
    mut options: TranslateOptions,
    dns: Arc<crate::control::dns::Dns>,
    sink: Arc<SnapshotSink>,
) -> sink::TranslateDeferred {
    Box::new(move |state| {
        let mut latest = rebuild.lock();
        // Judged as it was deferred: every resource decodes and none is rejected.
        match translate_again(&mut latest.translator, state, &mut options, &dns, &sink) {
            Ok(t) => {
                dns.sync(&t.dns);
                Some(t.snapshot)
            }
            Err(rejections) => {
                warn!(
                    ?rejections,
                    "xDS: an incomplete config at its warm timeout no longer translates; the current one serves"
                );
                None
            }
        }
    })
}

/// Translate `state`, which the handler has judged already (every resource decodes), outside
/// the handler: with its translator, shown the live snapshot first, and the current DNS answers.
fn translate_again(
    translator: &mut Translator,
    state: &ResourceState,
    options: &mut TranslateOptions,
    dns: &crate::control::dns::Dns,
    sink: &SnapshotSink,
) -> Result<routing::xds::Translation, Vec<routing::xds::Rejection>> {
    if let Some(live) = sink.live() {
        translator.published(&live);
    }
    options.dns = dns.answers();
    translator.translate(&encoded(state, state, &BTreeSet::new()), options)
}

/// Translate the last complete state again whenever a DNS answer changes, and publish it.
async fn dns_rebuilds(
    dns: Arc<crate::control::dns::Dns>,
    rebuild: Arc<Mutex<Latest>>,
    mut options: TranslateOptions,
    sink: Arc<SnapshotSink>,
) {
    let mut changed = dns.changed();
    while changed.changed().await.is_ok() {
        let mut latest = rebuild.lock();
        let Latest { translator, state } = &mut *latest;
        let Some(state) = state.as_ref() else {
            continue;
        };
        // The state translated when it was published: every resource decodes.
        match translate_again(translator, state, &mut options, &dns, &sink) {
            Ok(t) => {
                info!(
                    version = t.snapshot.version(),
                    "DNS answers changed; config translated again"
                );
                sink.offer(t.snapshot);
            }
            Err(rejections) => warn!(
                ?rejections,
                "DNS answers changed but the config no longer translates; the current one serves"
            ),
        }
    }
}
