//! [`Joined`]: when an endpoint joined its cluster, in six bytes.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// When an endpoint joined its cluster (the start of its slow start): microseconds since the
/// process's [`epoch`] in 48 bits (8.9 years), as three `u16`s so that it fills the six bytes
/// a [`super::ClusterEndpoint`] has spare after its port. An `Instant` is 16 bytes, and in the
/// endpoint's runtime state it made every (cluster, endpoint) allocation 48 bytes instead of 32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Joined([u16; 3]);

/// The largest 48-bit value.
const MAX: u64 = (1 << 48) - 1;

/// The instant [`Joined`] counts from: a day before its first use, so that a time a little in
/// the past (a test's `now - 60 s`) is still after it. Times before it read as it.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now)
    })
}

impl Joined {
    /// `t`, to the microsecond (saturating 8.9 years after the epoch).
    pub(crate) fn at(t: Instant) -> Joined {
        let us = u64::try_from(t.saturating_duration_since(epoch()).as_micros())
            .unwrap_or(MAX)
            .min(MAX);
        Joined([(us >> 32) as u16, (us >> 16) as u16, us as u16])
    }

    /// The instant this stands for.
    pub(crate) fn instant(self) -> Instant {
        let [hi, mid, lo] = self.0.map(u64::from);
        epoch() + Duration::from_micros(hi << 32 | mid << 16 | lo)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An instant comes back to the microsecond; before the epoch reads as the epoch; the
    /// type is six bytes with two-byte alignment (it fits beside a `u16` in eight).
    #[test]
    fn round_trips_to_the_microsecond() {
        let now = Instant::now();
        for t in [
            now,
            now + Duration::from_nanos(1_500),
            now + Duration::from_secs(3 * 365 * 86_400),
            now - Duration::from_secs(3_600),
        ] {
            let back = Joined::at(t).instant();
            let diff = if back > t { back - t } else { t - back };
            assert!(diff < Duration::from_micros(1), "{t:?} → {back:?}");
        }
        assert_eq!(
            Joined::at(epoch() - Duration::from_secs(1)).instant(),
            epoch()
        );
        assert_eq!(Joined::at(epoch()).0, [0, 0, 0]);
        let us = (1u64 << 40) + (7 << 16) + 9;
        assert_eq!(
            Joined::at(epoch() + Duration::from_micros(us)).0,
            [256, 7, 9]
        );
        assert_eq!(
            (
                std::mem::size_of::<Joined>(),
                std::mem::align_of::<Joined>()
            ),
            (6, 2)
        );
        assert_eq!(std::mem::size_of::<super::super::ClusterEndpoint>(), 32);
    }
}
