//! `retries` and `fault` (delay and abort).

use super::*;

impl Fields<'_, '_> {
    /// `retries`; `None` (absent) is Istio's default policy.
    pub(crate) fn retries(&mut self, f: &str, r: Option<RetriesY>) -> Option<RetryPolicy> {
        let Some(r) = r else {
            return Some(RetryPolicy::istio_default());
        };
        self.unsupported(f, &r.extra, schema::HTTP_RETRY);
        let errors = self.diag.errors.len();
        let af = format!("{f}.attempts");
        let attempts = match present(r.attempts) {
            None => 0,
            Some(v) => match self.int(&af, Some(v), i64::from(i32::MIN), i64::from(i32::MAX)) {
                Some(n) if n < 0 => {
                    self.error(&af, format!("attempts cannot be negative, got {n}"));
                    return None;
                }
                Some(n) => n as u32,
                None => return None,
            },
        };
        let has_others = present(r.per_try_timeout.clone()).is_some()
            || present(r.retry_on.clone()).is_some_and(|v| v != Value::String(String::new()))
            || present(r.retry_remote_localities.clone()).is_some();
        if attempts == 0 && has_others {
            self.error(
                f,
                "http retry policy configured when attempts are set to 0 (disabled)",
            );
            return None;
        }
        let per_try_timeout = self.duration(
            &format!("{f}.perTryTimeout"),
            r.per_try_timeout,
            DurationRule::AtLeastMillis,
        );
        let backoff = self.duration(
            &format!("{f}.backoff"),
            r.backoff,
            DurationRule::AtLeastMillis,
        );
        let retry_remote_localities = self
            .boolean(
                &format!("{f}.retryRemoteLocalities"),
                r.retry_remote_localities,
            )
            .unwrap_or(false);
        let retry_ignore_previous_hosts = self
            .boolean(
                &format!("{f}.retryIgnorePreviousHosts"),
                r.retry_ignore_previous_hosts,
            )
            .unwrap_or(true);
        let rf = format!("{f}.retryOn");
        let retry_on_text = self.string(&rf, r.retry_on).unwrap_or_default();
        let (mut retry_on, mut codes) = (Vec::new(), Vec::new());
        if retry_on_text.is_empty() {
            retry_on = RetryPolicy::DEFAULT_RETRY_ON.to_vec();
        } else {
            for word in retry_on_text.split(',') {
                if let Some(c) = RetryOn::parse(word) {
                    if !retry_on.contains(&c) {
                        retry_on.push(c);
                    }
                } else if let Some(code) = word
                    .parse::<i64>()
                    .ok()
                    .filter(|c| crate::actions::is_known_status(*c))
                {
                    if !codes.contains(&(code as u16)) {
                        codes.push(code as u16);
                    }
                } else {
                    self.error(&rf, format!("{word:?} is not a valid retryOn policy"));
                }
            }
            if !codes.is_empty() && !retry_on.contains(&RetryOn::RetriableStatusCodes) {
                retry_on.push(RetryOn::RetriableStatusCodes);
            }
        }
        if self.diag.errors.len() > errors {
            return None;
        }
        if attempts == 0 {
            return Some(RetryPolicy {
                backoff,
                ..RetryPolicy::disabled()
            });
        }
        Some(RetryPolicy {
            attempts,
            per_try_timeout,
            retry_on,
            retriable_status_codes: codes,
            retry_remote_localities,
            retry_ignore_previous_hosts,
            host_selection_retry_max_attempts:
                crate::actions::ISTIO_HOST_SELECTION_RETRY_MAX_ATTEMPTS,
            backoff,
            is_default: false,
        })
    }

    /// `fault`.
    pub(crate) fn fault(&mut self, f: &str, fy: FaultY) -> Option<Fault> {
        self.unsupported(f, &fy.extra, schema::HTTP_FAULT_INJECTION);
        if fy.delay.is_none() && fy.abort.is_none() {
            self.error(f, "HTTP fault injection must have an abort and/or a delay");
            return None;
        }
        let errors = self.diag.errors.len();
        let delay = fy.delay.and_then(|d| {
            let df = format!("{f}.delay");
            self.unsupported(&df, &d.extra, schema::FAULT_DELAY);
            if present(d.exponential_delay).is_some() {
                self.error(
                    &format!("{df}.exponentialDelay"),
                    "exponentialDelay not supported yet",
                );
                return None;
            }
            let ff = format!("{df}.fixedDelay");
            let Some(fixed_delay) =
                self.duration(&ff, d.fixed_delay.clone(), DurationRule::AtLeastMillis)
            else {
                if present(d.fixed_delay).is_none() {
                    self.error(&df, "needs fixedDelay");
                }
                return None;
            };
            let percentage = self.fault_percentage(&df, d.percentage, d.percent, "delayed")?;
            Some(FaultDelay {
                fixed_delay,
                percentage,
            })
        });
        let abort = fy.abort.and_then(|a| {
            let af = format!("{f}.abort");
            self.unsupported(&af, &a.extra, schema::FAULT_ABORT);
            let http = present(a.http_status.clone()).is_some();
            let grpc = present(a.grpc_status.clone()).is_some();
            let h2 = present(a.http2_error).is_some();
            if usize::from(http) + usize::from(grpc) + usize::from(h2) > 1 {
                self.error(&af, "only one of httpStatus, grpcStatus or http2Error may be set");
                return None;
            }
            let abort = if http {
                let hf = format!("{af}.httpStatus");
                let s = self.int(&hf, a.http_status, i64::MIN, i64::MAX)?;
                if !(200..=599).contains(&s) {
                    self.error(&hf, format!("HTTP status {s} is not in range 200..=599"));
                    return None;
                }
                Abort::Http(s as u16)
            } else if grpc {
                let gf = format!("{af}.grpcStatus");
                let name = self.string(&gf, a.grpc_status)?;
                let Some(abort) = Abort::grpc(&name) else {
                    self.error(
                        &gf,
                        format!("gRPC status {name:?} is not supported (use a name such as UNAVAILABLE or NOT_FOUND)"),
                    );
                    return None;
                };
                abort
            } else if h2 {
                self.error(&format!("{af}.http2Error"), "HTTP/2 abort fault injection not supported yet");
                return None;
            } else {
                self.error(&af, "needs httpStatus or grpcStatus");
                return None;
            };
            let percentage = self.fault_percentage(&af, a.percentage, None, "aborted")?;
            Some(FaultAbort { abort, percentage })
        });
        if self.diag.errors.len() > errors {
            return None;
        }
        Some(Fault { delay, abort })
    }

    /// `percentage` (or the deprecated integer `percent`) of a fault; unset
    /// is 0 %, with a warning.
    fn fault_percentage(
        &mut self,
        f: &str,
        percentage: Option<PercentY>,
        percent: Scalar,
        what: &str,
    ) -> Option<Percent> {
        if let Some(p) = percentage {
            return self.percentage(&format!("{f}.percentage"), p, PercentRule::FaultRange);
        }
        if present(percent.clone()).is_some() {
            let pf = format!("{f}.percent");
            self.warn(&pf, "deprecated; use percentage.value");
            let n = self.uint(&pf, percent, 100)?;
            return Some(Percent::from_int(n as u32));
        }
        self.warn(
            f,
            format!("no percentage: no request is {what} (Istio's default); set percentage.value"),
        );
        Some(Percent::ZERO)
    }
}
