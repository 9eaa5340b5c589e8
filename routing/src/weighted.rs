//! Weighted choice between route destinations.

use crate::model::RouteDestination;
use rand::Rng;

/// Pick one destination with probability proportional to its weight.
///
/// Entries with weight 0 are never picked. A lone destination is always
/// returned whatever its weight (the loader gives it 100). `None` when `dests`
/// is empty or every weight is zero.
pub fn pick_weighted<'a>(
    dests: &'a [RouteDestination],
    rng: &mut impl Rng,
) -> Option<&'a RouteDestination> {
    if dests.len() == 1 {
        return dests.first();
    }
    let total: u64 = dests.iter().map(|d| u64::from(d.weight)).sum();
    if total == 0 {
        return None;
    }
    let mut x = rng.gen_range(0..total);
    for d in dests {
        let w = u64::from(d.weight);
        if x < w {
            return Some(d);
        }
        x -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn dest(subset: &str, weight: u32) -> RouteDestination {
        RouteDestination {
            host: "reviews.default.svc.cluster.local".into(),
            subset: Some(subset.into()),
            port: None,
            weight,
            headers: Default::default(),
        }
    }

    fn shares(dests: &[RouteDestination], draws: usize) -> Vec<f64> {
        let mut rng = StdRng::seed_from_u64(42);
        let mut counts = vec![0usize; dests.len()];
        for _ in 0..draws {
            let d = pick_weighted(dests, &mut rng).unwrap();
            let i = dests.iter().position(|x| std::ptr::eq(x, d)).unwrap();
            counts[i] += 1;
        }
        counts
            .iter()
            .map(|c| *c as f64 * 100.0 / draws as f64)
            .collect()
    }

    #[test]
    fn ninety_ten() {
        let s = shares(&[dest("v1", 90), dest("v2", 10)], 100_000);
        assert!((s[0] - 90.0).abs() <= 1.0, "{s:?}");
        assert!((s[1] - 10.0).abs() <= 1.0, "{s:?}");
    }

    #[test]
    fn fifty_thirty_twenty() {
        let s = shares(&[dest("a", 50), dest("b", 30), dest("c", 20)], 100_000);
        for (got, want) in s.iter().zip([50.0, 30.0, 20.0]) {
            assert!((got - want).abs() <= 1.0, "{s:?}");
        }
    }

    #[test]
    fn zero_weights_dropped() {
        let dests = [dest("a", 0), dest("b", 100), dest("c", 0)];
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            assert_eq!(
                pick_weighted(&dests, &mut rng).unwrap().subset.as_deref(),
                Some("b")
            );
        }
        assert!(pick_weighted(&[dest("a", 0), dest("b", 0)], &mut rng).is_none());
        assert!(pick_weighted(&[], &mut rng).is_none());
        assert_eq!(
            pick_weighted(&[dest("only", 0)], &mut rng)
                .unwrap()
                .subset
                .as_deref(),
            Some("only")
        );
    }
}
