//! Payloads kept compact (`xds::stored`, as the waypoint's xDS client keeps assignments and
//! clusters) translate as they came.

use super::memo::{describe, retime_wire, FIXTURES};
use super::reuse::{bookinfo_wire, translate_wire, Wire};
use super::*;
use routing::xds::{stored, Translator, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};

/// Every fixture's resources as istiod wrote them.
fn wire_of(name: &str) -> Wire {
    use prost::Message;
    let res = load_resources(&fixture(name)).unwrap();
    let mut wire = bookinfo_wire(&res);
    for r in &res.routes {
        wire.push((ROUTE_TYPE, r.name.as_str().into(), r.encode_to_vec().into()));
    }
    wire
}

/// Each fixture translated from its payloads kept compact (where that pays) gives the snapshot,
/// warnings and subscriptions it gives from the payloads as they came; and across the fixtures
/// assignments, clusters and listeners were kept compact, clusters and assignments also against
/// the dictionaries learned from the first services, and `main_internal` chain by chain (its
/// chains read as blocks), so the reads went through `expand`.
#[test]
fn compact_payloads_translate_as_they_came() {
    let mut kept = std::collections::BTreeSet::new();
    // Kept against a learned dictionary (the compact form's second byte names it).
    let mut against_dictionary = std::collections::BTreeSet::new();
    let mut chain_by_chain = 0;
    for name in FIXTURES {
        let raw = wire_of(name);
        let compact: Wire = raw
            .iter()
            .map(|(t, n, v)| {
                let v = match stored::compact(t, v) {
                    Some(c) => {
                        kept.insert(*t);
                        if c[1] == stored::CHAIN_BY_CHAIN {
                            chain_by_chain += 1;
                        } else if c[1] != 0 {
                            against_dictionary.insert(*t);
                        }
                        c
                    }
                    None => v.clone(),
                };
                (*t, n.clone(), v)
            })
            .collect();
        let a = describe(&translate_wire(&mut Translator::new(), &raw));
        let b = describe(&translate_wire(&mut Translator::new(), &compact));
        assert_eq!(a, b, "{name}");
    }
    for t in [CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE] {
        assert!(kept.contains(t), "no {t} was kept compact: {kept:?}");
    }
    assert!(
        chain_by_chain > 0,
        "no main_internal was kept chain by chain"
    );
    for t in [CLUSTER_TYPE, ENDPOINT_TYPE] {
        assert!(
            against_dictionary.contains(t),
            "no {t} was kept against a dictionary: {against_dictionary:?}"
        );
    }
}

/// `wire` with every payload kept as the waypoint's xDS client keeps it.
fn kept(wire: &Wire) -> Wire {
    wire.iter()
        .map(|(t, n, v)| {
            let v = stored::compact(t, v).unwrap_or_else(|| v.clone());
            (*t, n.clone(), v)
        })
        .collect()
}

/// A route change in a `main_internal` kept chain by chain translates the one chain it changed:
/// the unchanged chains keep their blocks, so their digests are the ones the translator
/// remembers. The result is that of the same push as it came.
#[test]
fn a_route_change_kept_chain_by_chain_rebuilds_one_chain() {
    let res = load_resources(&fixture("bookinfo.json")).unwrap();
    let mut raw = bookinfo_wire(&res);
    let mut translator = Translator::new();
    let first = kept(&raw);
    let main = |w: &Wire| {
        w.iter()
            .find(|(t, n, _)| *t == LISTENER_TYPE && &**n == "main_internal")
            .map(|(_, _, v)| v.clone())
            .unwrap()
    };
    assert_eq!(main(&first)[1], stored::CHAIN_BY_CHAIN);
    translate_wire(&mut translator, &first);
    let all = translator.reuse().built;
    retime_wire(
        &mut raw,
        "inbound-vip|9080|http|reviews.default.svc.cluster.local",
        7,
    );
    let second = kept(&raw);
    assert_ne!(main(&first), main(&second));
    let t = translate_wire(&mut translator, &second);
    assert_eq!(translator.reuse().built, 1, "{:?}", translator.reuse());
    assert_eq!(translator.reuse().reused, all - 1);
    let fresh = translate_wire(&mut Translator::new(), &raw);
    assert_eq!(describe(&t), describe(&fresh));
}
