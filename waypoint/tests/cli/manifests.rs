//! `waypoint manifest` (run as the real binary) and the files under `docker/`: every document is
//! a valid Kubernetes object of its kind with no field the API would drop, the objects fit
//! together (selectors, ports, volumes, names), the checked-in `docker/k8s/` manifests are the
//! command's output. The Dockerfile's tests are in `docker.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

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

/// Where `a` and `b` differ, as JSON paths (a key only one side has, or different values).
fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) => differences(v, w, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k} dropped")),
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                out.push(format!("{path}.{k} added"));
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                differences(v, w, &format!("{path}[{i}]"), out);
            }
        }
        _ if a == b => {}
        _ => out.push(format!("{path}: {a} became {b}")),
    }
}

/// Deserializes into the k8s-openapi type and back, and fails on any difference: k8s-openapi
/// ignores unknown fields, so a misspelt or misplaced field shows up as "dropped".
fn typed<T: DeserializeOwned + Serialize>(doc: &Value, origin: &str) -> T {
    let object: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{origin}: not a valid {}: {e}", kind(doc)));
    let back = serde_json::to_value(&object).expect("k8s-openapi types serialize");
    let mut diffs = Vec::new();
    differences(doc, &back, "", &mut diffs);
    assert!(
        diffs.is_empty(),
        "{origin}: {} fields not in the Kubernetes schema (or changed): {diffs:#?}",
        kind(doc)
    );
    object
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("<no kind>")
}

/// The documents as typed objects (exactly one of each kind, ConfigMap optional).
struct Objects {
    service_account: ServiceAccount,
    config_map: Option<ConfigMap>,
    deployment: Deployment,
    service: Service,
    pdb: PodDisruptionBudget,
    hpa: HorizontalPodAutoscaler,
}

fn one<T>(found: &mut Option<T>, value: T, origin: &str, kind: &str) {
    assert!(found.is_none(), "{origin}: more than one {kind}");
    *found = Some(value);
}

fn objects(docs: &[Value], origin: &str) -> Objects {
    let (mut sa, mut cm, mut deploy, mut svc, mut pdb, mut hpa) =
        (None, None, None, None, None, None);
    for (i, doc) in docs.iter().enumerate() {
        let at = format!("{origin} doc {i}");
        match (doc["apiVersion"].as_str(), kind(doc)) {
            (Some("v1"), "ServiceAccount") => one(&mut sa, typed(doc, &at), &at, "ServiceAccount"),
            (Some("v1"), "ConfigMap") => one(&mut cm, typed(doc, &at), &at, "ConfigMap"),
            (Some("apps/v1"), "Deployment") => one(&mut deploy, typed(doc, &at), &at, "Deployment"),
            (Some("v1"), "Service") => one(&mut svc, typed(doc, &at), &at, "Service"),
            (Some("policy/v1"), "PodDisruptionBudget") => {
                one(&mut pdb, typed(doc, &at), &at, "PodDisruptionBudget")
            }
            (Some("autoscaling/v2"), "HorizontalPodAutoscaler") => {
                one(&mut hpa, typed(doc, &at), &at, "HorizontalPodAutoscaler")
            }
            (v, k) => panic!("{at}: unexpected object {v:?} {k}"),
        }
    }
    let missing = |k: &str| format!("{origin}: no {k}");
    Objects {
        service_account: sa.unwrap_or_else(|| panic!("{}", missing("ServiceAccount"))),
        config_map: cm,
        deployment: deploy.unwrap_or_else(|| panic!("{}", missing("Deployment"))),
        service: svc.unwrap_or_else(|| panic!("{}", missing("Service"))),
        pdb: pdb.unwrap_or_else(|| panic!("{}", missing("PodDisruptionBudget"))),
        hpa: hpa.unwrap_or_else(|| panic!("{}", missing("HorizontalPodAutoscaler"))),
    }
}

/// What a given command line should have produced.
struct Expect {
    service_account: String,
    namespace: String,
    name: String,
    config_map: String,
    image: String,
    replicas: i32,
    drain_seconds: i64,
    config_map_printed: bool,
}

impl Expect {
    fn defaults(sa: &str, ns: &str) -> Self {
        Self {
            service_account: sa.into(),
            namespace: ns.into(),
            name: format!("{sa}-waypoint"),
            config_map: format!("{sa}-waypoint-config"),
            image: format!(
                "ghcr.io/waypoint-dev/waypoint:{}",
                env!("CARGO_PKG_VERSION")
            ),
            replicas: 2,
            drain_seconds: 10,
            config_map_printed: true,
        }
    }
}

fn subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

fn env_of<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .as_deref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .as_deref()
}

/// A probe or Service port (number or name) that some container port answers to.
fn names_container_port(port: &IntOrString, spec: &PodSpec) -> bool {
    spec.containers
        .iter()
        .flat_map(|c| c.ports.as_deref().unwrap_or_default())
        .any(|p| match port {
            IntOrString::Int(n) => p.container_port == *n,
            IntOrString::String(s) => p.name.as_deref() == Some(s.as_str()),
        })
}

fn check(o: &Objects, want: &Expect, origin: &str) {
    let ns = Some(want.namespace.as_str());
    for (k, meta) in [
        ("ServiceAccount", &o.service_account.metadata),
        ("Deployment", &o.deployment.metadata),
        ("Service", &o.service.metadata),
        ("PodDisruptionBudget", &o.pdb.metadata),
        ("HorizontalPodAutoscaler", &o.hpa.metadata),
    ] {
        assert_eq!(meta.namespace.as_deref(), ns, "{origin}: {k} namespace");
    }
    assert_eq!(
        o.service_account.metadata.name.as_deref(),
        Some(want.service_account.as_str())
    );
    let name = Some(want.name.as_str());
    assert_eq!(o.deployment.metadata.name.as_deref(), name, "{origin}");
    assert_eq!(o.service.metadata.name.as_deref(), name, "{origin}");

    // Deployment: selector ⊆ pod labels, replicas, service account.
    let dspec = o.deployment.spec.as_ref().expect("Deployment spec");
    let selector = dspec.selector.match_labels.clone().unwrap_or_default();
    assert!(!selector.is_empty(), "{origin}: empty Deployment selector");
    assert!(dspec.selector.match_expressions.is_none());
    let template_meta = dspec.template.metadata.as_ref().expect("pod metadata");
    let pod_labels = template_meta.labels.clone().unwrap_or_default();
    assert!(
        subset(&selector, &pod_labels),
        "{origin}: Deployment selector {selector:?} does not match pod labels {pod_labels:?}"
    );
    assert_eq!(dspec.replicas, Some(want.replicas), "{origin}: replicas");
    let pod = dspec.template.spec.as_ref().expect("pod spec");
    assert_eq!(
        pod.service_account_name.as_deref(),
        o.service_account.metadata.name.as_deref(),
        "{origin}: pods run as the ServiceAccount of the manifests"
    );
    assert_eq!(pod.automount_service_account_token, Some(false));

    // Istio: not captured by ztunnel, no sidecar, recognised as a waypoint, tied to the Gateway.
    for (k, v) in [
        ("istio.io/dataplane-mode", "none"),
        ("sidecar.istio.io/inject", "false"),
        ("gateway.istio.io/managed", "istio.io-mesh-controller"),
        ("gateway.networking.k8s.io/gateway-name", want.name.as_str()),
        ("service.istio.io/canonical-name", want.name.as_str()),
    ] {
        assert_eq!(
            pod_labels.get(k).map(String::as_str),
            Some(v),
            "{origin}: {k}"
        );
    }
    let annotations = template_meta.annotations.clone().unwrap_or_default();
    for (k, v) in [
        ("prometheus.io/scrape", "true"),
        ("prometheus.io/port", "15020"),
        ("prometheus.io/path", "/stats/prometheus"),
    ] {
        assert_eq!(
            annotations.get(k).map(String::as_str),
            Some(v),
            "{origin}: {k}"
        );
    }

    // The container: image, ports, probes, security, drain.
    assert_eq!(pod.containers.len(), 1, "{origin}: one container");
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(want.image.as_str()),
        "{origin}: image"
    );
    assert_eq!(c.args.as_deref(), Some(&["run".to_string()][..]));
    let ports: BTreeMap<i32, Option<String>> = c
        .ports
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|p| (p.container_port, p.name.clone()))
        .collect();
    for p in [15008, 15020, 15021] {
        assert!(ports.contains_key(&p), "{origin}: container port {p}");
    }
    let readiness = c.readiness_probe.as_ref().expect("readiness probe");
    let http = readiness.http_get.as_ref().expect("readiness is httpGet");
    assert_eq!(http.path.as_deref(), Some("/healthz/ready"));
    assert_eq!(http.port, IntOrString::Int(15021));
    for (what, probe) in [
        ("readiness", &c.readiness_probe),
        ("liveness", &c.liveness_probe),
        ("startup", &c.startup_probe),
    ] {
        let Some(probe) = probe else { continue };
        let port = probe
            .http_get
            .as_ref()
            .map(|h| &h.port)
            .or(probe.tcp_socket.as_ref().map(|t| &t.port))
            .unwrap_or_else(|| panic!("{origin}: {what} probe without a port"));
        assert!(
            names_container_port(port, pod),
            "{origin}: {what} probe port {port:?} is no container port"
        );
    }
    let sc = c
        .security_context
        .as_ref()
        .expect("container securityContext");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(65532));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(
        sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    let resources = c.resources.as_ref().expect("resources");
    assert!(resources
        .requests
        .as_ref()
        .is_some_and(|r| r.contains_key("cpu")));
    assert!(resources
        .limits
        .as_ref()
        .is_some_and(|r| r.contains_key("memory")));

    let drain: i64 = env_of(c, "WAYPOINT_DRAIN_SECONDS")
        .expect("WAYPOINT_DRAIN_SECONDS")
        .parse()
        .expect("a number");
    assert_eq!(drain, want.drain_seconds, "{origin}: drain seconds");
    let grace = pod
        .termination_grace_period_seconds
        .expect("terminationGracePeriodSeconds");
    assert!(grace > drain, "{origin}: grace {grace} <= drain {drain}");
    assert_eq!(grace, drain + 5, "{origin}: grace is drain + 5");

    // Volumes: every mount has a volume; config and certs where the env points.
    let volumes = pod.volumes.as_deref().unwrap_or_default();
    let mounts = c.volume_mounts.as_deref().unwrap_or_default();
    for m in mounts {
        assert!(
            volumes.iter().any(|v| v.name == m.name),
            "{origin}: mount {} has no volume",
            m.name
        );
    }
    let mount_of = |path: &str| {
        mounts
            .iter()
            .find(|m| path.starts_with(&m.mount_path))
            .unwrap_or_else(|| panic!("{origin}: {path} is on no mount"))
    };
    let volume_of = |m: &str| volumes.iter().find(|v| v.name == m).unwrap();
    let config_dir = env_of(c, "WAYPOINT_CONFIG_DIR").expect("WAYPOINT_CONFIG_DIR");
    let config_volume = volume_of(&mount_of(config_dir).name);
    assert_eq!(
        config_volume.config_map.as_ref().map(|c| c.name.as_str()),
        Some(want.config_map.as_str()),
        "{origin}: config volume"
    );
    let secret = format!("{}-waypoint-certs", want.service_account);
    for var in [
        "WAYPOINT_CERT_CHAIN",
        "WAYPOINT_KEY",
        "WAYPOINT_TRUST_BUNDLE",
    ] {
        let path = env_of(c, var).unwrap_or_else(|| panic!("{origin}: no {var}"));
        let m = mount_of(path);
        assert_eq!(m.read_only, Some(true), "{origin}: {var} mount read-only");
        let v = volume_of(&m.name);
        assert_eq!(
            v.secret.as_ref().and_then(|s| s.secret_name.as_deref()),
            Some(secret.as_str()),
            "{origin}: {var} comes from the Secret"
        );
    }
    match (&o.config_map, want.config_map_printed) {
        (Some(cm), true) => {
            assert_eq!(cm.metadata.name.as_deref(), Some(want.config_map.as_str()));
            assert_eq!(cm.metadata.namespace.as_deref(), ns);
            let data = cm.data.as_ref().expect("ConfigMap data");
            assert!(data.keys().all(|k| k.ends_with(".yaml")), "{origin}");
        }
        (None, false) => {}
        (cm, printed) => panic!("{origin}: ConfigMap {cm:?}, expected printed={printed}"),
    }

    // Service: selects the pods; its ports reach container ports; HBONE is `mesh`.
    let sspec = o.service.spec.as_ref().expect("Service spec");
    assert_eq!(sspec.type_.as_deref(), Some("ClusterIP"));
    let ssel = sspec.selector.clone().unwrap_or_default();
    assert!(!ssel.is_empty(), "{origin}: empty Service selector");
    assert!(subset(&ssel, &pod_labels), "{origin}: Service selector");
    let sports = sspec.ports.as_deref().unwrap_or_default();
    for p in sports {
        let target = p.target_port.clone().unwrap_or(IntOrString::Int(p.port));
        assert!(
            names_container_port(&target, pod),
            "{origin}: Service port {:?} targets {target:?}, no container port",
            p.name
        );
    }
    let mesh = sports
        .iter()
        .find(|p| p.port == 15008)
        .expect("Service port 15008");
    assert_eq!(mesh.name.as_deref(), Some("mesh"));
    assert_eq!(mesh.app_protocol.as_deref(), Some("hbone"));
    let slabels = o.service.metadata.labels.clone().unwrap_or_default();
    assert_eq!(
        slabels.get("gateway.istio.io/managed").map(String::as_str),
        Some("istio.io-mesh-controller")
    );

    // PDB and HPA target this Deployment's pods.
    let pspec = o.pdb.spec.as_ref().expect("PDB spec");
    assert_eq!(pspec.min_available, Some(IntOrString::Int(1)));
    let psel = pspec
        .selector
        .as_ref()
        .and_then(|s| s.match_labels.clone())
        .unwrap_or_default();
    assert!(
        !psel.is_empty() && subset(&psel, &pod_labels),
        "{origin}: PDB selector"
    );
    let hspec = o.hpa.spec.as_ref().expect("HPA spec");
    assert_eq!(hspec.scale_target_ref.kind, "Deployment");
    assert_eq!(
        hspec.scale_target_ref.api_version.as_deref(),
        Some("apps/v1")
    );
    assert_eq!(hspec.scale_target_ref.name, want.name);
    assert_eq!(hspec.min_replicas, Some(want.replicas), "{origin}: HPA min");
    assert_eq!(
        hspec.max_replicas,
        want.replicas.max(10),
        "{origin}: HPA max"
    );
    let metric = &hspec.metrics.as_deref().unwrap_or_default()[0];
    assert_eq!(metric.type_, "Resource");
    assert_eq!(
        metric.resource.as_ref().map(|r| r.name.as_str()),
        Some("cpu")
    );
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
