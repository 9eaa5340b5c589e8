//! In-module checks that need no fixtures; the golden tests are in
//! `tests/xds_translate.rs`.

use super::*;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, EdsClusterConfig,
};

fn eds_cluster(name: &str, service_name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(3)),
        eds_cluster_config: Some(EdsClusterConfig {
            service_name: service_name.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[test]
fn malformed_any_is_a_rejection() {
    let bad = Any {
        type_url: CLUSTER_TYPE.into(),
        value: vec![0xff, 0xff, 0xff],
    };
    let unknown = Any {
        type_url: "type.googleapis.com/acme.Thing".into(),
        value: vec![],
    };
    let errs = Resources::from_any([&bad, &unknown]).unwrap_err();
    assert_eq!(errs.len(), 2);
    assert!(errs[0].reason.contains("cannot decode"), "{}", errs[0]);
    assert!(
        errs[1].reason.contains("not a resource type"),
        "{}",
        errs[1]
    );
}

#[test]
fn eds_subscriptions() {
    let clusters = vec![
        eds_cluster("inbound-vip|9080|http|r.default.svc.cluster.local", ""),
        eds_cluster(
            "inbound-vip|9080|http/v1|r.default.svc.cluster.local",
            "custom",
        ),
        Cluster {
            name: "main_internal".into(),
            ..Default::default()
        },
    ];
    let s = required_resources(&[], &clusters);
    assert_eq!(
        s.endpoints.into_iter().collect::<Vec<_>>(),
        vec![
            "custom".to_string(),
            "inbound-vip|9080|http|r.default.svc.cluster.local".to_string()
        ]
    );
    assert!(s.routes.is_empty());
}

#[test]
fn empty_state_translates_to_empty_snapshot() {
    let t = translate(&Resources::default(), &TranslateOptions::default()).unwrap();
    assert_eq!(t.snapshot.services().count(), 0);
    assert!(t.warnings.is_empty());
}

#[test]
fn duplicate_names_are_rejected() {
    let c = eds_cluster("inbound-vip|80|http|a.default.svc.cluster.local", "");
    let res = Resources {
        clusters: vec![c.clone(), c],
        ..Default::default()
    };
    let errs = translate(&res, &TranslateOptions::default()).unwrap_err();
    assert_eq!(
        errs[0].name,
        "inbound-vip|80|http|a.default.svc.cluster.local"
    );
    assert!(errs[0].reason.contains("duplicate"));
}
