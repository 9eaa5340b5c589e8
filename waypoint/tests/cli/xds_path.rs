//! `waypoint run --xds` reads each service's path handling from its chain's connection manager
//! (routing/tests/fixtures/xds/path_normalization.json: one service per meshConfig
//! `pathNormalization`, as istiod writes it, each with a DENY on `/admin`). The process flag
//! stays at its default (BASE) throughout: what differs per service comes from xDS.

use std::net::SocketAddr;

use crate::common::*;
use crate::xds::{serve, wait_ack};
use serde_json::Value;
use waypoint::control::identity::Ca;
use waypoint_tests::{sim, spiffe, xds_run_command, Net, TRUST_DOMAIN};

const FIXTURE: &str = include_str!("../../../routing/tests/fixtures/xds/path_normalization.json");
const TOKEN: &str = "istio-token-for-the-path-test";

/// The fixture on this test's net: pod 10.244.4.N → @N.
fn doc(net: &Net) -> Value {
    let mut text = FIXTURE.replace("example.org", TRUST_DOMAIN);
    for n in 1..=6 {
        text = text.replace(&format!("10.244.4.{n}:"), &format!("{}:", net.ip(n)));
    }
    serde_json::from_str(&text).unwrap()
}

/// GET `path` on service pN through the waypoint: status, the `location` header, the path the
/// app saw (if it was reached).
async fn get(
    ca: &Ca,
    waypoint: SocketAddr,
    n: u8,
    path: &str,
) -> (u16, Option<String>, Option<String>) {
    let mut send = client_to(
        ca,
        waypoint,
        &spiffe("waypoint"),
        &format!("10.96.4.{n}:9080"),
    )
    .await;
    let (parts, body) = sim::get(&mut send, &format!("p{n}:9080"), path, &[])
        .await
        .unwrap();
    let location = parts
        .headers
        .get("location")
        .map(|v| v.to_str().unwrap().to_string());
    let seen = (parts.status == 200).then(|| {
        let echo: sim::Echo = serde_json::from_slice(&body).unwrap();
        echo.path
    });
    (parts.status.as_u16(), location, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_hcm_path_handling_is_per_service() {
    let net = Net::new();
    let Istiod {
        ca, dir, server, ..
    } = Istiod::start("xds path test mesh", "xds-path", TOKEN).await;
    let mut pods = Vec::new();
    for n in 1..=6 {
        pods.push(Pod::start_as(&net, &ca, n, &format!("p{n}-v1"), "app").await);
    }
    let versions = serve(&server, &doc(&net));
    let mut cmd = xds_run_command(&binary(), &server.address(), &dir, "waypoint-path-x");
    let (_child, addrs, stderr) = spawn_announcing(&mut cmd, 4);
    let _logs = collect(stderr);
    let (waypoint, admin) = (addrs["hbone"], addrs["admin"]);
    poll_until(admin, "/ready", |s, _| s == 200).await;
    wait_ack(&server, &versions).await;

    let app = |n: u8| pods[n as usize - 1].requests();
    // MERGE_SLASHES (p3): `//admin` meets the DENY on /admin; BASE (p1) leaves it alone.
    let before = app(3);
    assert_eq!(get(&ca, waypoint, 3, "//admin").await, (403, None, None));
    assert_eq!(app(3), before, "the denied request never reached the app");
    assert_eq!(
        get(&ca, waypoint, 1, "//admin").await,
        (200, None, Some("//admin".into()))
    );
    // NONE (p2): `/x/../admin` is not normalized, so the app gets it as sent; BASE denies it.
    assert_eq!(
        get(&ca, waypoint, 2, "/x/../admin").await,
        (200, None, Some("/x/../admin".into()))
    );
    assert_eq!(
        get(&ca, waypoint, 1, "/x/../admin").await,
        (403, None, None)
    );
    assert_eq!(
        get(&ca, waypoint, 3, "/a//b/./c").await,
        (200, None, Some("/a/b/c".into()))
    );
    // DECODE_AND_MERGE_SLASHES (p4): `%2F` decoded before the policies.
    assert_eq!(
        get(&ca, waypoint, 4, "/x%2F..%2Fadmin").await,
        (403, None, None)
    );
    assert_eq!(
        get(&ca, waypoint, 4, "/a%2fb").await,
        (200, None, Some("/a/b".into()))
    );
    // Envoy's other two actions: REJECT_REQUEST (p5) answers 400, UNESCAPE_AND_REDIRECT (p6)
    // 307 to the unescaped, normalized path; neither reaches the app.
    let (before5, before6) = (app(5), app(6));
    assert_eq!(get(&ca, waypoint, 5, "/a%2Fb").await, (400, None, None));
    assert_eq!(
        get(&ca, waypoint, 6, "/x%2F..%2Fadmin?q=1").await,
        (307, Some("/admin?q=1".into()), None)
    );
    assert_eq!((app(5), app(6)), (before5, before6));
    assert_eq!(
        get(&ca, waypoint, 6, "/a/b").await,
        (200, None, Some("/a/b".into()))
    );

    // `/config_dump` shows each port's handling.
    let (_, dump) =
        waypoint_tests::http_request(admin, "GET", "/config_dump?format=waypoint").await;
    let dump: Value = serde_json::from_str(&dump).unwrap();
    let p6 = dump["config"]["snapshot"]["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"]["hostname"] == "p6.default.svc.cluster.local")
        .unwrap();
    assert_eq!(
        p6["service"]["ports"][0]["path"]["escaped_slashes"],
        "UNESCAPE_AND_REDIRECT"
    );
}

/// `explain` reads the same per-service handling from a saved xDS config.
#[test]
fn explain_uses_the_services_hcm_path_handling() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../routing/tests/fixtures/xds/path_normalization.json"
    );
    let explain = |url: &str| -> Value {
        let out = std::process::Command::new(binary())
            .args([
                "explain",
                "--xds-dump",
                fixture,
                "--output",
                "json",
                "GET",
                url,
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let e = explain("http://p3.default.svc.cluster.local:9080//admin");
    assert_eq!(e["path"]["normalized"], "/admin", "{e}");
    assert_eq!(e["authorization"]["status"], 403, "{e}");
    let e = explain("http://p2.default.svc.cluster.local:9080/x/../admin");
    assert_eq!(e["path"]["normalized"], Value::Null, "{e}");
    assert_eq!(e["authorization"]["status"], Value::Null, "{e}");
    let e = explain("http://p6.default.svc.cluster.local:9080/a%2Fb");
    assert_eq!(e["path"]["local_reply"], "307 location: /a/b", "{e}");
}
