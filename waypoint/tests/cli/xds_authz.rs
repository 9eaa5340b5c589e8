//! `waypoint run --xds` with a CUSTOM AuthorizationPolicy as istiod writes it for an
//! `envoyExtAuthzHttp` provider (routing/tests/fixtures/xds/ext_authz_custom.json: shadow RBAC
//! with `istio-ext-authz-…` policy names, the `ext_authz` filter with filterEnabledMetadata,
//! an `outbound|8000||ext-authz.default.svc.cluster.local` cluster, statusOnError 503,
//! failureModeAllow false). The authorizer is a real HTTP server on loopback.
//!
//! The one substitution: istiod names the authorizer by its cluster FQDN, which the waypoint
//! dials through the system resolver (in a cluster: kube-dns, the connection then captured by
//! ztunnel). The test has no cluster DNS, so the cluster and URI name `localhost:<port>`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::common::*;
use crate::xds::{serve, wait_ack};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use waypoint_tests::{sim, spiffe, xds_run_command, Net, TRUST_DOMAIN};

pub(crate) const FIXTURE: &str =
    include_str!("../../../routing/tests/fixtures/xds/ext_authz_custom.json");
const TOKEN: &str = "istio-token-for-the-ext-authz-test";
pub(crate) const VIP: &str = "10.96.5.1:9080";
pub(crate) const DENIED: &str = "denied by the test authorizer";

/// An HTTP authorizer: `x-ext-authz: allow` → 200, anything else → 403 with [`DENIED`].
/// Counts the checks it answers.
async fn authorizer() -> (SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    authorizer_at("127.0.0.1:0".parse().unwrap()).await
}

/// [`authorizer`] on `addr`.
pub(crate) async fn authorizer_at(
    addr: SocketAddr,
) -> (SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let checks = Arc::new(AtomicU64::new(0));
    let counted = checks.clone();
    let task = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                    counted.fetch_add(1, Ordering::Relaxed);
                    let allow = req
                        .headers()
                        .get("x-ext-authz")
                        .is_some_and(|v| v == "allow");
                    let resp = if allow {
                        http::Response::new(Full::new(Bytes::new()))
                    } else {
                        http::Response::builder()
                            .status(403)
                            .body(Full::new(Bytes::from_static(DENIED.as_bytes())))
                            .unwrap()
                    };
                    async move { Ok::<_, std::convert::Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    (addr, checks, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_custom_policy_calls_the_ext_authz_provider() {
    let net = Net::new();
    let Istiod {
        ca, dir, server, ..
    } = Istiod::start("xds ext_authz test mesh", "xds-authz", TOKEN).await;
    let (authz_addr, checks, authz) = authorizer().await;
    let app = Pod::start_as(&net, &ca, 1, "reviews-v1", "bookinfo-reviews").await;

    let text = FIXTURE
        .replace("example.org", TRUST_DOMAIN)
        .replace("10.244.5.1:", &format!("{}:", net.ip(1)))
        .replace(
            "ext-authz.default.svc.cluster.local:8000",
            &format!("localhost:{}", authz_addr.port()),
        )
        .replace(
            "outbound|8000||ext-authz.default.svc.cluster.local",
            &format!("outbound|{}||localhost", authz_addr.port()),
        );
    let doc: Value = serde_json::from_str(&text).unwrap();
    let versions = serve(&server, &doc["resources"]);
    let mut cmd = xds_run_command(&binary(), &server.address(), &dir, "waypoint-authz-x");
    let (_child, addrs, stderr) = spawn_announcing(&mut cmd, 4);
    let logs = collect(stderr);
    let (waypoint, admin) = (addrs["hbone"], addrs["admin"]);
    poll_until(admin, "/ready", |s, _| s == 200).await;
    wait_ack(&server, &versions).await;

    let mut send = client_to(&ca, waypoint, &spiffe("waypoint"), VIP).await;
    let mut get = async |path: &str, headers: &[(&str, &str)]| {
        let (before_app, before_checks) = (app.requests(), checks.load(Ordering::Relaxed));
        let (parts, body) = sim::get(&mut send, "reviews:9080", path, headers)
            .await
            .unwrap();
        (
            parts.status.as_u16(),
            String::from_utf8_lossy(&body).to_string(),
            app.requests() - before_app,
            checks.load(Ordering::Relaxed) - before_checks,
        )
    };

    // The CUSTOM rule matches /admin*: the authorizer decides.
    let (status, body, reached, asked) = get("/admin/users", &[("x-ext-authz", "allow")]).await;
    assert_eq!((status, reached, asked), (200, 1, 1), "{body}");
    let echo: sim::Echo = serde_json::from_str(&body).unwrap();
    assert_eq!(echo.path, "/admin/users");
    let (status, body, reached, asked) = get("/admin/users", &[("x-ext-authz", "deny")]).await;
    assert_eq!((status, body.as_str(), reached, asked), (403, DENIED, 0, 1));
    let (status, body, reached, asked) = get("/admin", &[]).await;
    assert_eq!((status, body.as_str(), reached, asked), (403, DENIED, 0, 1));
    // Outside the rule: no check, straight to the app.
    let (status, _, reached, asked) = get("/public", &[("x-ext-authz", "deny")]).await;
    assert_eq!((status, reached, asked), (200, 1, 0));

    // The authorizer gone (its listener closed): statusOnError (503), failureModeAllow false, the app untouched.
    authz.abort();
    assert!(authz.await.unwrap_err().is_cancelled());
    let mut down = client_to(&ca, waypoint, &spiffe("waypoint"), VIP).await;
    let before = app.requests();
    let (parts, _) = sim::get(
        &mut down,
        "reviews:9080",
        "/admin",
        &[("x-ext-authz", "allow")],
    )
    .await
    .unwrap();
    assert_eq!(parts.status, 503);
    assert_eq!(app.requests(), before);
    let logs = logs.lock().unwrap().join("\n");
    assert!(!logs.contains("xDS update rejected"), "{logs}");
}
