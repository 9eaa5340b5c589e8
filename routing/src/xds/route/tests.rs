use super::forward::{PREVIOUS_HOSTS, PREVIOUS_PRIORITIES};
use super::*;
use crate::actions::RetryFailure;
use envoy_types::pb::envoy::config::route::v3::retry_policy::{RetryHostPredicate, RetryPriority};
use envoy_types::pb::envoy::r#type::matcher::v3::{string_matcher, StringMatcher};
use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};

const AT: At<'static> = At {
    type_url: super::super::ROUTE_TYPE,
    name: "test",
};

fn envoy(retry_on: &str, retries: Option<u32>) -> EnvoyRetryPolicy {
    EnvoyRetryPolicy {
        retry_on: retry_on.into(),
        num_retries: retries.map(|value| UInt32Value { value }),
        ..Default::default()
    }
}

/// Every `retry_on` string istiod writes, parsed word by word in order.
#[test]
fn retry_on_words_istiod_writes() {
    use RetryOn::*;
    let table: &[(&str, &[RetryOn])] = &[
        // 1.24+ default route (BuildDefaultHTTPInboundRoute).
        ("reset-before-request", &[ResetBeforeRequest]),
        // Mesh default (retry.go DefaultPolicy).
        (
            "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
            &[
                ConnectFailure,
                RefusedStream,
                Unavailable,
                Cancelled,
                RetriableStatusCodes,
            ],
        ),
        // VirtualService retryOn "5xx,503,gateway-error" (codes moved out).
        (
            "5xx,gateway-error,retriable-status-codes",
            &[FiveXx, GatewayError, RetriableStatusCodes],
        ),
        (
            "reset,retriable-4xx,envoy-ratelimited",
            &[Reset, Retriable4xx, EnvoyRateLimited],
        ),
        (
            "deadline-exceeded,internal,resource-exhausted",
            &[DeadlineExceeded, Internal, ResourceExhausted],
        ),
        (
            "http3-post-connect-failure,retriable-headers",
            &[Http3PostConnectFailure, RetriableHeaders],
        ),
        // Whitespace around a word is trimmed; duplicates count once.
        ("5xx, reset ,5xx", &[FiveXx, Reset]),
        ("", &[]),
    ];
    for (text, want) in table {
        let mut diag = Diag::default();
        let p = retry_policy(&envoy(text, Some(2)), "r", AT, &mut diag);
        assert_eq!(p.retry_on, *want, "{text:?}");
        assert!(diag.warnings.is_empty(), "{text:?}: {:?}", diag.warnings);
    }
    let mut diag = Diag::default();
    let p = retry_policy(&envoy("5xx,bogus", Some(2)), "r", AT, &mut diag);
    assert_eq!(p.retry_on, vec![FiveXx]);
    assert!(diag.warnings[0].message.contains("\"bogus\""), "{diag:?}");
}

#[test]
fn the_1_24_default_route_policy_as_written() {
    let mut diag = Diag::default();
    let p = retry_policy(
        &envoy("reset-before-request", Some(2)),
        "default",
        AT,
        &mut diag,
    );
    assert_eq!(p.attempts, 2);
    assert_eq!(p.retry_on, vec![RetryOn::ResetBeforeRequest]);
    // No predicate: a retry may reuse the endpoint; nothing is Istio's default here.
    assert!(!p.retry_ignore_previous_hosts && !p.avoids_tried_endpoints());
    assert!(!p.is_default);
    assert!(p.should_retry(None, RetryFailure::ConnectFailure, None));
    assert!(p.should_retry(None, RetryFailure::ResetBeforeRequest, None));
    assert!(!p.should_retry(None, RetryFailure::Reset, None));
    assert!(!p.should_retry(Some(503), RetryFailure::Response, None));
    // num_retries unset: Envoy's 1.
    assert_eq!(
        retry_policy(&envoy("reset", None), "r", AT, &mut diag).attempts,
        1
    );
}

#[test]
fn the_mesh_default_policy_is_istios_default() {
    let mut e = envoy(
        "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        Some(2),
    );
    e.host_selection_retry_max_attempts = 5;
    e.retry_host_predicate = vec![RetryHostPredicate {
        name: PREVIOUS_HOSTS.into(),
        config_type: None,
    }];
    let mut diag = Diag::default();
    let p = retry_policy(&e, "r", AT, &mut diag);
    assert!(p.is_default, "{p:?}");
    assert_eq!(p.host_selection_retry_max_attempts, 5);
    assert!(p.avoids_tried_endpoints());
    // The VirtualService fields: per-try timeout, codes, remote localities.
    e.per_try_timeout = Some(envoy_types::pb::google::protobuf::Duration {
        seconds: 2,
        nanos: 0,
    });
    e.retriable_status_codes = vec![503, 429, 1000];
    e.retry_priority = Some(RetryPriority {
        name: PREVIOUS_PRIORITIES.into(),
        config_type: None,
    });
    let p = retry_policy(&e, "r", AT, &mut diag);
    assert!(!p.is_default);
    assert_eq!(p.per_try_timeout, Some(Duration::from_secs(2)));
    assert_eq!(p.retriable_status_codes, vec![503, 429]);
    assert!(p.retry_remote_localities);
    assert!(diag.warnings[0].message.contains("1000"), "{diag:?}");
    // A predicate without re-picks has no effect; other predicates are reported.
    e.host_selection_retry_max_attempts = 0;
    e.retry_host_predicate.push(RetryHostPredicate {
        name: "envoy.retry_host_predicates.omit_canary_hosts".into(),
        config_type: None,
    });
    let mut diag = Diag::default();
    assert!(!retry_policy(&e, "r", AT, &mut diag).avoids_tried_endpoints());
    assert!(
        diag.warnings
            .iter()
            .any(|w| w.message.contains("omit_canary_hosts")),
        "{diag:?}"
    );
}

fn exact(s: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(string_matcher::MatchPattern::Exact(s.into())),
        ignore_case: false,
    }
}

#[test]
fn cors_policy_as_istiod_writes_it() {
    let c = CorsPolicy {
        allow_origin_string_match: vec![
            exact("https://a.example"),
            StringMatcher {
                match_pattern: Some(string_matcher::MatchPattern::Prefix("https://b.".into())),
                ignore_case: false,
            },
        ],
        allow_methods: "GET,POST".into(),
        allow_headers: "x-a,x-b".into(),
        expose_headers: "x-c".into(),
        max_age: "86400".into(),
        allow_credentials: Some(BoolValue { value: true }),
        filter_enabled: Some(RuntimeFractionalPercent {
            default_value: Some(FractionalPercent {
                numerator: 100,
                denominator: 0,
            }),
            runtime_key: String::new(),
        }),
        forward_not_matching_preflights: Some(BoolValue { value: true }),
        ..Default::default()
    };
    let t = cors(&c).unwrap();
    assert!(t.ignored.is_empty());
    let p = t.policy.unwrap();
    assert_eq!(p.allow_methods, vec!["GET", "POST"]);
    assert_eq!(p.allow_headers, vec!["x-a", "x-b"]);
    assert_eq!(p.expose_headers, vec!["x-c"]);
    assert_eq!(p.max_age, Some(Duration::from_secs(86400)));
    assert!(p.allow_credentials);
    assert_eq!(p.unmatched_preflights, UnmatchedPreflights::Forward);
    assert!(p.origin_allowed("https://a.example") && p.origin_allowed("https://b.x"));
    assert!(!p.origin_allowed("https://c.example"));
    let pre = p
        .preflight("OPTIONS", Some("https://a.example"), Some("PUT"), None)
        .unwrap();
    assert!(pre.contains(&("access-control-max-age".into(), "86400".into())));

    // unmatchedPreflights: IGNORE; 1.22 leaves the field out (forward).
    let ignore = CorsPolicy {
        forward_not_matching_preflights: Some(BoolValue { value: false }),
        ..c.clone()
    };
    let p = cors(&ignore).unwrap().policy.unwrap();
    assert_eq!(p.unmatched_preflights, UnmatchedPreflights::Ignore);
    let old = CorsPolicy {
        forward_not_matching_preflights: None,
        filter_enabled: None,
        ..c.clone()
    };
    let p = cors(&old).unwrap().policy.unwrap();
    assert_eq!(p.unmatched_preflights, UnmatchedPreflights::Forward);

    // Disabled (0 %) → no CORS; a fraction → the route is left out.
    let mut off = c.clone();
    off.filter_enabled.as_mut().unwrap().default_value = Some(FractionalPercent {
        numerator: 0,
        denominator: 0,
    });
    assert!(cors(&off).unwrap().policy.is_none());
    let mut half = c.clone();
    half.filter_enabled.as_mut().unwrap().default_value = Some(FractionalPercent {
        numerator: 50,
        denominator: 0,
    });
    assert!(matches!(cors(&half), Err(Issue::Unsupported(_))));
    let odd = CorsPolicy {
        max_age: "1h".into(),
        ..c
    };
    let t = cors(&odd).unwrap();
    assert_eq!(t.policy.unwrap().max_age, None);
    assert_eq!(t.ignored, vec!["max_age that is not whole seconds"]);
}
