use super::*;

pub(super) fn tunnel(baggage: Option<&str>) -> TunnelInfo {
    TunnelInfo {
        peer: "10.0.0.1:1234".parse().unwrap(),
        source_addr: "10.0.0.2:4000".parse().unwrap(),
        claimed_source: None,
        source_identity: "spiffe://cluster.local/ns/shop/sa/frontend"
            .parse()
            .unwrap(),
        original_dst: "10.0.0.10:9080".parse().unwrap(),
        local: "10.0.0.3:15008".parse().unwrap(),
        forwarded_host: None,
        baggage: baggage.map(String::from),
        traceparent: None,
        metric_labels: Default::default(),
        principal: Default::default(),
    }
}

#[test]
fn source_labels_come_from_identity_and_baggage() {
    let t = tunnel(Some(
        "k8s.cluster.name=east,k8s.namespace.name=shop,k8s.deployment.name=frontend-v2,service.name=frontend,service.version=v2",
    ));
    let s = SourceLabels::from_tunnel(Some(&t), None);
    assert_eq!(&*s.source_workload, "frontend-v2");
    assert_eq!(&*s.source_workload_namespace, "shop");
    assert_eq!(
        &*s.source_principal,
        "spiffe://cluster.local/ns/shop/sa/frontend"
    );
    assert_eq!(&*s.source_app, "frontend");
    assert_eq!(&*s.source_version, "v2");
    assert_eq!(&*s.source_cluster, "east");
    assert_eq!(&*s.source_canonical_revision, "v2");

    let bare = SourceLabels::from_tunnel(Some(&tunnel(None)), None);
    assert_eq!(&*bare.source_workload, "unknown");
    assert_eq!(
        &*bare.source_workload_namespace, "shop",
        "from the SPIFFE id"
    );
    assert_eq!(&*bare.source_canonical_revision, "latest");
    assert_eq!(&*SourceLabels::unknown().source_principal, "unknown");
}

/// A client that sends no baggage (a sidecar, a gateway) is named by the config's workload at
/// its address; baggage, when present, still wins.
#[test]
fn source_labels_fall_back_to_the_workload_at_the_clients_address() {
    let mut w = (*ep("productpage-v1")).clone();
    w.labels = Arc::new(
        [("app", "productpage"), ("version", "v1")]
            .into_iter()
            .collect(),
    );
    let s = SourceLabels::from_tunnel(Some(&tunnel(None)), Some(&w));
    assert_eq!(&*s.source_workload, "productpage-v1");
    assert_eq!(&*s.source_canonical_service, "productpage");
    assert_eq!(&*s.source_app, "productpage");
    assert_eq!(&*s.source_canonical_revision, "v1");
    assert_eq!(&*s.source_version, "v1");
    assert_eq!(
        &*s.source_workload_namespace, "shop",
        "the SPIFFE id's first"
    );
    let with_baggage = SourceLabels::from_tunnel(
        Some(&tunnel(Some(
            "k8s.deployment.name=fe,service.name=frontend",
        ))),
        Some(&w),
    );
    assert_eq!(&*with_baggage.source_workload, "fe");
    assert_eq!(&*with_baggage.source_canonical_service, "frontend");
}

#[test]
fn destination_labels_from_endpoint_labels() {
    let svc = ("reviews.bookinfo.svc.cluster.local", "bookinfo");
    let ep = Endpoint {
        address: "10.1.0.1".parse().unwrap(),
        labels: Arc::new(
            [("app", "reviews"), ("version", "v2")]
                .into_iter()
                .collect(),
        ),
        workload: std::sync::Arc::new(routing::Workload::new(
            "reviews-v2".into(),
            "bookinfo".into(),
            "bookinfo-reviews".into(),
            "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews".into(),
        )),
        transport: Default::default(),
    };
    let d = DestinationLabels::new(Some(svc), Some(&ep), "Kubernetes");
    assert_eq!(&*d.destination_workload, "reviews-v2");
    assert_eq!(&*d.destination_service_name, "reviews");
    assert_eq!(&*d.destination_canonical_service, "reviews");
    assert_eq!(&*d.destination_canonical_revision, "v2");
    assert_eq!(&*d.destination_cluster, "Kubernetes");
    let none = DestinationLabels::new(Some(svc), None, "Kubernetes");
    assert_eq!(&*none.destination_workload, "unknown");
    assert_eq!(
        &*none.destination_service,
        "reviews.bookinfo.svc.cluster.local"
    );
    assert_eq!(&*none.destination_cluster, "unknown");
}

#[test]
fn exposition_has_istio_names_and_buckets() {
    let m = Metrics::default();
    m.istio.record_request(RequestRecord {
        source: SourceLabels::unknown(),
        destination: DestinationLabels::new(None, None, "Kubernetes"),
        grpc: false,
        response_code: 503,
        grpc_status: None,
        response_flags: "UF",
        duration_ms: 7.0,
        request_bytes: 0,
        response_bytes: 19,
    });
    let text = m.render();
    assert!(text.contains("# TYPE istio_requests counter"), "{text}");
    assert!(
        text.contains("istio_requests_total{reporter=\"waypoint\""),
        "{text}"
    );
    assert!(text.contains("response_code=\"503\""), "{text}");
    assert!(text.contains("response_flags=\"UF\""), "{text}");
    let bucket = |le: &str| {
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "istio_request_duration_milliseconds_bucket{{le=\"{le}\","
                ))
            })
            .and_then(|l| l.rsplit(' ').next())
            .map(String::from)
    };
    assert_eq!(bucket("5.0").as_deref(), Some("0"), "{text}");
    assert_eq!(bucket("10.0").as_deref(), Some("1"), "{text}");
}

/// The lock-free histogram encodes byte for byte as prometheus-client's own, and counts
/// every observation under concurrency.
#[test]
fn atomic_histogram_matches_prometheus_client() {
    use prometheus_client::metrics::histogram::Histogram;
    let ours = AtomicHistogram::new(ISTIO_BUCKETS);
    let theirs = Histogram::new(ISTIO_BUCKETS);
    for v in [0.0, 0.5, 0.7, 3.0, 25.0, 1e9, f64::NAN, -1.0, 4000.25] {
        ours.observe(v);
        theirs.observe(v);
    }
    let encode = |register: &dyn Fn(&mut Registry)| {
        let mut r = Registry::default();
        register(&mut r);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).unwrap();
        out
    };
    let a = encode(&|r| r.register("h", "help", ours.clone()));
    let b = encode(&|r| r.register("h", "help", theirs.clone()));
    assert_eq!(a, b);

    let h = AtomicHistogram::new([1.0, 10.0]);
    const THREADS: u64 = 8;
    const EACH: u64 = 25_000;
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let h = &h;
            s.spawn(move || {
                for i in 0..EACH {
                    // 0.5, 5 and 50 in turn: every bucket is hit concurrently.
                    h.observe([0.5, 5.0, 50.0][((i + t) % 3) as usize]);
                }
            });
        }
    });
    let (sum, count, buckets) = h.snapshot();
    assert_eq!(count, THREADS * EACH);
    let per: Vec<u64> = buckets.iter().map(|(_, c)| *c).collect();
    assert_eq!(per.iter().sum::<u64>(), THREADS * EACH);
    let expect_sum: f64 = (0..THREADS)
        .flat_map(|t| (0..EACH).map(move |i| [0.5, 5.0, 50.0][((i + t) % 3) as usize]))
        .sum();
    assert_eq!(sum, expect_sum, "halves and integers add exactly");
}

pub(super) fn ep(name: &str) -> Arc<Endpoint> {
    Arc::new(Endpoint {
        address: "10.1.0.1".parse().unwrap(),
        labels: Arc::new([("app", "reviews")].into_iter().collect()),
        workload: std::sync::Arc::new(routing::Workload::new(
            name.into(),
            "bookinfo".into(),
            "reviews".into(),
            "spiffe://cluster.local/ns/bookinfo/sa/reviews".into(),
        )),
        transport: Default::default(),
    })
}

/// Per (tunnel, endpoint, code, flags …) the label set is built once; the exposition is the
/// one the uncached path writes.
#[test]
fn handles_are_cached_per_key_and_expose_the_same_series() {
    let t = Arc::new(tunnel(Some("k8s.deployment.name=frontend")));
    let (e1, e2) = (ep("reviews-v1"), ep("reviews-v2"));
    fn key<'a>(
        t: &'a Arc<TunnelInfo>,
        endpoint: &'a Arc<Endpoint>,
        code: u16,
        flags: &'a str,
    ) -> RequestKey<'a> {
        RequestKey {
            tunnel: Some(t),
            service: Some(("reviews.bookinfo.svc.cluster.local", "bookinfo")),
            endpoint: Some(endpoint),
            principal: None,
            cluster_id: "Kubernetes",
            grpc: false,
            response_code: code,
            grpc_status: None,
            response_flags: flags,
        }
    }
    let cached = Metrics::default();
    for _ in 0..100 {
        cached
            .istio
            .record_request_key(key(&t, &e1, 200, ""), 3.0, 10, 20, None);
    }
    assert_eq!(
        cached.istio.label_builds(),
        1,
        "one label set for 100 requests"
    );
    cached
        .istio
        .record_request_key(key(&t, &e2, 200, ""), 3.0, 10, 20, None);
    cached
        .istio
        .record_request_key(key(&t, &e1, 503, "UF"), 3.0, 10, 20, None);
    cached
        .istio
        .record_request_key(key(&t, &e1, 503, "UF"), 3.0, 10, 20, None);
    assert_eq!(cached.istio.label_builds(), 3);
    // Another instance on the same thread does not share handles.
    let other = Metrics::default();
    other
        .istio
        .record_request_key(key(&t, &e1, 200, ""), 3.0, 10, 20, None);
    assert_eq!(other.istio.label_builds(), 1);
    let text = other.render();
    let total = text
        .lines()
        .find(|l| l.starts_with("istio_requests_total{"));
    assert!(total.is_some_and(|l| l.ends_with(" 1")), "{text}");

    let plain = Metrics::default();
    let record = |endpoint: &Arc<Endpoint>, code: u16, flags: &str| {
        plain.istio.record_request(RequestRecord {
            source: t.source_labels(&routing::Snapshot::empty()).clone(),
            destination: DestinationLabels::new(
                Some(("reviews.bookinfo.svc.cluster.local", "bookinfo")),
                Some(endpoint),
                "Kubernetes",
            ),
            grpc: false,
            response_code: code,
            grpc_status: None,
            response_flags: flags,
            duration_ms: 3.0,
            request_bytes: 10,
            response_bytes: 20,
        })
    };
    for _ in 0..100 {
        record(&e1, 200, "");
    }
    record(&e2, 200, "");
    record(&e1, 503, "UF");
    record(&e1, 503, "UF");
    // Series order within a family is a hash map's: compare the sorted lines.
    let sorted = |m: &Metrics| {
        let text = m.render();
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        lines.sort();
        lines
    };
    assert_eq!(sorted(&cached), sorted(&plain));
}
