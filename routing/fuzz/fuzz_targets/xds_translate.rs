//! Arbitrary bytes → xDS resources → `routing::xds::translate`; nothing may
//! panic. The input is a sequence of records `[kind][len_hi][len_lo][payload]`:
//! `kind % 4` picks Listener / Cluster / ClusterLoadAssignment /
//! RouteConfiguration and the payload is its protobuf encoding (an `Any`
//! value as it arrives over ADS). Resources that decode are translated; a
//! snapshot that results is driven through the public API (see
//! `../src/exercise.rs`). Typed configs nested inside the resources (HCM,
//! tcp_proxy, fault, matchers) are reached through their own `Any` bytes.
#![no_main]

#[allow(dead_code)]
#[path = "../src/exercise.rs"]
mod exercise;

use envoy_types::pb::google::protobuf::Any;
use routing::xds::{self, Resources, TranslateOptions};

const TYPES: [&str; 4] = [
    xds::LISTENER_TYPE,
    xds::CLUSTER_TYPE,
    xds::ENDPOINT_TYPE,
    xds::ROUTE_TYPE,
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let mut anys = Vec::new();
    let mut rest = data;
    while rest.len() >= 3 && anys.len() < 64 {
        let kind = TYPES[usize::from(rest[0] % 4)];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        anys.push(Any {
            type_url: kind.to_string(),
            value: rest[3..3 + len].to_vec(),
        });
        rest = &rest[3 + len..];
    }
    // Decode each on its own so one bad record does not hide the others.
    let mut res = Resources::default();
    for any in &anys {
        let _rejected = res.push_any(any).is_err();
    }
    let subs = xds::required_resources(&res.listeners, &res.clusters);
    let _ = (subs.endpoints.len(), subs.routes.len());
    match xds::translate(&res, &TranslateOptions::default()) {
        Ok(t) => {
            for w in &t.warnings {
                assert!(!w.to_string().is_empty());
            }
            exercise::exercise_snapshot(&t.snapshot);
        }
        Err(rejections) => {
            assert!(!rejections.is_empty());
            for r in &rejections {
                assert!(!r.reason.is_empty(), "{r:?}");
            }
        }
    }
});
