//! Istio `HTTPRetry` → Envoy's retry policy, as istiod converts it
//! (`pilot/pkg/networking/core/route/retry/retry.go`, `ConvertPolicy`):
//!
//! - no `retries` on the route: Istio's default, 2 retries on
//!   `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`
//!   (no status codes listed, so that last condition matches nothing);
//! - `attempts: 0`: no retries;
//! - `retryOn` unset: the default conditions; numbers in `retryOn` are
//!   retriable status codes (and add `retriable-status-codes`);
//! - previously tried hosts are avoided unless `retryIgnorePreviousHosts:
//!   false` (Envoy's `previous_hosts` predicate with
//!   `host_selection_retry_max_attempts: 5`); the backoff base is 25 ms
//!   (Envoy) unless `backoff` is set.
//!
//! Avoiding tried hosts only biases the pick: Envoy re-picks while the
//! predicate rejects the host, at most `host_selection_retry_max_attempts`
//! times, then uses the last host picked — so with one endpoint a retry goes
//! to that same endpoint again ([`RetryPolicy::avoids_tried_endpoints`]).
//!
//! When an attempt counts as failed is Envoy's router logic
//! (`RetryStateImpl::wouldRetryFromHeaders` / `wouldRetryFromReset`):
//! see [`RetryPolicy::should_retry`].

use crate::policy::format_duration;
use rand::Rng;
use serde::{Serialize, Serializer};
use std::cell::RefCell;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// One `retryOn` condition (Envoy `x-envoy-retry-on` / `x-envoy-retry-grpc-on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryOn {
    /// `5xx`: a 5xx response, or no response (connect failure, reset, refused stream, timeout).
    FiveXx,
    /// `gateway-error`: 502, 503 or 504, or no response.
    GatewayError,
    /// `reset`: no response at all (disconnect, reset, timeout, connect failure).
    Reset,
    /// `reset-before-request`: reset before the request was sent (incl. connect failure).
    ResetBeforeRequest,
    /// `connect-failure`: the connection to the endpoint failed (incl. connect timeout).
    ConnectFailure,
    /// `envoy-ratelimited`: a response with `x-envoy-ratelimited`.
    EnvoyRateLimited,
    /// `retriable-4xx`: 409.
    Retriable4xx,
    /// `refused-stream`: HTTP/2 REFUSED_STREAM.
    RefusedStream,
    /// `retriable-status-codes`: a status in [`RetryPolicy::retriable_status_codes`].
    RetriableStatusCodes,
    /// `retriable-headers`: Istio cannot configure the header list, so never.
    RetriableHeaders,
    /// `http3-post-connect-failure`: HTTP/3 only, so never here.
    Http3PostConnectFailure,
    /// gRPC `cancelled` (grpc-status 1).
    Cancelled,
    /// gRPC `deadline-exceeded` (4).
    DeadlineExceeded,
    /// gRPC `internal` (13).
    Internal,
    /// gRPC `resource-exhausted` (8).
    ResourceExhausted,
    /// gRPC `unavailable` (14).
    Unavailable,
}

impl RetryOn {
    const ALL: [RetryOn; 16] = [
        RetryOn::FiveXx,
        RetryOn::GatewayError,
        RetryOn::Reset,
        RetryOn::ResetBeforeRequest,
        RetryOn::ConnectFailure,
        RetryOn::EnvoyRateLimited,
        RetryOn::Retriable4xx,
        RetryOn::RefusedStream,
        RetryOn::RetriableStatusCodes,
        RetryOn::RetriableHeaders,
        RetryOn::Http3PostConnectFailure,
        RetryOn::Cancelled,
        RetryOn::DeadlineExceeded,
        RetryOn::Internal,
        RetryOn::ResourceExhausted,
        RetryOn::Unavailable,
    ];

    /// The configuration word.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryOn::FiveXx => "5xx",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::Reset => "reset",
            RetryOn::ResetBeforeRequest => "reset-before-request",
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::EnvoyRateLimited => "envoy-ratelimited",
            RetryOn::Retriable4xx => "retriable-4xx",
            RetryOn::RefusedStream => "refused-stream",
            RetryOn::RetriableStatusCodes => "retriable-status-codes",
            RetryOn::RetriableHeaders => "retriable-headers",
            RetryOn::Http3PostConnectFailure => "http3-post-connect-failure",
            RetryOn::Cancelled => "cancelled",
            RetryOn::DeadlineExceeded => "deadline-exceeded",
            RetryOn::Internal => "internal",
            RetryOn::ResourceExhausted => "resource-exhausted",
            RetryOn::Unavailable => "unavailable",
        }
    }

    /// A configuration word (exact, as istiod's validation compares it).
    pub fn parse(word: &str) -> Option<RetryOn> {
        RetryOn::ALL.into_iter().find(|c| c.as_str() == word)
    }

    /// The gRPC status number this condition retries on.
    fn grpc_code(self) -> Option<u32> {
        match self {
            RetryOn::Cancelled => Some(1),
            RetryOn::DeadlineExceeded => Some(4),
            RetryOn::ResourceExhausted => Some(8),
            RetryOn::Internal => Some(13),
            RetryOn::Unavailable => Some(14),
            _ => None,
        }
    }
}

impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for RetryOn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// How an attempt ended, for [`RetryPolicy::should_retry`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryFailure {
    /// A response arrived: its status (and `grpc-status`) decide.
    Response,
    /// A response carrying `x-envoy-ratelimited` (retried only on `envoy-ratelimited`).
    RateLimited,
    /// The connection (or HBONE tunnel) to the endpoint could not be opened
    /// (refused, connect timeout, TLS/CONNECT failure).
    ConnectFailure,
    /// The upstream stream was reset or the connection closed before the
    /// request headers were sent.
    ResetBeforeRequest,
    /// Reset or closed after the request was sent, without a response.
    Reset,
    /// HTTP/2 `REFUSED_STREAM`.
    RefusedStream,
    /// The per-try timeout fired before a response.
    Timeout,
}

/// The retry policy of a route (always present: Istio's default when the
/// route has no `retries`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// Retries after the first try (Envoy `num_retries`); 0 = no retries.
    pub attempts: u32,
    /// Timeout of each try; `None` = the route's timeout applies.
    #[serde(serialize_with = "crate::policy::serialize_opt_duration")]
    pub per_try_timeout: Option<Duration>,
    /// In configuration order.
    pub retry_on: Vec<RetryOn>,
    /// Numeric codes of `retryOn`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retriable_status_codes: Vec<u16>,
    /// `retryRemoteLocalities`.
    pub retry_remote_localities: bool,
    /// `retryIgnorePreviousHosts` (default true; Envoy's `previous_hosts`
    /// retry host predicate): retries avoid the endpoints already tried
    /// while others are left.
    pub retry_ignore_previous_hosts: bool,
    /// Envoy `host_selection_retry_max_attempts`: how often a retry's pick
    /// is redone while the predicate rejects it (istiod: 5). 0 (the proto
    /// default) leaves no re-pick, so the predicate has no effect.
    pub host_selection_retry_max_attempts: u32,
    /// `backoff`: base interval of the jittered exponential backoff; `None`
    /// = Envoy's 25 ms.
    #[serde(serialize_with = "crate::policy::serialize_opt_duration")]
    pub backoff: Option<Duration>,
    /// True when this is Istio's default (the route has no `retries`).
    pub is_default: bool,
}

/// istiod's `hostSelectionRetryMaxAttempts` (`retry.go` `DefaultPolicy`).
pub const ISTIO_HOST_SELECTION_RETRY_MAX_ATTEMPTS: u32 = 5;

/// Envoy's default base backoff interval (`upstream.base_retry_backoff_ms`).
const DEFAULT_BASE_INTERVAL: Duration = Duration::from_millis(25);

impl RetryPolicy {
    /// The conditions of Istio's default policy (`defaultRetryOn`), also
    /// used when `retries` sets no `retryOn`.
    pub const DEFAULT_RETRY_ON: [RetryOn; 5] = [
        RetryOn::ConnectFailure,
        RetryOn::RefusedStream,
        RetryOn::Unavailable,
        RetryOn::Cancelled,
        RetryOn::RetriableStatusCodes,
    ];

    /// Istio's policy for a route without `retries`: 2 retries on
    /// `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`,
    /// avoiding previously tried hosts.
    pub fn istio_default() -> RetryPolicy {
        RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            retry_on: RetryPolicy::DEFAULT_RETRY_ON.to_vec(),
            retriable_status_codes: Vec::new(),
            retry_remote_localities: false,
            retry_ignore_previous_hosts: true,
            host_selection_retry_max_attempts: ISTIO_HOST_SELECTION_RETRY_MAX_ATTEMPTS,
            backoff: None,
            is_default: true,
        }
    }

    /// No retries (`attempts: 0`).
    pub fn disabled() -> RetryPolicy {
        RetryPolicy {
            attempts: 0,
            retry_on: Vec::new(),
            is_default: false,
            ..RetryPolicy::istio_default()
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.attempts > 0
    }

    /// This policy behind an `Arc`: one of the last few made on this thread when it is
    /// equal. istiod gives nearly every route the same retry policy (a route of a redirect or
    /// a direct response none, a new route Istio's default first), and a route's own copy was
    /// 96 bytes and two lists of its own, per route of every service.
    pub fn shared(self) -> Arc<RetryPolicy> {
        thread_local! {
            static RECENT: RefCell<([Option<Arc<RetryPolicy>>; 4], usize)> =
                const { RefCell::new(([None, None, None, None], 0)) };
        }
        RECENT.with_borrow_mut(|(recent, next)| {
            if let Some(p) = recent.iter().flatten().find(|p| ***p == self) {
                return p.clone();
            }
            let made = Arc::new(self);
            recent[*next] = Some(made.clone());
            *next = (*next + 1) % recent.len();
            made
        })
    }

    /// Does a retry prefer endpoints not tried yet (Envoy's `previous_hosts`
    /// predicate with at least one re-pick)? Only a preference: when every
    /// usable endpoint was tried, the retry goes to one of them again, as
    /// Envoy's load balancer returns the last host it picked once its
    /// re-picks are used up (one endpoint: the same endpoint).
    pub fn avoids_tried_endpoints(&self) -> bool {
        self.retry_ignore_previous_hosts && self.host_selection_retry_max_attempts > 0
    }

    fn has(&self, c: RetryOn) -> bool {
        self.retry_on.contains(&c)
    }

    /// Should an attempt that ended like this be retried (if attempts are
    /// left — counting them is the caller's job)? Envoy's rules:
    ///
    /// - a response ([`RetryFailure::Response`]): `5xx` on 500–599,
    ///   `gateway-error` on 502/503/504, `retriable-4xx` on 409,
    ///   `retriable-status-codes` on a listed code, and the gRPC conditions
    ///   on the response's `grpc-status` (a number: 1, 4, 8, 13, 14);
    /// - no response (connect failure, reset, refused stream, timeout):
    ///   `reset`, `5xx` and `gateway-error` always; `connect-failure` on a
    ///   connect failure; `refused-stream` on a refused stream;
    ///   `reset-before-request` when nothing was sent (connect failure or
    ///   reset before the request);
    /// - a rate-limited response: only `envoy-ratelimited`.
    ///
    /// Always false when the policy is disabled.
    pub fn should_retry(
        &self,
        status: Option<u16>,
        failure: RetryFailure,
        grpc_status: Option<&str>,
    ) -> bool {
        if self.attempts == 0 {
            return false;
        }
        match failure {
            RetryFailure::RateLimited => self.has(RetryOn::EnvoyRateLimited),
            RetryFailure::Response => {
                if let Some(code) = status {
                    if (self.has(RetryOn::FiveXx) && (500..=599).contains(&code))
                        || (self.has(RetryOn::GatewayError) && matches!(code, 502..=504))
                        || (self.has(RetryOn::Retriable4xx) && code == 409)
                        || (self.has(RetryOn::RetriableStatusCodes)
                            && self.retriable_status_codes.contains(&code))
                    {
                        return true;
                    }
                }
                let Some(grpc) = grpc_status.and_then(|g| g.trim().parse::<u32>().ok()) else {
                    return false;
                };
                self.retry_on.iter().any(|c| c.grpc_code() == Some(grpc))
            }
            RetryFailure::ConnectFailure
            | RetryFailure::ResetBeforeRequest
            | RetryFailure::Reset
            | RetryFailure::RefusedStream
            | RetryFailure::Timeout => {
                if self.has(RetryOn::Reset)
                    || self.has(RetryOn::FiveXx)
                    || self.has(RetryOn::GatewayError)
                {
                    return true;
                }
                let before_request = matches!(
                    failure,
                    RetryFailure::ConnectFailure | RetryFailure::ResetBeforeRequest
                );
                (self.has(RetryOn::ResetBeforeRequest) && before_request)
                    || (self.has(RetryOn::ConnectFailure)
                        && failure == RetryFailure::ConnectFailure)
                    || (self.has(RetryOn::RefusedStream) && failure == RetryFailure::RefusedStream)
            }
        }
    }

    /// Base interval of the backoff between retries.
    pub fn base_interval(&self) -> Duration {
        self.backoff.unwrap_or(DEFAULT_BASE_INTERVAL)
    }

    /// Envoy's fully jittered exponential backoff before retry number
    /// `retry` (1 = the first retry): uniform in `[0, (2^retry − 1) × base)`,
    /// the upper bound capped at 10 × base.
    pub fn backoff_delay<R: Rng + ?Sized>(&self, retry: u32, rng: &mut R) -> Duration {
        let base = self.base_interval().as_millis().max(1) as u64;
        let max = base.saturating_mul(10);
        let factor = (1u64 << retry.clamp(1, 32)) - 1;
        let upper = factor.saturating_mul(base).min(max);
        Duration::from_millis(rng.gen_range(0..upper))
    }
}

impl Default for RetryPolicy {
    /// [`RetryPolicy::istio_default`].
    fn default() -> Self {
        RetryPolicy::istio_default()
    }
}

impl fmt::Display for RetryPolicy {
    /// `2 retries on connect-failure,…,retriable-status-codes (Istio's default)`,
    /// `3 retries on 5xx,retriable-status-codes [503], per try 2s`, `disabled`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.attempts == 0 {
            return f.write_str("disabled (attempts: 0)");
        }
        let on: Vec<&str> = self.retry_on.iter().map(|c| c.as_str()).collect();
        write!(
            f,
            "{} {} on {}",
            self.attempts,
            if self.attempts == 1 {
                "retry"
            } else {
                "retries"
            },
            on.join(",")
        )?;
        if !self.retriable_status_codes.is_empty() {
            let codes: Vec<String> = self
                .retriable_status_codes
                .iter()
                .map(u16::to_string)
                .collect();
            write!(f, " [{}]", codes.join(","))?;
        }
        if let Some(t) = self.per_try_timeout {
            write!(f, ", per try {}", format_duration(t))?;
        }
        if let Some(b) = self.backoff {
            write!(f, ", backoff {}", format_duration(b))?;
        }
        if self.retry_remote_localities {
            f.write_str(", to other localities")?;
        }
        if !self.retry_ignore_previous_hosts {
            f.write_str(", may reuse tried endpoints")?;
        }
        if self.is_default {
            f.write_str(" (Istio's default)")?;
        }
        Ok(())
    }
}

/// HTTP status codes Go's `net/http.StatusText` knows: istiod takes a
/// number in `retryOn` as a status code only if it is one of these.
pub(crate) fn is_known_status(code: i64) -> bool {
    matches!(code,
        100..=103
        | 200..=208 | 226
        | 300..=305 | 307 | 308
        | 400..=418 | 421..=426 | 428 | 429 | 431 | 451
        | 500..=508 | 510 | 511)
}

#[cfg(test)]
mod tests;
