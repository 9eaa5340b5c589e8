//! `Translator::subscriptions`: what a state that may be incomplete asks for, found without
//! assembling it (the waypoint does not translate a state it would only hold back).

use super::memo::{bookinfo_wire, required, Wire};
use super::*;
use routing::xds::{Encoded, Translator, CLUSTER_TYPE, ENDPOINT_TYPE};

fn encoded(wire: &Wire) -> Vec<Encoded<'_>> {
    wire.iter()
        .map(|(t, n, v)| Encoded {
            type_url: t,
            name: n,
            value: v,
        })
        .collect()
}

/// bookinfo (istiod's shapes) before its EDS assignments arrived, and once they did: the answer
/// is every assignment its clusters name, as the translation's, and the translation that
/// follows reuses the pieces the question read.
#[test]
fn an_incomplete_state_asks_for_what_the_translation_would() {
    let res = load_resources(&fixture("bookinfo.json")).unwrap();
    let complete = bookinfo_wire(&res);
    let mut incomplete = complete.clone();
    incomplete.retain(|(t, _, _)| *t != ENDPOINT_TYPE);
    let mut translator = Translator::new();
    let asked = translator
        .subscriptions(&encoded(&incomplete))
        .expect("bookinfo is checked without assembly");
    assert_eq!(asked, required(&encoded(&complete)));
    assert_eq!(
        asked.endpoints.len(),
        res.endpoints.len(),
        "every assignment is asked for: {asked:?}"
    );
    let t = translator
        .translate(&encoded(&complete), &TranslateOptions::default())
        .unwrap();
    assert_eq!(*t.subscriptions, asked);
    let reuse = translator.reuse();
    assert_eq!(
        reuse.built,
        res.endpoints.len(),
        "only the assignments are new: {reuse:?}"
    );
}

/// What only the translation can judge gets no answer: a resource that does not decode, one
/// with a rejection, a cluster whose endpoints are read at assembly (DNS, inline).
#[test]
fn no_answer_where_only_the_translation_can_judge() {
    let res = load_resources(&fixture("bookinfo.json")).unwrap();
    let wire = bookinfo_wire(&res);
    let mut translator = Translator::new();
    assert!(translator.subscriptions(&encoded(&wire)).is_some());

    let mut broken = wire.clone();
    broken.push((CLUSTER_TYPE, "broken".into(), vec![0xff, 0xff, 0xff].into()));
    assert_eq!(translator.subscriptions(&encoded(&broken)), None);

    // A DNS ServiceEntry's clusters (istiod 1.30's shape) in place of bookinfo's.
    let over = load_resources(&fixture("dns_serviceentry_1_30.json")).unwrap();
    let mut dns = res.clone();
    dns.clusters
        .retain(|c| !over.clusters.iter().any(|o| o.name == c.name));
    dns.clusters.extend(over.clusters);
    assert_eq!(
        translator.subscriptions(&encoded(&bookinfo_wire(&dns))),
        None
    );

    // Each of `invalid.json`'s cases: a listener (bad regex, bad weights, unknown cluster) or
    // an assignment (bad endpoint) that the translation rejects.
    let all: serde_json::Value = serde_json::from_str(&fixture("invalid.json")).unwrap();
    for case in [
        "bad_regex",
        "bad_weights",
        "unknown_cluster",
        "bad_endpoint",
    ] {
        let res = load_resources(&all[case].to_string()).unwrap();
        assert!(xds::translate(&res, &TranslateOptions::default()).is_err());
        let wire = bookinfo_wire(&res);
        assert_eq!(translator.subscriptions(&encoded(&wire)), None, "{case}");
    }
}
