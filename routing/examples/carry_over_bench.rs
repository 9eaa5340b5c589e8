//! `carry_over_bench`: what `Snapshot::carry_over_state` costs on a config reload — the step that
//! hands round-robin counters, circuit-breaker counters, warmup clocks and outlier state from the
//! published snapshot to the next one. A program that prints numbers, not a test.
//!
//! Two shapes, each loaded twice from the same YAML (so every cluster and endpoint carries over):
//! many small clusters (`--clusters N` ServiceEntries × `--endpoints E` endpoints) and one large
//! cluster (`--big B` endpoints). The previous snapshot is published first as the waypoint
//! publishes (carried over from an empty one); then only the next snapshot's carry-over is timed
//! (median of `--runs` runs, each on a freshly loaded pair of snapshots).
//!
//! ```sh
//! cargo run --release -p routing --example carry_over_bench -- --clusters 5000 --endpoints 10 --big 20000
//! ```

use std::time::Instant;

const USAGE: &str = "carry_over_bench [--clusters N] [--endpoints E] [--big B] [--runs R]";

struct Args {
    clusters: usize,
    endpoints: usize,
    big: usize,
    runs: usize,
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        clusters: 5000,
        endpoints: 10,
        big: 20_000,
        runs: 3,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let v: usize = it
            .next()
            .ok_or_else(|| format!("{a} needs a value; {USAGE}"))?
            .parse()
            .map_err(|e| format!("{a}: {e}"))?;
        match a.as_str() {
            "--clusters" => out.clusters = v,
            "--endpoints" => out.endpoints = v,
            "--big" => out.big = v,
            "--runs" => out.runs = v.max(1),
            _ => return Err(USAGE.to_string()),
        }
    }
    Ok(out)
}

/// ServiceEntry `i` with `n` inline endpoints, addresses distinct across services.
fn service_entry(i: usize, n: usize) -> String {
    let mut s = format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: svc-{i}\n  \
         namespace: bench\nspec:\n  hosts:\n  - svc-{i}.bench.svc.cluster.local\n  addresses:\n  \
         - 10.{}.{}.1\n  ports:\n  - number: 8080\n    name: http\n    protocol: HTTP\n    \
         targetPort: 9080\n  resolution: STATIC\n  location: MESH_INTERNAL\n  endpoints:\n",
        i / 250,
        i % 250 + 1
    );
    for k in 0..n {
        // One address space per service: 10.128+ … for endpoints.
        let flat = i * n + k;
        s.push_str(&format!(
            "  - address: {}.{}.{}.{}\n    serviceAccount: sa-{}\n",
            11 + flat / (250 * 250 * 250),
            flat / (250 * 250) % 250,
            flat / 250 % 250,
            flat % 250 + 1,
            k % 7
        ));
    }
    s
}

fn load(text: &str) -> Result<routing::Snapshot, String> {
    routing::load_str(&[("bench.yaml".into(), text.into())], "cluster.local")
        .map_err(|e| e.to_string())
}

/// Median carry-over time in ms over `runs` fresh pairs of snapshots.
fn measure(text: &str, runs: usize) -> Result<(f64, usize, usize), String> {
    let mut times = Vec::new();
    let (mut clusters, mut endpoints) = (0, 0);
    for _ in 0..runs {
        // The published snapshot went through a carry-over itself (as every publish does), so
        // its state is indexed already; only the new snapshot's carry-over is timed.
        let mut previous = load(text)?;
        previous.carry_over_state(&routing::Snapshot::empty());
        let mut next = load(text)?;
        let started = Instant::now();
        next.carry_over_state(&previous);
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        let all = next.clusters();
        clusters = all.len();
        endpoints = all.iter().map(|c| c.endpoints.len()).sum();
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], clusters, endpoints))
}

fn main() -> Result<(), String> {
    let a = args()?;
    println!(
        "carry-over of a snapshot reloaded unchanged, median of {} run(s)",
        a.runs
    );
    println!(
        "{:>10} {:>10} {:>14}",
        "clusters", "endpoints", "carry-over ms"
    );
    let many: String = (0..a.clusters)
        .map(|i| service_entry(i, a.endpoints))
        .collect();
    let big = service_entry(0, a.big);
    for text in [many, big] {
        let (ms, clusters, endpoints) = measure(&text, a.runs)?;
        println!("{clusters:>10} {endpoints:>10} {ms:>14.2}");
    }
    Ok(())
}
