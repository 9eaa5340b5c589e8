//! `waypoint run --xds` with a ServiceEntry `resolution: DNS` bound to the waypoint
//! (routing/tests/fixtures/xds/dns_serviceentry_1_24.json laid over bookinfo.json): the
//! STRICT_DNS cluster's hostnames are resolved for real against an in-test DNS server
//! (`--dns-server`), traffic reaches the app at the address it answers, and when the answer
//! changes (1 s TTL, `respect_dns_ttl`) new connections go to the new address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::common::*;
use crate::xds::{bookinfo, serve, wait_ack};
use crate::xds_upstreams::plain_app;
use serde_json::Value;
use waypoint::control::identity::Ca;
use waypoint_tests::dns::DnsServer;
use waypoint_tests::{sim, spiffe, xds_run_command, Net, TRUST_DOMAIN};

const OVERLAY: &str =
    include_str!("../../../routing/tests/fixtures/xds/dns_serviceentry_1_24.json");
const TOKEN: &str = "istio-token-for-the-test";

fn v4(ip: IpAddr) -> std::net::Ipv4Addr {
    match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => panic!("the test net is IPv4"),
    }
}

/// bookinfo with the overlay's clusters in place of ratings' and productpage's (their EDS
/// assignments dropped).
fn doc(net: &Net) -> Value {
    let mut doc = bookinfo(net);
    let over: Value = serde_json::from_str(OVERLAY).unwrap();
    let over = over["resources"].as_array().unwrap().clone();
    let names: Vec<&str> = over.iter().filter_map(|r| r["name"].as_str()).collect();
    doc.as_array_mut().unwrap().retain(|r| {
        let n = r
            .get("name")
            .or_else(|| r.get("cluster_name"))
            .and_then(Value::as_str)
            .unwrap_or("");
        !names.contains(&n)
    });
    doc.as_array_mut().unwrap().extend(over);
    doc
}

/// The `x-pod` of a GET to ratings through the waypoint, or the status when not 200.
async fn ratings(ca: &Ca, waypoint: SocketAddr) -> Result<String, u16> {
    let mut send = client_to(ca, waypoint, &spiffe("waypoint"), "10.96.0.11:9080").await;
    let (parts, _) = sim::get(&mut send, "ratings:9080", "/ratings/1", &[])
        .await
        .unwrap();
    if parts.status != 200 {
        return Err(parts.status.as_u16());
    }
    Ok(parts.headers["x-pod"].to_str().unwrap().to_string())
}

/// Requests until one is answered by `pod` (the snapshot built from a new DNS answer is
/// published just after the answer; the DNS server's query counter says it was asked).
async fn until_answered_by(ca: &Ca, waypoint: SocketAddr, pod: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = ratings(ca, waypoint).await;
        if got.as_deref() == Ok(pod) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ratings never answered by {pod}; last: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_dns_service_entry_follows_the_dns_answer() {
    let net = Net::new();
    let Istiod {
        ca, dir, server, ..
    } = Istiod::start("xds dns mesh", "xds-dns", TOKEN).await;
    let _ = TRUST_DOMAIN;

    // Two apps outside the mesh; DNS first answers with the first.
    let first = plain_app(SocketAddr::new(net.ip(3), 9080), "dns-first", None).await;
    let _second = plain_app(SocketAddr::new(net.ip(4), 9080), "dns-second", None).await;
    let dns = DnsServer::start().await;
    for host in ["ratings-a.example.com", "ratings-b.example.com"] {
        dns.set(host, &[v4(net.ip(3))], 1);
    }
    dns.set("productpage.example.com", &[v4(net.ip(2))], 1);

    let pushed = serve(&server, &doc(&net));
    let mut cmd = xds_run_command(&binary(), &server.address(), &dir, "waypoint-5f6d7c-dnsdn");
    cmd.arg("--dns-server").arg(dns.addr.to_string());
    let (_child, addrs, stderr) = spawn_announcing(&mut cmd, 4);
    let logs = collect(stderr);
    poll_until(addrs["admin"], "/ready", |s, _| s == 200).await;
    wait_ack(&server, &pushed).await;
    let waypoint = addrs["hbone"];

    // Resolved for real against the in-test server; traffic goes straight to the address.
    assert!(
        dns.wait_queries("ratings-a.example.com", 1, Duration::from_secs(10))
            .await,
        "the waypoint never asked the DNS server; logs: {:?}",
        logs.lock().unwrap()
    );
    until_answered_by(&ca, waypoint, "dns-first").await;
    let head = first.lock().unwrap().first_bytes[0].clone();
    assert!(head.starts_with("GET /ratings/1 HTTP/1.1"), "{head}");

    // The answer changes; after the next query (TTL 1 s) new connections go to the new address.
    for host in ["ratings-a.example.com", "ratings-b.example.com"] {
        dns.set(host, &[v4(net.ip(4))], 1);
    }
    let asked = dns.queries("ratings-a.example.com");
    assert!(
        dns.wait_queries("ratings-a.example.com", asked + 1, Duration::from_secs(10))
            .await,
        "not asked again within the TTL"
    );
    until_answered_by(&ca, waypoint, "dns-second").await;

    // The resolver fails (SERVFAIL): the last good addresses keep serving.
    for host in ["ratings-a.example.com", "ratings-b.example.com"] {
        dns.fail(host);
    }
    let asked = dns.queries("ratings-a.example.com");
    assert!(
        dns.wait_queries("ratings-a.example.com", asked + 1, Duration::from_secs(10))
            .await,
        "not asked again within the TTL"
    );
    // Handled as a failure (not as "no such name"), logged when the lookup returns.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !logs
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("DNS lookup failed"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no lookup failure logged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(ratings(&ca, waypoint).await, Ok("dns-second".to_string()));
}

/// The resolver on its own: a question is answered from the in-test server, re-asked after the
/// TTL, and forgotten (task stopped, answer dropped) once no cluster asks it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_tasks_follow_the_config() {
    use routing::dns::{DnsFamily, DnsQuery, DnsTarget};
    let server = DnsServer::start().await;
    server.set("one.example.com", &["192.0.2.1".parse().unwrap()], 1);
    let dns = waypoint::control::dns::Dns::new(Some(server.addr)).unwrap();
    let query = DnsQuery {
        hostname: "one.example.com".into(),
        family: DnsFamily::V4,
    };
    let target = DnsTarget {
        query: query.clone(),
        refresh: Duration::from_secs(60),
        respect_ttl: true,
        jitter: Duration::ZERO,
    };
    let mut changed = dns.changed();
    dns.sync(std::slice::from_ref(&target));
    tokio::time::timeout(Duration::from_secs(10), changed.changed())
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(
        dns.answers().get(&query),
        Some(&vec!["192.0.2.1".parse::<IpAddr>().unwrap()])
    );
    // TTL 1 s (not the 60 s refresh): asked again.
    assert!(
        server
            .wait_queries("one.example.com", 2, Duration::from_secs(10))
            .await
    );
    dns.sync(&[]);
    assert!(dns.resolving().is_empty());
    assert!(dns.answers().is_empty());
}
