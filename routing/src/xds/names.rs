//! istiod's cluster and filter-chain names (`model.BuildSubsetKey`):
//! `<direction>|<port>|<subset>|<hostname>`. For a waypoint's own services
//! the direction is `inbound-vip` and the subset part is `http`, `tcp`,
//! `http/<subset>` or `tcp/<subset>` (`listener_waypoint.go`
//! `portToSubset`); services it does not serve are `outbound|<port>|<subset>|<host>`.

use std::sync::Arc;

/// The direction part of a cluster name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `inbound-vip`: a service this waypoint serves.
    InboundVip,
    /// `outbound`: another service.
    Outbound,
}

/// A parsed istiod cluster (or filter chain) name. It holds the name itself and where its parts
/// are in it: kept (a service cluster's piece keeps one, at 5 000 services 15 000 of them),
/// the name is a string shared with whoever holds it ([`ClusterName::parse_shared`]; copies
/// of the host, protocol and subset were three strings each); read and dropped, it borrows
/// the name ([`ClusterName::parse`]: no allocation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterName<S = Arc<str>> {
    pub direction: Direction,
    pub port: u16,
    protocol: Protocol,
    name: S,
    /// The host is the name from this byte on.
    host_at: u16,
    /// The subset's bytes, when there is one.
    subset: Option<(u16, u16)>,
}

/// The protocol part of an `inbound-vip` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Http,
    Tcp,
    /// `outbound` names have none.
    None,
}

impl<'a> ClusterName<&'a str> {
    /// `None` when the name is not in istiod's format.
    pub fn parse(name: &'a str) -> Option<Self> {
        Some(Parts::of(name)?.holding(name))
    }
}

impl ClusterName {
    /// [`ClusterName::parse`], holding `name` itself (shared, not a copy).
    pub fn parse_shared(name: &Arc<str>) -> Option<ClusterName> {
        Some(Parts::of(name)?.holding(name.clone()))
    }

    /// The whole name (the very string [`ClusterName::parse_shared`] was given).
    pub(crate) fn name(&self) -> &Arc<str> {
        &self.name
    }
}

impl<S: std::ops::Deref<Target = str>> ClusterName<S> {
    /// The service hostname.
    pub fn host(&self) -> &str {
        &self.name[self.host_at as usize..]
    }

    /// The subset, if any (`inbound-vip|…|http/<subset>|…`, `outbound|…|<subset>|…`).
    pub fn subset(&self) -> Option<&str> {
        self.subset
            .map(|(from, to)| &self.name[from as usize..to as usize])
    }

    /// `http` or `tcp` for `inbound-vip`; empty for `outbound`.
    pub fn protocol(&self) -> &'static str {
        match self.protocol {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
            Protocol::None => "",
        }
    }

    /// True for `inbound-vip|…|tcp…`.
    pub fn is_tcp(&self) -> bool {
        self.protocol == Protocol::Tcp
    }
}

/// Where a name's parts are, found before the name is held.
struct Parts {
    direction: Direction,
    port: u16,
    protocol: Protocol,
    host_at: u16,
    subset: Option<(u16, u16)>,
}

impl Parts {
    fn of(name: &str) -> Option<Parts> {
        // Offsets are u16: a name longer than that is no istiod name (its host is a DNS name,
        // at most 253 bytes).
        u16::try_from(name.len()).ok()?;
        let at = |part: &str| (part.as_ptr() as usize - name.as_ptr() as usize) as u16;
        let range = |part: &str| (at(part), at(part) + part.len() as u16);
        let mut parts = name.splitn(4, '|');
        let direction = match parts.next()? {
            "inbound-vip" => Direction::InboundVip,
            "outbound" => Direction::Outbound,
            _ => return None,
        };
        let port: u16 = parts.next()?.parse().ok()?;
        let subset_part = parts.next()?;
        let host = parts.next()?;
        if host.is_empty() || host.contains('|') {
            return None;
        }
        let (protocol, subset) = match direction {
            Direction::InboundVip => {
                let (proto, subset) = match subset_part.split_once('/') {
                    Some((p, s)) => (p, Some(s)),
                    None => (subset_part, None),
                };
                let protocol = match proto {
                    "http" => Protocol::Http,
                    "tcp" => Protocol::Tcp,
                    _ => return None,
                };
                if subset == Some("") {
                    return None;
                }
                (protocol, subset.map(range))
            }
            Direction::Outbound => (
                Protocol::None,
                (!subset_part.is_empty()).then(|| range(subset_part)),
            ),
        };
        Some(Parts {
            direction,
            port,
            protocol,
            host_at: at(host),
            subset,
        })
    }

    fn holding<S>(self, name: S) -> ClusterName<S> {
        ClusterName {
            direction: self.direction,
            port: self.port,
            protocol: self.protocol,
            name,
            host_at: self.host_at,
            subset: self.subset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_table() {
        let h = "reviews.default.svc.cluster.local";
        type Want<'a> = Option<(Direction, u16, &'a str, Option<&'a str>)>;
        let cases: Vec<(String, Want)> = vec![
            (
                format!("inbound-vip|9080|http|{h}"),
                Some((Direction::InboundVip, 9080, "http", None)),
            ),
            (
                format!("inbound-vip|9080|http/v1|{h}"),
                Some((Direction::InboundVip, 9080, "http", Some("v1"))),
            ),
            (
                format!("inbound-vip|27017|tcp/a.b|{h}"),
                Some((Direction::InboundVip, 27017, "tcp", Some("a.b"))),
            ),
            (
                format!("outbound|9080|v2|{h}"),
                Some((Direction::Outbound, 9080, "", Some("v2"))),
            ),
            (
                format!("outbound|9080||{h}"),
                Some((Direction::Outbound, 9080, "", None)),
            ),
            (format!("inbound-vip|x|http|{h}"), None),
            (format!("inbound-vip|9080|grpc|{h}"), None),
            (format!("inbound-vip|9080|http/|{h}"), None),
            (format!("inbound|9080|http|{h}"), None),
            ("inbound-vip|9080|http|".to_string(), None),
            ("main_internal".to_string(), None),
            ("".to_string(), None),
            (format!("inbound-vip|70000|http|{h}"), None),
        ];
        for (name, want) in cases {
            let got = ClusterName::parse(&name);
            match want {
                None => assert!(got.is_none(), "{name}"),
                Some((d, p, proto, subset)) => {
                    let got = got.unwrap_or_else(|| panic!("{name}"));
                    assert_eq!(got.direction, d, "{name}");
                    assert_eq!(got.port, p, "{name}");
                    assert_eq!(got.protocol(), proto, "{name}");
                    assert_eq!(got.subset(), subset, "{name}");
                    assert_eq!(got.host(), h, "{name}");
                    let shared: Arc<str> = name.as_str().into();
                    let held = ClusterName::parse_shared(&shared).unwrap();
                    assert_eq!(
                        (
                            held.direction,
                            held.port,
                            held.protocol(),
                            held.subset(),
                            held.host()
                        ),
                        (
                            got.direction,
                            got.port,
                            got.protocol(),
                            got.subset(),
                            got.host()
                        ),
                        "{name}"
                    );
                    assert!(Arc::ptr_eq(&held.name, &shared), "{name}: the name itself");
                }
            }
        }
    }

    /// The name once, not three more strings: half the bytes the parts took inline (80).
    #[test]
    fn a_parsed_name_is_small() {
        // 40 bytes with u32 offsets: a cluster's piece would be one size class larger.
        assert!(std::mem::size_of::<ClusterName>() <= 32);
        // What u16 offsets cannot hold is not an istiod name.
        let host = format!(
            "{}.default.svc.cluster.local",
            "a".repeat(u16::MAX as usize)
        );
        assert!(ClusterName::parse(&format!("inbound-vip|80|http|{host}")).is_none());
        let host = "reviews.default.svc.cluster.local";
        let text = format!("inbound-vip|80|http/v1|{host}");
        let name = ClusterName::parse(&text).unwrap();
        assert_eq!((name.host(), name.subset()), (host, Some("v1")));
    }
}
