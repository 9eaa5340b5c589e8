//! A real Envoy waypoint's `/config_dump` (istio/istio
//! `istioctl/pkg/proxyconfig/testdata/config_dump.json`, Istio 1.21: see the fixture's `about`)
//! through `waypoint translate`: every entry of the dump is accounted for — translated, warned
//! with why, or skipped with why — and nothing istiod sent is dropped silently.

use crate::common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::Command;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../routing/tests/fixtures/xds/istioctl_waypoint_dump_1_21.json"
);

const HTTPBIN: &str = "httpbin.default.svc.cluster.local";

/// `(status, what)` of each report line that starts an entry.
fn entries(stderr: &str) -> BTreeSet<(String, String)> {
    stderr
        .lines()
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.split_once(' '))
        .filter(|(status, _)| {
            ["translated", "warned", "rejected", "skipped", "warning"].contains(status)
        })
        .map(|(s, rest)| (s.to_string(), rest.trim().to_string()))
        .collect()
}

#[test]
fn a_real_waypoint_config_dump_is_accounted_for_entry_by_entry() {
    let out = Command::new(binary())
        .args(["translate", FIXTURE])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "nothing is rejected: {stderr}");

    let expected: BTreeSet<(String, String)> = [
        // The listener translates; its one warning is the dump's own inconsistency below.
        ("warned", "Listener main_internal"),
        (
            "warned",
            "Cluster inbound-vip|8000|http|httpbin.default.svc.cluster.local",
        ),
        (
            "warned",
            "ClusterLoadAssignment inbound-vip|8100|http|httpbin.default.svc.cluster.local",
        ),
        ("skipped", "Bootstrap"),
        ("skipped", "Cluster agent"),
        ("skipped", "Cluster prometheus_stats"),
        ("skipped", "ClusterLoadAssignment prometheus_stats"),
        ("skipped", "Listener (unnamed)"),
        (
            "skipped",
            "RouteConfiguration inbound-vip|8000|http|httpbin.default.svc.cluster.local",
        ),
        ("skipped", "Secret default"),
        ("skipped", "Secret ROOTCA"),
    ]
    .into_iter()
    .map(|(s, w)| (s.to_string(), w.to_string()))
    .collect();
    assert_eq!(entries(&stderr), expected, "{stderr}");
    // The warnings say what is wrong with the dump: CDS has port 8000's cluster, EDS port 8100's.
    for needle in [
        "httpbin.default.svc.cluster.local:8100",
        "its cluster is not in this config (never sent by CDS, or refused); requests to this port get 503",
        "endpoints inbound-vip|8000|http|httpbin.default.svc.cluster.local not received yet",
        "no service cluster uses this assignment",
        "why: static, from the Envoy bootstrap",
        "why: inline route config of a listener",
        "why: SDS secret",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing from {stderr}");
    }
    // istiod's TypedStruct-wrapped filters (istio.stats as stats.PluginConfig, the upstream
    // peer metadata filter) are known telemetry, not unsupported filters.
    assert!(!stderr.contains("istio.stats"), "{stderr}");
    assert!(!stderr.contains("not supported"), "{stderr}");
    assert!(
        stderr.contains("3 resources: 0 rejected, 3 warning(s); 8 dump entries not translated"),
        "{stderr}"
    );

    // What it translates to: the service on its VIP, port 8100 HTTP/2 from its connection
    // manager's http2_protocol_options, istiod's path handling, the pod bound to the waypoint.
    let snapshot: Value = serde_json::from_slice(&out.stdout).unwrap();
    let services = snapshot["services"].as_array().unwrap();
    assert_eq!(services.len(), 1, "{snapshot:#}");
    let svc = &services[0]["service"];
    assert_eq!(svc["hostname"], HTTPBIN);
    assert_eq!(svc["vips"], serde_json::json!(["10.104.171.68"]));
    let ports: Vec<(u64, &str)> = svc["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["number"].as_u64().unwrap(),
                p["protocol"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(ports, vec![(8000, "HTTP"), (8100, "HTTP2")]);
    for p in svc["ports"].as_array().unwrap() {
        assert_eq!(p["path"]["normalize_path"], true, "{p}");
        assert_eq!(p["path"]["escaped_slashes"], "KEEP_UNCHANGED", "{p}");
        // 1.21's default route carries no retry policy: none.
        assert_eq!(p["default_retries"]["attempts"], 0, "{p}");
    }
    let workloads = snapshot["workloads"].as_array().unwrap();
    assert_eq!(workloads.len(), 1, "{snapshot:#}");
    assert_eq!(workloads[0]["endpoint"]["address"], "192.168.195.248");
    // 'h2c' / 'http/1.1' → direct-http, anything else → direct-tcp.
    assert_eq!(workloads[0]["protocol"], "UNKNOWN");

    // --strict: the dump's warnings fail it.
    let strict = Command::new(binary())
        .args(["translate", "--strict", FIXTURE])
        .output()
        .unwrap();
    assert_eq!(strict.status.code(), Some(1), "{strict:?}");

    // explain agrees: the default route, with no retries (as 1.21 wrote it), no endpoints.
    let out = Command::new(binary())
        .args(["explain", "--xds-dump", FIXTURE])
        .args(["GET", "http://10.104.171.68:8000/get"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text.contains("decision: default: no VirtualService"),
        "{text}"
    );
    assert!(text.contains("retries: disabled"), "{text}");
    assert!(text.contains("no endpoints: 503 UH"), "{text}");
    assert!(!text.contains("retries: 2"), "{text}");
}
