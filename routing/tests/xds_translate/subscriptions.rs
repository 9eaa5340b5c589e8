//! `Translator::subscriptions`: what a state that may be incomplete asks for, found without
//! assembling it (the waypoint does not translate a state it would only hold back).

use super::memo::required;
use super::reuse::{bookinfo_wire, encoded, Wire};
use super::*;
use routing::xds::{Encoded, Translator, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE};

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
    // Each name asked for is the string its cluster came under (istiod names an assignment
    // after its cluster): the subscription holds no copy.
    for (answer, name) in [&asked, &*t.subscriptions]
        .into_iter()
        .flat_map(|a| a.endpoints.iter().map(move |n| (a, n)))
    {
        let (_, held, _) = complete
            .iter()
            .find(|(t, n, _)| *t == CLUSTER_TYPE && n == name)
            .unwrap_or_else(|| panic!("{name} is a cluster's name"));
        assert!(std::sync::Arc::ptr_eq(held, name), "{name} in {answer:?}");
    }
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

/// A new service's clusters asked of alone, against the last translation: the answer is the
/// whole state's (its assignments added to the last ones), a cluster whose bytes did not change
/// adds nothing, and a cluster that would need reading at assembly gets no answer. The
/// translation that follows reuses the pieces the question built.
#[test]
fn new_clusters_are_asked_of_alone() {
    let res = load_resources(&fixture("bookinfo.json")).unwrap();
    // In the client's order (by type, then name).
    let mut complete = bookinfo_wire(&res);
    complete.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    // bookinfo without `ratings` translated, then `ratings`' clusters arrive.
    let is_ratings = |n: &str| n.contains("ratings");
    let mut before = complete.clone();
    before.retain(|(t, n, _)| !(is_ratings(n) && (*t == CLUSTER_TYPE || *t == ENDPOINT_TYPE)));
    let mut translator = Translator::new();
    let options = TranslateOptions::default();
    translator.translate(&encoded(&before), &options).unwrap();
    let mut grown = complete.clone();
    grown.retain(|(t, n, _)| !(is_ratings(n) && *t == ENDPOINT_TYPE));
    let new: Wire = grown
        .iter()
        .filter(|(t, n, _)| *t == CLUSTER_TYPE && is_ratings(n))
        .cloned()
        .collect();
    assert!(!new.is_empty());
    let alone = translator
        .subscriptions_with(&encoded(&new), None)
        .expect("ratings' clusters are asked of alone");
    assert_eq!(alone, required(&encoded(&complete)));
    assert!(alone.endpoints.iter().any(|n| is_ratings(n)), "{alone:?}");
    // The whole state's question gives the same answer.
    let mut other = Translator::new();
    other.translate(&encoded(&before), &options).unwrap();
    assert_eq!(other.subscriptions(&encoded(&grown)), Some(alone.clone()));
    // With `main_internal` again (its bytes elsewhere, read): the same answer, and the same
    // as the whole state's question with that listener.
    let (t, n, main) = grown
        .iter()
        .find(|(t, n, _)| *t == LISTENER_TYPE && &**n == "main_internal")
        .unwrap();
    let copy: bytes::Bytes = main.to_vec().into();
    let main = Encoded {
        type_url: t,
        name: n,
        value: &copy,
    };
    let mut third = Translator::new();
    third.translate(&encoded(&before), &options).unwrap();
    assert_eq!(
        third.subscriptions_with(&encoded(&new), Some(&main)),
        Some(alone.clone())
    );
    assert!(third.reuse().reused > 0, "its chains found by digest");
    // An unchanged cluster adds nothing.
    let known: Wire = before
        .iter()
        .filter(|(t, _, _)| *t == CLUSTER_TYPE)
        .take(1)
        .cloned()
        .collect();
    let t = translator.translate(&encoded(&before), &options).unwrap();
    assert_eq!(
        translator.subscriptions_with(&encoded(&known), None),
        Some((*t.subscriptions).clone())
    );
    // The grown state translates with the question's pieces.
    translator.subscriptions_with(&encoded(&new), None).unwrap();
    let t = translator.translate(&encoded(&complete), &options).unwrap();
    assert_eq!(*t.subscriptions, alone);
    let reuse = translator.reuse();
    assert_eq!(
        reuse.built,
        res.endpoints
            .iter()
            .filter(|e| is_ratings(&e.cluster_name))
            .count(),
        "only ratings' assignments are new: {reuse:?}"
    );
    // A DNS cluster's endpoints are read at assembly: no answer.
    let over = load_resources(&fixture("dns_serviceentry_1_30.json")).unwrap();
    let dns: Wire = bookinfo_wire(&over)
        .into_iter()
        .filter(|(t, _, _)| *t == CLUSTER_TYPE)
        .collect();
    assert_eq!(translator.subscriptions_with(&encoded(&dns), None), None);
}
