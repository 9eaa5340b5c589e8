//! The translator's splices: a push that changed whole services (a new service's clusters and
//! assignments, then `main_internal` with its chain and VIP; a service gone) assembles those
//! services alone and splices them into the published snapshot. That a splice equals a
//! translation from scratch is also part of `memo`'s property.

use super::patch::{describe_wire, scratch_wire};
use super::reuse::{bookinfo_wire, publish, Wire, PRODUCTPAGE, REVIEWS};
use super::*;
use routing::xds::{Translator, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE};
use std::net::SocketAddr;

const RATINGS: &str = "ratings.default.svc.cluster.local";
const RATINGS_VIP: &str = "10.96.0.11:9080";

/// bookinfo as istiod sends it before ratings exists: without its clusters, assignment, chain
/// and VIP. Every other resource and chain keeps its bytes (encoding the protos again would
/// reorder their maps: other bytes, as istiod never sends for an unchanged resource).
fn without_ratings(full: &Wire) -> Wire {
    full.iter()
        .filter(|(_, n, _)| !n.ends_with(RATINGS))
        .map(|(t, n, bytes)| match (*t, &**n) {
            (LISTENER_TYPE, "main_internal") => (
                *t,
                n.clone(),
                without_chain(bytes, RATINGS, "10.96.0.11").into(),
            ),
            _ => (*t, n.clone(), bytes.clone()),
        })
        .collect()
}

/// Listener `bytes` with each top-level field's value mapped by `f(tag, value)` (`None`: the
/// field dropped); the fields `f` leaves alone keep their bytes.
fn map_fields(bytes: &[u8], mut f: impl FnMut(u32, &[u8]) -> Option<Vec<u8>>) -> Vec<u8> {
    use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};
    let mut buf = bytes;
    let mut out = Vec::new();
    while !buf.is_empty() {
        let field_start = buf;
        let (tag, wire_type) = decode_key(&mut buf).unwrap();
        let value: &[u8] = match wire_type {
            WireType::LengthDelimited => {
                let len = decode_varint(&mut buf).unwrap() as usize;
                let (value, rest) = buf.split_at(len);
                buf = rest;
                value
            }
            WireType::Varint => {
                decode_varint(&mut buf).unwrap();
                &[]
            }
            WireType::SixtyFourBit => {
                buf = &buf[8..];
                &[]
            }
            WireType::ThirtyTwoBit => {
                buf = &buf[4..];
                &[]
            }
            other => panic!("unexpected wire type {other:?}"),
        };
        let field = &field_start[..field_start.len() - buf.len()];
        if wire_type != WireType::LengthDelimited {
            out.extend_from_slice(field);
            continue;
        }
        match f(tag, value) {
            Some(v) if v == value => out.extend_from_slice(field),
            Some(v) => {
                encode_key(tag, WireType::LengthDelimited, &mut out);
                encode_varint(v.len() as u64, &mut out);
                out.extend_from_slice(&v);
            }
            None => {}
        }
    }
    out
}

/// Field numbers of `envoy.config.listener.v3.Listener`.
const FILTER_CHAINS: u32 = 3;
const FILTER_CHAIN_MATCHER: u32 = 32;

/// Listener `bytes` without the filter chains of `host` and without the matcher's range for
/// `vip`; its other fields as they were, byte for byte.
fn without_chain(bytes: &[u8], host: &str, vip: &str) -> Vec<u8> {
    use envoy_types::pb::envoy::config::listener::v3::FilterChain;
    use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_tree::TreeType;
    use envoy_types::pb::xds::r#type::matcher::v3::{matcher::MatcherType, Matcher};
    use prost::Message;
    // xds.type.matcher.v3.IPMatcher's range matchers (field 1), kept encoded; of each, only
    // the ranges' address prefixes are read.
    #[derive(Clone, PartialEq, prost::Message)]
    struct IpMatcher {
        #[prost(bytes = "vec", repeated, tag = "1")]
        range_matchers: Vec<Vec<u8>>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct RangeMatcher {
        #[prost(message, repeated, tag = "1")]
        ranges: Vec<Cidr>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    struct Cidr {
        #[prost(string, tag = "1")]
        address_prefix: String,
    }
    map_fields(bytes, |tag, value| match tag {
        FILTER_CHAINS if FilterChain::decode(value).unwrap().name.ends_with(host) => None,
        FILTER_CHAIN_MATCHER => {
            let mut m = Matcher::decode(value).unwrap();
            let Some(MatcherType::MatcherTree(tree)) = &mut m.matcher_type else {
                panic!("a matcher tree");
            };
            let Some(TreeType::CustomMatch(custom)) = &mut tree.tree_type else {
                panic!("an IP matcher");
            };
            let any = custom.typed_config.as_mut().expect("an IP matcher");
            let mut ip = IpMatcher::decode(any.value.as_slice()).unwrap();
            let before = ip.range_matchers.len();
            ip.range_matchers.retain(|r| {
                let r = RangeMatcher::decode(r.as_slice()).unwrap();
                r.ranges.iter().all(|c| c.address_prefix != vip)
            });
            assert_eq!(
                ip.range_matchers.len(),
                before - 1,
                "{vip} was in the matcher"
            );
            any.value = ip.encode_to_vec();
            Some(m.encode_to_vec())
        }
        _ => Some(value.to_vec()),
    })
}

/// Listener `bytes` with the matcher's VIP `from` now `to` (a service's address changed: the
/// chains are the same), an address of the same length, so every other byte stays.
fn moved_vip(bytes: &[u8], from: &str, to: &str) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut moved = 0;
    let out = map_fields(bytes, |tag, value| {
        let mut value = value.to_vec();
        if tag == FILTER_CHAIN_MATCHER {
            while let Some(at) = value.windows(from.len()).position(|w| w == from.as_bytes()) {
                value[at..at + from.len()].copy_from_slice(to.as_bytes());
                moved += 1;
            }
        }
        Some(value)
    });
    assert_eq!(moved, 1, "{from} was in the matcher once");
    out
}

/// ratings' clusters and assignment as the full fixture has them.
fn ratings_pieces(full: &Wire) -> Wire {
    full.iter()
        .filter(|(t, n, _)| (*t == CLUSTER_TYPE || *t == ENDPOINT_TYPE) && n.ends_with(RATINGS))
        .cloned()
        .collect()
}

/// `wire` translated and published after `live`: a splice that built `built` services, equal to
/// a translation from scratch.
fn spliced(
    translator: &mut Translator,
    wire: &Wire,
    live: &routing::Snapshot,
    built: usize,
) -> std::sync::Arc<routing::Snapshot> {
    let snapshot = publish(translator, wire, live);
    let reuse = translator.reuse();
    assert!(reuse.patched, "{reuse:?}");
    assert_eq!(reuse.services_built, built, "{reuse:?}");
    assert_eq!(describe_wire(&snapshot), scratch_wire(wire));
    snapshot
}

/// ratings arrives (its clusters and assignment, then `main_internal` with its chain and VIP)
/// and leaves: each step assembles ratings alone and splices it into the published snapshot,
/// which equals a translation from scratch; the other services' clusters are shared.
#[test]
fn a_new_service_is_spliced_in_and_out() {
    let full = bookinfo_wire(&load_resources(&fixture("bookinfo.json")).unwrap());
    let before = without_ratings(&full);
    let mut translator = Translator::new();
    let first = publish(&mut translator, &before, &routing::Snapshot::empty());
    assert!(first.service_by_host(RATINGS).is_none());
    let vip: SocketAddr = RATINGS_VIP.parse().unwrap();

    // CDS and EDS: ratings' clusters and assignment; `main_internal` does not route it yet.
    let mut pieces = before.clone();
    pieces.extend(ratings_pieces(&full));
    let second = spliced(&mut translator, &pieces, &first, 1);
    assert!(second.service_by_host(RATINGS).is_some());
    assert!(second.resolve_destination(vip).is_none());
    for host in [PRODUCTPAGE, REVIEWS] {
        assert!(std::ptr::eq(
            first.cluster(host, 9080, None).unwrap(),
            second.cluster(host, 9080, None).unwrap()
        ));
    }

    // LDS: `main_internal` with ratings' chain and VIP.
    let third = spliced(&mut translator, &full, &second, 1);
    assert!(third.resolve_destination(vip).is_some());
    assert!(std::ptr::eq(
        second.cluster(REVIEWS, 9080, None).unwrap(),
        third.cluster(REVIEWS, 9080, None).unwrap()
    ));

    // ratings' VIP changes: the matcher alone differs; ratings is assembled again.
    let mut moved = full.clone();
    for (t, n, bytes) in &mut moved {
        if *t == LISTENER_TYPE && &**n == "main_internal" {
            *bytes = moved_vip(bytes, "10.96.0.11", "10.96.0.99").into();
        }
    }
    let elsewhere = spliced(&mut translator, &moved, &third, 1);
    assert!(elsewhere.resolve_destination(vip).is_none());
    assert!(elsewhere
        .resolve_destination("10.96.0.99:9080".parse().unwrap())
        .is_some());
    let third = publish(&mut translator, &full, &elsewhere);
    assert!(translator.reuse().patched);

    // ratings leaves, all of it in one push.
    let fourth = spliced(&mut translator, &before, &third, 0);
    assert!(fourth.service_by_host(RATINGS).is_none());
    assert!(fourth.resolve_destination(vip).is_none());
}

/// The splice gives way to a full translation when it could not reproduce one: a new service
/// whose assignment has not come yet (the state warns that its endpoints were not received).
#[test]
fn a_service_without_its_assignment_is_translated_in_full() {
    let full = bookinfo_wire(&load_resources(&fixture("bookinfo.json")).unwrap());
    let before = without_ratings(&full);
    let mut translator = Translator::new();
    let first = publish(&mut translator, &before, &routing::Snapshot::empty());
    let mut clusters_only = before.clone();
    clusters_only.extend(
        ratings_pieces(&full)
            .into_iter()
            .filter(|(t, _, _)| *t == CLUSTER_TYPE),
    );
    let second = publish(&mut translator, &clusters_only, &first);
    assert!(!translator.reuse().patched);
    assert_eq!(describe_wire(&second), scratch_wire(&clusters_only));
    assert!(second.warnings().iter().any(|w| w.contains("not received")));
}
