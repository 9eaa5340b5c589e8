//! The connection managers' `access_log` and `tracing` as istiod writes them (fixture
//! `telemetry_1_27.json`, Istio 1.27.9; its `about` cites the sources) → the snapshot's
//! `TelemetryConfig`. The fixture's `variants` are other shapes of the same fields (OTLP/HTTP,
//! Zipkin 1.27 and 1.29+, Datadog, no provider, an OpenTelemetry access-log service), each with
//! its `_source`; the tests put them into every HTTP connection manager, or into one chain for
//! a Telemetry attached to one service.

use prost::Message;
use routing::telemetry::{
    AccessLogSink, Collector, CollectorProtocol, CustomTag, LogFormat, LogPath, TagValue,
    TelemetryConfig, Tracing,
};
use routing::xds::{
    self, json::load_resources, Encoded, TranslateOptions, Translation, Translator,
};
use serde_json::Value;
use std::time::Duration;

const FIXTURE: &str = "telemetry_1_27.json";
const WEB_CHAIN: &str = "inbound-vip|8080|http|web.default.svc.cluster.local";

fn fixture() -> Value {
    let path = format!(
        "{}/tests/fixtures/xds/{FIXTURE}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap()
}

fn translate(doc: &Value) -> Translation {
    let res = load_resources(&doc.to_string()).unwrap();
    match xds::translate(&res, &TranslateOptions::default()) {
        Ok(t) => t,
        Err(r) => panic!("rejected: {r:?}"),
    }
}

/// The connection managers of `main_internal`'s HTTP chains, with their chain's name.
fn hcms(doc: &mut Value) -> Vec<(String, &mut Value)> {
    let l = doc["resources"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["name"] == "main_internal")
        .unwrap();
    let mut out = Vec::new();
    for c in l["filterChains"].as_array_mut().unwrap() {
        let name = c["name"].as_str().unwrap().to_string();
        for f in c["filters"].as_array_mut().unwrap() {
            if f["name"] == "envoy.filters.network.http_connection_manager" {
                out.push((name.clone(), &mut f["typedConfig"]));
            }
        }
    }
    out
}

/// The fixture with `field` of the HTTP connection managers `chains` accepts set to variant
/// `variant`'s (`None`: removed).
fn with(variant: Option<&str>, field: &str, chains: impl Fn(&str) -> bool) -> Value {
    let mut doc = fixture();
    let value = variant.map(|v| doc["variants"][v][field].clone());
    if let Some(v) = &value {
        assert!(!v.is_null(), "variant {variant:?} has no {field}");
    }
    for (chain, hcm) in hcms(&mut doc) {
        if !chains(&chain) {
            continue;
        }
        let m = hcm.as_object_mut().unwrap();
        match &value {
            Some(v) => m.insert(field.to_string(), v.clone()),
            None => m.remove(field),
        };
    }
    doc
}

/// The warnings other than those every fixture without identities has.
fn warnings(t: &Translation) -> Vec<String> {
    t.warnings
        .iter()
        .filter(|w| !w.message.contains("without a known identity"))
        .map(|w| w.to_string())
        .collect()
}

/// istiod's dry-run authorization tags (request metadata), written whenever Istio tags are on.
const DRY_RUN_WARNING: &str = "custom tags [\"istio.authorization.dry_run.allow_policy.name\", \
    \"istio.authorization.dry_run.allow_policy.result\", \
    \"istio.authorization.dry_run.deny_policy.name\", \
    \"istio.authorization.dry_run.deny_policy.result\"] read request metadata";

fn literal(name: &str, value: &str) -> CustomTag {
    CustomTag {
        name: name.into(),
        value: TagValue::Literal(value.into()),
    }
}

/// `buildServiceTags` of the fixture's waypoint, then the Telemetry's tags, sorted by name.
fn istio_and_telemetry_tags() -> Vec<CustomTag> {
    vec![
        literal("istio.canonical_revision", "latest"),
        literal("istio.canonical_service", "waypoint"),
        literal("istio.cluster_id", "Kubernetes"),
        literal("istio.mesh_id", "example.org"),
        literal("istio.namespace", "default"),
        CustomTag {
            name: "pod".into(),
            value: TagValue::Environment {
                name: "POD_NAME".into(),
                default: Some("unknown-pod".into()),
            },
        },
        literal("team", "platform"),
        CustomTag {
            name: "tenant".into(),
            value: TagValue::RequestHeader {
                name: "x-tenant".into(),
                default: Some("none".into()),
            },
        },
    ]
}

/// The built-in `envoy` provider: meshConfig's text format (`EnvoyTextLogFormat`) on stdout.
fn envoy_text_sink() -> AccessLogSink {
    const ISTIO_TEXT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% \
        %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% \
        %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% \
        %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \
        \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" \
        %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% \
        %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";
    AccessLogSink {
        provider: "envoy.access_loggers.file".into(),
        format: LogFormat::Text(ISTIO_TEXT.into()),
        filter: None,
        path: LogPath::Stdout,
    }
}

fn otel_grpc_tracing() -> Tracing {
    Tracing {
        provider: "envoy.tracers.opentelemetry".into(),
        collector: Collector {
            protocol: CollectorProtocol::OtlpGrpc,
            host: "otel-collector.observability.svc.cluster.local".into(),
            port: 4317,
            path: String::new(),
            timeout: Duration::from_secs(3),
            headers: vec![("x-api-key".into(), "secret".into())],
        },
        service_name: "waypoint.default".into(),
        sampling_percent: 10.0,
        custom_tags: istio_and_telemetry_tags(),
        max_tag_length: 100,
    }
}

#[test]
fn istiod_access_logs_and_opentelemetry_grpc_tracing() {
    let t = translate(&fixture());
    let want = TelemetryConfig {
        access_logs: Some(vec![
            envoy_text_sink(),
            // The json-stderr provider with the Telemetry's filter: labels as a JSON object
            // (keys sorted), the CEL expression as written.
            AccessLogSink {
                provider: "envoy.access_loggers.file".into(),
                format: LogFormat::Json(
                    r#"{"authority":"%REQ(:AUTHORITY)%","method":"%REQ(:METHOD)%","path":"%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%","response_code":"%RESPONSE_CODE%","start_time":"%START_TIME%"}"#
                        .into(),
                ),
                filter: Some("response.code >= 400".into()),
                path: LogPath::Stderr,
            },
        ]),
        tracing: Some(otel_grpc_tracing()),
        sources: vec!["istiod listener main_internal chain direct-http".into()],
    };
    assert_eq!(**t.snapshot.telemetry(), want);
    // The only warning: the dry-run tags, once (all chains agree, direct-http's is used).
    let w = warnings(&t);
    assert_eq!(w.len(), 1, "{w:#?}");
    assert!(w[0].contains(DRY_RUN_WARNING), "{w:#?}");
    assert!(
        w[0].starts_with("Listener main_internal: chain direct-http: tracing:"),
        "{w:#?}"
    );
}

#[test]
fn opentelemetry_over_http() {
    let t = translate(&with(Some("tracing_otlp_http"), "tracing", |_| true));
    let want = Tracing {
        collector: Collector {
            protocol: CollectorProtocol::OtlpHttp,
            host: "otel-collector.observability.svc.cluster.local".into(),
            port: 4318,
            path: "/v1/traces".into(),
            timeout: Duration::from_secs(5),
            headers: vec![("authorization".into(), "Bearer abc".into())],
        },
        ..otel_grpc_tracing()
    };
    assert_eq!(t.snapshot.telemetry().tracing, Some(want));
    assert_eq!(warnings(&t).len(), 1, "{:#?}", warnings(&t));
}

#[test]
fn zipkin_in_the_1_27_and_the_1_29_shape() {
    for variant in ["tracing_zipkin_1_27", "tracing_zipkin_1_29"] {
        let t = translate(&with(Some(variant), "tracing", |_| true));
        let want = Tracing {
            provider: "envoy.tracers.zipkin".into(),
            collector: Collector {
                protocol: CollectorProtocol::Zipkin,
                host: "zipkin.istio-system.svc.cluster.local".into(),
                port: 9411,
                path: "/api/v2/spans".into(),
                // 1.29+ writes istiod's default; 1.27 none (this proxy's default).
                timeout: Duration::from_secs(if variant.ends_with("1_29") { 5 } else { 10 }),
                headers: vec![],
            },
            // Zipkin carries none: the node cluster istiod's Istio tags imply.
            service_name: "waypoint.default".into(),
            sampling_percent: 1.0,
            custom_tags: istio_and_telemetry_tags(),
            max_tag_length: routing::telemetry::DEFAULT_MAX_TAG_LENGTH,
        };
        assert_eq!(t.snapshot.telemetry().tracing, Some(want), "{variant}");
        assert_eq!(warnings(&t).len(), 1, "{variant}: {:#?}", warnings(&t));
    }
}

#[test]
fn no_access_log_leaves_the_process_default_and_no_provider_makes_no_spans() {
    // meshConfig accessLogFile unset and no Telemetry logging: istiod writes no access_log.
    let t = translate(&with(None, "access_log", |_| true));
    let tel = t.snapshot.telemetry();
    assert_eq!(tel.access_logs, None);
    assert_eq!(tel.tracing, Some(otel_grpc_tracing()));
    // meshConfig enableTracing without a Telemetry provider: tracing without a provider.
    let t = translate(&with(Some("tracing_without_provider"), "tracing", |_| true));
    let tel = t.snapshot.telemetry();
    assert_eq!(tel.tracing, None);
    assert_eq!(tel.access_logs.as_ref().map(Vec::len), Some(2));
    assert_eq!(warnings(&t), Vec::<String>::new());
    // Neither: nothing declared.
    let mut doc = with(None, "access_log", |_| true);
    for (_, hcm) in hcms(&mut doc) {
        hcm.as_object_mut().unwrap().remove("tracing");
    }
    assert!(translate(&doc).snapshot.telemetry().is_default());
}

#[test]
fn skipped_logger_and_tracer_types_are_warned_about_and_the_rest_applies() {
    let mut doc = with(Some("access_log_with_otel_als"), "access_log", |_| true);
    let tracing = doc["variants"]["tracing_datadog"]["tracing"].clone();
    for (_, hcm) in hcms(&mut doc) {
        hcm["tracing"] = tracing.clone();
    }
    let t = translate(&doc);
    let tel = t.snapshot.telemetry();
    // The file logger is kept, the OpenTelemetry access-log service left out.
    assert_eq!(tel.access_logs, Some(vec![envoy_text_sink()]));
    assert_eq!(tel.tracing, None);
    let w = warnings(&t);
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(
        w.iter().any(|w| w.contains(
            "access log envoy.access_loggers.open_telemetry: logger type \
             type.googleapis.com/envoy.extensions.access_loggers.open_telemetry.v3.\
             OpenTelemetryAccessLogConfig is not supported"
        ) && w.contains("this logger is left out")),
        "{w:#?}"
    );
    assert!(
        w.iter().any(|w| w.contains(
            "tracing: provider envoy.tracers.datadog \
             (type.googleapis.com/envoy.config.trace.v3.DatadogConfig) is not supported"
        ) && w.contains("no spans are made")),
        "{w:#?}"
    );
}

#[test]
fn a_telemetry_attached_to_one_service_is_named_and_the_waypoint_wide_one_used() {
    // Only the web service's chain logs through the OpenTelemetry service too.
    let t = translate(&with(Some("access_log_with_otel_als"), "access_log", |c| {
        c == WEB_CHAIN
    }));
    let tel = t.snapshot.telemetry();
    assert_eq!(
        tel.access_logs.as_ref().map(Vec::len),
        Some(2),
        "direct-http's"
    );
    let w = warnings(&t);
    assert!(
        w.iter().any(|w| w.contains(&format!(
            "Listener main_internal: chain {WEB_CHAIN}: its access_log / tracing differ from \
             chain direct-http's"
        ))),
        "{w:#?}"
    );
    // Not a warning about the web chain's own loggers: its telemetry is not used.
    assert!(!w.iter().any(|w| w.contains("open_telemetry")), "{w:#?}");
}

#[test]
fn without_direct_http_the_first_http_chain_is_used() {
    let mut doc = fixture();
    let l = doc["resources"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["name"] == "main_internal")
        .unwrap();
    l["filterChains"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["name"] != "direct-http");
    let t = translate(&doc);
    assert_eq!(
        t.snapshot.telemetry().sources,
        vec![format!("istiod listener main_internal chain {WEB_CHAIN}")]
    );
    assert_eq!(t.snapshot.telemetry().tracing, Some(otel_grpc_tracing()));
}

#[test]
fn the_translator_reusing_chains_gives_what_a_translation_from_scratch_gives() {
    let docs = [
        fixture(),
        with(Some("tracing_zipkin_1_27"), "tracing", |c| {
            c == "direct-http"
        }),
        with(Some("access_log_with_otel_als"), "access_log", |c| {
            c == WEB_CHAIN
        }),
        fixture(),
    ];
    let mut translator = Translator::new();
    for (i, doc) in docs.iter().enumerate() {
        let res = load_resources(&doc.to_string()).unwrap();
        let scratch = translate(doc);
        let listeners: Vec<(std::sync::Arc<str>, bytes::Bytes)> = res
            .listeners
            .iter()
            .map(|l| {
                (
                    l.name.as_str().into(),
                    bytes::Bytes::from(l.encode_to_vec()),
                )
            })
            .collect();
        let clusters: Vec<(std::sync::Arc<str>, bytes::Bytes)> = res
            .clusters
            .iter()
            .map(|c| {
                (
                    c.name.as_str().into(),
                    bytes::Bytes::from(c.encode_to_vec()),
                )
            })
            .collect();
        let endpoints: Vec<(std::sync::Arc<str>, bytes::Bytes)> = res
            .endpoints
            .iter()
            .map(|e| {
                (
                    e.cluster_name.as_str().into(),
                    bytes::Bytes::from(e.encode_to_vec()),
                )
            })
            .collect();
        let encoded: Vec<Encoded<'_>> = listeners
            .iter()
            .map(|(n, v)| (xds::LISTENER_TYPE, n, v))
            .chain(clusters.iter().map(|(n, v)| (xds::CLUSTER_TYPE, n, v)))
            .chain(endpoints.iter().map(|(n, v)| (xds::ENDPOINT_TYPE, n, v)))
            .map(|(type_url, name, value)| Encoded {
                type_url,
                name,
                value,
            })
            .collect();
        let reused = translator
            .translate(&encoded, &TranslateOptions::default())
            .unwrap();
        assert_eq!(
            reused.snapshot.telemetry(),
            scratch.snapshot.telemetry(),
            "step {i}"
        );
        assert_eq!(reused.warnings, scratch.warnings, "step {i}");
    }
}
