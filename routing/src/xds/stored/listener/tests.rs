use super::super::{expand, shallow, Dictionaries, ReadError, PLAIN};
use super::*;
use crate::xds::LISTENER_TYPE;
use envoy_types::pb::envoy::config::core::v3::{address, Address, SocketAddress};
use envoy_types::pb::envoy::config::listener::v3::{filter, Filter, FilterChain, Listener};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

/// A service's chain as istiod shapes one (its name, and an HCM whose settings repeat the
/// service's hostname), about a kilobyte.
fn chain(i: usize) -> FilterChain {
    let host = format!("svc-{i}.default.svc.cluster.local");
    let name = format!("inbound-vip|9080|http|{host}");
    let hcm = format!(
        "stat_prefix={name};route={host}:9080;domains={host},{host}:9080;{}",
        "tracing=zipkin;random_sampling=1;access_log=envoy.access_loggers.file;".repeat(8)
    );
    FilterChain {
        name,
        filters: vec![Filter {
            name: "envoy.filters.network.http_connection_manager".into(),
            config_type: Some(filter::ConfigType::TypedConfig(Any {
                type_url: "type.googleapis.com/envoy.extensions.filters.network.\
                           http_connection_manager.v3.HttpConnectionManager"
                    .into(),
                value: hcm.into_bytes(),
            })),
        }],
        ..Default::default()
    }
}

/// `main_internal` with `n` chains (chain `changed` other than the others' shape when given),
/// a matcher, and fields on either side of the chains.
fn main_internal(n: usize, changed: Option<usize>) -> Vec<u8> {
    let mut chains: Vec<FilterChain> = (0..n).map(chain).collect();
    if let Some(c) = changed {
        chains[c].name.push_str("-changed");
    }
    Listener {
        name: "main_internal".into(),
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: "0.0.0.0".into(),
                ..Default::default()
            })),
        }),
        filter_chains: chains,
        filter_chain_matcher: Some(envoy_types::pb::xds::r#type::matcher::v3::Matcher {
            on_no_match: None,
            matcher_type: None,
        }),
        stat_prefix: "main_internal ".repeat(20),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A large listener is kept chain by chain, in a small part of its size, and expands to exactly
/// its bytes; read shallowly as kept, its chains are blocks that expand to the chains.
#[test]
fn a_large_listener_is_kept_chain_by_chain_and_expands_to_its_bytes() {
    let d = Dictionaries::new();
    let raw = main_internal(40, None);
    assert!(raw.len() >= CHAINS_FROM);
    let kept = d.compact(LISTENER_TYPE, &raw).expect("worth it");
    assert_eq!(kept[..2], [COMPACT, LISTENER]);
    assert!(
        kept.len() * 5 < raw.len(),
        "{} of {}",
        kept.len(),
        raw.len()
    );
    assert_eq!(&*d.expand(&kept).unwrap(), raw.as_slice());
    // The same bytes, the same form.
    assert_eq!(d.compact(LISTENER_TYPE, &raw).as_deref(), Some(&kept[..]));
    // Read shallowly, as the translator reads what the xDS client kept (the process's
    // dictionaries).
    let kept = crate::xds::stored::compact(LISTENER_TYPE, &raw).unwrap();
    let l = crate::xds::listener::ShallowListener::decode(shallow(&kept).unwrap()).unwrap();
    assert_eq!(l.name, "main_internal");
    assert_eq!(l.filter_chains.len(), 40);
    for (i, c) in l.filter_chains.iter().enumerate() {
        assert_eq!(c[0], COMPACT, "chain {i} is a block");
        assert_eq!(&*expand(c).unwrap(), chain(i).encode_to_vec().as_slice());
    }
}

/// A chain sent again unchanged takes its block from the last listener kept so, not from a new
/// compression: a block planted there (the chain's block without the dictionary) is what the
/// next listener holds for that chain, while a chain that changed, or that the last listener
/// did not have, is compressed again. The cache holds the kept listener itself, not a copy.
#[test]
fn an_unchanged_chain_takes_the_last_listener_s_block() {
    let d = Dictionaries::new();
    let first = d.compact(LISTENER_TYPE, &main_internal(20, None)).unwrap();
    let (zero, five) = (chain(0).encode_to_vec(), chain(5).encode_to_vec());
    let planted = d.block(&zero, None, |_| false, false).unwrap();
    {
        let mut cache = d.chains.lock().unwrap();
        let cache = cache.as_mut().expect("kept");
        let digest = crate::xds::pieces::digest(&zero);
        let own = cache.get(digest).expect("chain 0 remembered").to_vec();
        assert_eq!(
            own[1],
            super::super::CHAIN_FORM,
            "against the chains' dictionary"
        );
        assert_ne!(own, planted);
        // The cache shares the kept listener's bytes.
        assert!(first
            .as_ptr_range()
            .contains(&cache.get(digest).unwrap().as_ptr()));
        let len = planted.len() as u32;
        // Only chains 0 and 5 remembered, both as the planted block.
        cache.kept = planted.clone().into();
        cache.at.clear();
        cache.at.insert(digest, (0, len));
        // Chain 5 will change: its old block is not what it gets.
        cache.at.insert(crate::xds::pieces::digest(&five), (0, len));
    }
    let raw = main_internal(20, Some(5));
    let second = d.compact(LISTENER_TYPE, &raw).unwrap();
    let l = crate::xds::listener::ShallowListener::decode(bytes::Bytes::from(second[2..].to_vec()))
        .unwrap();
    assert_eq!(
        &l.filter_chains[0][..],
        &planted[..],
        "taken from the last listener"
    );
    assert_eq!(
        l.filter_chains[5][1],
        super::super::CHAIN_FORM,
        "compressed again"
    );
    assert_ne!(&l.filter_chains[5][..], &planted[..]);
    assert!(*d.expand(&second).unwrap() == raw[..]);
    assert_ne!(first, second);
}

/// What this form could not give back exactly is kept as any payload: a length not in its
/// shortest form. A chain that begins with a zero byte (not a message) is a block whatever its
/// size, in a listener kept chain by chain however small, and reads back as itself (a chain
/// that does not decode). A broken inner message, or a listener block inside one, is an
/// error, not a guess.
#[test]
fn what_the_form_cannot_give_back_is_kept_as_any_payload() {
    let d = Dictionaries::new();
    let good = main_internal(10, None);
    // Field 1 (name) with its length written in two bytes where one would do.
    let mut padded = vec![0x0a, 0x8d, 0x00];
    padded.extend_from_slice(b"main_internal");
    padded.extend_from_slice(&good);
    assert!(d.compact_listener(&padded, true).is_none());
    let kept = d.compact(LISTENER_TYPE, &padded).expect("repetitive");
    assert_eq!(kept[1], PLAIN);
    assert_eq!(&*d.expand(&kept).unwrap(), padded.as_slice());
    // A small listener with a chain whose bytes begin with zero: kept chain by chain.
    let odd = [0x0a, 0x01, b'l', 0x1a, 0x02, 0x00, 0x01];
    let kept = d
        .compact(LISTENER_TYPE, &odd)
        .expect("a chain is not a message");
    assert_eq!(kept[..2], [COMPACT, LISTENER]);
    assert_eq!(&*d.expand(&kept).unwrap(), odd.as_slice());
    let inner = fields(&kept[2..]).unwrap();
    let chain = inner.iter().find(|f| f.number == FILTER_CHAINS).unwrap();
    assert_eq!(chain.value[..2], [COMPACT, PLAIN]);
    assert_eq!(&*d.expand(chain.value).unwrap(), &[0x00, 0x01]);
    // Without one, a small listener is kept as any payload.
    assert!(d.compact_listener(&odd[..3], false).is_none());
    // Broken forms.
    assert!(matches!(
        d.expand(&[COMPACT, LISTENER, 0x1a, 0x05, 0x00]),
        Err(ReadError::Listener)
    ));
    assert!(matches!(
        d.expand(&[COMPACT, LISTENER, 0x1a, 0x02, COMPACT, LISTENER]),
        Err(ReadError::Listener)
    ));
}
