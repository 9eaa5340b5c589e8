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
            waypoint::demo::drive(
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
    // Outbound: pooled connections were recycled; each pod's newest connection came with the
    // new certificate.
    let more = waypoint::demo::drive(
        &client,
        "10.0.0.10:9080".parse().unwrap(),
        "reviews:9080",
        20,
        2,
    )
    .await
    .unwrap();
    assert_eq!(more.failures, 0);
    for (pod, before) in bench.pods.iter().zip(pods_before) {
        let serials = pod.stats.peer_serials.lock().clone();
        if serials.len() > before {
            assert_eq!(
                serials.last(),
                Some(&new_serial),
                "pod {} saw {serials:?}",
                pod.hbone_addr
            );
        }
    }
    let served_after: usize = bench
        .pods
        .iter()
        .filter(|p| p.stats.peer_serials.lock().last() == Some(&new_serial))
        .count();
    assert!(
        served_after >= 2,
        "both subsets' pods were dialed with the new certificate"
    );
    assert_eq!(
        app.telemetry.status.certificate().unwrap().serial,
        new_serial
    );
}
