//! Part 1, what the waypoint runs: `xds::Translator` from the encoded resources to a published
//! snapshot, step by step (see [`super::translation::TranslateRow::memo`]).

use super::translation::{median, ms};
use super::*;

/// The translator's steps [`TranslateRow::memo`] times.
pub(super) const MEMO_STEPS: usize = 8;

/// A service that is not in the baseline, encoded: the steps of its arrival.
pub(super) struct NewService {
    pub(super) clusters: Vec<(String, Any)>,
    pub(super) assignments: Vec<(String, Any)>,
    /// `main_internal` with the new service's chain.
    pub(super) main: Any,
}

/// Medians of [`TranslateRow::memo`]'s translations, `runs` times each: with nothing to reuse,
/// the same state, one assignment changed, then `reweighted` in place of `main_internal` (one
/// route's weights changed), then `new`'s clusters, assignments and listener added in turn; and
/// last, the EDS push read alone (`translate_assignments`, as the waypoint does for an EDS push
/// of known assignments) after the first state.
/// With `repeat` > 0, then `repeat` EDS pushes and as many route changes, each mean printed.
pub(super) fn measure_memo(
    anys: &[Any],
    reweighted: &Any,
    new: &NewService,
    options: &TranslateOptions,
    (runs, repeat): (usize, usize),
) -> anyhow::Result<[Duration; MEMO_STEPS]> {
    use routing::xds::Encoded;
    let names: Vec<std::sync::Arc<str>> = anys
        .iter()
        .map(|a| resource_name(a).map(Into::into))
        .collect::<anyhow::Result<_>>()?;
    // One assignment with one endpoint fewer: the EDS push.
    let i = anys
        .iter()
        .position(|a| a.type_url == ClusterLoadAssignment::type_url())
        .context("no assignment")?;
    let mut cla = ClusterLoadAssignment::decode(anys[i].value.as_slice())?;
    cla.endpoints.iter_mut().find_map(|l| l.lb_endpoints.pop());
    let changed = bytes::Bytes::from(cla.encode_to_vec());
    // The bytes as the xDS client holds them: shared from one state to the next.
    let payloads: Vec<bytes::Bytes> = anys.iter().map(|a| a.value.clone().into()).collect();
    let reweighted = bytes::Bytes::from(reweighted.value.clone());
    let main = names
        .iter()
        .position(|n| &**n == "main_internal")
        .context("no main_internal")?;
    let encoded = |eds: bool, route: bool| -> Vec<Encoded<'_>> {
        anys.iter()
            .zip(&names)
            .zip(&payloads)
            .enumerate()
            .map(|(k, ((a, name), value))| Encoded {
                type_url: &a.type_url,
                name,
                value: match k {
                    k if eds && k == i => &changed,
                    k if route && k == main => &reweighted,
                    _ => value,
                },
            })
            .collect()
    };
    let (before, after, route) = (
        encoded(false, false),
        encoded(true, false),
        encoded(true, true),
    );
    // The new service's arrival, on top of `route`.
    let shared = |list: &[(String, Any)]| -> Vec<(std::sync::Arc<str>, String, bytes::Bytes)> {
        list.iter()
            .map(|(name, a)| {
                (
                    name.as_str().into(),
                    a.type_url.clone(),
                    a.value.clone().into(),
                )
            })
            .collect()
    };
    let (new_clusters, new_assignments) = (shared(&new.clusters), shared(&new.assignments));
    let new_main = bytes::Bytes::from(new.main.value.clone());
    fn added(
        list: &[(std::sync::Arc<str>, String, bytes::Bytes)],
    ) -> impl Iterator<Item = Encoded<'_>> {
        list.iter().map(|(name, type_url, value)| Encoded {
            type_url,
            name,
            value,
        })
    }
    let mut cds = route.clone();
    cds.extend(added(&new_clusters));
    let mut eds = cds.clone();
    eds.extend(added(&new_assignments));
    let mut lds = eds.clone();
    lds[main].value = &new_main;
    // In the order the waypoint's xDS client hands a state over: by type, then by name.
    fn client_order(mut v: Vec<Encoded<'_>>) -> Vec<Encoded<'_>> {
        let rank = |t: &str| {
            [
                routing::xds::LISTENER_TYPE,
                routing::xds::CLUSTER_TYPE,
                routing::xds::ENDPOINT_TYPE,
            ]
            .iter()
            .position(|x| *x == t)
            .unwrap_or(3)
        };
        v.sort_by(|a, b| (rank(a.type_url), a.name).cmp(&(rank(b.type_url), b.name)));
        v
    }
    let (before, after, route) = (
        client_order(before),
        client_order(after),
        client_order(route),
    );
    let (cds, eds, lds) = (client_order(cds), client_order(eds), client_order(lds));
    // The changed assignment, in that order.
    let i = after
        .iter()
        .position(|e| std::ptr::eq(e.value, &changed))
        .context("the changed assignment")?;
    let steps: [&Vec<Encoded<'_>>; MEMO_STEPS - 1] =
        [&before, &before, &after, &route, &cds, &eds, &lds];
    let mut times: [Vec<Duration>; MEMO_STEPS] = Default::default();
    for _ in 0..runs {
        let mut publisher = Publisher::new(options);
        for (slot, input) in steps.into_iter().enumerate() {
            times[slot].push(publisher.publish(input)?);
        }
        let mut alone = Publisher::new(options);
        alone.publish(&before)?;
        times[MEMO_STEPS - 1].push(alone.publish_alone(&after[i..=i])?);
    }
    if repeat > 0 {
        let cycles: [(&str, &[&Vec<Encoded<'_>>]); 3] = [
            ("EDS push", &[&before, &after]),
            ("route change", &[&after, &route]),
            // Each step a full pass: the service arrives, then is removed.
            ("new service step", &[&route, &cds, &eds, &lds]),
        ];
        for (what, cycle) in cycles {
            let mut publisher = Publisher::new(options);
            publisher.publish(cycle[0])?;
            let mut total = Duration::ZERO;
            for k in 1..=repeat {
                total += publisher.publish(cycle[k % cycle.len()])?;
            }
            let reuse = publisher.translator.reuse();
            println!(
                "  repeated: {repeat} × {what}: {:.2} ms each (the last: patched {}, services built {}, reused {}, clusters shared {})",
                ms(total) / repeat as f64,
                reuse.patched,
                reuse.services_built,
                reuse.services_reused,
                reuse.clusters_shared
            );
        }
    }
    Ok(times.map(|mut v| median(&mut v)))
}

/// Snapshots translated and published one after the other, as the waypoint does: each carried
/// over from the live one, then shown to the translator (whose next snapshot shares the
/// unchanged services' clusters, or patches it).
struct Publisher<'o> {
    translator: routing::xds::Translator,
    live: Arc<routing::Snapshot>,
    options: &'o TranslateOptions,
}

impl<'o> Publisher<'o> {
    fn new(options: &'o TranslateOptions) -> Self {
        Publisher {
            translator: routing::xds::Translator::new(),
            live: Arc::new(routing::Snapshot::empty()),
            options,
        }
    }

    /// Translate and publish `input`: how long that took (the replaced snapshot is freed after
    /// the clock stops, as the waypoint frees it off the config thread).
    fn publish(&mut self, input: &[routing::xds::Encoded<'_>]) -> anyhow::Result<Duration> {
        self.publish_by(|translator, options| {
            translator.translate(input, options).map_err(rejections)
        })
    }

    /// Translate and publish the last state with `changed` assignments in place (read alone).
    fn publish_alone(&mut self, changed: &[routing::xds::Encoded<'_>]) -> anyhow::Result<Duration> {
        self.publish_by(|translator, options| {
            translator
                .translate_assignments(changed, options)
                .context("the EDS push could not be read alone")
        })
    }

    /// Publish what `translate` gives, timed with it.
    fn publish_by(
        &mut self,
        translate: impl FnOnce(
            &mut routing::xds::Translator,
            &TranslateOptions,
        ) -> anyhow::Result<routing::xds::Translation>,
    ) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let mut snapshot = translate(&mut self.translator, self.options)?.snapshot;
        snapshot.carry_over_state(&self.live);
        let snapshot = Arc::new(snapshot);
        self.translator.published(&snapshot);
        let took = t.elapsed();
        drop(std::mem::replace(&mut self.live, snapshot));
        Ok(took)
    }
}

/// The name a resource is known by (what istiod sends it as).
pub(super) fn resource_name(any: &Any) -> anyhow::Result<String> {
    let v = any.value.as_slice();
    Ok(match any.type_url.as_str() {
        t if t == Listener::type_url() => Listener::decode(v)?.name,
        t if t == Cluster::type_url() => Cluster::decode(v)?.name,
        t if t == ClusterLoadAssignment::type_url() => {
            ClusterLoadAssignment::decode(v)?.cluster_name
        }
        t => bail!("unexpected resource type {t}"),
    })
}
