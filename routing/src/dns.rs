//! Hostnames a config needs resolved (STRICT_DNS / LOGICAL_DNS clusters, ServiceEntry
//! `resolution: DNS`) and the answers the caller resolved for them.
//!
//! Translation never resolves: it lists [`DnsTarget`]s and builds endpoints from the
//! [`DnsAnswers`] it is given. The caller (the waypoint's resolver tasks) resolves them off the
//! request path and translates again when an answer changes, so the data path only ever sees an
//! immutable snapshot.

use serde::Serialize;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

/// Which address records are asked for (Envoy `Cluster.DnsLookupFamily`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsFamily {
    /// A only (`V4_ONLY`; also `AUTO` / `V4_PREFERRED`, which istiod never writes, as A first).
    V4,
    /// AAAA only (`V6_ONLY`).
    V6,
    /// A and AAAA (`ALL`).
    All,
}

/// One question: a hostname and the records asked for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct DnsQuery {
    /// Lower case, without a trailing dot.
    pub hostname: String,
    pub family: DnsFamily,
}

/// A hostname to keep resolved, and how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DnsTarget {
    pub query: DnsQuery,
    /// Re-resolved this often (Envoy `dns_refresh_rate`; also after a failure).
    pub refresh: Duration,
    /// The record TTL decides when to resolve again (Envoy `respect_dns_ttl`), bounded by
    /// [`DnsTarget::MIN_TTL_REFRESH`] and [`DnsTarget::MAX_TTL_REFRESH`].
    pub respect_ttl: bool,
    /// Up to this much is added at random to each wait (Envoy `dns_jitter`).
    pub jitter: Duration,
}

impl DnsTarget {
    /// Envoy's `dns_refresh_rate` default.
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(5);
    /// A TTL below this waits this long (a TTL of 0 would resolve in a loop).
    pub const MIN_TTL_REFRESH: Duration = Duration::from_secs(1);
    /// A TTL above this waits this long.
    pub const MAX_TTL_REFRESH: Duration = Duration::from_secs(3600);

    /// Several clusters asking the same question: the most demanding refresh wins.
    pub fn merge(&mut self, other: &DnsTarget) {
        self.refresh = self.refresh.min(other.refresh);
        self.respect_ttl |= other.respect_ttl;
        self.jitter = self.jitter.max(other.jitter);
    }

    /// How long to wait before resolving again after an answer with `ttl` (`None`: failed).
    pub fn next_refresh(&self, ttl: Option<Duration>) -> Duration {
        match ttl {
            Some(ttl) if self.respect_ttl => {
                ttl.clamp(Self::MIN_TTL_REFRESH, Self::MAX_TTL_REFRESH)
            }
            _ => self.refresh.max(Self::MIN_TTL_REFRESH),
        }
    }
}

/// At most this many addresses of one hostname become endpoints.
pub const MAX_ADDRESSES_PER_HOST: usize = 64;

/// The last good addresses per question, in answer order. A question not in it has not been
/// answered yet (its endpoints are left out until it is, as Envoy warms a DNS cluster).
pub type DnsAnswers = BTreeMap<DnsQuery, Vec<IpAddr>>;

/// Lower case without a trailing dot: the form [`DnsQuery::hostname`] holds.
pub fn normalize_hostname(host: &str) -> String {
    host.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refresh_follows_ttl_within_bounds() {
        let t = DnsTarget {
            query: DnsQuery {
                hostname: "a".into(),
                family: DnsFamily::V4,
            },
            refresh: Duration::from_secs(60),
            respect_ttl: true,
            jitter: Duration::ZERO,
        };
        let s = Duration::from_secs;
        assert_eq!(t.next_refresh(Some(s(30))), s(30));
        assert_eq!(t.next_refresh(Some(s(0))), DnsTarget::MIN_TTL_REFRESH);
        assert_eq!(t.next_refresh(Some(s(86400))), DnsTarget::MAX_TTL_REFRESH);
        assert_eq!(t.next_refresh(None), s(60));
        let fixed = DnsTarget {
            respect_ttl: false,
            ..t
        };
        assert_eq!(fixed.next_refresh(Some(s(30))), s(60));
    }
}
