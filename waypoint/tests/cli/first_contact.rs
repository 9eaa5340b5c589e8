//! What a new user meets first: the demo (its split table, its ports), commands writing to a
//! closed stdout, and the message when no config source is given.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::common::*;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The rows of the demo's own table: label → (configured %, requests).
fn demo_table(stdout: &str) -> HashMap<String, (u32, u64)> {
    let mut rows = HashMap::new();
    let table = stdout
        .split("\nsplit for ")
        .nth(1)
        .expect("a split table")
        .lines()
        .skip(2) // "<host>:" and the header
        .take_while(|l| !l.trim().is_empty());
    for line in table {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let weight = cols[1].trim_end_matches('%').parse().unwrap();
        rows.insert(cols[0].to_string(), (weight, cols[3].parse().unwrap()));
    }
    rows
}

/// The rows of the split audit the demo prints: destination host → (weight, requests).
fn audit_table(stdout: &str) -> HashMap<String, (u32, u64)> {
    let mut rows = HashMap::new();
    let audit = stdout
        .split("split audit (admin /splits):\n")
        .nth(1)
        .expect("the split audit");
    for line in audit.lines().skip(1).take_while(|l| !l.trim().is_empty()) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        // SERVICE ROUTE DESTINATION [subset=|port=] WEIGHT CONFIGURED OBSERVED REQUESTS WINDOW
        let n = cols.len();
        rows.insert(
            cols[2].to_string(),
            (cols[n - 5].parse().unwrap(), cols[n - 2].parse().unwrap()),
        );
    }
    rows
}

#[test]
fn demo_on_a_gateway_api_split_prints_the_same_split_as_the_audit() {
    let out = Command::new(binary())
        .args(["demo", "-n", "300", "--config"])
        .arg(repo().join("examples/bookinfo-httproute"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = demo_table(&stdout);
    let audit = audit_table(&stdout);
    assert_eq!(table.len(), 2, "{stdout}");
    assert_eq!(table["reviews-v1"].0, 90, "{stdout}");
    assert_eq!(table["reviews-v2"].0, 10, "{stdout}");
    for (label, (weight, requests)) in &table {
        let host = format!("{label}.default.svc.cluster.local");
        assert_eq!(
            audit.get(&host),
            Some(&(*weight, *requests)),
            "the demo's row {label} disagrees with /splits:\n{stdout}"
        );
    }
    assert_eq!(table.values().map(|(_, n)| n).sum::<u64>(), 300);
    // 300 draws at 10 %: more than none and fewer than a third, far outside chance otherwise.
    let v2 = table["reviews-v2"].1;
    assert!((1..100).contains(&v2), "{stdout}");
}

#[test]
fn demo_picks_a_free_hbone_port_when_15008_is_taken_and_names_the_flag() {
    // Whatever holds 127.0.10.1:15008 (this listener, or something else on the machine), the
    // default port is taken for the demo's first pod.
    let _held = std::net::TcpListener::bind("127.0.10.1:15008");
    // From an empty directory: the demo's config is in the binary (the image ships nothing else).
    let out = Command::new(binary())
        .args(["demo", "-n", "20"])
        .current_dir(temp_dir("demo-empty-cwd"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("port 15008 is taken on 127.0.10.1") && stdout.contains("--hbone-port"),
        "{stdout}"
    );
    assert!(stdout.contains("20 served, 0 failed"), "{stdout}");

    let out = Command::new(binary())
        .args(["demo", "-n", "20", "--hbone-port", "15008"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("--hbone-port 15008: cannot listen on 127.0.10.1:15008"),
        "{stderr}"
    );
}

/// Run `args` with a stdout whose reading end is already closed: every write fails with EPIPE.
fn run_with_closed_stdout(args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(binary())
        .args(args)
        .current_dir(repo())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The Gateway API example with its pods moved to 127.0.13.x, so that this demo runs beside the
/// other tests' demos.
fn httproute_example_elsewhere() -> PathBuf {
    let dir = temp_dir("httproute-elsewhere");
    for entry in std::fs::read_dir(repo().join("examples/bookinfo-httproute")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            dir.join(path.file_name().unwrap()),
            text.replace("127.0.11.", "127.0.13."),
        )
        .unwrap();
    }
    dir
}

#[test]
fn no_command_panics_on_a_closed_stdout() {
    let demo_config = httproute_example_elsewhere();
    let demo_config = demo_config.to_str().unwrap();
    let commands: &[&[&str]] = &[
        &["translate", "routing/tests/fixtures/xds/bookinfo.json"],
        &[
            "explain",
            "--config",
            "examples/bookinfo",
            "GET",
            "http://reviews:9080/",
        ],
        &[
            "manifest",
            "--namespace",
            "default",
            "--service-account",
            "waypoint",
        ],
        &["demo", "-n", "5", "--config", demo_config],
        &["validate", "examples/bookinfo"],
        &["--help"],
    ];
    for args in commands {
        let (code, stderr) = run_with_closed_stdout(args);
        assert!(
            !stderr.contains("panicked") && code == Some(0),
            "waypoint {args:?} with a closed stdout: exit {code:?}\n{stderr}"
        );
    }
}

#[test]
fn run_and_explain_without_config_name_every_source() {
    let out = Command::new(binary())
        .arg("run")
        .env_remove("WAYPOINT_CONFIG_DIR")
        .env_remove("XDS_ADDRESS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--config") && stderr.contains("--xds"),
        "{stderr}"
    );
    let out = Command::new(binary())
        .args(["explain", "GET", "http://reviews:9080/"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--config") && stderr.contains("--xds-dump"),
        "{stderr}"
    );
}
