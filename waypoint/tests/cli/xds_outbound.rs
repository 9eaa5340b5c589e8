//! `waypoint run --xds` with an `outbound|…` cluster (routing/tests/fixtures/xds/outbound_1_24.json,
//! istiod 1.24.6, laid over bookinfo.json): the reviews VirtualService sends 20 % to
//! ratings-ext, a service this waypoint does not serve. That share reaches ratings-ext's pods
//! as istiod's transport socket matches say: the ambient pod through its node's HBONE port
//! (a CONNECT tunnel is counted there), the pod outside the mesh directly (it has no HBONE port
//! at all), and a sidecar pod (`{tlsMode: istio}`, added here) directly in Istio mutual TLS: the
//! waypoint's certificate, SNI `outbound_.9080_._.<host>`, ALPN `istio-peer-exchange`, `istio`.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::common::*;
use crate::xds::{bookinfo, reviews_split, serve, tunnel, wait_ack};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use waypoint::control::identity::Ca;
use waypoint_tests::{sim, spiffe, xds_run_command, Net, TRUST_DOMAIN};

const OVERLAY: &str = include_str!("../../../routing/tests/fixtures/xds/outbound_1_24.json");
const TOKEN: &str = "istio-token-for-the-test";
const REVIEWS_VIP: &str = "10.96.0.12:9080";

/// bookinfo with the fixture's outbound cluster and EDS added and its 80 / 20 reviews split
/// in place of bookinfo's, on this test's net (ambient pod @10, plain pod @11).
fn bookinfo_with_outbound(net: &Net) -> Value {
    let text = OVERLAY
        .replace("example.org", TRUST_DOMAIN)
        .replace("10.244.2.10", &net.ip(10).to_string())
        .replace("10.0.1.20", &net.ip(11).to_string());
    let over: Value = serde_json::from_str(&text).unwrap();
    let mut doc = bookinfo(net);
    let mut replaced = 0;
    fn walk(v: &mut Value, f: &mut impl FnMut(&mut serde_json::Map<String, Value>)) {
        match v {
            Value::Object(m) => {
                f(m);
                m.values_mut().for_each(|c| walk(c, f));
            }
            Value::Array(a) => a.iter_mut().for_each(|c| walk(c, f)),
            _ => {}
        }
    }
    walk(&mut doc, &mut |o| {
        if o.get("name").and_then(Value::as_str) == Some("reviews-split") {
            o["route"]["weighted_clusters"]["clusters"] = over["reviews_split"].clone();
            replaced += 1;
        }
    });
    assert_eq!(replaced, 1);
    doc.as_array_mut()
        .unwrap()
        .extend(over["resources"].as_array().unwrap().iter().cloned());
    doc
}

/// What a TLS app saw per connection: SNI, ALPN, the client certificate's SANs.
#[derive(Debug, Default)]
pub(crate) struct Handshakes(pub(crate) Vec<(Option<String>, Option<String>, Vec<String>)>);

/// A sidecar-injected pod's inbound (Istio mutual TLS, client certificate of the mesh required)
/// in front of an HTTP/1.1 app answering `x-pod: <name>`.
pub(crate) async fn sidecar_app(
    addr: SocketAddr,
    ca: &Ca,
    sa: &str,
    name: &'static str,
) -> Arc<Mutex<Handshakes>> {
    tls_app(addr, sidecar_config(ca, sa), name).await
}

/// A sidecar's inbound TLS: the pod's certificate for `sa`, a mesh client certificate required,
/// Istio's ALPN.
fn sidecar_config(ca: &Ca, sa: &str) -> Arc<rustls::ServerConfig> {
    let cert = ca.issue(&spiffe(sa)).unwrap().workload;
    let base =
        waypoint::control::identity::server_config(&cert, &[TRUST_DOMAIN.to_string()]).unwrap();
    let mut config = (*base).clone();
    config.alpn_protocols = vec![b"istio-peer-exchange".to_vec(), b"istio".to_vec()];
    Arc::new(config)
}

/// Accept TLS with `config` on `addr`, record each completed handshake, and hand each
/// connection to `serve`.
async fn tls_server<F, Fut>(
    addr: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    serve: F,
) -> Arc<Mutex<Handshakes>>
where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let seen = Arc::new(Mutex::new(Handshakes::default()));
    let record = seen.clone();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, record, serve) = (acceptor.clone(), record.clone(), serve.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                record.lock().unwrap().0.push(handshake_of(tls.get_ref().1));
                serve(tls).await;
            });
        }
    });
    seen
}

/// What a server connection's handshake showed: SNI, ALPN, the client certificate's SANs.
fn handshake_of(conn: &rustls::ServerConnection) -> (Option<String>, Option<String>, Vec<String>) {
    let sans = conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| waypoint::control::identity::cert_sans(c))
        .unwrap_or_default()
        .into_iter()
        .map(|(_, v)| v)
        .collect();
    let alpn = conn
        .alpn_protocol()
        .map(|a| String::from_utf8_lossy(a).into());
    (conn.server_name().map(String::from), alpn, sans)
}

/// An HTTP/1.1 app behind TLS with `config` on `addr`, answering `x-pod: <name>` and recording
/// each completed handshake.
pub(crate) async fn tls_app(
    addr: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    name: &'static str,
) -> Arc<Mutex<Handshakes>> {
    tls_server(addr, config, move |mut tls| async move {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        loop {
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            buf.drain(..end);
            let resp = format!("HTTP/1.1 200 OK\r\nx-pod: {name}\r\ncontent-length: 2\r\n\r\nok");
            if tls.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_outbound_cluster_share_reaches_its_pods() {
    let net = Net::new();
    let Istiod {
        ca, dir, server, ..
    } = Istiod::start("xds outbound mesh", "xds-outbound", TOKEN).await;

    let _v1 = Pod::start_as(&net, &ca, 7, "reviews-v1", "bookinfo-reviews").await;
    // ratings-ext in another namespace: an ambient pod (HBONE on :15008) and a plain one.
    let ambient = Pod::start_as(&net, &ca, 10, "ratings-ext-v1", "ratings-ext").await;
    let plain = sim::start_app(
        std::net::SocketAddr::new(net.ip(11), 9080),
        "ratings-ext-legacy",
        sim::AppKind::Http,
    )
    .await
    .unwrap();
    let sidecar_addr = SocketAddr::new(net.ip(12), 9080);
    let sidecar = sidecar_app(
        sidecar_addr,
        &ca,
        "ratings-ext-sidecar",
        "ratings-ext-sidecar",
    )
    .await;
    let mut doc = bookinfo_with_outbound(&net);
    add_sidecar_endpoint(&mut doc, sidecar_addr);
    let first = serve(&server, &doc);

    let mut cmd = xds_run_command(&binary(), &server.address(), &dir, "waypoint-7d4c9b-out");
    let (_child, addrs, stderr) = spawn_announcing(&mut cmd, 4);
    let logs = collect(stderr);
    poll_until(addrs["admin"], "/ready", |s, _| s == 200).await;
    wait_ack(&server, &first).await;

    let mut reviews = tunnel(&ca, addrs["hbone"], REVIEWS_VIP).await;
    let n = 300;
    let seen = reviews_split(&mut reviews, n).await;
    let count = |pod: &str| *seen.get(pod).unwrap_or(&0);
    let (hbone, direct) = (count("ratings-ext-v1"), count("ratings-ext-legacy"));
    let mtls = count("ratings-ext-sidecar");
    assert_eq!(count("reviews-v1") + hbone + direct + mtls, n, "{seen:?}");
    let share = (hbone + direct + mtls) as f64 / n as f64;
    assert!((0.1..0.3).contains(&share), "20 % expected: {seen:?}");
    assert!(
        hbone > 0 && direct > 0 && mtls > 0,
        "all three ratings-ext pods: {seen:?}"
    );
    // The sidecar pod in Istio mutual TLS with the waypoint's identity.
    let handshakes = sidecar.lock().unwrap();
    assert!(!handshakes.0.is_empty());
    for (sni, alpn, sans) in &handshakes.0 {
        assert_eq!(
            sni.as_deref(),
            Some("outbound_.9080_._.ratings-ext.external.svc.cluster.local")
        );
        assert_eq!(alpn.as_deref(), Some("istio-peer-exchange"));
        assert_eq!(sans, &vec![spiffe("waypoint").to_string()]);
    }
    drop(handshakes);
    // The ambient pod through its HBONE port: CONNECT tunnels counted there.
    assert!(
        ambient.pod.stats.tunnels.load(Ordering::Relaxed) > 0,
        "{seen:?}"
    );
    assert_eq!(ambient.requests(), hbone as u64);
    // The plain pod directly (nothing listens on its :15008).
    assert_eq!(plain.stats.requests.load(Ordering::Relaxed), direct as u64);
    let logs = logs.lock().unwrap().join("\n");
    assert!(
        !logs.contains("outbound cluster"),
        "no outbound warning expected:\n{logs}"
    );
}

/// A sidecar pod of ratings-ext at `addr` in the outbound EDS, as istiod writes it
/// (`socket_address`, `envoy.transport_socket_match: {tlsMode: istio}`).
fn add_sidecar_endpoint(doc: &mut Value, addr: SocketAddr) {
    let cla = doc
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|r| r["cluster_name"] == "outbound|9080||ratings-ext.external.svc.cluster.local")
        .unwrap();
    cla["endpoints"][0]["lb_endpoints"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({
            "endpoint": {"address": {"socket_address": {
                "address": addr.ip().to_string(), "port_value": addr.port()}}},
            "metadata": {"filter_metadata": {
                "envoy.transport_socket_match": {"tlsMode": "istio"},
                "istio": {"workload": "ratings-ext-sidecar;external;ratings-ext;v1;Kubernetes"}}},
            "load_balancing_weight": 1, "health_status": "HEALTHY"}));
}

const AUTHZ: &str = "outbound|8000||ext-authz.default.svc.cluster.local";

/// The authz fixture with the CUSTOM provider's `outbound|8000||ext-authz…` cluster (the
/// outbound fixture's shape) and one EDS endpoint, `lb_endpoint`, served to a real waypoint.
/// A request the authorizer allows gets 200, one it denies 403; returns the number of checks.
async fn checks_through_outbound_cluster(
    net: &Net,
    istiod: &Istiod,
    lb_endpoint: Value,
    tag: &str,
) -> u64 {
    use crate::xds_authz::{authorizer_at, DENIED, FIXTURE as AUTHZ_FIXTURE, VIP};
    let Istiod {
        ca, dir, server, ..
    } = istiod;
    let app = Pod::start_as(net, ca, 1, "reviews-v1", "bookinfo-reviews").await;
    let (_, checks, _authz) = authorizer_at(SocketAddr::new(net.ip(13), 8000)).await;
    let text = AUTHZ_FIXTURE
        .replace("example.org", TRUST_DOMAIN)
        .replace("10.244.5.1:", &format!("{}:", net.ip(1)));
    let mut doc: Value = serde_json::from_str(&text).unwrap();
    let over: Value = serde_json::from_str(&OVERLAY.replace("example.org", TRUST_DOMAIN)).unwrap();
    let mut cluster = over["resources"][0].clone();
    cluster["name"] = AUTHZ.into();
    cluster["eds_cluster_config"]["service_name"] = AUTHZ.into();
    let cla = serde_json::json!({
        "@type": "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment",
        "cluster_name": AUTHZ,
        "endpoints": [{"locality": {}, "lb_endpoints": [lb_endpoint]}]
    });
    let resources = doc["resources"].as_array_mut().unwrap();
    resources.push(cluster);
    resources.push(cla);
    let versions = serve(server, &doc["resources"]);
    let mut cmd = xds_run_command(&binary(), &server.address(), dir, tag);
    let (_child, addrs, stderr) = spawn_announcing(&mut cmd, 4);
    let _logs = collect(stderr);
    poll_until(addrs["admin"], "/ready", |s, _| s == 200).await;
    wait_ack(server, &versions).await;

    let mut send = tunnel(ca, addrs["hbone"], VIP).await;
    let (parts, _) = sim::get(
        &mut send,
        "reviews:9080",
        "/admin/users",
        &[("x-ext-authz", "allow")],
    )
    .await
    .unwrap();
    assert_eq!(parts.status, 200);
    let (parts, body) = sim::get(&mut send, "reviews:9080", "/admin/users", &[])
        .await
        .unwrap();
    assert_eq!((parts.status.as_u16(), &body[..]), (403, DENIED.as_bytes()));
    assert_eq!(app.requests(), 1);
    checks.load(Ordering::Relaxed)
}

/// In xDS mode the CUSTOM provider's `outbound|PORT||HOST` cluster, when istiod sends it with
/// endpoints, is where checks go: here its only endpoint is in the mesh, so the check goes
/// through that pod's HBONE port (the host name itself does not resolve).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_ext_authz_provider_dialled_through_its_outbound_cluster() {
    let net = Net::new();
    let istiod = Istiod::start("xds outbound ext_authz mesh", "xds-outbound-authz", TOKEN).await;
    let authz_addr = SocketAddr::new(net.ip(13), 8000);
    let authz_pod = sim::start_pod(
        SocketAddr::new(net.ip(13), 15008),
        &istiod.ca.issue(&spiffe("ext-authz")).unwrap().workload,
    )
    .await
    .unwrap();
    let hbone = authz_addr.to_string();
    let endpoint = serde_json::json!({
        "endpoint": {"address": {"envoy_internal_address": {
            "server_listener_name": "connect_originate", "endpoint_id": hbone}}},
        "metadata": {"filter_metadata": {
            "envoy.filters.listener.original_dst": {"local": hbone},
            "envoy.transport_socket_match": {"tunnel": "http"},
            "istio": {"workload": "ext-authz;default;ext-authz;v1;Kubernetes"}}},
        "load_balancing_weight": 1, "health_status": "HEALTHY"});
    let checks =
        checks_through_outbound_cluster(&net, &istiod, endpoint, "waypoint-authz-out").await;
    assert_eq!(checks, 2);
    assert!(authz_pod.stats.tunnels.load(Ordering::Relaxed) >= 1);
}

/// The provider is a sidecar pod (`{tlsMode: istio}`): checks go to it directly in Istio mutual
/// TLS with the waypoint's certificate, as HTTP requests to such pods do — never in plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_ext_authz_provider_in_a_sidecar_pod_gets_istio_mutual_tls() {
    let net = Net::new();
    let istiod = Istiod::start("xds sidecar ext_authz mesh", "xds-sidecar-authz", TOKEN).await;
    // The sidecar's inbound: Istio mTLS on @14:8000, relayed to the plaintext authorizer on @13.
    let sidecar_addr = SocketAddr::new(net.ip(14), 8000);
    let handshakes = sidecar_relay(
        sidecar_addr,
        &istiod.ca,
        "ext-authz",
        SocketAddr::new(net.ip(13), 8000),
    )
    .await;
    let endpoint = serde_json::json!({
        "endpoint": {"address": {"socket_address": {
            "address": sidecar_addr.ip().to_string(), "port_value": sidecar_addr.port()}}},
        "metadata": {"filter_metadata": {
            "envoy.transport_socket_match": {"tlsMode": "istio"},
            "istio": {"workload": "ext-authz;default;ext-authz;v1;Kubernetes"}}},
        "load_balancing_weight": 1, "health_status": "HEALTHY"});
    let checks =
        checks_through_outbound_cluster(&net, &istiod, endpoint, "waypoint-authz-sidecar").await;
    assert_eq!(checks, 2);
    let seen = handshakes.lock().unwrap();
    assert!(!seen.0.is_empty(), "no TLS handshake at the sidecar");
    for (sni, alpn, sans) in &seen.0 {
        assert_eq!(
            sni.as_deref(),
            Some("outbound_.8000_._.ext-authz.default.svc.cluster.local")
        );
        assert_eq!(alpn.as_deref(), Some("istio-peer-exchange"));
        assert!(
            sans.iter().any(|s| s.ends_with("/sa/waypoint")),
            "the waypoint's certificate: {sans:?}"
        );
    }
}

/// A sidecar's inbound in front of a plaintext server: Istio mutual TLS (mesh client
/// certificate required) on `addr`, each connection relayed to `to`; records each handshake.
async fn sidecar_relay(
    addr: SocketAddr,
    ca: &Ca,
    sa: &str,
    to: SocketAddr,
) -> Arc<Mutex<Handshakes>> {
    tls_server(addr, sidecar_config(ca, sa), move |mut tls| async move {
        let Ok(mut up) = tokio::net::TcpStream::connect(to).await else {
            return;
        };
        let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
    })
    .await
}
