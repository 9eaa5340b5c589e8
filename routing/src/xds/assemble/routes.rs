//! A route-only push without a pass over every service: when the only resource that changed
//! since the last translation is `main_internal`, and in it only some services' HTTP chains
//! changed their routes (a weight, a match, a timeout: what a VirtualService edit sends), the
//! published snapshot is patched with those services' route tables ([`Snapshot::with_routes`]);
//! every other table is shared. The listener's chains are still read (each changed chain
//! decoded, the others found by digest), but no service is assembled again. Anything else —
//! another chain field, authorization on a changed chain, a TCP chain, a diagnostic that differs
//! — falls back to the full translation, so the result is always a translation from scratch's
//! (property-tested with the rest of the translator).

use super::eds::Last;
use super::*;
use crate::xds::pieces::{Decoded, Memo};
use crate::xds::{Encoded, Warning};

/// A service chain as the published snapshot has it, and as the push has it.
type Swap<'a> = (&'a Arc<ChainPiece>, &'a Arc<ChainPiece>);

/// What the last full translation's `main_internal` gave.
#[derive(Debug)]
pub(crate) struct MainState {
    pub(super) main: Arc<listener::MainListener>,
    /// The warnings reading the listeners reported.
    pub(super) warnings: Vec<Warning>,
    /// The RDS names the listeners asked for.
    pub(super) rds: crate::xds::Names,
}

/// The translation of `decoded` as a patch of the last one's published snapshot, when only
/// service chains' routes changed; `None` otherwise (translate in full).
pub(crate) fn patch(
    last: &mut Option<Last>,
    memo: &mut Memo,
    decoded: &Decoded,
    digests: (u128, u128),
    options: &TranslateOptions,
) -> Option<Translation> {
    let l = last.as_mut()?;
    if !l.same_inputs_but_listener(decoded, digests.1, options) {
        return None;
    }
    let snapshot = patch_listeners(l, memo, &decoded.listeners, &decoded.resources.routes)?;
    Some(l.patched_to(snapshot, (Some(digests.0), digests.1)))
}

/// A route push read from the new `main_internal` alone (see
/// [`Translator::translate_listener`](crate::xds::Translator::translate_listener)): the last
/// translation's state with `changed`, that one listener, in place of its own. `None` when that
/// cannot be patched (translate the whole state instead).
pub(crate) fn patch_listener(
    last: &mut Option<Last>,
    memo: &mut Memo,
    changed: &[Encoded<'_>],
    options: &TranslateOptions,
) -> Option<Translation> {
    let l = last.as_mut()?;
    let [main] = changed else {
        return None;
    };
    if main.type_url != LISTENER_TYPE
        || **main.name != *listener::MAIN_INTERNAL
        || !l.same_options(options)
    {
        return None;
    }
    let listeners = l.listeners_with(main)?;
    let snapshot = patch_listeners(l, memo, &listeners, &l.route_configurations)?;
    // No cluster or assignment was read.
    (memo.reused, memo.built) = (0, 0);
    // The other resources are the last translation's: their digest with the new listener.
    let rest = l.rest;
    let digest = crate::xds::pieces::digest(main.value);
    let others = super::eds::with_main_digest(rest, Some(digest));
    // `listeners_with` put the new one where the last translation's listeners have none.
    if let Some(new) = l
        .listeners
        .iter()
        .zip(&listeners)
        .find_map(|(was, new)| was.is_none().then_some(new))
    {
        memo.walked_main(main, new, digest);
    }
    Some(l.patched_to(snapshot, (Some(others), rest)))
}

/// The published snapshot with the route tables of the services whose chains changed in
/// `listeners` (the last translation's clusters and assignments, `routes` its route
/// configurations), when only their routes changed; the services' memo then describes it.
fn patch_listeners(
    l: &Last,
    memo: &mut Memo,
    listeners: &[listener::ShallowListener],
    routes: &[RouteConfiguration],
) -> Option<Snapshot> {
    let live = l.published.clone()?;
    let old = memo.services.main.as_ref()?;
    // A matcher that changed (a VIP came or went) is more than routes: not worth reading the
    // chains for (they would be read again by the translation that follows).
    if old.main.matched.replaced_in(listeners) {
        return None;
    }
    // The listeners read again: chains found by digest, the changed ones decoded.
    let rcs: BTreeMap<&str, &RouteConfiguration> = routes.iter().map(|r| (&*r.name, r)).collect();
    let known: ClusterNames<'_> = l.clusters().iter().map(|c| Named(&c.name)).collect();
    let mut rds = crate::xds::Names::new();
    let mut diag = Diag::default();
    let main = listener::translate(
        listeners,
        &rcs,
        &known,
        // The clusters are the last translation's (`same_inputs_but_listener`), and so are the
        // listener memo's chains.
        (true, &[]),
        &mut memo.listener,
        &mut rds,
        &mut diag,
    );
    if !diag.rejections.is_empty()
        || diag.warnings != old.warnings
        || rds != old.rds
        || !Arc::ptr_eq(&main.matched, &old.main.matched)
        || main.direct_path != old.main.direct_path
        || main.telemetry != old.main.telemetry
        || main.chains.len() != old.main.chains.len()
        || main.authz.len() != old.main.authz.len()
    {
        return None;
    }
    for ((name, a), (old_name, b)) in main.authz.iter().zip(&old.main.authz) {
        let same = Arc::ptr_eq(a, b) || (unrestricted(a) && unrestricted(b) && a.http == b.http);
        if name != old_name || !same {
            return None;
        }
    }
    // The chains whose routes changed, by service.
    let mut changed: BTreeMap<&str, Vec<Swap<'_>>> = BTreeMap::new();
    for ((name, new), (old_name, was)) in main.chains.iter().zip(&old.main.chains) {
        if name != old_name {
            return None;
        }
        if Arc::ptr_eq(new, was) {
            continue;
        }
        let host = routes_only_changed(was, new)?;
        changed.entry(host).or_default().push((was, new));
    }
    // Each service's VirtualService made again from its chains, as the full assembly does.
    let mut tables = Vec::with_capacity(changed.len());
    let mut chains_of = Vec::with_capacity(changed.len());
    for (host, swaps) in &changed {
        let r = memo.services.services.get(*host)?;
        let chains: Vec<Arc<ChainPiece>> = r
            .key
            .acc
            .chains
            .iter()
            .map(|c| {
                swaps
                    .iter()
                    .find(|(was, _)| Arc::ptr_eq(was, c))
                    .map_or_else(|| c.clone(), |(_, new)| (*new).clone())
            })
            .collect();
        if swaps
            .iter()
            .any(|(_, new)| !chains.iter().any(|c| Arc::ptr_eq(c, new)))
        {
            return None;
        }
        let vs = virtual_service(&r.out.service, &chains)?;
        tables.push(vs);
        chains_of.push((host.to_string(), chains));
    }
    let snapshot = live.with_routes(tables)?;
    // What the memo remembers for the next translation: the services' new chains.
    let services = &mut memo.services;
    services.version = snapshot.version();
    services.clusters_built.clear();
    services.built = 0;
    services.reused = services.services.len();
    services.shared = services.reused;
    for (host, chains) in chains_of {
        if let Some(r) = services.services.get_mut(&host) {
            r.key.acc.chains = chains;
        }
    }
    if let Some(m) = &mut services.main {
        m.main = main;
    }
    Some(snapshot)
}

/// A chain's authorization that restricts nothing (no policy, token or external check).
pub(super) fn unrestricted(a: &access::ChainAuthz) -> bool {
    a.policies.is_empty() && a.jwt.is_empty() && a.ext_authz.is_empty()
}

/// The service of `new`, when it differs from `was` in its HTTP routes only (same service
/// port, protocol, path handling, default retries, hash keys, diagnostics and RDS names;
/// routes before and after). What the chains' telemetry gives the listener is compared whole
/// by the caller.
fn routes_only_changed<'a>(was: &ChainPiece, new: &'a ChainPiece) -> Option<&'a str> {
    let (
        ChainRole::Service {
            cluster: c1,
            routes: Some(r1),
            ..
        },
        ChainRole::Service {
            cluster: c2,
            routes: Some(r2),
            ..
        },
    ) = (&was.role, &new.role)
    else {
        return None;
    };
    let (
        RoutesKind::Http {
            http2: h1,
            path: p1,
            table: Some(t1),
        },
        RoutesKind::Http {
            http2: h2,
            path: p2,
            table: Some(t2),
        },
    ) = (&r1.kind, &r2.kind)
    else {
        return None;
    };
    let same = c1 == c2
        && was.name == new.name
        && was.rds == new.rds
        && was.listener_diag == new.listener_diag
        && was.telemetry.is_none() == new.telemetry.is_none()
        && h1 == h2
        && p1 == p2
        && t1.default_retries.as_deref() == t2.default_retries.as_deref()
        && !t1.routes.is_empty()
        && !t2.routes.is_empty()
        && r1.hash_keys == r2.hash_keys
        && r1.diag == r2.diag;
    same.then_some(c2.host())
}

/// The VirtualService the full assembly makes for `service` from its `chains` (all HTTP
/// chains with routes; `None` for any other).
fn virtual_service(service: &Service, chains: &[Arc<ChainPiece>]) -> Option<VirtualService> {
    let mut http = Vec::new();
    let mut name: Option<(String, String)> = None;
    for c in chains {
        let ChainRole::Service {
            routes: Some(routes),
            ..
        } = &c.role
        else {
            return None;
        };
        let RoutesKind::Http {
            table: Some(table), ..
        } = &routes.kind
        else {
            return None;
        };
        if name.is_none() {
            name.clone_from(&table.virtual_service);
        }
        http.extend(table.routes.iter().cloned());
    }
    let (namespace, name) = name.unwrap_or_else(|| {
        (
            service.namespace.clone(),
            format!("xds-{}", service.hostname),
        )
    });
    Some(VirtualService {
        namespace,
        name,
        hosts: vec![service.hostname.clone()],
        http,
        tcp: Vec::new(),
    })
}
