use super::chain_name;

#[test]
fn chain_names_of_every_release() {
    let h = "reviews.default.svc.cluster.local";
    let cases = [
        // 1.22/1.23
        (
            format!("inbound-vip|9080||{h}-http"),
            format!("inbound-vip|9080|http|{h}"),
        ),
        (
            format!("inbound-vip|27017||{h}-tcp"),
            format!("inbound-vip|27017|tcp|{h}"),
        ),
        // 1.24+: unchanged
        (
            format!("inbound-vip|9080|http|{h}"),
            format!("inbound-vip|9080|http|{h}"),
        ),
        ("direct-http".into(), "direct-http".into()),
        // Not a legacy name: left as is (and reported as not a service chain).
        (
            format!("inbound-vip|x||{h}-http"),
            format!("inbound-vip|x||{h}-http"),
        ),
        (
            "inbound-vip|9080||-http".into(),
            "inbound-vip|9080||-http".into(),
        ),
        (
            format!("inbound-vip|9080||{h}-udp"),
            format!("inbound-vip|9080||{h}-udp"),
        ),
        (
            format!("outbound|9080||{h}-http"),
            format!("outbound|9080||{h}-http"),
        ),
    ];
    for (name, want) in cases {
        assert_eq!(chain_name(&name), want, "{name}");
    }
}

/// IPMatcher ranges read from their own bytes: a matcher that changed in one range decodes that
/// range alone, and gives what a read from scratch gives, diagnostics included and in order.
mod ranges {
    use super::super::matcher::{tree, Ranges};
    use super::super::{IpMatcher, Matched, MAIN_INTERNAL};
    use crate::xds::{At, Diag, LISTENER_TYPE};
    use envoy_types::pb::google::protobuf::UInt32Value;
    use envoy_types::pb::xds::r#type::matcher::v3::matcher::matcher_tree::TreeType;
    use envoy_types::pb::xds::r#type::matcher::v3::matcher::MatcherType;
    use envoy_types::pb::xds::r#type::matcher::v3::Matcher;
    use prost::Message;

    const AT: At<'static> = At {
        type_url: LISTENER_TYPE,
        name: MAIN_INTERNAL,
    };

    /// bookinfo's `main_internal` matcher (istiod 1.24+: an IP tree at the root).
    fn bookinfo_matcher() -> Matcher {
        let json = include_str!("../../../tests/fixtures/xds/bookinfo.json");
        let res = crate::xds::json::load_resources(json).unwrap();
        let main = res.listeners.iter().find(|l| l.name == MAIN_INTERNAL);
        main.and_then(|l| l.filter_chain_matcher.clone()).unwrap()
    }

    /// The matcher's IPMatcher bytes.
    fn ip_matcher(m: &mut Matcher) -> &mut Vec<u8> {
        let Some(MatcherType::MatcherTree(t)) = &mut m.matcher_type else {
            panic!("no tree")
        };
        let Some(TreeType::CustomMatch(c)) = &mut t.tree_type else {
            panic!("no IPMatcher")
        };
        &mut c.typed_config.as_mut().unwrap().value
    }

    fn edited(m: &Matcher, edit: impl FnOnce(&mut IpMatcher)) -> Matcher {
        let mut m = m.clone();
        let bytes = ip_matcher(&mut m);
        let mut ipm = IpMatcher::decode(bytes.as_slice()).unwrap();
        edit(&mut ipm);
        *bytes = ipm.encode_to_vec();
        m
    }

    fn read(m: &Matcher, ranges: &mut Ranges) -> (Matched, Diag) {
        let (mut out, mut diag) = (Matched::default(), Diag::default());
        tree(m, AT, &mut diag, &mut out, (ranges, 0));
        (out, diag)
    }

    fn assert_same(a: &(Matched, Diag), b: &(Matched, Diag)) {
        assert_eq!(a.0.vips, b.0.vips);
        assert_eq!(a.0.pods, b.0.pods);
        assert_eq!(a.0.authorities, b.0.authorities);
        assert_eq!(a.1, b.1);
    }

    #[test]
    fn a_changed_range_is_decoded_alone() {
        let first = bookinfo_matcher();
        let count = IpMatcher::decode(ip_matcher(&mut first.clone()).as_slice())
            .unwrap()
            .range_matchers
            .len();
        assert!(count >= 2, "{count} ranges");
        let mut ranges = Ranges::default();
        let before = read(&first, &mut ranges);
        assert_eq!(ranges.built, count);
        assert!(!before.0.vips.is_empty());

        // A new service (a copy of the first range at another VIP) and one range that warns.
        let second = edited(&first, |ipm| {
            let mut new = ipm.range_matchers[0].clone();
            new.ranges[0].address_prefix = "10.96.200.1".into();
            ipm.range_matchers.push(new);
            let mut wide = ipm.range_matchers[1].clone();
            wide.ranges[0].address_prefix = "10.96.201.0".into();
            wide.ranges[0].prefix_len = Some(UInt32Value { value: 24 });
            wide.exclusive = true;
            ipm.range_matchers.insert(1, wide);
        });
        let after = read(&second, &mut ranges);
        assert_eq!(ranges.built, 2, "only the two new ranges are decoded");
        assert_same(&after, &read(&second, &mut Ranges::default()));
        assert!(after
            .0
            .vips
            .keys()
            .any(|(ip, _)| ip.to_string() == "10.96.200.1"));
        let warned: Vec<&str> = after
            .1
            .warnings
            .iter()
            .map(|w| w.message.as_str())
            .collect();
        assert!(
            warned.iter().any(|w| w.contains("/24 is not one address")),
            "{warned:?}"
        );
        assert!(warned.iter().any(|w| w.contains("exclusive")), "{warned:?}");

        // Read again: nothing decoded, the same answer and the same warnings.
        let again = read(&second, &mut ranges);
        assert_eq!(ranges.built, 0);
        assert_same(&again, &after);
    }

    #[test]
    fn a_range_that_does_not_decode_is_rejected_as_a_whole_read_rejects_it() {
        let mut m = bookinfo_matcher();
        let mut ranges = Ranges::default();
        read(&m, &mut ranges);
        // One range's bytes cut short: field 1 says 40 bytes, 2 follow.
        ip_matcher(&mut m).extend_from_slice(&[0x0a, 40, 0x0a, 0x00]);
        let memoized = read(&m, &mut ranges);
        let fresh = read(&m, &mut Ranges::default());
        assert_same(&memoized, &fresh);
        let reasons: Vec<&str> = memoized
            .1
            .rejections
            .iter()
            .map(|r| r.reason.as_str())
            .collect();
        assert!(
            reasons.len() == 1 && reasons[0].starts_with("cannot decode IPMatcher"),
            "{reasons:?}"
        );
        assert!(memoized.0.vips.is_empty());

        // Field 1 as a varint, not a message: rejected as decoding the whole matcher rejects it.
        let mut m = bookinfo_matcher();
        ip_matcher(&mut m).extend_from_slice(&[0x08, 0x01]);
        let memoized = read(&m, &mut ranges);
        assert_same(&memoized, &read(&m, &mut Ranges::default()));
        assert_eq!(memoized.1.rejections.len(), 1, "{:?}", memoized.1);
    }
}

/// Two chains of one name reject the listener, also when one is written in 1.22/1.23's form
/// and the other in 1.24's (they are read as the same name); distinct names do not.
/// bookinfo's `main_internal` (istiod's shapes), and its clusters' names as the xDS client
/// holds them.
fn bookinfo_main() -> (
    envoy_types::pb::envoy::config::listener::v3::Listener,
    Vec<std::sync::Arc<str>>,
) {
    let json = include_str!("../../../tests/fixtures/xds/bookinfo.json");
    let res = crate::xds::json::load_resources(json).unwrap();
    let main = res
        .listeners
        .iter()
        .find(|l| l.name == super::MAIN_INTERNAL)
        .unwrap();
    let held = res
        .clusters
        .iter()
        .map(|c| c.name.as_str().into())
        .collect();
    (main.clone(), held)
}

#[test]
fn a_chain_name_twice_rejects_the_listener() {
    use super::{translate, ListenerMemo, ShallowListener};
    use crate::xds::chain::ClusterNames;
    use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener};
    use prost::Message;
    use std::collections::BTreeMap;
    let (main, held) = bookinfo_main();
    let main = &main;
    let read = |l: &Listener| {
        let shallow = ShallowListener::decode(bytes::Bytes::from(l.encode_to_vec())).unwrap();
        let known: ClusterNames<'_> = held.iter().map(crate::xds::chain::Named).collect();
        let mut diag = crate::xds::Diag::default();
        translate(
            &[shallow],
            &BTreeMap::new(),
            &known,
            (false, &[]),
            &mut ListenerMemo::default(),
            &mut Default::default(),
            &mut diag,
        );
        diag.rejections
            .iter()
            .map(|r| r.reason.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(read(main), Vec::<String>::new());
    let reviews =
        |c: &&FilterChain| c.name == "inbound-vip|9080|http|reviews.default.svc.cluster.local";
    let chain = main.filter_chains.iter().find(reviews).unwrap().clone();
    let rejected_with = |extra: FilterChain| {
        let mut l = main.clone();
        l.filter_chains.push(extra);
        let rejected = read(&l);
        assert!(
            rejected
                .iter()
                .any(|m| m.contains("duplicate filter chain")),
            "{rejected:?}"
        );
    };
    rejected_with(chain.clone());
    let mut old = chain.clone();
    old.name = "inbound-vip|9080||reviews.default.svc.cluster.local-http".into();
    rejected_with(old);
}

/// A chain piece holds its name once: a service chain's parsed name is the piece's string, and
/// the name as written is kept only when it differs (istiod before 1.24); the clusters it asked
/// for are the state's strings; what found nothing holds no diagnostics.
#[test]
fn a_chain_piece_holds_its_name_once() {
    use super::MAIN_INTERNAL;
    use crate::xds::chain::{ChainPiece, ChainRole, ClusterNames, Known};
    use crate::xds::{At, LISTENER_TYPE};
    use std::collections::BTreeMap;
    let (main, held) = bookinfo_main();
    let names: ClusterNames<'_> = held.iter().map(crate::xds::chain::Named).collect();
    let at = At {
        type_url: LISTENER_TYPE,
        name: MAIN_INTERNAL,
    };
    let build = |chain| ChainPiece::build(chain, &BTreeMap::new(), &Known::new(&names), at);
    let (mut services, mut asked) = (0, 0);
    for chain in &main.filter_chains {
        let piece = build(chain);
        assert_eq!(piece.raw_name(), chain.name);
        // A cluster it found is remembered by the string the state holds it under.
        for (name, found) in &piece.asked {
            let held = held.iter().any(|h| std::sync::Arc::ptr_eq(h, name));
            assert_eq!(held, *found, "{name}");
            asked += usize::from(held);
        }
        if let ChainRole::Service { cluster, .. } = &piece.role {
            assert!(
                std::sync::Arc::ptr_eq(cluster.name(), &piece.name),
                "{}",
                piece.name
            );
            assert!(piece.listener_diag.is_empty() && piece.telemetry.is_some());
            services += 1;
        }
    }
    assert!(
        services >= 3 && asked >= 1,
        "{services} chains, {asked} found"
    );
    // istiod 1.22's name for reviews' chain: read as 1.24's, written as it came.
    let mut legacy = main.filter_chains[0].clone();
    legacy.name = "inbound-vip|9080||reviews.default.svc.cluster.local-http".into();
    let piece = build(&legacy);
    assert_eq!(piece.raw_name(), legacy.name);
    assert_eq!(
        &*piece.name,
        "inbound-vip|9080|http|reviews.default.svc.cluster.local"
    );
    let size = std::mem::size_of::<ChainPiece>();
    assert!(
        size <= 288,
        "{size} bytes (384 with two names and two diagnostics inline)"
    );
}
