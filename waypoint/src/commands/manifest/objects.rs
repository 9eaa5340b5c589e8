//! The Kubernetes objects of `waypoint manifest`, as `serde_json` values.

use serde_json::{json, Value};

use super::*;
use crate::transport::hbone::HBONE_PORT;

/// Labels on every object, and the pod selector.
fn app_labels(name: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "waypoint",
        "app.kubernetes.io/instance": name,
    })
}

/// `app_labels` plus the version (object metadata only; selectors stay stable across releases).
fn object_labels(name: &str) -> Value {
    let mut labels = app_labels(name);
    labels["app.kubernetes.io/version"] = json!(env!("CARGO_PKG_VERSION"));
    labels
}

/// The Gateway API labels that tie an object to the Gateway `name` of class istio-waypoint.
fn gateway_labels(name: &str) -> Value {
    json!({
        "gateway.networking.k8s.io/gateway-name": name,
        "gateway.networking.k8s.io/gateway-class-name": WAYPOINT_CLASS,
    })
}

fn merged(parts: &[Value]) -> Value {
    let mut out = serde_json::Map::new();
    for part in parts {
        if let Value::Object(m) = part {
            out.extend(m.clone());
        }
    }
    Value::Object(out)
}

/// Pod labels: the selector, the Gateway API labels, and the labels with which Istio marks the
/// pods of its own waypoints (see docker/README.md, "Labels").
fn pod_labels(name: &str) -> Value {
    merged(&[
        app_labels(name),
        gateway_labels(name),
        json!({
            "gateway.istio.io/managed": MESH_CONTROLLER_LABEL,
            "istio.io/dataplane-mode": "none",
            "sidecar.istio.io/inject": "false",
            "service.istio.io/canonical-name": name,
            "service.istio.io/canonical-revision": "latest",
        }),
    ])
}

fn metadata(name: &str, args: &ManifestArgs, labels: Value) -> Value {
    json!({ "name": name, "namespace": args.namespace, "labels": labels })
}

fn env_value(name: &str, value: impl Into<Value>) -> Value {
    json!({ "name": name, "value": value.into() })
}

fn env_field(name: &str, field_path: &str) -> Value {
    json!({ "name": name, "valueFrom": { "fieldRef": { "fieldPath": field_path } } })
}

fn service_account(args: &ManifestArgs) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata(&args.service_account, args, object_labels(&args.name())),
    })
}

/// A syntactically valid files-mode config whose addresses (TEST-NET-1, RFC 5737) route
/// nowhere: the waypoint loads it and turns ready, and the operator replaces it.
pub fn placeholder_config(namespace: &str) -> String {
    format!(
        "# Placeholder: replace with the Istio resources this waypoint serves (ServiceEntry,
# WorkloadEntry, VirtualService, DestinationRule; see README.md \"Running on files\").
# 192.0.2.0/24 is a documentation range (RFC 5737): these addresses route nowhere.
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: example
  namespace: {namespace}
spec:
  hosts:
  - example.{namespace}.svc.cluster.local
  addresses:
  - 192.0.2.10
  ports:
  - number: 8080
    name: http
    protocol: HTTP
  resolution: STATIC
  endpoints:
  - address: 192.0.2.11
    serviceAccount: example
    labels:
      app: example
"
    )
}

fn config_map(args: &ManifestArgs) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(&args.config_map_name(), args, object_labels(&args.name())),
        "data": { CONFIG_KEY: placeholder_config(&args.namespace) },
    })
}

fn container(args: &ManifestArgs) -> Value {
    let cert = |file: &str| format!("{CERT_DIR}/{file}");
    json!({
        "name": "waypoint",
        "image": args.image,
        "imagePullPolicy": "IfNotPresent",
        "args": ["run"],
        "env": [
            env_value("WAYPOINT_CONFIG_DIR", CONFIG_DIR),
            env_value("WAYPOINT_CERT_CHAIN", cert(CERT_CHAIN_KEY)),
            env_value("WAYPOINT_KEY", cert(KEY_KEY)),
            env_value("WAYPOINT_TRUST_BUNDLE", cert(ROOT_CERT_KEY)),
            env_value("TRUST_DOMAIN", args.trust_domain.as_str()),
            env_value("WAYPOINT_DRAIN_SECONDS", args.drain_seconds.to_string()),
            env_value("CLUSTER_ID", args.cluster_id.as_str()),
            env_field("POD_NAME", "metadata.name"),
            env_field("POD_NAMESPACE", "metadata.namespace"),
            env_field("INSTANCE_IP", "status.podIP"),
            env_field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ],
        "ports": [
            { "name": "hbone", "containerPort": HBONE_PORT, "protocol": "TCP" },
            { "name": "metrics", "containerPort": STATS_PORT, "protocol": "TCP" },
            { "name": "status-port", "containerPort": HEALTH_PORT, "protocol": "TCP" },
        ],
        // As istiod's waypoint template (istio/istio
        // manifests/charts/istio-control/istio-discovery/files/waypoint.yaml): the startup
        // probe polls readiness every second for up to 30 s (identity and first config), then
        // the readiness probe takes over at its slower pace. No liveness probe, as there.
        "startupProbe": {
            "httpGet": { "path": READINESS_PATH, "port": HEALTH_PORT, "scheme": "HTTP" },
            "initialDelaySeconds": 1,
            "periodSeconds": 1,
            "timeoutSeconds": 1,
            "successThreshold": 1,
            "failureThreshold": 30,
        },
        "readinessProbe": {
            "httpGet": { "path": READINESS_PATH, "port": HEALTH_PORT, "scheme": "HTTP" },
            "initialDelaySeconds": 0,
            "periodSeconds": 15,
            "timeoutSeconds": 1,
            "successThreshold": 1,
            "failureThreshold": 4,
        },
        "resources": {
            "requests": { "cpu": CPU_REQUEST, "memory": MEMORY_REQUEST },
            "limits": { "cpu": CPU_LIMIT, "memory": MEMORY_LIMIT },
        },
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "privileged": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": { "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "volumeMounts": [
            { "name": "config", "mountPath": CONFIG_DIR, "readOnly": true },
            { "name": "certs", "mountPath": CERT_DIR, "readOnly": true },
        ],
    })
}

fn deployment(args: &ManifestArgs) -> Value {
    let name = args.name();
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(&name, args, merged(&[object_labels(&name), gateway_labels(&name)])),
        "spec": {
            "replicas": args.replicas,
            "selector": { "matchLabels": app_labels(&name) },
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": { "maxSurge": 1, "maxUnavailable": 0 },
            },
            "template": {
                "metadata": {
                    "labels": pod_labels(&name),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": STATS_PORT.to_string(),
                        "prometheus.io/path": METRICS_PATH,
                    },
                },
                "spec": {
                    "serviceAccountName": args.service_account,
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": args.termination_grace_period_seconds(),
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": RUN_AS,
                        "runAsGroup": RUN_AS,
                        "seccompProfile": { "type": "RuntimeDefault" },
                    },
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [{
                                "weight": 100,
                                "podAffinityTerm": {
                                    "topologyKey": "kubernetes.io/hostname",
                                    "labelSelector": { "matchLabels": app_labels(&name) },
                                },
                            }],
                        },
                    },
                    "containers": [container(args)],
                    "volumes": [
                        { "name": "config", "configMap": { "name": args.config_map_name() } },
                        { "name": "certs", "secret": { "secretName": args.cert_secret_name() } },
                    ],
                },
            },
        },
    })
}

fn service(args: &ManifestArgs) -> Value {
    let name = args.name();
    let mut meta = metadata(
        &name,
        args,
        merged(&[
            object_labels(&name),
            gateway_labels(&name),
            json!({ "gateway.istio.io/managed": MESH_CONTROLLER_LABEL }),
        ]),
    );
    meta["annotations"] = json!({ "networking.istio.io/traffic-distribution": "PreferClose" });
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "type": "ClusterIP",
            // As istiod's waypoint Service: both families where the cluster has them (the
            // waypoint listens on `0.0.0.0` and `[::]`).
            "ipFamilyPolicy": "PreferDualStack",
            "selector": app_labels(&name),
            "ports": [
                {
                    "name": "mesh",
                    "port": HBONE_PORT,
                    "targetPort": "hbone",
                    "protocol": "TCP",
                    "appProtocol": "hbone",
                },
                {
                    "name": "status-port",
                    "port": HEALTH_PORT,
                    "targetPort": "status-port",
                    "protocol": "TCP",
                    "appProtocol": "tcp",
                },
            ],
        },
    })
}

fn pod_disruption_budget(args: &ManifestArgs) -> Value {
    let name = args.name();
    json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(&name, args, object_labels(&name)),
        "spec": {
            "minAvailable": 1,
            "selector": { "matchLabels": app_labels(&name) },
        },
    })
}

fn horizontal_pod_autoscaler(args: &ManifestArgs) -> Value {
    let name = args.name();
    json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(&name, args, object_labels(&name)),
        "spec": {
            "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": name },
            "minReplicas": args.replicas,
            "maxReplicas": args.max_replicas(),
            "metrics": [{
                "type": "Resource",
                "resource": {
                    "name": "cpu",
                    "target": { "type": "Utilization", "averageUtilization": CPU_TARGET_PERCENT },
                },
            }],
        },
    })
}

/// The objects, in apply order: ServiceAccount, ConfigMap (unless `--no-config-map`),
/// Deployment, Service, PodDisruptionBudget, HorizontalPodAutoscaler. No RBAC: in files mode the
/// binary never calls the Kubernetes API (and the pods get no API token).
pub fn objects(args: &ManifestArgs) -> Result<Vec<Value>, InvalidInput> {
    args.validate()?;
    let mut out = vec![service_account(args)];
    if !args.no_config_map {
        out.push(config_map(args));
    }
    out.extend([
        deployment(args),
        service(args),
        pod_disruption_budget(args),
        horizontal_pod_autoscaler(args),
    ]);
    Ok(out)
}
