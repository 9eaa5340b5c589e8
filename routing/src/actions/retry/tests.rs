use super::*;
use rand::rngs::StdRng;
use rand::SeedableRng;
use RetryFailure as F;

fn policy(on: &[RetryOn], codes: &[u16]) -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        retry_on: on.to_vec(),
        retriable_status_codes: codes.to_vec(),
        is_default: false,
        ..RetryPolicy::istio_default()
    }
}

#[test]
fn istio_default_decisions() {
    let p = RetryPolicy::istio_default();
    assert_eq!(p.attempts, 2);
    assert_eq!(
            p.to_string(),
            "2 retries on connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes (Istio's default)"
        );
    let table: &[(Option<u16>, RetryFailure, Option<&str>, bool)] = &[
        (None, F::ConnectFailure, None, true),
        (None, F::RefusedStream, None, true),
        (None, F::Reset, None, false),
        (None, F::ResetBeforeRequest, None, false),
        (None, F::Timeout, None, false),
        (Some(503), F::Response, None, false),
        (Some(500), F::Response, None, false),
        (Some(200), F::Response, Some("14"), true), // unavailable
        (Some(200), F::Response, Some("1"), true),  // cancelled
        (Some(200), F::Response, Some("4"), false), // deadline-exceeded
        (Some(200), F::Response, Some("0"), false),
        (Some(200), F::Response, Some("x"), false),
        (Some(429), F::RateLimited, None, false),
    ];
    for (status, failure, grpc, want) in table {
        assert_eq!(
            p.should_retry(*status, *failure, *grpc),
            *want,
            "{status:?} {failure:?} {grpc:?}"
        );
    }
}

#[test]
fn decision_table() {
    use RetryOn::*;
    // (conditions, codes, status, failure, grpc, retry?)
    type Row<'a> = (
        &'a [RetryOn],
        &'a [u16],
        Option<u16>,
        RetryFailure,
        Option<&'a str>,
        bool,
    );
    let table: &[Row] = &[
        (&[FiveXx], &[], Some(500), F::Response, None, true),
        (&[FiveXx], &[], Some(503), F::Response, None, true),
        (&[FiveXx], &[], Some(404), F::Response, None, false),
        (&[FiveXx], &[], None, F::Reset, None, true),
        (&[FiveXx], &[], None, F::Timeout, None, true),
        (&[FiveXx], &[], None, F::ConnectFailure, None, true),
        (&[FiveXx], &[], None, F::RefusedStream, None, true),
        (&[FiveXx], &[], Some(503), F::RateLimited, None, false),
        (&[GatewayError], &[], Some(500), F::Response, None, false),
        (&[GatewayError], &[], Some(502), F::Response, None, true),
        (&[GatewayError], &[], Some(504), F::Response, None, true),
        (&[GatewayError], &[], None, F::Timeout, None, true),
        (&[Reset], &[], Some(503), F::Response, None, false),
        (&[Reset], &[], None, F::Reset, None, true),
        (&[Reset], &[], None, F::Timeout, None, true),
        (&[Reset], &[], None, F::ConnectFailure, None, true),
        (
            &[ResetBeforeRequest],
            &[],
            None,
            F::ResetBeforeRequest,
            None,
            true,
        ),
        (
            &[ResetBeforeRequest],
            &[],
            None,
            F::ConnectFailure,
            None,
            true,
        ),
        (&[ResetBeforeRequest], &[], None, F::Reset, None, false),
        (&[ResetBeforeRequest], &[], None, F::Timeout, None, false),
        (&[ConnectFailure], &[], None, F::ConnectFailure, None, true),
        (&[ConnectFailure], &[], None, F::Reset, None, false),
        (&[ConnectFailure], &[], None, F::Timeout, None, false),
        (&[ConnectFailure], &[], Some(503), F::Response, None, false),
        (&[RefusedStream], &[], None, F::RefusedStream, None, true),
        (&[RefusedStream], &[], None, F::Reset, None, false),
        (&[Retriable4xx], &[], Some(409), F::Response, None, true),
        (&[Retriable4xx], &[], Some(400), F::Response, None, false),
        (
            &[RetriableStatusCodes],
            &[503, 429],
            Some(429),
            F::Response,
            None,
            true,
        ),
        (
            &[RetriableStatusCodes],
            &[503, 429],
            Some(500),
            F::Response,
            None,
            false,
        ),
        (
            &[RetriableStatusCodes],
            &[],
            Some(503),
            F::Response,
            None,
            false,
        ),
        // codes without the condition do nothing (the loader adds it)
        (&[FiveXx], &[429], Some(429), F::Response, None, false),
        (
            &[EnvoyRateLimited],
            &[],
            Some(429),
            F::RateLimited,
            None,
            true,
        ),
        (
            &[EnvoyRateLimited],
            &[],
            Some(429),
            F::Response,
            None,
            false,
        ),
        (
            &[RetriableHeaders],
            &[],
            Some(503),
            F::Response,
            None,
            false,
        ),
        (
            &[DeadlineExceeded],
            &[],
            Some(200),
            F::Response,
            Some("4"),
            true,
        ),
        (
            &[ResourceExhausted],
            &[],
            Some(200),
            F::Response,
            Some("8"),
            true,
        ),
        (&[Internal], &[], Some(200), F::Response, Some(" 13 "), true),
        (&[Internal], &[], Some(200), F::Response, Some("14"), false),
        (&[Unavailable], &[], None, F::Reset, None, false),
    ];
    for (on, codes, status, failure, grpc, want) in table {
        let p = policy(on, codes);
        assert_eq!(
            p.should_retry(*status, *failure, *grpc),
            *want,
            "{on:?} {codes:?} {status:?} {failure:?} {grpc:?}"
        );
    }
}

#[test]
fn disabled_never_retries() {
    let p = RetryPolicy::disabled();
    assert!(!p.is_enabled());
    assert!(!p.should_retry(None, F::ConnectFailure, None));
    let mut q = policy(&[RetryOn::Reset], &[]);
    q.attempts = 0;
    assert!(!q.should_retry(None, F::Reset, None));
    assert_eq!(p.to_string(), "disabled (attempts: 0)");
}

#[test]
fn words_and_display() {
    for c in RetryOn::ALL {
        assert_eq!(RetryOn::parse(c.as_str()), Some(c));
    }
    assert_eq!(RetryOn::parse(" 5xx"), None);
    assert_eq!(RetryOn::parse("5XX"), None);
    let mut p = policy(&[RetryOn::FiveXx, RetryOn::RetriableStatusCodes], &[503]);
    p.attempts = 1;
    p.per_try_timeout = Some(Duration::from_secs(2));
    p.backoff = Some(Duration::from_millis(100));
    p.retry_remote_localities = true;
    assert_eq!(
            p.to_string(),
            "1 retry on 5xx,retriable-status-codes [503], per try 2s, backoff 100ms, to other localities"
        );
    assert_eq!(
        serde_json::to_value(&p).unwrap()["retry_on"],
        serde_json::json!(["5xx", "retriable-status-codes"])
    );
    assert!(is_known_status(503) && is_known_status(418) && is_known_status(226));
    assert!(!is_known_status(306) && !is_known_status(599) && !is_known_status(0));
}

#[test]
fn backoff_is_jittered_and_capped() {
    let p = RetryPolicy::istio_default();
    let mut rng = StdRng::seed_from_u64(1);
    for _ in 0..200 {
        assert!(p.backoff_delay(1, &mut rng) < Duration::from_millis(25));
        assert!(p.backoff_delay(2, &mut rng) < Duration::from_millis(75));
        assert!(p.backoff_delay(30, &mut rng) < Duration::from_millis(250));
    }
}

/// Equal policies made one after another share one allocation, also with a few others made in
/// between (a redirect's disabled policy, a new route's default); an unequal one is its own.
#[test]
fn equal_policies_share_one_allocation() {
    let istiod = || RetryPolicy {
        retriable_status_codes: vec![503],
        is_default: false,
        ..RetryPolicy::istio_default()
    };
    let a = istiod().shared();
    let _ = RetryPolicy::disabled().shared();
    let _ = RetryPolicy::istio_default().shared();
    let b = istiod().shared();
    assert!(std::sync::Arc::ptr_eq(&a, &b));
    let other = RetryPolicy {
        attempts: 3,
        ..istiod()
    }
    .shared();
    assert!(!std::sync::Arc::ptr_eq(&a, &other));
    assert_eq!(
        *other,
        RetryPolicy {
            attempts: 3,
            ..istiod()
        }
    );
}
