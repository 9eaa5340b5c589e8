//! `waypoint run --xds` fed what istiod 1.23 sends (routing/tests/fixtures/xds/releases_1_23.json:
//! chains named `inbound-vip|<port>||<host>-http` / `-tcp`, two workloads bound to the waypoint
//! behind the application-protocol matcher on `direct-http` / `direct-tcp`). The real binary,
//! real pods behind real HBONE, on loopback: service VIPs are routed with their policies, and a
//! pod addressed by its own IP is reached over HBONE, HTTP through `direct-http` (with the
//! waypoint-wide policy) and anything else through `direct-tcp`, on a port no service has.

use std::net::SocketAddr;

use crate::common::*;
use crate::xds::{serve, wait_ack};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint::control::identity::Ca;
use waypoint_tests::{sim, spiffe, xds_run_command, Net, TRUST_DOMAIN};

const FIXTURE: &str = include_str!("../../../routing/tests/fixtures/xds/releases_1_23.json");
const TOKEN: &str = "istio-token-for-the-releases-test";

/// The fixture on this test's net: pod 10.244.5.N → @N; HTTP apps listen on :9080 here.
fn doc(net: &Net) -> Value {
    let mut text = FIXTURE
        .replace("example.org", TRUST_DOMAIN)
        .replace("10.244.5.1:8080", "10.244.5.1:9080")
        .replace("10.244.5.3:9000", "10.244.5.3:9080");
    for n in [1, 2, 3, 9] {
        text = text.replace(&format!("10.244.5.{n}"), &net.ip(n).to_string());
    }
    serde_json::from_str(&text).unwrap()
}

/// GET `path` through a tunnel to `dst`: status and the pod that answered.
async fn get(ca: &Ca, waypoint: SocketAddr, dst: &str, host: &str, path: &str) -> (u16, String) {
    let mut send = client_to(ca, waypoint, &spiffe("waypoint"), dst).await;
    let (parts, _) = sim::get(&mut send, host, path, &[]).await.unwrap();
    let pod = parts
        .headers
        .get("x-pod")
        .map_or(String::new(), |v| v.to_str().unwrap().to_string());
    (parts.status.as_u16(), pod)
}

/// Bytes through a tunnel to `dst`, and what comes back.
async fn echo(ca: &Ca, waypoint: SocketAddr, dst: SocketAddr, msg: &[u8]) -> Vec<u8> {
    let client = sim::ZtunnelClient::new(
        ca.issue(&spiffe("productpage")).unwrap().workload,
        waypoint,
        spiffe("waypoint"),
    );
    let mut tunnel = client.tunnel(dst).await.unwrap();
    tunnel.write_all(msg).await.unwrap();
    let mut back = vec![0; msg.len()];
    tunnel.read_exact(&mut back).await.unwrap();
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_istio_1_23_services_and_bound_pods() {
    let net = Net::new();
    let Istiod {
        ca, dir, server, ..
    } = Istiod::start("xds releases test mesh", "xds-releases", TOKEN).await;
    let web = Pod::start_as(&net, &ca, 1, "web-v1", "web").await;
    let _mixed = Pod::start_as(&net, &ca, 3, "mixed-v1", "mixed").await;
    let solo = Pod::start_as(&net, &ca, 9, "solo", "solo").await;
    // db (TCP) at @2:5432 behind its HBONE terminator; a TCP app on the bound pod @9:5000.
    let db_cert = ca.issue(&spiffe("db")).unwrap();
    let _db_pod = sim::start_pod(SocketAddr::new(net.ip(2), 15008), &db_cert.workload)
        .await
        .unwrap();
    let _db = sim::start_app(
        SocketAddr::new(net.ip(2), 5432),
        "db-v1",
        sim::AppKind::TcpEcho,
    )
    .await
    .unwrap();
    let _solo_tcp = sim::start_app(
        SocketAddr::new(net.ip(9), 5000),
        "solo-tcp",
        sim::AppKind::TcpEcho,
    )
    .await
    .unwrap();

    let versions = serve(&server, &doc(&net));
    let mut cmd = xds_run_command(&binary(), &server.address(), &dir, "waypoint-releases-x");
    let (_child, addrs, stderr) = spawn_announcing(&mut cmd, 4);
    let _logs = collect(stderr);
    let (waypoint, admin) = (addrs["hbone"], addrs["admin"]);
    poll_until(admin, "/ready", |s, _| s == 200).await;
    wait_ack(&server, &versions).await;

    // Service VIPs from `-http` / `-tcp` chains, with the service's policy (DENY /admin).
    let vip = "10.96.5.1:8080";
    assert_eq!(
        get(&ca, waypoint, vip, "web:8080", "/").await,
        (200, "web-v1".into())
    );
    let before = web.requests();
    assert_eq!(get(&ca, waypoint, vip, "web:8080", "/admin").await.0, 403);
    assert_eq!(
        web.requests(),
        before,
        "the denied request never reached web"
    );
    assert_eq!(
        get(&ca, waypoint, "10.96.5.3:9000", "mixed:9000", "/").await,
        (200, "mixed-v1".into()),
        "the sniffed port's HTTP chain"
    );
    assert_eq!(
        echo(
            &ca,
            waypoint,
            "10.96.5.2:5432".parse().unwrap(),
            b"select 1;\n"
        )
        .await,
        b"select 1;\n",
        "the TCP chain"
    );

    // A bound pod in no service, by its own IP: HTTP through direct-http (waypoint-wide DENY
    // /secret applies), anything else through direct-tcp, on ports no service has.
    let pod = format!("{}:9080", net.ip(9));
    assert_eq!(
        get(&ca, waypoint, &pod, "solo", "/").await,
        (200, "solo".into())
    );
    let before = solo.requests();
    assert_eq!(get(&ca, waypoint, &pod, "solo", "/secret").await.0, 403);
    assert_eq!(solo.requests(), before);
    let tcp = SocketAddr::new(net.ip(9), 5000);
    assert_eq!(
        echo(&ca, waypoint, tcp, b"hello over direct-tcp\n").await,
        b"hello over direct-tcp\n"
    );
    // web's pod is bound too: addressed directly it is forwarded as direct-http does, whatever
    // the Host (the service's own policy is not the pod chain's).
    let before = web.requests();
    assert_eq!(
        get(
            &ca,
            waypoint,
            &format!("{}:9080", net.ip(1)),
            "web:8080",
            "/admin"
        )
        .await,
        (200, "web-v1".into())
    );
    assert_eq!(web.requests(), before + 1);
}
