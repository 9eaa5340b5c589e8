//! Peak memory of loading a large config (issue 13 item 9): `waypoint validate` on one file of
//! 8 000 ServiceEntries, in its own process, its peak RSS read from the kernel (`wait4`'s
//! `ru_maxrss` of that one child). Time is not asserted (see docs/benchmarks.md for figures).

use std::process::{Command, Stdio};

use crate::common::*;

const SERVICES: usize = 8000;

/// The largest peak RSS, in KiB, the test binary's `waypoint` (a debug build) may reach
/// validating the file. Measured on the debug build, same file: 96–97 MiB before the snapshot's
/// per-port clusters were boxed and the parsed entries moved into it, 85 MiB after (a release
/// build: 69 → 58 MiB of load peak), both on glibc's allocator. On jemalloc (the binary's
/// allocator since the overload manager) the same debug validation peaks at 87.0–87.7 MiB: its
/// freed pages are returned after a decay, not at once. The bound sits between before and after.
const MAX_PEAK_KIB: i64 = 93 * 1024;

/// ServiceEntry `i` as `config_bench` writes it: a VIP, an HTTP port, two inline endpoints.
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

/// Runs `cmd` to its end; its exit code and peak RSS in KiB (of that child alone: `wait4` on its
/// pid, not `RUSAGE_CHILDREN`, which other tests' children would share).
fn run_measured(cmd: &mut Command) -> (i32, i64) {
    let child = cmd.spawn().unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain FFI call with valid pointers; the child is reaped here, `child` is only
    // dropped (never waited) afterwards.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    drop(child);
    assert!(
        libc::WIFEXITED(status),
        "waypoint did not exit: {status:#x}"
    );
    (libc::WEXITSTATUS(status), usage.ru_maxrss)
}

#[test]
fn validating_8000_service_entries_stays_within_the_memory_bound() {
    let dir = temp_dir("config-load-8000");
    let file = dir.join("services.yaml");
    let text: String = (0..SERVICES).map(service_entry).collect();
    std::fs::write(&file, &text).unwrap();
    let out = dir.join("out.txt");
    let (code, peak_kib) = run_measured(
        Command::new(binary())
            .arg("validate")
            .arg(&file)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null()),
    );
    let stdout = std::fs::read_to_string(&out).unwrap();
    assert_eq!(code, 0, "{stdout}");
    // Everything loaded: the bound is about the whole config, not a failed load.
    assert!(
        stdout.contains(&format!("valid ({SERVICES} services, 0 warnings)")),
        "{stdout}"
    );
    eprintln!("validate {SERVICES} ServiceEntries: peak RSS {peak_kib} KiB");
    assert!(
        peak_kib <= MAX_PEAK_KIB,
        "peak RSS {peak_kib} KiB over the bound of {MAX_PEAK_KIB} KiB"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
