//! `main_internal`'s matcher changed in one range (a service gone from the IP tree, then back):
//! the translator reads the other ranges as its last read had them.

use super::memo::{from_scratch, outcome};
use super::reuse::{bookinfo_wire, encoded};
use super::*;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use prost::Message;
use routing::xds::{Translator, LISTENER_TYPE};

/// `l` with the last range of its matcher's IPMatcher removed; `None` without an IP tree.
pub(super) fn without_last_range(l: &Listener) -> Option<Listener> {
    use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_tree::TreeType;
    use envoy_types::pb::xds::r#type::matcher::v3::matcher::MatcherType;
    /// `xds.type.matcher.v3.IPMatcher`, each range left encoded.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Ranges {
        #[prost(bytes = "vec", repeated, tag = "1")]
        range_matchers: Vec<Vec<u8>>,
    }
    let mut l = l.clone();
    let m = l.filter_chain_matcher.as_mut()?;
    let Some(MatcherType::MatcherTree(tree)) = &mut m.matcher_type else {
        return None;
    };
    let Some(TreeType::CustomMatch(custom)) = &mut tree.tree_type else {
        return None;
    };
    let any = custom.typed_config.as_mut()?;
    let mut ranges = Ranges::decode(any.value.as_slice()).ok()?;
    ranges.range_matchers.pop()?;
    any.value = ranges.encode_to_vec();
    Some(l)
}

/// A service gone from `main_internal`'s matcher and back (its IPMatcher range dropped, then
/// restored): the translator reads the other ranges as its last read had them, and gives what a
/// translation from scratch gives.
#[test]
fn a_matcher_range_dropped_and_restored_translates_as_from_scratch() {
    let res = load_resources(&fixture("bookinfo.json")).unwrap();
    let wire = bookinfo_wire(&res);
    let main = res.listeners.iter().find(|l| l.name == "main_internal");
    let fewer = without_last_range(main.unwrap()).expect("an IP tree");
    let i = wire
        .iter()
        .position(|(t, n, _)| *t == LISTENER_TYPE && &**n == "main_internal")
        .unwrap();
    let mut dropped = wire.clone();
    dropped[i].2 = fewer.encode_to_vec().into();
    let mut translator = Translator::new();
    let mut seen = Vec::new();
    for w in [&wire, &dropped, &wire] {
        let encoded = encoded(w);
        let memoized = outcome(translator.translate(&encoded, &TranslateOptions::default()));
        assert_eq!(memoized, from_scratch(&encoded));
        seen.push(memoized.unwrap());
    }
    assert_ne!(seen[0], seen[1], "the dropped range's VIP is not routed");
    assert_eq!(seen[0], seen[2]);
}
