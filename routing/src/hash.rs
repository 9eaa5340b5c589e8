//! Consistent hashing: request hash keys (header, cookie, source IP, query
//! parameter), the generated affinity cookie, and the ring-hash and Maglev
//! tables.
//!
//! Hashes are stable across processes, builds and Rust versions (FNV-1a with
//! a murmur3 finalizer, not `std`'s randomly keyed hasher), so every waypoint
//! replica maps a key to the same endpoint when it sees the same endpoints.
//! Tables hash the endpoint's `ip:port`, so they do not depend on the order
//! of endpoints in the config.

use crate::policy::{ConsistentHash, HashKey};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// murmur3's 64-bit finalizer (full avalanche).
fn fmix64(mut h: u64) -> u64 {
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

fn hash_seeded(bytes: &[u8], seed: u64) -> u64 {
    let mut h = FNV_OFFSET ^ fmix64(seed);
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    fmix64(h ^ bytes.len() as u64)
}

/// The stable 64-bit hash used for request keys and table positions.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    hash_seeded(bytes, 0)
}

/// The parts of a request a hash key can come from. Implement `header`,
/// `path` and `source_ip`; `cookie` and `query_param` have default
/// implementations on top of them (override `cookie` when the request has
/// several `cookie` headers, as HTTP/2 requests may).
pub trait HashRequest {
    /// First value of a header; `lowercase_name` is already lowercased.
    fn header(&self, lowercase_name: &str) -> Option<&str>;
    /// `:path` including the query string.
    fn path(&self) -> &str;
    /// The downstream client's address (for ambient: the HBONE source).
    fn source_ip(&self) -> Option<IpAddr>;

    /// Value of cookie `name` in the `cookie` header.
    fn cookie(&self, name: &str) -> Option<&str> {
        cookie_value(self.header("cookie")?, name)
    }

    /// First value of query parameter `name` (not percent-decoded, as Envoy).
    fn query_param(&self, name: &str) -> Option<&str> {
        query_param(self.path(), name)
    }
}

/// A simple owned [`HashRequest`] for tests and tools.
#[derive(Debug, Clone, Default)]
pub struct SimpleHashRequest {
    pub path: String,
    /// (name, value); names are compared case-insensitively.
    pub headers: Vec<(String, String)>,
    pub source_ip: Option<IpAddr>,
}

impl SimpleHashRequest {
    pub fn new(path: impl Into<String>) -> Self {
        SimpleHashRequest {
            path: path.into(),
            ..Default::default()
        }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_source_ip(mut self, ip: IpAddr) -> Self {
        self.source_ip = Some(ip);
        self
    }
}

impl HashRequest for SimpleHashRequest {
    fn header(&self, lowercase_name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(lowercase_name))
            .map(|(_, v)| v.as_str())
    }

    fn path(&self) -> &str {
        &self.path
    }

    fn source_ip(&self) -> Option<IpAddr> {
        self.source_ip
    }
}

/// Value of cookie `name` in one `cookie` header (`a=1; b="2"`); surrounding
/// double quotes are removed (RFC 6265, as Envoy).
pub fn cookie_value<'a>(cookie_header: &'a str, name: &str) -> Option<&'a str> {
    cookie_header.split(';').find_map(|pair| {
        let (k, v) = pair.trim_start().split_once('=')?;
        if k != name {
            return None;
        }
        let v = v.trim_end();
        Some(
            v.strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(v),
        )
    })
}

/// First value of query parameter `name` in a path (`/p?a=1&b=2`); a bare
/// `name` has the empty value.
pub(crate) fn query_param<'a>(path: &'a str, name: &str) -> Option<&'a str> {
    let query = path.split_once('?')?.1;
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The hash of a request under `policy`, if the key is present. For a cookie
/// key whose cookie is absent this is `None`; see [`cookie_to_set`].
pub fn hash_key(policy: &ConsistentHash, req: &dyn HashRequest) -> Option<u64> {
    match policy.key.as_ref()? {
        HashKey::Header(name) => req.header(name).map(|v| hash_bytes(v.as_bytes())),
        HashKey::Cookie(c) => req.cookie(&c.name).map(|v| hash_bytes(v.as_bytes())),
        HashKey::SourceIp => req
            .source_ip()
            .map(|ip| hash_bytes(ip.to_string().as_bytes())),
        HashKey::QueryParameter(name) => req.query_param(name).map(|v| hash_bytes(v.as_bytes())),
    }
}

/// An affinity cookie the proxy must add to the response (`set-cookie`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetCookie {
    pub name: String,
    pub value: String,
    pub path: Option<String>,
    /// `Max-Age`; zero = session cookie (no `Max-Age`).
    pub ttl: Duration,
}

impl SetCookie {
    /// The hash to pick the endpoint with for this request (the hash of the
    /// new cookie's value, so later requests carrying it land on the same
    /// endpoint).
    pub fn hash(&self) -> u64 {
        hash_bytes(self.value.as_bytes())
    }

    /// The `set-cookie` header value, in Envoy's format:
    /// `name="value"; Max-Age=N; Path=/p; HttpOnly`.
    pub fn header_value(&self) -> String {
        let mut s = format!("{}=\"{}\"", self.name, self.value);
        if self.ttl.as_secs() > 0 {
            s.push_str(&format!("; Max-Age={}", self.ttl.as_secs()));
        }
        if let Some(p) = self.path.as_deref().filter(|p| !p.is_empty()) {
            s.push_str("; Path=");
            s.push_str(p);
        }
        s.push_str("; HttpOnly");
        s
    }
}

/// The cookie to generate when `policy` hashes on a cookie with a `ttl`, and
/// the request does not carry it (Envoy: no cookie and no ttl = no hash).
/// The value is derived from the downstream connection's addresses, as
/// Envoy does, so concurrent requests on one connection get the same cookie.
pub fn cookie_to_set(
    policy: &ConsistentHash,
    req: &dyn HashRequest,
    downstream_remote: SocketAddr,
    downstream_local: SocketAddr,
) -> Option<SetCookie> {
    let Some(HashKey::Cookie(c)) = &policy.key else {
        return None;
    };
    let ttl = c.ttl?;
    if req.cookie(&c.name).is_some() {
        return None;
    }
    let seed = format!("{downstream_remote}{downstream_local}");
    Some(SetCookie {
        name: c.name.clone(),
        value: format!("{:016x}", hash_bytes(seed.as_bytes())),
        path: c.path.clone(),
        ttl,
    })
}

/// What the proxy hashes a request with, and the cookie to set if any.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RequestHash {
    /// `None`: the key is absent; the cluster then picks at random (Envoy).
    pub hash: Option<u64>,
    pub set_cookie: Option<SetCookie>,
}

impl RequestHash {
    /// [`hash_key`], falling back to a generated cookie ([`cookie_to_set`]).
    pub fn compute(
        policy: &ConsistentHash,
        req: &dyn HashRequest,
        downstream_remote: SocketAddr,
        downstream_local: SocketAddr,
    ) -> Self {
        if let Some(h) = hash_key(policy, req) {
            return RequestHash {
                hash: Some(h),
                set_cookie: None,
            };
        }
        match cookie_to_set(policy, req, downstream_remote, downstream_local) {
            Some(c) => RequestHash {
                hash: Some(c.hash()),
                set_cookie: Some(c),
            },
            None => RequestHash::default(),
        }
    }
}

/// A consistent-hash lookup table over a cluster's endpoints (by index).
#[derive(Debug, Clone)]
pub(crate) enum HashTable {
    /// Sorted (point, endpoint index).
    Ring(Vec<(u64, u32)>),
    /// Maglev lookup table of prime size.
    Maglev(Vec<u32>),
}

impl HashTable {
    /// Ketama-style ring: each endpoint gets the same number of points, at
    /// `hash("<ip:port>_<i>")`, i = 0, 1, …: `ceil(minimum_ring_size / n)`
    /// rounded up to a power of two, so the ring has at least
    /// `minimum_ring_size` points (at most twice that) and adding or removing
    /// an endpoint usually leaves every other endpoint's points in place —
    /// then only the keys of that endpoint move. (Envoy uses the exact
    /// quotient, which shifts a few percent of other keys as `n` changes.)
    pub(crate) fn ring(targets: &[SocketAddr], minimum_ring_size: u64) -> Self {
        let n = targets.len() as u64;
        if n == 0 {
            return HashTable::Ring(Vec::new());
        }
        let max_per_host = (crate::policy::MAX_RING_SIZE / n).max(1);
        let per_host = minimum_ring_size
            .max(1)
            .div_ceil(n)
            .next_power_of_two()
            .min(max_per_host);
        let mut ring = Vec::with_capacity((per_host * n) as usize);
        for (i, t) in targets.iter().enumerate() {
            let key = t.to_string();
            for k in 0..per_host {
                let point = hash_bytes(format!("{key}_{k}").as_bytes());
                ring.push((point, i as u32));
            }
        }
        // ties broken by address so the ring does not depend on endpoint order
        ring.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| targets[a.1 as usize].cmp(&targets[b.1 as usize]))
        });
        HashTable::Ring(ring)
    }

    /// Maglev (Eisenbud et al., 2016): every endpoint fills the table along
    /// its own permutation `(offset + j·skip) mod M`, round robin, endpoints
    /// taken in address order. `table_size` must be prime.
    pub(crate) fn maglev(targets: &[SocketAddr], table_size: u64) -> Self {
        let m = table_size as usize;
        if targets.is_empty() || m == 0 {
            return HashTable::Maglev(Vec::new());
        }
        let mut order: Vec<usize> = (0..targets.len()).collect();
        order.sort_by_key(|&i| targets[i]);
        let perms: Vec<(u64, u64)> = order
            .iter()
            .map(|&i| {
                let key = targets[i].to_string();
                let offset = hash_seeded(key.as_bytes(), 1) % table_size;
                let skip = hash_seeded(key.as_bytes(), 2) % (table_size - 1).max(1) + 1;
                (offset, skip)
            })
            .collect();
        let mut next = vec![0u64; order.len()];
        let mut table = vec![u32::MAX; m];
        let mut filled = 0usize;
        'fill: loop {
            for (slot, &i) in order.iter().enumerate() {
                let (offset, skip) = perms[slot];
                let mut c = ((offset + next[slot] * skip) % table_size) as usize;
                while table[c] != u32::MAX {
                    next[slot] += 1;
                    c = ((offset + next[slot] * skip) % table_size) as usize;
                }
                table[c] = i as u32;
                next[slot] += 1;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        HashTable::Maglev(table)
    }

    /// The endpoint for `hash`: the table's choice, or — when `allowed`
    /// rejects it (excluded on retry, or ejected) — the next allowed entry
    /// walking forward. For the ring this equals rebuilding the ring without
    /// the rejected endpoints; for Maglev it keeps every other key in place.
    pub(crate) fn lookup(&self, hash: u64, allowed: impl Fn(usize) -> bool) -> Option<usize> {
        let walk = |len: usize, start: usize, at: &dyn Fn(usize) -> usize| {
            (0..len)
                .map(|k| at((start + k) % len))
                .find(|&i| allowed(i))
        };
        match self {
            HashTable::Ring(ring) => {
                if ring.is_empty() {
                    return None;
                }
                let start = ring.partition_point(|(p, _)| *p < hash) % ring.len();
                walk(ring.len(), start, &|k| ring[k].1 as usize)
            }
            HashTable::Maglev(table) => {
                if table.is_empty() {
                    return None;
                }
                let start = (hash % table.len() as u64) as usize;
                walk(table.len(), start, &|k| table[k] as usize)
            }
        }
    }
}

/// Trial division; table sizes are < 5 000 011.
pub(crate) fn is_prime(n: u64) -> bool {
    if n < 2 {
        return false;
    }
    if n.checked_rem(2) == Some(0) {
        return n == 2;
    }
    let mut d = 3;
    while d * d <= n {
        if n.checked_rem(d) == Some(0) {
            return false;
        }
        d += 2;
    }
    true
}

#[cfg(test)]
mod tests;
