//! `snapshot_heap`: where a translated snapshot's live heap goes. A program that prints numbers,
//! not a test. A counting global allocator measures the live bytes of translating an xDS fixture
//! (default: bookinfo), with the decoded resources dropped, and then of copies of the snapshot's
//! public parts (services, endpoints, VirtualServices, DestinationRules: a copy costs about what
//! the original holds) and of the runtime registry the first carry-over indexes. The rest is the
//! clusters, the route entries and the lookup indices.
//!
//! ```sh
//! cargo run --release -p routing --example snapshot_heap [-- fixture.json]
//! ```

use routing::xds::{json::load_resources, translate, TranslateOptions};
use routing::Endpoint;
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is forwarded unchanged to `System`; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Relaxed)
}

/// Live bytes `make`'s result holds.
fn held<T>(make: impl FnOnce() -> T) -> (T, isize) {
    let before = live();
    let v = make();
    (v, live() - before)
}

fn main() -> Result<(), String> {
    let path = std::env::args().nth(1).unwrap_or_else(|| {
        format!(
            "{}/tests/fixtures/xds/bookinfo.json",
            env!("CARGO_MANIFEST_DIR")
        )
    });
    let json = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let options = TranslateOptions::default();
    // Once untimed: the JSON descriptors and other lazy statics are allocated here, not below.
    let warm = load_resources(&json).map_err(|e| format!("{path}: {e}"))?;
    drop(translate(&warm, &options).map_err(|r| format!("{path}: rejected: {r:?}"))?);
    drop(warm);
    let start = live();
    let resources = load_resources(&json).map_err(|e| format!("{path}: {e}"))?;
    let snapshot = translate(&resources, &options)
        .map_err(|r| format!("{path}: rejected: {r:?}"))?
        .snapshot;
    drop(resources);
    let total = live() - start;
    let n = snapshot.services().count().max(1) as isize;
    let (_, registry) = held(|| snapshot.runtime().len());
    let (_services, services) = held(|| snapshot.services().cloned().collect::<Vec<_>>());
    let (_endpoints, endpoints) = held(|| {
        snapshot
            .services()
            .map(|s| {
                snapshot
                    .endpoints(&s.hostname)
                    .iter()
                    .map(|e| std::sync::Arc::new(Endpoint::clone(e)))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    });
    let (_vs, vs) = held(|| snapshot.virtual_services().to_vec());
    let (_dr, dr) = held(|| snapshot.destination_rules().to_vec());
    // A cluster has no `Clone`: rebuilt from its parts, it holds what the original does.
    let (_clusters, cluster_bytes) = held(|| {
        snapshot
            .clusters()
            .into_iter()
            .map(|c| {
                let eps = c
                    .endpoints
                    .iter()
                    .map(|e| routing::ClusterEndpoint::new(e.endpoint.clone(), e.target))
                    .collect();
                routing::Cluster::with_policy(
                    c.name.clone(),
                    c.service_hostname.clone(),
                    c.port,
                    c.subset.clone(),
                    c.policy.clone(),
                    eps,
                    std::time::Instant::now(),
                )
            })
            .collect::<Vec<_>>()
    });
    let (_policies, policy_bytes) = held(|| {
        snapshot
            .clusters()
            .into_iter()
            .map(|c| c.policy.clone())
            .collect::<Vec<_>>()
    });
    let rest = total - services - endpoints - vs - dr - cluster_bytes;
    let endpoint_count: usize = snapshot
        .services()
        .map(|s| snapshot.endpoints(&s.hostname).len())
        .sum();
    let clusters = snapshot.clusters().len();
    println!("{path}: {n} services, {endpoint_count} endpoints, {clusters} clusters");
    println!("{:<44} {:>9} {:>12}", "part", "bytes", "bytes/svc");
    let row = |name: &str, b: isize| println!("{name:<44} {b:>9} {:>12}", b / n);
    row("snapshot (translated, resources dropped)", total);
    row("  services (copy)", services);
    row("  endpoints (copy, per service)", endpoints);
    row("  virtual services (copy)", vs);
    row("  destination rules (copy)", dr);
    row("  clusters (rebuilt)", cluster_bytes);
    row("    of which policies (copy)", policy_bytes);
    row("  rest: route entries, indices, authz", rest);
    row("runtime registry (indexed on first use)", registry);
    row("snapshot + registry", total + registry);
    println!("sizes: Cluster {} ClusterEndpoint {} ClusterPolicy {} Endpoint {} HttpRoute {} Service {} DestinationRule {}",
        std::mem::size_of::<routing::Cluster>(),
        std::mem::size_of::<routing::ClusterEndpoint>(),
        std::mem::size_of::<routing::ClusterPolicy>(),
        std::mem::size_of::<Endpoint>(),
        std::mem::size_of::<routing::HttpRoute>(),
        std::mem::size_of::<routing::Service>(),
        std::mem::size_of::<routing::DestinationRule>(),
    );
    Ok(())
}
