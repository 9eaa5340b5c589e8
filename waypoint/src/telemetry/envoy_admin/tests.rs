//! The files-mode listener and routes: their shape, and what the xDS front-end reads back from
//! them (the routing of the files, request by request).

use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{route, route_action, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use prost::Message;
use routing::{Destination, RouteDecision, SimpleRequest, Snapshot};

use super::{listeners, routes};

const CONFIG: &str = "\
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: reviews}
spec:
  hosts: [reviews.default.svc.cluster.local]
  addresses: [10.0.0.10]
  ports:
  - {number: 9080, name: http}
  workloadSelector: {labels: {app: reviews}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: web}
spec:
  hosts: [web.default.svc.cluster.local]
  addresses: [10.0.0.40]
  ports:
  - {number: 8000, name: web}
  workloadSelector: {labels: {app: web}}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: db}
spec:
  hosts: [db.default.svc.cluster.local]
  addresses: [10.0.0.50]
  ports:
  - {number: 5432, name: tcp-pg}
  workloadSelector: {labels: {app: db}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v1}
spec: {address: 10.1.0.1, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-v2}
spec: {address: 10.1.0.2, labels: {app: reviews, version: v2}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db}
spec:
  host: db
  subsets:
  - {name: a, labels: {version: a}}
  - {name: b, labels: {version: b}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews}
spec:
  hosts: [reviews]
  http:
  - name: moved
    match: [{uri: {prefix: /old}}]
    redirect: {uri: /new, redirectCode: 302}
  - name: health
    match: [{uri: {exact: /health}}]
    directResponse: {status: 503, body: {string: down}}
  - name: api
    match:
    - name: get
      uri: {regex: /api/.*}
      method: {exact: GET}
      ignoreUriCase: false
    - name: beta
      headers: {x-beta: {prefix: yes}}
      withoutHeaders: {x-opt-out: {}}
      queryParams: {debug: {exact: '1'}}
    rewrite: {uri: /v2/, authority: reviews-api}
    headers: {request: {set: {x-route: api}, remove: [x-drop]}}
    timeout: 3s
    retries: {attempts: 4, perTryTimeout: 1s, retryOn: '5xx,503'}
    route:
    - destination: {host: reviews, subset: v3}
    mirror: {host: reviews, subset: v1}
    mirrorPercentage: {value: 25}
  - name: elsewhere
    match: [{port: 9999}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: split
    route:
    - {destination: {host: reviews, subset: v1}, weight: 60}
    - {destination: {host: reviews, subset: v2}, weight: 40}
    - {destination: {host: reviews, subset: v3}, weight: 0}
  - name: never
    route: [{destination: {host: reviews, subset: v3}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db}
spec:
  hosts: [db]
  tcp:
  - route:
    - {destination: {host: db, subset: a}, weight: 70}
    - {destination: {host: db, subset: b}, weight: 30}
";

fn snapshot(yaml: &str) -> Snapshot {
    routing::load_str(&[("config.yaml".into(), yaml.into())], "cluster.local")
        .unwrap_or_else(|e| panic!("{e:?}"))
}

fn build(s: &Snapshot) -> (Listener, Vec<RouteConfiguration>) {
    let mut by_host = std::collections::HashMap::new();
    let ports = listeners::service_ports(s, &mut by_host);
    (
        listeners::main_internal(s, &ports),
        routes::route_configs(s, &ports),
    )
}

fn chain_config<M: Message + Default>(l: &Listener, chain: &str) -> M {
    let fc = l.filter_chains.iter().find(|c| c.name == chain).unwrap();
    let Some(filter::ConfigType::TypedConfig(any)) = &fc.filters[0].config_type else {
        panic!("{fc:?}");
    };
    M::decode(any.value.as_slice()).unwrap()
}

#[test]
fn chains_per_port_routes_per_http_chain() {
    let s = snapshot(CONFIG);
    let (l, configs) = build(&s);
    let chains: Vec<&str> = l.filter_chains.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        chains,
        [
            "inbound-vip|9080|http|reviews.default.svc.cluster.local",
            "inbound-vip|8000|tcp|web.default.svc.cluster.local",
            "inbound-vip|8000|http|web.default.svc.cluster.local",
            "inbound-vip|5432|tcp|db.default.svc.cluster.local",
        ]
    );
    let names: Vec<&str> = configs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "inbound-vip|9080|http|reviews.default.svc.cluster.local",
            "inbound-vip|8000|http|web.default.svc.cluster.local",
        ]
    );
    // The TCP route's split, over clusters the config has.
    let tcp: TcpProxy = chain_config(&l, "inbound-vip|5432|tcp|db.default.svc.cluster.local");
    let Some(tcp_proxy::ClusterSpecifier::WeightedClusters(w)) = tcp.cluster_specifier else {
        panic!("{tcp:?}");
    };
    let split: Vec<(&str, u32)> = w
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight))
        .collect();
    assert_eq!(
        split,
        [
            ("inbound-vip|5432|tcp/a|db.default.svc.cluster.local", 70),
            ("inbound-vip|5432|tcp/b|db.default.svc.cluster.local", 30),
        ]
    );
    let clusters: Vec<&str> = s.clusters().iter().map(|c| &*c.name).collect();
    assert!(
        split.iter().all(|(c, _)| clusters.contains(c)),
        "{clusters:?}"
    );

    // reviews: one route per match block; the other port's block and what follows the
    // catch-all are left out; weight 0 is left out.
    let vhost = &configs[0].virtual_hosts[0];
    let routes: Vec<&str> = vhost.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(routes, ["moved", "health", "api.get", "api.beta", "split"]);
    let split = &vhost.routes[4];
    let Some(route::Action::Route(a)) = &split.action else {
        panic!("{split:?}");
    };
    let Some(route_action::ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier else {
        panic!("{a:?}");
    };
    let weighted: Vec<(&str, u32)> = w
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight.as_ref().unwrap().value))
        .collect();
    assert_eq!(
        weighted,
        [
            (
                "inbound-vip|9080|http/v1|reviews.default.svc.cluster.local",
                60
            ),
            (
                "inbound-vip|9080|http/v2|reviews.default.svc.cluster.local",
                40
            ),
        ]
    );
    let api = &vhost.routes[2];
    let Some(route::Action::Route(a)) = &api.action else {
        panic!("{api:?}");
    };
    assert_eq!(a.prefix_rewrite, "/v2/");
    assert_eq!(
        a.request_mirror_policies[0].cluster,
        "inbound-vip|9080|http/v1|reviews.default.svc.cluster.local"
    );
    assert_eq!(
        a.retry_policy
            .as_ref()
            .unwrap()
            .num_retries
            .as_ref()
            .unwrap()
            .value,
        4
    );
    assert_eq!(
        api.decorator.as_ref().unwrap().operation,
        "reviews.default.svc.cluster.local:9080/api/.*"
    );
    // web: no VirtualService, the default route to its own cluster.
    let web = &configs[1].virtual_hosts[0].routes;
    assert_eq!(web.len(), 1);
    assert_eq!(web[0].name, "default");
}

/// A route's name (as istiod names its Envoy route), its destinations (a port left out is the
/// request's) and what else it does; `None` for the default route.
fn decision(s: &Snapshot, vip: &str, req: &SimpleRequest) -> Option<(String, Vec<String>)> {
    let Some(Destination::Service { service, port }) = s.resolve_destination(vip.parse().unwrap())
    else {
        panic!("{vip} not served");
    };
    let (decision, block) = s.route_with_match(service, port.number, req);
    // istiod names a match block's Envoy route `<route>.<block>`.
    let name = |route: &str| match block.and_then(|b| b.name.as_deref()) {
        Some(b) if !route.ends_with(&format!(".{b}")) => format!("{route}.{b}"),
        _ => route.to_string(),
    };
    match decision {
        RouteDecision::Route { route, .. } => Some((
            name(&route.name),
            route
                .destinations
                .iter()
                .map(|d| {
                    let p = d.port.unwrap_or(port.number);
                    format!("{}:{p}/{:?}/{}", d.host, d.subset, d.weight)
                })
                .chain([format!(
                    "{:?} {:?} {:?} {:?} {:?} {:?}",
                    route.action,
                    route.rewrite,
                    route.timeout,
                    route.retries,
                    route
                        .mirrors
                        .iter()
                        .map(|m| (
                            &m.host,
                            m.port.unwrap_or(port.number),
                            &m.subset,
                            m.percentage
                        ))
                        .collect::<Vec<_>>(),
                    route.headers
                )])
                .collect(),
        )),
        RouteDecision::Default => None,
        RouteDecision::NoRoute => Some(("404".into(), Vec::new())),
    }
}

#[test]
fn the_xds_front_end_reads_back_the_files_routing() {
    let files = snapshot(CONFIG);
    let (l, configs) = build(&files);
    let resources = routing::xds::Resources {
        listeners: vec![l],
        routes: configs,
        clusters: files
            .clusters()
            .iter()
            .map(|c| super::files_cluster(c))
            .collect(),
        endpoints: files
            .clusters()
            .iter()
            .map(|c| super::assignment(c))
            .collect(),
    };
    let xds = routing::xds::translate(&resources, &Default::default()).unwrap();
    assert!(xds.warnings.is_empty(), "{:?}", xds.warnings);
    let xds = &xds.snapshot;
    let requests = [
        SimpleRequest::new("/old/page"),
        SimpleRequest::new("/health"),
        SimpleRequest::new("/api/list"),
        SimpleRequest::new("/api/list").with_method("POST"),
        SimpleRequest::new("/x?debug=1").with_header("x-beta", "yes-please"),
        SimpleRequest::new("/x?debug=1")
            .with_header("x-beta", "yes")
            .with_header("x-opt-out", "1"),
        SimpleRequest::new("/anything"),
    ];
    for req in &requests {
        let want = decision(&files, "10.0.0.10:9080", req);
        assert!(want.is_some(), "{req:?}");
        assert_eq!(decision(xds, "10.0.0.10:9080", req), want, "{req:?}");
    }
    let any = SimpleRequest::new("/");
    assert_eq!(decision(xds, "10.0.0.40:8000", &any), None);
    let Some(Destination::Service { port, .. }) =
        xds.resolve_destination("10.0.0.40:8000".parse().unwrap())
    else {
        panic!("web not served");
    };
    assert_eq!(port.protocol, routing::Protocol::Unknown);
    let Some(Destination::Service { service, port }) =
        xds.resolve_destination("10.0.0.50:5432".parse().unwrap())
    else {
        panic!("db not served");
    };
    let tcp = xds
        .tcp_route(service, port.number, &Default::default())
        .expect("db's tcp route");
    let split: Vec<(Option<&str>, u32)> = tcp
        .destinations
        .iter()
        .map(|d| (d.subset.as_deref(), d.weight))
        .collect();
    assert_eq!(split, [(Some("a"), 70), (Some("b"), 30)]);
}

#[test]
fn source_conditions_show_in_metadata_and_do_not_end_the_routes() {
    let yaml = CONFIG.replace(
        "  - name: moved\n",
        "  - name: mine\n    match: [{sourceLabels: {app: productpage}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - name: moved\n",
    );
    let (_, configs) = build(&snapshot(&yaml));
    let routes = &configs[0].virtual_hosts[0].routes;
    assert_eq!(routes[0].name, "mine");
    assert_eq!(routes[1].name, "moved");
    let waypoint = &routes[0].metadata.as_ref().unwrap().filter_metadata["waypoint"];
    assert!(
        waypoint.fields.contains_key("source_labels"),
        "{waypoint:?}"
    );
}

/// An assignment the xDS client kept compact is dumped as istiod sent it (the protobuf bytes
/// again, which istioctl decodes); one kept as it came is dumped as it is.
#[test]
fn a_payload_kept_compact_is_dumped_as_it_came() {
    use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
    let raw = ClusterLoadAssignment {
        cluster_name: "inbound-vip|9080|http|reviews.default.svc.cluster.local ".repeat(20),
        ..Default::default()
    }
    .encode_to_vec();
    let kept = routing::xds::stored::compact(routing::xds::ENDPOINT_TYPE, &raw)
        .expect("repetitive bytes are kept compact");
    assert_ne!(kept, raw);
    let url = xds_client::intern_type_url(xds_client::type_url::CLUSTER_LOAD_ASSIGNMENT);
    let compact = xds_client::Payload {
        type_url: url.clone(),
        value: kept,
    };
    let any = super::any_of(&compact);
    assert_eq!(any.value, raw);
    assert_eq!(any.type_url, xds_client::type_url::CLUSTER_LOAD_ASSIGNMENT);
    let plain = xds_client::Payload {
        type_url: url,
        value: raw.clone().into(),
    };
    assert_eq!(super::any_of(&plain).value, raw);
}

/// `/memory` is written by hand (no descriptor pool): the same JSON as the descriptor-driven
/// rendering of `envoy.admin.v3.Memory`, every field and each `uint64` as a string.
#[test]
fn memory_is_written_as_the_descriptors_render_it() {
    use envoy_types::pb::envoy::admin::v3::Memory;
    for m in [
        Memory::default(),
        Memory {
            allocated: 1,
            heap_size: 2,
            pageheap_unmapped: 3,
            pageheap_free: 4,
            total_thread_cache: 5,
            total_physical_bytes: u64::MAX,
        },
    ] {
        let by_hand = super::memory_json(&m);
        assert_eq!(by_hand, super::render_all(&m), "{m:?}");
        assert_eq!(
            by_hand["total_physical_bytes"],
            m.total_physical_bytes.to_string()
        );
    }
}
