//! `xds_bench`: what istiod-sized xDS state costs the waypoint, and how long a push takes to
//! serve. A program that prints numbers, not a test; it asserts nothing about time.
//!
//! 1. **Translation.** For N services (10 endpoints each, two weighted subsets each) it builds
//!    the resources istiod would send a waypoint, as prost structs: one service's filter chain,
//!    IP-matcher entry, clusters and assignment are taken from the bookinfo fixture's `reviews`
//!    (`routing/tests/fixtures/xds/bookinfo.json`) and cloned per service with its own names, VIP
//!    and pod IPs; all services hang off one `main_internal` listener. Per N it reports the
//!    encoded size, `Resources::from_any` (what the waypoint does with every push) and
//!    `routing::xds::translate` times (median of `--runs`), and the memory the decoded resources
//!    and the snapshot hold (measured in a fresh child process per N, see [`probe_memory`]); and
//!    what the waypoint runs, `routing::xds::Translator` from the encoded resources to a published
//!    snapshot (carried over): with nothing to reuse, on the same state again, after one EDS
//!    change, after one route's weights changed, and for each of a new service's three
//!    responses (CDS, EDS, LDS). `--repeat-pushes K` loops each kind for a profiler.
//! 2. **Push latency.** The in-test ADS server (TLS, bearer token) serves N such services to the
//!    real `waypoint` binary (`waypoint run --xds`, spawned from the directory this program runs
//!    from: build both into the same target dir). Then, a handful of times, one new service
//!    (3 clusters, 3 assignments, the listener with one more chain) is pushed and the time from
//!    the push to the first 200 through the waypoint to the new VIP is measured, with real pods
//!    behind it; and a weight-only change of an existing route (100/0 ⇄ 0/100 over two serving
//!    pods) is pushed and timed to the first answer from the newly weighted pod, and to its ACK.
//!    With several push sizes it prints the largest size's figures over the smallest's. Beside
//!    the waypoint's RSS it prints its live heap (`/memory`'s `allocated`, from jemalloc).
//! 3. **Churn** (`--churn-services N`, off by default): a fixed load through the waypoint, without
//!    and then with `--churn-rate` endpoint changes a second; latency, failures, RSS and heap
//!    drift, ACKs.
//!
//! The ADS server, the simulated pods and the client run in this process; the waypoint is its own
//! process. All share the machine's cores.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{address, Metadata};
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LbEndpoint};
use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::google::protobuf::{value::Kind, Any, StringValue, Struct, UInt32Value, Value};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_tree::TreeType;
use envoy_types::pb::xds::r#type::matcher::v3::matcher::on_match::OnMatch as OnMatchKind;
use envoy_types::pb::xds::r#type::matcher::v3::matcher::{MatcherType, OnMatch};
use envoy_types::pb::xds::r#type::matcher::v3::Matcher;
use prost::{Message, Name};
use routing::xds::{Resources, TranslateOptions};
use waypoint::control::identity::{install_crypto_provider, Ca};
use waypoint_tests::{sim, spiffe, Net, TRUST_DOMAIN};
use xds_client::testing::{any, AdsServer, AdsServerOptions, TestPki};
use xds_client::type_url;
mod template;
use template::{
    baseline, rejections, to_anys, translate_options, vip, AnyList, ServiceXds, Spec, Template,
};
mod translation;
use translation::{measure_translation, ms, print_translation, probe_memory, status_kib_of};
mod heap;
mod memo;
mod probe;
mod push;
use push::{measure_push, print_push, waypoint_binary, Destination};
mod churn;
use churn::{measure_churn, print_churn};

#[derive(Parser, Debug)]
#[command(about = "xDS translation cost and push-to-first-request latency of the waypoint")]
struct Args {
    /// Service counts for the translation measurement; the first is the baseline for ratios.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,5000,10000")]
    sizes: Vec<usize>,
    /// Endpoints (pods) per service; half in subset v1, half in v2.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// Timed repetitions of decode and translate per size (the median is reported).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Services already served before the timed pushes (one waypoint per size).
    #[arg(long, value_delimiter = ',', default_value = "1000,5000")]
    push_sizes: Vec<usize>,
    /// Timed pushes per size (new service, then as many weight-only changes).
    #[arg(long, default_value_t = 5)]
    pushes: usize,
    /// Skip the push-latency part.
    #[arg(long)]
    no_push: bool,
    /// Churn run: services served to the waypoint (0: no churn run). A fixed load runs
    /// `--churn-secs` without churn, then as long with `--churn-rate` endpoint changes a second.
    #[arg(long, default_value_t = 0)]
    churn_services: usize,
    /// Endpoint changes (EDS pushes of one assignment) per second in the churn phase.
    #[arg(long, default_value_t = 50)]
    churn_rate: u32,
    /// Seconds of each churn-run phase (without churn, then with).
    #[arg(long, default_value_t = 60)]
    churn_secs: u64,
    /// Keep-alive sessions (each its own HBONE tunnel) of the churn run's load.
    #[arg(long, default_value_t = 8)]
    churn_connections: usize,
    /// The waypoint binary (default: `waypoint` next to this program).
    #[arg(long)]
    waypoint: Option<PathBuf>,
    /// After the translator table of each size, translate K more EDS pushes (one assignment
    /// changed back and forth), K route changes and K steps of a new service's arrival and
    /// removal (each a full pass), and print the mean of each: loops long enough for a profiler
    /// (`perf record xds_bench --sizes 5000 --runs 1 --no-push --repeat-pushes 300`).
    #[arg(long, default_value_t = 0)]
    repeat_pushes: usize,
    /// Internal: measure the memory of decoding and translating the resources in this file (an
    /// `AnyList`) and print one `probe` line (the parent runs this in a fresh child per N).
    #[arg(long, hide = true)]
    probe_memory: Option<PathBuf>,
}

const FIXTURE: &str = include_str!("../../../../routing/tests/fixtures/xds/bookinfo.json");
/// The fixture service every generated service is cloned from.
const TEMPLATE_SHORT: &str = "reviews";
const TEMPLATE_VIP: &str = "10.96.0.12";
const PORT: u16 = 9080;
const TOKEN: &str = "istio-token-for-the-bench";
/// How long one push may take to show before the run is declared failed (a new service at
/// 10 000 services took over 30 s on a loaded 2-core machine on 2026-12-04).
const PUSH_DEADLINE: Duration = Duration::from_secs(60);
const POLL_EVERY: Duration = Duration::from_millis(2);

// Counts live heap bytes for the memory probe (`heap.rs`).
#[global_allocator]
static ALLOCATOR: heap::Counting = heap::Counting;

// ---------------------------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(file) = &args.probe_memory {
        return probe_memory(file);
    }
    if args.endpoints < 2 {
        bail!("--endpoints must be at least 2 (one per subset)");
    }
    if args.pushes == 0 && !args.no_push && !args.push_sizes.is_empty() {
        bail!("--pushes must be at least 1 (or pass --no-push)");
    }
    if args.sizes.is_empty() {
        bail!("--sizes is empty");
    }
    install_crypto_provider();
    let exe = std::env::current_exe()?;
    let tpl = Template::load()?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "xds bench: sizes {:?}, {} endpoints/service, {} runs, push sizes {:?} × {} pushes, {cores} cores",
        args.sizes, args.endpoints, args.runs, args.push_sizes, args.pushes
    );
    println!("note: translation runs in this process; memory is measured in a fresh child per N; the waypoint under push is the release binary in its own process, the ADS server, pods and client share this one");

    let mut rows = Vec::new();
    for &n in &args.sizes {
        let row = measure_translation(&tpl, n, &args, &exe)?;
        eprintln!(
            "  done: translate N={n}: {:.1} ms ({} resources, {:.1} MiB)",
            ms(row.translate),
            row.resources,
            row.bytes as f64 / 1048576.0
        );
        rows.push(row);
    }
    print_translation(&rows, args.endpoints);

    let push = !args.no_push && !args.push_sizes.is_empty();
    if !push && args.churn_services == 0 {
        return Ok(());
    }
    let waypoint = waypoint_binary(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let dst = Destination::start().await?;
        let result = async {
            if push {
                let mut rows = Vec::new();
                for &n in &args.push_sizes {
                    match measure_push(&tpl, n, &args, &waypoint, &dst).await {
                        Ok(row) => rows.push(row),
                        // The sizes measured so far are still worth printing.
                        Err(e) => {
                            print_push(&rows, args.pushes);
                            return Err(e);
                        }
                    }
                }
                print_push(&rows, args.pushes);
            }
            if args.churn_services > 0 {
                print_churn(&measure_churn(&tpl, &args, &waypoint, &dst).await?);
            }
            anyhow::Ok(())
        }
        .await;
        if let Err(e) = std::fs::remove_dir_all(&dst.certs) {
            eprintln!("  note: could not remove {}: {e}", dst.certs.display());
        }
        result
    })
}
