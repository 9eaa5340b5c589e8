//! What a state is read as and what it still lacks: the encoded resources the translator gets,
//! the names it awaits, and the subscriptions handed to the client.

use std::collections::BTreeSet;

use routing::xds::Encoded;
use xds_client::{type_url, ResourceState, Subscriptions};

use super::TYPES;

/// `state`'s resources as the translator reads them, those in `set_aside` taken from
/// `last_good` (or left out).
pub(super) fn encoded<'a>(
    state: &'a ResourceState,
    last_good: &'a ResourceState,
    set_aside: &BTreeSet<(String, String)>,
) -> Vec<Encoded<'a>> {
    // Sized once: a state at 10 000 services lists 60 000 resources, for every question and
    // translation.
    let mut out = Vec::with_capacity(TYPES.iter().map(|t| state.len(t)).sum());
    for t in TYPES {
        for r in state.resources(t) {
            let any = if !set_aside.is_empty()
                && set_aside.contains(&(t.to_string(), r.name.to_string()))
            {
                match last_good.get(t, &r.name) {
                    Some(previous) => &previous.value,
                    None => continue,
                }
            } else {
                &r.value
            };
            out.push(Encoded {
                type_url: t,
                name: &r.name,
                value: &any.value,
            });
        }
    }
    out
}

/// What a state still lacks before it can serve, if anything.
pub(super) fn missing(
    state: &ResourceState,
    needed: &routing::xds::Subscriptions,
) -> Option<String> {
    reported(state, needed, |what, type_url, names| {
        let held = state.resources(type_url).map(|r| &*r.name);
        described(what, not_in(names.iter().map(|n| &**n), held))
    })
}

/// What [`missing`] gives, found from what changed since `good`: a published state that lacked
/// nothing of `subscribed` (what the client was subscribed to for it), and that `state` was
/// made from. Only the names `needed` adds to those and the resources `state` no longer has
/// are looked at, not every name held (a state's 30 000 assignments at 10 000 services).
pub(super) fn missing_since(
    state: &ResourceState,
    needed: &routing::xds::Subscriptions,
    (good, subscribed): (&ResourceState, &Subscriptions),
) -> Option<String> {
    use imbl::ordset::DiffItem;
    reported(state, needed, |what, type_url, names| {
        let had = subscribed.names(type_url).cloned().unwrap_or_default();
        let added = had.diff(names).filter_map(|d| match d {
            DiffItem::Add(name) => Some(&**name),
            DiffItem::Remove(_) => None,
        });
        let mut absent: BTreeSet<&str> =
            added.filter(|n| state.get(type_url, n).is_none()).collect();
        let gone = state.changed_since(good, type_url).into_iter();
        absent
            .extend(gone.filter_map(|(n, now)| (now.is_none() && names.contains(n)).then_some(n)));
        described(what, absent.into_iter())
    })
}

/// [`missing_since`] when `base` is given, [`missing`] otherwise (debug builds check that the
/// two agree).
pub(super) fn missing_from(
    state: &ResourceState,
    needed: &routing::xds::Subscriptions,
    base: Option<(&ResourceState, &Subscriptions)>,
) -> Option<String> {
    let Some(base) = base else {
        return missing(state, needed);
    };
    let found = missing_since(state, needed, base);
    debug_assert_eq!(found, missing(state, needed));
    found
}

/// The names `absent` (in name order) of `what`, named up to [`AWAITED_NAMES`], then counted:
/// at start-up every assignment is awaited.
fn described<'a>(what: &str, mut absent: impl Iterator<Item = &'a str>) -> Option<String> {
    let named: Vec<&str> = absent.by_ref().take(AWAITED_NAMES).collect();
    let more = absent.count();
    match (named.is_empty(), more) {
        (true, _) => None,
        (false, 0) => Some(format!("{what} {}", named.join(", "))),
        (false, more) => Some(format!("{what} {} and {more} more", named.join(", "))),
    }
}

/// What `state` lacks of `needed`: no listener at all, or the assignments and route
/// configurations `absent` describes (`what`, its type URL, the names needed), joined.
fn reported(
    state: &ResourceState,
    needed: &routing::xds::Subscriptions,
    absent: impl Fn(&str, &str, &routing::xds::Names) -> Option<String>,
) -> Option<String> {
    if state.len(type_url::LISTENER) == 0 {
        return Some("listeners (LDS)".into());
    }
    let parts: Vec<String> = [
        absent("EDS", type_url::CLUSTER_LOAD_ASSIGNMENT, &needed.endpoints),
        absent("RDS", type_url::ROUTE_CONFIGURATION, &needed.routes),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The names of `names` that `of` does not have, both in name order: one walk over both, not
/// a lookup per name (a state's 30 000 assignments at 10 000 services).
pub(super) fn not_in<'a>(
    names: impl Iterator<Item = &'a str>,
    of: impl Iterator<Item = &'a str>,
) -> impl Iterator<Item = &'a str> {
    let mut of = of.peekable();
    names.filter(move |n| {
        while of.next_if(|h| h < n).is_some() {}
        of.peek() != Some(n)
    })
}

/// What the client is to subscribe to, by type: the translator's sets, shared (a new service's
/// push hands over the last set grown by its names; the client diffs the two without visiting
/// what they share).
pub(super) fn client_subscriptions(needed: &routing::xds::Subscriptions) -> Subscriptions {
    Subscriptions::new()
        .with_names(type_url::CLUSTER_LOAD_ASSIGNMENT, needed.endpoints.clone())
        .with_names(type_url::ROUTE_CONFIGURATION, needed.routes.clone())
}

/// How many awaited names [`missing`] lists (in the log line and readiness) before it counts.
const AWAITED_NAMES: usize = 8;
