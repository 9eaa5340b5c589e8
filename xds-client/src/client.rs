//! The reconnect loop: connect, run a stream, back off, repeat until shutdown. The accepted
//! state lives across streams; the handler is never offered an empty state because a stream
//! ended.

use std::sync::Arc;
use std::time::Instant;

use rustls::pki_types::ServerName;
use tokio::sync::watch;

use crate::config::{ClientConfig, ConfigError, Mode};
use crate::resource::Handler;
use crate::session::Core;
use crate::status::{Status, StatusHandle};
use crate::transport::{self, ConnectError};
use crate::{delta, sotw};

/// Why a stream ended.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error(
        "istiod refused the stream: unauthenticated: {0} (is the token valid and ClusterID right?)"
    )]
    Unauthenticated(String),
    #[error("istiod refused the stream: permission denied: {0} (does the identity match the node's namespace and service account?)")]
    PermissionDenied(String),
    #[error("istiod does not implement this ADS method: {0}")]
    Unimplemented(String),
    #[error("stream failed: {code:?}: {message}")]
    Grpc { code: tonic::Code, message: String },
    #[error("istiod closed the stream")]
    Closed,
}

impl StreamError {
    pub(crate) fn from_status(status: tonic::Status) -> Self {
        let message = status.message().to_string();
        match status.code() {
            tonic::Code::Unauthenticated => Self::Unauthenticated(message),
            tonic::Code::PermissionDenied => Self::PermissionDenied(message),
            tonic::Code::Unimplemented => Self::Unimplemented(message),
            code => Self::Grpc { code, message },
        }
    }
}

/// Resolves when shutdown is asked for (`true` sent, or the sender dropped).
pub(crate) async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        tracing::debug!("xDS: shutdown sender dropped; stopping");
    }
}

/// An ADS client. Build with [`Client::new`], read [`Client::status`], then [`Client::run`].
pub struct Client {
    cfg: ClientConfig,
    tls: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    status_tx: watch::Sender<Status>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("cfg", &self.cfg).finish()
    }
}

impl Client {
    /// Check the configuration (roots, server name) without connecting.
    pub fn new(cfg: ClientConfig) -> Result<Self, ConfigError> {
        let tls = transport::tls_config(&cfg)?;
        let server_name = transport::server_name(&cfg)?;
        let (status_tx, _) = watch::channel(Status::default());
        Ok(Self {
            cfg,
            tls,
            server_name,
            status_tx,
        })
    }

    pub fn status(&self) -> StatusHandle {
        StatusHandle::new(self.status_tx.subscribe())
    }

    /// Keep a stream to istiod until `shutdown` turns `true` (or its sender is dropped), feeding
    /// `handler`. Returns the handler.
    pub async fn run<H: Handler>(self, handler: H, mut shutdown: watch::Receiver<bool>) -> H {
        let Client {
            cfg,
            tls,
            server_name,
            status_tx,
        } = self;
        let backoff = cfg.backoff;
        let mut mode = cfg.mode;
        let mut core = Core::new(cfg, handler, status_tx);
        let mut failures: u32 = 0;
        let mut streams: u64 = 0;
        loop {
            if *shutdown.borrow() {
                break;
            }
            core.status.send_modify(|s| s.connect_attempts += 1);
            let started = Instant::now();
            let result = run_once(
                &mut core,
                mode,
                &tls,
                &server_name,
                &mut shutdown,
                &mut streams,
            )
            .await;
            core.status.send_modify(|s| s.connected = false);
            let error = match result {
                Ok(()) => break,
                Err(e) => e,
            };
            if matches!(error, StreamError::Unimplemented(_)) && mode == Mode::DeltaWithFallback {
                tracing::warn!("xDS: {error}; falling back to state-of-the-world ADS");
                mode = Mode::StateOfTheWorld;
            }
            tracing::warn!(address = %core.cfg.address, "xDS: {error}");
            let message = error.to_string();
            core.status.send_modify(|s| s.last_error = Some(message));
            if started.elapsed() >= backoff.reset_after {
                failures = 0;
            }
            let delay = backoff.delay(failures);
            failures = failures.saturating_add(1);
            tokio::select! {
                _ = stopped(&mut shutdown) => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        core.status.send_modify(|s| s.connected = false);
        core.handler
    }
}

/// One connection and stream.
async fn run_once<H: Handler>(
    core: &mut Core<H>,
    mode: Mode,
    tls: &Arc<rustls::ClientConfig>,
    server_name: &ServerName<'static>,
    shutdown: &mut watch::Receiver<bool>,
    streams: &mut u64,
) -> Result<(), StreamError> {
    let metadata = transport::call_metadata(&core.cfg)?;
    let timeout = core.cfg.connect_timeout;
    let connect = transport::connect(&core.cfg, tls.clone(), server_name.clone());
    let client = tokio::select! {
        _ = stopped(shutdown) => return Ok(()),
        connected = tokio::time::timeout(timeout, connect) => match connected {
            Ok(client) => client?,
            Err(_) => {
                return Err(ConnectError::Timeout {
                    address: core.cfg.address.clone(),
                    timeout,
                }
                .into())
            }
        },
    };
    *streams += 1;
    if *streams > 1 {
        core.status.send_modify(|s| s.reconnects += 1);
    }
    match mode {
        Mode::Delta | Mode::DeltaWithFallback => delta::run(core, client, metadata, shutdown).await,
        Mode::StateOfTheWorld => sotw::run(core, client, metadata, shutdown).await,
    }
}
