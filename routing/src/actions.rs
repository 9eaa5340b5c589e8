//! What a matched VirtualService `http` route does besides picking a
//! destination: its action (forward, redirect, direct response), URI and
//! authority rewrites, header operations, timeout, retry policy, fault
//! injection, mirroring and CORS — as typed, validated model values with pure
//! helpers the proxy calls (no I/O here).
//!
//! Semantics are Envoy's as istiod configures it
//! (`pilot/pkg/networking/core/route/route.go`, `route/retry/retry.go`);
//! each type's documentation names the details.

mod cors;
mod fault;
mod headers;
mod mirror;
mod redirect;
mod retry;
mod rewrite;

pub use cors::{Cors, UnmatchedPreflights};
pub use fault::{Abort, Fault, FaultAbort, FaultDecision, FaultDelay, GRPC_STATUS_CODES};
pub use headers::{HeaderOp, HeaderOpKind, HeaderOps, HeaderSink, Headers};
pub use mirror::Mirror;
pub use redirect::{DirectResponse, Redirect, RedirectPath, RedirectPort};
pub use retry::{RetryFailure, RetryOn, RetryPolicy, ISTIO_HOST_SELECTION_RETRY_MAX_ATTEMPTS};
pub use rewrite::{RegexRewrite, Rewrite, UriRewrite};

pub(crate) use redirect::base64_decode;
pub(crate) use retry::is_known_status;

use rand::Rng;
use serde::{Serialize, Serializer};
use std::fmt;

/// What a matched HTTP route does (Istio: `route`, `redirect` or
/// `directResponse`, which are mutually exclusive). The rare answers are boxed: inline, every
/// route (one per service at least) would carry 160 bytes for them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RouteAction {
    /// Forward to one of [`crate::HttpRoute::destinations`] (weighted).
    Route,
    /// Answer with a redirect (Envoy `RedirectAction`).
    Redirect(Box<Redirect>),
    /// Answer with a fixed status and body (Envoy `DirectResponseAction`).
    DirectResponse(Box<DirectResponse>),
}

impl RouteAction {
    /// True for [`RouteAction::Route`].
    pub fn is_route(&self) -> bool {
        matches!(self, RouteAction::Route)
    }
}

/// A percentage (Istio `Percent`), kept the way istiod hands it to Envoy:
/// parts per million, `value × 10000` truncated
/// (`translatePercentToFractionalPercent`). Serializes as the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Percent {
    per_million: u32,
}

impl Percent {
    pub const ZERO: Percent = Percent { per_million: 0 };
    pub const HUNDRED: Percent = Percent {
        per_million: 1_000_000,
    };

    /// `value` in `0..=100`; `None` outside (or NaN).
    pub fn from_value(value: f64) -> Option<Percent> {
        if !(0.0..=100.0).contains(&value) {
            return None;
        }
        Some(Percent {
            per_million: (value * 10_000.0) as u32,
        })
    }

    /// An integer percentage (the deprecated `percent`/`mirrorPercent`
    /// fields); values above 100 are capped.
    pub fn from_int(value: u32) -> Percent {
        Percent {
            per_million: value.min(100) * 10_000,
        }
    }

    /// Parts per million (capped at 100 %).
    pub fn from_per_million(per_million: u32) -> Percent {
        Percent {
            per_million: per_million.min(1_000_000),
        }
    }

    pub fn per_million(self) -> u32 {
        self.per_million
    }

    /// The percentage, `0.0..=100.0`.
    pub fn value(self) -> f64 {
        f64::from(self.per_million) / 10_000.0
    }

    pub fn is_zero(self) -> bool {
        self.per_million == 0
    }

    /// One draw: true with this probability (as Envoy: a uniform value in
    /// `0..1_000_000` below the numerator). 0 % never, 100 % always.
    pub fn sample<R: Rng + ?Sized>(self, rng: &mut R) -> bool {
        match self.per_million {
            0 => false,
            n if n >= 1_000_000 => true,
            n => rng.gen_range(0..1_000_000u32) < n,
        }
    }
}

impl fmt::Display for Percent {
    /// `"10%"`, `"0.5%"`, `"33.3333%"`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.per_million / 10_000;
        let frac = self.per_million % 10_000;
        if frac == 0 {
            return write!(f, "{whole}%");
        }
        let digits = format!("{frac:04}");
        write!(f, "{whole}.{}%", digits.trim_end_matches('0'))
    }
}

impl Serialize for Percent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(self.value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn percent_values_and_display() {
        assert_eq!(Percent::from_value(100.0), Some(Percent::HUNDRED));
        assert_eq!(Percent::from_value(0.0), Some(Percent::ZERO));
        assert_eq!(Percent::from_value(100.5), None);
        assert_eq!(Percent::from_value(-1.0), None);
        assert_eq!(Percent::from_value(f64::NAN), None);
        assert_eq!(Percent::from_value(0.1).unwrap().per_million(), 1000);
        assert_eq!(Percent::from_value(12.5).unwrap().to_string(), "12.5%");
        assert_eq!(Percent::from_value(0.0001).unwrap().to_string(), "0.0001%");
        assert_eq!(Percent::from_int(30).to_string(), "30%");
        assert_eq!(Percent::from_int(300), Percent::HUNDRED);
        assert_eq!(
            serde_json::to_value(Percent::from_value(2.5).unwrap()).unwrap(),
            2.5
        );
    }

    #[test]
    fn percent_sampling() {
        let mut rng = StdRng::seed_from_u64(7);
        assert!((0..1000).all(|_| Percent::HUNDRED.sample(&mut rng)));
        assert!((0..1000).all(|_| !Percent::ZERO.sample(&mut rng)));
        let p = Percent::from_value(30.0).unwrap();
        let hits = (0..100_000).filter(|_| p.sample(&mut rng)).count();
        assert!((29_000..31_000).contains(&hits), "{hits}");
    }
}
