//! Files mode: a ServiceEntry with `resolution: DNS` and no endpoints is reached at the
//! addresses its host resolves to (real resolution against an in-test DNS server named by
//! `--dns-server`), dialled directly, and follows a changed answer.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::common::*;
use crate::xds_upstreams::plain_app;
use waypoint::control::identity::Ca;
use waypoint_tests::dns::DnsServer;
use waypoint_tests::{sim, spiffe, Net};

const HOST: &str = "api.example.com";

fn v4(ip: IpAddr) -> std::net::Ipv4Addr {
    match ip {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(_) => panic!("the test net is IPv4"),
    }
}

async fn get(client: &sim::ZtunnelClient, vip: SocketAddr) -> Result<String, String> {
    let mut send = client.http1(vip).await.map_err(|e| e.to_string())?;
    let (parts, _) = sim::get(&mut send, "api.example.com:9080", "/x", &[])
        .await
        .map_err(|e| e.to_string())?;
    match parts.headers.get("x-pod") {
        Some(p) if parts.status == 200 => Ok(p.to_str().unwrap().to_string()),
        _ => Err(format!("status {}", parts.status)),
    }
}

async fn until_answered_by(client: &sim::ZtunnelClient, vip: SocketAddr, pod: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = get(client, vip).await;
        if got.as_deref() == Ok(pod) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never answered by {pod}; last: {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_dns_service_entry_follows_the_dns_answer() {
    let net = Net::new();
    let ca = Ca::new("files dns mesh").unwrap();
    let _first = plain_app(SocketAddr::new(net.ip(3), 9080), "dns-first", None).await;
    let _second = plain_app(SocketAddr::new(net.ip(4), 9080), "dns-second", None).await;
    let dns = DnsServer::start().await;
    dns.set(HOST, &[v4(net.ip(3))], 1);

    let vip = SocketAddr::new(net.ip(30), 9080);
    let config = temp_dir("files-dns-config");
    std::fs::write(
        config.join("se.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: api\n  namespace: default\nspec:\n  hosts: [{HOST}]\n  addresses: [{}]\n  ports:\n  - number: 9080\n    name: http\n    protocol: HTTP\n  resolution: DNS\n",
            vip.ip()
        ),
    )
    .unwrap();
    let certs = temp_dir("files-dns-certs");
    ca.issue(&spiffe("waypoint"))
        .unwrap()
        .write_to(&certs)
        .unwrap();
    let mut args = cert_args(&certs);
    args.extend(["--dns-server".into(), dns.addr.to_string().into()]);
    let (_child, addrs, stderr) = spawn_run_with(&config, &args);
    let _logs = collect(stderr);
    poll_until(addrs["health"], "/healthz/ready", |s, _| s == 200).await;
    let client = sim::ZtunnelClient::new(
        ca.issue(&spiffe("productpage")).unwrap().workload,
        addrs["hbone"],
        spiffe("waypoint"),
    );

    assert!(
        dns.wait_queries(HOST, 1, Duration::from_secs(10)).await,
        "the waypoint never asked the DNS server"
    );
    until_answered_by(&client, vip, "dns-first").await;

    dns.set(HOST, &[v4(net.ip(4))], 1);
    let asked = dns.queries(HOST);
    assert!(
        dns.wait_queries(HOST, asked + 1, Duration::from_secs(10))
            .await,
        "not asked again within the TTL"
    );
    until_answered_by(&client, vip, "dns-second").await;
}
