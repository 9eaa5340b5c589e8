//! Requests through the waypoint that tell when a push shows: one GET, and bounded polls.

use super::*;

/// One GET through a fresh tunnel to `vip` (at most 2 s): status and body, or `None` if the
/// tunnel or request failed.
async fn get_once(
    client: &sim::ZtunnelClient,
    vip: SocketAddr,
    host: &str,
) -> Option<(u16, bytes::Bytes)> {
    let attempt = async {
        let mut send = client.http1(vip).await.ok()?;
        let (parts, body) = sim::get(&mut send, host, "/", &[]).await.ok()?;
        Some((parts.status.as_u16(), body))
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// One GET through a fresh tunnel to `vip`; its status, or `None` if the tunnel or request
/// failed.
pub(super) async fn try_get(
    client: &sim::ZtunnelClient,
    vip: SocketAddr,
    host: &str,
) -> Option<u16> {
    get_once(client, vip, host).await.map(|(status, _)| status)
}

/// One GET through a fresh tunnel to `vip`: the name of the pod that answered 200, or `None`.
pub(super) async fn try_pod(
    client: &sim::ZtunnelClient,
    vip: SocketAddr,
    host: &str,
) -> Option<String> {
    let (status, body) = get_once(client, vip, host).await?;
    if status != 200 {
        return None;
    }
    let echo: sim::Echo = serde_json::from_slice(&body).ok()?;
    Some(echo.pod)
}

/// Run `probe` every [`POLL_EVERY`] until `done` holds for its answer or [`PUSH_DEADLINE`]
/// has passed since `t0`: (time since `t0`, attempts), or the attempts and the last answer.
async fn poll<T, Fut>(
    t0: Instant,
    mut probe: impl FnMut() -> Fut,
    done: impl Fn(&T) -> bool,
) -> Result<(Duration, u32), (u32, Option<T>)>
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let mut attempts = 0;
    let mut last = None;
    while t0.elapsed() < PUSH_DEADLINE {
        attempts += 1;
        last = probe().await;
        if last.as_ref().is_some_and(&done) {
            return Ok((t0.elapsed(), attempts));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    Err((attempts, last))
}

/// Poll `vip` (one request per poll, every [`POLL_EVERY`]) until pod `expect` answers; (time
/// since `t0`, attempts).
pub(super) async fn answered_by(
    client: &sim::ZtunnelClient,
    vip: SocketAddr,
    host: &str,
    expect: &str,
    t0: Instant,
) -> anyhow::Result<(Duration, u32)> {
    poll(t0, || try_pod(client, vip, host), |pod| pod == expect)
        .await
        .map_err(|(attempts, last)| {
            anyhow!("{expect} did not answer {host} ({vip}) within {PUSH_DEADLINE:?} ({attempts} attempts, last {last:?})")
        })
}

/// Poll `vip` every [`POLL_EVERY`] until a 200; (time since `t0`, attempts).
pub(super) async fn first_200(
    client: &sim::ZtunnelClient,
    vip: SocketAddr,
    host: &str,
    t0: Instant,
) -> anyhow::Result<(Duration, u32)> {
    poll(t0, || try_get(client, vip, host), |status| *status == 200)
        .await
        .map_err(|(attempts, last)| {
            anyhow!("no 200 from {host} ({vip}) within {PUSH_DEADLINE:?} ({attempts} attempts, last {last:?})")
        })
}
