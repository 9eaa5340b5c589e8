//! Part 1: translation time and memory per N (memory probed in a child process).

use super::heap::{by_class, heap};
use super::memo::{measure_memo, resource_name, NewService, MEMO_STEPS};
use super::*;

// ---------------------------------------------------------------------------------------------
// Part 1: translation
// ---------------------------------------------------------------------------------------------

pub(super) struct TranslateRow {
    pub(super) n: usize,
    pub(super) resources: usize,
    pub(super) bytes: usize,
    pub(super) decode: Duration,
    pub(super) translate: Duration,
    pub(super) warnings: usize,
    pub(super) memory: Option<Memory>,
    /// `xds::Translator` (what the waypoint runs), from the encoded resources to a snapshot
    /// carried over and published: with nothing to reuse, the same state again, and with one
    /// assignment changed (an EDS push), one route's weights changed (an LDS push), then a new
    /// service arriving as istiod sends it: its clusters (CDS), their assignments (EDS, which
    /// the waypoint asks for once it knows the clusters), `main_internal` with its chain (LDS).
    pub(super) memo: [Duration; MEMO_STEPS],
}

/// KiB of RSS growth, from a [`probe_memory`] child.
#[derive(Clone, Copy)]
pub(super) struct Memory {
    /// Decoded `Resources` (what `from_any` allocates; the `Any`s are already held).
    pub(super) decoded: u64,
    /// A second snapshot while the first is alive: ≈ the snapshot's live size (the first
    /// translation's freed temporaries are reused).
    pub(super) snapshot: u64,
    /// The first translation: the snapshot plus the temporaries the allocator kept.
    pub(super) first: u64,
    /// Live heap bytes the snapshot holds once the decoded resources are dropped (counting
    /// allocator, `heap.rs`): what a served snapshot really costs.
    pub(super) live: u64,
    /// Allocations one translation makes (freed ones included): a proxy for its work.
    pub(super) allocs: u64,
    /// Live heap bytes `xds::Translator` keeps besides the snapshot it published (its pieces and
    /// services; the `Any`s it reads are the xDS client's).
    pub(super) memo: u64,
}

pub(super) fn measure_translation(
    tpl: &Template,
    n: usize,
    args: &Args,
    exe: &Path,
) -> anyhow::Result<TranslateRow> {
    let mut services = baseline(tpl, n, args.endpoints);
    let anys = to_anys(&tpl.resources(&services));
    let mut spec = Spec::baseline(n, args.endpoints);
    spec.name = "pushed-new".into();
    let svc = tpl.service(&spec);
    let new_service = NewService {
        clusters: svc
            .clusters
            .iter()
            .map(|c| (c.name.clone(), any(c)))
            .collect(),
        assignments: (svc.assignments.iter())
            .map(|e| (e.cluster_name.clone(), any(e)))
            .collect(),
        main: any(&tpl.main_internal(services.iter().chain([&svc]))),
    };
    drop(svc);
    // A weight change of the first service (a VirtualService edit): `main_internal` again.
    services[0].chain = tpl.chain(&Spec {
        weights: [50, 50],
        ..Spec::baseline(0, args.endpoints)
    });
    let reweighted = any(&tpl.main_internal(services.iter()));
    drop(services);
    let bytes = anys.iter().map(|a| a.value.len()).sum();
    let options = translate_options();
    let mut decode_times = Vec::new();
    let mut translate_times = Vec::new();
    let mut warnings = 0;
    // One untimed run first: the heap grows and faults its pages in here, not in the timings.
    let warm = Resources::from_any(anys.iter()).map_err(rejections)?;
    drop(routing::xds::translate(&warm, &options).map_err(rejections)?);
    drop(warm);
    for _ in 0..args.runs.max(1) {
        let t = Instant::now();
        let resources = Resources::from_any(anys.iter()).map_err(rejections)?;
        decode_times.push(t.elapsed());
        let t = Instant::now();
        let translation = routing::xds::translate(&resources, &options).map_err(rejections)?;
        translate_times.push(t.elapsed());
        let served = translation.snapshot.services().count();
        if served < n {
            bail!("N={n}: the snapshot has {served} services");
        }
        if translation.warnings.len() != warnings {
            warnings = translation.warnings.len();
            if let Some(w) = translation.warnings.first() {
                eprintln!("  note: N={n}: {warnings} warning(s), first: {w}");
            }
        }
        drop(translation);
    }
    let memo = measure_memo(
        &anys,
        &reweighted,
        &new_service,
        &options,
        (args.runs.max(1), args.repeat_pushes),
    )?;
    let memory = match memory_in_child(exe, n, &anys) {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("  note: memory probe for N={n} failed: {e:#}");
            None
        }
    };
    Ok(TranslateRow {
        n,
        resources: anys.len(),
        bytes,
        decode: median(&mut decode_times),
        translate: median(&mut translate_times),
        warnings,
        memory,
        memo,
    })
}

pub(super) fn memory_in_child(exe: &Path, n: usize, anys: &[Any]) -> anyhow::Result<Memory> {
    let mut buf = Vec::new();
    for a in anys {
        prost::encoding::message::encode(1, a, &mut buf);
    }
    let file =
        std::env::temp_dir().join(format!("waypoint-xds-bench-{}-{n}.bin", std::process::id()));
    std::fs::write(&file, &buf)?;
    drop(buf);
    let out = Command::new(exe)
        .arg("--probe-memory")
        .arg(&file)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", exe.display()));
    if std::env::var_os(KEEP_PROBE_ENV).is_some() {
        eprintln!("  N={n}: probe input kept: {}", file.display());
    } else if let Err(e) = std::fs::remove_file(&file) {
        eprintln!("  note: could not remove {}: {e}", file.display());
    }
    let out = out?;
    let text = String::from_utf8_lossy(&out.stdout);
    for l in text.lines().filter(|l| l.starts_with("breakdown ")) {
        eprintln!("  N={n}: {l}");
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("probe "))
        .ok_or_else(|| {
            anyhow!(
                "no probe line; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })?;
    let field = |k: &str| -> anyhow::Result<u64> {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
            .ok_or_else(|| anyhow!("no {k} in {line:?}"))?
            .parse()
            .map_err(|e| anyhow!("{k} in {line:?}: {e}"))
    };
    Ok(Memory {
        decoded: field("decoded_kib")?,
        snapshot: field("snapshot_kib")?,
        first: field("first_kib")?,
        live: field("live_bytes")?,
        allocs: field("allocs")?,
        memo: field("memo_bytes")?,
    })
}

/// The child side. Reading the file leaves no garbage (one buffer, sized up front, kept), so the
/// RSS growth of `from_any` is the decoded resources. The first `translate` grows RSS by the
/// snapshot plus the temporaries glibc keeps after they are freed; a second one, with the first
/// snapshot still alive, reuses those temporaries, so its growth approximates the live size.
/// Then, by the counting allocator: a third translation from freshly decoded resources, the
/// resources and the translation's warnings dropped; the live heap growth that remains is the
/// snapshot alone.
pub(super) fn probe_memory(file: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(file)?;
    let list = AnyList::decode(bytes.as_slice())?;
    let before = status_kib("VmRSS")?;
    let resources = Resources::from_any(list.items.iter()).map_err(rejections)?;
    let decoded = status_kib("VmRSS")?;
    let options = translate_options();
    let first = routing::xds::translate(&resources, &options).map_err(rejections)?;
    let after_first = status_kib("VmRSS")?;
    let second = routing::xds::translate(&resources, &options).map_err(rejections)?;
    let after_second = status_kib("VmRSS")?;
    let services = second.snapshot.services().count();
    drop((first, second, resources));

    let options = translate_options();
    let classes = by_class();
    let steps = super::heap::by_step();
    let start = heap();
    let resources = Resources::from_any(list.items.iter()).map_err(rejections)?;
    let decoded_heap = heap();
    let snapshot = routing::xds::translate(&resources, &options)
        .map_err(rejections)?
        .snapshot;
    let translated = heap();
    drop(resources);
    // As served (the runtime registry is indexed only for tests and dumps).
    let live = heap().live - start.live;
    let unindexed = heap().live;
    snapshot.runtime();
    let registry = heap().live - unindexed;
    // The translator as the waypoint runs it: its memo beside the snapshot it published.
    let names: Vec<std::sync::Arc<str>> = list
        .items
        .iter()
        .map(|a| resource_name(a).map(Into::into))
        .collect::<anyhow::Result<_>>()?;
    let payloads: Vec<bytes::Bytes> = list.items.iter().map(|a| a.value.clone().into()).collect();
    let encoded: Vec<routing::xds::Encoded<'_>> = list
        .items
        .iter()
        .zip(&names)
        .zip(&payloads)
        .map(|((a, name), value)| routing::xds::Encoded {
            type_url: &a.type_url,
            name,
            value,
        })
        .collect();
    let before_memo = heap().live;
    let mut translator = routing::xds::Translator::new();
    let mut published = translator
        .translate(&encoded, &options)
        .map_err(rejections)?
        .snapshot;
    published.carry_over_state(&routing::Snapshot::empty());
    let published = Arc::new(published);
    translator.published(&published);
    let memo = (heap().live - before_memo) - live;
    if let Some(held) = std::env::var_os(EXIT_HELD_ENV) {
        // What is live now is what a heap profiler reports as leaked: the translator's memo and
        // its published snapshot (plus the probe's input), or with `memo` the memo alone.
        drop(snapshot);
        if held == "memo" {
            drop(published);
        }
        std::process::exit(0);
    }
    drop((translator, published, encoded));
    drop(names);
    if std::env::var_os(BREAKDOWN_ENV).is_some() {
        for (i, (now, then)) in by_class().into_iter().zip(classes).enumerate() {
            if now != then {
                println!(
                    "breakdown blocks of ≤{} B: {:.0} B/service",
                    1u64 << i,
                    (now - then) as f64 / services as f64
                );
            }
        }
        for (i, (now, then)) in super::heap::by_step().into_iter().zip(steps).enumerate() {
            if (now - then) as usize >= services / 2 {
                println!(
                    "breakdown step {}..{} B: {:.1} blocks/service",
                    i * 64,
                    i * 64 + 64,
                    (now - then) as f64 / services as f64
                );
            }
        }
        let parts = breakdown(&snapshot);
        for (part, bytes) in std::iter::once(("runtime registry", registry)).chain(parts) {
            println!(
                "breakdown {part}: {:.0} B/service",
                bytes as f64 / services as f64
            );
        }
    }
    println!(
        "probe services={services} decoded_kib={} first_kib={} snapshot_kib={} live_bytes={} allocs={} memo_bytes={}",
        decoded.saturating_sub(before),
        after_first.saturating_sub(decoded),
        after_second.saturating_sub(after_first),
        live.max(0),
        translated.allocs - decoded_heap.allocs,
        memo.max(0),
    );
    drop((snapshot, options, list, bytes));
    Ok(())
}

/// Set (to anything) to keep the probe child's input, for `xds_bench --probe-memory FILE` under
/// a heap profiler (`heaptrack`).
const KEEP_PROBE_ENV: &str = "XDS_BENCH_KEEP_PROBE";

/// Set (to anything) to have the probe child exit while the translator and the snapshot it
/// published are live, so that a heap profiler reports them as leaked, by call site; set to
/// `memo`, the snapshot is let go first and what is leaked is what the translator's memo holds.
const EXIT_HELD_ENV: &str = "XDS_BENCH_PROBE_EXIT_HELD";

/// Set (to anything) to have the probe child print where the snapshot's bytes go.
pub(super) const BREAKDOWN_ENV: &str = "XDS_BENCH_BREAKDOWN";

/// Live bytes held by `make`'s result.
fn held<T>(make: impl FnOnce() -> T) -> (T, i64) {
    let before = heap().live;
    let v = make();
    (v, heap().live - before)
}

/// Where a snapshot's live bytes go, by copies of its public parts (a copy holds about what the
/// original does; clusters, which have no `Clone`, are rebuilt from their parts).
fn breakdown(snapshot: &routing::Snapshot) -> Vec<(&'static str, i64)> {
    let (_s, services) = held(|| snapshot.services().cloned().collect::<Vec<_>>());
    let (_e, endpoints) = held(|| {
        snapshot
            .services()
            .map(|s| {
                snapshot
                    .endpoints(&s.hostname)
                    .iter()
                    .map(|e| Arc::new(routing::Endpoint::clone(e)))
                    .collect::<Vec<_>>()
            })
            .collect::<Vec<_>>()
    });
    let (_v, vs) = held(|| snapshot.virtual_services().to_vec());
    let (_d, dr) = held(|| {
        snapshot
            .destination_rules()
            .iter()
            .map(|d| (**d).clone())
            .collect::<Vec<_>>()
    });
    let (_c, clusters) = held(|| {
        snapshot
            .clusters()
            .into_iter()
            .map(|c| {
                let eps = c
                    .endpoints
                    .iter()
                    .map(|e| routing::ClusterEndpoint::new(e.endpoint.clone(), e.target().port()))
                    .collect();
                routing::Cluster::with_policy(
                    c.name.to_string(),
                    c.service_hostname.clone(),
                    c.port,
                    c.subset.as_deref().map(String::from),
                    (*c.policy).clone(),
                    eps,
                    Instant::now(),
                )
            })
            .collect::<Vec<_>>()
    });
    let (_p, policies) = held(|| {
        snapshot
            .clusters()
            .into_iter()
            .map(|c| c.policy.clone())
            .collect::<Vec<_>>()
    });
    vec![
        ("services", services),
        ("endpoints", endpoints),
        ("virtual services", vs),
        ("destination rules", dr),
        ("clusters (rebuilt, registry not included)", clusters),
        ("cluster policies", policies),
    ]
}

/// A `kB` line of `/proc/<pid>/status` (`self` by default).
pub(super) fn status_kib(key: &str) -> anyhow::Result<u64> {
    status_kib_of("self", key)
}

pub(super) fn status_kib_of(pid: &str, key: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no {key} in /proc/{pid}/status"))
}

pub(super) fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub(super) fn print_translation(rows: &[TranslateRow], endpoints: usize) {
    println!();
    println!("translation (services with {endpoints} endpoints, 3 clusters and 3 assignments each; medians):");
    println!(
        "{:>6} {:>6} {:>9} {:>7} {:>10} {:>12} {:>8} {:>11} {:>9} {:>10} {:>9} {:>11} {:>11} {:>11}",
        "N",
        "res",
        "enc MiB",
        "B/svc",
        "decode ms",
        "translate ms",
        "µs/svc",
        "decoded MiB",
        "snap MiB",
        "snap KiB/s",
        "1st MiB",
        "live KiB/s",
        "allocs/svc",
        "memo KiB/s"
    );
    for r in rows {
        let (decoded, snap, per, first, live, allocs, memo) = match r.memory {
            Some(m) => (
                format!("{:.1}", m.decoded as f64 / 1024.0),
                format!("{:.1}", m.snapshot as f64 / 1024.0),
                format!("{:.1}", m.snapshot as f64 / r.n as f64),
                format!("{:.1}", m.first as f64 / 1024.0),
                format!("{:.2}", m.live as f64 / 1024.0 / r.n as f64),
                format!("{:.0}", m.allocs as f64 / r.n as f64),
                format!("{:.2}", m.memo as f64 / 1024.0 / r.n as f64),
            ),
            None => {
                let d = || "-".to_string();
                (d(), d(), d(), d(), d(), d(), d())
            }
        };
        println!(
            "{:>6} {:>6} {:>9.2} {:>7} {:>10.1} {:>12.1} {:>8.1} {:>11} {:>9} {:>10} {:>9} {:>11} {:>11} {:>11}",
            r.n,
            r.resources,
            r.bytes as f64 / 1048576.0,
            r.bytes / r.n,
            ms(r.decode),
            ms(r.translate),
            r.translate.as_secs_f64() * 1e6 / r.n as f64,
            decoded,
            snap,
            per,
            first,
            live,
            allocs,
            memo,
        );
    }
    let Some(base) = rows.first() else { return };
    println!();
    println!("per service, vs N={} (1.00 = scales linearly):", base.n);
    println!(
        "{:>6} {:>12} {:>11} {:>13} {:>12}",
        "N", "translate×", "decode×", "bytes/svc×", "snap/svc×"
    );
    let per = |d: Duration, n: usize| d.as_secs_f64() / n as f64;
    for r in rows {
        let snap = match (r.memory, base.memory) {
            (Some(m), Some(b)) if b.snapshot > 0 => format!(
                "{:.2}",
                (m.snapshot as f64 / r.n as f64) / (b.snapshot as f64 / base.n as f64)
            ),
            _ => "-".into(),
        };
        println!(
            "{:>6} {:>12.2} {:>11.2} {:>13.2} {:>12}",
            r.n,
            per(r.translate, r.n) / per(base.translate, base.n),
            per(r.decode, r.n) / per(base.decode, base.n),
            (r.bytes as f64 / r.n as f64) / (base.bytes as f64 / base.n as f64),
            snap,
        );
    }
    println!();
    println!(
        "xds::Translator (what the waypoint runs; from the encoded resources, decode and carry-over included; alone: the EDS push read from its one assignment):"
    );
    println!(
        "{:>6} {:>11} {:>9} {:>9} {:>10} {:>10} {:>13} {:>13} {:>13} {:>10}",
        "N",
        "nothing ms",
        "same ms",
        "1 EDS ms",
        "alone ms",
        "1 route ms",
        "new svc: CDS",
        "+ EDS ms",
        "+ LDS ms",
        "1 EDS ÷ nothing"
    );
    for r in rows {
        println!(
            "{:>6} {:>11.1} {:>9.1} {:>9.1} {:>10.2} {:>10.1} {:>13.1} {:>13.1} {:>13.1} {:>10.2}",
            r.n,
            ms(r.memo[0]),
            ms(r.memo[1]),
            ms(r.memo[2]),
            ms(r.memo[7]),
            ms(r.memo[3]),
            ms(r.memo[4]),
            ms(r.memo[5]),
            ms(r.memo[6]),
            r.memo[2].as_secs_f64() / r.memo[0].as_secs_f64(),
        );
    }
    if rows.iter().any(|r| r.warnings > 0) {
        println!("(translation warnings were reported; see the notes above)");
    }
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
