//! The exposition against Istio's own label sets: `waypoint/tests/fixtures/
//! istio_standard_metrics_1_27.json` holds what an Envoy waypoint of Istio 1.26/1.27 emits
//! (family names, label names in order, histogram buckets, `unknown` defaults, gRPC status), with
//! the repository, tag, commit and file each part comes from.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::tests::{ep, tunnel};
use super::*;

const FIXTURE: &str = include_str!("../../../tests/fixtures/istio_standard_metrics_1_27.json");

fn fixture() -> Value {
    serde_json::from_str(FIXTURE).expect("the fixture is JSON")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("an array")
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// One sample line of the text exposition.
#[derive(Debug)]
struct Sample {
    name: String,
    /// In the order the line lists them.
    labels: Vec<(String, String)>,
}

impl Sample {
    fn get(&self, k: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    fn names_without_le(&self) -> Vec<&str> {
        self.labels
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| *k != "le")
            .collect()
    }
}

/// Samples and `# TYPE`s of an OpenMetrics text exposition (label values unescaped).
fn parse(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (family, kind) = rest.split_once(' ').expect("# TYPE name kind");
            types.insert(family.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((name, rest)) = line.split_once('{') else {
            let name = line.split(' ').next().unwrap_or_default();
            samples.push(Sample {
                name: name.into(),
                labels: Vec::new(),
            });
            continue;
        };
        let mut labels = Vec::new();
        let mut chars = rest.chars();
        loop {
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            assert_eq!(chars.next(), Some('"'), "{line}");
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some('n') => value.push('\n'),
                        Some(e) => value.push(e),
                        None => panic!("dangling escape: {line}"),
                    },
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.push((key, value));
            match chars.next() {
                Some(',') => continue,
                Some('}') => break,
                other => panic!("{other:?} after a label value: {line}"),
            }
        }
        samples.push(Sample {
            name: name.into(),
            labels,
        });
    }
    (samples, types)
}

const SERVICE: (&str, &str) = ("reviews.bookinfo.svc.cluster.local", "bookinfo");

/// A registry after an HTTP request, a gRPC request and a TCP connection from a known client
/// to a known endpoint, and an HTTP request from and to nobody known.
fn scraped() -> String {
    let m = Metrics::default();
    let t = Arc::new(tunnel(Some(
        "k8s.cluster.name=Kubernetes,k8s.namespace.name=shop,k8s.deployment.name=frontend-v1,service.name=frontend,service.version=v1",
    )));
    let e = ep("reviews-v1");
    let key = |grpc: bool, code: u16, status: Option<&'static str>| RequestKey {
        tunnel: Some(&t),
        service: Some(SERVICE),
        endpoint: Some(&e),
        principal: None,
        cluster_id: "Kubernetes",
        grpc,
        response_code: code,
        grpc_status: status,
        response_flags: "",
    };
    m.istio
        .record_request_key(key(false, 200, None), 12.0, 0, 512, None);
    m.istio
        .record_request_key(key(true, 200, Some("0")), 3.0, 20, 40, Some((3, 1)));
    let tcp = IstioMetrics::tcp_labels(
        t.source_labels(&routing::Snapshot::empty()).clone(),
        DestinationLabels::new(Some(SERVICE), Some(&e), "Kubernetes"),
        "",
    );
    m.istio.tcp_opened(&tcp);
    m.istio.tcp_closed(&tcp, 100, 200);
    m.istio.record_request(RequestRecord {
        source: SourceLabels::unknown(),
        destination: DestinationLabels::new(None, None, "Kubernetes"),
        grpc: false,
        response_code: 503,
        grpc_status: None,
        response_flags: "",
        duration_ms: 1.0,
        request_bytes: 0,
        response_bytes: 0,
    });
    m.render()
}

/// Every family Istio's waypoint emits is here with Istio's type, exactly Istio's label names in
/// Istio's order, `reporter="waypoint"` and, for histograms, Envoy's default buckets; and no
/// `istio_*` family Istio does not have.
#[test]
fn families_have_istio_label_names_order_and_buckets() {
    let f = fixture();
    let reporter = f["reporter"].as_str().unwrap();
    let buckets: Vec<f64> = f["histogram_buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_f64().unwrap())
        .chain(std::iter::once(f64::INFINITY))
        .collect();
    let text = scraped();
    let (samples, types) = parse(&text);
    let mut expected_families = BTreeSet::new();
    for family in f["families"].as_array().unwrap() {
        let name = family["name"].as_str().unwrap();
        let kind = family["type"].as_str().unwrap();
        let labels = strings(&f[family["labels"].as_str().unwrap()]);
        // OpenMetrics names a counter's family without `_total`; its samples carry it.
        let om_family = name.strip_suffix("_total").unwrap_or(name);
        expected_families.insert(om_family.to_string());
        assert_eq!(
            types.get(om_family).map(String::as_str),
            Some(kind),
            "{name}"
        );
        let sample_names: Vec<String> = match kind {
            "counter" => vec![name.to_string()],
            _ => ["_bucket", "_sum", "_count"]
                .iter()
                .map(|s| format!("{name}{s}"))
                .collect(),
        };
        for sample_name in &sample_names {
            let of: Vec<&Sample> = samples.iter().filter(|s| &s.name == sample_name).collect();
            assert!(!of.is_empty(), "no {sample_name} sample:\n{text}");
            for s in &of {
                assert_eq!(s.names_without_le(), labels, "label names of {sample_name}");
                assert_eq!(s.get("reporter"), Some(reporter), "{sample_name}");
                if family["grpc_only"].as_bool() == Some(true) {
                    assert_eq!(s.get("request_protocol"), Some("grpc"), "{sample_name}");
                }
            }
            if sample_name.ends_with("_bucket") {
                let series: BTreeSet<Vec<&str>> = of
                    .iter()
                    .map(|s| {
                        s.labels
                            .iter()
                            .filter(|(k, _)| k != "le")
                            .map(|(_, v)| v.as_str())
                            .collect()
                    })
                    .collect();
                for values in series {
                    let les: Vec<f64> = of
                        .iter()
                        .filter(|s| {
                            s.labels
                                .iter()
                                .filter(|(k, _)| k != "le")
                                .map(|(_, v)| v.as_str())
                                .eq(values.iter().copied())
                        })
                        .map(|s| match s.get("le").expect("a bucket has le") {
                            "+Inf" => f64::INFINITY,
                            le => le.parse().expect("a numeric le"),
                        })
                        .collect();
                    assert_eq!(les, buckets, "{name} buckets");
                }
            }
        }
    }
    let ours: BTreeSet<String> = types
        .keys()
        .filter(|k| k.starts_with("istio_"))
        .cloned()
        .collect();
    assert_eq!(ours, expected_families, "istio_* families");
}

/// With no peer known either way Istio's waypoint fills in `unknown` (and `latest` for the
/// source's canonical revision only).
#[test]
fn unknown_peers_get_istio_defaults() {
    let f = fixture();
    let (samples, _) = parse(&scraped());
    let s = samples
        .iter()
        .find(|s| s.name == "istio_requests_total" && s.get("response_code") == Some("503"))
        .expect("the request from nobody known");
    for (k, v) in f["http_defaults_without_peers"].as_object().unwrap() {
        assert_eq!(s.get(k), v.as_str(), "{k}");
    }
}

/// `grpc_response_status` as Envoy's `getGrpcStatus` gives it: the upstream's, else the HTTP
/// status's gRPC equivalent; garbage is `-1`.
#[test]
fn grpc_response_status_follows_envoy() {
    let f = fixture();
    for case in f["grpc_response_status"].as_array().unwrap() {
        let status = case[0].as_str();
        let code = case[1].as_u64().unwrap() as u16;
        let want = case[2].as_str().unwrap();
        for cached in [false, true] {
            let m = Metrics::default();
            if cached {
                m.istio.record_request_key(
                    RequestKey {
                        tunnel: None,
                        service: Some(SERVICE),
                        endpoint: None,
                        principal: None,
                        cluster_id: "Kubernetes",
                        grpc: true,
                        response_code: code,
                        grpc_status: status,
                        response_flags: "",
                    },
                    1.0,
                    0,
                    0,
                    None,
                );
            } else {
                m.istio.record_request(RequestRecord {
                    source: SourceLabels::unknown(),
                    destination: DestinationLabels::new(Some(SERVICE), None, "Kubernetes"),
                    grpc: true,
                    response_code: code,
                    grpc_status: status,
                    response_flags: "",
                    duration_ms: 1.0,
                    request_bytes: 0,
                    response_bytes: 0,
                });
            }
            let (samples, _) = parse(&m.render());
            let s = samples
                .iter()
                .find(|s| s.name == "istio_requests_total")
                .unwrap();
            assert_eq!(
                s.get("grpc_response_status"),
                Some(want),
                "{status:?} {code} (cached path: {cached})"
            );
        }
    }
    let plain = grpc_status_label(false, Some("5"), 503);
    assert_eq!(&*plain, "", "plain HTTP has no gRPC status");
}

/// The source and destination labels of the known peers: app and version are the canonical
/// service and revision, as Istio's workload discovery fills them.
#[test]
fn known_peers_get_canonical_app_and_version() {
    let (samples, _) = parse(&scraped());
    let s = samples
        .iter()
        .find(|s| s.name == "istio_tcp_connections_opened_total")
        .unwrap();
    let want = [
        ("source_workload", "frontend-v1"),
        ("source_canonical_service", "frontend"),
        ("source_canonical_revision", "v1"),
        ("source_workload_namespace", "shop"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/shop/sa/frontend",
        ),
        ("source_app", "frontend"),
        ("source_version", "v1"),
        ("source_cluster", "Kubernetes"),
        ("destination_workload", "reviews-v1"),
        ("destination_workload_namespace", "bookinfo"),
        (
            "destination_principal",
            "spiffe://cluster.local/ns/bookinfo/sa/reviews",
        ),
        ("destination_app", "reviews"),
        ("destination_version", "latest"),
        ("destination_service", "reviews.bookinfo.svc.cluster.local"),
        ("destination_canonical_service", "reviews"),
        ("destination_canonical_revision", "latest"),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", "bookinfo"),
        ("destination_cluster", "Kubernetes"),
        ("request_protocol", "tcp"),
        ("response_flags", "-"),
        ("connection_security_policy", "mutual_tls"),
    ];
    for (k, v) in want {
        assert_eq!(s.get(k), Some(v), "{k}");
    }
}

/// istiod's canonical service order: `service.istio.io/canonical-name`, then
/// `app.kubernetes.io/name`, then `app`, then the workload's name; revisions likewise.
#[test]
fn destination_canonical_labels_follow_istiod_order() {
    let mut e = (*ep("web-7f9")).clone();
    let with = |pairs: &[(&str, &str)]| -> Arc<routing::Labels> {
        Arc::new(pairs.iter().copied().collect())
    };
    e.labels = with(&[
        ("app", "a"),
        ("app.kubernetes.io/name", "k"),
        ("version", "v"),
    ]);
    let d = DestinationLabels::new(Some(SERVICE), Some(&e), "Kubernetes");
    assert_eq!(
        (&*d.destination_canonical_service, &*d.destination_app),
        ("k", "k")
    );
    assert_eq!(
        (&*d.destination_canonical_revision, &*d.destination_version),
        ("v", "v")
    );
    e.labels = with(&[]);
    let d = DestinationLabels::new(Some(SERVICE), Some(&e), "Kubernetes");
    assert_eq!(&*d.destination_canonical_service, "web-7f9");
    assert_eq!(&*d.destination_canonical_revision, "latest");
}
