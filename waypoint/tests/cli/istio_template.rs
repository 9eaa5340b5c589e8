//! Drop-in for istiod's waypoint template: the binary started with exactly the arguments and
//! environment istiod renders for the `istio-proxy` container (fixture written from
//! `manifests/charts/istio-control/istio-discovery/files/waypoint.yaml`), in local-files mode with
//! file-based identity, comes up ready on the probe's port and path and serves traffic; and the
//! same container without the config overlay takes its routing config from istiod over xDS.

use std::collections::HashMap;
use std::process::Command;

use crate::common::*;
use waypoint::control::identity::{Ca, SpiffeId};
use waypoint_tests::{sim, Net};
use xds_client::testing::{AdsServer, AdsServerOptions, TestPki};

const FIXTURE: &str = include_str!("../fixtures/istiod-waypoint-container.json");

/// What the kubelet would put in the container's environment for a fieldRef/resourceFieldRef.
fn downward(source: &serde_json::Value) -> String {
    if let Some(path) = source["fieldRef"]["fieldPath"].as_str() {
        return match path {
            "metadata.name" => "waypoint-5c7d9f8b6-x2k4q",
            "metadata.namespace" => "bookinfo",
            "status.podIP" | "status.hostIP" => "127.0.0.1",
            "spec.serviceAccountName" => "waypoint",
            "spec.nodeName" => "node-1",
            other => panic!("fixture uses an unexpected fieldRef {other}"),
        }
        .to_string();
    }
    match source["resourceFieldRef"]["resource"].as_str() {
        Some("limits.cpu") => "2".into(),
        Some("limits.memory") => "1073741824".into(),
        other => panic!("fixture uses an unexpected source {other:?}"),
    }
}

/// Kubernetes' `$(VAR)` expansion in args.
fn expand(arg: &str, env: &HashMap<String, String>) -> String {
    let mut out = arg.to_string();
    for (k, v) in env {
        out = out.replace(&format!("$({k})"), v);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istiod_waypoint_template_runs_unchanged() {
    let net = Net::new();
    let ca = Ca::new("template test mesh").unwrap();
    let config = temp_dir("template-config");
    write_ratings_config(&net, &config);
    let certs = temp_dir("template-certs");
    let own_id: SpiffeId = "spiffe://cluster.local/ns/bookinfo/sa/waypoint"
        .parse()
        .unwrap();
    ca.issue(&own_id).unwrap().write_to(&certs).unwrap();
    let _ratings = Pod::start(&net, &ca).await;

    let fill = |s: &str| {
        s.replace("@CONFIG_DIR@", &config.to_string_lossy())
            .replace("@CERT_DIR@", &certs.to_string_lossy())
    };
    let container: serde_json::Value = serde_json::from_str(FIXTURE).unwrap();
    let mut env = HashMap::new();
    for e in container["env"].as_array().unwrap() {
        let name = e["name"].as_str().unwrap().to_string();
        let value = match e["value"].as_str() {
            Some(v) => fill(v),
            None => downward(&e["valueFrom"]),
        };
        env.insert(name, value);
    }
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| expand(a.as_str().unwrap(), &env))
        .collect();
    assert_eq!(args[..2], ["proxy", "waypoint"]);
    assert_eq!(
        args[3], "bookinfo.svc.cluster.local",
        "$(POD_NAMESPACE) expanded"
    );

    let mut cmd = Command::new(binary());
    cmd.env_clear().envs(&env).args(&args);
    // hbone, admin (15000), stats (15020), health (15021), prometheus (15090); the last three
    // on `0.0.0.0`, so on IPv6 as well where the host has it (istiod's Service is
    // `PreferDualStack`).
    let ipv6 = std::net::TcpListener::bind("[::1]:0").is_ok();
    let (child, addrs, stderr) = spawn_announcing(&mut cmd, if ipv6 { 8 } else { 5 });
    if ipv6 {
        for what in ["stats", "health", "prometheus"] {
            let (v4, v6) = (addrs[what], addrs[&format!("{what}-ipv6")]);
            assert!(v6.is_ipv6() && v6.port() == v4.port(), "{what}: {addrs:?}");
        }
    }
    let logs = collect(stderr);
    let probe = &container["readinessProbe"]["httpGet"];
    let probe_port = probe["port"].as_u64().unwrap() as u16;
    assert_eq!(addrs["health"].port(), probe_port, "{addrs:?}");
    for port in container["ports"].as_array().unwrap() {
        let p = port["containerPort"].as_u64().unwrap() as u16;
        assert!(
            addrs.values().any(|a| a.port() == p),
            "container port {} ({p}) has no listener: {addrs:?}",
            port["name"]
        );
    }
    assert_eq!(addrs["admin"].port(), 15000, "PROXY_CONFIG proxyAdminPort");
    assert_eq!(addrs["stats"].port(), 15020, "PROXY_CONFIG statusPort");

    let health = std::net::SocketAddr::from(([127, 0, 0, 1], probe_port));
    let path = probe["path"].as_str().unwrap();
    let (status, body) = poll_until(health, path, |s, _| s == 200).await;
    assert_eq!((status, body.trim()), (200, "ready"));

    let mut send = client_to(&ca, addrs["hbone"], &own_id, "10.0.0.20:9080").await;
    ok_request(&mut send, "template-1").await;
    drop(send);
    for port in [15020, 15090] {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let (status, metrics) =
            waypoint_tests::http_request(addr, "GET", "/stats/prometheus").await;
        assert_eq!(status, 200);
        assert!(
            metrics.contains("istio_requests_total{reporter=\"waypoint\""),
            "{port}: {metrics}"
        );
    }

    sigterm_and_wait(child).await;
    let logs = logs.lock().unwrap().join("\n");
    // --proxyLogLevel warning: nothing at info level reached stderr.
    assert!(!logs.contains(" INFO "), "{logs}");

    // A certificate for another service account is refused at once, naming both identities.
    let mut wrong = env.clone();
    wrong.insert("SERVICE_ACCOUNT".into(), "reviews".into());
    let out = Command::new(binary())
        .env_clear()
        .envs(&wrong)
        .args(&args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("spiffe://cluster.local/ns/bookinfo/sa/reviews")
            && stderr.contains(&own_id.to_string()),
        "{stderr}"
    );

    // The same container without the files overlay: routing config from istiod over xDS. The
    // test ADS server stands in for istiod at XDS_ADDRESS (PROXY_CONFIG's discoveryAddress names
    // the real one), verified with XDS_ROOT_CA, authenticated by the token at XDS_TOKEN.
    let pki = TestPki::new();
    let server = AdsServer::start(
        "127.0.0.1:0".parse().unwrap(),
        &pki,
        AdsServerOptions::with_token("template-token"),
    )
    .await
    .unwrap();
    std::fs::write(certs.join("istiod-root.pem"), pki.root_pem()).unwrap();
    std::fs::write(certs.join("istio-token"), "template-token").unwrap();
    let mut pods = Vec::new();
    for (host, name, sa) in [
        (6, "ratings-v1", "bookinfo-ratings"),
        (7, "reviews-v1", "bookinfo-reviews"),
        (8, "reviews-v2", "bookinfo-reviews"),
    ] {
        pods.push(Pod::start_as(&net, &ca, host, name, sa).await);
    }
    crate::xds::serve(&server, &crate::xds::bookinfo(&net));
    let mut xds_env = env.clone();
    xds_env.remove("WAYPOINT_CONFIG_DIR");
    let mut proxy_config: serde_json::Value =
        serde_json::from_str(&xds_env["PROXY_CONFIG"]).unwrap();
    proxy_config["proxyMetadata"] = serde_json::json!({});
    xds_env.insert("PROXY_CONFIG".into(), proxy_config.to_string());
    xds_env.insert("XDS_ADDRESS".into(), server.address());
    xds_env.insert(
        "XDS_ROOT_CA".into(),
        certs.join("istiod-root.pem").to_string_lossy().into(),
    );
    xds_env.insert(
        "XDS_TOKEN".into(),
        certs.join("istio-token").to_string_lossy().into(),
    );
    let mut cmd = Command::new(binary());
    cmd.env_clear().envs(&xds_env).args(&args);
    let (child, addrs, _stderr) = spawn_announcing(&mut cmd, 5);
    let (status, _) = poll_until(health, path, |s, _| s == 200).await;
    assert_eq!(status, 200);
    let node = server.requests()[0].node.clone().expect("node");
    assert_eq!(
        node.id,
        "waypoint~127.0.0.1~waypoint-5c7d9f8b6-x2k4q.bookinfo~bookinfo.svc.cluster.local"
    );
    let mut send = client_to(&ca, addrs["hbone"], &own_id, "10.96.0.12:9080").await;
    let (parts, _) = sim::get(&mut send, "reviews:9080", "/reviews/1", &[])
        .await
        .unwrap();
    assert_eq!(parts.status, 200);
    assert!(parts.headers["x-pod"]
        .to_str()
        .unwrap()
        .starts_with("reviews-v"));
    drop(send);
    sigterm_and_wait(child).await;
}
