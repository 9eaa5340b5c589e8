//! istiod's cluster and filter-chain names (`model.BuildSubsetKey`):
//! `<direction>|<port>|<subset>|<hostname>`. For a waypoint's own services
//! the direction is `inbound-vip` and the subset part is `http`, `tcp`,
//! `http/<subset>` or `tcp/<subset>` (`listener_waypoint.go`
//! `portToSubset`); services it does not serve are `outbound|<port>|<subset>|<host>`.

/// The direction part of a cluster name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// `inbound-vip`: a service this waypoint serves.
    InboundVip,
    /// `outbound`: another service.
    Outbound,
}

/// A parsed istiod cluster (or filter chain) name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterName {
    pub direction: Direction,
    pub port: u16,
    /// `http` or `tcp` for `inbound-vip`; empty for `outbound`.
    pub protocol: String,
    pub subset: Option<String>,
    pub host: String,
}

impl ClusterName {
    /// `None` when the name is not in istiod's format.
    pub fn parse(name: &str) -> Option<ClusterName> {
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
                if proto != "http" && proto != "tcp" {
                    return None;
                }
                if subset == Some("") {
                    return None;
                }
                (proto.to_string(), subset.map(str::to_string))
            }
            Direction::Outbound => (
                String::new(),
                (!subset_part.is_empty()).then(|| subset_part.to_string()),
            ),
        };
        Some(ClusterName {
            direction,
            port,
            protocol,
            subset,
            host: host.to_string(),
        })
    }

    /// True for `inbound-vip|…|tcp…`.
    pub fn is_tcp(&self) -> bool {
        self.protocol == "tcp"
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
                    assert_eq!(got.protocol, proto, "{name}");
                    assert_eq!(got.subset.as_deref(), subset, "{name}");
                    assert_eq!(got.host, h, "{name}");
                }
            }
        }
    }
}
