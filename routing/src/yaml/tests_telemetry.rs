//! Telemetry documents bound to meshConfig providers: levels (root namespace, this waypoint's
//! namespace, targetRefs), inheritance, and what is left out with a warning.

use std::sync::Arc;
use std::time::Duration;

use super::mesh_config::MeshTelemetry;
use super::{check_str_with, LoadOptions, Report, WaypointRef};
use crate::telemetry::{
    AccessLogSink, Collector, CollectorProtocol, CustomTag, LogFormat, LogPath, TagValue,
    TelemetryConfig,
};

/// A meshConfig with an OTLP/gRPC, an OTLP/HTTP and a Zipkin tracer and a JSON file logger,
/// written as the `mesh` key of istiod's ConfigMap (istio/api `mesh/v1alpha1/config.proto`).
const MESH: &str = "\
accessLogEncoding: TEXT
defaultConfig:
  tracing: {sampling: 5}
extensionProviders:
- name: otel
  opentelemetry:
    service: opentelemetry-collector.observability.svc.cluster.local
    port: 4317
- name: otel-http
  opentelemetry:
    service: observability/otel.observability.svc.cluster.local
    port: 4318
    http:
      path: /v1/traces
      timeout: 2s
      headers: [{name: x-tenant, value: t1}]
- name: zipkin
  zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
- name: json-log
  envoyFileAccessLog:
    path: /dev/stdout
    logFormat:
      labels: {code: '%RESPONSE_CODE%', path: '%REQ(:PATH)%'}
- name: prometheus
  prometheus: {}
- name: authz
  envoyExtAuthzHttp: {service: authz.default.svc.cluster.local, port: 8000}
";

fn telemetry(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

fn load_with(mesh: &str, docs: &[String]) -> Report {
    let (mesh, warnings) = MeshTelemetry::parse(mesh).expect("meshConfig parses");
    assert!(warnings.is_empty(), "{warnings:?}");
    let mut options = LoadOptions::new("cluster.local");
    options.waypoint = WaypointRef {
        namespace: "bookinfo".into(),
        name: "waypoint".into(),
        root_namespace: "istio-system".into(),
    };
    options.mesh = Arc::new(mesh);
    let files: Vec<(String, String)> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| (format!("t{i}.yaml"), d.clone()))
        .collect();
    check_str_with(&files, &options)
}

fn config(r: &Report) -> TelemetryConfig {
    match &r.result {
        Ok(s) => (**s.telemetry()).clone(),
        Err(e) => panic!("{e}"),
    }
}

fn warnings(r: &Report) -> String {
    r.warnings
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn nothing_declared_leaves_the_process_defaults() {
    let r = load_with(MESH, &[]);
    let c = config(&r);
    assert!(c.is_default(), "{c:?}");
}

#[test]
fn levels_inherit_and_override() {
    let root = telemetry(
        "mesh-default",
        "istio-system",
        "  tracing:\n  - providers: [{name: otel}]\n    randomSamplingPercentage: 10\n    customTags:\n      team: {literal: {value: payments}}\n      node: {environment: {name: NODE_NAME, defaultValue: unknown}}\n  accessLogging:\n  - providers: [{name: envoy}]\n",
    );
    let ns = telemetry(
        "ns",
        "bookinfo",
        "  accessLogging:\n  - providers: [{name: envoy}, {name: json-log}]\n    filter: {expression: 'response.code >= 400'}\n  tracing:\n  - customTags:\n      tenant: {header: {name: X-Tenant, defaultValue: none}}\n",
    );
    let mine = telemetry(
        "mine",
        "bookinfo",
        "  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]\n  tracing:\n  - randomSamplingPercentage: 100\n    customTags:\n      team: {literal: {value: checkout}}\n",
    );
    let r = load_with(MESH, &[root, ns, mine]);
    let c = config(&r);
    assert_eq!(
        c.sources,
        [
            "Telemetry istio-system/mesh-default",
            "Telemetry bookinfo/ns",
            "Telemetry bookinfo/mine"
        ]
    );
    let filter = Some("response.code >= 400".to_string());
    assert_eq!(
        c.access_logs,
        Some(vec![
            AccessLogSink {
                provider: "envoy".into(),
                format: LogFormat::IstioText,
                filter: filter.clone(),
                path: LogPath::Stdout,
            },
            AccessLogSink {
                provider: "json-log".into(),
                format: LogFormat::Json(
                    r#"{"code":"%RESPONSE_CODE%","path":"%REQ(:PATH)%"}"#.into()
                ),
                filter,
                path: LogPath::Stdout,
            },
        ])
    );
    let t = c.tracing.expect("tracing on");
    assert_eq!(t.provider, "otel");
    assert_eq!(t.service_name, "waypoint.bookinfo");
    assert_eq!(t.sampling_percent, 100.0);
    assert_eq!(
        t.collector,
        Collector {
            protocol: CollectorProtocol::OtlpGrpc,
            host: "opentelemetry-collector.observability.svc.cluster.local".into(),
            port: 4317,
            path: String::new(),
            timeout: Duration::from_secs(10),
            headers: vec![],
        }
    );
    assert_eq!(
        t.custom_tags,
        [
            CustomTag {
                name: "node".into(),
                value: TagValue::Environment {
                    name: "NODE_NAME".into(),
                    default: Some("unknown".into())
                }
            },
            CustomTag {
                name: "team".into(),
                value: TagValue::Literal("checkout".into())
            },
            CustomTag {
                name: "tenant".into(),
                value: TagValue::RequestHeader {
                    name: "x-tenant".into(),
                    default: Some("none".into())
                }
            },
        ]
    );
    assert_eq!(t.max_tag_length, 256);
}

#[test]
fn mesh_defaults_apply_without_a_telemetry() {
    let mesh =
        format!("{MESH}accessLogFile: /dev/stderr\ndefaultProviders:\n  tracing: [zipkin]\n");
    let c = config(&load_with(&mesh, &[]));
    assert_eq!(
        c.access_logs
            .as_deref()
            .map(|l| (l[0].provider.as_str(), l[0].path)),
        Some(("envoy", LogPath::Stderr))
    );
    let t = c.tracing.expect("mesh default tracer");
    assert_eq!(t.collector.protocol, CollectorProtocol::Zipkin);
    assert_eq!(t.collector.path, "/api/v2/spans");
    assert_eq!(t.sampling_percent, 5.0, "defaultConfig.tracing.sampling");
    let http = format!("{MESH}defaultProviders:\n  tracing: [otel-http]\n");
    let t = config(&load_with(&http, &[])).tracing.unwrap();
    assert_eq!(t.collector.protocol, CollectorProtocol::OtlpHttp);
    assert_eq!(t.collector.host, "otel.observability.svc.cluster.local");
    assert_eq!(t.collector.timeout, Duration::from_secs(2));
    assert_eq!(t.collector.headers, [("x-tenant".into(), "t1".into())]);
}

#[test]
fn disabling_and_client_mode() {
    let off = telemetry(
        "off",
        "bookinfo",
        "  accessLogging:\n  - disabled: true\n  - match: {mode: CLIENT}\n    providers: [{name: json-log}]\n  tracing:\n  - providers: [{name: otel}]\n    disableSpanReporting: true\n",
    );
    let c = config(&load_with(MESH, &[off]));
    assert_eq!(c.access_logs, Some(vec![]), "switched off, not the default");
    assert_eq!(c.tracing, None);
}

#[test]
fn what_cannot_apply_is_left_out_with_a_warning_naming_it() {
    let other_ns = telemetry(
        "elsewhere",
        "shop",
        "  tracing: [{providers: [{name: otel}]}]\n",
    );
    let selector = telemetry(
        "sel",
        "bookinfo",
        "  selector: {matchLabels: {app: x}}\n  tracing: [{providers: [{name: otel}]}]\n",
    );
    let metrics_provider = telemetry(
        "root",
        "istio-system",
        "  tracing: [{providers: [{name: prometheus}]}]\n  accessLogging: [{providers: [{name: nope}, {name: envoy}]}]\n",
    );
    let r = load_with(MESH, &[other_ns, selector, metrics_provider]);
    let w = warnings(&r);
    assert!(
        w.contains("shop/elsewhere") && w.contains("not this waypoint's"),
        "{w}"
    );
    assert!(
        w.contains("bookinfo/sel") && w.contains("selects workloads"),
        "{w}"
    );
    assert!(
        w.contains("provider prometheus is a metrics provider"),
        "{w}"
    );
    assert!(w.contains("provider nope is not in meshConfig"), "{w}");
    let c = config(&r);
    assert_eq!(c.tracing, None);
    let logs = c.access_logs.unwrap();
    assert_eq!(logs.len(), 1, "the envoy provider still logs");
    assert_eq!(logs[0].provider, "envoy");
}

#[test]
fn malformed_telemetry_is_an_error_naming_the_field() {
    for (spec, field) in [
        (
            "  accessLogging: [{filter: {expression: 'response.code >='}}]\n",
            "spec.accessLogging[0].filter.expression",
        ),
        (
            "  tracing: [{randomSamplingPercentage: 120}]\n",
            "spec.tracing[0].randomSamplingPercentage",
        ),
        (
            "  tracing: [{customTags: {a: {literal: {value: x}, header: {name: y}}}}]\n",
            "spec.tracing[0].customTags.a",
        ),
    ] {
        let r = load_with(MESH, &[telemetry("bad", "bookinfo", spec)]);
        let e = r.result.expect_err(spec).to_string();
        assert!(e.contains("bookinfo/bad") && e.contains(field), "{e}");
    }
}

#[test]
fn mesh_config_errors_name_the_provider() {
    for (mesh, want) in [
        (
            "extensionProviders:\n- name: t\n  zipkin: {service: z}\n",
            "extensionProviders t",
        ),
        (
            "extensionProviders:\n- name: f\n  envoyFileAccessLog: {path: /var/log/x}\n",
            "extensionProviders f: path",
        ),
        ("accessLogEncoding: XML\n", "accessLogEncoding"),
    ] {
        let e = MeshTelemetry::parse(mesh).expect_err(mesh).to_string();
        assert!(e.contains(want), "{e}");
    }
}
