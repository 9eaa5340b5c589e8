//! `request.duration` and `request.time`: the `cel` crate's durations and timestamps.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::tests::{eval, filter, http, is_true};
use super::*;

#[test]
fn istio_example_errors_or_slow() {
    let f = filter("response.code >= 500 || request.duration > duration('1s')");
    let mut e = http();
    e.duration_ms = 999;
    assert_eq!(f.evaluate(&e.line()), Ok(false));
    e.duration_ms = 1000;
    assert_eq!(f.evaluate(&e.line()), Ok(false), "not more than 1s");
    e.duration_ms = 1001;
    assert_eq!(f.evaluate(&e.line()), Ok(true));
    e.duration_ms = 0;
    e.response_code = 503;
    assert_eq!(f.evaluate(&e.line()), Ok(true));
    // The duration is a CEL duration, in milliseconds.
    e.duration_ms = 1500;
    assert!(is_true("request.duration == duration('1.5s')", &e));
    assert!(is_true("request.duration == duration('1500ms')", &e));
    assert!(is_true("request.duration.getMilliseconds() == 1500", &e));
    assert!(is_true("request.duration.getSeconds() == 1", &e));
    assert!(is_true(
        "request.duration - duration('1s') < duration('501ms')",
        &e
    ));
    assert!(is_true(
        "duration('1m') + request.duration == duration('61.5s')",
        &e
    ));
    assert!(!is_true("request.duration < duration('1s')", &e));
    assert!(
        eval("request.duration > 1000", &e).is_err(),
        "no int comparison"
    );
    assert!(eval("request.duration > duration('1 s')", &e).is_err());
}

#[test]
fn duration_getters_are_totals() {
    // As cel-go: the whole duration in the unit, truncated toward zero.
    let mut e = http();
    e.duration_ms = 5_430_250;
    assert!(is_true(
        "request.duration.getHours() == 1 && request.duration.getMinutes() == 90 && \
         request.duration.getSeconds() == 5430 && \
         request.duration.getMilliseconds() == 5430250",
        &e
    ));
    assert!(is_true(
        "duration('-90m').getHours() == -1 && duration('-90m').getMinutes() == -90",
        &e
    ));
    assert!(is_true(
        "type(request.duration) == google.protobuf.Duration",
        &e
    ));
    // Past CEL's range (`i64` nanoseconds): absent.
    e.duration_ms = u64::MAX;
    let err = eval("request.duration > duration('1s')", &e)
        .unwrap_err()
        .to_string();
    assert!(err.contains("No such key"), "{err}");
    e.duration_ms = 9_223_372_036_855;
    assert!(eval("has(request.duration)", &e) == Ok(false));
    e.duration_ms = 9_223_372_036_854;
    assert!(is_true("request.duration > duration('2562047h')", &e));
    // Out of range arithmetic is an error.
    assert!(eval(
        "request.duration + duration('2562047h') > request.duration",
        &e
    )
    .is_err());
}

#[test]
fn request_time() {
    let mut e = http();
    assert!(is_true(
        "request.time == timestamp('2026-01-01T00:00:00.250Z') && \
         request.time - timestamp('2026-01-01T00:00:00Z') == duration('250ms') && \
         request.time + duration('750ms') == timestamp('2026-01-01T00:00:01Z') && \
         request.time - duration('250ms') == timestamp('2026-01-01T00:00:00Z') && \
         duration('1h') + request.time > request.time && \
         type(request.time) == google.protobuf.Timestamp",
        &e
    ));
    // The getters, in UTC or the time zone given (2026-01-01 is a Thursday).
    assert!(is_true(
        "request.time.getFullYear() == 2026 && request.time.getMonth() == 0 && \
         request.time.getDate() == 1 && request.time.getDayOfMonth() == 0 && \
         request.time.getDayOfYear() == 0 && request.time.getDayOfWeek() == 4 && \
         request.time.getHours() == 0 && request.time.getMinutes() == 0 && \
         request.time.getSeconds() == 0 && request.time.getMilliseconds() == 250 && \
         request.time.getHours('America/New_York') == 19 && \
         request.time.getFullYear('-05:00') == 2025",
        &e
    ));
    assert!(is_true("int(request.time) == 1767225600", &e));
    // A start time written with an offset is the same instant, in UTC.
    e.start_time = "2026-01-01T02:00:00.250+02:00".into();
    assert!(is_true(
        "request.time == timestamp('2026-01-01T00:00:00.250Z') && request.time.getHours() == 0",
        &e
    ));
    // Not RFC 3339: absent.
    e.start_time = "01/Jan/2026:00:00:00 +0000".into();
    assert!(eval("has(request.time)", &e) == Ok(false));
    let err = eval("request.time > timestamp('2020-01-01T00:00:00Z')", &e)
        .unwrap_err()
        .to_string();
    assert!(err.contains("No such key"), "{err}");
    // Comparing with another kind is an error.
    let e = http();
    assert!(eval("request.time > 1767225600", &e).is_err());
    assert!(eval("request.time > request.duration", &e).is_err());
    // Past CEL's ranges (years 1 to 9999; `i64` nanoseconds for a duration): an error.
    assert!(eval(
        "timestamp('9999-12-31T23:59:59.999Z') + request.duration > request.time",
        &e
    )
    .is_err());
    assert!(eval(
        "request.time - timestamp('0001-01-01T00:00:00Z') > duration('1s')",
        &e
    )
    .is_err());
}

#[test]
fn typed_start_times() {
    let e = http();
    let at = |t: SystemTime| Line {
        start_time: t.into(),
        ..e.line()
    };
    let line = at(UNIX_EPOCH + Duration::from_millis(1_767_225_600_250));
    let f = filter("request.time == timestamp('2026-01-01T00:00:00.250Z')");
    assert_eq!(f.evaluate(&line), Ok(true));
    let f = filter("request.time > timestamp('2026-01-01T00:00:00.251Z')");
    assert_eq!(f.evaluate(&line), Ok(false));
    let f = filter("request.time == timestamp(1767225600) + duration('250ms')");
    assert_eq!(f.evaluate(&line), Ok(true));
    // Before the epoch.
    let line = at(UNIX_EPOCH - Duration::from_millis(1_500));
    let f = filter("request.time == timestamp('1969-12-31T23:59:58.500Z')");
    assert_eq!(f.evaluate(&line), Ok(true));
}

/// `duration(s)` in nanoseconds; `None` when it is an error.
fn nanos(s: &str) -> Option<i64> {
    let program = ENV.compile(&format!("duration('{s}')")).unwrap();
    match program.execute(&Context::with_env(Arc::clone(&ENV))) {
        Ok(Value::Duration(d)) => d.num_nanoseconds(),
        Ok(other) => panic!("{s:?}: {other:?}"),
        Err(_) => None,
    }
}

#[test]
fn durations_parse_as_cel_go_does() {
    assert_eq!(nanos("1s"), Some(1_000_000_000));
    assert_eq!(nanos("0"), Some(0));
    assert_eq!(nanos("-1.5h"), Some(-5_400_000_000_000));
    assert_eq!(nanos("1m30s"), Some(90_000_000_000));
    assert_eq!(nanos("300ms"), Some(300_000_000));
    assert_eq!(nanos("10us"), Some(10_000));
    assert_eq!(nanos("5ns"), Some(5));
    assert_eq!(nanos(".5s"), Some(500_000_000));
    assert_eq!(nanos("1.s"), Some(1_000_000_000));
    assert_eq!(nanos("1.000000001s"), Some(1_000_000_001));
    assert_eq!(nanos("2562047h"), Some(9_223_369_200_000_000_000));
    // The crate's parser, unlike cel-go's, rejects `µs` and ignores what follows a valid
    // duration (`1s2` is `1s`): not checked here.
    for bad in [
        "",
        "1",
        "s",
        ".s",
        "1d",
        "1 s",
        "-",
        "9999999999999h",
        "2562048h",
    ] {
        assert_eq!(nanos(bad), None, "{bad:?}");
    }
}
