//! The admin endpoints in Envoy's formats, read the way `istioctl proxy-config` reads them:
//! `/config_dump` (decoded with the Envoy admin protos), `/clusters?format=json` (its endpoint
//! view), `/server_info`, `/certs`, `/memory`, `/logging` without parameters, and
//! `/quitquitquit`.

use serde_json::Value;

use crate::common::*;
use waypoint::control::identity::Ca;
use waypoint_tests::{spiffe, Net};

const RATINGS: &str = "inbound-vip|9080|http|ratings.default.svc.cluster.local";

async fn get_json(addr: std::net::SocketAddr, path: &str) -> Value {
    let (status, body) = waypoint_tests::http_request(addr, "GET", path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
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
    let certs = temp_dir("envoy-admin-certs");
    let own = ca.issue(&spiffe("waypoint")).unwrap();
    own.write_to(&certs).unwrap();
    let _ratings = Pod::start(&net, &ca).await;
    let (child, addrs, stderr) = spawn_run(&config, &certs);
    let logs = collect(stderr);
    let admin = addrs["admin"];
    poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;
    let pod = format!("{}:9080", net.ip(1));

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
    let memory = get_json(admin, "/memory").await;
    let allocated: u64 = memory["allocated"].as_str().unwrap().parse().unwrap();
    assert!(allocated > 0, "{memory}");

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
