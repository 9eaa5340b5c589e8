//! Wiring: one routing snapshot, one upstream pool, the pingora HTTP proxies and the HBONE server.
//! `serve` runs on any tokio runtime (tests run it in-process); `waypoint run` hosts it as a
//! pingora background service so that pingora's `Server` owns the process and its signals.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_proxy::http_proxy;
use routing::Snapshot;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::control::identity::{server_config, ClientConfigs, IdentityError, WorkloadCert};
use crate::dataplane::inbound::Inbound;
use crate::dataplane::proxy::Waypoint;
use crate::telemetry::access_log::AccessLog;
use crate::telemetry::status::{Dataplane, Telemetry};
use crate::transport::hbone::server::HboneServer;
use crate::transport::hbone::{HboneClient, TunnelPool, HBONE_PORT};

/// Default bound on a write to a client that keeps its window shut (Envoy's default
/// `stream_idle_timeout`, 5 min).
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(300);

/// Default total deadline for an HTTP/1.1 request's headers inside a tunnel.
pub const DEFAULT_REQUEST_HEADERS_TIMEOUT: Duration = Duration::from_secs(10);

/// Settings of the data path (the CLI and the harness fill these).
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Trust domains whose clients are accepted (the own one plus aliases).
    pub trust_domains: Vec<String>,
    /// Port of the HBONE listener on endpoint nodes (15008 in a mesh).
    pub upstream_hbone_port: u16,
    /// Connect timeout, per-endpoint connection cap, idle and keep-alive of upstream HBONE.
    pub upstream: crate::transport::hbone::UpstreamLimits,
    pub sniff_timeout: Duration,
    /// Total time for an HTTP/1.1 request's headers inside a tunnel; `None`: no total bound.
    pub request_headers_timeout: Option<Duration>,
    /// How long a write to a client may wait for its flow-control window; `None`: forever.
    pub send_timeout: Option<Duration>,
    /// Inbound HBONE: from accept to the client's HTTP/2 preface (TLS handshake included).
    pub handshake_timeout: Duration,
    /// meshConfig `pathNormalization`: applied before authorization and routing.
    pub path_normalization: routing::path::PathNormalization,
    /// meshConfig `extensionProviders` that CUSTOM policies name.
    #[serde(skip)]
    pub authorizers:
        std::collections::HashMap<String, crate::dataplane::proxy::ext_authz::Provider>,
    /// The worker threads that serve inbound HBONE connections (`waypoint run`'s default);
    /// `None`: each connection is a task on the caller's runtime (`--work-stealing`, harnesses).
    #[serde(skip)]
    pub workers: Option<Arc<crate::transport::workers::Workers>>,
}

impl Settings {
    pub fn new(trust_domain: &str) -> Self {
        Self {
            trust_domains: vec![trust_domain.to_string()],
            upstream_hbone_port: HBONE_PORT,
            upstream: crate::transport::hbone::UpstreamLimits::default(),
            sniff_timeout: Duration::from_secs(5),
            request_headers_timeout: Some(DEFAULT_REQUEST_HEADERS_TIMEOUT),
            send_timeout: Some(DEFAULT_SEND_TIMEOUT),
            handshake_timeout: crate::transport::hbone::server::HANDSHAKE_TIMEOUT,
            path_normalization: Default::default(),
            authorizers: Default::default(),
            workers: None,
        }
    }
}

pub struct App {
    trust_domains: Vec<String>,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub pool: Arc<TunnelPool>,
    pub server: Arc<HboneServer>,
    pub inbound: Arc<Inbound>,
    pub telemetry: Telemetry,
    /// The SIGTERM drain and its deadline ([`App::start_drain`], [`App::cut_drain`]).
    pub drain: Arc<crate::dataplane::drain::Drain>,
    /// Access logs and tracing as the snapshot's Telemetry config declares them.
    pub telemetry_api: Arc<crate::telemetry::spans::TelemetryApi>,
}

impl App {
    pub fn new(
        cert: WorkloadCert,
        snapshot: Snapshot,
        settings: &Settings,
        access_log: Arc<AccessLog>,
    ) -> Result<Self, IdentityError> {
        Self::with_telemetry(
            cert,
            snapshot,
            settings,
            access_log,
            Telemetry::default(),
            "files",
        )
    }

    /// `config_source` names where the snapshot came from (status and metrics show it).
    pub fn with_telemetry(
        cert: WorkloadCert,
        snapshot: Snapshot,
        settings: &Settings,
        access_log: Arc<AccessLog>,
        telemetry: Telemetry,
        config_source: &str,
    ) -> Result<Self, IdentityError> {
        let tls = server_config(&cert, &settings.trust_domains)?;
        let status = telemetry.status.clone();
        status.set_certificate(cert.summary());
        telemetry.own_cert.set(&cert);
        status.set_config(&snapshot, config_source);
        status.attach_access_log(access_log.clone());
        let telemetry_api = Arc::new(crate::telemetry::spans::TelemetryApi::new(
            access_log.clone(),
        ));
        telemetry_api.apply(snapshot.telemetry());
        let _first_wins = status.telemetry_api.set(telemetry_api.clone());
        let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));
        // The first config's scratch (a large mesh's first translation) is returned too.
        crate::control::retired::settled_later();
        let drain = Arc::new(crate::dataplane::drain::Drain::default());
        let client = Arc::new(
            HboneClient::with_limits(Arc::new(ClientConfigs::new(cert)), settings.upstream)
                .with_drain(drain.clone()),
        );
        let pool = TunnelPool::new(client, settings.upstream_hbone_port);
        let conf = Arc::new(ServerConf::default());
        let jwks = Arc::new(crate::dataplane::proxy::JwksCache::default());
        let authorizers = Arc::new(settings.authorizers.clone());
        let waypoint = || Waypoint {
            snapshot: snapshot.clone(),
            pool: pool.clone(),
            access_log: access_log.clone(),
            telemetry: telemetry.clone(),
            path_normalization: settings.path_normalization,
            jwks: jwks.clone(),
            authorizers: authorizers.clone(),
            drain: drain.clone(),
            telemetry_api: telemetry_api.clone(),
        };
        let h1 = http_proxy(&conf, waypoint());
        let mut h2c = http_proxy(&conf, waypoint());
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        h2c.server_options = Some(options);
        let inbound = Arc::new(Inbound {
            snapshot: snapshot.clone(),
            h1: Arc::new(h1),
            h2c: Arc::new(h2c),
            pool: pool.clone(),
            access_log,
            telemetry: telemetry.clone(),
            sniff_timeout: settings.sniff_timeout,
            request_headers_timeout: settings.request_headers_timeout,
            send_timeout: settings.send_timeout,
            drain: drain.clone(),
        });
        let server = HboneServer::new(
            tls,
            inbound.clone(),
            settings.handshake_timeout,
            settings.workers.clone(),
        );
        status.attach(Dataplane {
            server: server.clone(),
            pool: pool.clone(),
            snapshot: snapshot.clone(),
        });
        Ok(Self {
            trust_domains: settings.trust_domains.clone(),
            snapshot,
            pool,
            server,
            inbound,
            telemetry,
            drain,
            telemetry_api,
        })
    }

    /// A new certificate (same or new roots): new inbound handshakes and new outbound
    /// connections use it at once; established connections are not cut; pooled outbound
    /// connections are recycled. Nothing changes if the new certificate cannot be used.
    pub fn rotate(&self, cert: WorkloadCert) -> Result<(), IdentityError> {
        let tls = server_config(&cert, &self.trust_domains)?;
        let summary = cert.summary();
        self.telemetry.own_cert.set(&cert);
        let client = Arc::new(ClientConfigs::new(cert));
        self.server.set_tls(tls);
        self.pool.rotate(client);
        self.telemetry.status.set_certificate(summary);
        self.telemetry
            .status
            .cert_rotations
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Publish a new routing snapshot; requests in flight keep the one they started with.
    /// Pool counters, active requests, warm-up clocks and outlier ejections carry over to the
    /// same clusters and endpoints of the new snapshot.
    pub fn publish(&self, mut snapshot: Snapshot, source: &str) {
        snapshot.carry_over_state(&self.snapshot.load());
        self.telemetry.status.set_config(&snapshot, source);
        self.telemetry_api.apply(snapshot.telemetry());
        crate::control::retired::retire(self.snapshot.swap(Arc::new(snapshot)));
    }

    pub async fn serve(&self, listener: TcpListener, shutdown: ShutdownWatch) {
        self.server.clone().serve(listener, shutdown).await
    }

    /// [`App::serve`] on each of `listeners` (a dual-stack address's two sockets) at once.
    pub async fn serve_all(&self, listeners: Vec<TcpListener>, shutdown: ShutdownWatch) {
        let each = listeners
            .into_iter()
            .map(|l| self.server.clone().serve(l, shutdown.clone()));
        futures::future::join_all(each).await;
    }

    /// The drain starts (after `serve` returned on shutdown): HTTP/1.1 sessions waiting for
    /// their next request inside tunnels are closed, and responses from now on carry
    /// `connection: close` (pingora's shutdown flag, which `response_filter` reads).
    pub async fn start_drain(&self) {
        use pingora_core::apps::ServerApp;
        self.drain.start();
        self.inbound.h1.cleanup().await;
        self.inbound.h2c.cleanup().await;
    }

    /// The drain deadline: what is still in flight is answered 503 or reset, and inbound
    /// connections still open `force_close_after` later are closed (see [`crate::dataplane::drain`]).
    pub fn cut_drain(&self, force_close_after: std::time::Duration) {
        self.drain.cut(force_close_after);
    }
}
