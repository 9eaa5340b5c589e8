//! Payloads kept compact (`xds::stored`, as the waypoint's xDS client keeps assignments and
//! clusters) translate as they came.

use super::memo::{bookinfo_wire, describe, translate_wire, Wire, FIXTURES};
use super::*;
use routing::xds::{stored, Translator, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};

/// Every fixture's resources as istiod wrote them.
fn wire_of(name: &str) -> Wire {
    use prost::Message;
    let res = load_resources(&fixture(name)).unwrap();
    let mut wire = bookinfo_wire(&res);
    for r in &res.routes {
        wire.push((ROUTE_TYPE, r.name.clone(), r.encode_to_vec().into()));
    }
    wire
}

/// Each fixture translated from its payloads kept compact (where that pays) gives the snapshot,
/// warnings and subscriptions it gives from the payloads as they came; and across the fixtures
/// assignments, clusters and listeners were kept compact, clusters and assignments also against
/// the dictionaries learned from the first services, so the reads went through `expand`.
#[test]
fn compact_payloads_translate_as_they_came() {
    let mut kept = std::collections::BTreeSet::new();
    // Kept against a learned dictionary (the compact form's second byte names it).
    let mut against_dictionary = std::collections::BTreeSet::new();
    for name in FIXTURES {
        let raw = wire_of(name);
        let compact: Wire = raw
            .iter()
            .map(|(t, n, v)| {
                let v = match stored::compact(t, v) {
                    Some(c) => {
                        kept.insert(*t);
                        if c[1] != 0 {
                            against_dictionary.insert(*t);
                        }
                        c.into()
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
    for t in [CLUSTER_TYPE, ENDPOINT_TYPE] {
        assert!(
            against_dictionary.contains(t),
            "no {t} was kept against a dictionary: {against_dictionary:?}"
        );
    }
}
