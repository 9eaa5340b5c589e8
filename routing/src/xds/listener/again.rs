//! The listeners read again with nothing changed: a push of one new service asks
//! [`translate`](super::translate) about the same `main_internal` up to three times (what the
//! state subscribes to, then a route patch tried, then the splice), and at 10 000 services each
//! time walked 10 000 chains. The last call's answer is kept, and given again when the
//! listeners are the very same bytes, the route configurations equal and the cluster names the
//! same set.

use super::{MainListener, ShallowListener};
use crate::xds::chain::ClusterNames;
use crate::xds::pieces::same_bytes;
use crate::xds::Diag;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use std::collections::BTreeMap;
use std::sync::Arc;

/// What one call read and gave.
#[derive(Debug)]
pub(crate) struct LastCall {
    /// Held, so that their addresses cannot be another listener's while this is kept.
    listeners: Vec<ShallowListener>,
    routes: Vec<(String, RouteConfiguration)>,
    known: u128,
    pub(super) out: Arc<MainListener>,
    /// The RDS names and the diagnostics the call added.
    pub(super) rds: crate::xds::Names,
    pub(super) diag: Diag,
    /// Chains it read.
    pub(super) chains: usize,
}

/// An order-free digest of a set of cluster names (equal digests are taken as equal sets, as
/// the translator's digests of bytes are).
pub(super) fn fingerprint(known: &ClusterNames<'_>) -> u128 {
    known.iter().fold(known.len() as u128, |acc, n| {
        acc.wrapping_add(crate::xds::pieces::name_key(n.0))
    })
}

/// The [`fingerprint`] of a set from that of the set with `added` (names it does not have).
pub(super) fn without(fingerprint: u128, added: &[&str]) -> u128 {
    added
        .iter()
        .fold(fingerprint.wrapping_sub(added.len() as u128), |acc, n| {
            acc.wrapping_sub(crate::xds::pieces::name_key(n))
        })
}

fn same_listener(a: &ShallowListener, b: &ShallowListener) -> bool {
    let same_opt = |a: &Option<bytes::Bytes>, b: &Option<bytes::Bytes>| match (a, b) {
        (Some(a), Some(b)) => same_bytes(a, b),
        (None, None) => true,
        _ => false,
    };
    a.name == b.name
        && a.filter_chains.len() == b.filter_chains.len()
        && a.filter_chains
            .iter()
            .zip(&b.filter_chains)
            .all(|(a, b)| same_bytes(a, b))
        && same_opt(&a.filter_chain_matcher, &b.filter_chain_matcher)
        && same_opt(&a.default_filter_chain, &b.default_filter_chain)
}

impl LastCall {
    pub(super) fn new(
        listeners: &[ShallowListener],
        routes: &BTreeMap<&str, &RouteConfiguration>,
        known: u128,
        out: Arc<MainListener>,
        (rds, diag, chains): (crate::xds::Names, Diag, usize),
    ) -> LastCall {
        LastCall {
            listeners: listeners.to_vec(),
            routes: routes
                .iter()
                .map(|(n, r)| (n.to_string(), (*r).clone()))
                .collect(),
            known,
            out,
            rds,
            diag,
            chains,
        }
    }

    /// Whether a call with these inputs gives what this one gave.
    pub(super) fn answers(
        &self,
        listeners: &[ShallowListener],
        routes: &BTreeMap<&str, &RouteConfiguration>,
        known: u128,
    ) -> bool {
        self.known == known
            && self.listeners.len() == listeners.len()
            && self
                .listeners
                .iter()
                .zip(listeners)
                .all(|(a, b)| same_listener(a, b))
            && self.routes.len() == routes.len()
            && self
                .routes
                .iter()
                .zip(routes)
                .all(|((n, r), (m, s))| n == m && r == *s)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{translate, ListenerMemo, MAIN_INTERNAL};
    use super::*;
    use prost::Message;

    /// bookinfo's listeners as the xDS client holds them, and its cluster names.
    fn bookinfo() -> (Vec<ShallowListener>, Vec<String>) {
        let json = include_str!("../../../tests/fixtures/xds/bookinfo.json");
        let res = crate::xds::json::load_resources(json).unwrap();
        let listeners = res
            .listeners
            .iter()
            .map(|l| ShallowListener::decode(bytes::Bytes::from(l.encode_to_vec())).unwrap())
            .collect();
        (
            listeners,
            res.clusters.iter().map(|c| c.name.clone()).collect(),
        )
    }

    fn call(
        memo: &mut ListenerMemo,
        listeners: &[ShallowListener],
        names: &[String],
    ) -> (Arc<MainListener>, crate::xds::Names, Diag) {
        grown(memo, listeners, names, &[])
    }

    /// [`call`], `added` named as new since the memo's last read.
    fn grown(
        memo: &mut ListenerMemo,
        listeners: &[ShallowListener],
        names: &[String],
        added: &[&str],
    ) -> (Arc<MainListener>, crate::xds::Names, Diag) {
        let held: Vec<Arc<str>> = names.iter().map(|n| n.as_str().into()).collect();
        let known: ClusterNames<'_> = held.iter().map(crate::xds::chain::Named).collect();
        let (mut rds, mut diag) = (crate::xds::Names::new(), Diag::default());
        let out = translate(
            listeners,
            &BTreeMap::new(),
            &known,
            (false, added),
            memo,
            &mut rds,
            &mut diag,
        );
        (out, rds, diag)
    }

    /// The same listeners' bytes and cluster names: the last answer, not read again. A copy of
    /// the bytes elsewhere, or a cluster gone, is read again, and gives what reading gives.
    #[test]
    fn the_same_listeners_are_answered_without_reading() {
        let (listeners, mut names) = bookinfo();
        assert!(listeners.iter().any(|l| l.name == MAIN_INTERNAL));
        let mut memo = ListenerMemo::default();
        let first = call(&mut memo, &listeners, &names);
        assert!(!first.0.chains.is_empty());

        let again = call(&mut memo, &listeners, &names);
        assert!(Arc::ptr_eq(&first.0, &again.0), "answered again");
        assert_eq!((&first.1, &first.2), (&again.1, &again.2));

        let copies: Vec<ShallowListener> = listeners
            .iter()
            .map(|l| ShallowListener::decode(bytes::Bytes::from(l.encode_to_vec())).unwrap())
            .collect();
        let read = call(&mut memo, &copies, &names);
        assert!(!Arc::ptr_eq(&first.0, &read.0), "other bytes are read");
        assert_eq!(
            first.0.chains.keys().collect::<Vec<_>>(),
            read.0.chains.keys().collect::<Vec<_>>()
        );
        assert_eq!((&first.1, &first.2), (&read.1, &read.2));

        // The clusters a chain routes to are gone: read again, and that chain built again.
        names.retain(|n| !n.contains("reviews"));
        let fewer = call(&mut memo, &copies, &names);
        assert!(!Arc::ptr_eq(&read.0, &fewer.0));
        let rebuilt = |name: &str| !Arc::ptr_eq(&read.0.chains[name], &fewer.0.chains[name]);
        let chains: Vec<&String> = read.0.chains.keys().collect();
        assert!(chains.iter().any(|c| c.contains("reviews") && rebuilt(c)));
        assert!(chains.iter().any(|c| !c.contains("reviews") && !rebuilt(c)));
    }

    /// Listeners read again with clusters added since the memo's last read: a remembered chain
    /// is known valid from the added names alone, unless it found one of them missing (then it
    /// is built again); named wrongly (not the last read's set and those), every chain is
    /// checked against all the names. Each gives what a read from scratch gives.
    #[test]
    fn chains_are_known_valid_from_the_names_added() {
        let (listeners, names) = bookinfo();
        let copies = || -> Vec<ShallowListener> {
            listeners
                .iter()
                .map(|l| ShallowListener::decode(bytes::Bytes::from(l.encode_to_vec())).unwrap())
                .collect()
        };
        let scratch = |names: &[String]| call(&mut ListenerMemo::default(), &copies(), names);
        let same = |a: &(Arc<MainListener>, crate::xds::Names, Diag),
                    b: &(Arc<MainListener>, crate::xds::Names, Diag)| {
            assert_eq!(format!("{:?}", a.0.chains), format!("{:?}", b.0.chains));
            assert_eq!((&a.1, &a.2), (&b.1, &b.2));
        };
        // reviews' clusters missing first, then added.
        let fewer: Vec<String> = names
            .iter()
            .filter(|n| !n.contains("reviews"))
            .cloned()
            .collect();
        let added: Vec<&str> = names
            .iter()
            .filter(|n| n.contains("reviews"))
            .map(String::as_str)
            .collect();
        let mut memo = ListenerMemo::default();
        let first = call(&mut memo, &listeners, &fewer);
        let read = grown(&mut memo, &copies(), &names, &added);
        assert_eq!(memo.checked, 0, "none checked against every name");
        assert!(
            memo.built > 0,
            "reviews' chains (they found its clusters missing) built again"
        );
        assert!(memo.reused > 0, "{} reused", memo.reused);
        same(&read, &scratch(&names));
        let rebuilt = |name: &str| !Arc::ptr_eq(&first.0.chains[name], &read.0.chains[name]);
        let chains: Vec<&String> = first.0.chains.keys().collect();
        assert!(chains.iter().any(|c| c.contains("reviews") && rebuilt(c)));
        assert!(chains.iter().any(|c| !c.contains("reviews") && !rebuilt(c)));

        // Other bytes again, nothing added: the same set, no chain checked.
        grown(&mut memo, &copies(), &names, &[]);
        assert_eq!((memo.checked, memo.built), (0, 0));
        // Names said to be added that the last read had: every chain checked.
        let wrong = grown(&mut memo, &copies(), &names, &added);
        assert_eq!(memo.checked, memo.reused);
        assert!(memo.checked > 0);
        same(&wrong, &scratch(&names));
    }
}
