//! `waypoint demo --ui`: after the report the demo keeps running, sending steady traffic
//! through the waypoint, and serves the admin endpoints with the live canary page (`/ui`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::commands::demo::{drive, Bench};
use crate::commands::sim::ZtunnelClient;
use crate::telemetry::admin::{Admin, Role};

/// The split audit's window while the page is up: a point every two seconds.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Requests sent every [`PACE`] while the page is up (about 100 a second).
const BATCH: usize = 20;
const PACE: Duration = Duration::from_millis(200);

/// Serve the admin endpoints on `listen` and keep traffic flowing to `vip` until Ctrl-C or
/// SIGTERM.
pub async fn serve(
    bench: &Bench,
    client: &ZtunnelClient,
    vip: SocketAddr,
    authority: &str,
    listen: SocketAddr,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the canary page's address {listen} (--ui)"))?;
    let addr = listener.local_addr()?;
    let admin = Arc::new(Admin {
        telemetry: bench.app.telemetry.clone(),
        logs: None,
        access_log: None,
        process: serde_json::json!({"command": "demo"}),
    });
    let (stop, watch) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(admin.serve(listener, Role::Admin, watch));
    crate::outln!("\ncanary page: http://{addr}/ui (Ctrl-C ends the demo)");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut pace = tokio::time::interval(PACE);
    let mut failed = 0u64;
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = pace.tick() => {
                match drive(client, vip, authority, BATCH, 2).await {
                    Ok(r) => failed += r.failures,
                    Err(e) => {
                        tracing::warn!(error = %e, "demo traffic");
                        failed += 1;
                    }
                }
            }
        }
    }
    let _ = stop.send(true);
    let _ = server.await;
    crate::outln!("demo ended; {failed} requests failed while the page was up");
    Ok(())
}
