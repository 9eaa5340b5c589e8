//! `waypoint manifest` (run as the real binary) and the files under `docker/`: every document is
//! a valid Kubernetes object of its kind with no field the API would drop, the objects fit
//! together (selectors, ports, volumes, names), the checked-in `docker/k8s/` manifests are the
//! command's output. The object checks are in `manifests_check.rs`, the Dockerfile's tests in
//! `docker.rs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use crate::manifests_check::*;

/// The example that `docker/k8s/` holds.
const EXAMPLE_SA: &str = "bookinfo-reviews";
const EXAMPLE_NS: &str = "bookinfo";

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_waypoint"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the waypoint crate sits in the workspace root")
        .to_path_buf()
}

fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("run the waypoint binary")
}

/// `waypoint manifest <args>`: stdout, which must have succeeded.
fn manifest_text(args: &[&str]) -> String {
    let mut all = vec!["manifest"];
    all.extend_from_slice(args);
    let out = run(&all);
    assert!(
        out.status.success(),
        "waypoint {all:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("YAML is UTF-8")
}

fn parse_documents(text: &str, origin: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("{origin}: not YAML: {e}"));
    assert!(!docs.is_empty(), "{origin}: no documents");
    for (i, d) in docs.iter().enumerate() {
        assert!(d.is_object(), "{origin} doc {i} is not a mapping: {d}");
    }
    docs
}
#[test]
fn default_manifests_are_valid_and_consistent() {
    let text = manifest_text(&["--service-account", "sa1", "--namespace", "ns1"]);
    let docs = parse_documents(&text, "default output");
    let kinds: Vec<&str> = docs.iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ConfigMap",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "HorizontalPodAutoscaler"
        ]
    );
    assert!(!text.contains("kind: Role"), "no RBAC in files mode");
    check(
        &objects(&docs, "default output"),
        &Expect::defaults("sa1", "ns1"),
        "default output",
    );
}

#[test]
fn non_default_flags_are_honoured() {
    let text = manifest_text(&[
        "--service-account",
        "reviews",
        "--namespace",
        "shop",
        "--image",
        "registry.example/waypoint:dev",
        "--replicas",
        "3",
        "--name",
        "reviews-l7",
        "--config-map",
        "reviews-routes",
        "--drain-seconds",
        "30",
        "--trust-domain",
        "example.org",
        "--cluster-id",
        "east",
    ]);
    let docs = parse_documents(&text, "custom output");
    let o = objects(&docs, "custom output");
    check(
        &o,
        &Expect {
            service_account: "reviews".into(),
            namespace: "shop".into(),
            name: "reviews-l7".into(),
            config_map: "reviews-routes".into(),
            image: "registry.example/waypoint:dev".into(),
            replicas: 3,
            drain_seconds: 30,
            config_map_printed: true,
        },
        "custom output",
    );
    let c = &o.deployment.spec.unwrap().template.spec.unwrap().containers[0];
    assert_eq!(env_of(c, "TRUST_DOMAIN"), Some("example.org"));
    assert_eq!(env_of(c, "CLUSTER_ID"), Some("east"));
    assert!(
        text.contains("spiffe://example.org/ns/shop/sa/reviews"),
        "{text}"
    );

    // More replicas than the HPA's usual ceiling, and no ConfigMap.
    let text = manifest_text(&[
        "--service-account",
        "reviews",
        "--namespace",
        "shop",
        "--replicas",
        "12",
        "--no-config-map",
    ]);
    let docs = parse_documents(&text, "--no-config-map output");
    let mut want = Expect::defaults("reviews", "shop");
    want.replicas = 12;
    want.config_map_printed = false;
    check(
        &objects(&docs, "--no-config-map output"),
        &want,
        "--no-config-map output",
    );
}

fn example_args() -> [&'static str; 4] {
    ["--service-account", EXAMPLE_SA, "--namespace", EXAMPLE_NS]
}

fn static_manifests() -> Vec<(PathBuf, String)> {
    let dir = repo_root().join("docker/k8s");
    let mut files: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML in {}", dir.display());
    files
}

#[test]
fn checked_in_manifests_are_the_command_output() {
    let generated = manifest_text(&example_args());
    let checked_in: String = static_manifests()
        .into_iter()
        .map(|(_, t)| t)
        .collect::<Vec<_>>()
        .concat();
    assert!(
        generated == checked_in,
        "docker/k8s/ differs from `waypoint manifest {}`; regenerate with\n  \
         cargo run -p waypoint -- manifest {} > docker/k8s/waypoint.yaml",
        example_args().join(" "),
        example_args().join(" "),
    );
}

#[test]
fn checked_in_manifests_are_valid_and_consistent() {
    let mut docs = Vec::new();
    for (path, text) in static_manifests() {
        docs.extend(parse_documents(&text, &path.display().to_string()));
    }
    check(
        &objects(&docs, "docker/k8s"),
        &Expect::defaults(EXAMPLE_SA, EXAMPLE_NS),
        "docker/k8s",
    );
}

/// Bad input exits 2 (as clap does for its own errors) and names the bad value.
#[test]
fn bad_input_exits_2_naming_the_value() {
    let long_sa = "a".repeat(60);
    let cases: [(&[&str], &str); 6] = [
        (
            &["--service-account", "Bad_SA", "--namespace", "ns"],
            "Bad_SA",
        ),
        (&["--service-account", "sa", "--namespace", "Shop"], "Shop"),
        (
            &[
                "--service-account",
                "sa",
                "--namespace",
                "ns",
                "--replicas",
                "0",
            ],
            "'0'",
        ),
        (
            &[
                "--service-account",
                "sa",
                "--namespace",
                "ns",
                "--image",
                "",
            ],
            "--image",
        ),
        (
            &["--service-account", &long_sa, "--namespace", "ns"],
            &long_sa,
        ),
        (
            &["--service-account", "9sa", "--namespace", "ns"],
            "9sa-waypoint",
        ),
    ];
    for (args, named) in cases {
        let mut all = vec!["manifest"];
        all.extend_from_slice(args);
        let out = run(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{all:?}: no YAML on bad input");
        assert!(
            stderr.contains(named),
            "{all:?}: {stderr:?} should name {named:?}"
        );
    }
}

/// The environment the Deployment sets is what `waypoint run` reads.
#[test]
fn deployment_env_is_read_by_run() {
    let help = run(&["run", "--help"]);
    let help = String::from_utf8_lossy(&help.stdout);
    let docs = parse_documents(&manifest_text(&example_args()), "example");
    let o = objects(&docs, "example");
    let c = &o.deployment.spec.unwrap().template.spec.unwrap().containers[0];
    let mut checked = 0;
    for e in c.env.as_deref().unwrap_or_default() {
        if e.value_from.is_some() {
            continue; // downward API, informational (see docker/README.md)
        }
        assert!(
            help.contains(&format!("[env: {}=", e.name)),
            "`waypoint run` has no flag for env {}:\n{help}",
            e.name
        );
        checked += 1;
    }
    assert!(checked >= 7, "{checked}");
}
