//! VirtualService `tcp` routes: L4 match conditions and weighted
//! destinations for connections the proxy splices without parsing.
//!
//! Like istiod for a waypoint (`listener_waypoint.go`:
//! `getWaypointTCPRoutes`), the VirtualServices for a service are tried in
//! precedence order and, within each, its `tcp` routes in order: the first
//! route with no match blocks or one matching block wins. A block matches
//! when its `port` (if set) is the service port and its `gateways` (if set)
//! include `mesh`. Unlike istiod — which evaluates `sourceLabels` and
//! `sourceNamespace` against the waypoint itself, so blocks with them never
//! match, and ignores `destinationSubnets` at waypoints — these conditions are
//! checked here against the connection when the proxy knows the source
//! workload and the original destination (unknown never matches); the loader
//! warns about each such block.

use crate::model::{labels_superset, RouteDestination};
use serde::{Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// Why a `destinationSubnets` / `ipBlocks` entry is not a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("{0} is not a valid IP address or CIDR block")]
    Address(String),
    #[error("{0} is not a valid CIDR block")]
    PrefixLength(String),
}

/// An IP network (`a.b.c.d/xx`, `2001:db8::/32`) or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// Parse `ip` or `ip/len` (istiod `ValidateIPSubnet`). Host bits need
    /// not be zero; they are ignored.
    pub fn parse(s: &str) -> Result<Cidr, CidrError> {
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| CidrError::Address(s.to_string()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max && !l.starts_with('+') => n,
                _ => return Err(CidrError::PrefixLength(s.to_string())),
            },
        };
        Ok(Cidr { addr, prefix_len })
    }

    /// Is `ip` inside the network? (IPv4 and IPv6 never mix.)
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One `match` block of a TCP route (Istio `L4MatchAttributes`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct TcpMatch {
    /// The service port the connection came in on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The connection's original destination IP must be in one of these.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub destination_subnets: Vec<Cidr>,
    /// Must be a subset of the source workload's labels.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// The source workload's namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    /// When set, the block applies only if it names `mesh`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
}

/// What [`crate::Snapshot::tcp_route`] knows about a connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnection<'a> {
    /// The original destination IP (service VIP or pod IP), for
    /// `destinationSubnets`.
    pub destination: Option<IpAddr>,
    /// Source workload namespace (from its SPIFFE identity).
    pub source_namespace: Option<&'a str>,
    /// Source workload labels, when the config knows the workload.
    pub source_labels: Option<&'a crate::Labels>,
}

impl TcpMatch {
    /// Do all of the block's conditions hold for a connection on service
    /// port `port`?
    pub fn matches(&self, port: u16, conn: &TcpConnection<'_>) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        if !self.gateways.is_empty() && !self.gateways.iter().any(|g| g == "mesh") {
            return false;
        }
        if !self.destination_subnets.is_empty()
            && !conn
                .destination
                .is_some_and(|ip| self.destination_subnets.iter().any(|c| c.contains(ip)))
        {
            return false;
        }
        if let Some(ns) = &self.source_namespace {
            if conn.source_namespace != Some(ns.as_str()) {
                return false;
            }
        }
        if !self.source_labels.is_empty()
            && !conn
                .source_labels
                .is_some_and(|l| labels_superset(l, &self.source_labels))
        {
            return false;
        }
        true
    }
}

/// One entry of a VirtualService's `tcp` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TcpRoute {
    /// `"<vs-name>.tcp.<index>"`.
    pub name: String,
    /// Alternatives (OR); empty = every connection.
    pub matches: Vec<TcpMatch>,
    /// Weighted (a lone destination has weight 100; zero weights are
    /// dropped). Pick with [`crate::pick_weighted`].
    pub destinations: Vec<RouteDestination>,
}

impl TcpRoute {
    pub fn matches(&self, port: u16, conn: &TcpConnection<'_>) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(port, conn))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains(ip("10.1.200.3")));
        assert!(!c.contains(ip("10.2.0.1")));
        assert!(!c.contains(ip("::1")));
        let one = Cidr::parse("10.0.0.7").unwrap();
        assert_eq!(one.to_string(), "10.0.0.7/32");
        assert!(one.contains(ip("10.0.0.7")) && !one.contains(ip("10.0.0.8")));
        assert!(Cidr::parse("0.0.0.0/0").unwrap().contains(ip("1.2.3.4")));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::9")) && !v6.contains(ip("2001:db9::1")));
        assert!(Cidr::parse("::/0").unwrap().contains(ip("::1")));
        for bad in [
            "10.0.0.0/33",
            "10.0.0/8",
            "x",
            "10.0.0.0/",
            "1.2.3.4/+8",
            "::/129",
        ] {
            assert!(Cidr::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn match_conditions() {
        let labels: crate::Labels = [("app", "client")].into_iter().collect();
        let conn = TcpConnection {
            destination: Some(ip("10.0.0.20")),
            source_namespace: Some("default"),
            source_labels: Some(&labels),
        };
        let m = |f: fn(&mut TcpMatch)| {
            let mut m = TcpMatch::default();
            f(&mut m);
            m
        };
        assert!(m(|_| {}).matches(9080, &conn));
        assert!(m(|m| m.port = Some(9080)).matches(9080, &conn));
        assert!(!m(|m| m.port = Some(27017)).matches(9080, &conn));
        assert!(!m(|m| m.gateways = vec!["gw".into()]).matches(9080, &conn));
        assert!(m(|m| m.gateways = vec!["gw".into(), "mesh".into()]).matches(9080, &conn));
        assert!(
            m(|m| m.destination_subnets = vec![Cidr::parse("10.0.0.0/24").unwrap()])
                .matches(9080, &conn)
        );
        assert!(
            !m(|m| m.destination_subnets = vec![Cidr::parse("10.9.0.0/24").unwrap()])
                .matches(9080, &conn)
        );
        assert!(m(|m| m.source_namespace = Some("default".into())).matches(9080, &conn));
        assert!(!m(|m| m.source_namespace = Some("other".into())).matches(9080, &conn));
        let with_labels = m(|m| {
            m.source_labels = [("app".to_string(), "client".to_string())]
                .into_iter()
                .collect()
        });
        assert!(with_labels.matches(9080, &conn));
        // unknown source / destination never match conditions on them
        let unknown = TcpConnection::default();
        assert!(!with_labels.matches(9080, &unknown));
        assert!(!m(|m| m.source_namespace = Some("default".into())).matches(9080, &unknown));
        assert!(
            !m(|m| m.destination_subnets = vec![Cidr::parse("0.0.0.0/0").unwrap()])
                .matches(9080, &unknown)
        );
        let route = TcpRoute {
            name: "r.tcp.0".into(),
            matches: vec![m(|m| m.port = Some(1)), m(|m| m.port = Some(9080))],
            destinations: vec![],
        };
        assert!(route.matches(9080, &conn) && !route.matches(2, &conn));
    }
}
