//! The rules of [`super`] on connection managers built here; the golden tests on istiod's
//! shapes are in `tests/xds_telemetry.rs`.

use super::*;
use crate::telemetry::{CollectorProtocol, TagValue};
use envoy_types::pb::envoy::config::accesslog::v3::{
    extension_filter, AndFilter, ComparisonFilter, ExtensionFilter, OrFilter, StatusCodeFilter,
};
use envoy_types::pb::envoy::config::core::v3::{
    grpc_service, DataSource, GrpcService, RuntimeUInt32,
};
use envoy_types::pb::envoy::config::trace::v3::tracing::{http, Http};
use envoy_types::pb::envoy::config::trace::v3::{OpenTelemetryConfig, ZipkinConfig};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::Tracing as HcmTracing;
use envoy_types::pb::envoy::r#type::tracing::v3::{custom_tag, CustomTag as ProtoTag};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Any, ListValue};
use prost::{Message, Name};

const AT: At<'static> = At {
    type_url: super::super::LISTENER_TYPE,
    name: "main_internal",
};

fn any<M: Message + Name>(m: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: m.encode_to_vec(),
    }
}

fn file_logger(path: &str, format: Option<AccessLogFormat>) -> AccessLog {
    AccessLog {
        name: "envoy.access_loggers.file".into(),
        filter: None,
        config_type: Some(LogConfigType::TypedConfig(any(&FileAccessLog {
            path: path.into(),
            access_log_format: format,
        }))),
    }
}

fn text(s: &str) -> Option<AccessLogFormat> {
    Some(AccessLogFormat::LogFormat(SubstitutionFormatString {
        format: Some(Format::TextFormatSource(DataSource {
            specifier: Some(Specifier::InlineString(s.into())),
            watched_directory: None,
        })),
        ..Default::default()
    }))
}

fn cel(expr: &str) -> AccessLogFilter {
    AccessLogFilter {
        filter_specifier: Some(FilterSpecifier::ExtensionFilter(ExtensionFilter {
            name: CEL_FILTER.into(),
            config_type: Some(extension_filter::ConfigType::TypedConfig(any(
                &ExpressionFilter {
                    expression: expr.into(),
                    cel_config: None,
                },
            ))),
        })),
    }
}

/// One connection manager's telemetry, held by nothing else.
fn translate(hcm: &HttpConnectionManager) -> (HcmTelemetry, Diag) {
    let mut rejections = Diag::default();
    let t = from_hcm("direct-http", hcm, AT, &mut rejections);
    let t = std::sync::Arc::try_unwrap(t).expect("one translation holds it");
    (t, rejections)
}

fn messages(d: &Diag) -> Vec<&str> {
    d.warnings.iter().map(|w| w.message.as_str()).collect()
}

#[test]
fn file_loggers_their_formats_and_paths() {
    let labels = Struct {
        fields: [
            ("z", Kind::StringValue("%Z%".into())),
            ("a", Kind::NumberValue(3.0)),
            ("m", Kind::NumberValue(0.5)),
            ("b", Kind::BoolValue(true)),
            (
                "l",
                Kind::ListValue(ListValue {
                    values: vec![Value {
                        kind: Some(Kind::NullValue(0)),
                    }],
                }),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value { kind: Some(v) }))
        .collect(),
    };
    #[allow(deprecated)]
    let hcm = HttpConnectionManager {
        access_log: vec![
            file_logger("/dev/stdout", text("%A%\n")),
            file_logger(
                "/dev/stderr",
                Some(AccessLogFormat::LogFormat(SubstitutionFormatString {
                    format: Some(Format::JsonFormat(labels.clone())),
                    ..Default::default()
                })),
            ),
            // Envoy's own format when none is named; the deprecated fields.
            file_logger("/dev/stdout", None),
            file_logger("/dev/stdout", Some(AccessLogFormat::Format("%B%".into()))),
            file_logger("/dev/stdout", Some(AccessLogFormat::JsonFormat(labels))),
            // Not expressible: left out, each named.
            file_logger("/var/log/envoy.log", text("%A%")),
            file_logger(
                "/dev/stdout",
                Some(AccessLogFormat::LogFormat(SubstitutionFormatString {
                    format: Some(Format::TextFormatSource(DataSource {
                        specifier: Some(Specifier::Filename("/etc/format".into())),
                        watched_directory: None,
                    })),
                    ..Default::default()
                })),
            ),
        ],
        ..Default::default()
    };
    let (t, rejections) = translate(&hcm);
    assert!(rejections.rejections.is_empty());
    let formats: Vec<(LogFormat, LogPath)> = t
        .access_logs
        .unwrap()
        .into_iter()
        .map(|s| (s.format, s.path))
        .collect();
    let json = r#"{"a":3,"b":true,"l":[null],"m":0.5,"z":"%Z%"}"#;
    assert_eq!(
        formats,
        vec![
            (LogFormat::Text("%A%\n".into()), LogPath::Stdout),
            (LogFormat::Json(json.into()), LogPath::Stderr),
            (
                LogFormat::Text(ENVOY_DEFAULT_FORMAT.into()),
                LogPath::Stdout
            ),
            (LogFormat::Text("%B%".into()), LogPath::Stdout),
            (LogFormat::Json(json.into()), LogPath::Stdout),
        ]
    );
    let w = messages(&t.diag);
    assert_eq!(w.len(), 2, "{w:#?}");
    assert!(w[0].contains("path \"/var/log/envoy.log\" is not supported"));
    assert!(w[1].contains("a format read from file \"/etc/format\" is not supported"));
}

#[test]
fn filters_become_one_cel_expression() {
    let status = |op: Op, v: u32| AccessLogFilter {
        filter_specifier: Some(FilterSpecifier::StatusCodeFilter(StatusCodeFilter {
            comparison: Some(ComparisonFilter {
                op: op as i32,
                value: Some(RuntimeUInt32 {
                    default_value: v,
                    runtime_key: "istio.io/unset".into(),
                }),
            }),
        })),
    };
    let and = AccessLogFilter {
        filter_specifier: Some(FilterSpecifier::AndFilter(AndFilter {
            filters: vec![
                status(Op::Ge, 400),
                AccessLogFilter {
                    filter_specifier: Some(FilterSpecifier::OrFilter(OrFilter {
                        filters: vec![cel("request.path == '/a'"), cel("xds.cluster_name == 'x'")],
                    })),
                },
            ],
        })),
    };
    let mut rejections = Diag::default();
    assert_eq!(
        cel_filter(&and, &mut rejections, AT, "c"),
        Ok(
            "(response.code >= 400) && ((request.path == '/a') || (xds.cluster_name == 'x'))"
                .into()
        )
    );
    // A filter that cannot be expressed leaves its logger out; the others stay.
    let flags = AccessLogFilter {
        filter_specifier: Some(FilterSpecifier::ResponseFlagFilter(Default::default())),
    };
    let mut skipped = file_logger("/dev/stdout", text("%A%"));
    skipped.filter = Some(flags);
    let mut kept = file_logger("/dev/stderr", text("%A%"));
    kept.filter = Some(cel("response.code >= 500"));
    let (t, rejections) = translate(&HttpConnectionManager {
        access_log: vec![skipped, kept],
        ..Default::default()
    });
    assert!(rejections.rejections.is_empty());
    let sinks = t.access_logs.unwrap();
    assert_eq!(sinks.len(), 1);
    assert_eq!(sinks[0].filter.as_deref(), Some("response.code >= 500"));
    assert!(
        messages(&t.diag)[0].contains("filter response_flag_filter is not supported"),
        "{:?}",
        messages(&t.diag)
    );
}

#[test]
fn a_logger_that_does_not_decode_is_rejected_and_no_access_log_is_none() {
    let bad = AccessLog {
        name: "envoy.access_loggers.file".into(),
        filter: None,
        config_type: Some(LogConfigType::TypedConfig(Any {
            type_url: FileAccessLog::type_url(),
            value: vec![0xff, 0xff],
        })),
    };
    let (t, rejections) = translate(&HttpConnectionManager {
        access_log: vec![bad],
        ..Default::default()
    });
    assert_eq!(t.access_logs, Some(vec![]));
    assert_eq!(rejections.rejections.len(), 1, "{rejections:?}");
    let (t, rejections) = translate(&HttpConnectionManager::default());
    assert_eq!(t.access_logs, None);
    assert_eq!(t.tracing, None);
    assert!(rejections.rejections.is_empty() && t.diag.warnings.is_empty());
}

fn tracing_with(provider: Any, tags: Vec<ProtoTag>) -> HttpConnectionManager {
    HttpConnectionManager {
        tracing: Some(HcmTracing {
            client_sampling: Some(Percent { value: 100.0 }),
            random_sampling: Some(Percent { value: 250.0 }),
            overall_sampling: Some(Percent { value: 50.0 }),
            custom_tags: tags,
            provider: Some(Http {
                name: "envoy.tracers.opentelemetry".into(),
                config_type: Some(http::ConfigType::TypedConfig(provider)),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn opentelemetry_collectors_tags_and_sampling() {
    let otel = OpenTelemetryConfig {
        grpc_service: Some(GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    // Not an istiod cluster name: the collector cannot be found.
                    cluster_name: "otel".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (t, _) = translate(&tracing_with(any(&otel), vec![]));
    assert_eq!(t.tracing, None);
    assert!(messages(&t.diag)[0].contains("collector cluster \"otel\" is not an istiod"));
    let tags = vec![
        ProtoTag {
            tag: "v".into(),
            r#type: Some(custom_tag::Type::Value("fixed".into())),
        },
        ProtoTag {
            tag: "f".into(),
            r#type: Some(custom_tag::Type::Value("%REQ(x)%".into())),
        },
        ProtoTag {
            tag: "e".into(),
            r#type: Some(custom_tag::Type::Environment(custom_tag::Environment {
                name: "E".into(),
                default_value: String::new(),
            })),
        },
    ];
    let otel = OpenTelemetryConfig {
        grpc_service: Some(GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(
                grpc_service::EnvoyGrpc {
                    cluster_name: "outbound|4317||otel.o.svc.cluster.local".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (t, _) = translate(&tracing_with(any(&otel), tags));
    let tr = t.tracing.unwrap();
    assert_eq!(tr.collector.protocol, CollectorProtocol::OtlpGrpc);
    assert_eq!(
        (tr.collector.host.as_str(), tr.collector.port),
        ("otel.o.svc.cluster.local", 4317)
    );
    assert_eq!(tr.service_name, "unknown_service:envoy");
    assert_eq!(tr.sampling_percent, 100.0, "clamped");
    assert_eq!(tr.max_tag_length, crate::telemetry::DEFAULT_MAX_TAG_LENGTH);
    let tags: Vec<(&str, &TagValue)> = tr
        .custom_tags
        .iter()
        .map(|t| (t.name.as_str(), &t.value))
        .collect();
    assert_eq!(
        tags,
        vec![
            ("v", &TagValue::Literal("fixed".into())),
            (
                "e",
                &TagValue::Environment {
                    name: "E".into(),
                    default: None
                }
            ),
        ]
    );
    let w = messages(&t.diag);
    assert!(
        w.iter().any(|w| w.contains("custom tags [\"f\"]")),
        "{w:#?}"
    );
    assert!(
        w.iter()
            .any(|w| w.contains("overall_sampling 50% is not supported")),
        "{w:#?}"
    );
}

#[test]
fn zipkin_endpoint_versions_and_uris() {
    let z = ZipkinConfig {
        collector_cluster: "zipkin".into(),
        collector_endpoint_version: 2,
        collector_service: Some(envoy_types::pb::envoy::config::core::v3::HttpService {
            http_uri: Some(envoy_types::pb::envoy::config::core::v3::HttpUri {
                uri: "https://[fd00::1]:9411".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (t, _) = translate(&tracing_with(any(&z), vec![]));
    let tr = t.tracing.unwrap();
    assert_eq!(tr.collector.protocol, CollectorProtocol::Zipkin);
    assert_eq!(
        (
            tr.collector.host.as_str(),
            tr.collector.port,
            tr.collector.path.as_str()
        ),
        ("fd00::1", 9411, "/")
    );
    assert_eq!(tr.service_name, "", "no Istio tags to make it from");
    assert!(
        messages(&t.diag)[0].contains("collector_endpoint_version HTTP_PROTO is not supported"),
        "{:?}",
        messages(&t.diag)
    );
}

#[test]
fn the_direct_http_chain_is_chosen_and_differences_named() {
    let one = HcmTelemetry {
        access_logs: Some(vec![]),
        ..Default::default()
    };
    let other = HcmTelemetry::default();
    let mut diag = Diag::default();
    let t = choose(
        &[("a", &other), ("direct-http", &one), ("b", &one)],
        AT,
        &mut diag,
    )
    .unwrap();
    assert_eq!(t.access_logs, Some(vec![]));
    assert_eq!(
        t.sources,
        vec!["istiod listener main_internal chain direct-http"]
    );
    assert_eq!(diag.warnings.len(), 1);
    assert!(diag.warnings[0]
        .message
        .starts_with("chain a: its access_log / tracing differ"));
    assert!(choose(&[], AT, &mut diag).is_none());
}

/// Chains whose connection managers declare the same telemetry hold one; a chain whose
/// telemetry found something to warn about (the warning names it) holds its own.
#[test]
fn equal_chain_telemetry_is_one() {
    let hcm = HttpConnectionManager {
        access_log: vec![file_logger("/dev/stdout", None)],
        ..Default::default()
    };
    let mut rejections = Diag::default();
    let a = from_hcm("inbound-vip|9080|http|a", &hcm, AT, &mut rejections);
    let b = from_hcm("inbound-vip|9080|http|b", &hcm, AT, &mut rejections);
    assert!(a.diag.is_empty(), "{:?}", a.diag);
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    let mut other = hcm.clone();
    other.access_log.push(file_logger("/dev/stderr", None));
    let c = from_hcm("inbound-vip|9080|http|c", &other, AT, &mut rejections);
    assert!(!std::sync::Arc::ptr_eq(&a, &c));
}
