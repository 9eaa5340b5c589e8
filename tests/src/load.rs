//! The load generator the benchmark programs share: keep-alive HTTP/1.1 workers that warm up,
//! meet at a barrier (so that the caller samples CPU), then send their share of GETs, optionally
//! paced, and report latencies and failures.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Barrier;
use waypoint::commands::sim::{self, Http1};

/// How much load one run sends and how long it may take: the bounds every benchmark program
/// takes (flattened into its arguments).
#[derive(clap::Args, Debug, Clone)]
pub struct RunBounds {
    /// Measured requests per run, split evenly over the connections.
    #[arg(long, default_value_t = 20_000)]
    pub requests: usize,
    /// Unmeasured warm-up requests per run, on the same connections, before measuring.
    #[arg(long, default_value_t = 1_000)]
    pub warmup: usize,
    /// Hard time cap per phase (warm-up and measured part each); workers stop when it passes.
    #[arg(long, default_value_t = 30)]
    pub max_seconds: u64,
}

/// The request every worker sends.
#[derive(Debug, Clone, Copy)]
pub struct Get {
    pub host: &'static str,
    pub path: &'static str,
    pub user_agent: &'static str,
    pub timeout: Duration,
}

impl Get {
    /// One request, the whole body read; `Err` carries a short description ("HTTP 503" when
    /// the answer was not 200: the session is still usable).
    pub async fn send(&self, send: &mut Http1) -> Result<(), String> {
        match tokio::time::timeout(
            self.timeout,
            sim::get(
                send,
                self.host,
                self.path,
                &[("user-agent", self.user_agent)],
            ),
        )
        .await
        {
            Err(_) => Err(format!("timeout after {:?}", self.timeout)),
            Ok(Err(e)) => Err(format!("error: {e:#}")),
            Ok(Ok((parts, _body))) if parts.status == 200 => Ok(()),
            Ok(Ok((parts, _body))) => Err(format!("HTTP {}", parts.status.as_u16())),
        }
    }
}

#[derive(Debug, Default)]
pub struct WorkerOut {
    pub latencies_us: Vec<u32>,
    pub ok: u64,
    pub warmup_sent: u64,
    pub measured_sent: u64,
    pub failures: BTreeMap<String, u64>,
}

/// Count a failure under its (shortened) description.
pub fn record(failures: &mut BTreeMap<String, u64>, what: String) {
    let what: String = what.chars().take(200).collect();
    *failures.entry(what).or_default() += 1;
}

/// The `p`th percentile of sorted samples (0 when there are none).
pub fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// One worker: a session from `connect`, `warmup` unmeasured requests, two barrier waits (the
/// caller samples between them), then up to `share` measured requests within `max`, one per
/// `pace` tick when given. A broken session is replaced once per failure; if that fails too,
/// the worker stops.
pub async fn worker<C, F>(
    connect: C,
    get: Get,
    warmup: usize,
    share: usize,
    max: Duration,
    pace: Option<Duration>,
    barrier: Arc<Barrier>,
) -> WorkerOut
where
    C: Fn() -> F,
    F: Future<Output = anyhow::Result<Http1>>,
{
    let mut out = WorkerOut {
        latencies_us: Vec::with_capacity(share),
        ..Default::default()
    };
    let mut send = match connect().await {
        Ok(s) => Some(s),
        Err(e) => {
            record(&mut out.failures, format!("connect: {e:#}"));
            None
        }
    };
    let deadline = Instant::now() + max;
    if let Some(s) = send.as_mut() {
        for _ in 0..warmup {
            if Instant::now() >= deadline {
                break;
            }
            out.warmup_sent += 1;
            if let Err(e) = get.send(s).await {
                record(&mut out.failures, format!("warm-up {e}"));
                break;
            }
        }
    }
    // All warmed up → the caller samples CPU → go.
    barrier.wait().await;
    barrier.wait().await;
    let mut ticker = pace.map(|period| {
        let mut t = tokio::time::interval(period);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let deadline = Instant::now() + max;
    for _ in 0..share {
        if Instant::now() >= deadline {
            break;
        }
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let Some(s) = send.as_mut() else { break };
        out.measured_sent += 1;
        let start = Instant::now();
        match get.send(s).await {
            Ok(()) => {
                out.ok += 1;
                out.latencies_us
                    .push(start.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
            }
            Err(e) => {
                let broken = !e.starts_with("HTTP ");
                record(&mut out.failures, e);
                if broken {
                    send = match connect().await {
                        Ok(s) => Some(s),
                        Err(e) => {
                            record(&mut out.failures, format!("reconnect: {e:#}"));
                            None
                        }
                    };
                }
            }
        }
    }
    out
}
