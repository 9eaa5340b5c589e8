//! Istio `HTTPFaultInjection` → Envoy's fault filter (istiod
//! `TranslateFault`): a fixed delay before forwarding and/or an abort with an
//! HTTP or gRPC status, each for a percentage of requests (drawn
//! independently; the abort is decided after the delay). A missing
//! percentage is 0 %: Istio's documentation says "if left unspecified, no
//! request will be delayed/aborted" (istiod passes an unset fraction, or the
//! deprecated integer `percent`, 0 by default).

use super::Percent;
use crate::policy::format_duration;
use rand::Rng;
use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// gRPC status names istiod accepts for `abort.grpcStatus`
/// (`pkg/util/grpc/codes.go`), with their numbers.
pub const GRPC_STATUS_CODES: [(&str, u8); 17] = [
    ("OK", 0),
    ("CANCELLED", 1),
    ("UNKNOWN", 2),
    ("INVALID_ARGUMENT", 3),
    ("DEADLINE_EXCEEDED", 4),
    ("NOT_FOUND", 5),
    ("ALREADY_EXISTS", 6),
    ("PERMISSION_DENIED", 7),
    ("RESOURCE_EXHAUSTED", 8),
    ("FAILED_PRECONDITION", 9),
    ("ABORTED", 10),
    ("OUT_OF_RANGE", 11),
    ("UNIMPLEMENTED", 12),
    ("INTERNAL", 13),
    ("UNAVAILABLE", 14),
    ("DATA_LOSS", 15),
    ("UNAUTHENTICATED", 16),
];

/// What an abort answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Abort {
    /// `httpStatus`: this HTTP status (200..=599).
    Http(u16),
    /// `grpcStatus`: for a gRPC request Envoy answers HTTP 200 with
    /// `content-type: application/grpc` and `grpc-status: code` in the
    /// headers (a trailers-only response).
    Grpc { code: u8, name: &'static str },
}

impl Abort {
    /// The gRPC status of a name in [`GRPC_STATUS_CODES`].
    pub fn grpc(name: &str) -> Option<Abort> {
        GRPC_STATUS_CODES
            .iter()
            .find(|(n, _)| *n == name)
            .map(|&(name, code)| Abort::Grpc { code, name })
    }
}

impl fmt::Display for Abort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Abort::Http(s) => write!(f, "HTTP {s}"),
            Abort::Grpc { code, name } => write!(f, "gRPC {name} ({code})"),
        }
    }
}

/// `fault.delay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultDelay {
    #[serde(serialize_with = "crate::policy::serialize_duration")]
    pub fixed_delay: Duration,
    pub percentage: Percent,
}

/// `fault.abort`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FaultAbort {
    pub abort: Abort,
    pub percentage: Percent,
}

/// Istio `HTTPFaultInjection`: at least one of `delay` and `abort`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fault {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// What to do to one request: wait `delay` first, then answer with `abort`
/// instead of forwarding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultDecision {
    pub delay: Option<Duration>,
    pub abort: Option<Abort>,
}

impl FaultDecision {
    pub fn is_none(&self) -> bool {
        self.delay.is_none() && self.abort.is_none()
    }
}

impl Fault {
    /// Draw for one request (two independent draws, delay then abort).
    pub fn decide<R: Rng + ?Sized>(&self, rng: &mut R) -> FaultDecision {
        let delay = self
            .delay
            .as_ref()
            .filter(|d| d.percentage.sample(rng))
            .map(|d| d.fixed_delay);
        let abort = self
            .abort
            .as_ref()
            .filter(|a| a.percentage.sample(rng))
            .map(|a| a.abort);
        FaultDecision { delay, abort }
    }
}

impl fmt::Display for Fault {
    /// `delay 5s for 10%, abort HTTP 500 for 50%`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(d) = &self.delay {
            parts.push(format!(
                "delay {} for {}",
                format_duration(d.fixed_delay),
                d.percentage
            ));
        }
        if let Some(a) = &self.abort {
            parts.push(format!("abort {} for {}", a.abort, a.percentage));
        }
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn fault(delay_pct: f64, abort_pct: f64) -> Fault {
        Fault {
            delay: Some(FaultDelay {
                fixed_delay: Duration::from_millis(1500),
                percentage: Percent::from_value(delay_pct).unwrap(),
            }),
            abort: Some(FaultAbort {
                abort: Abort::Http(503),
                percentage: Percent::from_value(abort_pct).unwrap(),
            }),
        }
    }

    #[test]
    fn zero_and_hundred_percent() {
        let mut rng = StdRng::seed_from_u64(3);
        let always = fault(100.0, 100.0);
        let never = fault(0.0, 0.0);
        for _ in 0..1000 {
            assert_eq!(
                always.decide(&mut rng),
                FaultDecision {
                    delay: Some(Duration::from_millis(1500)),
                    abort: Some(Abort::Http(503))
                }
            );
            assert!(never.decide(&mut rng).is_none());
        }
        assert_eq!(
            always.to_string(),
            "delay 1500ms for 100%, abort HTTP 503 for 100%"
        );
    }

    #[test]
    fn thirty_percent_is_thirty_percent_and_independent() {
        let mut rng = StdRng::seed_from_u64(42);
        let f = fault(30.0, 30.0);
        let n = 100_000;
        let (mut delays, mut aborts, mut both) = (0, 0, 0);
        for _ in 0..n {
            let d = f.decide(&mut rng);
            delays += usize::from(d.delay.is_some());
            aborts += usize::from(d.abort.is_some());
            both += usize::from(d.delay.is_some() && d.abort.is_some());
        }
        // 30 % ± 1 % (≈ 7 standard deviations), and 9 % for both
        assert!((29_000..31_000).contains(&delays), "{delays}");
        assert!((29_000..31_000).contains(&aborts), "{aborts}");
        assert!((8_300..9_700).contains(&both), "{both}");
    }

    #[test]
    fn only_one_part_and_grpc() {
        let mut rng = StdRng::seed_from_u64(5);
        let f = Fault {
            delay: None,
            abort: Some(FaultAbort {
                abort: Abort::grpc("UNAVAILABLE").unwrap(),
                percentage: Percent::HUNDRED,
            }),
        };
        assert_eq!(
            f.decide(&mut rng),
            FaultDecision {
                delay: None,
                abort: Some(Abort::Grpc {
                    code: 14,
                    name: "UNAVAILABLE"
                })
            }
        );
        assert_eq!(f.to_string(), "abort gRPC UNAVAILABLE (14) for 100%");
        assert_eq!(Abort::grpc("unavailable"), None);
        assert_eq!(Abort::grpc("14"), None);
        assert_eq!(
            serde_json::to_value(&f).unwrap(),
            serde_json::json!({"abort": {"abort": {"grpc": {"code": 14, "name": "UNAVAILABLE"}}, "percentage": 100.0}})
        );
    }
}
