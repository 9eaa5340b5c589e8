//! Checks of `waypoint manifest` output as typed Kubernetes objects: no field the API would drop,
//! and objects that fit together (selectors, ports, volumes, names, environment).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Where `a` and `b` differ, as JSON paths (a key only one side has, or different values).
pub(crate) fn differences(a: &Value, b: &Value, path: &str, out: &mut Vec<String>) {
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
pub(crate) fn typed<T: DeserializeOwned + Serialize>(doc: &Value, origin: &str) -> T {
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

pub(crate) fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or("<no kind>")
}

/// The documents as typed objects (exactly one of each kind, ConfigMap optional).
pub(crate) struct Objects {
    pub(crate) service_account: ServiceAccount,
    pub(crate) config_map: Option<ConfigMap>,
    pub(crate) deployment: Deployment,
    pub(crate) service: Service,
    pub(crate) pdb: PodDisruptionBudget,
    pub(crate) hpa: HorizontalPodAutoscaler,
}

pub(crate) fn one<T>(found: &mut Option<T>, value: T, origin: &str, kind: &str) {
    assert!(found.is_none(), "{origin}: more than one {kind}");
    *found = Some(value);
}

pub(crate) fn objects(docs: &[Value], origin: &str) -> Objects {
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
pub(crate) struct Expect {
    pub(crate) service_account: String,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) config_map: String,
    pub(crate) image: String,
    pub(crate) replicas: i32,
    pub(crate) drain_seconds: i64,
    pub(crate) config_map_printed: bool,
}

impl Expect {
    pub(crate) fn defaults(sa: &str, ns: &str) -> Self {
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

pub(crate) fn subset(small: &BTreeMap<String, String>, big: &BTreeMap<String, String>) -> bool {
    small.iter().all(|(k, v)| big.get(k) == Some(v))
}

pub(crate) fn env_of<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .as_deref()?
        .iter()
        .find(|e| e.name == name)?
        .value
        .as_deref()
}

/// A probe or Service port (number or name) that some container port answers to.
pub(crate) fn names_container_port(port: &IntOrString, spec: &PodSpec) -> bool {
    spec.containers
        .iter()
        .flat_map(|c| c.ports.as_deref().unwrap_or_default())
        .any(|p| match port {
            IntOrString::Int(n) => p.container_port == *n,
            IntOrString::String(s) => p.name.as_deref() == Some(s.as_str()),
        })
}

pub(crate) fn check(o: &Objects, want: &Expect, origin: &str) {
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
    // istiod's waypoint template: a startup probe on readiness, every second for 30 s, then
    // readiness every 15 s (4 failures).
    let startup = c.startup_probe.as_ref().expect("startup probe");
    assert_eq!(
        startup.http_get, readiness.http_get,
        "{origin}: startup probes readiness"
    );
    assert_eq!(
        (startup.period_seconds, startup.failure_threshold),
        (Some(1), Some(30)),
        "{origin}: startup probe"
    );
    assert_eq!(
        (readiness.period_seconds, readiness.failure_threshold),
        (Some(15), Some(4)),
        "{origin}: readiness probe"
    );
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
    assert_eq!(
        sspec.ip_family_policy.as_deref(),
        Some("PreferDualStack"),
        "{origin}: as istiod's waypoint Service"
    );
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
