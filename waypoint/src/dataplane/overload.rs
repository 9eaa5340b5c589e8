//! The overload manager: one process-wide memory budget and the actions taken as memory nears it
//! (after Envoy's overload manager, `envoy.config.overload.v3`). A monitor thread samples memory
//! off the request path every [`REFRESH_INTERVAL`] and publishes a level in one atomic; the data
//! path reads that atomic (a relaxed load, no lock) and only ever denies:
//!
//! | level (share of the budget) | action (Envoy's name) |
//! | --- | --- |
//! | ≥ 90 % | `disable_http_keepalive`: HTTP/1.1 responses inside tunnels close their connection |
//! | ≥ 95 % | `stop_accepting_requests`: new requests get a local 503 (flag `OM`), new CONNECTs 503 |
//! | ≥ 98 % | `reset_high_memory_streams`: tunnels stalled on a client that does not read are reset |
//!
//! Once on, the reset action stays on until memory is below the first threshold (90 %): a tunnel
//! that had not stalled long enough at the first reset is reset when it has.
//!
//! The measure is the heap the allocator has handed out (jemalloc's `stats.allocated`, when the
//! binary runs on jemalloc, as `waypoint` does); it falls as soon as buffers are freed, so the
//! actions turn off again once the pressure is gone. Where jemalloc is not the allocator (the
//! library inside another program) the resident set (/proc/self/statm) is used instead.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use serde::Serialize;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::telemetry::throttle::LogThrottle;

/// How often memory is sampled (Envoy's example `refresh_interval` is 250 ms).
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// Default budget when a cgroup memory limit is found: this share of it, in percent.
pub const DEFAULT_BUDGET_PERCENT_OF_CGROUP: u64 = 90;

/// A tunnel is reset under pressure only once it has waited this long for its client's window.
pub const RESET_MIN_STALL: Duration = Duration::from_secs(1);

/// The actions in the order they turn on, with the share of the budget (percent) that turns each
/// on. The level is the number of actions on.
pub const ACTIONS: [(&str, u64); 3] = [
    ("disable_http_keepalive", 90),
    ("stop_accepting_requests", 95),
    ("reset_high_memory_streams", 98),
];

/// Levels: how many of [`ACTIONS`] are on.
pub const NO_KEEPALIVE: u8 = 1;
pub const REJECT: u8 = 2;
pub const RESET: u8 = 3;

/// Where the budget came from (logged at start and served in the config dump).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum BudgetSource {
    /// `--memory-budget-mib N` (or its env var).
    Flag,
    /// A share of the cgroup's memory limit (the file named).
    Cgroup { file: String, limit_bytes: u64 },
    /// No flag and no cgroup limit, or `--memory-budget-mib 0`.
    Off,
}

/// The effective budget: bytes (0: off) and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Budget {
    pub bytes: u64,
    pub source: BudgetSource,
}

impl Budget {
    /// `flag_mib`: the flag's value when given (0 turns the manager off); else the default from
    /// the cgroup limit, else off.
    pub fn resolve(flag_mib: Option<u64>) -> Self {
        match flag_mib {
            Some(0) => Self {
                bytes: 0,
                source: BudgetSource::Off,
            },
            Some(mib) => Self {
                bytes: mib.saturating_mul(1 << 20),
                source: BudgetSource::Flag,
            },
            None => match cgroup_limit() {
                Some((file, limit)) => Self {
                    bytes: limit / 100 * DEFAULT_BUDGET_PERCENT_OF_CGROUP,
                    source: BudgetSource::Cgroup {
                        file,
                        limit_bytes: limit,
                    },
                },
                None => Self {
                    bytes: 0,
                    source: BudgetSource::Off,
                },
            },
        }
    }
}

/// Limits at or above this are "no limit" (cgroup v1 reports 2^63 rounded down to a page).
const NO_LIMIT: u64 = 1 << 62;

/// The memory limit of the process's cgroup: v2 `memory.max`, else v1 `memory.limit_in_bytes`;
/// `None` when there is none ("max", or v1's huge number) or no file can be read.
fn cgroup_limit() -> Option<(String, u64)> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut candidates = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next()?, parts.next()?);
        let path = path.trim_end_matches('/');
        if controllers.is_empty() {
            candidates.push(format!("/sys/fs/cgroup{path}/memory.max"));
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"));
        }
    }
    // Inside a container with its own cgroup namespace the paths above are "/" already; these
    // cover a container that sees the host's paths but has its limit mounted at the root.
    candidates.push("/sys/fs/cgroup/memory.max".into());
    candidates.push("/sys/fs/cgroup/memory/memory.limit_in_bytes".into());
    candidates.into_iter().find_map(|file| {
        let text = std::fs::read_to_string(&file).ok()?;
        let limit = parse_limit(&text)?;
        Some((file, limit))
    })
}

fn parse_limit(text: &str) -> Option<u64> {
    let text = text.trim();
    if text == "max" {
        return None;
    }
    text.parse::<u64>().ok().filter(|&l| l > 0 && l < NO_LIMIT)
}

/// What memory is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    /// jemalloc's `stats.allocated`: bytes handed out to the program.
    Heap,
    /// The resident set from /proc/self/statm.
    Rss,
}

impl Measure {
    fn name(self) -> &'static str {
        match self {
            Measure::Heap => "heap bytes allocated (jemalloc stats.allocated)",
            Measure::Rss => "resident set size (/proc/self/statm)",
        }
    }

    /// Heap when jemalloc is the global allocator, else the resident set. A fresh 1 MiB
    /// allocation shows in jemalloc's statistics only when jemalloc is the global allocator
    /// (what was handed out before varies with the build: the access log no longer
    /// preallocates a 16 Ki-slot channel, and the heap at start fell under the old 1 MiB test).
    ///
    /// Other threads allocate and free at the same time (start-up frees the parsed config): a
    /// free of more than the probe between the two reads hides it, and a jemalloc binary would
    /// then measure its resident set against a heap budget and refuse everything (seen once in
    /// a loaded test run). So the probe is tried a few times; without jemalloc as the global
    /// allocator nothing is handed out by jemalloc at all, so retrying cannot make it Heap.
    fn detect() -> Self {
        const PROBE: usize = 1 << 20;
        const TRIES: usize = 5;
        for _ in 0..TRIES {
            let before = heap_allocated();
            let probe = std::hint::black_box(vec![1u8; PROBE]);
            let after = heap_allocated();
            drop(probe);
            match (before, after) {
                (Some(b), Some(a)) if a >= b + PROBE as u64 => return Measure::Heap,
                (None, _) | (_, None) => return Measure::Rss,
                _ => {}
            }
        }
        Measure::Rss
    }

    fn sample(self) -> Option<u64> {
        match self {
            Measure::Heap => heap_allocated(),
            Measure::Rss => rss(),
        }
    }
}

fn heap_allocated() -> Option<u64> {
    // jemalloc's statistics are refreshed when the epoch advances.
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    tikv_jemalloc_ctl::stats::allocated::read()
        .ok()
        .map(|b| b as u64)
}

fn rss() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // 4 KiB pages on the platforms this runs on (x86_64, aarch64 with 4K pages).
    Some(pages * 4096)
}

/// The level for `memory` against `budget`: how many actions are on.
pub fn level(memory: u64, budget: u64) -> u8 {
    if budget == 0 {
        return 0;
    }
    let percent_x100 = (memory as u128 * 10_000) / budget as u128;
    ACTIONS
        .iter()
        .take_while(|(_, pct)| percent_x100 >= u128::from(*pct) * 100)
        .count() as u8
}

/// Shared state: the monitor writes it, the data path reads it.
#[derive(Debug, Default)]
pub struct Overload {
    budget: AtomicU64,
    memory: AtomicU64,
    level: AtomicU8,
    /// `reset_high_memory_streams` is on: from ≥ 98 % until below 90 %.
    resetting: AtomicBool,
    rejected_requests: AtomicU64,
    rejected_tunnels: AtomicU64,
    streams_reset: AtomicU64,
    /// Woken at every sample while streams are to be reset; stalled tunnels wait on it.
    reset: Arc<Notify>,
    logs: LogThrottle,
}

impl Overload {
    /// Budget in bytes (0: off).
    pub fn budget(&self) -> u64 {
        self.budget.load(Ordering::Relaxed)
    }

    pub fn enabled(&self) -> bool {
        self.budget() > 0
    }

    fn level(&self) -> u8 {
        self.level.load(Ordering::Relaxed)
    }

    /// HTTP keep-alive is off (the response closes its connection).
    pub fn keepalive_disabled(&self) -> bool {
        self.level() >= NO_KEEPALIVE
    }

    /// A new request should be refused with 503 `OM`; counts it when so.
    pub fn reject_request(&self) -> bool {
        let reject = self.level() >= REJECT;
        if reject {
            self.rejected_requests.fetch_add(1, Ordering::Relaxed);
        }
        reject
    }

    /// A new CONNECT should be refused with 503; counts it when so.
    pub fn reject_tunnel(&self) -> bool {
        let reject = self.level() >= REJECT;
        if reject {
            self.rejected_tunnels.fetch_add(1, Ordering::Relaxed);
        }
        reject
    }

    /// Stalled tunnels are to be reset now.
    pub fn resetting(&self) -> bool {
        self.resetting.load(Ordering::Relaxed)
    }

    /// What a tunnel stalled on its client waits on besides the window: woken at every sample
    /// while [`Overload::resetting`]. `None` when the manager is off (no cost then).
    pub fn reset_signal(&self) -> Option<Arc<Notify>> {
        self.enabled().then(|| self.reset.clone())
    }

    /// A stalled tunnel was reset to release memory.
    pub fn count_reset(&self) {
        self.streams_reset.fetch_add(1, Ordering::Relaxed);
    }

    /// Start the monitor thread for `budget` (nothing when it is off). Logs the budget, its
    /// source and the measure once.
    pub fn start(self: &Arc<Self>, budget: &Budget) -> std::io::Result<()> {
        if budget.bytes == 0 {
            info!(
                "memory budget off (no --memory-budget-mib and no cgroup memory limit, or 0): \
                 no overload actions"
            );
            return Ok(());
        }
        let measure = Measure::detect();
        let mib = |b: u64| format!("{:.1}", b as f64 / f64::from(1 << 20));
        let bytes = match &budget.source {
            BudgetSource::Cgroup { file, limit_bytes } => {
                // The cgroup limit counts the whole resident set; the heap measure leaves out
                // what is resident outside it (code, stacks, the allocator's own pages), so that
                // part, as found now, comes off the default budget.
                let outside = match (measure, rss(), heap_allocated()) {
                    (Measure::Heap, Some(rss), Some(heap)) => rss.saturating_sub(heap),
                    _ => 0,
                };
                let bytes = budget.bytes.saturating_sub(outside);
                info!(
                    budget_mib = mib(bytes),
                    measure = measure.name(),
                    resident_outside_heap_mib = mib(outside),
                    "memory budget: {DEFAULT_BUDGET_PERCENT_OF_CGROUP}% of the cgroup limit \
                     {limit_bytes} bytes in {file}, less what is resident outside the heap"
                );
                if bytes == 0 {
                    warn!("the cgroup memory limit leaves no heap budget: overload actions off");
                    return Ok(());
                }
                bytes
            }
            _ => {
                info!(
                    budget_mib = mib(budget.bytes),
                    measure = measure.name(),
                    "memory budget from --memory-budget-mib"
                );
                budget.bytes
            }
        };
        self.budget.store(bytes, Ordering::Relaxed);
        let me = self.clone();
        std::thread::Builder::new()
            .name("overload".into())
            .spawn(move || loop {
                me.tick(measure);
                std::thread::sleep(REFRESH_INTERVAL);
            })
            .map(drop)
    }

    fn tick(&self, measure: Measure) {
        let Some(memory) = measure.sample() else {
            if let Some(suppressed) = self.logs.allow("sample") {
                warn!(suppressed, "cannot read {}", measure.name());
            }
            return;
        };
        self.step(memory);
    }

    /// One sample: the new level and actions, logged when they change.
    fn step(&self, memory: u64) {
        self.memory.store(memory, Ordering::Relaxed);
        let budget = self.budget();
        let new = level(memory, budget);
        let old = self.level.swap(new, Ordering::Relaxed);
        let was_resetting = self.resetting();
        let resetting = new >= RESET || (was_resetting && new >= NO_KEEPALIVE);
        self.resetting.store(resetting, Ordering::Relaxed);
        if (new, resetting) != (old, was_resetting) {
            let more = new > old || (resetting && !was_resetting);
            self.report(more, Self::actions(new, resetting), memory, budget);
        }
        if resetting {
            self.reset.notify_waiters();
        }
    }

    /// The names of the actions on.
    fn actions(level: u8, resetting: bool) -> Vec<&'static str> {
        let mut on: Vec<&str> = ACTIONS[..usize::from(level.min(REJECT))]
            .iter()
            .map(|a| a.0)
            .collect();
        if resetting {
            on.push(ACTIONS[2].0);
        }
        on
    }

    fn report(&self, more: bool, on: Vec<&'static str>, memory: u64, budget: u64) {
        let Some(suppressed) = self.logs.allow(if more { "on" } else { "off" }) else {
            return;
        };
        let percent = memory as f64 * 100.0 / budget as f64;
        let memory_mib = format!("{:.1}", memory as f64 / f64::from(1 << 20));
        if more {
            warn!(memory_mib, percent = format!("{percent:.1}"), actions = ?on, suppressed,
                "memory near the budget: overload actions on");
        } else {
            warn!(memory_mib, percent = format!("{percent:.1}"), actions = ?on, suppressed,
                "memory pressure eased: overload actions now");
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Action {
    action: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct What {
    what: &'static str,
}

/// The overload metrics, read from the atomics at scrape time.
#[derive(Debug)]
pub struct OverloadCollector(pub Arc<Overload>);

impl Collector for OverloadCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let o = &self.0;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let enc = e.encode_descriptor(
            "waypoint_overload_memory_bytes",
            "Memory the overload manager measured last (heap allocated, or RSS without jemalloc)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(load(&o.memory) as f64).encode(enc)?;
        let enc = e.encode_descriptor(
            "waypoint_overload_budget_bytes",
            "The process-wide memory budget (0: overload manager off)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(o.budget() as f64).encode(enc)?;
        let mut enc = e.encode_descriptor(
            "waypoint_overload_action_active",
            "1 while an overload action is on",
            None,
            MetricType::Gauge,
        )?;
        let on = Overload::actions(o.level(), o.resetting());
        for (action, _) in ACTIONS {
            let v = if on.contains(&action) { 1.0 } else { 0.0 };
            ConstGauge::new(v).encode(enc.encode_family(&Action { action })?)?;
        }
        let mut enc = e.encode_descriptor(
            "waypoint_overload_rejected",
            "Requests (503 OM) and CONNECTs (503) refused over the memory budget",
            None,
            MetricType::Counter,
        )?;
        for (what, v) in [
            ("request", load(&o.rejected_requests)),
            ("tunnel", load(&o.rejected_tunnels)),
        ] {
            ConstCounter::new(v).encode(enc.encode_family(&What { what })?)?;
        }
        let enc = e.encode_descriptor(
            "waypoint_overload_streams_reset",
            "Tunnels stalled on a client that does not read, reset to release memory",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(load(&o.streams_reset)).encode(enc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_at_the_thresholds() {
        let budget = 1_000_000;
        for (memory, want) in [
            (0, 0),
            (899_999, 0),
            (900_000, 1),
            (949_999, 1),
            (950_000, 2),
            (979_999, 2),
            (980_000, 3),
            (5_000_000, 3),
        ] {
            assert_eq!(level(memory, budget), want, "{memory}");
        }
        assert_eq!(level(u64::MAX, 0), 0, "budget 0 is off");
        assert_eq!(level(u64::MAX, u64::MAX), 3);
    }

    #[test]
    fn cgroup_limits() {
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(
            parse_limit("9223372036854771712\n"),
            None,
            "v1 without limit"
        );
        assert_eq!(parse_limit("536870912\n"), Some(512 << 20));
        assert_eq!(parse_limit("0"), None);
        assert_eq!(parse_limit("lots"), None);
    }

    #[test]
    fn budget_from_the_flag_or_off() {
        assert_eq!(Budget::resolve(Some(0)).bytes, 0);
        assert_eq!(Budget::resolve(Some(0)).source, BudgetSource::Off);
        let b = Budget::resolve(Some(64));
        assert_eq!((b.bytes, b.source), (64 << 20, BudgetSource::Flag));
    }

    #[test]
    fn resets_go_on_at_98_and_stay_on_until_under_90() {
        let o = Overload::default();
        o.budget.store(1000, Ordering::Relaxed);
        // Rss: any sample works; the levels are driven through `step`.
        for (memory, resetting, level) in [
            (950, false, REJECT),
            (980, true, RESET),
            (950, true, REJECT),
            (900, true, NO_KEEPALIVE),
            (899, false, 0),
            (960, false, REJECT),
        ] {
            o.step(memory);
            assert_eq!((o.resetting(), o.level()), (resetting, level), "{memory}");
        }
        assert_eq!(
            Overload::actions(REJECT, true),
            [
                "disable_http_keepalive",
                "stop_accepting_requests",
                "reset_high_memory_streams"
            ]
        );
    }

    #[test]
    fn requests_are_refused_and_counted_only_over_the_threshold() {
        let o = Overload::default();
        assert!(!o.reject_request() && !o.reject_tunnel() && !o.keepalive_disabled());
        o.level.store(REJECT, Ordering::Relaxed);
        assert!(o.keepalive_disabled() && o.reject_request() && o.reject_tunnel());
        assert!(!o.resetting());
        assert_eq!(o.rejected_requests.load(Ordering::Relaxed), 1);
        assert_eq!(o.rejected_tunnels.load(Ordering::Relaxed), 1);
    }
}
