//! `waypoint translate` and `waypoint explain --xds-dump` on a saved xDS config (what istiod
//! serves an Envoy waypoint for bookinfo, routing/tests/fixtures/xds/bookinfo.json).

use std::process::Command;

use crate::common::*;
use crate::xds::{bookinfo, break_ratings_cluster, break_reviews_route, objects_mut};
use serde_json::Value;
use waypoint_tests::Net;

#[test]
fn translate_and_explain_read_a_saved_xds_config() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../routing/tests/fixtures/xds/bookinfo.json"
    );
    let out = Command::new(binary())
        .args(["translate", fixture])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let snapshot: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = snapshot.to_string();
    for needle in [
        "reviews.default.svc.cluster.local",
        "inbound-vip|9080|http/v2|reviews.default.svc.cluster.local",
        "10.96.0.12",
    ] {
        assert!(text.contains(needle), "{needle} missing from {text}");
    }

    let out = Command::new(binary())
        .args(["explain", "--xds-dump", fixture, "--output", "json"])
        .args([
            "GET",
            "http://reviews.default.svc.cluster.local:9080/reviews/1",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let explained = String::from_utf8_lossy(&out.stdout);
    assert!(explained.contains("http/v1|reviews"), "{explained}");
    assert!(explained.contains("90"), "{explained}");

    // A config Envoy would reject: exit 1, the resource and the reason named.
    let net = Net::new();
    let mut broken = bookinfo(&net);
    break_reviews_route(&mut broken);
    let dir = temp_dir("xds-translate");
    std::fs::write(dir.join("broken.json"), broken.to_string()).unwrap();
    let out = Command::new(binary())
        .arg("translate")
        .arg(dir.join("broken.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("main_internal") && stderr.contains("regex"),
        "{stderr}"
    );

    // Every resource's status; a rejected one is left out and the rest still translated.
    let mut bad_cluster = bookinfo(&net);
    break_ratings_cluster(&mut bad_cluster);
    std::fs::write(dir.join("bad-cluster.json"), bad_cluster.to_string()).unwrap();
    let out = Command::new(binary())
        .arg("translate")
        .arg(dir.join("bad-cluster.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = |status: &str, what: &str| {
        stderr
            .lines()
            .any(|l| l.starts_with(status) && l.ends_with(what))
    };
    assert!(
        line(
            "rejected",
            "Cluster inbound-vip|9080|http|ratings.default.svc.cluster.local"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("rejected: maglev table_size 0"), "{stderr}");
    assert!(
        line(
            "translated",
            "Cluster inbound-vip|9080|http/v2|reviews.default.svc.cluster.local"
        ),
        "{stderr}"
    );
    // The listener translates; its port whose cluster was refused is named (503 until it comes).
    assert!(line("warned", "Listener main_internal"), "{stderr}");
    assert!(
        stderr.contains("ratings.default.svc.cluster.local:9080")
            && stderr.contains("its cluster is not in this config"),
        "{stderr}"
    );
    let snapshot: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        snapshot.to_string().contains("http/v2|reviews"),
        "the rest is translated"
    );

    // A warning: exit 0, or 1 with --strict.
    let mut warned = bookinfo(&net);
    let mut found = 0;
    objects_mut(&mut warned, &mut |o| {
        if o.get("name").and_then(Value::as_str)
            == Some("inbound-vip|9080|http|ratings.default.svc.cluster.local")
            && o.contains_key("type")
        {
            o.insert(
                "lb_subset_config".into(),
                serde_json::json!({"fallback_policy": "ANY_ENDPOINT"}),
            );
            found += 1;
        }
    });
    assert_eq!(found, 1);
    std::fs::write(dir.join("warned.json"), warned.to_string()).unwrap();
    let run = |strict: bool| {
        let mut cmd = Command::new(binary());
        cmd.arg("translate").arg(dir.join("warned.json"));
        if strict {
            cmd.arg("--strict");
        }
        cmd.output().unwrap()
    };
    let out = run(false);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warned     Cluster inbound-vip|9080|http|ratings")
            && stderr.contains("warning: lb_subset_config"),
        "{stderr}"
    );
    assert_eq!(run(true).status.code(), Some(1));
}
