//! `config_bench`: what loading a large Istio YAML config costs — time and peak memory of
//! `routing::load_dir` for N ServiceEntries in one file, and the same N spread over several
//! files. A program that prints numbers, not a test; it asserts nothing about time.
//!
//! Each measurement runs in a fresh child process (this program with `--probe DIR`), so peak
//! RSS (`VmHWM`) is that one load's: `peak` is VmHWM after the load minus VmRSS before it.
//! `--emulate-padding` adds a row for the loader before issue 13: each document parsed from a
//! copy padded with as many newlines as precede it in the file, all copies held at once (built
//! here from the same file, then loaded as one file per document).
//!
//! ```sh
//! cargo run --release -p routing --example config_bench -- --services 8000 --files 1,50
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const USAGE: &str = "config_bench [--services N] [--files 1,50] [--runs R] [--emulate-padding]";

struct Args {
    services: usize,
    files: Vec<usize>,
    runs: usize,
    emulate_padding: bool,
}

fn parse_args() -> Result<Option<(String, PathBuf)>, String> {
    let mut args = std::env::args().skip(1);
    if let Some(first) = args.next() {
        if first == "--probe" || first == "--probe-padded" {
            let dir = args.next().ok_or(USAGE)?;
            return Ok(Some((first, PathBuf::from(dir))));
        }
    }
    Ok(None)
}

fn args() -> Result<Args, String> {
    let mut out = Args {
        services: 8000,
        files: vec![1, 50],
        runs: 3,
        emulate_padding: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| format!("{a} needs a value; {USAGE}"))
        };
        match a.as_str() {
            "--services" => out.services = value()?.parse().map_err(|e| format!("{e}"))?,
            "--runs" => out.runs = value()?.parse().map_err(|e| format!("{e}"))?,
            "--files" => {
                out.files = value()?
                    .split(',')
                    .map(|f| f.parse().map_err(|e| format!("--files: {e}")))
                    .collect::<Result<_, _>>()?
            }
            "--emulate-padding" => out.emulate_padding = true,
            _ => return Err(USAGE.to_string()),
        }
    }
    Ok(out)
}

/// ServiceEntry `i`: a VIP, an HTTP port and two inline endpoints (about 600 bytes).
fn service_entry(i: usize) -> String {
    let (a, b) = (i / 250, i % 250 + 1);
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: svc-{i}\n  \
         namespace: bench\n  labels:\n    app: svc-{i}\nspec:\n  hosts:\n  - svc-{i}.bench.svc.cluster.local\n  \
         addresses:\n  - 10.{a}.{b}.1\n  ports:\n  - number: 8080\n    name: http\n    protocol: HTTP\n    \
         targetPort: 9080\n  resolution: STATIC\n  location: MESH_INTERNAL\n  endpoints:\n  - address: \
         10.200.{a}.{b}\n    labels: {{app: svc-{i}, version: v1}}\n    serviceAccount: svc-{i}\n  - address: \
         10.201.{a}.{b}\n    labels: {{app: svc-{i}, version: v2}}\n    serviceAccount: svc-{i}\n"
    )
}

/// N ServiceEntries in `files` files under a fresh directory.
fn write_config(root: &Path, services: usize, files: usize) -> std::io::Result<(PathBuf, u64)> {
    let dir = root.join(format!("n{services}-f{files}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut bytes = 0;
    let per = services.div_ceil(files);
    for f in 0..files {
        let text: String = (f * per..((f + 1) * per).min(services))
            .map(service_entry)
            .collect();
        bytes += text.len() as u64;
        std::fs::write(dir.join(format!("services-{f:03}.yaml")), text)?;
    }
    Ok((dir, bytes))
}

/// A `kB` line of `/proc/self/status`.
fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// In the child: load `dir` once, print `probe ms=… peak_kib=… services=…`.
fn probe(mode: &str, dir: &Path) -> Result<(), String> {
    let before = status_kib("VmRSS");
    let started = Instant::now();
    let services = if mode == "--probe" {
        routing::load_dir(dir, "cluster.local")
            .map_err(|e| e.to_string())?
            .services()
            .count()
    } else {
        // The loader before issue 13: every document padded to its file line, all held.
        let mut padded = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| e.to_string())? {
            let path = entry.map_err(|e| e.to_string())?.path();
            let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
            let mut line = 0;
            for (n, doc) in text.split("---\n").enumerate().skip(1) {
                // The marker line becomes one more newline: the padding is inside the document
                // the parser reads, as it was.
                let mut t = "\n".repeat(line + 1);
                t.push_str(doc);
                line += 1 + doc.matches('\n').count();
                padded.push((format!("{}#{n}", path.display()), t));
            }
        }
        routing::load_str(&padded, "cluster.local")
            .map_err(|e| e.to_string())?
            .services()
            .count()
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let peak = status_kib("VmHWM").saturating_sub(before);
    println!("probe ms={ms:.1} peak_kib={peak} services={services}");
    Ok(())
}

fn run_probe(mode: &str, dir: &Path) -> Result<(f64, u64), String> {
    let out = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .arg(mode)
        .arg(dir)
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("probe "))
        .ok_or_else(|| format!("probe failed: {}", String::from_utf8_lossy(&out.stderr)))?;
    let field = |k: &str| {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(k)?.strip_prefix('='))
            .unwrap_or("0")
            .to_string()
    };
    Ok((
        field("ms").parse().unwrap_or(0.0),
        field("peak_kib").parse().unwrap_or(0),
    ))
}

fn main() -> Result<(), String> {
    if let Some((mode, dir)) = parse_args()? {
        return probe(&mode, &dir);
    }
    let args = args()?;
    let root = std::env::temp_dir().join(format!("config-bench-{}", std::process::id()));
    println!(
        "{} ServiceEntries, {} run(s) each, one fresh process per run (median time, max peak)",
        args.services, args.runs
    );
    println!(
        "{:>22} {:>6} {:>9} {:>10} {:>14}",
        "loader", "files", "MiB", "load ms", "peak RSS MiB"
    );
    let mut layouts: Vec<(&str, usize)> = args.files.iter().map(|f| ("--probe", *f)).collect();
    if args.emulate_padding {
        layouts.extend(args.files.iter().map(|f| ("--probe-padded", *f)));
    }
    for (mode, files) in layouts {
        let (dir, bytes) = write_config(&root, args.services, files).map_err(|e| e.to_string())?;
        let mut times = Vec::new();
        let mut peak = 0;
        for _ in 0..args.runs.max(1) {
            let (ms, kib) = run_probe(mode, &dir)?;
            times.push(ms);
            peak = peak.max(kib);
        }
        times.sort_by(f64::total_cmp);
        let label = if mode == "--probe" {
            "linear (now)"
        } else {
            "padded (before, emul.)"
        };
        println!(
            "{label:>22} {files:>6} {:>9.1} {:>10.0} {:>14.1}",
            bytes as f64 / (1 << 20) as f64,
            times[times.len() / 2],
            peak as f64 / 1024.0
        );
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
