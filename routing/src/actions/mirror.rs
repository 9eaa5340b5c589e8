//! Istio `mirror` + `mirrorPercentage` (or the deprecated `mirrorPercent`)
//! and `mirrors` → Envoy `request_mirror_policies` (istiod `MirrorPercent`,
//! `MirrorPercentByPolicy`): a copy of the request goes to another
//! destination, for a percentage of requests (default 100 %; 0 % means no
//! mirror, and the loader leaves such mirrors out). The copy's response is
//! ignored; Envoy suffixes the copy's authority with `-shadow`.

use super::Percent;
use rand::Rng;
use serde::Serialize;
use std::fmt;

/// One mirror destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Mirror {
    /// FQDN of the mirror service.
    pub host: String,
    pub subset: Option<String>,
    /// Service port; `None` = the port the request came in on.
    pub port: Option<u16>,
    pub percentage: Percent,
}

impl Mirror {
    /// Mirror this request? (One draw against [`Mirror::percentage`].)
    pub fn sampled<R: Rng + ?Sized>(&self, rng: &mut R) -> bool {
        self.percentage.sample(rng)
    }
}

impl fmt::Display for Mirror {
    /// `ratings.default.svc.cluster.local subset v2 port 9080 (50%)`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.host)?;
        if let Some(s) = &self.subset {
            write!(f, " subset {s}")?;
        }
        if let Some(p) = self.port {
            write!(f, " port {p}")?;
        }
        write!(f, " ({})", self.percentage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn mirror(pct: f64) -> Mirror {
        Mirror {
            host: "ratings.default.svc.cluster.local".into(),
            subset: Some("v2".into()),
            port: None,
            percentage: Percent::from_value(pct).unwrap(),
        }
    }

    #[test]
    fn sampling() {
        let mut rng = StdRng::seed_from_u64(11);
        let all = mirror(100.0);
        assert!((0..1000).all(|_| all.sampled(&mut rng)));
        let none = mirror(0.0);
        assert!((0..1000).all(|_| !none.sampled(&mut rng)));
        let quarter = mirror(25.0);
        let hits = (0..100_000).filter(|_| quarter.sampled(&mut rng)).count();
        assert!((24_000..26_000).contains(&hits), "{hits}");
        assert_eq!(
            quarter.to_string(),
            "ratings.default.svc.cluster.local subset v2 (25%)"
        );
    }
}
