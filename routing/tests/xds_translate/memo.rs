//! `xds::Translator` (which reuses the pieces of unchanged clusters and assignments) against a
//! translation from scratch: for random sequences of resource updates and removals over the
//! golden fixtures' resources (istiod's shapes), both give the same snapshot, warnings,
//! rejections, DNS targets and subscriptions at every step.

use super::*;
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Duration as ProtoDuration;
use proptest::prelude::*;
use prost::Message;
use routing::xds::{Encoded, Translator, CLUSTER_TYPE, ENDPOINT_TYPE, LISTENER_TYPE, ROUTE_TYPE};
use std::collections::BTreeMap;
use std::sync::OnceLock;

use super::reuse::Wire;

/// Fixtures whose resources make up the pool (istiod's shapes of several releases and features).
pub(super) const FIXTURES: &[&str] = &[
    "bookinfo.json",
    "authz.json",
    "dns_serviceentry_1_30.json",
    "locality_1_24.json",
    "multinetwork_1_30.json",
    "outbound_1_24.json",
    "releases_1_30.json",
    "route_fields.json",
    "rules.json",
    "upstreams.json",
];

/// A resource's key in a state of the world.
type Key = (&'static str, std::sync::Arc<str>);

/// Every resource of the fixtures, each with a few versions of its bytes: as istiod wrote it,
/// then changed the way pushes change it (an endpoint gone or unhealthy, another timeout or
/// balancer, a chain or a route fewer). Also one state per fixture to start from.
struct Pool {
    versions: Vec<(Key, Vec<Bytes>)>,
    starts: Vec<Vec<usize>>,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut versions: BTreeMap<Key, Vec<Bytes>> = BTreeMap::new();
        let mut starts = Vec::new();
        for f in FIXTURES {
            let res = load_resources(&fixture(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
            let mut keys = Vec::new();
            for l in &res.listeners {
                keys.push(add(
                    &mut versions,
                    LISTENER_TYPE,
                    &l.name,
                    listener_versions(l),
                ));
            }
            for c in &res.clusters {
                keys.push(add(
                    &mut versions,
                    CLUSTER_TYPE,
                    &c.name,
                    cluster_versions(c),
                ));
            }
            for c in &res.endpoints {
                keys.push(add(
                    &mut versions,
                    ENDPOINT_TYPE,
                    &c.cluster_name,
                    cla_versions(c),
                ));
            }
            for r in &res.routes {
                keys.push(add(&mut versions, ROUTE_TYPE, &r.name, route_versions(r)));
            }
            starts.push(keys);
        }
        let index: BTreeMap<&Key, usize> =
            versions.keys().enumerate().map(|(i, k)| (k, i)).collect();
        let starts = starts
            .iter()
            .map(|keys| keys.iter().map(|k| index[k]).collect())
            .collect();
        Pool {
            versions: versions.into_iter().collect(),
            starts,
        }
    })
}

fn add(
    versions: &mut BTreeMap<Key, Vec<Bytes>>,
    type_url: &'static str,
    name: &str,
    new: Vec<Bytes>,
) -> Key {
    let key = (type_url, std::sync::Arc::<str>::from(name));
    let list = versions.entry(key.clone()).or_default();
    for v in new {
        if !list.contains(&v) {
            list.push(v);
        }
    }
    key
}

fn listener_versions(l: &Listener) -> Vec<Bytes> {
    let mut fewer = l.clone();
    fewer.filter_chains.pop();
    let mut out = vec![l.encode_to_vec().into(), fewer.encode_to_vec().into()];
    // A VirtualService edit: one chain's first route gets another timeout (all else the same).
    if let Some(retimed) = retimed(l, None, 7) {
        out.push(retimed.encode_to_vec().into());
    }
    // A service gone from the matcher: its IPMatcher range dropped (the others' bytes the same).
    if let Some(fewer_ranges) = super::matcher::without_last_range(l) {
        out.push(fewer_ranges.encode_to_vec().into());
    }
    out
}

/// `l` with the first route of chain `chain` (else of the first chain with an inline route
/// config whose first route forwards) timing out after `secs`; `None` if there is none.
pub(super) fn retimed(l: &Listener, chain: Option<&str>, secs: i64) -> Option<Listener> {
    use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
    let mut l = l.clone();
    for c in &mut l.filter_chains {
        if chain.is_some_and(|n| n != c.name) {
            continue;
        }
        for f in &mut c.filters {
            let Some(ConfigType::TypedConfig(any)) = &mut f.config_type else {
                continue;
            };
            if !any.type_url.ends_with("HttpConnectionManager") {
                continue;
            }
            let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).ok()?;
            let Some(RouteSpecifier::RouteConfig(rc)) = &mut hcm.route_specifier else {
                continue;
            };
            let Some(Action::Route(ra)) = rc
                .virtual_hosts
                .first_mut()
                .and_then(|vh| vh.routes.first_mut())
                .and_then(|r| r.action.as_mut())
            else {
                continue;
            };
            ra.timeout = Some(ProtoDuration {
                seconds: secs,
                nanos: 0,
            });
            any.value = hcm.encode_to_vec();
            return Some(l);
        }
    }
    None
}

/// `wire` with reviews' (or `chain`'s) first route timing out after `secs`.
pub(super) fn retime_wire(wire: &mut Wire, chain: &str, secs: i64) {
    let (_, _, bytes) = wire
        .iter_mut()
        .find(|(t, n, _)| *t == LISTENER_TYPE && &**n == "main_internal")
        .expect("main_internal");
    let l = Listener::decode(&bytes[..]).unwrap();
    *bytes = retimed(&l, Some(chain), secs)
        .expect("the chain has a forwarding route")
        .encode_to_vec()
        .into();
}

fn cluster_versions(c: &Cluster) -> Vec<Bytes> {
    let mut timeout = c.clone();
    timeout.connect_timeout = Some(ProtoDuration {
        seconds: 3,
        nanos: 0,
    });
    let mut random = c.clone();
    random.lb_policy = 3; // RANDOM
    vec![
        c.encode_to_vec().into(),
        timeout.encode_to_vec().into(),
        random.encode_to_vec().into(),
    ]
}

fn cla_versions(c: &ClusterLoadAssignment) -> Vec<Bytes> {
    let mut fewer = c.clone();
    if let Some(l) = fewer.endpoints.first_mut() {
        l.lb_endpoints.pop();
    }
    let mut unhealthy = c.clone();
    if let Some(e) = unhealthy
        .endpoints
        .first_mut()
        .and_then(|l| l.lb_endpoints.first_mut())
    {
        e.health_status = 2; // UNHEALTHY
    }
    vec![
        c.encode_to_vec().into(),
        fewer.encode_to_vec().into(),
        unhealthy.encode_to_vec().into(),
    ]
}

fn route_versions(r: &RouteConfiguration) -> Vec<Bytes> {
    let mut fewer = r.clone();
    if let Some(vh) = fewer.virtual_hosts.first_mut() {
        vh.routes.pop();
    }
    vec![r.encode_to_vec().into(), fewer.encode_to_vec().into()]
}

#[derive(Debug, Clone)]
enum Step {
    /// Set resource `key` (an index into the pool) to its version `version` (modulo its count).
    Upsert {
        key: usize,
        version: usize,
    },
    Remove {
        key: usize,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let n = pool().versions.len();
    prop_oneof![
        3 => (0..n, 0..4usize).prop_map(|(key, version)| Step::Upsert { key, version }),
        1 => (0..n).prop_map(|key| Step::Remove { key }),
    ]
}

/// What a translation gave, without what differs between two equal snapshots (the version).
pub(super) fn outcome(
    r: Result<xds::Translation, Vec<xds::Rejection>>,
) -> Result<String, Vec<xds::Rejection>> {
    r.map(|t| describe(&t))
}

pub(super) fn describe(t: &xds::Translation) -> String {
    let mut json = t.snapshot.to_json();
    json.as_object_mut().unwrap().remove("version");
    format!(
        "{json:#}\nindexes {:#}\nwarnings {:?}\ndns {:?}\nsubscriptions {:?}",
        t.snapshot.index_json(),
        t.warnings,
        t.dns,
        t.subscriptions
    )
}

pub(super) fn from_scratch(encoded: &[Encoded<'_>]) -> Result<String, Vec<xds::Rejection>> {
    let mut res = Resources::default();
    for e in encoded {
        res.push_encoded(e.type_url, e.value).unwrap();
    }
    let t = xds::translate(&res, &TranslateOptions::default());
    if let Ok(t) = &t {
        let wanted = xds::required_resources(&res.listeners, &res.clusters);
        assert_eq!(*t.subscriptions, wanted, "subscriptions");
    }
    outcome(t)
}

/// What `encoded` subscribes to, from its decoded listeners and clusters.
pub(super) fn required(encoded: &[Encoded<'_>]) -> xds::Subscriptions {
    let mut res = Resources::default();
    for e in encoded {
        res.push_encoded(e.type_url, e.value).unwrap();
    }
    xds::required_resources(&res.listeners, &res.clusters)
}

fn config() -> ProptestConfig {
    let mut c = ProptestConfig::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        c.cases = 48;
    }
    c.failure_persistence = None;
    c
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn memoized_translation_equals_translation_from_scratch(
        start in 0..FIXTURES.len(),
        steps in proptest::collection::vec(step(), 1..10),
    ) {
        let pool = pool();
        // Resource → its version in the current state.
        let mut state: BTreeMap<usize, usize> =
            pool.starts[start].iter().map(|&k| (k, 0)).collect();
        let mut translator = Translator::new();
        let mut reused_any = false;
        // Two of three snapshots are published as the waypoint does (carried over, then shown
        // to the translator, whose next snapshot shares the clusters of unchanged services);
        // the third is not (an incomplete state held back).
        let mut live = std::sync::Arc::new(routing::Snapshot::empty());
        // The resources of the state translated last.
        let mut had: std::collections::BTreeSet<usize> = Default::default();
        for (i, s) in std::iter::once(None).chain(steps.iter().map(Some)).enumerate() {
            match s {
                Some(Step::Upsert { key, version }) => {
                    state.insert(*key, version % pool.versions[*key].1.len());
                }
                Some(Step::Remove { key }) => {
                    state.remove(key);
                }
                None => {}
            }
            let encoded: Vec<Encoded<'_>> = state
                .iter()
                .map(|(&k, &v)| {
                    let ((type_url, name), versions) = &pool.versions[k];
                    Encoded { type_url, name, value: &versions[v] }
                })
                .collect();
            // Every other state is first asked what it subscribes to, as the waypoint asks of
            // a state that may be incomplete (before translating it, if ever).
            let asked = if i % 2 == 1 { translator.subscriptions(&encoded) } else { None };
            // A cluster added or changed, or `main_internal` changed: asked of alone when the
            // translator can.
            let cluster_asked = match s {
                Some(Step::Upsert { key, .. }) => {
                    let at = state.keys().position(|k| k == key).unwrap();
                    match &pool.versions[*key].0 {
                        (t, _) if *t == CLUSTER_TYPE => translator.subscriptions_with(&encoded[at..=at], None),
                        (t, n) if *t == LISTENER_TYPE && &**n == "main_internal" && had.contains(key) => translator.subscriptions_with(&[], Some(&encoded[at])),
                        _ => None,
                    }
                }
                _ => None,
            };
            // An assignment the last state had, changed: read alone when the translator can
            // (the last translation was of the state before this step).
            let alone = match s {
                Some(Step::Upsert { key, .. }) if pool.versions[*key].0 .0 == ENDPOINT_TYPE && had.contains(key) => {
                    let at = state.keys().position(|k| k == key).unwrap();
                    translator.translate_assignments(&encoded[at..=at], &TranslateOptions::default())
                }
                // `main_internal` changed: read alone when the translator can.
                Some(Step::Upsert { key, .. }) if pool.versions[*key].0 == (LISTENER_TYPE, "main_internal".into()) && had.contains(key) => {
                    let at = state.keys().position(|k| k == key).unwrap();
                    translator.translate_listener(&encoded[at..=at], &TranslateOptions::default())
                }
                _ => None,
            };
            let translated = match alone {
                Some(t) => Ok(t),
                None => translator.translate(&encoded, &TranslateOptions::default()),
            };
            had = state.keys().copied().collect();
            let memoized = match translated {
                Ok(mut t) if i % 3 != 2 => {
                    t.snapshot.carry_over_state(&live);
                    let d = describe(&t);
                    live = std::sync::Arc::new(t.snapshot);
                    translator.published(&live);
                    Ok(d)
                }
                other => outcome(other),
            };
            reused_any |= i > 0 && translator.reuse().reused > 0;
            prop_assert_eq!(&memoized, &from_scratch(&encoded), "step {} {:?}", i, s);
            // An answer is the translation's, for a state it accepts.
            for asked in [asked, cluster_asked].into_iter().flatten() {
                prop_assert!(memoized.is_ok(), "step {}: answered for a rejected state", i);
                prop_assert_eq!(asked, required(&encoded), "step {} {:?}", i, s);
            }
        }
        // The property is about reuse: a sequence that changed little reused pieces.
        prop_assert!(reused_any || steps.len() < 2 || state.len() < 2);
    }
}
