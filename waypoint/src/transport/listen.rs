//! Listening sockets and what connecting to them costs the process: the listen backlog, accept
//! errors (EMFILE/ENFILE: back off instead of spinning, log rate-limited, count), and the
//! per-listener counters the health metrics report.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use crate::telemetry::throttle::LogThrottle;

/// Listen backlog of the admin, stats and health listeners (the Rust standard library's).
pub const ENDPOINT_BACKLOG: u32 = 128;
/// First and longest pause after a failed accept. A process out of descriptors frees them only
/// when connections close, so retrying at once would only spin.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Bind `addr` and listen with `backlog` pending connections (the kernel caps it at
/// `net.core.somaxconn`). Address reuse is on, as the standard library sets it. An IPv6 socket
/// takes IPv6 only, whatever `net.ipv6.bindv6only` says, so that it can sit beside an IPv4 one
/// on the same port.
pub fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    Ok(socket.into())
}

/// Tries at a port the OS picked for the first family that is free in the other one.
const DUAL_STACK_PORT_TRIES: usize = 8;

/// Bind `addr` as [`bind`] does; an unspecified address (`0.0.0.0` or `[::]`) stands for every
/// address of both families, as istiod's `PreferDualStack` Service expects: the other family's
/// unspecified address is bound on the same port too. A host without that family (no IPv6 in
/// the kernel, or disabled) gets the one socket and an info line; any other failure of the
/// second bind (its port taken) is an error naming both addresses.
pub fn bind_all(addr: SocketAddr, backlog: u32) -> std::io::Result<Vec<std::net::TcpListener>> {
    if !addr.ip().is_unspecified() {
        return Ok(vec![bind(addr, backlog)?]);
    }
    let other_ip: IpAddr = match addr {
        SocketAddr::V4(_) => Ipv6Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED.into(),
    };
    let tries = if addr.port() == 0 {
        DUAL_STACK_PORT_TRIES
    } else {
        1
    };
    let mut last = None;
    for _ in 0..tries {
        let first = bind(addr, backlog)?;
        let port = first.local_addr()?.port();
        let other = SocketAddr::new(other_ip, port);
        match bind(other, backlog) {
            Ok(second) => return Ok(vec![first, second]),
            Err(e) if family_unavailable(&e) => {
                info!(%addr, %other, error = %e,
                    "the host has no {} here; listening on {addr} only", family(other));
                return Ok(vec![first]);
            }
            Err(e) => last = Some((other, e)),
        }
    }
    let (other, e) = last.expect("at least one try");
    Err(std::io::Error::new(
        e.kind(),
        format!("{addr} listens on {other} too (dual stack), which failed: {e}"),
    ))
}

/// `ipv6` or `ipv4`: how a listener's second (dual-stack) socket is named in logs and in the
/// `waypoint <what>-ipv6 listening on …` announcement.
pub fn family(addr: SocketAddr) -> &'static str {
    if addr.is_ipv6() {
        "ipv6"
    } else {
        "ipv4"
    }
}

/// The address family itself is missing (`EAFNOSUPPORT`), or its unspecified address cannot be
/// bound (`EADDRNOTAVAIL`: IPv6 disabled on every interface).
fn family_unavailable(e: &std::io::Error) -> bool {
    const EAFNOSUPPORT: i32 = 97;
    e.kind() == std::io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(EAFNOSUPPORT)
}

/// Counters of one listener.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Connections being served now.
    pub open: AtomicU64,
    /// Connections closed at once because the listener had its maximum open.
    pub rejected_full: AtomicU64,
    /// Connections closed because request headers did not arrive in time.
    pub header_timeouts: AtomicU64,
    /// Connections closed because nothing was read or written for the idle timeout.
    pub idle_timeouts: AtomicU64,
    /// Failed `accept` calls (EMFILE, ENFILE, ENOBUFS, ...).
    pub accept_errors: AtomicU64,
}

/// Every listener's counters, by name (`admin`, `stats`, `health`, `prometheus`, `hbone`).
#[derive(Debug, Default)]
pub struct Listeners {
    by_name: Mutex<BTreeMap<&'static str, Arc<ListenerStats>>>,
    /// Accept errors are logged at most once per interval per listener.
    log: LogThrottle,
    /// So are connections closed because a listener had its maximum open.
    pub full_log: LogThrottle,
}

impl Listeners {
    /// The counters of listener `name` (created on first use).
    pub fn get(&self, name: &'static str) -> Arc<ListenerStats> {
        self.by_name.lock().entry(name).or_default().clone()
    }

    /// Accept one connection from `listener`. A failed accept is counted and logged
    /// (rate-limited), then retried after a pause that doubles up to 1 s, so that running out
    /// of file descriptors does not turn the accept loop into a spin.
    pub async fn accept(
        &self,
        name: &'static str,
        listener: &TcpListener,
        stats: &ListenerStats,
    ) -> (TcpStream, SocketAddr) {
        let mut pause = ACCEPT_BACKOFF_MIN;
        loop {
            match listener.accept().await {
                Ok(accepted) => return accepted,
                Err(e) => {
                    stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = self.log.allow(name) {
                        warn!(listener = name, error = %e, suppressed,
                            "{name} listener: accept failed; retrying after {pause:?}");
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(ACCEPT_BACKOFF_MAX);
                }
            }
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Name {
    listener: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameReason {
    listener: &'static str,
    reason: &'static str,
}

/// The listeners' counters as metrics, read at scrape time.
#[derive(Debug)]
pub struct ListenerCollector(pub Arc<Listeners>);

impl Collector for ListenerCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let all: Vec<_> = self
            .0
            .by_name
            .lock()
            .iter()
            .map(|(n, s)| (*n, s.clone()))
            .collect();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        {
            let mut enc = e.encode_descriptor(
                "waypoint_listener_accept_errors",
                "Failed accepts (out of file descriptors, ...), retried after a pause",
                None,
                MetricType::Counter,
            )?;
            for (listener, s) in &all {
                ConstCounter::new(load(&s.accept_errors))
                    .encode(enc.encode_family(&Name { listener })?)?;
            }
        }
        let endpoints: Vec<_> = all.iter().filter(|(n, _)| *n != "hbone").collect();
        {
            let mut enc = e.encode_descriptor(
                "waypoint_listener_connections_open",
                "Connections open now on the admin, stats and health listeners",
                None,
                MetricType::Gauge,
            )?;
            for (listener, s) in &endpoints {
                ConstGauge::new(load(&s.open) as f64)
                    .encode(enc.encode_family(&Name { listener })?)?;
            }
        }
        let mut enc = e.encode_descriptor(
            "waypoint_listener_connections_closed",
            "Connections the admin, stats and health listeners closed: `limit` (the listener's \
             maximum was open), `header_timeout`, `idle_timeout`",
            None,
            MetricType::Counter,
        )?;
        for (listener, s) in &endpoints {
            for (reason, v) in [
                ("limit", &s.rejected_full),
                ("header_timeout", &s.header_timeouts),
                ("idle_timeout", &s.idle_timeouts),
            ] {
                ConstCounter::new(load(v))
                    .encode(enc.encode_family(&NameReason { listener, reason })?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backlog_bounds_the_connections_the_kernel_completes() {
        // Nothing accepts: the kernel completes backlog + 1 handshakes, then drops SYNs.
        let listener = bind("127.0.0.1:0".parse().unwrap(), 2).unwrap();
        let addr = listener.local_addr().unwrap();
        let completed = (0..8)
            .map(|_| std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)))
            .filter_map(Result::ok)
            .count();
        assert_eq!(completed, 3);
    }

    #[test]
    fn an_unspecified_address_listens_on_both_families_on_one_port() {
        // Nothing connects to the unspecified addresses: only the loopback of each family.
        let all = bind_all("0.0.0.0:0".parse().unwrap(), 8).unwrap();
        let ports: Vec<u16> = all.iter().map(|l| l.local_addr().unwrap().port()).collect();
        assert!(all[0].local_addr().unwrap().is_ipv4());
        if all.len() == 1 {
            // A host without IPv6 (this one has it: the assertion below is what runs here).
            assert!(std::net::TcpListener::bind("[::1]:0").is_err());
            return;
        }
        assert!(all[1].local_addr().unwrap().is_ipv6());
        assert_eq!(ports[0], ports[1]);
        for ip in ["127.0.0.1", "::1"] {
            let to = SocketAddr::new(ip.parse().unwrap(), ports[0]);
            std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .unwrap_or_else(|e| panic!("{to}: {e}"));
        }
        // A specific address is that one socket.
        let one = bind_all("[::1]:0".parse().unwrap(), 8).unwrap();
        assert_eq!(one.len(), 1);
        // The other family's port taken: an error that names both addresses.
        let taken = bind("[::]:0".parse().unwrap(), 8).unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = bind_all(SocketAddr::from(([0, 0, 0, 0], port)), 8).unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("0.0.0.0:{port} listens on [::]:{port} too")),
            "{err}"
        );
    }
}
