//! Wiring: one routing snapshot, one upstream pool, the pingora HTTP proxies and the HBONE server.
//! `serve` runs on any tokio runtime (tests run it in-process); `waypoint run` hosts it as a
//! pingora background service so that pingora's `Server` owns the process and its signals.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_core::apps::HttpServerOptions;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use pingora_proxy::http_proxy;
use routing::Snapshot;
use serde::Serialize;
use tokio::net::TcpListener;
use tracing::error;

use crate::access_log::AccessLog;
use crate::hbone::server::HboneServer;
use crate::hbone::{HboneClient, TunnelPool, HBONE_PORT};
use crate::identity::{server_config, ClientConfigs, IdentityError, WorkloadCert};
use crate::inbound::Inbound;
use crate::proxy::Waypoint;

/// Settings of the data path (the CLI and the harness fill these).
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// Trust domains whose clients are accepted (the own one plus aliases).
    pub trust_domains: Vec<String>,
    /// Port of the HBONE listener on endpoint nodes (15008 in a mesh).
    pub upstream_hbone_port: u16,
    pub connect_timeout: Duration,
    pub sniff_timeout: Duration,
}

impl Settings {
    pub fn new(trust_domain: &str) -> Self {
        Self {
            trust_domains: vec![trust_domain.to_string()],
            upstream_hbone_port: HBONE_PORT,
            connect_timeout: Duration::from_secs(10),
            sniff_timeout: Duration::from_secs(5),
        }
    }
}

pub struct App {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub pool: Arc<TunnelPool>,
    pub server: Arc<HboneServer>,
    pub inbound: Arc<Inbound>,
}

impl App {
    pub fn new(
        cert: WorkloadCert,
        snapshot: Snapshot,
        settings: &Settings,
        access_log: Arc<AccessLog>,
    ) -> Result<Self, IdentityError> {
        let tls = server_config(&cert, &settings.trust_domains)?;
        let snapshot = Arc::new(ArcSwap::from_pointee(snapshot));
        let client = Arc::new(HboneClient::new(
            Arc::new(ClientConfigs::new(cert)),
            settings.connect_timeout,
        ));
        let pool = TunnelPool::new(client, settings.upstream_hbone_port);
        let conf = Arc::new(ServerConf::default());
        let waypoint = || Waypoint {
            snapshot: snapshot.clone(),
            pool: pool.clone(),
            access_log: access_log.clone(),
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
            sniff_timeout: settings.sniff_timeout,
        });
        let server = HboneServer::new(tls, inbound.clone());
        Ok(Self {
            snapshot,
            pool,
            server,
            inbound,
        })
    }

    /// Publish a new routing snapshot; requests in flight keep the one they started with.
    pub fn publish(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
    }

    pub async fn serve(&self, listener: TcpListener, shutdown: ShutdownWatch) {
        self.server.clone().serve(listener, shutdown).await
    }
}

/// The HBONE listener as a pingora background service (pingora owns runtime and signals).
pub struct HboneService {
    pub app: Arc<App>,
    pub listener: Mutex<Option<std::net::TcpListener>>,
}

#[async_trait]
impl BackgroundService for HboneService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let Some(std_listener) = self.listener.lock().take() else {
            error!("HBONE service started twice");
            return;
        };
        let listener = match std_listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(std_listener))
        {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "cannot use the HBONE listening socket");
                return;
            }
        };
        self.app.serve(listener, shutdown).await;
    }
}

/// Bind the HBONE listener before the server starts, so a bad address fails loudly at once.
pub fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr)
}
