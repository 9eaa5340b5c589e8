//! The admin endpoints in Envoy's formats, read the way `istioctl proxy-config` reads them:
//! `/config_dump` (decoded with the Envoy admin protos; in files mode its listener and routes
//! too), `/clusters?format=json` (its endpoint view), `/server_info`, `/certs`, `/memory`,
//! `/logging` without parameters, and `/quitquitquit`.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::config::route::v3::{route, route_action, RouteConfiguration};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager::RouteSpecifier, HttpConnectionManager,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::xds::r#type::matcher::v3::matcher::{
    matcher_tree::TreeType, on_match::OnMatch as OnMatchKind, MatcherType, OnMatch,
};
use prost::Message;
use serde_json::Value;

use crate::common::*;
use waypoint::control::identity::Ca;
use waypoint_tests::{spiffe, Net};

const RATINGS: &str = "inbound-vip|9080|http|ratings.default.svc.cluster.local";
const RATINGS_V1: &str = "inbound-vip|9080|http/v1|ratings.default.svc.cluster.local";
const RATINGS_V2: &str = "inbound-vip|9080|http/v2|ratings.default.svc.cluster.local";
const DETAILS: &str = "inbound-vip|9080|http|details.default.svc.cluster.local";
const DETAILS_TCP: &str = "inbound-vip|3306|tcp|details.default.svc.cluster.local";

/// Beside the ratings ServiceEntry (its pod is v1): subsets v1/v2, a VirtualService with a header
/// route to v2 and a 90/10 split, and a `details` service with an HTTP and a TCP port and no
/// VirtualService.
const ROUTES_YAML: &str = "\
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: ratings
spec:
  host: ratings
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: ratings
spec:
  hosts: [ratings]
  http:
  - name: jason
    match:
    - headers:
        end-user:
          exact: jason
    route:
    - destination:
        host: ratings
        subset: v2
  - name: split
    route:
    - destination:
        host: ratings
        subset: v1
      weight: 90
    - destination:
        host: ratings
        subset: v2
      weight: 10
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: details
spec:
  hosts: [details.default.svc.cluster.local]
  addresses: [10.0.0.30]
  ports:
  - number: 9080
    name: http
  - number: 3306
    name: tcp-mysql
  workloadSelector:
    labels:
      app: details
";

/// `xds.type.matcher.v3.IPMatcher` (cncf/xds `ip.proto`), which istioctl decodes to show a
/// waypoint chain's VIP; envoy-types does not generate it.
#[derive(Clone, PartialEq, prost::Message)]
struct IpMatcher {
    #[prost(message, repeated, tag = "1")]
    range_matchers: Vec<IpRangeMatcher>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct IpRangeMatcher {
    #[prost(message, repeated, tag = "1")]
    ranges: Vec<envoy_types::pb::xds::core::v3::CidrRange>,
    #[prost(message, optional, tag = "2")]
    on_match: Option<OnMatch>,
}

/// `"<vip>:<port>"` → chain, as the listener's `filter_chain_matcher` selects them (a sniffed
/// port's application-protocol tree is not expected here).
fn chains_by_destination(l: &Listener) -> BTreeMap<String, String> {
    let tree = |m: &envoy_types::pb::xds::r#type::matcher::v3::Matcher| match &m.matcher_type {
        Some(MatcherType::MatcherTree(t)) => t.clone(),
        other => panic!("{other:?}"),
    };
    let root = tree(
        l.filter_chain_matcher
            .as_ref()
            .expect("filter_chain_matcher"),
    );
    let Some(TreeType::CustomMatch(ip)) = root.tree_type else {
        panic!("{root:?}");
    };
    let ip = ip.typed_config.unwrap();
    assert_eq!(
        ip.type_url,
        "type.googleapis.com/xds.type.matcher.v3.IPMatcher"
    );
    let ip = IpMatcher::decode(ip.value.as_slice()).unwrap();
    let mut out = BTreeMap::new();
    for rm in ip.range_matchers {
        let Some(OnMatchKind::Matcher(ports)) = rm.on_match.unwrap().on_match else {
            panic!("no port tree");
        };
        let Some(TreeType::ExactMatchMap(map)) = tree(&ports).tree_type else {
            panic!("{ports:?}");
        };
        for r in &rm.ranges {
            for (port, target) in &map.map {
                let Some(OnMatchKind::Action(a)) = &target.on_match else {
                    panic!("{target:?}");
                };
                out.insert(format!("{}:{port}", r.address_prefix), a.name.clone());
            }
        }
    }
    out
}

/// A chain's only filter's typed config.
fn chain_config<M: Message + Default>(l: &Listener, chain: &str) -> M {
    let fc = l
        .filter_chains
        .iter()
        .find(|c| c.name == chain)
        .unwrap_or_else(|| panic!("no chain {chain}"));
    let Some(filter::ConfigType::TypedConfig(any)) = &fc.filters[0].config_type else {
        panic!("{fc:?}");
    };
    M::decode(any.value.as_slice()).unwrap()
}

async fn get_json(addr: std::net::SocketAddr, path: &str) -> Value {
    let (status, body) = waypoint_tests::http_request(addr, "GET", path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// `/memory`'s `allocated` (jemalloc's figure for the heap in use).
async fn allocated(admin: std::net::SocketAddr) -> u64 {
    let memory = get_json(admin, "/memory").await;
    memory["allocated"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("{memory}"))
}

fn type_of(v: &Value) -> &str {
    v["@type"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_admin_endpoints_as_istioctl_reads_them() {
    let net = Net::new();
    let ca = Ca::new("envoy admin test mesh").unwrap();
    let config = temp_dir("envoy-admin-config");
    write_ratings_config(&net, &config);
    std::fs::write(config.join("routes.yaml"), ROUTES_YAML).unwrap();
    let certs = temp_dir("envoy-admin-certs");
    let own = ca.issue(&spiffe("waypoint")).unwrap();
    own.write_to(&certs).unwrap();
    let _ratings = Pod::start(&net, &ca).await;
    let (child, addrs, stderr) = spawn_run(&config, &certs);
    let logs = collect(stderr);
    let admin = addrs["admin"];
    poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;
    let pod = format!("{}:9080", net.ip(1));
    // The heap before any JSON answer: the JSON answers below build the Envoy descriptors
    // (about 11 MiB) and must let them go (compared at `/memory` below).
    let allocated_before = allocated(admin).await;

    // /config_dump: Envoy's ConfigDump, in Envoy's order.
    let (_, text) = waypoint_tests::http_request(admin, "GET", "/config_dump?include_eds").await;
    let dump: Value = serde_json::from_str(&text).unwrap();
    let types: Vec<&str> = dump["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(type_of)
        .collect();
    assert_eq!(
        types,
        [
            "type.googleapis.com/envoy.admin.v3.BootstrapConfigDump",
            "type.googleapis.com/envoy.admin.v3.ClustersConfigDump",
            "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "type.googleapis.com/envoy.admin.v3.RoutesConfigDump",
            "type.googleapis.com/envoy.admin.v3.SecretsConfigDump",
            "type.googleapis.com/envoy.admin.v3.EndpointsConfigDump",
        ]
    );
    // The certificate as SDS secrets (`istioctl proxy-config secret`): the chain and the roots
    // as the files hold them, the key never.
    assert!(!text.contains("PRIVATE KEY") && text.contains("[redacted]"));
    let secrets = &dump["configs"][4]["dynamic_active_secrets"];
    let inline = |i: usize, path: &str| -> Vec<pem::Pem> {
        let b64 = secrets[i]["secret"]
            .pointer(path)
            .and_then(Value::as_str)
            .unwrap();
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        pem::parse_many(bytes).unwrap()
    };
    let file = |name: &str| pem::parse_many(std::fs::read(certs.join(name)).unwrap()).unwrap();
    assert_eq!(secrets[0]["name"], "default");
    assert_eq!(
        inline(0, "/tls_certificate/certificate_chain/inline_bytes"),
        file("cert-chain.pem")
    );
    assert_eq!(secrets[1]["name"], "ROOTCA");
    assert_eq!(
        inline(1, "/validation_context/trusted_ca/inline_bytes"),
        file("root-cert.pem")
    );
    // Decoded with the Envoy protos (the loader `waypoint translate` uses for an Envoy
    // waypoint's dump): the files' cluster and its endpoint.
    let loaded = routing::xds::json::load(&text).expect("an Envoy ConfigDump");
    let names: Vec<&str> = loaded
        .resources
        .clusters
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert!(names.contains(&RATINGS), "{names:?}");
    let cla = loaded
        .resources
        .endpoints
        .iter()
        .find(|e| e.cluster_name == RATINGS)
        .expect("the cluster's endpoints with include_eds");
    let lb = &cla.endpoints[0].lb_endpoints[0];
    let Some(envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(
        e,
    )) = &lb.host_identifier
    else {
        panic!("{lb:?}");
    };
    let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(sa)) =
        e.address.as_ref().and_then(|a| a.address.as_ref())
    else {
        panic!("{e:?}");
    };
    assert_eq!(sa.address, net.ip(1).to_string());

    // The listener istiod builds for a waypoint: `main_internal`, a chain per service port
    // named after its cluster, selected by VIP and port; an HTTP chain's routes through RDS under
    // its own name, a TCP chain's tcp_proxy to the port's cluster.
    let [main] = loaded.resources.listeners.as_slice() else {
        panic!("{:?}", loaded.resources.listeners);
    };
    assert_eq!(main.name, "main_internal");
    assert_eq!(
        chains_by_destination(main),
        BTreeMap::from([
            ("10.0.0.20:9080".to_string(), RATINGS.to_string()),
            ("10.0.0.30:9080".to_string(), DETAILS.to_string()),
            ("10.0.0.30:3306".to_string(), DETAILS_TCP.to_string()),
        ])
    );
    for chain in [RATINGS, DETAILS] {
        let hcm: HttpConnectionManager = chain_config(main, chain);
        let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
            panic!("{hcm:?}");
        };
        assert_eq!(rds.route_config_name, chain);
    }
    let tcp: TcpProxy = chain_config(main, DETAILS_TCP);
    assert_eq!(
        tcp.cluster_specifier,
        Some(tcp_proxy::ClusterSpecifier::Cluster(DETAILS_TCP.into()))
    );
    assert!(names.contains(&DETAILS_TCP), "{names:?}");

    // The route configurations: one virtual host per service port, the VirtualService's routes
    // (the 90/10 split as weighted clusters that are the dumped subset clusters), a `default`
    // route to the port's cluster where no VirtualService applies.
    let config_of = |name: &str| -> &RouteConfiguration {
        loaded
            .resources
            .routes
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no route configuration {name}"))
    };
    let vhost = &config_of(RATINGS).virtual_hosts[0];
    assert_eq!(
        (vhost.name.as_str(), vhost.domains.as_slice()),
        ("inbound|http|9080", &["*".to_string()][..])
    );
    let route_names: Vec<&str> = vhost.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(route_names, ["jason", "split"]);
    let action = |i: usize| match &vhost.routes[i].action {
        Some(route::Action::Route(a)) => a.cluster_specifier.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        action(0),
        Some(route_action::ClusterSpecifier::Cluster(RATINGS_V2.into()))
    );
    assert_eq!(
        vhost.routes[0].r#match.as_ref().unwrap().headers[0].name,
        "end-user"
    );
    let Some(route_action::ClusterSpecifier::WeightedClusters(split)) = action(1) else {
        panic!("{:?}", action(1));
    };
    let weights: Vec<(&str, u32)> = split
        .clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight.as_ref().unwrap().value))
        .collect();
    assert_eq!(weights, [(RATINGS_V1, 90), (RATINGS_V2, 10)]);
    for (cluster, _) in &weights {
        assert!(names.contains(cluster), "{cluster} not in {names:?}");
    }
    let config =
        &vhost.routes[1].metadata.as_ref().unwrap().filter_metadata["istio"].fields["config"];
    assert_eq!(
        config.kind,
        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(
            "/apis/networking.istio.io/v1/namespaces/default/virtual-service/ratings".into()
        ))
    );
    let details = &config_of(DETAILS).virtual_hosts[0].routes;
    assert_eq!(details.len(), 1);
    assert_eq!(details[0].name, "default");
    assert!(
        matches!(&details[0].action, Some(route::Action::Route(a))
            if a.cluster_specifier == Some(route_action::ClusterSpecifier::Cluster(DETAILS.into()))),
        "{:?}",
        details[0]
    );
    assert!(names.contains(&DETAILS), "{names:?}");

    // What istiod's config would be to a waypoint, the xDS front-end reads back as the files'
    // routing: the services on their VIPs, and the split over the subsets.
    let translated = routing::xds::translate(&loaded.resources, &Default::default())
        .expect("the files-mode dump translates");
    let back = &translated.snapshot;
    let Some(routing::Destination::Service { service, port }) =
        back.resolve_destination("10.0.0.20:9080".parse().unwrap())
    else {
        panic!("ratings VIP not served: {:?}", translated.warnings);
    };
    let req = routing::SimpleRequest::new("/ratings/0");
    let routing::RouteDecision::Route { route, .. } = back.route(service, port.number, &req) else {
        panic!("{:?}", back.route(service, port.number, &req));
    };
    let split: Vec<(Option<&str>, u32)> = route
        .destinations
        .iter()
        .map(|d| (d.subset.as_deref(), d.weight))
        .collect();
    assert_eq!(split, [(Some("v1"), 90), (Some("v2"), 10)]);

    // Without include_eds no endpoints; a mask keeps only the named fields.
    let plain = get_json(admin, "/config_dump").await;
    assert_eq!(plain["configs"].as_array().unwrap().len(), 5);
    let masked = get_json(admin, "/config_dump?mask=dynamic_active_clusters").await;
    let configs = masked["configs"].as_array().unwrap();
    assert_eq!(
        configs[0].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["@type"]
    );
    let clusters = configs[1]["dynamic_active_clusters"].as_array().unwrap();
    assert!(clusters.iter().any(|c| c["cluster"]["name"] == RATINGS));
    let masked = get_json(
        admin,
        "/config_dump?mask=dynamic_listeners,dynamic_route_configs",
    )
    .await;
    let configs = masked["configs"].as_array().unwrap();
    assert!(configs[1].get("dynamic_active_clusters").is_none());
    assert_eq!(
        configs[2]["dynamic_listeners"][0]["active_state"]["listener"]["name"],
        "main_internal"
    );
    let route_configs = configs[3]["dynamic_route_configs"].as_array().unwrap();
    assert!(route_configs
        .iter()
        .any(|r| r["route_config"]["name"] == RATINGS));
    let (status, body) =
        waypoint_tests::http_request(admin, "GET", "/config_dump?resource=dynamic_listeners").await;
    assert_eq!(status, 400, "{body}");

    // /clusters?format=json: what `istioctl proxy-config endpoint` lists.
    let clusters = get_json(admin, "/clusters?format=json").await;
    let ratings = clusters["cluster_statuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == RATINGS)
        .expect("ratings in /clusters");
    let host = &ratings["host_statuses"][0];
    assert_eq!(
        host["address"]["socket_address"]["address"],
        net.ip(1).to_string()
    );
    assert_eq!(host["address"]["socket_address"]["port_value"], 9080);
    assert_eq!(host["health_status"]["eds_health_status"], "HEALTHY");
    let (_, text) = waypoint_tests::http_request(admin, "GET", "/clusters").await;
    assert!(
        text.contains(&format!("{RATINGS}::{pod}::health_flags::healthy")),
        "{text}"
    );

    // /stats: Envoy's text, filters, JSON.
    let (_, stats) = waypoint_tests::http_request(admin, "GET", "/stats").await;
    assert!(stats.contains("server.live: 1\n"), "{stats}");
    assert!(
        stats.contains(&format!("cluster.{RATINGS}.membership_total: 1\n")),
        "{stats}"
    );
    let (_, server) =
        waypoint_tests::http_request(admin, "GET", "/stats?filter=%5Eserver%5C.").await;
    assert!(
        !server.is_empty() && server.lines().all(|l| l.starts_with("server.")),
        "{server}"
    );
    let (_, used) = waypoint_tests::http_request(admin, "GET", "/stats?usedonly").await;
    assert!(used.lines().all(|l| !l.ends_with(": 0")), "{used}");
    let json = get_json(admin, "/stats?format=json&filter=membership").await;
    assert!(json["stats"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == format!("cluster.{RATINGS}.membership_total") && s["value"] == 1));
    let (status, _) = waypoint_tests::http_request(admin, "GET", "/stats?filter=(").await;
    assert_eq!(status, 400);

    // /server_info, /certs, /memory.
    let info = get_json(admin, "/server_info").await;
    assert_eq!(info["state"], "LIVE");
    assert!(info["version"].as_str().unwrap().starts_with("waypoint/"));
    let certs_json = get_json(admin, "/certs").await;
    let chain = &certs_json["certificates"][0]["cert_chain"][0];
    assert_eq!(
        chain["subject_alt_names"][0]["uri"],
        spiffe("waypoint").to_string()
    );
    assert!(!chain["serial_number"].as_str().unwrap().is_empty());
    let allocated = allocated(admin).await;
    assert!(allocated > 0);
    // Every JSON answer above built the descriptors and dropped them (a pool kept for the
    // process's life is about 11 MiB; this allows 4).
    assert!(
        allocated < allocated_before + (4 << 20),
        "heap {allocated_before} → {allocated} bytes across the JSON answers"
    );

    // POST /logging without parameters lists the loggers (istioctl proxy-config log).
    let (status, body) = waypoint_tests::http_request(admin, "POST", "/logging").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.starts_with("active loggers:\n  default: info"),
        "{body}"
    );

    // POST /quitquitquit: the process drains and exits 0, as on SIGTERM.
    let (status, _) = waypoint_tests::http_request(admin, "GET", "/quitquitquit").await;
    assert_eq!(status, 405);
    let (status, body) = waypoint_tests::http_request(admin, "POST", "/quitquitquit").await;
    assert_eq!((status, body.trim()), (200, "OK"));
    let exit = wait_for_exit(child).await;
    assert_eq!(exit.code(), Some(0), "{}", logs.lock().unwrap().join("\n"));
}
