//! Resolution of the hostnames of DNS clusters (xDS STRICT_DNS / LOGICAL_DNS), off the request
//! path: one task per question ([`DnsTarget`]) resolves it with hickory-resolver, again after the
//! record TTL (`respect_dns_ttl`) or `dns_refresh_rate`, keeps the last good addresses when a
//! lookup fails, and reports a changed answer; the owner then translates its config again with
//! [`Dns::answers`], so each request still sees one immutable snapshot. A question no longer
//! asked ([`Dns::sync`]) has its task stopped and its answer forgotten.
//!
//! The resolver is the system's (`/etc/resolv.conf`) or the one server `--dns-server` names.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;
use parking_lot::Mutex;
use routing::dns::{DnsAnswers, DnsFamily, DnsQuery, DnsTarget, MAX_ADDRESSES_PER_HOST};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// The system's resolver configuration cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the system's DNS configuration (/etc/resolv.conf): {source}; set --dns-server")]
pub struct DnsConfigError {
    source: hickory_resolver::ResolveError,
}

/// Keeps the hostnames of the current config resolved.
pub struct Dns {
    config: ResolverConfig,
    base: ResolverOpts,
    state: Mutex<State>,
    changed: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    answers: DnsAnswers,
    tasks: BTreeMap<DnsQuery, (DnsTarget, JoinHandle<()>)>,
}

impl Drop for State {
    fn drop(&mut self) {
        for (_, (_, task)) in std::mem::take(&mut self.tasks) {
            task.abort();
        }
    }
}

impl Dns {
    /// The system's resolver configuration, or only `server` (UDP, then TCP when truncated).
    pub fn new(server: Option<SocketAddr>) -> Result<Arc<Self>, DnsConfigError> {
        let (config, mut base) = match server {
            Some(s) => (
                ResolverConfig::from_parts(
                    None,
                    vec![],
                    NameServerConfigGroup::from_ips_clear(&[s.ip()], s.port(), true),
                ),
                ResolverOpts::default(),
            ),
            None => hickory_resolver::system_conf::read_system_conf()
                .map_err(|source| DnsConfigError { source })?,
        };
        // Every refresh asks the server (the TTL is honoured by the refresh schedule instead).
        base.cache_size = 0;
        base.use_hosts_file = ResolveHosts::Never;
        Ok(Arc::new(Self {
            config,
            base,
            state: Mutex::new(State::default()),
            changed: tokio::sync::watch::channel(0).0,
        }))
    }

    /// [`Dns::new`], or when the system's configuration cannot be read, a resolver without
    /// servers (said once here; each lookup then fails and DNS clusters get no endpoints).
    pub fn new_or_unconfigured(server: Option<SocketAddr>) -> Arc<Self> {
        Self::new(server).unwrap_or_else(|e| {
            warn!(error = %e, "no DNS resolver: DNS clusters / ServiceEntries with resolution DNS get no endpoints");
            Arc::new(Self {
                config: ResolverConfig::from_parts(None, vec![], NameServerConfigGroup::new()),
                base: ResolverOpts::default(),
                state: Mutex::new(State::default()),
                changed: tokio::sync::watch::channel(0).0,
            })
        })
    }

    /// The last good addresses of every question asked.
    pub fn answers(&self) -> DnsAnswers {
        self.state.lock().answers.clone()
    }

    /// The questions being kept resolved (one task each).
    pub fn resolving(&self) -> Vec<DnsQuery> {
        self.state.lock().tasks.keys().cloned().collect()
    }

    /// Bumped whenever an answer changes.
    pub fn changed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Resolve exactly `targets` from now on: new questions get a task (needs a Tokio runtime),
    /// questions no longer asked are stopped and forgotten, changed settings restart the task.
    pub fn sync(self: &Arc<Self>, targets: &[DnsTarget]) {
        let wanted: BTreeMap<&DnsQuery, &DnsTarget> =
            targets.iter().map(|t| (&t.query, t)).collect();
        let mut state = self.state.lock();
        let stale: Vec<DnsQuery> = state
            .tasks
            .iter()
            .filter(|(q, (t, _))| wanted.get(q).is_none_or(|w| *w != t))
            .map(|(q, _)| q.clone())
            .collect();
        for q in stale {
            if let Some((_, task)) = state.tasks.remove(&q) {
                task.abort();
            }
            if !wanted.contains_key(&q) {
                state.answers.remove(&q);
            }
        }
        for (q, t) in wanted {
            if !state.tasks.contains_key(q) {
                let task = tokio::spawn(Self::resolve_loop(Arc::downgrade(self), (*t).clone()));
                state.tasks.insert(q.clone(), ((*t).clone(), task));
            }
        }
    }

    fn resolver(&self, family: DnsFamily) -> TokioResolver {
        let mut opts = self.base.clone();
        opts.ip_strategy = match family {
            DnsFamily::V4 => LookupIpStrategy::Ipv4Only,
            DnsFamily::V6 => LookupIpStrategy::Ipv6Only,
            DnsFamily::All => LookupIpStrategy::Ipv4AndIpv6,
        };
        TokioResolver::builder_with_config(self.config.clone(), TokioConnectionProvider::default())
            .with_options(opts)
            .build()
    }

    /// Holds the [`Dns`] weakly: dropping it (and so its tasks' handles) ends the loop.
    async fn resolve_loop(dns: std::sync::Weak<Self>, target: DnsTarget) {
        let Some(resolver) = dns.upgrade().map(|d| d.resolver(target.query.family)) else {
            return;
        };
        // Fully qualified: no search domains (Envoy's c-ares resolves the name as written).
        let name = format!("{}.", target.query.hostname);
        loop {
            let lookup = resolver.lookup_ip(name.as_str()).await;
            let Some(this) = dns.upgrade() else {
                return;
            };
            let wait = match lookup {
                Ok(lookup) => {
                    let ttl = lookup
                        .valid_until()
                        .saturating_duration_since(Instant::now());
                    let addrs: Vec<IpAddr> = lookup.iter().take(MAX_ADDRESSES_PER_HOST).collect();
                    this.set(&target.query, addrs);
                    target.next_refresh(Some(ttl))
                }
                Err(e) if authoritative_empty(&e) => {
                    // An authoritative "no such name / no records": no endpoints, as Envoy.
                    debug!(host = %target.query.hostname, "DNS: no records");
                    this.set(&target.query, Vec::new());
                    target.next_refresh(None)
                }
                Err(e) => {
                    warn!(host = %target.query.hostname, error = %e, "DNS lookup failed; the last good addresses stay");
                    target.next_refresh(None)
                }
            };
            drop(this);
            tokio::time::sleep(wait + jitter(target.jitter)).await;
        }
    }

    fn set(&self, query: &DnsQuery, addrs: Vec<IpAddr>) {
        let mut state = self.state.lock();
        if !state.tasks.contains_key(query) {
            return; // stopped meanwhile
        }
        if state.answers.get(query) == Some(&addrs) {
            return;
        }
        debug!(host = %query.hostname, ?addrs, "DNS answer changed");
        state.answers.insert(query.clone(), addrs);
        drop(state);
        self.changed.send_modify(|n| *n += 1);
    }
}

/// NXDOMAIN or an empty NOERROR answer (SERVFAIL, REFUSED … are failures: the last good
/// addresses stay).
fn authoritative_empty(e: &hickory_resolver::ResolveError) -> bool {
    use hickory_resolver::proto::op::ResponseCode;
    use hickory_resolver::proto::ProtoErrorKind;
    matches!(
        e.proto().map(|p| p.kind()),
        Some(ProtoErrorKind::NoRecordsFound {
            response_code: ResponseCode::NXDomain | ResponseCode::NoError,
            ..
        })
    )
}

fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    use rand::Rng;
    Duration::from_millis(rand::thread_rng().gen_range(0..=max.as_millis() as u64))
}
