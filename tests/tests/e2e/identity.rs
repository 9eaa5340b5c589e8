//! Certificate rotation on a live waypoint: zero failed requests, new handshakes in both
//! directions use the new certificate at once, established connections are not cut, pooled
//! upstream connections are recycled.

use std::sync::atomic::Ordering;

use waypoint_tests::{presented_serial, reviews_yaml, spiffe, weighted_routes, Mesh};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_under_load_fails_no_request() {
    let mesh = Mesh::start(&reviews_yaml(
        "ROUND_ROBIN",
        &weighted_routes(&[("v1", 50), ("v2", 50)]),
    ))
    .await;
    let bench = &mesh.bench;
    let app = bench.app.clone();
    let old_serial = app.telemetry.status.certificate().unwrap().serial.clone();
    let probe_cert = || bench.ca.issue(&spiffe("probe")).unwrap().workload;
    assert_eq!(
        presented_serial(bench.waypoint_addr, probe_cert(), &bench.waypoint_id).await,
        old_serial
    );
    let client = std::sync::Arc::new(mesh.client());

    // A bounded load on the client's one HBONE connection; rotate while it runs.
    let load = {
        let client = client.clone();
        tokio::spawn(async move {
            waypoint::commands::demo::drive(
                &client,
                "10.0.0.10:9080".parse().unwrap(),
                "reviews:9080",
                600,
                4,
            )
            .await
        })
    };
    let pods_before: Vec<usize> = bench
        .pods
        .iter()
        .map(|p| p.stats.peer_serials.lock().len())
        .collect();
    while app
        .pool
        .client()
        .stats
        .tunnels_opened
        .load(Ordering::Relaxed)
        == 0
    {
        tokio::task::yield_now().await;
    }
    let new = bench.ca.issue(&bench.waypoint_id).unwrap();
    let new_serial = new.workload.summary().serial;
    assert_ne!(new_serial, old_serial);
    app.rotate(new.workload).unwrap();
    let report = load.await.unwrap().unwrap();
    assert_eq!(report.failures, 0, "requests failed during rotation");
    assert_eq!(report.by_pod.values().sum::<u64>(), 600);

    // Inbound: a new handshake gets the new certificate; the client's connection made before
    // the rotation was not cut (it is still the only one it opened).
    assert_eq!(
        presented_serial(bench.waypoint_addr, probe_cert(), &bench.waypoint_id).await,
        new_serial
    );
    assert_eq!(
        client
            .hbone()
            .stats
            .connections_opened
            .load(Ordering::Relaxed),
        1,
        "the pre-rotation HBONE connection kept serving"
    );
    // Outbound: dials after the rotation present the new certificate.
    assert!(
        bench
            .pods
            .iter()
            .any(|p| p.stats.peer_serials.lock().contains(&new_serial)),
        "no pod saw the new certificate"
    );
    assert_eq!(
        app.telemetry.status.certificate().unwrap().serial,
        new_serial
    );

    // Quiescent rotation: pooled upstream connections are recycled, so every pod connection
    // opened afterwards carries the third certificate (none of the old ones).
    let before: Vec<usize> = bench
        .pods
        .iter()
        .map(|p| p.stats.peer_serials.lock().len())
        .collect();
    let third = bench.ca.issue(&bench.waypoint_id).unwrap();
    let third_serial = third.workload.summary().serial;
    app.rotate(third.workload).unwrap();
    let more = waypoint::commands::demo::drive(
        &client,
        "10.0.0.10:9080".parse().unwrap(),
        "reviews:9080",
        40,
        2,
    )
    .await
    .unwrap();
    assert_eq!(more.failures, 0);
    let mut recycled = 0;
    for (pod, before) in bench.pods.iter().zip(before) {
        let serials = pod.stats.peer_serials.lock().clone();
        let fresh = &serials[before..];
        assert!(
            fresh.iter().all(|s| *s == third_serial),
            "pod {} got {fresh:?} after rotating to {third_serial}",
            pod.hbone_addr
        );
        recycled += usize::from(!fresh.is_empty());
    }
    assert_eq!(recycled, 2, "both subsets' pods were redialed");
    let _ = pods_before;
}

/// A bundle of several roots and a trust domain alias: clients of a second CA in the alias
/// domain are served; the same CA in a domain not accepted, or an unknown CA, are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_roots_and_trust_domain_aliases() {
    use waypoint::control::identity::{Ca, SpiffeId, WorkloadCert};
    let yaml = waypoint_tests::service_yaml("ratings", "10.0.0.20", 9080, "http")
        + &waypoint_tests::workload_yaml("ratings-v1", "@1", "ratings", "v1", "bookinfo-ratings");
    let mesh = Mesh::start_with(&yaml, |_, o| {
        o.trust_domain_aliases = vec!["east.example".into()];
    })
    .await;
    let bench = &mesh.bench;
    let east = Ca::new("east mesh").unwrap();
    let stranger = Ca::new("unknown mesh").unwrap();
    let mesh_root = bench.ca.issue(&spiffe("x")).unwrap().roots_pem;
    let east_root = east.issue(&spiffe("x")).unwrap().roots_pem;
    let both = format!("{mesh_root}{east_root}");
    // The waypoint trusts both roots from now on.
    let own = bench.ca.issue(&bench.waypoint_id).unwrap();
    let cert = WorkloadCert::from_pem(
        own.chain_pem.as_bytes(),
        own.key_pem.as_bytes(),
        both.as_bytes(),
    )
    .unwrap();
    assert_eq!(cert.roots.len(), 2);
    bench.app.rotate(cert).unwrap();

    let client_of = |ca: &Ca, td: &str| {
        let minted = ca
            .issue(&SpiffeId::new(td, "default", "productpage"))
            .unwrap();
        let cert = WorkloadCert::from_pem(
            minted.chain_pem.as_bytes(),
            minted.key_pem.as_bytes(),
            both.as_bytes(),
        )
        .unwrap();
        waypoint::commands::sim::ZtunnelClient::new(
            cert,
            bench.waypoint_addr,
            bench.waypoint_id.clone(),
        )
    };
    let rejected = || {
        bench
            .app
            .server
            .stats
            .rejected_handshakes
            .load(Ordering::Relaxed)
    };
    let mut send = client_of(&east, "east.example")
        .http1("10.0.0.20:9080".parse().unwrap())
        .await
        .expect("a client of the second root in an accepted alias domain is served");
    let (parts, _) = waypoint::commands::sim::get(&mut send, "ratings:9080", "/", &[])
        .await
        .unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(rejected(), 0);

    let foreign_domain = client_of(&east, "other.example")
        .http1("10.0.0.20:9080".parse().unwrap())
        .await;
    assert!(
        foreign_domain.is_err(),
        "trust domain other.example is not accepted"
    );
    let unknown_root = client_of(&stranger, "east.example")
        .http1("10.0.0.20:9080".parse().unwrap())
        .await;
    assert!(
        unknown_root.is_err(),
        "a CA outside the bundle is not accepted"
    );
    for _ in 0..100 {
        if rejected() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(rejected(), 2);
}

/// Outbound leg: an endpoint whose node presents an expired, not-yet-valid, foreign-CA or
/// foreign-trust-domain certificate is refused (503, UF, tls_handshake_failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_endpoint_certificates_are_refused() {
    use waypoint::commands::sim::PodCert;
    let cases = [
        PodCert::Expired,
        PodCert::NotYetValid,
        PodCert::ForeignCa,
        PodCert::TrustDomain("other.example".into()),
    ];
    let mut yaml = String::new();
    for i in 0..cases.len() {
        let name = format!("svc{i}");
        yaml += &waypoint_tests::service_yaml(&name, &format!("10.0.0.{}", 60 + i), 9080, "http");
        yaml += &waypoint_tests::workload_yaml(
            &format!("{name}-v1"),
            &format!("@{}", i + 1),
            &name,
            "v1",
            &name,
        );
    }
    let mesh = Mesh::start_with(&yaml, |net, o| {
        for (i, case) in cases.iter().enumerate() {
            o.pod_cert.insert(net.ip(i as u8 + 1), case.clone());
        }
    })
    .await;
    let client = mesh.client();
    for (i, case) in cases.iter().enumerate() {
        let vip = format!("10.0.0.{}:9080", 60 + i);
        let mut send = client.http1(vip.parse().unwrap()).await.unwrap();
        let (parts, _) = waypoint::commands::sim::get(&mut send, &format!("svc{i}:9080"), "/", &[])
            .await
            .unwrap();
        assert_eq!(parts.status, 503, "{case:?}");
        let log = mesh.wait_for_log_lines(i + 1).await;
        let line = &log[i];
        assert!(
            line["response_flags"].as_str().unwrap().contains("UF"),
            "{case:?}: {line}"
        );
        assert_eq!(
            line["upstream_transport_failure_reason"], "tls_handshake_failure",
            "{case:?}"
        );
    }
}
