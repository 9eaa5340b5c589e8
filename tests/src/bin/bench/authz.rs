//! The authorization part of the bench: generated AuthorizationPolicy rule sets, the evaluation
//! alone (ns and allocations per decision) and the summary table.

use super::*;

/// The service the bench's requests go to (its VIP is 10.0.0.10:9080).
const SERVICE: &str = "reviews.default.svc.cluster.local";
const USER_AGENT: &str = "waypoint-bench";
pub(super) const CLIENT_SA: &str = "bookinfo-productpage";

/// `n` authorization rules as AuthorizationPolicy documents attached to the waypoint (Gateway
/// `default/waypoint`): about 30 % in DENY policies, the rest in ALLOW policies, at most
/// `max(4, n/20)` rules a policy. No DENY rule matches the bench's request and only the last
/// rule of the last ALLOW policy allows it, so every rule is evaluated for every request.
/// Returns the YAML and the deciding policy's `NS/NAME` (None for `n == 0`).
fn authz_policies(n: usize) -> (String, Option<String>) {
    let deny = n * 3 / 10;
    let allow = n - deny;
    let per_policy = (n / 20).max(4);
    let mut yaml = String::new();
    let mut decider = None;
    for (action, count) in [("DENY", deny), ("ALLOW", allow)] {
        let policies = count.div_ceil(per_policy);
        for p in 0..policies {
            let name = format!("bench-{}-{p}", action.to_ascii_lowercase());
            let _ = write!(
                yaml,
                "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata:\n  name: {name}\n  namespace: default\nspec:\n  targetRefs:\n  \
                 - kind: Gateway\n    group: gateway.networking.k8s.io\n    name: waypoint\n  \
                 action: {action}\n  rules:\n"
            );
            let first = p * per_policy;
            let last = ((p + 1) * per_policy).min(count);
            for i in first..last {
                let rule = if action == "DENY" {
                    deny_rule(i)
                } else if i + 1 == count {
                    decider = Some(format!("default/{name}"));
                    allowing_rule()
                } else {
                    allow_rule(i)
                };
                yaml.push_str(&rule);
            }
        }
    }
    (yaml, decider)
}

/// A DENY rule the bench's request never matches (three shapes: a source namespace and admin
/// paths; methods and paths; a principal prefix and a header condition).
fn deny_rule(i: usize) -> String {
    match i % 3 {
        0 => format!(
            "  - from:\n    - source:\n        namespaces: [\"ns-{i}\", \"untrusted-{i}\"]\n    \
             to:\n    - operation:\n        paths: [\"/admin/{i}/*\", \"/debug/{i}\"]\n"
        ),
        1 => format!(
            "  - to:\n    - operation:\n        methods: [\"DELETE\", \"PUT\"]\n        \
             paths: [\"/reviews/{i}/*\"]\n"
        ),
        _ => format!(
            "  - from:\n    - source:\n        principals: [\"{TRUST_DOMAIN}/ns/attacker-{i}/sa/*\"]\n    \
             when:\n    - key: request.headers[x-debug-{i}]\n      values: [\"on\"]\n"
        ),
    }
}

/// An ALLOW rule that does not match the bench's request; two of the three shapes have a true
/// principal, so their permission is evaluated too.
fn allow_rule(i: usize) -> String {
    match i % 3 {
        0 => format!(
            "  - from:\n    - source:\n        principals: [\"{TRUST_DOMAIN}/ns/default/sa/svc-{i}\"]\n    \
             to:\n    - operation:\n        methods: [\"GET\", \"HEAD\"]\n        paths: [\"/api/v{i}/*\"]\n"
        ),
        1 => format!(
            "  - from:\n    - source:\n        principals: [\"{TRUST_DOMAIN}/ns/default/sa/{CLIENT_SA}\"]\n    \
             to:\n    - operation:\n        methods: [\"GET\"]\n        paths: [\"/ratings/{i}*\", \"/details/{i}\"]\n"
        ),
        _ => format!(
            "  - from:\n    - source:\n        namespaces: [\"default\"]\n    \
             to:\n    - operation:\n        methods: [\"GET\"]\n        paths: [\"/reviews/*\"]\n    \
             when:\n    - key: request.headers[x-tenant]\n      values: [\"tenant-{i}\"]\n"
        ),
    }
}

/// The rule that allows the bench's request: principal and namespace, hosts, methods, a path
/// prefix, and the user agent in `when`.
fn allowing_rule() -> String {
    format!(
        "  - from:\n    - source:\n        principals: [\"{TRUST_DOMAIN}/ns/default/sa/{CLIENT_SA}\"]\n        \
         namespaces: [\"default\"]\n    to:\n    - operation:\n        \
         hosts: [\"reviews*\", \"{SERVICE}*\"]\n        methods: [\"GET\", \"HEAD\"]\n        \
         paths: [\"/reviews/*\", \"/reviews\"]\n    when:\n    - key: request.headers[user-agent]\n      \
         values: [\"{USER_AGENT}*\"]\n"
    )
}

/// The bookinfo snapshot with `n` generated rules, checked: every rule attached to the
/// reviews service and the bench's request allowed by the deciding policy.
pub(super) fn authz_snapshot(n: usize) -> anyhow::Result<(Snapshot, Option<String>)> {
    let (yaml, decider) = authz_policies(n);
    let mut files: Vec<(String, String)> = BOOKINFO
        .iter()
        .map(|(n, c)| (n.to_string(), c.to_string()))
        .collect();
    if n > 0 {
        files.push(("bench-authz.yaml".into(), yaml));
    }
    let snapshot = routing::load_str(&files, TRUST_DOMAIN)
        .map_err(|e| anyhow::anyhow!("bookinfo with {n} authorization rules: {e}"))?;
    let set = snapshot.authorization().for_service(Some(SERVICE), true);
    let rules: usize = set.policies.iter().map(|p| p.rules.len()).sum();
    if rules != n {
        bail!("{n} rules generated, {rules} attached to {SERVICE}");
    }
    let verdict = set.evaluate(&BenchRequest::new()).verdict;
    let ok = match (&verdict, &decider) {
        (Verdict::NoPolicy, None) => true,
        (Verdict::Allowed { policy, .. }, Some(d)) => policy == d,
        _ => false,
    };
    if !ok {
        bail!("{n} rules: the bench's request gets {verdict:?}, expected an allow by {decider:?}");
    }
    Ok((snapshot, decider))
}

/// The bench's request as the waypoint's authorization reads it (GET /reviews/0 to
/// reviews:9080 with the bench's user agent, from the client identity of the bench).
struct BenchRequest {
    principal: String,
    source: IpAddr,
    destination: IpAddr,
}

impl BenchRequest {
    fn new() -> Self {
        Self {
            principal: SpiffeId::new(TRUST_DOMAIN, "default", CLIENT_SA).to_string(),
            source: IpAddr::from([127, 0, 0, 1]),
            destination: IpAddr::from([10, 0, 0, 10]),
        }
    }
}

impl AuthzView for BenchRequest {
    fn is_http(&self) -> bool {
        true
    }
    fn principal(&self) -> Option<&str> {
        Some(&self.principal)
    }
    fn source_ip(&self) -> Option<IpAddr> {
        Some(self.source)
    }
    fn destination_ip(&self) -> Option<IpAddr> {
        Some(self.destination)
    }
    fn destination_port(&self) -> u16 {
        APP_PORT
    }
    fn method(&self) -> &str {
        "GET"
    }
    fn host(&self) -> Option<&str> {
        Some(HOST)
    }
    fn path(&self) -> &str {
        PATH
    }
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        match name {
            "user-agent" => Some(USER_AGENT.into()),
            "host" => Some(HOST.into()),
            _ => None,
        }
    }
}

pub(super) struct EvalResult {
    pub(super) rules: usize,
    pub(super) policies: usize,
    pub(super) decisions: u64,
    pub(super) ns_per_decision: f64,
    /// Median ns of a decision made right after 32 MiB were written, so the policies are no
    /// longer in any CPU cache: what a request pays when the rest of the proxy's work evicted
    /// them.
    pub(super) cold_ns_per_decision: f64,
    pub(super) allocs_per_decision: f64,
}

/// Decisions measured cold (each after a cache-evicting sweep of [`COLD_SWEEP_BYTES`]).
const COLD_DECISIONS: usize = 200;
const COLD_SWEEP_BYTES: usize = 32 << 20;

/// Evaluate the bench's request against the reviews service's PolicySet for `n` rules, in a
/// loop bounded by `iterations` and `max`.
pub(super) fn eval_alone(n: usize, iterations: u64, max: Duration) -> anyhow::Result<EvalResult> {
    let (snapshot, _) = authz_snapshot(n)?;
    let set = snapshot.authorization().for_service(Some(SERVICE), true);
    let req = BenchRequest::new();
    // Warm-up (caches, branch predictors), not measured.
    for _ in 0..iterations.min(1_000) {
        std::hint::black_box(set.evaluate(std::hint::black_box(&req)));
    }
    let allocs0 = ALLOCS.load(Ordering::Relaxed);
    COUNT_ALLOCS.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    let mut done = 0u64;
    while done < iterations {
        for _ in 0..256 {
            std::hint::black_box(set.evaluate(std::hint::black_box(&req)));
        }
        done += 256;
        if t0.elapsed() >= max {
            break;
        }
    }
    let wall = t0.elapsed();
    COUNT_ALLOCS.store(false, Ordering::Relaxed);
    let allocs = ALLOCS.load(Ordering::Relaxed) - allocs0;
    let mut sweep = vec![0u8; COLD_SWEEP_BYTES];
    let mut cold = Vec::with_capacity(COLD_DECISIONS);
    let t_cold = Instant::now();
    while cold.len() < COLD_DECISIONS && t_cold.elapsed() < max {
        for line in sweep.chunks_mut(64) {
            line[0] = line[0].wrapping_add(1);
        }
        std::hint::black_box(&mut sweep);
        let t = Instant::now();
        std::hint::black_box(set.evaluate(std::hint::black_box(&req)));
        cold.push(t.elapsed().as_nanos() as f64);
    }
    Ok(EvalResult {
        rules: n,
        policies: set.policies.len(),
        decisions: done,
        ns_per_decision: wall.as_nanos() as f64 / done as f64,
        cold_ns_per_decision: median(cold),
        allocs_per_decision: allocs as f64 / done as f64,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// The authorization summary: per rule count and concurrency, medians over the rounds; the
/// ratios are taken within each round (against that round's 0-rule run at the same
/// concurrency, run next to it) and their median printed, so drift between rounds cancels. Then
/// the evaluation alone against the process's whole CPU per request.
pub(super) fn print_authz(results: &[RunResult], counts: &[usize], evals: &[EvalResult]) {
    let mut levels: Vec<usize> = results.iter().map(|r| r.concurrency).collect();
    levels.dedup();
    println!(
        "\nauthorization, end to end (waypoint scenario; medians over rounds; × is the median of \
         per-round ratios against 0 rules at the same c, same run; ΔCPU is the median per-round \
         difference of the whole process's CPU per request):"
    );
    println!(
        "{:>6} {:>4} {:>6} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>7} {:>7} {:>11}",
        "rules",
        "c",
        "rounds",
        "req/s",
        "p50",
        "p99",
        "CPU s/1k",
        "req/s×",
        "CPU×",
        "p50×",
        "p99×",
        "ΔCPU µs/req"
    );
    let runs = |n: usize, c: usize| -> Vec<&RunResult> {
        results
            .iter()
            .filter(|r| r.authz_rules == Some(n) && r.concurrency == c)
            .collect()
    };
    type Metric = fn(&RunResult) -> f64;
    let (rps, p50, p99, cpu): (Metric, Metric, Metric, Metric) = (
        |r| r.rps,
        |r| f64::from(r.p50_us),
        |r| f64::from(r.p99_us),
        |r| r.cpu_per_1k,
    );
    for &c in &levels {
        let base = runs(0, c);
        for &n in counts {
            let these = runs(n, c);
            if these.is_empty() {
                continue;
            }
            let abs = |f: Metric| median(these.iter().map(|r| f(r)).collect());
            let ratio = |f: Metric| {
                median(
                    these
                        .iter()
                        .zip(&base)
                        .map(|(r, b)| f(r) / f(b).max(1e-9))
                        .collect(),
                )
            };
            let delta_cpu = median(
                these
                    .iter()
                    .zip(&base)
                    .map(|(r, b)| (r.cpu_per_1k - b.cpu_per_1k) * 1000.0)
                    .collect(),
            );
            println!(
                "{:>6} {:>4} {:>6} {:>9.0} {:>9} {:>9} {:>9.4} {:>8.3} {:>7.3} {:>7.3} {:>7.3} {:>11.2}",
                n,
                c,
                these.len(),
                abs(rps),
                fmt_us(abs(p50).round() as u32),
                fmt_us(abs(p99).round() as u32),
                abs(cpu),
                ratio(rps),
                ratio(cpu),
                ratio(p50),
                ratio(p99),
                delta_cpu
            );
        }
    }
    // CPU s/1k is ms per request; the evaluation is ns per decision.
    println!("\nevaluation alone as a share of the whole process's CPU per request at 0 rules:");
    for &c in &levels {
        let cpu0_ns = median(runs(0, c).iter().map(|r| r.cpu_per_1k).collect()) * 1e6;
        let shares: Vec<String> = evals
            .iter()
            .filter(|e| e.rules > 0)
            .map(|e| {
                format!(
                    "{} rules {:.2}%",
                    e.rules,
                    100.0 * e.ns_per_decision / cpu0_ns
                )
            })
            .collect();
        println!(
            "  c={c}: {:.1} µs CPU per request at 0 rules; {}",
            cpu0_ns / 1000.0,
            shares.join(", ")
        );
    }
}

pub(super) fn fmt_us(us: u32) -> String {
    if us >= 10_000 {
        format!("{:.2}ms", f64::from(us) / 1000.0)
    } else {
        format!("{us}µs")
    }
}
