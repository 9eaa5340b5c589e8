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
//! `load ms` is wall time; `CPU ms` is the child's user + system time over the load (from
//! `/proc/self/stat`, 10 ms ticks). A large load parses its documents on one thread per
//! available core; `--one-core` adds a row per layout whose child runs under `taskset -c 0`
//! (one core available, so one parsing thread): the serial cost on the same binary.
//!
//! ```sh
//! cargo run --release -p routing --example config_bench -- --services 8000 --files 1,50 --one-core
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const USAGE: &str =
    "config_bench [--services N] [--files 1,50] [--runs R] [--emulate-padding] [--one-core]";

struct Args {
    services: usize,
    files: Vec<usize>,
    runs: usize,
    emulate_padding: bool,
    one_core: bool,
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
        one_core: false,
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
            "--one-core" => out.one_core = true,
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

/// This process's user + system CPU time in ms (`/proc/self/stat`, fields 14 and 15, at the
/// usual 100 ticks per second).
fn cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum::<u64>() as f64 * 10.0
}

/// In the child: load `dir` once, print `probe ms=… cpu_ms=… peak_kib=… services=…`.
fn probe(mode: &str, dir: &Path) -> Result<(), String> {
    let before = status_kib("VmRSS");
    let cpu_before = cpu_ms();
    let started = Instant::now();
    // The snapshot is kept until the clock is read: a load ends with a snapshot to serve, and
    // dropping 8,000 services (about 8 % of the time) is not part of it.
    let snapshot = if mode == "--probe" {
        routing::load_dir(dir, "cluster.local").map_err(|e| e.to_string())?
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
        routing::load_str(&padded, "cluster.local").map_err(|e| e.to_string())?
    };
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let services = snapshot.services().count();
    let cpu = cpu_ms() - cpu_before;
    let peak = status_kib("VmHWM").saturating_sub(before);
    println!("probe ms={ms:.1} cpu_ms={cpu:.0} peak_kib={peak} services={services}");
    Ok(())
}

/// One child load: (wall ms, CPU ms, peak KiB).
fn run_probe(mode: &str, dir: &Path, one_core: bool) -> Result<(f64, f64, u64), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut cmd = if one_core {
        let mut c = Command::new("taskset");
        c.args(["-c", "0"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    let out = cmd
        .arg(mode)
        .arg(dir)
        .output()
        .map_err(|e| format!("{e} (--one-core needs taskset)"))?;
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
        field("cpu_ms").parse().unwrap_or(0.0),
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
        "{:>22} {:>6} {:>9} {:>10} {:>8} {:>14}",
        "loader", "files", "MiB", "load ms", "CPU ms", "peak RSS MiB"
    );
    let mut layouts: Vec<(&str, usize, bool)> = Vec::new();
    for &f in &args.files {
        layouts.push(("--probe", f, false));
        if args.one_core {
            layouts.push(("--probe", f, true));
        }
    }
    if args.emulate_padding {
        layouts.extend(args.files.iter().map(|f| ("--probe-padded", *f, false)));
    }
    for (mode, files, one_core) in layouts {
        let (dir, bytes) = write_config(&root, args.services, files).map_err(|e| e.to_string())?;
        let (mut times, mut cpus) = (Vec::new(), Vec::new());
        let mut peak = 0;
        for _ in 0..args.runs.max(1) {
            let (ms, cpu, kib) = run_probe(mode, &dir, one_core)?;
            times.push(ms);
            cpus.push(cpu);
            peak = peak.max(kib);
        }
        times.sort_by(f64::total_cmp);
        cpus.sort_by(f64::total_cmp);
        let label = match (mode, one_core) {
            ("--probe", false) => "linear (now)",
            ("--probe", true) => "linear, one core",
            _ => "padded (before, emul.)",
        };
        println!(
            "{label:>22} {files:>6} {:>9.1} {:>10.0} {:>8.0} {:>14.1}",
            bytes as f64 / (1 << 20) as f64,
            times[times.len() / 2],
            cpus[cpus.len() / 2],
            peak as f64 / 1024.0
        );
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
